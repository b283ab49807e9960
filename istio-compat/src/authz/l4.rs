//! ztunnel's L4 authorization over the workload API's policies.
//!
//! For a connection to a workload: the policies that apply to it
//! ([`WorkloadModel::policies_for`]: global, its namespace's, and those selecting
//! it); any matching DENY policy denies; otherwise, when ALLOW policies apply, one of
//! them must match; with none, the connection is allowed. A policy matches when any
//! rule does, a rule when every clause does, a clause when any of its matches does
//! (a clause without matches holds), and a match when each of its non-empty fields
//! holds (a positive field: any value matches; a `not_` field: none does). An empty
//! match holds for nothing, as in ztunnel (`rbac.rs`, `Authorization::matches`).
//!
//! The peer's identity is the verified mTLS identity, or none for plaintext: principal
//! and namespace fields then see the empty string, so `presence` does not match it and
//! `not_principals: [presence]` does — which is how istiod's converted
//! PeerAuthentication (`converted_peer_authentication_*`, a DENY on
//! "no principal") rejects plaintext to a STRICT workload or port.

use std::net::IpAddr;
use std::sync::Arc;

use crate::model::workload::{Identity, Match, NameMatch, Policy, PolicyAction, PolicyScope, ServiceAccountMatch, Workload, WorkloadModel};
use crate::model::Name;

mod principal;
use principal::Principal;

/// A connection as L4 authorization sees it.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// The verified mTLS peer; `None` for plaintext.
    pub source: Option<&'a Identity>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

/// What the policies decided, and which policy decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No DENY matched, and an ALLOW did (`Some(policy)`) or none applies (`None`).
    Allow(Option<Name>),
    /// A DENY policy (`namespace/name`) matched.
    Denied(Name),
    /// ALLOW policies apply and none matched.
    NotAllowed,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// The decision for `conn` to `workload`.
///
/// Costs no allocation per policy tried: the peer's principal is compared piece by
/// piece ([`Principal`]), never formatted, and the workload's selection of policies
/// is sorted once per decision ([`applicable`]). Only the decision's policy name
/// (`namespace/name`) is built, once.
pub fn evaluate(model: &WorkloadModel, workload: &Workload, conn: &Connection<'_>) -> Decision {
    let peer = Peer::of(conn);
    let mut allow_applies = false;
    let mut allowed_by = None;
    for policy in applicable(model, workload) {
        match policy.action {
            PolicyAction::Deny => {
                if policy_holds(policy, &peer) {
                    return Decision::Denied(policy.key());
                }
            }
            PolicyAction::Allow => {
                allow_applies = true;
                if allowed_by.is_none() && policy_holds(policy, &peer) {
                    allowed_by = Some(policy.key());
                }
            }
        }
    }
    match (allow_applies, allowed_by) {
        (_, Some(p)) => Decision::Allow(Some(p)),
        (false, None) => Decision::Allow(None),
        (true, None) => Decision::NotAllowed,
    }
}

/// The policies that apply to `workload`, in the model's (key) order: the same
/// sequence as [`WorkloadModel::policies_for`] (pinned by a test). That one looks each
/// workload-selector policy up in the workload's whole selection list, which is
/// quadratic in the policies selecting one workload (2 ms per decision at 1,000);
/// here the selection is sorted once and searched.
fn applicable<'a>(model: &'a WorkloadModel, workload: &'a Workload) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
    let mut selected: Vec<&str> = workload.authorization_policies.iter().map(|n| &**n).collect();
    selected.sort_unstable();
    model
        .policies
        .iter()
        .filter(move |(key, p)| match p.scope {
            PolicyScope::Global => true,
            PolicyScope::Namespace => p.namespace.is_empty() || p.namespace == workload.namespace,
            PolicyScope::WorkloadSelector => selected.binary_search(&&***key).is_ok(),
        })
        .map(|(_, p)| p)
}

/// Whether `policy` matches `conn` (regardless of its action).
pub fn matches(policy: &Policy, conn: &Connection<'_>) -> bool {
    policy_holds(policy, &Peer::of(conn))
}

/// A connection with its peer's principal ready to compare.
struct Peer<'a> {
    conn: &'a Connection<'a>,
    principal: Principal<'a>,
    namespace: &'a str,
}

impl<'a> Peer<'a> {
    fn of(conn: &'a Connection<'a>) -> Self {
        Peer { conn, principal: Principal::of(conn.source), namespace: conn.source.map_or("", |id| &*id.namespace) }
    }
}

fn policy_holds(policy: &Policy, peer: &Peer<'_>) -> bool {
    policy
        .rules
        .iter()
        .any(|rule| rule.clauses.iter().all(|clause| clause.matches.is_empty() || clause.matches.iter().any(|m| !m.is_empty() && match_holds(m, peer))))
}

fn match_holds(m: &Match, peer: &Peer<'_>) -> bool {
    let conn = peer.conn;
    let namespaces = |list: &[NameMatch]| list.iter().any(|n| n.matches(peer.namespace));
    let principals = |list: &[NameMatch]| list.iter().any(|n| peer.principal.matches(n));
    let accounts = |list: &[ServiceAccountMatch]| conn.source.is_some_and(|id| list.iter().any(|a| a.matches(id)));
    let nets = |list: &[ipnet::IpNet], ip: IpAddr| list.iter().any(|n| n.contains(&canonical(ip)));
    let positive = |empty: bool, hit: bool| empty || hit;
    positive(m.namespaces.is_empty(), namespaces(&m.namespaces))
        && !namespaces(&m.not_namespaces)
        && positive(m.principals.is_empty(), principals(&m.principals))
        && !principals(&m.not_principals)
        && positive(m.service_accounts.is_empty(), accounts(&m.service_accounts))
        && !accounts(&m.not_service_accounts)
        && positive(m.source_ips.is_empty(), nets(&m.source_ips, conn.source_ip))
        && !nets(&m.not_source_ips, conn.source_ip)
        && positive(m.destination_ips.is_empty(), nets(&m.destination_ips, conn.destination_ip))
        && !nets(&m.not_destination_ips, conn.destination_ip)
        && positive(m.destination_ports.is_empty(), m.destination_ports.contains(&conn.destination_port))
        && !m.not_destination_ports.contains(&conn.destination_port)
}

/// Names istiod gives the policies it converts PeerAuthentication into.
const CONVERTED_PEER_AUTHENTICATION: [&str; 2] = ["converted_peer_authentication_", "istio_converted_static_strict"];

/// Where a workload requires mTLS: plaintext to these ports is denied by its
/// PeerAuthentication (as istiod converts it), whoever sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MtlsRequirement {
    /// For ports not in `ports`.
    pub strict: bool,
    /// Ports whose mode differs from `strict` (`true`: STRICT).
    pub ports: std::collections::BTreeMap<u16, bool>,
}

/// The STRICT ports of `workload`, from the converted PeerAuthentication policies
/// that apply to it (other policies are authorization, not mTLS mode). This is the
/// set the kernel's inbound guard drops plaintext for.
pub fn mtls_requirement(model: &WorkloadModel, workload: &Workload) -> MtlsRequirement {
    let peer_authn: Vec<&Policy> =
        model.policies_for(workload).map(|p| &**p).filter(|p| CONVERTED_PEER_AUTHENTICATION.iter().any(|n| p.name.starts_with(n))).collect();
    let mut named_ports = std::collections::BTreeSet::new();
    for m in peer_authn.iter().flat_map(|p| &p.rules).flat_map(|r| &r.clauses).flat_map(|c| &c.matches) {
        named_ports.extend(m.destination_ports.iter().chain(&m.not_destination_ports).copied());
    }
    let source_ip = IpAddr::from([0, 0, 0, 0]);
    let destination_ip = workload.addresses.first().copied().unwrap_or(source_ip);
    let plaintext_denied = |port: u16| {
        let conn = Connection { source: None, source_ip, destination_ip, destination_port: port };
        peer_authn.iter().any(|p| p.action == PolicyAction::Deny && matches(p, &conn))
    };
    // Port 0 is never named: it stands for every port the policies do not name.
    let strict = plaintext_denied(0);
    let ports = named_ports.into_iter().map(|p| (p, plaintext_denied(p))).filter(|(_, s)| *s != strict).collect();
    MtlsRequirement { strict, ports }
}

/// A v4-mapped IPv6 address as IPv4, as the policies write them.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;
