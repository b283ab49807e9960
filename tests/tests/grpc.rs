//! gRPC through the proxy with real grpcio peers (tests/peers/grpc): every RPC
//! shape, large messages, statuses and trailers, deadlines (grpc-timeout),
//! cancellation, fault aborts. The upstream cluster speaks h2c.

use std::time::Duration;

use serde_json::{json, Value};
use tests::config::FAULT_TYPE;
use tests::*;

const ECHO_UNARY: &str = "/nodeproxy.test.Echo/Unary";

/// A proxy in front of `server` (cluster `grpc`, h2c), `route` merged into the route action.
fn proxy_for(server: &GrpcServer, route: Value) -> Proxy {
    Proxy::start(&http_bootstrap(free_port(), route_all_to("grpc", route), vec![h2_cluster("grpc", &[server.addr()])]), 1)
}

fn code(out: &Value) -> &str {
    out["code"].as_str().unwrap_or("?")
}

#[test]
fn unary_call_with_metadata() {
    let server = GrpcServer::start("echo-1");
    let p = proxy_for(&server, json!({}));
    let out = grpc_client(p.addr(), "unary", &["--payload", "hello", "--metadata", "x-foo=bar", "--metadata", "x-multi=a", "--metadata", "x-multi=b"]);
    assert_eq!(code(&out), "OK", "{out}");
    let reply = &out["reply"];
    assert_eq!(reply["payload"], "hello", "{out}");
    assert_eq!(reply["server"], "echo-1");
    assert_eq!(reply["method"], ECHO_UNARY);
    assert_eq!(reply["metadata"]["x-foo"], "bar", "request metadata reaches the server: {out}");
    assert_eq!(reply["metadata"]["x-multi"], "a,b", "{out}");
    assert_eq!(out["initial_metadata"]["x-echo-server"], "echo-1", "response headers come back: {out}");
    let e = p.wait_access_log("unary", |e| e.path == ECHO_UNARY);
    assert_eq!((e.method.as_str(), e.protocol.as_str(), e.code, e.flags.as_str()), ("POST", "HTTP/2", 200, "-"));
    assert_eq!(p.metric("istio_requests_total", &[("request_protocol", "grpc"), ("grpc_response_status", "0"), ("response_code", "200")]), 1.0);
}

#[test]
fn server_client_and_bidi_streaming() {
    let server = GrpcServer::start("echo");
    let p = proxy_for(&server, json!({}));

    let out = grpc_client(p.addr(), "server-stream", &["--count", "5", "--response-size", "1000", "--interval-ms", "20"]);
    assert_eq!((code(&out), out["replies"].as_i64(), out["payload_ok"].as_bool()), ("OK", Some(5), Some(true)), "{out}");
    assert_eq!(out["last_reply"]["index"], 4);

    let out = grpc_client(p.addr(), "client-stream", &["--count", "4", "--payload-size", "100", "--send-interval-ms", "10"]);
    assert_eq!(code(&out), "OK", "{out}");
    assert_eq!((out["reply"]["messages"].as_i64(), out["reply"]["total_bytes"].as_i64()), (Some(4), Some(400)), "{out}");

    let out = grpc_client(p.addr(), "bidi", &["--count", "3", "--payload-size", "64"]);
    assert_eq!((code(&out), out["replies"].as_i64(), out["payload_ok"].as_bool()), ("OK", Some(3), Some(true)), "{out}");
}

#[test]
fn one_mib_request_and_response_messages() {
    let server = GrpcServer::start("echo");
    let p = proxy_for(&server, json!({}));
    let mib = (1024 * 1024).to_string();
    let out = grpc_client(p.addr(), "unary", &["--payload-size", &mib, "--response-size", &mib]);
    assert_eq!((code(&out), out["payload_ok"].as_bool(), out["payload_bytes"].as_i64()), ("OK", Some(true), Some(1 << 20)), "{out}");
    // Echo: the 1 MiB request comes back byte for byte.
    let out = grpc_client(p.addr(), "unary", &["--payload-size", &mib]);
    assert_eq!((code(&out), out["payload_ok"].as_bool(), out["payload_bytes"].as_i64()), ("OK", Some(true), Some(1 << 20)), "{out}");
    let e = p.wait_access_log("1 MiB echo", |e| e.bytes_sent > 1 << 20 && e.bytes_received > 1 << 20);
    assert_eq!(e.code, 200);
}

#[test]
fn non_ok_status_message_and_trailers_pass_through() {
    let server = GrpcServer::start("echo");
    let p = proxy_for(&server, json!({}));
    let out = grpc_client(p.addr(), "unary", &["--status-code", "9", "--status-message", "not now", "--trailer", "x-reason=busy"]);
    assert_eq!((code(&out), out["details"].as_str()), ("FAILED_PRECONDITION", Some("not now")), "{out}");
    assert_eq!(out["trailers"]["x-reason"], "busy", "{out}");

    let out = grpc_client(p.addr(), "server-stream", &["--count", "2", "--status-code", "8", "--status-message", "quota", "--trailer", "x-left=0"]);
    assert_eq!((code(&out), out["replies"].as_i64(), out["details"].as_str()), ("RESOURCE_EXHAUSTED", Some(2), Some("quota")), "{out}");
    assert_eq!(out["trailers"]["x-left"], "0", "{out}");

    let out = grpc_client(p.addr(), "unary", &["--trailer", "x-ok=yes"]);
    assert_eq!((code(&out), out["trailers"]["x-ok"].as_str()), ("OK", Some("yes")), "{out}");

    // Trailers-only (immediate failure) responses too.
    let out = grpc_client(p.addr(), "unary", &["--key", "t", "--fail-first", "1", "--fail-code", "5", "--fail-message", "gone", "--trailer", "x-why=missing"]);
    assert_eq!((code(&out), out["details"].as_str(), out["trailers"]["x-why"].as_str()), ("NOT_FOUND", Some("gone"), Some("missing")), "{out}");
    assert_eq!(p.metric("istio_requests_total", &[("grpc_response_status", "9")]), 1.0);
    assert_eq!(p.metric("istio_requests_total", &[("grpc_response_status", "8")]), 1.0);
    assert_eq!(p.metric("istio_requests_total", &[("grpc_response_status", "5")]), 1.0);
}

const HONOUR_GRPC_TIMEOUT: &str = r#"{ "timeout": "10s", "max_stream_duration": { "grpc_timeout_header_max": "0s" } }"#;

#[test]
fn client_deadline_is_exceeded_and_the_server_call_cancelled() {
    let server = GrpcServer::start("echo");
    let p = proxy_for(&server, serde_json::from_str(HONOUR_GRPC_TIMEOUT).unwrap());
    let out = grpc_client(p.addr(), "deadline", &["--key", "d1", "--timeout-ms", "300", "--delay-ms", "5000"]);
    // The client's deadline and the proxy's (from grpc-timeout) expire together;
    // if the proxy's local reply wins the race it is UNAVAILABLE "upstream request
    // timeout" (see grpc_timeout_reply_is_deadline_exceeded).
    match code(&out) {
        "DEADLINE_EXCEEDED" => {}
        "UNAVAILABLE" => assert_eq!(out["details"], "upstream request timeout", "{out}"),
        other => panic!("{other}: {out}"),
    }
    assert!(out["elapsed_ms"].as_f64().unwrap_or(1e9) < 2500.0, "{out}");
    let counts = grpc_client(server.addr(), "attempts", &["--key", "d1", "--wait-cancelled", "1"]);
    assert_eq!((counts["reply"]["attempts"].as_i64(), counts["reply"]["cancelled"].as_i64()), (Some(1), Some(1)), "the server call ended early: {counts}");
    assert_eq!(counts["reply"]["completed"], 0, "{counts}");
}

/// A gRPC-shaped request sent by curl to the Rust origin's `/delay/{ms}`: neither
/// curl nor that origin enforces `grpc-timeout`, so only the proxy can end it early.
fn grpc_shaped_call(p: &Proxy, delay_ms: u32, grpc_timeout: &str) -> CurlResponse {
    Curl::new(&p.url(&format!("/delay/{delay_ms}")))
        .http2()
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(&[0, 0, 0, 0, 0])
        .run()
}

fn timeout_proxy(origin: &Origin, route: Value) -> Proxy {
    Proxy::start(&http_bootstrap(free_port(), route_all_to("a", route), vec![h2_cluster("a", &[origin.addr()])]), 1)
}

/// Envoy answers a router timeout on a gRPC request with 504 mapped to UNAVAILABLE
/// (14); since envoy#44479 (runtime guard grpc_timeout_returns_deadline_exceeded)
/// with DEADLINE_EXCEEDED (4). Either is Envoy's behaviour.
fn assert_grpc_timeout_reply(r: &CurlResponse) {
    assert_eq!(r.status, 200, "gRPC local replies are trailers-only 200s: {r:?}");
    assert_eq!(r.header("content-type"), Some("application/grpc"), "{r:?}");
    let status = r.header("grpc-status").unwrap_or("none");
    assert!(status == "4" || status == "14", "grpc-status {status}: {:?}", r.headers);
}

#[test]
fn grpc_timeout_header_bounds_the_route_timeout() {
    let a = Origin::start("a");
    let p = timeout_proxy(&a, serde_json::from_str(HONOUR_GRPC_TIMEOUT).unwrap());
    let r = grpc_shaped_call(&p, 5000, "300m");
    assert!(r.elapsed >= Duration::from_millis(300) && r.elapsed < Duration::from_millis(2500), "ended by the 300 ms grpc-timeout: {:?}", r.elapsed);
    assert_grpc_timeout_reply(&r);
    assert_eq!(a.requests()[0].header("grpc-timeout"), Some("300m"), "grpc-timeout is passed upstream");
    let e = p.wait_access_log("grpc timeout", |e| e.path == "/delay/5000");
    assert!(e.has_flag("UT"), "{}", e.line);
}

#[test]
fn grpc_timeout_reply_is_deadline_exceeded() {
    let a = Origin::start("a");
    let p = timeout_proxy(&a, serde_json::from_str(HONOUR_GRPC_TIMEOUT).unwrap());
    let r = grpc_shaped_call(&p, 5000, "300m");
    assert_eq!((r.status, r.header("grpc-status")), (200, Some("4")), "{:?}", r.headers);
}

#[test]
fn grpc_timeout_header_max_caps_the_header() {
    let a = Origin::start("a");
    let p = timeout_proxy(&a, json!({ "timeout": "10s", "max_stream_duration": { "grpc_timeout_header_max": "0.3s" } }));
    let r = grpc_shaped_call(&p, 5000, "20S");
    assert!(r.elapsed >= Duration::from_millis(300) && r.elapsed < Duration::from_millis(2500), "capped at 300 ms: {:?}", r.elapsed);
    assert_grpc_timeout_reply(&r);
}

#[test]
fn grpc_timeout_header_is_ignored_without_max_stream_duration() {
    let a = Origin::start("a");
    let p = timeout_proxy(&a, json!({ "timeout": "1s" }));
    let r = grpc_shaped_call(&p, 5000, "200m");
    assert!(r.elapsed >= Duration::from_millis(1000), "the route's 1 s timeout applies, not grpc-timeout: {:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_millis(4000), "{:?}", r.elapsed);
    assert_grpc_timeout_reply(&r);
    let e = p.wait_access_log("route timeout", |e| e.path == "/delay/5000");
    assert!(e.has_flag("UT"), "{}", e.line);
}

#[test]
fn client_cancellation_reaches_the_server() {
    let server = GrpcServer::start("echo");
    let p = proxy_for(&server, json!({ "timeout": "0s" }));
    let out = grpc_client(p.addr(), "cancel", &["--key", "c1", "--cancel-after-ms", "300", "--delay-ms", "5000"]);
    assert_eq!(code(&out), "CANCELLED", "{out}");
    let counts = grpc_client(server.addr(), "attempts", &["--key", "c1", "--wait-cancelled", "1"]);
    assert_eq!(counts["reply"]["cancelled"], 1, "RST_STREAM went upstream: {counts}");
    assert_eq!(counts["reply"]["completed"], 0, "{counts}");
    // Streams too.
    let out = grpc_client(p.addr(), "cancel", &["--key", "c2", "--method", "bidi", "--cancel-after-ms", "300", "--delay-ms", "5000"]);
    assert_eq!(code(&out), "CANCELLED", "{out}");
    let counts = grpc_client(server.addr(), "attempts", &["--key", "c2", "--wait-cancelled", "1"]);
    assert_eq!(counts["reply"]["cancelled"], 1, "{counts}");
}

#[test]
fn cancelled_call_is_logged_with_dc() {
    let server = GrpcServer::start("echo");
    let p = proxy_for(&server, json!({ "timeout": "0s" }));
    let out = grpc_client(p.addr(), "cancel", &["--key", "c1", "--cancel-after-ms", "300", "--delay-ms", "3000"]);
    assert_eq!(code(&out), "CANCELLED", "{out}");
    let e = p.wait_access_log("cancelled call", |e| e.path == ECHO_UNARY);
    assert!(e.has_flag("DC"), "{}", e.line);
}

#[test]
fn fault_abort_returns_the_configured_grpc_status() {
    let server = GrpcServer::start("echo");
    let rc = json!({
        "name": "local",
        "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [{
                "match": { "prefix": "/" },
                "route": { "cluster": "grpc" },
                "typed_per_filter_config": {
                    "envoy.filters.http.fault": {
                        "@type": FAULT_TYPE,
                        "abort": { "grpc_status": 7, "percentage": { "numerator": 100, "denominator": "HUNDRED" } },
                    }
                },
            }],
        }],
    });
    let hcm_config = merge(hcm(rc), json!({ "http_filters": [config::fault_filter(json!({})), config::router_filter()] }));
    let p = Proxy::start(&bootstrap(vec![http_listener("main", free_port(), hcm_config)], vec![h2_cluster("grpc", &[server.addr()])]), 1);
    let out = grpc_client(p.addr(), "unary", &["--key", "f1"]);
    assert_eq!((code(&out), out["code_value"].as_i64()), ("PERMISSION_DENIED", Some(7)), "{out}");
    let counts = grpc_client(server.addr(), "attempts", &["--key", "f1"]);
    assert_eq!(counts["reply"]["attempts"], 0, "aborted before reaching the server: {counts}");
    let e = p.wait_access_log("fault abort", |e| e.path == ECHO_UNARY);
    assert!(e.has_flag("FI"), "{}", e.line);
    assert_eq!(p.metric("istio_requests_total", &[("grpc_response_status", "7"), ("response_flags", "FI")]), 1.0);
}
