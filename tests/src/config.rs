//! Building node-proxy configurations (Envoy v3 bootstrap, proto3 JSON field names).
//!
//! Tests write the interesting part — a route configuration, a cluster option — as a
//! YAML fragment ([`yaml`] dedents it, so it can sit indented in a raw string), and
//! these helpers wrap it in the boilerplate: listener, HTTP connection manager with
//! the router filter, STATIC clusters with their endpoints. [`bootstrap`] returns the
//! document as JSON text, which the proxy reads as YAML.

use std::net::SocketAddr;

use serde_json::{json, Value};

pub const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
pub const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
pub const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
pub const TCP_PROXY_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
pub const HTTP_OPTIONS_TYPE: &str = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Parses a YAML fragment, after removing the indentation common to its lines.
pub fn yaml(text: &str) -> Value {
    let indent = text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    let dedented: String = text.lines().map(|l| l.get(indent..).unwrap_or("").trim_end()).collect::<Vec<_>>().join("\n");
    serde_yaml::from_str(&dedented).unwrap_or_else(|e| panic!("bad YAML in test: {e}\n{dedented}"))
}

/// `base` with `overlay` merged in: objects key by key (recursively), anything else replaced.
pub fn merge(mut base: Value, overlay: Value) -> Value {
    merge_into(&mut base, overlay);
    base
}

fn merge_into(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_into(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

pub fn socket_address(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

pub fn router_filter() -> Value {
    json!({ "name": "envoy.filters.http.router", "typed_config": { "@type": ROUTER_TYPE } })
}

/// The fault filter with a listener-level config (`{}` for "per route only").
pub fn fault_filter(config: Value) -> Value {
    let mut typed = json!({ "@type": FAULT_TYPE });
    merge_into(&mut typed, config);
    json!({ "name": "envoy.filters.http.fault", "typed_config": typed })
}

/// An HTTP connection manager (codec AUTO) with this inline route configuration and
/// only the router filter. Merge more fields in with [`merge`].
pub fn hcm(route_config: Value) -> Value {
    json!({
        "@type": HCM_TYPE,
        "stat_prefix": "test",
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": [router_filter()],
    })
}

/// A listener on 127.0.0.1:`port` with one filter chain running `hcm_config`.
pub fn http_listener(name: &str, port: u16, hcm_config: Value) -> Value {
    listener(name, SocketAddr::from(([127, 0, 0, 1], port)), json!({ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm_config }))
}

/// A listener on `addr` with one filter chain holding `filter`.
pub fn listener(name: &str, addr: SocketAddr, filter: Value) -> Value {
    json!({
        "name": name,
        "address": socket_address(addr),
        "filter_chains": [{ "filters": [filter] }],
    })
}

/// A TCP proxy listener on 127.0.0.1:`port` to `cluster`.
pub fn tcp_listener(name: &str, port: u16, cluster: &str) -> Value {
    let filter = json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": { "@type": TCP_PROXY_TYPE, "stat_prefix": name, "cluster": cluster },
    });
    listener(name, SocketAddr::from(([127, 0, 0, 1], port)), filter)
}

/// A STATIC, ROUND_ROBIN cluster over `endpoints`, 1 s connect timeout, HTTP/1.1.
pub fn cluster(name: &str, endpoints: &[SocketAddr]) -> Value {
    let lb_endpoints: Vec<Value> = endpoints.iter().map(|a| json!({ "endpoint": { "address": socket_address(*a) } })).collect();
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": lb_endpoints }] },
    })
}

/// [`cluster`] speaking prior-knowledge HTTP/2 (h2c) upstream, as gRPC needs.
pub fn h2_cluster(name: &str, endpoints: &[SocketAddr]) -> Value {
    merge(
        cluster(name, endpoints),
        json!({
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": HTTP_OPTIONS_TYPE,
                    "explicit_http_config": { "http2_protocol_options": {} },
                }
            }
        }),
    )
}

/// The bootstrap document as text.
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> String {
    json!({ "static_resources": { "listeners": listeners, "clusters": clusters } }).to_string()
}

/// The common case: one HTTP listener called `main` on `port` with `route_config`.
pub fn http_bootstrap(port: u16, route_config: Value, clusters: Vec<Value>) -> String {
    bootstrap(vec![http_listener("main", port, hcm(route_config))], clusters)
}

/// A route configuration with one virtual host (`*`) whose single route sends
/// everything (`prefix: /`) to `cluster`, with `route_extra` merged into the
/// route action (retry_policy, timeout, …).
pub fn route_all_to(cluster: &str, route_extra: Value) -> Value {
    json!({
        "name": "local",
        "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": merge(json!({ "cluster": cluster }), route_extra) }],
        }],
    })
}
