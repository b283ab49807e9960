//! Istio's data model and semantics, I/O-free except the CA client.
//!
//! Owns: the mesh model ([`model`]) and the translation of Envoy's resources, as
//! istiod generates them, into it ([`translate`]), Istio's workload API
//! (workloads, services, L4 authorization: [`model::workload`]), and the client of
//! istiod's CA ([`ca`]: workload certificates). Later: policy evaluation. Does not own
//! listening sockets, timers or the proxy runtime.

pub mod authn;
pub mod authz;
pub mod ca;
pub mod model;
pub mod translate;
