//! Telling the segment that a virtual address moved: gratuitous ARP for IPv4, unsolicited
//! neighbour advertisements for IPv6. The kernel sends neither when an address is added,
//! so neighbours would keep the old owner's MAC until their cache entry expires.
//!
//! The frames are built here (pure, tested); sending needs a packet socket for ARP and a
//! raw ICMPv6 socket for NA.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    self, sockopt, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrIn6, SockaddrLike,
};

use crate::HaError;

/// The times after a takeover at which the announcements go out (ms): the first at once,
/// two repeats for neighbours that missed one.
pub const ANNOUNCE_AT_MS: [u64; 3] = [0, 50, 500];

const ETH_P_ARP: u16 = 0x0806;

/// A gratuitous ARP request (RFC 5227 §3, "ARP Announcement"): sender and target protocol
/// address both `ip`, target hardware address zero. 28 bytes, the Ethernet header is
/// added by the kernel.
pub fn garp(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    // target hardware address stays zero
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// An unsolicited neighbour advertisement (RFC 4861 §7.2.6) for `target`, with the
/// Override and Router flags and the target link-layer address option. The checksum is
/// left zero: the kernel fills it in for raw ICMPv6 sockets.
pub fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 136; // neighbour advertisement
    p[1] = 0;
    // flags: R (router: we forward) and O (override); not S (nobody asked).
    p[4] = 0x80 | 0x20;
    p[8..24].copy_from_slice(&target.octets());
    p[24] = 2; // option: target link-layer address
    p[25] = 1; // length in units of 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

/// Builds a `sockaddr_ll` for `ifindex` with the broadcast (or, for IPv6, the all-nodes
/// multicast) destination.
#[allow(unsafe_code)]
fn link_addr(ifindex: u32, protocol: u16, dst: [u8; 6]) -> Option<LinkAddr> {
    let mut sll = nix::libc::sockaddr_ll {
        sll_family: nix::libc::AF_PACKET as u16,
        sll_protocol: protocol.to_be(),
        sll_ifindex: i32::try_from(ifindex).ok()?,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: [0; 8],
    };
    sll.sll_addr[..6].copy_from_slice(&dst);
    let len = u32::try_from(std::mem::size_of::<nix::libc::sockaddr_ll>()).ok()?;
    // SAFETY: `sll` is a fully initialised `sockaddr_ll` that lives across the call, and
    // `len` is its exact size; `from_raw` only reads that many bytes and checks the family.
    unsafe { LinkAddr::from_raw(std::ptr::addr_of!(sll).cast(), Some(len)) }
}

/// Sends the announcements for one address on one interface.
#[derive(Debug)]
pub struct Announcer {
    packet: OwnedFd,
    icmp6: OwnedFd,
}

impl Announcer {
    pub fn open() -> Result<Announcer, HaError> {
        let e = |what: &'static str| {
            move |e: nix::Error| HaError::Socket {
                what,
                source: e.into(),
            }
        };
        let packet = socket::socket(
            AddressFamily::Packet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(e("packet socket"))?;
        let icmp6 = socket::socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::IcmpV6,
        )
        .map_err(e("ICMPv6 socket"))?;
        socket::setsockopt(&icmp6, sockopt::Ipv6MulticastHops, &255).map_err(e("hop limit"))?;
        Ok(Announcer { packet, icmp6 })
    }

    /// One gratuitous ARP on `ifindex`.
    pub fn arp(&self, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) -> Result<(), HaError> {
        let dst = link_addr(ifindex, ETH_P_ARP, [0xff; 6]).ok_or(HaError::Socket {
            what: "link address",
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        socket::sendto(
            self.packet.as_raw_fd(),
            &garp(mac, ip),
            &dst,
            MsgFlags::empty(),
        )
        .map_err(|e| HaError::Socket {
            what: "send gratuitous ARP",
            source: e.into(),
        })?;
        Ok(())
    }

    /// One unsolicited neighbour advertisement to all nodes on `ifindex`.
    pub fn na(&self, ifindex: u32, mac: [u8; 6], ip: Ipv6Addr) -> Result<(), HaError> {
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let dst = SockaddrIn6::from(SocketAddrV6::new(all_nodes, 0, 0, ifindex));
        // ff02::1 is link-scoped: the scope id picks the interface.
        debug_assert_eq!(dst.family(), Some(AddressFamily::Inet6));
        socket::sendto(
            self.icmp6.as_raw_fd(),
            &unsolicited_na(mac, ip),
            &dst,
            MsgFlags::empty(),
        )
        .map_err(|e| HaError::Socket {
            what: "send neighbour advertisement",
            source: e.into(),
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

    #[test]
    fn gratuitous_arp_names_the_address_as_sender_and_target() {
        let p = garp(MAC, Ipv4Addr::new(203, 0, 113, 5));
        assert_eq!(
            p,
            [
                0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 10, 203, 0, 113, 5, 0, 0, 0, 0, 0, 0, 203,
                0, 113, 5
            ]
        );
    }

    #[test]
    fn neighbour_advertisement_overrides_and_carries_our_mac() {
        let ip: Ipv6Addr = "2001:db8:1::5".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let p = unsolicited_na(MAC, ip);
        assert_eq!(p[0], 136);
        assert_eq!(p[4] & 0x40, 0, "not solicited");
        assert_eq!(p[4] & 0x20, 0x20, "override");
        assert_eq!(&p[8..24], &ip.octets());
        assert_eq!(&p[24..26], &[2, 1]);
        assert_eq!(&p[26..], &MAC);
    }
}
