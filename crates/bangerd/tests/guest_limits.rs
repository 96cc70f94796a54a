//! What a hostile guest or client can do to the daemon and the user's
//! terminal, through the real daemon and CLI:
//!
//! - a guest flooding its serial console (a real QEMU guest writing to
//!   `/dev/ttyS0` over `vm ssh`) keeps its log on disk under the cap that
//!   `serial_log_max` gives, and `vm logs` still shows its newest line;
//! - console output with terminal escapes (CSI, OSC 52, CR, BEL) reaches the
//!   user's terminal from `banger vm logs` only as visible text;
//! - a client that sends half a request head and stalls is disconnected,
//!   and others are served meanwhile.

mod common;
mod vm_harness;
mod vm_records;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use banger_state::{StateDb, VmState};
use bangerd::vm::console::{disk_cap, rotated};
use common::{Daemon, TestEnv};
use vm_harness::{boot_tests, privileged, test_image, text, World};

fn banger_bin() -> std::path::PathBuf {
    common::daemon_bin().with_file_name("banger")
}

/// What the guest wrote that a terminal would act on: clear screen, an OSC 52
/// clipboard write ended by BEL, a window title ended by ST, a CR that would
/// hide the start of its line.
const HOSTILE: &[u8] =
    b"boot ok\n\x1b[2J\x1b[Hcleared\n\x1b]52;c;cm0gLXJmIH4=\x07clip\n\x1b]0;pwned\x1b\\title\nhidden\rshown\n";

fn assert_escaped(out: &[u8]) {
    assert!(
        !out.iter().any(|b| matches!(b, 0x1b | 0x07 | b'\r')),
        "raw control bytes reached the terminal: {:?}",
        String::from_utf8_lossy(out)
    );
    let out = String::from_utf8_lossy(out);
    for shown in [
        "\\e[2J\\e[Hcleared",
        "\\e]52;c;cm0gLXJmIH4=\\x07clip",
        "\\e]0;pwned\\e\\title",
        "hidden\\rshown",
    ] {
        assert!(out.contains(shown), "{shown:?} not in {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_logs_shows_guest_escape_sequences_as_text() {
    let env = TestEnv::new();
    let vm = vm_records::record("hostile", 1, None, VmState::Stopped);
    {
        let db = StateDb::open(&env.layout.database()).unwrap();
        db.insert_vm(&vm).unwrap();
    }
    let dir = env.layout.state_dir.join("vms").join(&vm.id);
    std::fs::create_dir_all(&dir).unwrap();
    // The rotated part comes first, then the live log.
    std::fs::write(rotated(&dir.join("serial.log")), b"older part\n").unwrap();
    std::fs::write(dir.join("serial.log"), HOSTILE).unwrap();
    let _daemon = Daemon::start(&env).await;

    let out = env
        .command(banger_bin())
        .args(["vm", "logs", "hostile"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_escaped(&out.stdout);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.starts_with("older part\nboot ok\n"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_inside_the_request_head_is_disconnected() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env).await;
    let mut stalled = UnixStream::connect(&daemon.socket).unwrap();
    stalled
        .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A bound far above the daemon's header-read timeout, only so a broken
    // daemon fails the test instead of hanging it.
    stalled
        .set_read_timeout(Some(bangerd::http::HEADER_READ_TIMEOUT * 6))
        .unwrap();

    // Meanwhile others are served.
    let (code, body) = common::curl(&daemon.socket, &["http://x/v1/status"]);
    assert_eq!(code, 200, "{body}");

    let mut buf = Vec::new();
    match stalled.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the stalled connection was not closed by the daemon: {e}"),
    }
    // Whatever came back is no answer to the half request.
    assert!(
        !String::from_utf8_lossy(&buf).contains("\"pid\""),
        "{buf:?}"
    );

    // An idle kept-alive connection is closed the same way.
    let mut idle = UnixStream::connect(&daemon.socket).unwrap();
    idle.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(bangerd::http::HEADER_READ_TIMEOUT * 6))
        .unwrap();
    let mut answer = Vec::new();
    idle.read_to_end(&mut answer)
        .expect("the idle connection must be closed after its answer");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

/// The bytes `serial.log` and its rotated copy take now.
fn on_disk(log: &Path) -> u64 {
    [log.to_owned(), rotated(log)]
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_flooding_its_console_stays_under_the_cap() {
    let test = "a_guest_flooding_its_console_stays_under_the_cap";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    // Small, so that QEMU's UART (about 11.5 KB/s) overflows it in seconds.
    let max: u64 = 64 << 10;
    let cap = disk_cap(max);
    let config = vm_harness::config_with(&image.name, "serial_log_max = \"64K\"");
    let world = World::new(&config, Some(image)).await;
    let out = world.banger(&["vm", "create", "--name", "flood"]);
    assert!(
        out.status.success(),
        "create failed: {}\nlog:\n{}",
        text(&out),
        world.log_tail()
    );
    let vm = world.show("flood");
    let log = world
        .env
        .layout
        .state_dir
        .join("vms")
        .join(&vm.id)
        .join("serial.log");

    // Watch the log's size on disk while the guest floods its console.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, log) = (done.clone(), log.clone());
        std::thread::spawn(move || {
            let mut max = 0;
            while !done.load(Ordering::Relaxed) {
                max = max.max(on_disk(&log));
                std::thread::sleep(Duration::from_millis(20));
            }
            max.max(on_disk(&log))
        })
    };
    // More than the cap in lines of 100 bytes, then the newest line with
    // escapes in it.
    let written = cap * 5 / 4;
    let lines = written / 100;
    let script = format!(
        "yes 'flood 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234' \
         | head -n {lines} > /dev/ttyS0; \
         printf 'newest line \\033]52;c;aGk=\\007 end\\n' > /dev/ttyS0"
    );
    // `vm ssh -- ARGS` keeps argv: the script is one word for `sh -c`.
    let flood = world.banger(&["vm", "ssh", "flood", "--", "sh", "-c", &script]);
    // Let the daemon look at the log once more after the last line.
    std::thread::sleep(bangerd::vm::console::ROTATE_EVERY * 5);
    done.store(true, Ordering::Relaxed);
    let largest = watcher.join().unwrap();
    assert!(flood.status.success(), "flood failed: {}", text(&flood));

    assert!(
        rotated(&log).exists(),
        "the guest wrote {} bytes and the log was never rotated (largest on disk {largest}, \
         now {}); log:\n{}",
        written,
        on_disk(&log),
        world.log_tail()
    );
    assert!(
        largest <= cap,
        "the serial log took {largest} bytes on disk, over the cap of {cap}"
    );
    eprintln!("{test}: largest serial log on disk {largest} bytes (cap {cap})");

    let logs = world.banger(&["vm", "logs", "flood"]);
    assert!(logs.status.success(), "{}", text(&logs));
    let shown = String::from_utf8_lossy(&logs.stdout);
    assert!(
        shown.contains("newest line \\e]52;c;aGk=\\x07 end"),
        "the newest line is missing or unescaped; tail: {:?}",
        &shown[shown.len().saturating_sub(500)..]
    );
    assert!(!logs.stdout.contains(&0x1b), "raw ESC in vm logs");

    world.banger_ok(&["vm", "delete", "--force", "flood"]);
    world.assert_nothing_left("flood", &vm.id, vm.ip.as_deref());
}

/// `vm logs -f` keeps following across a rotation of the live log: the
/// daemon rotates it (past `serial_log_max`) and what the guest writes next
/// still reaches the follower.
#[tokio::test(flavor = "multi_thread")]
async fn vm_logs_follow_continues_after_the_log_is_rotated() {
    use std::io::BufRead;
    let env = TestEnv::new();
    let cfg = env.layout.default_config.clone();
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(&cfg, "serial_log_max = \"16K\"\n").unwrap();
    let vm = vm_records::record("follow", 2, None, VmState::Stopped);
    {
        let db = StateDb::open(&env.layout.database()).unwrap();
        db.insert_vm(&vm).unwrap();
    }
    let dir = env.layout.state_dir.join("vms").join(&vm.id);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("serial.log");
    std::fs::write(&log, b"before rotation\n").unwrap();
    let _daemon = Daemon::start(&env).await;

    let mut follower = env
        .command(banger_bin())
        .args(["vm", "logs", "-f", "follow"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(e) => panic!("{needle:?} never reached the follower: {e}"),
            }
        }
    };
    wait_for("before rotation");

    // The VMM's side: an O_APPEND writer that stays open.
    let mut vmm = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    for _ in 0..400 {
        vmm.write_all(b"filler line of the console, fifty bytes long....\n")
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !rotated(&log).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never rotated the log; log:\n{}",
            env.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    vmm.write_all(b"after rotation\n").unwrap();
    wait_for("after rotation");
    let _ = follower.kill();
    let _ = follower.wait();
}

/// A client that sends a complete head but stops inside its body gets a
/// 400 naming the timeout instead of holding the request forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_inside_the_request_body_gets_an_error() {
    let env = TestEnv::new();
    let daemon = Daemon::start(&env).await;
    let mut stalled = UnixStream::connect(&daemon.socket).unwrap();
    stalled
        .write_all(
            b"POST /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"name\":",
        )
        .unwrap();
    stalled
        .set_read_timeout(Some(bangerd::api::BODY_READ_TIMEOUT * 4))
        .unwrap();
    let mut answer = [0u8; 4096];
    let n = stalled
        .read(&mut answer)
        .expect("the daemon must answer a stalled body, not wait for it");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
}
