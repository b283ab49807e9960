//! The ADS client against the test ADS server, scripted: ACK/NACK sequencing with
//! versions and nonces, Delta add/remove, derived subscriptions, reconnect with
//! `initial_resource_versions`, a server restart mid-stream, malformed payloads and
//! an oversized message — the client always keeps (and re-announces) what it accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tests::{assert_eventually, AdsServer};
use xds_client::ads::{self, AdsConfig, Backoff, Event, Handler, Interest, Protocol, Rejection, Update};
use xds_client::pb::envoy::config::cluster::v3::Cluster;
use xds_client::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_client::pb::google::protobuf::Any;
use xds_client::transport::TransportConfig;
use xds_client::type_url::{CLUSTER, CLUSTER_LOAD_ASSIGNMENT};

const T: Duration = Duration::from_secs(10);

fn cluster_any(name: &str) -> Any {
    Any { type_url: CLUSTER.to_owned(), value: Cluster { name: name.to_owned(), ..Default::default() }.encode_to_vec() }
}

fn cla_any(name: &str) -> Any {
    Any { type_url: CLUSTER_LOAD_ASSIGNMENT.to_owned(), value: ClusterLoadAssignment { cluster_name: name.to_owned(), ..Default::default() }.encode_to_vec() }
}

/// What the test handler has accepted, by type and name.
#[derive(Default)]
struct Seen {
    resources: BTreeMap<String, BTreeSet<String>>,
    connects: usize,
    nacks: usize,
}

/// Accepts clusters and load assignments; rejects a cluster named `bad-*` and any
/// payload that does not decode; wants EDS for every accepted cluster.
struct TestHandler {
    seen: Arc<Mutex<Seen>>,
}

impl Handler for TestHandler {
    fn apply(&mut self, type_url: &str, update: Update) -> Vec<Rejection> {
        let mut seen = self.seen.lock().unwrap();
        let mut rejections = Vec::new();
        let decode = |any: &Any| -> Result<String, String> {
            match any.type_url.as_str() {
                CLUSTER => Cluster::decode(any.value.as_slice()).map(|c| c.name).map_err(|e| e.to_string()),
                CLUSTER_LOAD_ASSIGNMENT => ClusterLoadAssignment::decode(any.value.as_slice()).map(|c| c.cluster_name).map_err(|e| e.to_string()),
                other => Err(format!("unknown type {other}")),
            }
        };
        let set = seen.resources.entry(type_url.to_owned()).or_default();
        match update {
            Update::Full { resources, .. } => {
                let mut next = BTreeSet::new();
                for any in &resources {
                    match decode(any) {
                        Ok(n) if n.starts_with("bad-") => rejections.push(Rejection { name: n, reason: "test rejects bad-*".into() }),
                        Ok(n) => {
                            next.insert(n);
                        }
                        Err(e) => rejections.push(Rejection { name: "?".into(), reason: e }),
                    }
                }
                // Rejected resources keep their last good state: here, simply not present.
                *set = next;
            }
            Update::Delta { resources, removed, .. } => {
                for r in resources {
                    match decode(&r.body) {
                        Ok(n) if n.starts_with("bad-") => rejections.push(Rejection { name: r.name, reason: "test rejects bad-*".into() }),
                        Ok(_) => {
                            set.insert(r.name);
                        }
                        Err(e) => rejections.push(Rejection { name: r.name, reason: e }),
                    }
                }
                for n in removed {
                    set.remove(&n);
                }
            }
        }
        rejections
    }

    fn subscriptions(&self) -> Vec<(String, Interest)> {
        let seen = self.seen.lock().unwrap();
        let clusters = seen.resources.get(CLUSTER).cloned().unwrap_or_default();
        vec![(CLUSTER.to_owned(), Interest::Wildcard), (CLUSTER_LOAD_ASSIGNMENT.to_owned(), Interest::names(clusters))]
    }

    fn event(&mut self, event: Event<'_>) {
        let mut seen = self.seen.lock().unwrap();
        match event {
            Event::Connected => seen.connects += 1,
            Event::Nacked { .. } => seen.nacks += 1,
            _ => {}
        }
    }
}

/// Runs the client on a background thread until the returned guard drops.
struct Client {
    seen: Arc<Mutex<Seen>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client(address: String, protocol: Protocol, max_message_size: Option<usize>) -> Client {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handler_seen = seen.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut transport = TransportConfig::new(&address);
            if let Some(max) = max_message_size {
                transport.max_message_size = max;
            }
            let config = AdsConfig {
                transport,
                node: xds_client::node::sidecar(&xds_client::node::NodeIdentity {
                    ips: vec!["198.18.0.1".into()],
                    pod_name: "np".into(),
                    namespace: "test".into(),
                    ..Default::default()
                }),
                protocol,
                backoff: Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(400) },
            };
            let mut handler = TestHandler { seen: handler_seen };
            ads::run(config, &mut handler, async {
                let _ = stop_rx.await;
            })
            .await;
        });
    });
    Client { seen, stop: Some(stop), thread: Some(thread) }
}

fn names(seen: &Arc<Mutex<Seen>>, type_url: &str) -> BTreeSet<String> {
    seen.lock().unwrap().resources.get(type_url).cloned().unwrap_or_default()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn sotw_ack_carries_version_and_nonce_and_derived_eds_subscription() {
    let server = AdsServer::start();
    server.set(CLUSTER, "a", cluster_any("a"));
    server.set(CLUSTER, "b", cluster_any("b"));
    server.set(CLUSTER_LOAD_ASSIGNMENT, "a", cla_any("a"));
    let c = client(server.url(), Protocol::StateOfTheWorld, None);
    assert_eventually(
        "clusters applied",
        T,
        || if names(&c.seen, CLUSTER) == set(&["a", "b"]) { Ok(()) } else { Err(format!("{:?}", names(&c.seen, CLUSTER))) },
    );
    assert_eventually("EDS for the clusters' names applied", T, || {
        if names(&c.seen, CLUSTER_LOAD_ASSIGNMENT) == set(&["a"]) {
            Ok(())
        } else {
            Err(format!("{:?}", names(&c.seen, CLUSTER_LOAD_ASSIGNMENT)))
        }
    });
    let reqs = server.requests();
    assert!(reqs[0].node_id.as_deref().is_some_and(|n| n.starts_with("sidecar~198.18.0.1~np.test")), "the first request carries the node: {reqs:?}");
    let ack = reqs.iter().find(|r| r.type_url == CLUSTER && !r.response_nonce.is_empty()).expect("an ACK for clusters");
    assert!(ack.error.is_none() && ack.version_info.starts_with('g'), "{ack:?}");
    let eds = reqs.iter().rev().find(|r| r.type_url == CLUSTER_LOAD_ASSIGNMENT).unwrap();
    assert_eq!(eds.resource_names, ["a", "b"], "EDS names follow the accepted clusters");
    assert!(reqs.iter().skip(1).all(|r| r.node_id.is_none()), "the node is sent once per stream");
}

#[test]
fn sotw_nack_keeps_the_last_accepted_version_and_names_the_resource() {
    let server = AdsServer::start();
    server.set(CLUSTER, "a", cluster_any("a"));
    let c = client(server.url(), Protocol::StateOfTheWorld, None);
    assert_eventually("a applied", T, || if names(&c.seen, CLUSTER).contains("a") { Ok(()) } else { Err("no".into()) });
    let good_version =
        server.requests().iter().rev().find(|r| r.type_url == CLUSTER && r.error.is_none() && !r.response_nonce.is_empty()).unwrap().version_info.clone();
    server.set(CLUSTER, "bad-1", cluster_any("bad-1"));
    let nack = assert_eventually("a NACK", T, || server.requests().into_iter().find(|r| r.error.is_some()).ok_or_else(|| "none yet".to_string()));
    assert_eq!(nack.error.as_deref(), Some("bad-1: test rejects bad-*"));
    assert_eq!(nack.version_info, good_version, "a NACK re-states the last accepted version");
    // The next good push is ACKed with its own version again.
    server.remove(CLUSTER, "bad-1");
    assert_eventually("ACK after the fix", T, || {
        let last = server.requests().into_iter().rfind(|r| r.type_url == CLUSTER).unwrap();
        if last.error.is_none() && last.version_info != good_version {
            Ok(())
        } else {
            Err(format!("{last:?}"))
        }
    });
}

#[test]
fn delta_add_remove_and_reconnect_with_initial_versions() {
    let server = AdsServer::start();
    server.set(CLUSTER, "a", cluster_any("a"));
    server.set(CLUSTER, "bad-x", cluster_any("bad-x"));
    let c = client(server.url(), Protocol::Delta, None);
    assert_eventually("a applied", T, || if names(&c.seen, CLUSTER) == set(&["a"]) { Ok(()) } else { Err(format!("{:?}", names(&c.seen, CLUSTER))) });
    assert!(server.requests().iter().any(|r| r.delta && r.error.as_deref() == Some("bad-x: test rejects bad-*")));
    server.set(CLUSTER, "b", cluster_any("b"));
    assert_eventually("b added", T, || if names(&c.seen, CLUSTER) == set(&["a", "b"]) { Ok(()) } else { Err(format!("{:?}", names(&c.seen, CLUSTER))) });
    server.remove(CLUSTER, "a");
    assert_eventually("a removed", T, || if names(&c.seen, CLUSTER) == set(&["b"]) { Ok(()) } else { Err(format!("{:?}", names(&c.seen, CLUSTER))) });
    // istiod's routine close: the client is back at once, announcing what it holds.
    let before = server.streams_opened();
    server.close_streams(tonic::Status::unavailable("max connection age"));
    assert_eventually("reconnected", T, || if server.streams_opened() > before { Ok(()) } else { Err("not yet".into()) });
    let resub = assert_eventually("re-subscription with initial versions", T, || {
        server
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.type_url == CLUSTER && r.response_nonce.is_empty() && !r.initial_versions.is_empty())
            .ok_or_else(|| "none".to_string())
    });
    let held: BTreeSet<String> = resub.initial_versions.keys().cloned().collect();
    assert_eq!(held, set(&["b"]), "accepted resources only: the rejected bad-x and the removed a are not re-announced");
}

#[test]
fn server_restart_mid_stream_is_survived() {
    let server = AdsServer::start();
    let port = server.addr().port();
    server.set(CLUSTER, "a", cluster_any("a"));
    let c = client(server.url(), Protocol::Delta, None);
    assert_eventually("a applied", T, || if names(&c.seen, CLUSTER).contains("a") { Ok(()) } else { Err("no".into()) });
    drop(server);
    // Meanwhile the client backs off and retries; the handler still holds `a`.
    std::thread::sleep(Duration::from_millis(300));
    assert!(names(&c.seen, CLUSTER).contains("a"), "the last good config stays while istiod is away");
    let server = AdsServer::start_on(port);
    server.set(CLUSTER, "a", cluster_any("a"));
    server.set(CLUSTER, "c", cluster_any("c"));
    assert_eventually("c applied from the new server", T, || {
        if names(&c.seen, CLUSTER).contains("c") {
            Ok(())
        } else {
            Err(format!("{:?}", names(&c.seen, CLUSTER)))
        }
    });
    assert!(c.seen.lock().unwrap().connects >= 2);
}

#[test]
fn malformed_payload_and_unknown_type_are_nacked_not_fatal() {
    let server = AdsServer::start();
    server.set(CLUSTER, "a", cluster_any("a"));
    let c = client(server.url(), Protocol::Delta, None);
    assert_eventually("a applied", T, || if names(&c.seen, CLUSTER).contains("a") { Ok(()) } else { Err("no".into()) });
    // A body that is not a Cluster, and one of a type nobody knows.
    server.set(CLUSTER, "garbage", Any { type_url: CLUSTER.to_owned(), value: vec![0xff, 0xff, 0xff] });
    server.set(CLUSTER, "stranger", Any { type_url: "type.googleapis.com/example.Unknown".into(), value: vec![] });
    assert_eventually("both NACKed", T, || {
        let errs: Vec<String> = server.requests().into_iter().filter_map(|r| r.error).collect();
        if errs.iter().any(|e| e.starts_with("garbage: ")) && errs.iter().any(|e| e.contains("unknown type")) {
            Ok(())
        } else {
            Err(format!("{errs:?}"))
        }
    });
    server.set(CLUSTER, "b", cluster_any("b"));
    assert_eventually("later pushes still apply", T, || if names(&c.seen, CLUSTER).contains("b") { Ok(()) } else { Err("no".into()) });
    assert!(names(&c.seen, CLUSTER).contains("a"));
}

#[test]
fn oversized_message_drops_the_stream_and_keeps_the_last_good_config() {
    let server = AdsServer::start();
    server.set(CLUSTER, "a", cluster_any("a"));
    let c = client(server.url(), Protocol::StateOfTheWorld, Some(64 * 1024));
    assert_eventually("a applied", T, || if names(&c.seen, CLUSTER).contains("a") { Ok(()) } else { Err("no".into()) });
    let connects = c.seen.lock().unwrap().connects;
    let big = Cluster { name: "big".into(), alt_stat_name: "x".repeat(128 * 1024), ..Default::default() };
    server.set(CLUSTER, "big", Any { type_url: CLUSTER.into(), value: big.encode_to_vec() });
    assert_eventually("the client reconnects after refusing the message", T, || {
        if c.seen.lock().unwrap().connects > connects {
            Ok(())
        } else {
            Err("no reconnect".into())
        }
    });
    assert_eq!(names(&c.seen, CLUSTER), set(&["a"]), "the oversized push never applied; the last good config stays");
}
