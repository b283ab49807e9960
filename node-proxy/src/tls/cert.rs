//! A workload's certificate as the node proxy holds it: identity, chain, key, roots and
//! validity, checked once when it arrives (from istiod's CA or the [`LocalCa`]).
//!
//! [`LocalCa`]: super::LocalCa

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use istio_compat::model::workload::Identity;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{provider, TlsError};

/// A workload certificate whose leaf carries exactly the workload's SPIFFE identity and
/// whose private key matches the leaf. The key never appears in `Debug` output.
pub struct Certified {
    identity: Identity,
    /// Leaf first, then intermediates, as presented in the handshake.
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
    certified_key: Arc<CertifiedKey>,
}

impl Certified {
    /// Checks and takes the PEM strings a CA returns: the private key, the chain leaf
    /// first, the root bundle. Rejects a leaf whose URI SAN is not exactly `identity`
    /// and a key that does not match the leaf. An expired certificate is accepted here
    /// (see [`Certified::is_expired`]); peers will reject it.
    pub fn from_pem(identity: Identity, key_pem: &str, chain_pem: &[String], roots_pem: &[String]) -> Result<Self, TlsError> {
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Pem { what: "workload private key", reason: format!("no usable PEM private key ({e})") })?;
        let chain = parse_certs("workload certificate chain", chain_pem)?;
        let roots = parse_certs("mesh root certificates", roots_pem)?;
        let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }

        let (not_before, not_after) = {
            let (_, x509) = X509Certificate::from_der(leaf).map_err(|e| TlsError::BadCertificate { what: "the leaf certificate", reason: e.to_string() })?;
            let validity = x509.validity();
            (unix_to_system(validity.not_before.timestamp()), unix_to_system(validity.not_after.timestamp()))
        };
        let found = uri_sans(leaf).map_err(|reason| TlsError::BadCertificate { what: "the leaf certificate", reason })?;
        if found.len() != 1 || Identity::parse(&found[0]).as_ref() != Some(&identity) {
            return Err(TlsError::IdentityMismatch { expected: identity, found });
        }

        let signing_key =
            provider().key_provider.load_private_key(key.clone_key()).map_err(|source| TlsError::UnusableKey { identity: identity.clone(), source })?;
        let certified_key = CertifiedKey::new(chain.clone(), signing_key);
        if let Err(source) = certified_key.keys_match() {
            return Err(match source {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => TlsError::KeyMismatch { identity },
                source => TlsError::UnusableKey { identity, source },
            });
        }

        Ok(Certified { identity, chain, key, roots, not_before, not_after, certified_key: Arc::new(certified_key) })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key. Do not log it.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The rustls signing form of chain and key (checked to match).
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The mesh roots the CA returned with this certificate.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// When to fetch a new certificate received at `received`: half of the validity
    /// left then, as istio-agent rotates (SECRET_GRACE_PERIOD_RATIO 0.5) — counted from
    /// receipt, not from a `not_before` the CA backdated for clock skew.
    pub fn refresh_at(&self, received: SystemTime) -> SystemTime {
        let from = received.max(self.not_before);
        from + self.not_after.duration_since(from).unwrap_or(Duration::ZERO) / 2
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

impl Clone for Certified {
    fn clone(&self) -> Self {
        Certified {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            certified_key: self.certified_key.clone(),
        }
    }
}

impl fmt::Debug for Certified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certified")
            .field("identity", &self.identity.to_string())
            .field("chain_len", &self.chain.len())
            .field("roots_len", &self.roots.len())
            .field("not_before", &httpdate::fmt_http_date(self.not_before))
            .field("not_after", &httpdate::fmt_http_date(self.not_after))
            .field("key", &"<redacted>")
            .finish()
    }
}

fn parse_certs(what: &'static str, pems: &[String]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for pem in pems {
        let before = out.len();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            out.push(cert.map_err(|e| TlsError::Pem { what, reason: format!("bad PEM certificate ({e})") })?);
        }
        if out.len() == before {
            return Err(TlsError::Pem { what, reason: "an entry holds no PEM CERTIFICATE block".into() });
        }
    }
    Ok(out)
}

pub(crate) fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Every URI SAN of a certificate, in order.
pub(crate) fn uri_sans(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, x509) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let san = x509.subject_alternative_name().map_err(|e| e.to_string())?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(uri.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The certificate's SPIFFE identity: its only URI SAN, which must be
/// `spiffe://<td>/ns/<ns>/sa/<sa>` (an X.509-SVID has exactly one URI SAN).
pub(crate) fn spiffe_id(der: &CertificateDer<'_>) -> Result<Option<Identity>, String> {
    let uris = uri_sans(der)?;
    Ok(match uris.as_slice() {
        [uri] => Identity::parse(uri),
        _ => None,
    })
}

/// What `x-forwarded-client-cert` says of a peer certificate (Envoy's
/// `sha256PeerCertificateDigest`, `subjectPeerCertificate`, `dnsSansPeerCertificate`):
/// the SHA-256 of its DER (lower-case hex), its subject (RFC 4514 form; Istio's
/// workload certificates have an empty one) and its DNS SANs.
pub(crate) fn xfcc_facts(der: &CertificateDer<'_>) -> Result<(String, String, Vec<String>), String> {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    let hash = digest.as_ref().iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    let (_, x509) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let subject = x509.subject().to_string();
    let dns = match x509.subject_alternative_name().map_err(|e| e.to_string())? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    Ok((hash, subject, dns))
}
