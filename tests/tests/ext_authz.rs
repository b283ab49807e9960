//! AuthorizationPolicy CUSTOM (Envoy's ext_authz as istiod emits it), enforced by the
//! running proxy against test authorization providers: an HTTP one (a hyper server
//! here) and a gRPC one (a tonic server implementing `envoy.service.auth.v3.Authorization`
//! with envoy-types' generated server; a Rust server in the test process counts and
//! records its calls directly, with no stubs to generate).
//!
//! The filters are shaped as in the corpus's `custom-http-provider-out*.yaml` and
//! `custom-grpc-provider-out*.yaml`: a shadow RBAC filter holding the CUSTOM policy
//! (`istio-ext-authz-ns[foo]-policy[ext-authz]-rule[0]`, `shadow_rules_stat_prefix:
//! istio_ext_authz_`), the ext_authz filter keyed on its shadow metadata, then a DENY
//! RBAC filter, then the router.
//!
//! Proves: a request the CUSTOM policy selects is sent to the provider (path prefix,
//! allowed and added headers), and the provider's allow lets it through with the
//! provider's headers on the request the app sees; its denial reaches the client
//! (status, body, allowed headers); a request the policy does not select never calls
//! the provider; an unreachable or slow provider answers 403 (`ext_authz_error`), or
//! lets the request through with failure_mode_allow; a DENY policy after it still
//! denies; a gRPC client denied by a gRPC provider gets PERMISSION_DENIED; denials
//! and errors carry `UAEX` in the access log. With `with_request_body` the provider
//! gets the body (whole, or its first `max_request_bytes` with
//! `x-envoy-auth-partial-body: true`; gRPC `raw_body` with `pack_as_bytes`), the app
//! still gets all of it (also chunked, also when a retry sends it again), and a body
//! over the limit without `allow_partial_message` is a 413 the provider never sees.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::{json, Value};
use tests::config::{router_filter, HCM_TYPE};
use tests::*;
use xds_client::pb::envoy::config::core::v3 as core;
use xds_client::pb::envoy::service::auth::v3 as auth;

const RBAC_HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const EXT_AUTHZ_HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const CUSTOM_POLICY: &str = "istio-ext-authz-ns[foo]-policy[ext-authz]-rule[0]";
const HTTP_PROVIDER: &str = "outbound|8000||ext-authz-http.foo.svc.cluster.local";
const GRPC_PROVIDER: &str = "outbound|9000||ext-authz-grpc.foo.svc.cluster.local";
const DOWN_PROVIDER: &str = "outbound|8000||ext-authz-down.foo.svc.cluster.local";
const T: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------
// The configuration, as istiod emits it

/// A permission on the path prefixes `paths`, as istiod writes `to.operation.paths`.
fn paths(prefixes: &[&str]) -> Value {
    json!([{ "and_rules": { "rules": [{ "or_rules": { "rules": prefixes.iter().map(|p| json!({ "url_path": { "path": { "prefix": p } } })).collect::<Vec<_>>() } }] } }])
}

fn any_principal() -> Value {
    json!([{ "and_ids": { "ids": [{ "any": true }] } }])
}

/// CUSTOM's shadow RBAC filter: the policy selects `custom_paths`.
fn custom_shadow_rbac(custom_paths: &[&str]) -> Value {
    json!({ "name": "envoy.filters.http.rbac", "typed_config": {
        "@type": RBAC_HTTP,
        "shadow_rules": { "action": "DENY", "policies": { CUSTOM_POLICY: { "permissions": paths(custom_paths), "principals": any_principal() } } },
        "shadow_rules_stat_prefix": "istio_ext_authz_",
    } })
}

fn deny_rbac(prefixes: &[&str]) -> Value {
    json!({ "name": "envoy.filters.http.rbac", "typed_config": {
        "@type": RBAC_HTTP,
        "rules": { "action": "DENY", "policies": { "ns[foo]-policy[deny-admin]-rule[0]": { "permissions": paths(prefixes), "principals": any_principal() } } },
    } })
}

fn enabled_metadata() -> Value {
    json!({ "filter": "envoy.filters.http.rbac", "path": [{ "key": "istio_ext_authz_shadow_effective_policy_id" }], "value": { "string_match": { "prefix": "istio-ext-authz" } } })
}

/// istiod's HTTP provider (`envoyExtAuthzHttp`: includeRequestHeadersInCheck
/// [x-ext-authz], includeAdditionalHeadersInCheck, headersToUpstreamOnAllow,
/// headersToDownstreamOnDeny/OnAllow, pathPrefix /check).
fn http_ext_authz(cluster: &str, timeout: &str, failure_mode_allow: bool) -> Value {
    let ci = |p: Value| merge(p, json!({ "ignore_case": true }));
    json!({ "name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": EXT_AUTHZ_HTTP,
        "allowed_headers": { "patterns": [ci(json!({ "exact": "x-ext-authz" }))] },
        "failure_mode_allow": failure_mode_allow,
        "filter_enabled_metadata": enabled_metadata(),
        "http_service": {
            "authorization_request": { "headers_to_add": [{ "key": "x-header-1", "value": "value-1" }] },
            "authorization_response": {
                "allowed_client_headers": { "patterns": [ci(json!({ "prefix": "x-prefix-" }))] },
                "allowed_client_headers_on_success": { "patterns": [ci(json!({ "exact": "set-cookie" }))] },
                "allowed_upstream_headers": { "patterns": [ci(json!({ "exact": "authorization" })), ci(json!({ "prefix": "x-prefix-" }))] },
            },
            "path_prefix": "/check",
            "server_uri": { "cluster": cluster, "timeout": timeout, "uri": "http://ext-authz-http.foo.svc.cluster.local" },
        },
        "status_on_error": { "code": "Forbidden" },
        "transport_api_version": "V3",
    } })
}

/// istiod's gRPC provider (`envoyExtAuthzGrpc`).
fn grpc_ext_authz(cluster: &str) -> Value {
    json!({ "name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": EXT_AUTHZ_HTTP,
        "filter_enabled_metadata": enabled_metadata(),
        "grpc_service": { "envoy_grpc": { "authority": "ext-authz-grpc.foo.svc.cluster.local", "cluster_name": cluster }, "timeout": "5s" },
        "status_on_error": { "code": "Forbidden" },
        "transport_api_version": "V3",
    } })
}

fn custom_hcm(stat_prefix: &str, ext_authz: Value, app_cluster: &str) -> Value {
    json!({
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": route_all_to(app_cluster, json!({})),
        "http_filters": [custom_shadow_rbac(&["/custom"]), ext_authz, deny_rbac(&["/custom/admin"]), router_filter()],
    })
}

// ---------------------------------------------------------------------------------
// The providers

/// What a provider was asked.
#[derive(Clone, Debug, Default)]
struct Call {
    path: String,
    headers: HashMap<String, String>,
    /// The HTTP provider's request body; the gRPC provider's `body` field.
    body: Vec<u8>,
    /// The gRPC provider's `raw_body` field.
    raw_body: Vec<u8>,
}

#[derive(Default)]
struct Calls(Mutex<Vec<Call>>);

impl Calls {
    fn record(&self, call: Call) {
        self.0.lock().unwrap().push(call);
    }

    fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A provider running on its own thread and runtime; stopped on drop.
struct Provider {
    addr: SocketAddr,
    calls: Arc<Calls>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The decision a request asks the test providers for, by its `x-ext-authz` header.
fn decision(header: Option<&str>) -> &str {
    header.unwrap_or("deny")
}

/// The HTTP provider: `x-ext-authz: allow` -> 200 with headers for the upstream and
/// the client; `slow` -> 200 after 5 s; anything else -> 403 with a body and headers.
async fn http_check(req: Request<hyper::body::Incoming>, calls: Arc<Calls>) -> Result<Response<Full<Bytes>>, Infallible> {
    use http_body_util::BodyExt;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let headers: HashMap<String, String> = req.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    let verdict = decision(headers.get("x-ext-authz").map(String::as_str)).to_owned();
    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    calls.record(Call { path, headers, body, ..Default::default() });
    let resp = match verdict.as_str() {
        "allow" | "slow" => {
            if verdict == "slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Response::builder()
                .status(200)
                .header("x-prefix-user", "alice")
                .header("authorization", "Bearer from-provider")
                .header("x-not-allowed", "dropped")
                .header("set-cookie", "session=1")
                .body(Full::new(Bytes::new()))
        }
        _ => Response::builder()
            .status(403)
            .header("x-prefix-why", "policy")
            .header("x-internal", "not for the client")
            .body(Full::new(Bytes::from_static(b"denied by the http provider"))),
    };
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

fn start_http_provider() -> Provider {
    let calls = Arc::new(Calls::default());
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_calls = calls.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("provider runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the HTTP provider");
            tx.send(listener.local_addr().expect("local addr")).expect("report address");
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let calls = thread_calls.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| http_check(req, calls.clone()));
                            let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    _ = &mut stop_rx => break,
                }
            }
        });
    });
    let addr = rx.recv().expect("HTTP provider started");
    Provider { addr, calls, stop: Some(stop_tx), thread: Some(thread) }
}

/// The gRPC provider: `x-ext-authz: allow` -> OK with a header for the upstream and
/// one for the client; `unauthenticated` -> denied 401 with www-authenticate;
/// anything else -> PERMISSION_DENIED, denied 403 with a body.
struct GrpcAuthz {
    calls: Arc<Calls>,
}

fn hvo(key: &str, value: &str) -> core::HeaderValueOption {
    core::HeaderValueOption { header: Some(core::HeaderValue { key: key.into(), value: value.into(), raw_value: vec![] }), ..Default::default() }
}

#[tonic::codegen::async_trait]
impl auth::authorization_server::Authorization for GrpcAuthz {
    async fn check(&self, request: tonic::Request<auth::CheckRequest>) -> Result<tonic::Response<auth::CheckResponse>, tonic::Status> {
        use auth::check_response::HttpResponse;
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let Some(http) = attributes.request.and_then(|r| r.http) else {
            // A TCP connection (network filter): denied, recorded as `tcp:<destination port>`.
            let port = match attributes.destination.and_then(|d| d.address).and_then(|a| a.address) {
                Some(core::address::Address::SocketAddress(sa)) => match sa.port_specifier {
                    Some(core::socket_address::PortSpecifier::PortValue(p)) => p,
                    _ => 0,
                },
                _ => 0,
            };
            self.calls.record(Call { path: format!("tcp:{port}"), ..Default::default() });
            let status = Some(xds_client::pb::google::rpc::Status { code: 7, message: String::new(), details: vec![] });
            return Ok(tonic::Response::new(auth::CheckResponse { status, ..Default::default() }));
        };
        let verdict = decision(http.headers.get("x-ext-authz").map(String::as_str)).to_owned();
        let mut headers: HashMap<String, String> = http.headers.clone();
        headers.insert(":host".into(), http.host.clone());
        self.calls.record(Call { path: http.path.clone(), headers, body: http.body.clone().into_bytes(), raw_body: http.raw_body.clone() });
        let status = |code| Some(xds_client::pb::google::rpc::Status { code, message: String::new(), details: vec![] });
        let resp = match verdict.as_str() {
            "allow" => auth::CheckResponse {
                status: status(0),
                http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
                    headers: vec![hvo("x-ext-authz-user", "bob")],
                    response_headers_to_add: vec![hvo("x-authz-response", "yes")],
                    ..Default::default()
                })),
                ..Default::default()
            },
            "unauthenticated" => auth::CheckResponse {
                status: status(16),
                http_response: Some(HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
                    status: Some(xds_client::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
                    headers: vec![hvo("www-authenticate", "Bearer realm=\"test\"")],
                    body: "who are you".into(),
                })),
                ..Default::default()
            },
            _ => auth::CheckResponse {
                status: status(7),
                http_response: Some(HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
                    status: Some(xds_client::pb::envoy::r#type::v3::HttpStatus { code: 403 }),
                    headers: vec![],
                    body: "denied by the grpc provider".into(),
                })),
                ..Default::default()
            },
        };
        Ok(tonic::Response::new(resp))
    }
}

fn start_grpc_provider() -> Provider {
    let calls = Arc::new(Calls::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (tx, rx) = std::sync::mpsc::channel();
    let svc = auth::authorization_server::AuthorizationServer::new(GrpcAuthz { calls: calls.clone() });
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("provider runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the gRPC provider");
            tx.send(listener.local_addr().expect("local addr")).expect("report address");
            let serve = tonic::transport::Server::builder().add_service(svc).serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
            tokio::select! {
                _ = serve => {}
                _ = stop_rx => {}
            }
        });
    });
    let addr = rx.recv().expect("gRPC provider started");
    Provider { addr, calls, stop: Some(stop_tx), thread: Some(thread) }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

fn get(p: &Proxy, listener: &str, path: &str, decision: Option<&str>) -> CurlResponse {
    let url = format!("http://{}{path}", p.listener(listener));
    let mut c = Curl::new(&url).header("cookie", "secret=1");
    if let Some(d) = decision {
        c = c.header("x-ext-authz", d);
    }
    c.run()
}

fn labels(prefix: &str) -> [(&str, &str); 2] {
    [("filter", "http"), ("stat_prefix", prefix)]
}

// ---------------------------------------------------------------------------------
// The tests

#[test]
fn http_provider_decides_the_requests_custom_selects() {
    let origin = Origin::start("app");
    let provider = start_http_provider();
    let config = bootstrap(
        vec![
            http_listener("custom", free_port(), custom_hcm("custom", http_ext_authz(HTTP_PROVIDER, "2s", false), "app")),
            http_listener("slow", free_port(), custom_hcm("slow", http_ext_authz(HTTP_PROVIDER, "0.3s", false), "app")),
        ],
        vec![cluster("app", &[origin.addr()]), cluster(HTTP_PROVIDER, &[provider.addr])],
    );
    let p = Proxy::start(&config, 1);

    // Allowed: the app sees the provider's allowed headers, not the others; the
    // client gets the on-success header.
    let r = get(&p, "custom", "/custom/ok?q=1", Some("allow"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("set-cookie"), Some("session=1"), "allowed_client_headers_on_success");
    let seen = origin.requests_to("/custom/ok");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-prefix-user"), Some("alice"));
    assert_eq!(seen[0].header("authorization"), Some("Bearer from-provider"));
    assert_eq!(seen[0].header("x-not-allowed"), None);
    // The provider got the request as Envoy sends it.
    let calls = provider.calls.all();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].path, "/check/custom/ok?q=1", "path_prefix + the original path");
    assert_eq!(calls[0].headers.get("x-ext-authz").map(String::as_str), Some("allow"), "allowed_headers");
    assert_eq!(calls[0].headers.get("x-header-1").map(String::as_str), Some("value-1"), "headers_to_add");
    assert_eq!(calls[0].headers.get("content-length").map(String::as_str), Some("0"));
    assert!(!calls[0].headers.contains_key("cookie"), "a header outside allowed_headers is not sent: {:?}", calls[0].headers);

    // Denied: the provider's status, body and allowed client headers reach the client.
    let r = get(&p, "custom", "/custom/no", Some("deny"));
    assert_eq!((r.status, r.text().as_str()), (403, "denied by the http provider"));
    assert_eq!(r.header("x-prefix-why"), Some("policy"));
    assert_eq!(r.header("x-internal"), None, "not in allowed_client_headers");
    assert!(origin.requests_to("/custom/no").is_empty(), "a denied request never reaches the app");
    let e = p.wait_access_log("the provider's denial", |e| e.path == "/custom/no");
    assert_eq!((e.code, e.details.as_str()), (403, "ext_authz_denied"), "{}", e.line);
    assert!(e.has_flag("UAEX"), "Envoy's UnauthorizedExternalService: {}", e.line);

    // Not selected by the CUSTOM policy: the provider is never asked.
    let before = provider.calls.count();
    for _ in 0..3 {
        assert_eq!(get(&p, "custom", "/public", Some("deny")).status, 200);
    }
    assert_eq!(provider.calls.count(), before, "no call for requests CUSTOM does not select");

    // The DENY policy after it still denies what the provider allows.
    let r = get(&p, "custom", "/custom/admin", Some("allow"));
    assert_eq!((r.status, r.text().as_str()), (403, "RBAC: access denied"));
    assert_eq!(provider.calls.count(), before + 1, "CUSTOM runs before DENY: the provider was asked");
    assert!(origin.requests_to("/custom/admin").is_empty());

    // A provider slower than the timeout: 403 (status_on_error), ext_authz_error.
    let r = get(&p, "slow", "/custom/slow", Some("slow"));
    assert_eq!(r.status, 403);
    let e = p.wait_access_log("the timeout", |e| e.path == "/custom/slow");
    assert_eq!(e.details, "ext_authz_error", "{}", e.line);
    assert!(e.has_flag("UAEX"), "an error answered with status_on_error is UAEX too: {}", e.line);
    assert!(origin.requests_to("/custom/slow").is_empty());

    assert_eventually("the ext_authz counters", T, || {
        let ok = p.metric("envoy_ext_authz_ok_total", &labels("custom"));
        let denied = p.metric("envoy_ext_authz_denied_total", &labels("custom"));
        let disabled = p.metric("envoy_ext_authz_disabled_total", &labels("custom"));
        let error = p.metric("envoy_ext_authz_error_total", &labels("slow"));
        if (ok, denied, disabled, error) == (2.0, 1.0, 3.0, 1.0) {
            Ok(())
        } else {
            Err(format!("ok {ok}, denied {denied}, disabled {disabled}, error(slow) {error}"))
        }
    });
}

#[test]
fn unreachable_provider_fails_closed_unless_failure_mode_allow() {
    let origin = Origin::start("app");
    let down = closed_port();
    let config = bootstrap(
        vec![
            http_listener("closed", free_port(), custom_hcm("closed", http_ext_authz(DOWN_PROVIDER, "2s", false), "app")),
            http_listener("open", free_port(), custom_hcm("open", http_ext_authz(DOWN_PROVIDER, "2s", true), "app")),
        ],
        vec![cluster("app", &[origin.addr()]), cluster(DOWN_PROVIDER, &[down])],
    );
    let p = Proxy::start(&config, 1);

    let r = get(&p, "closed", "/custom/x", Some("allow"));
    assert_eq!(r.status, 403, "fail closed: {}", r.text());
    assert!(origin.requests_to("/custom/x").is_empty());
    let e = p.wait_access_log("the error", |e| e.path == "/custom/x");
    assert_eq!(e.details, "ext_authz_error", "{}", e.line);

    let r = get(&p, "open", "/custom/y", Some("allow"));
    assert_eq!(r.status, 200, "failure_mode_allow: {}", r.text());
    assert_eq!(origin.requests_to("/custom/y").len(), 1);
    let e = p.wait_access_log("the failure let through", |e| e.path == "/custom/y");
    assert!(!e.has_flag("UAEX"), "failure_mode_allow: no UAEX: {}", e.line);
    // The DENY policy still applies when the provider failed open.
    assert_eq!(get(&p, "open", "/custom/admin", Some("allow")).status, 403);

    assert_eventually("the failure counters", T, || {
        let allowed = p.metric("envoy_ext_authz_failure_mode_allowed_total", &labels("open"));
        let closed = p.metric("envoy_ext_authz_error_total", &labels("closed"));
        if allowed == 2.0 && closed == 1.0 {
            Ok(())
        } else {
            Err(format!("failure_mode_allowed(open) {allowed}, error(closed) {closed}"))
        }
    });
}

#[test]
fn grpc_provider_decides_http_and_grpc_requests() {
    let origin = Origin::start("app");
    let echo = GrpcServer::start("echo");
    let provider = start_grpc_provider();
    let grpc_hcm = json!({
        "@type": HCM_TYPE,
        "stat_prefix": "grpc",
        "codec_type": "AUTO",
        "route_config": route_all_to("echo", json!({})),
        "http_filters": [custom_shadow_rbac(&["/nodeproxy.test.Echo/ServerStream"]), grpc_ext_authz(GRPC_PROVIDER), router_filter()],
    });
    let config = bootstrap(
        vec![http_listener("custom", free_port(), custom_hcm("custom", grpc_ext_authz(GRPC_PROVIDER), "app")), http_listener("grpc", free_port(), grpc_hcm)],
        vec![cluster("app", &[origin.addr()]), h2_cluster("echo", &[echo.addr()]), h2_cluster(GRPC_PROVIDER, &[provider.addr])],
    );
    let p = Proxy::start(&config, 1);

    // OK: the provider's header reaches the app, its response header the client.
    let r = get(&p, "custom", "/custom/ok", Some("allow"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-authz-response"), Some("yes"));
    let seen = origin.requests_to("/custom/ok");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-ext-authz-user"), Some("bob"));
    let calls = provider.calls.all();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].path, "/custom/ok");
    assert_eq!(calls[0].headers.get(":method").map(String::as_str), Some("GET"));
    assert_eq!(calls[0].headers.get("cookie").map(String::as_str), Some("secret=1"), "a gRPC provider without allowed_headers sees every header");

    // Allowed by the provider, then denied by the DENY filter behind it: the local
    // reply passes the ext_authz filter too, and gets its response headers.
    let r = get(&p, "custom", "/custom/admin", Some("allow"));
    assert_eq!((r.status, r.text().as_str()), (403, "RBAC: access denied"));
    assert_eq!(r.header("x-authz-response"), Some("yes"));

    // Denied: status, body; 401 with its www-authenticate.
    let r = get(&p, "custom", "/custom/no", Some("deny"));
    assert_eq!((r.status, r.text().as_str()), (403, "denied by the grpc provider"));
    let r = get(&p, "custom", "/custom/who", Some("unauthenticated"));
    assert_eq!((r.status, r.text().as_str()), (401, "who are you"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"test\""));
    assert!(origin.requests_to("/custom/no").is_empty() && origin.requests_to("/custom/who").is_empty());

    // Not selected: never asked.
    let before = provider.calls.count();
    assert_eq!(get(&p, "custom", "/public", None).status, 200);
    assert_eq!(provider.calls.count(), before);

    // A gRPC client: the CUSTOM-selected method is denied by the provider (no
    // x-ext-authz metadata) -> PERMISSION_DENIED; the unselected one is served.
    let out = grpc_client(p.listener("grpc"), "unary", &["--payload", "hi"]);
    assert_eq!(out["code"], "OK", "{out}");
    assert_eq!(provider.calls.count(), before, "Unary is not selected by the CUSTOM policy");
    let out = grpc_client(p.listener("grpc"), "server-stream", &["--count", "2"]);
    assert_eq!(out["code"], "PERMISSION_DENIED", "{out}");
    assert_eq!(out["details"], "denied by the grpc provider", "{out}");
    assert_eq!(provider.calls.count(), before + 1);
    let e = p.wait_access_log("the gRPC denial", |e| e.path == "/nodeproxy.test.Echo/ServerStream");
    assert_eq!((e.code, e.details.as_str()), (200, "ext_authz_denied"), "trailers-only: {}", e.line);
    assert!(e.has_flag("UAEX"), "{}", e.line);
}

#[test]
fn the_configuration_dump_shows_the_filter() {
    let origin = Origin::start("app");
    let provider = start_http_provider();
    let config = bootstrap(
        vec![http_listener("custom", free_port(), custom_hcm("custom", http_ext_authz(HTTP_PROVIDER, "2s", false), "app"))],
        vec![cluster("app", &[origin.addr()]), cluster(HTTP_PROVIDER, &[provider.addr])],
    );
    let p = Proxy::start(&config, 1);
    let text = p.admin_get("/config_dump").body;
    assert!(text.contains("ext_authz") && text.contains(HTTP_PROVIDER) && text.contains("/check"), "{text}");
}

#[test]
fn network_filter_checks_tcp_connections_custom_selects() {
    let origin = Origin::start("app");
    let provider = start_grpc_provider();
    let (checked, unchecked) = (free_port(), free_port());
    // istiod's TCP shape: CUSTOM's shadow network RBAC (selecting connections to
    // `checked`), the network ext_authz filter (stat_prefix `tcp.`), then tcp_proxy.
    let chain = |port: u16| {
        let shadow = json!({ "name": "envoy.filters.network.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "stat_prefix": "tcp.",
            "shadow_rules": { "action": "DENY", "policies": { CUSTOM_POLICY: {
                "permissions": [{ "and_rules": { "rules": [{ "or_rules": { "rules": [{ "destination_port": checked }] } }] } }],
                "principals": any_principal(),
            } } },
            "shadow_rules_stat_prefix": "istio_ext_authz_",
        } });
        let ext_authz = json!({ "name": "envoy.filters.network.ext_authz", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
            "stat_prefix": "tcp.",
            "grpc_service": { "envoy_grpc": { "authority": "ext-authz-grpc.foo.svc.cluster.local", "cluster_name": GRPC_PROVIDER }, "timeout": "5s" },
            "transport_api_version": "V3",
            "filter_enabled_metadata": { "filter": "envoy.filters.network.rbac", "path": [{ "key": "istio_ext_authz_shadow_effective_policy_id" }], "value": { "string_match": { "prefix": "istio-ext-authz" } } },
        } });
        let tcp = json!({ "name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": "tcp", "cluster": "app",
        } });
        json!({ "name": format!("tcp-{port}"), "address": tests::config::socket_address(([127, 0, 0, 1], port).into()), "filter_chains": [{ "filters": [shadow, ext_authz, tcp] }] })
    };
    let config = bootstrap(vec![chain(checked), chain(unchecked)], vec![cluster("app", &[origin.addr()]), h2_cluster(GRPC_PROVIDER, &[provider.addr])]);
    let p = Proxy::start(&config, 1);

    // Not selected: served, and the provider is never asked.
    let r = tests::clients::http_get(([127, 0, 0, 1], unchecked).into(), "/tcp-open", T);
    assert_eq!(r.as_ref().map(|r| r.status).ok(), Some(200), "{r:?}");
    assert_eq!(provider.calls.count(), 0);
    // Selected: the provider is asked once for the connection and denies it: closed.
    let r = tests::clients::http_get(([127, 0, 0, 1], checked).into(), "/tcp-checked", Duration::from_secs(5));
    assert!(r.is_err() || r.as_ref().is_ok_and(|r| r.status == 0), "the connection is closed without a response: {r:?}");
    assert!(origin.requests_to("/tcp-checked").is_empty());
    let calls = provider.calls.all();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].path, format!("tcp:{checked}"), "the CheckRequest names the destination");
    let line = assert_eventually("the denial's access log line", T, || {
        p.access_log_lines().into_iter().find(|l| l.contains("ext_authz_denied")).ok_or_else(|| p.stderr())
    });
    assert!(line.contains("UAEX"), "Envoy's network ext_authz sets UnauthorizedExternalService: {line}");
    let network = [("filter", "network"), ("stat_prefix", "tcp.")];
    assert_eq!(p.metric("envoy_ext_authz_denied_total", &network), 1.0);
    assert_eq!(p.metric("envoy_ext_authz_disabled_total", &network), 1.0);
}

// ---------------------------------------------------------------------------------
// with_request_body

/// `filter` with `with_request_body`.
fn with_body(mut filter: Value, max_request_bytes: u32, allow_partial_message: bool, pack_as_bytes: bool) -> Value {
    filter["typed_config"]["with_request_body"] =
        json!({ "max_request_bytes": max_request_bytes, "allow_partial_message": allow_partial_message, "pack_as_bytes": pack_as_bytes });
    filter
}

/// CUSTOM selects `/custom` and `/fail` (the origin's fail-then-succeed path); the
/// route retries 5xx once.
fn body_hcm(stat_prefix: &str, ext_authz: Value) -> Value {
    json!({
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": route_all_to("app", json!({ "retry_policy": { "retry_on": "5xx", "num_retries": 1 } })),
        "http_filters": [custom_shadow_rbac(&["/custom", "/fail"]), ext_authz, router_filter()],
    })
}

/// POST `body` with `x-ext-authz: decision`; `chunked`: no Content-Length.
fn post(p: &Proxy, listener: &str, path: &str, body: &[u8], decision: &str, chunked: bool) -> CurlResponse {
    let mut c = Curl::new(&format!("http://{}{path}", p.listener(listener))).header("x-ext-authz", decision).body(body);
    if chunked {
        c = c.header("transfer-encoding", "chunked");
    }
    c.run()
}

fn last_call(provider: &Provider) -> Call {
    provider.calls.all().pop().expect("the provider was called")
}

fn partial_flag(call: &Call) -> Option<&str> {
    call.headers.get("x-envoy-auth-partial-body").map(String::as_str)
}

/// Distinct bytes, so a cut or a reordering shows.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

#[test]
fn http_provider_gets_the_request_body() {
    let origin = Origin::start("app");
    let provider = start_http_provider();
    let config = bootstrap(
        vec![
            http_listener("whole", free_port(), body_hcm("whole", with_body(http_ext_authz(HTTP_PROVIDER, "2s", false), 64, false, false))),
            http_listener("partial", free_port(), body_hcm("partial", with_body(http_ext_authz(HTTP_PROVIDER, "2s", false), 16, true, false))),
        ],
        vec![cluster("app", &[origin.addr()]), cluster(HTTP_PROVIDER, &[provider.addr])],
    );
    let p = Proxy::start(&config, 1);
    let small = b"user=alice&action=read".to_vec();

    // Under the limit: the provider sees exactly the body, not partial; the app all of it.
    let r = post(&p, "whole", "/custom/small", &small, "allow", false);
    assert_eq!(r.status, 200, "{}", r.text());
    let call = last_call(&provider);
    assert_eq!(call.body, small, "the provider's body");
    assert_eq!(partial_flag(&call), Some("false"), "{:?}", call.headers);
    assert_eq!(call.headers.get("content-length").map(String::as_str), Some("22"));
    let seen = origin.requests_to("/custom/small");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.as_ref(), small.as_slice(), "the app gets the whole body");
    assert_eq!(seen[0].header("content-length"), Some("22"), "with the length it was declared with");

    // Chunked (no Content-Length), through a retry: both attempts carry the whole
    // body, the first of them having been read ahead for the check.
    let r = post(&p, "whole", "/fail/chunked/1/503", &small, "allow", true);
    assert_eq!(r.status, 200, "the retry succeeded: {}", r.text());
    let call = last_call(&provider);
    assert_eq!((call.body.as_slice(), partial_flag(&call)), (small.as_slice(), Some("false")));
    let seen = origin.requests_to("/fail/chunked");
    assert_eq!(seen.len(), 2, "first attempt 503, then the retry");
    for attempt in &seen {
        assert_eq!(attempt.body.as_ref(), small.as_slice(), "every attempt gets the whole body");
        // Read whole before the check, it still goes upstream chunked, as it came.
        assert_eq!((attempt.header("transfer-encoding"), attempt.header("content-length")), (Some("chunked"), None));
    }

    // Over the limit without allow_partial_message: 413, the provider never asked,
    // whether the length was declared or not.
    let big = pattern(200);
    let before = provider.calls.count();
    for (path, chunked) in [("/custom/big", false), ("/custom/big-chunked", true)] {
        let r = post(&p, "whole", path, &big, "allow", chunked);
        assert_eq!((r.status, r.text().as_str()), (413, "Payload Too Large"), "{path}");
        let e = p.wait_access_log("the 413", |e| e.path == path);
        assert_eq!(e.details, "request_payload_too_large", "{}", e.line);
        assert!(!e.has_flag("UAEX"), "the connection manager's reply, not the provider's: {}", e.line);
    }
    assert_eq!(provider.calls.count(), before, "a body over the limit is never sent to the provider");
    assert!(origin.requests_to("/custom/big").is_empty());

    // allow_partial_message: the provider gets the first 16 bytes and `true`; the
    // app every byte, declared length or chunked.
    for (path, chunked) in [("/custom/partial", false), ("/custom/partial-chunked", true)] {
        let r = post(&p, "partial", path, &big, "allow", chunked);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let call = last_call(&provider);
        assert_eq!(call.body, big[..16], "{path}: the first max_request_bytes");
        assert_eq!(partial_flag(&call), Some("true"), "{path}");
        let seen = origin.requests_to(path);
        assert_eq!(seen.len(), 1, "{path}");
        assert_eq!(seen[0].body.as_ref(), big.as_slice(), "{path}: the app gets all of it, in order");
    }
    // A body within the limit is whole: `false`.
    let r = post(&p, "partial", "/custom/short", b"tiny", "allow", false);
    assert_eq!(r.status, 200);
    let call = last_call(&provider);
    assert_eq!((call.body.as_slice(), partial_flag(&call)), (b"tiny".as_slice(), Some("false")));

    // A headers-only request is checked at once: no body, no flag.
    let r = get(&p, "whole", "/custom/get", Some("allow"));
    assert_eq!(r.status, 200);
    let call = last_call(&provider);
    assert!(call.body.is_empty() && partial_flag(&call).is_none(), "{call:?}");

    // A denied request with a body: the provider's 403, UAEX, the bytes read counted.
    let r = post(&p, "whole", "/custom/denied", &small, "deny", false);
    assert_eq!((r.status, r.text().as_str()), (403, "denied by the http provider"));
    assert_eq!(last_call(&provider).body, small);
    let e = p.wait_access_log("the denial", |e| e.path == "/custom/denied");
    assert_eq!(e.details, "ext_authz_denied", "{}", e.line);
    assert!(e.has_flag("UAEX"), "{}", e.line);
    assert_eq!(e.bytes_received, small.len() as u64, "{}", e.line);
    assert!(origin.requests_to("/custom/denied").is_empty());
}

#[test]
fn grpc_provider_gets_the_body_as_bytes_and_grpc_clients_get_the_413() {
    let origin = Origin::start("app");
    let echo = GrpcServer::start("echo");
    let provider = start_grpc_provider();
    let grpc_hcm = json!({
        "@type": HCM_TYPE,
        "stat_prefix": "grpc",
        "codec_type": "AUTO",
        "route_config": route_all_to("echo", json!({})),
        "http_filters": [custom_shadow_rbac(&["/nodeproxy.test.Echo/Unary"]), with_body(grpc_ext_authz(GRPC_PROVIDER), 64, false, true), router_filter()],
    });
    let config = bootstrap(
        vec![
            http_listener("bytes", free_port(), custom_hcm("bytes", with_body(grpc_ext_authz(GRPC_PROVIDER), 1024, false, true), "app")),
            http_listener("text", free_port(), custom_hcm("text", with_body(grpc_ext_authz(GRPC_PROVIDER), 8, true, false), "app")),
            http_listener("grpc", free_port(), grpc_hcm),
        ],
        vec![cluster("app", &[origin.addr()]), h2_cluster("echo", &[echo.addr()]), h2_cluster(GRPC_PROVIDER, &[provider.addr])],
    );
    let p = Proxy::start(&config, 1);

    // pack_as_bytes: raw_body carries the bytes as sent (not UTF-8 here); body stays empty.
    let binary = b"\x00\xffbin\x80ary\x01".to_vec();
    let r = post(&p, "bytes", "/custom/upload", &binary, "allow", false);
    assert_eq!(r.status, 200, "{}", r.text());
    let call = last_call(&provider);
    assert_eq!(call.raw_body, binary, "raw_body");
    assert!(call.body.is_empty(), "{call:?}");
    assert_eq!(partial_flag(&call), Some("false"));
    assert_eq!(origin.requests_to("/custom/upload")[0].body.as_ref(), binary.as_slice());

    // Without it: the `body` string, cut to 8 bytes with allow_partial_message.
    let r = post(&p, "text", "/custom/text", b"hello, provider", "allow", true);
    assert_eq!(r.status, 200, "{}", r.text());
    let call = last_call(&provider);
    assert_eq!((call.body.as_slice(), call.raw_body.as_slice(), partial_flag(&call)), (b"hello, p".as_slice(), b"".as_slice(), Some("true")));
    assert_eq!(origin.requests_to("/custom/text")[0].body.as_ref(), b"hello, provider");

    // A gRPC client: a small message goes to the provider framed as sent, and through.
    let before = provider.calls.count();
    let out = grpc_client(p.listener("grpc"), "unary", &["--payload", "hi", "--metadata", "x-ext-authz=allow"]);
    assert_eq!(out["code"], "OK", "{out}");
    let call = last_call(&provider);
    assert_eq!(provider.calls.count(), before + 1);
    assert_eq!(partial_flag(&call), Some("false"));
    assert!(call.raw_body.len() > 5 && call.raw_body[0] == 0, "one uncompressed gRPC message: {:?}", call.raw_body);
    // A message over the limit: Envoy's 413 as gRPC (UNKNOWN), no call.
    let out = grpc_client(p.listener("grpc"), "unary", &["--payload-size", "200", "--metadata", "x-ext-authz=allow"]);
    assert_eq!(out["code"], "UNKNOWN", "{out}");
    assert_eq!(out["details"], "Payload Too Large", "{out}");
    assert_eq!(provider.calls.count(), before + 1, "the provider never saw it");
}
