//! Protocol detection on the first bytes of an accepted TCP connection.
//!
//! The proxy peeks at a new connection, hands the bytes it has to [`sniff`],
//! and peeks again (with more bytes) while the answer is [`Sniff::NeedMore`].
//! This module owns that decision and the names Envoy gives its outcome
//! (`transport_protocol` / `application_protocols` in filter-chain matching).
//!
//! What is recognised, and how it mirrors Envoy's listener filters:
//!
//! * **HTTP/2 prior knowledge** — the exact 24-byte connection preface
//!   [`H2_PREFACE`] (`http_inspector` reports it as `h2c`).
//! * **HTTP/1.x** — a request line `METHOD SP request-target SP HTTP/1.d CRLF`
//!   with a method from [`HTTP1_METHODS`] (`http_inspector`, which reports
//!   `http/1.1` for `HTTP/1.1` and `http/1.0` for any other version); see
//!   [`Http1Version`]. The whole line must arrive within
//!   [`MAX_REQUEST_LINE_LEN`] bytes.
//! * **TLS** — a ClientHello in one or more handshake records, from which the
//!   SNI host name (lowercased) and the ALPN list are extracted
//!   (`tls_inspector`); see [`ClientHello`] and [`client_hello`].
//! * Anything else is [`Detected::Other`], which Envoy calls `raw_buffer`.
//!
//! [`sniff`] is a pure function of its input and is monotonic: once it has
//! returned [`Sniff::Detected`] for some bytes, it returns the same answer for
//! any longer buffer that starts with those bytes. It never asks for more than
//! [`MAX_SNIFF_LEN`] bytes: for a buffer at least that long the answer is
//! always `Detected`.

mod http1;
mod tls;

pub use http1::{Http1Version, HTTP1_METHODS, MAX_REQUEST_LINE_LEN};
pub use tls::{client_hello, ClientHello, TlsError, MAX_CLIENT_HELLO_LEN, MAX_CLIENT_HELLO_RECORDS, MAX_TLS_RECORD_LEN, MAX_TLS_SNIFF_LEN};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most bytes [`sniff`] ever needs: for any buffer at least this long it
/// returns [`Sniff::Detected`]. A caller can size its peek buffer with it.
pub const MAX_SNIFF_LEN: usize = max(MAX_TLS_SNIFF_LEN, max(MAX_REQUEST_LINE_LEN, H2_PREFACE.len()));

const _: () = assert!(MAX_SNIFF_LEN >= MAX_TLS_SNIFF_LEN && MAX_SNIFF_LEN >= MAX_REQUEST_LINE_LEN && MAX_SNIFF_LEN >= H2_PREFACE.len());

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// The outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// The bytes so far are a strict prefix of something recognisable; peek
    /// again once more bytes have arrived.
    NeedMore,
    /// The protocol is decided; more bytes would not change the answer.
    Detected(Detected),
}

/// A detected protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// Cleartext HTTP/1.x; the version comes from the request line.
    Http1(Http1Version),
    /// Cleartext HTTP/2 with prior knowledge (the connection preface).
    Http2,
    /// A TLS ClientHello.
    Tls(ClientHello),
    /// None of the above (Envoy's `raw_buffer`).
    Other,
}

/// Three-way answer of one recogniser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress<T> {
    /// The bytes are (start with) this protocol.
    Match(T),
    /// The bytes are a strict prefix of this protocol's opening.
    NeedMore,
    /// The bytes cannot be this protocol, whatever follows.
    NoMatch,
}

/// Classifies the first bytes of a connection.
///
/// Never panics, for any input; allocates at most [`MAX_CLIENT_HELLO_LEN`]
/// bytes (to reassemble a ClientHello split across TLS records) plus the
/// extracted names.
pub fn sniff(buf: &[u8]) -> Sniff {
    match buf.first() {
        None => Sniff::NeedMore,
        Some(&tls::CONTENT_TYPE_HANDSHAKE) => match client_hello(buf) {
            Ok(hello) => Sniff::Detected(Detected::Tls(hello)),
            Err(TlsError::Truncated) => Sniff::NeedMore,
            Err(_) => Sniff::Detected(Detected::Other),
        },
        Some(_) => match (h2_preface(buf), http1::request_line(buf)) {
            (Progress::Match(()), _) => Sniff::Detected(Detected::Http2),
            (_, Progress::Match(version)) => Sniff::Detected(Detected::Http1(version)),
            (Progress::NeedMore, _) | (_, Progress::NeedMore) => Sniff::NeedMore,
            (Progress::NoMatch, Progress::NoMatch) => Sniff::Detected(Detected::Other),
        },
    }
}

fn h2_preface(buf: &[u8]) -> Progress<()> {
    if buf.starts_with(H2_PREFACE) {
        Progress::Match(())
    } else if H2_PREFACE.starts_with(buf) {
        Progress::NeedMore
    } else {
        Progress::NoMatch
    }
}

/// Envoy's transport protocol name for a detection: `"tls"` for a TLS
/// ClientHello, `"raw_buffer"` for everything else.
pub fn transport_protocol(detected: &Detected) -> &'static str {
    match detected {
        Detected::Tls(_) => "tls",
        Detected::Http1(_) | Detected::Http2 | Detected::Other => "raw_buffer",
    }
}

/// Envoy's requested application protocols for a detection, as
/// `http_inspector` and `tls_inspector` set them: `["http/1.1"]` or
/// `["http/1.0"]` for HTTP/1, `["h2c"]` for HTTP/2 prior knowledge, the
/// client's ALPN list (in its order) for TLS, and nothing otherwise.
pub fn application_protocols(detected: &Detected) -> Vec<&str> {
    match detected {
        Detected::Http1(version) => vec![version.alpn()],
        Detected::Http2 => vec!["h2c"],
        Detected::Tls(hello) => hello.alpn.iter().map(String::as_str).collect(),
        Detected::Other => Vec::new(),
    }
}

#[cfg(test)]
mod tests;
