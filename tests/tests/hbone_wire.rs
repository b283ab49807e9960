//! HBONE's wire format as Istio's ztunnel speaks it, pinned byte for byte against
//! independent peers made from the raw crates (rustls, tokio-rustls, h2), not from
//! node-proxy's `hbone` module. Every test runs on loopback, without root.
//!
//! - Our client (`hbone::outbound::Outbound`) against a raw ztunnel-shaped server that
//!   records the ClientHello, the negotiated TLS parameters, the certificate we present,
//!   the HTTP/2 preface, SETTINGS and WINDOW_UPDATE we send, and the `CONNECT` request.
//! - Our server (`hbone::inbound::Inbound`, fed its workloads and policies over the
//!   workload API from the test ADS server) against a raw client that sends what
//!   ztunnel's outbound sends (`proxy/outbound.rs`, `create_hbone_request`).
//! - SAN checks both ways, as ztunnel makes them (`tls/workload.rs`).
//!
//! docs/hbone-interop.md is the table these tests back; where node-proxy differs from
//! ztunnel, the test pins what node-proxy does and says what ztunnel does.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use istio_compat::model::workload::{Identity, Workload};
use node_proxy::drain::Drain;
use node_proxy::hbone::inbound::Inbound;
use node_proxy::hbone::outbound::Outbound;
use node_proxy::hbone::plan::Tunnel;
use node_proxy::hbone::HboneError;
use node_proxy::identity::{CertStore, LocalIssuer};
use node_proxy::telemetry::metrics::Metrics;
use node_proxy::tls::{Certified, LocalCa, TrustDomains};
use node_proxy::xds::workload::{LiveWorkloads, WorkloadXds};
use prost::Message;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{CipherSuite, DigitallySignedStruct, NamedGroup, ProtocolVersion, SignatureScheme, SupportedProtocolVersion};
use tests::ads_server::AdsServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use xds_client::pb::google::protobuf::Any;

const TD: &str = "cluster.local";
const T: Duration = Duration::from_secs(10);

/// What ztunnel puts in the `CONNECT` of a connection from a deployment `client` in
/// `ns1` (outbound.rs `baggage`, `build_forwarded`, `TraceParent::header`).
const ZTUNNEL_BAGGAGE: &str = "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns1,k8s.deployment.name=client,service.name=client,service.version=v1,cloud.region=,cloud.availability_zone=";
const ZTUNNEL_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

// HTTP/2 frame types and settings (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const ENABLE_PUSH: u16 = 0x2;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const MAX_FRAME_SIZE: u16 = 0x5;
const MAX_HEADER_LIST_SIZE: u16 = 0x6;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// 16 MiB connection window minus the 65,535 bytes every connection starts with.
const CONNECTION_WINDOW_INCREMENT: u32 = 16 * 1024 * 1024 - 65_535;

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new(TD, ns, sa)
}

fn client_id() -> Identity {
    id("ns1", "client")
}

fn server_id() -> Identity {
    id("ns2", "server")
}

fn issue(ca: &LocalCa, identity: &Identity) -> Certified {
    ca.issue(identity, Duration::from_secs(3600)).expect("the local CA issues")
}

fn ring() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// ztunnel's provider with `tls-ring` (tls/lib.rs `provider`): TLS 1.3 AES-GCM suites
/// only, the provider's default key exchange groups.
fn ztunnel_provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384, rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        ..ring()
    })
}

static TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

// ---------------------------------------------------------------------------------
// Raw bytes: a stream that keeps what it reads, and an HTTP/2 frame reader.
// ---------------------------------------------------------------------------------

/// A byte stream that keeps a copy of everything read from it (the first MiB): the
/// peer's HTTP/2 frames, decrypted.
struct Recorded<S> {
    inner: S,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let mut seen = self.seen.lock().unwrap();
            if seen.len() < 1 << 20 {
                seen.extend_from_slice(&buf.filled()[before..]);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[derive(Debug, Clone)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The complete frames in `bytes` (after the client preface, when it starts with one).
fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut rest = bytes.strip_prefix(PREFACE).unwrap_or(bytes);
    let mut out = Vec::new();
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        if rest.len() < 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        out.push(Frame { kind: rest[3], flags: rest[4], stream, payload: rest[9..9 + len].to_vec() });
        rest = &rest[9 + len..];
    }
    out
}

/// The parameters of the first SETTINGS frame that is not an acknowledgement.
fn first_settings(frames: &[Frame]) -> BTreeMap<u16, u32> {
    let f = frames.iter().find(|f| f.kind == SETTINGS && f.flags & ACK == 0).expect("a SETTINGS frame");
    assert_eq!(f.stream, 0);
    f.payload.chunks(6).map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]]))).collect()
}

/// The increment of the first connection-level WINDOW_UPDATE.
fn connection_window_update(frames: &[Frame]) -> u32 {
    let f = frames.iter().find(|f| f.kind == WINDOW_UPDATE && f.stream == 0).expect("a connection WINDOW_UPDATE");
    u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]) & 0x7fff_ffff
}

async fn eventually<V>(what: &str, mut check: impl FnMut() -> Option<V>) -> V {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------
// Certificates as ztunnel reads them.
// ---------------------------------------------------------------------------------

/// What a workload certificate looks like on the wire.
#[derive(Debug, PartialEq, Eq)]
struct LeafShape {
    uri_sans: Vec<String>,
    other_sans: usize,
    san_critical: bool,
    empty_subject: bool,
    server_auth: bool,
    client_auth: bool,
    digital_signature: bool,
    key_encipherment: bool,
    /// Algorithm OID and curve OID of the public key.
    key: (String, String),
}

fn leaf_shape(der: &[u8]) -> LeafShape {
    let (_, cert) = X509Certificate::from_der(der).expect("an X.509 certificate");
    let san = cert.subject_alternative_name().expect("SAN parses").expect("a SAN extension");
    let uri_sans = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect::<Vec<_>>();
    let eku = cert.extended_key_usage().expect("EKU parses").expect("an EKU extension");
    let ku = cert.key_usage().expect("KU parses").expect("a KU extension");
    let spki = cert.public_key();
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string()).unwrap_or_default();
    LeafShape {
        other_sans: san.value.general_names.len() - uri_sans.len(),
        uri_sans,
        san_critical: san.critical,
        empty_subject: cert.subject().iter().count() == 0,
        server_auth: eku.value.server_auth,
        client_auth: eku.value.client_auth,
        digital_signature: ku.value.digital_signature(),
        key_encipherment: ku.value.key_encipherment(),
        key: (spki.algorithm.algorithm.to_id_string(), curve),
    }
}

/// The shape istiod's CA gives a workload certificate (and our local CA copies).
fn istio_leaf(identity: &Identity) -> LeafShape {
    LeafShape {
        uri_sans: vec![identity.to_string()],
        other_sans: 0,
        san_critical: true,
        empty_subject: true,
        server_auth: true,
        client_auth: true,
        digital_signature: true,
        key_encipherment: true,
        // id-ecPublicKey on prime256v1.
        key: ("1.2.840.10045.2.1".into(), "1.2.840.10045.3.1.7".into()),
    }
}

fn uri_sans(der: &[u8]) -> Vec<String> {
    leaf_shape(der).uri_sans
}

/// ztunnel's client-side check of the server (tls/workload.rs `IdentityVerifier`): the
/// chain verifies for serverAuth against the mesh roots, then one of the leaf's URI
/// SANs is one of the expected identities. It records the leaf it was shown.
#[derive(Debug)]
struct ZtunnelServerCheck {
    roots: Vec<CertificateDer<'static>>,
    expected: Vec<String>,
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
}

impl ServerCertVerifier for ZtunnelServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.clone().into_owned());
        let anchors: Vec<_> = self.roots.iter().map(|r| webpki::anchor_from_trusted_cert(r).expect("a root").to_owned()).collect();
        let leaf = webpki::EndEntityCert::try_from(end_entity).map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        leaf.verify_for_usage(ring().signature_verification_algorithms.all, &anchors, intermediates, now, webpki::KeyUsage::server_auth(), None, None)
            .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))?;
        if uri_sans(end_entity).iter().any(|san| self.expected.contains(san)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &ring().signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &CertificateDer<'_>, d: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &ring().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ring().signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------------
// A raw ztunnel-shaped HBONE server (proxy/h2/server.rs, proxy/inbound.rs).
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Hello {
    server_name: Option<String>,
    alpn: Vec<Vec<u8>>,
    suites: Vec<CipherSuite>,
    groups: Vec<NamedGroup>,
}

#[derive(Debug, Clone)]
struct Negotiated {
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    suite: Option<CipherSuite>,
    group: Option<NamedGroup>,
    peer_chain: Vec<CertificateDer<'static>>,
}

/// One stream as the raw server saw it.
#[derive(Debug)]
struct Arrived {
    hello: Hello,
    tls: Negotiated,
    request: http::request::Parts,
    /// The stream's DATA, up to its END_STREAM.
    data: Vec<u8>,
    end_stream: bool,
    /// Every byte the client sent on the connection, decrypted.
    wire: Arc<Mutex<Vec<u8>>>,
    /// Whether the client answered the server's PING (ztunnel's keepalive), once known.
    pong: Arc<Mutex<Option<bool>>>,
}

#[derive(Debug)]
enum ServerEvent {
    /// The TLS handshake failed, and why.
    Refused(String),
    Stream(Box<Arrived>),
}

struct RawServer {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<ServerEvent>,
}

impl RawServer {
    async fn next(&mut self) -> ServerEvent {
        tokio::time::timeout(T, self.events.recv()).await.expect("the raw server saw something").expect("the raw server runs")
    }

    async fn stream(&mut self) -> Arrived {
        match self.next().await {
            ServerEvent::Stream(a) => *a,
            ServerEvent::Refused(e) => panic!("the raw server refused the handshake: {e}"),
        }
    }
}

/// The status a ztunnel-shaped server answers for a target port: the cases of
/// inbound.rs (401 policy, 503 unreachable, 400 bad request); anything else is 200
/// and the stream is echoed back prefixed with `echo:`.
fn status_for(port: u16) -> StatusCode {
    match port {
        1 => StatusCode::UNAUTHORIZED,
        2 => StatusCode::SERVICE_UNAVAILABLE,
        3 => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    }
}

/// A server with `cert` (TLS `versions`, ALPN h2, client certificate required against
/// `cert`'s roots) and ztunnel's HTTP/2 server settings.
async fn raw_server(cert: &Certified, versions: &'static [&'static SupportedProtocolVersion]) -> RawServer {
    raw_server_with(cert.chain().to_vec(), cert.key().clone_key(), cert.roots(), versions).await
}

/// [`raw_server`] with any chain and key.
async fn raw_server_with(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    trusted: &[CertificateDer<'static>],
    versions: &'static [&'static SupportedProtocolVersion],
) -> RawServer {
    let mut roots = rustls::RootCertStore::empty();
    for r in trusted {
        roots.add(r.clone()).expect("a root");
    }
    let provider = Arc::new(ring());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().expect("client verifier");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(raw_connection(tcp, config.clone(), tx.clone()));
        }
    });
    RawServer { addr, events }
}

async fn raw_connection(tcp: TcpStream, config: Arc<rustls::ServerConfig>, tx: mpsc::UnboundedSender<ServerEvent>) {
    let start = match tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(ServerEvent::Refused(format!("ClientHello: {e}")));
            return;
        }
    };
    let ch = start.client_hello();
    let hello = Hello {
        server_name: ch.server_name().map(str::to_owned),
        alpn: ch.alpn().map(|a| a.map(<[u8]>::to_vec).collect()).unwrap_or_default(),
        suites: ch.cipher_suites().to_vec(),
        groups: ch.named_groups().map(<[NamedGroup]>::to_vec).unwrap_or_default(),
    };
    let tls = match start.into_stream(config).await {
        Ok(t) => t,
        Err(e) => {
            let _ = tx.send(ServerEvent::Refused(format!("{e:?}")));
            return;
        }
    };
    let conn = tls.get_ref().1;
    let negotiated = Negotiated {
        version: conn.protocol_version(),
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        suite: conn.negotiated_cipher_suite().map(|s| s.suite()),
        group: conn.negotiated_key_exchange_group().map(|g| g.name()),
        peer_chain: conn.peer_certificates().map(<[_]>::to_vec).unwrap_or_default(),
    };
    let wire = Arc::new(Mutex::new(Vec::new()));
    let io = Recorded { inner: tls, seen: wire.clone() };
    // ztunnel's h2 server settings (proxy/h2/server.rs `serve_connection`).
    let mut h2 = match h2::server::Builder::new()
        .initial_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(1024 * 1024)
        .max_header_list_size(65536)
        .max_send_buffer_size(1024 * 400)
        .max_concurrent_streams(200)
        .handshake::<_, Bytes>(io)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(ServerEvent::Refused(format!("HTTP/2 handshake: {e}")));
            return;
        }
    };
    // ztunnel's keepalive (proxy/h2.rs `do_ping_pong`): a PING every 10 s, the connection
    // dropped when no PONG comes within 20 s. One PING, right away.
    let pong = Arc::new(Mutex::new(None));
    if let Some(mut ping_pong) = h2.ping_pong() {
        let pong = pong.clone();
        tokio::spawn(async move {
            let ok = tokio::time::timeout(T, ping_pong.ping(h2::Ping::opaque())).await.is_ok_and(|r| r.is_ok());
            *pong.lock().unwrap() = Some(ok);
        });
    }
    while let Some(Ok((request, mut respond))) = h2.accept().await {
        let (tx, hello, negotiated, wire, pong) = (tx.clone(), hello.clone(), negotiated.clone(), wire.clone(), pong.clone());
        tokio::spawn(async move {
            let (parts, mut body) = request.into_parts();
            let status = parts.uri.port_u16().map(status_for).unwrap_or(StatusCode::BAD_REQUEST);
            if status != StatusCode::OK {
                let _ = respond.send_response(Response::builder().status(status).body(()).unwrap(), true);
                let arrived = Arrived { hello, tls: negotiated, request: parts, data: Vec::new(), end_stream: false, wire, pong };
                let _ = tx.send(ServerEvent::Stream(Box::new(arrived)));
                return;
            }
            let mut send = respond.send_response(Response::new(()), false).expect("respond 200");
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("DATA");
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let end_stream = body.is_end_stream();
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&data);
            send.send_data(Bytes::from(reply), true).expect("echo and END_STREAM");
            let arrived = Arrived { hello, tls: negotiated, request: parts, data, end_stream, wire, pong };
            let _ = tx.send(ServerEvent::Stream(Box::new(arrived)));
        });
    }
}

// ---------------------------------------------------------------------------------
// Our client: `Outbound` for a planned tunnel.
// ---------------------------------------------------------------------------------

fn workload(json: serde_json::Value) -> Arc<Workload> {
    Arc::new(serde_json::from_value(json).expect("a workload"))
}

/// The source: deployment `client` in ns1 at 198.18.1.10, in us-east1-b.
fn source_workload() -> Arc<Workload> {
    workload(serde_json::json!({
        "uid": "Kubernetes//Pod/ns1/client-1", "name": "client-1", "namespace": "ns1", "addresses": ["198.18.1.10"],
        "tunnel": "HBONE", "identity": client_id().to_string(), "workload_type": "DEPLOYMENT", "workload_name": "client",
        "canonical_name": "client", "canonical_revision": "v1", "node": "node1",
        "locality": { "region": "us-east1", "zone": "us-east1-b" } }))
}

fn destination_workload(ip: &str) -> Arc<Workload> {
    workload(serde_json::json!({
        "uid": "Kubernetes//Pod/ns2/server-1", "name": "server-1", "namespace": "ns2", "addresses": [ip],
        "tunnel": "HBONE", "identity": server_id().to_string(), "node": "node2" }))
}

struct OurClient {
    outbound: Outbound,
    ca: Arc<LocalCa>,
}

fn our_client(ca: Arc<LocalCa>) -> OurClient {
    let certs = Arc::new(CertStore::new(Arc::new(LocalIssuer { ca: ca.clone(), validity: Duration::from_secs(3600) })));
    certs.set_identities([client_id()]);
    OurClient { outbound: Outbound::new(certs, TrustDomains::local(TD), None, "Kubernetes".into()), ca }
}

/// A tunnel through the raw server at `gateway` to `target`, accepting `identities`.
fn tunnel(gateway: SocketAddr, target: &str, identities: Vec<Identity>) -> Tunnel {
    let target: SocketAddr = target.parse().unwrap();
    Tunnel { gateway, target, source: source_workload(), destination: destination_workload(&target.ip().to_string()), identities }
}

/// Our client through a raw server presenting `ns2/sa/server`: what arrives for one
/// stream to `target` that writes `ping` and half-closes, and what came back.
async fn one_stream(target: &str, source_ip: &str, traceparent: Option<&str>) -> (Arrived, Vec<u8>) {
    let ca = Arc::new(LocalCa::generate(TD).unwrap());
    let mut server = raw_server(&issue(&ca, &server_id()), TLS13).await;
    let client = our_client(ca);
    let t = tunnel(server.addr, target, vec![server_id()]);
    let mut s = client.outbound.connect(&t, source_ip.parse().unwrap(), traceparent.map(str::to_owned)).await.expect("the raw server takes the stream");
    s.write_all(b"ping").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut back)).await.expect("the echo ends").expect("read the echo");
    (server.stream().await, back)
}

#[tokio::test]
async fn our_client_offers_tls13_aes_gcm_alpn_h2_and_no_sni_as_ztunnel() {
    let (a, _) = one_stream("198.18.2.10:8080", "198.18.1.10", None).await;
    // ClientHello: TLS 1.3 AES-GCM suites only, in ztunnel's order; ALPN exactly h2.
    assert_eq!(a.hello.suites, [CipherSuite::TLS13_AES_256_GCM_SHA384, CipherSuite::TLS13_AES_128_GCM_SHA256]);
    assert_eq!(a.hello.alpn, [b"h2".to_vec()]);
    // ring's groups, then X25519MLKEM768 for PQC-only servers (ztunnel's default
    // aws-lc build offers X25519MLKEM768 first).
    assert_eq!(a.hello.groups, [NamedGroup::X25519, NamedGroup::secp256r1, NamedGroup::secp384r1, NamedGroup::X25519MLKEM768]);
    // As ztunnel's client (enable_sni = false, tls/certificate.rs `outbound_connector`): no SNI.
    assert_eq!(a.hello.server_name.as_deref(), None);
    // Negotiated with a server that allows everything ring has.
    assert_eq!(a.tls.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(a.tls.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(a.tls.suite, Some(CipherSuite::TLS13_AES_256_GCM_SHA384));
    assert_eq!(a.tls.group, Some(NamedGroup::X25519));
}

#[tokio::test]
async fn our_client_presents_the_source_workloads_istio_shaped_certificate() {
    let (a, _) = one_stream("198.18.2.10:8080", "198.18.1.10", None).await;
    // The local CA signs directly: the chain is the leaf alone (istiod adds its intermediates).
    assert_eq!(a.tls.peer_chain.len(), 1);
    assert_eq!(leaf_shape(&a.tls.peer_chain[0]), istio_leaf(&client_id()));
}

#[tokio::test]
async fn our_client_sends_ztunnels_http2_settings_and_connection_window() {
    let (a, _) = one_stream("198.18.2.10:8080", "198.18.1.10", None).await;
    let wire = a.wire.lock().unwrap().clone();
    assert!(wire.starts_with(PREFACE), "the connection starts with the client preface");
    let frames = frames(&wire);
    // ztunnel's client builder (proxy/h2/client.rs `spawn_connection`) sends the same four.
    let want: BTreeMap<u16, u32> =
        [(ENABLE_PUSH, 0), (INITIAL_WINDOW_SIZE, 4 * 1024 * 1024), (MAX_FRAME_SIZE, 1024 * 1024), (MAX_HEADER_LIST_SIZE, 16 * 1024)].into();
    assert_eq!(first_settings(&frames), want);
    assert_eq!(connection_window_update(&frames), CONNECTION_WINDOW_INCREMENT);
    // Then the CONNECT's HEADERS on stream 1, without END_STREAM (the stream carries bytes).
    let headers = frames.iter().find(|f| f.kind == HEADERS).expect("HEADERS");
    assert_eq!((headers.stream, headers.flags & END_STREAM), (1, 0));
}

#[tokio::test]
async fn our_connect_is_authority_form_with_baggage_and_forwarded() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (a, _) = one_stream("198.18.2.10:8080", "198.18.1.10", Some(tp)).await;
    let r = &a.request;
    assert_eq!(r.method, Method::CONNECT);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.uri.authority().map(|a| a.as_str()), Some("198.18.2.10:8080"));
    assert!(r.uri.scheme().is_none() && r.uri.path_and_query().is_none(), "no :scheme or :path: {}", r.uri);
    let names: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["baggage", "forwarded", "traceparent"]);
    // DIFFERENCE: ztunnel appends cloud.region and cloud.availability_zone (from the
    // source's locality; empty values when unknown). Only read with enhanced baggage.
    assert_eq!(r.headers["baggage"], "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns1,k8s.deployment.name=client,service.name=client,service.version=v1");
    // DIFFERENCE: ztunnel writes `for="<source ip>:<source port>"` (quoted, with the
    // port; `;host=<service hostname>` when service-addressed) and its inbound never
    // reads `for=`.
    assert_eq!(r.headers["forwarded"], "for=198.18.1.10");
    assert_eq!(r.headers["traceparent"], tp);
}

#[tokio::test]
async fn without_a_trace_context_no_traceparent_is_sent() {
    // DIFFERENCE: ztunnel always sends one (a fresh `00-<trace>-<span>-00` per connection);
    // the data path passes None today.
    let (a, _) = one_stream("198.18.2.10:8080", "198.18.1.10", None).await;
    assert!(a.request.headers.get("traceparent").is_none());
}

#[tokio::test]
async fn an_ipv6_target_and_source_are_bracketed() {
    let (a, back) = one_stream("[fd00:18:2::10]:8080", "fd00:18:1::10", None).await;
    assert_eq!(a.request.uri.authority().map(|a| a.as_str()), Some("[fd00:18:2::10]:8080"));
    assert_eq!(a.request.headers["forwarded"], "for=\"[fd00:18:1::10]\"");
    assert_eq!(back, b"echo:ping");
}

#[tokio::test]
async fn bytes_cross_both_ways_and_shutdown_is_end_stream() {
    let (a, back) = one_stream("198.18.2.10:8080", "198.18.1.10", None).await;
    assert_eq!(a.data, b"ping");
    assert!(a.end_stream, "our shutdown() arrived as END_STREAM");
    assert_eq!(back, b"echo:ping", "the server's END_STREAM is our EOF");
    // We never PING, but answer ztunnel's keepalive PINGs (else it drops the connection after 20 s).
    assert!(eventually("the PONG", || *a.pong.lock().unwrap()).await, "the PING was answered");
    let wire = a.wire.lock().unwrap().clone();
    let frames = frames(&wire);
    let data: Vec<&Frame> = frames.iter().filter(|f| f.kind == DATA && f.stream == 1).collect();
    let payload: Vec<u8> = data.iter().flat_map(|f| f.payload.clone()).collect();
    assert_eq!(payload, b"ping");
    assert_eq!(data.last().map(|f| f.flags & END_STREAM), Some(END_STREAM), "the last DATA frame ends the stream");
    assert!(!frames.iter().any(|f| f.kind == RST_STREAM), "a clean half-close is not a reset");
}

#[tokio::test]
async fn ztunnels_refusal_statuses_come_back_as_errors_naming_them() {
    let ca = Arc::new(LocalCa::generate(TD).unwrap());
    let mut server = raw_server(&issue(&ca, &server_id()), TLS13).await;
    let client = our_client(ca);
    for (port, status, says) in [(1, 401, "authorization policy denied"), (2, 503, "could not reach the workload"), (3, 400, "400")] {
        let t = tunnel(server.addr, &format!("198.18.2.10:{port}"), vec![server_id()]);
        match client.outbound.connect(&t, "198.18.1.10".parse().unwrap(), None).await {
            Err(e @ HboneError::Status { .. }) => {
                let HboneError::Status { status: got, .. } = &e else { unreachable!() };
                assert_eq!(got.as_u16(), status);
                assert!(e.to_string().contains(says), "{e}");
            }
            other => panic!("port {port}: expected {status}, got {:?}", other.map(|_| ())),
        }
        assert_eq!(server.stream().await.request.uri.port_u16(), Some(port));
    }
    assert_eq!(client.outbound.connections(), 1, "refused streams leave the connection pooled");
}

#[tokio::test]
async fn our_client_refuses_a_tls12_only_server() {
    let ca = Arc::new(LocalCa::generate(TD).unwrap());
    let mut server = raw_server(&issue(&ca, &server_id()), TLS12).await;
    let client = our_client(ca);
    let e = client.outbound.connect(&tunnel(server.addr, "198.18.2.10:8080", vec![server_id()]), "198.18.1.10".parse().unwrap(), None).await.unwrap_err();
    assert!(matches!(e, HboneError::Dial { .. }), "{e}");
    let ServerEvent::Refused(why) = server.next().await else { panic!("a TLS 1.2 handshake succeeded") };
    assert!(why.contains("PeerIncompatible"), "{why}");
}

// ---------------------------------------------------------------------------------
// SAN checks of our client, as ztunnel makes them.
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn our_client_accepts_the_workload_identity_or_a_service_san_and_nothing_else() {
    let ca = Arc::new(LocalCa::generate(TD).unwrap());
    let expected = vec![server_id(), id("ns2", "service-san")];
    // A server with the service's SAN (second in the list) is accepted, as ztunnel's
    // `IdentityVerifier` accepts any of destination identity + service SANs.
    let mut alt = raw_server(&issue(&ca, &id("ns2", "service-san")), TLS13).await;
    let client = our_client(ca.clone());
    let mut s = client
        .outbound
        .connect(&tunnel(alt.addr, "198.18.2.10:8080", expected.clone()), "198.18.1.10".parse().unwrap(), None)
        .await
        .expect("a service SAN is accepted");
    s.shutdown().await.unwrap();
    alt.stream().await;

    // An impostor of the same mesh (trusted root, right trust domain) is refused at TLS.
    let mut impostor = raw_server(&issue(&client.ca, &id("ns2", "impostor")), TLS13).await;
    let e = client.outbound.connect(&tunnel(impostor.addr, "198.18.2.10:8080", expected), "198.18.1.10".parse().unwrap(), None).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, HboneError::Dial { .. }), "{text}");
    assert!(text.contains("spiffe://cluster.local/ns/ns2/sa/impostor is not the expected identity"), "{text}");
    let ServerEvent::Refused(why) = impostor.next().await else { panic!("the impostor got a stream") };
    assert!(why.contains("AlertReceived(CertificateUnknown)"), "{why}");
}

/// A leaf with these URI SANs, otherwise shaped as istiod's, signed by `ca`'s own key
/// (which [`LocalCa`] only issues with exactly one SAN).
fn leaf_with_sans(ca: &LocalCa, uris: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rcgen::{CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("ca-cert.pem"), dir.path().join("ca-key.pem"));
    ca.write_files(&cert_path, &key_path).unwrap();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(&cert_path).unwrap(), ca_key).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = params.signed_by(&key, &issuer).unwrap();
    (vec![leaf.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
}

#[tokio::test]
async fn a_server_certificate_with_two_uri_sans_is_refused_where_ztunnel_accepts_it() {
    // DIFFERENCE: ztunnel accepts when any URI SAN is expected; we require exactly one
    // URI SAN (an X.509-SVID has one), so this server is refused even though its first
    // SAN is the expected identity.
    let ca = Arc::new(LocalCa::generate(TD).unwrap());
    let (chain, key) = leaf_with_sans(&ca, &["spiffe://cluster.local/ns/ns2/sa/server", "spiffe://cluster.local/ns/ns2/sa/other"]);
    let mut server = raw_server_with(chain, key, &[ca.root_der()], TLS13).await;
    let client = our_client(ca);
    let e = client.outbound.connect(&tunnel(server.addr, "198.18.2.10:8080", vec![server_id()]), "198.18.1.10".parse().unwrap(), None).await.unwrap_err();
    assert!(e.to_string().contains("peer certificate carries no SPIFFE identity"), "{e}");
    assert!(matches!(server.next().await, ServerEvent::Refused(_)));
}

// ---------------------------------------------------------------------------------
// Our server: `Inbound`, fed over the workload API, against a ztunnel-shaped client.
// ---------------------------------------------------------------------------------

/// A node proxy's HBONE listener for the workload `ns2/server` at 127.0.0.1 and ::1,
/// with the given workload-API policies, and echo servers on both addresses.
struct OurServer {
    listener: SocketAddr,
    ca: Arc<LocalCa>,
    drain: Arc<Drain>,
    echo: SocketAddr,
    echo6: SocketAddr,
    // Dropped in this order: the workload-API client first, then the ADS server.
    _stop_xds: tokio::sync::oneshot::Sender<()>,
    _ads: AdsServer,
}

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any { type_url: type_url.to_owned(), value: m.encode_to_vec() }
}

async fn echo_on(ip: IpAddr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

async fn our_server(bind: IpAddr, policies: Vec<serde_json::Value>, trust: TrustDomains) -> OurServer {
    use xds_client::istio::security::Authorization;
    use xds_client::istio::workload::{address, Address, TunnelProtocol, Workload as XdsWorkload};
    use xds_client::type_url::{ADDRESS, AUTHORIZATION};

    let ca = Arc::new(LocalCa::generate(TD).unwrap());
    let ads = AdsServer::start();
    let uid = "Kubernetes//Pod/ns2/server-1";
    let w = Address {
        r#type: Some(address::Type::Workload(XdsWorkload {
            uid: uid.to_owned(),
            name: "server-1".to_owned(),
            namespace: "ns2".to_owned(),
            addresses: vec![vec![127, 0, 0, 1], Ipv6Addr::LOCALHOST.octets().to_vec()],
            service_account: "server".to_owned(),
            node: "node2".to_owned(),
            tunnel_protocol: TunnelProtocol::Hbone as i32,
            ..Default::default()
        })),
    };
    ads.set(ADDRESS, uid, any(ADDRESS, &w));
    let n = policies.len();
    for p in policies {
        let policy = xds_client::protojson::from_json::<Authorization>(p).expect("a valid Authorization").message;
        ads.set(AUTHORIZATION, &format!("{}/{}", policy.namespace, policy.name), any(AUTHORIZATION, &policy));
    }
    let live = Arc::new(LiveWorkloads::default());
    let xds = WorkloadXds::new(live.clone(), Arc::new(Metrics::new()));
    let node = xds_client::node::NodeIdentity {
        ips: vec!["127.0.0.1".into()],
        pod_name: "node-proxy-test".into(),
        namespace: "istio-system".into(),
        dns_domain: TD.into(),
        cluster_id: "Kubernetes".into(),
        node_name: "node2".into(),
        ..Default::default()
    };
    let config = xds_client::ads::AdsConfig {
        transport: xds_client::transport::TransportConfig::new(&ads.url()),
        node: xds_client::node::ztunnel(&node),
        protocol: xds_client::ads::Protocol::Delta,
        backoff: xds_client::ads::Backoff::default(),
    };
    let (stop_xds, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(xds.run(config, async move {
        let _ = stopped.await;
    }));
    eventually("the workload and its policies over the workload API", || {
        let view = live.load();
        (view.index.workload("", Ipv4Addr::LOCALHOST.into()).is_some() && view.model.policies.len() == n).then_some(())
    })
    .await;

    let certs = Arc::new(CertStore::new(Arc::new(LocalIssuer { ca: ca.clone(), validity: Duration::from_secs(3600) })));
    certs.set_identities([server_id()]);
    let inbound = Arc::new(Inbound::new(live, certs, trust, String::new(), None));
    let l = TcpListener::bind((bind, 0)).await.unwrap();
    let listener = l.local_addr().unwrap();
    let drain = Arc::new(Drain::default());
    inbound.run_on_thread(l, drain.clone()).expect("start the HBONE listener");
    OurServer {
        listener,
        ca,
        drain,
        echo: echo_on(Ipv4Addr::LOCALHOST.into()).await,
        echo6: echo_on(Ipv6Addr::LOCALHOST.into()).await,
        _stop_xds: stop_xds,
        _ads: ads,
    }
}

/// The ztunnel-shaped client's view of one connection.
struct RawClient {
    sender: h2::client::SendRequest<Bytes>,
    /// Every byte the server sent, decrypted.
    wire: Arc<Mutex<Vec<u8>>>,
    server_leaf: CertificateDer<'static>,
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
    /// ztunnel's client keepalive, for [`RawClient::ping`].
    ping_pong: Option<h2::PingPong>,
}

/// ztunnel's outbound TLS (tls/certificate.rs `outbound_connector`): TLS 1.3, ALPN h2,
/// the source certificate, no SNI, no resumption, the server checked against `expected`.
fn ztunnel_tls(
    cert: &Certified,
    roots: Vec<CertificateDer<'static>>,
    expected: &[Identity],
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
) -> Arc<rustls::ClientConfig> {
    let check = ZtunnelServerCheck { roots, expected: expected.iter().map(ToString::to_string).collect(), seen };
    let mut config = rustls::ClientConfig::builder_with_provider(ztunnel_provider())
        .with_protocol_versions(TLS13)
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(check))
        .with_client_auth_cert(cert.chain().to_vec(), cert.key().clone_key())
        .expect("client certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    Arc::new(config)
}

/// TLS as ztunnel dials it; the server name is a placeholder, as in ztunnel.
async fn ztunnel_dial(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    tokio_rustls::TlsConnector::from(config).connect(ServerName::IpAddress(Ipv4Addr::UNSPECIFIED.into()), tcp).await
}

/// A ztunnel-shaped client connection to `server` acting for `ns1/client`.
async fn ztunnel_client(server: &OurServer, addr: SocketAddr) -> RawClient {
    let seen = Arc::new(Mutex::new(None));
    let config = ztunnel_tls(&issue(&server.ca, &client_id()), vec![server.ca.root_der()], &[server_id()], seen.clone());
    let tls = ztunnel_dial(addr, config).await.expect("mTLS to our server");
    let (version, alpn) = (tls.get_ref().1.protocol_version(), tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
    let wire = Arc::new(Mutex::new(Vec::new()));
    // ztunnel's h2 client builder (proxy/h2/client.rs `spawn_connection`).
    let (sender, mut connection) = h2::client::Builder::new()
        .initial_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(1024 * 1024)
        .initial_max_send_streams(100)
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(4 * 1024 * 1024)
        .enable_push(false)
        .handshake::<_, Bytes>(Recorded { inner: tls, seen: wire.clone() })
        .await
        .expect("HTTP/2 handshake");
    let ping_pong = connection.ping_pong();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let server_leaf = seen.lock().unwrap().clone().expect("the server presented a certificate");
    RawClient { sender, wire, server_leaf, version, alpn, ping_pong }
}

/// ztunnel's `CONNECT` (outbound.rs `create_hbone_request`) to `target`.
fn ztunnel_connect(target: &str, forwarded: &str) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(target)
        .version(http::Version::HTTP_2)
        .header("baggage", ZTUNNEL_BAGGAGE)
        .header("forwarded", forwarded)
        .header("traceparent", ZTUNNEL_TRACEPARENT)
        .body(())
        .unwrap()
}

impl RawClient {
    /// Sends `request` (the stream left open) and waits for the response head.
    async fn send(&mut self, request: Request<()>) -> (Response<h2::RecvStream>, h2::SendStream<Bytes>) {
        std::future::poll_fn(|cx| self.sender.poll_ready(cx)).await.expect("the connection takes a stream");
        let (response, send) = self.sender.send_request(request, false).expect("send the request");
        (tokio::time::timeout(T, response).await.expect("a response").expect("a response, not a reset"), send)
    }

    /// The status a request is answered with, and whether that answer ended the stream.
    async fn status(&mut self, request: Request<()>) -> (u16, bool) {
        let (response, _send) = self.send(request).await;
        (response.status().as_u16(), response.body().is_end_stream())
    }

    fn frames(&self) -> Vec<Frame> {
        frames(&self.wire.lock().unwrap())
    }
}

/// Sends `ping`, half-closes, and reads the stream to its end.
async fn relay(response: Response<h2::RecvStream>, mut send: h2::SendStream<Bytes>) -> Result<Vec<u8>, h2::Error> {
    send.send_data(Bytes::from_static(b"ping"), true)?;
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(T, body.data()).await.expect("data or the end") {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    Ok(got)
}

fn ztunnel_forwarded(ip: &str) -> String {
    format!("for=\"{ip}:40000\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_answers_a_ztunnel_connect_with_200_and_relays() {
    let server = our_server(Ipv4Addr::LOCALHOST.into(), vec![], TrustDomains::local(TD)).await;
    let mut c = ztunnel_client(&server, server.listener).await;
    assert_eq!(c.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(c.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(leaf_shape(&c.server_leaf), istio_leaf(&server_id()), "the workload's own certificate, not the node's");

    let (response, send) = c.send(ztunnel_connect(&server.echo.to_string(), &ztunnel_forwarded("127.0.0.1"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.body().is_end_stream());
    // ztunnel adds `baggage` to the 200 only with enhanced baggage; we add nothing.
    assert!(response.headers().is_empty(), "{:?}", response.headers());
    assert_eq!(relay(response, send).await.expect("a clean end"), b"ping", "echoed, then END_STREAM after our half-close");
    // ztunnel's client keepalive PING is answered.
    let mut ping_pong = c.ping_pong.take().expect("ping_pong");
    tokio::time::timeout(T, ping_pong.ping(h2::Ping::opaque())).await.expect("a PONG in time").expect("a PONG");

    let frames = c.frames();
    // DIFFERENCE: ztunnel's server advertises 200 streams and a 64 KiB header list.
    let want: BTreeMap<u16, u32> =
        [(MAX_CONCURRENT_STREAMS, 100), (INITIAL_WINDOW_SIZE, 4 * 1024 * 1024), (MAX_FRAME_SIZE, 1024 * 1024), (MAX_HEADER_LIST_SIZE, 16 * 1024)].into();
    assert_eq!(first_settings(&frames), want);
    assert_eq!(connection_window_update(&frames), CONNECTION_WINDOW_INCREMENT);
    let data: Vec<&Frame> = frames.iter().filter(|f| f.kind == DATA && f.stream == 1).collect();
    assert_eq!(data.last().map(|f| f.flags & END_STREAM), Some(END_STREAM));
    assert!(!frames.iter().any(|f| f.kind == RST_STREAM));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_refuses_with_ztunnels_statuses_on_one_connection() {
    // DENY ns1/client on the echo's port, as istiod sends an L4 AuthorizationPolicy.
    let denied = echo_on(Ipv4Addr::LOCALHOST.into()).await;
    let deny = serde_json::json!({ "name": "deny-client", "namespace": "ns2", "scope": "NAMESPACE", "action": "DENY",
        "groups": [{ "rules": [
            { "matches": [{ "principals": [{ "exact": "cluster.local/ns/ns1/sa/client" }] }] },
            { "matches": [{ "destinationPorts": [denied.port()] }] } ] }] });
    let server = our_server(Ipv4Addr::LOCALHOST.into(), vec![deny], TrustDomains::local(TD)).await;
    let mut c = ztunnel_client(&server, server.listener).await;
    let fwd = ztunnel_forwarded("127.0.0.1");
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();

    // DIFFERENCE: ztunnel answers a non-CONNECT with 400 (inbound.rs
    // `build_inbound_request`, NonConnectMethod); we answer 405 as Istio's Go HBONE server does.
    let get = Request::builder().method(Method::GET).uri(format!("http://{}/", server.echo)).body(()).unwrap();
    assert_eq!(c.status(get).await, (405, true));
    // ztunnel accepts `<service hostname>:<port>` (double HBONE via an E/W gateway); we do not.
    assert_eq!(c.status(ztunnel_connect("reviews.bookinfo.svc.cluster.local:9080", &fwd)).await, (400, true));
    // An address of another workload than the one the connection reached: 400 in both.
    assert_eq!(c.status(ztunnel_connect(&format!("127.0.0.2:{}", server.echo.port()), &fwd)).await, (400, true));
    assert_eq!(c.status(ztunnel_connect(&denied.to_string(), &fwd)).await, (401, true));
    assert_eq!(c.status(ztunnel_connect(&dead.to_string(), &fwd)).await, (503, true));
    // Refusals are per stream: the connection still carries a good one.
    let (response, send) = c.send(ztunnel_connect(&server.echo.to_string(), &fwd)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(relay(response, send).await.expect("relayed"), b"ping");
    // On the wire, each refusal is the response HEADERS with END_STREAM, then (the
    // request side still being open) RST_STREAM(NO_ERROR), as h2 does for ztunnel's
    // `send_error` too (RFC 9113 §8.1); the good stream on 11 is neither; no GOAWAY.
    let frames = c.frames();
    let ends: Vec<(u8, u8, u32, Vec<u8>)> = frames
        .iter()
        .filter(|f| f.kind == RST_STREAM || (f.kind == HEADERS && f.flags & END_STREAM != 0))
        .map(|f| (f.kind, f.flags & END_STREAM, f.stream, if f.kind == RST_STREAM { f.payload.clone() } else { Vec::new() }))
        .collect();
    let want: Vec<(u8, u8, u32, Vec<u8>)> =
        [1, 3, 5, 7, 9].into_iter().flat_map(|s| [(HEADERS, END_STREAM, s, Vec::new()), (RST_STREAM, 0, s, vec![0, 0, 0, 0])]).collect();
    assert_eq!(ends, want);
    assert!(!frames.iter().any(|f| f.kind == GOAWAY), "refusals do not end the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_takes_a_bracketed_ipv6_authority() {
    let server = our_server(Ipv6Addr::LOCALHOST.into(), vec![], TrustDomains::local(TD)).await;
    let mut c = ztunnel_client(&server, server.listener).await;
    let target = format!("[::1]:{}", server.echo6.port());
    let (response, send) = c.send(ztunnel_connect(&target, &ztunnel_forwarded("[::1]"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(relay(response, send).await.expect("relayed"), b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_to_the_same_workloads_other_address_is_accepted_where_ztunnel_says_400() {
    // DIFFERENCE: ztunnel requires the `:authority` IP to be the connection's own
    // destination IP (inbound.rs `validate_destination`, IPMismatch -> 400); we accept
    // any address of the workload the connection reached (here: TCP to 127.0.0.1,
    // CONNECT to its ::1).
    let server = our_server(Ipv4Addr::LOCALHOST.into(), vec![], TrustDomains::local(TD)).await;
    let mut c = ztunnel_client(&server, server.listener).await;
    let (response, send) = c.send(ztunnel_connect(&format!("[::1]:{}", server.echo6.port()), &ztunnel_forwarded("127.0.0.1"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(relay(response, send).await.expect("relayed"), b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_source_no_workload_of_the_peers_identity_holds_is_not_believed() {
    // DENY the source address 198.18.9.9, which is not the TCP peer (127.0.0.1).
    let deny = serde_json::json!({ "name": "deny-ip", "namespace": "ns2", "scope": "NAMESPACE", "action": "DENY",
        "groups": [{ "rules": [{ "matches": [{ "sourceIps": [{ "address": "xhIJCQ==", "length": 32 }] }] }] }] });
    let server = our_server(Ipv4Addr::LOCALHOST.into(), vec![deny], TrustDomains::local(TD)).await;
    let mut c = ztunnel_client(&server, server.listener).await;
    let target = server.echo.to_string();
    // A claim is believed only for an address of a workload with the peer's proven
    // identity (node-proxy's inbound `source_address`); no workload holds 198.18.9.9,
    // so the TCP peer decides, in our format and in ztunnel's (quoted ip:port) alike.
    // (ztunnel itself never reads `for=`: its in-pod outbound makes the TCP peer the pod.)
    assert_eq!(c.status(ztunnel_connect(&target, "for=198.18.9.9")).await.0, 200);
    assert_eq!(c.status(ztunnel_connect(&target, "for=\"198.18.9.9:40000\"")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_goaway_and_the_open_stream_finishes() {
    let server = our_server(Ipv4Addr::LOCALHOST.into(), vec![], TrustDomains::local(TD)).await;
    let mut c = ztunnel_client(&server, server.listener).await;
    let (response, mut send) = c.send(ztunnel_connect(&server.echo.to_string(), &ztunnel_forwarded("127.0.0.1"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    send.send_data(Bytes::from_static(b"before "), false).unwrap();
    server.drain.start();
    let goaway = eventually("a GOAWAY", || c.frames().into_iter().find(|f| f.kind == GOAWAY)).await;
    assert_eq!(goaway.stream, 0);
    assert_eq!(&goaway.payload[4..8], &[0, 0, 0, 0], "NO_ERROR: a graceful drain");
    // The open stream goes on to its end.
    send.send_data(Bytes::from_static(b"after "), false).unwrap();
    assert_eq!(relay(response, send).await.expect("the stream survives the drain"), b"before after ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_is_a_stream_reset() {
    let server = our_server(Ipv4Addr::LOCALHOST.into(), vec![], TrustDomains::local(TD)).await;
    // A workload that resets every connection once it has read something.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rude = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut b = [0u8; 4];
            let _ = s.read_exact(&mut b).await;
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    let mut c = ztunnel_client(&server, server.listener).await;
    let (response, mut send) = c.send(ztunnel_connect(&rude.to_string(), &ztunnel_forwarded("127.0.0.1"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    send.send_data(Bytes::from_static(b"ping"), false).unwrap();
    let mut body = response.into_body();
    let end = tokio::time::timeout(T, body.data()).await.expect("an end");
    let e = match end {
        Some(Err(e)) => e,
        other => panic!("expected a reset, got {other:?}"),
    };
    // ztunnel's reader treats RST_STREAM(CANCEL) as a clean EOF (proxy/h2.rs).
    assert_eq!(e.reason(), Some(h2::Reason::CANCEL), "{e}");
    let rst = eventually("RST_STREAM", || c.frames().into_iter().find(|f| f.kind == RST_STREAM)).await;
    assert_eq!((rst.stream, rst.payload.as_slice()), (1, &[0u8, 0, 0, 8][..]), "CANCEL on stream 1");
}

// ---------------------------------------------------------------------------------
// SAN checks of our server.
// ---------------------------------------------------------------------------------

/// A ztunnel-shaped client acting for `identity` with `cert`: the error it meets on
/// its first read after the handshake (TLS 1.3 clients learn of a refused certificate there).
async fn refused(server: &OurServer, cert: &Certified) -> String {
    let config = ztunnel_tls(cert, vec![server.ca.root_der()], &[server_id()], Arc::new(Mutex::new(None)));
    let mut tls = match ztunnel_dial(server.listener, config).await {
        Ok(t) => t,
        Err(e) => return e.to_string(),
    };
    let _ = tls.write_all(PREFACE).await;
    let mut b = [0u8; 1];
    match tokio::time::timeout(T, tls.read(&mut b)).await.expect("an answer") {
        Ok(n) => panic!("the server accepted the client (read {n} bytes)"),
        Err(e) => e.to_string(),
    }
}

/// The mesh CA, loaded again to sign for `trust_domain`: the same trusted root.
fn same_root_other_domain(ca: &LocalCa, trust_domain: &str) -> LocalCa {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca-cert.pem"), dir.path().join("ca-key.pem"));
    ca.write_files(&cert, &key).unwrap();
    LocalCa::load(trust_domain, &cert, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_refuses_another_trust_domain_and_an_untrusted_root_at_tls() {
    let server = our_server(Ipv4Addr::LOCALHOST.into(), vec![], TrustDomains::local(TD)).await;
    // Signed by the trusted root, but spiffe://evil.domain/...: ztunnel's
    // TrustDomainVerifier refuses it too (it wants its own certificate's trust domain).
    let evil = same_root_other_domain(&server.ca, "evil.domain");
    let why = refused(&server, &issue(&evil, &Identity::new("evil.domain", "ns1", "client"))).await;
    assert!(why.contains("CertificateUnknown"), "{why}");
    let rogue = server.ca.untrusted_twin().unwrap();
    let why = refused(&server, &issue(&rogue, &client_id())).await;
    assert!(why.contains("UnknownCA"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_server_requires_a_client_certificate_and_tls13() {
    let server = our_server(Ipv4Addr::LOCALHOST.into(), vec![], TrustDomains::local(TD)).await;
    let check = || ZtunnelServerCheck { roots: vec![server.ca.root_der()], expected: vec![server_id().to_string()], seen: Arc::new(Mutex::new(None)) };
    // No client certificate: refused with certificate_required (ztunnel's verifier
    // also makes one mandatory).
    let mut config = rustls::ClientConfig::builder_with_provider(ztunnel_provider())
        .with_protocol_versions(TLS13)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(check()))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let mut tls = ztunnel_dial(server.listener, Arc::new(config)).await.expect("the server's half of the handshake");
    let _ = tls.write_all(PREFACE).await;
    let mut b = [0u8; 1];
    let e = tokio::time::timeout(T, tls.read(&mut b)).await.expect("an answer").expect_err("no certificate, no service");
    assert!(e.to_string().contains("CertificateRequired"), "{e}");
    // TLS 1.2 only: refused in the handshake.
    let cert = issue(&server.ca, &client_id());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(ring()))
        .with_protocol_versions(TLS12)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(check()))
        .with_client_auth_cert(cert.chain().to_vec(), cert.key().clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let e = ztunnel_dial(server.listener, Arc::new(config)).await.expect_err("TLS 1.2 is refused");
    assert!(e.to_string().contains("ProtocolVersion"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aliased_trust_domain_is_accepted_where_ztunnel_refuses_it() {
    // DIFFERENCE: with trustDomainAliases we accept the alias; ztunnel's server compares
    // with its own certificate's trust domain only.
    let server = our_server(Ipv4Addr::LOCALHOST.into(), vec![], TrustDomains::new(TD, ["old.domain"])).await;
    let old = same_root_other_domain(&server.ca, "old.domain");
    let seen = Arc::new(Mutex::new(None));
    let config = ztunnel_tls(&issue(&old, &Identity::new("old.domain", "ns1", "client")), vec![server.ca.root_der()], &[server_id()], seen);
    let tls = ztunnel_dial(server.listener, config).await.expect("mTLS");
    let (mut sender, connection) = h2::client::handshake(tls).await.expect("HTTP/2");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    std::future::poll_fn(|cx| sender.poll_ready(cx)).await.unwrap();
    let (response, _send) = sender.send_request(ztunnel_connect(&server.echo.to_string(), &ztunnel_forwarded("127.0.0.1")), false).unwrap();
    assert_eq!(tokio::time::timeout(T, response).await.expect("answered").expect("a response").status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------
// X25519MLKEM768 against an independent implementation: Go's crypto/tls offering and
// accepting nothing else, as ztunnel does under COMPLIANCE_POLICY=pqc (D15).

const GO_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/tls-pqc/main.go");

fn go() -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).map(|d| d.join("go"));
    on_path.chain([std::path::PathBuf::from("/usr/local/go/bin/go")]).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("go not found: apt-get install golang-go (Go >= 1.24, whose crypto/tls has X25519MLKEM768), or scripts/install-deps.sh --test")
    })
}

/// `identity`'s certificate and key from `ca`, as PEM files in `dir` for the Go peer.
fn pem_files(ca: &LocalCa, identity: &Identity, dir: &std::path::Path) -> (String, String) {
    let now = std::time::SystemTime::now();
    let issued = ca.issue_pem(identity, now - Duration::from_secs(60), now + Duration::from_secs(3600)).expect("the local CA issues");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, issued.chain_pem.concat()).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

/// The Go peer's JSON line about its handshake.
fn go_report(line: &str) -> serde_json::Value {
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("the Go peer's report {line:?}: {e}"))
}

/// `go run` compiles the peer first: generous.
const GO_T: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_pqc_only_client_completes_our_hbone_server_handshake() {
    let ca = LocalCa::generate(TD).unwrap();
    let config = node_proxy::tls::server_config(&issue(&ca, &server_id()), &[ca.root_der()], &TrustDomains::local(TD)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pem_files(&ca, &client_id(), dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let client = tokio::process::Command::new(go()).args(["run", GO_PEER, "client", &addr, &cert, &key]).kill_on_drop(true).output();
    let server = async {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await.expect("our server completes the handshake");
        let conn = tls.get_ref().1;
        (conn.negotiated_key_exchange_group().map(|g| g.name()), node_proxy::tls::peer_identity(conn))
    };
    let (out, (group, peer)) = tokio::time::timeout(GO_T, async { tokio::join!(client, server) }).await.expect("the Go client ran");
    let out = out.expect("go run");
    assert!(out.status.success(), "the Go client: {}", String::from_utf8_lossy(&out.stderr));
    let report = go_report(&String::from_utf8_lossy(&out.stdout));
    assert_eq!((report["group"].as_str(), report["alpn"].as_str()), (Some("X25519MLKEM768"), Some("h2")), "{report}");
    assert_eq!(group, Some(NamedGroup::X25519MLKEM768));
    assert_eq!(peer, Some(client_id()), "the client's SPIFFE identity, verified as for any other group");
}

#[tokio::test]
async fn our_hbone_client_completes_a_handshake_with_a_pqc_only_server() {
    use tokio::io::AsyncBufReadExt;
    let ca = LocalCa::generate(TD).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pem_files(&ca, &server_id(), dir.path());
    let mut server = tokio::process::Command::new(go())
        .args(["run", GO_PEER, "server", &cert, &key])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("go run");
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(GO_T, lines.next_line()).await.expect("the Go server starts").unwrap().expect("its port").trim().parse().unwrap();
    let config = node_proxy::tls::client_config(&issue(&ca, &client_id()), &[ca.root_der()], &TrustDomains::local(TD), vec![server_id()]).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = ServerName::try_from("server").unwrap();
    // Our client's key share is X25519; the server asks again (HelloRetryRequest) for
    // X25519MLKEM768, the only group it takes.
    let tls = tokio::time::timeout(T, tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await.unwrap().expect("our client completes the handshake");
    assert_eq!(tls.get_ref().1.negotiated_key_exchange_group().map(|g| g.name()), Some(NamedGroup::X25519MLKEM768));
    let report = tokio::time::timeout(T, lines.next_line()).await.unwrap().unwrap().expect("the Go server's report");
    let report = go_report(&report);
    assert_eq!((report["group"].as_str(), report["version"].as_str()), (Some("X25519MLKEM768"), Some("TLS 1.3")), "{report}");
    drop(tls);
    let _ = tokio::time::timeout(T, server.wait()).await;
}
