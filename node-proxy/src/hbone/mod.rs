//! HBONE: TCP connections tunnelled as HTTP/2 `CONNECT` streams inside mutual TLS,
//! wire-compatible with Istio's ztunnel.
//!
//! Owns: the tunnel's HTTP/2 layer on both ends, over any byte stream (the mTLS
//! stream in production; tests may use plain TCP) — the client side's pool of
//! HTTP/2 connections keyed by (source identity, destination identities, destination
//! address), many streams per connection ([`client`]), the server side's accept loop
//! that answers each `CONNECT` with the handler's verdict ([`server`]), and the
//! byte-stream view of one `CONNECT` stream ([`H2Stream`]).
//! Does not own: TLS (the caller hands in the established stream and the verified peer
//! identity), policy, or which destinations get tunnelled.
//!
//! The wire format, as ztunnel speaks it (differences: docs/hbone-interop.md):
//! - TCP to the destination workload's IP, port 15008; TLS 1.3 with ALPN `h2`, each side
//!   presenting the SPIFFE certificate of the workload it acts for.
//! - Per proxied connection one HTTP/2 stream: `:method CONNECT`, `:authority` = the
//!   destination `ip:port` (authority form, no scheme or path), headers `baggage`
//!   (k8s.* / service.* members describing the source), `forwarded: for=<source ip>`
//!   (ztunnel writes `for="<ip>:<port>"`; both are read) and `traceparent`. The server answers `200` and the stream's DATA frames carry
//!   the connection's bytes both ways; END_STREAM is a half-close. `401` means policy
//!   denied it, `503` that the destination could not be reached, `400` a malformed
//!   request.
//! - HTTP/2 settings: 4 MiB stream window, 16 MiB connection window (4× the stream
//!   window, so one stalled stream cannot starve the rest), 1 MiB frames, at most 100
//!   streams per connection; an unused pooled connection is closed after 5 minutes.

pub mod client;
pub mod inbound;
pub mod outbound;
pub mod plan;
pub mod server;
mod stream;
#[cfg(test)]
mod tests;

pub use stream::{H2RecvHalf, H2SendHalf, H2Stream};

use std::time::Duration;

/// The HBONE port on every meshed workload's address.
pub const PORT: u16 = 15008;
/// ALPN protocol of the outer TLS connection.
pub const ALPN: &[u8] = b"h2";
/// Per-stream flow-control window.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection flow-control window.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept.
pub const FRAME_SIZE: u32 = 1024 * 1024;
/// Streams per pooled connection before the pool opens another.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// How long a pooled connection may go without streams before it is closed.
pub const IDLE_RELEASE: Duration = Duration::from_secs(300);
/// A client connection PINGs its peer this often, and is dropped when a PING goes
/// unanswered for [`KEEPALIVE_TIMEOUT`] (ztunnel's values), so a pooled tunnel to a
/// vanished node is noticed before the kernel's TCP timeouts would.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Header names of the `CONNECT` request.
pub const BAGGAGE: &str = "baggage";
pub const FORWARDED: &str = "forwarded";
pub const TRACEPARENT: &str = "traceparent";

/// Why a tunnel could not be opened or served.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("HBONE HTTP/2 handshake with {peer} failed: {source}")]
    Handshake {
        peer: String,
        #[source]
        source: h2::Error,
    },
    #[error("HBONE CONNECT to {authority} failed: {source}")]
    Stream {
        authority: String,
        #[source]
        source: h2::Error,
    },
    #[error("HBONE CONNECT to {authority} answered {status}{}", reason(*.status))]
    Status { authority: String, status: http::StatusCode },
    #[error("dialing the HBONE peer {peer}: {source}")]
    Dial {
        peer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed CONNECT request: {0}")]
    Request(String),
}

fn reason(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        401 => " (the destination's authorization policy denied the connection)",
        503 => " (the destination proxy could not reach the workload)",
        _ => "",
    }
}

/// TLS configs made from a workload certificate, kept until the certificate is renewed.
struct ConfigCache<K, C>(std::sync::Mutex<std::collections::HashMap<K, CachedConfig<C>>>);

type CachedConfig<C> = (std::sync::Arc<crate::tls::Certified>, std::sync::Arc<C>);

impl<K: std::hash::Hash + Eq, C> Default for ConfigCache<K, C> {
    fn default() -> Self {
        ConfigCache(std::sync::Mutex::new(std::collections::HashMap::new()))
    }
}

impl<K: std::hash::Hash + Eq, C> ConfigCache<K, C> {
    /// The config for `key` made from `cert`, built by `build` unless cached for this very certificate.
    fn get_or_build(
        &self,
        key: K,
        cert: &std::sync::Arc<crate::tls::Certified>,
        build: impl FnOnce() -> Result<std::sync::Arc<C>, String>,
    ) -> Result<std::sync::Arc<C>, String> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((c, config)) = map.get(&key) {
            if std::sync::Arc::ptr_eq(c, cert) {
                return Ok(config.clone());
            }
        }
        let config = build()?;
        map.insert(key, (cert.clone(), config.clone()));
        Ok(config)
    }
}
