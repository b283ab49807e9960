//! The virtual outbound listener (use_original_dst on 15001 + PassthroughCluster,
//! the embedded default configuration's shape) with real kernel redirection: an
//! nftables `redirect` in a network namespace sends connections for 198.18.0.2:8080
//! to the proxy, which recovers the original destination with SO_ORIGINAL_DST and
//! proxies to it. Needs root (network namespace, nftables).
//!
//! Loop avoidance: the proxy runs as root (it reads the test's files) but with group
//! 65534 (`setpriv --regid 65534 --clear-groups`), and the nat rule skips sockets of
//! that group (`meta skgid != 65534`), so the proxy's own upstream connection to
//! 198.18.0.2:8080 is not redirected back to itself. (This machine's cgroup v2 is
//! not the unified hierarchy, so `socket cgroupv2` matching is not an option.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use tests::netns::{in_netns, require_root, Netns};
use tests::proxy::run_node_proxy;
use tests::*;

const POD: &str = "198.18.0.2:8080";
const PROXY_GID: &str = "65534";

/// The embedded default configuration (`node-proxy default-config`), with a request
/// header added on the outbound route so the origin can tell the proxy was there.
fn default_config_with_marker() -> String {
    let (status, text, err) = run_node_proxy(&["default-config"], Duration::from_secs(10));
    assert!(status.success(), "default-config: {err}");
    let mut doc: Value = serde_yaml::from_str(&text).expect("the default config is YAML");
    let listeners = doc["static_resources"]["listeners"].as_array_mut().expect("listeners");
    let outbound = listeners.iter_mut().find(|l| l["name"] == "virtualOutbound").expect("virtualOutbound listener");
    assert_eq!(outbound["address"]["socket_address"]["port_value"], 15001);
    assert_eq!(outbound["use_original_dst"], true);
    let chain = outbound["filter_chains"].as_array_mut().expect("filter_chains").iter_mut().find(|c| c["name"] == "http").expect("http chain");
    let route = &mut chain["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["route"]["cluster"], "PassthroughCluster");
    route["request_headers_to_add"] = json!([{ "header": { "key": "x-node-proxy", "value": "outbound" } }]);
    doc.to_string()
}

struct Topology {
    ns: Netns,
    origin: Origin,
    proxy: Proxy,
}

fn topology() -> Topology {
    let ns = Netns::create();
    ns.ip(&["addr", "add", "198.18.0.2/32", "dev", "lo"]);
    let origin = Origin::start_at("pod", POD.parse().unwrap(), Some(ns.name()));
    ns.nft(&format!(
        "table ip node_proxy_test {{
           chain output {{
             type nat hook output priority -100; policy accept;
             ip daddr 198.18.0.2 tcp dport 8080 meta skgid != {PROXY_GID} redirect to :15001
           }}
         }}"
    ));
    let opts = ProxyOptions {
        netns: Some(ns.name().to_owned()),
        wrapper: ["setpriv", "--regid", PROXY_GID, "--clear-groups"].map(str::to_owned).to_vec(),
        admin_address: Some("127.0.0.1:15000".parse().unwrap()),
        ..Default::default()
    };
    let proxy = Proxy::start_with(&default_config_with_marker(), opts);
    Topology { ns, origin, proxy }
}

#[test]
fn redirected_http_goes_through_the_proxy_to_the_original_destination() {
    if !require_root("redirected_http_goes_through_the_proxy_to_the_original_destination") {
        return;
    }
    let t = topology();
    let r = Curl::new(&format!("http://{POD}/hello?x=1")).netns(t.ns.name()).run();
    assert_eq!((r.status, r.origin()), (200, Some("pod")), "{r:?}\nproxy stderr:\n{}", t.proxy.stderr());
    let seen = t.origin.requests().pop().unwrap();
    assert_eq!(seen.header("x-node-proxy"), Some("outbound"), "the route's header shows the request went through the proxy");
    assert_eq!(seen.path, "/hello?x=1");
    assert_eq!(seen.header("x-envoy-attempt-count"), Some("1"), "the default route counts attempts");
    let e = t.proxy.wait_access_log("redirected request", |e| e.path == "/hello?x=1");
    assert_eq!(e.downstream_local, POD, "SO_ORIGINAL_DST recovered the original destination: {}", e.line);
    assert_eq!((e.upstream_host.as_str(), e.upstream_cluster.as_str(), e.route_name.as_str()), (POD, "PassthroughCluster", "allow_any"));
    assert_eq!((e.code, e.authority.as_str()), (200, POD));

    // HTTP/2 (h2c) is sniffed and routed the same way.
    let r = Curl::new(&format!("http://{POD}/h2")).http2().netns(t.ns.name()).run();
    assert_eq!((r.status, r.http_version.as_str()), (200, "2"), "{r:?}");
    assert_eq!(t.origin.requests().pop().unwrap().header("x-node-proxy"), Some("outbound"));
}

#[test]
fn unredirected_traffic_bypasses_the_proxy() {
    if !require_root("unredirected_traffic_bypasses_the_proxy") {
        return;
    }
    let t = topology();
    // The same request from a process in the proxy's group is not redirected.
    let out = t.ns.exec(
        "setpriv",
        &["--regid", PROXY_GID, "--clear-groups", "curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{POD}/direct")],
    );
    assert_eq!(out, "200");
    let seen = t.origin.requests().pop().unwrap();
    assert_eq!((seen.path.as_str(), seen.header("x-node-proxy")), ("/direct", None));
    assert!(t.proxy.access_log().is_empty(), "{:?}", t.proxy.access_log_lines());
}

#[test]
fn redirected_non_http_is_passed_through_as_tcp() {
    if !require_root("redirected_non_http_is_passed_through_as_tcp") {
        return;
    }
    let t = topology();
    let addr: SocketAddr = POD.parse().unwrap();
    // Bytes that are neither HTTP nor TLS: the default (tcp_proxy) chain takes them
    // to the original destination, whose HTTP server answers 400.
    let reply = in_netns(Some(t.ns.name()), move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&[0x00, 0x01, 0x02, 0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    });
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 400"), "the origin's own reply came back through the TCP proxy: {text:?}\nproxy stderr:\n{}", t.proxy.stderr());
    assert_eq!(t.origin.request_count(), 0);
    let e = t.proxy.wait_access_log("TCP connection", |e| e.upstream_cluster == "PassthroughCluster" && e.method == "-");
    assert_eq!((e.downstream_local.as_str(), e.upstream_host.as_str()), (POD, POD), "{}", e.line);
    assert!(t.proxy.metric("istio_tcp_connections_opened_total", &[]) >= 1.0);
}
