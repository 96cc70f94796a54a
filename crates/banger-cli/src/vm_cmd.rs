//! `banger vm create|start|stop|restart|delete|list|show|logs|ports|ssh`:
//! a thin client of the `/v1/vms` routes, except `vm ssh`, which runs the
//! user's OpenSSH `ssh` with banger's key and known_hosts.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use banger_wire::routes::{self, NoBody};
use banger_wire::vm::{VmActivityRequest, VmCreateRequest, VmInfo, VmStartRequest, VmStopRequest};
use clap::{Args, Subcommand};

use crate::cli::GlobalArgs;
use crate::client::{self, Client};

/// `banger vm ...`
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM, copy a git workspace into /root/repo (with PATH), then
    /// run a command and exit with its status (after `--`) or open a shell:
    /// `vm run`, `vm run ./repo`, `vm run ./repo -- make test`,
    /// `vm run --rm -- script.sh`.
    Run(crate::run_cmd::RunArgs),
    /// Create a VM from an image and boot it (unless --no-start). Prints the
    /// size it gets (each value with where it came from), then progress until
    /// the VM answers SSH.
    Create(CreateArgs),
    /// Boot a stopped VM and wait until it answers SSH.
    Start {
        /// VM name.
        name: String,
    },
    /// Power a VM off (ACPI power button; killed after 30 s).
    Stop {
        /// VM name.
        name: String,
        /// Kill the VMM at once instead of asking the guest to power off.
        #[arg(long)]
        force: bool,
    },
    /// Stop then start a VM.
    Restart {
        /// VM name.
        name: String,
        /// Kill the VMM at once instead of asking the guest to power off.
        #[arg(long)]
        force: bool,
    },
    /// Delete VMs and everything they have (disks, address, tap, pinned host
    /// key). Deleting a VM that does not exist is not an error.
    Delete {
        /// VM names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Also delete running VMs (their VMM is killed).
        #[arg(long)]
        force: bool,
    },
    /// List VMs.
    #[command(visible_alias = "ls")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show everything about a VM: address, backend, disks and clone strategy,
    /// SSH details, and guest stats from its agent when it runs.
    Show {
        /// VM name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print a VM's serial console log.
    Logs {
        /// VM name.
        name: String,
        /// Keep printing new output (until interrupted).
        #[arg(short, long)]
        follow: bool,
    },
    /// List the TCP and UDP ports listening in a running VM, with their processes.
    Ports {
        /// VM name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Open a shell in a VM, or run a command there (`banger vm ssh NAME -- CMD...`),
    /// with OpenSSH, banger's key and banger's known_hosts (the VM's host key is
    /// pinned, never trusted on first use). Exits with the remote status.
    ///
    /// Unlike plain `ssh`, each argument after `--` reaches the guest as one
    /// word (banger quotes it for the remote shell), as with `vm run`:
    /// `-- sh -c 'echo "a  b"'` prints `a  b`.
    Ssh {
        /// VM name.
        name: String,
        /// Command to run instead of a shell; each argument is one word.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Long-lived commands supervised in the guest (docs/sessions.md).
    #[command(subcommand)]
    Session(crate::session_cmd::SessionCommand),
    /// Copy a local git checkout into a running VM (docs/workspace.md).
    #[command(subcommand)]
    Workspace(crate::workspace_cmd::WorkspaceCommand),
    /// Bridge stdin/stdout to the guest's `opencode acp` (Agent Client
    /// Protocol) over SSH, in /root/repo when it exists, else /root.
    Acp(crate::workspace_cmd::AcpArgs),
}

/// The flags `vm create` and `vm run` share: a new VM's name, image and size.
#[derive(Debug, Default, Clone, Args)]
pub struct VmSpecArgs {
    /// VM name: a DNS label (a-z, 0-9, '-'); generated when omitted.
    #[arg(long)]
    pub name: Option<String>,
    /// Image (default: `default_image_name` from the config).
    #[arg(long)]
    pub image: Option<String>,
    /// Number of vCPUs (default: `[vm_defaults]`, else a quarter of the host's CPUs).
    #[arg(long)]
    pub vcpu: Option<u32>,
    /// Memory, like 1G or 512M, or a number of MiB (default: `[vm_defaults]`,
    /// else an eighth of the host's RAM).
    #[arg(long)]
    pub memory: Option<String>,
    /// Size of the work disk mounted at /root, like 16G (default: `[vm_defaults]`, else 8G).
    #[arg(long)]
    pub disk_size: Option<String>,
}

impl VmSpecArgs {
    /// The create request for these flags.
    pub fn request(&self, no_start: bool) -> VmCreateRequest {
        VmCreateRequest {
            name: self.name.clone(),
            image: self.image.clone(),
            vcpu: self.vcpu,
            memory: self.memory.clone(),
            disk_size: self.disk_size.clone(),
            no_start,
        }
    }
}

/// `banger vm create` flags.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub spec: VmSpecArgs,
    /// Create the disks and the record, but do not boot.
    #[arg(long)]
    pub no_start: bool,
}

/// Run a `banger vm` subcommand.
pub fn run(global: &GlobalArgs, cmd: VmCommand) -> anyhow::Result<ExitCode> {
    let cmd = match cmd {
        VmCommand::Run(args) => return crate::run_cmd::run(global, args),
        VmCommand::Workspace(cmd) => return crate::workspace_cmd::run(global, cmd),
        VmCommand::Acp(args) => return crate::workspace_cmd::acp(global, args),
        other => other,
    };
    let (runtime, client) = global.connect()?;
    let ssh = runtime.block_on(async {
        match cmd {
            VmCommand::Run(_) | VmCommand::Workspace(_) | VmCommand::Acp(_) => {
                unreachable!("dispatched above")
            }
            VmCommand::Create(args) => create(&client, args).await.map(|()| None),
            VmCommand::Start { name } => start(&client, &name).await.map(|()| None),
            VmCommand::Stop { name, force } => {
                stop(&client, &name, force, false).await.map(|()| None)
            }
            VmCommand::Restart { name, force } => {
                stop(&client, &name, force, true).await.map(|()| None)
            }
            VmCommand::Delete { names, force } => {
                delete(&client, &names, force).await.map(|()| None)
            }
            VmCommand::List { json } => list(&client, json).await.map(|()| None),
            VmCommand::Show { name, json } => show(&client, &name, json).await.map(|()| None),
            VmCommand::Logs { name, follow } => logs(&client, &name, follow).await.map(|()| None),
            VmCommand::Ports { name, json } => ports(&client, &name, json).await.map(|()| None),
            VmCommand::Session(cmd) => crate::session_cmd::run(&client, cmd).await.map(|()| None),
            VmCommand::Ssh { name, command } => ssh_target(&client, &name)
                .await
                .map(|vm| Some((vm, command))),
        }
    })?;
    // The runtime is gone before exec replaces this process.
    drop(runtime);
    match ssh {
        Some((vm, command)) => exec_ssh(&vm, &command),
        None => Ok(ExitCode::SUCCESS),
    }
}

async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<()> {
    let req = args.spec.request(args.no_start);
    let mut render = client::stderr_renderer();
    let vm = create_vm(client, &req, render.as_mut()).await?;
    println!("{}", ready_line(&vm));
    Ok(())
}

/// `POST /v1/vms`, progress to `render`; the created VM (`vm create`, `vm run`).
pub(crate) async fn create_vm(
    client: &Client,
    req: &VmCreateRequest,
    render: &mut dyn client::StreamRenderer,
) -> anyhow::Result<VmInfo> {
    Ok(client
        .call_stream(&routes::VM_CREATE.target(), req, render)
        .await?)
}

/// `POST /v1/vms/NAME/start`, progress to `render`; the started VM.
pub(crate) async fn start_vm(
    client: &Client,
    name: &str,
    render: &mut dyn client::StreamRenderer,
) -> anyhow::Result<VmInfo> {
    Ok(client
        .call_stream(&routes::VM_START.at(name), &VmStartRequest {}, render)
        .await?)
}

fn ready_line(vm: &VmInfo) -> String {
    match &vm.ip {
        Some(ip) if vm.state == "running" => format!(
            "{} is running at {ip}; connect with `banger vm ssh {}`",
            vm.name, vm.name
        ),
        _ => format!("{} is {}", vm.name, vm.state),
    }
}

async fn start(client: &Client, name: &str) -> anyhow::Result<()> {
    let mut render = client::stderr_renderer();
    let vm = start_vm(client, name, render.as_mut()).await?;
    println!("{}", ready_line(&vm));
    Ok(())
}

async fn stop(client: &Client, name: &str, force: bool, restart: bool) -> anyhow::Result<()> {
    let mut render = client::stderr_renderer();
    let route = if restart {
        routes::VM_RESTART
    } else {
        routes::VM_STOP
    };
    let vm = client
        .call_stream(&route.at(name), &VmStopRequest { force }, render.as_mut())
        .await?;
    println!("{}", ready_line(&vm));
    Ok(())
}

async fn delete(client: &Client, names: &[String], force: bool) -> anyhow::Result<()> {
    for name in names {
        let mut target = routes::VM_DELETE.at(name);
        if force {
            target = target.query("force", "true");
        }
        let done = client.call(&target, &NoBody {}).await?;
        if done.existed {
            println!("deleted {}", done.name);
        } else {
            println!("{} does not exist", done.name);
        }
    }
    Ok(())
}

async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let list = client.call(&routes::VM_LIST.target(), &NoBody {}).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", format_list(&list.vms));
    }
    Ok(())
}

/// The `banger vm list` table.
pub fn format_list(vms: &[VmInfo]) -> String {
    let header = [
        "NAME", "STATE", "IP", "VCPU", "MEMORY", "DISK", "IMAGE", "BACKEND",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for vm in vms {
        rows.push(vec![
            vm.name.clone(),
            vm.state.clone(),
            vm.ip.clone().unwrap_or_else(|| "-".into()),
            vm.vcpu.to_string(),
            banger_config::format_size(vm.memory_mib << 20),
            banger_config::format_size(vm.disk_bytes),
            vm.image.clone(),
            vm.backend.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table(&rows)
}

/// Rows as left-aligned columns two spaces apart (first row: the header).
/// Cells are escaped ([`crate::term::line`]): some come from the guest.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| crate::term::line(c).into_owned())
                .collect()
        })
        .collect();
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

async fn show(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let vm = client.call(&routes::VM_SHOW.at(name), &NoBody {}).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&vm)?);
    } else {
        print!("{}", format_show(&vm));
        // Phase timings of `banger vm run` (none for other VMs).
        if let Some(timings) = vm.details.as_ref().and_then(|d| d.timings.as_ref()) {
            println!("timings (vm run):");
            for line in crate::run_cmd::format_timings(timings).lines() {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

/// The `banger vm show` text.
pub fn format_show(vm: &VmInfo) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("name", vm.name.clone()),
        ("id", vm.id.clone()),
        ("state", vm.state.clone()),
        ("image", format!("{} (kernel {})", vm.image, vm.kernel)),
        ("vcpu", vm.vcpu.to_string()),
        ("memory", banger_config::format_size(vm.memory_mib << 20)),
        ("work disk", banger_config::format_size(vm.disk_bytes)),
        ("ip", vm.ip.clone().unwrap_or_else(|| "-".into())),
        ("mac", vm.mac.clone()),
        ("tap", vm.tap.clone().unwrap_or_else(|| "-".into())),
        ("backend", vm.backend.clone().unwrap_or_else(|| "-".into())),
        (
            "vmm pid",
            vm.vmm_pid.map_or_else(|| "-".into(), |p| p.to_string()),
        ),
    ];
    if let Some(spec) = &vm.spec {
        rows.push((
            "spec",
            format!(
                "vcpu from {}, memory from {}, disk from {}",
                spec.vcpu_source, spec.memory_source, spec.disk_source
            ),
        ));
    }
    if let Some(err) = &vm.last_error {
        rows.push(("last error", err.clone()));
    }
    if let Some(d) = &vm.details {
        if let Some(reason) = &d.backend_reason {
            rows.push(("backend reason", reason.clone()));
        }
        rows.push(("root disk", d.disks.root.clone()));
        rows.push((
            "clone strategy",
            d.disks.clone_strategy.clone().unwrap_or_else(|| "-".into()),
        ));
        rows.push(("work disk file", d.disks.work.clone()));
        rows.push(("config drive", d.disks.config.clone()));
        rows.push(("serial log", d.serial_log.clone()));
        rows.push(("ssh key", d.ssh.key.clone()));
        rows.push(("known_hosts", d.ssh.known_hosts.clone()));
        if let Some(fp) = &d.ssh.host_key_fingerprint {
            rows.push(("host key", fp.clone()));
        }
        if let Some(h) = &d.agent {
            let applied = match &h.applied {
                None => "not yet".to_owned(),
                Some(Ok(())) => "ok".to_owned(),
                Some(Err(e)) => format!("failed: {e}"),
            };
            rows.push((
                "agent",
                format!(
                    "{} (up {}s, config applied: {applied})",
                    h.version, h.uptime_secs
                ),
            ));
        }
        if let Some(s) = &d.stats {
            rows.push((
                "load",
                format!("{:.2} {:.2} {:.2}", s.load1, s.load5, s.load15),
            ));
            rows.push((
                "guest memory",
                format!(
                    "{} available of {}",
                    human(s.mem_available_bytes),
                    human(s.mem_total_bytes)
                ),
            ));
            for disk in [&s.root_disk, &s.work_disk].into_iter().flatten() {
                rows.push((
                    "disk usage",
                    format!(
                        "{}: {} used of {}",
                        disk.mount,
                        human(disk.used_bytes),
                        human(disk.total_bytes)
                    ),
                ));
            }
        }
        if let Some(at) = d.stats_at {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            rows.push((
                "sampled",
                format!("{:.0} s ago", (now - at).max(0) as f64 / 1000.0),
            ));
        }
        if let Some(e) = &d.agent_error {
            rows.push(("agent error", e.clone()));
        }
    }
    // Errors may quote the guest's console over several lines; every other
    // value is one line, and anything the guest named is escaped.
    rows.iter()
        .map(|(k, v)| {
            let v = match *k {
                "last error" | "agent error" => crate::term::text(v),
                _ => crate::term::line(v),
            };
            format!("{k:<15} {v}\n")
        })
        .collect()
}

use banger_wire::units::human_bytes as human;

async fn logs(client: &Client, name: &str, follow: bool) -> anyhow::Result<()> {
    let mut target = routes::VM_LOGS.at(name);
    if follow {
        target = target.query("follow", "true");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // The console is the guest's: its escape sequences are shown, not run.
    let mut escaper = crate::term::StreamEscaper::default();
    client
        .get_stream(&target.path, &mut |chunk| {
            out.write_all(escaper.push(chunk).as_bytes())?;
            out.flush()
        })
        .await?;
    let rest = escaper.finish();
    if !rest.is_empty() {
        let _ = out.write_all(rest.as_bytes());
    }
    Ok(())
}

async fn ports(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let ports = client.call(&routes::VM_PORTS.at(name), &NoBody {}).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&ports)?);
        return Ok(());
    }
    let mut rows = vec![vec![
        "PROTO".to_owned(),
        "ADDRESS".to_owned(),
        "PORT".to_owned(),
        "PROCESS".to_owned(),
    ]];
    for p in &ports.ports {
        let process = match (&p.process, p.pid) {
            (Some(name), Some(pid)) => format!("{name} ({pid})"),
            (Some(name), None) => name.clone(),
            (None, Some(pid)) => pid.to_string(),
            (None, None) => "-".into(),
        };
        rows.push(vec![
            p.proto.clone(),
            p.address.clone(),
            p.port.to_string(),
            process,
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

/// Record the session with the daemon and get the VM's SSH details.
pub(crate) async fn ssh_target(client: &Client, name: &str) -> anyhow::Result<VmInfo> {
    let vm = client
        .call(&routes::VM_ACTIVITY.at(name), &VmActivityRequest {})
        .await?;
    if vm.state != "running" {
        bail!(
            "VM {name} is {}; start it with `banger vm start {name}`",
            vm.state
        );
    }
    Ok(vm)
}

/// The OpenSSH command line for `vm`: banger's key only, banger's
/// known_hosts only, strict host key checking.
pub fn ssh_args(vm: &VmInfo, command: &[String]) -> anyhow::Result<Vec<String>> {
    let details = vm
        .details
        .as_ref()
        .context("the daemon sent no SSH details")?;
    let host = details
        .ssh
        .host
        .as_deref()
        .with_context(|| format!("VM {} has no address", vm.name))?;
    let mut args = vec![
        "-i".to_owned(),
        details.ssh.key.clone(),
        "-o".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
        "-o".to_owned(),
        format!("UserKnownHostsFile={}", details.ssh.known_hosts),
        "-o".to_owned(),
        "GlobalKnownHostsFile=/dev/null".to_owned(),
        "-o".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        "-o".to_owned(),
        "LogLevel=ERROR".to_owned(),
        "--".to_owned(),
        format!("{}@{host}", details.ssh.user),
    ];
    args.extend(command.iter().cloned());
    Ok(args)
}

/// The `ssh` arguments of `vm ssh NAME -- COMMAND`: the command as one
/// remote command line with each argument quoted (ssh itself would join the
/// words with spaces and let the remote shell split them again).
pub fn vm_ssh_args(vm: &VmInfo, command: &[String]) -> anyhow::Result<Vec<String>> {
    if command.is_empty() {
        return ssh_args(vm, &[]);
    }
    ssh_args(vm, &[crate::shell::join(command)])
}

fn exec_ssh(vm: &VmInfo, command: &[String]) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let args = vm_ssh_args(vm, command)?;
    // exec: ssh's exit status (the remote command's) becomes ours.
    let err = std::process::Command::new("ssh").args(&args).exec();
    Err(anyhow::Error::new(err).context("cannot run `ssh` (install the OpenSSH client)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_wire::vm::{VmDetails, VmDisks, VmSshAccess};

    #[test]
    fn table_cells_from_the_guest_are_escaped_and_aligned() {
        // A process name as the agent reports it from /proc/<pid>/comm.
        let rows = vec![
            vec!["PORT".to_owned(), "PROCESS".to_owned()],
            vec!["22".to_owned(), "sshd".to_owned()],
            vec!["80".to_owned(), "x\x1b]52;c;aGk=\x07\rnginx\n".to_owned()],
        ];
        let text = table(&rows);
        assert!(!text.contains(['\x1b', '\x07', '\r']), "{text:?}");
        assert_eq!(
            text,
            "PORT  PROCESS\n22    sshd\n80    x\\e]52;c;aGk=\\x07\\rnginx\\n\n"
        );
    }

    fn vm() -> VmInfo {
        VmInfo {
            id: "0123".into(),
            name: "web".into(),
            state: "running".into(),
            image: "debian-bookworm".into(),
            kernel: "generic-6.12".into(),
            vcpu: 2,
            memory_mib: 1024,
            disk_bytes: 8 << 30,
            ip: Some("172.16.0.2".into()),
            mac: "02:00:00:00:00:01".into(),
            tap: Some("banger-t0".into()),
            backend: Some("qemu-tcg".into()),
            vmm_pid: Some(42),
            created_at: 0,
            last_activity_at: None,
            spec: None,
            last_error: None,
            details: Some(VmDetails {
                disks: VmDisks {
                    root: "/s/root.ext4".into(),
                    clone_strategy: Some("sparse-copy".into()),
                    work: "/s/work.ext4".into(),
                    config: "/s/config.ext4".into(),
                },
                ssh: VmSshAccess {
                    user: "root".into(),
                    host: Some("172.16.0.2".into()),
                    key: "/k/id_ed25519".into(),
                    known_hosts: "/s/ssh/known_hosts".into(),
                    host_key_fingerprint: None,
                },
                serial_log: "/s/serial.log".into(),
                run_dir: "/r".into(),
                backend_reason: None,
                agent: None,
                stats: None,
                agent_error: None,
                stats_at: None,
                timings: None,
            }),
        }
    }

    #[test]
    fn ssh_uses_bangers_key_and_known_hosts_strictly() {
        let args = ssh_args(&vm(), &["uname".into(), "-a".into()]).unwrap();
        assert_eq!(
            args.join(" "),
            "-i /k/id_ed25519 -o IdentitiesOnly=yes -o UserKnownHostsFile=/s/ssh/known_hosts \
             -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o LogLevel=ERROR \
             -- root@172.16.0.2 uname -a"
        );
    }

    #[test]
    fn vm_ssh_sends_one_quoted_command_line() {
        let args = vm_ssh_args(
            &vm(),
            &["sh".into(), "-c".into(), "echo \"a  b\" > /root/f".into()],
        )
        .unwrap();
        assert_eq!(args[args.len() - 2], "root@172.16.0.2");
        assert_eq!(args[args.len() - 1], r#"sh -c 'echo "a  b" > /root/f'"#);
        // No command: no remote command line at all (a login shell).
        let args = vm_ssh_args(&vm(), &[]).unwrap();
        assert_eq!(args.last().map(String::as_str), Some("root@172.16.0.2"));
    }

    #[test]
    fn list_is_an_aligned_table() {
        let mut stopped = vm();
        stopped.name = "db".into();
        stopped.state = "stopped".into();
        stopped.ip = None;
        stopped.backend = None;
        let text = format_list(&[vm(), stopped]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME  STATE    IP          VCPU  MEMORY  DISK  IMAGE            BACKEND"
        );
        assert_eq!(
            lines[1],
            "web   running  172.16.0.2  2     1G      8G    debian-bookworm  qemu-tcg"
        );
        assert_eq!(
            lines[2],
            "db    stopped  -           2     1G      8G    debian-bookworm  -"
        );
    }

    #[test]
    fn show_lists_disks_and_ssh() {
        let text = format_show(&vm());
        assert!(text.contains("clone strategy  sparse-copy\n"), "{text}");
        assert!(
            text.contains("known_hosts     /s/ssh/known_hosts\n"),
            "{text}"
        );
    }
}
