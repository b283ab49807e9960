//! Parsing node-proxy's access log lines (Istio's default text format):
//!
//! ```text
//! [START] "METHOD PATH PROTOCOL" CODE FLAGS DETAILS CONN_TERM "UPSTREAM_FAILURE" RX TX
//! DURATION UPSTREAM_TIME "XFF" "USER_AGENT" "REQUEST_ID" "AUTHORITY" "UPSTREAM_HOST"
//! CLUSTER UPSTREAM_LOCAL DOWNSTREAM_LOCAL DOWNSTREAM_REMOTE SNI ROUTE
//! ```

/// One access log line, field by field (`-` where the proxy printed `-`).
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogEntry {
    pub start_time: String,
    pub method: String,
    /// The original path (`x-envoy-original-path` if rewritten).
    pub path: String,
    pub protocol: String,
    pub code: u16,
    pub flags: String,
    pub details: String,
    pub upstream_failure: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_service_time: String,
    pub x_forwarded_for: String,
    pub user_agent: String,
    pub request_id: String,
    pub authority: String,
    pub upstream_host: String,
    pub upstream_cluster: String,
    pub upstream_local: String,
    pub downstream_local: String,
    pub downstream_remote: String,
    pub sni: String,
    pub route_name: String,
    pub line: String,
}

impl AccessLogEntry {
    /// Whether the response flags include `flag` (e.g. `"URX"`).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.split(',').any(|f| f == flag)
    }
}

/// Splits a line into `[...]`, `"..."` and bare tokens.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' => {
                chars.next();
            }
            '[' | '"' => {
                let close = if c == '[' { ']' } else { '"' };
                chars.next();
                let mut t = String::new();
                for ch in chars.by_ref() {
                    if ch == close {
                        break;
                    }
                    t.push(ch);
                }
                out.push(t);
            }
            _ => {
                let mut t = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch == ' ' {
                        break;
                    }
                    t.push(ch);
                    chars.next();
                }
                out.push(t);
            }
        }
    }
    out
}

/// Parses one line; `None` if it is not in Istio's text format.
pub fn parse(line: &str) -> Option<AccessLogEntry> {
    let t = tokens(line);
    if t.len() != 22 {
        return None;
    }
    let mut request = t[1].splitn(3, ' ');
    let (method, path, protocol) = (request.next()?.to_owned(), request.next().unwrap_or("").to_owned(), request.next().unwrap_or("").to_owned());
    Some(AccessLogEntry {
        start_time: t[0].clone(),
        method,
        path,
        protocol,
        code: t[2].parse().ok()?,
        flags: t[3].clone(),
        details: t[4].clone(),
        upstream_failure: t[6].clone(),
        bytes_received: t[7].parse().ok()?,
        bytes_sent: t[8].parse().ok()?,
        duration_ms: t[9].parse().ok()?,
        upstream_service_time: t[10].clone(),
        x_forwarded_for: t[11].clone(),
        user_agent: t[12].clone(),
        request_id: t[13].clone(),
        authority: t[14].clone(),
        upstream_host: t[15].clone(),
        upstream_cluster: t[16].clone(),
        upstream_local: t[17].clone(),
        downstream_local: t[18].clone(),
        downstream_remote: t[19].clone(),
        sni: t[20].clone(),
        route_name: t[21].clone(),
        line: line.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_istio_text() {
        let line = "[2023-11-14T22:13:20.123Z] \"GET /status/418 HTTP/1.1\" 503 UF,URX upstream_reset_before_response_started{connection_failure} - \"-\" 0 91 12 - \"-\" \"curl/7.88.1\" \"abc\" \"httpbin:8000\" \"198.18.0.5:80\" outbound|8000||httpbin.default.svc.cluster.local - 198.18.0.1:8000 198.18.0.2:40000 - default";
        let e = super::parse(line).unwrap();
        assert_eq!((e.method.as_str(), e.path.as_str(), e.code), ("GET", "/status/418", 503));
        assert!(e.has_flag("URX") && e.has_flag("UF") && !e.has_flag("UH"));
        assert_eq!(e.user_agent, "curl/7.88.1");
        assert_eq!(e.upstream_host, "198.18.0.5:80");
        assert_eq!(e.downstream_local, "198.18.0.1:8000");
        assert_eq!(e.route_name, "default");
    }
}
