//! The map keys both BPF objects share (`struct dst` and `struct src` in
//! `bpf/common.h`): addresses as 16 bytes with IPv4 as `::ffff:a.b.c.d`, ports in
//! network order, so one key serves IPv4, IPv6 and v4-mapped sockets alike.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use aya::maps::MapError;
use aya::Pod;

use crate::loader::BpfError;

/// `struct dst`: an address, a port (0: every port of the address), padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DstKey {
    pub(crate) addr: [u8; 16],
    pub(crate) port: u16,
    pub(crate) pad: u16,
}

// SAFETY: repr(C), plain integers, no implicit padding (16 + 2 + 2 bytes).
unsafe impl Pod for DstKey {}

impl DstKey {
    pub(crate) fn new(ip: IpAddr, port: u16) -> Self {
        DstKey { addr: SrcKey::new(ip).addr, port: port.to_be(), pad: 0 }
    }

    pub(crate) fn of(addr: SocketAddr) -> Self {
        Self::new(addr.ip(), addr.port())
    }

    /// The address back (v4-mapped keys as IPv4).
    pub(crate) fn addr(&self) -> SocketAddr {
        let ip = Ipv6Addr::from(self.addr);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        SocketAddr::new(ip, u16::from_be(self.port))
    }
}

/// `struct src`: an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SrcKey {
    pub(crate) addr: [u8; 16],
}

// SAFETY: repr(C), a byte array, no padding.
unsafe impl Pod for SrcKey {}

impl SrcKey {
    pub(crate) fn new(ip: IpAddr) -> Self {
        let v6 = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        SrcKey { addr: v6.octets() }
    }
}

/// `Ok` for a removed entry and for one that was not there.
pub(crate) fn absent_is_ok(name: &'static str, result: Result<(), MapError>) -> Result<(), BpfError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(BpfError::Map { name, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn dst_key_is_v4_mapped_with_network_order_port() {
        assert_eq!(std::mem::size_of::<DstKey>(), 20);
        let k = DstKey::of("10.255.0.1:8080".parse().unwrap());
        assert_eq!(k.addr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 255, 0, 1]);
        assert_eq!(k.port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(k.pad, 0);
        assert_eq!(k, DstKey::of("[::ffff:10.255.0.1]:8080".parse().unwrap()));
        assert_eq!(k.addr(), "10.255.0.1:8080".parse().unwrap());
    }

    #[test]
    fn every_port_is_port_zero() {
        let ip: IpAddr = "fd00:9::10".parse().unwrap();
        let k = DstKey::new(ip, 0);
        assert_eq!(k.port, 0);
        assert_eq!(k.addr, Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 0x10).octets());
        assert_ne!(k, DstKey::new(ip, 1));
        assert_eq!(k.addr(), SocketAddr::new(ip, 0));
    }

    #[test]
    fn src_key_matches_dst_key_address() {
        assert_eq!(std::mem::size_of::<SrcKey>(), 16);
        for ip in ["198.18.9.1", "fd00:9::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(SrcKey::new(ip).addr, DstKey::new(ip, 0).addr);
        }
        assert_eq!(SrcKey::new(IpAddr::V4(Ipv4Addr::new(198, 18, 9, 1))).addr[10..], [0xff, 0xff, 198, 18, 9, 1]);
    }
}
