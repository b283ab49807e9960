//! gRPC-over-HTTP/2 wire helpers: the pieces of the gRPC protocol a proxy
//! reads or writes without understanding the messages themselves.
//!
//! * [`Code`] — the canonical status codes, their `grpc-status` encoding and
//!   the HTTP-status fallback table ([`code_from_http_status`]).
//! * [`parse_timeout`] / [`format_timeout`] — the `grpc-timeout` header.
//! * [`percent_encode_message`] / [`percent_decode_message`] — the
//!   `grpc-message` header.
//! * [`is_grpc_content_type`] — whether a `content-type` is gRPC.
//! * [`frame_header`] / [`parse_frame_header`] — the 5-byte prefix of each
//!   length-prefixed message.
//!
//! Reference: <https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>.

mod code;
mod framing;
mod message;
mod timeout;

pub use code::{code_from_http_status, Code, CodeError};
pub use framing::{frame_header, parse_frame_header, try_parse_frame_header, FrameError, FRAME_HEADER_LEN, MAX_FRAME_LEN};
pub use message::{percent_decode_message, percent_encode_message};
pub use timeout::{format_timeout, parse_timeout, try_parse_timeout, TimeoutError, MAX_TIMEOUT, MAX_TIMEOUT_DIGITS};

/// The base gRPC content type.
pub const CONTENT_TYPE: &str = "application/grpc";

/// Whether a `content-type` header value is gRPC: exactly
/// `application/grpc`, or `application/grpc` followed by `+` (a
/// sub-type such as `+proto`) or `;` (parameters). Comparison is
/// case-sensitive, as in grpc-go and Envoy; `application/grpc-web` is not
/// gRPC.
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    matches!(value.strip_prefix(CONTENT_TYPE.as_bytes()), Some([] | [b'+' | b';', ..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case(b"application/grpc", true; "exact")]
    #[test_case(b"application/grpc+proto", true; "proto subtype")]
    #[test_case(b"application/grpc+json", true; "json subtype")]
    #[test_case(b"application/grpc;charset=utf-8", true; "parameter")]
    #[test_case(b"application/grpc-web", false; "grpc web")]
    #[test_case(b"application/grpc-web+proto", false; "grpc web proto")]
    #[test_case(b"application/grpcx", false; "suffix")]
    #[test_case(b"application/json", false; "json")]
    #[test_case(b"Application/grpc", false; "case sensitive")]
    #[test_case(b"application/grp", false; "prefix")]
    #[test_case(b"", false; "empty")]
    #[test_case(b" application/grpc", false; "leading space")]
    fn content_type(value: &[u8], expected: bool) {
        assert_eq!(is_grpc_content_type(value), expected);
    }
}
