//! Inbound capture for this node's meshed (HBONE) pods, as ztunnel's in-pod rules do it:
//! - connections to `<pod IP>:15008` (where an HBONE peer, ztunnel or another node
//!   proxy, dials a meshed pod) land on this proxy's HBONE listener, which terminates
//!   them for the pod;
//! - with an inbound plaintext listener (Istio's 15006), connections to any other TCP
//!   port of those pods land on it, so that plaintext from outside the mesh meets the
//!   pod's PeerAuthentication and authorization policies instead of passing around them.
//!
//! The packets pass through the node's namespace on their way to the pod (from the
//! overlay; from a pod on the same bridge through the bridge's netfilter hooks,
//! `net.bridge.bridge-nf-call-iptables`, on by default and which Kubernetes nodes need
//! for kube-proxy; for a proxy on the same node, from `output`), and an nftables
//! REDIRECT sends them to the proxy's port instead. The listener learns which pod a
//! connection was meant for from conntrack (`SO_ORIGINAL_DST`).
//!
//! What is not captured: plaintext from the node itself (`output`: host-network
//! processes such as the kubelet's probes, which Istio exempts too, and the proxy's own
//! connections to the pods), and anything that never leaves the pod. Conntrack tracks
//! every connection of the namespace once this table exists; the eBPF redirect of the
//! pods' outbound connections does not rely on it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use istio_compat::model::workload::{TunnelProtocol, Workload, WorkloadModel};

use super::nftables::{apply_elements, delete_table, run_nft};

/// The table, in family `inet`.
pub const TABLE: &str = "node_proxy_inbound";

/// The capture's table exists while this lives (and after, until [`InboundCapture::remove`]).
#[derive(Debug)]
pub struct InboundCapture {
    _private: (),
}

impl InboundCapture {
    /// (Re)creates the table with empty address sets, redirecting TCP to
    /// `<address in the set>:15008` to `hbone_port` on the node, and (with
    /// `plaintext_port`) TCP from elsewhere to any other port of those addresses to it.
    ///
    /// The first NAT chain of a hook that redirects a new connection decides it, in
    /// priority order. HBONE goes first (`dstnat - 1`), so that a peer's tunnel always
    /// reaches the HBONE listener; plaintext last (`dstnat + 1`), so that where the
    /// pods' outbound connections are redirected by nftables too ([`super::nftables`],
    /// at `dstnat`), a local pod's connection goes to its own proxy first, with its
    /// identity, rather than here without one.
    pub fn start(hbone_port: u16, plaintext_port: Option<u16>) -> Result<InboundCapture, String> {
        let hbone = crate::hbone::PORT;
        let plaintext = match plaintext_port {
            Some(port) => format!(
                "
  chain plaintext {{
    type nat hook prerouting priority dstnat + 1; policy accept;
    meta l4proto tcp ip daddr @local4 redirect to :{port}
    meta l4proto tcp ip6 daddr @local6 redirect to :{port}
  }}"
            ),
            None => String::new(),
        };
        let script = format!(
            "table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  set local4 {{ type ipv4_addr; }}
  set local6 {{ type ipv6_addr; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat - 1; policy accept;
    tcp dport {hbone} ip daddr @local4 redirect to :{hbone_port}
    tcp dport {hbone} ip6 daddr @local6 redirect to :{hbone_port}
  }}{plaintext}
  chain output {{
    type nat hook output priority -100; policy accept;
    tcp dport {hbone} ip daddr @local4 redirect to :{hbone_port}
    tcp dport {hbone} ip6 daddr @local6 redirect to :{hbone_port}
  }}
}}
"
        );
        run_nft(&script)?;
        Ok(InboundCapture { _private: () })
    }

    /// Adds and deletes pod addresses in one transaction.
    pub fn apply(&self, add: &[IpAddr], remove: &[IpAddr]) -> Result<(), String> {
        apply_elements(add, remove, |verb, ip| element(verb, *ip))
    }

    /// Deletes the table. Absent is fine.
    pub fn remove() -> Result<(), String> {
        delete_table(TABLE)
    }
}

fn element(verb: &str, ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let set = if ip.is_ipv4() { "local4" } else { "local6" };
    format!("{verb} element inet {TABLE} {set} {{ {ip} }}\n")
}

/// The addresses to capture: those of the HBONE workloads on `node` (on `network`).
pub fn local_hbone_addresses(model: &WorkloadModel, network: &str, node: &str) -> BTreeSet<IpAddr> {
    local_hbone_workloads(model, node).flat_map(|w| w.addresses.iter().copied().filter(|ip| w.has_address(network, *ip))).collect()
}

/// The HBONE workloads on `node` (none for an unnamed node).
pub fn local_hbone_workloads<'a>(model: &'a WorkloadModel, node: &'a str) -> impl Iterator<Item = &'a Workload> + 'a {
    model.workloads.values().map(|w| &**w).filter(move |w| w.tunnel == TunnelProtocol::Hbone && &*w.node == node && !node.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use istio_compat::model::workload::AddressResource;
    use std::sync::Arc;

    #[test]
    fn elements_by_family() {
        assert_eq!(element("add", "198.18.2.10".parse().unwrap()), "add element inet node_proxy_inbound local4 { 198.18.2.10 }\n");
        assert_eq!(element("add", "::ffff:198.18.2.10".parse().unwrap()), "add element inet node_proxy_inbound local4 { 198.18.2.10 }\n");
        assert_eq!(element("delete", "fd00:18:2::10".parse().unwrap()), "delete element inet node_proxy_inbound local6 { fd00:18:2::10 }\n");
    }

    #[test]
    fn only_this_nodes_hbone_workloads_are_captured() {
        let mut m = WorkloadModel::default();
        for (name, ip, node, tunnel, mode) in [
            ("a", "198.18.2.10", "node2", "HBONE", "STANDARD"),
            ("b", "fd00:18:2::11", "node2", "HBONE", "STANDARD"),
            ("c", "198.18.2.12", "node2", "NONE", "STANDARD"),
            ("d", "198.18.1.10", "node1", "HBONE", "STANDARD"),
            ("e", "198.18.2.1", "node2", "HBONE", "HOST_NETWORK"),
        ] {
            let w = serde_json::json!({ "uid": format!("Kubernetes//Pod/ns/{name}"), "addresses": [ip], "node": node, "tunnel": tunnel,
                "network_mode": mode, "identity": format!("spiffe://cluster.local/ns/ns/sa/{name}") });
            m.insert_address(AddressResource::Workload(Arc::new(serde_json::from_value(w).unwrap())));
        }
        let got: Vec<String> = local_hbone_addresses(&m, "", "node2").iter().map(ToString::to_string).collect();
        assert_eq!(got, ["198.18.2.10", "fd00:18:2::11"]);
    }
}
