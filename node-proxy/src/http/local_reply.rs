//! Responses the proxy makes itself, as Envoy makes them: the status and body text
//! Envoy uses, and for gRPC requests a trailers-only response whose `grpc-status` is
//! mapped from the HTTP status (Envoy's `Grpc::Utility::httpToGrpcStatus`).

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use protocols::grpc;

use super::body::RespBody;

/// A local reply: status, Envoy's body text and response code details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: StatusCode,
    pub body: &'static str,
    /// `%RESPONSE_CODE_DETAILS%`.
    pub details: &'static str,
    /// For gRPC requests: this code instead of the one mapped from `status`.
    pub grpc_status: Option<u32>,
}

impl LocalReply {
    pub const fn new(status: StatusCode, body: &'static str, details: &'static str) -> Self {
        LocalReply { status, body, details, grpc_status: None }
    }

    pub const NO_ROUTE: LocalReply = LocalReply::new(StatusCode::NOT_FOUND, "", "route_not_found");
    pub const NO_ROUTE_CONFIG: LocalReply = LocalReply::new(StatusCode::NOT_FOUND, "", "route_configuration_not_found");
    pub const NO_HEALTHY_UPSTREAM: LocalReply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream", "no_healthy_upstream");
    pub const CONNECT_FAILURE: LocalReply = LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
        "upstream_reset_before_response_started{connection_failure}",
    );
    pub const CONNECT_TIMEOUT: LocalReply = LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: connection timeout",
        "upstream_reset_before_response_started{connection_timeout}",
    );
    pub const RESET: LocalReply = LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        "upstream_reset_before_response_started{connection_termination}",
    );
    pub const REMOTE_RESET: LocalReply = LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: remote reset",
        "upstream_reset_before_response_started{remote_reset}",
    );
    pub const REFUSED_STREAM: LocalReply = LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset",
        "upstream_reset_before_response_started{remote_refused_stream_reset}",
    );
    pub const OVERFLOW: LocalReply = LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        "upstream_reset_before_response_started{overflow}",
    );
    pub const MAX_REQUESTS: LocalReply =
        LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers. reset reason: overflow", "overflow");
    /// gRPC requests get DEADLINE_EXCEEDED (Envoy since envoy#44479), not UNAVAILABLE.
    pub const TIMEOUT: LocalReply =
        LocalReply { status: StatusCode::GATEWAY_TIMEOUT, body: "upstream request timeout", details: "response_timeout", grpc_status: Some(4) };
    pub const PER_TRY_TIMEOUT: LocalReply =
        LocalReply { status: StatusCode::GATEWAY_TIMEOUT, body: "upstream request timeout", details: "upstream_per_try_timeout", grpc_status: Some(4) };
    pub const DOWNSTREAM_PROTOCOL_ERROR: LocalReply = LocalReply::new(StatusCode::BAD_REQUEST, "", "http1.codec_error");
    pub const STREAM_IDLE_TIMEOUT: LocalReply = LocalReply::new(StatusCode::REQUEST_TIMEOUT, "stream timeout", "stream_idle_timeout");
    pub const CLUSTER_NOT_FOUND: LocalReply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "", "cluster_not_found");
    pub const FAULT_ABORT: LocalReply = LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, "fault filter abort", "fault_filter_abort");
    pub const UPGRADE_FAILED: LocalReply = LocalReply::new(StatusCode::FORBIDDEN, "", "upgrade_failed");
    pub const TLS_UNSUPPORTED: LocalReply = LocalReply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: upstream TLS is not supported by node-proxy yet",
        "upstream_reset_before_response_started{connection_failure,TLS_not_supported}",
    );
    /// The RBAC filter's denial (gRPC: PERMISSION_DENIED).
    pub const RBAC_DENIED: LocalReply =
        LocalReply { status: StatusCode::FORBIDDEN, body: "RBAC: access denied", details: "rbac_access_denied", grpc_status: Some(7) };
    pub const CHAIN_REFUSED: LocalReply = LocalReply::new(StatusCode::FORBIDDEN, "", "filter_chain_refused");
    pub const BAD_REQUEST: LocalReply = LocalReply::new(StatusCode::BAD_REQUEST, "", "http1.codec_error");

    /// The response, in gRPC form when the request was gRPC.
    pub fn response(&self, grpc_request: bool) -> Response<RespBody> {
        if grpc_request {
            let code = self.grpc_status.unwrap_or_else(|| grpc::code_from_http_status(self.status.as_u16()).as_i32() as u32);
            return grpc_trailers_only(code, if self.body.is_empty() { self.details } else { self.body });
        }
        let mut resp = Response::new(RespBody::full(Bytes::from_static(self.body.as_bytes())));
        *resp.status_mut() = self.status;
        if !self.body.is_empty() {
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        resp
    }
}

/// A trailers-only gRPC response: HTTP 200 with `grpc-status` in the headers and no body.
pub fn grpc_trailers_only(code: u32, message: &str) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::empty());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&grpc::percent_encode_message(message)) {
            h.insert("grpc-message", v);
        }
    }
    resp
}

/// An HTTP status reply with an arbitrary body (direct_response, fault aborts).
pub fn with_body(status: StatusCode, body: Option<&str>) -> Response<RespBody> {
    let body = body.unwrap_or("");
    let mut resp = Response::new(RespBody::full(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_form_maps_the_status() {
        let r = LocalReply::NO_HEALTHY_UPSTREAM.response(true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no healthy upstream", "spaces are not percent-encoded");
        let r = LocalReply::NO_ROUTE.response(true);
        assert_eq!(r.headers()["grpc-status"], "12", "404 -> UNIMPLEMENTED");
    }

    #[test]
    fn http_form_has_envoy_text() {
        let r = LocalReply::TIMEOUT.response(false);
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(r.headers()[CONTENT_LENGTH], "24");
    }
}
