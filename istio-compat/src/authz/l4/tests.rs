use std::net::IpAddr;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::model::workload::{AddressResource, Workload, WorkloadModel};

fn policy(v: serde_json::Value) -> Policy {
    serde_json::from_value(v).unwrap()
}

fn model(policies: Vec<Policy>, selected: &[&str]) -> (WorkloadModel, Arc<Workload>) {
    let mut m = WorkloadModel::default();
    for p in policies {
        m.insert_policy(p);
    }
    let w: Workload = serde_json::from_value(json!({
        "uid": "Kubernetes//Pod/foo/a", "namespace": "foo", "addresses": ["10.0.0.1"],
        "identity": "spiffe://cluster.local/ns/foo/sa/a", "authorization_policies": selected }))
    .unwrap();
    let w = Arc::new(w);
    m.insert_address(AddressResource::Workload(w.clone()));
    (m, w)
}

fn conn<'a>(source: Option<&'a Identity>, src: &str, port: u16) -> Connection<'a> {
    Connection { source, source_ip: src.parse().unwrap(), destination_ip: "10.0.0.1".parse().unwrap(), destination_port: port }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn no_policy_allows_and_an_allow_policy_allows_only_what_it_matches() {
    let (m, w) = model(vec![], &[]);
    assert_eq!(evaluate(&m, &w, &conn(None, "10.0.0.9", 80)), Decision::Allow(None));

    let allow = policy(json!({ "name": "only-bar", "namespace": "foo", "scope": "NAMESPACE", "action": "ALLOW",
        "rules": [{ "clauses": [{ "matches": [{ "namespaces": [{ "exact": "bar" }] }] }] }] }));
    let (m, w) = model(vec![allow], &[]);
    let bar = Identity::new("cluster.local", "bar", "client");
    let baz = Identity::new("cluster.local", "baz", "client");
    assert_eq!(evaluate(&m, &w, &conn(Some(&bar), "10.0.0.9", 80)), Decision::Allow(Some("foo/only-bar".into())));
    assert_eq!(evaluate(&m, &w, &conn(Some(&baz), "10.0.0.9", 80)), Decision::NotAllowed);
    assert_eq!(evaluate(&m, &w, &conn(None, "10.0.0.9", 80)), Decision::NotAllowed, "plaintext has no namespace");
}

#[test]
fn deny_wins_over_allow() {
    let allow_all = policy(json!({ "name": "all", "namespace": "foo", "scope": "NAMESPACE", "action": "ALLOW",
        "rules": [{ "clauses": [] }] }));
    let deny_port = policy(json!({ "name": "no-9090", "namespace": "foo", "scope": "WORKLOAD_SELECTOR", "action": "DENY",
        "rules": [{ "clauses": [{ "matches": [{ "destination_ports": [9090] }] }] }] }));
    let (m, w) = model(vec![allow_all, deny_port], &["foo/no-9090"]);
    assert_eq!(evaluate(&m, &w, &conn(None, "10.0.0.9", 9090)), Decision::Denied("foo/no-9090".into()));
    assert!(evaluate(&m, &w, &conn(None, "10.0.0.9", 8080)).allowed());
}

#[test]
fn an_empty_match_matches_nothing_and_a_rule_without_clauses_everything() {
    // ztunnel (rbac.rs `Authorization::matches`) skips empty matches; istiod warns that
    // such a DENY "has no enforceable rules at ztunnel".
    let empty_match = policy(json!({ "name": "empty", "namespace": "foo", "scope": "NAMESPACE", "action": "DENY",
        "rules": [{ "clauses": [{ "matches": [{}] }] }] }));
    let (m, w) = model(vec![empty_match], &[]);
    assert_eq!(evaluate(&m, &w, &conn(None, "10.0.0.9", 80)), Decision::Allow(None));
    let no_clauses = policy(json!({ "name": "all", "namespace": "foo", "scope": "NAMESPACE", "action": "DENY", "rules": [{ "clauses": [] }] }));
    let (m, w) = model(vec![no_clauses], &[]);
    assert_eq!(evaluate(&m, &w, &conn(None, "10.0.0.9", 80)), Decision::Denied("foo/all".into()));
    // A namespace policy without a namespace sits with the global ones in ztunnel.
    let unnamespaced = policy(json!({ "name": "nons", "namespace": "", "scope": "NAMESPACE", "action": "DENY", "rules": [{ "clauses": [] }] }));
    let (m, w) = model(vec![unnamespaced], &[]);
    assert_eq!(evaluate(&m, &w, &conn(None, "10.0.0.9", 80)), Decision::Denied("/nons".into()));
}

#[test]
fn scope_decides_which_policies_apply() {
    let elsewhere = policy(json!({ "name": "deny-all", "namespace": "other", "scope": "NAMESPACE", "action": "DENY",
        "rules": [{ "clauses": [] }] }));
    let unselected = policy(json!({ "name": "deny-selected", "namespace": "foo", "scope": "WORKLOAD_SELECTOR", "action": "DENY",
        "rules": [{ "clauses": [] }] }));
    let (m, w) = model(vec![elsewhere, unselected], &[]);
    assert!(evaluate(&m, &w, &conn(None, "10.0.0.9", 80)).allowed());
    let global = policy(json!({ "name": "deny-mesh", "namespace": "istio-system", "scope": "GLOBAL", "action": "DENY",
        "rules": [{ "clauses": [] }] }));
    let (m, w) = model(vec![global], &[]);
    assert_eq!(evaluate(&m, &w, &conn(None, "10.0.0.9", 80)), Decision::Denied("istio-system/deny-mesh".into()));
}

#[test]
fn principals_are_matched_without_the_spiffe_scheme_and_presence_needs_an_identity() {
    let p = |m: serde_json::Value| {
        policy(json!({ "name": "p", "namespace": "foo", "scope": "NAMESPACE", "action": "ALLOW", "rules": [{ "clauses": [{ "matches": [m] }] }] }))
    };
    let id = Identity::new("cluster.local", "bar", "sleep");
    let c = conn(Some(&id), "10.0.0.9", 80);
    assert!(matches(&p(json!({ "principals": [{ "exact": "cluster.local/ns/bar/sa/sleep" }] })), &c));
    assert!(!matches(&p(json!({ "principals": [{ "exact": "spiffe://cluster.local/ns/bar/sa/sleep" }] })), &c));
    assert!(matches(&p(json!({ "principals": [{ "suffix": "/sa/sleep" }] })), &c));
    assert!(matches(&p(json!({ "principals": [{ "presence": null }] })), &c));
    assert!(!matches(&p(json!({ "principals": [{ "presence": null }] })), &conn(None, "10.0.0.9", 80)));
    assert!(matches(&p(json!({ "not_principals": [{ "presence": null }] })), &conn(None, "10.0.0.9", 80)));
    assert!(matches(&p(json!({ "service_accounts": [{ "namespace": "bar", "service_account": "sleep" }] })), &c));
    assert!(!matches(&p(json!({ "service_accounts": [{ "namespace": "bar", "service_account": "sleep" }] })), &conn(None, "10.0.0.9", 80)));
    assert!(!matches(&p(json!({ "not_service_accounts": [{ "namespace": "bar", "service_account": "sleep" }] })), &c));
}

#[test]
fn addresses_match_by_prefix_and_v4_mapped_sources_as_ipv4() {
    let p = policy(json!({ "name": "p", "namespace": "foo", "scope": "NAMESPACE", "action": "ALLOW",
        "rules": [{ "clauses": [{ "matches": [{ "source_ips": ["10.1.0.0/16"], "not_source_ips": ["10.1.2.0/24"], "destination_ips": ["10.0.0.1/32"] }] }] }] }));
    assert!(matches(&p, &conn(None, "10.1.1.1", 80)));
    assert!(matches(&p, &conn(None, "::ffff:10.1.1.1", 80)));
    assert!(!matches(&p, &conn(None, "10.1.2.1", 80)));
    assert!(!matches(&p, &conn(None, "10.2.0.1", 80)));
    let mut other_dst = conn(None, "10.1.1.1", 80);
    other_dst.destination_ip = ip("10.0.0.2");
    assert!(!matches(&p, &other_dst));
}

#[test]
fn rules_or_clauses_and_matches_or() {
    // (port 80 OR port 81) AND from 10.1/16, OR: anything from 10.9.9.9.
    let p = policy(json!({ "name": "p", "namespace": "foo", "scope": "NAMESPACE", "action": "ALLOW", "rules": [
        { "clauses": [ { "matches": [{ "destination_ports": [80] }, { "destination_ports": [81] }] }, { "matches": [{ "source_ips": ["10.1.0.0/16"] }] } ] },
        { "clauses": [ { "matches": [{ "source_ips": ["10.9.9.9/32"] }] } ] } ] }));
    assert!(matches(&p, &conn(None, "10.1.0.1", 81)));
    assert!(!matches(&p, &conn(None, "10.1.0.1", 82)));
    assert!(!matches(&p, &conn(None, "10.2.0.1", 80)));
    assert!(matches(&p, &conn(None, "10.9.9.9", 9999)));
    // An ALLOW policy without rules allows nothing.
    assert!(!matches(&policy(json!({ "name": "empty", "namespace": "foo", "action": "ALLOW" })), &conn(None, "10.1.0.1", 80)));
}

#[test]
fn only_converted_peer_authentication_makes_a_port_strict() {
    let (m, w) = model(vec![], &[]);
    assert_eq!(mtls_requirement(&m, &w), MtlsRequirement::default());
    // An ordinary DENY on plaintext is authorization, not an mTLS mode.
    let deny_plaintext = policy(json!({ "name": "no-plaintext", "namespace": "foo", "scope": "NAMESPACE", "action": "DENY",
        "rules": [{ "clauses": [{ "matches": [{ "not_principals": [{ "presence": null }] }] }] }] }));
    let (m, w) = model(vec![deny_plaintext], &[]);
    assert_eq!(mtls_requirement(&m, &w), MtlsRequirement::default());
    // The mesh-wide static STRICT policy: every port.
    let static_strict = policy(json!({ "name": "istio_converted_static_strict", "namespace": "istio-system", "scope": "GLOBAL", "action": "DENY",
        "rules": [{ "clauses": [{ "matches": [{ "not_principals": [{ "presence": null }] }] }] }] }));
    let (m, w) = model(vec![static_strict], &[]);
    assert_eq!(mtls_requirement(&m, &w), MtlsRequirement { strict: true, ports: Default::default() });
}

/// Equivalence with the evaluation as it was before it stopped formatting the peer's
/// identity per match and scanning the workload's selection per policy: the formatted
/// principal and [`WorkloadModel::policies_for`], verbatim otherwise.
mod equivalence {
    use proptest::prelude::*;

    use super::*;
    use crate::model::workload::{Clause, NameMatch, PolicyScope, Rule, ServiceAccountMatch};

    fn reference_match(m: &Match, conn: &Connection<'_>) -> bool {
        let principal = conn.source.map(|id| id.to_string()).unwrap_or_default();
        let principal = principal.strip_prefix("spiffe://").unwrap_or(&principal);
        let namespace = conn.source.map(|id| &*id.namespace).unwrap_or("");
        let names = |list: &[NameMatch], value: &str| list.iter().any(|n| n.matches(value));
        let accounts = |list: &[ServiceAccountMatch]| conn.source.is_some_and(|id| list.iter().any(|a| a.matches(id)));
        let nets = |list: &[ipnet::IpNet], ip: IpAddr| list.iter().any(|n| n.contains(&canonical(ip)));
        let positive = |empty: bool, hit: bool| empty || hit;
        positive(m.namespaces.is_empty(), names(&m.namespaces, namespace))
            && !names(&m.not_namespaces, namespace)
            && positive(m.principals.is_empty(), names(&m.principals, principal))
            && !names(&m.not_principals, principal)
            && positive(m.service_accounts.is_empty(), accounts(&m.service_accounts))
            && !accounts(&m.not_service_accounts)
            && positive(m.source_ips.is_empty(), nets(&m.source_ips, conn.source_ip))
            && !nets(&m.not_source_ips, conn.source_ip)
            && positive(m.destination_ips.is_empty(), nets(&m.destination_ips, conn.destination_ip))
            && !nets(&m.not_destination_ips, conn.destination_ip)
            && positive(m.destination_ports.is_empty(), m.destination_ports.contains(&conn.destination_port))
            && !m.not_destination_ports.contains(&conn.destination_port)
    }

    fn reference_matches(policy: &Policy, conn: &Connection<'_>) -> bool {
        policy
            .rules
            .iter()
            .any(|rule| rule.clauses.iter().all(|clause| clause.matches.is_empty() || clause.matches.iter().any(|m| !m.is_empty() && reference_match(m, conn))))
    }

    fn reference_evaluate(model: &WorkloadModel, workload: &Workload, conn: &Connection<'_>) -> Decision {
        let mut allow_applies = false;
        let mut allowed_by = None;
        for policy in model.policies_for(workload) {
            match policy.action {
                PolicyAction::Deny => {
                    if reference_matches(policy, conn) {
                        return Decision::Denied(policy.key());
                    }
                }
                PolicyAction::Allow => {
                    allow_applies = true;
                    if allowed_by.is_none() && reference_matches(policy, conn) {
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

    /// Names made of the identities' pieces, so that exact, prefix and suffix matches
    /// often hold and often fail at a piece boundary.
    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["cluster.local", "td", "/ns/", "/sa/", "foo", "bar", "a", "b", "/", "é", ""]), 0..6)
            .prop_map(|p| p.concat())
    }

    fn name_match() -> impl Strategy<Value = NameMatch> {
        prop_oneof![
            text().prop_map(|s| NameMatch::Exact(s.into())),
            text().prop_map(|s| NameMatch::Prefix(s.into())),
            text().prop_map(|s| NameMatch::Suffix(s.into())),
            Just(NameMatch::Exact("cluster.local/ns/foo/sa/a".into())),
            Just(NameMatch::Presence),
        ]
    }

    fn a_match() -> impl Strategy<Value = Match> {
        let names = || prop::collection::vec(name_match(), 0..3);
        let accounts = || prop::collection::vec((prop::sample::select(vec!["foo", "bar"]), prop::sample::select(vec!["a", "b"])), 0..2);
        let nets = || prop::collection::vec(prop::sample::select(vec!["198.18.0.0/24", "198.18.0.1/32", "198.19.0.0/16"]), 0..2);
        let ports = || prop::collection::vec(prop::sample::select(vec![80u16, 81]), 0..2);
        ((names(), names(), names(), names()), (accounts(), accounts()), (nets(), nets(), nets(), nets()), (ports(), ports())).prop_map(
            |((ns, not_ns, pr, not_pr), (accts, not_accts), (sip, not_sip, dip, not_dip), (dp, not_dp))| {
                let sa = |v: Vec<(&str, &str)>| v.into_iter().map(|(n, s)| ServiceAccountMatch { namespace: n.into(), service_account: s.into() }).collect();
                let nets = |v: Vec<&str>| v.into_iter().map(|n| n.parse().unwrap()).collect();
                Match {
                    namespaces: ns,
                    not_namespaces: not_ns,
                    principals: pr,
                    not_principals: not_pr,
                    service_accounts: sa(accts),
                    not_service_accounts: sa(not_accts),
                    source_ips: nets(sip),
                    not_source_ips: nets(not_sip),
                    destination_ips: nets(dip),
                    not_destination_ips: nets(not_dip),
                    destination_ports: dp,
                    not_destination_ports: not_dp,
                }
            },
        )
    }

    fn a_policy() -> impl Strategy<Value = Policy> {
        let clause = prop::collection::vec(a_match(), 0..3).prop_map(|matches| Clause { matches });
        let rule = prop::collection::vec(clause, 0..3).prop_map(|clauses| Rule { clauses });
        (
            prop::sample::select(vec!["p0", "p1", "p2", "p3", "p4", "p5"]),
            prop::sample::select(vec!["", "foo", "bar"]),
            prop::sample::select(vec![PolicyScope::Global, PolicyScope::Namespace, PolicyScope::WorkloadSelector]),
            prop::sample::select(vec![PolicyAction::Allow, PolicyAction::Deny]),
            prop::collection::vec(rule, 0..3),
        )
            .prop_map(|(name, namespace, scope, action, rules)| Policy { name: name.into(), namespace: namespace.into(), scope, action, rules })
    }

    fn a_source() -> impl Strategy<Value = Option<Identity>> {
        prop_oneof![
            Just(None),
            (prop::sample::select(vec!["cluster.local", "td", ""]), prop::sample::select(vec!["foo", "bar", "a"]), prop::sample::select(vec!["a", "b", ""]))
                .prop_map(|(td, ns, sa)| Some(Identity::new(td, ns, sa))),
        ]
    }

    fn a_key() -> impl Strategy<Value = String> {
        (prop::sample::select(vec!["", "foo", "bar"]), prop::sample::select(vec!["p0", "p1", "p2", "p3", "p4", "p5", "absent"]))
            .prop_map(|(ns, n)| format!("{ns}/{n}"))
    }

    proptest! {
        #[test]
        fn decides_as_the_formatting_evaluation(
            policies in prop::collection::vec(a_policy(), 0..10),
            selected in prop::collection::vec(a_key(), 0..8),
            namespace in prop::sample::select(vec!["foo", "bar"]),
            sources in prop::collection::vec(a_source(), 1..6),
            source_ip in prop::sample::select(vec!["198.18.0.1", "198.19.1.1", "::ffff:198.18.0.1"]),
            port in prop::sample::select(vec![80u16, 81]),
        ) {
            let mut model = WorkloadModel::default();
            for p in policies {
                model.insert_policy(p);
            }
            let w: Workload = serde_json::from_value(json!({
                "uid": "Kubernetes//Pod/x/w", "namespace": namespace, "addresses": ["198.18.0.1"],
                "identity": "spiffe://cluster.local/ns/foo/sa/a", "authorization_policies": selected }))
            .unwrap();
            let applied: Vec<Name> = applicable(&model, &w).map(|p| p.key()).collect();
            let reference: Vec<Name> = model.policies_for(&w).map(|p| p.key()).collect();
            prop_assert_eq!(applied, reference);
            for source in &sources {
                let c = Connection { source: source.as_ref(), source_ip: ip(source_ip), destination_ip: ip("198.18.0.1"), destination_port: port };
                prop_assert_eq!(evaluate(&model, &w, &c), reference_evaluate(&model, &w, &c), "source {:?}", source);
                for p in model.policies.values() {
                    prop_assert_eq!(matches(p, &c), reference_matches(p, &c), "{:?} from {:?}", p, source);
                }
            }
        }
    }
}
