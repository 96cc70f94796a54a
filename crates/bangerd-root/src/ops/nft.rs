//! banger's one nftables table, `table inet banger`, through `nft -j`.
//!
//! The table is built from typed values (validated interface name and CIDR)
//! and replaced atomically; no other table is ever read for changes or
//! written.

use std::borrow::Cow;

use ipnet::Ipv4Net;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::helper::{self, NftablesError, DEFAULT_NFT};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::OpError;
use crate::validate::IfaceName;

/// Name of banger's table (family `inet`).
pub const TABLE_NAME: &str = "banger";
const FAMILY: NfFamily = NfFamily::INet;
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
// Standard priorities `srcnat` and `filter`.
const PRIO_SRCNAT: i32 = 100;
const PRIO_FILTER: i32 = 0;

fn nft_err(what: &'static str) -> impl FnOnce(NftablesError) -> OpError {
    move |e| {
        let message = match e {
            // The crate's Display leaves out what nft actually said.
            NftablesError::NftFailed { stderr, .. } => stderr.trim().to_owned(),
            other => other.to_string(),
        };
        OpError::Nft { what, message }
    }
}

fn chain(name: &'static str, hook: NfHook, kind: NfChainType, prio: i32) -> Chain<'static> {
    Chain {
        family: FAMILY,
        table: TABLE_NAME.into(),
        name: name.into(),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }
}

fn rule(chain: &'static str, expr: Vec<Statement<'static>>) -> Rule<'static> {
    Rule {
        family: FAMILY,
        table: TABLE_NAME.into(),
        chain: chain.into(),
        expr: expr.into(),
        ..Rule::default()
    }
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

/// The chains and rules of the table, in the order `nft` lists them.
fn desired(bridge: &IfaceName, cidr: Ipv4Net) -> Vec<NfListObject<'static>> {
    let saddr = Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: "ip".into(),
            field: "saddr".into(),
        },
    )));
    let prefix = Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(text(&cidr.network().to_string())),
        len: u32::from(cidr.prefix_len()),
    }));
    let ct_state = Expression::Named(NamedExpression::CT(CT {
        key: "state".into(),
        ..CT::default()
    }));
    let accept = Statement::Accept(None);
    vec![
        NfListObject::Chain(chain(
            "postrouting",
            NfHook::Postrouting,
            NfChainType::NAT,
            PRIO_SRCNAT,
        )),
        NfListObject::Chain(chain(
            "forward",
            NfHook::Forward,
            NfChainType::Filter,
            PRIO_FILTER,
        )),
        // Guests reach the outside world under the host's address.
        NfListObject::Rule(rule(
            "postrouting",
            vec![
                matches(saddr, Operator::EQ, prefix),
                matches(meta(MetaKey::Oifname), Operator::NEQ, text(bridge.as_str())),
                Statement::Masquerade(None),
            ],
        )),
        NfListObject::Rule(rule(
            "forward",
            vec![
                matches(meta(MetaKey::Iifname), Operator::EQ, text(bridge.as_str())),
                accept.clone(),
            ],
        )),
        NfListObject::Rule(rule(
            "forward",
            vec![
                matches(meta(MetaKey::Oifname), Operator::EQ, text(bridge.as_str())),
                matches(
                    ct_state,
                    Operator::IN,
                    Expression::List(vec![text("established"), text("related")]),
                ),
                accept,
            ],
        )),
    ]
}

fn table() -> Table<'static> {
    Table {
        family: FAMILY,
        name: TABLE_NAME.into(),
        handle: None,
    }
}

async fn table_exists() -> Result<bool, OpError> {
    let listed = helper::get_current_ruleset_with_args_async(DEFAULT_NFT, ["list", "tables"])
        .await
        .map_err(nft_err("list tables"))?;
    Ok(listed.objects.iter().any(|o| {
        matches!(o, NfObject::ListObject(NfListObject::Table(t)) if t.family == FAMILY && t.name == TABLE_NAME)
    }))
}

/// Does the existing table hold exactly the desired chains and rules?
async fn table_matches(want: &[NfListObject<'static>]) -> Result<bool, OpError> {
    let listed = match helper::get_current_ruleset_with_args_async(
        DEFAULT_NFT,
        ["list", "table", "inet", TABLE_NAME],
    )
    .await
    {
        Ok(listed) => listed,
        // Content this crate cannot parse is not ours: replace it.
        Err(NftablesError::NftInvalidJson(_)) => return Ok(false),
        Err(e) => return Err(nft_err("list table inet banger")(e)),
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

/// Make `table inet banger` masquerade `cidr` and accept forwarding for
/// `bridge`; replace it atomically when it differs.
pub(super) async fn ensure_nat(bridge: &IfaceName, cidr: Ipv4Net) -> Result<bool, OpError> {
    let want = desired(bridge, cidr);
    if table_exists().await? && table_matches(&want).await? {
        return Ok(false);
    }
    // `add` before `delete` makes the delete valid whether or not the table
    // existed; the whole batch is one netlink transaction.
    let mut objects = vec![
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table()))),
    ];
    objects.extend(want.into_iter().map(|o| NfObject::CmdObject(NfCmd::Add(o))));
    helper::apply_ruleset_async(&Nftables {
        objects: objects.into(),
    })
    .await
    .map_err(nft_err("apply table inet banger"))?;
    Ok(true)
}

/// Delete `table inet banger` if it exists.
pub(super) async fn remove_nat() -> Result<bool, OpError> {
    if !table_exists().await? {
        return Ok(false);
    }
    let objects = vec![NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(
        table(),
    )))];
    helper::apply_ruleset_async(&Nftables {
        objects: objects.into(),
    })
    .await
    .map_err(nft_err("delete table inet banger"))?;
    Ok(true)
}

/// NAT needs IPv4 forwarding; it is per network namespace. Never turned off
/// again: other software on the host may rely on it too.
pub(super) fn enable_ip_forward() -> Result<bool, OpError> {
    let file_err = |what| {
        move |source| OpError::File {
            what,
            path: IP_FORWARD.into(),
            source,
        }
    };
    let current = std::fs::read_to_string(IP_FORWARD).map_err(file_err("read"))?;
    if current.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(IP_FORWARD, "1\n").map_err(file_err("write"))?;
    Ok(true)
}
