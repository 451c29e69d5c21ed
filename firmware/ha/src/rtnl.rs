//! Blocking rtnetlink: add and remove an interface address, read a link's hardware address
//! and state, and watch links go up and down. One `NETLINK_ROUTE` socket per use, in the
//! calling thread's network namespace.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::HaError;

/// `RTNLGRP_LINK` as a group bitmask for `bind` (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 1;
/// `EADDRNOTAVAIL`: deleting an address that is not there.
const EADDRNOTAVAIL: i32 = 99;
/// `ENODEV`.
const ENODEV: i32 = 19;
/// `EPROTO`: a reply we cannot parse.
const EPROTO: i32 = 71;
/// `ETIMEDOUT`: no reply within the socket's receive timeout.
const ETIMEDOUT: i32 = 110;

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> HaError {
    move |source| HaError::Netlink { context, source }
}

/// A request socket: one request, one acknowledgement.
pub(crate) struct Rtnl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    pub(crate) fn open() -> Result<Rtnl, HaError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err("create"))?;
        socket.bind_auto().map_err(io_err("bind"))?;
        let tv = TimeVal::milliseconds(1000);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| HaError::Netlink {
                context: "SO_RCVTIMEO",
                source: e.into(),
            })?;
        Ok(Rtnl {
            socket,
            seq: 1,
            buf: Vec::with_capacity(32 * 1024),
        })
    }

    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, HaError> {
        self.seq = self.seq.wrapping_add(1);
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut bytes = vec![0u8; nl.header.length as usize];
        nl.serialize(&mut bytes);
        self.socket
            .send_to(&bytes, &SocketAddr::new(0, 0), 0)
            .map_err(io_err("send"))?;
        Ok(self.seq)
    }

    /// Waits for the reply to `seq`: `Ok(Some(msg))` for a message, `Ok(None)` for the ack.
    fn reply(&mut self, seq: u32) -> Result<Option<RouteNetlinkMessage>, i32> {
        loop {
            self.buf.clear();
            if self.socket.recv(&mut self.buf, 0).is_err() {
                return Err(-ETIMEDOUT);
            }
            let mut off = 0;
            while off < self.buf.len() {
                let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..])
                else {
                    return Err(-EPROTO);
                };
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(-EPROTO);
                }
                off += len.next_multiple_of(4);
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(None),
                            Some(code) => Err(code.get()),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => return Ok(Some(m)),
                    _ => {}
                }
            }
        }
    }

    fn acked(&mut self, what: &'static str, seq: u32) -> Result<(), HaError> {
        // A GET answers with the message first, then (with NLM_F_ACK) the ack; an address
        // change answers with the ack only.
        loop {
            match self.reply(seq) {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => continue,
                Err(code) => return Err(HaError::Kernel { what, code: -code }),
            }
        }
    }

    /// Adds `addr/prefix` to the interface (replacing it if present). IPv6 addresses are
    /// added without duplicate address detection: the pair owns them, and DAD would hold
    /// them tentative (unusable) for a second.
    pub(crate) fn add_address(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), HaError> {
        let msg = address_message(ifindex, addr, prefix);
        let seq = self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        self.acked("add address", seq)
    }

    /// Removes `addr/prefix`; absent already is fine.
    pub(crate) fn del_address(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), HaError> {
        let msg = address_message(ifindex, addr, prefix);
        let seq = self.request(RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK)?;
        match self.acked("delete address", seq) {
            Err(HaError::Kernel { code, .. }) if code == EADDRNOTAVAIL || code == ENODEV => Ok(()),
            r => r,
        }
    }

    /// The link's state and hardware address.
    pub(crate) fn link(&mut self, ifindex: u32) -> Result<LinkState, HaError> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        let seq = self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK)?;
        loop {
            match self.reply(seq) {
                Ok(Some(RouteNetlinkMessage::NewLink(l))) => {
                    let state = LinkState::of(&l);
                    // Swallow the ack that follows.
                    let _ = self.acked("get link", seq);
                    return Ok(state);
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(HaError::Kernel {
                        what: "get link",
                        code: ENODEV,
                    })
                }
                Err(code) => {
                    return Err(HaError::Kernel {
                        what: "get link",
                        code: -code,
                    })
                }
            }
        }
    }
}

fn address_message(ifindex: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.header.prefix_len = prefix;
    msg.header.index = ifindex;
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    if addr.is_ipv6() {
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    msg
}

/// What a link message says about a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkState {
    pub index: u32,
    /// Administratively up and carrier present.
    pub up: bool,
    pub mac: Option<[u8; 6]>,
}

impl LinkState {
    fn of(l: &LinkMessage) -> LinkState {
        let f = l.header.flags;
        let up = f.contains(LinkFlags::Up)
            && (f.contains(LinkFlags::LowerUp) || f.contains(LinkFlags::Running));
        let mac = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(b) if b.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(b);
                Some(m)
            }
            _ => None,
        });
        LinkState {
            index: l.header.index,
            up,
            mac,
        }
    }
}

/// A socket subscribed to link changes; read without blocking.
pub(crate) struct LinkWatch {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkWatch {
    pub(crate) fn open() -> Result<LinkWatch, HaError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_err("create link watch"))?;
        socket
            .bind(&SocketAddr::new(0, RTMGRP_LINK))
            .map_err(io_err("bind link watch"))?;
        socket
            .set_non_blocking(true)
            .map_err(io_err("link watch nonblocking"))?;
        Ok(LinkWatch {
            socket,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.socket.as_fd()
    }

    /// Every link change queued, oldest first. An overrun (we were too slow) is reported
    /// as `Err`, so the caller re-reads the links it cares about.
    pub(crate) fn drain(&mut self, out: &mut Vec<LinkState>) -> Result<(), HaError> {
        loop {
            self.buf.clear();
            match self.socket.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(HaError::Netlink {
                        context: "link watch",
                        source,
                    })
                }
            }
            let mut off = 0;
            while off < self.buf.len() {
                let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..])
                else {
                    break;
                };
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += len.next_multiple_of(4);
                match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                        out.push(LinkState::of(&l))
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                        out.push(LinkState {
                            index: l.header.index,
                            up: false,
                            mac: None,
                        })
                    }
                    _ => {}
                }
            }
        }
    }
}
