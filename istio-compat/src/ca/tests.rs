//! Unit tests of the CA client's pure parts: the CSR, the split of istiod's answer,
//! the checks on the leaf, refresh timing. The gRPC path is tested end to end in
//! `tests/tests/ca_client.rs` against a real TLS gRPC server.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer, KeyPair, SanType};
use x509_parser::prelude::*;

use super::cert::{certificate_request, from_response};
use super::proto::{IstioCertificateResponse, Roots};
use super::*;
use crate::model::workload::Identity;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn root(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("self-sign");
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("sign intermediate");
        Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// Signs a CSR as istiod would, optionally replacing its SAN.
    fn sign(&self, csr_pem: &str, san: Option<&str>) -> String {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).expect("parse CSR");
        csr.params.not_before = date_time_ymd(2030, 1, 1);
        csr.params.not_after = date_time_ymd(2030, 1, 3);
        if let Some(san) = san {
            csr.params.subject_alt_names = vec![SanType::URI(san.try_into().expect("ia5"))];
        }
        csr.signed_by(&self.issuer).expect("sign leaf").pem()
    }
}

fn id() -> Identity {
    Identity::new("cluster.local", "shop", "cart")
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("after epoch").as_secs()
}

fn cert_with(not_before: u64, not_after: u64) -> WorkloadCert {
    WorkloadCert {
        identity: id(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n".into(),
        chain_pem: vec![],
        roots_pem: vec![],
        not_before: UNIX_EPOCH + Duration::from_secs(not_before),
        not_after: UNIX_EPOCH + Duration::from_secs(not_after),
    }
}

#[test]
fn refresh_at_is_half_life() {
    let c = cert_with(1_000, 87_400);
    assert_eq!(secs(c.refresh_at()), 44_200);
    // Inverted validity: refresh at once (not_after).
    let c = cert_with(5_000, 4_000);
    assert_eq!(secs(c.refresh_at()), 4_000);
}

#[test]
fn expiry_is_at_not_after() {
    let c = cert_with(1_000, 2_000);
    assert!(!c.is_expired(UNIX_EPOCH + Duration::from_secs(1_999)));
    assert!(c.is_expired(UNIX_EPOCH + Duration::from_secs(2_000)));
    assert!(c.is_expired(UNIX_EPOCH + Duration::from_secs(9_000)));
}

#[test]
fn debug_hides_the_key() {
    let text = format!("{:?}", cert_with(1, 2));
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("<redacted>") && text.contains("spiffe://cluster.local/ns/shop/sa/cart"), "{text}");
}

#[test]
fn csr_has_only_the_uri_san_and_no_subject() {
    let req = certificate_request(&id()).expect("csr");
    let (_, pem) = x509_parser::pem::parse_x509_pem(req.csr_pem.as_bytes()).expect("pem");
    assert_eq!(pem.label, "CERTIFICATE REQUEST");
    let (_, csr) = X509CertificationRequest::from_der(&pem.contents).expect("der");
    csr.verify_signature().expect("self-signature verifies");
    assert_eq!(csr.certification_request_info.subject.iter().count(), 0, "empty subject");
    // ECDSA P-256 with SHA-256.
    assert_eq!(csr.signature_algorithm.algorithm, x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256);
    let exts = csr.requested_extensions().expect("extension request").collect::<Vec<_>>();
    let sans: Vec<String> = exts
        .iter()
        .filter_map(|e| match e {
            ParsedExtension::SubjectAlternativeName(san) => Some(
                san.general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::URI(u) => format!("URI:{u}"),
                        other => format!("other:{other}"),
                    })
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(sans, vec!["URI:spiffe://cluster.local/ns/shop/sa/cart".to_owned()]);
    assert!(req.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    // A fresh key each time.
    assert_ne!(certificate_request(&id()).expect("csr").key_pem, req.key_pem);
}

fn leaf_for(ca: &Ca, san: Option<&str>) -> (super::cert::CertRequest, String) {
    let req = certificate_request(&id()).expect("csr");
    let leaf = ca.sign(&req.csr_pem, san);
    (req, leaf)
}

#[test]
fn leaf_and_root() {
    let root = Ca::root("mesh root");
    let (req, leaf) = leaf_for(&root, None);
    let resp = IstioCertificateResponse { cert_chain: vec![leaf.clone(), root.pem.clone()], root_cert: None };
    let cert = from_response(&id(), req, resp).expect("valid");
    assert_eq!(cert.chain_pem, vec![leaf]);
    assert_eq!(cert.roots_pem, vec![root.pem.clone()]);
    assert_eq!(cert.identity, id());
    assert_eq!(secs(cert.not_after) - secs(cert.not_before), 2 * 86_400);
    assert_eq!(secs(cert.refresh_at()), secs(cert.not_before) + 86_400);
}

#[test]
fn intermediates_stay_in_the_chain_and_the_last_element_may_hold_several_roots() {
    let root = Ca::root("mesh root");
    let other_root = Ca::root("next mesh root");
    let int = root.intermediate("istiod intermediate");
    let (req, leaf) = leaf_for(&int, None);
    let bundle = format!("{}{}", root.pem, other_root.pem);
    let resp = IstioCertificateResponse { cert_chain: vec![leaf.clone(), int.pem.clone(), bundle], root_cert: None };
    let cert = from_response(&id(), req, resp).expect("valid");
    assert_eq!(cert.chain_pem, vec![leaf, int.pem.clone()]);
    assert_eq!(cert.roots_pem, vec![root.pem.clone(), other_root.pem.clone()]);
}

#[test]
fn roots_sent_one_per_element_are_all_roots_and_duplicates_collapse() {
    // Current istiod: one certificate per element; with a plugged-in CA its cert chain
    // may end in the root, which it then appends again as the root.
    let root = Ca::root("mesh root");
    let next_root = Ca::root("next mesh root");
    let int = root.intermediate("istiod intermediate");
    let (req, leaf) = leaf_for(&int, None);
    let resp = IstioCertificateResponse {
        cert_chain: vec![leaf.clone(), int.pem.clone(), root.pem.clone(), next_root.pem.clone(), root.pem.clone()],
        root_cert: None,
    };
    let cert = from_response(&id(), req, resp).expect("valid");
    assert_eq!(cert.chain_pem, vec![leaf, int.pem.clone()]);
    assert_eq!(cert.roots_pem, vec![root.pem.clone(), next_root.pem.clone()]);
}

#[test]
fn a_last_element_that_is_not_self_signed_is_still_the_root() {
    // As ztunnel: the last element is trusted as the root even if it is an intermediate.
    let root = Ca::root("mesh root");
    let int = root.intermediate("istiod intermediate");
    let (_, leaf) = leaf_for(&int, None);
    let (chain, roots) = split_chain(&[leaf.clone(), int.pem.clone()], &[]).expect("split");
    assert_eq!(chain, vec![leaf]);
    assert_eq!(roots, vec![int.pem.clone()]);
}

#[test]
fn the_separate_root_bundle_wins_when_present() {
    let root = Ca::root("mesh root");
    let int = root.intermediate("istiod intermediate");
    let (req, leaf) = leaf_for(&int, None);
    let resp = IstioCertificateResponse { cert_chain: vec![leaf.clone(), int.pem.clone()], root_cert: Some(Roots { ca_cert: vec![root.pem.clone()] }) };
    let cert = from_response(&id(), req, resp).expect("valid");
    assert_eq!(cert.chain_pem, vec![leaf, int.pem.clone()]);
    assert_eq!(cert.roots_pem, vec![root.pem.clone()]);
}

#[test]
fn split_rejects_unusable_shapes() {
    let root = Ca::root("mesh root");
    let (_, leaf) = leaf_for(&root, None);
    assert!(matches!(split_chain(&[], &[]), Err(CaError::EmptyResponse)));
    match split_chain(std::slice::from_ref(&leaf), &[]) {
        Err(CaError::BadResponse { reason }) => assert!(reason.contains("only the leaf"), "{reason}"),
        other => panic!("leaf alone accepted: {other:?}"),
    }
    match split_chain(&[format!("{leaf}{}", root.pem), root.pem.clone()], &[]) {
        Err(CaError::BadResponse { reason }) => assert!(reason.contains("2 certificates"), "{reason}"),
        other => panic!("two certificates as leaf accepted: {other:?}"),
    }
    match split_chain(&[leaf.clone(), "not a certificate".into()], &[]) {
        Err(CaError::BadResponse { reason }) => assert!(reason.contains("no PEM"), "{reason}"),
        other => panic!("garbage root accepted: {other:?}"),
    }
}

#[test]
fn san_mismatch_is_detected() {
    let root = Ca::root("mesh root");
    let (req, leaf) = leaf_for(&root, Some("spiffe://cluster.local/ns/shop/sa/admin"));
    let resp = IstioCertificateResponse { cert_chain: vec![leaf, root.pem.clone()], root_cert: None };
    match from_response(&id(), req, resp) {
        Err(CaError::SanMismatch { requested, got }) => {
            assert_eq!(requested, "spiffe://cluster.local/ns/shop/sa/cart");
            assert_eq!(got, vec!["spiffe://cluster.local/ns/shop/sa/admin".to_owned()]);
        }
        other => panic!("expected SanMismatch, got {other:?}"),
    }
}

#[test]
fn a_certificate_for_another_key_is_rejected() {
    let root = Ca::root("mesh root");
    let (_, leaf) = leaf_for(&root, None);
    let other_request = certificate_request(&id()).expect("csr");
    let resp = IstioCertificateResponse { cert_chain: vec![leaf, root.pem.clone()], root_cert: None };
    assert!(matches!(from_response(&id(), other_request, resp), Err(CaError::KeyMismatch { .. })));
}

#[test]
fn a_chain_that_does_not_reach_the_roots_is_rejected() {
    let root = Ca::root("mesh root");
    let stranger = Ca::root("someone else");
    let (req, leaf) = leaf_for(&root, None);
    let resp = IstioCertificateResponse { cert_chain: vec![leaf, stranger.pem.clone()], root_cert: None };
    match from_response(&id(), req, resp) {
        Err(CaError::UntrustedChain { reason, .. }) => assert!(reason.contains("none of the 1 root"), "{reason}"),
        other => panic!("expected UntrustedChain, got {other:?}"),
    }
    // An intermediate not signed by the root, with the leaf signed by that intermediate.
    let int = stranger.intermediate("rogue intermediate");
    let (req, leaf) = leaf_for(&int, None);
    let resp = IstioCertificateResponse { cert_chain: vec![leaf, int.pem.clone(), root.pem.clone()], root_cert: None };
    assert!(matches!(from_response(&id(), req, resp), Err(CaError::UntrustedChain { .. })));
}

#[test]
fn error_messages_say_what_to_check() {
    let e = CaError::Unauthenticated { path: "/var/run/secrets/tokens/istio-token".into(), message: "bad token".into() };
    assert_eq!(
        e.to_string(),
        "istiod rejected the token at /var/run/secrets/tokens/istio-token: bad token (check the token audience istio-ca and that it has not expired)"
    );
    let e = CaError::ImpersonationDenied { identity: id().to_string(), message: "no".into() };
    assert!(e.to_string().starts_with("istiod refused to issue for spiffe://cluster.local/ns/shop/sa/cart"), "{e}");
    assert!(e.to_string().contains("CA_TRUSTED_NODE_ACCOUNTS must list this proxy's service account"), "{e}");
}
