//! Which destinations need the node proxy: the redirect set, computed from the live
//! snapshot (Envoy listeners, routes, clusters) and the workload view (Istio's
//! workload API).
//!
//! A destination `(IP, port)` is redirected when connecting to it involves work only
//! the proxy does:
//! - **L7**: a listener reached by original destination (`bind_to_port: false`, as
//!   istiod's sidecar outbound listeners `0.0.0.0_8080` and `10.96.0.10_9042`) has an
//!   HTTP connection manager for it (routing, retries, timeouts, L7 policy), or a filter
//!   chain it must refuse (a policy it cannot enforce is never skipped by bypassing it).
//!   For a wildcard listener the destinations are the services its route table serves
//!   (virtual host domains that are addresses, and the VIPs of workload-API services
//!   whose hostnames it names) and, as headless services and Cassandra drivers dial
//!   pods directly, the endpoints of the clusters its routes lead to.
//! - **TLS from the proxy**: a TCP chain whose cluster originates TLS, always or (Istio's
//!   auto mTLS) for the endpoints labelled with a TLS mode, when it has such endpoints.
//! - **mTLS between nodes** (workload API): every port of a workload that takes HBONE or
//!   sits behind a waypoint, and each port of a service VIP with such an endpoint or a
//!   waypoint of its own.
//!
//! Port 0 stands for every port of the address. Loopback, unspecified and multicast
//! addresses are never redirected, nor the proxy's own address.
//!
//! Does not own: writing the set into the kernel ([`super::Redirect`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use istio_compat::model::cluster::{Cluster, EndpointAddress, UpstreamTls};
use istio_compat::model::listener::{ChainKind, FilterChain, Listener, RouteSource, TcpCluster};
use istio_compat::model::route::{Action, ClusterSpecifier, RouteTable};
use istio_compat::model::workload::{TunnelProtocol, WorkloadModel};

use crate::snapshot::Snapshot;

/// The destinations to redirect, and what could not be expressed as one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedirectSet {
    pub destinations: BTreeSet<SocketAddr>,
    /// Destination prefixes wider than one address (a filter chain matching
    /// `10.0.0.0/8`): the set holds single addresses, so these are not redirected.
    pub skipped_prefixes: BTreeSet<ipnet::IpNet>,
}

impl RedirectSet {
    /// The set for `snapshot` and `workloads`, never containing `proxy` itself.
    pub fn compute(snapshot: &Snapshot, workloads: &WorkloadModel, proxy: SocketAddr) -> RedirectSet {
        let mut set = RedirectSet::default();
        for listener in snapshot.listeners.values().filter(|l| !l.bind_to_port) {
            set.add_listener(snapshot, workloads, listener);
        }
        set.add_mesh(workloads);
        set.destinations.retain(|d| redirectable(d.ip()) && !(d.ip() == proxy.ip() && (d.port() == proxy.port() || d.port() == 0)));
        set
    }

    fn add_listener(&mut self, snapshot: &Snapshot, workloads: &WorkloadModel, listener: &Listener) {
        for chain in listener.filter_chains.iter().chain(&listener.default_filter_chain) {
            let port = chain.matcher.destination_port.unwrap_or(listener.address.port());
            let clusters = match needs_proxy(snapshot, chain) {
                Need::No => continue,
                Need::Yes { clusters } => clusters,
            };
            // Where the chain applies: the listener's own address, the chain's
            // destination prefixes, or (a wildcard listener) the services it serves.
            let mut addresses: Vec<IpAddr> = Vec::new();
            if !listener.address.ip().is_unspecified() {
                addresses.push(listener.address.ip());
            } else if !chain.matcher.prefix_ranges.is_empty() {
                for prefix in &chain.matcher.prefix_ranges {
                    if prefix.prefix_len() == prefix.max_prefix_len() {
                        addresses.push(prefix.addr());
                    } else {
                        self.skipped_prefixes.insert(*prefix);
                    }
                }
            } else if let ChainKind::Http(hcm) = &chain.kind {
                let table = match &hcm.routes {
                    RouteSource::Inline(t) => Some(&**t),
                    RouteSource::Rds(name) => snapshot.routes.get(name).map(|t| &**t),
                };
                if let Some(table) = table {
                    self.add_served_services(table, workloads, port);
                }
            }
            self.destinations.extend(addresses.into_iter().map(|ip| SocketAddr::new(ip, port)));
            // Pods behind the chain are dialed directly too (headless services, CQL drivers).
            for cluster in clusters.iter().filter_map(|c| snapshot.clusters.get(c)) {
                self.add_endpoints(&cluster.config);
            }
        }
    }

    /// VIPs a route table serves on `port`: domains that are addresses, and the
    /// workload-API services its domains name.
    fn add_served_services(&mut self, table: &RouteTable, workloads: &WorkloadModel, port: u16) {
        let mut hostnames = BTreeSet::new();
        for domain in table.virtual_hosts.iter().flat_map(|v| &v.domains) {
            match parse_domain(domain) {
                Domain::Address(ip, domain_port) => {
                    if domain_port.is_none_or(|p| p == port) {
                        self.destinations.insert(SocketAddr::new(ip, port));
                    }
                }
                Domain::Host(host) => {
                    hostnames.insert(host);
                }
                Domain::Wildcard => {}
            }
        }
        for service in workloads.services.values().filter(|s| hostnames.contains(&*s.hostname) && s.target_port(port).is_some()) {
            self.destinations.extend(service.vips.iter().map(|v| SocketAddr::new(v.address, port)));
        }
    }

    fn add_endpoints(&mut self, cluster: &Cluster) {
        for endpoint in cluster.endpoints() {
            if let EndpointAddress::Socket(addr) = endpoint.address {
                self.destinations.insert(addr);
            }
        }
    }

    /// Destinations reached with mTLS (HBONE) or through a waypoint.
    fn add_mesh(&mut self, workloads: &WorkloadModel) {
        let meshed = |w: &istio_compat::model::workload::Workload| w.tunnel == TunnelProtocol::Hbone || w.waypoint.is_some();
        for workload in workloads.workloads.values().filter(|w| meshed(w)) {
            self.destinations.extend(workload.addresses.iter().map(|ip| SocketAddr::new(*ip, 0)));
        }
        for service in workloads.services.values() {
            let needs = service.waypoint.is_some() || workloads.endpoints(&service.key()).any(|(w, _)| meshed(w));
            if needs {
                for vip in &service.vips {
                    self.destinations.extend(service.ports.iter().map(|p| SocketAddr::new(vip.address, p.service_port)));
                }
            }
        }
    }
}

enum Need {
    No,
    /// The clusters the chain sends to (whose endpoints are redirected too).
    Yes {
        clusters: Vec<istio_compat::model::Name>,
    },
}

/// Whether a filter chain does work only the proxy can do, and where it sends.
fn needs_proxy(snapshot: &Snapshot, chain: &FilterChain) -> Need {
    match &chain.kind {
        ChainKind::Http(hcm) => {
            let table = match &hcm.routes {
                RouteSource::Inline(t) => Some(&**t),
                RouteSource::Rds(name) => snapshot.routes.get(name).map(|t| &**t),
            };
            Need::Yes { clusters: table.map(route_clusters).unwrap_or_default() }
        }
        ChainKind::Refuse { .. } => Need::Yes { clusters: Vec::new() },
        ChainKind::Tcp(tcp) => {
            let clusters: Vec<_> = match &tcp.cluster {
                TcpCluster::Cluster(name) => vec![name.clone()],
                TcpCluster::Weighted(w) => w.iter().map(|(name, _)| name.clone()).collect(),
            };
            let tls = clusters.iter().filter_map(|c| snapshot.clusters.get(c)).any(|c| originates_tls(&c.config));
            if tls {
                Need::Yes { clusters }
            } else {
                Need::No
            }
        }
    }
}

/// Whether the proxy speaks TLS to (some of) the cluster's endpoints.
fn originates_tls(cluster: &Cluster) -> bool {
    match &cluster.tls {
        UpstreamTls::Plaintext => false,
        UpstreamTls::Always => true,
        UpstreamTls::WhenTlsMode(_) => cluster.endpoints().any(|e| cluster.tls.required_for(e)),
    }
}

/// Every cluster a route table forwards to.
fn route_clusters(table: &RouteTable) -> Vec<istio_compat::model::Name> {
    let mut out = Vec::new();
    for route in table.virtual_hosts.iter().flat_map(|v| &v.routes) {
        if let Action::Forward(f) = &route.action {
            match &f.cluster {
                ClusterSpecifier::Cluster(name) => out.push(name.clone()),
                ClusterSpecifier::Weighted(w) => out.extend(w.clusters.iter().map(|c| c.name.clone())),
                ClusterSpecifier::Header(_) => {}
            }
        }
    }
    out
}

enum Domain<'a> {
    Address(IpAddr, Option<u16>),
    Host(&'a str),
    Wildcard,
}

/// A virtual host domain: `10.96.0.10`, `10.96.0.10:8080`, `[fd00::1]:80`, a hostname
/// (with or without port), or a wildcard.
fn parse_domain(domain: &str) -> Domain<'_> {
    if domain.contains('*') {
        return Domain::Wildcard;
    }
    if let Ok(ip) = domain.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Domain::Address(ip, None);
    }
    if let Ok(addr) = domain.parse::<SocketAddr>() {
        return Domain::Address(addr.ip(), Some(addr.port()));
    }
    let host = match domain.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => domain,
    };
    Domain::Host(host)
}

/// Addresses a pod can meaningfully be redirected away from.
fn redirectable(ip: IpAddr) -> bool {
    let mapped = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    !(mapped.is_loopback() || mapped.is_unspecified() || mapped.is_multicast())
}

#[cfg(test)]
mod tests;
