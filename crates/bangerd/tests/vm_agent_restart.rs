//! Sessions survive a restart of the guest agent's unit: the image's
//! `banger-guest-agent.service` has `KillMode=process`, so `systemctl
//! restart` ends the agent alone, and the supervisors it started
//! (docs/sessions.md) keep their commands running. The new agent finds them
//! again: same pid, output kept, stdin still fed, and `stop` still reaches
//! the command through its supervisor. With systemd's default KillMode
//! (control-group) the restart kills the session and this test fails.
//!
//! Needs an image built from the current recipes (scripts/test-store.sh).

mod common;
mod vm_harness;

use std::time::Duration;

use banger_wire::session::{SessionInfo, SessionSource, SessionStatus};
use vm_harness::{boot_tests, privileged, test_image, wait_until, World};

fn show(world: &World, session: &str) -> SessionInfo {
    world.session_show("box", session)
}

fn guest(world: &World, script: &str) -> String {
    world.banger_ok(&["vm", "ssh", "box", "--", "sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_survive_a_restart_of_the_agent_unit() {
    let test = "sessions_survive_a_restart_of_the_agent_unit";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    let world = World::new(&vm_harness::config(&image.name), Some(image)).await;
    world.banger_ok(&["vm", "create", "--name", "box"]);

    world.banger_ok(&[
        "vm",
        "session",
        "start",
        "box",
        "--name",
        "cat",
        "--stdin-mode",
        "pipe",
        "--",
        "cat",
    ]);
    let cat = show(&world, "cat");
    assert_eq!(cat.status, SessionStatus::Running {}, "{cat:?}");
    let pid = cat.pid.expect("a running session has a pid");
    let fifo = format!("/run/banger/sessions/{}/stdin", cat.id);
    guest(&world, &format!("printf 'before\\n' > {fifo}"));
    wait_until("cat's echo", Duration::from_secs(60), || {
        world.banger_ok(&["vm", "session", "logs", "box", "cat"]) == "before\n"
    });

    let agent_pid = |w: &World| {
        guest(
            w,
            "systemctl show --property=MainPID --value banger-guest-agent.service",
        )
        .trim()
        .to_owned()
    };
    let before = agent_pid(&world);
    assert_ne!(before, "0", "the agent runs under its unit");
    guest(&world, "systemctl restart banger-guest-agent.service");
    let after = agent_pid(&world);
    assert!(
        after != before && after != "0",
        "the agent was restarted: MainPID {before} -> {after}"
    );

    // The command and its supervisor lived through it.
    let alive = guest(
        &world,
        &format!("kill -0 {pid} && echo alive; cat /proc/{pid}/comm"),
    );
    assert_eq!(
        alive, "alive\ncat\n",
        "session command {pid} after the restart"
    );
    // The new agent reports the same live session (the daemon asks it).
    wait_until(
        "the restarted agent to answer",
        Duration::from_secs(60),
        || show(&world, "cat").source == SessionSource::Guest,
    );
    let cat = show(&world, "cat");
    assert_eq!(cat.status, SessionStatus::Running {}, "{cat:?}");
    assert_eq!(cat.pid, Some(pid), "the same process");
    guest(&world, &format!("printf 'after\\n' > {fifo}"));
    wait_until(
        "cat's echo after the restart",
        Duration::from_secs(60),
        || world.banger_ok(&["vm", "session", "logs", "box", "cat"]) == "before\nafter\n",
    );
    // Its supervisor still takes control requests.
    world.banger_ok(&["vm", "session", "stop", "box", "cat"]);
    wait_until("cat's end", Duration::from_secs(60), || {
        show(&world, "cat").status.is_ended()
    });
    assert_eq!(
        show(&world, "cat").status,
        SessionStatus::Signaled { signal: 15 }
    );
    world.banger_ok(&["vm", "delete", "--force", "box"]);
}
