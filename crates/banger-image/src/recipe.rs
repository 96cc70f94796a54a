//! Build recipes: `images/kernel/<name>.toml`, `images/image/<name>.toml`
//! and the files they include, compiled into the binary (so an installed
//! `banger` can build without a source checkout) or read from a directory.
//!
//! The recipe hash is the sha256 over every input of a build: the recipe
//! file(s) (an image's `extends` chain too), every file they include, the
//! builder version, and extra inputs such as a guest agent binary. Two
//! builds with the same hash are meant to give the same bundle, so the hash
//! keys the build cache (`<cache>/images/<hash>.tar.zst`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::manifest::{validate_name, Kind};

/// Bumped whenever the build code changes what a recipe produces, so
/// cached bundles of the old code are not reused.
pub const BUILDER_VERSION: u32 = 2;

/// The recipe files compiled into the binary (paths relative to `images/`).
/// A test checks this list against the directory.
const EMBEDDED: &[(&str, &[u8])] = &[
    (
        "catalog.toml",
        include_bytes!("../../../images/catalog.toml"),
    ),
    (
        "files/initrd/init",
        include_bytes!("../../../images/files/initrd/init"),
    ),
    (
        "files/mke2fs.conf",
        include_bytes!("../../../images/files/mke2fs.conf"),
    ),
    (
        "files/rootfs/banger-cmdline-dns.service",
        include_bytes!("../../../images/files/rootfs/banger-cmdline-dns.service"),
    ),
    (
        "files/rootfs/banger-ssh-hostkey.service",
        include_bytes!("../../../images/files/rootfs/banger-ssh-hostkey.service"),
    ),
    (
        "files/rootfs/banger-guest-agent.service",
        include_bytes!("../../../images/files/rootfs/banger-guest-agent.service"),
    ),
    (
        "files/rootfs/banger-guest-apply.service",
        include_bytes!("../../../images/files/rootfs/banger-guest-apply.service"),
    ),
    (
        "files/rootfs/banger-guest-load",
        include_bytes!("../../../images/files/rootfs/banger-guest-load"),
    ),
    (
        "files/rootfs/cmdline-dns",
        include_bytes!("../../../images/files/rootfs/cmdline-dns"),
    ),
    (
        "files/rootfs/fstab",
        include_bytes!("../../../images/files/rootfs/fstab"),
    ),
    (
        "files/rootfs/hostname",
        include_bytes!("../../../images/files/rootfs/hostname"),
    ),
    (
        "files/rootfs/hosts",
        include_bytes!("../../../images/files/rootfs/hosts"),
    ),
    (
        "files/rootfs/resolv.conf",
        include_bytes!("../../../images/files/rootfs/resolv.conf"),
    ),
    (
        "files/rootfs/sshd_config",
        include_bytes!("../../../images/files/rootfs/sshd_config"),
    ),
    (
        "image/debian-bookworm-minimal.toml",
        include_bytes!("../../../images/image/debian-bookworm-minimal.toml"),
    ),
    (
        "image/debian-bookworm.toml",
        include_bytes!("../../../images/image/debian-bookworm.toml"),
    ),
    (
        "kernel/generic-6.12.toml",
        include_bytes!("../../../images/kernel/generic-6.12.toml"),
    ),
];

/// The mke2fs configuration every image build uses (in the recipe set).
pub const MKE2FS_CONF: &str = "files/mke2fs.conf";

/// Errors loading or checking recipes.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe directory {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no {kind} recipe named {name:?} (known: {known})")]
    Unknown {
        kind: Kind,
        name: String,
        known: String,
    },
    #[error("recipe {path}: not UTF-8")]
    NotUtf8 {
        path: String,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("recipe {path}: {source}")]
    Parse {
        path: String,
        // Boxed: toml's error is large and every build result carries it.
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("recipe {path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: String,
        reason: String,
    },
    #[error("recipe {path} includes {file}, which is not in the recipe set")]
    MissingFile { path: String, file: String },
    #[error("recipe {path}: extends chain is too deep or circular")]
    ExtendsLoop { path: String },
}

/// Recipe files by path relative to `images/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeSet {
    files: BTreeMap<String, Vec<u8>>,
}

impl RecipeSet {
    /// The recipes compiled into this binary.
    pub fn embedded() -> RecipeSet {
        RecipeSet {
            files: EMBEDDED
                .iter()
                .map(|(p, b)| ((*p).to_owned(), b.to_vec()))
                .collect(),
        }
    }

    /// The recipes in a checkout's `images/` directory (development: edit a
    /// recipe and build without recompiling).
    pub fn from_dir(dir: &Path) -> Result<RecipeSet, RecipeError> {
        let mut files = BTreeMap::new();
        read_dir_into(dir, dir, &mut files)?;
        Ok(RecipeSet { files })
    }

    /// Every file path in the set.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Bytes of one file.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// Names of the recipes of `kind`.
    pub fn names(&self, kind: Kind) -> Vec<String> {
        let prefix = format!("{}/", kind.as_str());
        let mut names: Vec<String> = self
            .files
            .keys()
            .filter_map(|p| {
                p.strip_prefix(&prefix)?
                    .strip_suffix(".toml")
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    }

    fn recipe_text(&self, kind: Kind, name: &str) -> Result<(String, &str), RecipeError> {
        let path = format!("{}/{name}.toml", kind.as_str());
        let unknown = || RecipeError::Unknown {
            kind,
            name: name.to_owned(),
            known: self.names(kind).join(", "),
        };
        if validate_name(name).is_err() {
            return Err(unknown());
        }
        let bytes = self.files.get(&path).ok_or_else(unknown)?;
        let text = std::str::from_utf8(bytes).map_err(|source| RecipeError::NotUtf8 {
            path: path.clone(),
            source,
        })?;
        Ok((path, text))
    }

    /// The kernel recipe `name`, checked.
    pub fn kernel(&self, name: &str) -> Result<KernelRecipe, RecipeError> {
        let (path, text) = self.recipe_text(Kind::Kernel, name)?;
        let raw: RawKernel = toml::from_str(text).map_err(|source| RecipeError::Parse {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let r = KernelRecipe::from_raw(raw, &path)?;
        if r.name != name {
            return Err(invalid(
                &path,
                "name",
                format!("{:?} differs from the file name", r.name),
            ));
        }
        self.require(&path, &r.initrd.init)?;
        let inputs = vec![path, r.initrd.init.clone()];
        Ok(KernelRecipe { inputs, ..r })
    }

    /// The image recipe `name` (its `extends` chain merged), checked.
    pub fn image(&self, name: &str) -> Result<ImageRecipe, RecipeError> {
        let mut chain = Vec::new();
        let mut next = Some(name.to_owned());
        while let Some(n) = next {
            let (path, text) = self.recipe_text(Kind::Image, &n)?;
            if chain.len() >= 8 || chain.iter().any(|(p, _): &(String, RawImage)| p == &path) {
                return Err(RecipeError::ExtendsLoop { path });
            }
            let raw: RawImage = toml::from_str(text).map_err(|source| RecipeError::Parse {
                path: path.clone(),
                source: Box::new(source),
            })?;
            next = raw.extends.clone();
            chain.push((path, raw));
        }
        let top_path = chain[0].0.clone();
        let mut inputs: Vec<String> = chain.iter().map(|(p, _)| p.clone()).collect();
        let mut merged = RawImage::default();
        for (_, raw) in chain.into_iter().rev() {
            merged.merge(raw);
        }
        let r = ImageRecipe::from_raw(merged, &top_path)?;
        if r.name != name {
            return Err(invalid(
                &top_path,
                "name",
                format!("{:?} differs from the file name", r.name),
            ));
        }
        for f in &r.files {
            self.require(&top_path, &f.src)?;
            inputs.push(f.src.clone());
        }
        self.require(&top_path, MKE2FS_CONF)?;
        inputs.push(MKE2FS_CONF.to_owned());
        Ok(ImageRecipe { inputs, ..r })
    }

    fn require(&self, recipe: &str, file: &str) -> Result<(), RecipeError> {
        if self.files.contains_key(file) {
            Ok(())
        } else {
            Err(RecipeError::MissingFile {
                path: recipe.to_owned(),
                file: file.to_owned(),
            })
        }
    }

    /// sha256 over `inputs` (paths in this set, sorted and deduplicated),
    /// the builder version and `extra` named inputs.
    pub fn hash(&self, inputs: &[String], extra: &[(&str, &[u8])]) -> String {
        let mut h = crate::digest::Hasher::new();
        h.update(format!("banger-recipe builder={BUILDER_VERSION}\n"));
        let mut paths: Vec<&String> = inputs.iter().collect();
        paths.sort();
        paths.dedup();
        for p in paths {
            let bytes = self.files.get(p).map(Vec::as_slice).unwrap_or_default();
            h.update(format!("file {p} {}\n", bytes.len()));
            h.update(bytes);
        }
        for (name, bytes) in extra {
            h.update(format!("extra {name} {}\n", bytes.len()));
            h.update(bytes);
        }
        h.finish_hex()
    }
}

fn read_dir_into(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), RecipeError> {
    let err = |source| RecipeError::Read {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let path = entry.path();
        let ft = entry.file_type().map_err(err)?;
        if ft.is_dir() {
            read_dir_into(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path).map_err(|source| RecipeError::Read {
                path: path.clone(),
                source,
            })?;
            out.insert(rel, bytes);
        }
    }
    Ok(())
}

fn invalid(path: &str, field: &str, reason: impl Into<String>) -> RecipeError {
    RecipeError::Invalid {
        path: path.to_owned(),
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Characters allowed in anything that reaches a shell hook or a command
/// line (paths, unit and package names): no quoting problems possible.
fn shell_safe(s: &str, extra: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/+@:=~".contains(c) || extra.contains(c))
}

fn check_abs_path(path: &str, field: &str, value: &str) -> Result<(), RecipeError> {
    if !value.starts_with('/') || value.split('/').any(|c| c == "..") || !shell_safe(value, "") {
        return Err(invalid(
            path,
            field,
            format!("{value:?} must be an absolute path of [A-Za-z0-9._-/+@]"),
        ));
    }
    Ok(())
}

fn parse_mode(path: &str, field: &str, mode: &str) -> Result<u32, RecipeError> {
    if !(3..=4).contains(&mode.len()) {
        return Err(invalid(
            path,
            field,
            format!("{mode:?} must be 3-4 octal digits"),
        ));
    }
    u32::from_str_radix(mode, 8)
        .map_err(|_| invalid(path, field, format!("{mode:?} must be 3-4 octal digits")))
}

fn check_sha(path: &str, field: &str, sha: &str) -> Result<(), RecipeError> {
    if sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(invalid(path, field, "must be 64 lowercase hex digits"))
    }
}

fn check_sources(path: &str, sources: &[String]) -> Result<(), RecipeError> {
    if sources.is_empty() {
        return Err(invalid(
            path,
            "debian.sources",
            "at least one source is needed",
        ));
    }
    for s in sources {
        if !s.starts_with("deb ") || s.contains(['\'', '"', '\n', '\\', '`', '$']) {
            return Err(invalid(
                path,
                "debian.sources",
                format!("{s:?} must be a one-line `deb URI SUITE COMPONENTS`"),
            ));
        }
    }
    Ok(())
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

// ---------------------------------------------------------------- kernels

/// What a pinned package is used for in a kernel build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageRole {
    /// The kernel image package (vmlinuz + modules).
    Kernel,
    /// busybox-static for the initrd.
    Busybox,
    /// kmod, for depmod.
    Depmod,
}

/// A Debian package pinned by version and .deb sha256.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub role: PackageRole,
}

impl PinnedPackage {
    /// The file name apt gives the downloaded .deb (epoch colon escaped).
    pub fn deb_file_name(&self, arch: &str) -> String {
        format!(
            "{}_{}_{arch}.deb",
            self.name,
            self.version.replace(':', "%3a")
        )
    }
}

/// Debian sources of a kernel build.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelDebian {
    pub mirror: String,
    pub suite: String,
    pub sources: Vec<String>,
}

/// The initrd of a kernel build.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitrdSpec {
    /// Recipe-set path of the `/init` script.
    pub init: String,
    /// Modules loaded by `/init`, in order.
    pub modules: Vec<String>,
    /// busybox applets linked into `/bin`.
    pub applets: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    name: String,
    kind: Kind,
    version: String,
    source_date_epoch: i64,
    debian: KernelDebian,
    #[serde(rename = "package")]
    packages: Vec<PinnedPackage>,
    initrd: InitrdSpec,
}

/// A checked kernel recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRecipe {
    pub name: String,
    pub version: String,
    pub source_date_epoch: i64,
    pub debian: KernelDebian,
    pub packages: Vec<PinnedPackage>,
    pub initrd: InitrdSpec,
    /// Recipe-set paths this recipe consists of (for the hash).
    pub inputs: Vec<String>,
}

impl KernelRecipe {
    fn from_raw(raw: RawKernel, path: &str) -> Result<KernelRecipe, RecipeError> {
        if raw.kind != Kind::Kernel {
            return Err(invalid(path, "kind", "must be \"kernel\""));
        }
        validate_name(&raw.name).map_err(|e| invalid(path, "name", e.to_string()))?;
        if raw.version.is_empty() || !shell_safe(&raw.version, "") {
            return Err(invalid(
                path,
                "version",
                "must be non-empty without spaces or quotes",
            ));
        }
        check_sources(path, &raw.debian.sources)?;
        for p in &raw.packages {
            if !shell_safe(&p.name, "") || !shell_safe(&p.version, "") {
                return Err(invalid(
                    path,
                    "package",
                    format!(
                        "{:?}={:?} is not a package name and version",
                        p.name, p.version
                    ),
                ));
            }
            check_sha(path, &format!("package {}.sha256", p.name), &p.sha256)?;
        }
        for role in [
            PackageRole::Kernel,
            PackageRole::Busybox,
            PackageRole::Depmod,
        ] {
            if raw.packages.iter().filter(|p| p.role == role).count() != 1 {
                return Err(invalid(
                    path,
                    "package",
                    format!("exactly one package needs role {role:?}"),
                ));
            }
        }
        let word = |s: &String| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if raw.initrd.modules.is_empty() || !raw.initrd.modules.iter().all(word) {
            return Err(invalid(
                path,
                "initrd.modules",
                "module names of [A-Za-z0-9_-], at least one",
            ));
        }
        if !raw.initrd.applets.iter().all(word) || !raw.initrd.applets.iter().any(|a| a == "sh") {
            return Err(invalid(
                path,
                "initrd.applets",
                "applet names of [A-Za-z0-9_-], including sh",
            ));
        }
        Ok(KernelRecipe {
            name: raw.name,
            version: raw.version,
            source_date_epoch: raw.source_date_epoch,
            debian: raw.debian,
            packages: raw.packages,
            initrd: raw.initrd,
            inputs: Vec::new(),
        })
    }

    /// The package with `role`.
    pub fn package(&self, role: PackageRole) -> &PinnedPackage {
        self.packages
            .iter()
            .find(|p| p.role == role)
            .expect("validated: one per role")
    }
}

// ----------------------------------------------------------------- images

/// A file copied into an image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Recipe-set path.
    pub src: String,
    /// Absolute path in the image.
    pub dest: String,
    /// Octal mode, e.g. "0644".
    pub mode: String,
}

/// A binary taken from an npm package tarball (`npm pack`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NpmSpec {
    pub package: String,
    pub version: String,
    /// sha256 of the tarball.
    pub sha256: String,
    /// Path inside the tarball.
    pub member: String,
    /// Absolute path in the image.
    pub dest: String,
    pub mode: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImageDebian {
    mirror: Option<String>,
    security_mirror: Option<String>,
    suite: Option<String>,
    variant: Option<String>,
    sources: Option<Vec<String>>,
    #[serde(default)]
    packages: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSystemd {
    #[serde(default)]
    enable: Vec<String>,
    #[serde(default)]
    disable: Vec<String>,
    #[serde(default)]
    mask: Vec<String>,
    default_target: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    extends: Option<String>,
    name: Option<String>,
    kind: Option<Kind>,
    version: Option<String>,
    kernel_ref: Option<String>,
    source_date_epoch: Option<i64>,
    size: Option<String>,
    fs_uuid: Option<String>,
    #[serde(default)]
    debian: RawImageDebian,
    #[serde(default, rename = "file")]
    files: Vec<FileSpec>,
    #[serde(default)]
    npm: Vec<NpmSpec>,
    #[serde(default)]
    systemd: RawSystemd,
}

impl RawImage {
    /// Layer `child` over `self`: scalars replace, lists append.
    fn merge(&mut self, child: RawImage) {
        macro_rules! over {
            ($($f:ident).+) => { if child.$($f).+.is_some() { self.$($f).+ = child.$($f).+; } };
        }
        over!(name);
        over!(kind);
        over!(version);
        over!(kernel_ref);
        over!(source_date_epoch);
        over!(size);
        over!(fs_uuid);
        over!(debian.mirror);
        over!(debian.security_mirror);
        over!(debian.suite);
        over!(debian.variant);
        over!(debian.sources);
        self.debian.packages.extend(child.debian.packages);
        self.files.extend(child.files);
        self.npm.extend(child.npm);
        self.systemd.enable.extend(child.systemd.enable);
        self.systemd.disable.extend(child.systemd.disable);
        self.systemd.mask.extend(child.systemd.mask);
        over!(systemd.default_target);
    }
}

/// Debian bootstrap settings of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDebian {
    pub mirror: String,
    pub security_mirror: Option<String>,
    pub suite: String,
    /// mmdebstrap variant (`minbase`).
    pub variant: String,
    /// `deb` lines with `{mirror}` / `{security_mirror}` placeholders.
    pub sources: Vec<String>,
    pub packages: Vec<String>,
}

/// A checked image recipe (its `extends` chain merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecipe {
    pub name: String,
    pub version: String,
    pub kernel_ref: String,
    pub source_date_epoch: i64,
    /// rootfs.ext4 size in bytes.
    pub size: u64,
    /// ext4 UUID, also the directory hash seed.
    pub fs_uuid: String,
    pub debian: ImageDebian,
    pub files: Vec<FileSpec>,
    pub npm: Vec<NpmSpec>,
    pub enable: Vec<String>,
    pub disable: Vec<String>,
    /// Units linked to /dev/null: not started even when something wants them.
    pub mask: Vec<String>,
    /// `systemctl set-default` (a `.target`), when set.
    pub default_target: Option<String>,
    /// Recipe-set paths this recipe consists of (for the hash).
    pub inputs: Vec<String>,
}

impl ImageRecipe {
    fn from_raw(raw: RawImage, path: &str) -> Result<ImageRecipe, RecipeError> {
        let need =
            |v: Option<String>, field: &str| v.ok_or_else(|| invalid(path, field, "is required"));
        if raw.kind != Some(Kind::Image) {
            return Err(invalid(path, "kind", "must be \"image\""));
        }
        let name = need(raw.name, "name")?;
        validate_name(&name).map_err(|e| invalid(path, "name", e.to_string()))?;
        let version = need(raw.version, "version")?;
        if !shell_safe(&version, "") {
            return Err(invalid(
                path,
                "version",
                "must be non-empty without spaces or quotes",
            ));
        }
        let kernel_ref = need(raw.kernel_ref, "kernel_ref")?;
        validate_name(&kernel_ref).map_err(|e| invalid(path, "kernel_ref", e.to_string()))?;
        let source_date_epoch = raw
            .source_date_epoch
            .ok_or_else(|| invalid(path, "source_date_epoch", "is required"))?;
        let size_text = need(raw.size, "size")?;
        let size = banger_wire::units::parse_size(&size_text)
            .ok()
            .filter(|s| *s >= 64 << 20 && s % 4096 == 0)
            .ok_or_else(|| {
                invalid(
                    path,
                    "size",
                    format!("{size_text:?}: a size like 2G, at least 64M, 4 KiB aligned"),
                )
            })?;
        let fs_uuid = need(raw.fs_uuid, "fs_uuid")?;
        if !is_uuid(&fs_uuid) {
            return Err(invalid(path, "fs_uuid", "must be a lowercase UUID"));
        }
        let d = raw.debian;
        let sources = d.sources.unwrap_or_default();
        check_sources(path, &sources)?;
        for p in &d.packages {
            if !shell_safe(p, "") {
                return Err(invalid(
                    path,
                    "debian.packages",
                    format!("{p:?} is not a package name"),
                ));
            }
        }
        let debian = ImageDebian {
            mirror: need(d.mirror, "debian.mirror")?,
            security_mirror: d.security_mirror,
            suite: need(d.suite, "debian.suite")?,
            variant: need(d.variant, "debian.variant")?,
            sources,
            packages: d.packages,
        };
        for (field, v) in [
            ("debian.suite", &debian.suite),
            ("debian.variant", &debian.variant),
        ] {
            if !shell_safe(v, "") {
                return Err(invalid(
                    path,
                    field,
                    format!("{v:?} has unsupported characters"),
                ));
            }
        }
        for f in &raw.files {
            check_abs_path(path, "file.dest", &f.dest)?;
            parse_mode(path, "file.mode", &f.mode)?;
        }
        for n in &raw.npm {
            check_abs_path(path, "npm.dest", &n.dest)?;
            parse_mode(path, "npm.mode", &n.mode)?;
            check_sha(path, &format!("npm {}.sha256", n.package), &n.sha256)?;
            if !shell_safe(&n.package, "") || !shell_safe(&n.version, "") || n.member.contains("..")
            {
                return Err(invalid(
                    path,
                    "npm",
                    format!("{}@{} is not a package and version", n.package, n.version),
                ));
            }
        }
        for u in raw
            .systemd
            .enable
            .iter()
            .chain(&raw.systemd.disable)
            .chain(&raw.systemd.mask)
            .chain(&raw.systemd.default_target)
        {
            if !shell_safe(u, "") || u.contains('/') {
                return Err(invalid(
                    path,
                    "systemd",
                    format!("{u:?} is not a unit name"),
                ));
            }
        }
        if let Some(t) = &raw.systemd.default_target {
            if !t.ends_with(".target") {
                return Err(invalid(
                    path,
                    "systemd.default_target",
                    format!("{t:?} is not a .target unit"),
                ));
            }
        }
        Ok(ImageRecipe {
            name,
            version,
            kernel_ref,
            source_date_epoch,
            size,
            fs_uuid,
            debian,
            files: raw.files,
            npm: raw.npm,
            enable: raw.systemd.enable,
            disable: raw.systemd.disable,
            mask: raw.systemd.mask,
            default_target: raw.systemd.default_target,
            inputs: Vec::new(),
        })
    }
}

/// Octal mode of a file/npm spec (validated when the recipe was loaded).
pub fn mode_of(mode: &str) -> u32 {
    u32::from_str_radix(mode, 8).unwrap_or(0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images")
    }

    #[test]
    fn embedded_set_matches_the_images_directory() {
        let dir = RecipeSet::from_dir(&images_dir()).unwrap();
        let embedded = RecipeSet::embedded();
        let a: Vec<&str> = dir.paths().collect();
        let b: Vec<&str> = embedded.paths().collect();
        assert_eq!(
            a, b,
            "update EMBEDDED in recipe.rs when adding files to images/"
        );
        assert_eq!(dir, embedded);
    }

    #[test]
    fn shipped_recipes_load() {
        let set = RecipeSet::embedded();
        assert_eq!(set.names(Kind::Kernel), ["generic-6.12"]);
        assert_eq!(
            set.names(Kind::Image),
            ["debian-bookworm", "debian-bookworm-minimal"]
        );
        let k = set.kernel("generic-6.12").unwrap();
        assert_eq!(
            k.package(PackageRole::Kernel).name,
            "linux-image-6.12.95+deb12-cloud-amd64"
        );
        assert_eq!(
            k.initrd.modules,
            [
                "failover",
                "net_failover",
                "virtio_mmio",
                "virtio_blk",
                "virtio_net"
            ]
        );
        let min = set.image("debian-bookworm-minimal").unwrap();
        assert!(min.npm.is_empty() && !min.debian.packages.contains(&"docker.io".to_owned()));
        let full = set.image("debian-bookworm").unwrap();
        assert_eq!(full.kernel_ref, "generic-6.12");
        assert!(full.debian.packages.contains(&"docker.io".to_owned()));
        assert!(
            full.debian.packages.contains(&"openssh-server".to_owned()),
            "inherited"
        );
        assert_eq!(full.npm.len(), 1);
        assert_eq!(full.files.len(), min.files.len());
        assert!(full.disable.contains(&"docker.service".to_owned()));
        // Masks append down the extends chain; the default target is inherited.
        assert!(min.mask.contains(&"getty@.service".to_owned()));
        assert!(!min.mask.contains(&"apparmor.service".to_owned()));
        assert!(full.mask.contains(&"getty@.service".to_owned()));
        assert!(full.mask.contains(&"apparmor.service".to_owned()));
        assert_eq!(full.default_target.as_deref(), Some("multi-user.target"));
        assert_eq!(full.size, 4 << 30);
        assert!(full
            .inputs
            .contains(&"image/debian-bookworm-minimal.toml".to_owned()));
    }

    #[test]
    fn hash_covers_included_files_and_extras() {
        let set = RecipeSet::embedded();
        let min = set.image("debian-bookworm-minimal").unwrap();
        let full = set.image("debian-bookworm").unwrap();
        let h = set.hash(&min.inputs, &[]);
        assert_eq!(h, set.hash(&min.inputs, &[]));
        assert_ne!(h, set.hash(&full.inputs, &[]));
        assert_ne!(h, set.hash(&min.inputs, &[("agent", b"x")]));
        let mut edited = set.clone();
        edited
            .files
            .get_mut("files/rootfs/sshd_config")
            .unwrap()
            .push(b'\n');
        assert_ne!(
            h,
            edited.hash(&min.inputs, &[]),
            "an included file changes the hash"
        );
    }

    #[test]
    fn unknown_recipe_lists_known() {
        let err = RecipeSet::embedded().image("nope").unwrap_err().to_string();
        assert!(err.contains("debian-bookworm-minimal"), "{err}");
        assert!(RecipeSet::embedded()
            .image("../kernel/generic-6.12")
            .is_err());
    }

    #[test]
    fn invalid_recipes_name_the_field() {
        let base = String::from_utf8(
            RecipeSet::embedded()
                .file("image/debian-bookworm-minimal.toml")
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        let cases = [
            ("size = \"2G\"", "size = \"2X\"", "size"),
            ("size = \"2G\"", "size = \"1M\"", "size"),
            (
                "dest = \"/etc/hostname\"",
                "dest = \"etc/hostname\"",
                "file.dest",
            ),
            (
                "dest = \"/etc/hostname\"",
                "dest = \"/etc/$(reboot)\"",
                "file.dest",
            ),
            ("mode = \"0644\"", "mode = \"rw\"", "file.mode"),
            ("fs_uuid = \"4f1b", "fs_uuid = \"XX1b", "fs_uuid"),
            ("\"jq\",", "\"jq; rm -rf /\",", "debian.packages"),
            ("\"ssh.service\",", "\"../ssh.service\",", "systemd"),
            ("\"getty@.service\",", "\"getty@.service $(x)\",", "systemd"),
            (
                "default_target = \"multi-user.target\"",
                "default_target = \"ssh.service\"",
                "systemd.default_target",
            ),
            ("kind = \"image\"", "kind = \"kernel\"", "kind"),
            (
                "src = \"files/rootfs/hosts\"",
                "src = \"files/rootfs/nope\"",
                "nope",
            ),
        ];
        for (from, to, needle) in cases {
            assert!(base.contains(from), "{from}");
            let mut set = RecipeSet::embedded();
            set.files.insert(
                "image/debian-bookworm-minimal.toml".into(),
                base.replacen(from, to, 1).into_bytes(),
            );
            let err = set
                .image("debian-bookworm-minimal")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{to}: expected {needle:?} in {err}");
        }
    }

    #[test]
    fn extends_loops_are_caught() {
        let mut set = RecipeSet::embedded();
        let t = "extends = \"debian-bookworm\"\n";
        let min = String::from_utf8(
            set.file("image/debian-bookworm-minimal.toml")
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        set.files.insert(
            "image/debian-bookworm-minimal.toml".into(),
            format!("{t}{min}").into_bytes(),
        );
        assert!(matches!(
            set.image("debian-bookworm"),
            Err(RecipeError::ExtendsLoop { .. })
        ));
    }

    #[test]
    fn deb_file_names_escape_the_epoch() {
        let k = RecipeSet::embedded().kernel("generic-6.12").unwrap();
        assert_eq!(
            k.package(PackageRole::Busybox).deb_file_name("amd64"),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
        );
    }
}
