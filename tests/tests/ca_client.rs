//! istio-compat's CA client against the test istiod CA (a real tonic server over
//! TLS): issuance with the impersonation metadata and headers istiod expects, the
//! checks on what comes back, token rotation, and errors that say what to fix.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use istio_compat::ca::{CaClient, CaClientConfig, CaError, WorkloadCert};
use istio_compat::model::workload::Identity;
use tests::ca_server::{Misbehaviour, TestCaServer, SERVER_NAME};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

const TOKEN: &str = "token-for-node-proxy";

fn cart() -> Identity {
    Identity::new("cluster.local", "shop", "cart")
}

struct Setup {
    server: TestCaServer,
    _dir: tempfile::TempDir,
    token_path: PathBuf,
}

fn setup(allowed: &[&str]) -> Setup {
    let server = TestCaServer::start(TOKEN, allowed);
    let dir = tempfile::tempdir().expect("temp dir");
    let token_path = dir.path().join("istio-token");
    std::fs::write(&token_path, format!("{TOKEN}\n")).expect("write token");
    Setup { server, _dir: dir, token_path }
}

fn config(s: &Setup) -> CaClientConfig {
    CaClientConfig {
        address: s.server.address(),
        root_cert_pem: s.server.serving_root_pem().to_owned(),
        token_path: Some(s.token_path.clone()),
        cluster_id: "Kubernetes".into(),
        validity: Duration::from_secs(3600),
        domain_name: Some(SERVER_NAME.into()),
    }
}

async fn client(s: &Setup) -> CaClient {
    CaClient::new(config(s)).await.expect("client")
}

fn der(pem: &str) -> Vec<u8> {
    parse_x509_pem(pem.as_bytes()).expect("PEM").1.contents
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).expect("after epoch").as_secs()
}

/// The leaf's URI SANs, its public key (raw), and whether the mesh root signed it.
fn inspect(cert: &WorkloadCert, mesh_root_pem: &str) -> (Vec<String>, Vec<u8>, bool) {
    let leaf_der = der(cert.leaf_pem());
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).expect("leaf parses");
    let root_der = der(mesh_root_pem);
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).expect("root parses");
    let uris = leaf
        .subject_alternative_name()
        .expect("SAN extension")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let signed = leaf.verify_signature(Some(root.public_key())).is_ok();
    (uris, leaf.public_key().subject_public_key.data.to_vec(), signed)
}

#[tokio::test]
async fn issues_a_certificate_for_the_impersonated_identity() {
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    let c = client(&s).await;
    let before = SystemTime::now();
    let cert = c.fetch(&cart()).await.expect("certificate");

    assert_eq!(cert.identity, cart());
    assert_eq!(cert.chain_pem.len(), 1, "leaf only: the test CA signs with its root directly");
    assert_eq!(cert.roots_pem, vec![s.server.mesh_root_pem().to_owned()]);
    assert_ne!(s.server.mesh_root_pem(), s.server.serving_root_pem());

    let (uris, leaf_key, signed) = inspect(&cert, s.server.mesh_root_pem());
    assert_eq!(uris, vec!["spiffe://cluster.local/ns/shop/sa/cart".to_owned()]);
    assert!(signed, "the leaf verifies against the mesh root");
    let key = rcgen::KeyPair::from_pem(&cert.key_pem).expect("key PEM parses");
    assert_eq!(key.public_key_raw(), leaf_key.as_slice(), "the certificate is for our key");
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);

    // Validity as requested, starting now; refresh at half-life.
    assert_eq!(unix(cert.not_after) - unix(cert.not_before), 3600);
    assert!(unix(cert.not_before).abs_diff(unix(before)) <= 5, "not_before is now");
    assert_eq!(unix(cert.refresh_at()), unix(cert.not_before) + 1800);
    assert!(!cert.is_expired(SystemTime::now()));
    assert!(cert.is_expired(cert.not_after));

    // What istiod saw.
    assert_eq!(s.server.request_count(), 1);
    let seen = s.server.requests();
    assert_eq!(seen[0].authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    assert_eq!(seen[0].cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(seen[0].impersonated_identity.as_deref(), Some("spiffe://cluster.local/ns/shop/sa/cart"));
    assert_eq!(seen[0].validity_duration, 3600);
    assert_eq!(seen[0].csr_uris, vec!["spiffe://cluster.local/ns/shop/sa/cart".to_owned()]);
}

#[tokio::test]
async fn an_intermediate_stays_in_the_chain_and_only_the_root_is_trusted() {
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    s.server.use_intermediate(true);
    let cert = client(&s).await.fetch(&cart()).await.expect("certificate");
    assert_eq!(cert.chain_pem.len(), 2);
    assert_eq!(cert.chain_pem[1], s.server.intermediate_pem());
    assert_eq!(cert.roots_pem, vec![s.server.mesh_root_pem().to_owned()]);
    // leaf ← intermediate ← root, each signature checked.
    let (uris, _, signed_by_root) = inspect(&cert, s.server.mesh_root_pem());
    assert_eq!(uris, vec![cart().to_string()]);
    assert!(!signed_by_root, "the root does not sign the leaf directly");
    let (_, _, signed_by_int) = inspect(&cert, s.server.intermediate_pem());
    assert!(signed_by_int);
    let int_der = der(s.server.intermediate_pem());
    let (_, int) = x509_parser::parse_x509_certificate(&int_der).expect("intermediate");
    let root_der = der(s.server.mesh_root_pem());
    let (_, root) = x509_parser::parse_x509_certificate(&root_der).expect("root");
    int.verify_signature(Some(root.public_key())).expect("the root signs the intermediate");
}

#[tokio::test]
async fn each_fetch_uses_a_fresh_key() {
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    let c = client(&s).await;
    let a = c.fetch(&cart()).await.expect("first");
    let b = c.fetch(&cart()).await.expect("second");
    assert_ne!(a.key_pem, b.key_pem);
    assert_ne!(a.leaf_pem(), b.leaf_pem());
    assert_eq!(s.server.request_count(), 2);
}

#[tokio::test]
async fn a_wrong_token_is_unauthenticated_and_names_the_token_file() {
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    std::fs::write(&s.token_path, "someone-elses-token").expect("write token");
    let err = client(&s).await.fetch(&cart()).await.expect_err("rejected");
    assert!(matches!(err, CaError::Unauthenticated { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("istiod rejected the token at {}", s.token_path.display())), "{text}");
    assert!(text.contains("check the token audience istio-ca"), "{text}");
    assert_eq!(s.server.requests()[0].authorization.as_deref(), Some("Bearer someone-elses-token"));
}

#[tokio::test]
async fn a_missing_token_file_fails_before_calling_istiod() {
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    std::fs::remove_file(&s.token_path).expect("remove token");
    let err = client(&s).await.fetch(&cart()).await.expect_err("no token");
    match &err {
        CaError::Token { path, .. } => assert_eq!(path, &s.token_path),
        other => panic!("expected Token, got {other:?}"),
    }
    assert!(err.to_string().contains("audience istio-ca"), "{err}");
    assert_eq!(s.server.request_count(), 0);
}

#[tokio::test]
async fn an_identity_istiod_does_not_let_us_impersonate_is_permission_denied() {
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    let admin = Identity::new("cluster.local", "shop", "admin");
    let err = client(&s).await.fetch(&admin).await.expect_err("denied");
    match &err {
        CaError::ImpersonationDenied { identity, .. } => assert_eq!(identity, "spiffe://cluster.local/ns/shop/sa/admin"),
        other => panic!("expected ImpersonationDenied, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.starts_with("istiod refused to issue for spiffe://cluster.local/ns/shop/sa/admin"), "{text}");
    assert!(text.contains("CA_TRUSTED_NODE_ACCOUNTS must list this proxy's service account"), "{text}");
    // Allowed afterwards: the same client now succeeds.
    s.server.allow("spiffe://cluster.local/ns/shop/sa/admin");
    let cert = client(&s).await.fetch(&admin).await.expect("allowed now");
    assert_eq!(cert.identity, admin);
}

#[tokio::test]
async fn istiods_own_answer_to_a_refused_impersonation_is_not_blamed_on_the_token() {
    // Real istiod (security/pkg/server/ca/server.go) refuses impersonation with
    // Unauthenticated "request impersonation authentication failure".
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    s.server.misbehave(Misbehaviour::Fail(tonic::Code::Unauthenticated, "request impersonation authentication failure".into()));
    let err = client(&s).await.fetch(&cart()).await.expect_err("refused");
    assert!(matches!(err, CaError::ImpersonationDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("CA_TRUSTED_NODE_ACCOUNTS"), "{err}");
    // Its plain authentication failure is still the token's fault.
    s.server.misbehave(Misbehaviour::Fail(tonic::Code::Unauthenticated, "request authenticate failure".into()));
    let err = client(&s).await.fetch(&cart()).await.expect_err("refused");
    assert!(matches!(err, CaError::Unauthenticated { .. }), "{err:?}");
}

#[tokio::test]
async fn a_certificate_for_another_identity_is_refused() {
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    s.server.misbehave(Misbehaviour::WrongSan("spiffe://cluster.local/ns/shop/sa/admin".into()));
    let err = client(&s).await.fetch(&cart()).await.expect_err("SAN mismatch");
    match err {
        CaError::SanMismatch { requested, got } => {
            assert_eq!(requested, "spiffe://cluster.local/ns/shop/sa/cart");
            assert_eq!(got, vec!["spiffe://cluster.local/ns/shop/sa/admin".to_owned()]);
        }
        other => panic!("expected SanMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_answers_are_refused() {
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    let c = client(&s).await;
    s.server.misbehave(Misbehaviour::EmptyChain);
    assert!(matches!(c.fetch(&cart()).await, Err(CaError::EmptyResponse)));
    s.server.misbehave(Misbehaviour::LeafOnly);
    match c.fetch(&cart()).await {
        Err(CaError::BadResponse { reason }) => assert!(reason.contains("no root"), "{reason}"),
        other => panic!("expected BadResponse, got {other:?}"),
    }
    s.server.misbehave(Misbehaviour::Fail(tonic::Code::Internal, "signing backend down".into()));
    match c.fetch(&cart()).await {
        Err(CaError::Rpc { code, message, .. }) => {
            assert_eq!(code, tonic::Code::Internal);
            assert_eq!(message, "signing backend down");
        }
        other => panic!("expected Rpc, got {other:?}"),
    }
    s.server.misbehave(Misbehaviour::None);
    c.fetch(&cart()).await.expect("recovers");
}

#[tokio::test]
async fn the_token_file_is_reread_on_every_request() {
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    let c = client(&s).await;
    c.fetch(&cart()).await.expect("first token accepted");
    // The kubelet rotates the token; istiod only accepts the new one.
    s.server.set_token("rotated-token");
    assert!(matches!(c.fetch(&cart()).await, Err(CaError::Unauthenticated { .. })));
    std::fs::write(&s.token_path, "rotated-token\n").expect("rotate token");
    c.fetch(&cart()).await.expect("rotated token accepted by the same client");
    let auth: Vec<Option<String>> = s.server.requests().into_iter().map(|r| r.authorization).collect();
    assert_eq!(auth, vec![Some(format!("Bearer {TOKEN}")), Some(format!("Bearer {TOKEN}")), Some("Bearer rotated-token".to_owned())]);
}

#[tokio::test]
async fn an_unreachable_istiod_is_named_in_the_error() {
    let mut s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    let c = client(&s).await;
    c.fetch(&cart()).await.expect("reachable at first");
    let address = s.server.address();
    s.server.stop();
    let err = c.fetch(&cart()).await.expect_err("stopped");
    match &err {
        CaError::Unreachable { address: a, .. } => assert_eq!(a, &address),
        other => panic!("expected Unreachable, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.starts_with(&format!("cannot reach istiod's CA at {address}")), "{text}");
    // The open connection breaks (or, if the client noticed first, the redial is refused).
    assert!(text.contains("is istiod restarting?") || text.contains("nothing listens there"), "{text}");

    // A client created while nothing listens: lazy, so `new` succeeds and `fetch` fails.
    let port = tests::free_port();
    let mut cfg = config(&s);
    cfg.address = format!("https://127.0.0.1:{port}");
    let err = CaClient::new(cfg).await.expect("lazy client").fetch(&cart()).await.expect_err("nothing listens");
    assert!(err.to_string().contains(&format!("https://127.0.0.1:{port}")), "{err}");
    assert!(matches!(err, CaError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("Connection refused"), "{err}");
    assert!(err.to_string().contains("nothing listens there"), "{err}");
}

#[tokio::test]
async fn trusting_the_wrong_root_fails_the_tls_handshake() {
    let s = setup(&["spiffe://cluster.local/ns/shop/sa/cart"]);
    let mut cfg = config(&s);
    // The mesh root does not sign istiod's serving certificate here.
    cfg.root_cert_pem = s.server.mesh_root_pem().to_owned();
    let err = CaClient::new(cfg).await.expect("client").fetch(&cart()).await.expect_err("untrusted server");
    assert!(matches!(err, CaError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert!(text.contains("(TLS: check the root certificate is Istio's root"), "{text}");
    assert_eq!(s.server.request_count(), 0);
}

#[tokio::test]
async fn configuration_errors_are_caught_up_front() {
    let s = setup(&[]);
    let mut cfg = config(&s);
    cfg.address = format!("http://{}", s.server.addr());
    match CaClient::new(cfg).await {
        Err(CaError::Config { reason }) => assert!(reason.contains("must be https://"), "{reason}"),
        other => panic!("plaintext address accepted: {:?}", other.map(|_| ())),
    }
    let mut cfg = config(&s);
    cfg.root_cert_pem = "not a certificate".into();
    assert!(matches!(CaClient::new(cfg).await, Err(CaError::Config { .. })));
}

#[tokio::test]
async fn concurrent_fetches_for_many_identities() {
    let ids: Vec<Identity> = (0..8).map(|i| Identity::new("cluster.local", "shop", &format!("sa{i}"))).collect();
    let uris: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let refs: Vec<&str> = uris.iter().map(String::as_str).collect();
    let s = setup(&refs);
    let c = client(&s).await;
    let mut tasks = Vec::new();
    for id in ids.clone() {
        let c = c.clone();
        tasks.push(tokio::spawn(async move { c.fetch(&id).await }));
    }
    for (task, id) in tasks.into_iter().zip(ids) {
        let cert = task.await.expect("task").expect("certificate");
        assert_eq!(cert.identity, id);
        let (uris, _, signed) = inspect(&cert, s.server.mesh_root_pem());
        assert_eq!(uris, vec![id.to_string()]);
        assert!(signed);
    }
    assert_eq!(s.server.request_count(), 8);
}
