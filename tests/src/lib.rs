//! End-to-end harness for node-proxy: the real binary ([`proxy::Proxy`]), Rust
//! origin servers whose behaviour is chosen by path ([`origin::Origin`]), real
//! clients (curl, h2load, Python grpcio) with parsed output ([`clients`], [`grpc`]),
//! configuration builders ([`config`]), access log and metrics parsers, and network
//! namespaces for the tests that need root ([`netns`]), and a test ADS server serving
//! resources and istiod's config dumps over xDS ([`ads_server`]), a test istiod CA
//! (`IstioCertificateService` over TLS: [`ca_server`]), the two-node VXLAN topology
//! ([`topology`]), and test certificates ([`pki`]).
//!
//! Everything a test starts is stopped on drop, also when the test panics; every
//! port comes from [`ports::free_port`], so tests run in parallel.

pub mod access_log;
pub mod ads_server;
pub mod binary;
pub mod ca_server;
pub mod clients;
pub mod config;
pub mod corpus;
pub mod grpc;
pub mod mesh_scene;
pub mod metrics;
pub mod netns;
pub mod origin;
pub mod pki;
pub mod ports;
pub mod proxy;
pub mod topology;
pub mod wait;

pub use access_log::AccessLogEntry;
pub use ads_server::AdsServer;
pub use clients::{curl, h2load, Curl, CurlResponse};
pub use config::{bootstrap, cluster, h2_cluster, hcm, http_bootstrap, http_listener, merge, route_all_to, yaml};
pub use grpc::{grpc_client, GrpcServer};
pub use origin::Origin;
pub use ports::free_port;
pub use proxy::{Proxy, ProxyOptions};
pub use wait::{assert_eventually, wait_until};
