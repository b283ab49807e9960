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
