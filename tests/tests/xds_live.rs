//! The node proxy running from xDS alone against the test ADS server: listeners,
//! route tables, clusters and endpoints arrive over ADS (state of the world and
//! Delta), requests follow every push, an invalid resource is NACKed with its reason
//! while the last good one keeps serving, a new cluster warms until its endpoints
//! arrive, `/config_dump` and the metrics show it all, and route, weight, endpoint,
//! cluster and listener pushes under h2load fail no request.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tests::ads_server::{any_from_json, Recorded};
use tests::config::{router_filter, socket_address};
use tests::*;
use xds_client::pb::envoy::config::cluster::v3::Cluster;
use xds_client::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_client::pb::envoy::config::listener::v3::Listener;
use xds_client::pb::envoy::config::route::v3::RouteConfiguration;
use xds_client::type_url::{CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION};

const T: Duration = Duration::from_secs(15);
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn eventually<V>(what: &str, mut check: impl FnMut() -> Option<V>) -> V {
    assert_eventually(what, T, || check().ok_or_else(|| "not yet".to_owned()))
}

/// A listener on 127.0.0.1:`port` whose HCM takes route table `routes` over ADS.
fn rds_listener(name: &str, port: u16, stat_prefix: &str) -> Value {
    json!({
        "name": name,
        "address": socket_address(SocketAddr::from(([127, 0, 0, 1], port))),
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM_TYPE,
                "stat_prefix": stat_prefix,
                "codec_type": "AUTO",
                "rds": { "route_config_name": "routes", "config_source": { "ads": {}, "resource_api_version": "V3" } },
                "http_filters": [router_filter()],
            },
        }] }],
    })
}

/// Route table `routes`: everything to `action` (a RouteAction), with a response
/// header naming the route version.
fn routes(action: Value, version: &str) -> Value {
    json!({
        "name": "routes",
        "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": action, "response_headers_to_add": [{ "header": { "key": "x-route", "value": version } }] }],
        }],
    })
}

/// An EDS cluster, as istiod sends them (endpoints by `service_name` over ADS).
fn eds_cluster(name: &str, connect_timeout: &str) -> Value {
    json!({
        "name": name,
        "type": "EDS",
        "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" }, "service_name": name },
        "connect_timeout": connect_timeout,
        "lb_policy": "ROUND_ROBIN",
    })
}

fn cla(name: &str, endpoints: &[SocketAddr]) -> Value {
    let lb: Vec<Value> = endpoints.iter().map(|a| json!({ "endpoint": { "address": socket_address(*a) } })).collect();
    json!({ "cluster_name": name, "endpoints": [{ "lb_endpoints": lb }] })
}

fn set_listener(ads: &AdsServer, v: Value) {
    let name = v["name"].as_str().unwrap_or_default().to_owned();
    ads.set(LISTENER, &name, any_from_json::<Listener>(v));
}

fn set_routes(ads: &AdsServer, v: Value) {
    ads.set(ROUTE_CONFIGURATION, "routes", any_from_json::<RouteConfiguration>(v));
}

fn set_cluster(ads: &AdsServer, v: Value) {
    let name = v["name"].as_str().unwrap_or_default().to_owned();
    ads.set(CLUSTER, &name, any_from_json::<Cluster>(v));
}

fn set_cla(ads: &AdsServer, name: &str, endpoints: &[SocketAddr]) {
    ads.set(CLUSTER_LOAD_ASSIGNMENT, name, any_from_json::<ClusterLoadAssignment>(cla(name, endpoints)));
}

/// Fields drop in order: the proxy stops before the ADS server waits for its streams.
struct Mesh {
    proxy: Proxy,
    ads: AdsServer,
    a: Origin,
    b: Origin,
    port: u16,
}

/// Puts in `ads` EDS clusters `ca` (origin `a`) and `cb` (origin `b`) and listener
/// `main` on `port` whose route table (version `version`) sends everything to `cluster`.
fn serve_mesh(ads: &AdsServer, a: &Origin, b: &Origin, port: u16, cluster: &str, version: &str) {
    set_cluster(ads, eds_cluster("ca", "1s"));
    set_cluster(ads, eds_cluster("cb", "1s"));
    set_cla(ads, "ca", &[a.addr()]);
    set_cla(ads, "cb", &[b.addr()]);
    set_routes(ads, routes(json!({ "cluster": cluster }), version));
    set_listener(ads, rds_listener("main", port, "main"));
}

/// Two origins behind EDS clusters `ca` and `cb`, one listener `main` whose route
/// table sends everything to `ca`; all served before the proxy starts.
fn mesh(protocol: &str) -> Mesh {
    let ads = AdsServer::start();
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let port = free_port();
    serve_mesh(&ads, &a, &b, port, "ca", "v1");
    let opts = ProxyOptions { workers: 2, extra_args: vec!["--xds-protocol".into(), protocol.into()], ..Default::default() };
    let proxy = Proxy::start_xds(&ads.url(), opts);
    Mesh { proxy, ads, a, b, port }
}

impl Mesh {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until a request answers from `origin` with route version `route`.
    fn wait_for(&self, origin: &str, route: &str) {
        eventually(&format!("requests answered by {origin} through route {route}"), || {
            let r = curl(&self.url("/echo"));
            (r.status == 200 && r.origin() == Some(origin) && r.header("x-route") == Some(route)).then_some(())
        });
    }

    fn nacks(&self, type_url: &str) -> Vec<Recorded> {
        self.ads.requests().into_iter().filter(|r| r.type_url == type_url && r.error.is_some()).collect()
    }
}

fn follows_pushes(protocol: &str) {
    let m = mesh(protocol);
    // Ready means the first configuration is live: the very first request works.
    let r = curl(&m.url("/echo"));
    assert_eq!((r.status, r.origin(), r.header("x-route")), (200, Some("a"), Some("v1")), "{}", r.text());

    // A route change.
    set_routes(&m.ads, routes(json!({ "cluster": "cb" }), "v2"));
    m.wait_for("b", "v2");
    // A weight change: both clusters answer.
    set_routes(&m.ads, routes(json!({ "weighted_clusters": { "clusters": [{ "name": "ca", "weight": 50 }, { "name": "cb", "weight": 50 }] } }), "v3"));
    m.wait_for("a", "v3");
    m.wait_for("b", "v3");
    // An endpoint change: cluster ca now holds origin b only.
    set_routes(&m.ads, routes(json!({ "cluster": "ca" }), "v4"));
    set_cla(&m.ads, "ca", &[m.b.addr()]);
    m.wait_for("b", "v4");
    let before = m.a.request_count();
    for _ in 0..10 {
        assert_eq!(curl(&m.url("/echo")).origin(), Some("b"));
    }
    assert_eq!(m.a.request_count(), before, "an endpoint removed over EDS still got requests");

    // A new listener on another port, then its removal.
    let port2 = free_port();
    set_listener(&m.ads, rds_listener("second", port2, "second"));
    eventually("the pushed listener to accept", || (curl(&format!("http://127.0.0.1:{port2}/echo")).status == 200).then_some(()));
    m.ads.remove(LISTENER, "second");
    eventually("the removed listener to stop accepting", || std::net::TcpStream::connect(("127.0.0.1", port2)).is_err().then_some(()));
    assert_eq!(curl(&m.url("/echo")).status, 200, "removing one listener disturbed another");

    // Every push was ACKed.
    for t in [LISTENER, ROUTE_CONFIGURATION, CLUSTER, CLUSTER_LOAD_ASSIGNMENT] {
        assert!(m.nacks(t).is_empty(), "unexpected NACK of {t}: {:?}", m.nacks(t));
    }
    // The stream of Envoy resources is a sidecar's (the workload API has its own).
    let node = m.ads.requests().into_iter().filter(|r| !r.type_url.contains("istio.")).find_map(|r| r.node_id).expect("the stream sent its node");
    assert!(node.starts_with("sidecar~127.0.0.1~node-proxy-test.istio-system~istio-system.svc.cluster.local"), "{node}");

    // /config_dump: every dynamic resource with its version and last update.
    let dump: Value = serde_json::from_str(&m.proxy.admin_get("/config_dump?include_eds").body).expect("config_dump is JSON");
    let config = |t: &str| {
        dump["configs"].as_array().into_iter().flatten().find(|c| c["@type"].as_str().is_some_and(|x| x.ends_with(t))).cloned().unwrap_or(Value::Null)
    };
    let listeners = config("ListenersConfigDump");
    let main = listeners["dynamic_listeners"].as_array().into_iter().flatten().find(|l| l["name"] == "main").expect("main in dynamic_listeners");
    assert!(main["active_state"]["version_info"].as_str().is_some_and(|v| !v.is_empty()), "{main}");
    assert!(main["active_state"]["last_updated"].is_string(), "{main}");
    assert_eq!(main["active_state"]["listener"]["name"], "main");
    assert!(!listeners["dynamic_listeners"].as_array().into_iter().flatten().any(|l| l["name"] == "second"), "removed listener still dumped");
    let clusters = config("ClustersConfigDump");
    let names: Vec<&str> = clusters["dynamic_active_clusters"].as_array().into_iter().flatten().filter_map(|c| c["cluster"]["name"].as_str()).collect();
    assert_eq!(names, ["ca", "cb"]);
    let route = &config("RoutesConfigDump")["dynamic_route_configs"][0];
    assert_eq!(route["route_config"]["name"], "routes");
    assert_eq!(route["route_config"]["virtual_hosts"][0]["routes"][0]["response_headers_to_add"][0]["header"]["value"], "v4");
    let eps = config("EndpointsConfigDump");
    let ca = eps["dynamic_endpoint_configs"].as_array().into_iter().flatten().find(|e| e["endpoint_config"]["cluster_name"] == "ca").expect("ca endpoints");
    assert_eq!(ca["endpoint_config"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"], m.b.addr().port());

    // Metrics: connected, pushes applied per type.
    assert_eq!(m.proxy.metric("envoy_control_plane_connected_state", &[]), 1.0);
    assert!(m.proxy.metric("node_proxy_xds_update_success_total", &[("type_url", ROUTE_CONFIGURATION)]) >= 4.0);
    assert_eq!(m.proxy.metric("node_proxy_xds_resources", &[("type_url", CLUSTER), ("state", "active")]), 2.0);
}

#[test]
fn runs_from_xds_alone_and_follows_pushes_sotw() {
    follows_pushes("sotw");
}

#[test]
fn runs_from_xds_alone_and_follows_pushes_delta() {
    follows_pushes("delta");
}

#[test]
fn invalid_resources_are_nacked_and_the_last_good_config_keeps_serving() {
    let m = mesh("sotw");
    // A STATIC cluster with no endpoints is invalid; ca's last good version stays.
    set_cluster(&m.ads, json!({ "name": "ca", "type": "STATIC", "connect_timeout": "1s" }));
    eventually("a CDS NACK naming cluster ca", || {
        m.nacks(CLUSTER).into_iter().find(|r| r.error.as_deref().is_some_and(|e| e.contains("ca") && e.contains("load_assignment")))
    });
    // A listener on an address already in use by `main`.
    set_listener(&m.ads, rds_listener("clash", m.port, "clash"));
    let nack = eventually("an LDS NACK for the address clash", || m.nacks(LISTENER).into_iter().next());
    let error = nack.error.unwrap_or_default();
    assert!(error.contains("clash") && error.contains("already used by listener main"), "{error}");
    // A route table whose payload is not a RouteConfiguration at all.
    m.ads.set(ROUTE_CONFIGURATION, "routes", xds_client::pb::google::protobuf::Any { type_url: ROUTE_CONFIGURATION.into(), value: vec![0xff, 0xff, 0xff] });
    let nack = eventually("an RDS NACK for the malformed payload", || m.nacks(ROUTE_CONFIGURATION).into_iter().next());
    assert!(nack.error.unwrap_or_default().contains("cannot decode"));

    // Still serving the last good configuration.
    for _ in 0..5 {
        let r = curl(&m.url("/echo"));
        assert_eq!((r.status, r.origin(), r.header("x-route")), (200, Some("a"), Some("v1")));
    }
    // The dump shows the last good cluster with the error of the rejected update.
    let dump: Value = serde_json::from_str(&m.proxy.admin_get("/config_dump").body).expect("config_dump is JSON");
    let clusters =
        dump["configs"].as_array().into_iter().flatten().find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with("ClustersConfigDump"))).expect("clusters");
    let ca = clusters["dynamic_active_clusters"].as_array().into_iter().flatten().find(|c| c["cluster"]["name"] == "ca").expect("ca");
    assert_eq!(ca["cluster"]["type"], "EDS", "the last good version of ca is kept");
    assert!(ca["error_state"]["details"].as_str().is_some_and(|d| d.contains("load_assignment")), "{ca}");
    assert_eq!(ca["client_status"], "NACKED");
    assert!(m.proxy.metric("node_proxy_xds_update_rejected_total", &[("type_url", CLUSTER)]) >= 1.0);

    // A good update afterwards is taken and clears the error.
    set_cluster(&m.ads, eds_cluster("ca", "2s"));
    set_routes(&m.ads, routes(json!({ "cluster": "cb" }), "v2"));
    m.wait_for("b", "v2");
}

#[test]
fn a_new_cluster_warms_until_its_endpoints_arrive() {
    let m = mesh("delta");
    let c = Origin::start("c");
    // Cluster cc and a route to it, but no endpoints yet: the route waits with the
    // cluster, so requests keep going to a and none sees a cluster with no endpoints.
    set_cluster(&m.ads, eds_cluster("cc", "1s"));
    set_routes(&m.ads, routes(json!({ "cluster": "cc" }), "v2"));
    eventually("cluster cc warming", || (m.proxy.metric("node_proxy_xds_resources", &[("type_url", CLUSTER), ("state", "warming")]) == 1.0).then_some(()));
    for _ in 0..10 {
        let r = curl(&m.url("/echo"));
        assert_eq!((r.status, r.origin(), r.header("x-route")), (200, Some("a"), Some("v1")), "a request saw the route to a cluster still warming");
    }
    let dump: Value = serde_json::from_str(&m.proxy.admin_get("/config_dump").body).expect("config_dump is JSON");
    let clusters =
        dump["configs"].as_array().into_iter().flatten().find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with("ClustersConfigDump"))).expect("clusters");
    assert_eq!(clusters["dynamic_warming_clusters"][0]["cluster"]["name"], "cc", "{clusters}");
    // The endpoints arrive: cluster, then route, go live.
    set_cla(&m.ads, "cc", &[c.addr()]);
    m.wait_for("c", "v2");
}

/// One configuration change.
type Push<'a> = Box<dyn Fn(&Mesh) + 'a>;

/// h2load runs for a few seconds while the configuration changes under it.
#[test]
fn pushes_under_load_fail_no_request() {
    let m = mesh("sotw");
    let a2 = Origin::start("a2");
    let load = clients::Background::spawn(
        clients::h2load_command(&["-D", "8", "-c", "4", "-m", "8", "-t", "1", &m.url("/echo")]),
        "h2load (apt-get install nghttp2-client)",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let pushes: Vec<Push> = vec![
        Box::new(|m| set_routes(&m.ads, routes(json!({ "cluster": "cb" }), "v2"))),
        Box::new(|m| {
            set_routes(&m.ads, routes(json!({ "weighted_clusters": { "clusters": [{ "name": "ca", "weight": 30 }, { "name": "cb", "weight": 70 }] } }), "v3"))
        }),
        Box::new(|m| set_cla(&m.ads, "ca", &[m.a.addr(), a2.addr()])),
        Box::new(|m| set_cla(&m.ads, "ca", &[a2.addr()])),
        Box::new(|m| set_cluster(&m.ads, eds_cluster("cb", "2s"))),
        Box::new(|m| set_listener(&m.ads, rds_listener("main", m.port, "main-v2"))),
        Box::new(|m| set_routes(&m.ads, routes(json!({ "cluster": "ca" }), "v4"))),
        Box::new(|m| set_cla(&m.ads, "ca", &[m.a.addr()])),
    ];
    for push in &pushes {
        push(&m);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, out, err) = load.wait(Duration::from_secs(60));
    assert!(code == 0 || out.contains("requests:"), "h2load exited {code}: {out}{err}");
    let s = clients::parse_h2load(&out);
    assert!(s.done > 1000, "too few requests to mean anything: {out}");
    assert_eq!((s.failed, s.errored, s.timeout), (0, 0, 0), "{out}");
    // (With -D, h2load may count a response that completes at the deadline in the
    // status codes but not in `done`.)
    assert_eq!((s.status_3xx, s.status_4xx, s.status_5xx), (0, 0, 0), "{out}");
    assert!(s.status_2xx >= s.done, "{out}");
    // Every push was applied.
    m.wait_for("a", "v4");
    assert!(a2.request_count() > 0, "the endpoint pushed under load got no request");
    assert!(m.b.request_count() > 0, "the weighted route never sent to cb");
}

/// istiod restarts: the proxy keeps serving what it holds while istiod is away, then
/// resynchronises with the new istiod (Delta: announcing the versions it holds).
#[test]
fn an_istiod_restart_keeps_the_last_good_config_and_resyncs() {
    let Mesh { proxy, ads, a, b, port } = mesh("delta");
    let ads_port = ads.addr().port();
    let streams = ads.streams_opened();
    assert!(streams >= 2, "the Envoy-resource and workload API streams");
    drop(ads);
    let get = || curl(&format!("http://127.0.0.1:{port}/echo"));
    eventually("the proxy to notice istiod is gone", || (proxy.metric("envoy_control_plane_connected_state", &[]) == 0.0).then_some(()));
    for _ in 0..5 {
        let r = get();
        assert_eq!((r.status, r.origin(), r.header("x-route")), (200, Some("a"), Some("v1")), "istiod away: the last good configuration must keep serving");
    }
    // A new istiod on the same address, whose configuration moved on meanwhile.
    let ads = AdsServer::start_on(ads_port);
    serve_mesh(&ads, &a, &b, port, "cb", "v2");
    let m = Mesh { proxy, ads, a, b, port };
    m.wait_for("b", "v2");
    let reconnect = m.ads.requests().into_iter().find(|r| r.delta && r.type_url == CLUSTER).expect("a Delta CDS request after the restart");
    assert_eq!(reconnect.initial_versions.len(), 2, "the reconnecting stream announces the clusters it holds: {reconnect:?}");
    assert_eq!(m.proxy.metric("envoy_control_plane_connected_state", &[]), 1.0);
}

/// The `ClustersConfigDump` or `ListenersConfigDump` of a `/config_dump`.
fn dump_of(proxy: &Proxy, suffix: &str) -> Value {
    let dump: Value = serde_json::from_str(&proxy.admin_get("/config_dump").body).expect("config_dump is JSON");
    dump["configs"].as_array().into_iter().flatten().find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(suffix))).cloned().unwrap_or(Value::Null)
}

fn names_in(list: &Value, pointer: &str) -> Vec<String> {
    list.as_array().into_iter().flatten().filter_map(|e| e.pointer(pointer).and_then(Value::as_str)).map(str::to_owned).collect()
}

#[test]
fn static_clusters_and_listeners_cannot_be_replaced_over_xds() {
    use tests::config::{cluster, http_bootstrap, route_all_to};
    let ads = AdsServer::start();
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let (static_port, dynamic_port, clash_port) = (free_port(), free_port(), free_port());
    // The file: listener `main` and STATIC cluster `ca` (origin a).
    let config = http_bootstrap(static_port, route_all_to("ca", json!({})), vec![cluster("ca", &[a.addr()])]);
    // istiod: its own `ca` (origin b), a `main` on another port, and listener `dyn` routing to `ca`.
    set_cluster(&ads, eds_cluster("ca", "1s"));
    set_cla(&ads, "ca", &[b.addr()]);
    set_routes(&ads, routes(json!({ "cluster": "ca" }), "v1"));
    set_listener(&ads, rds_listener("main", clash_port, "clash"));
    set_listener(&ads, rds_listener("dyn", dynamic_port, "dyn"));
    let opts = ProxyOptions { extra_args: vec!["--xds-address".into(), ads.url(), "--pod-name".into(), "node-proxy-test".into()], ..Default::default() };
    let proxy = Proxy::spawn(&config, &opts).wait_ready(Duration::from_secs(30));

    // As Envoy: the static ones stay; xDS updates to them are skipped, not NACKed.
    eventually("the dynamic listener to serve", || (curl(&format!("http://127.0.0.1:{dynamic_port}/echo")).status == 200).then_some(()));
    for port in [dynamic_port, static_port] {
        let r = curl(&format!("http://127.0.0.1:{port}/echo"));
        assert_eq!((r.status, r.origin()), (200, Some("a")), "port {port}: the static cluster ca must serve");
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", clash_port)).is_err(), "the xDS listener named like the static `main` must not be bound");
    let nacks: Vec<Recorded> = ads.requests().into_iter().filter(|r| r.error.is_some()).collect();
    assert!(nacks.is_empty(), "skipped updates are acknowledged: {nacks:?}");

    // /config_dump shows both halves: the file's resources static, istiod's dynamic.
    let clusters = dump_of(&proxy, "ClustersConfigDump");
    assert_eq!(names_in(&clusters["static_clusters"], "/cluster/name"), ["ca"], "{clusters}");
    assert!(names_in(&clusters["dynamic_active_clusters"], "/cluster/name").is_empty(), "{clusters}");
    let listeners = dump_of(&proxy, "ListenersConfigDump");
    assert_eq!(names_in(&listeners["static_listeners"], "/listener/name"), ["main"], "{listeners}");
    assert_eq!(names_in(&listeners["dynamic_listeners"], "/name"), ["dyn"], "{listeners}");
}

/// istiod's serving name, in the certificate of the TLS test ADS server.
const ISTIOD: &str = "istiod.istio-system.svc";

/// The proxy's xDS flags for a TLS istiod: root certificate `root_pem`, server name,
/// token and cluster id, written under `dir`.
fn tls_args(dir: &std::path::Path, root_pem: &str) -> Vec<String> {
    let (root, token) = (dir.join("root-cert.pem"), dir.join("istio-token"));
    std::fs::write(&root, root_pem).expect("write the root certificate");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJub2RlLXByb3h5In0.c2ln\n").expect("write the token");
    [
        "--xds-root-cert",
        root.to_str().unwrap_or_default(),
        "--xds-server-name",
        ISTIOD,
        "--token-path",
        token.to_str().unwrap_or_default(),
        "--cluster-id",
        "cluster-7",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn tls_to_istiod_trusts_its_root_and_sends_the_token_and_cluster_id() {
    let ca = tests::pki::TestCa::new("Istio test root");
    let ads = AdsServer::start_tls(ca.server_identity(&[ISTIOD]));
    assert!(ads.url().starts_with("https://"));
    let a = Origin::start("a");
    let port = free_port();
    set_cluster(&ads, eds_cluster("ca", "1s"));
    set_cla(&ads, "ca", &[a.addr()]);
    set_routes(&ads, routes(json!({ "cluster": "ca" }), "v1"));
    set_listener(&ads, rds_listener("main", port, "main"));
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = Proxy::start_xds(&ads.url(), ProxyOptions { extra_args: tls_args(dir.path(), ca.cert_pem()), ..Default::default() });

    let r = curl(&format!("http://127.0.0.1:{port}/echo"));
    assert_eq!((r.status, r.origin(), r.header("x-route")), (200, Some("a"), Some("v1")), "configuration taken over TLS");
    assert_eq!(proxy.metric("envoy_control_plane_connected_state", &[]), 1.0);
    // Both streams (Envoy resources and the workload API) authenticate as istiod expects.
    let headers = ads.stream_headers();
    assert!(headers.len() >= 2, "{headers:?}");
    for h in headers {
        assert_eq!(h.authorization.as_deref(), Some("Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJub2RlLXByb3h5In0.c2ln"), "the projected token, trimmed");
        assert_eq!(h.cluster_id.as_deref(), Some("cluster-7"));
    }
}

#[test]
fn an_istiod_certificate_from_another_root_is_refused_with_a_hint() {
    let (ca, other) = (tests::pki::TestCa::new("Istio test root"), tests::pki::TestCa::new("some other root"));
    let ads = AdsServer::start_tls(ca.server_identity(&[ISTIOD]));
    let dir = tempfile::tempdir().expect("temp dir");
    let mut extra_args = vec!["--xds-address".to_owned(), ads.url(), "--pod-name".into(), "node-proxy-test".into()];
    extra_args.extend(tls_args(dir.path(), other.cert_pem()));
    let proxy = Proxy::spawn("", &ProxyOptions { extra_args, ..Default::default() });
    let log = eventually("the TLS failure in the log", || {
        let log = proxy.stderr();
        log.contains("check --xds-root-cert").then_some(log)
    });
    assert!(log.contains(&ads.url()) || log.contains(&ads.addr().to_string()), "the log names istiod's address:\n{log}");
    assert_eq!(ads.streams_opened(), 0, "no stream may open over an untrusted connection");
    assert_eq!(proxy.metric("envoy_control_plane_connected_state", &[]), 0.0);
}
