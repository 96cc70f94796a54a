//! `POST /v1/oci/pull` of a real bangerd against a real docker-registry on
//! loopback (credentials from the daemon user's ~/.docker/config.json):
//! the image lands in the store with its OCI origin, `image show` reports
//! it, a second pull says whether the tag changed, and refusals come back
//! with the right codes before or during the stream.

#[path = "../../banger-image/tests/common/mod.rs"]
mod bundles;
mod common;
#[path = "../../banger-oci/tests/common/mod.rs"]
mod oci;

use banger_cli::client::{Client, StreamRenderer};
use banger_image::bundle;
use banger_wire::api::{ErrorCode, StreamEvent};
use banger_wire::image::{ArtifactSource, ImageInfo, OciPullReport, OciPullRequest, PullRequest};
use bundles::{kernel_meta, kernel_src, Behavior, TestServer};
use common::{Daemon, TestEnv};
use oci::{layer, Registry, E};

#[derive(Default)]
struct Recorder(Vec<StreamEvent>);

impl StreamRenderer for Recorder {
    fn event(&mut self, event: &StreamEvent) {
        self.0.push(event.clone());
    }
    fn finish(&mut self, _success: bool) {}
}

async fn pull(client: &Client, req: &OciPullRequest) -> Result<OciPullReport, (ErrorCode, String)> {
    let mut rec = Recorder::default();
    match client.stream("/v1/oci/pull", req, &mut rec).await {
        Ok(v) => Ok(serde_json::from_value(v).unwrap()),
        Err(e) => {
            let api = e.api_error().expect("an API error").clone();
            Err((api.code, api.message))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_pull_installs_records_origin_and_reports_tag_changes() {
    if !(oci::require("docker-registry", "docker-registry")
        && oci::require("skopeo", "skopeo")
        && oci::require("htpasswd", "apache2-utils"))
    {
        return;
    }
    // A kernel to boot with, from a catalog served on loopback.
    let dir = tempfile::tempdir().unwrap();
    let ksrc = kernel_src(&dir.path().join("ksrc"));
    let kernel = bundle::pack(
        &ksrc,
        &kernel_meta("test-kernel"),
        &dir.path().join("k.tar.zst"),
    )
    .unwrap();
    let server = TestServer::start();
    server.route(
        "/b/k.tar.zst",
        Behavior::Full(std::fs::read(&kernel.path).unwrap()),
    );
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        format!(
            "format_version = 1\nbase_url = \"{}/b\"\n\n[[kernel]]\nname = \"test-kernel\"\nversion = \"{}\"\nurl = \"k.tar.zst\"\nsize = {}\nsha256 = \"{}\"\n",
            server.base_url, kernel.manifest.version, kernel.size, kernel.sha256
        ),
    )
    .unwrap();
    let env = TestEnv::new();
    let mut cmd = env.command(common::daemon_bin());
    cmd.env("BANGER_CATALOG_FILE", &catalog)
        .env_remove("BANGER_CATALOG_URL")
        .env_remove("DOCKER_CONFIG");
    let daemon = Daemon::start_with(&env, cmd).await;
    let client = daemon.client();

    let reg = Registry::start(Some(("bob", "hunter2-long")));
    let base = layer(&oci::bootable_base());
    let v1 = layer(&[E::File("etc/release", 0o644, b"v1")]);
    reg.push(&[&base, &v1], "team/dev", "stable");
    let reference = format!("{}/team/dev:stable", reg.addr());
    let req = OciPullRequest {
        reference: reference.clone(),
        kernel_ref: "test-kernel".into(),
        name: Some("dev".into()),
        size_bytes: None,
        platform: None,
        apt_source: None,
    };

    // Checked before any download: the kernel must exist.
    let (code, msg) = pull(&client, &req).await.unwrap_err();
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

    // No credentials yet: a clear 401.
    let (code, msg) = pull(&client, &req).await.unwrap_err();
    assert_eq!(code, ErrorCode::Forbidden, "{msg}");
    assert!(msg.contains("401") && msg.contains(&reg.addr()), "{msg}");

    // The daemon reads the user's Docker config.
    let docker = env.layout.home.join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"username":"bob","password":"hunter2-long"}}}}}}"#,
            reg.addr()
        ),
    )
    .unwrap();
    let first = pull(&client, &req).await.unwrap();
    assert_eq!(first.name, "dev");
    assert_eq!(first.origin.reference, reference);
    assert_eq!((first.layers, first.layers_cached), (2, 0));
    assert_eq!(first.previous_digest, None);
    assert_eq!(first.init, "systemd");
    let info: ImageInfo = client.get_json("/v1/images/dev").await.unwrap();
    assert_eq!(info.source, ArtifactSource::Oci);
    assert_eq!(info.kernel, "test-kernel");
    assert_eq!(info.oci.as_ref(), Some(&first.origin));
    assert!(!format!("{:?}", daemon_log(&env)).contains("hunter2-long"));
    let rootfs = std::path::PathBuf::from(&info.rootfs);
    assert_eq!(oci::debugfs(&rootfs, "cat /etc/release"), "v1");

    // Same tag, same content: unchanged, nothing downloaded.
    let again = pull(&client, &req).await.unwrap();
    assert_eq!(
        again.previous_digest.as_deref(),
        Some(first.origin.reference_digest.as_str())
    );
    assert_eq!(again.origin.reference_digest, first.origin.reference_digest);
    assert_eq!((again.layers_cached, again.downloaded_bytes), (2, 0));

    // The tag moves: the report says so, and only the new layer is fetched.
    let v2 = layer(&[E::File("etc/release", 0o644, b"v2")]);
    reg.push(&[&base, &v2], "team/dev", "stable");
    let moved = pull(&client, &req).await.unwrap();
    assert_eq!(
        moved.previous_digest.as_deref(),
        Some(first.origin.reference_digest.as_str())
    );
    assert_ne!(moved.origin.reference_digest, first.origin.reference_digest);
    assert_eq!(moved.layers_cached, 1);
    assert_eq!(reg.blob_gets(&base.digest), 1);
    let info: ImageInfo = client.get_json("/v1/images/dev").await.unwrap();
    assert_eq!(
        oci::debugfs(std::path::Path::new(&info.rootfs), "cat /etc/release"),
        "v2"
    );

    // Another reference under the same name is refused; so is a catalog
    // name's image being overwritten by accident.
    let other = OciPullRequest {
        reference: format!("{}/team/other:1", reg.addr()),
        ..req.clone()
    };
    let (code, msg) = pull(&client, &other).await.unwrap_err();
    assert_eq!(code, ErrorCode::Conflict, "{msg}");
    assert!(msg.contains("--name"), "{msg}");
    // A reference that does not parse is a plain 400 before the stream.
    let bad = OciPullRequest {
        reference: "Not A Ref::".into(),
        ..req.clone()
    };
    let (code, _) = pull(&client, &bad).await.unwrap_err();
    assert_eq!(code, ErrorCode::BadRequest);
    drop(server);
}

fn daemon_log(env: &TestEnv) -> String {
    env.log()
}
