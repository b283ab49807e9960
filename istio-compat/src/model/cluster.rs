//! Upstream clusters as Envoy's `Cluster` (plus its `ClusterLoadAssignment`)
//! defines them: endpoints with locality, priority, weight and health; the load
//! balancing policy; connection pool limits; circuit breakers; outlier detection.
//!
//! Data only. Load balancer state, pools and ejections are runtime state in
//! `node-proxy`, built from this.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::{serde_duration, serde_opt_duration, Name, Percent};

/// Envoy's default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub name: Name,
    pub discovery: Discovery,
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    pub lb: LbPolicy,
    /// Below this share of healthy hosts, balance across all hosts (Envoy: 50%).
    pub healthy_panic_threshold: Percent,
    pub protocol: UpstreamProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Close upstream connections idle this long (Envoy: 1 h).
    #[serde(default, with = "serde_opt_duration", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    pub circuit_breakers: CircuitBreakers,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Upper bound on request bytes buffered for retries and mirroring (Envoy: 1 MiB).
    pub buffer_limit: u32,
    /// Which endpoints the cluster's transport sockets would reach over TLS.
    #[serde(default)]
    pub tls: UpstreamTls,
    /// Endpoint groups by priority (index 0 is the highest priority).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub priorities: Vec<Vec<LocalityEndpoints>>,
    /// Istio's `filter_metadata.istio.services` (the services behind this cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRef>,
}

impl Cluster {
    /// A cluster with Envoy's defaults and the given discovery type.
    pub fn new(name: &str, discovery: Discovery) -> Self {
        Cluster {
            name: name.into(),
            discovery,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            lb: LbPolicy::RoundRobin,
            healthy_panic_threshold: Percent::from_percentage(50.0),
            protocol: UpstreamProtocol::Http1,
            max_requests_per_connection: None,
            idle_timeout: Some(Duration::from_secs(3600)),
            circuit_breakers: CircuitBreakers::default(),
            outlier_detection: None,
            buffer_limit: 1024 * 1024,
            tls: UpstreamTls::Plaintext,
            priorities: Vec::new(),
            services: Vec::new(),
        }
    }

    /// The EDS service name its endpoints come under, for an EDS cluster.
    pub fn eds_service_name(&self) -> Option<&Name> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }

    /// All endpoints, every priority and locality.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.priorities.iter().flatten().flat_map(|l| l.endpoints.iter())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// Endpoints listed in the cluster's `load_assignment`.
    Static,
    /// Hostnames resolved periodically; every address is an endpoint.
    StrictDns {
        #[serde(with = "serde_duration")]
        refresh: Duration,
    },
    /// Hostname resolved per new connection; the first address is used.
    LogicalDns {
        #[serde(with = "serde_duration")]
        refresh: Duration,
    },
    /// Endpoints come from EDS under this service name.
    Eds { service_name: Name },
    /// Connect to the downstream connection's original destination.
    OriginalDst,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    RoundRobin,
    /// Power of `choice_count` choices on active requests (Istio's default).
    LeastRequest {
        choice_count: u32,
    },
    Random,
    RingHash {
        minimum_ring_size: u64,
        maximum_ring_size: u64,
    },
    Maglev {
        table_size: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// The protocol the downstream request came in with (`use_downstream_protocol_config`).
    Downstream,
}

/// Upstream TLS as the cluster's `transport_socket(_matches)` ask for it. TLS origination
/// is not implemented yet: the runtime refuses (503 `UF`) to reach an endpoint that
/// needs it rather than sending it plaintext.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamTls {
    #[default]
    Plaintext,
    Always,
    /// Endpoints whose `tlsMode` metadata is one of these (Istio: `istio`).
    WhenTlsMode(Vec<String>),
}

impl UpstreamTls {
    pub fn required_for(&self, endpoint: &Endpoint) -> bool {
        match self {
            UpstreamTls::Plaintext => false,
            UpstreamTls::Always => true,
            UpstreamTls::WhenTlsMode(modes) => endpoint.tls_mode.as_ref().is_some_and(|m| modes.contains(m)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalityEndpoints {
    #[serde(default, skip_serializing_if = "Locality::is_empty")]
    pub locality: Locality,
    /// The locality's weight, for locality-weighted balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Locality {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_zone: String,
}

impl Locality {
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.sub_zone.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: EndpointAddress,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub health: HealthStatus,
    /// `filter_metadata.envoy.transport_socket_match.tlsMode` (`istio` for mesh pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_mode: Option<String>,
    /// `filter_metadata.istio.workload`: `name;namespace;canonical service;revision;cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointAddress {
    Socket(SocketAddr),
    /// A DNS name, resolved by the runtime (STRICT_DNS / LOGICAL_DNS clusters).
    Dns {
        host: String,
        port: u16,
    },
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddress::Socket(a) => write!(f, "{a}"),
            EndpointAddress::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Envoy's `HealthStatus` as EDS reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    Timeout,
    Degraded,
}

impl HealthStatus {
    /// Envoy routes to UNKNOWN, HEALTHY and DEGRADED endpoints.
    pub fn is_routable(self) -> bool {
        matches!(self, HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded)
    }
}

/// The DEFAULT-priority circuit breaker thresholds (Envoy's defaults: 1024, 1024,
/// 1024, 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CircuitBreakers {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// When set, bounds concurrent retries instead of `max_retries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers { max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3, retry_budget: None }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryBudget {
    /// Share of active plus pending requests that may be retries (Envoy: 20%).
    pub budget_percent: f64,
    /// Retries always allowed regardless of the budget (Envoy: 3).
    pub min_retry_concurrency: u32,
}

impl RetryBudget {
    /// How many concurrent retries the budget allows with `active` requests in flight.
    pub fn allowed(&self, active: u64) -> u64 {
        let budget = (active as f64 * self.budget_percent / 100.0) as u64;
        budget.max(u64::from(self.min_retry_concurrency))
    }
}

/// Passive health checking (Envoy's `OutlierDetection`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutlierDetection {
    #[serde(with = "serde_duration")]
    pub interval: Duration,
    #[serde(with = "serde_duration")]
    pub base_ejection_time: Duration,
    #[serde(with = "serde_duration")]
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Consecutive 5xx (and, unless split, local-origin failures) before ejection.
    pub consecutive_5xx: Option<Enforced>,
    /// Consecutive 502/503/504 (and local-origin failures unless split).
    pub consecutive_gateway_failure: Option<Enforced>,
    /// Separate counting of connect failures, timeouts and resets.
    pub split_external_local_origin_errors: bool,
    pub consecutive_local_origin_failure: Option<Enforced>,
    pub success_rate: Option<SuccessRate>,
    pub failure_percentage: Option<FailurePercentage>,
}

/// A consecutive-failure threshold and the chance an ejection it triggers happens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enforced {
    pub threshold: u32,
    /// 0–100.
    pub enforcing: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuccessRate {
    pub minimum_hosts: u32,
    pub request_volume: u32,
    /// Ejection below `mean - stdev_factor / 1000 * stdev`.
    pub stdev_factor: u32,
    pub enforcing: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailurePercentage {
    pub threshold: u32,
    pub minimum_hosts: u32,
    pub request_volume: u32,
    pub enforcing: u32,
}

/// One entry of Istio's `filter_metadata.istio.services`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRef {
    pub host: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}
