//! `node-proxy`: the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use istio_compat::model::listener::AccessLogFormat;
use node_proxy::app::{self, Settings};

/// mimalloc: per-thread free lists suit the worker-per-thread model; measured faster
/// than glibc malloc on the request path (benches/RESULTS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "node-proxy", version, about = "A per-node L7 proxy for Istio: one proxy per node instead of a sidecar per pod.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a configuration file and print what is unsupported; exit non-zero if it would not load.
    CheckConfig {
        /// An Envoy bootstrap (static_resources) or admin config dump, YAML or JSON.
        file: PathBuf,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// The pinned eBPF redirect: show it, or remove it.
    Bpf {
        #[command(subcommand)]
        action: BpfCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BpfCommand {
    /// What the pinned redirect was attached for, its counters and its redirect set.
    Status {
        /// Where the maps and links are pinned.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Stop redirecting: remove the pinned programs and maps (and, with --nftables, the
    /// fallback's nftables table in this network namespace).
    Detach {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long)]
        nftables: bool,
    },
}

const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/node-proxy";

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Envoy v3 bootstrap document (static_resources: listeners, clusters, inline routes), YAML or JSON.
    /// Without it, the embedded default runs (see `node-proxy default-config`).
    #[arg(long, short = 'c', env = "NODE_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Worker threads (each with its own listeners and upstream pools); default: one per CPU.
    #[arg(long, env = "NODE_PROXY_WORKERS")]
    workers: Option<usize>,
    /// Admin port: /ready, /config_dump, /stats/prometheus, /logging.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_address: SocketAddr,
    /// Prometheus port (/stats/prometheus); "off" to disable.
    #[arg(long, default_value = "0.0.0.0:15020", value_parser = parse_optional_addr)]
    metrics_address: OptionalAddr,
    /// Readiness port (/healthz/ready); "off" to disable.
    #[arg(long, default_value = "0.0.0.0:15021", value_parser = parse_optional_addr)]
    readiness_address: OptionalAddr,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Log level or filter (trace, debug, info, warn, error, or e.g. node_proxy=debug).
    #[arg(long, default_value = "info", env = "NODE_PROXY_LOG")]
    log_level: String,
    /// Proxy log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Access log for listeners whose configuration has none: a path, or /dev/stdout.
    #[arg(long)]
    access_log: Option<String>,
    /// SO_MARK for upstream connections, so redirect rules can exclude the proxy's own
    /// traffic (e.g. `meta mark != 1337` in nftables).
    #[arg(long, env = "NODE_PROXY_UPSTREAM_MARK")]
    upstream_mark: Option<u32>,
    /// Format of --access-log: Istio's default text or its JSON encoding.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    access_log_format: LogFormat,
    #[command(flatten)]
    xds: XdsArgs,
    #[command(flatten)]
    redirect: RedirectArgs,
    #[command(flatten)]
    mesh: MeshArgs,
}

/// mTLS between nodes: the workloads' certificates and HBONE (Istio's ztunnel contract).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Mesh (workload certificates and HBONE)")]
struct MeshArgs {
    /// The HBONE listener (HTTP/2 CONNECT in mTLS), which peers reach as <pod IP>:15008;
    /// "off": no mTLS at all (upstream legs are plain TCP).
    #[arg(long, env = "NODE_PROXY_HBONE_ADDRESS", default_value = "[::]:15008", value_parser = parse_optional_addr)]
    hbone_address: OptionalAddr,
    /// The inbound plaintext listener (Istio's 15006): TCP that reaches this node's HBONE
    /// pods without HBONE is captured there, and their PeerAuthentication and authorization
    /// policies decide on it before it is relayed to the pod; "off": such plaintext reaches
    /// the pods unchecked (only STRICT's kernel drop applies).
    #[arg(long, env = "NODE_PROXY_INBOUND_PLAINTEXT_ADDRESS", default_value = "[::]:15006", value_parser = parse_optional_addr)]
    inbound_plaintext_address: OptionalAddr,
    /// Capture, with nftables, connections to this node's HBONE pods: <IP>:15008 to the
    /// HBONE listener, every other TCP port to the inbound plaintext listener.
    #[arg(long, env = "NODE_PROXY_HBONE_CAPTURE", default_value_t = true, action = clap::ArgAction::Set)]
    hbone_capture: bool,
    /// The mesh's trust domain (MeshConfig trustDomain).
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Other trust domains whose identities are accepted (MeshConfig trustDomainAliases); repeatable.
    #[arg(long)]
    trust_domain_alias: Vec<String>,
    /// This node's network (Istio's topology.istio.io/network); empty: the default network.
    #[arg(long, env = "NETWORK", default_value = "")]
    network: String,
    /// istiod's CA (IstioCertificateService), e.g. https://istiod.istio-system.svc:15012.
    /// Default: the xDS address when it is https; else the local CA (--ca-cert/--ca-key, or generated).
    #[arg(long, env = "CA_ADDRESS")]
    ca_address: Option<String>,
    /// Istio's root certificate to trust for the CA's serving certificate (default: --xds-root-cert).
    #[arg(long, env = "CA_ROOT_CA")]
    ca_root_cert: Option<PathBuf>,
    /// The name to verify in the CA's certificate (default: --xds-server-name, else the address's host).
    #[arg(long, env = "ALT_CA_HOSTNAME")]
    ca_server_name: Option<String>,
    /// A local mesh CA: certificate (PEM; Istio's cacerts ca-cert.pem, with cert-chain.pem and
    /// root-cert.pem beside it when intermediate) and key. Every node given the same CA trusts the others.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Validity requested for workload certificates (istio-agent's SECRET_TTL); renewed at half-life.
    #[arg(long, env = "SECRET_TTL", default_value = "24h", value_parser = parse_duration)]
    workload_cert_ttl: Duration,
}

impl MeshArgs {
    fn settings(self, xds: &XdsArgs) -> Result<Option<node_proxy::mesh::MeshSettings>, String> {
        use node_proxy::mesh::{CaSource, MeshSettings};
        let Some(hbone_address) = self.hbone_address.0 else { return Ok(None) };
        let istiod = self.ca_address.clone().or_else(|| xds.xds_address.clone().filter(|a| a.starts_with("https://")));
        let ca = match (&self.ca_cert, &self.ca_key, istiod) {
            (Some(cert), Some(key), _) => {
                let ca = node_proxy::tls::LocalCa::load(&self.trust_domain, cert, key).map_err(|e| format!("the local CA (--ca-cert/--ca-key): {e}"))?;
                CaSource::Local(std::sync::Arc::new(ca))
            }
            (_, _, Some(address)) => {
                let root_path = self.ca_root_cert.clone().unwrap_or_else(|| xds.xds_root_cert.clone());
                let root_cert_pem = std::fs::read_to_string(&root_path)
                    .map_err(|e| format!("Istio's root certificate {} (for the CA): {e}; set --ca-root-cert", root_path.display()))?;
                CaSource::Istiod(istio_compat::ca::CaClientConfig {
                    address,
                    root_cert_pem,
                    token_path: Some(xds.token_path.clone()),
                    cluster_id: xds.cluster_id.clone(),
                    validity: self.workload_cert_ttl,
                    domain_name: self.ca_server_name.clone().or_else(|| xds.xds_server_name.clone()),
                })
            }
            _ => {
                let ca = node_proxy::tls::LocalCa::generate(&self.trust_domain).map_err(|e| format!("generating a local mesh CA: {e}"))?;
                tracing::warn!(trust_domain = %self.trust_domain, "no CA configured: generated a mesh CA for this process only; other nodes trust it only if given the same CA (--ca-cert/--ca-key) or istiod's (--ca-address)");
                CaSource::Local(std::sync::Arc::new(ca))
            }
        };
        Ok(Some(MeshSettings {
            node: xds.node_name.clone(),
            network: self.network,
            trust: node_proxy::tls::TrustDomains::new(self.trust_domain, self.trust_domain_alias),
            ca,
            hbone_address,
            inbound_plaintext_address: self.inbound_plaintext_address.0,
            capture: self.hbone_capture,
            cluster_id: xds.cluster_id.clone(),
            cert_ttl: self.workload_cert_ttl,
        }))
    }
}

/// Redirecting pods' connections that need the proxy (L7 routes, policy, mTLS) to it.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Redirect")]
struct RedirectArgs {
    /// How: eBPF programs on the pods' cgroup (`ebpf`), nftables REDIRECT rules in this
    /// network namespace (`nftables`), eBPF with nftables as the fallback (`auto`), or not at all.
    #[arg(long, value_enum, env = "NODE_PROXY_REDIRECT", default_value_t = RedirectMode::Off)]
    redirect: RedirectMode,
    /// The pods' parent cgroup v2 directory (absolute, or relative to the cgroup2 mount).
    #[arg(long, env = "NODE_PROXY_REDIRECT_CGROUP")]
    redirect_cgroup: Option<PathBuf>,
    /// Where redirected connections go: this node's address as pods reach it, and the
    /// outbound listener's port. Default: INSTANCE_IP:15001.
    #[arg(long, env = "NODE_PROXY_REDIRECT_ADDRESS")]
    redirect_address: Option<SocketAddr>,
    /// Where the eBPF maps and links are pinned (on a bpf filesystem); they outlive the
    /// process, so a restart keeps redirecting.
    #[arg(long, env = "NODE_PROXY_BPF_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    bpf_pin_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RedirectMode {
    Off,
    Auto,
    Ebpf,
    Nftables,
}

/// Configuration from istiod. The environment names are the ones Istio's ztunnel
/// DaemonSet sets, so the node proxy drops into the same deployment contract.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "xDS from istiod")]
struct XdsArgs {
    /// istiod's address: `https://istiod.istio-system.svc:15012` (TLS, token) or
    /// `http://HOST:15010` (plaintext). Without it, configuration comes from --config alone.
    #[arg(long, env = "XDS_ADDRESS")]
    xds_address: Option<String>,
    /// Istio's root certificate (PEM) to trust for istiod.
    #[arg(long, env = "XDS_ROOT_CA", default_value = "/var/run/secrets/istio/root-cert.pem")]
    xds_root_cert: PathBuf,
    /// The name to verify in istiod's certificate (default: the address's host).
    #[arg(long, env = "ALT_XDS_HOSTNAME")]
    xds_server_name: Option<String>,
    /// Projected service-account token sent to istiod (audience istio-ca).
    #[arg(long, env = "AUTH_TOKEN", default_value = "/var/run/secrets/tokens/istio-token")]
    token_path: PathBuf,
    /// Istio's cluster id (the `clusterid` header and CLUSTER_ID node metadata).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// The mesh's DNS domain.
    #[arg(long, env = "CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// State of the world or incremental (Delta) ADS for the Envoy resources.
    #[arg(long, value_enum, env = "XDS_PROTOCOL", default_value_t = XdsProtocol::Sotw)]
    xds_protocol: XdsProtocol,
    /// How long a resource may warm (and start-up may wait for istiod) before it goes live anyway.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    initial_fetch_timeout: Duration,
    /// This pod's name (the Downward API's metadata.name).
    #[arg(long, env = "POD_NAME", default_value = "node-proxy")]
    pod_name: String,
    /// This pod's namespace: istiod builds the Envoy resources for a proxy in it.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pod_namespace: String,
    /// This pod's IP (status.podIP).
    #[arg(long, env = "INSTANCE_IP")]
    instance_ip: Option<String>,
    /// The Kubernetes node this proxy serves (spec.nodeName).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "")]
    service_account: String,
    /// Also take Istio's workload API (workloads, services, L4 authorization) on a
    /// ztunnel-type Delta stream.
    #[arg(long, env = "XDS_WORKLOAD_API", default_value_t = true, action = clap::ArgAction::Set)]
    xds_workload_api: bool,
    /// The Istio version istiod should generate for.
    #[arg(long, env = "ISTIO_VERSION", default_value = "1.28.0")]
    istio_version: String,
}

impl RedirectArgs {
    fn settings(self, upstream_mark: Option<u32>, instance_ip: Option<&str>) -> Result<Option<node_proxy::redirect::RedirectSettings>, String> {
        use node_proxy::redirect::{Mode, RedirectSettings};
        let mode = match self.redirect {
            RedirectMode::Off => return Ok(None),
            RedirectMode::Auto => Mode::Auto,
            RedirectMode::Ebpf => Mode::Bpf,
            RedirectMode::Nftables => Mode::Nftables,
        };
        let target = match (self.redirect_address, instance_ip) {
            (Some(a), _) => a,
            (None, Some(ip)) => {
                let ip: std::net::IpAddr = ip.parse().map_err(|e| format!("INSTANCE_IP {ip:?}: {e}"))?;
                SocketAddr::new(ip, 15001)
            }
            (None, None) => return Err("--redirect needs the address pods reach this node's proxy at: --redirect-address IP:15001 (or INSTANCE_IP)".to_owned()),
        };
        Ok(Some(RedirectSettings { mode, pods_cgroup: self.redirect_cgroup, target, pin_dir: self.bpf_pin_dir, bypass_mark: upstream_mark }))
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdsProtocol {
    Sotw,
    Delta,
}

impl XdsArgs {
    fn settings(self) -> Option<node_proxy::xds::XdsSettings> {
        let address = self.xds_address?;
        let https = address.starts_with("https://");
        let identity = xds_client::node::NodeIdentity {
            ips: vec![self.instance_ip.unwrap_or_else(|| "127.0.0.1".to_owned())],
            pod_name: self.pod_name,
            namespace: self.pod_namespace,
            dns_domain: self.cluster_domain,
            cluster_id: self.cluster_id.clone(),
            istio_version: self.istio_version,
            service_account: self.service_account,
            node_name: self.node_name,
            labels: Default::default(),
        };
        Some(node_proxy::xds::XdsSettings {
            address,
            // Root certificate and token only go with TLS (Istio sends no token in plaintext).
            root_cert: https.then_some(self.xds_root_cert),
            server_name: self.xds_server_name,
            token_path: https.then_some(self.token_path),
            cluster_id: Some(self.cluster_id),
            protocol: match self.xds_protocol {
                XdsProtocol::Sotw => xds_client::ads::Protocol::StateOfTheWorld,
                XdsProtocol::Delta => xds_client::ads::Protocol::Delta,
            },
            identity,
            initial_fetch_timeout: self.initial_fetch_timeout,
            workload_api: self.xds_workload_api,
        })
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug)]
struct OptionalAddr(Option<SocketAddr>);

fn parse_optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s == "off" {
        return Ok(OptionalAddr(None));
    }
    s.parse().map(|a| OptionalAddr(Some(a))).map_err(|e| format!("{e}: expected IP:PORT or off"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?}: expected e.g. 5s, 500ms, 1m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::DefaultConfig) => {
            print!("{}", node_proxy::config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Bpf { action: BpfCommand::Status { pin_dir } }) => bpf_status(&pin_dir),
        Some(Command::Bpf { action: BpfCommand::Detach { pin_dir, nftables } }) => bpf_detach(&pin_dir, nftables),
        None => run(cli.run),
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match node_proxy::config::load_file(file) {
        Ok(loaded) => {
            for u in &loaded.source.unsupported {
                println!("unsupported: {u}");
            }
            println!(
                "ok: {} listeners, {} route configurations, {} clusters",
                loaded.model.listeners.len(),
                loaded.model.routes.len(),
                loaded.model.clusters.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bpf_status(pin_dir: &std::path::Path) -> ExitCode {
    let redirector = match redirect_bpf::Redirector::open(pin_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match redirector.attachment() {
        Ok(a) => {
            println!("pin dir: {}", pin_dir.display());
            println!("pods cgroup: {}", a.pods_cgroup.display());
            println!("proxy cgroup: {}", a.proxy_cgroup.display());
            println!("redirects to: {}", a.proxy);
            println!("bypass mark: {}", a.bypass_mark);
            println!("same build: {}", if a.same_build { "yes" } else { "no (a restarted node-proxy of this build replaces it)" });
        }
        Err(e) => println!("attachment: unreadable ({e})"),
    }
    let c = redirector.counters();
    println!("counters:");
    for (name, v) in [
        ("redirected", c.redirected),
        ("bypassed_not_in_set", c.bypassed_not_in_set),
        ("bypassed_own_traffic", c.bypassed_own_traffic),
        ("bypassed_no_proxy_family", c.bypassed_no_proxy_family),
        ("getsockopt_answered", c.getsockopt_answered),
        ("getsockopt_missed", c.getsockopt_missed),
    ] {
        println!("  {name}: {v}");
    }
    match redirector.program_stats() {
        Ok(stats) => {
            println!("programs (runs, mean ns per run; counted while sysctl kernel.bpf_stats_enabled=1):");
            for s in stats {
                let mean = if s.run_count == 0 { 0 } else { s.run_time.as_nanos() / u128::from(s.run_count) };
                println!("  {}: {} runs, {mean} ns", s.name, s.run_count);
            }
        }
        Err(e) => println!("programs: unreadable ({e})"),
    }
    let inbound = node_proxy::redirect::inbound_pin_dir(pin_dir);
    match redirect_bpf::InboundGuard::open(&inbound) {
        Ok(guard) => {
            let c = guard.counters();
            println!("STRICT guard ({}):", inbound.display());
            for (name, v) in [
                ("dropped_plaintext", c.dropped_plaintext),
                ("allowed_from_proxy", c.allowed_from_proxy),
                ("passed_not_strict", c.passed_not_strict),
                ("passed_self", c.passed_self),
                ("passed_not_tcp", c.passed_not_tcp),
            ] {
                println!("  {name}: {v}");
            }
        }
        Err(_) => println!("STRICT guard: not attached"),
    }
    match redirector.entries() {
        Ok(mut entries) => {
            entries.sort();
            println!("destinations: {}", entries.len());
            for e in entries {
                println!("  {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: reading the redirect set: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bpf_detach(pin_dir: &std::path::Path, nftables: bool) -> ExitCode {
    let mut ok = true;
    match redirect_bpf::Redirector::detach(pin_dir) {
        Ok(()) => println!("detached: removed the pins under {}", pin_dir.display()),
        Err(e) => {
            eprintln!("error: {e}");
            ok = false;
        }
    }
    let inbound = node_proxy::redirect::inbound_pin_dir(pin_dir);
    match redirect_bpf::InboundGuard::detach(&inbound) {
        Ok(()) => println!("detached: removed the STRICT guard's pins under {}", inbound.display()),
        Err(e) => {
            eprintln!("error: {e}");
            ok = false;
        }
    }
    if nftables {
        match node_proxy::redirect::nftables::Nftables::remove() {
            Ok(()) => println!("removed nftables table inet {}", node_proxy::redirect::nftables::TABLE),
            Err(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(args: RunArgs) -> ExitCode {
    let logs = match node_proxy::logging::init(&args.log_level, matches!(args.log_format, LogFormat::Json)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mesh = match args.mesh.settings(&args.xds) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = Settings {
        config: args.config,
        workers,
        admin_address: args.admin_address,
        metrics_address: args.metrics_address.0,
        readiness_address: args.readiness_address.0,
        drain_timeout: args.drain_timeout,
        access_log: args.access_log.map(|path| {
            let format = match args.access_log_format {
                LogFormat::Text => AccessLogFormat::IstioText,
                LogFormat::Json => AccessLogFormat::IstioJson,
            };
            (path, format)
        }),
        upstream_mark: args.upstream_mark,
        redirect: match args.redirect.settings(args.upstream_mark, args.xds.instance_ip.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        xds: args.xds.settings(),
        mesh,
    };
    match app::run(settings, logs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
