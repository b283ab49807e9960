//! The HTTP request path, top to bottom, as Envoy's HTTP connection manager and
//! router run it:
//!
//! route (virtual host by `:authority`, first matching route) -> direct response,
//! redirect, or forward: cluster choice (single, header, weighted) -> header
//! mutations and rewrites -> fault injection -> mirrors -> circuit breaker -> attempts
//! (load balancing, connection pool, per-try timeout) with retries per the retry
//! policy -> response header mutations -> body streamed back, with the access log
//! and metrics written when it ends.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use istio_compat::model::cluster::{Discovery, LbPolicy, UpstreamProtocol};
use istio_compat::model::common::HeaderMutation;
use istio_compat::model::fault::Abort;
use istio_compat::model::listener::{AccessLog, ChainId, HttpConnectionManager, Listener, RouteSource};
use istio_compat::model::retry::{AttemptFailure, RetryPolicy};
use istio_compat::model::route::{
    Action, ClusterSpecifier, ForwardAction, HashPolicy, HashSource, MirrorPolicy, RequestHead, Route, RouteTable, VirtualHost, WeightedCluster,
};
use protocols::grpc;

use super::body::{BodyEnd, DownstreamBody, EndOutcome, Finish, ReplayBody, ReqBody, RespBody};
use super::headers::{normalize_path, strip_hop_by_hop, upgrade_type};
use super::local_reply::{self, LocalReply};
use crate::runtime::Worker;
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::{RequestRecord, ResponseFlags};
use crate::telemetry::metrics::{DestinationLabels, RequestLabels, RequestSample, SourceLabels};
use crate::upstream::cluster::{ClusterState, Slot};
use crate::upstream::host::{ActiveRequest, Host};
use crate::upstream::outlier::Outcome;
use crate::upstream::pool::{Checkout, PoolError, PooledH1, Protocol};
use istio_compat::authz::rbac::Request as RbacRequest;

/// One downstream connection's context.
pub struct ConnCtx {
    pub worker: Rc<Worker>,
    pub listener: Arc<Listener>,
    /// The filter chain serving this connection.
    pub chain: ChainId,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The original destination (equals `local` unless redirected).
    pub destination: SocketAddr,
    /// Set only when the connection was redirected (ORIGINAL_DST clusters need it).
    pub original_dst: Option<SocketAddr>,
    pub server_name: Option<String>,
    /// The peer's principal as the RBAC filters see it ([`crate::authz::peer_principal`]).
    pub peer_principal: Option<String>,
    pub source: Arc<SourceLabels>,
    /// Access logs to write when the configuration names none.
    pub default_access_log: Option<Arc<AccessLog>>,
    /// HTTP/1: verdicts on raw request heads, one per request, in order.
    pub head_verdicts: crate::io::HeadVerdicts,
    /// Set when the connection reached a local workload through the mesh's inbound
    /// (a stream of an HBONE tunnel, or a captured plaintext connection) at its destination.
    pub inbound: Option<Arc<InboundOrigin>>,
}

/// Who sent the requests of a connection to a local workload, as its destination
/// reports them: `reporter="destination"`, the local workload as destination, and
/// `connection_security_policy="mutual_tls"` with the verified peer (HBONE) or
/// `"none"` (plaintext, as Envoy's sidecar reports a plaintext inbound request).
#[derive(Debug)]
pub struct InboundOrigin {
    pub destination: Arc<DestinationLabels>,
    /// The peer's verified SPIFFE identity (HBONE); `None` for plaintext.
    pub peer: Option<Arc<str>>,
    /// Its certificate, for `x-forwarded-client-cert`.
    pub certificate: Option<Arc<super::headers::PeerCertificate>>,
}

impl ConnCtx {
    /// The downstream source the upstream legs are planned from ([`crate::upstream::pool::Pools::leg`]):
    /// none when the connection came to a local workload through the mesh's inbound.
    pub fn leg_source(&self) -> Option<IpAddr> {
        self.inbound.is_none().then(|| self.remote.ip())
    }

    pub fn hcm(&self) -> Option<&HttpConnectionManager> {
        match &self.listener.chain(self.chain)?.kind {
            istio_compat::model::listener::ChainKind::Http(h) => Some(h),
            _ => None,
        }
    }

    fn access_logs(&self) -> Vec<AccessLog> {
        let hcm_logs = self.hcm().map(|h| h.access_log.as_slice()).unwrap_or_default();
        if !hcm_logs.is_empty() {
            return hcm_logs.to_vec();
        }
        if !self.listener.access_log.is_empty() {
            return self.listener.access_log.clone();
        }
        self.default_access_log.iter().map(|l| (**l).clone()).collect()
    }
}

/// Serves one request.
pub async fn handle(cx: Rc<ConnCtx>, req: Request<Incoming>) -> Response<RespBody> {
    let snapshot = cx.worker.shared.live.load();
    cx.worker.shared.metrics.downstream_rq_total.inc();
    let (mut parts, body) = req.into_parts();
    let mut flow = Flow::new(cx.clone(), &parts);
    // Request smuggling guard: Content-Length with Transfer-Encoding is rejected and
    // the connection closed (Envoy; RFC 9112 §6.3). hyper drops one of the two, so the
    // raw head's verdict decides.
    let verdict = if parts.version <= Version::HTTP_11 { cx.head_verdicts.lock().ok().and_then(|mut q| q.pop_front()) } else { None };
    if verdict == Some(protocols::h1frame::HeadVerdict::ConflictingFraming) {
        let mut resp = flow.rec_local(LocalReply::DOWNSTREAM_PROTOCOL_ERROR, ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let Some(hcm) = cx.hcm() else {
        return flow.local(LocalReply::CHAIN_REFUSED, ResponseFlags::NONE);
    };
    if hcm.generate_request_id && !parts.headers.contains_key("x-request-id") {
        parts.headers.insert("x-request-id", request_id());
    }
    flow.rec.request_id = header_string(&parts.headers, "x-request-id");
    super::headers::forward_client_cert(&mut parts.headers, &hcm.client_cert, cx.inbound.as_ref().and_then(|t| t.certificate.as_deref()));
    let path = if hcm.normalize_path || hcm.merge_slashes {
        match normalize_path(&flow.rec.path, hcm.normalize_path, hcm.merge_slashes) {
            Some(p) => p,
            None => return flow.local(LocalReply::BAD_REQUEST, ResponseFlags::NONE),
        }
    } else {
        flow.rec.path.clone()
    };
    let table: &RouteTable = match &hcm.routes {
        RouteSource::Inline(t) => t,
        RouteSource::Rds(name) => match snapshot.routes.get(name) {
            Some(t) => t,
            None => return flow.local(LocalReply::NO_ROUTE_CONFIG, ResponseFlags::NO_ROUTE_FOUND),
        },
    };
    let authority = flow.rec.authority.clone();
    // RequestAuthentication (jwt_authn): a bad token is refused here; a verified one
    // gives the RBAC filters its claims.
    let jwt_metadata = match &hcm.jwt {
        None => None,
        Some(authn) => {
            let head = RequestHead { method: &parts.method, authority: &authority, path: &path, scheme: "http", headers: &parts.headers };
            match super::jwt::authenticate(authn, &head).await {
                Ok(passed) => {
                    passed.apply(&mut parts.headers);
                    passed.metadata
                }
                Err(rejection) => {
                    flow.rec.response_code_details = rejection.details().into();
                    let resp = if flow.grpc { rejection.grpc_response() } else { rejection.response() };
                    return flow.finish_local(resp);
                }
            }
        }
    };
    let head = RequestHead { method: &parts.method, authority: &authority, path: &path, scheme: "http", headers: &parts.headers };
    // CUSTOM (ext_authz) runs where istiod put it among the RBAC filters: after its
    // shadow RBAC (whose metadata enables it), before DENY and ALLOW, which see the
    // headers it set.
    let (rbac_before, rbac_after) = hcm.rbac.split_at(hcm.ext_authz.as_ref().map_or(0, |e| e.rbac_before.min(hcm.rbac.len())));
    // The downstream body; ext_authz may read some of it ahead, which is forwarded first.
    let mut body = DownstreamBody::new(body);
    if let Some(cfg) = &hcm.ext_authz {
        let req = rbac_request(&cx, hcm, head, jwt_metadata.as_ref());
        if let Err(details) = crate::authz::check(&cx.worker.rbac_counters, "http", Some(&hcm.stat_prefix), rbac_before, &req) {
            return flow.deny(details);
        }
        let metadata = istio_compat::authz::ext_authz::shadow_metadata(istio_compat::authz::ext_authz::HTTP_RBAC_NAMESPACE, rbac_before, &req);
        // with_request_body: the body (all of it, or its start) before the check.
        let buffered = match crate::ext_authz::buffer_body(cfg, &metadata, &parts.headers, &mut body, hcm.stream_idle_timeout).await {
            Ok(b) => b,
            Err(failure) => {
                flow.request_bytes.set(body.ahead_len() as u64);
                return flow.local(failure.reply, failure.flag);
            }
        };
        let input = istio_compat::authz::ext_authz::CheckInput {
            source: cx.remote,
            destination: cx.destination,
            source_principal: cx.peer_principal.as_deref(),
            destination_principal: None,
            http: Some(istio_compat::authz::ext_authz::HttpAttributes {
                id: flow.rec.request_id.as_deref().unwrap_or(""),
                method: &parts.method,
                authority: &authority,
                path: &path,
                scheme: "http",
                protocol: flow.rec.protocol,
                headers: &parts.headers,
                body: buffered.as_deref(),
            }),
        };
        let verdict = crate::ext_authz::check_http(&cx.worker, &snapshot, &hcm.stat_prefix, cfg, &metadata, &input, flow.grpc).await;
        if let crate::ext_authz::HttpVerdict::Reply { response, details, flags } = verdict {
            flow.request_bytes.set(body.ahead_len() as u64);
            flow.rec.response_flags.set(flags);
            flow.rec.response_code_details = details.into();
            return flow.finish_local(*response);
        }
        flow.response_headers = verdict.apply(cfg, &mut parts.headers);
    }
    let head = RequestHead { method: &parts.method, authority: &authority, path: &path, scheme: "http", headers: &parts.headers };
    if !rbac_after.is_empty() {
        let req = rbac_request(&cx, hcm, head, jwt_metadata.as_ref());
        if let Err(details) = crate::authz::check(&cx.worker.rbac_counters, "http", Some(&hcm.stat_prefix), rbac_after, &req) {
            return flow.deny(details);
        }
    }
    let Some(vhost) = table.virtual_host(&authority) else {
        return flow.local(LocalReply::NO_ROUTE, ResponseFlags::NO_ROUTE_FOUND);
    };
    let Some(route) = vhost.route(&head) else {
        return flow.local(LocalReply::NO_ROUTE, ResponseFlags::NO_ROUTE_FOUND);
    };
    if !route.name.is_empty() {
        flow.rec.route_name = Some(route.name.clone());
    }
    let levels = Levels { weighted: None, route, vhost, table };
    match &route.action {
        Action::DirectResponse(d) => {
            let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
            let mut resp = local_reply::with_body(status, d.body.as_deref());
            levels.apply_response(resp.headers_mut());
            flow.rec.response_code_details = "direct_response".into();
            flow.finish_local(resp)
        }
        Action::Redirect(r) => {
            let mut resp = local_reply::with_body(StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY), None);
            if let Ok(v) = HeaderValue::from_str(&r.location(&head, &route.matcher)) {
                resp.headers_mut().insert(LOCATION, v);
            }
            levels.apply_response(resp.headers_mut());
            flow.rec.response_code_details = "direct_response".into();
            flow.finish_local(resp)
        }
        Action::Forward(fwd) => forward(flow, &snapshot, hcm, levels, fwd, parts, path, body).await,
    }
}

/// The request as the RBAC filters see it. Envoy's remote address: the peer, or
/// (use_remote_address false) the last x-forwarded-for hop it was given.
fn rbac_request<'a>(
    cx: &'a ConnCtx,
    hcm: &HttpConnectionManager,
    head: RequestHead<'a>,
    metadata: Option<&'a istio_compat::authz::rbac::Metadata>,
) -> RbacRequest<'a> {
    // The original client, from XFF, only for filters that test it (a header lookup).
    let from_xff = !hcm.use_remote_address && hcm.rbac.iter().any(istio_compat::authz::rbac::Rbac::reads_remote_ip);
    let remote = if from_xff { last_forwarded_for(head.headers) } else { None }.map_or(cx.remote, |ip| SocketAddr::new(ip, 0));
    RbacRequest {
        source: cx.remote,
        direct_remote: cx.remote,
        remote,
        destination: cx.destination,
        requested_server_name: cx.server_name.as_deref().unwrap_or(""),
        peer_principal: cx.peer_principal.as_deref(),
        http: Some(head),
        metadata,
    }
}

/// The levels of header mutations, most specific first.
#[derive(Clone, Copy)]
struct Levels<'a> {
    weighted: Option<&'a WeightedCluster>,
    route: &'a Route,
    vhost: &'a VirtualHost,
    table: &'a RouteTable,
}

impl Levels<'_> {
    /// Envoy applies weighted cluster, route, virtual host, then route configuration:
    /// the more general level is applied last.
    fn apply(&self, headers: &mut http::HeaderMap, request: bool) {
        fn side<'m>(request: bool, req: &'m HeaderMutation, resp: &'m HeaderMutation) -> &'m HeaderMutation {
            if request {
                req
            } else {
                resp
            }
        }
        if let Some(w) = self.weighted {
            side(request, &w.request_headers, &w.response_headers).apply(headers);
        }
        side(request, &self.route.request_headers, &self.route.response_headers).apply(headers);
        side(request, &self.vhost.request_headers, &self.vhost.response_headers).apply(headers);
        side(request, &self.table.request_headers, &self.table.response_headers).apply(headers);
    }

    fn apply_request(&self, headers: &mut http::HeaderMap) {
        self.apply(headers, true);
    }

    fn apply_response(&self, headers: &mut http::HeaderMap) {
        self.apply(headers, false);
    }
}

/// The per-request state that ends in the access log and metrics.
struct Flow {
    cx: Rc<ConnCtx>,
    start: Instant,
    rec: RequestRecord,
    grpc: bool,
    destination: Arc<DestinationLabels>,
    request_bytes: Rc<Cell<u64>>,
    /// The log line and metrics have been written.
    done: bool,
    /// An ext_authz provider's `response_headers_to_add`: every response after its OK
    /// carries them (Envoy adds them as the response passes its filter: the upstream's,
    /// and the local replies of the filters and router behind it).
    response_headers: Vec<(String, String)>,
}

impl Flow {
    fn new(cx: Rc<ConnCtx>, parts: &Parts) -> Self {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_default();
        let path = if parts.method == Method::CONNECT { String::new() } else { parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned() };
        let grpc = parts.headers.get(CONTENT_TYPE).is_some_and(|v| grpc::is_grpc_content_type(v.as_bytes()));
        let rec = RequestRecord {
            start_time: SystemTime::now(),
            method: parts.method.as_str().to_owned(),
            path,
            protocol: protocol_name(parts.version),
            response_code: 0,
            response_flags: ResponseFlags::NONE,
            response_code_details: "via_upstream".into(),
            bytes_received: 0,
            bytes_sent: 0,
            duration: Default::default(),
            upstream_service_time: None,
            x_forwarded_for: header_string(&parts.headers, "x-forwarded-for"),
            user_agent: header_string(&parts.headers, "user-agent"),
            request_id: None,
            authority,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: cx.destination,
            downstream_remote_address: cx.remote,
            requested_server_name: cx.server_name.clone(),
            route_name: None,
            grpc_status: None,
            upstream_transport_failure_reason: None,
            downstream_peer_uri_san: cx.inbound.as_ref().and_then(|t| t.peer.clone()),
            upstream_peer_uri_san: None,
        };
        Flow {
            start: Instant::now(),
            rec,
            grpc,
            destination: DestinationLabels::unknown(),
            request_bytes: Rc::new(Cell::new(0)),
            done: false,
            response_headers: Vec::new(),
            cx,
        }
    }

    /// The RBAC filter's 403 (gRPC: PERMISSION_DENIED), `details` naming the policy.
    fn deny(mut self, details: String) -> Response<RespBody> {
        self.rec.response_code_details = details.into();
        let resp = LocalReply::RBAC_DENIED.response(self.grpc);
        self.finish_local(resp)
    }

    fn rec_local(self, reply: LocalReply, flag: ResponseFlags) -> Response<RespBody> {
        self.local(reply, flag)
    }

    fn local(mut self, reply: LocalReply, flag: ResponseFlags) -> Response<RespBody> {
        self.rec.response_flags.set(flag);
        self.rec.response_code_details = reply.details.into();
        let resp = reply.response(self.grpc);
        self.finish_local(resp)
    }

    fn finish_local(self, resp: Response<RespBody>) -> Response<RespBody> {
        self.attach(resp, Resources::default(), None)
    }

    /// Attaches the completion (access log, metrics, resource release) to the body.
    fn attach(mut self, resp: Response<RespBody>, resources: Resources, deadline: Option<tokio::time::Instant>) -> Response<RespBody> {
        self.rec.response_code = resp.status().as_u16();
        self.rec.grpc_status = resp.headers().get("grpc-status").and_then(|v| grpc::Code::from_header_value(v.as_bytes()).ok()).map(|c| c.as_i32());
        let (mut parts, body) = resp.into_parts();
        crate::ext_authz::add_response_headers(&self.response_headers, &mut parts.headers);
        if let Some(name) = self.cx.hcm().and_then(|h| h.server_name.as_deref()) {
            if let Ok(v) = HeaderValue::from_str(name) {
                parts.headers.insert(http::header::SERVER, v);
            }
        }
        let completion = Completion { flow: self, resources };
        Response::from_parts(parts, body.with_deadline(deadline).on_finish(Box::new(completion)))
    }
}

/// What a request holds until its response ends.
#[derive(Default)]
struct Resources {
    _request_slot: Option<Slot>,
    _retry_slot: Option<Slot>,
    _active: Option<ActiveRequest>,
    _connection: Option<PooledH1>,
    set_cookie: Option<HeaderValue>,
}

struct Completion {
    flow: Flow,
    resources: Resources,
}

impl Finish for Completion {
    fn finish(self: Box<Self>, end: BodyEnd) {
        let Completion { mut flow, resources } = *self;
        drop(resources);
        flow.complete(end);
    }
}

impl Flow {
    /// Writes the access log line and the metrics, once.
    fn complete(&mut self, end: BodyEnd) {
        if self.done {
            return;
        }
        self.done = true;
        self.rec.bytes_sent = end.bytes;
        self.rec.bytes_received = self.request_bytes.get();
        self.rec.duration = self.start.elapsed();
        if let Some(code) = end.grpc_status {
            self.rec.grpc_status = Some(code);
        }
        match end.outcome {
            EndOutcome::Complete => {}
            EndOutcome::Dropped => self.rec.response_flags.set(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION),
            EndOutcome::UpstreamError => self.rec.response_flags.set(ResponseFlags::UPSTREAM_REMOTE_RESET),
            EndOutcome::TimedOut => self.rec.response_flags.set(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT),
        }
        let cx = &self.cx;
        let (reporter, destination, security) = match &cx.inbound {
            Some(t) => ("destination", t.destination.clone(), if t.peer.is_some() { "mutual_tls" } else { "none" }),
            None => ("source", self.destination.clone(), "unknown"),
        };
        cx.worker.record_request(RequestSample {
            labels: RequestLabels {
                reporter,
                source: cx.source.clone(),
                destination,
                request_protocol: if self.grpc { "grpc" } else { "http" },
                response_code: self.rec.response_code,
                grpc_response_status: self.rec.grpc_status,
                response_flags: flag_string(self.rec.response_flags),
                connection_security_policy: security,
            },
            duration_ms: self.rec.duration.as_secs_f64() * 1000.0,
            request_bytes: self.rec.bytes_received,
            response_bytes: self.rec.bytes_sent,
        });
        let logs = cx.access_logs();
        if !logs.is_empty() {
            self.rec.emit(&logs);
        }
    }
}

/// A request abandoned before it had a response (the client went away, or hyper
/// dropped it on a protocol error) is still logged and counted, as Envoy does: code 0, `DC`.
impl Drop for Flow {
    fn drop(&mut self) {
        if !self.done {
            self.complete(BodyEnd { bytes: 0, outcome: EndOutcome::Dropped, grpc_status: None });
        }
    }
}

/// Response flags as a shared string; the common cases are not allocated.
fn flag_string(flags: ResponseFlags) -> Arc<str> {
    static NONE: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    if flags.is_empty() {
        return NONE.get_or_init(|| Arc::from("-")).clone();
    }
    Arc::from(flags.to_string())
}

/// A UUIDv4 request id from the thread-local generator (no syscall per request).
fn request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The last address of `x-forwarded-for` (the hop the previous proxy saw).
fn last_forwarded_for(headers: &http::HeaderMap) -> Option<IpAddr> {
    let value = headers.get_all("x-forwarded-for").iter().next_back()?.to_str().ok()?;
    value.rsplit(',').next()?.trim().parse().ok()
}

fn header_string(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// The request body as the attempts see it.
enum RequestBody {
    Empty,
    /// Not buffered (no retry policy, no mirror): only one attempt can send it.
    Stream(Option<DownstreamBody>),
    Replay(ReplayBody),
}

/// Why an attempt produced no response.
#[derive(Debug)]
enum AttemptError {
    Pool(PoolError),
    Reset {
        request_sent: bool,
        remote: bool,
    },
    RefusedStream,
    PerTryTimeout,
    Timeout,
    /// Nothing happened on the stream for `stream_idle_timeout`.
    StreamIdle,
    /// The downstream's request body was malformed or cut off.
    DownstreamBody,
    BodyUnavailable,
}

/// The timers of one attempt: the route timeout (from the request's start), the
/// per-try timeout (from the attempt's start), and idle limits (per-try idle, the
/// listener's stream idle timeout) that restart with every response frame.
struct AttemptTimers {
    deadline: Option<(tokio::time::Instant, AttemptError)>,
    /// The shortest idle limit and what its expiry means.
    idle: Option<(std::time::Duration, AttemptError)>,
}

impl AttemptTimers {
    fn new(route_deadline: Option<tokio::time::Instant>, retry: Option<&RetryPolicy>, stream_idle: Option<std::time::Duration>) -> Self {
        let per_try = retry.and_then(|r| r.per_try_timeout).map(|t| tokio::time::Instant::now() + t);
        let deadline = match (route_deadline, per_try) {
            (Some(r), Some(p)) if p < r => Some((p, AttemptError::PerTryTimeout)),
            (Some(r), _) => Some((r, AttemptError::Timeout)),
            (None, Some(p)) => Some((p, AttemptError::PerTryTimeout)),
            (None, None) => None,
        };
        let per_try_idle = retry.and_then(|r| r.per_try_idle_timeout);
        let idle = match (per_try_idle, stream_idle) {
            (Some(p), Some(s)) if s < p => Some((s, AttemptError::StreamIdle)),
            (Some(p), _) => Some((p, AttemptError::PerTryTimeout)),
            (None, Some(s)) => Some((s, AttemptError::StreamIdle)),
            (None, None) => None,
        };
        AttemptTimers { deadline, idle }
    }

    /// When waiting for response headers must stop, and why.
    fn headers_deadline(&self) -> Option<(tokio::time::Instant, &AttemptError)> {
        let idle = self.idle.as_ref().map(|(d, why)| (tokio::time::Instant::now() + *d, why));
        match (self.deadline.as_ref().map(|(d, why)| (*d, why)), idle) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

impl AttemptError {
    fn same_kind(&self) -> AttemptError {
        match self {
            AttemptError::PerTryTimeout => AttemptError::PerTryTimeout,
            AttemptError::StreamIdle => AttemptError::StreamIdle,
            _ => AttemptError::Timeout,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    mut flow: Flow,
    snapshot: &Arc<Snapshot>,
    hcm: &HttpConnectionManager,
    mut levels: Levels<'_>,
    fwd: &ForwardAction,
    mut parts: Parts,
    path: String,
    body: DownstreamBody,
) -> Response<RespBody> {
    let cx = flow.cx.clone();
    // The cluster.
    let cluster_name: Arc<str> = match &fwd.cluster {
        ClusterSpecifier::Cluster(name) => name.clone(),
        ClusterSpecifier::Header(h) => match parts.headers.get(h.as_str()).and_then(|v| v.to_str().ok()) {
            Some(name) => Arc::from(name),
            None => return flow.local(cluster_not_found(fwd), ResponseFlags::NO_CLUSTER_FOUND),
        },
        ClusterSpecifier::Weighted(w) => match w.pick(rand::random_range(0..u64::MAX)) {
            Some(c) => {
                levels.weighted = Some(c);
                c.name.clone()
            }
            None => return flow.local(cluster_not_found(fwd), ResponseFlags::NO_CLUSTER_FOUND),
        },
    };
    flow.rec.upstream_cluster = Some(cluster_name.clone());
    let Some(cluster) = snapshot.clusters.get(&cluster_name).cloned() else {
        return flow.local(cluster_not_found(fwd), ResponseFlags::NO_CLUSTER_FOUND);
    };
    flow.destination = cluster.destination_labels();

    // Upgrades (WebSocket) and CONNECT must be allowed by the listener or the route.
    let upgrade = if parts.method == Method::CONNECT { Some("connect".to_owned()) } else { upgrade_type(&parts.headers) };
    if let Some(kind) = &upgrade {
        // A route's setting for this upgrade type wins over the listener's (Envoy).
        let allowed = match fwd.upgrades.iter().find(|(t, _)| t == kind) {
            Some((_, enabled)) => *enabled,
            None => hcm.upgrades.iter().any(|u| u == kind),
        };
        if !allowed {
            return flow.local(LocalReply::UPGRADE_FAILED, ResponseFlags::NONE);
        }
    }

    // Request headers: hop-by-hop out, configured mutations in, rewrites.
    strip_hop_by_hop(&mut parts.headers, upgrade.as_deref().is_some_and(|u| u != "connect"));
    levels.apply_request(&mut parts.headers);
    let route = levels.route;
    let upstream_path = match fwd.rewrite_path(&path, &route.matcher) {
        Some(p) => {
            if let Ok(v) = HeaderValue::from_str(&path) {
                parts.headers.insert("x-envoy-original-path", v);
            }
            p
        }
        None => path,
    };
    let mut authority = flow.rec.authority.clone();
    if let Some(h) = levels.weighted.and_then(|w| w.host_rewrite.as_ref()).or(fwd.host_rewrite.as_ref()) {
        authority = h.clone();
    }
    if !parts.headers.contains_key("x-forwarded-proto") {
        parts.headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if hcm.use_remote_address {
        let xff = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", cx.remote.ip()),
            None => cx.remote.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert("x-forwarded-for", v);
        }
    }

    // Fault injection (the listener must have the fault filter).
    if hcm.has_fault_filter {
        let config = route.fault.as_ref().or(levels.vhost.fault.as_ref()).or(hcm.fault.as_ref());
        if let Some(config) = config {
            let decision = config.decide(&parts.headers, &cluster_name);
            if decision.delay.is_some() || decision.abort.is_some() {
                let faults = &cx.worker.shared.active_faults;
                let active = faults.fetch_add(1, Ordering::AcqRel);
                let allowed = config.max_active_faults.is_none_or(|max| active < max);
                if allowed {
                    if let Some(delay) = decision.delay {
                        flow.rec.response_flags.set(ResponseFlags::DELAY_INJECTED);
                        // Boxed (as the back-offs below): rare, and a timer is large in the request future.
                        Box::pin(tokio::time::sleep(delay)).await;
                    }
                }
                faults.fetch_sub(1, Ordering::AcqRel);
                if allowed {
                    match decision.abort {
                        Some(Abort::Http(code)) => {
                            let mut reply = LocalReply::FAULT_ABORT;
                            reply.status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                            return flow.local(reply, ResponseFlags::FAULT_INJECTED);
                        }
                        Some(Abort::Grpc(code)) => {
                            flow.rec.response_flags.set(ResponseFlags::FAULT_INJECTED);
                            flow.rec.response_code_details = "fault_filter_abort".into();
                            return flow.finish_local(local_reply::grpc_trailers_only(code, "fault filter abort"));
                        }
                        None => {}
                    }
                }
            }
        }
    }

    let retry = fwd.retry_policy.as_ref().or(levels.vhost.retry_policy.as_ref());
    let timeout = fwd.effective_timeout(&parts.headers);
    let deadline = timeout.map(|t| tokio::time::Instant::from_std(flow.start) + t);

    // The request body: buffered for replay only when a retry or mirror may need it.
    let mut request_body = if body.is_end_stream() {
        RequestBody::Empty
    } else if retry.is_some() || !fwd.mirrors.is_empty() {
        RequestBody::Replay(ReplayBody::new(body, cluster.config.buffer_limit as usize, flow.request_bytes.clone()))
    } else {
        RequestBody::Stream(Some(body))
    };

    // Mirrors: fire and forget, with the whole body once it has been read.
    for mirror in &fwd.mirrors {
        if mirror.fraction.sample() {
            let body = match &request_body {
                RequestBody::Empty => MirrorBody::Empty,
                RequestBody::Replay(r) => MirrorBody::Pending(Box::pin(r.completed())),
                RequestBody::Stream(_) => continue,
            };
            spawn_mirror(cx.worker.clone(), snapshot.clone(), mirror, &parts, &authority, &upstream_path, body, cx.leg_source());
        }
    }

    let Some(request_slot) = cluster.try_start_request() else {
        cluster.stats.rq_overflow.fetch_add(1, Ordering::Relaxed);
        return flow.local(LocalReply::MAX_REQUESTS, ResponseFlags::UPSTREAM_OVERFLOW);
    };
    let mut resources = Resources { _request_slot: Some(request_slot), ..Default::default() };
    let hash = match cluster.config.lb {
        LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. } => {
            request_hash(&fwd.hash_policy, &parts, &authority, &upstream_path, cx.remote, &mut resources.set_cookie)
        }
        _ => None,
    };
    let protocol = match cluster.config.protocol {
        _ if upgrade.is_some() => Protocol::Http1,
        UpstreamProtocol::Http1 => Protocol::Http1,
        UpstreamProtocol::Http2 => Protocol::Http2,
        UpstreamProtocol::Downstream if parts.version == Version::HTTP_2 => Protocol::Http2,
        UpstreamProtocol::Downstream => Protocol::Http1,
    };
    let downstream_upgrade = upgrade.as_ref().and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());

    let mut attempt: u32 = 1;
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        // Pick a host.
        let host = match cluster.config.discovery {
            // Not redirected: there is no original destination to go to (Envoy: 503 UH).
            Discovery::OriginalDst => cx.original_dst.map(Host::transient),
            _ => {
                let avoid_previous = retry.is_some_and(|r| r.avoid_previous_hosts) && attempt > 1;
                let attempts = retry.map_or(1, |r| r.host_selection_max_attempts);
                cluster.view().pick(hash, &|h: &Host| avoid_previous && tried.contains(&h.address), attempts)
            }
        };
        let Some(host) = host else {
            return flow.local(LocalReply::NO_HEALTHY_UPSTREAM, ResponseFlags::NO_HEALTHY_UPSTREAM);
        };
        tried.push(host.address);
        flow.rec.upstream_host = Some(host.address);
        if host.workload.is_some() {
            flow.destination = host.destination_labels(&cluster.config);
        }
        // Istio's mTLS to a meshed endpoint is HBONE (the pool plans the leg); other
        // upstream TLS is not originated yet.
        if host.tls_required && cx.inbound.is_none() && !matches!(cx.worker.pools.leg(cx.leg_source(), host.address), Ok(crate::mesh::Leg::Hbone { .. })) {
            flow.rec.upstream_transport_failure_reason = Some("upstream TLS is not supported by node-proxy yet".to_owned());
            return flow.local(LocalReply::TLS_UNSUPPORTED, ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        }

        let body = match &mut request_body {
            RequestBody::Empty => Some(ReqBody::Empty),
            RequestBody::Stream(b) => b.take().map(|b| ReqBody::Stream(b, flow.request_bytes.clone())),
            RequestBody::Replay(r) => {
                if attempt == 1 {
                    Some(ReqBody::Replay(r.first()))
                } else {
                    r.replay().map(ReqBody::Replay)
                }
            }
        };
        let Some(body) = body else {
            return flow.local(LocalReply::RESET, ResponseFlags::UPSTREAM_REMOTE_RESET);
        };
        let include_attempt = levels.vhost.include_request_attempt_count;
        let upstream_req = match build_request(&parts, &authority, &upstream_path, protocol, attempt, include_attempt, body) {
            Ok(r) => r,
            Err(_) => return flow.local(LocalReply::BAD_REQUEST, ResponseFlags::NONE),
        };
        let active = ActiveRequest::new(&host);
        let timers = AttemptTimers::new(deadline, retry, hcm.stream_idle_timeout);
        let sent_at = Instant::now();
        let result = send_attempt(&cx.worker, &cluster, &host, protocol, upstream_req, &timers, cx.leg_source()).await;
        match result {
            Ok((resp, connection)) => {
                let status = resp.status();
                cluster.record_outcome(&host, Outcome::Response(status.as_u16()));
                if let Some(policy) = retry {
                    if policy.retriable_response(status, resp.headers(), &parts.headers) && policy.request_is_retriable(&parts.headers) {
                        match try_retry(&cluster, policy, attempt, &request_body, deadline, &mut resources) {
                            RetryDecision::Retry(backoff) => {
                                drop(resp);
                                drop(connection);
                                drop(active);
                                Box::pin(tokio::time::sleep(backoff)).await;
                                attempt += 1;
                                continue;
                            }
                            RetryDecision::LimitExceeded => flow.rec.response_flags.set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED),
                            RetryDecision::No => {}
                        }
                    }
                }
                if attempt > 1 && !flow.rec.response_flags.contains(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED) {
                    cluster.stats.rq_retry_success.fetch_add(1, Ordering::Relaxed);
                }
                flow.rec.upstream_service_time = Some(sent_at.elapsed());
                resources._active = Some(active);
                resources._connection = connection;
                let include_attempt_in_response = levels.vhost.include_attempt_count_in_response;
                return respond(flow, levels, resp, resources, &timers, attempt, include_attempt_in_response, downstream_upgrade, upgrade.is_some());
            }
            Err(e) => {
                drop(active);
                let (failure, reply, flag, outcome) = match &e {
                    AttemptError::Pool(PoolError::Overflow) => return flow.local(LocalReply::OVERFLOW, ResponseFlags::UPSTREAM_OVERFLOW),
                    AttemptError::Timeout => {
                        cluster.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
                        cluster.record_outcome(&host, Outcome::Timeout);
                        return flow.local(LocalReply::TIMEOUT, ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                    }
                    AttemptError::BodyUnavailable => return flow.local(LocalReply::RESET, ResponseFlags::UPSTREAM_REMOTE_RESET),
                    AttemptError::StreamIdle => return flow.local(LocalReply::STREAM_IDLE_TIMEOUT, ResponseFlags::STREAM_IDLE_TIMEOUT),
                    AttemptError::DownstreamBody => return flow.local(LocalReply::DOWNSTREAM_PROTOCOL_ERROR, ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR),
                    AttemptError::Pool(PoolError::ConnectTimeout(_)) => {
                        (AttemptFailure::ConnectFailure, LocalReply::CONNECT_TIMEOUT, ResponseFlags::UPSTREAM_CONNECTION_FAILURE, Outcome::ConnectFailed)
                    }
                    AttemptError::Pool(e) => {
                        flow.rec.upstream_transport_failure_reason = Some(e.to_string());
                        (AttemptFailure::ConnectFailure, LocalReply::CONNECT_FAILURE, ResponseFlags::UPSTREAM_CONNECTION_FAILURE, Outcome::ConnectFailed)
                    }
                    AttemptError::RefusedStream => {
                        (AttemptFailure::RefusedStream, LocalReply::REFUSED_STREAM, ResponseFlags::UPSTREAM_REMOTE_RESET, Outcome::Reset)
                    }
                    AttemptError::Reset { request_sent, remote } => (
                        AttemptFailure::Reset { request_sent: *request_sent },
                        if *remote { LocalReply::REMOTE_RESET } else { LocalReply::RESET },
                        if *remote { ResponseFlags::UPSTREAM_REMOTE_RESET } else { ResponseFlags::UPSTREAM_CONNECTION_TERMINATION },
                        Outcome::Reset,
                    ),
                    AttemptError::PerTryTimeout => {
                        cluster.stats.rq_per_try_timeout.fetch_add(1, Ordering::Relaxed);
                        (AttemptFailure::PerTryTimeout, LocalReply::PER_TRY_TIMEOUT, ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, Outcome::Timeout)
                    }
                };
                tracing::debug!(cluster = %cluster.name, host = %host.address, attempt, "upstream attempt failed: {e:?}");
                cluster.record_outcome(&host, outcome);
                if let Some(policy) = retry {
                    if policy.retriable_failure(failure) && policy.request_is_retriable(&parts.headers) {
                        match try_retry(&cluster, policy, attempt, &request_body, deadline, &mut resources) {
                            RetryDecision::Retry(backoff) => {
                                Box::pin(tokio::time::sleep(backoff)).await;
                                attempt += 1;
                                continue;
                            }
                            RetryDecision::LimitExceeded => flow.rec.response_flags.set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED),
                            RetryDecision::No => {}
                        }
                    }
                }
                return flow.local(reply, flag);
            }
        }
    }
}

fn cluster_not_found(fwd: &ForwardAction) -> LocalReply {
    let mut reply = LocalReply::CLUSTER_NOT_FOUND;
    reply.status = StatusCode::from_u16(fwd.cluster_not_found_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    reply
}

enum RetryDecision {
    Retry(std::time::Duration),
    LimitExceeded,
    No,
}

/// Whether attempt `attempt` (1-based) may be followed by another, and after what back-off.
fn try_retry(
    cluster: &Arc<ClusterState>,
    policy: &RetryPolicy,
    attempt: u32,
    body: &RequestBody,
    deadline: Option<tokio::time::Instant>,
    resources: &mut Resources,
) -> RetryDecision {
    if attempt > policy.num_retries {
        cluster.stats.rq_retry_limit_exceeded.fetch_add(1, Ordering::Relaxed);
        return RetryDecision::LimitExceeded;
    }
    let replayable = match body {
        RequestBody::Empty => true,
        RequestBody::Stream(_) => false,
        RequestBody::Replay(r) => r.is_replayable(),
    };
    if !replayable {
        return RetryDecision::No;
    }
    let backoff = policy.backoff(attempt);
    if deadline.is_some_and(|d| tokio::time::Instant::now() + backoff >= d) {
        return RetryDecision::No;
    }
    // One retry slot for the whole retry sequence of this request.
    if resources._retry_slot.is_none() {
        match cluster.try_start_retry() {
            Some(slot) => resources._retry_slot = Some(slot),
            None => {
                cluster.stats.rq_retry_overflow.fetch_add(1, Ordering::Relaxed);
                return RetryDecision::No;
            }
        }
    }
    cluster.stats.rq_retry.fetch_add(1, Ordering::Relaxed);
    RetryDecision::Retry(backoff)
}

fn build_request(
    parts: &Parts,
    authority: &str,
    path: &str,
    protocol: Protocol,
    attempt: u32,
    include_attempt: bool,
    body: ReqBody,
) -> Result<Request<ReqBody>, http::Error> {
    let connect = parts.method == Method::CONNECT;
    let uri = match protocol {
        _ if connect => Uri::builder().authority(authority).build()?,
        Protocol::Http1 => Uri::try_from(if path.is_empty() { "/" } else { path })?,
        Protocol::Http2 => Uri::builder().scheme("http").authority(authority).path_and_query(if path.is_empty() { "/" } else { path }).build()?,
    };
    let mut req = Request::builder().method(parts.method.clone()).uri(uri).version(match protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
    });
    if let Some(h) = req.headers_mut() {
        *h = parts.headers.clone();
        match protocol {
            Protocol::Http1 => {
                if let Ok(v) = HeaderValue::from_str(authority) {
                    h.insert(HOST, v);
                }
            }
            Protocol::Http2 => {
                h.remove(HOST);
            }
        }
        if include_attempt {
            h.insert("x-envoy-attempt-count", HeaderValue::from(attempt));
        }
    }
    req.body(body)
}

async fn send_attempt(
    worker: &Rc<Worker>,
    cluster: &Arc<ClusterState>,
    host: &Arc<Host>,
    protocol: Protocol,
    req: Request<ReqBody>,
    timers: &AttemptTimers,
    source: Option<IpAddr>,
) -> Result<(Response<Incoming>, Option<PooledH1>), AttemptError> {
    let exchange = async {
        let checkout = worker.pools.checkout(cluster, host.address, protocol, source).await.map_err(AttemptError::Pool)?;
        match checkout {
            Checkout::Http1(mut pooled) => {
                let Some(sender) = pooled.sender() else { return Err(AttemptError::Reset { request_sent: false, remote: false }) };
                match sender.send_request(req).await {
                    Ok(resp) => Ok((resp, Some(pooled))),
                    Err(e) => {
                        pooled.broken = true;
                        Err(classify(&e))
                    }
                }
            }
            Checkout::Http2(mut sender) => match sender.send_request(req).await {
                Ok(resp) => Ok((resp, None)),
                Err(e) => Err(classify(&e)),
            },
        }
    };
    match timers.headers_deadline() {
        None => exchange.await,
        Some((d, why)) => match tokio::time::timeout_at(d, exchange).await {
            Ok(r) => r,
            Err(_) => Err(why.same_kind()),
        },
    }
}

/// Maps hyper's error to what retry policies and response flags distinguish.
fn classify(e: &hyper::Error) -> AttemptError {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2_reason::H2Error>() {
            if h2.reason() == Some(h2_reason::Reason::REFUSED_STREAM) {
                return AttemptError::RefusedStream;
            }
            return AttemptError::Reset { request_sent: true, remote: h2.is_remote() };
        }
        match s.downcast_ref::<super::body::ReplayError>() {
            Some(super::body::ReplayError::Superseded) => return AttemptError::BodyUnavailable,
            Some(super::body::ReplayError::Source(_)) => return AttemptError::DownstreamBody,
            None => {}
        }
        if s.downcast_ref::<super::body::DownstreamBodyError>().is_some() {
            return AttemptError::DownstreamBody;
        }
        source = s.source();
    }
    // HTTP/1: the upstream closed the connection (`UC`); `canceled`: the request never
    // reached the connection.
    AttemptError::Reset { request_sent: !e.is_canceled(), remote: false }
}

/// hyper's HTTP/2 errors come from the `h2` crate.
mod h2_reason {
    pub use h2::{Error as H2Error, Reason};
}

#[allow(clippy::too_many_arguments)]
fn respond(
    mut flow: Flow,
    levels: Levels<'_>,
    resp: Response<Incoming>,
    mut resources: Resources,
    timers: &AttemptTimers,
    attempt: u32,
    include_attempt: bool,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    upgrading: bool,
) -> Response<RespBody> {
    let (mut parts, body) = resp.into_parts();
    let upgraded = upgrading && (parts.status == StatusCode::SWITCHING_PROTOCOLS || (flow.rec.method == "CONNECT" && parts.status.is_success()));
    let upstream_upgrade = if upgraded { parts.extensions.remove::<hyper::upgrade::OnUpgrade>() } else { None };
    strip_hop_by_hop(&mut parts.headers, upgraded && parts.status == StatusCode::SWITCHING_PROTOCOLS);
    levels.apply_response(&mut parts.headers);
    if let Some(t) = flow.rec.upstream_service_time {
        parts.headers.insert("x-envoy-upstream-service-time", HeaderValue::from(t.as_millis() as u64));
    }
    if include_attempt {
        parts.headers.insert("x-envoy-attempt-count", HeaderValue::from(attempt));
    }
    if let Some(cookie) = resources.set_cookie.take() {
        parts.headers.append(http::header::SET_COOKIE, cookie);
    }
    if let (Some(down), Some(up)) = (downstream_upgrade, upstream_upgrade) {
        // A tunnel: the route timeout no longer applies once it is established.
        tokio::task::spawn_local(tunnel(down, up));
        let resp = Response::from_parts(parts, RespBody::empty());
        return flow.attach(resp, resources, None);
    }
    let body = RespBody::upstream(body).with_idle_timeout(timers.idle.as_ref().map(|(d, _)| *d));
    let resp = Response::from_parts(parts, body);
    flow.rec.response_code_details = "via_upstream".into();
    flow.attach(resp, resources, timers.deadline.as_ref().map(|(d, _)| *d))
}

async fn tunnel(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    let mut down = hyper_util::rt::TokioIo::new(down);
    let mut up = hyper_util::rt::TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!("tunnel closed: {e}");
    }
}

/// Envoy's hash policy evaluation: each policy that yields a value is folded in
/// (`rotl(hash, 1) ^ value`); a terminal policy that yields stops the walk.
fn request_hash(policies: &[HashPolicy], parts: &Parts, authority: &str, path: &str, remote: SocketAddr, set_cookie: &mut Option<HeaderValue>) -> Option<u64> {
    let head = RequestHead { method: &parts.method, authority, path, scheme: "http", headers: &parts.headers };
    let mut hash: Option<u64> = None;
    for p in policies {
        let value: Option<u64> = match &p.source {
            HashSource::Header { name, rewrite } => head.header(name).map(|v| match rewrite {
                Some(rw) => xxhash_rust::xxh64::xxh64(rw.apply(&v).as_bytes(), 0),
                None => xxhash_rust::xxh64::xxh64(v.as_bytes(), 0),
            }),
            HashSource::Cookie { name, ttl, path: cookie_path } => match cookie(&parts.headers, name) {
                Some(v) => Some(xxhash_rust::xxh64::xxh64(v.as_bytes(), 0)),
                None => ttl.map(|ttl| {
                    // Envoy generates the cookie from the downstream address and tells the client.
                    let value = format!("{:016x}", xxhash_rust::xxh64::xxh64(remote.to_string().as_bytes(), rand::random()));
                    let mut c = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
                    if !cookie_path.is_empty() {
                        c.push_str(&format!("; Path={cookie_path}"));
                    }
                    c.push_str("; HttpOnly");
                    *set_cookie = HeaderValue::from_str(&c).ok();
                    xxhash_rust::xxh64::xxh64(value.as_bytes(), 0)
                }),
            },
            HashSource::SourceIp => Some(xxhash_rust::xxh64::xxh64(remote.ip().to_string().as_bytes(), 0)),
            HashSource::QueryParameter(name) => head.query_param(name).map(|v| xxhash_rust::xxh64::xxh64(v.as_bytes(), 0)),
        };
        if let Some(v) = value {
            hash = Some(hash.map_or(v, |h| h.rotate_left(1) ^ v));
            if p.terminal {
                break;
            }
        }
    }
    hash
}

fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then(|| v.trim_matches('"'))
    })
}

/// The whole request body once read (`None`: over the buffer limit).
type CompletedBody = std::pin::Pin<Box<dyn std::future::Future<Output = Option<(Bytes, Option<http::HeaderMap>)>>>>;

enum MirrorBody {
    Empty,
    Pending(CompletedBody),
}

/// Sends a copy of the request to the mirror cluster; its response is discarded.
#[allow(clippy::too_many_arguments)]
fn spawn_mirror(
    worker: Rc<Worker>,
    snapshot: Arc<Snapshot>,
    policy: &MirrorPolicy,
    parts: &Parts,
    authority: &str,
    path: &str,
    body: MirrorBody,
    source: Option<IpAddr>,
) {
    let shadow_authority = if policy.disable_shadow_host_suffix { authority.to_owned() } else { shadow_host(authority) };
    let cluster_name = policy.cluster.clone();
    let mut headers = parts.headers.clone();
    headers.remove("x-envoy-attempt-count");
    let method = parts.method.clone();
    let path = path.to_owned();
    tokio::task::spawn_local(async move {
        let Some(cluster) = snapshot.clusters.get(&cluster_name).cloned() else {
            tracing::debug!(cluster = %cluster_name, "mirror cluster not found");
            return;
        };
        let body = match body {
            MirrorBody::Empty => ReqBody::Empty,
            MirrorBody::Pending(f) => match f.await {
                Some((data, _)) => ReqBody::Full(Some(data)),
                // Larger than the buffer limit (or failed): not mirrored, as in Envoy.
                None => return,
            },
        };
        let Some(host) = cluster.view().pick(None, &|_| false, 1) else { return };
        let Some(_slot) = cluster.try_start_request() else { return };
        let protocol = match cluster.config.protocol {
            UpstreamProtocol::Http2 => Protocol::Http2,
            _ => Protocol::Http1,
        };
        let mut req = match Request::builder().method(method).uri(path.as_str()).body(body) {
            Ok(r) => r,
            Err(_) => return,
        };
        *req.headers_mut() = headers;
        let Ok(req) = build_request_from(req, &shadow_authority, protocol) else { return };
        let _active = ActiveRequest::new(&host);
        let timeout = std::time::Duration::from_secs(30);
        let timers = AttemptTimers { deadline: Some((tokio::time::Instant::now() + timeout, AttemptError::Timeout)), idle: None };
        match send_attempt(&worker, &cluster, &host, protocol, req, &timers, source).await {
            Ok((resp, _conn)) => {
                use http_body_util::BodyExt;
                let _ = resp.into_body().collect().await;
            }
            Err(e) => tracing::debug!(cluster = %cluster_name, "mirror request failed: {e:?}"),
        }
    });
}

fn build_request_from(req: Request<ReqBody>, authority: &str, protocol: Protocol) -> Result<Request<ReqBody>, http::Error> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    build_request(&parts, authority, &path, protocol, 1, false, body)
}

/// `host:port` -> `host-shadow:port`, as Envoy names mirrored requests.
fn shadow_host(authority: &str) -> String {
    let host = istio_compat::model::route::strip_port(authority);
    format!("{host}-shadow{}", &authority[host.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_host_keeps_the_port() {
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
    }

    #[test]
    fn cookies_are_found() {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, "a=1; session=\"xyz\"".parse().unwrap());
        assert_eq!(cookie(&h, "session"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn hash_policies_fold_and_stop_at_terminal() {
        let req = Request::builder().uri("/p?user=7").header("x-user", "alice").body(()).unwrap();
        let (parts, _) = req.into_parts();
        let remote: SocketAddr = "198.18.0.9:5000".parse().unwrap();
        let header = HashPolicy { source: HashSource::Header { name: "x-user".into(), rewrite: None }, terminal: true };
        let query = HashPolicy { source: HashSource::QueryParameter("user".into()), terminal: false };
        let mut cookie = None;
        let a = request_hash(&[header.clone(), query.clone()], &parts, "h", "/p?user=7", remote, &mut cookie);
        let b = request_hash(std::slice::from_ref(&header), &parts, "h", "/p?user=7", remote, &mut cookie);
        assert_eq!(a, b, "terminal header policy stops the walk");
        let c = request_hash(&[query], &parts, "h", "/p?user=7", remote, &mut cookie);
        assert_ne!(a, c);
        let missing = HashPolicy { source: HashSource::Header { name: "x-none".into(), rewrite: None }, terminal: false };
        assert_eq!(request_hash(&[missing], &parts, "h", "/p", remote, &mut cookie), None);
    }
}
