//! `banger vm session` end to end: the real CLI and daemon, a guest booted
//! under QEMU/TCG whose agent supervises the sessions (docs/sessions.md).
//! One boot, one restart:
//!
//! 1. preflight: a missing cwd, a missing command and a missing
//!    `--require-command` are each refused with their own message, and
//!    nothing is started;
//! 2. a pipe-mode `cat` session: lines written to its stdin come back in its
//!    log; a second session writes only to stderr and `logs --stream stderr`
//!    shows only that; a name that still runs is refused;
//! 3. bangerd is SIGKILLed and restarted: the session is still the same
//!    process, its output is all there, and it still reads its stdin;
//! 4. `stop` ends `cat` with SIGTERM, `kill --signal KILL` another one with
//!    signal 9, and an ended name can be reused;
//! 5. `vm stop`: a session of the stopped VM says so; after `vm start` it
//!    reports that it ended.

mod common;
mod vm_harness;

use std::time::Duration;

use banger_wire::session::{SessionInfo, SessionList, SessionSource, SessionStatus};
use vm_harness::{boot_tests, privileged, test_image, text, wait_until, World};

fn show(world: &World, session: &str) -> SessionInfo {
    world.session_show("box", session)
}

fn list(world: &World) -> SessionList {
    let out = world.banger_ok(&["vm", "session", "list", "box", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Write `line` to session `name`'s stdin FIFO from inside the guest (the
/// guest-side contract the attach bridge builds on).
fn feed(world: &World, id: &str, line: &str) {
    world.banger_ok(&[
        "vm",
        "ssh",
        "box",
        "--",
        "sh",
        "-c",
        &format!("printf '%s\\n' '{line}' > /run/banger/sessions/{id}/stdin"),
    ]);
}

fn logs(world: &World, session: &str, stream: &str) -> (String, String) {
    let out = world.banger(&["vm", "session", "logs", "box", session, "--stream", stream]);
    assert!(out.status.success(), "{}", text(&out));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_live_in_the_guest_and_survive_the_daemon() {
    let test = "sessions_live_in_the_guest_and_survive_the_daemon";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    let mut world = World::new(&vm_harness::config(&image.name), Some(image)).await;
    world.banger_ok(&["vm", "create", "--name", "box"]);

    // 1. Preflight.
    let refused = |args: &[&str]| {
        let mut full = vec!["vm", "session", "start", "box"];
        full.extend_from_slice(args);
        let out = world.banger(&full);
        assert!(
            !out.status.success(),
            "{args:?} was accepted: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = refused(&["--name", "pf", "--cwd", "/nonexistent/dir", "--", "true"]);
    assert!(
        e.contains("cwd /nonexistent/dir does not exist in the guest"),
        "{e}"
    );
    let e = refused(&["--name", "pf", "--", "banger-no-such-cmd"]);
    assert!(
        e.contains("command \"banger-no-such-cmd\" is not an executable on the guest's PATH"),
        "{e}"
    );
    let e = refused(&[
        "--name",
        "pf",
        "--require-command",
        "banger-no-such-tool",
        "--",
        "true",
    ]);
    assert!(
        e.contains("required command \"banger-no-such-tool\" is not an executable"),
        "{e}"
    );
    assert!(
        list(&world).sessions.is_empty(),
        "a refused start left a record"
    );
    let guest = world.banger_ok(&[
        "vm",
        "ssh",
        "box",
        "--",
        "sh",
        "-c",
        "ls -A /run/banger/sessions 2>/dev/null; true",
    ]);
    assert_eq!(guest.trim(), "", "a refused start left a guest directory");

    // 2. A pipe-mode cat, and a stderr-only writer.
    world.banger_ok(&[
        "vm",
        "session",
        "start",
        "box",
        "--name",
        "cat",
        "--stdin-mode",
        "pipe",
        "--require-command",
        "sh",
        "--",
        "cat",
    ]);
    let cat = show(&world, "cat");
    assert_eq!(cat.status, SessionStatus::Running {}, "{cat:?}");
    assert_eq!(cat.cwd, "/root", "no /root/repo: the default cwd is /root");
    let pid = cat.pid.expect("a running session has a pid");
    feed(&world, &cat.id, "one");
    feed(&world, &cat.id, "two");
    wait_until("cat's echo", Duration::from_secs(30), || {
        logs(&world, "cat", "stdout").0 == "one\ntwo\n"
    });
    let out = world.banger(&[
        "vm", "session", "start", "box", "--name", "cat", "--", "true",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already has a session named \"cat\""),
        "{}",
        text(&out)
    );
    world.banger_ok(&[
        "vm",
        "session",
        "start",
        "box",
        "--name",
        "err",
        "--env",
        "WORD=bye",
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo \"$WORD\" >&2; exit 4",
    ]);
    wait_until("err's end", Duration::from_secs(30), || {
        show(&world, "err").status.is_ended()
    });
    let err = show(&world, "err");
    assert_eq!(err.status, SessionStatus::Exited { code: 4 });
    assert_eq!(err.stderr_tail.as_deref(), Some("bye\n"));
    assert_eq!(
        logs(&world, "err", "stderr"),
        (String::new(), "bye\n".into())
    );
    assert_eq!(
        logs(&world, "err", "stdout"),
        ("to-stdout\n".into(), String::new())
    );

    // 3. The daemon dies; the session does not.
    world.kill_daemon();
    world.start_daemon().await;
    let cat = show(&world, "cat");
    assert_eq!(cat.status, SessionStatus::Running {});
    assert_eq!(
        cat.pid,
        Some(pid),
        "the same process after the daemon's restart"
    );
    assert_eq!(
        logs(&world, "cat", "stdout").0,
        "one\ntwo\n",
        "nothing lost"
    );
    feed(&world, &cat.id, "three");
    wait_until(
        "cat's echo after the restart",
        Duration::from_secs(30),
        || logs(&world, "cat", "both").0 == "one\ntwo\nthree\n",
    );
    let tail = world.banger_ok(&["vm", "session", "logs", "box", "cat", "--tail", "1"]);
    assert_eq!(tail, "three\n");

    // 4. stop = SIGTERM; kill --signal KILL = signal 9; names free again.
    let stopped = world.banger_ok(&["vm", "session", "stop", "box", "cat"]);
    assert!(stopped.contains("cat"), "{stopped}");
    wait_until("cat's end", Duration::from_secs(30), || {
        show(&world, "cat").status.is_ended()
    });
    assert_eq!(
        show(&world, "cat").status,
        SessionStatus::Signaled { signal: 15 }
    );
    world.banger_ok(&[
        "vm", "session", "start", "box", "--name", "cat", "--", "sleep", "600",
    ]);
    let killed = world.banger_ok(&["vm", "session", "kill", "box", "cat", "--signal", "KILL"]);
    wait_until("the kill", Duration::from_secs(30), || {
        show(&world, "cat").status.is_ended()
    });
    assert_eq!(
        show(&world, "cat").status,
        SessionStatus::Signaled { signal: 9 },
        "{killed}"
    );
    let human = world.banger_ok(&["vm", "session", "show", "box", "cat"]);
    assert!(human.contains("killed by signal 9 (KILL)"), "{human}");

    // 5. Across vm stop / start.
    world.banger_ok(&[
        "vm", "session", "start", "box", "--name", "long", "--", "sleep", "600",
    ]);
    world.banger_ok(&["vm", "stop", "box"]);
    let long = show(&world, "long");
    assert_eq!(long.source, SessionSource::VmNotRunning, "{long:?}");
    assert!(
        long.note
            .as_deref()
            .unwrap_or("")
            .contains("VM box is stopped"),
        "{long:?}"
    );
    let out = world.banger(&["vm", "session", "logs", "box", "long"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("end with the VM"),
        "{}",
        text(&out)
    );
    world.banger_ok(&["vm", "start", "box"]);
    let long = show(&world, "long");
    assert_eq!(long.source, SessionSource::GuestForgot, "{long:?}");
    assert!(
        matches!(long.status, SessionStatus::Lost { .. }),
        "ended with the VM: {long:?}"
    );
    let err = show(&world, "err");
    assert_eq!(
        err.status,
        SessionStatus::Exited { code: 4 },
        "kept its end: {err:?}"
    );
    let names = world.banger_ok(&["vm", "session", "list", "box"]);
    for n in ["cat", "err", "long"] {
        assert!(names.contains(n), "{names}");
    }
    // The name of a session that ended with the VM can be used again.
    world.banger_ok(&[
        "vm", "session", "start", "box", "--name", "long", "--", "true",
    ]);
    world.banger_ok(&["vm", "delete", "--force", "box"]);
}
