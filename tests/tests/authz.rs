//! Istio AuthorizationPolicy as Envoy RBAC filters, enforced by the running proxy with
//! real clients (curl, Python grpcio). The filters are shaped as istiod emits them
//! (policy names `ns[<ns>]-policy[<name>]-rule[<i>]`, the filter order of its builder:
//! AUDIT, DENY, ALLOW, and dry-run as shadow rules) in a static bootstrap and over xDS.
//!
//! Proves: a DENY policy answers 403 `RBAC: access denied` and names the policy in the
//! access log; with ALLOW policies, what none allows is denied; gRPC is denied with
//! PERMISSION_DENIED (trailers only); AUDIT and dry-run never block, dry-run is counted
//! as a shadow result; a network RBAC filter closes a TCP connection; a policy pushed
//! over xDS takes effect on the next request while other traffic keeps flowing;
//! `remoteIpBlocks` see the client `x-forwarded-for` names unless the connection
//! manager uses the remote address.

use std::time::Duration;

use serde_json::{json, Value};
use tests::ads_server::any_from_json;
use tests::clients::http_get;
use tests::config::{router_filter, socket_address, HCM_TYPE};
use tests::*;
use xds_client::pb::envoy::config::cluster::v3::Cluster;
use xds_client::pb::envoy::config::listener::v3::Listener;
use xds_client::type_url::{CLUSTER, LISTENER};

const RBAC_HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const RBAC_NETWORK: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
const T: Duration = Duration::from_secs(15);

fn any_principal() -> Value {
    json!([{ "and_ids": { "ids": [{ "any": true }] } }])
}

/// A permission on the path prefixes `paths` (and the methods, when given), as istiod writes `to.operation`.
fn operation(paths: &[&str], methods: &[&str]) -> Value {
    let mut rules = vec![json!({ "or_rules": { "rules": paths.iter().map(|p| json!({ "url_path": { "path": { "prefix": p } } })).collect::<Vec<_>>() } })];
    if !methods.is_empty() {
        rules.push(json!({ "or_rules": { "rules": methods.iter().map(|m| json!({ "header": { "name": ":method", "string_match": { "exact": m } } })).collect::<Vec<_>>() } }));
    }
    json!([{ "and_rules": { "rules": rules } }])
}

fn policy(permissions: Value) -> Value {
    json!({ "permissions": permissions, "principals": any_principal() })
}

fn http_rbac(config: Value) -> Value {
    let mut typed = json!({ "@type": RBAC_HTTP });
    if let (Some(t), Some(c)) = (typed.as_object_mut(), config.as_object()) {
        t.extend(c.clone());
    }
    json!({ "name": "envoy.filters.http.rbac", "typed_config": typed })
}

/// istiod's filters for: AUDIT /api/audited, DENY /admin, dry-run DENY /api/shadow,
/// ALLOW GET /api and the Echo service's gRPC methods.
fn istio_filters() -> Vec<Value> {
    vec![
        http_rbac(json!({ "rules": { "action": "LOG", "policies": { "ns[foo]-policy[audit]-rule[0]": policy(operation(&["/api/audited"], &[])) } } })),
        http_rbac(json!({ "rules": { "action": "DENY", "policies": { "ns[foo]-policy[deny-admin]-rule[0]": policy(operation(&["/admin"], &[])) } } })),
        http_rbac(json!({
            "shadow_rules": { "action": "DENY", "policies": { "ns[foo]-policy[dry-run-shadow]-rule[0]": policy(operation(&["/api/shadow"], &[])) } },
            "shadow_rules_stat_prefix": "istio_dry_run_allow_",
        })),
        http_rbac(json!({ "rules": { "policies": {
            "ns[foo]-policy[allow-api]-rule[0]": policy(operation(&["/api"], &["GET"])),
            "ns[foo]-policy[allow-grpc]-rule[0]": policy(operation(&["/nodeproxy.test.Echo/Unary"], &[])),
        } } })),
    ]
}

fn hcm_with(filters: Vec<Value>, cluster: &str) -> Value {
    let mut http_filters = filters;
    http_filters.push(router_filter());
    json!({
        "@type": HCM_TYPE,
        "stat_prefix": "inbound_0.0.0.0_8080",
        "codec_type": "AUTO",
        "route_config": route_all_to(cluster, json!({})),
        "http_filters": http_filters,
    })
}

fn status(p: &Proxy, path: &str, method: &str) -> (u16, String) {
    let r = Curl::new(&p.url(path)).method(method).run();
    (r.status, r.text())
}

#[test]
fn istio_policies_decide_http_requests_as_envoy() {
    let origin = Origin::start("app");
    let port = free_port();
    let config = bootstrap(vec![http_listener("main", port, hcm_with(istio_filters(), "app"))], vec![cluster("app", &[origin.addr()])]);
    let p = Proxy::start(&config, 1);

    assert_eq!(status(&p, "/api/items", "GET").0, 200, "ALLOW allow-api");
    let (code, body) = status(&p, "/admin/users", "GET");
    assert_eq!((code, body.as_str()), (403, "RBAC: access denied"), "DENY deny-admin");
    assert_eq!(status(&p, "/api/items", "POST").0, 403, "ALLOW policies exist and none allows POST");
    assert_eq!(status(&p, "/other", "GET").0, 403, "nor /other");
    assert_eq!(status(&p, "/api/audited", "GET").0, 200, "AUDIT never blocks");
    assert_eq!(status(&p, "/api/shadow", "GET").0, 200, "dry-run never blocks");
    assert!(origin.requests_to("/admin").is_empty() && origin.requests_to("/other").is_empty(), "denied requests never reach the app");

    let denied = p.wait_access_log("the denial", |e| e.path == "/admin/users");
    assert_eq!(denied.code, 403);
    assert_eq!(denied.details, "rbac_access_denied_matched_policy[ns[foo]-policy[deny-admin]-rule[0]]");
    let unallowed = p.wait_access_log("the unallowed POST", |e| e.path == "/api/items" && e.method == "POST");
    assert_eq!(unallowed.details, "rbac_access_denied_matched_policy[none]");

    // Each filter counts its decisions; the dry-run filter counts a shadow denial.
    let prefix = ("stat_prefix", "inbound_0.0.0.0_8080");
    assert_eventually("the RBAC counters", T, || {
        let shadow_denied = p.metric("envoy_rbac_shadow_denied_total", &[prefix]);
        let denied = p.metric("envoy_rbac_denied_total", &[prefix]);
        if shadow_denied == 1.0 && denied == 3.0 {
            Ok(())
        } else {
            Err(format!("shadow_denied {shadow_denied}, denied {denied}"))
        }
    });
}

/// `from.source.remoteIpBlocks` is Envoy's `remote_ip`: the original client, which
/// without `use_remote_address` is the last `x-forwarded-for` entry, and with it the
/// connection's peer (the header is not trusted).
#[test]
fn remote_ip_blocks_see_the_client_x_forwarded_for_names() {
    let origin = Origin::start("app");
    let remote_ip = json!([{ "and_ids": { "ids": [{ "or_ids": { "ids": [{ "remote_ip": { "address_prefix": "203.0.113.0", "prefix_len": 24 } }] } }] } }]);
    let allow = http_rbac(json!({ "rules": { "policies": {
        "ns[foo]-policy[from-lb]-rule[0]": { "permissions": [{ "any": true }], "principals": remote_ip },
    } } }));
    let (behind_lb, edge) = (free_port(), free_port());
    let mut trusting = hcm_with(vec![allow.clone()], "app");
    trusting["use_remote_address"] = json!(false);
    let mut edge_hcm = hcm_with(vec![allow], "app");
    edge_hcm["use_remote_address"] = json!(true);
    let config =
        bootstrap(vec![http_listener("behind-lb", behind_lb, trusting), http_listener("edge", edge, edge_hcm)], vec![cluster("app", &[origin.addr()])]);
    let _proxy = Proxy::start(&config, 1);
    let get = |port: u16, xff: Option<&str>| {
        let mut c = Curl::new(&format!("http://127.0.0.1:{port}/"));
        if let Some(v) = xff {
            c = c.header("x-forwarded-for", v);
        }
        c.run().status
    };
    assert_eq!(get(behind_lb, Some("198.51.100.7, 203.0.113.9")), 200, "the last XFF entry is in the block");
    assert_eq!(get(behind_lb, Some("203.0.113.9")), 200);
    assert_eq!(get(behind_lb, Some("203.0.113.9, 198.51.100.7")), 403, "only the last entry counts");
    assert_eq!(get(behind_lb, None), 403, "no XFF: the peer, 127.0.0.1");
    assert_eq!(get(edge, Some("203.0.113.9")), 403, "use_remote_address: the peer, whatever XFF says");
}

#[test]
fn grpc_is_denied_with_permission_denied() {
    let server = GrpcServer::start("echo");
    let port = free_port();
    let mut filters = istio_filters();
    // Deny the Echo service's streaming methods for this test.
    filters.insert(
        1,
        http_rbac(json!({ "rules": { "action": "DENY", "policies": { "ns[foo]-policy[deny-stream]-rule[0]": policy(operation(&["/nodeproxy.test.Echo/ServerStream"], &[])) } } })),
    );
    let config = bootstrap(vec![http_listener("main", port, hcm_with(filters, "grpc"))], vec![h2_cluster("grpc", &[server.addr()])]);
    let p = Proxy::start(&config, 1);

    let out = grpc_client(p.addr(), "unary", &["--payload", "hi"]);
    assert_eq!(out["code"], "OK", "allowed by allow-grpc: {out}");
    let out = grpc_client(p.addr(), "server-stream", &["--count", "2"]);
    assert_eq!(out["code"], "PERMISSION_DENIED", "{out}");
    assert_eq!(out["details"], "RBAC: access denied", "{out}");
    let e = p.wait_access_log("the gRPC denial", |e| e.path == "/nodeproxy.test.Echo/ServerStream");
    assert_eq!((e.code, e.details.as_str()), (200, "rbac_access_denied_matched_policy[ns[foo]-policy[deny-stream]-rule[0]]"), "trailers-only: {}", e.line);
}

#[test]
fn a_network_rbac_filter_closes_denied_connections() {
    let origin = Origin::start("app");
    let port = free_port();
    // istiod's TCP shape: DENY connections to destination port `port` (everything here).
    let deny = json!({
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": RBAC_NETWORK,
            "stat_prefix": "tcp.",
            "rules": { "action": "DENY", "policies": { "ns[foo]-policy[deny-port]-rule[0]": {
                "permissions": [{ "and_rules": { "rules": [{ "or_rules": { "rules": [{ "destination_port": port }] } }] } }],
                "principals": any_principal(),
            } } },
        },
    });
    let tcp = json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "tcp", "cluster": "app" },
    });
    let listener = json!({ "name": "tcp", "address": socket_address(([127, 0, 0, 1], port).into()), "filter_chains": [{ "filters": [deny, tcp] }] });
    let p = Proxy::start(&bootstrap(vec![listener], vec![cluster("app", &[origin.addr()])]), 1);

    let r = http_get(([127, 0, 0, 1], port).into(), "/tcp", Duration::from_secs(5));
    assert!(r.is_err() || r.as_ref().is_ok_and(|r| r.status == 0), "the connection is closed without a response: {r:?}");
    assert!(origin.requests_to("/tcp").is_empty());
    let line = assert_eventually("the denial's access log line", T, || {
        p.access_log_lines().into_iter().find(|l| l.contains("rbac_access_denied_matched_policy[ns[foo]-policy[deny-port]-rule[0]]")).ok_or_else(|| p.stderr())
    });
    assert!(line.contains(&format!("127.0.0.1:{port}")), "the listener's address: {line}");
    assert_eq!(p.metric("envoy_rbac_denied_total", &[("filter", "network"), ("stat_prefix", "tcp.")]), 1.0);
}

#[test]
fn a_policy_pushed_over_xds_takes_effect_on_the_next_request() {
    let origin = Origin::start("app");
    let ads = AdsServer::start();
    let port = free_port();
    let listener = |filters: Vec<Value>| http_listener("main", port, hcm_with(filters, "app"));
    ads.set(CLUSTER, "app", any_from_json::<Cluster>(cluster("app", &[origin.addr()])));
    ads.set(LISTENER, "main", any_from_json::<Listener>(listener(vec![])));
    let _proxy = Proxy::start_xds(&ads.url(), ProxyOptions { extra_args: vec!["--xds-workload-api".into(), "false".into()], ..Default::default() });
    let url = format!("http://127.0.0.1:{port}");
    let get = |path: &str| Curl::new(&format!("{url}{path}")).run().status;
    assert_eventually("the listener serves", T, || if get("/admin/a") == 200 { Ok(()) } else { Err("not yet".into()) });

    // A long request in flight while the policy arrives finishes on its snapshot.
    let slow = std::thread::spawn({
        let url = url.clone();
        move || Curl::new(&format!("{url}/delay/1500")).timeout(Duration::from_secs(10)).run().status
    });
    std::thread::sleep(Duration::from_millis(300));
    let deny = http_rbac(json!({ "rules": { "action": "DENY", "policies": { "ns[foo]-policy[deny-admin]-rule[0]": policy(operation(&["/admin"], &[])) } } }));
    ads.set(LISTENER, "main", any_from_json::<Listener>(listener(vec![deny])));
    assert_eventually("the pushed DENY applies", T, || match get("/admin/b") {
        403 => Ok(()),
        s => Err(format!("status {s}")),
    });
    assert_eq!(get("/api/ok"), 200, "other requests go on");
    assert_eq!(slow.join().expect("slow request"), 200, "the request in flight was not dropped");
}
