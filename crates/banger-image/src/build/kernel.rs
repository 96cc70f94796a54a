//! Kernel bundles from Debian packages.
//!
//! 1. `mmdebstrap --variant=extract` downloads the pinned packages (and
//!    their dependencies, only to have a runnable depmod) with its own
//!    private apt state; the host's apt sources are never touched.
//! 2. Every pinned .deb is checked against the recipe's sha256.
//! 3. `depmod` runs in a chroot of that tree, so the modules tree ships
//!    with its `modules.dep` and friends.
//! 4. The ELF `vmlinux` is cut out of `vmlinuz` ([`crate::bzimage`]) and
//!    must carry the PVH note.
//! 5. The initrd: busybox, the recipe's `/init`, and the listed modules
//!    decompressed to plain `.ko` for busybox `insmod`, as a reproducible
//!    newc cpio ([`crate::cpio`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::cmd::{require_tool, run};
use super::{
    cached, finish_bundle, io_err, require_root, source_date_epoch, BuildError, BuildOptions,
    Built, Work,
};
use crate::bundle::BundleMeta;
use crate::cpio::CpioWriter;
use crate::digest;
use crate::manifest::{Kind, INITRD, MODULES, VMLINUX};
use crate::progress::{Phase, Progress, ProgressFn};
use crate::recipe::{KernelRecipe, PackageRole};

const DEB_ARCH: &str = "amd64";

fn mirror(recipe: &KernelRecipe, opts: &BuildOptions) -> String {
    opts.mirror
        .clone()
        .unwrap_or_else(|| recipe.debian.mirror.clone())
}

pub(super) fn hash(recipe: &KernelRecipe, opts: &BuildOptions) -> Result<String, BuildError> {
    let sde = source_date_epoch(opts, recipe.source_date_epoch).to_string();
    let mirror = mirror(recipe, opts);
    Ok(opts.recipes.hash(
        &recipe.inputs,
        &[
            ("source_date_epoch", sde.as_bytes()),
            ("mirror", mirror.as_bytes()),
        ],
    ))
}

pub(super) fn build(
    name: &str,
    opts: &BuildOptions,
    progress: ProgressFn<'_>,
) -> Result<Built, BuildError> {
    let recipe = opts.recipes.kernel(name)?;
    let recipe_hash = hash(&recipe, opts)?;
    if let Some(hit) = cached(opts, Kind::Kernel, name, &recipe_hash, progress) {
        return Ok(hit);
    }
    require_root(Kind::Kernel, name)?;
    let mmdebstrap = require_tool("mmdebstrap", "mmdebstrap", "download the kernel packages")?;
    let chroot = require_tool("chroot", "coreutils", "run depmod in the package tree")?;
    let sde = source_date_epoch(opts, recipe.source_date_epoch);
    let mirror = mirror(&recipe, opts);
    let work = Work::new(opts, Kind::Kernel, name)?;
    let tree = work.path().join("tree");

    progress(Progress::note(
        Phase::Build,
        format!(
            "downloading {} packages from {mirror}",
            recipe.packages.len()
        ),
    ));
    let include: Vec<String> = recipe
        .packages
        .iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect();
    let mut cmd = Command::new(mmdebstrap);
    cmd.arg("--variant=extract")
        .arg(format!("--include={}", include.join(",")))
        .arg("--skip=cleanup/apt/cache")
        .arg(format!("--architectures={DEB_ARCH}"))
        .arg(&recipe.debian.suite)
        .arg(&tree)
        .args(
            recipe
                .debian
                .sources
                .iter()
                .map(|s| s.replace("{mirror}", &mirror)),
        )
        .env("SOURCE_DATE_EPOCH", sde.to_string());
    run(&mut cmd, "mmdebstrap", progress)?;

    verify_pins(&recipe, &tree, &mirror)?;
    let release = kernel_release(&tree)?;
    let modules_src = modules_root(&tree).join(&release);

    progress(Progress::note(Phase::Build, format!("depmod {release}")));
    let depmod = ["sbin/depmod", "usr/sbin/depmod"]
        .into_iter()
        .find(|p| tree.join(p).symlink_metadata().is_ok())
        .ok_or_else(|| {
            BuildError::KernelTree("no depmod in the package tree (is kmod pinned?)".into())
        })?;
    run(
        Command::new(chroot)
            .arg(&tree)
            .arg(format!("/{depmod}"))
            .arg("-a")
            .arg(&release)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C"),
        "depmod",
        progress,
    )?;

    let out = work.path().join("bundle");
    std::fs::create_dir(&out).map_err(io_err("create", &out))?;

    progress(Progress::note(
        Phase::Build,
        "extracting vmlinux from vmlinuz",
    ));
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
    let bz = std::fs::read(&vmlinuz).map_err(io_err("read", &vmlinuz))?;
    let elf = crate::bzimage::extract_vmlinux(&bz).map_err(|source| BuildError::BzImage {
        path: vmlinuz.clone(),
        source,
    })?;
    let vmlinux = out.join(VMLINUX);
    std::fs::write(&vmlinux, &elf).map_err(io_err("write", &vmlinux))?;
    crate::validate::vmlinux(&vmlinux)?;

    progress(Progress::note(Phase::Build, "copying the modules tree"));
    let modules_dst = out.join(MODULES).join(&release);
    std::fs::create_dir_all(&modules_dst).map_err(io_err("create", &modules_dst))?;
    crate::store::copy_tree(&modules_src, &modules_dst)?;

    progress(Progress::note(Phase::Build, "building the initrd"));
    let initrd = build_initrd(&recipe, opts, &tree, &modules_src, &release, sde)?;
    let initrd_path = out.join(INITRD);
    std::fs::write(&initrd_path, initrd).map_err(io_err("write", &initrd_path))?;

    let meta = BundleMeta {
        kind: Kind::Kernel,
        name: recipe.name.clone(),
        version: recipe.version.clone(),
        created: sde,
        recipe_hash: Some(recipe_hash.clone()),
        kernel_ref: None,
        kernel_release: Some(release),
    };
    let packed = finish_bundle(&out, &meta, opts, progress)?;
    Ok(Built {
        packed,
        recipe_hash,
        cached: false,
    })
}

fn verify_pins(recipe: &KernelRecipe, tree: &Path, mirror: &str) -> Result<(), BuildError> {
    let archives = tree.join("var/cache/apt/archives");
    for p in &recipe.packages {
        let deb = archives.join(p.deb_file_name(DEB_ARCH));
        if !deb.is_file() {
            return Err(BuildError::PinMissing {
                package: p.name.clone(),
                version: p.version.clone(),
                mirror: mirror.to_owned(),
            });
        }
        let (_, got) =
            digest::sha256_file(&deb).map_err(|e| BuildError::KernelTree(e.to_string()))?;
        if got != p.sha256 {
            return Err(BuildError::PinMismatch {
                package: p.name.clone(),
                version: p.version.clone(),
                expected: p.sha256.clone(),
                got,
            });
        }
    }
    Ok(())
}

/// `lib/modules` of the tree (bookworm's extract tree is not usr-merged;
/// newer ones are).
fn modules_root(tree: &Path) -> PathBuf {
    let lib = tree.join("lib/modules");
    if lib.is_dir() {
        lib
    } else {
        tree.join("usr/lib/modules")
    }
}

fn kernel_release(tree: &Path) -> Result<String, BuildError> {
    let root = modules_root(tree);
    let mut releases = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(io_err("list", &root))? {
        let entry = entry.map_err(io_err("list", &root))?;
        if let Some(n) = entry.file_name().to_str() {
            if tree.join("boot").join(format!("vmlinuz-{n}")).is_file() {
                releases.push(n.to_owned());
            }
        }
    }
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(BuildError::KernelTree(format!(
            "expected exactly one kernel with modules and vmlinuz, found {other:?}"
        ))),
    }
}

/// Find `<module>.ko[.xz|.zst]` under `modules` (either `_` or `-` in the file name).
fn find_module(modules: &Path, module: &str) -> Option<PathBuf> {
    let dashed = module.replace('_', "-");
    let names: Vec<String> = [module, dashed.as_str()]
        .iter()
        .flat_map(|m| {
            [
                format!("{m}.ko"),
                format!("{m}.ko.xz"),
                format!("{m}.ko.zst"),
            ]
        })
        .collect();
    let mut stack = vec![modules.join("kernel")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e
                .file_name()
                .to_str()
                .is_some_and(|n| names.iter().any(|x| x == n))
            {
                return Some(p);
            }
        }
    }
    None
}

fn decompress_module(path: &Path) -> Result<Vec<u8>, BuildError> {
    let data = std::fs::read(path).map_err(io_err("read", path))?;
    let module_err = |reason: String| BuildError::Module {
        path: path.to_owned(),
        reason,
    };
    let name = path.to_string_lossy();
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &data[..], &mut out)
            .map_err(|e| module_err(format!("{e:?}")))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        zstd::decode_all(&data[..]).map_err(|e| module_err(e.to_string()))
    } else {
        Ok(data)
    }
}

fn build_initrd(
    recipe: &KernelRecipe,
    opts: &BuildOptions,
    tree: &Path,
    modules: &Path,
    release: &str,
    sde: i64,
) -> Result<Vec<u8>, BuildError> {
    let cpio_err = |e: std::io::Error| BuildError::KernelTree(format!("writing the initrd: {e}"));
    let busybox_pkg = &recipe.package(PackageRole::Busybox).name;
    let busybox_path = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|p| tree.join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            BuildError::KernelTree(format!("{busybox_pkg} did not provide bin/busybox"))
        })?;
    let busybox = std::fs::read(&busybox_path).map_err(io_err("read", &busybox_path))?;
    let init = opts
        .recipes
        .file(&recipe.initrd.init)
        .expect("recipe checked its files");
    let mtime = u32::try_from(sde.max(0)).unwrap_or(u32::MAX);
    let mut w = CpioWriter::new(Vec::new(), mtime);
    for d in [
        "bin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "newroot",
        "proc",
        "sys",
    ] {
        w.dir(d, 0o755).map_err(cpio_err)?;
    }
    w.char_device("dev/console", 0o600, 5, 1)
        .map_err(cpio_err)?;
    w.char_device("dev/null", 0o666, 1, 3).map_err(cpio_err)?;
    w.file("bin/busybox", 0o755, &busybox).map_err(cpio_err)?;
    for applet in &recipe.initrd.applets {
        w.symlink(&format!("bin/{applet}"), "busybox")
            .map_err(cpio_err)?;
    }
    let list: String = recipe
        .initrd
        .modules
        .iter()
        .map(|m| format!("{m}\n"))
        .collect();
    w.file("etc/banger-initrd-modules", 0o644, list.as_bytes())
        .map_err(cpio_err)?;
    for m in &recipe.initrd.modules {
        let path = find_module(modules, m).ok_or_else(|| BuildError::MissingModule {
            module: m.clone(),
            release: release.to_owned(),
        })?;
        let ko = decompress_module(&path)?;
        w.file(&format!("lib/modules/{m}.ko"), 0o644, &ko)
            .map_err(cpio_err)?;
    }
    w.file("init", 0o755, init).map_err(cpio_err)?;
    w.finish().map_err(cpio_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_found_with_either_separator_and_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/drivers/net");
        std::fs::create_dir_all(&k).unwrap();
        let plain = b"\x7fELF module".to_vec();
        std::fs::write(
            k.join("net_failover.ko.zst"),
            zstd::encode_all(&plain[..], 3).unwrap(),
        )
        .unwrap();
        std::fs::write(k.join("virtio-x.ko"), &plain).unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &plain[..], &mut xz).unwrap();
        std::fs::write(k.join("failover.ko.xz"), &xz).unwrap();
        for m in ["net_failover", "virtio_x", "failover"] {
            let p = find_module(dir.path(), m).unwrap_or_else(|| panic!("{m} not found"));
            assert_eq!(decompress_module(&p).unwrap(), plain, "{m}");
        }
        assert!(find_module(dir.path(), "virtio_blk").is_none());
    }
}
