//! A test istiod CA: a real tonic gRPC server over TLS on 127.0.0.1 implementing
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` as istiod does for a
//! node proxy: it authenticates the bearer token (else `Unauthenticated`), checks the
//! `ImpersonatedIdentity` metadata against an allow-list (else `PermissionDenied`,
//! istiod's `CA_TRUSTED_NODE_ACCOUNTS` check), signs the CSR with its own mesh root
//! (ECDSA P-256, rcgen) honouring `validity_duration`, and answers `[leaf, root]`
//! (or `[leaf, intermediate, root]`, see [`TestCaServer::use_intermediate`]).
//!
//! Two roots, as in a cluster with a plugged-in CA: the *serving* root signs the
//! server's TLS certificate for `istiod.istio-system.svc` (what the client trusts to
//! dial istiod), the *mesh* root signs workload certificates. It can be told to
//! misbehave ([`Misbehaviour`]) or to stop (then its address refuses connections).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use istio_compat::ca::proto::{IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE_PATH, IMPERSONATED_IDENTITY, SERVICE_NAME};
use prost_types::value::Kind;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::pki::TestCa;

/// The name in the server's TLS certificate (give it as the client's domain name).
pub const SERVER_NAME: &str = "istiod.istio-system.svc";

/// How the server answers, beyond the happy path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Misbehaviour {
    #[default]
    None,
    /// Issue the certificate for this URI SAN instead of the CSR's.
    WrongSan(String),
    /// Answer an empty `cert_chain`.
    EmptyChain,
    /// Answer the leaf alone, without the root.
    LeafOnly,
    /// Fail every call with this code and message.
    Fail(tonic::Code, String),
}

/// What a call carried, as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub authorization: Option<String>,
    pub cluster_id: Option<String>,
    pub impersonated_identity: Option<String>,
    pub validity_duration: i64,
    /// The URI SANs of the CSR.
    pub csr_uris: Vec<String>,
}

struct Shared {
    token: Mutex<String>,
    allowed: Mutex<BTreeSet<String>>,
    misbehaviour: Mutex<Misbehaviour>,
    requests: Mutex<Vec<RecordedRequest>>,
    calls: AtomicU64,
    mesh_issuer: Issuer<'static, KeyPair>,
    mesh_root_pem: String,
    intermediate_issuer: Issuer<'static, KeyPair>,
    intermediate_pem: String,
    use_intermediate: std::sync::atomic::AtomicBool,
}

/// The running server; stops with the value.
pub struct TestCaServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    serving_root_pem: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestCaServer {
    /// Starts on an ephemeral port; accepts `Bearer <token>` and issues for the
    /// identities (SPIFFE URIs) in `allowed`.
    pub fn start(token: &str, allowed: &[&str]) -> TestCaServer {
        let serving_root = TestCa::new("istiod serving root");
        let serving = serving_root.server_identity(&[SERVER_NAME]);

        let mesh_key = KeyPair::generate().expect("generate the mesh root key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("mesh root parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::OrganizationName, "cluster.local");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let mesh_root = params.self_signed(&mesh_key).expect("self-sign the mesh root");
        let mesh_issuer = Issuer::new(params, mesh_key);

        let int_key = KeyPair::generate().expect("generate the intermediate key");
        let mut int_params = CertificateParams::new(Vec::<String>::new()).expect("intermediate parameters");
        int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        int_params.distinguished_name.push(DnType::OrganizationName, "cluster.local");
        int_params.distinguished_name.push(DnType::CommonName, "istiod intermediate");
        int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let intermediate = int_params.signed_by(&int_key, &mesh_issuer).expect("sign the intermediate");

        let shared = Arc::new(Shared {
            token: Mutex::new(token.to_owned()),
            allowed: Mutex::new(allowed.iter().map(|s| s.to_string()).collect()),
            misbehaviour: Mutex::new(Misbehaviour::None),
            requests: Mutex::new(Vec::new()),
            calls: AtomicU64::new(0),
            mesh_issuer,
            mesh_root_pem: mesh_root.pem(),
            intermediate_issuer: Issuer::new(int_params, int_key),
            intermediate_pem: intermediate.pem(),
            use_intermediate: std::sync::atomic::AtomicBool::new(false),
        });

        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let svc = CaService { shared: shared.clone() };
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("test CA runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind test CA server");
                tx.send(listener.local_addr().expect("local addr")).expect("report address");
                let tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(serving.cert_pem, serving.key_pem));
                let serve = tonic::transport::Server::builder()
                    .tls_config(tls)
                    .expect("test CA server TLS configuration")
                    .add_service(svc)
                    .serve_with_incoming(TcpListenerStream::new(listener));
                // Not a graceful shutdown: that would wait for the client's open
                // connection, whose task may run on the very runtime that is blocked in
                // our Drop. Dropping the server (and then this runtime) closes the
                // listener and every connection at once.
                tokio::select! {
                    _ = serve => {}
                    _ = stop_rx => {}
                }
            });
        });
        let addr = rx.recv().expect("test CA server started");
        TestCaServer { addr, shared, serving_root_pem: serving_root.cert_pem().to_owned(), shutdown: Some(stop_tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`; dial it with [`SERVER_NAME`] as the TLS name.
    pub fn address(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The root that signs the server's TLS certificate (what the client trusts).
    pub fn serving_root_pem(&self) -> &str {
        &self.serving_root_pem
    }

    /// The root that signs workload certificates (the mesh trust bundle).
    pub fn mesh_root_pem(&self) -> &str {
        &self.shared.mesh_root_pem
    }

    /// Calls that reached the service (whatever their outcome).
    pub fn request_count(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The token accepted from now on.
    pub fn set_token(&self, token: &str) {
        *lock(&self.shared.token) = token.to_owned();
    }

    pub fn allow(&self, identity: &str) {
        lock(&self.shared.allowed).insert(identity.to_owned());
    }

    /// Sign workload certificates with an intermediate (signed by the mesh root) and
    /// answer `[leaf, intermediate, root]`, as istiod with a plugged-in CA does.
    pub fn use_intermediate(&self, on: bool) {
        self.shared.use_intermediate.store(on, Ordering::SeqCst);
    }

    /// The intermediate of [`use_intermediate`](Self::use_intermediate).
    pub fn intermediate_pem(&self) -> &str {
        &self.shared.intermediate_pem
    }

    pub fn misbehave(&self, m: Misbehaviour) {
        *lock(&self.shared.misbehaviour) = m;
    }

    /// Stops serving; the address then refuses connections.
    pub fn stop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestCaServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn create_certificate(&self, req: Request<IstioCertificateRequest>) -> Result<Response<IstioCertificateResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let header = |name: &str| req.metadata().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let authorization = header("authorization");
        let cluster_id = header("clusterid");
        let body = req.get_ref();
        let impersonated = body.metadata.as_ref().and_then(|m| m.fields.get(IMPERSONATED_IDENTITY)).and_then(|v| match &v.kind {
            Some(Kind::StringValue(s)) => Some(s.clone()),
            _ => None,
        });
        let csr = CertificateSigningRequestParams::from_pem(&body.csr);
        let csr_uris = match &csr {
            Ok(c) => c
                .params
                .subject_alt_names
                .iter()
                .filter_map(|s| match s {
                    SanType::URI(u) => Some(u.as_str().to_owned()),
                    _ => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        lock(&self.requests).push(RecordedRequest {
            authorization: authorization.clone(),
            cluster_id,
            impersonated_identity: impersonated.clone(),
            validity_duration: body.validity_duration,
            csr_uris: csr_uris.clone(),
        });

        let misbehaviour = lock(&self.misbehaviour).clone();
        if let Misbehaviour::Fail(code, message) = &misbehaviour {
            return Err(Status::new(*code, message.clone()));
        }
        let expected = format!("Bearer {}", lock(&self.token));
        if authorization.as_deref() != Some(expected.as_str()) {
            return Err(Status::unauthenticated("authenticate failure: the bearer token is not valid"));
        }
        let Some(identity) = impersonated else {
            return Err(Status::invalid_argument("a node proxy must name the ImpersonatedIdentity"));
        };
        if !lock(&self.allowed).contains(&identity) {
            return Err(Status::permission_denied(format!("caller is not authorized to impersonate {identity}")));
        }
        let mut csr = csr.map_err(|e| Status::invalid_argument(format!("bad CSR: {e}")))?;
        if csr_uris != [identity.clone()] {
            return Err(Status::invalid_argument(format!("the CSR is for {csr_uris:?}, not the impersonated {identity}")));
        }

        let validity = if body.validity_duration > 0 { Duration::from_secs(body.validity_duration.unsigned_abs()) } else { Duration::from_secs(86_400) };
        let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        csr.params.not_before = now;
        csr.params.not_after = now + validity;
        csr.params.distinguished_name = DistinguishedName::new();
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        if let Misbehaviour::WrongSan(san) = &misbehaviour {
            let uri = san.clone().try_into().map_err(|e| Status::internal(format!("bad test SAN: {e}")))?;
            csr.params.subject_alt_names = vec![SanType::URI(uri)];
        }
        let via_intermediate = self.use_intermediate.load(Ordering::SeqCst);
        let issuer = if via_intermediate { &self.intermediate_issuer } else { &self.mesh_issuer };
        let leaf = csr.signed_by(issuer).map_err(|e| Status::internal(format!("signing failed: {e}")))?.pem();
        let cert_chain = match misbehaviour {
            Misbehaviour::EmptyChain => vec![],
            Misbehaviour::LeafOnly => vec![leaf],
            _ if via_intermediate => vec![leaf, self.intermediate_pem.clone(), self.mesh_root_pem.clone()],
            _ => vec![leaf, self.mesh_root_pem.clone()],
        };
        Ok(Response::new(IstioCertificateResponse { cert_chain, root_cert: None }))
    }
}

/// The hand-written tonic service (the messages are istio-compat's hand-written prost
/// types; there is no generated server).
#[derive(Clone)]
struct CaService {
    shared: Arc<Shared>,
}

struct CreateCertificate(Arc<Shared>);

impl tonic::server::UnaryService<IstioCertificateRequest> for CreateCertificate {
    type Response = IstioCertificateResponse;
    type Future = Ready<Result<Response<IstioCertificateResponse>, Status>>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        ready(self.0.create_certificate(request))
    }
}

impl tonic::server::NamedService for CaService {
    const NAME: &'static str = SERVICE_NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for CaService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != CREATE_CERTIFICATE_PATH {
            return Box::pin(async { Ok(Status::unimplemented("only CreateCertificate").into_http()) });
        }
        let shared = self.shared.clone();
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<IstioCertificateResponse, IstioCertificateRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(CreateCertificate(shared), req).await)
        })
    }
}
