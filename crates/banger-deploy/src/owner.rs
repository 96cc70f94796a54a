//! Finding the owner user: in the host's user database, or in a staging
//! tree's `etc/passwd` and `etc/group` (for `--root` installs).

use std::path::{Path, PathBuf};

/// Errors finding the owner.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("user {name:?} does not exist on this host (create it first, e.g. `adduser {name}`)")]
    NoSuchUser { name: String },
    #[error("user {name:?} is not in {passwd} (the staging tree must contain the owner)")]
    NoSuchUserInTree { name: String, passwd: PathBuf },
    #[error("group id {gid} of user {name:?} has no entry in {group}")]
    NoSuchGroup {
        name: String,
        gid: u32,
        group: String,
    },
    #[error("the owner must be an unprivileged user, not {name:?} (uid 0)")]
    Root { name: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: malformed entry")]
    Malformed { path: PathBuf, line: usize },
    #[error("looking up user {name:?}: {source}")]
    Lookup { name: String, source: nix::Error },
}

/// The user `bangerd` runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Name of the primary group.
    pub group: String,
    pub home: PathBuf,
}

/// Look `name` up in the host database, or in `<root>/etc/{passwd,group}`.
pub fn lookup(name: &str, root: Option<&Path>) -> Result<Owner, OwnerError> {
    let owner = match root {
        None => lookup_host(name)?,
        Some(root) => lookup_tree(name, root)?,
    };
    if owner.uid == 0 {
        return Err(OwnerError::Root {
            name: name.to_owned(),
        });
    }
    Ok(owner)
}

fn lookup_host(name: &str) -> Result<Owner, OwnerError> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|source| OwnerError::Lookup {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| OwnerError::NoSuchUser {
            name: name.to_owned(),
        })?;
    let group = nix::unistd::Group::from_gid(user.gid)
        .map_err(|source| OwnerError::Lookup {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| OwnerError::NoSuchGroup {
            name: name.to_owned(),
            gid: user.gid.as_raw(),
            group: "the group database".into(),
        })?;
    Ok(Owner {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        group: group.name,
        home: user.dir,
    })
}

fn read(path: &Path) -> Result<String, OwnerError> {
    std::fs::read_to_string(path).map_err(|source| OwnerError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Lines of a colon-separated database as fields, skipping comments.
fn entries(path: &Path, text: &str, min_fields: usize) -> Result<Vec<Vec<String>>, OwnerError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<String> = line.split(':').map(str::to_owned).collect();
        if fields.len() < min_fields {
            return Err(OwnerError::Malformed {
                path: path.to_owned(),
                line: i + 1,
            });
        }
        out.push(fields);
    }
    Ok(out)
}

fn lookup_tree(name: &str, root: &Path) -> Result<Owner, OwnerError> {
    let passwd = root.join("etc/passwd");
    let group = root.join("etc/group");
    let ptext = read(&passwd)?;
    let malformed = |line| OwnerError::Malformed {
        path: passwd.clone(),
        line,
    };
    let (idx, user) = entries(&passwd, &ptext, 7)?
        .into_iter()
        .enumerate()
        .find(|(_, f)| f[0] == name)
        .ok_or_else(|| OwnerError::NoSuchUserInTree {
            name: name.to_owned(),
            passwd: passwd.clone(),
        })?;
    let uid: u32 = user[2].parse().map_err(|_| malformed(idx + 1))?;
    let gid: u32 = user[3].parse().map_err(|_| malformed(idx + 1))?;
    let gtext = read(&group)?;
    let group_name = entries(&group, &gtext, 3)?
        .into_iter()
        .find(|f| f[2].parse::<u32>().ok() == Some(gid))
        .map(|f| f[0].clone())
        .ok_or_else(|| OwnerError::NoSuchGroup {
            name: name.to_owned(),
            gid,
            group: group.display().to_string(),
        })?;
    Ok(Owner {
        name: name.to_owned(),
        uid,
        gid,
        group: group_name,
        home: PathBuf::from(&user[5]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(passwd: &str, group: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), group).unwrap();
        dir
    }

    #[test]
    fn staging_tree_lookup_reads_its_own_databases() {
        let t = tree(
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1500:1600:Alice:/home/alice:/bin/bash\n",
            "root:x:0:\ndevs:x:1600:alice\n",
        );
        let o = lookup("alice", Some(t.path())).unwrap();
        assert_eq!(
            o,
            Owner {
                name: "alice".into(),
                uid: 1500,
                gid: 1600,
                group: "devs".into(),
                home: "/home/alice".into()
            }
        );
    }

    #[test]
    fn staging_tree_errors_name_the_user_and_file() {
        let t = tree("root:x:0:0:root:/root:/bin/sh\nbob:x:1:2\n", "root:x:0:\n");
        let err = lookup("alice", Some(t.path())).unwrap_err().to_string();
        assert!(err.contains("etc/passwd:2"), "{err}");
        let t = tree("root:x:0:0:root:/root:/bin/sh\n", "root:x:0:\n");
        let err = lookup("alice", Some(t.path())).unwrap_err().to_string();
        assert!(
            err.contains("\"alice\"") && err.contains("etc/passwd"),
            "{err}"
        );
        let err = lookup("root", Some(t.path())).unwrap_err().to_string();
        assert!(err.contains("unprivileged"), "{err}");
        let t = tree("alice:x:1500:1600::/home/alice:/bin/sh\n", "root:x:0:\n");
        let err = lookup("alice", Some(t.path())).unwrap_err().to_string();
        assert!(err.contains("1600") && err.contains("etc/group"), "{err}");
    }

    #[test]
    fn host_lookup_finds_real_users_and_rejects_missing_ones() {
        // `nobody` exists on every Debian/NixOS host; root is refused.
        let o = lookup("nobody", None).unwrap();
        assert_eq!(o.uid, 65534);
        assert!(lookup("root", None)
            .unwrap_err()
            .to_string()
            .contains("uid 0"));
        let err = lookup("banger-no-such-user", None).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
