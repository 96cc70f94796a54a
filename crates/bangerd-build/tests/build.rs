//! `build_bundle` through a real helper socket, which starts this crate's
//! `bangerd-build` as its child: a real kernel build (root,
//! network to the Debian mirror, minutes), installed into a store owned by
//! an unprivileged owner. Enabled with BANGER_BUILD_TESTS=1 (CI sets it);
//! needs root, skips otherwise unless BANGER_REQUIRE_PRIVILEGED=1.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use banger_image::build::{build, BuildOptions, Built};
use banger_image::{Kind, Progress};
use banger_wire::helper::{BundleKind, HelperReply, HelperResponse};
use bangerd_build::{build_here, root_private_dir};
use bangerd_root::ops::build::{BuildPaths, BuildRunner};
use bangerd_root::{ServeConfig, Server};

const BUILDER: &str = env!("CARGO_BIN_EXE_bangerd-build");
/// The owner: `nobody`, so a wrong owner cannot pass by being root.
const OWNER: u32 = 65534;
const KERNEL: &str = "generic-6.12";

fn enabled(test: &str) -> bool {
    if std::env::var("BANGER_BUILD_TESTS").as_deref() != Ok("1") {
        eprintln!("skipping {test}: set BANGER_BUILD_TESTS=1 to run image/kernel build tests (root, network, minutes)");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("BANGER_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "{test}: BANGER_REQUIRE_PRIVILEGED=1 but not running as root"
        );
        eprintln!("skipping {test}: building needs root");
        return false;
    }
    true
}

/// One request sent as the owner (the client the helper serves): a thread
/// that takes on the owner's uid and gids with the raw system calls (which,
/// unlike glibc's wrappers, change only the calling thread), so the helper's
/// `SO_PEERCRED` check sees the owner; its answer line, parsed.
fn request_as_owner(socket: &Path, json: &str) -> std::thread::JoinHandle<HelperReply> {
    let (socket, json) = (socket.to_owned(), json.to_owned());
    std::thread::spawn(move || {
        // SAFETY: plain system calls on this thread's credentials with
        // integer arguments (a null, empty group list).
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, OWNER, OWNER, OWNER), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, OWNER, OWNER, OWNER), 0);
        }
        let mut stream = UnixStream::connect(&socket).expect("connect to the helper");
        stream.write_all(format!("{json}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
    })
}

/// Every path under `dir` (itself included) not owned by `uid`.
fn not_owned_by(dir: &Path, uid: u32) -> Vec<String> {
    let mut bad = Vec::new();
    let meta = std::fs::symlink_metadata(dir).unwrap();
    if meta.uid() != uid || meta.gid() != uid {
        bad.push(format!("{} {}:{}", dir.display(), meta.uid(), meta.gid()));
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            bad.extend(not_owned_by(&entry.unwrap().path(), uid));
        }
    }
    bad
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_build_through_the_socket_is_installed_owned_by_the_owner() {
    let test = "kernel_build_through_the_socket_is_installed_owned_by_the_owner";
    if !enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = owned_dir(tmp.path(), "state");
    // A fresh cache: a real build, not a cache hit.
    let cache = owned_dir(tmp.path(), "cache");
    let socket = tmp.path().join("run/helper.sock");
    let mut config = ServeConfig::child(
        socket.clone(),
        OWNER,
        "172.16.0.0/24".parse().unwrap(),
        vec![state.clone()],
    );
    config.policy.owner_gid = Some(OWNER);
    config.policy.build = Some(BuildPaths {
        state_dir: state.clone(),
        cache_dir: cache.clone(),
        work_dir: tmp.path().join("work"),
        runner: BuildRunner::Child {
            builder: BUILDER.into(),
        },
    });
    let server = Server::bind(&config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));

    let build = request_as_owner(
        &socket,
        r#"{"op":"build_bundle","kind":"kernel","name":"generic-6.12"}"#,
    );
    // While the build runs, other connections are served.
    let ping = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || request_as_owner(&socket, r#"{"op":"ping"}"#).join()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(
        ping,
        Ok(HelperResponse::Pong {
            owner_uid: OWNER,
            ..
        })
    ));
    assert!(
        !build.is_finished(),
        "the build was already over when the ping was answered: nothing was proven"
    );
    let out = tokio::task::spawn_blocking(move || build.join())
        .await
        .unwrap()
        .unwrap();
    let Ok(HelperResponse::Built {
        path,
        version,
        recipe_hash,
        bundle_sha256,
        cached,
    }) = out.clone()
    else {
        panic!("build failed: {out:?}");
    };
    assert!(!cached);
    assert_eq!(version, "6.12.95-1~bpo12+1");
    assert_eq!((recipe_hash.len(), bundle_sha256.len()), (64, 64));
    let installed = state.join("kernels/generic-6.12");
    assert_eq!(Path::new(&path), installed);
    assert!(installed.join("vmlinux").is_file());
    for dir in [
        installed.as_path(),
        &state.join("kernels"),
        &state.join("locks"),
        &cache.join("kernels"),
    ] {
        let bad = not_owned_by(dir, OWNER);
        assert!(bad.is_empty(), "not owned by the owner: {bad:#?}");
    }
    // The daemon, as the owner, can delete what the helper installed.
    let rm = Command::new("rm")
        .arg("-rf")
        .arg(&installed)
        .uid(OWNER)
        .gid(OWNER)
        .status()
        .unwrap();
    assert!(
        rm.success() && !installed.exists(),
        "the owner cannot delete the install"
    );

    let _ = stop.send(());
    served.await.unwrap().unwrap();
}

/// `<parent>/<name>`, created and owned by the owner (mode 0750).
fn owned_dir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&dir, Some(OWNER), Some(OWNER)).unwrap();
    dir
}

/// A symlink at `link` to `target`, made by the owner.
fn owner_symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
    std::os::unix::fs::lchown(link, Some(OWNER), Some(OWNER)).unwrap();
}

/// The kernel bundle, built once per test binary into the build tests'
/// shared cache (BANGER_BUILD_CACHE, default ~/.cache/banger; a cache hit
/// when banger-image's build tests or an earlier run built it).
fn kernel_bundle() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cache = std::env::var_os("BANGER_BUILD_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache")
                    })
                    .join("banger")
            });
        let log = |p: Progress| {
            if !p.message.contains(": I: ") {
                eprintln!("[{}] {}", p.phase.as_str(), p.message);
            }
        };
        build(Kind::Kernel, KERNEL, &BuildOptions::new(cache), &log).expect("kernel build")
    })
}

/// A temp dir laid out like a system install: state and cache owned by the
/// owner, root's work dir holding the kernel bundle as an earlier build
/// left it (so `build_here` hands it over without rebuilding).
struct Install {
    tmp: tempfile::TempDir,
    paths: BuildPaths,
}

impl Install {
    fn new() -> Install {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let paths = BuildPaths {
            state_dir: owned_dir(tmp.path(), "state"),
            cache_dir: owned_dir(tmp.path(), "cache"),
            work_dir: tmp.path().join("work"),
            runner: BuildRunner::Child {
                builder: BUILDER.into(),
            },
        };
        let built = kernel_bundle();
        let bundles = paths.work_dir.join("bundles/kernels");
        std::fs::create_dir_all(&bundles).unwrap();
        std::fs::set_permissions(&paths.work_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::copy(
            &built.packed.path,
            bundles.join(format!("{}.tar.zst", built.recipe_hash)),
        )
        .unwrap();
        Install { tmp, paths }
    }

    fn build(&self) -> Result<HelperResponse, bangerd_root::ops::OpError> {
        build_here(BundleKind::Kernel, KERNEL, &self.paths, OWNER, OWNER)
    }

    fn installed(&self) -> PathBuf {
        self.paths.state_dir.join("kernels").join(KERNEL)
    }

    /// A build fails with an error naming `link`, installs nothing, and
    /// leaves `victim` as `before` recorded it.
    fn refused_naming(&self, link: &Path, victim: &Path, before: &[Snapshot]) {
        let err = self
            .build()
            .expect_err("the build went through the symlink");
        let msg = err.to_string();
        assert!(
            msg.contains(&link.display().to_string()) && msg.contains("symbolic link"),
            "the error does not name the link: {msg}"
        );
        assert_eq!(snapshot(victim), before, "the symlink's target changed");
        assert!(!self.installed().exists(), "installed despite the refusal");
    }

    /// A root-owned directory outside banger's, holding one root-owned file.
    fn victim_dir(&self) -> PathBuf {
        let dir = self.tmp.path().join("victim");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("precious"), b"root's\n").unwrap();
        dir
    }
}

/// Path, uid, gid, mode and (for a file) content.
type Snapshot = (String, u32, u32, u32, Vec<u8>);

/// What an attacker must not have changed: `path` (not followed) and,
/// for a directory, its entries, with their owners and contents.
fn snapshot(path: &Path) -> Vec<Snapshot> {
    let mut out = Vec::new();
    let meta = std::fs::symlink_metadata(path).unwrap();
    let content = if meta.is_file() {
        std::fs::read(path).unwrap()
    } else {
        Vec::new()
    };
    out.push((
        path.display().to_string(),
        meta.uid(),
        meta.gid(),
        meta.mode(),
        content,
    ));
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            out.extend(snapshot(&e));
        }
    }
    out
}

/// The owner replaced `<cache>/kernels` with a symlink to a root-owned
/// directory before asking for a build: root used to create the bundle
/// there by path and chown that directory to the owner.
#[test]
fn a_symlinked_cache_dir_is_refused_and_its_target_untouched() {
    let test = "a_symlinked_cache_dir_is_refused_and_its_target_untouched";
    if !enabled(test) {
        return;
    }
    let install = Install::new();
    let victim = install.victim_dir();
    let link = install.paths.cache_dir.join("kernels");
    owner_symlink(&victim, &link);
    let before = snapshot(&victim);

    install.refused_naming(&link, &victim, &before);
    assert_eq!(std::fs::metadata(&victim).unwrap().uid(), 0);
}

/// The owner swapped the bundle's path in its cache for a symlink to a
/// root-owned file while the build ran (between packing and handing the
/// bundle over, when root used to chown it by path). Root now packs into
/// its own work dir and never opens that path; the owner's copy is written
/// as the owner, so planting the link before the hand-over is the same race
/// with a deterministic outcome.
#[test]
fn a_symlinked_bundle_path_is_refused_and_its_target_untouched() {
    let test = "a_symlinked_bundle_path_is_refused_and_its_target_untouched";
    if !enabled(test) {
        return;
    }
    let install = Install::new();
    let victim = install.victim_dir().join("precious");
    let kernels = owned_dir(&install.paths.cache_dir, "kernels");
    let link = kernels.join(format!("{}.tar.zst", kernel_bundle().recipe_hash));
    owner_symlink(&victim, &link);
    let before = snapshot(&victim);

    install.refused_naming(&link, &victim, &before);
}

/// A bundle the owner planted in its own cache under the recipe hash is
/// never taken for root's build: the store gets root's bundle, recorded
/// with root's sha256, and the planted file is replaced.
#[test]
fn a_bundle_planted_in_the_owners_cache_is_not_recorded_as_built() {
    let test = "a_bundle_planted_in_the_owners_cache_is_not_recorded_as_built";
    if !enabled(test) {
        return;
    }
    let install = Install::new();
    let built = kernel_bundle();
    // The owner's forgery: the real kernel, relabelled.
    let src = tempfile::tempdir().unwrap();
    let unpacked = src.path().join("kernel");
    std::fs::create_dir(&unpacked).unwrap();
    banger_image::bundle::unpack_file(
        &built.packed.path,
        &unpacked,
        &banger_image::bundle::Expect {
            kind: Kind::Kernel,
            name: Some(KERNEL.into()),
        },
    )
    .unwrap();
    let m = &built.packed.manifest;
    let meta = banger_image::bundle::BundleMeta {
        kind: Kind::Kernel,
        name: KERNEL.into(),
        version: "6.6.6-planted".into(),
        created: m.created,
        recipe_hash: Some(built.recipe_hash.clone()),
        kernel_ref: m.kernel_ref.clone(),
        kernel_release: m.kernel_release.clone(),
    };
    let kernels = owned_dir(&install.paths.cache_dir, "kernels");
    let planted = kernels.join(format!("{}.tar.zst", built.recipe_hash));
    let forged = banger_image::bundle::pack(&unpacked, &meta, &planted).unwrap();
    std::os::unix::fs::chown(&planted, Some(OWNER), Some(OWNER)).unwrap();
    assert_ne!(forged.sha256, built.packed.sha256);

    let Ok(HelperResponse::Built {
        version,
        bundle_sha256,
        cached,
        ..
    }) = install.build()
    else {
        panic!("the build failed");
    };
    assert!(cached, "root's own cache should have served the build");
    assert_eq!(version, m.version);
    assert_eq!(bundle_sha256, built.packed.sha256);
    let store = banger_image::store::Store::new(&install.paths.state_dir);
    let got = store.get(Kind::Kernel, KERNEL).unwrap().unwrap();
    assert_eq!(got.manifest.version, m.version);
    assert_eq!(
        banger_image::digest::sha256_file(&planted).unwrap().1,
        built.packed.sha256,
        "the owner's cache still holds the planted bundle"
    );
    let bad = not_owned_by(&install.installed(), OWNER);
    assert!(bad.is_empty(), "not owned by the owner: {bad:#?}");
}

/// Root keeps its bundles and scratch space only where no other user can
/// swap a path: a work dir inside the owner's cache is refused before
/// anything is built.
#[test]
fn a_work_dir_the_owner_can_change_is_refused() {
    let test = "a_work_dir_the_owner_can_change_is_refused";
    if !enabled(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache = owned_dir(tmp.path(), "cache");
    let err = root_private_dir(&cache.join("build")).unwrap_err();
    assert!(
        err.to_string().contains(&cache.display().to_string())
            && err.to_string().contains("directories root owns"),
        "{err}"
    );
    assert!(!cache.join("build").exists());
    // A root-owned dir the owner may write into is refused too.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = root_private_dir(&shared.join("build")).unwrap_err();
    assert!(
        err.to_string().contains("other than root can write"),
        "{err}"
    );
    // A symlink on the way is refused, even one root made.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink("/", &link).unwrap();
    let err = root_private_dir(&link.join("build")).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    root_private_dir(&tmp.path().join("work/nested")).unwrap();
    let mode = std::fs::metadata(tmp.path().join("work/nested"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}
