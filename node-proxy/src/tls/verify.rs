//! SPIFFE peer verification for HBONE mTLS, on both sides of the handshake.
//!
//! A peer is accepted when (a) its chain verifies against the mesh roots with webpki
//! (signatures, validity period, serverAuth/clientAuth usage), (b) its leaf carries
//! exactly one SPIFFE URI SAN, (c) that identity's trust domain is the local one or one
//! of its aliases (Istio MeshConfig `trustDomainAliases`), and, on the client side only,
//! (d) the identity is one of those expected for the destination. DNS names are never
//! checked.
//!
//! Every refusal is a [`Rejection`], logged with `warn!` and carried in the rustls error
//! so the handshake fails with the matching alert: `certificate_expired` for the
//! validity period, `unknown_ca` for the chain, `certificate_unknown` for identity
//! refusals (whose [`Rejection`] rides in [`rustls::CertificateError::Other`]).
//! [`Rejection::from_io`] reads it back from a failed tokio-rustls handshake.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use istio_compat::model::workload::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use super::{cert, provider, TlsError};

/// The trust domains whose identities this proxy accepts: its own and its aliases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustDomains {
    local: String,
    aliases: Vec<String>,
}

impl TrustDomains {
    pub fn new(local: impl Into<String>, aliases: impl IntoIterator<Item = impl Into<String>>) -> Self {
        TrustDomains { local: local.into(), aliases: aliases.into_iter().map(Into::into).collect() }
    }

    /// Only `local`, no aliases.
    pub fn local(local: impl Into<String>) -> Self {
        TrustDomains { local: local.into(), aliases: Vec::new() }
    }

    pub fn local_domain(&self) -> &str {
        &self.local
    }

    pub fn aliases(&self) -> &[String] {
        &self.aliases
    }

    pub fn contains(&self, trust_domain: &str) -> bool {
        self.local == trust_domain || self.aliases.iter().any(|a| a == trust_domain)
    }
}

/// Why a peer's certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("peer {got} is in trust domain {}, not {expected} (or its aliases)", got.trust_domain)]
    WrongTrustDomain { got: Identity, expected: String },
    #[error("peer certificate chain does not lead to a trusted mesh root or has a bad signature; check that both sides trust the same mesh CA")]
    UntrustedChain,
    #[error("peer certificate expired at {}", http_date(*not_after))]
    Expired { not_after: SystemTime },
    #[error("peer certificate is not valid before {}; check the clocks of both nodes", http_date(*not_before))]
    NotYetValid { not_before: SystemTime },
    #[error("peer {got} is not the expected identity ({})", display_list(expected))]
    SanMismatch { got: Identity, expected: Vec<Identity> },
    #[error("peer certificate carries no SPIFFE identity (exactly one URI SAN spiffe://<trust domain>/ns/<namespace>/sa/<service account>)")]
    NoSpiffeId,
}

impl Rejection {
    /// The rustls error that fails the handshake with the matching alert.
    pub fn to_rustls(&self, now: UnixTime) -> rustls::Error {
        let cert_error = match self {
            Rejection::Expired { not_after } => CertificateError::ExpiredContext { time: now, not_after: to_unix(*not_after) },
            Rejection::NotYetValid { not_before } => CertificateError::NotValidYetContext { time: now, not_before: to_unix(*not_before) },
            Rejection::UntrustedChain => CertificateError::UnknownIssuer,
            Rejection::WrongTrustDomain { .. } | Rejection::SanMismatch { .. } | Rejection::NoSpiffeId => {
                CertificateError::Other(OtherError(Arc::new(self.clone())))
            }
        };
        rustls::Error::InvalidCertificate(cert_error)
    }

    /// The rejection behind a rustls error produced by these verifiers, if it is one.
    pub fn from_rustls(error: &rustls::Error) -> Option<Rejection> {
        let rustls::Error::InvalidCertificate(cert_error) = error else {
            return None;
        };
        match cert_error {
            CertificateError::ExpiredContext { not_after, .. } => Some(Rejection::Expired { not_after: from_unix(*not_after) }),
            CertificateError::NotValidYetContext { not_before, .. } => Some(Rejection::NotYetValid { not_before: from_unix(*not_before) }),
            CertificateError::UnknownIssuer => Some(Rejection::UntrustedChain),
            CertificateError::Other(OtherError(inner)) => inner.downcast_ref::<Rejection>().cloned(),
            _ => None,
        }
    }

    /// The rejection behind a failed tokio-rustls handshake (an `io::Error` wrapping the
    /// rustls error), if this side's verifier refused the peer.
    pub fn from_io(error: &std::io::Error) -> Option<Rejection> {
        Rejection::from_rustls(error.get_ref()?.downcast_ref::<rustls::Error>()?)
    }
}

/// The checks both sides share: chain, SPIFFE ID, trust domain.
#[derive(Debug)]
struct PeerCheck {
    anchors: Vec<TrustAnchor<'static>>,
    subjects: Vec<DistinguishedName>,
    trust: TrustDomains,
}

impl PeerCheck {
    fn new(roots: &[CertificateDer<'static>], trust: TrustDomains) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let anchors = roots
            .iter()
            .map(|root| {
                webpki::anchor_from_trusted_cert(root)
                    .map(|a| a.to_owned())
                    .map_err(|e| TlsError::BadCertificate { what: "a mesh root certificate", reason: format!("{e:?}") })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let subjects = anchors.iter().map(|a| DistinguishedName::from(a.subject.as_ref().to_vec())).collect();
        Ok(PeerCheck { anchors, subjects, trust })
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<Identity, Rejection> {
        let leaf = webpki::EndEntityCert::try_from(end_entity).map_err(|e| {
            tracing::debug!(error = ?e, "peer leaf certificate does not parse");
            Rejection::UntrustedChain
        })?;
        leaf.verify_for_usage(provider().signature_verification_algorithms.all, &self.anchors, intermediates, now, usage, None, None).map_err(|e| match e {
            webpki::Error::CertExpired { not_after, .. } => Rejection::Expired { not_after: from_unix(not_after) },
            webpki::Error::CertNotValidYet { not_before, .. } => Rejection::NotYetValid { not_before: from_unix(not_before) },
            other => {
                tracing::debug!(error = ?other, "peer certificate chain verification failed");
                Rejection::UntrustedChain
            }
        })?;
        let identity = match cert::spiffe_id(end_entity) {
            Ok(Some(identity)) => identity,
            Ok(None) => return Err(Rejection::NoSpiffeId),
            Err(e) => {
                tracing::debug!(error = %e, "peer leaf certificate extensions do not parse");
                return Err(Rejection::NoSpiffeId);
            }
        };
        if !self.trust.contains(&identity.trust_domain) {
            return Err(Rejection::WrongTrustDomain { got: identity, expected: self.trust.local.clone() });
        }
        Ok(identity)
    }
}

fn reject(side: &'static str, rejection: Rejection, now: UnixTime) -> rustls::Error {
    tracing::warn!(side, "mTLS rejected: {rejection}");
    rejection.to_rustls(now)
}

/// The client side's verifier of the server (an HBONE destination node proxy).
#[derive(Debug)]
pub struct ServerIdentityVerifier {
    check: PeerCheck,
    expected: Vec<Identity>,
}

impl ServerIdentityVerifier {
    /// `expected` must not be empty: the destination workload's identity, or the
    /// service's SAN list.
    pub fn new(roots: &[CertificateDer<'static>], trust: TrustDomains, expected: Vec<Identity>) -> Result<Self, TlsError> {
        if expected.is_empty() {
            return Err(TlsError::NoExpectedIdentity);
        }
        Ok(ServerIdentityVerifier { check: PeerCheck::new(roots, trust)?, expected })
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let identity = self.check.check(end_entity, intermediates, now, webpki::KeyUsage::server_auth()).map_err(|r| reject("outbound", r, now))?;
        if !self.expected.contains(&identity) {
            return Err(reject("outbound", Rejection::SanMismatch { got: identity, expected: self.expected.clone() }, now));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        handshake_signature::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        handshake_signature::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        handshake_signature::schemes()
    }
}

/// The server side's verifier of the client (an HBONE source node proxy). A client
/// certificate is mandatory.
#[derive(Debug)]
pub struct ClientIdentityVerifier {
    check: PeerCheck,
}

impl ClientIdentityVerifier {
    pub fn new(roots: &[CertificateDer<'static>], trust: TrustDomains) -> Result<Self, TlsError> {
        Ok(ClientIdentityVerifier { check: PeerCheck::new(roots, trust)? })
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.check.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check.check(end_entity, intermediates, now, webpki::KeyUsage::client_auth()).map_err(|r| reject("inbound", r, now))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        handshake_signature::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        handshake_signature::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        handshake_signature::schemes()
    }
}

fn to_unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

fn from_unix(t: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.as_secs())
}

fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

fn display_list(ids: &[Identity]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The handshake signature checks both verifiers delegate to the ring provider.
mod handshake_signature {
    use super::provider;
    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::CertificateDer;

    pub(super) fn tls12(message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    pub(super) fn tls13(message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    pub(super) fn schemes() -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
