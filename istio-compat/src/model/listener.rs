//! Listeners as Istio sidecars use them: a bound listener (or the virtual outbound
//! listener on 15001 that hands connections on by original destination), filter
//! chains chosen by Envoy's `FilterChainMatch` rules, and what a chain does with a
//! connection (HTTP connection manager, TCP proxy, or refuse it).
//!
//! Owns the data and the pure choice of listener and filter chain. Sockets, sniffing
//! I/O and the HTTP server are the runtime's.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::common::{serde_opt_duration, Name};
use super::fault::FaultConfig;
use super::route::RouteTable;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Listener {
    pub name: Name,
    pub address: SocketAddr,
    /// `false`: not bound itself; reached through a `use_original_dst` listener.
    pub bind_to_port: bool,
    /// Hand accepted connections to the listener bound to their original destination.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_original_dst: bool,
    /// Match filter chains on the original destination (`original_dst` listener filter).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detect_original_dst: bool,
    /// Which listener filters inspect a new connection's first bytes.
    #[serde(default)]
    pub inspection: Inspection,
    pub filter_chains: Vec<FilterChain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_filter_chain: Option<FilterChain>,
    /// How long to wait for the first bytes when sniffing (`listener_filters_timeout`, Envoy: 15 s).
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub sniff_timeout: Option<Duration>,
    /// On sniff timeout, carry on with what is known (`continue_on_listener_filters_timeout`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_sniff_timeout: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLog>,
    /// `traffic_direction: INBOUND` (Istio's `virtualInbound`): the chains serving a
    /// local workload's inbound traffic, also what an HBONE stream carries once the
    /// tunnel is terminated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inbound: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilterChain {
    #[serde(default)]
    pub name: Name,
    #[serde(default, rename = "match")]
    pub matcher: FilterChainMatch,
    /// `envoy.filters.network.rbac` filters before the terminal filter, in order:
    /// each decides on the connection when it is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rbac: Vec<crate::authz::rbac::Rbac>,
    /// `envoy.filters.network.ext_authz` (CUSTOM on TCP): one check per connection,
    /// after the network RBAC filters (istiod puts its shadow RBAC first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_authz: Option<crate::authz::ext_authz::ExtAuthz>,
    /// The chain terminates TLS (`transport_socket`, Istio's mTLS on its inbound
    /// chains). node-proxy terminates no downstream TLS on listeners, so such a chain
    /// refuses the connections it is chosen for; a stream of an HBONE tunnel (whose
    /// mTLS the tunnel terminated) is served by its filters.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub downstream_tls: bool,
    pub kind: ChainKind,
}

/// What a connection must look like for a chain (Envoy's `FilterChainMatch`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterChainMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_ranges: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub application_protocols: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub direct_source_prefix_ranges: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "SourceType::is_any")]
    pub source_type: SourceType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_prefix_ranges: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ports: Vec<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SourceType {
    #[default]
    Any,
    SameIpOrLoopback,
    External,
}

impl SourceType {
    fn is_any(&self) -> bool {
        *self == SourceType::Any
    }
}

/// A filter chain of a listener, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainId {
    Index(usize),
    Default,
}

/// What the runtime knows of a connection when it picks a filter chain.
#[derive(Clone, Debug)]
pub struct ConnectionInfo<'a> {
    /// The (original) destination.
    pub destination: SocketAddr,
    pub source: SocketAddr,
    /// `tls` or `raw_buffer` (empty when not sniffed).
    pub transport_protocol: &'a str,
    pub application_protocols: &'a [&'a str],
    pub server_name: Option<&'a str>,
}

impl Listener {
    /// Names of the route configurations (RDS) its HTTP filter chains use.
    pub fn rds_names(&self) -> impl Iterator<Item = &Name> {
        self.filter_chains.iter().chain(self.default_filter_chain.iter()).filter_map(|chain| match &chain.kind {
            ChainKind::Http(hcm) => match &hcm.routes {
                RouteSource::Rds(name) => Some(name),
                RouteSource::Inline(_) => None,
            },
            _ => None,
        })
    }

    /// Envoy's filter chain selection: at each criterion in turn (destination port,
    /// destination IP, server name, transport protocol, application protocols,
    /// direct source IP, source type, source IP, source port) keep the chains with the
    /// most specific match, else those that do not constrain it. No backtracking.
    pub fn select_chain(&self, conn: &ConnectionInfo<'_>) -> Option<&FilterChain> {
        self.select_chain_id(conn).and_then(|id| self.chain(id))
    }

    pub fn chain(&self, id: ChainId) -> Option<&FilterChain> {
        match id {
            ChainId::Index(i) => self.filter_chains.get(i),
            ChainId::Default => self.default_filter_chain.as_ref(),
        }
    }

    /// [`Listener::select_chain`], naming the chain by position.
    pub fn select_chain_id(&self, conn: &ConnectionInfo<'_>) -> Option<ChainId> {
        let mut candidates: Vec<(usize, &FilterChain)> = self.filter_chains.iter().enumerate().collect();
        let steps: [&dyn Fn(&mut Candidates<'_>); 9] = [
            &|c| narrow_by(c, |m| m.destination_port.map(|p| if p == conn.destination.port() { 1 } else { -1 })),
            &|c| narrow_by(c, |m| longest_prefix(&m.prefix_ranges, conn.destination.ip())),
            &|c| narrow_by(c, |m| server_name_rank(&m.server_names, conn.server_name)),
            &|c| narrow_by(c, |m| m.transport_protocol.as_ref().map(|t| if t == conn.transport_protocol { 1 } else { -1 })),
            &|c| {
                narrow_by(c, |m| {
                    (!m.application_protocols.is_empty()).then(|| {
                        if m.application_protocols.iter().any(|p| conn.application_protocols.contains(&p.as_str())) {
                            1
                        } else {
                            -1
                        }
                    })
                })
            },
            &|c| narrow_by(c, |m| longest_prefix(&m.direct_source_prefix_ranges, conn.source.ip())),
            &|c| narrow_by(c, |m| source_type_rank(m.source_type, conn)),
            &|c| narrow_by(c, |m| longest_prefix(&m.source_prefix_ranges, conn.source.ip())),
            &|c| narrow_by(c, |m| (!m.source_ports.is_empty()).then(|| if m.source_ports.contains(&conn.source.port()) { 1 } else { -1 })),
        ];
        for step in steps {
            step(&mut candidates);
            if candidates.is_empty() {
                return self.default_filter_chain.as_ref().map(|_| ChainId::Default);
            }
        }
        candidates.first().map(|(i, _)| ChainId::Index(*i))
    }
}

/// The `tls_inspector` and `http_inspector` listener filters: without them a
/// connection is `raw_buffer` with no application protocol, and nothing is read
/// before a chain is chosen (so server-first protocols are not held up).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Inspection {
    pub tls: Inspect,
    pub http: Inspect,
}

impl Inspection {
    /// Which inspectors run for a connection to `port`: (tls, http).
    pub fn for_port(&self, port: u16) -> (bool, bool) {
        (self.tls.enabled_for(port), self.http.enabled_for(port))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inspect {
    #[default]
    Never,
    Always,
    /// Enabled except where the listener filter's `filter_disabled` predicate holds.
    Unless(PortPredicate),
}

impl Inspect {
    pub fn enabled_for(&self, port: u16) -> bool {
        match self {
            Inspect::Never => false,
            Inspect::Always => true,
            Inspect::Unless(p) => !p.matches(port),
        }
    }
}

/// Envoy's `ListenerFilterChainMatchPredicate` (destination port rules only exist).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortPredicate {
    Any,
    /// `[start, end)`.
    Range {
        start: u32,
        end: u32,
    },
    Or(Vec<PortPredicate>),
    And(Vec<PortPredicate>),
    Not(Box<PortPredicate>),
}

impl PortPredicate {
    pub fn matches(&self, port: u16) -> bool {
        match self {
            PortPredicate::Any => true,
            PortPredicate::Range { start, end } => (*start..*end).contains(&u32::from(port)),
            PortPredicate::Or(rules) => rules.iter().any(|r| r.matches(port)),
            PortPredicate::And(rules) => rules.iter().all(|r| r.matches(port)),
            PortPredicate::Not(rule) => !rule.matches(port),
        }
    }
}

/// Filter chains still in the running, with their positions.
type Candidates<'a> = Vec<(usize, &'a FilterChain)>;

/// Keeps the candidates with the best positive rank; if none has one, those that do
/// not constrain the criterion (`None`); a negative rank is a mismatch.
fn narrow_by(candidates: &mut Candidates<'_>, rank: impl Fn(&FilterChainMatch) -> Option<i32>) {
    let best = candidates.iter().filter_map(|(_, c)| rank(&c.matcher)).filter(|r| *r > 0).max();
    match best {
        Some(best) => candidates.retain(|(_, c)| rank(&c.matcher) == Some(best)),
        None => candidates.retain(|(_, c)| rank(&c.matcher).is_none()),
    }
}

/// 1 + the longest prefix length containing `ip`; -1 if ranges are set but none
/// contains it; `None` if no ranges are set.
fn longest_prefix(ranges: &[IpNet], ip: IpAddr) -> Option<i32> {
    if ranges.is_empty() {
        return None;
    }
    let ip = canonical(ip);
    Some(ranges.iter().filter(|r| r.contains(&ip)).map(|r| i32::from(r.prefix_len()) + 1).max().unwrap_or(-1))
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Exact names rank above wildcards; longer wildcards above shorter.
fn server_name_rank(names: &[String], sni: Option<&str>) -> Option<i32> {
    if names.is_empty() {
        return None;
    }
    let Some(sni) = sni else { return Some(-1) };
    let sni = sni.to_ascii_lowercase();
    let mut best = -1;
    for name in names {
        let name = name.to_ascii_lowercase();
        if name == sni {
            return Some(i32::MAX);
        }
        if let Some(suffix) = name.strip_prefix('*') {
            if sni.len() > suffix.len() && sni.ends_with(suffix) {
                best = best.max(suffix.len() as i32 + 1);
            }
        }
    }
    Some(best)
}

fn source_type_rank(t: SourceType, conn: &ConnectionInfo<'_>) -> Option<i32> {
    let local = conn.source.ip().is_loopback() || canonical(conn.source.ip()) == canonical(conn.destination.ip());
    match t {
        SourceType::Any => None,
        SourceType::SameIpOrLoopback => Some(if local { 1 } else { -1 }),
        SourceType::External => Some(if local { -1 } else { 1 }),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainKind {
    Http(Box<HttpConnectionManager>),
    Tcp(TcpProxy),
    /// A chain we cannot run as configured (e.g. a policy filter not supported yet):
    /// its connections are closed rather than served without the filter.
    Refuse {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub routes: RouteSource,
    /// The listener has the fault filter; routes may override its config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub has_fault_filter: bool,
    /// `envoy.filters.http.rbac` filters, in order: each decides on every request
    /// before it is routed; the first denial stops it (403).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rbac: Vec<crate::authz::rbac::Rbac>,
    /// `envoy.filters.http.ext_authz` (AuthorizationPolicy CUSTOM): runs between the
    /// RBAC filters at its position (`rbac_before`), keyed on their shadow metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_authz: Option<crate::authz::ext_authz::ExtAuthz>,
    /// `envoy.filters.http.jwt_authn` (RequestAuthentication): runs before the RBAC
    /// filters and gives them the verified token's claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<crate::authn::JwtAuthn>,
    /// Envoy: 5 min. `None`: disabled.
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<Duration>,
    /// Downstream connection idle timeout (Envoy: 1 h).
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Envoy: 60 KiB.
    pub max_request_headers_kb: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrades: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub normalize_path: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub merge_slashes: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Add an `x-request-id` when absent (Envoy's default).
    pub generate_request_id: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_remote_address: bool,
    /// `x-forwarded-client-cert` (`forward_client_cert_details`,
    /// `set_current_client_cert_details`).
    #[serde(default, skip_serializing_if = "ClientCert::is_default")]
    pub client_cert: ClientCert,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLog>,
}

/// What the connection manager does with `x-forwarded-client-cert` (Envoy's
/// `mutateXfccRequestHeader`): on a connection without a verified client certificate
/// the header is always removed (except `AlwaysForwardOnly`); with one, `Sanitize`
/// removes it, `ForwardOnly` keeps it, `AppendForward` appends this hop's element and
/// `SanitizeSet` replaces the header with it. The element: `By=<our URI SAN>`,
/// `Hash=<SHA-256 of the peer's certificate, hex>`, then the details asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCert {
    pub forward: ForwardClientCert,
    /// `Subject="<peer subject>"` (present even when empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub subject: bool,
    /// `DNS=<san>` per DNS SAN of the peer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dns: bool,
    /// `URI=<san>` per URI SAN of the peer (`URI=` when it has none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uri: bool,
}

impl ClientCert {
    pub fn is_default(&self) -> bool {
        *self == ClientCert::default()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ForwardClientCert {
    #[default]
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    Inline(Box<RouteTable>),
    /// A route configuration by name (RDS, or a top-level route in the file).
    Rds(Name),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub cluster: TcpCluster,
    /// Envoy: 1 h. `None`: disabled.
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Connection attempts before giving up (Envoy: 1).
    pub max_connect_attempts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLog>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpCluster {
    Cluster(Name),
    Weighted(Vec<(Name, u32)>),
}

/// Where and how to write access log lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessLog {
    /// A file path (`/dev/stdout` for standard output).
    pub path: String,
    pub format: AccessLogFormat,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// Istio's default text format (`%START_TIME% "%REQ(:METHOD)% …`).
    IstioText,
    /// The same fields as a JSON object (Istio's `JSON` encoding).
    IstioJson,
    /// An Envoy format string with `%COMMAND%` operators.
    Text(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(name: &str, matcher: FilterChainMatch) -> FilterChain {
        FilterChain { name: name.into(), matcher, rbac: Vec::new(), ext_authz: None, downstream_tls: false, kind: ChainKind::Refuse { reason: String::new() } }
    }

    fn listener(chains: Vec<FilterChain>) -> Listener {
        Listener {
            name: "l".into(),
            address: "0.0.0.0:15006".parse().unwrap(),
            bind_to_port: true,
            use_original_dst: false,
            detect_original_dst: false,
            inspection: Inspection::default(),
            filter_chains: chains,
            default_filter_chain: Some(chain("default", FilterChainMatch::default())),
            sniff_timeout: None,
            continue_on_sniff_timeout: false,
            inbound: false,
            access_log: vec![],
        }
    }

    fn conn<'a>(dst: &str, transport: &'a str, alpn: &'a [&'a str], sni: Option<&'a str>) -> ConnectionInfo<'a> {
        ConnectionInfo {
            destination: dst.parse().unwrap(),
            source: "198.18.0.9:40000".parse().unwrap(),
            transport_protocol: transport,
            application_protocols: alpn,
            server_name: sni,
        }
    }

    /// The shape of Istio's inbound listener: per-port chains split by TLS and by
    /// HTTP-vs-TCP, plus catch-all chains.
    fn inbound() -> Listener {
        let m = |port: Option<u16>, transport: Option<&str>, alpn: &[&str]| FilterChainMatch {
            destination_port: port,
            transport_protocol: transport.map(str::to_owned),
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        listener(vec![
            chain("9080-tls-http", m(Some(9080), Some("tls"), &["istio-http/1.0", "istio-http/1.1", "istio-h2"])),
            chain("9080-tls-tcp", m(Some(9080), Some("tls"), &[])),
            chain("9080-http", m(Some(9080), Some("raw_buffer"), &["http/1.1", "h2c"])),
            chain("9080-tcp", m(Some(9080), Some("raw_buffer"), &[])),
            chain("any-http", m(None, Some("raw_buffer"), &["http/1.1", "h2c"])),
            chain("any-tcp", m(None, None, &[])),
        ])
    }

    #[test]
    fn istio_inbound_chain_selection() {
        let l = inbound();
        let pick = |c: ConnectionInfo<'_>| l.select_chain(&c).map(|c| c.name.to_string());
        assert_eq!(pick(conn("198.18.0.1:9080", "raw_buffer", &["http/1.1"], None)).unwrap(), "9080-http");
        assert_eq!(pick(conn("198.18.0.1:9080", "raw_buffer", &[], None)).unwrap(), "9080-tcp");
        assert_eq!(pick(conn("198.18.0.1:9080", "tls", &["istio-h2"], None)).unwrap(), "9080-tls-http");
        assert_eq!(pick(conn("198.18.0.1:9080", "tls", &["h2"], None)).unwrap(), "9080-tls-tcp");
        assert_eq!(pick(conn("198.18.0.1:7000", "raw_buffer", &["h2c"], None)).unwrap(), "any-http");
        // TLS on a port without chains of its own falls to the catch-all.
        assert_eq!(pick(conn("198.18.0.1:7000", "tls", &[], None)).unwrap(), "any-tcp");
    }

    #[test]
    fn most_specific_prefix_and_server_name_win() {
        let l = listener(vec![
            chain("wide", FilterChainMatch { prefix_ranges: vec!["198.18.0.0/15".parse().unwrap()], ..Default::default() }),
            chain("narrow", FilterChainMatch { prefix_ranges: vec!["198.18.1.0/24".parse().unwrap()], ..Default::default() }),
            chain(
                "sni-exact",
                FilterChainMatch { prefix_ranges: vec!["198.19.0.0/16".parse().unwrap()], server_names: vec!["a.example.com".into()], ..Default::default() },
            ),
            chain(
                "sni-wild",
                FilterChainMatch { prefix_ranges: vec!["198.19.0.0/16".parse().unwrap()], server_names: vec!["*.example.com".into()], ..Default::default() },
            ),
        ]);
        let pick = |c: ConnectionInfo<'_>| l.select_chain(&c).map(|c| c.name.to_string());
        assert_eq!(pick(conn("198.18.1.5:80", "", &[], None)).unwrap(), "narrow");
        assert_eq!(pick(conn("198.18.2.5:80", "", &[], None)).unwrap(), "wide");
        assert_eq!(pick(conn("198.19.0.1:443", "tls", &[], Some("a.example.com"))).unwrap(), "sni-exact");
        assert_eq!(pick(conn("198.19.0.1:443", "tls", &[], Some("b.example.com"))).unwrap(), "sni-wild");
        assert_eq!(pick(conn("198.19.0.1:443", "tls", &[], Some("other.org"))).unwrap(), "default");
        assert_eq!(pick(conn("203.0.113.1:80", "", &[], None)).unwrap(), "default");
    }

    #[test]
    fn inspector_disabled_ports() {
        // Istio's virtualInbound: http_inspector off for 80 and 15006.
        let http = Inspect::Unless(PortPredicate::Or(vec![PortPredicate::Range { start: 80, end: 81 }, PortPredicate::Range { start: 15006, end: 15007 }]));
        let i = Inspection { tls: Inspect::Always, http };
        assert_eq!(i.for_port(80), (true, false));
        assert_eq!(i.for_port(9080), (true, true));
        assert_eq!(Inspection::default().for_port(9080), (false, false));
    }
}
