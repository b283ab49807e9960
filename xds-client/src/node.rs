//! The Envoy `Node` a stream presents to istiod, for the two kinds of client the node
//! proxy is: ztunnel-type (workload API: the node's L4 view) and sidecar-type (Envoy
//! resources generated for a proxy in one namespace). istiod derives the proxy type,
//! IP, pod and namespace from the id, and reads the metadata keys Istio's agent sets.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};

/// Who the stream acts for.
#[derive(Clone, Debug, Default)]
pub struct NodeIdentity {
    /// The proxy's IP(s); the first goes into the node id.
    pub ips: Vec<String>,
    pub pod_name: String,
    pub namespace: String,
    /// `cluster.local` unless the mesh uses another DNS domain.
    pub dns_domain: String,
    /// Istio's cluster id (`CLUSTER_ID`, default `Kubernetes`).
    pub cluster_id: String,
    pub istio_version: String,
    pub service_account: String,
    /// The Kubernetes node name.
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
}

fn string(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.to_owned())) }
}

fn node_id(kind: &str, id: &NodeIdentity) -> String {
    let ip = id.ips.first().map(String::as_str).unwrap_or("127.0.0.1");
    let domain = if id.dns_domain.is_empty() { "cluster.local" } else { &id.dns_domain };
    format!("{kind}~{ip}~{}.{}~{}.svc.{domain}", id.pod_name, id.namespace, id.namespace)
}

fn common_metadata(id: &NodeIdentity) -> BTreeMap<String, Value> {
    let mut md = BTreeMap::new();
    md.insert("ISTIO_VERSION".to_owned(), string(&id.istio_version));
    md.insert("CLUSTER_ID".to_owned(), string(if id.cluster_id.is_empty() { "Kubernetes" } else { &id.cluster_id }));
    md.insert("NAMESPACE".to_owned(), string(&id.namespace));
    md.insert("NAME".to_owned(), string(&id.pod_name));
    md.insert("INSTANCE_IPS".to_owned(), string(&id.ips.join(",")));
    if !id.service_account.is_empty() {
        md.insert("SERVICE_ACCOUNT".to_owned(), string(&id.service_account));
    }
    if !id.node_name.is_empty() {
        md.insert("NODE_NAME".to_owned(), string(&id.node_name));
    }
    md
}

fn node(id_string: String, metadata: BTreeMap<String, Value>) -> Node {
    Node { id: id_string, metadata: Some(Struct { fields: metadata.into_iter().collect() }), user_agent_name: "node-proxy".to_owned(), ..Default::default() }
}

/// `ztunnel~IP~pod.ns~ns.svc.cluster.local`: istiod's workload-API generator.
pub fn ztunnel(id: &NodeIdentity) -> Node {
    node(node_id("ztunnel", id), common_metadata(id))
}

/// `sidecar~IP~pod.ns~ns.svc.cluster.local` with the labels and interception mode
/// istiod uses to select Sidecar resources and build listeners.
pub fn sidecar(id: &NodeIdentity) -> Node {
    let mut md = common_metadata(id);
    let labels = Struct { fields: id.labels.iter().map(|(k, v)| (k.clone(), string(v))).collect() };
    md.insert("LABELS".to_owned(), Value { kind: Some(Kind::StructValue(labels)) });
    md.insert("INTERCEPTION_MODE".to_owned(), string("REDIRECT"));
    if let Some(app) = id.labels.get("app") {
        md.insert("WORKLOAD_NAME".to_owned(), string(app));
    }
    md.insert("ISTIO_META_DNS_CAPTURE".to_owned(), string("false"));
    md.insert("APP_CONTAINERS".to_owned(), Value { kind: Some(Kind::ListValue(ListValue { values: Vec::new() })) });
    node(node_id("sidecar", id), md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> NodeIdentity {
        NodeIdentity {
            ips: vec!["10.1.2.3".into()],
            pod_name: "node-proxy-abcde".into(),
            namespace: "istio-system".into(),
            istio_version: "1.28.0".into(),
            labels: [("app".to_string(), "node-proxy".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_are_what_istiod_parses() {
        assert_eq!(ztunnel(&id()).id, "ztunnel~10.1.2.3~node-proxy-abcde.istio-system~istio-system.svc.cluster.local");
        let s = sidecar(&id());
        assert_eq!(s.id, "sidecar~10.1.2.3~node-proxy-abcde.istio-system~istio-system.svc.cluster.local");
        let md = s.metadata.unwrap().fields;
        assert_eq!(md["CLUSTER_ID"], string("Kubernetes"));
        assert!(matches!(&md["LABELS"].kind, Some(Kind::StructValue(l)) if l.fields["app"] == string("node-proxy")));
    }
}
