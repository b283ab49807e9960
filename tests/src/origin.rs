//! A Rust origin server (hyper 1.x; HTTP/1.1 and prior-knowledge h2c on one port)
//! whose behaviour is chosen by the request path, so tests need no setup calls.
//! It records every request for assertions and names itself in every response
//! (`x-origin`), so tests can tell which endpoint answered.
//!
//! | Path | Behaviour |
//! |------|-----------|
//! | `/status/{code}` | answers `code` |
//! | `/fail/{key}/{n}/{code}` | the first `n` requests for `key` answer `code`, then 200 |
//! | `/reset/{key}/{n}` | the first `n` requests for `key`: TCP connection closed, no response |
//! | `/slow/{key}/{n}/{ms}` | the first `n` requests for `key` wait `ms` before answering 200 |
//! | `/delay/{ms}` | waits `ms`, then 200 |
//! | `/bytes/{n}` | 200 with `n` bytes |
//! | `/attempts/{key}` | 200, body: how many requests `key` has seen |
//! | `/only/{name}/{rest…}` | the origin called `name` behaves as for `/{rest…}`; others echo |
//! | anything else (`/echo`) | 200 with the echo JSON |
//! | `Upgrade:` request or `CONNECT` | 101 / 200, then echoes bytes on the upgraded connection |
//!
//! The echo JSON: `origin`, `method`, `path`, `version`, `headers` (name -> list of
//! values), `body_len`, `peer`. Keyed paths count per key, whatever the rest of the
//! path; a key's counter is shared by `fail`, `reset` and `slow`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub peer: SocketAddr,
    pub body: Bytes,
    pub at: Instant,
}

impl Recorded {
    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
    }

    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2, which hyper keeps in the URI).
    pub fn authority(&self) -> Option<&str> {
        self.header("host")
    }
}

struct State {
    name: Arc<str>,
    requests: Mutex<Vec<Recorded>>,
    counters: Mutex<HashMap<String, u32>>,
}

impl State {
    fn count(&self, key: &str) -> u32 {
        let mut c = self.counters.lock().unwrap();
        let n = c.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

/// A running origin; stops (and frees its port) on drop.
pub struct Origin {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Origin {
    /// An origin named `name` on 127.0.0.1 and a port of its own.
    pub fn start(name: &str) -> Origin {
        Origin::start_at(name, "127.0.0.1:0".parse().expect("addr"), None)
    }

    /// An origin listening on `addr`, inside network namespace `netns` if given.
    pub fn start_at(name: &str, addr: SocketAddr, netns: Option<&str>) -> Origin {
        let state = Arc::new(State { name: name.into(), requests: Mutex::default(), counters: Mutex::default() });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let thread_state = state.clone();
        let netns = netns.map(str::to_owned);
        let thread = std::thread::Builder::new()
            .name(format!("origin-{name}"))
            .spawn(move || {
                if let Some(ns) = &netns {
                    crate::netns::enter_netns(ns);
                }
                let listener = match std::net::TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|_| l)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound_tx.send(Err(format!("cannot bind origin on {addr}: {e}")));
                        return;
                    }
                };
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("origin runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("register listener");
                    let _ = bound_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                    accept_loop(listener, thread_state, stop_rx).await;
                });
            })
            .expect("spawn origin thread");
        let addr = bound_rx.recv().expect("origin thread died").unwrap_or_else(|e| panic!("{e}"));
        Origin { addr, state, stop: Some(stop_tx), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.path.starts_with(prefix)).collect()
    }

    /// How many requests `key` has seen (the `/attempts/{key}` value).
    pub fn attempts(&self, key: &str) -> u32 {
        self.state.counters.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, state: Arc<State>, mut stop: tokio::sync::oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, peer, state.clone()));
            }
            _ = &mut stop => return,
        }
    }
}

async fn serve(stream: tokio::net::TcpStream, peer: SocketAddr, state: Arc<State>) {
    // `/reset`: the handler asks the connection task to drop the socket unanswered.
    let kill = Arc::new(Notify::new());
    let svc_kill = kill.clone();
    let svc = service_fn(move |req| {
        let state = state.clone();
        let kill = svc_kill.clone();
        async move { Ok::<_, Infallible>(handle(state, peer, kill, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
    }
}

fn reply(state: &State, status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(&state.name) {
        r.headers_mut().insert("x-origin", v);
    }
    r
}

fn echo_json(state: &State, rec: &Recorded, attempt: Option<u32>) -> Bytes {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &rec.headers {
        headers.entry(k.as_str().to_owned()).or_default().push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let v = serde_json::json!({
        "origin": &*state.name,
        "method": rec.method.as_str(),
        "path": rec.path,
        "version": format!("{:?}", rec.version),
        "headers": headers,
        "body_len": rec.body.len(),
        "peer": rec.peer.to_string(),
        "attempt": attempt,
    });
    Bytes::from(v.to_string())
}

async fn handle(state: Arc<State>, peer: SocketAddr, kill: Arc<Notify>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_upgrade = req.method() == Method::CONNECT || req.headers().contains_key(http::header::UPGRADE);
    let on_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers.clone();
    // HTTP/2 carries the authority in the URI; record it as `host` like HTTP/1.1.
    if !headers.contains_key(http::header::HOST) {
        if let Some(a) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(http::header::HOST, a);
        }
    }
    let body = if wants_upgrade { Bytes::new() } else { body.collect().await.map(|b| b.to_bytes()).unwrap_or_default() };
    let path = match parts.uri.path_and_query() {
        Some(p) => p.as_str().to_owned(),
        None => parts.uri.to_string(),
    };
    let rec = Recorded { method: parts.method.clone(), path: path.clone(), version: parts.version, headers, peer, body, at: Instant::now() };
    state.requests.lock().unwrap().push(rec.clone());

    if let Some(on_upgrade) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        if parts.method == Method::CONNECT {
            return reply(&state, 200, Bytes::new());
        }
        let mut r = reply(&state, 101, Bytes::new());
        r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = parts.headers.get(http::header::UPGRADE) {
            r.headers_mut().insert(http::header::UPGRADE, u.clone());
        }
        if let Some(key) = parts.headers.get("sec-websocket-key").and_then(|k| k.to_str().ok()) {
            if let Ok(v) = HeaderValue::from_str(&websocket_accept(key)) {
                r.headers_mut().insert("sec-websocket-accept", v);
            }
        }
        return r;
    }

    let path_only = path.split(['?', '#']).next().unwrap_or("/");
    let mut segments: Vec<&str> = path_only.split('/').skip(1).collect();
    if segments.first() == Some(&"only") && segments.len() >= 2 {
        if segments[1] == &*state.name {
            segments.drain(..2);
        } else {
            segments = vec!["echo"];
        }
    }
    let num = |i: usize| segments.get(i).and_then(|s| s.parse::<u64>().ok());
    match segments.as_slice() {
        ["status", _] => {
            let code = num(1).unwrap_or(500) as u16;
            reply(&state, code, format!("status {code}\n"))
        }
        ["fail", key, _, _] => {
            let (n, code) = (num(2).unwrap_or(0), num(3).unwrap_or(503) as u16);
            let attempt = state.count(key);
            let mut r = if u64::from(attempt) <= n {
                reply(&state, code, format!("failing attempt {attempt}\n"))
            } else {
                reply(&state, 200, echo_json(&state, &rec, Some(attempt)))
            };
            r.headers_mut().insert("x-origin-attempt", HeaderValue::from(attempt));
            r
        }
        ["reset", key, _] => {
            let attempt = state.count(key);
            if u64::from(attempt) <= num(2).unwrap_or(0) {
                kill.notify_one();
                std::future::pending::<()>().await;
            }
            let mut r = reply(&state, 200, echo_json(&state, &rec, Some(attempt)));
            r.headers_mut().insert("x-origin-attempt", HeaderValue::from(attempt));
            r
        }
        ["slow", key, _, _] => {
            let attempt = state.count(key);
            if u64::from(attempt) <= num(2).unwrap_or(0) {
                tokio::time::sleep(Duration::from_millis(num(3).unwrap_or(0))).await;
            }
            let mut r = reply(&state, 200, echo_json(&state, &rec, Some(attempt)));
            r.headers_mut().insert("x-origin-attempt", HeaderValue::from(attempt));
            r
        }
        ["delay", _] => {
            tokio::time::sleep(Duration::from_millis(num(1).unwrap_or(0))).await;
            reply(&state, 200, echo_json(&state, &rec, None))
        }
        ["bytes", _] => {
            let n = num(1).unwrap_or(0) as usize;
            let body: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            reply(&state, 200, body)
        }
        ["attempts", key] => {
            let n = state.counters.lock().unwrap().get(*key).copied().unwrap_or(0);
            reply(&state, 200, n.to_string())
        }
        _ => reply(&state, 200, echo_json(&state, &rec, None)),
    }
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2): base64(SHA-1(key + GUID)).
pub fn websocket_accept(key: &str) -> String {
    let digest = sha1(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
    base64(&digest)
}

fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([chunk[4 * i], chunk[4 * i + 1], chunk[4 * i + 2], chunk[4 * i + 3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_accept_matches_rfc6455_example() {
        assert_eq!(super::websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
