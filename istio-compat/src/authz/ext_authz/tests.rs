#![allow(deprecated)] // the fields istiod and providers still use (allowed_headers in authorization_request, append)

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use xds_client::pb::envoy::config::core::v3 as core;
use xds_client::pb::envoy::extensions::filters::http::ext_authz::v3 as http_pb;
use xds_client::pb::envoy::r#type::matcher::v3 as matcher;
use xds_client::pb::envoy::service::auth::v3 as auth;

use super::*;
use crate::authz::rbac::{rbac_from_http, Request};

fn exact(s: &str, ignore_case: bool) -> matcher::StringMatcher {
    matcher::StringMatcher { match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(s.into())), ignore_case }
}

fn prefix(s: &str) -> matcher::StringMatcher {
    matcher::StringMatcher { match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix(s.into())), ignore_case: true }
}

fn list(ms: Vec<matcher::StringMatcher>) -> Option<matcher::ListStringMatcher> {
    Some(matcher::ListStringMatcher { patterns: ms })
}

/// istiod's `filter_enabled_metadata` for the HTTP filter.
fn istio_enabled_metadata() -> matcher::MetadataMatcher {
    use matcher::metadata_matcher::{path_segment::Segment, PathSegment};
    matcher::MetadataMatcher {
        filter: HTTP_RBAC_NAMESPACE.into(),
        path: vec![PathSegment { segment: Some(Segment::Key("istio_ext_authz_shadow_effective_policy_id".into())) }],
        value: Some(matcher::ValueMatcher {
            match_pattern: Some(matcher::value_matcher::MatchPattern::StringMatch(matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix("istio-ext-authz".into())),
                ignore_case: false,
            })),
        }),
        invert: false,
    }
}

/// The shape of the corpus's custom-http-provider-out2.yaml.
fn istio_http() -> http_pb::ExtAuthz {
    http_pb::ExtAuthz {
        allowed_headers: list(vec![exact("x-custom-id", true), prefix("x-prefix-")]),
        failure_mode_allow: false,
        filter_enabled_metadata: Some(istio_enabled_metadata()),
        services: Some(http_pb::ext_authz::Services::HttpService(http_pb::HttpService {
            server_uri: Some(core::HttpUri {
                uri: "http://authz.foo.svc.cluster.local".into(),
                timeout: Some(xds_client::pb::google::protobuf::Duration { seconds: 10, nanos: 0 }),
                http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster("outbound|9000||authz.foo.svc.cluster.local".into())),
            }),
            path_prefix: "/check".into(),
            authorization_request: Some(http_pb::AuthorizationRequest {
                allowed_headers: None,
                headers_to_add: vec![core::HeaderValue { key: "x-header-1".into(), value: "value-1".into(), raw_value: vec![] }],
            }),
            authorization_response: Some(http_pb::AuthorizationResponse {
                allowed_upstream_headers: list(vec![exact("authorization", true), prefix("x-prefix-")]),
                allowed_client_headers: list(vec![exact("set-cookie", true), prefix("x-prefix-")]),
                allowed_client_headers_on_success: list(vec![exact("set-cookie", true)]),
                ..Default::default()
            }),
            ..Default::default()
        })),
        transport_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

fn istio_grpc() -> http_pb::ExtAuthz {
    http_pb::ExtAuthz {
        failure_mode_allow: true,
        filter_enabled_metadata: Some(istio_enabled_metadata()),
        services: Some(http_pb::ext_authz::Services::GrpcService(core::GrpcService {
            timeout: Some(xds_client::pb::google::protobuf::Duration { seconds: 0, nanos: 2_000_000 }),
            target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(core::grpc_service::EnvoyGrpc {
                cluster_name: "outbound|9000||authz.foo.svc.cluster.local".into(),
                authority: "authz.foo.svc.cluster.local".into(),
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn translates_istiods_http_provider() {
    let a = ext_authz_from_http(&istio_http(), 1).unwrap();
    let AuthzService::Http(svc) = &a.service else { panic!("{a:?}") };
    assert_eq!(svc.cluster, "outbound|9000||authz.foo.svc.cluster.local");
    assert_eq!(svc.timeout, Some(Duration::from_secs(10)));
    assert_eq!(svc.path_prefix, "/check");
    assert_eq!(svc.headers_to_add, vec![("x-header-1".to_owned(), "value-1".to_owned())]);
    assert_eq!(a.status_on_error, 403);
    assert_eq!(a.rbac_before, 1);
    // The HTTP service always sees authorization, :method, :path, :authority.
    for h in ["x-custom-id", "x-prefix-a", "authorization", ":method", ":path", ":authority"] {
        assert!(a.header_allowed(h), "{h}");
    }
    assert!(!a.header_allowed("cookie"));
    // It prints and reads back in the same form (/config_dump, local YAML).
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(serde_json::from_str::<ExtAuthz>(&json).unwrap(), a);
}

#[test]
fn translates_istiods_grpc_provider() {
    let a = ext_authz_from_http(&istio_grpc(), 1).unwrap();
    let AuthzService::Grpc(g) = &a.service else { panic!("{a:?}") };
    assert_eq!(g.authority, "authz.foo.svc.cluster.local");
    assert_eq!(g.timeout, Some(Duration::from_millis(2)));
    assert!(a.failure_mode_allow);
    assert!(a.allowed_headers.is_none(), "gRPC without allowed_headers sees every header");
    assert!(a.header_allowed("cookie"));
}

#[test]
fn refuses_what_it_cannot_honour() {
    let mut f = istio_http();
    f.metadata_context_namespaces = vec!["envoy.filters.http.jwt_authn".into()];
    assert_eq!(ext_authz_from_http(&f, 0).unwrap_err().path, "metadata_context_namespaces");
    let mut f = istio_grpc();
    f.transport_api_version = core::ApiVersion::V2 as i32;
    assert_eq!(ext_authz_from_http(&f, 0).unwrap_err().path, "transport_api_version");
    let mut f = istio_grpc();
    f.services = Some(http_pb::ext_authz::Services::GrpcService(core::GrpcService {
        target_specifier: Some(core::grpc_service::TargetSpecifier::GoogleGrpc(Default::default())),
        ..Default::default()
    }));
    assert_eq!(ext_authz_from_http(&f, 0).unwrap_err().path, "grpc_service.google_grpc");
    let mut f = istio_http();
    if let Some(http_pb::ext_authz::Services::HttpService(h)) = &mut f.services {
        h.authorization_request.as_mut().unwrap().allowed_headers = list(vec![exact("a", false)]);
    }
    assert_eq!(ext_authz_from_http(&f, 0).unwrap_err().path, "allowed_headers", "both allowed_headers lists set");
    let mut f = istio_http();
    f.services = None;
    assert_eq!(ext_authz_from_http(&f, 0).unwrap_err().path, "services");
}

#[test]
fn status_on_error_defaults_to_403_and_keeps_valid_codes() {
    let mut f = istio_grpc();
    f.status_on_error = Some(xds_client::pb::envoy::r#type::v3::HttpStatus { code: 503 });
    assert_eq!(ext_authz_from_http(&f, 0).unwrap().error_status(), StatusCode::SERVICE_UNAVAILABLE);
    f.status_on_error = Some(xds_client::pb::envoy::r#type::v3::HttpStatus { code: 0 });
    assert_eq!(ext_authz_from_http(&f, 0).unwrap().error_status(), StatusCode::FORBIDDEN);
}

/// istiod's shadow RBAC for CUSTOM: `/custom` is selected, nothing else.
fn custom_shadow_rbac() -> Rbac {
    let yaml = r#"
shadowRules:
  action: DENY
  policies:
    istio-ext-authz-ns[foo]-policy[ext]-rule[0]:
      permissions: [{urlPath: {path: {exact: /custom}}}]
      principals: [{any: true}]
shadowRulesStatPrefix: istio_ext_authz_
"#;
    let value = xds_client::protojson::parse_yaml_or_json(yaml).unwrap();
    let pb = xds_client::protojson::from_json::<xds_client::pb::envoy::extensions::filters::http::rbac::v3::Rbac>(value).unwrap().message;
    rbac_from_http(&pb).unwrap()
}

fn request<'a>(method: &'a Method, path: &'a str, h: &'a HeaderMap) -> Request<'a> {
    let peer: SocketAddr = "198.18.0.10:40000".parse().unwrap();
    let mut r = Request::tcp(peer, "198.18.0.20:8080".parse().unwrap());
    r.http = Some(crate::model::route::RequestHead { method, authority: "svc", path, scheme: "http", headers: h });
    r
}

#[test]
fn the_shadow_policy_id_enables_the_check() {
    let a = ext_authz_from_http(&istio_grpc(), 1).unwrap();
    let rbac = [custom_shadow_rbac()];
    let h = HeaderMap::new();
    let get = Method::GET;
    let md = shadow_metadata(HTTP_RBAC_NAMESPACE, &rbac, &request(&get, "/custom?x=1", &h));
    assert_eq!(md[HTTP_RBAC_NAMESPACE]["istio_ext_authz_shadow_effective_policy_id"], "istio-ext-authz-ns[foo]-policy[ext]-rule[0]");
    assert!(a.enabled(&md));
    let md = shadow_metadata(HTTP_RBAC_NAMESPACE, &rbac, &request(&get, "/other", &h));
    assert_eq!(md[HTTP_RBAC_NAMESPACE]["istio_ext_authz_shadow_engine_result"], "allowed");
    assert!(!a.enabled(&md), "no CUSTOM policy matched: the provider is not called");
    assert!(!a.enabled(&Default::default()));
    // Without a matcher the filter checks everything.
    let mut always = a.clone();
    always.filter_enabled_metadata = None;
    assert!(always.enabled(&Default::default()));
}

fn attributes<'a>(method: &'a Method, path: &'a str, h: &'a HeaderMap) -> HttpAttributes<'a> {
    HttpAttributes { id: "42", method, authority: "svc.foo:8080", path, scheme: "http", protocol: "HTTP/1.1", headers: h, body: None }
}

#[test]
fn check_request_carries_peers_and_the_request() {
    let a = ext_authz_from_http(&istio_grpc(), 1).unwrap();
    let h = headers(&[("host", "svc.foo:8080"), ("x-a", "1"), ("x-a", "2"), ("content-length", "0")]);
    let post = Method::POST;
    let input = CheckInput {
        source: "198.18.0.10:40000".parse().unwrap(),
        destination: "[::ffff:198.18.0.20]:8080".parse().unwrap(),
        source_principal: Some("spiffe://cluster.local/ns/foo/sa/client"),
        destination_principal: None,
        http: Some(attributes(&post, "/p?q=1#f", &h)),
    };
    let req = check_request(&a, &input);
    let attrs = req.attributes.unwrap();
    let src = attrs.source.unwrap();
    assert_eq!(src.principal, "spiffe://cluster.local/ns/foo/sa/client");
    let Some(core::address::Address::SocketAddress(sa)) = attrs.destination.unwrap().address.unwrap().address else { panic!() };
    assert_eq!((sa.address.as_str(), sa.port_specifier), ("198.18.0.20", Some(core::socket_address::PortSpecifier::PortValue(8080))));
    let http = attrs.request.unwrap().http.unwrap();
    assert_eq!((http.method.as_str(), http.path.as_str(), http.host.as_str()), ("POST", "/p?q=1#f", "svc.foo:8080"));
    assert_eq!((http.query.as_str(), http.fragment.as_str(), http.protocol.as_str(), http.size), ("q=1", "f", "HTTP/1.1", 0));
    assert_eq!(http.headers["x-a"], "1,2", "repeated headers are joined");
    assert_eq!(http.headers[":authority"], "svc.foo:8080");
    assert_eq!(http.headers[":method"], "POST");
    assert!(!http.headers.contains_key("host"), "host is :authority");
}

#[test]
fn http_check_request_is_shaped_as_envoy_sends_it() {
    let a = ext_authz_from_http(&istio_http(), 1).unwrap();
    let AuthzService::Http(svc) = &a.service else { panic!() };
    let h = headers(&[("host", "svc.foo"), ("x-custom-id", "7"), ("cookie", "secret"), ("authorization", "Bearer t"), ("content-length", "5")]);
    let put = Method::PUT;
    let req = http_check_request(&a, svc, &attributes(&put, "/data?x=1", &h)).unwrap();
    assert_eq!(req.method(), Method::PUT);
    assert_eq!(req.uri(), "/check/data?x=1");
    assert_eq!(req.headers()["host"], "svc.foo:8080");
    assert_eq!(req.headers()["x-custom-id"], "7");
    assert_eq!(req.headers()["authorization"], "Bearer t");
    assert_eq!(req.headers()["x-header-1"], "value-1");
    assert_eq!(req.headers()["content-length"], "0", "no body is sent without with_request_body");
    assert!(!req.headers().contains_key("cookie"), "not allowed");
    assert!(req.body().is_empty());
}

#[test]
fn http_answers() {
    let a = ext_authz_from_http(&istio_http(), 1).unwrap();
    let AuthzService::Http(svc) = &a.service else { panic!() };
    // 200: allowed upstream headers go to the request, on-success ones to the client.
    let ok = headers(&[
        ("x-prefix-user", "alice"),
        ("authorization", "Bearer new"),
        ("x-other", "no"),
        ("set-cookie", "s=1"),
        (HEADERS_TO_REMOVE, "x-drop, x-gone"),
    ]);
    let Outcome::Allowed(allowed) = http_outcome(svc, StatusCode::OK, &ok, Vec::new()) else { panic!() };
    assert_eq!(allowed.headers_to_set, vec![("x-prefix-user".to_owned(), "alice".to_owned()), ("authorization".to_owned(), "Bearer new".to_owned())]);
    assert_eq!(allowed.response_headers_to_add, vec![("set-cookie".to_owned(), "s=1".to_owned())]);
    assert_eq!(allowed.headers_to_remove, vec!["x-drop".to_owned(), "x-gone".to_owned()]);
    let mut req = headers(&[("authorization", "Bearer old"), ("x-drop", "1"), ("x-keep", "1")]);
    allowed.apply(&mut req);
    assert_eq!(req["authorization"], "Bearer new");
    assert_eq!(req["x-prefix-user"], "alice");
    assert!(!req.contains_key("x-drop") && req.contains_key("x-keep") && !req.contains_key("x-other"));
    // Another status: denied with it, its body, and the allowed client headers.
    let no = headers(&[("x-prefix-why", "policy"), ("www-authenticate", "Bearer"), ("x-internal", "secret"), ("content-length", "6")]);
    let Outcome::Denied(d) = http_outcome(svc, StatusCode::UNAUTHORIZED, &no, b"denied".to_vec()) else { panic!() };
    assert_eq!((d.status, d.body.as_slice()), (401, b"denied".as_slice()));
    assert_eq!(d.headers, vec![("x-prefix-why".to_owned(), "policy".to_owned()), ("www-authenticate".to_owned(), "Bearer".to_owned())]);
    // 5xx: an error (status_on_error unless failure_mode_allow).
    assert!(matches!(http_outcome(svc, StatusCode::BAD_GATEWAY, &HeaderMap::new(), Vec::new()), Outcome::Error(_)));
}

#[test]
fn denied_http_answer_without_a_client_list_passes_all_but_host() {
    let mut svc = match ext_authz_from_http(&istio_http(), 1).unwrap().service {
        AuthzService::Http(s) => s,
        AuthzService::Grpc(_) => panic!(),
    };
    svc.allowed_client_headers.clear();
    let no = headers(&[("host", "authz"), ("x-any", "1")]);
    let Outcome::Denied(d) = http_outcome(&svc, StatusCode::FORBIDDEN, &no, Vec::new()) else { panic!() };
    assert_eq!(d.headers, vec![("x-any".to_owned(), "1".to_owned())]);
}

fn hvo(k: &str, v: &str, append: Option<bool>) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue { key: k.into(), value: v.into(), raw_value: vec![] }),
        append: append.map(|value| xds_client::pb::google::protobuf::BoolValue { value }),
        ..Default::default()
    }
}

#[test]
fn grpc_answers() {
    use auth::check_response::HttpResponse;
    let status = |code| Some(xds_client::pb::google::rpc::Status { code, message: String::new(), details: vec![] });
    let ok = auth::CheckResponse {
        status: status(0),
        http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
            headers: vec![hvo("x-user", "alice", None), hvo("x-tag", "t", Some(true))],
            headers_to_remove: vec!["X-Drop".into()],
            response_headers_to_add: vec![hvo("x-resp", "1", None)],
            ..Default::default()
        })),
        ..Default::default()
    };
    let Outcome::Allowed(a) = grpc_outcome(&ok) else { panic!() };
    assert_eq!(a.headers_to_set, vec![("x-user".to_owned(), "alice".to_owned())]);
    assert_eq!(a.headers_to_append, vec![("x-tag".to_owned(), "t".to_owned())]);
    assert_eq!(a.headers_to_remove, vec!["x-drop".to_owned()]);
    assert_eq!(a.response_headers_to_add, vec![("x-resp".to_owned(), "1".to_owned())]);
    let mut req = headers(&[("x-tag", "s"), ("x-drop", "1")]);
    a.apply(&mut req);
    assert_eq!(req.get_all("x-tag").iter().count(), 2);
    assert!(!req.contains_key("x-drop"));

    // PERMISSION_DENIED without a denied_response: 403, no body.
    let no = auth::CheckResponse { status: status(7), ..Default::default() };
    assert_eq!(grpc_outcome(&no), Outcome::Denied(Denied { status: 403, headers: vec![], body: vec![] }));
    // With one: its status, headers and body.
    let no = auth::CheckResponse {
        status: status(16),
        http_response: Some(HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
            status: Some(xds_client::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
            headers: vec![hvo("www-authenticate", "Bearer", None)],
            body: "who are you".into(),
        })),
        ..Default::default()
    };
    let Outcome::Denied(d) = grpc_outcome(&no) else { panic!() };
    assert_eq!((d.status, d.body.as_slice(), d.headers[0].0.as_str()), (401, b"who are you".as_slice(), "www-authenticate"));
    // An unset denied status is 403.
    let no = auth::CheckResponse { status: status(7), http_response: Some(HttpResponse::DeniedResponse(Default::default())), ..Default::default() };
    let Outcome::Denied(d) = grpc_outcome(&no) else { panic!() };
    assert_eq!(d.status, 403);
    // error_response: an error.
    let err = auth::CheckResponse { status: status(13), http_response: Some(HttpResponse::ErrorResponse(Default::default())), ..Default::default() };
    assert!(matches!(grpc_outcome(&err), Outcome::Error(_)));
}

#[test]
fn the_network_filter_is_grpc_only_with_a_stat_prefix() {
    use xds_client::pb::envoy::extensions::filters::network::ext_authz::v3 as net;
    let Some(http_pb::ext_authz::Services::GrpcService(g)) = istio_grpc().services else { panic!() };
    let f = net::ExtAuthz { stat_prefix: "tcp.".into(), grpc_service: Some(g), filter_enabled_metadata: Some(istio_enabled_metadata()), ..Default::default() };
    let a = ext_authz_from_network(&f).unwrap();
    assert_eq!(a.stat_prefix, "tcp.");
    assert!(matches!(a.service, AuthzService::Grpc(_)));
    let f = net::ExtAuthz { stat_prefix: String::new(), ..f };
    assert_eq!(ext_authz_from_network(&f).unwrap_err().path, "stat_prefix");
}

#[test]
fn buffer_settings_decide_when_to_stop_and_what_to_send() {
    let partial = BufferSettings { max_request_bytes: 4, allow_partial_message: true, pack_as_bytes: false };
    let whole = BufferSettings { allow_partial_message: false, ..partial };
    // With allow_partial_message: full at the limit, never too large.
    assert!(!partial.is_full(3) && partial.is_full(4) && partial.is_full(9));
    assert!(!partial.overflows(1 << 20));
    // Without: the whole body up to the limit; one byte more is a 413.
    assert!(!whole.is_full(1 << 20));
    assert!(!whole.overflows(4) && whole.overflows(5));
    // The provider gets the first max_request_bytes; cut -> partial.
    assert_eq!(partial.body_sent(b"abcdefg"), (b"abcd".as_slice(), true));
    assert_eq!(partial.body_sent(b"abcd"), (b"abcd".as_slice(), false));
    assert_eq!(partial.body_sent(b""), (b"".as_slice(), false));
}

fn with_body(mut a: ExtAuthz, max: u32, pack_as_bytes: bool) -> ExtAuthz {
    a.with_request_body = Some(BufferSettings { max_request_bytes: max, allow_partial_message: true, pack_as_bytes });
    a
}

#[test]
fn a_body_string_replaces_each_invalid_byte_as_envoy_does() {
    assert_eq!(sanitize_utf8(b"plain \xc3\xa9t\xc3\xa9"), "plain \u{e9}t\u{e9}");
    // A stray byte, a lone continuation byte, an overlong form, a truncated sequence.
    assert_eq!(sanitize_utf8(b"a\xffb\x80c\xc0\xafd\xe2\x82"), "a!b!c!!d!!");
    assert_eq!(sanitize_utf8(b""), "");
}

proptest::proptest! {
    #[test]
    fn a_sanitized_body_keeps_its_length_and_its_valid_text(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        let s = sanitize_utf8(&bytes);
        proptest::prop_assert_eq!(s.len(), bytes.len());
        if let Ok(valid) = std::str::from_utf8(&bytes) {
            proptest::prop_assert_eq!(s.as_str(), valid);
        }
    }
}

#[test]
fn grpc_check_request_carries_the_body_and_the_partial_flag() {
    // A client's own partial-body header never reaches the provider.
    let h = headers(&[("host", "svc.foo"), (PARTIAL_BODY_HEADER, "false"), ("content-length", "6")]);
    let post = Method::POST;
    let input = |body: Option<&'static [u8]>| {
        let mut attrs = attributes(&post, "/upload", &h);
        attrs.body = body;
        CheckInput {
            source: "198.18.0.10:1".parse().unwrap(),
            destination: "198.18.0.20:2".parse().unwrap(),
            source_principal: None,
            destination_principal: None,
            http: Some(attrs),
        }
    };
    let http_of = |a: &ExtAuthz, body| check_request(a, &input(body)).attributes.unwrap().request.unwrap().http.unwrap();

    // As a string, cut to max_request_bytes and marked partial.
    let a = with_body(ext_authz_from_http(&istio_grpc(), 1).unwrap(), 4, false);
    let http = http_of(&a, Some(b"hello!"));
    assert_eq!((http.body.as_str(), http.raw_body.as_slice()), ("hell", b"".as_slice()));
    assert_eq!(http.headers[PARTIAL_BODY_HEADER], "true");
    assert_eq!(http.size, 6, "size: the bytes received (buffered), as Envoy's bytesReceived");
    // Whole: false. pack_as_bytes: raw_body, not body (bytes that are not UTF-8 stay as sent).
    let a = with_body(ext_authz_from_http(&istio_grpc(), 1).unwrap(), 64, true);
    let http = http_of(&a, Some(b"\xff\x00ok"));
    assert_eq!((http.body.as_str(), http.raw_body.as_slice()), ("", b"\xff\x00ok".as_slice()));
    assert_eq!(http.headers[PARTIAL_BODY_HEADER], "false");
    // Headers-only (nothing buffered): no body, no flag, and not the client's either.
    let http = http_of(&a, None);
    assert!(http.raw_body.is_empty() && http.body.is_empty());
    assert_eq!(http.size, 0, "nothing received yet, whatever content-length says");
    assert!(!http.headers.contains_key(PARTIAL_BODY_HEADER), "{:?}", http.headers);
    // Without with_request_body a buffered body is never sent.
    let http = http_of(&ext_authz_from_http(&istio_grpc(), 1).unwrap(), Some(b"hello!"));
    assert!(http.body.is_empty() && !http.headers.contains_key(PARTIAL_BODY_HEADER));
}

#[test]
fn http_check_request_sends_the_body_and_the_partial_flag() {
    let a = with_body(ext_authz_from_http(&istio_http(), 1).unwrap(), 5, false);
    let AuthzService::Http(svc) = &a.service else { panic!() };
    let h = headers(&[("host", "svc.foo"), ("content-length", "11"), (PARTIAL_BODY_HEADER, "false")]);
    let post = Method::POST;
    let mut attrs = attributes(&post, "/upload", &h);
    attrs.body = Some(b"hello world");
    let req = http_check_request(&a, svc, &attrs).unwrap();
    assert_eq!(req.body().as_slice(), b"hello");
    assert_eq!(req.headers()["content-length"], "5", "the length of the body sent");
    assert_eq!(req.headers()[PARTIAL_BODY_HEADER], "true", "added after allowed_headers, which does not name it");
    attrs.body = Some(b"hi");
    let req = http_check_request(&a, svc, &attrs).unwrap();
    assert_eq!(req.body().as_slice(), b"hi");
    assert_eq!(req.headers()[PARTIAL_BODY_HEADER], "false");
}
