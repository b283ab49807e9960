//! The live configuration: an immutable [`Snapshot`] behind an atomic pointer.
//!
//! An update builds a whole new snapshot (reusing cluster state by name, so load,
//! ejections and counters survive) and swaps it in; a request holds the snapshot it
//! started with until it ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use istio_compat::model::listener::{ChainKind, RouteSource};
use istio_compat::model::{Listener, Model, Name, RouteTable};

use crate::config::ConfigSource;
use crate::upstream::cluster::ClusterState;

pub struct Snapshot {
    pub version: u64,
    pub loaded_at: SystemTime,
    pub model: Arc<Model>,
    pub listeners: HashMap<Name, Arc<Listener>>,
    pub routes: HashMap<Name, Arc<RouteTable>>,
    pub clusters: HashMap<Name, Arc<ClusterState>>,
    /// Where the configuration came from, for `/config_dump`.
    pub source: Arc<ConfigSource>,
}

impl Snapshot {
    pub fn build(model: Model, source: Arc<ConfigSource>, previous: Option<&Snapshot>) -> Snapshot {
        let clusters = model.clusters.iter().map(|(name, c)| (name.clone(), cluster_state(c, previous.and_then(|p| p.clusters.get(name))))).collect();
        Snapshot {
            version: previous.map_or(1, |p| p.version + 1),
            loaded_at: SystemTime::now(),
            listeners: model.listeners.iter().map(|(n, l)| (n.clone(), l.clone())).collect(),
            routes: model.routes.iter().map(|(n, r)| (n.clone(), r.clone())).collect(),
            clusters,
            model: Arc::new(model),
            source,
        }
    }

    /// The snapshot of `model`, which differs from `previous`'s only in the clusters
    /// named in `changed`: everything else is shared, at a cost proportional to the
    /// change (an endpoint update of a few clusters among thousands).
    pub fn build_changed(model: Model, source: Arc<ConfigSource>, previous: &Snapshot, changed: &std::collections::BTreeSet<Name>) -> Snapshot {
        let mut clusters = previous.clusters.clone();
        for name in changed {
            match model.clusters.get(name) {
                Some(c) => {
                    let state = cluster_state(c, previous.clusters.get(name));
                    clusters.insert(name.clone(), state);
                }
                None => {
                    clusters.remove(name);
                }
            }
        }
        Snapshot {
            version: previous.version + 1,
            loaded_at: SystemTime::now(),
            listeners: previous.listeners.clone(),
            routes: previous.routes.clone(),
            clusters,
            model: Arc::new(model),
            source,
        }
    }

    pub fn empty() -> Snapshot {
        Snapshot::build(Model::default(), Arc::new(ConfigSource::default()), None)
    }

    /// The listener bound to `addr`, or the wildcard listener on its port, among
    /// those that are reached by original destination (`bind_to_port: false`).
    pub fn listener_for_original_dst(&self, addr: std::net::SocketAddr) -> Option<&Arc<Listener>> {
        let mut wildcard = None;
        for l in self.listeners.values() {
            if l.bind_to_port || l.address.port() != addr.port() {
                continue;
            }
            if l.address.ip() == addr.ip() {
                return Some(l);
            }
            if l.address.ip().is_unspecified() && l.address.is_ipv4() == addr.is_ipv4() {
                wildcard = Some(l);
            }
        }
        wildcard
    }

    /// Names of route tables referenced by listeners but missing (for warnings).
    pub fn missing_routes(&self) -> Vec<Name> {
        let mut missing = Vec::new();
        for l in self.listeners.values() {
            for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
                if let ChainKind::Http(hcm) = &chain.kind {
                    if let RouteSource::Rds(name) = &hcm.routes {
                        if !self.routes.contains_key(name) {
                            missing.push(name.clone());
                        }
                    }
                }
            }
        }
        missing
    }
}

/// A cluster's live state: the previous one when the configuration did not change (the
/// same shared resource, or an equal one: load, ejections and counters go on), else a
/// new one inheriting the previous one's statistics.
fn cluster_state(config: &Arc<istio_compat::model::cluster::Cluster>, old: Option<&Arc<ClusterState>>) -> Arc<ClusterState> {
    if let Some(old) = old.filter(|o| Arc::ptr_eq(&o.config, config) || *o.config == **config) {
        return old.clone();
    }
    let state = ClusterState::new(config.clone(), old.map(|o| &**o));
    if let Some(old) = old {
        state.inherit_stats(old);
    }
    Arc::new(state)
}

/// The one live snapshot, shared by every worker.
pub struct Live {
    current: ArcSwap<Snapshot>,
}

impl Live {
    pub fn new(snapshot: Snapshot) -> Self {
        Live { current: ArcSwap::from_pointee(snapshot) }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds and swaps in a snapshot of `model`.
    pub fn update(&self, model: Model, source: Arc<ConfigSource>) -> Arc<Snapshot> {
        let previous = self.current.load_full();
        let next = Arc::new(Snapshot::build(model, source, Some(&previous)));
        self.current.store(next.clone());
        next
    }

    /// Swaps in a snapshot of `model`, which differs from the live one only in the
    /// clusters named in `changed` ([`Snapshot::build_changed`]).
    pub fn update_changed(&self, model: Model, source: Arc<ConfigSource>, changed: &std::collections::BTreeSet<Name>) -> Arc<Snapshot> {
        let previous = self.current.load_full();
        let next = Arc::new(Snapshot::build_changed(model, source, &previous, changed));
        self.current.store(next.clone());
        next
    }
}
