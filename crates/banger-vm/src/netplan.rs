//! The guest side of banger's network: which addresses a VM may lease, and
//! the kernel command line that configures the guest before any banger code
//! runs in it.
//!
//! The command line carries
//! `ip=<guest>::<gateway>:<netmask>:<hostname>::off banger.dns=<a>,<b>`.
//! `ip=` is read by systemd-network-generator (dracut's syntax:
//! `ip=<client-IP>:[<peer>]:<gateway-IP>:<netmask>:<client_hostname>:<interface>:{none|off|...}`)
//! and becomes a networkd `.network` file; `banger.dns=` is read by the
//! image's `banger-cmdline-dns` unit, which writes `/etc/resolv.conf`. The
//! kernel's own `ip=` parser is not built into the kernels banger boots
//! (`CONFIG_IP_PNP` is off in Debian's cloud kernel).
//!
//! The interface field is left empty, so nothing depends on what the guest
//! names its NIC (`eth0` in practice: virtio-net on virtio-mmio has no PCI
//! slot or path for udev to name it by). systemd-network-generator turns an
//! empty interface into `[Match] Kind=!* Type=!loopback`, i.e. every
//! physical link, never `lo`; a VM has exactly one. That is systemd 254's
//! behaviour, also in Debian 12's systemd 252.39 (checked by a test that
//! runs the real generator). Older systemd without that change writes
//! `Name=*`, which also matches `lo`: images need systemd >= 254 or
//! Debian 12's current 252 point release.
//! DNS servers go in `banger.dns=` rather than `ip=`'s trailing fields
//! because the minimal images have no systemd-resolved to consume them.

use std::net::{IpAddr, Ipv4Addr};

use banger_config::Config;
use ipnet::Ipv4Net;

use crate::identity::{validate_vm_name, IdentityError};

/// Errors planning a guest's network, naming the offending address.
#[derive(Debug, thiserror::Error)]
pub enum NetPlanError {
    #[error("gateway {gateway} is not a host address of {cidr}")]
    GatewayOutside { gateway: Ipv4Addr, cidr: Ipv4Net },
    #[error("guest address {ip} is not a usable address of {cidr} (network, broadcast or gateway {gateway})")]
    GuestUnusable {
        ip: Ipv4Addr,
        cidr: Ipv4Net,
        gateway: Ipv4Addr,
    },
    #[error("no DNS server configured for the guest")]
    NoDns,
    #[error(transparent)]
    Hostname(#[from] IdentityError),
}

/// The guest network of one banger install: `cidr`, the bridge address
/// guests route through, and their name servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    pub cidr: Ipv4Net,
    /// The bridge's address (`bridge_ip`), the guests' default gateway.
    pub gateway: Ipv4Addr,
    /// `default_dns`.
    pub dns: Vec<IpAddr>,
}

impl NetPlan {
    /// A plan for `cidr` with the bridge at `gateway`; the gateway must be a
    /// host address of `cidr` and at least one DNS server is needed.
    pub fn new(
        cidr: Ipv4Net,
        gateway: Ipv4Addr,
        dns: Vec<IpAddr>,
    ) -> Result<NetPlan, NetPlanError> {
        let cidr = cidr.trunc();
        if !is_host(cidr, gateway) {
            return Err(NetPlanError::GatewayOutside { gateway, cidr });
        }
        if dns.is_empty() {
            return Err(NetPlanError::NoDns);
        }
        Ok(NetPlan { cidr, gateway, dns })
    }

    /// The plan of the effective configuration (`cidr`, `bridge_ip`,
    /// `default_dns`).
    pub fn from_config(config: &Config) -> Result<NetPlan, NetPlanError> {
        NetPlan::new(
            config.cidr.value,
            config.bridge_ip.value,
            config.default_dns.value.clone(),
        )
    }

    /// Addresses a guest may lease, lowest first: every host address of
    /// `cidr` except the gateway (the network and broadcast addresses are
    /// never hosts). Feed this to `StateDb::allocate_lease`.
    pub fn candidates(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.cidr.hosts().filter(move |ip| *ip != self.gateway)
    }

    /// The network part of a guest's kernel command line:
    /// `ip=GUEST::GATEWAY:NETMASK:HOSTNAME::off banger.dns=A,B` (empty
    /// interface: any physical link).
    /// `hostname` must be a valid VM name (a DNS label).
    pub fn kernel_args(&self, guest: Ipv4Addr, hostname: &str) -> Result<String, NetPlanError> {
        validate_vm_name(hostname)?;
        if !is_host(self.cidr, guest) || guest == self.gateway {
            return Err(NetPlanError::GuestUnusable {
                ip: guest,
                cidr: self.cidr,
                gateway: self.gateway,
            });
        }
        let dns: Vec<String> = self.dns.iter().map(IpAddr::to_string).collect();
        Ok(format!(
            "ip={guest}::{gw}:{mask}:{hostname}::off banger.dns={dns}",
            gw = self.gateway,
            mask = self.cidr.netmask(),
            dns = dns.join(","),
        ))
    }
}

/// Whether `ip` is in `net` and neither its network nor its broadcast
/// address (for /31 and /32 every address counts, as in RFC 3021).
fn is_host(net: Ipv4Net, ip: Ipv4Addr) -> bool {
    if !net.contains(&ip) {
        return false;
    }
    net.prefix_len() >= 31 || (ip != net.network() && ip != net.broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(cidr: &str, gw: &str) -> NetPlan {
        NetPlan::new(
            cidr.parse().unwrap(),
            gw.parse().unwrap(),
            vec![
                "1.1.1.1".parse().unwrap(),
                "2606:4700:4700::1111".parse().unwrap(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn candidates_skip_network_broadcast_and_gateway() {
        let p = plan("172.30.0.0/29", "172.30.0.1");
        let c: Vec<Ipv4Addr> = p.candidates().collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(172, 30, 0, i)).collect();
        assert_eq!(c, want);
        // The gateway may sit anywhere in the range.
        let p = plan("10.1.0.0/30", "10.1.0.2");
        assert_eq!(
            p.candidates().collect::<Vec<_>>(),
            [Ipv4Addr::new(10, 1, 0, 1)]
        );
        let p = plan("192.168.64.0/24", "192.168.64.1");
        assert_eq!(p.candidates().count(), 253);
        assert_eq!(p.candidates().next(), Some(Ipv4Addr::new(192, 168, 64, 2)));
        assert_eq!(
            p.candidates().last(),
            Some(Ipv4Addr::new(192, 168, 64, 254))
        );
    }

    #[test]
    fn host_bits_in_cidr_are_ignored() {
        let p = plan("172.30.0.9/29", "172.30.0.9");
        assert_eq!(p.cidr.to_string(), "172.30.0.8/29");
        assert!(p.candidates().all(|ip| ip != Ipv4Addr::new(172, 30, 0, 9)));
    }

    #[test]
    fn kernel_args_in_systemd_network_generator_syntax() {
        let p = plan("172.30.0.0/24", "172.30.0.1");
        let args = p
            .kernel_args(Ipv4Addr::new(172, 30, 0, 7), "web-1")
            .unwrap();
        assert_eq!(
            args,
            "ip=172.30.0.7::172.30.0.1:255.255.255.0:web-1::off banger.dns=1.1.1.1,2606:4700:4700::1111"
        );
        // Field by field as systemd-network-generator splits it.
        let ip = args.split(' ').next().unwrap().strip_prefix("ip=").unwrap();
        let fields: Vec<&str> = ip.split(':').collect();
        assert_eq!(
            fields,
            [
                "172.30.0.7",
                "",
                "172.30.0.1",
                "255.255.255.0",
                "web-1",
                "",
                "off"
            ]
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let p = plan("172.30.0.0/24", "172.30.0.1");
        for bad in ["172.30.0.0", "172.30.0.255", "172.30.0.1", "10.0.0.5"] {
            let err = p
                .kernel_args(bad.parse().unwrap(), "web")
                .unwrap_err()
                .to_string();
            assert!(err.contains(bad), "{err}");
        }
        let err = p
            .kernel_args(Ipv4Addr::new(172, 30, 0, 5), "Web")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"Web\""), "{err}");
        let err = NetPlan::new(
            "172.30.0.0/24".parse().unwrap(),
            "172.30.0.255".parse().unwrap(),
            vec!["1.1.1.1".parse().unwrap()],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("172.30.0.255"), "{err}");
        let err = NetPlan::new(
            "172.30.0.0/24".parse().unwrap(),
            "172.30.0.1".parse().unwrap(),
            vec![],
        );
        assert!(matches!(err, Err(NetPlanError::NoDns)));
    }

    #[test]
    fn plan_from_default_config() {
        let config = Config::defaults(std::path::Path::new("/home/u"));
        let p = NetPlan::from_config(&config).unwrap();
        assert_eq!(p.gateway, config.bridge_ip.value);
        assert!(p
            .candidates()
            .all(|ip| config.cidr.value.contains(&ip) && ip != p.gateway));
        assert!(p.candidates().next().is_some());
    }
}
