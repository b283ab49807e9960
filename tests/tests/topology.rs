//! The two-node topology ([`tests::topology`]) against the real kernel: pods reach
//! each other across the VXLAN overlay (IPv4, IPv6, v4-mapped) and on the same node's
//! bridge, reach their node's address, run in their own cgroup and namespace, and
//! everything is gone once the topology is dropped. Needs root.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::clients::Background;
use tests::netns::{require_root, run};
use tests::topology::{Pod, Topology};
use tests::Curl;

const PORT: u16 = 8080;

/// curl from `pod` to `addr`: asserts a 200 from origin `name` that saw `pod`'s own
/// address (of `addr`'s family) as the peer.
fn assert_curl_reaches(pod: &Pod, addr: SocketAddr, name: &str) {
    let r = pod.curl(Curl::new(&format!("http://{addr}/echo")).timeout(Duration::from_secs(10)));
    assert_eq!(r.status, 200, "{} -> {addr}: exit {} {}", pod.name, r.exit_code, r.stderr);
    assert_eq!(r.origin(), Some(name), "{} -> {addr}", pod.name);
    let own: IpAddr = if addr.is_ipv4() { pod.ip4.into() } else { pod.ip6.into() };
    let peer: SocketAddr = r.json()["peer"].as_str().expect("peer").parse().expect("peer address");
    assert_eq!(peer.ip(), own, "{} -> {addr}: the origin saw another peer", pod.name);
}

/// The network namespace of `pid`, as `/proc/<pid>/ns/net` names it: `net:[inode]`.
fn netns_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("readlink ns/net").display().to_string()
}

/// `net:[inode]` of a named namespace.
fn netns_id(name: &str) -> String {
    format!("net:[{}]", std::fs::metadata(Path::new("/run/netns").join(name)).expect("netns file").ino())
}

/// The cgroup v2 path of `pid` (`0::<path>` in `/proc/<pid>/cgroup`).
fn cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/pid/cgroup");
    text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or_else(|| panic!("no cgroup v2 line in {text}")).to_owned()
}

/// Runs `argv` to completion; its stdout.
fn output(argv: &[String]) -> String {
    let args: Vec<&str> = argv[1..].iter().map(String::as_str).collect();
    run(&argv[0], &args)
}

#[test]
fn pods_on_different_nodes_talk_over_the_vxlan_overlay() {
    if !require_root("pods_on_different_nodes_talk_over_the_vxlan_overlay") {
        return;
    }
    let topo = Topology::create();
    let [node1, node2] = &topo.nodes;
    let (client, server) = (&node1.pods[0], &node2.pods[1]);
    let origin4 = server.origin("server-v4", SocketAddr::new(server.ip4.into(), PORT));
    let origin6 = server.origin("server-v6", SocketAddr::new(server.ip6.into(), PORT));
    let (tx_before, _) = node1.vxlan_packets();
    let (_, rx_before) = node2.vxlan_packets();

    assert_curl_reaches(client, origin4.addr(), "server-v4");
    assert_curl_reaches(client, origin6.addr(), "server-v6");

    // A plain socket, as an application would dial, for each address family; the
    // v4-mapped destination goes out of an AF_INET6 socket as IPv4.
    let mapped = SocketAddr::new(server.ip4.to_ipv6_mapped().into(), PORT);
    for (dst, name) in [(origin4.addr(), "server-v4"), (origin6.addr(), "server-v6"), (mapped, "server-v4")] {
        let d = client.dial(dst, "/echo");
        assert_eq!(d.status(), 200, "dial {dst}: {}", d.response);
        assert_eq!(d.header("x-origin").as_deref(), Some(name), "dial {dst}: {}", d.response);
        assert_eq!(d.peer, dst, "getpeername() of a direct connection is its destination");
    }
    let peers4: Vec<IpAddr> = origin4.requests().iter().map(|r| r.peer.ip()).collect();
    assert_eq!(peers4, vec![IpAddr::from(client.ip4); 3], "curl, dial and the v4-mapped dial, all from the client pod");
    assert!(origin6.requests().iter().all(|r| r.peer.ip() == IpAddr::from(client.ip6)), "{:?}", origin6.requests());

    let (tx_after, _) = node1.vxlan_packets();
    let (_, rx_after) = node2.vxlan_packets();
    assert!(tx_after > tx_before, "node1 vx0 sent nothing: tx {tx_before} -> {tx_after}");
    assert!(rx_after > rx_before, "node2 vx0 received nothing: rx {rx_before} -> {rx_after}");
}

#[test]
fn pods_reach_a_pod_and_the_node_on_their_own_bridge() {
    if !require_root("pods_reach_a_pod_and_the_node_on_their_own_bridge") {
        return;
    }
    let topo = Topology::create();
    let node = &topo.nodes[0];
    let (client, neighbour) = (&node.pods[0], &node.pods[1]);
    let pod4 = neighbour.origin("neighbour-v4", SocketAddr::new(neighbour.ip4.into(), PORT));
    let pod6 = neighbour.origin("neighbour-v6", SocketAddr::new(neighbour.ip6.into(), PORT));
    let node4 = node.origin("node-v4", SocketAddr::new(node.ip4.into(), PORT));
    let node6 = node.origin("node-v6", SocketAddr::new(node.ip6.into(), PORT));
    assert_eq!(node4.addr(), "198.18.1.1:8080".parse().unwrap());

    assert_curl_reaches(client, pod4.addr(), "neighbour-v4");
    assert_curl_reaches(client, pod6.addr(), "neighbour-v6");
    assert_curl_reaches(client, node4.addr(), "node-v4");
    assert_curl_reaches(client, node6.addr(), "node-v6");
    let d = client.dial(node4.addr(), "/echo");
    assert_eq!((d.status(), d.peer), (200, node4.addr()), "{}", d.response);
}

#[test]
fn pod_and_proxy_processes_run_in_their_cgroup_and_namespace() {
    if !require_root("pod_and_proxy_processes_run_in_their_cgroup_and_namespace") {
        return;
    }
    let topo = Topology::create();
    let node = &topo.nodes[1];
    let pod = &node.pods[1];

    // Pod::command: the child is in both before it runs (spawn returns after exec).
    let mut cmd = pod.command("sleep");
    cmd.arg("60");
    let sleep = Background::spawn(cmd, "sleep");
    let pid = sleep.id();
    assert_eq!(cgroup_of(pid), pod.cgroup.relative());
    assert_eq!(pod.cgroup.procs(), vec![pid]);
    assert_eq!(netns_of(pid), netns_id(pod.ns.name()));
    assert_ne!(netns_of(pid), netns_of(std::process::id()));
    let mut ip = pod.command("ip");
    ip.args(["-br", "addr", "show", "eth0"]);
    let out = ip.output().expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("198.18.2.11/24") && text.contains("fd00:18:2::11/64"), "ip addr in {}: {text}", pod.name);

    // Pod::wrapper (what Pod::curl runs under).
    let probe = ["sh", "-c", "cat /proc/self/cgroup; readlink /proc/self/ns/net"].map(str::to_owned);
    let seen = output(&[pod.wrapper(), probe.to_vec()].concat());
    assert!(seen.contains(&format!("0::{}\n", pod.cgroup.relative())), "{seen}");
    assert!(seen.contains(&netns_id(pod.ns.name())), "{seen}");

    // The proxy's command line: nsenter into the node (as ProxyOptions.netns does),
    // then the proxy cgroup wrapper.
    let nsenter = ["nsenter".to_owned(), format!("--net=/run/netns/{}", node.ns.name()), "--".to_owned()];
    let seen = output(&[nsenter.to_vec(), node.proxy_cgroup_wrapper(), probe.to_vec()].concat());
    assert!(seen.contains(&format!("0::{}\n", node.proxy_cgroup.relative())), "{seen}");
    assert!(seen.contains(&netns_id(node.ns.name())), "{seen}");
    assert!(node.pods_cgroup.relative().ends_with("/node2/pods"), "{}", node.pods_cgroup.relative());
    assert!(pod.cgroup.path().starts_with(node.pods_cgroup.path()), "pod cgroups are below the BPF attach point");
}

#[test]
fn dropping_the_topology_removes_processes_namespaces_cgroups_and_links() {
    if !require_root("dropping_the_topology_removes_processes_namespaces_cgroups_and_links") {
        return;
    }
    let topo = Topology::create();
    let root = topo.cgroup.path().to_owned();
    let mut names: Vec<String> = topo.nodes.iter().map(|n| n.ns.name().to_owned()).collect();
    names.extend(topo.pods().map(|p| p.ns.name().to_owned()));
    // Left running on purpose: a pod process and one in a proxy cgroup.
    let mut in_pod = topo.nodes[0].pods[0].command("sleep").arg("600").spawn().expect("spawn sleep");
    let mut in_proxy = Command::new("sh")
        .args(["-c", &format!("echo $$ > '{}/cgroup.procs' && exec sleep 600", topo.nodes[1].proxy_cgroup.path().display())])
        .spawn()
        .expect("spawn sleep");
    tests::wait_until("sleep joined the proxy cgroup", Duration::from_secs(5), || topo.nodes[1].proxy_cgroup.procs().contains(&in_proxy.id()));

    let start = Instant::now();
    drop(topo);
    eprintln!("topology removed in {:?}", start.elapsed());

    for child in [&mut in_pod, &mut in_proxy] {
        // Already dead: cgroup.kill; waiting only reaps it.
        let status = child.try_wait().expect("try_wait").unwrap_or_else(|| panic!("process {} survived the topology", child.id()));
        assert!(!status.success(), "{status}");
    }
    assert!(!root.exists(), "cgroup {} is left", root.display());
    let netns = run("ip", &["netns", "list"]);
    for name in &names {
        assert!(!netns.split_whitespace().any(|n| n == name), "namespace {name} is left: {netns}");
    }
    let links: serde_json::Value = serde_json::from_str(&run("ip", &["-j", "link", "show"])).expect("ip -j link");
    let ours = ["u0", "vx0", "br0", "pod10", "pod11", "pod20", "pod21"];
    let leaked: Vec<&str> = links.as_array().unwrap().iter().filter_map(|l| l["ifname"].as_str()).filter(|n| ours.contains(n)).collect();
    assert!(leaked.is_empty(), "links left in the root namespace: {leaked:?}");
}
