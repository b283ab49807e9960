//! Authorization decision cost (issue 6 §4): one RBAC filter of 1, 100 and 1,000
//! policies, translated from the configuration istiod emits for as many
//! AuthorizationPolicies, deciding a request that matches the last policy (by name
//! order, the worst case), none of them, and the first; ALLOW and DENY; the HTTP
//! filter (with headers) and the network filter (TCP). Target: median < 1 µs at 100.
//!
//! Each policy is shaped as istiod builds `from: principals/namespaces, to:
//! methods/paths/hosts/ports, when: request.headers[...]`: a permission
//! `and(or(:method), or(url_path), or(:authority, ignore case), or(destination_port),
//! or(header))` and a principal `and(or(authenticated safe_regex))` with the
//! trust-domain-agnostic regex `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`
//! (istio-authz-rbac-golden/http/allow-full-rule-out.yaml). Every policy allows the
//! same operations from a different service account, so the principal decides which
//! policy matches — the case where every policy's regex used to run.
//!
//! Also the ambient (workload API) engine, `istio_compat::authz::l4::evaluate`, with
//! 1, 100 and 1,000 policies selecting one workload (`l4_*`), and the RBAC decision
//! as the module took it before its evaluation form (`*_direct`: every policy in
//! name order), measured in the same run.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use istio_compat::authz::l4;
use istio_compat::authz::rbac::{self, Rbac, Request};
use istio_compat::model::route::RequestHead;
use istio_compat::model::workload::{AddressResource, Identity, Policy as L4Policy, Workload, WorkloadModel};
use serde_json::{json, Value};
use xds_client::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use xds_client::pb::envoy::extensions::filters::network::rbac::v3 as network_rbac;
use xds_client::protojson;

const SIZES: [usize; 3] = [1, 100, 1000];
const HOST: &str = "httpbin.foo.svc.cluster.local";

/// istiod's policy name for policy `i` (zero-padded so that name order is index order).
fn name(i: usize) -> String {
    format!("ns[foo]-policy[allow-{i:04}]-rule[0]")
}

fn principal_regex(i: usize) -> String {
    format!("spiffe://.+/ns/ns-{i:04}/(.+/|)sa/sa-{i:04}(/.+)?")
}

fn peer(i: usize) -> String {
    format!("spiffe://cluster.local/ns/ns-{i:04}/sa/sa-{i:04}")
}

/// `and(or(x…))`, istiod's wrapping of every field.
fn and_or_rules(fields: Vec<Vec<Value>>) -> Value {
    json!({ "andRules": { "rules": fields.into_iter().map(|rules| json!({ "orRules": { "rules": rules } })).collect::<Vec<_>>() } })
}

fn principal(i: usize) -> Value {
    json!({ "andIds": { "ids": [ { "orIds": { "ids": [
        { "authenticated": { "principalName": { "safeRegex": { "regex": principal_regex(i) } } } }
    ] } } ] } })
}

fn http_permission() -> Value {
    let header = |name: &str, m: Value| json!({ "header": { "name": name, "stringMatch": m } });
    and_or_rules(vec![
        vec![header(":method", json!({ "exact": "GET" })), header(":method", json!({ "exact": "POST" }))],
        vec![json!({ "urlPath": { "path": { "prefix": "/api/" } } }), json!({ "urlPath": { "path": { "exact": "/healthz" } } })],
        vec![
            header(":authority", json!({ "exact": HOST, "ignoreCase": true })),
            header(":authority", json!({ "prefix": format!("{HOST}:"), "ignoreCase": true })),
        ],
        vec![json!({ "destinationPort": 8080 })],
        vec![header("x-tenant", json!({ "exact": "acme" }))],
    ])
}

fn tcp_permission() -> Value {
    and_or_rules(vec![vec![json!({ "destinationPort": 9000 }), json!({ "destinationPort": 9001 })]])
}

fn rules(action: &str, n: usize, permission: &Value) -> Value {
    let policies: serde_json::Map<String, Value> = (0..n).map(|i| (name(i), json!({ "permissions": [permission], "principals": [principal(i)] }))).collect();
    json!({ "action": action, "policies": policies })
}

fn http_filter(action: &str, n: usize) -> Rbac {
    let config = json!({ "rules": rules(action, n, &http_permission()), "rulesStatPrefix": "" });
    rbac::rbac_from_http(&protojson::from_json::<http_rbac::Rbac>(config).unwrap().message).unwrap()
}

fn tcp_filter(action: &str, n: usize) -> Rbac {
    let config = json!({ "rules": rules(action, n, &tcp_permission()), "statPrefix": "tcp." });
    rbac::rbac_from_network(&protojson::from_json::<network_rbac::Rbac>(config).unwrap().message).unwrap()
}

/// Which policy the request's peer is: `Some(i)` matches policy `i`, `None` none.
fn peer_for(n: usize, case: &str) -> String {
    match case {
        "first" => peer(0),
        "last" => peer(n - 1),
        _ => "spiffe://cluster.local/ns/other/sa/client".to_owned(),
    }
}

const CASES: [&str; 3] = ["last", "none", "first"];

/// The decision as the module took it before its evaluation form: every policy in
/// name order through [`rbac::RuleSet::evaluate_directly`] (the `*_direct` figures).
fn direct(filter: &Rbac, req: &Request<'_>) -> bool {
    let rules = filter.rules.as_ref().unwrap();
    let matched = rules.evaluate_directly(req).is_some();
    match rules.action {
        rbac::Action::Allow => matched,
        rbac::Action::Deny => !matched,
        rbac::Action::Log => true,
    }
}

/// Short runs: 72 cases; criterion's median is stable to a few percent here.
fn config() -> Criterion {
    Criterion::default().warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2)).sample_size(50)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn bench_http(c: &mut Criterion) {
    let method = Method::GET;
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", "acme".parse().unwrap());
    headers.insert("user-agent", "curl/8.5.0".parse().unwrap());
    headers.insert("accept", "*/*".parse().unwrap());
    headers.insert("x-request-id", "5f1d3c1e-1b7a-4a55-9d57-0c7e3f0d8a11".parse().unwrap());
    let authority = "HTTPBIN.foo.svc.cluster.local:8080";
    let path = "/api/items/42?verbose=1";
    for action in ["ALLOW", "DENY"] {
        let mut group = c.benchmark_group(format!("rbac_http_{}", action.to_lowercase()));
        for n in SIZES {
            let filter = http_filter(action, n);
            for case in CASES {
                let principal = peer_for(n, case);
                let expect_match = case != "none";
                let head = RequestHead { method: &method, authority, path, scheme: "http", headers: &headers };
                let req = Request { peer_principal: Some(&principal), http: Some(head), ..Request::tcp(addr("198.18.0.1:40000"), addr("198.18.0.2:8080")) };
                let d = filter.evaluate(&req);
                assert_eq!(d.policy.is_some(), expect_match, "{action} {n} {case}");
                assert_eq!(direct(&filter, &req), d.allowed, "{action} {n} {case}");
                group.bench_with_input(BenchmarkId::new(case, n), &n, |b, _| b.iter(|| black_box(filter.evaluate(black_box(&req)).allowed)));
                group.bench_with_input(BenchmarkId::new(format!("{case}_direct"), n), &n, |b, _| b.iter(|| black_box(direct(&filter, black_box(&req)))));
            }
        }
        group.finish();
    }
}

fn bench_tcp(c: &mut Criterion) {
    for action in ["ALLOW", "DENY"] {
        let mut group = c.benchmark_group(format!("rbac_tcp_{}", action.to_lowercase()));
        for n in SIZES {
            let filter = tcp_filter(action, n);
            for case in CASES {
                let principal = peer_for(n, case);
                let req = Request { peer_principal: Some(&principal), ..Request::tcp(addr("198.18.0.1:40000"), addr("198.18.0.2:9000")) };
                let d = filter.evaluate(&req);
                assert_eq!(d.policy.is_some(), case != "none", "{action} {n} {case}");
                assert_eq!(direct(&filter, &req), d.allowed, "{action} {n} {case}");
                group.bench_with_input(BenchmarkId::new(case, n), &n, |b, _| b.iter(|| black_box(filter.evaluate(black_box(&req)).allowed)));
                group.bench_with_input(BenchmarkId::new(format!("{case}_direct"), n), &n, |b, _| b.iter(|| black_box(direct(&filter, black_box(&req)))));
            }
        }
        group.finish();
    }
}

/// The workload API's Authorization as istiod sends it to ztunnel for an
/// AuthorizationPolicy with `from.source.principals` and `to.operation.ports`, one
/// per policy, all selecting the destination workload.
fn l4_model(action: &str, n: usize) -> (WorkloadModel, std::sync::Arc<Workload>) {
    let mut model = WorkloadModel::default();
    let mut selected = Vec::new();
    for i in 0..n {
        let policy: L4Policy = serde_json::from_value(json!({
            "name": format!("allow-{i:04}"), "namespace": "foo", "scope": "WORKLOAD_SELECTOR", "action": action,
            "rules": [{ "clauses": [
                { "matches": [{ "principals": [{ "exact": format!("cluster.local/ns/ns-{i:04}/sa/sa-{i:04}") }] }] },
                { "matches": [{ "destination_ports": [9000] }] },
            ] }] }))
        .unwrap();
        selected.push(format!("foo/allow-{i:04}"));
        model.insert_policy(policy);
    }
    let workload: Workload = serde_json::from_value(json!({
        "uid": "Kubernetes//Pod/foo/httpbin", "namespace": "foo", "addresses": ["198.18.0.2"],
        "identity": "spiffe://cluster.local/ns/foo/sa/httpbin", "authorization_policies": selected }))
    .unwrap();
    let workload = std::sync::Arc::new(workload);
    model.insert_address(AddressResource::Workload(workload.clone()));
    (model, workload)
}

fn bench_l4(c: &mut Criterion) {
    for action in ["ALLOW", "DENY"] {
        let mut group = c.benchmark_group(format!("l4_{}", action.to_lowercase()));
        for n in SIZES {
            let (model, workload) = l4_model(action, n);
            for case in CASES {
                let peer = match case {
                    "first" => Identity::new("cluster.local", "ns-0000", "sa-0000"),
                    "last" => Identity::new("cluster.local", &format!("ns-{:04}", n - 1), &format!("sa-{:04}", n - 1)),
                    _ => Identity::new("cluster.local", "other", "client"),
                };
                let conn = l4::Connection {
                    source: Some(&peer),
                    source_ip: "198.18.0.1".parse().unwrap(),
                    destination_ip: "198.18.0.2".parse().unwrap(),
                    destination_port: 9000,
                };
                let d = l4::evaluate(&model, &workload, &conn);
                assert_eq!(d.allowed(), (case != "none") == (action == "ALLOW"), "{action} {n} {case}: {d:?}");
                group.bench_with_input(BenchmarkId::new(case, n), &n, |b, _| b.iter(|| black_box(l4::evaluate(&model, &workload, black_box(&conn)).allowed())));
            }
        }
        group.finish();
    }
}

criterion_group! { name = benches; config = config(); targets = bench_http, bench_tcp, bench_l4 }
criterion_main!(benches);
