//! Istio's data model and semantics, I/O-free.
//!
//! Owns: the mesh model ([`model`]) and the translation of Envoy's resources, as
//! istiod generates them, into it ([`translate`]), and Istio's workload API
//! (workloads, services, L4 authorization: [`model::workload`]). Later: policy
//! evaluation. Does not own sockets, timers or the proxy runtime.

pub mod model;
pub mod translate;
