//! Sending pods' connections to this proxy, and only those that need it.
//!
//! Owns: choosing the mechanism — the eBPF programs of `redirect-bpf` attached to the
//! pods' cgroup, or nftables rules as the fallback — starting it, and keeping the
//! kernel's copy of the redirect set equal to [`set::RedirectSet`] of the live
//! configuration by writing only the differences, as soon as a snapshot or workload
//! view is published; and the status shown on the admin port (`/redirect`).
//! Does not own: the BPF programs and maps (`redirect-bpf`), what needs the proxy
//! ([`set`]), accepting redirected connections (`listener`, through `SO_ORIGINAL_DST`).

pub mod inbound_capture;
pub mod nftables;
pub mod set;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redirect_bpf::{BpfError, Options, Redirector, Reuse};
use serde_json::{json, Value};

use crate::snapshot::Live;
use crate::xds::workload::LiveWorkloads;
use set::RedirectSet;

/// Which mechanism redirects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// eBPF, or nftables when eBPF cannot load.
    Auto,
    Bpf,
    Nftables,
}

/// How `node-proxy run` redirects (absent: it does not).
#[derive(Clone, Debug)]
pub struct RedirectSettings {
    pub mode: Mode,
    /// The pods' parent cgroup (absolute, or relative to the cgroup v2 mount).
    pub pods_cgroup: Option<PathBuf>,
    /// Where redirected connections go: the node's address (as pods reach it) and the
    /// outbound listener's port.
    pub target: SocketAddr,
    /// Where the BPF maps and links are pinned (on bpffs).
    pub pin_dir: PathBuf,
    /// The SO_MARK on the proxy's own connections (never redirected).
    pub bypass_mark: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("eBPF redirect needs --redirect-cgroup: the pods' parent cgroup under the cgroup v2 mount (mount -t cgroup2 to find it)")]
    NoCgroup,
    #[error("no cgroup v2 mount: mount -t cgroup2 none /sys/fs/cgroup (or use --redirect nftables)")]
    NoCgroup2Mount,
    #[error("cannot tell this process's cgroup v2 from /proc/self/cgroup: {0}")]
    OwnCgroup(String),
    #[error(
        "node-proxy runs in cgroup {own}, inside --redirect-cgroup {pods}: its own connections would come back to it; run it in another cgroup, or set --upstream-mark"
    )]
    ProxyInsidePods { own: PathBuf, pods: PathBuf },
    #[error("eBPF redirect: {0}")]
    Bpf(#[from] BpfError),
    #[error("nftables redirect: {0}")]
    Nftables(String),
}

enum Backend {
    Bpf(Box<Redirector>),
    Nftables(nftables::Nftables),
}

/// The running redirect: its mechanism and the set the kernel holds.
pub struct Redirect {
    backend: Backend,
    settings: RedirectSettings,
    /// What the kernel holds now.
    current: BTreeSet<SocketAddr>,
    skipped_prefixes: BTreeSet<ipnet::IpNet>,
    last_error: Option<String>,
    /// Snapshot and workload-view versions of the last apply.
    applied: (u64, u64),
}

impl Redirect {
    /// Starts the mechanism `settings` asks for (in `Auto`, nftables when eBPF fails),
    /// with a log line that says which one runs.
    pub fn start(settings: RedirectSettings) -> Result<Redirect, RedirectError> {
        let bpf = match settings.mode {
            Mode::Nftables => None,
            Mode::Bpf => Some(start_bpf(&settings)?),
            Mode::Auto => match start_bpf(&settings) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "REDIRECT MODE: nftables fallback, because the eBPF redirect could not start; pods' connections are redirected by nftables REDIRECT rules in this network namespace"
                    );
                    None
                }
            },
        };
        let (backend, current) = match bpf {
            Some((redirector, current)) => (Backend::Bpf(Box::new(redirector)), current),
            None => {
                let nft = nftables::Nftables::start(settings.target.port()).map_err(RedirectError::Nftables)?;
                if settings.mode == Mode::Nftables {
                    tracing::warn!(
                        port = settings.target.port(),
                        table = nftables::TABLE,
                        "REDIRECT MODE: nftables (by flag); pods' connections are redirected by nftables REDIRECT rules in this network namespace"
                    );
                }
                (Backend::Nftables(nft), BTreeSet::new())
            }
        };
        Ok(Redirect { backend, settings, current, skipped_prefixes: BTreeSet::new(), last_error: None, applied: (0, 0) })
    }

    pub fn mode(&self) -> &'static str {
        match self.backend {
            Backend::Bpf(_) => "ebpf",
            Backend::Nftables(_) => "nftables",
        }
    }

    /// Makes the kernel's set equal to `desired`: additions first (a destination never
    /// bypasses while it moves), then removals.
    pub fn apply(&mut self, desired: RedirectSet) {
        let add: Vec<SocketAddr> = desired.destinations.difference(&self.current).copied().collect();
        let remove: Vec<SocketAddr> = self.current.difference(&desired.destinations).copied().collect();
        for prefix in desired.skipped_prefixes.difference(&self.skipped_prefixes) {
            tracing::warn!(%prefix, "a filter chain matches destination prefix {prefix}: the redirect set holds single addresses, so connections to it are not redirected");
        }
        self.skipped_prefixes = desired.skipped_prefixes;
        if add.is_empty() && remove.is_empty() {
            return;
        }
        let mut errors = Vec::new();
        match &self.backend {
            Backend::Bpf(r) => {
                for a in &add {
                    match r.add(*a) {
                        Ok(()) => {
                            self.current.insert(*a);
                        }
                        Err(e) => errors.push(format!("adding {a}: {e}")),
                    }
                }
                for a in &remove {
                    match r.remove(*a) {
                        Ok(()) => {
                            self.current.remove(a);
                        }
                        Err(e) => errors.push(format!("removing {a}: {e}")),
                    }
                }
            }
            Backend::Nftables(n) => match n.apply(&add, &remove) {
                Ok(()) => {
                    self.current.extend(&add);
                    for a in &remove {
                        self.current.remove(a);
                    }
                }
                Err(e) => errors.push(e),
            },
        }
        tracing::info!(added = add.len(), removed = remove.len(), destinations = self.current.len(), mode = self.mode(), "redirect set updated");
        tracing::debug!(?add, ?remove, "redirect set changes");
        self.last_error = (!errors.is_empty()).then(|| {
            let shown = errors.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
            tracing::error!(errors = errors.len(), "redirect set not fully written: {shown}");
            shown
        });
    }

    /// `/redirect` on the admin port.
    pub fn status(&self) -> Value {
        let counters = match &self.backend {
            Backend::Bpf(r) => {
                let c = r.counters();
                json!({
                    "redirected": c.redirected,
                    "bypassed_not_in_set": c.bypassed_not_in_set,
                    "bypassed_own_traffic": c.bypassed_own_traffic,
                    "bypassed_no_proxy_family": c.bypassed_no_proxy_family,
                    "getsockopt_answered": c.getsockopt_answered,
                    "getsockopt_missed": c.getsockopt_missed,
                })
            }
            Backend::Nftables(_) => Value::Null,
        };
        json!({
            "mode": self.mode(),
            "target": self.settings.target.to_string(),
            "pods_cgroup": self.settings.pods_cgroup.as_ref().map(|p| p.display().to_string()),
            "pin_dir": matches!(self.backend, Backend::Bpf(_)).then(|| self.settings.pin_dir.display().to_string()),
            "destinations": self.current.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "skipped_prefixes": self.skipped_prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "applied": { "snapshot": self.applied.0, "workloads": self.applied.1 },
            "last_error": self.last_error,
            "counters": counters,
        })
    }
}

impl Redirect {
    /// Whether the eBPF programs redirect (not the nftables fallback).
    pub fn is_bpf(&self) -> bool {
        matches!(self.backend, Backend::Bpf(_))
    }

    /// The kernel's STRICT enforcement for the same pods (`redirect_bpf::InboundGuard`),
    /// pinned beside the redirect ([`inbound_pin_dir`]). Attached fresh: a guard left
    /// by an earlier process is replaced, as its entries are not known here; the
    /// workload view refills it.
    pub fn start_inbound_guard(&self) -> Result<redirect_bpf::InboundGuard, RedirectError> {
        let mount = redirect_bpf::cgroup2_mount().ok_or(RedirectError::NoCgroup2Mount)?;
        let pods = self.settings.pods_cgroup.as_ref().ok_or(RedirectError::NoCgroup)?;
        let pods = if pods.is_absolute() { pods.clone() } else { mount.join(pods) };
        let dir = inbound_pin_dir(&self.settings.pin_dir);
        redirect_bpf::InboundGuard::detach(&dir)?;
        let guard = redirect_bpf::InboundGuard::attach(&pods, &dir)?;
        tracing::info!(pods_cgroup = %pods.display(), pin_dir = %dir.display(), "STRICT mTLS enforcement: plaintext to STRICT pods is dropped unless it comes from this proxy");
        Ok(guard)
    }
}

/// Where the inbound guard pins: `<pin dir>-inbound`, beside the redirect's.
pub fn inbound_pin_dir(pin_dir: &Path) -> PathBuf {
    let mut name = pin_dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-inbound");
    pin_dir.with_file_name(name)
}

/// Attaches (or keeps, after a restart) the BPF programs; returns the set they hold.
fn start_bpf(settings: &RedirectSettings) -> Result<(Redirector, BTreeSet<SocketAddr>), RedirectError> {
    let mount = redirect_bpf::cgroup2_mount().ok_or(RedirectError::NoCgroup2Mount)?;
    let pods = settings.pods_cgroup.as_ref().ok_or(RedirectError::NoCgroup)?;
    let pods = if pods.is_absolute() { pods.clone() } else { mount.join(pods) };
    let own = own_cgroup(&mount)?;
    if own.starts_with(&pods) {
        if settings.bypass_mark.is_none() {
            return Err(RedirectError::ProxyInsidePods { own, pods });
        }
        tracing::warn!(own = %own.display(), pods = %pods.display(), "node-proxy runs inside the pods' cgroup: its own connections are told apart by their SO_MARK only");
    }
    let options = Options { bypass_mark: settings.bypass_mark.unwrap_or(0), proxy_cgroup: Some(own.clone()) };
    let (redirector, reuse) = Redirector::attach_or_reuse(&pods, settings.target, &settings.pin_dir, options)?;
    let current: BTreeSet<SocketAddr> = match reuse {
        Reuse::Kept => redirector.entries()?.into_iter().collect(),
        Reuse::Fresh | Reuse::Replaced(_) => BTreeSet::new(),
    };
    let how = match &reuse {
        Reuse::Fresh => "attached".to_owned(),
        Reuse::Kept => format!("kept the pinned attachment and its {} destinations", current.len()),
        Reuse::Replaced(why) => format!("replaced the pinned attachment ({why})"),
    };
    tracing::info!(
        pods_cgroup = %pods.display(),
        proxy_cgroup = %own.display(),
        target = %settings.target,
        pin_dir = %settings.pin_dir.display(),
        "REDIRECT MODE: eBPF (cgroup connect/sockops/getsockopt/getpeername programs); {how}"
    );
    Ok((redirector, current))
}

/// This process's cgroup v2 directory (`0::/path` in /proc/self/cgroup).
fn own_cgroup(mount: &Path) -> Result<PathBuf, RedirectError> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| RedirectError::OwnCgroup(e.to_string()))?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::")).ok_or_else(|| RedirectError::OwnCgroup("no cgroup v2 (0::) line".to_owned()))?;
    Ok(mount.join(path.trim().trim_start_matches('/')))
}

/// The redirect, shared by its updating task and the admin port.
pub type Shared = Arc<Mutex<Redirect>>;

/// Keeps the kernel's redirect set equal to the live configuration's, from when
/// `ready` resolves (the configuration is loaded: a restarted proxy keeps the pinned
/// set until then) until the process exits.
pub async fn run(redirect: Shared, live: Arc<Live>, workloads: Arc<LiveWorkloads>, ready: impl std::future::Future<Output = ()>) {
    let mut snapshots = live.changes();
    let mut views = workloads.changes();
    ready.await;
    loop {
        snapshots.borrow_and_update();
        views.borrow_and_update();
        let (snapshot, view) = (live.load(), workloads.load());
        let (target, started) = {
            let r = redirect.lock().unwrap_or_else(|p| p.into_inner());
            (r.settings.target, std::time::Instant::now())
        };
        let desired = RedirectSet::compute(&snapshot, &view.model, target);
        {
            let mut r = redirect.lock().unwrap_or_else(|p| p.into_inner());
            r.apply(desired);
            r.applied = (snapshot.version, view.version);
        }
        tracing::trace!(elapsed = ?started.elapsed(), "redirect set computed and applied");
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { return },
            r = views.changed() => if r.is_err() { return },
        }
    }
}
