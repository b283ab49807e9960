//! Conversions shared by the resource translators: durations, percentages, string
//! and header matchers, header mutations, addresses.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use xds_client::pb::envoy::config::core::v3 as core;
use xds_client::pb::envoy::config::route::v3 as route;
use xds_client::pb::envoy::r#type::matcher::v3 as matcher;
use xds_client::pb::envoy::r#type::v3 as types;
use xds_client::pb::google::protobuf;

use super::Invalid;
use crate::model::common::{AppendAction, HeaderMutation, HeaderToAdd, Pattern, Percent, RegexRewrite, RegexSubstitution, StringMatch, StringMatcher};
use crate::model::route::{HeaderMatchRule, HeaderMatcher};

/// `base.field`, or `field` at the root.
pub fn join(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_owned()
    } else {
        format!("{base}.{field}")
    }
}

pub fn duration(d: &protobuf::Duration) -> Duration {
    if d.seconds < 0 || d.nanos < 0 {
        return Duration::ZERO;
    }
    Duration::new(d.seconds as u64, d.nanos as u32)
}

pub fn opt_duration(d: &Option<protobuf::Duration>) -> Option<Duration> {
    d.as_ref().map(duration)
}

/// A duration where `0` means "disabled" (Envoy's convention for timeouts).
pub fn timeout(d: &Option<protobuf::Duration>, default: Option<Duration>) -> Option<Duration> {
    match d {
        None => default,
        Some(d) => Some(duration(d)).filter(|d| !d.is_zero()),
    }
}

pub fn u32_or(v: &Option<protobuf::UInt32Value>, default: u32) -> u32 {
    v.as_ref().map_or(default, |v| v.value)
}

pub fn bool_or(v: &Option<protobuf::BoolValue>, default: bool) -> bool {
    v.as_ref().map_or(default, |v| v.value)
}

pub fn fractional_percent(p: &types::FractionalPercent) -> Percent {
    use types::fractional_percent::DenominatorType;
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::TenThousand) => 10_000,
        Ok(DenominatorType::Million) => 1_000_000,
        _ => 100,
    };
    Percent::from_fraction(p.numerator, denominator)
}

/// `RuntimeFractionalPercent`: we have no runtime, so its default value.
pub fn runtime_percent(p: &Option<core::RuntimeFractionalPercent>, default: Percent) -> Percent {
    p.as_ref().and_then(|p| p.default_value.as_ref()).map_or(default, fractional_percent)
}

pub fn regex(r: &matcher::RegexMatcher, path: &str) -> Result<Pattern, Invalid> {
    if r.regex.is_empty() {
        return Err(Invalid::new(path, "empty regex"));
    }
    Pattern::new(&r.regex).map_err(|e| Invalid::new(path, format!("invalid regex {:?}: {e}", r.regex)))
}

pub fn regex_rewrite(r: &matcher::RegexMatchAndSubstitute, path: &str) -> Result<RegexRewrite, Invalid> {
    let pattern = r.pattern.as_ref().ok_or_else(|| Invalid::new(path, "regex_rewrite needs a pattern"))?;
    Ok(RegexRewrite { pattern: regex(pattern, &format!("{path}.pattern"))?, substitution: RegexSubstitution::new(&r.substitution) })
}

/// Envoy's `StringMatcher`; prefix, suffix and contains must not be empty (its validation).
pub fn string_matcher(m: &matcher::StringMatcher, path: &str) -> Result<StringMatcher, Invalid> {
    use matcher::string_matcher::MatchPattern;
    let non_empty = |s: &String, what: &str| {
        if s.is_empty() {
            Err(Invalid::new(path, format!("empty {what} in a string matcher")))
        } else {
            Ok(s.clone())
        }
    };
    let kind = match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => StringMatch::Exact(s.clone()),
        Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(non_empty(s, "prefix")?),
        Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(non_empty(s, "suffix")?),
        Some(MatchPattern::Contains(s)) => StringMatch::Contains(non_empty(s, "contains")?),
        Some(MatchPattern::SafeRegex(r)) => StringMatch::Regex(regex(r, &format!("{path}.safe_regex"))?),
        Some(MatchPattern::Custom(_)) => return Err(Invalid::new(path, "custom string matchers are not supported")),
        None => return Err(Invalid::new(path, "a string matcher needs a pattern")),
    };
    Ok(StringMatcher { kind, ignore_case: m.ignore_case })
}

#[allow(deprecated)]
pub fn header_matcher(h: &route::HeaderMatcher, path: &str) -> Result<HeaderMatcher, Invalid> {
    use route::header_matcher::HeaderMatchSpecifier as S;
    if h.name.is_empty() {
        return Err(Invalid::new(path, "a header matcher needs a name"));
    }
    let plain = |kind| HeaderMatchRule::String(StringMatcher { kind, ignore_case: false });
    let rule = match &h.header_match_specifier {
        Some(S::ExactMatch(s)) => plain(StringMatch::Exact(s.clone())),
        Some(S::PrefixMatch(s)) => plain(StringMatch::Prefix(s.clone())),
        Some(S::SuffixMatch(s)) => plain(StringMatch::Suffix(s.clone())),
        Some(S::ContainsMatch(s)) => plain(StringMatch::Contains(s.clone())),
        Some(S::SafeRegexMatch(r)) => plain(StringMatch::Regex(regex(r, &format!("{path}.safe_regex_match"))?)),
        Some(S::RangeMatch(r)) => HeaderMatchRule::Range { start: r.start, end: r.end },
        Some(S::PresentMatch(p)) => HeaderMatchRule::Present(*p),
        Some(S::StringMatch(m)) => HeaderMatchRule::String(string_matcher(m, &format!("{path}.string_match"))?),
        // No specifier: Envoy treats the matcher as "present".
        None => HeaderMatchRule::Present(true),
    };
    Ok(HeaderMatcher { name: h.name.to_ascii_lowercase(), rule, invert: h.invert_match, treat_missing_as_empty: h.treat_missing_header_as_empty })
}

pub fn header_matchers(list: &[route::HeaderMatcher], path: &str) -> Result<Vec<HeaderMatcher>, Invalid> {
    list.iter().enumerate().map(|(i, h)| header_matcher(h, &format!("{path}[{i}]"))).collect()
}

/// Headers that Envoy does not let configuration add or remove.
fn is_protected(name: &str) -> bool {
    name.starts_with(':') || name == "host"
}

pub fn header_mutation(add: &[core::HeaderValueOption], remove: &[String], path: &str) -> Result<HeaderMutation, Invalid> {
    use core::header_value_option::HeaderAppendAction;
    let mut out = HeaderMutation::default();
    for name in remove {
        if is_protected(name) {
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| Invalid::new(path, format!("bad header name {name:?} to remove: {e}")))?;
        out.remove.push(name);
    }
    for (i, option) in add.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let header = option.header.as_ref().ok_or_else(|| Invalid::new(&here, "header_value_option without header"))?;
        if is_protected(&header.key.to_ascii_lowercase()) {
            return Err(Invalid::new(&here, format!("header {:?} cannot be set by configuration", header.key)));
        }
        let name = HeaderName::from_bytes(header.key.as_bytes()).map_err(|e| Invalid::new(&here, format!("bad header name {:?}: {e}", header.key)))?;
        let raw: &[u8] = if header.raw_value.is_empty() { header.value.as_bytes() } else { &header.raw_value };
        if raw.contains(&b'%') && contains_command_operator(raw) {
            return Err(Invalid::new(
                &here,
                format!("header value {:?} uses Envoy command operators (%…%), which are not supported", String::from_utf8_lossy(raw)),
            ));
        }
        let value = HeaderValue::from_bytes(raw).map_err(|e| Invalid::new(&here, format!("bad header value for {:?}: {e}", header.key)))?;
        // `append` (deprecated) wins when set; the default action appends.
        let action = match option.append.as_ref().map(|a| a.value) {
            Some(true) => AppendAction::AppendIfExistsOrAdd,
            Some(false) => AppendAction::OverwriteIfExistsOrAdd,
            None => match HeaderAppendAction::try_from(option.append_action) {
                Ok(HeaderAppendAction::AddIfAbsent) => AppendAction::AddIfAbsent,
                Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => AppendAction::OverwriteIfExistsOrAdd,
                Ok(HeaderAppendAction::OverwriteIfExists) => AppendAction::OverwriteIfExists,
                _ => AppendAction::AppendIfExistsOrAdd,
            },
        };
        out.add.push(HeaderToAdd { name, value, action, keep_empty_value: option.keep_empty_value });
    }
    Ok(out)
}

/// `%UPPER_CASE%` or `%OPERATOR(arg)%` (Envoy's substitution syntax).
fn contains_command_operator(raw: &[u8]) -> bool {
    let s = String::from_utf8_lossy(raw);
    let parts: Vec<&str> = s.split('%').collect();
    parts.len() >= 3
        && parts[1..parts.len() - 1].iter().any(|p| {
            let head = p.split('(').next().unwrap_or("");
            !head.is_empty() && head.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
        })
}

/// A socket address; `None` for pipes, internal listeners and named ports.
pub fn socket_address(a: &core::Address, path: &str) -> Result<SocketAddr, Invalid> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier;
    match &a.address {
        Some(A::SocketAddress(sa)) => {
            let ip: IpAddr = sa.address.parse().map_err(|_| Invalid::new(path, format!("{:?} is not an IP address", sa.address)))?;
            let port = match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => u16::try_from(p).map_err(|_| Invalid::new(path, format!("port {p} out of range")))?,
                _ => return Err(Invalid::new(path, "named ports are not supported")),
            };
            Ok(SocketAddr::new(ip, port))
        }
        Some(A::Pipe(p)) => Err(Invalid::new(path, format!("unix socket {:?} is not supported", p.path))),
        Some(A::EnvoyInternalAddress(_)) => Err(Invalid::new(path, "Envoy internal addresses are not supported")),
        None => Err(Invalid::new(path, "address missing")),
    }
}

/// A string field of `filter_metadata[filter]`.
pub fn metadata_string(md: &Option<core::Metadata>, filter: &str, key: &str) -> Option<String> {
    let s = md.as_ref()?.filter_metadata.get(filter)?;
    match s.fields.get(key)?.kind.as_ref()? {
        protobuf::value::Kind::StringValue(v) => Some(v.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_operators_are_detected() {
        assert!(contains_command_operator(b"%DOWNSTREAM_REMOTE_ADDRESS%"));
        assert!(contains_command_operator(b"x-%REQ(x-foo)%"));
        assert!(!contains_command_operator(b"100%"));
        assert!(!contains_command_operator(b"50% off, 20% more"));
    }
}
