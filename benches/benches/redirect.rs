//! Redirect benchmark (issue 4 §6), on the real kernel (root), in the two-node VXLAN
//! topology of the end-to-end tests (`tests::topology`): nginx origins in pod20 (the L7
//! service's endpoint) and pod21 (a destination nothing configures), wrk in pod10,
//! started inside pod10's cgroup so the cgroup hooks see its sockets.
//!
//! Two comparisons, medians of per-repetition ratios:
//! 1. **Bypass**: pod10 → pod21 across the overlay, with the redirect programs attached
//!    to node1's pods' cgroup (their set holding 1,000 other destinations) vs none. One
//!    topology for the whole comparison (no NAT, so no conntrack state to carry over):
//!    the programs are attached before and detached after each measurement, and the two
//!    sides of a pair run back to back, in alternating order (ABBA), so drift in the
//!    machine hits both alike.
//! 2. **Redirected**: pod10 → VIP 198.18.100.1:80 → node-proxy (release build, one
//!    worker, in node1) → pod20, redirected by the eBPF programs vs by an nftables
//!    REDIRECT to the same proxy (`--redirect ebpf` vs `--redirect nftables`). Each case
//!    in a fresh topology (conntrack state left by REDIRECT collapses a reused namespace:
//!    BENCHMARKING.md), ABBA.
//!
//! Each measurement is one of four wrk loads: a new connection per request
//! (`Connection: close`, 32 connections: the connection setup rate) and one at a time
//! (the latency of connect + request), then keep-alive (32 connections: request rate;
//! one: request latency). With one request outstanding, wrk's latency percentiles have
//! no coordinated omission. wrk runs on CPU 0, nginx and node-proxy on CPU 1.
//!
//! Throughput ratios on two shared CPUs move by several percent between runs whatever
//! is compared, so the bench also measures the programs' cost directly: the kernel's
//! per-program statistics (BPF_ENABLE_STATS, on for the whole run) give the time the
//! hooks spent per connection, set against the time a connect + request takes.
//!
//! Writes its section into benches/RESULTS.md (`<!-- BEGIN redirect -->`, kept by
//! benches/run.py) and `results-redirect.json` beside it. See benches/README.md.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::netns::{in_netns, BpfFs};
use tests::topology::{Pod, Topology};

mod common;
use common::*;

const SECTION: &str = "redirect";
const VIP: &str = "198.18.100.1:80";
const SERVICE_ENDPOINT: &str = "198.18.2.10:80";
const UNCONFIGURED: &str = "198.18.2.11:80";
const PROXY_TARGET: &str = "198.18.1.1:15001";
const MARK: &str = "20048";
/// Redirect-set entries besides the measured destinations (other services' VIPs).
const OTHER_ENTRIES: u32 = 1000;
const TARGET_BYPASS: f64 = 0.02;
const TARGET_REDIRECTED: f64 = 1.0;

struct Opts {
    reps: usize,
    duration: u64,
    gen_cpu: usize,
    server_cpu: usize,
    out: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo bench -p benches --bench redirect -- [--reps N] [--duration S] [--gen-cpu N] [--server-cpu N] [--out FILE | --no-write]";

fn die(msg: &str) -> ! {
    eprintln!("redirect: {msg}");
    std::process::exit(2);
}

fn parse_args() -> Option<Opts> {
    let mut o = Opts { reps: 4, duration: 5, gen_cpu: 0, server_cpu: 1, out: Some(tests::binary::workspace_root().join("benches/RESULTS.md")) };
    let (mut bench, mut filters) = (false, Vec::new());
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| die(&format!("{name} needs a value\n{USAGE}")));
        let num = |name: &str, v: String| -> usize { v.parse().unwrap_or_else(|_| die(&format!("{name}: not a number: {v}"))) };
        match a.as_str() {
            "--bench" => bench = true,
            "--reps" => o.reps = num(&a, value(&a)),
            "--duration" => o.duration = num(&a, value(&a)) as u64,
            "--gen-cpu" => o.gen_cpu = num(&a, value(&a)),
            "--server-cpu" => o.server_cpu = num(&a, value(&a)),
            "--out" => o.out = Some(PathBuf::from(value(&a))),
            "--no-write" => o.out = None,
            "-h" | "--help" => die(USAGE),
            s if s.starts_with('-') => die(&format!("unknown option {s}\n{USAGE}")),
            s => filters.push(s.to_owned()),
        }
    }
    if !bench {
        println!("redirect: a benchmark; run it with `cargo bench -p benches --bench redirect` (skipped)");
        return None;
    }
    if !filters.is_empty() && !filters.iter().any(|f| "redirect".contains(f.as_str())) {
        return None;
    }
    if o.reps < 1 || o.duration < 1 {
        die(&format!("out-of-range option\n{USAGE}"));
    }
    Some(o)
}

// ------------------------------------------------------------------ the measured cases

/// The four measurements of one case.
#[derive(Clone, Copy, Debug)]
enum Load {
    /// A new connection per request, 32 at a time.
    CloseRate,
    /// A new connection per request, one at a time.
    CloseLatency,
    KeepAliveRate,
    KeepAliveLatency,
}

const LOADS: [Load; 4] = [Load::CloseRate, Load::CloseLatency, Load::KeepAliveRate, Load::KeepAliveLatency];

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::CloseRate => "new connection per request, 32 concurrent: req/s",
            Load::CloseLatency => "new connection per request, 1 at a time: p50 / p99",
            Load::KeepAliveRate => "keep-alive, 32 connections: req/s",
            Load::KeepAliveLatency => "keep-alive, 1 connection: p50 / p99",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Load::CloseRate => "close_rate",
            Load::CloseLatency => "close_latency",
            Load::KeepAliveRate => "keepalive_rate",
            Load::KeepAliveLatency => "keepalive_latency",
        }
    }

    fn is_rate(self) -> bool {
        matches!(self, Load::CloseRate | Load::KeepAliveRate)
    }
}

/// What differs between the two sides of a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    BypassNoPrograms,
    BypassWithPrograms,
    RedirectedNftables,
    RedirectedEbpf,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::BypassNoPrograms => "bypass, no programs attached",
            Case::BypassWithPrograms => "bypass, eBPF programs attached",
            Case::RedirectedNftables => "redirected by nftables REDIRECT",
            Case::RedirectedEbpf => "redirected by eBPF",
        }
    }

    fn destination(self) -> &'static str {
        match self {
            Case::BypassNoPrograms | Case::BypassWithPrograms => UNCONFIGURED,
            Case::RedirectedNftables | Case::RedirectedEbpf => VIP,
        }
    }
}

/// A fresh topology with the case's redirect in place; drops in field order.
struct Scene {
    proxy: Option<Server>,
    redirector: Option<redirect_bpf::Redirector>,
    /// Held until the case ends (stopped on drop).
    _origins: Vec<Server>,
    pins: BpfFs,
    tmp: TempDir,
    topo: Topology,
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.proxy.take();
        if self.redirector.take().is_some() {
            let _ = redirect_bpf::Redirector::detach(&self.pins.path().join("bench"));
        }
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("np-bench-redirect-{}-{n}", std::process::id()));
        fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// nginx on port 80 of `pod`'s namespace, pinned to `cpu`.
fn nginx_in(pod: &Pod, tmp: &Path, cpu: usize) -> Server {
    let prefix = tmp.join(&pod.name);
    fs::create_dir_all(&prefix).expect("nginx prefix");
    let template_path = tests::binary::workspace_root().join("benches/configs/nginx-origin.conf");
    let template = fs::read_to_string(&template_path).unwrap_or_else(|e| panic!("read {}: {e}", template_path.display()));
    let conf = template
        .replace("listen 127.0.0.1:@H1_PORT@ backlog=4096;", "listen 80 backlog=4096;")
        .replace("@H2C_PORT@", "8081")
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@NOFILE@", "65536")
        .replace("@WORKER_CONNECTIONS@", "16384")
        .replace("@BODY_1K@", "x");
    assert!(!conf.lines().any(|l| !l.trim_start().starts_with('#') && l.contains('@')), "unfilled placeholder in {}", template_path.display());
    let path = prefix.join("nginx.conf");
    fs::write(&path, conf).expect("write nginx config");
    let argv: Vec<String> =
        ["nsenter", &format!("--net=/run/netns/{}", pod.ns.name()), "--", "nginx", "-p", &prefix.display().to_string(), "-c", &path.display().to_string()]
            .map(str::to_owned)
            .to_vec();
    Server::start("nginx", cpu, &argv, prefix.join("stdout.log"))
}

/// The proxy's configuration: virtualOutbound on [::]:15001 (passthrough) and the L7
/// service's virtual listener routing to its endpoint in pod20.
fn proxy_config() -> String {
    let tcp = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
    let hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    let router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    let addr = |a: &str, p: u16| json!({ "socket_address": { "address": a, "port_value": p } });
    json!({ "static_resources": {
        "listeners": [
            { "name": "virtualOutbound", "address": addr("::", 15001), "use_original_dst": true,
              "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.tcp_proxy",
                  "typed_config": { "@type": tcp, "stat_prefix": "PassthroughCluster", "cluster": "PassthroughCluster" } }] }] },
            { "name": "198.18.100.1_80", "address": addr("198.18.100.1", 80), "bind_to_port": false,
              "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
                  "@type": hcm, "stat_prefix": "outbound_198.18.100.1_80", "codec_type": "AUTO",
                  "route_config": { "name": "svc", "virtual_hosts": [{ "name": "svc", "domains": ["*"],
                      "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "svc" } }] }] },
                  "http_filters": [{ "name": "envoy.filters.http.router", "typed_config": { "@type": router } }] } }] }] },
        ],
        "clusters": [
            { "name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s" },
            { "name": "svc", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
              "load_assignment": { "cluster_name": "svc", "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": addr("198.18.2.10", 80) } }] }] } },
        ],
    } })
    .to_string()
}

fn scene(case: Case, opts: &Opts) -> Scene {
    let topo = Topology::create();
    let tmp = TempDir::new();
    let origins = vec![nginx_in(&topo.nodes[1].pods[0], &tmp.0, opts.server_cpu), nginx_in(&topo.nodes[1].pods[1], &tmp.0, opts.server_cpu)];
    let pins = BpfFs::mount_at(&tmp.0.join("bpffs"));
    let mut s = Scene { proxy: None, redirector: None, _origins: origins, pins, tmp, topo };
    let node1 = &s.topo.nodes[0];
    // Client ports for the thousands of connections of a shared topology.
    let sysctl = node1.pods[0].command("sysctl").args(["-qw", "net.ipv4.ip_local_port_range=1024 65535"]).status();
    assert!(sysctl.is_ok_and(|st| st.success()), "sysctl ip_local_port_range in pod10");
    match case {
        Case::BypassNoPrograms | Case::BypassWithPrograms => {}
        Case::RedirectedEbpf | Case::RedirectedNftables => {
            let config = s.tmp.0.join("node-proxy.json");
            fs::write(&config, proxy_config()).expect("write proxy config");
            let mode = if case == Case::RedirectedEbpf { "ebpf" } else { "nftables" };
            let bin = tests::binary::node_proxy_bin();
            let mut argv: Vec<String> = vec!["nsenter".into(), format!("--net=/run/netns/{}", node1.ns.name()), "--".into()];
            argv.extend(node1.proxy_cgroup_wrapper());
            argv.extend([bin.display().to_string(), "--config".to_owned(), config.display().to_string()]);
            argv.extend(proxy_flags("127.0.0.1:15000"));
            argv.extend(
                [
                    "--redirect",
                    mode,
                    "--redirect-cgroup",
                    &node1.pods_cgroup.path().display().to_string(),
                    "--redirect-address",
                    PROXY_TARGET,
                    "--bpf-pin-dir",
                    &s.pins.path().join("node1").display().to_string(),
                    "--upstream-mark",
                    MARK,
                ]
                .map(str::to_owned),
            );
            let mut proxy = Server::start("node-proxy", opts.server_cpu, &argv, s.tmp.0.join("proxy.log"));
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                proxy.check_alive();
                let got = in_netns(Some(node1.ns.name()), || tests::clients::http_get(sa("127.0.0.1:15000"), "/redirect", Duration::from_secs(2)));
                if got.as_ref().is_ok_and(|r| r.status == 200 && r.body.contains(VIP)) {
                    break;
                }
                assert!(Instant::now() < deadline, "node-proxy did not redirect {VIP} within 30 s: {got:?}\n{}", tail(&proxy.log));
                std::thread::sleep(Duration::from_millis(50));
            }
            s.proxy = Some(proxy);
        }
    }
    // Both origins answer from pod10 before anything is measured.
    for dst in [SERVICE_ENDPOINT, UNCONFIGURED, case.destination()] {
        let d = s.topo.nodes[0].pods[0].dial(sa(dst), "/");
        assert!(d.response.starts_with("HTTP/1.1 200"), "{dst}: {}", d.response);
    }
    s
}

impl Scene {
    /// Attaches the redirect programs to node1's pods' cgroup, their set holding
    /// [`OTHER_ENTRIES`] destinations other than the measured one.
    fn attach_programs(&mut self) {
        let node1 = &self.topo.nodes[0];
        let options = redirect_bpf::Options { bypass_mark: 0, proxy_cgroup: Some(node1.proxy_cgroup.path().to_path_buf()) };
        let r = redirect_bpf::Redirector::attach_with(node1.pods_cgroup.path(), sa(PROXY_TARGET), &self.pins.path().join("bench"), options)
            .unwrap_or_else(|e| panic!("attach: {e}"));
        for i in 0..OTHER_ENTRIES {
            r.add(SocketAddr::from(([198, 18, 200 + (i / 250) as u8, (i % 250) as u8 + 1], 80))).expect("add");
        }
        self.redirector = Some(r);
    }

    /// Detaches the programs [`Scene::attach_programs`] attached; returns their work.
    fn detach_programs(&mut self) -> HookCost {
        let r = self.redirector.take().expect("programs attached");
        let c = r.counters();
        assert_eq!(c.redirected, 0, "the bypass case redirected connections: {c:?}");
        assert!(c.bypassed_not_in_set > 0, "the programs did not see the bypass connections: {c:?}");
        let cost = HookCost::of(&r, c.bypassed_not_in_set);
        drop(r);
        redirect_bpf::Redirector::detach(&self.pins.path().join("bench")).unwrap_or_else(|e| panic!("detach: {e}"));
        // Unpinned links are released by the kernel asynchronously, within milliseconds.
        std::thread::sleep(Duration::from_millis(250));
        cost
    }
}

/// The hooks' work, from the kernel's per-program statistics, and the connections it served.
#[derive(Clone, Debug, Default)]
struct HookCost {
    connections: u64,
    /// Per program: (name, runs, nanoseconds).
    programs: Vec<(&'static str, u64, u64)>,
}

impl HookCost {
    fn of(r: &redirect_bpf::Redirector, connections: u64) -> HookCost {
        let stats = r.program_stats().unwrap_or_else(|e| panic!("BPF program statistics: {e}"));
        HookCost { connections, programs: stats.iter().map(|p| (p.name, p.run_count, p.run_time.as_nanos() as u64)).collect() }
    }

    fn add(&mut self, other: &HookCost) {
        self.connections += other.connections;
        for &(name, runs, ns) in &other.programs {
            match self.programs.iter_mut().find(|p| p.0 == name) {
                Some(p) => (p.1, p.2) = (p.1 + runs, p.2 + ns),
                None => self.programs.push((name, runs, ns)),
            }
        }
    }

    fn ns_per_connection(&self) -> f64 {
        self.programs.iter().map(|p| p.2).sum::<u64>() as f64 / self.connections.max(1) as f64
    }

    fn describe(&self) -> String {
        let per = |p: &(&str, u64, u64)| format!("{} {:.2} runs × {:.0} ns", p.0, p.1 as f64 / self.connections.max(1) as f64, p.2 as f64 / p.1.max(1) as f64);
        self.programs.iter().filter(|p| p.1 > 0).map(per).collect::<Vec<_>>().join(", ")
    }

    fn json(&self) -> Value {
        json!({ "connections": self.connections, "ns_per_connection": self.ns_per_connection(),
            "programs": self.programs.iter().map(|p| json!({ "name": p.0, "runs": p.1, "ns": p.2 })).collect::<Vec<_>>() })
    }
}

/// One wrk run from pod10.
fn wrk(pod: &Pod, cpu: usize, dst: &str, load: Load, seconds: u64) -> WrkResult {
    let conns = if matches!(load, Load::CloseRate | Load::KeepAliveRate) { "32" } else { "1" };
    let mut cmd = pod.command("taskset");
    cmd.args(["-c", &cpu.to_string(), "wrk", "-t1", &format!("-c{conns}"), &format!("-d{seconds}s"), "--latency"]);
    if matches!(load, Load::CloseRate | Load::CloseLatency) {
        // The space after the colon matters to wrk.
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{dst}/"));
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run wrk in {}: {e}", pod.name));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let r = parse_wrk(&text).unwrap_or_else(|| panic!("cannot parse wrk output:\n{text}"));
    assert!(r.errors == 0.0, "wrk saw {} errors for {dst} ({load:?}):\n{text}", r.errors);
    r
}

#[derive(Clone, Debug, Default)]
struct Measured {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn measure(pod: &Pod, case: Case, load: Load, opts: &Opts) -> Measured {
    let r = wrk(pod, opts.gen_cpu, case.destination(), load, opts.duration);
    Measured { rps: r.rps, p50_ms: r.p50_ms.unwrap_or(f64::NAN), p99_ms: r.p99_ms.unwrap_or(f64::NAN) }
}

/// The four loads of a redirected case in a fresh topology, and (eBPF) the hooks' work
/// per redirected connection.
fn run_redirected_case(case: Case, opts: &Opts) -> (Vec<Measured>, Option<HookCost>) {
    let s = scene(case, opts);
    let pod = &s.topo.nodes[0].pods[0];
    let out = LOADS.iter().map(|&load| measure(pod, case, load, opts)).collect();
    let cost = (case == Case::RedirectedEbpf).then(|| {
        let r = redirect_bpf::Redirector::open(&s.pins.path().join("node1")).unwrap_or_else(|e| panic!("open the proxy's pins: {e}"));
        let c = r.counters();
        assert!(c.redirected > 0 && c.getsockopt_answered > 0, "the eBPF case did not redirect: {c:?}");
        HookCost::of(&r, c.redirected)
    });
    (out, cost)
}

/// Per-repetition ratios `b / a` (rates) or `b / a` of p50 (latencies), per load.
struct Comparison {
    title: &'static str,
    a: Case,
    b: Case,
    runs: Vec<Pair>,
    /// The BPF hooks' work on side b, summed over the run.
    cost: HookCost,
    /// How each repetition was run.
    method: &'static str,
}

/// One repetition: side a's and side b's measurements.
type Pair = (Vec<Measured>, Vec<Measured>);

impl Comparison {
    fn ratios(&self, load: usize) -> Vec<f64> {
        let pick = |m: &Measured| if LOADS[load].is_rate() { m.rps } else { m.p50_ms };
        self.runs.iter().map(|(a, b)| pick(&b[load]) / pick(&a[load])).collect()
    }

    /// Median over repetitions of side a's (`false`) or b's measurement of `load`.
    fn median_of(&self, load: usize, b: bool, pick: fn(&Measured) -> f64) -> f64 {
        median(self.runs.iter().map(|r| pick(if b { &r.1[load] } else { &r.0[load] })).collect()).unwrap_or(f64::NAN)
    }
}

/// The bypass comparison in one topology: for every repetition and load, a measurement
/// without programs and one with them, back to back, the order alternating.
fn compare_bypass(opts: &Opts) -> Comparison {
    let (a, b) = (Case::BypassNoPrograms, Case::BypassWithPrograms);
    let mut s = scene(a, opts);
    let mut runs = Vec::new();
    let mut cost = HookCost::default();
    for rep in 0..opts.reps {
        log(format!("  rep {}/{}", rep + 1, opts.reps));
        let (mut with_a, mut with_b) = (Vec::new(), Vec::new());
        for (i, &load) in LOADS.iter().enumerate() {
            let b_first = (rep + i) % 2 == 1;
            for side_b in [b_first, !b_first] {
                if side_b {
                    s.attach_programs();
                    with_b.push(measure(&s.topo.nodes[0].pods[0], b, load, opts));
                    cost.add(&s.detach_programs());
                } else {
                    with_a.push(measure(&s.topo.nodes[0].pods[0], a, load, opts));
                }
            }
        }
        runs.push((with_a, with_b));
    }
    Comparison {
        title: "Bypass path: eBPF programs attached ÷ none attached",
        a,
        b,
        runs,
        cost,
        method: "one topology; per load, the two sides back to back in alternating order, the programs attached for and detached after each measurement",
    }
}

/// The redirected comparison, each case in its own fresh topology, ABBA.
fn compare_redirected(opts: &Opts) -> Comparison {
    let (a, b) = (Case::RedirectedNftables, Case::RedirectedEbpf);
    let mut runs = Vec::new();
    let mut cost = HookCost::default();
    for rep in 0..opts.reps {
        let (first, second) = if rep % 2 == 0 { (a, b) } else { (b, a) };
        log(format!("  rep {}/{}: {} then {}", rep + 1, opts.reps, first.name(), second.name()));
        let (x, cx) = run_redirected_case(first, opts);
        let (y, cy) = run_redirected_case(second, opts);
        for c in [cx, cy].iter().flatten() {
            cost.add(c);
        }
        runs.push(if first == a { (x, y) } else { (y, x) });
    }
    Comparison {
        title: "Redirected path: eBPF redirect ÷ nftables REDIRECT (same proxy)",
        a,
        b,
        runs,
        cost,
        method: "each case in a fresh topology (REDIRECT's conntrack state must not carry over), ABBA",
    }
}

fn main() {
    let Some(opts) = parse_args() else { return };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        die("needs root (network namespaces, cgroups, BPF programs)");
    }
    for tool in ["wrk", "nginx", "taskset", "nsenter", "nft"] {
        if !common::tool_found(tool) {
            die(&format!("{tool} not found: apt-get install -y wrk nginx util-linux nftables"));
        }
    }
    let started = Instant::now();
    let bin = tests::binary::node_proxy_bin();
    log(format!("node-proxy: {}", bin.display()));
    // The kernel counts run time per program while this lives.
    let _stats = redirect_bpf::ProgramStats::enable().unwrap_or_else(|e| die(&e.to_string()));
    log("bypass: programs attached vs none");
    let bypass = compare_bypass(&opts);
    log("redirected: eBPF vs nftables REDIRECT");
    let redirected = compare_redirected(&opts);
    let (md, raw) = report(&[&bypass, &redirected], &opts, started.elapsed());
    println!("\n{md}");
    if let Some(out) = &opts.out {
        write_section(out, SECTION, &md);
        let json_path = out.with_file_name("results-redirect.json");
        fs::write(&json_path, serde_json::to_string_pretty(&raw).unwrap_or_default()).unwrap_or_else(|e| panic!("write {}: {e}", json_path.display()));
        log(format!("wrote the section into {} and {}", out.display(), json_path.display()));
    }
}

fn report(comparisons: &[&Comparison], opts: &Opts, elapsed: Duration) -> (String, Value) {
    let mut w = String::new();
    let _ = writeln!(w, "<!-- BEGIN {SECTION} (written by `cargo bench -p benches --bench redirect`; benches/run.py keeps this section) -->");
    let _ = writeln!(w, "## Redirect (eBPF vs none, eBPF vs nftables)\n");
    let _ = writeln!(
        w,
        "`cargo bench -p benches --bench redirect` at {}, {}; {} repetitions, {} s per measurement, {:.0} s in all. \
         Two-node VXLAN topology of the end-to-end tests; wrk in pod10 (CPU {}), nginx and node-proxy (release, 1 worker) on CPU {}. \
         Ratios are medians of per-repetition ratios (min–max in brackets); latency ratios compare p50. \
         BPF run-time statistics are on for the whole run (two clock reads per program run, charged to the eBPF side).\n",
        git_rev(),
        machine(),
        opts.reps,
        opts.duration,
        elapsed.as_secs_f64(),
        opts.gen_cpu,
        opts.server_cpu
    );
    let mut raw = Vec::new();
    for c in comparisons {
        let _ = writeln!(w, "### {}\n", c.title);
        let _ = writeln!(w, "Method: {}.\n", c.method);
        let _ = writeln!(w, "| measurement | {} | {} | ratio |", c.a.name(), c.b.name());
        let _ = writeln!(w, "|---|---:|---:|---:|");
        for (i, load) in LOADS.iter().enumerate() {
            let cell = |b: bool| -> String {
                if load.is_rate() {
                    fmt_int(c.median_of(i, b, |m| m.rps))
                } else {
                    format!("{:.3} / {:.3} ms", c.median_of(i, b, |m| m.p50_ms), c.median_of(i, b, |m| m.p99_ms))
                }
            };
            let ratios = c.ratios(i);
            let (lo, hi) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(*v), h.max(*v)));
            let ratio = median(ratios.clone()).unwrap_or(f64::NAN);
            let _ = writeln!(w, "| {} | {} | {} | {ratio:.3} ({lo:.3}–{hi:.3}) |", load.name(), cell(false), cell(true));
            raw.push(json!({ "comparison": c.title, "load": load.key(), "ratios": ratios, "median_ratio": ratio,
                "a": c.runs.iter().map(|r| json!({ "rps": r.0[i].rps, "p50_ms": r.0[i].p50_ms, "p99_ms": r.0[i].p99_ms })).collect::<Vec<_>>(),
                "b": c.runs.iter().map(|r| json!({ "rps": r.1[i].rps, "p50_ms": r.1[i].p50_ms, "p99_ms": r.1[i].p99_ms })).collect::<Vec<_>>() }));
        }
        let _ = writeln!(
            w,
            "\nBPF hooks' time per connection ({}, {} connections): **{:.0} ns** ({}).\n",
            c.b.name(),
            fmt_int(c.cost.connections as f64),
            c.cost.ns_per_connection(),
            c.cost.describe()
        );
    }
    // The targets.
    let ratio = |c: &Comparison, load: usize| median(c.ratios(load)).unwrap_or(f64::NAN);
    let range = |c: &Comparison, load: usize| {
        let r = c.ratios(load);
        format!("{:.3}–{:.3}", r.iter().cloned().fold(f64::INFINITY, f64::min), r.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
    };
    let (b, r) = (comparisons[0], comparisons[1]);
    // A connect + request without programs (p50, one at a time), in ns.
    let connect_ns = b.median_of(1, false, |m| m.p50_ms) * 1e6;
    let share = b.cost.ns_per_connection() / connect_ns;
    let setup_rate = ratio(b, 0);
    let _ = writeln!(w, "| target | figure | met |");
    let _ = writeln!(w, "|---|---:|---|");
    let pct = TARGET_BYPASS * 100.0;
    let _ = writeln!(
        w,
        "| bypass: the hooks' time per connection within {pct:.0}% of a connect + request (p50 without programs) | {:.0} ns ÷ {:.1} µs = {:.2}% | {} |",
        b.cost.ns_per_connection(),
        connect_ns / 1e3,
        share * 100.0,
        yes(Some(share <= TARGET_BYPASS))
    );
    let _ = writeln!(
        w,
        "| bypass connection setup rate within {pct:.0}% of no programs | {setup_rate:.3} ({}) | {} |",
        range(b, 0),
        yes(Some((setup_rate - 1.0).abs() <= TARGET_BYPASS))
    );
    let _ = writeln!(
        w,
        "| bypass request latency (p50, new connection / keep-alive) within {pct:.0}% | {:.3} / {:.3} | {} |",
        ratio(b, 1),
        ratio(b, 3),
        yes(Some(ratio(b, 1).max(ratio(b, 3)) - 1.0 <= TARGET_BYPASS))
    );
    let (rr_close, rr_ka) = (ratio(r, 0), ratio(r, 2));
    let _ = writeln!(
        w,
        "| redirected req/s, eBPF ÷ nftables ≥ {TARGET_REDIRECTED:.1} (new connections / keep-alive) | {rr_close:.3} ({}) / {rr_ka:.3} ({}) | {} |",
        range(r, 0),
        range(r, 2),
        yes(Some(rr_close >= TARGET_REDIRECTED && rr_ka >= TARGET_REDIRECTED))
    );
    let _ = writeln!(w, "\n<!-- END {SECTION} -->");
    let costs = json!({ "bypass": b.cost.json(), "redirected_ebpf": r.cost.json(), "connect_request_p50_ns": connect_ns });
    (w, json!({ "git": git_rev(), "machine": machine(), "reps": opts.reps, "duration_s": opts.duration, "results": raw, "hook_costs": costs }))
}
