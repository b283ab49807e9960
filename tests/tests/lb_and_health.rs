//! Load balancing (round robin, least request, ring hash), outlier detection and
//! circuit breaking, observed from which origin answered.

use std::time::Duration;

use serde_json::{json, Value};
use tests::*;

fn proxy(cluster_config: Value, route: Value) -> Proxy {
    Proxy::start(&http_bootstrap(free_port(), route_all_to("c", route), vec![cluster_config]), 1)
}

fn addrs(origins: &[&Origin]) -> Vec<std::net::SocketAddr> {
    origins.iter().map(|o| o.addr()).collect()
}

#[test]
fn round_robin_spreads_evenly() {
    let (a, b, c) = (Origin::start("a"), Origin::start("b"), Origin::start("c"));
    let p = proxy(cluster("c", &addrs(&[&a, &b, &c])), json!({}));
    let s = h2load(&["-n", "300", "-c", "2", "-m", "4", &p.url("/echo")]);
    assert_eq!(s.succeeded, 300, "{}", s.output);
    let counts = [a.request_count(), b.request_count(), c.request_count()];
    assert_eq!(counts, [100, 100, 100], "round robin gives each endpoint every third request");
}

/// Starts GETs of `path` in the background until one is being held by `origin`
/// (the others land elsewhere and finish at once). Returns the held request's thread.
fn hold_a_request_on(p: &Proxy, origin: &Origin, path: &str) -> Vec<std::thread::JoinHandle<CurlResponse>> {
    let mut started = Vec::new();
    for _ in 0..30 {
        let url = p.url(path);
        let handle = std::thread::spawn(move || curl(&url));
        started.push(handle);
        let held = assert_eventually("the request to land somewhere", Duration::from_secs(5), || {
            if !origin.requests_to(path).is_empty() {
                return Ok(true);
            }
            if started.last().is_some_and(|h| h.is_finished()) {
                return Ok(false);
            }
            Err("in flight".into())
        });
        if held {
            return started;
        }
    }
    panic!("30 requests and none landed on {}", origin.name());
}

#[test]
fn least_request_avoids_the_busy_endpoint() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let c = merge(cluster("c", &addrs(&[&a, &b])), json!({ "lb_policy": "LEAST_REQUEST", "least_request_lb_config": { "choice_count": 10 } }));
    let p = proxy(c, json!({}));
    let held = hold_a_request_on(&p, &a, "/only/a/delay/2000");
    // a has one request in flight, b none: with 10 choices, a is picked only if all
    // ten land on it (1/1024). Round robin would send it half.
    let s = h2load(&["-n", "40", "-c", "1", "-m", "1", &p.url("/echo")]);
    assert_eq!(s.succeeded, 40, "{}", s.output);
    let (to_a, to_b) = (a.requests_to("/echo").len(), b.requests_to("/echo").len());
    assert_eq!(to_a + to_b, 40);
    assert!(to_a <= 2, "least request sent {to_a} of 40 requests to the endpoint with one in flight (b got {to_b})");
    for h in held {
        assert_eq!(h.join().unwrap().status, 200);
    }
}

#[test]
fn ring_hash_keeps_a_key_on_one_endpoint() {
    let origins = [Origin::start("a"), Origin::start("b"), Origin::start("c")];
    let c = merge(cluster("c", &origins.iter().map(Origin::addr).collect::<Vec<_>>()), json!({ "lb_policy": "RING_HASH" }));
    let p = proxy(c, json!({ "hash_policy": [{ "header": { "header_name": "x-user" } }] }));
    let mut used = std::collections::BTreeSet::new();
    for user in 0..12 {
        let mut answered = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let r = Curl::new(&p.url("/echo")).header("x-user", &format!("user-{user}")).run();
            assert_eq!(r.status, 200);
            answered.insert(r.origin().unwrap_or("?").to_owned());
        }
        assert_eq!(answered.len(), 1, "user-{user} was served by {answered:?}");
        used.extend(answered);
    }
    assert!(used.len() >= 2, "12 keys all hashed to {used:?}");
}

#[test]
fn outlier_detection_ejects_an_endpoint_after_consecutive_5xx() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let c = merge(
        cluster("c", &addrs(&[&a, &b])),
        yaml(
            r#"
            outlier_detection:
              consecutive_5xx: 3
              interval: 1s
              base_ejection_time: 30s
              max_ejection_percent: 100
            "#,
        ),
    );
    let p = proxy(c, json!({}));
    // a answers 500 on this path, b 200. Round robin alternates, so a's third 500
    // comes within the first six requests; then it is ejected.
    let s = h2load(&["-n", "26", "-c", "1", "-m", "1", &p.url("/only/a/status/500")]);
    assert_eq!((s.status_5xx, s.status_2xx), (3, 23), "{}", s.output);
    assert_eq!(a.request_count(), 3, "no request reached a after its third consecutive 5xx");
    assert_eq!(b.request_count(), 23);
    assert_eq!(p.metric("envoy_cluster_outlier_detection_ejections_active", &[("cluster_name", "c")]), 1.0);
    assert_eq!(p.metric("envoy_cluster_outlier_detection_ejections_enforced_consecutive_5xx", &[("cluster_name", "c")]), 1.0);
    assert_eq!(p.metric("envoy_cluster_membership_healthy", &[("cluster_name", "c")]), 1.0);
    // Still ejected after a few outlier intervals (base_ejection_time is 30 s).
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        assert_eq!(curl(&p.url("/echo")).origin(), Some("b"));
    }
    assert_eq!(a.request_count(), 3);
}

#[test]
fn circuit_breaker_max_requests_overflows_with_uo() {
    let a = Origin::start("a");
    let c = merge(cluster("c", &[a.addr()]), json!({ "circuit_breakers": { "thresholds": [{ "max_requests": 1 }] } }));
    let p = proxy(c, json!({}));
    let url = p.url("/delay/1000");
    let first = std::thread::spawn(move || curl(&url));
    wait_until("the first request to reach the origin", Duration::from_secs(5), || a.request_count() == 1);
    let second = curl(&p.url("/delay/1000?second"));
    assert_eq!(second.status, 503, "{}", second.text());
    assert!(second.elapsed < Duration::from_millis(900), "refused at once, not queued: {:?}", second.elapsed);
    let first = first.join().unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(a.request_count(), 1, "the overflowing request never reached the origin");
    let e = p.wait_access_log("overflow", |e| e.path == "/delay/1000?second");
    assert_eq!((e.code, e.flags.as_str()), (503, "UO"));
    // The slot is released with the first response.
    assert_eq!(curl(&p.url("/echo")).status, 200);
}
