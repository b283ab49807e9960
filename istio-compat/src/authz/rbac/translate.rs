//! The RBAC filters' typed configuration (prost) -> [`Rbac`].
//!
//! What Envoy would reject (its proto validation or its matcher constructors) is
//! [`Invalid`], with the field path, so the xDS layer can NACK. What we cannot
//! evaluate (CEL conditions, the matcher-tree API, extension matchers, filter state
//! other than istiod's `io.istio.peer_principal`, route metadata) is [`Invalid`] too:
//! ignoring it could only decide differently, and a dropped DENY condition or ALLOW
//! clause could let traffic through. Settings that do not change the decision
//! (`audit_logging_options`, `track_per_rule_stats`, the network filter's `delay_deny`)
//! are not modelled.

use std::net::IpAddr;

use ipnet::IpNet;
use xds_client::pb::envoy::config::core::v3 as core;
use xds_client::pb::envoy::config::rbac::v3 as pb;
use xds_client::pb::envoy::extensions::filters::http::rbac::v3 as http_rbac;
use xds_client::pb::envoy::extensions::filters::network::rbac::v3 as network_rbac;
use xds_client::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use xds_client::pb::envoy::r#type::matcher::v3 as matcher;

use super::{
    Action, DoubleMatch, Enforcement, MetadataMatcher, Permission, Policy, Principal, Rbac, RuleSet, UriTemplate, ValueMatcher, PEER_PRINCIPAL_FILTER_STATE,
};
use crate::model::common::StringMatcher;
use crate::translate::common::{header_matcher, string_matcher};
use crate::translate::Invalid;

pub const HTTP_RBAC_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub const NETWORK_RBAC_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
/// istiod's CUSTOM action: these filters are not RBAC, and not evaluated here.
pub const EXT_AUTHZ_TYPE_URLS: [&str; 2] =
    ["type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"];
const URI_TEMPLATE_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig";

/// `envoy.filters.http.rbac`.
pub fn rbac_from_http(f: &http_rbac::Rbac) -> Result<Rbac, Invalid> {
    no_matcher_tree(f.matcher.is_some(), f.shadow_matcher.is_some())?;
    Ok(Rbac {
        rules: f.rules.as_ref().map(|r| rule_set(r, "rules")).transpose()?,
        shadow: f.shadow_rules.as_ref().map(|r| rule_set(r, "shadow_rules")).transpose()?,
        shadow_stat_prefix: f.shadow_rules_stat_prefix.clone(),
        stat_prefix: f.rules_stat_prefix.clone(),
        enforcement: None,
    })
}

/// `envoy.filters.network.rbac`. `delay_deny` only delays the close: not modelled.
pub fn rbac_from_network(f: &network_rbac::Rbac) -> Result<Rbac, Invalid> {
    use network_rbac::rbac::EnforcementType;
    no_matcher_tree(f.matcher.is_some(), f.shadow_matcher.is_some())?;
    if f.stat_prefix.is_empty() {
        return Err(Invalid::new("stat_prefix", "the network RBAC filter needs a stat_prefix"));
    }
    let enforcement = match EnforcementType::try_from(f.enforcement_type) {
        Ok(EnforcementType::OneTimeOnFirstByte) => Enforcement::OneTimeOnFirstByte,
        Ok(EnforcementType::Continuous) => Enforcement::Continuous,
        Err(_) => return Err(Invalid::new("enforcement_type", format!("unknown enforcement type {}", f.enforcement_type))),
    };
    Ok(Rbac {
        rules: f.rules.as_ref().map(|r| rule_set(r, "rules")).transpose()?,
        shadow: f.shadow_rules.as_ref().map(|r| rule_set(r, "shadow_rules")).transpose()?,
        shadow_stat_prefix: f.shadow_rules_stat_prefix.clone(),
        stat_prefix: f.stat_prefix.clone(),
        enforcement: Some(enforcement),
    })
}

fn no_matcher_tree(matcher: bool, shadow_matcher: bool) -> Result<(), Invalid> {
    let field = if matcher {
        "matcher"
    } else if shadow_matcher {
        "shadow_matcher"
    } else {
        return Ok(());
    };
    Err(Invalid::new(field, "the RBAC matcher-tree API is not supported (istiod emits `rules`)"))
}

fn rule_set(r: &pb::Rbac, path: &str) -> Result<RuleSet, Invalid> {
    let action = match pb::rbac::Action::try_from(r.action) {
        Ok(pb::rbac::Action::Allow) => Action::Allow,
        Ok(pb::rbac::Action::Deny) => Action::Deny,
        Ok(pb::rbac::Action::Log) => Action::Log,
        Err(_) => return Err(Invalid::new(&format!("{path}.action"), format!("unknown action {}", r.action))),
    };
    // Envoy keeps policies in a map ordered by name, and tries them in that order.
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    let policies = names.into_iter().map(|name| policy(name, &r.policies[name], &format!("{path}.policies[{name}]"))).collect::<Result<_, _>>()?;
    Ok(RuleSet::new(action, policies))
}

fn policy(name: &str, p: &pb::Policy, path: &str) -> Result<Policy, Invalid> {
    if p.condition.is_some() || p.checked_condition.is_some() {
        return Err(Invalid::new(path, "CEL conditions in RBAC policies are not supported"));
    }
    if p.permissions.is_empty() || p.principals.is_empty() {
        return Err(Invalid::new(path, "a policy needs at least one permission and one principal"));
    }
    let permissions = p.permissions.iter().enumerate().map(|(i, x)| permission(x, &format!("{path}.permissions[{i}]"))).collect::<Result<_, _>>()?;
    let principals = p.principals.iter().enumerate().map(|(i, x)| principal(x, &format!("{path}.principals[{i}]"))).collect::<Result<_, _>>()?;
    Ok(Policy { name: name.into(), permissions, principals })
}

fn permission_set(rules: &[pb::Permission], path: &str) -> Result<Vec<Permission>, Invalid> {
    if rules.is_empty() {
        return Err(Invalid::new(path, "a permission set needs at least one rule"));
    }
    rules.iter().enumerate().map(|(i, r)| permission(r, &format!("{path}.rules[{i}]"))).collect()
}

#[allow(deprecated)]
fn permission(p: &pb::Permission, path: &str) -> Result<Permission, Invalid> {
    use pb::permission::Rule;
    let at = |field: &str| format!("{path}.{field}");
    Ok(match p.rule.as_ref().ok_or_else(|| Invalid::new(path, "a permission needs a rule"))? {
        Rule::AndRules(set) => one_or(permission_set(&set.rules, &at("and_rules"))?, Permission::AndRules),
        Rule::OrRules(set) => one_or(permission_set(&set.rules, &at("or_rules"))?, Permission::OrRules),
        Rule::Any(true) => Permission::Any,
        Rule::Any(false) => return Err(Invalid::new(&at("any"), "`any` must be true")),
        Rule::NotRule(inner) => Permission::NotRule(Box::new(permission(inner, &at("not_rule"))?)),
        Rule::Header(h) => Permission::Header(header_matcher(h, &at("header"))?),
        Rule::UrlPath(m) => Permission::UrlPath(path_matcher(m, &at("url_path"))?),
        Rule::UriTemplate(ext) => Permission::UriTemplate(uri_template(ext, &at("uri_template"))?),
        Rule::DestinationIp(c) => Permission::DestinationIp(cidr(c, &at("destination_ip"))?),
        Rule::DestinationPort(port) => {
            Permission::DestinationPort(u16::try_from(*port).map_err(|_| Invalid::new(&at("destination_port"), format!("port {port} is above 65535")))?)
        }
        Rule::DestinationPortRange(r) => {
            if !(0..=65536).contains(&r.start) || !(0..=65536).contains(&r.end) || r.start >= r.end {
                return Err(Invalid::new(&at("destination_port_range"), format!("bad port range [{}, {})", r.start, r.end)));
            }
            // Valid ranges have start < end <= 65536, so start fits a port.
            Permission::DestinationPortRange { start: r.start as u16, end: r.end as u32 }
        }
        Rule::RequestedServerName(m) => Permission::RequestedServerName(string_matcher(m, &at("requested_server_name"))?),
        Rule::Metadata(m) => Permission::Metadata(metadata_matcher(m, &at("metadata"))?),
        Rule::SourcedMetadata(s) => Permission::Metadata(sourced_metadata(s, &at("sourced_metadata"))?),
        Rule::Matcher(ext) => return Err(Invalid::new(&at("matcher"), format!("RBAC matcher extension {:?} is not supported", ext.name))),
    })
}

/// A set of one is that one (istiod wraps every matcher as `and(or(x))`).
fn one_or<T>(mut set: Vec<T>, wrap: fn(Vec<T>) -> T) -> T {
    if set.len() == 1 {
        set.pop().unwrap()
    } else {
        wrap(set)
    }
}

fn principal_set(ids: &[pb::Principal], path: &str) -> Result<Vec<Principal>, Invalid> {
    if ids.is_empty() {
        return Err(Invalid::new(path, "a principal set needs at least one id"));
    }
    ids.iter().enumerate().map(|(i, id)| principal(id, &format!("{path}.ids[{i}]"))).collect()
}

#[allow(deprecated)]
fn principal(p: &pb::Principal, path: &str) -> Result<Principal, Invalid> {
    use pb::principal::Identifier;
    let at = |field: &str| format!("{path}.{field}");
    Ok(match p.identifier.as_ref().ok_or_else(|| Invalid::new(path, "a principal needs an identifier"))? {
        Identifier::AndIds(set) => one_or(principal_set(&set.ids, &at("and_ids"))?, Principal::AndIds),
        Identifier::OrIds(set) => one_or(principal_set(&set.ids, &at("or_ids"))?, Principal::OrIds),
        Identifier::Any(true) => Principal::Any,
        Identifier::Any(false) => return Err(Invalid::new(&at("any"), "`any` must be true")),
        Identifier::NotId(inner) => Principal::NotId(Box::new(principal(inner, &at("not_id"))?)),
        Identifier::Authenticated(a) => {
            Principal::Authenticated(a.principal_name.as_ref().map(|m| string_matcher(m, &at("authenticated.principal_name"))).transpose()?)
        }
        Identifier::SourceIp(c) => Principal::SourceIp(cidr(c, &at("source_ip"))?),
        Identifier::DirectRemoteIp(c) => Principal::DirectRemoteIp(cidr(c, &at("direct_remote_ip"))?),
        Identifier::RemoteIp(c) => Principal::RemoteIp(cidr(c, &at("remote_ip"))?),
        Identifier::Header(h) => Principal::Header(header_matcher(h, &at("header"))?),
        Identifier::UrlPath(m) => Principal::UrlPath(path_matcher(m, &at("url_path"))?),
        Identifier::Metadata(m) => Principal::Metadata(metadata_matcher(m, &at("metadata"))?),
        Identifier::SourcedMetadata(s) => Principal::Metadata(sourced_metadata(s, &at("sourced_metadata"))?),
        Identifier::FilterState(fs) => Principal::PeerPrincipal(peer_principal(fs, &at("filter_state"))?),
        Identifier::Custom(ext) => return Err(Invalid::new(&at("custom"), format!("custom principal extension {:?} is not supported", ext.name))),
    })
}

/// istiod's only filter-state principal: `io.istio.peer_principal` with a string matcher.
fn peer_principal(fs: &matcher::FilterStateMatcher, path: &str) -> Result<StringMatcher, Invalid> {
    if fs.key != PEER_PRINCIPAL_FILTER_STATE {
        return Err(Invalid::new(&format!("{path}.key"), format!("filter state {:?} is not supported (only {PEER_PRINCIPAL_FILTER_STATE})", fs.key)));
    }
    match &fs.matcher {
        Some(matcher::filter_state_matcher::Matcher::StringMatch(m)) => string_matcher(m, &format!("{path}.string_match")),
        _ => Err(Invalid::new(path, "only string matches on io.istio.peer_principal are supported")),
    }
}

fn cidr(c: &core::CidrRange, path: &str) -> Result<IpNet, Invalid> {
    let ip: IpAddr = c.address_prefix.parse().map_err(|_| Invalid::new(path, format!("{:?} is not an IP address", c.address_prefix)))?;
    let len = c.prefix_len.as_ref().map_or(0, |l| l.value);
    let len = u8::try_from(len).map_err(|_| Invalid::new(path, format!("prefix length {len} is too long")))?;
    IpNet::new(ip, len).map_err(|_| Invalid::new(path, format!("prefix length {len} is too long for {ip}")))
}

fn path_matcher(m: &matcher::PathMatcher, path: &str) -> Result<StringMatcher, Invalid> {
    match &m.rule {
        Some(matcher::path_matcher::Rule::Path(s)) => string_matcher(s, &format!("{path}.path")),
        None => Err(Invalid::new(path, "a path matcher needs a rule")),
    }
}

fn uri_template(ext: &core::TypedExtensionConfig, path: &str) -> Result<UriTemplate, Invalid> {
    use prost::Message;
    let any = ext.typed_config.as_ref().ok_or_else(|| Invalid::new(path, "uri_template needs a typed_config"))?;
    if any.type_url != URI_TEMPLATE_TYPE_URL {
        return Err(Invalid::new(path, format!("path matcher {:?} is not supported", any.type_url)));
    }
    let config = UriTemplateMatchConfig::decode(any.value.as_slice()).map_err(|e| Invalid::new(path, format!("bad UriTemplateMatchConfig: {e}")))?;
    UriTemplate::new(&config.path_template).map_err(|e| Invalid::new(&format!("{path}.typed_config.path_template"), e))
}

fn sourced_metadata(s: &pb::SourcedMetadata, path: &str) -> Result<MetadataMatcher, Invalid> {
    if s.metadata_source != pb::MetadataSource::Dynamic as i32 {
        return Err(Invalid::new(&format!("{path}.metadata_source"), "only dynamic metadata is supported (not route metadata)"));
    }
    let m = s.metadata_matcher.as_ref().ok_or_else(|| Invalid::new(path, "sourced_metadata needs a metadata_matcher"))?;
    metadata_matcher(m, &format!("{path}.metadata_matcher"))
}

pub(crate) fn metadata_matcher(m: &matcher::MetadataMatcher, path: &str) -> Result<MetadataMatcher, Invalid> {
    use matcher::metadata_matcher::path_segment::Segment;
    if m.filter.is_empty() || m.path.is_empty() {
        return Err(Invalid::new(path, "a metadata matcher needs a filter and a path"));
    }
    let keys = m
        .path
        .iter()
        .enumerate()
        .map(|(i, seg)| match &seg.segment {
            Some(Segment::Key(k)) if !k.is_empty() => Ok(k.clone()),
            _ => Err(Invalid::new(&format!("{path}.path[{i}]"), "a path segment needs a key")),
        })
        .collect::<Result<_, _>>()?;
    let value = m.value.as_ref().ok_or_else(|| Invalid::new(path, "a metadata matcher needs a value"))?;
    Ok(MetadataMatcher { filter: m.filter.clone(), path: keys, value: value_matcher(value, &format!("{path}.value"))?, invert: m.invert })
}

fn value_matcher(v: &matcher::ValueMatcher, path: &str) -> Result<ValueMatcher, Invalid> {
    use matcher::value_matcher::MatchPattern;
    Ok(match v.match_pattern.as_ref().ok_or_else(|| Invalid::new(path, "a value matcher needs a pattern"))? {
        MatchPattern::NullMatch(_) => ValueMatcher::Null,
        MatchPattern::DoubleMatch(d) => ValueMatcher::Double(match &d.match_pattern {
            Some(matcher::double_matcher::MatchPattern::Exact(e)) => DoubleMatch::Exact(*e),
            Some(matcher::double_matcher::MatchPattern::Range(r)) => DoubleMatch::Range { start: r.start, end: r.end },
            None => return Err(Invalid::new(&format!("{path}.double_match"), "a double matcher needs a pattern")),
        }),
        MatchPattern::StringMatch(s) => ValueMatcher::String(string_matcher(s, &format!("{path}.string_match"))?),
        MatchPattern::BoolMatch(b) => ValueMatcher::Bool(*b),
        MatchPattern::PresentMatch(p) => ValueMatcher::Present(*p),
        MatchPattern::ListMatch(l) => match &l.match_pattern {
            Some(matcher::list_matcher::MatchPattern::OneOf(one)) => {
                ValueMatcher::ListOneOf(Box::new(value_matcher(one, &format!("{path}.list_match.one_of"))?))
            }
            None => return Err(Invalid::new(&format!("{path}.list_match"), "a list matcher needs one_of")),
        },
        MatchPattern::OrMatch(o) => {
            if o.value_matchers.len() < 2 {
                return Err(Invalid::new(&format!("{path}.or_match"), "an or_match needs at least two value matchers"));
            }
            ValueMatcher::Or(
                o.value_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| value_matcher(m, &format!("{path}.or_match.value_matchers[{i}]")))
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}
