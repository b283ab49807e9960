//! Wire formats for node-proxy: pure, I/O-free parsers and encoders.
//!
//! Nothing in this crate performs I/O or depends on an async runtime; every
//! function takes bytes and returns values. Every parser is meant to be fed
//! attacker-controlled input, so the crate holds itself to three rules, which
//! the fuzz targets in `fuzz/` check:
//!
//! * no panics on any input (outside tests, `unwrap`, `expect`, `panic!` and
//!   slice indexing are denied by lint; parsers use checked accessors),
//! * no allocation sized by a length field that was not first bounded by a
//!   constant,
//! * no arithmetic overflow on input-derived numbers.
//!
//! Modules:
//! * [`sniff`] — protocol detection on the first bytes of a TCP connection
//!   (HTTP/1, HTTP/2 prior knowledge, TLS ClientHello with SNI and ALPN).
//! * [`grpc`] — gRPC-over-HTTP/2 helpers: status codes, `grpc-timeout`,
//!   `grpc-message` percent-encoding, content-type, message framing.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::unreachable, clippy::todo))]

pub mod grpc;
pub mod h1frame;
pub mod sniff;
