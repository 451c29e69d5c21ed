//! UDP in batches: `recvmmsg(2)` takes what is waiting on a socket in one system call, and
//! the datagrams the proxy sends while it handles them leave together with `sendmmsg(2)`
//! when the task is about to wait (with the effects, see `flush_effects`). A call is 14
//! datagrams through the proxy; one system call each was most of the sip thread's calls
//! into the kernel. What each datagram costs in the network stack is unchanged.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use rustix::net::addr::SocketAddrArg;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
use tokio::net::UdpSocket;

use crate::Payload;

/// Datagrams per `recvmmsg` and per `sendmmsg` at most.
pub(super) const BATCH: usize = 16;
/// Largest UDP payload (a datagram cannot be larger).
const MAX_DATAGRAM: usize = 65_536;

/// One socket's receive buffers and the kernel's headers for them, made once.
pub(super) struct Batch {
    bufs: Vec<Vec<u8>>,
    headers: MultiHeaders<SockaddrStorage>,
    /// What the last [`Batch::recv`] received: (length, source) per datagram, in order;
    /// `None` for a truncated datagram (it cannot be, at 64 KiB) or one without a source.
    got: Vec<Option<(usize, SocketAddr)>>,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch {
            // Zeroed allocations: pages are mapped only as datagrams reach them.
            bufs: (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            headers: MultiHeaders::preallocate(BATCH, None),
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Receives what is waiting, up to [`BATCH`] datagrams, without blocking: how many,
    /// and whether that emptied the socket (`WouldBlock` when nothing was waiting).
    ///
    /// Fewer than [`BATCH`] means the queue was empty when the kernel took them, so the
    /// socket is reported drained and tokio's readiness is cleared at once: the caller
    /// waits instead of asking again only to hear `EAGAIN`, one system call per wake-up
    /// saved. Nothing is missed: a datagram that arrives after this call raises a new
    /// edge-triggered epoll event, which sets the readiness again (tokio clears it only if
    /// no event came since the call began).
    pub(super) fn recv(&mut self, sock: &UdpSocket) -> io::Result<(usize, bool)> {
        let Batch { bufs, headers, got } = self;
        got.clear();
        let res = sock.try_io(tokio::io::Interest::READABLE, || {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            let res = recvmmsg(
                sock.as_raw_fd(),
                headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            let mut n = 0;
            for m in res {
                n += 1;
                // Kept by position: `received` pairs `got` with `bufs`.
                let from = m.address.as_ref().and_then(socket_addr);
                got.push(
                    from.filter(|_| !m.flags.contains(MsgFlags::MSG_TRUNC))
                        .map(|from| (m.bytes, from)),
                );
            }
            if n < BATCH {
                // Drained: `WouldBlock` has tokio clear the readiness; what was taken is
                // in `got`.
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match res {
            Ok(n) => Ok((n, false)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !got.is_empty() => {
                Ok((got.len(), true))
            }
            Err(e) => Err(e),
        }
    }

    /// The usable datagrams the last [`Batch::recv`] took, in order, with their sources.
    pub(super) fn received(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> + '_ {
        self.got
            .iter()
            .zip(&self.bufs)
            .filter_map(|(got, buf)| got.and_then(|(len, from)| Some((buf.get(..len)?, from))))
    }
}

/// The standard library's address of a socket address the kernel filled in.
fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Datagrams waiting to be sent: (socket index, destination, bytes), in the order the
/// proxy sent them.
pub(super) struct Outbox {
    queued: Vec<(usize, SocketAddr, Payload)>,
}

impl Outbox {
    pub(super) fn new() -> Outbox {
        Outbox {
            queued: Vec::with_capacity(BATCH),
        }
    }

    /// Queues one datagram; `true` when a batch is full and should be flushed.
    pub(super) fn queue(&mut self, sock: usize, to: SocketAddr, bytes: Payload) -> bool {
        self.queued.push((sock, to, bytes));
        self.queued.len() >= BATCH
    }

    /// Sends everything queued, per socket in order, [`BATCH`] datagrams per system call.
    /// UDP may drop: a datagram the kernel refuses (a full buffer, an ICMP error reported
    /// late) is dropped and logged at debug, as a single send's would be, and the rest
    /// still go; the transaction layer retransmits.
    pub(super) fn flush(&mut self, socks: &[(SocketAddr, Rc<UdpSocket>)]) {
        if self.queued.is_empty() {
            return;
        }
        for (i, (_, sock)) in socks.iter().enumerate() {
            let mine: Vec<&(usize, SocketAddr, Payload)> =
                self.queued.iter().filter(|q| q.0 == i).collect();
            for chunk in mine.chunks(BATCH) {
                send_all(sock, chunk);
            }
        }
        self.queued.clear();
    }
}

/// `sendmmsg` until every datagram of `chunk` is sent or refused.
fn send_all(sock: &UdpSocket, chunk: &[&(usize, SocketAddr, Payload)]) {
    let mut at = 0;
    while let Some(rest) = chunk.get(at..).filter(|r| !r.is_empty()) {
        let addrs: Vec<SocketAddrAny> = rest.iter().map(|q| q.1.as_any()).collect();
        let iovs: Vec<[IoSlice<'_>; 1]> = rest.iter().map(|q| [IoSlice::new(&q.2)]).collect();
        let mut control: Vec<SendAncillaryBuffer<'_, '_, '_>> = rest
            .iter()
            .map(|_| SendAncillaryBuffer::default())
            .collect();
        let mut msgs: Vec<MMsgHdr<'_>> = addrs
            .iter()
            .zip(&iovs)
            .zip(control.iter_mut())
            .map(|((a, iov), c)| MMsgHdr::new_with_addr(a, iov, c))
            .collect();
        match rustix::net::sendmmsg(sock, &mut msgs, SendFlags::DONTWAIT) {
            Ok(n) if n > 0 => at += n,
            // The first datagram was refused (or nothing was sent): drop it, go on.
            other => {
                if let (Err(e), Some(q)) = (other, rest.first()) {
                    if e != rustix::io::Errno::AGAIN {
                        log::debug!("sip: udp send to {}: {e}", q.1);
                    }
                }
                at += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use std::time::Duration;

    async fn bound() -> Rc<UdpSocket> {
        Rc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap())
    }

    /// A batch is sent in order; a datagram the kernel refuses (an IPv6 destination on an
    /// IPv4 socket) is dropped alone and the ones after it still go, across batches.
    #[tokio::test(flavor = "current_thread")]
    async fn sends_go_in_order_and_a_refused_one_does_not_stop_the_rest() {
        let (a, b) = (bound().await, bound().await);
        let to = b.local_addr().unwrap();
        let refused: SocketAddr = "[::1]:9".parse().unwrap();
        let mut out = Outbox::new();
        let mut sent = Vec::new();
        for i in 0..2 * BATCH + 3 {
            let dest = if i % 5 == 2 { refused } else { to };
            if dest == to {
                sent.push(i);
            }
            if out.queue(0, dest, Payload::from(format!("m{i}").into_bytes())) {
                out.flush(&[(a.local_addr().unwrap(), a.clone())]);
            }
        }
        out.flush(&[(a.local_addr().unwrap(), a.clone())]);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(Ok((n, from))) =
            tokio::time::timeout(std::time::Duration::from_millis(200), b.recv_from(&mut buf)).await
        {
            assert_eq!(from, a.local_addr().unwrap());
            got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        let want: Vec<String> = sent.iter().map(|i| format!("m{i}")).collect();
        assert_eq!(got, want);
    }

    /// What is waiting is taken in batches of at most `BATCH`, whole and in order, each
    /// with its source; the batch that empties the socket says so, and clears the
    /// readiness: waiting then lasts until the next datagram, which wakes it and is
    /// received; an empty socket is `WouldBlock`.
    #[tokio::test(flavor = "current_thread")]
    async fn receives_what_waits_in_batches_with_sources() {
        let (a, b) = (bound().await, bound().await);
        let n = BATCH + 5;
        for i in 0..n {
            b.send_to(format!("datagram {i}").as_bytes(), a.local_addr().unwrap())
                .await
                .unwrap();
        }
        let mut batch = Batch::new();
        let mut got = Vec::new();
        let mut batches = Vec::new();
        while got.len() < n {
            a.readable().await.unwrap();
            match batch.recv(&a) {
                Ok((k, drained)) => {
                    assert!((1..=BATCH).contains(&k));
                    batches.push((k, drained));
                    for (bytes, from) in batch.received() {
                        assert_eq!(from, b.local_addr().unwrap());
                        got.push(String::from_utf8(bytes.to_vec()).unwrap());
                    }
                }
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        let want: Vec<String> = (0..n).map(|i| format!("datagram {i}")).collect();
        assert_eq!(got, want);
        assert_eq!(batches, vec![(BATCH, false), (5, true)]);
        // Drained: the readiness is gone, so waiting waits.
        let idle = tokio::time::timeout(Duration::from_millis(100), a.readable()).await;
        assert!(
            idle.is_err(),
            "readable without a datagram after a drained batch"
        );
        // The next datagram wakes the wait and is received.
        b.send_to(b"one more", a.local_addr().unwrap())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), a.readable())
            .await
            .expect("a datagram after a drained batch wakes the wait")
            .unwrap();
        assert_eq!(batch.recv(&a).ok(), Some((1, true)));
        assert_eq!(
            batch.received().next().map(|(b, _)| b.to_vec()),
            Some(b"one more".to_vec())
        );
        assert_eq!(
            batch.recv(&a).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
    }
}
