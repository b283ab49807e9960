//! What an HBONE stream (or a captured plaintext connection, [`super::plaintext`])
//! carries, served at its destination through the node's inbound listener
//! (`traffic_direction: INBOUND`, Istio's `virtualInbound`) as Envoy serves a
//! connection that its mTLS filter chain terminated (plaintext: its `raw_buffer`
//! chain): the chain is chosen by the stream's target (`:authority`; plaintext: the
//! original destination), its source and what the first bytes look like (the
//! listener's inspectors), its network RBAC sees the tunnel's verified peer (plaintext:
//! no principal), and then
//! - an HTTP chain (`http_connection_manager`) parses the stream: its jwt_authn and
//!   RBAC filters decide per request with the peer's principal, its routes send the
//!   requests to the workload (`inbound|<port>||`, ORIGINAL_DST: the stream's target),
//!   and each request is reported `reporter="destination"`,
//!   `connection_security_policy="mutual_tls"` with the peer as source (plaintext:
//!   `"none"`);
//! - a TCP chain relays the bytes to the workload (the stream's target), reported as
//!   the L4 relay does. Where the listener does not inspect the port, the chain is
//!   known before the `CONNECT` is answered: its network filters deny with 401 and an
//!   unreachable workload is 503, as without an inbound listener;
//! - no matching chain, or one we cannot run, closes the stream (Envoy closes the
//!   connection).
//!
//! The tunnel's own L4 authorization (the workload API's policies) has already
//! admitted the stream; these chains add the sidecar-shaped policies on top.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use istio_compat::model::listener::{ChainKind, Listener};
use istio_compat::model::workload::Workload;
use tracing::{debug, info, warn};

use tokio::io::{AsyncRead, AsyncWrite};

use super::{open_upstream, Metered, Origin, Telemetry};
use crate::http::proxy::{ConnCtx, InboundOrigin};
use crate::io::Duplex;
use crate::listener::{choose_chain, pick_chain, Chosen};
use crate::runtime::Worker;
use crate::telemetry::metrics::DestinationLabels;

/// One accepted stream, to be served once it is answered.
pub(super) struct Stream {
    pub worker: Rc<Worker>,
    pub listener: Arc<Listener>,
    pub workload: Arc<Workload>,
    pub origin: Origin,
    pub target: SocketAddr,
    pub mark: Option<u32>,
    pub timeout: Duration,
    pub telemetry: Option<Telemetry>,
}

impl Stream {
    /// The source workload as the chains see the connection's remote address.
    fn remote(&self) -> SocketAddr {
        SocketAddr::new(self.origin.source_ip, self.origin.peer.port())
    }

    /// Decides before the stream is answered where that needs no bytes (the listener
    /// does not inspect the port): a TCP chain is authorized now (401 when its network
    /// filters deny, as ztunnel answers a policy denial) and relayed by the caller
    /// (`Ok(false)`: 503 when the workload does not accept). `Ok(true)`: answer and
    /// [`Stream::serve`] (an HTTP chain, or the chain depends on the first bytes).
    pub async fn serve_after_answer(&self) -> Result<bool, StatusCode> {
        let (tls_on, http_on) = self.listener.inspection.for_port(self.target.port());
        if tls_on || http_on {
            return Ok(true);
        }
        let remote = self.remote();
        let (Some(id), _) = pick_chain(&self.listener, remote, self.target, None, true) else { return Ok(true) };
        let Some(chain) = self.listener.chain(id) else { return Ok(true) };
        if !matches!(chain.kind, ChainKind::Tcp(_)) {
            return Ok(true);
        }
        if let Err(details) = crate::authz::connection(&self.worker, chain, remote, self.target, None, self.origin.principal.as_deref()).await {
            info!(listener = %self.listener.name, chain = %chain.name, %remote, target = %self.target, "HBONE stream denied by the inbound chain's policy: {details}");
            let default_log = self.telemetry.as_ref().and_then(|t| t.access_log.clone());
            crate::tcp::log_denied(&self.listener, chain, remote, self.target, None, default_log, details);
            return Err(StatusCode::UNAUTHORIZED);
        }
        Ok(false)
    }

    /// Serves `io`: the tunnel's stream, or (no principal) the plaintext connection.
    pub async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Duplex + Unpin + Send + 'static,
    {
        let listener = self.listener.clone();
        let remote = self.remote();
        let tunnelled = self.origin.principal.is_some();
        let Some(Chosen { chain: chain_id, io, server_name }) = choose_chain(&listener, io, remote, self.target, tunnelled).await else { return };
        let Some(chain) = listener.chain(chain_id) else { return };
        let default_log = self.telemetry.as_ref().and_then(|t| t.access_log.clone());
        if let Err(details) = crate::authz::connection(&self.worker, chain, remote, self.target, None, self.origin.principal.as_deref()).await {
            debug!(listener = %listener.name, chain = %chain.name, %remote, target = %self.target, "closing inbound connection: {details}");
            crate::tcp::log_denied(&listener, chain, remote, self.target, server_name, default_log, details);
            return;
        }
        match &chain.kind {
            ChainKind::Http(_) => {
                let cx = Rc::new(ConnCtx {
                    worker: self.worker.clone(),
                    listener: listener.clone(),
                    chain: chain_id,
                    local: self.origin.local(self.target),
                    remote,
                    destination: self.target,
                    original_dst: Some(self.target),
                    server_name,
                    peer_principal: self.origin.principal.as_deref().map(str::to_owned),
                    source: self.origin.source.clone(),
                    default_access_log: default_log,
                    head_verdicts: Default::default(),
                    inbound: Some(Arc::new(InboundOrigin {
                        destination: DestinationLabels::for_workload(&self.workload),
                        peer: self.origin.principal.clone(),
                        certificate: self.origin.certificate.clone(),
                    })),
                });
                crate::http::server::serve(io, cx).await;
            }
            ChainKind::Tcp(_) => {
                let start = (Instant::now(), SystemTime::now());
                let Ok(upstream) = open_upstream(&self.workload, self.target, self.mark, self.timeout).await else { return };
                let upstream = Metered::new(upstream, self.telemetry, &self.workload, &self.origin, self.target, start);
                let (prefix, tunnel) = io.into_parts();
                let (from_peer, to_peer) = crate::io::relay(prefix, tunnel, tokio::io::split(upstream), None).await;
                debug!(target = %self.target, from_peer, to_peer, "inbound connection done");
            }
            ChainKind::Refuse { reason } => {
                warn!(listener = %listener.name, chain = %chain.name, %remote, target = %self.target, "refusing inbound connection: {reason}");
            }
        }
    }
}
