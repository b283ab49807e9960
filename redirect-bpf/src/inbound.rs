//! Inbound STRICT enforcement: plaintext TCP to a pod whose policy requires mTLS is
//! dropped unless it comes from the node proxy.
//!
//! Owns: loading `bpf/inbound.c` (a `cgroup_skb/ingress` program, compiled by build.rs),
//! attaching it to the cgroup that holds the pod cgroups with a pinned link, the pinned
//! maps `strict` (destination IP, or IP:port, to a mode) and `proxy_sources` (the node
//! proxy's own addresses), reopening them from a restarted process ([`InboundGuard::open`]),
//! and removing the pins ([`InboundGuard::detach`]).
//!
//! Does not own: deciding what is STRICT. That comes from Istio's PeerAuthentication
//! (issue 5, identity): its mesh-, namespace- and workload-level `mtls.mode` gives an
//! IP-wide entry per local pod ([`InboundGuard::set_strict`] with `port: None`), and its
//! `portLevelMtls` gives port entries that beat the IP-wide one (`strict: false` for a
//! PERMISSIVE or DISABLE port of a STRICT workload, `true` for a STRICT port of a
//! PERMISSIVE one). Until that issue lands nothing fills `strict`, and an empty map
//! drops nothing. Nor does it own the proxy's source addresses: the runtime calls
//! [`InboundGuard::allow_source`] with the addresses it connects to pods from.
//!
//! The program sees the packets of connections to the pod's sockets, SYN to a listener
//! included, so a dropped SYN is a connect that times out. Only the fixed IPv6 header is
//! parsed: IPv6 packets with extension headers before TCP pass (counted in
//! [`InboundCounters::passed_not_tcp`]).

use std::fs::{self, File};
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::key::{absent_is_ok, DstKey, SrcKey};
use crate::loader::{check_environment, check_root, is_pinned, BpfError};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/inbound.bpf.o"));

/// The program, by C function name.
const PROGRAM: &str = "np_inbound";
/// Its link, pinned under `pin_dir` by this name.
const LINK_PIN: &str = "link_np_inbound";
/// The maps, pinned under `pin_dir` by these names.
const MAPS: [&str; 3] = ["strict", "proxy_sources", "counters"];

/// `mode` values of the `strict` map.
const MODE_NOT_STRICT: u8 = 0;
const MODE_STRICT: u8 = 1;

/// Counter indexes (`enum counter` in inbound.c).
#[derive(Clone, Copy, Debug)]
#[repr(u32)]
enum Counter {
    PassedNotTcp = 0,
    PassedNotStrict = 1,
    AllowedFromProxy = 2,
    DroppedPlaintext = 3,
    PassedSelf = 4,
}

/// The inbound counters, in packets, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundCounters {
    /// Not TCP, or not parsed (IPv6 with extension headers, a later IPv4 fragment).
    pub passed_not_tcp: u64,
    /// TCP to a destination with no entry, or with a port-level "not strict" override.
    pub passed_not_strict: u64,
    /// TCP to a STRICT destination from one of the proxy's addresses.
    pub allowed_from_proxy: u64,
    /// TCP to a STRICT destination from any other address: dropped.
    pub dropped_plaintext: u64,
    /// TCP from a pod to its own address (never leaves the pod): passed.
    pub passed_self: u64,
}

/// The attached inbound program and its pinned maps.
///
/// Dropping it leaves the program attached and the maps in place (link and maps are
/// pinned); use [`InboundGuard::detach`] to remove them.
pub struct InboundGuard {
    _ebpf: Option<Ebpf>,
    strict: Mutex<HashMap<MapData, DstKey, u8>>,
    proxy_sources: Mutex<HashMap<MapData, SrcKey, u8>>,
    counters: PerCpuArray<MapData, u64>,
    pin_dir: PathBuf,
}

impl std::fmt::Debug for InboundGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundGuard").field("pin_dir", &self.pin_dir).finish_non_exhaustive()
    }
}

impl InboundGuard {
    /// Loads the program, attaches it to `pods_cgroup` (the parent of the pod cgroups:
    /// it applies to every socket created in a descendant) and pins its link and maps
    /// under `pin_dir` (created if missing; its parent must be on bpffs).
    ///
    /// Attached with nothing in `strict`, it drops nothing.
    pub fn attach(pods_cgroup: &Path, pin_dir: &Path) -> Result<InboundGuard, BpfError> {
        check_environment(pods_cgroup, None, pin_dir)?;
        if is_pinned(pin_dir) {
            // Not BpfError::AlreadyPinned: its message sends the user to Redirector::detach.
            return Err(BpfError::Io {
                what: "already attached (InboundGuard::open reuses it, InboundGuard::detach removes it): pins in",
                path: pin_dir.to_path_buf(),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        fs::create_dir_all(pin_dir).map_err(|source| BpfError::Io { what: "creating", path: pin_dir.to_path_buf(), source })?;

        let result = Self::load_and_attach(pods_cgroup, pin_dir);
        if result.is_err() {
            // Best effort: leave no half-pinned state behind.
            let _ = Self::detach(pin_dir);
        }
        result
    }

    fn load_and_attach(pods_cgroup: &Path, pin_dir: &Path) -> Result<InboundGuard, BpfError> {
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(BpfError::Load)?;
        let cgroup_file = File::open(pods_cgroup).map_err(|source| BpfError::Io { what: "opening cgroup", path: pods_cgroup.to_path_buf(), source })?;

        for name in MAPS {
            let map = ebpf.map(name).ok_or(BpfError::MissingMap(name))?;
            let path = pin_dir.join(name);
            map.pin(&path).map_err(|source| BpfError::Pin { path, source })?;
        }

        let name = PROGRAM;
        let perr = |source| BpfError::Program { name, source };
        let prog: &mut CgroupSkb = ebpf.program_mut(name).ok_or(BpfError::MissingProgram(name))?.try_into().map_err(perr)?;
        prog.load().map_err(perr)?;
        let id = prog.attach(&cgroup_file, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single).map_err(perr)?;
        let link: FdLink = prog.take_link(id).map_err(perr)?.try_into().map_err(|source| BpfError::Link { name, source })?;
        let path = pin_dir.join(LINK_PIN);
        link.pin(&path).map_err(|source| BpfError::Pin { path, source })?;
        tracing::debug!(program = name, cgroup = %pods_cgroup.display(), "attached and pinned");

        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(BpfError::MissingMap(name));
        let (strict, proxy_sources, counters) = (take("strict")?, take("proxy_sources")?, take("counters")?);
        let mut guard = Self::from_maps(strict, proxy_sources, counters, pin_dir)?;
        guard._ebpf = Some(ebpf);
        Ok(guard)
    }

    /// Reopens the pinned maps of an attachment made by [`InboundGuard::attach`], in
    /// this or an earlier process: a restarted proxy keeps the program and its state,
    /// and updates them through the returned guard.
    pub fn open(pin_dir: &Path) -> Result<InboundGuard, BpfError> {
        check_root()?;
        let link = pin_dir.join(LINK_PIN);
        if !link.exists() {
            return Err(BpfError::Io {
                what: "no inbound program is attached (call InboundGuard::attach first): missing",
                path: link,
                source: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        let pinned = |name: &'static str| -> Result<Map, BpfError> {
            let data = MapData::from_pin(pin_dir.join(name)).map_err(|source| BpfError::Map { name, source })?;
            Map::from_map_data(data).map_err(|source| BpfError::Map { name, source })
        };
        Self::from_maps(pinned("strict")?, pinned("proxy_sources")?, pinned("counters")?, pin_dir)
    }

    fn from_maps(strict: Map, proxy_sources: Map, counters: Map, pin_dir: &Path) -> Result<InboundGuard, BpfError> {
        let strict = HashMap::try_from(strict).map_err(|source| BpfError::Map { name: "strict", source })?;
        let proxy_sources = HashMap::try_from(proxy_sources).map_err(|source| BpfError::Map { name: "proxy_sources", source })?;
        let counters = PerCpuArray::try_from(counters).map_err(|source| BpfError::Map { name: "counters", source })?;
        Ok(InboundGuard { _ebpf: None, strict: Mutex::new(strict), proxy_sources: Mutex::new(proxy_sources), counters, pin_dir: pin_dir.to_path_buf() })
    }

    /// Sets the mode of `ip` (every port, `port: None`) or of `ip:port`. A port entry
    /// beats the IP-wide one: `set_strict(ip, None, true)` with
    /// `set_strict(ip, Some(p), false)` leaves port `p` open to plaintext. `Some(0)` is
    /// the IP-wide entry.
    pub fn set_strict(&self, ip: IpAddr, port: Option<u16>, strict: bool) -> Result<(), BpfError> {
        let mode = if strict { MODE_STRICT } else { MODE_NOT_STRICT };
        let mut map = self.strict.lock().map_err(|_| BpfError::Poisoned)?;
        map.insert(DstKey::new(ip, port.unwrap_or(0)), mode, 0).map_err(|source| BpfError::Map { name: "strict", source })
    }

    /// Removes the entry of `ip` (`port: None`) or of `ip:port`, whichever mode it had.
    /// Removing an absent entry is not an error.
    pub fn clear(&self, ip: IpAddr, port: Option<u16>) -> Result<(), BpfError> {
        let mut map = self.strict.lock().map_err(|_| BpfError::Poisoned)?;
        absent_is_ok("strict", map.remove(&DstKey::new(ip, port.unwrap_or(0))))
    }

    /// Lets packets from `ip` (an address the node proxy connects to pods from) reach
    /// STRICT destinations.
    pub fn allow_source(&self, ip: IpAddr) -> Result<(), BpfError> {
        let mut map = self.proxy_sources.lock().map_err(|_| BpfError::Poisoned)?;
        map.insert(SrcKey::new(ip), 1u8, 0).map_err(|source| BpfError::Map { name: "proxy_sources", source })
    }

    /// Undoes [`InboundGuard::allow_source`]. Removing an absent address is not an error.
    pub fn disallow_source(&self, ip: IpAddr) -> Result<(), BpfError> {
        let mut map = self.proxy_sources.lock().map_err(|_| BpfError::Poisoned)?;
        absent_is_ok("proxy_sources", map.remove(&SrcKey::new(ip)))
    }

    /// The counters, summed over CPUs. A counter that cannot be read reads as 0.
    pub fn counters(&self) -> InboundCounters {
        let get = |c: Counter| -> u64 {
            match self.counters.get(&(c as u32), 0) {
                Ok(values) => values.iter().fold(0u64, |a, v| a.wrapping_add(*v)),
                Err(e) => {
                    tracing::warn!(counter = ?c, error = %e, "reading inbound BPF counter");
                    0
                }
            }
        };
        InboundCounters {
            passed_not_tcp: get(Counter::PassedNotTcp),
            passed_not_strict: get(Counter::PassedNotStrict),
            allowed_from_proxy: get(Counter::AllowedFromProxy),
            dropped_plaintext: get(Counter::DroppedPlaintext),
            passed_self: get(Counter::PassedSelf),
        }
    }

    /// Where the link and maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Removes the pins under `pin_dir` and the directory itself. Removing the link's
    /// pin detaches the program (no process holds the link), shortly after this returns:
    /// the kernel frees the link asynchronously (after an RCU grace period), so a packet
    /// in the next few milliseconds may still be dropped. The maps live on while a guard
    /// holds them. A missing `pin_dir` is not an error.
    pub fn detach(pin_dir: &Path) -> Result<(), BpfError> {
        for name in std::iter::once(LINK_PIN).chain(MAPS) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do() {
        let tmp = std::env::temp_dir();
        let err = InboundGuard::attach(&tmp, &tmp.join("np-inbound-pins")).unwrap_err();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(err.to_string().contains("run as root"), "{err}");
            return;
        }
        assert!(err.to_string().contains("mount -t cgroup2 to find it"), "{err}");
        if let Some(root) = crate::cgroup2_mount() {
            let err = InboundGuard::attach(&root, &tmp.join("np-inbound-not-bpffs").join("pins")).unwrap_err();
            assert!(err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"), "{err}");
        }
        let err = InboundGuard::open(&tmp.join("np-inbound-never-attached")).unwrap_err();
        assert!(err.to_string().contains("call InboundGuard::attach first"), "{err}");
    }
}
