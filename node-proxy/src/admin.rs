//! The admin and observability ports, on the control thread:
//!
//! - admin (127.0.0.1:15000): `/ready`, `/config_dump` (Envoy's admin ConfigDump
//!   JSON of what is loaded; `?format=model` prints the mesh model instead),
//!   `/stats/prometheus`, `/logging?level=`, `/quitquitquit`.
//! - Prometheus (:15020): `/stats/prometheus`.
//! - readiness (:15021): `/healthz/ready`, 200 only when every start-up task is done.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prost::Message;
use xds_client::pb::envoy::admin::v3 as admin;
use xds_client::pb::google::protobuf::{Any, Timestamp};

use istio_compat::translate::DumpEntry;

use crate::drain::Drain;
use crate::logging::LogControl;
use crate::snapshot::{Live, Snapshot};
use crate::telemetry::metrics::Metrics;
use crate::xds::workload::WorkloadXds;
use crate::xds::Xds;

/// Readiness as drop guards: ready when every guard has been dropped.
pub struct Readiness {
    pending: Mutex<BTreeSet<String>>,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness { pending: Mutex::default(), ready: tokio::sync::watch::channel(false).0 }
    }
}

pub struct ReadyGuard {
    readiness: Arc<Readiness>,
    name: String,
}

impl Readiness {
    pub fn guard(self: &Arc<Self>, name: &str) -> ReadyGuard {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(name.to_owned());
        }
        ReadyGuard { readiness: self.clone(), name: name.to_owned() }
    }

    /// Resolves once every guard has been dropped (guards are all taken at start-up).
    pub async fn wait(&self) {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// `Ok` when ready, else what is still pending.
    pub fn status(&self) -> Result<(), Vec<String>> {
        let pending: Vec<String> = self.pending.lock().map(|p| p.iter().cloned().collect()).unwrap_or_default();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending)
        }
    }
}

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        if let Ok(mut p) = self.readiness.pending.lock() {
            p.remove(&self.name);
            if p.is_empty() {
                self.readiness.ready.send_replace(true);
            }
        }
    }
}

/// What the admin endpoints read.
pub struct AdminState {
    pub live: Arc<Live>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub drain: Arc<Drain>,
    pub logs: Arc<LogControl>,
    /// The xDS state, when configuration comes from istiod.
    pub xds: Option<Xds>,
    /// The workload API stream's state, when it runs.
    pub workloads: Option<WorkloadXds>,
    /// The redirect of pods' connections, when it runs.
    pub redirect: Option<crate::redirect::Shared>,
    /// Certificates and HBONE, when the proxy takes part in the mesh.
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Admin,
    Prometheus,
    Readiness,
}

/// Serves one of the ports until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, port: Port, state: Arc<AdminState>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(port, &state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

pub fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let std = crate::listener::bind_reuseport(address)?;
    tokio::net::TcpListener::from_std(std)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

fn route(port: Port, state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    match (port, path) {
        (_, "/stats/prometheus") if port != Port::Readiness => {
            let mut r = text(StatusCode::OK, state.metrics.encode(&state.live.load()));
            r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            r
        }
        (Port::Readiness, "/healthz/ready") | (Port::Admin, "/ready") => {
            if state.drain.is_draining() {
                return text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n");
            }
            match state.readiness.status() {
                Ok(()) => text(StatusCode::OK, if port == Port::Admin { "LIVE\n" } else { "" }),
                Err(pending) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", pending.join(", "))),
            }
        }
        (Port::Admin, "/config_dump") => {
            let snapshot = state.live.load();
            if query_param(&req, "format") == Some("model") {
                return match serde_json::to_string_pretty(&snapshot.model()) {
                    Ok(s) => json(s),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                };
            }
            let dump = config_dump(&snapshot, state.xds.as_ref(), query_param(&req, "include_eds").is_some());
            // The descriptor pool was only built for this dump: drop it again.
            xds_client::protojson::release();
            crate::app::return_free_memory();
            match dump {
                Ok(v) => json(serde_json::to_string_pretty(&v).unwrap_or_default()),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        (Port::Admin, "/workloads") => match &state.workloads {
            Some(w) => json(serde_json::to_string_pretty(&w.dump()).unwrap_or_default()),
            None => text(StatusCode::NOT_FOUND, "the workload API stream is not running (start with --xds-address)\n"),
        },
        (Port::Admin, "/redirect") => match &state.redirect {
            Some(r) => json(serde_json::to_string_pretty(&r.lock().unwrap_or_else(|p| p.into_inner()).status()).unwrap_or_default()),
            None => text(StatusCode::NOT_FOUND, "pods' connections are not redirected to this proxy (start with --redirect)\n"),
        },
        (Port::Admin, "/mesh") => match &state.mesh {
            Some(m) => json(serde_json::to_string_pretty(&m.status()).unwrap_or_default()),
            None => text(StatusCode::NOT_FOUND, "mTLS is off (--hbone-address off)\n"),
        },
        (Port::Admin, "/logging") => {
            if let Some(level) = query_param(&req, "level") {
                if req.method() != Method::POST {
                    return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /logging?level=LEVEL\n");
                }
                return match state.logs.set_level(level) {
                    Ok(()) => text(StatusCode::OK, format!("active level: {level}\n")),
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                };
            }
            text(StatusCode::OK, format!("active level: {}\n", state.logs.level()))
        }
        (Port::Admin, "/quitquitquit") if req.method() == Method::POST => {
            state.drain.start();
            text(StatusCode::OK, "OK\n")
        }
        (Port::Admin, "/") => text(
            StatusCode::OK,
            "node-proxy admin: /ready /config_dump[?format=model|include_eds] /workloads /redirect /mesh /stats/prometheus /logging[?level=] /quitquitquit\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn timestamp(t: std::time::SystemTime) -> Timestamp {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn any<T: Message + prost::Name>(m: &T) -> Any {
    Any { type_url: T::type_url(), value: m.encode_to_vec() }
}

/// The resources of the static configuration, as `Any`s for a config dump.
#[derive(Default)]
struct Statics {
    listeners: Vec<Any>,
    clusters: Vec<Any>,
    routes: Vec<Any>,
}

impl Statics {
    /// Every resource a config dump file holds, as its loader read them (static or, when
    /// the dump was taken, dynamic: loaded from a file, they are all static here).
    fn of_dump(dump: &admin::ConfigDump) -> Statics {
        let mut s = Statics::default();
        for entry in dump.configs.iter().filter_map(|c| DumpEntry::decode(c).ok()) {
            match entry {
                DumpEntry::Listeners(l) => s.listeners.extend(l),
                DumpEntry::Clusters(c) => s.clusters.extend(c),
                DumpEntry::Routes(r) => s.routes.extend(r),
                DumpEntry::Bootstrap(_) | DumpEntry::Endpoints(_) | DumpEntry::Other(_) => {}
            }
        }
        s
    }
}

/// Envoy's admin `ConfigDump`: the static configuration and, with xDS, every dynamic
/// resource with its version, last update and rejection (endpoints with `include_eds`,
/// as Envoy).
fn config_dump(snapshot: &Snapshot, xds: Option<&Xds>, include_eds: bool) -> Result<serde_json::Value, xds_client::protojson::JsonError> {
    let source = &snapshot.source;
    if let (Some(dump), None) = (&source.dump, xds) {
        return xds_client::protojson::to_json(dump);
    }
    let last_updated = Some(timestamp(snapshot.loaded_at));
    let mut configs = Vec::new();
    if let Some(b) = &source.bootstrap {
        configs.push(any(&admin::BootstrapConfigDump { bootstrap: Some(b.clone()), last_updated }));
    }
    let statics = match (&source.bootstrap, &source.dump) {
        (Some(b), _) => {
            let sr = b.static_resources.clone().unwrap_or_default();
            Statics { listeners: sr.listeners.iter().map(any).collect(), clusters: sr.clusters.iter().map(any).collect(), routes: Vec::new() }
        }
        (None, Some(dump)) => Statics::of_dump(dump),
        (None, None) => Statics::default(),
    };
    let mut listeners = admin::ListenersConfigDump {
        static_listeners: statics.listeners.into_iter().map(|l| admin::listeners_config_dump::StaticListener { listener: Some(l), last_updated }).collect(),
        ..Default::default()
    };
    let mut clusters = admin::ClustersConfigDump {
        static_clusters: statics.clusters.into_iter().map(|c| admin::clusters_config_dump::StaticCluster { cluster: Some(c), last_updated }).collect(),
        ..Default::default()
    };
    match xds.map(Xds::dump) {
        Some(mut d) => {
            clusters.version_info = d.clusters.version_info;
            clusters.dynamic_active_clusters = d.clusters.dynamic_active_clusters;
            clusters.dynamic_warming_clusters = d.clusters.dynamic_warming_clusters;
            listeners.version_info = d.listeners.version_info;
            listeners.dynamic_listeners = d.listeners.dynamic_listeners;
            d.routes.static_route_configs =
                statics.routes.into_iter().map(|r| admin::routes_config_dump::StaticRouteConfig { route_config: Some(r), last_updated }).collect();
            configs.push(any(&clusters));
            if include_eds {
                configs.push(any(&d.endpoints));
            }
            configs.push(any(&listeners));
            configs.push(any(&d.routes));
        }
        None if source.bootstrap.is_some() => {
            configs.push(any(&listeners));
            configs.push(any(&clusters));
        }
        None => {}
    }
    xds_client::protojson::to_json(&admin::ConfigDump { configs })
}
