//! Istio's workload API -> [`model::workload`](crate::model::workload): the
//! `istio.workload.Address` (workload or service) and `istio.security.Authorization`
//! resources istiod sends ztunnel-type clients over Delta ADS, and ztunnel's own
//! `/config_dump` JSON (a different shape from the protos' JSON) into the same model.
//!
//! Resource names are istiod's: a workload by its uid, a service by
//! `namespace/hostname`, an authorization by `namespace/name`. A resource with a value
//! that cannot be acted on safely (a malformed address, an out-of-range port or
//! prefix length, an unknown policy action) is rejected with the field that is wrong;
//! unknown values of telemetry-only fields are reported and defaulted instead.
//!
//! Does not own: which resources to subscribe to (xds-client, node-proxy), or what a
//! policy decides (evaluation).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::{Map, Value};
use xds_client::istio::security as sec;
use xds_client::istio::workload as wl;
use xds_client::type_url;

use super::{one, Context, Effect, Invalid, One};
use crate::model::workload::{
    policy_key, service_key, AddressResource, ApplicationTunnel, ApplicationTunnelProtocol, Clause, GatewayAddress, GatewayDestination, HealthPolicy, Identity,
    IpFamilies, LoadBalancing, LoadBalancingMode, Locality, LocalityScope, Match, NameMatch, NamespacedHostname, NetworkAddress, NetworkMode, Policy,
    PolicyAction, PolicyScope, PortMap, Rule, Service, ServiceAccountMatch, ServicePort, TunnelProtocol, Workload, WorkloadModel, WorkloadStatus, WorkloadType,
};
use crate::model::Name;

const WORKLOAD: &str = "istio.workload.Workload";
const SERVICE: &str = "istio.workload.Service";

/// One `istio.workload.Address`: a workload (named by uid) or a service (`namespace/hostname`).
pub fn address(a: &wl::Address) -> One<AddressResource> {
    use wl::address::Type;
    match &a.r#type {
        Some(Type::Workload(w)) => {
            let name = if w.uid.is_empty() { format!("(no uid) {}/{}", w.namespace, w.name) } else { w.uid.clone() };
            let mut cx = Context::new("workload", &name);
            let result = workload(w, &mut cx).map(|w| AddressResource::Workload(Arc::new(w)));
            one(type_url::ADDRESS, cx, result)
        }
        Some(Type::Service(s)) => {
            let mut cx = Context::new("service", &service_key(&s.namespace, &s.hostname));
            let result = service(s, &mut cx).map(|s| AddressResource::Service(Arc::new(s)));
            one(type_url::ADDRESS, cx, result)
        }
        None => one(type_url::ADDRESS, Context::new("address", ""), Err(Invalid::new("type", "an Address needs a workload or a service"))),
    }
}

/// One `istio.security.Authorization` (named `namespace/name`).
pub fn authorization(a: &sec::Authorization) -> One<Policy> {
    let cx = Context::new("authorization", &policy_key(&a.namespace, &a.name));
    let result = policy(a);
    one(type_url::AUTHORIZATION, cx, result)
}

fn workload(w: &wl::Workload, cx: &mut Context) -> Result<Workload, Invalid> {
    if w.uid.is_empty() {
        return Err(Invalid::new("uid", "a workload needs a uid"));
    }
    let addresses = w.addresses.iter().enumerate().map(|(i, a)| ip(a, &format!("addresses[{i}]"))).collect::<Result<Vec<_>, _>>()?;
    let tunnel = match wl::TunnelProtocol::try_from(w.tunnel_protocol) {
        Ok(wl::TunnelProtocol::None) => TunnelProtocol::None,
        Ok(wl::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
        Err(_) => return Err(Invalid::new("tunnel_protocol", format!("unknown tunnel protocol {}: want NONE or HBONE", w.tunnel_protocol))),
    };
    let workload_type = match wl::WorkloadType::try_from(w.workload_type) {
        Ok(wl::WorkloadType::Deployment) => WorkloadType::Deployment,
        Ok(wl::WorkloadType::Cronjob) => WorkloadType::Cronjob,
        Ok(wl::WorkloadType::Pod) => WorkloadType::Pod,
        Ok(wl::WorkloadType::Job) => WorkloadType::Job,
        Err(_) => {
            cx.report(&format!("workload_type (unknown value {})", w.workload_type), WORKLOAD, Effect::Ignored);
            WorkloadType::Deployment
        }
    };
    let status = match wl::WorkloadStatus::try_from(w.status) {
        Ok(wl::WorkloadStatus::Healthy) => WorkloadStatus::Healthy,
        Ok(wl::WorkloadStatus::Unhealthy) => WorkloadStatus::Unhealthy,
        Err(_) => {
            cx.report(&format!("status (unknown value {}, taken as UNHEALTHY)", w.status), WORKLOAD, Effect::Ignored);
            WorkloadStatus::Unhealthy
        }
    };
    let network_mode = match wl::NetworkMode::try_from(w.network_mode) {
        Ok(wl::NetworkMode::Standard) => NetworkMode::Standard,
        Ok(wl::NetworkMode::HostNetwork) => NetworkMode::HostNetwork,
        Err(_) => {
            // The safe reading: do not identify anything by an address we do not understand.
            cx.report(&format!("network_mode (unknown value {}, taken as HOST_NETWORK)", w.network_mode), WORKLOAD, Effect::Ignored);
            NetworkMode::HostNetwork
        }
    };
    let application_tunnel = match &w.application_tunnel {
        None => None,
        Some(t) => {
            let protocol = match wl::application_tunnel::Protocol::try_from(t.protocol) {
                Ok(wl::application_tunnel::Protocol::None) => ApplicationTunnelProtocol::None,
                Ok(wl::application_tunnel::Protocol::Proxy) => ApplicationTunnelProtocol::Proxy,
                Err(_) => return Err(Invalid::new("application_tunnel.protocol", format!("unknown protocol {}: want NONE or PROXY", t.protocol))),
            };
            let port = port(t.port, "application_tunnel.port", 0)?;
            Some(ApplicationTunnel { protocol, port: (port != 0).then_some(port) })
        }
    };
    let mut keys: Vec<&String> = w.services.keys().collect();
    keys.sort();
    let mut services = BTreeMap::new();
    for key in keys {
        let path = format!("services[{key:?}]");
        match key.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {}
            _ => return Err(Invalid::new(&path, "the key must be namespace/hostname")),
        }
        let ports = port_map(&w.services[key].ports, &format!("{path}.ports"))?;
        services.insert(Name::from(key.as_str()), ports);
    }
    report_extensions(&w.extensions, WORKLOAD, cx);
    Ok(Workload {
        uid: w.uid.as_str().into(),
        name: w.name.as_str().into(),
        namespace: w.namespace.as_str().into(),
        addresses,
        hostname: w.hostname.as_str().into(),
        network: w.network.as_str().into(),
        tunnel,
        identity: Identity::new(&w.trust_domain, &w.namespace, &w.service_account),
        waypoint: w.waypoint.as_ref().map(|g| gateway(g, "waypoint")).transpose()?,
        network_gateway: w.network_gateway.as_ref().map(|g| gateway(g, "network_gateway")).transpose()?,
        node: w.node.as_str().into(),
        cluster_id: w.cluster_id.as_str().into(),
        canonical_name: w.canonical_name.as_str().into(),
        canonical_revision: w.canonical_revision.as_str().into(),
        workload_type,
        workload_name: w.workload_name.as_str().into(),
        native_tunnel: w.native_tunnel,
        application_tunnel,
        services,
        authorization_policies: w.authorization_policies.iter().map(|p| Name::from(p.as_str())).collect(),
        status,
        locality: w.locality.as_ref().map(|l| Locality { region: l.region.as_str().into(), zone: l.zone.as_str().into(), subzone: l.subzone.as_str().into() }),
        network_mode,
        capacity: w.capacity.unwrap_or(1),
    })
}

fn service(s: &wl::Service, cx: &mut Context) -> Result<Service, Invalid> {
    if s.namespace.is_empty() {
        return Err(Invalid::new("namespace", "a service needs a namespace"));
    }
    if s.hostname.is_empty() {
        return Err(Invalid::new("hostname", "a service needs a hostname"));
    }
    let mut vips = Vec::with_capacity(s.addresses.len());
    for (i, a) in s.addresses.iter().enumerate() {
        vips.push(NetworkAddress { network: a.network.as_str().into(), address: ip(&a.address, &format!("addresses[{i}].address"))? });
    }
    let mut ports = Vec::with_capacity(s.ports.len());
    for (i, p) in s.ports.iter().enumerate() {
        let service_port = port(p.service_port, &format!("ports[{i}].service_port"), 1)?;
        let target_port = port(p.target_port, &format!("ports[{i}].target_port"), 0)?;
        ports.push(ServicePort { service_port, target_port });
    }
    let load_balancing = s.load_balancing.as_ref().map(|lb| load_balancing(lb, cx)).transpose()?;
    let ip_families = match wl::IpFamilies::try_from(s.ip_families) {
        Ok(wl::IpFamilies::Automatic) => IpFamilies::Automatic,
        Ok(wl::IpFamilies::Ipv4Only) => IpFamilies::Ipv4Only,
        Ok(wl::IpFamilies::Ipv6Only) => IpFamilies::Ipv6Only,
        Ok(wl::IpFamilies::Dual) => IpFamilies::Dual,
        Err(_) => {
            cx.report(&format!("ip_families (unknown value {}, taken as AUTOMATIC)", s.ip_families), SERVICE, Effect::Ignored);
            IpFamilies::Automatic
        }
    };
    report_extensions(&s.extensions, SERVICE, cx);
    Ok(Service {
        name: s.name.as_str().into(),
        namespace: s.namespace.as_str().into(),
        hostname: s.hostname.as_str().into(),
        vips,
        ports,
        waypoint: s.waypoint.as_ref().map(|g| gateway(g, "waypoint")).transpose()?,
        load_balancing,
        ip_families,
        subject_alt_names: s.subject_alt_names.iter().map(|n| Name::from(n.as_str())).collect(),
        created: s.creation_timestamp.as_ref().map(|t| t.seconds),
    })
}

fn load_balancing(lb: &wl::LoadBalancing, cx: &mut Context) -> Result<LoadBalancing, Invalid> {
    use wl::load_balancing::{HealthPolicy as PbHealth, Mode, Scope};
    let mut routing_preferences = Vec::with_capacity(lb.routing_preference.len());
    for (i, v) in lb.routing_preference.iter().enumerate() {
        let scope = match Scope::try_from(*v) {
            // Constrains nothing.
            Ok(Scope::UnspecifiedScope) => continue,
            Ok(Scope::Region) => LocalityScope::Region,
            Ok(Scope::Zone) => LocalityScope::Zone,
            Ok(Scope::Subzone) => LocalityScope::Subzone,
            Ok(Scope::Node) => LocalityScope::Node,
            Ok(Scope::Cluster) => LocalityScope::Cluster,
            Ok(Scope::Network) => LocalityScope::Network,
            Err(_) => return Err(Invalid::new(&format!("load_balancing.routing_preference[{i}]"), format!("unknown scope {v}"))),
        };
        routing_preferences.push(scope);
    }
    let mode = match Mode::try_from(lb.mode) {
        Ok(Mode::UnspecifiedMode) => LoadBalancingMode::Standard,
        Ok(Mode::Strict) => LoadBalancingMode::Strict,
        Ok(Mode::Failover) => LoadBalancingMode::Failover,
        Ok(Mode::Passthrough) => LoadBalancingMode::Passthrough,
        Err(_) => return Err(Invalid::new("load_balancing.mode", format!("unknown mode {}: want STRICT, FAILOVER or PASSTHROUGH", lb.mode))),
    };
    let health_policy = match PbHealth::try_from(lb.health_policy) {
        Ok(PbHealth::OnlyHealthy) => HealthPolicy::OnlyHealthy,
        Ok(PbHealth::AllowAll) => HealthPolicy::AllowAll,
        Err(_) => {
            cx.report(&format!("load_balancing.health_policy (unknown value {}, taken as ONLY_HEALTHY)", lb.health_policy), SERVICE, Effect::Ignored);
            HealthPolicy::OnlyHealthy
        }
    };
    Ok(LoadBalancing { routing_preferences, mode, health_policy })
}

fn report_extensions(extensions: &[wl::Extension], type_name: &str, cx: &mut Context) {
    for (i, e) in extensions.iter().enumerate() {
        let payload = e.config.as_ref().map(|c| c.type_url.clone()).filter(|t| !t.is_empty()).unwrap_or_else(|| type_name.to_owned());
        cx.report(&format!("extensions[{i}] ({})", e.name), &payload, Effect::Ignored);
    }
}

fn gateway(g: &wl::GatewayAddress, path: &str) -> Result<GatewayAddress, Invalid> {
    use wl::gateway_address::Destination;
    let destination = match &g.destination {
        Some(Destination::Address(a)) => {
            GatewayDestination::Address(NetworkAddress { network: a.network.as_str().into(), address: ip(&a.address, &format!("{path}.address.address"))? })
        }
        Some(Destination::Hostname(h)) => {
            if h.hostname.is_empty() {
                return Err(Invalid::new(&format!("{path}.hostname.hostname"), "a gateway hostname must not be empty"));
            }
            GatewayDestination::Hostname(NamespacedHostname { namespace: h.namespace.as_str().into(), hostname: h.hostname.as_str().into() })
        }
        None => return Err(Invalid::new(path, "a gateway needs an address or a hostname")),
    };
    Ok(GatewayAddress { destination, hbone_mtls_port: port(g.hbone_mtls_port, &format!("{path}.hbone_mtls_port"), 0)? })
}

fn port_map(ports: &[wl::Port], path: &str) -> Result<PortMap, Invalid> {
    let mut map = PortMap::new();
    for (i, p) in ports.iter().enumerate() {
        let service_port = port(p.service_port, &format!("{path}[{i}].service_port"), 1)?;
        let target_port = port(p.target_port, &format!("{path}[{i}].target_port"), 0)?;
        map.insert(service_port, target_port);
    }
    Ok(map)
}

/// A port number, at least `min`.
fn port(v: u32, path: &str, min: u16) -> Result<u16, Invalid> {
    match u16::try_from(v) {
        Ok(p) if p >= min => Ok(p),
        _ => Err(Invalid::new(path, format!("{v} is not a port ({min}-65535)"))),
    }
}

/// 4 or 16 bytes.
fn ip(bytes: &[u8], path: &str) -> Result<IpAddr, Invalid> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::from(v6));
    }
    Err(Invalid::new(path, format!("{} bytes is not an IPv4 or IPv6 address", bytes.len())))
}

fn policy(a: &sec::Authorization) -> Result<Policy, Invalid> {
    if a.name.is_empty() {
        return Err(Invalid::new("name", "an authorization needs a name"));
    }
    let scope = match sec::Scope::try_from(a.scope) {
        Ok(sec::Scope::Global) => PolicyScope::Global,
        Ok(sec::Scope::Namespace) => PolicyScope::Namespace,
        Ok(sec::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector,
        Err(_) => return Err(Invalid::new("scope", format!("unknown scope {}: want GLOBAL, NAMESPACE or WORKLOAD_SELECTOR", a.scope))),
    };
    let action = match sec::Action::try_from(a.action) {
        Ok(sec::Action::Allow) => PolicyAction::Allow,
        Ok(sec::Action::Deny) => PolicyAction::Deny,
        Err(_) => return Err(Invalid::new("action", format!("unknown action {}: want ALLOW or DENY", a.action))),
    };
    let mut rules = Vec::with_capacity(a.groups.len());
    for (i, group) in a.groups.iter().enumerate() {
        let mut clauses = Vec::with_capacity(group.rules.len());
        for (j, clause) in group.rules.iter().enumerate() {
            let matches =
                clause.matches.iter().enumerate().map(|(k, m)| matcher(m, &format!("groups[{i}].rules[{j}].matches[{k}]"))).collect::<Result<Vec<_>, _>>()?;
            clauses.push(Clause { matches });
        }
        rules.push(Rule { clauses });
    }
    Ok(Policy { name: a.name.as_str().into(), namespace: a.namespace.as_str().into(), scope, action, rules })
}

fn matcher(m: &sec::Match, path: &str) -> Result<Match, Invalid> {
    let names = |list: &[sec::StringMatch], field: &str| name_matches(list, &format!("{path}.{field}"));
    let nets = |list: &[sec::Address], field: &str| cidrs(list, &format!("{path}.{field}"));
    let ports = |list: &[u32], field: &str| list.iter().enumerate().map(|(i, p)| port(*p, &format!("{path}.{field}[{i}]"), 1)).collect::<Result<Vec<_>, _>>();
    let accounts = |list: &[sec::ServiceAccountMatch], field: &str| service_accounts(list, &format!("{path}.{field}"));
    Ok(Match {
        namespaces: names(&m.namespaces, "namespaces")?,
        not_namespaces: names(&m.not_namespaces, "not_namespaces")?,
        principals: names(&m.principals, "principals")?,
        not_principals: names(&m.not_principals, "not_principals")?,
        service_accounts: accounts(&m.service_accounts, "service_accounts")?,
        not_service_accounts: accounts(&m.not_service_accounts, "not_service_accounts")?,
        source_ips: nets(&m.source_ips, "source_ips")?,
        not_source_ips: nets(&m.not_source_ips, "not_source_ips")?,
        destination_ips: nets(&m.destination_ips, "destination_ips")?,
        not_destination_ips: nets(&m.not_destination_ips, "not_destination_ips")?,
        destination_ports: ports(&m.destination_ports, "destination_ports")?,
        not_destination_ports: ports(&m.not_destination_ports, "not_destination_ports")?,
    })
}

fn name_matches(list: &[sec::StringMatch], path: &str) -> Result<Vec<NameMatch>, Invalid> {
    use sec::string_match::MatchType;
    list.iter()
        .enumerate()
        .map(|(i, m)| match &m.match_type {
            Some(MatchType::Exact(s)) => Ok(NameMatch::Exact(s.as_str().into())),
            Some(MatchType::Prefix(s)) => Ok(NameMatch::Prefix(s.as_str().into())),
            Some(MatchType::Suffix(s)) => Ok(NameMatch::Suffix(s.as_str().into())),
            Some(MatchType::Presence(())) => Ok(NameMatch::Presence),
            None => Err(Invalid::new(&format!("{path}[{i}]"), "a string match needs exact, prefix, suffix or presence")),
        })
        .collect()
}

fn cidrs(list: &[sec::Address], path: &str) -> Result<Vec<IpNet>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let addr = ip(&a.address, &format!("{path}[{i}].address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            match u8::try_from(a.length).ok().filter(|l| *l <= max).and_then(|l| IpNet::new(addr, l).ok()) {
                Some(net) => Ok(net.trunc()),
                None => Err(Invalid::new(&format!("{path}[{i}].length"), format!("prefix length {} is out of range for {addr} (0-{max})", a.length))),
            }
        })
        .collect()
}

fn service_accounts(list: &[sec::ServiceAccountMatch], path: &str) -> Result<Vec<ServiceAccountMatch>, Invalid> {
    list.iter()
        .enumerate()
        .map(|(i, sa)| {
            if sa.namespace.is_empty() || sa.service_account.is_empty() {
                return Err(Invalid::new(&format!("{path}[{i}]"), "a service account match needs a namespace and a service account"));
            }
            Ok(ServiceAccountMatch { namespace: sa.namespace.as_str().into(), service_account: sa.service_account.as_str().into() })
        })
        .collect()
}

/// Why ztunnel's `/config_dump` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("not a ztunnel config dump: expected a JSON object with `workloads`, `services` or `policies`")]
    UnknownShape,
    #[error("ztunnel config dump: {path}: {reason}")]
    Invalid { path: String, reason: String },
}

fn invalid(path: &str, reason: impl Into<String>) -> DumpError {
    DumpError::Invalid { path: path.to_owned(), reason: reason.into() }
}

/// Reads ztunnel's `/config_dump` (its own camelCase JSON, not the protos' JSON):
/// `workloads` and `services` (keyed by address or name), `policies`; service
/// `endpoints` become the workloads' `services` port maps. `certificates` and
/// `workloadState` are runtime state, not configuration, and are not read.
pub fn from_ztunnel_dump(json: &Value) -> Result<WorkloadModel, DumpError> {
    let Some(root) = json.as_object() else { return Err(DumpError::UnknownShape) };
    if !["workloads", "services", "policies"].iter().any(|k| root.contains_key(*k)) {
        return Err(DumpError::UnknownShape);
    }
    let mut workloads: BTreeMap<Name, Workload> = BTreeMap::new();
    for (path, w) in entries(root.get("workloads"), "workloads")? {
        let w = dump_workload(w, &path)?;
        workloads.insert(w.uid.clone(), w);
    }
    let mut model = WorkloadModel::default();
    for (path, s) in entries(root.get("services"), "services")? {
        let s = dump_service(s, &path, &mut workloads)?;
        model.services.insert(s.key(), Arc::new(s));
    }
    model.workloads = workloads.into_iter().map(|(k, w)| (k, Arc::new(w))).collect();
    for (path, p) in entries(root.get("policies"), "policies")? {
        let p = dump_policy(p, &path)?;
        model.policies.insert(p.key(), Arc::new(p));
    }
    Ok(model)
}

/// The members of an object (by key) or an array (by index), with their paths.
fn entries<'a>(v: Option<&'a Value>, path: &str) -> Result<Vec<(String, &'a Value)>, DumpError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(m)) => Ok(m.iter().map(|(k, v)| (format!("{path}[{k:?}]"), v)).collect()),
        Some(Value::Array(a)) => Ok(a.iter().enumerate().map(|(i, v)| (format!("{path}[{i}]"), v)).collect()),
        Some(_) => Err(invalid(path, "expected an object or a list")),
    }
}

/// Field access on one JSON object, with the object's path for errors.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Obj<'a> {
    fn new(v: &'a Value, path: &'a str) -> Result<Self, DumpError> {
        v.as_object().map(|map| Obj { map, path }).ok_or_else(|| invalid(path, "expected an object"))
    }

    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A string field; absent is empty.
    fn str(&self, key: &str) -> Result<&'a str, DumpError> {
        match self.get(key) {
            None => Ok(""),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(invalid(&self.at(key), "expected a string")),
        }
    }

    fn name(&self, key: &str) -> Result<Name, DumpError> {
        self.str(key).map(Name::from)
    }

    fn bool(&self, key: &str) -> Result<bool, DumpError> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(invalid(&self.at(key), "expected true or false")),
        }
    }

    fn array(&self, key: &str) -> Result<&'a [Value], DumpError> {
        match self.get(key) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(invalid(&self.at(key), "expected a list")),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<&'a str>, DumpError> {
        self.array(key)?.iter().enumerate().map(|(i, v)| v.as_str().ok_or_else(|| invalid(&format!("{}[{i}]", self.at(key)), "expected a string"))).collect()
    }

    fn u32(&self, key: &str) -> Result<Option<u32>, DumpError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| invalid(&self.at(key), "expected a non-negative integer")),
        }
    }
}

/// `"HBONE"`, `"WorkloadSelector"`, `"workload_selector"` -> `hbone`, `workloadselector`.
fn enum_word(s: &str) -> String {
    s.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect()
}

fn dump_port(v: &Value, path: &str, min: u16) -> Result<u16, DumpError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    };
    n.and_then(|n| u16::try_from(n).ok()).filter(|p| *p >= min).ok_or_else(|| invalid(path, format!("{v} is not a port ({min}-65535)")))
}

/// `{"443": 8443, …}`.
fn dump_port_map(v: Option<&Value>, path: &str) -> Result<PortMap, DumpError> {
    let mut map = PortMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, t) in m {
                let p = format!("{path}[{k:?}]");
                map.insert(dump_port(&Value::String(k.clone()), &p, 1)?, dump_port(t, &p, 0)?);
            }
        }
        Some(_) => return Err(invalid(path, "expected an object of service port -> target port")),
    }
    Ok(map)
}

fn dump_ip(s: &str, path: &str) -> Result<IpAddr, DumpError> {
    s.parse().map_err(|_| invalid(path, format!("{s:?} is not an IP address")))
}

fn dump_network_address(s: &str, path: &str) -> Result<NetworkAddress, DumpError> {
    s.parse().map_err(|_| invalid(path, format!("{s:?} is not network/IP")))
}

fn dump_gateway(v: &Value, path: &str) -> Result<GatewayAddress, DumpError> {
    let o = Obj::new(v, path)?;
    let dpath = o.at("destination");
    let destination = match o.get("destination") {
        Some(Value::String(s)) => GatewayDestination::Address(dump_network_address(s, &dpath)?),
        Some(d @ Value::Object(_)) => {
            let d = Obj::new(d, &dpath)?;
            if d.get("address").is_some() {
                GatewayDestination::Address(dump_network_address(d.str("address")?, &d.at("address"))?)
            } else {
                let hostname = d.name("hostname")?;
                if hostname.is_empty() {
                    return Err(invalid(&dpath, "a gateway needs an address or a hostname"));
                }
                GatewayDestination::Hostname(NamespacedHostname { namespace: d.name("namespace")?, hostname })
            }
        }
        _ => return Err(invalid(&dpath, "a gateway needs an address (network/IP) or a hostname")),
    };
    let port_key = if o.get("hboneMtlsPort").is_some() { "hboneMtlsPort" } else { "port" };
    let hbone_mtls_port = match o.get(port_key) {
        None => 0,
        Some(p) => dump_port(p, &o.at(port_key), 0)?,
    };
    Ok(GatewayAddress { destination, hbone_mtls_port })
}

fn dump_workload(v: &Value, path: &str) -> Result<Workload, DumpError> {
    let o = Obj::new(v, path)?;
    let uid = o.name("uid")?;
    if uid.is_empty() {
        return Err(invalid(&o.at("uid"), "a workload needs a uid"));
    }
    let addresses =
        o.strings("workloadIps")?.iter().enumerate().map(|(i, s)| dump_ip(s, &format!("{}[{i}]", o.at("workloadIps")))).collect::<Result<_, _>>()?;
    let tunnel = match enum_word(o.str("protocol")?).as_str() {
        "" | "tcp" | "none" => TunnelProtocol::None,
        "hbone" => TunnelProtocol::Hbone,
        other => return Err(invalid(&o.at("protocol"), format!("unknown protocol {other:?}: want TCP or HBONE"))),
    };
    let workload_type = match enum_word(o.str("workloadType")?).as_str() {
        "" | "deployment" => WorkloadType::Deployment,
        "cronjob" => WorkloadType::Cronjob,
        "pod" => WorkloadType::Pod,
        "job" => WorkloadType::Job,
        other => return Err(invalid(&o.at("workloadType"), format!("unknown workload type {other:?}"))),
    };
    let status = match enum_word(o.str("status")?).as_str() {
        "" | "healthy" => WorkloadStatus::Healthy,
        "unhealthy" => WorkloadStatus::Unhealthy,
        other => return Err(invalid(&o.at("status"), format!("unknown status {other:?}"))),
    };
    let network_mode = match enum_word(o.str("networkMode")?).as_str() {
        "" | "standard" => NetworkMode::Standard,
        "hostnetwork" => NetworkMode::HostNetwork,
        other => return Err(invalid(&o.at("networkMode"), format!("unknown network mode {other:?}"))),
    };
    let mut services = BTreeMap::new();
    match o.get("services") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, s) in list.iter().enumerate() {
                let key = s.as_str().ok_or_else(|| invalid(&format!("{}[{i}]", o.at("services")), "expected namespace/hostname"))?;
                services.insert(Name::from(key), PortMap::new());
            }
        }
        Some(Value::Object(m)) => {
            for (k, ports) in m {
                services.insert(Name::from(k.as_str()), dump_port_map(Some(ports), &format!("{}[{k:?}]", o.at("services")))?);
            }
        }
        Some(_) => return Err(invalid(&o.at("services"), "expected a list or an object")),
    }
    let locality = match o.get("locality") {
        None => None,
        Some(l) => {
            let lpath = o.at("locality");
            let l = Obj::new(l, &lpath)?;
            Some(Locality { region: l.name("region")?, zone: l.name("zone")?, subzone: l.name("subzone")? })
        }
    };
    let application_tunnel = match o.get("applicationTunnel") {
        None => None,
        Some(t) => {
            let tpath = o.at("applicationTunnel");
            let t = Obj::new(t, &tpath)?;
            let protocol = match enum_word(t.str("protocol")?).as_str() {
                "" | "none" => ApplicationTunnelProtocol::None,
                "proxy" => ApplicationTunnelProtocol::Proxy,
                other => return Err(invalid(&t.at("protocol"), format!("unknown protocol {other:?}"))),
            };
            let port = t.get("port").map(|p| dump_port(p, &t.at("port"), 0)).transpose()?.filter(|p| *p != 0);
            Some(ApplicationTunnel { protocol, port })
        }
    };
    let namespace = o.str("namespace")?;
    Ok(Workload {
        uid,
        name: o.name("name")?,
        namespace: namespace.into(),
        addresses,
        hostname: o.name("hostname")?,
        network: o.name("network")?,
        tunnel,
        identity: Identity::new(o.str("trustDomain")?, namespace, o.str("serviceAccount")?),
        waypoint: o.get("waypoint").map(|g| dump_gateway(g, &o.at("waypoint"))).transpose()?,
        network_gateway: o.get("networkGateway").map(|g| dump_gateway(g, &o.at("networkGateway"))).transpose()?,
        node: o.name("node")?,
        cluster_id: o.name("clusterId")?,
        canonical_name: o.name("canonicalName")?,
        canonical_revision: o.name("canonicalRevision")?,
        workload_type,
        workload_name: o.name("workloadName")?,
        native_tunnel: o.bool("nativeTunnel")?,
        application_tunnel,
        services,
        authorization_policies: o.strings("authorizationPolicies")?.into_iter().map(Name::from).collect(),
        status,
        locality,
        network_mode,
        capacity: o.u32("capacity")?.unwrap_or(1),
    })
}

fn dump_service(v: &Value, path: &str, workloads: &mut BTreeMap<Name, Workload>) -> Result<Service, DumpError> {
    let o = Obj::new(v, path)?;
    let (namespace, hostname) = (o.name("namespace")?, o.name("hostname")?);
    if namespace.is_empty() {
        return Err(invalid(&o.at("namespace"), "a service needs a namespace"));
    }
    if hostname.is_empty() {
        return Err(invalid(&o.at("hostname"), "a service needs a hostname"));
    }
    let vips = o.strings("vips")?.iter().enumerate().map(|(i, s)| dump_network_address(s, &format!("{}[{i}]", o.at("vips")))).collect::<Result<_, _>>()?;
    let ports =
        dump_port_map(o.get("ports"), &o.at("ports"))?.into_iter().map(|(service_port, target_port)| ServicePort { service_port, target_port }).collect();
    let load_balancing = match o.get("loadBalancer").or_else(|| o.get("loadBalancing")) {
        None => None,
        Some(lb) => {
            let lpath = o.at("loadBalancer");
            let lb = Obj::new(lb, &lpath)?;
            let mut routing_preferences = Vec::new();
            for (i, s) in lb.strings("routingPreferences")?.iter().enumerate() {
                routing_preferences.push(match enum_word(s).as_str() {
                    "unspecifiedscope" => continue,
                    "region" => LocalityScope::Region,
                    "zone" => LocalityScope::Zone,
                    "subzone" => LocalityScope::Subzone,
                    "node" => LocalityScope::Node,
                    "cluster" => LocalityScope::Cluster,
                    "network" => LocalityScope::Network,
                    _ => return Err(invalid(&format!("{}[{i}]", lb.at("routingPreferences")), format!("unknown scope {s:?}"))),
                });
            }
            let mode = match enum_word(lb.str("mode")?).as_str() {
                "" | "standard" | "unspecifiedmode" => LoadBalancingMode::Standard,
                "strict" => LoadBalancingMode::Strict,
                "failover" => LoadBalancingMode::Failover,
                "passthrough" => LoadBalancingMode::Passthrough,
                other => return Err(invalid(&lb.at("mode"), format!("unknown mode {other:?}"))),
            };
            let health_policy = match enum_word(lb.str("healthPolicy")?).as_str() {
                "" | "onlyhealthy" => HealthPolicy::OnlyHealthy,
                "allowall" => HealthPolicy::AllowAll,
                other => return Err(invalid(&lb.at("healthPolicy"), format!("unknown health policy {other:?}"))),
            };
            Some(LoadBalancing { routing_preferences, mode, health_policy })
        }
    };
    let ip_families = match enum_word(o.str("ipFamilies")?).as_str() {
        "" | "automatic" => IpFamilies::Automatic,
        "ipv4only" => IpFamilies::Ipv4Only,
        "ipv6only" => IpFamilies::Ipv6Only,
        "dual" => IpFamilies::Dual,
        other => return Err(invalid(&o.at("ipFamilies"), format!("unknown IP families {other:?}"))),
    };
    let key = service_key(&namespace, &hostname);
    for (epath, e) in entries(o.get("endpoints"), &o.at("endpoints"))? {
        let e = Obj::new(e, &epath)?;
        let uid = e.str("workloadUid")?;
        let ports = dump_port_map(e.get("port"), &e.at("port"))?;
        let service = match e.str("service")? {
            "" => key.clone(),
            s => Name::from(s),
        };
        match workloads.get_mut(uid) {
            Some(w) => {
                w.services.insert(service, ports);
            }
            None => tracing::debug!(endpoint = %epath, uid, "ztunnel dump: endpoint of a workload not in the dump, skipped"),
        }
    }
    Ok(Service {
        name: o.name("name")?,
        namespace,
        hostname,
        vips,
        ports,
        waypoint: o.get("waypoint").map(|g| dump_gateway(g, &o.at("waypoint"))).transpose()?,
        load_balancing,
        ip_families,
        subject_alt_names: o.strings("subjectAltNames")?.into_iter().map(Name::from).collect(),
        created: None,
    })
}

fn dump_policy(v: &Value, path: &str) -> Result<Policy, DumpError> {
    let o = Obj::new(v, path)?;
    let name = o.name("name")?;
    if name.is_empty() {
        return Err(invalid(&o.at("name"), "a policy needs a name"));
    }
    let scope = match enum_word(o.str("scope")?).as_str() {
        "" | "global" => PolicyScope::Global,
        "namespace" => PolicyScope::Namespace,
        "workloadselector" => PolicyScope::WorkloadSelector,
        other => return Err(invalid(&o.at("scope"), format!("unknown scope {other:?}"))),
    };
    let action = match enum_word(o.str("action")?).as_str() {
        "" | "allow" => PolicyAction::Allow,
        "deny" => PolicyAction::Deny,
        other => return Err(invalid(&o.at("action"), format!("unknown action {other:?}: want Allow or Deny"))),
    };
    let mut rules = Vec::new();
    for (i, rule) in o.array("rules")?.iter().enumerate() {
        let rpath = format!("{}[{i}]", o.at("rules"));
        let clauses = rule.as_array().ok_or_else(|| invalid(&rpath, "expected a list of clauses"))?;
        let mut out = Rule::default();
        for (j, clause) in clauses.iter().enumerate() {
            let cpath = format!("{rpath}[{j}]");
            let matches = clause.as_array().ok_or_else(|| invalid(&cpath, "expected a list of matches"))?;
            let matches = matches.iter().enumerate().map(|(k, m)| dump_match(m, &format!("{cpath}[{k}]"))).collect::<Result<_, _>>()?;
            out.clauses.push(Clause { matches });
        }
        rules.push(out);
    }
    Ok(Policy { name, namespace: o.name("namespace")?, scope, action, rules })
}

fn dump_match(v: &Value, path: &str) -> Result<Match, DumpError> {
    let o = Obj::new(v, path)?;
    let names = |key: &str| -> Result<Vec<NameMatch>, DumpError> {
        o.array(key)?
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let p = format!("{}[{i}]", o.at(key));
                match m {
                    Value::String(s) if enum_word(s) == "presence" => Ok(NameMatch::Presence),
                    Value::Object(obj) if obj.len() == 1 => match obj.iter().next() {
                        Some((k, Value::String(s))) if k == "exact" => Ok(NameMatch::Exact(s.as_str().into())),
                        Some((k, Value::String(s))) if k == "prefix" => Ok(NameMatch::Prefix(s.as_str().into())),
                        Some((k, Value::String(s))) if k == "suffix" => Ok(NameMatch::Suffix(s.as_str().into())),
                        Some((k, _)) if k == "presence" => Ok(NameMatch::Presence),
                        _ => Err(invalid(&p, "expected {exact|prefix|suffix: string} or presence")),
                    },
                    _ => Err(invalid(&p, "expected {exact|prefix|suffix: string} or presence")),
                }
            })
            .collect()
    };
    let nets = |key: &str| -> Result<Vec<IpNet>, DumpError> {
        o.strings(key)?
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let parsed = s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
                parsed.map(|n| n.trunc()).map_err(|_| invalid(&format!("{}[{i}]", o.at(key)), format!("{s:?} is not a CIDR or an IP")))
            })
            .collect()
    };
    let ports =
        |key: &str| -> Result<Vec<u16>, DumpError> { o.array(key)?.iter().enumerate().map(|(i, p)| dump_port(p, &format!("{}[{i}]", o.at(key)), 1)).collect() };
    let accounts = |key: &str| -> Result<Vec<ServiceAccountMatch>, DumpError> {
        o.array(key)?
            .iter()
            .enumerate()
            .map(|(i, sa)| {
                let p = format!("{}[{i}]", o.at(key));
                let sa = Obj::new(sa, &p)?;
                let (namespace, service_account) = (sa.name("namespace")?, sa.name("serviceAccount")?);
                if namespace.is_empty() || service_account.is_empty() {
                    return Err(invalid(&p, "a service account match needs a namespace and a serviceAccount"));
                }
                Ok(ServiceAccountMatch { namespace, service_account })
            })
            .collect()
    };
    Ok(Match {
        namespaces: names("namespaces")?,
        not_namespaces: names("notNamespaces")?,
        principals: names("principals")?,
        not_principals: names("notPrincipals")?,
        service_accounts: accounts("serviceAccounts")?,
        not_service_accounts: accounts("notServiceAccounts")?,
        source_ips: nets("sourceIps")?,
        not_source_ips: nets("notSourceIps")?,
        destination_ips: nets("destinationIps")?,
        not_destination_ips: nets("notDestinationIps")?,
        destination_ports: ports("destinationPorts")?,
        not_destination_ports: ports("notDestinationPorts")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    fn good_workload() -> wl::Workload {
        wl::Workload {
            uid: "cluster1//Pod/ns/pod-1".into(),
            name: "pod-1".into(),
            namespace: "ns".into(),
            addresses: vec![vec![198, 18, 0, 10]],
            tunnel_protocol: wl::TunnelProtocol::Hbone as i32,
            service_account: "sa".into(),
            ..Default::default()
        }
    }

    fn good_service() -> wl::Service {
        wl::Service {
            name: "svc".into(),
            namespace: "ns".into(),
            hostname: "svc.ns.svc.cluster.local".into(),
            addresses: vec![wl::NetworkAddress { network: "".into(), address: vec![198, 18, 100, 1] }],
            ports: vec![wl::Port { service_port: 80, target_port: 8080 }],
            ..Default::default()
        }
    }

    fn rejection_of_workload(w: wl::Workload) -> String {
        let a = wl::Address { r#type: Some(wl::address::Type::Workload(w)) };
        address(&a).result.expect_err("rejected").to_string()
    }

    fn rejection_of_service(s: wl::Service) -> String {
        let a = wl::Address { r#type: Some(wl::address::Type::Service(s)) };
        address(&a).result.expect_err("rejected").to_string()
    }

    fn rejection_of_match(m: sec::Match) -> String {
        let a = sec::Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            groups: vec![sec::Group { rules: vec![sec::Rules { matches: vec![m] }] }],
            ..Default::default()
        };
        authorization(&a).result.expect_err("rejected").to_string()
    }

    #[test]
    fn workload_translates() {
        let mut w = good_workload();
        w.waypoint = Some(wl::GatewayAddress {
            destination: Some(wl::gateway_address::Destination::Address(wl::NetworkAddress { network: "n1".into(), address: vec![198, 18, 0, 1] })),
            hbone_mtls_port: 15008,
        });
        w.services.insert("ns/svc.ns.svc.cluster.local".into(), wl::PortList { ports: vec![wl::Port { service_port: 80, target_port: 8080 }] });
        let one = address(&wl::Address { r#type: Some(wl::address::Type::Workload(w)) });
        let Ok(AddressResource::Workload(w)) = one.result else { panic!("{:?}", one.result) };
        assert!(one.unsupported.is_empty());
        assert_eq!(w.identity.to_string(), "spiffe://cluster.local/ns/ns/sa/sa");
        assert_eq!(w.addresses, ["198.18.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(w.tunnel, TunnelProtocol::Hbone);
        assert_eq!(w.capacity, 1);
        let waypoint = w.waypoint.clone().unwrap();
        assert_eq!(waypoint.destination, GatewayDestination::Address("n1/198.18.0.1".parse().unwrap()));
        assert_eq!(waypoint.hbone_mtls_port, 15008);
        assert_eq!(w.services["ns/svc.ns.svc.cluster.local"], PortMap::from([(80, 8080)]));
    }

    #[test]
    fn service_translates_with_its_resource_name() {
        let mut s = good_service();
        s.load_balancing = Some(wl::LoadBalancing {
            routing_preference: vec![wl::load_balancing::Scope::Network as i32, wl::load_balancing::Scope::Zone as i32],
            mode: wl::load_balancing::Mode::Failover as i32,
            health_policy: 0,
        });
        let one = address(&wl::Address { r#type: Some(wl::address::Type::Service(s)) });
        let resource = one.result.unwrap();
        assert_eq!(&*resource.resource_name(), "ns/svc.ns.svc.cluster.local");
        let AddressResource::Service(s) = resource else { panic!() };
        assert_eq!(s.target_port(80), Some(8080));
        let lb = s.load_balancing.clone().unwrap();
        assert_eq!(lb.mode, LoadBalancingMode::Failover);
        assert_eq!(lb.routing_preferences, [LocalityScope::Network, LocalityScope::Zone]);
    }

    #[test]
    fn extensions_and_unknown_telemetry_values_are_reported() {
        let mut w = good_workload();
        w.workload_type = 42;
        w.extensions.push(wl::Extension { name: "x".into(), config: None });
        let one = address(&wl::Address { r#type: Some(wl::address::Type::Workload(w)) });
        assert!(one.result.is_ok());
        let fields: Vec<_> = one.unsupported.iter().map(|u| u.field.as_str()).collect();
        assert_eq!(fields, ["workload_type (unknown value 42)", "extensions[0] (x)"]);
        assert!(one.unsupported.iter().all(|u| u.resource == "workload cluster1//Pod/ns/pod-1" && u.effect == Effect::Ignored));
    }

    #[test_case(|w| w.uid.clear(), "workload (no uid) ns/pod-1 rejected: uid: a workload needs a uid"; "no uid")]
    #[test_case(|w| w.addresses.push(vec![1, 2, 3, 4, 5]), "workload cluster1//Pod/ns/pod-1 rejected: addresses[1]: 5 bytes is not an IPv4 or IPv6 address"; "bad address")]
    #[test_case(|w| w.tunnel_protocol = 9, "workload cluster1//Pod/ns/pod-1 rejected: tunnel_protocol: unknown tunnel protocol 9: want NONE or HBONE"; "unknown tunnel")]
    #[test_case(|w| w.waypoint = Some(wl::GatewayAddress::default()), "workload cluster1//Pod/ns/pod-1 rejected: waypoint: a gateway needs an address or a hostname"; "empty waypoint")]
    #[test_case(|w| w.waypoint = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Hostname(wl::NamespacedHostname { namespace: "ns".into(), hostname: "wp".into() })),
        hbone_mtls_port: 70000,
    }), "workload cluster1//Pod/ns/pod-1 rejected: waypoint.hbone_mtls_port: 70000 is not a port (0-65535)"; "waypoint port")]
    #[test_case(|w| w.network_gateway = Some(wl::GatewayAddress {
        destination: Some(wl::gateway_address::Destination::Address(wl::NetworkAddress { network: "".into(), address: vec![] })),
        hbone_mtls_port: 15008,
    }), "workload cluster1//Pod/ns/pod-1 rejected: network_gateway.address.address: 0 bytes is not an IPv4 or IPv6 address"; "gateway address")]
    #[test_case(|w| { w.services.insert("no-slash".into(), wl::PortList::default()); }, "workload cluster1//Pod/ns/pod-1 rejected: services[\"no-slash\"]: the key must be namespace/hostname"; "service key")]
    #[test_case(|w| { w.services.insert("ns/h".into(), wl::PortList { ports: vec![wl::Port { service_port: 0, target_port: 80 }] }); },
        "workload cluster1//Pod/ns/pod-1 rejected: services[\"ns/h\"].ports[0].service_port: 0 is not a port (1-65535)"; "service port zero")]
    #[test_case(|w| { w.services.insert("ns/h".into(), wl::PortList { ports: vec![wl::Port { service_port: 80, target_port: 65536 }] }); },
        "workload cluster1//Pod/ns/pod-1 rejected: services[\"ns/h\"].ports[0].target_port: 65536 is not a port (0-65535)"; "target port")]
    #[test_case(|w| w.application_tunnel = Some(wl::ApplicationTunnel { protocol: 5, port: 0 }),
        "workload cluster1//Pod/ns/pod-1 rejected: application_tunnel.protocol: unknown protocol 5: want NONE or PROXY"; "app tunnel")]
    fn workload_rejections(edit: fn(&mut wl::Workload), expected: &str) {
        let mut w = good_workload();
        edit(&mut w);
        assert_eq!(rejection_of_workload(w), expected);
    }

    #[test_case(|s| s.namespace.clear(), "service /svc.ns.svc.cluster.local rejected: namespace: a service needs a namespace"; "no namespace")]
    #[test_case(|s| s.hostname.clear(), "service ns/ rejected: hostname: a service needs a hostname"; "no hostname")]
    #[test_case(|s| s.addresses[0].address = vec![0; 15], "service ns/svc.ns.svc.cluster.local rejected: addresses[0].address: 15 bytes is not an IPv4 or IPv6 address"; "bad vip")]
    #[test_case(|s| s.ports[0].service_port = 65536, "service ns/svc.ns.svc.cluster.local rejected: ports[0].service_port: 65536 is not a port (1-65535)"; "service port")]
    #[test_case(|s| s.ports[0].target_port = 1 << 20, "service ns/svc.ns.svc.cluster.local rejected: ports[0].target_port: 1048576 is not a port (0-65535)"; "target port")]
    #[test_case(|s| s.load_balancing = Some(wl::LoadBalancing { mode: 7, ..Default::default() }),
        "service ns/svc.ns.svc.cluster.local rejected: load_balancing.mode: unknown mode 7: want STRICT, FAILOVER or PASSTHROUGH"; "lb mode")]
    #[test_case(|s| s.load_balancing = Some(wl::LoadBalancing { routing_preference: vec![1, 99], ..Default::default() }),
        "service ns/svc.ns.svc.cluster.local rejected: load_balancing.routing_preference[1]: unknown scope 99"; "lb scope")]
    fn service_rejections(edit: fn(&mut wl::Service), expected: &str) {
        let mut s = good_service();
        edit(&mut s);
        assert_eq!(rejection_of_service(s), expected);
    }

    #[test]
    fn empty_address_is_rejected() {
        assert_eq!(address(&wl::Address::default()).result.unwrap_err().reason, "type: an Address needs a workload or a service");
    }

    fn sm(m: sec::string_match::MatchType) -> sec::StringMatch {
        sec::StringMatch { match_type: Some(m) }
    }

    #[test_case(sec::Match { principals: vec![sm(sec::string_match::MatchType::Exact("a".into())), sec::StringMatch::default()], ..Default::default() },
        "groups[0].rules[0].matches[0].principals[1]: a string match needs exact, prefix, suffix or presence"; "empty string match")]
    #[test_case(sec::Match { source_ips: vec![sec::Address { address: vec![10, 0, 0], length: 8 }], ..Default::default() },
        "groups[0].rules[0].matches[0].source_ips[0].address: 3 bytes is not an IPv4 or IPv6 address"; "short ip")]
    #[test_case(sec::Match { not_destination_ips: vec![sec::Address { address: vec![10, 0, 0, 0], length: 33 }], ..Default::default() },
        "groups[0].rules[0].matches[0].not_destination_ips[0].length: prefix length 33 is out of range for 10.0.0.0 (0-32)"; "v4 prefix")]
    #[test_case(sec::Match { destination_ips: vec![sec::Address { address: vec![0xfd; 16], length: 129 }], ..Default::default() },
        "groups[0].rules[0].matches[0].destination_ips[0].length: prefix length 129 is out of range for fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd:fdfd (0-128)"; "v6 prefix")]
    #[test_case(sec::Match { not_source_ips: vec![sec::Address { address: vec![10, 0, 0, 0], length: 1 << 31 }], ..Default::default() },
        "groups[0].rules[0].matches[0].not_source_ips[0].length: prefix length 2147483648 is out of range for 10.0.0.0 (0-32)"; "huge prefix")]
    #[test_case(sec::Match { destination_ports: vec![80, 65536], ..Default::default() },
        "groups[0].rules[0].matches[0].destination_ports[1]: 65536 is not a port (1-65535)"; "port range")]
    #[test_case(sec::Match { not_destination_ports: vec![0], ..Default::default() },
        "groups[0].rules[0].matches[0].not_destination_ports[0]: 0 is not a port (1-65535)"; "port zero")]
    #[test_case(sec::Match { service_accounts: vec![sec::ServiceAccountMatch { namespace: "ns".into(), service_account: "".into() }], ..Default::default() },
        "groups[0].rules[0].matches[0].service_accounts[0]: a service account match needs a namespace and a service account"; "sa")]
    #[test_case(sec::Match { not_service_accounts: vec![sec::ServiceAccountMatch { namespace: "".into(), service_account: "sa".into() }], ..Default::default() },
        "groups[0].rules[0].matches[0].not_service_accounts[0]: a service account match needs a namespace and a service account"; "not sa")]
    fn match_rejections(m: sec::Match, reason: &str) {
        assert_eq!(rejection_of_match(m), format!("authorization ns/p rejected: {reason}"));
    }

    #[test_case(sec::Authorization { name: "".into(), namespace: "ns".into(), ..Default::default() }, "authorization ns/ rejected: name: an authorization needs a name"; "no name")]
    #[test_case(sec::Authorization { name: "p".into(), action: 2, ..Default::default() }, "authorization /p rejected: action: unknown action 2: want ALLOW or DENY"; "action")]
    #[test_case(sec::Authorization { name: "p".into(), scope: 3, ..Default::default() },
        "authorization /p rejected: scope: unknown scope 3: want GLOBAL, NAMESPACE or WORKLOAD_SELECTOR"; "scope")]
    fn authorization_rejections(a: sec::Authorization, expected: &str) {
        assert_eq!(authorization(&a).result.unwrap_err().to_string(), expected);
    }

    #[test]
    fn cidrs_are_normalised() {
        let a = sec::Authorization {
            name: "p".into(),
            namespace: "ns".into(),
            action: sec::Action::Deny as i32,
            scope: sec::Scope::WorkloadSelector as i32,
            groups: vec![sec::Group {
                rules: vec![sec::Rules {
                    matches: vec![sec::Match {
                        source_ips: vec![sec::Address { address: vec![198, 18, 7, 9], length: 16 }],
                        destination_ports: vec![9090],
                        not_principals: vec![sm(sec::string_match::MatchType::Presence(()))],
                        ..Default::default()
                    }],
                }],
            }],
        };
        let p = authorization(&a).result.unwrap();
        assert_eq!(&*p.key(), "ns/p");
        assert_eq!((p.action, p.scope), (PolicyAction::Deny, PolicyScope::WorkloadSelector));
        let m = &p.rules[0].clauses[0].matches[0];
        assert_eq!(m.source_ips, ["198.18.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!(m.destination_ports, [9090]);
        assert_eq!(m.not_principals, [NameMatch::Presence]);
    }

    #[test]
    fn dump_rejections_name_the_field() {
        let bad_ip = serde_json::json!({"workloads": {"/x": {"uid": "u", "workloadIps": ["10.0.0.300"]}}});
        assert_eq!(
            from_ztunnel_dump(&bad_ip).unwrap_err().to_string(),
            "ztunnel config dump: workloads[\"/x\"].workloadIps[0]: \"10.0.0.300\" is not an IP address"
        );
        let no_host = serde_json::json!({"services": [{"namespace": "ns"}]});
        assert_eq!(from_ztunnel_dump(&no_host).unwrap_err().to_string(), "ztunnel config dump: services[0].hostname: a service needs a hostname");
        let bad_action = serde_json::json!({"policies": [{"name": "p", "action": "Audit"}]});
        assert_eq!(
            from_ztunnel_dump(&bad_action).unwrap_err().to_string(),
            "ztunnel config dump: policies[0].action: unknown action \"audit\": want Allow or Deny"
        );
        assert!(matches!(from_ztunnel_dump(&serde_json::json!({"configs": []})), Err(DumpError::UnknownShape)));
    }
}
