//! Test certificates: a root CA that issues server certificates (rcgen, ECDSA P-256),
//! as Istio's root issues istiod's serving certificate.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::ads_server::TlsIdentity;

/// A self-signed root.
pub struct TestCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate the test CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("test CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        let cert = params.self_signed(&key).expect("self-sign the test CA");
        TestCa { cert_pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// The root certificate (PEM), what a client trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `dns_names`, signed by this root.
    pub fn server_identity(&self, dns_names: &[&str]) -> TlsIdentity {
        let key = KeyPair::generate().expect("generate a server key");
        let params = CertificateParams::new(dns_names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("server certificate parameters");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the server certificate");
        TlsIdentity { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}
