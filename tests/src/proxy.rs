//! Running the real `node-proxy` binary as a child process.
//!
//! [`Proxy::start`] writes the configuration to a temporary directory, starts the
//! proxy in its own process group with its admin port on a free port, captures
//! stdout (the access log) and stderr, and waits for `/ready`. The process group is
//! killed on drop, also when the test panics.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::access_log::{self, AccessLogEntry};
use crate::clients::{http_get, HttpReply};
use crate::metrics::{self, Sample};
use crate::wait::assert_eventually;

/// How to run the proxy.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    pub workers: usize,
    pub drain_timeout: Duration,
    /// Run inside this network namespace (`nsenter --net`).
    pub netns: Option<String>,
    /// Admin address; by default 127.0.0.1 and a free port.
    pub admin_address: Option<SocketAddr>,
    /// A command the proxy runs under (e.g. `setpriv --regid 65534 --clear-groups`).
    pub wrapper: Vec<String>,
    pub extra_args: Vec<String>,
    pub log_level: String,
    /// `--hbone-address`: off unless a test takes part in the mesh (parallel proxies
    /// in one namespace cannot all bind :15008).
    pub hbone_address: String,
    /// `--inbound-plaintext-address`: off unless a test takes part in the mesh, for the
    /// same reason (:15006).
    pub inbound_plaintext_address: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            workers: 1,
            drain_timeout: Duration::from_secs(5),
            netns: None,
            admin_address: None,
            wrapper: Vec::new(),
            extra_args: Vec::new(),
            log_level: "info".to_owned(),
            hbone_address: "off".to_owned(),
            inbound_plaintext_address: "off".to_owned(),
        }
    }
}

type Lines = Arc<Mutex<Vec<String>>>;

/// A running node-proxy.
pub struct Proxy {
    child: Child,
    pid: i32,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    admin: SocketAddr,
    listeners: Vec<(String, SocketAddr)>,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<std::thread::JoinHandle<()>>,
    netns: Option<String>,
    status: Option<ExitStatus>,
}

fn read_lines(stream: impl std::io::Read + Send + 'static, into: Lines) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(l) => into.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    })
}

/// The `(name, address)` of every listener in a bootstrap document.
pub fn listeners_of(config: &str) -> Vec<(String, SocketAddr)> {
    let doc: serde_json::Value = serde_yaml::from_str(config).unwrap_or_else(|e| panic!("test config is not YAML/JSON: {e}"));
    let mut out = Vec::new();
    for l in doc["static_resources"]["listeners"].as_array().into_iter().flatten() {
        let sa = &l["address"]["socket_address"];
        let (Some(ip), Some(port)) = (sa["address"].as_str(), sa["port_value"].as_u64()) else { continue };
        let Ok(ip) = ip.parse::<std::net::IpAddr>() else { continue };
        out.push((l["name"].as_str().unwrap_or_default().to_owned(), SocketAddr::new(ip, port as u16)));
    }
    out
}

impl Proxy {
    /// Starts the proxy with `config` (YAML or JSON bootstrap) and `workers` threads; waits until ready.
    pub fn start(config: &str, workers: usize) -> Proxy {
        Proxy::start_with(config, ProxyOptions { workers, ..Default::default() })
    }

    pub fn start_with(config: &str, opts: ProxyOptions) -> Proxy {
        let proxy = Proxy::spawn(config, &opts);
        proxy.wait_ready(Duration::from_secs(20))
    }

    /// Starts the proxy with no configuration file, taking everything from the ADS
    /// server at `ads_url` (`--xds-address`); `opts.extra_args` add to the xDS flags.
    /// Waits until ready (istiod's first listeners and clusters live).
    pub fn start_xds(ads_url: &str, mut opts: ProxyOptions) -> Proxy {
        let mut args: Vec<String> = vec!["--xds-address".into(), ads_url.into(), "--pod-name".into(), "node-proxy-test".into()];
        args.append(&mut opts.extra_args);
        opts.extra_args = args;
        let proxy = Proxy::spawn("", &opts);
        proxy.wait_ready(Duration::from_secs(30))
    }

    /// Starts the process without waiting for readiness.
    pub fn spawn(config: &str, opts: &ProxyOptions) -> Proxy {
        let bin = crate::binary::node_proxy_bin();
        let dir = tempfile::Builder::new().prefix("node-proxy-test-").tempdir().expect("temp dir");
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        // An empty configuration: the proxy runs from xDS alone.
        let config_args = if config.is_empty() { Vec::new() } else { vec!["--config".to_owned(), config_path.display().to_string()] };
        let admin = opts.admin_address.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], crate::ports::free_port())));
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &opts.netns {
            // nsenter, not `ip netns exec`: that one remounts /sys in a new mount
            // namespace, which hides the cgroup v2 mount a redirecting proxy attaches to.
            argv.extend(["nsenter".to_owned(), format!("--net=/run/netns/{ns}"), "--".to_owned()]);
        }
        argv.extend(opts.wrapper.iter().cloned());
        argv.push(bin.display().to_string());
        argv.extend(config_args);
        argv.extend(
            [
                "--workers",
                &opts.workers.to_string(),
                "--admin-address",
                &admin.to_string(),
                "--metrics-address",
                "off",
                "--readiness-address",
                "off",
                "--access-log",
                "/dev/stdout",
                "--drain-timeout",
                &format!("{}ms", opts.drain_timeout.as_millis()),
                "--log-level",
                &opts.log_level,
                "--hbone-address",
                &opts.hbone_address,
                "--inbound-plaintext-address",
                &opts.inbound_plaintext_address,
            ]
            .map(str::to_owned),
        );
        argv.extend(opts.extra_args.iter().cloned());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", argv.join(" ")));
        let stdout = Lines::default();
        let stderr = Lines::default();
        let readers = vec![read_lines(child.stdout.take().expect("stdout"), stdout.clone()), read_lines(child.stderr.take().expect("stderr"), stderr.clone())];
        Proxy {
            pid: child.id() as i32,
            child,
            dir,
            config_path,
            admin,
            listeners: if config.is_empty() { Vec::new() } else { listeners_of(config) },
            stdout,
            stderr,
            readers,
            netns: opts.netns.clone(),
            status: None,
        }
    }

    /// Waits for `/ready` to answer 200; panics with the proxy's stderr if it exits or times out.
    pub fn wait_ready(mut self, timeout: Duration) -> Proxy {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.status = Some(status);
                self.join_readers();
                panic!("node-proxy exited ({status}) before becoming ready; stderr:\n{}", self.stderr());
            }
            match self.try_admin_get("/ready") {
                Ok(r) if r.status == 200 => return self,
                Ok(r) => last = format!("{} {}", r.status, r.body.trim()),
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                panic!("node-proxy not ready after {timeout:?} (last /ready: {last}); stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn admin_address(&self) -> SocketAddr {
        self.admin
    }

    /// The address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a).unwrap_or_else(|| panic!("no listener {name} in the config"))
    }

    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listeners.first().map(|(_, a)| *a).expect("the config has no listener")
    }

    /// `http://<first listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    fn try_admin_get(&self, path: &str) -> Result<HttpReply, String> {
        let admin = self.admin;
        let path = path.to_owned();
        crate::netns::in_netns(self.netns.as_deref(), move || http_get(admin, &path, Duration::from_secs(5)))
    }

    /// GET on the admin port; panics if the admin port does not answer.
    pub fn admin_get(&self, path: &str) -> HttpReply {
        self.try_admin_get(path).unwrap_or_else(|e| panic!("admin GET {path}: {e}; proxy stderr:\n{}", self.stderr()))
    }

    /// Every sample of `/stats/prometheus`.
    pub fn metrics(&self) -> Vec<Sample> {
        let r = self.admin_get("/stats/prometheus");
        assert_eq!(r.status, 200, "/stats/prometheus: {}", r.body);
        metrics::parse(&r.body)
    }

    /// The sum of the samples named `name` whose labels include `labels` (0 if none).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::sum(&self.metrics(), name, labels)
    }

    /// Raw stdout lines (the access log) so far.
    pub fn access_log_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The access log so far, parsed (lines that do not parse are skipped).
    pub fn access_log(&self) -> Vec<AccessLogEntry> {
        self.access_log_lines().iter().filter_map(|l| access_log::parse(l)).collect()
    }

    /// Waits (up to 5 s) for an access log entry matching `pred` and returns it.
    pub fn wait_access_log(&self, what: &str, pred: impl Fn(&AccessLogEntry) -> bool) -> AccessLogEntry {
        assert_eventually(&format!("access log entry: {what}"), Duration::from_secs(5), || {
            let entries = self.access_log();
            entries.iter().find(|e| pred(e)).cloned().ok_or_else(|| format!("access log so far:\n{}", self.access_log_lines().join("\n")))
        })
    }

    /// The proxy's stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM (graceful drain).
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit (panics after `timeout`); returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                self.join_readers();
                return status;
            }
            if Instant::now() >= deadline {
                panic!("node-proxy did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.status.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SAFETY: the child leads its own process group (process_group(0)).
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        self.join_readers();
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!(
                "--- node-proxy (pid {}) stderr, last lines ---\n{}\n--- access log ---\n{}",
                self.pid,
                tail.join("\n"),
                self.access_log_lines().join("\n")
            );
        }
    }
}

/// Runs `node-proxy ARGS` to completion (for `check-config`, bad configs): (status, stdout, stderr).
pub fn run_node_proxy(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let bin = crate::binary::node_proxy_bin();
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let out = Lines::default();
    let err = Lines::default();
    let readers = [read_lines(child.stdout.take().expect("stdout"), out.clone()), read_lines(child.stderr.take().expect("stderr"), err.clone())];
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            // SAFETY: our child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("`node-proxy {}` still running after {timeout:?}; stderr:\n{}", args.join(" "), err.lock().unwrap().join("\n"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for r in readers {
        let _ = r.join();
    }
    let stdout = out.lock().unwrap().join("\n");
    let stderr = err.lock().unwrap().join("\n");
    (status, stdout, stderr)
}
