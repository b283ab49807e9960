//! Envoy's external authorization filters (`envoy.filters.http.ext_authz`,
//! `envoy.filters.network.ext_authz`) as istiod emits them for the CUSTOM action of
//! AuthorizationPolicy: the model, its translation, and the I/O-free halves of a check.
//!
//! Owns: the model ([`ExtAuthz`], [`AuthzService`]), its translation from the filters'
//! typed configuration ([`ext_authz_from_http`], [`ext_authz_from_network`]), whether a
//! request is checked at all ([`ExtAuthz::enabled`] over the shadow RBAC metadata,
//! [`shadow_metadata`]), the `CheckRequest` a gRPC provider receives
//! ([`check_request`]), the request an HTTP provider receives ([`http_check_request`]),
//! and what either answer means ([`http_outcome`], [`grpc_outcome`], [`Outcome`]).
//! Does not own the call itself (connections, timeouts, the cluster's endpoints), nor
//! the local reply a denial becomes.
//!
//! How istiod wires CUSTOM (pilot/pkg/security/authz/builder `builder.go`,
//! `extauthz.go`): an RBAC filter whose *shadow* rules are the CUSTOM policies (names
//! `istio-ext-authz-…`, `shadow_rules_stat_prefix: istio_ext_authz_`) records the first
//! matching policy as `istio_ext_authz_shadow_effective_policy_id` in the RBAC filter's
//! dynamic metadata (`envoy.filters.http.rbac` / `envoy.filters.network.rbac`); the
//! ext_authz filter right after it has `filter_enabled_metadata` matching that key by
//! prefix `istio-ext-authz`, so the provider is called only for requests a CUSTOM policy
//! selects. The DENY and ALLOW RBAC filters follow: CUSTOM -> DENY -> ALLOW.
//!
//! Semantics, as Envoy's `source/extensions/filters/{http,network}/ext_authz` and
//! `filters/common/ext_authz` have them:
//! - Disabled by the metadata: the request goes on (`ext_authz.disabled`), unless
//!   `deny_at_disable` (then `status_on_error`).
//! - HTTP provider: the original method, `path_prefix` + the original path, the allowed
//!   request headers (`authorization`, `:method`, `:path`, `:authority` always, plus
//!   `allowed_headers`), `headers_to_add` (overwriting), `content-length` of the body
//!   sent (0 without). 200 -> OK: `allowed_upstream_headers` of the answer are set on
//!   the request, `allowed_upstream_headers_to_append` appended,
//!   `allowed_client_headers_on_success` added to the response, and
//!   `x-envoy-auth-headers-to-remove` names request headers to drop. 5xx -> error.
//!   Any other status -> denied with that status and body, and the answer's headers
//!   that `allowed_client_headers` names (empty list: all but `host`; otherwise also
//!   `:status`, `content-length`, `www-authenticate`, `location`).
//! - gRPC provider: `CheckResponse.status` OK -> allowed with `OkHttpResponse`'s header
//!   mutations; any other code -> denied with `DeniedHttpResponse`'s status (default
//!   403), headers and body; `error_response` -> error. A failed or timed-out call is an
//!   error: `status_on_error` (default 403) unless `failure_mode_allow`.
//! - `with_request_body`: a request with a body is checked once the body ended or,
//!   with `allow_partial_message`, `max_request_bytes` are buffered
//!   ([`BufferSettings::is_full`]); without it a longer body is a 413
//!   ([`BufferSettings::overflows`]). The provider gets the first
//!   `max_request_bytes` (gRPC: `body`, or `raw_body` with `pack_as_bytes`; HTTP:
//!   the request body) and `x-envoy-auth-partial-body: true|false`, added after the
//!   header filtering (so an HTTP provider sees it whatever `allowed_headers` says,
//!   as with Envoy since the filtering moved into `CheckRequestUtils`).
//! - A denial is `ext_authz_denied` in `response_code_details`, an error
//!   `ext_authz_error`; both set the `UAEX` response flag (the runtime's).

use std::ops::Not;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use xds_client::pb::envoy::config::core::v3 as core;
use xds_client::pb::envoy::extensions::filters::http::ext_authz::v3 as http_pb;
use xds_client::pb::envoy::extensions::filters::network::ext_authz::v3 as network_pb;
use xds_client::pb::envoy::r#type::matcher::v3 as matcher;
use xds_client::pb::envoy::service::auth::v3 as auth;

use super::rbac::{MetadataMatcher, Rbac, Request};
use crate::model::common::{serde_opt_duration, StringMatcher};
use crate::translate::common::{duration, string_matcher};
use crate::translate::Invalid;

/// The dynamic-metadata namespace of the HTTP RBAC filter's shadow results.
pub const HTTP_RBAC_NAMESPACE: &str = "envoy.filters.http.rbac";
/// The dynamic-metadata namespace of the network RBAC filter's shadow results.
pub const NETWORK_RBAC_NAMESPACE: &str = "envoy.filters.network.rbac";
/// Envoy's `x-envoy-auth-headers-to-remove` (HTTP provider, on OK).
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
/// Added to the request when `failure_mode_allow_header_add` lets an error through.
pub const FAILURE_MODE_ALLOWED_HEADER: &str = "x-envoy-auth-failure-mode-allowed";
/// Envoy's `x-envoy-auth-partial-body`: in the check request when a body is sent,
/// `true` when it was cut to `max_request_bytes`. A client's own is never passed on.
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";
/// Envoy's default for both services' timeouts.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// One ext_authz filter's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtAuthz {
    pub service: AuthzService,
    /// An error (unreachable, timeout, 5xx, gRPC failure) lets the request through.
    #[serde(default, skip_serializing_if = "Not::not")]
    pub failure_mode_allow: bool,
    /// With `failure_mode_allow`: mark such requests with `x-envoy-auth-failure-mode-allowed: true`.
    #[serde(default, skip_serializing_if = "Not::not")]
    pub failure_mode_allow_header_add: bool,
    /// The status of the reply to an error (Envoy: 403).
    #[serde(default = "forbidden")]
    pub status_on_error: u16,
    /// `with_request_body`: the body the provider sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_request_body: Option<BufferSettings>,
    /// Check only requests whose dynamic metadata matches (istiod: the CUSTOM shadow policy id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_enabled_metadata: Option<MetadataMatcher>,
    /// Deny (with `status_on_error`) what `filter_enabled_metadata` disables.
    #[serde(default, skip_serializing_if = "Not::not")]
    pub deny_at_disable: bool,
    /// The request headers the provider sees; `None`: all of them (gRPC only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_headers: Option<Vec<StringMatcher>>,
    /// Request headers never sent to the provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disallowed_headers: Vec<StringMatcher>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stat_prefix: String,
    /// HTTP filter only: how many of the connection manager's RBAC filters run before
    /// this one (istiod: the CUSTOM shadow RBAC filter, so 1). The rest run after.
    #[serde(default)]
    pub rbac_before: usize,
}

fn forbidden() -> u16 {
    403
}

/// Where the decision is asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthzService {
    Http(HttpService),
    Grpc(GrpcService),
}

/// `http_service`: a plain HTTP request to the provider's cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpService {
    /// `server_uri.cluster`.
    pub cluster: String,
    /// `server_uri.timeout`; `None`: no timeout.
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_prefix: String,
    /// `authorization_request.headers_to_add`, set on the check request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_add: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_upstream_headers: Vec<StringMatcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_upstream_headers_to_append: Vec<StringMatcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_client_headers: Vec<StringMatcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_client_headers_on_success: Vec<StringMatcher>,
}

/// `grpc_service.envoy_grpc`: `envoy.service.auth.v3.Authorization/Check` on a cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrpcService {
    pub cluster: String,
    /// `:authority` of the call; empty: the cluster name (Envoy).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub authority: String,
    /// `grpc_service.timeout`; `None`: no timeout.
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Headers sent with every call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initial_metadata: Vec<(String, String)>,
}

impl AuthzService {
    pub fn cluster(&self) -> &str {
        match self {
            AuthzService::Http(h) => &h.cluster,
            AuthzService::Grpc(g) => &g.cluster,
        }
    }

    pub fn timeout(&self) -> Option<Duration> {
        match self {
            AuthzService::Http(h) => h.timeout,
            AuthzService::Grpc(g) => g.timeout,
        }
    }
}

/// `with_request_body`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferSettings {
    pub max_request_bytes: u32,
    /// Send the first `max_request_bytes` of a longer body instead of answering 413.
    #[serde(default, skip_serializing_if = "Not::not")]
    pub allow_partial_message: bool,
    /// gRPC: the body as `raw_body` bytes rather than a UTF-8 `body` string.
    #[serde(default, skip_serializing_if = "Not::not")]
    pub pack_as_bytes: bool,
}

impl BufferSettings {
    /// Envoy's `isBufferFull`: with `allow_partial_message`, buffering stops once
    /// `max_request_bytes` are held, even if more of the body is coming.
    pub fn is_full(&self, buffered: u64) -> bool {
        self.allow_partial_message && buffered >= u64::from(self.max_request_bytes)
    }

    /// Without `allow_partial_message` the filter sets the decoder buffer limit to
    /// `max_request_bytes`: a body longer than that is answered 413.
    pub fn overflows(&self, body_len: u64) -> bool {
        !self.allow_partial_message && body_len > u64::from(self.max_request_bytes)
    }

    /// What of the buffered body the provider gets (its first `max_request_bytes`),
    /// and whether that is less than what was buffered (Envoy's partial-body flag).
    pub fn body_sent<'b>(&self, buffered: &'b [u8]) -> (&'b [u8], bool) {
        let n = buffered.len().min(self.max_request_bytes as usize);
        (&buffered[..n], n != buffered.len())
    }
}

// ---------------------------------------------------------------------------------
// Translation

/// `envoy.filters.http.ext_authz`. `rbac_before` is the number of HTTP RBAC filters
/// before it in the chain.
#[allow(deprecated)] // authorization_request.allowed_headers: Envoy still honours it.
pub fn ext_authz_from_http(f: &http_pb::ExtAuthz, rbac_before: usize) -> Result<ExtAuthz, Invalid> {
    use http_pb::ext_authz::Services;
    api_version(f.transport_api_version)?;
    // Fields that would change what is decided or who decides, and that we do not run.
    let unsupported: [(&str, bool); 15] = [
        ("include_peer_certificate", f.include_peer_certificate),
        ("filter_enabled", f.filter_enabled.as_ref().is_some_and(|r| r.default_value.as_ref().is_some_and(|p| !full_percent(p)))),
        ("metadata_context_namespaces", !f.metadata_context_namespaces.is_empty()),
        ("typed_metadata_context_namespaces", !f.typed_metadata_context_namespaces.is_empty()),
        ("route_metadata_context_namespaces", !f.route_metadata_context_namespaces.is_empty()),
        ("route_typed_metadata_context_namespaces", !f.route_typed_metadata_context_namespaces.is_empty()),
        ("bootstrap_metadata_labels_key", !f.bootstrap_metadata_labels_key.is_empty()),
        ("include_tls_session", f.include_tls_session),
        ("encode_raw_headers", f.encode_raw_headers),
        ("decoder_header_mutation_rules", f.decoder_header_mutation_rules.is_some()),
        ("enable_dynamic_metadata_ingestion", f.enable_dynamic_metadata_ingestion.is_some_and(|b| b.value)),
        ("validate_mutations", f.validate_mutations),
        ("shadow_mode", f.shadow_mode),
        ("deny_at_disable.runtime_key", f.deny_at_disable.as_ref().is_some_and(|d| !d.runtime_key.is_empty())),
        ("filter_metadata", f.filter_metadata.is_some()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(Invalid::new(field, "this ext_authz setting is not supported by node-proxy (istiod does not emit it)"));
    }
    let (service, allowed_headers) = match f.services.as_ref().ok_or_else(|| Invalid::new("services", "ext_authz needs a grpc_service or an http_service"))? {
        Services::GrpcService(g) => {
            let allowed = f.allowed_headers.as_ref().map(|l| list_matcher(l, "allowed_headers")).transpose()?;
            (AuthzService::Grpc(grpc_service(g, "grpc_service")?), allowed)
        }
        Services::HttpService(h) => {
            let request_list = h.authorization_request.as_ref().and_then(|r| r.allowed_headers.as_ref());
            if request_list.is_some() && f.allowed_headers.is_some() {
                return Err(Invalid::new("allowed_headers", "allowed_headers is set both here and in http_service.authorization_request (Envoy rejects it)"));
            }
            let (list, path) = match request_list {
                Some(l) => (Some(l), "http_service.authorization_request.allowed_headers"),
                None => (f.allowed_headers.as_ref(), "allowed_headers"),
            };
            let mut allowed = list.map(|l| list_matcher(l, path)).transpose()?.unwrap_or_default();
            // The HTTP service always sees these (Envoy's `toRequestMatchers`).
            allowed.extend(["authorization", ":method", ":path", ":authority"].map(StringMatcher::exact));
            (AuthzService::Http(http_service(h, "http_service")?), Some(allowed))
        }
    };
    Ok(ExtAuthz {
        service,
        failure_mode_allow: f.failure_mode_allow,
        failure_mode_allow_header_add: f.failure_mode_allow_header_add,
        status_on_error: status_on_error(f.status_on_error.as_ref()),
        with_request_body: f.with_request_body.as_ref().map(|b| BufferSettings {
            max_request_bytes: b.max_request_bytes,
            allow_partial_message: b.allow_partial_message,
            pack_as_bytes: b.pack_as_bytes,
        }),
        filter_enabled_metadata: f.filter_enabled_metadata.as_ref().map(|m| super::rbac::metadata_matcher(m, "filter_enabled_metadata")).transpose()?,
        deny_at_disable: f.deny_at_disable.as_ref().and_then(|d| d.default_value.as_ref()).is_some_and(|b| b.value),
        allowed_headers,
        disallowed_headers: f.disallowed_headers.as_ref().map(|l| list_matcher(l, "disallowed_headers")).transpose()?.unwrap_or_default(),
        stat_prefix: f.stat_prefix.clone(),
        rbac_before,
    })
}

/// `envoy.filters.network.ext_authz` (gRPC only; one check per connection).
pub fn ext_authz_from_network(f: &network_pb::ExtAuthz) -> Result<ExtAuthz, Invalid> {
    api_version(f.transport_api_version)?;
    let unsupported: [(&str, bool); 7] = [
        ("include_peer_certificate", f.include_peer_certificate),
        ("bootstrap_metadata_labels_key", !f.bootstrap_metadata_labels_key.is_empty()),
        ("include_tls_session", f.include_tls_session),
        ("send_tls_alert_on_denial", f.send_tls_alert_on_denial),
        ("metadata_context_namespaces", !f.metadata_context_namespaces.is_empty()),
        ("typed_metadata_context_namespaces", !f.typed_metadata_context_namespaces.is_empty()),
        ("shadow_mode", f.shadow_mode),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(Invalid::new(field, "this ext_authz setting is not supported by node-proxy (istiod does not emit it)"));
    }
    if f.stat_prefix.is_empty() {
        return Err(Invalid::new("stat_prefix", "the network ext_authz filter needs a stat_prefix"));
    }
    let g = f.grpc_service.as_ref().ok_or_else(|| Invalid::new("grpc_service", "the network ext_authz filter needs a grpc_service"))?;
    Ok(ExtAuthz {
        service: AuthzService::Grpc(grpc_service(g, "grpc_service")?),
        failure_mode_allow: f.failure_mode_allow,
        failure_mode_allow_header_add: false,
        status_on_error: forbidden(),
        with_request_body: None,
        filter_enabled_metadata: f.filter_enabled_metadata.as_ref().map(|m| super::rbac::metadata_matcher(m, "filter_enabled_metadata")).transpose()?,
        deny_at_disable: false,
        allowed_headers: None,
        disallowed_headers: Vec::new(),
        stat_prefix: f.stat_prefix.clone(),
        rbac_before: 0,
    })
}

fn api_version(v: i32) -> Result<(), Invalid> {
    // AUTO (0) is V3 since Envoy dropped v2; V2 (1) is refused by Envoy too.
    match core::ApiVersion::try_from(v) {
        Ok(core::ApiVersion::Auto) | Ok(core::ApiVersion::V3) => Ok(()),
        _ => Err(Invalid::new("transport_api_version", format!("transport API version {v} is not supported (V3 only)"))),
    }
}

fn full_percent(p: &xds_client::pb::envoy::r#type::v3::FractionalPercent) -> bool {
    let denominator = match p.denominator {
        0 => 100,
        1 => 10_000,
        2 => 1_000_000,
        _ => return false,
    };
    p.numerator >= denominator
}

fn status_on_error(s: Option<&xds_client::pb::envoy::r#type::v3::HttpStatus>) -> u16 {
    // Envoy's `toErrorCode`: anything outside 100..=511 is 403.
    match s.map(|s| s.code) {
        Some(c) if (100..=511).contains(&c) => c as u16,
        _ => forbidden(),
    }
}

fn list_matcher(l: &matcher::ListStringMatcher, path: &str) -> Result<Vec<StringMatcher>, Invalid> {
    l.patterns.iter().enumerate().map(|(i, m)| string_matcher(m, &format!("{path}.patterns[{i}]"))).collect()
}

fn grpc_service(g: &core::GrpcService, path: &str) -> Result<GrpcService, Invalid> {
    use core::grpc_service::TargetSpecifier;
    let envoy = match &g.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => e,
        Some(TargetSpecifier::GoogleGrpc(_)) => {
            return Err(Invalid::new(&format!("{path}.google_grpc"), "google_grpc is not supported; use envoy_grpc with a cluster (as istiod does)"))
        }
        None => return Err(Invalid::new(path, "grpc_service needs envoy_grpc")),
    };
    if envoy.cluster_name.is_empty() {
        return Err(Invalid::new(&format!("{path}.envoy_grpc.cluster_name"), "the gRPC provider needs a cluster"));
    }
    if g.retry_policy.is_some() || envoy.retry_policy.is_some() {
        return Err(Invalid::new(&format!("{path}.retry_policy"), "retries of the authorization call are not supported"));
    }
    let initial_metadata =
        g.initial_metadata.iter().enumerate().map(|(i, h)| header_pair(h, &format!("{path}.initial_metadata[{i}]"))).collect::<Result<_, _>>()?;
    Ok(GrpcService { cluster: envoy.cluster_name.clone(), authority: envoy.authority.clone(), timeout: service_timeout(g.timeout.as_ref()), initial_metadata })
}

fn http_service(h: &http_pb::HttpService, path: &str) -> Result<HttpService, Invalid> {
    use core::http_uri::HttpUpstreamType;
    let uri = h.server_uri.as_ref().ok_or_else(|| Invalid::new(&format!("{path}.server_uri"), "http_service needs a server_uri"))?;
    let cluster = match &uri.http_upstream_type {
        Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
        _ => return Err(Invalid::new(&format!("{path}.server_uri.cluster"), "the HTTP provider needs a cluster")),
    };
    if !h.path_override.is_empty() {
        return Err(Invalid::new(&format!("{path}.path_override"), "path_override is not supported (istiod emits path_prefix)"));
    }
    if h.retry_policy.is_some() {
        return Err(Invalid::new(&format!("{path}.retry_policy"), "retries of the authorization call are not supported"));
    }
    if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
        return Err(Invalid::new(&format!("{path}.path_prefix"), "path_prefix must start with '/'"));
    }
    let headers_to_add = h
        .authorization_request
        .as_ref()
        .map(|r| r.headers_to_add.iter().enumerate().map(|(i, h)| header_pair(h, &format!("{path}.authorization_request.headers_to_add[{i}]"))).collect())
        .transpose()?
        .unwrap_or_default();
    let resp = h.authorization_response.clone().unwrap_or_default();
    if resp.dynamic_metadata_from_headers.is_some() {
        return Err(Invalid::new(
            &format!("{path}.authorization_response.dynamic_metadata_from_headers"),
            "dynamic metadata from the provider is not supported",
        ));
    }
    let list = |l: &Option<matcher::ListStringMatcher>, field: &str| -> Result<Vec<StringMatcher>, Invalid> {
        l.as_ref().map(|l| list_matcher(l, &format!("{path}.authorization_response.{field}"))).transpose().map(Option::unwrap_or_default)
    };
    Ok(HttpService {
        cluster,
        timeout: service_timeout(uri.timeout.as_ref()),
        path_prefix: h.path_prefix.clone(),
        headers_to_add,
        allowed_upstream_headers: list(&resp.allowed_upstream_headers, "allowed_upstream_headers")?,
        allowed_upstream_headers_to_append: list(&resp.allowed_upstream_headers_to_append, "allowed_upstream_headers_to_append")?,
        allowed_client_headers: list(&resp.allowed_client_headers, "allowed_client_headers")?,
        allowed_client_headers_on_success: list(&resp.allowed_client_headers_on_success, "allowed_client_headers_on_success")?,
    })
}

/// Unset: Envoy's 200 ms; zero: no timeout.
fn service_timeout(d: Option<&xds_client::pb::google::protobuf::Duration>) -> Option<Duration> {
    match d {
        None => Some(DEFAULT_TIMEOUT),
        Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
    }
}

fn header_pair(h: &core::HeaderValue, path: &str) -> Result<(String, String), Invalid> {
    let value = if h.raw_value.is_empty() {
        h.value.clone()
    } else {
        String::from_utf8(h.raw_value.clone()).map_err(|_| Invalid::new(path, "raw_value is not UTF-8"))?
    };
    HeaderName::from_bytes(h.key.as_bytes()).map_err(|_| Invalid::new(path, format!("{:?} is not a header name", h.key)))?;
    HeaderValue::from_str(&value).map_err(|_| Invalid::new(path, format!("{value:?} is not a header value")))?;
    Ok((h.key.to_ascii_lowercase(), value))
}

// ---------------------------------------------------------------------------------
// Whether a request is checked

/// The dynamic metadata the RBAC filters in `filters` (the ones that ran before the
/// ext_authz filter) wrote for `req`: their shadow results under `namespace`
/// ([`HTTP_RBAC_NAMESPACE`] or [`NETWORK_RBAC_NAMESPACE`]). Later filters overwrite
/// earlier ones' keys, as Envoy merges a filter namespace's fields.
pub fn shadow_metadata(namespace: &str, filters: &[Rbac], req: &Request<'_>) -> super::rbac::Metadata {
    let mut fields = serde_json::Map::new();
    for filter in filters {
        let d = filter.evaluate(req);
        for (k, v) in filter.shadow_metadata(&d) {
            fields.insert(k, serde_json::Value::String(v));
        }
    }
    let mut md = super::rbac::Metadata::new();
    if !fields.is_empty() {
        md.insert(namespace.to_owned(), serde_json::Value::Object(fields));
    }
    md
}

impl ExtAuthz {
    /// Envoy's `filterEnabled`: no matcher, or the matcher matches `metadata`.
    pub fn enabled(&self, metadata: &super::rbac::Metadata) -> bool {
        let Some(m) = &self.filter_enabled_metadata else { return true };
        let mut value = metadata.get(&m.filter);
        for key in &m.path {
            value = value.and_then(|v| v.as_object()).and_then(|o| o.get(key));
        }
        m.value.matches(value) != m.invert
    }

    /// Whether the provider sees request header `name` (lowercase).
    pub fn header_allowed(&self, name: &str) -> bool {
        let allowed = self.allowed_headers.as_ref().is_none_or(|list| list.iter().any(|m| m.matches(name)));
        allowed && !self.disallowed_headers.iter().any(|m| m.matches(name))
    }

    /// The reply to an error (or to a disabled request with `deny_at_disable`).
    pub fn error_status(&self) -> StatusCode {
        StatusCode::from_u16(self.status_on_error).unwrap_or(StatusCode::FORBIDDEN)
    }
}

// ---------------------------------------------------------------------------------
// The check

/// What the provider is told about a request or connection.
#[derive(Clone, Debug)]
pub struct CheckInput<'a> {
    /// The downstream peer.
    pub source: std::net::SocketAddr,
    /// The local address the peer connected to.
    pub destination: std::net::SocketAddr,
    /// The peer's verified SPIFFE identity (`spiffe://…`).
    pub source_principal: Option<&'a str>,
    /// The identity this proxy serves the request as, when known.
    pub destination_principal: Option<&'a str>,
    /// `None` on a TCP connection (network filter).
    pub http: Option<HttpAttributes<'a>>,
}

/// The request's attributes (`AttributeContext.HttpRequest`).
#[derive(Clone, Debug)]
pub struct HttpAttributes<'a> {
    pub id: &'a str,
    pub method: &'a Method,
    pub authority: &'a str,
    /// With the query string.
    pub path: &'a str,
    pub scheme: &'a str,
    /// `HTTP/1.1`, `HTTP/2`…
    pub protocol: &'a str,
    pub headers: &'a HeaderMap,
    /// Everything buffered of the body, when `with_request_body` asked for it and the
    /// request has one (`Some` even when it turned out empty); the provider gets its
    /// first `max_request_bytes` ([`BufferSettings::body_sent`]).
    pub body: Option<&'a [u8]>,
}

fn socket_address(addr: std::net::SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_canonical().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

/// The request headers as Envoy puts them in the `CheckRequest`: lowercase names,
/// the pseudo-headers `:authority`, `:method`, `:path` (and `:scheme`), repeated
/// headers joined with `,`, filtered by `allowed_headers` / `disallowed_headers`; a
/// client's `x-envoy-auth-partial-body` dropped, and ours added after the filtering
/// when a body is sent (Envoy's `CheckRequestUtils::setHttpRequest`).
pub fn check_headers(cfg: &ExtAuthz, a: &HttpAttributes<'_>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(a.headers.keys_len() + 4);
    let pseudo = [(":authority", a.authority), (":method", a.method.as_str()), (":path", a.path), (":scheme", a.scheme)];
    for (name, value) in pseudo {
        if cfg.header_allowed(name) {
            out.push((name.to_owned(), value.to_owned()));
        }
    }
    for name in a.headers.keys() {
        // `host` is `:authority` in Envoy's header map.
        if name == http::header::HOST || name == PARTIAL_BODY_HEADER || !cfg.header_allowed(name.as_str()) {
            continue;
        }
        let joined = a.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect::<Vec<_>>().join(",");
        out.push((name.as_str().to_owned(), joined));
    }
    if let Some((_, partial)) = body_sent(cfg, a) {
        out.push((PARTIAL_BODY_HEADER.to_owned(), partial.to_string()));
    }
    out
}

/// The body the provider gets and whether it was cut, when one is sent.
fn body_sent<'b>(cfg: &ExtAuthz, a: &HttpAttributes<'b>) -> Option<(&'b [u8], bool)> {
    Some(cfg.with_request_body?.body_sent(a.body?))
}

/// The `CheckRequest` a gRPC provider receives (Envoy's `CheckRequestUtils`).
pub fn check_request(cfg: &ExtAuthz, input: &CheckInput<'_>) -> auth::CheckRequest {
    use auth::attribute_context::{HttpRequest, Peer, Request as AttrRequest};
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let source = Peer { address: Some(socket_address(input.source)), principal: input.source_principal.unwrap_or_default().to_owned(), ..Default::default() };
    let destination =
        Peer { address: Some(socket_address(input.destination)), principal: input.destination_principal.unwrap_or_default().to_owned(), ..Default::default() };
    let request = input.http.as_ref().map(|a| {
        let (query, fragment) = query_and_fragment(a.path);
        let mut http = HttpRequest {
            id: a.id.to_owned(),
            method: a.method.as_str().to_owned(),
            headers: check_headers(cfg, a).into_iter().collect(),
            path: a.path.to_owned(),
            host: a.authority.to_owned(),
            scheme: a.scheme.to_owned(),
            query: query.to_owned(),
            fragment: fragment.to_owned(),
            // Envoy: the stream's bytes received when it checks, i.e. what was buffered.
            size: a.body.map_or(0, |b| b.len() as i64),
            protocol: a.protocol.to_owned(),
            ..Default::default()
        };
        if let (Some((body, _)), Some(settings)) = (body_sent(cfg, a), cfg.with_request_body) {
            if settings.pack_as_bytes {
                http.raw_body = body.to_vec();
            } else {
                http.body = sanitize_utf8(body);
            }
        }
        AttrRequest {
            time: Some(xds_client::pb::google::protobuf::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }),
            http: Some(http),
        }
    });
    auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(source),
            destination: Some(destination),
            request: Some(request.unwrap_or_else(|| AttrRequest {
                time: Some(xds_client::pb::google::protobuf::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }),
                http: None,
            })),
            ..Default::default()
        }),
    }
}

/// The query and fragment of a `:path`, without their `?` / `#`.
fn query_and_fragment(path: &str) -> (&str, &str) {
    let (rest, fragment) = path.split_once('#').unwrap_or((path, ""));
    (rest.split_once('?').map_or("", |(_, q)| q), fragment)
}

/// `body` as a protobuf string, as Envoy's `MessageUtil::sanitizeUtf8String` makes
/// it: every byte that does not start or continue valid UTF-8 becomes `!` (so the
/// length is kept; `pack_as_bytes` sends the bytes as they are).
pub fn sanitize_utf8(mut body: &[u8]) -> String {
    let mut out = String::with_capacity(body.len());
    loop {
        match std::str::from_utf8(body) {
            Ok(valid) => {
                out.push_str(valid);
                return out;
            }
            Err(e) => {
                let (valid, rest) = body.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                out.push('!');
                body = rest.get(1..).unwrap_or_default();
            }
        }
    }
}

/// The request to an HTTP provider: method, `path_prefix` + path, the allowed headers
/// (`:authority` as the `host`), `headers_to_add`, and `content-length` of `body`.
/// The URI is origin-form; the caller sets the version and, for HTTP/2, the authority.
pub fn http_check_request(cfg: &ExtAuthz, svc: &HttpService, a: &HttpAttributes<'_>) -> Result<http::Request<Vec<u8>>, http::Error> {
    let body = body_sent(cfg, a).map(|(b, _)| b.to_vec()).unwrap_or_default();
    let mut builder = http::Request::builder().method(a.method.clone()).uri(format!("{}{}", svc.path_prefix, a.path));
    let mut headers = HeaderMap::new();
    for (name, value) in check_headers(cfg, a) {
        let name = match name.as_str() {
            ":authority" => http::header::HOST,
            ":method" | ":path" | ":scheme" => continue,
            _ => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        if name == http::header::CONTENT_LENGTH {
            continue;
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    for (name, value) in &svc.headers_to_add {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(n, v);
        }
    }
    headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(h) = builder.headers_mut() {
        *h = headers;
    }
    builder.body(body)
}

/// What the provider decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Set on the request (replacing any value).
    pub headers_to_set: Vec<(String, String)>,
    /// Appended to the request.
    pub headers_to_append: Vec<(String, String)>,
    pub headers_to_remove: Vec<String>,
    /// Added to the response sent to the client.
    pub response_headers_to_add: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    /// Set on the local reply.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed(Allowed),
    Denied(Denied),
    /// The provider could not decide (unreachable, timeout, 5xx, error_response).
    Error(String),
}

fn any_matches(list: &[StringMatcher], name: &str) -> bool {
    list.iter().any(|m| m.matches(name))
}

/// An HTTP provider's answer (Envoy's `RawHttpClientImpl::toResponse`).
pub fn http_outcome(svc: &HttpService, status: StatusCode, headers: &HeaderMap, body: Vec<u8>) -> Outcome {
    if status.is_server_error() {
        return Outcome::Error(format!("the authorization server answered {status}"));
    }
    let pairs = || headers.iter().filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)));
    if status == StatusCode::OK {
        let mut ok = Allowed::default();
        for value in headers.get_all(HEADERS_TO_REMOVE) {
            if let Ok(v) = value.to_str() {
                ok.headers_to_remove.extend(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.to_ascii_lowercase()));
            }
        }
        // Envoy drops these from an OK answer before matching.
        const DROPPED: [&str; 6] = ["date", "x-envoy-upstream-service-time", "content-length", "content-type", "transfer-encoding", HEADERS_TO_REMOVE];
        for (name, value) in pairs().filter(|(n, _)| !DROPPED.contains(n)) {
            if any_matches(&svc.allowed_upstream_headers, name) {
                ok.headers_to_set.push((name.to_owned(), value.to_owned()));
            }
            if any_matches(&svc.allowed_upstream_headers_to_append, name) {
                ok.headers_to_append.push((name.to_owned(), value.to_owned()));
            }
            if any_matches(&svc.allowed_client_headers_on_success, name) {
                ok.response_headers_to_add.push((name.to_owned(), value.to_owned()));
            }
        }
        return Outcome::Allowed(ok);
    }
    // Denied: the client sees the answer's status and body, and the headers
    // `allowed_client_headers` lets through.
    const ALWAYS: [&str; 3] = ["content-length", "www-authenticate", "location"];
    let passes = |name: &str| {
        if name == HEADERS_TO_REMOVE || name == "transfer-encoding" || name == "connection" {
            return false;
        }
        if svc.allowed_client_headers.is_empty() {
            name != "host"
        } else {
            ALWAYS.contains(&name) || any_matches(&svc.allowed_client_headers, name)
        }
    };
    let headers = pairs().filter(|(n, _)| passes(n) && *n != "content-length").map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
    Outcome::Denied(Denied { status: status.as_u16(), headers, body })
}

/// A gRPC provider's `CheckResponse` (Envoy's `GrpcClientImpl::onSuccess`).
pub fn grpc_outcome(resp: &auth::CheckResponse) -> Outcome {
    use auth::check_response::HttpResponse;
    let ok = resp.status.as_ref().is_none_or(|s| s.code == 0);
    if let Some(HttpResponse::ErrorResponse(_)) = &resp.http_response {
        return Outcome::Error("the authorization server answered with an error_response".to_owned());
    }
    if ok {
        let mut allowed = Allowed::default();
        if let Some(HttpResponse::OkResponse(o)) = &resp.http_response {
            for h in &o.headers {
                let Some((name, value)) = option_pair(h) else { continue };
                if appends(h) {
                    allowed.headers_to_append.push((name, value));
                } else {
                    allowed.headers_to_set.push((name, value));
                }
            }
            allowed.headers_to_remove = o.headers_to_remove.iter().map(|h| h.to_ascii_lowercase()).collect();
            allowed.response_headers_to_add = o.response_headers_to_add.iter().filter_map(option_pair).collect();
        }
        return Outcome::Allowed(allowed);
    }
    let mut denied = Denied { status: 403, headers: Vec::new(), body: Vec::new() };
    if let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response {
        if let Some(code) = d.status.as_ref().map(|s| s.code).filter(|c| (100..=599).contains(c)) {
            denied.status = code as u16;
        }
        denied.headers = d.headers.iter().filter_map(option_pair).collect();
        denied.body = d.body.as_bytes().to_vec();
    }
    Outcome::Denied(denied)
}

fn option_pair(h: &core::HeaderValueOption) -> Option<(String, String)> {
    let hv = h.header.as_ref()?;
    let value = if hv.raw_value.is_empty() { hv.value.clone() } else { String::from_utf8(hv.raw_value.clone()).ok()? };
    Some((hv.key.to_ascii_lowercase(), value))
}

/// Envoy's `copyHeaderFieldIntoResponse`: request headers of an OK answer are appended
/// when `append` is true, set otherwise (`append_action` is not consulted there).
#[allow(deprecated)] // `append`: what providers built on the v3 API still send.
fn appends(h: &core::HeaderValueOption) -> bool {
    match h.append {
        Some(b) => b.value,
        None => false,
    }
}

impl Allowed {
    /// Applies the mutations to the request headers, as Envoy's filter does on OK.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.headers_to_set {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                headers.insert(n, v);
            }
        }
        for (name, value) in &self.headers_to_append {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                headers.append(n, v);
            }
        }
        for name in &self.headers_to_remove {
            // Envoy never removes pseudo-headers or `host` this way.
            if name.starts_with(':') || name == "host" {
                continue;
            }
            headers.remove(name.as_str());
        }
    }
}

#[cfg(test)]
mod tests;
