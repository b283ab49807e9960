//! Configuration from istiod over ADS: the Envoy resources (LDS, RDS, CDS, EDS) of a
//! sidecar-type stream, validated and translated one by one, warmed, and applied as
//! one new snapshot per response.
//!
//! Owns: which resources are held (active, warming, and the last failure of each),
//! warming (an EDS cluster waits for its endpoints; a route table waits for clusters
//! that are still warming; a listener waits for its route tables; each at most the
//! initial fetch timeout, as Envoy's `initial_fetch_timeout`), removal of route tables
//! and endpoints no longer referenced (Envoy's unsubscribe), binding new listeners
//! before accepting them (a failed bind is a NACK), and the dynamic half of
//! `/config_dump`. Does not own: the stream (`xds_client::ads`) or what a resource
//! means (`istio_compat::translate`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use istio_compat::model::cluster::Cluster;
use istio_compat::model::{Listener, Model, Name, RouteTable};
use istio_compat::translate::{self, One, Priorities};
use prost::Message;
use xds_client::ads::{self, Event, Handler, Interest, Rejection, Update};
use xds_client::pb::envoy::admin::v3 as admin;
use xds_client::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use xds_client::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_client::pb::envoy::config::listener::v3::Listener as PbListener;
use xds_client::pb::envoy::config::route::v3::RouteConfiguration;
use xds_client::pb::google::protobuf::{Any, Timestamp};
use xds_client::type_url;

use crate::config::ConfigSource;
use crate::listener::{self, Bound, ListenerManager};
use crate::snapshot::Live;
use crate::telemetry::metrics::{Metrics, ResourceLabels, TypeLabel};

pub mod workload;

/// How to reach istiod and who to be.
#[derive(Clone, Debug)]
pub struct XdsSettings {
    /// `https://istiod.istio-system.svc:15012` or `http://…:15010`.
    pub address: String,
    pub root_cert: Option<PathBuf>,
    pub server_name: Option<String>,
    pub token_path: Option<PathBuf>,
    pub cluster_id: Option<String>,
    pub protocol: ads::Protocol,
    pub identity: xds_client::node::NodeIdentity,
    /// How long a resource may warm (and start-up may wait) before going live anyway.
    pub initial_fetch_timeout: Duration,
    /// Also open the ztunnel-type stream for Istio's workload API.
    pub workload_api: bool,
}

impl XdsSettings {
    fn ads_config(&self, node: xds_client::pb::envoy::config::core::v3::Node, protocol: ads::Protocol) -> ads::AdsConfig {
        let mut transport = xds_client::transport::TransportConfig::new(&self.address);
        transport.root_cert = self.root_cert.clone();
        transport.server_name = self.server_name.clone();
        transport.token_path = self.token_path.clone();
        transport.cluster_id = self.cluster_id.clone();
        ads::AdsConfig { transport, node, protocol, backoff: ads::Backoff::default() }
    }

    /// The sidecar-type stream carrying Envoy resources.
    pub fn envoy_stream(&self) -> ads::AdsConfig {
        self.ads_config(xds_client::node::sidecar(&self.identity), self.protocol)
    }

    /// The ztunnel-type stream carrying the workload API (Delta only, as istiod serves it).
    pub fn workload_stream(&self) -> ads::AdsConfig {
        self.ads_config(xds_client::node::ztunnel(&self.identity), ads::Protocol::Delta)
    }
}

/// A resource as held: its translation and where it came from.
struct Held<T> {
    version: String,
    last_updated: SystemTime,
    /// When it started warming (or went live).
    since: Instant,
    raw: Any,
    value: Arc<T>,
}

/// The last update of a resource that was rejected.
struct Failure {
    version: String,
    at: SystemTime,
    reason: String,
    raw: Option<Any>,
}

/// The resources of one type.
struct Kind<T> {
    type_url: &'static str,
    active: BTreeMap<Name, Held<T>>,
    warming: BTreeMap<Name, Held<T>>,
    failures: BTreeMap<Name, Failure>,
    /// The last version_info (state of the world) or system version (Delta) received.
    version: String,
    /// Whether a response of this type arrived yet.
    received: bool,
    /// Encoded size of the resources held (active and warming), kept as they come and go.
    bytes: usize,
}

impl<T> Kind<T> {
    fn new(type_url: &'static str) -> Self {
        Kind { type_url, active: BTreeMap::new(), warming: BTreeMap::new(), failures: BTreeMap::new(), version: String::new(), received: false, bytes: 0 }
    }

    /// The newest accepted version of `name`: warming if there is one, else active.
    fn latest(&self, name: &str) -> Option<&Held<T>> {
        self.warming.get(name).or_else(|| self.active.get(name))
    }

    fn names(&self) -> impl Iterator<Item = &Name> {
        self.active.keys().chain(self.warming.keys())
    }

    fn remove(&mut self, name: &str) -> bool {
        let a = self.active.remove(name).map(|h| self.forget(&h)).is_some();
        let w = self.warming.remove(name).map(|h| self.forget(&h)).is_some();
        self.failures.remove(name);
        a || w
    }

    fn forget(&mut self, h: &Held<T>) {
        self.bytes = self.bytes.saturating_sub(h.raw.value.len());
    }

    /// Holds `held` as the active version of `name`.
    fn put_active(&mut self, name: Name, held: Held<T>) {
        self.bytes += held.raw.value.len();
        if let Some(old) = self.active.insert(name, held) {
            self.forget(&old);
        }
    }

    /// Holds `held` as the warming version of `name`.
    fn put_warming(&mut self, name: Name, held: Held<T>) {
        self.bytes += held.raw.value.len();
        if let Some(old) = self.warming.insert(name, held) {
            self.forget(&old);
        }
    }

    /// Makes the warming version of `name` the active one; false when none warms.
    fn promote(&mut self, name: &str) -> bool {
        let Some((name, h)) = self.warming.remove_entry(name) else { return false };
        // Still counted: it moves.
        if let Some(old) = self.active.insert(name, h) {
            self.forget(&old);
        }
        true
    }

    /// Takes `c` in place if it equals the active version (only its version and raw form
    /// change, so it keeps its live state and drops any warming successor); else hands it back.
    fn keep_unchanged(&mut self, c: Candidate<T>) -> Option<Candidate<T>>
    where
        T: PartialEq,
    {
        self.failures.remove(&c.name);
        match self.active.get_mut(&c.name) {
            Some(h) if *h.value == c.value => {
                h.version = c.version;
                let old = std::mem::replace(&mut h.raw, c.raw);
                self.bytes = (self.bytes + h.raw.value.len()).saturating_sub(old.value.len());
                if let Some(w) = self.warming.remove(&c.name) {
                    self.forget(&w);
                }
                None
            }
            _ => Some(c),
        }
    }

    /// Takes `c`: in place if unchanged, else to warming.
    fn place(&mut self, c: Candidate<T>)
    where
        T: PartialEq,
    {
        if let Some(c) = self.keep_unchanged(c) {
            let (name, held) = EnvoyState::held(c);
            self.put_warming(name, held);
        }
    }
}

/// A cluster with its endpoints attached, and what it was made from.
struct Attached {
    config: Arc<Cluster>,
    endpoints: Option<Arc<Priorities>>,
    cluster: Arc<Cluster>,
}

/// The EDS and RDS names the held clusters and listeners use, and the subscriptions
/// they make.
#[derive(Default)]
struct Wanted {
    eds: BTreeSet<Name>,
    /// EDS service name -> the clusters (active or warming) that take it.
    eds_users: BTreeMap<Name, Vec<Name>>,
    rds: BTreeSet<Name>,
    subscriptions: Vec<(String, Interest)>,
}

/// A resource of an update that is not taken, and why.
struct Refused {
    name: Name,
    version: String,
    /// The resource as received, when it decoded.
    raw: Option<Any>,
    reason: String,
}

/// An update, decoded and translated.
struct Decoded<T> {
    accepted: Vec<Candidate<T>>,
    refused: Vec<Refused>,
    /// Names a Delta response removes.
    removed: Vec<String>,
    /// State of the world: the update holds every resource of its type.
    full: bool,
    version: String,
}

/// A decoded and translated resource, before it is placed.
struct Candidate<T> {
    name: Name,
    version: String,
    raw: Any,
    value: T,
}

/// Everything the Envoy-resource stream holds.
pub struct EnvoyState {
    listeners: Kind<Listener>,
    routes: Kind<RouteTable>,
    clusters: Kind<Cluster>,
    endpoints: Kind<Priorities>,
    /// Sockets of listeners bound but not yet accepting (warming).
    pending_sockets: HashMap<Name, Bound>,
    /// Clusters with their endpoints attached, reused while neither changes; keyed by
    /// the address of the cluster's `Arc` (held alive in the entry), cheaper to hash
    /// than its name.
    attached: HashMap<usize, Attached>,
    /// What the held clusters and listeners ask for over EDS and RDS, recomputed only
    /// when clusters or listeners change (an endpoint update costs what it changes).
    wanted: Wanted,
    topology_changed: bool,
    /// Something besides endpoints changed since the last publish: rebuild the model.
    full_publish: bool,
    /// EDS service names whose assignments changed since the last publish.
    dirty_services: BTreeSet<Name>,
    manager: ListenerManager,
    static_model: Model,
    source: Arc<ConfigSource>,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    warm_timeout: Duration,
    started: Instant,
    ready: tokio::sync::watch::Sender<bool>,
}

/// The shared handle: the ADS handler, the warming timer and the admin port use it.
#[derive(Clone)]
pub struct Xds(Arc<Mutex<EnvoyState>>);

/// How long the Envoy descriptor pool is kept after the last translation needed it.
const DESCRIPTOR_POOL_IDLE: Duration = Duration::from_secs(5);

/// Why a resource type is not taken.
const UNKNOWN_TYPE: &str = "node-proxy does not take this resource type on the Envoy stream";

impl Xds {
    pub fn new(
        manager: ListenerManager,
        static_model: Model,
        source: Arc<ConfigSource>,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
        warm_timeout: Duration,
    ) -> (Xds, tokio::sync::watch::Receiver<bool>) {
        let (ready, ready_rx) = tokio::sync::watch::channel(false);
        let state = EnvoyState {
            listeners: Kind::new(type_url::LISTENER),
            routes: Kind::new(type_url::ROUTE_CONFIGURATION),
            clusters: Kind::new(type_url::CLUSTER),
            endpoints: Kind::new(type_url::CLUSTER_LOAD_ASSIGNMENT),
            pending_sockets: HashMap::new(),
            attached: HashMap::new(),
            wanted: Wanted::default(),
            topology_changed: true,
            full_publish: true,
            dirty_services: BTreeSet::new(),
            manager,
            static_model,
            source,
            live,
            metrics,
            warm_timeout,
            started: Instant::now(),
            ready,
        };
        let mut state = state;
        state.refresh_wanted();
        (Xds(Arc::new(Mutex::new(state))), ready_rx)
    }

    fn lock(&self) -> MutexGuard<'_, EnvoyState> {
        // A panic while holding the lock leaves consistent data (every update is
        // applied to the store before the snapshot is built): carry on with it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the stream until `shutdown`, and the warming timer beside it.
    pub async fn run(self, config: ads::AdsConfig, shutdown: impl std::future::Future<Output = ()>) {
        let timer = {
            let xds = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    xds.lock().on_tick();
                }
            })
        };
        let mut handler = EnvoyHandler(self);
        ads::run(config, &mut handler, shutdown).await;
        timer.abort();
    }

    /// The dynamic resources for `/config_dump`, as Envoy's admin messages.
    pub fn dump(&self) -> Dump {
        self.lock().dump()
    }
}

/// The dynamic halves of Envoy's admin config dumps (the static fields are empty).
pub struct Dump {
    pub clusters: admin::ClustersConfigDump,
    pub endpoints: admin::EndpointsConfigDump,
    pub listeners: admin::ListenersConfigDump,
    pub routes: admin::RoutesConfigDump,
}

struct EnvoyHandler(Xds);

impl Handler for EnvoyHandler {
    fn apply(&mut self, type_url: &str, update: Update) -> Vec<Rejection> {
        self.0.lock().apply(type_url, update)
    }

    fn subscriptions(&self) -> Vec<(String, Interest)> {
        self.0.lock().subscriptions()
    }

    fn event(&mut self, event: Event<'_>) {
        let metrics = self.0.lock().metrics.clone();
        log_event("Envoy resources", event, Some(&metrics.xds.connected));
    }
}

/// As Envoy: a cluster or listener named like one of the static configuration cannot
/// be added or changed over xDS. Its update is skipped (acknowledged, not held) and
/// the static one keeps serving.
fn skip_static<T, S>(cands: &mut Vec<Candidate<T>>, statics: &BTreeMap<Name, Arc<S>>, what: &str) {
    cands.retain(|c| {
        let clash = statics.contains_key(&c.name);
        if clash {
            tracing::warn!(name = %c.name, "{what} {} is in the static configuration, which xDS cannot change: update skipped", c.name);
        }
        !clash
    });
}

/// Logs a stream event; `connected` follows the stream's state.
fn log_event(stream: &str, event: Event<'_>, connected: Option<&prometheus_client::metrics::gauge::Gauge>) {
    match event {
        Event::Connecting { address } => tracing::debug!(%address, stream, "connecting to istiod"),
        Event::Connected => {
            if let Some(g) = connected {
                g.set(1);
            }
            tracing::info!(stream, "xDS stream to istiod connected");
        }
        Event::Disconnected { error, retry_in } => {
            if let Some(g) = connected {
                g.set(0);
            }
            tracing::warn!(?retry_in, stream, "xDS stream to istiod lost: {error}; serving the last good configuration");
        }
        Event::Received { type_url, resources, removed } => tracing::debug!(type_url, resources, removed, "xDS response"),
        Event::Acked { type_url, version } => tracing::debug!(type_url, version, "xDS ACK"),
        Event::Nacked { type_url, version, rejections } => {
            for r in rejections {
                tracing::warn!(type_url, version, resource = %r.name, "xDS resource rejected: {}", r.reason);
            }
        }
    }
}

/// Drops the resources of an update nobody subscribed to (accepted or refused; a
/// payload that did not decode has no name to judge by and is kept).
fn retain_wanted<T>(accepted: &mut Vec<Candidate<T>>, refused: &mut Vec<Refused>, wanted: &BTreeSet<Name>) {
    accepted.retain(|c| wanted.contains(&c.name));
    refused.retain(|r| wanted.contains(&r.name) || r.raw.is_none());
}

/// Every resource of an update of a type the stream does not take, NACKed with `reason`
/// (the type itself when the update holds none).
pub(super) fn reject_all(type_url: &str, update: Update, reason: &str) -> Vec<Rejection> {
    let names: Vec<String> = match update {
        Update::Full { resources, .. } => (0..resources.len()).map(|i| format!("resources[{i}]")).collect(),
        Update::Delta { resources, .. } => resources.into_iter().map(|r| r.name).collect(),
    };
    let mut r: Vec<Rejection> = names.into_iter().map(|name| Rejection { name, reason: reason.to_owned() }).collect();
    if r.is_empty() {
        r.push(Rejection { name: type_url.to_owned(), reason: reason.to_owned() });
    }
    r
}

/// Counts an applied update (taken or rejected) and the time it took, per type.
pub(super) fn record_update(metrics: &Metrics, label: &TypeLabel, start: Instant, rejections: &[Rejection]) {
    let m = &metrics.xds;
    if rejections.is_empty() {
        m.update_success.get_or_create(label).inc();
    } else {
        m.update_rejected.get_or_create(label).inc();
    }
    m.update_duration_ms.get_or_create(label).observe(start.elapsed().as_secs_f64() * 1000.0);
}

fn decode<M: Message + Default + prost::Name>(any: &Any) -> Result<M, String> {
    let want = M::type_url();
    if any.type_url != want && xds_client::protojson::type_name(&any.type_url) != M::full_name() {
        return Err(format!("expected a {want}, got {}", any.type_url));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("cannot decode {}: {e}", M::full_name()))
}

fn log_unsupported(unsupported: &[translate::Unsupported]) {
    for u in unsupported {
        tracing::warn!("{u}");
    }
}

/// Decodes and translates every resource of an update; returns the candidates, the
/// rejections, and (Delta) the removed names.
fn candidates<M, T>(update: Update, name_of: impl Fn(&M) -> &str, translate: impl Fn(&M) -> One<T>) -> Decoded<T>
where
    M: Message + Default + prost::Name,
{
    let (items, removed, full, version) = match update {
        Update::Full { version, resources } => (resources.into_iter().map(|a| (None, version.clone(), a)).collect::<Vec<_>>(), Vec::new(), true, version),
        Update::Delta { system_version, resources, removed } => {
            (resources.into_iter().map(|r| (Some(r.name), r.version, r.body)).collect(), removed, false, system_version)
        }
    };
    let mut out = Vec::new();
    let mut rejected = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, (given, version, raw)) in items.into_iter().enumerate() {
        let fallback = given.clone().unwrap_or_else(|| format!("resources[{i}]"));
        let message = match decode::<M>(&raw) {
            Ok(m) => m,
            Err(reason) => {
                // Bytes that do not decode cannot be shown in /config_dump either.
                rejected.push(Refused { name: Name::from(fallback), version, raw: None, reason });
                continue;
            }
        };
        let name = name_of(&message).to_owned();
        if let Some(given) = &given {
            if *given != name {
                rejected.push(Refused {
                    name: Name::from(given.as_str()),
                    version,
                    raw: Some(raw),
                    reason: format!("the resource is named {name:?}, not {given:?}"),
                });
                continue;
            }
        }
        if name.is_empty() {
            rejected.push(Refused { name: Name::from(fallback), version, raw: Some(raw), reason: "the resource has no name".to_owned() });
            continue;
        }
        if !seen.insert(name.clone()) {
            rejected.push(Refused { name: Name::from(name.as_str()), version, raw: Some(raw), reason: "duplicate resource name in one response".to_owned() });
            continue;
        }
        let one = translate(&message);
        log_unsupported(&one.unsupported);
        match one.result {
            Ok(value) => out.push(Candidate { name: Name::from(name.as_str()), version, raw, value }),
            Err(r) => rejected.push(Refused { name: Name::from(name.as_str()), version, raw: Some(raw), reason: r.reason }),
        }
    }
    Decoded { accepted: out, refused: rejected, removed, full, version }
}

impl EnvoyState {
    fn apply(&mut self, type_url: &str, update: Update) -> Vec<Rejection> {
        let start = Instant::now();
        let label = TypeLabel { type_url: type_url.to_owned() };
        self.metrics.xds.update_attempt.get_or_create(&label).inc();
        let rejections = match type_url {
            type_url::CLUSTER => self.apply_clusters(update),
            type_url::CLUSTER_LOAD_ASSIGNMENT => self.apply_endpoints(update),
            type_url::ROUTE_CONFIGURATION => self.apply_routes(update),
            type_url::LISTENER => self.apply_listeners(update),
            _ => reject_all(type_url, update, UNKNOWN_TYPE),
        };
        self.settle(false);
        record_update(&self.metrics, &label, start, &rejections);
        rejections
    }

    /// Records rejections as failures and turns them into NACK entries.
    fn reject<T>(kind: &mut Kind<T>, refused: Vec<Refused>) -> Vec<Rejection> {
        let at = SystemTime::now();
        refused
            .into_iter()
            .map(|Refused { name, version, raw, reason }| {
                let r = Rejection { name: name.to_string(), reason: reason.clone() };
                kind.failures.insert(name, Failure { version, at, reason, raw });
                r
            })
            .collect()
    }

    fn held<T>(c: Candidate<T>) -> (Name, Held<T>) {
        (c.name, Held { version: c.version, last_updated: SystemTime::now(), since: Instant::now(), raw: c.raw, value: Arc::new(c.value) })
    }

    /// State of the world for LDS/CDS: what the response does not name is gone,
    /// except resources whose update was just rejected (the last good one stays).
    fn sotw_removals<T>(kind: &mut Kind<T>, kept: &BTreeSet<Name>) {
        let gone: Vec<Name> = kind.names().filter(|n| !kept.contains(*n)).cloned().collect();
        for name in gone {
            kind.remove(&name);
        }
    }

    fn apply_clusters(&mut self, update: Update) -> Vec<Rejection> {
        self.topology_changed = true;
        self.full_publish = true;
        let Decoded { accepted: mut cands, refused: rejected, removed, full, version } = candidates::<PbCluster, _>(update, |c| &c.name, translate::cluster);
        skip_static(&mut cands, &self.static_model.clusters, "cluster");
        self.clusters.received = true;
        self.clusters.version = version;
        if full {
            let kept = cands.iter().map(|c| c.name.clone()).chain(rejected.iter().map(|r| r.name.clone())).collect();
            Self::sotw_removals(&mut self.clusters, &kept);
        }
        for name in removed {
            self.clusters.remove(&name);
        }
        for c in cands {
            self.clusters.place(c);
        }
        Self::reject(&mut self.clusters, rejected)
    }

    fn apply_endpoints(&mut self, update: Update) -> Vec<Rejection> {
        let Decoded { accepted: mut cands, refused: mut rejected, removed, version, .. } =
            candidates::<ClusterLoadAssignment, _>(update, |c| &c.cluster_name, translate::load_assignment);
        // As Envoy, assignments nobody asked for are ignored, valid or not.
        retain_wanted(&mut cands, &mut rejected, self.wanted_endpoints());
        self.endpoints.received = true;
        self.endpoints.version = version;
        // State of the world for EDS names only what changed; removal is by unsubscribing.
        for name in removed {
            self.endpoints.remove(&name);
            self.dirty_services.insert(Name::from(name.as_str()));
        }
        for c in cands {
            self.endpoints.failures.remove(&c.name);
            self.dirty_services.insert(c.name.clone());
            let (name, held) = Self::held(c);
            self.endpoints.put_active(name, held);
        }
        Self::reject(&mut self.endpoints, rejected)
    }

    fn apply_routes(&mut self, update: Update) -> Vec<Rejection> {
        self.full_publish = true;
        let Decoded { accepted: mut cands, refused: mut rejected, removed, version, .. } =
            candidates::<RouteConfiguration, _>(update, |r| &r.name, translate::route_configuration);
        // As Envoy, route tables no listener asked for are ignored, valid or not.
        retain_wanted(&mut cands, &mut rejected, self.wanted_routes());
        self.routes.received = true;
        self.routes.version = version;
        for name in removed {
            self.routes.remove(&name);
        }
        for c in cands {
            self.routes.place(c);
        }
        Self::reject(&mut self.routes, rejected)
    }

    fn apply_listeners(&mut self, update: Update) -> Vec<Rejection> {
        self.topology_changed = true;
        self.full_publish = true;
        let Decoded { accepted: mut cands, refused: mut rejected, removed, full, version } =
            candidates::<PbListener, _>(update, |l| &l.name, translate::listener);
        skip_static(&mut cands, &self.static_model.listeners, "listener");
        self.listeners.received = true;
        self.listeners.version = version;
        let mut accepted = Vec::new();
        // Addresses taken by listeners that stay (static ones, and dynamic ones this
        // response does not replace).
        let replaced: BTreeSet<Name> = cands.iter().map(|c| c.name.clone()).collect();
        let mut taken: HashMap<std::net::SocketAddr, Name> = HashMap::new();
        for l in self.static_model.listeners.values().filter(|l| self.manager.binds(l)) {
            taken.insert(l.address, l.name.clone());
        }
        for name in self.listeners.names() {
            // State of the world keeps only the listeners whose update was rejected;
            // Delta keeps all but the removed ones.
            let stays = if full { rejected.iter().any(|r| &r.name == name) } else { !removed.iter().any(|r| r.as_str() == name.as_ref()) };
            if replaced.contains(name) || !stays {
                continue;
            }
            if let Some(h) = self.listeners.latest(name) {
                if self.manager.binds(&h.value) {
                    taken.insert(h.value.address, name.clone());
                }
            }
        }
        // Listeners that come back unchanged keep their addresses: a new listener
        // clashing with one of them is the one rejected, whatever the order.
        let (mut cands, changed): (Vec<_>, Vec<_>) = cands
            .into_iter()
            .partition(|c| self.listeners.active.get(&c.name).is_some_and(|h| *h.value == c.value) && !self.listeners.warming.contains_key(&c.name));
        cands.extend(changed);
        for c in cands {
            if self.manager.binds(&c.value) {
                if let Some(other) = taken.get(&c.value.address).filter(|o| **o != c.name) {
                    let reason = format!("address {} is already used by listener {other}", c.value.address);
                    rejected.push(Refused { name: c.name.clone(), version: c.version.clone(), raw: Some(c.raw.clone()), reason });
                    continue;
                }
                taken.insert(c.value.address, c.name.clone());
            }
            accepted.push(c);
        }
        if full {
            let kept = accepted.iter().map(|c| c.name.clone()).chain(rejected.iter().map(|r| r.name.clone())).collect();
            Self::sotw_removals(&mut self.listeners, &kept);
        }
        for name in removed {
            self.listeners.remove(&name);
        }
        for c in accepted {
            let name = c.name.clone();
            let Some(c) = self.listeners.keep_unchanged(c) else {
                self.pending_sockets.remove(&name);
                continue;
            };
            // Bind before accepting the resource: a port that cannot be bound is a NACK.
            if self.manager.binds(&c.value) {
                let already =
                    self.manager.is_accepting(&c.name, c.value.address) || self.pending_sockets.get(&c.name).is_some_and(|b| b.address == c.value.address);
                if !already {
                    match listener::bind(&c.value, self.manager.workers()) {
                        Ok(bound) => {
                            self.pending_sockets.insert(c.name.clone(), bound);
                        }
                        Err(e) => {
                            rejected.push(Refused { name: c.name.clone(), version: c.version.clone(), raw: Some(c.raw.clone()), reason: e.to_string() });
                            continue;
                        }
                    }
                }
            }
            let (name, held) = Self::held(c);
            self.listeners.put_warming(name, held);
        }
        Self::reject(&mut self.listeners, rejected)
    }

    /// Periodic: lets resources that warmed too long go live, and declares start-up
    /// done after the initial fetch timeout.
    fn on_tick(&mut self) {
        let now = Instant::now();
        let since = self.clusters.warming.values().map(|h| h.since).chain(self.routes.warming.values().map(|h| h.since));
        let any_expired = since.chain(self.listeners.warming.values().map(|h| h.since)).any(|s| now.duration_since(s) >= self.warm_timeout);
        let startup_over = !*self.ready.borrow() && now.duration_since(self.started) >= self.warm_timeout;
        if any_expired || startup_over {
            self.settle(true);
        }
        // Translation checks clusters, listeners and routes against the Envoy descriptor
        // pool; between bursts of pushes it is memory for nothing.
        if xds_client::protojson::release_if_idle(DESCRIPTOR_POOL_IDLE) {
            tracing::debug!("no xDS translation for {DESCRIPTOR_POOL_IDLE:?}: released the Envoy descriptor pool");
            crate::app::return_free_memory();
        }
    }

    /// Promotes what has warmed (or, with `expire`, warmed too long), drops what is no
    /// longer referenced, and publishes the snapshot.
    fn settle(&mut self, expire: bool) {
        let now = Instant::now();
        let timeout = self.warm_timeout;
        let overdue = move |since: Instant| expire && now.duration_since(since) >= timeout;
        loop {
            let mut changed = false;
            // Clusters: an EDS cluster waits for its endpoints.
            let ready: Vec<Name> = self
                .clusters
                .warming
                .iter()
                .filter(|(_, h)| h.value.eds_service_name().is_none_or(|s| self.endpoints.active.contains_key(s)) || overdue(h.since))
                .map(|(n, _)| n.clone())
                .collect();
            for name in ready {
                let endpoints = &self.endpoints.active;
                if self.clusters.warming.get(&name).is_some_and(|h| overdue(h.since) && h.value.eds_service_name().is_some_and(|s| !endpoints.contains_key(s)))
                {
                    tracing::warn!(cluster = %name, ?timeout, "no endpoints arrived within the initial fetch timeout: the cluster goes live without endpoints");
                }
                changed |= self.clusters.promote(&name);
            }
            // Route tables wait for clusters that are still warming for the first time.
            let warming_only = |n: &Name| self.clusters.warming.contains_key(n) && !self.clusters.active.contains_key(n);
            let ready: Vec<Name> = self
                .routes
                .warming
                .iter()
                .filter(|(_, h)| !h.value.cluster_names().into_iter().any(warming_only) || overdue(h.since))
                .map(|(n, _)| n.clone())
                .collect();
            for name in ready {
                changed |= self.routes.promote(&name);
            }
            // Listeners wait for their route tables.
            let has_route = |n: &Name| self.routes.active.contains_key(n) || self.static_model.routes.contains_key(n);
            let ready: Vec<Name> =
                self.listeners.warming.iter().filter(|(_, h)| h.value.rds_names().all(has_route) || overdue(h.since)).map(|(n, _)| n.clone()).collect();
            for name in ready {
                if self.listeners.promote(&name) {
                    if let Some(bound) = self.pending_sockets.remove(&name) {
                        self.manager.activate(bound);
                    }
                    changed = true;
                }
            }
            if !changed {
                break;
            }
            self.full_publish = true;
        }
        if self.topology_changed {
            self.refresh_wanted();
            self.unsubscribed();
            self.topology_changed = false;
        }
        self.publish();
        let initial = self.clusters.received && self.listeners.received;
        let warm = self.clusters.warming.is_empty() && self.listeners.warming.is_empty() && self.routes.warming.is_empty();
        // As Envoy's init manager: ready once the first listeners and clusters have
        // warmed (each waits at most the initial fetch timeout), or, if istiod has not
        // answered at all, once that timeout has passed.
        if (initial && warm) || (!initial && now.duration_since(self.started) >= self.warm_timeout) {
            self.ready.send_if_modified(|r| !std::mem::replace(r, true));
        }
    }

    /// Drops route tables no listener uses and endpoints no cluster uses (Envoy
    /// unsubscribes from them; so does the stream, through `subscriptions`).
    fn unsubscribed(&mut self) {
        let rds = self.wanted_routes();
        let unused: Vec<Name> = self.routes.names().filter(|n| !rds.contains(*n)).cloned().collect();
        for n in unused {
            self.routes.remove(&n);
        }
        let eds = self.wanted_endpoints();
        let unused: Vec<Name> = self.endpoints.names().filter(|n| !eds.contains(*n)).cloned().collect();
        for n in unused {
            self.endpoints.remove(&n);
        }
        self.pending_sockets.retain(|n, _| self.listeners.warming.contains_key(n));
    }

    /// Builds the model from the static part and the active resources, and swaps it in
    /// if anything changed.
    fn publish(&mut self) {
        if !self.full_publish {
            self.publish_endpoints();
            return;
        }
        self.full_publish = false;
        self.dirty_services.clear();
        let mut model = self.static_model.clone();
        for (n, h) in &self.listeners.active {
            model.listeners.insert(n.clone(), h.value.clone());
        }
        for (n, h) in &self.routes.active {
            model.routes.insert(n.clone(), h.value.clone());
        }
        let mut attached = HashMap::with_capacity(self.clusters.active.len());
        // In name order: the map is built in bulk, without a search per cluster.
        let dynamic: BTreeMap<Name, Arc<Cluster>> = self
            .clusters
            .active
            .iter()
            .map(|(n, h)| {
                let endpoints = h.value.eds_service_name().and_then(|s| self.endpoints.active.get(s)).map(|e| e.value.clone());
                let key = Arc::as_ptr(&h.value) as usize;
                let cluster = match self.attached.remove(&key) {
                    Some(a) if Arc::ptr_eq(&a.config, &h.value) && opt_ptr_eq(&a.endpoints, &endpoints) => a.cluster,
                    _ => attach(&h.value, endpoints.as_deref()),
                };
                attached.insert(key, Attached { config: h.value.clone(), endpoints, cluster: cluster.clone() });
                (n.clone(), cluster)
            })
            .collect();
        self.attached = attached;
        if model.clusters.is_empty() {
            model.clusters = dynamic;
        } else {
            model.clusters.extend(dynamic);
        }
        self.update_gauges();
        if self.live.load().serves(&model) {
            return;
        }
        // Listeners that left the model stop accepting; their connections go on.
        let snapshot = self.live.update(model, self.source.clone());
        self.manager.retain_bound(|n| snapshot.listeners.get(n).map(|l| &**l));
        self.metrics.xds.snapshot_version.set(snapshot.version as i64);
        for missing in snapshot.missing_routes() {
            tracing::debug!(route = %missing, "a listener references route configuration {missing}, not (yet) received: its requests get 404 NR");
        }
    }

    /// Only endpoint assignments changed since the last publish: the live model with
    /// the clusters that use them replaced, at a cost proportional to the change.
    fn publish_endpoints(&mut self) {
        let dirty = std::mem::take(&mut self.dirty_services);
        if dirty.is_empty() {
            return;
        }
        let mut changed = BTreeMap::new();
        for service in &dirty {
            for name in self.wanted.eds_users.get(service).into_iter().flatten() {
                // Warming clusters are not in the model; they are placed when promoted.
                let Some(h) = self.clusters.active.get(name) else { continue };
                let endpoints = self.endpoints.active.get(service).map(|e| e.value.clone());
                let cluster = attach(&h.value, endpoints.as_deref());
                self.attached.insert(Arc::as_ptr(&h.value) as usize, Attached { config: h.value.clone(), endpoints, cluster: cluster.clone() });
                changed.insert(name.clone(), cluster);
            }
        }
        self.update_gauges();
        if changed.is_empty() {
            return;
        }
        let snapshot = self.live.update_clusters(changed);
        self.metrics.xds.snapshot_version.set(snapshot.version as i64);
    }

    fn update_gauges(&self) {
        fn counted<T>(k: &Kind<T>) -> usize {
            debug_assert_eq!(k.bytes, k.active.values().chain(k.warming.values()).map(|h| h.raw.value.len()).sum::<usize>(), "{} bytes", k.type_url);
            k.bytes
        }
        let m = &self.metrics.xds;
        let set = |type_url: &str, active: usize, warming: usize, bytes: usize| {
            m.resources.get_or_create(&ResourceLabels { type_url: type_url.to_owned(), state: "active" }).set(active as i64);
            m.resources.get_or_create(&ResourceLabels { type_url: type_url.to_owned(), state: "warming" }).set(warming as i64);
            m.resource_bytes.get_or_create(&TypeLabel { type_url: type_url.to_owned() }).set(bytes as i64);
        };
        set(self.listeners.type_url, self.listeners.active.len(), self.listeners.warming.len(), counted(&self.listeners));
        set(self.routes.type_url, self.routes.active.len(), self.routes.warming.len(), counted(&self.routes));
        set(self.clusters.type_url, self.clusters.active.len(), self.clusters.warming.len(), counted(&self.clusters));
        set(self.endpoints.type_url, self.endpoints.active.len(), 0, counted(&self.endpoints));
    }

    /// The EDS service names of the clusters held (active or warming).
    fn wanted_endpoints(&self) -> &BTreeSet<Name> {
        &self.wanted.eds
    }

    /// The route tables the listeners held (active or warming) take over RDS.
    fn wanted_routes(&self) -> &BTreeSet<Name> {
        &self.wanted.rds
    }

    /// Recomputes [`Wanted`] after clusters or listeners changed.
    fn refresh_wanted(&mut self) {
        let mut eds_users: BTreeMap<Name, Vec<Name>> = BTreeMap::new();
        for name in self.clusters.names() {
            if let Some(service) = self.clusters.latest(name).and_then(|h| h.value.eds_service_name()) {
                eds_users.entry(service.clone()).or_default().push(name.clone());
            }
        }
        let eds: BTreeSet<Name> = eds_users.keys().cloned().collect();
        let rds: BTreeSet<Name> =
            self.listeners.names().filter_map(|n| self.listeners.latest(n)).flat_map(|h| h.value.rds_names().cloned().collect::<Vec<_>>()).collect();
        let subscriptions = vec![
            (type_url::CLUSTER.to_owned(), Interest::Wildcard),
            (type_url::CLUSTER_LOAD_ASSIGNMENT.to_owned(), Interest::names(eds.iter().map(|n| n.to_string()))),
            (type_url::LISTENER.to_owned(), Interest::Wildcard),
            (type_url::ROUTE_CONFIGURATION.to_owned(), Interest::names(rds.iter().map(|n| n.to_string()))),
        ];
        self.wanted = Wanted { eds, eds_users, rds, subscriptions };
    }

    fn subscriptions(&self) -> Vec<(String, Interest)> {
        self.wanted.subscriptions.clone()
    }

    fn dump(&self) -> Dump {
        let ts = |t: SystemTime| {
            let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            Some(Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
        };
        let error = |f: &Failure| admin::UpdateFailureState {
            failed_configuration: f.raw.clone(),
            last_update_attempt: ts(f.at),
            details: f.reason.clone(),
            version_info: f.version.clone(),
        };
        let status = |kind_failed: bool| if kind_failed { admin::ClientResourceStatus::Nacked as i32 } else { admin::ClientResourceStatus::Acked as i32 };

        // Listeners.
        let mut names: BTreeSet<&Name> = self.listeners.names().collect();
        names.extend(self.listeners.failures.keys());
        let state = |h: &Held<Listener>| admin::listeners_config_dump::DynamicListenerState {
            version_info: h.version.clone(),
            listener: Some(h.raw.clone()),
            last_updated: ts(h.last_updated),
        };
        let dynamic_listeners = names
            .into_iter()
            .map(|n| admin::listeners_config_dump::DynamicListener {
                name: n.to_string(),
                active_state: self.listeners.active.get(n).map(state),
                warming_state: self.listeners.warming.get(n).map(state),
                draining_state: None,
                error_state: self.listeners.failures.get(n).map(error),
                client_status: status(self.listeners.failures.contains_key(n)),
            })
            .collect();
        let listeners = admin::ListenersConfigDump { version_info: self.listeners.version.clone(), static_listeners: Vec::new(), dynamic_listeners };

        // Clusters: active and warming; a rejected cluster shows its error with the
        // last good one (or alone, as Envoy lists it among the active ones).
        let cluster = |n: &Name, h: Option<&Held<Cluster>>| admin::clusters_config_dump::DynamicCluster {
            version_info: h.map(|h| h.version.clone()).unwrap_or_default(),
            cluster: h.map(|h| h.raw.clone()),
            last_updated: h.and_then(|h| ts(h.last_updated)),
            error_state: self.clusters.failures.get(n).map(error),
            client_status: status(self.clusters.failures.contains_key(n)),
        };
        let mut active_names: BTreeSet<&Name> = self.clusters.active.keys().collect();
        active_names.extend(self.clusters.failures.keys().filter(|n| !self.clusters.warming.contains_key(*n)));
        let clusters = admin::ClustersConfigDump {
            version_info: self.clusters.version.clone(),
            static_clusters: Vec::new(),
            dynamic_active_clusters: active_names.into_iter().map(|n| cluster(n, self.clusters.active.get(n))).collect(),
            dynamic_warming_clusters: self.clusters.warming.iter().map(|(n, h)| cluster(n, Some(h))).collect(),
        };

        // Route configurations and endpoints.
        let mut names: BTreeSet<&Name> = self.routes.names().collect();
        names.extend(self.routes.failures.keys());
        let routes = admin::RoutesConfigDump {
            static_route_configs: Vec::new(),
            dynamic_route_configs: names
                .into_iter()
                .map(|n| {
                    let h = self.routes.latest(n);
                    admin::routes_config_dump::DynamicRouteConfig {
                        version_info: h.map(|h| h.version.clone()).unwrap_or_default(),
                        route_config: h.map(|h| h.raw.clone()),
                        last_updated: h.and_then(|h| ts(h.last_updated)),
                        error_state: self.routes.failures.get(n).map(error),
                        client_status: status(self.routes.failures.contains_key(n)),
                    }
                })
                .collect(),
        };
        let mut names: BTreeSet<&Name> = self.endpoints.names().collect();
        names.extend(self.endpoints.failures.keys());
        let endpoints = admin::EndpointsConfigDump {
            static_endpoint_configs: Vec::new(),
            dynamic_endpoint_configs: names
                .into_iter()
                .map(|n| {
                    let h = self.endpoints.active.get(n);
                    admin::endpoints_config_dump::DynamicEndpointConfig {
                        version_info: h.map(|h| h.version.clone()).unwrap_or_default(),
                        endpoint_config: h.map(|h| h.raw.clone()),
                        last_updated: h.and_then(|h| ts(h.last_updated)),
                        error_state: self.endpoints.failures.get(n).map(error),
                        client_status: status(self.endpoints.failures.contains_key(n)),
                    }
                })
                .collect(),
        };
        Dump { clusters, endpoints, listeners, routes }
    }
}

/// The cluster as the data path sees it: its configuration with the EDS endpoints in.
fn attach(config: &Arc<Cluster>, endpoints: Option<&Priorities>) -> Arc<Cluster> {
    match endpoints {
        Some(e) => {
            let mut c = (**config).clone();
            c.priorities = e.clone();
            Arc::new(c)
        }
        None => config.clone(),
    }
}

fn opt_ptr_eq<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}
