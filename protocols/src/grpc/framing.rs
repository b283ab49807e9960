//! The 5-byte prefix of a gRPC length-prefixed message: a compressed flag
//! (0 or 1) and the message length as a big-endian `u32`.

/// The length of a message prefix.
pub const FRAME_HEADER_LEN: usize = 5;

/// The largest length a prefix can carry. Receivers enforce their own
/// (much smaller) message size limits on top.
pub const MAX_FRAME_LEN: u32 = u32::MAX;

/// Why bytes are not a message prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than [`FRAME_HEADER_LEN`] bytes.
    #[error("gRPC message prefix needs 5 bytes, got {0}")]
    Truncated(usize),
    /// The compressed-flag byte is neither 0 nor 1.
    #[error("gRPC message compressed flag is {0:#04x}, expected 0 or 1")]
    InvalidFlag(u8),
}

/// Encodes a message prefix.
pub fn frame_header(compressed: bool, len: u32) -> [u8; FRAME_HEADER_LEN] {
    let [a, b, c, d] = len.to_be_bytes();
    [u8::from(compressed), a, b, c, d]
}

/// Decodes the message prefix at the start of `buf` into
/// `(compressed, length)`; `None` if `buf` is shorter than
/// [`FRAME_HEADER_LEN`] or the flag is invalid. Bytes after the prefix are
/// ignored.
pub fn parse_frame_header(buf: &[u8]) -> Option<(bool, u32)> {
    try_parse_frame_header(buf).ok()
}

/// Decodes the message prefix at the start of `buf`, saying why it is not
/// one.
pub fn try_parse_frame_header(buf: &[u8]) -> Result<(bool, u32), FrameError> {
    let Some(&[flag, a, b, c, d]) = buf.first_chunk::<FRAME_HEADER_LEN>() else {
        return Err(FrameError::Truncated(buf.len()));
    };
    let compressed = match flag {
        0 => false,
        1 => true,
        other => return Err(FrameError::InvalidFlag(other)),
    };
    Ok((compressed, u32::from_be_bytes([a, b, c, d])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use test_case::test_case;

    #[test_case(false, 0, [0, 0, 0, 0, 0]; "empty uncompressed")]
    #[test_case(true, 5, [1, 0, 0, 0, 5]; "compressed")]
    #[test_case(false, 0x0102_0304, [0, 1, 2, 3, 4]; "big endian")]
    #[test_case(false, MAX_FRAME_LEN, [0, 0xff, 0xff, 0xff, 0xff]; "max")]
    fn encode_decode(compressed: bool, len: u32, bytes: [u8; 5]) {
        assert_eq!(frame_header(compressed, len), bytes);
        assert_eq!(parse_frame_header(&bytes), Some((compressed, len)));
    }

    #[test_case(b"", FrameError::Truncated(0); "empty")]
    #[test_case(b"\x00\x00\x00\x00", FrameError::Truncated(4); "four bytes")]
    #[test_case(b"\x02\x00\x00\x00\x00", FrameError::InvalidFlag(2); "flag two")]
    #[test_case(b"\xff\x00\x00\x00\x00", FrameError::InvalidFlag(0xff); "flag ff")]
    fn invalid(buf: &[u8], err: FrameError) {
        assert_eq!(try_parse_frame_header(buf), Err(err));
        assert_eq!(parse_frame_header(buf), None);
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        assert_eq!(parse_frame_header(b"\x00\x00\x00\x00\x03abc"), Some((false, 3)));
    }

    proptest! {
        #[test]
        fn round_trip(compressed in any::<bool>(), len in any::<u32>(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = frame_header(compressed, len).to_vec();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(parse_frame_header(&buf), Some((compressed, len)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..8)) {
            let _ = parse_frame_header(&buf);
        }
    }
}
