//! The `grpc-message` header's percent-encoding: bytes of the UTF-8 message
//! outside `0x20..=0x7E`, and `%` itself, are sent as `%XX`.
//!
//! Decoding never fails, as the spec requires ("implementations MUST NOT
//! error or throw away the message"): a `%` not followed by two hex digits is
//! kept as is, and bytes that do not decode to UTF-8 become U+FFFD.

use std::fmt::Write as _;

/// Percent-encodes a status message for the `grpc-message` header.
pub fn percent_encode_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes a `grpc-message` header value.
pub fn percent_decode_message(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some((&b, tail)) = rest.split_first() {
        match (b, tail) {
            (b'%', [hi, lo, after @ ..]) => match (hex_value(*hi), hex_value(*lo)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    rest = after;
                }
                _ => {
                    out.push(b);
                    rest = tail;
                }
            },
            _ => {
                out.push(b);
                rest = tail;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn is_unreserved(b: u8) -> bool {
    (0x20..=0x7e).contains(&b) && b != b'%'
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use test_case::test_case;

    #[test_case("", ""; "empty")]
    #[test_case("not found", "not found"; "plain ascii")]
    #[test_case("100%", "100%25"; "percent")]
    #[test_case("a\nb\tc", "a%0Ab%09c"; "controls")]
    #[test_case("caf\u{e9}", "caf%C3%A9"; "utf8")]
    #[test_case("\u{1f600}", "%F0%9F%98%80"; "emoji")]
    #[test_case("~ !\"", "~ !\""; "printable edges")]
    #[test_case("\u{7f}", "%7F"; "del")]
    fn encode(msg: &str, encoded: &str) {
        assert_eq!(percent_encode_message(msg), encoded);
        assert_eq!(percent_decode_message(encoded.as_bytes()), msg);
    }

    #[test_case(b"%", "%"; "lone percent")]
    #[test_case(b"%4", "%4"; "one hex digit")]
    #[test_case(b"%zz", "%zz"; "not hex")]
    #[test_case(b"%c3%a9", "\u{e9}"; "lowercase hex")]
    #[test_case(b"%FF", "\u{fffd}"; "invalid utf8")]
    #[test_case(b"a%%41", "a%A"; "percent then escape")]
    #[test_case(b"\xc3\xa9", "\u{e9}"; "raw utf8")]
    fn decode_is_lenient(value: &[u8], decoded: &str) {
        assert_eq!(percent_decode_message(value), decoded);
    }

    proptest! {
        #[test]
        fn round_trip(msg in any::<String>()) {
            let encoded = percent_encode_message(&msg);
            prop_assert!(encoded.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            prop_assert_eq!(percent_decode_message(encoded.as_bytes()), msg);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(value in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = percent_decode_message(&value);
        }
    }
}
