//! The directories banger owns in the owner's home (`home_dirs` of
//! nix/units.json: `~/.config/banger` for the ssh_config, `~/.local/state/banger`
//! for the default SSH key). `bangerd.service` may write only these under the
//! home, so they must exist before it starts: `system install` creates them.
//!
//! The home belongs to the owner, who can swap any component for a symlink,
//! so root never creates anything there. A forked child drops to the owner's
//! uid, gid and no supplementary groups, then walks each path from an fd of
//! the home with `mkdirat` + `openat(O_NOFOLLOW|O_DIRECTORY)`: a symlink
//! anywhere below the home is refused, and whatever it does, it can do only
//! what the owner could do.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::owner::Owner;

/// Mode of banger's own directories (the SSH key lives in one).
pub const DIR_MODE: u32 = 0o700;
/// Mode of missing parents (`~/.config`, `~/.local`, `~/.local/state`), as a
/// login with the usual umask 022 would create them.
pub const PARENT_MODE: u32 = 0o755;

/// Errors creating the home directories.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("home directory {} of {user:?} is not an absolute path", home.display())]
    BadHome { user: String, home: PathBuf },
    #[error("home_dirs entry {0:?} in nix/units.json must be a relative path of plain components")]
    BadEntry(String),
    #[error("cannot {op} while creating banger's directories in {user:?}'s home: {source}")]
    Process {
        op: &'static str,
        user: String,
        source: nix::Error,
    },
    #[error("cannot switch to uid {uid} / gid {gid} of {user:?} to create its banger directories: {source}")]
    Credentials {
        user: String,
        uid: u32,
        gid: u32,
        source: std::io::Error,
    },
    #[error("refusing {}: it is a symlink or not a directory; banger's directories are created as {user:?} through real directories only (replace it with a directory and rerun `banger system install`)", path.display())]
    NotDirectory { user: String, path: PathBuf },
    #[error("cannot {op} {} as {user:?}: {source}", path.display())]
    Io {
        op: &'static str,
        user: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the child creating {user:?}'s banger directories ended without a result ({status})")]
    ChildFailed { user: String, status: String },
}

/// One step's outcome, as the child reports it over a pipe (fixed-size
/// records: the child must not allocate after `fork`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Existed = 0,
    Changed = 1,
    Credentials = 2,
    OpenHome = 3,
    Mkdir = 4,
    NotDirectory = 5,
    Open = 6,
    Chmod = 7,
}

const RECORD: usize = 8;

fn record(dir: usize, comp: usize, kind: Kind, errno: i32) -> [u8; RECORD] {
    let e = errno.to_le_bytes();
    [dir as u8, comp as u8, kind as u8, 0, e[0], e[1], e[2], e[3]]
}

/// Check `rel` (an entry of `home_dirs`) and split it into components.
pub fn components(rel: &str) -> Result<Vec<String>, HomeError> {
    let p = Path::new(rel);
    let parts: Vec<String> = p
        .components()
        .map(|c| match c {
            std::path::Component::Normal(s) => s.to_str().map(str::to_owned),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| HomeError::BadEntry(rel.to_owned()))?;
    if parts.is_empty() || parts.len() > 16 || rel.ends_with('/') {
        return Err(HomeError::BadEntry(rel.to_owned()));
    }
    Ok(parts)
}

/// Create each of `rel_dirs` under `home` (the owner's home as seen by this
/// process: `<root>/home/x` in a staging tree) as the owner, mode 0700 (missing
/// parents 0755). Returns the directories created or whose mode was fixed.
pub fn ensure_home_dirs(
    owner: &Owner,
    home: &Path,
    rel_dirs: &[String],
) -> Result<Vec<PathBuf>, HomeError> {
    let user = owner.name.clone();
    if !home.is_absolute() {
        return Err(HomeError::BadHome {
            user,
            home: home.to_owned(),
        });
    }
    let dirs: Vec<Vec<String>> = rel_dirs
        .iter()
        .map(|d| components(d))
        .collect::<Result<_, _>>()?;
    // Everything the child needs, allocated before the fork.
    let c_home = CString::new(home.as_os_str().as_bytes()).map_err(|_| HomeError::BadHome {
        user: user.clone(),
        home: home.to_owned(),
    })?;
    let c_dirs: Vec<Vec<CString>> = dirs
        .iter()
        .map(|d| {
            d.iter()
                .map(|c| CString::new(c.as_str()).map_err(|_| HomeError::BadEntry(c.clone())))
                .collect()
        })
        .collect::<Result<_, _>>()?;
    let process = |op| {
        let user = user.clone();
        move |source| HomeError::Process { op, user, source }
    };
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(process("pipe"))?;

    // SAFETY: the child only makes raw system calls on data allocated above
    // (no allocation, no locks) and leaves with `_exit`.
    let pid = match unsafe { nix::unistd::fork() }.map_err(process("fork"))? {
        nix::unistd::ForkResult::Child => {
            drop(rd);
            // SAFETY: as above; `child` never returns.
            unsafe { child(owner.uid, owner.gid, &c_home, &c_dirs, wr) }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(wr);
    let mut out = Vec::new();
    let mut file = std::fs::File::from(rd);
    std::io::Read::read_to_end(&mut file, &mut out).map_err(|e| HomeError::Io {
        op: "read the result of the child creating directories for",
        user: user.clone(),
        path: home.to_owned(),
        source: e,
    })?;
    let status = nix::sys::wait::waitpid(pid, None).map_err(process("wait for the child"))?;

    let mut changed = Vec::new();
    for rec in out.chunks_exact(RECORD) {
        let (di, ci, kind) = (rec[0] as usize, rec[1] as usize, rec[2]);
        let errno = i32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        let err = std::io::Error::from_raw_os_error(errno);
        let upto = |n: usize| {
            dirs.get(di)
                .map(|d| d.iter().take(n).fold(home.to_owned(), |p, c| p.join(c)))
                .unwrap_or_else(|| home.to_owned())
        };
        let io = |op| HomeError::Io {
            op,
            user: user.clone(),
            path: upto(ci + 1),
            source: std::io::Error::from_raw_os_error(errno),
        };
        match kind {
            k if k == Kind::Existed as u8 => {}
            k if k == Kind::Changed as u8 => changed.push(upto(usize::MAX)),
            k if k == Kind::Credentials as u8 => {
                return Err(HomeError::Credentials {
                    user,
                    uid: owner.uid,
                    gid: owner.gid,
                    source: err,
                })
            }
            k if k == Kind::OpenHome as u8 => {
                return Err(HomeError::Io {
                    op: "open the home directory",
                    user,
                    path: home.to_owned(),
                    source: err,
                })
            }
            k if k == Kind::NotDirectory as u8 => {
                return Err(HomeError::NotDirectory {
                    user,
                    path: upto(ci + 1),
                })
            }
            k if k == Kind::Mkdir as u8 => return Err(io("create directory")),
            k if k == Kind::Open as u8 => return Err(io("open directory")),
            _ => return Err(io("set mode 0700 on")),
        }
    }
    let complete = out.len() == RECORD * dirs.len();
    match status {
        nix::sys::wait::WaitStatus::Exited(_, 0) if complete => Ok(changed),
        other => Err(HomeError::ChildFailed {
            user,
            status: format!("{other:?}"),
        }),
    }
}

/// The forked child: drop to the owner, create the directories, report.
///
/// # Safety
/// Call only in a freshly forked child; it uses raw system calls only.
unsafe fn child(uid: u32, gid: u32, home: &CString, dirs: &[Vec<CString>], wr: OwnedFd) -> ! {
    let w = wr.as_raw_fd();
    let report = |rec: [u8; RECORD]| {
        // SAFETY: writing a stack buffer to our own pipe.
        unsafe { libc::write(w, rec.as_ptr().cast(), RECORD) };
    };
    let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let fail = |rec: [u8; RECORD]| -> ! {
        report(rec);
        // SAFETY: leaving the forked child without running the parent's
        // atexit handlers or destructors.
        unsafe { libc::_exit(1) }
    };
    // Groups first, while still root; then gid, then uid (irreversible).
    // SAFETY: plain system calls with valid arguments.
    let dropped = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(gid) == 0
            && libc::setuid(uid) == 0
            && libc::getuid() == uid
            && libc::geteuid() == uid
    };
    if !dropped {
        fail(record(0, 0, Kind::Credentials, errno()));
    }
    // SAFETY: a plain system call.
    unsafe { libc::umask(0o022) };
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `home` is a valid C string.
    let home_fd = unsafe { libc::open(home.as_ptr(), dir_flags) };
    if home_fd < 0 {
        fail(record(0, 0, Kind::OpenHome, errno()));
    }
    for (di, comps) in dirs.iter().enumerate() {
        let mut fd = home_fd;
        let mut kind = Kind::Existed;
        for (ci, comp) in comps.iter().enumerate() {
            let last = ci + 1 == comps.len();
            let mode = if last { DIR_MODE } else { PARENT_MODE };
            // SAFETY: `fd` is an open directory, `comp` a valid C string.
            let made = unsafe { libc::mkdirat(fd, comp.as_ptr(), mode) } == 0;
            if !made && errno() != libc::EEXIST {
                fail(record(di, ci, Kind::Mkdir, errno()));
            }
            // SAFETY: as above.
            let next = unsafe { libc::openat(fd, comp.as_ptr(), dir_flags) };
            if next < 0 {
                let e = errno();
                let k = if e == libc::ELOOP || e == libc::ENOTDIR {
                    Kind::NotDirectory
                } else {
                    Kind::Open
                };
                fail(record(di, ci, k, e));
            }
            if fd != home_fd {
                // SAFETY: closing a descriptor this loop opened.
                unsafe { libc::close(fd) };
            }
            fd = next;
            if made {
                kind = Kind::Changed;
            }
        }
        // An existing directory (an older banger, the user) gets the mode
        // the SSH key needs.
        // SAFETY: `stat` is plain data; all zeroes is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills `st` for an open descriptor.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            fail(record(di, comps.len() - 1, Kind::Open, errno()));
        }
        if st.st_mode & 0o7777 != DIR_MODE {
            // SAFETY: a plain system call on an open descriptor.
            if unsafe { libc::fchmod(fd, DIR_MODE) } != 0 {
                fail(record(di, comps.len() - 1, Kind::Chmod, errno()));
            }
            kind = Kind::Changed;
        }
        if fd != home_fd {
            // SAFETY: closing a descriptor this loop opened.
            unsafe { libc::close(fd) };
        }
        report(record(di, comps.len() - 1, kind, 0));
    }
    // SAFETY: see `fail`.
    unsafe { libc::_exit(0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn owner_of(home: &Path, uid: u32, gid: u32) -> Owner {
        Owner {
            name: "tester".into(),
            uid,
            gid,
            group: "tester".into(),
            home: home.to_owned(),
        }
    }

    fn dirs() -> Vec<String> {
        vec![".config/banger".into(), ".local/state/banger".into()]
    }

    /// A scratch directory (traversable by everyone) holding `home`, owned
    /// by uid 4242 / gid 4343 when `owned`, else by root; `None` when not
    /// root (these tests switch uids), unless BANGER_REQUIRE_PRIVILEGED=1.
    fn scratch(test: &str, owned: bool) -> Option<(tempfile::TempDir, PathBuf, Owner)> {
        if !banger_test_support::Gate::named(test).root().check() {
            return None;
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = t.path().join("home");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
        if owned {
            nix::unistd::chown(&home, Some(4242.into()), Some(4343.into())).unwrap();
        }
        let owner = owner_of(&home, 4242, 4343);
        Some((t, home, owner))
    }

    #[test]
    fn entries_must_be_plain_relative_paths() {
        for bad in ["/etc", "../x", "a/../b", "", "./a", "a/"] {
            assert!(components(bad).is_err(), "{bad:?}");
        }
        assert_eq!(components(".local/state/banger").unwrap().len(), 3);
    }

    /// A fresh home of an unprivileged uid: everything created, owned by
    /// that uid, banger's directories 0700 and their parents 0755; a rerun
    /// changes nothing. Needs root (the child drops to the uid).
    #[test]
    fn creates_the_directories_as_the_owner_in_a_fresh_home() {
        let Some((_t, home, owner)) = scratch("creates_the_directories_as_the_owner", true) else {
            return;
        };
        let changed = ensure_home_dirs(&owner, &home, &dirs()).unwrap();
        assert_eq!(
            changed,
            [
                home.join(".config/banger"),
                home.join(".local/state/banger")
            ]
        );
        for (rel, mode) in [
            (".config", 0o755),
            (".config/banger", 0o700),
            (".local", 0o755),
            (".local/state", 0o755),
            (".local/state/banger", 0o700),
        ] {
            let m = std::fs::symlink_metadata(home.join(rel)).unwrap();
            assert!(m.is_dir(), "{rel}");
            assert_eq!((m.uid(), m.gid()), (4242, 4343), "{rel} owner");
            assert_eq!(m.mode() & 0o7777, mode, "{rel} mode");
        }
        assert!(ensure_home_dirs(&owner, &home, &dirs()).unwrap().is_empty());
        // A wider mode left by someone else is narrowed again.
        std::fs::set_permissions(
            home.join(".local/state/banger"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(
            ensure_home_dirs(&owner, &home, &dirs()).unwrap(),
            [home.join(".local/state/banger")]
        );
    }

    /// The owner points `~/.local/state` at a root-owned directory: nothing
    /// is created there, the error names the link, and even a link deeper
    /// down is never followed.
    #[test]
    fn symlinks_in_the_home_are_refused_and_never_followed() {
        let Some((t, home, owner)) = scratch("symlinks_in_the_home_are_refused", true) else {
            return;
        };
        let target = t.path().join("root-owned");
        std::fs::create_dir(&target).unwrap();
        std::fs::create_dir(home.join(".local")).unwrap();
        nix::unistd::chown(&home.join(".local"), Some(4242.into()), Some(4343.into())).unwrap();
        std::os::unix::fs::symlink(&target, home.join(".local/state")).unwrap();
        let err = ensure_home_dirs(&owner, &home, &dirs()).unwrap_err();
        assert!(
            matches!(&err, HomeError::NotDirectory { path, .. } if *path == home.join(".local/state")),
            "{err}"
        );
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        // Even a world-writable target stays untouched: the walk never
        // follows the link, whatever the owner could write.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_home_dirs(&owner, &home, &dirs()).is_err());
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);

        // The home itself as a symlink is refused too.
        let link_home = t.path().join("link-home");
        std::os::unix::fs::symlink(&home, &link_home).unwrap();
        let err = ensure_home_dirs(&owner, &link_home, &dirs()).unwrap_err();
        assert!(err.to_string().contains("open the home"), "{err}");
    }

    /// The child really runs as the owner: in a home the owner cannot
    /// write, root would succeed and the owner fails.
    #[test]
    fn the_child_has_only_the_owners_rights() {
        let Some((_t, home, owner)) = scratch("the_child_has_only_the_owners_rights", false) else {
            return;
        };
        let err = ensure_home_dirs(&owner, &home, &dirs()).unwrap_err();
        assert!(
            matches!(&err, HomeError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
            "{err}"
        );
        assert!(!home.join(".config").exists());
    }
}
