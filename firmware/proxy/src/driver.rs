//! The proxy's I/O: one thread, a current-thread tokio runtime, the core inside.
//!
//! - One task per UDP socket receives datagrams, up to 16 per `recvmmsg(2)`, and feeds
//!   them to the core; what the core sends over UDP is queued and leaves with the effects
//!   (below), one `sendmmsg(2)` per socket and batch, never blocking (UDP may drop; the
//!   transaction layer retransmits). The `udp` submodule does both.
//! - One task per TCP listener accepts; one reader task per connection frames messages
//!   with a [`callgate_sip::StreamFramer`] (what it scanned it does not scan again; each
//!   message is parsed once, by the core) and a writer task drains that connection's
//!   queue. Requests to a TCP destination without a connection open one from our local
//!   address; later messages to that address wait in its queue while it connects.
//! - TCP is bounded by `[sip.tcp]` (the `tcp` submodule keeps the books): past
//!   `max_connections` open connections, or `max_connections_per_source` from one source
//!   address, a new inbound connection is closed at once (reset); ours count toward the
//!   total but are never refused. A connection is closed when neither a message nor a
//!   keepalive came for `idle_timeout_secs`, when a message begun does not complete its
//!   header section within `header_timeout_secs` or then its body within
//!   `body_timeout_secs` (slowloris, drips), when an incomplete message outgrows
//!   `max_buffer_bytes`, when its framing is lost, and when the peer stops reading what we
//!   send for 10 s (`WRITE_STALL`). Each refusal and cut is counted ([`SipHandle::tcp_stats`])
//!   and logged, rate-limited.
//! - TLS (`[sip.tls]`, the `tls` submodule) is TCP with a rustls session in between: one
//!   task per TLS listener accepts, and before any cryptography checks the per-source
//!   handshake rate, that the source is a carrier or a destination, and the `[sip.tcp]`
//!   caps; each handshake runs in its own task, cut at `handshake_timeout_secs`. An
//!   established connection is read, framed and timed by the same `StreamReader` as a TCP
//!   one, and written through its session. Requests to a TLS destination without a
//!   connection open one (the peer's certificate checked against its pinning); a message
//!   for a peer we may not connect to (a carrier without pinning) waits for nothing: it is
//!   dropped and logged.
//! - One timer task sleeps until [`Proxy::next_deadline`]; message handling wakes it when
//!   a nearer deadline appears.
//! - One task takes the store's reports of durable answer-time records
//!   ([`SipHandle::record_stored`]) to the core, which then sends the held 2xx.
//! - Pinholes, blocks and records leave as [`Effect`]s through the daemon's
//!   [`EffectSink`] (records to the record writer's queue, pinholes and blocks to the
//!   firewall's task), in order, in bursts: they wait
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
use callgate_router::guard::{self, LogLimiter};
use callgate_sip::{Limits, StreamFramer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::{JoinHandle, LocalSet};

mod bind;
mod tcp;
mod tls;
mod udp;

pub use tcp::TcpStats;
use tcp::{Book, Clock, Close, Dir, Refusal, TcpLimits};
use tls::TlsServer;
pub use tls::{TlsIdentity, TlsStats, TlsStatus};

use crate::{
    ActiveCall, ConnId, Millis, Now, Output, Payload, Peer, Proxy, Settings, Stats, Transport,
};

/// Where the sip thread hands its effects, in order, a burst at a time (see
/// [`flush_effects`]). It runs on the sip thread: it must only queue (a channel send), so
/// the daemon can route each kind straight to the thread that carries it out (records to
/// the record writer, pinholes to the firewall's task) without a hop through another.
pub type EffectSink = Box<dyn FnMut(Effect) + Send>;

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
        cdr: Box<callgate_cdr::Cdr>,
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
    TcpStats(oneshot::Sender<TcpStats>),
    TlsStatus(oneshot::Sender<TlsStatus>),
    TlsIdentity(Option<TlsIdentity>),
    Reconfigure(Arc<Config>),
    Resume(Vec<(u64, callgate_cdr::Cdr)>, oneshot::Sender<usize>),
    ForgetAll(oneshot::Sender<usize>),
    Drain(bool, oneshot::Sender<usize>),
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

    /// TCP connection counters since start (kept by the driver, apart from [`Stats`]).
    pub async fn tcp_stats(&self) -> Result<TcpStats, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::TcpStats(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// SIP over TLS: listeners, the installed certificate and its expiry, counters.
    pub async fn tls_status(&self) -> Result<TlsStatus, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::TlsStatus(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// A newly installed server certificate and key (`None`: none): TLS handshakes use it
    /// from now on; open connections keep theirs.
    pub async fn set_tls_identity(&self, id: Option<TlsIdentity>) -> Result<(), DriverError> {
        self.tx
            .send(Command::TlsIdentity(id))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// Carries on the calls of these answer-time records (id, record), as a pair node that
    /// takes over does with the records its peer replicated; calls it has already are
    /// skipped. Returns once they are in the proxy (their pinholes are on their way to the
    /// firewall): how many were taken on.
    pub async fn resume(
        &self,
        records: Vec<(u64, callgate_cdr::Cdr)>,
    ) -> Result<usize, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Resume(records, tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// Forgets every call (a pair node that stops being active; see
    /// [`Proxy::forget_all`]). Returns how many.
    pub async fn forget_all(&self) -> Result<usize, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::ForgetAll(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// A planned handover: `true` leaves new calls to the peer (see
    /// [`Proxy::set_draining`]), `false` takes them again. Returns how many calls are
    /// still in setup.
    pub async fn drain(&self, on: bool) -> Result<usize, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Drain(on, tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// Routes, caps and timeouts of a newly committed config (listen addresses need a
    /// restart; new TCP caps apply to new connections, new TCP timeouts to open ones too).
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
    /// The address each connection is aliased to (RFC 5923), also in `conn_by_addr`.
    aliases: RefCell<HashMap<ConnId, SocketAddr>>,
    next_conn: Cell<ConnId>,
    effects: RefCell<EffectSink>,
    timer: Notify,
    timer_target: Cell<Option<Millis>>,
    /// The output buffer `feed` reuses.
    out: Cell<Vec<Output>>,
    /// Effects of the messages handled since the last [`flush_effects`]: handed over in one
    /// burst when a socket has nothing more to read (or a timer round is done), so the
    /// daemon's side wakes once per burst rather than once per message.
    pending: RefCell<Vec<Effect>>,
    /// Datagrams to send, queued like the effects and sent by [`flush_effects`] with one
    /// `sendmmsg(2)` per socket and batch (and at once when a batch is full).
    udp_out: RefCell<udp::Outbox>,
    /// Open TCP connections against `[sip.tcp]`, and their counters.
    tcp: RefCell<Book>,
    /// Wakes every TCP reader when `[sip.tcp]` changes, to take up its new timeouts.
    tcp_changed: Notify,
    /// The buffer every TCP read goes into (one thread, one read at a time) before its
    /// connection's framer keeps what it needs: an idle connection holds no buffer.
    chunk: RefCell<Vec<u8>>,
    /// Log lines about TCP peers (attacker-reachable), rate-limited per kind.
    logs: RefCell<LogLimiter<&'static str>>,
    /// SIP over TLS: the acceptors (none without a certificate), why they could not be
    /// built, the identity they were built from, the handshake guard and the counters.
    tls: RefCell<Option<TlsServer>>,
    tls_problem: RefCell<Option<String>>,
    tls_identity: RefCell<Option<TlsIdentity>>,
    handshakes: RefCell<guard::FloodGuard>,
    tls_stats: RefCell<TlsStats>,
    tls_listen: Vec<SocketAddr>,
}

/// Datagrams read from one socket before its effects are handed over and the other tasks
/// get a turn (a flood on one socket starves neither the timers nor the other sockets).
const UDP_BURST: usize = 64;
/// Effects held back at most (beyond this they go at once).
const MAX_PENDING_EFFECTS: usize = 256;
/// Bytes of one TCP read at most.
const TCP_CHUNK: usize = 64 * 1024;
/// Messages queued toward one TCP connection at most (beyond this they are dropped; the
/// transaction layer does not retransmit over TCP, the peer's timers take over).
const TCP_QUEUE: usize = 1024;
/// A write to a TCP peer that makes no progress for this long closes the connection: a
/// peer that stops reading cannot pin its queue and our socket buffers.
const WRITE_STALL: Duration = Duration::from_secs(10);
/// How long a connection we open may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of one TLS read at most (one TLS record's plaintext).
const TLS_CHUNK: usize = 16 * 1024;

/// Binds every listen address (UDP and TCP) and starts the sip thread. Bind errors are
/// returned before anything runs.
///
/// `resumed`: the records (id, answer-time record) of calls that were in progress at the
/// last stop ([`callgate_cdr::Store::take_calls_in_progress`]); the core carries them on
/// ([`Proxy::resume`]) and an [`Effect::Resumed`] for each comes before anything else.
///
/// `tls`: the installed server certificate and key for the `[sip.tls]` listeners (they
/// refuse every connection without one).
///
/// `effects`: see [`EffectSink`].
pub fn spawn(
    cfg: Arc<Config>,
    effects: EffectSink,
    resumed: Vec<(u64, callgate_cdr::Cdr)>,
    tls: Option<TlsIdentity>,
) -> Result<(SipHandle, std::thread::JoinHandle<()>), DriverError> {
    #[cfg(debug_assertions)]
    if fault_armed() {
        log::warn!("sip: CALLGATE_FAULT_SIP_PANIC is set: the first message panics");
    }
    let listen = cfg.sip.listen_addrs();
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for a in &listen {
        let u = bind::udp(*a).map_err(|source| DriverError::Bind {
            addr: *a,
            transport: "udp",
            source,
        })?;
        u.set_nonblocking(true).map_err(DriverError::Thread)?;
        udp.push((*a, u));
        let t = bind::tcp(*a).map_err(|source| DriverError::Bind {
            addr: *a,
            transport: "tcp",
            source,
        })?;
        t.set_nonblocking(true).map_err(DriverError::Thread)?;
        tcp.push((*a, t));
    }
    let mut tls_listeners = Vec::new();
    for a in cfg.sip.tls.listen_addrs() {
        let t = bind::tcp(a).map_err(|source| DriverError::Bind {
            addr: a,
            transport: "tls",
            source,
        })?;
        t.set_nonblocking(true).map_err(DriverError::Thread)?;
        tls_listeners.push((a, t));
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
            let sockets = Sockets {
                udp,
                tcp,
                tls: tls_listeners,
            };
            local.block_on(&rt, run(cfg, sockets, rx, stored_rx, effects, resumed, tls));
        })
        .map_err(DriverError::Thread)?;
    Ok((SipHandle { tx, stored }, join))
}

/// The bound sockets the sip thread starts with.
struct Sockets {
    udp: Vec<(SocketAddr, std::net::UdpSocket)>,
    tcp: Vec<(SocketAddr, std::net::TcpListener)>,
    tls: Vec<(SocketAddr, std::net::TcpListener)>,
}

async fn run(
    cfg: Arc<Config>,
    Sockets { udp, tcp, tls }: Sockets,
    mut rx: mpsc::Receiver<Command>,
    stored: mpsc::UnboundedReceiver<(u64, bool)>,
    mut effects: EffectSink,
    resumed: Vec<(u64, callgate_cdr::Cdr)>,
    tls_identity: Option<TlsIdentity>,
) {
    let start = Instant::now();
    let mut core = Proxy::new(settings(&cfg), &cfg, now(start));
    let mut out = Vec::new();
    let mut carried = 0;
    for (id, cdr) in &resumed {
        match core.resume(now(start), cdr, &mut out) {
            Some(seq) => {
                carried += 1;
                effects(Effect::Resumed { seq, id: *id });
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
        aliases: RefCell::new(HashMap::new()),
        next_conn: Cell::new(1),
        effects: RefCell::new(effects),
        timer: Notify::new(),
        timer_target: Cell::new(None),
        out: Cell::new(Vec::with_capacity(16)),
        pending: RefCell::new(Vec::with_capacity(MAX_PENDING_EFFECTS)),
        udp_out: RefCell::new(udp::Outbox::new()),
        tcp: RefCell::new(Book::new(TcpLimits::from_config(&cfg))),
        tcp_changed: Notify::new(),
        chunk: RefCell::new(vec![0u8; TCP_CHUNK]),
        logs: RefCell::new(LogLimiter::new(5, 10_000, 32)),
        tls: RefCell::new(None),
        tls_problem: RefCell::new(None),
        tls_identity: RefCell::new(tls_identity),
        handshakes: RefCell::new(tls::handshake_guard(&cfg)),
        tls_stats: RefCell::new(TlsStats::default()),
        tls_listen: cfg.sip.tls.listen_addrs(),
    });
    rebuild_tls(&sh, &cfg);
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
    for (a, l) in tls {
        match TcpListener::from_std(l) {
            Ok(l) => {
                tokio::task::spawn_local(tls_accept_loop(sh.clone(), a, l));
            }
            Err(e) => log::error!("sip: tls {a}: {e}"),
        }
    }
    execute(&sh, &mut out);
    flush_effects(&sh);
    tokio::task::spawn_local(timer_loop(sh.clone()));
    tokio::task::spawn_local(stored_loop(sh.clone(), stored));
    log::info!("sip: proxy listening on {:?}", cfg.sip.listen_addrs());
    let mut cfg = cfg;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Calls(reply) => {
                let _ = reply.send(sh.core.borrow().active_calls());
            }
            Command::Stats(reply) => {
                let _ = reply.send(sh.core.borrow().stats());
            }
            Command::TcpStats(reply) => {
                let _ = reply.send(sh.tcp.borrow().stats());
            }
            Command::TlsStatus(reply) => {
                let _ = reply.send(tls_status(&sh, &cfg));
            }
            Command::TlsIdentity(id) => {
                *sh.tls_identity.borrow_mut() = id;
                rebuild_tls(&sh, &cfg);
            }
            Command::Reconfigure(new) => {
                cfg = new;
                *sh.handshakes.borrow_mut() = tls::handshake_guard(&cfg);
                rebuild_tls(&sh, &cfg);
                sh.tcp.borrow_mut().set_limits(TcpLimits::from_config(&cfg));
                sh.tcp_changed.notify_waiters();
                let n = now(sh.start);
                sh.core.borrow_mut().reconfigure(settings(&cfg), &cfg, n);
                sh.timer.notify_one();
            }
            Command::Resume(records, reply) => {
                let n = now(sh.start);
                let mut out = Vec::new();
                let mut carried = 0;
                for (id, cdr) in &records {
                    let seq = sh.core.borrow_mut().resume(n, cdr, &mut out);
                    if let Some(seq) = seq {
                        carried += 1;
                        (sh.effects.borrow_mut())(Effect::Resumed { seq, id: *id });
                    }
                }
                execute(&sh, &mut out);
                flush_effects(&sh);
                sh.timer.notify_one();
                let _ = reply.send(carried);
            }
            Command::Drain(on, reply) => {
                let _ = reply.send(sh.core.borrow_mut().set_draining(on));
            }
            Command::ForgetAll(reply) => {
                let n = now(sh.start);
                let mut out = Vec::new();
                let forgotten = sh
                    .core
                    .borrow_mut()
                    .forget_all(settings(&cfg), &cfg, n, &mut out);
                execute(&sh, &mut out);
                flush_effects(&sh);
                sh.timer.notify_one();
                let _ = reply.send(forgotten);
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
            Output::Alias { conn, addr } => {
                // Only while the connection is open; it is forgotten with it (one alias per
                // connection: the latest).
                if sh.conns.borrow().contains_key(&conn) {
                    let mut by = sh.conn_by_addr.borrow_mut();
                    if let Some(old) = sh.aliases.borrow_mut().insert(conn, addr) {
                        if by.get(&old) == Some(&conn) {
                            by.remove(&old);
                        }
                    }
                    by.insert(addr, conn);
                }
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

/// Hands the pending effects to the daemon, in order (the buffer keeps its capacity), then
/// sends the datagrams queued since the last flush.
fn flush_effects(sh: &Rc<Shared>) {
    let mut sink = sh.effects.borrow_mut();
    for e in sh.pending.borrow_mut().drain(..) {
        sink(e);
    }
    drop(sink);
    sh.udp_out.borrow_mut().flush(&sh.udp);
}

fn send(sh: &Rc<Shared>, peer: Peer, local: SocketAddr, bytes: Payload) {
    match peer.transport {
        Transport::Udp => {
            let sock = sh.udp.iter().position(|(a, _)| *a == local).or_else(|| {
                sh.udp
                    .iter()
                    .position(|(a, _)| a.is_ipv4() == peer.addr.is_ipv4())
            });
            if let Some(i) = sock {
                let full = sh.udp_out.borrow_mut().queue(i, peer.addr, bytes);
                if full {
                    sh.udp_out.borrow_mut().flush(&sh.udp);
                }
            }
        }
        Transport::Tcp | Transport::Tls => {
            let q = {
                let conns = sh.conns.borrow();
                peer.conn
                    .and_then(|c| conns.get(&c))
                    .or_else(|| {
                        let id = sh.conn_by_addr.borrow().get(&peer.addr).copied();
                        id.and_then(|id| conns.get(&id))
                    })
                    .cloned()
            };
            let q = match q {
                Some(q) => q,
                None if peer.transport == Transport::Tcp => connect(sh, peer.addr, local, None),
                None => {
                    let connector = sh.tls.borrow().as_ref().and_then(|t| {
                        t.connector_for(peer.addr.ip())
                            .map(|c| (c.clone(), t.handshake_timeout))
                    });
                    match connector {
                        Some(c) => connect(sh, peer.addr, local, Some(c)),
                        None => {
                            log_limited(sh, "tls-no-connection", log::Level::Warn, || {
                                format!(
                                    "tls: no connection with {} is open and none can be made (no certificate, or nothing to check its certificate by): message dropped",
                                    peer.addr
                                )
                            });
                            return;
                        }
                    }
                }
            };
            if q.try_send(bytes).is_err() {
                log_limited(sh, "tcp-backed-up", log::Level::Warn, || {
                    format!(
                        "tcp connection to {} is backed up, message dropped",
                        peer.addr
                    )
                });
            }
        }
    }
}

/// Logs `line` unless lines of this `kind` are over their rate (the count of those
/// suppressed goes with the next one logged).
fn log_limited(sh: &Shared, kind: &'static str, level: log::Level, line: impl FnOnce() -> String) {
    let at = guard::Millis(now(sh.start).mono.0);
    let Some(suppressed) = sh.logs.borrow_mut().allow(at, &kind) else {
        return;
    };
    if suppressed > 0 {
        log::log!(
            level,
            "sip: {} ({suppressed} similar lines suppressed)",
            line()
        );
    } else {
        log::log!(level, "sip: {}", line());
    }
}

/// Opens a connection of ours to `addr` from our address `local` (over TLS with `tls`: the
/// connector and the handshake's time limit): registered (and counted) at once, so what
/// else is sent to `addr` meanwhile waits in its queue rather than opening more; the
/// connect runs in its own task. Returns the queue.
fn connect(
    sh: &Rc<Shared>,
    addr: SocketAddr,
    local: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, Duration)>,
) -> mpsc::Sender<Payload> {
    sh.tcp.borrow_mut().opened();
    let (id, q_tx, q_rx) = register(sh, addr);
    let sh = sh.clone();
    tokio::task::spawn_local(async move {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let connected = match sock.and_then(|s| s.bind(SocketAddr::new(local.ip(), 0)).map(|_| s)) {
            Ok(s) => match tokio::time::timeout(CONNECT_TIMEOUT, s.connect(addr)).await {
                Ok(Ok(st)) => Ok(st),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            },
            Err(e) => Err(e.to_string()),
        };
        let stream = match connected {
            Ok(stream) => stream,
            Err(e) => {
                log_limited(&sh, "tcp-connect", log::Level::Info, || {
                    format!("tcp connect to {addr}: {e}")
                });
                unregister(&sh, id, addr, Dir::Outbound, Close::Peer);
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some((connector, limit)) = tls else {
            serve(sh, id, stream, addr, local, Dir::Outbound, q_rx).await;
            return;
        };
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        match tokio::time::timeout(limit, connector.connect(name, stream)).await {
            Ok(Ok(tls)) => {
                sh.tls_stats.borrow_mut().connected += 1;
                serve_tls(sh, id, tls, addr, local, Dir::Outbound, q_rx).await;
            }
            Ok(Err(e)) => {
                sh.tls_stats.borrow_mut().connect_failed += 1;
                log_limited(&sh, "tls-connect", log::Level::Warn, || {
                    format!("tls: handshake with {addr} (ours) failed: {e}")
                });
                unregister(&sh, id, addr, Dir::Outbound, Close::Peer);
            }
            Err(_) => {
                sh.tls_stats.borrow_mut().connect_failed += 1;
                log_limited(&sh, "tls-connect", log::Level::Warn, || {
                    format!("tls: handshake with {addr} (ours) not done in {limit:?}")
                });
                unregister(&sh, id, addr, Dir::Outbound, Close::Peer);
            }
        }
    });
    q_tx
}

async fn udp_loop(sh: Rc<Shared>, local: SocketAddr, sock: Rc<UdpSocket>) {
    let mut batch = udp::Batch::new();
    let mut burst = 0;
    loop {
        if burst >= UDP_BURST {
            burst = 0;
            flush_effects(&sh);
            tokio::task::yield_now().await;
        }
        // Whether the socket is empty: wait for the next datagram rather than ask again
        // (see `Batch::recv`).
        let drained = match batch.recv(&sock) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Ok((n, drained)) => {
                burst += n.max(1);
                for (bytes, from) in batch.received() {
                    // Keepalives (CRLF) and tiny junk.
                    if bytes.len() <= 4 {
                        continue;
                    }
                    let peer = Peer {
                        transport: Transport::Udp,
                        addr: from,
                        conn: None,
                    };
                    feed(&sh, bytes, peer, local);
                }
                drained
            }
            Err(e) => {
                // ICMP errors surface here on Linux (ECONNREFUSED); keep going.
                burst += 1;
                log::trace!("sip: udp {local}: {e}");
                false
            }
        };
        if drained {
            burst = 0;
            flush_effects(&sh);
            if let Err(e) = sock.readable().await {
                log::trace!("sip: udp {local}: {e}");
            }
        }
    }
}

async fn accept_loop(sh: Rc<Shared>, local: SocketAddr, l: TcpListener) {
    loop {
        match l.accept().await {
            Ok((stream, from)) => {
                let admitted = sh.tcp.borrow_mut().admit(from.ip());
                match admitted {
                    Ok(()) => {
                        let _ = stream.set_nodelay(true);
                        let (id, _, q_rx) = register(&sh, from);
                        let dir = Dir::Inbound(from.ip());
                        tokio::task::spawn_local(serve(
                            sh.clone(),
                            id,
                            stream,
                            from,
                            local,
                            dir,
                            q_rx,
                        ));
                    }
                    Err(why) => {
                        // Closed at once, with a reset: nothing of it stays with us.
                        let _ = stream.set_zero_linger();
                        drop(stream);
                        let (ip, limits) = (from.ip(), sh.tcp.borrow().limits());
                        let (kind, line) = match why {
                            Refusal::Total => (
                                "tcp-refused-total",
                                format!(
                                    "tcp: refused a connection from {ip}: max_connections ({}) are open",
                                    limits.max_connections
                                ),
                            ),
                            Refusal::Source => (
                                "tcp-refused-source",
                                format!(
                                    "tcp: refused a connection from {ip}: max_connections_per_source ({}) are open from it",
                                    limits.max_per_source
                                ),
                            ),
                        };
                        log_limited(&sh, kind, log::Level::Warn, || line);
                    }
                }
            }
            Err(e) => {
                log::warn!("sip: accept on {local}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Registers a connection to or from `peer`: its id and its queue.
fn register(
    sh: &Shared,
    peer: SocketAddr,
) -> (ConnId, mpsc::Sender<Payload>, mpsc::Receiver<Payload>) {
    let id = sh.next_conn.get();
    sh.next_conn.set(id + 1);
    let (q_tx, q_rx) = mpsc::channel::<Payload>(TCP_QUEUE);
    sh.conns.borrow_mut().insert(id, q_tx.clone());
    sh.conn_by_addr.borrow_mut().insert(peer, id);
    (id, q_tx, q_rx)
}

/// Forgets a connection (its queue closes) and counts it out.
fn unregister(sh: &Shared, id: ConnId, peer: SocketAddr, dir: Dir, why: Close) {
    sh.conns.borrow_mut().remove(&id);
    {
        let mut by = sh.conn_by_addr.borrow_mut();
        let alias = sh.aliases.borrow_mut().remove(&id);
        for a in std::iter::once(peer).chain(alias) {
            if by.get(&a) == Some(&id) {
                by.remove(&a);
            }
        }
    }
    sh.tcp.borrow_mut().closed(dir, why);
}

/// At most this much of a connection's queue goes out in one write (one TLS record holds
/// 16 KiB of it).
const WRITE_BATCH: usize = 16 * 1024;

/// Whether more than `first` is queued: then `buf` holds `first` and whatever else is
/// queued already, up to [`WRITE_BATCH`], to go out as one write. Under load a connection
/// carries many calls, and one `sendmsg` (over TLS, one record and one seal) for a burst
/// costs less than one per message. A lone message is written as it is, not copied.
fn gather(first: &[u8], q: &mut mpsc::Receiver<Payload>, buf: &mut Vec<u8>) -> bool {
    let Ok(next) = q.try_recv() else {
        return false;
    };
    buf.clear();
    buf.extend_from_slice(first);
    buf.extend_from_slice(&next);
    while buf.len() < WRITE_BATCH {
        match q.try_recv() {
            Ok(b) => buf.extend_from_slice(&b),
            Err(_) => break,
        }
    }
    true
}

/// Runs a registered connection: a writer task drains its queue, this task reads and frames
/// until the peer closes or the connection is cut (see the module docs).
async fn serve(
    sh: Rc<Shared>,
    id: ConnId,
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    dir: Dir,
    mut q_rx: mpsc::Receiver<Payload>,
) {
    let (rd, mut wr) = stream.into_split();
    let mut writer = tokio::task::spawn_local(async move {
        let mut buf = Vec::new();
        while let Some(b) = q_rx.recv().await {
            let bytes = if gather(&b, &mut q_rx, &mut buf) {
                &buf[..]
            } else {
                &b[..]
            };
            match tokio::time::timeout(WRITE_STALL, wr.write_all(bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Close::Peer,
                Err(_) => return Close::WriteStalled,
            }
        }
        Close::Peer
    });
    let why = read_messages(&sh, id, &rd, peer, local, &mut writer).await;
    ended(&sh, id, peer, dir, why, &writer, "tcp");
}

/// A connection's reader is done (`why`): the connection is forgotten and, when we cut it,
/// what is still queued is dropped.
fn ended(
    sh: &Rc<Shared>,
    id: ConnId,
    peer: SocketAddr,
    dir: Dir,
    why: Close,
    writer: &JoinHandle<Close>,
    proto: &str,
) {
    flush_effects(sh);
    unregister(sh, id, peer, dir, why);
    if why.is_cut() {
        // Now, whatever is still queued: the socket closes as this task ends.
        writer.abort();
        let kind = match why {
            Close::Idle => "tcp-idle",
            Close::HeaderTimeout | Close::BodyTimeout => "tcp-slow",
            _ => "tcp-cut",
        };
        log_limited(sh, kind, log::Level::Info, || {
            format!(
                "{proto}: closed the connection with {peer}: {}",
                why.as_str()
            )
        });
    }
    // Otherwise the writer sends what is queued (each write bounded by WRITE_STALL), then
    // ends with its queue, closing the socket.
}

/// Reads, frames and feeds the messages of one connection until it ends; why it ended.
async fn read_messages(
    sh: &Rc<Shared>,
    id: ConnId,
    rd: &OwnedReadHalf,
    peer: SocketAddr,
    local: SocketAddr,
    writer: &mut JoinHandle<Close>,
) -> Close {
    let mut r = StreamReader::new(Transport::Tcp, id, peer, local);
    let timeout = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timeout);
    loop {
        let (limits, why, room) = r.before_read(sh, timeout.as_mut(), TCP_CHUNK);
        tokio::select! {
            r = rd.readable() => if r.is_err() {
                return Close::Peer;
            },
            _ = &mut timeout => return why,
            w = &mut *writer => return w.unwrap_or(Close::Peer),
            _ = sh.tcp_changed.notified() => continue,
        }
        let mut chunk = sh.chunk.borrow_mut();
        let Some(buf) = chunk.get_mut(..room) else {
            return Close::Peer;
        };
        let n = match rd.try_read(buf) {
            Ok(0) => return Close::Peer,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Close::Peer,
        };
        if let Err(why) = r.took(sh, buf.get(..n).unwrap_or_default(), &limits) {
            return why;
        }
    }
}

/// What one connection's reader keeps between reads: its framer and its deadlines.
struct StreamReader {
    p: Peer,
    local: SocketAddr,
    framer: StreamFramer,
    clock: Clock,
}

impl StreamReader {
    fn new(transport: Transport, id: ConnId, peer: SocketAddr, local: SocketAddr) -> Self {
        StreamReader {
            p: Peer {
                transport,
                addr: peer,
                conn: Some(id),
            },
            local,
            framer: StreamFramer::new(Limits::default()),
            clock: Clock::new(tokio::time::Instant::now()),
        }
    }

    /// Before each read: what the messages of the previous read asked for goes out, and
    /// `timeout` is set to the next deadline. The limits, why that deadline closes the
    /// connection, and how many bytes the read may take (never more than one byte past the
    /// buffer cap: the framer holds at most that; at most `chunk`).
    fn before_read(
        &self,
        sh: &Rc<Shared>,
        timeout: std::pin::Pin<&mut tokio::time::Sleep>,
        chunk: usize,
    ) -> (TcpLimits, Close, usize) {
        flush_effects(sh);
        let limits = sh.tcp.borrow().limits();
        let (at, why) = self.clock.deadline(&limits);
        timeout.reset(at);
        let room = (limits.max_buffer + 1)
            .saturating_sub(self.framer.buffered())
            .clamp(1, chunk);
        (limits, why, room)
    }

    /// Frames what a read brought and feeds the messages it completed, and keeps the
    /// connection's clock; why the connection must close, if it must.
    fn took(&mut self, sh: &Rc<Shared>, bytes: &[u8], limits: &TcpLimits) -> Result<(), Close> {
        self.framer.push(bytes);
        let keepalives = self.framer.keepalive_bytes();
        let mut messages = 0;
        loop {
            match self.framer.next_message() {
                Ok(Some(msg)) => {
                    messages += 1;
                    feed(sh, msg, self.p, self.local);
                }
                Ok(None) => break,
                // Framing is lost on a stream: close it (RFC 3261 §18.3).
                Err(_) => return Err(Close::Framing),
            }
        }
        let keepalive = self.framer.keepalive_bytes() != keepalives;
        self.clock.after_read(
            tokio::time::Instant::now(),
            messages,
            keepalive,
            self.framer.phase(),
        );
        if self.framer.buffered() > limits.max_buffer {
            return Err(Close::BufferFull);
        }
        Ok(())
    }
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

/// Builds the TLS acceptors from `cfg` and the installed identity (none without one, or
/// when they cannot be built: then every TLS connection is refused and the reason shown).
fn rebuild_tls(sh: &Shared, cfg: &Config) {
    let id = sh.tls_identity.borrow().clone();
    let (server, problem) = match id {
        Some(id) if !sh.tls_listen.is_empty() => match TlsServer::build(cfg, &id) {
            Ok(s) => (Some(s), None),
            Err(e) => {
                log::error!("sip: tls: {e}: TLS connections are refused");
                (None, Some(e))
            }
        },
        _ => (None, None),
    };
    *sh.tls.borrow_mut() = server;
    *sh.tls_problem.borrow_mut() = problem;
}

fn tls_status(sh: &Shared, cfg: &Config) -> TlsStatus {
    let certificate = sh.tls_identity.borrow().as_ref().and_then(|id| {
        let chain = callgate_pki::certificates(&id.chain_pem).ok()?;
        callgate_pki::cert_info(&chain[0]).ok()
    });
    let mut s = TlsStatus {
        listen: sh.tls_listen.clone(),
        certificate,
        stats: sh.tls_stats.borrow().clone(),
        ..TlsStatus::default()
    };
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    s.assess(
        cfg.sip.tls.cert_warn_days(),
        now_secs,
        sh.tls_problem.borrow().as_deref(),
    );
    s
}

/// Why a TLS connection got no handshake.
#[derive(Debug, Clone, Copy)]
enum TlsRefusal {
    NoCertificate,
    NotPeer,
}

/// Accepts on one TLS listener: the handshake guard, then the source (a carrier or a
/// destination), then `[sip.tcp]`'s caps, all before any cryptography; each handshake
/// then runs in its own task, cut at `handshake_timeout_secs`.
async fn tls_accept_loop(sh: Rc<Shared>, local: SocketAddr, l: TcpListener) {
    loop {
        let (stream, from) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::warn!("sip: accept on {local} (tls): {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip = from.ip().to_canonical();
        let refuse = |stream: TcpStream| {
            // Closed at once, with a reset: nothing of it stays with us.
            let _ = stream.set_zero_linger();
            drop(stream);
        };
        let at = guard::Millis(now(sh.start).mono.0);
        let verdict = sh.handshakes.borrow_mut().check(at, ip, None);
        match verdict {
            guard::Verdict::Allow => {}
            guard::Verdict::Drop => {
                refuse(stream);
                sh.tls_stats.borrow_mut().refused_rate += 1;
                continue;
            }
            guard::Verdict::Block { ttl_secs } => {
                refuse(stream);
                {
                    let mut st = sh.tls_stats.borrow_mut();
                    st.refused_rate += 1;
                    st.blocked += 1;
                }
                log_limited(&sh, "tls-flood", log::Level::Warn, || {
                    format!("tls: {ip} floods handshakes: blocked for {ttl_secs} s")
                });
                sh.pending.borrow_mut().push(Effect::Block {
                    ip,
                    ttl: Duration::from_secs(u64::from(ttl_secs)),
                });
                flush_effects(&sh);
                continue;
            }
        }
        let chosen = match sh.tls.borrow().as_ref() {
            None => Err(TlsRefusal::NoCertificate),
            Some(t) => t
                .acceptor_for(ip)
                .map(|a| (a.clone(), t.handshake_timeout))
                .ok_or(TlsRefusal::NotPeer),
        };
        let (acceptor, limit) = match chosen {
            Ok(c) => c,
            Err(why) => {
                refuse(stream);
                let mut st = sh.tls_stats.borrow_mut();
                match why {
                    TlsRefusal::NoCertificate => st.refused_no_certificate += 1,
                    TlsRefusal::NotPeer => st.refused_not_peer += 1,
                }
                drop(st);
                log_limited(&sh, "tls-refused", log::Level::Info, || match why {
                    TlsRefusal::NoCertificate => {
                        format!("tls: refused {from}: no certificate is installed")
                    }
                    TlsRefusal::NotPeer => {
                        format!("tls: refused {from}: neither a carrier nor a destination")
                    }
                });
                continue;
            }
        };
        let admitted = sh.tcp.borrow_mut().admit(ip);
        if admitted.is_err() {
            refuse(stream);
            log_limited(&sh, "tls-refused-caps", log::Level::Warn, || {
                format!("tls: refused a connection from {ip}: [sip.tcp] connection caps reached")
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        let sh = sh.clone();
        tokio::task::spawn_local(async move {
            let dir = Dir::Inbound(ip);
            match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    sh.tls_stats.borrow_mut().handshakes += 1;
                    let (id, _, q_rx) = register(&sh, from);
                    serve_tls(sh, id, tls, from, local, dir, q_rx).await;
                }
                Ok(Err(e)) => {
                    sh.tls_stats.borrow_mut().handshakes_failed += 1;
                    sh.tcp.borrow_mut().closed(dir, Close::Peer);
                    log_limited(&sh, "tls-handshake", log::Level::Info, || {
                        format!("tls: handshake with {from} failed: {e}")
                    });
                }
                Err(_) => {
                    sh.tls_stats.borrow_mut().handshakes_timed_out += 1;
                    sh.tcp.borrow_mut().closed(dir, Close::Peer);
                    log_limited(&sh, "tls-handshake-slow", log::Level::Info, || {
                        format!("tls: handshake with {from} not done in {limit:?}: cut")
                    });
                }
            }
        });
    }
}

/// Runs an established TLS connection like [`serve`]: a writer task puts its queue
/// through the session, this task decrypts, frames and feeds.
async fn serve_tls<S>(
    sh: Rc<Shared>,
    id: ConnId,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
    dir: Dir,
    mut q_rx: mpsc::Receiver<Payload>,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut writer = tokio::task::spawn_local(async move {
        let mut buf = Vec::new();
        while let Some(b) = q_rx.recv().await {
            let bytes = if gather(&b, &mut q_rx, &mut buf) {
                &buf[..]
            } else {
                &b[..]
            };
            let write = async {
                wr.write_all(bytes).await?;
                wr.flush().await
            };
            match tokio::time::timeout(WRITE_STALL, write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Close::Peer,
                Err(_) => return Close::WriteStalled,
            }
        }
        // The queue closed: a close_notify, then the socket closes.
        let _ = tokio::time::timeout(WRITE_STALL, wr.shutdown()).await;
        Close::Peer
    });
    let why = read_tls(&sh, id, &mut rd, peer, local, &mut writer).await;
    ended(&sh, id, peer, dir, why, &writer, "tls");
}

/// [`read_messages`] for a TLS connection: the same deadlines and framing, on the
/// session's plaintext.
async fn read_tls<R: AsyncRead + Unpin>(
    sh: &Rc<Shared>,
    id: ConnId,
    rd: &mut R,
    peer: SocketAddr,
    local: SocketAddr,
    writer: &mut JoinHandle<Close>,
) -> Close {
    let mut r = StreamReader::new(Transport::Tls, id, peer, local);
    let timeout = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timeout);
    let mut buf = vec![0u8; TLS_CHUNK];
    loop {
        let (limits, why, room) = r.before_read(sh, timeout.as_mut(), TLS_CHUNK);
        let Some(into) = buf.get_mut(..room) else {
            return Close::Peer;
        };
        let n = tokio::select! {
            r = rd.read(into) => match r {
                Ok(0) | Err(_) => return Close::Peer,
                Ok(n) => n,
            },
            _ = &mut timeout => return why,
            w = &mut *writer => return w.unwrap_or(Close::Peer),
            _ = sh.tcp_changed.notified() => continue,
        };
        if let Err(why) = r.took(sh, buf.get(..n).unwrap_or_default(), &limits) {
            return why;
        }
    }
}
