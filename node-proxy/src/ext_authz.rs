//! The CUSTOM action's authorization call (Envoy's ext_authz filters), the decision
//! and the request/response shapes being `istio_compat::authz::ext_authz`'s.
//!
//! Owns: calling the provider on its cluster from the live snapshot, through the
//! proxy's own upstream machinery (endpoint choice, circuit breaker, connection pool,
//! HBONE legs to meshed endpoints): an HTTP provider gets a plain HTTP request, a gRPC
//! provider `envoy.service.auth.v3.Authorization/Check` through envoy-types' generated
//! client over a pooled HTTP/2 connection; the timeout; what an answer means for the
//! request (mutations on allow, the local reply on denial or error, as Envoy builds
//! it: the provider's status, body and headers; gRPC requests get a trailers-only
//! reply with the status mapped, 403 -> PERMISSION_DENIED, 401 -> UNAUTHENTICATED,
//! and the `UAEX` response flag on both); the `envoy_ext_authz_*` counters; buffering
//! the request body for `with_request_body` ([`buffer_body`]). Does not own where in
//! the filter chain the check runs (the HTTP path and the listener decide that).
//!
//! `with_request_body`, as Envoy's filter does it: a request that is enabled and has
//! a body (not headers-only, not an upgrade) is held while its body is read ahead,
//! until the body ends or, with `allow_partial_message`, `max_request_bytes` are in;
//! without `allow_partial_message` a body longer than `max_request_bytes` is answered
//! 413 `Payload Too Large` (`request_payload_too_large`; gRPC: UNKNOWN), as Envoy's
//! decoder buffer limit does, and the provider is not called. The provider gets the
//! first `max_request_bytes` of what was read and `x-envoy-auth-partial-body` saying
//! whether that was cut; the upstream later gets the whole body, what was read ahead
//! first, the rest as it streams. A client that stalls meanwhile is bounded by the
//! connection manager's stream idle timeout (408 `stream timeout`, `SI`).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use istio_compat::authz::ext_authz::{self as model, Allowed, AuthzService, CheckInput, Denied, ExtAuthz, Outcome};
use istio_compat::model::cluster::UpstreamProtocol;
use protocols::grpc;
use xds_client::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use crate::http::body::{DownstreamBody, ReadAheadError, ReqBody, RespBody};
use crate::http::local_reply::{self, LocalReply};
use crate::runtime::Worker;
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::ResponseFlags;
use crate::telemetry::metrics::RbacLabels;
use crate::upstream::cluster::ClusterState;
use crate::upstream::host::{ActiveRequest, Host};
use crate::upstream::outlier::Outcome as HostOutcome;
use crate::upstream::pool::{Checkout, Protocol};

/// The most of a provider's answer body we read (Envoy buffers it whole; a denial's
/// body goes to the client).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Envoy's `response_code_details` for a denial.
pub const DENIED_DETAILS: &str = "ext_authz_denied";
/// Envoy's `response_code_details` for an error answered with `status_on_error`.
pub const ERROR_DETAILS: &str = "ext_authz_error";
/// The connection manager's reply when a body overflows the buffer a filter set
/// (Envoy's `requestDataTooLarge`), here `with_request_body` without
/// `allow_partial_message`.
pub const PAYLOAD_TOO_LARGE: LocalReply = LocalReply::new(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large", "request_payload_too_large");

/// What the HTTP path does after the check.
pub enum HttpVerdict {
    /// Go on; apply `mutations` to the request and add `response_headers` to the response.
    Continue { mutations: Option<Allowed>, failure_mode_allowed: bool },
    /// Answer with this reply (boxed: the rare path); `details` and `flags` for the
    /// access log (Envoy sets `UAEX` on a denial and on an error it answers).
    Reply { response: Box<Response<RespBody>>, details: &'static str, flags: ResponseFlags },
}

impl HttpVerdict {
    /// Applies what the provider asked for to the request headers (and the
    /// `x-envoy-auth-failure-mode-allowed` mark), returning the headers to add to the
    /// response the client gets.
    pub fn apply(&self, cfg: &ExtAuthz, headers: &mut HeaderMap) -> Vec<(String, String)> {
        match self {
            HttpVerdict::Continue { mutations: Some(m), .. } => {
                m.apply(headers);
                m.response_headers_to_add.clone()
            }
            HttpVerdict::Continue { mutations: None, failure_mode_allowed: true } if cfg.failure_mode_allow_header_add => {
                headers.insert(model::FAILURE_MODE_ALLOWED_HEADER, HeaderValue::from_static("true"));
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}

/// Adds the provider's `response_headers_to_add` to the response the client gets.
pub fn add_response_headers(add: &[(String, String)], headers: &mut HeaderMap) {
    for (name, value) in add {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.append(n, v);
        }
    }
}

/// The HTTP filter: checks the request when `metadata` (the shadow RBAC results)
/// enables it. `owner_prefix` labels the metrics (the connection manager's stat prefix).
pub async fn check_http(
    worker: &Rc<Worker>,
    snapshot: &Snapshot,
    owner_prefix: &str,
    cfg: &ExtAuthz,
    metadata: &istio_compat::authz::rbac::Metadata,
    input: &CheckInput<'_>,
    grpc_request: bool,
) -> HttpVerdict {
    let metrics = &worker.shared.metrics.ext_authz;
    let labels = RbacLabels { filter: "http", stat_prefix: owner_prefix.to_owned() };
    if !cfg.enabled(metadata) {
        metrics.disabled.get_or_create(&labels).inc();
        if cfg.deny_at_disable {
            return HttpVerdict::Reply {
                response: Box::new(reply(cfg.error_status(), &[], b"", grpc_request)),
                details: ERROR_DETAILS,
                flags: ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
            };
        }
        return HttpVerdict::Continue { mutations: None, failure_mode_allowed: false };
    }
    match call(worker, snapshot, cfg, input).await {
        Outcome::Allowed(ok) => {
            metrics.ok.get_or_create(&labels).inc();
            HttpVerdict::Continue { mutations: Some(ok), failure_mode_allowed: false }
        }
        Outcome::Denied(Denied { status, headers, body }) => {
            metrics.denied.get_or_create(&labels).inc();
            tracing::debug!(target: "ext_authz", status, source = %input.source, "the authorization provider denied the request");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            HttpVerdict::Reply {
                response: Box::new(reply(status, &headers, &body, grpc_request)),
                details: DENIED_DETAILS,
                flags: ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
            }
        }
        Outcome::Error(why) => {
            metrics.error.get_or_create(&labels).inc();
            if cfg.failure_mode_allow {
                metrics.failure_mode_allowed.get_or_create(&labels).inc();
                tracing::debug!(target: "ext_authz", cluster = cfg.service.cluster(), "authorization call failed, allowed by failure_mode_allow: {why}");
                return HttpVerdict::Continue { mutations: None, failure_mode_allowed: true };
            }
            tracing::info!(target: "ext_authz", cluster = cfg.service.cluster(), "authorization call failed, request refused with {}: {why}", cfg.status_on_error);
            HttpVerdict::Reply {
                response: Box::new(reply(cfg.error_status(), &[], b"", grpc_request)),
                details: ERROR_DETAILS,
                flags: ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
            }
        }
    }
}

/// Why a request was answered while its body was buffered for the check: the local
/// reply and the response flag for the access log.
#[derive(Debug)]
pub struct BufferFailure {
    pub reply: LocalReply,
    pub flag: ResponseFlags,
}

/// `with_request_body`: reads the request body ahead for the check when the filter
/// is enabled for the request (`metadata`) and the request has a body, and returns
/// everything read (the provider gets its first `max_request_bytes`); `None` when
/// nothing is to be buffered. What is read stays at the front of `body`, so the
/// upstream gets the whole body. `stall`: the stream idle timeout, which bounds each
/// wait for the client.
pub async fn buffer_body(
    cfg: &ExtAuthz,
    metadata: &istio_compat::authz::rbac::Metadata,
    headers: &HeaderMap,
    body: &mut DownstreamBody,
    stall: Option<std::time::Duration>,
) -> Result<Option<Bytes>, BufferFailure> {
    let Some(settings) = cfg.with_request_body else { return Ok(None) };
    // Envoy buffers nothing for a headers-only request, an upgrade, or a request the
    // filter is disabled for (it is then not checked at all).
    if body.is_end_stream() || crate::http::headers::upgrade_type(headers).is_some() || !cfg.enabled(metadata) {
        return Ok(None);
    }
    let limit = settings.max_request_bytes as usize;
    // A declared length already over the limit overflows: no need to read it first.
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || BufferFailure { reply: PAYLOAD_TOO_LARGE, flag: ResponseFlags::NONE };
    if declared.is_some_and(|n| settings.overflows(n)) {
        tracing::debug!(target: "ext_authz", limit, "request body longer than with_request_body.max_request_bytes: 413");
        return Err(too_large());
    }
    match body.read_ahead(|held| settings.is_full(held) || settings.overflows(held), stall).await {
        Ok(()) => {}
        Err(ReadAheadError::Stalled) => {
            return Err(BufferFailure { reply: LocalReply::STREAM_IDLE_TIMEOUT, flag: ResponseFlags::STREAM_IDLE_TIMEOUT });
        }
        Err(ReadAheadError::Body(e)) => {
            tracing::debug!(target: "ext_authz", "reading the request body for the authorization check failed: {e}");
            return Err(BufferFailure { reply: LocalReply::DOWNSTREAM_PROTOCOL_ERROR, flag: ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR });
        }
    }
    if settings.overflows(body.ahead_len() as u64) {
        tracing::debug!(target: "ext_authz", limit, "request body longer than with_request_body.max_request_bytes: 413");
        return Err(too_large());
    }
    Ok(Some(body.ahead()))
}

/// The network filter: whether the connection may go on (one check, when accepted).
pub async fn check_connection(worker: &Rc<Worker>, cfg: &ExtAuthz, metadata: &istio_compat::authz::rbac::Metadata, input: &CheckInput<'_>) -> bool {
    let metrics = &worker.shared.metrics.ext_authz;
    let labels = RbacLabels { filter: "network", stat_prefix: cfg.stat_prefix.clone() };
    if !cfg.enabled(metadata) {
        metrics.disabled.get_or_create(&labels).inc();
        return true;
    }
    let snapshot = worker.shared.live.load();
    match call(worker, &snapshot, cfg, input).await {
        Outcome::Allowed(_) => {
            metrics.ok.get_or_create(&labels).inc();
            true
        }
        Outcome::Denied(_) => {
            metrics.denied.get_or_create(&labels).inc();
            tracing::debug!(target: "ext_authz", source = %input.source, "the authorization provider denied the connection");
            false
        }
        Outcome::Error(why) => {
            metrics.error.get_or_create(&labels).inc();
            if cfg.failure_mode_allow {
                metrics.failure_mode_allowed.get_or_create(&labels).inc();
                return true;
            }
            tracing::info!(target: "ext_authz", cluster = cfg.service.cluster(), source = %input.source, "authorization call failed, connection closed: {why}");
            false
        }
    }
}

/// The local reply to a denial or an error, as Envoy's `sendLocalReply` makes it: the
/// provider's headers replace the reply's own; a gRPC request gets trailers only, the
/// HTTP status mapped to a gRPC code and the body as `grpc-message`.
fn reply(status: StatusCode, headers: &[(String, String)], body: &[u8], grpc_request: bool) -> Response<RespBody> {
    let mut resp = if grpc_request {
        let code = grpc::code_from_http_status(status.as_u16()).as_i32() as u32;
        local_reply::grpc_trailers_only(code, &String::from_utf8_lossy(body))
    } else {
        let mut r = Response::new(RespBody::full(Bytes::copy_from_slice(body)));
        *r.status_mut() = status;
        if !body.is_empty() {
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        r
    };
    for (name, value) in headers {
        let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else { continue };
        // The reply's framing and a gRPC reply's status stay ours.
        if n == CONTENT_LENGTH || n == http::header::TRANSFER_ENCODING || (grpc_request && (n == CONTENT_TYPE || name.starts_with("grpc-"))) {
            continue;
        }
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(n, v);
        }
    }
    resp
}

/// Asks the provider, within the configured timeout.
async fn call(worker: &Rc<Worker>, snapshot: &Snapshot, cfg: &ExtAuthz, input: &CheckInput<'_>) -> Outcome {
    let exchange = async {
        match &cfg.service {
            AuthzService::Http(svc) => call_http(worker, snapshot, cfg, svc, input).await,
            AuthzService::Grpc(svc) => call_grpc(worker, snapshot, cfg, svc, input).await,
        }
    };
    let result = match cfg.service.timeout() {
        None => exchange.await,
        Some(t) => match tokio::time::timeout(t, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer from cluster {} within {t:?}", cfg.service.cluster())),
        },
    };
    result.unwrap_or_else(Outcome::Error)
}

/// The provider's cluster and one of its endpoints, as the router picks them.
struct Upstream {
    cluster: Arc<ClusterState>,
    host: Arc<Host>,
    _slot: crate::upstream::cluster::Slot,
    _active: ActiveRequest,
}

fn upstream(worker: &Rc<Worker>, snapshot: &Snapshot, name: &str, source: IpAddr) -> Result<Upstream, String> {
    let cluster = snapshot.clusters.get(name).cloned().ok_or_else(|| format!("the authorization provider's cluster {name} is not in the configuration"))?;
    let host = cluster.view().pick(None, &|_| false, 1).ok_or_else(|| format!("cluster {name} has no healthy endpoint"))?;
    if host.tls_required && !matches!(worker.pools.leg(Some(source), host.address), Ok(crate::mesh::Leg::Hbone { .. })) {
        return Err(format!("cluster {name} requires upstream TLS, which node-proxy originates only as HBONE to meshed endpoints"));
    }
    let slot = cluster.try_start_request().ok_or_else(|| format!("cluster {name}: too many requests in flight (circuit breaker)"))?;
    let active = ActiveRequest::new(&host);
    Ok(Upstream { cluster, host, _slot: slot, _active: active })
}

async fn call_http(worker: &Rc<Worker>, snapshot: &Snapshot, cfg: &ExtAuthz, svc: &model::HttpService, input: &CheckInput<'_>) -> Result<Outcome, String> {
    let Some(attrs) = input.http.as_ref() else { return Err("an HTTP provider cannot check a TCP connection".to_owned()) };
    let up = upstream(worker, snapshot, &svc.cluster, input.source.ip())?;
    let protocol = match up.cluster.config.protocol {
        UpstreamProtocol::Http2 => Protocol::Http2,
        _ => Protocol::Http1,
    };
    let req = model::http_check_request(cfg, svc, attrs).map_err(|e| format!("cannot build the authorization request: {e}"))?;
    let (mut parts, body) = req.into_parts();
    let authority = parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(attrs.authority).to_owned();
    match protocol {
        Protocol::Http1 => parts.version = Version::HTTP_11,
        Protocol::Http2 => {
            parts.version = Version::HTTP_2;
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority.as_str())
                .path_and_query(path)
                .build()
                .map_err(|e| format!("bad authority {authority:?}: {e}"))?;
            parts.headers.remove(http::header::HOST);
        }
    }
    let body = if body.is_empty() { ReqBody::Empty } else { ReqBody::Full(Some(Bytes::from(body))) };
    let req = Request::from_parts(parts, body);
    let resp = send(worker, &up, protocol, input.source.ip(), req).await?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::Limited::new(body, MAX_ANSWER_BYTES).collect().await.map_err(|e| format!("reading the authorization answer: {e}"))?.to_bytes();
    Ok(model::http_outcome(svc, parts.status, &parts.headers, body.to_vec()))
}

async fn send(worker: &Rc<Worker>, up: &Upstream, protocol: Protocol, source: IpAddr, req: Request<ReqBody>) -> Result<Response<Incoming>, String> {
    let name = &up.cluster.name;
    let checkout = match worker.pools.checkout(&up.cluster, up.host.address, protocol, Some(source)).await {
        Ok(c) => c,
        Err(e) => {
            up.cluster.record_outcome(&up.host, HostOutcome::ConnectFailed);
            return Err(format!("cannot reach {} in cluster {name}: {e}", up.host.address));
        }
    };
    let result = match checkout {
        Checkout::Http1(mut pooled) => {
            let Some(sender) = pooled.sender() else { return Err(format!("connection to {} closed", up.host.address)) };
            let r = sender.send_request(req).await;
            if r.is_err() {
                pooled.broken = true;
            }
            r
        }
        Checkout::Http2(mut sender) => sender.send_request(req).await,
    };
    match result {
        Ok(resp) => {
            up.cluster.record_outcome(&up.host, HostOutcome::Response(resp.status().as_u16()));
            Ok(resp)
        }
        Err(e) => {
            up.cluster.record_outcome(&up.host, HostOutcome::Reset);
            Err(format!("the request to {} in cluster {name} failed: {e}", up.host.address))
        }
    }
}

async fn call_grpc(worker: &Rc<Worker>, snapshot: &Snapshot, cfg: &ExtAuthz, svc: &model::GrpcService, input: &CheckInput<'_>) -> Result<Outcome, String> {
    let up = upstream(worker, snapshot, &svc.cluster, input.source.ip())?;
    let checkout = match worker.pools.checkout(&up.cluster, up.host.address, Protocol::Http2, Some(input.source.ip())).await {
        Ok(c) => c,
        Err(e) => {
            up.cluster.record_outcome(&up.host, HostOutcome::ConnectFailed);
            return Err(format!("cannot reach {} in cluster {}: {e}", up.host.address, svc.cluster));
        }
    };
    let Checkout::Http2(sender) = checkout else { return Err("the pool gave an HTTP/1 connection for a gRPC call".to_owned()) };
    // Envoy's default authority is the cluster name, which istiod avoids (it has `|`).
    let authority = if svc.authority.is_empty() { up.host.address.to_string() } else { svc.authority.clone() };
    let origin =
        Uri::builder().scheme("http").authority(authority.as_str()).path_and_query("/").build().map_err(|e| format!("bad authority {authority:?}: {e}"))?;
    let mut client = AuthorizationClient::with_origin(PooledChannel { sender }, origin);
    let mut request = tonic::Request::new(model::check_request(cfg, input));
    if let Some(t) = svc.timeout {
        request.set_timeout(t);
    }
    for (name, value) in &svc.initial_metadata {
        if let (Ok(k), Ok(v)) = (name.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(), value.parse()) {
            request.metadata_mut().insert(k, v);
        }
    }
    match client.check(request).await {
        Ok(resp) => {
            up.cluster.record_outcome(&up.host, HostOutcome::Response(200));
            Ok(model::grpc_outcome(resp.get_ref()))
        }
        Err(status) => Err(format!("Authorization/Check on cluster {} failed: {} {}", svc.cluster, status.code(), status.message())),
    }
}

/// A pooled HTTP/2 connection as tonic's transport: the generated client encodes and
/// decodes, the pool's connection carries the stream (the unary request is small and
/// collected before it is sent).
#[derive(Clone)]
struct PooledChannel {
    sender: hyper::client::conn::http2::SendRequest<ReqBody>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Request<tonic::body::Body>> for PooledChannel {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.sender.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.sender.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let bytes = body.collect().await.map_err(|s| Box::new(s) as BoxError)?.to_bytes();
            parts.version = Version::HTTP_2;
            let req = Request::from_parts(parts, ReqBody::Full(Some(bytes)));
            Ok(sender.send_request(req).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_denials_map_the_status() {
        let r = reply(StatusCode::FORBIDDEN, &[("x-why".into(), "policy".into())], b"no", true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(r.headers()["grpc-message"], "no");
        assert_eq!(r.headers()["x-why"], "policy");
        let r = reply(StatusCode::UNAUTHORIZED, &[], b"", true);
        assert_eq!(r.headers()["grpc-status"], "16");
    }

    #[test]
    fn http_denials_carry_status_body_and_headers() {
        let r = reply(StatusCode::UNAUTHORIZED, &[("www-authenticate".into(), "Bearer".into()), ("content-length".into(), "99".into())], b"denied", false);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(r.headers()["content-length"], "6", "the framing stays ours");
    }

    #[test]
    fn uaex_prints_in_envoys_order() {
        let mut f = ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION;
        f.set(ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE);
        f.set(ResponseFlags::FAULT_INJECTED);
        assert_eq!(f.to_string(), "FI,UAEX,DC");
        assert_eq!(ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE.to_string(), "UAEX");
    }

    #[test]
    fn payload_too_large_is_envoys_reply() {
        let r = PAYLOAD_TOO_LARGE.response(false);
        assert_eq!((r.status(), &r.headers()[CONTENT_LENGTH]), (StatusCode::PAYLOAD_TOO_LARGE, &HeaderValue::from(17)));
        // gRPC: httpToGrpcStatus has no mapping for 413: UNKNOWN.
        let r = PAYLOAD_TOO_LARGE.response(true);
        assert_eq!((&r.headers()["grpc-status"], &r.headers()["grpc-message"]), (&HeaderValue::from(2), &HeaderValue::from_static("Payload Too Large")));
    }
}
