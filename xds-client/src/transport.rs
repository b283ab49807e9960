//! The gRPC channel to istiod: plaintext (:15010) or TLS trusting Istio's root
//! certificate (:15012), the projected service-account token as a bearer token, the
//! `clusterid` header, keepalives, message size limits, and errors that say what to check.

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// `https://istiod.istio-system.svc:15012` or `http://…:15010`.
    pub address: String,
    /// Istio's root certificate (PEM) to trust for `https` addresses.
    pub root_cert: Option<PathBuf>,
    /// The name to verify in istiod's certificate (default: the address's host).
    pub server_name: Option<String>,
    /// A projected service-account token file, sent as `authorization: Bearer`.
    pub token_path: Option<PathBuf>,
    /// Sent as the `clusterid` header (Istio's multi-cluster ID).
    pub cluster_id: Option<String>,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    pub max_message_size: usize,
}

impl TransportConfig {
    pub fn new(address: &str) -> Self {
        TransportConfig {
            address: address.to_owned(),
            root_cert: None,
            server_name: None,
            token_path: None,
            cluster_id: None,
            connect_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(30),
            // istiod pushes of large meshes exceed tonic's 4 MiB default.
            max_message_size: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid xDS address {address:?}: {reason} (expected e.g. https://istiod.istio-system.svc:15012)")]
    Address { address: String, reason: String },
    #[error("cannot read Istio's root certificate {path}: {source} (mounted at /var/run/secrets/istio/root-cert.pem in Istio's deployments)")]
    RootCert { path: PathBuf, source: std::io::Error },
    #[error("cannot read the token {path}: {source} (the projected service-account token, usually /var/run/secrets/tokens/istio-token)")]
    Token { path: PathBuf, source: std::io::Error },
    #[error("cannot connect to istiod at {address}: {cause}{hint}")]
    Connect { address: String, cause: String, hint: &'static str },
}

/// Opens the channel (connecting eagerly, so failures surface here with a hint).
pub async fn connect(config: &TransportConfig) -> Result<Channel, TransportError> {
    let address_err = |reason: String| TransportError::Address { address: config.address.clone(), reason };
    let mut endpoint = Endpoint::from_shared(config.address.clone())
        .map_err(|e| address_err(e.to_string()))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.keepalive)
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if config.address.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(path) = &config.root_cert {
            let pem = std::fs::read(path).map_err(|source| TransportError::RootCert { path: path.clone(), source })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(name) = &config.server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| address_err(e.to_string()))?;
    }
    endpoint.connect().await.map_err(|e| {
        let cause = error_chain(&e);
        TransportError::Connect { address: config.address.clone(), hint: connect_hint(&cause), cause }
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn connect_hint(cause: &str) -> &'static str {
    let c = cause.to_ascii_lowercase();
    if c.contains("lookup") || c.contains("resolve") || c.contains("name or service not known") || c.contains("dns") {
        " (DNS: check --xds-address and that the cluster DNS resolves istiod)"
    } else if c.contains("certificate") || c.contains("tls") || c.contains("handshake") || c.contains("unknownissuer") {
        " (TLS: check --xds-root-cert is Istio's root certificate and the server name matches istiod's certificate)"
    } else if c.contains("refused") {
        " (nothing listens there: is istiod running, and is the port 15012 for TLS or 15010 for plaintext?)"
    } else if c.contains("timed out") || c.contains("timeout") {
        " (no answer: a NetworkPolicy or firewall may block the port)"
    } else {
        ""
    }
}

/// Adds the bearer token and cluster id to every call.
#[derive(Clone, Debug)]
pub struct Auth {
    token: Option<AsciiMetadataValue>,
    cluster_id: Option<AsciiMetadataValue>,
}

/// The interceptor for one connection (the token file is re-read per connection:
/// projected tokens rotate).
pub fn interceptor(config: &TransportConfig) -> Result<Auth, TransportError> {
    let token = match &config.token_path {
        Some(path) => {
            let t = std::fs::read_to_string(path).map_err(|source| TransportError::Token { path: path.clone(), source })?;
            let v = MetadataValue::try_from(format!("Bearer {}", t.trim())).map_err(|_| TransportError::Token {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the token is not valid header text"),
            })?;
            Some(v)
        }
        None => None,
    };
    let cluster_id = config.cluster_id.as_ref().and_then(|c| MetadataValue::try_from(c.as_str()).ok());
    Ok(Auth { token, cluster_id })
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
        if let Some(c) = &self.cluster_id {
            req.metadata_mut().insert("clusterid", c.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_what_to_check() {
        assert!(connect_hint("dns error: failed to lookup address information").contains("--xds-address"));
        assert!(connect_hint("invalid peer certificate: UnknownIssuer").contains("--xds-root-cert"));
        assert!(connect_hint("Connection refused (os error 111)").contains("15012"));
    }

    #[test]
    fn token_is_a_bearer_header() {
        let dir = std::env::temp_dir().join(format!("np-token-{}", std::process::id()));
        std::fs::write(&dir, "abc.def\n").unwrap();
        let mut cfg = TransportConfig::new("http://127.0.0.1:1");
        cfg.token_path = Some(dir.clone());
        cfg.cluster_id = Some("Kubernetes".into());
        let mut auth = interceptor(&cfg).unwrap();
        let req = tonic::service::Interceptor::call(&mut auth, tonic::Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer abc.def");
        assert_eq!(req.metadata().get("clusterid").unwrap(), "Kubernetes");
        let _ = std::fs::remove_file(dir);
        cfg.token_path = Some("/nonexistent/token".into());
        assert!(interceptor(&cfg).unwrap_err().to_string().contains("projected service-account token"));
    }
}
