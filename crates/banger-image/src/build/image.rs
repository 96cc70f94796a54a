//! Image bundles: Debian via mmdebstrap into a reproducible tarball, then
//! `mkfs.ext4 -d TARBALL` with a fixed UUID, hash seed and time.
//!
//! Reproducibility rests on: `SOURCE_DATE_EPOCH` (mmdebstrap clamps every
//! mtime to it and removes its logs; mke2fs 1.47.2 uses it for inode
//! times), `E2FSPROGS_FAKE_TIME` (superblock times), `-U`/`-E hash_seed`,
//! a pinned mke2fs.conf, and files written by the customize hook that do
//! not depend on the host (hostname, hosts, resolv.conf, machine-id). The
//! Debian archive itself moves daily, so "same recipe, same day" gives the
//! same bytes; a snapshot mirror pins it for longer.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cmd::{debugfs, require_mkfs, require_tool, run};
use super::{
    cached, finish_bundle, io_err, require_root, source_date_epoch, BuildError, BuildOptions,
    Built, Work,
};
use crate::bundle::BundleMeta;
use crate::digest;
use crate::manifest::{Kind, ROOTFS};
use crate::progress::{Phase, Progress, ProgressFn};
use crate::recipe::{mode_of, ImageRecipe, NpmSpec, MKE2FS_CONF};

/// Where an agent binary given to the build goes in the image.
pub const AGENT_PATH: &str = "/usr/local/bin/banger-vsock-agent";

struct Mirrors {
    mirror: String,
    security: String,
}

fn mirrors(recipe: &ImageRecipe, opts: &BuildOptions) -> Mirrors {
    Mirrors {
        mirror: opts
            .mirror
            .clone()
            .unwrap_or_else(|| recipe.debian.mirror.clone()),
        security: opts
            .security_mirror
            .clone()
            .or_else(|| recipe.debian.security_mirror.clone())
            .unwrap_or_default(),
    }
}

fn agent_sha(opts: &BuildOptions) -> Result<String, BuildError> {
    match &opts.agent_binary {
        None => Ok(String::new()),
        Some(p) => {
            if !p.is_absolute() {
                return Err(BuildError::Io {
                    op: "use agent binary",
                    path: p.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "path must be absolute",
                    ),
                });
            }
            digest::sha256_file(p)
                .map(|(_, s)| s)
                .map_err(|e| BuildError::Io {
                    op: "read agent binary",
                    path: p.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
        }
    }
}

pub(super) fn hash(recipe: &ImageRecipe, opts: &BuildOptions) -> Result<String, BuildError> {
    let sde = source_date_epoch(opts, recipe.source_date_epoch).to_string();
    let m = mirrors(recipe, opts);
    let agent = agent_sha(opts)?;
    Ok(opts.recipes.hash(
        &recipe.inputs,
        &[
            ("source_date_epoch", sde.as_bytes()),
            ("mirror", m.mirror.as_bytes()),
            ("security_mirror", m.security.as_bytes()),
            ("agent_sha256", agent.as_bytes()),
        ],
    ))
}

pub(super) fn build(
    name: &str,
    opts: &BuildOptions,
    progress: ProgressFn<'_>,
) -> Result<Built, BuildError> {
    let recipe = opts.recipes.image(name)?;
    let recipe_hash = hash(&recipe, opts)?;
    if let Some(hit) = cached(opts, Kind::Image, name, &recipe_hash, progress) {
        return Ok(hit);
    }
    require_root(Kind::Image, name)?;
    let mmdebstrap = require_tool(
        "mmdebstrap",
        "mmdebstrap",
        "bootstrap the Debian root filesystem",
    )?;
    let mkfs = require_mkfs()?;
    require_tool("debugfs", "e2fsprogs", "check the built image")?;
    let npm = if recipe.npm.is_empty() {
        None
    } else {
        Some(require_tool(
            "npm",
            "npm",
            "fetch binaries the recipe takes from the npm registry",
        )?)
    };
    let sde = source_date_epoch(opts, recipe.source_date_epoch);
    let m = mirrors(&recipe, opts);
    let work = Work::new(opts, Kind::Image, name)?;
    let files_dir = work.path().join("files");
    std::fs::create_dir(&files_dir).map_err(io_err("create", &files_dir))?;

    // Everything the hook copies in, staged under files/ with plain names.
    let mut installs: Vec<(PathBuf, String, u32)> = Vec::new();
    for (i, f) in recipe.files.iter().enumerate() {
        let staged = files_dir.join(format!("file{i}"));
        let bytes = opts.recipes.file(&f.src).expect("recipe checked its files");
        std::fs::write(&staged, bytes).map_err(io_err("write", &staged))?;
        installs.push((staged, f.dest.clone(), mode_of(&f.mode)));
    }
    if let Some(npm) = &npm {
        for (i, spec) in recipe.npm.iter().enumerate() {
            let staged = files_dir.join(format!("npm{i}"));
            fetch_npm(npm, spec, work.path(), &staged, progress)?;
            installs.push((staged, spec.dest.clone(), mode_of(&spec.mode)));
        }
    }
    if let Some(agent) = &opts.agent_binary {
        let staged = files_dir.join("agent");
        std::fs::copy(agent, &staged).map_err(io_err("copy agent binary", agent))?;
        installs.push((staged, AGENT_PATH.to_owned(), 0o755));
        progress(Progress::note(
            Phase::Build,
            format!("installing guest agent {}", agent.display()),
        ));
    }
    let hook = work.path().join("customize.sh");
    std::fs::write(&hook, customize_script(&recipe, &installs)).map_err(io_err("write", &hook))?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", &hook))?;

    let tarball = work.path().join("rootfs.tar");
    let sources: Vec<String> = recipe
        .debian
        .sources
        .iter()
        .map(|s| {
            s.replace("{mirror}", &m.mirror)
                .replace("{security_mirror}", &m.security)
        })
        .collect();
    progress(Progress::note(
        Phase::Build,
        format!(
            "bootstrapping Debian {} from {}",
            recipe.debian.suite, m.mirror
        ),
    ));
    let mut cmd = Command::new(mmdebstrap);
    cmd.arg(format!("--variant={}", recipe.debian.variant))
        .arg("--architectures=amd64")
        .arg(format!("--include={}", recipe.debian.packages.join(",")))
        .arg(format!("--customize-hook={}", hook.display()))
        .arg(&recipe.debian.suite)
        .arg(&tarball)
        .args(&sources)
        .env("SOURCE_DATE_EPOCH", sde.to_string());
    run(&mut cmd, "mmdebstrap", progress)?;

    let out = work.path().join("bundle");
    std::fs::create_dir(&out).map_err(io_err("create", &out))?;
    let rootfs = out.join(ROOTFS);
    let conf = work.path().join("mke2fs.conf");
    std::fs::write(
        &conf,
        opts.recipes.file(MKE2FS_CONF).expect("recipe checked"),
    )
    .map_err(io_err("write", &conf))?;
    progress(Progress::note(
        Phase::Build,
        format!("mkfs.ext4 {} bytes", recipe.size),
    ));
    run(
        Command::new(mkfs)
            .args(["-q", "-F", "-t", "ext4", "-L", "rootfs", "-m", "1"])
            .args([
                "-U",
                &recipe.fs_uuid,
                "-E",
                &format!("hash_seed={}", recipe.fs_uuid),
            ])
            .arg("-d")
            .arg(&tarball)
            .arg(&rootfs)
            .arg(format!("{}k", recipe.size / 1024))
            .env("MKE2FS_CONFIG", &conf)
            .env("E2FSPROGS_FAKE_TIME", sde.to_string())
            .env("SOURCE_DATE_EPOCH", sde.to_string()),
        "mkfs.ext4",
        progress,
    )?;
    // The tarball is as big as the tree: free it before packing.
    std::fs::remove_file(&tarball).map_err(io_err("remove", &tarball))?;

    crate::validate::rootfs(&rootfs)?;
    inspect(&rootfs, &recipe, opts)?;

    let meta = BundleMeta {
        kind: Kind::Image,
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        created: sde,
        recipe_hash: Some(recipe_hash.clone()),
        kernel_ref: Some(recipe.kernel_ref.clone()),
        kernel_release: None,
    };
    let packed = finish_bundle(&out, &meta, opts, progress)?;
    Ok(Built {
        packed,
        recipe_hash,
        cached: false,
    })
}

/// Single-quote for sh (inputs are already restricted to safe characters;
/// this is a second fence).
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The mmdebstrap customize hook: runs on the host with the tree as $1.
fn customize_script(recipe: &ImageRecipe, installs: &[(PathBuf, String, u32)]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# Generated by banger-image for one build.\nset -eu\nroot=\"$1\"\n",
    );
    for (src, dest, mode) in installs {
        s.push_str(&format!(
            "install -D -o 0 -g 0 -m {mode:04o} {} \"$root\"{}\n",
            q(&src.display().to_string()),
            q(dest)
        ));
    }
    s.push_str(concat!(
        "# Every VM makes its own host key; none ships in the image.\n",
        "rm -f \"$root\"/etc/ssh/ssh_host_*\n",
        "# Empty: systemd treats each VM's first boot as first boot (unique ids).\n",
        ": > \"$root/etc/machine-id\"\n",
        "rm -f \"$root/var/lib/dbus/machine-id\"\n",
        "# Mount point of an optional modules disk (initrd banger.modules=).\n",
        "mkdir -p \"$root/usr/lib/modules\"\n",
        "# Backup files whose content depends on package install order.\n",
        "rm -f \"$root\"/var/cache/debconf/*-old \"$root\"/var/lib/dpkg/*-old\n",
    ));
    if !recipe.enable.is_empty() {
        let units: Vec<String> = recipe.enable.iter().map(|u| q(u)).collect();
        s.push_str(&format!(
            "chroot \"$root\" systemctl enable {}\n",
            units.join(" ")
        ));
    }
    if !recipe.disable.is_empty() {
        let units: Vec<String> = recipe.disable.iter().map(|u| q(u)).collect();
        s.push_str(&format!(
            "chroot \"$root\" systemctl disable {}\n",
            units.join(" ")
        ));
    }
    if !recipe.mask.is_empty() {
        let units: Vec<String> = recipe.mask.iter().map(|u| q(u)).collect();
        s.push_str(&format!(
            "chroot \"$root\" systemctl mask {}\n",
            units.join(" ")
        ));
    }
    if let Some(target) = &recipe.default_target {
        s.push_str(&format!(
            "chroot \"$root\" systemctl set-default {}\n",
            q(target)
        ));
    }
    s
}

/// `npm pack PACKAGE@VERSION`, check the tarball's sha256, extract `member`.
fn fetch_npm(
    npm: &Path,
    spec: &NpmSpec,
    work: &Path,
    dest: &Path,
    progress: ProgressFn<'_>,
) -> Result<(), BuildError> {
    let npm_err = |reason: String| BuildError::Npm {
        package: format!("{}@{}", spec.package, spec.version),
        reason,
    };
    let dir = work.join("npm");
    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    progress(Progress::note(
        Phase::Build,
        format!("npm pack {}@{}", spec.package, spec.version),
    ));
    let out = run(
        Command::new(npm)
            .args(["pack", "--silent", "--pack-destination"])
            .arg(&dir)
            .arg(format!("{}@{}", spec.package, spec.version))
            .current_dir(&dir),
        "npm pack",
        progress,
    )?;
    let file = out
        .lines()
        .rev()
        .find(|l| l.trim().ends_with(".tgz"))
        .map(|l| dir.join(l.trim()));
    let tgz = file
        .filter(|p| p.is_file())
        .ok_or_else(|| npm_err(format!("npm pack printed no tarball name: {out:?}")))?;
    let (_, got) = digest::sha256_file(&tgz).map_err(|e| npm_err(e.to_string()))?;
    if got != spec.sha256 {
        return Err(npm_err(format!(
            "tarball sha256 is {got}, the recipe pins {}",
            spec.sha256
        )));
    }
    let f = std::fs::File::open(&tgz).map_err(io_err("open", &tgz))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for entry in archive.entries().map_err(|e| npm_err(e.to_string()))? {
        let mut entry = entry.map_err(|e| npm_err(e.to_string()))?;
        if entry.path_bytes().as_ref() == spec.member.as_bytes()
            && entry.header().entry_type().is_file()
        {
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| npm_err(e.to_string()))?;
            std::fs::write(dest, data).map_err(io_err("write", dest))?;
            return Ok(());
        }
    }
    Err(npm_err(format!("the tarball has no file {}", spec.member)))
}

/// Refuse an image that would be unsafe or different from the recipe: SSH
/// host keys present, sshd_config not the recipe's, machine-id not empty.
fn inspect(rootfs: &Path, recipe: &ImageRecipe, opts: &BuildOptions) -> Result<(), BuildError> {
    let fail = |reason: String| BuildError::Inspect {
        path: rootfs.to_owned(),
        reason,
    };
    let listing = debugfs(rootfs, "ls /etc/ssh")?;
    if listing.contains("ssh_host_") {
        return Err(fail(format!("/etc/ssh holds host keys: {listing}")));
    }
    for f in &recipe.files {
        let want = opts.recipes.file(&f.src).expect("recipe checked");
        let got = debugfs(rootfs, &format!("cat {}", f.dest))?;
        if got.as_bytes() != want {
            return Err(fail(format!("{} differs from {}", f.dest, f.src)));
        }
    }
    let machine_id = debugfs(rootfs, "cat /etc/machine-id")?;
    if !machine_id.is_empty() {
        return Err(fail(format!(
            "/etc/machine-id is not empty: {machine_id:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customize_script_installs_files_and_strips_host_keys() {
        let set = crate::recipe::RecipeSet::embedded();
        let recipe = set.image("debian-bookworm").unwrap();
        let installs = vec![(
            PathBuf::from("/w/files/file0"),
            "/etc/ssh/sshd_config".to_owned(),
            0o644,
        )];
        let s = customize_script(&recipe, &installs);
        assert!(
            s.contains(
                "install -D -o 0 -g 0 -m 0644 '/w/files/file0' \"$root\"'/etc/ssh/sshd_config'"
            ),
            "{s}"
        );
        assert!(s.contains("rm -f \"$root\"/etc/ssh/ssh_host_*"));
        assert!(s.contains("systemctl enable 'systemd-networkd.service'"));
        assert!(s.contains("systemctl disable 'docker.service' 'containerd.service'"));
        assert!(s.contains("systemctl mask 'getty@.service' "), "{s}");
        assert!(s.contains(" 'apparmor.service'\n"), "{s}");
        assert!(s.contains("chroot \"$root\" systemctl set-default 'multi-user.target'\n"));
        let out = Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .status()
            .unwrap();
        assert!(out.success(), "script parses");
    }
}
