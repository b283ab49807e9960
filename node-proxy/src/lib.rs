//! node-proxy: one L7 proxy per Kubernetes node for Istio.
//!
//! The runtime: listeners and sniffing ([`listener`]), the RBAC filters' enforcement ([`authz`]), the HTTP/gRPC data path
//! ([`http`]), the TCP proxy ([`tcp`]), upstream clusters, load balancing and pools
//! ([`upstream`]), the live configuration ([`snapshot`], loaded by [`config`]),
//! worker threads ([`runtime`]), admin/metrics/readiness ports ([`admin`]),
//! telemetry ([`telemetry`]), graceful shutdown ([`drain`]), HBONE tunnels ([`hbone`]), workload mTLS ([`tls`]) and
//! certificates ([`identity`]), the node's part in the mesh ([`mesh`]), configuration from istiod ([`xds`]) and the redirect of pods'
//! connections to the proxy ([`redirect`]). [`app`] wires them.

pub mod admin;
pub mod app;
pub mod authz;
pub mod config;
pub mod control;
pub mod drain;
pub mod ext_authz;
pub mod hbone;
pub mod http;
pub mod identity;
pub mod io;
pub mod listener;
pub mod logging;
pub mod mesh;
pub mod redirect;
pub mod runtime;
pub mod snapshot;
pub mod tcp;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod xds;
