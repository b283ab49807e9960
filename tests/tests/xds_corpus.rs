//! istiod's real output served over ADS to the node proxy, with real kernel
//! redirection: the 27 listeners of a real sidecar config dump
//! (`sidecar_config_dump_with_rbac.json`: virtualOutbound/virtualInbound with
//! `use_original_dst`, per-port HTTP and TCP listeners, RBAC, metadata exchange, wasm
//! stats) and istiod's route table for bookinfo's productpage
//! (`describe_http_config.json`: exact/prefix paths, retry policy with
//! `previous_hosts`) with its cluster (LEAST_REQUEST, circuit breakers, 10 s connect
//! timeout). A connection from a "pod" to a service VIP is redirected by nftables to
//! virtualOutbound (15001), dispatched by original destination to `0.0.0.0_9080`,
//! routed by RDS to the productpage cluster and load balanced over its EDS endpoints.
//!
//! Adaptations, so the files fit together: the route table `http.8080` is served under
//! the name the 9080 listener asks for (`9080`), and the subset cluster
//! `outbound|9080|v1|productpage…` under the name the route uses
//! (`outbound|9080||productpage…`); endpoints are the test's (the dumps hold none).
//! Needs root (network namespace, nftables).

use prost::Message;
use serde_json::Value;
use tests::ads_server::resources_of_config_dump;
use tests::netns::{in_netns, require_root, Netns};
use tests::*;
use xds_client::pb::envoy::config::cluster::v3::Cluster;
use xds_client::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_client::pb::google::protobuf::Any;
use xds_client::type_url::{CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION};

const PROXY_GID: &str = "65534";
const PRODUCTPAGE: &str = "outbound|9080||productpage.default.svc.cluster.local";
/// A VIP in the service range; any address in 10.96.0.0/12 is redirected.
const VIP: &str = "10.96.12.34:9080";
const POD: &str = "10.244.1.10:9080";
/// A second endpoint nothing listens on: connect failures the retry policy covers.
const DEAD_POD: &str = "10.244.1.11:9080";

fn encode<M: Message>(type_url: &str, m: &M) -> Any {
    Any { type_url: type_url.to_owned(), value: m.encode_to_vec() }
}

#[test]
fn istiod_sidecar_listeners_and_routes_serve_requests_through_the_redirect() {
    if !require_root("istiod_sidecar_listeners_and_routes_serve_requests_through_the_redirect") {
        return;
    }
    let Some(corpus) = corpus::dir() else { return };
    let dumps = corpus.join("istio-envoy-configdump");

    let mut resources = resources_of_config_dump(&dumps.join("sidecar_config_dump_with_rbac.json"));
    let listeners: Vec<String> = resources.iter().filter(|r| r.0 == LISTENER).map(|r| r.1.clone()).collect();
    assert_eq!(listeners.len(), 27, "{listeners:?}");
    for (type_url, name, mut any) in resources_of_config_dump(&dumps.join("describe_http_config.json")) {
        if type_url == ROUTE_CONFIGURATION && name == "http.8080" {
            let mut rc = xds_client::pb::envoy::config::route::v3::RouteConfiguration::decode(any.value.as_slice()).expect("route configuration");
            rc.name = "9080".to_owned();
            any = encode(ROUTE_CONFIGURATION, &rc);
            resources.push((type_url, "9080".to_owned(), any));
        } else if type_url == CLUSTER {
            let mut c = Cluster::decode(any.value.as_slice()).expect("cluster");
            assert_eq!(c.lb_policy, xds_client::pb::envoy::config::cluster::v3::cluster::LbPolicy::LeastRequest as i32);
            c.name = PRODUCTPAGE.to_owned();
            if let Some(eds) = c.eds_cluster_config.as_mut() {
                eds.service_name = PRODUCTPAGE.to_owned();
            }
            resources.push((type_url, PRODUCTPAGE.to_owned(), encode(CLUSTER, &c)));
        }
    }
    let endpoint = |addr: &str| {
        let a: std::net::SocketAddr = addr.parse().expect("address");
        serde_json::json!({ "endpoint": { "address": { "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } } } })
    };
    let cla = serde_json::json!({ "cluster_name": PRODUCTPAGE, "endpoints": [{ "lb_endpoints": [endpoint(POD), endpoint(DEAD_POD)] }] });
    resources.push((CLUSTER_LOAD_ASSIGNMENT.to_owned(), PRODUCTPAGE.to_owned(), ads_server::any_from_json::<ClusterLoadAssignment>(cla)));
    assert!(resources.iter().any(|r| r.0 == ROUTE_CONFIGURATION && r.1 == "9080"));

    let ns = Netns::create();
    ns.ip(&["route", "add", "local", "10.96.0.0/12", "dev", "lo"]);
    ns.ip(&["addr", "add", "10.244.1.10/32", "dev", "lo"]);
    ns.ip(&["addr", "add", "10.244.1.11/32", "dev", "lo"]);
    let origin = Origin::start_at("productpage", POD.parse().unwrap(), Some(ns.name()));
    ns.nft(&format!(
        "table ip node_proxy_test {{
           chain output {{
             type nat hook output priority -100; policy accept;
             ip daddr 10.96.0.0/12 meta l4proto tcp meta skgid != {PROXY_GID} redirect to :15001
           }}
         }}"
    ));
    let ads = in_netns(Some(ns.name()), AdsServer::start);
    ads.set_all(resources);
    let opts = ProxyOptions {
        netns: Some(ns.name().to_owned()),
        wrapper: ["setpriv", "--regid", PROXY_GID, "--clear-groups"].map(str::to_owned).to_vec(),
        admin_address: Some("127.0.0.1:15000".parse().unwrap()),
        // Route tables for the other ports are not served: their listeners go live
        // without them after this long (istiod would send them all).
        extra_args: ["--initial-fetch-timeout", "2s"].map(str::to_owned).to_vec(),
        ..Default::default()
    };
    let proxy = Proxy::start_xds(&ads.url(), opts);

    // Every listener istiod generated was taken, except the two Envoy internal
    // listeners (HBONE origination inside Envoy), which are NACKed with the reason.
    let nacks: Vec<String> = ads.requests().into_iter().filter_map(|r| r.error).collect();
    assert!(!nacks.is_empty(), "the internal listeners were accepted?");
    for e in &nacks {
        let known = ["connect_originate", "main_internal"];
        assert!(e.contains("internal listeners are not supported") && known.iter().any(|k| e.contains(k)), "unexpected NACK: {e}");
        assert!(!e.contains("virtualOutbound") && !e.contains("0.0.0.0_9080"), "{e}");
    }
    let dump: Value = serde_json::from_str(&proxy.admin_get("/config_dump").body).expect("config_dump is JSON");
    let dynamic = dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with("ListenersConfigDump")))
        .map(|c| c["dynamic_listeners"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    let active: Vec<&str> = dynamic.iter().filter(|l| l["active_state"].is_object()).filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(active.len(), 25, "active listeners: {active:?}");
    let rejected: Vec<&str> = dynamic.iter().filter(|l| l["error_state"].is_object()).filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(rejected, ["connect_originate", "main_internal"]);

    // Requests from a pod to the VIP: redirected, dispatched to 0.0.0.0_9080 by the
    // original destination, routed by istiod's route table, and every one answered
    // although half the endpoints refuse connections (retry_on connect-failure with
    // the previous_hosts predicate picks the other).
    for path in ["/productpage", "/static/app.css", "/api/v1/products/1", "/login"] {
        for _ in 0..5 {
            let r = Curl::new(&format!("http://{VIP}{path}")).netns(ns.name()).run();
            assert_eq!((r.status, r.origin()), (200, Some("productpage")), "{path}: {}", r.text());
        }
    }
    let seen: Vec<String> = origin.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(seen.len(), 20, "{seen:?}");
    assert!(seen.iter().any(|p| p == "/api/v1/products/1"), "{seen:?}");
    // A path istiod's route table does not hold: 404 from the proxy, not the origin.
    let before = origin.request_count();
    let r = Curl::new(&format!("http://{VIP}/not-a-bookinfo-path")).netns(ns.name()).run();
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(origin.request_count(), before, "an unrouted path reached the origin");
    // The retries happened on istiod's cluster.
    let retries = proxy.metric("envoy_cluster_upstream_rq_retry", &[("cluster_name", PRODUCTPAGE)]);
    assert!(retries >= 1.0, "20 requests over two endpoints, one dead, and no retry?");
    let access = proxy.wait_access_log("a request routed to productpage", |e| e.upstream_cluster == PRODUCTPAGE);
    assert_eq!(access.code, 200);
}

/// istiod's gateway route tables (`gateway_routes_retry_policy.json`: an Istio Gateway
/// with a VirtualService, prefix `/get`; `k8s_gateway_routes.json`: a Kubernetes
/// Gateway HTTPRoute, `path_separated_prefix /get`), both for host
/// `httpbin.example.com`, with istiod's retry policy and `include_request_attempt_count`,
/// served over ADS behind two gateway-style listeners; the httpbin cluster is an EDS
/// cluster with one live and one dead endpoint. Also istiod's waypoint resources
/// (`waypoint_config_dump.json`): its cluster is taken, its internal listener NACKed.
#[test]
fn istiod_gateway_routes_route_by_host_and_path_with_their_retry_policy() {
    let Some(corpus) = corpus::dir() else { return };
    let dumps = corpus.join("istio-envoy-configdump");
    const HTTPBIN: &str = "outbound|8000||httpbin.default.svc.cluster.local";
    let ads = AdsServer::start();
    let httpbin = Origin::start("httpbin");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve a port");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);

    let mut resources = Vec::new();
    for file in ["gateway_routes_retry_policy.json", "k8s_gateway_routes.json", "waypoint_config_dump.json"] {
        resources.extend(resources_of_config_dump(&dumps.join(file)));
    }
    let names: Vec<(String, String)> = resources.iter().map(|r| (r.0.clone(), r.1.clone())).collect();
    assert!(
        names.contains(&(ROUTE_CONFIGURATION.to_owned(), "http.8080".to_owned())) && names.contains(&(ROUTE_CONFIGURATION.to_owned(), "http.80".to_owned())),
        "{names:?}"
    );
    let (p8080, p80) = (free_port(), free_port());
    let gateway = |name: &str, port: u16, rds: &str| {
        let l = serde_json::json!({
            "name": name,
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": port } },
            "filter_chains": [{ "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "rds": { "route_config_name": rds, "config_source": { "ads": {}, "resource_api_version": "V3" } },
                    "http_filters": [tests::config::router_filter()],
                },
            }] }],
        });
        (LISTENER.to_owned(), name.to_owned(), ads_server::any_from_json::<xds_client::pb::envoy::config::listener::v3::Listener>(l))
    };
    resources.push(gateway("gateway-8080", p8080, "http.8080"));
    resources.push(gateway("gateway-80", p80, "http.80"));
    let cluster = serde_json::json!({
        "name": HTTPBIN, "type": "EDS", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
        "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" }, "service_name": HTTPBIN },
    });
    resources.push((CLUSTER.to_owned(), HTTPBIN.to_owned(), ads_server::any_from_json::<Cluster>(cluster)));
    let ep = |a: std::net::SocketAddr| serde_json::json!({ "endpoint": { "address": { "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } } } });
    let cla = serde_json::json!({ "cluster_name": HTTPBIN, "endpoints": [{ "lb_endpoints": [ep(httpbin.addr()), ep(dead_addr)] }] });
    resources.push((CLUSTER_LOAD_ASSIGNMENT.to_owned(), HTTPBIN.to_owned(), ads_server::any_from_json::<ClusterLoadAssignment>(cla)));
    ads.set_all(resources);
    let proxy = Proxy::start_xds(&ads.url(), ProxyOptions { extra_args: ["--initial-fetch-timeout", "2s"].map(str::to_owned).to_vec(), ..Default::default() });

    // Host and path as istiod routed them; every request answered although one
    // endpoint refuses connections (retry_on connect-failure, previous_hosts), and the
    // attempt count istiod asked for tells which were retried.
    let get = |port: u16, host: &str, path: &str| Curl::new(&format!("http://127.0.0.1:{port}{path}")).host(host).run();
    let mut attempts = Vec::new();
    for port in [p8080, p80] {
        for _ in 0..6 {
            let r = get(port, "httpbin.example.com", "/get/anything");
            assert_eq!((r.status, r.origin()), (200, Some("httpbin")), "{}", r.text());
            attempts.push(r.json()["headers"]["x-envoy-attempt-count"][0].as_str().unwrap_or("-").to_owned());
        }
    }
    assert!(attempts.iter().all(|a| a == "1" || a == "2"), "{attempts:?}");
    assert!(attempts.iter().any(|a| a == "2"), "round robin over a dead endpoint and never a retry? {attempts:?}");
    // Another host: no virtual host; 404.
    assert_eq!(get(p8080, "other.example.com", "/get").status, 404);
    // Prefix `/get` matches `/getx`; the HTTPRoute's path_separated_prefix does not.
    assert_eq!(get(p8080, "httpbin.example.com", "/getx").status, 200);
    assert_eq!(get(p80, "httpbin.example.com", "/getx").status, 404);

    // The waypoint's resources: its EDS cluster taken; its internal listener, and the
    // endpoints that point at it (an Envoy internal address), NACKed with the reason.
    let nacks: Vec<String> = ads.requests().into_iter().filter_map(|r| r.error).collect();
    assert!(nacks.iter().any(|e| e.contains("main_internal: internal_listener: Envoy internal listeners are not supported")), "{nacks:?}");
    assert!(nacks.iter().all(|e| e.contains("Envoy internal")), "{nacks:?}");
    let dump: Value = serde_json::from_str(&proxy.admin_get("/config_dump").body).expect("config_dump is JSON");
    let clusters =
        dump["configs"].as_array().into_iter().flatten().find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with("ClustersConfigDump"))).expect("clusters");
    let active: Vec<&str> = clusters["dynamic_active_clusters"].as_array().into_iter().flatten().filter_map(|c| c["cluster"]["name"].as_str()).collect();
    assert!(active.contains(&"inbound-vip|8000|http|httpbin.default.svc.cluster.local") && active.contains(&HTTPBIN), "{active:?}");
}
