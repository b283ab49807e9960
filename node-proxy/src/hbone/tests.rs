//! HBONE over plain loopback TCP (TLS is the caller's; its tests are in `tls`): real
//! h2 on both ends, real sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use istio_compat::model::workload::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::client::{connect_request, ConnectHeaders, Pool, PoolKey};
use super::server::{serve, Accepted, ConnectRequest};
use super::HboneError;
use crate::drain::Drain;

/// An echo server on 127.0.0.1.
async fn echo() -> SocketAddr {
    echo_at("127.0.0.1:0").await
}

/// An echo server on `addr`: writes back what it reads, then closes its side after the client's EOF.
async fn echo_at(addr: &str) -> SocketAddr {
    let l = TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An HBONE server whose handler dials the target, except for port 1 (401: denied)
/// and port 2 (503: unreachable). Returns its address and the headers it saw.
async fn hbone_server() -> (SocketAddr, Arc<std::sync::Mutex<Vec<http::HeaderMap>>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    // The server's streams are tasks of a LocalSet, as on the proxy's workers.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async move {
            let l = TcpListener::from_std(l).unwrap();
            let drain = Arc::new(Drain::default());
            while let Ok((s, peer)) = l.accept().await {
                let (seen, drain) = (seen2.clone(), drain.clone());
                tokio::task::spawn_local(async move {
                    let handler = move |req: ConnectRequest| {
                        let seen = seen.clone();
                        async move {
                            seen.lock().unwrap().push(req.headers);
                            match req.target.port() {
                                1 => Err(StatusCode::UNAUTHORIZED),
                                2 => Err(StatusCode::SERVICE_UNAVAILABLE),
                                _ => TcpStream::connect(req.target).await.map(Accepted::Relay).map_err(|_| StatusCode::SERVICE_UNAVAILABLE),
                            }
                        }
                    };
                    let _ = serve(s, &peer.to_string(), &drain, handler).await;
                });
            }
        });
    });
    (addr, seen)
}

fn key(sa: &str, address: SocketAddr) -> PoolKey {
    PoolKey { source: Identity::new("cluster.local", "ns1", sa), destination: vec![Identity::new("cluster.local", "ns2", "server")], address }
}

fn dial(addr: SocketAddr) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>> {
    move || Box::pin(TcpStream::connect(addr))
}

#[tokio::test]
async fn a_stream_carries_bytes_both_ways_and_half_closes() {
    let (target, (server, seen)) = (echo().await, hbone_server().await);
    let pool = Pool::default();
    let headers = ConnectHeaders {
        baggage: Some("k8s.namespace.name=ns1,k8s.deployment.name=client".into()),
        forwarded_for: Some("198.18.1.10".parse().unwrap()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    };
    let mut s = pool.connect(&key("a", server), target, &headers, dial(server)).await.unwrap();
    s.write_all(b"hello over hbone").await.unwrap();
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello over hbone");
    let h = seen.lock().unwrap()[0].clone();
    assert_eq!(h["baggage"], "k8s.namespace.name=ns1,k8s.deployment.name=client");
    assert_eq!(h["forwarded"], "for=198.18.1.10");
    assert_eq!(h["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
}

#[tokio::test]
async fn megabytes_pass_flow_control_in_both_directions() {
    let (target, (server, _)) = (echo().await, hbone_server().await);
    let pool = Pool::default();
    let s = pool.connect(&key("a", server), target, &ConnectHeaders::default(), dial(server)).await.unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    // More than the 16 MiB connection window, written while the echo is read back.
    let data: Vec<u8> = (0..24 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(expected.len());
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the echoed bytes differ");
}

#[tokio::test]
async fn streams_of_one_key_share_a_connection_and_keys_do_not() {
    let (target, (server, _)) = (echo().await, hbone_server().await);
    let pool = Pool::default();
    let mut streams = Vec::new();
    let (k, h) = (key("a", server), ConnectHeaders::default());
    let opens = (0..20).map(|_| pool.connect(&k, target, &h, dial(server)));
    for s in futures_util::future::join_all(opens).await {
        streams.push(s.unwrap());
    }
    assert_eq!(pool.connections(), 1, "20 concurrent streams of one key share one connection");
    streams.push(pool.connect(&key("b", server), target, &ConnectHeaders::default(), dial(server)).await.unwrap());
    assert_eq!(pool.connections(), 2, "another source identity gets its own connection");
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("stream {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0; msg.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
}

#[tokio::test]
async fn more_streams_than_the_limit_open_a_second_connection() {
    let (target, (server, _)) = (echo().await, hbone_server().await);
    let pool = Pool::default();
    let mut streams = Vec::new();
    for _ in 0..super::MAX_STREAMS_PER_CONNECTION + 1 {
        streams.push(pool.connect(&key("a", server), target, &ConnectHeaders::default(), dial(server)).await.unwrap());
    }
    assert_eq!(pool.connections(), 2);
}

#[tokio::test]
async fn refusals_come_back_as_their_status() {
    let (server, _) = hbone_server().await;
    let pool = Pool::default();
    for (port, status) in [(1, 401), (2, 503)] {
        let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        match pool.connect(&key("a", server), target, &ConnectHeaders::default(), dial(server)).await {
            Err(e @ HboneError::Status { .. }) => {
                let HboneError::Status { status: got, .. } = &e else { unreachable!() };
                assert_eq!(got.as_u16(), status);
                let text = e.to_string();
                assert!(text.contains(if status == 401 { "authorization policy denied" } else { "could not reach the workload" }), "{text}");
            }
            other => panic!("port {port}: expected status {status}, got {:?}", other.map(|_| ())),
        }
    }
    // The connection stays usable after refused streams.
    let target = echo().await;
    let mut s = pool.connect(&key("a", server), target, &ConnectHeaders::default(), dial(server)).await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(pool.connections(), 1);
}

#[tokio::test]
async fn malformed_requests_get_405_or_400_and_the_connection_goes_on() {
    let (server, _) = hbone_server().await;
    let io = TcpStream::connect(server).await.unwrap();
    let (mut sender, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let status = |req: Request<()>| {
        let mut sender = sender.clone();
        async move {
            std::future::poll_fn(|cx| sender.poll_ready(cx)).await.unwrap();
            let (resp, _) = sender.send_request(req, true).unwrap();
            resp.await.unwrap().status().as_u16()
        }
    };
    let get = Request::builder().method(Method::GET).uri("http://127.0.0.1:80/").body(()).unwrap();
    assert_eq!(status(get).await, 405);
    let not_ip = Request::builder().method(Method::CONNECT).uri("example.com:80").body(()).unwrap();
    assert_eq!(status(not_ip).await, 400);
    let target = echo().await;
    let ok = connect_request(target, &ConnectHeaders::default()).unwrap();
    assert_eq!(status(ok).await, 200);
    std::future::poll_fn(|cx| sender.poll_ready(cx)).await.unwrap();
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped_from_the_pool() {
    // A raw h2 server that answers one CONNECT, then never polls its connection again
    // (a node that vanished without a FIN): PINGs go unanswered.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut conn = h2::server::handshake(s).await.unwrap();
        let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
        let _send = respond.send_response(http::Response::new(()), false).unwrap();
        // Flush the response, then freeze.
        let _ = tokio::time::timeout(Duration::from_millis(100), conn.accept()).await;
        std::future::pending::<()>().await;
        drop(conn);
    });
    let pool = Pool::default().with_keepalive(Duration::from_millis(100), Duration::from_millis(200));
    let _stream = pool.connect(&key("client", addr), "127.0.0.1:9".parse().unwrap(), &ConnectHeaders::default(), dial(addr)).await.unwrap();
    assert_eq!(pool.connections(), 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    pool.release_idle();
    assert_eq!(pool.connections(), 0, "the unanswered PING dropped the connection");
}

#[tokio::test]
async fn an_idle_connection_is_released() {
    let (target, (server, _)) = (echo().await, hbone_server().await);
    let pool = Pool::new(Duration::from_millis(100));
    let s = pool.connect(&key("a", server), target, &ConnectHeaders::default(), dial(server)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.connections(), 1, "a connection with an open stream is kept");
    drop(s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while pool.connections() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the idle connection was not released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn the_connect_request_is_authority_form() {
    let r = connect_request(
        "[fd00:18:2::10]:8080".parse().unwrap(),
        &ConnectHeaders { forwarded_for: Some("fd00:18:1::10".parse().unwrap()), ..Default::default() },
    )
    .unwrap();
    assert_eq!(r.method(), Method::CONNECT);
    assert_eq!(r.uri().authority().unwrap().as_str(), "[fd00:18:2::10]:8080");
    assert!(r.uri().scheme().is_none() && r.uri().path_and_query().is_none());
    assert_eq!(r.headers()["forwarded"], "for=\"[fd00:18:1::10]\"");
    let _ = Bytes::new();
}

/// The HBONE listener with real mTLS on loopback: a workload at 127.0.0.1 with the
/// local CA's certificates, and a client acting for another workload.
mod mtls {
    use super::*;
    use crate::hbone::inbound::Inbound;
    use crate::identity::{CertStore, LocalIssuer};
    use crate::tls::{self, LocalCa, TrustDomains};
    use crate::xds::workload::{LiveWorkloads, WorkloadView};
    use istio_compat::model::workload::{AddressIndex, AddressResource, WorkloadModel};
    use rustls_pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    fn id(sa: &str) -> Identity {
        Identity::new("cluster.local", "ns2", sa)
    }

    struct Setup {
        ca: Arc<LocalCa>,
        listener: SocketAddr,
        echo: SocketAddr,
    }

    async fn setup() -> Setup {
        setup_with(vec![]).await
    }

    /// [`setup`] with workload-API policies (namespace ns2).
    async fn setup_with(policies: Vec<serde_json::Value>) -> Setup {
        let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
        let w: istio_compat::model::workload::Workload = serde_json::from_value(serde_json::json!({
            "uid": "Kubernetes//Pod/ns2/server", "namespace": "ns2", "addresses": ["127.0.0.1"], "tunnel": "HBONE",
            "identity": "spiffe://cluster.local/ns/ns2/sa/server", "node": "node2" }))
        .unwrap();
        let mut model = WorkloadModel::default();
        for p in policies {
            model.insert_policy(serde_json::from_value(p).unwrap());
        }
        model.insert_address(AddressResource::Workload(Arc::new(w)));
        let live = Arc::new(LiveWorkloads::default());
        let index = AddressIndex::new(&model);
        live.publish(WorkloadView { model, index, version: 1 });
        let certs = Arc::new(CertStore::new(Arc::new(LocalIssuer { ca: ca.clone(), validity: Duration::from_secs(3600) })));
        certs.set_identities([id("server")]);
        let inbound = Arc::new(Inbound::new(live, certs, TrustDomains::local("cluster.local"), String::new(), None));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = l.local_addr().unwrap();
        inbound.run_on_thread(l, Arc::new(Drain::default())).expect("start the HBONE listener");
        Setup { ca, listener, echo: echo().await }
    }

    /// Dials the listener with mTLS as `client` (issued by `ca`), accepting `expected`.
    fn tls_dial(
        ca: &LocalCa,
        roots: Vec<rustls_pki_types::CertificateDer<'static>>,
        client: &Identity,
        expected: Vec<Identity>,
        addr: SocketAddr,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<tokio_rustls::client::TlsStream<TcpStream>>> + Send>> {
        let cert = ca.issue(client, Duration::from_secs(3600)).unwrap();
        let config = tls::client_config(&cert, &roots, &TrustDomains::local("cluster.local"), expected).unwrap();
        move || {
            Box::pin(async move {
                let tcp = TcpStream::connect(addr).await?;
                TlsConnector::from(config).connect(ServerName::try_from("hbone").unwrap(), tcp).await
            })
        }
    }

    fn key(client: &Identity, expected: Vec<Identity>, address: SocketAddr) -> PoolKey {
        PoolKey { source: client.clone(), destination: expected, address }
    }

    #[tokio::test]
    async fn a_stream_through_mtls_reaches_the_workload() {
        let s = setup().await;
        let pool = Pool::default();
        let client = Identity::new("cluster.local", "ns1", "client");
        let dial = tls_dial(&s.ca, vec![s.ca.root_der()], &client, vec![id("server")], s.listener);
        let mut stream = pool.connect(&key(&client, vec![id("server")], s.listener), s.echo, &ConnectHeaders::default(), dial).await.unwrap();
        stream.write_all(b"through mTLS").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"through mTLS");
    }

    #[tokio::test]
    async fn the_client_refuses_a_server_of_another_identity() {
        let s = setup().await;
        let client = Identity::new("cluster.local", "ns1", "client");
        let dial = tls_dial(&s.ca, vec![s.ca.root_der()], &client, vec![id("someone-else")], s.listener);
        let e = Pool::default().connect(&key(&client, vec![id("someone-else")], s.listener), s.echo, &ConnectHeaders::default(), dial).await.unwrap_err();
        assert!(matches!(e, HboneError::Dial { .. }), "{e}");
        assert!(e.to_string().contains("spiffe://cluster.local/ns/ns2/sa/server"), "the error names the identity it got: {e}");
    }

    #[tokio::test]
    async fn the_server_refuses_a_client_of_an_untrusted_ca() {
        let s = setup().await;
        let rogue = s.ca.untrusted_twin().unwrap();
        let client = Identity::new("cluster.local", "ns1", "client");
        let dial = tls_dial(&rogue, vec![s.ca.root_der()], &client, vec![id("server")], s.listener);
        let r = Pool::default().connect(&key(&client, vec![id("server")], s.listener), s.echo, &ConnectHeaders::default(), dial).await;
        assert!(r.is_err(), "a client certificate from an untrusted root was accepted");
    }

    #[tokio::test]
    async fn authorization_policy_denies_with_401_per_connection() {
        // DENY the client identity on the echo's port only: istiod's L4 policy form.
        let (echo_port, other) = (echo().await, echo().await);
        let deny = serde_json::json!({ "name": "deny-client", "namespace": "ns2", "scope": "NAMESPACE", "action": "DENY",
            "rules": [{ "clauses": [
                { "matches": [{ "principals": [{ "exact": "cluster.local/ns/ns1/sa/client" }] }] },
                { "matches": [{ "destination_ports": [echo_port.port()] }] } ] }] });
        let s = setup_with(vec![deny]).await;
        let pool = Pool::default();
        let client = Identity::new("cluster.local", "ns1", "client");
        let k = key(&client, vec![id("server")], s.listener);
        let dial = || tls_dial(&s.ca, vec![s.ca.root_der()], &client, vec![id("server")], s.listener);
        match pool.connect(&k, echo_port, &ConnectHeaders::default(), dial()).await {
            Err(HboneError::Status { status, .. }) => assert_eq!(status.as_u16(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
        // Another port, and another identity on the denied port, pass.
        let mut ok = pool.connect(&k, other, &ConnectHeaders::default(), dial()).await.unwrap();
        ok.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        ok.read_exact(&mut b).await.unwrap();
        let friend = Identity::new("cluster.local", "ns1", "friend");
        let dial = tls_dial(&s.ca, vec![s.ca.root_der()], &friend, vec![id("server")], s.listener);
        pool.connect(&key(&friend, vec![id("server")], s.listener), echo_port, &ConnectHeaders::default(), dial).await.unwrap();
    }

    #[test]
    fn the_forwarded_source_address_is_read_as_ztunnel_writes_it() {
        let mut h = http::HeaderMap::new();
        for (value, want) in [
            ("for=198.18.1.10", Some("198.18.1.10")),
            ("for=\"[fd00:18:1::10]\"", Some("fd00:18:1::10")),
            ("by=x;for=10.0.0.1, for=10.0.0.2", Some("10.0.0.1")),
            ("for=_hidden", None),
            ("for=\"198.18.1.10:41234\"", Some("198.18.1.10")),
            ("for=\"[fd00:18:1::10]:41234\"", Some("fd00:18:1::10")),
        ] {
            h.insert("forwarded", value.parse().unwrap());
            assert_eq!(crate::hbone::inbound::forwarded_for(&h), want.map(|w| w.parse().unwrap()), "{value}");
        }
    }

    #[tokio::test]
    async fn connects_to_other_addresses_or_dead_ports_are_refused_with_their_status() {
        let s = setup().await;
        let pool = Pool::default();
        let client = Identity::new("cluster.local", "ns1", "client");
        let k = key(&client, vec![id("server")], s.listener);
        let other: SocketAddr = format!("127.0.0.2:{}", s.echo.port()).parse().unwrap();
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let own_port: SocketAddr = "127.0.0.1:15008".parse().unwrap();
        for (target, status) in [(other, 400), (dead, 503), (own_port, 503)] {
            let dial = tls_dial(&s.ca, vec![s.ca.root_der()], &client, vec![id("server")], s.listener);
            match pool.connect(&k, target, &ConnectHeaders::default(), dial).await {
                Err(HboneError::Status { status: got, .. }) => assert_eq!(got.as_u16(), status, "{target}"),
                other => panic!("{target}: expected {status}, got {:?}", other.map(|_| ())),
            }
        }
    }
}

/// The data path's outbound end (plan + certificates + pool) against the listener.
mod outbound {
    use super::*;
    use crate::hbone::inbound::Inbound;
    use crate::hbone::outbound::Outbound;
    use crate::hbone::plan::{plan, Upstream};
    use crate::identity::{CertStore, LocalIssuer};
    use crate::tls::{LocalCa, TrustDomains};
    use crate::xds::workload::{LiveWorkloads, WorkloadView};
    use istio_compat::model::workload::{AddressIndex, AddressResource, WorkloadModel};

    #[tokio::test]
    async fn a_planned_tunnel_carries_the_source_identity_to_the_destination() {
        // Two workloads on loopback addresses no other test uses: the client at
        // 127.77.0.1, the server at 127.77.0.2, whose HBONE listener on
        // 127.77.0.2:15008 stands in for the capture.
        let ca = Arc::new(LocalCa::generate("cluster.local").unwrap());
        let mut model = WorkloadModel::default();
        for (name, ip) in [("client", "127.77.0.1"), ("server", "127.77.0.2")] {
            let w: istio_compat::model::workload::Workload = serde_json::from_value(serde_json::json!({
                "uid": format!("Kubernetes//Pod/ns1/{name}"), "namespace": "ns1", "addresses": [ip], "tunnel": "HBONE",
                "identity": format!("spiffe://cluster.local/ns/ns1/sa/{name}"), "workload_name": name }))
            .unwrap();
            model.insert_address(AddressResource::Workload(Arc::new(w)));
        }
        let live = Arc::new(LiveWorkloads::default());
        let index = AddressIndex::new(&model);
        live.publish(WorkloadView { model, index, version: 1 });
        let certs = Arc::new(CertStore::new(Arc::new(LocalIssuer { ca, validity: Duration::from_secs(3600) })));
        certs.set_identities([Identity::new("cluster.local", "ns1", "client"), Identity::new("cluster.local", "ns1", "server")]);
        let trust = TrustDomains::local("cluster.local");

        let l = TcpListener::bind("127.77.0.2:15008").await.expect("bind the server's HBONE address");
        let inbound = Arc::new(Inbound::new(live.clone(), certs.clone(), trust.clone(), String::new(), None));
        inbound.run_on_thread(l, Arc::new(Drain::default())).expect("start the HBONE listener");
        // The server workload: an echo on its address.
        let target = echo_at("127.77.0.2:0").await;

        let Upstream::Hbone(tunnel) = plan(&live.load().index, "", "127.77.0.1".parse().unwrap(), target, &[]).unwrap() else {
            panic!("the server speaks HBONE")
        };
        assert_eq!(tunnel.gateway, "127.77.0.2:15008".parse().unwrap());
        let out = Outbound::new(certs, trust, None, "Kubernetes".into());
        let mut s = out.connect(&tunnel, "127.77.0.1".parse().unwrap(), None).await.unwrap();
        s.write_all(b"planned").await.unwrap();
        let mut b = [0u8; 7];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"planned");
        // A second stream reuses the connection.
        let _s2 = out.connect(&tunnel, "127.77.0.1".parse().unwrap(), None).await.unwrap();
        assert_eq!(out.connections(), 1);
    }
}
