//! Header handling between downstream and upstream: hop-by-hop headers, path
//! normalisation (RFC 3986 dot segments, merged slashes) and the headers Envoy adds.

use http::header::{HeaderName, CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
use http::HeaderMap;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Removes hop-by-hop headers (and those the `Connection` header names). `TE:
/// trailers` survives, as gRPC needs it; `keep_upgrade` keeps `Connection: upgrade`
/// and `Upgrade` for a WebSocket handshake.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass to see what is there: most messages carry none of these, or only
    // `connection: keep-alive`.
    let (mut connection, mut others) = (false, false);
    for name in headers.keys() {
        if name == CONNECTION {
            connection = true;
        } else if name == TRANSFER_ENCODING || name == TE || name == UPGRADE || name == KEEP_ALIVE || name == PROXY_CONNECTION || name == HTTP2_SETTINGS {
            others = true;
        }
    }
    if connection {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim())
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("te"))
            .filter(|t| !(keep_upgrade && t.eq_ignore_ascii_case("upgrade")))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    if others {
        headers.remove(&KEEP_ALIVE);
        headers.remove(&PROXY_CONNECTION);
        headers.remove(TRANSFER_ENCODING);
        headers.remove(&HTTP2_SETTINGS);
        if !keep_upgrade {
            headers.remove(UPGRADE);
        }
        if let Some(te) = headers.remove(TE) {
            let trailers = te.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
            if trailers {
                headers.insert(TE, http::HeaderValue::from_static("trailers"));
            }
        }
    }
    if keep_upgrade {
        headers.insert(CONNECTION, http::HeaderValue::from_static("upgrade"));
    }
}

/// The upgrade a request asks for (`websocket`, …), lower-cased.
pub fn upgrade_type(headers: &HeaderMap) -> Option<String> {
    let conn = headers.get(CONNECTION)?.to_str().ok()?;
    if !conn.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")) {
        return None;
    }
    Some(headers.get(UPGRADE)?.to_str().ok()?.trim().to_ascii_lowercase())
}

/// Envoy's `normalize_path` (RFC 3986 §6 dot-segment removal, percent-encoded
/// unreserved characters decoded) and `merge_slashes`. The query is untouched.
/// `None` when the path is invalid (it would escape the root).
pub fn normalize_path(path_and_query: &str, normalize: bool, merge_slashes: bool) -> Option<String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if !path.starts_with('/') {
        return Some(path_and_query.to_owned());
    }
    let mut p = if normalize { decode_unreserved(path) } else { path.to_owned() };
    if merge_slashes {
        let mut merged = String::with_capacity(p.len());
        let mut last_slash = false;
        for c in p.chars() {
            if c == '/' && last_slash {
                continue;
            }
            last_slash = c == '/';
            merged.push(c);
        }
        p = merged;
    }
    if normalize {
        p = remove_dot_segments(&p);
    }
    Some(format!("{p}{query}"))
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                    out.push(v as char);
                    i += 3;
                    continue;
                }
                // Envoy upper-cases the hex digits of what it keeps encoded.
                out.push('%');
                out.push_str(&path[i + 1..i + 3].to_ascii_uppercase());
                i += 3;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let trailing = path.ends_with("/.") || path.ends_with("/..") || path.ends_with('/');
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(path.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if result.is_empty() || (trailing && !result.ends_with('/')) {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("/a/b/../c", "/a/c")]
    #[test_case("/a/./b/", "/a/b/")]
    #[test_case("/../a", "/a")]
    #[test_case("/a/%62c?x=/../", "/a/bc?x=/../")]
    #[test_case("/a/%2f", "/a/%2F")]
    #[test_case("/", "/")]
    #[test_case("/a/..", "/")]
    fn normalizes(input: &str, expected: &str) {
        assert_eq!(normalize_path(input, true, false).unwrap(), expected);
    }

    proptest::proptest! {
        /// Normalising twice changes nothing, the result stays under the root, and
        /// never contains a dot segment.
        #[test]
        fn normalize_is_idempotent_and_stays_rooted(segments in proptest::collection::vec("(\\.|\\.\\.|[a-z%0-9]{0,4}|%2[eE])", 0..8), query in "(\\?[a-z=/.]{0,6})?") {
            let path = format!("/{}{}", segments.join("/"), query);
            let once = normalize_path(&path, true, true).unwrap();
            let twice = normalize_path(&once, true, true).unwrap();
            proptest::prop_assert_eq!(&once, &twice);
            proptest::prop_assert!(once.starts_with('/'));
            let path_part = once.split('?').next().unwrap_or("");
            proptest::prop_assert!(!path_part.split('/').any(|s| s == "." || s == ".."), "{} -> {}", path, once);
        }
    }

    #[test]
    fn merges_slashes() {
        assert_eq!(normalize_path("//a///b?q=//", false, true).unwrap(), "/a/b?q=//");
    }

    #[test]
    fn hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(TE, "trailers, deflate".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret") && !h.contains_key(CONNECTION) && !h.contains_key("keep-alive"));
        assert_eq!(h[TE], "trailers");
        assert!(h.contains_key("x-keep"));
    }
}

static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// A downstream's verified client certificate, as `x-forwarded-client-cert` tells of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Our own certificate's URI SANs (`By=`).
    pub by: Vec<String>,
    /// SHA-256 of the peer's certificate, lower-case hex (`Hash=`).
    pub hash: String,
    pub subject: String,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
}

/// Envoy's `x-forwarded-client-cert` handling (`mutateXfccRequestHeader`), before the
/// HTTP filters see the request: without a verified client certificate (`peer`) the
/// header is removed unless `AlwaysForwardOnly`; with one, as `cfg.forward` says.
pub fn forward_client_cert(headers: &mut HeaderMap, cfg: &istio_compat::model::listener::ClientCert, peer: Option<&PeerCertificate>) {
    use istio_compat::model::listener::ForwardClientCert as F;
    if cfg.forward == F::AlwaysForwardOnly {
        return;
    }
    let Some(peer) = peer.filter(|_| cfg.forward != F::Sanitize) else {
        headers.remove(&XFCC);
        return;
    };
    if cfg.forward == F::ForwardOnly {
        return;
    }
    let mut fields: Vec<String> = peer.by.iter().map(|uri| format!("By={uri}")).collect();
    if !peer.hash.is_empty() {
        fields.push(format!("Hash={}", peer.hash));
    }
    // Envoy's order of the details: (Cert, Chain: not supported), Subject, URI, DNS.
    if cfg.subject {
        fields.push(format!("Subject=\"{}\"", peer.subject));
    }
    if cfg.uri {
        if peer.uris.is_empty() {
            fields.push("URI=".to_owned());
        }
        fields.extend(peer.uris.iter().map(|u| format!("URI={u}")));
    }
    if cfg.dns {
        fields.extend(peer.dns.iter().map(|d| format!("DNS={d}")));
    }
    let element = fields.join(";");
    let value = match (cfg.forward, headers.get(&XFCC).and_then(|v| v.to_str().ok())) {
        (F::AppendForward, Some(previous)) if !previous.is_empty() => format!("{previous},{element}"),
        _ => element,
    };
    match http::HeaderValue::from_str(&value) {
        Ok(v) => {
            headers.insert(XFCC.clone(), v);
        }
        // A SAN with bytes a header cannot carry: forward nothing rather than a forgery.
        Err(_) => {
            headers.remove(&XFCC);
        }
    }
}

#[cfg(test)]
mod xfcc_tests {
    use super::*;
    use istio_compat::model::listener::{ClientCert, ForwardClientCert as F};

    fn peer() -> PeerCertificate {
        PeerCertificate {
            by: vec!["spiffe://cluster.local/ns/foo/sa/server".into()],
            hash: "ab01".into(),
            subject: String::new(),
            uris: vec!["spiffe://cluster.local/ns/foo/sa/client".into()],
            dns: vec!["client.foo".into()],
        }
    }

    fn run(forward: F, peer: Option<&PeerCertificate>, incoming: Option<&str>) -> Option<String> {
        let mut h = HeaderMap::new();
        if let Some(v) = incoming {
            h.insert("x-forwarded-client-cert", v.parse().unwrap());
        }
        let cfg = ClientCert { forward, subject: true, dns: true, uri: true };
        forward_client_cert(&mut h, &cfg, peer);
        h.get("x-forwarded-client-cert").map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn a_forged_header_is_removed_without_a_client_certificate() {
        for f in [F::Sanitize, F::ForwardOnly, F::AppendForward, F::SanitizeSet] {
            assert_eq!(run(f, None, Some("URI=spiffe://evil")), None, "{f:?}");
        }
        assert_eq!(run(F::AlwaysForwardOnly, None, Some("URI=x")).as_deref(), Some("URI=x"));
    }

    #[test]
    fn with_a_client_certificate_each_mode_does_what_envoy_does() {
        let p = peer();
        let element = "By=spiffe://cluster.local/ns/foo/sa/server;Hash=ab01;Subject=\"\";URI=spiffe://cluster.local/ns/foo/sa/client;DNS=client.foo";
        assert_eq!(run(F::Sanitize, Some(&p), Some("URI=x")), None);
        assert_eq!(run(F::ForwardOnly, Some(&p), Some("URI=x")).as_deref(), Some("URI=x"));
        assert_eq!(run(F::AppendForward, Some(&p), Some("URI=x")), Some(format!("URI=x,{element}")));
        assert_eq!(run(F::AppendForward, Some(&p), None).as_deref(), Some(element));
        assert_eq!(run(F::SanitizeSet, Some(&p), Some("URI=x")).as_deref(), Some(element));
    }
}
