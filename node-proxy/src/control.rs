//! Background work on the control thread: outlier-detection intervals and DNS
//! resolution for STRICT_DNS / LOGICAL_DNS clusters, for whatever snapshot is live.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use istio_compat::model::cluster::{Discovery, EndpointAddress};
use tokio::time::Instant;

use crate::snapshot::Live;

/// Resolves every DNS cluster of the live snapshot once (at start-up, before ready).
pub async fn resolve_all(live: &Live) {
    let snapshot = live.load();
    for cluster in snapshot.clusters.values().filter(|c| c.is_dns()) {
        resolve(cluster.clone()).await;
    }
}

async fn resolve(cluster: Arc<crate::upstream::cluster::ClusterState>) {
    let logical = matches!(cluster.config.discovery, Discovery::LogicalDns { .. });
    let mut addresses = Vec::new();
    for ep in cluster.config.endpoints() {
        match &ep.address {
            EndpointAddress::Socket(a) => addresses.push(*a),
            EndpointAddress::Dns { host, port } => match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(found) => {
                    let found: Vec<_> = found.collect();
                    if logical {
                        addresses.extend(found.into_iter().take(1));
                    } else {
                        addresses.extend(found);
                    }
                }
                Err(e) => tracing::warn!(cluster = %cluster.name, "DNS resolution of {host} failed: {e}; keeping the previous addresses"),
            },
        }
    }
    if !addresses.is_empty() {
        addresses.sort();
        addresses.dedup();
        cluster.set_resolved(addresses);
    }
}

/// Runs forever: every 100 ms, runs what is due.
pub async fn run(live: Arc<Live>) {
    let mut next_outlier: HashMap<Arc<str>, Instant> = HashMap::new();
    // Per DNS cluster: when to resolve next, and which cluster object that was for
    // (a replaced cluster starts without addresses and is resolved at once).
    let mut next_dns: HashMap<Arc<str>, (Instant, usize)> = HashMap::new();
    let mut seen_version = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let snapshot = live.load();
        let now = Instant::now();
        for name in &snapshot.timed {
            let Some(cluster) = snapshot.clusters.get(name) else { continue };
            if let Some(od) = &cluster.config.outlier_detection {
                let due = next_outlier.entry(name.clone()).or_insert_with(|| now + od.interval);
                if *due <= now {
                    cluster.outlier_interval();
                    *due = now + crate::upstream::outlier::interval(od);
                }
            }
            let refresh = match cluster.config.discovery {
                Discovery::StrictDns { refresh } | Discovery::LogicalDns { refresh } => refresh,
                _ => continue,
            };
            let id = Arc::as_ptr(cluster) as usize;
            let entry = next_dns.entry(name.clone()).or_insert((now, id));
            if entry.0 <= now || entry.1 != id {
                *entry = (now + refresh, id);
                tokio::spawn(resolve(cluster.clone()));
            }
        }
        if snapshot.version != seen_version {
            seen_version = snapshot.version;
            next_outlier.retain(|n, _| snapshot.timed.contains(n));
            next_dns.retain(|n, _| snapshot.timed.contains(n));
        }
    }
}
