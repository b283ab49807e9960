//! Network namespaces for tests that need their own network stack (root only).
//!
//! [`Netns`] creates a named namespace (`ip netns add`) with loopback up and deletes
//! it on drop, with every process still inside killed first. [`in_netns`] runs a
//! closure on a thread that has joined a namespace, so sockets it creates (an origin's
//! listener, an admin request) live there while the test process stays outside.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether the test runs as root (namespaces, nftables).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root: `true` means go on. Without root, fails the test
/// under `CI=true`, else prints `SKIPPED` and returns `false`.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root (network namespaces, nftables); CI must run the suite as root");
    }
    eprintln!("SKIPPED {test}: needs root (network namespaces, nftables)");
    false
}

/// Runs `f` on a new thread that has joined network namespace `ns` (if any).
pub fn in_netns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    let Some(ns) = ns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Moves the calling thread into network namespace `ns` (`/run/netns/<ns>`).
pub fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    // SAFETY: a valid namespace fd; setns only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if !out.status.success() {
        panic!("`{cmd} {}` failed ({}): {}{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted (with its processes killed) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// `np-<pid>-<n>` with `lo` up.
    pub fn create() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("np-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Loads an nftables script inside the namespace.
    pub fn nft(&self, script: &str) {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot run nft (apt-get install nftables)");
        child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write nft script");
        let out = child.wait_with_output().expect("nft");
        assert!(out.status.success(), "nft -f failed: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Anything still running inside (a proxy whose test panicked) goes first.
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: plain kill(2) of a process in our namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Rules and addresses live in the namespace and go with it.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A private bpffs instance (for BPF pins), unmounted and removed on drop.
pub struct BpfFs(std::path::PathBuf);

impl BpfFs {
    /// Mounts one at `at` (created if missing).
    pub fn mount_at(at: &std::path::Path) -> BpfFs {
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(at).unwrap_or_else(|e| panic!("bpffs mountpoint {}: {e}", at.display()));
        let target = std::ffi::CString::new(at.as_os_str().as_bytes()).expect("a path without NUL");
        // SAFETY: NUL-terminated strings, no data argument.
        let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        assert_eq!(rc, 0, "mount -t bpf bpf {}: {}", at.display(), std::io::Error::last_os_error());
        BpfFs(at.to_path_buf())
    }

    /// Mounts one in a fresh directory under the temp dir, named by `tag`.
    pub fn mount(tag: &str) -> BpfFs {
        Self::mount_at(&std::env::temp_dir().join(format!("np-bpffs-{}-{tag}", std::process::id())))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(c) = std::ffi::CString::new(self.0.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}
