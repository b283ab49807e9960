//! This node's part in the mesh: the certificates of the workload identities it acts
//! for, HBONE out of the node (the upstream leg to a meshed endpoint) and into it (the
//! `:15008` listener, and the capture that brings peers' HBONE for local pods there),
//! and the plaintext that reaches local meshed pods without HBONE (the `:15006`
//! listener, where their policies apply, and the capture that brings it there).
//!
//! Owns: [`MeshSettings`], starting these parts, keeping them following the workload
//! view (which identities hold a certificate: those with a workload on this node;
//! which pod addresses are captured), and choosing the leg to an endpoint
//! ([`Mesh::leg`]). Does not own: the CA protocol (`istio_compat::ca`), certificate
//! renewal (`identity`), TLS (`tls`), the HBONE wire (`hbone`), the nftables table
//! (`redirect::inbound_capture`).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use istio_compat::ca::{CaClient, CaClientConfig};
use istio_compat::model::workload::Identity;

use istio_compat::authz::l4::mtls_requirement;
use istio_compat::model::workload::WorkloadModel;
use redirect_bpf::InboundGuard;

use crate::drain::Drain;
use crate::hbone::inbound::{Inbound, Telemetry};
use crate::hbone::outbound::Outbound;
use crate::hbone::plan::{plan, PlanError, Tunnel, Upstream};
use crate::identity::{CertStore, IstiodIssuer, LocalIssuer};
use crate::redirect::inbound_capture::{local_hbone_addresses, local_hbone_workloads, InboundCapture};
use crate::tls::{LocalCa, TrustDomains};
use crate::xds::workload::LiveWorkloads;

/// Where workload certificates come from.
#[derive(Clone)]
pub enum CaSource {
    /// istiod's IstioCertificateService, impersonating each local workload identity.
    Istiod(CaClientConfig),
    /// A mesh CA held by this process (an operator's files, or generated at start).
    Local(Arc<LocalCa>),
}

impl std::fmt::Debug for CaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaSource::Istiod(c) => write!(f, "istiod CA at {}", c.address),
            CaSource::Local(ca) => write!(f, "local CA for {}", ca.trust_domain()),
        }
    }
}

/// What `node-proxy run` needs to take part in the mesh.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    /// The Kubernetes node this proxy serves: it acts for the workloads on it.
    pub node: String,
    /// This node's network ("" is the default network).
    pub network: String,
    pub trust: TrustDomains,
    pub ca: CaSource,
    /// Where the HBONE listener binds (`[::]:15008`).
    pub hbone_address: SocketAddr,
    /// Where the inbound plaintext listener binds (`[::]:15006`); `None`: plaintext to
    /// the local HBONE pods is not captured and reaches them unchecked.
    pub inbound_plaintext_address: Option<SocketAddr>,
    /// Capture, with nftables, `<local HBONE pod IP>:15008` to the HBONE listener and
    /// (with an inbound plaintext listener) every other TCP port of those pods to it.
    pub capture: bool,
    /// The cluster named in the `baggage` header when a workload does not say.
    pub cluster_id: String,
    /// Validity of workload certificates from the local CA (istiod's may differ).
    pub cert_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("istiod's CA: {0}")]
    Ca(#[from] istio_compat::ca::CaError),
    #[error("cannot bind the mesh's listener {address}: {source} (another proxy or ztunnel on this node? set --hbone-address / --inbound-plaintext-address, or off)")]
    Bind { address: SocketAddr, source: std::io::Error },
}

/// The running parts; shared by the workers (outbound legs, inbound listeners) and
/// the control thread (following the workload view).
pub struct Mesh {
    pub node: String,
    pub network: String,
    pub workloads: Arc<LiveWorkloads>,
    pub certs: Arc<CertStore>,
    pub outbound: Outbound,
    pub inbound: Arc<Inbound>,
    capture: bool,
    hbone_address: SocketAddr,
    inbound_plaintext_address: Option<SocketAddr>,
}

/// How to reach one chosen endpoint.
#[derive(Clone, Debug)]
pub enum Leg {
    Plain(SocketAddr),
    /// Through HBONE, for the connection from `source` (a local workload).
    Hbone {
        tunnel: Arc<Tunnel>,
        source: IpAddr,
    },
}

impl Leg {
    /// The endpoint the bytes are for.
    pub fn endpoint(&self) -> SocketAddr {
        match self {
            Leg::Plain(a) => *a,
            Leg::Hbone { tunnel, .. } => tunnel.target,
        }
    }
}

impl Mesh {
    /// Builds the parts on the current tokio runtime (the HBONE pool's sweeper and the
    /// certificate renewals run on it). Nothing is fetched or bound yet.
    pub async fn new(settings: MeshSettings, workloads: Arc<LiveWorkloads>, mark: Option<u32>, telemetry: Option<Telemetry>) -> Result<Arc<Mesh>, MeshError> {
        let certs = Arc::new(match settings.ca {
            CaSource::Istiod(config) => CertStore::new(Arc::new(IstiodIssuer(CaClient::new(config).await?))),
            CaSource::Local(ca) => CertStore::new(Arc::new(LocalIssuer { ca, validity: settings.cert_ttl })),
        });
        let outbound = Outbound::new(certs.clone(), settings.trust.clone(), mark, settings.cluster_id.clone());
        let mut inbound = Inbound::new(workloads.clone(), certs.clone(), settings.trust, settings.network.clone(), mark);
        inbound.telemetry = telemetry;
        let inbound = Arc::new(inbound);
        Ok(Arc::new(Mesh {
            node: settings.node,
            network: settings.network,
            workloads,
            certs,
            outbound,
            inbound,
            capture: settings.capture,
            hbone_address: settings.hbone_address,
            inbound_plaintext_address: settings.inbound_plaintext_address,
        }))
    }

    /// One SO_REUSEPORT listening socket per worker on the HBONE address, and (when
    /// there is one) on the inbound plaintext address.
    pub fn bind(&self, workers: usize) -> Result<Vec<(std::net::TcpListener, Option<std::net::TcpListener>)>, MeshError> {
        let bind = |address: SocketAddr| crate::listener::bind_reuseport(address).map_err(|source| MeshError::Bind { address, source });
        (0..workers.max(1)).map(|_| Ok((bind(self.hbone_address)?, self.inbound_plaintext_address.map(bind).transpose()?))).collect()
    }

    /// The leg from `source` (the downstream peer: a pod on this node) to `endpoint`:
    /// HBONE when the endpoint's workload speaks it, plain TCP otherwise.
    pub fn leg(&self, source: IpAddr, endpoint: SocketAddr) -> Result<Leg, PlanError> {
        let source = source.to_canonical();
        let endpoint = SocketAddr::new(endpoint.ip().to_canonical(), endpoint.port());
        let view = self.workloads.load();
        match plan(&view.index, &self.network, source, endpoint, &[])? {
            Upstream::Plain(a) => Ok(Leg::Plain(a)),
            Upstream::Hbone(t) if *t.source.node != *self.node => {
                Err(PlanError::NotLocal { uid: t.source.uid.to_string(), node: t.source.node.to_string(), ours: self.node.clone() })
            }
            Upstream::Hbone(t) => Ok(Leg::Hbone { tunnel: Arc::new(t), source }),
        }
    }

    /// `/mesh` on the admin port: the certificates held and the pooled tunnels.
    pub fn status(&self) -> serde_json::Value {
        let rfc3339 = crate::telemetry::access_log::rfc3339_millis;
        let certificates: Vec<serde_json::Value> = self
            .certs
            .identities()
            .into_iter()
            .map(|id| match self.certs.current(&id) {
                Some(c) => serde_json::json!({
                    "identity": id.to_string(),
                    "state": "valid",
                    "not_before": rfc3339(c.not_before()),
                    "not_after": rfc3339(c.not_after()),
                    "chain_length": c.chain().len(),
                }),
                None => serde_json::json!({ "identity": id.to_string(), "state": "pending (not issued yet, or expired and not renewed: see the log)" }),
            })
            .collect();
        serde_json::json!({
            "node": self.node,
            "network": self.network,
            "hbone_address": self.hbone_address.to_string(),
            "inbound_plaintext_address": self.inbound_plaintext_address.map(|a| a.to_string()),
            "certificates": certificates,
            "outbound_tunnels": self.outbound.connections(),
        })
    }

    /// Keeps the certificates, the capture and (given a guard) the kernel's STRICT
    /// entries following the workload view until `drain`.
    pub async fn follow(self: Arc<Self>, drain: Arc<Drain>, guard: Option<InboundGuard>) {
        let mut changes = self.workloads.changes();
        let mut capture: Option<InboundCapture> = None;
        let mut captured: BTreeSet<IpAddr> = BTreeSet::new();
        let mut strict = guard.map(StrictEntries::new);
        loop {
            let view = self.workloads.load();
            let local: BTreeSet<Identity> =
                view.model.workloads.values().filter(|w| *w.node == *self.node && !self.node.is_empty()).map(|w| w.identity.clone()).collect();
            self.certs.set_identities(local);
            if let Some(strict) = &mut strict {
                strict.follow(&view.model, &self.network, &self.node);
            }
            if self.capture {
                let wanted = local_hbone_addresses(&view.model, &self.network, &self.node);
                if capture.is_none() && !wanted.is_empty() {
                    match InboundCapture::start(self.hbone_address.port(), self.inbound_plaintext_address.map(|a| a.port())) {
                        Ok(c) => capture = Some(c),
                        Err(e) => tracing::error!(
                            "cannot capture this node's meshed pods: {e}; peers reaching <pod IP>:15008 are not served, and plaintext reaches the pods without their policies (node-proxy needs root and nft: apt-get install nftables)"
                        ),
                    }
                }
                if capture.is_some() {
                    let add: Vec<IpAddr> = wanted.difference(&captured).copied().collect();
                    let remove: Vec<IpAddr> = captured.difference(&wanted).copied().collect();
                    if !add.is_empty() || !remove.is_empty() {
                        match capture.as_ref().map(|c| c.apply(&add, &remove)) {
                            Some(Err(e)) => tracing::error!("updating the HBONE capture: {e}"),
                            _ => {
                                tracing::info!(added = ?add, removed = ?remove, "HBONE capture updated");
                                captured = wanted;
                            }
                        }
                    }
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = drain.signaled() => break,
            }
        }
        if capture.is_some() {
            if let Err(e) = InboundCapture::remove() {
                tracing::warn!("removing the inbound capture: {e}");
            }
        }
    }
}

/// The kernel's STRICT entries (`redirect_bpf::InboundGuard`) as the workload view
/// says: for each HBONE workload on this node, its PeerAuthentication mode per address
/// (and per port where a port's mode differs), and the node's own addresses toward
/// those pods as the sources allowed through (the proxy's connections to the pods).
struct StrictEntries {
    guard: InboundGuard,
    /// (pod IP, port or every port) -> STRICT.
    written: std::collections::BTreeMap<(IpAddr, Option<u16>), bool>,
    sources: BTreeSet<IpAddr>,
}

impl StrictEntries {
    fn new(guard: InboundGuard) -> Self {
        StrictEntries { guard, written: Default::default(), sources: BTreeSet::new() }
    }

    fn follow(&mut self, model: &WorkloadModel, network: &str, node: &str) {
        let mut wanted = std::collections::BTreeMap::new();
        let mut sources = BTreeSet::new();
        for w in local_hbone_workloads(model, node) {
            let requirement = mtls_requirement(model, w);
            for ip in w.addresses.iter().copied().filter(|ip| w.has_address(network, *ip)) {
                if requirement.strict {
                    wanted.insert((ip, None), true);
                }
                for (port, strict) in &requirement.ports {
                    wanted.insert((ip, Some(*port)), *strict);
                }
                if let Some(source) = source_toward(ip) {
                    sources.insert(source);
                }
            }
        }
        let mut errors = Vec::new();
        for (&(ip, port), &strict) in &wanted {
            if self.written.get(&(ip, port)) != Some(&strict) {
                if let Err(e) = self.guard.set_strict(ip, port, strict) {
                    errors.push(format!("{ip} port {port:?}: {e}"));
                }
            }
        }
        for &(ip, port) in self.written.keys().filter(|k| !wanted.contains_key(k)) {
            if let Err(e) = self.guard.clear(ip, port) {
                errors.push(format!("clearing {ip} port {port:?}: {e}"));
            }
        }
        for ip in sources.difference(&self.sources) {
            if let Err(e) = self.guard.allow_source(*ip) {
                errors.push(format!("allowing source {ip}: {e}"));
            }
        }
        for ip in self.sources.difference(&sources) {
            if let Err(e) = self.guard.disallow_source(*ip) {
                errors.push(format!("removing source {ip}: {e}"));
            }
        }
        if wanted != self.written || sources != self.sources {
            let strict: Vec<String> = wanted
                .iter()
                .map(|((ip, port), s)| format!("{ip}:{}={}", port.map_or("*".to_owned(), |p| p.to_string()), if *s { "STRICT" } else { "open" }))
                .collect();
            tracing::info!(entries = ?strict, sources = ?sources, "STRICT mTLS entries updated");
        }
        if !errors.is_empty() {
            tracing::error!(errors = ?errors, "STRICT mTLS entries not fully written: plaintext to these pods may pass");
        }
        self.written = wanted;
        self.sources = sources;
    }
}

/// The address this node's connections to `ip` leave from (the routing table's
/// choice; a UDP connect sends nothing).
fn source_toward(ip: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if ip.is_ipv4() { (std::net::Ipv4Addr::UNSPECIFIED, 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect((ip, 9)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}
