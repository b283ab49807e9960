//! The node proxy redirecting pods' connections, on the real kernel (root): two nodes
//! joined by a VXLAN overlay, two pods each ([`tests::topology`]), node-proxy in
//! node1's namespace and its own cgroup, taking its configuration over xDS from a
//! test ADS server in the same namespace.
//!
//! The configuration is a sidecar's outbound shape: `virtualOutbound` on [::]:15001
//! (original destination, passthrough), and virtual listeners (`bind_to_port: false`)
//! for an L7 service with VIPs 198.18.100.1:80 and [fd00:18:100::1]:80 whose route adds
//! a header and retries 5xx, to the service's endpoint in pod20 (node2). Pod21's
//! origin is a destination nothing configures: connections to it must bypass.
//!
//! Proves: a) L7 connections are redirected (the route acted: header, retry; the
//! app's getpeername shows the VIP; counters say redirected); b) the rest bypasses
//! (counters, the proxy accepts nothing, the backend sees the pod's own IP, packets
//! cross vx0) and keeps working with the proxy stopped; c) the set follows xDS both
//! ways; d) IPv6 and v4-mapped destinations; e) a restart under load keeps the pinned
//! state and fails no bypass connection; f) the nftables fallback does a)–c), also
//! when `--redirect auto` cannot load eBPF.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::ads_server::any_from_json;
use tests::clients::Background;
use tests::config::{cluster, hcm, socket_address};
use tests::mesh_scene::virtual_outbound;
use tests::netns::{in_netns, require_root, BpfFs};
use tests::topology::{Pod, Topology};
use tests::*;
use xds_client::pb::envoy::config::cluster::v3::Cluster;
use xds_client::pb::envoy::config::listener::v3::Listener;
use xds_client::type_url::{CLUSTER, LISTENER};

const VIP: &str = "198.18.100.1:80";
const VIP6: &str = "[fd00:18:100::1]:80";
const VIP_MAPPED: &str = "[::ffff:198.18.100.1]:80";
/// The L7 service's endpoint (pod20) and the destination nothing configures (pod21).
const BACKEND: &str = "198.18.2.10:8080";
const PLAIN: &str = "198.18.2.11:9090";
/// node1's address on the overlay: the source of the proxy's upstream connections.
const NODE1_OVERLAY: &str = "198.18.254.1";
/// The SO_MARK on the proxy's upstream connections.
const MARK: &str = "20048";
const T: Duration = Duration::from_secs(15);

/// Everything one test runs; fields drop in order (proxy before the ADS server,
/// processes before the pins, the topology last).
struct Scene {
    proxy: Option<Proxy>,
    ads: AdsServer,
    backend: Origin,
    plain: Origin,
    bpffs: BpfFs,
    topo: Topology,
    mode: &'static str,
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A virtual listener for `vip` (reached by original destination) whose route adds
/// `x-node-proxy: node1` and retries 5xx twice, to cluster `svc`.
fn vip_listener(name: &str, vip: SocketAddr) -> Value {
    let route = json!({
        "name": name,
        "virtual_hosts": [{
            "name": "svc",
            "domains": ["*"],
            "routes": [{
                "match": { "prefix": "/" },
                "route": { "cluster": "svc", "retry_policy": { "retry_on": "5xx", "num_retries": 2 } },
                "request_headers_to_add": [{ "header": { "key": "x-node-proxy", "value": "node1" } }],
            }],
        }],
    });
    json!({
        "name": name,
        "address": socket_address(vip),
        "bind_to_port": false,
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm(route) }] }],
    })
}

fn set_listener(ads: &AdsServer, v: Value) {
    let name = v["name"].as_str().unwrap_or_default().to_owned();
    ads.set(LISTENER, &name, any_from_json::<Listener>(v));
}

fn set_cluster(ads: &AdsServer, v: Value) {
    let name = v["name"].as_str().unwrap_or_default().to_owned();
    ads.set(CLUSTER, &name, any_from_json::<Cluster>(v));
}

impl Scene {
    fn new(tag: &str, mode: &'static str) -> Scene {
        let topo = Topology::create();
        let node1 = &topo.nodes[0];
        let backend = topo.nodes[1].pods[0].origin("backend", sa(BACKEND));
        let plain = topo.nodes[1].pods[1].origin("plain", sa(PLAIN));
        let ads = in_netns(Some(node1.ns.name()), AdsServer::start);
        set_cluster(&ads, cluster("svc", &[sa(BACKEND)]));
        set_cluster(&ads, json!({ "name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s" }));
        set_listener(&ads, virtual_outbound());
        set_listener(&ads, vip_listener("198.18.100.1_80", sa(VIP)));
        set_listener(&ads, vip_listener("fd00:18:100::1_80", sa(VIP6)));
        let mut scene = Scene { proxy: None, ads, backend, plain, bpffs: BpfFs::mount(tag), topo, mode };
        scene.start_proxy(mode);
        scene
    }

    fn proxy_options(&self, mode: &str) -> ProxyOptions {
        let node1 = &self.topo.nodes[0];
        ProxyOptions {
            netns: Some(node1.ns.name().to_owned()),
            wrapper: node1.proxy_cgroup_wrapper(),
            extra_args: [
                "--redirect",
                mode,
                "--redirect-cgroup",
                &node1.pods_cgroup.path().display().to_string(),
                "--redirect-address",
                "198.18.1.1:15001",
                "--bpf-pin-dir",
                &self.pin_dir().display().to_string(),
                "--upstream-mark",
                MARK,
                "--xds-workload-api",
                "false",
            ]
            .map(str::to_owned)
            .to_vec(),
            ..Default::default()
        }
    }

    fn pin_dir(&self) -> PathBuf {
        self.bpffs.path().join("node1")
    }

    fn start_proxy(&mut self, mode: &str) {
        let proxy = Proxy::start_xds(&self.ads.url(), self.proxy_options(mode));
        self.proxy = Some(proxy);
    }

    fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("proxy running")
    }

    fn pod(&self, node: usize, i: usize) -> &Pod {
        &self.topo.nodes[node].pods[i]
    }

    /// `/redirect` on the admin port.
    fn status(&self) -> Value {
        let r = self.proxy().admin_get("/redirect");
        assert_eq!(r.status, 200, "/redirect: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("/redirect is not JSON ({e}): {}", r.body))
    }

    fn counter(&self, name: &str) -> u64 {
        self.status()["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {}", self.status()))
    }

    fn redirected(&self, dst: &str) -> bool {
        self.status()["destinations"].as_array().is_some_and(|d| d.iter().any(|v| v == dst))
    }

    /// Waits until the kernel's set does (or does not) hold `dst`.
    fn wait_redirected(&self, dst: &str, yes: bool) {
        assert_eventually(&format!("{dst} redirected: {yes}"), T, || if self.redirected(dst) == yes { Ok(()) } else { Err(self.status().to_string()) });
    }

    /// Connections the proxy has accepted so far.
    fn accepted(&self) -> f64 {
        self.proxy().metric("envoy_http_downstream_cx_total", &[])
    }

    fn is_ebpf(&self) -> bool {
        self.mode != "nftables"
    }
}

/// An L7 request from pod10 to `dst`: the route retried a 503 and added its header,
/// the backend saw the proxy's (node1's) address, the app's peer is what it dialed.
fn assert_l7(s: &Scene, dst: &str, key: &str) {
    let before = s.backend.request_count();
    let d = s.pod(0, 0).dial(sa(dst), &format!("/fail/{key}/1/503"));
    assert_eq!(d.status(), 200, "{dst}: {}\nproxy stderr:\n{}", d.response, s.proxy().stderr());
    assert_eq!(d.header("x-origin-attempt").as_deref(), Some("2"), "the proxy retried the 503 once: {}", d.response);
    assert_eq!(d.peer, sa(dst), "getpeername shows what the app dialed");
    let seen = s.backend.requests();
    assert_eq!(seen.len(), before + 2, "two attempts reached the backend");
    let last = seen.last().expect("a request");
    assert_eq!(last.header("x-node-proxy"), Some("node1"), "the route's header");
    assert_eq!(last.peer.ip().to_string(), NODE1_OVERLAY, "the backend sees the proxy's upstream connection from node1");
}

/// A connection from pod10 to the unconfigured destination: untouched by the proxy.
fn assert_bypass(s: &Scene) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = format!("/plain/{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let (tx_before, _) = s.topo.nodes[0].vxlan_packets();
    let d = s.pod(0, 0).dial(sa(PLAIN), &path);
    assert_eq!(d.status(), 200, "{}", d.response);
    assert_eq!(d.peer, sa(PLAIN));
    let seen: Vec<_> = s.plain.requests().into_iter().filter(|r| r.path == path).collect();
    assert_eq!(seen.len(), 1, "one request for {path}");
    assert_eq!(seen[0].peer.ip(), s.pod(0, 0).ip4, "the backend sees the pod's own address");
    assert_eq!(seen[0].header("x-node-proxy"), None);
    let (tx_after, _) = s.topo.nodes[0].vxlan_packets();
    assert!(tx_after > tx_before, "packets crossed vx0 ({tx_before} -> {tx_after})");
}

/// Whether pod10 can open a TCP connection to `dst` within 2 s.
fn connects(pod: &Pod, dst: SocketAddr) -> Result<(), String> {
    let mut cmd = pod.command("python3");
    cmd.args([
        "-c",
        "import socket,sys\nh,p=sys.argv[1],int(sys.argv[2])\ns=socket.socket(socket.AF_INET6 if ':' in h else socket.AF_INET)\ns.settimeout(2)\ns.connect((h,p))",
        &dst.ip().to_string(),
        &dst.port().to_string(),
    ]);
    let (code, out, err) = Background::spawn(cmd, "python3 connect").wait(Duration::from_secs(10));
    if code == 0 {
        Ok(())
    } else {
        Err(format!("{out}{err}"))
    }
}

fn root(test: &str) -> bool {
    require_root(test)
}

/// a) to d) for one mode.
fn redirect_follows_config(tag: &str, mode: &'static str) {
    let s = Scene::new(tag, mode);
    for dst in [VIP, VIP6, BACKEND] {
        s.wait_redirected(dst, true);
    }
    assert!(!s.redirected(PLAIN), "{}", s.status());
    assert!(s.proxy().stderr().contains("REDIRECT MODE"), "the mode is logged:\n{}", s.proxy().stderr());

    // a) An L7 destination goes through the proxy.
    let c0 = s.is_ebpf().then(|| (s.counter("redirected"), s.counter("getsockopt_answered")));
    assert_l7(&s, VIP, "a");
    if let Some((redirected, answered)) = c0 {
        assert_eq!(s.counter("redirected") - redirected, 1, "{}", s.status());
        assert_eq!(s.counter("getsockopt_answered") - answered, 1, "{}", s.status());
    }

    // b) Anything else bypasses it.
    let accepted = s.accepted();
    let bypassed = s.is_ebpf().then(|| s.counter("bypassed_not_in_set"));
    assert_bypass(&s);
    assert_eq!(s.accepted(), accepted, "the proxy accepted no connection for a bypass destination");
    if let Some(b) = bypassed {
        assert!(s.counter("bypassed_not_in_set") > b, "{}", s.status());
    }

    // d) IPv6, and IPv4 through an IPv6 socket (v4-mapped).
    assert_l7(&s, VIP6, "d6");
    assert_l7(&s, VIP_MAPPED, "d4m");

    // c) The set follows the configuration: a listener removed over xDS stops the
    // redirect of its VIP (the VIP itself answers nothing: the connect fails without
    // the proxy seeing it); pushed again, it is redirected again.
    s.ads.remove(LISTENER, "198.18.100.1_80");
    s.wait_redirected(VIP, false);
    let accepted = s.accepted();
    let refused = connects(s.pod(0, 0), sa(VIP));
    assert!(refused.is_err(), "nothing serves the VIP without the proxy");
    assert_eq!(s.accepted(), accepted, "the proxy saw no connection to the removed VIP");
    set_listener(&s.ads, vip_listener("198.18.100.1_80", sa(VIP)));
    s.wait_redirected(VIP, true);
    assert_l7(&s, VIP, "c");
    // The other VIP was redirected throughout.
    assert!(s.redirected(VIP6));
}

#[test]
fn ebpf_redirects_l7_destinations_and_nothing_else_and_follows_config() {
    if !root("ebpf_redirects_l7_destinations_and_nothing_else_and_follows_config") {
        return;
    }
    redirect_follows_config("ebpf", "ebpf");
}

#[test]
fn nftables_fallback_redirects_the_same_set() {
    if !root("nftables_fallback_redirects_the_same_set") {
        return;
    }
    redirect_follows_config("nft", "nftables");
}

#[test]
fn auto_mode_falls_back_to_nftables_loudly_when_ebpf_cannot_load() {
    if !root("auto_mode_falls_back_to_nftables_loudly_when_ebpf_cannot_load") {
        return;
    }
    let topo_tag = "auto";
    let mut s = Scene::new(topo_tag, "nftables");
    // The same proxy with `auto` and a pin directory that is not on bpffs.
    drop(s.proxy.take());
    let mut opts = s.proxy_options("auto");
    let at = opts.extra_args.iter().position(|a| a == "--bpf-pin-dir").expect("pin dir arg") + 1;
    opts.extra_args[at] = std::env::temp_dir().join("np-not-bpffs").join("pins").display().to_string();
    s.proxy = Some(Proxy::start_xds(&s.ads.url(), opts));
    s.mode = "nftables";
    let stderr = s.proxy().stderr();
    assert!(stderr.contains("REDIRECT MODE: nftables fallback") && stderr.contains("mount -t bpf"), "{stderr}");
    assert_eq!(s.status()["mode"], "nftables");
    s.wait_redirected(VIP, true);
    assert_l7(&s, VIP, "auto");
    assert_bypass(&s);
}

#[test]
fn a_restart_under_load_keeps_the_pinned_redirect_and_fails_no_bypass_connection() {
    if !root("a_restart_under_load_keeps_the_pinned_redirect_and_fails_no_bypass_connection") {
        return;
    }
    let mut s = Scene::new("restart", "ebpf");
    s.wait_redirected(VIP, true);
    assert_l7(&s, VIP, "before");
    let redirected = s.counter("redirected");

    // Bypass connections, back to back, for the whole restart.
    const LOAD: &str = r#"
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ok = failed = 0
end = time.time() + seconds
while time.time() < end:
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"GET /load HTTP/1.1\r\nHost: plain\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        if data.startswith(b"HTTP/1.1 200"):
            ok += 1
        else:
            failed += 1
    except Exception as e:
        failed += 1
        print(f"failed: {e}", file=sys.stderr)
print(ok, failed)
"#;
    let mut cmd = s.pod(0, 0).command("python3");
    cmd.args(["-c", LOAD, "198.18.2.11", "9090", "6"]);
    let load = Background::spawn(cmd, "bypass load");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));

    // Stop the proxy: the pinned programs keep working without it.
    let mut old = s.proxy.take().expect("proxy");
    old.sigterm();
    old.wait_exit(Duration::from_secs(10));
    assert!(s.pin_dir().join("redirect_set").exists(), "the pins outlive the proxy");
    assert_bypass(&s);
    drop(old);

    // And the restarted proxy keeps them, with their set and counters.
    s.start_proxy("ebpf");
    let stderr = s.proxy().stderr();
    assert!(stderr.contains("kept the pinned attachment"), "{stderr}");
    assert!(s.counter("redirected") >= redirected, "counters survive the restart: {}", s.status());
    assert_l7(&s, VIP, "after");

    let (code, out, err) = load.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{out}{err}");
    let counts: Vec<u64> = out.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    assert_eq!(counts.len(), 2, "{out}");
    assert!(started.elapsed() >= Duration::from_secs(5), "the load ran through the restart");
    assert!(counts[0] > 0, "bypass connections went on: {out}");
    let errors: Vec<&str> = err.lines().take(5).collect();
    assert_eq!(counts[1], 0, "no bypass connection failed during the restart: {out} first errors: {errors:?}");
}

/// `node-proxy bpf status` and `bpf detach` against the pins of a running proxy.
#[test]
fn bpf_status_shows_the_pins_and_detach_removes_them() {
    if !root("bpf_status_shows_the_pins_and_detach_removes_them") {
        return;
    }
    let s = Scene::new("cli", "ebpf");
    s.wait_redirected(VIP, true);
    // With statistics on, the status counts the connect hook's runs for this request.
    let stats = redirect_bpf::ProgramStats::enable().unwrap_or_else(|e| panic!("{e}"));
    assert_l7(&s, VIP, "cli");
    let pin_dir = s.pin_dir().display().to_string();
    let (status, out, err) = tests::proxy::run_node_proxy(&["bpf", "status", "--pin-dir", &pin_dir], Duration::from_secs(10));
    assert!(status.success(), "{out}{err}");
    for line in [
        format!("pods cgroup: {}", s.topo.nodes[0].pods_cgroup.path().display()),
        "redirects to: 198.18.1.1:15001".to_owned(),
        format!("bypass mark: {MARK}"),
        "same build: yes".to_owned(),
        format!("  {VIP}"),
        format!("  {BACKEND}"),
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
    }
    let redirected: u64 = out.lines().find_map(|l| l.strip_prefix("  redirected: ")).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    assert!(redirected >= 1, "{out}");
    drop(stats);
    for program in ["np_connect6", "np_sockops", "np_getsockopt", "np_getpeername4", "np_getpeername6"] {
        assert!(out.lines().any(|l| l.starts_with(&format!("  {program}: ")) && l.ends_with(" ns")), "no stats of {program} in:\n{out}");
    }
    let connect_runs: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("  np_connect4: ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no run count of np_connect4 in:\n{out}"));
    assert!(connect_runs >= 1, "np_connect4 did not count the request's connect:\n{out}");

    let (status, out, err) = tests::proxy::run_node_proxy(&["bpf", "detach", "--pin-dir", &pin_dir], Duration::from_secs(10));
    assert!(status.success(), "{out}{err}");
    assert!(!Path::new(&pin_dir).exists(), "pins removed");
    // Detached: the VIP is no longer redirected (the link goes asynchronously).
    assert_eventually("the VIP stops being redirected", T, || match connects(s.pod(0, 0), sa(VIP)) {
        Err(_) => Ok(()),
        Ok(()) => Err("still redirected".to_owned()),
    });
    let (status, _, err) = tests::proxy::run_node_proxy(&["bpf", "status", "--pin-dir", &pin_dir], Duration::from_secs(10));
    assert!(!status.success() && err.contains("holds no pinned redirect"), "{err}");
}
