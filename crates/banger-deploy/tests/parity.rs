//! Parity between the NixOS module and `banger system install`: the module
//! is evaluated with nixpkgs' `lib` (`../shared/nixpkgs-lib`) and stub
//! NixOS options by Debian's `nix-instantiate`
//! (tests/nixos/parity/eval.nix), and what it defines must equal what the
//! Rust installer renders from the same nix/units.json.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use banger_deploy::install::{metadata, placeholders};
use banger_deploy::owner::Owner;
use banger_deploy::spec::{RenderedSection, Spec};
use serde_json::Value;

/// `nix-instantiate` flags: evaluate only, with a store that needs neither
/// the Nix daemon nor root.
const NIX_EVAL: [&str; 6] = [
    "--store",
    "dummy://",
    "--eval",
    "--strict",
    "--json",
    "--readonly-mode",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// nixpkgs' lib: `BANGER_NIXPKGS_LIB`, else `../shared/nixpkgs-lib/lib`
/// beside the workspace.
fn nixpkgs_lib() -> Option<PathBuf> {
    let p = std::env::var_os("BANGER_NIXPKGS_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/nixpkgs-lib/lib"));
    p.join("default.nix").is_file().then_some(p)
}

/// The evaluation's JSON, or `None` (with the reason printed) when this
/// host cannot evaluate Nix and tests may skip.
fn evaluated(test: &str) -> Option<&'static Value> {
    static EVAL: OnceLock<Result<Value, String>> = OnceLock::new();
    if !common::tool_or_skip(test, "nix-instantiate") {
        return None;
    }
    let Some(lib) = nixpkgs_lib() else {
        let missing = workspace().join("../shared/nixpkgs-lib/lib/default.nix");
        let ok = banger_test_support::Gate::named(test)
            .file(&missing, "or set BANGER_NIXPKGS_LIB to a nixpkgs lib")
            .check();
        assert!(!ok, "{} appeared while the test ran", missing.display());
        return None;
    };
    let result = EVAL.get_or_init(|| {
        let out = Command::new("nix-instantiate")
            .args(NIX_EVAL)
            .arg(workspace().join("tests/nixos/parity/eval.nix"))
            .arg("--arg")
            .arg("nixpkgsLib")
            .arg(&lib)
            .args(["--argstr", "version", banger_wire::VERSION])
            .output()
            .map_err(|e| format!("running nix-instantiate: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nix-instantiate failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("nix-instantiate output: {e}"))
    });
    match result {
        Ok(v) => Some(v),
        Err(e) => panic!("{test}: {e}"),
    }
}

/// The owner eval.nix declares (alice, uid 1500, group devs = 1600).
fn alice() -> Owner {
    Owner {
        name: "alice".into(),
        uid: 1500,
        gid: 1600,
        group: "devs".into(),
        home: "/home/alice".into(),
    }
}

/// A NixOS section (string or list per key) as rendered lines per key.
fn nix_section(v: &Value) -> RenderedSection {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let items = match v {
                Value::String(s) => vec![s.clone()],
                Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_owned()).collect(),
                other => panic!("{k}: unexpected value {other}"),
            };
            (k.clone(), items)
        })
        .collect()
}

fn messages(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn nixos_units_equal_what_system_install_renders() {
    let Some(ev) = evaluated("nixos_units_equal_what_system_install_renders") else {
        return;
    };
    let good = &ev["good"];
    assert_eq!(messages(&good["failedAssertions"]), Vec::<String>::new());
    let spec = Spec::builtin().unwrap();
    let rendered = spec
        .render_units(&placeholders(&alice(), &spec.layout.bin_dir))
        .unwrap();
    let nix_units = good["units"].as_object().unwrap();
    assert_eq!(
        nix_units.keys().collect::<Vec<_>>(),
        rendered.iter().map(|u| &u.name).collect::<Vec<_>>()
    );
    for u in &rendered {
        let n = &nix_units[&u.name];
        assert_eq!(
            nix_section(&n["serviceConfig"]),
            u.service,
            "{} [Service]",
            u.name
        );
        assert_eq!(nix_section(&n["unitConfig"]), u.unit, "{} [Unit]", u.name);
        let wanted: Vec<String> = serde_json::from_value(n["wantedBy"].clone()).unwrap();
        assert_eq!(wanted, u.install["WantedBy"], "{} [Install]", u.name);
    }
}

#[test]
fn nixos_install_metadata_and_tmpfiles_equal_system_install() {
    let Some(ev) = evaluated("nixos_install_metadata_and_tmpfiles_equal_system_install") else {
        return;
    };
    let good = &ev["good"];
    let spec = Spec::builtin().unwrap();
    let mut expected = serde_json::to_value(metadata(&spec, &alice())).unwrap();
    // TOML has no null: an unset optional key is simply absent.
    expected
        .as_object_mut()
        .unwrap()
        .retain(|_, v| !v.is_null());
    assert_eq!(good["installToml"], expected);
    // An explicit socket group lands in install.toml as the installer's
    // --socket-group writes it.
    let sg = &ev["socketGroup"];
    assert_eq!(messages(&sg["failedAssertions"]), Vec::<String>::new());
    let mut with_group = metadata(&spec, &alice());
    with_group.socket_group = Some("banger".into());
    assert_eq!(sg["installToml"], serde_json::to_value(with_group).unwrap());
    let tmpfiles: Vec<String> = serde_json::from_value(good["tmpfiles"].clone()).unwrap();
    assert_eq!(
        tmpfiles,
        spec.render_tmpfiles_lines(&placeholders(&alice(), &spec.layout.bin_dir))
            .unwrap()
    );
    let etc: Vec<String> = serde_json::from_value(good["etc"].clone()).unwrap();
    assert_eq!(etc, ["banger/config.toml", "banger/install.toml"]);
    let packages: Vec<String> = serde_json::from_value(good["systemPackages"].clone()).unwrap();
    assert_eq!(packages[0], format!("banger-{}", banger_wire::VERSION));
    assert!(packages.contains(&"e2fsprogs".to_owned()), "{packages:?}");
}

/// The module's banger-home unit creates, as the owner and before bangerd,
/// exactly the home directories the installer creates; its script really
/// does (run here against a scratch home) and refuses a symlink.
#[test]
fn nixos_home_dirs_unit_creates_what_system_install_creates() {
    let Some(ev) = evaluated("nixos_home_dirs_unit_creates_what_system_install_creates") else {
        return;
    };
    let home = &ev["good"]["home"];
    assert_eq!(home["serviceConfig"]["User"], "alice");
    assert_eq!(home["serviceConfig"]["Type"], "oneshot");
    assert_eq!(home["before"], serde_json::json!(["bangerd.service"]));
    assert_eq!(home["wantedBy"], serde_json::json!(["bangerd.service"]));
    let spec = Spec::builtin().unwrap();
    let script = home["script"].as_str().unwrap();

    let t = tempfile::tempdir().unwrap();
    let scratch = t.path().join("alice");
    std::fs::create_dir(&scratch).unwrap();
    let run = |script: &str| {
        Command::new("sh")
            .args(["-euc", script])
            .output()
            .expect("sh runs")
    };
    let local = script.replace("/home/alice", scratch.to_str().unwrap());
    assert_ne!(local, script, "the script names the owner's home");
    let out = run(&local);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    for d in &spec.home_dirs {
        let m = std::fs::symlink_metadata(scratch.join(d)).unwrap();
        assert!(m.is_dir(), "{d}");
        assert_eq!(m.permissions().mode() & 0o7777, 0o700, "{d}");
    }
    // Exactly those: nothing else appears in the home but their parents.
    let mut top: Vec<String> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, [".config", ".local"]);

    let other = t.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    let victim = t.path().join("bob");
    std::fs::create_dir_all(victim.join(".local")).unwrap();
    std::os::unix::fs::symlink(&other, victim.join(".local/state")).unwrap();
    let out = run(&script.replace("/home/alice", victim.to_str().unwrap()));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symlink"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 0);
}

#[test]
fn nixos_options_flow_into_settings_without_changing_the_units() {
    let Some(ev) = evaluated("nixos_options_flow_into_settings_without_changing_the_units") else {
        return;
    };
    let good = &ev["good"];
    assert_eq!(good["settings"]["bridge_name"], "banger0");
    assert_eq!(good["settings"]["cidr"], "172.16.0.0/24");
    assert!(good["settings"]["firecracker_bin"]
        .as_str()
        .unwrap()
        .ends_with("/bin/firecracker"));
    assert!(good["settings"]["qemu_bin"]
        .as_str()
        .unwrap()
        .ends_with("/bin/qemu-system-x86_64"));
    let custom = &ev["custom"];
    assert_eq!(messages(&custom["failedAssertions"]), Vec::<String>::new());
    assert_eq!(custom["settings"]["bridge_name"], "banger-lab");
    // An explicit setting beats the network option's default.
    assert_eq!(custom["settings"]["cidr"], "10.9.0.0/24");
    assert_eq!(custom["settings"]["vmm"], "qemu");
    assert!(
        custom["settings"].get("firecracker_bin").is_none(),
        "firecrackerPackage = null"
    );
    assert_eq!(custom["units"], good["units"]);
    assert_eq!(
        custom["resolved"], true,
        "dns.enable turns on systemd-resolved"
    );
}

#[test]
fn disabled_module_defines_no_units_files_or_dirs() {
    let Some(ev) = evaluated("disabled_module_defines_no_units_files_or_dirs") else {
        return;
    };
    let d = &ev["disabled"];
    for key in ["units", "tmpfiles", "etc", "failedAssertions"] {
        assert_eq!(d[key], serde_json::json!([]), "{key}");
    }
}

#[test]
fn preinstalled_images_are_registered_by_the_owner() {
    let Some(ev) = evaluated("preinstalled_images_are_registered_by_the_owner") else {
        return;
    };
    let im = &ev["images"];
    assert_eq!(messages(&im["failedAssertions"]), Vec::<String>::new());
    assert_eq!(im["serviceConfig"]["User"], "alice");
    let script = im["script"].as_str().unwrap();
    for needle in [
        "/usr/local/bin/banger image show debian-bookworm",
        "image register --name debian-bookworm",
        "--rootfs /nix/store/i-debian-bookworm/rootfs.ext4",
        "--kernel /nix/store/k-generic-6.12/vmlinux",
        "--initrd /nix/store/k-generic-6.12/initrd",
        "--modules /nix/store/k-generic-6.12/modules",
    ] {
        assert!(script.contains(needle), "{needle:?} missing from\n{script}");
    }
}

#[test]
fn assertions_explain_bad_configurations() {
    let Some(ev) = evaluated("assertions_explain_bad_configurations") else {
        return;
    };
    let cases: [(&str, &[&str]); 9] = [
        (
            "unknownSocketGroup",
            &["services.banger.socketGroup = \"nope\"", "no\nsuch group"],
        ),
        (
            "badCidr",
            &[
                "services.banger.network.cidr = \"172.16.0.300/24\"",
                "octet above 255",
            ],
        ),
        ("hostBitsCidr", &["\"172.16.0.1/24\"", "host bits set"]),
        (
            "badBridge",
            &[
                "services.banger.network.bridge = \"br0\"",
                "start with \"banger\"",
            ],
        ),
        (
            "missingOwner",
            &[
                "services.banger.owner = \"bob\"",
                "no such user",
                "users.users.bob = {",
            ],
        ),
        ("rootOwner", &["must be an unprivileged user, not \"root\""]),
        ("noUid", &["users.users.carol.uid must be set"]),
        ("dnsWithoutResolved", &["services.resolved.enable is false"]),
        ("foreignImage", &["services.banger.images", "hello"]),
    ];
    for (case, needles) in cases {
        let msgs = messages(&ev[case]);
        assert_eq!(
            msgs.len(),
            1,
            "{case}: exactly one failed assertion expected: {msgs:#?}"
        );
        for n in needles {
            assert!(msgs[0].contains(n), "{case}: {n:?} not in {:?}", msgs[0]);
        }
    }
}

#[test]
fn nixos_vm_tests_evaluate_and_their_scripts_compile() {
    let t = "nixos_vm_tests_evaluate_and_their_scripts_compile";
    if !common::tool_or_skip(t, "nix-instantiate") || !common::tool_or_skip(t, "python3") {
        return;
    }
    let out = Command::new("nix-instantiate")
        .args(NIX_EVAL)
        .arg(workspace().join("tests/nixos/parity/testscripts.nix"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tests: serde_json::Map<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<&str> = tests.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["helper-peer", "uninstall", "units", "vm-run"]);
    for (name, test) in &tests {
        let script = test["testScript"].as_str().unwrap();
        let mut py = Command::new("python3")
            .args([
                "-c",
                "import sys; compile(sys.stdin.read(), sys.argv[1], 'exec')",
                name,
            ])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        py.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let res = py.wait_with_output().unwrap();
        assert!(
            res.status.success(),
            "{name}: test script does not compile:\n{}\n{script}",
            String::from_utf8_lossy(&res.stderr)
        );
        assert!(script.contains("machine."), "{name}: empty test script");
    }
}

#[test]
fn flake_bundles_fetch_published_entries_and_explain_unpublished_ones() {
    let t = "flake_bundles_fetch_published_entries_and_explain_unpublished_ones";
    let Some(_) = evaluated(t) else { return };
    let lib = nixpkgs_lib().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    let sha = "ab".repeat(32);
    std::fs::write(
        &catalog,
        format!(
            "format_version = 1\nbase_url = \"https://mirror.example/b\"\n\
             [[kernel]]\nname = \"generic-6.12\"\nversion = \"1\"\nurl = \"k.tar.zst\"\nsize = 1\nsha256 = \"{sha}\"\n\
             [[image]]\nname = \"debian-bookworm\"\nversion = \"1\"\nkernel_ref = \"generic-6.12\"\nurl = \"i.tar.zst\"\nsize = 1\nsha256 = \"{sha}\"\n"
        ),
    )
    .unwrap();
    let out = Command::new("nix-instantiate")
        .args(NIX_EVAL)
        .arg(workspace().join("tests/nixos/parity/bundles.nix"))
        .arg("--arg")
        .arg("nixpkgsLib")
        .arg(&lib)
        .arg("--arg")
        .arg("publishedCatalog")
        .arg(&catalog)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();

    let p = &v["published"];
    assert_eq!(
        p["debian-bookworm"]["bundle"]["url"],
        "https://mirror.example/b/i.tar.zst"
    );
    assert_eq!(p["debian-bookworm"]["bundle"]["sha256"], sha.as_str());
    assert_eq!(p["debian-bookworm"]["recipe"]["outputHash"], sha.as_str());
    assert_eq!(p["debian-bookworm"]["meta"]["kernel"], "generic-6.12");
    assert_eq!(
        p["generic-6.12"]["bundle"]["url"],
        "https://mirror.example/b/k.tar.zst"
    );
    // The minimal image is still unpublished in that catalog.
    let unpublished = &p["debian-bookworm-minimal"]["bundle"];
    assert!(
        unpublished["script"]
            .as_str()
            .unwrap()
            .contains("not published"),
        "{unpublished}"
    );

    // The real catalog: whatever is unpublished fails with instructions,
    // whatever is published is fetched by its hash.
    let real_catalog = std::fs::read_to_string(workspace().join("images/catalog.toml")).unwrap();
    let real: toml::Value = toml::from_str(&real_catalog).unwrap();
    for (name, pkg) in v["real"].as_object().unwrap() {
        let published = ["image", "kernel"].iter().any(|k| {
            real.get(k)
                .and_then(|e| e.as_array())
                .is_some_and(|entries| {
                    entries.iter().any(|e| {
                        e["name"].as_str() == Some(name.as_str())
                            && e["sha256"].as_str().is_some_and(|s| !s.is_empty())
                    })
                })
        });
        if published {
            assert!(pkg["bundle"]["url"].is_string(), "{name}: {pkg}");
        } else {
            let script = pkg["bundle"]["script"].as_str().unwrap_or_default();
            assert!(script.contains(&format!("build {name}")), "{name}: {pkg}");
        }
        assert!(
            pkg["recipe"]["buildCommand"]
                .as_str()
                .unwrap()
                .contains(&format!("build {name} --output")),
            "{name}: {pkg}"
        );
    }
}
