//! Fuzzes protocol sniffing: `sniff` must never panic, must decide every
//! buffer of `MAX_SNIFF_LEN` bytes or more, and must be monotonic (a decision
//! on a prefix holds for the whole input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::sniff::{
    application_protocols, client_hello, sniff, transport_protocol, Sniff, MAX_SNIFF_LEN,
};

fuzz_target!(|data: &[u8]| {
    let full = sniff(data);
    if data.len() >= MAX_SNIFF_LEN {
        assert_ne!(full, Sniff::NeedMore, "undecided at {} bytes", data.len());
    }
    if let Sniff::Detected(detected) = &full {
        let _ = transport_protocol(detected);
        let _ = application_protocols(detected);
    }
    // Monotonicity: whatever a prefix decides, the whole input decides too.
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        if let Some(prefix) = data.get(..cut) {
            if let Sniff::Detected(d) = sniff(prefix) {
                assert_eq!(Sniff::Detected(d), full, "prefix of {cut} bytes decided differently");
            }
        }
    }
    let _ = client_hello(data);
});
