//! banger's nftables tables, through `nft -j`: `table inet banger` (NAT and
//! the guest fence at the IP layer) and `table bridge banger` (no frames
//! between two guests' taps).
//!
//! The tables are built from typed values (validated interface name, CIDRs,
//! ports) and replaced atomically, both in one transaction; no other table
//! is ever read for changes or written.
//!
//! The fence, for traffic entering from the bridge:
//! - input (to any host address): replies to the host's own connections,
//!   DNS (udp/tcp 53) and `allow_host_ports` on the bridge address; nothing
//!   else.
//! - forward: guest to guest only with `allow_guest_to_guest`; nothing is
//!   forwarded into the bridge but replies (so only the host itself opens
//!   connections to guests); 169.254.0.0/16 only with `allow_link_local`;
//!   never `deny_destinations`; everything else from the guest range is
//!   masqueraded out.
//! - bridge forward: frames between two banger taps are dropped unless
//!   `allow_guest_to_guest` (without `br_netfilter` the IP-layer rules never
//!   see bridged traffic).

use std::borrow::Cow;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::helper::{self, NftablesError, DEFAULT_NFT};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{FileOp, NftOp, OpError};
use crate::validate::{Fence, IfaceName, IFACE_PREFIX};

/// Name of banger's tables (families `inet` and `bridge`).
pub const TABLE_NAME: &str = "banger";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
// Standard priorities `srcnat` and `filter`.
const PRIO_SRCNAT: i32 = 100;
const PRIO_FILTER: i32 = 0;
/// Where link-local metadata services (169.254.169.254) live.
const LINK_LOCAL: &str = "169.254.0.0/16";
/// The `.vm` DNS server bangerd runs on the bridge address.
const DNS_PORT: u32 = 53;

fn nft_err(op: NftOp) -> impl FnOnce(NftablesError) -> OpError {
    move |e| OpError::Nft {
        op,
        source: Box::new(e),
    }
}

/// What to show for a failed `nft` call.
pub(super) fn describe(e: &NftablesError) -> String {
    match e {
        // The crate's Display leaves out what nft actually said.
        NftablesError::NftFailed { stderr, .. } => stderr.trim().to_owned(),
        other => other.to_string(),
    }
}

fn family_name(family: NfFamily) -> &'static str {
    match family {
        NfFamily::Bridge => "bridge",
        _ => "inet",
    }
}

fn chain(
    family: NfFamily,
    name: &'static str,
    hook: NfHook,
    kind: NfChainType,
    prio: i32,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family,
        table: TABLE_NAME.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    })
}

/// `forward` (filter hook, priority filter), in either table.
fn forward_chain(family: NfFamily) -> NfListObject<'static> {
    chain(
        family,
        "forward",
        NfHook::Forward,
        NfChainType::Filter,
        PRIO_FILTER,
    )
}

fn rule(
    family: NfFamily,
    chain: &'static str,
    expr: Vec<Statement<'static>>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family,
        table: TABLE_NAME.into(),
        chain: chain.into(),
        expr: expr.into(),
        ..Rule::default()
    })
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn text(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_owned()))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

/// `net` as nft lists it: a bare address for a /32, else a prefix.
fn network(net: Ipv4Net) -> Expression<'static> {
    if net.prefix_len() == 32 {
        return text(&net.addr().to_string());
    }
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(text(&net.network().to_string())),
        len: u32::from(net.prefix_len()),
    }))
}

fn iif(bridge: &IfaceName) -> Statement<'static> {
    matches(meta(MetaKey::Iifname), Operator::EQ, text(bridge.as_str()))
}

fn oif(bridge: &IfaceName) -> Statement<'static> {
    matches(meta(MetaKey::Oifname), Operator::EQ, text(bridge.as_str()))
}

fn established() -> Statement<'static> {
    let ct_state = Expression::Named(NamedExpression::CT(CT {
        key: "state".into(),
        ..CT::default()
    }));
    matches(
        ct_state,
        Operator::IN,
        Expression::List(vec![text("established"), text("related")]),
    )
}

/// The inet table's chains and rules, in the order `nft` lists them.
fn desired_inet(
    bridge: &IfaceName,
    cidr: Ipv4Net,
    address: Ipv4Addr,
    fence: &Fence,
) -> Vec<NfListObject<'static>> {
    const F: NfFamily = NfFamily::INet;
    let accept = || Statement::Accept(None);
    let drop = || Statement::Drop(None);
    let daddr = || payload("ip", "daddr");
    let mut out = vec![
        chain(
            F,
            "postrouting",
            NfHook::Postrouting,
            NfChainType::NAT,
            PRIO_SRCNAT,
        ),
        chain(F, "input", NfHook::Input, NfChainType::Filter, PRIO_FILTER),
        forward_chain(F),
        // Guests reach the outside world under the host's address.
        rule(
            F,
            "postrouting",
            vec![
                matches(payload("ip", "saddr"), Operator::EQ, network(cidr)),
                matches(meta(MetaKey::Oifname), Operator::NEQ, text(bridge.as_str())),
                Statement::Masquerade(None),
            ],
        ),
        // Input: answers to the host's own connections (SSH to the guest).
        rule(F, "input", vec![iif(bridge), established(), accept()]),
    ];
    let open_port = |proto: &'static str, port: u32| {
        rule(
            F,
            "input",
            vec![
                iif(bridge),
                matches(daddr(), Operator::EQ, text(&address.to_string())),
                matches(
                    payload(proto, "dport"),
                    Operator::EQ,
                    Expression::Number(port),
                ),
                accept(),
            ],
        )
    };
    for port in
        std::iter::once(DNS_PORT).chain(fence.allow_host_ports.iter().map(|&p| u32::from(p)))
    {
        out.push(open_port("udp", port));
        out.push(open_port("tcp", port));
    }
    out.push(rule(F, "input", vec![iif(bridge), drop()]));

    // Forward: replies to guests first.
    out.push(rule(
        F,
        "forward",
        vec![oif(bridge), established(), accept()],
    ));
    // Guest to guest routed through the host (a guest sending to another
    // guest's address via the gateway's MAC).
    out.push(rule(
        F,
        "forward",
        vec![
            iif(bridge),
            oif(bridge),
            if fence.allow_guest_to_guest {
                accept()
            } else {
                drop()
            },
        ],
    ));
    // Nobody else opens connections into the guest network.
    out.push(rule(F, "forward", vec![oif(bridge), drop()]));
    let mut denied = Vec::new();
    if !fence.allow_link_local {
        denied.push(LINK_LOCAL.parse().expect("LINK_LOCAL is a network"));
    }
    denied.extend(fence.deny_destinations.iter().copied());
    for net in denied {
        out.push(rule(
            F,
            "forward",
            vec![
                iif(bridge),
                matches(daddr(), Operator::EQ, network(net)),
                drop(),
            ],
        ));
    }
    // Only the guest range leaves (no spoofed sources), only IPv4 (the NAT
    // is IPv4).
    out.push(rule(
        F,
        "forward",
        vec![
            iif(bridge),
            matches(payload("ip", "saddr"), Operator::EQ, network(cidr)),
            accept(),
        ],
    ));
    out.push(rule(F, "forward", vec![iif(bridge), drop()]));
    out
}

/// The bridge table, or `None` when guests may talk to each other.
fn desired_bridge(fence: &Fence) -> Option<Vec<NfListObject<'static>>> {
    if fence.allow_guest_to_guest {
        return None;
    }
    const F: NfFamily = NfFamily::Bridge;
    // Every tap banger makes is `banger-t<N>` or `banger-p<N>`; matching on
    // the ports rather than `meta ibrname` works on kernels without
    // nft_meta_bridge.
    let taps = format!("{IFACE_PREFIX}-*");
    Some(vec![
        forward_chain(F),
        rule(
            F,
            "forward",
            vec![
                matches(meta(MetaKey::Iifname), Operator::EQ, text(&taps)),
                matches(meta(MetaKey::Oifname), Operator::EQ, text(&taps)),
                Statement::Drop(None),
            ],
        ),
    ])
}

fn table(family: NfFamily) -> Table<'static> {
    Table {
        family,
        name: TABLE_NAME.into(),
        handle: None,
    }
}

/// Families in which `table <family> banger` exists.
async fn existing_tables() -> Result<Vec<NfFamily>, OpError> {
    let listed = helper::get_current_ruleset_with_args_async(DEFAULT_NFT, ["list", "tables"])
        .await
        .map_err(nft_err(NftOp::ListTables))?;
    Ok(listed
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Table(t)) if t.name == TABLE_NAME => Some(t.family),
            _ => None,
        })
        .filter(|f| matches!(f, NfFamily::INet | NfFamily::Bridge))
        .collect())
}

/// Does the existing table of `family` hold exactly the desired chains and rules?
async fn table_matches(family: NfFamily, want: &[NfListObject<'static>]) -> Result<bool, OpError> {
    let listed = match helper::get_current_ruleset_with_args_async(
        DEFAULT_NFT,
        ["list", "table", family_name(family), TABLE_NAME],
    )
    .await
    {
        Ok(listed) => listed,
        // Content this crate cannot parse is not ours: replace it.
        Err(NftablesError::NftInvalidJson(_)) => return Ok(false),
        Err(e) => return Err(nft_err(NftOp::ListTable)(e)),
    };
    let mut have = Vec::new();
    for obj in listed.objects.iter() {
        match obj {
            NfObject::ListObject(NfListObject::Chain(c)) => have.push(NfListObject::Chain(Chain {
                handle: None,
                ..c.clone()
            })),
            NfObject::ListObject(NfListObject::Rule(r)) => have.push(NfListObject::Rule(Rule {
                handle: None,
                index: None,
                ..r.clone()
            })),
            NfObject::ListObject(NfListObject::Table(_) | NfListObject::MetainfoObject(_)) => {}
            _ => return Ok(false),
        }
    }
    Ok(have == want)
}

/// Make `table inet banger` masquerade `cidr` and fence the guests on
/// `bridge` (bridge address `address`) in, and `table bridge banger` keep
/// guests apart unless `fence` allows it; replace both atomically when
/// either differs.
pub(super) async fn ensure_nat(
    bridge: &IfaceName,
    cidr: Ipv4Net,
    address: Ipv4Addr,
    fence: &Fence,
) -> Result<bool, OpError> {
    let want = [
        (
            NfFamily::INet,
            Some(desired_inet(bridge, cidr, address, fence)),
        ),
        (NfFamily::Bridge, desired_bridge(fence)),
    ];
    let existing = existing_tables().await?;
    let mut same = true;
    for (family, objects) in &want {
        same &= match objects {
            Some(objects) => existing.contains(family) && table_matches(*family, objects).await?,
            None => !existing.contains(family),
        };
    }
    if same {
        return Ok(false);
    }
    // `add` before `delete` makes the delete valid whether or not the table
    // existed; the whole batch is one netlink transaction.
    let mut objects = Vec::new();
    for (family, desired) in want {
        objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table(
            family,
        )))));
        objects.push(NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(
            table(family),
        ))));
        if let Some(desired) = desired {
            objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table(
                family,
            )))));
            objects.extend(
                desired
                    .into_iter()
                    .map(|o| NfObject::CmdObject(NfCmd::Add(o))),
            );
        }
    }
    helper::apply_ruleset_async(&Nftables {
        objects: objects.into(),
    })
    .await
    .map_err(nft_err(NftOp::ApplyTables))?;
    Ok(true)
}

/// Delete banger's tables that exist.
pub(super) async fn remove_nat() -> Result<bool, OpError> {
    let existing = existing_tables().await?;
    if existing.is_empty() {
        return Ok(false);
    }
    let objects: Vec<NfObject<'static>> = existing
        .into_iter()
        .map(|f| NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table(f)))))
        .collect();
    helper::apply_ruleset_async(&Nftables {
        objects: objects.into(),
    })
    .await
    .map_err(nft_err(NftOp::DeleteTables))?;
    Ok(true)
}

/// NAT needs IPv4 forwarding; it is per network namespace. Never turned off
/// again: other software on the host may rely on it too.
pub(super) fn enable_ip_forward() -> Result<bool, OpError> {
    let file_err = |op| {
        move |source| OpError::File {
            op,
            path: IP_FORWARD.into(),
            source,
        }
    };
    let current = std::fs::read_to_string(IP_FORWARD).map_err(file_err(FileOp::Read))?;
    if current.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(IP_FORWARD, "1\n").map_err(file_err(FileOp::Write))?;
    Ok(true)
}
