//! The ADS transport and the protobuf types it carries.
//!
//! Owns: the Envoy v3 API types (re-exported from `envoy-types`), the descriptor pool
//! and proto3 JSON codec for them ([`protojson`]), type URLs, Istio's workload API
//! types ([`istio`]), and the ADS client ([`ads`]: state of the world and Delta,
//! ACK/NACK, subscriptions, reconnect) over its gRPC [`transport`], with the node
//! identities istiod expects ([`node`]).
//! Does not own: what a listener, route or cluster means (`istio-compat`).

pub mod ads;
pub mod node;
pub mod protojson;
pub mod transport;
pub mod type_url;

/// The Envoy v3 API as prost structs.
pub use envoy_types::pb;

/// Istio's workload API (`istio.workload`, `istio.security`) as prost structs; the
/// .proto files are in `proto/istio/`, with the upstream path and commit they match.
pub mod istio {
    #[allow(clippy::all, missing_docs)]
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));
    }
    #[allow(clippy::all, missing_docs)]
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }
}
