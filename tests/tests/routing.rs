//! Routing: virtual host selection by Host/:authority, route matching (path,
//! headers, query parameters, case), direct responses, redirects, path and host
//! rewrites, header mutations at every level, weighted clusters.

use serde_json::{json, Value};
use tests::*;

/// A proxy with one HTTP listener serving `route_config`.
fn proxy(route_config: Value, clusters: Vec<Value>) -> Proxy {
    Proxy::start(&http_bootstrap(free_port(), route_config, clusters), 1)
}

fn body_for(proxy: &Proxy, host: &str, path: &str) -> String {
    let r = Curl::new(&proxy.url(path)).host(host).run();
    assert_eq!(r.status, 200, "Host {host} {path}: {} {}", r.status, r.text());
    r.text()
}

/// A virtual host answering every request with its own name.
fn named_vhost(name: &str, domains: &[&str]) -> Value {
    json!({
        "name": name,
        "domains": domains,
        "routes": [{ "match": { "prefix": "/" }, "direct_response": { "status": 200, "body": { "inline_string": name } } }],
    })
}

fn vhost_table(ignore_port: bool) -> Value {
    json!({
        "name": "hosts",
        "ignore_port_in_host_matching": ignore_port,
        "virtual_hosts": [
            named_vhost("default", &["*"]),
            named_vhost("exact", &["exact.test"]),
            named_vhost("with-port", &["ported.test:8080"]),
            named_vhost("suffix-short", &["*.suffix.test"]),
            named_vhost("suffix-long", &["*.long.suffix.test"]),
            named_vhost("prefix", &["prefix.*"]),
        ],
    })
}

#[test]
fn virtual_host_is_chosen_by_host_header() {
    let p = proxy(vhost_table(false), vec![]);
    for (host, expected) in [
        ("exact.test", "exact"),
        ("EXACT.Test", "exact"),
        ("exact.test:8080", "default"),
        ("ported.test:8080", "with-port"),
        ("ported.test", "default"),
        ("a.suffix.test", "suffix-short"),
        ("a.b.suffix.test", "suffix-short"),
        ("x.long.suffix.test", "suffix-long"),
        ("suffix.test", "default"),
        ("prefix.anything", "prefix"),
        ("prefix.", "default"),
        ("a.suffix.test.other", "default"),
        ("other.test", "default"),
    ] {
        assert_eq!(body_for(&p, host, "/"), expected, "Host: {host}");
    }
}

#[test]
fn virtual_host_is_chosen_by_http2_authority() {
    let p = proxy(vhost_table(false), vec![]);
    for (host, expected) in [("exact.test", "exact"), ("x.long.suffix.test", "suffix-long"), ("prefix.example", "prefix"), ("nope", "default")] {
        let r = Curl::new(&p.url("/")).http2().host(host).run();
        assert_eq!((r.status, r.http_version.as_str(), r.text().as_str()), (200, "2", expected), ":authority {host}");
    }
}

#[test]
fn ignore_port_in_host_matching_strips_the_port() {
    let p = proxy(vhost_table(true), vec![]);
    assert_eq!(body_for(&p, "exact.test:8080", "/"), "exact");
    assert_eq!(body_for(&p, "a.suffix.test:1234", "/"), "suffix-short");
    assert_eq!(body_for(&p, "exact.test", "/"), "exact");
}

#[test]
fn no_matching_virtual_host_or_route_is_404_with_nr() {
    let rc = yaml(
        r#"
        name: only
        virtual_hosts:
        - name: only
          domains: ["only.test"]
          routes:
          - name: api
            match: { prefix: /api }
            direct_response: { status: 200, body: { inline_string: api } }
        "#,
    );
    let p = proxy(rc, vec![]);
    let r = Curl::new(&p.url("/api")).host("other.test").run();
    assert_eq!((r.status, r.body.len()), (404, 0), "unknown host: {}", r.text());
    let e = p.wait_access_log("no virtual host", |e| e.authority == "other.test");
    assert_eq!((e.code, e.flags.as_str(), e.details.as_str()), (404, "NR", "route_not_found"));

    let r = Curl::new(&p.url("/other")).host("only.test").run();
    assert_eq!((r.status, r.body.len()), (404, 0), "no route: {}", r.text());
    let e = p.wait_access_log("no route", |e| e.path == "/other");
    assert_eq!((e.code, e.flags.as_str(), e.details.as_str()), (404, "NR", "route_not_found"));
    assert_eq!(p.metric("istio_requests_total", &[("response_code", "404"), ("response_flags", "NR")]), 2.0);

    assert_eq!(body_for(&p, "only.test", "/api/x"), "api");
}

fn direct(name: &str) -> Value {
    json!({ "status": 200, "body": { "inline_string": name } })
}

#[test]
fn path_matchers() {
    let rc = json!({
        "name": "paths",
        "virtual_hosts": [{
            "name": "all",
            "domains": ["*"],
            "routes": [
                { "match": { "path": "/exact" }, "direct_response": direct("exact") },
                { "match": { "path_separated_prefix": "/sep" }, "direct_response": direct("separated") },
                { "match": { "safe_regex": { "regex": "/re/[0-9]+" } }, "direct_response": direct("regex") },
                { "match": { "prefix": "/CI", "case_sensitive": false }, "direct_response": direct("case-insensitive") },
                { "match": { "path": "/Exact-CI", "case_sensitive": false }, "direct_response": direct("exact-case-insensitive") },
                { "match": { "prefix": "/pre" }, "direct_response": direct("prefix") },
                { "match": { "prefix": "/" }, "direct_response": direct("fallback") },
            ],
        }],
    });
    let p = proxy(rc, vec![]);
    for (path, expected) in [
        ("/exact", "exact"),
        ("/exact?x=1", "exact"),
        ("/exact/", "fallback"),
        ("/exactly", "fallback"),
        ("/Exact", "fallback"),
        ("/sep", "separated"),
        ("/sep/", "separated"),
        ("/sep/x/y", "separated"),
        ("/sep?q", "separated"),
        ("/sepx", "fallback"),
        ("/re/123", "regex"),
        ("/re/123?x=y", "regex"),
        ("/re/12a", "fallback"),
        ("/re/123/x", "fallback"),
        ("/ci/x", "case-insensitive"),
        ("/Ci", "case-insensitive"),
        ("/exact-ci", "exact-case-insensitive"),
        ("/EXACT-CI", "exact-case-insensitive"),
        ("/pre", "prefix"),
        ("/prefix/x", "prefix"),
        ("/PRE", "fallback"),
        ("/", "fallback"),
    ] {
        assert_eq!(body_for(&p, "any", path), expected, "path {path}");
    }
}

#[test]
fn header_method_and_query_matchers() {
    let rc = yaml(
        r#"
        name: headers
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: { prefix: /, headers: [{ name: x-exact, string_match: { exact: v1 } }] }
            direct_response: { status: 200, body: { inline_string: header-exact } }
          - match: { prefix: /, headers: [{ name: x-ci, string_match: { exact: MiXeD, ignore_case: true } }] }
            direct_response: { status: 200, body: { inline_string: header-ignore-case } }
          - match: { prefix: /, headers: [{ name: x-prefix, string_match: { prefix: ab } }, { name: x-suffix, string_match: { suffix: yz } }] }
            direct_response: { status: 200, body: { inline_string: header-prefix-and-suffix } }
          - match: { prefix: /, headers: [{ name: x-regex, string_match: { safe_regex: { regex: "v[0-9]+" } } }] }
            direct_response: { status: 200, body: { inline_string: header-regex } }
          - match: { prefix: /, headers: [{ name: x-range, range_match: { start: 10, end: 20 } }] }
            direct_response: { status: 200, body: { inline_string: header-range } }
          - match: { prefix: /, headers: [{ name: x-not, string_match: { exact: "no" }, invert_match: true }] }
            direct_response: { status: 200, body: { inline_string: header-inverted } }
          - match: { prefix: /, headers: [{ name: x-want, present_match: true }, { name: x-unwanted, present_match: true, invert_match: true }] }
            direct_response: { status: 200, body: { inline_string: present-and-absent } }
          - match: { prefix: /, headers: [{ name: ":method", string_match: { exact: DELETE } }] }
            direct_response: { status: 200, body: { inline_string: method-delete } }
          - match: { prefix: /, query_parameters: [{ name: q, string_match: { exact: "1" } }] }
            direct_response: { status: 200, body: { inline_string: query-exact } }
          - match: { prefix: /, query_parameters: [{ name: flag, present_match: true }] }
            direct_response: { status: 200, body: { inline_string: query-present } }
          - match: { prefix: / }
            direct_response: { status: 200, body: { inline_string: fallback } }
        "#,
    );
    let p = proxy(rc, vec![]);
    /// (request headers, method, path, the route that should answer)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, &'a str);
    let cases: &[Case] = &[
        (&[("x-exact", "v1")], "GET", "/", "header-exact"),
        (&[("x-exact", "v2")], "GET", "/", "fallback"),
        (&[("x-exact", "V1")], "GET", "/", "fallback"),
        (&[("x-ci", "mixed")], "GET", "/", "header-ignore-case"),
        (&[("x-prefix", "abc"), ("x-suffix", "xyz")], "GET", "/", "header-prefix-and-suffix"),
        (&[("x-prefix", "abc")], "GET", "/", "fallback"),
        (&[("x-regex", "v42")], "GET", "/", "header-regex"),
        (&[("x-regex", "v42x")], "GET", "/", "fallback"),
        (&[("x-range", "15")], "GET", "/", "header-range"),
        (&[("x-range", "20")], "GET", "/", "fallback"),
        (&[("x-range", "abc")], "GET", "/", "fallback"),
        (&[("x-not", "yes")], "GET", "/", "header-inverted"),
        (&[("x-not", "no")], "GET", "/", "fallback"),
        (&[], "GET", "/", "fallback"),
        (&[("x-want", "1")], "GET", "/", "present-and-absent"),
        (&[("x-want", "1"), ("x-unwanted", "1")], "GET", "/", "fallback"),
        (&[], "DELETE", "/", "method-delete"),
        (&[], "GET", "/?q=1", "query-exact"),
        (&[], "GET", "/?a=b&q=1", "query-exact"),
        (&[], "GET", "/?q=2", "fallback"),
        (&[], "GET", "/?flag", "query-present"),
        (&[], "GET", "/?flag=x", "query-present"),
        (&[], "GET", "/?flags=x", "fallback"),
    ];
    for (headers, method, path, expected) in cases {
        let mut c = Curl::new(&p.url(path)).method(method);
        for (k, v) in *headers {
            c = c.header(k, v);
        }
        let r = c.run();
        assert_eq!((r.status, r.text().as_str()), (200, *expected), "{method} {path} {headers:?}");
    }
}

#[test]
fn direct_response_status_and_body() {
    let rc = yaml(
        r#"
        name: direct
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - name: teapot
            match: { path: /teapot }
            direct_response: { status: 418, body: { inline_string: "I'm a teapot\n" } }
          - match: { path: /empty }
            direct_response: { status: 204 }
          - match: { path: /unavailable }
            direct_response: { status: 503, body: { inline_string: "down for maintenance" } }
        "#,
    );
    let p = proxy(rc, vec![]);
    let r = curl(&p.url("/teapot"));
    assert_eq!((r.status, r.text().as_str()), (418, "I'm a teapot\n"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let e = p.wait_access_log("teapot", |e| e.path == "/teapot");
    assert_eq!((e.code, e.details.as_str(), e.route_name.as_str(), e.upstream_host.as_str()), (418, "direct_response", "teapot", "-"));
    let r = curl(&p.url("/empty"));
    assert_eq!((r.status, r.body.len()), (204, 0));
    let r = Curl::new(&p.url("/unavailable")).http2().run();
    assert_eq!((r.status, r.text().as_str()), (503, "down for maintenance"));
}

#[test]
fn redirects() {
    let rc = yaml(
        r#"
        name: redirects
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: { prefix: /secure }
            redirect: { https_redirect: true }
          - match: { prefix: /old/ }
            redirect: { prefix_rewrite: /new/, response_code: FOUND }
          - match: { prefix: /strip }
            redirect: { path_redirect: /target, strip_query: true }
          - match: { prefix: /keepquery }
            redirect: { path_redirect: /target }
          - match: { prefix: /elsewhere }
            redirect: { host_redirect: other.test, port_redirect: 8443, scheme_redirect: https, response_code: PERMANENT_REDIRECT }
          - match: { prefix: /see-other }
            redirect: { path_redirect: /done, response_code: SEE_OTHER }
          - match: { prefix: /temporary }
            redirect: { regex_rewrite: { pattern: { regex: "^/temporary/(.*)$" }, substitution: "/t/\\1" }, response_code: TEMPORARY_REDIRECT }
        "#,
    );
    let p = proxy(rc, vec![]);
    for (path, status, location) in [
        ("/secure/a?q=1", 301, "https://www.test/secure/a?q=1"),
        ("/old/x/y?q=1", 302, "http://www.test/new/x/y?q=1"),
        ("/strip?q=1&r=2", 301, "http://www.test/target"),
        ("/keepquery?q=1", 301, "http://www.test/target?q=1"),
        ("/elsewhere?a", 308, "https://other.test:8443/elsewhere?a"),
        ("/see-other", 303, "http://www.test/done"),
        ("/temporary/a/b", 307, "http://www.test/t/a/b"),
    ] {
        let r = Curl::new(&p.url(path)).host("www.test").run();
        assert_eq!((r.status, r.header("location")), (status, Some(location)), "{path}");
    }
    // A scheme change drops the old scheme's default port, keeps any other.
    let r = Curl::new(&p.url("/secure")).host("www.test:80").run();
    assert_eq!(r.header("location"), Some("https://www.test/secure"));
    let r = Curl::new(&p.url("/secure")).host("www.test:8080").run();
    assert_eq!(r.header("location"), Some("https://www.test:8080/secure"));
}

#[test]
fn prefix_and_regex_rewrites_reach_the_origin() {
    let a = Origin::start("a");
    let rc = yaml(
        r#"
        name: rewrites
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: { prefix: /api/v1/ }
            route: { cluster: a, prefix_rewrite: /v2/ }
          - match: { prefix: /svc/ }
            route:
              cluster: a
              regex_rewrite: { pattern: { regex: "^/svc/([^/]+)/(.*)$" }, substitution: "/\\2/instance/\\1" }
          - match: { prefix: / }
            route: { cluster: a }
        "#,
    );
    let p = proxy(rc, vec![cluster("a", &[a.addr()])]);

    let r = curl(&p.url("/api/v1/items?x=1"));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = a.requests().pop().unwrap();
    assert_eq!(seen.path, "/v2/items?x=1");
    assert_eq!(seen.header("x-envoy-original-path"), Some("/api/v1/items?x=1"));
    let e = p.wait_access_log("rewritten request", |e| e.path.starts_with("/api/v1/"));
    assert_eq!(e.path, "/api/v1/items?x=1", "the access log shows the original path");

    let r = Curl::new(&p.url("/svc/foo/bar/baz?q=2")).http2().run();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = a.requests().pop().unwrap();
    assert_eq!(seen.path, "/bar/baz/instance/foo?q=2");
    assert_eq!(seen.header("x-envoy-original-path"), Some("/svc/foo/bar/baz?q=2"));

    assert_eq!(curl(&p.url("/plain")).status, 200);
    let seen = a.requests().pop().unwrap();
    assert_eq!(seen.path, "/plain");
    assert_eq!(seen.header("x-envoy-original-path"), None, "no rewrite, no x-envoy-original-path");
}

#[test]
fn host_rewrite_literal() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let rc = yaml(
        r#"
        name: hosts
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: { prefix: /h1 }
            route: { cluster: a, host_rewrite_literal: rewritten.test }
          - match: { prefix: /h2 }
            route: { cluster: b, host_rewrite_literal: rewritten-h2.test }
          - match: { prefix: / }
            route: { cluster: a }
        "#,
    );
    let p = proxy(rc, vec![cluster("a", &[a.addr()]), h2_cluster("b", &[b.addr()])]);
    assert_eq!(Curl::new(&p.url("/h1")).host("original.test").run().status, 200);
    assert_eq!(a.requests().pop().unwrap().authority(), Some("rewritten.test"));
    assert_eq!(Curl::new(&p.url("/h2")).host("original.test").run().status, 200);
    let seen = b.requests().pop().unwrap();
    assert_eq!((seen.version, seen.authority()), (http::Version::HTTP_2, Some("rewritten-h2.test")), "HTTP/2 upstream gets it as :authority");
    assert_eq!(Curl::new(&p.url("/other")).host("original.test").run().status, 200);
    assert_eq!(a.requests().pop().unwrap().authority(), Some("original.test"));
}

#[test]
fn header_mutations_at_route_virtual_host_and_route_config_level() {
    let a = Origin::start("a");
    let rc = yaml(
        r#"
        name: mutations
        request_headers_to_add:
        - { header: { key: x-level, value: table }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
        - { header: { key: x-append, value: table }, append_action: APPEND_IF_EXISTS_OR_ADD }
        response_headers_to_add:
        - { header: { key: x-resp-level, value: table }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
        - { header: { key: x-resp-append, value: table } }
        virtual_hosts:
        - name: all
          domains: ["*"]
          request_headers_to_add:
          - { header: { key: x-level, value: vhost }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
          - { header: { key: x-append, value: vhost }, append_action: APPEND_IF_EXISTS_OR_ADD }
          - { header: { key: x-vhost-only, value: "yes" } }
          response_headers_to_add:
          - { header: { key: x-resp-level, value: vhost }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
          - { header: { key: x-resp-append, value: vhost } }
          routes:
          - match: { prefix: / }
            route: { cluster: a }
            request_headers_to_add:
            - { header: { key: x-level, value: route }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
            - { header: { key: x-append, value: route }, append_action: APPEND_IF_EXISTS_OR_ADD }
            - { header: { key: x-if-absent, value: proxy }, append_action: ADD_IF_ABSENT }
            - { header: { key: x-overwrite-if-exists, value: proxy }, append_action: OVERWRITE_IF_EXISTS }
            - { header: { key: x-only-if-exists, value: proxy }, append_action: OVERWRITE_IF_EXISTS }
            - { header: { key: x-legacy-set, value: proxy }, append: false }
            - { header: { key: x-empty, value: "" } }
            request_headers_to_remove: [x-remove-me]
            response_headers_to_add:
            - { header: { key: x-resp-level, value: route }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
            - { header: { key: x-resp-append, value: route } }
            - { header: { key: x-origin, value: overwritten }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
            response_headers_to_remove: [x-origin-attempt]
        "#,
    );
    let p = proxy(rc, vec![cluster("a", &[a.addr()])]);
    let r = Curl::new(&p.url("/fail/k/0/200"))
        .header("x-level", "client")
        .header("x-append", "client")
        .header("x-if-absent", "client")
        .header("x-overwrite-if-exists", "client")
        .header("x-legacy-set", "client")
        .header("x-remove-me", "client")
        .run();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = a.requests().pop().unwrap();
    assert_eq!(seen.header_all("x-level"), ["table"], "the most general level is applied last");
    assert_eq!(seen.header_all("x-append"), ["client", "route", "vhost", "table"]);
    assert_eq!(seen.header_all("x-vhost-only"), ["yes"]);
    assert_eq!(seen.header_all("x-if-absent"), ["client"]);
    assert_eq!(seen.header_all("x-overwrite-if-exists"), ["proxy"]);
    assert!(seen.header("x-only-if-exists").is_none(), "OVERWRITE_IF_EXISTS does not add");
    assert_eq!(seen.header_all("x-legacy-set"), ["proxy"], "append: false overwrites");
    assert!(seen.header("x-empty").is_none(), "empty values are not added");
    assert!(seen.header("x-remove-me").is_none());

    assert_eq!(r.header_all("x-resp-level"), ["table"]);
    assert_eq!(r.header_all("x-resp-append"), ["route", "vhost", "table"]);
    assert_eq!(r.header_all("x-origin"), ["overwritten"]);
    assert!(r.header("x-origin-attempt").is_none(), "response_headers_to_remove");

    // Without the client's headers: ADD_IF_ABSENT adds, OVERWRITE_IF_EXISTS still does not.
    assert_eq!(curl(&p.url("/")).status, 200);
    let seen = a.requests().pop().unwrap();
    assert_eq!(seen.header_all("x-if-absent"), ["proxy"]);
    assert!(seen.header("x-overwrite-if-exists").is_none());
    assert_eq!(seen.header_all("x-append"), ["route", "vhost", "table"]);
}

#[test]
fn direct_responses_and_redirects_get_response_headers() {
    let rc = yaml(
        r#"
        name: local
        response_headers_to_add: [{ header: { key: x-table, value: t } }]
        virtual_hosts:
        - name: all
          domains: ["*"]
          response_headers_to_add: [{ header: { key: x-vhost, value: v } }]
          routes:
          - match: { path: /direct }
            direct_response: { status: 200, body: { inline_string: ok } }
            response_headers_to_add: [{ header: { key: x-route, value: r } }]
          - match: { path: /redirect }
            redirect: { path_redirect: /elsewhere }
            response_headers_to_add: [{ header: { key: x-route, value: r } }]
        "#,
    );
    let p = proxy(rc, vec![]);
    for path in ["/direct", "/redirect"] {
        let r = curl(&p.url(path));
        assert_eq!((r.header("x-route"), r.header("x-vhost"), r.header("x-table")), (Some("r"), Some("v"), Some("t")), "{path}");
    }
}

#[test]
fn weighted_clusters_split_80_20() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let rc = yaml(
        r#"
        name: split
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: { prefix: / }
            route:
              weighted_clusters:
                clusters:
                - { name: a, weight: 80, request_headers_to_add: [{ header: { key: x-weighted, value: a } }] }
                - { name: b, weight: 20, request_headers_to_add: [{ header: { key: x-weighted, value: b } }] }
        "#,
    );
    let p = proxy(rc, vec![cluster("a", &[a.addr()]), cluster("b", &[b.addr()])]);
    let n = 2000u64;
    let s = h2load(&["-n", &n.to_string(), "-c", "4", "-m", "8", &p.url("/echo")]);
    assert_eq!((s.succeeded, s.status_2xx), (n, n), "{}", s.output);
    let (to_a, to_b) = (a.request_count() as f64, b.request_count() as f64);
    assert_eq!(to_a + to_b, n as f64);
    // Binomial(n, 0.2): mean 400, sd ~17.9; 5 sigma either way.
    let (mean, sd) = (n as f64 * 0.2, (n as f64 * 0.2 * 0.8).sqrt());
    assert!((to_b - mean).abs() <= 5.0 * sd, "b got {to_b} of {n}, expected {mean} ± {:.0}", 5.0 * sd);
    assert!(a.requests().iter().all(|r| r.header("x-weighted") == Some("a")), "weighted cluster headers go with their cluster");
    assert!(b.requests().iter().all(|r| r.header("x-weighted") == Some("b")));
}
