//! Persistent tap creation through `/dev/net/tun` ioctls (rtnetlink cannot set
//! a tap's owner; the tun driver's ioctls can).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use super::{OpError, TunOp};
use crate::validate::IfaceName;

const TUN_DEVICE: &str = "/dev/net/tun";

/// Create (or re-attach to) tap `name`, give it to `owner` and make it
/// persistent, so the unprivileged VMM can open it later by name.
pub(super) fn create_persistent_tap(name: &IfaceName, owner: u32) -> Result<(), OpError> {
    let err = |op: TunOp| {
        let name = name.to_string();
        move |source: std::io::Error| OpError::Tun { name, op, source }
    };
    let tun: File = OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(err(TunOp::OpenDevice))?;
    let fd = tun.as_raw_fd();

    // SAFETY: `ifreq` is a plain C struct (byte arrays, integers and a raw
    // pointer in a union); all-zero is a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // IfaceName guarantees 1..=15 ASCII bytes, so the name fits with its NUL.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_str().bytes()) {
        *dst = src as libc::c_char;
    }
    // Layer 2 without the packet-info prefix: what Firecracker and QEMU expect.
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;

    // SAFETY: `fd` is an open /dev/net/tun descriptor owned by `tun`, alive for
    // this call; TUNSETIFF reads and writes only within `req`, a live,
    // correctly sized `struct ifreq`.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut libc::ifreq) } < 0 {
        return Err(err(TunOp::SetIff)(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is attached to the tap above; TUNSETOWNER takes the uid by
    // value, no memory is passed.
    if unsafe { libc::ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(owner)) } < 0 {
        return Err(err(TunOp::SetOwner)(std::io::Error::last_os_error()));
    }
    // SAFETY: as above; TUNSETPERSIST takes a flag by value. Persistence keeps
    // the device when `tun` is closed at the end of this function.
    if unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(err(TunOp::SetPersist)(std::io::Error::last_os_error()));
    }
    Ok(())
}
