//! The socket side that every request shares: one `NETLINK_NETFILTER`
//! socket ([`Conn`]) with its port id and sequence numbers, sending one
//! request, receiving one datagram at a time, matching replies to requests,
//! the request / reply exchange of queries and dumps ([`Conn::query`]), and
//! the retry of whole attempts after transient failures ([`retry`]).
//!
//! What the bytes mean is `wire.rs`'s business; what the errors mean for a
//! set, a table or an element is the caller's.

use std::fmt;
use std::io;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP_INTR};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::sys::time::{TimeVal, TimeValLike};

use super::wire::{self, ReplyKind};
use super::{NetlinkError, ACK_TIMEOUT};

/// Receive buffer for acknowledgements; they are capped (`NETLINK_CAP_ACK`)
/// so they are small.
const ACK_RECV_BUF: usize = 16 * 1024;
/// Receive buffer for dumps and pipelined lookups. The kernel caps one dump
/// datagram at about 32 KiB; this leaves ample room.
const DUMP_RECV_BUF: usize = 1 << 20;
/// `SO_RCVBUF` asked for by [`Conn::open_for_dumps`], so the kernel can
/// queue several dump datagrams (or many lookup replies) ahead of us (best
/// effort: capped by `net.core.rmem_max`).
const DUMP_SOCK_RCVBUF: libc::c_int = 4 << 20;
/// Attempts made by [`retry`] before giving up on transient failures.
pub(super) const ATTEMPTS: u32 = 5;
/// At most this many stale datagrams are dropped by [`Conn::drain_stale`].
const DRAIN_MAX: usize = 64;

/// A bound `NETLINK_NETFILTER` socket in the calling thread's network
/// namespace, with extended and capped acks where the kernel has them and a
/// receive timeout of [`ACK_TIMEOUT`], closed on drop.
pub(super) struct Conn {
    socket: Socket,
    /// Our netlink port id; replies addressed elsewhere are ignored.
    port: u32,
    /// Next sequence number to use.
    seq: u32,
    /// The datagram last received.
    buf: Vec<u8>,
}

impl Conn {
    /// A socket for requests answered by acknowledgements (small replies).
    pub(super) fn open() -> Result<Self, NetlinkError> {
        Self::with_buffer(ACK_RECV_BUF)
    }

    /// A socket for dumps and pipelined lookups: a large receive buffer, in
    /// user space and (best effort) in the kernel.
    pub(super) fn open_for_dumps() -> Result<Self, NetlinkError> {
        let conn = Self::with_buffer(DUMP_RECV_BUF)?;
        if let Err(e) = conn.socket.set_rx_buf_sz(DUMP_SOCK_RCVBUF) {
            log::debug!("netlink: cannot enlarge SO_RCVBUF: {e}");
        }
        Ok(conn)
    }

    fn with_buffer(capacity: usize) -> Result<Self, NetlinkError> {
        let io = |context| move |source| NetlinkError::Io { context, source };
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("create"))?;
        let addr = socket.bind_auto().map_err(io("bind"))?;
        // Extended acks name the attribute an error is about (needed to tell
        // a missing element from a missing set); capped acks do not echo our
        // request back. Both are optional: old kernels lose detail only.
        if let Err(e) = socket.set_ext_ack(true) {
            log::debug!("netlink: NETLINK_EXT_ACK unavailable: {e}");
        }
        if let Err(e) = socket.set_cap_ack(true) {
            log::debug!("netlink: NETLINK_CAP_ACK unavailable: {e}");
        }
        let tv = TimeVal::milliseconds(i64::try_from(ACK_TIMEOUT.as_millis()).unwrap_or(5_000));
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| NetlinkError::Io {
                context: "set SO_RCVTIMEO",
                source: io::Error::from(e),
            })?;
        Ok(Self {
            socket,
            port: addr.port_number(),
            seq: initial_seq(),
            buf: Vec::with_capacity(capacity),
        })
    }

    pub(super) fn port(&self) -> u32 {
        self.port
    }

    /// The next sequence number to be used.
    pub(super) fn seq(&self) -> u32 {
        self.seq
    }

    /// Takes `n` fresh sequence numbers; returns the first.
    pub(super) fn next_seqs(&mut self, n: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(n);
        first
    }

    /// The receive buffer the kernel gave the socket (`SO_RCVBUF`).
    pub(super) fn rcvbuf(&self) -> nix::Result<usize> {
        nix::sys::socket::getsockopt(&self.socket, nix::sys::socket::sockopt::RcvBuf)
    }

    /// The datagram last received by [`Conn::recv_datagram`].
    pub(super) fn datagram(&self) -> &[u8] {
        &self.buf
    }

    /// Sends `bytes` to the kernel in one `sendmsg`.
    pub(super) fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        let sent = self
            .socket
            .send_to(bytes, &SocketAddr::new(0, 0), 0)
            .map_err(|source| NetlinkError::Io {
                context: "send",
                source,
            })?;
        if sent == bytes.len() {
            Ok(())
        } else {
            Err(NetlinkError::Protocol(format!(
                "short send: {sent} of {} bytes",
                bytes.len()
            )))
        }
    }

    /// Reads one datagram into the buffer ([`Conn::datagram`]). Blocks up
    /// to the socket timeout ([`NetlinkError::Timeout`] for `op`) unless
    /// `nonblocking`, where `Ok(false)` says that nothing is queued. A
    /// receive-buffer overrun (`ENOBUFS`: the kernel dropped replies for us)
    /// is an [`NetlinkError::Io`] that [`is_overrun`] recognises.
    pub(super) fn recv_datagram(
        &mut self,
        nonblocking: bool,
        op: &'static str,
    ) -> Result<bool, NetlinkError> {
        loop {
            self.buf.clear();
            let flags = libc::MSG_TRUNC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
            match self.socket.recv(&mut self.buf, flags) {
                Ok(n) if n > self.buf.len() => {
                    return Err(NetlinkError::Protocol(format!(
                        "reply of {n} bytes truncated to {}",
                        self.buf.len()
                    )))
                }
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if nonblocking {
                        Ok(false)
                    } else {
                        Err(NetlinkError::Timeout(ACK_TIMEOUT, op))
                    };
                }
                Err(source) => {
                    return Err(NetlinkError::Io {
                        context: "receive",
                        source,
                    })
                }
            }
        }
    }

    /// Drops replies left over from an earlier call that ended early (for
    /// example on a batch-level error, the element acks follow).
    pub(super) fn drain_stale(&mut self) {
        for _ in 0..DRAIN_MAX {
            match self.recv_datagram(true, "reply") {
                Ok(true) => log::debug!("netlink: dropped {} stale reply bytes", self.buf.len()),
                Ok(false) | Err(_) => break,
            }
        }
    }

    /// Where a reply (`port`, `seq`) belongs among requests with sequence
    /// numbers `first .. first + count`: its position, or `None` (logged)
    /// for a reply to another socket or to an earlier request.
    pub(super) fn slot(&self, port: u32, seq: u32, first: u32, count: usize) -> Option<usize> {
        if port != self.port {
            log::debug!("netlink: ignoring reply for port {port}");
            return None;
        }
        let rel = seq.wrapping_sub(first) as usize;
        if rel >= count {
            log::debug!("netlink: ignoring stale reply seq {seq}");
            return None;
        }
        Some(rel)
    }

    /// Sends `request` (one message with sequence number `seq`, a query with
    /// `NLM_F_ACK` or a dump) and feeds every reply message (type, payload
    /// after the `nlmsghdr`) to `on_msg` until `NLMSG_DONE` or `NLMSG_ERROR`
    /// (an error or the ack) ends the exchange.
    ///
    /// A kernel errno (of `NLMSG_ERROR`, of a dump's `NLMSG_DONE`, or
    /// `EINTR` for a dump the kernel flagged as interrupted by a ruleset
    /// change) becomes what `kernel_error(errno, message, offset)` makes of
    /// it; a receive-buffer overrun is worth a retry.
    pub(super) fn query(
        &mut self,
        request: &[u8],
        seq: u32,
        op: &'static str,
        kernel_error: impl Fn(i32, Option<String>, Option<u32>) -> Attempt,
        mut on_msg: impl FnMut(u16, &[u8]) -> Result<(), String>,
    ) -> Result<(), Attempt> {
        self.send(request)?;
        let mut interrupted = false;
        let finish = |interrupted: bool| {
            if interrupted {
                let message = Some("dump interrupted by a ruleset change".to_owned());
                Err(kernel_error(libc::EINTR, message, None))
            } else {
                Ok(())
            }
        };
        loop {
            match self.recv_datagram(false, op) {
                Ok(_) => {}
                // dump datagrams were dropped: start over
                Err(e) if is_overrun(&e) => return Err(Attempt::Retry(e)),
                Err(e) => return Err(e.into()),
            }
            for msg in wire::messages(&self.buf) {
                let msg = msg.map_err(NetlinkError::Protocol)?;
                if self
                    .slot(msg.port_number(), msg.sequence_number(), seq, 1)
                    .is_none()
                {
                    continue;
                }
                if msg.flags() & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match msg.message_type() {
                    NLMSG_DONE => {
                        // A dump's DONE carries the dump's result (0 or -errno).
                        let code = wire::ne_u32(msg.payload()).map_or(0, |c| c as i32);
                        if code < 0 {
                            return Err(kernel_error(code.saturating_neg(), None, None));
                        }
                        return finish(interrupted);
                    }
                    NLMSG_ERROR => {
                        return match wire::parse_error(&msg).map_err(NetlinkError::Protocol)? {
                            ReplyKind::Error {
                                errno,
                                message,
                                offset,
                            } => Err(kernel_error(errno, message, offset)),
                            ReplyKind::Ack | ReplyKind::Other => finish(interrupted),
                        };
                    }
                    ty => on_msg(ty, msg.payload()).map_err(NetlinkError::Protocol)?,
                }
            }
        }
    }
}

/// First sequence number of a new socket. Like libmnl: start from the clock
/// so that a restarted daemon does not reuse the previous instance's numbers
/// right away.
fn initial_seq() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// `ENOBUFS` from [`Conn::recv_datagram`]: replies were dropped for lack of
/// receive-buffer space.
pub(super) fn is_overrun(e: &NetlinkError) -> bool {
    matches!(e, NetlinkError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOBUFS))
}

/// Outcome of one failed attempt (of a query, a dump, a group of dumps).
#[derive(Debug)]
pub(super) enum Attempt {
    /// Transient: try again (on a fresh socket, for dumps).
    Retry(NetlinkError),
    Fail(NetlinkError),
}

impl Attempt {
    /// An error the kernel returned: `EINTR` / `EBUSY` / `EAGAIN` (for
    /// example a dump interrupted by a ruleset change) are worth a retry.
    pub(super) fn kernel(e: NetlinkError) -> Self {
        if matches!(e.errno(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) {
            Self::Retry(e)
        } else {
            Self::Fail(e)
        }
    }
}

impl From<NetlinkError> for Attempt {
    fn from(e: NetlinkError) -> Self {
        Self::Fail(e)
    }
}

/// Runs `attempt` until it succeeds, fails for good, or [`ATTEMPTS`]
/// transient failures happened, pausing a little longer after each.
/// `what` names it in the debug log ("dump of set s4").
pub(super) fn retry<T>(
    what: fmt::Arguments<'_>,
    mut attempt: impl FnMut() -> Result<T, Attempt>,
) -> Result<T, NetlinkError> {
    let mut n = 1;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(Attempt::Retry(e)) if n < ATTEMPTS => {
                log::debug!("netlink: {what} attempt {n} failed, retrying: {e}");
                thread::sleep(Duration::from_millis(5 * u64::from(n)));
                n += 1;
            }
            Err(Attempt::Retry(e) | Attempt::Fail(e)) => return Err(e),
        }
    }
}
