//! One upstream endpoint and its live state: active requests (for least-request
//! balancing), outlier-detection counters and ejection.
//!
//! Shared by all workers (atomics only); survives snapshot swaps when the endpoint
//! is still there, so ejections and load are not forgotten on a config push.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use istio_compat::model::cluster::{HealthStatus, Locality};

pub struct Host {
    pub address: SocketAddr,
    pub weight: u32,
    /// Health as EDS reported it.
    pub health: HealthStatus,
    pub priority: usize,
    pub locality: Arc<Locality>,
    /// The endpoint needs upstream TLS, which is not implemented yet: refuse it.
    pub tls_required: bool,
    /// Istio's `workload` metadata: `name;namespace;service;revision;cluster`.
    pub workload: Option<Arc<str>>,
    pub active_requests: AtomicU32,
    pub outlier: OutlierCounters,
    /// `destination_*` labels including this endpoint's workload metadata.
    destination: std::sync::OnceLock<Arc<crate::telemetry::metrics::DestinationLabels>>,
}

/// Per-host counters for passive health checking.
#[derive(Default)]
pub struct OutlierCounters {
    pub consecutive_5xx: AtomicU32,
    pub consecutive_gateway_failure: AtomicU32,
    pub consecutive_local_origin_failure: AtomicU32,
    /// Requests and successes in the current interval (success rate / failure %).
    pub interval_requests: AtomicU32,
    pub interval_failures: AtomicU32,
    /// Milliseconds since the process epoch until which the host is ejected; 0: not ejected.
    pub ejected_until_ms: AtomicU64,
    pub times_ejected: AtomicU32,
    pub ejected: AtomicBool,
}

impl Host {
    pub fn new(
        address: SocketAddr,
        weight: u32,
        health: HealthStatus,
        priority: usize,
        locality: Arc<Locality>,
        tls_required: bool,
        workload: Option<Arc<str>>,
    ) -> Self {
        Host {
            address,
            weight: weight.max(1),
            health,
            priority,
            locality,
            tls_required,
            workload,
            active_requests: AtomicU32::new(0),
            outlier: OutlierCounters::default(),
            destination: std::sync::OnceLock::new(),
        }
    }

    pub fn destination_labels(&self, cluster: &istio_compat::model::Cluster) -> Arc<crate::telemetry::metrics::DestinationLabels> {
        self.destination.get_or_init(|| crate::telemetry::metrics::DestinationLabels::for_cluster(cluster, self.workload.as_deref())).clone()
    }

    /// A host made up for one request (ORIGINAL_DST clusters).
    pub fn transient(address: SocketAddr) -> Arc<Self> {
        Arc::new(Host::new(address, 1, HealthStatus::Healthy, 0, Arc::default(), false, None))
    }

    pub fn is_ejected(&self) -> bool {
        self.outlier.ejected.load(Ordering::Relaxed)
    }

    /// Routable and not ejected.
    pub fn is_healthy(&self) -> bool {
        self.health.is_routable() && !self.is_ejected()
    }

    pub fn active(&self) -> u32 {
        self.active_requests.load(Ordering::Relaxed)
    }
}

/// Counts a request in flight on a host until dropped.
pub struct ActiveRequest(Arc<Host>);

impl ActiveRequest {
    pub fn new(host: &Arc<Host>) -> Self {
        host.active_requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest(host.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Milliseconds since the first call: a cheap monotonic clock for ejection deadlines.
pub fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}
