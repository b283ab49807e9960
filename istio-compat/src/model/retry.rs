//! Envoy's retry policy (`RouteAction.retry_policy`) and its decisions: which
//! responses and failures are retriable, and the back-off between attempts.
//!
//! Pure: the runtime asks [`RetryPolicy::retriable_response`] /
//! [`RetryPolicy::retriable_failure`] and sleeps [`RetryPolicy::backoff`]. Budgets and
//! the `max_retries` circuit breaker are cluster state and live in the runtime.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::common::{serde_duration, serde_opt_duration};
use super::route::HeaderMatcher;

/// Envoy's default `retry_back_off.base_interval`.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// The `retry_on` conditions, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn(u32);

macro_rules! retry_on_conditions {
    ($($name:ident = $bit:expr, $token:literal;)*) => {
        impl RetryOn {
            $(pub const $name: RetryOn = RetryOn(1 << $bit);)*
            const TOKENS: &'static [(&'static str, RetryOn)] = &[$(($token, RetryOn::$name)),*];
        }
    };
}

retry_on_conditions! {
    FIVE_XX = 0, "5xx";
    GATEWAY_ERROR = 1, "gateway-error";
    RESET = 2, "reset";
    RESET_BEFORE_REQUEST = 3, "reset-before-request";
    CONNECT_FAILURE = 4, "connect-failure";
    REFUSED_STREAM = 5, "refused-stream";
    RETRIABLE_4XX = 6, "retriable-4xx";
    RETRIABLE_STATUS_CODES = 7, "retriable-status-codes";
    RETRIABLE_HEADERS = 8, "retriable-headers";
    ENVOY_RATELIMITED = 9, "envoy-ratelimited";
    HTTP3_POST_CONNECT_FAILURE = 10, "http3-post-connect-failure";
    GRPC_CANCELLED = 16, "cancelled";
    GRPC_DEADLINE_EXCEEDED = 17, "deadline-exceeded";
    GRPC_INTERNAL = 18, "internal";
    GRPC_RESOURCE_EXHAUSTED = 19, "resource-exhausted";
    GRPC_UNAVAILABLE = 20, "unavailable";
}

impl RetryOn {
    pub const NONE: RetryOn = RetryOn(0);

    /// Parses Envoy's comma-separated `retry_on`; returns the conditions and the
    /// tokens it does not know.
    pub fn parse(s: &str) -> (RetryOn, Vec<String>) {
        let mut on = RetryOn::NONE;
        let mut unknown = Vec::new();
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match Self::TOKENS.iter().find(|(t, _)| *t == token) {
                Some((_, flag)) => on.0 |= flag.0,
                None => unknown.push(token.to_owned()),
            }
        }
        (on, unknown)
    }

    pub fn contains(self, other: RetryOn) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    pub fn any(self, other: RetryOn) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for RetryOn {
    type Output = RetryOn;
    fn bitor(self, rhs: RetryOn) -> RetryOn {
        RetryOn(self.0 | rhs.0)
    }
}

impl std::fmt::Display for RetryOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = Self::TOKENS.iter().filter(|(_, flag)| self.contains(*flag)).map(|(t, _)| *t).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for RetryOn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match RetryOn::parse(&s) {
            (on, unknown) if unknown.is_empty() => Ok(on),
            (_, unknown) => Err(serde::de::Error::custom(format!("unknown retry_on conditions: {}", unknown.join(",")))),
        }
    }
}

/// Why an attempt produced no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptFailure {
    /// The TCP/TLS connection to the endpoint could not be made (or timed out).
    ConnectFailure,
    /// The stream or connection was reset after the request started (`UR`/`UC`).
    Reset { request_sent: bool },
    /// HTTP/2 REFUSED_STREAM: the upstream did not process the request.
    RefusedStream,
    /// The per-try timeout fired before response headers.
    PerTryTimeout,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    /// Retries after the first attempt (Envoy's default: 1).
    pub num_retries: u32,
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub per_try_idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_headers: Vec<HeaderMatcher>,
    /// The request is retried only if it matches one of these (when any are set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_request_headers: Vec<HeaderMatcher>,
    #[serde(with = "serde_duration")]
    pub backoff_base: Duration,
    #[serde(with = "serde_duration")]
    pub backoff_max: Duration,
    /// `envoy.retry_host_predicates.previous_hosts`: avoid hosts already tried.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub avoid_previous_hosts: bool,
    /// How many times host selection is retried to satisfy the predicate.
    pub host_selection_max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: RetryOn::NONE,
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_BASE * 10,
            avoid_previous_hosts: false,
            host_selection_max_attempts: 1,
        }
    }
}

impl RetryPolicy {
    /// Whether a response with these headers is retried (Envoy's
    /// `RetryStateImpl::wouldRetryFromHeaders`). gRPC conditions read `grpc-status`
    /// from the headers, i.e. trailers-only responses.
    pub fn retriable_response(&self, status: StatusCode, headers: &HeaderMap, request_headers: &HeaderMap) -> bool {
        let on = self.retry_on;
        // An overloaded upstream asked not to be retried.
        if status == StatusCode::SERVICE_UNAVAILABLE && headers.contains_key("x-envoy-overloaded") {
            return false;
        }
        let code = status.as_u16();
        if on.contains(RetryOn::FIVE_XX) && status.is_server_error() {
            return true;
        }
        if on.contains(RetryOn::GATEWAY_ERROR) && matches!(code, 502..=504) {
            return true;
        }
        if on.contains(RetryOn::RETRIABLE_4XX) && code == 409 {
            return true;
        }
        if on.contains(RetryOn::ENVOY_RATELIMITED) && headers.contains_key("x-envoy-ratelimited") {
            return true;
        }
        if on.contains(RetryOn::RETRIABLE_STATUS_CODES)
            && (self.retriable_status_codes.contains(&code) || request_status_codes(request_headers).any(|c| c == code))
        {
            return true;
        }
        if on.contains(RetryOn::RETRIABLE_HEADERS) && self.retriable_headers.iter().any(|m| m.matches_value(header_str(headers, &m.name))) {
            return true;
        }
        if let Some(grpc) = headers.get("grpc-status").and_then(|v| protocols::grpc::Code::from_header_value(v.as_bytes()).ok()) {
            use protocols::grpc::Code;
            let flag = match grpc {
                Code::Cancelled => RetryOn::GRPC_CANCELLED,
                Code::DeadlineExceeded => RetryOn::GRPC_DEADLINE_EXCEEDED,
                Code::Internal => RetryOn::GRPC_INTERNAL,
                Code::ResourceExhausted => RetryOn::GRPC_RESOURCE_EXHAUSTED,
                Code::Unavailable => RetryOn::GRPC_UNAVAILABLE,
                _ => RetryOn::NONE,
            };
            if on.contains(flag) {
                return true;
            }
        }
        false
    }

    /// Whether an attempt that produced no response is retried (Envoy's
    /// `wouldRetryFromReset`): `reset`, `5xx` and `gateway-error` take any failure,
    /// including a per-try timeout.
    pub fn retriable_failure(&self, failure: AttemptFailure) -> bool {
        let on = self.retry_on;
        if on.any(RetryOn::RESET | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR) {
            return true;
        }
        match failure {
            AttemptFailure::ConnectFailure => on.any(RetryOn::CONNECT_FAILURE | RetryOn::RESET_BEFORE_REQUEST),
            AttemptFailure::RefusedStream => on.contains(RetryOn::REFUSED_STREAM),
            AttemptFailure::Reset { request_sent } => !request_sent && on.contains(RetryOn::RESET_BEFORE_REQUEST),
            AttemptFailure::PerTryTimeout => false,
        }
    }

    /// Whether the request may be retried at all (`retriable_request_headers`).
    pub fn request_is_retriable(&self, request_headers: &HeaderMap) -> bool {
        self.retriable_request_headers.is_empty() || self.retriable_request_headers.iter().any(|m| m.matches_value(header_str(request_headers, &m.name)))
    }

    /// Envoy's jittered exponential back-off before retry number `retry` (1-based):
    /// uniform in `[0, min(base * (2^retry - 1), max))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let multiplier = (1u64 << retry.min(30)) - 1;
        let base = self.backoff_base.as_millis().max(1) as u64;
        let ceiling = base.saturating_mul(multiplier).min(self.backoff_max.as_millis().max(1) as u64);
        Duration::from_millis(rand::random_range(0..ceiling.max(1)))
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `x-envoy-retriable-status-codes` on the request adds codes to the policy's.
fn request_status_codes(headers: &HeaderMap) -> impl Iterator<Item = u16> + '_ {
    headers.get("x-envoy-retriable-status-codes").and_then(|v| v.to_str().ok()).into_iter().flat_map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    fn policy(retry_on: &str) -> RetryPolicy {
        let (on, unknown) = RetryOn::parse(retry_on);
        assert!(unknown.is_empty(), "{unknown:?}");
        RetryPolicy { retry_on: on, retriable_status_codes: vec![418], ..Default::default() }
    }

    #[test]
    fn parse_reports_unknown_tokens() {
        let (on, unknown) = RetryOn::parse("5xx, connect-failure,bogus,unavailable");
        assert!(on.contains(RetryOn::FIVE_XX) && on.contains(RetryOn::CONNECT_FAILURE) && on.contains(RetryOn::GRPC_UNAVAILABLE));
        assert_eq!(unknown, ["bogus"]);
        assert_eq!(on.to_string(), "5xx,connect-failure,unavailable");
    }

    #[test_case("5xx", 500, &[], true)]
    #[test_case("5xx", 503, &[("x-envoy-overloaded", "true")], false)]
    #[test_case("5xx", 404, &[], false)]
    #[test_case("gateway-error", 502, &[], true)]
    #[test_case("gateway-error", 500, &[], false)]
    #[test_case("retriable-4xx", 409, &[], true)]
    #[test_case("retriable-status-codes", 418, &[], true)]
    #[test_case("retriable-status-codes", 419, &[], false)]
    #[test_case("unavailable", 200, &[("grpc-status", "14")], true)]
    #[test_case("unavailable", 200, &[("grpc-status", "13")], false)]
    #[test_case("internal,cancelled", 200, &[("grpc-status", "13")], true)]
    #[test_case("deadline-exceeded", 200, &[("grpc-status", "4")], true)]
    #[test_case("resource-exhausted", 200, &[("grpc-status", "8")], true)]
    #[test_case("connect-failure", 503, &[], false)]
    fn retriable_responses(retry_on: &str, status: u16, headers: &[(&'static str, &'static str)], expected: bool) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        assert_eq!(policy(retry_on).retriable_response(StatusCode::from_u16(status).unwrap(), &h, &HeaderMap::new()), expected);
    }

    #[test]
    fn request_header_adds_retriable_status_codes() {
        let mut req = HeaderMap::new();
        req.insert("x-envoy-retriable-status-codes", "429, 420".parse().unwrap());
        assert!(policy("retriable-status-codes").retriable_response(StatusCode::from_u16(420).unwrap(), &HeaderMap::new(), &req));
    }

    #[test_case("connect-failure", AttemptFailure::ConnectFailure, true)]
    #[test_case("connect-failure", AttemptFailure::Reset { request_sent: true }, false)]
    #[test_case("reset", AttemptFailure::Reset { request_sent: true }, true)]
    #[test_case("5xx", AttemptFailure::PerTryTimeout, true)]
    #[test_case("gateway-error", AttemptFailure::ConnectFailure, true)]
    #[test_case("refused-stream", AttemptFailure::RefusedStream, true)]
    #[test_case("refused-stream", AttemptFailure::Reset { request_sent: false }, false)]
    #[test_case("reset-before-request", AttemptFailure::Reset { request_sent: false }, true)]
    #[test_case("reset-before-request", AttemptFailure::Reset { request_sent: true }, false)]
    #[test_case("unavailable", AttemptFailure::PerTryTimeout, false)]
    fn retriable_failures(retry_on: &str, failure: AttemptFailure, expected: bool) {
        assert_eq!(policy(retry_on).retriable_failure(failure), expected);
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            assert!(p.backoff(1) < Duration::from_millis(25));
            assert!(p.backoff(2) < Duration::from_millis(75));
            assert!(p.backoff(10) < Duration::from_millis(250));
        }
    }
}
