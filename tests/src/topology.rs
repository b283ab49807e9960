//! A two-node, two-pods-per-node network for root end-to-end tests, built from
//! network namespaces, veth pairs, a Linux bridge per node, a VXLAN overlay and
//! cgroup v2 directories, as a Kubernetes node with a flat pod network would have.
//!
//! ```text
//!   pod10 198.18.1.10  pod11 198.18.1.11          pod20 198.18.2.10  pod21 198.18.2.11
//!        eth0 |             | eth0                     eth0 |             | eth0
//!        br0 198.18.1.1 (node1)                        br0 198.18.2.1 (node2)
//!        vx0 198.18.254.1 ===== VXLAN 42 over u0 ===== vx0 198.18.254.2
//!        u0  198.19.0.1  ------------ veth ----------- u0  198.19.0.2
//! ```
//!
//! IPv6 mirrors it: `fd00:18:N::1` on br0, `fd00:18:N::(10+i)` in pods,
//! `fd00:18:254::N` on vx0. Nothing is created in the root namespace and nothing
//! routes outside the topology.
//!
//! This module owns the namespaces, links, addresses, routes and cgroups of a
//! [`Topology`] and removes all of them on drop, also when a test panics: processes
//! first (`cgroup.kill`, and every process left in a namespace), then namespaces,
//! then cgroups, children first. It does not start a node proxy or attach BPF
//! programs: a test runs the proxy with [`Node::proxy_cgroup_wrapper`] and attaches
//! to [`Node::pods_cgroup`].
//!
//! Every process that creates sockets in a pod must be started inside the pod's
//! cgroup ([`Pod::command`], [`Pod::wrapper`], [`Pod::curl`], [`Pod::dial`]): cgroup
//! BPF hooks see the cgroup a socket was created in. Origins ([`Pod::origin`]) run on
//! a thread of the test process that joined the pod's namespace only: they only
//! accept, and the redirect hooks act on connecting sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::clients::{self, parse_response_head, Background, Curl, CurlResponse};
use crate::netns::{in_netns, Netns};
use crate::origin::Origin;
use crate::wait::assert_eventually;

/// VXLAN network identifier and UDP port of the overlay.
const VNI: &str = "42";
const VXLAN_PORT: &str = "4789";
/// Pod and bridge MTU: the underlay's 1500 less VXLAN's 50 bytes, as flannel does,
/// so full-size segments never depend on path MTU discovery.
const POD_MTU: &str = "1450";
/// Pods per node.
const PODS_PER_NODE: usize = 2;

/// Two nodes joined by an underlay veth pair and a VXLAN overlay, two pods each.
pub struct Topology {
    /// Dropped first: pods, processes and node namespaces.
    pub nodes: [Node; 2],
    /// `<cgroup2>/np-topo-<pid>-<n>`, holding every node's and pod's cgroup.
    pub cgroup: Cgroup,
}

/// A node: a network namespace with the underlay veth `u0`, the overlay `vx0`, the
/// pods' bridge `br0`, and the cgroups `nodeN/pods` and `nodeN/proxy`.
pub struct Node {
    /// Dropped before the node's own namespace and cgroups.
    pub pods: Vec<Pod>,
    pub ns: Netns,
    /// 1 or 2 (`N` in every address).
    pub index: usize,
    /// 198.18.N.1 on br0: the node's address as pods see it.
    pub ip4: Ipv4Addr,
    /// fd00:18:N::1 on br0.
    pub ip6: Ipv6Addr,
    /// `nodeN/pods`: the parent of every pod's cgroup, where BPF programs attach.
    pub pods_cgroup: Cgroup,
    /// `nodeN/proxy`: where the node proxy runs.
    pub proxy_cgroup: Cgroup,
    /// `nodeN`, the parent of both.
    pub cgroup: Cgroup,
}

/// A pod: a network namespace with `eth0` on its node's bridge, and a cgroup.
pub struct Pod {
    pub ns: Netns,
    /// `podN<i>`, also its cgroup's name.
    pub name: String,
    /// 198.18.N.(10+i).
    pub ip4: Ipv4Addr,
    /// fd00:18:N::(10+i).
    pub ip6: Ipv6Addr,
    /// `nodeN/pods/podN<i>`.
    pub cgroup: Cgroup,
}

/// What [`Pod::dial`] saw.
#[derive(Clone, Debug)]
pub struct Dialed {
    /// `getpeername()` of the connected socket, as the application saw it.
    pub peer: SocketAddr,
    /// Everything the server sent until it closed.
    pub response: String,
}

/// A cgroup v2 directory, removed on drop with every process in it and below killed.
pub struct Cgroup {
    path: PathBuf,
}

impl Topology {
    /// Builds the whole topology and waits until every address is usable. Panics
    /// (with the failing command's output) if a step fails; whatever was created
    /// until then is removed.
    pub fn create() -> Topology {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("np-topo-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let cgroup = Cgroup::create(&cgroup2_mount().join(name));
        let nodes = [Node::create(1, &cgroup), Node::create(2, &cgroup)];
        let topology = Topology { nodes, cgroup };
        topology.link_nodes();
        topology.wait_usable();
        topology
    }

    /// Every pod of every node.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.nodes.iter().flat_map(|n| n.pods.iter())
    }

    /// The underlay veth pair, the VXLAN devices, and routes to the other node's pods.
    fn link_nodes(&self) {
        let [n1, n2] = &self.nodes;
        n1.ns.ip(&["link", "add", "u0", "type", "veth", "peer", "name", "u0", "netns", n2.ns.name()]);
        for (node, other) in [(n1, n2), (n2, n1)] {
            let (n, m) = (node.index, other.index);
            node.ns.ip(&["addr", "add", &format!("198.19.0.{n}/24"), "dev", "u0"]);
            node.ns.ip(&["link", "set", "u0", "up"]);
            let remote = format!("198.19.0.{m}");
            node.ns.ip(&["link", "add", "vx0", "type", "vxlan", "id", VNI, "dstport", VXLAN_PORT, "remote", &remote, "dev", "u0"]);
            node.ns.ip(&["addr", "add", &format!("198.18.254.{n}/24"), "dev", "vx0"]);
            node.ns.ip(&["addr", "add", &format!("fd00:18:254::{n}/64"), "dev", "vx0", "nodad"]);
            node.ns.ip(&["link", "set", "vx0", "up"]);
            node.ns.ip(&["route", "add", &format!("198.18.{m}.0/24"), "via", &format!("198.18.254.{m}"), "dev", "vx0"]);
            node.ns.ip(&["-6", "route", "add", &format!("fd00:18:{m}::/64"), "via", &format!("fd00:18:254::{m}"), "dev", "vx0"]);
        }
    }

    /// Waits until no IPv6 address is tentative and no route is `linkdown` in any
    /// namespace (with DAD off this holds once every link is up).
    fn wait_usable(&self) {
        let namespaces = self.nodes.iter().flat_map(|n| std::iter::once(&n.ns).chain(n.pods.iter().map(|p| &p.ns)));
        for ns in namespaces {
            assert_eventually(&format!("IPv6 addresses and routes usable in {}", ns.name()), Duration::from_secs(10), || {
                let tentative = ns.ip(&["-6", "addr", "show", "tentative"]);
                let routes = format!("{}{}", ns.ip(&["-4", "route"]), ns.ip(&["-6", "route"]));
                if !tentative.trim().is_empty() {
                    return Err(format!("tentative addresses: {tentative}"));
                }
                if routes.contains("linkdown") {
                    return Err(format!("routes: {routes}"));
                }
                Ok(())
            });
        }
    }
}

impl Node {
    /// Node `n`'s namespace (forwarding on, DAD off), bridge and pods.
    fn create(n: usize, root: &Cgroup) -> Node {
        let ns = Netns::create();
        sysctls(&ns, &[("ipv4/ip_forward", "1"), ("ipv6/conf/all/forwarding", "1")]);
        let ip4 = Ipv4Addr::new(198, 18, n as u8, 1);
        let ip6 = pod_net6(n, 1);
        ns.ip(&["link", "add", "br0", "mtu", POD_MTU, "type", "bridge"]);
        ns.ip(&["addr", "add", &format!("{ip4}/24"), "dev", "br0"]);
        ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "br0", "nodad"]);
        ns.ip(&["link", "set", "br0", "up"]);
        let cgroup = root.child(&format!("node{n}"));
        let pods_cgroup = cgroup.child("pods");
        let proxy_cgroup = cgroup.child("proxy");
        let pods = (0..PODS_PER_NODE).map(|i| Pod::create(n, i, &ns, &pods_cgroup)).collect();
        Node { pods, ns, index: n, ip4, ip6, pods_cgroup, proxy_cgroup, cgroup }
    }

    /// (tx_packets, rx_packets) of vx0, from `ip -s -j link show vx0`.
    pub fn vxlan_packets(&self) -> (u64, u64) {
        let out = self.ns.ip(&["-s", "-j", "link", "show", "vx0"]);
        let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("`ip -s -j link show vx0` is not JSON ({e}): {out}"));
        let stats = &json[0]["stats64"];
        let packets = |dir: &str| stats[dir]["packets"].as_u64().unwrap_or_else(|| panic!("no stats64.{dir}.packets in {out}"));
        (packets("tx"), packets("rx"))
    }

    /// An argv prefix that moves the process into this node's proxy cgroup, then
    /// execs the rest (`ProxyOptions.wrapper`). It does not join the node's
    /// namespace: `ProxyOptions.netns` does (with `nsenter --net`).
    pub fn proxy_cgroup_wrapper(&self) -> Vec<String> {
        self.proxy_cgroup.wrapper()
    }

    /// Starts an origin listening on `addr` in the node's namespace (e.g. on `ip4`).
    pub fn origin(&self, name: &str, addr: SocketAddr) -> Origin {
        Origin::start_at(name, addr, Some(self.ns.name()))
    }
}

impl Pod {
    /// Pod `i` of node `n`: its namespace (DAD off), `eth0` on the node's `br0`,
    /// addresses and default routes via the node, and its cgroup.
    fn create(n: usize, i: usize, node: &Netns, pods_cgroup: &Cgroup) -> Pod {
        let name = format!("pod{n}{i}");
        let ns = Netns::create();
        sysctls(&ns, &[]);
        let ip4 = Ipv4Addr::new(198, 18, n as u8, 10 + i as u8);
        let ip6 = pod_net6(n, 10 + i);
        // Created in the pod's namespace with its peer in the node's: no link ever
        // exists in the root namespace, even if the test dies here.
        ns.ip(&["link", "add", "eth0", "mtu", POD_MTU, "type", "veth", "peer", "name", &name, "mtu", POD_MTU, "netns", node.name()]);
        node.ip(&["link", "set", &name, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("{ip4}/24"), "dev", "eth0"]);
        ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &format!("198.18.{n}.1")]);
        ns.ip(&["-6", "route", "add", "default", "via", &pod_net6(n, 1).to_string()]);
        let cgroup = pods_cgroup.child(&name);
        Pod { ns, name, ip4, ip6, cgroup }
    }

    /// A `Command` (proxy variables removed, own process group) that runs `program`
    /// in this pod's network namespace and cgroup: the child joins both before exec.
    pub fn command(&self, program: &str) -> Command {
        let netns = open(&netns_path(self.ns.name()), false);
        let procs = open(&self.cgroup.path.join("cgroup.procs"), true);
        let mut cmd = clients::command(program);
        // SAFETY: setns(2) and write(2) are async-signal-safe and only use fds the
        // closure owns; nothing here allocates.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process: this child, before it creates sockets.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// An argv prefix that runs the rest in this pod's namespace and cgroup
    /// (`nsenter --net`, then a shell that joins the cgroup and execs), for helpers
    /// that build their own command line, like [`Curl::wrapper`].
    pub fn wrapper(&self) -> Vec<String> {
        let mut argv = vec!["nsenter".to_owned(), format!("--net={}", netns_path(self.ns.name()).display()), "--".to_owned()];
        argv.extend(self.cgroup.wrapper());
        argv
    }

    /// Runs `curl` inside the pod (namespace and cgroup).
    pub fn curl(&self, curl: Curl) -> CurlResponse {
        curl.wrapper(self.wrapper()).run()
    }

    /// Connects from inside the pod to `dst` with Python's socket module (AF_INET6
    /// for IPv6 and v4-mapped `::ffff:a.b.c.d` destinations), sends
    /// `GET <path> HTTP/1.1` with `Host` and `Connection: close`, and reads until the
    /// server closes. Panics with Python's output when it fails.
    pub fn dial(&self, dst: SocketAddr, path: &str) -> Dialed {
        const SCRIPT: &str = r#"
import socket, sys
host, port, path, authority = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(10)
s.connect((host, port))
peer = s.getpeername()
s.sendall(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
response = b""
while chunk := s.recv(65536):
    response += chunk
sys.stdout.buffer.write(f"{peer[0]} {peer[1]}\n".encode() + response)
"#;
        let mut cmd = self.command("python3");
        cmd.args(["-c", SCRIPT, &dst.ip().to_string(), &dst.port().to_string(), path, &dst.to_string()]);
        let (code, out, err) = Background::spawn(cmd, "python3").wait(Duration::from_secs(20));
        assert_eq!(code, 0, "dial {dst}{path} from {} failed (exit {code}): {out}{err}", self.name);
        let (peer, response) = out.split_once('\n').unwrap_or_else(|| panic!("dial {dst}: no peer line in {out:?}"));
        let (ip, port) = peer.split_once(' ').unwrap_or_else(|| panic!("dial {dst}: bad peer line {peer:?}"));
        let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("dial {dst}: bad peer address {ip:?}: {e}"));
        let port: u16 = port.parse().unwrap_or_else(|e| panic!("dial {dst}: bad peer port {port:?}: {e}"));
        Dialed { peer: SocketAddr::new(ip, port), response: response.to_owned() }
    }

    /// Starts an [`Origin`] listening on `addr` inside this pod's namespace.
    pub fn origin(&self, name: &str, addr: SocketAddr) -> Origin {
        Origin::start_at(name, addr, Some(self.ns.name()))
    }
}

impl Dialed {
    /// The response's status code (0 if the response has no complete head).
    pub fn status(&self) -> u16 {
        parse_response_head(self.response.as_bytes()).map_or(0, |h| h.status)
    }

    /// A response header (the origin's `x-origin`, for instance).
    pub fn header(&self, name: &str) -> Option<String> {
        parse_response_head(self.response.as_bytes())?.header(name).map(str::to_owned)
    }
}

impl Cgroup {
    /// Creates the directory `path` (its parent must exist).
    pub fn create(path: &Path) -> Cgroup {
        std::fs::create_dir(path).unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        Cgroup { path: path.to_owned() }
    }

    /// Creates the child cgroup `name`.
    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup::create(&self.path.join(name))
    }

    /// The directory, e.g. `/sys/fs/cgroup/unified/np-topo-1-0/node1/pods`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as `/proc/<pid>/cgroup` shows it (`0::<this>`): relative to the mount.
    pub fn relative(&self) -> String {
        let rel = self.path.strip_prefix(cgroup2_mount()).expect("cgroup below the cgroup2 mount");
        format!("/{}", rel.display())
    }

    /// PIDs of the processes directly in this cgroup.
    pub fn procs(&self) -> Vec<u32> {
        let path = self.path.join("cgroup.procs");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }

    /// An argv prefix that moves the process into this cgroup, then execs the rest:
    /// `sh -c 'echo $$ > <path>/cgroup.procs && exec "$@"' sh`.
    pub fn wrapper(&self) -> Vec<String> {
        let procs = self.path.join("cgroup.procs");
        vec!["sh".to_owned(), "-c".to_owned(), format!("echo $$ > '{}' && exec \"$@\"", procs.display()), "sh".to_owned()]
    }

    /// Whether a process is in this cgroup or below (`cgroup.events`).
    fn populated(&self) -> bool {
        let events = std::fs::read_to_string(self.path.join("cgroup.events")).unwrap_or_default();
        events.lines().any(|l| l == "populated 1")
    }

    /// Kills every process in the subtree, waits until it is empty, and removes the
    /// directories, deepest first. Errors are reported, not raised: this runs in drop.
    fn remove(&self) -> Result<(), String> {
        if !self.path.exists() {
            return Ok(());
        }
        std::fs::write(self.path.join("cgroup.kill"), "1").map_err(|e| format!("cgroup.kill in {}: {e}", self.path.display()))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.populated() {
            if std::time::Instant::now() >= deadline {
                return Err(format!("{} still populated 10 s after cgroup.kill: {:?}", self.path.display(), self.procs()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        remove_tree(&self.path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("cannot remove cgroup: {e}");
        }
    }
}

/// Removes a cgroup directory and its children (their files are not removable and
/// go with the directory).
fn remove_tree(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir).map_err(|e| format!("rmdir {}: {e}", dir.display()))
}

/// Where cgroup v2 is mounted: the first `cgroup2` entry of /proc/self/mounts (here
/// `/sys/fs/cgroup/unified`, beside the v1 hierarchies).
pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .map(|f| PathBuf::from(f[1].replace("\\040", " ")))
        .unwrap_or_else(|| panic!("no cgroup2 mount in /proc/self/mounts:\n{mounts}"))
}

/// `fd00:18:N::<host>`, with the numbers written as in the IPv4 address (pod
/// 198.18.1.10 is fd00:18:1::10), so the two read alike.
fn pod_net6(n: usize, host: usize) -> Ipv6Addr {
    format!("fd00:18:{n}::{host}").parse().expect("IPv6 address")
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Opens a file for the child of [`Pod::command`] (close-on-exec, like all std files).
fn open(path: &Path, write: bool) -> OwnedFd {
    let file = std::fs::OpenOptions::new().read(!write).write(write).open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.into()
}

/// Writes `/proc/sys/net/<key>` values in `ns`, after turning duplicate address
/// detection off for every interface created later, so IPv6 addresses (link-local
/// ones too) are usable at once.
fn sysctls(ns: &Netns, values: &[(&str, &str)]) {
    let dad_off = [("ipv6/conf/all/accept_dad", "0"), ("ipv6/conf/default/accept_dad", "0")];
    in_netns(Some(ns.name()), || {
        for (key, value) in dad_off.iter().chain(values) {
            let path = format!("/proc/sys/net/{key}");
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("cannot set {path} = {value} in {}: {e}", ns.name()));
        }
    });
}
