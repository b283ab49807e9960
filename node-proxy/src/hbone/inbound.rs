//! The HBONE listener (port 15008): terminates mTLS for the local workload a
//! connection was sent to, presenting that workload's certificate, verifies the
//! peer's SPIFFE identity, and serves the `CONNECT` streams inside by connecting to
//! the workload.
//!
//! Which workload: the connection's original destination (`SO_ORIGINAL_DST`, from the
//! capture of `<pod IP>:15008`, `redirect::inbound_capture`), or its local address when it
//! was not redirected. A `CONNECT` must target an address of that same workload (a
//! peer cannot use one pod's certificate to reach another): 400 otherwise. Then the
//! workload's L4 authorization policies decide with the verified peer identity (401
//! when denied), and 503 answers a workload that does not accept the connection.
//!
//! Each relayed stream is reported as the destination sees it (`reporter=destination`,
//! `connection_security_policy=mutual_tls`, the verified peer as `source_principal`):
//! Istio's TCP metrics and an access log line when it ends.
//!
//! The destination's other entry, plaintext captured for the same workloads (port
//! 15006), is [`plaintext`]: it shares the policy decision, the inbound listener's
//! chains ([`l7`]), the connection to the pod and its report.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use istio_compat::authz::l4::{evaluate, Connection, Decision};
use istio_compat::model::listener::AccessLog;
use istio_compat::model::workload::{AddressIndex, Identity, Workload};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::server::{serve, Accepted, ConnectRequest};
use super::ConfigCache;
use crate::drain::Drain;
use crate::http::headers::PeerCertificate;
use crate::identity::CertStore;
use crate::runtime::Worker;
use crate::telemetry::access_log::RequestRecord;
use crate::telemetry::metrics::{DestinationLabels, Metrics, SourceLabels, TcpLabels};
use crate::tls::{self, TrustDomains};
use crate::upstream::pool::connect_marked;
use crate::xds::workload::LiveWorkloads;

mod l7;
mod plaintext;

/// What the listener needs from the rest of the proxy.
pub struct Inbound {
    pub workloads: Arc<LiveWorkloads>,
    pub certs: Arc<CertStore>,
    pub trust: TrustDomains,
    /// This proxy's network ("" is the default).
    pub network: String,
    /// SO_MARK on connections to the workloads (never redirected back to the proxy).
    pub mark: Option<u32>,
    /// How long a connection may wait for its workload's first certificate.
    pub cert_wait: Duration,
    pub connect_timeout: Duration,
    /// Where relayed streams are reported (absent: nowhere).
    pub telemetry: Option<Telemetry>,
    /// Server configs per identity, rebuilt when the certificate changes.
    configs: ConfigCache<Identity, rustls::ServerConfig>,
}

/// Istio's TCP metrics and the access log, for the streams this listener relays.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub access_log: Option<Arc<AccessLog>>,
}

impl Inbound {
    pub fn new(workloads: Arc<LiveWorkloads>, certs: Arc<CertStore>, trust: TrustDomains, network: String, mark: Option<u32>) -> Inbound {
        Inbound {
            workloads,
            certs,
            trust,
            network,
            mark,
            cert_wait: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            telemetry: None,
            configs: ConfigCache::default(),
        }
    }

    /// Accepts on `listener` until `drain` fires; connections are tasks of the current `LocalSet`.
    /// With `worker` (the proxy's worker this runs on), a stream is served through the
    /// snapshot's inbound listener when there is one ([`l7`]); without, it is relayed (L4).
    pub async fn run(self: Arc<Self>, listener: TcpListener, drain: Arc<Drain>, worker: Option<Rc<Worker>>) {
        let stop = drain.clone();
        accept_until(listener, &stop, "HBONE", move |tcp, peer| {
            let (this, drain, worker) = (self.clone(), drain.clone(), worker.clone());
            async move {
                if let Err(e) = this.connection(tcp, peer, &drain, worker).await {
                    info!(%peer, error = %e, "HBONE connection refused");
                }
            }
        })
        .await
    }

    /// Runs [`Inbound::run`] on a thread of its own (a current-thread runtime and a
    /// `LocalSet`, as a worker has) for the rest of the process: for tests and
    /// benchmarks outside the proxy.
    pub fn run_on_thread(self: Arc<Self>, listener: TcpListener, drain: Arc<Drain>) -> std::io::Result<()> {
        let listener = listener.into_std()?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("hbone-inbound".into()).spawn(move || {
            tokio::task::LocalSet::new().block_on(&rt, async move {
                match TcpListener::from_std(listener) {
                    Ok(l) => self.run(l, drain, None).await,
                    Err(e) => warn!(error = %e, "the HBONE listener cannot be registered"),
                }
                // Draining stops the accepting only: open connections go on (GOAWAY,
                // their streams finish) as long as the process runs.
                std::future::pending::<()>().await
            })
        })?;
        Ok(())
    }

    /// One accepted connection: the workload it is for, TLS as that workload, then its streams.
    pub async fn connection(&self, tcp: TcpStream, peer: SocketAddr, drain: &Drain, worker: Option<Rc<Worker>>) -> Result<(), String> {
        let local = tcp.local_addr().map_err(|e| format!("local address: {e}"))?;
        let dst = redirect_bpf::original_dst(&tcp, local).unwrap_or(local);
        let view = self.workloads.load();
        let workload = view
            .index
            .workload(&self.network, dst.ip())
            .cloned()
            .ok_or_else(|| format!("no workload has the address {} this connection was sent to", dst.ip()))?;
        drop(view);
        let config = self.server_config(&workload.identity).await?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsAcceptor::from(config).accept(tcp).await.map_err(|e| match tls::Rejection::from_io(&e) {
            Some(r) => format!("mTLS for {} rejected the peer: {r}", workload.identity),
            None => format!("TLS handshake for {}: {e}", workload.identity),
        })?;
        let peer_id = tls::peer_identity(tls.get_ref().1).ok_or("the peer presented no SPIFFE identity")?;
        let certificate = peer_certificate(tls.get_ref().1, &workload.identity, &peer_id);
        debug!(%peer, peer_identity = %peer_id, workload = %workload.uid, "HBONE connection accepted");
        let (mark, timeout) = (self.mark, self.connect_timeout);
        let label = format!("{peer} ({peer_id})");
        let (workloads, network, telemetry) = (self.workloads.clone(), self.network.clone(), self.telemetry.clone());
        serve(tls, &label, drain, move |req: ConnectRequest| {
            let (workload, workloads, peer_id, network, telemetry) = (workload.clone(), workloads.clone(), peer_id.clone(), network.clone(), telemetry.clone());
            let (worker, certificate) = (worker.clone(), certificate.clone());
            async move {
                if !workload.addresses.contains(&req.target.ip()) {
                    info!(workload = %workload.uid, target = %req.target, "HBONE CONNECT to an address of another workload than the one the connection was made for");
                    return Err(StatusCode::BAD_REQUEST);
                }
                if req.target.port() == super::PORT {
                    // From the node, <pod IP>:15008 is captured back to this listener: a
                    // loop, as ztunnel's SelfCall refusal guards against.
                    info!(workload = %workload.uid, target = %req.target, "HBONE CONNECT to the HBONE port itself refused");
                    return Err(StatusCode::SERVICE_UNAVAILABLE);
                }
                let origin = Origin::new(&workloads, &network, &peer_id, peer, &req.headers, certificate);
                if let Err(denied) = authorize(&workloads, &workload, Some(&peer_id), origin.source_ip, req.target) {
                    info!(peer = %peer_id, source_ip = %origin.source_ip, target = %req.target, workload = %workload.uid, decision = ?denied, "HBONE connection denied by authorization policy");
                    return Err(StatusCode::UNAUTHORIZED);
                }
                let inbound_listener = worker.as_ref().and_then(|w| w.shared.live.load().inbound_listener().cloned());
                if let (Some(worker), Some(listener)) = (worker, inbound_listener) {
                    let stream = l7::Stream { worker, listener, workload: workload.clone(), origin: origin.clone(), target: req.target, mark, timeout, telemetry: telemetry.clone() };
                    if stream.serve_after_answer().await? {
                        return Ok(Accepted::Serve(Box::new(move |tunnel| Box::pin(stream.serve(tunnel)))));
                    }
                }
                let start = (Instant::now(), SystemTime::now());
                let upstream = open_upstream(&workload, req.target, mark, timeout).await?;
                Ok(Accepted::Relay(Metered::new(upstream, telemetry, &workload, &origin, req.target, start)))
            }
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn server_config(&self, identity: &Identity) -> Result<Arc<rustls::ServerConfig>, String> {
        let cert = self.certs.certificate(identity, self.cert_wait).await.map_err(|e| e.to_string())?;
        self.configs.get_or_build(identity.clone(), &cert, || {
            tls::server_config(&cert, cert.roots(), &self.trust).map_err(|e| format!("TLS server config for {identity}: {e}"))
        })
    }
}

/// Accepts on `listener` until `drain` fires, each connection a task of the current
/// `LocalSet` running `handle`.
async fn accept_until<F, Fut>(listener: TcpListener, drain: &Drain, what: &str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        match accepted {
            Ok((tcp, peer)) => drop(tokio::task::spawn_local(handle(tcp, peer))),
            Err(e) => {
                warn!(error = %e, "accepting on the {what} listener");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The L4 authorization of one connection to `workload` (ztunnel's decision over the
/// workload API's policies, converted PeerAuthentication included), from the verified
/// `peer_id` (HBONE) or a plaintext peer (`None`). `source_ip` is the source's address
/// as [`Origin`] found it. `Err`: the decision that denied it.
fn authorize(workloads: &LiveWorkloads, workload: &Workload, peer_id: Option<&Identity>, source_ip: IpAddr, target: SocketAddr) -> Result<(), Decision> {
    let view = workloads.load();
    let conn = Connection { source: peer_id, source_ip, destination_ip: target.ip(), destination_port: target.port() };
    match evaluate(&view.model, workload, &conn) {
        Decision::Allow(_) => Ok(()),
        denied => Err(denied),
    }
}

/// The source workload's address for policy and telemetry. A per-node proxy's tunnel
/// comes from its node's address, so the source proxy names the workload's in
/// `forwarded: for=`; that claim is believed only when the workload at that address
/// has the identity the peer proved (a peer cannot borrow another identity's address
/// to slip past a source-IP rule). Otherwise: the tunnel's own peer address, as ztunnel.
fn source_address(index: &AddressIndex, network: &str, peer_id: &Identity, peer_ip: IpAddr, headers: &http::HeaderMap) -> IpAddr {
    match forwarded_for(headers) {
        Some(ip) if index.workload(network, ip).is_some_and(|w| w.identity == *peer_id) => ip,
        Some(ip) => {
            debug!(claimed = %ip, peer = %peer_id, "forwarded source address not believed: no workload of the peer's identity has it");
            peer_ip
        }
        None => peer_ip,
    }
}

/// The first `for=` address of a `forwarded` header (RFC 7239): an IP, or `ip:port`
/// as ztunnel writes it (`for="198.18.1.10:41234"`, IPv6 in brackets).
pub(crate) fn forwarded_for(headers: &http::HeaderMap) -> Option<IpAddr> {
    let value = headers.get(super::FORWARDED)?.to_str().ok()?;
    value.split([';', ',']).find_map(|part| {
        let v = part.trim().strip_prefix("for=").or_else(|| part.trim().strip_prefix("For="))?;
        let v = v.trim_matches('"');
        v.parse::<IpAddr>()
            .ok()
            .or_else(|| v.parse::<SocketAddr>().ok().map(|a| a.ip()))
            .or_else(|| v.trim_start_matches('[').trim_end_matches(']').parse().ok())
    })
}

/// Connects to `target` for a stream of a connection made for `workload`.
async fn open_upstream(workload: &Workload, target: SocketAddr, mark: Option<u32>, timeout: Duration) -> Result<TcpStream, StatusCode> {
    match tokio::time::timeout(timeout, connect_marked(target, mark)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            info!(workload = %workload.uid, %target, error = %e, "the workload did not accept the tunnelled connection");
            Err(StatusCode::SERVICE_UNAVAILABLE)
        }
        Err(_) => {
            info!(workload = %workload.uid, %target, "connecting to the workload timed out");
            Err(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

/// What is reported when a relayed stream ends.
struct Report {
    telemetry: Telemetry,
    labels: TcpLabels,
    record: RequestRecord,
    started: Instant,
}

impl Report {
    /// Counts the stream as opened; the rest is reported when it ends.
    fn open(
        telemetry: Telemetry,
        workload: &Workload,
        origin: &Origin,
        target: SocketAddr,
        upstream_local: Option<SocketAddr>,
        (started, start_time): (Instant, SystemTime),
    ) -> Report {
        let labels = TcpLabels {
            reporter: "destination",
            source: origin.source.clone(),
            destination: DestinationLabels::for_workload(workload),
            response_flags: Arc::from("-"),
            // ztunnel's labels: its plaintext passthrough reports "unknown".
            connection_security_policy: if origin.principal.is_some() { "mutual_tls" } else { "unknown" },
        };
        telemetry.metrics.tcp_opened.get_or_create(&labels).inc();
        let mut record = RequestRecord::tcp(origin.peer, origin.local(target), None);
        record.start_time = start_time;
        record.x_forwarded_for = Some(origin.source_ip.to_string());
        record.authority = target.to_string();
        record.upstream_host = Some(target);
        record.upstream_cluster = Some(Arc::from(format!("inbound|{}||", target.port())));
        record.upstream_local_address = upstream_local;
        record.downstream_peer_uri_san = origin.principal.clone();
        Report { telemetry, labels, record, started }
    }
}

/// Who sent a connection to a local workload (a tunnelled stream, or a captured
/// plaintext connection), as its destination reports and authorizes it.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    /// The TCP peer: the tunnel's (the source node's proxy), or the plaintext client.
    pub peer: SocketAddr,
    /// The verified peer identity (HBONE); `None` for plaintext.
    pub principal: Option<Arc<str>>,
    /// The source workload's address ([`source_address`]; for plaintext, the peer's).
    pub source_ip: IpAddr,
    /// The source workload's labels when the workload view agrees with what the peer
    /// proved, else only its principal (plaintext: the workload at the peer's address,
    /// its principal unknown, since nothing proved it).
    pub source: Arc<SourceLabels>,
    /// The peer's certificate as `x-forwarded-client-cert` tells of it.
    pub certificate: Option<Arc<PeerCertificate>>,
}

/// The verified peer certificate of `tls`, for `x-forwarded-client-cert` (`By=` is the
/// workload the connection was accepted as).
fn peer_certificate(tls: &rustls::ServerConnection, ours: &Identity, peer: &Identity) -> Option<Arc<PeerCertificate>> {
    let leaf = tls.peer_certificates()?.first()?;
    match tls::cert::xfcc_facts(leaf) {
        Ok((hash, subject, dns)) => Some(Arc::new(PeerCertificate { by: vec![ours.to_string()], hash, subject, uris: vec![peer.to_string()], dns })),
        Err(e) => {
            debug!(peer = %peer, error = %e, "the peer certificate's details for x-forwarded-client-cert");
            None
        }
    }
}

impl Origin {
    fn new(
        workloads: &LiveWorkloads,
        network: &str,
        peer_id: &Identity,
        peer: SocketAddr,
        headers: &http::HeaderMap,
        certificate: Option<Arc<PeerCertificate>>,
    ) -> Origin {
        let principal: Arc<str> = Arc::from(peer_id.to_string());
        let view = workloads.load();
        let source_ip = source_address(&view.index, network, peer_id, peer.ip(), headers);
        let source = match view.index.workload(network, source_ip) {
            Some(w) if w.identity == *peer_id => SourceLabels::for_workload(w, &principal),
            _ => SourceLabels::for_principal(&principal),
        };
        Origin { peer, principal: Some(principal), source_ip, source, certificate }
    }

    /// A plaintext client at `peer`, as ztunnel's inbound passthrough sees it: the
    /// source is the TCP peer, its workload (for the labels) the one at that address.
    fn plaintext(workloads: &LiveWorkloads, network: &str, peer: SocketAddr) -> Origin {
        let source_ip = peer.ip().to_canonical();
        let view = workloads.load();
        let source = match view.index.workload(network, source_ip) {
            Some(w) => SourceLabels::for_workload(w, "unknown"),
            None => SourceLabels::unknown(),
        };
        Origin { peer, principal: None, source_ip, source, certificate: None }
    }

    /// The connection's local address as the access log reports it: the workload's
    /// HBONE port for a tunnelled stream, the address the client dialed for plaintext.
    fn local(&self, target: SocketAddr) -> SocketAddr {
        match self.principal {
            Some(_) => SocketAddr::new(target.ip(), super::PORT),
            None => target,
        }
    }
}

/// The connection to the workload, counting bytes both ways; reports when dropped
/// (the stream ended).
struct Metered {
    inner: TcpStream,
    /// From the workload (sent to the peer).
    read: u64,
    /// To the workload (received from the peer).
    written: u64,
    report: Option<Report>,
}

impl Metered {
    fn new(inner: TcpStream, telemetry: Option<Telemetry>, workload: &Workload, origin: &Origin, target: SocketAddr, start: (Instant, SystemTime)) -> Metered {
        let report = telemetry.map(|t| Report::open(t, workload, origin, target, inner.local_addr().ok(), start));
        Metered { inner, read: 0, written: 0, report }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let Some(mut r) = self.report.take() else { return };
        let m = &r.telemetry.metrics;
        m.tcp_received_bytes.get_or_create(&r.labels).inc_by(self.written);
        m.tcp_sent_bytes.get_or_create(&r.labels).inc_by(self.read);
        m.tcp_closed.get_or_create(&r.labels).inc();
        if let Some(log) = &r.telemetry.access_log {
            r.record.bytes_received = self.written;
            r.record.bytes_sent = self.read;
            r.record.duration = r.started.elapsed();
            r.record.emit(std::slice::from_ref(log));
        }
    }
}

impl AsyncRead for Metered {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl AsyncWrite for Metered {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            this.written += *n as u64;
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use istio_compat::model::workload::{AddressResource, WorkloadModel};

    #[test]
    fn a_forwarded_address_is_believed_only_for_the_identity_that_holds_it() {
        let mut m = WorkloadModel::default();
        let w = serde_json::json!({ "uid": "Kubernetes//Pod/ns1/client", "addresses": ["198.18.1.10"], "node": "node1", "tunnel": "HBONE",
            "identity": "spiffe://cluster.local/ns/ns1/sa/client" });
        m.insert_address(AddressResource::Workload(Arc::new(serde_json::from_value(w).unwrap())));
        let index = AddressIndex::new(&m);
        let peer_ip: IpAddr = "198.18.254.1".parse().unwrap();
        let headers = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("forwarded", v.parse().unwrap());
            h
        };
        let client = Identity::new("cluster.local", "ns1", "client");
        let other = Identity::new("cluster.local", "ns1", "other");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_address(&index, "", &client, peer_ip, &headers("for=198.18.1.10")), ip("198.18.1.10"));
        assert_eq!(source_address(&index, "", &other, peer_ip, &headers("for=198.18.1.10")), peer_ip, "another identity cannot claim it");
        assert_eq!(source_address(&index, "", &client, peer_ip, &headers("for=198.18.9.9")), peer_ip, "an address no workload has");
        assert_eq!(source_address(&index, "", &client, peer_ip, &http::HeaderMap::new()), peer_ip);
    }
}
