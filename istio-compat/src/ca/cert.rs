//! A workload certificate as istiod's CA returns it, checked: the CSR we send, the
//! split of the response into leaf, intermediates and roots, and the checks on the
//! leaf (the requested SPIFFE identity as its only URI SAN, our public key, a chain
//! that verifies up to one of the roots).
//!
//! Which part of `cert_chain` is the root: the leaf is the first element; the roots
//! are the self-signed certificates at the end. Current istiod sends one certificate
//! per element (it expands concatenated PEMs "as ztunnel expects"), so a root bundle
//! being rotated arrives as several trailing self-signed elements; older istiod
//! concatenates the roots into the last element, which we split. When the last
//! certificate is not self-signed we still trust the last element, as ztunnel does
//! (with a warning). Elements in between are intermediates. When istiod fills the
//! newer `root_cert` field, that is the bundle and `cert_chain` holds only the leaf
//! and intermediates.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::proto::IstioCertificateResponse;
use super::CaError;
use crate::model::workload::Identity;

/// A certificate for one workload identity, with its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkloadCert {
    pub identity: Identity,
    /// PKCS#8 PEM of the ECDSA P-256 key generated for this certificate.
    pub key_pem: String,
    /// One PEM certificate per element: the leaf first, then intermediates.
    pub chain_pem: Vec<String>,
    /// One PEM certificate per element: the trust bundle (istiod's roots).
    pub roots_pem: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadCert {
    /// When to fetch a new certificate: half-way through the validity, as ztunnel and
    /// istio-agent do. A certificate whose validity is inverted refreshes at once
    /// (`not_after`).
    pub fn refresh_at(&self) -> SystemTime {
        match self.not_after.duration_since(self.not_before) {
            Ok(valid_for) => self.not_before + valid_for / 2,
            Err(_) => self.not_after,
        }
    }

    /// True from `not_after` on.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// The leaf certificate (PEM).
    pub fn leaf_pem(&self) -> &str {
        self.chain_pem.first().map(String::as_str).unwrap_or_default()
    }
}

/// Key material stays out of logs.
impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("identity", &self.identity.to_string())
            .field("key_pem", &"<redacted>")
            .field("chain_len", &self.chain_pem.len())
            .field("roots_len", &self.roots_pem.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A fresh key and the CSR for `identity`.
pub(crate) struct CertRequest {
    pub key_pem: String,
    /// The raw public key (the EC point), as in the certificate's SubjectPublicKeyInfo.
    pub public_key_raw: Vec<u8>,
    pub csr_pem: String,
}

/// An ECDSA P-256 key and a CSR whose only SAN is the identity's URI and whose
/// subject is empty (as ztunnel's: istiod ignores the subject, and rcgen would
/// otherwise put a placeholder common name there).
pub(crate) fn certificate_request(identity: &Identity) -> Result<CertRequest, CaError> {
    let csr_err = |e: rcgen::Error| CaError::Csr { identity: identity.to_string(), reason: e.to_string() };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(csr_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = identity.to_string().try_into().map_err(csr_err)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr_pem = params.serialize_request(&key).map_err(csr_err)?.pem().map_err(csr_err)?;
    Ok(CertRequest { key_pem: key.serialize_pem(), public_key_raw: key.public_key_raw().to_vec(), csr_pem })
}

/// Checks istiod's answer to `request` for `identity` and builds the certificate.
pub(crate) fn from_response(identity: &Identity, request: CertRequest, response: IstioCertificateResponse) -> Result<WorkloadCert, CaError> {
    let bundle = response.root_cert.map(|r| r.ca_cert).unwrap_or_default();
    let (chain_pem, roots_pem) = split_chain(&response.cert_chain, &bundle)?;

    let chain_der = chain_pem.iter().enumerate().map(|(i, pem)| der_of(pem, i)).collect::<Result<Vec<_>, _>>()?;
    let roots_der = roots_pem.iter().enumerate().map(|(i, pem)| der_of(pem, chain_pem.len() + i)).collect::<Result<Vec<_>, _>>()?;
    let chain = chain_der.iter().enumerate().map(|(i, der)| parse_der(der, i)).collect::<Result<Vec<_>, _>>()?;
    let roots = roots_der.iter().enumerate().map(|(i, der)| parse_der(der, chain_pem.len() + i)).collect::<Result<Vec<_>, _>>()?;
    let Some(leaf) = chain.first() else {
        return Err(CaError::EmptyResponse);
    };

    let requested = identity.to_string();
    let got = uri_sans(leaf);
    if got.len() != 1 || got[0] != requested {
        return Err(CaError::SanMismatch { requested, got });
    }
    if leaf.public_key().subject_public_key.data.as_ref() != request.public_key_raw.as_slice() {
        return Err(CaError::KeyMismatch { identity: requested });
    }
    verify_chain(&chain, &roots).map_err(|reason| CaError::UntrustedChain { identity: requested.clone(), reason })?;

    let validity = leaf.validity();
    let not_before = system_time(validity.not_before.timestamp());
    let not_after = system_time(validity.not_after.timestamp());
    Ok(WorkloadCert { identity: identity.clone(), key_pem: request.key_pem, chain_pem, roots_pem, not_before, not_after })
}

/// Splits `cert_chain` (and the optional separate root bundle) into the chain (leaf
/// first, then intermediates) and the roots, one certificate per element.
pub fn split_chain(cert_chain: &[String], root_bundle: &[String]) -> Result<(Vec<String>, Vec<String>), CaError> {
    let Some((leaf, rest)) = cert_chain.split_first() else {
        return Err(CaError::EmptyResponse);
    };
    let mut chain = pem_blocks(leaf);
    if chain.len() != 1 {
        return Err(CaError::BadResponse { reason: format!("the first element of cert_chain holds {} certificates, expected the leaf alone", chain.len()) });
    }
    let mut roots = if !root_bundle.is_empty() {
        chain.extend(rest.iter().flat_map(|e| pem_blocks(e)));
        root_bundle.iter().flat_map(|e| pem_blocks(e)).collect::<Vec<_>>()
    } else {
        let Some((last, _)) = rest.split_last() else {
            return Err(CaError::BadResponse { reason: "cert_chain holds only the leaf, no root certificate: the trust bundle cannot be built".into() });
        };
        // One certificate per element after the leaf (istiod expands concatenated PEMs).
        let blocks: Vec<String> = rest.iter().flat_map(|e| pem_blocks(e)).collect();
        let mut self_signed = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.iter().enumerate() {
            let der = der_of(block, 1 + i)?;
            self_signed.push(is_self_signed(&parse_der(&der, 1 + i)?));
        }
        let trailing_roots = self_signed.iter().rev().take_while(|s| **s).count();
        let root_count = if trailing_roots > 0 {
            trailing_roots
        } else {
            // ztunnel trusts the last element whatever it is; so do we, but say so.
            tracing::warn!("the last certificate of istiod's response is not self-signed; trusting it as the root, as ztunnel does");
            pem_blocks(last).len()
        };
        let split = blocks.len().saturating_sub(root_count);
        chain.extend(blocks[..split].iter().cloned());
        blocks[split..].to_vec()
    };
    // istiod may send a root twice (once from its cert chain, once as its root).
    let mut seen = std::collections::HashSet::new();
    roots.retain(|r| seen.insert(r.split_whitespace().collect::<String>()));
    if roots.is_empty() {
        return Err(CaError::BadResponse { reason: "the root bundle holds no PEM certificate".into() });
    }
    Ok((chain, roots))
}

fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok()
}

/// The `-----BEGIN CERTIFICATE-----` … `-----END CERTIFICATE-----` blocks of `text`.
pub(crate) fn pem_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        let Some(end) = after.find(END) else { break };
        let block = &after[..end + END.len()];
        out.push(format!("{block}\n"));
        rest = &after[end + END.len()..];
    }
    out
}

/// The DER of a PEM certificate (checked to parse as X.509).
fn der_of(pem: &str, index: usize) -> Result<Vec<u8>, CaError> {
    let bad = |reason: String| CaError::BadCertificate { index, reason };
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad(format!("not PEM: {e}")))?;
    block.parse_x509().map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    Ok(block.contents)
}

fn parse_der(der: &[u8], index: usize) -> Result<X509Certificate<'_>, CaError> {
    x509_parser::parse_x509_certificate(der).map(|(_, c)| c).map_err(|e| CaError::BadCertificate { index, reason: format!("not an X.509 certificate: {e}") })
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(uri) => Some((*uri).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Each certificate of `chain` is signed by the next one; the last by one of `roots`.
fn verify_chain(chain: &[X509Certificate<'_>], roots: &[X509Certificate<'_>]) -> Result<(), String> {
    for pair in chain.windows(2) {
        let (child, parent) = (&pair[0], &pair[1]);
        child.verify_signature(Some(parent.public_key())).map_err(|e| {
            format!("certificate {:?} is not signed by the next one in the chain, {:?}: {e}", child.subject().to_string(), parent.subject().to_string())
        })?;
    }
    let Some(top) = chain.last() else { return Err("empty chain".into()) };
    if roots.iter().any(|r| top.verify_signature(Some(r.public_key())).is_ok()) {
        Ok(())
    } else {
        Err(format!("issuer {:?} of the chain is signed by none of the {} root(s) in istiod's response", top.issuer().to_string(), roots.len()))
    }
}

fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs())).unwrap_or(UNIX_EPOCH)
    }
}
