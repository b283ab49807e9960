//! The ADS transport and the protobuf types it carries.
//!
//! Owns: the Envoy v3 API types (re-exported from `envoy-types`), the descriptor pool
//! and proto3 JSON codec for them ([`protojson`]), and type URLs. The ADS client
//! itself (SotW and Delta streams, ACK/NACK, reconnect) lands with the xDS issue.
//! Does not own: what a listener, route or cluster means (`istio-compat`).

pub mod protojson;
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
