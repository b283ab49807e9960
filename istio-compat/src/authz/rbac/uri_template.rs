//! Envoy's URI template path matcher (`envoy.path.match.uri_template`), which istiod
//! emits for AuthorizationPolicy paths with `{*}` / `{**}`.
//!
//! A template is `/`-separated segments, each a literal, `*` (one path segment),
//! `**` (any number of characters including `/`; nothing but literals may follow it),
//! or a variable `{name}` / `{name=segments}` (variables only name what they match
//! here); the last segment may end in a literal suffix (`/**.mpd`), and a trailing `/`
//! is kept. It compiles to one anchored regex over the path without query, as Envoy
//! compiles it to RE2.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::common::Pattern;

/// RFC 3986 `pchar` without `*` and `=`, which Envoy allows in literals.
const LITERAL_CLASS: &str = r"[A-Za-z0-9._~%!$&'()+,;:@\-]";

#[derive(Clone, Debug, PartialEq)]
pub struct UriTemplate {
    template: String,
    pattern: Pattern,
}

impl UriTemplate {
    pub fn new(template: &str) -> Result<Self, String> {
        let regex = to_regex(template)?;
        let pattern = Pattern::new(&regex).map_err(|e| format!("template {template:?} compiles to a bad regex: {e}"))?;
        Ok(UriTemplate { template: template.to_owned(), pattern })
    }

    pub fn template(&self) -> &str {
        &self.template
    }

    /// `path` is the path without query or fragment.
    pub fn matches(&self, path: &str) -> bool {
        self.pattern.is_full_match(path)
    }
}

impl Serialize for UriTemplate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.template)
    }
}

impl<'de> Deserialize<'de> for UriTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        UriTemplate::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Glob {
    /// `*`
    Segment,
    /// `**`
    Text,
}

fn is_literal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@".contains(&b))
}

fn glob_regex(g: Glob) -> String {
    match g {
        Glob::Segment => format!("{LITERAL_CLASS}+"),
        Glob::Text => format!("(?:{LITERAL_CLASS}|/)*"),
    }
}

/// Parses one `*`/`**`/literal piece; returns its regex and whether it was a glob.
fn piece(s: &str, globs: &mut Vec<Glob>) -> Result<String, String> {
    match s {
        "**" => {
            globs.push(Glob::Text);
            Ok(glob_regex(Glob::Text))
        }
        "*" => {
            globs.push(Glob::Segment);
            Ok(glob_regex(Glob::Segment))
        }
        lit if is_literal(lit) => Ok(regex::escape(lit)),
        other => Err(format!("invalid literal {other:?}")),
    }
}

fn variable(body: &str, names: &mut Vec<String>, globs: &mut Vec<Glob>) -> Result<String, String> {
    let (name, matcher) = match body.split_once('=') {
        Some((n, m)) => (n, Some(m)),
        None => (body, None),
    };
    let valid_name =
        name.len() <= 16 && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(format!("invalid variable name {name:?}"));
    }
    if names.iter().any(|n| n == name) {
        return Err(format!("repeated variable name {name:?}"));
    }
    names.push(name.to_owned());
    if names.len() > 5 {
        return Err("more than 5 variables".to_owned());
    }
    match matcher {
        None => piece("*", globs),
        Some("") => Err(format!("empty match for variable {name:?}")),
        Some(m) => Ok(m.split('/').map(|p| piece(p, globs)).collect::<Result<Vec<_>, _>>()?.join("/")),
    }
}

/// The regex (unanchored; [`Pattern`] anchors it) for `template`.
fn to_regex(template: &str) -> Result<String, String> {
    let invalid = |why: String| format!("uri template {template:?}: {why}");
    let Some(mut rest) = template.strip_prefix('/') else { return Err(invalid("must start with '/'".into())) };
    if !template.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("only printable characters are allowed".into()));
    }
    let mut segments = Vec::new();
    let mut suffix = String::new();
    let mut names = Vec::new();
    let mut globs = Vec::new();
    while !rest.is_empty() {
        let (head, tail) = if let Some(tail) = rest.strip_prefix("**") {
            ("**", tail)
        } else if let Some(tail) = rest.strip_prefix('*') {
            ("*", tail)
        } else if rest.starts_with('{') {
            let end = rest.find('}').ok_or_else(|| invalid("unmatched '{'".into()))?;
            (&rest[..=end], &rest[end + 1..])
        } else {
            let end = rest.find('/').unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let regex = match head.strip_prefix('{') {
            Some(body) => variable(&body[..body.len() - 1], &mut names, &mut globs).map_err(invalid)?,
            None => piece(head, &mut globs).map_err(invalid)?,
        };
        segments.push(regex);
        rest = tail;
        if rest.is_empty() {
            break;
        }
        if rest == "/" {
            segments.push(String::new());
            break;
        }
        if let Some(next) = rest.strip_prefix('/') {
            rest = next;
            continue;
        }
        // Text after an operator or variable, up to the end: a suffix.
        if rest.contains('/') {
            return Err(invalid("a suffix cannot contain '/'".into()));
        }
        suffix = piece(rest, &mut Vec::new()).map_err(invalid)?;
        break;
    }
    if let Some(i) = globs.iter().position(|g| *g == Glob::Text) {
        if i + 1 < globs.len() {
            return Err(invalid("no glob may follow '**'".into()));
        }
    }
    Ok(format!("/{}{suffix}", segments.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_segments_and_text() {
        let t = UriTemplate::new("/path/template/*").unwrap();
        assert!(t.matches("/path/template/x"));
        assert!(!t.matches("/path/template/x/y"));
        assert!(!t.matches("/path/template/"));
        let t = UriTemplate::new("/**/path/template").unwrap();
        assert!(t.matches("/a/b/path/template"));
        assert!(t.matches("//path/template"));
        assert!(!t.matches("/path/template"));
        let t = UriTemplate::new("/videos/{file=**}.mpd").unwrap();
        assert!(t.matches("/videos/a/b.mpd"));
        assert!(!t.matches("/videos/a/b.mp4"));
        let t = UriTemplate::new("/api/{version}/x/").unwrap();
        assert!(t.matches("/api/v1/x/"));
        assert!(!t.matches("/api/v1/x"));
    }

    #[test]
    fn bad_templates_are_rejected() {
        for bad in ["path", "/a//b", "/**/*", "/{a}/{a}", "/{1a}", "/a b", "/x*y/z", "/{a=}"] {
            assert!(UriTemplate::new(bad).is_err(), "{bad}");
        }
    }
}
