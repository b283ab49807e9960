//! The TCP proxy (Envoy's `tcp_proxy` network filter): pick an endpoint of the
//! cluster (or the original destination for ORIGINAL_DST), connect within
//! `max_connect_attempts`, then splice bytes both ways with half-close and an idle
//! timeout; `istio_tcp_*` metrics and an access log line at the end.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use istio_compat::model::cluster::Discovery;
use istio_compat::model::listener::{AccessLog, ChainKind, FilterChain, Listener, TcpCluster, TcpProxy};

use crate::io::{relay, PrefixedIo};
use crate::runtime::Worker;
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::{RequestRecord, ResponseFlags};
use crate::telemetry::metrics::{SourceLabels, TcpLabels};
use crate::upstream::host::Host;
use crate::upstream::outlier::Outcome;
use crate::upstream::pool::UpstreamIo;

#[allow(clippy::too_many_arguments)]
pub async fn proxy(
    worker: Rc<Worker>,
    snapshot: &Arc<Snapshot>,
    listener: &Arc<Listener>,
    tcp: &TcpProxy,
    io: PrefixedIo,
    remote: SocketAddr,
    destination: SocketAddr,
    original_dst: Option<SocketAddr>,
    server_name: Option<String>,
    default_log: Option<Arc<AccessLog>>,
) {
    let start = Instant::now();
    let mut rec = RequestRecord::tcp(remote, destination, server_name);
    let cluster_name: Arc<str> = match &tcp.cluster {
        TcpCluster::Cluster(c) => c.clone(),
        TcpCluster::Weighted(list) => {
            let total: u64 = list.iter().map(|(_, w)| u64::from(*w)).sum();
            let mut point = rand::random_range(0..total.max(1));
            list.iter()
                .find(|(_, w)| {
                    let hit = point < u64::from(*w);
                    point = point.saturating_sub(u64::from(*w));
                    hit
                })
                .or(list.last())
                .map(|(n, _)| n.clone())
                .unwrap_or_else(|| Arc::from(""))
        }
    };
    rec.upstream_cluster = Some(cluster_name.clone());
    let logs: Vec<AccessLog> = if !tcp.access_log.is_empty() {
        tcp.access_log.clone()
    } else if !listener.access_log.is_empty() {
        listener.access_log.clone()
    } else {
        default_log.iter().map(|l| (**l).clone()).collect()
    };
    let Some(cluster) = snapshot.clusters.get(&cluster_name).cloned() else {
        rec.response_flags.set(ResponseFlags::NO_CLUSTER_FOUND);
        finish(rec, start, &logs, 0, 0);
        return;
    };
    let destination_labels = cluster.destination_labels();
    let labels = TcpLabels {
        reporter: "source",
        source: SourceLabels::unknown(),
        destination: destination_labels.clone(),
        response_flags: Arc::from("-"),
        connection_security_policy: "unknown",
    };
    worker.shared.metrics.tcp_opened.get_or_create(&labels).inc();

    let mut upstream = None;
    let mut tried = Vec::new();
    for _ in 0..tcp.max_connect_attempts {
        let host = match cluster.config.discovery {
            Discovery::OriginalDst => original_dst.map(Host::transient),
            _ => cluster.view().pick(None, &|h: &Host| tried.contains(&h.address), 3),
        };
        let Some(host) = host else {
            rec.response_flags.set(ResponseFlags::NO_HEALTHY_UPSTREAM);
            break;
        };
        tried.push(host.address);
        rec.upstream_host = Some(host.address);
        let leg = match worker.pools.leg(Some(remote.ip()), host.address) {
            Ok(leg) => leg,
            Err(e) => {
                tracing::debug!(cluster = %cluster.name, host = %host.address, "no leg to the endpoint: {e}");
                rec.upstream_transport_failure_reason = Some(e.to_string());
                rec.response_flags.set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
                break;
            }
        };
        // Istio's mTLS to a meshed endpoint is HBONE; other upstream TLS is not originated yet.
        if host.tls_required && !matches!(leg, crate::mesh::Leg::Hbone { .. }) {
            rec.upstream_transport_failure_reason = Some("upstream TLS is not supported by node-proxy yet".into());
            rec.response_flags.set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
            break;
        }
        let Some(_slot) = cluster.try_start_connection() else {
            rec.response_flags.set(ResponseFlags::UPSTREAM_OVERFLOW);
            break;
        };
        match worker.pools.dial(&leg, &cluster).await {
            Ok(s) => {
                cluster.record_outcome(&host, Outcome::Response(200));
                if let crate::mesh::Leg::Hbone { tunnel, .. } = &leg {
                    // The only identity the tunnel's TLS accepted (no service SANs are planned).
                    rec.upstream_peer_uri_san = Some(Arc::from(tunnel.destination.identity.to_string()));
                }
                upstream = Some((s, _slot));
                break;
            }
            Err(e) => {
                tracing::debug!(cluster = %cluster.name, host = %host.address, "tcp connect failed: {e}");
                cluster.record_outcome(&host, Outcome::ConnectFailed);
                rec.upstream_transport_failure_reason = Some(e.to_string());
                rec.response_flags.set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
            }
        }
    }
    let Some((upstream, _slot)) = upstream else {
        if tried.len() as u32 >= tcp.max_connect_attempts && tcp.max_connect_attempts > 1 {
            rec.response_flags.set(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        }
        let closed = TcpLabels { response_flags: Arc::from(rec.response_flags.to_string()), ..labels };
        worker.shared.metrics.tcp_closed.get_or_create(&closed).inc();
        finish(rec, start, &logs, 0, 0);
        return;
    };
    rec.response_flags = ResponseFlags::NONE;
    rec.upstream_local_address = upstream.local_addr();
    let (received, sent) = splice(io, upstream, tcp.idle_timeout).await;
    let m = &worker.shared.metrics;
    m.tcp_received_bytes.get_or_create(&labels).inc_by(received);
    m.tcp_sent_bytes.get_or_create(&labels).inc_by(sent);
    m.tcp_closed.get_or_create(&labels).inc();
    finish(rec, start, &logs, received, sent);
}

/// The access log line of a connection the network filters (RBAC, CUSTOM) closed, with Envoy's
/// details naming the policy.
pub fn log_denied(
    listener: &Listener,
    chain: &FilterChain,
    remote: SocketAddr,
    destination: SocketAddr,
    server_name: Option<String>,
    default_log: Option<Arc<AccessLog>>,
    refused: crate::authz::Refused,
) {
    let mut rec = RequestRecord::tcp(remote, destination, server_name);
    rec.response_code_details = refused.details.into();
    rec.response_flags.set(refused.flags);
    let logs: Vec<AccessLog> = match &chain.kind {
        ChainKind::Tcp(t) if !t.access_log.is_empty() => t.access_log.clone(),
        _ if !listener.access_log.is_empty() => listener.access_log.clone(),
        _ => default_log.iter().map(|l| (**l).clone()).collect(),
    };
    if !logs.is_empty() {
        rec.emit(&logs);
    }
}

fn finish(mut rec: RequestRecord, start: Instant, logs: &[AccessLog], received: u64, sent: u64) {
    rec.duration = start.elapsed();
    rec.bytes_received = received;
    rec.bytes_sent = sent;
    if !logs.is_empty() {
        rec.emit(logs);
    }
}

/// Copies both ways until both sides have closed (half-close is passed on) or
/// nothing moves for `idle`. Returns (bytes from downstream, bytes to downstream).
async fn splice(down: PrefixedIo, up: UpstreamIo, idle: Option<Duration>) -> (u64, u64) {
    let (prefix, down) = down.into_parts();
    let down = down.into_split();
    match up {
        UpstreamIo::Tcp(tcp) => relay(prefix, down, tcp.into_split(), idle).await,
        UpstreamIo::Hbone(stream) => relay(prefix, down, stream, idle).await,
    }
}
