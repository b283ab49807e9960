//! The node's L4 view of the mesh, as Istio's ztunnel holds it: workloads, services
//! and L4 authorization policies from Istio's workload API (`istio.workload.Address`,
//! `istio.security.Authorization`, sent by istiod over Delta ADS).
//!
//! Owns the types and the lookups the data path needs (workload by IP, service by
//! VIP and port, a service's endpoints, the policies that apply to a workload).
//! Does not own: the translation from the protos or from ztunnel's `/config_dump`
//! (`translate::workload`), policy evaluation, or certificates.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::common::Name;

/// The trust domain a workload has when istiod elides it.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The service account a workload has when istiod elides it.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Port of HBONE (HTTP/2 CONNECT in mTLS) on every node proxy and waypoint.
pub const HBONE_PORT: u16 = 15008;

/// `service_port -> target_port`. A target port of 0 means "the workload's own
/// mapping" (a named target port istiod resolves per workload).
pub type PortMap = BTreeMap<u16, u16>;

/// An IP address on a network. The empty network is the default one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetworkAddress {
    pub network: Name,
    pub address: IpAddr,
}

impl NetworkAddress {
    pub fn new(network: &str, address: IpAddr) -> Self {
        NetworkAddress { network: network.into(), address }
    }
}

/// `network/IP`, as istiod names address aliases and ztunnel prints them.
impl fmt::Display for NetworkAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.address)
    }
}

impl FromStr for NetworkAddress {
    type Err = std::net::AddrParseError;

    /// `network/IP` or a bare IP (default network).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((network, ip)) => Ok(NetworkAddress { network: network.into(), address: ip.parse()? }),
            None => Ok(NetworkAddress { network: "".into(), address: s.parse()? }),
        }
    }
}

impl Serialize for NetworkAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetworkAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e| serde::de::Error::custom(format!("{s:?} is not network/IP: {e}")))
    }
}

/// A service by namespace and hostname: `namespace/hostname`, the key istiod gives
/// services on the Delta stream and workloads in their `services` map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamespacedHostname {
    pub namespace: Name,
    pub hostname: Name,
}

impl NamespacedHostname {
    pub fn key(&self) -> Name {
        service_key(&self.namespace, &self.hostname)
    }
}

impl fmt::Display for NamespacedHostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.hostname)
    }
}

/// `namespace/hostname`.
pub fn service_key(namespace: &str, hostname: &str) -> Name {
    format!("{namespace}/{hostname}").into()
}

/// A SPIFFE identity `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
/// Serialized as that URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: Name,
    pub namespace: Name,
    pub service_account: Name,
}

impl Identity {
    /// Fills in Istio's defaults for an elided trust domain or service account.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Identity {
            trust_domain: if trust_domain.is_empty() { DEFAULT_TRUST_DOMAIN } else { trust_domain }.into(),
            namespace: namespace.into(),
            service_account: if service_account.is_empty() { DEFAULT_SERVICE_ACCOUNT } else { service_account }.into(),
        }
    }

    /// Parses `spiffe://td/ns/NS/sa/SA`.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (td, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) if !td.is_empty() && !sa.is_empty() => {
                Some(Identity { trust_domain: td.into(), namespace: ns.into(), service_account: sa.into() })
            }
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl Serialize for Identity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Identity::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not spiffe://<trust domain>/ns/<namespace>/sa/<service account>")))
    }
}

/// How connections to a workload are carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TunnelProtocol {
    /// Plain TCP to the workload's address.
    #[default]
    None,
    /// HTTP/2 CONNECT in mTLS to port 15008 of the workload's node proxy.
    Hbone,
}

/// Where a gateway (waypoint or east-west gateway) is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayAddress {
    pub destination: GatewayDestination,
    /// Port for HBONE (mTLS) connections to it.
    pub hbone_mtls_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayDestination {
    Address(NetworkAddress),
    /// A service, looked up by `namespace/hostname`.
    Hostname(NamespacedHostname),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadType {
    #[default]
    Deployment,
    Cronjob,
    Pod,
    Job,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// Whether a workload's addresses identify it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NetworkMode {
    #[default]
    Standard,
    /// The address is the node's, shared by many workloads: never look a workload up by it.
    HostNetwork,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locality {
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub region: Name,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub zone: Name,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub subzone: Name,
}

/// A workload (a waypoint, a gateway) that reads tunnel information itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplicationTunnel {
    pub protocol: ApplicationTunnelProtocol,
    /// After the last hop, send to this port instead of the target port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApplicationTunnelProtocol {
    /// Bytes are copied unchanged.
    None,
    /// A PROXY protocol header (with the source's SPIFFE identity as TLV 0xD0) comes first.
    Proxy,
}

/// One workload (a pod, a VM, a WorkloadEntry): an endpoint of services.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Globally unique; e.g. `Kubernetes//Pod/bookinfo/ratings-v1-6484c4d9bb-mdxm5`.
    pub uid: Name,
    #[serde(default)]
    pub name: Name,
    #[serde(default)]
    pub namespace: Name,
    /// Its IPs, all on `network`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// Resolved by DNS when there is no address (or for direct access to a headless endpoint).
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub hostname: Name,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub network: Name,
    #[serde(default)]
    pub tunnel: TunnelProtocol,
    pub identity: Identity,
    /// Every connection to it goes through this waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    /// Reached from other networks through this east-west gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_gateway: Option<GatewayAddress>,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub node: Name,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub cluster_id: Name,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub canonical_name: Name,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub canonical_revision: Name,
    #[serde(default)]
    pub workload_type: WorkloadType,
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub workload_name: Name,
    /// It takes tunnel traffic itself: do not tunnel to it again or un-tunnel for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub native_tunnel: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_tunnel: Option<ApplicationTunnel>,
    /// The services it is an endpoint of (`namespace/hostname`), with its own port mapping.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<Name, PortMap>,
    /// Selector-based policies (`namespace/name`) that apply to it; namespace and
    /// global policies apply by their scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<Name>,
    #[serde(default)]
    pub status: WorkloadStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    #[serde(default)]
    pub network_mode: NetworkMode,
    /// Relative share of traffic; 1 unless istiod says otherwise.
    #[serde(default = "one")]
    pub capacity: u32,
}

fn one() -> u32 {
    1
}

impl Workload {
    /// The workload's addresses with their network.
    pub fn network_addresses(&self) -> impl Iterator<Item = NetworkAddress> + '_ {
        self.addresses.iter().map(|ip| NetworkAddress { network: self.network.clone(), address: *ip })
    }

    /// Whether it can be found by `(network, ip)`: not when its IP is the host's.
    pub fn has_address(&self, network: &str, ip: IpAddr) -> bool {
        self.network_mode == NetworkMode::Standard && &*self.network == network && self.addresses.contains(&ip)
    }
}

/// One port of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub service_port: u16,
    /// 0: each workload says (see [`Workload::services`]).
    pub target_port: u16,
}

/// How endpoints are chosen among a service's workloads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadBalancing {
    /// Scopes to keep traffic within, most important first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing_preferences: Vec<LocalityScope>,
    #[serde(default)]
    pub mode: LoadBalancingMode,
    #[serde(default)]
    pub health_policy: HealthPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LocalityScope {
    Region,
    Zone,
    Subzone,
    Node,
    Cluster,
    Network,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancingMode {
    /// Unspecified: no preference.
    #[default]
    Standard,
    /// Only endpoints that meet every routing preference.
    Strict,
    /// Prefer endpoints that meet every preference, then fewer, then any.
    Failover,
    /// No endpoint selection: connect to the original destination.
    Passthrough,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthPolicy {
    #[default]
    OnlyHealthy,
    AllowAll,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IpFamilies {
    /// Inferred from the addresses.
    #[default]
    Automatic,
    Ipv4Only,
    Ipv6Only,
    Dual,
}

/// A service: a set of workloads reached together, at its VIPs or by hostname.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: Name,
    pub namespace: Name,
    /// FQDN, e.g. `reviews.default.svc.cluster.local`.
    pub hostname: Name,
    /// Empty for a headless service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<NetworkAddress>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Every connection to it goes through this waypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<GatewayAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    #[serde(default)]
    pub ip_families: IpFamilies,
    /// SANs to verify instead of each workload's identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<Name>,
    /// Seconds since the Unix epoch; of services sharing a hostname, the oldest wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
}

impl Service {
    /// `namespace/hostname`: its resource name.
    pub fn key(&self) -> Name {
        service_key(&self.namespace, &self.hostname)
    }

    /// The target port for `service_port` (0: the workload's own mapping), if the service has that port.
    pub fn target_port(&self, service_port: u16) -> Option<u16> {
        self.ports.iter().find(|p| p.service_port == service_port).map(|p| p.target_port)
    }

    pub fn has_vip(&self, network: &str, ip: IpAddr) -> bool {
        self.vips.iter().any(|v| &*v.network == network && v.address == ip)
    }
}

/// Which workloads a policy applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyScope {
    /// Every workload in the mesh (a policy in the root namespace).
    #[default]
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// The workloads that list it in `authorization_policies`.
    WorkloadSelector,
}

/// What a matching connection gets. The workload API has no AUDIT or CUSTOM: istiod
/// sends those to waypoints only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyAction {
    #[default]
    Allow,
    Deny,
}

/// An L4 authorization policy: its action applies when any rule matches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub name: Name,
    #[serde(default)]
    pub namespace: Name,
    #[serde(default)]
    pub scope: PolicyScope,
    #[serde(default)]
    pub action: PolicyAction,
    /// OR-ed. An ALLOW policy without rules allows nothing.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl Policy {
    /// `namespace/name`: its resource name.
    pub fn key(&self) -> Name {
        policy_key(&self.namespace, &self.name)
    }
}

/// `namespace/name`.
pub fn policy_key(namespace: &str, name: &str) -> Name {
    format!("{namespace}/{name}").into()
}

/// One rule (the `from`, `to` and `when` of one AuthorizationPolicy rule): every clause must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

/// One clause: any of its matches may match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Clause {
    pub matches: Vec<Match>,
}

/// Conditions on a connection: every non-empty field must hold; within a field, any
/// value may match (for a `not_` field: none may). An empty match matches nothing
/// (ztunnel skips it; istiod warns that such a policy has no effect at ztunnel).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Match {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<NameMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<NameMatch>,
    /// Matched against the peer's identity without `spiffe://`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<NameMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<NameMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<ServiceAccountMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_source_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_destination_ports: Vec<u16>,
}

impl Match {
    /// No condition at all.
    pub fn is_empty(&self) -> bool {
        *self == Match::default()
    }
}

/// A match on a namespace or principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameMatch {
    Exact(Name),
    Prefix(Name),
    Suffix(Name),
    /// Any non-empty value (`*` in the AuthorizationPolicy).
    Presence,
}

impl NameMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            NameMatch::Exact(s) => value == &**s,
            NameMatch::Prefix(s) => value.starts_with(&**s),
            NameMatch::Suffix(s) => value.ends_with(&**s),
            NameMatch::Presence => !value.is_empty(),
        }
    }
}

/// A peer's Kubernetes service account, in any trust domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccountMatch {
    pub namespace: Name,
    pub service_account: Name,
}

impl ServiceAccountMatch {
    pub fn matches(&self, id: &Identity) -> bool {
        self.namespace == id.namespace && self.service_account == id.service_account
    }
}

/// A translated `istio.workload.Address`: a workload or a service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressResource {
    Workload(Arc<Workload>),
    Service(Arc<Service>),
}

impl AddressResource {
    /// Its name on the Delta stream: a workload's uid, a service's `namespace/hostname`.
    pub fn resource_name(&self) -> Name {
        match self {
            AddressResource::Workload(w) => w.uid.clone(),
            AddressResource::Service(s) => s.key(),
        }
    }
}

/// The node's L4 view, keyed by resource name. Resources are shared (`Arc`) so an
/// update shares every resource that did not change.
///
/// The lookups here scan; the data path uses an [`AddressIndex`] built once per snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadModel {
    /// By uid.
    #[serde(default)]
    pub workloads: BTreeMap<Name, Arc<Workload>>,
    /// By `namespace/hostname`.
    #[serde(default)]
    pub services: BTreeMap<Name, Arc<Service>>,
    /// By `namespace/name`.
    #[serde(default)]
    pub policies: BTreeMap<Name, Arc<Policy>>,
}

impl WorkloadModel {
    /// Adds or replaces an address resource under its resource name.
    pub fn insert_address(&mut self, resource: AddressResource) {
        match resource {
            AddressResource::Workload(w) => {
                self.workloads.insert(w.uid.clone(), w);
            }
            AddressResource::Service(s) => {
                self.services.insert(s.key(), s);
            }
        }
    }

    /// Removes the workload (uid) or service (`namespace/hostname`) of that resource name.
    pub fn remove_address(&mut self, name: &str) -> bool {
        self.workloads.remove(name).is_some() || self.services.remove(name).is_some()
    }

    pub fn insert_policy(&mut self, policy: Policy) {
        self.policies.insert(policy.key(), Arc::new(policy));
    }

    /// The workload at `ip` on `network` ("" is the default network).
    pub fn workload_by_ip(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.values().find(|w| w.has_address(network, ip))
    }

    /// The service with VIP `ip` on `network` and port `port`, with its target port.
    pub fn service_by_vip(&self, network: &str, ip: IpAddr, port: u16) -> Option<(&Arc<Service>, u16)> {
        self.services.values().filter(|s| s.has_vip(network, ip)).find_map(|s| s.target_port(port).map(|t| (s, t)))
    }

    pub fn service(&self, namespace: &str, hostname: &str) -> Option<&Arc<Service>> {
        self.services.get(&*service_key(namespace, hostname))
    }

    /// The workloads behind a service (`namespace/hostname`), each with its port mapping.
    pub fn endpoints<'a>(&'a self, service: &'a str) -> impl Iterator<Item = (&'a Arc<Workload>, &'a PortMap)> + 'a {
        self.workloads.values().filter_map(move |w| w.services.get(service).map(|ports| (w, ports)))
    }

    /// The policies that apply to `workload`: global ones, its namespace's, and those that select it.
    pub fn policies_for<'a>(&'a self, workload: &'a Workload) -> impl Iterator<Item = &'a Arc<Policy>> + 'a {
        self.policies
            .iter()
            .filter(move |(key, p)| match p.scope {
                PolicyScope::Global => true,
                // ztunnel files a namespace policy under its namespace, and one without
                // a namespace under "", where the global policies are.
                PolicyScope::Namespace => p.namespace.is_empty() || p.namespace == workload.namespace,
                PolicyScope::WorkloadSelector => workload.authorization_policies.iter().any(|n| n == *key),
            })
            .map(|(_, p)| p)
    }
}

/// Constant-time lookups by address, built once from a [`WorkloadModel`].
#[derive(Clone, Debug, Default)]
pub struct AddressIndex {
    workloads: HashMap<NetworkAddress, Arc<Workload>>,
    services: HashMap<NetworkAddress, Arc<Service>>,
}

impl AddressIndex {
    pub fn new(model: &WorkloadModel) -> Self {
        let mut index = AddressIndex::default();
        for w in model.workloads.values().filter(|w| w.network_mode == NetworkMode::Standard) {
            for addr in w.network_addresses() {
                index.workloads.insert(addr, w.clone());
            }
        }
        for s in model.services.values() {
            for vip in &s.vips {
                // Of services sharing a VIP (not expected), keep the oldest, as ztunnel does for hostnames.
                let keep_existing = index.services.get(vip).is_some_and(|old| old.created.unwrap_or(i64::MAX) <= s.created.unwrap_or(i64::MAX));
                if !keep_existing {
                    index.services.insert(vip.clone(), s.clone());
                }
            }
        }
        index
    }

    pub fn workload(&self, network: &str, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(&NetworkAddress::new(network, ip))
    }

    pub fn service(&self, network: &str, ip: IpAddr) -> Option<&Arc<Service>> {
        self.services.get(&NetworkAddress::new(network, ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_defaults_and_round_trip() {
        let id = Identity::new("", "bookinfo", "");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/bookinfo/sa/default");
        assert_eq!(Identity::parse(&id.to_string()), Some(id));
        assert_eq!(Identity::parse("spiffe://td/ns/a/sa"), None);
        assert_eq!(Identity::parse("spiffe://td/ns/a/sa/b/c"), None);
        assert_eq!(Identity::parse("http://td/ns/a/sa/b"), None);
    }

    #[test]
    fn network_address_forms() {
        let a: NetworkAddress = "network1/10.0.0.1".parse().unwrap();
        assert_eq!((&*a.network, a.address), ("network1", "10.0.0.1".parse().unwrap()));
        let b: NetworkAddress = "/fd00::1".parse().unwrap();
        assert_eq!((&*b.network, b.to_string().as_str()), ("", "/fd00::1"));
        let c: NetworkAddress = "10.0.0.2".parse().unwrap();
        assert_eq!(&*c.network, "");
        assert!("net/nope".parse::<NetworkAddress>().is_err());
    }

    #[test]
    fn name_match() {
        assert!(NameMatch::Exact("a".into()).matches("a"));
        assert!(NameMatch::Prefix("ns-".into()).matches("ns-x"));
        assert!(NameMatch::Suffix("-x".into()).matches("ns-x"));
        assert!(NameMatch::Presence.matches("x"));
        assert!(!NameMatch::Presence.matches(""));
    }
}
