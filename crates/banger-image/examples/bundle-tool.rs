//! Developer and publishing tool over the banger-image library, for use
//! before (and beside) the `banger image ...` commands:
//!
//! ```text
//! cargo run -p banger-image --example bundle-tool -- build image debian-bookworm-minimal --cache DIR [--agent PATH] [--force]
//! cargo run -p banger-image --example bundle-tool -- hash image debian-bookworm-minimal [--agent PATH]
//! cargo run -p banger-image --example bundle-tool -- install BUNDLE --kind image --name NAME --state DIR
//! cargo run -p banger-image --example bundle-tool -- catalog-set BUNDLE --url FILE_NAME [--catalog images/catalog.toml]
//! cargo run -p banger-image --example bundle-tool -- pack SRC_DIR --kind KIND --name NAME --out FILE [--version V] [--kernel-ref K] [--kernel-release R]
//! cargo run -p banger-image --example bundle-tool -- pull URL --kind KIND --name NAME --size N --sha256 HEX --state DIR
//! ```
//!
//! `build` uses the recipes in images/ of this checkout (not the compiled-in
//! copy), so edits take effect without rebuilding.

use std::path::PathBuf;
use std::process::ExitCode;

use banger_image::build::{self, BuildOptions};
use banger_image::store::{Origin, Store};
use banger_image::{Kind, Progress};

type Error = Box<dyn std::error::Error>;

fn usage() -> ! {
    eprintln!(
        "usage: bundle-tool build KIND NAME --cache DIR [--agent PATH] [--force]\n\
         \x20      bundle-tool hash KIND NAME [--agent PATH]\n\
         \x20      bundle-tool install BUNDLE --kind KIND --name NAME --state DIR\n\
         \x20      bundle-tool catalog-set BUNDLE --url FILE_NAME [--catalog PATH]\n\
         \x20      bundle-tool pack SRC_DIR --kind KIND --name NAME --out FILE [--version V] [--kernel-ref K] [--kernel-release R]\n\
         \x20      bundle-tool pull URL --kind KIND --name NAME --size N --sha256 HEX --state DIR"
    );
    std::process::exit(2)
}

fn kind(s: &str) -> Kind {
    match s {
        "image" => Kind::Image,
        "kernel" => Kind::Kernel,
        _ => usage(),
    }
}

/// `--flag value` pairs and bare flags after the positional arguments.
fn flags(args: &[String]) -> (Vec<String>, std::collections::HashMap<String, String>) {
    let mut pos = Vec::new();
    let mut map = std::collections::HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(f) = a.strip_prefix("--") {
            if f == "force" {
                map.insert(f.to_owned(), String::new());
            } else {
                map.insert(f.to_owned(), it.next().cloned().unwrap_or_else(|| usage()));
            }
        } else {
            pos.push(a.clone());
        }
    }
    (pos, map)
}

fn print_progress(p: Progress) {
    match (p.current, p.total) {
        (Some(c), Some(t)) => eprintln!("[{}] {} {c}/{t}", p.phase.as_str(), p.message),
        _ => eprintln!("[{}] {}", p.phase.as_str(), p.message),
    }
}

fn options(flags: &std::collections::HashMap<String, String>) -> Result<BuildOptions, Error> {
    let cache = flags
        .get("cache")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("banger-build-cache"));
    let mut opts = BuildOptions::new(cache);
    let images = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../images");
    opts.recipes = banger_image::recipe::RecipeSet::from_dir(&images)?;
    opts.agent_binary = flags.get("agent").map(PathBuf::from);
    opts.force = flags.contains_key("force");
    if let Ok(sde) = std::env::var("SOURCE_DATE_EPOCH") {
        opts.source_date_epoch = Some(sde.parse()?);
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), Error> {
    let (cmd, rest) = args.split_first().unwrap_or_else(|| usage());
    let (pos, flags) = flags(rest);
    match (cmd.as_str(), pos.as_slice()) {
        ("build", [k, name]) => {
            let opts = options(&flags)?;
            let start = std::time::Instant::now();
            let built = build::build(kind(k), name, &opts, &print_progress)?;
            println!(
                "{}\t{}\t{}\t{}\tcached={}\t{:.1}s",
                built.packed.path.display(),
                built.packed.size,
                built.packed.sha256,
                built.recipe_hash,
                built.cached,
                start.elapsed().as_secs_f64()
            );
        }
        ("hash", [k, name]) => {
            let opts = options(&flags)?;
            println!("{}", build::recipe_hash(kind(k), name, &opts)?);
        }
        ("install", [bundle]) => {
            let k = kind(
                flags
                    .get("kind")
                    .map(String::as_str)
                    .unwrap_or_else(|| usage()),
            );
            let name = flags.get("name").unwrap_or_else(|| usage());
            let state = flags.get("state").unwrap_or_else(|| usage());
            let path = PathBuf::from(bundle);
            let (_, sha) = banger_image::digest::sha256_file(&path)?;
            let origin = Origin::File {
                path: bundle.clone(),
                bundle_sha256: sha,
            };
            let inst = Store::new(state).install_file(&path, k, name, origin, &print_progress)?;
            println!("{}", inst.dir.display());
        }
        ("catalog-set", [bundle]) => {
            let url = flags.get("url").unwrap_or_else(|| usage());
            let catalog = flags.get("catalog").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../images/catalog.toml")
            });
            let path = PathBuf::from(bundle);
            let manifest = banger_image::bundle::read_manifest(&path)?;
            let (size, sha) = banger_image::digest::sha256_file(&path)?;
            let text = std::fs::read_to_string(&catalog)?;
            let new = banger_image::catalog::set_published(
                &text,
                manifest.kind,
                &manifest.name,
                &manifest.version,
                url,
                size,
                &sha,
            )?;
            std::fs::write(&catalog, new)?;
            println!(
                "{} {}: size {size} sha256 {sha} -> {}",
                manifest.kind,
                manifest.name,
                catalog.display()
            );
        }
        ("pack", [src]) => {
            let need = |k: &str| flags.get(k).cloned().unwrap_or_else(|| usage());
            let meta = banger_image::bundle::BundleMeta {
                kind: kind(&need("kind")),
                name: need("name"),
                version: flags.get("version").cloned().unwrap_or_else(|| "0".into()),
                created: std::env::var("SOURCE_DATE_EPOCH")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                recipe_hash: None,
                kernel_ref: flags.get("kernel-ref").cloned(),
                kernel_release: flags.get("kernel-release").cloned(),
            };
            let packed = banger_image::bundle::pack(
                &PathBuf::from(src),
                &meta,
                &PathBuf::from(need("out")),
            )?;
            println!(
                "{}\t{}\t{}",
                packed.path.display(),
                packed.size,
                packed.sha256
            );
        }
        ("pull", [url]) => {
            let need = |k: &str| flags.get(k).cloned().unwrap_or_else(|| usage());
            let entry = banger_image::catalog::Entry {
                kind: kind(&need("kind")),
                name: need("name"),
                version: "unknown".into(),
                url: url.clone(),
                size: need("size").parse()?,
                sha256: need("sha256"),
                kernel_ref: flags.get("kernel-ref").cloned(),
            };
            let store = Store::new(need("state"));
            let start = std::time::Instant::now();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let pulled = rt.block_on(banger_image::pull::pull(
                &entry,
                "http://unused",
                &store,
                &|_| {},
            ))?;
            println!(
                "{}\tdownloaded={}\t{:.3}s",
                pulled.installed.dir.display(),
                pulled.downloaded,
                start.elapsed().as_secs_f64()
            );
        }
        _ => usage(),
    }
    Ok(())
}
