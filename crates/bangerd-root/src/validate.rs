//! Argument validation. Every value of a request passes through here before
//! it reaches netlink, nftables or the filesystem, so the operations only
//! ever see typed, checked values.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use banger_wire::helper::GuestFence;
use ipnet::Ipv4Net;

/// Every link banger creates starts with this prefix (bridge `banger0`,
/// taps `banger-t<N>`); the helper refuses to touch any other link.
pub const IFACE_PREFIX: &str = "banger";

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const IFACE_MAX_LEN: usize = 15;

/// A request argument that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    /// An interface name broke the naming rule.
    #[error("interface name {name:?} is invalid: {reason}")]
    IfaceName { name: String, reason: &'static str },
    /// A bridge address was not `IP/prefix` inside the configured range.
    #[error("bridge address {address:?} is invalid: {reason}")]
    BridgeAddress { address: String, reason: String },
    /// A NAT CIDR was malformed or outside the configured range.
    #[error("NAT CIDR {cidr:?} is invalid: {reason}")]
    NatCidr { cidr: String, reason: String },
    /// A guest fence setting was malformed.
    #[error("guest fence: {field}: {reason}")]
    Fence { field: &'static str, reason: String },
    /// A path was relative, did not resolve, or resolved outside banger's dirs.
    #[error("path {path:?} is not allowed: {reason}")]
    Path { path: PathBuf, reason: String },
    /// Two arguments of one request conflict with each other.
    #[error("{0}")]
    Conflicting(String),
    /// A build named something that cannot be a recipe name.
    #[error("{kind} recipe name {name:?} is invalid: {reason}")]
    RecipeName {
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
}

/// Longest recipe name accepted.
pub const RECIPE_NAME_MAX_LEN: usize = 64;

/// `name` if it has the shape of a recipe name: `^[a-z0-9][a-z0-9.-]{0,63}$`
/// without `..`, so never a path or an option. Whether it is one of the
/// embedded recipes is the builder's check (`bangerd-build`), which links
/// the recipes; the helper does not.
pub fn recipe_name(
    kind: banger_wire::helper::BundleKind,
    name: &str,
) -> Result<String, ValidateError> {
    let err = |reason| {
        Err(ValidateError::RecipeName {
            kind: kind.as_str(),
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > RECIPE_NAME_MAX_LEN {
        return err("must be 1 to 64 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return err("only lowercase ASCII letters, digits, '-' and '.' are allowed");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return err("must start with a letter or digit");
    }
    if name.contains("..") {
        return err("must not contain \"..\"");
    }
    Ok(name.to_owned())
}

/// A validated interface name: `^[a-z0-9][a-z0-9-]{0,14}$` starting with
/// [`IFACE_PREFIX`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceName(String);

impl IfaceName {
    /// Check `name` against the naming rule.
    pub fn parse(name: &str) -> Result<IfaceName, ValidateError> {
        let err = |reason| {
            Err(ValidateError::IfaceName {
                name: name.to_owned(),
                reason,
            })
        };
        if name.is_empty() || name.len() > IFACE_MAX_LEN {
            return err("must be 1 to 15 characters long");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return err("only lowercase ASCII letters, digits and '-' are allowed");
        }
        if name.starts_with('-') {
            return err("must start with a letter or digit");
        }
        if !name.starts_with(IFACE_PREFIX) {
            return err("must start with banger's prefix \"banger\"");
        }
        Ok(IfaceName(name.to_owned()))
    }

    /// The name as the kernel sees it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parse a bridge address `IP/prefix`: the IP must be a host address inside
/// `range` and the prefix must equal `range`'s, so the bridge's connected
/// route covers exactly the guest range.
pub fn bridge_address(address: &str, range: Ipv4Net) -> Result<Ipv4Net, ValidateError> {
    let err = |reason: String| ValidateError::BridgeAddress {
        address: address.to_owned(),
        reason,
    };
    let net: Ipv4Net = address
        .parse()
        .map_err(|_| err("expected IPv4 address with prefix, like 172.16.0.1/24".into()))?;
    if net.prefix_len() != range.prefix_len() {
        return Err(err(format!(
            "prefix /{} differs from the configured range {range}",
            net.prefix_len()
        )));
    }
    if !range.contains(&net.addr()) {
        return Err(err(format!(
            "{} lies outside the configured range {range}",
            net.addr()
        )));
    }
    if range.prefix_len() < 31 && (net.addr() == range.network() || net.addr() == range.broadcast())
    {
        return Err(err(format!(
            "{} is the network or broadcast address of {range}",
            net.addr()
        )));
    }
    Ok(net)
}

/// Parse a NAT CIDR: a network address (no host bits) equal to or inside `range`.
pub fn nat_cidr(cidr: &str, range: Ipv4Net) -> Result<Ipv4Net, ValidateError> {
    let err = |reason: String| ValidateError::NatCidr {
        cidr: cidr.to_owned(),
        reason,
    };
    let net: Ipv4Net = cidr
        .parse()
        .map_err(|_| err("expected an IPv4 CIDR, like 172.16.0.0/24".into()))?;
    if net.trunc() != net {
        return Err(err(format!(
            "host bits are set (the network is {})",
            net.trunc()
        )));
    }
    if !range.contains(&net) {
        return Err(err(format!("lies outside the configured range {range}")));
    }
    Ok(net)
}

/// Most entries a fence list may hold (each becomes nftables rules).
pub const MAX_FENCE_ENTRIES: usize = 64;

/// A validated [`GuestFence`]: ports sorted and unique, networks parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    pub allow_host_ports: Vec<u16>,
    pub allow_guest_to_guest: bool,
    pub allow_link_local: bool,
    pub deny_destinations: Vec<Ipv4Net>,
}

/// Check a wire fence: ports 1-65535, networks without host bits, at most
/// [`MAX_FENCE_ENTRIES`] of each.
pub fn fence(wire: &GuestFence) -> Result<Fence, ValidateError> {
    let too_many = |field, n: usize| ValidateError::Fence {
        field,
        reason: format!("{n} entries; at most {MAX_FENCE_ENTRIES} are allowed"),
    };
    if wire.allow_host_ports.len() > MAX_FENCE_ENTRIES {
        return Err(too_many("allow_host_ports", wire.allow_host_ports.len()));
    }
    if wire.deny_destinations.len() > MAX_FENCE_ENTRIES {
        return Err(too_many("deny_destinations", wire.deny_destinations.len()));
    }
    if wire.allow_host_ports.contains(&0) {
        return Err(ValidateError::Fence {
            field: "allow_host_ports",
            reason: "port 0 is not a port".into(),
        });
    }
    let mut ports = wire.allow_host_ports.clone();
    ports.sort_unstable();
    ports.dedup();
    let mut nets = Vec::new();
    for text in &wire.deny_destinations {
        let reason = match text.parse::<Ipv4Net>() {
            Ok(net) if net.prefix_len() == 0 => {
                format!("{text:?} would deny every destination; stop the VM instead")
            }
            Ok(net) if net.trunc() == net => {
                nets.push(net);
                continue;
            }
            Ok(net) => format!(
                "{text:?} has host bits set (the network is {})",
                net.trunc()
            ),
            Err(_) => format!("{text:?} is not an IPv4 network like 192.168.0.0/16"),
        };
        return Err(ValidateError::Fence {
            field: "deny_destinations",
            reason,
        });
    }
    nets.sort_unstable();
    nets.dedup();
    Ok(Fence {
        allow_host_ports: ports,
        allow_guest_to_guest: wire.allow_guest_to_guest,
        allow_link_local: wire.allow_link_local,
        deny_destinations: nets,
    })
}

/// A path that resolved inside one of banger's directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedPath {
    /// The canonical allowed directory it lies under.
    pub base: PathBuf,
    /// The canonical path relative to `base` (empty when it is `base` itself).
    pub relative: PathBuf,
}

impl AllowedPath {
    /// The full canonical path.
    pub fn full(&self) -> PathBuf {
        self.base.join(&self.relative)
    }
}

/// Canonicalize `path` and require it to lie under one of `allowed_dirs`.
///
/// The path must be absolute, must not contain `..`, and must exist;
/// symlinks are resolved first, so a link pointing outside is rejected.
pub fn validate_path(path: &Path, allowed_dirs: &[PathBuf]) -> Result<AllowedPath, ValidateError> {
    let err = |reason: String| ValidateError::Path {
        path: path.to_owned(),
        reason,
    };
    if !path.is_absolute() {
        return Err(err("must be absolute".into()));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(err("must not contain a '..' component".into()));
    }
    let canonical =
        std::fs::canonicalize(path).map_err(|e| err(format!("cannot be resolved: {e}")))?;
    for dir in allowed_dirs {
        // An allowed dir that does not exist yet cannot contain anything.
        let Ok(base) = std::fs::canonicalize(dir) else {
            continue;
        };
        if let Ok(relative) = canonical.strip_prefix(&base) {
            return Ok(AllowedPath {
                relative: relative.to_owned(),
                base,
            });
        }
    }
    let dirs: Vec<String> = allowed_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    Err(err(format!(
        "it resolves to {}, outside banger's directories ({})",
        canonical.display(),
        dirs.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_is_normalized_and_bounded() {
        let f = fence(&GuestFence {
            allow_host_ports: vec![8080, 22, 8080],
            deny_destinations: vec!["10.0.0.0/8".into(), "10.0.0.0/8".into()],
            ..GuestFence::default()
        })
        .unwrap();
        assert_eq!(f.allow_host_ports, [22, 8080]);
        assert_eq!(
            f.deny_destinations,
            ["10.0.0.0/8".parse::<Ipv4Net>().unwrap()]
        );
        assert!(!f.allow_guest_to_guest && !f.allow_link_local);
        let many = GuestFence {
            allow_host_ports: (1..=65).collect(),
            ..GuestFence::default()
        };
        assert!(fence(&many).unwrap_err().to_string().contains("at most 64"));
        let many = GuestFence {
            deny_destinations: (0..65).map(|i| format!("10.0.{i}.0/24")).collect(),
            ..GuestFence::default()
        };
        assert!(fence(&many).unwrap_err().to_string().contains("at most 64"));
    }

    fn range() -> Ipv4Net {
        "172.16.0.0/24".parse().unwrap()
    }

    #[test]
    fn interface_names_follow_the_rule() {
        for ok in [
            "banger0",
            "banger-t0",
            "banger-t12345",
            "bangerbr",
            "banger123456789",
        ] {
            assert_eq!(IfaceName::parse(ok).unwrap().as_str(), ok);
        }
        let cases = [
            ("", "1 to 15"),
            ("banger1234567890", "1 to 15"),
            ("Banger0", "lowercase"),
            ("BANGER0", "lowercase"),
            ("banger0;rm", "lowercase"),
            ("banger$(id)", "lowercase"),
            ("banger 0", "lowercase"),
            ("banger/0", "lowercase"),
            ("banger\n0", "lowercase"),
            ("bangér0", "lowercase"),
            ("-banger0", "letter or digit"),
            ("eth0", "prefix"),
            ("docker0", "prefix"),
            ("bange", "prefix"),
            ("xbanger0", "prefix"),
        ];
        for (name, reason) in cases {
            let e = IfaceName::parse(name).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(reason), "{name:?}: {msg}");
            assert!(msg.contains(&format!("{name:?}")), "{name:?}: {msg}");
        }
    }

    #[test]
    fn bridge_address_must_be_a_host_inside_the_range_with_its_prefix() {
        assert_eq!(
            bridge_address("172.16.0.1/24", range())
                .unwrap()
                .to_string(),
            "172.16.0.1/24"
        );
        assert_eq!(
            bridge_address("172.16.0.254/24", range())
                .unwrap()
                .addr()
                .octets()[3],
            254
        );
        let cases = [
            ("172.16.0.1", "expected IPv4 address with prefix"),
            ("garbage", "expected IPv4 address with prefix"),
            ("fd00::1/64", "expected IPv4 address with prefix"),
            ("172.16.0.1/16", "prefix /16 differs"),
            ("10.0.0.1/24", "outside the configured range"),
            ("172.16.1.1/24", "outside the configured range"),
            ("172.16.0.0/24", "network or broadcast"),
            ("172.16.0.255/24", "network or broadcast"),
        ];
        for (addr, reason) in cases {
            let msg = bridge_address(addr, range()).unwrap_err().to_string();
            assert!(msg.contains(reason), "{addr}: {msg}");
        }
    }

    #[test]
    fn nat_cidr_must_lie_inside_the_range() {
        assert_eq!(nat_cidr("172.16.0.0/24", range()).unwrap(), range());
        assert_eq!(
            nat_cidr("172.16.0.128/25", range()).unwrap().prefix_len(),
            25
        );
        let cases = [
            ("172.16.0.0/16", "outside the configured range"),
            ("10.0.0.0/24", "outside the configured range"),
            ("0.0.0.0/0", "outside the configured range"),
            (
                "172.16.0.1/24",
                "host bits are set (the network is 172.16.0.0/24)",
            ),
            ("172.16.0.0", "expected an IPv4 CIDR"),
            ("172.16.0.0/24; flush ruleset", "expected an IPv4 CIDR"),
        ];
        for (cidr, reason) in cases {
            let msg = nat_cidr(cidr, range()).unwrap_err().to_string();
            assert!(msg.contains(reason), "{cidr}: {msg}");
        }
    }

    #[test]
    fn paths_must_resolve_inside_allowed_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(state.join("vms/a")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(state.join("vms/a/disk"), b"").unwrap();
        std::fs::write(outside.join("secret"), b"").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), state.join("escape")).unwrap();
        std::os::unix::fs::symlink(&outside, state.join("escape-dir")).unwrap();
        std::os::unix::fs::symlink(state.join("vms/a/disk"), state.join("inner-link")).unwrap();
        let allowed = vec![state.clone(), tmp.path().join("missing-run-dir")];

        let ok = validate_path(&state.join("vms/a/disk"), &allowed).unwrap();
        assert_eq!(ok.relative, Path::new("vms/a/disk"));
        assert_eq!(
            ok.full(),
            std::fs::canonicalize(state.join("vms/a/disk")).unwrap()
        );
        let inner = validate_path(&state.join("inner-link"), &allowed).unwrap();
        assert_eq!(inner.relative, Path::new("vms/a/disk"));
        assert_eq!(
            validate_path(&state, &allowed).unwrap().relative,
            Path::new("")
        );

        let cases = [
            (state.join("../outside/secret"), "'..'"),
            (state.join("vms/../vms/a/disk"), "'..'"),
            (state.join("escape"), "outside banger's directories"),
            (
                state.join("escape-dir/secret"),
                "outside banger's directories",
            ),
            (outside.join("secret"), "outside banger's directories"),
            (PathBuf::from("/etc/passwd"), "outside banger's directories"),
            (state.join("missing"), "cannot be resolved"),
            (PathBuf::from("state/vms"), "must be absolute"),
        ];
        for (path, reason) in cases {
            let msg = validate_path(&path, &allowed).unwrap_err().to_string();
            assert!(msg.contains(reason), "{}: {msg}", path.display());
        }
    }
}
