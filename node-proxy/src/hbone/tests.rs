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
use super::server::{serve, ConnectRequest};
use super::HboneError;
use crate::drain::Drain;

/// An echo server: writes back what it reads, then closes its side after the client's EOF.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
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
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let drain = Arc::new(Drain::default());
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            let (seen, drain) = (seen2.clone(), drain.clone());
            tokio::spawn(async move {
                let handler = move |req: ConnectRequest| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push(req.headers);
                        match req.target.port() {
                            1 => Err(StatusCode::UNAUTHORIZED),
                            2 => Err(StatusCode::SERVICE_UNAVAILABLE),
                            _ => TcpStream::connect(req.target).await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE),
                        }
                    }
                };
                let _ = serve(s, &peer.to_string(), &drain, handler).await;
            });
        }
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
