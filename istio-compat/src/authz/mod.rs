//! Authorization decisions, as Istio's data planes take them.
//!
//! Owns: [`l4`], the decision ztunnel takes for a connection from the workload API's
//! `istio.security.Authorization` policies (PeerAuthentication reaches it the same
//! way, converted by istiod into DENY policies on unauthenticated peers); [`rbac`],
//! Envoy's HTTP and network RBAC filters as istiod emits them for sidecars and
//! waypoints (model, translation, evaluation). Does not own enforcement (the proxy closes the
//! connection or answers 401/403) or where the policies come from.

pub mod ext_authz;
pub mod l4;
pub mod rbac;
