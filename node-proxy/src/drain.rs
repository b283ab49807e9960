//! Graceful shutdown: a drain signal that listeners and connections watch, and a
//! count of open downstream connections to wait on.
//!
//! On SIGTERM: stop accepting, ask HTTP/2 clients to go away (GOAWAY) and HTTP/1
//! clients to close after their current request, let in-flight requests finish up to
//! the drain timeout, then exit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

pub struct Drain {
    signal: watch::Sender<bool>,
    open: AtomicUsize,
    closed: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { signal: watch::channel(false).0, open: AtomicUsize::new(0), closed: Notify::new() }
    }
}

impl Drain {
    /// Starts draining.
    pub fn start(&self) {
        self.signal.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves when draining starts.
    pub async fn signaled(&self) {
        let mut rx = self.signal.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Counts a downstream connection until the guard drops.
    pub fn track(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard(self.clone())
    }

    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until every connection has closed or `timeout` passes; returns how many are left.
    pub async fn wait_closed(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.closed.notified();
            let open = self.open_connections();
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.open_connections();
            }
        }
    }
}

pub struct ConnectionGuard(Arc<Drain>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}
