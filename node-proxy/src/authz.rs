//! Enforcing the listeners' RBAC filters, as Envoy does (the decision itself is
//! `istio_compat::authz::rbac`'s): HTTP requests before they are routed (403
//! `RBAC: access denied`; gRPC: PERMISSION_DENIED, trailers only), TCP connections
//! when accepted (closed). Every filter's decision is counted (Envoy's
//! `rbac.allowed/denied/shadow_allowed/shadow_denied`), shadow (dry-run) results
//! included, and a denial names its policy in `response_code_details`
//! (`rbac_access_denied_matched_policy[ns[foo]-policy[deny]-rule[0]]`).
//!
//! The peer's principal: a downstream on this node's pod network is the workload at
//! its address when that workload runs on this node (the node proxy acts for it, as
//! the pod's sidecar would see its own mTLS identity); nothing otherwise (plaintext).

use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use istio_compat::authz::rbac::{Rbac, Request};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::runtime::Shared;
use crate::telemetry::access_log::ResponseFlags;
use crate::telemetry::metrics::{Metrics, RbacLabels, RbacMetrics};

/// The principal the RBAC filters see for a downstream peer at `ip`.
pub fn peer_principal(shared: &Shared, ip: IpAddr) -> Option<String> {
    let mesh = shared.mesh.as_ref()?;
    let view = shared.workloads.load();
    let w = view.index.workload(&mesh.network, ip.to_canonical())?;
    (!mesh.node.is_empty() && *w.node == *mesh.node).then(|| w.identity.to_string())
}

/// The RBAC filters' counters, as one worker finds them: handles by filter kind and
/// stat prefix, so a decision increments its counters without hashing its labels into
/// the registry's families (SipHash and a lock per filter, a tenth of a ten-policy
/// decision). A handle is made on its first increment, so the exposition shows the
/// same series as the families alone would.
pub struct Counters {
    families: RbacMetrics,
    /// `[http, network]`: stat prefix -> its counters.
    by_prefix: [ByPrefix; 2],
}

type ByPrefix = RefCell<HashMap<Box<str>, Rc<Handles>, foldhash::fast::RandomState>>;

#[derive(Default)]
struct Handles {
    allowed: OnceCell<Counter>,
    denied: OnceCell<Counter>,
    shadow_allowed: OnceCell<Counter>,
    shadow_denied: OnceCell<Counter>,
}

/// Bound on cached stat prefixes per kind and worker (config churn); beyond it the
/// cache starts over.
const COUNTER_CACHE_LIMIT: usize = 1024;

impl Counters {
    pub fn new(metrics: &Metrics) -> Self {
        Counters { families: metrics.rbac.clone(), by_prefix: Default::default() }
    }

    fn handles(&self, kind: &'static str, stat_prefix: &str) -> Rc<Handles> {
        let mut cache = self.by_prefix[usize::from(kind != "http")].borrow_mut();
        if let Some(h) = cache.get(stat_prefix) {
            return h.clone();
        }
        if cache.len() >= COUNTER_CACHE_LIMIT {
            cache.clear();
        }
        cache.entry(stat_prefix.into()).or_default().clone()
    }

    fn inc(&self, cell: &OnceCell<Counter>, family: &Family<RbacLabels, Counter>, kind: &'static str, stat_prefix: &str) {
        cell.get_or_init(|| family.get_or_create_owned(&RbacLabels { filter: kind, stat_prefix: stat_prefix.to_owned() })).inc();
    }
}

/// Runs `filters` in order on `req`, as Envoy's filter chain does: the first denial
/// stops it. `Err` carries Envoy's `response_code_details` for the denial.
/// `owner_prefix` labels the metrics (the connection manager's stat prefix for HTTP
/// filters; a network filter's own otherwise).
pub fn check(counters: &Counters, kind: &'static str, owner_prefix: Option<&str>, filters: &[Rbac], req: &Request<'_>) -> Result<(), String> {
    let owner = owner_prefix.map(|prefix| (prefix, counters.handles(kind, prefix)));
    for filter in filters {
        let d = filter.evaluate(req);
        let (prefix, handles) = match &owner {
            Some((prefix, handles)) => (*prefix, handles.clone()),
            None => (filter.stat_prefix.as_str(), counters.handles(kind, &filter.stat_prefix)),
        };
        let families = &counters.families;
        if let Some(shadow) = d.shadow {
            if shadow.allowed {
                counters.inc(&handles.shadow_allowed, &families.shadow_allowed, kind, prefix);
            } else {
                counters.inc(&handles.shadow_denied, &families.shadow_denied, kind, prefix);
                tracing::debug!(target: "rbac", policy = shadow.policy.unwrap_or("none"), source = %req.source, "shadow (dry-run) rules would deny");
            }
        }
        if d.allowed {
            if filter.rules.is_some() {
                counters.inc(&handles.allowed, &families.allowed, kind, prefix);
            }
            continue;
        }
        counters.inc(&handles.denied, &families.denied, kind, prefix);
        let policy = d.policy.unwrap_or("none");
        tracing::debug!(target: "rbac", policy, source = %req.source, principal = req.peer_principal.unwrap_or("-"), "RBAC denied");
        return Err(format!("rbac_access_denied_matched_policy[{policy}]"));
    }
    Ok(())
}

/// Why a connection's network filters refused it, for its access log line.
#[derive(Debug)]
pub struct Refused {
    /// Envoy's `response_code_details`.
    pub details: String,
    /// `UAEX` when CUSTOM (ext_authz) refused it, as Envoy's network filter sets it.
    pub flags: ResponseFlags,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.details)
    }
}

impl From<String> for Refused {
    /// An RBAC denial (no response flag).
    fn from(details: String) -> Self {
        Refused { details, flags: ResponseFlags::NONE }
    }
}

/// A new connection's network filters, in chain order: the RBAC filters and, where
/// istiod put it among them (after its shadow RBAC, before DENY and ALLOW), CUSTOM
/// (network ext_authz, one check per connection).
pub async fn connection(
    worker: &std::rc::Rc<crate::runtime::Worker>,
    chain: &istio_compat::model::listener::FilterChain,
    remote: std::net::SocketAddr,
    destination: std::net::SocketAddr,
    server_name: Option<&str>,
    peer_principal: Option<&str>,
) -> Result<(), Refused> {
    use istio_compat::authz::ext_authz::{shadow_metadata, CheckInput, NETWORK_RBAC_NAMESPACE};
    if chain.rbac.is_empty() && chain.ext_authz.is_none() {
        return Ok(());
    }
    let mut req = Request::tcp(remote, destination);
    req.requested_server_name = server_name.unwrap_or("");
    req.peer_principal = peer_principal;
    let counters = &worker.rbac_counters;
    let (before, after) = chain.rbac.split_at(chain.ext_authz.as_ref().map_or(0, |e| e.rbac_before.min(chain.rbac.len())));
    check(counters, "network", None, before, &req)?;
    if let Some(cfg) = &chain.ext_authz {
        let metadata = shadow_metadata(NETWORK_RBAC_NAMESPACE, before, &req);
        let input = CheckInput { source: remote, destination, source_principal: peer_principal, destination_principal: None, http: None };
        if !crate::ext_authz::check_connection(worker, cfg, &metadata, &input).await {
            return Err(Refused { details: crate::ext_authz::DENIED_DETAILS.to_owned(), flags: ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE });
        }
    }
    Ok(check(counters, "network", None, after, &req)?)
}
