//! Supervised sessions run by the real agent binary on this host (the guest
//! side of `docs/sessions.md`): launch, pipe stdin, logs, stop, kill,
//! preflight, and survival of the agent that started them.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use banger_vsock_agent::server::{handle_request, AgentContext};
use banger_wire::guest::{
    AgentRequest, AgentResponse, GuestSession, LogStream, SessionSpec, SessionStatus, StdinMode,
};

fn ctx(root: &std::path::Path) -> AgentContext {
    AgentContext {
        proc_root: PathBuf::from("/proc"),
        root: root.to_owned(),
        agent_exe: PathBuf::from(env!("CARGO_BIN_EXE_banger-vsock-agent")),
        system: Default::default(),
    }
}

fn spec(id: u8, name: &str, command: &[&str], stdin: StdinMode) -> SessionSpec {
    SessionSpec {
        id: format!("{id:032x}"),
        name: name.to_owned(),
        command: command.iter().map(|s| s.to_string()).collect(),
        cwd: "/".into(),
        env: vec!["GREETING=hello".into()],
        stdin,
        require_commands: vec![],
    }
}

fn session(r: AgentResponse) -> GuestSession {
    match r {
        AgentResponse::Session(s) => s,
        other => panic!("expected a session, got {other:?}"),
    }
}

fn logs(ctx: &AgentContext, id: &str, stream: LogStream) -> String {
    match handle_request(
        ctx,
        &AgentRequest::SessionLogs {
            id: id.to_owned(),
            stream,
            offset: 0,
            max_bytes: 1 << 20,
            tail_lines: None,
        },
    ) {
        AgentResponse::SessionLog(c) => c.data,
        other => panic!("{other:?}"),
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn show(ctx: &AgentContext, id: &str) -> GuestSession {
    session(handle_request(
        ctx,
        &AgentRequest::SessionShow { id: id.to_owned() },
    ))
}

#[test]
fn a_pipe_session_echoes_stdin_and_stop_ends_it_with_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let sp = spec(1, "cat", &["cat"], StdinMode::Pipe);
    let s = session(handle_request(
        &ctx,
        &AgentRequest::SessionStart { spec: sp.clone() },
    ));
    assert_eq!(s.status, SessionStatus::Running {});
    let pid = s.pid.expect("a running session has a pid");
    let dir = ctx.sessions().root.join(&sp.id);
    // Two writers one after the other: cat must not see EOF in between.
    for line in ["one\n", "two\n"] {
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("stdin"))
            .unwrap();
        w.write_all(line.as_bytes()).unwrap();
    }
    wait_for("cat's output", || {
        logs(&ctx, &sp.id, LogStream::Stdout) == "one\ntwo\n"
    });
    assert_eq!(show(&ctx, &sp.id).status, SessionStatus::Running {});
    assert_eq!(show(&ctx, &sp.id).pid, Some(pid));
    let stopped = session(handle_request(
        &ctx,
        &AgentRequest::SessionStop {
            id: sp.id.clone(),
            grace_ms: 5000,
        },
    ));
    let _ = stopped;
    wait_for("the end", || show(&ctx, &sp.id).status.is_ended());
    let s = show(&ctx, &sp.id);
    assert_eq!(s.status, SessionStatus::Signaled { signal: 15 });
    assert!(s.ended_at_ms.is_some());
    // Its name may now be reused.
    let again = spec(2, "cat", &["true"], StdinMode::Detached);
    session(handle_request(
        &ctx,
        &AgentRequest::SessionStart { spec: again },
    ));
}

#[test]
fn stop_escalates_to_sigkill_and_kill_reports_the_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let stubborn = spec(
        3,
        "stubborn",
        &[
            "sh",
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 1; done",
        ],
        StdinMode::Detached,
    );
    session(handle_request(
        &ctx,
        &AgentRequest::SessionStart {
            spec: stubborn.clone(),
        },
    ));
    wait_for("the trap", || {
        logs(&ctx, &stubborn.id, LogStream::Stdout) == "ready\n"
    });
    handle_request(
        &ctx,
        &AgentRequest::SessionStop {
            id: stubborn.id.clone(),
            grace_ms: 300,
        },
    );
    wait_for("SIGKILL", || show(&ctx, &stubborn.id).status.is_ended());
    assert_eq!(
        show(&ctx, &stubborn.id).status,
        SessionStatus::Signaled { signal: 9 }
    );

    let sleeper = spec(4, "sleeper", &["sleep", "600"], StdinMode::Detached);
    session(handle_request(
        &ctx,
        &AgentRequest::SessionStart {
            spec: sleeper.clone(),
        },
    ));
    handle_request(
        &ctx,
        &AgentRequest::SessionSignal {
            id: sleeper.id.clone(),
            signal: 9,
        },
    );
    wait_for("the kill", || show(&ctx, &sleeper.id).status.is_ended());
    assert_eq!(
        show(&ctx, &sleeper.id).status,
        SessionStatus::Signaled { signal: 9 }
    );
}

#[test]
fn exit_code_stderr_and_environment_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let sp = spec(
        5,
        "env",
        &[
            "sh",
            "-c",
            "echo \"$GREETING $BANGER_SESSION\"; echo oops >&2; exit 3",
        ],
        StdinMode::Detached,
    );
    session(handle_request(
        &ctx,
        &AgentRequest::SessionStart { spec: sp.clone() },
    ));
    wait_for("exit", || show(&ctx, &sp.id).status.is_ended());
    let s = show(&ctx, &sp.id);
    assert_eq!(s.status, SessionStatus::Exited { code: 3 });
    assert_eq!(s.stderr_tail.as_deref(), Some("oops\n"));
    assert_eq!(logs(&ctx, &sp.id, LogStream::Stdout), "hello env\n");
    assert_eq!(logs(&ctx, &sp.id, LogStream::Stderr), "oops\n");
    let listed = match handle_request(&ctx, &AgentRequest::SessionList {}) {
        AgentResponse::Sessions { sessions } => sessions,
        other => panic!("{other:?}"),
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].spec, sp);
}

#[test]
fn preflight_names_each_missing_piece_and_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let refused =
        |sp: SessionSpec| match handle_request(&ctx, &AgentRequest::SessionStart { spec: sp }) {
            AgentResponse::SessionRefused { problems } => problems,
            other => panic!("expected a refusal, got {other:?}"),
        };
    let mut sp = spec(6, "pf", &["true"], StdinMode::Detached);
    sp.cwd = "/nonexistent/banger-cwd".into();
    let p = refused(sp.clone());
    assert!(
        p.len() == 1 && p[0].contains("cwd /nonexistent/banger-cwd does not exist"),
        "{p:?}"
    );
    sp.cwd = "/".into();
    sp.command = vec!["banger-no-such-command".into()];
    let p = refused(sp.clone());
    assert!(
        p.len() == 1 && p[0].contains("command \"banger-no-such-command\""),
        "{p:?}"
    );
    sp.command = vec!["true".into()];
    sp.require_commands = vec!["sh".into(), "banger-no-such-tool".into()];
    let p = refused(sp.clone());
    assert!(
        p.len() == 1 && p[0].contains("required command \"banger-no-such-tool\""),
        "{p:?}"
    );
    assert!(!ctx.sessions().root.join(&sp.id).exists());

    // A name still running is refused.
    let a = spec(7, "dup", &["sleep", "600"], StdinMode::Detached);
    session(handle_request(
        &ctx,
        &AgentRequest::SessionStart { spec: a.clone() },
    ));
    let b = spec(8, "dup", &["true"], StdinMode::Detached);
    match handle_request(&ctx, &AgentRequest::SessionStart { spec: b }) {
        AgentResponse::Error { message } => {
            assert!(message.contains("\"dup\" is still running"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    handle_request(
        &ctx,
        &AgentRequest::SessionSignal {
            id: a.id,
            signal: 9,
        },
    );
}

#[test]
fn a_launch_failure_is_reported_with_its_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    // Executable by mode but not a valid program: preflight passes, exec fails.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let bad = bin.join("broken");
    std::fs::write(&bad, b"\x7fELFgarbage").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut sp = spec(9, "broken", &[bad.to_str().unwrap()], StdinMode::Detached);
    sp.cwd = tmp.path().to_str().unwrap().to_owned();
    let s = session(handle_request(
        &ctx,
        &AgentRequest::SessionStart { spec: sp.clone() },
    ));
    wait_for("the failure", || show(&ctx, &sp.id).status.is_ended());
    let s2 = show(&ctx, &sp.id);
    let _ = s;
    match &s2.status {
        SessionStatus::LaunchFailed { message } => {
            assert!(message.contains("cannot execute"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(s2.stderr_tail.unwrap().contains("cannot execute"));
}

fn io(ctx: &AgentContext, id: &str, stdin: &[u8], out: u64, err: u64, max: u32) -> AgentResponse {
    handle_request(
        ctx,
        &AgentRequest::SessionIo {
            id: id.to_owned(),
            stdin: stdin.to_vec(),
            stdout_offset: out,
            stderr_offset: err,
            max_bytes: max,
        },
    )
}

fn io_chunk(r: AgentResponse) -> banger_wire::guest::SessionIoChunk {
    match r {
        AgentResponse::SessionIo(c) => c,
        other => panic!("expected an io chunk, got {other:?}"),
    }
}

/// The attach step: binary stdin in, raw log bytes out by offset, a full
/// pipe never blocks the agent, a detached session refuses input.
#[test]
fn session_io_writes_stdin_and_reads_raw_logs_by_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = ctx(tmp.path());
    let sp = spec(
        40,
        "io",
        &["sh", "-c", "cat; echo done >&2"],
        StdinMode::Pipe,
    );
    session(handle_request(
        &ctx,
        &AgentRequest::SessionStart { spec: sp.clone() },
    ));
    // The current ends, asked before anything was written.
    let c = io_chunk(io(&ctx, &sp.id, b"", u64::MAX, u64::MAX, 0));
    assert_eq!((c.stdout_offset, c.stderr_offset), (0, 0));
    let bytes = b"a\xffb\n";
    let c = io_chunk(io(&ctx, &sp.id, bytes, 0, 0, 1024));
    assert_eq!(c.stdin_written, 4);
    let mut out = Vec::new();
    wait_for("cat's raw output", || {
        let c = io_chunk(io(&ctx, &sp.id, b"", out.len() as u64, 0, 1024));
        assert_eq!(c.stdout_offset, out.len() as u64);
        out.extend_from_slice(&c.stdout);
        out == bytes
    });
    // From an offset in the middle, and past the end (clamped).
    let c = io_chunk(io(&ctx, &sp.id, b"", 2, 99, 1));
    assert_eq!(
        (c.stdout_offset, &c.stdout[..], c.stderr_offset),
        (2, &b"b"[..], 0)
    );
    // A command that stops reading: the pipe fills, the agent answers with
    // what fit instead of blocking.
    handle_request(
        &ctx,
        &AgentRequest::SessionSignal {
            id: sp.id.clone(),
            signal: 19,
        },
    );
    let big = vec![b'x'; 1 << 20];
    let c = io_chunk(io(&ctx, &sp.id, &big, 0, 0, 0));
    assert!(
        c.stdin_written > 0 && (c.stdin_written as usize) < big.len(),
        "{}",
        c.stdin_written
    );
    handle_request(
        &ctx,
        &AgentRequest::SessionSignal {
            id: sp.id.clone(),
            signal: 18,
        },
    );
    handle_request(
        &ctx,
        &AgentRequest::SessionSignal {
            id: sp.id.clone(),
            signal: 9,
        },
    );
    wait_for("the end", || show(&ctx, &sp.id).status.is_ended());
    let c = io_chunk(io(&ctx, &sp.id, b"late", u64::MAX, 0, 64));
    assert_eq!(c.status, SessionStatus::Signaled { signal: 9 });
    assert_eq!(c.stdin_written, 0);

    let det = spec(41, "det", &["sleep", "30"], StdinMode::Detached);
    session(handle_request(
        &ctx,
        &AgentRequest::SessionStart { spec: det.clone() },
    ));
    match io(&ctx, &det.id, b"x", 0, 0, 0) {
        AgentResponse::Error { message } => assert!(message.contains("no stdin"), "{message}"),
        other => panic!("{other:?}"),
    }
    handle_request(
        &ctx,
        &AgentRequest::SessionSignal {
            id: det.id.clone(),
            signal: 9,
        },
    );
}
