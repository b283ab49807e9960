//! The client of istiod's CA (`istio.v1.auth.IstioCertificateService`), as ztunnel
//! uses it: one certificate per workload identity the node proxy acts for.
//!
//! Owns: the wire types ([`proto`]), the CSR and the checks on istiod's answer
//! ([`WorkloadCert`]), the gRPC call over TLS with the bearer token and the
//! `ImpersonatedIdentity` metadata ([`CaClient`]), and the retry delays after a failed
//! fetch ([`Backoff`]). Does not own scheduling (when to refresh, which identities
//! to keep) nor the TLS configuration the certificates end up in.
//!
//! What istiod must allow: a node proxy asks for certificates of *other* service
//! accounts, so istiod's `CA_TRUSTED_NODE_ACCOUNTS` must list this proxy's
//! `namespace/service-account` (as it lists `istio-system/ztunnel`), otherwise every
//! request fails with [`CaError::ImpersonationDenied`].

mod backoff;
mod cert;
mod client;
pub mod proto;

pub use backoff::Backoff;
pub use cert::{split_chain, WorkloadCert};
pub use client::{CaClient, CaClientConfig};

use std::path::PathBuf;

/// What went wrong, and what to check.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid CA configuration: {reason}")]
    Config { reason: String },
    #[error("cannot reach istiod's CA at {address}: {cause}{hint}")]
    Unreachable { address: String, cause: String, hint: &'static str },
    #[error(
        "cannot read the token {path}: {reason} (the projected service-account token with audience istio-ca, usually /var/run/secrets/tokens/istio-token)"
    )]
    Token { path: PathBuf, reason: String },
    #[error("istiod rejected the token at {path}: {message} (check the token audience istio-ca and that it has not expired)")]
    Unauthenticated { path: String, message: String },
    #[error("istiod refused to issue for {identity}: {message} (its CA_TRUSTED_NODE_ACCOUNTS must list this proxy's service account)")]
    ImpersonationDenied { identity: String, message: String },
    #[error("istiod's CA did not answer within {timeout_secs}s for {identity}")]
    Timeout { identity: String, timeout_secs: u64 },
    #[error("istiod's CA failed the request for {identity}: {code:?}: {message}")]
    Rpc { identity: String, code: tonic::Code, message: String },
    #[error("cannot build the CSR for {identity}: {reason}")]
    Csr { identity: String, reason: String },
    #[error("istiod returned an empty certificate chain")]
    EmptyResponse,
    #[error("istiod returned an unusable certificate chain: {reason}")]
    BadResponse { reason: String },
    #[error("certificate {index} of istiod's response is invalid: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error("istiod issued a certificate for {got:?}, not the requested {requested}")]
    SanMismatch { requested: String, got: Vec<String> },
    #[error("istiod's certificate for {identity} is not for the key we sent")]
    KeyMismatch { identity: String },
    #[error("istiod's certificate for {identity} does not verify: {reason}")]
    UntrustedChain { identity: String, reason: String },
}

#[cfg(test)]
mod tests;
