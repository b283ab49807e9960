//! Whether an upstream connection goes through HBONE, and with what: ztunnel's
//! outbound decision for a chosen endpoint, from the workload API's view.
//!
//! An endpoint whose workload speaks HBONE (`tunnel: HBONE`, an ambient pod) is
//! reached by a `CONNECT` to `<its IP>:15008`, presenting the *source* workload's
//! identity and accepting the destination workload's identity (plus the service's
//! SAN list, when istiod gives one). Anything else (an unknown address, a workload
//! outside the mesh) is plain TCP to the endpoint.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use istio_compat::model::workload::{AddressIndex, Identity, TunnelProtocol, Workload, WorkloadType};

use super::client::ConnectHeaders;

/// How to reach one endpoint.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// Plain TCP to the endpoint.
    Plain(SocketAddr),
    Hbone(Tunnel),
}

/// An HBONE leg: dial `gateway`, `CONNECT` to `target`.
#[derive(Clone, Debug)]
pub struct Tunnel {
    pub gateway: SocketAddr,
    pub target: SocketAddr,
    /// The workload we act for (its certificate is presented).
    pub source: Arc<Workload>,
    pub destination: Arc<Workload>,
    /// The peer identities accepted: the destination workload's, then the service's SANs.
    pub identities: Vec<Identity>,
}

/// Why no upstream could be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no workload on network {network:?} has the source address {ip}: the proxy cannot speak for it (is the pod known to istiod, and is its address on the node?)")]
    UnknownSource { network: String, ip: IpAddr },
    #[error("the source workload {uid} runs on node {node:?}, not on this proxy's node {ours:?}: this proxy does not act for it")]
    NotLocal { uid: String, node: String, ours: String },
    #[error("destination workload {uid} is behind a waypoint: waypoints are not supported yet, the connection is refused rather than sent around its policy")]
    Waypoint { uid: String },
}

/// Plans the leg from the workload at `source` (network `network`) to `endpoint`.
pub fn plan(index: &AddressIndex, network: &str, source: IpAddr, endpoint: SocketAddr, service_sans: &[Identity]) -> Result<Upstream, PlanError> {
    let Some(destination) = index.workload(network, endpoint.ip()) else {
        return Ok(Upstream::Plain(endpoint));
    };
    if destination.tunnel != TunnelProtocol::Hbone {
        return Ok(Upstream::Plain(endpoint));
    }
    if destination.waypoint.is_some() {
        return Err(PlanError::Waypoint { uid: destination.uid.to_string() });
    }
    let Some(source) = index.workload(network, source) else {
        return Err(PlanError::UnknownSource { network: network.to_owned(), ip: source });
    };
    let mut identities = vec![destination.identity.clone()];
    for san in service_sans {
        if !identities.contains(san) {
            identities.push(san.clone());
        }
    }
    Ok(Upstream::Hbone(Tunnel {
        gateway: SocketAddr::new(endpoint.ip(), super::PORT),
        target: endpoint,
        source: source.clone(),
        destination: destination.clone(),
        identities,
    }))
}

impl Tunnel {
    /// The `CONNECT`'s headers: the source's baggage, `forwarded: for=<source ip>`,
    /// and the connection's trace context.
    pub fn headers(&self, source_ip: IpAddr, cluster: &str, traceparent: Option<String>) -> ConnectHeaders {
        ConnectHeaders { baggage: Some(baggage(&self.source, cluster)), forwarded_for: Some(source_ip), traceparent }
    }
}

/// The `baggage` header describing a source workload, as ztunnel writes it.
pub fn baggage(source: &Workload, cluster: &str) -> String {
    let kind = match source.workload_type {
        WorkloadType::Deployment => "deployment",
        WorkloadType::Cronjob => "cronjob",
        WorkloadType::Pod => "pod",
        WorkloadType::Job => "job",
    };
    let cluster = if source.cluster_id.is_empty() { cluster } else { &source.cluster_id };
    format!(
        "k8s.cluster.name={cluster},k8s.namespace.name={},k8s.{kind}.name={},service.name={},service.version={}",
        source.namespace, source.workload_name, source.canonical_name, source.canonical_revision
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use istio_compat::model::workload::{AddressResource, WorkloadModel};
    use serde_json::json;

    fn workload(name: &str, ip: &str, node: &str, tunnel: &str, extra: serde_json::Value) -> Workload {
        let mut v = json!({
            "uid": format!("Kubernetes//Pod/ns1/{name}"), "name": name, "namespace": "ns1", "addresses": [ip], "node": node,
            "tunnel": tunnel, "identity": format!("spiffe://cluster.local/ns/ns1/sa/{name}"),
            "workload_name": name, "canonical_name": name, "canonical_revision": "v1",
        });
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    fn index(ws: Vec<Workload>) -> AddressIndex {
        let mut m = WorkloadModel::default();
        for w in ws {
            m.insert_address(AddressResource::Workload(Arc::new(w)));
        }
        AddressIndex::new(&m)
    }

    #[test]
    fn an_hbone_endpoint_is_tunnelled_to_port_15008_with_both_identities() {
        let idx = index(vec![workload("client", "198.18.1.10", "node1", "HBONE", json!({})), workload("server", "198.18.2.10", "node2", "HBONE", json!({}))]);
        let sans = [Identity::new("cluster.local", "ns1", "alt"), Identity::new("cluster.local", "ns1", "server")];
        let Upstream::Hbone(t) = plan(&idx, "", "198.18.1.10".parse().unwrap(), "198.18.2.10:8080".parse().unwrap(), &sans).unwrap() else {
            panic!("not tunnelled")
        };
        assert_eq!(t.gateway, "198.18.2.10:15008".parse().unwrap());
        assert_eq!(t.target, "198.18.2.10:8080".parse().unwrap());
        assert_eq!(t.source.identity.to_string(), "spiffe://cluster.local/ns/ns1/sa/client");
        let ids: Vec<String> = t.identities.iter().map(ToString::to_string).collect();
        assert_eq!(ids, ["spiffe://cluster.local/ns/ns1/sa/server", "spiffe://cluster.local/ns/ns1/sa/alt"]);
        let h = t.headers("198.18.1.10".parse().unwrap(), "Kubernetes", None);
        assert_eq!(
            h.baggage.as_deref(),
            Some("k8s.cluster.name=Kubernetes,k8s.namespace.name=ns1,k8s.deployment.name=client,service.name=client,service.version=v1")
        );
    }

    #[test]
    fn plain_workloads_and_unknown_addresses_are_plain_tcp() {
        let idx = index(vec![workload("legacy", "198.18.2.11", "node2", "NONE", json!({}))]);
        for dst in ["198.18.2.11:80", "203.0.113.9:443"] {
            let dst: SocketAddr = dst.parse().unwrap();
            assert!(matches!(plan(&idx, "", "198.18.1.10".parse().unwrap(), dst, &[]), Ok(Upstream::Plain(a)) if a == dst));
        }
    }

    #[test]
    fn an_unknown_source_cannot_be_spoken_for() {
        let idx = index(vec![workload("server", "198.18.2.10", "node2", "HBONE", json!({}))]);
        let e = plan(&idx, "", "198.18.1.99".parse().unwrap(), "198.18.2.10:80".parse().unwrap(), &[]).unwrap_err();
        assert!(matches!(e, PlanError::UnknownSource { .. }), "{e}");
        assert!(e.to_string().contains("198.18.1.99"), "{e}");
    }

    #[test]
    fn a_waypointed_destination_is_refused_not_bypassed() {
        let waypoint = json!({ "waypoint": { "destination": { "address": "/198.18.3.1" }, "hbone_mtls_port": 15008 } });
        let idx = index(vec![workload("client", "198.18.1.10", "node1", "HBONE", json!({})), workload("server", "198.18.2.10", "node2", "HBONE", waypoint)]);
        let e = plan(&idx, "", "198.18.1.10".parse().unwrap(), "198.18.2.10:80".parse().unwrap(), &[]).unwrap_err();
        assert!(matches!(e, PlanError::Waypoint { .. }), "{e}");
    }
}
