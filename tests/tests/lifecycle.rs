//! Process lifecycle and connection-level features: graceful drain on SIGTERM
//! (under load, with slow requests in flight, past the drain timeout), readiness
//! while draining, WebSocket upgrades and HTTP CONNECT tunnels.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::clients::{h2load_command, parse_h2load, read_response_head, Background};
use tests::*;

fn start(origin: &Origin, hcm_extra: Value, route_config: Value, drain: Duration) -> Proxy {
    let hcm_config = merge(hcm(route_config), hcm_extra);
    let config = bootstrap(vec![http_listener("main", free_port(), hcm_config)], vec![cluster("a", &[origin.addr()])]);
    Proxy::start_with(&config, ProxyOptions { drain_timeout: drain, ..Default::default() })
}

fn simple(origin: &Origin, drain: Duration) -> Proxy {
    start(origin, json!({}), route_all_to("a", json!({})), drain)
}

fn refuses_connections(p: &Proxy) -> bool {
    TcpStream::connect_timeout(&p.addr(), Duration::from_millis(200)).is_err()
}

/// Runs h2load (4 connections, `extra` args) for up to 6 s against the proxy, sends
/// SIGTERM once the origin has served `warm` requests, and checks the drain: exit 0
/// within the drain timeout, and every request that reached the proxy succeeded.
///
/// h2load counts a request as "started" when it submits it, not when it sends it:
/// after GOAWAY (HTTP/2) or `Connection: close` plus a refused reconnect (HTTP/1.1)
/// up to `in_flight` submissions never leave the client. Those are the only ones
/// allowed to be missing; the proxy's access log and the origin prove that every
/// request that arrived was answered 200.
fn sigterm_under_load(extra: &[&str], warm: usize, in_flight: u64) {
    let a = Origin::start("a");
    let mut p = simple(&a, Duration::from_secs(5));
    let url = p.url("/delay/2");
    let mut args = vec!["-c", "4", "-D", "6"];
    args.extend_from_slice(extra);
    args.push(&url);
    let load = Background::spawn(h2load_command(&args), "h2load");
    wait_until("steady load", Duration::from_secs(10), || a.request_count() > warm);
    let served_before = a.request_count() as u64;
    let signalled = Instant::now();
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(8));
    let drained_in = signalled.elapsed();
    let (_, out, err) = load.wait(Duration::from_secs(30));
    let s = parse_h2load(&out);
    assert!(status.success(), "exit status {status}; stderr:\n{}", p.stderr());
    assert!(drained_in < Duration::from_secs(5), "drained within --drain-timeout 5s: {drained_in:?}");
    assert!(s.succeeded >= served_before, "requests in flight at SIGTERM completed too: {out}");
    assert_eq!((s.status_5xx, s.status_4xx, s.timeout), (0, 0, 0), "{out}{err}");
    assert_eq!(a.request_count() as u64, s.succeeded, "every request the origin served reached the client:\n{out}");
    let log = p.access_log();
    assert_eq!(log.len() as u64, s.succeeded, "every request the proxy received was answered (access log):\n{out}");
    assert!(
        log.iter().all(|e| e.code == 200 && e.flags == "-"),
        "{}",
        p.access_log_lines().into_iter().filter(|l| !l.contains("\" 200 - ")).collect::<Vec<_>>().join("\n")
    );
    assert!(s.started - s.succeeded <= in_flight, "only submissions that never left h2load may be missing:\n{out}{err}");
}

#[test]
fn sigterm_under_steady_http2_load_fails_no_started_request() {
    sigterm_under_load(&["-m", "4"], 1500, 16);
}

#[test]
fn sigterm_under_steady_http1_load_fails_no_started_request() {
    sigterm_under_load(&["--h1"], 800, 4);
}

#[test]
fn sigterm_with_slow_requests_in_flight_lets_them_finish() {
    let a = Origin::start("a");
    let mut p = simple(&a, Duration::from_secs(5));
    let mut clients = Vec::new();
    for i in 0..20 {
        let url = p.url(&format!("/delay/1000?client={i}"));
        let http2 = i % 4 == 0;
        clients.push(std::thread::spawn(move || {
            let c = Curl::new(&url);
            if http2 {
                c.http2().run()
            } else {
                c.run()
            }
        }));
    }
    wait_until("20 requests in flight at the origin", Duration::from_secs(10), || a.request_count() == 20);
    let signalled = Instant::now();
    p.sigterm();

    // Draining: not ready, not accepting.
    let ready = assert_eventually("/ready to report draining", Duration::from_secs(2), || {
        let r = p.admin_get("/ready");
        if r.status == 503 {
            Ok(r)
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    });
    assert_eq!(ready.body.trim(), "DRAINING");
    wait_until("the listener to stop accepting", Duration::from_secs(2), || refuses_connections(&p));

    for (i, c) in clients.into_iter().enumerate() {
        let r = c.join().unwrap();
        assert_eq!((r.status, r.exit_code), (200, 0), "client {i}: {r:?}");
        if r.http_version == "1.1" {
            assert_eq!(r.header("connection"), Some("close"), "client {i}: HTTP/1.1 responses during drain say Connection: close: {:?}", r.headers);
        }
    }
    let status = p.wait_exit(Duration::from_secs(8));
    assert!(status.success(), "exit status {status}; stderr:\n{}", p.stderr());
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "exited once the requests were done, within the 5 s drain timeout: {took:?}");
    assert_eq!(p.access_log().iter().filter(|e| e.code == 200).count(), 20, "{}", p.access_log_lines().join("\n"));
}

#[test]
fn drain_timeout_ends_requests_that_take_too_long() {
    let a = Origin::start("a");
    let mut p = simple(&a, Duration::from_millis(1000));
    let url = p.url("/delay/20000");
    let client = std::thread::spawn(move || Curl::new(&url).run());
    wait_until("the request to reach the origin", Duration::from_secs(5), || a.request_count() == 1);
    let signalled = Instant::now();
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(6));
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}; stderr:\n{}", p.stderr());
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "exited at the 1 s drain timeout: {took:?}");
    let r = client.join().unwrap();
    assert_ne!(r.status, 200, "the unfinished request did not complete: {r:?}");
}

#[test]
fn idle_proxy_exits_at_once_on_sigterm() {
    let a = Origin::start("a");
    let mut p = simple(&a, Duration::from_secs(5));
    assert_eq!(curl(&p.url("/echo")).status, 200);
    let signalled = Instant::now();
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(6));
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() < Duration::from_secs(2), "no connections to wait for: {:?}", signalled.elapsed());
    assert!(p.stderr().contains("SIGTERM"), "{}", p.stderr());
}

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends a WebSocket handshake; returns the stream and the response head.
fn websocket_handshake(p: &Proxy, path: &str) -> (TcpStream, tests::clients::ResponseHead) {
    let mut s = TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let (head, rest) = read_response_head(&mut s);
    assert!(rest.is_empty() || head.status != 101, "bytes after the 101 before we sent any: {rest:?}");
    (s, head)
}

fn echo_over(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, data);
}

#[test]
fn websocket_upgrade_passes_through_when_configured() {
    let a = Origin::start("a");
    let p = start(&a, json!({ "upgrade_configs": [{ "upgrade_type": "websocket" }] }), route_all_to("a", json!({})), Duration::from_secs(5));
    let (mut s, head) = websocket_handshake(&p, "/chat");
    assert_eq!(head.status, 101, "{head:?}");
    assert_eq!(head.header("upgrade").map(str::to_ascii_lowercase).as_deref(), Some("websocket"));
    assert_eq!(head.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("upgrade"));
    assert_eq!(head.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    echo_over(&mut s, b"hello over the tunnel");
    echo_over(&mut s, &[0x81, 0x05, b'h', b'e', b'l', b'l', b'o']);
    echo_over(&mut s, &vec![7u8; 100_000]);
    let seen = a.requests().pop().unwrap();
    assert_eq!((seen.path.as_str(), seen.header("upgrade"), seen.header("sec-websocket-key")), ("/chat", Some("websocket"), Some(WS_KEY)));
    assert!(seen.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("upgrade")), "{:?}", seen.headers);
    drop(s);
    let e = p.wait_access_log("websocket", |e| e.path == "/chat");
    assert_eq!(e.code, 101);
}

#[test]
fn websocket_upgrade_is_refused_with_403_when_not_configured() {
    let a = Origin::start("a");
    let p = simple(&a, Duration::from_secs(5));
    let (_s, head) = websocket_handshake(&p, "/chat");
    assert_eq!(head.status, 403, "{head:?}");
    assert_eq!(a.request_count(), 0);
    let e = p.wait_access_log("refused upgrade", |e| e.path == "/chat");
    assert_eq!((e.code, e.details.as_str()), (403, "upgrade_failed"));
}

#[test]
fn websocket_upgrade_can_be_enabled_per_route() {
    let a = Origin::start("a");
    let rc = yaml(
        r#"
        name: local
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: { prefix: /ws }
            route: { cluster: a, upgrade_configs: [{ upgrade_type: websocket }] }
          - match: { prefix: / }
            route: { cluster: a }
        "#,
    );
    let p = start(&a, json!({}), rc, Duration::from_secs(5));
    let (mut s, head) = websocket_handshake(&p, "/ws");
    assert_eq!(head.status, 101, "{head:?}");
    echo_over(&mut s, b"ping");
    let (_s, head) = websocket_handshake(&p, "/other");
    assert_eq!(head.status, 403, "{head:?}");
}

#[test]
fn websocket_upgrade_can_be_disabled_per_route() {
    let a = Origin::start("a");
    let rc = yaml(
        r#"
        name: local
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: { prefix: /no-ws }
            route: { cluster: a, upgrade_configs: [{ upgrade_type: websocket, enabled: false }] }
          - match: { prefix: / }
            route: { cluster: a }
        "#,
    );
    let p = start(&a, json!({ "upgrade_configs": [{ "upgrade_type": "websocket" }] }), rc, Duration::from_secs(5));
    let (_s, head) = websocket_handshake(&p, "/ws");
    assert_eq!(head.status, 101, "{head:?}");
    let (_s, head) = websocket_handshake(&p, "/no-ws");
    assert_eq!(head.status, 403, "Envoy: the route's enabled: false wins over the HCM: {head:?}");
}

fn connect_request(p: &Proxy) -> (TcpStream, tests::clients::ResponseHead) {
    let mut s = TcpStream::connect(p.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\n").unwrap();
    let (head, _) = read_response_head(&mut s);
    (s, head)
}

fn connect_route_config() -> Value {
    yaml(
        r#"
        name: local
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: { connect_matcher: {} }
            route: { cluster: a }
          - match: { prefix: / }
            route: { cluster: a }
        "#,
    )
}

#[test]
fn http_connect_tunnels_when_configured() {
    let a = Origin::start("a");
    let p = start(&a, json!({ "upgrade_configs": [{ "upgrade_type": "CONNECT" }] }), connect_route_config(), Duration::from_secs(5));
    let (mut s, head) = connect_request(&p);
    assert_eq!(head.status, 200, "{head:?}");
    echo_over(&mut s, b"bytes through the CONNECT tunnel");
    echo_over(&mut s, &vec![1u8; 64 * 1024]);
    let seen = a.requests().pop().unwrap();
    assert_eq!(seen.method.as_str(), "CONNECT");
    assert_eq!(seen.authority(), Some("tunnel.test:443"));
    // Ordinary requests still use the prefix route.
    assert_eq!(curl(&p.url("/plain")).status, 200);
}

#[test]
fn http_connect_is_refused_when_not_configured() {
    let a = Origin::start("a");
    let p = start(&a, json!({}), connect_route_config(), Duration::from_secs(5));
    let (_s, head) = connect_request(&p);
    assert_eq!(head.status, 403, "{head:?}");
    assert_eq!(a.request_count(), 0);
}

#[test]
fn admin_port_serves_config_dump_stats_and_logging() {
    let a = Origin::start("a");
    let p = simple(&a, Duration::from_secs(5));
    let r = p.admin_get("/config_dump");
    assert_eq!(r.status, 200);
    let dump: Value = serde_json::from_str(&r.body).expect("config_dump is JSON");
    let types: Vec<&str> = dump["configs"].as_array().expect("configs").iter().filter_map(|c| c["@type"].as_str()).collect();
    assert!(types.iter().any(|t| t.ends_with("BootstrapConfigDump")), "{types:?}");
    assert!(types.iter().any(|t| t.ends_with("ListenersConfigDump")) && types.iter().any(|t| t.ends_with("ClustersConfigDump")), "{types:?}");
    assert!(r.body.contains(&a.addr().port().to_string()), "the dump shows the cluster's endpoint");

    let r = p.admin_get("/config_dump?format=model");
    assert_eq!(r.status, 200);
    let model: Value = serde_json::from_str(&r.body).expect("the model is JSON");
    assert!(model["listeners"].get("main").is_some() && model["clusters"].get("a").is_some(), "{}", r.body);

    let r = p.admin_get("/stats/prometheus");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("envoy_cluster_membership_total{cluster_name=\"a\"} 1"), "{}", r.body);

    let r = p.admin_get("/logging");
    assert_eq!((r.status, r.body.trim()), (200, "active level: info"));
    assert_eq!(p.admin_get("/logging?level=debug").status, 405, "changing the level needs POST");
    assert_eq!(p.admin_get("/ready").body.trim(), "LIVE");
    assert_eq!(p.admin_get("/nope").status, 404);
}
