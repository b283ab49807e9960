//! Wiring: load the configuration, bind every port, start the workers and the
//! control thread, wait for SIGTERM/SIGINT, drain, exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use istio_compat::model::listener::{AccessLog, AccessLogFormat};

use crate::admin::{self, AdminState, Port, Readiness};
use crate::config;
use crate::drain::Drain;
use crate::listener::{self, Options};
use crate::logging::LogControl;
use crate::runtime::{Shared, Worker};
use crate::snapshot::{Live, Snapshot};
use crate::telemetry::metrics::Metrics;

/// Everything `node-proxy run` needs to know.
#[derive(Clone, Debug)]
pub struct Settings {
    pub config: Option<PathBuf>,
    pub workers: usize,
    pub admin_address: SocketAddr,
    pub metrics_address: Option<SocketAddr>,
    pub readiness_address: Option<SocketAddr>,
    pub drain_timeout: Duration,
    /// Access log for listeners whose configuration names none.
    pub access_log: Option<(String, AccessLogFormat)>,
    /// SO_MARK for upstream connections.
    pub upstream_mark: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error("cannot bind the {what} port {address}: {source}")]
    AdminBind { what: &'static str, address: SocketAddr, source: std::io::Error },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// Runs the proxy until it is told to stop. Returns once drained.
pub fn run(settings: Settings, logs: LogControl) -> Result<(), StartError> {
    let loaded = match &settings.config {
        Some(path) => config::load_file(path)?,
        None => config::load_default()?,
    };
    tracing::info!(
        origin = %loaded.source.origin,
        listeners = loaded.model.listeners.len(),
        routes = loaded.model.routes.len(),
        clusters = loaded.model.clusters.len(),
        unsupported = loaded.source.unsupported.len(),
        "configuration loaded"
    );
    // The Envoy descriptor pool (~30 MB) is only needed to read JSON/YAML: give it back.
    xds_client::protojson::release();
    return_free_memory();
    let snapshot = Snapshot::build(loaded.model, Arc::new(loaded.source), None);
    for missing in snapshot.missing_routes() {
        tracing::warn!(route = %missing, "a listener references route configuration {missing}, which is not loaded: its requests get 404 NR");
    }
    let listeners: Vec<_> = snapshot.listeners.values().cloned().collect();
    let live = Arc::new(Live::new(snapshot));
    let workers = settings.workers.max(1);
    let bound = listener::bind_all(&listeners, workers)?;
    for b in &bound {
        tracing::info!(listener = %b.name, address = %b.address, workers, "listening");
    }

    let control = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StartError::Runtime)?;
    let readiness = Arc::new(Readiness::default());
    let config_guard = readiness.guard("config");
    let workers_guard = readiness.guard("workers");
    let drain = Arc::new(Drain::default());
    let shared = Arc::new(Shared {
        live: live.clone(),
        metrics: Arc::new(Metrics::new()),
        drain: drain.clone(),
        active_faults: AtomicU32::new(0),
        upstream_mark: settings.upstream_mark,
    });
    let state =
        Arc::new(AdminState { live: live.clone(), metrics: shared.metrics.clone(), readiness: readiness.clone(), drain: drain.clone(), logs: Arc::new(logs) });

    let ports = [
        (Some(settings.admin_address), Port::Admin, "admin"),
        (settings.metrics_address, Port::Prometheus, "Prometheus"),
        (settings.readiness_address, Port::Readiness, "readiness"),
    ];
    let mut admin_listeners = Vec::new();
    {
        let _enter = control.enter();
        for (address, port, what) in ports {
            let Some(address) = address else { continue };
            let l = admin::bind(address).map_err(|source| StartError::AdminBind { what, address, source })?;
            tracing::info!(%address, "{what} port listening");
            admin_listeners.push((l, port));
        }
    }

    // Workers: each takes its socket of every listener.
    let mut per_worker: Vec<Vec<(istio_compat::model::Name, std::net::TcpListener)>> = (0..workers).map(|_| Vec::new()).collect();
    for b in bound {
        for (i, socket) in b.sockets.into_iter().enumerate() {
            per_worker[i].push((b.name.clone(), socket));
        }
    }
    let default_access_log = settings.access_log.clone().map(|(path, format)| Arc::new(AccessLog { path, format }));
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let mut threads = Vec::new();
    for (id, sockets) in per_worker.into_iter().enumerate() {
        let shared = shared.clone();
        let default_access_log = default_access_log.clone();
        let started = started_tx.clone();
        let thread = std::thread::Builder::new().name(format!("worker-{id}")).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("worker {id}: cannot start its runtime: {e}");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let worker = Worker::new(id, shared.clone());
                let options = Rc::new(Options { default_access_log });
                let mut accepts = Vec::new();
                for (name, socket) in sockets {
                    accepts.push(tokio::task::spawn_local(listener::accept_loop(worker.clone(), name, socket, options.clone())));
                }
                let _ = started.send(());
                let reaper = tokio::task::spawn_local(reap_idle(worker.clone()));
                for a in accepts {
                    let _ = a.await;
                }
                // Draining: in-flight connections finish on this thread.
                shared.drain.wait_closed(Duration::from_secs(3600)).await;
                reaper.abort();
            });
        });
        match thread {
            Ok(t) => threads.push(t),
            Err(e) => return Err(StartError::Runtime(e)),
        }
    }
    drop(started_tx);
    for _ in 0..workers {
        let _ = started_rx.recv();
    }
    drop(workers_guard);

    control.block_on(async move {
        for (l, port) in admin_listeners {
            tokio::spawn(admin::serve(l, port, state.clone()));
        }
        crate::control::resolve_all(&live).await;
        drop(config_guard);
        tokio::spawn(crate::control::run(live.clone()));
        tracing::info!("ready");
        wait_for_shutdown(&drain).await;
        tracing::info!(open_connections = drain.open_connections(), timeout = ?settings.drain_timeout, "draining");
        drain.start();
        let left = drain.wait_closed(settings.drain_timeout).await;
        if left > 0 {
            tracing::warn!(open_connections = left, "drain timeout: closing remaining connections");
        }
    });
    // Workers still busy after the drain timeout are abandoned with the process.
    drop(threads);
    tracing::info!("exiting");
    Ok(())
}

/// Resolves on SIGTERM, SIGINT, or `/quitquitquit` (which starts the drain itself).
async fn wait_for_shutdown(drain: &Drain) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop with /quitquitquit");
            drain.signaled().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = drain.signaled() => tracing::info!("drain requested through the admin port"),
    }
}

/// Closes idle upstream connections past their cluster's idle timeout.
async fn reap_idle(worker: Rc<Worker>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        worker.pools.reap();
    }
}

/// Hands freed memory back to the OS (after start-up's large, short-lived allocations).
pub fn return_free_memory() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect only walks the allocator's own free lists.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
