//! `banger image pull|build|list|show|delete|register|promote` and
//! `banger kernel pull|build|list|show|delete`: thin clients of the
//! `/v1/images` and `/v1/kernels` routes (docs/image-catalog.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use banger_host::paths::Layout;
use banger_wire::image::{
    is_oci_reference, ArtifactDeleted, BuildRequest, ImageInfo, ImageRegisterRequest,
    ImportRequest, InstallReport, KernelInfo, OciPullReport, OciPullRequest, PromoteRequest,
    PullRequest,
};
use banger_wire::routes::{self, NoBody, Route, Target};
use clap::{Args, Subcommand};

use crate::cli::GlobalArgs;
use crate::client::{self, Client};
use crate::vm_cmd::table;

/// `banger image pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Catalog name (debian-bookworm) or OCI reference
    /// (docker.io/library/debian:bookworm, localhost:5000/team/dev@sha256:...).
    #[arg(value_name = "NAME|REFERENCE")]
    pub reference: String,
    /// OCI only: the kernel the image boots with (required), e.g. generic-6.12.
    #[arg(long)]
    pub kernel_ref: Option<String>,
    /// OCI only: the image name (default: repository and tag, e.g. debian-bookworm).
    #[arg(long = "name", value_name = "NAME")]
    pub image_name: Option<String>,
    /// OCI only: size of rootfs.ext4, e.g. 4G (default: content plus headroom).
    #[arg(long)]
    pub size: Option<String>,
    /// OCI only: linux/amd64, the one platform banger guests run.
    #[arg(long)]
    pub platform: Option<String>,
    /// OCI only, images without sshd that use apt: the apt source line the
    /// first boot installs openssh-server from instead of the image's
    /// sources, e.g. "deb [trusted=yes] http://10.0.0.1:8080/ ./".
    #[arg(long, value_name = "DEB_LINE")]
    pub apt_source: Option<String>,
}

/// `banger image ...`
#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  banger image pull debian-bookworm        download, verify and install (with its kernel)
  banger image pull docker.io/library/debian:bookworm --kernel-ref generic-6.12   import an OCI image
  banger image build debian-bookworm       build it locally from its recipe instead (root)
  banger image list
  banger image show debian-bookworm --json
  banger image register --name mine --rootfs /srv/mine.ext4 --kernel-ref generic-6.12
  banger image promote mine                copy a registered image into banger's store
  banger image export debian-bookworm -o db.banger.tar    image + kernel in one verified file
  banger image import db.banger.tar        on another machine (or an https:// URL)
  banger image delete mine")]
pub enum ImageCommand {
    /// Download an image from the catalog, verify its sha256 while streaming
    /// and install it, with the kernel it boots with. Or import an OCI image
    /// from a registry (a reference with a registry, path, tag or digest):
    /// its layers are flattened into an ext4 root filesystem, without root
    /// (docs/oci-import.md).
    Pull(PullArgs),
    /// Build an image from its recipe and install it (and its kernel when
    /// missing). Needs root: a daemon running as root builds it, otherwise
    /// the system install's root helper does. Takes minutes.
    Build(BuildArgs),
    /// List installed and registered images.
    #[command(visible_alias = "ls")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show an image: size, kernel, source, dates and the VMs using it.
    Show {
        /// Image name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete an image (refused while a VM uses it). Registered files are
    /// left in place; only banger's record of them goes.
    #[command(visible_alias = "rm")]
    Delete {
        /// Image name.
        name: String,
    },
    /// Use an existing ext4 root filesystem on this host as an image, in
    /// place (not copied). Give the kernel as --kernel-ref (an installed
    /// kernel) or as --kernel (with optional --initrd and --modules), which
    /// registers a kernel named like the image.
    Register(RegisterArgs),
    /// Copy a registered image (and its registered kernel) into banger's
    /// managed store, so it no longer depends on the host files.
    Promote {
        /// Image name.
        name: String,
    },
    /// Write an installed image and its kernel to one file: two
    /// catalog-format bundles behind an index with their sizes and sha256.
    /// Carry it to another machine and `banger image import` it there.
    Export {
        /// Image name (it must be in banger's store; promote a registered one first).
        name: String,
        /// Where to write; `-` for standard output. Default: NAME.banger.tar
        /// in the current directory.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Install what `banger image export` wrote (or a single catalog bundle)
    /// from a file, or download it from an http(s) URL (a dropped connection
    /// is resumed). Every bundle is verified (sizes, sha256, manifests)
    /// before anything is installed; an image needs its kernel in the file
    /// or already installed.
    Import {
        /// A file path, or an http:// or https:// URL.
        #[arg(value_name = "FILE|URL")]
        source: String,
    },
}

/// `banger kernel ...`
#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:
  banger kernel pull generic-6.12
  banger kernel build generic-6.12         build it locally from its recipe (root)
  banger kernel list
  banger kernel show generic-6.12 --json
  banger kernel delete generic-6.12")]
pub enum KernelCommand {
    /// Download a kernel from the catalog, verify and install it.
    Pull {
        /// Catalog name, e.g. generic-6.12.
        name: String,
    },
    /// Build a kernel from its recipe and install it. Needs root (a root
    /// daemon or the system install's root helper).
    Build(BuildArgs),
    /// List installed and registered kernels.
    #[command(visible_alias = "ls")]
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show a kernel: version, files, source and the images and VMs using it.
    Show {
        /// Kernel name.
        name: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete a kernel (refused while an image or a VM uses it).
    #[command(visible_alias = "rm")]
    Delete {
        /// Kernel name.
        name: String,
    },
}

/// `banger image build` / `banger kernel build` arguments.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Recipe name, e.g. debian-bookworm or generic-6.12.
    pub name: String,
    /// Rebuild even when the build cache holds a bundle of this recipe.
    #[arg(long)]
    pub force: bool,
}

/// `banger image register` arguments.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Name for the image.
    #[arg(long)]
    pub name: String,
    /// Absolute path of the ext4 root filesystem.
    #[arg(long, value_name = "ABS_PATH")]
    pub rootfs: PathBuf,
    /// An installed (or registered) kernel to boot it with.
    #[arg(long, value_name = "KERNEL", conflicts_with_all = ["kernel", "initrd", "modules"])]
    pub kernel_ref: Option<String>,
    /// Absolute path of an x86_64 ELF vmlinux with a PVH entry note.
    #[arg(long, value_name = "ABS_PATH", required_unless_present = "kernel_ref")]
    pub kernel: Option<PathBuf>,
    /// Absolute path of its initramfs.
    #[arg(long, value_name = "ABS_PATH", requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Absolute path of its `lib/modules/<release>` directory.
    #[arg(long, value_name = "ABS_PATH", requires = "kernel")]
    pub modules: Option<PathBuf>,
}

async fn connect(global: &GlobalArgs) -> anyhow::Result<Client> {
    let layout = Layout::detect()?;
    Ok(Client::connect(&layout, global.config.as_deref()).await?)
}

/// Run a `banger image` subcommand.
pub fn run_image(global: &GlobalArgs, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    crate::cli::runtime()?.block_on(async {
        let client = connect(global).await?;
        match cmd {
            ImageCommand::Pull(a) => {
                if is_oci_reference(&a.reference) {
                    oci_pull(&client, a).await
                } else {
                    if a.kernel_ref.is_some()
                        || a.image_name.is_some()
                        || a.size.is_some()
                        || a.platform.is_some()
                        || a.apt_source.is_some()
                    {
                        anyhow::bail!(
                            "--kernel-ref, --name, --size, --platform and --apt-source apply to OCI references \
                             (REGISTRY/REPO:TAG); {:?} is a catalog name",
                            a.reference
                        );
                    }
                    install(
                        &client,
                        routes::IMAGE_PULL.at(&a.reference),
                        &PullRequest {},
                    )
                    .await
                }
            }
            ImageCommand::Build(a) => {
                let body = BuildRequest { force: a.force };
                install(&client, routes::IMAGE_BUILD.at(&a.name), &body).await
            }
            ImageCommand::List { json } => {
                let list = client
                    .call(&routes::IMAGE_LIST.target(), &NoBody {})
                    .await?;
                output(json, &list, |l| format_image_list(&l.images))
            }
            ImageCommand::Show { name, json } => {
                let info = client
                    .call(&routes::IMAGE_SHOW.at(&name), &NoBody {})
                    .await?;
                output(json, &info, format_image_show)
            }
            ImageCommand::Delete { name } => {
                delete(&client, routes::IMAGE_DELETE, "image", &name).await
            }
            ImageCommand::Register(a) => {
                let req = register_request(&a)?;
                let info = client.call(&routes::IMAGE_REGISTER.target(), &req).await?;
                println!(
                    "registered image {} ({}, kernel {})",
                    info.name,
                    size(info.size_bytes),
                    info.kernel
                );
                Ok(())
            }
            ImageCommand::Promote { name } => {
                let mut render = client::stderr_renderer();
                let info = client
                    .call_stream(
                        &routes::IMAGE_PROMOTE.at(&name),
                        &PromoteRequest {},
                        render.as_mut(),
                    )
                    .await?;
                println!("image {} is now managed at {}", info.name, info.rootfs);
                Ok(())
            }
            ImageCommand::Export {
                name,
                output,
                force,
            } => export(&client, &name, output, force).await,
            ImageCommand::Import { source } => import(&client, &source).await,
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Where an export goes: a file (written beside its final name, then
/// renamed, so a failed export never leaves a truncated archive under the
/// name) or standard output.
enum ExportSink {
    File {
        tmp: tempfile::NamedTempFile,
        dest: PathBuf,
    },
    Stdout(std::io::Stdout),
}

async fn export(
    client: &Client,
    name: &str,
    output: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    use std::io::{IsTerminal, Write};
    let dest = output.unwrap_or_else(|| PathBuf::from(format!("{name}.banger.tar")));
    let mut sink = if dest == Path::new("-") {
        if std::io::stdout().is_terminal() {
            anyhow::bail!("refusing to write an archive to a terminal; redirect standard output or give -o FILE");
        }
        ExportSink::Stdout(std::io::stdout())
    } else {
        if dest.exists() && !force {
            anyhow::bail!(
                "{} exists; pass --force to replace it or choose another -o FILE",
                dest.display()
            );
        }
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".banger-export-")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        ExportSink::File {
            tmp,
            dest: dest.clone(),
        }
    };
    let mut render = client::stderr_renderer();
    render.event(&banger_wire::api::StreamEvent::Progress {
        phase: "pack".into(),
        message: format!("packing image {name} and its kernel"),
        current: None,
        total: None,
    });
    let resp = client
        .get_download(&routes::IMAGE_EXPORT.at(name).path)
        .await?;
    let total = resp
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let index: Option<banger_wire::image::ExportIndexSummary> = resp
        .headers()
        .get(banger_wire::image::EXPORT_INDEX_HEADER)
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok());
    let mut body = resp.into_body();
    let mut written = 0u64;
    let mut reported = 0u64;
    let shown = dest.display().to_string();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .with_context(|| format!("the export of {name} broke off after {written} bytes"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match &mut sink {
            ExportSink::File { tmp, .. } => tmp.write_all(&data),
            ExportSink::Stdout(out) => out.write_all(&data),
        }
        .with_context(|| format!("cannot write {shown}"))?;
        written += data.len() as u64;
        if written - reported >= 4 << 20 || Some(written) == total {
            reported = written;
            render.event(&banger_wire::api::StreamEvent::Progress {
                phase: "download".into(),
                message: format!("writing {shown}"),
                current: Some(written),
                total,
            });
        }
    }
    if let Some(t) = total {
        if written != t {
            render.finish(false);
            anyhow::bail!("the export of {name} ended after {written} of {t} bytes; nothing was written to {shown}");
        }
    }
    render.finish(true);
    match sink {
        ExportSink::File { tmp, dest } => {
            tmp.as_file()
                .sync_all()
                .with_context(|| format!("cannot sync {}", dest.display()))?;
            tmp.persist(&dest)
                .with_context(|| format!("cannot write {}", dest.display()))?;
            let what = index
                .map(|i| {
                    i.bundles
                        .iter()
                        .map(|b| format!("{} {}", b.kind, b.name))
                        .collect::<Vec<_>>()
                        .join(" + ")
                })
                .unwrap_or_else(|| format!("image {name}"));
            eprintln!("wrote {what} to {} ({})", dest.display(), size(written));
            eprintln!(
                "install it elsewhere with `banger image import {}`",
                dest.display()
            );
        }
        ExportSink::Stdout(mut out) => out.flush().context("cannot write standard output")?,
    }
    Ok(())
}

async fn import(client: &Client, source: &str) -> anyhow::Result<()> {
    let mut render = client::stderr_renderer();
    let report = if source.starts_with("http://") || source.starts_with("https://") {
        client
            .call_stream(
                &routes::IMAGE_IMPORT.target(),
                &ImportRequest {
                    url: source.to_owned(),
                },
                render.as_mut(),
            )
            .await?
    } else {
        let file = tokio::fs::File::open(source)
            .await
            .with_context(|| format!("cannot open {source}"))?;
        let meta = file
            .metadata()
            .await
            .with_context(|| format!("cannot stat {source}"))?;
        if !meta.is_file() {
            anyhow::bail!("{source} is not a regular file; give a file written by `banger image export`, a bundle, or an http(s) URL");
        }
        let label = Path::new(source)
            .canonicalize()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| source.to_owned());
        let target = routes::IMAGE_IMPORT_UPLOAD.target().query("name", &label);
        client
            .call_upload(&target, client::file_body(file), render.as_mut())
            .await?
    };
    print!("{}", format_import(&report));
    Ok(())
}

/// One line per bundle an import left installed.
pub fn format_import(report: &InstallReport) -> String {
    report
        .installed
        .iter()
        .map(|b| {
            let how = if b.fetched {
                "installed"
            } else {
                "already installed, identical"
            };
            format!("{} {} {} ({how})\n", b.kind, b.name, b.version)
        })
        .collect()
}

/// Run a `banger kernel` subcommand.
pub fn run_kernel(global: &GlobalArgs, cmd: KernelCommand) -> anyhow::Result<ExitCode> {
    crate::cli::runtime()?.block_on(async {
        let client = connect(global).await?;
        match cmd {
            KernelCommand::Pull { name } => {
                install(&client, routes::KERNEL_PULL.at(&name), &PullRequest {}).await
            }
            KernelCommand::Build(a) => {
                let body = BuildRequest { force: a.force };
                install(&client, routes::KERNEL_BUILD.at(&a.name), &body).await
            }
            KernelCommand::List { json } => {
                let list = client
                    .call(&routes::KERNEL_LIST.target(), &NoBody {})
                    .await?;
                output(json, &list, |l| format_kernel_list(&l.kernels))
            }
            KernelCommand::Show { name, json } => {
                let info = client
                    .call(&routes::KERNEL_SHOW.at(&name), &NoBody {})
                    .await?;
                output(json, &info, format_kernel_show)
            }
            KernelCommand::Delete { name } => {
                delete(&client, routes::KERNEL_DELETE, "kernel", &name).await
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Print `value` as pretty JSON, or as the text `render` makes of it.
fn output<T: serde::Serialize>(
    json: bool,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", render(value));
    }
    Ok(())
}

async fn oci_pull(client: &Client, a: PullArgs) -> anyhow::Result<()> {
    let Some(kernel_ref) = a.kernel_ref else {
        anyhow::bail!(
            "{} is an OCI reference: pass --kernel-ref KERNEL (e.g. generic-6.12; `banger kernel list`)",
            a.reference
        );
    };
    let size_bytes = a
        .size
        .as_deref()
        .map(banger_config::parse_size)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--size: {e}"))?;
    let body = OciPullRequest {
        reference: a.reference,
        kernel_ref,
        name: a.image_name,
        size_bytes,
        platform: a.platform,
        apt_source: a.apt_source,
    };
    let mut render = client::stderr_renderer();
    let report = client
        .call_stream(&routes::OCI_PULL.target(), &body, render.as_mut())
        .await?;
    print!("{}", format_oci_pull(&report));
    Ok(())
}

/// What an OCI pull did, and whether the tag moved since the last pull.
pub fn format_oci_pull(r: &OciPullReport) -> String {
    let mut out = format!(
        "image {} imported from {}\nmanifest {}\n{} layers ({} cached), {} downloaded, rootfs {}\ninit: {}\n",
        r.name,
        r.origin.reference,
        r.origin.manifest_digest,
        r.layers,
        r.layers_cached,
        size(r.downloaded_bytes),
        size(r.size_bytes),
        r.init,
    );
    if let Some(pm) = &r.sshd_installed_by {
        out.push_str(&format!("sshd: installed with {pm} on first boot\n"));
    }
    match &r.previous_digest {
        None => {}
        Some(d) if *d == r.origin.reference_digest => {
            out.push_str("unchanged since the last pull\n");
        }
        Some(d) => out.push_str(&format!(
            "changed since the last pull (was {d}, now {})\n",
            r.origin.reference_digest
        )),
    }
    out
}

async fn install<B: serde::Serialize>(
    client: &Client,
    target: Target<B, InstallReport>,
    body: &B,
) -> anyhow::Result<()> {
    let mut render = client::stderr_renderer();
    let report = client.call_stream(&target, body, render.as_mut()).await?;
    print!("{}", format_install(&report));
    Ok(())
}

/// One line per bundle a pull or build left installed.
pub fn format_install(report: &InstallReport) -> String {
    report
        .installed
        .iter()
        .map(|b| {
            let how = match (b.fetched, b.from_cache) {
                (false, _) => "already installed",
                (true, false) => "installed",
                (true, true) => "installed from the build cache",
            };
            format!("{} {} {} ({how})\n", b.kind, b.name, b.version)
        })
        .collect()
}

async fn delete(
    client: &Client,
    route: Route<NoBody, ArtifactDeleted>,
    kind: &str,
    name: &str,
) -> anyhow::Result<()> {
    let done = client.call(&route.at(name), &NoBody {}).await?;
    if done.existed {
        println!("deleted {kind} {}", done.name);
    } else {
        println!("{kind} {} does not exist", done.name);
    }
    Ok(())
}

fn abs(what: &str, p: &Path) -> anyhow::Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{what} path {} is not UTF-8", p.display()))?;
    Ok(s.to_owned())
}

/// The request body for `image register`; paths are sent as given (the
/// daemon refuses relative ones, naming them).
pub fn register_request(a: &RegisterArgs) -> anyhow::Result<ImageRegisterRequest> {
    let opt = |what: &str, p: &Option<PathBuf>| p.as_deref().map(|p| abs(what, p)).transpose();
    Ok(ImageRegisterRequest {
        name: a.name.clone(),
        rootfs: abs("rootfs", &a.rootfs)?,
        kernel_ref: a.kernel_ref.clone(),
        kernel: opt("kernel", &a.kernel)?,
        initrd: opt("initrd", &a.initrd)?,
        modules: opt("modules", &a.modules)?,
    })
}

fn or_dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

/// `YYYY-MM-DD` (UTC) of seconds since 1970.
pub fn date(secs: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The `banger image list` table.
pub fn format_image_list(images: &[ImageInfo]) -> String {
    let mut rows = vec![["NAME", "VERSION", "KERNEL", "SIZE", "SOURCE", "VMS"]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()];
    for i in images {
        rows.push(vec![
            i.name.clone(),
            i.version.clone(),
            i.kernel.clone(),
            size(i.size_bytes),
            i.source.to_string(),
            i.used_by.len().to_string(),
        ]);
    }
    table(&rows)
}

fn kv(rows: &[(&str, String)]) -> String {
    let w = rows.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{:<w$}  {v}\n", format!("{k}:")))
        .collect()
}

/// The `banger image show` text.
pub fn format_image_show(i: &ImageInfo) -> String {
    let mut rows = vec![
        ("name", i.name.clone()),
        ("version", i.version.clone()),
        ("arch", i.arch.clone()),
        ("kernel", i.kernel.clone()),
        ("size", size(i.size_bytes)),
        (
            "source",
            if i.managed {
                i.source.to_string()
            } else {
                format!("{} (not managed: files used in place)", i.source)
            },
        ),
    ];
    if let Some(o) = &i.origin {
        rows.push(("origin", o.clone()));
    }
    rows.push(("rootfs", i.rootfs.clone()));
    if let Some(c) = i.created {
        rows.push(("created", date(c)));
    }
    if let Some(t) = i.installed_at {
        rows.push(("installed", date(t as i64)));
    }
    if let Some(h) = &i.recipe_hash {
        rows.push(("recipe hash", h.clone()));
    }
    if let Some(o) = &i.oci {
        rows.push(("oci reference", o.reference.clone()));
        rows.push(("oci digest", o.reference_digest.clone()));
        rows.push(("manifest", o.manifest_digest.clone()));
    }
    rows.push(("used by", or_dash(&i.used_by)));
    kv(&rows)
}

/// A size as the config writes it when it is round (`2G`, `40M`), else in
/// binary units with one decimal (`78.3 MiB`) rather than raw bytes.
fn size(bytes: u64) -> String {
    let exact = banger_config::format_size(bytes);
    if bytes >= 1024 && exact.ends_with('B') {
        banger_wire::units::human_bytes(bytes)
    } else {
        exact
    }
}

/// The `banger kernel list` table.
pub fn format_kernel_list(kernels: &[KernelInfo]) -> String {
    let mut rows = vec![[
        "NAME", "VERSION", "RELEASE", "SIZE", "SOURCE", "IMAGES", "VMS",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for k in kernels {
        rows.push(vec![
            k.name.clone(),
            k.version.clone(),
            k.release.clone().unwrap_or_else(|| "-".into()),
            size(k.size_bytes),
            k.source.to_string(),
            k.used_by_images.len().to_string(),
            k.used_by_vms.len().to_string(),
        ]);
    }
    table(&rows)
}

/// The `banger kernel show` text.
pub fn format_kernel_show(k: &KernelInfo) -> String {
    let mut rows = vec![
        ("name", k.name.clone()),
        ("version", k.version.clone()),
        ("release", k.release.clone().unwrap_or_else(|| "-".into())),
        ("size", size(k.size_bytes)),
        (
            "source",
            if k.managed {
                k.source.to_string()
            } else {
                format!("{} (not managed: files used in place)", k.source)
            },
        ),
    ];
    if let Some(o) = &k.origin {
        rows.push(("origin", o.clone()));
    }
    rows.push(("vmlinux", k.vmlinux.clone()));
    rows.push(("initrd", k.initrd.clone().unwrap_or_else(|| "-".into())));
    rows.push(("modules", k.modules.clone().unwrap_or_else(|| "-".into())));
    if let Some(c) = k.created {
        rows.push(("created", date(c)));
    }
    if let Some(t) = k.installed_at {
        rows.push(("installed", date(t as i64)));
    }
    rows.push(("images", or_dash(&k.used_by_images)));
    rows.push(("vms", or_dash(&k.used_by_vms)));
    kv(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_wire::image::{ArtifactSource, InstalledBundle};

    fn image() -> ImageInfo {
        ImageInfo {
            name: "debian-bookworm".into(),
            version: "12.1".into(),
            arch: "x86_64".into(),
            kernel: "generic-6.12".into(),
            size_bytes: 2 << 30,
            source: ArtifactSource::Catalog,
            origin: Some("https://mirror.example/debian-bookworm-12.1.tar.zst".into()),
            managed: true,
            rootfs: "/state/images/debian-bookworm/rootfs.ext4".into(),
            created: Some(1_735_689_600),
            installed_at: Some(1_735_776_000),
            recipe_hash: None,
            used_by: vec!["dev".into(), "ci".into()],
            oci: None,
        }
    }

    #[test]
    fn oci_pull_report_says_whether_the_tag_moved() {
        use banger_wire::image::{OciOrigin, OciPullReport};
        let mut r = OciPullReport {
            name: "dev-a".into(),
            origin: OciOrigin {
                reference: "localhost:5000/team/dev:a".into(),
                reference_digest: "sha256:new".into(),
                manifest_digest: "sha256:new".into(),
            },
            previous_digest: None,
            layers: 2,
            layers_cached: 1,
            downloaded_bytes: 1 << 20,
            size_bytes: 1 << 30,
            init: "systemd".into(),
            sshd_installed_by: Some("apt".into()),
        };
        let out = format_oci_pull(&r);
        assert!(
            out.contains("image dev-a imported from localhost:5000/team/dev:a"),
            "{out}"
        );
        assert!(
            out.contains("2 layers (1 cached), 1M downloaded, rootfs 1G"),
            "{out}"
        );
        assert!(
            out.contains("sshd: installed with apt on first boot"),
            "{out}"
        );
        assert!(
            !out.contains("changed") && !out.contains("unchanged"),
            "{out}"
        );
        r.previous_digest = Some("sha256:new".into());
        assert!(format_oci_pull(&r).contains("unchanged since the last pull"));
        r.previous_digest = Some("sha256:old".into());
        assert!(format_oci_pull(&r)
            .contains("changed since the last pull (was sha256:old, now sha256:new)"));

        let mut i = image();
        i.source = ArtifactSource::Oci;
        i.oci = Some(r.origin.clone());
        let show = format_image_show(&i);
        assert!(
            show.contains("source:         oci") || show.contains("oci"),
            "{show}"
        );
        assert!(show.contains("localhost:5000/team/dev:a"), "{show}");
    }

    #[test]
    fn image_list_is_an_aligned_table() {
        let mut other = image();
        other.name = "mine".into();
        other.source = ArtifactSource::Registered;
        other.used_by.clear();
        let out = format_image_list(&[image(), other]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "NAME             VERSION  KERNEL        SIZE  SOURCE      VMS"
        );
        assert_eq!(
            lines[1],
            "debian-bookworm  12.1     generic-6.12  2G    catalog     2"
        );
        assert_eq!(
            lines[2],
            "mine             12.1     generic-6.12  2G    registered  0"
        );
    }

    #[test]
    fn image_show_names_kernel_source_dates_and_users() {
        let out = format_image_show(&image());
        assert!(out.contains("kernel:     generic-6.12\n"), "{out}");
        assert!(out.contains("source:     catalog\n"), "{out}");
        assert!(out.contains("created:    2025-01-01\n"), "{out}");
        assert!(out.contains("installed:  2025-01-02\n"), "{out}");
        assert!(out.contains("used by:    dev, ci\n"), "{out}");
        let mut reg = image();
        reg.managed = false;
        reg.source = ArtifactSource::Registered;
        reg.used_by.clear();
        let out = format_image_show(&reg);
        assert!(
            out.contains("registered (not managed: files used in place)"),
            "{out}"
        );
        assert!(out.contains("used by:    -\n"), "{out}");
    }

    #[test]
    fn kernel_views_count_images_and_vms() {
        let k = KernelInfo {
            name: "generic-6.12".into(),
            version: "6.12.95".into(),
            release: Some("6.12.95+bpo-cloud-amd64".into()),
            size_bytes: 40 << 20,
            source: ArtifactSource::Build,
            origin: None,
            managed: true,
            vmlinux: "/s/kernels/generic-6.12/vmlinux".into(),
            initrd: Some("/s/kernels/generic-6.12/initrd".into()),
            modules: None,
            created: Some(0),
            installed_at: None,
            used_by_images: vec!["debian-bookworm".into()],
            used_by_vms: vec![],
        };
        let list = format_kernel_list(std::slice::from_ref(&k));
        assert!(
            list.lines()
                .nth(1)
                .unwrap()
                .ends_with("40M   build   1       0"),
            "{list}"
        );
        let show = format_kernel_show(&k);
        assert!(show.contains("size:     40M\n"), "{show}");
        let odd = KernelInfo {
            size_bytes: 82_118_110,
            ..k.clone()
        };
        assert!(
            format_kernel_show(&odd).contains("size:     78.3 MiB\n"),
            "{}",
            format_kernel_show(&odd)
        );
        assert!(show.contains("images:   debian-bookworm\n"), "{show}");
        assert!(show.contains("vms:      -\n"), "{show}");
        assert!(show.contains("created:  1970-01-01\n"), "{show}");
    }

    #[test]
    fn install_report_says_what_was_fetched() {
        let r = InstallReport {
            installed: vec![
                InstalledBundle {
                    kind: "kernel".into(),
                    name: "generic-6.12".into(),
                    version: "6.12.95".into(),
                    fetched: false,
                    from_cache: false,
                    bundle_sha256: None,
                },
                InstalledBundle {
                    kind: "image".into(),
                    name: "debian-bookworm".into(),
                    version: "12.1".into(),
                    fetched: true,
                    from_cache: false,
                    bundle_sha256: Some("ab".repeat(32)),
                },
                InstalledBundle {
                    kind: "image".into(),
                    name: "debian-bookworm-minimal".into(),
                    version: "12.1".into(),
                    fetched: true,
                    from_cache: true,
                    bundle_sha256: None,
                },
            ],
        };
        assert_eq!(
            format_install(&r),
            "kernel generic-6.12 6.12.95 (already installed)\nimage debian-bookworm 12.1 (installed)\n\
             image debian-bookworm-minimal 12.1 (installed from the build cache)\n"
        );
    }

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_735_689_599), "2024-12-31");
    }
}
