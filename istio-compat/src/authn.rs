//! Envoy's JWT authentication filter (`envoy.filters.http.jwt_authn`) as istiod emits
//! it for a RequestAuthentication: the model, its translation from the filter's typed
//! configuration, and the I/O-free verification of a token against a JWKS.
//!
//! Owns: providers ([`Provider`]: issuer, audiences, where the JWKS comes from, where
//! the token is looked for, what is forwarded), requirement rules by path
//! ([`RequirementRule`], [`Requirement`]), token extraction, verification with
//! Envoy's error texts ([`JwtError`]), and the dynamic metadata RBAC reads
//! ([`metadata`]). Does not own fetching a remote JWKS (node-proxy's `http::jwt`),
//! nor the 401 reply.
//!
//! Semantics, as Envoy's `source/extensions/filters/http/jwt_authn` and istiod's
//! `pilot/pkg/security/authn` (policy applier) have them:
//! - istiod names providers `origins-<i>`, sets `payload_in_metadata` to the issuer,
//!   and emits one rule `prefix: "/"` requiring any of its providers or
//!   `allow_missing`: no token passes (RBAC decides), a bad token is refused (401).
//! - Without `from_headers`/`from_params`, a token is looked for in
//!   `Authorization: Bearer <token>` and then the `access_token` query parameter.
//! - Checks, in order: the token parses; its `iss` is the provider's issuer; its
//!   `aud` (when the provider lists audiences) holds one of them; `exp`/`nbf` with
//!   `clock_skew_seconds` (default 60); a JWKS key matching the token's `kid`/`alg`;
//!   the signature.
//! - Istio's `istio_authn` metadata: `request.auth.principal` = `<iss>/<sub>`,
//!   `request.auth.audiences`, `request.auth.presenter` (`azp`), and
//!   `request.auth.claims` with every string claim as a list of one string (istiod's
//!   RBAC matches claims with `list_match.one_of`).

use std::collections::BTreeMap;
use std::time::Duration;

pub use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use xds_client::pb::envoy::extensions::filters::http::jwt_authn::v3 as pb;

use crate::authz::rbac::{Metadata, JWT_AUTHN_FILTER};
use crate::translate::Invalid;

/// The `@type` of the filter's configuration.
pub const JWT_AUTHN_TYPE: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
/// Istio's authn filter namespace in dynamic metadata, read by istiod's RBAC rules.
pub const ISTIO_AUTHN_FILTER: &str = "istio_authn";
/// Envoy's default clock skew for `exp` and `nbf`.
const DEFAULT_CLOCK_SKEW: u64 = 60;
/// Envoy's default remote JWKS cache duration (5 minutes).
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(300);

/// One `jwt_authn` filter's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JwtAuthn {
    /// By name (`origins-<i>` from istiod).
    pub providers: BTreeMap<String, Provider>,
    /// Tried in order; the first whose match fits the request applies. None: no
    /// token is required or verified.
    #[serde(default)]
    pub rules: Vec<RequirementRule>,
    /// CORS preflight requests pass unchecked (istiod sets it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bypass_cors_preflight: bool,
    /// The 401 has no body nor `www-authenticate` detail.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_failure_response: bool,
}

/// `JwtProvider`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub issuer: String,
    /// Empty: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Headers the token is looked for in, then `from_params`; both empty: Envoy's
    /// defaults (see [`Provider::locations`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<TokenHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Cookies the token is looked for in (after headers and parameters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Keep the token in the request sent upstream (else its header is removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward: bool,
    /// The key of the payload under `envoy.filters.http.jwt_authn` (current istiod:
    /// `payload`; older ones: the issuer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload_in_metadata: String,
    /// `normalize_payload_in_metadata.space_delimited_claims`: these string claims are
    /// split on spaces into lists in the metadata (istiod: `permission`, `scope`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
    /// A header carrying the base64url payload upstream (`outputPayloadToHeader`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub forward_payload_header: String,
    /// Claims copied into request headers (`outputClaimToHeaders`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_expiration: bool,
}

fn default_clock_skew() -> u64 {
    DEFAULT_CLOCK_SKEW
}

/// Where a provider's keys come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JwksSource {
    /// `local_jwks.inline_string` (istiod fetches the JWKS itself and inlines it).
    Local(String),
    /// `remote_jwks`: fetched by the proxy from `uri`, kept `cache_duration`.
    Remote(RemoteJwks),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteJwks {
    pub uri: String,
    /// The cluster istiod names for `uri`; the proxy fetches from `uri` directly.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    #[serde(with = "crate::model::common::serde_duration")]
    pub timeout: Duration,
    #[serde(with = "crate::model::common::serde_duration")]
    pub cache_duration: Duration,
}

/// `JwtHeader`: a header and the prefix before the token (`Bearer `).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value_prefix: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

/// `RequirementRule`: a path match and what it requires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequirementRule {
    pub path: PathMatch,
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
    /// `None`: the rule matches and nothing is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<Requirement>,
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// `path_separated_prefix`: the prefix followed by `/`, `?`, `#` or the end.
    Separated(String),
}

/// `JwtRequirement`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requirement {
    /// A token from this provider, verified; `audiences` replace the provider's.
    Provider {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audiences: Option<Vec<String>>,
    },
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// Passes when no token is present; a present token must verify elsewhere.
    AllowMissing,
    /// Always passes; verified tokens still write metadata.
    AllowMissingOrFailed,
}

/// Why a request was refused, with Envoy's texts (jwt_verify_lib `Status`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("Jwt is missing")]
    Missing,
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Jwt does not have an expiration")]
    NoExpiration,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    KidAlgMismatch,
    #[error("Jwt verification fails")]
    VerificationFails,
    #[error("Jwks remote fetch is failed")]
    JwksFetchFailed,
    #[error("Jwks is invalid")]
    JwksInvalid,
}

/// A token that verified, with the provider that accepted it.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    pub provider: String,
    pub payload: serde_json::Map<String, Value>,
    /// The payload as it was sent (base64url), for `forward_payload_header`.
    pub encoded_payload: String,
}

/// A token found in the request, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    /// The header it came from (lowercase); `None`: a query parameter or a cookie.
    pub header: Option<String>,
}

impl Provider {
    /// The headers the token is looked for in, and the query parameters (cookies:
    /// `from_cookies`).
    pub fn locations(&self) -> (Vec<TokenHeader>, Vec<String>) {
        if self.from_headers.is_empty() && self.from_params.is_empty() && self.from_cookies.is_empty() {
            (vec![TokenHeader { name: "authorization".into(), value_prefix: "Bearer ".into() }], vec!["access_token".into()])
        } else {
            (self.from_headers.clone(), self.from_params.clone())
        }
    }

    /// The first token in this provider's locations; `header` looks a header up by
    /// lowercase name, `param` a query parameter.
    pub fn extract(&self, header: impl Fn(&str) -> Option<String>, param: impl Fn(&str) -> Option<String>) -> Option<FoundToken> {
        let (headers, params) = self.locations();
        for h in &headers {
            let name = h.name.to_ascii_lowercase();
            if let Some(v) = header(&name) {
                let token = if h.value_prefix.is_empty() {
                    Some(v.trim())
                } else {
                    // The token follows the prefix and runs to the first character
                    // outside the base64url/JWT alphabet (Envoy's extractor does the same).
                    v.find(&h.value_prefix).map(|i| &v[i + h.value_prefix.len()..])
                };
                if let Some(t) = token {
                    let end = t.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | '+' | '/'))).unwrap_or(t.len());
                    if end > 0 {
                        return Some(FoundToken { token: t[..end].to_owned(), header: Some(name) });
                    }
                }
            }
        }
        for p in &params {
            if let Some(v) = param(p) {
                if !v.is_empty() {
                    return Some(FoundToken { token: v, header: None });
                }
            }
        }
        if !self.from_cookies.is_empty() {
            let cookies = header("cookie").unwrap_or_default();
            for name in &self.from_cookies {
                let found = cookies.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| k == name).map(|(_, v)| v.trim_matches('"'));
                if let Some(v) = found.filter(|v| !v.is_empty()) {
                    return Some(FoundToken { token: v.to_owned(), header: None });
                }
            }
        }
        None
    }

    /// Verifies `token` against `jwks` at `now` (seconds since the epoch).
    pub fn verify(&self, name: &str, token: &str, jwks: &JwkSet, now: u64, audiences: Option<&[String]>) -> Result<Verified, JwtError> {
        let (header, payload, encoded_payload) = parse(token)?;
        if payload.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(JwtError::UnknownIssuer);
        }
        let allowed = audiences.unwrap_or(&self.audiences);
        if !allowed.is_empty() {
            let ok = match payload.get("aud") {
                Some(Value::String(a)) => allowed.iter().any(|x| audience_eq(x, a)),
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(|a| allowed.iter().any(|x| audience_eq(x, a))),
                _ => false,
            };
            if !ok {
                return Err(JwtError::AudienceNotAllowed);
            }
        }
        let skew = self.clock_skew_seconds;
        match payload.get("exp").and_then(Value::as_u64) {
            Some(exp) if now > exp.saturating_add(skew) => return Err(JwtError::Expired),
            None if self.require_expiration => return Err(JwtError::NoExpiration),
            _ => {}
        }
        if let Some(nbf) = payload.get("nbf").and_then(Value::as_u64) {
            if nbf > now.saturating_add(skew) {
                return Err(JwtError::NotYetValid);
            }
        }
        let candidates: Vec<&Jwk> = jwks.keys.iter().filter(|k| key_fits(k, header.kid.as_deref(), header.alg)).collect();
        if candidates.is_empty() {
            return Err(JwtError::KidAlgMismatch);
        }
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        for key in candidates {
            let Ok(key) = DecodingKey::from_jwk(key) else { continue };
            if jsonwebtoken::decode::<Value>(token, &key, &validation).is_ok() {
                return Ok(Verified { provider: name.to_owned(), payload, encoded_payload });
            }
        }
        Err(JwtError::VerificationFails)
    }
}

/// Envoy compares audiences ignoring a scheme prefix and a trailing slash.
fn audience_eq(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> &str {
        let s = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://")).unwrap_or(s);
        s.strip_suffix('/').unwrap_or(s)
    }
    norm(a) == norm(b)
}

/// Header, payload (as JSON) and the encoded payload, without checking the signature.
fn parse(token: &str) -> Result<(jsonwebtoken::Header, serde_json::Map<String, Value>, String), JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::BadFormat);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::BadFormat)?;
    let mut validation = Validation::new(header.alg);
    validation.insecure_disable_signature_validation();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &DecodingKey::from_secret(&[]), &validation).map_err(|_| JwtError::BadFormat)?;
    Ok((header, data.claims, parts[1].to_owned()))
}

/// Envoy's key selection: the `kid` when the token has one; the key's `alg` when it
/// has one; and a key type that fits the token's algorithm.
fn key_fits(key: &Jwk, kid: Option<&str>, alg: Algorithm) -> bool {
    if let Some(kid) = kid {
        if key.common.key_id.as_deref().is_some_and(|k| k != kid) {
            return false;
        }
    }
    if let Some(ka) = key.common.key_algorithm {
        if format!("{ka:?}") != format!("{alg:?}") {
            return false;
        }
    }
    use Algorithm::*;
    match &key.algorithm {
        AlgorithmParameters::RSA(_) => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        AlgorithmParameters::EllipticCurve(_) => matches!(alg, ES256 | ES384),
        AlgorithmParameters::OctetKey(_) => matches!(alg, HS256 | HS384 | HS512),
        AlgorithmParameters::OctetKeyPair(_) => alg == EdDSA,
    }
}

/// Parses a JWKS document (`{"keys": [...]}`).
pub fn parse_jwks(text: &str) -> Result<JwkSet, JwtError> {
    let set: JwkSet = serde_json::from_str(text).map_err(|_| JwtError::JwksInvalid)?;
    if set.keys.is_empty() {
        return Err(JwtError::JwksInvalid);
    }
    Ok(set)
}

impl RequirementRule {
    pub fn matches(&self, path: &str) -> bool {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        let path = &path[..end];
        let fold = |s: &str| if self.case_sensitive { s.to_owned() } else { s.to_ascii_lowercase() };
        let (p, want) = (fold(path), fold);
        match &self.path {
            PathMatch::Prefix(x) => p.starts_with(&want(x)),
            PathMatch::Exact(x) => p == want(x),
            PathMatch::Separated(x) => {
                let x = want(x);
                p.strip_prefix(&x).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }
}

impl JwtAuthn {
    /// The requirement for a request to `path` (the first rule that matches).
    pub fn requirement(&self, path: &str) -> Option<&Requirement> {
        self.rules.iter().find(|r| r.matches(path)).and_then(|r| r.requires.as_ref())
    }

    /// The providers a requirement names (each once, in order).
    pub fn providers_of<'a>(&'a self, req: &'a Requirement, out: &mut Vec<&'a str>) {
        match req {
            Requirement::Provider { name, .. } => {
                if !out.contains(&name.as_str()) {
                    out.push(name);
                }
            }
            Requirement::Any(rs) | Requirement::All(rs) => rs.iter().for_each(|r| self.providers_of(r, out)),
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {}
        }
    }
}

/// What each named provider found: no token, or a token and its verification.
pub type Outcomes<'a> = BTreeMap<&'a str, Option<Result<Verified, JwtError>>>;

impl Requirement {
    /// Envoy's verifier tree over what each provider found. `Ok(())` passes.
    pub fn decide(&self, outcomes: &Outcomes<'_>) -> Result<(), JwtError> {
        match self {
            Requirement::Provider { name, .. } => match outcomes.get(name.as_str()) {
                Some(Some(Ok(_))) => Ok(()),
                Some(Some(Err(e))) => Err(e.clone()),
                Some(None) | None => Err(JwtError::Missing),
            },
            Requirement::AllowMissingOrFailed => Ok(()),
            // Alone, it passes only when no provider found a token; inside `requires_any`
            // it is scoped to its sibling providers (below).
            Requirement::AllowMissing => allow_missing(outcomes.keys().copied(), outcomes),
            Requirement::Any(rs) => {
                let siblings: Vec<&str> =
                    rs.iter().filter_map(|r| if let Requirement::Provider { name, .. } = r { Some(name.as_str()) } else { None }).collect();
                // Envoy's AnyVerifier: the first success passes; otherwise the error
                // reported is the most specific one (anything but "missing").
                let mut err = None;
                for r in rs {
                    let decided = match r {
                        Requirement::AllowMissing if !siblings.is_empty() => allow_missing(siblings.iter().copied(), outcomes),
                        r => r.decide(outcomes),
                    };
                    match decided {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            if err.is_none() || err == Some(JwtError::Missing) {
                                err = Some(e);
                            }
                        }
                    }
                }
                Err(err.unwrap_or(JwtError::Missing))
            }
            Requirement::All(rs) => rs.iter().try_for_each(|r| r.decide(outcomes)),
        }
    }
}

/// Envoy's `allow_missing`: passes when none of `providers` found a token; a token
/// that is present must pass elsewhere.
fn allow_missing<'a>(mut providers: impl Iterator<Item = &'a str>, outcomes: &Outcomes<'_>) -> Result<(), JwtError> {
    if providers.all(|p| matches!(outcomes.get(p), None | Some(None))) {
        Ok(())
    } else {
        Err(JwtError::Missing)
    }
}

/// The dynamic metadata of verified tokens: the payloads under
/// `envoy.filters.http.jwt_authn` (by each provider's `payload_in_metadata`) and
/// Istio's `istio_authn` attributes of the first token by issuer order.
pub fn metadata(authn: &JwtAuthn, verified: &[Verified]) -> Option<Metadata> {
    if verified.is_empty() {
        return None;
    }
    let mut jwt = serde_json::Map::new();
    for v in verified {
        let key = authn.providers.get(&v.provider).map(|p| p.payload_in_metadata.as_str()).unwrap_or("");
        if !key.is_empty() {
            let mut payload = v.payload.clone();
            for claim in authn.providers.get(&v.provider).map_or(&[][..], |p| &p.space_delimited_claims[..]) {
                if let Some(Value::String(s)) = payload.get(claim) {
                    let list = s.split(' ').filter(|w| !w.is_empty()).map(|w| Value::String(w.to_owned())).collect();
                    payload.insert(claim.clone(), Value::Array(list));
                }
            }
            jwt.insert(key.to_owned(), Value::Object(payload));
        }
    }
    let first = verified.iter().min_by(|a, b| a.payload.get("iss").and_then(Value::as_str).cmp(&b.payload.get("iss").and_then(Value::as_str)))?;
    let mut md = Metadata::new();
    if !jwt.is_empty() {
        md.insert(JWT_AUTHN_FILTER.to_owned(), Value::Object(jwt));
    }
    md.insert(ISTIO_AUTHN_FILTER.to_owned(), Value::Object(istio_attributes(&first.payload)));
    Some(md)
}

/// Istio's `request.auth.*` attributes of one payload.
pub fn istio_attributes(payload: &serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    let s = |k: &str| payload.get(k).and_then(Value::as_str).unwrap_or("");
    let mut out = serde_json::Map::new();
    let (iss, sub) = (s("iss"), s("sub"));
    if !iss.is_empty() && !sub.is_empty() {
        out.insert("request.auth.principal".into(), Value::String(format!("{iss}/{sub}")));
    }
    let audiences: Vec<Value> = match payload.get("aud") {
        Some(Value::String(a)) => vec![Value::String(a.clone())],
        Some(Value::Array(items)) => items.iter().filter(|v| v.is_string()).cloned().collect(),
        _ => Vec::new(),
    };
    if !audiences.is_empty() {
        out.insert("request.auth.audiences".into(), Value::Array(audiences));
    }
    if !s("azp").is_empty() {
        out.insert("request.auth.presenter".into(), Value::String(s("azp").to_owned()));
    }
    let claims: serde_json::Map<String, Value> = payload.iter().map(|(k, v)| (k.clone(), claim_value(v))).collect();
    out.insert("request.auth.claims".into(), Value::Object(claims));
    out
}

/// Strings become lists of one string; lists keep their strings; objects recurse.
fn claim_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::Array(vec![Value::String(s.clone())]),
        Value::Array(items) => Value::Array(items.iter().filter(|i| i.is_string()).cloned().collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), claim_value(v))).collect()),
        other => other.clone(),
    }
}

/// Translates the filter's configuration; `Invalid` for what cannot be honoured.
pub fn jwt_authn_from_proto(c: &pb::JwtAuthentication) -> Result<JwtAuthn, Invalid> {
    if c.filter_state_rules.is_some() {
        return Err(Invalid::new("filter_state_rules", "requirements by filter state are not supported"));
    }
    let mut providers = BTreeMap::new();
    for (name, p) in &c.providers {
        providers.insert(name.clone(), provider(p, &format!("providers[{name}]"))?);
    }
    let mut rules = Vec::with_capacity(c.rules.len());
    for (i, r) in c.rules.iter().enumerate() {
        let path = format!("rules[{i}]");
        let m = r.r#match.as_ref().ok_or_else(|| Invalid::new(&path, "a rule needs a match"))?;
        use xds_client::pb::envoy::config::route::v3::route_match::PathSpecifier;
        if !m.headers.is_empty() || !m.query_parameters.is_empty() || m.grpc.is_some() || m.tls_context.is_some() || !m.dynamic_metadata.is_empty() {
            return Err(Invalid::new(&format!("{path}.match"), "only path matches are supported in jwt_authn rules"));
        }
        let pm = match &m.path_specifier {
            Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
            Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
            Some(PathSpecifier::PathSeparatedPrefix(p)) => PathMatch::Separated(p.clone()),
            _ => return Err(Invalid::new(&format!("{path}.match"), "only prefix, path and path_separated_prefix are supported")),
        };
        use pb::requirement_rule::RequirementType;
        let requires = match &r.requirement_type {
            Some(RequirementType::Requires(req)) => requirement(req, &providers, &format!("{path}.requires"))?,
            Some(RequirementType::RequirementName(n)) => {
                let req = c.requirement_map.get(n).ok_or_else(|| Invalid::new(&format!("{path}.requirement_name"), format!("no requirement {n:?}")))?;
                requirement(req, &providers, &format!("requirement_map[{n}]"))?
            }
            None => None,
        };
        rules.push(RequirementRule { path: pm, case_sensitive: m.case_sensitive.is_none_or(|b| b.value), requires });
    }
    Ok(JwtAuthn { providers, rules, bypass_cors_preflight: c.bypass_cors_preflight, strip_failure_response: c.strip_failure_response })
}

fn provider(p: &pb::JwtProvider, path: &str) -> Result<Provider, Invalid> {
    use pb::jwt_provider::JwksSourceSpecifier;
    use xds_client::pb::envoy::config::core::v3::data_source::Specifier;
    if p.subjects.is_some() || p.max_lifetime.is_some() {
        return Err(Invalid::new(path, "subjects and max_lifetime are not supported"));
    }
    if !p.header_in_metadata.is_empty() || !p.failed_status_in_metadata.is_empty() {
        return Err(Invalid::new(path, "header_in_metadata and failed_status_in_metadata are not supported"));
    }
    let jwks = match &p.jwks_source_specifier {
        Some(JwksSourceSpecifier::LocalJwks(ds)) => match &ds.specifier {
            Some(Specifier::InlineString(s)) => JwksSource::Local(s.clone()),
            Some(Specifier::InlineBytes(b)) => JwksSource::Local(String::from_utf8_lossy(b).into_owned()),
            _ => return Err(Invalid::new(&format!("{path}.local_jwks"), "only inline JWKS are supported")),
        },
        Some(JwksSourceSpecifier::RemoteJwks(r)) => {
            let uri = r.http_uri.as_ref().ok_or_else(|| Invalid::new(&format!("{path}.remote_jwks"), "remote_jwks needs an http_uri"))?;
            use xds_client::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
            let cluster = match &uri.http_upstream_type {
                Some(HttpUpstreamType::Cluster(c)) => c.clone(),
                None => String::new(),
            };
            let dur = |d: &Option<xds_client::pb::google::protobuf::Duration>, default: Duration| {
                d.as_ref().map_or(default, |d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
            };
            JwksSource::Remote(RemoteJwks {
                uri: uri.uri.clone(),
                cluster,
                timeout: dur(&uri.timeout, Duration::from_secs(1)),
                cache_duration: dur(&r.cache_duration, DEFAULT_CACHE_DURATION),
            })
        }
        None => return Err(Invalid::new(path, "a provider needs local_jwks or remote_jwks")),
    };
    if let JwksSource::Local(s) = &jwks {
        parse_jwks(s).map_err(|e| Invalid::new(&format!("{path}.local_jwks"), e.to_string()))?;
    }
    Ok(Provider {
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        jwks,
        from_headers: p.from_headers.iter().map(|h| TokenHeader { name: h.name.to_ascii_lowercase(), value_prefix: h.value_prefix.clone() }).collect(),
        from_params: p.from_params.clone(),
        from_cookies: p.from_cookies.clone(),
        forward: p.forward,
        payload_in_metadata: p.payload_in_metadata.clone(),
        space_delimited_claims: p.normalize_payload_in_metadata.as_ref().map(|n| n.space_delimited_claims.clone()).unwrap_or_default(),
        forward_payload_header: p.forward_payload_header.clone(),
        claim_to_headers: p
            .claim_to_headers
            .iter()
            .map(|c| ClaimToHeader { header: c.header_name.to_ascii_lowercase(), claim: c.claim_name.clone() })
            .collect(),
        clock_skew_seconds: if p.clock_skew_seconds == 0 { DEFAULT_CLOCK_SKEW } else { u64::from(p.clock_skew_seconds) },
        require_expiration: p.require_expiration,
    })
}

fn requirement(r: &pb::JwtRequirement, providers: &BTreeMap<String, Provider>, path: &str) -> Result<Option<Requirement>, Invalid> {
    use pb::jwt_requirement::RequiresType;
    let known = |name: &str| {
        if providers.contains_key(name) {
            Ok(())
        } else {
            Err(Invalid::new(path, format!("provider {name:?} is not configured")))
        }
    };
    let list = |rs: &[pb::JwtRequirement]| -> Result<Vec<Requirement>, Invalid> {
        rs.iter().enumerate().filter_map(|(i, r)| requirement(r, providers, &format!("{path}[{i}]")).transpose()).collect()
    };
    Ok(Some(match &r.requires_type {
        None => return Ok(None),
        Some(RequiresType::ProviderName(n)) => {
            known(n)?;
            Requirement::Provider { name: n.clone(), audiences: None }
        }
        Some(RequiresType::ProviderAndAudiences(pa)) => {
            known(&pa.provider_name)?;
            Requirement::Provider { name: pa.provider_name.clone(), audiences: Some(pa.audiences.clone()) }
        }
        Some(RequiresType::RequiresAny(l)) => Requirement::Any(list(&l.requirements)?),
        Some(RequiresType::RequiresAll(l)) => Requirement::All(list(&l.requirements)?),
        Some(RequiresType::AllowMissing(_)) => Requirement::AllowMissing,
        Some(RequiresType::AllowMissingOrFailed(_)) => Requirement::AllowMissingOrFailed,
        Some(RequiresType::ExtractOnlyWithoutValidation(_)) => {
            return Err(Invalid::new(path, "extract_only_without_validation is not supported"));
        }
    }))
}

#[cfg(test)]
mod tests;
