//! Retries and timeouts: retry_on conditions (5xx, retriable status codes, reset,
//! connect-failure, gRPC unavailable), attempt counting, body replay and its buffer
//! limit, per-try and route timeouts, and the counters and flags they leave.

use std::time::Duration;

use serde_json::{json, Value};
use tests::*;

/// One virtual host (`*`, counting attempts both ways) routing everything to `cluster`
/// with `route` merged into the route action.
fn rc(cluster: &str, route: Value) -> Value {
    json!({
        "name": "local",
        "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "include_request_attempt_count": true,
            "include_attempt_count_in_response": true,
            "routes": [{ "match": { "prefix": "/" }, "route": merge(json!({ "cluster": cluster }), route) }],
        }],
    })
}

fn proxy(route_config: Value, clusters: Vec<Value>) -> Proxy {
    Proxy::start(&http_bootstrap(free_port(), route_config, clusters), 1)
}

fn cluster_metric(p: &Proxy, name: &str, cluster: &str) -> f64 {
    p.metric(name, &[("cluster_name", cluster)])
}

#[test]
fn a_503_is_retried_with_5xx_and_attempts_are_counted() {
    let a = Origin::start("a");
    let p = proxy(rc("a", json!({ "retry_policy": { "retry_on": "5xx", "num_retries": 1 } })), vec![cluster("a", &[a.addr()])]);
    let r = curl(&p.url("/fail/k/1/503"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-envoy-attempt-count"), Some("2"), "include_attempt_count_in_response");
    assert_eq!(a.attempts("k"), 2);
    let seen: Vec<_> = a.requests().iter().map(|r| r.header("x-envoy-attempt-count").map(str::to_owned)).collect();
    assert_eq!(seen, [Some("1".to_owned()), Some("2".to_owned())], "include_request_attempt_count");
    let e = p.wait_access_log("retried request", |e| e.path == "/fail/k/1/503");
    assert_eq!((e.code, e.flags.as_str()), (200, "-"));
    assert_eq!(cluster_metric(&p, "envoy_cluster_upstream_rq_retry", "a"), 1.0);
    assert_eq!(cluster_metric(&p, "envoy_cluster_upstream_rq_retry_success", "a"), 1.0);
}

#[test]
fn retriable_status_codes_only_retry_those_codes() {
    let a = Origin::start("a");
    let policy = json!({ "retry_policy": { "retry_on": "retriable-status-codes", "num_retries": 2, "retriable_status_codes": [418] } });
    let p = proxy(rc("a", policy), vec![cluster("a", &[a.addr()])]);
    let r = curl(&p.url("/fail/teapot/2/418"));
    assert_eq!((r.status, r.header("x-envoy-attempt-count")), (200, Some("3")), "{}", r.text());
    assert_eq!(a.attempts("teapot"), 3);
    let r = curl(&p.url("/fail/server-error/1/500"));
    assert_eq!(r.status, 500, "500 is not in retriable_status_codes");
    assert_eq!(a.attempts("server-error"), 1);
    let r = curl(&p.url("/fail/unavailable/1/503"));
    assert_eq!(r.status, 503, "retriable-status-codes alone does not retry 503");
    assert_eq!(a.attempts("unavailable"), 1);
}

#[test]
fn exhausted_retries_return_the_last_response_with_urx() {
    let a = Origin::start("a");
    let p = proxy(rc("a", json!({ "retry_policy": { "retry_on": "5xx", "num_retries": 2 } })), vec![cluster("a", &[a.addr()])]);
    let r = curl(&p.url("/status/503"));
    assert_eq!((r.status, r.text().as_str(), r.origin()), (503, "status 503\n", Some("a")), "the upstream's own 503 comes back");
    assert_eq!(r.header("x-envoy-attempt-count"), Some("3"));
    assert_eq!(a.request_count(), 3, "1 try + num_retries 2");
    let e = p.wait_access_log("exhausted", |e| e.path == "/status/503");
    assert_eq!((e.code, e.flags.as_str(), e.details.as_str()), (503, "URX", "via_upstream"));
    assert_eq!(e.upstream_host, a.addr().to_string());
    assert_eq!(cluster_metric(&p, "envoy_cluster_upstream_rq_retry", "a"), 2.0);
    assert_eq!(cluster_metric(&p, "envoy_cluster_upstream_rq_retry_limit_exceeded", "a"), 1.0);
    assert_eq!(p.metric("istio_requests_total", &[("response_code", "503"), ("response_flags", "URX")]), 1.0);
}

#[test]
fn exhausted_retries_are_not_counted_as_retry_success() {
    let a = Origin::start("a");
    let p = proxy(rc("a", json!({ "retry_policy": { "retry_on": "5xx", "num_retries": 2 } })), vec![cluster("a", &[a.addr()])]);
    assert_eq!(curl(&p.url("/status/503")).status, 503);
    assert_eq!(cluster_metric(&p, "envoy_cluster_upstream_rq_retry_limit_exceeded", "a"), 1.0);
    // Envoy (RetryStateImpl::shouldRetry) counts a success only when a retried
    // request gets a response it would not retry.
    assert_eq!(cluster_metric(&p, "envoy_cluster_upstream_rq_retry_success", "a"), 0.0);
}

#[test]
fn a_connection_reset_is_retried_with_retry_on_reset() {
    let a = Origin::start("a");
    let p = proxy(rc("a", json!({ "retry_policy": { "retry_on": "reset", "num_retries": 1 } })), vec![cluster("a", &[a.addr()])]);
    let r = curl(&p.url("/reset/r/1"));
    assert_eq!((r.status, r.header("x-envoy-attempt-count")), (200, Some("2")), "{}", r.text());
    assert_eq!(a.attempts("r"), 2);
    let r = curl(&p.url("/reset/r2/2"));
    assert_eq!(r.status, 503, "two resets, one retry: {}", r.text());
    let e = p.wait_access_log("reset twice", |e| e.path == "/reset/r2/2");
    assert!(e.has_flag("URX"), "{}", e.line);
}

#[test]
fn an_upstream_closing_without_a_response_is_uc_connection_termination() {
    let a = Origin::start("a");
    let p = proxy(rc("a", json!({ "retry_policy": { "retry_on": "connect-failure", "num_retries": 1 } })), vec![cluster("a", &[a.addr()])]);
    let r = curl(&p.url("/reset/x/1"));
    assert_eq!(r.status, 503);
    assert_eq!(a.attempts("x"), 1, "connect-failure does not cover a reset after the request was sent");
    assert_eq!(r.text(), "upstream connect error or disconnect/reset before headers. reset reason: connection termination");
    let e = p.wait_access_log("reset", |e| e.path == "/reset/x/1");
    assert_eq!((e.code, e.flags.as_str()), (503, "UC"), "Envoy: an HTTP/1.1 upstream closing the connection is UC, not UR: {}", e.line);
}

#[test]
fn connect_failure_is_retried_on_another_host() {
    let a = Origin::start("a");
    let down = ports::closed_port_addr();
    let policy = json!({
        "retry_policy": {
            "retry_on": "connect-failure",
            "num_retries": 1,
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" },
            }],
            "host_selection_retry_max_attempts": 50,
        }
    });
    let c = merge(cluster("c", &[down, a.addr()]), json!({ "lb_policy": "RANDOM" }));
    let p = proxy(rc("c", policy), vec![c]);
    for i in 0..20 {
        let r = curl(&p.url(&format!("/echo/{i}")));
        assert_eq!((r.status, r.origin()), (200, Some("a")), "request {i}: {}", r.text());
    }
    let failed = cluster_metric(&p, "envoy_cluster_upstream_cx_connect_fail", "c");
    assert!(failed >= 1.0, "RANDOM over 2 hosts never picked the closed one in 20 requests?");
    assert_eq!(cluster_metric(&p, "envoy_cluster_upstream_rq_retry", "c"), failed, "every connect failure was retried once");
    assert_eq!(a.request_count(), 20);
    for e in p.access_log() {
        assert_eq!((e.code, e.upstream_host.as_str()), (200, a.addr().to_string().as_str()), "{}", e.line);
    }
}

#[test]
fn connect_failure_without_retry_is_503_uf() {
    let down = ports::closed_port_addr();
    let p = proxy(rc("c", json!({})), vec![cluster("c", &[down])]);
    let r = curl(&p.url("/x"));
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "upstream connect error or disconnect/reset before headers. reset reason: connection failure");
    let e = p.wait_access_log("connect failure", |e| e.path == "/x");
    assert_eq!((e.flags.as_str(), e.upstream_host.as_str()), ("UF", down.to_string().as_str()));
}

fn random_body(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

#[test]
fn a_post_body_is_replayed_on_retry() {
    let a = Origin::start("a");
    let p = proxy(rc("a", json!({ "retry_policy": { "retry_on": "5xx", "num_retries": 1 } })), vec![cluster("a", &[a.addr()])]);
    let body = random_body(256 * 1024);
    let r = Curl::new(&p.url("/fail/post/1/503")).body(&body).run();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = a.requests();
    assert_eq!(seen.len(), 2);
    for (i, req) in seen.iter().enumerate() {
        assert_eq!(req.method, http::Method::POST);
        assert!(req.body[..] == body[..], "attempt {} body: {} bytes, differs from the {} sent", i + 1, req.body.len(), body.len());
    }

    // Also from an HTTP/2 client.
    let r = Curl::new(&p.url("/fail/post2/1/503")).http2().body(&body).run();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = a.requests_to("/fail/post2/");
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|req| req.body[..] == body[..]), "HTTP/2 body replayed intact");
}

#[test]
fn a_body_over_the_buffer_limit_is_not_retried() {
    let a = Origin::start("a");
    let p = proxy(rc("a", json!({ "retry_policy": { "retry_on": "5xx", "num_retries": 1 } })), vec![cluster("a", &[a.addr()])]);
    // The default per_connection_buffer_limit_bytes is 1 MiB.
    let body = random_body(1024 * 1024 + 512 * 1024);
    let r = Curl::new(&p.url("/fail/big/1/503")).body(&body).run();
    assert_eq!(r.status, 503, "not retried: the origin's first answer comes back: {}", r.text());
    assert_eq!(a.attempts("big"), 1);
    assert!(a.requests()[0].body[..] == body[..], "the one attempt got the whole body");
    assert_eq!(cluster_metric(&p, "envoy_cluster_upstream_rq_retry", "a"), 0.0);

    // Under the limit, the same request is retried.
    let small = random_body(512 * 1024);
    let r = Curl::new(&p.url("/fail/small/1/503")).body(&small).run();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(a.attempts("small"), 2);
}

#[test]
fn per_try_timeout_moves_on_to_the_next_attempt() {
    let a = Origin::start("a");
    let policy = json!({ "timeout": "10s", "retry_policy": { "retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.25s" } });
    let p = proxy(rc("a", policy), vec![cluster("a", &[a.addr()])]);
    let r = curl(&p.url("/slow/s/1/3000"));
    assert_eq!((r.status, r.header("x-envoy-attempt-count")), (200, Some("2")), "{}", r.text());
    assert!(r.elapsed >= Duration::from_millis(250), "the first try had 250 ms: {:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_millis(2500), "the second try answered at once, not after the first's 3 s: {:?}", r.elapsed);
    assert_eq!(a.attempts("s"), 2);
    assert_eq!(cluster_metric(&p, "envoy_cluster_upstream_rq_per_try_timeout", "a"), 1.0);

    // Every try too slow: 504 UT once the retries are used up.
    let r = curl(&p.url("/slow/t/5/3000"));
    assert_eq!((r.status, r.text().as_str()), (504, "upstream request timeout"));
    assert!(r.elapsed < Duration::from_millis(2500), "{:?}", r.elapsed);
    let e = p.wait_access_log("per-try timeouts", |e| e.path == "/slow/t/5/3000");
    assert!(e.has_flag("UT"), "{}", e.line);
    assert_eq!(a.attempts("t"), 2);
}

#[test]
fn route_timeout_is_504_ut() {
    let a = Origin::start("a");
    let p = proxy(rc("a", json!({ "timeout": "0.3s" })), vec![cluster("a", &[a.addr()])]);
    let r = curl(&p.url("/delay/3000"));
    assert_eq!((r.status, r.text().as_str()), (504, "upstream request timeout"));
    assert!(r.elapsed >= Duration::from_millis(300), "{:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_millis(2500), "{:?}", r.elapsed);
    let e = p.wait_access_log("timeout", |e| e.path == "/delay/3000");
    assert_eq!((e.code, e.flags.as_str(), e.details.as_str()), (504, "UT", "response_timeout"));
    assert_eq!(cluster_metric(&p, "envoy_cluster_upstream_rq_timeout", "a"), 1.0);
    // Within the timeout all is well.
    assert_eq!(curl(&p.url("/delay/10")).status, 200);
}

#[test]
fn grpc_unavailable_is_retried_with_retry_on_unavailable() {
    let server = GrpcServer::start("echo");
    let p = proxy(rc("grpc", json!({ "retry_policy": { "retry_on": "unavailable", "num_retries": 2 } })), vec![h2_cluster("grpc", &[server.addr()])]);
    let out = grpc_client(p.addr(), "unary", &["--key", "u1", "--fail-first", "2", "--fail-code", "14"]);
    assert_eq!(out["code"], "OK", "{out}");
    assert_eq!(out["reply"]["attempt"], 3, "{out}");
    let counts = grpc_client(server.addr(), "attempts", &["--key", "u1"]);
    assert_eq!((counts["reply"]["attempts"].as_i64(), counts["reply"]["failed"].as_i64()), (Some(3), Some(2)), "{counts}");

    // One failure more than the retries allow: the client sees the last UNAVAILABLE.
    let out = grpc_client(p.addr(), "unary", &["--key", "u2", "--fail-first", "3"]);
    assert_eq!((out["code"].as_str(), out["details"].as_str()), (Some("UNAVAILABLE"), Some("injected failure 3/3")), "{out}");

    // Other codes are not retried by `unavailable`.
    let out = grpc_client(p.addr(), "unary", &["--key", "u3", "--fail-first", "1", "--fail-code", "13"]);
    assert_eq!(out["code"], "INTERNAL", "{out}");
    let counts = grpc_client(server.addr(), "attempts", &["--key", "u3"]);
    assert_eq!(counts["reply"]["attempts"], 1, "{counts}");
}
