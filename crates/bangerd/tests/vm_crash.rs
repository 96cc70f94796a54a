//! The daemon is SIGKILLed at random moments of `vm create`, `vm start`
//! and `vm delete` and restarted; after each recovery nothing may be left over: no VMM
//! process, tap, lease, record, VM or run directory, or `known_hosts` line
//! that no VM owns. A VM whose create was interrupted is either fully there
//! and usable (running, SSH works) or fully gone; one whose delete had
//! begun is gone; one whose start was interrupted is running (SSH works)
//! or stopped holding nothing.
//!
//! `BANGER_CRASH_TRIALS` sets the number of trials (10 by default, what CI
//! runs), `BANGER_CRASH_SEED` the random seed (printed, to replay a run).
//! Each trial prints one line; the summary counts outcomes per phase.
//! Requests go through curl rather than the CLI: a CLI that finds no
//! daemon starts one itself, which would race the restart.

mod common;
mod vm_harness;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_wire::api::StreamEvent;
use rand::{RngExt, SeedableRng};
use vm_harness::{boot_tests, privileged, test_image, World};

/// Taps the pool may hold idle (the default `tap_pool_size`).
const POOL_SIZE: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_create_and_delete_leaves_nothing_behind() {
    let test = "sigkill_during_create_and_delete_leaves_nothing_behind";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let trials: u32 = std::env::var("BANGER_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("BANGER_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        });
    eprintln!("{test}: {trials} trials, BANGER_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let image = test_image();
    let mut world = World::new(&vm_harness::config(&image.name), Some(image)).await;
    let mut summary: BTreeMap<String, u32> = BTreeMap::new();
    let started = Instant::now();
    for trial in 0..trials {
        let name = format!("crash{trial}");
        // The kill lands in the first 2 s after the daemon answered
        // (record, disks, network, VMM launch), later (boot, SSH wait), or
        // once the create is done (so the delete is killed too).
        let delay = match rng.random_range(0..100) {
            0..40 => Kill::After(Duration::from_millis(rng.random_range(0..2000))),
            40..75 => Kill::After(Duration::from_millis(rng.random_range(2000..30000))),
            _ => Kill::WhenDone(Duration::from_millis(rng.random_range(0..1000))),
        };
        let create = kill_during_create(&mut world, &name, delay).await;
        let kept = check_create_outcome(&world, &name);
        *summary
            .entry(format!(
                "create killed in {:<8} -> {}",
                create.phase,
                if kept { "kept" } else { "gone" }
            ))
            .or_default() += 1;
        let mut line = format!(
            "trial {trial}: create killed {delay} (phase {}, create {}) -> VM {}",
            create.phase,
            if create.done { "done" } else { "unfinished" },
            if kept { "running, SSH works" } else { "gone" }
        );
        if kept && rng.random_bool(0.5) {
            let delay = Duration::from_millis(rng.random_range(0..25000));
            let started = kill_during_start(&mut world, &name, delay).await;
            line.push_str(&format!(
                "; start killed {:.2} s in -> VM {}",
                delay.as_secs_f64(),
                if started { "running" } else { "stopped" }
            ));
            *summary
                .entry(format!(
                    "start killed             -> {}",
                    if started { "running" } else { "stopped" }
                ))
                .or_default() += 1;
        }
        if kept {
            let pause = Duration::from_millis(rng.random_range(0..400));
            let deleted = kill_during_delete(&mut world, &name, pause).await;
            assert!(
                deleted,
                "a delete that began was not finished by recovery; log:\n{}",
                world.log_tail()
            );
            line.push_str(&format!(
                "; delete killed {:.2} s after it began -> VM gone",
                pause.as_secs_f64()
            ));
            *summary
                .entry("delete killed            -> gone".into())
                .or_default() += 1;
        }
        eprintln!("{line}");
        assert_clean(&world, trial);
    }
    eprintln!(
        "{test}: {trials} trials in {:.0} s, 0 leaks; outcomes:",
        started.elapsed().as_secs_f64()
    );
    for (what, n) in summary {
        eprintln!("  {what}: {n}");
    }
}

/// When the daemon is killed during a create.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// This long after the first streamed event.
    After(Duration),
    /// This long after the create finished.
    WhenDone(Duration),
}

impl std::fmt::Display for Kill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kill::After(d) => write!(f, "{:.2} s in", d.as_secs_f64()),
            Kill::WhenDone(d) => write!(f, "{:.2} s after it finished", d.as_secs_f64()),
        }
    }
}

/// What an interrupted create had reached.
struct Interrupted {
    /// The last progress phase streamed before the kill.
    phase: String,
    /// Whether the stream ended with `done`.
    done: bool,
}

/// Start `vm create NAME` over the API, SIGKILL the daemon when `kill`
/// says, restart it (recovery runs before it serves).
async fn kill_during_create(world: &mut World, name: &str, kill: Kill) -> Interrupted {
    let body = format!("{{\"name\":\"{name}\"}}");
    let mut curl = curl(world, &["-X", "POST", "--data", &body, "http://x/v1/vms"]);
    let events = read_events(&mut curl);
    let deadline = Instant::now() + Duration::from_secs(30);
    while events.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the create streamed nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    match kill {
        Kill::After(delay) => std::thread::sleep(delay),
        Kill::WhenDone(delay) => {
            let status = common::wait_child_within(&mut curl, Duration::from_secs(600));
            assert!(status.is_some(), "the create did not end within 600 s");
            std::thread::sleep(delay);
        }
    }
    world.kill_daemon();
    common::wait_child(&mut curl);
    let (phase, done) = {
        let events = events.lock().unwrap();
        let phase = events
            .iter()
            .rev()
            .find_map(|e| match e {
                StreamEvent::Progress { phase, .. } => Some(phase.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "start".into());
        let done = matches!(events.last(), Some(StreamEvent::Done { .. }));
        (phase, done)
    };
    world.start_daemon().await;
    Interrupted { phase, done }
}

/// After recovery, VM `name` is either fully gone or running with SSH
/// working and exactly its own VMM; true when it is there.
fn check_create_outcome(world: &World, name: &str) -> bool {
    let Some(vm) = world.list().into_iter().find(|v| v.name == name) else {
        return false;
    };
    assert_eq!(
        vm.state,
        "running",
        "an interrupted create left {name} {}: {vm:?}\nlog:\n{}",
        vm.state,
        world.log_tail()
    );
    assert_eq!(
        world.qemus(),
        vec![vm.vmm_pid.expect("a running VM has a VMM pid")],
        "exactly the VM's own VMM runs"
    );
    let host = world.banger_ok(&["vm", "ssh", name, "--", "hostname"]);
    assert_eq!(host.trim(), name);
    true
}

/// Stop VM `name`, start it over the API, SIGKILL the daemon `delay` after
/// the first streamed event, restart it. The VM must then be running with
/// SSH working (the start had finished) or stopped holding nothing, with a
/// last error saying the start was interrupted; true when running.
async fn kill_during_start(world: &mut World, name: &str, delay: Duration) -> bool {
    world.banger_ok(&["vm", "stop", "--force", name]);
    let url = format!("http://x/v1/vms/{name}/start");
    let mut curl = curl(world, &["-X", "POST", "--data", "{}", &url]);
    let events = read_events(&mut curl);
    let deadline = Instant::now() + Duration::from_secs(30);
    while events.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the start streamed nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(delay);
    world.kill_daemon();
    common::wait_child(&mut curl);
    world.start_daemon().await;
    let vm = world.show(name);
    if vm.state == "running" {
        assert_eq!(world.qemus(), vec![vm.vmm_pid.unwrap()]);
        let host = world.banger_ok(&["vm", "ssh", name, "--", "hostname"]);
        assert_eq!(host.trim(), name);
        return true;
    }
    assert_eq!(vm.state, "stopped", "{vm:?}\nlog:\n{}", world.log_tail());
    assert!(
        vm.last_error
            .as_deref()
            .is_some_and(|e| e.contains("was starting")),
        "{vm:?}"
    );
    assert!(world.qemus().is_empty(), "VMM left: {:?}", world.qemus());
    assert_eq!((vm.ip.as_deref(), vm.tap.as_deref()), (None, None));
    assert!(world.db().list_leases().unwrap().is_empty(), "lease left");
    let links = world.ns.links();
    assert!(!links.contains("banger-t"), "tap left: {links}");
    false
}

/// Start `vm delete --force NAME`, SIGKILL the daemon `pause` after the
/// delete began (its record says so, or it is already gone), restart it;
/// true when the VM is gone afterwards.
async fn kill_during_delete(world: &mut World, name: &str, pause: Duration) -> bool {
    let mut curl = curl(
        world,
        &[
            "-X",
            "DELETE",
            &format!("http://x/v1/vms/{name}?force=true"),
        ],
    );
    let db = world.db();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match db.get_vm_by_name(name).unwrap() {
            None => break,
            Some(vm) if vm.spec.get("pending").and_then(|p| p.as_str()) == Some("delete") => break,
            Some(_) => {}
        }
        assert!(Instant::now() < deadline, "the delete never began");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(pause);
    world.kill_daemon();
    common::wait_child(&mut curl);
    world.start_daemon().await;
    world.list().iter().all(|v| v.name != name)
}

/// curl against the daemon's socket, output piped.
fn curl(world: &World, args: &[&str]) -> Child {
    Command::new("curl")
        .args(["-sS", "-N", "--max-time", "600", "--unix-socket"])
        .arg(world.env.socket())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run curl")
}

/// Collect the streamed events of `child`'s stdout as they arrive.
fn read_events(child: &mut Child) -> Arc<Mutex<Vec<StreamEvent>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().expect("piped stdout");
    let sink = events.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Ok(event) = serde_json::from_str::<StreamEvent>(&line) {
                sink.lock().unwrap().push(event);
            }
        }
    });
    events
}

/// No VM left, and nothing a VM holds: VMM processes, leases, taps (beyond
/// the idle pool), VM and run directories, known_hosts lines.
fn assert_clean(world: &World, trial: u32) {
    let ctx = || format!("after trial {trial}; daemon log:\n{}", world.log_tail());
    let db = world.db();
    let vms = db.list_vms().unwrap();
    assert!(vms.is_empty(), "records left: {vms:?} {}", ctx());
    let leases = db.list_leases().unwrap();
    assert!(leases.is_empty(), "leases left: {leases:?} {}", ctx());
    assert!(
        world.qemus().is_empty(),
        "VMMs left: {:?} {}",
        world.qemus(),
        ctx()
    );
    let links = world.ns.links();
    assert!(
        !links.contains("banger-t"),
        "VM taps left: {links} {}",
        ctx()
    );
    let pool = links.matches("banger-p").count();
    assert!(
        pool <= POOL_SIZE,
        "{pool} pool taps (at most {POOL_SIZE} idle): {links} {}",
        ctx()
    );
    for dir in [
        world.env.layout.state_dir.join("vms"),
        world.env.layout.runtime_dir.join("vms"),
    ] {
        let left: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "{} holds {left:?} {}",
            dir.display(),
            ctx()
        );
    }
    let known = std::fs::read_to_string(world.known_hosts()).unwrap_or_default();
    assert!(
        known.lines().all(|l| !l.contains("crash")),
        "known_hosts still names a VM: {known} {}",
        ctx()
    );
}
