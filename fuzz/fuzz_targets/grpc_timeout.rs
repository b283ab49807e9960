//! Fuzzes `grpc-timeout` parsing and formatting: parsing must never panic,
//! and any parsed timeout must format to a value that parses back to at
//! least the same duration, within one unit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::grpc::{format_timeout, parse_timeout, MAX_TIMEOUT_DIGITS};
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    if let Some(d) = parse_timeout(data) {
        let formatted = format_timeout(d);
        assert!(formatted.len() <= MAX_TIMEOUT_DIGITS + 1, "{formatted}");
        let back = parse_timeout(formatted.as_bytes()).expect("format_timeout output parses");
        assert!(back >= d, "{formatted}: {back:?} < {d:?}");
    }
    // Also format arbitrary durations built from the input.
    if let Some(bytes) = data.first_chunk::<12>() {
        let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3] = *bytes;
        let secs = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let nanos = u32::from_le_bytes([n0, n1, n2, n3]) % 1_000_000_000;
        let d = Duration::new(secs, nanos);
        let formatted = format_timeout(d);
        let back = parse_timeout(formatted.as_bytes()).expect("format_timeout output parses");
        assert!(back >= d.min(protocols::grpc::MAX_TIMEOUT), "{formatted}");
    }
});
