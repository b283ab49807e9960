//! A test ADS server (tonic, envoy-types' server trait): serves resources the test
//! puts in it, or those of a real istiod config dump from the shared corpus, over
//! state-of-the-world and Delta streams, and records every request the client sends
//! (versions, nonces, NACK details, subscriptions) for the test to assert on.
//!
//! It behaves as istiod does where it matters to a client: a response per type on
//! subscription and on every change, a fresh nonce per response, Delta sends only what
//! differs from what the client said it holds, and a stream can be closed on command
//! (routine close or error) to exercise reconnects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use xds_client::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer};
use xds_client::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource};
use xds_client::pb::google::protobuf::Any;

/// An Envoy resource given as canonical protojson (e.g. from the [`crate::config`]
/// builders), encoded as the `Any` istiod would send.
pub fn any_from_json<M: prost::Message + Default + prost::Name>(value: serde_json::Value) -> Any {
    let decoded = xds_client::protojson::from_json::<M>(value).unwrap_or_else(|e| panic!("test resource is not a valid {}: {e}", M::full_name()));
    Any { type_url: M::type_url(), value: decoded.message.encode_to_vec() }
}

/// Every dynamic (and static) listener, route configuration, cluster and endpoint
/// assignment of an Envoy admin config dump (istiod's output as a proxy holds it),
/// as `(type URL, name, resource)` for [`AdsServer::set_all`].
pub fn resources_of_config_dump(path: &std::path::Path) -> Vec<(String, String, Any)> {
    use xds_client::pb::envoy::admin::v3 as admin;
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let value = xds_client::protojson::parse_yaml_or_json(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dump = xds_client::protojson::from_json::<admin::ConfigDump>(value).unwrap_or_else(|e| panic!("{}: {e}", path.display())).message;
    let mut out = Vec::new();
    let mut push = |type_url: &str, name: String, any: Option<Any>| {
        if let Some(any) = any {
            out.push((type_url.to_owned(), name, any));
        }
    };
    for config in &dump.configs {
        let name = xds_client::protojson::type_name(&config.type_url);
        let bytes = config.value.as_slice();
        match name {
            "envoy.admin.v3.ListenersConfigDump" => {
                let d = admin::ListenersConfigDump::decode(bytes).expect("ListenersConfigDump");
                for l in d.dynamic_listeners {
                    push(xds_client::type_url::LISTENER, l.name, l.active_state.and_then(|s| s.listener));
                }
            }
            "envoy.admin.v3.ClustersConfigDump" => {
                let d = admin::ClustersConfigDump::decode(bytes).expect("ClustersConfigDump");
                for c in d.dynamic_active_clusters {
                    let name = c.cluster.as_ref().map(resource_name::<xds_client::pb::envoy::config::cluster::v3::Cluster>).unwrap_or_default();
                    push(xds_client::type_url::CLUSTER, name, c.cluster);
                }
            }
            "envoy.admin.v3.RoutesConfigDump" => {
                let d = admin::RoutesConfigDump::decode(bytes).expect("RoutesConfigDump");
                for r in d.dynamic_route_configs {
                    let name = r.route_config.as_ref().map(resource_name::<xds_client::pb::envoy::config::route::v3::RouteConfiguration>).unwrap_or_default();
                    push(xds_client::type_url::ROUTE_CONFIGURATION, name, r.route_config);
                }
            }
            "envoy.admin.v3.EndpointsConfigDump" => {
                let d = admin::EndpointsConfigDump::decode(bytes).expect("EndpointsConfigDump");
                for e in d.dynamic_endpoint_configs {
                    let name =
                        e.endpoint_config.as_ref().map(resource_name::<xds_client::pb::envoy::config::endpoint::v3::ClusterLoadAssignment>).unwrap_or_default();
                    push(xds_client::type_url::CLUSTER_LOAD_ASSIGNMENT, name, e.endpoint_config);
                }
            }
            _ => {}
        }
    }
    out
}

/// The `name` (or `cluster_name`) field of an encoded resource.
fn resource_name<M: prost::Message + Default + NamedResource>(any: &Any) -> String {
    M::decode(any.value.as_slice()).map(|m| m.resource_name()).unwrap_or_default()
}

trait NamedResource {
    fn resource_name(&self) -> String;
}

impl NamedResource for xds_client::pb::envoy::config::cluster::v3::Cluster {
    fn resource_name(&self) -> String {
        self.name.clone()
    }
}

impl NamedResource for xds_client::pb::envoy::config::route::v3::RouteConfiguration {
    fn resource_name(&self) -> String {
        self.name.clone()
    }
}

impl NamedResource for xds_client::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
    fn resource_name(&self) -> String {
        self.cluster_name.clone()
    }
}

/// A resource's version, as istiod makes it: a hash of its content, so a restarted
/// server gives an unchanged resource the same version and a changed one another.
fn content_version(body: &Any) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.type_url.hash(&mut h);
    body.value.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A request the client sent, as the test sees it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub delta: bool,
    pub type_url: String,
    pub version_info: String,
    pub response_nonce: String,
    pub resource_names: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_versions: HashMap<String, String>,
    /// The NACK message, if this request was a NACK.
    pub error: Option<String>,
    pub node_id: Option<String>,
}

#[derive(Default)]
struct Store {
    /// type URL -> name -> (version, body)
    resources: BTreeMap<String, BTreeMap<String, (String, Any)>>,
    /// (type URL, name) of every change, in order: a Delta stream looks at what changed
    /// since it last looked, so a push of 50 resources among 10,000 costs the server
    /// (which shares a CPU with the load generator in benches) what changed, as istiod.
    changes: Vec<(String, String)>,
}

impl Store {
    fn put(&mut self, type_url: String, name: String, body: Any) {
        let version = content_version(&body);
        self.changes.push((type_url.clone(), name.clone()));
        self.resources.entry(type_url).or_default().insert(name, (version, body));
    }
}

struct Shared {
    store: Mutex<Store>,
    /// Bumped on every change: streams re-send what changed.
    generation: watch::Sender<u64>,
    nonce: AtomicU64,
    requests: Mutex<Vec<Recorded>>,
    /// Streams to close: the status each open stream ends with on the next close command.
    close: watch::Sender<Option<Status>>,
    streams_opened: AtomicU64,
    /// The `authorization` and `clusterid` headers of each stream opened.
    stream_headers: Mutex<Vec<StreamHeaders>>,
    /// Set when the server stops: new streams are refused.
    stopping: std::sync::atomic::AtomicBool,
}

/// What a client sent in the headers of a stream (istiod authenticates with these).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeaders {
    pub authorization: Option<String>,
    pub cluster_id: Option<String>,
}

impl StreamHeaders {
    fn of(metadata: &tonic::metadata::MetadataMap) -> Self {
        let get = |k: &str| metadata.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        StreamHeaders { authorization: get("authorization"), cluster_id: get("clusterid") }
    }
}

/// A server certificate and key (PEM) for [`AdsServer::start_tls`].
pub struct TlsIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The running server; stops with the value.
pub struct AdsServer {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdsServer {
    /// Starts on 127.0.0.1 (an ephemeral port, or `port` when given).
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, None)
    }

    /// Starts on an ephemeral port of 127.0.0.1, serving TLS with `identity` as
    /// istiod serves :15012; [`url`](Self::url) is then `https://…`.
    pub fn start_tls(identity: TlsIdentity) -> Self {
        Self::start_with(0, Some(identity))
    }

    fn start_with(port: u16, tls: Option<TlsIdentity>) -> Self {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            generation: watch::channel(0).0,
            nonce: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            close: watch::channel(None).0,
            streams_opened: AtomicU64::new(0),
            stream_headers: Mutex::new(Vec::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let svc_shared = shared.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("test ADS runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind test ADS server");
                tx.send(listener.local_addr().expect("local addr")).expect("report address");
                let svc =
                    AggregatedDiscoveryServiceServer::new(Ads { shared: svc_shared }).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20);
                let mut builder = tonic::transport::Server::builder();
                if let Some(id) = tls {
                    let config = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(id.cert_pem, id.key_pem));
                    builder = builder.tls_config(config).expect("test ADS server TLS configuration");
                }
                let _ = builder
                    .add_service(svc)
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let addr = rx.recv().expect("test ADS server started");
        AdsServer { addr, scheme, shared, shutdown: Some(stop_tx), thread: Some(thread) }
    }

    pub fn start() -> Self {
        Self::start_on(0)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Adds or replaces a resource (version: a hash of its content) and pushes.
    pub fn set(&self, type_url: &str, name: &str, body: Any) {
        self.shared.store.lock().unwrap_or_else(|p| p.into_inner()).put(type_url.to_owned(), name.to_owned(), body);
        self.push();
    }

    /// Sets many resources at once, then pushes once.
    pub fn set_all(&self, items: Vec<(String, String, Any)>) {
        {
            let mut store = self.shared.store.lock().unwrap_or_else(|p| p.into_inner());
            for (type_url, name, body) in items {
                store.put(type_url, name, body);
            }
        }
        self.push();
    }

    pub fn remove(&self, type_url: &str, name: &str) {
        {
            let mut store = self.shared.store.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = store.resources.get_mut(type_url) {
                m.remove(name);
            }
            store.changes.push((type_url.to_owned(), name.to_owned()));
        }
        self.push();
    }

    fn push(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Ends every open stream with `status` (OK-like codes are istiod's routine close).
    pub fn close_streams(&self, status: Status) {
        self.shared.close.send_replace(Some(status));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The headers of every stream opened so far, in order.
    pub fn stream_headers(&self) -> Vec<StreamHeaders> {
        self.shared.stream_headers.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn streams_opened(&self) -> u64 {
        self.shared.streams_opened.load(Ordering::SeqCst)
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        // End the open streams first: tonic's graceful shutdown waits for them.
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.close.send_replace(Some(Status::unavailable("test ADS server stopping")));
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Ads {
    shared: Arc<Shared>,
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn next_nonce(shared: &Shared) -> String {
    format!("n{}", shared.nonce.fetch_add(1, Ordering::SeqCst) + 1)
}

fn record(shared: &Shared, r: Recorded) {
    shared.requests.lock().unwrap_or_else(|p| p.into_inner()).push(r);
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let shared = self.shared.clone();
        if shared.stopping.load(Ordering::SeqCst) {
            // A client reconnecting while the server stops would hold its shutdown.
            return Err(Status::unavailable("test ADS server stopping"));
        }
        shared.streams_opened.fetch_add(1, Ordering::SeqCst);
        shared.stream_headers.lock().unwrap_or_else(|p| p.into_inner()).push(StreamHeaders::of(request.metadata()));
        shared.close.send_replace(None);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            // type URL -> requested names (empty: wildcard)
            let mut subscriptions: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut sent_generation: BTreeMap<String, u64> = BTreeMap::new();
            let mut generation = shared.generation.subscribe();
            let mut close = shared.close.subscribe();
            loop {
                tokio::select! {
                    req = inbound.next() => {
                        let Some(Ok(req)) = req else { return };
                        record(&shared, Recorded {
                            delta: false,
                            type_url: req.type_url.clone(),
                            version_info: req.version_info.clone(),
                            response_nonce: req.response_nonce.clone(),
                            resource_names: req.resource_names.clone(),
                            unsubscribe: Vec::new(),
                            initial_versions: HashMap::new(),
                            error: req.error_detail.as_ref().map(|e| e.message.clone()),
                            node_id: req.node.as_ref().map(|n| n.id.clone()),
                        });
                        let changed = subscriptions.get(&req.type_url) != Some(&req.resource_names);
                        subscriptions.insert(req.type_url.clone(), req.resource_names.clone());
                        // Answer a new subscription (or changed names); an ACK/NACK needs no answer.
                        if req.response_nonce.is_empty() || changed {
                            let g = *generation.borrow();
                            sent_generation.insert(req.type_url.clone(), g);
                            if tx.send(Ok(sotw_response(&shared, &req.type_url, &req.resource_names))).await.is_err() { return; }
                        }
                    }
                    changed = generation.changed() => {
                        if changed.is_err() { return; }
                        let g = *generation.borrow();
                        for (type_url, names) in &subscriptions {
                            if sent_generation.get(type_url) == Some(&g) { continue; }
                            sent_generation.insert(type_url.clone(), g);
                            if tx.send(Ok(sotw_response(&shared, type_url, names))).await.is_err() { return; }
                        }
                    }
                    changed = close.changed() => {
                        if changed.is_err() { return; }
                        let status = close.borrow().clone();
                        if let Some(status) = status {
                            if status.code() != tonic::Code::Ok {
                                let _ = tx.send(Err(status)).await;
                            }
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let shared = self.shared.clone();
        if shared.stopping.load(Ordering::SeqCst) {
            // A client reconnecting while the server stops would hold its shutdown.
            return Err(Status::unavailable("test ADS server stopping"));
        }
        shared.streams_opened.fetch_add(1, Ordering::SeqCst);
        shared.stream_headers.lock().unwrap_or_else(|p| p.into_inner()).push(StreamHeaders::of(request.metadata()));
        shared.close.send_replace(None);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            // type URL -> (wildcard, names)
            let mut subscriptions: BTreeMap<String, (bool, BTreeSet<String>)> = BTreeMap::new();
            // type URL -> name -> version the client holds
            let mut held: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
            let mut generation = shared.generation.subscribe();
            // Changes before this stream opened reach it through its first response per type.
            let mut seen = shared.store.lock().unwrap_or_else(|p| p.into_inner()).changes.len();
            let mut close = shared.close.subscribe();
            loop {
                tokio::select! {
                    req = inbound.next() => {
                        let Some(Ok(req)) = req else { return };
                        record(&shared, Recorded {
                            delta: true,
                            type_url: req.type_url.clone(),
                            version_info: String::new(),
                            response_nonce: req.response_nonce.clone(),
                            resource_names: req.resource_names_subscribe.clone(),
                            unsubscribe: req.resource_names_unsubscribe.clone(),
                            initial_versions: req.initial_resource_versions.clone(),
                            error: req.error_detail.as_ref().map(|e| e.message.clone()),
                            node_id: req.node.as_ref().map(|n| n.id.clone()),
                        });
                        let entry = subscriptions.entry(req.type_url.clone()).or_default();
                        let first = req.response_nonce.is_empty() && !req.initial_resource_versions.is_empty() || !held.contains_key(&req.type_url);
                        for n in &req.resource_names_subscribe {
                            if n == "*" { entry.0 = true; } else { entry.1.insert(n.clone()); }
                        }
                        for n in &req.resource_names_unsubscribe {
                            if n == "*" { entry.0 = false; } else { entry.1.remove(n); }
                            if let Some(h) = held.get_mut(&req.type_url) { h.remove(n); }
                        }
                        let h = held.entry(req.type_url.clone()).or_default();
                        if first {
                            h.extend(req.initial_resource_versions.clone());
                        }
                        // A NACKed resource is not held by the client: forget what we sent.
                        if req.error_detail.is_some() {
                            continue;
                        }
                        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() || first {
                            let resp = delta_response(&shared, &req.type_url, &subscriptions[&req.type_url], h);
                            if tx.send(Ok(resp)).await.is_err() { return; }
                        }
                    }
                    changed = generation.changed() => {
                        if changed.is_err() { return; }
                        let mut by_type: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                        {
                            let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
                            for (t, n) in &store.changes[seen.min(store.changes.len())..] {
                                by_type.entry(t.clone()).or_default().insert(n.clone());
                            }
                            seen = store.changes.len();
                        }
                        for (type_url, sub) in &subscriptions {
                            let Some(names) = by_type.get(type_url) else { continue };
                            let h = held.entry(type_url.clone()).or_default();
                            if let Some(resp) = delta_changes(&shared, type_url, sub, h, names) {
                                if tx.send(Ok(resp)).await.is_err() { return; }
                            }
                        }
                    }
                    changed = close.changed() => {
                        if changed.is_err() { return; }
                        let status = close.borrow().clone();
                        if let Some(status) = status {
                            if status.code() != tonic::Code::Ok {
                                let _ = tx.send(Err(status)).await;
                            }
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn sotw_response(shared: &Shared, type_url: &str, names: &[String]) -> DiscoveryResponse {
    let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
    let resources = store
        .resources
        .get(type_url)
        .map(|m| m.iter().filter(|(n, _)| names.is_empty() || names.contains(n)).map(|(_, (_, body))| body.clone()).collect())
        .unwrap_or_default();
    DiscoveryResponse {
        version_info: format!("g{}", *shared.generation.borrow()),
        resources,
        type_url: type_url.to_owned(),
        nonce: next_nonce(shared),
        ..Default::default()
    }
}

/// Of the resources `names` of `type_url`: those the client wants and holds at another
/// version (or not at all), and those it holds that are gone or no longer wanted.
/// `held` follows.
fn delta_of<'a>(
    shared: &Shared,
    type_url: &str,
    sub: &(bool, BTreeSet<String>),
    held: &mut HashMap<String, String>,
    names: impl IntoIterator<Item = &'a String>,
) -> (Vec<Resource>, Vec<String>) {
    let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
    let current = store.resources.get(type_url);
    let mut resources = Vec::new();
    let mut removed = Vec::new();
    for name in names {
        match current.and_then(|c| c.get(name)) {
            Some((version, body)) if sub.0 || sub.1.contains(name) => {
                if held.get(name) != Some(version) {
                    resources.push(Resource { name: name.clone(), version: version.clone(), resource: Some(body.clone()), ..Default::default() });
                    held.insert(name.clone(), version.clone());
                }
            }
            _ => {
                if held.remove(name).is_some() {
                    removed.push(name.clone());
                }
            }
        }
    }
    (resources, removed)
}

fn delta_message(shared: &Shared, type_url: &str, (resources, removed): (Vec<Resource>, Vec<String>)) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("g{}", *shared.generation.borrow()),
        resources,
        type_url: type_url.to_owned(),
        removed_resources: removed,
        nonce: next_nonce(shared),
        ..Default::default()
    }
}

/// [`delta_of`] the resources that changed in the store since the stream last looked;
/// `None` when that changes nothing for this client.
fn delta_changes(
    shared: &Shared,
    type_url: &str,
    sub: &(bool, BTreeSet<String>),
    held: &mut HashMap<String, String>,
    names: &BTreeSet<String>,
) -> Option<DeltaDiscoveryResponse> {
    let (resources, removed) = delta_of(shared, type_url, sub, held, names);
    (!resources.is_empty() || !removed.is_empty()).then(|| delta_message(shared, type_url, (resources, removed)))
}

/// [`delta_of`] everything of `type_url` the store or the client holds, after a
/// subscription change or on the stream's first request of the type (then always
/// answered, possibly empty, as istiod does).
fn delta_response(shared: &Shared, type_url: &str, sub: &(bool, BTreeSet<String>), held: &mut HashMap<String, String>) -> DeltaDiscoveryResponse {
    let names: BTreeSet<String> = {
        let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
        store.resources.get(type_url).into_iter().flat_map(|c| c.keys()).chain(held.keys()).cloned().collect()
    };
    delta_message(shared, type_url, delta_of(shared, type_url, sub, held, &names))
}
