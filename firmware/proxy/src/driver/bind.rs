//! Listening sockets bound with `IP_FREEBIND`: a listen address may be a virtual address
//! that this appliance holds only while it is the pair's active node. The socket is bound
//! before the address exists, and receives from the moment the address is added; no
//! re-bind at takeover.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};

fn freebind_socket(addr: SocketAddr, ty: SockType) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, ty, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    if ty == SockType::Stream {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    }
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    Ok(fd)
}

/// A UDP socket on `addr`, which need not exist yet.
pub(super) fn udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    Ok(std::net::UdpSocket::from(freebind_socket(
        addr,
        SockType::Datagram,
    )?))
}

/// A listening TCP socket on `addr`, which need not exist yet.
pub(super) fn tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let fd = freebind_socket(addr, SockType::Stream)?;
    listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
    Ok(std::net::TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_does_not_exist_yet_can_be_bound() {
        // 192.0.2.0/24 (TEST-NET-1) is on no interface of a test machine.
        let a: SocketAddr = "192.0.2.250:0".parse().unwrap_or_else(|_| unreachable!());
        let u = udp(a);
        let t = tcp(a);
        assert!(u.is_ok(), "{u:?}");
        assert!(t.is_ok(), "{t:?}");
        // Without IP_FREEBIND the same bind fails.
        assert!(std::net::UdpSocket::bind(a).is_err());
    }
}
