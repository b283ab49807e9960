//! Helpers shared by the process-level benchmarks (`xds_scale`, `redirect`, `hbone`, `authz`): servers
//! started pinned to a CPU and stopped with their process group, wrk's output parsed,
//! the section a benchmark writes into RESULTS.md, and the report's formatting.
#![allow(dead_code)] // each benchmark uses a different subset

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn log(msg: impl AsRef<str>) {
    println!("{}", msg.as_ref());
    let _ = std::io::stdout().flush();
}

/// A server in its own process group, stopped (SIGTERM, then SIGKILL) on drop, and
/// sent SIGTERM by the kernel if this process dies first.
pub struct Server {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Server {
    pub fn start(name: &'static str, cpu: usize, argv: &[String], log: PathBuf) -> Server {
        let out = fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("log file handle");
        let mut cmd = Command::new("taskset");
        cmd.arg("-c").arg(cpu.to_string()).args(argv).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        // SAFETY: prctl is async-signal-safe; PR_SET_PDEATHSIG survives the exec of taskset and its target.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", argv.join(" ")));
        Server { name, child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn pids(&self) -> Vec<u32> {
        tree(self.pid(), &all_stats())
    }

    pub fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}); last log lines:\n{}", self.name, tail(&self.log));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: signalling the process group this program created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; whatever of the group is left (nginx workers).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Whether `tool` is on the PATH.
pub fn tool_found(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// The flags every benchmarked node-proxy runs with besides its config source: one
/// worker, the admin API on `admin`, no metrics/readiness/HBONE listeners, warnings only.
pub fn proxy_flags(admin: &str) -> Vec<String> {
    ["--workers", "1", "--admin-address", admin, "--metrics-address", "off", "--readiness-address", "off", "--hbone-address", "off", "--log-level", "warn"]
        .map(str::to_owned)
        .to_vec()
}

pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

pub struct WrkResult {
    pub rps: f64,
    pub requests: f64,
    pub errors: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

pub fn parse_ms(s: &str) -> Option<f64> {
    let (num, mul) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

pub fn parse_wrk(out: &str) -> Option<WrkResult> {
    let mut r = WrkResult { rps: 0.0, requests: 0.0, errors: 0.0, p50_ms: None, p99_ms: None };
    let mut seen = false;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().ok()?;
            seen = true;
        } else if words.len() >= 2 && words[1] == "requests" && line.contains(" in ") {
            r.requests = words[0].parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<f64>().unwrap_or(0.0);
        } else if line.starts_with("Socket errors:") {
            r.errors += line.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<f64>().ok()).sum::<f64>();
        } else if words.len() == 2 && words[0] == "50.000%" {
            r.p50_ms = parse_ms(words[1]);
        } else if words.len() == 2 && words[0] == "99.000%" {
            r.p99_ms = parse_ms(words[1]);
        } else if words.len() == 2 && words[0] == "50%" {
            r.p50_ms = parse_ms(words[1]);
        } else if words.len() == 2 && words[0] == "99%" {
            r.p99_ms = parse_ms(words[1]);
        }
    }
    seen.then_some(r)
}

pub fn git_rev() -> String {
    let root = tests::binary::workspace_root();
    let out = |args: &[&str]| Command::new("git").arg("-C").arg(&root).args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let rev = out(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    // --no-optional-locks: no index refresh (this must not write to the repository).
    let dirty = out(&["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{rev} (with uncommitted changes)")
    } else {
        rev
    }
}

pub fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map_or("unknown", |(_, v)| v.trim()).to_owned();
    let mem = status_like("/proc/meminfo", "MemTotal:") as f64 / 1024.0 / 1024.0;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    // Online CPUs, not this (pinned) process's share of them.
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("{n} CPUs ({model}), {mem:.1} GiB, Linux {kernel}")
}

pub fn status_like(path: &str, field: &str) -> u64 {
    let s = fs::read_to_string(path).unwrap_or_default();
    s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

pub fn fmt_int(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("—".to_owned(), |v| format!("{v:.digits$}"))
}

pub fn yes(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    }
}

/// Replaces this program's section in `path` (or appends it), leaving the rest as is.
pub fn write_section(path: &Path, name: &str, section: &str) {
    let old = fs::read_to_string(path).unwrap_or_default();
    let begin = format!("<!-- BEGIN {name}");
    let end = format!("<!-- END {name} -->");
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            let after = old[e + end.len()..].trim_start_matches('\n');
            format!("{}{}{}{}", &old[..b], section, if after.is_empty() { "" } else { "\n" }, after)
        }
        _ if old.trim().is_empty() => section.to_owned(),
        _ => format!("{}\n\n{}", old.trim_end_matches('\n'), section),
    };
    fs::write(path, new).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// (ppid, utime+stime ticks) of a process.
pub fn stat_of(pid: u32) -> Option<(u32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) … utime(11) stime(12).
    Some((f.get(1)?.parse().ok()?, f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
}

pub fn all_stats() -> BTreeMap<u32, (u32, u64)> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some(st) = stat_of(pid) {
                    out.insert(pid, st);
                }
            }
        }
    }
    out
}

/// `root` and its descendants.
pub fn tree(root: u32, stats: &BTreeMap<u32, (u32, u64)>) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(stats.iter().filter(|(_, (pp, _))| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Compilers and builds running on the machine (rustc, cc1, ld, cargo, ...), which skew
/// timings on 2 CPUs; the `cargo bench` this benchmark runs under (an ancestor of this
/// process) does not count.
pub fn compilers_running() -> Vec<String> {
    let stats = all_stats();
    let mut ancestors = std::collections::BTreeSet::new();
    let mut pid = std::process::id();
    while let Some((ppid, _)) = stats.get(&pid) {
        if !ancestors.insert(pid) || *ppid == 0 {
            break;
        }
        pid = *ppid;
    }
    let mut out = Vec::new();
    for pid in stats.keys().filter(|p| !ancestors.contains(p)) {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if matches!(comm, "rustc" | "cc1" | "cc1plus" | "ld" | "cargo" | "clippy-driver") {
            out.push(comm.to_owned());
        }
    }
    out
}
