//! Proves the redirect on the real kernel (needs root): a client in a test cgroup dials a
//! "VIP" with no route, lands on the proxy listener, sees the VIP as its peer, and the
//! proxy recovers the VIP with `SO_ORIGINAL_DST`.

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redirect_bpf::{cgroup2_mount, original_dst, Counters, Options, Redirector, Reuse};

/// The SO_MARK the proxy puts on its own upstream connections.
const PROXY_MARK: u32 = 0x4e50;

const CLIENT: &str = r#"
import socket, sys
host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]))
if int(sys.argv[4]):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[4]))
s.connect((host, int(sys.argv[2])))
peer = s.getpeername()
print(f"[{peer[0]}]:{peer[1]}" if family == socket.AF_INET6 else f"{peer[0]}:{peer[1]}", flush=True)
sys.stdin.read()
"#;

/// Moves the calling process into `cgroup` (cgroup v2: writing 0 moves the writer).
fn join_cgroup(cgroup: &Path) {
    fs::write(cgroup.join("cgroup.procs"), "0").unwrap_or_else(|e| panic!("joining {}: {e}", cgroup.display()));
}

/// Everything the test created, removed in reverse order even when an assertion fails.
struct Guard {
    /// Joining a cgroup moves the whole test process: the tests take turns.
    _serial: std::sync::MutexGuard<'static, ()>,
    root: PathBuf,
    home: PathBuf,
    cgroup: PathBuf,
    /// The proxy's own cgroup (beside the pods' one), for the getsockopt hook.
    proxy_cgroup: PathBuf,
    bpffs: PathBuf,
    pin_dir: PathBuf,
    redirector: Option<Redirector>,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Make sure this process is back where it started.
        let _ = fs::write(self.home.join("cgroup.procs"), "0");
        drop(self.redirector.take());
        if let Err(e) = Redirector::detach(&self.pin_dir) {
            eprintln!("detach: {e}");
        }
        for cgroup in [&self.cgroup, &self.proxy_cgroup] {
            if let Ok(procs) = fs::read_to_string(cgroup.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            if let Err(e) = fs::remove_dir(cgroup) {
                eprintln!("rmdir {}: {e}", cgroup.display());
            }
        }
        if let Ok(c) = CString::new(self.bpffs.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = fs::remove_dir(&self.bpffs);
    }
}

impl Guard {
    /// Test cgroups (pods and proxy, under the cgroup v2 root) and a private bpffs
    /// instance, so the test does not depend on (or touch) /sys/fs/bpf. `None`
    /// without root (outside CI).
    fn new(tag: &str) -> Option<Guard> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            if std::env::var_os("CI").is_none() {
                eprintln!("skipping: the redirect test loads BPF programs and needs root");
                return None;
            }
            panic!("the redirect test needs root (it loads BPF programs into a test cgroup): run as root");
        }
        let pid = std::process::id();
        let root = cgroup2_mount().expect("no cgroup v2 mount (mount -t cgroup2 to find it)");
        let own = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").trim_start_matches('/').to_string();
        let bpffs = std::env::temp_dir().join(format!("np-bpf-{pid}-{tag}"));
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let g = Guard {
            _serial: SERIAL.lock().unwrap_or_else(|p| p.into_inner()),
            home: root.join(&own),
            cgroup: root.join(format!("np-test-{pid}-{tag}")),
            proxy_cgroup: root.join(format!("np-test-{pid}-{tag}-proxy")),
            pin_dir: bpffs.join("redirect"),
            root,
            bpffs,
            redirector: None,
            children: Vec::new(),
        };
        fs::create_dir(&g.cgroup).expect("create test cgroup");
        fs::create_dir(&g.proxy_cgroup).expect("create proxy cgroup");
        fs::create_dir_all(&g.bpffs).expect("create bpffs mountpoint");
        let target = CString::new(g.bpffs.as_os_str().as_bytes()).expect("path");
        // SAFETY: NUL-terminated strings; no data argument.
        let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
        assert_eq!(rc, 0, "mount -t bpf bpf {}: {}", g.bpffs.display(), std::io::Error::last_os_error());
        Some(g)
    }

    /// A listener created from inside `cgroup` (an accepted socket inherits its
    /// listener's cgroup, which decides which getsockopt hook answers).
    fn listener_in(&self, cgroup: &Path) -> TcpListener {
        join_cgroup(cgroup);
        let l = TcpListener::bind("127.0.0.1:0");
        join_cgroup(&self.home);
        l.expect("bind listener")
    }

    /// A client started inside the test cgroup dialing `dst`, held until the test ends.
    fn client(&mut self, dst: SocketAddr, timeout_secs: u32, mark: u32) -> &mut Child {
        self.children.push(spawn_client(&self.cgroup, dst, timeout_secs, mark));
        self.children.last_mut().expect("the child just pushed")
    }

    fn counters(&self) -> Counters {
        self.redirector.as_ref().expect("redirector").counters()
    }
}

/// Lets `client` dial and end, then asserts `proxy` accepted nothing.
fn assert_proxy_accepts_nothing(client: &mut Child, proxy: &TcpListener, what: &str) {
    drop(client.stdin.take());
    let _ = client.wait().expect("wait client");
    proxy.set_nonblocking(true).expect("nonblocking");
    assert!(proxy.accept().is_err(), "proxy accepted {what}");
}

fn spawn_client(cgroup: &Path, dst: SocketAddr, timeout_secs: u32, mark: u32) -> Child {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).expect("cgroup path");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", CLIENT, &dst.ip().to_string(), &dst.port().to_string(), &timeout_secs.to_string(), &mark.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: only async-signal-safe calls (open/write/close) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 1 {
                return Err(err);
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn python3 client")
}

fn accept_within(listener: &TcpListener, timeout: Duration) -> TcpStream {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking");
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("listener {:?} accepted nothing: {e}", listener.local_addr()),
        }
    }
}

fn read_peer(child: &mut Child) -> String {
    let out = child.stdout.take().expect("child stdout");
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).expect("read child's getpeername");
    line.trim().to_string()
}

fn finish(child: &mut Child) {
    drop(child.stdin.take());
    let status = child.wait().expect("wait client");
    assert!(status.success(), "client exited with {status}");
}

#[test]
fn redirects_vip_to_proxy_and_recovers_original_dst() {
    let Some(mut g) = Guard::new("basic") else { return };
    // The proxy's listener is in the pods' cgroup here (no proxy cgroup given: the
    // getsockopt hook goes on the pods' cgroup).
    let proxy = g.listener_in(&g.cgroup);
    let proxy_addr = proxy.local_addr().expect("proxy addr");
    let direct = TcpListener::bind("127.0.0.1:0").expect("bind direct listener");
    let direct_addr = direct.local_addr().expect("direct addr");

    let redirector = g
        .redirector
        .insert(Redirector::attach_with(&g.cgroup, proxy_addr, &g.pin_dir, Options { bypass_mark: PROXY_MARK, ..Default::default() }).expect("attach"));
    for name in ["redirect_set", "counters", "link_np_connect4", "link_np_getsockopt", "link_np_sockops"] {
        assert!(g.pin_dir.join(name).exists(), "{name} not pinned");
    }
    let vip: SocketAddr = "10.255.0.1:8080".parse().expect("vip");
    redirector.add(vip).expect("add VIP");
    let before = redirector.counters();

    // Redirected: the VIP has no route, so only the rewrite can make this connect succeed.
    let client = g.client(vip, 5, 0);
    let accepted = accept_within(&proxy, Duration::from_secs(10));
    let peer_seen = read_peer(client);
    assert_eq!(peer_seen, "10.255.0.1:8080", "client's getpeername must show the VIP it dialed");
    let local = accepted.local_addr().expect("accepted local");
    assert_eq!(local, proxy_addr);
    assert_eq!(original_dst(&accepted, local).expect("SO_ORIGINAL_DST"), vip);
    finish(client);
    let after = g.counters();
    assert_eq!(after.redirected - before.redirected, 1, "{after:?}");
    assert_eq!(after.getsockopt_answered - before.getsockopt_answered, 1, "{after:?}");

    // Bypassed: not in the set, so the client reaches the direct listener untouched.
    let client = g.client(direct_addr, 5, 0);
    let mut accepted = accept_within(&direct, Duration::from_secs(10));
    assert_eq!(read_peer(client), direct_addr.to_string());
    let _ = accepted.write_all(b"bye");
    finish(client);
    let bypassed = g.counters();
    assert_eq!(bypassed.bypassed_not_in_set - after.bypassed_not_in_set, 1, "{bypassed:?}");
    assert_eq!(bypassed.redirected, after.redirected, "{bypassed:?}");

    // connect6 with a v4-mapped destination: same set entry, same proxy (through
    // ::ffff:127.0.0.1), getpeername6 shows the mapped VIP.
    let mapped: SocketAddr = "[::ffff:10.255.0.1]:8080".parse().expect("mapped vip");
    let client = g.client(mapped, 5, 0);
    let accepted = accept_within(&proxy, Duration::from_secs(10));
    assert_eq!(read_peer(client), "[::ffff:10.255.0.1]:8080");
    let local = accepted.local_addr().expect("accepted local");
    assert_eq!(original_dst(&accepted, local).expect("SO_ORIGINAL_DST (v6 client)"), vip);
    finish(client);
    let v6 = g.counters();
    assert_eq!(v6.redirected - bypassed.redirected, 1, "{v6:?}");

    // The proxy's own traffic (SO_MARK) to a VIP in the set is left alone.
    assert_proxy_accepts_nothing(g.client(vip, 1, PROXY_MARK), &proxy, "its own marked connection");
    let own = g.counters();
    assert_eq!(own.bypassed_own_traffic - v6.bypassed_own_traffic, 1, "{own:?}");
    assert_eq!(own.redirected, v6.redirected, "{own:?}");
    let v6 = own;

    // Removing the VIP stops the redirect: the connect goes to the real VIP and the
    // proxy accepts nothing.
    let redirector = g.redirector.as_ref().expect("redirector");
    redirector.remove(vip).expect("remove VIP");
    redirector.remove(vip).expect("removing twice is fine");
    // Whether the real VIP answers depends on the network (a default route may lead to
    // an egress that accepts anything): only the proxy's silence and the counters count.
    assert_proxy_accepts_nothing(g.client(vip, 1, 0), &proxy, "a connection for a removed VIP");
    let removed: Counters = g.counters();
    assert_eq!(removed.redirected, v6.redirected, "{removed:?}");
    assert_eq!(removed.bypassed_not_in_set - v6.bypassed_not_in_set, 1, "{removed:?}");
}

#[test]
fn a_restarted_proxy_keeps_the_pinned_redirect_and_port_zero_means_every_port() {
    let Some(mut g) = Guard::new("reuse") else { return };
    // The proxy runs in its own cgroup, beside the pods': its getsockopt hook is there.
    let proxy = g.listener_in(&g.proxy_cgroup);
    let proxy_addr = proxy.local_addr().expect("proxy addr");
    let options = Options { bypass_mark: PROXY_MARK, proxy_cgroup: Some(g.proxy_cgroup.clone()) };

    let (first, reuse) = Redirector::attach_or_reuse(&g.cgroup, proxy_addr, &g.pin_dir, options.clone()).expect("attach");
    assert_eq!(reuse, Reuse::Fresh);
    let attachment = first.attachment().expect("attachment");
    assert_eq!((attachment.pods_cgroup.as_path(), attachment.proxy_cgroup.as_path()), (g.cgroup.as_path(), g.proxy_cgroup.as_path()));
    assert_eq!((attachment.proxy, attachment.bypass_mark, attachment.same_build), (proxy_addr, PROXY_MARK, true));
    // Port 0: every port of the address.
    let every_port: SocketAddr = "10.255.0.2:0".parse().expect("addr");
    first.add(every_port).expect("add");
    let before = first.counters();
    // The proxy process goes away (its handle drops); the pins keep the redirect.
    drop(first);

    for port in [80, 9042] {
        let dst = SocketAddr::new(every_port.ip(), port);
        let client = g.client(dst, 5, 0);
        let accepted = accept_within(&proxy, Duration::from_secs(10));
        assert_eq!(read_peer(client), dst.to_string());
        let local = accepted.local_addr().expect("local");
        assert_eq!(original_dst(&accepted, local).expect("SO_ORIGINAL_DST answered by the proxy cgroup's hook"), dst);
        finish(client);
    }

    // The restarted proxy, same settings: keeps the attachment, its set and counters.
    let (second, reuse) = Redirector::attach_or_reuse(&g.cgroup, proxy_addr, &g.pin_dir, options.clone()).expect("reattach");
    assert_eq!(reuse, Reuse::Kept);
    assert_eq!(second.entries().expect("entries"), vec![every_port]);
    let after = second.counters();
    assert_eq!(after.redirected - before.redirected, 2, "{after:?}");
    assert_eq!(after.getsockopt_answered - before.getsockopt_answered, 2, "{after:?}");
    // `open` (what `node-proxy bpf status` uses) sees the same maps.
    assert_eq!(Redirector::open(&g.pin_dir).expect("open").counters(), after);
    drop(second);

    // Other settings: the attachment is replaced, and says why.
    let changed = Options { bypass_mark: PROXY_MARK + 1, ..options };
    let (third, reuse) = Redirector::attach_or_reuse(&g.cgroup, proxy_addr, &g.pin_dir, changed).expect("replace");
    assert!(matches!(&reuse, Reuse::Replaced(why) if why.contains("mark")), "{reuse:?}");
    assert!(third.entries().expect("entries").is_empty(), "a replaced attachment starts with an empty set");
    g.redirector = Some(third);
    assert_proxy_accepts_nothing(g.client("10.255.0.2:80".parse().expect("addr"), 1, 0), &proxy, "a connection after the set was replaced");
}
