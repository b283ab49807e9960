//! Real clients run as subprocesses (curl, h2load) with their output parsed, and a
//! few raw-socket helpers for what a well-behaved client cannot send.
//!
//! Proxy environment variables are removed from every client's environment, so a
//! `http_proxy` set on the machine never sends test traffic elsewhere.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROXY_ENV: &[&str] = &["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "grpc_proxy", "no_proxy", "NO_PROXY"];

/// A `Command` with the proxy variables removed and its own process group.
pub fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    for v in PROXY_ENV {
        c.env_remove(v);
    }
    c.process_group(0);
    c
}

/// A child process killed (with its process group) on drop.
pub struct Background {
    child: Option<Child>,
    what: String,
}

impl Background {
    pub fn spawn(mut cmd: Command, what: &str) -> Background {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Background { child: Some(child), what: what.to_owned() }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for the process (killing it after `timeout`): (exit code, stdout, stderr).
    pub fn wait(mut self, timeout: Duration) -> (i32, String, String) {
        let mut child = self.child.take().expect("child");
        let mut out = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let out_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            s
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                // SAFETY: our child's process group.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                panic!("{} did not finish within {timeout:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let out = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
        let err = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
        (status.code().unwrap_or(-1), out, err)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: our child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// A curl invocation. `run` captures status, final response headers and body.
#[derive(Clone, Debug)]
pub struct Curl {
    url: String,
    args: Vec<String>,
    body: Option<Vec<u8>>,
    netns: Option<String>,
    /// Argv prefix curl runs under (e.g. a pod's namespace and cgroup).
    wrapper: Vec<String>,
    timeout: Duration,
}

/// What curl got.
#[derive(Clone, Debug)]
pub struct CurlResponse {
    /// 0 when there was no response (see `exit_code` and `stderr`).
    pub status: u16,
    /// `1.1` or `2`.
    pub http_version: String,
    /// The final response's headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub exit_code: i32,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CurlResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(k, _)| *k == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (the origin's echo); panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("response body is not JSON ({e}): status {} body {:?}", self.status, self.text()))
    }

    /// The answering origin's name (`x-origin`).
    pub fn origin(&self) -> Option<&str> {
        self.header("x-origin")
    }
}

impl Curl {
    pub fn new(url: &str) -> Curl {
        Curl { url: url.to_owned(), args: Vec::new(), body: None, netns: None, wrapper: Vec::new(), timeout: Duration::from_secs(30) }
    }

    pub fn header(mut self, name: &str, value: &str) -> Curl {
        self.args.push("-H".into());
        self.args.push(format!("{name}: {value}"));
        self
    }

    /// The `Host` header (HTTP/1.1) / `:authority` (HTTP/2).
    pub fn host(self, host: &str) -> Curl {
        self.header("Host", host)
    }

    pub fn method(mut self, method: &str) -> Curl {
        self.args.push("-X".into());
        self.args.push(method.into());
        self
    }

    /// Sends `data` as the body (POST unless `method` says otherwise).
    pub fn body(mut self, data: &[u8]) -> Curl {
        self.body = Some(data.to_vec());
        self
    }

    /// Prior-knowledge HTTP/2 over cleartext (h2c).
    pub fn http2(mut self) -> Curl {
        self.args.push("--http2-prior-knowledge".into());
        self
    }

    pub fn arg(mut self, arg: &str) -> Curl {
        self.args.push(arg.into());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Curl {
        self.timeout = t;
        self
    }

    /// Runs curl inside network namespace `ns`.
    pub fn netns(mut self, ns: &str) -> Curl {
        self.netns = Some(ns.to_owned());
        self
    }

    /// Runs curl under an argv prefix (`wrapper... curl ARGS`), e.g.
    /// [`crate::topology::Pod::wrapper`] to run it in a pod's namespace and cgroup.
    pub fn wrapper(mut self, argv: Vec<String>) -> Curl {
        self.wrapper = argv;
        self
    }

    pub fn run(self) -> CurlResponse {
        let dir = tempfile::Builder::new().prefix("curl-").tempdir().expect("temp dir");
        let body_path = dir.path().join("body");
        let headers_path = dir.path().join("headers");
        let mut argv: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns]);
        }
        argv.push("curl");
        let mut cmd = command(argv[0]);
        cmd.args(&argv[1..]);
        cmd.args(["-sS", "--noproxy", "*", "-o"])
            .arg(&body_path)
            .arg("-D")
            .arg(&headers_path)
            .args(["-w", "%{http_code} %{http_version}", "--max-time"])
            .arg(format!("{:.3}", self.timeout.as_secs_f64()));
        if let Some(data) = &self.body {
            let data_path = dir.path().join("request-body");
            std::fs::write(&data_path, data).expect("write request body");
            cmd.arg("--data-binary").arg(format!("@{}", data_path.display()));
        }
        cmd.args(&self.args).arg(&self.url);
        let start = Instant::now();
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run curl (apt-get install curl): {e}"));
        let elapsed = start.elapsed();
        let written = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut w = written.split_whitespace();
        let status = w.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let http_version = w.next().unwrap_or("").to_owned();
        let raw_headers = std::fs::read_to_string(&headers_path).unwrap_or_default();
        let body = std::fs::read(&body_path).unwrap_or_default();
        CurlResponse {
            status,
            http_version,
            headers: last_header_block(&raw_headers),
            body,
            exit_code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
        }
    }
}

/// The header lines of the last response in a `curl -D` dump (after any 1xx).
fn last_header_block(raw: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<Vec<(String, String)>> = Vec::new();
    for line in raw.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            blocks.push(Vec::new());
        } else if let (Some(block), Some((k, v))) = (blocks.last_mut(), line.split_once(':')) {
            block.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    blocks.pop().unwrap_or_default()
}

/// GET with curl; shorthand for `Curl::new(url).run()`.
pub fn curl(url: &str) -> CurlResponse {
    Curl::new(url).run()
}

/// h2load's summary.
#[derive(Clone, Debug, Default)]
pub struct H2loadSummary {
    pub total: u64,
    pub started: u64,
    pub done: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub output: String,
}

/// Parses h2load's `requests:` and `status codes:` lines.
pub fn parse_h2load(output: &str) -> H2loadSummary {
    let mut s = H2loadSummary { output: output.to_owned(), ..Default::default() };
    let number_before = |line: &str, word: &str| -> Option<u64> {
        let tokens: Vec<&str> = line.split([' ', ',']).filter(|t| !t.is_empty()).collect();
        tokens.windows(2).find(|w| w[1] == word).and_then(|w| w[0].parse().ok())
    };
    let mut found = false;
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("requests:") {
            found = true;
            s.total = number_before(rest, "total").unwrap_or(0);
            s.started = number_before(rest, "started").unwrap_or(0);
            s.done = number_before(rest, "done").unwrap_or(0);
            s.succeeded = number_before(rest, "succeeded").unwrap_or(0);
            s.failed = number_before(rest, "failed").unwrap_or(0);
            s.errored = number_before(rest, "errored").unwrap_or(0);
            s.timeout = number_before(rest, "timeout").unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            s.status_2xx = number_before(rest, "2xx").unwrap_or(0);
            s.status_3xx = number_before(rest, "3xx").unwrap_or(0);
            s.status_4xx = number_before(rest, "4xx").unwrap_or(0);
            s.status_5xx = number_before(rest, "5xx").unwrap_or(0);
        }
    }
    assert!(found, "no `requests:` line in h2load output:\n{output}");
    s
}

/// An h2load command (`h2load ARGS`), not yet started.
pub fn h2load_command(args: &[&str]) -> Command {
    let mut c = command("h2load");
    c.args(args);
    c
}

/// Runs h2load to completion and parses its summary.
pub fn h2load(args: &[&str]) -> H2loadSummary {
    let bg = Background::spawn(h2load_command(args), "h2load (apt-get install nghttp2-client)");
    let (code, out, err) = bg.wait(Duration::from_secs(120));
    assert!(code == 0 || out.contains("requests:"), "h2load {} exited {code}: {out}{err}", args.join(" "));
    parse_h2load(&out)
}

/// A reply from [`http_get`].
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A minimal HTTP/1.1 GET (`Connection: close`), for the admin port.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpReply, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read from {addr}: {e}"))?;
    let head = parse_response_head(&raw).ok_or_else(|| format!("not an HTTP response: {:?}", String::from_utf8_lossy(&raw)))?;
    Ok(HttpReply { status: head.status, headers: head.headers, body: String::from_utf8_lossy(&raw[head.len..]).into_owned() })
}

/// The head of an HTTP/1.x response.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Bytes up to and including the blank line.
    pub len: usize,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses `HTTP/1.1 200 OK\r\nk: v\r\n\r\n` at the start of `raw`.
pub fn parse_response_head(raw: &[u8]) -> Option<ResponseHead> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())).collect();
    Some(ResponseHead { status, headers, len: end })
}

/// Writes `request` on a new connection and reads until the peer closes or
/// `timeout` passes without data. Returns everything read.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.write_all(request).expect("write request");
    read_until_close(&mut s)
}

/// Reads until EOF, a reset, or a read timeout.
pub fn read_until_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.x response head (and nothing after it that did not arrive with it).
pub fn read_response_head(s: &mut TcpStream) -> (ResponseHead, Vec<u8>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(head) = parse_response_head(&raw) {
            let rest = raw[head.len..].to_vec();
            return (head, rest);
        }
        match s.read(&mut buf) {
            Ok(0) => panic!("connection closed before a full response head: {:?}", String::from_utf8_lossy(&raw)),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading response head: {e}; so far {:?}", String::from_utf8_lossy(&raw)),
        }
    }
}
