//! Redirecting pod connections to the node proxy, and recovering where they were going.
//!
//! Owns: the lookup of an accepted socket's original destination
//! ([`original_dst`]), which answers the same way whether the connection was
//! redirected by an nftables/iptables `REDIRECT` rule or (with the redirect issue) by
//! the cgroup BPF programs, whose `getsockopt` hook serves `SO_ORIGINAL_DST` from a
//! BPF map. The BPF programs (`bpf/redirect.c`) and their loader ([`loader`]) live here too.
//! Does not own: any proxy logic.

pub mod inbound;
mod key;
pub mod loader;

pub use inbound::{InboundCounters, InboundGuard};
pub use loader::{cgroup2_mount, Attachment, BpfError, Counters, Options, ProgramStats, Redirector, Reuse};

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// `SO_ORIGINAL_DST` from `<linux/netfilter_ipv4.h>`.
const SO_ORIGINAL_DST: libc::c_int = 80;
/// `IP6T_SO_ORIGINAL_DST` from `<linux/netfilter_ipv6/ip6_tables.h>`.
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination an accepted, redirected connection was originally sent to.
///
/// Asks the IPv4 level first for an IPv4 (or v4-mapped, on a dual-stack listener)
/// connection and the IPv6 level first otherwise, then the other one: a pod's IPv6
/// socket may reach an IPv4 proxy address (the BPF hook answers its native IPv6
/// destination at the IPv6 level), and conntrack answers a v4-mapped connection at
/// the IPv4 level. Fails with `ENOENT` when the connection was not redirected (no
/// conntrack entry and no BPF record): the caller then uses the socket's local address.
pub fn original_dst(socket: &impl AsRawFd, local: SocketAddr) -> io::Result<SocketAddr> {
    let fd = socket.as_raw_fd();
    let v4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    type Lookup = fn(i32) -> io::Result<SocketAddr>;
    let (first, second): (Lookup, Lookup) = if v4 { (original_dst_v4, original_dst_v6) } else { (original_dst_v6, original_dst_v4) };
    first(fd).or_else(|e| second(fd).map_err(|_| e))
}

fn original_dst_v4(fd: i32) -> io::Result<SocketAddr> {
    let mut addr = MaybeUninit::<libc::sockaddr_in>::zeroed();
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, writable sockaddr_in of `len` bytes.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST, addr.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled it in (rc == 0).
    let addr = unsafe { addr.assume_init() };
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port))))
}

fn original_dst_v6(fd: i32) -> io::Result<SocketAddr> {
    let mut addr = MaybeUninit::<libc::sockaddr_in6>::zeroed();
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: as above, for sockaddr_in6.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_IPV6, IP6T_SO_ORIGINAL_DST, addr.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled in by the kernel.
    let addr = unsafe { addr.assume_init() };
    if i32::from(addr.sin6_family) != libc::AF_INET6 {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
    let dst = SocketAddrV6::new(ip, u16::from_be(addr.sin6_port), addr.sin6_flowinfo, addr.sin6_scope_id);
    // A v4-mapped destination is reported as IPv4, as the proxy's model expects.
    Ok(match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, dst.port())),
        None => SocketAddr::V6(dst),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_redirected_is_never_another_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // No REDIRECT rule and no BPF hook: ENOENT, or (when conntrack tracks the
        // connection without NAT) the address it was accepted on.
        match original_dst(&accepted, accepted.local_addr().unwrap()) {
            Ok(dst) => assert_eq!(dst, addr),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
        }
    }
}
