//! The real `banger` binary running `config check` and `config show`.

use std::path::PathBuf;
use std::process::{Command, Output};

/// A scratch directory removed on drop, even when the test fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "banger-config-cli-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(dir.join("home")).unwrap();
        Scratch(dir)
    }

    fn home(&self) -> PathBuf {
        self.0.join("home")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `banger ARGS` with a clean environment pointing at this directory:
    /// per-user mode, no config unless the test names one.
    fn banger(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_banger"));
        cmd.args(args)
            .env_clear()
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.0.join("xdg-config"))
            .env("XDG_STATE_HOME", self.0.join("xdg-state"))
            .env("XDG_RUNTIME_DIR", self.0.join("run"))
            .env("BANGER_INSTALL_FILE", self.0.join("no-install.toml"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run banger")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn check(out: &Output, code: i32) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    (stdout, stderr)
}

const GOOD: &str = r#"vmm = "qemu"
cidr = "10.50.0.0/24"
tap_pool_size = 8

[vm_defaults]
memory_mib = 1024

[[file_sync]]
host = "~/.gitconfig"
guest = "~/.gitconfig"
mode = "0644"
"#;

const BAD: &str = r#"vmm = "qemu"

colour = "blue"

[[file_sync]]
host = "~/a"
guest = "~/a"

[[file_sync]]
host = "~/b"
guest = "/etc/b"
"#;

#[test]
fn check_accepts_a_good_file() {
    let s = Scratch::new("good");
    let good = s.write("good.toml", GOOD);
    let (stdout, stderr) = check(
        &s.banger(&["config", "check", good.to_str().unwrap()], &[]),
        0,
    );
    assert_eq!(stdout.trim(), format!("{}: ok", good.display()));
    assert_eq!(stderr, "");
}

#[test]
fn check_rejects_a_bad_file_naming_line_and_key() {
    let s = Scratch::new("bad");
    let bad = s.write("bad.toml", BAD);
    let (stdout, stderr) = check(
        &s.banger(&["config", "check", bad.to_str().unwrap()], &[]),
        1,
    );
    assert_eq!(stdout, "");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{}:3: colour: unknown key", bad.display())),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{}:11: file_sync[1].guest: ", bad.display()))
            && lines[1].contains("must be under ~/ or /root/"),
        "{stderr}"
    );
}

#[test]
fn check_reports_malformed_toml_and_missing_files() {
    let s = Scratch::new("malformed");
    let broken = s.write("broken.toml", "vmm = \"qemu\"\n[vm_defaults\n");
    let (_, stderr) = check(
        &s.banger(&["config", "check", broken.to_str().unwrap()], &[]),
        1,
    );
    assert!(
        stderr.starts_with(&format!("{}:2:", broken.display())),
        "{stderr}"
    );
    assert!(stderr.contains("invalid TOML"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let missing = s.0.join("missing.toml");
    let (_, stderr) = check(
        &s.banger(&["config", "check", missing.to_str().unwrap()], &[]),
        1,
    );
    assert!(stderr.contains("missing.toml: no such file"), "{stderr}");
}

#[test]
fn check_defaults_to_the_active_config() {
    let s = Scratch::new("active");
    // No file at the default path: defaults apply, which is fine.
    let (stdout, _) = check(&s.banger(&["config", "check"], &[]), 0);
    let default = s.0.join("xdg-config/banger/config.toml");
    assert!(
        stdout.starts_with(&format!("{}: ok", default.display())),
        "{stdout}"
    );

    std::fs::create_dir_all(default.parent().unwrap()).unwrap();
    std::fs::write(&default, BAD).unwrap();
    let (_, stderr) = check(&s.banger(&["config", "check"], &[]), 1);
    assert!(
        stderr.contains(&format!("{}:3: colour", default.display())),
        "{stderr}"
    );

    // --config and BANGER_CONFIG pick another file.
    let good = s.write("good.toml", GOOD);
    let good = good.to_str().unwrap();
    check(&s.banger(&["--config", good, "config", "check"], &[]), 0);
    check(
        &s.banger(&["config", "check"], &[("BANGER_CONFIG", good)]),
        0,
    );
}

#[test]
fn show_json_gives_every_key_with_provenance() {
    let s = Scratch::new("show-json");
    let good = s.write("good.toml", GOOD);
    let out = s.banger(
        &[
            "--config",
            good.to_str().unwrap(),
            "config",
            "show",
            "--json",
        ],
        &[("BANGER_CATALOG_URL", "http://127.0.0.1:9/v1")],
    );
    let (stdout, _) = check(&out, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("show --json prints JSON");
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 25, "{stdout}");
    assert_eq!(
        v["insecure_registries"],
        serde_json::json!({"value": [], "provenance": "built-in"})
    );
    assert_eq!(
        v["serial_log_max"],
        serde_json::json!({"value": "2M", "provenance": "built-in"})
    );
    assert_eq!(
        v["vmm"],
        serde_json::json!({"value": "qemu", "provenance": "config"})
    );
    assert_eq!(
        v["cidr"],
        serde_json::json!({"value": "10.50.0.0/24", "provenance": "config"})
    );
    assert_eq!(
        v["bridge_ip"],
        serde_json::json!({"value": "10.50.0.1", "provenance": "built-in"})
    );
    assert_eq!(
        v["catalog_url"],
        serde_json::json!({"value": "http://127.0.0.1:9/v1", "provenance": "env"})
    );
    assert_eq!(v["vm_defaults.memory_mib"]["value"], 1024);
    assert_eq!(v["vm_defaults.memory_mib"]["provenance"], "config");
    let vcpu = v["vm_defaults.vcpu"]["provenance"].as_str().unwrap();
    assert!(vcpu == "host" || vcpu == "built-in", "{vcpu}");
    assert_eq!(
        v["vm_defaults.disk_size"],
        serde_json::json!({"value": "8G", "provenance": "built-in"})
    );
    let home = s.home();
    assert_eq!(
        v["ssh_key_path"]["value"],
        home.join(".local/state/banger/ssh/id_ed25519")
            .to_str()
            .unwrap()
    );
    assert_eq!(
        v["file_sync"]["value"][0]["host"],
        home.join(".gitconfig").to_str().unwrap()
    );
    assert_eq!(v["firecracker_bin"]["value"], serde_json::Value::Null);
}

#[test]
fn show_text_has_one_key_per_line() {
    let s = Scratch::new("show-text");
    let good = s.write("good.toml", GOOD);
    let (stdout, _) = check(
        &s.banger(&["--config", good.to_str().unwrap(), "config", "show"], &[]),
        0,
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("# config file: {}", good.display()));
    assert_eq!(lines.len(), 26, "{stdout}");
    let line = |key: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} missing:\n{stdout}"))
    };
    assert!(
        line("vmm").contains("\"qemu\"") && line("vmm").ends_with("# config"),
        "{stdout}"
    );
    assert!(line("log_level").ends_with("# built-in"), "{stdout}");
    assert!(line("tap_pool_size").contains("= 8"), "{stdout}");
}

#[test]
fn show_fails_on_a_bad_or_missing_config() {
    let s = Scratch::new("show-bad");
    let bad = s.write("bad.toml", BAD);
    let (stdout, stderr) = check(
        &s.banger(&["--config", bad.to_str().unwrap(), "config", "show"], &[]),
        1,
    );
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(&format!("{}:3: colour: unknown key", bad.display())),
        "{stderr}"
    );
    let missing = s.0.join("nope.toml");
    let (_, stderr) = check(
        &s.banger(
            &["--config", missing.to_str().unwrap(), "config", "show"],
            &[],
        ),
        1,
    );
    assert!(stderr.contains("nope.toml does not exist"), "{stderr}");
}
