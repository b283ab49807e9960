//! Real rustls handshakes over an in-memory duplex, with certificates from [`LocalCa`].

use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use istio_compat::model::workload::Identity;
use proptest::prelude::*;
use rustls::{AlertDescription, ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

const TD: &str = "cluster.local";
const OTHER_TD: &str = "other.example";
const HOUR: Duration = Duration::from_secs(3600);

fn client_id() -> Identity {
    Identity::new(TD, "frontend", "web")
}

fn server_id() -> Identity {
    Identity::new(TD, "backend", "api")
}

fn trust() -> TrustDomains {
    TrustDomains::local(TD)
}

struct Sides {
    /// The identity the server saw, and the negotiated ALPN.
    server: Result<(Option<Identity>, Option<Vec<u8>>), io::Error>,
    /// The identity the client saw, and the negotiated ALPN.
    client: Result<(Option<Identity>, Option<Vec<u8>>), io::Error>,
}

/// A full handshake plus one byte each way, so a failure on one side reaches the other.
async fn handshake(server_cfg: Arc<ServerConfig>, client_cfg: Arc<ClientConfig>) -> Sides {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = async move {
        let mut tls = TlsAcceptor::from(server_cfg).accept(server_io).await?;
        let seen = (peer_identity(tls.get_ref().1), tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        tls.write_all(b"s").await?;
        tls.flush().await?;
        Ok(seen)
    };
    let client = async move {
        // Any name: verification is SPIFFE-only.
        let name = ServerName::IpAddress(Ipv4Addr::UNSPECIFIED.into());
        let mut tls = TlsConnector::from(client_cfg).connect(name, client_io).await?;
        let seen = (peer_identity(tls.get_ref().1), tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
        tls.write_all(b"c").await?;
        tls.flush().await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        Ok(seen)
    };
    let (server, client) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(server, client) }).await.expect("handshake hung");
    Sides { server, client }
}

fn rejection<T: std::fmt::Debug>(side: &Result<T, io::Error>) -> Rejection {
    match side {
        Ok(v) => panic!("expected a rejection, the handshake succeeded: {v:?}"),
        Err(e) => Rejection::from_io(e).unwrap_or_else(|| panic!("expected a Rejection, got {e:?}")),
    }
}

fn alert<T: std::fmt::Debug>(side: &Result<T, io::Error>) -> AlertDescription {
    match side {
        Ok(v) => panic!("expected a received alert, the connection succeeded: {v:?}"),
        Err(e) => match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(alert)) => *alert,
            _ => panic!("expected a received alert, got {e:?}"),
        },
    }
}

fn roots(cas: &[&LocalCa]) -> Vec<CertificateDer<'static>> {
    cas.iter().map(|ca| ca.root_der()).collect()
}

fn expired(ca: &LocalCa, id: &Identity) -> Certified {
    let now = SystemTime::now();
    ca.issue_with(id, now - 2 * HOUR, now - HOUR).unwrap()
}

#[tokio::test]
async fn mutual_tls_succeeds_and_both_sides_see_the_peer() {
    let ca = LocalCa::generate(TD).unwrap();
    let server_cert = ca.issue(&server_id(), HOUR).unwrap();
    let client_cert = ca.issue(&client_id(), HOUR).unwrap();
    let sides = handshake(
        server_config(&server_cert, &roots(&[&ca]), &trust()).unwrap(),
        client_config(&client_cert, &roots(&[&ca]), &trust(), vec![server_id()]).unwrap(),
    )
    .await;
    let (server_saw, server_alpn) = sides.server.unwrap();
    let (client_saw, client_alpn) = sides.client.unwrap();
    assert_eq!(server_saw, Some(client_id()));
    assert_eq!(client_saw, Some(server_id()));
    assert_eq!(server_alpn.as_deref(), Some(ALPN_H2));
    assert_eq!(client_alpn.as_deref(), Some(ALPN_H2));
}

#[tokio::test]
async fn server_rejects_client_from_another_trust_domain() {
    let ca = LocalCa::generate(TD).unwrap();
    let other = LocalCa::generate(OTHER_TD).unwrap();
    let intruder = Identity::new(OTHER_TD, "frontend", "web");
    let sides = handshake(
        server_config(&ca.issue(&server_id(), HOUR).unwrap(), &roots(&[&ca, &other]), &trust()).unwrap(),
        client_config(&other.issue(&intruder, HOUR).unwrap(), &roots(&[&ca]), &trust(), vec![server_id()]).unwrap(),
    )
    .await;
    assert_eq!(rejection(&sides.server), Rejection::WrongTrustDomain { got: intruder, expected: TD.into() });
    assert_eq!(alert(&sides.client), AlertDescription::CertificateUnknown);
}

#[tokio::test]
async fn server_rejects_client_with_untrusted_root() {
    let ca = LocalCa::generate(TD).unwrap();
    let rogue = ca.untrusted_twin().unwrap();
    let sides = handshake(
        server_config(&ca.issue(&server_id(), HOUR).unwrap(), &roots(&[&ca]), &trust()).unwrap(),
        client_config(&rogue.issue(&client_id(), HOUR).unwrap(), &roots(&[&ca]), &trust(), vec![server_id()]).unwrap(),
    )
    .await;
    assert_eq!(rejection(&sides.server), Rejection::UntrustedChain);
    assert_eq!(alert(&sides.client), AlertDescription::UnknownCA);
}

#[tokio::test]
async fn server_rejects_expired_client() {
    let ca = LocalCa::generate(TD).unwrap();
    let client_cert = expired(&ca, &client_id());
    let sides = handshake(
        server_config(&ca.issue(&server_id(), HOUR).unwrap(), &roots(&[&ca]), &trust()).unwrap(),
        client_config(&client_cert, &roots(&[&ca]), &trust(), vec![server_id()]).unwrap(),
    )
    .await;
    assert_eq!(rejection(&sides.server), Rejection::Expired { not_after: client_cert.not_after() });
    assert_eq!(alert(&sides.client), AlertDescription::CertificateExpired);
}

#[tokio::test]
async fn server_rejects_client_not_yet_valid() {
    let ca = LocalCa::generate(TD).unwrap();
    let now = SystemTime::now();
    let client_cert = ca.issue_with(&client_id(), now + HOUR, now + 2 * HOUR).unwrap();
    let sides = handshake(
        server_config(&ca.issue(&server_id(), HOUR).unwrap(), &roots(&[&ca]), &trust()).unwrap(),
        client_config(&client_cert, &roots(&[&ca]), &trust(), vec![server_id()]).unwrap(),
    )
    .await;
    assert_eq!(rejection(&sides.server), Rejection::NotYetValid { not_before: client_cert.not_before() });
    assert_eq!(alert(&sides.client), AlertDescription::CertificateExpired);
}

#[tokio::test]
async fn server_rejects_client_without_certificate() {
    let ca = LocalCa::generate(TD).unwrap();
    let verifier = ServerIdentityVerifier::new(&roots(&[&ca]), trust(), vec![server_id()]).unwrap();
    let mut anonymous = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![ALPN_H2.to_vec()];
    let sides = handshake(server_config(&ca.issue(&server_id(), HOUR).unwrap(), &roots(&[&ca]), &trust()).unwrap(), Arc::new(anonymous)).await;
    // rustls itself refuses an empty client certificate before any verifier runs.
    match &sides.server {
        Err(e) => assert!(matches!(e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()), Some(rustls::Error::NoCertificatesPresented)), "{e:?}"),
        Ok(v) => panic!("anonymous client accepted: {v:?}"),
    }
    assert_eq!(alert(&sides.client), AlertDescription::CertificateRequired);
}

#[tokio::test]
async fn server_rejects_client_without_spiffe_id() {
    let ca = LocalCa::generate(TD).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["frontend.example.com".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let pem = ca.sign_raw(&params).unwrap();
    // Certified insists on the SPIFFE SAN, so build the client configuration by hand.
    let chain: Vec<CertificateDer<'static>> = pem.chain_pem.iter().map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap()).collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.key_pem.as_bytes()).unwrap();
    let verifier = ServerIdentityVerifier::new(&roots(&[&ca]), trust(), vec![server_id()]).unwrap();
    let dns_only = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .unwrap();
    let sides = handshake(server_config(&ca.issue(&server_id(), HOUR).unwrap(), &roots(&[&ca]), &trust()).unwrap(), Arc::new(dns_only)).await;
    assert_eq!(rejection(&sides.server), Rejection::NoSpiffeId);
    assert_eq!(alert(&sides.client), AlertDescription::CertificateUnknown);
}

#[tokio::test]
async fn client_rejects_server_with_unexpected_identity() {
    let ca = LocalCa::generate(TD).unwrap();
    let impostor = Identity::new(TD, "backend", "not-api");
    let sides = handshake(
        server_config(&ca.issue(&impostor, HOUR).unwrap(), &roots(&[&ca]), &trust()).unwrap(),
        client_config(&ca.issue(&client_id(), HOUR).unwrap(), &roots(&[&ca]), &trust(), vec![server_id()]).unwrap(),
    )
    .await;
    assert_eq!(rejection(&sides.client), Rejection::SanMismatch { got: impostor, expected: vec![server_id()] });
    assert_eq!(alert(&sides.server), AlertDescription::CertificateUnknown);
}

#[tokio::test]
async fn client_rejects_server_from_another_trust_domain() {
    let ca = LocalCa::generate(TD).unwrap();
    let other = LocalCa::generate(OTHER_TD).unwrap();
    let foreign = Identity::new(OTHER_TD, "backend", "api");
    let sides = handshake(
        server_config(&other.issue(&foreign, HOUR).unwrap(), &roots(&[&ca]), &trust()).unwrap(),
        // Even listed as expected, a foreign trust domain is refused.
        client_config(&ca.issue(&client_id(), HOUR).unwrap(), &roots(&[&ca, &other]), &trust(), vec![foreign.clone()]).unwrap(),
    )
    .await;
    assert_eq!(rejection(&sides.client), Rejection::WrongTrustDomain { got: foreign, expected: TD.into() });
    assert_eq!(alert(&sides.server), AlertDescription::CertificateUnknown);
}

#[tokio::test]
async fn client_rejects_expired_server() {
    let ca = LocalCa::generate(TD).unwrap();
    let server_cert = expired(&ca, &server_id());
    let sides = handshake(
        server_config(&server_cert, &roots(&[&ca]), &trust()).unwrap(),
        client_config(&ca.issue(&client_id(), HOUR).unwrap(), &roots(&[&ca]), &trust(), vec![server_id()]).unwrap(),
    )
    .await;
    assert_eq!(rejection(&sides.client), Rejection::Expired { not_after: server_cert.not_after() });
    assert_eq!(alert(&sides.server), AlertDescription::CertificateExpired);
}

#[tokio::test]
async fn client_rejects_untrusted_server() {
    let ca = LocalCa::generate(TD).unwrap();
    let rogue = ca.untrusted_twin().unwrap();
    let sides = handshake(
        server_config(&rogue.issue(&server_id(), HOUR).unwrap(), &roots(&[&ca]), &trust()).unwrap(),
        client_config(&ca.issue(&client_id(), HOUR).unwrap(), &roots(&[&ca]), &trust(), vec![server_id()]).unwrap(),
    )
    .await;
    assert_eq!(rejection(&sides.client), Rejection::UntrustedChain);
    assert_eq!(alert(&sides.server), AlertDescription::UnknownCA);
}

#[tokio::test]
async fn trust_domain_alias_is_accepted_both_ways() {
    let ca = LocalCa::generate(TD).unwrap();
    let old = LocalCa::generate("old.example").unwrap();
    let aliased = TrustDomains::new(TD, ["old.example"]);
    let old_client = Identity::new("old.example", "frontend", "web");
    let old_server = Identity::new("old.example", "backend", "api");
    let sides = handshake(
        server_config(&old.issue(&old_server, HOUR).unwrap(), &roots(&[&ca, &old]), &aliased).unwrap(),
        client_config(&old.issue(&old_client, HOUR).unwrap(), &roots(&[&ca, &old]), &aliased, vec![server_id(), old_server.clone()]).unwrap(),
    )
    .await;
    assert_eq!(sides.server.unwrap().0, Some(old_client));
    assert_eq!(sides.client.unwrap().0, Some(old_server));
}

#[test]
fn client_config_needs_expected_identities() {
    let ca = LocalCa::generate(TD).unwrap();
    let cert = ca.issue(&client_id(), HOUR).unwrap();
    assert!(matches!(client_config(&cert, &roots(&[&ca]), &trust(), vec![]), Err(TlsError::NoExpectedIdentity)));
    assert!(matches!(server_config(&cert, &[], &trust()), Err(TlsError::NoRoots)));
}

#[test]
fn from_pem_rejects_san_mismatch() {
    let ca = LocalCa::generate(TD).unwrap();
    let now = SystemTime::now();
    let pem = ca.issue_pem(&client_id(), now, now + HOUR).unwrap();
    let err = Certified::from_pem(server_id(), &pem.key_pem, &pem.chain_pem, &pem.roots_pem).unwrap_err();
    match err {
        TlsError::IdentityMismatch { expected, found } => {
            assert_eq!(expected, server_id());
            assert_eq!(found, vec![client_id().to_string()]);
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
}

#[test]
fn from_pem_rejects_key_mismatch() {
    let ca = LocalCa::generate(TD).unwrap();
    let now = SystemTime::now();
    let first = ca.issue_pem(&client_id(), now, now + HOUR).unwrap();
    let second = ca.issue_pem(&client_id(), now, now + HOUR).unwrap();
    let err = Certified::from_pem(client_id(), &second.key_pem, &first.chain_pem, &first.roots_pem).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { ref identity } if *identity == client_id()), "{err:?}");
}

#[test]
fn from_pem_rejects_garbage() {
    let ca = LocalCa::generate(TD).unwrap();
    let now = SystemTime::now();
    let pem = ca.issue_pem(&client_id(), now, now + HOUR).unwrap();
    assert!(matches!(Certified::from_pem(client_id(), "not a key", &pem.chain_pem, &pem.roots_pem), Err(TlsError::Pem { .. })));
    assert!(matches!(Certified::from_pem(client_id(), &pem.key_pem, &[], &pem.roots_pem), Err(TlsError::NoCertificate)));
    assert!(matches!(Certified::from_pem(client_id(), &pem.key_pem, &pem.chain_pem, &[]), Err(TlsError::NoRoots)));
    assert!(matches!(Certified::from_pem(client_id(), &pem.key_pem, &["junk".to_string()], &pem.roots_pem), Err(TlsError::Pem { .. })));
}

#[test]
fn ca_refuses_identity_of_another_trust_domain() {
    let ca = LocalCa::generate(TD).unwrap();
    let foreign = Identity::new(OTHER_TD, "a", "b");
    assert!(matches!(ca.issue(&foreign, HOUR), Err(TlsError::CaTrustDomain { ref ca, .. }) if ca == TD));
    assert!(matches!(LocalCa::generate(""), Err(TlsError::TrustDomain(_))));
    let now = SystemTime::now();
    assert!(matches!(ca.issue_with(&client_id(), now, now), Err(TlsError::Validity(_))));
}

#[test]
fn refresh_at_is_half_life_and_debug_hides_the_key() {
    let ca = LocalCa::generate(TD).unwrap();
    let not_before = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let cert = ca.issue_with(&client_id(), not_before, not_before + Duration::from_secs(1000)).unwrap();
    assert_eq!(cert.not_before(), not_before);
    assert_eq!(cert.refresh_at(not_before), not_before + Duration::from_secs(500));
    // Backdated for clock skew: half of what is left when received.
    assert_eq!(cert.refresh_at(not_before + Duration::from_secs(400)), not_before + Duration::from_secs(700));
    assert!(!cert.is_expired(not_before + Duration::from_secs(999)));
    assert!(cert.is_expired(not_before + Duration::from_secs(1000)));

    let pem = ca.issue_pem(&client_id(), not_before, not_before + HOUR).unwrap();
    let cert = Certified::from_pem(client_id(), &pem.key_pem, &pem.chain_pem, &pem.roots_pem).unwrap();
    let key_body: String = pem.key_pem.lines().nth(1).unwrap().to_string();
    for debug in [format!("{cert:?}"), format!("{pem:?}"), format!("{ca:?}")] {
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains(&key_body), "key material in {debug}");
    }
}

#[tokio::test]
async fn local_ca_files_round_trip() {
    let dir = std::env::temp_dir().join(format!("node-proxy-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("ca-cert.pem"), dir.join("ca-key.pem"));

    let generated = LocalCa::generate(TD).unwrap();
    generated.write_files(&cert_path, &key_path).unwrap();
    let loaded = LocalCa::load(TD, &cert_path, &key_path).unwrap();
    assert_eq!(loaded.root_der(), generated.root_der());

    // A certificate from the loaded CA is trusted by peers holding the generated root.
    let sides = handshake(
        server_config(&generated.issue(&server_id(), HOUR).unwrap(), &roots(&[&generated]), &trust()).unwrap(),
        client_config(&loaded.issue(&client_id(), HOUR).unwrap(), &roots(&[&loaded]), &trust(), vec![server_id()]).unwrap(),
    )
    .await;
    assert_eq!(sides.server.unwrap().0, Some(client_id()));
    assert_eq!(sides.client.unwrap().0, Some(server_id()));

    // Errors name the file and what is wrong.
    let missing = dir.join("missing.pem");
    let err = LocalCa::load(TD, &missing, &key_path).unwrap_err();
    assert!(matches!(err, TlsError::CaFile { ref path, .. } if *path == missing), "{err:?}");
    assert!(err.to_string().contains("missing.pem"), "{err}");

    let other_key = dir.join("other-key.pem");
    LocalCa::generate(TD).unwrap().write_files(&dir.join("other-cert.pem"), &other_key).unwrap();
    let err = LocalCa::load(TD, &cert_path, &other_key).unwrap_err();
    assert!(matches!(err, TlsError::CaFile { ref path, .. } if *path == other_key), "{err:?}");
    assert!(err.to_string().contains("does not belong"), "{err}");

    let leaf_path = dir.join("leaf.pem");
    let leaf = generated.issue_pem(&client_id(), SystemTime::now(), SystemTime::now() + HOUR).unwrap();
    std::fs::write(&leaf_path, &leaf.chain_pem[0]).unwrap();
    let err = LocalCa::load(TD, &leaf_path, &key_path).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");

    std::fs::remove_dir_all(&dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn issued_pem_round_trips_through_from_pem(
        ns in "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?",
        sa in "[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?",
        start in 1_000_000_000u64..4_000_000_000u64,
        lifetime in 1u64..(400 * 24 * 3600),
    ) {
        let ca = LocalCa::generate(TD).unwrap();
        let id = Identity::new(TD, &ns, &sa);
        let not_before = UNIX_EPOCH + Duration::from_secs(start);
        let not_after = not_before + Duration::from_secs(lifetime);
        let pem = ca.issue_pem(&id, not_before, not_after).unwrap();
        let cert = Certified::from_pem(id.clone(), &pem.key_pem, &pem.chain_pem, &pem.roots_pem).unwrap();
        prop_assert_eq!(cert.identity(), &id);
        prop_assert_eq!(cert.not_before(), not_before);
        prop_assert_eq!(cert.not_after(), not_after);
        prop_assert_eq!(cert.chain().len(), 1);
        prop_assert_eq!(cert.roots(), &[ca.root_der()][..]);
    }
}

#[test]
fn rejections_say_what_to_check() {
    let got = Identity::new("other", "a", "b");
    let wrong_td = Rejection::WrongTrustDomain { got: got.clone(), expected: TD.into() };
    assert_eq!(wrong_td.to_string(), "peer spiffe://other/ns/a/sa/b is in trust domain other, not cluster.local (or its aliases)");
    let san = Rejection::SanMismatch { got, expected: vec![server_id(), client_id()] };
    assert_eq!(
        san.to_string(),
        "peer spiffe://other/ns/a/sa/b is not the expected identity (spiffe://cluster.local/ns/backend/sa/api, spiffe://cluster.local/ns/frontend/sa/web)"
    );
    let expired = Rejection::Expired { not_after: UNIX_EPOCH + Duration::from_secs(1_700_000_000) };
    assert_eq!(expired.to_string(), "peer certificate expired at Tue, 14 Nov 2023 22:13:20 GMT");
    // Each kind survives the trip through rustls' error and back.
    let now = rustls_pki_types::UnixTime::now();
    for rejection in [wrong_td, san, expired, Rejection::UntrustedChain, Rejection::NoSpiffeId] {
        assert_eq!(Rejection::from_rustls(&rejection.to_rustls(now)), Some(rejection));
    }
}

#[tokio::test]
async fn local_ca_with_an_intermediate_sends_the_chain() {
    let dir = std::env::temp_dir().join(format!("node-proxy-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = LocalCa::generate(TD).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, TD);
    params.distinguished_name.push(rcgen::DnType::CommonName, "node-proxy intermediate");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let intermediate = root.sign_raw(&params).unwrap();

    // Istio's cacerts layout: cert-chain.pem = ca-cert.pem + root-cert.pem.
    let (chain_path, key_path) = (dir.join("cert-chain.pem"), dir.join("ca-key.pem"));
    std::fs::write(&chain_path, format!("{}{}", intermediate.chain_pem[0], root.root_pem())).unwrap();
    std::fs::write(&key_path, &intermediate.key_pem).unwrap();
    let ca = LocalCa::load(TD, &chain_path, &key_path).unwrap();
    assert_eq!(ca.root_der(), root.root_der());

    let server_cert = ca.issue(&server_id(), HOUR).unwrap();
    assert_eq!(server_cert.chain().len(), 2, "leaf then the intermediate");
    // Peers trust only the root; the intermediate travels in the handshake.
    let sides = handshake(
        server_config(&server_cert, &roots(&[&root]), &trust()).unwrap(),
        client_config(&ca.issue(&client_id(), HOUR).unwrap(), &roots(&[&root]), &trust(), vec![server_id()]).unwrap(),
    )
    .await;
    assert_eq!(sides.server.unwrap().0, Some(client_id()));
    assert_eq!(sides.client.unwrap().0, Some(server_id()));

    // write_files keeps the chain, so the CA loads back identically.
    let (chain2, key2) = (dir.join("chain2.pem"), dir.join("key2.pem"));
    ca.write_files(&chain2, &key2).unwrap();
    let reloaded = LocalCa::load(TD, &chain2, &key2).unwrap();
    assert_eq!(reloaded.root_der(), root.root_der());
    assert_eq!(reloaded.issue(&client_id(), HOUR).unwrap().chain().len(), 2);

    // A chain that does not end in a self-signed root is refused.
    std::fs::write(&chain2, format!("{}{}", intermediate.chain_pem[0], intermediate.chain_pem[0])).unwrap();
    let err = LocalCa::load(TD, &chain2, &key_path).unwrap_err();
    assert!(err.to_string().contains("self-signed root"), "{err}");

    std::fs::remove_dir_all(&dir).unwrap();
}
