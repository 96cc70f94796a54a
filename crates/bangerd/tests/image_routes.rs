//! The `/v1/images` and `/v1/kernels` routes of a real `bangerd`, pulling
//! real bundles from a real HTTP server on 127.0.0.1 (a catalog file given
//! by `BANGER_CATALOG_FILE` points at it): pull with progress, unpublished
//! and missing bundles, on-demand pull by `vm create --no-start`,
//! delete-in-use refusals, register validation and promote.

#[path = "../../banger-image/tests/common/mod.rs"]
mod bundles;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use banger_cli::client::{Client, PlainRenderer, StreamRenderer};
use banger_image::bundle::{self, Packed};
use banger_wire::api::{ErrorCode, StreamEvent};
use banger_wire::image::{
    ArtifactSource, ImageInfo, ImageList, ImageRegisterRequest, InstallReport, KernelInfo,
    PullRequest,
};
use banger_wire::vm::{VmCreateRequest, VmInfo};
use bundles::{image_meta, image_src, kernel_meta, kernel_src, Behavior, TestServer};
use common::{curl, Daemon, TestEnv};

/// A daemon whose catalog offers `test-kernel` and `test-image` (published,
/// served by `server`), `unpub` (unpublished) and `gone` (published, 404).
struct Setup {
    env: TestEnv,
    daemon: Daemon,
    server: TestServer,
    kernel: Packed,
    image: Packed,
    _bundles: tempfile::TempDir,
}

fn entry(kind: &str, p: &Packed, url: &str, kernel_ref: Option<&str>) -> String {
    let kref = kernel_ref.map_or(String::new(), |k| format!("kernel_ref = \"{k}\"\n"));
    format!(
        "[[{kind}]]\nname = \"{}\"\nversion = \"{}\"\nurl = \"{url}\"\nsize = {}\nsha256 = \"{}\"\n{kref}\n",
        p.manifest.name, p.manifest.version, p.size, p.sha256
    )
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let ksrc = kernel_src(&dir.path().join("ksrc"));
        let kernel = bundle::pack(
            &ksrc,
            &kernel_meta("test-kernel"),
            &dir.path().join("k.tar.zst"),
        )
        .unwrap();
        let isrc = image_src(&dir.path().join("isrc"), 64 << 20);
        let image = bundle::pack(
            &isrc,
            &image_meta("test-image"),
            &dir.path().join("i.tar.zst"),
        )
        .unwrap();
        let server = TestServer::start();
        server.route(
            "/b/k.tar.zst",
            Behavior::Full(std::fs::read(&kernel.path).unwrap()),
        );
        server.route(
            "/b/i.tar.zst",
            Behavior::Full(std::fs::read(&image.path).unwrap()),
        );
        let mut gone = image.clone();
        gone.manifest.name = "gone".into();
        let catalog = format!(
            "format_version = 1\nbase_url = \"{}/b\"\n\n{}{}{}[[image]]\nname = \"unpub\"\nversion = \"1\"\nurl = \"u.tar.zst\"\nsize = 0\nsha256 = \"\"\nkernel_ref = \"test-kernel\"\n\n",
            server.base_url,
            entry("kernel", &kernel, "k.tar.zst", None),
            entry("image", &image, "i.tar.zst", Some("test-kernel")),
            entry("image", &gone, "missing.tar.zst", Some("test-kernel")),
        );
        let catalog_file = dir.path().join("catalog.toml");
        std::fs::write(&catalog_file, catalog).unwrap();
        let env = TestEnv::new();
        let mut cmd = env.command(common::daemon_bin());
        cmd.env("BANGER_CATALOG_FILE", &catalog_file)
            .env_remove("BANGER_CATALOG_URL");
        let daemon = Daemon::start_with(&env, cmd).await;
        Setup {
            env,
            daemon,
            server,
            kernel,
            image,
            _bundles: dir,
        }
    }

    fn client(&self) -> Client {
        self.daemon.client()
    }

    fn curl(&self, args: &[&str]) -> (u16, String) {
        curl(&self.env.socket(), args)
    }
}

/// Records every event of a stream.
#[derive(Default)]
struct Recorder(Vec<StreamEvent>);

impl StreamRenderer for Recorder {
    fn event(&mut self, event: &StreamEvent) {
        self.0.push(event.clone());
    }
    fn finish(&mut self, _success: bool) {}
}

fn error_of(e: banger_cli::client::ClientError) -> (ErrorCode, String) {
    let api = e.api_error().expect("an API error").clone();
    (api.code, api.message)
}

/// POST a streamed route that must fail; its error code and message.
async fn stream_err<B: serde::Serialize>(
    client: &Client,
    path: &str,
    body: &B,
) -> (ErrorCode, String) {
    let err = client
        .stream(path, body, &mut Recorder::default())
        .await
        .expect_err("the stream must end with an error");
    error_of(err)
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_installs_image_and_kernel_with_progress_and_lists_them() {
    let s = Setup::new().await;
    let client = s.client();
    let mut rec = Recorder::default();
    let result = client
        .stream("/v1/images/test-image/pull", &PullRequest {}, &mut rec)
        .await
        .unwrap_or_else(|e| panic!("pull failed: {e}\n{}", s.env.log()));
    let report: InstallReport = serde_json::from_value(result).unwrap();
    let got: Vec<(&str, &str, bool)> = report
        .installed
        .iter()
        .map(|b| (b.kind.as_str(), b.name.as_str(), b.fetched))
        .collect();
    assert_eq!(
        got,
        [
            ("kernel", "test-kernel", true),
            ("image", "test-image", true)
        ]
    );
    assert_eq!(
        report.installed[0].bundle_sha256.as_deref(),
        Some(s.kernel.sha256.as_str())
    );
    assert_eq!(
        report.installed[1].bundle_sha256.as_deref(),
        Some(s.image.sha256.as_str())
    );
    // Download progress carries byte counts against the bundle size, so the
    // CLI can draw a bar with rate and ETA.
    let last = rec
        .0
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Progress {
                phase,
                current,
                total,
                ..
            } if phase == "download" && *total == Some(s.image.size) => *current,
            _ => None,
        })
        .max();
    assert_eq!(last, Some(s.image.size), "events: {:?}", rec.0);

    let list: ImageList = client.get_json("/v1/images").await.unwrap();
    assert_eq!(list.images.len(), 1);
    let img = &list.images[0];
    assert_eq!(
        (
            img.name.as_str(),
            img.kernel.as_str(),
            img.source,
            img.managed
        ),
        ("test-image", "test-kernel", ArtifactSource::Catalog, true)
    );
    assert_eq!(img.size_bytes, 64 << 20);
    assert_eq!(
        img.origin.as_deref(),
        Some(format!("{}/b/i.tar.zst", s.server.base_url).as_str())
    );
    let k: KernelInfo = client.get_json("/v1/kernels/test-kernel").await.unwrap();
    assert_eq!(k.used_by_images, ["test-image"]);
    assert_eq!(k.release.as_deref(), Some("6.12.0-test"));

    // A damaged store entry is left out of the list, not fatal to it.
    let broken = s.env.layout.state_dir.join("images/broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("manifest.json"), b"{not json").unwrap();
    let list: ImageList = client.get_json("/v1/images").await.unwrap();
    assert_eq!(list.images.len(), 1, "{list:?}");
    let (code, body) = s.curl(&["http://x/v1/images/broken"]);
    assert!(code == 500 && body.contains("damaged"), "{code} {body}");
    let (code, body) = s.curl(&["-X", "DELETE", "http://x/v1/images/broken"]);
    assert_eq!(code, 200, "{body}");

    // A second pull downloads nothing.
    let again = client
        .stream(
            "/v1/images/test-image/pull",
            &PullRequest {},
            &mut Recorder::default(),
        )
        .await
        .unwrap();
    let again: InstallReport = serde_json::from_value(again).unwrap();
    assert!(again.installed.iter().all(|b| !b.fetched), "{again:?}");
    assert_eq!(s.server.hits("/b/i.tar.zst"), 1);
    assert_eq!(s.server.hits("/b/k.tar.zst"), 1);

    // What `banger image pull` prints when stderr is not a terminal: one
    // line per phase (byte-count updates are not repeated).
    let mut plain = PlainRenderer::new(Vec::new());
    for e in &rec.0 {
        plain.event(e);
    }
    plain.finish(true);
    let text = String::from_utf8(plain.into_inner()).unwrap();
    let downloads = text
        .lines()
        .filter(|l| l.starts_with("[download] downloading "))
        .count();
    assert_eq!(downloads, 2, "{text}");
    assert!(
        text.contains("[install] installing image test-image\n"),
        "{text}"
    );
    assert!(
        text.lines().count() < 12,
        "progress updates are not one line each: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_of_one_image_download_it_once() {
    let s = Setup::new().await;
    // Slow bodies so the two requests really overlap.
    s.server.route(
        "/b/i.tar.zst",
        Behavior::Slow(std::fs::read(&s.image.path).unwrap()),
    );
    let pull = || async {
        let result = s
            .client()
            .stream(
                "/v1/images/test-image/pull",
                &PullRequest {},
                &mut Recorder::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("pull failed: {e}\n{}", s.env.log()));
        serde_json::from_value::<InstallReport>(result).unwrap()
    };
    let (a, b) = tokio::join!(pull(), pull());
    let fetched = [&a, &b]
        .iter()
        .filter(|r| {
            r.installed
                .iter()
                .any(|x| x.name == "test-image" && x.fetched)
        })
        .count();
    assert_eq!(fetched, 1, "{a:?} {b:?}");
    assert_eq!(s.server.hits("/b/i.tar.zst"), 1);
    assert_eq!(s.server.hits("/b/k.tar.zst"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unpublished_and_missing_bundles_name_the_build_command() {
    let s = Setup::new().await;
    let client = s.client();
    let (code, msg) = stream_err(&client, "/v1/images/unpub/pull", &PullRequest {}).await;
    assert_eq!(code, ErrorCode::NotFound, "{msg}");
    assert!(msg.contains("no published bundle"), "{msg}");
    assert!(msg.contains("banger image build unpub"), "{msg}");

    let (_, msg) = stream_err(&client, "/v1/images/gone/pull", &PullRequest {}).await;
    assert!(msg.contains("HTTP 404"), "{msg}");
    assert!(msg.contains("banger image build gone"), "{msg}");

    let (code, msg) = stream_err(&client, "/v1/images/nope/pull", &PullRequest {}).await;
    assert_eq!(code, ErrorCode::NotFound, "{msg}");
    assert!(msg.contains("test-image"), "lists the known images: {msg}");

    let (code, body) = s.curl(&["-X", "POST", "http://x/v1/images/Bad%20Name/pull"]);
    assert_eq!(code, 400, "{body}");
    // Nothing was installed by the failures (the kernel of `gone` was).
    let list: ImageList = client.get_json("/v1/images").await.unwrap();
    assert!(list.images.is_empty(), "{list:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_create_pulls_a_missing_image_and_delete_refuses_while_in_use() {
    let s = Setup::new().await;
    let client = s.client();
    let mut rec = Recorder::default();
    let req = VmCreateRequest {
        name: Some("user1".into()),
        image: Some("test-image".into()),
        disk_size: Some("64M".into()),
        memory: Some("256M".into()),
        vcpu: Some(1),
        no_start: true,
    };
    let result = client
        .stream("/v1/vms", &req, &mut rec)
        .await
        .unwrap_or_else(|e| panic!("create failed: {e}\n{}", s.env.log()));
    let vm: VmInfo = serde_json::from_value(result).unwrap();
    assert_eq!((vm.name.as_str(), vm.state.as_str()), ("user1", "created"));
    assert_eq!(vm.kernel, "test-kernel");
    assert!(
        rec.0
            .iter()
            .any(|e| matches!(e, StreamEvent::Progress { phase, total, .. }
            if phase == "download" && *total == Some(s.image.size))),
        "the create stream shows the download: {:?}",
        rec.0
    );
    assert_eq!(s.server.hits("/b/i.tar.zst"), 1);

    // A name the catalog does not know is simply missing.
    let unknown = VmCreateRequest {
        name: Some("user2".into()),
        image: Some("nope".into()),
        ..req.clone()
    };
    let (code, msg) = stream_err(&client, "/v1/vms", &unknown).await;
    assert_eq!(code, ErrorCode::NotFound, "{msg}");
    assert!(
        msg.contains("image nope is not installed: banger has no catalog entry or recipe of that name (it can build: debian-bookworm, debian-bookworm-minimal)"),
        "{msg}"
    );
    // An unpublished one fails with the reason and the build command.
    let unpublished = VmCreateRequest {
        name: Some("user3".into()),
        image: Some("unpub".into()),
        ..req.clone()
    };
    let (_, msg) = stream_err(&client, "/v1/vms", &unpublished).await;
    assert!(
        msg.contains("no published bundle") && msg.contains("banger image build unpub"),
        "{msg}"
    );
    let vms: banger_wire::vm::VmList = client.get_json("/v1/vms").await.unwrap();
    assert_eq!(vms.vms.len(), 1, "failed creates leave no VM: {vms:?}");

    let (code, body) = s.curl(&["-X", "DELETE", "http://x/v1/images/test-image"]);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("VM user1"), "{body}");
    let (code, body) = s.curl(&["-X", "DELETE", "http://x/v1/kernels/test-kernel"]);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("image test-image") && body.contains("VM user1"),
        "{body}"
    );
    let img: ImageInfo = client.get_json("/v1/images/test-image").await.unwrap();
    assert_eq!(img.used_by, ["user1"]);

    let (code, body) = s.curl(&["-X", "DELETE", "http://x/v1/vms/user1"]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.curl(&["-X", "DELETE", "http://x/v1/images/test-image"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"existed\":true"), "{body}");
    let (code, body) = s.curl(&["-X", "DELETE", "http://x/v1/kernels/test-kernel"]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.curl(&["-X", "DELETE", "http://x/v1/kernels/test-kernel"]);
    assert_eq!(
        (code, body.contains("\"existed\":false")),
        (200, true),
        "{body}"
    );
    let (code, body) = s.curl(&["http://x/v1/images/test-image"]);
    assert_eq!(code, 404, "{body}");
}

/// `banger image/kernel ...` as a user runs it, with stdout and stderr
/// piped (so progress is plain lines, not bars).
#[tokio::test(flavor = "multi_thread")]
async fn cli_pulls_lists_shows_and_deletes() {
    let cli = common::daemon_bin().with_file_name("banger");
    if !banger_test_support::Gate::new()
        .file(&cli, "cargo build -p banger-cli")
        .check()
    {
        return;
    }
    let s = Setup::new().await;
    let banger = |args: &[&str]| {
        let out = s
            .env
            .command(&cli)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = banger(&["image", "pull", "test-image"]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        out,
        "kernel test-kernel 6.12.0 (installed)\nimage test-image 1.0 (installed)\n"
    );
    assert!(
        err.contains(&format!(
            "[download] downloading {}/b/i.tar.zst",
            s.server.base_url
        )),
        "{err}"
    );
    assert!(
        err.contains("[install] installing image test-image"),
        "{err}"
    );

    let (ok, out, err) = banger(&["image", "list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("NAME "), "{out}");
    assert!(
        lines[1].starts_with("test-image ") && lines[1].contains(" catalog "),
        "{out}"
    );
    let (ok, out, err) = banger(&["kernel", "show", "test-kernel", "--json"]);
    assert!(ok, "{err}");
    let k: KernelInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(k.used_by_images, ["test-image"]);

    let (ok, out, err) = banger(&["kernel", "delete", "test-kernel"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("kernel test-kernel is in use by image test-image"),
        "{err}"
    );
    let (ok, out, err) = banger(&["image", "delete", "test-image"]);
    assert!(ok, "{err}");
    assert_eq!(out, "deleted image test-image\n");
    let (ok, out, err) = banger(&["image", "pull", "unpub"]);
    assert!(!ok, "{out}");
    assert!(err.contains("banger image build unpub"), "{err}");
}

/// A small real ext4 file made by mkfs.ext4 (no root needed).
fn ext4(path: &Path) -> PathBuf {
    std::fs::File::create(path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    path.to_owned()
}

async fn register_err(client: &Client, req: &ImageRegisterRequest) -> (ErrorCode, String) {
    let err = client
        .post_json::<_, ImageInfo>("/v1/images/register", req)
        .await
        .expect_err("register must fail");
    error_of(err)
}

#[tokio::test(flavor = "multi_thread")]
async fn register_validates_paths_and_promote_copies_into_the_store() {
    let s = Setup::new().await;
    let client = s.client();
    let tmp = tempfile::tempdir().unwrap();
    let good = ext4(&tmp.path().join("root.ext4"));
    let not_ext4 = tmp.path().join("junk.img");
    std::fs::write(&not_ext4, vec![0u8; 4096]).unwrap();
    let not_elf = tmp.path().join("vmlinuz");
    std::fs::write(&not_elf, b"MZ not an ELF kernel").unwrap();
    let base = |rootfs: &Path| ImageRegisterRequest {
        name: "mine".into(),
        rootfs: rootfs.display().to_string(),
        kernel_ref: Some("test-kernel".into()),
        ..Default::default()
    };

    let missing = tmp.path().join("missing.ext4");
    let (code, msg) = register_err(&client, &base(&missing)).await;
    assert_eq!(code, ErrorCode::BadRequest, "{msg}");
    assert!(msg.contains(&missing.display().to_string()), "{msg}");

    let (code, msg) = register_err(&client, &base(&not_ext4)).await;
    assert_eq!(code, ErrorCode::BadRequest, "{msg}");
    assert!(
        msg.contains("is not ext4") && msg.contains(&not_ext4.display().to_string()),
        "{msg}"
    );

    let (code, msg) = register_err(&client, &base(Path::new("rel/root.ext4"))).await;
    assert_eq!(code, ErrorCode::BadRequest, "{msg}");
    assert!(
        msg.contains("rel/root.ext4") && msg.contains("must be absolute"),
        "{msg}"
    );

    let with_kernel = ImageRegisterRequest {
        kernel_ref: None,
        kernel: Some(not_elf.display().to_string()),
        ..base(&good)
    };
    let (code, msg) = register_err(&client, &with_kernel).await;
    assert_eq!(code, ErrorCode::BadRequest, "{msg}");
    assert!(
        msg.contains("not an x86_64 ELF") && msg.contains(&not_elf.display().to_string()),
        "{msg}"
    );

    // The kernel it names must exist.
    let (code, msg) = register_err(&client, &base(&good)).await;
    assert_eq!(code, ErrorCode::NotFound, "{msg}");
    assert!(msg.contains("test-kernel"), "{msg}");

    client
        .stream(
            "/v1/kernels/test-kernel/pull",
            &PullRequest {},
            &mut Recorder::default(),
        )
        .await
        .unwrap();
    let info: ImageInfo = client
        .post_json("/v1/images/register", &base(&good))
        .await
        .unwrap();
    assert_eq!(
        (info.source, info.managed, info.rootfs.as_str()),
        (ArtifactSource::Registered, false, good.to_str().unwrap())
    );
    assert_eq!(info.size_bytes, 8 << 20);
    let (code, msg) = register_err(&client, &base(&good)).await;
    assert_eq!(code, ErrorCode::Conflict, "{msg}");
    // Pulling over a registered name is refused too.
    let (code, body) = s.curl(&["-X", "POST", "http://x/v1/images/mine/pull"]);
    assert!(
        code == 409 && body.contains("registered from host files"),
        "{code} {body}"
    );

    let mut rec = Recorder::default();
    let done = client
        .stream("/v1/images/mine/promote", &serde_json::json!({}), &mut rec)
        .await
        .unwrap_or_else(|e| panic!("promote failed: {e}\n{}", s.env.log()));
    let promoted: ImageInfo = serde_json::from_value(done).unwrap();
    assert_eq!(
        (promoted.source, promoted.managed),
        (ArtifactSource::Imported, true)
    );
    let in_store = s.env.layout.state_dir.join("images/mine/rootfs.ext4");
    assert_eq!(promoted.rootfs, in_store.display().to_string());
    assert_eq!(
        std::fs::read(&in_store).unwrap(),
        std::fs::read(&good).unwrap()
    );
    assert!(good.exists(), "promote leaves the host file in place");
    let list: ImageList = client.get_json("/v1/images").await.unwrap();
    assert_eq!(list.images.len(), 1, "one record per name: {list:?}");
    let (code, body) = s.curl(&["-X", "POST", "http://x/v1/images/mine/promote"]);
    assert!(
        code == 409 && body.contains("already managed"),
        "{code} {body}"
    );
}

/// `image register --kernel ... --initrd ... --modules ...` with a real
/// kernel (from the prepared test store, BANGER_TEST_STORE): the kernel is
/// registered under the image's name, a VM can be created from the pair,
/// and promote copies both into the store.
#[tokio::test(flavor = "multi_thread")]
async fn register_with_kernel_files_creates_and_promotes_both() {
    let store = std::env::var_os("BANGER_TEST_STORE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/teststore"));
    let kdir = store.join("kernels/generic-6.12");
    let Some(release) = std::fs::read_dir(kdir.join("modules"))
        .ok()
        .and_then(|mut rd| rd.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name())
    else {
        banger_test_support::skip(&format!(
            "no built kernel at {} (set BANGER_TEST_STORE; scripts/test-store.sh makes one)",
            kdir.display()
        ));
        return;
    };
    let s = Setup::new().await;
    let client = s.client();
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = ext4(&tmp.path().join("root.ext4"));
    let req = ImageRegisterRequest {
        name: "handmade".into(),
        rootfs: rootfs.display().to_string(),
        kernel: Some(kdir.join("vmlinux").display().to_string()),
        initrd: Some(kdir.join("initrd").display().to_string()),
        modules: Some(kdir.join("modules").join(&release).display().to_string()),
        ..Default::default()
    };
    let img: ImageInfo = client
        .post_json("/v1/images/register", &req)
        .await
        .unwrap_or_else(|e| panic!("register failed: {e}"));
    assert_eq!(img.kernel, "handmade");
    let k: KernelInfo = client.get_json("/v1/kernels/handmade").await.unwrap();
    assert_eq!(
        (k.source, k.managed, k.release.as_deref()),
        (ArtifactSource::Registered, false, release.to_str())
    );
    assert_eq!(k.used_by_images, ["handmade"]);

    let vm = VmCreateRequest {
        name: Some("hand".into()),
        image: Some("handmade".into()),
        disk_size: Some("64M".into()),
        memory: Some("256M".into()),
        vcpu: Some(1),
        no_start: true,
    };
    let done = client
        .stream("/v1/vms", &vm, &mut Recorder::default())
        .await
        .unwrap_or_else(|e| panic!("create from a registered image failed: {e}"));
    let vm: VmInfo = serde_json::from_value(done).unwrap();
    assert_eq!(
        (vm.image.as_str(), vm.kernel.as_str()),
        ("handmade", "handmade")
    );

    let done = client
        .stream(
            "/v1/images/handmade/promote",
            &serde_json::json!({}),
            &mut Recorder::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("promote failed: {e}\n{}", s.env.log()));
    let img: ImageInfo = serde_json::from_value(done).unwrap();
    assert_eq!(
        (img.source, img.used_by.as_slice()),
        (ArtifactSource::Imported, ["hand".to_owned()].as_slice())
    );
    let k: KernelInfo = client.get_json("/v1/kernels/handmade").await.unwrap();
    assert_eq!((k.source, k.managed), (ArtifactSource::Imported, true));
    let state = &s.env.layout.state_dir;
    assert!(state.join("kernels/handmade/modules.ext4").is_file());
    assert_eq!(
        std::fs::metadata(state.join("kernels/handmade/vmlinux"))
            .unwrap()
            .len(),
        std::fs::metadata(kdir.join("vmlinux")).unwrap().len()
    );
    let (code, body) = s.curl(&["-X", "DELETE", "http://x/v1/kernels/handmade"]);
    assert!(
        code == 409 && body.contains("image handmade") && body.contains("VM hand"),
        "{code} {body}"
    );
}

/// A daemon without root and without a root helper refuses a build at
/// once, saying what would make it work (run as `nobody` when the test runs
/// as root).
#[tokio::test(flavor = "multi_thread")]
async fn build_without_root_names_the_fix() {
    let env = TestEnv::new();
    let cmd = if nix::unistd::geteuid().is_root() {
        let st = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(env.dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let mut cmd = env.command("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::daemon_bin());
        cmd
    } else {
        env.command(common::daemon_bin())
    };
    let daemon = Daemon::start_with(&env, cmd).await;
    let (code, msg) = stream_err(
        &daemon.client(),
        "/v1/kernels/generic-6.12/build",
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(code, ErrorCode::Unsupported, "{msg}");
    assert!(
        msg.contains("building kernel generic-6.12 needs root")
            && msg.contains("sudo banger system install")
            && msg.contains("Run banger as root"),
        "{msg}"
    );
    let (code, msg) = stream_err(
        &daemon.client(),
        "/v1/kernels/nope/build",
        &serde_json::json!({}),
    )
    .await;
    assert_eq!(code, ErrorCode::NotFound, "{msg}");
    assert!(msg.contains("generic-6.12"), "lists the recipes: {msg}");
}

/// `POST /v1/kernels/generic-6.12/build` as root builds the real kernel
/// from its recipe and installs it (minutes; BANGER_BUILD_TESTS=1).
#[tokio::test(flavor = "multi_thread")]
async fn kernel_build_route_installs_the_kernel() {
    // Root: the daemon builds in-process.
    if !banger_test_support::Gate::new()
        .build_tests()
        .root()
        .check()
    {
        return;
    }
    // A fresh cache dir: the route really builds (downloads the Debian
    // kernel package, extracts vmlinux, makes the initrd), no cache hit.
    let env = TestEnv::new();
    let daemon = Daemon::start(&env).await;
    let mut rec = Recorder::default();
    let done = daemon
        .client()
        .stream(
            "/v1/kernels/generic-6.12/build",
            &serde_json::json!({}),
            &mut rec,
        )
        .await
        .unwrap_or_else(|e| panic!("build failed: {e}\n{}", env.log()));
    let report: InstallReport = serde_json::from_value(done).unwrap();
    assert_eq!(report.installed.len(), 1);
    assert_eq!(report.installed[0].name, "generic-6.12");
    assert!(
        report.installed[0].fetched && !report.installed[0].from_cache,
        "built, not taken from a cache: {report:?}"
    );
    assert!(
        rec.0
            .iter()
            .any(|e| matches!(e, StreamEvent::Progress { phase, .. } if phase == "build")),
        "{:?}",
        rec.0
    );
    let k: KernelInfo = daemon
        .client()
        .get_json("/v1/kernels/generic-6.12")
        .await
        .unwrap();
    assert_eq!(k.source, ArtifactSource::Build);
    banger_image::validate::vmlinux(Path::new(&k.vmlinux)).unwrap();
}
