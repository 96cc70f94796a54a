//! `banger ssh-config [--install | --uninstall]`: the one place banger
//! touches `~/.ssh/config`, to add or remove a marker-fenced
//! `Include` of the ssh_config bangerd keeps for VM names.
//!
//! The block goes at the very top of the file: an `Include` inside a
//! `Host`/`Match` block only applies to the hosts that block matches, and
//! OpenSSH keeps the first value it sees for an option, so the top is where
//! it always applies. Everything else in the file is kept byte for byte,
//! with its permissions; the file is replaced atomically.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use banger_deploy::fsutil::{write_atomic, Perms};
use banger_host::paths::Layout;
use clap::Args;

use crate::cli::GlobalArgs;

/// First line of banger's block in `~/.ssh/config`.
pub const BEGIN_MARKER: &str = "# >>> banger ssh-config >>>";
/// Last line of banger's block in `~/.ssh/config`.
pub const END_MARKER: &str = "# <<< banger ssh-config <<<";

/// `banger ssh-config`
#[derive(Debug, Args)]
#[command(
    after_help = "Without flags, prints the line to add to ~/.ssh/config yourself.\n\
    Then `ssh NAME.vm` (or `ssh NAME`) logs into VM NAME as root with banger's key,\n\
    checking the host key banger pinned."
)]
pub struct SshConfigArgs {
    /// Add an `Include` of banger's ssh_config to the top of ~/.ssh/config
    /// (created 0600 when missing); running it again changes nothing.
    #[arg(long, conflicts_with = "uninstall")]
    pub install: bool,
    /// Remove exactly the block `--install` added.
    #[arg(long)]
    pub uninstall: bool,
}

/// Why `~/.ssh/config` was not changed.
#[derive(Debug, thiserror::Error)]
pub enum SshConfigCmdError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{link} is a symlink to {target}, outside {home}; refusing to edit it \
         (add the line yourself: {line})"
    )]
    SymlinkOutsideHome {
        link: PathBuf,
        target: PathBuf,
        home: PathBuf,
        line: String,
    },
    #[error("{path} has a `{BEGIN_MARKER}` line without its `{END_MARKER}`; fix it by hand")]
    Unterminated { path: PathBuf },
    #[error(transparent)]
    Write(#[from] banger_deploy::fsutil::FsError),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SshConfigCmdError {
    let path = path.to_owned();
    move |source| SshConfigCmdError::Io { op, path, source }
}

/// The `Include` line for `target`, as `~/...` when it is inside `home`.
pub fn include_line(target: &Path, home: &Path) -> String {
    let shown = match target.strip_prefix(home) {
        Ok(rest) => format!("~/{}", rest.display()),
        Err(_) => target.display().to_string(),
    };
    if shown.contains(char::is_whitespace) {
        format!("Include \"{shown}\"")
    } else {
        format!("Include {shown}")
    }
}

/// The fenced block for `line`.
pub fn block(line: &str) -> String {
    format!("{BEGIN_MARKER}\n{line}\n{END_MARKER}\n")
}

/// Where banger's block is in `text`: the byte range of its lines,
/// newline included.
fn find_block(
    text: &str,
    path: &Path,
) -> Result<Option<std::ops::Range<usize>>, SshConfigCmdError> {
    let mut offset = 0;
    let mut start = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if start.is_none() && bare == BEGIN_MARKER {
            start = Some(offset);
        } else if let (Some(s), true) = (start, bare == END_MARKER) {
            return Ok(Some(s..offset + line.len()));
        }
        offset += line.len();
    }
    match start {
        Some(_) => Err(SshConfigCmdError::Unterminated {
            path: path.to_owned(),
        }),
        None => Ok(None),
    }
}

/// `text` with banger's block for `line` at the top (an older block with
/// another line is replaced where it is); `None` when nothing changes.
pub fn with_block(
    text: &str,
    line: &str,
    path: &Path,
) -> Result<Option<String>, SshConfigCmdError> {
    let wanted = block(line);
    match find_block(text, path)? {
        Some(r) if text[r.clone()] == wanted => Ok(None),
        Some(r) => Ok(Some(format!(
            "{}{wanted}{}",
            &text[..r.start],
            &text[r.end..]
        ))),
        None => Ok(Some(format!("{wanted}{text}"))),
    }
}

/// `text` without banger's block; `None` when it has none.
pub fn without_block(text: &str, path: &Path) -> Result<Option<String>, SshConfigCmdError> {
    Ok(find_block(text, path)?.map(|r| format!("{}{}", &text[..r.start], &text[r.end..])))
}

/// The file to edit for `~/.ssh/config`: itself, or the target of a symlink
/// that stays inside `home` (anything else is refused).
fn resolve(config: &Path, home: &Path, line: &str) -> Result<PathBuf, SshConfigCmdError> {
    match std::fs::symlink_metadata(config) {
        Ok(m) if m.file_type().is_symlink() => {
            let target =
                std::fs::canonicalize(config).map_err(io("resolve the symlink", config))?;
            let real_home = std::fs::canonicalize(home).map_err(io("resolve", home))?;
            if target.starts_with(&real_home) {
                Ok(target)
            } else {
                Err(SshConfigCmdError::SymlinkOutsideHome {
                    link: config.to_owned(),
                    target,
                    home: real_home,
                    line: line.to_owned(),
                })
            }
        }
        _ => Ok(config.to_owned()),
    }
}

/// Replace `path` with `text` atomically, keeping `meta`'s owner and mode
/// (a new file: ours, 0600).
fn replace(
    path: &Path,
    text: &str,
    meta: Option<&std::fs::Metadata>,
) -> Result<(), SshConfigCmdError> {
    use std::os::unix::fs::MetadataExt;
    let perms = match meta {
        Some(m) => Perms {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
        },
        None => Perms {
            mode: 0o600,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        },
    };
    write_atomic(path, text.as_bytes(), perms)?;
    Ok(())
}

/// What [`install`] or [`uninstall`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    Unchanged,
}

/// Add the block including `target` to `<home>/.ssh/config`.
pub fn install(home: &Path, target: &Path) -> Result<(PathBuf, Outcome), SshConfigCmdError> {
    let line = include_line(target, home);
    let ssh_dir = home.join(".ssh");
    let config = ssh_dir.join("config");
    let file = resolve(&config, home, &line)?;
    let (text, meta) = match std::fs::read(&file) {
        Ok(bytes) => {
            let meta = std::fs::metadata(&file).map_err(io("stat", &file))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                io("read", &file)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })?;
            (text, Some(meta))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&ssh_dir)
                .map_err(io("create", &ssh_dir))?;
            (String::new(), None)
        }
        Err(e) => return Err(io("read", &file)(e)),
    };
    match with_block(&text, &line, &file)? {
        None => Ok((file, Outcome::Unchanged)),
        Some(new) => {
            replace(&file, &new, meta.as_ref())?;
            Ok((file, Outcome::Changed))
        }
    }
}

/// Remove the block from `<home>/.ssh/config`.
pub fn uninstall(home: &Path, target: &Path) -> Result<(PathBuf, Outcome), SshConfigCmdError> {
    let line = include_line(target, home);
    let config = home.join(".ssh/config");
    let file = resolve(&config, home, &line)?;
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((file, Outcome::Unchanged))
        }
        Err(e) => return Err(io("read", &file)(e)),
    };
    match without_block(&text, &file)? {
        None => Ok((file, Outcome::Unchanged)),
        Some(new) => {
            let meta = std::fs::metadata(&file).map_err(io("stat", &file))?;
            replace(&file, &new, Some(&meta))?;
            Ok((file, Outcome::Changed))
        }
    }
}

/// Run `banger ssh-config`.
pub fn run(_global: &GlobalArgs, args: SshConfigArgs) -> anyhow::Result<ExitCode> {
    let layout = Layout::detect()?;
    let target = layout.ssh_config();
    let home = &layout.home;
    if args.install {
        let (file, outcome) = install(home, &target)?;
        match outcome {
            Outcome::Changed => println!(
                "added `{}` to {}",
                include_line(&target, home),
                file.display()
            ),
            Outcome::Unchanged => {
                println!("{} already includes banger's ssh_config", file.display())
            }
        }
    } else if args.uninstall {
        let (file, outcome) = uninstall(home, &target)?;
        match outcome {
            Outcome::Changed => println!("removed banger's block from {}", file.display()),
            Outcome::Unchanged => println!("{} has no banger block", file.display()),
        }
    } else {
        println!("{}", include_line(&target, home));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "Include ~/.config/banger/ssh_config";

    #[test]
    fn block_goes_first_once_and_comes_out_exactly() {
        let p = Path::new("/x");
        let orig = "# mine\nHost a\n  User b\n";
        let added = with_block(orig, LINE, p).unwrap().unwrap();
        assert_eq!(added, format!("{}{orig}", block(LINE)));
        assert_eq!(with_block(&added, LINE, p).unwrap(), None);
        assert_eq!(without_block(&added, p).unwrap().as_deref(), Some(orig));
        assert_eq!(without_block(orig, p).unwrap(), None);
    }

    #[test]
    fn a_stale_block_is_replaced_in_place() {
        let p = Path::new("/x");
        let old = format!("Host a\n{}tail", block("Include /old"));
        let new = with_block(&old, LINE, p).unwrap().unwrap();
        assert_eq!(new, format!("Host a\n{}tail", block(LINE)));
    }

    #[test]
    fn an_unterminated_block_is_refused() {
        let text = format!("{BEGIN_MARKER}\nInclude x\n");
        assert!(matches!(
            with_block(&text, LINE, Path::new("/x")),
            Err(SshConfigCmdError::Unterminated { .. })
        ));
    }

    #[test]
    fn include_line_is_home_relative_when_it_can_be() {
        let home = Path::new("/home/u");
        assert_eq!(
            include_line(Path::new("/home/u/.config/banger/ssh_config"), home),
            LINE
        );
        assert_eq!(
            include_line(Path::new("/srv/x y/ssh_config"), home),
            "Include \"/srv/x y/ssh_config\""
        );
    }
}
