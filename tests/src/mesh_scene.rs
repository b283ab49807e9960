//! The two-node mesh scene of the HBONE end-to-end tests (tests/tests/mesh.rs) and the
//! HBONE benchmark (benches/benches/hbone.rs), on the real kernel (root).
//!
//! Two nodes joined by a VXLAN overlay ([`crate::topology`]), a node proxy on each
//! (`node-proxy run` in the node's namespace and proxy cgroup), both taking Istio's
//! workload API (and their Envoy resources) from a test ADS server in their namespace,
//! with workload certificates from one mesh CA (`--ca-cert/--ca-key`, the local CA).
//!
//! - pod10 ("client", node1) and pod20 ("server", node2) are ambient (HBONE) workloads
//!   of namespace `mesh`.
//! - pod21 is either "guarded" (HBONE, with the ALLOW policy `guard` admitting only
//!   `nobody`: the policy tests) or, with [`SceneOptions::plaintext_pod21`], "plain": a
//!   workload outside the mesh (tunnel NONE), reached by plain TCP, behind its own VIP.
//! - Envoy resources (both nodes): `virtualOutbound` on [::]:15001 (TCP passthrough to
//!   the original destination), the HTTP listener of [`VIP`] routing to cluster `svc`
//!   (pod20's [`SERVER`] endpoint, adding `x-node-proxy: node1`), and, with pod21 plain,
//!   the listener of [`PLAIN_VIP`] routing to cluster `plain` ([`PLAIN_SERVER`]).
//! - node1 redirects its pods with eBPF (the VIPs and the meshed workloads); each node
//!   captures its HBONE pods with nftables: `<ip>:15008` to its HBONE listener, other
//!   ports (plaintext from outside the mesh) to its inbound plaintext listener, 15006.
//!
//! What differs between a test and a benchmark is in [`SceneOptions`]: the certificate
//! TTL, the log level, whether the proxies write a JSON access log (tests) or none
//! (benchmarks), their worker threads and CPU pinning, whether Rust origins answer on
//! the server ports (tests) or the caller runs its own servers there (benchmarks).
//!
//! The node-proxy binary is the one [`crate::binary::node_proxy_bin`] picks: the
//! caller's Cargo profile (the release build under `cargo bench`), or `NODE_PROXY_BIN`.
//!
//! Everything is stopped on drop: proxies before their ADS servers, processes before
//! the BPF pins, the topology last.

use std::net::SocketAddr;
use std::path::PathBuf;

use istio_compat::model::workload::Identity;
use node_proxy::tls::LocalCa;
use prost::Message;
use serde_json::{json, Value};
use xds_client::istio::security::{self as sec, Authorization};
use xds_client::istio::workload::{address, Address, TunnelProtocol, Workload};
use xds_client::pb::envoy::config::cluster::v3::Cluster;
use xds_client::pb::envoy::config::listener::v3::Listener;
use xds_client::pb::google::protobuf::Any;
use xds_client::type_url::{ADDRESS, AUTHORIZATION, CLUSTER, LISTENER};

use crate::ads_server::{any_from_json, AdsServer};
use crate::config::{cluster, hcm, socket_address};
use crate::netns::{in_netns, BpfFs};
use crate::origin::Origin;
use crate::proxy::{Proxy, ProxyOptions};
use crate::topology::{Pod, Topology};
use crate::wait::assert_eventually;

/// The mesh's trust domain.
pub const TD: &str = "cluster.local";
/// The namespace of every workload.
pub const NS: &str = "mesh";
/// The L7 service's VIP (HTTP route to cluster `svc`, pod20).
pub const VIP: &str = "198.18.100.1:80";
/// The plaintext service's VIP (HTTP route to cluster `plain`, pod21), with
/// [`SceneOptions::plaintext_pod21`].
pub const PLAIN_VIP: &str = "198.18.100.2:80";
/// pod20: the server (HBONE).
pub const SERVER: &str = "198.18.2.10:8080";
/// pod21 as the guarded server (policy tests).
pub const GUARDED: &str = "198.18.2.11:9090";
/// pod21 as the plaintext (tunnel NONE) server.
pub const PLAIN_SERVER: &str = "198.18.2.11:8080";
/// The proxies' `--upstream-mark`.
pub const MARK: &str = "20048";

pub fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// `spiffe://cluster.local/ns/mesh/sa/<service_account>` as an [`Identity`].
pub fn identity(service_account: &str) -> Identity {
    Identity::new(TD, NS, service_account)
}

pub fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any { type_url: type_url.to_owned(), value: m.encode_to_vec() }
}

/// An ambient (HBONE) workload of namespace `mesh`.
pub fn workload(pod: &Pod, node: &str, service_account: &str, policies: &[&str]) -> Address {
    workload_with_tunnel(pod, node, service_account, policies, TunnelProtocol::Hbone)
}

/// A workload of namespace `mesh` outside the mesh: tunnel NONE, reached by plain TCP.
pub fn plaintext_workload(pod: &Pod, node: &str, service_account: &str) -> Address {
    workload_with_tunnel(pod, node, service_account, &[], TunnelProtocol::None)
}

fn workload_with_tunnel(pod: &Pod, node: &str, service_account: &str, policies: &[&str], tunnel: TunnelProtocol) -> Address {
    Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: format!("Kubernetes//Pod/{NS}/{}", pod.name),
            name: pod.name.clone(),
            namespace: NS.to_owned(),
            addresses: vec![pod.ip4.octets().to_vec()],
            node: node.to_owned(),
            tunnel_protocol: tunnel as i32,
            trust_domain: TD.to_owned(),
            service_account: service_account.to_owned(),
            workload_name: service_account.to_owned(),
            canonical_name: service_account.to_owned(),
            canonical_revision: "v1".to_owned(),
            cluster_id: "Kubernetes".to_owned(),
            authorization_policies: policies.iter().map(|p| format!("{NS}/{p}")).collect(),
            ..Default::default()
        })),
    }
}

/// An ALLOW policy (workload-selector scope) admitting only `principal`.
pub fn allow_only(name: &str, principal: &str) -> Authorization {
    Authorization {
        name: name.to_owned(),
        namespace: NS.to_owned(),
        scope: sec::Scope::WorkloadSelector as i32,
        action: sec::Action::Allow as i32,
        groups: vec![sec::Group {
            rules: vec![sec::Rules {
                matches: vec![sec::Match {
                    principals: vec![sec::StringMatch { match_type: Some(sec::string_match::MatchType::Exact(principal.to_owned())) }],
                    ..Default::default()
                }],
            }],
        }],
    }
}

/// What istiod makes of a namespace-wide STRICT PeerAuthentication for ztunnel: a DENY
/// of every peer without a principal (plaintext).
pub fn converted_strict(name: &str) -> Authorization {
    Authorization {
        name: format!("converted_peer_authentication_{name}"),
        namespace: NS.to_owned(),
        scope: sec::Scope::Namespace as i32,
        action: sec::Action::Deny as i32,
        groups: vec![sec::Group {
            rules: vec![sec::Rules {
                matches: vec![sec::Match {
                    not_principals: vec![sec::StringMatch { match_type: Some(sec::string_match::MatchType::Presence(())) }],
                    ..Default::default()
                }],
            }],
        }],
    }
}

/// The [`VIP`]'s listener: HTTP, route to cluster `svc` (the server's endpoint), adding a header.
pub fn vip_listener() -> Value {
    http_vip_listener(VIP, "svc")
}

/// An HTTP listener on `vip` (not bound: reached through the redirect) whose one route
/// sends everything to `cluster`, adding `x-node-proxy: node1`.
pub fn http_vip_listener(vip: &str, cluster: &str) -> Value {
    let addr = sa(vip);
    let route = json!({
        "name": cluster,
        "virtual_hosts": [{
            "name": cluster,
            "domains": ["*"],
            "routes": [{
                "match": { "prefix": "/" },
                "route": { "cluster": cluster },
                "request_headers_to_add": [{ "header": { "key": "x-node-proxy", "value": "node1" } }],
            }],
        }],
    });
    json!({
        "name": format!("{}_{}", addr.ip(), addr.port()),
        "address": socket_address(addr),
        "bind_to_port": false,
        "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm(route) }] }],
    })
}

/// Istio's `virtualOutbound`: [::]:15001, TCP passthrough to the original destination.
pub fn virtual_outbound() -> Value {
    json!({
        "name": "virtualOutbound",
        "address": socket_address(sa("[::]:15001")),
        "use_original_dst": true,
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": "PassthroughCluster",
                "cluster": "PassthroughCluster",
            },
        }] }],
    })
}

/// The mesh CA (the local CA) and its files, given to both proxies.
pub struct CaFiles {
    pub ca: LocalCa,
    pub dir: tempfile::TempDir,
}

impl CaFiles {
    pub fn create() -> CaFiles {
        let ca = LocalCa::generate(TD).expect("generate the mesh CA");
        let dir = tempfile::tempdir().expect("temp dir");
        ca.write_files(&dir.path().join("ca-cert.pem"), &dir.path().join("ca-key.pem")).expect("write the CA");
        CaFiles { ca, dir }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("ca-cert.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("ca-key.pem")
    }
}

/// What differs between the users of a [`Scene`].
#[derive(Clone, Debug)]
pub struct SceneOptions {
    /// Names the BPF filesystem mount (one per scene).
    pub tag: String,
    /// `--workload-cert-ttl` of both proxies.
    pub cert_ttl: String,
    /// `--log-level` of both proxies.
    pub log_level: String,
    /// A JSON access log on the proxies' stdout ([`Scene::access_log`]); off: none at all.
    pub access_log: bool,
    /// `--workers` of both proxies.
    pub workers: usize,
    /// Pin both proxies to this CPU (`taskset -c`); `None`: not pinned.
    pub proxy_cpu: Option<usize>,
    /// Rust [`Origin`]s on [`SERVER`] and (pod21 guarded) [`GUARDED`]; off: the caller
    /// runs its own servers in the pods.
    pub origins: bool,
    /// pod21 as a plaintext (tunnel NONE) workload behind [`PLAIN_VIP`] instead of the
    /// guarded HBONE workload.
    pub plaintext_pod21: bool,
}

impl SceneOptions {
    /// The end-to-end tests' scene: origins, JSON access logs, HBONE debug logs
    /// (`MESH_TEST_LOG` overrides the log level), pod21 guarded, certificates valid 24 h.
    pub fn test(tag: &str) -> SceneOptions {
        SceneOptions {
            tag: tag.to_owned(),
            cert_ttl: "24h".to_owned(),
            log_level: std::env::var("MESH_TEST_LOG").unwrap_or_else(|_| "info,node_proxy::hbone=debug".to_owned()),
            access_log: true,
            workers: 1,
            proxy_cpu: None,
            origins: true,
            plaintext_pod21: false,
        }
    }

    /// A benchmark's scene: no access log, log level warn, no origins (the caller's
    /// servers), pod21 a plaintext workload behind [`PLAIN_VIP`].
    pub fn bench(tag: &str) -> SceneOptions {
        SceneOptions { log_level: "warn".to_owned(), access_log: false, origins: false, plaintext_pod21: true, ..SceneOptions::test(tag) }
    }
}

/// The running scene. Fields drop in order: proxies before their ADS servers, origins
/// and processes before the pins, the topology last.
pub struct Scene {
    pub proxy1: Proxy,
    pub proxy2: Proxy,
    pub ads1: AdsServer,
    pub ads2: AdsServer,
    server: Option<Origin>,
    guarded: Option<Origin>,
    pub ca: CaFiles,
    _bpffs: BpfFs,
    pub topo: Topology,
}

impl Scene {
    /// The tests' scene ([`SceneOptions::test`]) with certificates valid for `cert_ttl`.
    pub fn new(tag: &str, cert_ttl: &str) -> Scene {
        Scene::start(SceneOptions { cert_ttl: cert_ttl.to_owned(), ..SceneOptions::test(tag) })
    }

    /// Builds the topology, starts the ADS servers and both proxies, and waits until
    /// node2 captures its HBONE pods' 15008 and node1 redirects the VIPs and pod20.
    pub fn start(opts: SceneOptions) -> Scene {
        let topo = Topology::create();
        let ca = CaFiles::create();
        let bpffs = BpfFs::mount(&opts.tag);
        let server = opts.origins.then(|| topo.nodes[1].pods[0].origin("server", sa(SERVER)));
        let guarded = (opts.origins && !opts.plaintext_pod21).then(|| topo.nodes[1].pods[1].origin("guarded", sa(GUARDED)));
        let ads1 = in_netns(Some(topo.nodes[0].ns.name()), AdsServer::start);
        let ads2 = in_netns(Some(topo.nodes[1].ns.name()), AdsServer::start);
        for ads in [&ads1, &ads2] {
            let (pod10, pod20, pod21) = (&topo.nodes[0].pods[0], &topo.nodes[1].pods[0], &topo.nodes[1].pods[1]);
            let mut addresses = vec![(pod10, workload(pod10, "node1", "client", &[])), (pod20, workload(pod20, "node2", "server", &[]))];
            if opts.plaintext_pod21 {
                addresses.push((pod21, plaintext_workload(pod21, "node2", "plain")));
            } else {
                addresses.push((pod21, workload(pod21, "node2", "guarded", &["guard"])));
                ads.set(AUTHORIZATION, &format!("{NS}/guard"), any(AUTHORIZATION, &allow_only("guard", &format!("{TD}/ns/{NS}/sa/nobody"))));
            }
            for (pod, w) in addresses {
                ads.set(ADDRESS, &format!("Kubernetes//Pod/{NS}/{}", pod.name), any(ADDRESS, &w));
            }
            ads.set(CLUSTER, "svc", any_from_json::<Cluster>(cluster("svc", &[sa(SERVER)])));
            ads.set(
                CLUSTER,
                "PassthroughCluster",
                any_from_json::<Cluster>(
                    json!({ "name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "2s" }),
                ),
            );
            ads.set(LISTENER, "virtualOutbound", any_from_json::<Listener>(virtual_outbound()));
            ads.set(LISTENER, "198.18.100.1_80", any_from_json::<Listener>(vip_listener()));
            if opts.plaintext_pod21 {
                ads.set(CLUSTER, "plain", any_from_json::<Cluster>(cluster("plain", &[sa(PLAIN_SERVER)])));
                ads.set(LISTENER, "198.18.100.2_80", any_from_json::<Listener>(http_vip_listener(PLAIN_VIP, "plain")));
            }
        }
        let options = |node: usize, extra: &[String]| {
            let n = &topo.nodes[node];
            let mut args: Vec<String> = [
                "--node-name",
                if node == 0 { "node1" } else { "node2" },
                "--ca-cert",
                &ca.cert().display().to_string(),
                "--ca-key",
                &ca.key().display().to_string(),
                "--workload-cert-ttl",
                &opts.cert_ttl,
                "--upstream-mark",
                MARK,
            ]
            .map(str::to_owned)
            .to_vec();
            if opts.access_log {
                args.extend(["--access-log-format".to_owned(), "json".to_owned()]);
            }
            args.extend(extra.iter().cloned());
            ProxyOptions {
                netns: Some(n.ns.name().to_owned()),
                wrapper: proxy_wrapper(&n.proxy_cgroup.path().join("cgroup.procs"), opts.access_log, opts.proxy_cpu),
                extra_args: args,
                workers: opts.workers,
                hbone_address: "[::]:15008".to_owned(),
                inbound_plaintext_address: "[::]:15006".to_owned(),
                log_level: opts.log_level.clone(),
                ..Default::default()
            }
        };
        let pin_dir = bpffs.path().join("node1");
        let redirect = [
            "--redirect",
            "ebpf",
            "--redirect-cgroup",
            &topo.nodes[0].pods_cgroup.path().display().to_string(),
            "--redirect-address",
            "198.18.1.1:15001",
            "--bpf-pin-dir",
            &pin_dir.display().to_string(),
        ]
        .map(str::to_owned);
        let proxy2 = Proxy::start_xds(&ads2.url(), options(1, &[]));
        let proxy1 = Proxy::start_xds(&ads1.url(), options(0, &redirect));
        let scene = Scene { proxy1, proxy2, ads1, ads2, server, guarded, ca, _bpffs: bpffs, topo };
        // node2 captures its HBONE pods (15008 to its HBONE listener, other ports to its
        // inbound plaintext listener); node1 redirects the VIPs and the meshed pods.
        let captured: &[&str] = if opts.plaintext_pod21 { &["198.18.2.10"] } else { &["198.18.2.10", "198.18.2.11"] };
        assert_eventually("node2's inbound capture holds its HBONE pods", T, || {
            let out = scene.topo.nodes[1].ns.exec("nft", &["list", "table", "inet", "node_proxy_inbound"]);
            if captured.iter().all(|ip| out.contains(ip)) {
                Ok(())
            } else {
                Err(format!("{out}\nproxy2:\n{}", scene.proxy2.stderr()))
            }
        });
        let redirected: &[&str] =
            if opts.plaintext_pod21 { &["198.18.100.1:80", "198.18.100.2:80", "198.18.2.10"] } else { &["198.18.100.1:80", "198.18.2.10"] };
        assert_eventually("node1 redirects the VIPs and pod20", T, || {
            let r = scene.proxy1.admin_get("/redirect");
            let v: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
            let set = v["destinations"].to_string();
            if redirected.iter().all(|d| set.contains(d)) {
                Ok(())
            } else {
                Err(r.body)
            }
        });
        scene
    }

    /// pod10, the client.
    pub fn client(&self) -> &Pod {
        &self.topo.nodes[0].pods[0]
    }

    /// The origin on [`SERVER`] (pod20); panics without [`SceneOptions::origins`].
    pub fn server(&self) -> &Origin {
        self.server.as_ref().expect("the scene runs no origins (SceneOptions::origins)")
    }

    /// The origin on [`GUARDED`] (pod21); panics without origins or with pod21 plaintext.
    pub fn guarded(&self) -> &Origin {
        self.guarded.as_ref().expect("the scene runs no guarded origin (SceneOptions::origins, plaintext_pod21)")
    }

    /// JSON access log lines of `proxy` ([`SceneOptions::access_log`]).
    pub fn access_log(proxy: &Proxy) -> Vec<Value> {
        proxy.access_log_lines().iter().filter_map(|l| l.find('{').and_then(|i| serde_json::from_str(&l[i..]).ok())).collect()
    }
}

const T: std::time::Duration = std::time::Duration::from_secs(20);

/// The argv prefix the proxies run under: join the proxy cgroup (`procs`), then exec
/// the rest, pinned with `taskset -c` when `cpu` is set. Without `access_log` it drops
/// the `--access-log <path>` that [`Proxy`] always passes, so the proxy logs no access
/// at all (as benchmarks need).
fn proxy_wrapper(procs: &std::path::Path, access_log: bool, cpu: Option<usize>) -> Vec<String> {
    let filter = if access_log {
        String::new()
    } else {
        // POSIX sh: rebuild "$@" without the option and its value.
        "skip=; for a do shift; if [ -n \"$skip\" ]; then skip=; continue; fi; \
         if [ \"$a\" = --access-log ]; then skip=1; continue; fi; set -- \"$@\" \"$a\"; done; "
            .to_owned()
    };
    let pin = cpu.map(|c| format!("taskset -c {c} ")).unwrap_or_default();
    vec!["sh".to_owned(), "-c".to_owned(), format!("echo $$ > '{}' && {filter}exec {pin}\"$@\"", procs.display()), "sh".to_owned()]
}
