//! Any bytes as a configuration document: decoding (YAML/JSON, proto3 JSON into the
//! Envoy API) and translation into the mesh model must never panic; they either load
//! or return an error naming what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = istio_compat::translate::from_document(text) {
        // Whatever loaded serialises (what /config_dump?format=model prints).
        let _ = serde_json::to_string(&t.model);
    }
});
