//! RequestAuthentication at run time: Envoy's `jwt_authn` filter on one request.
//!
//! Owns: finding each provider's token, the keys (inline JWKS parsed once; remote JWKS
//! fetched over plain HTTP from the provider's `http_uri`, kept `cache_duration`,
//! refreshed in the background when stale), the decision of the requirement, the
//! header changes Envoy makes (token header removed unless `forward`, payload and
//! claim headers), and the 401/403 reply. Does not own the verification itself
//! (`istio_compat::authn`) nor the RBAC decision that reads the metadata.
//!
//! A remote JWKS that was never fetched fails the requests needing it with 401
//! `Jwks remote fetch is failed`, as Envoy; once fetched, a failed refresh keeps the
//! last good keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use istio_compat::authn::{parse_jwks, JwkSet, JwksSource, JwtAuthn, JwtError, Outcomes, Provider, RemoteJwks, Verified};
use istio_compat::authz::rbac::Metadata;
use istio_compat::model::route::RequestHead;

use super::body::RespBody;
use super::local_reply;

/// The largest JWKS document accepted from a remote.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long a failed fetch is trusted before the next attempt.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What passing requests carry on: RBAC's metadata and the header edits.
#[derive(Debug, Default)]
pub struct Authenticated {
    pub metadata: Option<Metadata>,
    remove: Vec<String>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl Authenticated {
    /// Envoy's header changes for the upstream request.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name.as_str());
        }
        for (name, value) in &self.add {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// A refused request: the error and where it was going (for `www-authenticate`).
#[derive(Debug)]
pub struct Rejection {
    pub error: JwtError,
    realm: String,
    strip: bool,
}

impl Rejection {
    /// Envoy's `response_code_details`: `jwt_authn_access_denied{Jwt_is_expired}`.
    pub fn details(&self) -> String {
        format!("jwt_authn_access_denied{{{}}}", self.error.to_string().replace(' ', "_"))
    }

    /// The refusal for a gRPC request: trailers-only, UNAUTHENTICATED (16), or
    /// PERMISSION_DENIED (7) for a disallowed audience, with the error as message (as
    /// Envoy's local reply maps 401 and 403 for gRPC), and the same `www-authenticate`
    /// challenge (Envoy adds it before its gRPC branch).
    pub fn grpc_response(&self) -> Response<RespBody> {
        let code = if self.error == JwtError::AudienceNotAllowed { 7 } else { 16 };
        let mut resp = local_reply::grpc_trailers_only(code, &self.error.to_string());
        self.challenge(&mut resp);
        resp
    }

    /// 401 (403 for a disallowed audience) with the error as body and an RFC 6750
    /// challenge; `strip_failure_response`: neither.
    pub fn response(&self) -> Response<RespBody> {
        let status = if self.error == JwtError::AudienceNotAllowed { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
        if self.strip {
            return local_reply::with_body(status, None);
        }
        let message = self.error.to_string();
        let mut resp = local_reply::with_body(status, Some(&message));
        self.challenge(&mut resp);
        resp
    }

    /// The RFC 6750 `www-authenticate` challenge (none with `strip_failure_response`).
    fn challenge(&self, resp: &mut Response<RespBody>) {
        if self.strip {
            return;
        }
        let challenge = if self.error == JwtError::Missing {
            format!("Bearer realm=\"{}\"", self.realm)
        } else {
            format!("Bearer realm=\"{}\", error=\"invalid_token\"", self.realm)
        };
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
    }
}

/// Runs the filter on a request head.
pub async fn authenticate(authn: &JwtAuthn, head: &RequestHead<'_>) -> Result<Authenticated, Rejection> {
    let path_only = head.path.split(['?', '#']).next().unwrap_or("");
    let Some(requirement) = authn.requirement(head.path) else { return Ok(Authenticated::default()) };
    if authn.bypass_cors_preflight && is_cors_preflight(head) {
        return Ok(Authenticated::default());
    }
    let mut names = Vec::new();
    authn.providers_of(requirement, &mut names);
    let mut outcomes: Outcomes<'_> = Outcomes::new();
    let mut found_headers = Vec::new();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for name in names {
        let Some(provider) = authn.providers.get(name) else { continue };
        let token = provider.extract(|h| head.header(h).map(|v| v.into_owned()), |p| head.query_param(p));
        let outcome = match token {
            None => None,
            Some(found) => {
                let result = verify(name, provider, &found.token, now).await;
                // Envoy removes the token of the provider that verified it, unless `forward`.
                if let (Some(h), false, true) = (&found.header, provider.forward, result.is_ok()) {
                    found_headers.push(h.clone());
                }
                Some(result)
            }
        };
        outcomes.insert(name, outcome);
    }
    if let Err(error) = requirement.decide(&outcomes) {
        tracing::debug!(target: "jwt_authn", %error, path = path_only, "request refused");
        return Err(Rejection { error, realm: format!("http://{}{}", head.authority, path_only), strip: authn.strip_failure_response });
    }
    let verified: Vec<Verified> = outcomes.into_values().filter_map(|o| o.and_then(Result::ok)).collect();
    let mut out = Authenticated { metadata: istio_compat::authn::metadata(authn, &verified), remove: found_headers, add: Vec::new() };
    for v in &verified {
        let Some(provider) = authn.providers.get(&v.provider) else { continue };
        if !provider.forward_payload_header.is_empty() {
            if let (Ok(n), Ok(val)) = (HeaderName::try_from(provider.forward_payload_header.as_str()), HeaderValue::from_str(&v.encoded_payload)) {
                out.add.push((n, val));
            }
        }
        for c in &provider.claim_to_headers {
            let value = match v.payload.get(&c.claim) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Number(n)) => n.to_string(),
                Some(serde_json::Value::Bool(b)) => b.to_string(),
                Some(serde_json::Value::Array(items)) => items.iter().filter_map(|i| i.as_str()).collect::<Vec<_>>().join(","),
                _ => continue,
            };
            if let (Ok(n), Ok(val)) = (HeaderName::try_from(c.header.as_str()), HeaderValue::from_str(&value)) {
                out.add.push((n, val));
            }
        }
    }
    Ok(out)
}

fn is_cors_preflight(head: &RequestHead<'_>) -> bool {
    *head.method == Method::OPTIONS
        && head.header("origin").is_some_and(|o| !o.is_empty())
        && head.header("access-control-request-method").is_some_and(|m| !m.is_empty())
}

async fn verify(name: &str, provider: &Provider, token: &str, now: u64) -> Result<Verified, JwtError> {
    let keys = match &provider.jwks {
        JwksSource::Local(text) => local_keys(text)?,
        JwksSource::Remote(remote) => remote_keys(remote).await?,
    };
    provider.verify(name, token, &keys, now, None)
}

/// Inline JWKS, parsed once per distinct document.
fn local_keys(text: &str) -> Result<Arc<JwkSet>, JwtError> {
    static PARSED: OnceLock<Mutex<HashMap<String, Arc<JwkSet>>>> = OnceLock::new();
    let mut map = PARSED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(set) = map.get(text) {
        return Ok(set.clone());
    }
    let set = Arc::new(parse_jwks(text)?);
    // Bounded: a new snapshot's documents replace old ones beyond a few dozen.
    if map.len() >= 64 {
        map.clear();
    }
    map.insert(text.to_owned(), set.clone());
    Ok(set)
}

struct RemoteEntry {
    keys: Option<Arc<JwkSet>>,
    fetched: Instant,
    refreshing: bool,
}

fn remote_cache() -> &'static Mutex<HashMap<String, RemoteEntry>> {
    static CACHE: OnceLock<Mutex<HashMap<String, RemoteEntry>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The keys of a remote JWKS: cached ones (a stale entry starts a background
/// refresh and is still used), else fetched now.
async fn remote_keys(remote: &RemoteJwks) -> Result<Arc<JwkSet>, JwtError> {
    let stale = {
        let mut cache = remote_cache().lock().unwrap_or_else(|e| e.into_inner());
        match cache.get_mut(&remote.uri) {
            Some(RemoteEntry { keys: Some(keys), fetched, refreshing }) => {
                let stale = fetched.elapsed() >= remote.cache_duration && !*refreshing;
                if stale {
                    *refreshing = true;
                }
                Some((keys.clone(), stale))
            }
            // Never fetched successfully and failed less than a second ago: fail fast.
            Some(RemoteEntry { keys: None, fetched, .. }) if fetched.elapsed() < RETRY_AFTER_FAILURE => return Err(JwtError::JwksFetchFailed),
            _ => None,
        }
    };
    match stale {
        Some((keys, true)) => {
            let remote = remote.clone();
            tokio::spawn(async move {
                refresh(&remote).await;
            });
            Ok(keys)
        }
        Some((keys, false)) => Ok(keys),
        None => refresh(&remote.clone()).await.ok_or(JwtError::JwksFetchFailed),
    }
}

/// Fetches and stores a JWKS; on failure keeps the previous keys (if any).
async fn refresh(remote: &RemoteJwks) -> Option<Arc<JwkSet>> {
    let fetched = fetch(&remote.uri, remote.timeout).await;
    let mut cache = remote_cache().lock().unwrap_or_else(|e| e.into_inner());
    let entry = cache.entry(remote.uri.clone()).or_insert(RemoteEntry { keys: None, fetched: Instant::now(), refreshing: false });
    entry.refreshing = false;
    match fetched {
        Ok(keys) => {
            entry.keys = Some(Arc::new(keys));
            entry.fetched = Instant::now();
        }
        Err(e) => {
            tracing::warn!(target: "jwt_authn", uri = %remote.uri, cluster = %remote.cluster, "JWKS fetch failed: {e}");
            // Without keys: retry on a request after RETRY_AFTER_FAILURE. With keys: keep
            // them and retry once RETRY_AFTER_FAILURE has passed.
            entry.fetched = match entry.keys {
                None => Instant::now(),
                Some(_) => Instant::now().checked_sub(remote.cache_duration.saturating_sub(RETRY_AFTER_FAILURE)).unwrap_or_else(Instant::now),
            };
        }
    }
    entry.keys.clone()
}

/// GET `uri` over plain HTTP/1.1.
async fn fetch(uri: &str, timeout: Duration) -> Result<JwkSet, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("bad URI: {e}"))?;
    if parsed.scheme_str() != Some("http") {
        return Err("only http:// JWKS URIs are fetched by the proxy; istiod inlines https JWKS (PILOT_JWT_ENABLE_REMOTE_JWKS=false)".into());
    }
    let host = parsed.host().ok_or("URI without a host")?.trim_matches(['[', ']']).to_owned();
    let port = parsed.port_u16().unwrap_or(80);
    let authority = parsed.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    let path = parsed.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let work = async move {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get(path).header(http::header::HOST, authority).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| "the JWKS is not UTF-8".to_owned())?;
        parse_jwks(text).map_err(|e| e.to_string())
    };
    tokio::time::timeout(timeout.max(Duration::from_millis(100)), work).await.map_err(|_| format!("timed out after {timeout:?}"))?
}

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn a_grpc_request_is_refused_with_unauthenticated_trailers_only() {
        let r = Rejection { error: JwtError::Expired, realm: "http://h/p".into(), strip: false };
        let resp = r.grpc_response();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "16");
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let r = Rejection { error: JwtError::AudienceNotAllowed, realm: "http://h/p".into(), strip: false };
        assert_eq!(r.grpc_response().headers()["grpc-status"], "7");
    }
}
