//! `banger vm session start|list|show|logs|attach|stop|kill`: a thin client of the
//! `/v1/vms/{vm}/sessions` routes (docs/sessions.md).

use std::io::{IsTerminal, Write};

use anyhow::Context;
use banger_wire::session::{
    signal_name, LogStream, SessionInfo, SessionKillRequest, SessionList, SessionLogLine,
    SessionSource, SessionStartRequest, SessionStatus, SessionStopRequest, StdinMode,
};
use clap::{Args, Subcommand, ValueEnum};

use crate::client::Client;

/// `banger vm session ...`
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Start a long-lived command in a running VM, supervised by the guest
    /// (it survives daemon restarts): `vm session start dev --name web --
    /// npm run dev`. The guest first checks that the cwd exists and that the
    /// command and every --require-command are on its PATH; a failed check
    /// names what is missing and starts nothing.
    Start(StartArgs),
    /// List a VM's sessions.
    #[command(visible_alias = "ls")]
    List {
        /// VM name.
        vm: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show a session: command, cwd, stdin mode, state, pid, times, exit
    /// code or signal, and the end of stderr once it ended.
    Show {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print a session's output (stdout to stdout, stderr to stderr).
    Logs {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
        /// Which output.
        #[arg(long, value_enum, default_value_t = StreamArg::Both)]
        stream: StreamArg,
        /// Keep printing new output until the session ends.
        #[arg(short, long)]
        follow: bool,
        /// Start at most this many lines before the end.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
    },
    /// Stop a session: SIGTERM to its process group, SIGKILL after the grace.
    Stop {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 10, value_name = "SECONDS")]
        grace: u64,
    },
    /// Connect this terminal (or any program's stdio) to a pipe-mode
    /// session's stdin, stdout and stderr. A line `~.` detaches and leaves
    /// the session running (so does Ctrl-D on a terminal); one attach at a
    /// time. Exits with the session's exit code when it ends.
    Attach {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
        /// Replay the output from the start of the logs (default: only new
        /// output).
        #[arg(long)]
        from_start: bool,
    },
    /// Send a signal to a session's process group (default KILL).
    Kill {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
        /// A name (TERM, KILL, HUP, SIGINT...) or a number.
        #[arg(long, short, default_value = "KILL")]
        signal: String,
    },
}

/// `banger vm session start` flags.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// VM name.
    pub vm: String,
    /// Session name, unique in the VM while it runs.
    #[arg(long)]
    pub name: String,
    /// Guest directory to run in (default: /root/repo when it exists, else /root).
    #[arg(long)]
    pub cwd: Option<String>,
    /// `detached`: stdin is /dev/null; `pipe`: a pipe kept open by the guest
    /// (for `attach`).
    #[arg(long, value_enum, default_value_t = StdinArg::Detached)]
    pub stdin_mode: StdinArg,
    /// A command that must be on the guest's PATH (repeatable).
    #[arg(long = "require-command", value_name = "CMD")]
    pub require_commands: Vec<String>,
    /// Environment entry KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Print the session as JSON.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments (no shell).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--stdin-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StdinArg {
    Detached,
    Pipe,
}

/// `--stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StreamArg {
    Stdout,
    Stderr,
    Both,
}

fn session_path(vm: &str, session: &str, rest: &str) -> String {
    // vm_path escapes one path segment; reuse it for the session name.
    let escaped = vm_path(session, "");
    let segment = escaped.strip_prefix("/v1/vms/").unwrap_or(&escaped);
    format!("{}{segment}{rest}", vm_path(vm, "/sessions/"))
}

/// Run one session subcommand.
pub async fn run(client: &Client, cmd: SessionCommand) -> anyhow::Result<()> {
    match cmd {
        SessionCommand::Start(args) => {
            let req = SessionStartRequest {
                name: args.name,
                command: args.command,
                cwd: args.cwd,
                env: args.env,
                stdin_mode: match args.stdin_mode {
                    StdinArg::Detached => StdinMode::Detached,
                    StdinArg::Pipe => StdinMode::Pipe,
                },
                require_commands: args.require_commands,
            };
            let info: SessionInfo = client
                .post_json(&vm_path(&args.vm, "/sessions"), &req)
                .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!(
                    "started session {} in VM {} ({}{})",
                    info.name,
                    info.vm,
                    status_text(&info.status),
                    info.pid.map(|p| format!(", pid {p}")).unwrap_or_default()
                );
            }
        }
        SessionCommand::List { vm, json } => {
            let list: SessionList = client.get_json(&vm_path(&vm, "/sessions")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.sessions.is_empty() {
                println!("no sessions in VM {vm}");
            } else {
                println!("{:<20} {:<26} {:<8} COMMAND", "NAME", "STATE", "PID");
                for s in &list.sessions {
                    let mut state = status_text(&s.status);
                    if s.source != SessionSource::Guest {
                        state.push_str(" (last seen)");
                    }
                    println!(
                        "{:<20} {:<26} {:<8} {}",
                        s.name,
                        state,
                        s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        crate::term::line(&s.command.join(" "))
                    );
                }
            }
        }
        SessionCommand::Show { vm, session, json } => {
            let info: SessionInfo = client.get_json(&session_path(&vm, &session, "")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_show(&info);
            }
        }
        SessionCommand::Logs {
            vm,
            session,
            stream,
            follow,
            tail,
        } => logs(client, &vm, &session, stream, follow, tail).await?,
        SessionCommand::Attach {
            vm,
            session,
            from_start,
        } => {
            let code =
                crate::attach_cmd::attach(client.socket(), &vm, &session, from_start).await?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        SessionCommand::Stop { vm, session, grace } => {
            let info: SessionInfo = client
                .post_json(
                    &session_path(&vm, &session, "/stop"),
                    &SessionStopRequest {
                        grace_secs: Some(grace),
                    },
                )
                .await?;
            println!("session {}: {}", info.name, status_text(&info.status));
        }
        SessionCommand::Kill {
            vm,
            session,
            signal,
        } => {
            let info: SessionInfo = client
                .post_json(
                    &session_path(&vm, &session, "/kill"),
                    &SessionKillRequest {
                        signal: Some(signal),
                    },
                )
                .await?;
            println!("session {}: {}", info.name, status_text(&info.status));
        }
    }
    Ok(())
}

/// `running`, `exited 0`, `killed by signal 9 (KILL)`, ...
pub fn status_text(s: &SessionStatus) -> String {
    match s {
        SessionStatus::Starting {} => "starting".into(),
        SessionStatus::Running {} => "running".into(),
        SessionStatus::Exited { code } => format!("exited {code}"),
        SessionStatus::Signaled { signal } => match signal_name(*signal) {
            Some(name) => format!("killed by signal {signal} ({name})"),
            None => format!("killed by signal {signal}"),
        },
        SessionStatus::LaunchFailed { .. } => "launch failed".into(),
        SessionStatus::Lost { .. } => "ended (lost)".into(),
    }
}

fn time_text(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "-".into(),
        |ms| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            format!("{:.0} s ago", now.saturating_sub(ms) as f64 / 1000.0)
        },
    )
}

fn print_show(s: &SessionInfo) {
    let esc = |t: &str| crate::term::line(t).into_owned();
    println!("name:        {}", s.name);
    println!("vm:          {}", s.vm);
    println!("id:          {}", s.id);
    println!("command:     {}", esc(&s.command.join(" ")));
    println!("cwd:         {}", esc(&s.cwd));
    println!("stdin mode:  {}", s.stdin_mode);
    println!("state:       {}", status_text(&s.status));
    match &s.status {
        SessionStatus::LaunchFailed { message } | SessionStatus::Lost { message } => {
            println!("reason:      {}", esc(message))
        }
        _ => {}
    }
    if let Some(note) = &s.note {
        println!("note:        {note}");
    }
    println!(
        "pid:         {}",
        s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
    );
    println!("started:     {}", time_text(s.started_at_ms));
    println!("ended:       {}", time_text(s.ended_at_ms));
    if let SessionStatus::Exited { code } = s.status {
        println!("exit code:   {code}");
    }
    if let SessionStatus::Signaled { signal } = s.status {
        println!("signal:      {signal}");
    }
    for e in &s.env {
        println!("env:         {}", esc(e));
    }
    if let Some(tail) = s.stderr_tail.as_deref().filter(|t| !t.is_empty()) {
        println!("stderr tail:");
        let text = crate::term::text(tail);
        for line in text.lines() {
            println!("  {line}");
        }
    }
}

async fn logs(
    client: &Client,
    vm: &str,
    session: &str,
    stream: StreamArg,
    follow: bool,
    tail: Option<u32>,
) -> anyhow::Result<()> {
    let mut query = format!(
        "?stream={}",
        match stream {
            StreamArg::Stdout => "stdout",
            StreamArg::Stderr => "stderr",
            StreamArg::Both => "both",
        }
    );
    if follow {
        query.push_str("&follow=true");
    }
    if let Some(n) = tail {
        query.push_str(&format!("&tail={n}"));
    }
    let path = session_path(vm, session, &format!("/logs{query}"));
    // Guest output is shown escaped on a terminal, and passed on as it is
    // to a pipe or file.
    let escape_out = std::io::stdout().is_terminal();
    let escape_err = std::io::stderr().is_terminal();
    let mut pending = Vec::new();
    client
        .get_stream(&path, &mut |chunk| {
            pending.extend_from_slice(chunk);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let parsed: SessionLogLine = serde_json::from_slice(&line)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let (escape, mut out): (bool, Box<dyn Write>) = match parsed.stream {
                    LogStream::Stdout => (escape_out, Box::new(std::io::stdout().lock())),
                    LogStream::Stderr => (escape_err, Box::new(std::io::stderr().lock())),
                };
                if escape {
                    out.write_all(crate::term::text(&parsed.data).as_bytes())?;
                } else {
                    out.write_all(parsed.data.as_bytes())?;
                }
                out.flush()?;
            }
            Ok(())
        })
        .await
        .context("reading the session's logs")?;
    Ok(())
}

/// `/v1/vms/<name><rest>` with the VM name percent-encoded as one segment.
// The session routes carry two path parameters, which banger_wire::routes
// does not type yet (docs/api.md lists them); until it does they are built
// here with the same escaping.
fn vm_path(name: &str, rest: &str) -> String {
    let mut out = String::from("/v1/vms/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(rest);
    out
}
