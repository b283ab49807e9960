//! Upstream HTTP connection pools, one set per worker thread (as in Envoy): HTTP/1.1
//! keep-alive connections reused one request at a time, HTTP/2 connections shared by
//! many streams. Honours `max_requests_per_connection`, the idle timeout, the
//! connect timeout and the cluster's `max_connections` / `max_pending_requests`
//! circuit breakers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::cluster::{ClusterState, Slot};
use crate::http::body::ReqBody;
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
}

/// Pools of this worker, keyed by endpoint and protocol.
#[derive(Default)]
pub struct Pools {
    pools: RefCell<HashMap<(SocketAddr, Protocol), Rc<EndpointPool>>>,
    /// SO_MARK for upstream sockets (so redirect rules can skip the proxy's own traffic).
    mark: Option<u32>,
}

struct EndpointPool {
    addr: SocketAddr,
    mark: Option<u32>,
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
    pub fn new(mark: Option<u32>) -> Self {
        Pools { pools: RefCell::default(), mark }
    }

    /// A connection to `addr` for one request of `cluster`.
    pub async fn checkout(&self, cluster: &Arc<ClusterState>, addr: SocketAddr, protocol: Protocol) -> Result<Checkout, PoolError> {
        let idle_timeout = cluster.config.idle_timeout.unwrap_or(Duration::MAX);
        let pool = self.pools.borrow_mut().entry((addr, protocol)).or_insert_with(|| Rc::new(EndpointPool::new(addr, idle_timeout, self.mark))).clone();
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
    fn new(addr: SocketAddr, idle_timeout: Duration, mark: Option<u32>) -> Self {
        EndpointPool {
            addr,
            mark,
            idle_timeout,
            h2_connected: Notify::new(),
            idle: RefCell::new(Vec::new()),
            h2: RefCell::new(None),
            released: Notify::new(),
            connecting_h2: Cell::new(false),
        }
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
        let io = connect(self.addr, cluster, self.mark).await?;
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(PoolError::Handshake)?;
        let addr = self.addr;
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
        let io = connect(self.addr, cluster, self.mark).await?;
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(60))
            .handshake(TokioIo::new(io))
            .await
            .map_err(PoolError::Handshake)?;
        let addr = self.addr;
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %addr, "upstream HTTP/2 connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// A TCP connection to `addr` within the cluster's connect timeout, marked with
/// `mark` (SO_MARK) when given.
pub async fn connect(addr: SocketAddr, cluster: &ClusterState, mark: Option<u32>) -> Result<TcpStream, PoolError> {
    let timeout = cluster.config.connect_timeout;
    match tokio::time::timeout(timeout, connect_marked(addr, mark)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            cluster.stats.cx_connect_fail.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(PoolError::Connect(e))
        }
        Err(_) => {
            cluster.stats.cx_connect_timeout.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(PoolError::ConnectTimeout(timeout))
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
