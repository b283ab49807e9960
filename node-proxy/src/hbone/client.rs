//! The outbound end of HBONE: a pool of HTTP/2 connections to destination proxies,
//! one `CONNECT` stream per proxied connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderValue, Method, Request, StatusCode};
use istio_compat::model::workload::Identity;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use super::{
    H2Stream, HboneError, BAGGAGE, CONNECTION_WINDOW, FORWARDED, FRAME_SIZE, IDLE_RELEASE, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_STREAMS_PER_CONNECTION,
    STREAM_WINDOW, TRACEPARENT,
};

/// Which connections may carry a stream: the identity we present, the identities we
/// accept on the other end, and where we dial. Two workloads never share a connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Identity,
    pub destination: Vec<Identity>,
    pub address: SocketAddr,
}

/// What the `CONNECT` says besides its target.
#[derive(Clone, Debug, Default)]
pub struct ConnectHeaders {
    pub baggage: Option<String>,
    /// The source workload's address (`forwarded: for=...`).
    pub forwarded_for: Option<std::net::IpAddr>,
    pub traceparent: Option<String>,
}

struct Conn {
    sender: SendRequest<Bytes>,
    streams: Arc<AtomicU32>,
    /// When the last stream ended (meaningful while `streams` is 0).
    idle_since: Arc<Mutex<Instant>>,
    max_streams: u32,
}

impl Conn {
    /// Whether the connection takes a new stream now (`Ready(Ok)`), is gone
    /// (`Ready(Err)`: GOAWAY or closed), or is busy (`Pending`); without waiting.
    fn poll_ready_now(&mut self) -> Poll<Result<(), h2::Error>> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        self.sender.poll_ready(&mut cx)
    }

    /// Open, not at its stream limit, and accepting new streams.
    fn usable(&mut self) -> bool {
        self.streams.load(Ordering::Acquire) < self.max_streams && matches!(self.poll_ready_now(), Poll::Ready(Ok(())))
    }

    fn is_closed(&mut self) -> bool {
        matches!(self.poll_ready_now(), Poll::Ready(Err(_)))
    }

    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        self.idle_since.lock().ok().map(|t| now.saturating_duration_since(*t))
    }
}

/// Counts a stream on its connection until dropped.
struct StreamGuard {
    streams: Arc<AtomicU32>,
    idle_since: Arc<Mutex<Instant>>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut t) = self.idle_since.lock() {
                *t = Instant::now();
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    conns: Mutex<HashMap<PoolKey, Vec<Conn>>>,
    /// One dial at a time per key, so a burst of first connections shares one.
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// HTTP/2 connections to HBONE peers, shared by the streams of one key.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
    idle_release: Duration,
    /// PING interval and how long an answer may take.
    keepalive: (Duration, Duration),
}

impl Default for Pool {
    fn default() -> Self {
        Self::new(IDLE_RELEASE)
    }
}

impl Pool {
    /// A pool that closes a connection once it has carried no stream for
    /// `idle_release`. Must be called inside a tokio runtime (it starts the sweeper).
    pub fn new(idle_release: Duration) -> Pool {
        let inner = Arc::new(Inner::default());
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        let period = (idle_release / 4).max(Duration::from_millis(50));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { return };
                sweep(&inner, idle_release);
            }
        });
        Pool { inner, idle_release, keepalive: (KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT) }
    }

    /// Another PING interval and answer timeout (tests).
    pub fn with_keepalive(mut self, interval: Duration, timeout: Duration) -> Pool {
        self.keepalive = (interval, timeout);
        self
    }

    /// Opens a `CONNECT` stream to `target` on a pooled connection for `key`, dialing
    /// a new one with `dial` (TCP + mTLS, presenting `key.source`, accepting only
    /// `key.destination`) when none can take another stream.
    pub async fn connect<F, Fut, IO>(&self, key: &PoolKey, target: SocketAddr, headers: &ConnectHeaders, dial: F) -> Result<H2Stream, HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, guard) = match self.checkout(key) {
            Some(c) => c,
            None => {
                let lock = self.dial_lock(key);
                let _dialing = lock.lock().await;
                match self.checkout(key) {
                    Some(c) => c,
                    None => {
                        self.dial(key, dial).await?;
                        self.checkout(key).ok_or_else(|| HboneError::Request(format!("the new connection to {} took no stream", key.address)))?
                    }
                }
            }
        };
        open_stream(sender, guard, target, headers).await
    }

    /// Open connections, over all keys.
    pub fn connections(&self) -> usize {
        self.inner.conns.lock().map(|m| m.values().map(Vec::len).sum()).unwrap_or(0)
    }

    /// Closes the connections idle for longer than the pool's release time now
    /// (the sweeper does it periodically).
    pub fn release_idle(&self) {
        sweep(&self.inner, self.idle_release);
    }

    fn dial_lock(&self, key: &PoolKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut dialing = self.inner.dialing.lock().unwrap_or_else(|p| p.into_inner());
        dialing.entry(key.clone()).or_default().clone()
    }

    /// A usable connection's sender, its stream already counted.
    fn checkout(&self, key: &PoolKey) -> Option<(SendRequest<Bytes>, StreamGuard)> {
        let mut conns = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(key)?;
        list.retain_mut(|c| !c.is_closed());
        let c = list.iter_mut().find_map(|c| c.usable().then_some(c))?;
        c.streams.fetch_add(1, Ordering::AcqRel);
        Some((c.sender.clone(), StreamGuard { streams: c.streams.clone(), idle_since: c.idle_since.clone() }))
    }

    async fn dial<F, Fut, IO>(&self, key: &PoolKey, dial: F) -> Result<(), HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<IO>>,
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = key.address.to_string();
        let io = dial().await.map_err(|source| {
            // A TLS rejection says what was wrong with the peer's certificate.
            let source = match crate::tls::Rejection::from_io(&source) {
                Some(r) => io::Error::new(source.kind(), format!("mTLS: {r}")),
                None => source,
            };
            HboneError::Dial { peer: peer.clone(), source }
        })?;
        let (sender, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(FRAME_SIZE)
            .max_header_list_size(16 * 1024)
            .max_send_buffer_size(STREAM_WINDOW as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|source| HboneError::Handshake { peer: peer.clone(), source })?;
        let max_streams = MAX_STREAMS_PER_CONNECTION.min(u32::try_from(connection.max_concurrent_send_streams()).unwrap_or(u32::MAX)).max(1);
        let mut connection = connection;
        let ping = connection.ping_pong();
        let (interval, timeout) = self.keepalive;
        tokio::spawn(async move {
            tokio::select! {
                done = connection => match done {
                    Ok(()) => debug!(peer, "HBONE connection closed"),
                    Err(e) => debug!(peer, error = %e, "HBONE connection ended with an error"),
                },
                // Dropping the connection fails its streams and closes the senders.
                why = keepalive(ping, interval, timeout) => info!(peer, "HBONE connection dropped: {why}"),
            }
        });
        debug!(peer = %key.address, source = %key.source, "HBONE connection opened");
        let conn = Conn { sender, streams: Arc::new(AtomicU32::new(0)), idle_since: Arc::new(Mutex::new(Instant::now())), max_streams };
        self.inner.conns.lock().unwrap_or_else(|p| p.into_inner()).entry(key.clone()).or_default().push(conn);
        Ok(())
    }
}

/// PINGs every `interval`; returns why it stopped (an answer late by `timeout`, or an error).
async fn keepalive(ping: Option<h2::PingPong>, interval: Duration, timeout: Duration) -> String {
    let Some(mut ping) = ping else { return std::future::pending().await };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("keepalive PING failed: {e}"),
            Err(_) => return format!("no answer to a keepalive PING within {timeout:?}: the peer is gone"),
        }
    }
}

fn sweep(inner: &Inner, idle_release: Duration) {
    let now = Instant::now();
    let mut conns = inner.conns.lock().unwrap_or_else(|p| p.into_inner());
    for list in conns.values_mut() {
        // Dropping the sender lets the connection end once its streams have.
        list.retain_mut(|c| !c.is_closed() && c.idle_for(now).is_none_or(|idle| idle < idle_release));
    }
    conns.retain(|_, list| !list.is_empty());
    let live: Vec<PoolKey> = conns.keys().cloned().collect();
    drop(conns);
    let mut dialing = inner.dialing.lock().unwrap_or_else(|p| p.into_inner());
    dialing.retain(|k, lock| live.contains(k) || Arc::strong_count(lock) > 1);
}

/// The `CONNECT` request for `target`.
pub fn connect_request(target: SocketAddr, headers: &ConnectHeaders) -> Result<Request<()>, HboneError> {
    let mut request = Request::builder().method(Method::CONNECT).uri(target.to_string()).version(http::Version::HTTP_2);
    let value = |v: String| HeaderValue::try_from(v).map_err(|e| HboneError::Request(format!("header value: {e}")));
    if let Some(b) = &headers.baggage {
        request = request.header(BAGGAGE, value(b.clone())?);
    }
    if let Some(ip) = headers.forwarded_for {
        let v = if ip.is_ipv6() { format!("for=\"[{ip}]\"") } else { format!("for={ip}") };
        request = request.header(FORWARDED, value(v)?);
    }
    if let Some(t) = &headers.traceparent {
        request = request.header(TRACEPARENT, value(t.clone())?);
    }
    request.body(()).map_err(|e| HboneError::Request(e.to_string()))
}

async fn open_stream(mut sender: SendRequest<Bytes>, guard: StreamGuard, target: SocketAddr, headers: &ConnectHeaders) -> Result<H2Stream, HboneError> {
    let authority = target.to_string();
    let serr = |source| HboneError::Stream { authority: authority.clone(), source };
    let request = connect_request(target, headers)?;
    std::future::poll_fn(|cx| sender.poll_ready(cx)).await.map_err(serr)?;
    let (response, send) = sender.send_request(request, false).map_err(serr)?;
    let response = response.await.map_err(serr)?;
    if response.status() != StatusCode::OK {
        return Err(HboneError::Status { authority, status: response.status() });
    }
    Ok(H2Stream::new(send, response.into_body(), Some(Box::new(guard))))
}
