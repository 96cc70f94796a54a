//! The unit hardening data (`nix/units.json`) and its rendering into systemd
//! unit files and a tmpfiles.d snippet.
//!
//! The same JSON is read by the NixOS module, so both deployment paths get the
//! same `[Unit]`/`[Service]`/`[Install]` settings. Rendering follows NixOS's
//! rules: keys in sorted order, a list value becomes one `Key=value` line per
//! element.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The hardening data, compiled in.
pub const UNITS_JSON: &str = include_str!("../../../nix/units.json");

/// Errors reading the unit data or substituting placeholders.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("nix/units.json is invalid: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("placeholder {placeholder} value {value:?} is unusable in a unit file: {reason}")]
    BadValue {
        placeholder: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("unit {unit}: {section}.{key} = {value:?} has an unknown placeholder")]
    UnknownPlaceholder {
        unit: String,
        section: String,
        key: String,
        value: String,
    },
    #[error("tmpfiles entry {value:?} has an unknown placeholder")]
    UnknownTmpfilesPlaceholder { value: String },
    #[error("home_dirs entry {path:?} must be a relative path of plain components")]
    BadHomeDir { path: String },
    #[error("layout.{key} = {path:?} must be an absolute, normalized path outside / itself, /home and /root")]
    BadLayout { key: &'static str, path: String },
}

/// The whole data file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Free text for readers of the JSON.
    pub comment: Vec<String>,
    /// Absolute paths of the system layout.
    pub layout: SpecLayout,
    /// Directories under the owner's home that bangerd may write (relative
    /// to the home); nothing else there is writable for it.
    pub home_dirs: Vec<String>,
    /// tmpfiles.d lines (with placeholders).
    pub tmpfiles: Vec<String>,
    /// Units by name without `.service`.
    pub units: BTreeMap<String, UnitSpec>,
}

/// Where a system install puts things (absolute paths on the target host).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SpecLayout {
    pub bin_dir: String,
    pub lib_dir: String,
    pub state_dir: String,
    pub cache_dir: String,
    pub run_dir: String,
    pub root_run_dir: String,
    pub config_path: String,
    pub install_toml: String,
    pub unit_dir: String,
    pub tmpfiles_conf: String,
}

/// One unit's three sections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitSpec {
    #[serde(rename = "Unit")]
    pub unit: Section,
    #[serde(rename = "Service")]
    pub service: Section,
    #[serde(rename = "Install")]
    pub install: Section,
}

/// A section: directive name → value(s), sorted like a Nix attribute set.
pub type Section = BTreeMap<String, Value>;

/// A directive value: one string, or a list rendered as repeated lines.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Value {
    One(String),
    Many(Vec<String>),
}

impl Value {
    /// The values in rendering order.
    pub fn items(&self) -> &[String] {
        match self {
            Value::One(s) => std::slice::from_ref(s),
            Value::Many(v) => v,
        }
    }
}

impl Spec {
    /// Parse the compiled-in data file.
    pub fn builtin() -> Result<Spec, SpecError> {
        let spec: Spec = serde_json::from_str(UNITS_JSON)?;
        spec.layout.validate()?;
        for d in &spec.home_dirs {
            crate::home::components(d).map_err(|_| SpecError::BadHomeDir { path: d.clone() })?;
        }
        Ok(spec)
    }
}

impl SpecLayout {
    /// Every path by key, in declaration order.
    pub fn entries(&self) -> [(&'static str, &str); 10] {
        [
            ("bin_dir", &self.bin_dir),
            ("lib_dir", &self.lib_dir),
            ("state_dir", &self.state_dir),
            ("cache_dir", &self.cache_dir),
            ("run_dir", &self.run_dir),
            ("root_run_dir", &self.root_run_dir),
            ("config_path", &self.config_path),
            ("install_toml", &self.install_toml),
            ("unit_dir", &self.unit_dir),
            ("tmpfiles_conf", &self.tmpfiles_conf),
        ]
    }

    /// Uninstall removes these paths recursively: they must be absolute,
    /// free of `.`/`..`, and never a home directory or `/`.
    pub fn validate(&self) -> Result<(), SpecError> {
        for (key, path) in self.entries() {
            let p = std::path::Path::new(path);
            let normal = p
                .components()
                .skip(1)
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            let forbidden = ["/home", "/root"].iter().any(|h| p.starts_with(h));
            if !p.is_absolute()
                || !normal
                || p.parent().is_none()
                || forbidden
                || path.ends_with('/')
            {
                return Err(SpecError::BadLayout {
                    key,
                    path: path.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Values substituted for `@owner@`, `@group@`, `@home@` and `@bindir@`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholders {
    pub owner: String,
    pub group: String,
    pub home: String,
    pub bin_dir: String,
}

impl Placeholders {
    /// Reject values that would change the meaning of a unit file: whitespace
    /// splits list directives, `%` is a systemd specifier, `@` would look
    /// like another placeholder.
    pub fn validate(&self) -> Result<(), SpecError> {
        let fields: [(&'static str, &str); 4] = [
            ("@owner@", &self.owner),
            ("@group@", &self.group),
            ("@home@", &self.home),
            ("@bindir@", &self.bin_dir),
        ];
        for (placeholder, value) in fields {
            let bad = |reason| SpecError::BadValue {
                placeholder,
                value: value.to_owned(),
                reason,
            };
            if value.is_empty() {
                return Err(bad("empty"));
            }
            if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad("contains whitespace or control characters"));
            }
            if value.contains(['%', '@', '"', '\'', '\\']) {
                return Err(bad("contains one of % @ \" ' \\"));
            }
        }
        for (placeholder, value) in [("@home@", &self.home), ("@bindir@", &self.bin_dir)] {
            if !value.starts_with('/') {
                return Err(SpecError::BadValue {
                    placeholder,
                    value: value.clone(),
                    reason: "not an absolute path",
                });
            }
        }
        Ok(())
    }

    /// Substitute every placeholder; `None` when the template holds an
    /// `@word@` token that is not one of ours (a typo in the data file).
    fn apply(&self, s: &str) -> Option<String> {
        const KNOWN: [&str; 4] = ["owner", "group", "home", "bindir"];
        let mut rest = s;
        while let Some(start) = rest.find('@') {
            let after = &rest[start + 1..];
            let word_len = after.find(|c: char| !(c.is_ascii_lowercase() || c == '_'));
            match word_len {
                Some(n) if n > 0 && after[n..].starts_with('@') => {
                    if !KNOWN.contains(&&after[..n]) {
                        return None;
                    }
                    rest = &after[n + 1..];
                }
                // `@system-service` and friends: not a placeholder.
                _ => rest = after,
            }
        }
        Some(
            s.replace("@owner@", &self.owner)
                .replace("@group@", &self.group)
                .replace("@home@", &self.home)
                .replace("@bindir@", &self.bin_dir),
        )
    }
}

/// A section after substitution: directive → its lines' values.
pub type RenderedSection = BTreeMap<String, Vec<String>>;

/// A unit ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedUnit {
    /// Unit name without suffix (`bangerd`).
    pub name: String,
    pub unit: RenderedSection,
    pub service: RenderedSection,
    pub install: RenderedSection,
}

impl RenderedUnit {
    /// File name under the unit directory (`bangerd.service`).
    pub fn file_name(&self) -> String {
        format!("{}.service", self.name)
    }

    /// The unit file's text.
    pub fn text(&self) -> String {
        let mut out = String::from(
            "# Generated by `banger system install` from nix/units.json; do not edit.\n\
             # Rationale for each directive: docs/security.md.\n",
        );
        for (title, section) in [
            ("Unit", &self.unit),
            ("Service", &self.service),
            ("Install", &self.install),
        ] {
            out.push_str(&format!("\n[{title}]\n"));
            for (key, values) in section {
                for v in values {
                    out.push_str(&format!("{key}={v}\n"));
                }
            }
        }
        out
    }
}

fn render_section(
    unit: &str,
    title: &str,
    section: &Section,
    ph: &Placeholders,
) -> Result<RenderedSection, SpecError> {
    section
        .iter()
        .map(|(key, value)| {
            let items = value
                .items()
                .iter()
                .map(|v| {
                    ph.apply(v).ok_or_else(|| SpecError::UnknownPlaceholder {
                        unit: unit.to_owned(),
                        section: title.to_owned(),
                        key: key.clone(),
                        value: v.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((key.clone(), items))
        })
        .collect()
}

impl Spec {
    /// Every unit with placeholders substituted, in name order.
    pub fn render_units(&self, ph: &Placeholders) -> Result<Vec<RenderedUnit>, SpecError> {
        ph.validate()?;
        self.units
            .iter()
            .map(|(name, u)| {
                Ok(RenderedUnit {
                    name: name.clone(),
                    unit: render_section(name, "Unit", &u.unit, ph)?,
                    service: render_section(name, "Service", &u.service, ph)?,
                    install: render_section(name, "Install", &u.install, ph)?,
                })
            })
            .collect()
    }

    /// The tmpfiles.d lines with placeholders substituted.
    pub fn render_tmpfiles_lines(&self, ph: &Placeholders) -> Result<Vec<String>, SpecError> {
        ph.validate()?;
        self.tmpfiles
            .iter()
            .map(|l| {
                ph.apply(l)
                    .ok_or_else(|| SpecError::UnknownTmpfilesPlaceholder { value: l.clone() })
            })
            .collect()
    }

    /// The tmpfiles.d file's text.
    pub fn render_tmpfiles(&self, ph: &Placeholders) -> Result<String, SpecError> {
        let mut out = String::from(
            "# Generated by `banger system install` from nix/units.json; do not edit.\n\
             # Recreates banger's runtime directories at boot.\n",
        );
        for line in self.render_tmpfiles_lines(ph)? {
            out.push_str(&line);
            out.push('\n');
        }
        Ok(out)
    }
}

/// Parse a unit file written by [`RenderedUnit::text`] back into sections
/// (for tests and `status`): comments and blank lines are skipped.
pub fn parse_unit_text(text: &str) -> BTreeMap<String, RenderedSection> {
    let mut out: BTreeMap<String, RenderedSection> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(title) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = title.to_owned();
            out.entry(current.clone()).or_default();
        } else if let Some((k, v)) = line.split_once('=') {
            out.entry(current.clone())
                .or_default()
                .entry(k.to_owned())
                .or_default()
                .push(v.into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ph() -> Placeholders {
        Placeholders {
            owner: "alice".into(),
            group: "alice".into(),
            home: "/home/alice".into(),
            bin_dir: "/usr/local/bin".into(),
        }
    }

    #[test]
    fn builtin_data_parses_and_renders_both_units() {
        let spec = Spec::builtin().unwrap();
        let units = spec.render_units(&ph()).unwrap();
        let names: Vec<_> = units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["bangerd", "bangerd-root"]);
        let d = &units[0];
        assert_eq!(d.service["User"], ["alice"]);
        assert_eq!(d.service["ExecStart"], ["/usr/local/bin/bangerd"]);
        let r = &units[1];
        assert_eq!(
            r.service["ExecStart"],
            ["/usr/local/bin/bangerd-root serve --system"]
        );
        assert!(!r.service.contains_key("User"), "the helper runs as root");
        for u in &units {
            let parsed = parse_unit_text(&u.text());
            assert_eq!(parsed["Unit"], u.unit);
            assert_eq!(parsed["Service"], u.service);
            assert_eq!(parsed["Install"], u.install);
        }
    }

    #[test]
    fn list_values_render_one_line_each_in_sorted_key_order() {
        let spec = Spec::builtin().unwrap();
        let text = spec.render_units(&ph()).unwrap()[1].text();
        assert!(text.contains("CapabilityBoundingSet=CAP_NET_ADMIN\nCapabilityBoundingSet="));
        let keys: Vec<&str> = text
            .split("[Service]\n")
            .nth(1)
            .unwrap()
            .split("\n\n")
            .next()
            .unwrap()
            .lines()
            .map(|l| l.split_once('=').unwrap().0)
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn layout_agrees_with_unit_directories_and_tmpfiles() {
        let spec = Spec::builtin().unwrap();
        let l = &spec.layout;
        let d = &spec.units["bangerd"].service;
        let base = |p: &str| p.rsplit('/').next().unwrap().to_owned();
        assert_eq!(d["StateDirectory"], Value::One(base(&l.state_dir)));
        assert_eq!(d["CacheDirectory"], Value::One(base(&l.cache_dir)));
        assert_eq!(d["RuntimeDirectory"], Value::One(base(&l.run_dir)));
        let lines = spec.render_tmpfiles_lines(&ph()).unwrap();
        for dir in [&l.run_dir, &l.root_run_dir, &l.state_dir, &l.cache_dir] {
            assert!(
                lines.iter().any(|t| t.split(' ').nth(1) == Some(dir)),
                "{dir} in tmpfiles"
            );
        }
        let rw = spec.units["bangerd-root"].service["ReadWritePaths"]
            .items()
            .to_vec();
        assert!(rw.contains(&l.root_run_dir));
        assert_eq!(banger_wire::install::INSTALL_TOML, l.install_toml);
    }

    #[test]
    fn bangerd_writes_only_the_home_dirs_under_the_home() {
        let spec = Spec::builtin().unwrap();
        let units = spec.render_units(&ph()).unwrap();
        let rw = &units[0].service["ReadWritePaths"];
        let home_rw: Vec<&String> = rw.iter().filter(|p| p.contains("/home/alice")).collect();
        let expected: Vec<String> = spec
            .home_dirs
            .iter()
            .map(|d| format!("-/home/alice/{d}"))
            .collect();
        assert_eq!(home_rw, expected.iter().collect::<Vec<_>>());
        assert_eq!(units[0].service["ProtectHome"], ["read-only"]);
        // The ssh_config and the default SSH key live in them.
        assert_eq!(spec.home_dirs, [".config/banger", ".local/state/banger"]);
    }

    #[test]
    fn placeholder_values_that_would_change_the_unit_are_rejected() {
        let spec = Spec::builtin().unwrap();
        for (field, value) in [
            ("owner", "al ice"),
            ("owner", ""),
            ("group", "a%b"),
            ("home", "relative/home"),
            ("home", "/home/a\nExecStartPre=/bin/sh"),
            ("bin_dir", "/opt/@x@"),
        ] {
            let mut p = ph();
            match field {
                "owner" => p.owner = value.into(),
                "group" => p.group = value.into(),
                "home" => p.home = value.into(),
                _ => p.bin_dir = value.into(),
            }
            let err = spec.render_units(&p).unwrap_err().to_string();
            assert!(err.contains(&format!("{value:?}")), "{field}: {err}");
        }
    }

    #[test]
    fn layout_paths_outside_banger_are_rejected() {
        let mut l = Spec::builtin().unwrap().layout;
        for bad in [
            "/",
            "/home/alice/banger",
            "relative",
            "/var/lib/../..",
            "/root",
        ] {
            l.state_dir = bad.into();
            let err = l.validate().unwrap_err().to_string();
            assert!(
                err.contains("layout.state_dir") && err.contains(bad),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_placeholder_in_the_template_names_the_directive() {
        let mut spec = Spec::builtin().unwrap();
        spec.units
            .get_mut("bangerd")
            .unwrap()
            .service
            .insert("Environment".into(), Value::One("X=@nope@".into()));
        let err = spec.render_units(&ph()).unwrap_err().to_string();
        assert!(err.contains("bangerd: Service.Environment"), "{err}");
    }
}
