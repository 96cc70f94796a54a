//! `banger config show|check`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use banger_config::{
    config_path, load, load_with, resolve_vm_defaults, Config, EnvOverrides, HostFacts,
    ShownSetting,
};
use banger_host::paths::Layout;

use crate::cli::{ConfigCommand, GlobalArgs};
use banger_wire::routes::{self, NoBody};

use crate::client::Client;

/// Run a `banger config` subcommand.
pub fn run(global: &GlobalArgs, cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    let layout = Layout::detect().context("cannot determine banger's directories")?;
    match cmd {
        ConfigCommand::Show { json } => show(global, &layout, json),
        ConfigCommand::Check { path } => check(global, &layout, path),
    }
}

fn show(global: &GlobalArgs, layout: &Layout, json: bool) -> anyhow::Result<ExitCode> {
    let path = config_path(global.config.as_deref(), &layout.default_config);
    // A file named explicitly (--config / BANGER_CONFIG) must exist: silently
    // showing defaults for a typo would mislead.
    if global.config.is_some() && !path.exists() {
        anyhow::bail!("config file {} does not exist", path.display());
    }
    let cfg = load(&path, &layout.home)?;
    let vm = resolve_vm_defaults(&cfg, &HostFacts::detect());
    let rows = cfg.effective(&vm);
    let mut object = json_object(&rows)?;
    let in_force = match daemon_config(layout) {
        Ok(Some(served)) => differences(&object, &served),
        Ok(None) => BTreeMap::new(),
        Err(e) => {
            eprintln!("warning: cannot ask bangerd which values are in force: {e:#}");
            BTreeMap::new()
        }
    };
    let text = if json {
        for (key, value) in &in_force {
            object[key.as_str()]["in_force"] = value.clone();
        }
        let mut t = serde_json::to_string_pretty(&object)?;
        t.push('\n');
        t
    } else {
        render_text(&cfg, &path, &rows, &in_force)
    };
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        // `banger config show | head` closing the pipe early is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("cannot write to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}

fn check(global: &GlobalArgs, layout: &Layout, arg: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let explicit = arg.is_some() || global.config.is_some();
    let path = arg.unwrap_or_else(|| config_path(global.config.as_deref(), &layout.default_config));
    if !path.exists() {
        if explicit {
            eprintln!("{}: no such file", path.display());
            return Ok(ExitCode::FAILURE);
        }
        println!(
            "{}: ok (file not present; built-in defaults apply)",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Only the file is checked: environment overrides are not part of it.
    match load_with(&path, &layout.home, &EnvOverrides::default()) {
        Ok(_) => {
            println!("{}: ok", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The running daemon's config in force (`GET /v1/config`, which also makes
/// it read an edited file); `None` when no daemon runs (none is started).
fn daemon_config(layout: &Layout) -> anyhow::Result<Option<serde_json::Value>> {
    let runtime = crate::cli::runtime()?;
    runtime.block_on(async {
        match Client::connect_existing(layout).await? {
            Some(client) => Ok(Some(
                client.call(&routes::CONFIG.target(), &NoBody {}).await?,
            )),
            None => Ok(None),
        }
    })
}

/// The keys whose value in force (`served`, the daemon's `/v1/config`)
/// differs from the file's (`file`, [`json_object`]), with the value in force.
fn differences(
    file: &serde_json::Value,
    served: &serde_json::Value,
) -> BTreeMap<String, serde_json::Value> {
    let Some(file) = file.as_object() else {
        return BTreeMap::new();
    };
    file.iter()
        .filter_map(|(key, entry)| {
            let in_force = served.get(key)?.get("value")?;
            (entry.get("value") != Some(in_force)).then(|| (key.clone(), in_force.clone()))
        })
        .collect()
}

/// `key = value  # provenance`, aligned, after a header naming the file;
/// a key whose value in force in the daemon differs (`in_force`) says so.
fn render_text(
    cfg: &Config,
    path: &Path,
    rows: &[ShownSetting],
    in_force: &BTreeMap<String, serde_json::Value>,
) -> String {
    let header = match &cfg.source {
        Some(src) => format!("# config file: {}\n", src.display()),
        None => format!(
            "# config file: {} (not present; defaults apply)\n",
            path.display()
        ),
    };
    let lines: Vec<String> = rows
        .iter()
        .map(|r| match r.value_text() {
            Some(v) => format!("{} = {v}", r.key),
            None => format!("{} = (unset)", r.key),
        })
        .collect();
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut out = header;
    for (line, row) in lines.iter().zip(rows) {
        let pad = width - line.chars().count();
        out.push_str(&format!("{line}{:pad$}  # {}", "", row.provenance));
        if let Some(value) = in_force.get(row.key) {
            out.push_str(&format!(
                "; bangerd still uses {} until restarted",
                served_text(row, value)
            ));
        }
        out.push('\n');
    }
    out
}

/// A served JSON value written like the file's values (`"30s"`, inline
/// tables), or `(unset)`.
fn served_text(row: &ShownSetting, value: &serde_json::Value) -> String {
    let shown = ShownSetting {
        value: serde_json::from_value(value.clone()).ok(),
        ..row.clone()
    };
    shown.value_text().unwrap_or_else(|| "(unset)".to_owned())
}

/// `{ key: { "value": ..., "provenance": "..." } }`; unset values are null.
fn json_object(rows: &[ShownSetting]) -> anyhow::Result<serde_json::Value> {
    let mut map = serde_json::Map::new();
    for r in rows {
        let value = match &r.value {
            Some(v) => serde_json::to_value(v)?,
            None => serde_json::Value::Null,
        };
        map.insert(
            r.key.to_owned(),
            serde_json::json!({ "value": value, "provenance": r.provenance }),
        );
    }
    Ok(serde_json::Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Config, Vec<ShownSetting>) {
        let src = "vmm = \"qemu\"\n[[file_sync]]\nhost = \"~/.gitconfig\"\nguest = \"~/.gitconfig\"\nmode = \"0600\"\n";
        let cfg = banger_config::parse_with(
            src,
            Path::new("/c/config.toml"),
            Path::new("/home/a"),
            &EnvOverrides::default(),
        )
        .unwrap();
        let vm = resolve_vm_defaults(
            &cfg,
            &HostFacts {
                cpus: 8,
                mem_bytes: 16 << 30,
            },
        );
        let rows = cfg.effective(&vm);
        (cfg, rows)
    }

    #[test]
    fn text_lists_every_key_with_provenance() {
        let (cfg, rows) = sample();
        let text = render_text(&cfg, Path::new("/c/config.toml"), &rows, &BTreeMap::new());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# config file: /c/config.toml");
        assert_eq!(lines.len(), rows.len() + 1);
        let find = |key: &str| {
            *lines
                .iter()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("{key} missing from:\n{text}"))
        };
        assert!(find("vmm").contains("\"qemu\"") && find("vmm").ends_with("# config"));
        assert!(find("log_level").ends_with("# built-in"));
        assert!(find("firecracker_bin").contains("(unset)"));
        assert!(find("stats_poll_interval").contains("\"10s\""));
        assert!(find("default_dns").contains("[\"1.1.1.1\"]"));
        assert!(
            find("vm_defaults.vcpu").contains("= 2")
                && find("vm_defaults.vcpu").ends_with("# host")
        );
        assert!(find("vm_defaults.disk_size").contains("\"8G\""));
        assert!(find("file_sync").contains(
            "[{ guest = \"/root/.gitconfig\", host = \"/home/a/.gitconfig\", mode = \"0600\" }]"
        ));
        // The provenance column is aligned.
        let col: Vec<usize> = lines[1..]
            .iter()
            .map(|l| l.rfind("  # ").unwrap())
            .collect();
        assert!(col.windows(2).all(|w| w[0] == w[1]), "{text}");
    }

    #[test]
    fn json_maps_each_key_to_value_and_provenance() {
        let (_, rows) = sample();
        let v = json_object(&rows).unwrap();
        assert_eq!(
            v["vmm"],
            serde_json::json!({"value": "qemu", "provenance": "config"})
        );
        assert_eq!(
            v["tap_pool_size"],
            serde_json::json!({"value": 4, "provenance": "built-in"})
        );
        assert_eq!(v["qemu_bin"]["value"], serde_json::Value::Null);
        assert_eq!(v["vm_defaults.memory_mib"]["provenance"], "host");
        assert_eq!(v["file_sync"]["value"][0]["mode"], "0600");
        assert_eq!(v.as_object().unwrap().len(), rows.len());
    }

    #[test]
    fn values_in_force_that_differ_from_the_file_are_named() {
        let (cfg, rows) = sample();
        let file = json_object(&rows).unwrap();
        let mut served = file.clone();
        served["cidr"]["value"] = serde_json::json!("10.1.0.0/24");
        served["file_sync"]["value"] = serde_json::json!([]);
        let diff = differences(&file, &served);
        assert_eq!(diff.keys().collect::<Vec<_>>(), ["cidr", "file_sync"]);
        let text = render_text(&cfg, Path::new("/c/config.toml"), &rows, &diff);
        let line = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap()
                .to_owned()
        };
        assert!(
            line("cidr")
                .ends_with("# built-in; bangerd still uses \"10.1.0.0/24\" until restarted"),
            "{text}"
        );
        assert!(
            line("file_sync").contains("bangerd still uses [] until restarted"),
            "{text}"
        );
        assert!(!line("vmm").contains("bangerd still uses"), "{text}");
        assert!(differences(&file, &file).is_empty());
    }
}
