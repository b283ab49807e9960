//! The inbound HBONE capture (`node_proxy::redirect::hbone_capture`) in the real
//! kernel, in the two-node topology: connections from a pod on node1, and from node2
//! itself, to `<pod20's address>:15008` land on the listener node2's proxy would
//! run on 15008 — over IPv4 and IPv6 — exactly while pod20's address is in the set.
//! Needs root.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use node_proxy::redirect::hbone_capture::HboneCapture;
use tests::netns::{in_netns, require_root};
use tests::topology::{Pod, Topology};
use tests::Curl;

/// curl to `http://<ip>:15008/echo` from `pod` (or from node2's namespace): the
/// origin that answered, or curl's exit code when nothing did.
fn reach(from: Option<&Pod>, node2: &str, ip: IpAddr) -> Result<String, i32> {
    let url = format!("http://{}/echo", SocketAddr::new(ip, 15008));
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
fn pod_addresses_on_15008_reach_the_nodes_listener_while_captured() {
    if !require_root("pod_addresses_on_15008_reach_the_nodes_listener_while_captured") {
        return;
    }
    let topo = Topology::create();
    let node2 = topo.nodes[1].ns.name().to_owned();
    // Stands in for node2's HBONE listener ([::]:15008, dual-stack).
    let _listener = topo.nodes[1].origin("node2-hbone", "[::]:15008".parse().unwrap());
    let pod10 = &topo.nodes[0].pods[0];
    let pod20 = &topo.nodes[1].pods[0];
    let targets: [IpAddr; 2] = [pod20.ip4.into(), pod20.ip6.into()];

    let capture = in_netns(Some(&node2), || HboneCapture::start(15008)).unwrap_or_else(|e| panic!("start: {e}"));
    for ip in targets {
        assert!(reach(Some(pod10), &node2, ip).is_err(), "{ip}:15008 reached something before it was captured");
    }

    in_netns(Some(&node2), || capture.apply(&targets, &[])).unwrap_or_else(|e| panic!("add: {e}"));
    for ip in targets {
        assert_eq!(reach(Some(pod10), &node2, ip), Ok("node2-hbone".to_owned()), "from pod10 across the overlay to {ip}:15008");
        assert_eq!(reach(None, &node2, ip), Ok("node2-hbone".to_owned()), "from node2 itself (output) to {ip}:15008");
    }
    // Another pod's address, and another port of the captured one, are left alone.
    assert!(reach(Some(pod10), &node2, topo.nodes[1].pods[1].ip4.into()).is_err(), "pod21 was not captured");
    let other_port = pod10.curl(Curl::new(&format!("http://{}:15009/", pod20.ip4)).timeout(Duration::from_secs(5)));
    assert_ne!(other_port.status, 200, "only port 15008 is captured");

    in_netns(Some(&node2), || capture.apply(&[], &targets[..1])).unwrap_or_else(|e| panic!("delete: {e}"));
    assert!(reach(Some(pod10), &node2, targets[0]).is_err(), "{} stays captured after its removal", targets[0]);
    assert_eq!(reach(Some(pod10), &node2, targets[1]), Ok("node2-hbone".to_owned()), "the IPv6 entry is still there");

    in_netns(Some(&node2), HboneCapture::remove).unwrap_or_else(|e| panic!("remove: {e}"));
    assert!(reach(Some(pod10), &node2, targets[1]).is_err(), "the table is gone");
    // Removing an absent table is fine.
    in_netns(Some(&node2), HboneCapture::remove).unwrap_or_else(|e| panic!("remove again: {e}"));
}
