//! Upstream clusters: hosts, load balancing, outlier detection, circuit breakers and
//! connection pools.

pub mod cluster;
pub mod host;
pub mod lb;
pub mod outlier;
pub mod pool;
