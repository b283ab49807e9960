use std::net::SocketAddr;

use http::{HeaderMap, Method};
use proptest::prelude::*;
use serde_json::json;
use xds_client::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use xds_client::pb::envoy::extensions::filters::network::rbac::v3 as network_rbac;
use xds_client::protojson;

use super::*;
use crate::model::common::{Pattern, StringMatch};
use crate::translate::Invalid;

fn http_filter(config: serde_json::Value) -> Result<Rbac, Invalid> {
    rbac_from_http(&protojson::from_json::<http_rbac::Rbac>(config).unwrap().message)
}

fn network_filter(config: serde_json::Value) -> Result<Rbac, Invalid> {
    rbac_from_network(&protojson::from_json::<network_rbac::Rbac>(config).unwrap().message)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// `policies`: name -> (permission, principal).
fn rules(action: &str, policies: &[(&str, serde_json::Value, serde_json::Value)]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, permission, principal) in policies {
        map.insert(name.to_string(), json!({ "permissions": [permission], "principals": [principal] }));
    }
    json!({ "action": action, "policies": map })
}

struct Http {
    method: Method,
    headers: HeaderMap,
}

impl Http {
    fn new() -> Self {
        Http { method: Method::GET, headers: HeaderMap::new() }
    }

    fn head<'a>(&'a self, authority: &'a str, path: &'a str) -> RequestHead<'a> {
        RequestHead { method: &self.method, authority, path, scheme: "http", headers: &self.headers }
    }
}

#[test]
fn policies_are_tried_in_name_order_and_the_action_decides() {
    let any = json!({ "any": true });
    let port = |p: u32| json!({ "destinationPort": p });
    let config = |action: &str| json!({ "rules": rules(action, &[("b", port(80), any.clone()), ("a", port(80), any.clone()), ("c", port(81), any.clone())]) });
    let on_80 = Request::tcp(addr("198.18.0.1:5000"), addr("198.18.0.2:80"));
    let on_90 = Request::tcp(addr("198.18.0.1:5000"), addr("198.18.0.2:90"));

    let allow = http_filter(config("ALLOW")).unwrap();
    let names: Vec<&str> = allow.rules.as_ref().unwrap().policies.iter().map(|p| &*p.name).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(allow.evaluate(&on_80), FilterDecision { allowed: true, policy: Some("a"), log: None, shadow: None });
    assert!(!allow.evaluate(&on_90).allowed);

    let deny = http_filter(config("DENY")).unwrap();
    assert_eq!(deny.evaluate(&on_80).policy, Some("a"));
    assert!(!deny.evaluate(&on_80).allowed);
    assert!(deny.evaluate(&on_90).allowed);

    let log = http_filter(config("LOG")).unwrap();
    assert_eq!(log.evaluate(&on_80), FilterDecision { allowed: true, policy: Some("a"), log: Some(true), shadow: None });
    assert_eq!(log.evaluate(&on_90), FilterDecision { allowed: true, policy: None, log: Some(false), shadow: None });
}

#[test]
fn no_rules_allow_and_empty_allow_rules_deny() {
    let req = Request::tcp(addr("198.18.0.1:5000"), addr("198.18.0.2:80"));
    assert!(http_filter(json!({})).unwrap().evaluate(&req).allowed);
    assert!(!http_filter(json!({ "rules": {} })).unwrap().evaluate(&req).allowed);
    assert!(http_filter(json!({ "rules": { "action": "DENY" } })).unwrap().evaluate(&req).allowed);
}

#[test]
fn shadow_rules_only_report() {
    let f = http_filter(json!({
        "shadowRules": rules("DENY", &[("dry", json!({ "destinationPort": 80 }), json!({ "any": true }))]),
        "shadowRulesStatPrefix": "istio_dry_run_allow_",
    }))
    .unwrap();
    let req = Request::tcp(addr("198.18.0.1:5000"), addr("198.18.0.2:80"));
    let d = f.evaluate(&req);
    assert!(d.allowed);
    assert_eq!(d.shadow, Some(EngineResult { allowed: false, policy: Some("dry") }));
    assert_eq!(
        f.shadow_metadata(&d),
        [
            ("istio_dry_run_allow_shadow_effective_policy_id".to_owned(), "dry".to_owned()),
            ("istio_dry_run_allow_shadow_engine_result".to_owned(), "denied".to_owned())
        ]
    );
    let other = Request::tcp(addr("198.18.0.1:5000"), addr("198.18.0.2:81"));
    let d = f.evaluate(&other);
    assert_eq!(f.shadow_metadata(&d), [("istio_dry_run_allow_shadow_engine_result".to_owned(), "allowed".to_owned())]);
}

#[test]
fn a_chain_stops_at_the_first_denial() {
    let deny = http_filter(json!({ "rules": rules("DENY", &[("d", json!({ "destinationPort": 81 }), json!({ "any": true }))]) })).unwrap();
    let allow = http_filter(json!({ "rules": rules("ALLOW", &[("a", json!({ "destinationPort": 80 }), json!({ "any": true }))]) })).unwrap();
    let audit = http_filter(json!({ "rules": rules("LOG", &[("l", json!({ "any": true }), json!({ "any": true }))]) })).unwrap();
    let chain = [&audit, &deny, &allow];
    let to = |port: u16| Request::tcp(addr("198.18.0.1:5000"), SocketAddr::new("198.18.0.2".parse().unwrap(), port));
    assert_eq!(decide(chain, &to(80)), Decision::Allowed { log: true });
    assert_eq!(decide(chain, &to(81)), Decision::Denied { filter: 1, policy: Some("d"), log: true });
    assert_eq!(decide(chain, &to(82)), Decision::Denied { filter: 2, policy: None, log: true });
    assert_eq!(decide([&deny, &allow], &to(80)), Decision::Allowed { log: false });
}

#[test]
fn http_only_matchers_on_a_tcp_connection() {
    let present = json!({ "header": { "name": ":authority", "presentMatch": true } });
    let absent = json!({ "header": { "name": ":authority", "presentMatch": true, "invertMatch": true } });
    let path = json!({ "urlPath": { "path": { "prefix": "/" } } });
    let not_path = json!({ "notRule": path.clone() });
    let any = json!({ "any": true });
    let f = network_filter(json!({
        "statPrefix": "tcp.",
        "rules": rules("ALLOW", &[("1-present", present, any.clone()), ("2-path", path, any.clone()), ("3-absent", absent, any.clone()), ("4-not-path", not_path, any)]),
    }))
    .unwrap();
    assert_eq!(f.enforcement, Some(Enforcement::OneTimeOnFirstByte));
    let tcp = Request::tcp(addr("198.18.0.1:5000"), addr("198.18.0.2:80"));
    // No headers: an inverted presence check holds, a path never matches.
    assert_eq!(f.rules.as_ref().unwrap().evaluate(&tcp), Some("3-absent"));
    let http = Http::new();
    let req = Request { http: Some(http.head("example.com", "/x?y")), ..tcp };
    assert_eq!(f.rules.as_ref().unwrap().evaluate(&req), Some("1-present"));
}

#[test]
fn headers_paths_and_principals() {
    let f = http_filter(json!({ "rules": rules("ALLOW", &[(
        "p",
        json!({ "andRules": { "rules": [
            { "header": { "name": ":authority", "stringMatch": { "suffix": ".example.com", "ignoreCase": true } } },
            { "header": { "name": "X-Multi", "exactMatch": "a,b" } },
            { "urlPath": { "path": { "exact": "/api" } } },
        ] } }),
        json!({ "andIds": { "ids": [
            { "authenticated": { "principalName": { "safeRegex": { "regex": "spiffe://.+/ns/foo/sa/.+" } } } },
            { "remoteIp": { "addressPrefix": "198.18.0.0", "prefixLen": 24 } },
            { "notId": { "directRemoteIp": { "addressPrefix": "198.18.0.9", "prefixLen": 32 } } },
        ] } }),
    )]) }))
    .unwrap();
    let mut http = Http::new();
    http.headers.append("x-multi", "a".parse().unwrap());
    http.headers.append("x-multi", "b".parse().unwrap());
    let tcp = Request::tcp(addr("198.18.0.1:5000"), addr("198.18.0.2:80"));
    let ok = Request { http: Some(http.head("Www.Example.COM", "/api?q=1")), peer_principal: Some("spiffe://cluster.local/ns/foo/sa/x"), ..tcp };
    assert!(f.evaluate(&ok).allowed);
    let without_scheme = Request { peer_principal: Some("cluster.local/ns/foo/sa/x"), ..ok };
    assert!(!f.evaluate(&without_scheme).allowed, "the URI SAN keeps its scheme");
    assert!(!f.evaluate(&Request { peer_principal: None, ..ok }).allowed);
    assert!(!f.evaluate(&Request { http: Some(http.head("www.example.com", "/api/x")), ..ok }).allowed);
    let blocked = addr("198.18.0.9:5000");
    assert!(!f.evaluate(&Request { direct_remote: blocked, ..ok }).allowed);
    assert!(!f.evaluate(&Request { remote: addr("198.19.0.1:5000"), ..ok }).allowed);
    let mapped = Request { remote: addr("[::ffff:198.18.0.5]:5000"), ..ok };
    assert!(f.evaluate(&mapped).allowed, "v4-mapped addresses match v4 ranges");
}

#[test]
fn jwt_claims_through_dynamic_metadata() {
    let claim = |key: &str, value: serde_json::Value| json!({ "metadata": { "filter": "envoy.filters.http.jwt_authn", "path": [{ "key": "payload" }, { "key": key }], "value": value } });
    let f = http_filter(json!({ "rules": rules("ALLOW", &[(
        "jwt",
        json!({ "any": true }),
        json!({ "andIds": { "ids": [
            claim("iss", json!({ "stringMatch": { "exact": "https://issuer" } })),
            claim("groups", json!({ "orMatch": { "valueMatchers": [
                { "listMatch": { "oneOf": { "stringMatch": { "exact": "admin" } } } },
                { "stringMatch": { "exact": "admin" } },
            ] } })),
        ] } }),
    )]) }))
    .unwrap();
    let tcp = Request::tcp(addr("198.18.0.1:5000"), addr("198.18.0.2:80"));
    let with = |payload: serde_json::Value| jwt_metadata(payload);
    let list = with(json!({ "iss": "https://issuer", "groups": ["dev", "admin"] }));
    let single = with(json!({ "iss": "https://issuer", "groups": "admin" }));
    let wrong = with(json!({ "iss": "https://issuer", "groups": ["dev"] }));
    let no_groups = with(json!({ "iss": "https://issuer" }));
    assert!(f.evaluate(&Request { metadata: Some(&list), ..tcp }).allowed);
    assert!(f.evaluate(&Request { metadata: Some(&single), ..tcp }).allowed);
    assert!(!f.evaluate(&Request { metadata: Some(&wrong), ..tcp }).allowed);
    assert!(!f.evaluate(&Request { metadata: Some(&no_groups), ..tcp }).allowed);
    assert!(!f.evaluate(&tcp).allowed);
}

#[test]
fn the_filter_state_peer_principal_is_the_verified_peer() {
    let f = http_filter(json!({ "rules": rules("ALLOW", &[(
        "p",
        json!({ "any": true }),
        json!({ "filterState": { "key": "io.istio.peer_principal", "stringMatch": { "safeRegex": { "regex": ".*/ns/test/.*" } } } }),
    )]) }))
    .unwrap();
    let tcp = Request::tcp(addr("198.18.0.1:5000"), addr("198.18.0.2:80"));
    assert!(f.evaluate(&Request { peer_principal: Some("spiffe://cluster.local/ns/test/sa/a"), ..tcp }).allowed);
    assert!(!f.evaluate(&Request { peer_principal: Some("spiffe://cluster.local/ns/prod/sa/a"), ..tcp }).allowed);
    assert!(!f.evaluate(&tcp).allowed);
}

#[test]
fn what_envoy_rejects_is_invalid_with_its_path() {
    let any = json!({ "any": true });
    let with_permission = |p: serde_json::Value| json!({ "rules": rules("ALLOW", &[("p", p, any.clone())]) });
    let with_principal = |p: serde_json::Value| json!({ "rules": rules("ALLOW", &[("p", any.clone(), p)]) });
    let cases = [
        (with_permission(json!({ "urlPath": { "path": { "safeRegex": { "regex": "(" } } } })), "rules.policies[p].permissions[0].url_path.path.safe_regex"),
        (with_principal(json!({ "remoteIp": { "addressPrefix": "1.2.3", "prefixLen": 8 } })), "rules.policies[p].principals[0].remote_ip"),
        (with_principal(json!({ "remoteIp": { "addressPrefix": "1.2.3.4", "prefixLen": 33 } })), "rules.policies[p].principals[0].remote_ip"),
        (with_permission(json!({ "any": false })), "rules.policies[p].permissions[0].any"),
        (with_permission(json!({ "andRules": { "rules": [] } })), "rules.policies[p].permissions[0].and_rules"),
        (with_permission(json!({ "destinationPort": 70000 })), "rules.policies[p].permissions[0].destination_port"),
        (with_permission(json!({ "requestedServerName": { "prefix": "" } })), "rules.policies[p].permissions[0].requested_server_name"),
        (with_principal(json!({ "filterState": { "key": "k", "stringMatch": { "exact": "v" } } })), "rules.policies[p].principals[0].filter_state.key"),
        (
            json!({ "rules": { "policies": { "p": { "permissions": [any.clone()], "principals": [any.clone()], "condition": { "constExpr": { "boolValue": true } } } } } }),
            "rules.policies[p]",
        ),
        (json!({ "rules": { "policies": { "p": { "permissions": [any.clone()] } } } }), "rules.policies[p]"),
    ];
    for (config, path) in cases {
        let err = http_filter(config.clone()).expect_err(&config.to_string());
        assert_eq!(err.path, path, "{config}: {}", err.reason);
    }
    let err = network_filter(json!({ "rules": {} })).unwrap_err();
    assert_eq!(err.path, "stat_prefix");
}

#[test]
fn the_model_round_trips_through_serde() {
    let f = http_filter(json!({
        "rules": rules("DENY", &[(
            "p",
            json!({ "orRules": { "rules": [
                { "uriTemplate": { "name": "uri-template", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                    "pathTemplate": "/a/*" } } },
                { "destinationPortRange": { "start": 80, "end": 90 } },
                { "destinationIp": { "addressPrefix": "198.18.0.0", "prefixLen": 15 } },
            ] } }),
            json!({ "header": { "name": "x-a", "safeRegexMatch": { "regex": "a+" } } }),
        )]),
        "shadowRulesStatPrefix": "x_",
    }))
    .unwrap();
    let text = serde_json::to_string(&f).unwrap();
    let back: Rbac = serde_json::from_str(&text).unwrap();
    assert_eq!(back, f, "{text}");
    let Permission::OrRules(rules) = &f.rules.as_ref().unwrap().policies[0].permissions[0] else { panic!() };
    let tcp = Request::tcp(addr("198.18.0.1:5000"), addr("198.19.0.2:85"));
    assert!(rules[1].matches(&tcp) && rules[2].matches(&tcp) && !rules[0].matches(&tcp));
    assert!(!Permission::DestinationPortRange { start: 80, end: 85 }.matches(&tcp));
}

fn naive(kind: &StringMatch, ignore_case: bool, input: &str) -> bool {
    let (input, pattern) = match kind {
        StringMatch::Exact(s) | StringMatch::Prefix(s) | StringMatch::Suffix(s) | StringMatch::Contains(s) => {
            if ignore_case {
                (input.to_ascii_lowercase(), s.to_ascii_lowercase())
            } else {
                (input.to_owned(), s.clone())
            }
        }
        StringMatch::Regex(_) => unreachable!(),
    };
    match kind {
        StringMatch::Exact(_) => input == pattern,
        StringMatch::Prefix(_) => input.starts_with(&pattern),
        StringMatch::Suffix(_) => input.ends_with(&pattern),
        StringMatch::Contains(_) => input.contains(&pattern),
        StringMatch::Regex(_) => unreachable!(),
    }
}

proptest! {
    #[test]
    fn string_matchers_agree_with_a_naive_implementation(
        pattern in "[a-cA-C.]{1,4}", input in "[a-cA-C.]{0,8}", which in 0..4usize, ignore_case: bool,
    ) {
        let kind = match which {
            0 => StringMatch::Exact(pattern),
            1 => StringMatch::Prefix(pattern),
            2 => StringMatch::Suffix(pattern),
            _ => StringMatch::Contains(pattern),
        };
        let expected = naive(&kind, ignore_case, &input);
        prop_assert_eq!(StringMatcher { kind, ignore_case }.matches(&input), expected);
    }

    #[test]
    fn a_literal_regex_is_an_exact_full_match(pattern in "[a-c.]{1,4}", input in "[a-c.]{0,6}") {
        let m = StringMatcher { kind: StringMatch::Regex(Pattern::new(&regex::escape(&pattern)).unwrap()), ignore_case: false };
        prop_assert_eq!(m.matches(&input), input == pattern);
    }
}
