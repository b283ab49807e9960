//! The inbound capture (`node_proxy::redirect::inbound_capture`) in the real kernel, in
//! the two-node topology, over IPv4 and IPv6, exactly while pod20's address is in the
//! set:
//! - connections to `<pod20's address>:15008`, from a pod on node1 and from node2
//!   itself, land on the listener node2's proxy would run on 15008;
//! - connections to any other port of it land on the inbound plaintext listener
//!   (15006): from a pod on node1 (across the overlay) and from pod21 beside it on
//!   node2's bridge, but not from node2 itself (host-network traffic, as the kubelet's
//!   probes, is not captured).
//!
//! Needs root.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use node_proxy::redirect::inbound_capture::InboundCapture;
use tests::netns::{in_netns, require_root};
use tests::topology::{Pod, Topology};
use tests::Curl;

/// curl to `http://<ip>:<port>/echo` from `pod` (or from node2's namespace): the
/// origin that answered, or curl's exit code when nothing did.
fn reach(from: Option<&Pod>, node2: &str, ip: IpAddr, port: u16) -> Result<String, i32> {
    let url = format!("http://{}/echo", SocketAddr::new(ip, port));
    let curl = Curl::new(&url).timeout(Duration::from_secs(5));
    let r = match from {
        Some(pod) => pod.curl(curl),
        None => in_netns(Some(node2), || curl.run()),
    };
    if r.status == 200 {
        Ok(r.origin().unwrap_or_default().to_owned())
    } else {
        Err(r.exit_code)
    }
}

#[test]
fn pod_addresses_reach_the_nodes_listeners_while_captured() {
    if !require_root("pod_addresses_reach_the_nodes_listeners_while_captured") {
        return;
    }
    let topo = Topology::create();
    let node2 = topo.nodes[1].ns.name().to_owned();
    // Stand in for node2's HBONE listener ([::]:15008) and inbound plaintext listener
    // ([::]:15006), both dual-stack.
    let _hbone = topo.nodes[1].origin("node2-hbone", "[::]:15008".parse().unwrap());
    let _plaintext = topo.nodes[1].origin("node2-plaintext", "[::]:15006".parse().unwrap());
    let (pod10, pod20, pod21) = (&topo.nodes[0].pods[0], &topo.nodes[1].pods[0], &topo.nodes[1].pods[1]);
    let targets: [IpAddr; 2] = [pod20.ip4.into(), pod20.ip6.into()];
    let hbone = Ok("node2-hbone".to_owned());
    let plaintext = Ok("node2-plaintext".to_owned());

    let capture = in_netns(Some(&node2), || InboundCapture::start(15008, Some(15006))).unwrap_or_else(|e| panic!("start: {e}"));
    for ip in targets {
        assert!(reach(Some(pod10), &node2, ip, 15008).is_err(), "{ip}:15008 reached something before it was captured");
        assert!(reach(Some(pod10), &node2, ip, 8080).is_err(), "{ip}:8080 reached something before it was captured");
    }

    in_netns(Some(&node2), || capture.apply(&targets, &[])).unwrap_or_else(|e| panic!("add: {e}"));
    for ip in targets {
        assert_eq!(reach(Some(pod10), &node2, ip, 15008), hbone, "from pod10 across the overlay to {ip}:15008");
        assert_eq!(reach(None, &node2, ip, 15008), hbone, "from node2 itself (output) to {ip}:15008");
        assert_eq!(reach(Some(pod10), &node2, ip, 8080), plaintext, "from pod10 across the overlay to {ip}:8080");
        assert_eq!(reach(Some(pod21), &node2, ip, 8080), plaintext, "from pod21 on node2's bridge to {ip}:8080");
        assert!(reach(None, &node2, ip, 8080).is_err(), "plaintext from node2 itself to {ip}:8080 is not captured");
    }
    // Another pod's address is left alone.
    assert!(reach(Some(pod10), &node2, pod21.ip4.into(), 15008).is_err(), "pod21 was not captured");
    assert!(reach(Some(pod10), &node2, pod21.ip4.into(), 8080).is_err(), "pod21 was not captured");

    in_netns(Some(&node2), || capture.apply(&[], &targets[..1])).unwrap_or_else(|e| panic!("delete: {e}"));
    assert!(reach(Some(pod10), &node2, targets[0], 15008).is_err(), "{} stays captured after its removal", targets[0]);
    assert!(reach(Some(pod10), &node2, targets[0], 8080).is_err(), "{} stays captured after its removal", targets[0]);
    assert_eq!(reach(Some(pod10), &node2, targets[1], 15008), hbone, "the IPv6 entry is still there");
    assert_eq!(reach(Some(pod10), &node2, targets[1], 8080), plaintext, "the IPv6 entry is still there");

    in_netns(Some(&node2), InboundCapture::remove).unwrap_or_else(|e| panic!("remove: {e}"));
    assert!(reach(Some(pod10), &node2, targets[1], 15008).is_err(), "the table is gone");
    assert!(reach(Some(pod10), &node2, targets[1], 8080).is_err(), "the table is gone");
    // Removing an absent table is fine.
    in_netns(Some(&node2), InboundCapture::remove).unwrap_or_else(|e| panic!("remove again: {e}"));
}

/// Without an inbound plaintext listener only 15008 is captured.
#[test]
fn without_a_plaintext_listener_only_the_hbone_port_is_captured() {
    if !require_root("without_a_plaintext_listener_only_the_hbone_port_is_captured") {
        return;
    }
    let topo = Topology::create();
    let node2 = topo.nodes[1].ns.name().to_owned();
    let _hbone = topo.nodes[1].origin("node2-hbone", "[::]:15008".parse().unwrap());
    let _plaintext = topo.nodes[1].origin("node2-plaintext", "[::]:15006".parse().unwrap());
    let (pod10, pod20) = (&topo.nodes[0].pods[0], &topo.nodes[1].pods[0]);
    let capture = in_netns(Some(&node2), || InboundCapture::start(15008, None)).unwrap_or_else(|e| panic!("start: {e}"));
    in_netns(Some(&node2), || capture.apply(&[pod20.ip4.into()], &[])).unwrap_or_else(|e| panic!("add: {e}"));
    assert_eq!(reach(Some(pod10), &node2, pod20.ip4.into(), 15008), Ok("node2-hbone".to_owned()));
    assert!(reach(Some(pod10), &node2, pod20.ip4.into(), 8080).is_err(), "port 8080 is left alone");
    in_netns(Some(&node2), InboundCapture::remove).unwrap_or_else(|e| panic!("remove: {e}"));
}

/// Where the pods' outbound connections are redirected by nftables as well (the
/// fallback redirect, `node_proxy::redirect::nftables`), a local pod's connection to a
/// captured pod goes to the proxy's outbound port, with the pod's identity, not to the
/// plaintext listener; a peer's `:15008` still reaches the HBONE listener.
#[test]
fn an_outbound_nftables_redirect_takes_local_pods_first() {
    if !require_root("an_outbound_nftables_redirect_takes_local_pods_first") {
        return;
    }
    use node_proxy::redirect::nftables::Nftables;
    let topo = Topology::create();
    let node2 = topo.nodes[1].ns.name().to_owned();
    let _hbone = topo.nodes[1].origin("node2-hbone", "[::]:15008".parse().unwrap());
    let _plaintext = topo.nodes[1].origin("node2-plaintext", "[::]:15006".parse().unwrap());
    let _outbound = topo.nodes[1].origin("node2-outbound", "[::]:15001".parse().unwrap());
    let (pod10, pod20, pod21) = (&topo.nodes[0].pods[0], &topo.nodes[1].pods[0], &topo.nodes[1].pods[1]);
    let ip: IpAddr = pod20.ip4.into();
    // Both tables hold pod20's address (every port): the redirect set of a meshed pod.
    let capture = in_netns(Some(&node2), || InboundCapture::start(15008, Some(15006))).unwrap_or_else(|e| panic!("start: {e}"));
    in_netns(Some(&node2), || capture.apply(&[ip], &[])).unwrap_or_else(|e| panic!("add: {e}"));
    let outbound = in_netns(Some(&node2), || Nftables::start(15001)).unwrap_or_else(|e| panic!("nftables: {e}"));
    in_netns(Some(&node2), || outbound.apply(&[SocketAddr::new(ip, 0)], &[])).unwrap_or_else(|e| panic!("nftables add: {e}"));

    assert_eq!(reach(Some(pod21), &node2, ip, 8080), Ok("node2-outbound".to_owned()), "pod21's own connection goes to its proxy");
    assert_eq!(reach(Some(pod10), &node2, ip, 15008), Ok("node2-hbone".to_owned()), "a peer's tunnel reaches the HBONE listener");

    in_netns(Some(&node2), Nftables::remove).unwrap_or_else(|e| panic!("nftables remove: {e}"));
    in_netns(Some(&node2), InboundCapture::remove).unwrap_or_else(|e| panic!("remove: {e}"));
}
