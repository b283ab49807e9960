//! Envoy `Cluster` and `ClusterLoadAssignment` -> [`model::cluster::Cluster`].

use std::time::Duration;

use prost::Message;
use xds_client::pb::envoy::config::cluster::v3 as cluster;
use xds_client::pb::envoy::config::endpoint::v3 as endpoint;
use xds_client::pb::envoy::extensions::upstreams::http::v3 as upstream_http;

use super::common::{join, metadata_string, opt_duration, socket_address, timeout, u32_or};
use super::{coverage, extension_type, Context, Effect, Invalid};
use crate::model::cluster::{
    CircuitBreakers, Cluster, Discovery, Endpoint, EndpointAddress, Enforced, FailurePercentage, HealthStatus, LbPolicy, Locality, LocalityEndpoints,
    OutlierDetection, RetryBudget, ServiceRef, SuccessRate, UpstreamProtocol, UpstreamTls,
};
use crate::model::common::Percent;

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub(super) fn translate(c: &cluster::Cluster, cx: &mut Context) -> Result<Cluster, Invalid> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbConfig};
    coverage::check_message(c, &cx.resource, "", &mut cx.unsupported);
    let dns_refresh = opt_duration(&c.dns_refresh_rate).filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(5));
    let discovery = match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
            Ok(DiscoveryType::Static) => Discovery::Static,
            Ok(DiscoveryType::StrictDns) => Discovery::StrictDns { refresh: dns_refresh },
            Ok(DiscoveryType::LogicalDns) => Discovery::LogicalDns { refresh: dns_refresh },
            Ok(DiscoveryType::Eds) => {
                let service = c.eds_cluster_config.as_ref().map(|e| e.service_name.as_str()).filter(|s| !s.is_empty()).unwrap_or(&c.name);
                Discovery::Eds { service_name: service.into() }
            }
            Ok(DiscoveryType::OriginalDst) => Discovery::OriginalDst,
            Err(_) => return Err(Invalid::new("type", format!("unknown discovery type {t}"))),
        },
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(Invalid::new("cluster_type", format!("custom cluster type {} is not supported", custom.name)))
        }
        None => Discovery::Static,
    };
    let lb = lb_policy(c, cx)?;
    if let Some(LbConfig::OriginalDstLbConfig(_)) = &c.lb_config {
        if !matches!(discovery, Discovery::OriginalDst) {
            return Err(Invalid::new("original_dst_lb_config", "only valid on ORIGINAL_DST clusters"));
        }
    }
    let mut out = Cluster::new(&c.name, discovery);
    out.connect_timeout = opt_duration(&c.connect_timeout).unwrap_or(out.connect_timeout);
    out.lb = lb;
    if let Some(common) = &c.common_lb_config {
        if let Some(p) = &common.healthy_panic_threshold {
            out.healthy_panic_threshold = Percent::from_percentage(p.value);
        }
    }
    out.buffer_limit = u32_or(&c.per_connection_buffer_limit_bytes, out.buffer_limit);
    // Legacy fields first; the typed protocol options override them.
    if c.http2_protocol_options.is_some() {
        out.protocol = UpstreamProtocol::Http2;
    }
    if let Some(n) = &c.max_requests_per_connection {
        out.max_requests_per_connection = Some(n.value).filter(|n| *n > 0);
    }
    if let Some(o) = &c.common_http_protocol_options {
        out.idle_timeout = timeout(&o.idle_timeout, out.idle_timeout);
        if let Some(n) = &o.max_requests_per_connection {
            out.max_requests_per_connection = Some(n.value).filter(|n| *n > 0);
        }
    }
    let mut names: Vec<&String> = c.typed_extension_protocol_options.keys().collect();
    names.sort();
    for name in names {
        let any = &c.typed_extension_protocol_options[name];
        let path = format!("typed_extension_protocol_options[{name:?}]");
        if extension_type(any) != HTTP_PROTOCOL_OPTIONS {
            cx.report(&path, &extension_type(any), Effect::Ignored);
            continue;
        }
        let options = upstream_http::HttpProtocolOptions::decode(any.value.as_slice()).map_err(|e| Invalid::new(&path, format!("cannot decode: {e}")))?;
        http_protocol_options(&options, &mut out, &path, cx);
    }
    if let Some(cb) = &c.circuit_breakers {
        out.circuit_breakers = circuit_breakers(cb, cx);
    }
    out.outlier_detection = c.outlier_detection.as_ref().map(outlier_detection);
    out.tls = upstream_tls(c, cx);
    out.services = istio_services(c);
    if let Some(cla) = &c.load_assignment {
        out.priorities = load_assignment(cla, "load_assignment")?;
    }
    if matches!(out.discovery, Discovery::StrictDns { .. } | Discovery::LogicalDns { .. } | Discovery::Static) && out.priorities.is_empty() {
        return Err(Invalid::new("load_assignment", "STATIC and DNS clusters need endpoints in load_assignment"));
    }
    Ok(out)
}

fn lb_policy(c: &cluster::Cluster, cx: &mut Context) -> Result<LbPolicy, Invalid> {
    use cluster::cluster::{LbConfig, LbPolicy as Pb};
    if c.load_balancing_policy.is_some() {
        cx.report("load_balancing_policy", "envoy.config.cluster.v3.LoadBalancingPolicy", Effect::Ignored);
    }
    Ok(match Pb::try_from(c.lb_policy) {
        Ok(Pb::RoundRobin) => LbPolicy::RoundRobin,
        Ok(Pb::LeastRequest) => {
            let choice_count = match &c.lb_config {
                Some(LbConfig::LeastRequestLbConfig(l)) => u32_or(&l.choice_count, 2).max(2),
                _ => 2,
            };
            LbPolicy::LeastRequest { choice_count }
        }
        Ok(Pb::Random) => LbPolicy::Random,
        Ok(Pb::RingHash) => {
            let (min, max) = match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => {
                    (r.minimum_ring_size.as_ref().map_or(1024, |v| v.value), r.maximum_ring_size.as_ref().map_or(8 * 1024 * 1024, |v| v.value))
                }
                _ => (1024, 8 * 1024 * 1024),
            };
            if min > max || max > 8 * 1024 * 1024 {
                return Err(Invalid::new("ring_hash_lb_config", "minimum_ring_size must be <= maximum_ring_size <= 8M"));
            }
            LbPolicy::RingHash { minimum_ring_size: min, maximum_ring_size: max }
        }
        Ok(Pb::Maglev) => {
            let table_size = match &c.lb_config {
                Some(LbConfig::MaglevLbConfig(m)) => m.table_size.as_ref().map_or(65537, |v| v.value),
                _ => 65537,
            };
            if !is_prime(table_size) || table_size > 5_000_011 {
                return Err(Invalid::new("maglev_lb_config.table_size", "must be a prime number no larger than 5000011"));
            }
            LbPolicy::Maglev { table_size }
        }
        Ok(Pb::ClusterProvided) => LbPolicy::RoundRobin,
        Ok(Pb::LoadBalancingPolicyConfig) | Err(_) => {
            return Err(Invalid::new("lb_policy", "load_balancing_policy extensions are not supported; use lb_policy"))
        }
    })
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2;
    while i * i <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

fn http_protocol_options(o: &upstream_http::HttpProtocolOptions, out: &mut Cluster, path: &str, cx: &mut Context) {
    use upstream_http::http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions};
    match &o.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(ProtocolConfig::Http2ProtocolOptions(_)) => out.protocol = UpstreamProtocol::Http2,
            Some(ProtocolConfig::HttpProtocolOptions(_)) => out.protocol = UpstreamProtocol::Http1,
            Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                cx.report(&format!("{path}.explicit_http_config.http3_protocol_options"), HTTP_PROTOCOL_OPTIONS, Effect::Ignored)
            }
            None => {}
        },
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => out.protocol = UpstreamProtocol::Downstream,
        // ALPN-negotiated; without upstream TLS that is HTTP/1.1, as in Envoy.
        Some(UpstreamProtocolOptions::AutoConfig(_)) => out.protocol = UpstreamProtocol::Http1,
        None => {}
    }
    if let Some(common) = &o.common_http_protocol_options {
        out.idle_timeout = timeout(&common.idle_timeout, out.idle_timeout);
        if let Some(n) = &common.max_requests_per_connection {
            out.max_requests_per_connection = Some(n.value).filter(|n| *n > 0);
        }
    }
    for (field, set) in [
        ("http_filters", !o.http_filters.is_empty()),
        ("retry_policy", o.retry_policy.is_some()),
        ("hash_policy", !o.hash_policy.is_empty()),
        ("request_mirror_policies", !o.request_mirror_policies.is_empty()),
        ("outlier_detection", o.outlier_detection.is_some()),
        ("upstream_http_protocol_options", o.upstream_http_protocol_options.is_some()),
    ] {
        if set {
            cx.report(&format!("{path}.{field}"), HTTP_PROTOCOL_OPTIONS, Effect::Ignored);
        }
    }
}

fn circuit_breakers(cb: &cluster::CircuitBreakers, cx: &mut Context) -> CircuitBreakers {
    let mut out = CircuitBreakers::default();
    if !cb.per_host_thresholds.is_empty() {
        cx.report("circuit_breakers.per_host_thresholds", "envoy.config.cluster.v3.CircuitBreakers", Effect::Ignored);
    }
    for (i, t) in cb.thresholds.iter().enumerate() {
        // Only DEFAULT priority traffic exists here (routes do not set priority HIGH).
        if t.priority != 0 {
            cx.report(&format!("circuit_breakers.thresholds[{i}] (priority HIGH)"), "envoy.config.cluster.v3.CircuitBreakers.Thresholds", Effect::Ignored);
            continue;
        }
        out.max_connections = u32_or(&t.max_connections, out.max_connections);
        out.max_pending_requests = u32_or(&t.max_pending_requests, out.max_pending_requests);
        out.max_requests = u32_or(&t.max_requests, out.max_requests);
        out.max_retries = u32_or(&t.max_retries, out.max_retries);
        out.retry_budget = t.retry_budget.as_ref().map(|b| RetryBudget {
            budget_percent: b.budget_percent.as_ref().map_or(20.0, |p| p.value),
            min_retry_concurrency: u32_or(&b.min_retry_concurrency, 3),
        });
    }
    out
}

fn outlier_detection(o: &cluster::OutlierDetection) -> OutlierDetection {
    let enforced = |threshold: &Option<_>, default_threshold: u32, enforcing: &Option<_>, default_enforcing: u32| {
        let e = Enforced { threshold: u32_or(threshold, default_threshold), enforcing: u32_or(enforcing, default_enforcing).min(100) };
        (e.enforcing > 0).then_some(e)
    };
    let success_rate_enforcing = u32_or(&o.enforcing_success_rate, 100);
    let failure_enforcing = u32_or(&o.enforcing_failure_percentage, 0);
    OutlierDetection {
        interval: opt_duration(&o.interval).filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(10)),
        base_ejection_time: opt_duration(&o.base_ejection_time).unwrap_or(Duration::from_secs(30)),
        max_ejection_time: opt_duration(&o.max_ejection_time).unwrap_or(Duration::from_secs(300)),
        max_ejection_percent: u32_or(&o.max_ejection_percent, 10).min(100),
        consecutive_5xx: enforced(&o.consecutive_5xx, 5, &o.enforcing_consecutive_5xx, 100),
        consecutive_gateway_failure: enforced(&o.consecutive_gateway_failure, 5, &o.enforcing_consecutive_gateway_failure, 0),
        split_external_local_origin_errors: o.split_external_local_origin_errors,
        consecutive_local_origin_failure: enforced(&o.consecutive_local_origin_failure, 5, &o.enforcing_consecutive_local_origin_failure, 100),
        success_rate: (success_rate_enforcing > 0).then(|| SuccessRate {
            minimum_hosts: u32_or(&o.success_rate_minimum_hosts, 5),
            request_volume: u32_or(&o.success_rate_request_volume, 100),
            stdev_factor: u32_or(&o.success_rate_stdev_factor, 1900),
            enforcing: success_rate_enforcing.min(100),
        }),
        failure_percentage: (failure_enforcing > 0).then(|| FailurePercentage {
            threshold: u32_or(&o.failure_percentage_threshold, 85),
            minimum_hosts: u32_or(&o.failure_percentage_minimum_hosts, 5),
            request_volume: u32_or(&o.failure_percentage_request_volume, 50),
            enforcing: failure_enforcing.min(100),
        }),
    }
}

/// Upstream TLS is not implemented yet: record which endpoints would need it, so the
/// runtime refuses to send them plaintext instead of downgrading.
fn upstream_tls(c: &cluster::Cluster, cx: &mut Context) -> UpstreamTls {
    let is_raw = |ts: &Option<xds_client::pb::envoy::config::core::v3::TransportSocket>| match ts {
        None => true,
        Some(ts) => match &ts.config_type {
            Some(xds_client::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) => {
                extension_type(any) == "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
            }
            None => ts.name == "envoy.transport_sockets.raw_buffer",
        },
    };
    if !is_raw(&c.transport_socket) {
        cx.report("transport_socket", "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", Effect::EndpointsRefused);
        return UpstreamTls::Always;
    }
    let mut tls_modes = Vec::new();
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        if is_raw(&m.transport_socket) {
            continue;
        }
        // Istio's only use: `match: {tlsMode: istio}` -> ISTIO_MUTUAL.
        let tls_mode = m.r#match.as_ref().and_then(|s| s.fields.get("tlsMode")).and_then(|v| match &v.kind {
            Some(xds_client::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        });
        cx.report(
            &format!("transport_socket_matches[{i}] ({})", m.name),
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            Effect::EndpointsRefused,
        );
        match tls_mode {
            Some(mode) if m.r#match.as_ref().is_some_and(|s| s.fields.len() == 1) => tls_modes.push(mode),
            // A match on other metadata (or none: every endpoint) is treated as "all".
            _ => return UpstreamTls::Always,
        }
    }
    if tls_modes.is_empty() {
        UpstreamTls::Plaintext
    } else {
        UpstreamTls::WhenTlsMode(tls_modes)
    }
}

fn istio_services(c: &cluster::Cluster) -> Vec<ServiceRef> {
    use xds_client::pb::google::protobuf::value::Kind;
    let Some(istio) = c.metadata.as_ref().and_then(|m| m.filter_metadata.get("istio")) else {
        return Vec::new();
    };
    let Some(Kind::ListValue(list)) = istio.fields.get("services").and_then(|v| v.kind.as_ref()) else {
        return Vec::new();
    };
    list.values
        .iter()
        .filter_map(|v| match &v.kind {
            Some(Kind::StructValue(s)) => {
                let get = |k: &str| match s.fields.get(k).and_then(|v| v.kind.as_ref()) {
                    Some(Kind::StringValue(v)) => v.clone(),
                    _ => String::new(),
                };
                Some(ServiceRef { host: get("host"), name: get("name"), namespace: get("namespace") })
            }
            _ => None,
        })
        .collect()
}

/// Endpoints by priority.
pub(super) fn load_assignment(cla: &endpoint::ClusterLoadAssignment, path: &str) -> Result<Vec<Vec<LocalityEndpoints>>, Invalid> {
    let mut priorities: Vec<Vec<LocalityEndpoints>> = Vec::new();
    for (i, locality) in cla.endpoints.iter().enumerate() {
        let lpath = join(path, &format!("endpoints[{i}]"));
        let mut endpoints = Vec::with_capacity(locality.lb_endpoints.len());
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            endpoints.push(lb_endpoint(lb, &format!("{lpath}.lb_endpoints[{j}]"))?);
        }
        let priority = locality.priority as usize;
        if priority > 127 {
            return Err(Invalid::new(&format!("{lpath}.priority"), "priorities above 127 are not supported"));
        }
        if priorities.len() <= priority {
            priorities.resize_with(priority + 1, Vec::new);
        }
        priorities[priority].push(LocalityEndpoints {
            locality: locality.locality.as_ref().map_or_else(Locality::default, |l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            }),
            weight: locality.load_balancing_weight.as_ref().map(|w| w.value),
            endpoints,
        });
    }
    Ok(priorities)
}

fn lb_endpoint(lb: &endpoint::LbEndpoint, path: &str) -> Result<Endpoint, Invalid> {
    use endpoint::lb_endpoint::HostIdentifier;
    use xds_client::pb::envoy::config::core::v3::{address::Address as A, socket_address::PortSpecifier};
    let ep = match &lb.host_identifier {
        Some(HostIdentifier::Endpoint(e)) => e,
        Some(HostIdentifier::EndpointName(n)) => return Err(Invalid::new(path, format!("named endpoint {n:?} is not supported"))),
        None => return Err(Invalid::new(path, "an lb_endpoint needs an endpoint")),
    };
    let addr = ep.address.as_ref().ok_or_else(|| Invalid::new(path, "an endpoint needs an address"))?;
    let address = match socket_address(addr, &format!("{path}.endpoint.address")) {
        Ok(sa) => EndpointAddress::Socket(sa),
        // A hostname: resolved by DNS clusters at run time.
        Err(e) => match &addr.address {
            Some(A::SocketAddress(sa)) if !sa.address.is_empty() => match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => {
                    EndpointAddress::Dns { host: sa.address.clone(), port: u16::try_from(p).map_err(|_| Invalid::new(path, "port out of range"))? }
                }
                _ => return Err(e),
            },
            _ => return Err(e),
        },
    };
    let health = match lb.health_status {
        1 => HealthStatus::Healthy,
        2 => HealthStatus::Unhealthy,
        3 => HealthStatus::Draining,
        4 => HealthStatus::Timeout,
        5 => HealthStatus::Degraded,
        _ => HealthStatus::Unknown,
    };
    Ok(Endpoint {
        address,
        weight: lb.load_balancing_weight.as_ref().map_or(1, |w| w.value.max(1)),
        health,
        tls_mode: metadata_string(&lb.metadata, "envoy.transport_socket_match", "tlsMode"),
        workload: metadata_string(&lb.metadata, "istio", "workload"),
    })
}
