//! Envoy's RBAC filters (`envoy.filters.http.rbac`, `envoy.filters.network.rbac`) as
//! istiod emits them for AuthorizationPolicy: the model, and the decision Envoy takes.
//!
//! Owns: the policy model ([`Rbac`], [`RuleSet`], [`Policy`], [`Permission`],
//! [`Principal`]), its translation from the filters' typed configuration
//! ([`rbac_from_http`], [`rbac_from_network`]), and evaluation over an I/O-free
//! [`Request`] view. Does not own where the filters sit in a listener, the CUSTOM
//! action (istiod emits it as `ext_authz` filters, recognised by [`EXT_AUTHZ_TYPE_URLS`]),
//! nor enforcement (403 `RBAC: access denied`, gRPC PERMISSION_DENIED, closing a
//! connection).
//!
//! Semantics, as Envoy's `source/extensions/filters/common/rbac` has them:
//! - A rule set's policies are tried in name order (Envoy keeps them in a `std::map`);
//!   the first that matches is the effective policy. A policy matches when one of its
//!   permissions and one of its principals match.
//! - ALLOW: allowed iff a policy matches. DENY: allowed iff none does. LOG: always
//!   allowed; whether a policy matched is the `envoy.common/access_log_hint`.
//! - A filter without `rules` enforces nothing; `shadow_rules` only report
//!   (`<shadow_rules_stat_prefix>shadow_effective_policy_id` and `…shadow_engine_result`).
//! - On a TCP connection (network filter) there are no request headers: header
//!   matchers see every header absent, and `url_path` and `uri_template` never match.
//!   istiod already leaves HTTP-only fields out of TCP ALLOW rules (dropping the rule)
//!   and widens TCP DENY rules, so the network filter is never more permissive.
//! - `authenticated` matches only a verified TLS peer; its matcher sees the URI SAN
//!   (`spiffe://td/ns/N/sa/S`, scheme included), and no matcher means any peer. The
//!   filter-state principal `io.istio.peer_principal` (istiod's `UseFilterState`
//!   output, as in the corpus's sidecar dump) sees the same.
//! - `direct_remote_ip` is the peer of the connection, `remote_ip` the original client
//!   (after XFF / PROXY protocol), `source_ip` (deprecated) the connection's peer;
//!   `destination_ip`/`destination_port` the local address the client connected to.

mod compiled;
mod translate;
mod uri_template;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub(crate) use self::translate::metadata_matcher;
pub use self::translate::{rbac_from_http, rbac_from_network, EXT_AUTHZ_TYPE_URLS, HTTP_RBAC_TYPE_URL, NETWORK_RBAC_TYPE_URL};
pub use self::uri_template::UriTemplate;
use crate::model::common::{Name, StringMatcher};
use crate::model::route::{HeaderMatcher, RequestHead};

/// The filter namespace of the JWT payload in dynamic metadata (`jwt_authn`).
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The key istiod's `jwt_authn` configuration stores the verified payload under.
pub const JWT_PAYLOAD_KEY: &str = "payload";

/// One RBAC filter's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rbac {
    /// The enforced rules; `None`: the filter allows everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<RuleSet>,
    /// Rules that are evaluated and reported, never enforced (Istio's dry-run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<RuleSet>,
    /// Prefix of the shadow rules' dynamic-metadata keys and stats.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub shadow_stat_prefix: String,
    /// HTTP: `rules_stat_prefix`; network: `stat_prefix`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stat_prefix: String,
    /// Network filter only: when the decision is taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
}

/// When the network filter decides (`enforcement_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Once, on the connection's first bytes (Envoy's default).
    OneTimeOnFirstByte,
    /// On every chunk of data (for dynamic metadata that changes during the connection).
    Continuous,
}

/// `envoy.config.rbac.v3.RBAC`: an action and its policies, in the order Envoy tries them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleSet {
    pub action: Action,
    /// Sorted by name.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// The policies in evaluation form, derived from `policies` (by [`RuleSet::new`]
    /// or on the first decision); not serialised, and equal whatever it holds. A rule
    /// set built field by field takes `Default::default()`. Edit `policies` only before
    /// the first decision (snapshots are immutable): a rule set whose policy count
    /// changed afterwards is evaluated without it, but an edit in place is not seen.
    #[serde(skip)]
    pub index: PolicyIndex,
}

/// A [`RuleSet`]'s policies in evaluation form (see the `compiled` module): Istio's
/// identity regexes matched structurally, policies indexed by the namespace their
/// principals require. Clones share it.
#[derive(Clone, Default)]
pub struct PolicyIndex(OnceLock<Arc<compiled::Compiled>>);

impl PolicyIndex {
    fn get(&self, policies: &[Policy]) -> &compiled::Compiled {
        self.0.get_or_init(|| Arc::new(compiled::Compiled::new(policies)))
    }
}

impl PartialEq for PolicyIndex {
    /// Derived data: two rule sets are equal when their action and policies are.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for PolicyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "PolicyIndex(built)" } else { "PolicyIndex(unbuilt)" })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// A named policy: it matches when one permission and one principal match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// istiod's `ns[<ns>]-policy[<name>]-rule[<i>]`.
    pub name: Name,
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// What the request does (`envoy.config.rbac.v3.Permission`). An and/or set of one
/// element is translated to that element (same decision, one level less to walk).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Any,
    AndRules(Vec<Permission>),
    OrRules(Vec<Permission>),
    NotRule(Box<Permission>),
    Header(HeaderMatcher),
    /// On the path without query and fragment.
    UrlPath(StringMatcher),
    UriTemplate(UriTemplate),
    DestinationIp(IpNet),
    DestinationPort(u16),
    /// `[start, end)`.
    DestinationPortRange {
        start: u16,
        end: u32,
    },
    RequestedServerName(StringMatcher),
    Metadata(MetadataMatcher),
}

/// Who sends the request (`envoy.config.rbac.v3.Principal`); sets of one are
/// collapsed as for [`Permission`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    Any,
    AndIds(Vec<Principal>),
    OrIds(Vec<Principal>),
    NotId(Box<Principal>),
    /// A verified TLS peer; `None`: any such peer.
    Authenticated(Option<StringMatcher>),
    SourceIp(IpNet),
    DirectRemoteIp(IpNet),
    RemoteIp(IpNet),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
    Metadata(MetadataMatcher),
    /// `filter_state` `io.istio.peer_principal`: the peer identity Istio's proxies
    /// record (istiod's `UseFilterState` emits it instead of `authenticated`). Here
    /// it is the verified peer, who presents the source workload's identity.
    PeerPrincipal(StringMatcher),
}

impl Principal {
    /// Whether it has a `remote_ip` test anywhere.
    pub fn reads_remote_ip(&self) -> bool {
        match self {
            Principal::AndIds(ids) | Principal::OrIds(ids) => ids.iter().any(Principal::reads_remote_ip),
            Principal::NotId(id) => id.reads_remote_ip(),
            Principal::RemoteIp(_) => true,
            _ => false,
        }
    }
}

/// The filter-state key of [`Principal::PeerPrincipal`].
pub const PEER_PRINCIPAL_FILTER_STATE: &str = "io.istio.peer_principal";

/// Envoy's `MetadataMatcher` over the request's dynamic metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetadataMatcher {
    pub filter: String,
    pub path: Vec<String>,
    pub value: ValueMatcher,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// Envoy's `ValueMatcher` on a `google.protobuf.Value` (here its JSON form).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueMatcher {
    Null,
    Double(DoubleMatch),
    String(StringMatcher),
    Bool(bool),
    Present(bool),
    /// A list value with one element that matches.
    ListOneOf(Box<ValueMatcher>),
    Or(Vec<ValueMatcher>),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoubleMatch {
    /// `[start, end)`.
    Range {
        start: f64,
        end: f64,
    },
    Exact(f64),
}

/// Dynamic metadata: filter namespace -> its struct, in JSON form.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// Dynamic metadata carrying a verified JWT's payload where istiod's rules look for it.
pub fn jwt_metadata(payload: serde_json::Value) -> Metadata {
    let mut inner = serde_json::Map::new();
    inner.insert(JWT_PAYLOAD_KEY.to_owned(), payload);
    let mut md = Metadata::new();
    md.insert(JWT_AUTHN_FILTER.to_owned(), serde_json::Value::Object(inner));
    md
}

/// A connection or request as RBAC sees it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The connection's peer (`source_ip`).
    pub source: SocketAddr,
    /// The downstream peer before XFF (`direct_remote_ip`); usually `source`.
    pub direct_remote: SocketAddr,
    /// The original client (`remote_ip`): from XFF or PROXY protocol, else `direct_remote`.
    pub remote: SocketAddr,
    /// The local address the client connected to (`destination_ip`, `destination_port`).
    pub destination: SocketAddr,
    /// TLS SNI; empty without.
    pub requested_server_name: &'a str,
    /// The verified TLS peer's URI SAN, scheme included (`spiffe://…`); `None` without
    /// a verified peer.
    pub peer_principal: Option<&'a str>,
    /// The request head; `None` on a TCP connection (the network filter).
    pub http: Option<RequestHead<'a>>,
    /// Dynamic metadata (a verified JWT: [`jwt_metadata`]).
    pub metadata: Option<&'a Metadata>,
}

impl<'a> Request<'a> {
    /// A plaintext TCP connection from `source` to `destination`.
    pub fn tcp(source: SocketAddr, destination: SocketAddr) -> Self {
        Request { source, direct_remote: source, remote: source, destination, requested_server_name: "", peer_principal: None, http: None, metadata: None }
    }

    /// A header as Envoy's header matchers see it; none on a TCP connection. The
    /// pseudo-headers istiod matches most come first.
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow::Borrowed;
        let head = self.http.as_ref()?;
        match name {
            ":method" => Some(Borrowed(head.method.as_str())),
            ":authority" => Some(Borrowed(head.authority)),
            _ => head.header(name),
        }
    }

    /// The path without query and fragment (`RequestHead::path_only`, by bytes).
    fn path(&self) -> Option<&str> {
        let path = self.http.as_ref()?.path;
        let end = path.bytes().position(|b| b == b'?' || b == b'#').unwrap_or(path.len());
        Some(&path[..end])
    }

    fn metadata_value(&self, filter: &str, path: &[String]) -> Option<&serde_json::Value> {
        let mut value = self.metadata?.get(filter)?;
        for key in path {
            value = value.as_object()?.get(key)?;
        }
        Some(value)
    }
}

impl Permission {
    pub fn matches(&self, req: &Request<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::AndRules(rules) => rules.iter().all(|r| r.matches(req)),
            Permission::OrRules(rules) => rules.iter().any(|r| r.matches(req)),
            Permission::NotRule(rule) => !rule.matches(req),
            Permission::Header(h) => header_matches(h, req),
            Permission::UrlPath(m) => req.path().is_some_and(|p| m.matches(p)),
            Permission::UriTemplate(t) => req.path().is_some_and(|p| t.matches(p)),
            Permission::DestinationIp(net) => net.contains(&canonical(req.destination.ip())),
            Permission::DestinationPort(port) => req.destination.port() == *port,
            Permission::DestinationPortRange { start, end } => {
                let port = req.destination.port();
                *start <= port && u32::from(port) < *end
            }
            Permission::RequestedServerName(m) => m.matches(req.requested_server_name),
            Permission::Metadata(m) => m.matches(req),
        }
    }
}

impl Principal {
    pub fn matches(&self, req: &Request<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::AndIds(ids) => ids.iter().all(|i| i.matches(req)),
            Principal::OrIds(ids) => ids.iter().any(|i| i.matches(req)),
            Principal::NotId(id) => !id.matches(req),
            Principal::Authenticated(m) => match (req.peer_principal, m) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(p), Some(m)) => m.matches(p),
            },
            Principal::SourceIp(net) => net.contains(&canonical(req.source.ip())),
            Principal::DirectRemoteIp(net) => net.contains(&canonical(req.direct_remote.ip())),
            Principal::RemoteIp(net) => net.contains(&canonical(req.remote.ip())),
            Principal::Header(h) => header_matches(h, req),
            Principal::UrlPath(m) => req.path().is_some_and(|p| m.matches(p)),
            Principal::Metadata(m) => m.matches(req),
            // Envoy: no filter-state object, no match.
            Principal::PeerPrincipal(m) => req.peer_principal.is_some_and(|p| m.matches(p)),
        }
    }
}

/// Envoy's `HeaderUtility::matchHeaders`; a TCP connection has no headers at all.
fn header_matches(h: &HeaderMatcher, req: &Request<'_>) -> bool {
    h.matches_value(req.header(&h.name).as_deref())
}

impl MetadataMatcher {
    pub fn matches(&self, req: &Request<'_>) -> bool {
        self.value.matches(req.metadata_value(&self.filter, &self.path)) != self.invert
    }
}

impl ValueMatcher {
    /// `value`: `None` when the path leads nowhere (Envoy's unset `Value`).
    pub fn matches(&self, value: Option<&serde_json::Value>) -> bool {
        use serde_json::Value as V;
        match (self, value) {
            (ValueMatcher::Present(p), v) => *p && v.is_some(),
            (_, None) => false,
            (ValueMatcher::Null, Some(v)) => v.is_null(),
            (ValueMatcher::Double(d), Some(V::Number(n))) => n.as_f64().is_some_and(|n| d.matches(n)),
            (ValueMatcher::String(m), Some(V::String(s))) => m.matches(s),
            (ValueMatcher::Bool(b), Some(V::Bool(v))) => b == v,
            (ValueMatcher::ListOneOf(m), Some(V::Array(items))) => items.iter().any(|i| m.matches(Some(i))),
            (ValueMatcher::Or(ms), v) => ms.iter().any(|m| m.matches(v)),
            _ => false,
        }
    }
}

impl DoubleMatch {
    pub fn matches(&self, v: f64) -> bool {
        match *self {
            DoubleMatch::Range { start, end } => start <= v && v < end,
            DoubleMatch::Exact(e) => e == v,
        }
    }
}

impl Policy {
    /// Whether a principal of it tests `remote_ip`.
    pub fn reads_remote_ip(&self) -> bool {
        self.principals.iter().any(Principal::reads_remote_ip)
    }

    pub fn matches(&self, req: &Request<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(req)) && self.principals.iter().any(|p| p.matches(req))
    }
}

/// What one rule set decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineResult<'r> {
    pub allowed: bool,
    /// The first matching policy, whatever the action.
    pub policy: Option<&'r str>,
}

impl RuleSet {
    /// A rule set with its evaluation form built (`policies` sorted by name).
    pub fn new(action: Action, policies: Vec<Policy>) -> Self {
        let rules = RuleSet { action, policies, index: PolicyIndex::default() };
        rules.index.get(&rules.policies);
        rules
    }

    /// The name of the first matching policy.
    pub fn evaluate(&self, req: &Request<'_>) -> Option<&str> {
        let index = self.index.get(&self.policies);
        if index.len != self.policies.len() {
            return self.evaluate_directly(req);
        }
        index.first_match(req).map(|i| &*self.policies[i].name)
    }

    /// Whether a decision may read the request's `remote` (a `remote_ip` principal):
    /// the caller may skip finding the original client otherwise.
    pub fn reads_remote_ip(&self) -> bool {
        let index = self.index.get(&self.policies);
        if index.len != self.policies.len() {
            return self.policies.iter().any(Policy::reads_remote_ip);
        }
        index.reads_remote_ip
    }

    /// [`RuleSet::evaluate`] by trying every policy in turn ([`Policy::matches`]):
    /// the reference the evaluation form must agree with.
    pub fn evaluate_directly(&self, req: &Request<'_>) -> Option<&str> {
        self.policies.iter().find(|p| p.matches(req)).map(|p| &*p.name)
    }

    /// Envoy's `handleAction`: the decision of this rule set alone.
    pub fn decide(&self, req: &Request<'_>) -> EngineResult<'_> {
        let policy = self.evaluate(req);
        let allowed = match self.action {
            Action::Allow => policy.is_some(),
            Action::Deny => policy.is_none(),
            Action::Log => true,
        };
        EngineResult { allowed, policy }
    }
}

/// What one RBAC filter decided, with what Envoy writes to dynamic metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterDecision<'r> {
    /// The enforced result: `true` without rules.
    pub allowed: bool,
    /// The enforced rules' matching policy.
    pub policy: Option<&'r str>,
    /// LOG rules: `envoy.common/access_log_hint` (whether a policy matched).
    pub log: Option<bool>,
    /// The shadow rules' result, when there are shadow rules.
    pub shadow: Option<EngineResult<'r>>,
}

impl Rbac {
    pub fn evaluate(&self, req: &Request<'_>) -> FilterDecision<'_> {
        let shadow = self.shadow.as_ref().map(|s| s.decide(req));
        let (allowed, policy, log) = match &self.rules {
            None => (true, None, None),
            Some(rules) => {
                let r = rules.decide(req);
                (r.allowed, r.policy, (rules.action == Action::Log).then_some(r.policy.is_some()))
            }
        };
        FilterDecision { allowed, policy, log, shadow }
    }

    /// Whether its rules or shadow rules may read the request's `remote` (see
    /// [`RuleSet::reads_remote_ip`]).
    pub fn reads_remote_ip(&self) -> bool {
        self.rules.iter().chain(&self.shadow).any(RuleSet::reads_remote_ip)
    }

    /// The dynamic metadata Envoy writes for the shadow rules, under the filter's own
    /// name: `<prefix>shadow_effective_policy_id` (when one matched) and
    /// `<prefix>shadow_engine_result` (`allowed` / `denied`). istiod's CUSTOM action
    /// keys `ext_authz` on these (`istio_ext_authz_shadow_effective_policy_id`).
    pub fn shadow_metadata(&self, decision: &FilterDecision<'_>) -> Vec<(String, String)> {
        let Some(shadow) = decision.shadow else { return Vec::new() };
        let mut out = Vec::with_capacity(2);
        if let Some(policy) = shadow.policy {
            out.push((format!("{}shadow_effective_policy_id", self.shadow_stat_prefix), policy.to_owned()));
        }
        let result = if shadow.allowed { "allowed" } else { "denied" };
        out.push((format!("{}shadow_engine_result", self.shadow_stat_prefix), result.to_owned()));
        out
    }
}

/// The decision of a chain of RBAC filters in the order they run: the first denial
/// stops the chain, as in Envoy. istiod's order (its authz `builder.go`): CUSTOM's
/// shadow RBAC and `ext_authz` filters, then AUDIT (LOG), the root namespace's DENY,
/// DENY, and ALLOW.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision<'r> {
    /// Every filter allowed; `log` when an AUDIT (LOG) policy matched.
    Allowed { log: bool },
    /// Filter `filter` (its index in the chain) denied; `policy` is the DENY policy
    /// that matched (`None` when ALLOW policies exist and none matched). `log`: an
    /// AUDIT filter before it matched (Envoy has already set the access-log hint).
    Denied { filter: usize, policy: Option<&'r str>, log: bool },
}

impl Decision<'_> {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// Runs `filters` in order on `req`.
pub fn decide<'r>(filters: impl IntoIterator<Item = &'r Rbac>, req: &Request<'_>) -> Decision<'r> {
    let mut log = false;
    for (i, filter) in filters.into_iter().enumerate() {
        let d = filter.evaluate(req);
        if !d.allowed {
            return Decision::Denied { filter: i, policy: d.policy, log };
        }
        log |= d.log == Some(true);
    }
    Decision::Allowed { log }
}

/// A v4-mapped IPv6 address as IPv4, as Envoy reports addresses of dual-stack sockets.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;
