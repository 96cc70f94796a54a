//! The boot-time apply of the per-VM config drive: hostname, SSH host key,
//! `authorized_keys` and `file_sync` payloads.
//!
//! Every boot applies the drive again and ends in the same state, so a VM
//! that is stopped and started (or whose config changed on the host) simply
//! converges. Paths in the guest are taken relative to
//! [`ApplyOptions::root`] so tests can apply into a temp directory.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use banger_wire::guest::{
    GuestConfig, GuestFile, SshHostKey, CONFIG_FILE, FILES_DIR, GUEST_CONFIG_VERSION,
};
use serde::{Deserialize, Serialize};

use crate::drive::{self, BlockLookup, DriveError};

/// Where the config drive is mounted while it is applied.
pub const DEFAULT_MOUNT_DIR: &str = "/run/banger-cfg";
/// Where the result of the last apply is kept, relative to the guest root.
pub const APPLY_RECORD: &str = "run/banger/apply.json";
/// Mode of a `file_sync` file whose entry gives none.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

pub(crate) const HOST_KEY: &str = "etc/ssh/ssh_host_ed25519_key";
pub(crate) const AUTHORIZED_KEYS: &str = "root/.ssh/authorized_keys";
const MANAGED_BEGIN: &str =
    "# BEGIN banger-managed keys (rewritten at every boot; add yours below)";
const MANAGED_END: &str = "# END banger-managed keys";

/// Errors applying the config drive; each names the file or entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot read the guest config {path}: {source}")]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("guest config {path} has no numeric format_version")]
    NoVersion { path: PathBuf },
    #[error("guest config {path} has format_version {found}, but this agent (banger {agent}) understands only format_version {supported}: build the image with a matching banger-vsock-agent")]
    UnsupportedVersion {
        path: PathBuf,
        found: u64,
        supported: u32,
        agent: &'static str,
    },
    #[error("guest config {path} is invalid: {source}")]
    ParseConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("hostname {hostname:?} is invalid: {reason}")]
    InvalidHostname {
        hostname: String,
        reason: &'static str,
    },
    #[error("cannot set the kernel hostname to {hostname:?}: {source}")]
    SetHostname {
        hostname: String,
        source: nix::Error,
    },
    #[error("the SSH host key in the guest config is invalid: {reason}")]
    InvalidHostKey { reason: &'static str },
    #[error("authorized_keys[{index}] is invalid: {reason}")]
    InvalidAuthorizedKey { index: usize, reason: &'static str },
    #[error("files[{index}] ({src} -> {dest}) is invalid: {reason}")]
    InvalidFile {
        index: usize,
        src: String,
        dest: String,
        reason: String,
    },
    #[error("files[{index}] ({src} -> {dest}): cannot {op} {path}: {source}")]
    FileIo {
        index: usize,
        src: String,
        dest: String,
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("apply record {path} is corrupt: {source}")]
    DecodeRecord {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Drive(#[from] DriveError),
}

/// An I/O failure with the operation and path, before it is tied to an entry.
#[derive(Debug)]
pub(crate) struct IoFail {
    pub(crate) op: &'static str,
    pub(crate) path: PathBuf,
    pub(crate) source: io::Error,
}

impl From<IoFail> for ApplyError {
    fn from(f: IoFail) -> Self {
        ApplyError::Io {
            op: f.op,
            path: f.path,
            source: f.source,
        }
    }
}

trait IoCtx<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, IoFail>;
}

impl<T> IoCtx<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, IoFail> {
        self.map_err(|source| IoFail {
            op,
            path: path.to_owned(),
            source,
        })
    }
}

/// Owner given to everything the apply writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Owner {
    /// root:root, what a real guest uses.
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// Where and how to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// The guest's `/` (tests use a temp directory).
    pub root: PathBuf,
    /// Owner of written files (root:root in a guest).
    pub owner: Owner,
    /// Also call sethostname(2); only meaningful when `root` is `/`.
    pub set_kernel_hostname: bool,
}

impl ApplyOptions {
    /// The real guest: `/`, root:root, kernel hostname set.
    pub fn system() -> Self {
        ApplyOptions {
            root: PathBuf::from("/"),
            owner: Owner::ROOT,
            set_kernel_hostname: true,
        }
    }
}

/// What a successful apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// The VM id from the config drive.
    pub vm_id: String,
    /// The hostname that was set.
    pub hostname: String,
    /// Regular files written from `files` entries (directories counted by
    /// the files inside them).
    pub files_installed: usize,
    /// Entries skipped (symlinks, special files), one sentence each.
    pub warnings: Vec<String>,
}

/// The result of the last apply as kept in [`APPLY_RECORD`] for Health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRecord {
    /// The VM id, when the config could be read.
    pub vm_id: Option<String>,
    /// `Err` carries the error message.
    pub result: Result<(), String>,
    /// Files written.
    pub files_installed: usize,
    /// Entries skipped.
    pub warnings: Vec<String>,
    /// When the apply finished (Unix seconds).
    pub finished_unix: u64,
}

/// Read and check the [`GuestConfig`] at `drive_dir/banger.json`.
///
/// The version is checked before the rest is parsed, so a config from a
/// newer host is refused with a version message rather than a confusing
/// "unknown field".
pub fn load_config(drive_dir: &Path) -> Result<GuestConfig, ApplyError> {
    let path = drive_dir.join(CONFIG_FILE);
    let text = fs::read(&path).map_err(|source| ApplyError::ReadConfig {
        path: path.clone(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| ApplyError::ParseConfig {
            path: path.clone(),
            source,
        })?;
    let found = value
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| ApplyError::NoVersion { path: path.clone() })?;
    if found != u64::from(GUEST_CONFIG_VERSION) {
        return Err(ApplyError::UnsupportedVersion {
            path,
            found,
            supported: GUEST_CONFIG_VERSION,
            agent: banger_wire::VERSION,
        });
    }
    serde_json::from_value(value).map_err(|source| ApplyError::ParseConfig { path, source })
}

/// Apply a mounted config drive (its `banger.json` and `files/`).
pub fn apply_from_dir(drive_dir: &Path, opts: &ApplyOptions) -> Result<ApplyReport, ApplyError> {
    let config = load_config(drive_dir)?;
    apply_config(&config, &drive_dir.join(FILES_DIR), opts)
}

/// Find the drive labelled `label` (waiting up to `wait` for it), mount it
/// read-only on `mount_dir`, apply it and unmount it.
pub fn apply_from_drive(
    lookup: &BlockLookup,
    label: &str,
    mount_dir: &Path,
    wait: Duration,
    opts: &ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    let device = lookup.find_waiting(label, wait)?;
    let mount = drive::mount_readonly(&device, mount_dir)?;
    let result = apply_from_dir(mount.path(), opts);
    let unmounted = mount.unmount();
    let report = result?;
    unmounted?;
    Ok(report)
}

/// Apply `config`, with `file_sync` sources read from `files_dir`.
pub fn apply_config(
    config: &GuestConfig,
    files_dir: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    validate_hostname(&config.hostname)?;
    write_hostname(&config.hostname, opts)?;
    install_host_key(&config.ssh_host_key, opts)?;
    install_authorized_keys(&config.authorized_keys, opts)?;
    let mut warnings = Vec::new();
    let mut files_installed = 0;
    for (index, entry) in config.files.iter().enumerate() {
        files_installed += install_file(index, entry, files_dir, opts, &mut warnings)?;
    }
    Ok(ApplyReport {
        vm_id: config.vm_id.clone(),
        hostname: config.hostname.clone(),
        files_installed,
        warnings,
    })
}

/// Write [`APPLY_RECORD`] under `root` for the result of an apply.
pub fn write_record(
    root: &Path,
    outcome: &Result<ApplyReport, ApplyError>,
    owner: Owner,
) -> Result<PathBuf, ApplyError> {
    let finished_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let record = match outcome {
        Ok(r) => ApplyRecord {
            vm_id: Some(r.vm_id.clone()),
            result: Ok(()),
            files_installed: r.files_installed,
            warnings: r.warnings.clone(),
            finished_unix,
        },
        Err(e) => ApplyRecord {
            vm_id: None,
            result: Err(e.to_string()),
            files_installed: 0,
            warnings: Vec::new(),
            finished_unix,
        },
    };
    let path = root.join(APPLY_RECORD);
    let mut json = serde_json::to_vec_pretty(&record).expect("ApplyRecord always serializes");
    json.push(b'\n');
    create_missing_dirs(path.parent().expect("record path has a parent"), owner)?;
    write_atomic(&path, &mut json.as_slice(), 0o644, owner)?;
    Ok(path)
}

/// The last apply's record under `root`; `None` when no apply has run.
pub fn read_record(root: &Path) -> Result<Option<ApplyRecord>, ApplyError> {
    let path = root.join(APPLY_RECORD);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ApplyError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| ApplyError::DecodeRecord { path, source })
}

/// `path` (absolute in the guest) below `root`.
fn in_root(root: &Path, guest: &str) -> PathBuf {
    root.join(guest.trim_start_matches('/'))
}

pub(crate) fn validate_hostname(hostname: &str) -> Result<(), ApplyError> {
    let bad = |reason| ApplyError::InvalidHostname {
        hostname: hostname.to_owned(),
        reason,
    };
    if hostname.is_empty() || hostname.len() > 64 {
        return Err(bad("it must be 1 to 64 characters"));
    }
    for label in hostname.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each dot-separated label must be 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("only letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label cannot start or end with '-'"));
        }
    }
    Ok(())
}

pub(crate) fn write_hostname(hostname: &str, opts: &ApplyOptions) -> Result<(), ApplyError> {
    let path = opts.root.join("etc/hostname");
    create_missing_dirs(path.parent().expect("has parent"), opts.owner)?;
    write_atomic(
        &path,
        &mut format!("{hostname}\n").as_bytes(),
        0o644,
        opts.owner,
    )?;
    update_hosts(hostname, opts)?;
    if opts.set_kernel_hostname {
        nix::unistd::sethostname(hostname).map_err(|source| ApplyError::SetHostname {
            hostname: hostname.to_owned(),
            source,
        })?;
    }
    Ok(())
}

/// Point `127.0.1.1` at the hostname in `/etc/hosts` (the Debian
/// convention), so the VM resolves its own name without DNS.
fn update_hosts(hostname: &str, opts: &ApplyOptions) -> Result<(), ApplyError> {
    let path = opts.root.join("etc/hosts");
    let existing = match fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ApplyError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    let text = hosts_with_hostname(existing.as_deref(), hostname);
    if existing.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    write_atomic(&path, &mut text.as_bytes(), 0o644, opts.owner)?;
    Ok(())
}

fn hosts_with_hostname(existing: Option<&str>, hostname: &str) -> String {
    let ours = format!("127.0.1.1\t{hostname}");
    let Some(existing) = existing else {
        return format!(
            "127.0.0.1\tlocalhost\n{ours}\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        );
    };
    let mut out = Vec::new();
    let mut placed = false;
    for line in existing.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            if !placed {
                out.push(ours.clone());
                placed = true;
            }
            continue;
        }
        out.push(line.to_owned());
        if !placed && line.split_whitespace().next() == Some("127.0.0.1") {
            out.push(ours.clone());
            placed = true;
        }
    }
    if !placed {
        out.insert(0, ours);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The trimmed private and public halves of `key`, or what is wrong with it.
pub(crate) fn validate_host_key(key: &SshHostKey) -> Result<(&str, &str), ApplyError> {
    let private = key.private_openssh.trim();
    if !private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        || !private.ends_with("-----END OPENSSH PRIVATE KEY-----")
    {
        return Err(ApplyError::InvalidHostKey {
            reason: "private_openssh is not an OpenSSH private key",
        });
    }
    let public = key.public_openssh.trim();
    if !public.starts_with("ssh-ed25519 ") || public.contains('\n') {
        return Err(ApplyError::InvalidHostKey {
            reason: "public_openssh is not a single ssh-ed25519 line",
        });
    }
    Ok((private, public))
}

/// The host key files' contents as [`install_host_key`] writes them.
pub(crate) fn host_key_files(private: &str, public: &str) -> (String, String) {
    (format!("{private}\n"), format!("{public}\n"))
}

pub(crate) fn install_host_key(key: &SshHostKey, opts: &ApplyOptions) -> Result<(), ApplyError> {
    let (private, public) = validate_host_key(key)?;
    let (private, public) = host_key_files(private, public);
    let path = opts.root.join(HOST_KEY);
    create_missing_dirs(path.parent().expect("has parent"), opts.owner)?;
    // The public half goes first: sshd only looks at the private key, so it
    // never sees a private key without its matching .pub.
    write_atomic(
        &path.with_extension("pub"),
        &mut public.as_bytes(),
        0o644,
        opts.owner,
    )?;
    write_atomic(&path, &mut private.as_bytes(), 0o600, opts.owner)?;
    Ok(())
}

pub(crate) fn validate_authorized_keys(keys: &[String]) -> Result<(), ApplyError> {
    for (index, key) in keys.iter().enumerate() {
        if key.contains(['\n', '\r']) {
            return Err(ApplyError::InvalidAuthorizedKey {
                index,
                reason: "it contains a line break",
            });
        }
        if key.trim().is_empty() {
            return Err(ApplyError::InvalidAuthorizedKey {
                index,
                reason: "it is empty",
            });
        }
    }
    Ok(())
}

pub(crate) fn install_authorized_keys(
    keys: &[String],
    opts: &ApplyOptions,
) -> Result<(), ApplyError> {
    validate_authorized_keys(keys)?;
    let home = opts.root.join("root");
    let ssh_dir = home.join(".ssh");
    // sshd's StrictModes refuses keys when /root or /root/.ssh is writable
    // by others or not owned by root; the work disk's fresh root directory
    // is 0755, so normalize every time.
    ensure_dir(&home, 0o700, opts.owner)?;
    ensure_dir(&ssh_dir, 0o700, opts.owner)?;
    let path = opts.root.join(AUTHORIZED_KEYS);
    let existing = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ApplyError::Io {
                op: "read",
                path,
                source,
            })
        }
    };
    let text = authorized_keys_text(&existing, keys);
    write_atomic(&path, &mut text.as_bytes(), 0o600, opts.owner)?;
    Ok(())
}

/// banger's keys in a marked block, followed by every line the user added
/// outside it (kept across boots, since `/root` is the persistent work disk).
fn authorized_keys_text(existing: &str, keys: &[String]) -> String {
    let mut out = vec![MANAGED_BEGIN.to_owned()];
    out.extend(keys.iter().map(|k| k.trim().to_owned()));
    out.push(MANAGED_END.to_owned());
    let mut in_block = false;
    for line in existing.lines() {
        if line.starts_with("# BEGIN banger-managed keys") {
            in_block = true;
        } else if line == MANAGED_END {
            in_block = false;
        } else if !in_block {
            out.push(line.to_owned());
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// Install one `files` entry; returns how many regular files it wrote.
fn install_file(
    index: usize,
    entry: &GuestFile,
    files_dir: &Path,
    opts: &ApplyOptions,
    warnings: &mut Vec<String>,
) -> Result<usize, ApplyError> {
    let invalid = |reason: String| ApplyError::InvalidFile {
        index,
        src: entry.source.clone(),
        dest: entry.dest.clone(),
        reason,
    };
    let at = |f: IoFail| ApplyError::FileIo {
        index,
        src: entry.source.clone(),
        dest: entry.dest.clone(),
        op: f.op,
        path: f.path,
        source: f.source,
    };
    let src_rel = Path::new(&entry.source);
    if entry.source.is_empty()
        || !src_rel
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(invalid(
            "source must be a relative path without '..'".to_owned(),
        ));
    }
    let dest_guest = Path::new(&entry.dest);
    if !dest_guest.is_absolute()
        || dest_guest.components().any(|c| c == Component::ParentDir)
        || dest_guest.components().count() < 2
    {
        return Err(invalid(
            "dest must be an absolute path below / without '..'".to_owned(),
        ));
    }
    if let Some(mode) = entry.mode {
        if mode > 0o7777 {
            return Err(invalid(format!("mode {mode:#o} is not a permission mode")));
        }
    }
    let src = files_dir.join(src_rel);
    let dest = in_root(&opts.root, &entry.dest);
    let meta = fs::symlink_metadata(&src).ctx("read", &src).map_err(at)?;
    if meta.file_type().is_symlink() {
        warnings.push(format!(
            "files[{index}]: skipped {}: symbolic links are not installed",
            entry.source
        ));
        return Ok(0);
    }
    if entry.is_dir != meta.is_dir() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a directory"
        };
        return Err(invalid(format!(
            "is_dir is {} but the source is {what}",
            entry.is_dir
        )));
    }
    let parent = dest.parent().expect("dest has a parent");
    create_missing_dirs(parent, opts.owner).map_err(at)?;
    if meta.is_dir() {
        let mut count = 0;
        copy_tree(
            &src,
            &dest,
            &entry.source,
            opts.owner,
            &mut count,
            index,
            warnings,
        )
        .map_err(at)?;
        Ok(count)
    } else if meta.is_file() {
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            return Err(invalid("dest exists and is a directory".to_owned()));
        }
        let mut input = File::open(&src).ctx("open", &src).map_err(at)?;
        let mode = entry.mode.unwrap_or(DEFAULT_FILE_MODE);
        write_atomic(&dest, &mut input, mode, opts.owner).map_err(at)?;
        Ok(1)
    } else {
        warnings.push(format!(
            "files[{index}]: skipped {}: not a regular file or directory",
            entry.source
        ));
        Ok(0)
    }
}

/// Copy the directory `src` onto `dest` (merging into an existing one),
/// each entry keeping its source permission bits, all owned by `owner`.
fn copy_tree(
    src: &Path,
    dest: &Path,
    rel: &str,
    owner: Owner,
    count: &mut usize,
    index: usize,
    warnings: &mut Vec<String>,
) -> Result<(), IoFail> {
    let mode = fs::metadata(src).ctx("read", src)?.permissions().mode() & 0o7777;
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(IoFail {
                op: "replace",
                path: dest.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it exists and is not a directory",
                ),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dest)
                .ctx("create directory", dest)?;
        }
        Err(source) => {
            return Err(IoFail {
                op: "inspect",
                path: dest.to_owned(),
                source,
            })
        }
    }
    let mut entries: Vec<_> = fs::read_dir(src)
        .ctx("list", src)?
        .collect::<io::Result<_>>()
        .ctx("list", src)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let child_rel = format!("{rel}/{}", entry.file_name().to_string_lossy());
        let ft = entry.file_type().ctx("inspect", &from)?;
        if ft.is_dir() {
            copy_tree(&from, &to, &child_rel, owner, count, index, warnings)?;
        } else if ft.is_file() {
            let mode = entry.metadata().ctx("inspect", &from)?.permissions().mode() & 0o7777;
            if fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) {
                return Err(IoFail {
                    op: "replace",
                    path: to,
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "it is a directory but the source is a file",
                    ),
                });
            }
            let mut input = File::open(&from).ctx("open", &from)?;
            write_atomic(&to, &mut input, mode, owner)?;
            *count += 1;
        } else if ft.is_symlink() {
            warnings.push(format!(
                "files[{index}]: skipped {child_rel}: symbolic links are not installed"
            ));
        } else {
            warnings.push(format!(
                "files[{index}]: skipped {child_rel}: not a regular file or directory"
            ));
        }
    }
    // Last, so a read-only source directory (0500) can still be filled.
    set_owner_mode(dest, mode, owner)
}

/// Create `dir` and any missing ancestors (0755, owned by `owner`);
/// existing directories are left as they are.
fn create_missing_dirs(dir: &Path, owner: Owner) -> Result<(), IoFail> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_missing_dirs(parent, owner)?;
    }
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => set_owner_mode(dir, 0o755, owner),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(source) => Err(IoFail {
            op: "create directory",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Make `dir` exist with exactly `mode` and `owner`.
fn ensure_dir(dir: &Path, mode: u32, owner: Owner) -> Result<(), IoFail> {
    if !dir.is_dir() {
        create_missing_dirs(dir.parent().expect("has parent"), owner)?;
        match fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(IoFail {
                    op: "create directory",
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
    set_owner_mode(dir, mode, owner)
}

/// chown before chmod: chown clears setuid/setgid bits.
fn set_owner_mode(path: &Path, mode: u32, owner: Owner) -> Result<(), IoFail> {
    std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid)).ctx("chown", path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).ctx("chmod", path)
}

/// Replace `path` with `contents` (mode, owner) atomically: a reader (sshd,
/// a crash mid-write) sees the old file or the new one, never a partial one.
pub(crate) fn write_atomic(
    path: &Path,
    contents: &mut dyn Read,
    mode: u32,
    owner: Owner,
) -> Result<(), IoFail> {
    let opts = banger_fs::WriteOptions::mode(mode).owned_by(owner.uid, owner.gid);
    banger_fs::write_atomic(path, contents, opts).map_err(|e| {
        let (path, source) = e.into_parts();
        IoFail {
            op: "replace",
            path,
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_wire::guest::SshHostKey;
    use std::os::unix::fs::MetadataExt;

    const PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    const PUBLIC: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey banger-host";

    fn current_owner() -> Owner {
        Owner {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    fn opts(root: &Path) -> ApplyOptions {
        ApplyOptions {
            root: root.to_owned(),
            owner: current_owner(),
            set_kernel_hostname: false,
        }
    }

    fn config(files: Vec<GuestFile>) -> GuestConfig {
        GuestConfig {
            format_version: GUEST_CONFIG_VERSION,
            vm_id: "vm-0123".to_owned(),
            hostname: "devbox".to_owned(),
            authorized_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser user@laptop".to_owned()
            ],
            ssh_host_key: SshHostKey {
                private_openssh: PRIVATE.to_owned(),
                public_openssh: PUBLIC.to_owned(),
            },
            files,
        }
    }

    fn file(source: &str, dest: &str, mode: Option<u32>, is_dir: bool) -> GuestFile {
        GuestFile {
            source: source.to_owned(),
            dest: dest.to_owned(),
            mode,
            is_dir,
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn assert_owned(path: &Path) {
        let m = fs::symlink_metadata(path).unwrap();
        let o = current_owner();
        assert_eq!((m.uid(), m.gid()), (o.uid, o.gid), "{}", path.display());
    }

    /// A config drive directory: banger.json plus files/.
    fn drive(dir: &Path, config: &GuestConfig) -> PathBuf {
        let drive = dir.join("drive");
        fs::create_dir_all(drive.join(FILES_DIR)).unwrap();
        fs::write(drive.join(CONFIG_FILE), serde_json::to_vec(config).unwrap()).unwrap();
        drive
    }

    #[test]
    fn hostname_host_key_and_authorized_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/hosts"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tbanger\n::1\t\tlocalhost\n",
        )
        .unwrap();
        // The work disk's root directory as mkfs leaves it: 0755.
        fs::DirBuilder::new()
            .mode(0o755)
            .create(root.join("root"))
            .unwrap();
        let drive = drive(tmp.path(), &config(vec![]));
        let report = apply_from_dir(&drive, &opts(&root)).unwrap();
        assert_eq!(report.vm_id, "vm-0123");
        assert_eq!(report.hostname, "devbox");

        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "devbox\n"
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/hosts")).unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tdevbox\n::1\t\tlocalhost\n"
        );

        let key = root.join(HOST_KEY);
        assert_eq!(fs::read_to_string(&key).unwrap(), PRIVATE);
        assert_eq!(mode_of(&key), 0o600);
        assert_owned(&key);
        let public = root.join("etc/ssh/ssh_host_ed25519_key.pub");
        assert_eq!(fs::read_to_string(&public).unwrap(), format!("{PUBLIC}\n"));
        assert_eq!(mode_of(&public), 0o644);

        let ak = root.join(AUTHORIZED_KEYS);
        let text = fs::read_to_string(&ak).unwrap();
        assert!(
            text.contains("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUser user@laptop\n"),
            "{text}"
        );
        assert_eq!(mode_of(&ak), 0o600);
        assert_eq!(mode_of(&root.join("root")), 0o700);
        assert_eq!(mode_of(&root.join("root/.ssh")), 0o700);
        for p in [&ak, &root.join("root"), &root.join("root/.ssh")] {
            assert_owned(p);
        }
        // No temp file left behind.
        let leftovers: Vec<_> = fs::read_dir(root.join("etc/ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn loose_permissions_are_normalized_and_user_keys_kept_across_boots() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let ssh = root.join("root/.ssh");
        fs::create_dir_all(&ssh).unwrap();
        fs::set_permissions(root.join("root"), fs::Permissions::from_mode(0o777)).unwrap();
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o775)).unwrap();
        fs::write(
            ssh.join("authorized_keys"),
            "ssh-ed25519 AAAAteammate mate@desk\n",
        )
        .unwrap();
        fs::set_permissions(
            ssh.join("authorized_keys"),
            fs::Permissions::from_mode(0o666),
        )
        .unwrap();

        let mut cfg = config(vec![]);
        let drive1 = drive(&tmp.path().join("1"), &cfg);
        apply_from_dir(&drive1, &opts(&root)).unwrap();
        // Second boot with a rotated banger key: the old one is replaced,
        // the teammate's key the user added stays.
        cfg.authorized_keys = vec!["ssh-ed25519 AAAArotated banger".to_owned()];
        let drive2 = drive(&tmp.path().join("2"), &cfg);
        apply_from_dir(&drive2, &opts(&root)).unwrap();
        apply_from_dir(&drive2, &opts(&root)).unwrap();

        let text = fs::read_to_string(ssh.join("authorized_keys")).unwrap();
        assert_eq!(
            text,
            format!("{MANAGED_BEGIN}\nssh-ed25519 AAAArotated banger\n{MANAGED_END}\nssh-ed25519 AAAAteammate mate@desk\n")
        );
        assert_eq!(mode_of(&root.join("root")), 0o700);
        assert_eq!(mode_of(&ssh), 0o700);
        assert_eq!(mode_of(&ssh.join("authorized_keys")), 0o600);
    }

    #[test]
    fn file_sync_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let cfg = config(vec![
            file("gitconfig", "/root/.gitconfig", None, false),
            file("run.sh", "/root/bin/run.sh", Some(0o750), false),
            file("dotfiles", "/root/.config/tool", None, true),
            file("link", "/root/link", None, false),
            file("existing", "/root/existing.txt", Some(0o644), false),
        ]);
        let drive = drive(tmp.path(), &cfg);
        let files = drive.join(FILES_DIR);
        fs::write(files.join("gitconfig"), "[user]\n\tname = dev\n").unwrap();
        fs::write(files.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(files.join("run.sh"), fs::Permissions::from_mode(0o644)).unwrap();
        let d = files.join("dotfiles");
        fs::create_dir_all(d.join("private")).unwrap();
        fs::write(d.join("public.toml"), "a = 1\n").unwrap();
        fs::set_permissions(d.join("public.toml"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(d.join("tool.sh"), "echo\n").unwrap();
        fs::set_permissions(d.join("tool.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(d.join("private/token"), "secret\n").unwrap();
        fs::set_permissions(d.join("private/token"), fs::Permissions::from_mode(0o400)).unwrap();
        fs::set_permissions(d.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("public.toml", d.join("alias.toml")).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("gitconfig", files.join("link")).unwrap();
        fs::write(files.join("existing"), "new contents\n").unwrap();
        // Already in the guest from an earlier boot, with other contents and mode.
        fs::create_dir_all(root.join("root")).unwrap();
        fs::write(
            root.join("root/existing.txt"),
            "old contents that are longer\n",
        )
        .unwrap();
        fs::set_permissions(
            root.join("root/existing.txt"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();

        let report = apply_from_dir(&drive, &opts(&root)).unwrap();
        assert_eq!(report.files_installed, 6);
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
        assert!(
            report.warnings[0].contains("dotfiles/alias.toml"),
            "{:?}",
            report.warnings
        );
        assert!(report.warnings[1].contains("files[3]") && report.warnings[1].contains("link"));

        let g = root.join("root/.gitconfig");
        assert_eq!(fs::read_to_string(&g).unwrap(), "[user]\n\tname = dev\n");
        assert_eq!(mode_of(&g), 0o600, "default mode");
        assert_owned(&g);
        assert_eq!(mode_of(&root.join("root/bin/run.sh")), 0o750, "custom mode");
        assert_eq!(mode_of(&root.join("root/bin")), 0o755, "created parent");

        let t = root.join("root/.config/tool");
        assert_eq!(mode_of(&t), 0o750);
        assert_eq!(mode_of(&t.join("public.toml")), 0o644);
        assert_eq!(mode_of(&t.join("tool.sh")), 0o755);
        assert_eq!(mode_of(&t.join("private")), 0o700);
        assert_eq!(mode_of(&t.join("private/token")), 0o400);
        assert_eq!(
            fs::read_to_string(t.join("private/token")).unwrap(),
            "secret\n"
        );
        for p in [&t, &t.join("private"), &t.join("private/token")] {
            assert_owned(p);
        }
        assert!(fs::symlink_metadata(t.join("alias.toml")).is_err());
        assert!(fs::symlink_metadata(root.join("root/link")).is_err());

        let e = root.join("root/existing.txt");
        assert_eq!(fs::read_to_string(&e).unwrap(), "new contents\n");
        assert_eq!(mode_of(&e), 0o644);

        // Applying again (next boot) converges to the same state.
        let again = apply_from_dir(&drive, &opts(&root)).unwrap();
        assert_eq!(again, report);
        assert_eq!(mode_of(&t.join("private/token")), 0o400);
    }

    #[test]
    fn unknown_format_version_is_refused_before_parsing() {
        let tmp = tempfile::tempdir().unwrap();
        let drive = tmp.path().join("drive");
        fs::create_dir_all(&drive).unwrap();
        fs::write(
            drive.join(CONFIG_FILE),
            r#"{"format_version": 2, "a_field_from_the_future": true}"#,
        )
        .unwrap();
        let err = apply_from_dir(&drive, &opts(&tmp.path().join("root"))).unwrap_err();
        assert!(
            matches!(err, ApplyError::UnsupportedVersion { found: 2, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("format_version 2") && msg.contains("banger.json"),
            "{msg}"
        );
        assert!(!tmp.path().join("root/etc/hostname").exists());

        fs::write(drive.join(CONFIG_FILE), r#"{"hostname": "x"}"#).unwrap();
        let err = apply_from_dir(&drive, &opts(&tmp.path().join("root"))).unwrap_err();
        assert!(matches!(err, ApplyError::NoVersion { .. }), "{err:?}");
    }

    #[test]
    fn bad_entries_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let cases: Vec<(GuestFile, &str)> = vec![
            (
                file("../etc/shadow", "/root/x", None, false),
                "relative path",
            ),
            (file("a", "root/x", None, false), "absolute path"),
            (file("a", "/root/../etc/x", None, false), "absolute path"),
            (
                file("a", "/root/x", Some(0o10000), false),
                "not a permission mode",
            ),
            (file("missing", "/root/x", None, false), "cannot read"),
            (file("a", "/root/x", None, true), "is_dir is true"),
        ];
        for (entry, expected) in cases {
            let cfg = config(vec![file("ok", "/root/ok", None, false), entry.clone()]);
            let drive = drive(&tmp.path().join(entry.dest.replace('/', "_")), &cfg);
            fs::write(drive.join(FILES_DIR).join("ok"), "ok").unwrap();
            fs::write(drive.join(FILES_DIR).join("a"), "a").unwrap();
            let msg = apply_from_dir(&drive, &opts(&root))
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with("files[1] ("), "{msg}");
            assert!(
                msg.contains(&entry.source) && msg.contains(&entry.dest),
                "{msg}"
            );
            assert!(msg.contains(expected), "{expected:?} not in {msg}");
        }

        let mut cfg = config(vec![]);
        cfg.hostname = "-bad".to_owned();
        let err = apply_config(&cfg, tmp.path(), &opts(&root)).unwrap_err();
        assert!(err.to_string().contains("\"-bad\""), "{err}");
        let mut cfg = config(vec![]);
        cfg.authorized_keys
            .push("ssh-ed25519 AAAA\ncommand=\"evil\" ssh-ed25519 BBBB".to_owned());
        let err = apply_config(&cfg, tmp.path(), &opts(&root)).unwrap_err();
        assert!(err.to_string().starts_with("authorized_keys[1]"), "{err}");
    }

    #[test]
    fn record_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_record(tmp.path()).unwrap(), None);
        let ok = Ok(ApplyReport {
            vm_id: "vm-1".to_owned(),
            hostname: "h".to_owned(),
            files_installed: 3,
            warnings: vec!["w".to_owned()],
        });
        let path = write_record(tmp.path(), &ok, current_owner()).unwrap();
        assert_eq!(path, tmp.path().join(APPLY_RECORD));
        let rec = read_record(tmp.path()).unwrap().unwrap();
        assert_eq!(rec.result, Ok(()));
        assert_eq!(rec.vm_id.as_deref(), Some("vm-1"));
        assert_eq!(rec.files_installed, 3);

        let err: Result<ApplyReport, ApplyError> = Err(ApplyError::NoVersion {
            path: PathBuf::from("/run/banger-cfg/banger.json"),
        });
        write_record(tmp.path(), &err, current_owner()).unwrap();
        let rec = read_record(tmp.path()).unwrap().unwrap();
        assert_eq!(
            rec.result,
            Err(
                "guest config /run/banger-cfg/banger.json has no numeric format_version".to_owned()
            )
        );
    }

    /// A loop device detached on drop.
    struct Loop(String);

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    #[test]
    fn applies_a_real_drive_found_by_label_through_sysfs() {
        if !crate::test_support::privileged("applies_a_real_drive_found_by_label_through_sysfs") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config(vec![file("motd", "/root/motd", None, false)]);
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join(FILES_DIR)).unwrap();
        fs::write(tree.join(CONFIG_FILE), serde_json::to_vec(&cfg).unwrap()).unwrap();
        fs::write(tree.join(FILES_DIR).join("motd"), "hello\n").unwrap();
        // A label of our own, so no other disk (or parallel test) matches.
        let label = format!("bt{}", std::process::id());
        let img = tmp.path().join("cfg.ext4");
        crate::test_support::mkfs_from(&img, &label, Some(&tree));
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _loop = Loop(String::from_utf8(out.stdout).unwrap().trim().to_owned());

        let root = tmp.path().join("guest");
        let mount_dir = tmp.path().join("run/banger-cfg");
        let opts = ApplyOptions {
            root: root.clone(),
            owner: Owner::ROOT,
            set_kernel_hostname: false,
        };
        let outcome = apply_from_drive(
            &BlockLookup::default(),
            &label,
            &mount_dir,
            Duration::from_secs(5),
            &opts,
        );
        write_record(&root, &outcome, Owner::ROOT).unwrap();
        let report = outcome.unwrap();
        assert_eq!(report.files_installed, 1);
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "devbox\n"
        );
        assert_eq!(
            fs::read_to_string(root.join("root/motd")).unwrap(),
            "hello\n"
        );
        assert_eq!(read_record(&root).unwrap().unwrap().result, Ok(()));
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(mount_dir.to_str().unwrap()),
            "the drive is unmounted afterwards"
        );
    }

    #[test]
    fn hosts_file_without_127_0_1_1_gets_one() {
        assert_eq!(
            hosts_with_hostname(Some("127.0.0.1 localhost\n"), "vm"),
            "127.0.0.1 localhost\n127.0.1.1\tvm\n"
        );
        assert_eq!(
            hosts_with_hostname(Some("::1 localhost\n"), "vm"),
            "127.0.1.1\tvm\n::1 localhost\n"
        );
        assert!(hosts_with_hostname(None, "vm").contains("127.0.1.1\tvm\n"));
    }
}
