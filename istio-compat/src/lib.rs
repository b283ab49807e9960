//! Istio's data model and semantics, I/O-free.
//!
//! Owns: the mesh model ([`model`]) and the translation of Envoy's resources, as
//! istiod generates them, into it ([`translate`]). Later: the workload API, SPIFFE
//! identities and policy. Does not own sockets, timers or the proxy runtime.

pub mod model;
pub mod translate;
