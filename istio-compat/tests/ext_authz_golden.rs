//! Golden tests for the CUSTOM action over istiod's builder output
//! (`istio-authz-rbac-golden/{http,tcp}/*custom*-out*.yaml`): every ext_authz filter
//! translates, with the settings read by hand from the file, and each provider pair
//! (shadow RBAC `-out1` + ext_authz `-out2`) enables the check exactly for the
//! requests a CUSTOM policy selects. Files where istiod could not build the provider
//! hold a DENY RBAC filter instead (fail closed): those are checked to deny the
//! CUSTOM paths. A corpus file this test does not know fails [`every_custom_file_is_known`].

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::corpus_dir;
use http::{HeaderMap, Method};
use istio_compat::authz::ext_authz::{self, AuthzService, ExtAuthz, HTTP_RBAC_NAMESPACE};
use istio_compat::authz::rbac::{self, Rbac, Request};
use istio_compat::model::route::RequestHead;
use prost::Message;
use xds_client::pb::envoy::extensions::filters::http::ext_authz::v3 as http_ext_authz;
use xds_client::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use xds_client::pb::envoy::extensions::filters::network::http_connection_manager::v3::{http_filter, HttpFilter};
use xds_client::protojson;

const CLUSTER: &str = "outbound|9000||my-custom-ext-authz.foo.svc.cluster.local";

/// What a file holds, read by hand.
enum Expect {
    /// An ext_authz filter with these settings.
    ExtAuthz(fn(&ExtAuthz)),
    /// The CUSTOM shadow RBAC filter for /httpbin1 and /httpbin2.
    ShadowForHttpbin,
    /// A DENY RBAC filter (the provider was bad): denies these paths, allows `/other`.
    DenyPaths(&'static [&'static str]),
}

fn http_provider(a: &ExtAuthz) {
    let AuthzService::Http(h) = &a.service else { panic!("{a:?}") };
    assert_eq!(h.cluster, CLUSTER);
    assert_eq!(h.timeout, Some(Duration::from_secs(10)));
    assert_eq!(h.path_prefix, "/check");
    assert_eq!(h.headers_to_add, vec![("x-header-1".to_owned(), "value-1".to_owned()), ("x-header-2".to_owned(), "value-2".to_owned())]);
    assert!(a.failure_mode_allow);
    assert_eq!(a.status_on_error, 403);
    assert_eq!(a.with_request_body.map(|b| (b.max_request_bytes, b.allow_partial_message, b.pack_as_bytes)), Some((2048, true, true)));
    // allowedHeaders (exact x-custom-id, prefix x-prefix-, suffix -suffix, all ignoring case)
    // plus the four the HTTP service always sees.
    for h in ["x-custom-id", "X-Custom-Id", "x-prefix-a", "a-suffix", "authorization", ":path", ":method", ":authority"] {
        assert!(a.header_allowed(h), "{h}");
    }
    assert!(!a.header_allowed("cookie"));
    // allowedUpstreamHeaders: Authorization, x-prefix-*, *-suffix; client headers: Set-cookie, …
    let answer = headers(&[("authorization", "Bearer x"), ("x-prefix-user", "u"), ("b-suffix", "s"), ("set-cookie", "c=1"), ("x-other", "o")]);
    let ext_authz::Outcome::Allowed(ok) = ext_authz::http_outcome(h, http::StatusCode::OK, &answer, Vec::new()) else { panic!() };
    let set: Vec<&str> = ok.headers_to_set.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(set, ["authorization", "x-prefix-user", "b-suffix"]);
    let client: Vec<&str> = ok.response_headers_to_add.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(client, ["x-prefix-user", "b-suffix", "set-cookie"]);
    let ext_authz::Outcome::Denied(d) = ext_authz::http_outcome(h, http::StatusCode::FORBIDDEN, &answer, b"no".to_vec()) else { panic!() };
    let client: Vec<&str> = d.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(client, ["x-prefix-user", "b-suffix", "set-cookie"]);
}

fn grpc_provider(timeout: Duration, body: Option<(u32, bool, bool)>) -> impl Fn(&ExtAuthz) {
    move |a: &ExtAuthz| {
        let AuthzService::Grpc(g) = &a.service else { panic!("{a:?}") };
        assert_eq!(g.cluster, CLUSTER);
        assert_eq!(g.authority, "my-custom-ext-authz.foo.svc.cluster.local");
        assert_eq!(g.timeout, Some(timeout));
        assert!(a.failure_mode_allow);
        assert_eq!(a.status_on_error, 403);
        assert_eq!(a.with_request_body.map(|b| (b.max_request_bytes, b.allow_partial_message, b.pack_as_bytes)), body);
        assert!(a.header_allowed("cookie"), "a gRPC provider without allowed_headers sees every header");
    }
}

fn grpc_provider_file(a: &ExtAuthz) {
    grpc_provider(Duration::from_millis(2), Some((4096, true, false)))(a)
}

fn grpc_no_namespace_file(a: &ExtAuthz) {
    grpc_provider(Duration::from_secs(600), None)(a)
}

/// Every known file (without the `extended-` prefix, whose files are byte-identical
/// twins: checked in [`every_custom_file_is_known`]).
fn expected(file: &str) -> Option<Expect> {
    Some(match file {
        "http/custom-http-provider-out1.yaml" | "http/custom-grpc-provider-out1.yaml" | "http/custom-grpc-provider-no-namespace-out1.yaml" => {
            Expect::ShadowForHttpbin
        }
        "http/custom-http-provider-out2.yaml" => Expect::ExtAuthz(http_provider),
        "http/custom-grpc-provider-out2.yaml" => Expect::ExtAuthz(grpc_provider_file),
        "http/custom-grpc-provider-no-namespace-out2.yaml" => Expect::ExtAuthz(grpc_no_namespace_file),
        "http/custom-bad-out.yaml" => Expect::DenyPaths(&["/httpbin1", "/httpbin2"]),
        "http/custom-bad-multiple-providers-out1.yaml" | "http/custom-bad-multiple-providers-out2.yaml" => Expect::DenyPaths(&[]),
        _ => return None,
    })
}

fn golden_dir() -> Option<PathBuf> {
    Some(corpus_dir()?.join("istio-authz-rbac-golden"))
}

/// Every `*custom*-out*.yaml`, as `http/name.yaml` / `tcp/name.yaml`.
fn custom_files(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for sub in ["http", "tcp"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(sub).display())) {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && name.contains("custom") && name.contains("-out") {
                files.push(format!("{sub}/{name}"));
            }
        }
    }
    files.sort();
    files
}

enum Loaded {
    Rbac(Rbac),
    ExtAuthz(Box<ExtAuthz>),
}

fn load(dir: &Path, file: &str) -> Loaded {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let value = protojson::parse_yaml_or_json(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(file.starts_with("http/"), "{file}: a network filter; no corpus file had one when this test was written");
    let f = protojson::from_json::<HttpFilter>(value).unwrap_or_else(|e| panic!("{file}: {e}")).message;
    let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else { panic!("{file}: no typed_config") };
    if any.type_url == rbac::HTTP_RBAC_TYPE_URL {
        let pb = http_rbac::Rbac::decode(any.value.as_slice()).unwrap();
        Loaded::Rbac(rbac::rbac_from_http(&pb).unwrap_or_else(|e| panic!("{file}: {}: {}", e.path, e.reason)))
    } else if any.type_url == rbac::EXT_AUTHZ_TYPE_URLS[0] {
        let pb = http_ext_authz::ExtAuthz::decode(any.value.as_slice()).unwrap();
        // istiod puts the CUSTOM shadow RBAC filter right before it.
        Loaded::ExtAuthz(Box::new(ext_authz::ext_authz_from_http(&pb, 1).unwrap_or_else(|e| panic!("{file}: {}: {}", e.path, e.reason))))
    } else {
        panic!("{file}: unexpected filter type {}", any.type_url)
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs.iter().map(|(n, v)| (http::HeaderName::from_bytes(n.as_bytes()).unwrap(), http::HeaderValue::from_str(v).unwrap())).collect()
}

fn request<'a>(method: &'a Method, path: &'a str, h: &'a HeaderMap) -> Request<'a> {
    let peer: SocketAddr = "198.18.0.1:40000".parse().unwrap();
    let mut r = Request::tcp(peer, "198.18.0.2:8080".parse().unwrap());
    r.http = Some(RequestHead { method, authority: "example.org", path, scheme: "http", headers: h });
    r
}

fn strip_extended(file: &str) -> String {
    file.replacen("/extended-", "/", 1)
}

#[test]
fn every_custom_file_is_known() {
    let Some(dir) = golden_dir() else { return };
    let files = custom_files(&dir);
    assert!(!files.is_empty(), "no *custom*-out*.yaml in {}", dir.display());
    for file in &files {
        let base = strip_extended(file);
        assert!(expected(&base).is_some(), "{file}: a CUSTOM corpus file this test does not know; read it and add its checks");
        if base != *file {
            let twin = std::fs::read(dir.join(&base)).unwrap_or_else(|e| panic!("{file}: its twin {base}: {e}"));
            assert_eq!(std::fs::read(dir.join(file)).unwrap(), twin, "{file} differs from {base}: give it its own checks");
        }
    }
}

#[test]
fn every_custom_filter_translates_as_read() {
    let Some(dir) = golden_dir() else { return };
    let mut ext_authz_filters = 0;
    for file in custom_files(&dir) {
        let Some(expect) = expected(&strip_extended(&file)) else { continue };
        let loaded = load(&dir, &file);
        let get = Method::GET;
        let none = HeaderMap::new();
        match (expect, loaded) {
            (Expect::ExtAuthz(check), Loaded::ExtAuthz(a)) => {
                ext_authz_filters += 1;
                check(&a);
                // istiod's matcher: the shadow policy id under the HTTP RBAC filter's namespace.
                let m = a.filter_enabled_metadata.as_ref().unwrap_or_else(|| panic!("{file}: no filter_enabled_metadata"));
                assert_eq!(
                    (m.filter.as_str(), m.path.as_slice()),
                    (HTTP_RBAC_NAMESPACE, ["istio_ext_authz_shadow_effective_policy_id".to_owned()].as_slice()),
                    "{file}"
                );
                // It survives /config_dump's form.
                let json = serde_json::to_string(&a).unwrap();
                assert_eq!(serde_json::from_str::<ExtAuthz>(&json).unwrap(), *a, "{file}");
            }
            (Expect::ShadowForHttpbin, Loaded::Rbac(r)) => {
                assert!(r.rules.is_none(), "{file}: CUSTOM's RBAC filter enforces nothing");
                assert_eq!(r.shadow_stat_prefix, "istio_ext_authz_", "{file}");
                for path in ["/httpbin1", "/httpbin2"] {
                    assert!(r.evaluate(&request(&get, path, &none)).allowed, "{file}: {path}");
                }
            }
            (Expect::DenyPaths(paths), Loaded::Rbac(r)) => {
                assert!(r.shadow.is_none(), "{file}");
                for path in paths {
                    assert!(!r.evaluate(&request(&get, path, &none)).allowed, "{file}: {path} is denied (fail closed)");
                }
                assert!(r.evaluate(&request(&get, "/other", &none)).allowed, "{file}: /other");
            }
            (_, _) => panic!("{file}: holds another filter than read"),
        }
    }
    assert!(ext_authz_filters >= 3, "{ext_authz_filters} ext_authz filters");
}

/// Each provider pair: the shadow RBAC's metadata enables the provider call for the
/// CUSTOM paths (any method, query ignored) and for nothing else.
#[test]
fn shadow_rbac_enables_the_provider_for_custom_paths_only() {
    let Some(dir) = golden_dir() else { return };
    let mut pairs = 0;
    for file in custom_files(&dir).into_iter().filter(|f| f.ends_with("-out2.yaml")) {
        let Loaded::ExtAuthz(a) = load(&dir, &file) else { continue };
        let Loaded::Rbac(shadow) = load(&dir, &file.replace("-out2.yaml", "-out1.yaml")) else { panic!("{file}: -out1 is not RBAC") };
        pairs += 1;
        let filters = [shadow];
        let none = HeaderMap::new();
        let cases: [(Method, &str, bool); 6] = [
            (Method::GET, "/httpbin1", true),
            (Method::POST, "/httpbin2", true),
            (Method::GET, "/httpbin1?x=1", true),
            (Method::GET, "/httpbin", false),
            (Method::GET, "/httpbin1/sub", false),
            (Method::GET, "/", false),
        ];
        for (method, path, enabled) in &cases {
            let md = ext_authz::shadow_metadata(HTTP_RBAC_NAMESPACE, &filters, &request(method, path, &none));
            assert_eq!(a.enabled(&md), *enabled, "{file}: {method} {path}");
        }
    }
    assert!(pairs >= 3, "{pairs} provider pairs");
}
