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
//!
//! `-- --data-path` (not run otherwise): the data-path throughput with 10 policies vs
//! none (issue 6 §4, target ≥ 95%) through the release proxy binary; see
//! [`data_path`].

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, BenchmarkId, Criterion};
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
    http_permission_on(8080, "acme")
}

/// `to: methods GET/POST, paths /api/* and /healthz, hosts HOST and HOST:*, ports
/// [port]; when: request.headers[x-tenant] == tenant`.
fn http_permission_on(port: u16, tenant: &str) -> Value {
    let header = |name: &str, m: Value| json!({ "header": { "name": name, "stringMatch": m } });
    and_or_rules(vec![
        vec![header(":method", json!({ "exact": "GET" })), header(":method", json!({ "exact": "POST" }))],
        vec![json!({ "urlPath": { "path": { "prefix": "/api/" } } }), json!({ "urlPath": { "path": { "exact": "/healthz" } } })],
        vec![
            header(":authority", json!({ "exact": HOST, "ignoreCase": true })),
            header(":authority", json!({ "prefix": format!("{HOST}:"), "ignoreCase": true })),
        ],
        vec![json!({ "destinationPort": port })],
        vec![header("x-tenant", json!({ "exact": tenant }))],
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

/// The data path's filters (see `data_path`), as their typed configs in istiod's order:
/// a DENY filter (`to: paths /admin*`, any source) that does not match, then an ALLOW
/// filter of [`CHAIN_POLICIES`] policies, each [`http_permission_on`] `port` with
/// principals `[ns-i/sa-i, direct_remote_ip 127.0.0.1/32]`; policies 0–8 want
/// `x-tenant: tenant-N`, the last `acme`.
fn chain_configs(port: u16) -> Vec<Value> {
    let ip_block = |address: &str, len: u32| json!({ "andIds": { "ids": [ { "orIds": { "ids": [ { "directRemoteIp": { "addressPrefix": address, "prefixLen": len } } ] } } ] } });
    let deny = json!({ "permissions": [and_or_rules(vec![vec![json!({ "urlPath": { "path": { "prefix": "/admin" } } })]])],
        "principals": [{ "andIds": { "ids": [{ "any": true }] } }] });
    let allow: serde_json::Map<String, Value> = (0..CHAIN_POLICIES)
        .map(|i| {
            let tenant = if i + 1 == CHAIN_POLICIES { "acme".to_owned() } else { format!("tenant-{i}") };
            (name(i), json!({ "permissions": [http_permission_on(port, &tenant)], "principals": [principal(i), ip_block("127.0.0.1", 32)] }))
        })
        .collect();
    vec![
        json!({ "rules": { "action": "DENY", "policies": { "ns[foo]-policy[deny-admin]-rule[0]": deny } } }),
        json!({ "rules": { "action": "ALLOW", "policies": allow } }),
    ]
}

const CHAIN_POLICIES: usize = 10;

/// What the data path's filters cost the proxy per request, the decision with what
/// `node_proxy::authz::check` adds (the filters' counters): the request the data-path
/// run sends (`GET /api/items/42?verbose=1`, plaintext from 127.0.0.1, no peer identity,
/// allowed by the last of the ten policies after all ten were tried).
fn bench_chain(c: &mut Criterion) {
    let port = 8080;
    let filters: Vec<Rbac> = chain_configs(port)
        .into_iter()
        .map(|config| rbac::rbac_from_http(&protojson::from_json::<http_rbac::Rbac>(config).unwrap().message).unwrap())
        .collect();
    let metrics = node_proxy::telemetry::metrics::Metrics::new();
    let counters = node_proxy::authz::Counters::new(&metrics);
    let method = Method::GET;
    let mut headers = HeaderMap::new();
    headers.insert("host", "httpbin.foo.svc.cluster.local:8080".parse().unwrap());
    headers.insert("user-agent", "wrk".parse().unwrap());
    headers.insert("x-tenant", "acme".parse().unwrap());
    let head =
        RequestHead { method: &method, authority: "httpbin.foo.svc.cluster.local:8080", path: "/api/items/42?verbose=1", scheme: "http", headers: &headers };
    let req = Request { http: Some(head), ..Request::tcp(addr("127.0.0.1:40000"), addr(&format!("127.0.0.1:{port}"))) };
    let stat_prefix = format!("inbound_0.0.0.0_{port}");
    let check = |req: &Request<'_>| node_proxy::authz::check(&counters, "http", Some(&stat_prefix), &filters, req);
    assert_eq!(check(&req), Ok(()));
    let mut other = headers.clone();
    other.insert("x-tenant", "nobody".parse().unwrap());
    let denied = Request { http: Some(RequestHead { headers: &other, ..head }), ..req };
    assert_eq!(check(&denied), Err("rbac_access_denied_matched_policy[none]".to_owned()));
    let mut group = c.benchmark_group("rbac_http_chain");
    group.bench_function("data_path_10", |b| b.iter(|| black_box(check(black_box(&req)).is_ok())));
    group.bench_function("data_path_10_decision_only", |b| b.iter(|| black_box(rbac::decide(&filters, black_box(&req)).allowed())));
    group.finish();
}

criterion_group! { name = benches; config = config(); targets = bench_http, bench_tcp, bench_l4, bench_chain }

/// Criterion's `criterion_main!`, unless `--data-path` asks for the proxy run.
fn main() {
    if std::env::args().any(|a| a == "--data-path") {
        data_path::run();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

mod common;

/// Data-path throughput with 10 policies vs none (issue 6 §4: ≥ 95%).
///
/// Two release proxies with the same HTTP listener and route to one local nginx (the
/// runner's origin, 12-byte body): (A) no RBAC filter; (B) istiod's filter chain for
/// one DENY and ten ALLOW policies — a DENY filter (`to: paths /admin*`, any source)
/// that does not match, then an ALLOW filter whose ten policies are the bench's
/// [`http_permission_on`] (methods, paths, hosts, port, header) with principals
/// `from: [{principals: [ns-i/sa-i]}, {ipBlocks: [127.0.0.1]}]`. Policies 0–8 want
/// `x-tenant: tenant-N`, the last wants `acme`, so every request runs through all ten
/// (the header is the last field of each) and is allowed by the last. The identity
/// principal cannot hold over plaintext loopback; the ipBlocks principal keeps the
/// policies out of the namespace index so none is skipped.
///
/// wrk (keep-alive, `--connections`, `--duration` s) runs on CPU 0, the proxies
/// (`--workers 1`, no access log) and nginx on CPU 1, alternating A B A B … for
/// `--reps` pairs; prints requests/s, the per-pair ratio B ÷ A and its median, and
/// p50/p99 (closed loop: coordinated omission, read loosely) with the machine state.
mod data_path {
    use std::fs;
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use super::common::{self, compilers_running, log, median, parse_wrk, stat_of, tail, Server, WrkResult};
    use super::{chain_configs, HOST};

    const USAGE: &str = "usage: cargo bench -p benches --bench authz -- --data-path [--reps N] [--duration S] [--connections N] [--gen-cpu N] [--server-cpu N] [--instructions]";

    struct Opts {
        reps: usize,
        duration: u64,
        connections: u32,
        gen_cpu: usize,
        server_cpu: usize,
        /// Count instructions per request under callgrind instead of timing.
        instructions: bool,
    }

    fn die(msg: &str) -> ! {
        eprintln!("authz --data-path: {msg}");
        std::process::exit(2);
    }

    fn parse_args() -> Opts {
        let mut o = Opts { reps: 3, duration: 10, connections: 32, gen_cpu: 0, server_cpu: 1, instructions: false };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut num = |name: &str| -> u64 {
                let v = it.next().unwrap_or_else(|| die(&format!("{name} needs a value\n{USAGE}")));
                v.parse().unwrap_or_else(|_| die(&format!("{name}: not a number: {v}\n{USAGE}")))
            };
            match a.as_str() {
                "--data-path" | "--bench" => {}
                "--reps" => o.reps = num(&a) as usize,
                "--duration" => o.duration = num(&a),
                "--connections" => o.connections = num(&a) as u32,
                "--gen-cpu" => o.gen_cpu = num(&a) as usize,
                "--server-cpu" => o.server_cpu = num(&a) as usize,
                "--instructions" => o.instructions = true,
                other => die(&format!("unknown argument {other}\n{USAGE}")),
            }
        }
        if o.reps < 1 || o.duration < 1 || o.connections < 1 {
            die(USAGE);
        }
        o
    }

    /// istiod's ipBlocks principal (`from.source.ipBlocks`: `directRemoteIp`).
    fn rbac_filter(config: Value) -> Value {
        let mut typed = json!({ "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC" });
        if let (Some(t), Some(c)) = (typed.as_object_mut(), config.as_object()) {
            t.extend(c.clone());
        }
        json!({ "name": "envoy.filters.http.rbac", "typed_config": typed })
    }

    /// istiod's order: the DENY filter, then the ALLOW filter.
    fn istio_filters(port: u16) -> Vec<Value> {
        chain_configs(port).into_iter().map(rbac_filter).collect()
    }

    fn config(port: u16, origin: std::net::SocketAddr, filters: Vec<Value>) -> String {
        let mut hcm = tests::hcm(tests::route_all_to("origin", json!({})));
        hcm["stat_prefix"] = json!(format!("inbound_0.0.0.0_{port}"));
        let mut http_filters = filters;
        http_filters.push(tests::config::router_filter());
        hcm["http_filters"] = json!(http_filters);
        tests::bootstrap(vec![tests::http_listener("main", port, hcm)], vec![tests::cluster("origin", &[origin])])
    }

    struct Contender {
        label: &'static str,
        port: u16,
        server: Server,
    }

    /// A proxy on a free port; `filters` are its HTTP filters for that port.
    /// `callgrind`: run it under `valgrind --tool=callgrind`, its profile in `dir/<label>.cg`.
    fn start_proxy(
        label: &'static str,
        dir: &std::path::Path,
        filters: impl FnOnce(u16) -> Vec<Value>,
        origin: std::net::SocketAddr,
        cpu: usize,
        callgrind: bool,
    ) -> Contender {
        let port = tests::free_port();
        let path = dir.join(format!("{label}.json"));
        fs::write(&path, config(port, origin, filters(port))).unwrap_or_else(|e| die(&format!("write {}: {e}", path.display())));
        let bin = tests::binary::node_proxy_bin();
        let admin = format!("127.0.0.1:{}", tests::free_port());
        let mut argv: Vec<String> = Vec::new();
        if callgrind {
            argv.extend(["valgrind".to_owned(), "--tool=callgrind".to_owned(), format!("--callgrind-out-file={}", dir.join(format!("{label}.cg")).display())]);
        }
        argv.extend([bin.display().to_string(), "--config".to_owned(), path.display().to_string()]);
        argv.extend(common::proxy_flags(&admin));
        let server = Server::start(label, cpu, &argv, dir.join(format!("{label}.log")));
        Contender { label, port, server }
    }

    /// The status of `GET path` with the bench's headers (and `x-tenant: tenant`).
    fn status(port: u16, path: &str, tenant: &str) -> u16 {
        tests::Curl::new(&format!("http://127.0.0.1:{port}{path}")).host(&format!("{HOST}:8080")).header("x-tenant", tenant).run().status
    }

    fn wait_ready(c: &mut Contender) {
        // Under callgrind the proxy starts tens of times slower.
        let deadline = Instant::now() + Duration::from_secs(180);
        while status(c.port, "/api/items/42?verbose=1", "acme") != 200 {
            c.server.check_alive();
            if Instant::now() > deadline {
                die(&format!("{} does not answer 200 on :{}; log:\n{}", c.label, c.port, tail(&c.server.log)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn nginx(dir: &std::path::Path, cpu: usize) -> (Server, std::net::SocketAddr) {
        let port = tests::free_port();
        let template_path = tests::binary::workspace_root().join("benches/configs/nginx-origin.conf");
        let template = fs::read_to_string(&template_path).unwrap_or_else(|e| die(&format!("read {}: {e}", template_path.display())));
        // Every path answers the 12-byte body (the bench's requests are `/api/items/42?…`).
        assert!(template.contains("location = / {"), "{} changed: no `location = / {{`", template_path.display());
        let conf = template
            .replace("location = / {", "location / {")
            .replace("@H1_PORT@", &port.to_string())
            .replace("@H2C_PORT@", &tests::free_port().to_string())
            .replace("@PREFIX@", &dir.display().to_string())
            .replace("@NOFILE@", "4096")
            .replace("@WORKER_CONNECTIONS@", "2048")
            .replace("@BODY_1K@", "x");
        let path = dir.join("nginx.conf");
        fs::write(&path, conf).unwrap_or_else(|e| die(&format!("write {}: {e}", path.display())));
        let argv = ["nginx", "-p", &dir.display().to_string(), "-c", &path.display().to_string()].map(str::to_owned);
        let server = Server::start("nginx", cpu, &argv, dir.join("nginx.log"));
        (server, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// `--instructions`: each proxy's instructions per request under callgrind, which
    /// counts the same for the same work however busy the machine is (req/s on a
    /// shared 2-CPU VM is not). Per rep and proxy: a warm-up, then callgrind's counters
    /// are zeroed, wrk (4 connections, `--duration` s) sends what it can, the counters
    /// are dumped, and their total ÷ the requests wrk completed is the cost per request
    /// (the whole process: hyper, routing, the filters, the upstream leg). The dumps
    /// stay in the run's directory, to compare the two proxies function by function.
    fn instructions(o: &Opts, dir: &std::path::Path, none: &mut Contender, ten: &mut Contender) {
        let quick = Opts { reps: 1, duration: o.duration, connections: 4, gen_cpu: o.gen_cpu, server_cpu: o.server_cpu, instructions: true };
        log(format!("instructions per request under callgrind: {} reps of {} s, 4 connections", o.reps, o.duration));
        let mut pairs = Vec::new();
        for rep in 0..o.reps {
            let a = counted(none, dir, &quick);
            let b = counted(ten, dir, &quick);
            log(format!("  [rep {rep}] none {a:.0} instructions/request, 10 policies {b:.0}: +{:.0} ({:.3})", b - a, a / b));
            pairs.push((a, b));
        }
        let a = median(pairs.iter().map(|p| p.0).collect()).unwrap_or(f64::NAN);
        let b = median(pairs.iter().map(|p| p.1).collect()).unwrap_or(f64::NAN);
        println!("\n| proxy | instructions per request (median of {}) |\n|---|---:|", o.reps);
        println!("| no RBAC filter | {a:.0} |\n| DENY filter + ALLOW filter of 10 policies (last one allows) | {b:.0} |");
        println!(
            "\nnone ÷ 10 policies: **{:.3}**; the filters add {:.0} instructions per request. User-space instructions only: the kernel's socket \
             work per request is not counted, so the proxy's CPU-time ratio lies between this and 1.",
            a / b,
            b - a
        );
    }

    fn counted(c: &mut Contender, dir: &std::path::Path, o: &Opts) -> f64 {
        let pid = c.server.pid().to_string();
        let control = |arg: &str| {
            let out = std::process::Command::new("callgrind_control").args([arg, pid.as_str()]).output();
            if !out.as_ref().is_ok_and(|o| o.status.success()) {
                die(&format!("callgrind_control {arg} {pid} failed: {out:?}"));
            }
        };
        let warm = Opts { duration: 2, ..*o };
        wrk(c, &warm);
        control("--zero");
        let run = wrk(c, o);
        control("--dump");
        c.server.check_alive();
        let prefix = format!("{}.cg.", c.label);
        let newest = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .unwrap_or_else(|| die(&format!("no callgrind dump {prefix}* in {}", dir.display())));
        let text = fs::read_to_string(newest.path()).unwrap_or_default();
        let total: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| die(&format!("no totals in {}", newest.path().display())));
        let requests = if run.wrk.requests > 0.0 { run.wrk.requests } else { run.wrk.rps * o.duration as f64 };
        total / requests
    }

    fn loadavg() -> String {
        fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    }

    struct Run {
        wrk: WrkResult,
        cpu_us_per_req: f64,
        compilers: usize,
    }

    fn wrk(c: &Contender, o: &Opts) -> Run {
        let args = [
            "-c".to_owned(),
            o.gen_cpu.to_string(),
            "wrk".to_owned(),
            "-t1".to_owned(),
            format!("-c{}", o.connections),
            format!("-d{}s", o.duration),
            "--latency".to_owned(),
            "-H".to_owned(),
            format!("Host: {HOST}:8080"),
            "-H".to_owned(),
            "x-tenant: acme".to_owned(),
            format!("http://127.0.0.1:{}/api/items/42?verbose=1", c.port),
        ];
        let compilers = compilers_running().len();
        let cpu0 = stat_of(c.server.pid()).map_or(0, |s| s.1);
        let out = std::process::Command::new("taskset").args(&args).output().unwrap_or_else(|e| die(&format!("cannot run wrk: {e}")));
        let cpu1 = stat_of(c.server.pid()).map_or(0, |s| s.1);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let r = parse_wrk(&text).unwrap_or_else(|| die(&format!("cannot parse wrk's output:\n{text}{}", String::from_utf8_lossy(&out.stderr))));
        if r.errors > 0.0 {
            die(&format!("wrk saw {} errors against {}:\n{text}", r.errors, c.label));
        }
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let requests = if r.requests > 0.0 { r.requests } else { r.rps * o.duration as f64 };
        Run { cpu_us_per_req: (cpu1 - cpu0) as f64 / tck * 1e6 / requests, wrk: r, compilers: compilers.max(compilers_running().len()) }
    }

    pub fn run() {
        let o = parse_args();
        for tool in ["wrk", "nginx", "taskset", "curl"] {
            if !common::tool_found(tool) {
                die(&format!("{tool} not found: apt-get install -y wrk nginx util-linux curl"));
            }
        }
        let dir = std::env::temp_dir().join(format!("node-proxy-authz-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| die(&format!("create {}: {e}", dir.display())));
        log(format!("node-proxy: {}", tests::binary::node_proxy_bin().display()));
        let (_origin, origin) = nginx(&dir, o.server_cpu);
        if o.instructions && !common::tool_found("valgrind") {
            die("valgrind not found: apt-get install -y valgrind");
        }
        let mut none = start_proxy("none", &dir, |_| Vec::new(), origin, o.server_cpu, o.instructions);
        let mut ten = start_proxy("ten-policies", &dir, istio_filters, origin, o.server_cpu, o.instructions);
        wait_ready(&mut none);
        wait_ready(&mut ten);
        // The filter is live in B only: a request no policy allows and one the DENY matches.
        for (path, tenant) in [("/api/items/42?verbose=1", "tenant-x"), ("/admin", "acme")] {
            assert_eq!((status(none.port, path, tenant), status(ten.port, path, tenant)), (200, 403), "{path} with x-tenant {tenant}");
        }
        if o.instructions {
            instructions(&o, &dir, &mut none, &mut ten);
            drop((none, ten));
            log(format!("callgrind dumps kept for `callgrind_annotate`: {}/{{none,ten-policies}}.cg.*", dir.display()));
            return;
        }
        log(format!("data path: {} pairs of {} s, {} connections; load average {}", o.reps, o.duration, o.connections, loadavg()));
        let started = Instant::now();
        let mut pairs = Vec::new();
        for rep in 0..o.reps {
            let a = wrk(&none, &o);
            let b = wrk(&ten, &o);
            log(format!(
                "  [rep {rep}] none {:.0} req/s ({:.1} µs/req), 10 policies {:.0} req/s ({:.1} µs/req): {:.3}; compilers running {} / {}; load {}",
                a.wrk.rps,
                a.cpu_us_per_req,
                b.wrk.rps,
                b.cpu_us_per_req,
                b.wrk.rps / a.wrk.rps,
                a.compilers,
                b.compilers,
                loadavg()
            ));
            pairs.push((a, b));
        }
        none.server.check_alive();
        ten.server.check_alive();
        let med = |f: &dyn Fn(&Run) -> Option<f64>, b: bool| median(pairs.iter().filter_map(|(x, y)| f(if b { y } else { x })).collect());
        let ratios: Vec<f64> = pairs.iter().map(|(a, b)| b.wrk.rps / a.wrk.rps).collect();
        let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
        let ratio = median(ratios.clone()).unwrap_or(f64::NAN);
        let fmt = |v: Option<f64>, d: usize| v.map_or("—".to_owned(), |v| format!("{v:.d$}"));
        println!("\n| proxy | req/s (median) | p50 | p99 | proxy CPU µs/req |\n|---|---:|---:|---:|---:|");
        for (label, b) in [("no RBAC filter", false), ("DENY filter + ALLOW filter of 10 policies (last one allows)", true)] {
            println!(
                "| {label} | {} | {} ms | {} ms | {} |",
                fmt(med(&|r| Some(r.wrk.rps), b), 0),
                fmt(med(&|r| r.wrk.p50_ms, b), 3),
                fmt(med(&|r| r.wrk.p99_ms, b), 3),
                fmt(med(&|r| Some(r.cpu_us_per_req), b), 1)
            );
        }
        println!(
            "\n10 policies ÷ none: **{ratio:.3}** ({lo:.3}–{hi:.3}); per pair: {}; target ≥ 0.95: {}. {} pairs in {:.0} s; compilers seen during runs: {}.",
            ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>().join(", "),
            if ratio >= 0.95 { "met" } else { "**not met**" },
            o.reps,
            started.elapsed().as_secs_f64(),
            pairs.iter().map(|(a, b)| a.compilers.max(b.compilers)).max().unwrap_or(0)
        );
        drop((none, ten));
        let _ = fs::remove_dir_all(&dir);
    }
}
