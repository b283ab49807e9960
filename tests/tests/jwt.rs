//! RequestAuthentication as Envoy's `jwt_authn` filter feeding istiod's RBAC filters,
//! enforced by the running proxy with curl. The filters are shaped as istiod emits
//! them: providers `origins-<i>` with `payload_in_metadata` = the issuer, one rule
//! `prefix: "/"` requiring any provider or `allow_missing`; RBAC principals on
//! `istio_authn` `request.auth.principal` and `request.auth.claims[groups]`.
//!
//! Proves: no token passes jwt_authn and RBAC denies (403); a valid token of the
//! allowed principal is served (RS256, inline JWKS); another principal is denied (403);
//! an expired token, another issuer, or a tampered signature is refused with 401 and
//! Envoy's body and `www-authenticate`; a claim match through a remote JWKS (ES256,
//! served by a test origin, fetched once and cached) is served, and the token header of
//! a non-forwarding provider is removed upstream.
//!
//! Over gRPC (Python grpcio through the proxy, and a raw HTTP/2 client for the frame
//! shape), as Envoy's `jwt_authn` and local reply do it (filter.cc `onComplete`: 401,
//! or 403 for a disallowed audience; utility.cc `prepareLocalReply`: a gRPC request
//! gets HTTP 200 with `grpc-status` mapped from that code, the error as
//! `grpc-message`, in one HEADERS frame that ends the stream): an invalid token is
//! UNAUTHENTICATED (16) trailers-only, a valid token for another audience
//! PERMISSION_DENIED (7), no token is left to RBAC (PERMISSION_DENIED), and a valid
//! token is served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tests::config::router_filter;
use tests::config::HCM_TYPE;
use tests::*;

const LOCAL_ISS: &str = "testing@secure.istio.io";
const REMOTE_ISS: &str = "https://remote.example";
const JWT_AUTHN: &str = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
const RBAC_HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// An RSA key (made by openssl, as ring cannot generate RSA) and its JWKS.
fn rsa_key(dir: &std::path::Path) -> (EncodingKey, Value) {
    let pem = dir.join("rsa.pem");
    let ok = std::process::Command::new("openssl").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]).arg(&pem).status();
    assert!(ok.is_ok_and(|s| s.success()), "openssl genpkey");
    let out = std::process::Command::new("openssl").args(["rsa", "-noout", "-modulus", "-in"]).arg(&pem).output().expect("openssl rsa");
    let hex = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("Modulus=").to_owned();
    let n: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&pem).expect("pem")).expect("rsa key");
    (key, json!({"keys": [{"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": b64url(&n), "e": "AQAB"}]}))
}

/// An ES256 key and its JWKS.
fn ec_key() -> (EncodingKey, Value) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec key");
    let raw = kp.public_key_raw();
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65])}]});
    (EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("ec pem"), jwks)
}

fn token(key: &EncodingKey, alg: Algorithm, kid: &str, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    encode(&header, &claims, key).expect("sign")
}

/// A plain HTTP server answering every request with `body` (the remote JWKS), counting them.
fn serve_jwks(body: String) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let hits = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            hits.fetch_add(1, Ordering::SeqCst);
            let reply = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    (addr, count)
}

/// istiod's `jwt_authn` for two RequestAuthentication jwtRules (its policy applier's
/// `convertToEnvoyJwtConfig`): the payload under `payload`, `scope` and `permission`
/// split on spaces, and any of {P0, P1, all of {any{P0, allow_missing}, any{P1, allow_missing}}}.
fn jwt_filter(local_jwks: &Value, remote: SocketAddr) -> Value {
    let either = |p: &str| json!({ "requires_any": { "requirements": [{ "provider_name": p }, { "allow_missing": {} }] } });
    let normalize = json!({ "space_delimited_claims": ["permission", "scope"] });
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": JWT_AUTHN,
            "providers": {
                "origins-0": { "issuer": LOCAL_ISS, "local_jwks": { "inline_string": local_jwks.to_string() }, "forward": true, "payload_in_metadata": "payload", "normalize_payload_in_metadata": normalize },
                "origins-1": {
                    "issuer": REMOTE_ISS,
                    "remote_jwks": { "http_uri": { "uri": format!("http://{remote}/jwks.json"), "cluster": "outbound|80||jwks.example", "timeout": "5s" }, "cache_duration": "300s" },
                    "payload_in_metadata": "payload",
                    "normalize_payload_in_metadata": normalize,
                },
            },
            "rules": [{ "match": { "prefix": "/" }, "requires": { "requires_any": { "requirements": [
                { "provider_name": "origins-0" }, { "provider_name": "origins-1" },
                { "requires_all": { "requirements": [either("origins-0"), either("origins-1")] } },
            ] } } }],
            "bypass_cors_preflight": true,
        },
    })
}

fn on_paths(prefix: &str) -> Value {
    json!([{ "and_rules": { "rules": [{ "or_rules": { "rules": [{ "url_path": { "path": { "prefix": prefix } } }] } }] } }])
}

fn payload(path: &[&str], value: Value) -> Value {
    let mut keys = vec![json!({ "key": "payload" })];
    keys.extend(path.iter().map(|k| json!({ "key": k })));
    json!({ "metadata": { "filter": "envoy.filters.http.jwt_authn", "path": keys, "value": value } })
}

/// istiod's ALLOW filter (the shapes of the RBAC golden corpus): `requestPrincipals:
/// ["testing@secure.istio.io/alice"]` on /principal (`payload.iss` and `payload.sub`),
/// `when: request.auth.claims[groups] = admins` on /claims; and on /legacy the same
/// principal through `istio_authn` (the corpus's sidecar dump).
fn rbac_filter() -> Value {
    let exact = |v: &str| json!({ "string_match": { "exact": v } });
    let principal = json!({ "and_ids": { "ids": [payload(&["iss"], exact(LOCAL_ISS)), payload(&["sub"], exact("alice"))] } });
    let claim = payload(&["groups"], json!({ "or_match": { "value_matchers": [{ "list_match": { "one_of": exact("admins") } }, exact("admins")] } }));
    let legacy =
        json!({ "metadata": { "filter": "istio_authn", "path": [{ "key": "request.auth.principal" }], "value": exact(&format!("{LOCAL_ISS}/alice")) } });
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": { "@type": RBAC_HTTP, "rules": { "policies": {
            "ns[foo]-policy[by-principal]-rule[0]": { "permissions": on_paths("/principal"), "principals": [{ "and_ids": { "ids": [{ "or_ids": { "ids": [principal] } }] } }] },
            "ns[foo]-policy[by-claim]-rule[0]": { "permissions": on_paths("/claims"), "principals": [{ "and_ids": { "ids": [{ "or_ids": { "ids": [claim] } }] } }] },
            "ns[foo]-policy[legacy]-rule[0]": { "permissions": on_paths("/legacy"), "principals": [{ "and_ids": { "ids": [{ "or_ids": { "ids": [legacy] } }] } }] },
        } } },
    })
}

fn get(p: &Proxy, path: &str, token: Option<&str>) -> CurlResponse {
    let mut c = Curl::new(&p.url(path));
    if let Some(t) = token {
        c = c.header("authorization", &format!("Bearer {t}"));
    }
    c.run()
}

#[test]
fn request_authentication_feeds_authorization_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rsa, local_jwks) = rsa_key(dir.path());
    let (ec, remote_jwks) = ec_key();
    let (jwks_addr, fetches) = serve_jwks(remote_jwks.to_string());
    let origin = Origin::start("app");
    let port = free_port();
    let hcm = json!({
        "@type": HCM_TYPE,
        "stat_prefix": "inbound_0.0.0.0_8080",
        "codec_type": "AUTO",
        "route_config": route_all_to("app", json!({})),
        "http_filters": [jwt_filter(&local_jwks, jwks_addr), rbac_filter(), router_filter()],
    });
    let p = Proxy::start(&bootstrap(vec![http_listener("main", port, hcm)], vec![cluster("app", &[origin.addr()])]), 1);

    let exp = now() + 600;
    let alice = token(&rsa, Algorithm::RS256, "rsa-1", json!({"iss": LOCAL_ISS, "sub": "alice", "exp": exp}));
    let bob = token(&rsa, Algorithm::RS256, "rsa-1", json!({"iss": LOCAL_ISS, "sub": "bob", "exp": exp}));
    let expired = token(&rsa, Algorithm::RS256, "rsa-1", json!({"iss": LOCAL_ISS, "sub": "alice", "exp": now() - 3600}));
    let stranger = token(&rsa, Algorithm::RS256, "rsa-1", json!({"iss": "https://stranger.example", "sub": "alice", "exp": exp}));
    let tampered = {
        let mut parts: Vec<String> = alice.split('.').map(str::to_owned).collect();
        parts[2] = b64url(&[7u8; 256]);
        parts.join(".")
    };
    let admin = token(&ec, Algorithm::ES256, "ec-1", json!({"iss": REMOTE_ISS, "sub": "carol", "exp": exp, "groups": ["dev", "admins"]}));
    let dev = token(&ec, Algorithm::ES256, "ec-1", json!({"iss": REMOTE_ISS, "sub": "dave", "exp": exp, "groups": ["dev"]}));

    let r = get(&p, "/principal/x", None);
    assert_eq!((r.status, r.text().as_str()), (403, "RBAC: access denied"), "no token: allowed by jwt_authn (allow_missing), denied by RBAC");
    assert_eq!(get(&p, "/principal/x", Some(&alice)).status, 200, "alice is the allowed request principal");
    assert_eq!(get(&p, "/principal/x", Some(&bob)).status, 403, "bob is not");
    assert_eq!(get(&p, "/legacy/x", Some(&alice)).status, 200, "istio_authn request.auth.principal");
    assert_eq!(get(&p, "/legacy/x", Some(&bob)).status, 403, "istio_authn request.auth.principal");
    for (what, t, body) in [
        ("expired", &expired, "Jwt is expired"),
        ("another issuer", &stranger, "Jwt issuer is not configured"),
        ("tampered", &tampered, "Jwt verification fails"),
    ] {
        let r = get(&p, "/principal/x", Some(t));
        assert_eq!((r.status, r.text().as_str()), (401, body), "{what}");
        let challenge = r.header("www-authenticate").unwrap_or_default().to_owned();
        assert_eq!(challenge, format!("Bearer realm=\"http://127.0.0.1:{port}/principal/x\", error=\"invalid_token\""), "{what}");
    }
    let e = p.wait_access_log("the expired token's refusal", |e| e.code == 401 && e.details.contains("Jwt_is_expired"));
    assert_eq!(e.details, "jwt_authn_access_denied{Jwt_is_expired}");

    assert_eq!(get(&p, "/claims/x", Some(&admin)).status, 200, "groups claim holds admins (remote JWKS, ES256)");
    assert_eq!(get(&p, "/claims/y", Some(&dev)).status, 403, "groups claim without admins");
    assert_eq!(get(&p, "/claims/x", Some(&alice)).status, 403, "alice has no groups");
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "the remote JWKS is fetched once and cached");

    let served = origin.requests_to("/claims/x");
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].header("authorization"), None, "origins-1 does not forward the token");
    let served = origin.requests_to("/principal/x");
    assert_eq!(served.len(), 1, "only alice's request reached the app");
    assert!(served[0].header("authorization").is_some(), "origins-0 forwards the token");
}

/// istiod's `jwt_authn` for one jwtRule with `audiences: [AUDIENCE]`: provider
/// `origins-0` (inline JWKS), required for every path unless the token is missing.
fn grpc_jwt_filter(local_jwks: &Value) -> Value {
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": JWT_AUTHN,
            "providers": { "origins-0": {
                "issuer": LOCAL_ISS, "audiences": [AUDIENCE], "local_jwks": { "inline_string": local_jwks.to_string() },
                "forward": true, "payload_in_metadata": "payload",
            } },
            "rules": [{ "match": { "prefix": "/" }, "requires": { "requires_any": { "requirements": [{ "provider_name": "origins-0" }, { "allow_missing": {} }] } } }],
            "bypass_cors_preflight": true,
        },
    })
}

const AUDIENCE: &str = "echo.foo.svc.cluster.local";
const ECHO_UNARY: &str = "/nodeproxy.test.Echo/Unary";

/// istiod's ALLOW for `requestPrincipals: ["testing@secure.istio.io/*"]` on the Echo service
/// (`payload.iss`, as in the RBAC golden corpus).
fn grpc_rbac_filter() -> Value {
    let issuer = payload(&["iss"], json!({ "string_match": { "exact": LOCAL_ISS } }));
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": { "@type": RBAC_HTTP, "rules": { "policies": {
            "ns[foo]-policy[echo-by-issuer]-rule[0]": { "permissions": on_paths("/nodeproxy.test.Echo/"), "principals": [{ "and_ids": { "ids": [{ "or_ids": { "ids": [issuer] } }] } }] },
        } } },
    })
}

/// A unary gRPC call with an empty message over a raw HTTP/2 connection: the response
/// head and whether that HEADERS frame ended the stream (trailers-only).
fn raw_grpc_call(addr: SocketAddr, token: &str) -> (http::response::Parts, bool) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect to the proxy");
        let (mut client, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}{ECHO_UNARY}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .expect("request");
        let (resp, mut send) = client.send_request(req, false).expect("send the request");
        send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("send the message");
        let resp = tokio::time::timeout(std::time::Duration::from_secs(15), resp).await.expect("a response in time").expect("a response");
        let (parts, body) = resp.into_parts();
        (parts, body.is_end_stream())
    })
}

#[test]
fn grpc_requests_are_refused_as_envoy_refuses_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rsa, jwks) = rsa_key(dir.path());
    let server = GrpcServer::start("echo");
    let port = free_port();
    let hcm = json!({
        "@type": HCM_TYPE,
        "stat_prefix": "inbound_0.0.0.0_8080",
        "codec_type": "AUTO",
        "route_config": route_all_to("grpc", json!({})),
        "http_filters": [grpc_jwt_filter(&jwks), grpc_rbac_filter(), router_filter()],
    });
    let p = Proxy::start(&bootstrap(vec![http_listener("main", port, hcm)], vec![h2_cluster("grpc", &[server.addr()])]), 1);

    let exp = now() + 600;
    let claims = |aud: &str, exp: u64| json!({"iss": LOCAL_ISS, "sub": "alice", "aud": aud, "exp": exp});
    let valid = token(&rsa, Algorithm::RS256, "rsa-1", claims(AUDIENCE, exp));
    let expired = token(&rsa, Algorithm::RS256, "rsa-1", claims(AUDIENCE, now() - 3600));
    let other_audience = token(&rsa, Algorithm::RS256, "rsa-1", claims("other.foo.svc.cluster.local", exp));
    let tampered = {
        let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
        parts[2] = b64url(&[7u8; 256]);
        parts.join(".")
    };
    let call = |token: Option<&str>| {
        let bearer = token.map(|t| format!("authorization=Bearer {t}"));
        let mut args = vec!["--payload", "hi", "--key", "jwt"];
        if let Some(b) = &bearer {
            args.extend(["--metadata", b.as_str()]);
        }
        grpc_client(p.addr(), "unary", &args)
    };

    let out = call(Some(&valid));
    assert_eq!(out["code"], "OK", "a valid token for the audience: {out}\n{}", p.stderr());
    for (what, t, code, message) in [
        ("expired", &expired, "UNAUTHENTICATED", "Jwt is expired"),
        ("tampered", &tampered, "UNAUTHENTICATED", "Jwt verification fails"),
        ("another audience", &other_audience, "PERMISSION_DENIED", "Audiences in Jwt are not allowed"),
    ] {
        let out = call(Some(t));
        assert_eq!((out["code"].as_str(), out["details"].as_str()), (Some(code), Some(message)), "{what}: {out}");
    }
    let out = call(None);
    assert_eq!((out["code"].as_str(), out["details"].as_str()), (Some("PERMISSION_DENIED"), Some("RBAC: access denied")), "no token: left to RBAC: {out}");
    let counts = grpc_client(server.addr(), "attempts", &["--key", "jwt"]);
    assert_eq!(counts["reply"]["attempts"].as_i64(), Some(1), "only the valid call reached the server: {counts}");

    // The frames: one HEADERS that ends the stream, HTTP 200, the gRPC status in it.
    for (what, t, status, message) in
        [("expired", &expired, "16", "Jwt is expired"), ("another audience", &other_audience, "7", "Audiences in Jwt are not allowed")]
    {
        let (head, ended) = raw_grpc_call(p.addr(), t);
        let header = |n: &str| head.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(head.status, 200, "{what}: {head:?}");
        assert!(ended, "{what}: trailers-only (the response HEADERS frame ends the stream): {head:?}");
        assert_eq!(header("grpc-status").as_deref(), Some(status), "{what}: {head:?}");
        assert_eq!(header("grpc-message").as_deref(), Some(message), "{what}: {head:?}");
        assert_eq!(header("content-type").as_deref(), Some("application/grpc"), "{what}: {head:?}");
        // Envoy sets the challenge before its gRPC branch, so the trailers-only reply has it.
        let challenge = header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer realm=\"http://") && challenge.ends_with("error=\"invalid_token\""), "{what}: {head:?}");
    }
    let e = p.wait_access_log("the disallowed audience", |e| e.details.contains("Audiences_in_Jwt_are_not_allowed"));
    assert_eq!((e.code, e.details.as_str()), (200, "jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}"), "{}", e.line);
}
