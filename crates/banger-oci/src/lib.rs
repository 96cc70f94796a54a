//! OCI import for banger: turn a container image from a registry into a
//! bootable ext4 root filesystem, without root.
//!
//! The steps, each in its own module:
//! - [`reference`]: what the user typed → registry, repository, tag/digest;
//! - [`auth`]: credentials from a Docker config file (never logged);
//! - [`registry`]: manifest/index/config through `oci-client`, layers into
//!   the digest-keyed [`cache`];
//! - [`flatten`]: layers applied in order into an in-memory tree (whiteouts,
//!   opaque directories, hard links, xattrs), hostile entries refused;
//! - [`inspect`]: what the tree can boot with (init, sshd, package manager);
//! - [`inject`]: banger's guest boot files added to the tree;
//! - [`rootfs`]: the tree written as one tar and turned into ext4 by
//!   `mkfs.ext4 -d`, so ownership, modes and xattrs are the image's.
//!
//! See docs/oci-import.md.

pub mod auth;
pub mod cache;
pub mod flatten;
pub mod import;
pub mod inject;
pub mod inspect;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod rootfs;

pub use import::{import, ImportError, ImportOptions, Imported};
pub use reference::OciRef;
