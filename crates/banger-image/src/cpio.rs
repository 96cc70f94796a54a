//! A reproducible newc (`070701`) cpio writer for initramfs images: inode
//! numbers count up from 1 in the order entries are added, owners are
//! root, and every mtime is the one given at construction. Device nodes
//! can be written without privileges (they are only bytes here).

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes a newc archive.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer whose entries all carry `mtime` (seconds since 1970).
    pub fn new(out: W, mtime: u32) -> CpioWriter<W> {
        CpioWriter {
            out,
            mtime,
            next_ino: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0u8; 3][..4 - rem])?;
        }
        Ok(())
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> io::Result<()> {
        if name.is_empty()
            || name.starts_with('/')
            || name.contains('\0')
            || name.split('/').any(|c| c == "..")
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio entry name {name:?}"),
            ));
        }
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let filesize = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name} exceeds 4 GiB"))
        })?;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            if name == TRAILER { 0 } else { self.mtime },
            filesize,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str(MAGIC);
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    /// A directory (parents must be added first).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, &[], (0, 0))
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, data, (0, 0))
    }

    /// A symlink to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0))
    }

    /// A character device node.
    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | (perm & 0o7777), 1, &[], (major, minor))
    }

    /// Write the trailer and pad with zeros to a multiple of 4096 bytes;
    /// returns the writer.
    ///
    /// Why 4096: QEMU's `microvm` places the initrd so it ends at
    /// `top_of_ram - 4096 + (size % 4096)`, and its ACPI tables sit in the
    /// last few hundred bytes of RAM. An initrd whose size modulo 4096 is
    /// large overlaps and corrupts them (the guest then stalls for minutes
    /// in early ACPI setup). A page-multiple size keeps the last page free.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, 1, &[], (0, 0))?;
        let rem = (self.written % 4096) as usize;
        if rem != 0 {
            let zeros = vec![0u8; 4096 - rem];
            self.put(&zeros)?;
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new(), 1_735_689_600);
        w.dir("bin", 0o755).unwrap();
        w.file("bin/busybox", 0o755, b"\x7fELF...").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn output_is_deterministic_and_padded() {
        let a = sample();
        assert_eq!(a, sample());
        assert_eq!(a.len() % 4096, 0);
        assert!(a.starts_with(b"070701"));
    }

    #[test]
    fn gnu_cpio_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("initrd");
        std::fs::write(&archive, sample()).unwrap();
        // A missing cpio skips (fails in CI); a cpio that rejects the
        // archive is this test failing.
        if !banger_test_support::Gate::new().tool("cpio").check() {
            return;
        }
        let out = std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&archive)
            .output()
            .expect("run cpio");
        assert!(
            out.status.success(),
            "cpio rejects the archive: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        for needle in [
            "bin/busybox",
            "bin/sh -> busybox",
            "dev/console",
            "init",
            "drwxr-xr-x",
            "crw-------",
        ] {
            assert!(out.contains(needle), "expected {needle:?} in:\n{out}");
        }
        // Extract (as any user; device nodes are skipped when not root).
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let status = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&archive)
            .current_dir(&x)
            .status()
            .unwrap();
        assert!(status.success(), "cpio cannot extract the archive");
        assert_eq!(
            std::fs::read(x.join("init")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
    }

    #[test]
    fn refuses_escaping_names() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        assert!(w.file("/etc/passwd", 0o644, b"").is_err());
        assert!(w.file("../x", 0o644, b"").is_err());
    }
}
