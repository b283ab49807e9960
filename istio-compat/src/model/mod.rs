//! The mesh model: what node-proxy runs, whatever the source (a local file of Envoy
//! resources, or xDS from istiod). Serde, so `/config_dump` can print it and a test
//! can write it by hand.

pub mod cluster;
pub mod common;
pub mod fault;
pub mod listener;
pub mod retry;
pub mod route;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use cluster::Cluster;
pub use common::Name;
pub use listener::Listener;
pub use route::RouteTable;

/// Everything the proxy serves, keyed by resource name. Resources are shared
/// (`Arc`): a new model after an update shares every resource that did not change,
/// so the runtime can tell what changed by pointer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Model {
    #[serde(default)]
    pub listeners: BTreeMap<Name, Arc<Listener>>,
    /// Route configurations referenced by name (RDS) from listeners.
    #[serde(default)]
    pub routes: BTreeMap<Name, Arc<RouteTable>>,
    #[serde(default)]
    pub clusters: BTreeMap<Name, Arc<Cluster>>,
}
