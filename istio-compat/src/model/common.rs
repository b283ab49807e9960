//! Building blocks shared by listeners, routes and clusters: names, string and regex
//! matchers, fractional percentages, header mutations, and serde forms for them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A cheap, shared name (cluster, route, listener): cloned on every request.
pub type Name = Arc<str>;

/// A compiled regular expression that prints as its source. Envoy's matchers are
/// RE2 full matches; the `regex` crate has RE2's syntax and linear-time guarantee.
#[derive(Clone)]
pub struct Pattern {
    source: Arc<str>,
    /// `^(?:source)$`: Envoy's `safe_regex` matches the whole input.
    full: regex::Regex,
    /// The unanchored form, for substitutions (`regex_rewrite`) that replace every match.
    any: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let full = regex::Regex::new(&format!("^(?:{source})$"))?;
        let any = regex::Regex::new(source)?;
        Ok(Pattern { source: source.into(), full, any })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `input` matches, as Envoy's `safe_regex` does.
    pub fn is_full_match(&self, input: &str) -> bool {
        self.full.is_match(input)
    }

    /// Replaces every match of the pattern in `input`; `\1`-style references in
    /// `substitution` (Envoy's RE2 syntax) name capture groups.
    pub fn replace_all(&self, input: &str, substitution: &RegexSubstitution) -> String {
        self.any.replace_all(input, substitution.expansion.as_ref()).into_owned()
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        Pattern::new(&source).map_err(serde::de::Error::custom)
    }
}

/// A regex substitution string as Envoy writes it (`\1` for group 1), kept with its
/// translation into the `regex` crate's syntax (`${1}`).
#[derive(Clone, Debug, PartialEq)]
pub struct RegexSubstitution {
    source: Arc<str>,
    expansion: Arc<str>,
}

impl RegexSubstitution {
    pub fn new(source: &str) -> Self {
        let mut expansion = String::with_capacity(source.len());
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.peek() {
                    Some(d) if d.is_ascii_digit() => {
                        expansion.push_str(&format!("${{{d}}}"));
                        chars.next();
                    }
                    Some('\\') => {
                        expansion.push('\\');
                        chars.next();
                    }
                    _ => expansion.push('\\'),
                },
                '$' => expansion.push_str("$$"),
                c => expansion.push(c),
            }
        }
        RegexSubstitution { source: source.into(), expansion: expansion.into() }
    }
}

impl Serialize for RegexSubstitution {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for RegexSubstitution {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(RegexSubstitution::new(&String::deserialize(d)?))
    }
}

/// A regex match-and-substitute (`regex_rewrite`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegexRewrite {
    pub pattern: Pattern,
    pub substitution: RegexSubstitution,
}

impl RegexRewrite {
    pub fn apply(&self, input: &str) -> String {
        self.pattern.replace_all(input, &self.substitution)
    }
}

/// Envoy's `StringMatcher`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StringMatcher {
    pub kind: StringMatch,
    /// Applies to exact/prefix/suffix/contains; never to regex (as in Envoy).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Pattern),
}

impl StringMatcher {
    pub fn exact(s: &str) -> Self {
        StringMatcher { kind: StringMatch::Exact(s.to_owned()), ignore_case: false }
    }

    pub fn matches(&self, input: &str) -> bool {
        if self.ignore_case && !matches!(self.kind, StringMatch::Regex(_)) {
            return self.matches_folded(input);
        }
        match &self.kind {
            StringMatch::Exact(s) => input == s,
            StringMatch::Prefix(s) => input.starts_with(s.as_str()),
            StringMatch::Suffix(s) => input.ends_with(s.as_str()),
            StringMatch::Contains(s) => input.contains(s.as_str()),
            StringMatch::Regex(p) => p.is_full_match(input),
        }
    }

    fn matches_folded(&self, input: &str) -> bool {
        let input = input.as_bytes();
        match &self.kind {
            StringMatch::Exact(s) => input.eq_ignore_ascii_case(s.as_bytes()),
            StringMatch::Prefix(s) => input.len() >= s.len() && input[..s.len()].eq_ignore_ascii_case(s.as_bytes()),
            StringMatch::Suffix(s) => input.len() >= s.len() && input[input.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes()),
            StringMatch::Contains(s) => s.is_empty() || input.windows(s.len()).any(|w| w.eq_ignore_ascii_case(s.as_bytes())),
            StringMatch::Regex(p) => std::str::from_utf8(input).is_ok_and(|i| p.is_full_match(i)),
        }
    }
}

/// A probability as parts per million (Envoy's `FractionalPercent` normalised).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percent {
    pub per_million: u32,
}

impl Percent {
    pub const ALWAYS: Percent = Percent { per_million: 1_000_000 };
    pub const NEVER: Percent = Percent { per_million: 0 };

    /// `numerator / denominator`, with `denominator` one of 100, 10 000 or 1 000 000.
    pub fn from_fraction(numerator: u32, denominator: u32) -> Self {
        let scale = 1_000_000 / denominator.max(1);
        Percent { per_million: numerator.saturating_mul(scale).min(1_000_000) }
    }

    pub fn from_percentage(value: f64) -> Self {
        let v = (value.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        Percent { per_million: v }
    }

    /// Draws once: true with this probability.
    pub fn sample(self) -> bool {
        if self.per_million >= 1_000_000 {
            return true;
        }
        if self.per_million == 0 {
            return false;
        }
        rand::random_range(0..1_000_000) < self.per_million
    }
}

/// How an added header meets an existing one (Envoy's `HeaderAppendAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

/// One header to add.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderToAdd {
    #[serde(with = "serde_header_name")]
    pub name: HeaderName,
    #[serde(with = "serde_header_value")]
    pub value: HeaderValue,
    pub action: AppendAction,
    /// Envoy drops an added header whose value is empty unless this is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_empty_value: bool,
}

/// Headers to remove, then headers to add: one level (route, virtual host, route
/// configuration, weighted cluster) of Envoy's header manipulation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderMutation {
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "serde_header_names")]
    pub remove: Vec<HeaderName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderToAdd>,
}

impl HeaderMutation {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for h in &self.add {
            if h.value.is_empty() && !h.keep_empty_value {
                continue;
            }
            match h.action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(h.name.clone(), h.value.clone());
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&h.name) {
                        headers.insert(h.name.clone(), h.value.clone());
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(h.name.clone(), h.value.clone());
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&h.name) {
                        headers.insert(h.name.clone(), h.value.clone());
                    }
                }
            }
        }
    }
}

/// Durations print as proto3 JSON does: `"1.500s"`.
pub mod serde_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).ok_or_else(|| serde::de::Error::custom(format!("bad duration {s:?}: want e.g. \"1.5s\"")))
    }

    pub fn format_duration(d: Duration) -> String {
        if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else {
            let s = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
            format!("{}s", s.trim_end_matches('0'))
        }
    }

    pub fn parse_duration(s: &str) -> Option<Duration> {
        let v: f64 = s.strip_suffix('s')?.parse().ok()?;
        (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v))
    }
}

/// `Option<Duration>` in the same form.
pub mod serde_opt_duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&serde_duration::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| serde_duration::parse_duration(&s).ok_or_else(|| serde::de::Error::custom(format!("bad duration {s:?}")))).transpose()
    }
}

pub mod serde_header_name {
    use super::*;

    pub fn serialize<S: Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(n.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderName, D::Error> {
        let s = String::deserialize(d)?;
        HeaderName::from_bytes(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

pub mod serde_header_names {
    use super::*;

    pub fn serialize<S: Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(names.iter().map(|n| n.as_str()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HeaderName>, D::Error> {
        let v: Vec<String> = Vec::deserialize(d)?;
        v.iter().map(|s| HeaderName::from_bytes(s.as_bytes()).map_err(serde::de::Error::custom)).collect()
    }
}

pub mod serde_header_value {
    use super::*;

    pub fn serialize<S: Serializer>(v: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v.as_bytes()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<HeaderValue, D::Error> {
        let s = String::deserialize(d)?;
        HeaderValue::from_str(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case(StringMatch::Exact("abc".into()), false, "abc", true)]
    #[test_case(StringMatch::Exact("abc".into()), false, "ABC", false)]
    #[test_case(StringMatch::Exact("abc".into()), true, "ABC", true)]
    #[test_case(StringMatch::Prefix("/api".into()), false, "/api/v1", true)]
    #[test_case(StringMatch::Prefix("/api".into()), true, "/API/v1", true)]
    #[test_case(StringMatch::Suffix(".com".into()), true, "X.COM", true)]
    #[test_case(StringMatch::Contains("mid".into()), false, "amidst", true)]
    #[test_case(StringMatch::Contains("mid".into()), true, "aMIDst", true)]
    #[test_case(StringMatch::Contains("mid".into()), true, "amist", false)]
    #[test_case(StringMatch::Regex(Pattern::new("a+b").unwrap()), false, "aab", true)]
    #[test_case(StringMatch::Regex(Pattern::new("a+b").unwrap()), false, "aabc", false; "regex is a full match")]
    fn string_matcher(kind: StringMatch, ignore_case: bool, input: &str, expected: bool) {
        assert_eq!(StringMatcher { kind, ignore_case }.matches(input), expected);
    }

    #[test]
    fn regex_rewrite_uses_envoy_group_syntax() {
        let rw = RegexRewrite { pattern: Pattern::new("^/service/([^/]+)(/.*)$").unwrap(), substitution: RegexSubstitution::new("\\2/instance/\\1") };
        assert_eq!(rw.apply("/service/foo/v1/api"), "/v1/api/instance/foo");
        let literal_dollar = RegexRewrite { pattern: Pattern::new("x").unwrap(), substitution: RegexSubstitution::new("$1") };
        assert_eq!(literal_dollar.apply("axb"), "a$1b");
    }

    #[test]
    fn percent_from_fraction() {
        assert_eq!(Percent::from_fraction(50, 100).per_million, 500_000);
        assert_eq!(Percent::from_fraction(1, 10_000).per_million, 100);
        assert_eq!(Percent::from_fraction(7, 1_000_000).per_million, 7);
        assert_eq!(Percent::from_fraction(500, 100), Percent::ALWAYS);
        assert!(Percent::ALWAYS.sample());
        assert!(!Percent::NEVER.sample());
    }

    #[test]
    fn header_mutation_actions() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("1"));
        h.insert("gone", HeaderValue::from_static("x"));
        let add = |name: &'static str, value: &'static str, action| HeaderToAdd {
            name: HeaderName::from_static(name),
            value: HeaderValue::from_static(value),
            action,
            keep_empty_value: false,
        };
        let m = HeaderMutation {
            remove: vec![HeaderName::from_static("gone")],
            add: vec![
                add("a", "2", AppendAction::AppendIfExistsOrAdd),
                add("b", "1", AppendAction::AddIfAbsent),
                add("a", "3", AppendAction::AddIfAbsent),
                add("c", "1", AppendAction::OverwriteIfExists),
                add("d", "", AppendAction::OverwriteIfExistsOrAdd),
            ],
        };
        m.apply(&mut h);
        assert_eq!(h.get_all("a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(h.get("b").unwrap(), "1");
        assert!(!h.contains_key("c"));
        assert!(!h.contains_key("d"), "empty values are dropped unless keep_empty_value");
        assert!(!h.contains_key("gone"));
    }

    #[test]
    fn durations_print_like_proto3_json() {
        use serde_duration::*;
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(15)), "15s");
        assert_eq!(parse_duration("0.25s"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("-1s"), None);
    }
}
