//! Listeners: binding (one SO_REUSEPORT socket per worker), accepting, the hand-off
//! of redirected connections by original destination (the virtual outbound listener
//! on 15001), sniffing (TLS ClientHello SNI/ALPN, HTTP/1, h2 preface) when the
//! listener's inspectors ask for it, and the choice of filter chain.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use istio_compat::model::listener::{ChainId, ChainKind, ConnectionInfo, Listener};
use istio_compat::model::Name;
use protocols::sniff::{self, Detected, Sniff};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use crate::http::proxy::ConnCtx;
use crate::io::PrefixedIo;
use crate::runtime::Worker;
use crate::telemetry::metrics::SourceLabels;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot bind listener {name} on {address}: {source}{hint}")]
    Bind { name: Name, address: SocketAddr, source: io::Error, hint: &'static str },
}

/// A listener's sockets, one per worker, bound but not yet accepting.
pub struct Bound {
    pub name: Name,
    pub address: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Binds `workers` SO_REUSEPORT sockets for a `bind_to_port` listener.
pub fn bind(l: &Listener, workers: usize) -> Result<Bound, BindError> {
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        sockets.push(bind_reuseport(l.address).map_err(|source| {
            let hint = match source.kind() {
                io::ErrorKind::AddrInUse => ": another process listens there (ss -ltnp)",
                io::ErrorKind::PermissionDenied => ": ports below 1024 need root or CAP_NET_BIND_SERVICE",
                io::ErrorKind::AddrNotAvailable => ": no interface has that address",
                _ => "",
            };
            BindError::Bind { name: l.name.clone(), address: l.address, source, hint }
        })?);
    }
    Ok(Bound { name: l.name.clone(), address: l.address, sockets })
}

/// What the listener manager tells a worker.
pub enum WorkerCommand {
    /// Accept on this socket for listener `name`; `id` names this generation of it.
    Listen { id: u64, name: Name, socket: std::net::TcpListener },
    /// Stop accepting on generation `id` (connections already accepted go on).
    Stop { id: u64 },
}

/// Which listeners the workers accept on: binds, hands each worker its socket, and
/// stops listeners that went away. Owned by whoever changes the configuration.
pub struct ListenerManager {
    workers: Vec<tokio::sync::mpsc::UnboundedSender<WorkerCommand>>,
    accepting: std::collections::HashMap<Name, (u64, SocketAddr)>,
    next_id: u64,
    /// The mesh takes the local workloads' inbound traffic (HBONE, and plaintext on its
    /// own listener): inbound listeners serve it and are not bound themselves.
    mesh_inbound: bool,
}

impl ListenerManager {
    pub fn new(workers: Vec<tokio::sync::mpsc::UnboundedSender<WorkerCommand>>, mesh_inbound: bool) -> Self {
        ListenerManager { workers, accepting: Default::default(), next_id: 1, mesh_inbound }
    }

    /// Whether `l` gets sockets of its own: a `bind_to_port` listener, except an
    /// inbound one (`traffic_direction: INBOUND`, Istio's `virtualInbound` on 15006)
    /// while the mesh's inbound listeners bring the local workloads' traffic to it.
    pub fn binds(&self, l: &Listener) -> bool {
        l.bind_to_port && !(self.mesh_inbound && l.inbound)
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Whether the workers accept for `name` on `address` already.
    pub fn is_accepting(&self, name: &str, address: SocketAddr) -> bool {
        self.accepting.get(name).is_some_and(|(_, a)| *a == address)
    }

    /// Makes the workers accept on `bound` (replacing the listener's previous sockets).
    pub fn activate(&mut self, bound: Bound) {
        self.stop(&bound.name);
        let id = self.next_id;
        self.next_id += 1;
        for (worker, socket) in self.workers.iter().zip(bound.sockets) {
            let _ = worker.send(WorkerCommand::Listen { id, name: bound.name.clone(), socket });
        }
        tracing::info!(listener = %bound.name, address = %bound.address, workers = self.workers.len(), "listening");
        self.accepting.insert(bound.name, (id, bound.address));
    }

    /// Stops accepting for `name`.
    pub fn stop(&mut self, name: &str) {
        if let Some((id, address)) = self.accepting.remove(name) {
            for worker in &self.workers {
                let _ = worker.send(WorkerCommand::Stop { id });
            }
            tracing::info!(listener = %name, %address, "stopped listening");
        }
    }

    /// Stops every listener that `listeners` no longer has, or no longer [binds](Self::binds).
    pub fn retain_bound<'a>(&mut self, mut listeners: impl FnMut(&str) -> Option<&'a Listener>) {
        let gone: Vec<Name> = self.accepting.keys().filter(|n| !listeners(n).is_some_and(|l| self.binds(l))).cloned().collect();
        for name in gone {
            self.stop(&name);
        }
    }
}

/// A worker's side of the listener manager: runs accept loops as told, until draining.
pub async fn serve_commands(worker: Rc<Worker>, mut commands: tokio::sync::mpsc::UnboundedReceiver<WorkerCommand>, options: Rc<Options>) {
    let mut accepting: std::collections::HashMap<u64, tokio::task::JoinHandle<()>> = Default::default();
    let drain = worker.shared.drain.clone();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(WorkerCommand::Listen { id, name, socket }) => {
                    accepting.insert(id, tokio::task::spawn_local(accept_loop(worker.clone(), name, socket, options.clone())));
                }
                Some(WorkerCommand::Stop { id }) => {
                    if let Some(task) = accepting.remove(&id) {
                        task.abort();
                    }
                }
                None => break,
            },
            _ = drain.signaled() => break,
        }
    }
    for (_, task) in accepting {
        let _ = task.await;
    }
}

pub fn bind_reuseport(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Per-process options that apply to every connection.
pub struct Options {
    pub default_access_log: Option<Arc<istio_compat::model::listener::AccessLog>>,
}

/// Accepts on one socket until draining starts.
pub async fn accept_loop(worker: Rc<Worker>, name: Name, socket: std::net::TcpListener, options: Rc<Options>) {
    let listener = match tokio::net::TcpListener::from_std(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %name, "cannot register listener socket: {e}");
            return;
        }
    };
    let drain = worker.shared.drain.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let worker = worker.clone();
                    let name = name.clone();
                    let options = options.clone();
                    tokio::task::spawn_local(async move {
                        let _guard = worker.shared.drain.track();
                        worker.shared.metrics.downstream_cx_total.inc();
                        worker.shared.metrics.downstream_cx_active.inc();
                        handle_connection(worker.clone(), name, stream, remote, options).await;
                        worker.shared.metrics.downstream_cx_active.dec();
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = drain.signaled() => break,
        }
    }
}

async fn handle_connection(worker: Rc<Worker>, name: Name, stream: TcpStream, remote: SocketAddr, options: Rc<Options>) {
    let snapshot = worker.shared.live.load();
    let Some(mut listener) = snapshot.listeners.get(&name).cloned() else {
        tracing::debug!(listener = %name, "listener removed; closing connection");
        return;
    };
    let Ok(local) = stream.local_addr() else { return };
    // The original destination, when the connection was redirected to us.
    let original_dst = if listener.use_original_dst || listener.detect_original_dst {
        redirect_bpf::original_dst(&stream, local).ok().filter(|d| !same_address(*d, local))
    } else {
        None
    };
    let destination = original_dst.unwrap_or(local);
    if listener.use_original_dst {
        // Hand off to the listener for the original destination, if there is one.
        if let Some(target) = snapshot.listener_for_original_dst(destination) {
            listener = target.clone();
        }
    }
    let Some(Chosen { chain: chain_id, io, server_name }) = choose_chain(&listener, stream, remote, destination, false).await else { return };
    let Some(chain) = listener.chain(chain_id) else { return };
    if chain.downstream_tls {
        tracing::warn!(listener = %listener.name, chain = %chain.name, %remote, "refusing connection: its chain terminates TLS (transport_socket), which node-proxy does not do on listeners");
        return;
    }
    let hcm_rbac = matches!(&chain.kind, ChainKind::Http(h) if !h.rbac.is_empty() || h.ext_authz.is_some());
    let network_authz = !chain.rbac.is_empty() || chain.ext_authz.is_some();
    let peer_principal = if hcm_rbac || network_authz { crate::authz::peer_principal(&worker.shared, remote.ip()) } else { None };
    if let Err(details) = crate::authz::connection(&worker, chain, remote, destination, server_name.as_deref(), peer_principal.as_deref()).await {
        tracing::debug!(listener = %listener.name, chain = %chain.name, %remote, %destination, "closing connection: {details}");
        crate::tcp::log_denied(&listener, chain, remote, destination, server_name, options.default_access_log.clone(), details);
        return;
    }
    match &chain.kind {
        ChainKind::Http(_) => {
            let cx = Rc::new(ConnCtx {
                worker: worker.clone(),
                listener: listener.clone(),
                chain: chain_id,
                local,
                remote,
                destination,
                original_dst,
                server_name,
                peer_principal,
                source: SourceLabels::unknown(),
                default_access_log: options.default_access_log.clone(),
                head_verdicts: Default::default(),
                inbound: None,
            });
            crate::http::server::serve(io, cx).await;
        }
        ChainKind::Tcp(tcp) => {
            crate::tcp::proxy(worker, &snapshot, &listener, tcp, io, remote, destination, original_dst, server_name, options.default_access_log.clone()).await;
        }
        ChainKind::Refuse { reason } => {
            tracing::warn!(listener = %listener.name, chain = %chain.name, %remote, "refusing connection: {reason}");
        }
    }
}

/// A connection's filter chain, chosen as Envoy does after the listener filters, and
/// the connection with what sniffing read put back in front.
pub(crate) struct Chosen<I> {
    pub chain: ChainId,
    pub io: PrefixedIo<I>,
    /// From the TLS ClientHello, when sniffed.
    pub server_name: Option<String>,
}

/// Sniffs `stream` when the listener's inspectors ask for it on the destination's port
/// (TLS ClientHello, HTTP/1, h2 preface) and picks its filter chain. `None`: the
/// connection is to be closed (no chain matches, or sniffing failed).
///
/// `tunnelled`: the stream came out of an HBONE tunnel, whose mTLS stands for Istio's
/// (the tunnel verified the peer's SPIFFE identity): the chains are matched as for a
/// connection from another Istio proxy — transport `tls` with Istio's ALPN
/// (`istio-http/1.1` / `istio-h2` for HTTP, `istio-peer-exchange` otherwise, and
/// `istio`), as a STRICT workload's inbound listener has only those — and, when none
/// matches, as the plaintext stream it is.
pub(crate) async fn choose_chain<I: AsyncRead + Unpin>(
    listener: &Listener,
    mut stream: I,
    remote: SocketAddr,
    destination: SocketAddr,
    tunnelled: bool,
) -> Option<Chosen<I>> {
    let (tls_on, http_on) = listener.inspection.for_port(destination.port());
    let (prefix, detected) = if tls_on || http_on {
        match sniff_stream(&mut stream, listener.sniff_timeout).await {
            Ok(sniffed) => sniffed,
            Err(SniffFailure::TimedOut) if listener.continue_on_sniff_timeout => (Bytes::new(), None),
            Err(e) => {
                tracing::debug!(listener = %listener.name, %remote, "closing connection: {e}");
                return None;
            }
        }
    } else {
        (Bytes::new(), None)
    };
    let (chosen, server_name) = pick_chain(listener, remote, destination, detected.as_ref(), tunnelled);
    let Some(chain) = chosen.filter(|id| listener.chain(*id).is_some()) else {
        tracing::debug!(listener = %listener.name, %remote, %destination, "no filter chain matches; closing");
        return None;
    };
    Some(Chosen { chain, io: PrefixedIo::new(prefix, stream), server_name })
}

/// The filter chain for a connection whose first bytes were recognised as `detected`
/// (none: not inspected), as [`choose_chain`] picks it; and the SNI it matched on.
pub(crate) fn pick_chain(
    listener: &Listener,
    remote: SocketAddr,
    destination: SocketAddr,
    detected: Option<&Detected>,
    tunnelled: bool,
) -> (Option<ChainId>, Option<String>) {
    let (tls_on, http_on) = listener.inspection.for_port(destination.port());
    let transport = match detected {
        Some(Detected::Tls(_)) if tls_on => "tls",
        _ => "raw_buffer",
    };
    let (alpn, server_name): (Vec<&str>, Option<String>) = match detected {
        Some(d @ Detected::Tls(hello)) if tls_on => (sniff::application_protocols(d), hello.server_name.clone()),
        Some(d @ (Detected::Http1(_) | Detected::Http2)) if http_on => (sniff::application_protocols(d), None),
        _ => (Vec::new(), None),
    };
    let info = ConnectionInfo { destination, source: remote, transport_protocol: transport, application_protocols: &alpn, server_name: server_name.as_deref() };
    let as_istio_mtls = || {
        let alpn: &[&str] = match detected {
            Some(Detected::Http1(_)) => &["istio-http/1.1", "istio"],
            Some(Detected::Http2) => &["istio-h2", "istio"],
            _ => &["istio-peer-exchange", "istio"],
        };
        listener.select_chain_id(&ConnectionInfo { transport_protocol: "tls", application_protocols: alpn, ..info })
    };
    let chosen = if tunnelled { as_istio_mtls().or_else(|| listener.select_chain_id(&info)) } else { listener.select_chain_id(&info) };
    (chosen.filter(|id| listener.chain(*id).is_some()), server_name)
}

#[derive(Debug, thiserror::Error)]
enum SniffFailure {
    #[error("timed out waiting for the first bytes")]
    TimedOut,
    #[error("read failed while sniffing: {0}")]
    Io(io::Error),
}

/// Reads until the protocol is known (or the peer stops sending).
async fn sniff_stream<I: AsyncRead + Unpin>(stream: &mut I, timeout: Option<Duration>) -> Result<(Bytes, Option<Detected>), SniffFailure> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        if let Sniff::Detected(d) = sniff::sniff(&buf) {
            return Ok((buf.freeze(), Some(d)));
        }
        if buf.len() >= sniff::MAX_SNIFF_LEN {
            return Ok((buf.freeze(), Some(Detected::Other)));
        }
        let read = stream.read_buf(&mut buf);
        let n = match deadline {
            Some(d) => match tokio::time::timeout_at(d, read).await {
                Ok(r) => r.map_err(SniffFailure::Io)?,
                Err(_) => {
                    return if buf.is_empty() { Err(SniffFailure::TimedOut) } else { Ok((buf.freeze(), Some(Detected::Other))) };
                }
            },
            None => read.await.map_err(SniffFailure::Io)?,
        };
        if n == 0 {
            return Ok((buf.freeze(), Some(Detected::Other)));
        }
    }
}

/// Whether two socket addresses are the same endpoint (an IPv4 address and its
/// v4-mapped IPv6 form are).
pub(crate) fn same_address(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;
    use istio_compat::model::listener::Inspection;

    fn listener(bind_to_port: bool, inbound: bool) -> Listener {
        Listener {
            name: "l".into(),
            address: "0.0.0.0:15006".parse().unwrap(),
            bind_to_port,
            use_original_dst: false,
            detect_original_dst: false,
            inspection: Inspection::default(),
            filter_chains: vec![],
            default_filter_chain: None,
            sniff_timeout: None,
            continue_on_sniff_timeout: false,
            inbound,
            access_log: vec![],
        }
    }

    #[test]
    fn inbound_listeners_get_no_socket_while_the_mesh_brings_their_traffic() {
        let (mesh, alone) = (ListenerManager::new(Vec::new(), true), ListenerManager::new(Vec::new(), false));
        assert!(!mesh.binds(&listener(true, true)), "the mesh's listeners serve virtualInbound");
        assert!(alone.binds(&listener(true, true)), "without the mesh it is a listener like any other");
        assert!(mesh.binds(&listener(true, false)) && alone.binds(&listener(true, false)));
        assert!(!mesh.binds(&listener(false, false)) && !alone.binds(&listener(false, true)), "bind_to_port: false never binds");
    }
}
