//! Protocol errors on the downstream side, written byte by byte on raw sockets:
//! malformed HTTP/1.1, request smuggling attempts, oversized headers, HTTP/2
//! garbage; and configuration errors at start-up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use tests::clients::{parse_response_head, raw_exchange, read_response_head};
use tests::proxy::run_node_proxy;
use tests::*;

fn proxy_with(origin: &Origin, hcm_extra: Value) -> Proxy {
    let hcm_config = merge(hcm(route_all_to("a", json!({}))), hcm_extra);
    Proxy::start(&bootstrap(vec![http_listener("main", free_port(), hcm_config)], vec![cluster("a", &[origin.addr()])]), 1)
}

fn status_of(raw: &[u8]) -> u16 {
    parse_response_head(raw).map_or(0, |h| h.status)
}

const T: Duration = Duration::from_secs(5);

/// A keep-alive connection sending `GET /keepalive/{n}` and reading the response.
fn keepalive_get(s: &mut TcpStream, n: u32) -> u16 {
    write!(s, "GET /keepalive/{n} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let (head, mut rest) = read_response_head(s);
    let len: usize = head.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while rest.len() < len {
        let mut buf = vec![0u8; len - rest.len()];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed mid-body");
        rest.extend_from_slice(&buf[..n]);
    }
    head.status
}

#[test]
fn malformed_requests_are_400_and_the_proxy_keeps_serving() {
    let a = Origin::start("a");
    let p = proxy_with(&a, json!({}));
    let mut keepalive = TcpStream::connect(p.addr()).unwrap();
    keepalive.set_read_timeout(Some(T)).unwrap();
    assert_eq!(keepalive_get(&mut keepalive, 1), 200);

    for (what, request) in [
        ("garbage request line", &b"THIS IS NOT HTTP\r\n\r\n"[..]),
        ("spaces in the target", b"GET /a b c HTTP/1.1\r\nHost: test\r\n\r\n"),
        ("header without a colon", b"GET / HTTP/1.1\r\nHost test\r\n\r\n"),
        ("space before the colon", b"GET / HTTP/1.1\r\nHost : test\r\n\r\n"),
        ("HTTP/1.0 with Transfer-Encoding", b"POST / HTTP/1.0\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ] {
        let reply = raw_exchange(p.addr(), request, T);
        assert_eq!(status_of(&reply), 400, "{what}: got {:?}", String::from_utf8_lossy(&reply));
    }
    assert_eq!(a.request_count(), 1, "nothing malformed reached the origin");
    assert_eq!(keepalive_get(&mut keepalive, 2), 200, "an existing connection still works");
    assert_eq!(curl(&p.url("/after")).status, 200, "new connections still work");
}

#[test]
fn a_malformed_chunked_body_is_400() {
    let a = Origin::start("a");
    let p = proxy_with(&a, json!({}));
    let reply = raw_exchange(p.addr(), b"POST /chunks HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", T);
    assert_eq!(status_of(&reply), 400, "{}", String::from_utf8_lossy(&reply));
    let e = p.wait_access_log("bad chunk", |e| e.path == "/chunks");
    assert!(e.has_flag("DPE"), "{}", e.line);
}

const SMUGGLE: &[u8] =
    b"POST /first HTTP/1.1\r\nHost: test\r\nContent-Length: 46\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n";

#[test]
fn content_length_with_transfer_encoding_is_never_smuggled() {
    let a = Origin::start("a");
    let p = proxy_with(&a, json!({}));
    let reply = raw_exchange(p.addr(), SMUGGLE, T);
    assert!(!String::from_utf8_lossy(&reply).contains("/smuggled"), "{}", String::from_utf8_lossy(&reply));
    // Give a smuggled request every chance to arrive.
    assert_eq!(curl(&p.url("/marker")).status, 200);
    let paths: Vec<String> = a.requests().iter().map(|r| r.path.clone()).collect();
    assert!(!paths.iter().any(|p| p == "/smuggled"), "the origin saw a smuggled request: {paths:?}");
    for r in a.requests() {
        assert!(!(r.headers.contains_key("content-length") && r.headers.contains_key("transfer-encoding")), "both framing headers went upstream: {r:?}");
    }
}

#[test]
fn content_length_with_transfer_encoding_is_400() {
    let a = Origin::start("a");
    let p = proxy_with(&a, json!({}));
    let reply = raw_exchange(p.addr(), SMUGGLE, T);
    assert_eq!(status_of(&reply), 400, "{}", String::from_utf8_lossy(&reply));
    assert_eq!(a.request_count(), 0);
}

#[test]
fn differing_content_lengths_are_400() {
    let a = Origin::start("a");
    let p = proxy_with(&a, json!({}));
    for request in [
        &b"POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"[..],
        b"POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: 3, 5\r\n\r\nabcde",
        b"POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: -3\r\n\r\nabc",
        b"POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: 0x10\r\n\r\nabc",
    ] {
        let reply = raw_exchange(p.addr(), request, T);
        assert_eq!(status_of(&reply), 400, "{:?} -> {:?}", String::from_utf8_lossy(request), String::from_utf8_lossy(&reply));
    }
    assert_eq!(a.request_count(), 0);
    // Repeated identical lengths are one length (RFC 9110 §8.6).
    let reply = raw_exchange(p.addr(), b"POST /same HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc", T);
    assert_eq!(status_of(&reply), 200, "{}", String::from_utf8_lossy(&reply));
    assert_eq!(&a.requests()[0].body[..], b"abc");
}

#[test]
fn headers_far_over_max_request_headers_kb_are_431() {
    let a = Origin::start("a");
    let p = proxy_with(&a, json!({ "max_request_headers_kb": 8 }));
    let r = Curl::new(&p.url("/under")).header("x-big", &"x".repeat(6 * 1024)).run();
    assert_eq!(r.status, 200, "6 KiB of headers is under 8 KiB");
    let r = Curl::new(&p.url("/over")).header("x-big", &"x".repeat(32 * 1024)).run();
    assert_eq!(r.status, 431, "32 KiB of headers is over max_request_headers_kb 8");
    let r = Curl::new(&p.url("/over-h2")).http2().header("x-big", &"x".repeat(32 * 1024)).run();
    assert_ne!(r.status, 200, "HTTP/2: 32 KiB of headers is refused too: {r:?}");
    assert_eq!(a.requests().iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["/under"]);
}

#[test]
fn headers_just_over_max_request_headers_kb_are_431() {
    let a = Origin::start("a");
    let p = proxy_with(&a, json!({ "max_request_headers_kb": 8 }));
    let r = Curl::new(&p.url("/over")).header("x-big", &"x".repeat(10 * 1024)).run();
    assert_eq!(r.status, 431, "10 KiB of headers is over max_request_headers_kb 8");
    let under = "x".repeat(6 * 1024);
    let r = Curl::new(&p.url("/over-split")).header("x-big-1", &under).header("x-big-2", &under).run();
    assert_eq!(r.status, 431, "12 KiB in two headers is over the limit too");
    let p = proxy_with(&a, json!({}));
    let r = Curl::new(&p.url("/default-under")).header("x-big", &"x".repeat(50 * 1024)).run();
    assert_eq!(r.status, 200);
    let r = Curl::new(&p.url("/default-over")).header("x-big", &"x".repeat(64 * 1024)).run();
    assert_eq!(r.status, 431, "64 KiB of headers is over Envoy's default 60 KiB");
    assert_eq!(a.requests().iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["/default-under"]);
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PROTOCOL_ERROR: u32 = 0x1;
const FRAME_SIZE_ERROR: u32 = 0x6;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends `bytes` on a new connection and reads frames until GOAWAY; returns its error code.
fn goaway_after(addr: SocketAddr, bytes: &[u8]) -> u32 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(bytes).unwrap();
    let mut seen = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if let Err(e) = s.read_exact(&mut head) {
            panic!("connection ended without GOAWAY ({e}); frames seen (type, len): {seen:?}");
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        seen.push((head[3], len));
        if head[3] == 0x7 {
            assert!(len >= 8, "short GOAWAY");
            return u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
        }
    }
}

#[test]
fn http2_garbage_gets_goaway_and_other_connections_keep_working() {
    let a = Origin::start("a");
    let p = proxy_with(&a, json!({}));
    let settings = frame(0x4, 0, 0, &[]);

    // DATA on stream 0 is a connection error.
    let mut data_on_zero = PREFACE.to_vec();
    data_on_zero.extend(&settings);
    data_on_zero.extend(frame(0x0, 0, 0, b"hello"));
    assert_eq!(goaway_after(p.addr(), &data_on_zero), PROTOCOL_ERROR, "DATA on stream 0");

    // A frame larger than SETTINGS_MAX_FRAME_SIZE (16384).
    let mut huge = PREFACE.to_vec();
    huge.extend(&settings);
    huge.extend_from_slice(&[0xff, 0xff, 0xff, 0x0, 0x0, 0, 0, 0, 1]);
    huge.extend_from_slice(&[0u8; 64]);
    assert_eq!(goaway_after(p.addr(), &huge), FRAME_SIZE_ERROR, "oversized frame");

    // Text where frames should be: "GAR" as a length is 4.6 MB.
    let mut garbage = PREFACE.to_vec();
    garbage.extend_from_slice(b"GARBAGE GARBAGE GARBAGE GARBAGE");
    let code = goaway_after(p.addr(), &garbage);
    assert!(code == FRAME_SIZE_ERROR || code == PROTOCOL_ERROR, "garbage: GOAWAY code {code:#x}");

    assert_eq!(a.request_count(), 0);
    let r = Curl::new(&p.url("/after")).http2().run();
    assert_eq!((r.status, r.http_version.as_str()), (200, "2"), "other connections keep working");
}

#[test]
fn http2_preface_without_settings_is_a_protocol_error() {
    let a = Origin::start("a");
    let p = proxy_with(&a, json!({}));
    let mut ping_first = PREFACE.to_vec();
    ping_first.extend(frame(0x6, 0, 0, &[0; 8]));
    assert_eq!(goaway_after(p.addr(), &ping_first), PROTOCOL_ERROR, "PING before SETTINGS");
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn run_with_config(path: &str) -> (std::process::ExitStatus, String) {
    let admin = format!("127.0.0.1:{}", free_port());
    let (status, _out, err) = run_node_proxy(
        &["--config", path, "--admin-address", &admin, "--metrics-address", "off", "--readiness-address", "off", "--hbone-address", "off"],
        Duration::from_secs(10),
    );
    (status, err)
}

#[test]
fn an_unknown_config_field_is_named_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        r#"
static_resources:
  clusters:
  - name: c
    type: STATIC
    conect_timeout: 1s
    load_assignment: { cluster_name: c, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 1 } } } }] }] }
"#,
    );
    let (status, err) = run_with_config(&path);
    assert!(!status.success(), "a bad config must not start: {status}");
    assert!(err.contains("conect_timeout"), "stderr names the field: {err}");
    assert!(err.contains("static_resources.clusters[0]"), "stderr names where it is: {err}");
    assert!(err.contains(&path), "stderr names the file: {err}");

    let (status, out, err) = run_node_proxy(&["check-config", &path], Duration::from_secs(10));
    assert!(!status.success(), "check-config fails too: {out}");
    assert!(err.contains("conect_timeout") && err.contains("static_resources.clusters[0]"), "{err}");
}

#[test]
fn invalid_resources_and_missing_files_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "static_resources:\n  clusters:\n  - name: lonely\n    type: STATIC\n");
    let (status, err) = run_with_config(&path);
    assert!(!status.success());
    assert!(err.contains("lonely") && err.contains("load_assignment"), "names the cluster and what it lacks: {err}");

    let path = write_config(&dir, "static_resources: [not, a, mapping");
    let (status, err) = run_with_config(&path);
    assert!(!status.success());
    assert!(err.contains(&path), "{err}");

    let missing = dir.path().join("missing.yaml").display().to_string();
    let (status, err) = run_with_config(&missing);
    assert!(!status.success());
    assert!(err.contains(&missing), "names the missing file: {err}");

    // A good one for contrast: check-config passes.
    let good = bootstrap(vec![http_listener("main", free_port(), hcm(route_all_to("c", json!({}))))], vec![cluster("c", &[ports::closed_port_addr()])]);
    let path = write_config(&dir, &good);
    let (status, out, err) = run_node_proxy(&["check-config", &path], Duration::from_secs(10));
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("ok: 1 listeners"), "{out}");
}
