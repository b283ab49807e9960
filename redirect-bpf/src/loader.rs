//! Loads `bpf/redirect.c` (compiled by build.rs) with aya, attaches it to a cgroup v2
//! directory and pins its maps and links so the redirect outlives this process.
//!
//! The connect, sockops and getpeername hooks go on the pods' cgroup. The `getsockopt`
//! hook goes on the proxy's cgroup ([`Options::proxy_cgroup`]; by default the pods'
//! one): it runs for sockets of the cgroup it is attached to, and an accepted socket
//! belongs to the cgroup of its listener. A proxy outside the pods' cgroup is never
//! redirected itself; one inside it is recognised by its SO_MARK ([`Options::bypass_mark`]).
//!
//! A restarted proxy keeps the pinned attachment when it was made for the same
//! settings by the same build ([`Redirector::attach_or_reuse`]): connections keep being
//! redirected while it restarts, and the redirect set carries over.

use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SockOps};
use aya::{Ebpf, EbpfLoader, Pod};

use crate::key::{absent_is_ok, DstKey};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The programs, by C function name, in attach order.
const PROGRAMS: [&str; 6] = ["np_connect4", "np_connect6", "np_sockops", "np_getsockopt", "np_getpeername4", "np_getpeername6"];
/// The maps, pinned under `pin_dir` by these names.
const MAPS: [&str; 5] = ["redirect_set", "cookie_orig", "conn_orig", "counters", "meta"];

/// Why the redirect could not be set up, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading BPF programs needs CAP_BPF/CAP_SYS_ADMIN: run as root")]
    NotRoot,
    #[error("{0} is not a cgroup v2 directory: mount -t cgroup2 to find it")]
    NoCgroup2(PathBuf),
    #[error("{0} is not on a bpf filesystem: mount -t bpf bpf /sys/fs/bpf")]
    NoBpffs(PathBuf),
    #[error("{path} already holds pinned redirect objects: call Redirector::detach on it first")]
    AlreadyPinned { path: PathBuf },
    #[error("{path} holds no pinned redirect (nothing attached there)")]
    NotPinned { path: PathBuf },
    #[error("loading the BPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("BPF object has no program {0} (stale build?)")]
    MissingProgram(&'static str),
    #[error("BPF object has no map {0} (stale build?)")]
    MissingMap(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("link of {name}: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the redirect map lock was poisoned")]
    Poisoned,
}

/// Where cgroup v2 is mounted (the first `cgroup2` entry of /proc/self/mounts).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, ty) = (f.next()?, f.next()?, f.next()?);
        (ty == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// `struct meta` in redirect.c: what an attachment was made for.
#[repr(C)]
#[derive(Clone, Copy)]
struct Meta {
    object_hash: u64,
    pods_cgroup_id: u64,
    proxy_cgroup_id: u64,
    proxy: DstKey,
    bypass_mark: u32,
    pods_cgroup: [u8; 256],
    proxy_cgroup: [u8; 256],
}

// SAFETY: repr(C), plain integers and byte arrays, no implicit padding (24 + 20 + 4 + 512 bytes).
unsafe impl Pod for Meta {}

fn path_bytes(p: &Path) -> [u8; 256] {
    use std::os::unix::ffi::OsStrExt;
    let mut out = [0u8; 256];
    let b = p.as_os_str().as_bytes();
    let n = b.len().min(255);
    out[..n].copy_from_slice(&b[..n]);
    out
}

fn bytes_path(b: &[u8; 256]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    PathBuf::from(std::ffi::OsStr::from_bytes(&b[..n]))
}

/// FNV-1a of the BPF object: tells a pinned attachment of another build from ours.
fn object_hash() -> u64 {
    OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The cgroup id of a cgroup v2 directory (its inode number).
fn cgroup_id(path: &Path) -> Result<u64, BpfError> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.ino()).map_err(|source| BpfError::Io { what: "reading cgroup", path: path.to_path_buf(), source })
}

/// What a pinned attachment was made for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The pods' cgroup (connect, sockops, getpeername hooks).
    pub pods_cgroup: PathBuf,
    /// The proxy's cgroup (getsockopt hook).
    pub proxy_cgroup: PathBuf,
    /// Where redirected connections go.
    pub proxy: SocketAddr,
    pub bypass_mark: u32,
    /// Whether the programs come from this build of the BPF object.
    pub same_build: bool,
}

/// What [`Redirector::attach_or_reuse`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reuse {
    /// Nothing was pinned: attached now.
    Fresh,
    /// The pinned attachment matched and was kept (with its redirect set).
    Kept,
    /// A pinned attachment for other settings or another build was replaced; says why.
    Replaced(String),
}

/// Counter indexes (`enum counter` in redirect.c).
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
enum Counter {
    Redirected = 0,
    BypassedNotInSet = 1,
    BypassedOwnTraffic = 2,
    GetsockoptAnswered = 3,
    GetsockoptMissed = 4,
    BypassedNoProxyFamily = 5,
}

/// The BPF counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connects rewritten to the proxy.
    pub redirected: u64,
    /// TCP connects to a destination not in the redirect set.
    pub bypassed_not_in_set: u64,
    /// Connects in the set but carrying the proxy's SO_MARK.
    pub bypassed_own_traffic: u64,
    /// `SO_ORIGINAL_DST` answered from the BPF map.
    pub getsockopt_answered: u64,
    /// `SO_ORIGINAL_DST` asked for a connection the map does not know.
    pub getsockopt_missed: u64,
    /// Connects in the set whose socket family cannot reach the proxy (IPv4 socket, IPv6 proxy).
    pub bypassed_no_proxy_family: u64,
}

/// One attached program's run count and accumulated run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    /// The C function name (`np_connect4`, ...).
    pub name: &'static str,
    pub run_count: u64,
    pub run_time: Duration,
}

impl ProgramStats {
    /// Turns the kernel's BPF run-time statistics on for as long as the returned file
    /// descriptor lives (they cost two clock reads per program run, so they are off
    /// by default).
    pub fn enable() -> Result<OwnedFd, BpfError> {
        check_root()?;
        aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| BpfError::Io {
            what: "enabling BPF statistics (BPF_ENABLE_STATS) for",
            path: PathBuf::from("/proc/sys/kernel/bpf_stats_enabled"),
            source: e.io_error,
        })
    }
}

/// Options of [`Redirector::attach_with`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Sockets with this SO_MARK are never redirected (the proxy's own upstream
    /// connections). 0 disables the check.
    pub bypass_mark: u32,
    /// The cgroup the proxy runs in, for the `getsockopt` hook; `None`: the pods' cgroup.
    pub proxy_cgroup: Option<PathBuf>,
}

/// The loaded and attached redirect programs, or (after [`Redirector::open`]) the
/// pinned maps of an attachment another process made.
///
/// Dropping it leaves the redirect in place (links and maps are pinned); use
/// [`Redirector::detach`] to remove it.
pub struct Redirector {
    _ebpf: Option<Ebpf>,
    redirect_set: Mutex<HashMap<MapData, DstKey, u8>>,
    counters: PerCpuArray<MapData, u64>,
    meta: Array<MapData, Meta>,
    pin_dir: PathBuf,
}

impl std::fmt::Debug for Redirector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirector").field("pin_dir", &self.pin_dir).finish_non_exhaustive()
    }
}

fn statfs_type(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is NUL-terminated, `st` is a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled in by the kernel (rc == 0).
    #[allow(clippy::unnecessary_cast)]
    Ok(unsafe { st.assume_init() }.f_type as i64)
}

impl Redirector {
    /// Loads the programs, attaches them to `cgroup` and pins maps and links under
    /// `pin_dir` (created if missing; must be on bpffs). Connections from `cgroup`
    /// to addresses in the redirect set go to `proxy`.
    pub fn attach(cgroup: &Path, proxy: SocketAddr, pin_dir: &Path) -> Result<Redirector, BpfError> {
        Self::attach_with(cgroup, proxy, pin_dir, Options::default())
    }

    /// [`Redirector::attach`] with [`Options`].
    pub fn attach_with(cgroup: &Path, proxy: SocketAddr, pin_dir: &Path, options: Options) -> Result<Redirector, BpfError> {
        check_environment(cgroup, options.proxy_cgroup.as_deref(), pin_dir)?;
        if is_pinned(pin_dir) {
            return Err(BpfError::AlreadyPinned { path: pin_dir.to_path_buf() });
        }
        fs::create_dir_all(pin_dir).map_err(|source| BpfError::Io { what: "creating", path: pin_dir.to_path_buf(), source })?;
        let proxy_cgroup = options.proxy_cgroup.clone().unwrap_or_else(|| cgroup.to_path_buf());

        let (ip4, ip6, family): (u32, [u32; 4], u32) = match proxy.ip() {
            IpAddr::V4(v4) => (u32::from(v4).to_be(), [0; 4], 1),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (u32::from(v4).to_be(), [0; 4], 1),
                None => {
                    let o = v6.octets();
                    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                    (0, [w(0), w(4), w(8), w(12)], 2)
                }
            },
        };
        let port = proxy.port().to_be();
        let result = Self::load_and_attach(cgroup, &proxy_cgroup, pin_dir, ip4, &ip6, port, family, options.bypass_mark).and_then(|mut r| {
            let meta = Meta {
                object_hash: object_hash(),
                pods_cgroup_id: cgroup_id(cgroup)?,
                proxy_cgroup_id: cgroup_id(&proxy_cgroup)?,
                proxy: DstKey::of(proxy),
                bypass_mark: options.bypass_mark,
                pods_cgroup: path_bytes(cgroup),
                proxy_cgroup: path_bytes(&proxy_cgroup),
            };
            r.meta.set(0, meta, 0).map_err(|source| BpfError::Map { name: "meta", source })?;
            Ok(r)
        });
        if result.is_err() {
            // Best effort: leave no half-pinned state behind.
            let _ = Self::detach(pin_dir);
        }
        result
    }

    /// Keeps the attachment pinned at `pin_dir` if it was made by this build for the
    /// same cgroups, proxy address and mark (a proxy restart: the redirect never
    /// stopped, and its set carries over); otherwise replaces it, or attaches afresh.
    pub fn attach_or_reuse(cgroup: &Path, proxy: SocketAddr, pin_dir: &Path, options: Options) -> Result<(Redirector, Reuse), BpfError> {
        check_environment(cgroup, options.proxy_cgroup.as_deref(), pin_dir)?;
        if !is_pinned(pin_dir) {
            return Ok((Self::attach_with(cgroup, proxy, pin_dir, options)?, Reuse::Fresh));
        }
        let proxy_cgroup = options.proxy_cgroup.clone().unwrap_or_else(|| cgroup.to_path_buf());
        let why = match Self::open(pin_dir) {
            Ok(pinned) => match pinned.read_meta() {
                Ok(m) if m.object_hash != object_hash() => "it was attached by another build of node-proxy".to_owned(),
                Ok(m) if m.pods_cgroup_id != cgroup_id(cgroup)? || m.proxy_cgroup_id != cgroup_id(&proxy_cgroup)? => {
                    format!("it was attached to cgroups {} and {}", bytes_path(&m.pods_cgroup).display(), bytes_path(&m.proxy_cgroup).display())
                }
                Ok(m) if m.proxy != DstKey::of(proxy) => format!("it redirects to {}", m.proxy.addr()),
                Ok(m) if m.bypass_mark != options.bypass_mark => format!("it bypasses mark {}", m.bypass_mark),
                Ok(_) => return Ok((pinned, Reuse::Kept)),
                Err(e) => format!("its settings cannot be read ({e})"),
            },
            Err(e) => format!("it cannot be opened ({e})"),
        };
        Self::detach(pin_dir)?;
        Ok((Self::attach_with(cgroup, proxy, pin_dir, options)?, Reuse::Replaced(why)))
    }

    /// Opens the pinned maps of the attachment at `pin_dir` (made by this or another
    /// process), to read its state or change its redirect set.
    pub fn open(pin_dir: &Path) -> Result<Redirector, BpfError> {
        check_root()?;
        if !is_pinned(pin_dir) {
            return Err(BpfError::NotPinned { path: pin_dir.to_path_buf() });
        }
        fn pinned(pin_dir: &Path, name: &'static str) -> Result<aya::maps::Map, BpfError> {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path).map_err(|source| BpfError::Map { name, source })?;
            aya::maps::Map::from_map_data(data).map_err(|source| BpfError::Map { name, source })
        }
        let redirect_set = HashMap::try_from(pinned(pin_dir, "redirect_set")?).map_err(|source| BpfError::Map { name: "redirect_set", source })?;
        let counters = PerCpuArray::try_from(pinned(pin_dir, "counters")?).map_err(|source| BpfError::Map { name: "counters", source })?;
        let meta = Array::try_from(pinned(pin_dir, "meta")?).map_err(|source| BpfError::Map { name: "meta", source })?;
        Ok(Redirector { _ebpf: None, redirect_set: Mutex::new(redirect_set), counters, meta, pin_dir: pin_dir.to_path_buf() })
    }

    fn read_meta(&self) -> Result<Meta, BpfError> {
        self.meta.get(&0, 0).map_err(|source| BpfError::Map { name: "meta", source })
    }

    /// What this attachment was made for.
    pub fn attachment(&self) -> Result<Attachment, BpfError> {
        let m = self.read_meta()?;
        Ok(Attachment {
            pods_cgroup: bytes_path(&m.pods_cgroup),
            proxy_cgroup: bytes_path(&m.proxy_cgroup),
            proxy: m.proxy.addr(),
            bypass_mark: m.bypass_mark,
            same_build: m.object_hash == object_hash(),
        })
    }

    /// The redirect set (port 0: every port of the address), in no particular order.
    pub fn entries(&self) -> Result<Vec<SocketAddr>, BpfError> {
        let set = self.redirect_set.lock().map_err(|_| BpfError::Poisoned)?;
        set.keys().map(|k| k.map(|k| k.addr()).map_err(|source| BpfError::Map { name: "redirect_set", source })).collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn load_and_attach(
        cgroup: &Path,
        proxy_cgroup: &Path,
        pin_dir: &Path,
        ip4: u32,
        ip6: &[u32; 4],
        port: u16,
        family: u32,
        mark: u32,
    ) -> Result<Redirector, BpfError> {
        let mut ebpf = EbpfLoader::new()
            .override_global("proxy_ip4", &ip4, true)
            .override_global("proxy_ip6", &ip6[..], true)
            .override_global("proxy_port", &port, true)
            .override_global("proxy_family", &family, true)
            .override_global("bypass_mark", &mark, true)
            .load(OBJECT)
            .map_err(BpfError::Load)?;

        let cgroup_file = File::open(cgroup).map_err(|source| BpfError::Io { what: "opening cgroup", path: cgroup.to_path_buf(), source })?;
        let proxy_cgroup_file = File::open(proxy_cgroup).map_err(|source| BpfError::Io { what: "opening cgroup", path: proxy_cgroup.to_path_buf(), source })?;

        for name in MAPS {
            let map = ebpf.map(name).ok_or(BpfError::MissingMap(name))?;
            let path = pin_dir.join(name);
            map.pin(&path).map_err(|source| BpfError::Pin { path, source })?;
        }

        for name in PROGRAMS {
            let prog = ebpf.program_mut(name).ok_or(BpfError::MissingProgram(name))?;
            let perr = |source| BpfError::Program { name, source };
            let link: FdLink = match name {
                "np_sockops" => {
                    let p: &mut SockOps = prog.try_into().map_err(perr)?;
                    p.load().map_err(perr)?;
                    let id = p.attach(&cgroup_file, CgroupAttachMode::Single).map_err(perr)?;
                    p.take_link(id).map_err(perr)?.try_into().map_err(|source| BpfError::Link { name, source })?
                }
                "np_getsockopt" => {
                    // aya 0.14 cannot turn a CgroupSockoptLink into an FdLink to pin it:
                    // create and pin that link with the raw syscalls instead.
                    let p: &mut CgroupSockopt = prog.try_into().map_err(perr)?;
                    p.load().map_err(perr)?;
                    let prog_fd = p.fd().map_err(perr)?.as_fd().as_raw_fd();
                    let path = pin_dir.join(format!("link_{name}"));
                    raw::link_create_and_pin(prog_fd, proxy_cgroup_file.as_raw_fd(), raw::BPF_CGROUP_GETSOCKOPT, &path).map_err(|source| BpfError::Io {
                        what: "attaching np_getsockopt and pinning its link at",
                        path: path.clone(),
                        source,
                    })?;
                    tracing::debug!(program = name, cgroup = %proxy_cgroup.display(), "attached and pinned");
                    continue;
                }
                _ => {
                    let p: &mut CgroupSockAddr = prog.try_into().map_err(perr)?;
                    p.load().map_err(perr)?;
                    let id = p.attach(&cgroup_file, CgroupAttachMode::Single).map_err(perr)?;
                    p.take_link(id).map_err(perr)?.try_into().map_err(|source| BpfError::Link { name, source })?
                }
            };
            let path = pin_dir.join(format!("link_{name}"));
            link.pin(&path).map_err(|source| BpfError::Pin { path, source })?;
            tracing::debug!(program = name, cgroup = %cgroup.display(), "attached and pinned");
        }

        let set = ebpf.take_map("redirect_set").ok_or(BpfError::MissingMap("redirect_set"))?;
        let redirect_set = HashMap::try_from(set).map_err(|source| BpfError::Map { name: "redirect_set", source })?;
        let counters = ebpf.take_map("counters").ok_or(BpfError::MissingMap("counters"))?;
        let counters = PerCpuArray::try_from(counters).map_err(|source| BpfError::Map { name: "counters", source })?;
        let meta = ebpf.take_map("meta").ok_or(BpfError::MissingMap("meta"))?;
        let meta = Array::try_from(meta).map_err(|source| BpfError::Map { name: "meta", source })?;
        Ok(Redirector { _ebpf: Some(ebpf), redirect_set: Mutex::new(redirect_set), counters, meta, pin_dir: pin_dir.to_path_buf() })
    }

    /// Redirects connections to `addr` (a service VIP or an endpoint IP:port).
    pub fn add(&self, addr: SocketAddr) -> Result<(), BpfError> {
        let mut set = self.redirect_set.lock().map_err(|_| BpfError::Poisoned)?;
        set.insert(DstKey::of(addr), 1u8, 0).map_err(|source| BpfError::Map { name: "redirect_set", source })
    }

    /// Stops redirecting connections to `addr`. Removing an absent address is not an error.
    pub fn remove(&self, addr: SocketAddr) -> Result<(), BpfError> {
        let mut set = self.redirect_set.lock().map_err(|_| BpfError::Poisoned)?;
        absent_is_ok("redirect_set", set.remove(&DstKey::of(addr)))
    }

    /// The counters, summed over CPUs. A counter that cannot be read reads as 0.
    pub fn counters(&self) -> Counters {
        let get = |c: Counter| -> u64 {
            match self.counters.get(&(c as u32), 0) {
                Ok(values) => values.iter().fold(0u64, |a, v| a.wrapping_add(*v)),
                Err(e) => {
                    tracing::warn!(counter = ?c, error = %e, "reading BPF counter");
                    0
                }
            }
        };
        Counters {
            redirected: get(Counter::Redirected),
            bypassed_not_in_set: get(Counter::BypassedNotInSet),
            bypassed_own_traffic: get(Counter::BypassedOwnTraffic),
            getsockopt_answered: get(Counter::GetsockoptAnswered),
            getsockopt_missed: get(Counter::GetsockoptMissed),
            bypassed_no_proxy_family: get(Counter::BypassedNoProxyFamily),
        }
    }

    /// How often each attached program ran and for how long, from the kernel's
    /// per-program statistics. They count only while statistics are on
    /// ([`ProgramStats::enable`] or `sysctl kernel.bpf_stats_enabled=1`).
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>, BpfError> {
        let mut ids = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            let path = self.pin_dir.join(format!("link_{name}"));
            let link = FdLink::from(PinnedLink::from_pin(&path).map_err(|source| BpfError::Link { name, source })?);
            ids.push((name, link.info().map_err(|source| BpfError::Link { name, source })?.program_id()));
        }
        let mut out = Vec::with_capacity(ids.len());
        for info in aya::programs::loaded_programs() {
            // A program unloaded while we iterate is not ours to report.
            let Ok(info) = info else { continue };
            if let Some((name, _)) = ids.iter().find(|(_, id)| *id == info.id()) {
                out.push(ProgramStats { name, run_count: info.run_count(), run_time: info.run_time() });
            }
        }
        out.sort_by_key(|s| PROGRAMS.iter().position(|p| *p == s.name));
        Ok(out)
    }

    /// Where the maps and links are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Removes the pins under `pin_dir` and the directory itself. The programs stay
    /// attached until every process holding them (a live [`Redirector`]) drops them.
    /// A missing `pin_dir` is not an error.
    pub fn detach(pin_dir: &Path) -> Result<(), BpfError> {
        let names = PROGRAMS.iter().map(|p| format!("link_{p}")).chain(MAPS.iter().map(|m| m.to_string()));
        for name in names {
            let path = pin_dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(BpfError::Io { what: "removing pin", path, source }),
            }
        }
        match fs::remove_dir(pin_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BpfError::Io { what: "removing pin directory", path: pin_dir.to_path_buf(), source }),
        }
    }
}

/// Root, cgroup v2 directories and a bpffs for the pins, or an error saying what to do.
pub(crate) fn check_environment(cgroup: &Path, proxy_cgroup: Option<&Path>, pin_dir: &Path) -> Result<(), BpfError> {
    check_root()?;
    for c in std::iter::once(cgroup).chain(proxy_cgroup) {
        match statfs_type(c) {
            Ok(CGROUP2_SUPER_MAGIC) => {}
            _ => return Err(BpfError::NoCgroup2(c.to_path_buf())),
        }
    }
    let pin_parent = pin_dir.parent().unwrap_or(pin_dir);
    match statfs_type(pin_parent) {
        Ok(BPF_FS_MAGIC) => Ok(()),
        _ => Err(BpfError::NoBpffs(pin_parent.to_path_buf())),
    }
}

/// `Err(NotRoot)` unless root.
pub(crate) fn check_root() -> Result<(), BpfError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BpfError::NotRoot);
    }
    Ok(())
}

/// Whether `pin_dir` holds anything.
pub(crate) fn is_pinned(pin_dir: &Path) -> bool {
    fs::read_dir(pin_dir).map(|mut d| d.next().is_some()).unwrap_or(false)
}

/// The two `bpf(2)` commands aya 0.14 does not expose for cgroup sockopt links.
mod raw {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{FromRawFd, OwnedFd, RawFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_CREATE: libc::c_long = 28;
    /// `enum bpf_attach_type` in `<linux/bpf.h>`.
    pub const BPF_CGROUP_GETSOCKOPT: u32 = 21;

    fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix of the given size.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr) as libc::c_uint) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc)
    }

    /// `BPF_LINK_CREATE` (prog_fd, target_fd, attach_type, flags = 0) then `BPF_OBJ_PIN`.
    pub fn link_create_and_pin(prog_fd: RawFd, cgroup_fd: RawFd, attach_type: u32, path: &Path) -> io::Result<()> {
        let mut attr = [0u64; 8];
        attr[0] = (prog_fd as u32 as u64) | ((cgroup_fd as u32 as u64) << 32);
        attr[1] = attach_type as u64;
        let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
        let fd = RawFd::try_from(fd).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // SAFETY: the kernel just returned this fd to us; OwnedFd closes it.
        let link = unsafe { OwnedFd::from_raw_fd(fd) };
        let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut attr = [0u64; 8];
        attr[0] = cpath.as_ptr() as u64;
        attr[1] = std::os::fd::AsRawFd::as_raw_fd(&link) as u32 as u64;
        bpf(BPF_OBJ_PIN, &mut attr)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let proxy: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let tmp = std::env::temp_dir();
        let err = Redirector::attach(&tmp, proxy, &tmp.join("np-pins")).unwrap_err();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(err.to_string().contains("run as root"), "{err}");
            return;
        }
        assert!(err.to_string().contains("mount -t cgroup2 to find it"), "{err}");
        if let Some(root) = cgroup2_mount() {
            let err = Redirector::attach(&root, proxy, &tmp.join("np-not-bpffs").join("pins")).unwrap_err();
            assert!(err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"), "{err}");
        }
    }
}
