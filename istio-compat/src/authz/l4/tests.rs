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
