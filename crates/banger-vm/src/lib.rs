//! Host-side building blocks of a banger VM, used by the daemon's VM manager:
//!
//! - [`disk`]: the root disk (copy-on-write clone of an image), the work disk
//!   and the per-VM config drive;
//! - [`identity`]: VM ids, names, MAC addresses, SSH host keys and banger's
//!   `known_hosts`;
//! - [`ssh`]: an SSH client that only talks to a guest presenting its pinned
//!   host key;
//! - [`filesync`]: `[[file_sync]]` entries turned into config-drive payloads;
//! - [`netplan`]: guest address candidates and the kernel command line's
//!   network part.

pub mod disk;
pub mod filesync;
pub mod identity;
pub mod netplan;
pub mod ssh;
