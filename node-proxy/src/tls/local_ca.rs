//! The local mesh CA, for running without istiod: a self-signed ECDSA P-256 root like
//! Istio's own self-signed root (subject `O=<trust domain>`), or an operator's CA files,
//! issuing workload certificates shaped as istiod's: URI SAN only, digitalSignature and
//! keyEncipherment, serverAuth and clientAuth.
//!
//! Does not own: distributing the root to peers, or deciding where CA files live.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use istio_compat::model::workload::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Certified, TlsError};

/// How far in the past an issued certificate starts, so peers whose clocks run a little
/// behind accept it.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Lifetime of a generated root (Istio's self-signed root default: 10 years).
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A CA that signs workload certificates for one trust domain.
pub struct LocalCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    /// The signing CA certificate and any issuers up to (not including) the root, PEM;
    /// empty when the root signs directly.
    intermediates_pem: Vec<String>,
    root_der: CertificateDer<'static>,
    root_pem: String,
}

/// The PEM strings of an issued certificate, in the shape istiod's CA client returns
/// them. The key never appears in `Debug` output.
pub struct IssuedPem {
    pub key_pem: String,
    /// Leaf first.
    pub chain_pem: Vec<String>,
    pub roots_pem: Vec<String>,
}

impl fmt::Debug for IssuedPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedPem").field("chain_len", &self.chain_pem.len()).field("key_pem", &"<redacted>").finish()
    }
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa").field("trust_domain", &self.trust_domain).field("key", &"<redacted>").finish()
    }
}

impl LocalCa {
    /// A fresh self-signed root for `trust_domain` (ECDSA P-256, `O=<trust_domain>`).
    pub fn generate(trust_domain: &str) -> Result<Self, TlsError> {
        check_trust_domain(trust_domain)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        set_validity(&mut params, now - CLOCK_SKEW, now + ROOT_LIFETIME)?;
        let cert = params.self_signed(&key)?;
        Ok(LocalCa {
            trust_domain: trust_domain.to_string(),
            intermediates_pem: Vec::new(),
            root_der: cert.der().clone(),
            root_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An operator's CA, as Istio's plugged-in `cacerts` hold it, signing for
    /// `trust_domain`. `cert_pem_path` holds either one self-signed CA certificate, or a
    /// chain starting with the signing CA certificate and ending with the self-signed
    /// root (Istio's `cert-chain.pem`: `ca-cert.pem` then `root-cert.pem`); the
    /// certificates before the root are appended to every issued chain. `key_pem_path`
    /// holds the signing CA's PEM PKCS#8 private key. Errors name the file and what is
    /// wrong with it.
    pub fn load(trust_domain: &str, cert_pem_path: &Path, key_pem_path: &Path) -> Result<Self, TlsError> {
        check_trust_domain(trust_domain)?;
        let ca_file = |path: &Path, reason: String| TlsError::CaFile { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(cert_pem_path).map_err(|e| ca_file(cert_pem_path, format!("cannot read the CA certificate: {e}")))?;
        let key_pem = std::fs::read_to_string(key_pem_path).map_err(|e| ca_file(key_pem_path, format!("cannot read the CA private key: {e}")))?;

        let blocks = pem_certificate_blocks(&text);
        let mut ders = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.iter().enumerate() {
            let der = CertificateDer::from_pem_slice(block.as_bytes())
                .map_err(|e| ca_file(cert_pem_path, format!("certificate #{} is not valid PEM ({e})", i + 1)))?;
            ders.push(der);
        }
        let Some(signing_der) = ders.first() else {
            return Err(ca_file(cert_pem_path, "no PEM CERTIFICATE block".into()));
        };
        let (_, signing) = X509Certificate::from_der(signing_der).map_err(|e| ca_file(cert_pem_path, format!("not an X.509 certificate: {e}")))?;
        if !signing.is_ca() {
            return Err(ca_file(cert_pem_path, "the first certificate is not a CA (basicConstraints CA:TRUE is missing)".into()));
        }
        let root_index = blocks.len() - 1;
        if root_index > 0 {
            let (_, root) = X509Certificate::from_der(&ders[root_index])
                .map_err(|e| ca_file(cert_pem_path, format!("the last certificate is not an X.509 certificate: {e}")))?;
            if root.subject().as_raw() != root.issuer().as_raw() {
                return Err(ca_file(cert_pem_path, "a chain must end with the self-signed root certificate".into()));
            }
        }
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| ca_file(key_pem_path, format!("not a PEM PKCS#8 private key rcgen can sign with (ECDSA P-256/P-384, Ed25519, RSA): {e}")))?;
        if key.public_key_raw() != signing.public_key().subject_public_key.data.as_ref() {
            return Err(ca_file(key_pem_path, format!("the private key does not belong to the CA certificate {}", cert_pem_path.display())));
        }
        let issuer = Issuer::from_ca_cert_der(signing_der, key).map_err(|e| ca_file(cert_pem_path, format!("unusable as an issuer: {e}")))?;
        Ok(LocalCa {
            trust_domain: trust_domain.to_string(),
            issuer,
            intermediates_pem: blocks[..root_index].to_vec(),
            root_der: ders[root_index].clone(),
            root_pem: blocks[root_index].clone(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate in PEM: what peers must trust.
    pub fn root_pem(&self) -> String {
        self.root_pem.clone()
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root_der.clone()
    }

    /// A certificate for `identity` valid from a little before now for `validity`.
    pub fn issue(&self, identity: &Identity, validity: Duration) -> Result<Certified, TlsError> {
        let now = SystemTime::now();
        self.issue_with(identity, now - CLOCK_SKEW, now + validity)
    }

    /// A certificate for `identity` with exactly these validity bounds (tests use it for
    /// expired and not-yet-valid certificates).
    pub fn issue_with(&self, identity: &Identity, not_before: SystemTime, not_after: SystemTime) -> Result<Certified, TlsError> {
        let pem = self.issue_pem(identity, not_before, not_after)?;
        Certified::from_pem(identity.clone(), &pem.key_pem, &pem.chain_pem, &pem.roots_pem)
    }

    /// As [`LocalCa::issue_with`], but the PEM strings, as istiod's CA would return them.
    pub fn issue_pem(&self, identity: &Identity, not_before: SystemTime, not_after: SystemTime) -> Result<IssuedPem, TlsError> {
        if *identity.trust_domain != *self.trust_domain {
            return Err(TlsError::CaTrustDomain { ca: self.trust_domain.clone(), identity: identity.clone() });
        }
        if not_after <= not_before {
            return Err(TlsError::Validity(format!(
                "not_after {} is not after not_before {}",
                httpdate::fmt_http_date(not_after),
                httpdate::fmt_http_date(not_before)
            )));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        // Istio's workload certificates have an empty subject; the SAN is then critical.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, not_before, not_after)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain_pem = std::iter::once(cert.pem()).chain(self.intermediates_pem.iter().cloned()).collect();
        Ok(IssuedPem { key_pem: key.serialize_pem(), chain_pem, roots_pem: vec![self.root_pem()] })
    }

    /// Writes the CA certificate and private key as PEM (the key file with mode 0600), in
    /// the form [`LocalCa::load`] reads, so a generated CA can survive a restart.
    pub fn write_files(&self, cert_pem_path: &Path, key_pem_path: &Path) -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let ca_file = |path: &Path, e: std::io::Error| TlsError::CaFile { path: path.to_path_buf(), reason: format!("cannot write: {e}") };
        let chain: String = self.intermediates_pem.iter().chain([&self.root_pem]).map(String::as_str).collect();
        std::fs::write(cert_pem_path, chain).map_err(|e| ca_file(cert_pem_path, e))?;
        let mut key_file =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(key_pem_path).map_err(|e| ca_file(key_pem_path, e))?;
        key_file.write_all(self.issuer.key().serialize_pem().as_bytes()).map_err(|e| ca_file(key_pem_path, e))
    }

    /// Signs arbitrary parameters with a fresh P-256 key (tests of malformed peers).
    #[cfg(test)]
    pub(crate) fn sign_raw(&self, params: &CertificateParams) -> Result<IssuedPem, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedPem { key_pem: key.serialize_pem(), chain_pem: vec![cert.pem()], roots_pem: vec![self.root_pem()] })
    }

    /// A different self-signed root for the same trust domain, which peers of this CA do
    /// not trust (tests of untrusted chains).
    pub fn untrusted_twin(&self) -> Result<LocalCa, TlsError> {
        LocalCa::generate(&self.trust_domain)
    }
}

/// The `CERTIFICATE` PEM blocks of a file, each with its BEGIN/END lines and a final newline.
fn pem_certificate_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            // Unterminated: let the PEM parser report it.
            blocks.push(rest[start..].to_string());
            break;
        };
        let end = start + len + END.len();
        blocks.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    blocks
}

fn check_trust_domain(trust_domain: &str) -> Result<(), TlsError> {
    if trust_domain.is_empty() || trust_domain.contains(['/', ':']) {
        return Err(TlsError::TrustDomain(trust_domain.to_string()));
    }
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

/// Sets the validity bounds (whole seconds, as X.509 encodes them).
fn set_validity(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) -> Result<(), TlsError> {
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_err(|_| TlsError::Validity("a time before 1970".into()));
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(since_epoch(not_before)?.as_secs());
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(since_epoch(not_after)?.as_secs());
    Ok(())
}
