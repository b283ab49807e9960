//! The inbound plaintext listener (Istio's port 15006): TCP that reaches one of this
//! node's meshed (HBONE) pods without HBONE, captured here by
//! [`crate::redirect::inbound_capture`], as ztunnel's inbound passthrough serves it.
//!
//! The pod's PeerAuthentication and authorization policies (the workload API's, with
//! istiod's converted STRICT among them) decide on the connection with no peer
//! identity and the client's address as the source, so a STRICT pod refuses it and an
//! ALLOW policy that names principals does not admit it. Then, when the configuration
//! has an inbound listener (Istio's `virtualInbound`), its `raw_buffer` chains serve the
//! connection as a sidecar would ([`super::l7`]); otherwise it is relayed to the pod,
//! reported `reporter="destination"`, `connection_security_policy="unknown"`.
//!
//! A refusal resets the connection (a denial, no workload at the address, a waypoint
//! in front of the workload, or the workload not accepting). A workload behind a
//! waypoint is refused rather than served: its policy lives in the waypoint, which
//! ztunnel would forward the connection to and node-proxy does not support yet.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use super::{accept_until, authorize, l7, open_upstream, Inbound, Metered, Origin};
use crate::drain::Drain;
use crate::listener::same_address;
use crate::runtime::Worker;

impl Inbound {
    /// Accepts captured plaintext on `listener` until `drain` fires, as [`Inbound::run`]
    /// does HBONE.
    pub async fn run_plaintext(self: Arc<Self>, listener: TcpListener, drain: Arc<Drain>, worker: Option<Rc<Worker>>) {
        accept_until(listener, &drain, "inbound plaintext", move |tcp, peer| {
            let (this, worker) = (self.clone(), worker.clone());
            async move {
                if let Err(e) = this.plaintext(tcp, peer, worker).await {
                    info!(%peer, error = %e, "inbound plaintext connection refused");
                }
            }
        })
        .await
    }

    /// One captured plaintext connection from `peer`; `Err` says why it was refused
    /// (and reset).
    pub async fn plaintext(&self, tcp: TcpStream, peer: SocketAddr, worker: Option<Rc<Worker>>) -> Result<(), String> {
        let local = tcp.local_addr().map_err(|e| format!("local address: {e}"))?;
        let target = match redirect_bpf::original_dst(&tcp, local) {
            Ok(d) if !same_address(d, local) => SocketAddr::new(d.ip().to_canonical(), d.port()),
            _ => return refuse(tcp, format!("{local} was dialed directly: only connections captured for a local workload are served here")),
        };
        let view = self.workloads.load();
        let Some(workload) = view.index.workload(&self.network, target.ip()).cloned() else {
            return refuse(tcp, format!("no workload has the address {} this connection was sent to", target.ip()));
        };
        drop(view);
        if target.port() == super::super::PORT || target.port() == local.port() {
            return refuse(tcp, format!("{target} is one of the proxy's own ports"));
        }
        if workload.waypoint.is_some() {
            return refuse(
                tcp,
                format!("{} is behind a waypoint, which node-proxy does not support: refused rather than passed around the waypoint's policy", workload.uid),
            );
        }
        let origin = Origin::plaintext(&self.workloads, &self.network, peer);
        if let Err(denied) = authorize(&self.workloads, &workload, None, origin.source_ip, target) {
            return refuse(tcp, format!("{target} ({}): plaintext denied by authorization policy: {denied:?}", workload.uid));
        }
        let inbound_listener = worker.as_ref().and_then(|w| w.shared.live.load().inbound_listener().cloned());
        if let (Some(worker), Some(listener)) = (worker, inbound_listener) {
            let (mark, timeout, telemetry) = (self.mark, self.connect_timeout, self.telemetry.clone());
            l7::Stream { worker, listener, workload, origin, target, mark, timeout, telemetry }.serve(tcp).await;
            return Ok(());
        }
        let start = (Instant::now(), SystemTime::now());
        let Ok(upstream) = open_upstream(&workload, target, self.mark, self.connect_timeout).await else {
            return refuse(tcp, format!("{target} ({}) did not accept the connection", workload.uid));
        };
        let upstream = Metered::new(upstream, self.telemetry.clone(), &workload, &origin, target, start);
        let (from_peer, to_peer) = crate::io::relay(Bytes::new(), tcp, tokio::io::split(upstream), None).await;
        debug!(%peer, %target, from_peer, to_peer, "inbound plaintext connection done");
        Ok(())
    }
}

/// Resets `tcp` (SO_LINGER 0: an RST, not a FIN the client could take for an answer).
fn refuse(tcp: TcpStream, why: String) -> Result<(), String> {
    let _ = tcp.set_zero_linger();
    drop(tcp);
    Err(why)
}
