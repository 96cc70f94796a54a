//! Giving files under banger's directories to the owner.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::unistd::{fchownat, Gid, Uid};

use super::OpError;
use crate::validate::AllowedPath;

/// Chown `path` to `uid` (and `gid` when given), never following a symlink.
///
/// [`AllowedPath`] was canonicalized at validation, but the owner controls
/// those directories and could swap a component for a symlink afterwards, so
/// the path is re-opened beneath its base with symlinks forbidden.
pub(super) fn chown_to_owner(
    path: &AllowedPath,
    uid: u32,
    gid: Option<u32>,
) -> Result<bool, OpError> {
    let full = path.full();
    let file_err = |what| {
        let path = full.clone();
        move |e: nix::Error| OpError::File {
            what,
            path,
            source: e.into(),
        }
    };
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let base = open(&path.base, flags | OFlag::O_DIRECTORY, Mode::empty())
        .map_err(file_err("open the allowed directory of"))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let base = unsafe { OwnedFd::from_raw_fd(base) };
    let target = if path.relative.as_os_str().is_empty() {
        base
    } else {
        let how = OpenHow::new().flags(flags).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        let fd = openat2(base.as_raw_fd(), &path.relative, how).map_err(file_err("open"))?;
        // SAFETY: `openat2` just returned this descriptor and nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let st = fstat(target.as_raw_fd()).map_err(file_err("stat"))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    // A hard link to a file outside banger's directories would pass the path
    // check; a file with one name cannot be such a link.
    if kind != SFlag::S_IFDIR && st.st_nlink > 1 {
        return Err(OpError::Refused {
            path: full,
            reason: "it has more than one hard link",
        });
    }
    if st.st_uid == uid && gid.is_none_or(|g| st.st_gid == g) {
        return Ok(false);
    }
    fchownat(
        Some(target.as_raw_fd()),
        "",
        Some(Uid::from_raw(uid)),
        gid.map(Gid::from_raw),
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
    .map_err(file_err("chown"))?;
    Ok(true)
}
