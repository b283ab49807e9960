use std::collections::BTreeMap;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use test_case::test_case;

use super::*;

const ISS: &str = "https://issuer.example";
const NOW: u64 = 1_700_000_000;

/// Base64url without padding (the JWK coordinates).
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

struct Key {
    pem: String,
    jwks: String,
}

/// An ES256 key and its JWKS (`kid` "k1").
fn key() -> Key {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    let (x, y) = (&raw[1..33], &raw[33..65]);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "x": b64url(x), "y": b64url(y)}]}).to_string();
    Key { pem: kp.serialize_pem(), jwks }
}

fn sign(key: &Key, kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, &EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap()).unwrap()
}

fn provider(jwks: &str) -> Provider {
    Provider {
        issuer: ISS.into(),
        audiences: Vec::new(),
        jwks: JwksSource::Local(jwks.into()),
        from_headers: Vec::new(),
        from_params: Vec::new(),
        from_cookies: Vec::new(),
        forward: false,
        payload_in_metadata: ISS.into(),
        space_delimited_claims: vec!["scope".into()],
        forward_payload_header: String::new(),
        claim_to_headers: Vec::new(),
        clock_skew_seconds: 60,
        require_expiration: false,
    }
}

fn good_claims() -> serde_json::Value {
    json!({"iss": ISS, "sub": "alice", "exp": NOW + 600, "aud": "svc", "groups": ["dev", "ops"], "scope": "read write"})
}

#[test]
fn a_good_token_verifies() {
    let k = key();
    let p = provider(&k.jwks);
    let v = p.verify("origins-0", &sign(&k, Some("k1"), good_claims()), &parse_jwks(&k.jwks).unwrap(), NOW, None).unwrap();
    assert_eq!(v.payload["sub"], "alice");
    // Without a kid every key of the right type is tried.
    p.verify("origins-0", &sign(&k, None, good_claims()), &parse_jwks(&k.jwks).unwrap(), NOW, None).unwrap();
}

#[test_case(json!({"iss": ISS, "sub": "a", "exp": NOW - 61}), Some("k1"), JwtError::Expired; "expired beyond the skew")]
#[test_case(json!({"iss": ISS, "sub": "a", "nbf": NOW + 61}), Some("k1"), JwtError::NotYetValid; "not yet valid")]
#[test_case(json!({"iss": "https://other", "sub": "a"}), Some("k1"), JwtError::UnknownIssuer; "other issuer")]
#[test_case(json!({"sub": "a"}), Some("k1"), JwtError::UnknownIssuer; "no issuer")]
#[test_case(json!({"iss": ISS, "sub": "a"}), Some("k2"), JwtError::KidAlgMismatch; "unknown kid")]
fn verification_errors(claims: serde_json::Value, kid: Option<&str>, want: JwtError) {
    let k = key();
    let token = sign(&k, kid, claims);
    assert_eq!(provider(&k.jwks).verify("p", &token, &parse_jwks(&k.jwks).unwrap(), NOW, None), Err(want));
}

#[test]
fn within_the_skew_is_not_expired() {
    let k = key();
    let token = sign(&k, Some("k1"), json!({"iss": ISS, "sub": "a", "exp": NOW - 59}));
    assert!(provider(&k.jwks).verify("p", &token, &parse_jwks(&k.jwks).unwrap(), NOW, None).is_ok());
}

#[test]
fn another_key_or_a_tampered_token_fails_verification() {
    let (k, other) = (key(), key());
    let jwks = parse_jwks(&k.jwks).unwrap();
    let p = provider(&k.jwks);
    assert_eq!(p.verify("p", &sign(&other, Some("k1"), good_claims()), &jwks, NOW, None), Err(JwtError::VerificationFails));
    let token = sign(&k, Some("k1"), good_claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = b64url(json!({"iss": ISS, "sub": "mallory", "exp": NOW + 600}).to_string().as_bytes());
    assert_eq!(p.verify("p", &parts.join("."), &jwks, NOW, None), Err(JwtError::VerificationFails));
    assert_eq!(p.verify("p", "not-a-jwt", &jwks, NOW, None), Err(JwtError::BadFormat));
    assert_eq!(JwtError::VerificationFails.to_string(), "Jwt verification fails");
    assert_eq!(JwtError::KidAlgMismatch.to_string(), "Jwks doesn't have key to match kid or alg from Jwt");
}

#[test]
fn audiences() {
    let k = key();
    let jwks = parse_jwks(&k.jwks).unwrap();
    let mut p = provider(&k.jwks);
    p.audiences = vec!["https://svc/".into()];
    assert!(p.verify("p", &sign(&k, Some("k1"), good_claims()), &jwks, NOW, None).is_ok());
    p.audiences = vec!["other".into()];
    assert_eq!(p.verify("p", &sign(&k, Some("k1"), good_claims()), &jwks, NOW, None), Err(JwtError::AudienceNotAllowed));
}

#[test]
fn extraction_defaults_to_bearer_then_access_token() {
    let p = provider("{}");
    let h = |v: &'static str| move |n: &str| (n == "authorization").then(|| v.to_owned());
    let none = |_: &str| None;
    assert_eq!(p.extract(h("Bearer a.b.c"), none).unwrap(), FoundToken { token: "a.b.c".into(), header: Some("authorization".into()) });
    assert_eq!(p.extract(h("Basic xyz"), none), None);
    assert_eq!(p.extract(none, |n: &str| (n == "access_token").then(|| "t.o.k".to_owned())).unwrap().token, "t.o.k");
}

fn authn_with(req: Requirement) -> (JwtAuthn, Key) {
    let k = key();
    let mut providers = BTreeMap::new();
    providers.insert("origins-0".to_owned(), provider(&k.jwks));
    let rules = vec![RequirementRule { path: PathMatch::Prefix("/".into()), case_sensitive: true, requires: Some(req) }];
    (JwtAuthn { providers, rules, bypass_cors_preflight: true, strip_failure_response: false }, k)
}

#[test]
fn istiod_requirement_allows_missing_but_not_bad_tokens() {
    let req = Requirement::Any(vec![Requirement::Provider { name: "origins-0".into(), audiences: None }, Requirement::AllowMissing]);
    let (authn, k) = authn_with(req.clone());
    assert_eq!(authn.requirement("/x"), Some(&req));
    let mut out = Outcomes::new();
    out.insert("origins-0", None);
    assert_eq!(req.decide(&out), Ok(()));
    out.insert("origins-0", Some(Err(JwtError::Expired)));
    assert_eq!(req.decide(&out), Err(JwtError::Expired));
    let v = authn.providers["origins-0"].verify("origins-0", &sign(&k, Some("k1"), good_claims()), &parse_jwks(&k.jwks).unwrap(), NOW, None).unwrap();
    out.insert("origins-0", Some(Ok(v.clone())));
    assert_eq!(req.decide(&out), Ok(()));
    // Required alone, a missing token is refused.
    let only = Requirement::Provider { name: "origins-0".into(), audiences: None };
    out.insert("origins-0", None);
    assert_eq!(only.decide(&out), Err(JwtError::Missing));

    let md = metadata(&authn, &[v]).unwrap();
    assert_eq!(md[JWT_AUTHN_FILTER][ISS]["sub"], "alice");
    assert_eq!(md[JWT_AUTHN_FILTER][ISS]["scope"], json!(["read", "write"]), "normalize_payload_in_metadata");
    let attrs = &md[ISTIO_AUTHN_FILTER];
    assert_eq!(attrs["request.auth.principal"], format!("{ISS}/alice"));
    assert_eq!(attrs["request.auth.audiences"], json!(["svc"]));
    assert_eq!(attrs["request.auth.claims"]["sub"], json!(["alice"]));
    assert_eq!(attrs["request.auth.claims"]["groups"], json!(["dev", "ops"]));
}

#[test]
fn translation_from_istiod_shape() {
    let k = key();
    let config: pb::JwtAuthentication = xds_client::protojson::from_json(json!({
            "providers": {"origins-0": {"issuer": ISS, "local_jwks": {"inline_string": k.jwks}, "payload_in_metadata": ISS, "forward": true}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [{"provider_name": "origins-0"}, {"allow_missing": {}}]}}}],
            "bypass_cors_preflight": true
    }))
    .unwrap()
    .message;
    let t = jwt_authn_from_proto(&config).unwrap();
    assert_eq!(
        t.rules[0].requires,
        Some(Requirement::Any(vec![Requirement::Provider { name: "origins-0".into(), audiences: None }, Requirement::AllowMissing]))
    );
    assert!(t.providers["origins-0"].forward);
    let mut bad = config.clone();
    bad.rules[0].requirement_type = Some(pb::requirement_rule::RequirementType::Requires(pb::JwtRequirement {
        requires_type: Some(pb::jwt_requirement::RequiresType::ProviderName("origins-9".into())),
    }));
    assert!(jwt_authn_from_proto(&bad).is_err());
}

/// istiod's shape for two jwtRules: any of {P1, P2, all of {any{P1, allow_missing}, any{P2, allow_missing}}}.
#[test]
fn istiod_two_provider_requirement() {
    let p = |n: &str| Requirement::Provider { name: n.into(), audiences: None };
    let inner = |n: &str| Requirement::Any(vec![p(n), Requirement::AllowMissing]);
    let req = Requirement::Any(vec![p("origins-0"), p("origins-1"), Requirement::All(vec![inner("origins-0"), inner("origins-1")])]);
    let ok = || Some(Ok(Verified { provider: "x".into(), payload: Default::default(), encoded_payload: String::new() }));
    type Found = Option<Result<Verified, JwtError>>;
    let cases: [(Found, Found, Result<(), JwtError>); 4] = [
        (None, None, Ok(())),
        // A shared location: the other provider sees an unknown issuer; the outer OR passes.
        (Some(Err(JwtError::UnknownIssuer)), ok(), Ok(())),
        (Some(Err(JwtError::VerificationFails)), Some(Err(JwtError::UnknownIssuer)), Err(JwtError::VerificationFails)),
        (Some(Err(JwtError::UnknownIssuer)), Some(Err(JwtError::UnknownIssuer)), Err(JwtError::UnknownIssuer)),
    ];
    for (a, b, want) in cases {
        let mut out = Outcomes::new();
        out.insert("origins-0", a);
        out.insert("origins-1", b);
        assert_eq!(req.decide(&out), want, "{out:?}");
    }
    // Separate locations: a token only for origins-1 leaves origins-0's allow_missing passing.
    let mut out = Outcomes::new();
    out.insert("origins-0", None);
    out.insert("origins-1", ok());
    assert_eq!(Requirement::All(vec![inner("origins-0"), inner("origins-1")]).decide(&out), Ok(()));
}
