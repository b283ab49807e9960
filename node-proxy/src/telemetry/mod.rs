//! Metrics in Istio's names and access logs in Istio's formats.

pub mod access_log;
pub mod metrics;
