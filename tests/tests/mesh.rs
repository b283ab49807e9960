//! mTLS between nodes through HBONE, on the real kernel (root): two nodes joined by a
//! VXLAN overlay ([`tests::topology`]), a node proxy on each, both taking Istio's
//! workload API (and node1 its Envoy resources) from a test ADS server in their
//! namespace, with certificates from one mesh CA (`--ca-cert/--ca-key`, the local CA).
//!
//! node1 redirects its pods with eBPF: pod10 ("client") reaches pod20 ("server", on
//! node2) through an L7 VIP (HTTP route to the server's endpoint) and directly (the
//! workload is meshed: every port is redirected, a TCP passthrough). Either way the
//! leg leaves node1 as HBONE to 198.18.2.10:15008, which node2's capture hands to
//! node2's proxy, which presents the server's certificate and connects to the pod.
//!
//! Proves: the overlay carries only TLS (a capture on vx0 holds TLS records and none
//! of the request's bytes); node2 sees the *source pod's* identity (Istio's TCP metrics
//! with reporter=destination and source_principal, and the access log); policy by
//! identity (an ALLOW policy on pod21 that names another principal refuses the client;
//! one that names it lets it through); a wrong trust domain, an expired certificate
//! and an untrusted root are each rejected with a log saying which; and certificates
//! that rotate every 2 s under steady load fail no request.
//!
//! The scene (topology, ADS servers, proxies, workloads, policies, listeners) is
//! [`tests::mesh_scene`], shared with the HBONE benchmark (benches/benches/hbone.rs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use istio_compat::model::workload::Identity;
use node_proxy::tls::LocalCa;
use serde_json::{json, Value};
use tests::ads_server::any_from_json;
use tests::clients::Background;
use tests::mesh_scene::{allow_only, any, converted_strict, identity, sa, Scene, SceneOptions, GUARDED, NS, PLAIN_SERVER, PLAIN_VIP, SERVER, TD, VIP};
use tests::netns::{in_netns, require_root};
use tests::topology::Pod;
use tests::*;
use xds_client::pb::envoy::config::cluster::v3::Cluster;
use xds_client::type_url::{AUTHORIZATION, CLUSTER};

const T: Duration = Duration::from_secs(20);

fn root(test: &str) -> bool {
    require_root(test)
}

/// Cross-node traffic is HBONE: only TLS on the overlay, the destination sees the source pod's identity.
#[test]
fn cross_node_traffic_is_mtls_and_the_destination_sees_the_source_pod() {
    if !root("cross_node_traffic_is_mtls_and_the_destination_sees_the_source_pod") {
        return;
    }
    let s = Scene::new("mesh-mtls", "24h");
    let capture = Capture::start(&s.topo.nodes[0].ns, "vx0", &s.ca.dir.path().join("vx0.pcap"));
    let marker = format!("plaintext-marker-{}", std::process::id());

    // L7: through the VIP's route, then HBONE to node2.
    let d = s.client().dial(sa(VIP), &format!("/{marker}/l7"));
    assert_eq!(d.status(), 200, "{}\nproxy1:\n{}\nproxy2:\n{}", d.response, s.proxy1.stderr(), s.proxy2.stderr());
    let seen = s.server().requests_to(&format!("/{marker}/l7"));
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-node-proxy"), Some("node1"), "node1's route acted");
    assert_eq!(seen[0].peer.ip().to_string(), "198.18.2.1", "the server is reached from node2 (its proxy), not across the overlay");

    // L4: the pod dials the meshed workload directly; the passthrough goes through HBONE too.
    let d = s.client().dial(sa(SERVER), &format!("/{marker}/l4"));
    assert_eq!(d.status(), 200, "{}\nproxy1:\n{}", d.response, s.proxy1.stderr());
    assert_eq!(d.peer, sa(SERVER), "the app sees what it dialed");
    assert_eq!(s.server().requests_to(&format!("/{marker}/l4"))[0].peer.ip().to_string(), "198.18.2.1");

    let (packets, tcpdump) = capture.stop();
    assert!(!packets.is_empty(), "the capture saw the traffic; tcpdump said: {tcpdump}");
    let hbone: Vec<&Vec<u8>> = packets.iter().filter(|p| tcp_ports(p).is_some_and(|(src, dst)| src == 15008 || dst == 15008)).collect();
    assert!(!hbone.is_empty(), "node1 reached node2 on port 15008");
    let all: Vec<u8> = packets.iter().flatten().copied().collect();
    assert!(!contains(&all, marker.as_bytes()), "the request's bytes never cross the overlay in the clear");
    assert!(!contains(&all, b"x-node-proxy"), "nor its headers");
    let payloads: Vec<&[u8]> = hbone.iter().filter_map(|p| tcp_payload(p)).filter(|p| !p.is_empty()).collect();
    assert!(payloads.iter().any(|p| p.starts_with(&[0x16, 0x03])), "a TLS handshake record on 15008");
    assert!(payloads.iter().any(|p| p.starts_with(&[0x17, 0x03, 0x03])), "TLS application data records on 15008");
    let no_plain_to_server = packets.iter().filter(|p| tcp_ports(p).is_some_and(|(src, dst)| src == 8080 || dst == 8080)).count();
    assert_eq!(no_plain_to_server, 0, "nothing goes to the server's port across the overlay");

    // node2 reports the source pod's verified identity.
    let client = format!("spiffe://{TD}/ns/{NS}/sa/client");
    let server = format!("spiffe://{TD}/ns/{NS}/sa/server");
    assert_eventually("node2's TCP metrics for the client's streams", T, || {
        let labels = [
            ("reporter", "destination"),
            ("source_principal", client.as_str()),
            ("source_workload", "client"),
            ("destination_principal", server.as_str()),
            ("destination_workload", "server"),
            ("connection_security_policy", "mutual_tls"),
        ];
        // Two streams: the L7 leg's (pooled, still open) and the passthrough's (closed).
        let opened = s.proxy2.metric("istio_tcp_connections_opened_total", &labels);
        let closed = s.proxy2.metric("istio_tcp_connections_closed_total", &labels);
        let received = s.proxy2.metric("istio_tcp_received_bytes_total", &labels);
        if opened >= 2.0 && closed >= 1.0 && received > 0.0 {
            Ok(())
        } else {
            Err(format!("opened {opened}, closed {closed}, received {received}"))
        }
    });
    let line = assert_eventually("node2's access log line with the peer identity", T, || {
        Scene::access_log(&s.proxy2).into_iter().find(|l| l["authority"] == SERVER).ok_or_else(|| s.proxy2.access_log_lines().join("\n"))
    });
    assert_eq!(line["downstream_peer_uri_san"], client.as_str(), "{line}");
    assert_eq!(line["x_forwarded_for"], "198.18.1.10", "the source pod's address, forwarded in the CONNECT: {line}");
    assert!(line["bytes_received"].as_u64().unwrap_or(0) > 0, "{line}");
    let line = assert_eventually("node1's passthrough line with the upstream identity", T, || {
        Scene::access_log(&s.proxy1)
            .into_iter()
            .find(|l| l["upstream_cluster"] == "PassthroughCluster" && l["upstream_host"] == SERVER)
            .ok_or_else(|| s.proxy1.access_log_lines().join("\n"))
    });
    assert_eq!(line["upstream_peer_uri_san"], server.as_str(), "{line}");
}

/// Policy by identity, and the three ways a peer's certificate is refused.
#[test]
fn policy_by_identity_and_bad_certificates_are_refused() {
    if !root("policy_by_identity_and_bad_certificates_are_refused") {
        return;
    }
    let s = Scene::new("mesh-policy", "24h");

    // pod21 admits only `nobody`: the client's stream is refused (401 at node2), the
    // passthrough closes without a response.
    let r = request(s.client(), sa(GUARDED), "/guarded/1");
    assert!(r.starts_with("ERR") || r.is_empty(), "no response through a denied tunnel: {r}");
    assert!(s.guarded().requests_to("/guarded/").is_empty(), "the guarded pod saw nothing");
    assert_eventually("node2 logs the denial", T, || {
        let err = s.proxy2.stderr();
        if err.contains("denied by authorization policy") {
            Ok(())
        } else {
            Err(err)
        }
    });
    // A policy naming the client lets it through, on the next connection.
    for ads in [&s.ads1, &s.ads2] {
        ads.set(AUTHORIZATION, &format!("{NS}/guard"), any(AUTHORIZATION, &allow_only("guard", &format!("{TD}/ns/{NS}/sa/client"))));
    }
    assert_eventually("the client is admitted once the policy names it", T, || {
        let r = request(s.client(), sa(GUARDED), "/guarded/2");
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("{r}\n{}", s.proxy2.stderr()))
        }
    });
    assert!(!s.guarded().requests_to("/guarded/2").is_empty());

    // Bad client certificates, presented straight to node2's listener (as a peer on the overlay would).
    let ca = &s.ca.ca;
    let client = identity("client");
    let now = SystemTime::now();
    let other_td = LocalCa::load("other.example", &s.ca.cert(), &s.ca.key()).expect("the CA under another trust domain");
    let cases = [
        ("wrong trust domain", other_td.issue(&Identity::new("other.example", NS, "client"), Duration::from_secs(3600)).expect("issue"), "trust domain"),
        ("expired", ca.issue_with(&client, now - Duration::from_secs(7200), now - Duration::from_secs(3600)).expect("issue"), "expired"),
        ("untrusted root", ca.untrusted_twin().expect("twin").issue(&client, Duration::from_secs(3600)).expect("issue"), "trusted mesh root"),
    ];
    let roots = [ca.root_der()];
    for (what, cert, logged) in cases {
        let config = node_proxy::tls::client_config(&cert, &roots, &node_proxy::tls::TrustDomains::new(TD, ["other.example"]), vec![identity("server")])
            .expect("client config");
        let result = in_netns(Some(s.topo.nodes[0].ns.name()), || handshake(config, sa("198.18.2.10:15008")));
        assert!(result.is_err(), "{what}: the handshake must fail");
        assert_eventually(&format!("node2 says why ({what})"), T, || {
            let err = s.proxy2.stderr();
            let hit = err.lines().any(|l| l.contains("rejected the peer") && l.to_ascii_lowercase().contains(logged));
            if hit {
                Ok(())
            } else {
                Err(err)
            }
        });
    }
    // And a good one is accepted, so the refusals above were about the certificates.
    let good = ca.issue(&client, Duration::from_secs(3600)).expect("issue");
    let config = node_proxy::tls::client_config(&good, &roots, &node_proxy::tls::TrustDomains::local(TD), vec![identity("server")]).expect("client config");
    let peer = in_netns(Some(s.topo.nodes[0].ns.name()), || handshake(config, sa("198.18.2.10:15008")));
    assert_eq!(peer.as_deref(), Ok("spiffe://cluster.local/ns/mesh/sa/server"), "node2 presents pod20's identity");
}

/// STRICT PeerAuthentication: plaintext to a STRICT pod is refused (node1 captures it
/// onto its inbound plaintext listener, where the converted policy denies it; the
/// kernel's drop stands behind that for what is not captured); mesh traffic goes on.
#[test]
fn strict_peer_authentication_refuses_plaintext_to_the_pod() {
    if !root("strict_peer_authentication_refuses_plaintext_to_the_pod") {
        return;
    }
    let s = Scene::new("mesh-strict", "24h");
    // A server in pod10's cgroup (the guard acts on the pods' sockets).
    let mut server = s.client().command("python3");
    server.args(["-m", "http.server", "7070", "--bind", "198.18.1.10"]);
    let _app = Background::spawn(server, "python3 http.server");
    let node2 = s.topo.nodes[1].ns.name().to_owned();
    let plaintext = || in_netns(Some(&node2), || plain_get(sa("198.18.1.10:7070")));
    assert_eventually("PERMISSIVE (no policy): plaintext from node2 reaches pod10", T, || {
        let r = plaintext();
        if r.starts_with("HTTP/1.0 200") {
            Ok(())
        } else {
            Err(r)
        }
    });

    for ads in [&s.ads1, &s.ads2] {
        ads.set(AUTHORIZATION, &format!("{NS}/converted_peer_authentication_strict"), any(AUTHORIZATION, &converted_strict("strict")));
    }
    assert_eventually("node1 writes pod10's STRICT entry", T, || {
        let err = s.proxy1.stderr();
        if err.lines().any(|l| l.contains("STRICT mTLS entries updated") && l.contains("198.18.1.10:*=STRICT")) {
            Ok(())
        } else {
            Err(err)
        }
    });
    let r = plaintext();
    assert!(r.starts_with("ERR"), "STRICT: plaintext from node2 to pod10 is refused: {r}");
    assert_eventually("node1's proxy refused it by the converted policy", T, || {
        let err = s.proxy1.stderr();
        if err.lines().any(|l| l.contains("inbound plaintext connection refused") && l.contains("converted_peer_authentication_strict")) {
            Ok(())
        } else {
            Err(err)
        }
    });
    // The mesh path still works both ways for pod10 (its replies come from node1's proxy).
    let d = s.client().dial(sa(VIP), "/strict/l7");
    assert_eq!(d.status(), 200, "{}", d.response);
    let counters = s.proxy1.admin_get("/redirect");
    assert_eq!(counters.status, 200);

    // Back to PERMISSIVE: the entry goes, plaintext passes again.
    for ads in [&s.ads1, &s.ads2] {
        ads.remove(AUTHORIZATION, &format!("{NS}/converted_peer_authentication_strict"));
    }
    assert_eventually("plaintext passes once the policy is gone", T, || {
        let r = plaintext();
        if r.starts_with("HTTP/1.0 200") {
            Ok(())
        } else {
            Err(r)
        }
    });
}

/// Plaintext that reaches a meshed pod without HBONE (here from node1's own namespace,
/// outside the pods' cgroup, so never redirected) is captured by the destination's
/// node onto its inbound plaintext listener, where the pod's policies decide with no
/// peer identity: before, it reached the pod around them.
#[test]
fn plaintext_to_meshed_pods_meets_their_policies() {
    if !root("plaintext_to_meshed_pods_meets_their_policies") {
        return;
    }
    let s = Scene::new("mesh-plain", "24h");
    let node1 = s.topo.nodes[0].ns.name().to_owned();
    let from_node1 = |addr: &str, path: &str| in_netns(Some(&node1), || plain_get_path(sa(addr), path));
    let logs = || format!("proxy2:\n{}", s.proxy2.stderr());

    // pod20 has no policy: node2's proxy relays the plaintext to it, reported as a
    // destination without mTLS.
    let r = from_node1(SERVER, "/plain/open");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}\n{}", logs());
    assert_eq!(s.server().requests_to("/plain/open").len(), 1);
    assert_eventually("node2 reports the plaintext connection", T, || {
        let labels =
            [("reporter", "destination"), ("destination_workload", "server"), ("connection_security_policy", "unknown"), ("source_principal", "unknown")];
        let opened = s.proxy2.metric("istio_tcp_connections_opened_total", &labels);
        let closed = s.proxy2.metric("istio_tcp_connections_closed_total", &labels);
        if opened >= 1.0 && closed >= 1.0 {
            Ok(())
        } else {
            Err(format!("opened {opened}, closed {closed}"))
        }
    });

    // pod21 admits only `nobody`: a plaintext peer has no identity, so it is reset and
    // the pod sees nothing.
    let r = from_node1(GUARDED, "/plain/guarded");
    assert!(r.starts_with("ERR"), "plaintext to the guarded pod is refused: {r}\n{}", logs());
    assert!(s.guarded().requests_to("/plain/guarded").is_empty(), "the guarded pod saw nothing");
    assert_eventually("node2 logs the denial", T, || {
        let err = s.proxy2.stderr();
        if err.lines().any(|l| l.contains("inbound plaintext connection refused") && l.contains("denied by authorization policy")) {
            Ok(())
        } else {
            Err(err)
        }
    });
    // Naming the client's principal admits the client over HBONE, never plaintext:
    // nothing proved who sent it.
    for ads in [&s.ads1, &s.ads2] {
        ads.set(AUTHORIZATION, &format!("{NS}/guard"), any(AUTHORIZATION, &allow_only("guard", &format!("{TD}/ns/{NS}/sa/client"))));
    }
    assert_eventually("the client is admitted over HBONE", T, || {
        let r = request(s.client(), sa(GUARDED), "/guarded/mtls");
        if r.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("{r}\n{}", logs()))
        }
    });
    let r = from_node1(GUARDED, "/plain/guarded-2");
    assert!(r.starts_with("ERR"), "plaintext is still refused: {r}");
    assert!(s.guarded().requests_to("/plain/guarded-2").is_empty());
}

/// istiod's Istio-mTLS transport socket for an outbound cluster (ISTIO_MUTUAL: the
/// `tlsMode-istio` entry of its auto-mTLS `transport_socket_matches`, an
/// UpstreamTlsContext with the SDS `default` certificate and `ROOTCA` validation), read
/// from the corpus's config dump. `None` (skipped) without the corpus outside CI.
fn istio_mutual_transport_socket() -> Option<Value> {
    let path = tests::corpus::dir()?.join("istio-envoy-configdump/describe_http_config.json");
    let dump: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))).expect("the dump is JSON");
    fn find(v: &Value) -> Option<Value> {
        match v {
            Value::Object(o) => o
                .get("transport_socket_matches")
                .and_then(|m| m.as_array())
                .and_then(|m| m.iter().find(|e| e["name"] == "tlsMode-istio"))
                .map(|e| e["transport_socket"].clone())
                .or_else(|| o.values().find_map(find)),
            Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    let socket = find(&dump).unwrap_or_else(|| panic!("no tlsMode-istio transport socket in {}", path.display()));
    assert!(socket.to_string().contains("UpstreamTlsContext"), "{socket}");
    Some(socket)
}

/// `tests::config::cluster` with `extra` merged in, and `tlsMode: istio` endpoint metadata on
/// the endpoints marked `true` (as EDS carries it for meshed pods).
fn cluster_with(name: &str, endpoints: &[(SocketAddr, bool)], extra: Value) -> Value {
    let addrs: Vec<SocketAddr> = endpoints.iter().map(|(a, _)| *a).collect();
    let mut c = merge(cluster(name, &addrs), extra);
    for (i, (_, meshed)) in endpoints.iter().enumerate() {
        if *meshed {
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][i]["metadata"] =
                json!({ "filter_metadata": { "envoy.transport_socket_match": { "tlsMode": "istio" } } });
        }
    }
    c
}

/// An outbound cluster that requires Istio's mTLS, as istiod emits it (a DestinationRule's
/// ISTIO_MUTUAL: the cluster's `transport_socket`; auto-mTLS: `transport_socket_matches`
/// on the endpoints' `tlsMode: istio`), reaches a meshed (HBONE) endpoint over HBONE: the
/// request succeeds and node2 reports the client's identity. To a workload outside the
/// mesh the ISTIO_MUTUAL cluster cannot do mTLS: the request is refused with Envoy's 503
/// for an upstream connection failure (`UF`) and nothing reaches the app in the clear;
/// auto-mTLS leaves that endpoint (no `tlsMode`) plaintext, as Envoy does.
#[test]
fn clusters_requiring_istio_mtls_reach_meshed_endpoints_over_hbone() {
    if !root("clusters_requiring_istio_mtls_reach_meshed_endpoints_over_hbone") {
        return;
    }
    let Some(socket) = istio_mutual_transport_socket() else { return };
    let s = Scene::start(SceneOptions { plaintext_pod21: true, ..SceneOptions::test("mesh-automtls") });
    let plain = s.topo.nodes[1].pods[1].origin("plain", sa(PLAIN_SERVER));
    let set_clusters = |svc: Value, plain: Value| {
        for ads in [&s.ads1, &s.ads2] {
            ads.set(CLUSTER, "svc", any_from_json::<Cluster>(svc.clone()));
            ads.set(CLUSTER, "plain", any_from_json::<Cluster>(plain.clone()));
        }
    };
    let wait_tls = |what: &str, want: Value| {
        assert_eventually(what, T, || {
            let model: Value = serde_json::from_str(&s.proxy1.admin_get("/config_dump?format=model").body).unwrap_or(Value::Null);
            let tls = [&model["clusters"]["svc"]["tls"], &model["clusters"]["plain"]["tls"]];
            if tls.iter().all(|t| **t == want) {
                Ok(())
            } else {
                Err(format!("svc {}, plain {}", tls[0], tls[1]))
            }
        })
    };
    let client = format!("spiffe://{TD}/ns/{NS}/sa/client");
    let destination_streams = || {
        let labels = [
            ("reporter", "destination"),
            ("source_principal", client.as_str()),
            ("destination_workload", "server"),
            ("connection_security_policy", "mutual_tls"),
        ];
        s.proxy2.metric("istio_tcp_connections_opened_total", &labels)
    };

    // A DestinationRule's ISTIO_MUTUAL: every endpoint of the cluster requires Istio's mTLS.
    let mutual = json!({ "transport_socket": socket.clone() });
    set_clusters(cluster_with("svc", &[(sa(SERVER), true)], mutual.clone()), cluster_with("plain", &[(sa(PLAIN_SERVER), false)], mutual));
    wait_tls("node1 holds the ISTIO_MUTUAL clusters", json!("always"));
    let streams_before = destination_streams();
    let d = s.client().dial(sa(VIP), "/istio-mutual/meshed");
    assert_eq!(d.status(), 200, "{}\nproxy1:\n{}\nproxy2:\n{}", d.response, s.proxy1.stderr(), s.proxy2.stderr());
    let seen = s.server().requests_to("/istio-mutual/meshed");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-node-proxy"), Some("node1"), "node1's route acted");
    assert_eq!(seen[0].peer.ip().to_string(), "198.18.2.1", "served by node2's proxy: the leg was HBONE");
    assert_eventually("node2 reports a new mTLS stream from the client", T, || {
        let now = destination_streams();
        if now > streams_before {
            Ok(())
        } else {
            Err(format!("istio_tcp_connections_opened_total {now} (before {streams_before})"))
        }
    });
    // The same cluster to a workload outside the mesh (tunnel NONE): no mTLS is possible.
    // Envoy would fail the TLS handshake with the plaintext server and answer 503 UF
    // (router: upstream connection failure); node-proxy refuses before connecting.
    let d = s.client().dial(sa(PLAIN_VIP), "/istio-mutual/plain");
    assert_eq!(d.status(), 503, "{}", d.response);
    assert!(
        d.response.contains("upstream connect error or disconnect/reset before headers. reset reason: connection failure"),
        "Envoy's body for a connection failure: {}",
        d.response
    );
    assert!(plain.requests().is_empty(), "nothing reached the plaintext app");
    let line = assert_eventually("node1's access log line for the refusal", T, || {
        Scene::access_log(&s.proxy1).into_iter().find(|l| l["path"] == "/istio-mutual/plain").ok_or_else(|| s.proxy1.access_log_lines().join("\n"))
    });
    assert_eq!((line["response_code"].as_u64(), line["response_flags"].as_str()), (Some(503), Some("UF")), "{line}");
    assert_eq!(line["upstream_cluster"], "plain", "{line}");

    // Auto-mTLS (no DestinationRule): Istio TLS only for endpoints labelled tlsMode istio.
    let auto = json!({ "transport_socket_matches": [
        { "name": "tlsMode-istio", "match": { "tlsMode": "istio" }, "transport_socket": socket.clone() },
        { "name": "tlsMode-disabled", "match": {}, "transport_socket": { "name": "envoy.transport_sockets.raw_buffer",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer" } } },
    ] });
    set_clusters(cluster_with("svc", &[(sa(SERVER), true)], auto.clone()), cluster_with("plain", &[(sa(PLAIN_SERVER), false)], auto));
    wait_tls("node1 holds the auto-mTLS clusters", json!({ "when_tls_mode": ["istio"] }));
    let d = s.client().dial(sa(VIP), "/auto-mtls/meshed");
    assert_eq!(d.status(), 200, "{}\nproxy1:\n{}", d.response, s.proxy1.stderr());
    assert_eq!(s.server().requests_to("/auto-mtls/meshed")[0].peer.ip().to_string(), "198.18.2.1", "served by node2's proxy: over HBONE");
    let d = s.client().dial(sa(PLAIN_VIP), "/auto-mtls/plain");
    assert_eq!(d.status(), 200, "an endpoint without tlsMode stays plaintext: {}", d.response);
    let seen = plain.requests_to("/auto-mtls/plain");
    assert_eq!(seen.len(), 1);
    assert_ne!(seen[0].peer.ip().to_string(), "198.18.2.1", "straight from node1's proxy, not through node2's");
}

/// A plaintext `GET /` from the calling thread's namespace, 2 s to connect: the status line or `ERR <why>`.
fn plain_get(addr: SocketAddr) -> String {
    plain_get_path(addr, "/")
}

/// `GET path` over plain TCP: the response's first line, or `ERR ...` (no connection,
/// a reset, or nothing at all).
fn plain_get_path(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return format!("ERR {e}"),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if let Err(e) = s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()) {
        return format!("ERR {e}");
    }
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => String::from_utf8_lossy(&out).lines().next().unwrap_or("ERR empty").to_owned(),
        Err(e) => format!("ERR {e}"),
    }
}

/// Certificates valid for 4 s rotate every 2 s on both nodes while requests flow: none fails.
#[test]
fn certificate_rotation_under_load_fails_no_request() {
    if !root("certificate_rotation_under_load_fails_no_request") {
        return;
    }
    let s = Scene::new("mesh-rotate", "4s");
    let client = s.client();
    // One python process, keep-alive off: every request is a new connection, so new
    // HBONE streams (and, as pooled tunnels age, new tunnels) keep being opened.
    let script = r#"
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ok = failed = 0
end = time.time() + seconds
while time.time() < end:
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(f"GET /rotate/{ok+failed} HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        if data.startswith(b"HTTP/1.1 200"):
            ok += 1
        else:
            failed += 1
            print("bad:", data[:200], file=sys.stderr)
    except Exception as e:
        failed += 1
        print("error:", e, file=sys.stderr)
    time.sleep(0.02)
print(ok, failed)
"#;
    let mut cmd = client.command("python3");
    cmd.args(["-c", script, "198.18.100.1", "80", "10"]);
    let started = Instant::now();
    let (code, out, err) = Background::spawn(cmd, "python3 load").wait(Duration::from_secs(60));
    assert_eq!(code, 0, "{out}{err}");
    let (ok, failed): (u64, u64) = {
        let mut it = out.split_whitespace().map(|n| n.parse().unwrap_or(u64::MAX));
        (it.next().unwrap_or(0), it.next().unwrap_or(u64::MAX))
    };
    assert!(ok > 50, "the load ran: {ok} ok in {:?}", started.elapsed());
    assert_eq!(failed, 0, "no request failed while certificates rotated:\n{err}\nproxy1:\n{}\nproxy2:\n{}", s.proxy1.stderr(), s.proxy2.stderr());
    // Both proxies renewed during the run.
    for (name, p) in [("proxy1", &s.proxy1), ("proxy2", &s.proxy2)] {
        let issued = p.stderr().matches("workload certificate issued").count();
        assert!(issued >= 4, "{name} renewed its certificates several times ({issued} issued):\n{}", p.stderr());
    }
}

/// One HTTP/1.1 request from `pod` to `dst`: the response's status line, or `ERR <why>`.
fn request(pod: &Pod, dst: SocketAddr, path: &str) -> String {
    const SCRIPT: &str = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(f"GET {sys.argv[3]} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    print(data.split(b"\r\n")[0].decode() if data else "ERR closed without a response")
except Exception as e:
    print("ERR", e)
"#;
    let mut cmd = pod.command("python3");
    cmd.args(["-c", SCRIPT, &dst.ip().to_string(), &dst.port().to_string(), path]);
    let (_, out, err) = Background::spawn(cmd, "python3 request").wait(Duration::from_secs(20));
    format!("{}{err}", out.trim())
}

/// A TLS 1.3 handshake (ALPN h2) with `config`: the server's identity, or why not.
fn handshake(config: Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timeout".to_owned())?
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("hbone").map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
        // TLS 1.3: the server verifies the client's certificate after the client's
        // handshake completes; a refusal arrives as an alert on the first read.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await.map_err(|_| "no SETTINGS".to_owned())?.map_err(|e| e.to_string())?;
        let peer = node_proxy::tls::peer_identity(tls.get_ref().1).ok_or("no peer identity")?;
        Ok(peer.to_string())
    })
}

/// tcpdump on one device of a namespace, writing a pcap file.
struct Capture {
    child: std::process::Child,
    path: PathBuf,
    stderr: Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    fn start(ns: &tests::netns::Netns, device: &str, path: &Path) -> Capture {
        require_tool("tcpdump");
        let mut child = std::process::Command::new("nsenter")
            .args([&format!("--net=/run/netns/{}", ns.name()), "--", "tcpdump", "-i", device, "-U", "-s", "0", "-w", &path.display().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tcpdump: {e} (apt-get install tcpdump)"));
        // tcpdump says "listening on" once it captures; under load that can take seconds.
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let lines = child.stderr.take().expect("tcpdump's stderr");
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(lines).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let started = Instant::now();
        while !stderr.lock().unwrap_or_else(|p| p.into_inner()).contains("listening on") {
            assert!(started.elapsed() < Duration::from_secs(30), "tcpdump did not start capturing: {}", stderr.lock().unwrap_or_else(|p| p.into_inner()));
            std::thread::sleep(Duration::from_millis(50));
        }
        Capture { child, path: path.to_owned(), stderr, reader: Some(reader) }
    }

    /// Stops the capture; the captured frames (Ethernet) and what tcpdump said.
    fn stop(mut self) -> (Vec<Vec<u8>>, String) {
        // Let tcpdump drain what the kernel has queued for it.
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let data = std::fs::read(&self.path).unwrap_or_else(|e| panic!("reading {}: {e}", self.path.display()));
        let said = self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (pcap_frames(&data), said)
    }
}

fn require_tool(tool: &str) {
    let found = std::process::Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "{tool} not found: apt-get install {tool} (scripts/install-deps.sh --test)");
}

/// The frames of a classic pcap file (microsecond or nanosecond, either byte order).
fn pcap_frames(data: &[u8]) -> Vec<Vec<u8>> {
    assert!(data.len() >= 24, "a pcap file has a 24-byte header");
    let magic = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let le = matches!(magic, 0xa1b2c3d4 | 0xa1b23c4d);
    assert!(le || matches!(magic, 0xd4c3b2a1 | 0x4d3cb2a1), "not a pcap file (magic {magic:#x})");
    let u32_at = |i: usize| {
        let b = [data[i], data[i + 1], data[i + 2], data[i + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut frames = Vec::new();
    let mut i = 24;
    while i + 16 <= data.len() {
        let len = u32_at(i + 8) as usize;
        let start = i + 16;
        if start + len > data.len() {
            break;
        }
        frames.push(data[start..start + len].to_vec());
        i = start + len;
    }
    frames
}

/// The IP packet inside an Ethernet frame: (protocol, header length, packet).
fn ip_packet(frame: &[u8]) -> Option<(u8, usize, &[u8])> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    match ethertype {
        0x0800 => Some((ip[9], usize::from(ip[0] & 0x0f) * 4, ip)),
        0x86dd => Some((ip[6], 40, ip)),
        _ => None,
    }
}

fn tcp_ports(frame: &[u8]) -> Option<(u16, u16)> {
    let (proto, hlen, ip) = ip_packet(frame)?;
    let tcp = ip.get(hlen..)?;
    (proto == 6).then(|| (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]])))
}

fn tcp_payload(frame: &[u8]) -> Option<&[u8]> {
    let (proto, hlen, ip) = ip_packet(frame)?;
    if proto != 6 {
        return None;
    }
    let tcp = ip.get(hlen..)?;
    let off = usize::from(tcp.get(12)? >> 4) * 4;
    tcp.get(off..)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
