//! The heartbeat thread: sockets, link watch, clock and VIPs around the pure election.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use callgate_pair::{
    new_session, open, seal, Election, ElectionConfig, Millis, NodeId, PairKey, PathId, Reject,
    ReplayGate, Role, WireError,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Serialize;
use tokio::sync::watch;

use crate::guard::{ALIVE, ARM, DISARM};
use crate::rtnl::{LinkState, LinkWatch, Rtnl};
use crate::vip::{ifindex, release_all, VipSpec, Vips};
use crate::HaError;

/// One heartbeat path from this appliance's side.
#[derive(Debug, Clone)]
pub struct PathSettings {
    /// The zone it runs through (for display).
    pub zone: String,
    /// The interface it leaves by (its link state counts).
    pub interface: String,
    pub local: IpAddr,
    pub peer: IpAddr,
}

/// Everything the heartbeat thread needs, resolved from the config and the pairing.
pub struct HaSettings {
    pub node_name: String,
    pub peer_name: String,
    /// This appliance's index in `[[pair.node]]`: its id on the wire.
    pub node: u8,
    pub priority: u8,
    pub interval: Duration,
    pub misses: u32,
    pub preempt_delay: Option<Duration>,
    pub late_after: Duration,
    pub port: u16,
    pub paths: Vec<PathSettings>,
    pub vips: Vec<VipSpec>,
    /// Interfaces whose links make up this appliance's health.
    pub monitored: Vec<String>,
    pub key: PairKey,
    /// The executable to run as the VIP guard (`callgated`), or none (tests without VIPs).
    pub guard_exe: Option<std::path::PathBuf>,
    /// Called around role changes.
    pub hooks: Option<std::sync::Arc<dyn Hooks>>,
}

/// Why heartbeats were refused, by reason.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Rejects {
    pub wrong_source: u64,
    pub length: u64,
    pub header: u64,
    pub auth: u64,
    pub field: u64,
    pub replay: u64,
    pub unknown_session: u64,
}

/// One path as `show pair` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PathStatus {
    pub zone: String,
    pub interface: String,
    pub local: IpAddr,
    pub peer: IpAddr,
    pub link_up: bool,
    /// Milliseconds since the last accepted heartbeat on this path.
    pub last_heard_ms: Option<u64>,
    pub received: u64,
    pub sent: u64,
}

/// What `show pair` shows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PairStatus {
    pub node: String,
    pub peer: String,
    pub role: String,
    pub term: u64,
    pub priority: u8,
    pub health: u8,
    pub peer_alive: bool,
    pub peer_role: Option<String>,
    pub peer_term: Option<u64>,
    pub peer_priority: Option<u8>,
    pub peer_health: Option<u8>,
    /// Whether the peer says it holds this node's state (replication).
    pub peer_synced: bool,
    pub vips_held: bool,
    pub vips: Vec<String>,
    pub transitions: u64,
    pub last_transition: Option<String>,
    pub late_ticks: u64,
    pub paths: Vec<PathStatus>,
    pub rejected: Rejects,
    /// Whether this node holds its peer's calls in progress.
    pub synced: bool,
    /// Re-keys since start.
    pub rekeys: u64,
}

enum Cmd {
    Handover,
    Stop,
    Synced(bool),
    Rekey(Box<PairKey>),
    AcceptKey(Box<PairKey>),
}

/// How long heartbeats under the previous pair key are still opened after a re-key.
pub const REKEY_OVERLAP: Duration = Duration::from_secs(10);

/// A view of the heartbeat thread: its status, and the planned handover.
#[derive(Debug, Clone)]
pub struct HaHandle {
    status: watch::Receiver<PairStatus>,
    cmd: mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Handover => "Handover",
            Cmd::Stop => "Stop",
            Cmd::Synced(_) => "Synced",
            Cmd::Rekey(_) => "Rekey",
            Cmd::AcceptKey(_) => "AcceptKey",
        })
    }
}

impl HaHandle {
    pub fn status(&self) -> PairStatus {
        self.status.borrow().clone()
    }

    /// The status as it changes.
    pub fn watch(&self) -> watch::Receiver<PairStatus> {
        self.status.clone()
    }

    /// Asks the peer to take over (planned failover); the addresses move when it has.
    pub fn handover(&self) -> bool {
        self.cmd.send(Cmd::Handover).is_ok()
    }

    /// A new pair key: heartbeats are sealed under it from now on, and those of the old
    /// one are still opened for [`REKEY_OVERLAP`] (until the peer has switched too).
    pub fn rekey(&self, key: PairKey) -> bool {
        self.cmd.send(Cmd::Rekey(Box::new(key))).is_ok()
    }

    /// Opens heartbeats under `key` too, for [`REKEY_OVERLAP`], still sealing under the
    /// current one (the side that starts a re-key, until the peer has the new key).
    pub fn accept_key(&self, key: PairKey) -> bool {
        self.cmd.send(Cmd::AcceptKey(Box::new(key))).is_ok()
    }

    /// Whether this node holds its peer's state (replication): only a synced standby
    /// takes over by preemption or handover.
    pub fn set_synced(&self, synced: bool) {
        let _ = self.cmd.send(Cmd::Synced(synced));
    }
}

impl std::fmt::Debug for HaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaSettings")
            .field("node", &self.node_name)
            .field("peer", &self.peer_name)
            .field("paths", &self.paths)
            .field("vips", &self.vips)
            .finish_non_exhaustive()
    }
}

/// What the daemon does around a role change, called on the heartbeat thread. Neither
/// call may block: the thread keeps ticking while the daemon does the work elsewhere.
pub trait Hooks: Send + Sync {
    /// Before the addresses are taken: start injecting the replicated state (calls in
    /// progress, pinholes) and drop `ready` when it is in place. The addresses are taken
    /// then, or after [`ACTIVATE_WAIT`] whatever happened.
    fn activating(&self, ready: Ready);
    /// After the addresses are released, or when an activation is given up before they
    /// were taken: drop what only the active may hold. Calls to both are made in order;
    /// the daemon must carry them out in that order.
    fn deactivated(&self);
}

/// How long a takeover waits for [`Hooks::activating`] before it takes the addresses
/// anyway: a late proxy must not turn a failover into an outage.
pub const ACTIVATE_WAIT: Duration = Duration::from_millis(500);

/// Said when the state a takeover needs is in place: dropping it wakes the heartbeat
/// thread, which then takes the addresses.
#[derive(Debug)]
pub struct Ready {
    generation: u64,
    wake: Option<std::os::unix::net::UnixDatagram>,
}

impl Drop for Ready {
    fn drop(&mut self) {
        if let Some(w) = self.wake.take() {
            // Full or gone: the thread takes the addresses at its deadline anyway.
            let _ = w.send(&self.generation.to_be_bytes());
        }
    }
}

/// The heartbeat thread itself, owned by whoever may stop it.
#[derive(Debug)]
pub struct HaThread {
    cmd: mpsc::Sender<Cmd>,
    thread: std::thread::JoinHandle<()>,
}

impl HaThread {
    /// Steps down (telling the peer), releases the addresses and ends the thread.
    pub fn stop(self, deadline: Duration) {
        let _ = self.cmd.send(Cmd::Stop);
        let start = Instant::now();
        while !self.thread.is_finished() && start.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        } else {
            log::warn!("the heartbeat thread did not stop within {deadline:?}");
        }
    }
}

/// Starts the heartbeat thread. The virtual addresses are released first: whatever a
/// previous run left is not ours until the election says so.
pub fn spawn(s: HaSettings) -> Result<(HaHandle, HaThread), HaError> {
    let failed = release_all(&s.vips);
    if failed > 0 {
        log::warn!("{failed} virtual address(es) could not be released at start");
    }
    let guard = match &s.guard_exe {
        Some(exe) => Some(spawn_guard(exe, &s)?),
        None => None,
    };
    let mut node = Node::new(s, guard)?;
    let (tx, rx) = watch::channel(node.status());
    node.status_tx = Some(tx);
    let (cmd_tx, cmd_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("callgate-ha".into())
        .spawn(move || {
            crate::realtime("heartbeat thread");
            node.run(cmd_rx)
        })
        .map_err(|e| HaError::Socket {
            what: "spawn the heartbeat thread",
            source: e,
        })?;
    Ok((
        HaHandle {
            status: rx,
            cmd: cmd_tx.clone(),
        },
        HaThread {
            cmd: cmd_tx,
            thread,
        },
    ))
}

fn spawn_guard(exe: &std::path::Path, s: &HaSettings) -> Result<(Child, ChildStdin), HaError> {
    // Silent longer than our own late-timer limit, shorter than the peer's dead interval.
    let dead = s.interval * s.misses;
    let silence = (s.interval + s.late_after + Duration::from_millis(10)).min(dead * 9 / 10);
    let mut cmd = Command::new(exe);
    // Its own process group: a kill aimed at the daemon's group must not take the guard.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.arg("--vip-guard")
        .arg(silence.as_millis().to_string())
        .args(
            s.vips
                .iter()
                .map(|v| format!("{}={}/{}", v.interface, v.addr, v.prefix)),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = cmd.spawn().map_err(HaError::Guard)?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| HaError::Guard(std::io::Error::other("no pipe to the guard")))?;
    Ok((child, stdin))
}

struct Path {
    s: PathSettings,
    id: PathId,
    sock: UdpSocket,
    peer: SocketAddr,
    ifindex: u32,
    link_up: bool,
    last_heard: Option<Instant>,
    received: u64,
    sent: u64,
}

struct Node {
    s: HaSettings,
    start: Instant,
    election: Election,
    gate: ReplayGate,
    session: u64,
    seq: u64,
    paths: Vec<Path>,
    links: LinkWatch,
    rtnl: Rtnl,
    /// Monitored interfaces by index, and whether they are up.
    monitored: BTreeMap<u32, bool>,
    vips: Vips,
    guard: Option<(Child, ChildStdin)>,
    rejects: Rejects,
    transitions: u64,
    last_transition: Option<String>,
    late_ticks: u64,
    last_tick: Option<Instant>,
    /// Where `show pair` reads from (published on every role change and every 100 ms).
    status_tx: Option<watch::Sender<PairStatus>>,
    synced: bool,
    /// Other pair keys still opened (the one before a re-key, the one a re-key is about
    /// to bring), each until a deadline.
    other_keys: Vec<(PairKey, Instant)>,
    rekeys: u64,
    /// Taking over from a live active (health, handover, preemption): the addresses wait
    /// until it says it released them, or until this deadline, so that the two never hold
    /// them at once.
    take_after: Option<Instant>,
    /// An activation under way: its generation, and when the addresses are taken without it.
    activation: Option<(u64, Instant)>,
    generations: u64,
    /// Where a dropped [`Ready`] says so (the other end goes with each `Ready`).
    ready_rx: std::os::unix::net::UnixDatagram,
    ready_tx: std::os::unix::net::UnixDatagram,
}

/// A fresh session id. The kernel's random number generator does not fail on a running
/// Linux system; if it ever did, a heartbeat thread without one could not be trusted.
fn random_session() -> Result<u64, HaError> {
    new_session().map_err(|e| HaError::Socket {
        what: "random session id",
        source: std::io::Error::other(e.to_string()),
    })
}

impl Node {
    fn new(s: HaSettings, guard: Option<(Child, ChildStdin)>) -> Result<Node, HaError> {
        let mut rtnl = Rtnl::open()?;
        let mut paths = Vec::with_capacity(s.paths.len());
        for (i, p) in s.paths.iter().enumerate() {
            let sock =
                UdpSocket::bind(SocketAddr::new(p.local, s.port)).map_err(|e| HaError::Socket {
                    what: "bind a heartbeat socket",
                    source: e,
                })?;
            sock.set_nonblocking(true).map_err(|e| HaError::Socket {
                what: "heartbeat socket nonblocking",
                source: e,
            })?;
            // CS6 (network control): heartbeats go ahead of bulk traffic where QoS exists.
            let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpTos, &0xc0);
            let idx = ifindex(&p.interface)?;
            let link_up = rtnl.link(idx).map(|l| l.up).unwrap_or(false);
            paths.push(Path {
                s: p.clone(),
                id: u8::try_from(i)
                    .ok()
                    .and_then(|i| PathId::try_from(i).ok())
                    .ok_or(HaError::Config(
                        "more heartbeat paths than the wire carries",
                    ))?,
                sock,
                peer: SocketAddr::new(p.peer, s.port),
                ifindex: idx,
                link_up,
                last_heard: None,
                received: 0,
                sent: 0,
            });
        }
        let mut monitored = BTreeMap::new();
        for name in &s.monitored {
            let idx = ifindex(name)?;
            let up = rtnl.link(idx).map(|l| l.up).unwrap_or(false);
            monitored.insert(idx, up);
        }
        let ms = |d: Duration| Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let node_id = NodeId::try_from(s.node).map_err(|_| HaError::Config("node id"))?;
        let cfg = ElectionConfig {
            node: node_id,
            priority: s.priority,
            interval: ms(s.interval),
            misses: s.misses,
            paths: u8::try_from(paths.len()).unwrap_or(u8::MAX),
            preempt_delay: s.preempt_delay.map(ms),
            late_after: ms(s.late_after),
            fence_hold: ms(s.interval * s.misses * 2),
            link_up_grace: Millis(1_000),
        };
        let start = Instant::now();
        let mut election =
            Election::new(cfg, Millis(0)).map_err(|e| HaError::Election(e.to_string()))?;
        // Without replication (no hooks) a standby has all there is to have; with it,
        // it is synced once it holds its peer's calls in progress.
        let synced = s.hooks.is_none();
        election.set_synced(synced);
        for p in &paths {
            if !p.link_up {
                election.on_link(Millis(0), p.id, false);
            }
        }
        let vips = Vips::new(&s.vips)?;
        let gate = ReplayGate::new(node_id.peer());
        let session = random_session()?;
        let (ready_rx, ready_tx) =
            std::os::unix::net::UnixDatagram::pair().map_err(|e| HaError::Socket {
                what: "activation wake-up socket",
                source: e,
            })?;
        ready_rx
            .set_nonblocking(true)
            .and_then(|()| ready_tx.set_nonblocking(true))
            .map_err(|e| HaError::Socket {
                what: "activation wake-up socket nonblocking",
                source: e,
            })?;
        let mut node = Node {
            links: LinkWatch::open()?,
            rtnl,
            s,
            start,
            election,
            gate,
            session,
            seq: 0,
            paths,
            monitored,
            vips,
            guard,
            rejects: Rejects::default(),
            transitions: 0,
            last_transition: None,
            late_ticks: 0,
            last_tick: None,
            status_tx: None,
            synced,
            other_keys: Vec::new(),
            rekeys: 0,
            take_after: None,
            activation: None,
            generations: 0,
            ready_rx,
            ready_tx,
        };
        let h = node.health();
        node.election.set_health(h);
        Ok(node)
    }

    fn now_ms(&self, now: Instant) -> Millis {
        Millis(u64::try_from(now.duration_since(self.start).as_millis()).unwrap_or(u64::MAX))
    }

    fn health(&self) -> u8 {
        if self.monitored.is_empty() {
            return 100;
        }
        let up = self.monitored.values().filter(|u| **u).count();
        u8::try_from(up * 100 / self.monitored.len()).unwrap_or(100)
    }

    fn guard_send(&mut self, b: u8) {
        if let Some((_, pipe)) = &mut self.guard {
            if let Err(e) = pipe.write_all(&[b]) {
                log::error!("the VIP guard is gone ({e}); addresses are no longer released if this daemon dies");
                self.guard = None;
            }
        }
    }

    fn publish(&self) {
        if let Some(tx) = &self.status_tx {
            tx.send_replace(self.status());
        }
    }

    fn run(mut self, cmds: mpsc::Receiver<Cmd>) {
        let interval = self.s.interval;
        let mut next_tick = Instant::now();
        let mut last_publish = Instant::now();
        let mut buf = [0u8; 2048];
        let mut changes = Vec::new();
        loop {
            // Commands (checked every wake-up; a tick is at most one interval away).
            match cmds.try_recv() {
                Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                    self.leave();
                    self.publish();
                    return;
                }
                Ok(Cmd::Handover) => {
                    let now = self.now_ms(Instant::now());
                    self.election.request_handover(now);
                }
                Ok(Cmd::Synced(v)) => {
                    self.election.set_synced(v);
                    self.synced = v;
                }
                Ok(Cmd::Rekey(key)) => {
                    let old = std::mem::replace(&mut self.s.key, *key);
                    self.other_keys.push((old, Instant::now() + REKEY_OVERLAP));
                    self.rekeys += 1;
                    log::warn!("pair: heartbeats now sealed under a new pair key");
                }
                Ok(Cmd::AcceptKey(key)) => {
                    self.other_keys.push((*key, Instant::now() + REKEY_OVERLAP));
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }

            let now = Instant::now();
            // 1. Heartbeats from the peer.
            for i in 0..self.paths.len() {
                // A bounded batch per wake-up: a flood on one path cannot keep the tick
                // from running (the rest stays queued in the socket, or is dropped by it).
                for _ in 0..256 {
                    let Ok((n, from)) = self.paths[i].sock.recv_from(&mut buf) else {
                        break;
                    };
                    self.on_datagram(i, &buf[..n], from, now);
                }
            }
            // 2. Links.
            changes.clear();
            if let Err(e) = self.links.drain(&mut changes) {
                log::warn!("link watch: {e}; reading the links again");
                self.reread_links(&mut changes);
            }
            if !changes.is_empty() {
                self.on_links(&changes, now);
            }
            // 3. The tick: liveness, lateness, our own heartbeat.
            if now >= next_tick {
                let t = self.now_ms(now);
                if let Some(tr) = self.election.on_tick(t) {
                    self.on_transition(tr, now);
                }
                self.check_peer_lost();
                if let Some(prev) = self.last_tick {
                    if now.duration_since(prev) > interval + self.s.late_after {
                        self.late_ticks += 1;
                    }
                }
                self.last_tick = Some(now);
                self.send_heartbeats();
                self.guard_send(ALIVE);
                next_tick += interval;
                if next_tick <= now {
                    next_tick = now + interval;
                }
            }
            // 4. Carry out the role.
            self.apply_role(now);
            self.vips.poll(now);
            // 5. Publish (often enough for `show pair`, cheap enough to ignore).
            if now.duration_since(last_publish) >= Duration::from_millis(100) {
                self.publish();
                last_publish = now;
            }
            // 6. Sleep until the next tick or announcement, or a packet or a link change.
            let mut wake = next_tick;
            if let Some(d) = self.vips.next_due() {
                wake = wake.min(d);
            }
            if let Some((_, d)) = self.activation {
                wake = wake.min(d);
            }
            let wait = wake.saturating_duration_since(Instant::now());
            let timeout = PollTimeout::try_from(wait.as_millis().min(1000) as i32)
                .unwrap_or(PollTimeout::ZERO);
            let mut fds: Vec<PollFd<'_>> = self
                .paths
                .iter()
                .map(|p| PollFd::new(p.sock.as_fd(), PollFlags::POLLIN))
                .collect();
            fds.push(PollFd::new(self.links.fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(self.ready_rx.as_fd(), PollFlags::POLLIN));
            let _ = poll(&mut fds, timeout);
        }
    }

    fn on_datagram(&mut self, i: usize, bytes: &[u8], from: SocketAddr, now: Instant) {
        if from != self.paths[i].peer {
            self.rejects.wrong_source += 1;
            return;
        }
        self.other_keys.retain(|(_, until)| now < *until);
        let mut opened = open(&self.s.key, bytes);
        for (k, _) in &self.other_keys {
            if !matches!(opened, Err(WireError::Auth)) {
                break;
            }
            opened = open(k, bytes);
        }
        let hb = match opened {
            Ok(hb) => hb,
            Err(e) => {
                match e {
                    WireError::Length { .. } => self.rejects.length += 1,
                    WireError::Auth => self.rejects.auth += 1,
                    WireError::Field(_) => self.rejects.field += 1,
                    _ => self.rejects.header += 1,
                }
                return;
            }
        };
        if hb.path != self.paths[i].id {
            // Authentic, but sent on another path: somebody moved it.
            self.rejects.field += 1;
            return;
        }
        match self.gate.check(&hb, self.session) {
            Ok(_) => {}
            Err(Reject::Replay | Reject::TooOld) => {
                self.rejects.replay += 1;
                return;
            }
            Err(Reject::Superseded) => {
                // The peer moved to a new session: so do we (see callgate_pair::replay).
                self.renew_session();
                return;
            }
            Err(_) => {
                self.rejects.unknown_session += 1;
                return;
            }
        }
        let p = &mut self.paths[i];
        p.last_heard = Some(now);
        p.received += 1;
        let id = p.id;
        let t = self.now_ms(now);
        if let Some(tr) = self.election.on_heartbeat(t, id, &hb) {
            self.on_transition(tr, now);
        }
        self.check_peer_lost();
    }

    fn renew_session(&mut self) {
        match random_session() {
            Ok(s) => self.session = s,
            Err(e) => log::error!("pair: {e}"),
        }
    }

    /// When the election has given the peer up, so does the replay gate, and this node
    /// starts a new session (a replayed datagram can never echo it).
    fn check_peer_lost(&mut self) {
        if self.election.take_peer_lost() {
            self.gate.peer_lost();
            self.renew_session();
        }
    }

    fn reread_links(&mut self, out: &mut Vec<LinkState>) {
        let idx: Vec<u32> = self
            .paths
            .iter()
            .map(|p| p.ifindex)
            .chain(self.monitored.keys().copied())
            .collect();
        for i in idx {
            match self.rtnl.link(i) {
                Ok(l) => out.push(l),
                Err(_) => out.push(LinkState {
                    index: i,
                    up: false,
                    mac: None,
                }),
            }
        }
    }

    fn on_links(&mut self, changes: &[LinkState], now: Instant) {
        let t = self.now_ms(now);
        let mut transitions = Vec::new();
        for c in changes {
            for p in &mut self.paths {
                if p.ifindex == c.index && p.link_up != c.up {
                    p.link_up = c.up;
                    log::warn!(
                        "heartbeat path {} ({}): link {}",
                        p.s.zone,
                        p.s.interface,
                        if c.up { "up" } else { "down" }
                    );
                    if let Some(tr) = self.election.on_link(t, p.id, c.up) {
                        transitions.push(tr);
                    }
                }
            }
            if let Some(up) = self.monitored.get_mut(&c.index) {
                *up = c.up;
            }
        }
        let h = self.health();
        self.election.set_health(h);
        for tr in transitions {
            self.on_transition(tr, now);
        }
        self.check_peer_lost();
    }

    fn on_transition(&mut self, tr: callgate_pair::Transition, now: Instant) {
        self.transitions += 1;
        let text = format!(
            "{:?} → {:?} (term {}, {:?})",
            tr.from, tr.to, tr.term, tr.reason
        );
        log::warn!("pair: {text}");
        self.last_transition = Some(text);
        let peer_active = self
            .election
            .peer()
            .is_some_and(|p| p.live && p.role == callgate_pair::WireRole::Active);
        self.take_after = (tr.to == Role::Active && peer_active).then(|| now + self.s.interval * 3);
        self.apply_role(now);
        if tr.from != tr.to {
            // Tell the peer at once rather than at the next tick.
            self.send_heartbeats();
        }
        self.publish();
    }

    /// Holds the addresses exactly while active: first the state (calls in progress,
    /// their pinholes, injected by the daemon while this thread keeps ticking), then the
    /// addresses.
    fn apply_role(&mut self, now: Instant) {
        let active = self.election.role() == Role::Active;
        if active && !self.vips.held() {
            if let Some(deadline) = self.take_after {
                let peer_holds = self
                    .election
                    .peer()
                    .is_some_and(|p| p.live && p.role == callgate_pair::WireRole::Active);
                if peer_holds && now < deadline {
                    return; // its next heartbeat says it released them
                }
                self.take_after = None;
            }
            if !self.activated(now) {
                return;
            }
            self.guard_send(ARM);
            let failed = self.vips.take(now);
            log::warn!(
                "pair: active; {} virtual address(es) taken{}",
                self.s.vips.len(),
                if failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                }
            );
        } else if !active && self.vips.held() {
            let failed = self.vips.release();
            self.guard_send(DISARM);
            log::warn!("pair: not active; virtual addresses released ({failed} failed)");
            if let Some(h) = &self.s.hooks {
                h.deactivated();
            }
        } else if !active && self.activation.take().is_some() {
            log::warn!("pair: not active any more; the takeover is given up");
            if let Some(h) = &self.s.hooks {
                h.deactivated();
            }
        }
    }

    /// Starts the activation hook, or says whether the one under way is done (or late).
    fn activated(&mut self, now: Instant) -> bool {
        let Some(h) = self.s.hooks.clone() else {
            return true;
        };
        let (generation, deadline) = match self.activation {
            Some(a) => a,
            None => {
                self.generations += 1;
                let a = (self.generations, now + ACTIVATE_WAIT);
                self.activation = Some(a);
                h.activating(Ready {
                    generation: a.0,
                    wake: self.ready_tx.try_clone().ok(),
                });
                a
            }
        };
        let mut buf = [0u8; 8];
        let mut done = false;
        while let Ok(8) = self.ready_rx.recv(&mut buf) {
            done |= u64::from_be_bytes(buf) == generation;
        }
        if !done && now < deadline {
            return false;
        }
        if !done {
            log::error!("pair: taking over: the state was not in place within {ACTIVATE_WAIT:?}; taking the addresses anyway");
        }
        self.activation = None;
        true
    }

    fn send_heartbeats(&mut self) {
        let f = self.election.outgoing();
        let echo = self.gate.seen_peer_session();
        for i in 0..self.paths.len() {
            self.seq += 1;
            let hb = f.heartbeat(self.paths[i].id, self.session, self.seq, echo, 0);
            match seal(&self.s.key, &hb) {
                Ok(bytes) => {
                    let p = &mut self.paths[i];
                    if p.sock.send_to(&bytes, p.peer).is_ok() {
                        p.sent += 1;
                    }
                }
                Err(e) => log::error!("cannot seal a heartbeat: {e}"),
            }
        }
    }

    /// An orderly stop: step down where the peer can see it, release, end the guard.
    fn leave(&mut self) {
        // Health 0 makes a live standby take over at once (election rule 4); the addresses
        // go now, without waiting to see it.
        self.election.set_health(0);
        self.send_heartbeats();
        if self.vips.held() {
            self.vips.release();
            self.guard_send(DISARM);
            if let Some(h) = &self.s.hooks {
                h.deactivated();
            }
        } else if self.activation.take().is_some() {
            if let Some(h) = &self.s.hooks {
                h.deactivated();
            }
        }
        if let Some((mut child, pipe)) = self.guard.take() {
            drop(pipe);
            let _ = child.wait();
        }
    }

    fn status(&self) -> PairStatus {
        let now = Instant::now();
        let peer = self.election.peer();
        let role = |r: Role| format!("{r:?}").to_lowercase();
        PairStatus {
            node: self.s.node_name.clone(),
            peer: self.s.peer_name.clone(),
            role: role(self.election.role()),
            term: self.election.term(),
            priority: self.s.priority,
            health: self.health(),
            peer_alive: peer.as_ref().is_some_and(|p| p.live),
            peer_role: peer
                .as_ref()
                .map(|p| format!("{:?}", p.role).to_lowercase()),
            peer_term: peer.as_ref().map(|p| p.term),
            peer_priority: peer.as_ref().map(|p| p.priority),
            peer_health: peer.as_ref().map(|p| p.health),
            peer_synced: peer.as_ref().is_some_and(|p| p.live && p.synced),
            vips_held: self.vips.held(),
            vips: self.s.vips.iter().map(|v| v.to_string()).collect(),
            transitions: self.transitions,
            last_transition: self.last_transition.clone(),
            late_ticks: self.late_ticks,
            paths: self
                .paths
                .iter()
                .map(|p| PathStatus {
                    zone: p.s.zone.clone(),
                    interface: p.s.interface.clone(),
                    local: p.s.local,
                    peer: p.s.peer,
                    link_up: p.link_up,
                    last_heard_ms: p
                        .last_heard
                        .map(|t| u64::try_from(now.duration_since(t).as_millis()).unwrap_or(0)),
                    received: p.received,
                    sent: p.sent,
                })
                .collect(),
            rejected: self.rejects.clone(),
            synced: self.synced,
            rekeys: self.rekeys,
        }
    }
}
