//! The canonical gRPC status codes: their numbers, names, `grpc-status`
//! header encoding, and the code a client infers from an HTTP status when a
//! response carries no `grpc-status`.

use std::fmt;

/// A canonical gRPC status code
/// (<https://github.com/grpc/grpc/blob/master/doc/statuscodes.md>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum Code {
    /// Not an error.
    Ok = 0,
    /// The operation was cancelled, typically by the caller.
    Cancelled = 1,
    /// Unknown error.
    Unknown = 2,
    /// The client specified an invalid argument.
    InvalidArgument = 3,
    /// The deadline expired before the operation could complete.
    DeadlineExceeded = 4,
    /// Some requested entity was not found.
    NotFound = 5,
    /// The entity a client attempted to create already exists.
    AlreadyExists = 6,
    /// The caller does not have permission.
    PermissionDenied = 7,
    /// Some resource has been exhausted.
    ResourceExhausted = 8,
    /// The system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// The operation was aborted.
    Aborted = 10,
    /// The operation was attempted past the valid range.
    OutOfRange = 11,
    /// The operation is not implemented or supported.
    Unimplemented = 12,
    /// Internal error.
    Internal = 13,
    /// The service is currently unavailable.
    Unavailable = 14,
    /// Unrecoverable data loss or corruption.
    DataLoss = 15,
    /// The request lacks valid authentication credentials.
    Unauthenticated = 16,
}

/// Why a `grpc-status` header value is not a known code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// The value is empty.
    #[error("grpc-status value is empty")]
    Empty,
    /// The value has a byte other than an ASCII digit.
    #[error("grpc-status value has a non-digit byte {0:#04x}")]
    NotDigits(u8),
    /// The value is a number, but not a code in 0..=16 (saturated at
    /// `i64::MAX`). gRPC clients treat such a status as `UNKNOWN`.
    #[error("grpc-status value {0} is not a known status code (0..=16)")]
    Unknown(i64),
}

impl Code {
    /// All codes, in numeric order.
    pub const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code with this number, if it is one of the 17 canonical codes.
    pub const fn from_i32(value: i32) -> Option<Code> {
        Some(match value {
            0 => Code::Ok,
            1 => Code::Cancelled,
            2 => Code::Unknown,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            6 => Code::AlreadyExists,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            10 => Code::Aborted,
            11 => Code::OutOfRange,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            15 => Code::DataLoss,
            16 => Code::Unauthenticated,
            _ => return None,
        })
    }

    /// The code's number.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code's canonical name, e.g. `"UNAVAILABLE"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The `grpc-status` header value for this code: its decimal number.
    pub fn header_value(self) -> &'static str {
        const VALUES: [&str; 17] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];
        // Discriminants are 0..=16, so the index is always in range.
        match VALUES.get(self as usize) {
            Some(v) => v,
            None => "2",
        }
    }

    /// Parses a `grpc-status` header value (`1*DIGIT`). Leading zeros are
    /// accepted, as grpc-go's `strconv.ParseInt` does; surrounding
    /// whitespace is not (HTTP parsers strip it).
    pub fn from_header_value(value: &[u8]) -> Result<Code, CodeError> {
        if value.is_empty() {
            return Err(CodeError::Empty);
        }
        let mut n: i64 = 0;
        for &b in value {
            if !b.is_ascii_digit() {
                return Err(CodeError::NotDigits(b));
            }
            n = n.saturating_mul(10).saturating_add(i64::from(b - b'0'));
        }
        i32::try_from(n).ok().and_then(Code::from_i32).ok_or(CodeError::Unknown(n))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<i32> for Code {
    type Error = CodeError;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        Code::from_i32(value).ok_or(CodeError::Unknown(i64::from(value)))
    }
}

impl From<Code> for i32 {
    fn from(code: Code) -> i32 {
        code.as_i32()
    }
}

/// The gRPC code a client assumes for a response with this HTTP status and
/// no `grpc-status`
/// (<https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md>);
/// Envoy's `Grpc::Utility::httpToGrpcStatus` uses the same table for local
/// replies sent as gRPC trailers-only responses.
pub const fn code_from_http_status(status: u16) -> Code {
    match status {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use test_case::test_case;

    #[test]
    fn all_codes_round_trip_through_numbers_and_header_values() {
        for (i, code) in Code::ALL.iter().enumerate() {
            let n = i32::try_from(i).unwrap();
            assert_eq!(code.as_i32(), n);
            assert_eq!(Code::from_i32(n), Some(*code));
            assert_eq!(Code::try_from(n), Ok(*code));
            assert_eq!(i32::from(*code), n);
            assert_eq!(code.header_value(), n.to_string());
            assert_eq!(Code::from_header_value(code.header_value().as_bytes()), Ok(*code));
        }
        assert_eq!(Code::from_i32(17), None);
        assert_eq!(Code::from_i32(-1), None);
        assert_eq!(Code::try_from(-1), Err(CodeError::Unknown(-1)));
    }

    #[test_case(Code::Ok, "OK")]
    #[test_case(Code::Cancelled, "CANCELLED")]
    #[test_case(Code::InvalidArgument, "INVALID_ARGUMENT")]
    #[test_case(Code::DeadlineExceeded, "DEADLINE_EXCEEDED")]
    #[test_case(Code::ResourceExhausted, "RESOURCE_EXHAUSTED")]
    #[test_case(Code::FailedPrecondition, "FAILED_PRECONDITION")]
    #[test_case(Code::OutOfRange, "OUT_OF_RANGE")]
    #[test_case(Code::Unavailable, "UNAVAILABLE")]
    #[test_case(Code::DataLoss, "DATA_LOSS")]
    #[test_case(Code::Unauthenticated, "UNAUTHENTICATED")]
    fn names(code: Code, name: &str) {
        assert_eq!(code.as_str(), name);
        assert_eq!(code.to_string(), name);
    }

    #[test_case(b"0", Ok(Code::Ok); "zero")]
    #[test_case(b"14", Ok(Code::Unavailable); "fourteen")]
    #[test_case(b"014", Ok(Code::Unavailable); "leading zero")]
    #[test_case(b"16", Ok(Code::Unauthenticated); "sixteen")]
    #[test_case(b"17", Err(CodeError::Unknown(17)); "seventeen")]
    #[test_case(b"99999999999999999999", Err(CodeError::Unknown(i64::MAX)); "huge saturates")]
    #[test_case(b"", Err(CodeError::Empty); "empty")]
    #[test_case(b"-1", Err(CodeError::NotDigits(b'-')); "negative")]
    #[test_case(b" 1", Err(CodeError::NotDigits(b' ')); "leading space")]
    #[test_case(b"UNAVAILABLE", Err(CodeError::NotDigits(b'U')); "name")]
    fn header_values(value: &[u8], expected: Result<Code, CodeError>) {
        assert_eq!(Code::from_header_value(value), expected);
    }

    #[test_case(400, Code::Internal)]
    #[test_case(401, Code::Unauthenticated)]
    #[test_case(403, Code::PermissionDenied)]
    #[test_case(404, Code::Unimplemented)]
    #[test_case(429, Code::Unavailable)]
    #[test_case(502, Code::Unavailable)]
    #[test_case(503, Code::Unavailable)]
    #[test_case(504, Code::Unavailable)]
    #[test_case(200, Code::Unknown)]
    #[test_case(500, Code::Unknown)]
    #[test_case(405, Code::Unknown)]
    #[test_case(0, Code::Unknown)]
    fn http_status_mapping(status: u16, code: Code) {
        assert_eq!(code_from_http_status(status), code);
    }

    #[test]
    fn error_messages_say_what_went_wrong() {
        assert_eq!(CodeError::Unknown(17).to_string(), "grpc-status value 17 is not a known status code (0..=16)");
        assert_eq!(CodeError::NotDigits(b'x').to_string(), "grpc-status value has a non-digit byte 0x78");
    }

    proptest! {
        #[test]
        fn arbitrary_header_values_never_panic(value in prop::collection::vec(any::<u8>(), 0..32)) {
            let _ = Code::from_header_value(&value);
        }

        #[test]
        fn decimal_values_parse_like_integers(n in any::<u64>()) {
            let parsed = Code::from_header_value(n.to_string().as_bytes());
            match n {
                0..=16 => prop_assert_eq!(parsed.map(Code::as_i32), Ok(i32::try_from(n).unwrap())),
                _ => prop_assert!(matches!(parsed, Err(CodeError::Unknown(_)))),
            }
        }
    }
}
