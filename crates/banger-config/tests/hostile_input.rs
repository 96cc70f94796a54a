//! Arbitrary and hostile config files, 10,000 cases each: parsing never
//! panics, and every refusal points at the place to fix: a syntax error
//! names a line and column inside the file, an invalid value names its key
//! (a key the file really contains) and its line.

use std::path::Path;

use banger_config::{parse_with, ConfigError, EnvOverrides};
use banger_fuzz::{config, noise};
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "log_level",
    "ssh_key_path",
    "firecracker_bin",
    "qemu_bin",
    "vmm",
    "default_image_name",
    "auto_stop_stale_after",
    "stats_poll_interval",
    "metrics_poll_interval",
    "serial_log_max",
    "bridge_name",
    "bridge_ip",
    "cidr",
    "tap_pool_size",
    "default_dns",
    "catalog_url",
    "insecure_registries",
    "vcpu",
    "memory_mib",
    "disk_size",
    "host",
    "guest",
    "mode",
    "surprise",
    "\"cidr\"",
    "'vmm'",
    "vm_defaults.vcpu",
    "vm_defaults.disk_size",
    "a.b.c",
];

const VALUES: &[&str] = &[
    "\"debug\"",
    "\"~/.ssh/id_ed25519\"",
    "\"/usr/bin/qemu-system-x86_64\"",
    "\"../../etc/shadow\"",
    "\"~root/x\"",
    "\"\"",
    "\"qemu\"",
    "\"firecracker\"",
    "\"auto\"",
    "\"10m\"",
    "\"0s\"",
    "\"99999999999999999999h\"",
    "\"banger0\"",
    "\"eth0\"",
    "\"bangerAAAAAAAAAAAAAAAAA\"",
    "\"172.16.0.1\"",
    "\"172.16.0.0/24\"",
    "\"172.16.0.0/33\"",
    "\"0.0.0.0/0\"",
    "\"10.0.0.1/8\"",
    "\"::1\"",
    "[\"1.1.1.1\", \"::1\"]",
    "[\"x\"]",
    "[]",
    "[[]]",
    "\"https://example.test/catalog\"",
    "\"file:///etc\"",
    "\"ftp://x\"",
    "0",
    "-1",
    "4",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "nan",
    "-inf",
    "1.5",
    "true",
    "\"8G\"",
    "\"0G\"",
    "\"18446744073709551615G\"",
    "\"1.5T\"",
    "1979-05-27T07:32:00Z",
    "{ vcpu = 2 }",
    "{ host = \"~/x\", guest = \"/root/x\" }",
    "{}",
    "\"\\u0000\"",
    "\"\\u001b[2J\"",
    "'''multi\nline'''",
];

const HEADERS: &[&str] = &[
    "[vm_defaults]",
    "[[file_sync]]",
    "[network]",
    "[file_sync]",
    "[[vm_defaults]]",
    "[vm_defaults.extra]",
    "[",
    "[[",
    "[\"vm_defaults\"]",
];

/// Characters for junk lines: TOML's punctuation and a few key letters.
const JUNK: &[u8] = b"=[]{}\"'.,#\\ \tkv0123";

/// A document of plausible lines: known and unknown keys with well- and
/// ill-typed values, table headers, comments and junk.
fn document() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        8 => (prop::sample::select(KEYS), prop::sample::select(VALUES))
            .prop_map(|(k, v)| format!("{k} = {v}")),
        2 => prop::sample::select(HEADERS).prop_map(str::to_owned),
        1 => Just("# comment".to_owned()),
        1 => Just(String::new()),
        1 => (0..24usize, any::<u64>()).prop_map(|(n, seed)| {
            noise(n, seed)
                .iter()
                .map(|b| char::from(JUNK[usize::from(*b) % JUNK.len()]))
                .collect()
        }),
    ];
    prop::collection::vec(line, 0..12).prop_map(|l| l.join("\n"))
}

fn check(src: &str) -> Result<(), TestCaseError> {
    let home = Path::new("/home/someone");
    let lines = src.lines().count().max(1);
    match parse_with(
        src,
        Path::new("/cfg/config.toml"),
        home,
        &EnvOverrides::default(),
    ) {
        Ok(_) => {}
        Err(ConfigError::Syntax {
            path, line, column, ..
        }) => {
            prop_assert_eq!(path, Path::new("/cfg/config.toml"));
            prop_assert!(line >= 1 && line <= lines + 1, "line {} of {}", line, lines);
            prop_assert!(column >= 1);
        }
        Err(ConfigError::Invalid { path, problems }) => {
            prop_assert_eq!(path, Path::new("/cfg/config.toml"));
            prop_assert!(!problems.is_empty());
            for p in problems {
                prop_assert!(p.line >= 1 && p.line <= lines, "{}", p);
                prop_assert!(!p.message.is_empty(), "{}", p);
                // The key names something the file really says.
                let head = p.key.split(['.', '[']).next().unwrap_or_default();
                prop_assert!(!head.is_empty() && src.contains(head), "{} in {:?}", p, src);
            }
        }
        Err(e) => prop_assert!(false, "unexpected error kind: {}", e),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Assembled documents: parsed, or refused naming the key and line.
    #[test]
    fn config_files_are_parsed_or_refused_naming_the_key(src in document()) {
        check(&src)?;
    }

    /// Arbitrary text: never a panic.
    #[test]
    fn arbitrary_text_never_panics(n in 0..300usize, seed in any::<u64>()) {
        let src = String::from_utf8_lossy(&noise(n, seed)).into_owned();
        check(&src)?;
    }
}
