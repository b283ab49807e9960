//! Per-request records, Envoy's response flags, and access log lines in Istio's
//! default text format, its JSON form, or an Envoy format string.
//!
//! Lines are emitted as `tracing` events on the `access_log` target with the
//! destination path as a field; `crate::logging` writes them raw to that path.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use istio_compat::model::listener::{AccessLog, AccessLogFormat};

/// Envoy's response flags, in Envoy's print order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

macro_rules! flags {
    ($($name:ident = $bit:expr, $code:literal;)*) => {
        impl ResponseFlags {
            $(pub const $name: ResponseFlags = ResponseFlags(1 << $bit);)*
            const CODES: &'static [(ResponseFlags, &'static str)] = &[$((ResponseFlags::$name, $code)),*];
        }
    };
}

flags! {
    NO_HEALTHY_UPSTREAM = 1, "UH";
    UPSTREAM_REQUEST_TIMEOUT = 2, "UT";
    LOCAL_RESET = 3, "LR";
    UPSTREAM_REMOTE_RESET = 4, "UR";
    UPSTREAM_CONNECTION_FAILURE = 5, "UF";
    UPSTREAM_CONNECTION_TERMINATION = 6, "UC";
    UPSTREAM_OVERFLOW = 7, "UO";
    NO_ROUTE_FOUND = 8, "NR";
    DELAY_INJECTED = 9, "DI";
    FAULT_INJECTED = 10, "FI";
    UNAUTHORIZED_EXTERNAL_SERVICE = 12, "UAEX";
    DOWNSTREAM_CONNECTION_TERMINATION = 14, "DC";
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 15, "URX";
    STREAM_IDLE_TIMEOUT = 16, "SI";
    DOWNSTREAM_PROTOCOL_ERROR = 18, "DPE";
    NO_CLUSTER_FOUND = 24, "NC";
}

impl ResponseFlags {
    pub const NONE: ResponseFlags = ResponseFlags(0);

    pub fn set(&mut self, f: ResponseFlags) {
        self.0 |= f.0;
    }

    pub fn contains(self, f: ResponseFlags) -> bool {
        self.0 & f.0 == f.0 && f.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, code) in Self::CODES {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(code)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Everything an access log line or a metric sample says about one request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub start_time: SystemTime,
    pub method: String,
    /// `x-envoy-original-path` if rewritten, else `:path`.
    pub path: String,
    pub protocol: &'static str,
    pub response_code: u16,
    pub response_flags: ResponseFlags,
    /// Envoy's `%RESPONSE_CODE_DETAILS%` (`via_upstream`, `rbac_access_denied_matched_policy[...]`, ...).
    pub response_code_details: std::borrow::Cow<'static, str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    pub upstream_service_time: Option<Duration>,
    pub x_forwarded_for: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub authority: String,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<Arc<str>>,
    pub upstream_local_address: Option<SocketAddr>,
    pub downstream_local_address: SocketAddr,
    pub downstream_remote_address: SocketAddr,
    pub requested_server_name: Option<String>,
    pub route_name: Option<Arc<str>>,
    pub grpc_status: Option<i32>,
    pub upstream_transport_failure_reason: Option<String>,
    /// The verified SPIFFE identity of the downstream mTLS peer (`%DOWNSTREAM_PEER_URI_SAN%`).
    pub downstream_peer_uri_san: Option<Arc<str>>,
    /// The verified SPIFFE identity of the upstream mTLS peer (`%UPSTREAM_PEER_URI_SAN%`).
    pub upstream_peer_uri_san: Option<Arc<str>>,
}

fn dash(v: Option<&str>) -> &str {
    match v {
        Some(s) if !s.is_empty() => s,
        _ => "-",
    }
}

/// `2026-12-02T13:44:22.736Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

impl RequestRecord {
    /// A TCP connection's record (no request line), before anything is known of its upstream.
    pub fn tcp(remote: SocketAddr, local: SocketAddr, server_name: Option<String>) -> RequestRecord {
        RequestRecord {
            start_time: SystemTime::now(),
            method: "-".into(),
            path: "-".into(),
            protocol: "-",
            response_code: 0,
            response_flags: ResponseFlags::NONE,
            response_code_details: "-".into(),
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: String::new(),
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            downstream_local_address: local,
            downstream_remote_address: remote,
            requested_server_name: server_name,
            route_name: None,
            grpc_status: None,
            upstream_transport_failure_reason: None,
            downstream_peer_uri_san: None,
            upstream_peer_uri_san: None,
        }
    }

    /// Istio's default access log line (meshConfig.accessLogEncoding TEXT).
    pub fn istio_text(&self) -> String {
        let mut s = String::with_capacity(384);
        let _ = write!(
            s,
            "[{}] \"{} {} {}\" {} {} {} - \"{}\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {} {}",
            rfc3339_millis(self.start_time),
            self.method,
            self.path,
            self.protocol,
            self.response_code,
            self.response_flags,
            self.response_code_details,
            dash(self.upstream_transport_failure_reason.as_deref()),
            self.bytes_received,
            self.bytes_sent,
            self.duration.as_millis(),
            self.upstream_service_time.map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string()),
            dash(self.x_forwarded_for.as_deref()),
            dash(self.user_agent.as_deref()),
            dash(self.request_id.as_deref()),
            dash(Some(&self.authority)),
            self.upstream_host.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            dash(self.upstream_cluster.as_deref()),
            self.upstream_local_address.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            self.downstream_local_address,
            self.downstream_remote_address,
            dash(self.requested_server_name.as_deref()),
            dash(self.route_name.as_deref()),
        );
        s
    }

    /// Istio's JSON access log (meshConfig.accessLogEncoding JSON): the same fields.
    pub fn istio_json(&self) -> String {
        let v = serde_json::json!({
            "start_time": rfc3339_millis(self.start_time),
            "method": self.method,
            "path": self.path,
            "protocol": self.protocol,
            "response_code": self.response_code,
            "response_flags": self.response_flags.to_string(),
            "response_code_details": self.response_code_details,
            "connection_termination_details": null,
            "upstream_transport_failure_reason": self.upstream_transport_failure_reason,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "duration": self.duration.as_millis() as u64,
            "upstream_service_time": self.upstream_service_time.map(|d| d.as_millis().to_string()),
            "x_forwarded_for": self.x_forwarded_for,
            "user_agent": self.user_agent,
            "request_id": self.request_id,
            "authority": self.authority,
            "upstream_host": self.upstream_host.map(|a| a.to_string()),
            "upstream_cluster": self.upstream_cluster.as_deref(),
            "upstream_local_address": self.upstream_local_address.map(|a| a.to_string()),
            "downstream_local_address": self.downstream_local_address.to_string(),
            "downstream_remote_address": self.downstream_remote_address.to_string(),
            "requested_server_name": self.requested_server_name,
            "route_name": self.route_name.as_deref(),
            "grpc_status": self.grpc_status,
        });
        let mut v = v;
        // Beyond Istio's default fields, only when mTLS gave an identity.
        if let Some(o) = v.as_object_mut() {
            if let Some(san) = &self.downstream_peer_uri_san {
                o.insert("downstream_peer_uri_san".into(), serde_json::Value::from(&**san));
            }
            if let Some(san) = &self.upstream_peer_uri_san {
                o.insert("upstream_peer_uri_san".into(), serde_json::Value::from(&**san));
            }
        }
        v.to_string()
    }

    /// An Envoy format string; operators we do not know print `-`.
    pub fn format(&self, fmt: &str) -> String {
        let mut out = String::with_capacity(fmt.len() + 64);
        let mut rest = fmt;
        while let Some(start) = rest.find('%') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            match after.find('%') {
                Some(end) => {
                    let op = &after[..end];
                    if op.is_empty() {
                        out.push('%');
                    } else {
                        out.push_str(&self.operator(op));
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    out.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn operator(&self, op: &str) -> String {
        let header = |name: &str| -> String {
            match name.to_ascii_lowercase().as_str() {
                ":method" => self.method.clone(),
                ":path" | "x-envoy-original-path?:path" => self.path.clone(),
                ":authority" | "host" => self.authority.clone(),
                "x-forwarded-for" => dash(self.x_forwarded_for.as_deref()).to_owned(),
                "user-agent" => dash(self.user_agent.as_deref()).to_owned(),
                "x-request-id" => dash(self.request_id.as_deref()).to_owned(),
                "x-envoy-upstream-service-time" => self.upstream_service_time.map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string()),
                _ => "-".to_owned(),
            }
        };
        let opt = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
        match op {
            "START_TIME" => rfc3339_millis(self.start_time),
            "PROTOCOL" => self.protocol.to_owned(),
            "RESPONSE_CODE" => self.response_code.to_string(),
            "RESPONSE_FLAGS" => self.response_flags.to_string(),
            "RESPONSE_CODE_DETAILS" => self.response_code_details.to_string(),
            "BYTES_RECEIVED" => self.bytes_received.to_string(),
            "BYTES_SENT" => self.bytes_sent.to_string(),
            "DURATION" => self.duration.as_millis().to_string(),
            "UPSTREAM_HOST" => opt(self.upstream_host),
            "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => dash(self.upstream_cluster.as_deref()).to_owned(),
            "UPSTREAM_LOCAL_ADDRESS" => opt(self.upstream_local_address),
            "DOWNSTREAM_LOCAL_ADDRESS" => self.downstream_local_address.to_string(),
            "DOWNSTREAM_REMOTE_ADDRESS" => self.downstream_remote_address.to_string(),
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => self.downstream_remote_address.ip().to_string(),
            "REQUESTED_SERVER_NAME" => dash(self.requested_server_name.as_deref()).to_owned(),
            "ROUTE_NAME" => dash(self.route_name.as_deref()).to_owned(),
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => dash(self.upstream_transport_failure_reason.as_deref()).to_owned(),
            "DOWNSTREAM_PEER_URI_SAN" => dash(self.downstream_peer_uri_san.as_deref()).to_owned(),
            "UPSTREAM_PEER_URI_SAN" => dash(self.upstream_peer_uri_san.as_deref()).to_owned(),
            "GRPC_STATUS" | "GRPC_STATUS_NUMBER" => self.grpc_status.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            _ => {
                if let Some(name) = op.strip_prefix("REQ(").and_then(|s| s.strip_suffix(')')) {
                    header(name)
                } else if let Some(name) = op.strip_prefix("RESP(").and_then(|s| s.strip_suffix(')')) {
                    header(name)
                } else {
                    "-".to_owned()
                }
            }
        }
    }

    /// Writes the line for each configured log.
    pub fn emit(&self, logs: &[AccessLog]) {
        for log in logs {
            let line = match &log.format {
                AccessLogFormat::IstioText => self.istio_text(),
                AccessLogFormat::IstioJson => self.istio_json(),
                AccessLogFormat::Text(fmt) => {
                    let mut l = self.format(fmt);
                    while l.ends_with('\n') {
                        l.pop();
                    }
                    l
                }
            };
            tracing::info!(target: "access_log", path = %log.path, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestRecord {
        RequestRecord {
            start_time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            method: "GET".into(),
            path: "/status/418".into(),
            protocol: "HTTP/1.1",
            response_code: 503,
            response_flags: {
                let mut f = ResponseFlags::NONE;
                f.set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
                f.set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
                f
            },
            response_code_details: "upstream_reset_before_response_started{connection_failure}".into(),
            bytes_received: 0,
            bytes_sent: 91,
            duration: Duration::from_millis(12),
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: Some("curl/7.88.1".into()),
            request_id: Some("abc".into()),
            authority: "httpbin:8000".into(),
            upstream_host: Some("198.18.0.5:80".parse().unwrap()),
            upstream_cluster: Some("outbound|8000||httpbin.default.svc.cluster.local".into()),
            upstream_local_address: None,
            downstream_local_address: "198.18.0.1:8000".parse().unwrap(),
            downstream_remote_address: "198.18.0.2:40000".parse().unwrap(),
            requested_server_name: None,
            route_name: Some("default".into()),
            grpc_status: None,
            upstream_transport_failure_reason: None,
            downstream_peer_uri_san: None,
            upstream_peer_uri_san: None,
        }
    }

    #[test]
    fn istio_text_line() {
        assert_eq!(
            record().istio_text(),
            "[2023-11-14T22:13:20.123Z] \"GET /status/418 HTTP/1.1\" 503 UF,URX upstream_reset_before_response_started{connection_failure} - \"-\" 0 91 12 - \"-\" \"curl/7.88.1\" \"abc\" \"httpbin:8000\" \"198.18.0.5:80\" outbound|8000||httpbin.default.svc.cluster.local - 198.18.0.1:8000 198.18.0.2:40000 - default"
        );
    }

    #[test]
    fn envoy_format_string() {
        let r = record();
        assert_eq!(r.format("%RESPONSE_CODE% %REQ(:METHOD)% %REQ(USER-AGENT)% %UNKNOWN_OP% 100%%"), "503 GET curl/7.88.1 - 100%");
        assert_eq!(r.format(istio_compat::translate::ISTIO_DEFAULT_LOG_FORMAT).trim_end(), r.istio_text());
    }

    #[test]
    fn json_line_parses() {
        let v: serde_json::Value = serde_json::from_str(&record().istio_json()).unwrap();
        assert_eq!(v["response_flags"], "UF,URX");
        assert_eq!(v["upstream_cluster"], "outbound|8000||httpbin.default.svc.cluster.local");
    }
}
