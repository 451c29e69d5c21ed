//! The proxy's I/O: one thread, a current-thread tokio runtime, the core inside.
//!
//! - One task per UDP socket receives datagrams and feeds them to the core; sends are
//!   `try_send_to` (UDP may drop; the transaction layer retransmits).
//! - One task per TCP listener accepts; one reader task per connection frames messages
//!   ([`callgate_sip::Framing::Stream`]) and a writer task drains that connection's queue.
//!   Requests to a TCP destination without a connection open one from our local address.
//! - One timer task sleeps until [`Proxy::next_deadline`]; message handling wakes it when
//!   a nearer deadline appears.
//! - One task takes the store's reports of durable answer-time records
//!   ([`SipHandle::record_stored`]) to the core, which then sends the held 2xx.
//! - Pinholes, blocks and records leave as [`Effect`]s on an unbounded channel (the
//!   daemon forwards them to the firewall and the store), in order, in bursts: they wait
//!   until the task that produced them is about to wait (its socket has nothing more to
//!   read, after at most 64 datagrams; a TCP read or a timer round is done), so the
//!   daemon's side wakes once per burst rather than once per message. Logs go to `log`.
//!
//! Everything runs on the one thread, so the core lives in a `RefCell` and is never
//! borrowed across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callgate_config::Config;
use callgate_sip::{Framing, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::LocalSet;

use crate::{
    ActiveCall, ConnId, Millis, Now, Output, Payload, Peer, Proxy, Settings, Stats, Transport,
};

/// What the proxy asks of the rest of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// See [`Output::Pinhole`].
    Pinhole {
        open: bool,
        src: ipnet::IpNet,
        dst: SocketAddr,
        ttl: Duration,
    },
    Block {
        ip: IpAddr,
        ttl: Duration,
    },
    Record {
        seq: u64,
        cdr: Box<callgate_store::Cdr>,
        ended: bool,
    },
    /// A call in progress at the last stop was resumed as `seq` from its record `id`: its
    /// final record goes under that id.
    Resumed {
        seq: u64,
        id: u64,
    },
}

#[derive(Debug)]
enum Command {
    Calls(oneshot::Sender<Vec<ActiveCall>>),
    Stats(oneshot::Sender<Stats>),
    Reconfigure(Arc<Config>),
}

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot listen on {addr} ({transport}): {source}")]
    Bind {
        addr: SocketAddr,
        transport: &'static str,
        source: io::Error,
    },
    #[error("cannot start the sip thread: {0}")]
    Thread(io::Error),
    #[error("the sip thread stopped")]
    Stopped,
}

/// Talks to the sip thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SipHandle {
    tx: mpsc::Sender<Command>,
    stored: mpsc::UnboundedSender<(u64, bool)>,
}

impl SipHandle {
    /// The calls in progress.
    pub async fn calls(&self) -> Result<Vec<ActiveCall>, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Calls(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// Counters since start.
    pub async fn stats(&self) -> Result<Stats, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// The answer-time record of call `seq` (an [`Effect::Record`] with `ended: false`) is
    /// durable (`ok`), or could not be stored: the call's 2xx may now go to the caller (or
    /// the call is ended). Never blocks; callable from any thread.
    pub fn record_stored(&self, seq: u64, ok: bool) {
        let _ = self.stored.send((seq, ok));
    }

    /// Routes, caps and timeouts of a newly committed config (listen addresses need a
    /// restart).
    pub async fn reconfigure(&self, cfg: Arc<Config>) -> Result<(), DriverError> {
        self.tx
            .send(Command::Reconfigure(cfg))
            .await
            .map_err(|_| DriverError::Stopped)
    }
}

/// Our local address toward each destination, as the kernel's routing picks it.
fn local_for(cfg: &Config) -> HashMap<IpAddr, IpAddr> {
    let mut m = HashMap::new();
    for r in &cfg.sip.routes {
        for d in r.destinations.get_ref() {
            let ip = d.uri.get_ref().addr.ip();
            let bind: SocketAddr = if ip.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let probe = std::net::UdpSocket::bind(bind)
                .and_then(|s| s.connect((ip, 9)).map(|_| s))
                .and_then(|s| s.local_addr());
            if let Ok(a) = probe {
                m.insert(ip, a.ip());
            }
        }
    }
    m
}

/// The core's settings for `cfg`, with our local address toward each destination and
/// every address of this namespace's interfaces (media may never point at the appliance).
fn settings(cfg: &Config) -> Settings {
    let mut s = Settings::from_config(cfg, local_for(cfg));
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => {
            for a in addrs {
                let ip = a.address.as_ref().and_then(|sa| {
                    sa.as_sockaddr_in()
                        .map(|v4| IpAddr::V4(v4.ip()))
                        .or_else(|| sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                });
                if let Some(ip) = ip {
                    if !s.media.own.contains(&ip) {
                        s.media.own.push(ip);
                    }
                }
            }
        }
        Err(e) => log::warn!("sip: cannot list the interfaces' addresses: {e}"),
    }
    s
}

/// Debug builds only (compiled out of release builds): with `CALLGATE_FAULT_SIP_PANIC`
/// set in the daemon's environment the sip thread panics at its first message, so a
/// system test can show that a panic on the SIP path ends the daemon.
#[cfg(debug_assertions)]
fn fault_injection() {
    if fault_armed() {
        panic!("fault injection: CALLGATE_FAULT_SIP_PANIC is set");
    }
}

/// Whether `CALLGATE_FAULT_SIP_PANIC` is set: read once, when the proxy starts.
#[cfg(debug_assertions)]
fn fault_armed() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| std::env::var_os("CALLGATE_FAULT_SIP_PANIC").is_some())
}

/// Monotonic and wall-clock time now.
fn now(start: Instant) -> Now {
    Now {
        mono: Millis(start.elapsed().as_millis() as u64),
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    }
}

struct Shared {
    core: RefCell<Proxy>,
    start: Instant,
    udp: Vec<(SocketAddr, Rc<UdpSocket>)>,
    conns: RefCell<HashMap<ConnId, mpsc::Sender<Payload>>>,
    conn_by_addr: RefCell<HashMap<SocketAddr, ConnId>>,
    next_conn: Cell<ConnId>,
    effects: mpsc::UnboundedSender<Effect>,
    timer: Notify,
    timer_target: Cell<Option<Millis>>,
    /// The output buffer `feed` reuses.
    out: Cell<Vec<Output>>,
    /// Effects of the messages handled since the last [`flush_effects`]: handed over in one
    /// burst when a socket has nothing more to read (or a timer round is done), so the
    /// daemon's side wakes once per burst rather than once per message.
    pending: RefCell<Vec<Effect>>,
}

/// Datagrams read from one socket before its effects are handed over and the other tasks
/// get a turn (a flood on one socket starves neither the timers nor the other sockets).
const UDP_BURST: usize = 64;
/// Effects held back at most (beyond this they go at once).
const MAX_PENDING_EFFECTS: usize = 256;

/// Binds every listen address (UDP and TCP) and starts the sip thread. Bind errors are
/// returned before anything runs.
///
/// `resumed`: the records (id, answer-time record) of calls that were in progress at the
/// last stop ([`callgate_store::Store::take_calls_in_progress`]); the core carries them on
/// ([`Proxy::resume`]) and an [`Effect::Resumed`] for each comes before anything else.
pub fn spawn(
    cfg: Arc<Config>,
    effects: mpsc::UnboundedSender<Effect>,
    resumed: Vec<(u64, callgate_store::Cdr)>,
) -> Result<(SipHandle, std::thread::JoinHandle<()>), DriverError> {
    #[cfg(debug_assertions)]
    if fault_armed() {
        log::warn!("sip: CALLGATE_FAULT_SIP_PANIC is set: the first message panics");
    }
    let listen = cfg.sip.listen_addrs();
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for a in &listen {
        let u = std::net::UdpSocket::bind(a).map_err(|source| DriverError::Bind {
            addr: *a,
            transport: "udp",
            source,
        })?;
        u.set_nonblocking(true).map_err(DriverError::Thread)?;
        udp.push((*a, u));
        let t = std::net::TcpListener::bind(a).map_err(|source| DriverError::Bind {
            addr: *a,
            transport: "tcp",
            source,
        })?;
        t.set_nonblocking(true).map_err(DriverError::Thread)?;
        tcp.push((*a, t));
    }
    let (tx, rx) = mpsc::channel(64);
    let (stored, stored_rx) = mpsc::unbounded_channel();
    let join = std::thread::Builder::new()
        .name("sip".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("sip: cannot build the runtime: {e}");
                    return;
                }
            };
            let local = LocalSet::new();
            local.block_on(&rt, run(cfg, udp, tcp, rx, stored_rx, effects, resumed));
        })
        .map_err(DriverError::Thread)?;
    Ok((SipHandle { tx, stored }, join))
}

async fn run(
    cfg: Arc<Config>,
    udp: Vec<(SocketAddr, std::net::UdpSocket)>,
    tcp: Vec<(SocketAddr, std::net::TcpListener)>,
    mut rx: mpsc::Receiver<Command>,
    stored: mpsc::UnboundedReceiver<(u64, bool)>,
    effects: mpsc::UnboundedSender<Effect>,
    resumed: Vec<(u64, callgate_store::Cdr)>,
) {
    let start = Instant::now();
    let mut core = Proxy::new(settings(&cfg), &cfg, now(start));
    let mut out = Vec::new();
    let mut carried = 0;
    for (id, cdr) in &resumed {
        match core.resume(now(start), cdr, &mut out) {
            Some(seq) => {
                carried += 1;
                let _ = effects.send(Effect::Resumed { seq, id: *id });
            }
            None => log::warn!("sip: the call in progress of record {id} cannot be resumed"),
        }
    }
    if !resumed.is_empty() {
        log::info!("sip: {carried} calls in progress at the last stop carried on");
    }
    let mut sockets = Vec::new();
    for (a, s) in udp {
        match UdpSocket::from_std(s) {
            Ok(s) => sockets.push((a, Rc::new(s))),
            Err(e) => log::error!("sip: udp {a}: {e}"),
        }
    }
    let sh = Rc::new(Shared {
        core: RefCell::new(core),
        start,
        udp: sockets,
        conns: RefCell::new(HashMap::new()),
        conn_by_addr: RefCell::new(HashMap::new()),
        next_conn: Cell::new(1),
        effects,
        timer: Notify::new(),
        timer_target: Cell::new(None),
        out: Cell::new(Vec::with_capacity(16)),
        pending: RefCell::new(Vec::with_capacity(MAX_PENDING_EFFECTS)),
    });
    for (a, s) in sh.udp.clone() {
        tokio::task::spawn_local(udp_loop(sh.clone(), a, s));
    }
    for (a, l) in tcp {
        match TcpListener::from_std(l) {
            Ok(l) => {
                tokio::task::spawn_local(accept_loop(sh.clone(), a, l));
            }
            Err(e) => log::error!("sip: tcp {a}: {e}"),
        }
    }
    execute(&sh, &mut out);
    flush_effects(&sh);
    tokio::task::spawn_local(timer_loop(sh.clone()));
    tokio::task::spawn_local(stored_loop(sh.clone(), stored));
    log::info!("sip: proxy listening on {:?}", cfg.sip.listen_addrs());
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Calls(reply) => {
                let _ = reply.send(sh.core.borrow().active_calls());
            }
            Command::Stats(reply) => {
                let _ = reply.send(sh.core.borrow().stats());
            }
            Command::Reconfigure(cfg) => {
                let n = now(sh.start);
                sh.core.borrow_mut().reconfigure(settings(&cfg), &cfg, n);
                sh.timer.notify_one();
            }
        }
    }
}

/// Feeds one message to the core and carries out what it says.
fn feed(sh: &Rc<Shared>, bytes: &[u8], peer: Peer, local: SocketAddr) {
    #[cfg(debug_assertions)]
    fault_injection();
    // One output buffer for every message (no allocation per datagram).
    let mut out = sh.out.take();
    out.clear();
    let deadline = {
        let mut core = sh.core.borrow_mut();
        core.on_message(now(sh.start), bytes, peer, local, &mut out);
        core.next_deadline()
    };
    execute(sh, &mut out);
    sh.out.replace(out);
    if let Some(d) = deadline {
        if sh.timer_target.get().is_none_or(|t| d < t) {
            sh.timer.notify_one();
        }
    }
}

/// Sends what goes on the wire now; effects wait for [`flush_effects`], which every task
/// calls before it waits for anything.
fn execute(sh: &Rc<Shared>, out: &mut Vec<Output>) {
    for o in out.drain(..) {
        let effect = match o {
            Output::Send { peer, local, bytes } => {
                send(sh, peer, local, bytes);
                continue;
            }
            Output::Log { level, line } => {
                log::log!(level, "sip: {line}");
                continue;
            }
            Output::Pinhole {
                open,
                src,
                dst,
                ttl,
            } => Effect::Pinhole {
                open,
                src,
                dst,
                ttl,
            },
            Output::Block { ip, ttl } => Effect::Block { ip, ttl },
            Output::Record { seq, cdr, ended } => Effect::Record { seq, cdr, ended },
        };
        let full = {
            let mut p = sh.pending.borrow_mut();
            p.push(effect);
            p.len() >= MAX_PENDING_EFFECTS
        };
        if full {
            flush_effects(sh);
        }
    }
}

/// Hands the pending effects to the daemon, in order (the buffer keeps its capacity).
fn flush_effects(sh: &Rc<Shared>) {
    for e in sh.pending.borrow_mut().drain(..) {
        let _ = sh.effects.send(e);
    }
}

fn send(sh: &Rc<Shared>, peer: Peer, local: SocketAddr, bytes: Payload) {
    match peer.transport {
        Transport::Udp => {
            let sock = sh.udp.iter().find(|(a, _)| *a == local).or_else(|| {
                sh.udp
                    .iter()
                    .find(|(a, _)| a.is_ipv4() == peer.addr.is_ipv4())
            });
            if let Some((_, s)) = sock {
                if let Err(e) = s.try_send_to(&bytes, peer.addr) {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        log::debug!("sip: udp send to {}: {e}", peer.addr);
                    }
                }
            }
        }
        Transport::Tcp => {
            let id = peer
                .conn
                .filter(|c| sh.conns.borrow().contains_key(c))
                .or_else(|| sh.conn_by_addr.borrow().get(&peer.addr).copied());
            if let Some(id) = id {
                let q = sh.conns.borrow().get(&id).cloned();
                if let Some(q) = q {
                    if q.try_send(bytes).is_err() {
                        log::warn!(
                            "sip: tcp connection to {} is backed up, message dropped",
                            peer.addr
                        );
                    }
                    return;
                }
            }
            tokio::task::spawn_local(connect_and_send(sh.clone(), peer.addr, local, bytes));
        }
    }
}

async fn connect_and_send(sh: Rc<Shared>, addr: SocketAddr, local: SocketAddr, bytes: Payload) {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    };
    let stream = match sock.and_then(|s| s.bind(SocketAddr::new(local.ip(), 0)).map(|_| s)) {
        Ok(s) => match tokio::time::timeout(Duration::from_secs(5), s.connect(addr)).await {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => {
                log::info!("sip: tcp connect to {addr}: {e}");
                return;
            }
            Err(_) => {
                log::info!("sip: tcp connect to {addr}: timed out");
                return;
            }
        },
        Err(e) => {
            log::info!("sip: tcp socket toward {addr}: {e}");
            return;
        }
    };
    let id = start_conn(&sh, stream, addr, local);
    let q = sh.conns.borrow().get(&id).cloned();
    if let Some(q) = q {
        let _ = q.send(bytes).await;
    }
}

async fn udp_loop(sh: Rc<Shared>, local: SocketAddr, sock: Rc<UdpSocket>) {
    let mut buf = vec![0u8; 65_536];
    let mut burst = 0;
    loop {
        if burst >= UDP_BURST {
            burst = 0;
            flush_effects(&sh);
            tokio::task::yield_now().await;
        }
        burst += 1;
        match sock.try_recv_from(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                burst = 0;
                flush_effects(&sh);
                if let Err(e) = sock.readable().await {
                    log::trace!("sip: udp {local}: {e}");
                }
            }
            Ok((n, from)) => {
                let Some(bytes) = buf.get(..n) else { continue };
                // Keepalives (CRLF) and tiny junk.
                if n <= 4 {
                    continue;
                }
                let peer = Peer {
                    transport: Transport::Udp,
                    addr: from,
                    conn: None,
                };
                feed(&sh, bytes, peer, local);
            }
            Err(e) => {
                // ICMP errors surface here on Linux (ECONNREFUSED); keep going.
                log::trace!("sip: udp {local}: {e}");
            }
        }
    }
}

async fn accept_loop(sh: Rc<Shared>, local: SocketAddr, l: TcpListener) {
    loop {
        match l.accept().await {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                start_conn(&sh, stream, from, local);
            }
            Err(e) => {
                log::warn!("sip: accept on {local}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Registers a connection and starts its reader and writer.
fn start_conn(sh: &Rc<Shared>, stream: TcpStream, peer: SocketAddr, local: SocketAddr) -> ConnId {
    let id = sh.next_conn.get();
    sh.next_conn.set(id + 1);
    let (q_tx, mut q_rx) = mpsc::channel::<Payload>(1024);
    sh.conns.borrow_mut().insert(id, q_tx);
    sh.conn_by_addr.borrow_mut().insert(peer, id);
    let (mut rd, mut wr) = stream.into_split();
    tokio::task::spawn_local(async move {
        while let Some(b) = q_rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    let sh2 = sh.clone();
    tokio::task::spawn_local(async move {
        let limits = Limits::default();
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 65_536];
        'read: loop {
            // What the messages of the previous read asked for goes out before this one.
            flush_effects(&sh2);
            let n = match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            loop {
                // Keepalive CRLFs between messages (RFC 5626 §3.5.1).
                let skip = buf
                    .iter()
                    .take_while(|b| **b == b'\r' || **b == b'\n')
                    .count();
                if skip > 0 {
                    buf.drain(..skip);
                }
                if buf.is_empty() {
                    break;
                }
                match callgate_sip::parse_with(&buf, &limits, Framing::Stream) {
                    Ok((_, used)) => {
                        let msg: Vec<u8> = buf.drain(..used.min(buf.len())).collect();
                        let p = Peer {
                            transport: Transport::Tcp,
                            addr: peer,
                            conn: Some(id),
                        };
                        feed(&sh2, &msg, p, local);
                    }
                    Err(e) if e.kind == callgate_sip::ErrorKind::Incomplete => {
                        if buf.len() > limits.max_message + limits.max_body {
                            break 'read;
                        }
                        break;
                    }
                    Err(_) => {
                        // Framing is lost on a stream: close it (RFC 3261 §18.3).
                        log::info!("sip: closing tcp connection from {peer}: unparseable message");
                        break 'read;
                    }
                }
            }
        }
        flush_effects(&sh2);
        sh2.conns.borrow_mut().remove(&id);
        let mut by = sh2.conn_by_addr.borrow_mut();
        if by.get(&peer) == Some(&id) {
            by.remove(&peer);
        }
    });
    id
}

/// Durable answer-time records: their held 2xx go to the callers.
async fn stored_loop(sh: Rc<Shared>, mut stored: mpsc::UnboundedReceiver<(u64, bool)>) {
    let mut out = Vec::new();
    while let Some((seq, ok)) = stored.recv().await {
        let n = now(sh.start);
        sh.core.borrow_mut().on_record_stored(n, seq, ok, &mut out);
        // Everything already reported goes in this round.
        while let Ok((seq, ok)) = stored.try_recv() {
            sh.core.borrow_mut().on_record_stored(n, seq, ok, &mut out);
        }
        execute(&sh, &mut out);
        flush_effects(&sh);
    }
}

async fn timer_loop(sh: Rc<Shared>) {
    loop {
        let next = sh.core.borrow().next_deadline();
        sh.timer_target.set(next);
        let wait = match next {
            Some(d) => {
                let n = now(sh.start).mono;
                Duration::from_millis(d.0.saturating_sub(n.0))
            }
            None => Duration::from_secs(3600),
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = sh.timer.notified() => continue,
            }
        }
        let mut out = Vec::new();
        sh.core.borrow_mut().on_timer(now(sh.start), &mut out);
        execute(&sh, &mut out);
        flush_effects(&sh);
    }
}
