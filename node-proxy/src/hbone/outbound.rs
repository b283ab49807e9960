//! The outbound end of HBONE as the data path uses it: for a planned [`Tunnel`],
//! a `CONNECT` stream on a pooled mTLS connection that presents the source
//! workload's certificate and accepts only the destination's identities.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use istio_compat::model::workload::Identity;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::client::{Pool, PoolKey};
use super::plan::Tunnel;
use super::{ConfigCache, H2Stream, HboneError};
use crate::identity::CertStore;
use crate::tls::{self, Certified, TrustDomains};
use crate::upstream::pool::connect_marked;

/// Opens HBONE streams for this node's workloads.
pub struct Outbound {
    pool: Pool,
    certs: Arc<CertStore>,
    trust: TrustDomains,
    /// SO_MARK on the TCP connections to peers (never redirected back to the proxy).
    mark: Option<u32>,
    /// The cluster named in the `baggage` header when the workload does not say.
    cluster: String,
    pub connect_timeout: Duration,
    pub cert_wait: Duration,
    /// Client configs per (source identity, accepted identities).
    configs: ConfigCache<(Identity, Vec<Identity>), rustls::ClientConfig>,
}

impl Outbound {
    /// Must be called inside a tokio runtime (the pool's sweeper).
    pub fn new(certs: Arc<CertStore>, trust: TrustDomains, mark: Option<u32>, cluster: String) -> Outbound {
        Outbound {
            pool: Pool::default(),
            certs,
            trust,
            mark,
            cluster,
            connect_timeout: Duration::from_secs(10),
            cert_wait: Duration::from_secs(10),
            configs: ConfigCache::default(),
        }
    }

    /// A stream to `tunnel.target` for a connection from `source_ip`, with `traceparent`.
    pub async fn connect(&self, tunnel: &Tunnel, source_ip: IpAddr, traceparent: Option<String>) -> Result<H2Stream, HboneError> {
        let source = &tunnel.source.identity;
        let cert = self
            .certs
            .certificate(source, self.cert_wait)
            .await
            .map_err(|e| HboneError::Dial { peer: tunnel.gateway.to_string(), source: io::Error::new(io::ErrorKind::NotFound, e.to_string()) })?;
        let config = self
            .client_config(&cert, &tunnel.identities)
            .map_err(|e| HboneError::Dial { peer: tunnel.gateway.to_string(), source: io::Error::new(io::ErrorKind::InvalidInput, e) })?;
        let key = PoolKey { source: source.clone(), destination: tunnel.identities.clone(), address: tunnel.gateway };
        let headers = tunnel.headers(source_ip, &self.cluster, traceparent);
        let (gateway, mark, timeout) = (tunnel.gateway, self.mark, self.connect_timeout);
        let dial = move || async move {
            let tcp = tokio::time::timeout(timeout, connect_marked(gateway, mark))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {gateway} timed out after {timeout:?}")))??;
            let name = ServerName::try_from("hbone").map_err(io::Error::other)?;
            TlsConnector::from(config).connect(name, tcp).await
        };
        self.pool.connect(&key, tunnel.target, &headers, dial).await
    }

    /// Open pooled connections.
    pub fn connections(&self) -> usize {
        self.pool.connections()
    }

    fn client_config(&self, cert: &Arc<Certified>, expected: &[Identity]) -> Result<Arc<rustls::ClientConfig>, String> {
        self.configs.get_or_build((cert.identity().clone(), expected.to_vec()), cert, || {
            tls::client_config(cert, cert.roots(), &self.trust, expected.to_vec()).map_err(|e| format!("TLS client config for {}: {e}", cert.identity()))
        })
    }
}
