//! `banger vm session attach` end to end: the real CLI and daemon, a guest
//! under QEMU/TCG, the `stdio_mux_v1` bridge (docs/sessions.md, docs/api.md).
//! One boot:
//!
//! 1. the CLI attached to a pipe-mode `cat`: lines sent come back;
//! 2. a second attach is refused, naming the first (its pid);
//! 3. the bridge fed an unknown stream id, an oversize frame and a foreign
//!    protocol answers each with its error and closes; a client that never
//!    reads a flood of output is dropped while the `cat` attach keeps
//!    flowing;
//! 4. `~.` detaches and leaves the session running;
//! 5. an attach with `--from-start` replays everything, survives a SIGKILL
//!    of bangerd (it reconnects by offset: nothing lost, nothing twice, the
//!    same process) and exits 137 when the session is killed with SIGKILL.

mod common;
mod vm_harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use banger_wire::attach::{
    ClientControl, Frame, ServerControl, StdioMux, StreamId, MAX_FRAME_PAYLOAD, PROTOCOL,
    SOCKET_NAME,
};
use banger_wire::session::{SessionInfo, SessionStatus};
use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};
use vm_harness::{boot_tests, cli_bin, privileged, test_image, text, wait_until, World};

fn show(world: &World, session: &str) -> SessionInfo {
    world.session_show("box", session)
}

/// A client speaking the protocol by hand.
struct Raw {
    s: UnixStream,
    buf: BytesMut,
}

impl Raw {
    fn connect(world: &World) -> Raw {
        let s = UnixStream::connect(world.env.layout.socket().with_file_name(SOCKET_NAME))
            .expect("connect to the attach socket");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Raw {
            s,
            buf: BytesMut::new(),
        }
    }

    fn send(&mut self, f: Frame) {
        let mut out = BytesMut::new();
        StdioMux.encode(f, &mut out).unwrap();
        self.s.write_all(&out).unwrap();
    }

    fn hello(&mut self, session: &str, protocol: &str, stdout_offset: Option<u64>) {
        self.send(Frame::control(&ClientControl::Hello {
            protocol: protocol.into(),
            vm: "box".into(),
            session: session.into(),
            stdout_offset,
            stderr_offset: stdout_offset,
        }));
    }

    /// The next frame; `None` at EOF.
    fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = StdioMux.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading the bridge: {e}"),
            }
        }
    }

    fn control(&mut self) -> ServerControl {
        let f = self.recv().expect("a control frame");
        assert_eq!(f.stream, StreamId::Control, "{f:?}");
        ServerControl::parse(&f.payload).unwrap()
    }

    /// The error the daemon answers with, then EOF.
    fn refused(&mut self) -> String {
        let ServerControl::Error { message } = self.control() else {
            panic!("expected an error");
        };
        assert!(self.recv().is_none(), "the daemon closes after an error");
        message
    }
}

/// `banger vm session attach` as a child with piped stdio.
struct Attach {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Attach {
    fn spawn(world: &World, session: &str, extra: &[&str]) -> Attach {
        let mut child = world
            .command(cli_bin())
            .args(["vm", "session", "attach", "box", session])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run banger vm session attach");
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                let _ = etx.send(line);
            }
        });
        Attach {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn expect(&self, want: &str) {
        match self.lines.recv_timeout(Duration::from_secs(90)) {
            Ok(got) => assert_eq!(got, want),
            Err(e) => panic!(
                "no line {want:?} from the attach ({e}); its stderr: {:?}",
                self.stderr.try_iter().collect::<Vec<_>>()
            ),
        }
    }

    /// Its exit code, waiting at most `within`.
    fn exit_code(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().expect("exited, not signalled");
            }
            assert!(Instant::now() < deadline, "the attach did not end");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_relays_stdio_exclusively_and_survives_the_daemon() {
    let test = "attach_relays_stdio_exclusively_and_survives_the_daemon";
    if !privileged(test) || !boot_tests(test) {
        return;
    }
    let image = test_image();
    let mut world = World::new(&vm_harness::config(&image.name), Some(image)).await;
    world.banger_ok(&["vm", "create", "--name", "box"]);
    for (name, cmd) in [
        ("cat", vec!["cat"]),
        (
            "flood",
            vec!["sh", "-c", "head -c 4000000 /dev/zero; exec cat"],
        ),
    ] {
        let mut args = vec![
            "vm",
            "session",
            "start",
            "box",
            "--name",
            name,
            "--stdin-mode",
            "pipe",
            "--",
        ];
        args.extend(cmd);
        world.banger_ok(&args);
    }
    let pid = show(&world, "cat").pid.expect("cat runs");
    world.banger_ok(&[
        "vm", "session", "start", "box", "--name", "quiet", "--", "sleep", "600",
    ]);

    // 1. Lines in, lines out.
    let mut a = Attach::spawn(&world, "cat", &[]);
    a.send("one");
    a.expect("one");
    a.send("two");
    a.expect("two");

    // 2. Exclusive.
    let out = world.banger(&["vm", "session", "attach", "box", "cat"]);
    assert!(!out.status.success(), "{}", text(&out));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains(&format!("already attached by pid {}", a.child.id())),
        "{e}"
    );
    // Only pipe-mode sessions take an attach.
    let out = world.banger(&["vm", "session", "attach", "box", "quiet"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--stdin-mode detached"),
        "{}",
        text(&out)
    );

    // 3. Hostile and broken clients.
    let mut raw = Raw::connect(&world);
    raw.s.write_all(&[9, 0, 0, 0, 1, b'x']).unwrap();
    let e = raw.refused();
    assert!(e.contains("unknown stream id 9"), "{e}");
    let mut raw = Raw::connect(&world);
    raw.hello("cat", "stdio_mux_v0", None);
    let e = raw.refused();
    assert!(e.contains("stdio_mux_v0") && e.contains(PROTOCOL), "{e}");
    let mut raw = Raw::connect(&world);
    raw.s.write_all(&[1, 0, 0x10, 0, 0]).unwrap();
    let e = raw.refused();
    assert!(
        e.contains(&format!("exceeds the limit of {MAX_FRAME_PAYLOAD} bytes")),
        "{e}"
    );
    // Oversize after a good hello, on a live attach: the attach ends, the
    // session does not.
    let mut raw = Raw::connect(&world);
    raw.hello("flood", PROTOCOL, None);
    assert!(matches!(raw.control(), ServerControl::Welcome { .. }));
    raw.s.write_all(&[1, 0xff, 0xff, 0xff, 0xff]).unwrap();
    loop {
        let f = raw.recv().expect("an error before EOF");
        if f.stream == StreamId::Control {
            let msg = ServerControl::parse(&f.payload).unwrap();
            assert!(
                matches!(&msg, ServerControl::Error { message } if message.contains("exceeds the limit")),
                "{msg:?}"
            );
            break;
        }
    }
    // A client that asks for 4 MB of output and never reads it.
    let mut slow = Raw::connect(&world);
    slow.hello("flood", PROTOCOL, Some(0));
    a.send("three");
    a.expect("three");
    wait_until(
        "the slow client to be dropped",
        Duration::from_secs(120),
        || {
            let mut probe = Raw::connect(&world);
            probe.hello("flood", PROTOCOL, None);
            match probe.control() {
                ServerControl::Welcome { .. } => {
                    probe.send(Frame::control(&ClientControl::Detach {}));
                    true
                }
                ServerControl::Error { message } if message.contains("already attached") => false,
                other => panic!("{other:?}"),
            }
        },
    );
    assert!(
        world.env.log().contains("did not read"),
        "the drop is logged with its reason"
    );
    drop(slow);
    a.send("four");
    a.expect("four");

    // 4. Detach.
    a.send("~.");
    assert_eq!(a.exit_code(Duration::from_secs(60)), 0);
    assert_eq!(show(&world, "cat").status, SessionStatus::Running {});

    // 5. Replay, daemon SIGKILL, reconnect, kill.
    let mut b = Attach::spawn(&world, "cat", &["--from-start"]);
    for l in ["one", "two", "three", "four"] {
        b.expect(l);
    }
    world.kill_daemon();
    world.start_daemon().await;
    b.send("five");
    b.expect("five");
    assert!(
        b.stderr.try_iter().any(|l| l.contains("reconnecting")),
        "the CLI says it reconnected"
    );
    assert_eq!(show(&world, "cat").pid, Some(pid), "the same process");
    world.banger_ok(&["vm", "session", "kill", "box", "cat", "--signal", "KILL"]);
    assert_eq!(b.exit_code(Duration::from_secs(90)), 128 + 9);
    let rest: Vec<String> = b.lines.try_iter().collect();
    assert!(rest.is_empty(), "nothing twice: {rest:?}");
    assert_eq!(
        show(&world, "cat").status,
        SessionStatus::Signaled { signal: 9 }
    );
    let out = world.banger(&["vm", "session", "attach", "box", "cat"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has ended"),
        "{}",
        text(&out)
    );
    world.banger_ok(&["vm", "delete", "--force", "box"]);
}
