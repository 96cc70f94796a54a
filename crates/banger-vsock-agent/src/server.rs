//! The agent side of the protocol: one JSON [`AgentRequest`] per line in,
//! one [`AgentResponse`] line out, over a virtio-serial port (QEMU) or a
//! vsock listener (Firecracker).
//!
//! The server is synchronous on purpose: requests are rare and answered
//! from `/proc` in microseconds, and a guest agent without an async runtime
//! stays small.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use banger_wire::guest::{
    AgentHealth, AgentRequest, AgentResponse, AGENT_PORT_NAME, AGENT_VSOCK_PORT,
};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, VsockAddr};

use crate::session::StartOutcome;
use crate::{apply, procfs, reidentify, session};

/// Longest request line accepted; anything longer is answered with an error.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;
/// Most vsock connections served at once; more are closed at accept.
pub const MAX_VSOCK_CONNECTIONS: usize = 16;
/// How long the serial loop waits after the host side went away before it
/// reads again.
pub const SERIAL_IDLE: Duration = Duration::from_millis(200);
/// `VMADDR_CID_ANY`: listen on every CID of this guest.
const VMADDR_CID_ANY: u32 = u32::MAX;

/// Errors setting up a transport.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create an AF_VSOCK socket (is the vsock transport loaded?): {source}")]
    VsockSocket { source: nix::Error },
    #[error("cannot listen on vsock port {port}: {source}")]
    VsockListen { port: u32, source: nix::Error },
    #[error("cannot accept on vsock port {port}: {source}")]
    VsockAccept { port: u32, source: nix::Error },
}

/// Where the agent reads what it reports (the real guest: `/proc` and `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentContext {
    /// procfs mount (`/proc`).
    pub proc_root: PathBuf,
    /// The guest's `/`; the apply record and the work disk (`root/root`)
    /// are found under it.
    pub root: PathBuf,
    /// The binary that supervises sessions (`session-supervise`); sessions
    /// live under `root` + [`banger_wire::guest::SESSIONS_DIR`].
    pub agent_exe: PathBuf,
    /// The devices and files reidentify and prepare-snapshot act on.
    pub system: reidentify::System,
}

impl Default for AgentContext {
    fn default() -> Self {
        AgentContext {
            proc_root: PathBuf::from("/proc"),
            root: PathBuf::from("/"),
            agent_exe: session::SessionStore::default().agent_exe,
            system: reidentify::System::default(),
        }
    }
}

impl AgentContext {
    /// The guest's sessions.
    pub fn sessions(&self) -> session::SessionStore {
        let dir = banger_wire::guest::SESSIONS_DIR.trim_start_matches('/');
        session::SessionStore {
            root: self.root.join(dir),
            agent_exe: self.agent_exe.clone(),
            home: self.root.join("root"),
        }
    }
}

/// Answer one request.
pub fn handle_request(ctx: &AgentContext, request: &AgentRequest) -> AgentResponse {
    let result = match request {
        AgentRequest::Health {} => health(ctx).map(AgentResponse::Health),
        AgentRequest::Ports {} => procfs::listening_ports(&ctx.proc_root)
            .map(|ports| AgentResponse::Ports { ports })
            .map_err(|e| e.to_string()),
        AgentRequest::Stats {} => {
            procfs::guest_stats(&ctx.proc_root, &ctx.root, &ctx.root.join("root"))
                .map(AgentResponse::Stats)
                .map_err(|e| e.to_string())
        }
        AgentRequest::SessionStart { spec } => match ctx.sessions().start(spec) {
            Ok(StartOutcome::Started(s)) => Ok(AgentResponse::Session(*s)),
            Ok(StartOutcome::Refused(problems)) => Ok(AgentResponse::SessionRefused { problems }),
            Err(e) => Err(e.to_string()),
        },
        AgentRequest::SessionList {} => ctx
            .sessions()
            .list()
            .map(|sessions| AgentResponse::Sessions { sessions })
            .map_err(|e| e.to_string()),
        AgentRequest::SessionShow { id } => ctx
            .sessions()
            .show(id)
            .map(AgentResponse::Session)
            .map_err(|e| e.to_string()),
        AgentRequest::SessionLogs {
            id,
            stream,
            offset,
            max_bytes,
            tail_lines,
        } => ctx
            .sessions()
            .logs(id, *stream, *offset, *max_bytes, *tail_lines)
            .map(AgentResponse::SessionLog)
            .map_err(|e| e.to_string()),
        AgentRequest::SessionStop { id, grace_ms } => ctx
            .sessions()
            .control(id, &format!("stop {grace_ms}"))
            .map(AgentResponse::Session)
            .map_err(|e| e.to_string()),
        AgentRequest::SessionSignal { id, signal } => ctx
            .sessions()
            .control(id, &format!("signal {signal}"))
            .map(AgentResponse::Session)
            .map_err(|e| e.to_string()),
        AgentRequest::Reidentify { identity } => reidentify::reidentify(&ctx.system, identity)
            .map(AgentResponse::Reidentified)
            .map_err(|e| e.to_string()),
        AgentRequest::PrepareSnapshot {} => reidentify::prepare_snapshot(&ctx.system)
            .map(|unmounted| AgentResponse::SnapshotReady { unmounted })
            .map_err(|e| e.to_string()),
        AgentRequest::SessionIo {
            id,
            stdin,
            stdout_offset,
            stderr_offset,
            max_bytes,
        } => ctx
            .sessions()
            .io(id, stdin, *stdout_offset, *stderr_offset, *max_bytes)
            .map(AgentResponse::SessionIo)
            .map_err(|e| e.to_string()),
    };
    result.unwrap_or_else(|message| AgentResponse::Error { message })
}

fn health(ctx: &AgentContext) -> Result<AgentHealth, String> {
    let uptime_secs = procfs::uptime_secs(&ctx.proc_root).map_err(|e| e.to_string())?;
    let hostname = nix::unistd::gethostname()
        .map_err(|e| format!("cannot read the hostname: {e}"))?
        .to_string_lossy()
        .into_owned();
    let applied = match apply::read_record(&ctx.root) {
        Ok(record) => record.map(|r| r.result),
        // A record we cannot read says the apply did not leave a good state.
        Err(e) => Some(Err(e.to_string())),
    };
    Ok(AgentHealth {
        version: banger_wire::VERSION.to_owned(),
        uptime_secs,
        hostname,
        applied,
    })
}

/// Answer one request line (without its newline). Anything that is not a
/// request gets [`AgentResponse::Error`], never a dropped connection.
pub fn handle_line(ctx: &AgentContext, line: &[u8]) -> AgentResponse {
    match serde_json::from_slice::<AgentRequest>(line) {
        Ok(request) => handle_request(ctx, &request),
        Err(e) => AgentResponse::Error {
            message: format!("malformed request: {e}"),
        },
    }
}

/// Why [`serve_stream`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The peer closed its side (or, on virtio-serial, the host disconnected).
    Eof,
}

/// Serve requests from `reader` until end of stream. Blank lines are
/// ignored; a partial line at EOF is dropped (its sender is gone).
pub fn serve_stream<R: BufRead, W: Write>(
    ctx: &AgentContext,
    reader: &mut R,
    writer: &mut W,
) -> io::Result<StreamEnd> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .take(MAX_REQUEST_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(StreamEnd::Eof);
        }
        let response = if line.last() != Some(&b'\n') {
            if line.len() <= MAX_REQUEST_LINE {
                return Ok(StreamEnd::Eof);
            }
            if skip_line(reader)? {
                return Ok(StreamEnd::Eof);
            }
            AgentResponse::Error {
                message: format!("request line longer than {MAX_REQUEST_LINE} bytes"),
            }
        } else {
            let trimmed = line.trim_ascii();
            if trimmed.is_empty() {
                continue;
            }
            handle_line(ctx, trimmed)
        };
        let mut out = serde_json::to_vec(&response).expect("AgentResponse always serializes");
        out.push(b'\n');
        writer.write_all(&out)?;
        writer.flush()?;
    }
}

/// Discard up to and including the next newline; true if EOF came first.
fn skip_line<R: BufRead>(reader: &mut R) -> io::Result<bool> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(true);
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            reader.consume(i + 1);
            return Ok(false);
        }
        let len = buf.len();
        reader.consume(len);
    }
}

/// Serve a virtio-serial style port: a byte stream that reads EOF while
/// the host side is disconnected and carries data again after the host
/// reconnects.
///
/// `open` gives the read and write halves of the port. On EOF the port is
/// kept open and read again after `idle`: closing it would make the guest
/// kernel discard data the host sends in between. On an I/O error the port
/// is reopened (after `idle`). Returns when `stop` is set (checked whenever
/// a read ends); never because of what the peer sent.
pub fn serve_port<R, W, F>(ctx: &AgentContext, mut open: F, stop: &AtomicBool, idle: Duration)
where
    R: Read,
    W: Write,
    F: FnMut() -> io::Result<(R, W)>,
{
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        let (reader, mut writer) = match open() {
            Ok(halves) => halves,
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    eprintln!("banger-vsock-agent: cannot open the agent port: {msg} (retrying)");
                    last_error = Some(msg);
                }
                std::thread::sleep(idle.max(Duration::from_secs(1)));
                continue;
            }
        };
        last_error = None;
        let mut reader = BufReader::new(reader);
        loop {
            let result = serve_stream(ctx, &mut reader, &mut writer);
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match result {
                Ok(StreamEnd::Eof) => std::thread::sleep(idle),
                Err(e) => {
                    eprintln!("banger-vsock-agent: agent port failed: {e}; reopening");
                    std::thread::sleep(idle);
                    break;
                }
            }
        }
    }
}

/// Serve the virtio-serial device at `path` forever (see [`serve_port`]).
pub fn serve_serial(ctx: &AgentContext, path: &Path, stop: &AtomicBool) {
    let open = || -> io::Result<(File, File)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)?;
        let reader = file.try_clone()?;
        Ok((reader, file))
    };
    serve_port(ctx, open, stop, SERIAL_IDLE);
}

/// The device node of the virtio-serial port named `name`:
/// `dev_dir/virtio-ports/NAME` (made by udev), else found through sysfs
/// (`sys_virtio_ports/vportNpM/name`) so the agent does not depend on udev
/// having run.
pub fn find_serial_port(dev_dir: &Path, sys_virtio_ports: &Path, name: &str) -> Option<PathBuf> {
    let link = dev_dir.join("virtio-ports").join(name);
    if link.exists() {
        return Some(link);
    }
    let entries = std::fs::read_dir(sys_virtio_ports).ok()?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim_end() == name)
        })
        .map(|e| dev_dir.join(e.file_name()))
        .filter(|dev| dev.exists())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The agent port of a real guest: [`AGENT_PORT_NAME`] under `/dev` and
/// `/sys/class/virtio-ports`.
pub fn default_serial_port() -> Option<PathBuf> {
    find_serial_port(
        Path::new("/dev"),
        Path::new("/sys/class/virtio-ports"),
        AGENT_PORT_NAME,
    )
}

/// A listening AF_VSOCK socket.
#[derive(Debug)]
pub struct VsockListener {
    fd: OwnedFd,
    port: u32,
}

impl VsockListener {
    /// Listen on `port` for any CID.
    pub fn bind(port: u32) -> Result<Self, ServeError> {
        let fd = socket::socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|source| ServeError::VsockSocket { source })?;
        let addr = VsockAddr::new(VMADDR_CID_ANY, port);
        socket::bind(fd.as_raw_fd(), &addr)
            .and_then(|()| socket::listen(&fd, socket::Backlog::new(8).expect("valid backlog")))
            .map_err(|source| ServeError::VsockListen { port, source })?;
        Ok(VsockListener { fd, port })
    }

    /// The port listened on.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Accept one connection as a plain byte stream.
    pub fn accept(&self) -> Result<File, ServeError> {
        let raw =
            socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(|source| {
                ServeError::VsockAccept {
                    port: self.port,
                    source,
                }
            })?;
        // SAFETY: accept4 just returned this descriptor and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(File::from(owned))
    }
}

/// Accept connections forever, one thread per connection (at most
/// [`MAX_VSOCK_CONNECTIONS`]). Returns only if accepting fails for good.
pub fn serve_vsock(ctx: Arc<AgentContext>, listener: &VsockListener) -> Result<(), ServeError> {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let conn = match listener.accept() {
            Ok(c) => c,
            Err(ServeError::VsockAccept {
                source: nix::Error::EINTR | nix::Error::ECONNABORTED,
                ..
            }) => continue,
            Err(e) => return Err(e),
        };
        if active.load(Ordering::SeqCst) >= MAX_VSOCK_CONNECTIONS {
            eprintln!(
                "banger-vsock-agent: {MAX_VSOCK_CONNECTIONS} connections open; refusing one more"
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let ctx = Arc::clone(&ctx);
        let active = Arc::clone(&active);
        std::thread::spawn(move || {
            let result = conn.try_clone().and_then(|w| {
                let mut writer = w;
                serve_stream(&ctx, &mut BufReader::new(conn), &mut writer)
            });
            if let Err(e) = result {
                eprintln!("banger-vsock-agent: vsock connection failed: {e}");
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Which channel [`serve`] answers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// The virtio-serial port [`AGENT_PORT_NAME`] when it exists, otherwise
    /// vsock on [`AGENT_VSOCK_PORT`]; re-checked until one works.
    Auto,
    /// This virtio-serial device.
    Serial(PathBuf),
    /// This vsock port.
    Vsock(u32),
}

/// Serve on `transport` until the process is stopped. Returns only when an
/// explicitly requested vsock port cannot be listened on or accepted from.
pub fn serve(ctx: AgentContext, transport: Transport) -> Result<(), ServeError> {
    let never = AtomicBool::new(false);
    match transport {
        Transport::Serial(path) => {
            eprintln!(
                "banger-vsock-agent: serving on virtio-serial {}",
                path.display()
            );
            serve_serial(&ctx, &path, &never);
            Ok(())
        }
        Transport::Vsock(port) => {
            let listener = VsockListener::bind(port)?;
            eprintln!("banger-vsock-agent: serving on vsock port {port}");
            serve_vsock(Arc::new(ctx), &listener)
        }
        Transport::Auto => {
            let mut last_error = None;
            loop {
                if let Some(path) = default_serial_port() {
                    eprintln!(
                        "banger-vsock-agent: serving on virtio-serial {}",
                        path.display()
                    );
                    serve_serial(&ctx, &path, &never);
                    return Ok(());
                }
                let result = VsockListener::bind(AGENT_VSOCK_PORT).and_then(|listener| {
                    eprintln!("banger-vsock-agent: serving on vsock port {AGENT_VSOCK_PORT}");
                    serve_vsock(Arc::new(ctx.clone()), &listener)
                });
                if let Err(e) = result {
                    let msg = e.to_string();
                    if last_error.as_ref() != Some(&msg) {
                        eprintln!(
                            "banger-vsock-agent: no virtio-serial port {AGENT_PORT_NAME} and {msg}; retrying"
                        );
                        last_error = Some(msg);
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn ctx() -> AgentContext {
        AgentContext::default()
    }

    fn roundtrip(input: &[u8]) -> Vec<AgentResponse> {
        let mut out = Vec::new();
        let end = serve_stream(&ctx(), &mut &input[..], &mut out).unwrap();
        assert_eq!(end, StreamEnd::Eof);
        out.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn one_response_per_line_errors_for_junk() {
        let input = b"{\"op\":\"health\"}\n\n  \r\nnot json\n{\"op\":\"reboot\"}\n{\"op\":\"stats\"}\r\n{\"op\":\"ports\"";
        let responses = roundtrip(input);
        assert_eq!(responses.len(), 4, "{responses:?}");
        match &responses[0] {
            AgentResponse::Health(h) => assert_eq!(h.version, banger_wire::VERSION),
            other => panic!("{other:?}"),
        }
        for r in &responses[1..3] {
            match r {
                AgentResponse::Error { message } => {
                    assert!(message.starts_with("malformed request"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            matches!(responses[3], AgentResponse::Stats(_)),
            "{:?}",
            responses[3]
        );
    }

    #[test]
    fn overlong_line_is_answered_and_skipped() {
        let mut input = vec![b'x'; MAX_REQUEST_LINE + 10];
        input.extend_from_slice(b"\n{\"op\":\"health\"}\n");
        let responses = roundtrip(&input);
        assert_eq!(responses.len(), 2);
        match &responses[0] {
            AgentResponse::Error { message } => {
                assert!(message.contains("longer than"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(responses[1], AgentResponse::Health(_)));
    }

    #[test]
    fn health_reports_the_apply_record() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = AgentContext {
            proc_root: PathBuf::from("/proc"),
            root: tmp.path().to_owned(),
            agent_exe: PathBuf::from("/nonexistent"),
            system: Default::default(),
        };
        let health = |ctx: &AgentContext| match handle_request(ctx, &AgentRequest::Health {}) {
            AgentResponse::Health(h) => h,
            other => panic!("{other:?}"),
        };
        assert_eq!(health(&ctx).applied, None);
        let err: Result<apply::ApplyReport, apply::ApplyError> =
            Err(apply::ApplyError::NoVersion {
                path: PathBuf::from("/run/banger-cfg/banger.json"),
            });
        apply::write_record(
            tmp.path(),
            &err,
            apply::Owner {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            },
        )
        .unwrap();
        let h = health(&ctx);
        assert_eq!(
            h.applied,
            Some(Err(
                "guest config /run/banger-cfg/banger.json has no numeric format_version".to_owned()
            ))
        );
        assert_eq!(
            h.hostname,
            nix::unistd::gethostname().unwrap().to_string_lossy()
        );
        assert!(h.uptime_secs > 0);
    }

    /// The read half of a virtio-serial port as the guest sees it: an empty
    /// chunk is one `read` returning 0 (host disconnected), a closed channel
    /// is an I/O error (port unplugged).
    struct PortReader(mpsc::Receiver<Vec<u8>>, Vec<u8>);

    impl Read for PortReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1.is_empty() {
                match self.0.recv() {
                    Ok(chunk) if chunk.is_empty() => return Ok(0),
                    Ok(chunk) => self.1 = chunk,
                    Err(_) => return Err(io::Error::from(io::ErrorKind::BrokenPipe)),
                }
            }
            let n = buf.len().min(self.1.len());
            buf[..n].copy_from_slice(&self.1[..n]);
            self.1.drain(..n);
            Ok(n)
        }
    }

    struct PortWriter(mpsc::Sender<Vec<u8>>);

    impl Write for PortWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .send(buf.to_vec())
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn serial_port_survives_host_disconnects_and_reopens_after_errors() {
        let (to_agent_1, rx1) = mpsc::channel();
        let (to_agent_2, rx2) = mpsc::channel();
        let (tx_out, from_agent) = mpsc::channel::<Vec<u8>>();
        let mut ports = vec![rx2, rx1];
        let opens = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (opens, stop, tx_out) = (Arc::clone(&opens), Arc::clone(&stop), tx_out.clone());
            std::thread::spawn(move || {
                let open = || {
                    opens.fetch_add(1, Ordering::SeqCst);
                    match ports.pop() {
                        Some(rx) => Ok((PortReader(rx, Vec::new()), PortWriter(tx_out.clone()))),
                        None => Err(io::Error::from(io::ErrorKind::NotFound)),
                    }
                };
                serve_port(&ctx(), open, &stop, Duration::from_millis(1));
            })
        };
        drop(tx_out);
        let next = || -> AgentResponse {
            let mut line = Vec::new();
            while !line.ends_with(b"\n") {
                line.extend(from_agent.recv().unwrap());
            }
            serde_json::from_slice(&line).unwrap()
        };
        to_agent_1.send(b"{\"op\":\"health\"}\n".to_vec()).unwrap();
        assert!(matches!(next(), AgentResponse::Health(_)));
        // The host goes away in the middle of a line, then a new host
        // connects: the half line is dropped, not glued to the next one.
        to_agent_1.send(b"{\"op\":".to_vec()).unwrap();
        to_agent_1.send(Vec::new()).unwrap();
        to_agent_1.send(Vec::new()).unwrap();
        to_agent_1.send(b"{\"op\":\"ports\"}\n".to_vec()).unwrap();
        assert!(matches!(next(), AgentResponse::Ports { .. }));
        to_agent_1.send(b"garbage\n".to_vec()).unwrap();
        assert!(matches!(next(), AgentResponse::Error { .. }));
        assert_eq!(opens.load(Ordering::SeqCst), 1, "EOF does not reopen");
        // The port fails: it is opened again and serves on.
        drop(to_agent_1);
        to_agent_2.send(b"{\"op\":\"stats\"}\n".to_vec()).unwrap();
        assert!(matches!(next(), AgentResponse::Stats(_)));
        assert_eq!(opens.load(Ordering::SeqCst), 2);
        stop.store(true, Ordering::SeqCst);
        drop(to_agent_2);
        server.join().unwrap();
    }

    #[test]
    fn serve_serial_on_a_real_character_device() {
        use nix::sys::termios;
        // A pty slave stands in for /dev/vportNpM: a character device the
        // agent opens by path and talks through.
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut attrs = termios::tcgetattr(&pty.slave).unwrap();
        termios::cfmakeraw(&mut attrs);
        termios::tcsetattr(&pty.slave, termios::SetArg::TCSANOW, &attrs).unwrap();
        let path = nix::unistd::ttyname(&pty.slave).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (stop, path) = (Arc::clone(&stop), path.clone());
            std::thread::spawn(move || serve_serial(&ctx(), &path, &stop))
        };
        let mut master = File::from(pty.master);
        let mut reader = BufReader::new(master.try_clone().unwrap());
        let mut ask = |line: &[u8]| -> AgentResponse {
            master.write_all(line).unwrap();
            let mut answer = String::new();
            reader.read_line(&mut answer).unwrap();
            serde_json::from_str(&answer).unwrap()
        };
        assert!(matches!(
            ask(b"{\"op\":\"health\"}\n"),
            AgentResponse::Health(_)
        ));
        assert!(matches!(
            ask(b"{\"op\":\"nope\"}\n"),
            AgentResponse::Error { .. }
        ));
        assert!(matches!(
            ask(b"{\"op\":\"stats\"}\n"),
            AgentResponse::Stats(_)
        ));
        stop.store(true, Ordering::SeqCst);
        // Hanging up the pty ends the agent's read, so it sees `stop`.
        drop(reader);
        drop(master);
        drop(pty.slave);
        server.join().unwrap();
    }

    #[test]
    fn serial_port_found_through_sysfs_without_udev() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("dev");
        let sys = tmp.path().join("sys/class/virtio-ports");
        for (port, name) in [
            ("vport0p0", ""),
            ("vport0p1", "org.qemu.guest_agent.0"),
            ("vport0p2", AGENT_PORT_NAME),
        ] {
            std::fs::create_dir_all(sys.join(port)).unwrap();
            std::fs::write(sys.join(port).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir_all(&dev).unwrap();
        assert_eq!(
            find_serial_port(&dev, &sys, AGENT_PORT_NAME),
            None,
            "no device node yet"
        );
        std::fs::write(dev.join("vport0p2"), "").unwrap();
        assert_eq!(
            find_serial_port(&dev, &sys, AGENT_PORT_NAME),
            Some(dev.join("vport0p2"))
        );
        std::fs::create_dir_all(dev.join("virtio-ports")).unwrap();
        std::os::unix::fs::symlink(
            "../vport0p2",
            dev.join("virtio-ports").join(AGENT_PORT_NAME),
        )
        .unwrap();
        assert_eq!(
            find_serial_port(&dev, &sys, AGENT_PORT_NAME),
            Some(dev.join("virtio-ports").join(AGENT_PORT_NAME))
        );
        assert_eq!(find_serial_port(&dev, &sys, "org.other"), None);
    }
}
