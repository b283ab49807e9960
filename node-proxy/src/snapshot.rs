//! The live configuration: an immutable [`Snapshot`] behind an atomic pointer.
//!
//! An update builds a new snapshot (reusing cluster state by name, so load, ejections
//! and counters survive) and swaps it in; a request holds the snapshot it started
//! with until it ends. The maps are persistent (`imbl`): a snapshot that differs from
//! the previous one in a few clusters shares every other entry with it, so building
//! it, and dropping the old one when its last request ends, costs what changed, not
//! the size of the configuration.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use istio_compat::model::listener::{ChainKind, RouteSource};
use istio_compat::model::{Cluster, Listener, Model, Name, RouteTable};

use crate::config::ConfigSource;
use crate::upstream::cluster::ClusterState;

/// A persistent map by resource name.
pub type Map<V> = imbl::HashMap<Name, Arc<V>>;

pub struct Snapshot {
    pub version: u64,
    pub loaded_at: SystemTime,
    pub listeners: Map<Listener>,
    pub routes: Map<RouteTable>,
    pub clusters: Map<ClusterState>,
    /// The clusters with timed work for the control thread ([`ClusterState::has_timed_work`]):
    /// it visits these, not thousands of plain EDS clusters, on every tick.
    pub timed: imbl::HashSet<Name>,
    /// Where the configuration came from, for `/config_dump`.
    pub source: Arc<ConfigSource>,
}

impl Snapshot {
    pub fn build(model: Model, source: Arc<ConfigSource>, previous: Option<&Snapshot>) -> Snapshot {
        let clusters: Map<ClusterState> =
            model.clusters.iter().map(|(name, c)| (name.clone(), cluster_state(c, previous.and_then(|p| p.clusters.get(name))))).collect();
        let timed = clusters.iter().filter(|(_, c)| c.has_timed_work()).map(|(n, _)| n.clone()).collect();
        Snapshot {
            version: previous.map_or(1, |p| p.version + 1),
            loaded_at: SystemTime::now(),
            listeners: model.listeners.into_iter().collect(),
            routes: model.routes.into_iter().collect(),
            clusters,
            timed,
            source,
        }
    }

    /// `previous` with the clusters in `changed` replaced (or added): everything else
    /// is shared, at a cost proportional to the change (an endpoint update of a few
    /// clusters among thousands).
    pub fn with_clusters(previous: &Snapshot, changed: impl IntoIterator<Item = (Name, Arc<Cluster>)>) -> Snapshot {
        let mut clusters = previous.clusters.clone();
        let mut timed = previous.timed.clone();
        for (name, config) in changed {
            let state = cluster_state(&config, previous.clusters.get(&name));
            if state.has_timed_work() {
                timed.insert(name.clone());
            } else {
                timed.remove(&name);
            }
            clusters.insert(name, state);
        }
        Snapshot {
            version: previous.version + 1,
            loaded_at: SystemTime::now(),
            listeners: previous.listeners.clone(),
            routes: previous.routes.clone(),
            clusters,
            timed,
            source: previous.source.clone(),
        }
    }

    pub fn empty() -> Snapshot {
        Snapshot::build(Model::default(), Arc::new(ConfigSource::default()), None)
    }

    /// The configuration this snapshot serves, as a model (`/config_dump?format=model`).
    pub fn model(&self) -> Model {
        Model {
            listeners: self.listeners.iter().map(|(n, l)| (n.clone(), l.clone())).collect(),
            routes: self.routes.iter().map(|(n, r)| (n.clone(), r.clone())).collect(),
            clusters: self.clusters.iter().map(|(n, c)| (n.clone(), c.config.clone())).collect(),
        }
    }

    /// Whether this snapshot serves exactly `model`'s resources (compared by pointer,
    /// then by value).
    pub fn serves(&self, model: &Model) -> bool {
        fn same<T: PartialEq, U>(ours: &Map<U>, theirs: &std::collections::BTreeMap<Name, Arc<T>>, config: impl Fn(&Arc<U>) -> &Arc<T>) -> bool {
            ours.len() == theirs.len() && theirs.iter().all(|(n, v)| ours.get(n).map(&config).is_some_and(|o| Arc::ptr_eq(o, v) || **o == **v))
        }
        same(&self.listeners, &model.listeners, |l| l) && same(&self.routes, &model.routes, |r| r) && same(&self.clusters, &model.clusters, |c| &c.config)
    }

    /// The listener for local workloads' inbound traffic (`traffic_direction: INBOUND`,
    /// Istio's `virtualInbound`); the first by name if there are several.
    pub fn inbound_listener(&self) -> Option<&Arc<Listener>> {
        self.listeners.iter().filter(|(_, l)| l.inbound).min_by(|a, b| a.0.cmp(b.0)).map(|(_, l)| l)
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

/// The one live snapshot, shared by every worker; [`Live::changes`] tells watchers
/// (the redirect set) that a new one is live.
pub struct Live {
    current: ArcSwap<Snapshot>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Live {
    pub fn new(snapshot: Snapshot) -> Self {
        let version = snapshot.version;
        Live { current: ArcSwap::from_pointee(snapshot), changed: tokio::sync::watch::channel(version).0 }
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Changes (the new snapshot's version) from now on.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn store(&self, next: Arc<Snapshot>) {
        let version = next.version;
        self.current.store(next);
        self.changed.send_replace(version);
    }

    /// Builds and swaps in a snapshot of `model`.
    pub fn update(&self, model: Model, source: Arc<ConfigSource>) -> Arc<Snapshot> {
        let previous = self.current.load_full();
        let next = Arc::new(Snapshot::build(model, source, Some(&previous)));
        self.store(next.clone());
        next
    }

    /// Swaps in the live snapshot with the clusters in `changed` replaced
    /// ([`Snapshot::with_clusters`]).
    pub fn update_clusters(&self, changed: impl IntoIterator<Item = (Name, Arc<Cluster>)>) -> Arc<Snapshot> {
        let previous = self.current.load_full();
        let next = Arc::new(Snapshot::with_clusters(&previous, changed));
        self.store(next.clone());
        next
    }
}
