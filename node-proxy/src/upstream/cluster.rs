//! A cluster at run time: its hosts and balancing view, circuit breakers, outlier
//! detection and counters. Shared by all workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use istio_compat::model::cluster::{Cluster, Discovery, EndpointAddress};
use istio_compat::model::Name;

use super::host::Host;
use super::lb::LbView;
use super::outlier::{self, EjectionReason, Outcome};

pub struct ClusterState {
    pub name: Name,
    pub config: Arc<Cluster>,
    /// Every host, all priorities (outlier detection and stats walk this).
    hosts: ArcSwap<Vec<Arc<Host>>>,
    view: ArcSwap<LbView>,
    pub stats: ClusterStats,
    /// The `destination_*` metric labels for requests to this cluster.
    destination: std::sync::OnceLock<Arc<crate::telemetry::metrics::DestinationLabels>>,
}

/// Gauges and counters of one cluster (Envoy's `cluster.<name>.*` stats).
#[derive(Default)]
pub struct ClusterStats {
    pub active_requests: AtomicU64,
    pub pending_requests: AtomicU64,
    pub active_retries: AtomicU64,
    pub active_connections: AtomicU64,
    pub rq_retry: AtomicU64,
    pub rq_retry_success: AtomicU64,
    pub rq_retry_overflow: AtomicU64,
    pub rq_retry_limit_exceeded: AtomicU64,
    pub rq_pending_overflow: AtomicU64,
    pub rq_overflow: AtomicU64,
    pub cx_overflow: AtomicU64,
    pub cx_total: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub cx_connect_timeout: AtomicU64,
    pub rq_timeout: AtomicU64,
    pub rq_per_try_timeout: AtomicU64,
    pub outlier_ejections_total: AtomicU64,
    pub outlier_ejections_consecutive_5xx: AtomicU64,
    pub outlier_ejections_consecutive_gateway_failure: AtomicU64,
    pub outlier_ejections_consecutive_local_origin_failure: AtomicU64,
    pub outlier_ejections_success_rate: AtomicU64,
    pub outlier_ejections_failure_percentage: AtomicU64,
}

impl ClusterState {
    /// Builds the runtime cluster; hosts still present in `previous` keep their
    /// load and health state.
    pub fn new(config: Arc<Cluster>, previous: Option<&ClusterState>) -> Self {
        let reuse: HashMap<SocketAddr, Arc<Host>> = previous.map(|p| p.hosts().iter().map(|h| (h.address, h.clone())).collect()).unwrap_or_default();
        let mut by_priority = Vec::with_capacity(config.priorities.len());
        for (priority, localities) in config.priorities.iter().enumerate() {
            let mut hosts = Vec::new();
            for locality in localities {
                let loc = Arc::new(locality.locality.clone());
                for ep in &locality.endpoints {
                    let EndpointAddress::Socket(addr) = ep.address else { continue };
                    let tls = config.tls.required_for(ep);
                    let host = match reuse.get(&addr) {
                        Some(h) if h.weight == ep.weight && h.health == ep.health && h.priority == priority && h.tls_required == tls => h.clone(),
                        _ => Arc::new(Host::new(addr, ep.weight, ep.health, priority, loc.clone(), tls, ep.workload.as_deref().map(Arc::from))),
                    };
                    hosts.push(host);
                }
            }
            by_priority.push(hosts);
        }
        let flat: Vec<Arc<Host>> = by_priority.iter().flatten().cloned().collect();
        let view = LbView::new(by_priority, &config.lb, config.healthy_panic_threshold);
        ClusterState {
            name: config.name.clone(),
            hosts: ArcSwap::from_pointee(flat),
            view: ArcSwap::from_pointee(view),
            stats: ClusterStats::default(),
            destination: std::sync::OnceLock::new(),
            config,
        }
    }

    /// Carries counters over from the cluster this one replaces.
    pub fn inherit_stats(&self, previous: &ClusterState) {
        let s = &self.stats;
        let p = &previous.stats;
        for (a, b) in [
            (&s.rq_retry, &p.rq_retry),
            (&s.rq_retry_success, &p.rq_retry_success),
            (&s.rq_retry_overflow, &p.rq_retry_overflow),
            (&s.rq_retry_limit_exceeded, &p.rq_retry_limit_exceeded),
            (&s.rq_pending_overflow, &p.rq_pending_overflow),
            (&s.rq_overflow, &p.rq_overflow),
            (&s.cx_overflow, &p.cx_overflow),
            (&s.cx_total, &p.cx_total),
            (&s.cx_connect_fail, &p.cx_connect_fail),
            (&s.cx_connect_timeout, &p.cx_connect_timeout),
            (&s.rq_timeout, &p.rq_timeout),
            (&s.rq_per_try_timeout, &p.rq_per_try_timeout),
            (&s.outlier_ejections_total, &p.outlier_ejections_total),
            (&s.outlier_ejections_consecutive_5xx, &p.outlier_ejections_consecutive_5xx),
            (&s.outlier_ejections_consecutive_gateway_failure, &p.outlier_ejections_consecutive_gateway_failure),
            (&s.outlier_ejections_consecutive_local_origin_failure, &p.outlier_ejections_consecutive_local_origin_failure),
            (&s.outlier_ejections_success_rate, &p.outlier_ejections_success_rate),
            (&s.outlier_ejections_failure_percentage, &p.outlier_ejections_failure_percentage),
            // Gauges too: requests and connections in flight belong to the cluster by name.
            (&s.active_requests, &p.active_requests),
            (&s.pending_requests, &p.pending_requests),
            (&s.active_retries, &p.active_retries),
            (&s.active_connections, &p.active_connections),
        ] {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    pub fn destination_labels(&self) -> Arc<crate::telemetry::metrics::DestinationLabels> {
        self.destination.get_or_init(|| crate::telemetry::metrics::DestinationLabels::for_cluster(&self.config, None)).clone()
    }

    pub fn hosts(&self) -> arc_swap::Guard<Arc<Vec<Arc<Host>>>> {
        self.hosts.load()
    }

    pub fn view(&self) -> arc_swap::Guard<Arc<LbView>> {
        self.view.load()
    }

    /// Replaces the hosts (DNS resolution); existing hosts keep their state.
    pub fn set_resolved(&self, addresses: Vec<SocketAddr>) {
        let current = self.hosts();
        let mut hosts = Vec::with_capacity(addresses.len());
        for addr in addresses {
            let host = current.iter().find(|h| h.address == addr).cloned().unwrap_or_else(|| {
                Arc::new(Host::new(addr, 1, Default::default(), 0, Arc::default(), self.config.tls == istio_compat::model::cluster::UpstreamTls::Always, None))
            });
            hosts.push(host);
        }
        drop(current);
        self.hosts.store(Arc::new(hosts.clone()));
        self.rebuild_view(vec![hosts]);
    }

    fn rebuild_view(&self, by_priority: Vec<Vec<Arc<Host>>>) {
        self.view.store(Arc::new(LbView::new(by_priority, &self.config.lb, self.config.healthy_panic_threshold)));
    }

    fn refresh_view(&self) {
        let hosts = self.hosts();
        let levels = hosts.iter().map(|h| h.priority).max().map_or(0, |m| m + 1);
        let mut by_priority = vec![Vec::new(); levels];
        for h in hosts.iter() {
            by_priority[h.priority].push(h.clone());
        }
        self.rebuild_view(by_priority);
    }

    pub fn is_dns(&self) -> bool {
        matches!(self.config.discovery, Discovery::StrictDns { .. } | Discovery::LogicalDns { .. })
    }

    /// Whether the control thread has timed work for it (outlier-detection intervals,
    /// DNS refreshes).
    pub fn has_timed_work(&self) -> bool {
        self.config.outlier_detection.is_some() || self.is_dns()
    }

    /// Feeds outlier detection with an attempt's outcome.
    pub fn record_outcome(&self, host: &Host, outcome: Outcome) {
        let Some(od) = &self.config.outlier_detection else { return };
        let hosts = self.hosts();
        if let Some(reason) = outlier::record(od, &hosts, host, outcome) {
            drop(hosts);
            self.note_ejection(host, reason);
            self.refresh_view();
        }
    }

    /// The outlier interval: un-eject and apply statistical detectors.
    pub fn outlier_interval(&self) {
        let Some(od) = &self.config.outlier_detection else { return };
        let hosts = self.hosts();
        let changes = outlier::on_interval(od, &hosts);
        drop(hosts);
        if changes.is_empty() {
            return;
        }
        for (host, reason) in &changes {
            match reason {
                Some(r) => self.note_ejection(host, *r),
                None => tracing::info!(cluster = %self.name, host = %host.address, "outlier detection: host returned to service"),
            }
        }
        self.refresh_view();
    }

    fn note_ejection(&self, host: &Host, reason: EjectionReason) {
        let s = &self.stats;
        s.outlier_ejections_total.fetch_add(1, Ordering::Relaxed);
        let counter = match reason {
            EjectionReason::Consecutive5xx => &s.outlier_ejections_consecutive_5xx,
            EjectionReason::ConsecutiveGatewayFailure => &s.outlier_ejections_consecutive_gateway_failure,
            EjectionReason::ConsecutiveLocalOriginFailure => &s.outlier_ejections_consecutive_local_origin_failure,
            EjectionReason::SuccessRate => &s.outlier_ejections_success_rate,
            EjectionReason::FailurePercentage => &s.outlier_ejections_failure_percentage,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(cluster = %self.name, host = %host.address, reason = reason.as_str(), "outlier detection: host ejected");
    }

    pub fn ejected_count(&self) -> usize {
        self.hosts().iter().filter(|h| h.is_ejected()).count()
    }

    /// A request slot under `max_requests`; `None` is an overflow (503 `UO`).
    pub fn try_start_request(self: &Arc<Self>) -> Option<Slot> {
        Slot::acquire(self, |s| &s.active_requests, u64::from(self.config.circuit_breakers.max_requests))
    }

    /// A retry slot under `max_retries`, or under the retry budget when configured.
    pub fn try_start_retry(self: &Arc<Self>) -> Option<Slot> {
        let cb = &self.config.circuit_breakers;
        let limit = match &cb.retry_budget {
            Some(budget) => budget.allowed(self.stats.active_requests.load(Ordering::Relaxed) + self.stats.pending_requests.load(Ordering::Relaxed)),
            None => u64::from(cb.max_retries),
        };
        Slot::acquire(self, |s| &s.active_retries, limit)
    }

    /// A pending-request slot under `max_pending_requests`.
    pub fn try_start_pending(self: &Arc<Self>) -> Option<Slot> {
        Slot::acquire(self, |s| &s.pending_requests, u64::from(self.config.circuit_breakers.max_pending_requests))
    }

    /// A connection slot under `max_connections`.
    pub fn try_start_connection(self: &Arc<Self>) -> Option<Slot> {
        Slot::acquire(self, |s| &s.active_connections, u64::from(self.config.circuit_breakers.max_connections))
    }
}

/// One unit of a circuit-breaker resource, released on drop.
pub struct Slot {
    cluster: Arc<ClusterState>,
    gauge: fn(&ClusterStats) -> &AtomicU64,
}

impl Slot {
    fn acquire(cluster: &Arc<ClusterState>, gauge: fn(&ClusterStats) -> &AtomicU64, limit: u64) -> Option<Slot> {
        let g = gauge(&cluster.stats);
        let mut current = g.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match g.compare_exchange_weak(current, current + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Slot { cluster: cluster.clone(), gauge }),
                Err(actual) => current = actual,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        (self.gauge)(&self.cluster.stats).fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use istio_compat::model::cluster::{Endpoint, HealthStatus, LocalityEndpoints};

    fn cluster(max_requests: u32) -> Arc<ClusterState> {
        let mut c = Cluster::new("c", Discovery::Static);
        c.circuit_breakers.max_requests = max_requests;
        c.priorities = vec![vec![LocalityEndpoints {
            locality: Default::default(),
            weight: None,
            endpoints: vec![Endpoint {
                address: EndpointAddress::Socket("198.18.0.1:80".parse().unwrap()),
                weight: 1,
                health: HealthStatus::Healthy,
                tls_mode: None,
                workload: None,
            }],
        }]];
        Arc::new(ClusterState::new(Arc::new(c), None))
    }

    #[test]
    fn circuit_breaker_slots() {
        let c = cluster(2);
        let a = c.try_start_request().unwrap();
        let _b = c.try_start_request().unwrap();
        assert!(c.try_start_request().is_none());
        drop(a);
        assert!(c.try_start_request().is_some());
    }

    #[test]
    fn hosts_survive_a_rebuild() {
        let c = cluster(10);
        let host = c.hosts()[0].clone();
        host.active_requests.store(7, Ordering::Relaxed);
        let next = ClusterState::new(c.config.clone(), Some(&c));
        assert!(Arc::ptr_eq(&next.hosts()[0], &host));
    }
}
