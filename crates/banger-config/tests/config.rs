//! Config parsing and validation, end to end through the public API.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_config::{
    load_with, parse_with, resolve_vm_defaults, Config, ConfigError, EnvOverrides, FileSyncEntry,
    HostFacts, Provenance, Setting, VmmChoice,
};

const HOME: &str = "/home/tester";
const ORIGIN: &str = "/etc/banger/config.toml";

fn parse(src: &str) -> Result<Config, ConfigError> {
    parse_with(
        src,
        Path::new(ORIGIN),
        Path::new(HOME),
        &EnvOverrides::default(),
    )
}

fn parse_err(src: &str) -> ConfigError {
    match parse(src) {
        Ok(cfg) => panic!("expected an error for:\n{src}\ngot {cfg:#?}"),
        Err(e) => e,
    }
}

const FULL: &str = r#"# every key set
log_level = "debug"
firecracker_bin = "/opt/firecracker/bin/firecracker"
qemu_bin = "~/bin/qemu-system-x86_64"
vmm = "qemu"
ssh_key_path = "~/.ssh/banger_ed25519"
default_image_name = "ubuntu-noble"
auto_stop_stale_after = "2h"
stats_poll_interval = "30s"
metrics_poll_interval = "5m"
serial_log_max = "512K"
bridge_name = "banger-br1"
bridge_ip = "10.20.0.254"
cidr = "10.20.0.0/24"
tap_pool_size = 16
default_dns = ["9.9.9.9", "2620:fe::fe"]
catalog_url = "https://mirror.example.org/banger/v1/"

[network]
allow_host_ports = [8080, 53]
allow_guest_to_guest = true
allow_link_local = true
deny_destinations = ["192.168.0.0/16", "10.1.2.3/32"]

[vm_defaults]
vcpu = 3
memory_mib = 3072
disk_size = "16G"

[[file_sync]]
host = "~/.gitconfig"
guest = "~/.gitconfig"
mode = "0644"

[[file_sync]]
host = "/home/tester/.config/nvim"
guest = "/root/.config/nvim/"
"#;

#[test]
fn every_key_set_is_read_with_config_provenance() {
    let cfg = parse(FULL).unwrap();
    assert_eq!(cfg.source.as_deref(), Some(Path::new(ORIGIN)));
    assert_eq!(cfg.log_level, Setting::config("debug".to_owned()));
    assert_eq!(
        cfg.firecracker_bin,
        Setting::config(Some(PathBuf::from("/opt/firecracker/bin/firecracker")))
    );
    assert_eq!(
        cfg.qemu_bin,
        Setting::config(Some(PathBuf::from("/home/tester/bin/qemu-system-x86_64")))
    );
    assert_eq!(cfg.vmm, Setting::config(VmmChoice::Qemu));
    assert_eq!(
        cfg.ssh_key_path,
        Setting::config(PathBuf::from("/home/tester/.ssh/banger_ed25519"))
    );
    assert_eq!(
        cfg.default_image_name,
        Setting::config("ubuntu-noble".to_owned())
    );
    assert_eq!(
        cfg.auto_stop_stale_after,
        Setting::config(Some(Duration::from_secs(7200)))
    );
    assert_eq!(
        cfg.stats_poll_interval,
        Setting::config(Duration::from_secs(30))
    );
    assert_eq!(
        cfg.metrics_poll_interval,
        Setting::config(Duration::from_secs(300))
    );
    assert_eq!(cfg.serial_log_max, Setting::config(512 << 10));
    assert_eq!(cfg.bridge_name, Setting::config("banger-br1".to_owned()));
    assert_eq!(
        cfg.bridge_ip,
        Setting::config(Ipv4Addr::new(10, 20, 0, 254))
    );
    assert_eq!(cfg.cidr, Setting::config("10.20.0.0/24".parse().unwrap()));
    assert_eq!(cfg.tap_pool_size, Setting::config(16));
    let dns: Vec<IpAddr> = vec!["9.9.9.9".parse().unwrap(), "2620:fe::fe".parse().unwrap()];
    assert_eq!(cfg.default_dns, Setting::config(dns));
    // The trailing slash is dropped so callers can append `/path`.
    assert_eq!(
        cfg.catalog_url,
        Setting::config("https://mirror.example.org/banger/v1".to_owned())
    );
    assert_eq!(
        cfg.network.allow_host_ports,
        Setting::config(vec![8080, 53])
    );
    assert_eq!(cfg.network.allow_guest_to_guest, Setting::config(true));
    assert_eq!(cfg.network.allow_link_local, Setting::config(true));
    assert_eq!(
        cfg.network.deny_destinations,
        Setting::config(vec![
            "192.168.0.0/16".parse().unwrap(),
            "10.1.2.3/32".parse().unwrap()
        ])
    );
    assert_eq!(cfg.vm_defaults.vcpu, Some(3));
    assert_eq!(cfg.vm_defaults.memory_mib, Some(3072));
    assert_eq!(cfg.vm_defaults.disk_size, Some(16 << 30));
    assert_eq!(
        cfg.file_sync,
        vec![
            FileSyncEntry {
                host: "/home/tester/.gitconfig".into(),
                guest: "/root/.gitconfig".into(),
                mode: Some(0o644),
            },
            FileSyncEntry {
                host: "/home/tester/.config/nvim".into(),
                guest: "/root/.config/nvim".into(),
                mode: None,
            },
        ]
    );
    let vm = resolve_vm_defaults(
        &cfg,
        &HostFacts {
            cpus: 64,
            mem_bytes: 1 << 40,
        },
    );
    assert_eq!(vm.vcpu, Setting::config(3));
    assert_eq!(vm.memory_mib, Setting::config(3072));
    assert_eq!(vm.disk_bytes, Setting::config(16 << 30));
}

#[test]
fn empty_file_gives_built_in_defaults() {
    let cfg = parse("").unwrap();
    let d = Config::defaults(Path::new(HOME));
    assert_eq!(
        Config {
            source: None,
            ..cfg.clone()
        },
        d
    );
    assert_eq!(cfg.log_level, Setting::built_in("info".to_owned()));
    assert_eq!(cfg.firecracker_bin, Setting::built_in(None));
    assert_eq!(cfg.qemu_bin, Setting::built_in(None));
    assert_eq!(cfg.vmm, Setting::built_in(VmmChoice::Auto));
    assert_eq!(
        cfg.ssh_key_path,
        Setting::built_in(PathBuf::from(
            "/home/tester/.local/state/banger/ssh/id_ed25519"
        ))
    );
    assert_eq!(
        cfg.default_image_name,
        Setting::built_in("debian-bookworm".to_owned())
    );
    assert_eq!(cfg.auto_stop_stale_after, Setting::built_in(None));
    assert_eq!(
        cfg.stats_poll_interval,
        Setting::built_in(Duration::from_secs(10))
    );
    assert_eq!(
        cfg.metrics_poll_interval,
        Setting::built_in(Duration::from_secs(60))
    );
    assert_eq!(cfg.serial_log_max, Setting::built_in(2 << 20));
    assert_eq!(cfg.bridge_name, Setting::built_in("banger0".to_owned()));
    assert_eq!(
        cfg.bridge_ip,
        Setting::built_in(Ipv4Addr::new(172, 16, 0, 1))
    );
    assert_eq!(
        cfg.cidr,
        Setting::built_in("172.16.0.0/24".parse().unwrap())
    );
    assert_eq!(cfg.tap_pool_size, Setting::built_in(4));
    assert_eq!(
        cfg.default_dns,
        Setting::built_in(vec!["1.1.1.1".parse::<IpAddr>().unwrap()])
    );
    assert_eq!(
        cfg.catalog_url,
        Setting::built_in("https://images.banger.dev/v1".to_owned())
    );
    assert!(cfg.file_sync.is_empty());
}

#[test]
fn bridge_ip_defaults_to_the_first_address_of_a_configured_cidr() {
    let cfg = parse("cidr = \"10.9.8.0/23\"\n").unwrap();
    assert_eq!(cfg.cidr.provenance, Provenance::Config);
    assert_eq!(cfg.bridge_ip, Setting::built_in(Ipv4Addr::new(10, 9, 8, 1)));
}

#[test]
fn inline_and_dotted_forms_are_accepted() {
    let src = r#"
vm_defaults = { vcpu = 2, disk_size = "2G" }
file_sync = [{ host = "~/a", guest = "~/a" }, { host = "~/b", guest = "/root/b", mode = "600" }]
"#;
    let cfg = parse(src).unwrap();
    assert_eq!(cfg.vm_defaults.vcpu, Some(2));
    assert_eq!(cfg.file_sync.len(), 2);
    assert_eq!(cfg.file_sync[1].mode, Some(0o600));
    let cfg = parse("vm_defaults.memory_mib = 1024\n").unwrap();
    assert_eq!(cfg.vm_defaults.memory_mib, Some(1024));
}

#[test]
fn env_overrides_catalog_url_with_env_provenance() {
    let env = EnvOverrides {
        catalog_url: Some("http://127.0.0.1:8080/v1".to_owned()),
    };
    let cfg = parse_with(FULL, Path::new(ORIGIN), Path::new(HOME), &env).unwrap();
    assert_eq!(
        cfg.catalog_url,
        Setting {
            value: "http://127.0.0.1:8080/v1".to_owned(),
            provenance: Provenance::Env
        }
    );
    // Env applies to a missing file too.
    let dir = tempfile::tempdir().unwrap();
    let cfg = load_with(&dir.path().join("absent.toml"), Path::new(HOME), &env).unwrap();
    assert_eq!(cfg.source, None);
    assert_eq!(cfg.catalog_url.provenance, Provenance::Env);

    let bad = EnvOverrides {
        catalog_url: Some("images.local".to_owned()),
    };
    let err = parse_with("", Path::new(ORIGIN), Path::new(HOME), &bad).unwrap_err();
    assert!(matches!(err, ConfigError::Env { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("BANGER_CATALOG_URL") && msg.contains("https://"),
        "{msg}"
    );
}

#[test]
fn provenance_of_vm_defaults_from_config_host_and_built_in() {
    let host = HostFacts {
        cpus: 8,
        mem_bytes: 16 << 30,
    };
    let cfg = parse("[vm_defaults]\nvcpu = 2\n").unwrap();
    let vm = resolve_vm_defaults(&cfg, &host);
    assert_eq!(vm.vcpu, Setting::config(2));
    assert_eq!(
        vm.memory_mib,
        Setting {
            value: 2048,
            provenance: Provenance::Host
        }
    );
    assert_eq!(vm.disk_bytes, Setting::built_in(8 << 30));
    let tiny = HostFacts {
        cpus: 1,
        mem_bytes: 1 << 30,
    };
    let vm = resolve_vm_defaults(&cfg, &tiny);
    assert_eq!(vm.memory_mib, Setting::built_in(512));
}

#[test]
fn missing_file_is_all_defaults_and_unreadable_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let env = EnvOverrides::default();
    let cfg = load_with(&dir.path().join("config.toml"), Path::new(HOME), &env).unwrap();
    assert_eq!(cfg, Config::defaults(Path::new(HOME)));

    let err = load_with(dir.path(), Path::new(HOME), &env).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));

    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, b"log_level = \"\xff\xfe\"\n").unwrap();
    let err = load_with(&binary, Path::new(HOME), &env).unwrap_err();
    assert!(err.to_string().contains("binary.toml"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "vmm = \"firecracker\"\n").unwrap();
    let cfg = load_with(&good, Path::new(HOME), &env).unwrap();
    assert_eq!(cfg.source.as_deref(), Some(good.as_path()));
    assert_eq!(cfg.vmm, Setting::config(VmmChoice::Firecracker));
}

/// (config text, key the error must name, line it must name, fragment of the message)
const INVALID: &[(&str, &str, usize, &str)] = &[
    // unknown keys
    ("colour = \"red\"\n", "colour", 1, "unknown key"),
    ("\nlog_levle = \"info\"\n", "log_levle", 2, "did you mean `log_level`"),
    ("[vm_defaults]\nvcpu = 1\ncpus = 2\n", "vm_defaults.cpus", 3, "did you mean `vcpu`"),
    ("[vm_defaults]\nthreads = 2\n", "vm_defaults.threads", 2, "expected one of: vcpu, memory_mib, disk_size"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"~/a\"\nperm = \"0644\"\n", "file_sync[0].perm", 4, "unknown key"),
    ("[extra]\nx = 1\n", "extra", 1, "unknown key"),
    // wrong types
    ("log_level = 3\n", "log_level", 1, "expected a log level"),
    ("tap_pool_size = \"4\"\n", "tap_pool_size", 1, "expected an integer, found string \"4\""),
    ("tap_pool_size = 4.5\n", "tap_pool_size", 1, "found float"),
    ("vmm = true\n", "vmm", 1, "found boolean"),
    ("[vm_defaults]\nvcpu = \"2\"\n", "vm_defaults.vcpu", 2, "expected an integer"),
    ("[vm_defaults]\nmemory_mib = \"2G\"\n", "vm_defaults.memory_mib", 2, "number of MiB"),
    ("[vm_defaults]\ndisk_size = 16\n", "vm_defaults.disk_size", 2, "expected a size string"),
    ("vm_defaults = 3\n", "vm_defaults", 1, "expected a table"),
    ("default_dns = \"1.1.1.1\"\n", "default_dns", 1, "expected an array"),
    ("default_dns = [\"1.1.1.1\",\n  8]\n", "default_dns[1]", 2, "found integer 8"),
    ("[file_sync]\nhost = \"~/a\"\n", "file_sync", 1, "expected an array of tables"),
    ("file_sync = [\"~/a\"]\n", "file_sync[0]", 1, "expected a table"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"~/a\"\nmode = 644\n", "file_sync[0].mode", 4, "octal digits"),
    ("stats_poll_interval = 30\n", "stats_poll_interval", 1, "expected a duration"),
    ("cidr = 24\n", "cidr", 1, "expected an IPv4 network"),
    ("ssh_key_path = [\"~/k\"]\n", "ssh_key_path", 1, "found array"),
    // values
    ("log_level = \"loud\"\n", "log_level", 1, "not a log level"),
    ("vmm = \"kvm\"\n", "vmm", 1, "\"auto\", \"firecracker\" or \"qemu\""),
    ("ssh_key_path = \"keys/id_ed25519\"\n", "ssh_key_path", 1, "relative"),
    ("ssh_key_path = \"~bob/.ssh/id\"\n", "ssh_key_path", 1, "~user/"),
    ("ssh_key_path = \"~/.ssh/id.pub\"\n", "ssh_key_path", 1, "public key"),
    ("ssh_key_path = \"~/.ssh/\"\n", "ssh_key_path", 1, "not a directory"),
    ("ssh_key_path = \"/a/../etc/key\"\n", "ssh_key_path", 1, "`..`"),
    ("ssh_key_path = \"\"\n", "ssh_key_path", 1, "must not be empty"),
    ("firecracker_bin = \"firecracker\"\n", "firecracker_bin", 1, "relative"),
    ("qemu_bin = \"~other/qemu\"\n", "qemu_bin", 1, "~user/"),
    ("default_image_name = \"\"\n", "default_image_name", 1, "must not be empty"),
    ("default_image_name = \"a/b\"\n", "default_image_name", 1, "not an image name"),
    ("auto_stop_stale_after = \"soon\"\n", "auto_stop_stale_after", 1, "not a duration"),
    ("auto_stop_stale_after = \"0s\"\n", "auto_stop_stale_after", 1, "at least 1s"),
    ("stats_poll_interval = \"30\"\n", "stats_poll_interval", 1, "not a duration"),
    ("metrics_poll_interval = \"500ms\"\n", "metrics_poll_interval", 1, "at least 1s"),
    ("serial_log_max = \"1K\"\n", "serial_log_max", 1, "at least 16K"),
    ("serial_log_max = \"big\"\n", "serial_log_max", 1, "expected an integer and a unit"),
    ("bridge_name = \"br0\"\n", "bridge_name", 1, "banger[a-z0-9-]{0,9}"),
    ("bridge_name = \"banger-toolong12\"\n", "bridge_name", 1, "15 bytes"),
    ("bridge_name = \"banger-t0\"\n", "bridge_name", 1, "tap names"),
    ("bridge_ip = \"172.16.0.300\"\n", "bridge_ip", 1, "not an IPv4 address"),
    ("bridge_ip = \"10.0.0.1\"\n", "bridge_ip", 1, "not inside cidr 172.16.0.0/24"),
    ("cidr = \"10.1.0.0/24\"\nbridge_ip = \"10.2.0.1\"\n", "bridge_ip", 2, "not inside cidr 10.1.0.0/24"),
    ("bridge_ip = \"172.16.0.0\"\n", "bridge_ip", 1, "network address"),
    ("bridge_ip = \"172.16.0.255\"\n", "bridge_ip", 1, "broadcast address"),
    ("cidr = \"172.16.0.5/24\"\n", "cidr", 1, "host bits set; the network is \"172.16.0.0/24\""),
    ("cidr = \"172.16.0.0\"\n", "cidr", 1, "not an IPv4 network"),
    ("cidr = \"10.0.0.0/29\"\ntap_pool_size = 8\n", "cidr", 1, "6 usable addresses"),
    ("cidr = \"10.0.0.0/31\"\n", "cidr", 1, "0 usable addresses"),
    ("tap_pool_size = 300\n", "tap_pool_size", 1, "cidr 172.16.0.0/24 (built-in) has 254"),
    ("tap_pool_size = 0\n", "tap_pool_size", 1, "at least 1"),
    ("tap_pool_size = 5000\n", "tap_pool_size", 1, "at most 4096"),
    ("default_dns = []\n", "default_dns", 1, "at least one address"),
    ("default_dns = [\"1.1.1.1\", \"dns.google\"]\n", "default_dns[1]", 1, "not an IP address"),
    ("catalog_url = \"ftp://images\"\n", "catalog_url", 1, "https://"),
    ("catalog_url = \"https:///v1\"\n", "catalog_url", 1, "no host"),
    ("[vm_defaults]\nvcpu = 0\n", "vm_defaults.vcpu", 2, "at least 1"),
    ("[vm_defaults]\nvcpu = 1000\n", "vm_defaults.vcpu", 2, "at most 255"),
    ("[vm_defaults]\nmemory_mib = 256\n", "vm_defaults.memory_mib", 2, "at least 512"),
    ("[vm_defaults]\nmemory_mib = -1\n", "vm_defaults.memory_mib", 2, "at least 512"),
    ("[vm_defaults]\ndisk_size = \"lots\"\n", "vm_defaults.disk_size", 2, "expected an integer and a unit"),
    ("[vm_defaults]\ndisk_size = \"16GB\"\n", "vm_defaults.disk_size", 2, "ambiguous"),
    ("[vm_defaults]\ndisk_size = \"16\"\n", "vm_defaults.disk_size", 2, "no unit"),
    ("[vm_defaults]\ndisk_size = \"512M\"\n", "vm_defaults.disk_size", 2, "at least 1G"),
    ("[vm_defaults]\ndisk_size = \"1048577K\"\n", "vm_defaults.disk_size", 2, "whole number of MiB"),
    // network
    ("[network]\nallow_ports = [1]\n", "network.allow_ports", 2, "expected one of: allow_host_ports"),
    ("network = 1\n", "network", 1, "expected a table"),
    ("[network]\nallow_host_ports = 8080\n", "network.allow_host_ports", 2, "expected an array"),
    ("[network]\nallow_host_ports = [\n  80,\n  0]\n", "network.allow_host_ports[1]", 4, "at least 1"),
    ("[network]\nallow_host_ports = [65536]\n", "network.allow_host_ports[0]", 2, "at most 65535"),
    ("[network]\nallow_host_ports = [\"80\"]\n", "network.allow_host_ports[0]", 2, "found string \"80\""),
    ("[network]\nallow_guest_to_guest = \"yes\"\n", "network.allow_guest_to_guest", 2, "expected true or false"),
    ("[network]\nallow_link_local = 1\n", "network.allow_link_local", 2, "expected true or false"),
    ("[network]\ndeny_destinations = [\"192.168.1.1/16\"]\n", "network.deny_destinations[0]", 2, "host bits set"),
    ("[network]\ndeny_destinations = [\"lan\"]\n", "network.deny_destinations[0]", 2, "not an IPv4 network"),
    ("[network]\ndeny_destinations = [\"0.0.0.0/0\"]\n", "network.deny_destinations[0]", 2, "every destination"),
    ("[network]\ndeny_destinations = [10]\n", "network.deny_destinations[0]", 2, "found integer 10"),
    // file_sync
    ("[[file_sync]]\nhost = \"\"\nguest = \"~/a\"\n", "file_sync[0].host", 2, "must not be empty"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"\"\n", "file_sync[0].guest", 3, "must not be empty"),
    ("[[file_sync]]\nhost = \"notes.txt\"\nguest = \"~/a\"\n", "file_sync[0].host", 2, "relative"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"/etc/passwd\"\n", "file_sync[0].guest", 3, "must be under ~/ or /root/"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"root/a\"\n", "file_sync[0].guest", 3, "must be under ~/ or /root/"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"/root\"\n", "file_sync[0].guest", 3, "must be under ~/ or /root/"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"~\"\n", "file_sync[0].guest", 3, "must be under ~/ or /root/"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"~/\"\n", "file_sync[0].guest", 3, "whole home"),
    ("[[file_sync]]\nhost = \"~/../other/a\"\nguest = \"~/a\"\n", "file_sync[0].host", 2, "`..`"),
    ("[[file_sync]]\nhost = \"/home/tester/x/../../../etc/shadow\"\nguest = \"~/a\"\n", "file_sync[0].host", 2, "`..`"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"/root/../etc/cron.d/x\"\n", "file_sync[0].guest", 3, "`..`"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"~/x/..\"\n", "file_sync[0].guest", 3, "`..`"),
    ("[[file_sync]]\nhost = \"~bob/.bashrc\"\nguest = \"~/a\"\n", "file_sync[0].host", 2, "~user/"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"~bob/a\"\n", "file_sync[0].guest", 3, "~user/"),
    ("[[file_sync]]\nhost = \"/etc/passwd\"\nguest = \"~/a\"\n", "file_sync[0].host", 2, "outside your home /home/tester"),
    ("[[file_sync]]\nhost = \"/home/testerx/a\"\nguest = \"~/a\"\n", "file_sync[0].host", 2, "outside your home"),
    ("[[file_sync]]\nhost = \"/home/tester/\"\nguest = \"~/a\"\n", "file_sync[0].host", 2, "whole home"),
    ("[[file_sync]]\nhost = \"~\"\nguest = \"~/a\"\n", "file_sync[0].host", 2, "whole home"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"~/a\"\nmode = \"644x\"\n", "file_sync[0].mode", 4, "3 or 4 octal digits"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"~/a\"\nmode = \"0648\"\n", "file_sync[0].mode", 4, "3 or 4 octal digits"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"~/a\"\nmode = \"64\"\n", "file_sync[0].mode", 4, "3 or 4 octal digits"),
    ("[[file_sync]]\nhost = \"~/a\"\nguest = \"~/a\"\nmode = \"06444\"\n", "file_sync[0].mode", 4, "3 or 4 octal digits"),
    ("[[file_sync]]\nhost = \"~/a\"\n", "file_sync[0].guest", 1, "is required"),
    ("[[file_sync]]\nguest = \"~/a\"\n", "file_sync[0].host", 1, "is required"),
    (
        "[[file_sync]]\nhost = \"~/a\"\nguest = \"~/a\"\n\n[[file_sync]]\nhost = \"~/b\"\nguest = \"~/b\"\n\n[[file_sync]]\nhost = \"~/c\"\nguest = \"/etc/c\"\n",
        "file_sync[2].guest",
        11,
        "must be under ~/ or /root/",
    ),
    (
        "[[file_sync]]\nhost = \"~/a\"\nguest = \"~/same\"\n[[file_sync]]\nhost = \"~/b\"\nguest = \"/root/same\"\n",
        "file_sync[1].guest",
        6,
        "already the guest path of file_sync[0]",
    ),
];

#[test]
fn every_invalid_case_names_file_line_and_key() {
    for (src, key, line, fragment) in INVALID {
        let err = parse_err(src);
        let msg = err.to_string();
        let head = format!("{ORIGIN}:{line}: {key}: ");
        assert!(
            msg.lines().any(|l| l.starts_with(&head) && l.contains(fragment)),
            "for config:\n{src}\nexpected a line starting with {head:?} and containing {fragment:?}, got:\n{msg}"
        );
        assert!(
            err.problems()
                .iter()
                .any(|p| p.key == *key && p.line == *line),
            "{src}: {:?}",
            err.problems()
        );
    }
}

#[test]
fn all_problems_are_reported_in_line_order() {
    let src = "vmm = \"kvm\"\ncolour = 1\n[vm_defaults]\nvcpu = 0\n[[file_sync]]\nhost = \"/etc\"\nguest = \"/tmp\"\n";
    let err = parse_err(src);
    let keys: Vec<(&str, usize)> = err
        .problems()
        .iter()
        .map(|p| (p.key.as_str(), p.line))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("vmm", 1),
            ("colour", 2),
            ("vm_defaults.vcpu", 4),
            ("file_sync[0].host", 6),
            ("file_sync[0].guest", 7),
        ]
    );
    assert_eq!(err.to_string().lines().count(), 5);
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    for (src, line) in [
        ("log_level = \"info\"\nvmm = \n", 2),
        ("a = 1\nb = 2\n[vm_defaults\n", 3),
        ("cidr = \"x\"\ncidr = \"y\"\n", 2),
        ("x = \"unterminated\n", 1),
        ("= 3\n", 1),
    ] {
        let err = parse_err(src);
        let ConfigError::Syntax { line: got, .. } = &err else {
            panic!("{src:?}: expected a syntax error, got {err:?}");
        };
        assert_eq!(*got, line, "{src:?}: {err}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{ORIGIN}:{line}:")), "{msg}");
        assert!(msg.contains("invalid TOML"), "{msg}");
    }
}

#[test]
fn malformed_input_never_panics() {
    // Every prefix of a full config, and every single-character corruption of
    // it, must give Ok or a clean error.
    let junk = [
        '"', '[', ']', '=', '\n', '.', '\'', '{', '}', ',', '#', '\\', '\u{0}', 'é', '~',
    ];
    let boundaries: Vec<usize> = (0..=FULL.len())
        .filter(|&i| FULL.is_char_boundary(i))
        .collect();
    for &cut in &boundaries {
        let _ = parse(&FULL[..cut]);
    }
    for (i, c) in FULL.char_indices() {
        for j in junk {
            let mut s = String::with_capacity(FULL.len());
            s.push_str(&FULL[..i]);
            s.push(j);
            s.push_str(&FULL[i + c.len_utf8()..]);
            if let Err(e) = parse(&s) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
    for src in [
        "\u{feff}",
        "\0",
        "[[[",
        "a.b.c.d = 1",
        "file_sync = [[[]]]",
        "vm_defaults.vcpu.x = 1",
    ] {
        let _ = parse(src);
    }
}

#[test]
fn file_sync_host_in_a_symlinked_home_is_inside() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real-home");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("home");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let src = format!(
        "[[file_sync]]\nhost = \"{}/.bashrc\"\nguest = \"~/.bashrc\"\n",
        real.display()
    );
    let cfg = parse_with(&src, Path::new(ORIGIN), &link, &EnvOverrides::default()).unwrap();
    assert_eq!(cfg.file_sync[0].host, real.join(".bashrc"));
}

#[test]
fn effective_lists_every_key_in_config_syntax() {
    let cfg = parse(FULL).unwrap();
    let vm = resolve_vm_defaults(
        &cfg,
        &HostFacts {
            cpus: 2,
            mem_bytes: 1 << 30,
        },
    );
    let rows = cfg.effective(&vm);
    let get = |key: &str| rows.iter().find(|r| r.key == key).unwrap();
    assert_eq!(
        get("auto_stop_stale_after").value_text().as_deref(),
        Some("\"2h\"")
    );
    assert_eq!(
        get("metrics_poll_interval").value_text().as_deref(),
        Some("\"5m\"")
    );
    assert_eq!(
        get("vm_defaults.disk_size").value_text().as_deref(),
        Some("\"16G\"")
    );
    assert_eq!(get("vm_defaults.vcpu").provenance, Provenance::Config);
    assert_eq!(
        get("default_dns").value_text().as_deref(),
        Some("[\"9.9.9.9\", \"2620:fe::fe\"]")
    );
    assert_eq!(get("file_sync").provenance, Provenance::Config);
    assert_eq!(
        get("network.allow_host_ports").value_text().as_deref(),
        Some("[8080, 53]")
    );
    assert_eq!(
        get("network.deny_destinations").value_text().as_deref(),
        Some("[\"192.168.0.0/16\", \"10.1.2.3/32\"]")
    );
    let defaults = parse("").unwrap();
    let vm = resolve_vm_defaults(
        &defaults,
        &HostFacts {
            cpus: 2,
            mem_bytes: 1 << 30,
        },
    );
    let rows = defaults.effective(&vm);
    let get = |key: &str| rows.iter().find(|r| r.key == key).unwrap();
    assert_eq!(get("firecracker_bin").value_text(), None);
    assert_eq!(get("auto_stop_stale_after").value_text(), None);
    assert_eq!(
        get("vm_defaults.memory_mib").provenance,
        Provenance::BuiltIn
    );
    assert_eq!(get("file_sync").value_text().as_deref(), Some("[]"));
    // Fenced unless the config opens it.
    assert_eq!(
        get("network.allow_guest_to_guest").value_text().as_deref(),
        Some("false")
    );
    assert_eq!(
        get("network.allow_link_local").provenance,
        Provenance::BuiltIn
    );
    assert_eq!(
        get("network.allow_host_ports").value_text().as_deref(),
        Some("[]")
    );
}

fn docs() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn docs_document_every_key_and_their_example_is_valid() {
    let docs = docs();
    let cfg = parse("").unwrap();
    let vm = resolve_vm_defaults(&cfg, &HostFacts::detect());
    for row in cfg.effective(&vm) {
        let leaf = row.key.rsplit('.').next().unwrap();
        assert!(
            docs.contains(&format!("`{leaf}`")) || docs.contains(&format!("`[[{leaf}]]`")),
            "docs/config.md does not document {}",
            row.key
        );
    }
    let start = docs.find("```toml\n").expect("an example toml block") + "```toml\n".len();
    let end = start + docs[start..].find("```").unwrap();
    let example = parse(&docs[start..end]).unwrap_or_else(|e| panic!("docs example: {e}"));
    assert_eq!(example.tap_pool_size, Setting::config(8));
    assert_eq!(example.file_sync.len(), 2);
    assert_eq!(
        example.network.allow_host_ports,
        Setting::config(vec![8080])
    );
}
