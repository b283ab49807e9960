//! Istio's workload API from istiod: the ztunnel-type Delta stream carrying
//! `istio.workload.Address` (workloads and services) and `istio.security.Authorization`
//! (L4 policies), validated and translated one by one, published as one
//! [`WorkloadView`] per response for the data path (redirect set, HBONE, L4 policy).
//!
//! Owns: what is held (with version and last update), the last rejection of each
//! resource, removal, and the `/workloads` dump. Does not own: the stream
//! (`xds_client::ads`) or what a resource means (`istio_compat::translate::workload`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use istio_compat::model::workload::{AddressIndex, AddressResource, WorkloadModel};
use istio_compat::model::Name;
use istio_compat::translate::workload as translate;
use istio_compat::translate::One;
use serde_json::{json, Value};
use xds_client::ads::{self, Event, Handler, Interest, Rejection, Update};
use xds_client::istio::workload::Address;
use xds_client::pb::google::protobuf::Any;
use xds_client::type_url;

use super::{decode, log_event, log_unsupported, record_update, reject_all, Failure};
use crate::telemetry::access_log::rfc3339_millis as rfc3339;
use crate::telemetry::metrics::{Metrics, ResourceLabels, TypeLabel};

/// The node's L4 view as the data path reads it.
#[derive(Default)]
pub struct WorkloadView {
    pub model: WorkloadModel,
    pub index: AddressIndex,
    /// Bumped on every change.
    pub version: u64,
}

/// The current [`WorkloadView`], swapped atomically; [`LiveWorkloads::changes`] tells
/// watchers (the redirect set) that a new one is live.
pub struct LiveWorkloads {
    view: ArcSwap<WorkloadView>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for LiveWorkloads {
    fn default() -> Self {
        LiveWorkloads { view: ArcSwap::default(), changed: tokio::sync::watch::channel(0).0 }
    }
}

impl LiveWorkloads {
    pub fn load(&self) -> Arc<WorkloadView> {
        self.view.load_full()
    }

    pub(crate) fn publish(&self, view: WorkloadView) {
        let version = view.version;
        self.view.store(Arc::new(view));
        self.changed.send_replace(version);
    }

    /// Changes (the new view's version) from now on.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Where a held resource came from.
struct Entry {
    version: String,
    last_updated: SystemTime,
}

/// Everything the workload stream holds, per type URL and resource name.
struct State {
    model: WorkloadModel,
    entries: BTreeMap<(&'static str, Name), Entry>,
    failures: BTreeMap<(&'static str, Name), Failure>,
    live: Arc<LiveWorkloads>,
    metrics: Arc<Metrics>,
    /// The types a response arrived for; synced once both have.
    received: BTreeSet<&'static str>,
    synced: tokio::sync::watch::Sender<bool>,
}

/// The shared handle: the stream's handler and the admin port use it.
#[derive(Clone)]
pub struct WorkloadXds(Arc<Mutex<State>>);

impl WorkloadXds {
    pub fn new(live: Arc<LiveWorkloads>, metrics: Arc<Metrics>) -> Self {
        WorkloadXds(Arc::new(Mutex::new(State {
            model: WorkloadModel::default(),
            entries: BTreeMap::new(),
            failures: BTreeMap::new(),
            live,
            metrics,
            received: BTreeSet::new(),
            synced: tokio::sync::watch::channel(false).0,
        })))
    }

    /// Becomes true once istiod's first response of each type (workloads and services,
    /// authorization policies) has been applied, as ztunnel gates its readiness.
    pub fn synced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.lock().synced.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is applied to the store before it is published: a panic
        // between the two leaves consistent data.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the stream until `shutdown`.
    pub async fn run(self, config: ads::AdsConfig, shutdown: impl std::future::Future<Output = ()>) {
        let mut handler = WorkloadHandler(self);
        ads::run(config, &mut handler, shutdown).await;
    }

    /// `/workloads`: the model (workloads, services, policies, as ztunnel's dump
    /// groups them) and every resource's version, last update and rejection.
    pub fn dump(&self) -> Value {
        let state = self.lock();
        let resources: Vec<Value> = state
            .entries
            .iter()
            .map(|((t, name), e)| {
                let mut v = json!({ "type_url": t, "name": &**name, "version_info": e.version, "last_updated": rfc3339(e.last_updated) });
                if let Some(f) = state.failures.get(&(*t, name.clone())) {
                    v["error_state"] = json!({ "details": f.reason, "version_info": f.version, "last_update_attempt": rfc3339(f.at) });
                }
                v
            })
            .collect();
        let rejected: Vec<Value> = state
            .failures
            .iter()
            .filter(|(k, _)| !state.entries.contains_key(*k))
            .map(|((t, name), f)| json!({ "type_url": t, "name": &**name, "error_state": { "details": f.reason, "version_info": f.version, "last_update_attempt": rfc3339(f.at) } }))
            .collect();
        let model = serde_json::to_value(&state.model).unwrap_or(Value::Null);
        json!({ "workloads": model["workloads"], "services": model["services"], "policies": model["policies"], "resources": resources, "rejected": rejected })
    }
}

struct WorkloadHandler(WorkloadXds);

impl Handler for WorkloadHandler {
    fn apply(&mut self, type_url: &str, update: Update) -> Vec<Rejection> {
        self.0.lock().apply(type_url, update)
    }

    fn subscriptions(&self) -> Vec<(String, Interest)> {
        // The whole node's view, as a ztunnel without on-demand lookups.
        vec![(type_url::ADDRESS.to_owned(), Interest::Wildcard), (type_url::AUTHORIZATION.to_owned(), Interest::Wildcard)]
    }

    fn event(&mut self, event: Event<'_>) {
        log_event("workload API", event, None);
    }
}

/// One resource of an update, before it is decoded.
struct Item {
    /// Delta: the name the response gives it.
    name: Option<String>,
    version: String,
    body: Any,
}

impl State {
    fn apply(&mut self, type_url: &str, update: Update) -> Vec<Rejection> {
        let start = std::time::Instant::now();
        let label = TypeLabel { type_url: type_url.to_owned() };
        self.metrics.xds.update_attempt.get_or_create(&label).inc();
        let known = type_url == type_url::ADDRESS || type_url == type_url::AUTHORIZATION;
        if !known {
            let rejections = reject_all(type_url, update, "node-proxy does not take this resource type on the workload API stream");
            record_update(&self.metrics, &label, start, &rejections);
            return rejections;
        }
        let (items, removed, full) = match update {
            Update::Full { version, resources } => {
                (resources.into_iter().map(|body| Item { name: None, version: version.clone(), body }).collect(), Vec::new(), true)
            }
            Update::Delta { resources, removed, .. } => {
                (resources.into_iter().map(|r| Item { name: Some(r.name), version: r.version, body: r.body }).collect::<Vec<_>>(), removed, false)
            }
        };
        let (kind, rejections) = if type_url == type_url::ADDRESS {
            (type_url::ADDRESS, self.apply_type(type_url::ADDRESS, items, removed, full, |a: &Address| translate::address(a), |r| r.resource_name()))
        } else {
            (type_url::AUTHORIZATION, self.apply_type(type_url::AUTHORIZATION, items, removed, full, translate::authorization, |p| p.key()))
        };
        self.publish();
        self.received.insert(kind);
        if self.received.len() == 2 {
            self.synced.send_if_modified(|s| !std::mem::replace(s, true));
        }
        record_update(&self.metrics, &label, start, &rejections);
        rejections
    }

    /// Applies one update of one type: `translate` validates each resource, `name_of`
    /// gives the name it is held under (which must be the one the response gives).
    fn apply_type<M, T>(
        &mut self,
        type_url: &'static str,
        items: Vec<Item>,
        removed: Vec<String>,
        full: bool,
        translate: impl Fn(&M) -> One<T>,
        name_of: impl Fn(&T) -> Name,
    ) -> Vec<Rejection>
    where
        M: prost::Message + Default + prost::Name,
        T: Into<Held>,
    {
        let now = SystemTime::now();
        let mut rejections = Vec::new();
        let mut kept: Vec<Name> = Vec::new();
        let mut reject = |failures: &mut BTreeMap<(&'static str, Name), Failure>, name: Name, version: String, raw: Option<Any>, reason: String| {
            rejections.push(Rejection { name: name.to_string(), reason: reason.clone() });
            failures.insert((type_url, name), Failure { version, at: now, reason, raw });
        };
        for (i, item) in items.into_iter().enumerate() {
            let fallback = Name::from(item.name.clone().unwrap_or_else(|| format!("resources[{i}]")));
            let message = match decode::<M>(&item.body) {
                Ok(m) => m,
                Err(reason) => {
                    kept.push(fallback.clone());
                    reject(&mut self.failures, fallback, item.version, None, reason);
                    continue;
                }
            };
            let one = translate(&message);
            log_unsupported(&one.unsupported);
            let value = match one.result {
                Ok(v) => v,
                Err(r) => {
                    kept.push(fallback.clone());
                    reject(&mut self.failures, fallback, item.version, Some(item.body), r.reason);
                    continue;
                }
            };
            let name = name_of(&value);
            if item.name.as_deref().is_some_and(|given| given != &*name) {
                let reason = format!("the resource is named {name:?}, not {:?}", item.name.as_deref().unwrap_or_default());
                kept.push(fallback.clone());
                reject(&mut self.failures, fallback, item.version, Some(item.body), reason);
                continue;
            }
            self.failures.remove(&(type_url, name.clone()));
            match value.into() {
                Held::Address(a) => self.model.insert_address(a),
                Held::Policy(p) => self.model.insert_policy(p),
            }
            self.entries.insert((type_url, name.clone()), Entry { version: item.version, last_updated: now });
            kept.push(name);
        }
        // State of the world: what the response does not name is gone (a rejected
        // resource keeps its last good version). Delta: what it removes.
        let gone: Vec<Name> = if full {
            self.entries.keys().filter(|(t, n)| *t == type_url && !kept.contains(n)).map(|(_, n)| n.clone()).collect()
        } else {
            removed.into_iter().map(Name::from).collect()
        };
        for name in gone {
            let key = (type_url, name);
            self.entries.remove(&key);
            self.failures.remove(&key);
            if type_url == type_url::AUTHORIZATION {
                self.model.policies.remove(&key.1);
            } else {
                self.model.remove_address(&key.1);
            }
        }
        rejections
    }

    fn publish(&mut self) {
        let version = self.live.load().version + 1;
        let view = WorkloadView { index: AddressIndex::new(&self.model), model: self.model.clone(), version };
        self.live.publish(view);
        let m = &self.metrics.xds;
        let set = |type_url: &str, n: usize| m.resources.get_or_create(&ResourceLabels { type_url: type_url.to_owned(), state: "active" }).set(n as i64);
        set(type_url::ADDRESS, self.model.workloads.len() + self.model.services.len());
        set(type_url::AUTHORIZATION, self.model.policies.len());
    }
}

/// What a workload-API resource becomes in the model.
enum Held {
    Address(AddressResource),
    Policy(istio_compat::model::workload::Policy),
}

impl From<AddressResource> for Held {
    fn from(a: AddressResource) -> Self {
        Held::Address(a)
    }
}

impl From<istio_compat::model::workload::Policy> for Held {
    fn from(p: istio_compat::model::workload::Policy) -> Self {
        Held::Policy(p)
    }
}
