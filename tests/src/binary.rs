//! Finding (and building) the `node-proxy` binary under test.
//!
//! - `NODE_PROXY_BIN` set: that binary, used as is.
//! - Otherwise the binary of the same Cargo profile as this test executable
//!   (`target/<profile>/deps/<test>` -> `target/<profile>/node-proxy`). Cargo never
//!   builds another package's binary for a test (`cargo test -p tests` and even
//!   `cargo test --workspace` leave it unbuilt or stale), so the first test that
//!   needs it runs `cargo build -p node-proxy` for that profile, once per test
//!   executable (`$CARGO`, which cargo sets for tests; the build lock is free while
//!   tests run). It is a no-op when the binary is fresh and keeps the tests honest
//!   while the proxy is edited. `NODE_PROXY_NO_BUILD=1` skips it.
//! - If the build fails but a binary exists, it is used with a loud warning; if
//!   there is none, the test fails with what to run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".."))
}

/// The path of the node-proxy binary, built if needed; panics with what to run when it is missing.
pub fn node_proxy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(locate).clone()
}

fn locate() -> PathBuf {
    if let Some(p) = std::env::var_os("NODE_PROXY_BIN") {
        let bin = PathBuf::from(p);
        if !bin.is_file() {
            panic!("NODE_PROXY_BIN={} does not exist", bin.display());
        }
        return bin;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let bin = profile_dir.join("node-proxy");
    if std::env::var("NODE_PROXY_NO_BUILD").is_ok_and(|v| v == "1") {
        if !bin.is_file() {
            panic!("node-proxy binary not found at {}: run `cargo build -p node-proxy`", bin.display());
        }
        warn_if_stale(&bin);
        return bin;
    }
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", "node-proxy", "--bin", "node-proxy", "--quiet"]).current_dir(workspace_root());
    // Cargo sets these for the test executable; a build script that watches one (ring's
    // does, CARGO_MANIFEST_DIR) would see it change between this build and a build from
    // a shell, and rebuild the TLS stack and everything above it each time.
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n == "CARGO_MANIFEST_DIR" || n == "CARGO_MANIFEST_PATH" || n.starts_with("CARGO_PKG_") || n.starts_with("CARGO_CRATE_"))
        {
            cmd.env_remove(name);
        }
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    match cmd.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            if bin.is_file() {
                eprintln!("warning: `cargo build -p node-proxy` failed; testing the existing, possibly stale {}:\n{err}", bin.display());
            } else {
                panic!("node-proxy binary not found at {} and `cargo build -p node-proxy` failed:\n{err}", bin.display());
            }
        }
        Err(e) => eprintln!("warning: cannot run {cargo} to build node-proxy: {e}"),
    }
    if !bin.is_file() {
        panic!("node-proxy binary not found at {}: run `cargo build -p node-proxy` (same profile as the tests), or set NODE_PROXY_BIN", bin.display());
    }
    warn_if_stale(&bin);
    bin
}

fn newest_source(dir: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            newest_source(&path, newest);
        } else if path.extension().is_some_and(|x| x == "rs" || x == "yaml" || x == "toml" || x == "c" || x == "h") {
            if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                if newest.as_ref().is_none_or(|(t, _)| m > *t) {
                    *newest = Some((m, path));
                }
            }
        }
    }
}

fn warn_if_stale(bin: &Path) {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else { return };
    let root = workspace_root();
    let mut newest = None;
    for dir in ["node-proxy/src", "node-proxy/config", "istio-compat/src", "protocols/src", "xds-client/src", "redirect-bpf/src"] {
        newest_source(&root.join(dir), &mut newest);
    }
    if let Some((t, path)) = newest {
        if t > built {
            eprintln!("warning: {} is older than {}: testing a stale proxy; run `cargo build -p node-proxy`", bin.display(), path.display());
        }
    }
}
