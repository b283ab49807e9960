//! The Python grpcio peers in `tests/peers/grpc/` (see its README): the echo
//! server as a child process, and the client run once per case with its JSON output.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::clients::command;

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers").join("grpc")
}

/// The Python interpreter with grpcio: `NODE_PROXY_PYTHON`, else `python3` on PATH.
pub fn python() -> String {
    std::env::var("NODE_PROXY_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// `server.py` on a free port; stopped on drop (stdin closed, then killed).
pub struct GrpcServer {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl GrpcServer {
    /// Starts `server.py --server-id ID --port 0 --exit-on-stdin-close`.
    pub fn start(server_id: &str) -> GrpcServer {
        let mut cmd = command(&python());
        cmd.arg(peers_dir().join("server.py"))
            .args(["--port", "0", "--host", "127.0.0.1", "--server-id", server_id, "--exit-on-stdin-close", "--grace-s", "0.2"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start the Python gRPC server ({}): {e}", python()));
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = stderr_lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let port: u16 = match line.trim().strip_prefix("READY ").and_then(|p| p.parse().ok()) {
            Some(p) => p,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gRPC server did not print READY (got {line:?}); stderr:\n{}\n(needs python3 with grpcio, grpcio-tools, protobuf)",
                    stderr_lines.lock().unwrap().join("\n")
                );
            }
        };
        GrpcServer { child: Some(child), stdin, addr: SocketAddr::from(([127, 0, 0, 1], port)), stderr: stderr_lines }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            // SAFETY: our child's process group.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}

/// Runs `client.py --target TARGET CASE ARGS` and returns its JSON output.
pub fn grpc_client(target: SocketAddr, case: &str, args: &[&str]) -> Value {
    let mut cmd = command(&python());
    cmd.arg(peers_dir().join("client.py")).arg("--target").arg(target.to_string()).arg(case).args(args);
    let bg = crate::clients::Background::spawn(cmd, "the Python gRPC client");
    let (code, out, err) = bg.wait(Duration::from_secs(60));
    assert_eq!(code, 0, "client.py {case} {} exited {code}:\n{out}\n{err}", args.join(" "));
    let line = out.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("client.py printed no JSON ({e}): {out}\n{err}"))
}
