//! From TOML text to a validated [`Config`].
//!
//! The document is walked by hand with `toml_edit` (rather than derived serde
//! structs) so that every problem, including semantic ones found after typing
//! (`bridge_ip` outside `cidr`), names its key and the line the key is on, and
//! so that one pass reports all problems instead of the first.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use toml_edit::{Document, Item, Key, TableLike, Value};

use crate::error::{ConfigError, Problem};
use crate::units::{parse_duration, parse_size};
use crate::vm_defaults::{MIN_DISK_BYTES, MIN_MEMORY_MIB, MIN_VCPU};
use crate::{
    first_host, Config, EnvOverrides, FileSyncEntry, NetworkConfig, Provenance, Setting,
    VmDefaultsConfig, VmmChoice, CATALOG_URL_ENV, MAX_TAP_POOL_SIZE,
};

const ROOT_KEYS: &[&str] = &[
    "log_level",
    "firecracker_bin",
    "qemu_bin",
    "vmm",
    "ssh_key_path",
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
    "vm_defaults",
    "file_sync",
    "network",
];
const VM_DEFAULTS_KEYS: &[&str] = &["vcpu", "memory_mib", "disk_size"];
const FILE_SYNC_KEYS: &[&str] = &["host", "guest", "mode"];
const NETWORK_KEYS: &[&str] = &[
    "allow_host_ports",
    "allow_guest_to_guest",
    "allow_link_local",
    "deny_destinations",
];
/// Most entries of a `[network]` list (the root helper's limit too).
const MAX_NETWORK_ENTRIES: usize = 64;
/// Upper bound for `vm_defaults.vcpu`: catches typos, well above what any
/// supported VMM boots.
const MAX_VCPU: i64 = 255;
const GUEST_HOME: &str = "/root";

/// A value read from the file and the line of its key.
type Seen<T> = Option<(T, usize)>;

#[derive(Default)]
struct Raw {
    log_level: Seen<String>,
    firecracker_bin: Seen<PathBuf>,
    qemu_bin: Seen<PathBuf>,
    vmm: Seen<VmmChoice>,
    ssh_key_path: Seen<PathBuf>,
    default_image_name: Seen<String>,
    auto_stop_stale_after: Seen<Duration>,
    stats_poll_interval: Seen<Duration>,
    metrics_poll_interval: Seen<Duration>,
    serial_log_max: Seen<u64>,
    bridge_name: Seen<String>,
    bridge_ip: Seen<Ipv4Addr>,
    cidr: Seen<Ipv4Net>,
    tap_pool_size: Seen<u32>,
    default_dns: Seen<Vec<IpAddr>>,
    catalog_url: Seen<String>,
    insecure_registries: Seen<Vec<String>>,
    vm_defaults: VmDefaultsConfig,
    file_sync: Vec<FileSyncEntry>,
    network: NetworkConfig,
}

/// Parse and validate `src` (no environment overrides applied).
pub(crate) fn parse_document(src: &str, origin: &Path, home: &Path) -> Result<Config, ConfigError> {
    let doc = Document::parse(src).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = line_col(src, offset);
        let message = e.message().trim().replace('\n', "; ");
        ConfigError::Syntax {
            path: origin.to_owned(),
            line,
            column,
            message,
        }
    })?;
    let mut w = Walker {
        src,
        home,
        problems: Vec::new(),
    };
    let raw = w.root(doc.as_table());
    let mut problems = w.problems;
    check_network(&raw, &mut problems);
    if !problems.is_empty() {
        problems.sort_by_key(|p| p.line);
        return Err(ConfigError::Invalid {
            path: origin.to_owned(),
            problems,
        });
    }
    Ok(build(raw, origin, home))
}

/// Apply environment overrides on top of the file.
pub(crate) fn apply_env(cfg: &mut Config, env: &EnvOverrides) -> Result<(), ConfigError> {
    if let Some(url) = &env.catalog_url {
        let value = check_url(url).map_err(|message| ConfigError::Env {
            var: CATALOG_URL_ENV,
            value: url.clone(),
            message,
        })?;
        cfg.catalog_url = Setting {
            value,
            provenance: Provenance::Env,
        };
    }
    Ok(())
}

fn build(raw: Raw, origin: &Path, home: &Path) -> Config {
    fn pick<T>(seen: Seen<T>, default: Setting<T>) -> Setting<T> {
        seen.map_or(default, |(v, _)| Setting::config(v))
    }
    fn pick_some<T>(seen: Seen<T>, default: Setting<Option<T>>) -> Setting<Option<T>> {
        seen.map_or(default, |(v, _)| Setting::config(Some(v)))
    }
    let d = Config::defaults(home);
    let cidr = pick(raw.cidr, d.cidr);
    // With only `cidr` set, the bridge takes its first address.
    let bridge_default = Setting::built_in(first_host(cidr.value));
    Config {
        source: Some(origin.to_owned()),
        log_level: pick(raw.log_level, d.log_level),
        firecracker_bin: pick_some(raw.firecracker_bin, d.firecracker_bin),
        qemu_bin: pick_some(raw.qemu_bin, d.qemu_bin),
        vmm: pick(raw.vmm, d.vmm),
        ssh_key_path: pick(raw.ssh_key_path, d.ssh_key_path),
        default_image_name: pick(raw.default_image_name, d.default_image_name),
        auto_stop_stale_after: pick_some(raw.auto_stop_stale_after, d.auto_stop_stale_after),
        stats_poll_interval: pick(raw.stats_poll_interval, d.stats_poll_interval),
        metrics_poll_interval: pick(raw.metrics_poll_interval, d.metrics_poll_interval),
        serial_log_max: pick(raw.serial_log_max, d.serial_log_max),
        bridge_name: pick(raw.bridge_name, d.bridge_name),
        bridge_ip: pick(raw.bridge_ip, bridge_default),
        cidr,
        tap_pool_size: pick(raw.tap_pool_size, d.tap_pool_size),
        default_dns: pick(raw.default_dns, d.default_dns),
        catalog_url: pick(raw.catalog_url, d.catalog_url),
        insecure_registries: pick(raw.insecure_registries, d.insecure_registries),
        vm_defaults: raw.vm_defaults,
        file_sync: raw.file_sync,
        network: raw.network,
    }
}

/// `bridge_ip` inside `cidr`, and room in `cidr` for the bridge and the tap pool.
fn check_network(raw: &Raw, problems: &mut Vec<Problem>) {
    let default_cidr: Ipv4Net = crate::DEFAULT_CIDR.parse().expect("valid default");
    let (cidr, cidr_line) = raw.cidr.map_or((default_cidr, None), |(c, l)| (c, Some(l)));
    let (taps, tap_line) = raw
        .tap_pool_size
        .map_or((crate::DEFAULT_TAP_POOL_SIZE, None), |(t, l)| (t, Some(l)));
    let prefix = u32::from(cidr.prefix_len());
    // The network and broadcast addresses are unusable; /31 and /32 have no room at all.
    let usable: u64 = if prefix <= 30 {
        (1u64 << (32 - prefix)) - 2
    } else {
        0
    };
    let needed = u64::from(taps) + 1;
    if usable < needed {
        match (cidr_line, tap_line) {
            (Some(line), _) => problems.push(Problem {
                line,
                key: "cidr".into(),
                message: format!(
                    "{cidr} has {usable} usable addresses; the bridge and tap_pool_size = {taps} \
                     guests need {needed}"
                ),
            }),
            (None, Some(line)) => problems.push(Problem {
                line,
                key: "tap_pool_size".into(),
                message: format!(
                    "{taps} guests and the bridge need {needed} addresses but cidr {cidr} \
                     (built-in) has {usable}; set a larger cidr"
                ),
            }),
            (None, None) => {}
        }
    }
    if let Some((ip, line)) = raw.bridge_ip {
        let message = if !cidr.contains(&ip) {
            Some(format!("{ip} is not inside cidr {cidr}"))
        } else if prefix <= 30 && ip == cidr.network() {
            Some(format!(
                "{ip} is the network address of {cidr}, not a usable address"
            ))
        } else if prefix <= 30 && ip == cidr.broadcast() {
            Some(format!(
                "{ip} is the broadcast address of {cidr}, not a usable address"
            ))
        } else {
            None
        };
        if let Some(message) = message {
            problems.push(Problem {
                line,
                key: "bridge_ip".into(),
                message,
            });
        }
    }
}

struct Walker<'a> {
    src: &'a str,
    home: &'a Path,
    problems: Vec<Problem>,
}

impl Walker<'_> {
    fn root(&mut self, root: &dyn TableLike) -> Raw {
        let mut raw = Raw::default();
        let home = self.home;
        for (name, item) in root.iter() {
            let line = self.key_line(root, name, item, 1);
            let key = name;
            match name {
                "log_level" => {
                    raw.log_level = self.string(
                        item,
                        line,
                        key,
                        "a log level like \"info\"",
                        check_log_level,
                    )
                }
                "firecracker_bin" => {
                    raw.firecracker_bin =
                        self.string(item, line, key, "a path", |s| file_path(s, home))
                }
                "qemu_bin" => {
                    raw.qemu_bin = self.string(item, line, key, "a path", |s| file_path(s, home))
                }
                "vmm" => {
                    raw.vmm = self.string(
                        item,
                        line,
                        key,
                        "\"auto\", \"firecracker\" or \"qemu\"",
                        check_vmm,
                    )
                }
                "ssh_key_path" => {
                    raw.ssh_key_path =
                        self.string(item, line, key, "a path", |s| ssh_key_path(s, home))
                }
                "default_image_name" => {
                    raw.default_image_name =
                        self.string(item, line, key, "an image name", check_image_name)
                }
                "auto_stop_stale_after" => {
                    raw.auto_stop_stale_after =
                        self.string(item, line, key, "a duration like \"2h\"", check_interval)
                }
                "stats_poll_interval" => {
                    raw.stats_poll_interval =
                        self.string(item, line, key, "a duration like \"10s\"", check_interval)
                }
                "metrics_poll_interval" => {
                    raw.metrics_poll_interval =
                        self.string(item, line, key, "a duration like \"60s\"", check_interval)
                }
                "serial_log_max" => {
                    raw.serial_log_max =
                        self.string(item, line, key, "a size like \"2M\"", check_serial_log_max)
                }
                "bridge_name" => {
                    raw.bridge_name = self.string(
                        item,
                        line,
                        key,
                        "an interface name like \"banger0\"",
                        check_bridge_name,
                    )
                }
                "bridge_ip" => {
                    raw.bridge_ip = self.string(
                        item,
                        line,
                        key,
                        "an IPv4 address like \"172.16.0.1\"",
                        check_ipv4,
                    )
                }
                "cidr" => {
                    raw.cidr = self.string(
                        item,
                        line,
                        key,
                        "an IPv4 network like \"172.16.0.0/24\"",
                        check_cidr,
                    )
                }
                "tap_pool_size" => {
                    raw.tap_pool_size = self.integer(item, line, key, "an integer", |n| {
                        int_in(n, 1, i64::from(MAX_TAP_POOL_SIZE))
                    })
                }
                "default_dns" => raw.default_dns = self.dns(item, line),
                "catalog_url" => raw.catalog_url = self.string(item, line, key, "a URL", check_url),
                "insecure_registries" => raw.insecure_registries = self.registries(item, line),
                "vm_defaults" => raw.vm_defaults = self.vm_defaults(item, line),
                "file_sync" => raw.file_sync = self.file_sync(item, line),
                "network" => raw.network = self.network(item, line),
                _ => self.unknown(line, name.to_owned(), name, ROOT_KEYS),
            }
        }
        raw
    }

    fn vm_defaults(&mut self, item: &Item, line: usize) -> VmDefaultsConfig {
        let mut out = VmDefaultsConfig::default();
        let Some(table) = self.table(item, line, "vm_defaults", "a table ([vm_defaults])") else {
            return out;
        };
        for (name, item) in table.iter() {
            let line = self.key_line(table, name, item, line);
            let key = format!("vm_defaults.{name}");
            match name {
                "vcpu" => {
                    out.vcpu = self
                        .integer(item, line, &key, "an integer", |n| {
                            int_in(n, i64::from(MIN_VCPU), MAX_VCPU)
                        })
                        .map(|(v, _)| v)
                }
                "memory_mib" => {
                    out.memory_mib = self
                        .integer(
                            item,
                            line,
                            &key,
                            "an integer number of MiB like 2048",
                            |n| int_in(n, MIN_MEMORY_MIB as i64, i64::MAX),
                        )
                        .map(|(v, _)| v)
                }
                "disk_size" => {
                    out.disk_size = self
                        .string(
                            item,
                            line,
                            &key,
                            "a size string like \"16G\"",
                            check_disk_size,
                        )
                        .map(|(v, _)| v)
                }
                _ => self.unknown(line, key, name, VM_DEFAULTS_KEYS),
            }
        }
        out
    }

    fn network(&mut self, item: &Item, line: usize) -> NetworkConfig {
        let mut out = NetworkConfig::default();
        let Some(table) = self.table(item, line, "network", "a table ([network])") else {
            return out;
        };
        for (name, item) in table.iter() {
            let line = self.key_line(table, name, item, line);
            let key = format!("network.{name}");
            match name {
                "allow_host_ports" => {
                    if let Some(ports) =
                        self.list(item, line, &key, "a port number like 8080", |v| {
                            let n = v.as_integer().ok_or_else(|| {
                                format!("expected a port number, found {}", describe_value(v))
                            })?;
                            int_in::<u16>(n, 1, 65535)
                        })
                    {
                        out.allow_host_ports = Setting::config(ports);
                    }
                }
                "deny_destinations" => {
                    if let Some(nets) = self.list(item, line, &key, "an IPv4 network string", |v| {
                        let s = v.as_str().ok_or_else(|| {
                            format!(
                                "expected an IPv4 network string like \"192.168.0.0/16\", \
                                     found {}",
                                describe_value(v)
                            )
                        })?;
                        let net = check_cidr(s)?;
                        if net.prefix_len() == 0 {
                            return Err(format!(
                                "{s:?} would deny every destination; list the networks to deny"
                            ));
                        }
                        Ok(net)
                    }) {
                        out.deny_destinations = Setting::config(nets);
                    }
                }
                "allow_guest_to_guest" | "allow_link_local" => {
                    let Some(b) = item.as_bool() else {
                        self.wrong_type(line, &key, "true or false", item);
                        continue;
                    };
                    if name == "allow_guest_to_guest" {
                        out.allow_guest_to_guest = Setting::config(b);
                    } else {
                        out.allow_link_local = Setting::config(b);
                    }
                }
                _ => self.unknown(line, key, name, NETWORK_KEYS),
            }
        }
        out
    }

    /// An array of at most [`MAX_NETWORK_ENTRIES`] values, each checked by
    /// `check`; `None` (with problems recorded) unless all are valid.
    fn list<T>(
        &mut self,
        item: &Item,
        line: usize,
        key: &str,
        what: &str,
        check: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let Some(arr) = item.as_array() else {
            self.wrong_type(line, key, &format!("an array of {what}s"), item);
            return None;
        };
        if arr.len() > MAX_NETWORK_ENTRIES {
            self.problem(
                line,
                key,
                format!(
                    "{} entries; at most {MAX_NETWORK_ENTRIES} are allowed",
                    arr.len()
                ),
            );
            return None;
        }
        let mut out = Vec::new();
        for (i, v) in arr.iter().enumerate() {
            let vline = self.span_line(v.span(), line);
            match check(v) {
                Ok(x) => out.push(x),
                Err(message) => self.problem(vline, format!("{key}[{i}]"), message),
            }
        }
        (out.len() == arr.len()).then_some(out)
    }

    fn file_sync(&mut self, item: &Item, line: usize) -> Vec<FileSyncEntry> {
        const EXPECTED: &str = "an array of tables ([[file_sync]] entries)";
        // Each entry is a table (or not, for `file_sync = ["x"]`) and its span.
        type Entry<'i> = (Option<&'i dyn TableLike>, Option<Range<usize>>);
        let entries: Vec<Entry<'_>> = match item {
            Item::ArrayOfTables(aot) => aot
                .iter()
                .map(|t| (Some(t as &dyn TableLike), t.span()))
                .collect(),
            Item::Value(Value::Array(arr)) => arr
                .iter()
                .map(|v| (v.as_inline_table().map(|t| t as &dyn TableLike), v.span()))
                .collect(),
            other => {
                self.wrong_type(line, "file_sync", EXPECTED, other);
                return Vec::new();
            }
        };
        let mut out: Vec<(FileSyncEntry, usize, usize)> = Vec::new();
        for (index, (table, span)) in entries.into_iter().enumerate() {
            let entry_line = self.span_line(span, line);
            let prefix = format!("file_sync[{index}]");
            let Some(table) = table else {
                self.problem(
                    entry_line,
                    prefix,
                    "expected a table with host, guest and optional mode",
                );
                continue;
            };
            if let Some((entry, guest_line)) = self.file_sync_entry(table, &prefix, entry_line) {
                out.push((entry, guest_line, index));
            }
        }
        for (i, (entry, guest_line, index)) in out.iter().enumerate() {
            if let Some((_, _, first)) = out[..i].iter().find(|(e, _, _)| e.guest == entry.guest) {
                self.problem(
                    *guest_line,
                    format!("file_sync[{index}].guest"),
                    format!(
                        "{} is already the guest path of file_sync[{first}]",
                        entry.guest.display()
                    ),
                );
            }
        }
        out.into_iter().map(|(e, _, _)| e).collect()
    }

    /// One entry; returns it with the line of its `guest` key when valid.
    fn file_sync_entry(
        &mut self,
        table: &dyn TableLike,
        prefix: &str,
        entry_line: usize,
    ) -> Option<(FileSyncEntry, usize)> {
        let home = self.home;
        let (mut host, mut guest, mut mode) = (None, None, None);
        let mut ok = true;
        for (name, item) in table.iter() {
            let line = self.key_line(table, name, item, entry_line);
            let key = format!("{prefix}.{name}");
            let before = self.problems.len();
            match name {
                "host" => {
                    host = self.string(item, line, &key, "a path", |s| sync_host_path(s, home))
                }
                "guest" => guest = self.string(item, line, &key, "a path", sync_guest_path),
                "mode" => {
                    mode = self.string(
                        item,
                        line,
                        &key,
                        "a string of 3-4 octal digits like \"0644\"",
                        check_mode,
                    )
                }
                _ => self.unknown(line, key, name, FILE_SYNC_KEYS),
            }
            ok &= self.problems.len() == before;
        }
        for field in ["host", "guest"] {
            if !table.contains_key(field) {
                ok = false;
                self.problem(entry_line, format!("{prefix}.{field}"), "is required");
            }
        }
        if !ok {
            return None;
        }
        let ((host, _), (guest, guest_line)) = (host?, guest?);
        Some((
            FileSyncEntry {
                host,
                guest,
                mode: mode.map(|(m, _)| m),
            },
            guest_line,
        ))
    }

    fn dns(&mut self, item: &Item, line: usize) -> Seen<Vec<IpAddr>> {
        let Some(arr) = item.as_array() else {
            self.wrong_type(
                line,
                "default_dns",
                "an array of addresses like [\"1.1.1.1\"]",
                item,
            );
            return None;
        };
        if arr.is_empty() {
            self.problem(line, "default_dns", "must list at least one address");
            return None;
        }
        let mut out = Vec::new();
        for (i, v) in arr.iter().enumerate() {
            let vline = self.span_line(v.span(), line);
            let key = format!("default_dns[{i}]");
            match v.as_str() {
                Some(s) => match s.trim().parse::<IpAddr>() {
                    Ok(ip) => out.push(ip),
                    Err(_) => self.problem(vline, key, format!("{s:?} is not an IP address")),
                },
                None => self.problem(
                    vline,
                    key,
                    format!("expected an IP address string, found {}", describe_value(v)),
                ),
            }
        }
        (out.len() == arr.len()).then_some((out, line))
    }

    fn registries(&mut self, item: &Item, line: usize) -> Seen<Vec<String>> {
        let key = "insecure_registries";
        let Some(arr) = item.as_array() else {
            self.wrong_type(line, key, "an array like [\"registry.lan:5000\"]", item);
            return None;
        };
        let mut out = Vec::new();
        for (i, v) in arr.iter().enumerate() {
            let vline = self.span_line(v.span(), line);
            let k = format!("{key}[{i}]");
            match v.as_str() {
                Some(s) if check_registry(s) => out.push(s.to_owned()),
                Some(s) => self.problem(
                    vline,
                    k,
                    format!("{s:?} is not a registry host[:port] (no scheme, no path)"),
                ),
                None => self.problem(
                    vline,
                    k,
                    format!("expected a host[:port] string, found {}", describe_value(v)),
                ),
            }
        }
        (out.len() == arr.len()).then_some((out, line))
    }

    fn string<T>(
        &mut self,
        item: &Item,
        line: usize,
        key: &str,
        expected: &str,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Seen<T> {
        let Some(s) = item.as_str() else {
            self.wrong_type(line, key, expected, item);
            return None;
        };
        match check(s) {
            Ok(v) => Some((v, line)),
            Err(message) => {
                self.problem(line, key, message);
                None
            }
        }
    }

    fn integer<T>(
        &mut self,
        item: &Item,
        line: usize,
        key: &str,
        expected: &str,
        check: impl FnOnce(i64) -> Result<T, String>,
    ) -> Seen<T> {
        let Some(n) = item.as_integer() else {
            self.wrong_type(line, key, expected, item);
            return None;
        };
        match check(n) {
            Ok(v) => Some((v, line)),
            Err(message) => {
                self.problem(line, key, message);
                None
            }
        }
    }

    fn table<'i>(
        &mut self,
        item: &'i Item,
        line: usize,
        key: &str,
        expected: &str,
    ) -> Option<&'i dyn TableLike> {
        let t = item.as_table_like();
        if t.is_none() {
            self.wrong_type(line, key, expected, item);
        }
        t
    }

    fn unknown(&mut self, line: usize, key: String, name: &str, known: &[&str]) {
        let message = match closest(name, known) {
            Some(k) => format!("unknown key; did you mean `{k}`?"),
            None if known.len() <= 4 => {
                format!("unknown key; expected one of: {}", known.join(", "))
            }
            None => "unknown key; `banger config show` lists the accepted keys".to_owned(),
        };
        self.problem(line, key, message);
    }

    fn wrong_type(&mut self, line: usize, key: &str, expected: &str, item: &Item) {
        self.problem(
            line,
            key,
            format!("expected {expected}, found {}", describe(item)),
        );
    }

    fn problem(&mut self, line: usize, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    fn key_line(&self, table: &dyn TableLike, name: &str, item: &Item, fallback: usize) -> usize {
        let span = table.key(name).and_then(Key::span).or_else(|| item.span());
        self.span_line(span, fallback)
    }

    fn span_line(&self, span: Option<Range<usize>>, fallback: usize) -> usize {
        span.map_or(fallback, |s| line_col(self.src, s.start).0)
    }
}

/// 1-based line and column of byte `offset`; never panics on odd offsets.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let bytes = &src.as_bytes()[..offset.min(src.len())];
    let line = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&bytes[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

fn describe(item: &Item) -> String {
    match item {
        Item::Value(v) => describe_value(v),
        other => other.type_name().to_owned(),
    }
}

fn describe_value(v: &Value) -> String {
    let text = v.to_string();
    let text = text.trim();
    match v {
        Value::Array(_) | Value::InlineTable(_) => v.type_name().to_owned(),
        _ if text.chars().count() > 40 => v.type_name().to_owned(),
        _ => format!("{} {text}", v.type_name()),
    }
}

fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn int_in<T: TryFrom<i64>>(n: i64, min: i64, max: i64) -> Result<T, String> {
    if n < min {
        return Err(format!("{n} is too small; must be at least {min}"));
    }
    if n > max {
        return Err(format!("{n} is too large; must be at most {max}"));
    }
    T::try_from(n).map_err(|_| format!("{n} is out of range"))
}

fn check_log_level(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let hint =
        "use error, warn, info, debug or trace, optionally per target like \"bangerd=debug,info\"";
    if s.trim().is_empty() {
        return Err(format!("must not be empty; {hint}"));
    }
    for part in s.split(',') {
        let level = match part.split_once('=') {
            Some((target, level)) => {
                let target_ok = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'));
                if !target_ok {
                    return Err(format!("{target:?} is not a log target; {hint}"));
                }
                level
            }
            None => part,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("{level:?} is not a log level; {hint}"));
        }
    }
    Ok(s.to_owned())
}

fn check_vmm(s: &str) -> Result<VmmChoice, String> {
    match s {
        "auto" => Ok(VmmChoice::Auto),
        "firecracker" => Ok(VmmChoice::Firecracker),
        "qemu" => Ok(VmmChoice::Qemu),
        _ => Err(format!(
            "{s:?} is not a VMM; use \"auto\", \"firecracker\" or \"qemu\""
        )),
    }
}

fn check_image_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 128
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(format!(
            "{s:?} is not an image name (no spaces or slashes, at most 128 bytes)"
        ));
    }
    Ok(s.to_owned())
}

fn check_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is too short; must be at least 1s"));
    }
    Ok(d)
}

fn check_bridge_name(s: &str) -> Result<String, String> {
    let form = "must match banger[a-z0-9-]{0,9}, like \"banger0\" (banger's links all start \
                with \"banger\"; the kernel allows 15 bytes)";
    let Some(rest) = s.strip_prefix("banger") else {
        return Err(format!("{s:?} {form}"));
    };
    if rest.len() > 9
        || !rest
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!("{s:?} {form}"));
    }
    for tap in ["-t", "-p"] {
        if let Some(n) = rest.strip_prefix(tap) {
            if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "{s:?} collides with banger's tap names (banger-t<N>, banger-p<N>)"
                ));
            }
        }
    }
    Ok(s.to_owned())
}

fn check_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 address like \"172.16.0.1\""))
}

fn check_cidr(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 network like \"172.16.0.0/24\""))?;
    if net.addr() != net.network() {
        return Err(format!(
            "{s:?} has host bits set; the network is \"{}\"",
            net.trunc()
        ));
    }
    Ok(net)
}

fn check_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?} must start with https:// or http://"))?;
    if rest.split('/').next().unwrap_or("").is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?} contains whitespace"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

fn check_disk_size(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s).map_err(|e| e.to_string())?;
    if bytes < MIN_DISK_BYTES {
        return Err(format!("{s:?} is too small; must be at least 1G"));
    }
    if bytes % (1 << 20) != 0 {
        return Err(format!("{s:?} is not a whole number of MiB"));
    }
    Ok(bytes)
}

fn check_serial_log_max(s: &str) -> Result<u64, String> {
    let bytes = parse_size(s).map_err(|e| e.to_string())?;
    if bytes < crate::MIN_SERIAL_LOG_MAX {
        return Err(format!("{s:?} is too small; must be at least 16K"));
    }
    Ok(bytes)
}

fn check_mode(s: &str) -> Result<u32, String> {
    let ok = (3..=4).contains(&s.len()) && s.chars().all(|c| matches!(c, '0'..='7'));
    if !ok {
        return Err(format!(
            "{s:?} is not a mode; write 3 or 4 octal digits like \"0644\""
        ));
    }
    u32::from_str_radix(s, 8).map_err(|e| format!("{s:?}: {e}"))
}

fn has_dotdot(s: &str) -> bool {
    Path::new(s).components().any(|c| c == Component::ParentDir)
}

fn normalize(p: &Path) -> PathBuf {
    p.components().collect()
}

/// An absolute or `~/`-anchored host path, `~` expanded and normalized.
fn expand_path(s: &str, home: &Path) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    let path = if s == "~" {
        home.to_path_buf()
    } else if let Some(rest) = s.strip_prefix("~/") {
        home.join(rest.trim_start_matches('/'))
    } else if s.starts_with('~') {
        return Err(format!(
            "{s:?}: ~user/ paths are not supported; write ~/... or an absolute path"
        ));
    } else if s.starts_with('/') {
        PathBuf::from(s)
    } else {
        return Err(format!(
            "{s:?} is relative; write an absolute path or one starting with ~/"
        ));
    };
    if has_dotdot(s) {
        return Err(format!("{s:?} must not contain a `..` component"));
    }
    Ok(normalize(&path))
}

/// A path naming a file (a binary, a key), not a directory.
fn file_path(s: &str, home: &Path) -> Result<PathBuf, String> {
    let p = expand_path(s, home)?;
    if s.ends_with('/') || p == home || p.parent().is_none() {
        return Err(format!("{s:?} must name a file, not a directory"));
    }
    Ok(p)
}

fn ssh_key_path(s: &str, home: &Path) -> Result<PathBuf, String> {
    let p = file_path(s, home)?;
    if p.extension().is_some_and(|e| e == "pub") {
        return Err(format!(
            "{s:?} names a public key; give the private key (its .pub sits beside it)"
        ));
    }
    Ok(p)
}

fn sync_host_path(s: &str, home: &Path) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    let p = expand_path(s, home)?;
    if p == home {
        return Err(format!(
            "{s:?} is your whole home; name a file or directory inside it"
        ));
    }
    // `home` itself may be reached through a symlink (/home -> /usr/home).
    let canonical_home = std::fs::canonicalize(home).ok();
    let inside = |h: &Path| p.starts_with(h) && p != h;
    if !inside(home) && !canonical_home.as_deref().is_some_and(inside) {
        return Err(format!(
            "{} is outside your home {}; file_sync copies only from inside it",
            p.display(),
            home.display()
        ));
    }
    Ok(p)
}

fn sync_guest_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if has_dotdot(s) {
        return Err(format!("{s:?} must not contain a `..` component"));
    }
    let path = if let Some(rest) = s.strip_prefix("~/") {
        Path::new(GUEST_HOME).join(rest.trim_start_matches('/'))
    } else if s.starts_with('~') && s != "~" {
        return Err(format!(
            "{s:?}: ~user/ paths are not supported; write ~/... or /root/..."
        ));
    } else if s.starts_with("/root/") {
        PathBuf::from(s)
    } else {
        return Err(format!(
            "{s:?} must be under ~/ or /root/ (the guest user is root)"
        ));
    };
    let path = normalize(&path);
    if path == Path::new(GUEST_HOME) {
        return Err(format!(
            "{s:?} is the guest's whole home; name a path inside it"
        ));
    }
    Ok(path)
}

/// `host[:port]` as registries are named in image references.
fn check_registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn insecure_registries_are_host_and_port_only() {
        for ok in ["registry.lan", "registry.lan:5000", "10.0.0.5:443"] {
            assert!(check_registry(ok), "{ok}");
        }
        for bad in [
            "",
            "http://r.lan",
            "r.lan/path",
            "r.lan:0",
            "r.lan:99999",
            "r lan",
        ] {
            assert!(!check_registry(bad), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn line_col_is_one_based_and_total() {
        let src = "a = 1\nbé = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 3));
        assert_eq!(line_col(src, 8), (2, 3));
        assert_eq!(line_col(src, 10_000), (3, 1));
    }

    #[test]
    fn expand_path_rules() {
        let home = Path::new("/home/a");
        assert_eq!(
            expand_path("~/x//y/./z", home).unwrap(),
            Path::new("/home/a/x/y/z")
        );
        assert_eq!(
            expand_path("~//etc/passwd", home).unwrap(),
            Path::new("/home/a/etc/passwd")
        );
        assert_eq!(expand_path("/opt/fc", home).unwrap(), Path::new("/opt/fc"));
        assert!(expand_path("fc", home).unwrap_err().contains("relative"));
        assert!(expand_path("~bob/x", home).unwrap_err().contains("~user/"));
        assert!(expand_path("/a/../b", home).unwrap_err().contains(".."));
        assert!(expand_path("", home).unwrap_err().contains("empty"));
    }

    #[test]
    fn suggestions_for_typos() {
        assert_eq!(closest("log_levle", ROOT_KEYS), Some("log_level"));
        assert_eq!(closest("cdir", ROOT_KEYS), Some("cidr"));
        assert_eq!(closest("completely_different", ROOT_KEYS), None);
    }

    #[test]
    fn bridge_names() {
        assert!(check_bridge_name("banger0").is_ok());
        assert!(check_bridge_name("banger-br-123").is_ok());
        assert!(check_bridge_name("br0").is_err());
        assert!(check_bridge_name("banger-toolong12").is_err());
        assert!(check_bridge_name("bangerA").is_err());
        assert!(check_bridge_name("banger-t3")
            .unwrap_err()
            .contains("tap names"));
        assert!(check_bridge_name("banger-p12")
            .unwrap_err()
            .contains("tap names"));
        assert!(check_bridge_name("banger-pub").is_ok());
    }

    #[test]
    fn log_levels() {
        assert!(check_log_level("debug").is_ok());
        assert!(check_log_level("INFO").is_ok());
        assert!(check_log_level("bangerd=debug,info").is_ok());
        assert!(check_log_level("loud").is_err());
        assert!(check_log_level("=debug").is_err());
        assert!(check_log_level("").is_err());
    }
}
