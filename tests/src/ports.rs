//! Free TCP ports for listeners a test configures.
//!
//! Ports come from 20000–31999, below Linux's ephemeral range (32768–60999), so a
//! client's outgoing connection never holds a port handed out here. Every port is
//! handed out once per test process (tests in one binary run in parallel threads),
//! and only after a bind on 0.0.0.0 proved it free. The start is spread by process
//! id so two test binaries running at once are unlikely to walk the same ports.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

const FIRST: u32 = 20_000;
const COUNT: u32 = 12_000;

fn cursor() -> &'static AtomicU32 {
    static CURSOR: OnceLock<AtomicU32> = OnceLock::new();
    CURSOR.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        AtomicU32::new((std::process::id().wrapping_mul(7919) ^ nanos) % COUNT)
    })
}

/// A port nothing listens on (checked on 0.0.0.0), never returned twice by this process.
pub fn free_port() -> u16 {
    for _ in 0..COUNT {
        let port = (FIRST + cursor().fetch_add(1, Ordering::Relaxed) % COUNT) as u16;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {FIRST}..{}", FIRST + COUNT);
}

/// A loopback address with nothing listening on it: connecting fails at once
/// (ECONNREFUSED). For "this endpoint is down" tests.
pub fn closed_port_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}
