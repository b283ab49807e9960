//! Authorization decisions, as Istio's data planes take them.
//!
//! Owns: [`l4`], the decision ztunnel takes for a connection from the workload API's
//! `istio.security.Authorization` policies (PeerAuthentication reaches it the same
//! way, converted by istiod into DENY policies on unauthenticated peers). Later: the
//! HTTP RBAC filters' evaluation. Does not own enforcement (the proxy closes the
//! connection or answers 401/403) or where the policies come from.

pub mod l4;
