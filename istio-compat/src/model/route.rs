//! HTTP routing as Envoy's `RouteConfiguration` defines it: virtual hosts chosen by
//! `:authority`, routes tried in order, and what a matched route does.
//!
//! Owns the data and the pure selection logic (virtual host lookup, route matching,
//! weighted cluster choice, path rewrites). Does not own retries in flight, timers or
//! upstream connections: those are the runtime's (`node-proxy`).

use std::collections::HashMap;
use std::time::Duration;

use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};

use super::common::{serde_opt_duration, HeaderMutation, Name, Pattern, Percent, RegexRewrite, StringMatcher};
use super::fault::FaultConfig;
use super::retry::RetryPolicy;

/// Envoy's default route timeout when `RouteAction.timeout` is unset.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A `RouteConfiguration`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteTable {
    pub name: Name,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Response/request header changes applied for every route of this table.
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub request_headers: HeaderMutation,
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub response_headers: HeaderMutation,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_port_in_host_matching: bool,
    /// Built from `virtual_hosts` by [`RouteTable::index`]: where each domain leads.
    #[serde(skip)]
    index: DomainIndex,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct DomainIndex {
    exact: HashMap<String, usize>,
    /// `*.example.com` and `*-bar.example.com`: (suffix, vhost), longest suffix first.
    suffixes: Vec<(String, usize)>,
    /// `example.*`: (prefix, vhost), longest prefix first.
    prefixes: Vec<(String, usize)>,
    default: Option<usize>,
}

impl RouteTable {
    /// Every cluster a route of this table may send to (named, weighted, mirrored);
    /// clusters chosen by a request header are not known in advance.
    pub fn cluster_names(&self) -> std::collections::BTreeSet<&Name> {
        let mut names = std::collections::BTreeSet::new();
        for route in self.virtual_hosts.iter().flat_map(|vh| vh.routes.iter()) {
            let Action::Forward(f) = &route.action else { continue };
            match &f.cluster {
                ClusterSpecifier::Cluster(n) => {
                    names.insert(n);
                }
                ClusterSpecifier::Weighted(w) => names.extend(w.clusters.iter().map(|c| &c.name)),
                ClusterSpecifier::Header(_) => {}
            }
            names.extend(f.mirrors.iter().map(|m| &m.cluster));
        }
        names
    }

    /// A table of these virtual hosts, indexed.
    pub fn new(name: &str, virtual_hosts: Vec<VirtualHost>) -> Self {
        RouteTable { name: name.into(), virtual_hosts, ..Default::default() }.index()
    }

    /// Builds the domain index; call after constructing or deserialising a table.
    pub fn index(mut self) -> Self {
        let mut index = DomainIndex::default();
        for (i, vh) in self.virtual_hosts.iter().enumerate() {
            for domain in &vh.domains {
                let domain = domain.to_ascii_lowercase();
                if domain == "*" {
                    index.default.get_or_insert(i);
                } else if let Some(suffix) = domain.strip_prefix('*') {
                    index.suffixes.push((suffix.to_owned(), i));
                } else if let Some(prefix) = domain.strip_suffix('*') {
                    index.prefixes.push((prefix.to_owned(), i));
                } else {
                    index.exact.entry(domain).or_insert(i);
                }
            }
        }
        // Longest first; a stable sort keeps configuration order among equals.
        index.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        index.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        self.index = index;
        self
    }

    /// The virtual host for `authority`, as Envoy picks it: exact domain, then the
    /// longest suffix wildcard, then the longest prefix wildcard, then `*`.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let mut host = authority;
        if self.ignore_port_in_host_matching {
            host = strip_port(host);
        }
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let idx = &self.index;
        let found = idx
            .exact
            .get(host)
            .copied()
            .or_else(|| idx.suffixes.iter().find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str())).map(|(_, i)| *i))
            .or_else(|| idx.prefixes.iter().find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str())).map(|(_, i)| *i))
            .or(idx.default);
        found.and_then(|i| self.virtual_hosts.get(i))
    }
}

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`; a bare IPv6 address is left alone.
pub fn strip_port(authority: &str) -> &str {
    if let Some(end) = authority.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return &authority[..end + 2];
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VirtualHost {
    pub name: Name,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub request_headers: HeaderMutation,
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub response_headers: HeaderMutation,
    /// Used by routes that have no retry policy of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_request_attempt_count: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub include_attempt_count_in_response: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
}

impl VirtualHost {
    /// The first route whose match accepts the request.
    pub fn route(&self, req: &RequestHead<'_>) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }
}

/// What route matching reads of a request.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1).
    pub authority: &'a str,
    /// `:path`, including the query string.
    pub path: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

impl RequestHead<'_> {
    /// The path without `?query` and `#fragment`, as Envoy's path matchers see it.
    pub fn path_only(&self) -> &str {
        let end = self.path.find(['?', '#']).unwrap_or(self.path.len());
        &self.path[..end]
    }

    pub fn query(&self) -> Option<&str> {
        let q = self.path.split_once('?')?.1;
        Some(q.split_once('#').map_or(q, |(q, _)| q))
    }

    /// A header's value as Envoy's matchers see it: pseudo-headers included, several
    /// values joined with `,`.
    pub fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match name {
            ":authority" => return Some(Cow::Borrowed(self.authority)),
            "host" if !self.headers.contains_key(http::header::HOST) => return Some(Cow::Borrowed(self.authority)),
            ":path" => return Some(Cow::Borrowed(self.path)),
            ":method" => return Some(Cow::Borrowed(self.method.as_str())),
            ":scheme" => return Some(Cow::Borrowed(self.scheme)),
            _ => {}
        }
        join_values(self.headers.get_all(name))
    }

    /// A regular header by its parsed name, its values joined as [`RequestHead::header`]
    /// joins them.
    pub fn header_named(&self, name: &http::HeaderName) -> Option<std::borrow::Cow<'_, str>> {
        join_values(self.headers.get_all(name))
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query()?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    #[serde(default)]
    pub name: Name,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub action: Action,
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub request_headers: HeaderMutation,
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub response_headers: HeaderMutation,
    /// `typed_per_filter_config["envoy.filters.http.fault"]`: overrides the
    /// listener's fault filter config for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// Only gRPC requests (`content-type: application/grpc…`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grpc: bool,
    /// Matches only this fraction of requests (`runtime_fraction` default value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Percent>,
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Pattern),
    /// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
    SeparatedPrefix(String),
    /// Envoy's `connect_matcher`: any CONNECT request.
    Connect,
}

impl RouteMatch {
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        if !self.path_matches(req) {
            return false;
        }
        if self.grpc && !req.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| protocols::grpc::is_grpc_content_type(v.as_bytes())) {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(req)) {
            return false;
        }
        if !self.query_parameters.iter().all(|q| q.matches(req)) {
            return false;
        }
        self.fraction.is_none_or(|f| f.sample())
    }

    fn path_matches(&self, req: &RequestHead<'_>) -> bool {
        let is_connect = req.method == Method::CONNECT;
        if let PathMatch::Connect = self.path {
            return is_connect;
        }
        // Envoy matches CONNECT requests only with connect_matcher.
        if is_connect {
            return false;
        }
        let path = req.path_only();
        let eq = |a: &str, b: &str| {
            if self.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        match &self.path {
            PathMatch::Prefix(p) => path.len() >= p.len() && path.is_char_boundary(p.len()) && eq(&path[..p.len()], p),
            PathMatch::Exact(p) => eq(path, p),
            PathMatch::Regex(r) => r.is_full_match(path),
            PathMatch::SeparatedPrefix(p) => {
                path.len() >= p.len()
                    && path.is_char_boundary(p.len())
                    && eq(&path[..p.len()], p)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Connect => false,
        }
    }
}

/// Envoy's route `HeaderMatcher`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderMatcher {
    pub name: String,
    pub rule: HeaderMatchRule,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub treat_missing_as_empty: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeaderMatchRule {
    String(StringMatcher),
    /// `[start, end)` on the value parsed as an integer.
    Range {
        start: i64,
        end: i64,
    },
    /// `true`: the header is present; `false`: it is absent.
    Present(bool),
}

/// A header's values joined with `,`: `None` when absent or when the first value is
/// not UTF-8 (later ones are decoded lossily).
fn join_values(all: http::header::GetAll<'_, http::HeaderValue>) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    let mut values = all.iter();
    let first = std::str::from_utf8(values.next()?.as_bytes()).ok()?;
    match values.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = format!("{first},{}", String::from_utf8_lossy(second.as_bytes()));
            for v in values {
                joined.push(',');
                joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            Some(Cow::Owned(joined))
        }
    }
}

impl HeaderMatcher {
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        self.matches_value(req.header(&self.name).as_deref())
    }

    /// Envoy's `HeaderUtility::matchHeaders`: an absent header (unless treated as
    /// empty) matches only a presence rule, whatever the inversion.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        let value = match value {
            Some(v) => v,
            None if self.treat_missing_as_empty => "",
            None => {
                return match self.rule {
                    HeaderMatchRule::Present(present) => present == self.invert,
                    _ => false,
                };
            }
        };
        let matched = match &self.rule {
            HeaderMatchRule::String(m) => m.matches(value),
            HeaderMatchRule::Range { start, end } => value.parse::<i64>().is_ok_and(|v| *start <= v && v < *end),
            HeaderMatchRule::Present(present) => *present,
        };
        matched != self.invert
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryParameterMatcher {
    pub name: String,
    /// `None`: the parameter must be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<StringMatcher>,
}

impl QueryParameterMatcher {
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        match (req.query_param(&self.name), &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(m)) => m.matches(&v),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Forward(Box<ForwardAction>),
    Redirect(Box<RedirectAction>),
    DirectResponse(DirectResponse),
}

/// `RouteAction`: send the request to a cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardAction {
    pub cluster: ClusterSpecifier,
    /// 404 or 503 when the cluster does not exist (Envoy's default 503).
    #[serde(default = "default_cluster_not_found")]
    pub cluster_not_found_status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
    /// The whole-request timeout; `None` disables it. Unset in config means 15 s.
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
    /// How a `grpc-timeout` request header bounds the timeout; `None`: ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_timeout: Option<GrpcTimeout>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_policy: Vec<HashPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorPolicy>,
    /// Route-level upgrade settings (`websocket`, `connect`, lower-cased) and whether
    /// each is enabled; they override the listener's for their type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrades: Vec<(String, bool)>,
}

fn default_cluster_not_found() -> u16 {
    503
}

/// `max_grpc_timeout` / `max_stream_duration.grpc_timeout_header_max` with its offset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrpcTimeout {
    /// Cap on the header's value; `None` (config `0s`) means no cap.
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub offset: Option<Duration>,
}

impl ForwardAction {
    /// The request's overall timeout: the route's, unless a `grpc-timeout` header is
    /// honoured (bounded by `max`, reduced by `offset`). `None`: no timeout.
    pub fn effective_timeout(&self, headers: &HeaderMap) -> Option<Duration> {
        let Some(grpc) = &self.grpc_timeout else {
            return self.timeout;
        };
        let Some(header) = headers.get("grpc-timeout").and_then(|v| protocols::grpc::parse_timeout(v.as_bytes())) else {
            return self.timeout;
        };
        let mut t = match grpc.max {
            Some(max) if !max.is_zero() => header.min(max),
            _ => header,
        };
        if let Some(offset) = grpc.offset {
            if offset < t {
                t -= offset;
            }
        }
        Some(t)
    }

    /// The path the upstream sees after `prefix_rewrite` / `regex_rewrite`.
    /// `matched_prefix` is the route's prefix (what `prefix_rewrite` replaces).
    pub fn rewrite_path(&self, path: &str, matcher: &RouteMatch) -> Option<String> {
        if let Some(new_prefix) = &self.prefix_rewrite {
            let old = match &matcher.path {
                PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) | PathMatch::Exact(p) => p.as_str(),
                _ => return None,
            };
            let rest = path.get(old.len()..).unwrap_or("");
            return Some(format!("{new_prefix}{rest}"));
        }
        if let Some(rw) = &self.regex_rewrite {
            let (p, q) = match path.find(['?', '#']) {
                Some(i) => path.split_at(i),
                None => (path, ""),
            };
            return Some(format!("{}{q}", rw.apply(p)));
        }
        None
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterSpecifier {
    Cluster(Name),
    /// The cluster named by this request header.
    Header(String),
    Weighted(WeightedClusters),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightedClusters {
    pub clusters: Vec<WeightedCluster>,
    /// The sum of the weights.
    pub total: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightedCluster {
    pub name: Name,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub request_headers: HeaderMutation,
    #[serde(default, skip_serializing_if = "HeaderMutation::is_empty")]
    pub response_headers: HeaderMutation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
}

impl WeightedClusters {
    /// The cluster a value drawn uniformly from `[0, total)` lands on.
    pub fn pick(&self, draw: u64) -> Option<&WeightedCluster> {
        if self.total == 0 {
            return None;
        }
        let mut point = draw % self.total;
        for c in &self.clusters {
            if point < u64::from(c.weight) {
                return Some(c);
            }
            point -= u64::from(c.weight);
        }
        self.clusters.last()
    }
}

/// A `hash_policy` entry: what consistent-hash load balancing keys on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HashPolicy {
    pub source: HashSource,
    /// Stop at this policy if it produced a hash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashSource {
    Header {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rewrite: Option<RegexRewrite>,
    },
    Cookie {
        name: String,
        /// When set and the cookie is absent, the proxy generates one with this TTL.
        #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
        ttl: Option<Duration>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        path: String,
    },
    SourceIp,
    QueryParameter(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MirrorPolicy {
    pub cluster: Name,
    pub fraction: Percent,
    /// Envoy appends `-shadow` to the host of mirrored requests unless told not to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_shadow_host_suffix: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RedirectAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub path: RedirectPath,
    pub status: u16,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_query: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectPath {
    Keep,
    /// Replace the whole path (the query is kept unless `strip_query`, or the new path has one).
    Path(String),
    Prefix(String),
    Regex(RegexRewrite),
}

impl RedirectAction {
    /// The `Location` for a request, as Envoy builds it.
    pub fn location(&self, req: &RequestHead<'_>, matcher: &RouteMatch) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(req.scheme);
        let (req_host, req_port) = split_host_port(req.authority);
        let host = self.host.as_deref().unwrap_or(req_host);
        let port = match self.port {
            Some(p) => Some(p.to_string()),
            // A scheme change drops a default port of the old scheme.
            None if self.scheme.is_some() => req_port.filter(|p| !(*p == "80" || *p == "443")).map(str::to_owned),
            None => req_port.map(str::to_owned),
        };
        let port = port.filter(|p| !((scheme == "http" && p == "80") || (scheme == "https" && p == "443")));
        let (path_only, query) = match req.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (req.path, None),
        };
        let mut path = match &self.path {
            RedirectPath::Keep => path_only.to_owned(),
            RedirectPath::Path(p) => p.clone(),
            RedirectPath::Prefix(new_prefix) => {
                let old = match &matcher.path {
                    PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) | PathMatch::Exact(p) => p.len(),
                    _ => 0,
                };
                format!("{new_prefix}{}", path_only.get(old..).unwrap_or(""))
            }
            RedirectPath::Regex(rw) => rw.apply(path_only),
        };
        if !self.strip_query && !path.contains('?') {
            if let Some(q) = query {
                path.push('?');
                path.push_str(q);
            }
        }
        match port {
            Some(port) => format!("{scheme}://{host}:{port}{path}"),
            None => format!("{scheme}://{host}{path}"),
        }
    }
}

fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    let host = strip_port(authority);
    if host.len() < authority.len() {
        (host, Some(&authority[host.len() + 1..]))
    } else {
        (host, None)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::common::StringMatch;
    use test_case::test_case;

    fn head<'a>(method: &'a Method, authority: &'a str, path: &'a str, headers: &'a HeaderMap) -> RequestHead<'a> {
        RequestHead { method, authority, path, scheme: "http", headers }
    }

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost { name: name.into(), domains: domains.iter().map(|d| d.to_string()).collect(), ..Default::default() }
    }

    fn table() -> RouteTable {
        RouteTable {
            name: "t".into(),
            virtual_hosts: vec![
                vh("exact", &["reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local:9080", "reviews"]),
                vh("suffix-short", &["*.com"]),
                vh("suffix-long", &["*.example.com"]),
                vh("prefix", &["api.*"]),
                vh("default", &["*"]),
            ],
            ..Default::default()
        }
        .index()
    }

    #[test_case("reviews.default.svc.cluster.local", "exact")]
    #[test_case("reviews.default.svc.cluster.local:9080", "exact")]
    #[test_case("Reviews", "exact"; "host matching ignores case")]
    #[test_case("www.example.com", "suffix-long")]
    #[test_case("example.com", "suffix-short"; "a wildcard needs at least one character")]
    #[test_case("foo.com", "suffix-short")]
    #[test_case("api.internal", "prefix")]
    #[test_case("api.example.com", "suffix-long"; "suffix wildcards win over prefix wildcards")]
    #[test_case("other", "default")]
    #[test_case("reviews:8080", "default"; "port is part of the host unless ignored")]
    fn virtual_host_selection(authority: &str, expected: &str) {
        assert_eq!(&*table().virtual_host(authority).unwrap().name, expected);
    }

    #[test]
    fn ignore_port_in_host_matching() {
        let mut t = table();
        t.ignore_port_in_host_matching = true;
        assert_eq!(&*t.index().virtual_host("reviews:8080").unwrap().name, "exact");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }

    fn m(path: PathMatch) -> RouteMatch {
        RouteMatch { path, case_sensitive: true, headers: vec![], query_parameters: vec![], grpc: false, fraction: None }
    }

    #[test_case(PathMatch::Prefix("/api".into()), true, "/api/v1?x=1", true)]
    #[test_case(PathMatch::Prefix("/api".into()), true, "/apix", true)]
    #[test_case(PathMatch::Prefix("/API".into()), true, "/api", false)]
    #[test_case(PathMatch::Prefix("/API".into()), false, "/api", true)]
    #[test_case(PathMatch::Prefix("/a?b".into()), true, "/a?b", false; "prefix sees the path without its query")]
    #[test_case(PathMatch::Exact("/health".into()), true, "/health?full=1", true)]
    #[test_case(PathMatch::Exact("/health".into()), true, "/health/", false)]
    #[test_case(PathMatch::SeparatedPrefix("/api".into()), true, "/api", true)]
    #[test_case(PathMatch::SeparatedPrefix("/api".into()), true, "/api/x", true)]
    #[test_case(PathMatch::SeparatedPrefix("/api".into()), true, "/apix", false)]
    #[test_case(PathMatch::Regex(Pattern::new("/v[0-9]+/.*").unwrap()), true, "/v2/items?q", true)]
    #[test_case(PathMatch::Regex(Pattern::new("/v[0-9]+").unwrap()), true, "/v2/items", false; "regex must match the whole path")]
    fn path_matching(path: PathMatch, case_sensitive: bool, request_path: &str, expected: bool) {
        let mut rm = m(path);
        rm.case_sensitive = case_sensitive;
        let headers = HeaderMap::new();
        assert_eq!(rm.matches(&head(&Method::GET, "h", request_path, &headers)), expected);
    }

    #[test]
    fn connect_only_matches_connect_matcher() {
        let headers = HeaderMap::new();
        let connect = head(&Method::CONNECT, "h:443", "", &headers);
        assert!(!m(PathMatch::Prefix("/".into())).matches(&connect));
        assert!(m(PathMatch::Connect).matches(&connect));
        assert!(!m(PathMatch::Connect).matches(&head(&Method::GET, "h", "/", &headers)));
    }

    fn hm(rule: HeaderMatchRule, invert: bool) -> HeaderMatcher {
        HeaderMatcher { name: "x-user".into(), rule, invert, treat_missing_as_empty: false }
    }

    #[test_case(hm(HeaderMatchRule::String(StringMatcher::exact("jason")), false), Some("jason"), true)]
    #[test_case(hm(HeaderMatchRule::String(StringMatcher::exact("jason")), true), Some("jason"), false)]
    #[test_case(hm(HeaderMatchRule::String(StringMatcher::exact("jason")), true), Some("bob"), true)]
    #[test_case(hm(HeaderMatchRule::String(StringMatcher::exact("jason")), true), None, false; "inverted matcher never matches an absent header")]
    #[test_case(hm(HeaderMatchRule::Present(true), false), None, false)]
    #[test_case(hm(HeaderMatchRule::Present(true), true), None, true)]
    #[test_case(hm(HeaderMatchRule::Present(false), false), None, true)]
    #[test_case(hm(HeaderMatchRule::Present(false), false), Some("x"), false)]
    #[test_case(hm(HeaderMatchRule::Range { start: 0, end: 10 }, false), Some("9"), true)]
    #[test_case(hm(HeaderMatchRule::Range { start: 0, end: 10 }, false), Some("10"), false)]
    #[test_case(hm(HeaderMatchRule::Range { start: 0, end: 10 }, false), Some("x"), false)]
    fn header_matching(matcher: HeaderMatcher, value: Option<&str>, expected: bool) {
        assert_eq!(matcher.matches_value(value), expected);
    }

    #[test]
    fn missing_header_treated_as_empty() {
        let mut matcher = hm(HeaderMatchRule::Range { start: 0, end: 10 }, true);
        matcher.treat_missing_as_empty = true;
        assert!(matcher.matches_value(None));
    }

    #[test]
    fn multiple_header_values_join_with_comma() {
        let mut headers = HeaderMap::new();
        headers.append("x-user", "a".parse().unwrap());
        headers.append("x-user", "b".parse().unwrap());
        let req = head(&Method::GET, "h", "/", &headers);
        assert!(hm(HeaderMatchRule::String(StringMatcher::exact("a,b")), false).matches(&req));
        let authority = HeaderMatcher {
            name: ":authority".into(),
            rule: HeaderMatchRule::String(StringMatcher { kind: StringMatch::Prefix("h".into()), ignore_case: false }),
            invert: false,
            treat_missing_as_empty: false,
        };
        assert!(authority.matches(&req));
    }

    #[test]
    fn query_parameters() {
        let headers = HeaderMap::new();
        let req = head(&Method::GET, "h", "/p?a=1&b=hello%20world&c", &headers);
        assert_eq!(req.query_param("b").as_deref(), Some("hello world"));
        assert!(QueryParameterMatcher { name: "c".into(), value: None }.matches(&req));
        assert!(!QueryParameterMatcher { name: "d".into(), value: None }.matches(&req));
        assert!(QueryParameterMatcher { name: "a".into(), value: Some(StringMatcher::exact("1")) }.matches(&req));
    }

    #[test]
    fn weighted_pick_covers_every_cluster_in_proportion() {
        let w = WeightedClusters {
            clusters: vec![
                WeightedCluster { name: "a".into(), weight: 20, request_headers: Default::default(), response_headers: Default::default(), host_rewrite: None },
                WeightedCluster { name: "b".into(), weight: 80, request_headers: Default::default(), response_headers: Default::default(), host_rewrite: None },
            ],
            total: 100,
        };
        let picks: Vec<_> = (0..100).map(|d| w.pick(d).unwrap().name.to_string()).collect();
        assert_eq!(picks.iter().filter(|n| *n == "a").count(), 20);
        assert_eq!(picks.iter().filter(|n| *n == "b").count(), 80);
    }

    #[test]
    fn rewrites() {
        let matcher = m(PathMatch::Prefix("/old".into()));
        let fwd = |prefix: Option<&str>, regex: Option<RegexRewrite>| ForwardAction {
            cluster: ClusterSpecifier::Cluster("c".into()),
            cluster_not_found_status: 503,
            prefix_rewrite: prefix.map(str::to_owned),
            regex_rewrite: regex,
            host_rewrite: None,
            timeout: None,
            idle_timeout: None,
            retry_policy: None,
            grpc_timeout: None,
            hash_policy: vec![],
            mirrors: vec![],
            upgrades: vec![],
        };
        assert_eq!(fwd(Some("/new"), None).rewrite_path("/old/x?q=1", &matcher).unwrap(), "/new/x?q=1");
        let rx = RegexRewrite { pattern: Pattern::new("^/old/(.*)$").unwrap(), substitution: crate::model::common::RegexSubstitution::new("/v2/\\1") };
        assert_eq!(fwd(None, Some(rx)).rewrite_path("/old/x?q=1", &matcher).unwrap(), "/v2/x?q=1");
        assert_eq!(fwd(None, None).rewrite_path("/old", &matcher), None);
    }

    #[test]
    fn grpc_timeout_header_bounds_the_route_timeout() {
        let mut fwd = ForwardAction {
            cluster: ClusterSpecifier::Cluster("c".into()),
            cluster_not_found_status: 503,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
            timeout: Some(Duration::from_secs(15)),
            idle_timeout: None,
            retry_policy: None,
            grpc_timeout: None,
            hash_policy: vec![],
            mirrors: vec![],
            upgrades: vec![],
        };
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", "200m".parse().unwrap());
        assert_eq!(fwd.effective_timeout(&headers), Some(Duration::from_secs(15)), "ignored without max_grpc_timeout");
        fwd.grpc_timeout = Some(GrpcTimeout { max: None, offset: None });
        assert_eq!(fwd.effective_timeout(&headers), Some(Duration::from_millis(200)));
        fwd.grpc_timeout = Some(GrpcTimeout { max: Some(Duration::from_millis(100)), offset: None });
        assert_eq!(fwd.effective_timeout(&headers), Some(Duration::from_millis(100)));
        fwd.grpc_timeout = Some(GrpcTimeout { max: None, offset: Some(Duration::from_millis(50)) });
        assert_eq!(fwd.effective_timeout(&headers), Some(Duration::from_millis(150)));
    }

    #[test]
    fn redirect_location() {
        let headers = HeaderMap::new();
        let req = head(&Method::GET, "example.com:8080", "/old/a?x=1", &headers);
        let matcher = m(PathMatch::Prefix("/old".into()));
        let r =
            RedirectAction { scheme: Some("https".into()), host: None, port: None, path: RedirectPath::Prefix("/new".into()), status: 301, strip_query: false };
        assert_eq!(r.location(&req, &matcher), "https://example.com:8080/new/a?x=1");
        let r =
            RedirectAction { scheme: None, host: Some("other".into()), port: Some(80), path: RedirectPath::Path("/p".into()), status: 302, strip_query: true };
        assert_eq!(r.location(&req, &matcher), "http://other/p");
    }
}
