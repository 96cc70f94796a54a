//! The workspace of `banger vm run PATH`: which files of the git repository
//! holding PATH go into the guest, and the tar stream that carries them.
//!
//! Rules (docs/vm-run.md):
//! - the whole repository (its top level, not just PATH) is copied;
//! - tracked files go with their working-tree content (uncommitted edits
//!   included); a tracked file deleted in the working tree is not sent;
//! - untracked files go only with `--include-untracked`; ignored files never;
//! - repositories with submodules are refused;
//! - file modes and symlinks are kept; everything is owned by root in the tar.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use banger_wire::workspace::WorkspaceMode;

/// Which files of a repository a workspace takes.
#[derive(Debug, Clone, Copy)]
enum Selection {
    /// Tracked files (and untracked-not-ignored ones when asked).
    Git { include_untracked: bool },
    /// Every entry under the top level, directories included.
    Everything,
}

/// Every entry under `root` (directories before their contents), sorted,
/// relative to `root`. Symlinks are not followed.
fn walk(root: &Path) -> Result<Vec<PathBuf>, WorkspaceError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = std::fs::read_dir(&dir).map_err(|source| WorkspaceError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| WorkspaceError::Read {
                path: dir.clone(),
                source,
            })?;
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            names.push((rel.join(entry.file_name()), is_dir));
        }
        names.sort();
        for (path, is_dir) in names.into_iter().rev() {
            if is_dir {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Errors finding or reading a workspace, naming the path or git command.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("{}: {source}", path.display())]
    Path { path: PathBuf, source: io::Error },
    #[error("{} is not inside a git repository (vm run copies a git repository's files; run `git init` there, or leave PATH out for a bare VM)", path.display())]
    NotARepo { path: PathBuf },
    #[error("cannot run `git` (install git on this host): {0}")]
    NoGit(io::Error),
    #[error("`git {args}` failed in {}: {stderr}", dir.display())]
    Git {
        dir: PathBuf,
        args: String,
        stderr: String,
    },
    #[error("the repository {} has no commit yet; commit something first (the guest copy is a git repository at your HEAD)", root.display())]
    NoCommit { root: PathBuf },
    #[error("the repository {} has submodules ({}); vm run does not copy submodules: copy them yourself with `banger vm ssh`, or run from a repository without them", root.display(), paths.join(", "))]
    Submodules { root: PathBuf, paths: Vec<String> },
    #[error("the repository {} has submodules ({}); the metadata modes do not copy submodules: use `--mode full_copy`, which copies the directory as it is, submodules included", root.display(), paths.join(", "))]
    SubmodulesNeedFullCopy { root: PathBuf, paths: Vec<String> },
    #[error("--from {reference}: not a commit in {}", root.display())]
    BadRef { root: PathBuf, reference: String },
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("writing the workspace stream (the guest side of the copy ended early?): {0}")]
    Write(io::Error),
}

/// A repository ready to copy: where it is, its HEAD, and the files to send.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The repository's top-level directory.
    pub root: PathBuf,
    /// The repository's directory name (for the tooling log's name).
    pub name: String,
    /// The full hash of HEAD.
    pub head: String,
    /// The branch HEAD points at, `None` when detached.
    pub branch: Option<String>,
    /// Paths relative to `root`, sorted, that exist in the working tree.
    pub files: Vec<PathBuf>,
}

fn git(dir: &Path, args: &[&str]) -> Result<std::process::Output, WorkspaceError> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(WorkspaceError::NoGit)
}

fn git_ok(dir: &Path, args: &[&str]) -> Result<Vec<u8>, WorkspaceError> {
    let out = git(dir, args)?;
    if !out.status.success() {
        return Err(WorkspaceError::Git {
            dir: dir.to_owned(),
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

fn trimmed(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

impl Workspace {
    /// Find the repository holding `path` and select its files (untracked
    /// ones only when `include_untracked`).
    pub fn open(path: &Path, include_untracked: bool) -> Result<Workspace, WorkspaceError> {
        Workspace::select(path, Selection::Git { include_untracked }, false)
    }

    /// The workspace of `vm workspace prepare` in `mode`: the metadata modes
    /// take the tracked and the untracked-not-ignored files (refusing
    /// submodules, naming `--mode full_copy`); `full_copy` takes every
    /// entry under the repository's top level, `.git` and submodules
    /// included.
    pub fn for_mode(path: &Path, mode: WorkspaceMode) -> Result<Workspace, WorkspaceError> {
        let selection = match mode {
            WorkspaceMode::FullCopy => Selection::Everything,
            _ => Selection::Git {
                include_untracked: true,
            },
        };
        Workspace::select(path, selection, true)
    }

    fn select(
        path: &Path,
        selection: Selection,
        hint_full_copy: bool,
    ) -> Result<Workspace, WorkspaceError> {
        let meta = std::fs::metadata(path).map_err(|source| WorkspaceError::Path {
            path: path.to_owned(),
            source,
        })?;
        let dir = if meta.is_dir() {
            path.to_owned()
        } else {
            path.parent().unwrap_or(Path::new(".")).to_owned()
        };
        let out = git(&dir, &["rev-parse", "--show-toplevel"])?;
        if !out.status.success() {
            return Err(WorkspaceError::NotARepo {
                path: path.to_owned(),
            });
        }
        let root = PathBuf::from(OsStr::from_bytes(out.stdout.trim_ascii_end()));
        let head_out = git(&root, &["rev-parse", "--verify", "-q", "HEAD^{commit}"])?;
        if !head_out.status.success() {
            return Err(WorkspaceError::NoCommit { root });
        }
        let head = trimmed(head_out.stdout);
        let branch_out = git(&root, &["symbolic-ref", "-q", "--short", "HEAD"])?;
        let branch = branch_out
            .status
            .success()
            .then(|| trimmed(branch_out.stdout))
            .filter(|b| !b.is_empty());

        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "repo".to_owned());
        let include_untracked = match selection {
            Selection::Everything => {
                let files = walk(&root)?;
                return Ok(Workspace {
                    root,
                    name,
                    head,
                    branch,
                    files,
                });
            }
            Selection::Git { include_untracked } => include_untracked,
        };
        let staged = git_ok(&root, &["ls-files", "-z", "--stage"])?;
        let mut submodules = Vec::new();
        let mut files = Vec::new();
        for rec in staged.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            // `<mode> <hash> <stage>\t<path>`
            let Some(tab) = rec.iter().position(|b| *b == b'\t') else {
                continue;
            };
            let (info, path) = (&rec[..tab], &rec[tab + 1..]);
            if info.starts_with(b"160000 ") {
                submodules.push(String::from_utf8_lossy(path).into_owned());
                continue;
            }
            files.push(PathBuf::from(OsStr::from_bytes(path)));
        }
        if !submodules.is_empty() && hint_full_copy {
            return Err(WorkspaceError::SubmodulesNeedFullCopy {
                root,
                paths: submodules,
            });
        }
        if !submodules.is_empty() {
            return Err(WorkspaceError::Submodules {
                root,
                paths: submodules,
            });
        }
        if include_untracked {
            let others = git_ok(&root, &["ls-files", "-z", "--others", "--exclude-standard"])?;
            for rec in others.split(|b| *b == 0).filter(|r| !r.is_empty()) {
                // A nested repository is listed as `dir/`: not a file to send.
                if rec.ends_with(b"/") {
                    continue;
                }
                files.push(PathBuf::from(OsStr::from_bytes(rec)));
            }
        }
        // Tracked files deleted in the working tree stay deleted in the guest;
        // unmerged entries are listed once per stage.
        files.retain(|f| std::fs::symlink_metadata(root.join(f)).is_ok());
        files.sort();
        files.dedup();
        Ok(Workspace {
            root,
            name,
            head,
            branch,
            files,
        })
    }

    /// The full hash of `reference` (a commit) in this repository.
    pub fn resolve(&self, reference: &str) -> Result<String, WorkspaceError> {
        let spec = format!("{reference}^{{commit}}");
        let out = git(&self.root, &["rev-parse", "--verify", "-q", &spec])?;
        if !out.status.success() {
            return Err(WorkspaceError::BadRef {
                root: self.root.clone(),
                reference: reference.to_owned(),
            });
        }
        Ok(trimmed(out.stdout))
    }

    /// Total size of the selected files (symlinks count their own size).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| std::fs::symlink_metadata(self.root.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Write the selected files as a tar stream to `out`: regular files with
    /// their mode and mtime, symlinks as symlinks, everything owned by root.
    /// Returns the number of content bytes sent. Nothing is buffered beyond
    /// one file's read buffer.
    pub fn write_tar<W: Write>(&self, out: W) -> Result<u64, WorkspaceError> {
        let mut builder = tar::Builder::new(out);
        let sent = self.append_files(&mut builder)?;
        builder
            .into_inner()
            .and_then(|mut w| w.flush())
            .map_err(WorkspaceError::Write)?;
        Ok(sent)
    }

    /// The body of `vm workspace prepare` in `mode`: the selected files (as
    /// [`Workspace::write_tar`]), then for the metadata modes the pack of
    /// [`Workspace::write_pack_depth`] (shallow for `shallow_metadata`) as
    /// the entry `.git/<pack_entry>`. The pack is built in an unlinked
    /// temporary file first (a tar entry needs its size up front). Returns
    /// the bytes of file content sent.
    pub fn write_prepare_tar<W: Write>(
        &self,
        mode: WorkspaceMode,
        extra: &[&str],
        pack_entry: &str,
        out: W,
    ) -> Result<u64, WorkspaceError> {
        let mut builder = tar::Builder::new(out);
        let sent = self.append_files(&mut builder)?;
        if mode.builds_git() {
            let mut pack = tempfile::tempfile().map_err(|source| WorkspaceError::Path {
                path: std::env::temp_dir(),
                source,
            })?;
            let len = self.write_pack_depth(
                extra,
                mode == WorkspaceMode::ShallowMetadata,
                io::BufWriter::new(&mut pack),
            )?;
            io::Seek::rewind(&mut pack).map_err(WorkspaceError::Write)?;
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(len);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, Path::new(".git").join(pack_entry), pack)
                .map_err(WorkspaceError::Write)?;
        }
        builder
            .into_inner()
            .and_then(|mut w| w.flush())
            .map_err(WorkspaceError::Write)?;
        Ok(sent)
    }

    fn append_files<W: Write>(&self, builder: &mut tar::Builder<W>) -> Result<u64, WorkspaceError> {
        let mut sent = 0u64;
        for rel in &self.files {
            let path = self.root.join(rel);
            let read_err = |source| WorkspaceError::Read {
                path: path.clone(),
                source,
            };
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Deleted since it was listed: like a deletion before the copy.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_err(e)),
            };
            let mut header = tar::Header::new_gnu();
            header.set_mode(meta.mode() & 0o7777);
            header.set_mtime(meta.mtime().max(0) as u64);
            header.set_uid(0);
            header.set_gid(0);
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(read_err)?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(&mut header, rel, &target)
                    .map_err(WorkspaceError::Write)?;
            } else if ft.is_file() {
                let file = std::fs::File::open(&path).map_err(read_err)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(meta.len());
                // A file that changes size while it is read would corrupt
                // the stream: send exactly the size in the header.
                let mut reader = io::Read::take(file, meta.len());
                let mut counted = CountingReader {
                    inner: &mut reader,
                    n: 0,
                };
                builder
                    .append_data(&mut header, rel, &mut counted)
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::BrokenPipe {
                            WorkspaceError::Write(e)
                        } else {
                            read_err(e)
                        }
                    })?;
                sent += counted.n;
            } else if ft.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, rel, io::empty())
                    .map_err(WorkspaceError::Write)?;
            }
            // Anything else (a fifo or socket) is skipped.
        }
        Ok(sent)
    }
}

struct CountingReader<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: io::Read> io::Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Parse `git ls-tree -r -z` output into `(path, object, is_symlink)` for
/// blobs.
fn tree_blobs(listing: &[u8]) -> Vec<(Vec<u8>, String, bool)> {
    listing
        .split(|b| *b == 0)
        .filter_map(|rec| {
            // `<mode> <type> <object>\t<path>`
            let tab = rec.iter().position(|b| *b == b'\t')?;
            let info = std::str::from_utf8(&rec[..tab]).ok()?;
            let mut parts = info.split(' ');
            let (mode, kind, object) = (parts.next()?, parts.next()?, parts.next()?);
            (kind == "blob").then(|| (rec[tab + 1..].to_vec(), object.to_owned(), mode == "120000"))
        })
        .collect()
}

impl Workspace {
    /// The objects the guest copy needs, as one pack written to `out`:
    /// every commit and tree of HEAD's history (and of the `extra`
    /// commits'), but only the blobs nothing else can give: HEAD's version of
    /// each file changed in the working tree (for `git diff`), HEAD's
    /// symlinks (git compares a link with its blob, not its hash), and all
    /// blobs of the `extra` commits (to check them out). The blobs of unchanged
    /// files are the copied files themselves; the guest rebuilds them.
    /// Returns the pack's size.
    pub fn write_pack<W: Write>(&self, extra: &[&str], out: W) -> Result<u64, WorkspaceError> {
        self.write_pack_depth(extra, false, out)
    }

    /// [`Workspace::write_pack`], or with `shallow` only the commits HEAD
    /// and `extra` themselves (no history): their trees, the same blobs,
    /// and all blobs of the `extra` commits. The guest marks them shallow.
    pub fn write_pack_depth<W: Write>(
        &self,
        extra: &[&str],
        shallow: bool,
        mut out: W,
    ) -> Result<u64, WorkspaceError> {
        let head_tree = git_ok(&self.root, &["ls-tree", "-r", "-z", "HEAD"])?;
        let changed = git_ok(
            &self.root,
            &["diff", "--name-only", "--no-renames", "-z", "HEAD", "--"],
        )?;
        let changed: std::collections::HashSet<&[u8]> = changed
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .collect();
        let mut wanted = vec![self.head.clone()];
        wanted.extend(
            tree_blobs(&head_tree)
                .into_iter()
                .filter(|(path, _, link)| *link || changed.contains(path.as_slice()))
                .map(|(_, object, _)| object),
        );
        for commit in extra.iter().filter(|c| **c != self.head) {
            wanted.push((*commit).to_owned());
            let tree = git_ok(&self.root, &["ls-tree", "-r", "-z", commit])?;
            wanted.extend(tree_blobs(&tree).into_iter().map(|(_, object, _)| object));
        }
        let args: &[&str] = if shallow {
            // Without --revs, pack-objects packs exactly the objects named:
            // each commit with its trees (no parents), and the blobs above.
            let mut listed = git_ok(
                &self.root,
                &[
                    "rev-list",
                    "--objects",
                    "--no-object-names",
                    "--filter=blob:none",
                    "--no-walk",
                    &self.head,
                ],
            )?;
            for commit in extra.iter().filter(|c| **c != self.head) {
                listed.extend(git_ok(
                    &self.root,
                    &[
                        "rev-list",
                        "--objects",
                        "--no-object-names",
                        "--no-walk",
                        commit,
                    ],
                )?);
            }
            let mut seen = std::collections::HashSet::new();
            let listed = String::from_utf8_lossy(&listed).into_owned();
            wanted = wanted
                .into_iter()
                .chain(listed.lines().map(str::to_owned))
                .filter(|o| !o.is_empty() && seen.insert(o.clone()))
                .collect();
            &["pack-objects", "--stdout", "-q"]
        } else {
            // Objects named on stdin are packed even though the filter leaves
            // out the blobs reached through trees.
            &[
                "pack-objects",
                "--revs",
                "--stdout",
                "-q",
                "--filter=blob:none",
            ]
        };
        let mut child = Command::new("git")
            .arg("-C")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(WorkspaceError::NoGit)?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let list = wanted.join("\n") + "\n";
        // Written from a thread: pack-objects may start writing before it
        // has read everything.
        let feeder = std::thread::spawn(move || stdin.write_all(list.as_bytes()));
        let mut stdout = child.stdout.take().expect("piped stdout");
        let copied = io::copy(&mut stdout, &mut out);
        drop(stdout);
        let fed = feeder.join().unwrap_or(Ok(()));
        let output = child.wait_with_output().map_err(WorkspaceError::NoGit)?;
        if !output.status.success() || fed.is_err() {
            return Err(WorkspaceError::Git {
                dir: self.root.clone(),
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        let n = copied.map_err(WorkspaceError::Write)?;
        out.flush().map_err(WorkspaceError::Write)?;
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Run `script` in `dir` with a git identity; it must succeed.
    pub(crate) fn sh(dir: &Path, script: &str) {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.org")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.org")
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    }

    fn repo() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        sh(
            dir.path(),
            "git init -q -b main .
             printf 'ignored.log\\nbuild/\\n' > .gitignore
             mkdir -p src build
             echo one > src/a.txt
             echo tool > run.sh && chmod 755 run.sh
             ln -s src/a.txt link
             echo gone > deleted.txt
             git add -A && git commit -qm init
             echo edited > src/a.txt
             rm deleted.txt
             echo new > untracked.txt
             echo secret > ignored.log
             echo out > build/x.o",
        );
        dir
    }

    fn names(ws: &Workspace) -> Vec<String> {
        ws.files
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn tracked_files_only_by_default_never_ignored() {
        let dir = repo();
        let ws = Workspace::open(&dir.path().join("src"), false).unwrap();
        assert_eq!(ws.root, dir.path().canonicalize().unwrap());
        assert_eq!(ws.branch.as_deref(), Some("main"));
        assert_eq!(ws.head.len(), 40);
        assert_eq!(names(&ws), [".gitignore", "link", "run.sh", "src/a.txt"]);
        let ws = Workspace::open(dir.path(), true).unwrap();
        assert_eq!(
            names(&ws),
            [".gitignore", "link", "run.sh", "src/a.txt", "untracked.txt"]
        );
    }

    #[test]
    fn tar_keeps_content_modes_and_symlinks() {
        let dir = repo();
        let ws = Workspace::open(dir.path(), false).unwrap();
        let mut buf = Vec::new();
        let sent = ws.write_tar(&mut buf).unwrap();
        assert_eq!(sent, ws.total_bytes() - "src/a.txt".len() as u64);
        let mut archive = tar::Archive::new(buf.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut e = entry.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let h = e.header().clone();
            assert_eq!(h.uid().unwrap(), 0);
            let mut body = String::new();
            io::Read::read_to_string(&mut e, &mut body).unwrap();
            match path.as_str() {
                "src/a.txt" => assert_eq!(body, "edited\n"),
                "run.sh" => assert_eq!(h.mode().unwrap(), 0o755),
                "link" => {
                    assert_eq!(h.entry_type(), tar::EntryType::Symlink);
                    assert_eq!(
                        e.link_name().unwrap().unwrap().to_string_lossy(),
                        "src/a.txt"
                    );
                }
                _ => {}
            }
            seen.push(path);
        }
        assert_eq!(seen, names(&ws));
    }

    #[test]
    fn outside_a_repo_and_submodules_are_clear_errors() {
        let plain = tempfile::tempdir().unwrap();
        let err = Workspace::open(plain.path(), false).unwrap_err();
        assert!(matches!(err, WorkspaceError::NotARepo { .. }), "{err}");
        assert!(err.to_string().contains("not inside a git repository"));

        let empty = tempfile::tempdir().unwrap();
        sh(empty.path(), "git init -q .");
        let err = Workspace::open(empty.path(), false).unwrap_err();
        assert!(matches!(err, WorkspaceError::NoCommit { .. }), "{err}");

        let dir = repo();
        let sub = repo();
        sh(
            dir.path(),
            &format!(
                "git -c protocol.file.allow=always submodule add -q {} vendor/sub
                 git commit -qm sub",
                sub.path().display()
            ),
        );
        let err = Workspace::open(dir.path(), false).unwrap_err();
        assert!(
            err.to_string().contains("has submodules (vendor/sub)"),
            "{err}"
        );
    }

    #[test]
    fn refs_resolve_to_commits() {
        let dir = repo();
        let ws = Workspace::open(dir.path(), false).unwrap();
        assert_eq!(ws.resolve("HEAD").unwrap(), ws.head);
        assert!(matches!(
            ws.resolve("no-such-branch"),
            Err(WorkspaceError::BadRef { .. })
        ));
    }

    #[test]
    fn pack_has_history_and_only_the_blobs_the_files_cannot_give() {
        let dir = repo();
        let ws = Workspace::open(dir.path(), false).unwrap();
        let count_blobs = |extra: &[&str]| {
            let mut pack = Vec::new();
            ws.write_pack(extra, &mut pack).unwrap();
            assert!(pack.starts_with(b"PACK"));
            let guest = tempfile::tempdir().unwrap();
            sh(guest.path(), "git init -q .");
            let mut child = Command::new("git")
                .args(["index-pack", "--stdin"])
                .current_dir(guest.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&pack).unwrap();
            assert!(child.wait().unwrap().success());
            let out = Command::new("sh")
                .arg("-c")
                .arg("git verify-pack -v .git/objects/pack/*.idx | grep -c ' blob '")
                .current_dir(guest.path())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        // HEAD's src/a.txt (edited), deleted.txt (deleted) and link (a
        // symlink); not run.sh or .gitignore, which the copied files give.
        assert_eq!(count_blobs(&[]), "3");
        assert_eq!(count_blobs(&[&ws.head]), "3");
    }
}
