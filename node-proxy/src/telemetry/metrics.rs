//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_tcp_*`) with Istio's labels,
//! plus the proxy's own health metrics in Envoy's names (`envoy_cluster_*`).
//!
//! Label sets are split into a source half and a destination half, each computed once
//! and shared (`Arc`) with a precomputed hash, so recording a request does not hash
//! twenty strings.

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::snapshot::Snapshot;

/// Envoy's default histogram buckets (Istio uses them for durations and sizes).
pub const ENVOY_BUCKETS: [f64; 19] =
    [0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0];

/// The `source_*` labels.
#[derive(Debug)]
pub struct SourceLabels {
    pub workload: Arc<str>,
    pub workload_namespace: Arc<str>,
    pub principal: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub cluster: Arc<str>,
    hash: u64,
}

/// The `destination_*` labels.
#[derive(Debug)]
pub struct DestinationLabels {
    pub workload: Arc<str>,
    pub workload_namespace: Arc<str>,
    pub principal: Arc<str>,
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub service: Arc<str>,
    pub service_name: Arc<str>,
    pub service_namespace: Arc<str>,
    pub cluster: Arc<str>,
    hash: u64,
}

fn unknown() -> Arc<str> {
    static UNKNOWN: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    UNKNOWN.get_or_init(|| Arc::from("unknown")).clone()
}

fn hash_all(parts: &[&str]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

impl SourceLabels {
    /// All labels `unknown` (shared: allocated once).
    pub fn unknown() -> Arc<Self> {
        static UNKNOWN: std::sync::OnceLock<Arc<SourceLabels>> = std::sync::OnceLock::new();
        UNKNOWN.get_or_init(|| Self::new(unknown(), unknown(), unknown(), unknown(), unknown(), unknown())).clone()
    }

    pub fn new(workload: Arc<str>, workload_namespace: Arc<str>, principal: Arc<str>, app: Arc<str>, version: Arc<str>, cluster: Arc<str>) -> Arc<Self> {
        let hash = hash_all(&[&workload, &workload_namespace, &principal, &app, &version, &cluster]);
        Arc::new(SourceLabels { workload, workload_namespace, principal, app, version, cluster, hash })
    }
}

impl SourceLabels {
    /// A workload of Istio's workload API, as seen through its verified `principal`.
    pub fn for_workload(w: &istio_compat::model::workload::Workload, principal: &str) -> Arc<Self> {
        let or_unknown = |s: &str| if s.is_empty() { unknown() } else { Arc::from(s) };
        Self::new(
            or_unknown(&w.workload_name),
            or_unknown(&w.namespace),
            Arc::from(principal),
            or_unknown(&w.canonical_name),
            or_unknown(&w.canonical_revision),
            or_unknown(&w.cluster_id),
        )
    }

    /// Only the verified `principal` is known (the source is not in the workload view).
    pub fn for_principal(principal: &str) -> Arc<Self> {
        Self::new(unknown(), unknown(), Arc::from(principal), unknown(), unknown(), unknown())
    }
}

impl DestinationLabels {
    /// A workload of Istio's workload API (the destination of an HBONE stream).
    pub fn for_workload(w: &istio_compat::model::workload::Workload) -> Arc<Self> {
        let or_unknown = |s: &str| if s.is_empty() { unknown() } else { Arc::from(s) };
        let labels = DestinationLabels {
            workload: or_unknown(&w.workload_name),
            workload_namespace: or_unknown(&w.namespace),
            principal: Arc::from(w.identity.to_string()),
            app: or_unknown(&w.canonical_name),
            version: or_unknown(&w.canonical_revision),
            service: unknown(),
            service_name: unknown(),
            service_namespace: unknown(),
            cluster: or_unknown(&w.cluster_id),
            hash: 0,
        };
        Self::hashed(labels)
    }

    fn hashed(labels: DestinationLabels) -> Arc<Self> {
        let hash = hash_all(&[
            &labels.workload,
            &labels.workload_namespace,
            &labels.principal,
            &labels.app,
            &labels.version,
            &labels.service,
            &labels.service_name,
            &labels.service_namespace,
            &labels.cluster,
        ]);
        Arc::new(DestinationLabels { hash, ..labels })
    }

    /// From Istio's cluster metadata (services) and endpoint metadata (`workload`:
    /// `name;namespace;canonical service;revision;cluster`).
    pub fn from_istio(service_host: Option<&str>, service_name: Option<&str>, service_namespace: Option<&str>, workload: Option<&str>) -> Arc<Self> {
        let parts: Vec<&str> = workload.map(|w| w.split(';').collect()).unwrap_or_default();
        let part = |i: usize| parts.get(i).filter(|s| !s.is_empty()).map_or_else(unknown, |s| Arc::from(*s));
        let opt = |s: Option<&str>| s.filter(|s| !s.is_empty()).map_or_else(unknown, Arc::from);
        let workload = part(0);
        let workload_namespace = match parts.get(1) {
            Some(ns) if !ns.is_empty() => Arc::from(*ns),
            _ => opt(service_namespace),
        };
        let labels = DestinationLabels {
            workload,
            workload_namespace,
            principal: unknown(),
            app: part(2),
            version: part(3),
            service: opt(service_host),
            service_name: opt(service_name),
            service_namespace: opt(service_namespace),
            cluster: part(4),
            hash: 0,
        };
        Self::hashed(labels)
    }

    /// All labels `unknown` (shared: allocated once).
    pub fn unknown() -> Arc<Self> {
        static UNKNOWN: std::sync::OnceLock<Arc<DestinationLabels>> = std::sync::OnceLock::new();
        UNKNOWN.get_or_init(|| Self::from_istio(None, None, None, None)).clone()
    }

    /// For a cluster: Istio's `services` metadata, else the service host in an
    /// Istio cluster name (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub fn for_cluster(cluster: &istio_compat::model::Cluster, workload: Option<&str>) -> Arc<Self> {
        if let Some(s) = cluster.services.first() {
            return Self::from_istio(Some(&s.host), Some(&s.name), Some(&s.namespace), workload);
        }
        let mut parts = cluster.name.split('|');
        if let (Some("outbound" | "inbound"), Some(_port), Some(_subset), Some(host)) = (parts.next(), parts.next(), parts.next(), parts.next()) {
            // name.namespace.svc.<domain>
            let mut labels = host.split('.');
            let name = labels.next();
            let namespace = labels.next();
            return Self::from_istio(Some(host), name, namespace, workload);
        }
        Self::from_istio(None, None, None, workload)
    }
}

macro_rules! hashed_eq {
    ($t:ty, $($f:ident),*) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.hash == other.hash $(&& self.$f == other.$f)*
            }
        }
        impl Eq for $t {}
        impl Hash for $t {
            fn hash<H: Hasher>(&self, state: &mut H) {
                state.write_u64(self.hash);
            }
        }
    };
}

hashed_eq!(SourceLabels, workload, workload_namespace, principal, app, version, cluster);
hashed_eq!(DestinationLabels, workload, workload_namespace, principal, app, version, service, service_name, service_namespace, cluster);

/// Labels of `istio_requests_total` and friends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source: Arc<SourceLabels>,
    pub destination: Arc<DestinationLabels>,
    pub request_protocol: &'static str,
    pub response_code: u16,
    pub grpc_response_status: Option<i32>,
    pub response_flags: Arc<str>,
    pub connection_security_policy: &'static str,
}

/// Labels of `istio_tcp_*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source: Arc<SourceLabels>,
    pub destination: Arc<DestinationLabels>,
    pub response_flags: Arc<str>,
    pub connection_security_policy: &'static str,
}

fn encode_peers(e: &mut LabelSetEncoder<'_>, reporter: &str, s: &SourceLabels, d: &DestinationLabels) -> Result<(), std::fmt::Error> {
    ("reporter", reporter).encode(e.encode_label())?;
    ("source_workload", &*s.workload).encode(e.encode_label())?;
    ("source_workload_namespace", &*s.workload_namespace).encode(e.encode_label())?;
    ("source_principal", &*s.principal).encode(e.encode_label())?;
    ("source_app", &*s.app).encode(e.encode_label())?;
    ("source_version", &*s.version).encode(e.encode_label())?;
    ("source_cluster", &*s.cluster).encode(e.encode_label())?;
    ("destination_workload", &*d.workload).encode(e.encode_label())?;
    ("destination_workload_namespace", &*d.workload_namespace).encode(e.encode_label())?;
    ("destination_principal", &*d.principal).encode(e.encode_label())?;
    ("destination_app", &*d.app).encode(e.encode_label())?;
    ("destination_version", &*d.version).encode(e.encode_label())?;
    ("destination_service", &*d.service).encode(e.encode_label())?;
    ("destination_service_name", &*d.service_name).encode(e.encode_label())?;
    ("destination_service_namespace", &*d.service_namespace).encode(e.encode_label())?;
    ("destination_cluster", &*d.cluster).encode(e.encode_label())?;
    Ok(())
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, e: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        encode_peers(e, self.reporter, &self.source, &self.destination)?;
        ("request_protocol", self.request_protocol).encode(e.encode_label())?;
        ("response_code", self.response_code.to_string().as_str()).encode(e.encode_label())?;
        let grpc = self.grpc_response_status.map(|c| c.to_string());
        ("grpc_response_status", grpc.as_deref().unwrap_or("")).encode(e.encode_label())?;
        ("response_flags", &*self.response_flags).encode(e.encode_label())?;
        ("connection_security_policy", self.connection_security_policy).encode(e.encode_label())?;
        Ok(())
    }
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, e: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        encode_peers(e, self.reporter, &self.source, &self.destination)?;
        ("request_protocol", "tcp").encode(e.encode_label())?;
        ("response_flags", &*self.response_flags).encode(e.encode_label())?;
        ("connection_security_policy", self.connection_security_policy).encode(e.encode_label())?;
        Ok(())
    }
}

use prometheus_client::encoding::EncodeLabel as _;

fn envoy_histogram() -> Histogram {
    Histogram::new(ENVOY_BUCKETS)
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    pub requests_total: Family<RequestLabels, Counter>,
    pub request_duration_ms: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub request_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub response_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_sent_bytes: Family<TcpLabels, Counter>,
    pub tcp_received_bytes: Family<TcpLabels, Counter>,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: prometheus_client::metrics::gauge::Gauge,
    pub downstream_rq_total: Counter,
    pub xds: XdsMetrics,
    pub rbac: RbacMetrics,
    pub ext_authz: ExtAuthzMetrics,
}

/// The ext_authz filters' results (AuthorizationPolicy CUSTOM): Envoy's `ext_authz.ok`,
/// `.denied`, `.error`, `.disabled` and `.failure_mode_allowed`, labelled as the RBAC
/// ones (`filter` `http`/`network`, the owner's stat prefix).
pub struct ExtAuthzMetrics {
    pub ok: Family<RbacLabels, Counter>,
    pub denied: Family<RbacLabels, Counter>,
    pub error: Family<RbacLabels, Counter>,
    pub disabled: Family<RbacLabels, Counter>,
    pub failure_mode_allowed: Family<RbacLabels, Counter>,
}

impl ExtAuthzMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = ExtAuthzMetrics {
            ok: Family::default(),
            denied: Family::default(),
            error: Family::default(),
            disabled: Family::default(),
            failure_mode_allowed: Family::default(),
        };
        registry.register("envoy_ext_authz_ok", "Requests or connections the authorization provider allowed", m.ok.clone());
        registry.register("envoy_ext_authz_denied", "Requests or connections the authorization provider denied", m.denied.clone());
        registry.register("envoy_ext_authz_error", "Authorization calls that failed (unreachable, timeout, 5xx, gRPC error)", m.error.clone());
        registry.register("envoy_ext_authz_disabled", "Requests or connections no CUSTOM policy selected (the provider was not called)", m.disabled.clone());
        registry.register(
            "envoy_ext_authz_failure_mode_allowed",
            "Failed authorization calls let through by failure_mode_allow",
            m.failure_mode_allowed.clone(),
        );
        m
    }
}

/// The RBAC filters' decisions: Envoy's `rbac.allowed`, `rbac.denied`,
/// `rbac.shadow_allowed` and `rbac.shadow_denied` statistics, labelled by the filter
/// kind and its owner's stat prefix (the HTTP connection manager's, or the network
/// filter's own).
#[derive(Clone)]
pub struct RbacMetrics {
    pub allowed: Family<RbacLabels, Counter>,
    pub denied: Family<RbacLabels, Counter>,
    pub shadow_allowed: Family<RbacLabels, Counter>,
    pub shadow_denied: Family<RbacLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RbacLabels {
    /// `http` or `network`.
    pub filter: &'static str,
    pub stat_prefix: String,
}

impl RbacMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = RbacMetrics { allowed: Family::default(), denied: Family::default(), shadow_allowed: Family::default(), shadow_denied: Family::default() };
        registry.register("envoy_rbac_allowed", "Requests or connections the RBAC filters allowed", m.allowed.clone());
        registry.register("envoy_rbac_denied", "Requests or connections the RBAC filters denied", m.denied.clone());
        registry.register("envoy_rbac_shadow_allowed", "Requests or connections the shadow (dry-run) rules would allow", m.shadow_allowed.clone());
        registry.register("envoy_rbac_shadow_denied", "Requests or connections the shadow (dry-run) rules would deny", m.shadow_denied.clone());
        m
    }
}

/// The xDS client's health, in the spirit of Envoy's `control_plane.*` and
/// per-subscription `update_*` statistics, labelled by type URL instead of by prefix.
pub struct XdsMetrics {
    /// 1 while a stream to istiod is up (Envoy: `control_plane.connected_state`).
    pub connected: prometheus_client::metrics::gauge::Gauge,
    /// Responses received per type (Envoy: `update_attempt`).
    pub update_attempt: Family<TypeLabel, Counter>,
    /// Responses applied whole (Envoy: `update_success`).
    pub update_success: Family<TypeLabel, Counter>,
    /// Responses with at least one rejected resource (Envoy: `update_rejected`).
    pub update_rejected: Family<TypeLabel, Counter>,
    /// From receipt of a response to the new snapshot being live, in milliseconds.
    pub update_duration_ms: Family<TypeLabel, Histogram, fn() -> Histogram>,
    /// Resources held per type and state (active, warming).
    pub resources: Family<ResourceLabels, prometheus_client::metrics::gauge::Gauge>,
    /// Encoded size of the resources held per type (the snapshot's size on the wire).
    pub resource_bytes: Family<TypeLabel, prometheus_client::metrics::gauge::Gauge>,
    /// The live snapshot's version (increments on every applied change).
    pub snapshot_version: prometheus_client::metrics::gauge::Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TypeLabel {
    pub type_url: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResourceLabels {
    pub type_url: String,
    pub state: &'static str,
}

fn apply_histogram() -> Histogram {
    Histogram::new([0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0])
}

impl XdsMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = XdsMetrics {
            connected: Default::default(),
            update_attempt: Default::default(),
            update_success: Default::default(),
            update_rejected: Default::default(),
            update_duration_ms: Family::new_with_constructor(apply_histogram as fn() -> Histogram),
            resources: Default::default(),
            resource_bytes: Default::default(),
            snapshot_version: Default::default(),
        };
        registry.register("envoy_control_plane_connected_state", "1 while the xDS stream to istiod is connected", m.connected.clone());
        registry.register("node_proxy_xds_update_attempt", "xDS responses received, per type", m.update_attempt.clone());
        registry.register("node_proxy_xds_update_success", "xDS responses applied whole, per type", m.update_success.clone());
        registry.register("node_proxy_xds_update_rejected", "xDS responses with rejected resources (NACKed), per type", m.update_rejected.clone());
        registry.register(
            "node_proxy_xds_update_duration_milliseconds",
            "Time from receiving an xDS response to its snapshot being live",
            m.update_duration_ms.clone(),
        );
        registry.register("node_proxy_xds_resources", "xDS resources held, per type and state", m.resources.clone());
        registry.register("node_proxy_xds_resource_bytes", "Encoded size of the xDS resources held, per type", m.resource_bytes.clone());
        registry.register("node_proxy_snapshot_version", "Version of the live configuration snapshot", m.snapshot_version.clone());
        m
    }
}

/// What one finished request adds to the metrics.
pub struct RequestSample {
    pub labels: RequestLabels,
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests_total = Family::<RequestLabels, Counter>::default();
        let request_duration_ms = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(envoy_histogram as fn() -> Histogram);
        let request_bytes = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(envoy_histogram as fn() -> Histogram);
        let response_bytes = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(envoy_histogram as fn() -> Histogram);
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let tcp_sent_bytes = Family::<TcpLabels, Counter>::default();
        let tcp_received_bytes = Family::<TcpLabels, Counter>::default();
        // prometheus-client appends `_total` to counters itself.
        registry.register("istio_requests", "Requests processed by the proxy", requests_total.clone());
        registry.register("istio_request_duration_milliseconds", "Request duration", request_duration_ms.clone());
        registry.register("istio_request_bytes", "Request body sizes", request_bytes.clone());
        registry.register("istio_response_bytes", "Response body sizes", response_bytes.clone());
        registry.register("istio_tcp_connections_opened", "TCP connections opened", tcp_opened.clone());
        registry.register("istio_tcp_connections_closed", "TCP connections closed", tcp_closed.clone());
        registry.register("istio_tcp_sent_bytes", "Bytes sent to the downstream during TCP proxying", tcp_sent_bytes.clone());
        registry.register("istio_tcp_received_bytes", "Bytes received from the downstream during TCP proxying", tcp_received_bytes.clone());
        let downstream_cx_total = Counter::default();
        let downstream_cx_active = prometheus_client::metrics::gauge::Gauge::default();
        let downstream_rq_total = Counter::default();
        registry.register("envoy_http_downstream_cx", "Downstream connections accepted", downstream_cx_total.clone());
        registry.register("envoy_http_downstream_cx_active", "Downstream connections open", downstream_cx_active.clone());
        registry.register("envoy_http_downstream_rq", "Downstream requests", downstream_rq_total.clone());
        let xds = XdsMetrics::register(&mut registry);
        let rbac = RbacMetrics::register(&mut registry);
        let ext_authz = ExtAuthzMetrics::register(&mut registry);
        Metrics {
            registry,
            requests_total,
            request_duration_ms,
            request_bytes,
            response_bytes,
            tcp_opened,
            tcp_closed,
            tcp_sent_bytes,
            tcp_received_bytes,
            downstream_cx_total,
            downstream_cx_active,
            downstream_rq_total,
            xds,
            rbac,
            ext_authz,
        }
    }

    pub fn record_request(&self, s: RequestSample) {
        self.requests_total.get_or_create(&s.labels).inc();
        self.request_duration_ms.get_or_create(&s.labels).observe(s.duration_ms);
        self.request_bytes.get_or_create(&s.labels).observe(s.request_bytes as f64);
        self.response_bytes.get_or_create(&s.labels).observe(s.response_bytes as f64);
    }

    /// Prometheus text: Istio's metrics, then per-cluster proxy health.
    pub fn encode(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry) {
            tracing::error!("encoding metrics: {e}");
        }
        encode_cluster_stats(&mut out, snapshot);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Envoy's `cluster.<name>.*` statistics in Envoy's Prometheus form.
fn encode_cluster_stats(out: &mut String, snapshot: &Snapshot) {
    type Getter = fn(&crate::upstream::cluster::ClusterStats) -> u64;
    let stats: [(&str, &str, Getter); 20] = [
        ("envoy_cluster_upstream_rq_active", "gauge", |s| s.active_requests.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_rq_pending_active", "gauge", |s| s.pending_requests.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_rq_retry_active", "gauge", |s| s.active_retries.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_cx_active", "gauge", |s| s.active_connections.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_cx_total", "counter", |s| s.cx_total.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_cx_connect_fail", "counter", |s| s.cx_connect_fail.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_cx_connect_timeout", "counter", |s| s.cx_connect_timeout.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_cx_overflow", "counter", |s| s.cx_overflow.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_rq_retry", "counter", |s| s.rq_retry.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_rq_retry_success", "counter", |s| s.rq_retry_success.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_rq_retry_overflow", "counter", |s| s.rq_retry_overflow.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_rq_retry_limit_exceeded", "counter", |s| s.rq_retry_limit_exceeded.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_rq_pending_overflow", "counter", |s| s.rq_pending_overflow.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_rq_overflow", "counter", |s| s.rq_overflow.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_rq_timeout", "counter", |s| s.rq_timeout.load(Ordering::Relaxed)),
        ("envoy_cluster_upstream_rq_per_try_timeout", "counter", |s| s.rq_per_try_timeout.load(Ordering::Relaxed)),
        ("envoy_cluster_outlier_detection_ejections_enforced_total", "counter", |s| s.outlier_ejections_total.load(Ordering::Relaxed)),
        ("envoy_cluster_outlier_detection_ejections_enforced_consecutive_5xx", "counter", |s| s.outlier_ejections_consecutive_5xx.load(Ordering::Relaxed)),
        ("envoy_cluster_outlier_detection_ejections_enforced_consecutive_gateway_failure", "counter", |s| {
            s.outlier_ejections_consecutive_gateway_failure.load(Ordering::Relaxed)
        }),
        ("envoy_cluster_outlier_detection_ejections_enforced_success_rate", "counter", |s| s.outlier_ejections_success_rate.load(Ordering::Relaxed)),
    ];
    let mut clusters: Vec<_> = snapshot.clusters.values().collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    for (name, kind, get) in stats {
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for c in &clusters {
            let _ = writeln!(out, "{name}{{cluster_name=\"{}\"}} {}", escape(&c.name), get(&c.stats));
        }
    }
    let _ = writeln!(out, "# TYPE envoy_cluster_outlier_detection_ejections_active gauge");
    for c in &clusters {
        let _ = writeln!(out, "envoy_cluster_outlier_detection_ejections_active{{cluster_name=\"{}\"}} {}", escape(&c.name), c.ejected_count());
    }
    let _ = writeln!(out, "# TYPE envoy_cluster_membership_healthy gauge");
    for c in &clusters {
        let _ = writeln!(out, "envoy_cluster_membership_healthy{{cluster_name=\"{}\"}} {}", escape(&c.name), c.view().healthy_count());
    }
    let _ = writeln!(out, "# TYPE envoy_cluster_membership_total gauge");
    for c in &clusters {
        let _ = writeln!(out, "envoy_cluster_membership_total{{cluster_name=\"{}\"}} {}", escape(&c.name), c.view().host_count());
    }
}
