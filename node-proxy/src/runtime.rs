//! Worker threads, as in Envoy: each runs a single-threaded tokio runtime with its
//! own accept loops (SO_REUSEPORT sockets) and its own upstream connection pools, so
//! the request path takes no locks. What workers share (the live snapshot, cluster
//! state, metrics, the drain signal) is in [`Shared`].

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use crate::drain::Drain;
use crate::snapshot::Live;
use crate::telemetry::metrics::Metrics;
use crate::upstream::pool::Pools;

/// State shared by every worker and the control thread.
pub struct Shared {
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    pub drain: Arc<Drain>,
    /// Requests currently delayed or aborted by fault injection (`max_active_faults`).
    pub active_faults: AtomicU32,
}

/// One worker's state.
pub struct Worker {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pools: Pools,
}

impl Worker {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Self> {
        Rc::new(Worker { id, shared, pools: Pools::default() })
    }
}

/// hyper's executor for a worker: tasks stay on the worker's thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
