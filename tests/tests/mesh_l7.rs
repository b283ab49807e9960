//! Inbound L7 at the HBONE destination (issue 5 §3, issue 6 §1–2), as root in the
//! two-node scene of [`tests::mesh_scene`]: node2's proxy terminates the tunnel and,
//! because its configuration has an inbound listener (`virtualInbound`,
//! `traffic_direction: INBOUND`, shaped as istiod builds a sidecar's), parses the HTTP
//! inside the stream: the listener's HTTP RBAC decides per request with the tunnel's
//! verified peer identity, the requests are reported `reporter="destination"` with the
//! source pod's principal, and the inbound route reaches the pod through an
//! ORIGINAL_DST cluster (the stream's target). Plaintext that reaches the pod without
//! HBONE is captured onto node2's inbound plaintext listener and served by the same
//! listener's `raw_buffer` chain, with no principal.

use std::time::Duration;

use serde_json::{json, Value};
use tests::ads_server::any_from_json;
use tests::clients::Curl;
use tests::config::{router_filter, socket_address, HCM_TYPE};
use tests::mesh_scene::*;
use tests::netns::{in_netns, require_root};
use tests::wait::assert_eventually;
use xds_client::pb::envoy::config::cluster::v3::Cluster;
use xds_client::pb::envoy::config::listener::v3::Listener;
use xds_client::type_url::{CLUSTER, LISTENER};

const T: Duration = Duration::from_secs(20);
const RBAC_HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// istiod's `principals` for `from.source.principals: [<td>/ns/<ns>/sa/<sa>]`.
fn principal_is(spiffe: &str) -> Value {
    json!([{ "and_ids": { "ids": [{ "or_ids": { "ids": [
        { "authenticated": { "principal_name": { "exact": spiffe } } }
    ] } }] } }])
}

fn path_prefix(prefix: &str) -> Value {
    json!([{ "and_rules": { "rules": [{ "or_rules": { "rules": [{ "url_path": { "path": { "prefix": prefix } } }] } }] } }])
}

fn http_rbac(config: Value) -> Value {
    let mut typed = json!({ "@type": RBAC_HTTP });
    if let (Some(t), Some(c)) = (typed.as_object_mut(), config.as_object()) {
        t.extend(c.clone());
    }
    json!({ "name": "envoy.filters.http.rbac", "typed_config": typed })
}

/// node2's `virtualInbound`: port 8080 is HTTP with a DENY of `/admin` for anyone and
/// an ALLOW of `/api` for `allowed` only, routing to `inbound|8080||` (adding
/// `x-inbound: node2`); any other port is passed through by TCP. Port 8080's chain is
/// plaintext (`raw_buffer`), or with `strict` Istio's mTLS chain (transport `tls`,
/// Istio's ALPN, a DownstreamTlsContext), the only one istiod emits for a STRICT port.
fn virtual_inbound(allowed: &str, strict: bool) -> Value {
    let route = json!({
        "name": "inbound|8080||",
        "virtual_hosts": [{
            "name": "inbound|http|8080",
            "domains": ["*"],
            "routes": [{
                "match": { "prefix": "/" },
                "route": { "cluster": "inbound|8080||" },
                "request_headers_to_add": [{ "header": { "key": "x-inbound", "value": "node2" } }],
            }],
        }],
    });
    let filters = vec![
        http_rbac(json!({ "rules": { "action": "DENY", "policies": {
            "ns[mesh]-policy[deny-admin]-rule[0]": { "permissions": path_prefix("/admin"), "principals": [{ "any": true }] },
        } } })),
        http_rbac(json!({ "rules": { "policies": {
            "ns[mesh]-policy[allow-api]-rule[0]": { "permissions": path_prefix("/api"), "principals": principal_is(allowed) },
        } } })),
        router_filter(),
    ];
    let hcm = json!({
        "@type": HCM_TYPE,
        "stat_prefix": "inbound_0.0.0.0_8080",
        "codec_type": "AUTO",
        "route_config": route,
        "http_filters": filters,
        // As istiod sets it on a sidecar's inbound connection managers.
        "forward_client_cert_details": "APPEND_FORWARD",
        "set_current_client_cert_details": { "subject": true, "dns": true, "uri": true },
    });
    let mut http_chain = json!({
        "name": "0.0.0.0_8080",
        "filter_chain_match": { "destination_port": 8080, "transport_protocol": "raw_buffer" },
        "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }],
    });
    if strict {
        http_chain["filter_chain_match"] = json!({
            "destination_port": 8080,
            "transport_protocol": "tls",
            "application_protocols": ["istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"],
        });
        http_chain["transport_socket"] = json!({ "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
        } });
    }
    json!({
        "name": "virtualInbound",
        "address": socket_address(sa("0.0.0.0:15006")),
        "traffic_direction": "INBOUND",
        "listener_filters": [
            { "name": "envoy.filters.listener.tls_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector" } },
            { "name": "envoy.filters.listener.http_inspector", "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector" } },
        ],
        "filter_chains": [
            http_chain,
            {
                "name": "virtualInbound-catchall-raw",
                "filter_chain_match": { "transport_protocol": "raw_buffer" },
                "filters": [{ "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "InboundPassthroughCluster",
                    "cluster": "InboundPassthroughCluster",
                } }],
            },
        ],
    })
}

fn original_dst_cluster(name: &str) -> Value {
    json!({ "name": name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "2s" })
}

#[test]
fn the_destination_parses_http_in_the_tunnel_for_policy_and_telemetry() {
    if !require_root("the_destination_parses_http_in_the_tunnel_for_policy_and_telemetry") {
        return;
    }
    let s = Scene::new("mesh-l7", "24h");
    let client = format!("spiffe://{TD}/ns/{NS}/sa/client");
    s.ads2.set(CLUSTER, "inbound|8080||", any_from_json::<Cluster>(original_dst_cluster("inbound|8080||")));
    s.ads2.set(CLUSTER, "InboundPassthroughCluster", any_from_json::<Cluster>(original_dst_cluster("InboundPassthroughCluster")));
    s.ads2.set(LISTENER, "virtualInbound", any_from_json::<Listener>(virtual_inbound(&client, false)));
    assert_eventually("node2 has the inbound listener", T, || {
        let dump = s.proxy2.admin_get("/config_dump").body;
        if dump.contains("virtualInbound") && dump.contains("inbound|8080||") {
            Ok(())
        } else {
            Err(dump)
        }
    });
    let logs = || format!("proxy1:\n{}\nproxy2:\n{}", s.proxy1.stderr(), s.proxy2.stderr());

    // Allowed: pod10 dials pod20 (node1's passthrough → HBONE → node2's inbound HTTP chain).
    let d = s.client().dial(sa(SERVER), "/api/l4");
    assert_eq!(d.status(), 200, "{}\n{}", d.response, logs());
    let seen = s.server().requests_to("/api/l4");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-inbound"), Some("node2"), "node2's inbound route served it");
    // And through node1's L7 route (HTTP/1 pooled over the tunnel).
    let d = s.client().dial(sa(VIP), "/api/l7");
    assert_eq!(d.status(), 200, "{}\n{}", d.response, logs());
    let seen = s.server().requests_to("/api/l7");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-node-proxy"), Some("node1"));
    assert_eq!(seen[0].header("x-inbound"), Some("node2"));
    // x-forwarded-client-cert: node1's connection manager (SANITIZE, Envoy's default)
    // drops a client's forged one; node2's (APPEND_FORWARD) adds the tunnel's peer.
    let r = s.client().curl(Curl::new(&format!("http://{VIP}/api/xfcc")).header("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/mesh/sa/admin"));
    assert_eq!(r.status, 200, "{}\n{}", r.stderr, logs());
    let xfcc = s.server().requests_to("/api/xfcc")[0].header("x-forwarded-client-cert").map(str::to_owned).unwrap_or_default();
    let (before, after) = xfcc.split_once(";Hash=").unwrap_or_else(|| panic!("no Hash in {xfcc:?}"));
    assert_eq!(before, format!("By=spiffe://{TD}/ns/{NS}/sa/server"), "{xfcc}");
    let (hash, rest) = after.split_once(';').unwrap_or_else(|| panic!("{xfcc}"));
    assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "SHA-256 in hex: {xfcc}");
    assert_eq!(rest, format!("Subject=\"\";URI={client}"), "{xfcc}");

    // HTTP/2 (prior knowledge, as gRPC speaks it) inside the tunnel, on the same chain.
    let r = s.client().curl(Curl::new(&format!("http://{SERVER}/api/h2")).http2());
    assert_eq!((r.status, r.http_version.as_str()), (200, "2"), "{}\n{}", r.stderr, logs());
    let r = s.client().curl(Curl::new(&format!("http://{SERVER}/admin/h2")).http2());
    assert_eq!((r.status, r.http_version.as_str()), (403, "2"), "{}\n{}", r.stderr, logs());
    assert_eq!(s.server().requests_to("/api/h2").len(), 1);
    assert!(s.server().requests_to("/admin/h2").is_empty());

    // Plaintext from outside the mesh (node1's own namespace, never redirected), captured
    // by node2 onto its inbound plaintext listener: the same HTTP chain, with no
    // principal, so the ALLOW that admitted the tunnel's peer on /api does not admit it.
    let node1 = s.topo.nodes[0].ns.name().to_owned();
    let plain = |path: &str| in_netns(Some(&node1), || Curl::new(&format!("http://{SERVER}{path}")).timeout(Duration::from_secs(5)).run());
    for path in ["/api/plain", "/admin/plain"] {
        let r = plain(path);
        assert_eq!(r.status, 403, "{path} in plaintext: {}\n{}", r.stderr, logs());
        assert_eq!(r.body, b"RBAC: access denied", "{path}");
        assert!(s.server().requests_to(path).is_empty(), "{path} never reaches the pod");
    }
    assert_eventually("node2 reports the plaintext requests as a destination without mTLS", T, || {
        let labels = [("reporter", "destination"), ("destination_workload", "server"), ("connection_security_policy", "none"), ("response_code", "403")];
        let denied = s.proxy2.metric("istio_requests_total", &labels);
        if denied >= 2.0 {
            Ok(())
        } else {
            Err(format!("403 without mTLS: {denied}"))
        }
    });
    let line = assert_eventually("node2's access log line of the plaintext request", T, || {
        Scene::access_log(&s.proxy2).into_iter().find(|l| l["path"] == "/api/plain").ok_or_else(|| s.proxy2.access_log_lines().join("\n"))
    });
    assert_eq!(line["response_code_details"], "rbac_access_denied_matched_policy[none]", "{line}");
    assert!(line["downstream_peer_uri_san"].is_null(), "no peer identity: {line}");

    // Denied at the destination: its DENY, and what its ALLOW does not cover.
    for path in ["/admin/l4", "/other/l4"] {
        let d = s.client().dial(sa(SERVER), path);
        assert_eq!(d.status(), 403, "{path}: {}\n{}", d.response, logs());
        assert!(d.response.ends_with("RBAC: access denied"), "{path}: {}", d.response);
        assert!(s.server().requests_to(path).is_empty(), "{path} never reaches the pod");
    }

    // Reported by the destination, per request, with the verified source identity.
    assert_eventually("node2's request metrics", T, || {
        let labels = |code: &'static str| {
            [
                ("reporter", "destination"),
                ("source_principal", client.as_str()),
                ("source_workload", "client"),
                ("destination_workload", "server"),
                ("connection_security_policy", "mutual_tls"),
                ("response_code", code),
            ]
        };
        let ok = s.proxy2.metric("istio_requests_total", &labels("200"));
        let denied = s.proxy2.metric("istio_requests_total", &labels("403"));
        if ok >= 3.0 && denied >= 3.0 {
            Ok(())
        } else {
            Err(format!("200: {ok}, 403: {denied}"))
        }
    });
    let line = assert_eventually("node2's access log line of the denied request", T, || {
        Scene::access_log(&s.proxy2).into_iter().find(|l| l["path"] == "/admin/l4").ok_or_else(|| s.proxy2.access_log_lines().join("\n"))
    });
    assert_eq!(line["response_code"], 403, "{line}");
    assert_eq!(line["response_code_details"], "rbac_access_denied_matched_policy[ns[mesh]-policy[deny-admin]-rule[0]]", "{line}");
    assert_eq!(line["downstream_peer_uri_san"], client.as_str(), "{line}");
    let rbac_denied = s.proxy2.metric("envoy_rbac_denied_total", &[("stat_prefix", "inbound_0.0.0.0_8080")]);
    assert!(rbac_denied >= 2.0, "node2's RBAC counted its denials: {rbac_denied}");

    // The ALLOW names another identity: the client's requests are now refused, so the
    // decision is on the tunnel's verified peer.
    s.ads2.set(LISTENER, "virtualInbound", any_from_json::<Listener>(virtual_inbound(&format!("spiffe://{TD}/ns/{NS}/sa/nobody"), false)));
    assert_eventually("the pushed policy applies to the next request", T, || {
        let d = s.client().dial(sa(SERVER), "/api/after-push");
        if d.status() == 403 {
            Ok(())
        } else {
            Err(d.response)
        }
    });

    // STRICT: port 8080 has only Istio's mTLS chain, which the tunnel's mTLS stands for.
    s.ads2.set(LISTENER, "virtualInbound", any_from_json::<Listener>(virtual_inbound(&client, true)));
    assert_eventually("the STRICT-shaped listener serves the tunnel's requests", T, || {
        let d = s.client().dial(sa(SERVER), "/api/strict");
        if d.status() == 200 {
            Ok(())
        } else {
            Err(d.response)
        }
    });
    assert_eq!(s.server().requests_to("/api/strict")[0].header("x-inbound"), Some("node2"));
    let d = s.client().dial(sa(SERVER), "/admin/strict");
    assert_eq!(d.status(), 403, "{}", d.response);
}

#[test]
fn a_port_without_an_http_chain_is_relayed_as_bytes() {
    if !require_root("a_port_without_an_http_chain_is_relayed_as_bytes") {
        return;
    }
    let s = Scene::new("mesh-l7-tcp", "24h");
    s.ads2.set(CLUSTER, "inbound|8080||", any_from_json::<Cluster>(original_dst_cluster("inbound|8080||")));
    s.ads2.set(CLUSTER, "InboundPassthroughCluster", any_from_json::<Cluster>(original_dst_cluster("InboundPassthroughCluster")));
    // The HTTP chain is for port 8081: 8080's streams take the TCP catch-all.
    let mut inbound = virtual_inbound(&format!("spiffe://{TD}/ns/{NS}/sa/nobody"), false);
    inbound["filter_chains"][0]["filter_chain_match"]["destination_port"] = json!(8081);
    s.ads2.set(LISTENER, "virtualInbound", any_from_json::<Listener>(inbound));
    assert_eventually("node2 has the inbound listener", T, || {
        let dump = s.proxy2.admin_get("/config_dump").body;
        if dump.contains("virtualInbound") && dump.contains("8081") {
            Ok(())
        } else {
            Err(dump)
        }
    });
    let d = s.client().dial(sa(SERVER), "/admin/tcp");
    assert_eq!(d.status(), 200, "not parsed, so no HTTP policy applies: {}\nproxy2:\n{}", d.response, s.proxy2.stderr());
    let seen = s.server().requests_to("/admin/tcp");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-inbound"), None, "no inbound route touched the bytes");
    let client = format!("spiffe://{TD}/ns/{NS}/sa/client");
    assert_eventually("node2's TCP metrics for the relayed stream", T, || {
        let labels = [("reporter", "destination"), ("source_principal", client.as_str()), ("connection_security_policy", "mutual_tls")];
        let closed = s.proxy2.metric("istio_tcp_connections_closed_total", &labels);
        if closed >= 1.0 {
            Ok(())
        } else {
            Err(format!("closed {closed}"))
        }
    });
}

#[test]
fn an_uninspected_tcp_port_is_authorized_before_the_tunnel_is_answered() {
    if !require_root("an_uninspected_tcp_port_is_authorized_before_the_tunnel_is_answered") {
        return;
    }
    let s = Scene::new("mesh-l7-deny", "24h");
    let client = format!("spiffe://{TD}/ns/{NS}/sa/client");
    s.ads2.set(CLUSTER, "inbound|8080||", any_from_json::<Cluster>(original_dst_cluster("inbound|8080||")));
    s.ads2.set(CLUSTER, "InboundPassthroughCluster", any_from_json::<Cluster>(original_dst_cluster("InboundPassthroughCluster")));
    // Port 8080 declared TCP: the inspectors skip it (istiod's filter_disabled), the
    // catch-all TCP chain carries a network RBAC DENY of the client's identity.
    let mut inbound = virtual_inbound(&client, false);
    inbound["filter_chains"][0]["filter_chain_match"]["destination_port"] = json!(8081);
    let skip_8080 = json!({ "destination_port_range": { "start": 8080, "end": 8081 } });
    for f in inbound["listener_filters"].as_array_mut().expect("listener filters") {
        f["filter_disabled"] = skip_8080.clone();
    }
    inbound["filter_chains"][1]["filters"] = json!([
        { "name": "envoy.filters.network.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "stat_prefix": "tcp.",
            "rules": { "action": "DENY", "policies": { "ns[mesh]-policy[deny-client]-rule[0]": {
                "permissions": [{ "any": true }], "principals": principal_is(&client),
            } } },
        } },
        inbound["filter_chains"][1]["filters"][0].clone(),
    ]);
    s.ads2.set(LISTENER, "virtualInbound", any_from_json::<Listener>(inbound));
    assert_eventually("node2 has the inbound listener", T, || {
        let dump = s.proxy2.admin_get("/config_dump").body;
        if dump.contains("virtualInbound") && dump.contains("deny-client") {
            Ok(())
        } else {
            Err(dump)
        }
    });
    let r = s.client().curl(Curl::new(&format!("http://{SERVER}/denied/tcp")));
    assert_eq!(r.status, 0, "refused, no response: {}\nproxy2:\n{}", r.text(), s.proxy2.stderr());
    assert!(s.server().requests_to("/denied/tcp").is_empty(), "the pod never sees it");
    let line = assert_eventually("node2's access log line of the denied stream", T, || {
        Scene::access_log(&s.proxy2)
            .into_iter()
            .find(|l| l["response_code_details"].as_str().is_some_and(|d| d.contains("deny-client")))
            .ok_or_else(|| s.proxy2.access_log_lines().join("\n"))
    });
    assert_eq!(line["response_code_details"], "rbac_access_denied_matched_policy[ns[mesh]-policy[deny-client]-rule[0]]", "{line}");
    // The tunnel was refused with 401: node1's passthrough names the CONNECT's answer.
    let line = assert_eventually("node1's passthrough line", T, || {
        Scene::access_log(&s.proxy1)
            .into_iter()
            .find(|l| l["upstream_cluster"] == "PassthroughCluster" && l["upstream_host"] == SERVER)
            .ok_or_else(|| s.proxy1.access_log_lines().join("\n"))
    });
    assert!(line.to_string().contains("401"), "{line}");
}
