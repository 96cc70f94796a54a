//! The VMM-side concepts every process names: which backend runs a VM, how
//! its root disk was cloned, its MAC address. One type each, shared by the
//! host probes, the VMM drivers, the state database and the API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A string that names none of a closed enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?} (expected one of: {expected})")]
pub struct ParseEnumError {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulator: slower, works everywhere.
    Tcg,
}

/// A VMM backend: the program and, for QEMU, how it runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "vmm", rename_all = "lowercase")]
pub enum Backend {
    /// Firecracker (always KVM).
    Firecracker,
    /// QEMU's `microvm` machine.
    Qemu { accel: Accel },
}

impl Backend {
    /// Every backend, in the order `auto` prefers them.
    pub const ALL: &'static [Backend] = &[
        Backend::Firecracker,
        Backend::Qemu { accel: Accel::Kvm },
        Backend::Qemu { accel: Accel::Tcg },
    ];

    /// `firecracker`, `qemu-kvm` or `qemu-tcg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Firecracker => "firecracker",
            Backend::Qemu { accel: Accel::Kvm } => "qemu-kvm",
            Backend::Qemu { accel: Accel::Tcg } => "qemu-tcg",
        }
    }

    /// The VMM program, without the acceleration (what a VM record keeps).
    pub fn vmm(self) -> Vmm {
        match self {
            Backend::Firecracker => Vmm::Firecracker,
            Backend::Qemu { .. } => Vmm::Qemu,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Backend {
    type Err = ParseEnumError;
    fn from_str(s: &str) -> Result<Backend, ParseEnumError> {
        Backend::ALL
            .iter()
            .copied()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| ParseEnumError {
                kind: "VMM backend",
                value: s.to_owned(),
                expected: "firecracker, qemu-kvm, qemu-tcg",
            })
    }
}

/// Declares a closed enum stored and shown as fixed text: `as_str`,
/// `Display`, `FromStr` and serde all use the same spelling.
#[macro_export]
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored in the database and shown to users.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::vmm::ParseEnumError;
            fn from_str(s: &str) -> Result<Self, $crate::vmm::ParseEnumError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::vmm::ParseEnumError {
                        kind: $kind,
                        value: s.to_owned(),
                        expected: concat!($($text, ", "),+).trim_end_matches(", "),
                    }),
                }
            }
        }
    };
}

text_enum! {
    /// The VMM program that runs a VM ([`Backend`] without the acceleration).
    Vmm, "VMM backend" {
        /// Firecracker over its API socket.
        Firecracker = "firecracker",
        /// QEMU `microvm` (KVM or TCG).
        Qemu = "qemu",
    }
}

text_enum! {
    /// How a VM's root disk is made from the image's `rootfs.ext4`.
    CloneStrategy, "clone strategy" {
        /// `FICLONE`: instant, shares blocks until written (btrfs, xfs, bcachefs).
        Reflink = "reflink",
        /// A device-mapper snapshot over the read-only image (needs the root helper).
        DmSnapshot = "dm-snapshot",
        /// Copy only the allocated extents (`SEEK_DATA`/`SEEK_HOLE`).
        SparseCopy = "sparse-copy",
    }
}

/// A unicast Ethernet address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// A string that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six hex pairs like 02:ab:cd:00:11:22")]
pub struct MacParseError {
    /// What was given.
    pub input: String,
}

impl MacAddr {
    /// Whether this is a multicast/broadcast address (low bit of the first octet).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Bit 0 of the first octet clear: a unicast address.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Bit 1 of the first octet: not a vendor-assigned address.
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<MacAddr, MacParseError> {
        let err = || MacParseError {
            input: s.to_owned(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_text_round_trips_and_keeps_its_serde_shape() {
        for b in Backend::ALL {
            assert_eq!(b.as_str().parse::<Backend>().unwrap(), *b);
            assert_eq!(b.to_string(), b.as_str());
        }
        assert_eq!(Backend::Qemu { accel: Accel::Tcg }.vmm(), Vmm::Qemu);
        assert_eq!(Backend::Firecracker.vmm(), Vmm::Firecracker);
        // `qemu` alone names the program, not a backend: the accel is missing.
        let err = "qemu".parse::<Backend>().unwrap_err();
        assert!(err.to_string().contains("qemu-kvm, qemu-tcg"), "{err}");
        // Doctor's JSON keeps the tagged shape it always had.
        assert_eq!(
            serde_json::to_string(&Backend::Qemu { accel: Accel::Kvm }).unwrap(),
            r#"{"vmm":"qemu","accel":"kvm"}"#
        );
    }

    #[test]
    fn text_enums_round_trip_and_name_the_choices() {
        for s in CloneStrategy::ALL {
            assert_eq!(s.as_str().parse::<CloneStrategy>().unwrap(), *s);
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        for v in Vmm::ALL {
            assert_eq!(v.as_str().parse::<Vmm>().unwrap(), *v);
        }
        let err = "copy".parse::<CloneStrategy>().unwrap_err();
        assert_eq!(err.kind, "clone strategy");
        assert_eq!(err.expected, "reflink, dm-snapshot, sparse-copy");
    }

    #[test]
    fn mac_parses_case_insensitively_and_prints_lowercase() {
        let mac: MacAddr = "02:AB:cd:00:11:22".parse().unwrap();
        assert_eq!(mac, MacAddr([0x02, 0xab, 0xcd, 0x00, 0x11, 0x22]));
        assert_eq!(mac.to_string(), "02:ab:cd:00:11:22");
        assert!(mac.is_unicast() && mac.is_locally_administered());
        assert!(MacAddr([0x01, 0, 0, 0, 0, 0]).is_multicast());
        for bad in [
            "",
            "02:ab:cd:00:11",
            "02:ab:cd:00:11:22:33",
            "2:ab:cd:00:11:22",
            "02:ab:cd:00:11:zz",
            "02-ab-cd-00-11-22",
            "+2:ab:cd:00:11:22",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert_eq!(err.input, bad);
        }
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:ab:cd:00:11:22\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        assert!(serde_json::from_str::<MacAddr>("\"nope\"").is_err());
    }
}
