//! TLS ClientHello parsing for protocol sniffing, the part of Envoy's
//! `tls_inspector` that finds the SNI host name and the ALPN list.
//!
//! The ClientHello may be split across several handshake records (RFC 8446
//! §5.1 allows any fragmentation); they are reassembled, up to
//! [`MAX_CLIENT_HELLO_LEN`] bytes of handshake message in at most
//! [`MAX_CLIENT_HELLO_RECORDS`] records. The message is then checked the way
//! BoringSSL (Envoy's TLS stack) checks it before the inspector sees it, so a
//! hello that a TLS server would reject as malformed is reported as an error
//! rather than half-parsed: the legacy version, session id, cipher suites and
//! compression methods are structurally validated, the extension block must
//! fill the message exactly and hold no duplicate extension, and the
//! `server_name` and `application_layer_protocol_negotiation` extensions must
//! be well formed.

use std::borrow::Cow;

/// TLS record content type `handshake`.
pub(crate) const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_TYPE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
const RANDOM_LEN: usize = 32;
const MAX_SESSION_ID_LEN: usize = 32;
const MAX_HOST_NAME_LEN: usize = 255;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const SNI_HOST_NAME: u8 = 0;

/// The largest TLS plaintext record body (2^14 bytes, RFC 8446 §5.1).
pub const MAX_TLS_RECORD_LEN: usize = 1 << 14;

/// The largest ClientHello handshake message accepted, its 4-byte handshake
/// header included (Envoy's default `max_client_hello_size`).
pub const MAX_CLIENT_HELLO_LEN: usize = 16 * 1024;

/// The most TLS records a ClientHello may be split across.
pub const MAX_CLIENT_HELLO_RECORDS: usize = 64;

/// The most bytes [`client_hello`] reads: a ClientHello of the largest size
/// in the most records, with their headers.
pub const MAX_TLS_SNIFF_LEN: usize = MAX_CLIENT_HELLO_LEN + RECORD_HEADER_LEN * MAX_CLIENT_HELLO_RECORDS;

/// What a TLS ClientHello asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClientHello {
    /// The SNI host name (`server_name` extension, `host_name` entry),
    /// ASCII-lowercased as Envoy does. Bytes that are not UTF-8 are replaced
    /// by U+FFFD.
    pub server_name: Option<String>,
    /// The ALPN protocol names in the client's order; empty when the
    /// extension is absent. Bytes that are not UTF-8 are replaced by U+FFFD.
    pub alpn: Vec<String>,
}

/// Why bytes are not (yet) a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A prefix of a ClientHello: more bytes are needed to decide.
    #[error("the ClientHello is incomplete; more bytes are needed")]
    Truncated,
    /// A record carries something other than a handshake.
    #[error("TLS record has content type {0:#04x}, expected handshake (0x16)")]
    NotHandshake(u8),
    /// A record header does not carry a TLS (3.x) version.
    #[error("TLS record version major byte is {0:#04x}, expected 0x03")]
    RecordVersion(u8),
    /// A record is empty or longer than [`MAX_TLS_RECORD_LEN`].
    #[error("TLS record length {0} is outside 1..=16384")]
    RecordLength(usize),
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message has type {0}, expected ClientHello (1)")]
    NotClientHello(u8),
    /// The ClientHello is longer than [`MAX_CLIENT_HELLO_LEN`].
    #[error("ClientHello of {0} bytes exceeds the limit of {MAX_CLIENT_HELLO_LEN} bytes")]
    TooLarge(usize),
    /// The ClientHello is split across more than
    /// [`MAX_CLIENT_HELLO_RECORDS`] records.
    #[error("ClientHello is split across more than {MAX_CLIENT_HELLO_RECORDS} TLS records")]
    TooManyRecords,
    /// The ClientHello body is structurally invalid.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// An extension type appears twice.
    #[error("malformed ClientHello: extension {0} appears more than once")]
    DuplicateExtension(u16),
}

/// Parses the ClientHello at the start of `buf`, which must begin with a TLS
/// handshake record. Bytes after the ClientHello are ignored.
///
/// Returns [`TlsError::Truncated`] when `buf` is a strict prefix of a
/// ClientHello that could still turn out well formed, and another error as
/// soon as the bytes cannot be one.
pub fn client_hello(buf: &[u8]) -> Result<ClientHello, TlsError> {
    let msg_type = handshake_bytes(buf, 1)?;
    match msg_type.first() {
        Some(&HANDSHAKE_TYPE_CLIENT_HELLO) => {}
        Some(&other) => return Err(TlsError::NotClientHello(other)),
        None => return Err(TlsError::Truncated),
    }
    let header = handshake_bytes(buf, HANDSHAKE_HEADER_LEN)?;
    let body_len = match header.get(1..HANDSHAKE_HEADER_LEN) {
        Some(&[a, b, c]) => usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c),
        _ => return Err(TlsError::Truncated),
    };
    let msg_len = HANDSHAKE_HEADER_LEN + body_len;
    if msg_len > MAX_CLIENT_HELLO_LEN {
        return Err(TlsError::TooLarge(msg_len));
    }
    let msg = handshake_bytes(buf, msg_len)?;
    let body = msg.get(HANDSHAKE_HEADER_LEN..).ok_or(TlsError::Truncated)?;
    parse_body(body)
}

/// Collects the first `n` bytes of the handshake stream carried by the
/// records at the start of `buf`, validating each record header on the way.
/// Borrows when they lie in one record; otherwise copies (at most `n` bytes,
/// and callers never ask for more than [`MAX_CLIENT_HELLO_LEN`]).
fn handshake_bytes(buf: &[u8], n: usize) -> Result<Cow<'_, [u8]>, TlsError> {
    let mut rest = buf;
    let mut out: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut records = 0;
    while out.len() < n {
        if records == MAX_CLIENT_HELLO_RECORDS {
            return Err(TlsError::TooManyRecords);
        }
        records += 1;
        let (fragment, complete, next) = record(rest)?;
        let take = fragment.len().min(n.saturating_sub(out.len()));
        let piece = fragment.get(..take).unwrap_or(fragment);
        if out.is_empty() {
            out = Cow::Borrowed(piece);
        } else {
            out.to_mut().extend_from_slice(piece);
        }
        if out.len() < n && !complete {
            return Err(TlsError::Truncated);
        }
        rest = next;
    }
    Ok(out)
}

/// Splits one handshake record off the front of `buf`: returns the part of
/// its body that has arrived, whether that is the whole body, and the bytes
/// after the record. Header bytes are checked as soon as they are present.
fn record(buf: &[u8]) -> Result<(&[u8], bool, &[u8]), TlsError> {
    match buf.first() {
        None => return Err(TlsError::Truncated),
        Some(&CONTENT_TYPE_HANDSHAKE) => {}
        Some(&other) => return Err(TlsError::NotHandshake(other)),
    }
    match buf.get(1) {
        None => return Err(TlsError::Truncated),
        Some(3) => {}
        Some(&other) => return Err(TlsError::RecordVersion(other)),
    }
    let len = match buf.get(3..RECORD_HEADER_LEN) {
        Some(&[hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
        _ => return Err(TlsError::Truncated),
    };
    if len == 0 || len > MAX_TLS_RECORD_LEN {
        return Err(TlsError::RecordLength(len));
    }
    let body = buf.get(RECORD_HEADER_LEN..).unwrap_or_default();
    match body.split_at_checked(len) {
        Some((fragment, next)) => Ok((fragment, true, next)),
        None => Ok((body, false, &[])),
    }
}

/// Parses a ClientHello body (after the 4-byte handshake header).
fn parse_body(body: &[u8]) -> Result<ClientHello, TlsError> {
    use TlsError::Malformed;
    let mut r = Reader(body);
    let legacy_version = r.u16().ok_or(Malformed("missing legacy_version"))?;
    if legacy_version >> 8 != 3 {
        return Err(Malformed("legacy_version is not TLS 3.x"));
    }
    r.take(RANDOM_LEN).ok_or(Malformed("random is truncated"))?;
    let session_id = r.u8_prefixed().ok_or(Malformed("session_id is truncated"))?;
    if session_id.len() > MAX_SESSION_ID_LEN {
        return Err(Malformed("session_id is longer than 32 bytes"));
    }
    let suites = r.u16_prefixed().ok_or(Malformed("cipher_suites is truncated"))?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Malformed("cipher_suites is empty or of odd length"));
    }
    let compression = r.u8_prefixed().ok_or(Malformed("compression_methods is truncated"))?;
    if compression.is_empty() {
        return Err(Malformed("compression_methods is empty"));
    }
    let mut hello = ClientHello::default();
    if r.is_empty() {
        // A hello without an extension block (SSL 3.0 / TLS 1.0 style).
        return Ok(hello);
    }
    let extensions = r.u16_prefixed().ok_or(Malformed("extensions is truncated"))?;
    if !r.is_empty() {
        return Err(Malformed("trailing bytes after the extensions"));
    }
    let mut exts = Reader(extensions);
    let mut seen = Vec::new();
    while !exts.is_empty() {
        let ext_type = exts.u16().ok_or(Malformed("extension type is truncated"))?;
        let data = exts.u16_prefixed().ok_or(Malformed("extension data is truncated"))?;
        seen.push(ext_type);
        match ext_type {
            EXT_SERVER_NAME => hello.server_name = Some(parse_server_name(data)?),
            EXT_ALPN => hello.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    seen.sort_unstable();
    if let Some(dup) = seen.windows(2).find_map(|w| match w {
        [a, b] if a == b => Some(*a),
        _ => None,
    }) {
        return Err(TlsError::DuplicateExtension(dup));
    }
    Ok(hello)
}

/// The `server_name` extension (RFC 6066 §3), read as BoringSSL does: exactly
/// one entry, of type `host_name`, 1–255 bytes, no NUL.
fn parse_server_name(data: &[u8]) -> Result<String, TlsError> {
    use TlsError::Malformed;
    let mut r = Reader(data);
    let list = r.u16_prefixed().ok_or(Malformed("server_name list is truncated"))?;
    if !r.is_empty() {
        return Err(Malformed("trailing bytes after the server_name list"));
    }
    let mut list = Reader(list);
    let name_type = list.u8().ok_or(Malformed("server_name list is empty"))?;
    let host = list.u16_prefixed().ok_or(Malformed("server_name entry is truncated"))?;
    if !list.is_empty() {
        return Err(Malformed("server_name list has more than one entry"));
    }
    if name_type != SNI_HOST_NAME {
        return Err(Malformed("server_name entry is not a host_name"));
    }
    if host.is_empty() || host.len() > MAX_HOST_NAME_LEN || host.contains(&0) {
        return Err(Malformed("server_name host_name is empty, too long or has a NUL"));
    }
    Ok(String::from_utf8_lossy(host).to_ascii_lowercase())
}

/// The `application_layer_protocol_negotiation` extension (RFC 7301 §3.1):
/// a non-empty list of non-empty names.
fn parse_alpn(data: &[u8]) -> Result<Vec<String>, TlsError> {
    use TlsError::Malformed;
    let mut r = Reader(data);
    let list = r.u16_prefixed().ok_or(Malformed("ALPN list is truncated"))?;
    if !r.is_empty() {
        return Err(Malformed("trailing bytes after the ALPN list"));
    }
    if list.is_empty() {
        return Err(Malformed("ALPN list is empty"));
    }
    let mut list = Reader(list);
    let mut names = Vec::new();
    while !list.is_empty() {
        let name = list.u8_prefixed().ok_or(Malformed("ALPN protocol name is truncated"))?;
        if name.is_empty() {
            return Err(Malformed("ALPN protocol name is empty"));
        }
        names.push(String::from_utf8_lossy(name).into_owned());
    }
    Ok(names)
}

/// A cursor over bytes whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, tail) = self.0.split_first()?;
        self.0 = tail;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        match self.take(2)? {
            &[hi, lo] => Some(u16::from_be_bytes([hi, lo])),
            _ => None,
        }
    }

    fn u8_prefixed(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    fn u16_prefixed(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    /// Builds a ClientHello handshake message (header included) from its
    /// extensions block contents.
    fn hello_msg(extensions: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0xab; 32]);
        body.push(0); // session_id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        if let Some(ext) = extensions {
            body.extend_from_slice(&u16::try_from(ext.len()).unwrap().to_be_bytes());
            body.extend_from_slice(ext);
        }
        let mut msg = vec![HANDSHAKE_TYPE_CLIENT_HELLO];
        msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Wraps a handshake stream into records of at most `frag` bytes.
    fn records(msg: &[u8], frag: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in msg.chunks(frag) {
            out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 0x03, 0x01]);
            out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn ext(ext_type: u16, data: &[u8]) -> Vec<u8> {
        let mut out = ext_type.to_be_bytes().to_vec();
        out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    fn sni(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![SNI_HOST_NAME];
        entry.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
        entry.extend_from_slice(name);
        let mut data = u16::try_from(entry.len()).unwrap().to_be_bytes().to_vec();
        data.extend_from_slice(&entry);
        ext(EXT_SERVER_NAME, &data)
    }

    fn alpn(names: &[&[u8]]) -> Vec<u8> {
        let mut list = Vec::new();
        for n in names {
            list.push(u8::try_from(n.len()).unwrap());
            list.extend_from_slice(n);
        }
        let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        ext(EXT_ALPN, &data)
    }

    #[test]
    fn minimal_hello_without_extensions() {
        let buf = records(&hello_msg(None), MAX_TLS_RECORD_LEN);
        assert_eq!(client_hello(&buf), Ok(ClientHello::default()));
    }

    #[test]
    fn sni_and_alpn_are_extracted_and_sni_lowercased() {
        let exts = [sni(b"Foo.EXAMPLE.com"), alpn(&[b"h2", b"http/1.1"])].concat();
        let buf = records(&hello_msg(Some(&exts)), MAX_TLS_RECORD_LEN);
        let hello = client_hello(&buf).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("foo.example.com"));
        assert_eq!(hello.alpn, ["h2", "http/1.1"]);
    }

    #[test_case(1; "one byte records")]
    #[test_case(3; "header split across records")]
    #[test_case(7; "odd fragments")]
    #[test_case(64; "small records")]
    fn fragmented_hello_is_reassembled(frag: usize) {
        // One-byte records only fit a small hello under the record limit.
        let names: &[&[u8]] = if frag == 1 { &[] } else { &[b"h2"] };
        let exts = [sni(b"a"), if names.is_empty() { vec![] } else { alpn(names) }].concat();
        let msg = hello_msg(Some(&exts));
        assert!(msg.len().div_ceil(frag) <= MAX_CLIENT_HELLO_RECORDS);
        let buf = records(&msg, frag);
        let hello = client_hello(&buf).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("a"));
        assert_eq!(hello.alpn.len(), names.len());
        for end in 0..buf.len() {
            assert_eq!(client_hello(&buf[..end]), Err(TlsError::Truncated), "prefix {end}");
        }
    }

    #[test]
    fn too_many_records() {
        let exts = [sni(b"a-longer-name.example.com")].concat();
        let msg = hello_msg(Some(&exts));
        assert!(msg.len() > MAX_CLIENT_HELLO_RECORDS);
        let buf = records(&msg, 1);
        assert_eq!(client_hello(&buf), Err(TlsError::TooManyRecords));
    }

    #[test]
    fn largest_hello_fits_and_one_more_byte_does_not() {
        let base = hello_msg(Some(&[])).len();
        // A padding-like extension (type 21) that fills the message to the cap.
        let pad = MAX_CLIENT_HELLO_LEN - base - 4;
        let msg = hello_msg(Some(&ext(21, &vec![0; pad])));
        assert_eq!(msg.len(), MAX_CLIENT_HELLO_LEN);
        let buf = records(&msg, MAX_TLS_RECORD_LEN);
        assert_eq!(client_hello(&buf), Ok(ClientHello::default()));

        let msg = hello_msg(Some(&ext(21, &vec![0; pad + 1])));
        let buf = records(&msg, MAX_TLS_RECORD_LEN);
        assert_eq!(client_hello(&buf[..RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN]), Err(TlsError::TooLarge(MAX_CLIENT_HELLO_LEN + 1)));
    }

    #[test_case(&[0x17, 0x03, 0x03], TlsError::NotHandshake(0x17); "application data")]
    #[test_case(&[0x16, 0x02], TlsError::RecordVersion(2); "record version 2")]
    #[test_case(&[0x16, 0x03, 0x01, 0x00, 0x00], TlsError::RecordLength(0); "empty record")]
    #[test_case(&[0x16, 0x03, 0x01, 0x40, 0x01], TlsError::RecordLength(16385); "record too long")]
    #[test_case(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02], TlsError::NotClientHello(2); "server hello")]
    #[test_case(
        &[0x16, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00, 0x15, 0x03, 0x01],
        TlsError::NotHandshake(0x15);
        "alert between fragments"
    )]
    fn record_errors(buf: &[u8], err: TlsError) {
        assert_eq!(client_hello(buf), Err(err));
    }

    #[test_case(&sni(b""), "empty host name")]
    #[test_case(&sni(b"a\0b"), "nul in host name")]
    #[test_case(&sni(&[b'a'; 256]), "host name too long")]
    #[test_case(&ext(EXT_SERVER_NAME, &[]), "empty server_name")]
    #[test_case(&ext(EXT_SERVER_NAME, &[0, 4, 1, 0, 1, b'a']), "non host_name type")]
    #[test_case(&ext(EXT_SERVER_NAME, &[0, 8, 0, 0, 1, b'a', 0, 0, 1, b'b']), "two entries")]
    #[test_case(&ext(EXT_SERVER_NAME, &[0, 4, 0, 0, 1, b'a', 0]), "sni trailing byte")]
    #[test_case(&alpn(&[]), "empty alpn list")]
    #[test_case(&alpn(&[b"h2", b""]), "empty alpn name")]
    #[test_case(&ext(EXT_ALPN, &[0, 3, 2, b'h']), "alpn name truncated")]
    #[test_case(&[sni(b"a"), sni(b"b")].concat(), "duplicate sni")]
    #[test_case(&[ext(99, &[]), ext(99, &[])].concat(), "duplicate unknown extension")]
    #[test_case(&[0, 21, 0, 5, 0], "extension data truncated")]
    #[test_case(&[0], "extension type truncated")]
    fn malformed_extensions_are_errors(exts: &[u8], _why: &str) {
        let buf = records(&hello_msg(Some(exts)), MAX_TLS_RECORD_LEN);
        let err = client_hello(&buf).unwrap_err();
        assert!(matches!(err, TlsError::Malformed(_) | TlsError::DuplicateExtension(_)), "{err:?}");
    }

    #[test]
    fn malformed_body_fields_are_errors() {
        let good = hello_msg(Some(&[]));
        let body_at = HANDSHAKE_HEADER_LEN;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("legacy_version is not TLS 3.x", {
                let mut m = good.clone();
                m[body_at] = 0x02;
                m
            }),
            ("session_id is longer than 32 bytes", {
                let mut m = good.clone();
                m[body_at + 34] = 33;
                m.splice(body_at + 35..body_at + 35, [0; 33]);
                m[3] += 33;
                m
            }),
            ("cipher_suites is empty or of odd length", {
                let mut m = good.clone();
                m[body_at + 36] = 0;
                m
            }),
            ("cipher_suites is empty or of odd length", {
                let mut m = good.clone();
                m[body_at + 36] = 1;
                m
            }),
        ];
        for (why, msg) in cases {
            let buf = records(&msg, MAX_TLS_RECORD_LEN);
            assert_eq!(client_hello(&buf), Err(TlsError::Malformed(why)));
        }
        // Trailing bytes after the extension block.
        let mut msg = good.clone();
        msg.push(0);
        msg[3] += 1;
        let buf = records(&msg, MAX_TLS_RECORD_LEN);
        assert_eq!(client_hello(&buf), Err(TlsError::Malformed("trailing bytes after the extensions")));
    }

    #[test]
    fn non_utf8_names_are_replaced_not_rejected() {
        let exts = [sni(b"A\xffb"), alpn(&[b"\xfe"])].concat();
        let buf = records(&hello_msg(Some(&exts)), MAX_TLS_RECORD_LEN);
        let hello = client_hello(&buf).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("a\u{fffd}b"));
        assert_eq!(hello.alpn, ["\u{fffd}"]);
    }

    #[test]
    fn error_messages_say_what_went_wrong() {
        assert_eq!(TlsError::RecordLength(0).to_string(), "TLS record length 0 is outside 1..=16384");
        assert_eq!(TlsError::TooLarge(20000).to_string(), "ClientHello of 20000 bytes exceeds the limit of 16384 bytes");
        assert_eq!(TlsError::DuplicateExtension(0).to_string(), "malformed ClientHello: extension 0 appears more than once");
    }
}
