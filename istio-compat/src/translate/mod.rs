//! Envoy resources, as istiod generates them, -> the mesh model.
//!
//! The one translator: a local file (`static_resources`), a config dump and xDS all
//! come through the per-resource functions here. Every field istiod may set is either
//! honoured or reported ([`Unsupported`]) with resource, type URL and field path; a
//! resource that cannot be run as configured is rejected ([`Rejected`]) with the
//! reason, and the rest of the configuration still loads.
//!
//! istiod still sets fields Envoy has deprecated (`max_grpc_timeout`, header
//! `exact_match`, `append`, …) and Envoy honours them, so we read them too.
#![allow(deprecated)]

mod cluster;
pub(crate) mod common;
mod coverage;
mod listener;
mod route;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use prost::Message;
use serde::Serialize;
use xds_client::pb::envoy::admin::v3 as admin;
use xds_client::pb::envoy::config::bootstrap::v3::Bootstrap;
use xds_client::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use xds_client::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_client::pb::envoy::config::listener::v3::Listener as PbListener;
use xds_client::pb::envoy::config::route::v3::RouteConfiguration;
use xds_client::pb::google::protobuf::Any;
use xds_client::protojson::{self, JsonError};
use xds_client::type_url;

pub use self::listener::ISTIO_DEFAULT_LOG_FORMAT;
use crate::model::cluster::Discovery;
use crate::model::{Model, Name};

/// Something in the configuration that node-proxy does not do (yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unsupported {
    /// `listener NAME`, `cluster NAME`, `route NAME`, `endpoints NAME`.
    pub resource: String,
    /// The message or extension type that carries the unsupported part.
    pub type_url: String,
    /// Where, from the resource's root.
    pub field: String,
    pub effect: Effect,
}

/// What node-proxy does about an unsupported part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// The setting has no effect here.
    Ignored,
    /// An optional (or disabled, non-security) HTTP filter is not run.
    FilterSkipped,
    /// Connections that select this filter chain are closed.
    ChainRefused,
    /// The route is left out of its virtual host.
    RouteSkipped,
    /// Requests to endpoints that need this (upstream TLS) fail with 503 instead.
    EndpointsRefused,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let effect = match self.effect {
            Effect::Ignored => "ignored",
            Effect::FilterSkipped => "filter skipped",
            Effect::ChainRefused => "filter chain refuses connections",
            Effect::RouteSkipped => "route skipped",
            Effect::EndpointsRefused => "endpoints needing it get 503",
        };
        write!(f, "{}: {} ({}) not supported: {effect}", self.resource, self.field, self.type_url)
    }
}

/// A resource left out because it cannot be run as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub resource: String,
    pub type_url: String,
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rejected: {}", self.resource, self.reason)
    }
}

/// Why a resource is invalid: where (path from the resource root) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(path: &str, reason: impl Into<String>) -> Self {
        Invalid { path: path.to_owned(), reason: reason.into() }
    }
}

/// The result of translating a set of resources.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    pub model: Model,
    pub unsupported: Vec<Unsupported>,
    pub rejected: Vec<Rejected>,
}

/// Errors that stop a whole document from loading.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{0}")]
    Decode(#[from] JsonError),
    #[error("not an Envoy configuration: expected a bootstrap document (with `static_resources`) or an admin config dump (with `configs`)")]
    UnknownShape,
    #[error("{}", .0.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; "))]
    Rejected(Vec<Rejected>),
}

/// Per-resource translation state: the resource's name and what was reported.
pub(crate) struct Context {
    resource: String,
    unsupported: Vec<Unsupported>,
}

impl Context {
    fn new(kind: &str, name: &str) -> Self {
        Context { resource: format!("{kind} {name}"), unsupported: Vec::new() }
    }

    fn resource_name(&self) -> &str {
        self.resource.split_once(' ').map_or("", |(_, n)| n)
    }

    fn report(&mut self, field: &str, type_name: &str, effect: Effect) {
        let type_url = if type_name.contains('/') || type_name.is_empty() || type_name.contains(' ') {
            type_name.to_owned()
        } else {
            format!("type.googleapis.com/{type_name}")
        };
        self.unsupported.push(Unsupported { resource: self.resource.clone(), type_url, field: field.to_owned(), effect });
    }
}

/// Field 1 of `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct` (same wire form).
#[derive(Clone, PartialEq, prost::Message)]
struct TypedStructHead {
    #[prost(string, tag = "1")]
    type_url: String,
}

/// The payload type of an extension, looking through `TypedStruct` wrappers.
pub(crate) fn extension_type(any: &Any) -> String {
    let name = protojson::type_name(&any.type_url);
    if name == "udpa.type.v1.TypedStruct" || name == "xds.type.v3.TypedStruct" {
        if let Ok(ts) = TypedStructHead::decode(any.value.as_slice()) {
            return protojson::type_name(&ts.type_url).to_owned();
        }
    }
    name.to_owned()
}

/// One resource's translation: the model value, or why the resource is rejected; and
/// what of it is not supported either way. xDS applies resources one by one through these.
#[derive(Debug)]
pub struct One<T> {
    pub result: Result<T, Rejected>,
    pub unsupported: Vec<Unsupported>,
}

fn one<T>(type_url: &str, cx: Context, result: Result<T, Invalid>) -> One<T> {
    let result = result.map_err(|e| Rejected {
        reason: if e.path.is_empty() { e.reason } else { format!("{}: {}", e.path, e.reason) },
        resource: cx.resource,
        type_url: type_url.to_owned(),
    });
    One { result, unsupported: cx.unsupported }
}

/// Endpoints by priority, as a `ClusterLoadAssignment` gives them.
pub type Priorities = Vec<Vec<crate::model::cluster::LocalityEndpoints>>;

pub fn listener(l: &PbListener) -> One<crate::model::Listener> {
    let mut cx = Context::new("listener", &listener::name_of(l));
    let result = listener::translate(l, &mut cx);
    one(type_url::LISTENER, cx, result)
}

pub fn route_configuration(rc: &RouteConfiguration) -> One<crate::model::RouteTable> {
    let mut cx = Context::new("route", &rc.name);
    let result = route::translate(rc, "", &mut cx);
    if rc.name.is_empty() {
        // Only RDS names reach a route table here; an unnamed one can only be inline.
        cx.report("name", "envoy.config.route.v3.RouteConfiguration (unnamed, not referenceable)", Effect::Ignored);
    }
    one(type_url::ROUTE_CONFIGURATION, cx, result)
}

pub fn cluster(c: &PbCluster) -> One<crate::model::cluster::Cluster> {
    let mut cx = Context::new("cluster", &c.name);
    let result = cluster::translate(c, &mut cx);
    one(type_url::CLUSTER, cx, result)
}

/// The endpoints of a `ClusterLoadAssignment` (named by its `cluster_name`, the EDS service name).
pub fn load_assignment(cla: &ClusterLoadAssignment) -> One<Priorities> {
    let mut cx = Context::new("endpoints", &cla.cluster_name);
    if !coverage::load_assignment_fully_supported(cla) {
        coverage::check_message(cla, &cx.resource, "", &mut cx.unsupported);
    }
    let result = cluster::load_assignment(cla, "");
    one(type_url::CLUSTER_LOAD_ASSIGNMENT, cx, result)
}

impl Translation {
    fn absorb<T>(&mut self, one: One<T>, insert: impl FnOnce(&mut Model, T)) {
        self.unsupported.extend(one.unsupported);
        match one.result {
            Ok(v) => insert(&mut self.model, v),
            Err(r) => self.rejected.push(r),
        }
    }

    pub fn add_listener(&mut self, l: &PbListener) {
        self.absorb(listener(l), |m, v| {
            m.listeners.insert(v.name.clone(), Arc::new(v));
        });
    }

    pub fn add_route_configuration(&mut self, rc: &RouteConfiguration) {
        self.absorb(route_configuration(rc), |m, v| {
            if !v.name.is_empty() {
                m.routes.insert(v.name.clone(), Arc::new(v));
            }
        });
    }

    pub fn add_cluster(&mut self, c: &PbCluster) {
        self.absorb(cluster(c), |m, v| {
            m.clusters.insert(v.name.clone(), Arc::new(v));
        });
    }

    /// Endpoints for the EDS clusters whose service name is `cla.cluster_name`.
    pub fn add_load_assignment(&mut self, cla: &ClusterLoadAssignment, pending: &mut BTreeMap<Name, Priorities>) {
        self.absorb(load_assignment(cla), |_, v| {
            pending.insert(cla.cluster_name.as_str().into(), v);
        });
    }

    /// Gives each EDS cluster the endpoints found for its service name.
    fn attach_endpoints(&mut self, mut endpoints: BTreeMap<Name, Priorities>) {
        for cluster in self.model.clusters.values_mut() {
            if let Discovery::Eds { service_name } = &cluster.discovery {
                if let Some(e) = endpoints.remove(service_name) {
                    Arc::make_mut(cluster).priorities = e;
                }
            }
        }
    }
}

/// Translates a YAML or JSON document: an Envoy bootstrap (`static_resources`) or an
/// admin config dump (`configs`).
pub fn from_document(text: &str) -> Result<Translation, DocumentError> {
    let value = protojson::parse_yaml_or_json(text)?;
    let Some(object) = value.as_object() else {
        return Err(DocumentError::UnknownShape);
    };
    if object.contains_key("configs") {
        let dump = protojson::from_json::<admin::ConfigDump>(value)?.message;
        Ok(from_config_dump(&dump))
    } else if object.contains_key("static_resources") || object.contains_key("node") || object.contains_key("admin") {
        let bootstrap = protojson::from_json::<Bootstrap>(value)?.message;
        Ok(from_bootstrap(&bootstrap))
    } else {
        Err(DocumentError::UnknownShape)
    }
}

/// `static_resources` of a bootstrap: listeners and clusters (routes inline).
pub fn from_bootstrap(b: &Bootstrap) -> Translation {
    let mut t = Translation::default();
    let mut cx = Context::new("bootstrap", "");
    for (field, set) in [
        ("admin", b.admin.is_some()),
        ("dynamic_resources", b.dynamic_resources.is_some()),
        ("stats_sinks", !b.stats_sinks.is_empty()),
        ("tracing", b.tracing.is_some()),
    ] {
        if set {
            cx.report(field, "envoy.config.bootstrap.v3.Bootstrap", Effect::Ignored);
        }
    }
    t.unsupported.extend(cx.unsupported);
    if let Some(sr) = &b.static_resources {
        for l in &sr.listeners {
            t.add_listener(l);
        }
        for c in &sr.clusters {
            t.add_cluster(c);
        }
        for (i, s) in sr.secrets.iter().enumerate() {
            t.unsupported.push(Unsupported {
                resource: format!("secret {}", s.name),
                type_url: type_url::SECRET.to_owned(),
                field: format!("static_resources.secrets[{i}]"),
                effect: Effect::Ignored,
            });
        }
    }
    t
}

/// One entry of an admin config dump, decoded: the resources it holds, static and
/// dynamic alike (a dynamic listener's active state, else its warming one; active and
/// warming clusters), or the bootstrap.
pub enum DumpEntry {
    Bootstrap(Option<Box<Bootstrap>>),
    Listeners(Vec<Any>),
    Routes(Vec<Any>),
    Clusters(Vec<Any>),
    Endpoints(Vec<Any>),
    /// A config of another type (its message name).
    Other(String),
}

impl DumpEntry {
    pub fn decode(config: &Any) -> Result<DumpEntry, prost::DecodeError> {
        let bytes = config.value.as_slice();
        Ok(match protojson::type_name(&config.type_url) {
            "envoy.admin.v3.BootstrapConfigDump" => DumpEntry::Bootstrap(admin::BootstrapConfigDump::decode(bytes)?.bootstrap.map(Box::new)),
            "envoy.admin.v3.ListenersConfigDump" => {
                let d = admin::ListenersConfigDump::decode(bytes)?;
                let dynamic = d.dynamic_listeners.into_iter().filter_map(|l| l.active_state.or(l.warming_state)).filter_map(|s| s.listener);
                DumpEntry::Listeners(d.static_listeners.into_iter().filter_map(|l| l.listener).chain(dynamic).collect())
            }
            "envoy.admin.v3.RoutesConfigDump" => {
                let d = admin::RoutesConfigDump::decode(bytes)?;
                let dynamic = d.dynamic_route_configs.into_iter().filter_map(|r| r.route_config);
                DumpEntry::Routes(d.static_route_configs.into_iter().filter_map(|r| r.route_config).chain(dynamic).collect())
            }
            "envoy.admin.v3.ClustersConfigDump" => {
                let d = admin::ClustersConfigDump::decode(bytes)?;
                let active = d.dynamic_active_clusters.into_iter().filter_map(|c| c.cluster);
                let warming = d.dynamic_warming_clusters.into_iter().filter_map(|c| c.cluster);
                DumpEntry::Clusters(d.static_clusters.into_iter().filter_map(|c| c.cluster).chain(active).chain(warming).collect())
            }
            "envoy.admin.v3.EndpointsConfigDump" => {
                let d = admin::EndpointsConfigDump::decode(bytes)?;
                let dynamic = d.dynamic_endpoint_configs.into_iter().filter_map(|e| e.endpoint_config);
                DumpEntry::Endpoints(d.static_endpoint_configs.into_iter().filter_map(|e| e.endpoint_config).chain(dynamic).collect())
            }
            other => DumpEntry::Other(other.to_owned()),
        })
    }
}

/// Every listener, route configuration, cluster and endpoint set in an admin dump.
pub fn from_config_dump(dump: &admin::ConfigDump) -> Translation {
    let mut t = Translation::default();
    let mut endpoints = BTreeMap::new();
    for (i, config) in dump.configs.iter().enumerate() {
        let result = DumpEntry::decode(config).map(|entry| match entry {
            DumpEntry::Bootstrap(Some(b)) => {
                let inner = from_bootstrap(&b);
                t.merge(inner);
            }
            DumpEntry::Bootstrap(None) => {}
            DumpEntry::Listeners(anys) => {
                for any in &anys {
                    t.decode_any(any, |t, l: PbListener| t.add_listener(&l));
                }
            }
            DumpEntry::Routes(anys) => {
                for any in &anys {
                    t.decode_any(any, |t, rc: RouteConfiguration| t.add_route_configuration(&rc));
                }
            }
            DumpEntry::Clusters(anys) => {
                for any in &anys {
                    t.decode_any(any, |t, c: PbCluster| t.add_cluster(&c));
                }
            }
            DumpEntry::Endpoints(anys) => {
                for any in &anys {
                    t.decode_any(any, |t, cla: ClusterLoadAssignment| t.add_load_assignment(&cla, &mut endpoints));
                }
            }
            DumpEntry::Other(other) => {
                t.unsupported.push(Unsupported { resource: format!("configs[{i}]"), type_url: config.type_url.clone(), field: other, effect: Effect::Ignored });
            }
        });
        if let Err(e) = result {
            t.rejected.push(Rejected { resource: format!("configs[{i}]"), type_url: config.type_url.clone(), reason: format!("cannot decode: {e}") });
        }
    }
    t.attach_endpoints(endpoints);
    t
}

impl Translation {
    fn merge(&mut self, other: Translation) {
        self.model.listeners.extend(other.model.listeners);
        self.model.routes.extend(other.model.routes);
        self.model.clusters.extend(other.model.clusters);
        self.unsupported.extend(other.unsupported);
        self.rejected.extend(other.rejected);
    }

    fn decode_any<T: Message + prost::Name + Default>(&mut self, any: &Any, then: impl FnOnce(&mut Self, T)) {
        if protojson::type_name(&any.type_url) != T::full_name() {
            self.rejected.push(Rejected { resource: T::full_name(), type_url: any.type_url.clone(), reason: format!("expected a {}", T::full_name()) });
            return;
        }
        match T::decode(any.value.as_slice()) {
            Ok(v) => then(self, v),
            Err(e) => self.rejected.push(Rejected { resource: T::full_name(), type_url: any.type_url.clone(), reason: format!("cannot decode: {e}") }),
        }
    }
}
