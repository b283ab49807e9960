//! The ADS client: one aggregated stream to istiod (or any xDS server), state of the
//! world or incremental (Delta), carrying every subscribed resource type.
//!
//! Owns: the stream, ACK/NACK with versions and nonces, subscriptions (wildcard and
//! named, re-derived from the handler after every update), reconnecting with
//! jittered exponential back-off (at once after a graceful close), and Delta's
//! `initial_resource_versions` on reconnect. Knows type URLs and bytes; what a resource
//! means is the [`Handler`]'s business.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::transport::{self, TransportConfig, TransportError};

/// State of the world or incremental.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    StateOfTheWorld,
    Delta,
}

/// Which resources of a type the client wants.
///
/// Names are shared: a handler that keeps returning the same set (the usual case,
/// between topology changes) costs a pointer comparison per response, not a copy
/// and comparison of thousands of names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interest {
    Wildcard,
    Names(Arc<BTreeSet<String>>),
}

impl Interest {
    pub fn names<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Interest {
        Interest::Names(Arc::new(names.into_iter().map(Into::into).collect()))
    }
}

/// A resource as delivered: Delta names and versions each; state-of-the-world
/// resources carry no name (the handler reads it from the payload).
#[derive(Clone, Debug)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

/// One response's worth of changes for one type.
#[derive(Debug)]
pub enum Update {
    /// State of the world: the complete set; anything not in it is gone.
    Full { version: String, resources: Vec<Any> },
    /// Incremental: these were added or changed, those removed.
    Delta { system_version: String, resources: Vec<Resource>, removed: Vec<String> },
}

/// A resource the handler did not accept, and why (it goes into the NACK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub name: String,
    pub reason: String,
}

/// What the client reports as it runs (for logs, metrics and /config_dump).
#[derive(Debug)]
pub enum Event<'a> {
    Connecting { address: &'a str },
    Connected,
    Disconnected { error: &'a AdsError, retry_in: Duration },
    Received { type_url: &'a str, resources: usize, removed: usize },
    Acked { type_url: &'a str, version: &'a str },
    Nacked { type_url: &'a str, version: &'a str, rejections: &'a [Rejection] },
}

/// The application side of the client.
pub trait Handler: Send {
    /// Applies an update. Everything not returned as rejected is accepted.
    fn apply(&mut self, type_url: &str, update: Update) -> Vec<Rejection>;
    /// The subscriptions wanted now: asked at start and after every update, so names
    /// that follow from other resources (RDS from LDS, EDS from CDS) come and go.
    fn subscriptions(&self) -> Vec<(String, Interest)>;
    fn event(&mut self, _event: Event<'_>) {}
}

#[derive(Debug, thiserror::Error)]
pub enum AdsError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("istiod closed the stream: {status}{hint}")]
    Closed { status: tonic::Status, hint: &'static str },
    #[error("the stream ended")]
    Ended,
    #[error("cannot send to istiod: the stream is gone")]
    SendFailed,
}

impl AdsError {
    /// A routine close (istiod's max connection age, a restart): reconnect at once.
    fn is_graceful(&self) -> bool {
        match self {
            AdsError::Ended => true,
            AdsError::Closed { status, .. } => matches!(status.code(), tonic::Code::Ok | tonic::Code::Unavailable | tonic::Code::Cancelled),
            _ => false,
        }
    }
}

fn status_hint(status: &tonic::Status) -> &'static str {
    match status.code() {
        tonic::Code::Unauthenticated => ": istiod rejected the token (check --token-path: a projected service-account token with audience istio-ca)",
        tonic::Code::PermissionDenied => {
            ": istiod refused this identity (PILOT_ENABLE_XDS_IDENTITY_CHECK: the token's service account must be allowed to act for the node's namespace)"
        }
        tonic::Code::Unimplemented => ": the server does not implement this ADS method (state of the world vs Delta?)",
        tonic::Code::InvalidArgument => ": the server refused a request (an unknown type URL or a malformed node id?)",
        _ => "",
    }
}

/// Reconnect back-off: jittered exponential between `initial` and `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(15) }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0-based): uniform in [d/2, d] with d = initial·2ⁿ capped.
    pub fn delay(&self, n: u32) -> Duration {
        let d = self.initial.saturating_mul(1u32 << n.min(16)).min(self.max);
        let ms = d.as_millis().max(1) as u64;
        Duration::from_millis(rand::random_range(ms / 2..=ms))
    }
}

#[derive(Clone, Debug)]
pub struct AdsConfig {
    pub transport: TransportConfig,
    pub node: Node,
    pub protocol: Protocol,
    pub backoff: Backoff,
}

/// Per-type stream state.
#[derive(Debug, Default)]
struct TypeState {
    interest: Option<Interest>,
    /// SotW: last accepted version; Delta: last system version (debugging only).
    version: String,
    nonce: String,
    /// Delta: versions of the resources we hold (accepted), for reconnects.
    resource_versions: HashMap<String, String>,
}

/// Runs the client until `shutdown` resolves.
pub async fn run<H: Handler>(config: AdsConfig, handler: &mut H, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut states: BTreeMap<String, TypeState> = BTreeMap::new();
    let mut failures: u32 = 0;
    loop {
        handler.event(Event::Connecting { address: &config.transport.address });
        let session = session(&config, handler, &mut states);
        let result = tokio::select! {
            r = session => r,
            _ = &mut shutdown => return,
        };
        let (error, healthy) = match result {
            Ok(()) => (AdsError::Ended, true),
            Err((e, healthy)) => (e, healthy),
        };
        // A stream that worked resets the back-off; one closed routinely (istiod's
        // max connection age, GOAWAY) is re-opened at once.
        if healthy {
            failures = 0;
        }
        let delay = if healthy && error.is_graceful() {
            Duration::ZERO
        } else {
            let d = config.backoff.delay(failures);
            failures = failures.saturating_add(1);
            d
        };
        handler.event(Event::Disconnected { error: &error, retry_in: delay });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => return,
        }
    }
}

/// One connection's stream. The error carries whether any response was received.
async fn session<H: Handler>(config: &AdsConfig, handler: &mut H, states: &mut BTreeMap<String, TypeState>) -> Result<(), (AdsError, bool)> {
    let channel = transport::connect(&config.transport).await.map_err(|e| (AdsError::Transport(e), false))?;
    let interceptor = transport::interceptor(&config.transport).map_err(|e| (AdsError::Transport(e), false))?;
    let mut client = AggregatedDiscoveryServiceClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(config.transport.max_message_size)
        .max_encoding_message_size(config.transport.max_message_size);
    match config.protocol {
        Protocol::StateOfTheWorld => sotw_session(config, &mut client, handler, states).await,
        Protocol::Delta => delta_session(config, &mut client, handler, states).await,
    }
}

type Client = AggregatedDiscoveryServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, transport::Auth>>;

fn closed(status: tonic::Status) -> AdsError {
    let hint = status_hint(&status);
    AdsError::Closed { status, hint }
}

fn nack_status(rejections: &[Rejection]) -> Status {
    let message = rejections.iter().map(|r| format!("{}: {}", r.name, r.reason)).collect::<Vec<_>>().join("; ");
    Status { code: tonic::Code::InvalidArgument as i32, message, details: Vec::new() }
}

fn names_of(interest: &Interest) -> Vec<String> {
    match interest {
        Interest::Wildcard => Vec::new(),
        Interest::Names(n) => n.iter().cloned().collect(),
    }
}

async fn sotw_session<H: Handler>(
    config: &AdsConfig,
    client: &mut Client,
    handler: &mut H,
    states: &mut BTreeMap<String, TypeState>,
) -> Result<(), (AdsError, bool)> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    let mut first = true;
    let mut node = || {
        if std::mem::take(&mut first) {
            Some(config.node.clone())
        } else {
            None
        }
    };
    // Initial requests, with the versions we hold so istiod can skip unchanged pushes.
    for (type_url, interest) in handler.subscriptions() {
        let state = states.entry(type_url.clone()).or_default();
        state.interest = Some(interest.clone());
        state.nonce.clear();
        let req = DiscoveryRequest { node: node(), type_url, version_info: state.version.clone(), resource_names: names_of(&interest), ..Default::default() };
        let _ = tx.try_send(req);
    }
    let mut stream = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.map_err(|s| (closed(s), false))?.into_inner();
    handler.event(Event::Connected);
    let mut healthy = false;
    loop {
        let response: DiscoveryResponse = match stream.next().await {
            Some(Ok(r)) => r,
            Some(Err(status)) => return Err((closed(status), healthy)),
            None => return Err((AdsError::Ended, healthy)),
        };
        healthy = true;
        let type_url = response.type_url.clone();
        handler.event(Event::Received { type_url: &type_url, resources: response.resources.len(), removed: 0 });
        let rejections = handler.apply(&type_url, Update::Full { version: response.version_info.clone(), resources: response.resources });
        let state = states.entry(type_url.clone()).or_default();
        state.nonce = response.nonce.clone();
        let error_detail = if rejections.is_empty() {
            state.version = response.version_info.clone();
            handler.event(Event::Acked { type_url: &type_url, version: &response.version_info });
            None
        } else {
            handler.event(Event::Nacked { type_url: &type_url, version: &response.version_info, rejections: &rejections });
            Some(nack_status(&rejections))
        };
        let interest = state.interest.clone().unwrap_or(Interest::Wildcard);
        let ack = DiscoveryRequest {
            node: node(),
            type_url: type_url.clone(),
            version_info: state.version.clone(),
            response_nonce: response.nonce,
            resource_names: names_of(&interest),
            error_detail,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|_| (AdsError::SendFailed, healthy))?;
        // Subscriptions that follow from what was just applied.
        for (t, wanted) in handler.subscriptions() {
            let state = states.entry(t.clone()).or_default();
            if state.interest.as_ref() == Some(&wanted) {
                continue;
            }
            state.interest = Some(wanted.clone());
            let req = DiscoveryRequest {
                node: node(),
                type_url: t,
                version_info: state.version.clone(),
                response_nonce: state.nonce.clone(),
                resource_names: names_of(&wanted),
                ..Default::default()
            };
            tx.send(req).await.map_err(|_| (AdsError::SendFailed, healthy))?;
        }
    }
}

async fn delta_session<H: Handler>(
    config: &AdsConfig,
    client: &mut Client,
    handler: &mut H,
    states: &mut BTreeMap<String, TypeState>,
) -> Result<(), (AdsError, bool)> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let mut first = true;
    let mut node = || {
        if std::mem::take(&mut first) {
            Some(config.node.clone())
        } else {
            None
        }
    };
    for (type_url, interest) in handler.subscriptions() {
        let state = states.entry(type_url.clone()).or_default();
        state.interest = Some(interest.clone());
        state.nonce.clear();
        let subscribe = match &interest {
            Interest::Wildcard => vec!["*".to_owned()],
            Interest::Names(n) => n.iter().cloned().collect(),
        };
        // What we hold (accepted resources only), so the server sends just the differences.
        let req = DeltaDiscoveryRequest {
            node: node(),
            type_url,
            resource_names_subscribe: subscribe,
            initial_resource_versions: state.resource_versions.clone(),
            ..Default::default()
        };
        let _ = tx.try_send(req);
    }
    let mut stream = client.delta_aggregated_resources(ReceiverStream::new(rx)).await.map_err(|s| (closed(s), false))?.into_inner();
    handler.event(Event::Connected);
    let mut healthy = false;
    loop {
        let response: DeltaDiscoveryResponse = match stream.next().await {
            Some(Ok(r)) => r,
            Some(Err(status)) => return Err((closed(status), healthy)),
            None => return Err((AdsError::Ended, healthy)),
        };
        healthy = true;
        let type_url = response.type_url.clone();
        handler.event(Event::Received { type_url: &type_url, resources: response.resources.len(), removed: response.removed_resources.len() });
        let mut resources = Vec::with_capacity(response.resources.len());
        let mut malformed = Vec::new();
        for r in response.resources {
            match r.resource {
                Some(body) => resources.push(Resource { name: r.name, version: r.version, body }),
                None => malformed.push(Rejection { name: r.name, reason: "resource without a body".to_owned() }),
            }
        }
        let offered: Vec<(String, String)> = resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
        let removed = response.removed_resources.clone();
        let mut rejections =
            handler.apply(&type_url, Update::Delta { system_version: response.system_version_info.clone(), resources, removed: removed.clone() });
        rejections.extend(malformed);
        let state = states.entry(type_url.clone()).or_default();
        state.nonce = response.nonce.clone();
        state.version = response.system_version_info.clone();
        // Only accepted resources count as held: a rejected one is asked for again on reconnect.
        let rejected: BTreeSet<&str> = rejections.iter().map(|r| r.name.as_str()).collect();
        for (name, version) in offered {
            if !rejected.contains(name.as_str()) {
                state.resource_versions.insert(name, version);
            }
        }
        for name in &removed {
            state.resource_versions.remove(name);
        }
        let error_detail = if rejections.is_empty() {
            handler.event(Event::Acked { type_url: &type_url, version: &response.system_version_info });
            None
        } else {
            handler.event(Event::Nacked { type_url: &type_url, version: &response.system_version_info, rejections: &rejections });
            Some(nack_status(&rejections))
        };
        let ack = DeltaDiscoveryRequest { node: node(), type_url: type_url.clone(), response_nonce: response.nonce, error_detail, ..Default::default() };
        tx.send(ack).await.map_err(|_| (AdsError::SendFailed, healthy))?;
        for (t, wanted) in handler.subscriptions() {
            let state = states.entry(t.clone()).or_default();
            let (subscribe, unsubscribe) = match (&state.interest, &wanted) {
                (Some(current), w) if current == w => continue,
                (Some(Interest::Names(old)), Interest::Names(new)) => (new.difference(old).cloned().collect(), old.difference(new).cloned().collect()),
                (Some(Interest::Names(old)), Interest::Wildcard) => (vec!["*".to_owned()], old.iter().cloned().collect()),
                (Some(Interest::Wildcard), Interest::Names(new)) => (new.iter().cloned().collect(), vec!["*".to_owned()]),
                (None, Interest::Wildcard) => (vec!["*".to_owned()], Vec::new()),
                (None, Interest::Names(new)) => (new.iter().cloned().collect(), Vec::new()),
                (Some(Interest::Wildcard), Interest::Wildcard) => continue,
            };
            for name in &unsubscribe {
                state.resource_versions.remove(name);
            }
            state.interest = Some(wanted);
            let req = DeltaDiscoveryRequest {
                node: node(),
                type_url: t,
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                ..Default::default()
            };
            tx.send(req).await.map_err(|_| (AdsError::SendFailed, healthy))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(2) };
        for _ in 0..100 {
            let d0 = b.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            assert!(b.delay(30) <= Duration::from_secs(2));
        }
    }

    #[test]
    fn graceful_closes_are_recognised() {
        assert!(AdsError::Ended.is_graceful());
        assert!(closed(tonic::Status::unavailable("max connection age")).is_graceful());
        assert!(!closed(tonic::Status::unauthenticated("bad token")).is_graceful());
        let e = closed(tonic::Status::unauthenticated("bad token"));
        assert!(e.to_string().contains("--token-path"), "{e}");
    }

    #[test]
    fn nack_names_each_rejection() {
        let s = nack_status(&[Rejection { name: "l1".into(), reason: "bad regex".into() }, Rejection { name: "l2".into(), reason: "no address".into() }]);
        assert_eq!(s.code, tonic::Code::InvalidArgument as i32);
        assert_eq!(s.message, "l1: bad regex; l2: no address");
    }
}
