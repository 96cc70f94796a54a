//! Helpers shared by the integration tests: bundle sources and a real HTTP
//! server on 127.0.0.1 that can misbehave on purpose.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use banger_image::bundle::BundleMeta;
use banger_image::Kind;

pub use banger_fuzz::noise;

/// An image source dir: a sparse `rootfs.ext4` with data islands.
pub fn image_src(dir: &Path, size: u64) -> PathBuf {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir).unwrap();
    let f = std::fs::File::create(dir.join("rootfs.ext4")).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&noise(100_000, 1), 0).unwrap();
    f.write_all_at(&noise(50_000, 2), size / 2).unwrap();
    dir.to_owned()
}

/// A kernel source dir: `vmlinux`, `initrd`, `modules/<release>/...`.
pub fn kernel_src(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vmlinux"), noise(300_000, 3)).unwrap();
    std::fs::write(dir.join("initrd"), noise(70_000, 4)).unwrap();
    let m = dir.join("modules/6.12.0-test/kernel/fs");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(dir.join("modules/6.12.0-test/empty")).unwrap();
    std::fs::write(m.join("overlay.ko.xz"), noise(20_000, 5)).unwrap();
    std::fs::write(
        dir.join("modules/6.12.0-test/modules.dep"),
        b"kernel/fs/overlay.ko.xz:\n",
    )
    .unwrap();
    let tool = dir.join("modules/6.12.0-test/tool");
    std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir.to_owned()
}

pub fn image_meta(name: &str) -> BundleMeta {
    BundleMeta {
        kind: Kind::Image,
        name: name.into(),
        version: "1.0".into(),
        created: 1_735_689_600,
        recipe_hash: Some("0".repeat(64)),
        kernel_ref: Some("test-kernel".into()),
        kernel_release: None,
    }
}

pub fn kernel_meta(name: &str) -> BundleMeta {
    BundleMeta {
        kind: Kind::Kernel,
        name: name.into(),
        version: "6.12.0".into(),
        created: 1_735_689_600,
        recipe_hash: None,
        kernel_ref: None,
        kernel_release: Some("6.12.0-test".into()),
    }
}

/// Every name in `dir` except the lock directory; empty when `dir` is missing.
pub fn leftovers(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "locks")
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// How the server answers one path.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// 200 with Content-Length, the whole body.
    Full(Vec<u8>),
    /// Like `Full`, in 64 KiB pieces with a pause between them, so
    /// concurrent clients really overlap.
    Slow(Vec<u8>),
    /// 200 announcing the whole length, then only `n` bytes and a close.
    Truncate(Vec<u8>, usize),
    /// 200 without Content-Length (close-delimited), only `n` bytes.
    ShortNoLength(Vec<u8>, usize),
    /// Sends `n` bytes, then the server shuts down entirely (listener closed).
    DieAfter(Vec<u8>, usize),
    /// Any status without a body.
    Status(u16),
    /// Serves byte ranges (`Range: bytes=N-` gets 206 with Content-Range,
    /// under a strong ETag), but every response sends at most `n` bytes
    /// and then closes: a flaky link that a resuming client gets through.
    Flaky(Vec<u8>, usize),
}

/// A real HTTP/1.1 server on 127.0.0.1:0 serving fixed routes.
pub struct TestServer {
    pub base_url: String,
    routes: Arc<Mutex<HashMap<String, Behavior>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    pub connections: Arc<AtomicUsize>,
}

impl TestServer {
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Arc<Mutex<HashMap<String, Behavior>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, h, s, c) = (
            routes.clone(),
            hits.clone(),
            stop.clone(),
            connections.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (r, h, s) = (r.clone(), h.clone(), s.clone());
                std::thread::spawn(move || serve(conn, &r, &h, &s));
            }
            // The listener is dropped here: the port refuses connections.
        });
        TestServer {
            base_url: format!("http://{addr}"),
            routes,
            hits,
            stop,
            connections,
        }
    }

    pub fn route(&self, path: &str, b: Behavior) {
        self.routes.lock().unwrap().insert(path.to_owned(), b);
    }

    /// GET requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so its thread ends and the port closes.
        let _ = TcpStream::connect(self.base_url.trim_start_matches("http://"));
    }
}

fn serve(
    conn: TcpStream,
    routes: &Mutex<HashMap<String, Behavior>>,
    hits: &Mutex<HashMap<String, usize>>,
    stop: &AtomicBool,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut range_start: Option<usize> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse().ok();
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let behavior = routes
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or(Behavior::Status(404));
    let mut w = conn;
    let head = |len: Option<usize>| match len {
        Some(l) => format!("HTTP/1.1 200 OK\r\nContent-Length: {l}\r\nConnection: close\r\n\r\n"),
        None => "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned(),
    };
    let _ = match behavior {
        Behavior::Full(body) => w
            .write_all(head(Some(body.len())).as_bytes())
            .and_then(|()| w.write_all(&body)),
        Behavior::Slow(body) => w
            .write_all(head(Some(body.len())).as_bytes())
            .and_then(|()| {
                for piece in body.chunks(64 << 10) {
                    w.write_all(piece)?;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Ok(())
            }),
        Behavior::Truncate(body, n) => w
            .write_all(head(Some(body.len())).as_bytes())
            .and_then(|()| w.write_all(&body[..n])),
        Behavior::ShortNoLength(body, n) => w
            .write_all(head(None).as_bytes())
            .and_then(|()| w.write_all(&body[..n])),
        Behavior::DieAfter(body, n) => {
            let r = w
                .write_all(head(Some(body.len())).as_bytes())
                .and_then(|()| w.write_all(&body[..n]));
            stop.store(true, Ordering::SeqCst);
            let _ = w.shutdown(std::net::Shutdown::Both);
            // Wake the accept loop so the listener closes now.
            if let Ok(addr) = w.local_addr() {
                let _ = TcpStream::connect(addr);
            }
            r
        }
        Behavior::Flaky(body, n) => {
            let start = range_start.unwrap_or(0).min(body.len());
            let head = match range_start {
                Some(_) => format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
                    body.len() - start,
                    body.len() - 1,
                    body.len()
                ),
                None => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                    body.len()
                ),
            };
            let end = (start + n).min(body.len());
            w.write_all(head.as_bytes())
                .and_then(|()| w.write_all(&body[start..end]))
        }
        Behavior::Status(code) => w.write_all(
            format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        ),
    };
    let _ = w.flush();
}
