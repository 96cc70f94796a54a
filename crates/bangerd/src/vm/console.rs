//! Keeping a guest's serial console log bounded.
//!
//! The VMM (QEMU's `file` chardev with `append=on`, Firecracker's stdout)
//! appends to `serial.log` itself, so a guest keeps its console whether or
//! not bangerd runs: a daemon restart never stalls or kills it. The daemon
//! caps the file from outside: every [`ROTATE_EVERY`] it looks at each VM's
//! log, and one longer than [`ROTATE_AT`] is copied to `serial.log.1`
//! (replacing the previous one) and truncated to zero. The VMM writes with
//! `O_APPEND`, so its next write lands at the new end. Bytes the guest
//! writes between the copy and the truncation are lost (a moment in a
//! flood); while the daemon is down the file grows without this cap until it
//! is back.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::context::Daemon;

/// How often the logs are checked.
pub const ROTATE_EVERY: Duration = Duration::from_millis(200);

/// What a guest can add between two checks, with a wide margin: QEMU's
/// 16550 UART sends at its baud rate (115200, about 11.5 KB/s), so 200 ms
/// are about 2.3 KB. (Firecracker's serial port is not paced; a guest there
/// can overshoot by what it writes in [`ROTATE_EVERY`].)
pub const CAP_SLACK: u64 = 64 << 10;

/// What a VM's console takes on disk at most while the daemon runs, for
/// `serial_log_max = max`: the rotated copy and the live file, each at most
/// `max` plus what the guest wrote since the last check.
pub fn disk_cap(max: u64) -> u64 {
    2 * max + 2 * CAP_SLACK
}

/// The rotated copy beside `serial_log`.
pub fn rotated(serial_log: &Path) -> PathBuf {
    let mut name = serial_log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Rotate `serial_log` when it is longer than `limit`; returns whether it
/// did. A missing log is not an error (the VM has not booted yet, or was
/// just deleted).
pub fn rotate_if_over(serial_log: &Path, limit: u64) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut live = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(serial_log)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if live.metadata()?.len() <= limit {
        return Ok(false);
    }
    let old = rotated(serial_log);
    let mut tmp = old.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut copy = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        std::io::copy(&mut live, &mut copy)?;
    }
    std::fs::rename(&tmp, &old)?;
    live.set_len(0)?;
    Ok(true)
}

/// Rotate the serial log of every VM (`<state>/vms/*/serial.log`) that grew
/// past `serial_log_max`, until the daemon stops.
pub async fn rotate_loop(state: Arc<Daemon>) {
    let vms_dir = super::paths::vms_dir(&state.layout);
    let max = state.vms.config().serial_log_max.value;
    loop {
        tokio::time::sleep(ROTATE_EVERY).await;
        let dir = vms_dir.clone();
        let _ = tokio::task::spawn_blocking(move || rotate_all(&dir, max)).await;
    }
}

fn rotate_all(vms_dir: &Path, max: u64) {
    let Ok(entries) = std::fs::read_dir(vms_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let log = entry.path().join("serial.log");
        match rotate_if_over(&log, max) {
            Ok(true) => tracing::debug!(log = %log.display(), "rotated the serial log"),
            Ok(false) => {}
            Err(e) => tracing::warn!(log = %log.display(), "cannot rotate the serial log: {e}"),
        }
    }
}

/// The last `max` bytes of `path` (fewer when it is shorter), read from the
/// end: the log may be large and only its tail is wanted.
pub fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.take(max).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_over_the_limit_is_rotated_and_the_writer_keeps_appending() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        // The VMM's side: an O_APPEND writer that stays open throughout.
        let mut vmm = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        vmm.write_all(&[b'a'; 1000]).unwrap();
        assert!(!rotate_if_over(&log, 1000).unwrap());
        vmm.write_all(b"last before rotation\n").unwrap();
        assert!(rotate_if_over(&log, 1000).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        let old = std::fs::read(rotated(&log)).unwrap();
        assert!(old.ends_with(b"last before rotation\n"));
        vmm.write_all(b"first after\n").unwrap();
        // Appended at the new end, not at the old offset (no hole).
        assert_eq!(std::fs::read(&log).unwrap(), b"first after\n");
        assert!(!rotate_if_over(&dir.path().join("none"), 1).unwrap());
    }

    #[test]
    fn a_symlinked_log_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, vec![b'x'; 4096]).unwrap();
        let log = dir.path().join("serial.log");
        std::os::unix::fs::symlink(&target, &log).unwrap();
        assert!(rotate_if_over(&log, 10).is_err());
        assert_eq!(std::fs::metadata(&target).unwrap().len(), 4096);
    }

    #[test]
    fn the_tail_is_read_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(&log, b"0123456789").unwrap();
        assert_eq!(read_tail(&log, 4).unwrap(), b"6789");
        assert_eq!(read_tail(&log, 100).unwrap(), b"0123456789");
    }
}
