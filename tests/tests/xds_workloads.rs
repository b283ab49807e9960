//! Istio's workload API over the ztunnel-type Delta stream, against the running node
//! proxy: workloads and services (`istio.workload.Address`) and L4 policies
//! (`istio.security.Authorization`, istiod's real golden output from the corpus) are
//! taken, shown on `/workloads` with their versions, removed by Delta, and an invalid
//! resource is NACKed with the field that is wrong while the rest stays.

use std::time::Duration;

use prost::Message;
use serde_json::Value;
use tests::*;
use xds_client::istio::security::Authorization;
use xds_client::istio::workload::{address, Address, PortList, Service, Workload};
use xds_client::pb::google::protobuf::Any;
use xds_client::type_url::{ADDRESS, AUTHORIZATION};

const T: Duration = Duration::from_secs(15);

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any { type_url: type_url.to_owned(), value: m.encode_to_vec() }
}

fn workload(uid: &str, name: &str, ip: [u8; 4]) -> Address {
    let mut services = std::collections::HashMap::new();
    services.insert(
        "bookinfo/reviews.bookinfo.svc.cluster.local".to_owned(),
        PortList { ports: vec![xds_client::istio::workload::Port { service_port: 9080, target_port: 9080 }] },
    );
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.to_owned(),
            name: name.to_owned(),
            namespace: "bookinfo".to_owned(),
            addresses: vec![ip.to_vec()],
            service_account: "bookinfo-reviews".to_owned(),
            node: "node-a".to_owned(),
            tunnel_protocol: xds_client::istio::workload::TunnelProtocol::Hbone as i32,
            services,
            ..Default::default()
        })),
    }
}

fn dump(proxy: &Proxy) -> Value {
    serde_json::from_str(&proxy.admin_get("/workloads").body).expect("/workloads is JSON")
}

fn eventually<V>(what: &str, mut check: impl FnMut() -> Option<V>) -> V {
    assert_eventually(what, T, || check().ok_or_else(|| "not yet".to_owned()))
}

#[test]
fn workload_api_resources_are_taken_dumped_removed_and_validated() {
    let Some(corpus) = corpus::dir() else { return };
    let ads = AdsServer::start();
    let uid1 = "Kubernetes//Pod/bookinfo/reviews-v1-1";
    let uid2 = "Kubernetes//Pod/bookinfo/reviews-v2-1";
    ads.set(ADDRESS, uid1, any(ADDRESS, &workload(uid1, "reviews-v1-1", [10, 244, 1, 5])));
    ads.set(ADDRESS, uid2, any(ADDRESS, &workload(uid2, "reviews-v2-1", [10, 244, 2, 7])));
    let svc = Address {
        r#type: Some(address::Type::Service(Service {
            name: "reviews".to_owned(),
            namespace: "bookinfo".to_owned(),
            hostname: "reviews.bookinfo.svc.cluster.local".to_owned(),
            addresses: vec![xds_client::istio::workload::NetworkAddress { network: String::new(), address: vec![10, 96, 7, 7] }],
            ports: vec![xds_client::istio::workload::Port { service_port: 9080, target_port: 9080 }],
            ..Default::default()
        })),
    };
    ads.set(ADDRESS, "bookinfo/reviews.bookinfo.svc.cluster.local", any(ADDRESS, &svc));
    // istiod's own output for a full AuthorizationPolicy (every match field).
    let text = std::fs::read_to_string(corpus.join("istio-ambient-authz-golden/allow-full.yaml")).expect("golden");
    let golden = xds_client::protojson::parse_yaml_or_json(&text).expect("golden is YAML");
    let policy = xds_client::protojson::from_json::<Authorization>(golden).expect("golden decodes").message;
    let policy_name = format!("{}/{}", policy.namespace, policy.name);
    ads.set(AUTHORIZATION, &policy_name, any(AUTHORIZATION, &policy));

    let proxy = Proxy::start_xds(&ads.url(), ProxyOptions::default());
    let d = eventually("two workloads, one service and the policy on /workloads", || {
        let d = dump(&proxy);
        (d["workloads"].as_object().map_or(0, |m| m.len()) == 2
            && d["services"].as_object().map_or(0, |m| m.len()) == 1
            && d["policies"].as_object().map_or(0, |m| m.len()) == 1)
            .then_some(d)
    });
    let w = &d["workloads"][uid1];
    assert_eq!(w["addresses"][0], "10.244.1.5", "{w}");
    assert_eq!(w["identity"], "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews", "{w}");
    assert_eq!(w["node"], "node-a");
    let p = &d["policies"][policy_name.as_str()];
    assert_eq!(p["name"], policy.name.as_str());
    assert!(p["rules"].as_array().is_some_and(|r| !r.is_empty()), "{p}");
    let resources = d["resources"].as_array().expect("resources");
    assert!(resources.iter().all(|r| r["version_info"].as_str().is_some_and(|v| !v.is_empty()) && r["last_updated"].is_string()), "{resources:?}");
    // The stream is ztunnel-type and Delta.
    let req = ads.requests().into_iter().find(|r| r.type_url == ADDRESS).expect("an Address request");
    assert!(req.delta);
    let node = ads.requests().into_iter().filter(|r| r.type_url == ADDRESS).find_map(|r| r.node_id).expect("node id");
    assert!(node.starts_with("ztunnel~127.0.0.1~node-proxy-test.istio-system~istio-system.svc.cluster.local"), "{node}");

    // A workload with a 5-byte address: NACKed naming the field; the others stay.
    let bad = "Kubernetes//Pod/bookinfo/bad-1";
    let mut broken = workload(bad, "bad-1", [10, 0, 0, 1]);
    if let Some(address::Type::Workload(w)) = broken.r#type.as_mut() {
        w.addresses = vec![vec![1, 2, 3, 4, 5]];
    }
    ads.set(ADDRESS, bad, any(ADDRESS, &broken));
    let nack = eventually("a NACK for the bad workload", || ads.requests().into_iter().filter(|r| r.type_url == ADDRESS).find_map(|r| r.error));
    assert!(nack.contains(bad) && nack.contains("addresses[0]") && nack.contains("5 bytes"), "{nack}");
    let d = dump(&proxy);
    assert_eq!(d["workloads"].as_object().map_or(0, |m| m.len()), 2);
    assert!(d["rejected"].as_array().is_some_and(|r| r.iter().any(|x| x["name"] == bad)), "{d}");

    // Delta removal.
    ads.remove(ADDRESS, uid2);
    eventually("the removed workload to go", || (dump(&proxy)["workloads"].as_object().map_or(0, |m| m.len()) == 1).then_some(()));
    assert_eq!(proxy.metric("node_proxy_xds_resources", &[("type_url", AUTHORIZATION), ("state", "active")]), 1.0);
    assert!(proxy.metric("node_proxy_xds_update_rejected_total", &[("type_url", ADDRESS)]) >= 1.0);
}
