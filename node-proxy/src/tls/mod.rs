//! Workload mTLS for HBONE: the rustls configurations a node proxy uses when it speaks
//! for one of its workloads, as Istio's ztunnel does.
//!
//! Owns: the workload certificate ([`Certified`]), the local self-signed mesh CA used
//! without istiod ([`LocalCa`]), SPIFFE peer verification ([`verify`]) and the
//! TLS 1.3-only server/client configurations with ALPN `h2` ([`server_config`],
//! [`client_config`]), plus reading the verified peer identity back ([`peer_identity`]).
//!
//! Does not own: fetching certificates from istiod (istio-compat's CA client returns the
//! PEM strings that [`Certified::from_pem`] takes), rotation scheduling (callers use
//! [`Certified::refresh_at`]), the HBONE CONNECT layer, or PeerAuthentication /
//! AuthorizationPolicy decisions, which run on the identity this module verified.
//!
//! All cryptography goes through rustls' `ring` provider, passed explicitly; this module
//! never installs or relies on a process-default provider. Peers are identified by their
//! SPIFFE URI SAN only; DNS names are never checked.

pub mod cert;
pub mod local_ca;
pub mod pqc;
pub mod verify;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use istio_compat::model::workload::Identity;
use rustls::crypto::CryptoProvider;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, CommonState, ServerConfig};
use rustls_pki_types::CertificateDer;

pub use cert::Certified;
pub use local_ca::{IssuedPem, LocalCa};
pub use verify::{ClientIdentityVerifier, Rejection, ServerIdentityVerifier, TrustDomains};

/// The only ALPN protocol HBONE speaks: HTTP/2 (CONNECT) inside the mTLS tunnel.
pub const ALPN_H2: &[u8] = b"h2";

/// What can go wrong building certificates, the local CA or the TLS configurations.
/// Peer verification failures during a handshake are [`Rejection`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("the workload certificate chain is empty; the CA must return at least the leaf certificate")]
    NoCertificate,
    #[error("no mesh root certificates: peers cannot be verified without the CA's root (check the CA's root-cert bundle)")]
    NoRoots,
    #[error("{what} is not a valid X.509 certificate: {reason}")]
    BadCertificate { what: &'static str, reason: String },
    #[error("the leaf certificate's URI SANs are {found:?}, expected exactly the SPIFFE identity {expected}")]
    IdentityMismatch { expected: Identity, found: Vec<String> },
    #[error("the private key does not match the public key of the leaf certificate for {identity}")]
    KeyMismatch { identity: Identity },
    #[error("the private key for {identity} cannot be used: {source}")]
    UnusableKey { identity: Identity, source: rustls::Error },
    #[error("{}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("the mesh CA is for trust domain {ca}; it cannot issue a certificate for {identity}")]
    CaTrustDomain { ca: String, identity: Identity },
    #[error("{0:?} is not a trust domain (a name such as cluster.local)")]
    TrustDomain(String),
    #[error("invalid certificate validity: {0}")]
    Validity(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("a client configuration needs at least one expected server identity (the destination workload's, or the service's SAN list)")]
    NoExpectedIdentity,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ring provider restricted as ztunnel restricts it: TLS 1.3 AES-GCM suites only
/// (no ChaCha20, nothing TLS 1.2); ring's default key exchange groups (X25519, P-256,
/// P-384), then X25519MLKEM768 ([`pqc`]) for peers that insist on it (ztunnel's
/// `COMPLIANCE_POLICY=pqc`). Last, so other handshakes are as before: a client sends
/// an X25519 key share (a PQC-only server asks again for X25519MLKEM768), a server
/// prefers X25519 when both are offered.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let ring = rustls::crypto::ring::default_provider();
            let mut kx_groups = ring.kx_groups.clone();
            kx_groups.push(pqc::X25519MLKEM768);
            Arc::new(CryptoProvider {
                cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384, rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
                kx_groups,
                ..ring
            })
        })
        .clone()
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The HBONE server side (port 15008) for the local workload `cert`: TLS 1.3 only,
/// ALPN `h2`, a client certificate is required and must chain to `roots` and carry a
/// SPIFFE identity in `trust`'s domains. Read the peer back with [`peer_identity`].
pub fn server_config(cert: &Certified, roots: &[CertificateDer<'static>], trust: &TrustDomains) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = ClientIdentityVerifier::new(roots, trust.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS13_ONLY)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(cert.certified_key().clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The HBONE client side acting for the local workload `cert`: TLS 1.3 only, ALPN `h2`,
/// presents `cert`, and accepts a server only if its chain verifies against `roots`,
/// its trust domain is in `trust`, and its identity is one of `expected` (non-empty).
///
/// The server name given to the connector is ignored: verification is SPIFFE-only.
pub fn client_config(
    cert: &Certified,
    roots: &[CertificateDer<'static>],
    trust: &TrustDomains,
    expected: Vec<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = ServerIdentityVerifier::new(roots, trust.clone(), expected)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS13_ONLY)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(cert.certified_key().clone())));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // As ztunnel: no SNI (the name means nothing here), and no session resumption, so
    // every connection's peer goes through the SPIFFE verifier.
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The SPIFFE identity of the peer's leaf certificate, once the handshake has verified it.
/// `None` before the handshake completes or when the peer sent no certificate.
pub fn peer_identity(conn: &CommonState) -> Option<Identity> {
    if conn.is_handshaking() {
        return None;
    }
    let leaf = conn.peer_certificates()?.first()?;
    cert::spiffe_id(leaf).ok()?
}
