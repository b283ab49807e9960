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

use std::net::IpAddr;

use istio_compat::authz::rbac::{Rbac, Request};

use crate::runtime::Shared;
use crate::telemetry::access_log::ResponseFlags;
use crate::telemetry::metrics::{Metrics, RbacLabels};

/// The principal the RBAC filters see for a downstream peer at `ip`.
pub fn peer_principal(shared: &Shared, ip: IpAddr) -> Option<String> {
    let mesh = shared.mesh.as_ref()?;
    let view = shared.workloads.load();
    let w = view.index.workload(&mesh.network, ip.to_canonical())?;
    (!mesh.node.is_empty() && *w.node == *mesh.node).then(|| w.identity.to_string())
}

/// Runs `filters` in order on `req`, as Envoy's filter chain does: the first denial
/// stops it. `Err` carries Envoy's `response_code_details` for the denial.
/// `owner_prefix` labels the metrics (the connection manager's stat prefix for HTTP
/// filters; a network filter's own otherwise).
pub fn check(metrics: &Metrics, kind: &'static str, owner_prefix: Option<&str>, filters: &[Rbac], req: &Request<'_>) -> Result<(), String> {
    for filter in filters {
        let d = filter.evaluate(req);
        let labels = RbacLabels { filter: kind, stat_prefix: owner_prefix.unwrap_or(&filter.stat_prefix).to_owned() };
        if let Some(shadow) = d.shadow {
            let family = if shadow.allowed { &metrics.rbac.shadow_allowed } else { &metrics.rbac.shadow_denied };
            family.get_or_create(&labels).inc();
            if !shadow.allowed {
                tracing::debug!(target: "rbac", policy = shadow.policy.unwrap_or("none"), source = %req.source, "shadow (dry-run) rules would deny");
            }
        }
        if d.allowed {
            if filter.rules.is_some() {
                metrics.rbac.allowed.get_or_create(&labels).inc();
            }
            continue;
        }
        metrics.rbac.denied.get_or_create(&labels).inc();
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
    let metrics = &worker.shared.metrics;
    let (before, after) = chain.rbac.split_at(chain.ext_authz.as_ref().map_or(0, |e| e.rbac_before.min(chain.rbac.len())));
    check(metrics, "network", None, before, &req)?;
    if let Some(cfg) = &chain.ext_authz {
        let metadata = shadow_metadata(NETWORK_RBAC_NAMESPACE, before, &req);
        let input = CheckInput { source: remote, destination, source_principal: peer_principal, destination_principal: None, http: None };
        if !crate::ext_authz::check_connection(worker, cfg, &metadata, &input).await {
            return Err(Refused { details: crate::ext_authz::DENIED_DETAILS.to_owned(), flags: ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE });
        }
    }
    Ok(check(metrics, "network", None, after, &req)?)
}
