//! The attacker on a segment: UDP datagrams with a forged source address (a raw IPv4
//! socket builds the header), and a sniffer that copies datagrams off the lab switch
//! (what a tap or a mirrored switch port gives an attacker). Used to forge and replay the
//! pair's heartbeats.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::netns::try_run_in_netns;

/// An IPv4 + UDP datagram from `src` to `dst` (UDP checksum 0: none, as IPv4 allows; the
/// kernel fills the IP checksum, length and id).
pub fn udp4_packet(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.ip().octets());
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&src.port().to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// Inside `ns`: sends each payload as a UDP datagram that claims to come from `src`.
/// Returns how many were sent.
pub fn udp4_spoof(ns: &str, src: SocketAddrV4, dst: SocketAddrV4, payloads: &[Vec<u8>]) -> usize {
    let send = || -> io::Result<usize> {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::Raw,
        )?;
        let to = SockaddrIn::from(dst);
        let mut n = 0;
        for p in payloads {
            let pkt = udp4_packet(src, dst, p);
            if sendto(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &pkt,
                &to,
                MsgFlags::empty(),
            )
            .is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    };
    match try_run_in_netns(ns, send) {
        Ok(Ok(n)) => n,
        _ => 0,
    }
}

/// Inside `ns` (the lab's switch): waits up to `timeout` for an IPv4 UDP datagram from
/// `src` to `dst` crossing any interface, and returns its payload.
pub fn sniff_udp4(
    ns: &str,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let sniff = move || -> io::Result<Option<Vec<u8>>> {
        // Unbound SOCK_DGRAM packet socket: every frame of every interface, link header
        // removed, so each datagram starts at its IP header.
        let fd = socket(
            AddressFamily::Packet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::milliseconds(100))?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let n = match recv(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &mut buf,
                MsgFlags::empty(),
            ) {
                Ok(n) => n,
                Err(_) => continue,
            };
            let p = &buf[..n];
            if n < 28 || p[0] >> 4 != 4 || p[9] != 17 {
                continue;
            }
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if n < ihl + 8 {
                continue;
            }
            let s = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let d = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            let sp = u16::from_be_bytes([p[ihl], p[ihl + 1]]);
            let dp = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
            if s == *src.ip() && d == *dst.ip() && sp == src.port() && dp == dst.port() {
                return Ok(Some(p[ihl + 8..].to_vec()));
            }
        }
        Ok(None)
    };
    try_run_in_netns(ns, sniff).ok()?.ok()?
}
