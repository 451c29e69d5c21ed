//! Reachability probes: small, pure-Rust socket clients and listeners, all time-bounded.
//!
//! They are normally used through [`Ns`](crate::Ns): the socket is created inside the
//! namespace (via [`try_run_in_netns`]) and then used from an
//! ordinary thread, which is fine: a socket belongs to the namespace it was created in.

use std::fmt;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::cmd::POLL;
use crate::error::Result;
use crate::netns::try_run_in_netns;

/// How often listener threads look at their stop flag.
const LISTENER_TICK: Duration = Duration::from_millis(20);

/// A unique payload for UDP probes: `cgtok-{pid}-{counter}-{nanos}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    /// A token unique within this machine (pid, per-process counter, wall clock).
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Token(format!("cgtok-{}-{n}-{nanos}", std::process::id()))
    }

    /// The token text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Token {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<[u8]> for Token {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The unspecified address of `dst`'s family (for an unbound client socket).
fn unspecified_like(dst: IpAddr) -> IpAddr {
    match dst {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// State shared between a listener's background thread and its handle.
#[derive(Debug)]
struct Shared<T> {
    items: Mutex<Vec<T>>,
    changed: Condvar,
    stop: AtomicBool,
}

impl<T: Clone> Shared<T> {
    fn new() -> Arc<Self> {
        Arc::new(Shared {
            items: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, item: T) {
        self.lock().push(item);
        self.changed.notify_all();
    }

    fn snapshot(&self) -> Vec<T> {
        self.lock().clone()
    }

    /// Waits until `pred` holds for some recorded item, or `timeout` passes.
    fn wait_any(&self, timeout: Duration, pred: impl Fn(&T) -> bool) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut items = self.lock();
        loop {
            if let Some(hit) = items.iter().find(|i| pred(i)) {
                return Some(hit.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            items = match self.changed.wait_timeout(items, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// A TCP listener inside a lab namespace: accepts in a background thread, records every
/// peer address, closes each connection right away. Stops (and closes the socket) on drop.
#[derive(Debug)]
pub struct TcpProbeListener {
    local: SocketAddr,
    shared: Arc<Shared<SocketAddr>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProbeListener {
    /// Listens on `addr:port` inside namespace `ns` (port 0: pick a free one).
    pub fn start(ns: &str, addr: IpAddr, port: u16) -> Result<Self> {
        let listener = try_run_in_netns(ns, || TcpListener::bind((addr, port)))??;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let shared = Shared::new();
        let bg = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("tcp-listen-{local}"))
            .spawn(move || {
                while !bg.stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, peer)) => {
                            drop(stream);
                            bg.push(peer);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(LISTENER_TICK),
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::debug!("tcp listener {local}: accept: {e}");
                            thread::sleep(LISTENER_TICK);
                        }
                    }
                }
            })?;
        Ok(TcpProbeListener {
            local,
            shared,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Peer addresses of every accepted connection so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared.snapshot()
    }

    /// Whether a connection from `ip` has been accepted.
    pub fn accepted_from(&self, ip: IpAddr) -> bool {
        self.peers().iter().any(|p| p.ip() == ip)
    }

    /// Waits at most `timeout` for a connection from `ip`.
    pub fn wait_for_peer(&self, ip: IpAddr, timeout: Duration) -> bool {
        self.shared.wait_any(timeout, |p| p.ip() == ip).is_some()
    }
}

impl Drop for TcpProbeListener {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One datagram received by a [`UdpProbeListener`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Who sent it.
    pub peer: SocketAddr,
    /// Its payload.
    pub data: Vec<u8>,
}

/// A UDP listener inside a lab namespace: records every datagram with its peer and, if
/// echo is on (the default), sends each payload straight back to its sender (that is what
/// [`udp_probe`] waits for). Stops (and closes the socket) on drop.
#[derive(Debug)]
pub struct UdpProbeListener {
    local: SocketAddr,
    shared: Arc<Shared<Datagram>>,
    thread: Option<JoinHandle<()>>,
}

impl UdpProbeListener {
    /// Listens on `addr:port` inside namespace `ns` (port 0: pick a free one).
    pub fn start(ns: &str, addr: IpAddr, port: u16, echo: bool) -> Result<Self> {
        let sock = try_run_in_netns(ns, || UdpSocket::bind((addr, port)))??;
        sock.set_read_timeout(Some(LISTENER_TICK))?;
        let local = sock.local_addr()?;
        let shared = Shared::new();
        let bg = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(format!("udp-listen-{local}"))
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !bg.stop.load(Ordering::Relaxed) {
                    match sock.recv_from(&mut buf) {
                        Ok((n, peer)) => {
                            let data = buf[..n].to_vec();
                            if echo {
                                if let Err(e) = sock.send_to(&data, peer) {
                                    log::debug!("udp listener {local}: echo to {peer}: {e}");
                                }
                            }
                            bg.push(Datagram { peer, data });
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::WouldBlock
                                    | ErrorKind::TimedOut
                                    | ErrorKind::Interrupted
                            ) => {}
                        Err(e) => {
                            // e.g. ECONNREFUSED from an ICMP error for an earlier echo.
                            log::debug!("udp listener {local}: recv: {e}");
                        }
                    }
                }
            })?;
        Ok(UdpProbeListener {
            local,
            shared,
            thread: Some(thread),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Every datagram received so far.
    pub fn datagrams(&self) -> Vec<Datagram> {
        self.shared.snapshot()
    }

    /// Whether a datagram carrying exactly `token` has arrived.
    pub fn received(&self, token: &Token) -> bool {
        self.peer_of(token).is_some()
    }

    /// The sender of the datagram carrying `token`, if it has arrived.
    pub fn peer_of(&self, token: &Token) -> Option<SocketAddr> {
        self.datagrams()
            .into_iter()
            .find(|d| d.data == token.as_ref())
            .map(|d| d.peer)
    }

    /// Waits at most `timeout` for a datagram carrying exactly `token`.
    pub fn wait_for(&self, token: &Token, timeout: Duration) -> bool {
        self.shared
            .wait_any(timeout, |d| d.data == token.as_ref())
            .is_some()
    }
}

impl Drop for UdpProbeListener {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP connection to `dst`, from `src` if given (bound first), its handshake bounded by
/// `timeout` (Linux bounds a blocking connect() by SO_SNDTIMEO). Made in the calling
/// thread's namespace: call it from [`crate::Ns::run_in`].
pub fn tcp_stream(
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<std::net::TcpStream> {
    use std::os::fd::AsRawFd;
    let family = if dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let ms = i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    setsockopt(&fd, sockopt::SendTimeout, &TimeVal::milliseconds(ms))?;
    if let Some(src) = src {
        bind(
            fd.as_raw_fd(),
            &SockaddrStorage::from(SocketAddr::new(src, 0)),
        )?;
    }
    let target = SockaddrStorage::from(dst);
    let deadline = Instant::now() + timeout;
    loop {
        match connect(fd.as_raw_fd(), &target) {
            Ok(()) => return Ok(std::net::TcpStream::from(fd)),
            Err(nix::errno::Errno::EINTR) if Instant::now() < deadline => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Inside `ns`: does a TCP handshake with `dst:port` complete within `timeout`? Binds to
/// `src` first if given. A reset, an ICMP error, a drop (timeout) or any local error all
/// count as `false`.
pub fn tcp_connect(
    ns: &str,
    src: Option<IpAddr>,
    dst: IpAddr,
    port: u16,
    timeout: Duration,
) -> bool {
    let attempt = || tcp_stream(src, SocketAddr::new(dst, port), timeout).map(drop);
    match try_run_in_netns(ns, attempt) {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            log::debug!("tcp_connect in {ns} {src:?} -> {dst}:{port}: {e}");
            false
        }
        Err(e) => {
            log::warn!("tcp_connect: {e}");
            false
        }
    }
}

/// Inside `ns`: sends one datagram with `payload` to `dst:port` (from `src` if given).
/// `true` iff it left the socket; whether it arrived is the listener's business
/// ([`UdpProbeListener::wait_for`]).
pub fn udp_send(ns: &str, src: Option<IpAddr>, dst: IpAddr, port: u16, payload: &[u8]) -> bool {
    let send = || -> io::Result<usize> {
        let sock = UdpSocket::bind((src.unwrap_or_else(|| unspecified_like(dst)), 0))?;
        sock.send_to(payload, (dst, port))
    };
    match try_run_in_netns(ns, send) {
        Ok(Ok(n)) => n == payload.len(),
        Ok(Err(e)) => {
            log::debug!("udp_send in {ns} {src:?} -> {dst}:{port}: {e}");
            false
        }
        Err(e) => {
            log::warn!("udp_send: {e}");
            false
        }
    }
}

/// Inside `ns`: a UDP round trip. Sends a fresh [`Token`] to `dst:port` (from `src` if
/// given) and returns `true` iff the same token comes back from `dst:port` within
/// `timeout` — i.e. the far end is an echoing [`UdpProbeListener`] and both directions
/// pass. Re-sends every 200 ms within the timeout (first-packet ARP/ND loss).
pub fn udp_probe(ns: &str, src: Option<IpAddr>, dst: IpAddr, port: u16, timeout: Duration) -> bool {
    let token = Token::new();
    let round_trip = || -> io::Result<bool> {
        let sock = UdpSocket::bind((src.unwrap_or_else(|| unspecified_like(dst)), 0))?;
        sock.connect((dst, port))?; // only accept datagrams from dst:port
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        let mut next_send = Instant::now();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            if now >= next_send {
                // ECONNREFUSED from an earlier ICMP port-unreachable is not fatal.
                let _ = sock.send(token.as_ref());
                next_send = now + Duration::from_millis(200);
            }
            let wait = deadline
                .min(next_send)
                .saturating_duration_since(Instant::now())
                .max(POLL);
            sock.set_read_timeout(Some(wait))?;
            match sock.recv(&mut buf) {
                Ok(n) if buf[..n] == *token.as_ref() => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    };
    match try_run_in_netns(ns, round_trip) {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            log::debug!("udp_probe in {ns} {src:?} -> {dst}:{port}: {e}");
            false
        }
        Err(e) => {
            log::warn!("udp_probe: {e}");
            false
        }
    }
}
