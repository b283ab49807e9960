//! Worker threads, as in Envoy: each runs a single-threaded tokio runtime with its
//! own accept loops (SO_REUSEPORT sockets) and its own upstream connection pools, so
//! the request path takes no locks. What workers share (the live snapshot, cluster
//! state, metrics, the drain signal) is in [`Shared`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use crate::drain::Drain;
use crate::snapshot::Live;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::telemetry::metrics::{Metrics, RequestLabels, RequestSample};
use crate::upstream::pool::Pools;

/// State shared by every worker and the control thread.
pub struct Shared {
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    pub drain: Arc<Drain>,
    /// Requests currently delayed or aborted by fault injection (`max_active_faults`).
    pub active_faults: AtomicU32,
    /// SO_MARK on upstream sockets.
    pub upstream_mark: Option<u32>,
    /// Istio's workload API view (empty without xDS).
    pub workloads: Arc<crate::xds::workload::LiveWorkloads>,
    /// Workload certificates and HBONE (absent: every upstream leg is plain TCP).
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
}

/// One worker's state.
pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pools: Pools,
    /// Metric handles by label set, so a request records without the registry's locks.
    metric_cache: RefCell<HashMap<MetricKey, RequestMetrics>>,
    /// The RBAC filters' counters, found by stat prefix.
    pub rbac_counters: crate::authz::Counters,
}

/// A label set keyed by identity: the shared label halves by pointer (the key holds
/// them, so a pointer cannot be reused while cached), the rest by value.
struct MetricKey(RequestLabels);

impl PartialEq for MetricKey {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        Arc::ptr_eq(&a.source, &b.source)
            && Arc::ptr_eq(&a.destination, &b.destination)
            && a.response_code == b.response_code
            && a.grpc_response_status == b.grpc_response_status
            && a.request_protocol == b.request_protocol
            && a.reporter == b.reporter
            && a.connection_security_policy == b.connection_security_policy
            && a.response_flags == b.response_flags
    }
}

impl Eq for MetricKey {}

impl std::hash::Hash for MetricKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let l = &self.0;
        (Arc::as_ptr(&l.source) as usize).hash(h);
        (Arc::as_ptr(&l.destination) as usize).hash(h);
        l.response_code.hash(h);
        l.grpc_response_status.hash(h);
        l.response_flags.hash(h);
    }
}

/// The time series one request updates.
struct RequestMetrics {
    total: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Bound on cached label sets per worker; beyond it the registry is used directly.
const METRIC_CACHE_LIMIT: usize = 4096;

impl Worker {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Self> {
        let pools = Pools::new(shared.upstream_mark, shared.mesh.clone());
        let rbac_counters = crate::authz::Counters::new(&shared.metrics);
        Rc::new(Worker { id, shared, pools, metric_cache: RefCell::new(HashMap::new()), rbac_counters })
    }

    /// Records a finished request in Istio's request metrics.
    pub fn record_request(&self, sample: RequestSample) {
        let mut cache = self.metric_cache.borrow_mut();
        let key = MetricKey(sample.labels);
        if !cache.contains_key(&key) {
            let m = &self.shared.metrics;
            let handles = RequestMetrics {
                total: m.requests_total.get_or_create_owned(&key.0),
                duration: m.request_duration_ms.get_or_create_owned(&key.0),
                request_bytes: m.request_bytes.get_or_create_owned(&key.0),
                response_bytes: m.response_bytes.get_or_create_owned(&key.0),
            };
            if cache.len() >= METRIC_CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(MetricKey(key.0.clone()), handles);
        }
        if let Some(h) = cache.get(&key) {
            h.total.inc();
            h.duration.observe(sample.duration_ms);
            h.request_bytes.observe(sample.request_bytes as f64);
            h.response_bytes.observe(sample.response_bytes as f64);
        }
    }
}

/// hyper's executor for a worker: tasks stay on the worker's thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
