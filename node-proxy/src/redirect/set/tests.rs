use std::sync::Arc;

use istio_compat::model::workload::WorkloadModel;

use super::*;
use crate::config::load_text;

const PROXY: &str = "198.18.1.1:15001";

fn snapshot(yaml: &str) -> Snapshot {
    let loaded = load_text(yaml, "test").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Snapshot::build(loaded.model, Arc::new(loaded.source), None)
}

fn set(yaml: &str, workloads: &WorkloadModel) -> BTreeSet<SocketAddr> {
    RedirectSet::compute(&snapshot(yaml), workloads, PROXY.parse().unwrap()).destinations
}

fn addrs(list: &[&str]) -> BTreeSet<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// A cluster with static endpoints and, optionally, an upstream TLS transport socket.
fn cluster(name: &str, endpoints: &[&str], tls: bool) -> String {
    let eps: String = endpoints
        .iter()
        .map(|e| {
            let a: SocketAddr = e.parse().unwrap();
            format!("      - endpoint: {{ address: {{ socket_address: {{ address: \"{}\", port_value: {} }} }} }}\n", a.ip(), a.port())
        })
        .collect();
    let tls = if tls {
        "  transport_socket:\n    name: tls\n    typed_config:\n      \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n      sni: svc\n"
    } else {
        ""
    };
    format!(
        "- name: {name}\n  type: STATIC\n  connect_timeout: 1s\n{tls}  load_assignment:\n    cluster_name: {name}\n    endpoints:\n    - lb_endpoints:\n{eps}"
    )
}

fn http_listener(name: &str, address: &str, port: u16, bind: bool, domains: &[&str], cluster: &str) -> String {
    format!(
        r#"- name: {name}
  address: {{ socket_address: {{ address: "{address}", port_value: {port} }} }}
  bind_to_port: {bind}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: {name}
        route_config:
          name: {name}
          virtual_hosts:
          - name: svc
            domains: {domains:?}
            routes:
            - match: {{ prefix: / }}
              route: {{ cluster: {cluster} }}
        http_filters:
        - name: envoy.filters.http.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

fn tcp_listener(name: &str, address: &str, port: u16, cluster: &str) -> String {
    format!(
        r#"- name: {name}
  address: {{ socket_address: {{ address: "{address}", port_value: {port} }} }}
  bind_to_port: false
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: {name}
        cluster: {cluster}
"#
    )
}

fn bootstrap(listeners: &[String], clusters: &[String]) -> String {
    let indent = |items: &[String]| items.concat().lines().map(|l| format!("  {l}\n")).collect::<String>();
    format!("static_resources:\n  listeners:\n{}  clusters:\n{}", indent(listeners), indent(clusters))
}

#[test]
fn an_http_listener_for_a_vip_redirects_the_vip_and_its_endpoints() {
    let yaml = bootstrap(
        &[http_listener("198.18.100.1_80", "198.18.100.1", 80, false, &["*"], "reviews")],
        &[cluster("reviews", &["198.18.2.10:9080", "198.18.2.11:9080"], false)],
    );
    assert_eq!(set(&yaml, &WorkloadModel::default()), addrs(&["198.18.100.1:80", "198.18.2.10:9080", "198.18.2.11:9080"]));
}

#[test]
fn a_wildcard_http_listener_redirects_the_services_its_routes_name() {
    let yaml = bootstrap(
        &[http_listener(
            "0.0.0.0_8080",
            "0.0.0.0",
            8080,
            false,
            &["reviews.default.svc.cluster.local", "198.18.100.2", "198.18.100.3:8080", "198.18.100.4:9999"],
            "reviews",
        )],
        &[cluster("reviews", &["198.18.2.10:9080"], false)],
    );
    // A domain with another port is for another listener.
    assert_eq!(set(&yaml, &WorkloadModel::default()), addrs(&["198.18.100.2:8080", "198.18.100.3:8080", "198.18.2.10:9080"]));
}

#[test]
fn plain_tcp_is_left_to_the_kernel_and_tls_origination_is_not() {
    let plain = bootstrap(&[tcp_listener("198.18.100.5_9042", "198.18.100.5", 9042, "cassandra")], &[cluster("cassandra", &["198.18.2.20:9042"], false)]);
    assert_eq!(set(&plain, &WorkloadModel::default()), BTreeSet::new());
    let tls = bootstrap(&[tcp_listener("198.18.100.5_9042", "198.18.100.5", 9042, "cassandra")], &[cluster("cassandra", &["198.18.2.20:9042"], true)]);
    assert_eq!(set(&tls, &WorkloadModel::default()), addrs(&["198.18.100.5:9042", "198.18.2.20:9042"]));
}

#[test]
fn bound_listeners_loopback_and_the_proxy_itself_are_never_redirected() {
    let yaml = bootstrap(
        &[
            http_listener("bound", "198.18.100.6", 80, true, &["*"], "c"),
            http_listener("loopback", "127.0.0.1", 80, false, &["*"], "c"),
            http_listener("self", "198.18.1.1", 15001, false, &["*"], "c"),
        ],
        &[cluster("c", &["127.0.0.1:9080"], false)],
    );
    assert_eq!(set(&yaml, &WorkloadModel::default()), BTreeSet::new());
}

#[test]
fn mesh_workloads_are_redirected_on_every_port_and_their_services_on_theirs() {
    let dump = serde_json::json!({
        "workloads": [
            {"uid": "Kubernetes//Pod/default/a", "name": "a", "namespace": "default", "workloadIps": ["198.18.2.30"], "protocol": "HBONE",
             "serviceAccount": "a", "node": "node2", "services": {"default/a.default.svc.cluster.local": {"80": 8080}}},
            {"uid": "Kubernetes//Pod/default/b", "name": "b", "namespace": "default", "workloadIps": ["198.18.2.31"], "protocol": "TCP",
             "serviceAccount": "b", "node": "node2", "services": {"default/b.default.svc.cluster.local": {"80": 8080}}}
        ],
        "services": [
            {"name": "a", "namespace": "default", "hostname": "a.default.svc.cluster.local", "vips": ["/198.18.100.7"], "ports": {"80": 8080}},
            {"name": "b", "namespace": "default", "hostname": "b.default.svc.cluster.local", "vips": ["/198.18.100.8"], "ports": {"80": 8080}}
        ]
    });
    let workloads = istio_compat::translate::workload::from_ztunnel_dump(&dump).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set("static_resources: {}\n", &workloads), addrs(&["198.18.2.30:0", "198.18.100.7:80"]));
}
