//! Tests of [`sniff`](super::sniff) against real byte captures and
//! properties over arbitrary input.
//!
//! The samples were captured on 127.0.0.1: a Python socket listener accepted
//! one connection and wrote the client's first bytes out as hex (the TLS
//! clients then wait for a ServerHello, so a capture is exactly the
//! ClientHello records); the Python sample was taken from an
//! `ssl.MemoryBIO` without any socket.

use super::*;
use proptest::prelude::*;
use test_case::test_case;

/// `openssl s_client -connect 127.0.0.1:PORT -servername foo.example -alpn h2,http/1.1` (OpenSSL 3.0.19, TLS 1.3 default).
const OPENSSL_SNI_ALPN: &str = concat!(
    "160301014a0100014603033b5fac8b37d33321d4035240901631e53f3d9b68fe388bb4f5484a3b896654e120",
    "b690a7057b9e163407776dcfdfe41be05068c44973985cf800f121f66804476a003e130213031301c02cc030",
    "009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d",
    "003c0035002f00ff010000bf00000010000e00000b666f6f2e6578616d706c65000b000403000102000a0016",
    "0014001d0017001e0019001801000101010201030104002300000010000e000c02683208687474702f312e31",
    "0016000000170000000d002a0028040305030603080708080809080a080b0804080508060401050106010303",
    "03010302040205020602002b0009080304030303020301002d00020101003300260024001d00200257db383e",
    "05e66e426764681aa6f9a8ea39cf39375a50b0c866e242f32e3d37",
);

/// `openssl s_client ... -servername Foo.Example.COM -alpn istio-peer-exchange,istio,h2`.
const OPENSSL_MIXED_CASE_SNI: &str = concat!(
    "160301015f0100015b03037cd44b7de5d05efd7ed88883a249c3885bcc4e71d1185aa5054d9f7ed876128a20",
    "4c13058969388fd6c65049a1295332c923bb7ad621c28cb11d02ade0dd62d981003e130213031301c02cc030",
    "009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d",
    "003c0035002f00ff010000d400000014001200000f466f6f2e4578616d706c652e434f4d000b000403000102",
    "000a00160014001d0017001e0019001801000101010201030104002300000010001f001d13697374696f2d70",
    "6565722d65786368616e676505697374696f0268320016000000170000000d002a0028040305030603080708",
    "080809080a080b080408050806040105010601030303010302040205020602002b0009080304030303020301",
    "002d00020101003300260024001d0020025df2855be63a2be8e7de2c06db88e86c79e3d1758d08d9e7a8a5b3",
    "40ff270d",
);

/// `openssl s_client ... -tls1_2 -noservername` (no SNI, no ALPN).
const OPENSSL_TLS12_NO_SNI: &str = concat!(
    "16030100b7010000b30303f54cd1f3e71c04df62e26803ecfd1d22cfa69235e2e946ffb63e40079e75007700",
    "0038c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033",
    "009d009c003d003c0035002f00ff01000052000b000403000102000a000c000a001d0017001e001900180023",
    "00000016000000170000000d002a0028040305030603080708080809080a080b080408050806040105010601",
    "030303010302040205020602",
);

/// `openssl s_client ... -servername split.example.com -max_send_frag 512 -alpn proto-000-xxxxxxxxxxxxxxxxxxxxxxxx,...,proto-039-...`: a 1720-byte ClientHello in four records of 512, 512, 512 and 188 bytes.
const OPENSSL_SPLIT_RECORDS: &str = concat!(
    "1603010200010006b8030323e13355685181a554956e2515ab33e41b6c11cd5475aef156df7360306871f020",
    "2058510a2f262abe9a4769865d1f98bef9a67a5e7a7ef64cc1b9c382247b52aa003e130213031301c02cc030",
    "009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d",
    "003c0035002f00ff0100063100000016001400001173706c69742e6578616d706c652e636f6d000b00040300",
    "0102000a00160014001d0017001e0019001801000101010201030104002300000010057a05782270726f746f",
    "2d3030302d7878787878787878787878787878787878787878787878782270726f746f2d3030312d78787878",
    "78787878787878787878787878787878787878782270726f746f2d3030322d78787878787878787878787878",
    "78787878787878787878782270726f746f2d3030332d78787878787878787878787878787878787878787878",
    "78782270726f746f2d3030342d7878787878787878787878787878787878787878787878782270726f746f2d",
    "3030352d7878787878787878787878787878787878787878787878782270726f746f2d3030362d7878787878",
    "787878787878787878787878787878787878782270726f746f2d3030372d7878787878787878787878787878",
    "787878787878787878782270726f746f2d3030382d7878787878787878787878781603010200787878787878",
    "7878787878782270726f746f2d3030392d787878787878787878787878787878787878787878787878227072",
    "6f746f2d3031302d7878787878787878787878787878787878787878787878782270726f746f2d3031312d78",
    "78787878787878787878787878787878787878787878782270726f746f2d3031322d78787878787878787878",
    "78787878787878787878787878782270726f746f2d3031332d78787878787878787878787878787878787878",
    "78787878782270726f746f2d3031342d7878787878787878787878787878787878787878787878782270726f",
    "746f2d3031352d7878787878787878787878787878787878787878787878782270726f746f2d3031362d7878",
    "787878787878787878787878787878787878787878782270726f746f2d3031372d7878787878787878787878",
    "787878787878787878787878782270726f746f2d3031382d7878787878787878787878787878787878787878",
    "787878782270726f746f2d3031392d7878787878787878787878787878787878787878787878782270726f74",
    "6f2d3032302d7878787878787878787878787878787878787878787878782270726f746f2d3032312d787878",
    "7878787878787878787878787878787878787878782270726f746f2d3032322d787878787878787878787878",
    "7878787878787878787878782270726f746f2d30323316030102002d78787878787878787878787878787878",
    "78787878787878782270726f746f2d3032342d78787878787878787878787878787878787878787878787822",
    "70726f746f2d3032352d7878787878787878787878787878787878787878787878782270726f746f2d303236",
    "2d7878787878787878787878787878787878787878787878782270726f746f2d3032372d7878787878787878",
    "787878787878787878787878787878782270726f746f2d3032382d7878787878787878787878787878787878",
    "787878787878782270726f746f2d3032392d7878787878787878787878787878787878787878787878782270",
    "726f746f2d3033302d7878787878787878787878787878787878787878787878782270726f746f2d3033312d",
    "7878787878787878787878787878787878787878787878782270726f746f2d3033322d787878787878787878",
    "7878787878787878787878787878782270726f746f2d3033332d787878787878787878787878787878787878",
    "7878787878782270726f746f2d3033342d787878787878787878787878787878787878787878787878227072",
    "6f746f2d3033352d7878787878787878787878787878787878787878787878782270726f746f2d3033362d78",
    "78787878787878787878787878787878787878787878782270726f746f2d3033372d78787878787878787878",
    "787878787878787878787816030100bc7878782270726f746f2d3033382d7878787878787878787878787878",
    "787878787878787878782270726f746f2d3033392d7878787878787878787878787878787878787878787878",
    "780016000000170000000d002a0028040305030603080708080809080a080b08040805080604010501060103",
    "0303010302040205020602002b0009080304030303020301002d00020101003300260024001d00200650d8ec",
    "d831440ae048e50e586303e536c5b8eebb5184f6cbcaa9aa24e9aa38",
);

/// Python 3.11 `ssl` with a `MemoryBIO`, `server_hostname="API.Backend.svc.cluster.local"`, ALPN grpc-exp,h2,http/1.1 (517 bytes with the padding extension).
const PYTHON_MEMORY_BIO: &str = concat!(
    "1603010200010001fc030377b8d239562827548d1d3f52ac2e7b2e8f465bdc89e93efb762f7d531c96497320",
    "14f3f6ef87c0d67abfe7497dbbae10896c583ead2cb9f680d9c34115b4f49a830024130213031301c02cc030",
    "c02bc02fcca9cca8c024c028c023c027009f009e006b006700ff0100018f00000022002000001d4150492e42",
    "61636b656e642e7376632e636c75737465722e6c6f63616c000b000403000102000a00160014001d0017001e",
    "00190018010001010102010301040023000000100017001508677270632d65787002683208687474702f312e",
    "310016000000170000000d002a0028040305030603080708080809080a080b08040805080604010501060103",
    "0303010302040205020602002b00050403040303002d00020101003300260024001d0020122dec1271e4efe4",
    "9be1ae1f93ecc1c87823297152f066f2719a22cd68bd4876001500b500000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000",
);

/// `curl -sk https://Api.Example.com:PORT/ --resolve Api.Example.com:PORT:127.0.0.1` (curl 7.88.1 lowercases the SNI itself).
const CURL_HTTPS: &str = concat!(
    "1603010200010001fc03036db79ca3fd620a921abd701175c94d8abaa3bb566cc204f7fb2ad7f41f5a02f720",
    "9a9aae0b10c19b6fea5cbc6b4ca6d3d2bbb1f27739a09862457d3247d13e2959003e130213031301c02cc030",
    "009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d",
    "003c0035002f00ff0100017500000014001200000f6170692e6578616d706c652e636f6d000b000403000102",
    "000a00160014001d0017001e00190018010001010102010301040010000e000c02683208687474702f312e31",
    "001600000017000000310000000d002a0028040305030603080708080809080a080b08040805080604010501",
    "0601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d002029",
    "fe32aec075911b21b8d0e7cb693c4b9f9736813d9d675f4bd272c41cbdb81f001500ae000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000",
);

/// `curl --http2-prior-knowledge http://127.0.0.1:PORT/`: preface, SETTINGS, WINDOW_UPDATE, HEADERS.
const CURL_H2_PRIOR_KNOWLEDGE: &str = concat!(
    "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a0000120400000000000003000000640004020000",
    "0000020000000000000408000000000001ff000100001f010500000001828486418b089d5c0b8170dc69d089",
    "9f7a8825b650c3abbcf2e153032a2f2a",
);

/// `curl http://127.0.0.1:PORT/hello?x=1`.
const CURL_HTTP1: &str = concat!(
    "474554202f68656c6c6f3f783d3120485454502f312e310d0a486f73743a203132372e302e302e313a343731",
    "32330d0a557365722d4167656e743a206375726c2f372e38382e310d0a4163636570743a202a2f2a0d0a0d0a",
);

const SAMPLES: &[(&str, &str)] = &[
    ("openssl sni alpn", OPENSSL_SNI_ALPN),
    ("openssl mixed-case sni", OPENSSL_MIXED_CASE_SNI),
    ("openssl tls1.2 no sni", OPENSSL_TLS12_NO_SNI),
    ("openssl split records", OPENSSL_SPLIT_RECORDS),
    ("python memory bio", PYTHON_MEMORY_BIO),
    ("curl https", CURL_HTTPS),
    ("curl h2 prior knowledge", CURL_H2_PRIOR_KNOWLEDGE),
    ("curl http1", CURL_HTTP1),
];

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn tls(server_name: Option<&str>, alpn: &[&str]) -> Detected {
    Detected::Tls(ClientHello { server_name: server_name.map(str::to_owned), alpn: alpn.iter().map(|&s| s.to_owned()).collect() })
}

#[test_case(OPENSSL_SNI_ALPN, tls(Some("foo.example"), &["h2", "http/1.1"]); "openssl sni alpn")]
#[test_case(
    OPENSSL_MIXED_CASE_SNI,
    tls(Some("foo.example.com"), &["istio-peer-exchange", "istio", "h2"]);
    "openssl mixed case sni is lowercased"
)]
#[test_case(OPENSSL_TLS12_NO_SNI, tls(None, &[]); "openssl tls12 without sni")]
#[test_case(
    PYTHON_MEMORY_BIO,
    tls(Some("api.backend.svc.cluster.local"), &["grpc-exp", "h2", "http/1.1"]);
    "python memory bio"
)]
#[test_case(CURL_HTTPS, tls(Some("api.example.com"), &["h2", "http/1.1"]); "curl https")]
#[test_case(CURL_H2_PRIOR_KNOWLEDGE, Detected::Http2; "curl h2 prior knowledge")]
#[test_case(CURL_HTTP1, Detected::Http1(Http1Version::Http11); "curl http1")]
fn real_captures(hex: &str, expected: Detected) {
    assert_eq!(sniff(&unhex(hex)), Sniff::Detected(expected));
}

#[test]
fn openssl_hello_split_across_records() {
    let buf = unhex(OPENSSL_SPLIT_RECORDS);
    // The capture really is four records.
    assert_eq!(&buf[3..5], &512u16.to_be_bytes());
    assert_eq!(buf[517], 0x16);
    let alpn: Vec<String> = (0..40).map(|i| format!("proto-{i:03}-xxxxxxxxxxxxxxxxxxxxxxxx")).collect();
    let alpn: Vec<&str> = alpn.iter().map(String::as_str).collect();
    assert_eq!(sniff(&buf), Sniff::Detected(tls(Some("split.example.com"), &alpn)));
}

#[test]
fn every_strict_prefix_of_every_sample_needs_more() {
    for (name, hex) in SAMPLES {
        let buf = unhex(hex);
        let full = sniff(&buf);
        assert!(matches!(full, Sniff::Detected(_)), "{name}");
        // HTTP samples carry more than the part that decides; stop there.
        let decided_at = (0..=buf.len()).find(|&end| sniff(&buf[..end]) != Sniff::NeedMore).unwrap();
        for end in 0..decided_at {
            assert_eq!(sniff(&buf[..end]), Sniff::NeedMore, "{name}: prefix {end}");
        }
        for end in decided_at..=buf.len() {
            assert_eq!(sniff(&buf[..end]), full, "{name}: prefix {end}");
        }
        if matches!(full, Sniff::Detected(Detected::Tls(_))) {
            assert_eq!(decided_at, buf.len(), "{name}: decided before the end");
        }
    }
}

#[test]
fn tls_samples_with_trailing_bytes_are_unchanged() {
    for (name, hex) in SAMPLES {
        let mut buf = unhex(hex);
        let before = sniff(&buf);
        buf.extend_from_slice(b"\x17\x03\x03\x00\x10garbage");
        assert_eq!(sniff(&buf), before, "{name}");
    }
}

#[test]
fn corrupted_sample_bytes_never_panic() {
    for (_, hex) in SAMPLES {
        let buf = unhex(hex);
        for i in 0..buf.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut b = buf.clone();
                b[i] ^= flip;
                let _ = sniff(&b);
            }
        }
    }
}

#[test]
fn h2_preface_alone_is_enough() {
    assert_eq!(sniff(H2_PREFACE), Sniff::Detected(Detected::Http2));
    for end in 0..H2_PREFACE.len() {
        assert_eq!(sniff(&H2_PREFACE[..end]), Sniff::NeedMore, "prefix {end}");
    }
}

#[test_case(b"", Sniff::NeedMore; "empty")]
#[test_case(b"P", Sniff::NeedMore; "p is post put patch or pri")]
#[test_case(b"PR", Sniff::NeedMore; "pr is pri or propfind")]
#[test_case(b"PRI", Sniff::NeedMore; "pri")]
#[test_case(b"PRI * HTTP/2.0\r\n\r\nXX", Sniff::Detected(Detected::Other); "broken preface")]
#[test_case(b"PRI * HTTP/1.1\r\n", Sniff::Detected(Detected::Other); "pri is not an http1 method")]
#[test_case(b"POST /x HTTP/1.0\r\n", Sniff::Detected(Detected::Http1(Http1Version::Http10)); "http 1.0")]
#[test_case(b"SSH-2.0-OpenSSH_9.6\r\n", Sniff::Detected(Detected::Other); "ssh")]
#[test_case(b"\x00", Sniff::Detected(Detected::Other); "nul")]
#[test_case(b"\x16", Sniff::NeedMore; "tls content type alone")]
#[test_case(b"\x16\x03\x01\x00", Sniff::NeedMore; "partial record header")]
#[test_case(b"\x16\x01", Sniff::Detected(Detected::Other); "not tls version")]
#[test_case(b"\x16\x03\x01\x00\x05\x02", Sniff::Detected(Detected::Other); "server hello")]
#[test_case(b"\x15\x03\x01\x00\x02\x02\x28", Sniff::Detected(Detected::Other); "tls alert")]
fn edge_cases(buf: &[u8], expected: Sniff) {
    assert_eq!(sniff(buf), expected);
}

#[test_case(Detected::Http1(Http1Version::Http11), "raw_buffer", &["http/1.1"]; "http11")]
#[test_case(Detected::Http1(Http1Version::Http10), "raw_buffer", &["http/1.0"]; "http10")]
#[test_case(Detected::Http2, "raw_buffer", &["h2c"]; "h2c")]
#[test_case(tls(Some("a"), &["h2", "http/1.1"]), "tls", &["h2", "http/1.1"]; "tls with alpn")]
#[test_case(tls(Some("a"), &[]), "tls", &[]; "tls without alpn")]
#[test_case(Detected::Other, "raw_buffer", &[]; "other")]
fn envoy_names(detected: Detected, transport: &str, app: &[&str]) {
    assert_eq!(transport_protocol(&detected), transport);
    assert_eq!(application_protocols(&detected), app);
}

fn arb_method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(HTTP1_METHODS)
}

/// Request targets: origin-form paths, absolute URIs, authority form, `*`.
fn arb_target() -> impl Strategy<Value = String> {
    prop_oneof!["/[!-~]{0,200}", "https?://[a-z0-9.-]{1,30}(:[0-9]{1,5})?(/[!-~]{0,50})?", "[a-z0-9.-]{1,30}:[0-9]{1,5}", Just("*".to_owned()),]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = sniff(&buf);
    }

    #[test]
    fn arbitrary_tls_like_bytes_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..2048),
        minor in 0u8..5,
    ) {
        let mut buf = vec![0x16, 0x03, minor];
        buf.extend_from_slice(&tail);
        let _ = sniff(&buf);
    }

    #[test]
    fn detection_is_monotonic(buf in prop::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
        let cut = cut.min(buf.len());
        if let Sniff::Detected(d) = sniff(&buf[..cut]) {
            prop_assert_eq!(sniff(&buf), Sniff::Detected(d));
        }
    }

    #[test]
    fn long_buffers_are_always_decided(
        head in prop::collection::vec(any::<u8>(), 0..64),
        fill in any::<u8>(),
    ) {
        let mut buf = head;
        buf.resize(MAX_SNIFF_LEN, fill);
        prop_assert_ne!(sniff(&buf), Sniff::NeedMore);
    }

    #[test]
    fn every_strict_prefix_of_a_tls_sample_needs_more(sample in 0usize..6, cut in 0usize..2000) {
        let hex = [
            OPENSSL_SNI_ALPN,
            OPENSSL_MIXED_CASE_SNI,
            OPENSSL_TLS12_NO_SNI,
            OPENSSL_SPLIT_RECORDS,
            PYTHON_MEMORY_BIO,
            CURL_HTTPS,
        ][sample];
        let buf = unhex(hex);
        let cut = cut % buf.len();
        prop_assert_eq!(sniff(&buf[..cut]), Sniff::NeedMore);
    }

    #[test]
    fn request_lines_classify_as_http1(
        method in arb_method(),
        target in arb_target(),
        minor in 0u8..=9,
        headers in "([A-Za-z-]{1,20}: [ -~]{0,40}\r\n){0,5}",
    ) {
        let line = format!("{method} {target} HTTP/1.{minor}\r\n{headers}\r\n");
        let version = if minor == 1 { Http1Version::Http11 } else { Http1Version::Http10 };
        let buf = line.as_bytes();
        prop_assert_eq!(sniff(buf), Sniff::Detected(Detected::Http1(version)));
        // Every prefix shorter than the request line is undecided.
        let line_end = line.find("\r\n").unwrap() + 2;
        for end in 0..line_end {
            prop_assert_eq!(sniff(&buf[..end]), Sniff::NeedMore);
        }
    }

    #[test]
    fn unknown_methods_are_not_http1(
        method in "[A-Z]{1,12}",
        target in arb_target(),
    ) {
        prop_assume!(!HTTP1_METHODS.contains(&method.as_str()));
        let line = format!("{method} {target} HTTP/1.1\r\n");
        prop_assert_ne!(
            sniff(line.as_bytes()),
            Sniff::Detected(Detected::Http1(Http1Version::Http11))
        );
        prop_assert_ne!(sniff(line.as_bytes()), Sniff::NeedMore);
    }

    #[test]
    fn lowercase_known_methods_are_other(method in arb_method(), target in arb_target()) {
        let line = format!("{} {target} HTTP/1.1\r\n", method.to_ascii_lowercase());
        prop_assert_eq!(sniff(line.as_bytes()), Sniff::Detected(Detected::Other));
    }
}
