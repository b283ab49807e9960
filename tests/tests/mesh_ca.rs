//! `node-proxy run` with istiod's CA: the workload certificates of the node's
//! identities come from a test IstioCertificateService (`tests::ca_server`, the same
//! gRPC service, TLS and bearer token as istiod's), requested with impersonation;
//! the HBONE listener presents them, and a peer holding a certificate from the same
//! CA gets through. An identity istiod will not issue for is reported with what to
//! fix. No root needed: everything is on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use istio_compat::ca::{CaClient, CaClientConfig};
use istio_compat::model::workload::Identity;
use node_proxy::hbone::client::{ConnectHeaders, Pool, PoolKey};
use node_proxy::tls::{self, Certified, TrustDomains};
use prost::Message;
use tests::ca_server::{TestCaServer, SERVER_NAME};
use tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xds_client::istio::workload::{address, Address, TunnelProtocol, Workload};
use xds_client::pb::google::protobuf::Any;
use xds_client::type_url::ADDRESS;

const TOKEN: &str = "node-proxy-token";
const T: Duration = Duration::from_secs(20);

fn workload(name: &str, ip: [u8; 4]) -> Any {
    let w = Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: format!("Kubernetes//Pod/mesh/{name}"),
            name: name.to_owned(),
            namespace: "mesh".to_owned(),
            addresses: vec![ip.to_vec()],
            node: "n1".to_owned(),
            tunnel_protocol: TunnelProtocol::Hbone as i32,
            trust_domain: "cluster.local".to_owned(),
            service_account: name.to_owned(),
            ..Default::default()
        })),
    };
    Any { type_url: ADDRESS.to_owned(), value: w.encode_to_vec() }
}

#[test]
fn workload_certificates_come_from_istiods_ca_and_the_hbone_listener_presents_them() {
    let ca = TestCaServer::start(TOKEN, &["spiffe://cluster.local/ns/mesh/sa/server", "spiffe://cluster.local/ns/mesh/sa/client"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("istio-token");
    let root = dir.path().join("root-cert.pem");
    std::fs::write(&token, TOKEN).expect("write the token");
    std::fs::write(&root, ca.serving_root_pem()).expect("write istiod's root");

    // The server workload lives on 127.0.0.2 (the listener picks the workload by the address a connection reached).
    let app = Origin::start_at("app", SocketAddr::from(([127, 0, 0, 2], ports::free_port())), None);
    let hbone = SocketAddr::from(([127, 0, 0, 2], ports::free_port()));
    let ads = AdsServer::start();
    ads.set(ADDRESS, "Kubernetes//Pod/mesh/server", workload("server", [127, 0, 0, 2]));
    // istiod does not let this proxy impersonate `denied`.
    ads.set(ADDRESS, "Kubernetes//Pod/mesh/denied", workload("denied", [127, 0, 0, 3]));
    let args = [
        "--node-name",
        "n1",
        "--ca-address",
        &ca.address(),
        "--ca-root-cert",
        &root.display().to_string(),
        "--ca-server-name",
        SERVER_NAME,
        "--token-path",
        &token.display().to_string(),
        "--hbone-capture",
        "false",
    ]
    .map(str::to_owned)
    .to_vec();
    let proxy = Proxy::start_xds(&ads.url(), ProxyOptions { hbone_address: hbone.to_string(), extra_args: args, ..Default::default() });

    assert_eventually("the server's certificate issued by istiod's CA", T, || {
        let err = proxy.stderr();
        if err.contains("workload certificate issued identity=spiffe://cluster.local/ns/mesh/sa/server") {
            Ok(())
        } else {
            Err(err)
        }
    });
    assert_eventually("the refused identity reported with what to fix", T, || {
        let err = proxy.stderr();
        if err.lines().any(|l| l.contains("spiffe://cluster.local/ns/mesh/sa/denied") && l.contains("CA_TRUSTED_NODE_ACCOUNTS")) {
            Ok(())
        } else {
            Err(err)
        }
    });
    // The admin port shows what is held.
    let mesh: serde_json::Value = serde_json::from_str(&proxy.admin_get("/mesh").body).expect("/mesh is JSON");
    let state = |sa: &str| {
        mesh["certificates"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["identity"] == format!("spiffe://cluster.local/ns/mesh/sa/{sa}")))
            .map(|c| c["state"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(state("server").as_deref(), Some("valid"), "{mesh}");
    assert!(state("denied").is_some_and(|s| s.starts_with("pending")), "{mesh}");
    assert_eq!(mesh["node"], "n1");
    // What istiod saw: the proxy's token, impersonating the workload identity.
    let requests = ca.requests();
    let server = requests
        .iter()
        .find(|r| r.impersonated_identity.as_deref() == Some("spiffe://cluster.local/ns/mesh/sa/server"))
        .unwrap_or_else(|| panic!("{requests:?}"));
    assert_eq!(server.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()), "{server:?}");

    // A peer with a certificate from the same CA reaches the app through the listener,
    // which presents the server's istiod-issued identity.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let reply = rt.block_on(async {
        let config = CaClientConfig {
            address: ca.address(),
            root_cert_pem: ca.serving_root_pem().to_owned(),
            token_path: Some(token.clone()),
            cluster_id: "Kubernetes".into(),
            validity: Duration::from_secs(3600),
            domain_name: Some(SERVER_NAME.into()),
        };
        let client_id = Identity::new("cluster.local", "mesh", "client");
        let w = CaClient::new(config).await.expect("CA client").fetch(&client_id).await.expect("the client's certificate");
        let cert = Certified::from_pem(w.identity.clone(), &w.key_pem, &w.chain_pem, &w.roots_pem).expect("certificate");
        let server_id = Identity::new("cluster.local", "mesh", "server");
        let tls = tls::client_config(&cert, cert.roots(), &TrustDomains::local("cluster.local"), vec![server_id.clone()]).expect("client config");
        let pool = Pool::default();
        let key = PoolKey { source: client_id, destination: vec![server_id], address: hbone };
        let dial = move || {
            Box::pin(async move {
                let tcp = tokio::net::TcpStream::connect(hbone).await?;
                let name = rustls::pki_types::ServerName::try_from("hbone").map_err(std::io::Error::other)?;
                tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await
            })
        };
        let mut stream = pool.connect(&key, app.addr(), &ConnectHeaders::default(), dial).await.expect("CONNECT through the listener");
        stream.write_all(b"GET /via-istiod-ca HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(T, stream.read_to_end(&mut out)).await.expect("in time").expect("read");
        String::from_utf8_lossy(&out).into_owned()
    });
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}\n{}", proxy.stderr());
    assert_eq!(app.requests_to("/via-istiod-ca").len(), 1);
}
