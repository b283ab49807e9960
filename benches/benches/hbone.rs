//! HBONE benchmark (issue 5 §6): mTLS between two node proxies.
//!
//! Four parts, each selectable with `--parts`:
//! 1. **throughput** (root): single-stream iperf3, client in pod10 (its cgroup), 10 s,
//!    one stream, in the two-node scene of the end-to-end tests
//!    ([`tests::mesh_scene`], release node-proxy, access logs off, log level warn).
//!    (a) *direct*: to iperf3 in pod21, a workload outside the mesh (tunnel NONE): no
//!    proxy on the path, plain routing over the VXLAN overlay; (b) *HBONE*: to iperf3
//!    in pod20 (meshed): node1's eBPF redirect → node1's proxy (TCP passthrough) → HBONE
//!    mTLS → node2's capture of 198.18.2.10:15008 → node2's proxy → pod20; (c) when
//!    haproxy is installed, the alternative a user would pick for a TLS tunnel between
//!    nodes: two haproxy processes (TCP mode, one thread each) with mutual TLS 1.3
//!    between them over the overlay, to the same iperf3 in pod20 ([`HaproxyPair`]). The
//!    order of the paths rotates between repetitions; GB/s, Gbit/s, each proxy's CPU
//!    per GB.
//! 2. **http** (root): wrk (closed loop, keep-alive, 32 connections; then one
//!    connection for latency) from pod10 through node1's HTTP VIP listeners to nginx:
//!    (a) VIP 198.18.100.1 → cluster `svc` → pod20 (HBONE workload: upstream leg HBONE
//!    through node2's proxy), (b) VIP 198.18.100.2 → cluster `plain` → pod21 (tunnel
//!    NONE: plain TCP from node1's proxy). ABBA; req/s, mTLS ÷ plaintext per pair.
//! 3. **handshake** (in-process, no root): node-proxy's library, `hbone::outbound::Outbound`
//!    against `hbone::inbound::Inbound` on loopback, one new pooled HBONE connection per
//!    connect (a distinct gateway address 127.1.x.y per connect, so a distinct pool
//!    key), then one byte echoed through the tunnel; against a plain TCP connect and a
//!    bare tokio-rustls TLS 1.3 handshake with the same P-256 certificates and node-proxy's
//!    SPIFFE verifiers, and one with rustls' WebPKI verifiers (no SPIFFE), each also
//!    with one byte echoed. Sequential, one current-thread runtime: both ends and the
//!    echo server share one thread, so CPU per handshake is both ends'.
//! 4. **memory** (in-process, both ends): N idle pooled HBONE connections (distinct pool
//!    keys as above), RSS delta from /proc/self/smaps_rollup per connection; the
//!    process runs node-proxy's allocator (mimalloc).
//!
//! Writes the section "HBONE (mTLS between nodes)" of benches/RESULTS.md and
//! `results-hbone.json`. See benches/README.md.

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::mesh_scene::{Scene, SceneOptions};
use tests::topology::Pod;

mod common;
use common::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECTION: &str = "hbone";
const TARGET_GBPS: f64 = 0.9;
const TARGET_HTTP_RATIO: f64 = 0.8;
const IPERF_PORT: &str = "5201";
const HBONE_SERVER_IP: &str = "198.18.2.10";
const DIRECT_SERVER_IP: &str = "198.18.2.11";
const VIP_HBONE: &str = "198.18.100.1";
const VIP_PLAIN: &str = "198.18.100.2";

struct Opts {
    reps: usize,
    duration: u64,
    http_duration: u64,
    workers: usize,
    handshakes: usize,
    idle: Vec<usize>,
    parts: Vec<String>,
    perf: Option<PathBuf>,
    out: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo bench -p benches --bench hbone -- [--reps N] [--duration S] [--http-duration S] [--workers N] \
[--handshakes N] [--idle N,N] [--parts throughput,http,handshake,memory] [--quiet-timeout S] [--perf DIR] [--out FILE | --no-write]";

fn die(msg: &str) -> ! {
    eprintln!("hbone: {msg}");
    std::process::exit(2);
}

fn parse_args() -> Option<Opts> {
    let mut o = Opts {
        reps: 3,
        duration: 10,
        http_duration: 10,
        workers: 1,
        handshakes: 2000,
        idle: vec![500, 1000],
        parts: ["throughput", "http", "handshake", "memory"].map(str::to_owned).to_vec(),
        perf: None,
        out: Some(tests::binary::workspace_root().join("benches/RESULTS.md")),
    };
    let (mut bench, mut filters) = (false, Vec::new());
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| die(&format!("{name} needs a value\n{USAGE}")));
        let num = |name: &str, v: &str| -> usize { v.parse().unwrap_or_else(|_| die(&format!("{name}: not a number: {v}"))) };
        match a.as_str() {
            "--bench" => bench = true,
            "--reps" => o.reps = num(&a, &value(&a)),
            "--duration" => o.duration = num(&a, &value(&a)) as u64,
            "--http-duration" => o.http_duration = num(&a, &value(&a)) as u64,
            "--workers" => o.workers = num(&a, &value(&a)),
            "--handshakes" => o.handshakes = num(&a, &value(&a)),
            "--idle" => o.idle = value(&a).split(',').map(|v| num("--idle", v)).collect(),
            "--parts" => o.parts = value(&a).split(',').map(str::to_owned).collect(),
            "--quiet-timeout" => QUIET_TIMEOUT_S.store(num(&a, &value(&a)) as u64, std::sync::atomic::Ordering::Relaxed),
            "--perf" => o.perf = Some(PathBuf::from(value(&a))),
            "--out" => o.out = Some(PathBuf::from(value(&a))),
            "--no-write" => o.out = None,
            "-h" | "--help" => die(USAGE),
            s if s.starts_with('-') => die(&format!("unknown option {s}\n{USAGE}")),
            s => filters.push(s.to_owned()),
        }
    }
    if !bench {
        println!("hbone: a benchmark; run it with `cargo bench -p benches --bench hbone` (skipped)");
        return None;
    }
    if !filters.is_empty() && !filters.iter().any(|f| "hbone".contains(f.as_str())) {
        return None;
    }
    let known = ["throughput", "http", "handshake", "memory"];
    if let Some(p) = o.parts.iter().find(|p| !known.contains(&p.as_str())) {
        die(&format!("unknown part {p}\n{USAGE}"));
    }
    if o.reps < 1 || o.duration < 1 || o.http_duration < 1 || o.handshakes < 1 || o.handshakes > MAX_GATEWAYS || o.idle.iter().any(|&n| n + 1 > MAX_GATEWAYS) {
        die(&format!("out-of-range option (handshakes and idle connections at most {MAX_GATEWAYS})\n{USAGE}"));
    }
    Some(o)
}

impl Opts {
    fn runs(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

// ------------------------------------------------------------------ machine state

/// Busy CPU time of the whole machine (ticks) and whether a compiler is running.
fn machine_busy() -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    cpu.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum()
}

/// `--quiet-timeout`: how long to wait for running compilers before measuring anyway.
static QUIET_TIMEOUT_S: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(120);

/// Waits (up to `--quiet-timeout`) until no compiler runs; returns what was running at the end.
fn wait_for_quiet() -> Vec<String> {
    let timeout = QUIET_TIMEOUT_S.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let c = compilers_running();
        if c.is_empty() || Instant::now() > deadline {
            if !c.is_empty() {
                log(format!("  (compilers still running after {timeout} s: {c:?}; measuring anyway, flagged in the JSON)"));
            }
            return c;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// CPU seconds of a process (all threads) so far.
fn cpu_s(pid: u32) -> f64 {
    stat_of(pid).map_or(f64::NAN, |(_, t)| t as f64 / clk_tck())
}

/// What ran besides the measured processes: machine busy CPU-seconds during the run.
struct Noise {
    busy0: u64,
    compilers: Vec<String>,
    started: Instant,
}

impl Noise {
    fn start() -> Noise {
        let compilers = wait_for_quiet();
        Noise { busy0: machine_busy(), compilers, started: Instant::now() }
    }

    /// (machine busy cores on average, compilers seen at start or end).
    fn finish(self) -> (f64, Vec<String>) {
        let busy = (machine_busy() - self.busy0) as f64 / clk_tck() / self.started.elapsed().as_secs_f64();
        let mut c = self.compilers;
        c.extend(compilers_running());
        c.sort();
        c.dedup();
        (busy, c)
    }
}

// ------------------------------------------------------------------ processes in pods

/// A process started in a pod (its namespace and cgroup, own process group), killed on drop.
struct Bg(Child);

impl Bg {
    fn spawn(mut cmd: Command, what: &str) -> Bg {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Bg(child)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        // SAFETY: Pod::command puts the child in its own process group.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        TempDir::new_named("run")
    }

    fn new_named(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("np-bench-hbone-{}-{name}", std::process::id()));
        fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// nginx (1 worker, the runner's origin config) listening on 8080 in `pod`.
fn nginx_in(pod: &Pod, tmp: &Path) -> Bg {
    let prefix = tmp.join(format!("nginx-{}", pod.name));
    fs::create_dir_all(&prefix).expect("nginx prefix");
    let template_path = tests::binary::workspace_root().join("benches/configs/nginx-origin.conf");
    let template = fs::read_to_string(&template_path).unwrap_or_else(|e| panic!("read {}: {e}", template_path.display()));
    let conf = template
        .replace("listen 127.0.0.1:@H1_PORT@ backlog=4096;", "listen 8080 backlog=4096;")
        .replace("@H2C_PORT@", "8081")
        .replace("@PREFIX@", &prefix.display().to_string())
        .replace("@NOFILE@", "65536")
        .replace("@WORKER_CONNECTIONS@", "16384")
        .replace("@BODY_1K@", "x");
    assert!(!conf.lines().any(|l| !l.trim_start().starts_with('#') && l.contains('@')), "unfilled placeholder in {}", template_path.display());
    let path = prefix.join("nginx.conf");
    fs::write(&path, conf).expect("write nginx config");
    let mut cmd = pod.command("nginx");
    cmd.args(["-p", &prefix.display().to_string(), "-c", &path.display().to_string()]);
    Bg::spawn(cmd, "nginx")
}

// ------------------------------------------------------------------ 1. iperf3

#[derive(Clone, Debug)]
struct Stream {
    bytes: f64,
    seconds: f64,
    /// CPU seconds of node1's and node2's proxy during the run.
    proxy_cpu: [f64; 2],
    busy_cores: f64,
    compilers: Vec<String>,
    command: String,
}

impl Stream {
    fn gbytes_per_s(&self) -> f64 {
        self.bytes / self.seconds / 1e9
    }

    fn json(&self) -> Value {
        json!({ "bytes": self.bytes, "seconds": self.seconds, "GB_per_s": self.gbytes_per_s(), "Gbit_per_s": self.gbytes_per_s() * 8.0,
            "proxy1_cpu_s": self.proxy_cpu[0], "proxy2_cpu_s": self.proxy_cpu[1], "machine_busy_cores": self.busy_cores,
            "compilers_running": self.compilers, "command": self.command })
    }
}

/// One iperf3 stream from pod10 to `server_ip:port`, with the CPU of `proxies` (node1's
/// and node2's) during it.
fn iperf_via(s: &Scene, server_ip: &str, port: &str, seconds: u64, proxies: [u32; 2]) -> Stream {
    let pids = proxies;
    let args = ["-c", server_ip, "-p", port, "-t", &seconds.to_string(), "-P", "1", "-J"];
    let command = format!("iperf3 {} (in pod10's namespace and cgroup)", args.join(" "));
    for attempt in 0.. {
        let noise = Noise::start();
        let cpu0 = pids.map(cpu_s);
        let mut cmd = s.client().command("iperf3");
        cmd.args(args);
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run iperf3: {e}"));
        let cpu1 = pids.map(cpu_s);
        let (busy_cores, compilers) = noise.finish();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let recv = &v["end"]["sum_received"];
        match (recv["bytes"].as_f64(), recv["seconds"].as_f64()) {
            (Some(bytes), Some(seconds)) if out.status.success() && bytes > 0.0 => {
                return Stream { bytes, seconds, proxy_cpu: [cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]], busy_cores, compilers, command };
            }
            _ if attempt < 3 => {
                log(format!("  iperf3 to {server_ip} failed ({}), retrying: {}", out.status, v["error"]));
                std::thread::sleep(Duration::from_secs(1));
            }
            _ => panic!("iperf3 to {server_ip} failed ({}): {text}{}", out.status, String::from_utf8_lossy(&out.stderr)),
        }
    }
    unreachable!()
}

/// One iperf3 stream from pod10 to `server_ip` (port 5201), with our proxies' CPU.
fn iperf(s: &Scene, server_ip: &str, seconds: u64) -> Stream {
    iperf_via(s, server_ip, IPERF_PORT, seconds, [s.proxy1.pid() as u32, s.proxy2.pid() as u32])
}

/// The off-the-shelf alternative to an HBONE pair on the same path: two haproxy
/// processes (TCP mode, one thread each, as our proxies run one worker), node1's
/// taking pod10's connection on its bridge address and opening mutual TLS 1.3 to
/// node2's across the overlay (certificates from the same mesh CA, chains verified
/// both ways; haproxy cannot check SPIFFE URI SANs), node2's connecting to pod20's
/// iperf3. Three TCP legs and one TLS hop, as HBONE has, without HTTP/2.
struct HaproxyPair {
    procs: [Bg; 2],
    _dir: TempDir,
}

const HAPROXY_PORT: &str = "15201";
const HAPROXY_TLS_PORT: &str = "15443";

impl HaproxyPair {
    fn start(s: &Scene) -> HaproxyPair {
        let dir = TempDir::new_named("haproxy");
        let ca = &s.ca.ca;
        let now = std::time::SystemTime::now();
        let pem = |name: &str| {
            let id = istio_compat::model::workload::Identity::new(tests::mesh_scene::TD, tests::mesh_scene::NS, name);
            let issued = ca.issue_pem(&id, now - Duration::from_secs(60), now + Duration::from_secs(86_400)).unwrap_or_else(|e| panic!("issue {name}: {e}"));
            let path = dir.0.join(format!("{name}.pem"));
            fs::write(&path, format!("{}{}", issued.chain_pem.concat(), issued.key_pem)).expect("write haproxy certificate");
            path
        };
        let (client, server) = (pem("haproxy-client"), pem("haproxy-server"));
        let root = dir.0.join("root.pem");
        fs::write(&root, ca.root_pem()).expect("write root");
        let (node1, node2) = (s.topo.nodes[0].ip4, s.topo.nodes[1].ip4);
        let global = "global\n  nbthread 1\n  maxconn 256\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n";
        let tls = format!("ca-file {} verify required ssl-min-ver TLSv1.3", root.display());
        let configs = [
            format!("{global}listen tunnel\n  bind {node1}:{HAPROXY_PORT}\n  server node2 {node2}:{HAPROXY_TLS_PORT} ssl crt {} {tls}\n", client.display()),
            format!(
                "{global}listen tunnel\n  bind {node2}:{HAPROXY_TLS_PORT} ssl crt {} {tls}\n  server pod20 {HBONE_SERVER_IP}:{IPERF_PORT}\n",
                server.display()
            ),
        ];
        let procs = [0, 1].map(|i| {
            let cfg = dir.0.join(format!("node{}.cfg", i + 1));
            fs::write(&cfg, &configs[i]).expect("write haproxy config");
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", s.topo.nodes[i].ns.name(), "haproxy", "-db", "-f", &cfg.display().to_string()]);
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            Bg::spawn(cmd, "haproxy")
        });
        std::thread::sleep(Duration::from_millis(500));
        HaproxyPair { procs, _dir: dir }
    }

    fn stream(&self, s: &Scene, seconds: u64) -> Stream {
        let pids = [0, 1].map(|i| {
            // `ip netns exec` execs haproxy in place: the child is haproxy itself.
            self.procs[i].0.id()
        });
        iperf_via(s, &s.topo.nodes[0].ip4.to_string(), HAPROXY_PORT, seconds, pids)
    }
}

/// Records `perf record -g` of both proxies during one extra HBONE stream.
fn perf_profile(s: &Scene, dir: &Path, seconds: u64) -> Vec<String> {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let mut recs = Vec::new();
    for (name, pid) in [("proxy1", s.proxy1.pid()), ("proxy2", s.proxy2.pid())] {
        let data = dir.join(format!("{name}.data"));
        let child = Command::new("perf")
            .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o", &data.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run perf: {e}"));
        recs.push((name, child, data));
    }
    std::thread::sleep(Duration::from_millis(500));
    let st = iperf(s, HBONE_SERVER_IP, seconds);
    log(format!("  profiled stream: {:.3} GB/s", st.gbytes_per_s()));
    let mut out = Vec::new();
    for (name, mut child, data) in recs {
        // SAFETY: SIGINT to our own perf child, which then writes its file.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait();
        let report = Command::new("perf")
            .args(["report", "--no-children", "--sort", "dso,symbol", "--stdio", "-g", "none", "--percent-limit", "1", "-i", &data.display().to_string()])
            .output();
        let text = report.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let top: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).take(25).collect();
        fs::write(dir.join(format!("{name}.txt")), &text).ok();
        out.push(format!("{name}:\n{}", top.join("\n")));
    }
    out
}

fn throughput(opts: &Opts) -> Value {
    log("throughput: single-stream iperf3, direct vs HBONE vs a haproxy mTLS pair");
    let s = Scene::start(SceneOptions { workers: opts.workers, ..SceneOptions::bench("bench-hbone-tput") });
    let servers: Vec<Bg> = [&s.topo.nodes[1].pods[0], &s.topo.nodes[1].pods[1]]
        .iter()
        .map(|pod| {
            let mut cmd = pod.command("iperf3");
            cmd.args(["-s", "-p", IPERF_PORT]);
            Bg::spawn(cmd, "iperf3 -s")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let haproxy = tool_found("haproxy").then(|| HaproxyPair::start(&s));
    if haproxy.is_none() {
        log("  haproxy not found (apt-get install haproxy): the haproxy mTLS pair is skipped");
    }
    // Warm-up (unmeasured): every path, the HBONE connection pooled and certificates issued.
    let _ = iperf(&s, HBONE_SERVER_IP, 1);
    let _ = iperf(&s, DIRECT_SERVER_IP, 1);
    if let Some(h) = &haproxy {
        let _ = h.stream(&s, 1);
    }
    let mut pairs: Vec<(Stream, Stream, Option<Stream>)> = Vec::new();
    for rep in 0..opts.reps {
        // The order rotates, so that no path always runs first.
        let mut order = vec!["direct", "HBONE", "haproxy"];
        order.retain(|p| *p != "haproxy" || haproxy.is_some());
        let n = order.len();
        order.rotate_left(rep % n);
        log(format!("  rep {}/{} ({})", rep + 1, opts.reps, order.join(", ")));
        let (mut d, mut h, mut x) = (None, None, None);
        for path in order {
            let st = match (path, &haproxy) {
                ("haproxy", Some(pair)) => pair.stream(&s, opts.duration),
                ("HBONE", _) => iperf(&s, HBONE_SERVER_IP, opts.duration),
                _ => iperf(&s, DIRECT_SERVER_IP, opts.duration),
            };
            log(format!("    {path:7}: {:.3} GB/s, proxy CPU {:.2}/{:.2} s", st.gbytes_per_s(), st.proxy_cpu[0], st.proxy_cpu[1]));
            match path {
                "haproxy" => x = Some(st),
                "HBONE" => h = Some(st),
                _ => d = Some(st),
            }
        }
        pairs.push((d.expect("direct"), h.expect("hbone"), x));
    }
    drop(haproxy);
    let profile = opts.perf.as_ref().map(|dir| perf_profile(&s, dir, opts.duration));
    // Proof that the HBONE case crossed both proxies: node2 reports mTLS streams.
    let labels = [("reporter", "destination"), ("connection_security_policy", "mutual_tls")];
    let node2_bytes = s.proxy2.metric("istio_tcp_received_bytes_total", &labels);
    drop(servers);
    json!({
        "pairs": pairs.iter().map(|(d, h, x)| {
            let mut p = json!({ "direct": d.json(), "hbone": h.json(), "ratio": h.gbytes_per_s() / d.gbytes_per_s() });
            if let Some(x) = x {
                p["haproxy_mtls"] = x.json();
                p["hbone_vs_haproxy"] = json!(h.gbytes_per_s() / x.gbytes_per_s());
            }
            p
        }).collect::<Vec<_>>(),
        "node2_mtls_received_bytes": node2_bytes,
        "workers": opts.workers,
        "perf": profile,
    })
}

// ------------------------------------------------------------------ 2. HTTP rate

fn wrk_run(s: &Scene, vip: &str, conns: u32, seconds: u64) -> Value {
    let pids = [s.proxy1.pid() as u32, s.proxy2.pid() as u32];
    let args = ["-t1".to_owned(), format!("-c{conns}"), format!("-d{seconds}s"), "--latency".to_owned(), format!("http://{vip}/")];
    let noise = Noise::start();
    let cpu0 = pids.map(cpu_s);
    let mut cmd = s.client().command("wrk");
    cmd.args(&args);
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run wrk: {e}"));
    let cpu1 = pids.map(cpu_s);
    let (busy, compilers) = noise.finish();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let r = parse_wrk(&text).unwrap_or_else(|| panic!("cannot parse wrk output:\n{text}"));
    assert!(r.errors == 0.0, "wrk saw {} errors for {vip}:\n{text}", r.errors);
    let requests = if r.requests > 0.0 { r.requests } else { r.rps * seconds as f64 };
    json!({ "rps": r.rps, "requests": requests, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
        "proxy1_cpu_us_per_req": (cpu1[0] - cpu0[0]) * 1e6 / requests, "proxy2_cpu_us_per_req": (cpu1[1] - cpu0[1]) * 1e6 / requests,
        "machine_busy_cores": busy, "compilers_running": compilers,
        "command": format!("wrk {} (in pod10's namespace and cgroup)", args.join(" ")) })
}

fn http(opts: &Opts) -> Value {
    log("http: wrk through node1's VIP listener, HBONE upstream vs plaintext upstream");
    let tmp = TempDir::new();
    let s = Scene::start(SceneOptions { workers: opts.workers, ..SceneOptions::bench("bench-hbone-http") });
    let _origins = [nginx_in(&s.topo.nodes[1].pods[0], &tmp.0), nginx_in(&s.topo.nodes[1].pods[1], &tmp.0)];
    for vip in [VIP_HBONE, VIP_PLAIN] {
        let dst: SocketAddr = format!("{vip}:80").parse().expect("vip");
        let ok = (0..50).any(|_| {
            let d = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.client().dial(dst, "/")));
            let good = d.as_ref().is_ok_and(|d| d.response.starts_with("HTTP/1.1 200"));
            if !good {
                std::thread::sleep(Duration::from_millis(200));
            }
            good
        });
        assert!(ok, "{vip} does not answer 200 through node1's proxy:\n{}", s.proxy1.stderr());
    }
    // Warm-up: pools filled on both paths.
    let _ = wrk_run(&s, VIP_HBONE, 32, 1);
    let _ = wrk_run(&s, VIP_PLAIN, 32, 1);
    let mut pairs = Vec::new();
    for rep in 0..opts.reps {
        let mtls_first = rep % 2 == 1;
        log(format!("  rep {}/{} ({} first)", rep + 1, opts.reps, if mtls_first { "mTLS" } else { "plaintext" }));
        let mut pair = json!({});
        for (load, conns) in [("rate", 32), ("latency", 1)] {
            for mtls in [mtls_first, !mtls_first] {
                let r = wrk_run(&s, if mtls { VIP_HBONE } else { VIP_PLAIN }, conns, opts.http_duration);
                log(format!(
                    "    {load} {}: {:.0} req/s, p50 {:.3} ms",
                    if mtls { "mTLS     " } else { "plaintext" },
                    r["rps"].as_f64().unwrap_or(f64::NAN),
                    r["p50_ms"].as_f64().unwrap_or(f64::NAN)
                ));
                pair[load][if mtls { "mtls" } else { "plain" }] = r;
            }
        }
        pairs.push(pair);
    }
    json!({ "pairs": pairs, "workers": opts.workers })
}

// ------------------------------------------------------------------ 3 and 4: in-process

/// Gateway addresses 127.1.x.y: one pool key each.
const MAX_GATEWAYS: usize = 4000;

fn gateway_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1)
}

mod inproc {
    //! node-proxy's HBONE ends in this process, on loopback.
    use super::*;
    use istio_compat::model::workload::{Identity, Workload};
    use node_proxy::drain::Drain;
    use node_proxy::hbone::inbound::Inbound;
    use node_proxy::hbone::outbound::Outbound;
    use node_proxy::hbone::plan::Tunnel;
    use node_proxy::identity::{CertStore, LocalIssuer};
    use node_proxy::telemetry::metrics::Metrics;
    use node_proxy::tls::{LocalCa, TrustDomains};
    use node_proxy::xds::workload::{LiveWorkloads, WorkloadXds};
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use xds_client::istio::workload::{address, Address, TunnelProtocol, Workload as XdsWorkload};
    use xds_client::type_url::ADDRESS;

    pub const TD: &str = "cluster.local";

    pub fn client_id() -> Identity {
        Identity::new(TD, "ns1", "client")
    }

    pub fn server_id() -> Identity {
        Identity::new(TD, "ns2", "server")
    }

    /// The server end: Inbound on 0.0.0.0:port for the workload `ns2/server`, whose
    /// addresses are 127.0.0.1 (where the echo server listens) and every gateway address.
    pub struct Server {
        pub port: u16,
        pub echo: SocketAddr,
        pub ca: Arc<LocalCa>,
        pub drain: Arc<Drain>,
        _stop_xds: tokio::sync::oneshot::Sender<()>,
        _ads: tests::AdsServer,
    }

    pub async fn echo_on(ip: IpAddr) -> SocketAddr {
        let l = TcpListener::bind((ip, 0)).await.expect("bind echo");
        let addr = l.local_addr().expect("echo address");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    pub async fn server(gateways: usize) -> Server {
        let ca = Arc::new(LocalCa::generate(TD).expect("CA"));
        let ads = tests::AdsServer::start();
        let uid = "Kubernetes//Pod/ns2/server-1";
        let mut addresses = vec![vec![127, 0, 0, 1]];
        addresses.extend((0..gateways).map(|i| gateway_ip(i).octets().to_vec()));
        let w = Address {
            r#type: Some(address::Type::Workload(XdsWorkload {
                uid: uid.to_owned(),
                name: "server-1".to_owned(),
                namespace: "ns2".to_owned(),
                addresses,
                service_account: "server".to_owned(),
                node: "node2".to_owned(),
                tunnel_protocol: TunnelProtocol::Hbone as i32,
                ..Default::default()
            })),
        };
        ads.set(ADDRESS, uid, xds_client::pb::google::protobuf::Any { type_url: ADDRESS.to_owned(), value: w.encode_to_vec() });
        let live = Arc::new(LiveWorkloads::default());
        let xds = WorkloadXds::new(live.clone(), Arc::new(Metrics::new()));
        let node = xds_client::node::NodeIdentity {
            ips: vec!["127.0.0.1".into()],
            pod_name: "node-proxy-bench".into(),
            namespace: "istio-system".into(),
            dns_domain: TD.into(),
            cluster_id: "Kubernetes".into(),
            node_name: "node2".into(),
            ..Default::default()
        };
        let config = xds_client::ads::AdsConfig {
            transport: xds_client::transport::TransportConfig::new(&ads.url()),
            node: xds_client::node::ztunnel(&node),
            protocol: xds_client::ads::Protocol::Delta,
            backoff: xds_client::ads::Backoff::default(),
        };
        let (stop_xds, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(xds.run(config, async move {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(20);
        while live.load().index.workload("", gateway_ip(gateways.saturating_sub(1)).into()).is_none() {
            assert!(Instant::now() < deadline, "the workload never arrived over the workload API");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let certs = Arc::new(CertStore::new(Arc::new(LocalIssuer { ca: ca.clone(), validity: Duration::from_secs(3600) })));
        certs.set_identities([server_id()]);
        let inbound = Arc::new(Inbound::new(live, certs, TrustDomains::local(TD), String::new(), None));
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).await.expect("bind the HBONE listener");
        let port = l.local_addr().expect("address").port();
        let drain = Arc::new(Drain::default());
        inbound.run_on_thread(l, drain.clone()).expect("start the HBONE listener");
        Server { port, echo: echo_on(Ipv4Addr::LOCALHOST.into()).await, ca, drain, _stop_xds: stop_xds, _ads: ads }
    }

    fn workload(json: Value) -> Arc<Workload> {
        Arc::new(serde_json::from_value(json).expect("a workload"))
    }

    pub struct Client {
        pub outbound: Outbound,
        source: Arc<Workload>,
        destination: Arc<Workload>,
    }

    pub fn client(ca: &Arc<LocalCa>) -> Client {
        let certs = Arc::new(CertStore::new(Arc::new(LocalIssuer { ca: ca.clone(), validity: Duration::from_secs(3600) })));
        certs.set_identities([client_id()]);
        let source = workload(json!({ "uid": "Kubernetes//Pod/ns1/client-1", "name": "client-1", "namespace": "ns1", "addresses": ["127.0.0.1"],
            "tunnel": "HBONE", "identity": client_id().to_string(), "workload_name": "client", "node": "node1" }));
        let destination = workload(json!({ "uid": "Kubernetes//Pod/ns2/server-1", "name": "server-1", "namespace": "ns2", "addresses": ["127.0.0.1"],
            "tunnel": "HBONE", "identity": server_id().to_string(), "node": "node2" }));
        Client { outbound: Outbound::new(certs, TrustDomains::local(TD), None, "Kubernetes".into()), source, destination }
    }

    impl Client {
        /// A stream through a new pooled connection to gateway `i`, one byte echoed.
        pub async fn one(&self, server: &Server, i: usize) -> Result<(), String> {
            let t = Tunnel {
                gateway: SocketAddr::new(gateway_ip(i).into(), server.port),
                target: server.echo,
                source: self.source.clone(),
                destination: self.destination.clone(),
                identities: vec![server_id()],
            };
            let mut s = self.outbound.connect(&t, Ipv4Addr::LOCALHOST.into(), None).await.map_err(|e| e.to_string())?;
            s.write_all(b"x").await.map_err(|e| e.to_string())?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            Ok(())
        }
    }

    /// Plain TCP: connect to the echo server, one byte echoed.
    pub async fn tcp_one(echo: SocketAddr) -> Result<(), String> {
        let mut s = TcpStream::connect(echo).await.map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        s.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// A TLS echo server with `config`: per connection, the handshake, then echo until EOF.
    pub async fn tls_echo(config: Arc<rustls::ServerConfig>) -> SocketAddr {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind TLS echo");
        let addr = l.local_addr().expect("address");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let _ = s.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else { return };
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    /// A full TLS handshake with `config` to `addr`, one byte echoed.
    pub async fn tls_one(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<(), String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from("hbone").map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// node-proxy's HBONE TLS configs (SPIFFE verifiers) for `ns1/client` → `ns2/server`.
    pub fn spiffe_configs(ca: &LocalCa) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let server = ca.issue(&server_id(), Duration::from_secs(3600)).expect("issue");
        let client = ca.issue(&client_id(), Duration::from_secs(3600)).expect("issue");
        let trust = TrustDomains::local(TD);
        (
            node_proxy::tls::server_config(&server, server.roots(), &trust).expect("server config"),
            node_proxy::tls::client_config(&client, client.roots(), &trust, vec![server_id()]).expect("client config"),
        )
    }

    /// node-proxy's HBONE client config, but offering only X25519MLKEM768 (as ztunnel
    /// under `COMPLIANCE_POLICY=pqc`): the hybrid post-quantum key exchange's cost.
    pub fn spiffe_pqc_client(ca: &LocalCa) -> Result<Arc<rustls::ClientConfig>, String> {
        let client = ca.issue(&client_id(), Duration::from_secs(3600)).map_err(|e| e.to_string())?;
        let provider =
            Arc::new(rustls::crypto::CryptoProvider { kx_groups: vec![node_proxy::tls::pqc::X25519MLKEM768], ..(*node_proxy::tls::provider()).clone() });
        let verifier =
            node_proxy::tls::verify::ServerIdentityVerifier::new(client.roots(), TrustDomains::local(TD), vec![server_id()]).map_err(|e| e.to_string())?;
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(client.chain().to_vec(), client.key().clone_key())
            .map_err(|e| e.to_string())?;
        c.alpn_protocols = vec![b"h2".to_vec()];
        c.resumption = rustls::client::Resumption::disabled();
        c.enable_sni = false;
        Ok(Arc::new(c))
    }

    /// Plain rustls mutual TLS 1.3 with WebPKI verifiers (DNS names, no SPIFFE), P-256
    /// certificates from an rcgen root, node-proxy's provider, no resumption.
    pub fn webpki_configs() -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let root = tests::pki::TestCa::new("bench root");
        let server = root.server_identity(&["hbone"]);
        let client = root.server_identity(&["client.ns1"]);
        let root_der = CertificateDer::from_pem_slice(root.cert_pem().as_bytes()).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root_der).map_err(|e| e.to_string())?;
        let roots = Arc::new(roots);
        let chain = |pem: &str| CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string());
        let key = |pem: &str| PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string());
        let provider = node_proxy::tls::provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().map_err(|e| e.to_string())?;
        let mut s = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain(&server.cert_pem)?, key(&server.key_pem)?)
            .map_err(|e| e.to_string())?;
        s.alpn_protocols = vec![b"h2".to_vec()];
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain(&client.cert_pem)?, key(&client.key_pem)?)
            .map_err(|e| e.to_string())?;
        c.alpn_protocols = vec![b"h2".to_vec()];
        c.resumption = rustls::client::Resumption::disabled();
        Ok((Arc::new(s), Arc::new(c)))
    }
}

/// CPU seconds of this process (all threads) so far.
fn self_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rss_kib() -> f64 {
    status_like("/proc/self/smaps_rollup", "Rss:") as f64
}

/// (µs wall, µs CPU) per operation over `n` sequential operations.
async fn timed<F, Fut>(n: usize, mut op: F) -> Result<(f64, f64), String>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let (t0, c0) = (Instant::now(), self_cpu_s());
    for i in 0..n {
        op(i).await.map_err(|e| format!("operation {i}: {e}"))?;
    }
    Ok((t0.elapsed().as_secs_f64() * 1e6 / n as f64, (self_cpu_s() - c0) * 1e6 / n as f64))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn handshake(opts: &Opts) -> Value {
    log(format!("handshake: {} sequential connects per case and repetition, in-process", opts.handshakes));
    let rt = runtime();
    let (out, server) = rt.block_on(async {
        let server = inproc::server(opts.handshakes).await;
        let (spiffe_server, spiffe_client) = inproc::spiffe_configs(&server.ca);
        let spiffe_addr = inproc::tls_echo(spiffe_server).await;
        let webpki = inproc::webpki_configs();
        let pqc_client = inproc::spiffe_pqc_client(&server.ca);
        let webpki_addr = match &webpki {
            Ok((s, _)) => Some(inproc::tls_echo(s.clone()).await),
            Err(e) => {
                log(format!("  WebPKI baseline not run: {e}"));
                None
            }
        };
        // Warm-up: certificates issued, configs built, code paths hot.
        let warm = inproc::client(&server.ca);
        for i in 0..50 {
            warm.one(&server, i).await.expect("warm-up HBONE connect");
        }
        drop(warm);
        let n = opts.handshakes;
        let mut reps = Vec::new();
        for rep in 0..opts.reps {
            let noise = Noise::start();
            let mut r = json!({});
            let tcp = timed(n, |_| inproc::tcp_one(server.echo)).await;
            let tls = timed(n, |_| inproc::tls_one(&spiffe_client, spiffe_addr)).await;
            let pqc = match &pqc_client {
                Ok(c) => timed(n, |_| inproc::tls_one(c, spiffe_addr)).await,
                Err(e) => Err(e.clone()),
            };
            let wp = match (&webpki, webpki_addr) {
                (Ok((_, c)), Some(a)) => Some(timed(n, |_| inproc::tls_one(c, a)).await),
                _ => None,
            };
            let client = inproc::client(&server.ca);
            let hb = timed(n, |i| client.one(&server, i)).await;
            let pooled = client.outbound.connections();
            drop(client);
            let (busy, compilers) = noise.finish();
            for (name, v) in [("tcp", Some(tcp)), ("tls_spiffe", Some(tls)), ("tls_spiffe_pqc", Some(pqc)), ("tls_webpki", wp), ("hbone", Some(hb))] {
                r[name] = match v {
                    Some(Ok((wall, cpu))) => json!({ "wall_us": wall, "cpu_us": cpu, "per_s": 1e6 / wall }),
                    Some(Err(e)) => json!({ "error": e }),
                    None => Value::Null,
                };
            }
            r["hbone_pooled_connections"] = json!(pooled);
            r["machine_busy_cores"] = json!(busy);
            r["compilers_running"] = json!(compilers);
            log(format!(
                "  rep {}/{}: wall µs per connect: tcp {:.1}, tls {:.1}, tls-pqc {:.1}, tls-webpki {:.1}, hbone {:.1} ({pooled} pooled)",
                rep + 1,
                opts.reps,
                r["tcp"]["wall_us"].as_f64().unwrap_or(f64::NAN),
                r["tls_spiffe"]["wall_us"].as_f64().unwrap_or(f64::NAN),
                r["tls_spiffe_pqc"]["wall_us"].as_f64().unwrap_or(f64::NAN),
                r["tls_webpki"]["wall_us"].as_f64().unwrap_or(f64::NAN),
                r["hbone"]["wall_us"].as_f64().unwrap_or(f64::NAN)
            ));
            reps.push(r);
            // Let the closed connections' tasks finish.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        server.drain.start();
        (json!({ "connects_per_rep": n, "reps": reps }), server)
    });
    shut_down(rt, server);
    out
}

/// Stops the runtime first (the workload-API client's stream with it), then the ADS
/// server: dropped inside the runtime, the server would wait for a stream that the
/// blocked runtime can no longer close.
fn shut_down(rt: tokio::runtime::Runtime, server: inproc::Server) {
    drop(rt);
    drop(server);
}

fn memory(opts: &Opts) -> Value {
    let mut out = Vec::new();
    for &n in &opts.idle {
        log(format!("memory: {n} idle pooled HBONE connections, in-process"));
        let rt = runtime();
        let (r, server) = rt.block_on(async {
            let server = inproc::server(n + 1).await;
            let client = inproc::client(&server.ca);
            // A first connection: certificates, configs and lazy state are not per-connection costs.
            client.one(&server, 0).await.expect("first HBONE connect");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let before = rss_kib();
            for i in 1..=n {
                client.one(&server, i).await.unwrap_or_else(|e| panic!("HBONE connect {i}: {e}"));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let pooled = client.outbound.connections();
            let after = rss_kib();
            server.drain.start();
            let r = json!({ "connections": n, "pooled": pooled, "rss_before_kib": before, "rss_after_kib": after,
                "kib_per_connection": (after - before) / (pooled.saturating_sub(1).max(1)) as f64 });
            (r, server)
        });
        shut_down(rt, server);
        log(format!("  {n}: {:.1} KiB per pooled connection (both ends)", r["kib_per_connection"].as_f64().unwrap_or(f64::NAN)));
        out.push(r);
    }
    json!(out)
}

// ------------------------------------------------------------------ the report

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let med = median(v.to_vec()).unwrap_or(f64::NAN);
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (med, lo, hi)
}

fn spread(v: &[f64]) -> String {
    let (m, lo, hi) = stats(v);
    format!("{:.0}%", (hi - lo) / m * 100.0)
}

fn nums(v: &Value, path: &[&str]) -> Vec<f64> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let mut x = p;
            for k in path {
                x = &x[*k];
            }
            x.as_f64()
        })
        .collect()
}

fn report(raw: &Value, opts: &Opts, elapsed: Duration) -> String {
    let mut w = String::new();
    let _ = writeln!(w, "<!-- BEGIN {SECTION} (written by `cargo bench -p benches --bench hbone`; benches/run.py keeps this section) -->");
    let _ = writeln!(w, "## HBONE (mTLS between nodes)\n");
    let _ = writeln!(
        w,
        "`cargo bench -p benches --bench hbone -- {}` at {}, {}; {} repetitions, {:.0} s in all. \
         Release node-proxy, `--workers {}`, access logs off, log level warn, not pinned (all processes share both CPUs). \
         Medians of the repetitions; ratios are medians of per-repetition pairs (min–max in brackets); spread = (max − min) ÷ median.\n",
        std::env::args().skip(1).filter(|a| a != "--bench").collect::<Vec<_>>().join(" "),
        git_rev(),
        machine(),
        opts.reps,
        elapsed.as_secs_f64(),
        opts.workers
    );
    let mut targets = Vec::new();
    if let Some(t) = raw.get("throughput") {
        let pairs = &t["pairs"];
        let d = nums(pairs, &["direct", "GB_per_s"]);
        let h = nums(pairs, &["hbone", "GB_per_s"]);
        let ratio = nums(pairs, &["ratio"]);
        let (dm, hm, (rm, rlo, rhi)) = (stats(&d).0, stats(&h).0, stats(&ratio));
        let cpu = |case: &str, key: &str| {
            let v: Vec<f64> =
                pairs.as_array().into_iter().flatten().filter_map(|p| Some(p[case][key].as_f64()? / (p[case]["bytes"].as_f64()? / 1e9))).collect();
            stats(&v).0
        };
        let _ = writeln!(w, "### 1. Single-stream throughput (iperf3, one stream, {} s)\n", opts.duration);
        let _ = writeln!(w, "| path | GB/s | Gbit/s | spread | node1 proxy CPU s/GB | node2 proxy CPU s/GB |");
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            w,
            "| (a) direct: pod10 → pod21 (tunnel NONE), kernel only over VXLAN | {dm:.3} | {:.2} | {} | {:.3} | {:.3} |",
            dm * 8.0,
            spread(&d),
            cpu("direct", "proxy1_cpu_s"),
            cpu("direct", "proxy2_cpu_s")
        );
        let _ = writeln!(
            w,
            "| (b) HBONE: pod10 → eBPF → node1 proxy → mTLS :15008 → node2 proxy → pod20 | {hm:.3} | {:.2} | {} | {:.3} | {:.3} |",
            hm * 8.0,
            spread(&h),
            cpu("hbone", "proxy1_cpu_s"),
            cpu("hbone", "proxy2_cpu_s")
        );
        let x = nums(pairs, &["haproxy_mtls", "GB_per_s"]);
        if !x.is_empty() {
            let _ = writeln!(
                w,
                "| (c) haproxy mTLS pair: pod10 → node1 haproxy → TLS 1.3 (mutual) → node2 haproxy → pod20 | {:.3} | {:.2} | {} | {:.3} | {:.3} |",
                stats(&x).0,
                stats(&x).0 * 8.0,
                spread(&x),
                cpu("haproxy_mtls", "proxy1_cpu_s"),
                cpu("haproxy_mtls", "proxy2_cpu_s")
            );
        }
        let _ = writeln!(
            w,
            "\n(b) ÷ (a): **{rm:.3}** ({rlo:.3}–{rhi:.3}). Per repetition (GB/s direct / HBONE): {}.",
            d.iter().zip(&h).map(|(a, b)| format!("{a:.3} / {b:.3}")).collect::<Vec<_>>().join(", ")
        );
        if !x.is_empty() {
            let (vm, vlo, vhi) = stats(&nums(pairs, &["hbone_vs_haproxy"]));
            let _ = writeln!(
                w,
                "(b) ÷ (c): **{vm:.3}** ({vlo:.3}–{vhi:.3}); (c) ÷ (a): {:.3}. (c) is the same three TCP legs and one mutually \
                 authenticated TLS hop as (b), by two haproxy 2.6 processes (OpenSSL 3, one thread each; the CPU columns are theirs), \
                 without HTTP/2 and without SPIFFE checks.",
                stats(&x.iter().zip(&d).map(|(a, b)| a / b).collect::<Vec<_>>()).0
            );
        }
        let _ = writeln!(
            w,
            "node2 reported {:.2} GB received on mTLS streams (reporter=destination), so the HBONE runs crossed both proxies.\n",
            t["node2_mtls_received_bytes"].as_f64().unwrap_or(0.0) / 1e9
        );
        targets.push(format!(
            "| single-stream HBONE ≥ {TARGET_GBPS} GB/s | {hm:.3} GB/s ({:.3}–{:.3}) | {} |",
            stats(&h).1,
            stats(&h).2,
            yes(Some(hm >= TARGET_GBPS))
        ));
    }
    if let Some(t) = raw.get("http") {
        let pairs = &t["pairs"];
        let _ = writeln!(w, "### 2. HTTP through node1's VIP listener: HBONE upstream vs plaintext upstream ({} s per run)\n", opts.http_duration);
        let _ = writeln!(w, "| load | plaintext upstream (pod21, tunnel NONE) | mTLS upstream (pod20, HBONE via node2's proxy) | mTLS ÷ plaintext |");
        let _ = writeln!(w, "|---|---:|---:|---:|");
        for (load, what) in [("rate", "keep-alive, 32 connections: req/s"), ("latency", "keep-alive, 1 connection: req/s; p50 / p99")] {
            let p = nums(pairs, &[load, "plain", "rps"]);
            let m = nums(pairs, &[load, "mtls", "rps"]);
            let ratios: Vec<f64> = p.iter().zip(&m).map(|(a, b)| b / a).collect();
            let (rm, rlo, rhi) = stats(&ratios);
            let lat = |case: &str| format!("{:.3} / {:.3} ms", stats(&nums(pairs, &[load, case, "p50_ms"])).0, stats(&nums(pairs, &[load, case, "p99_ms"])).0);
            let cell = |v: &[f64], case: &str| {
                let cpu1 = stats(&nums(pairs, &[load, case, "proxy1_cpu_us_per_req"])).0;
                let cpu2 = stats(&nums(pairs, &[load, case, "proxy2_cpu_us_per_req"])).0;
                let base = format!("{} (spread {}; CPU µs/req node1 {cpu1:.1}, node2 {cpu2:.1})", fmt_int(stats(v).0), spread(v));
                if load == "latency" {
                    format!("{base}; {}", lat(case))
                } else {
                    base
                }
            };
            let _ = writeln!(w, "| {what} | {} | {} | {rm:.3} ({rlo:.3}–{rhi:.3}) |", cell(&p, "plain"), cell(&m, "mtls"));
            if load == "rate" {
                targets.push(format!(
                    "| mTLS request rate ≥ {:.0}% of plaintext | {:.1}% ({:.1}–{:.1}%) | {} |",
                    TARGET_HTTP_RATIO * 100.0,
                    rm * 100.0,
                    rlo * 100.0,
                    rhi * 100.0,
                    yes(Some(rm >= TARGET_HTTP_RATIO))
                ));
            }
        }
        let _ = writeln!(
            w,
            "\nBoth paths cross node1's proxy (HTTP/1.1 in, route, HTTP/1.1 upstream); the mTLS path adds HBONE (TLS + HTTP/2 CONNECT) and node2's proxy, \
             which the plaintext path does not have. Latency percentiles are from the one-connection closed loop (one request outstanding, so no coordinated omission); \
             no fixed-rate run (oha is not installed here).\n"
        );
    }
    if let Some(t) = raw.get("handshake") {
        let reps = &t["reps"];
        let _ = writeln!(w, "### 3. Handshake cost (in-process, loopback, {} sequential connects per case and repetition)\n", t["connects_per_rep"]);
        let _ = writeln!(w, "| connect (each: a new connection, then 1 byte echoed) | µs wall | connects/s | µs CPU (both ends) | spread (wall) |");
        let _ = writeln!(w, "|---|---:|---:|---:|---:|");
        for (key, what) in [
            ("tcp", "plain TCP"),
            ("tls_webpki", "TLS 1.3 mutual, rustls WebPKI verifiers (DNS SAN, no SPIFFE)"),
            ("tls_spiffe", "TLS 1.3 mutual, node-proxy's SPIFFE verifiers, same certificates as HBONE"),
            ("tls_spiffe_pqc", "the same, the client offering only X25519MLKEM768 (ztunnel's PQC policy)"),
            ("hbone", "HBONE: TLS as above + HTTP/2 handshake + CONNECT + upstream TCP connect"),
        ] {
            let wall = nums(reps, &[key, "wall_us"]);
            if wall.is_empty() {
                let _ = writeln!(w, "| {what} | not run | | | |");
                continue;
            }
            let cpu = nums(reps, &[key, "cpu_us"]);
            let _ = writeln!(w, "| {what} | {:.1} | {} | {:.1} | {} |", stats(&wall).0, fmt_int(1e6 / stats(&wall).0), stats(&cpu).0, spread(&wall));
        }
        let _ = writeln!(
            w,
            "\nOne current-thread runtime runs the client, node-proxy's `Inbound` (fed its workload over the workload API from the test ADS server) and the echo server: \
             CPU per connect is both ends' (getrusage of the process). Each HBONE connect uses a distinct gateway address 127.1.x.y, so a distinct pool key and a new \
             mTLS connection; HBONE − TLS(SPIFFE) is the HTTP/2 + CONNECT + upstream-connect share, TLS(SPIFFE) − TLS(WebPKI) the SPIFFE verification's (certificates differ slightly: Istio-shaped vs rcgen's).\n"
        );
    }
    if let Some(t) = raw.get("memory") {
        let _ = writeln!(w, "### 4. Memory per pooled HBONE connection (in-process, both ends)\n");
        let _ = writeln!(w, "| idle pooled connections | pooled (checked) | RSS before → after | KiB per connection |");
        let _ = writeln!(w, "|---:|---:|---:|---:|");
        for r in t.as_array().into_iter().flatten() {
            let _ = writeln!(
                w,
                "| {} | {} | {:.1} → {:.1} MiB | {:.1} |",
                r["connections"],
                r["pooled"],
                r["rss_before_kib"].as_f64().unwrap_or(0.0) / 1024.0,
                r["rss_after_kib"].as_f64().unwrap_or(0.0) / 1024.0,
                r["kib_per_connection"].as_f64().unwrap_or(f64::NAN)
            );
        }
        let _ = writeln!(
            w,
            "\nBoth ends in one process (mimalloc, as node-proxy ships): the client's pooled HTTP/2 + TLS connection and the server's accepted one; the figure is the sum, \
             one side is roughly half. Kernel socket buffers are not in RSS. One measurement per N (not repeated).\n"
        );
    }
    if !targets.is_empty() {
        let _ = writeln!(w, "| target (issue 5 §6) | measured (median, range) | met |");
        let _ = writeln!(w, "|---|---:|---|");
        for t in targets {
            let _ = writeln!(w, "{t}");
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "<!-- END {SECTION} -->");
    w
}

fn main() {
    let Some(opts) = parse_args() else { return };
    let started = Instant::now();
    let root_parts = opts.runs("throughput") || opts.runs("http");
    // SAFETY: geteuid has no preconditions.
    if root_parts && unsafe { libc::geteuid() } != 0 {
        die("the throughput and http parts need root (network namespaces, cgroups, BPF); --parts handshake,memory runs without");
    }
    if root_parts {
        for tool in ["iperf3", "wrk", "nginx", "nsenter", "nft", "taskset"] {
            if !common::tool_found(tool) {
                die(&format!("{tool} not found: scripts/install-deps.sh --test (apt-get install -y iperf3 wrk nginx util-linux nftables)"));
            }
        }
        log(format!("node-proxy: {}", tests::binary::node_proxy_bin().display()));
    }
    let mut raw = json!({ "git": git_rev(), "machine": machine(), "reps": opts.reps, "duration_s": opts.duration, "http_duration_s": opts.http_duration,
        "args": std::env::args().skip(1).collect::<Vec<_>>() });
    if opts.runs("memory") {
        raw["memory"] = memory(&opts);
    }
    if opts.runs("handshake") {
        raw["handshake"] = handshake(&opts);
    }
    if opts.runs("throughput") {
        raw["throughput"] = throughput(&opts);
    }
    if opts.runs("http") {
        raw["http"] = http(&opts);
    }
    let md = report(&raw, &opts, started.elapsed());
    println!("\n{md}");
    if let Some(out) = &opts.out {
        write_section(out, SECTION, &md);
        let json_path = out.with_file_name("results-hbone.json");
        fs::write(&json_path, serde_json::to_string_pretty(&raw).unwrap_or_default()).unwrap_or_else(|e| panic!("write {}: {e}", json_path.display()));
        log(format!("wrote the section into {} and {}", out.display(), json_path.display()));
    }
}
