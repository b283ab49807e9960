//! The gRPC call to istiod's CA: TLS trusting istiod's root (:15012), the projected
//! token as `authorization: Bearer`, the `clusterid` header, and the
//! `ImpersonatedIdentity` metadata naming the workload the certificate is for.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use prost_types::value::Kind;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::cert::{self, WorkloadCert};
use super::proto::{IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE_PATH, IMPERSONATED_IDENTITY};
use super::CaError;
use crate::model::workload::Identity;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// `https://istiod.istio-system.svc:15012`.
    pub address: String,
    /// Istio's root certificate (PEM), which signs istiod's serving certificate.
    pub root_cert_pem: String,
    /// The projected service-account token (audience `istio-ca`), re-read on every
    /// request: the kubelet rotates it.
    pub token_path: Option<PathBuf>,
    /// Sent as the `clusterid` header (Istio's multi-cluster ID); empty: not sent.
    pub cluster_id: String,
    /// Requested validity (istiod may shorten it); zero: istiod's default.
    pub validity: Duration,
    /// The name to verify in istiod's certificate (default: the address's host).
    pub domain_name: Option<String>,
}

/// Fetches workload certificates from istiod. Cheap to clone; the channel connects
/// on first use and reconnects by itself.
#[derive(Clone, Debug)]
pub struct CaClient {
    cfg: CaClientConfig,
    channel: Channel,
}

impl CaClient {
    /// Checks the configuration and prepares a lazy channel (nothing is dialled here,
    /// so a proxy can start while istiod is still down). Must run inside a Tokio
    /// runtime.
    pub async fn new(cfg: CaClientConfig) -> Result<CaClient, CaError> {
        let config_err = |reason: String| CaError::Config { reason };
        if !cfg.address.starts_with("https://") {
            return Err(config_err(format!(
                "CA address {:?} must be https:// (istiod serves its CA only over TLS, e.g. https://istiod.istio-system.svc:15012)",
                cfg.address
            )));
        }
        if cert::pem_blocks(&cfg.root_cert_pem).is_empty() {
            return Err(config_err("the root certificate for istiod's CA holds no PEM certificate (Istio's root, root-cert.pem)".into()));
        }
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&cfg.root_cert_pem));
        if let Some(name) = &cfg.domain_name {
            tls = tls.domain_name(name.clone());
        }
        let endpoint = Endpoint::from_shared(cfg.address.clone())
            .map_err(|e| config_err(format!("invalid CA address {:?}: {e}", cfg.address)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .tls_config(tls)
            .map_err(|e| config_err(format!("TLS configuration for {}: {}", cfg.address, error_chain(&e))))?;
        if let Some(path) = &cfg.token_path {
            if path.as_os_str().is_empty() {
                return Err(config_err("the token path is empty".into()));
            }
        }
        if !cfg.cluster_id.is_empty() && MetadataValue::try_from(cfg.cluster_id.as_str()).is_err() {
            return Err(config_err(format!("the cluster id {:?} is not valid header text", cfg.cluster_id)));
        }
        let channel = endpoint.connect_lazy();
        Ok(CaClient { cfg, channel })
    }

    pub fn config(&self) -> &CaClientConfig {
        &self.cfg
    }

    /// Generates a key and CSR for `identity`, asks istiod to sign it on behalf of
    /// that identity, and checks what comes back.
    pub async fn fetch(&self, identity: &Identity) -> Result<WorkloadCert, CaError> {
        let request = cert::certificate_request(identity)?;
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr: request.csr_pem.clone(),
            validity_duration: i64::try_from(self.cfg.validity.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(prost_types::Struct {
                fields: BTreeMap::from([(IMPERSONATED_IDENTITY.to_owned(), prost_types::Value { kind: Some(Kind::StringValue(identity.to_string())) })]),
            }),
        });
        req.set_timeout(REQUEST_TIMEOUT);
        if let Some(token) = self.bearer_token()? {
            req.metadata_mut().insert("authorization", token);
        }
        if !self.cfg.cluster_id.is_empty() {
            if let Ok(v) = MetadataValue::try_from(self.cfg.cluster_id.as_str()) {
                req.metadata_mut().insert("clusterid", v);
            }
        }

        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| self.unreachable(error_chain(&e)))?;
        let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE_PATH);
        let codec = tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
        let response = grpc.unary(req, path, codec).await.map_err(|s| self.status_error(s, identity))?;
        let response = response.into_inner();
        tracing::debug!(%identity, certificates = response.cert_chain.len(), "istiod issued a certificate");
        cert::from_response(identity, request, response)
    }

    /// `Bearer <token>`, the token read now (it rotates).
    fn bearer_token(&self) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>, CaError> {
        let Some(path) = &self.cfg.token_path else { return Ok(None) };
        let token_err = |reason: String| CaError::Token { path: path.clone(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| token_err(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(token_err("the file is empty".into()));
        }
        MetadataValue::try_from(format!("Bearer {token}")).map(Some).map_err(|_| token_err("the token is not valid header text".into()))
    }

    fn unreachable(&self, cause: String) -> CaError {
        CaError::Unreachable { address: self.cfg.address.clone(), hint: connect_hint(&cause), cause }
    }

    fn status_error(&self, status: tonic::Status, identity: &Identity) -> CaError {
        use tonic::Code;
        let message = status.message().to_owned();
        // A connection that breaks under a call (istiod restarting) surfaces as Unknown
        // with tonic's transport error as the source: the same condition as Unavailable.
        let transport_failure =
            status.code() == Code::Unknown && std::error::Error::source(&status).is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
        if status.code() == Code::Unavailable || transport_failure {
            let cause = match std::error::Error::source(&status).map(error_chain) {
                Some(chain) if chain.contains(&message) => chain,
                Some(chain) => format!("{message}: {chain}"),
                None => message,
            };
            return self.unreachable(cause);
        }
        match status.code() {
            // istiod answers a refused impersonation with Unauthenticated ("request
            // impersonation authentication failure"), not PermissionDenied: tell them apart
            // by the message, or the operator would chase a token problem.
            Code::Unauthenticated if message.to_ascii_lowercase().contains("impersonation") => {
                CaError::ImpersonationDenied { identity: identity.to_string(), message }
            }
            Code::Unauthenticated => CaError::Unauthenticated {
                path: match &self.cfg.token_path {
                    Some(p) => p.display().to_string(),
                    None => "<none: no token configured>".into(),
                },
                message,
            },
            Code::PermissionDenied => CaError::ImpersonationDenied { identity: identity.to_string(), message },
            Code::DeadlineExceeded => CaError::Timeout { identity: identity.to_string(), timeout_secs: REQUEST_TIMEOUT.as_secs() },
            // tonic reports its own client-side timeout as Cancelled("Timeout expired").
            Code::Cancelled if message.to_ascii_lowercase().contains("timeout") => {
                CaError::Timeout { identity: identity.to_string(), timeout_secs: REQUEST_TIMEOUT.as_secs() }
            }
            code => CaError::Rpc { identity: identity.to_string(), code, message },
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn connect_hint(cause: &str) -> &'static str {
    let c = cause.to_ascii_lowercase();
    if c.contains("dns") || c.contains("lookup") || c.contains("resolve") || c.contains("name or service not known") {
        " (DNS: check the CA address and that the cluster DNS resolves istiod)"
    } else if c.contains("certificate") || c.contains("tls") || c.contains("handshake") || c.contains("unknownissuer") {
        " (TLS: check the root certificate is Istio's root and the server name matches istiod's certificate)"
    } else if c.contains("refused") {
        " (nothing listens there: is istiod running, and is the port 15012?)"
    } else if c.contains("broken pipe") || c.contains("reset") || c.contains("closed") {
        " (the connection to istiod broke: is istiod restarting? retry with backoff)"
    } else if c.contains("timed out") || c.contains("timeout") {
        " (no answer: a NetworkPolicy or firewall may block port 15012)"
    } else {
        ""
    }
}
