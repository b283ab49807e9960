//! Upstream HTTP connection pools, one set per worker thread (as in Envoy): HTTP/1.1
//! keep-alive connections reused one request at a time, HTTP/2 connections shared by
//! many streams. Honours `max_requests_per_connection`, the idle timeout, the
//! connect timeout and the cluster's `max_connections` / `max_pending_requests`
//! circuit breakers.
//!
//! Every leg the pools and the TCP proxy dial goes through [`Pools::dial`]: plain TCP,
//! or an HBONE stream when the endpoint is a meshed workload ([`Mesh::leg`]). Over
//! HBONE a connection carries its source workload's identity and address, so its pool
//! is that source's alone.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::cluster::{ClusterState, Slot};
use crate::hbone::plan::PlanError;
use crate::hbone::{H2Stream, HboneError};
use crate::http::body::ReqBody;
use crate::mesh::{Leg, Mesh};
use crate::runtime::LocalExec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connection failure: {0}")]
    Connect(io::Error),
    #[error("connection timeout after {0:?}")]
    ConnectTimeout(Duration),
    #[error("HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
    /// `max_connections` reached and `max_pending_requests` full.
    #[error("overflow: too many pending requests")]
    Overflow,
    /// No leg to the endpoint can be planned (the source is not a workload this proxy acts for).
    #[error("{0}")]
    Plan(PlanError),
    #[error("{0}")]
    Tunnel(HboneError),
}

/// The bytes to an endpoint: a TCP connection, or a stream inside an HBONE tunnel.
#[derive(Debug)]
pub enum UpstreamIo {
    Tcp(TcpStream),
    Hbone(H2Stream),
}

impl UpstreamIo {
    /// The local address of a TCP leg (an HBONE stream shares its tunnel's).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            UpstreamIo::Tcp(s) => s.local_addr().ok(),
            UpstreamIo::Hbone(_) => None,
        }
    }

    /// `mutual_tls` through HBONE, `none` otherwise (Istio's connection_security_policy).
    pub fn security_policy(&self) -> &'static str {
        match self {
            UpstreamIo::Tcp(_) => "none",
            UpstreamIo::Hbone(_) => "mutual_tls",
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Hbone(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Hbone(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Hbone(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Hbone(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Hbone(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Tcp(s) => s.is_write_vectored(),
            UpstreamIo::Hbone(s) => s.is_write_vectored(),
        }
    }
}

/// Pools of this worker, keyed by endpoint, protocol and (over HBONE) source address.
#[derive(Default)]
pub struct Pools {
    pools: RefCell<HashMap<PoolKey, Rc<EndpointPool>>>,
    dialer: Rc<Dialer>,
}

/// Endpoint, protocol, and the source address when the leg is HBONE.
type PoolKey = (SocketAddr, Protocol, Option<IpAddr>);

/// Opens legs to endpoints.
#[derive(Default)]
struct Dialer {
    /// SO_MARK for upstream sockets (so redirect rules can skip the proxy's own traffic).
    mark: Option<u32>,
    mesh: Option<Arc<Mesh>>,
}

struct EndpointPool {
    /// How connections are opened: the latest leg planned for this key.
    leg: RefCell<Leg>,
    dialer: Rc<Dialer>,
    /// The cluster's idle timeout for these connections.
    idle_timeout: Duration,
    /// Woken when an HTTP/2 connection attempt finishes.
    h2_connected: Notify,
    idle: RefCell<Vec<Idle>>,
    h2: RefCell<Option<H2Conn>>,
    /// Woken when an HTTP/1 connection is released (for requests waiting on `max_connections`).
    released: Notify,
    connecting_h2: Cell<bool>,
}

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    requests: u32,
    since: Instant,
    _slot: Slot,
}

#[derive(Clone)]
struct H2Conn {
    sender: http2::SendRequest<ReqBody>,
    requests: Rc<Cell<u32>>,
    _slot: Rc<Slot>,
}

/// A connection checked out for one request.
pub enum Checkout {
    Http1(PooledH1),
    Http2(http2::SendRequest<ReqBody>),
}

/// An HTTP/1 connection in use; back to the pool when dropped, if still usable.
pub struct PooledH1 {
    sender: Option<http1::SendRequest<ReqBody>>,
    requests: u32,
    slot: Option<Slot>,
    pool: Weak<EndpointPool>,
    max_requests: Option<u32>,
    /// Set when the exchange did not complete cleanly: never reuse.
    pub broken: bool,
}

impl PooledH1 {
    pub fn sender(&mut self) -> Option<&mut http1::SendRequest<ReqBody>> {
        self.sender.as_mut()
    }
}

impl Drop for PooledH1 {
    fn drop(&mut self) {
        let (Some(sender), Some(slot), Some(pool)) = (self.sender.take(), self.slot.take(), self.pool.upgrade()) else { return };
        let reusable = !self.broken && !sender.is_closed() && self.max_requests.is_none_or(|m| self.requests < m);
        if reusable {
            pool.idle.borrow_mut().push(Idle { sender, requests: self.requests, since: Instant::now(), _slot: slot });
        } else {
            drop(slot);
        }
        pool.released.notify_one();
    }
}

impl Pools {
    /// Pools dialing with `mark`, through HBONE to meshed endpoints when `mesh` is given.
    pub fn new(mark: Option<u32>, mesh: Option<Arc<Mesh>>) -> Self {
        Pools { pools: RefCell::default(), dialer: Rc::new(Dialer { mark, mesh }) }
    }

    /// The leg from the downstream peer `source` to `endpoint`. `None`: the request
    /// arrived through an HBONE tunnel and this proxy is its destination, so the leg to
    /// the local workload is plain.
    pub fn leg(&self, source: Option<IpAddr>, endpoint: SocketAddr) -> Result<Leg, PoolError> {
        match (&self.dialer.mesh, source) {
            (Some(mesh), Some(source)) => mesh.leg(source, endpoint).map_err(PoolError::Plan),
            _ => Ok(Leg::Plain(endpoint)),
        }
    }

    /// A connection over `leg` within `cluster`'s connect timeout (TCP proxy).
    pub async fn dial(&self, leg: &Leg, cluster: &ClusterState) -> Result<UpstreamIo, PoolError> {
        self.dialer.dial(leg, cluster).await
    }

    /// A connection to `addr` for one request of `cluster` from the downstream peer
    /// `source` ([`Pools::leg`]).
    pub async fn checkout(&self, cluster: &Arc<ClusterState>, addr: SocketAddr, protocol: Protocol, source: Option<IpAddr>) -> Result<Checkout, PoolError> {
        let idle_timeout = cluster.config.idle_timeout.unwrap_or(Duration::MAX);
        let leg = self.leg(source, addr)?;
        let key = match &leg {
            Leg::Plain(_) => (addr, protocol, None),
            Leg::Hbone { source, .. } => (addr, protocol, Some(*source)),
        };
        let pool = match self.pools.borrow_mut().entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let stale = match (&leg, &*e.get().leg.borrow()) {
                    (Leg::Hbone { tunnel, .. }, Leg::Hbone { tunnel: held, .. }) => {
                        !Arc::ptr_eq(&tunnel.source, &held.source) || !Arc::ptr_eq(&tunnel.destination, &held.destination)
                    }
                    _ => false,
                };
                if stale {
                    // The workloads' view changed (identity, addresses): new connections follow it.
                    e.get().retarget(leg.clone());
                }
                e.get().clone()
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Rc::new(EndpointPool::new(leg, idle_timeout, self.dialer.clone()))).clone(),
        };
        match protocol {
            Protocol::Http1 => pool.checkout_h1(cluster).await.map(Checkout::Http1),
            Protocol::Http2 => pool.checkout_h2(cluster).await.map(Checkout::Http2),
        }
    }

    /// Closes idle connections older than their cluster's idle timeout and forgets empty pools.
    pub fn reap(&self) {
        let mut pools = self.pools.borrow_mut();
        for pool in pools.values() {
            pool.idle.borrow_mut().retain(|i| i.since.elapsed() < pool.idle_timeout && !i.sender.is_closed());
            let dead = pool.h2.borrow().as_ref().is_some_and(|c| c.sender.is_closed());
            if dead {
                pool.h2.borrow_mut().take();
            }
        }
        pools.retain(|_, p| Rc::strong_count(p) > 1 || !p.idle.borrow().is_empty() || p.h2.borrow().is_some());
    }

    pub fn idle_connections(&self) -> usize {
        self.pools.borrow().values().map(|p| p.idle.borrow().len()).sum()
    }
}

impl EndpointPool {
    fn new(leg: Leg, idle_timeout: Duration, dialer: Rc<Dialer>) -> Self {
        EndpointPool {
            leg: RefCell::new(leg),
            dialer,
            idle_timeout,
            h2_connected: Notify::new(),
            idle: RefCell::new(Vec::new()),
            h2: RefCell::new(None),
            released: Notify::new(),
            connecting_h2: Cell::new(false),
        }
    }

    fn retarget(&self, leg: Leg) {
        *self.leg.borrow_mut() = leg;
    }

    async fn checkout_h1(self: &Rc<Self>, cluster: &Arc<ClusterState>) -> Result<PooledH1, PoolError> {
        let idle_timeout = self.idle_timeout;
        let mut pending: Option<Slot> = None;
        loop {
            // Most recently used first: it is the most likely to still be open.
            loop {
                // Take it out first: the borrow must not live across the await below.
                let next = self.idle.borrow_mut().pop();
                let Some(mut idle) = next else { break };
                if idle.sender.is_closed() || idle.since.elapsed() >= idle_timeout {
                    continue;
                }
                if idle.sender.ready().await.is_err() {
                    continue;
                }
                return Ok(PooledH1 {
                    sender: Some(idle.sender),
                    requests: idle.requests + 1,
                    slot: Some(idle._slot),
                    pool: Rc::downgrade(self),
                    max_requests: cluster.config.max_requests_per_connection,
                    broken: false,
                });
            }
            if let Some(slot) = cluster.try_start_connection() {
                drop(pending);
                // Boxed: connecting is the rare path, and its future is large.
                let sender = Box::pin(self.connect_h1(cluster)).await?;
                cluster.stats.cx_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(PooledH1 {
                    sender: Some(sender),
                    requests: 1,
                    slot: Some(slot),
                    pool: Rc::downgrade(self),
                    max_requests: cluster.config.max_requests_per_connection,
                    broken: false,
                });
            }
            // At max_connections: wait for a released connection as a pending request.
            if pending.is_none() {
                cluster.stats.cx_overflow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match cluster.try_start_pending() {
                    Some(slot) => pending = Some(slot),
                    None => {
                        cluster.stats.rq_pending_overflow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Err(PoolError::Overflow);
                    }
                }
            }
            // Released connections of other pools free slots too; poll now and then.
            let _ = tokio::time::timeout(Duration::from_millis(50), self.released.notified()).await;
        }
    }

    async fn connect_h1(&self, cluster: &ClusterState) -> Result<http1::SendRequest<ReqBody>, PoolError> {
        let leg = self.leg.borrow().clone();
        let io = self.dialer.dial(&leg, cluster).await?;
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(PoolError::Handshake)?;
        let addr = leg.endpoint();
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, "upstream HTTP/1 connection ended: {e}");
            }
        });
        Ok(sender)
    }

    async fn checkout_h2(self: &Rc<Self>, cluster: &Arc<ClusterState>) -> Result<http2::SendRequest<ReqBody>, PoolError> {
        loop {
            let current = self.h2.borrow().clone();
            if let Some(conn) = current {
                let exhausted = cluster.config.max_requests_per_connection.is_some_and(|m| conn.requests.get() >= m);
                if !conn.sender.is_closed() && !exhausted {
                    let mut sender = conn.sender.clone();
                    if sender.ready().await.is_ok() {
                        conn.requests.set(conn.requests.get() + 1);
                        return Ok(sender);
                    }
                }
                // Closed or used up: new requests go to a new connection; streams on it finish.
                self.h2.borrow_mut().take();
            }
            if self.connecting_h2.get() {
                // Another request is connecting: share its connection.
                self.h2_connected.notified().await;
                continue;
            }
            let Some(slot) = cluster.try_start_connection() else {
                cluster.stats.cx_overflow.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(PoolError::Overflow);
            };
            self.connecting_h2.set(true);
            let result = Box::pin(self.connect_h2(cluster)).await;
            self.connecting_h2.set(false);
            self.h2_connected.notify_waiters();
            let sender = result?;
            cluster.stats.cx_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *self.h2.borrow_mut() = Some(H2Conn { sender, requests: Rc::new(Cell::new(0)), _slot: Rc::new(slot) });
        }
    }

    async fn connect_h2(&self, cluster: &ClusterState) -> Result<http2::SendRequest<ReqBody>, PoolError> {
        let leg = self.leg.borrow().clone();
        let io = self.dialer.dial(&leg, cluster).await?;
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(60))
            .handshake(TokioIo::new(io))
            .await
            .map_err(PoolError::Handshake)?;
        let addr = leg.endpoint();
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, "upstream HTTP/2 connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

impl Dialer {
    /// A connection over `leg` within the cluster's connect timeout: TCP marked with
    /// `mark` (SO_MARK) when given, or a stream through the pooled HBONE tunnel.
    async fn dial(&self, leg: &Leg, cluster: &ClusterState) -> Result<UpstreamIo, PoolError> {
        let timeout = cluster.config.connect_timeout;
        let attempt = async {
            match (leg, &self.mesh) {
                (Leg::Plain(addr), _) => connect_marked(*addr, self.mark).await.map(UpstreamIo::Tcp).map_err(PoolError::Connect),
                (Leg::Hbone { tunnel, source }, Some(mesh)) => {
                    mesh.outbound.connect(tunnel, *source, None).await.map(UpstreamIo::Hbone).map_err(PoolError::Tunnel)
                }
                (Leg::Hbone { tunnel, .. }, None) => {
                    Err(PoolError::Connect(io::Error::other(format!("HBONE to {} without the mesh configured", tunnel.gateway))))
                }
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                cluster.stats.cx_connect_fail.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(e)
            }
            Err(_) => {
                cluster.stats.cx_connect_timeout.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(PoolError::ConnectTimeout(timeout))
            }
        }
    }
}

/// A TCP connection to `addr` carrying `mark` (SO_MARK) when given, with TCP_NODELAY:
/// every leg the proxy dials (cluster endpoints, HBONE peers, the workloads behind the
/// HBONE listener), so that none of them is redirected back to the proxy.
pub async fn connect_marked(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(mark) = mark {
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    let s = socket.connect(addr).await?;
    let _ = s.set_nodelay(true);
    Ok(s)
}
