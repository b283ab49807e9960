//! Fault injection (delay, abort, percentages, header-controlled, header-restricted)
//! and request mirroring.

use std::time::Duration;

use serde_json::{json, Value};
use tests::config::{fault_filter, router_filter, FAULT_TYPE};
use tests::*;

/// A proxy whose HCM runs the fault filter (listener-level config `listener_fault`)
/// before the router; `route_fault`, if any, overrides it on the route.
fn fault_proxy(origin: &Origin, listener_fault: Value, route_fault: Option<Value>) -> Proxy {
    let mut route = json!({ "match": { "prefix": "/" }, "route": { "cluster": "a" } });
    if let Some(f) = route_fault {
        route["typed_per_filter_config"] = json!({ "envoy.filters.http.fault": merge(json!({ "@type": FAULT_TYPE }), f) });
    }
    let rc = json!({ "name": "local", "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [route] }] });
    let hcm_config = merge(hcm(rc), json!({ "http_filters": [fault_filter(listener_fault), router_filter()] }));
    Proxy::start(&bootstrap(vec![http_listener("main", free_port(), hcm_config)], vec![cluster("a", &[origin.addr()])]), 1)
}

#[test]
fn fixed_delay_on_every_request_is_di() {
    let a = Origin::start("a");
    let p = fault_proxy(&a, yaml("delay: { fixed_delay: 1s, percentage: { numerator: 100 } }"), None);
    let r = curl(&p.url("/echo"));
    assert_eq!((r.status, r.origin()), (200, Some("a")));
    assert!(r.elapsed >= Duration::from_secs(1), "delayed 1 s: {:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_secs(3), "{:?}", r.elapsed);
    let e = p.wait_access_log("delayed", |e| e.path == "/echo");
    assert_eq!((e.code, e.flags.as_str()), (200, "DI"));
    assert!(e.duration_ms >= 1000, "{}", e.line);
}

#[test]
fn abort_with_http_status_is_fi_and_never_reaches_the_origin() {
    let a = Origin::start("a");
    let p = fault_proxy(&a, json!({}), Some(yaml("abort: { http_status: 418, percentage: { numerator: 100 } }")));
    for _ in 0..5 {
        let r = curl(&p.url("/echo"));
        assert_eq!((r.status, r.text().as_str()), (418, "fault filter abort"));
    }
    assert_eq!(a.request_count(), 0);
    let e = p.wait_access_log("aborted", |e| e.path == "/echo");
    assert_eq!((e.code, e.flags.as_str(), e.details.as_str()), (418, "FI", "fault_filter_abort"));
    assert_eq!(p.metric("istio_requests_total", &[("response_code", "418"), ("response_flags", "FI")]), 5.0);
}

#[test]
fn zero_percent_abort_never_aborts() {
    let a = Origin::start("a");
    let p = fault_proxy(&a, yaml("abort: { http_status: 503, percentage: { numerator: 0 } }"), None);
    let s = h2load(&["-n", "300", "-c", "2", "-m", "4", &p.url("/echo")]);
    assert_eq!((s.status_2xx, s.status_5xx), (300, 0), "{}", s.output);
    assert_eq!(a.request_count(), 300);
}

#[test]
fn fractional_abort_hits_about_that_fraction() {
    let a = Origin::start("a");
    let p = fault_proxy(&a, yaml("abort: { http_status: 503, percentage: { numerator: 30 } }"), None);
    let n = 1000.0;
    let s = h2load(&["-n", "1000", "-c", "2", "-m", "8", &p.url("/echo")]);
    let aborted = s.status_5xx as f64;
    // Binomial(1000, 0.3): sd ~14.5; 5 sigma.
    assert!((aborted - 0.3 * n).abs() <= 5.0 * (n * 0.3 * 0.7f64).sqrt(), "{aborted} of {n} aborted at 30 %");
    assert_eq!(a.request_count() as f64, n - aborted);
}

#[test]
fn header_controlled_faults() {
    let a = Origin::start("a");
    let route_fault = yaml(
        r#"
        delay: { header_delay: {}, percentage: { numerator: 100 } }
        abort: { header_abort: {}, percentage: { numerator: 100 } }
        "#,
    );
    let p = fault_proxy(&a, json!({}), Some(route_fault));
    let r = curl(&p.url("/plain"));
    assert_eq!(r.status, 200, "no fault headers, no fault");
    assert!(r.elapsed < Duration::from_millis(500), "{:?}", r.elapsed);

    let r = Curl::new(&p.url("/abort")).header("x-envoy-fault-abort-request", "429").run();
    assert_eq!(r.status, 429);
    let r = Curl::new(&p.url("/abort-lowered")).header("x-envoy-fault-abort-request", "429").header("x-envoy-fault-abort-request-percentage", "0").run();
    assert_eq!(r.status, 200, "the percentage header lowers the configured 100 % to 0 %");

    let r = Curl::new(&p.url("/delay")).header("x-envoy-fault-delay-request", "600").run();
    assert_eq!(r.status, 200);
    assert!(r.elapsed >= Duration::from_millis(600), "{:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_millis(3000), "{:?}", r.elapsed);
    let e = p.wait_access_log("header delay", |e| e.path == "/delay");
    assert!(e.has_flag("DI"), "{}", e.line);
    assert_eq!(a.requests().iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["/plain", "/abort-lowered", "/delay"]);
}

#[test]
fn faults_restricted_to_matching_headers() {
    let a = Origin::start("a");
    let f = yaml(
        r#"
        abort: { http_status: 503, percentage: { numerator: 100 } }
        headers: [{ name: x-chaos, string_match: { exact: "on" } }]
        "#,
    );
    let p = fault_proxy(&a, f, None);
    assert_eq!(curl(&p.url("/echo")).status, 200);
    assert_eq!(Curl::new(&p.url("/echo")).header("x-chaos", "off").run().status, 200);
    assert_eq!(Curl::new(&p.url("/echo")).header("x-chaos", "on").run().status, 503);
    assert_eq!(a.request_count(), 2);
}

fn mirror_proxy(primary: &Origin, shadow_endpoints: &[std::net::SocketAddr], mirror: Value) -> Proxy {
    let rc = json!({
        "name": "local",
        "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "primary", "request_mirror_policies": [mirror] } }],
        }],
    });
    Proxy::start(&http_bootstrap(free_port(), rc, vec![cluster("primary", &[primary.addr()]), cluster("shadow", shadow_endpoints)]), 1)
}

#[test]
fn mirror_gets_a_copy_with_a_shadow_host() {
    let primary = Origin::start("primary");
    let shadow = Origin::start("shadow");
    let p = mirror_proxy(&primary, &[shadow.addr()], json!({ "cluster": "shadow" }));
    let r = Curl::new(&p.url("/orders?id=7")).host("svc.test:8080").header("x-trace", "t1").run();
    assert_eq!((r.status, r.origin()), (200, Some("primary")), "the client's response comes from the primary");
    let seen = primary.requests();
    assert_eq!((seen.len(), seen[0].authority()), (1, Some("svc.test:8080")));
    let copy = assert_eventually("the mirror to receive the copy", Duration::from_secs(5), || shadow.requests().pop().ok_or("nothing yet".to_owned()));
    assert_eq!(copy.authority(), Some("svc.test-shadow:8080"));
    assert_eq!((copy.method.as_str(), copy.path.as_str(), copy.header("x-trace")), ("GET", "/orders?id=7", Some("t1")));

    // HTTP/2 downstream: the shadow authority is derived from :authority.
    let r = Curl::new(&p.url("/h2")).http2().host("svc.test").run();
    assert_eq!(r.origin(), Some("primary"));
    let copy = assert_eventually("the mirror to receive the HTTP/2 copy", Duration::from_secs(5), || {
        shadow.requests().into_iter().find(|r| r.path == "/h2").ok_or("nothing yet".to_owned())
    });
    assert_eq!(copy.authority(), Some("svc.test-shadow"));
}

#[test]
fn mirror_gets_a_chunked_request_body() {
    let primary = Origin::start("primary");
    let shadow = Origin::start("shadow");
    let p = mirror_proxy(&primary, &[shadow.addr()], json!({ "cluster": "shadow" }));
    let body = b"mirrored body \x00\x01\x02".repeat(1000);
    let r = Curl::new(&p.url("/orders")).header("transfer-encoding", "chunked").body(&body).run();
    assert_eq!((r.status, r.origin()), (200, Some("primary")));
    let copy = assert_eventually("the mirror to receive the copy", Duration::from_secs(5), || shadow.requests().pop().ok_or("nothing yet".to_owned()));
    assert_eq!(copy.method.as_str(), "POST");
    assert!(copy.body[..] == body[..], "the mirror got the whole body ({} of {} bytes)", copy.body.len(), body.len());
}

#[test]
fn mirror_gets_a_request_body_with_content_length() {
    let primary = Origin::start("primary");
    let shadow = Origin::start("shadow");
    let p = mirror_proxy(&primary, &[shadow.addr()], json!({ "cluster": "shadow" }));
    let body = b"mirrored body \x00\x01\x02".repeat(1000);
    let r = Curl::new(&p.url("/orders")).body(&body).run();
    assert_eq!((r.status, r.origin()), (200, Some("primary")));
    let copy = assert_eventually("the mirror to receive the POST", Duration::from_secs(5), || shadow.requests().pop().ok_or("nothing yet".to_owned()));
    assert!(copy.body[..] == body[..], "the mirror got the whole body ({} of {} bytes)", copy.body.len(), body.len());
    let r = Curl::new(&p.url("/h2")).http2().body(b"x").run();
    assert_eq!(r.status, 200);
    wait_until("the HTTP/2 POST to be mirrored", Duration::from_secs(5), || shadow.requests().iter().any(|r| r.path == "/h2"));
}

#[test]
fn a_slow_or_failing_mirror_does_not_affect_the_client() {
    let primary = Origin::start("primary");
    let shadow = Origin::start("shadow");
    let p = mirror_proxy(&primary, &[shadow.addr()], json!({ "cluster": "shadow" }));
    // The shadow takes 3 s and then fails; the primary answers at once.
    let r = curl(&p.url("/only/shadow/slow/k/1/3000"));
    assert_eq!((r.status, r.origin()), (200, Some("primary")));
    assert!(r.elapsed < Duration::from_millis(2000), "{:?}", r.elapsed);
    let r = curl(&p.url("/only/shadow/status/500"));
    assert_eq!((r.status, r.origin()), (200, Some("primary")));
    wait_until("the shadow to see both", Duration::from_secs(5), || shadow.request_count() == 2);

    let down = ports::closed_port_addr();
    let p = mirror_proxy(&primary, &[down], json!({ "cluster": "shadow" }));
    assert_eq!(curl(&p.url("/echo")).status, 200, "an unreachable mirror is ignored");
}

#[test]
fn mirror_fraction_zero_sends_nothing() {
    let primary = Origin::start("primary");
    let shadow = Origin::start("shadow");
    let p = mirror_proxy(&primary, &[shadow.addr()], json!({ "cluster": "shadow", "runtime_fraction": { "default_value": { "numerator": 0 } } }));
    let s = h2load(&["-n", "50", "-c", "1", &p.url("/echo")]);
    assert_eq!(s.status_2xx, 50, "{}", s.output);
    // A mirror that got a request would have seen it well within the time the
    // next check takes: send one to a 100 % mirror on the same proxy shape.
    let p2 = mirror_proxy(&primary, &[shadow.addr()], json!({ "cluster": "shadow" }));
    assert_eq!(curl(&p2.url("/marker")).status, 200);
    wait_until("the 100 % mirror to deliver", Duration::from_secs(5), || shadow.request_count() >= 1);
    assert_eq!(shadow.requests().iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), ["/marker"], "nothing from the 0 % mirror");
}
