//! The HTTP/1.1, HTTP/2 and gRPC data path.

pub mod body;
pub mod headers;
pub mod jwt;
pub mod local_reply;
pub mod proxy;
pub mod server;
