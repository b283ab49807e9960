//! Recognition of an HTTP/1.x request line, the way Envoy's `http_inspector`
//! decides a connection speaks cleartext HTTP/1.
//!
//! A connection is HTTP/1 when its first line is
//! `METHOD SP request-target SP HTTP/1.d CRLF` (a bare LF is tolerated, as
//! `http_parser` does), where `METHOD` is one of [`HTTP1_METHODS`], the target
//! is a non-empty run of bytes other than controls, SP and DEL, and `d` is a
//! digit. The decision is made byte by byte: as soon as the bytes so far
//! cannot start such a line the answer is "no", and while they can but the
//! line is not complete the answer is "need more" — up to
//! [`MAX_REQUEST_LINE_LEN`] bytes, past which a line without its terminator is
//! "no".

use super::Progress;

/// The longest request line (terminator included) that is inspected; a
/// connection whose first line is not complete within this many bytes is not
/// classified as HTTP/1.
pub const MAX_REQUEST_LINE_LEN: usize = 8 * 1024;

/// The method tokens recognised at the start of a request line: the
/// RFC 9110 methods, PATCH, WebDAV/CalDAV (RFC 4918, 3253, 5323, 4791, 5842)
/// and the other methods `http_parser` (used by `http_inspector`) knows.
/// `PRI` is deliberately absent: it opens the HTTP/2 preface.
pub const HTTP1_METHODS: &[&str] = &[
    // RFC 9110 and RFC 5789.
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
    "PATCH",
    // WebDAV, versioning, search, CalDAV, bindings, ACL.
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "REPORT",
    "SEARCH",
    "MKCALENDAR",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    // UPnP and others known to http_parser.
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PURGE",
    "LINK",
    "UNLINK",
    "SOURCE",
];

/// The HTTP/1 version named by a request line, reported the way
/// `http_inspector` does: `HTTP/1.1` is 1.1, any other `HTTP/1.d` is 1.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Http1Version {
    /// `HTTP/1.0` (or another `HTTP/1.d` than 1.1).
    Http10,
    /// `HTTP/1.1`.
    Http11,
}

impl Http1Version {
    /// The ALPN-style name Envoy reports: `"http/1.0"` or `"http/1.1"`.
    pub const fn alpn(self) -> &'static str {
        match self {
            Self::Http10 => "http/1.0",
            Self::Http11 => "http/1.1",
        }
    }
}

/// Decides whether `buf` starts with an HTTP/1 request line.
pub(crate) fn request_line(buf: &[u8]) -> Progress<Http1Version> {
    let inspected = buf.get(..MAX_REQUEST_LINE_LEN).unwrap_or(buf);
    match parse(inspected) {
        Progress::NeedMore if buf.len() >= MAX_REQUEST_LINE_LEN => Progress::NoMatch,
        decided => decided,
    }
}

fn parse(buf: &[u8]) -> Progress<Http1Version> {
    let after_method = match method(buf) {
        Progress::Match(rest) => rest,
        Progress::NeedMore => return Progress::NeedMore,
        Progress::NoMatch => return Progress::NoMatch,
    };
    let Some(end) = after_method.iter().position(|&b| !is_target_byte(b)) else {
        return Progress::NeedMore;
    };
    let Some((target, after_target)) = after_method.split_at_checked(end) else {
        return Progress::NoMatch;
    };
    match after_target.split_first() {
        Some((b' ', version_and_rest)) if !target.is_empty() => version(version_and_rest),
        _ => Progress::NoMatch,
    }
}

/// Matches a known method followed by SP; returns the bytes after the SP.
fn method(buf: &[u8]) -> Progress<&[u8]> {
    let mut need_more = false;
    for m in HTTP1_METHODS {
        let m = m.as_bytes();
        match buf.strip_prefix(m) {
            Some(rest) => match rest.split_first() {
                Some((b' ', rest)) => return Progress::Match(rest),
                Some(_) => {}
                None => need_more = true,
            },
            None => need_more |= m.starts_with(buf),
        }
    }
    if need_more {
        Progress::NeedMore
    } else {
        Progress::NoMatch
    }
}

/// A request-target byte: anything visible, including obs-text, but no
/// control character, SP or DEL.
fn is_target_byte(b: u8) -> bool {
    b > b' ' && b != 0x7f
}

/// Matches `HTTP/1.d` followed by CRLF (or a bare LF).
fn version(buf: &[u8]) -> Progress<Http1Version> {
    const PREFIX: &[u8] = b"HTTP/1.";
    let seen = buf.len().min(PREFIX.len());
    if buf.get(..seen) != PREFIX.get(..seen) {
        return Progress::NoMatch;
    }
    let Some(rest) = buf.strip_prefix(PREFIX) else {
        return Progress::NeedMore;
    };
    let (version, terminator) = match rest.split_first() {
        None => return Progress::NeedMore,
        Some((b'1', t)) => (Http1Version::Http11, t),
        Some((d, t)) if d.is_ascii_digit() => (Http1Version::Http10, t),
        Some(_) => return Progress::NoMatch,
    };
    match terminator {
        [] | [b'\r'] => Progress::NeedMore,
        [b'\n', ..] | [b'\r', b'\n', ..] => Progress::Match(version),
        _ => Progress::NoMatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case(b"GET / HTTP/1.1\r\n", Http1Version::Http11; "get 1.1")]
    #[test_case(b"GET / HTTP/1.0\r\n", Http1Version::Http10; "get 1.0")]
    #[test_case(b"HEAD /x?y=z HTTP/1.1\r\nHost: a\r\n\r\n", Http1Version::Http11; "head with headers")]
    #[test_case(b"CONNECT example.com:443 HTTP/1.1\r\n", Http1Version::Http11; "connect authority form")]
    #[test_case(b"OPTIONS * HTTP/1.1\r\n", Http1Version::Http11; "options asterisk")]
    #[test_case(b"M-SEARCH * HTTP/1.1\r\n", Http1Version::Http11; "upnp m-search")]
    #[test_case(b"PROPPATCH /dav HTTP/1.1\r\n", Http1Version::Http11; "webdav proppatch")]
    #[test_case(b"GET / HTTP/1.1\n", Http1Version::Http11; "bare lf")]
    #[test_case(b"GET / HTTP/1.9\r\n", Http1Version::Http10; "other minor reported as 1.0")]
    #[test_case(b"GET /\xc3\xa9 HTTP/1.1\r\n", Http1Version::Http11; "obs-text in target")]
    fn matches(buf: &[u8], version: Http1Version) {
        assert_eq!(request_line(buf), Progress::Match(version));
    }

    #[test_case(b""; "empty")]
    #[test_case(b"G"; "method prefix")]
    #[test_case(b"P"; "shared method prefix")]
    #[test_case(b"PROP"; "webdav prefix")]
    #[test_case(b"GET"; "method without sp")]
    #[test_case(b"GET "; "no target yet")]
    #[test_case(b"GET /index.html"; "target in progress")]
    #[test_case(b"GET / "; "no version yet")]
    #[test_case(b"GET / HTT"; "version prefix")]
    #[test_case(b"GET / HTTP/1."; "version without digit")]
    #[test_case(b"GET / HTTP/1.1"; "no terminator")]
    #[test_case(b"GET / HTTP/1.1\r"; "cr without lf")]
    fn needs_more(buf: &[u8]) {
        assert_eq!(request_line(buf), Progress::NeedMore);
    }

    #[test_case(b"get / HTTP/1.1\r\n"; "lowercase method")]
    #[test_case(b"GETX / HTTP/1.1\r\n"; "unknown method")]
    #[test_case(b"PRI * HTTP/2.0\r\n"; "h2 preface is not http1")]
    #[test_case(b"GET\t/ HTTP/1.1\r\n"; "tab after method")]
    #[test_case(b"GET  / HTTP/1.1\r\n"; "empty target")]
    #[test_case(b"GET /\r\n"; "http 0.9 line")]
    #[test_case(b"GET / HTTP/2.0\r\n"; "http 2 version")]
    #[test_case(b"GET / http/1.1\r\n"; "lowercase version")]
    #[test_case(b"GET / HTTP/1.x\r\n"; "non-digit minor")]
    #[test_case(b"GET / HTTP/1.1 \r\n"; "trailing space")]
    #[test_case(b"GET / HTTP/1.1\rX"; "cr then garbage")]
    #[test_case(b"GET /a\x00b HTTP/1.1\r\n"; "nul in target")]
    #[test_case(b"GET /a\x7fb HTTP/1.1\r\n"; "del in target")]
    #[test_case(b"\x16\x03\x01"; "tls")]
    #[test_case(b"SSH-2.0-OpenSSH_9.6\r\n"; "ssh banner")]
    fn no_match(buf: &[u8]) {
        assert_eq!(request_line(buf), Progress::NoMatch);
    }

    #[test]
    fn long_line_is_bounded() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE_LEN - 1, b'a');
        assert_eq!(request_line(&line), Progress::NeedMore);
        line.push(b'a');
        assert_eq!(request_line(&line), Progress::NoMatch);
        line.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(request_line(&line), Progress::NoMatch);
    }

    #[test]
    fn line_ending_exactly_at_the_cap_matches() {
        let suffix = b" HTTP/1.1\r\n";
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE_LEN - suffix.len(), b'a');
        line.extend_from_slice(suffix);
        assert_eq!(line.len(), MAX_REQUEST_LINE_LEN);
        assert_eq!(request_line(&line), Progress::Match(Http1Version::Http11));
    }

    #[test]
    fn method_list_has_no_duplicates_and_no_pri() {
        let mut methods = HTTP1_METHODS.to_vec();
        methods.sort_unstable();
        methods.dedup();
        assert_eq!(methods.len(), HTTP1_METHODS.len());
        assert!(!HTTP1_METHODS.contains(&"PRI"));
    }
}
