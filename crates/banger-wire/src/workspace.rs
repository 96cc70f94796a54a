//! `POST /v1/vms/{name}/workspace` (`banger vm workspace prepare`,
//! docs/workspace.md): its query parameters, their validation, and the
//! answer. The request body is the tar stream the CLI builds.

use serde::{Deserialize, Serialize};

/// How much of a repository goes into the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceMode {
    /// Tracked and untracked-not-ignored files, plus HEAD's commit and trees
    /// as a shallow repository.
    #[default]
    ShallowMetadata,
    /// As `shallow_metadata`, with every commit and tree of HEAD's history.
    Metadata,
    /// The repository directory as it is, `.git` included.
    FullCopy,
}

impl WorkspaceMode {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [WorkspaceMode; 3] = [
        WorkspaceMode::ShallowMetadata,
        WorkspaceMode::Metadata,
        WorkspaceMode::FullCopy,
    ];

    /// The name on the wire and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            WorkspaceMode::ShallowMetadata => "shallow_metadata",
            WorkspaceMode::Metadata => "metadata",
            WorkspaceMode::FullCopy => "full_copy",
        }
    }

    /// Whether the guest builds the git metadata from a pack (the two
    /// metadata modes) rather than receiving `.git` as files.
    pub const fn builds_git(self) -> bool {
        !matches!(self, WorkspaceMode::FullCopy)
    }
}

impl std::fmt::Display for WorkspaceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WorkspaceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WorkspaceMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                format!("unknown workspace mode {s:?} (shallow_metadata, metadata or full_copy)")
            })
    }
}

/// Where a workspace lands when `--guest-path` is not given.
pub const DEFAULT_GUEST_PATH: &str = "/root/repo";

/// The query parameters of the workspace route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceParams {
    /// Absolute guest directory the tree appears at (a symlink to the
    /// current tree).
    pub guest_path: String,
    #[serde(default)]
    pub mode: WorkspaceMode,
    /// Make the tree read-only in the guest (a read-only bind mount).
    #[serde(default)]
    pub readonly: bool,
    /// The host's HEAD commit (metadata modes).
    #[serde(default)]
    pub head: Option<String>,
    /// The branch HEAD is on in the host checkout (metadata modes).
    #[serde(default)]
    pub host_branch: Option<String>,
    /// Create and check out this branch in the guest.
    #[serde(default)]
    pub new_branch: Option<String>,
    /// The commit `new_branch` starts from (full hash).
    #[serde(default)]
    pub from: Option<String>,
    /// Bytes of file content the body carries, for progress.
    #[serde(default)]
    pub size: Option<u64>,
}

/// A parameter the workspace route refuses, naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkspaceParamError {
    #[error("--guest-path {path:?}: {why}")]
    GuestPath { path: String, why: &'static str },
    #[error("{what} {value:?} is not a full commit hash")]
    Commit { what: &'static str, value: String },
    #[error("branch name {name:?} is not valid")]
    Branch { name: String },
    #[error("{mode} needs the host's HEAD commit (head=...)")]
    NoHead { mode: WorkspaceMode },
    #[error("--from needs --branch (it names the commit the new branch starts from)")]
    FromWithoutBranch,
}

/// Top-level guest directories a workspace may not replace or live in.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys",
    "usr",
];

/// Check a guest path: absolute, plain components (letters, digits, `.`,
/// `_`, `-`, `+`, `@`; no `.` or `..`), not `/`, not in or at a system
/// directory. What passes is safe in a shell word without quoting.
pub fn validate_guest_path(path: &str) -> Result<(), WorkspaceParamError> {
    let bad = |why| {
        Err(WorkspaceParamError::GuestPath {
            path: path.to_owned(),
            why,
        })
    };
    let Some(rest) = path.strip_prefix('/') else {
        return bad("must be an absolute path");
    };
    if path.len() > 1024 {
        return bad("is longer than 1024 bytes");
    }
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return bad("has an empty, `.` or `..` component");
    }
    if !parts.iter().all(|p| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'@'))
    }) {
        return bad("may only hold letters, digits, `.`, `_`, `-`, `+`, `@` and `/`");
    }
    if parts.iter().any(|p| p.starts_with('-')) {
        return bad("has a component starting with `-`");
    }
    if SYSTEM_DIRS.contains(&parts[0]) || parts == ["var"] || parts == ["root"] {
        return bad("is, or is inside, a system directory; pick a directory such as /root/repo");
    }
    Ok(())
}

/// `git check-ref-format`'s rules for a branch name, minus the exotic ones:
/// also rejects anything a shell would need quoting for.
pub fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

fn full_hash(what: &'static str, value: &str) -> Result<(), WorkspaceParamError> {
    if (value.len() == 40 || value.len() == 64) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(WorkspaceParamError::Commit {
            what,
            value: value.to_owned(),
        })
    }
}

impl WorkspaceParams {
    /// Check every parameter; what passes can be put in a shell script
    /// without quoting.
    pub fn validate(&self) -> Result<(), WorkspaceParamError> {
        validate_guest_path(&self.guest_path)?;
        if let Some(head) = &self.head {
            full_hash("head", head)?;
        } else if self.mode.builds_git() {
            return Err(WorkspaceParamError::NoHead { mode: self.mode });
        }
        if let Some(from) = &self.from {
            full_hash("--from", from)?;
            if self.new_branch.is_none() {
                return Err(WorkspaceParamError::FromWithoutBranch);
            }
        }
        for name in [&self.host_branch, &self.new_branch].into_iter().flatten() {
            if !valid_branch(name) {
                return Err(WorkspaceParamError::Branch { name: name.clone() });
            }
        }
        Ok(())
    }

    /// The route's target for VM `vm` with these parameters as its query.
    pub fn target(&self, vm: &str) -> crate::routes::Target<crate::routes::Raw, WorkspaceReport> {
        let mut t = crate::routes::VM_WORKSPACE
            .at(vm)
            .query("guest_path", &self.guest_path)
            .query("mode", self.mode.as_str());
        if self.readonly {
            t = t.query("readonly", "true");
        }
        let optional = [
            ("head", &self.head),
            ("host_branch", &self.host_branch),
            ("new_branch", &self.new_branch),
            ("from", &self.from),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                t = t.query(key, v);
            }
        }
        if let Some(size) = self.size {
            t = t.query("size", &size.to_string());
        }
        t
    }
}

/// What `POST /v1/vms/{name}/workspace` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceReport {
    /// The path the tree appears at.
    pub guest_path: String,
    /// The directory holding this tree (`guest_path` is a symlink to it).
    pub tree: String,
    pub mode: WorkspaceMode,
    pub readonly: bool,
    /// Bytes of the request body (the tar stream).
    pub bytes: u64,
    /// Whether a tree was at `guest_path` before (now replaced).
    pub replaced: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths() {
        for ok in [
            "/root/repo",
            "/srv/app",
            "/root/a-b_c.d/x",
            "/workspace",
            "/var/tmp/x",
        ] {
            validate_guest_path(ok).unwrap();
        }
        for bad in [
            "root/repo",
            "/",
            "/root",
            "/etc/x",
            "/usr",
            "/root/../etc",
            "/root/./x",
            "/root//x",
            "/root/a b",
            "/root/$(x)",
            "/root/'x",
            "/root/-rf",
            "/var",
        ] {
            assert!(validate_guest_path(bad).is_err(), "{bad} passed");
        }
    }

    #[test]
    fn params_validate_and_round_trip_through_the_query() {
        let head = "a".repeat(40);
        let p = WorkspaceParams {
            guest_path: "/root/repo".into(),
            mode: WorkspaceMode::Metadata,
            readonly: true,
            head: Some(head.clone()),
            host_branch: Some("main".into()),
            new_branch: Some("feat/x".into()),
            from: Some(head.clone()),
            size: Some(12),
        };
        p.validate().unwrap();
        let t = p.target("box");
        let query = t.path.split_once('?').unwrap().1;
        assert!(t.path.starts_with("/v1/vms/box/workspace?"), "{}", t.path);
        let pairs: Vec<(String, String)> = query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.replace("%2F", "/"))
            })
            .collect();
        assert!(pairs.contains(&("mode".into(), "metadata".into())));
        assert!(pairs.contains(&("new_branch".into(), "feat/x".into())));
        assert!(pairs.contains(&("readonly".into(), "true".into())));

        let mut q = p.clone();
        q.head = None;
        assert_eq!(
            q.validate(),
            Err(WorkspaceParamError::NoHead {
                mode: WorkspaceMode::Metadata
            })
        );
        q.mode = WorkspaceMode::FullCopy;
        q.validate().unwrap();
        let mut q = p.clone();
        q.new_branch = Some("a;b".into());
        assert!(matches!(
            q.validate(),
            Err(WorkspaceParamError::Branch { .. })
        ));
        let mut q = p.clone();
        q.from = Some("HEAD".into());
        assert!(matches!(
            q.validate(),
            Err(WorkspaceParamError::Commit { .. })
        ));
        let mut q = p;
        q.new_branch = None;
        assert_eq!(q.validate(), Err(WorkspaceParamError::FromWithoutBranch));
    }

    #[test]
    fn modes_parse_by_their_wire_names() {
        for m in WorkspaceMode::ALL {
            assert_eq!(m.as_str().parse::<WorkspaceMode>(), Ok(m));
        }
        assert!("shallow".parse::<WorkspaceMode>().is_err());
    }
}
