//! Fuzzes the other gRPC header and framing parsers: `grpc-status`,
//! `grpc-message`, `content-type` and the message prefix. None may panic;
//! percent-encoding must round-trip what decoding produces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::grpc::{
    frame_header, is_grpc_content_type, parse_frame_header, percent_decode_message,
    percent_encode_message, Code,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(code) = Code::from_header_value(data) {
        assert_eq!(Code::from_header_value(code.header_value().as_bytes()), Ok(code));
    }
    let decoded = percent_decode_message(data);
    let encoded = percent_encode_message(&decoded);
    assert_eq!(percent_decode_message(encoded.as_bytes()), decoded);
    let _ = is_grpc_content_type(data);
    if let Some((compressed, len)) = parse_frame_header(data) {
        assert_eq!(data.get(..5), Some(&frame_header(compressed, len)[..]));
    }
});
