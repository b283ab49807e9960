//! Golden tests over istiod's AuthorizationPolicy -> RBAC builder output
//! (`istio-authz-rbac-golden/{http,tcp}/*-out*.yaml` in the shared corpus): every
//! RBAC filter translates, and decides as Envoy would for requests written by hand
//! from reading each output file (never from running our translator on `-in.yaml`).
//!
//! Each file has checks that must match and checks that must not, at the level of
//! the filter's decision, a named policy, or one node of a policy (to exercise the
//! fields of policies that istiod's tests make self-contradictory on purpose). A file
//! whose policies match every request or none is listed in [`ONE_SIDED`] with why.
//! `extended-X` files byte-identical to `X` share X's checks; a new or changed file
//! fails [`every_corpus_file_is_covered`] until checks are written for it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::corpus_dir;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use istio_compat::authz::rbac::{self, Metadata, Permission, Principal, Rbac, Request, EXT_AUTHZ_TYPE_URLS, HTTP_RBAC_TYPE_URL, NETWORK_RBAC_TYPE_URL};
use istio_compat::model::route::RequestHead;
use prost::Message;
use serde_json::{json, Value};
use xds_client::pb::envoy::config::listener::v3::{filter, Filter};
use xds_client::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz;
use xds_client::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use xds_client::pb::envoy::extensions::filters::network::http_connection_manager::v3::{http_filter, HttpFilter};
use xds_client::pb::envoy::extensions::filters::network::rbac::v3 as network_rbac;
use xds_client::pb::google::protobuf::Any;
use xds_client::protojson;

// ---------------------------------------------------------------------------
// Loading

/// What one corpus file holds.
struct Loaded {
    rbac: Vec<Rbac>,
    ext_authz: Vec<ExtAuthz>,
}

fn golden_dir() -> Option<PathBuf> {
    Some(corpus_dir()?.join("istio-authz-rbac-golden"))
}

/// Every `*-out*.yaml`, as `http/name.yaml` / `tcp/name.yaml`.
fn out_files(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for sub in ["http", "tcp"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(sub).display())) {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && name.contains("-out") {
                files.push(format!("{sub}/{name}"));
            }
        }
    }
    files.sort();
    files
}

fn typed_config(any: &Any, file: &str, loaded: &mut Loaded) {
    let t = any.type_url.as_str();
    if t == HTTP_RBAC_TYPE_URL {
        let pb = http_rbac::Rbac::decode(any.value.as_slice()).unwrap();
        loaded.rbac.push(rbac::rbac_from_http(&pb).unwrap_or_else(|e| panic!("{file}: {}: {}", e.path, e.reason)));
    } else if t == NETWORK_RBAC_TYPE_URL {
        let pb = network_rbac::Rbac::decode(any.value.as_slice()).unwrap();
        loaded.rbac.push(rbac::rbac_from_network(&pb).unwrap_or_else(|e| panic!("{file}: {}: {}", e.path, e.reason)));
    } else if t == EXT_AUTHZ_TYPE_URLS[0] {
        loaded.ext_authz.push(ExtAuthz::decode(any.value.as_slice()).unwrap());
    } else if EXT_AUTHZ_TYPE_URLS.contains(&t) {
        panic!("{file}: a network ext_authz filter; no corpus file had one when this test was written");
    } else {
        panic!("{file}: unexpected filter type {t}");
    }
}

fn load(dir: &Path, file: &str) -> Loaded {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let value = protojson::parse_yaml_or_json(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut loaded = Loaded { rbac: Vec::new(), ext_authz: Vec::new() };
    if file.starts_with("tcp/") {
        let f = protojson::from_json::<Filter>(value).unwrap_or_else(|e| panic!("{file}: {e}")).message;
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { panic!("{file}: no typed_config") };
        assert_eq!(f.name, "envoy.filters.network.rbac", "{file}");
        typed_config(any, file, &mut loaded);
    } else {
        let f = protojson::from_json::<HttpFilter>(value).unwrap_or_else(|e| panic!("{file}: {e}")).message;
        let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else { panic!("{file}: no typed_config") };
        typed_config(any, file, &mut loaded);
    }
    loaded
}

// ---------------------------------------------------------------------------
// Requests

/// A request described by what differs from a plaintext HTTP `GET /` from
/// 198.18.0.1:40000 to 198.18.0.2:8080 with `:authority: example.org`.
#[derive(Clone)]
struct Req {
    tcp: bool,
    method: Method,
    authority: &'static str,
    path: &'static str,
    headers: HeaderMap,
    source: SocketAddr,
    direct_remote: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    destination: SocketAddr,
    sni: &'static str,
    peer: Option<&'static str>,
    metadata: Option<Metadata>,
}

fn http() -> Req {
    Req {
        tcp: false,
        method: Method::GET,
        authority: "example.org",
        path: "/",
        headers: HeaderMap::new(),
        source: "198.18.0.1:40000".parse().unwrap(),
        direct_remote: None,
        remote: None,
        destination: "198.18.0.2:8080".parse().unwrap(),
        sni: "",
        peer: None,
        metadata: None,
    }
}

/// A TCP connection (the network filter): no request head.
fn tcp() -> Req {
    Req { tcp: true, ..http() }
}

impl Req {
    fn method(mut self, m: &str) -> Self {
        self.method = Method::from_bytes(m.as_bytes()).unwrap();
        self
    }
    fn host(mut self, h: &'static str) -> Self {
        self.authority = h;
        self
    }
    fn path(mut self, p: &'static str) -> Self {
        self.path = p;
        self
    }
    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        self
    }
    fn port(mut self, port: u16) -> Self {
        self.destination.set_port(port);
        self
    }
    fn dst(mut self, addr: &str) -> Self {
        self.destination = addr.parse().unwrap();
        self
    }
    /// The connection's peer (and so `direct_remote_ip` and, without XFF, `remote_ip`).
    fn src(mut self, addr: &str) -> Self {
        self.source = addr.parse().unwrap();
        self
    }
    /// The original client as XFF names it (`remote_ip`).
    fn remote(mut self, addr: &str) -> Self {
        self.remote = Some(addr.parse().unwrap());
        self
    }
    fn sni(mut self, s: &'static str) -> Self {
        self.sni = s;
        self
    }
    fn peer(mut self, p: &'static str) -> Self {
        self.peer = Some(p);
        self
    }
    /// A verified JWT with this payload.
    fn jwt(mut self, payload: Value) -> Self {
        let md = self.metadata.get_or_insert_with(Metadata::new);
        md.extend(rbac::jwt_metadata(payload));
        self
    }
    fn metadata(mut self, filter: &str, value: Value) -> Self {
        self.metadata.get_or_insert_with(Metadata::new).insert(filter.to_owned(), value);
        self
    }

    fn with<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        let head = RequestHead { method: &self.method, authority: self.authority, path: self.path, scheme: "http", headers: &self.headers };
        let direct_remote = self.direct_remote.unwrap_or(self.source);
        let req = Request {
            source: self.source,
            direct_remote,
            remote: self.remote.unwrap_or(direct_remote),
            destination: self.destination,
            requested_server_name: self.sni,
            peer_principal: self.peer,
            http: (!self.tcp).then_some(head),
            metadata: self.metadata.as_ref(),
        };
        f(&req)
    }

    fn describe(&self) -> String {
        let peer = self.peer.unwrap_or("plaintext");
        if self.tcp {
            format!("TCP {} -> {} sni={:?} peer={peer} md={:?}", self.source, self.destination, self.sni, self.metadata)
        } else {
            format!(
                "{} {}{} -> {} peer={peer} remote={:?} headers={:?} md={:?}",
                self.method, self.authority, self.path, self.destination, self.remote, self.headers, self.metadata
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Checks

/// What a check expects of the file's (only) RBAC filter.
enum Expect {
    /// The enforced rules: allowed or not, and the matching policy.
    Enforced {
        allowed: bool,
        policy: Option<&'static str>,
    },
    /// The shadow rules: their engine result and matching policy.
    Shadow {
        allowed: bool,
        policy: Option<&'static str>,
    },
    /// Whether a named policy (enforced or shadow rules) matches.
    Policy {
        name: &'static str,
        matches: bool,
    },
    /// Whether one node of a policy matches: `path[0]` indexes its permissions
    /// (or principals), the rest the children of and/or sets (0 under a not), in
    /// the model, where a set of one (istiod's `and(or(x))`) is collapsed to its element.
    Permission {
        policy: &'static str,
        path: &'static [usize],
        matches: bool,
    },
    Principal {
        policy: &'static str,
        path: &'static [usize],
        matches: bool,
    },
}

struct Check {
    req: Req,
    expect: Expect,
}

impl Check {
    fn positive(&self) -> bool {
        match self.expect {
            Expect::Enforced { policy, .. } | Expect::Shadow { policy, .. } => policy.is_some(),
            Expect::Policy { matches, .. } | Expect::Permission { matches, .. } | Expect::Principal { matches, .. } => matches,
        }
    }

    /// Decision- or policy-level (not a node of a policy).
    fn whole(&self) -> bool {
        matches!(self.expect, Expect::Enforced { .. } | Expect::Shadow { .. } | Expect::Policy { .. })
    }
}

fn allowed(req: Req, policy: &'static str) -> Check {
    Check { req, expect: Expect::Enforced { allowed: true, policy: Some(policy) } }
}
/// ALLOW rules, none matched.
fn not_allowed(req: Req) -> Check {
    Check { req, expect: Expect::Enforced { allowed: false, policy: None } }
}
/// DENY rules, this one matched.
fn denied(req: Req, policy: &'static str) -> Check {
    Check { req, expect: Expect::Enforced { allowed: false, policy: Some(policy) } }
}
/// DENY rules, none matched; or LOG rules, none matched.
fn passes(req: Req) -> Check {
    Check { req, expect: Expect::Enforced { allowed: true, policy: None } }
}
fn shadow(req: Req, allowed: bool, policy: Option<&'static str>) -> Check {
    Check { req, expect: Expect::Shadow { allowed, policy } }
}
fn policy(req: Req, name: &'static str, matches: bool) -> Check {
    Check { req, expect: Expect::Policy { name, matches } }
}
fn permission(req: Req, policy: &'static str, path: &'static [usize], matches: bool) -> Check {
    Check { req, expect: Expect::Permission { policy, path, matches } }
}
fn principal(req: Req, policy: &'static str, path: &'static [usize], matches: bool) -> Check {
    Check { req, expect: Expect::Principal { policy, path, matches } }
}

fn find_policy<'a>(f: &'a Rbac, name: &str) -> &'a rbac::Policy {
    f.rules.iter().chain(&f.shadow).flat_map(|r| &r.policies).find(|p| &*p.name == name).unwrap_or_else(|| panic!("no policy {name}"))
}

fn permission_node<'a>(p: &'a Permission, path: &[usize]) -> &'a Permission {
    let Some((&i, rest)) = path.split_first() else { return p };
    let child = match p {
        Permission::AndRules(v) | Permission::OrRules(v) => &v[i],
        Permission::NotRule(inner) if i == 0 => inner,
        other => panic!("cannot descend into {other:?}"),
    };
    permission_node(child, rest)
}

fn principal_node<'a>(p: &'a Principal, path: &[usize]) -> &'a Principal {
    let Some((&i, rest)) = path.split_first() else { return p };
    let child = match p {
        Principal::AndIds(v) | Principal::OrIds(v) => &v[i],
        Principal::NotId(inner) if i == 0 => inner,
        other => panic!("cannot descend into {other:?}"),
    };
    principal_node(child, rest)
}

fn run(file: &str, f: &Rbac, check: &Check) {
    let what = check.req.describe();
    check.req.with(|req| match check.expect {
        Expect::Enforced { allowed, policy } => {
            let d = f.evaluate(req);
            assert_eq!((d.allowed, d.policy), (allowed, policy), "{file}: enforced decision for {what}");
        }
        Expect::Shadow { allowed, policy } => {
            let d = f.evaluate(req);
            assert!(d.allowed || f.rules.is_some(), "{file}: shadow rules never deny ({what})");
            let s = d.shadow.unwrap_or_else(|| panic!("{file}: no shadow rules"));
            assert_eq!((s.allowed, s.policy), (allowed, policy), "{file}: shadow decision for {what}");
        }
        Expect::Policy { name, matches } => {
            assert_eq!(find_policy(f, name).matches(req), matches, "{file}: policy {name} on {what}");
        }
        Expect::Permission { policy, path, matches } => {
            let p = find_policy(f, policy);
            let node = permission_node(&p.permissions[path[0]], &path[1..]);
            assert_eq!(node.matches(req), matches, "{file}: {policy} permission {path:?} = {node:?} on {what}");
        }
        Expect::Principal { policy, path, matches } => {
            let p = find_policy(f, policy);
            let node = principal_node(&p.principals[path[0]], &path[1..]);
            assert_eq!(node.matches(req), matches, "{file}: {policy} principal {path:?} = {node:?} on {what}");
        }
    });
}

// ---------------------------------------------------------------------------
// The checks, file by file (read from the `-out` YAML).

/// Files whose policies match every request (any/any) or none: only one side of
/// the decision exists; their checks probe varied requests instead.
const ONE_SIDED: &[(&str, &str)] = &[
    ("http/allow-empty-rule-out.yaml", "one any/any ALLOW policy: everything matches"),
    ("http/audit-full-rule-out.yaml", "one any/any LOG policy: everything matches and is logged"),
    ("http/extended-deny-empty-rule-out.yaml", "one any/any DENY policy: everything is denied"),
    ("http/allow-nil-rule-out.yaml", "not_rule(any) / not_id(any): nothing matches"),
    (
        "http/allow-host-before-111-out.yaml",
        "the permission needs `:authority` present and not present: nothing matches (HTTP or TCP); its nodes are checked",
    ),
    (
        "http/extended-allow-path-out.yaml",
        "the path must match `.+` and must not match `.+`: nothing matches; its nodes are checked",
    ),
    (
        "http/simple-policy-td-aliases-out.yaml",
        "the only permissions are methods like `rule[0]-to[0]-method[0]`, which are not HTTP tokens: nothing matches; its principals are checked",
    ),
    (
        "tcp/allow-only-http-out.yaml",
        "istiod dropped every rule (each had HTTP-only fields): an ALLOW with no policy denies everything",
    ),
    (
        "tcp/audit-both-http-tcp-out.yaml",
        "the permission needs destination port 80 and 91 at once: nothing matches (LOG allows anyway); its nodes are checked",
    ),
    (
        "http/single-policy-out.yaml",
        "methods that are not HTTP tokens; and every principal needs an exact URI SAN and a namespace regex the same SAN cannot satisfy (or two remote_ip sets that do not meet): \
         no single-SAN peer matches; its nodes are checked",
    ),
];

/// Files that hold an `ext_authz` filter (istiod's CUSTOM action) instead of RBAC.
const EXT_AUTHZ_FILES: &[&str] = &[
    "http/custom-grpc-provider-no-namespace-out2.yaml",
    "http/custom-grpc-provider-out2.yaml",
    "http/custom-http-provider-out2.yaml",
    "http/extended-custom-grpc-provider-no-namespace-out2.yaml",
    "http/extended-custom-grpc-provider-out2.yaml",
    "http/extended-custom-http-provider-out2.yaml",
];

fn checks(file: &str) -> Option<Vec<Check>> {
    const ALL: &str = "ns[foo]-policy[allow-all]-rule[0]";
    const H1_0: &str = "ns[foo]-policy[httpbin-1]-rule[0]";
    const H1_1: &str = "ns[foo]-policy[httpbin-1]-rule[1]";
    const H2_0: &str = "ns[foo]-policy[httpbin-2]-rule[0]";
    const HB_0: &str = "ns[foo]-policy[httpbin]-rule[0]";
    const HB_1: &str = "ns[foo]-policy[httpbin]-rule[1]";
    let mtls = |p: &'static str| http().peer(p);
    Some(match file {
        "http/allow-empty-rule-out.yaml" => {
            vec![allowed(http(), ALL), allowed(tcp().port(1), ALL), allowed(mtls("spiffe://cluster.local/ns/a/sa/b").method("DELETE").path("/x"), ALL)]
        }
        "http/allow-nil-rule-out.yaml" => {
            const NONE: &str = "ns[foo]-policy[allow-none]-rule[0]";
            vec![
                not_allowed(http()),
                not_allowed(tcp()),
                not_allowed(mtls("spiffe://cluster.local/ns/foo/sa/b")),
                policy(http().jwt(json!({"iss": "a", "sub": "b"})), NONE, false),
            ]
        }
        "http/audit-full-rule-out.yaml" => {
            const AUDIT: &str = "ns[foo]-policy[audit-all]-rule[0]";
            vec![allowed(http(), AUDIT), allowed(tcp(), AUDIT), allowed(mtls("spiffe://x/ns/y/sa/z").path("/admin"), AUDIT)]
        }
        "http/extended-deny-empty-rule-out.yaml" => {
            const DENY_ALL: &str = "ns[foo]-policy[deny-all]-rule[0]";
            vec![denied(http(), DENY_ALL), denied(tcp(), DENY_ALL), denied(mtls("spiffe://x/ns/y/sa/z"), DENY_ALL)]
        }
        "http/allow-full-rule-out.yaml" => vec![
            // rule[0]: any permission; a my-ns/my-sa or foo/sa-only peer, none of the "not" ones.
            allowed(mtls("spiffe://cluster.local/ns/my-ns/sa/my-sa"), H1_0),
            allowed(mtls("spiffe://td/ns/foo/sa/sa-only"), H1_0),
            allowed(mtls("spiffe://td/ns/my-ns/extra/sa/my-sa/more"), H1_0),
            not_allowed(mtls("spiffe://cluster.local/ns/my-ns/sa/my-sa-not")),
            not_allowed(mtls("spiffe://cluster.local/ns/foo/sa/sa-not-only")),
            not_allowed(mtls("cluster.local/ns/my-ns/sa/my-sa")),
            not_allowed(http()),
            // rule[1] needs `:authority` present and not present: never, even with everything else right.
            policy(
                mtls("spiffe://principal")
                    .host("exact.com")
                    .method("method")
                    .path("/exact")
                    .dst("10.10.10.10:80")
                    .sni("exact.com")
                    .metadata("envoy.filters.a.b", json!({"c": "exact"}))
                    .jwt(json!({"iss": "requestPrincipals", "sub": ""})),
                H1_1,
                false,
            ),
            permission(http().host("EXACT.com"), H1_1, &[0, 0, 0], true),
            permission(http().host("www.Suffix.COM"), H1_1, &[0, 0, 1], true),
            permission(http().host("suffix.com"), H1_1, &[0, 0, 1], false),
            permission(tcp(), H1_1, &[0, 0], false),
            permission(tcp(), H1_1, &[0, 1], true),
            permission(http(), H1_1, &[0, 1], false),
            permission(http().method("method-prefix-x"), H1_1, &[0, 2, 1], true),
            permission(http().method("METHOD"), H1_1, &[0, 2, 0], false),
            permission(http().path("/prefix/a?q=/exact"), H1_1, &[0, 4, 1], true),
            permission(http().path("/exact?x"), H1_1, &[0, 4, 0], true),
            permission(http().path("/path/template/x?q"), H1_1, &[0, 4, 4], true),
            permission(http().path("/path/template/x/y"), H1_1, &[0, 4, 4], false),
            permission(http().path("/a/b/path/template"), H1_1, &[0, 4, 5], true),
            permission(http().path("/path/template"), H1_1, &[0, 4, 5], false),
            permission(tcp(), H1_1, &[0, 4], false),
            permission(http().port(90), H1_1, &[0, 6], true),
            permission(http().port(91), H1_1, &[0, 6], false),
            permission(http().port(9000), H1_1, &[0, 7], false),
            permission(http().dst("192.168.10.7:80"), H1_1, &[0, 8], true),
            permission(http().dst("192.168.11.7:80"), H1_1, &[0, 8], false),
            permission(http().dst("90.168.10.1:80"), H1_1, &[0, 9], false),
            permission(http().sni("a.suffix.com"), H1_1, &[0, 12, 1], true),
            permission(http(), H1_1, &[0, 12], false),
            permission(http().metadata("envoy.filters.a.b", json!({"c": "x-suffix"})), H1_1, &[0, 14], true),
            permission(http().metadata("envoy.filters.a.b", json!({"c": 5})), H1_1, &[0, 14], false),
            permission(http(), H1_1, &[0, 14], false),
            principal(mtls("spiffe://principal-prefix-x"), H1_1, &[0, 0, 1], true),
            principal(mtls("spiffe://a-suffix-principal"), H1_1, &[0, 0, 2], true),
            principal(http(), H1_1, &[0, 0], false),
            principal(http().jwt(json!({"iss": "requestPrincipals", "sub": ""})), H1_1, &[0, 2, 0], true),
            principal(http().jwt(json!({"iss": "requestPrincipals"})), H1_1, &[0, 2, 0], false),
            principal(http().jwt(json!({"iss": "i", "sub": "a-suffix-requestPrincipals"})), H1_1, &[0, 2, 2], true),
            principal(mtls("spiffe://td/ns/ns-prefix-a/sa/b"), H1_1, &[0, 4, 1], true),
            principal(mtls("spiffe://td/ns/ns-prefix-a/sa/b"), H1_1, &[0, 4, 0], false),
            principal(http().remote("5.6.7.8:1"), H1_1, &[0, 6], true),
            principal(http().src("5.6.7.8:1"), H1_1, &[0, 6], true),
            principal(http().src("5.6.7.8:1").remote("7.7.7.7:1"), H1_1, &[0, 6], false),
            principal(http().src("5.6.7.8:1").remote("7.7.7.7:1"), H1_1, &[0, 8], true),
            principal(http().src("9.2.1.1:1"), H1_1, &[0, 9], false),
            principal(http().header("x-header", "header-prefix-1"), H1_1, &[0, 10, 1], true),
            principal(http().header("x-header", "other"), H1_1, &[0, 10, 3], true),
            principal(http(), H1_1, &[0, 10], false),
            principal(http().jwt(json!({"aud": ["x", "audiences-prefix-1"]})), H1_1, &[0, 22], true),
            principal(http().jwt(json!({"aud": "audiences"})), H1_1, &[0, 22], true),
            principal(http().jwt(json!({"aud": []})), H1_1, &[0, 22], false),
            principal(http().jwt(json!({"nested1": {"nested2": "nested"}})), H1_1, &[0, 28], true),
            principal(http().jwt(json!({"nested1": "nested"})), H1_1, &[0, 28], false),
        ],
        "http/allow-host-before-111-out.yaml" => vec![
            not_allowed(http().host("example.com")),
            not_allowed(tcp()),
            permission(http().host("EXAMPLE.com"), H1_0, &[0, 0, 0], true),
            permission(http().host("example.org"), H1_0, &[0, 0, 0], false),
            permission(http().host("prefix.example.x"), H1_0, &[0, 0, 1], true),
            permission(http().host("a.Example.Com"), H1_0, &[0, 0, 2], true),
            permission(http().host("example.com.evil"), H1_0, &[0, 0, 2], false),
            permission(http().host("x.not-example.com"), H1_0, &[0, 1, 0, 2], true),
            permission(http(), H1_0, &[0, 1], false),
            permission(tcp(), H1_0, &[0, 0], false),
            permission(tcp(), H1_0, &[0, 1], true),
        ],
        "http/custom-bad-out.yaml" => {
            const B1: &str = "istio-ext-authz-default-ns[foo]-policy[httpbin-1]-rule[0]-deny-due-to-bad-CUSTOM-action";
            const B2: &str = "istio-ext-authz-default-ns[foo]-policy[httpbin-2]-rule[0]-deny-due-to-bad-CUSTOM-action";
            vec![
                denied(http().path("/httpbin1"), B1),
                denied(http().path("/httpbin2?x=1"), B2),
                passes(http().path("/httpbin3")),
                passes(http().path("/httpbin1/x")),
                passes(tcp()),
            ]
        }
        "http/custom-bad-multiple-providers-out1.yaml" => {
            const B: &str = "istio-ext-authz-another-ns[foo]-policy[httpbin-2]-rule[0]-deny-due-to-bad-CUSTOM-action";
            vec![denied(http().path("/httpbin2"), B), passes(http().path("/httpbin1"))]
        }
        "http/custom-bad-multiple-providers-out2.yaml" => {
            const B: &str = "istio-ext-authz-default-ns[foo]-policy[httpbin-1]-rule[0]-deny-due-to-bad-CUSTOM-action";
            vec![denied(http().path("/httpbin1"), B), passes(http().path("/httpbin2"))]
        }
        "http/custom-grpc-provider-out1.yaml" | "http/custom-grpc-provider-no-namespace-out1.yaml" | "http/custom-http-provider-out1.yaml" => {
            const C1: &str = "istio-ext-authz-default-ns[foo]-policy[httpbin-1]-rule[0]";
            const C2: &str = "istio-ext-authz-default-ns[foo]-policy[httpbin-2]-rule[0]";
            // Shadow DENY rules: they only mark the requests ext_authz must check.
            vec![
                shadow(http().path("/httpbin1"), false, Some(C1)),
                shadow(http().path("/httpbin2#f"), false, Some(C2)),
                shadow(http().path("/httpbin"), true, None),
                shadow(tcp(), true, None),
            ]
        }
        "http/deny-and-allow-out1.yaml" => {
            const D: &str = "ns[foo]-policy[httpbin-deny]-rule[0]";
            vec![denied(mtls("spiffe://deny"), D), passes(mtls("spiffe://deny/x")), passes(mtls("spiffe://allow")), passes(http())]
        }
        "http/deny-and-allow-out2.yaml" => {
            const A: &str = "ns[foo]-policy[httpbin-allow]-rule[0]";
            vec![allowed(mtls("spiffe://allow"), A), not_allowed(mtls("spiffe://deny")), not_allowed(http())]
        }
        "http/dry-run-allow-and-deny-out1.yaml" => {
            vec![shadow(http().path("/deny"), false, Some(H2_0)), shadow(http().path("/allow"), true, None), passes(http().path("/deny"))]
        }
        "http/dry-run-allow-and-deny-out2.yaml" => {
            vec![shadow(http().path("/allow"), true, Some(H1_0)), shadow(http().path("/deny"), false, None), passes(http().path("/deny"))]
        }
        "http/dry-run-allow-out.yaml" => {
            vec![shadow(http().path("/exact"), true, Some(H1_0)), shadow(http().path("/exact/"), false, None), passes(http().path("/other"))]
        }
        "http/dry-run-mix-out.yaml" => vec![
            allowed(http().path("/another"), H2_0),
            not_allowed(http().path("/allow")),
            shadow(http().path("/allow"), true, Some(H1_0)),
            shadow(http().path("/another"), false, None),
        ],
        "http/extended-allow-path-out.yaml" => vec![
            // Paths: the positive set includes `.+` and the negative set too: never.
            policy(http().path("/exact"), H1_0, false),
            not_allowed(http().path("/path/template/a")),
            permission(http().path("/prefix/x"), H1_0, &[0, 0, 1], true),
            permission(http().path("/a/suffix"), H1_0, &[0, 0, 2], true),
            permission(http().path("/path/template/a"), H1_0, &[0, 0, 4], true),
            permission(http().path("/path/template/a/b"), H1_0, &[0, 0, 4], false),
            permission(http().path("/x/y/path/template"), H1_0, &[0, 0, 5], true),
            permission(http().path("/x/y/not-path/template"), H1_0, &[0, 1, 0, 5], true),
            permission(http().path("/not-path/template/z"), H1_0, &[0, 1, 0, 4], true),
            permission(http().path("/exact"), H1_0, &[0, 1], false),
            permission(tcp(), H1_0, &[0, 1], true),
        ],
        "http/multiple-policies-out.yaml" => {
            const M: [&str; 10] = [
                "",
                "ns[foo]-policy[httpbin-1]-rule[0]",
                "ns[foo]-policy[httpbin-2]-rule[0]",
                "ns[foo]-policy[httpbin-3]-rule[0]",
                "ns[foo]-policy[httpbin-4]-rule[0]",
                "ns[foo]-policy[httpbin-5]-rule[0]",
                "ns[foo]-policy[httpbin-6]-rule[0]",
                "ns[foo]-policy[httpbin-7]-rule[0]",
                "ns[foo]-policy[httpbin-8]-rule[0]",
                "ns[foo]-policy[httpbin-9]-rule[0]",
            ];
            let none = || http().method("DELETE");
            vec![
                allowed(http(), M[1]),
                allowed(http().method("POST").path("/v1"), M[1]),
                allowed(none().path("/v2"), M[2]),
                allowed(none().host("HTTPBIN.org"), M[3]),
                allowed(none().port(90), M[4]),
                allowed(none().peer("spiffe://principals2"), M[5]),
                allowed(none().jwt(json!({"iss": "requestPrincipals1", "sub": ""})), M[6]),
                allowed(none().peer("spiffe://cluster.local/ns/namespaces2/sa/x"), M[7]),
                allowed(none().src("5.6.7.9:1"), M[8]),
                allowed(none().header("x-abc", "abc2"), M[9]),
                not_allowed(none()),
                not_allowed(none().path("/v3").host("google.org").port(91)),
                not_allowed(none().jwt(json!({"iss": "requestPrincipals1", "sub": "x"}))),
                not_allowed(none().jwt(json!({"iss": "requestPrincipals1"}))),
                not_allowed(none().peer("spiffe://cluster.local/ns/namespaces3/sa/x")),
                not_allowed(none().src("5.6.8.9:1").remote("5.6.7.9:1")),
                not_allowed(none().header("x-abc", "abc1").header("x-abc", "abc2")),
                not_allowed(tcp().port(91)),
                allowed(tcp().port(80), M[4]),
            ]
        }
        "http/simple-policy-principal-with-wildcard-out.yaml" => vec![
            allowed(mtls("spiffe://anything"), HB_0),
            allowed(mtls("spiffe://td1/ns/foo/sa/rule[0]-from[1]-principal[0]"), HB_0),
            not_allowed(http()),
            principal(mtls("spiffe://bar/ns/foo/sa/rule[0]-from[1]-principal[1]"), HB_0, &[1, 2], true),
            principal(mtls("spiffe://td1/ns/foo/sa/rule[0]-from[1]-principal[1]"), HB_0, &[1, 1], true),
            principal(mtls("spiffe://td2/ns/foo/sa/rule[0]-from[1]-principal[1]"), HB_0, &[1], false),
            principal(mtls("spiffe://x/ns/foo/sa/rule0-from1-principal0"), HB_0, &[1], false),
        ],
        "http/simple-policy-td-aliases-out.yaml" => vec![
            // The methods (`rule[0]-to[0]-method[0]`) are not HTTP tokens: no request carries them.
            not_allowed(mtls("spiffe://cluster.local/ns/rule[0]/sa/from[0]-principal[0]")),
            not_allowed(mtls("spiffe://td1/ns/rule[1]/sa/from[0]-principal[0]").method("POST")),
            permission(http(), HB_0, &[0], false),
            principal(mtls("spiffe://cluster.local/ns/rule[0]/sa/from[0]-principal[0]"), HB_0, &[0], true),
            principal(mtls("spiffe://td1/ns/rule[0]/sa/from[0]-principal[0]"), HB_0, &[0], true),
            principal(mtls("spiffe://other-td/ns/rule[0]/sa/from[0]-principal[0]"), HB_0, &[0], false),
            principal(mtls("spiffe://td1/ns/rule[1]/sa/from[0]-principal[0]"), HB_1, &[0], true),
            principal(http(), HB_1, &[0], false),
            // from[1] needs an exact SAN and a namespace regex at once: not one SAN.
            principal(mtls("spiffe://td1/ns/rule[0]/sa/from[1]-principal[1]"), HB_0, &[1], false),
            principal(mtls("spiffe://td1/ns/rule[0]/sa/from[1]-principal[1]"), HB_0, &[1, 0], true),
            principal(mtls("spiffe://td/ns/rule[0]-from[1]-ns[0]/sa/x"), HB_0, &[1, 1], true),
        ],
        "http/extended-simple-policy-multiple-td-aliases-out.yaml" => vec![
            allowed(mtls("spiffe://some-td/ns/rule[0]/sa/from[0]-principal[0]"), HB_0),
            allowed(mtls("spiffe://td1/ns/rule[0]/sa/from[0]-principal[0]"), HB_0),
            not_allowed(mtls("spiffe://other-td/ns/rule[0]/sa/from[0]-principal[0]")),
            not_allowed(tcp()),
            principal(mtls("spiffe://some-td/ns/rule[0]/sa/from[1]-principal[1]"), HB_0, &[1, 0], true),
            principal(mtls("spiffe://some-td/ns/rule[0]/sa/from[1]-principal[1]"), HB_0, &[1], false),
        ],
        "http/td-aliases-source-principal-out.yaml" => vec![
            allowed(mtls("spiffe://cluster.local/ns/istio-system/sa/any"), HB_0),
            not_allowed(mtls("spiffe://cluster.local/ns/foo/sa/all-td")),
            not_allowed(http()),
            principal(mtls("spiffe://x-td/ns/foo/sa/prefix-td"), HB_0, &[0, 1, 2], true),
            principal(mtls("spiffe://x-tdx/ns/foo/sa/prefix-td"), HB_0, &[0, 1, 2], false),
            principal(mtls("spiffe://some-trustdomain/ns/foo/sa/prefix-td"), HB_0, &[0, 1, 3], true),
        ],
        "http/extended-trust-domains-out.yaml" => vec![
            allowed(mtls("spiffe://cluster.local/ns/a/sa/b"), HB_0),
            allowed(mtls("spiffe://evil.com/ns/a/sa/b"), HB_0),
            not_allowed(mtls("spiffe://bad.com/ns/a/sa/b")),
            not_allowed(mtls("spiffe://untrusted/ns/a/sa/b")),
            // Only "not these principals" on the second principal: plaintext passes it.
            allowed(http(), HB_0),
            principal(mtls("spiffe://evil.com/ns/a/sa/b"), HB_0, &[0], false),
            principal(mtls("spiffe://another.local/ns/a/sa/b"), HB_0, &[0], true),
        ],
        "http/single-policy-out.yaml" => vec![
            not_allowed(
                mtls("spiffe://rule[1]-from[0]-principal[1]")
                    .host("rule[1]-to[0]-host[1]")
                    .path("rule[1]-to[0]-path[1]")
                    .port(9101)
                    .src("10.1.0.1:1")
                    .remote("172.22.3.1:1")
                    .jwt(json!({"iss": "rule[1]-from[0]-requestPrincipal[1]", "sub": ""})),
            ),
            policy(http(), HB_0, false),
            // Methods like `rule[1]-to[0]-method[1]` are not HTTP tokens: the permissions never match.
            permission(http().host("rule[1]-to[0]-host[1]").path("rule[1]-to[0]-path[1]").port(9101), HB_1, &[0], false),
            permission(http().host("RULE[1]-to[0]-HOST[2]"), HB_1, &[0, 0], true),
            permission(http().host("rule[1]-to[0]-host[3]"), HB_1, &[0, 0], false),
            permission(http(), HB_1, &[0, 1], false),
            permission(http().path("rule[1]-to[0]-path[2]?x"), HB_1, &[0, 2], true),
            permission(http().path("/rule[1]-to[0]-path[2]"), HB_1, &[0, 2], false),
            permission(http().port(9102), HB_1, &[0, 3], true),
            permission(http().port(9103), HB_1, &[0, 3], false),
            permission(http().port(9112), HB_1, &[1, 3], true),
            permission(http().dst("192.168.10.1:9001"), HB_0, &[0, 4], true),
            permission(http().dst("192.168.11.1:9001"), HB_0, &[0, 4], false),
            principal(mtls("spiffe://rule[1]-from[0]-principal[2]"), HB_1, &[0, 0], true),
            principal(http().jwt(json!({"iss": "rule[1]-from[0]-requestPrincipal[2]", "sub": ""})), HB_1, &[0, 1], true),
            principal(http().src("10.1.0.2:1").remote("172.22.3.255:1"), HB_1, &[0, 3], true),
            principal(http().src("10.1.0.2:1").remote("172.22.4.0:1"), HB_1, &[0, 3], false),
            principal(http().src("10.1.0.2:1").remote("172.22.4.0:1"), HB_1, &[0, 4], true),
            principal(http().remote("10.80.127.1:1"), HB_0, &[0, 6], true),
            principal(http().remote("172.16.10.10:1"), HB_0, &[0, 3], true),
            principal(http().remote("172.16.10.10:1"), HB_0, &[0, 6], false),
            principal(http().header("x-header", "a-suffix-header"), HB_0, &[0, 5, 2], true),
        ],
        "tcp/allow-both-http-tcp-out.yaml" => {
            const R3: &str = "ns[foo]-policy[httpbin-deny]-rule[3]";
            vec![
                allowed(tcp().port(80).peer("spiffe://cluster.local/ns/ns-1/sa/a"), R3),
                not_allowed(tcp().port(8080).peer("spiffe://cluster.local/ns/ns-1/sa/a")),
                not_allowed(tcp().port(80).peer("spiffe://cluster.local/ns/ns-2/sa/a")),
                not_allowed(tcp().port(80)),
            ]
        }
        "tcp/allow-only-http-out.yaml" => vec![
            // Every rule had HTTP-only fields: istiod dropped them, leaving an empty ALLOW.
            not_allowed(tcp()),
            not_allowed(tcp().peer("spiffe://cluster.local/ns/ns-1/sa/a").port(80)),
        ],
        "tcp/audit-both-http-tcp-out.yaml" => {
            const A: &str = "ns[foo]-policy[httpbin-audit]-rule[0]";
            let perm_ok = || tcp().dst("10.10.10.10:80").sni("exact.com").metadata("envoy.filters.a.b", json!({"c": "exact"}));
            vec![
                passes(perm_ok()),
                passes(tcp()),
                permission(perm_ok(), A, &[0], false),
                permission(perm_ok(), A, &[0, 0], true),
                permission(perm_ok(), A, &[0, 4], false),
                permission(perm_ok().port(91), A, &[0, 4], true),
                permission(perm_ok(), A, &[0, 6], true),
                permission(perm_ok().sni("exact.com.x"), A, &[0, 6], false),
                permission(perm_ok(), A, &[0, 8], true),
                permission(perm_ok().metadata("envoy.filters.a.b", json!({"c": "not-exact"})), A, &[0, 9], false),
                principal(tcp().peer("spiffe://principal"), A, &[0, 0], true),
                principal(tcp().peer("spiffe://not-principal"), A, &[0, 1], false),
                principal(tcp().src("1.2.3.4:1"), A, &[0, 6], true),
                principal(tcp().src("1.2.3.4:1"), A, &[0, 4], false),
            ]
        }
        "tcp/deny-both-http-tcp-out.yaml" => {
            const R: [&str; 11] = [
                "ns[foo]-policy[httpbin-deny]-rule[0]",
                "ns[foo]-policy[httpbin-deny]-rule[1]",
                "ns[foo]-policy[httpbin-deny]-rule[2]",
                "ns[foo]-policy[httpbin-deny]-rule[3]",
                "ns[foo]-policy[httpbin-deny]-rule[4]",
                "ns[foo]-policy[httpbin-deny]-rule[5]",
                "ns[foo]-policy[httpbin-deny]-rule[6]",
                "ns[foo]-policy[httpbin-deny]-rule[7]",
                "ns[foo]-policy[httpbin-deny]-rule[8]",
                "ns[foo]-policy[httpbin-deny]-rule[9]",
                "ns[foo]-policy[httpbin-deny]-rule[10]",
            ];
            // rule[0] denies everything (its HTTP-only fields were widened away), and
            // it comes first by name, before rule[10].
            vec![
                denied(tcp(), R[0]),
                denied(tcp().port(80).peer("spiffe://cluster.local/ns/ns-1/sa/a"), R[0]),
                policy(tcp().port(8080), R[4], false),
                policy(tcp().port(80), R[4], true),
                policy(tcp().port(8080).peer("spiffe://cluster.local/ns/ns-2/sa/a"), R[6], true),
                policy(tcp().port(8080).peer("spiffe://cluster.local/ns/ns-1/sa/a"), R[6], false),
                policy(tcp().port(80).peer("spiffe://cluster.local/ns/ns-1/sa/a"), R[7], true),
                policy(tcp().port(80), R[7], false),
                policy(tcp().peer("spiffe://cluster.local/ns/ns-1/sa/b"), R[3], true),
                policy(tcp(), R[3], false),
                policy(tcp(), R[10], false),
                permission(tcp().dst("10.10.10.10:80").sni("exact.com").metadata("envoy.filters.a.b", json!({"c": "exact"})), R[10], &[0, 0], true),
                principal(tcp().peer("spiffe://principal-prefix-x"), R[10], &[0, 0, 2], true),
                principal(tcp().peer("spiffe://principal-prefix-x"), R[10], &[0, 1], false),
                principal(tcp().remote("172.18.7.255:1"), R[10], &[0, 4], true),
                principal(tcp().remote("172.18.8.0:1"), R[10], &[0, 4], false),
            ]
        }
        "tcp/dry-run-mix-out.yaml" => {
            const T2: &str = "ns[foo]-policy[httpbin-2]-rule[0]";
            const T1: &str = "ns[foo]-policy[httpbin-1]-rule[0]";
            vec![allowed(tcp().port(9000), T2), not_allowed(tcp().port(80)), shadow(tcp().port(80), true, Some(T1)), shadow(tcp().port(9000), false, None)]
        }
        _ => return None,
    })
}

/// The checks for `file`: its own, or those of the identical non-`extended` file.
fn checks_for(dir: &Path, file: &str) -> Option<(String, Vec<Check>)> {
    if let Some(c) = checks(file) {
        return Some((file.to_owned(), c));
    }
    let (sub, name) = file.split_once('/')?;
    let base = format!("{sub}/{}", name.strip_prefix("extended-")?);
    let same = dir.join(&base).is_file() && std::fs::read(dir.join(file)).ok()? == std::fs::read(dir.join(&base)).ok()?;
    if same {
        checks(&base).map(|c| (base, c))
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn every_corpus_file_is_covered() {
    let Some(dir) = golden_dir() else { return };
    let files = out_files(&dir);
    assert!(files.len() >= 50, "expected istiod's golden outputs in {}", dir.display());
    let one_sided: BTreeMap<&str, &str> = ONE_SIDED.iter().copied().collect();
    let mut missing = Vec::new();
    let mut seen_ext_authz = BTreeSet::new();
    let mut total = 0;
    for file in &files {
        let loaded = load(&dir, file);
        if !loaded.ext_authz.is_empty() {
            seen_ext_authz.insert(file.as_str());
        }
        if loaded.rbac.is_empty() {
            continue;
        }
        assert_eq!(loaded.rbac.len(), 1, "{file}: one RBAC filter per file");
        let Some((from, checks)) = checks_for(&dir, file) else {
            missing.push(file.clone());
            continue;
        };
        let f = &loaded.rbac[0];
        for check in &checks {
            run(file, f, check);
        }
        let whole: Vec<&Check> = checks.iter().filter(|c| c.whole()).collect();
        let positive = whole.iter().any(|c| c.positive());
        let negative = whole.iter().any(|c| !c.positive());
        if let Some(why) = one_sided.get(file.as_str()).or(one_sided.get(from.as_str())) {
            assert!(!(positive && negative), "{file} is listed as one-sided ({why}) but has checks that match and checks that do not");
        } else {
            assert!(positive && negative, "{file}: needs decision- or policy-level checks that match and that do not");
        }
        let shared = if &from == file { String::new() } else { format!(" (identical to {from})") };
        eprintln!("{file}: {} checks{shared}", checks.len());
        total += checks.len();
    }
    assert!(missing.is_empty(), "no checks written for {missing:?}: read each file and add them to `checks`");
    let expected: BTreeSet<&str> = EXT_AUTHZ_FILES.iter().copied().collect();
    assert_eq!(seen_ext_authz, expected, "files carrying ext_authz (CUSTOM)");
    for (file, _) in ONE_SIDED {
        assert!(files.iter().any(|f| f == file), "{file} is listed as one-sided but is not in the corpus");
    }
    eprintln!("{} files, {total} checks", files.len());
}

/// istiod's CUSTOM action: the RBAC filter's shadow DENY rules mark the requests
/// (`istio_ext_authz_shadow_effective_policy_id`) that the `ext_authz` filter,
/// enabled by that metadata, sends to the provider.
#[test]
fn custom_action_marks_requests_for_ext_authz() {
    let Some(dir) = golden_dir() else { return };
    for pair in ["custom-grpc-provider", "custom-grpc-provider-no-namespace", "custom-http-provider"] {
        let rbac = load(&dir, &format!("http/{pair}-out1.yaml")).rbac.pop().unwrap();
        let ext = load(&dir, &format!("http/{pair}-out2.yaml")).ext_authz.pop().unwrap();
        let md = ext.filter_enabled_metadata.as_ref().expect("filter_enabled_metadata");
        assert_eq!(md.filter, "envoy.filters.http.rbac", "{pair}");
        use xds_client::pb::envoy::r#type::matcher::v3::{metadata_matcher::path_segment::Segment, string_matcher::MatchPattern, value_matcher};
        let [seg] = &md.path[..] else { panic!("{pair}: one path segment") };
        let Some(Segment::Key(key)) = &seg.segment else { panic!("{pair}") };
        let Some(value_matcher::MatchPattern::StringMatch(sm)) = md.value.as_ref().and_then(|v| v.match_pattern.as_ref()) else { panic!("{pair}") };
        let Some(MatchPattern::Prefix(prefix)) = &sm.match_pattern else { panic!("{pair}") };
        let enabled = |req: Req| {
            req.with(|r| {
                let d = rbac.evaluate(r);
                assert!(d.allowed, "{pair}: the CUSTOM marker never denies");
                rbac.shadow_metadata(&d).iter().any(|(k, v)| k == key && v.starts_with(prefix.as_str()))
            })
        };
        assert!(enabled(http().path("/httpbin1")), "{pair}");
        assert!(enabled(http().path("/httpbin2")), "{pair}");
        assert!(!enabled(http().path("/httpbin3")), "{pair}");
    }
}

/// Every RBAC filter in istiod's real sidecar config dump translates (10 HTTP, 3 network).
#[test]
fn every_rbac_filter_in_the_sidecar_dump_translates() {
    let Some(corpus) = corpus_dir() else { return };
    let text = std::fs::read_to_string(corpus.join("istio-envoy-configdump/sidecar_config_dump_with_rbac.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut configs = Vec::new();
    collect_typed(&doc, &mut configs);
    let (mut http_filters, mut network_filters, mut checked) = (0, 0, 0);
    for mut config in configs {
        let t = config.as_object_mut().unwrap().remove("@type").unwrap();
        let translated = if t == HTTP_RBAC_TYPE_URL {
            http_filters += 1;
            rbac::rbac_from_http(&protojson::from_json::<http_rbac::Rbac>(config).unwrap().message)
        } else {
            network_filters += 1;
            rbac::rbac_from_network(&protojson::from_json::<network_rbac::Rbac>(config).unwrap().message)
        };
        let f = translated.unwrap_or_else(|e| panic!("{}: {}", e.path, e.reason));
        // The inbound HTTP ALLOW: GET /info (or POST /data) from default/sleep, as read
        // from the dump: filter state `io.istio.peer_principal` and the older
        // `istio_authn` claims metadata (a list of issuers).
        const HTTPBIN: &str = "ns[default]-policy[httpbin]-rule[0]";
        if f.rules.as_ref().is_some_and(|r| r.policies.iter().any(|p| &*p.name == HTTPBIN)) {
            checked += 1;
            let claims = json!({"request.auth.claims": {"iss": ["https://accounts.google.com"]}});
            let sleep = || http().peer("spiffe://cluster.local/ns/default/sa/sleep").path("/info/x").metadata("istio_authn", claims.clone());
            run("sidecar dump", &f, &allowed(sleep(), HTTPBIN));
            run(
                "sidecar dump",
                &f,
                &allowed(http().peer("spiffe://cluster.local/ns/test/sa/any").method("POST").path("/data").metadata("istio_authn", claims.clone()), HTTPBIN),
            );
            run("sidecar dump", &f, &not_allowed(sleep().method("POST")));
            run("sidecar dump", &f, &not_allowed(http().path("/info").metadata("istio_authn", claims.clone())));
            run("sidecar dump", &f, &not_allowed(sleep().metadata("istio_authn", json!({"request.auth.claims": {"iss": "https://accounts.google.com"}}))));
        }
    }
    assert_eq!((http_filters, network_filters), (10, 3));
    assert!(checked > 0, "the httpbin ALLOW policy of the dump was not found");
}

fn collect_typed(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(map) => {
            let t = map.get("@type").and_then(Value::as_str).unwrap_or_default();
            if t == HTTP_RBAC_TYPE_URL || t == NETWORK_RBAC_TYPE_URL {
                out.push(v.clone());
                return;
            }
            map.values().for_each(|v| collect_typed(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_typed(v, out)),
        _ => {}
    }
}
