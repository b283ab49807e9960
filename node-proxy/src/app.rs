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
use crate::listener::{self, ListenerManager, Options};
use crate::logging::LogControl;
use crate::mesh::{Mesh, MeshError, MeshSettings};
use crate::redirect::{Redirect, RedirectSettings};
use crate::runtime::{Shared, Worker};
use crate::snapshot::{Live, Snapshot};
use crate::telemetry::metrics::Metrics;
use crate::xds::workload::{LiveWorkloads, WorkloadXds};
use crate::xds::{Xds, XdsSettings};

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
    /// Take listeners, routes, clusters and endpoints from istiod (added to `config`'s
    /// static resources when both are given).
    pub xds: Option<XdsSettings>,
    /// Redirect pods' connections that need the proxy to it.
    pub redirect: Option<RedirectSettings>,
    /// Workload certificates, HBONE in and out (absent: plain TCP upstream, no :15008).
    pub mesh: Option<MeshSettings>,
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
    #[error(transparent)]
    Redirect(#[from] crate::redirect::RedirectError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

/// Runs the proxy until it is told to stop. Returns once drained.
pub fn run(settings: Settings, logs: LogControl) -> Result<(), StartError> {
    let loaded = match (&settings.config, &settings.xds) {
        (Some(path), _) => config::load_file(path)?,
        // From istiod alone: nothing static.
        (None, Some(xds)) => {
            config::Loaded { model: Default::default(), source: config::ConfigSource { origin: format!("xDS {}", xds.address), ..Default::default() } }
        }
        (None, None) => config::load_default()?,
    };
    tracing::info!(
        origin = %loaded.source.origin,
        listeners = loaded.model.listeners.len(),
        routes = loaded.model.routes.len(),
        clusters = loaded.model.clusters.len(),
        unsupported = loaded.source.unsupported.len(),
        "configuration loaded"
    );
    // The Envoy descriptor pool (~17 MB) is only needed to read JSON/YAML: give it back.
    xds_client::protojson::release();
    return_free_memory();
    let static_model = loaded.model.clone();
    let source = Arc::new(loaded.source);
    let snapshot = Snapshot::build(loaded.model, source.clone(), None);
    for missing in snapshot.missing_routes() {
        tracing::warn!(route = %missing, "a listener references route configuration {missing}, which is not loaded: its requests get 404 NR");
    }
    let live = Arc::new(Live::new(snapshot));
    let workers = settings.workers.max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| tokio::sync::mpsc::unbounded_channel()).unzip();
    let mesh_inbound = settings.mesh.as_ref().is_some_and(|m| m.inbound_plaintext_address.is_some());
    let mut listeners = ListenerManager::new(senders, mesh_inbound);
    for l in live.load().listeners.values() {
        if listeners.binds(l) {
            listeners.activate(listener::bind(l, workers)?);
        }
    }

    // After the listeners are bound (the proxy's listening sockets are in its cgroup,
    // where the getsockopt hook answers), before anything is redirected to them.
    let redirect = settings.redirect.clone().map(Redirect::start).transpose()?;
    // STRICT PeerAuthentication in the kernel, for the pods the eBPF redirect serves.
    let strict_guard = match (&redirect, &settings.mesh) {
        (Some(r), Some(_)) if r.is_bpf() => Some(r.start_inbound_guard()?),
        _ => None,
    };
    let redirect = redirect.map(|r| Arc::new(std::sync::Mutex::new(r)));

    let control = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StartError::Runtime)?;
    let readiness = Arc::new(Readiness::default());
    let config_guard = readiness.guard("config");
    let workers_guard = readiness.guard("workers");
    let drain = Arc::new(Drain::default());
    let metrics = Arc::new(Metrics::new());
    let workloads = Arc::new(LiveWorkloads::default());
    let default_access_log = settings.access_log.clone().map(|(path, format)| Arc::new(AccessLog { path, format }));
    // Built on the control runtime: certificate renewals and the HBONE pool's sweeper run there.
    let mesh = match settings.mesh.clone() {
        Some(m) => {
            let telemetry = crate::hbone::inbound::Telemetry { metrics: metrics.clone(), access_log: default_access_log.clone() };
            Some(control.block_on(Mesh::new(m, workloads.clone(), settings.upstream_mark, Some(telemetry)))?)
        }
        None => None,
    };
    type MeshSockets = (std::net::TcpListener, Option<std::net::TcpListener>);
    let mut hbone_listeners: Vec<Option<MeshSockets>> = match &mesh {
        Some(m) => m.bind(workers)?.into_iter().map(Some).collect(),
        None => (0..workers).map(|_| None).collect(),
    };
    let shared = Arc::new(Shared {
        live: live.clone(),
        metrics: metrics.clone(),
        drain: drain.clone(),
        active_faults: AtomicU32::new(0),
        upstream_mark: settings.upstream_mark,
        workloads: workloads.clone(),
        mesh: mesh.clone(),
    });
    let workload_xds = settings.xds.as_ref().filter(|x| x.workload_api).map(|_| WorkloadXds::new(workloads.clone(), metrics.clone()));
    let workloads_guard = workload_xds.as_ref().map(|_| readiness.guard("workloads"));
    // With xDS, the listener manager belongs to the stream's state: it binds and stops
    // listeners as they come and go. Without, it holds the static listeners until exit.
    let (xds, xds_ready, static_listeners) = match &settings.xds {
        Some(x) => {
            let (xds, ready) = Xds::new(listeners, static_model, source, live.clone(), metrics.clone(), x.initial_fetch_timeout);
            (Some(xds), Some(ready), None)
        }
        None => (None, None, Some(listeners)),
    };
    let state = Arc::new(AdminState {
        live: live.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        drain: drain.clone(),
        logs: Arc::new(logs),
        xds: xds.clone(),
        workloads: workload_xds.clone(),
        redirect: redirect.clone(),
        mesh: mesh.clone(),
    });

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

    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let mut threads = Vec::new();
    for (id, commands) in receivers.into_iter().enumerate() {
        let shared = shared.clone();
        let default_access_log = default_access_log.clone();
        let started = started_tx.clone();
        let hbone = hbone_listeners.get_mut(id).and_then(Option::take).zip(mesh.clone());
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
                let _ = started.send(());
                let reaper = tokio::task::spawn_local(reap_idle(worker.clone()));
                if let Some(((socket, plaintext), mesh)) = hbone {
                    match tokio::net::TcpListener::from_std(socket) {
                        Ok(l) => drop(tokio::task::spawn_local(mesh.inbound.clone().run(l, shared.drain.clone(), Some(worker.clone())))),
                        Err(e) => tracing::error!("worker {id}: the HBONE listener: {e}"),
                    }
                    match plaintext.map(tokio::net::TcpListener::from_std).transpose() {
                        Ok(Some(l)) => drop(tokio::task::spawn_local(mesh.inbound.clone().run_plaintext(l, shared.drain.clone(), Some(worker.clone())))),
                        Ok(None) => {}
                        Err(e) => tracing::error!("worker {id}: the inbound plaintext listener: {e}"),
                    }
                }
                listener::serve_commands(worker.clone(), commands, options).await;
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

    // This thread (xDS, admin, DNS, outlier detection) works for the configuration, the
    // workers for requests: as SCHED_BATCH it never preempts a worker when it wakes (an
    // xDS push arriving), and runs when the workers wait, with its fair share intact.
    set_batch_scheduling();
    control.block_on(async move {
        for (l, port) in admin_listeners {
            tokio::spawn(admin::serve(l, port, state.clone()));
        }
        crate::control::resolve_all(&live).await;
        if let (Some(xds), Some(settings)) = (xds, &settings.xds) {
            tracing::info!(address = %settings.address, node = %xds_client::node::sidecar(&settings.identity).id, protocol = ?settings.protocol, "taking configuration from istiod");
            let stream = settings.envoy_stream();
            let stop = drain.clone();
            tokio::spawn(async move { xds.run(stream, async move { stop.signaled().await }).await });
            if let Some(w) = workload_xds {
                let stream = settings.workload_stream();
                let stop = drain.clone();
                tracing::info!(node = %xds_client::node::ztunnel(&settings.identity).id, "taking Istio's workload API from istiod");
                // Ready once the node's workloads and policies are known (or the initial
                // fetch timeout passed), as ztunnel.
                let (mut synced, timeout) = (w.synced(), settings.initial_fetch_timeout);
                tokio::spawn(async move {
                    if tokio::time::timeout(timeout, synced.wait_for(|s| *s)).await.is_err() {
                        tracing::warn!(?timeout, "istiod sent no workloads or authorization policies within the initial fetch timeout: ready without them");
                    }
                    drop(workloads_guard);
                });
                tokio::spawn(async move { w.run(stream, async move { stop.signaled().await }).await });
            }
        }
        // Ready once istiod's first listeners and clusters are live (or the initial
        // fetch timeout passed), as Envoy's init manager.
        tokio::spawn(async move {
            if let Some(mut ready) = xds_ready {
                let _ = ready.wait_for(|r| *r).await;
            }
            drop(config_guard);
            tracing::info!("ready");
        });
        tokio::spawn(crate::control::run(live.clone()));
        if let Some(m) = mesh {
            tracing::info!(node = %m.node, network = %m.network, "acting for this node's workloads: certificates, HBONE on :15008");
            tokio::spawn(m.follow(drain.clone(), strict_guard));
        }
        if let Some(r) = redirect {
            // From readiness on (configuration and workloads loaded): until then a
            // restarted proxy keeps the set its predecessor left pinned.
            let readiness = readiness.clone();
            tokio::spawn(crate::redirect::run(r, live.clone(), workloads.clone(), async move { readiness.wait().await }));
        }
        wait_for_shutdown(&drain).await;
        tracing::info!(open_connections = drain.open_connections(), timeout = ?settings.drain_timeout, "draining");
        drain.start();
        let left = drain.wait_closed(settings.drain_timeout).await;
        if left > 0 {
            tracing::warn!(open_connections = left, "drain timeout: closing remaining connections");
        }
        drop(static_listeners);
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

/// Makes the calling thread SCHED_BATCH (same nice value, no wakeup preemption).
fn set_batch_scheduling() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on this thread (0) with a valid, initialised parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        tracing::debug!("control thread stays SCHED_OTHER: {}", std::io::Error::last_os_error());
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
