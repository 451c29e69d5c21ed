//! The pure proxy core: see the crate docs for the call path.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use callgate_cdr::{Cdr, Disposition, Pii};
use callgate_config::Config;
use callgate_router::guard::{
    self, Admission, CallPermit, FloodConfig, FloodGuard, LogLimiter, SourceLimits,
};
use callgate_router::{normalize_number, Dest, Health, RouteTable, Selector};
use callgate_sip::transaction::{
    Action, Event, Incoming, MessageRef, Millis, Outgoing, State as TxState, Table, TableError,
    Timers, TransactionKey, Transport as TxTransport,
};
use callgate_sip::{self as sip, HeaderName, Message, Policy, Uri, Verdict};
use ipnet::IpNet;

use crate::media::{self, Media, MediaRules, Side};
use crate::msgs;
use crate::rng::Csprng;

/// Keyed with a per-process random seed: keys (branches, Call-IDs) come from the network.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;
use crate::{ActiveCall, CallState, Now, Output, Payload, Peer, Stats, Transport};

/// Everything the core takes from the config, plus where our sockets are.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `appliance.name`: written into every record.
    pub appliance: String,
    /// Our listen addresses (UDP and TCP on each).
    pub listen: Vec<SocketAddr>,
    /// For each destination IP, our local IP that reaches it (the driver asks the kernel).
    pub local_for: HashMap<IpAddr, IpAddr>,
    pub response_timeout: Millis,
    pub ring_timeout: Millis,
    pub max_call: Millis,
    pub max_cps: Option<u32>,
    pub max_calls: Option<u32>,
    pub timers: Timers,
    /// Cap on live transactions (stateless 503 beyond).
    pub max_transactions: usize,
    pub flood: FloodConfig,
    /// OPTIONS probe period for destination health.
    pub probe_interval: Millis,
    /// What media the config allows (pinholes are opened only within it).
    pub media: MediaRules,
}

impl Settings {
    /// Settings from a validated config; `local_for` comes from the driver.
    pub fn from_config(cfg: &Config, local_for: HashMap<IpAddr, IpAddr>) -> Settings {
        let sip = &cfg.sip;
        let secs = |s: u32| Millis(u64::from(s) * 1000);
        let mut flood = FloodConfig::default();
        // Carrier trunks and destinations are rate-limited like everyone, with limits of
        // their own (a trunk carries many calls), and never put in the blocklist (a UDP
        // flooder can spoof their addresses to make us cut our own carrier off).
        let max_cps = sip.max_cps.as_ref().map(|v| *v.get_ref());
        let max_calls = sip.max_calls.as_ref().map(|v| *v.get_ref());
        let trunk_rate = max_cps.map_or(5_000, |c| c.saturating_mul(10).max(1_000));
        for c in &sip.carriers {
            let rate = c
                .max_requests_per_sec
                .as_ref()
                .map_or(trunk_rate, |v| *v.get_ref());
            let limits = SourceLimits {
                rate_per_sec: rate,
                burst: rate.saturating_mul(2),
                max_dialogs: c
                    .max_dialogs
                    .as_ref()
                    .map(|v| *v.get_ref())
                    .or(max_calls)
                    .unwrap_or(u32::MAX),
            };
            for n in c.sources.get_ref().iter().map(|p| p.net()) {
                flood.never_block.push(n);
                flood.limits.push((n, limits));
            }
        }
        for d in sip.routes.iter().flat_map(|r| r.destinations.get_ref()) {
            let n = IpNet::from(d.uri.get_ref().addr.ip().to_canonical());
            flood.never_block.push(n);
            flood.limits.push((
                n,
                SourceLimits {
                    rate_per_sec: trunk_rate,
                    burst: trunk_rate.saturating_mul(2),
                    max_dialogs: 0,
                },
            ));
        }
        Settings {
            appliance: cfg.appliance.name.to_string(),
            listen: sip.listen_addrs(),
            local_for,
            response_timeout: secs(sip.response_timeout_secs()),
            ring_timeout: secs(sip.ring_timeout_secs()),
            max_call: secs(sip.max_call_secs()),
            max_cps,
            max_calls,
            timers: Timers::default(),
            max_transactions: 200_000,
            flood,
            probe_interval: secs(sip.probe_interval_secs()),
            media: MediaRules::from_config(cfg),
        }
    }
}

/// Who a transaction belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The INVITE of a call (server side, or the current attempt on the client side).
    Call(u64),
    /// An in-dialog request relayed between the parties.
    Relay(u64),
    /// A request of our own whose responses are consumed here (BYE at max length, CANCEL).
    Own,
    /// An OPTIONS health probe of a destination (the transaction's peer).
    Probe,
}

#[derive(Debug, Clone, Copy)]
struct TxInfo {
    owner: Owner,
    peer: Peer,
    local: SocketAddr,
}

/// Why the proxy cancelled (or is about to cancel) a call's pending INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cancel {
    Caller,
    NoAnswer,
    /// The callee's early media asked for what the config does not allow (488 upstream).
    MediaRefused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// The current destination has not sent any response.
    Response,
    /// Ringing too long.
    Ring,
    /// Maximum call length.
    MaxCall,
    /// A CANCEL went downstream and the 487 has not come (RFC 3261 §9.1: 64·T1).
    CancelGuard,
}

impl TimerKind {
    /// Every kind, in declaration order: a kind's slot is its index here.
    const ALL: [TimerKind; 4] = [
        TimerKind::Response,
        TimerKind::Ring,
        TimerKind::MaxCall,
        TimerKind::CancelGuard,
    ];
    const COUNT: usize = TimerKind::ALL.len();

    fn slot(self) -> usize {
        self as usize
    }
}

#[derive(Debug)]
struct Call {
    seq: u64,
    call_id: Box<str>,
    from_tag: Box<str>,
    /// What only the setup needs; dropped at answer.
    setup: Option<Box<Setup>>,
    server_key: TransactionKey,
    caller: Peer,
    caller_local: SocketAddr,
    number: Box<str>,
    campaign: Arc<str>,
    caller_number: Box<str>,
    caller_name: Option<Box<str>>,
    client_key: Option<TransactionKey>,
    callee: Peer,
    callee_local: SocketAddr,
    destination: Box<str>,
    state: CallState,
    cancel: Option<Cancel>,
    last_code: Option<u16>,
    invite_at: u64,
    ring_at: Option<u64>,
    answer_at: Option<u64>,
    /// The call's pending timers, one slot per [`TimerKind`] (inline: no allocation per
    /// call).
    deadlines: Deadlines,
    /// The media addresses each party last offered or answered (0: caller, 1: callee).
    media: [Media; 2],
    /// Whether the callee has described its media (pinholes open from then on).
    media_open: bool,
    /// The callee's 2xx, stripped of our Via, until the answer-time record is durable.
    held_answer: Option<Payload>,
    /// The carrier's media pool, when it sends media from one (pinholes toward the callee
    /// admit it as the source).
    pool: Option<Arc<[IpNet]>>,
    /// An offer in a request (INVITE, re-INVITE) waiting for its answer: (callee?, addrs).
    offered: Option<(bool, Media)>,
    permit: Option<CallPermit>,
    /// Dialog state once answered: what BYEs of our own need.
    dialog: Option<Box<DialogInfo>>,
}

/// The part of a call only its setup needs: boxed, and dropped when the call is answered
/// (a held dialog keeps only what its BYEs and records need; memory per dialog is a
/// figure of the benchmark).
#[derive(Debug)]
struct Setup {
    /// The INVITE as received (responses are built from it).
    invite: Payload,
    /// The INVITE sent to the current destination (for CANCEL and ACK).
    forwarded: Option<Payload>,
    dests: Vec<Dest>,
    attempt: usize,
    got_provisional: bool,
    cancel_sent: bool,
}

/// A call's pending timer deadlines, one slot per [`TimerKind`]; `u64::MAX` is "none" (no
/// deadline is that far out; half the size of `Option<Millis>` slots).
#[derive(Debug, Clone, Copy)]
struct Deadlines([u64; TimerKind::COUNT]);

impl Deadlines {
    const NONE: u64 = u64::MAX;

    fn new() -> Deadlines {
        Deadlines([Self::NONE; TimerKind::COUNT])
    }

    fn some(v: u64) -> Option<Millis> {
        (v != Self::NONE).then_some(Millis(v))
    }

    /// Sets `kind` to `at`; the deadline it replaces, if any.
    fn replace(&mut self, kind: TimerKind, at: Millis) -> Option<Millis> {
        let slot = self.0.get_mut(kind.slot())?;
        Self::some(std::mem::replace(slot, at.0))
    }

    /// Clears `kind`; the deadline it had, if any.
    fn take(&mut self, kind: TimerKind) -> Option<Millis> {
        let slot = self.0.get_mut(kind.slot())?;
        Self::some(std::mem::replace(slot, Self::NONE))
    }

    /// Clears `kind` if its deadline is `at`; whether it was.
    fn take_if(&mut self, kind: TimerKind, at: Millis) -> bool {
        match self.0.get_mut(kind.slot()) {
            Some(slot) if *slot == at.0 => {
                *slot = Self::NONE;
                true
            }
            _ => false,
        }
    }

    /// The pending deadlines.
    fn pending(self) -> impl Iterator<Item = (TimerKind, Millis)> {
        TimerKind::ALL
            .into_iter()
            .zip(self.0)
            .filter_map(|(k, v)| Some((k, Self::some(v)?)))
    }
}

impl Call {
    /// The open pinholes (source, destination): each party's media from the other's,
    /// once the callee has described its own.
    fn pinholes(&self) -> Vec<(IpNet, SocketAddr)> {
        if !self.media_open {
            return Vec::new();
        }
        let [caller, callee] = &self.media;
        media::pinholes(caller, callee, self.pool.as_deref())
    }
}

#[derive(Debug, Clone)]
struct DialogInfo {
    /// From, To, the caller's Contact, the callee's Contact, the route toward the caller and
    /// the route toward the callee (URIs separated by newlines), back to back in one
    /// allocation: this lives as long as the call.
    text: Box<str>,
    ends: [u32; 6],
    caller_cseq: u32,
    callee_cseq: u32,
}

impl DialogInfo {
    const FROM: usize = 0;
    const TO: usize = 1;
    const CALLER_CONTACT: usize = 2;
    const CALLEE_CONTACT: usize = 3;
    const ROUTE_TO_CALLER: usize = 4;
    const ROUTE_TO_CALLEE: usize = 5;

    fn new(parts: [&str; 6], caller_cseq: u32) -> DialogInfo {
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u32; 6];
        for (i, p) in parts.iter().enumerate() {
            text.push_str(p);
            if let Some(e) = ends.get_mut(i) {
                *e = text.len() as u32;
            }
        }
        DialogInfo {
            text: text.into_boxed_str(),
            ends,
            caller_cseq,
            callee_cseq: 0,
        }
    }

    fn part(&self, i: usize) -> &str {
        let start = match i.checked_sub(1) {
            Some(p) => self.ends.get(p).copied().unwrap_or(0),
            None => 0,
        };
        let end = self.ends.get(i).copied().unwrap_or(start);
        self.text
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    fn route(&self, i: usize) -> Vec<String> {
        self.part(i)
            .split('\n')
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Abandoned {
    peer: Peer,
    local: SocketAddr,
    until: Millis,
    /// ACK and BYE went out already (later 2xx copies are retransmissions: ACK only).
    released: bool,
}

#[derive(Debug)]
struct Relay {
    call: u64,
    server_key: TransactionKey,
    client_key: TransactionKey,
    method: Box<str>,
    /// Sent by the caller (so its responses come from the callee)?
    from_caller: bool,
}

/// The proxy core. See the crate docs.
#[derive(Debug)]
pub struct Proxy {
    s: Settings,
    policy: Policy,
    routes: RouteTable,
    selector: Selector,
    health: Health,
    txs: Table<Payload>,
    tx_info: Map<TransactionKey, TxInfo>,
    /// The two INVITE transactions of each answered call, in RFC 6026's Accepted state for
    /// 64·T1 after the 2xx: only their keys (shared with the call), so a retransmitted
    /// INVITE is absorbed and a retransmitted 2xx goes upstream, without a whole
    /// transaction per key. `accepted_until` expires them in order (same lifetime for all).
    accepted: Set<TransactionKey>,
    accepted_until: VecDeque<(Millis, TransactionKey)>,
    /// Open media pinholes: how many calls use each address, and until when its kernel
    /// timeout runs. Calls that share an address (a gateway reusing a port) share the
    /// pinhole: it closes with the last of them, and its timeout is renewed when a new call
    /// would outlive it.
    pinholes: Map<(IpNet, SocketAddr), (u32, Millis)>,
    /// Boxed: a slot per call stays small while the table grows by doubling.
    calls: Map<u64, Box<Call>>,
    by_call_id: Map<Box<str>, u64>,
    relays: Map<u64, Relay>,
    /// INVITEs we sent and gave up on (call ended, or failover on silence), by branch: a
    /// late 2xx from that destination is ACKed and ended with BYE. Pruned after 64·T1.
    abandoned: Map<Box<str>, Abandoned>,
    /// The request of each relay while its client transaction runs (for a 408 upstream).
    relay_requests: Map<u64, Payload>,
    timers: BTreeSet<(Millis, u64, TimerKind)>,
    admission: Option<Admission>,
    flood: FloodGuard,
    logs: LogLimiter<&'static str>,
    stats: Stats,
    next_seq: u64,
    rng: Csprng,
    next_probe: Millis,
    /// Health probes sent and not answered yet: a destination still here at the next round
    /// is marked down (its probe transaction is dropped).
    probes_pending: Vec<(callgate_config::SipUri, TransactionKey)>,
    /// Destination addresses (exempt from the flood guard, like carriers).
    dest_ips: Vec<IpAddr>,
}

const FAILOVER_CODES: fn(u16) -> bool = |c| c == 408 || (500..=599).contains(&c);

/// CSeq numbers from 2^31 up are refused (RFC 3261 §8.1.1.5).
const MAX_CSEQ: u32 = 1 << 31;

/// A Warning header (RFC 3261 §20.43) naming us as the agent; `text` names no address.
fn warning(local: SocketAddr, code: u16, text: &str) -> (&'static str, String) {
    ("Warning", format!("{code} {} \"{text}\"", host_port(local)))
}

/// Whether a response (or an ACK) came from where its transaction's request went: the
/// same transport, address and port, and for TCP the same connection when we know it.
fn from_where_sent(sent: Peer, got: Peer) -> bool {
    sent.transport == got.transport
        && sent.addr.ip().to_canonical() == got.addr.ip().to_canonical()
        && sent.addr.port() == got.addr.port()
        && (sent.conn.is_none() || sent.conn == got.conn)
}

fn via_sent_by(v: &sip::Via<'_>) -> String {
    let mut s = v.host.to_string().to_ascii_lowercase();
    if let Some(p) = v.port {
        s.push(':');
        s.push_str(&p.to_string());
    }
    s
}

fn host_port(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

fn tx_transport(t: Transport) -> TxTransport {
    match t {
        Transport::Udp => TxTransport::Unreliable,
        Transport::Tcp => TxTransport::Reliable,
    }
}

fn dest_transport(d: &Dest) -> Transport {
    match d.uri.transport {
        callgate_config::Transport::Tcp => Transport::Tcp,
        callgate_config::Transport::Udp => Transport::Udp,
    }
}

/// Masks a caller number for display: keeps the country code and first digits.
fn mask(number: &str) -> String {
    let keep = number.len().min(6);
    let mut s: String = number.chars().take(keep).collect();
    s.extend(std::iter::repeat_n(
        '*',
        number.chars().count().saturating_sub(keep),
    ));
    s
}

fn disposition_for(code: u16) -> Disposition {
    match code {
        200..=299 => Disposition::Answered,
        486 | 600 | 603 => Disposition::Busy,
        408 | 480 => Disposition::NoAnswer,
        487 => Disposition::Cancelled,
        _ => Disposition::Failed,
    }
}

impl Proxy {
    /// A core with no calls.
    pub fn new(s: Settings, cfg: &Config, now: Now) -> Proxy {
        let empty = RouteTable::default();
        let mut p = Proxy {
            policy: Policy::default(),
            txs: Table::new(s.timers, s.max_transactions),
            flood: FloodGuard::new(s.flood.clone()),
            logs: LogLimiter::new(5, 10_000, 64),
            tx_info: Map::default(),
            accepted: Set::default(),
            accepted_until: VecDeque::new(),
            pinholes: Map::default(),
            calls: Map::default(),
            by_call_id: Map::default(),
            relays: Map::default(),
            relay_requests: Map::default(),
            abandoned: Map::default(),
            timers: BTreeSet::new(),
            admission: None,
            stats: Stats::default(),
            next_seq: 1,
            rng: Csprng::new(),
            next_probe: now.mono,
            health: Health::new(),
            probes_pending: Vec::new(),
            selector: Selector::new(&empty),
            routes: empty,
            dest_ips: Vec::new(),
            s: s.clone(),
        };
        p.reconfigure(s, cfg, now);
        p
    }

    /// Takes a new config (routes, caps, timeouts); calls in progress keep their route.
    pub fn reconfigure(&mut self, s: Settings, cfg: &Config, now: Now) {
        self.routes = RouteTable::build(cfg);
        self.selector = Selector::new(&self.routes);
        self.dest_ips = self
            .routes
            .routes()
            .iter()
            .flat_map(|r| r.destinations.iter().map(|d| d.uri.addr.ip()))
            .collect();
        self.admission = match (s.max_cps, s.max_calls) {
            (None, None) => {
                for c in self.calls.values_mut() {
                    c.permit = None;
                }
                None
            }
            (cps, calls) => {
                let mut a = Admission::new(
                    cps.unwrap_or(u32::MAX / 2000),
                    calls.unwrap_or(u32::MAX),
                    guard::Millis(now.mono.0),
                );
                // Calls in progress count against the new caps, without CPS tokens.
                for c in self.calls.values_mut() {
                    c.permit = Some(a.carry_over());
                }
                Some(a)
            }
        };
        self.flood = FloodGuard::new(s.flood.clone());
        // Calls in progress count against their source's dialog cap under the new limits.
        for c in self.calls.values() {
            self.flood
                .carry_dialog(guard::Millis(now.mono.0), c.caller.addr.ip());
        }
        self.s = s;
    }

    /// The store has made the answer-time record of call `seq` durable (`ok`), or could
    /// not: the held 2xx now goes to the caller, or the call is ended from here (BYE both
    /// ways) because an answered call without a record must not exist.
    pub fn on_record_stored(&mut self, now: Now, seq: u64, ok: bool, out: &mut Vec<Output>) {
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        let Some(answer) = call.held_answer.take() else {
            return;
        };
        if ok {
            let (peer, local) = (call.caller, call.caller_local);
            self.send(peer, local, answer, out);
            return;
        }
        let line = format!("call {seq}: its record could not be stored; ending it");
        self.log(now, "record-failed", log::Level::Error, line, out);
        self.bye_both_ways(now, seq, "call record not stored", out);
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        let mut st = self.stats.clone();
        st.active_calls = self.calls.len() as u64;
        st.transactions = (self.txs.len() + self.accepted.len()) as u64;
        st
    }

    /// The calls in progress, oldest first.
    pub fn active_calls(&self) -> Vec<ActiveCall> {
        let mut v: Vec<&Call> = self.calls.values().map(|c| &**c).collect();
        v.sort_by_key(|c| c.seq);
        v.into_iter()
            .map(|c| ActiveCall {
                call_id: c.call_id.to_string(),
                tracking_number: c.number.to_string(),
                campaign: c.campaign.to_string(),
                caller: mask(&c.caller_number),
                destination: c.destination.to_string(),
                state: c.state,
                transport: c.caller.transport,
                invite_at: c.invite_at,
                answer_at: c.answer_at,
                pinholes: c.pinholes().len(),
            })
            .collect()
    }

    /// Number of calls in progress.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// When [`Self::on_timer`] must run next.
    pub fn next_deadline(&self) -> Option<Millis> {
        let mut d = self.txs.next_deadline();
        if let Some((t, _)) = self.accepted_until.front() {
            d = Some(d.map_or(*t, |x| x.min(*t)));
        }
        if let Some((t, _, _)) = self.timers.first() {
            d = Some(d.map_or(*t, |x| x.min(*t)));
        }
        if !self.dest_ips.is_empty() {
            d = Some(d.map_or(self.next_probe, |x| x.min(self.next_probe)));
        }
        d
    }

    fn rand(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn branch(&mut self) -> String {
        format!("{}cg{:016x}", sip::transaction::MAGIC_COOKIE, self.rand())
    }

    fn log(
        &mut self,
        now: Now,
        key: &'static str,
        level: log::Level,
        line: String,
        out: &mut Vec<Output>,
    ) {
        if let Some(suppressed) = self.logs.allow(guard::Millis(now.mono.0), &key) {
            let line = if suppressed > 0 {
                format!("{line} ({suppressed} similar lines suppressed)")
            } else {
                line
            };
            out.push(Output::Log { level, line });
        }
    }

    fn send(&mut self, peer: Peer, local: SocketAddr, bytes: Payload, out: &mut Vec<Output>) {
        self.stats.messages_out += 1;
        out.push(Output::Send { peer, local, bytes });
    }

    fn is_ours(&self, host: &sip::Host<'_>, port: Option<u16>) -> bool {
        let ip = match host {
            sip::Host::Ipv4(a) => IpAddr::V4(*a),
            sip::Host::Ipv6(a) => IpAddr::V6(*a),
            sip::Host::Name(_) => return false,
        };
        let port = port.unwrap_or(5060);
        self.s
            .listen
            .iter()
            .any(|l| l.ip() == ip && l.port() == port)
    }

    fn uri_is_ours(&self, uri: &Uri<'_>) -> bool {
        uri.as_sip().is_some_and(|u| self.is_ours(&u.host, u.port))
    }

    /// Our socket toward `ip`: the listen address on the local IP the kernel picks.
    fn local_toward(&self, ip: IpAddr, fallback: SocketAddr) -> SocketAddr {
        if let Some(l) = self.s.local_for.get(&ip) {
            if let Some(a) = self.s.listen.iter().find(|a| a.ip() == *l) {
                return *a;
            }
        }
        self.s
            .listen
            .iter()
            .find(|a| a.is_ipv4() == ip.is_ipv4())
            .copied()
            .unwrap_or(fallback)
    }

    fn record_route(local: SocketAddr, t: Transport) -> String {
        match t {
            Transport::Udp => format!("sip:{};lr", host_port(local)),
            Transport::Tcp => format!("sip:{};transport=tcp;lr", host_port(local)),
        }
    }

    fn our_via(&mut self, local: SocketAddr, t: Transport) -> (String, String) {
        let branch = self.branch();
        let via = format!(
            "SIP/2.0/{} {};branch={branch}",
            t.via_name(),
            host_port(local)
        );
        (via, branch)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.routes.carrier_of(ip).is_some() || self.dest_ips.contains(&ip.to_canonical())
    }

    // ------------------------------------------------------------------ input

    /// One message from the network (a datagram, or one framed message from a stream).
    pub fn on_message(
        &mut self,
        now: Now,
        bytes: &[u8],
        peer: Peer,
        local: SocketAddr,
        out: &mut Vec<Output>,
    ) {
        self.stats.messages_in += 1;
        let Ok(msg) = sip::parse(bytes) else {
            self.stats.malformed_dropped += 1;
            let line = format!("dropped an unparseable message from {}", peer.addr);
            self.log(now, "malformed", log::Level::Info, line, out);
            return;
        };
        if msg.is_request() {
            self.stats.requests_in += 1;
            if !self.flood_check(now, &msg, peer, out) {
                return;
            }
        } else {
            self.stats.responses_in += 1;
        }
        // Responses are only taken from peers we sent the request to (their top Via
        // carries one of our random branches); they get the checks forwarding needs
        // (start line, Via, CSeq) instead of the full validation requests get.
        let verdict = if msg.is_request() {
            sip::check(&msg, &self.policy)
        } else {
            // Checked where it is used: on_response drops what lacks Via, CSeq or Call-ID.
            Verdict::Accept
        };
        match verdict {
            Verdict::Accept => {}
            Verdict::Drop => {
                self.stats.malformed_dropped += 1;
                return;
            }
            Verdict::Reject(code) => {
                self.stats.malformed_dropped += 1;
                let line = format!("refused a malformed request from {}: {code}", peer.addr);
                self.log(now, "malformed", log::Level::Info, line, out);
                self.reply_stateless(&msg, code, &[], peer, local, out);
                return;
            }
        }
        if msg.is_request() {
            self.on_request(now, &msg, bytes, peer, local, out);
        } else {
            self.on_response(now, &msg, peer, out);
        }
    }

    /// Per-source flood guard, for every source (carriers and destinations with limits of
    /// their own, and never blocked); false: drop the message. The per-source dialog cap
    /// is applied where a call is admitted ([`FloodGuard::open_dialog`]).
    fn flood_check(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        peer: Peer,
        out: &mut Vec<Output>,
    ) -> bool {
        let ua = msg.single(HeaderName::UserAgent).ok().flatten();
        let scanner = ua.is_some_and(|u| self.flood.is_scanner(u));
        match self
            .flood
            .check(guard::Millis(now.mono.0), peer.addr.ip(), ua)
        {
            guard::Verdict::Allow => true,
            guard::Verdict::Drop => {
                if scanner {
                    self.stats.scanner_dropped += 1;
                } else {
                    self.stats.flood_dropped += 1;
                }
                false
            }
            guard::Verdict::Block { ttl_secs } => {
                self.stats.sources_blocked += 1;
                self.stats.flood_dropped += 1;
                let ip = peer.addr.ip().to_canonical();
                out.push(Output::Block {
                    ip,
                    ttl: Duration::from_secs(u64::from(ttl_secs)),
                });
                let line = format!("blocked source {ip} for {ttl_secs} s (flood or scanner)");
                self.log(now, "block", log::Level::Warn, line, out);
                false
            }
        }
    }

    fn reply_stateless(
        &mut self,
        req: &Message<'_>,
        code: u16,
        extra: &[(&'static str, String)],
        peer: Peer,
        local: SocketAddr,
        out: &mut Vec<Output>,
    ) {
        if req.method() == Some("ACK") || !req.is_request() {
            return;
        }
        let tag = format!("cg{:x}", self.rand());
        if let Some(b) = msgs::response(req, code, Some(&tag), extra) {
            self.send(peer, local, b.into(), out);
        }
    }

    fn on_request(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        bytes: &[u8],
        peer: Peer,
        local: SocketAddr,
        out: &mut Vec<Output>,
    ) {
        let Some(method) = msg.method() else { return };
        let Ok(vias) = msg.vias() else { return };
        // Loop: a request that already passed through us (RFC 3261 §16.3 step 4).
        if vias
            .iter()
            .any(|v| self.is_ours(&v.host, v.port) && v.branch().is_some_and(|b| b.contains("cg")))
        {
            self.stats.refused_loop += 1;
            self.reply_stateless(msg, 482, &[], peer, local, out);
            return;
        }
        let Some(top) = vias.first() else { return };
        let Some(branch) = top.branch() else {
            self.reply_stateless(msg, 400, &[], peer, local, out);
            return;
        };
        // RFC 3261 §8.1.1.5: sequence numbers stay below 2^31, so ours (+1) never wrap.
        if msg.cseq().is_ok_and(|c| c.seq >= MAX_CSEQ) {
            self.stats.malformed_dropped += 1;
            let extra = [warning(local, 399, "CSeq must be below 2^31")];
            self.reply_stateless(msg, 400, &extra, peer, local, out);
            return;
        }
        let sent_by = via_sent_by(top);
        if method == "ACK" {
            self.on_ack(now, msg, branch, &sent_by, peer, out);
            return;
        }
        let Ok(key) = TransactionKey::server(branch, &sent_by, method) else {
            // RFC 2543 peers: no stateful processing without an RFC 3261 branch.
            self.reply_stateless(msg, 400, &[], peer, local, out);
            return;
        };
        if self.txs.get(&key).is_some() {
            self.stats.retransmissions_absorbed += 1;
            if let Ok(acts) = self
                .txs
                .handle(now.mono, &key, Event::Received(Incoming::Request))
            {
                self.run_actions(now, &key, acts, out);
            }
            return;
        }
        if self.accepted.contains(&key) {
            // A retransmitted INVITE of an answered call (RFC 6026 Accepted: absorbed).
            self.stats.retransmissions_absorbed += 1;
            return;
        }
        if method == "CANCEL" {
            self.on_cancel(now, msg, key, branch, &sent_by, peer, local, out);
            return;
        }
        let to_tag = msg.to().ok().and_then(|t| t.tag().map(str::to_owned));
        if to_tag.is_some() {
            self.in_dialog(now, msg, key, peer, local, out);
            return;
        }
        match method {
            "INVITE" => self.new_call(now, msg, bytes, key, peer, local, out),
            "OPTIONS" if self.trusted(peer.addr.ip()) => {
                let allow = [(
                    "Allow",
                    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE".to_string(),
                )];
                self.reply_stateless(msg, 200, &allow, peer, local, out);
            }
            _ if !self.trusted(peer.addr.ip()) => {
                self.stats.refused_not_carrier += 1;
                self.reply_stateless(msg, 403, &[], peer, local, out);
            }
            _ => {
                let allow = [(
                    "Allow",
                    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE".to_string(),
                )];
                self.reply_stateless(msg, 405, &allow, peer, local, out);
            }
        }
    }

    /// Starts a server transaction and answers through it (absorbs retransmissions).
    #[allow(clippy::too_many_arguments)]
    fn reply_stateful(
        &mut self,
        now: Now,
        req: &Message<'_>,
        key: &TransactionKey,
        owner: Owner,
        code: u16,
        extra: &[(&'static str, String)],
        peer: Peer,
        local: SocketAddr,
        out: &mut Vec<Output>,
    ) {
        match self
            .txs
            .start_server(now.mono, key.clone(), tx_transport(peer.transport))
        {
            Ok(acts) => {
                self.tx_info
                    .insert(key.clone(), TxInfo { owner, peer, local });
                self.run_actions(now, key, acts, out);
                let tag = format!("cg{:x}", self.rand());
                if let Some(b) = msgs::response(req, code, Some(&tag), extra) {
                    self.respond(now, key, code, b.into(), out);
                }
            }
            Err(_) => self.reply_stateless(req, code, extra, peer, local, out),
        }
    }

    /// Sends a response through the server transaction `key`.
    fn respond(
        &mut self,
        now: Now,
        key: &TransactionKey,
        code: u16,
        bytes: Payload,
        out: &mut Vec<Output>,
    ) {
        if let Ok(acts) = self.txs.handle(
            now.mono,
            key,
            Event::Send(Outgoing::Response { code, msg: bytes }),
        ) {
            self.run_actions(now, key, acts, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_call(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        bytes: &[u8],
        key: TransactionKey,
        peer: Peer,
        local: SocketAddr,
        out: &mut Vec<Output>,
    ) {
        let src = peer.addr.ip();
        if self.routes.carrier_of(src).is_none() {
            self.stats.refused_not_carrier += 1;
            let line = format!("refused INVITE from {src}: not a carrier peer (403)");
            self.log(now, "not-carrier", log::Level::Info, line, out);
            self.reply_stateless(msg, 403, &[], peer, local, out);
            return;
        }
        self.stats.calls_offered += 1;
        let Some(Ok(uri)) = msg.request_uri() else {
            return;
        };
        let (host_ok, user) = match &uri {
            Uri::Sip(u) => (
                self.routes.serves_domain(&u.host.to_string()) || self.is_ours(&u.host, u.port),
                u.user.unwrap_or("").to_string(),
            ),
            Uri::Tel(t) => (true, t.number.to_string()),
            Uri::Absolute(_) => (false, String::new()),
        };
        let from = msg.from().ok();
        let caller_number = from
            .as_ref()
            .and_then(|f| f.uri.as_sip().and_then(|u| u.user).map(str::to_owned))
            .unwrap_or_default();
        let caller_name = from
            .as_ref()
            .and_then(|f| f.display_name())
            .map(|d| d.to_string());
        let from_tag = from
            .as_ref()
            .and_then(|f| f.tag())
            .unwrap_or("")
            .to_string();
        let number = normalize_number(&user).unwrap_or(user.clone());
        let call_id = msg.call_id().unwrap_or("").to_string();

        let reject = |p: &mut Proxy,
                      code: u16,
                      campaign: &str,
                      why: &'static str,
                      extra: &[(&'static str, String)],
                      out: &mut Vec<Output>| {
            p.stats.calls_rejected += 1;
            let line = format!("refused call {call_id:?} to {number}: {why} ({code})");
            p.log(now, why, log::Level::Info, line, out);
            p.reply_stateful(now, msg, &key, Owner::Own, code, extra, peer, local, out);
            let seq = p.next_seq;
            p.next_seq += 1;
            out.push(Output::Record {
                seq,
                cdr: Box::new(Cdr {
                    call_id: call_id.clone(),
                    tracking_number: number.clone(),
                    campaign: campaign.to_string(),
                    caller: Pii::new(caller_number.clone()),
                    caller_name: caller_name.clone().map(Pii::new),
                    destination: String::new(),
                    invite_at: now.unix_ms,
                    ring_at: None,
                    answer_at: None,
                    end_at: Some(now.unix_ms),
                    duration_ms: 0,
                    disposition: Disposition::Rejected,
                    final_code: code,
                    appliance: p.s.appliance.clone(),
                    resume: None,
                }),
                ended: true,
            });
        };

        if !host_ok {
            self.stats.refused_domain += 1;
            reject(self, 403, "", "foreign domain", &[], out);
            return;
        }
        let routes_ok = msg
            .routes()
            .map(|rs| rs.iter().all(|r| self.uri_is_ours(&r.uri)))
            .unwrap_or(false);
        if !routes_ok {
            self.stats.refused_route += 1;
            reject(self, 403, "", "Route header names another host", &[], out);
            return;
        }
        if self.by_call_id.contains_key(call_id.as_str()) {
            self.stats.refused_loop += 1;
            reject(
                self,
                482,
                "",
                "Call-ID already in a call (merged request)",
                &[],
                out,
            );
            return;
        }
        let Some(entry) = self.routes.lookup(&number).cloned() else {
            self.stats.refused_number += 1;
            reject(self, 404, "", "unknown number", &[], out);
            return;
        };
        // The offer: exact, and inside what the config allows this carrier's media to be
        // (488 otherwise; nothing is relayed and no pinhole opens).
        let (offer, pool) = {
            let carrier = self.routes.carrier_of(src);
            let offer = media::media_of(msg)
                .and_then(|m| self.s.media.check(Side::Carrier(carrier), &m).map(|()| m));
            (offer, carrier.and_then(|c| c.media_pool.clone()))
        };
        let offer = match offer {
            Ok(m) => m,
            Err(why) => {
                self.stats.refused_media += 1;
                let extra = [warning(local, 305, why)];
                reject(self, 488, &entry.campaign, why, &extra, out);
                return;
            }
        };
        let retry_full = || ("Retry-After", guard::FULL_RETRY_AFTER_SECS.to_string());
        if !self.flood.open_dialog(guard::Millis(now.mono.0), src) {
            self.stats.calls_shed += 1;
            let extra = [retry_full()];
            reject(
                self,
                503,
                &entry.campaign,
                "source at its dialog cap",
                &extra,
                out,
            );
            return;
        }
        let permit = match self
            .admission
            .as_mut()
            .map(|a| a.try_admit(guard::Millis(now.mono.0)))
        {
            Some(Err(shed)) => {
                self.flood.dialog_ended(src);
                self.stats.calls_shed += 1;
                let extra = [("Retry-After", shed.retry_after_secs.to_string())];
                reject(self, 503, &entry.campaign, "overload", &extra, out);
                return;
            }
            Some(Ok(p)) => Some(p),
            None => None,
        };
        match self
            .txs
            .start_server(now.mono, key.clone(), tx_transport(peer.transport))
        {
            Ok(acts) => {
                self.tx_info.insert(
                    key.clone(),
                    TxInfo {
                        owner: Owner::Call(self.next_seq),
                        peer,
                        local,
                    },
                );
                self.run_actions(now, &key, acts, out);
            }
            Err(TableError::Overloaded { .. }) | Err(_) => {
                if let (Some(a), Some(p)) = (self.admission.as_mut(), permit) {
                    a.release(p);
                }
                self.flood.dialog_ended(src);
                self.stats.calls_shed += 1;
                self.reply_stateless(msg, 503, &[retry_full()], peer, local, out);
                return;
            }
        }
        // 100 Trying: the caller stops retransmitting (RFC 3261 §16.2).
        if let Some(b) = msgs::response(msg, 100, None, &[]) {
            self.respond(now, &key, 100, b.into(), out);
        }
        let dests = {
            let rng = &mut self.rng;
            self.selector
                .select(&entry, &self.health, &mut || rng.next_u64())
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let call = Call {
            seq,
            call_id: call_id.clone().into(),
            from_tag: from_tag.into(),
            setup: Some(Box::new(Setup {
                invite: Payload::from(bytes),
                forwarded: None,
                dests,
                attempt: 0,
                got_provisional: false,
                cancel_sent: false,
            })),
            server_key: key,
            caller: peer,
            caller_local: local,
            number: number.into(),
            campaign: Arc::from(entry.campaign.as_str()),
            caller_number: caller_number.into(),
            caller_name: caller_name.map(Into::into),
            client_key: None,
            callee: peer,
            callee_local: local,
            destination: Box::default(),
            state: CallState::Trying,
            cancel: None,
            last_code: None,
            invite_at: now.unix_ms,
            ring_at: None,
            answer_at: None,
            deadlines: Deadlines::new(),
            media: [Media::default(), Media::default()],
            media_open: false,
            held_answer: None,
            pool,
            offered: Some((false, offer)),
            permit,
            dialog: None,
        };
        self.by_call_id.insert(call_id.into(), seq);
        self.calls.insert(seq, Box::new(call));
        self.try_next_with(now, seq, Some(msg), out);
    }

    fn set_timer(&mut self, seq: u64, kind: TimerKind, at: Millis) {
        if let Some(c) = self.calls.get_mut(&seq) {
            if let Some(old) = c.deadlines.replace(kind, at) {
                self.timers.remove(&(old, seq, kind));
            }
            self.timers.insert((at, seq, kind));
        }
    }

    fn clear_timer(&mut self, seq: u64, kind: TimerKind) {
        if let Some(at) = self
            .calls
            .get_mut(&seq)
            .and_then(|c| c.deadlines.take(kind))
        {
            self.timers.remove(&(at, seq, kind));
        }
    }

    /// Sends the call's INVITE to its next destination, or ends it when none is left.
    fn try_next(&mut self, now: Now, seq: u64, out: &mut Vec<Output>) {
        self.try_next_with(now, seq, None, out);
    }

    /// [`Self::try_next`] with the INVITE already parsed (the first attempt).
    fn try_next_with(
        &mut self,
        now: Now,
        seq: u64,
        parsed: Option<&Message<'_>>,
        out: &mut Vec<Output>,
    ) {
        loop {
            let Some(call) = self.calls.get(&seq) else {
                return;
            };
            if call.cancel.is_some() {
                self.finish_unanswered(now, seq, 487, &[], out);
                return;
            }
            let Some(setup) = call.setup.as_deref() else {
                return;
            };
            let Some(dest) = setup.dests.get(setup.attempt).copied() else {
                let code = match call.last_code {
                    Some(c) if c >= 300 => c,
                    _ => 408,
                };
                self.finish_unanswered(now, seq, code, &[], out);
                return;
            };
            if setup.attempt > 0 {
                self.stats.failovers += 1;
            }
            let invite = setup.invite.clone();
            let number = call.number.clone();
            let caller_local = call.caller_local;
            let caller_transport = call.caller.transport;
            let transport = dest_transport(&dest);
            let local = self.local_toward(dest.uri.addr.ip(), caller_local);
            let (via, branch) = self.our_via(local, transport);
            let reparsed;
            let original = match parsed {
                Some(m) => m,
                None => match sip::parse(&invite) {
                    Ok(m) => {
                        reparsed = m;
                        &reparsed
                    }
                    Err(_) => return,
                },
            };
            let Some(bytes) = self.forward_invite(
                original,
                &number,
                &dest,
                &via,
                caller_local,
                caller_transport,
                local,
                transport,
            ) else {
                if let Some(s) = self.calls.get_mut(&seq).and_then(|c| c.setup.as_mut()) {
                    s.attempt += 1;
                }
                continue;
            };
            let Ok(ckey) = TransactionKey::client(&branch, "INVITE") else {
                return;
            };
            let peer = Peer {
                transport,
                addr: dest.uri.addr,
                conn: None,
            };
            let bytes: Payload = bytes.into();
            if let Some(c) = self.calls.get_mut(&seq) {
                if let Some(s) = c.setup.as_mut() {
                    s.attempt += 1;
                    s.forwarded = Some(bytes.clone());
                    s.got_provisional = false;
                }
                c.client_key = Some(ckey.clone());
                c.callee = peer;
                c.callee_local = local;
                c.destination = dest.uri.to_string().into();
            }
            if self.start_client(now, ckey, Owner::Call(seq), peer, local, bytes, out) {
                self.set_timer(seq, TimerKind::Response, now.mono + self.s.response_timeout);
            } else {
                self.finish_unanswered(now, seq, 503, &[], out);
            }
            return;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_invite(
        &self,
        invite: &Message<'_>,
        number: &str,
        dest: &Dest,
        via: &str,
        in_local: SocketAddr,
        in_transport: Transport,
        out_local: SocketAddr,
        out_transport: Transport,
    ) -> Option<Vec<u8>> {
        let mut m = invite.clone();
        let tparam = match out_transport {
            Transport::Tcp => ";transport=tcp",
            Transport::Udp => "",
        };
        let user = if number.is_empty() {
            String::new()
        } else {
            format!("{number}@")
        };
        m.set_request_uri(format!("sip:{user}{}{tparam}", host_port(dest.uri.addr)))
            .ok()?;
        // Our own preloaded Routes are consumed here (loose routing, §16.4).
        while m
            .routes()
            .ok()?
            .first()
            .is_some_and(|r| self.uri_is_ours(&r.uri))
        {
            m.remove_top_route().ok()?;
        }
        m.decrement_max_forwards().ok()??;
        // Double Record-Route when the call crosses interfaces (RFC 5658): the upstream
        // side's entry below, the downstream side's on top.
        m.add_record_route(&Self::record_route(in_local, in_transport))
            .ok()?;
        if in_local != out_local || in_transport != out_transport {
            m.add_record_route(&Self::record_route(out_local, out_transport))
                .ok()?;
        }
        m.prepend_via(via.to_string()).ok()?;
        Some(m.serialize())
    }

    fn on_ack(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        branch: &str,
        sent_by: &str,
        peer: Peer,
        out: &mut Vec<Output>,
    ) {
        // ACK for a non-2xx final response: absorbed by its INVITE server transaction. An
        // ACK matching a transaction in Accepted acknowledges a 2xx: end to end.
        if let Ok(key) = TransactionKey::server(branch, sent_by, "ACK") {
            if let Some(tx) = self.txs.get(&key) {
                if tx.state() != TxState::Accepted {
                    // Only the party that sent the INVITE acknowledges its final response.
                    let sender = self.tx_info.get(&key).map(|i| i.peer);
                    if sender.is_some_and(|s| {
                        s.addr.ip().to_canonical() != peer.addr.ip().to_canonical()
                    }) {
                        self.stats.refused_wrong_party += 1;
                        return;
                    }
                    if let Ok(acts) =
                        self.txs
                            .handle(now.mono, &key, Event::Received(Incoming::Ack))
                    {
                        self.run_actions(now, &key, acts, out);
                    }
                    return;
                }
            }
        }
        // ACK for a 2xx: end to end, forwarded statelessly within the dialog.
        self.forward_in_dialog_stateless(now, msg, peer, out);
    }

    /// Finds the call of an in-dialog request and which way it goes; `None` (with the
    /// status to answer) when it is not ours to relay.
    fn dialog_side(&self, msg: &Message<'_>, peer: Peer) -> Result<(u64, bool), u16> {
        let call_id = msg.call_id().map_err(|_| 400u16)?;
        let &seq = self.by_call_id.get(call_id).ok_or(481u16)?;
        let call = self.calls.get(&seq).ok_or(481u16)?;
        let from_tag = msg
            .from()
            .ok()
            .and_then(|f| f.tag().map(str::to_owned))
            .unwrap_or_default();
        let from_caller = from_tag == *call.from_tag;
        let expected = if from_caller {
            call.caller.addr.ip()
        } else {
            call.callee.addr.ip()
        };
        if peer.addr.ip().to_canonical() != expected.to_canonical() {
            return Err(403);
        }
        Ok((seq, from_caller))
    }

    /// The edited in-dialog request toward the other party: our Routes popped, Max-Forwards
    /// decremented, our Via on top.
    fn edit_in_dialog(&self, msg: &Message<'_>, via: &str) -> Option<Vec<u8>> {
        let mut m = msg.clone();
        while m
            .routes()
            .ok()?
            .first()
            .is_some_and(|r| self.uri_is_ours(&r.uri))
        {
            m.remove_top_route().ok()?;
        }
        m.decrement_max_forwards().ok()??;
        m.prepend_via(via.to_string()).ok()?;
        Some(m.serialize())
    }

    fn forward_in_dialog_stateless(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        peer: Peer,
        out: &mut Vec<Output>,
    ) {
        let (seq, from_caller) = match self.dialog_side(msg, peer) {
            Ok(v) => v,
            Err(code) => {
                if code == 403 {
                    self.stats.refused_wrong_party += 1;
                }
                return;
            }
        };
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let (to, local) = if from_caller {
            (call.callee, call.callee_local)
        } else {
            (call.caller, call.caller_local)
        };
        let (via, _) = self.our_via(local, to.transport);
        if let Some(b) = self.edit_in_dialog(msg, &via) {
            // Media of a late offer (offer in the 2xx, answer in the ACK).
            if !msg.body().is_empty() {
                match self.described_media(seq, msg, !from_caller) {
                    Ok(side) => self.update_media(now, seq, !from_caller, side, out),
                    Err(why) => {
                        self.send(to, local, b.into(), out);
                        self.media_refused(now, seq, why, out);
                        self.bye_both_ways(now, seq, "media refused", out);
                        return;
                    }
                }
            }
            self.send(to, local, b.into(), out);
        }
    }

    fn in_dialog(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        key: TransactionKey,
        peer: Peer,
        local: SocketAddr,
        out: &mut Vec<Output>,
    ) {
        let (seq, from_caller) = match self.dialog_side(msg, peer) {
            Ok(v) => v,
            Err(code) => {
                if code == 403 {
                    self.stats.refused_wrong_party += 1;
                }
                self.reply_stateful(now, msg, &key, Owner::Own, code, &[], peer, local, out);
                return;
            }
        };
        let Some(method) = msg.method() else { return };
        let offer = if method == "INVITE" && !msg.body().is_empty() {
            match self.described_media(seq, msg, !from_caller) {
                Ok(m) => Some(m),
                Err(why) => {
                    // An offer the config does not allow: 488, not relayed, nothing opens.
                    self.media_refused(now, seq, why, out);
                    let extra = [warning(local, 305, why)];
                    self.reply_stateful(now, msg, &key, Owner::Own, 488, &extra, peer, local, out);
                    return;
                }
            }
        } else {
            None
        };
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        if let (Ok(cseq), Some(d)) = (msg.cseq(), call.dialog.as_mut()) {
            if from_caller {
                d.caller_cseq = d.caller_cseq.max(cseq.seq);
            } else {
                d.callee_cseq = d.callee_cseq.max(cseq.seq);
            }
        }
        let (to, out_local) = if from_caller {
            (call.callee, call.callee_local)
        } else {
            (call.caller, call.caller_local)
        };
        let (via, branch) = self.our_via(out_local, to.transport);
        let Some(bytes) = self.edit_in_dialog(msg, &via) else {
            self.reply_stateful(now, msg, &key, Owner::Own, 400, &[], peer, local, out);
            return;
        };
        let Ok(ckey) = TransactionKey::client(&branch, method) else {
            return;
        };
        let rid = self.next_seq;
        self.next_seq += 1;
        let started = self
            .txs
            .start_server(now.mono, key.clone(), tx_transport(peer.transport))
            .and_then(|a| {
                let c = self.txs.start_client(
                    now.mono,
                    ckey.clone(),
                    tx_transport(to.transport),
                    bytes.into(),
                );
                if c.is_err() {
                    self.txs.remove(&key);
                }
                c.map(|c| (a, c))
            });
        let Ok((sacts, cacts)) = started else {
            let extra = [("Retry-After", guard::FULL_RETRY_AFTER_SECS.to_string())];
            self.reply_stateless(msg, 503, &extra, peer, local, out);
            return;
        };
        self.tx_info.insert(
            key.clone(),
            TxInfo {
                owner: Owner::Relay(rid),
                peer,
                local,
            },
        );
        self.tx_info.insert(
            ckey.clone(),
            TxInfo {
                owner: Owner::Relay(rid),
                peer: to,
                local: out_local,
            },
        );
        self.relays.insert(
            rid,
            Relay {
                call: seq,
                server_key: key.clone(),
                client_key: ckey.clone(),
                method: method.into(),
                from_caller,
            },
        );
        self.relay_requests
            .insert(rid, Payload::from(msg.serialize()));
        if let Some(offer) = offer {
            // An offer: applied when its answer comes.
            if let Some(c) = self.calls.get_mut(&seq) {
                c.offered = Some((!from_caller, offer));
            }
        }
        self.run_actions(now, &key, sacts, out);
        if method == "INVITE" {
            if let Some(b) = msgs::response(msg, 100, None, &[]) {
                self.respond(now, &key, 100, b.into(), out);
            }
        }
        self.run_actions(now, &ckey, cacts, out);
        if method == "BYE" {
            let answered = self
                .calls
                .get(&seq)
                .is_some_and(|c| c.state == CallState::Answered);
            if answered {
                self.end_answered(now, seq, out);
            } else {
                // BYE in an early dialog: the caller gave up.
                if let Some(c) = self.calls.get_mut(&seq) {
                    c.cancel = Some(Cancel::Caller);
                }
                self.finish_unanswered(now, seq, 487, &[], out);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_cancel(
        &mut self,
        now: Now,
        msg: &Message<'_>,
        key: TransactionKey,
        branch: &str,
        sent_by: &str,
        peer: Peer,
        local: SocketAddr,
        out: &mut Vec<Output>,
    ) {
        let inv_key = TransactionKey::server(branch, sent_by, "INVITE").ok();
        let seq = inv_key
            .as_ref()
            .and_then(|k| self.tx_info.get(k))
            .and_then(|i| match i.owner {
                Owner::Call(seq) => Some(seq),
                _ => None,
            })
            .filter(|s| self.calls.contains_key(s));
        let Some(seq) = seq else {
            self.reply_stateful(now, msg, &key, Owner::Own, 481, &[], peer, local, out);
            return;
        };
        // Only the party that sent the INVITE may cancel it.
        let caller = self
            .calls
            .get(&seq)
            .map(|c| c.caller.addr.ip().to_canonical());
        if caller != Some(peer.addr.ip().to_canonical()) {
            self.stats.refused_wrong_party += 1;
            let line = format!("refused a CANCEL from {}: not the caller (403)", peer.addr);
            self.log(now, "wrong-party", log::Level::Info, line, out);
            self.reply_stateful(now, msg, &key, Owner::Own, 403, &[], peer, local, out);
            return;
        }
        self.reply_stateful(now, msg, &key, Owner::Own, 200, &[], peer, local, out);
        self.cancel_call(now, seq, Cancel::Caller, out);
    }

    /// Cancels the pending INVITE of a call (caller CANCEL or ring timeout).
    fn cancel_call(&mut self, now: Now, seq: u64, why: Cancel, out: &mut Vec<Output>) {
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        if call.state == CallState::Answered || call.cancel.is_some() {
            return;
        }
        call.cancel = Some(why);
        if call.setup.as_ref().is_some_and(|s| s.got_provisional) {
            self.send_cancel(now, seq, out);
        }
        // Answer the caller now; the callee's 487 is absorbed when it comes.
        match why {
            Cancel::NoAnswer => self.finish_unanswered(now, seq, 480, &[], out),
            Cancel::MediaRefused => {
                let local = self.calls.get(&seq).map(|c| c.caller_local);
                let extra: Vec<_> = local
                    .map(|l| warning(l, 305, "early media not allowed"))
                    .into_iter()
                    .collect();
                self.finish_unanswered(now, seq, 488, &extra, out);
            }
            Cancel::Caller => {}
        }
    }

    fn send_cancel(&mut self, now: Now, seq: u64, out: &mut Vec<Output>) {
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        let Some(setup) = call.setup.as_mut() else {
            return;
        };
        if setup.cancel_sent {
            return;
        }
        setup.cancel_sent = true;
        let (Some(fwd), Some(ckey)) = (setup.forwarded.clone(), call.client_key.clone()) else {
            return;
        };
        let peer = call.callee;
        let local = call.callee_local;
        let guard = now.mono + self.s.timers.timeout();
        self.set_timer(seq, TimerKind::CancelGuard, guard);
        let Some(bytes) = msgs::cancel_for(&fwd) else {
            return;
        };
        let Ok(key) = TransactionKey::client(ckey.branch(), "CANCEL") else {
            return;
        };
        self.start_client(now, key, Owner::Own, peer, local, bytes.into(), out);
    }

    /// Starts a client transaction sending `bytes` to `peer` from our `local` socket on
    /// behalf of `owner`; false when the table refuses it (full).
    #[allow(clippy::too_many_arguments)]
    fn start_client(
        &mut self,
        now: Now,
        key: TransactionKey,
        owner: Owner,
        peer: Peer,
        local: SocketAddr,
        bytes: Payload,
        out: &mut Vec<Output>,
    ) -> bool {
        match self
            .txs
            .start_client(now.mono, key.clone(), tx_transport(peer.transport), bytes)
        {
            Ok(acts) => {
                self.tx_info
                    .insert(key.clone(), TxInfo { owner, peer, local });
                self.run_actions(now, &key, acts, out);
                true
            }
            Err(_) => false,
        }
    }

    // --------------------------------------------------------------- responses

    fn on_response(&mut self, now: Now, msg: &Message<'_>, peer: Peer, out: &mut Vec<Output>) {
        let (Ok(via), Ok(cseq), Some(code)) = (msg.top_via(), msg.cseq(), msg.status()) else {
            self.stats.malformed_dropped += 1;
            return;
        };
        if msg.call_id().is_err() {
            self.stats.malformed_dropped += 1;
            return;
        }
        let Some(branch) = via.branch() else { return };
        let Ok(key) = TransactionKey::client(branch, cseq.method) else {
            return;
        };
        let Some(info) = self.tx_info.get(&key).copied() else {
            if (200..300).contains(&code) && self.accepted.contains(&key) {
                // The INVITE transaction of an answered call (Accepted, RFC 6026): a
                // retransmitted 2xx from the callee goes upstream statelessly while the
                // call lasts.
                let call = msg
                    .call_id()
                    .ok()
                    .and_then(|id| self.by_call_id.get(id))
                    .and_then(|seq| self.calls.get(seq))
                    .map(|c| (c.callee, c.caller, c.caller_local, c.held_answer.is_some()));
                let Some((callee, caller, local, held)) = call else {
                    return;
                };
                if !from_where_sent(callee, peer) {
                    self.wrong_source(now, peer, out);
                    return;
                }
                if held {
                    return; // the first copy waits for its record; so does this one
                }
                if let Some(b) = strip_via(msg) {
                    self.send(caller, local, b.into(), out);
                }
                return;
            }
            self.stats.stray_responses += 1;
            if (200..300).contains(&code) && cseq.method == "INVITE" {
                match self.abandoned.get(branch).map(|a| a.peer) {
                    Some(sent) if from_where_sent(sent, peer) => {
                        self.release_late_answer(now, msg, out)
                    }
                    Some(_) => self.wrong_source(now, peer, out),
                    None => {}
                }
            }
            return;
        };
        if !from_where_sent(info.peer, peer) {
            self.wrong_source(now, peer, out);
            return;
        }
        let Some(incoming) = Incoming::response(code) else {
            return;
        };
        let Ok(acts) = self.txs.handle(now.mono, &key, Event::Received(incoming)) else {
            self.stats.stray_responses += 1;
            return;
        };
        for act in acts {
            match act {
                Action::PassUp(Incoming::Provisional(c)) | Action::PassUp(Incoming::Final(c)) => {
                    match info.owner {
                        Owner::Call(seq) => self.call_response(now, seq, msg, c, &key, out),
                        Owner::Relay(rid) => self.relay_response(now, rid, msg, c, out),
                        Owner::Probe => {
                            if c >= 200 {
                                let uri = probe_uri(info.peer);
                                self.probes_pending.retain(|(u, _)| *u != uri);
                                self.health.set_healthy(uri, c != 503);
                            }
                        }
                        Owner::Own => {}
                    }
                }
                Action::PassUpRetransmitted2xx(_) => {
                    // RFC 6026: forward 2xx retransmissions statelessly upstream.
                    if let Owner::Call(seq) | Owner::Relay(seq) = info.owner {
                        let up = match info.owner {
                            Owner::Call(_) => {
                                self.calls.get(&seq).map(|c| (c.caller, c.caller_local))
                            }
                            _ => self.relays.get(&seq).and_then(|r| {
                                let s = self.tx_info.get(&r.server_key)?;
                                Some((s.peer, s.local))
                            }),
                        };
                        if let Some((peer, local)) = up {
                            if let Some(b) = strip_via(msg) {
                                self.send(peer, local, b.into(), out);
                            }
                        }
                    }
                }
                Action::Transmit(MessageRef::Ack { request }) => {
                    if let Some(b) = msgs::ack_for(&request, msg) {
                        self.send(info.peer, info.local, b.into(), out);
                    }
                }
                other => self.run_actions(now, &key, vec![other], out),
            }
        }
    }

    /// The media one party of call `seq` describes in `msg` (`callee`: which party), checked
    /// against what the config allows that side; the reason when it is refused.
    fn described_media(
        &self,
        seq: u64,
        msg: &Message<'_>,
        callee: bool,
    ) -> Result<Media, &'static str> {
        let m = media::media_of(msg)?;
        let side = if callee {
            Side::Private
        } else {
            let caller = self.calls.get(&seq).map(|c| c.caller.addr.ip());
            Side::Carrier(caller.and_then(|ip| self.routes.carrier_of(ip)))
        };
        self.s.media.check(side, &m)?;
        Ok(m)
    }

    /// Counts and logs a media description the config does not allow.
    fn media_refused(&mut self, now: Now, seq: u64, why: &str, out: &mut Vec<Output>) {
        self.stats.refused_media += 1;
        let line = format!("call {seq}: media refused ({why})");
        self.log(now, "media-refused", log::Level::Warn, line, out);
    }

    /// A response that matches a transaction but not where its request went: counted
    /// and dropped (forged responses would tear calls down or open pinholes).
    fn wrong_source(&mut self, now: Now, peer: Peer, out: &mut Vec<Output>) {
        self.stats.responses_wrong_source += 1;
        let line = format!(
            "dropped a response from {}: its request went elsewhere",
            peer.addr
        );
        self.log(now, "wrong-source", log::Level::Warn, line, out);
    }

    fn call_response(
        &mut self,
        now: Now,
        seq: u64,
        msg: &Message<'_>,
        code: u16,
        key: &TransactionKey,
        out: &mut Vec<Output>,
    ) {
        let Some(call) = self.calls.get_mut(&seq) else {
            if (200..300).contains(&code) {
                self.release_late_answer(now, msg, out);
            }
            return;
        };
        // A response from an attempt we have left behind.
        let current = call.client_key.as_ref() == Some(key);
        if !current {
            return;
        }
        call.last_code = Some(code);
        if code < 200 {
            let first = call
                .setup
                .as_mut()
                .is_some_and(|s| !std::mem::replace(&mut s.got_provisional, true));
            if first {
                // Any provisional ends the wait for a first response and starts the wait
                // for an answer (Timer C, RFC 3261 §16.6 step 11): a destination that
                // sends 100 and then nothing is cancelled as no-answer.
                self.clear_timer(seq, TimerKind::Response);
                self.set_timer(seq, TimerKind::Ring, now.mono + self.s.ring_timeout);
            }
            let Some(call) = self.calls.get_mut(&seq) else {
                return;
            };
            if call.cancel.is_some() {
                self.send_cancel(now, seq, out);
                return;
            }
            if code == 100 {
                return;
            }
            if call.ring_at.is_none() {
                call.ring_at = Some(now.unix_ms);
                call.state = CallState::Ringing;
            }
            if !msg.body().is_empty() {
                match self.described_media(seq, msg, true) {
                    Ok(answer) => self.update_media(now, seq, true, answer, out),
                    Err(why) => {
                        // Early media the config does not allow: the call ends, nothing
                        // opens, the caller gets 488.
                        self.media_refused(now, seq, why, out);
                        self.cancel_call(now, seq, Cancel::MediaRefused, out);
                        return;
                    }
                }
            }
            self.forward_upstream(now, seq, msg, code, out);
            return;
        }
        self.clear_timer(seq, TimerKind::Response);
        self.clear_timer(seq, TimerKind::Ring);
        if (200..300).contains(&code) {
            self.answered(now, seq, msg, out);
            return;
        }
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let more = call
            .setup
            .as_ref()
            .is_some_and(|s| s.attempt < s.dests.len());
        if call.cancel.is_none() && FAILOVER_CODES(code) && more {
            self.try_next(now, seq, out);
            return;
        }
        if matches!(call.cancel, Some(Cancel::NoAnswer | Cancel::MediaRefused)) {
            return; // already answered upstream (480, 488)
        }
        self.forward_upstream(now, seq, msg, code, out);
        self.end_unanswered(now, seq, code, out);
    }

    fn forward_upstream(
        &mut self,
        now: Now,
        seq: u64,
        msg: &Message<'_>,
        code: u16,
        out: &mut Vec<Output>,
    ) {
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let key = call.server_key.clone();
        self.respond_stripped(now, &key, msg, code, out);
    }

    /// Sends a response from downstream upstream through the server transaction `key`,
    /// without our Via.
    fn respond_stripped(
        &mut self,
        now: Now,
        key: &TransactionKey,
        msg: &Message<'_>,
        code: u16,
        out: &mut Vec<Output>,
    ) {
        if let Some(b) = strip_via(msg) {
            self.respond(now, key, code, b.into(), out);
        }
    }

    fn answered(&mut self, now: Now, seq: u64, msg: &Message<'_>, out: &mut Vec<Output>) {
        let answer = match self.described_media(seq, msg, true) {
            Ok(a) => a,
            Err(why) => {
                self.refuse_answer(now, seq, msg, why, out);
                return;
            }
        };
        self.stats.calls_answered += 1;
        self.update_media(now, seq, true, answer, out);
        let max_call = self.s.max_call;
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        // The 2xx goes upstream once the answer-time record is durable
        // ([`Proxy::on_record_stored`]): an answered call always has a record.
        call.held_answer = strip_via(msg).map(Payload::from);
        call.state = CallState::Answered;
        call.answer_at = Some(now.unix_ms);
        if call.ring_at.is_none() {
            call.ring_at = Some(now.unix_ms);
        }
        // Both INVITE transactions are now in Accepted (RFC 6026; the 2xx goes upstream
        // statelessly): for their 64·T1 only their keys are kept (ACKs are end to end, 2xx
        // retransmissions are matched by key and Call-ID).
        let server_key = call.server_key.clone();
        let client_key = call.client_key.clone();
        let until = now.mono + self.s.timers.timeout();
        for k in std::iter::once(server_key).chain(client_key) {
            self.txs.remove(&k);
            self.tx_info.remove(&k);
            self.accepted.insert(k.clone());
            self.accepted_until.push_back((until, k));
        }
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        // What our own BYEs would need (maximum call length).
        // An answered call keeps only what its dialog needs: its setup goes.
        let invite = call.setup.take().map(|s| s.invite);
        let ours = if call.caller_local != call.callee_local
            || call.caller.transport != call.callee.transport
        {
            2
        } else {
            1
        };
        call.dialog = invite
            .and_then(|inv| dialog_info(&inv, msg, ours))
            .map(Box::new);
        let cdr = self.cdr_of(seq, Disposition::Answered, 200, None);
        self.set_timer(seq, TimerKind::MaxCall, now.mono + max_call);
        if let Some(mut cdr) = cdr {
            cdr.resume = self.calls.get(&seq).map(|c| resume_of(c));
            out.push(Output::Record {
                seq,
                cdr: Box::new(cdr),
                ended: false,
            });
        }
    }

    /// Carries on a call that was in progress when the daemon last stopped, from its
    /// answer-time record: its in-dialog requests are relayed again, its record completed
    /// at BYE or at the maximum call length (counted from its answer), its pinholes
    /// renewed for what is left of that and closed at the end. Our own BYEs at the maximum
    /// length need the dialog's headers, which the record does not keep: such a call ends
    /// there without them (the parties' media stops with the pinholes). Returns the call's
    /// `seq` (its records use it), or `None` for a record that cannot be resumed.
    pub fn resume(&mut self, now: Now, cdr: &Cdr, out: &mut Vec<Output>) -> Option<u64> {
        let r = cdr.resume.as_ref()?;
        let answer_at = cdr.answer_at?;
        let caller_number = cdr.caller.reveal()?;
        if self.by_call_id.contains_key(cdr.call_id.as_str()) {
            return None;
        }
        let peer = |p: &callgate_cdr::Party| Peer {
            transport: if p.tcp {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            addr: p.addr,
            conn: None,
        };
        let pool: Option<Arc<[IpNet]>> = (!r.media_pool.is_empty())
            .then(|| r.media_pool.iter().filter_map(|p| p.parse().ok()).collect());
        let seq = self.next_seq;
        self.next_seq += 1;
        // Its INVITE transaction ended with the old daemon; the key is never looked up for
        // an answered call.
        let server_key = TransactionKey::server("z9hG4bKresumed", "resumed", "INVITE").ok()?;
        let call = Call {
            seq,
            call_id: cdr.call_id.as_str().into(),
            from_tag: r.from_tag.as_str().into(),
            setup: None,
            server_key,
            caller: peer(&r.caller),
            caller_local: r.caller.local,
            number: cdr.tracking_number.as_str().into(),
            campaign: Arc::from(cdr.campaign.as_str()),
            caller_number: caller_number.into(),
            caller_name: cdr
                .caller_name
                .as_ref()
                .and_then(|n| n.reveal())
                .map(Into::into),
            client_key: None,
            callee: peer(&r.callee),
            callee_local: r.callee.local,
            destination: cdr.destination.as_str().into(),
            state: CallState::Answered,
            cancel: None,
            last_code: Some(200),
            invite_at: cdr.invite_at,
            ring_at: cdr.ring_at,
            answer_at: Some(answer_at),
            deadlines: Deadlines::new(),
            media: [
                r.caller.media.clone().into_boxed_slice(),
                r.callee.media.clone().into_boxed_slice(),
            ],
            media_open: true,
            held_answer: None,
            pool,
            offered: None,
            permit: self.admission.as_mut().map(|a| a.carry_over()),
            dialog: None,
        };
        let caller_ip = call.caller.addr.ip();
        let pinholes = call.pinholes();
        self.by_call_id.insert(call.call_id.clone(), seq);
        self.calls.insert(seq, Box::new(call));
        self.flood
            .carry_dialog(guard::Millis(now.mono.0), caller_ip);
        // What is left of the maximum call length, by the wall clock of its answer.
        let left = (answer_at + self.s.max_call.0).saturating_sub(now.unix_ms);
        self.set_timer(seq, TimerKind::MaxCall, now.mono + Millis(left));
        for a in pinholes {
            self.pinhole_for(now, a, Millis(left), out);
        }
        Some(seq)
    }

    /// A 2xx whose media the config does not allow: it never reaches the caller, the callee
    /// gets ACK and BYE, the caller 488, and nothing opens.
    fn refuse_answer(
        &mut self,
        now: Now,
        seq: u64,
        msg: &Message<'_>,
        why: &'static str,
        out: &mut Vec<Output>,
    ) {
        self.media_refused(now, seq, why, out);
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let local = call.caller_local;
        // Retransmissions of this 2xx then come in as strays and are ACKed.
        if let Some(k) = call.client_key.clone() {
            self.txs.remove(&k);
            self.tx_info.remove(&k);
        }
        self.finish_unanswered(now, seq, 488, &[warning(local, 305, why)], out);
        self.release_late_answer(now, msg, out);
    }

    fn relay_response(
        &mut self,
        now: Now,
        rid: u64,
        msg: &Message<'_>,
        code: u16,
        out: &mut Vec<Output>,
    ) {
        let Some(relay) = self.relays.get(&rid) else {
            return;
        };
        let key = relay.server_key.clone();
        let (call, is_invite) = (relay.call, &*relay.method == "INVITE");
        let callee_answers = relay.from_caller;
        let refused = if is_invite && (200..300).contains(&code) && !msg.body().is_empty() {
            match self.described_media(call, msg, callee_answers) {
                Ok(answer) => {
                    self.update_media(now, call, callee_answers, answer, out);
                    None
                }
                Err(why) => Some(why),
            }
        } else {
            None
        };
        self.respond_stripped(now, &key, msg, code, out);
        if let Some(why) = refused {
            // A re-INVITE answered with media the config does not allow: the call ends.
            self.media_refused(now, call, why, out);
            self.bye_both_ways(now, call, "media refused", out);
        }
    }

    /// Records the media one party described in a response or an ACK (`callee`: which
    /// party), together with the other party's pending offer, and once the callee has
    /// described its media keeps the pinholes equal to both parties' addresses: new ones
    /// open, ones no longer named close (re-INVITEs, late offers answered in the ACK).
    fn update_media(
        &mut self,
        now: Now,
        seq: u64,
        callee: bool,
        addrs: Media,
        out: &mut Vec<Output>,
    ) {
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        if addrs.is_empty() {
            return;
        }
        let before = call.pinholes();
        if let Some((side, offer)) = call.offered.take() {
            if side != callee && !offer.is_empty() {
                call.media[usize::from(side)] = offer;
            }
        }
        call.media[usize::from(callee)] = addrs;
        if callee {
            call.media_open = true;
        }
        let want = call.pinholes();
        for a in &want {
            if !before.contains(a) {
                self.pinhole_open(now, *a, out);
            }
        }
        for a in &before {
            if !want.contains(a) {
                self.pinhole_close(*a, out);
            }
        }
    }

    /// A call starts using the pinhole `a` (source, destination): opens it, or renews the
    /// shared one when the call could outlive its timeout.
    fn pinhole_open(&mut self, now: Now, a: (IpNet, SocketAddr), out: &mut Vec<Output>) {
        self.pinhole_for(now, a, self.s.max_call, out);
    }

    /// [`Self::pinhole_open`] for a call that may last `left` more: the pinhole a minute
    /// longer.
    fn pinhole_for(
        &mut self,
        now: Now,
        a: (IpNet, SocketAddr),
        left: Millis,
        out: &mut Vec<Output>,
    ) {
        let ttl = Millis(left.0.saturating_add(60_000));
        let need = now.mono + left;
        let until = now.mono + ttl;
        let e = self.pinholes.entry(a).or_insert((0, Millis(0)));
        e.0 += 1;
        if e.1 < need {
            e.1 = until;
            out.push(Output::Pinhole {
                open: true,
                src: a.0,
                dst: a.1,
                ttl: Duration::from_millis(ttl.0),
            });
            self.stats.pinholes_opened += 1;
        }
    }

    /// A call stops using `a`: the pinhole closes with the last call that used it.
    fn pinhole_close(&mut self, a: (IpNet, SocketAddr), out: &mut Vec<Output>) {
        let Some(e) = self.pinholes.get_mut(&a) else {
            return;
        };
        e.0 = e.0.saturating_sub(1);
        if e.0 == 0 {
            self.pinholes.remove(&a);
            out.push(Output::Pinhole {
                open: false,
                src: a.0,
                dst: a.1,
                ttl: Duration::ZERO,
            });
            self.stats.pinholes_closed += 1;
        }
    }

    fn cdr_of(
        &self,
        seq: u64,
        disposition: Disposition,
        code: u16,
        end: Option<u64>,
    ) -> Option<Cdr> {
        let c = self.calls.get(&seq)?;
        let duration_ms = match (c.answer_at, end) {
            (Some(a), Some(e)) => e.saturating_sub(a),
            _ => 0,
        };
        Some(Cdr {
            call_id: c.call_id.to_string(),
            tracking_number: c.number.to_string(),
            campaign: c.campaign.to_string(),
            caller: Pii::new(c.caller_number.to_string()),
            caller_name: c.caller_name.as_deref().map(Pii::new),
            destination: c.destination.to_string(),
            invite_at: c.invite_at,
            ring_at: c.ring_at,
            answer_at: c.answer_at,
            end_at: end,
            duration_ms,
            disposition,
            final_code: code,
            appliance: self.s.appliance.clone(),
            resume: None,
        })
    }

    /// Answers the caller with `code` (we generate it, with `extra` headers) and ends the
    /// unanswered call.
    fn finish_unanswered(
        &mut self,
        now: Now,
        seq: u64,
        code: u16,
        extra: &[(&'static str, String)],
        out: &mut Vec<Output>,
    ) {
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let key = call.server_key.clone();
        if let Some(inv) = call.setup.as_ref().map(|s| s.invite.clone()) {
            if let Ok(req) = sip::parse(&inv) {
                let tag = format!("cg{:x}", self.rand());
                if let Some(b) = msgs::response(&req, code, Some(&tag), extra) {
                    self.respond(now, &key, code, b.into(), out);
                }
            }
        }
        self.end_unanswered(now, seq, code, out);
    }

    fn end_unanswered(&mut self, now: Now, seq: u64, code: u16, out: &mut Vec<Output>) {
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let disposition = match call.cancel {
            Some(Cancel::Caller) => Disposition::Cancelled,
            Some(Cancel::NoAnswer) => Disposition::NoAnswer,
            Some(Cancel::MediaRefused) => Disposition::Failed,
            None => disposition_for(code),
        };
        match disposition {
            Disposition::Cancelled => self.stats.calls_cancelled += 1,
            Disposition::NoAnswer => self.stats.calls_no_answer += 1,
            Disposition::Busy => self.stats.calls_busy += 1,
            _ => self.stats.calls_failed += 1,
        }
        let cdr = self.cdr_of(seq, disposition, code, Some(now.unix_ms));
        self.remove_call(now, seq, out);
        if let Some(cdr) = cdr {
            out.push(Output::Record {
                seq,
                cdr: Box::new(cdr),
                ended: true,
            });
        }
    }

    fn end_answered(&mut self, now: Now, seq: u64, out: &mut Vec<Output>) {
        let cdr = self.cdr_of(seq, Disposition::Answered, 200, Some(now.unix_ms));
        self.remove_call(now, seq, out);
        if let Some(cdr) = cdr {
            out.push(Output::Record {
                seq,
                cdr: Box::new(cdr),
                ended: true,
            });
        }
    }

    fn abandon(&mut self, now: Now, branch: &str, peer: Peer, local: SocketAddr) {
        let until = now.mono + self.s.timers.timeout();
        self.abandoned.insert(
            branch.into(),
            Abandoned {
                peer,
                local,
                until,
                released: false,
            },
        );
    }

    /// A 2xx for an INVITE we gave up on: ACK it and end that dialog with BYE, so the
    /// destination does not hold a call nobody is on (RFC 3261 §16.7 leaves it to us).
    fn release_late_answer(&mut self, now: Now, msg: &Message<'_>, out: &mut Vec<Output>) {
        let Some(branch) = msg
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_owned))
        else {
            return;
        };
        let Some(ab) = self.abandoned.get(branch.as_str()).cloned() else {
            return;
        };
        let (Some(from), Some(to), Ok(call_id), Ok(cseq)) = (
            msg.single(HeaderName::From).ok().flatten(),
            msg.single(HeaderName::To).ok().flatten(),
            msg.call_id(),
            msg.cseq(),
        ) else {
            return;
        };
        let Some(target) = msg
            .contacts()
            .ok()
            .flatten()
            .and_then(|c| c.first().map(|c| c.uri.as_str().to_string()))
        else {
            return;
        };
        let (ack_via, _) = self.our_via(ab.local, ab.peer.transport);
        let mut spec = msgs::ByeSpec {
            target: &target,
            route: &[],
            via: &ack_via,
            from,
            to,
            call_id,
            cseq: cseq.seq,
        };
        let ack = msgs::ack_2xx(&spec);
        self.send(ab.peer, ab.local, ack.into(), out);
        if ab.released {
            return; // a retransmission of the 2xx: the BYE is on its way
        }
        let (via, bye_branch) = self.our_via(ab.local, ab.peer.transport);
        spec.via = &via;
        spec.cseq = cseq.seq.saturating_add(1);
        let bye = msgs::bye(&spec, "call already ended");
        if let Ok(key) = TransactionKey::client(&bye_branch, "BYE") {
            self.start_client(now, key, Owner::Own, ab.peer, ab.local, bye.into(), out);
        }
        if let Some(a) = self.abandoned.get_mut(branch.as_str()) {
            a.released = true;
        }
        let line =
            format!("released a destination that answered after the call ended (call {call_id:?})");
        self.log(now, "late-answer", log::Level::Info, line, out);
    }

    /// Forgets a call: timers, pinholes, permit. Transactions finish on their own.
    fn remove_call(&mut self, now: Now, seq: u64, out: &mut Vec<Output>) {
        let Some(call) = self.calls.remove(&seq) else {
            return;
        };
        if call.state != CallState::Answered {
            if let Some(k) = &call.client_key {
                self.abandon(now, k.branch(), call.callee, call.callee_local);
            }
        }
        self.by_call_id.remove(&call.call_id);
        for (k, at) in call.deadlines.pending() {
            self.timers.remove(&(at, seq, k));
        }
        for a in call.pinholes() {
            self.pinhole_close(a, out);
        }
        if let (Some(a), Some(p)) = (self.admission.as_mut(), call.permit) {
            a.release(p);
        }
        self.flood.dialog_ended(call.caller.addr.ip());
    }

    // ------------------------------------------------------------------ timers

    /// Fires what is due at `now`: transaction timers, call timers, health probes.
    pub fn on_timer(&mut self, now: Now, out: &mut Vec<Output>) {
        for (key, act) in self.txs.poll_timers(now.mono) {
            self.run_actions(now, &key, vec![act], out);
        }
        while let Some((at, _)) = self.accepted_until.front() {
            if *at > now.mono {
                break;
            }
            if let Some((_, k)) = self.accepted_until.pop_front() {
                self.accepted.remove(&k);
            }
        }
        while let Some(&(at, seq, kind)) = self.timers.first() {
            if at > now.mono {
                break;
            }
            self.timers.pop_first();
            let live = self
                .calls
                .get_mut(&seq)
                .is_some_and(|c| c.deadlines.take_if(kind, at));
            if live {
                self.call_timer(now, seq, kind, out);
            }
        }
        if now.mono >= self.next_probe {
            self.next_probe = now.mono + self.s.probe_interval;
            self.abandoned.retain(|_, a| a.until > now.mono);
            self.probe(now, out);
        }
    }

    fn call_timer(&mut self, now: Now, seq: u64, kind: TimerKind, out: &mut Vec<Output>) {
        match kind {
            TimerKind::Response => {
                // Silence from this destination: abandon it (no CANCEL without a
                // provisional, §9.1) and fail over.
                let Some(call) = self.calls.get_mut(&seq) else {
                    return;
                };
                call.last_code = Some(408);
                let (peer, local) = (call.callee, call.callee_local);
                if let Some(k) = call.client_key.take() {
                    self.txs.remove(&k);
                    self.tx_info.remove(&k);
                    self.abandon(now, k.branch(), peer, local);
                }
                self.try_next(now, seq, out);
            }
            TimerKind::Ring if self.calls.get(&seq).is_some_and(|c| c.cancel.is_some()) => {
                // Already cancelled by the caller: the guard timer ends it.
            }
            TimerKind::Ring => {
                let line = format!("call {seq}: no answer, cancelling");
                self.log(now, "no-answer", log::Level::Info, line, out);
                self.cancel_call(now, seq, Cancel::NoAnswer, out);
            }
            TimerKind::MaxCall => self.max_call_reached(now, seq, out),
            TimerKind::CancelGuard => self.finish_unanswered(now, seq, 487, &[], out),
        }
    }

    fn max_call_reached(&mut self, now: Now, seq: u64, out: &mut Vec<Output>) {
        let line = format!("call {seq}: maximum call length reached, sending BYE both ways");
        self.log(now, "max-call", log::Level::Warn, line, out);
        self.bye_both_ways(now, seq, "maximum call length", out);
    }

    /// Ends an answered call from here: BYE to both parties (`reason` in its Reason
    /// header), pinholes closed, the final record.
    fn bye_both_ways(&mut self, now: Now, seq: u64, reason: &str, out: &mut Vec<Output>) {
        let Some(call) = self.calls.get(&seq) else {
            return;
        };
        let dialog = call.dialog.clone();
        let (caller, caller_local, callee, callee_local) = (
            call.caller,
            call.caller_local,
            call.callee,
            call.callee_local,
        );
        let call_id = call.call_id.to_string();
        if let Some(d) = dialog {
            for (to_caller, peer, local) in
                [(true, caller, caller_local), (false, callee, callee_local)]
            {
                let (via, branch) = self.our_via(local, peer.transport);
                let route = d.route(if to_caller {
                    DialogInfo::ROUTE_TO_CALLER
                } else {
                    DialogInfo::ROUTE_TO_CALLEE
                });
                let (from, to) = (d.part(DialogInfo::FROM), d.part(DialogInfo::TO));
                let spec = msgs::ByeSpec {
                    target: d.part(if to_caller {
                        DialogInfo::CALLER_CONTACT
                    } else {
                        DialogInfo::CALLEE_CONTACT
                    }),
                    route: &route,
                    via: &via,
                    from: if to_caller { to } else { from },
                    to: if to_caller { from } else { to },
                    call_id: &call_id,
                    // Below 2^31 (requests with more are refused), so never wraps.
                    cseq: if to_caller {
                        d.callee_cseq.saturating_add(1)
                    } else {
                        d.caller_cseq.saturating_add(1)
                    },
                };
                let bytes = msgs::bye(&spec, reason);
                if let Ok(key) = TransactionKey::client(&branch, "BYE") {
                    self.start_client(now, key, Owner::Own, peer, local, bytes.into(), out);
                }
            }
        }
        self.end_answered(now, seq, out);
    }

    fn probe(&mut self, now: Now, out: &mut Vec<Output>) {
        let mut dests: Vec<Dest> = self
            .routes
            .routes()
            .iter()
            .flat_map(|r| r.destinations.iter().copied())
            .collect();
        dests.sort_by_key(|d| d.uri);
        dests.dedup_by_key(|d| d.uri);
        // Unanswered since the last round: out of rotation until a probe is answered.
        for (uri, key) in std::mem::take(&mut self.probes_pending) {
            if self.txs.remove(&key) {
                self.tx_info.remove(&key);
            }
            if self.health.is_healthy(&uri) {
                let line = format!("destination {uri} does not answer OPTIONS: out of rotation");
                self.log(now, "health", log::Level::Warn, line, out);
            }
            self.health.set_healthy(uri, false);
        }
        let mut down = 0;
        for d in dests {
            if !self.health.is_healthy(&d.uri) {
                down += 1;
            }
            let transport = dest_transport(&d);
            let local = self.local_toward(d.uri.addr.ip(), d.uri.addr);
            let (via, branch) = self.our_via(local, transport);
            let n = self.rand();
            let target = format!("sip:{}", host_port(d.uri.addr));
            let bytes = msgs::options_probe(&target, &via, &host_port(local), n);
            let Ok(key) = TransactionKey::client(&branch, "OPTIONS") else {
                continue;
            };
            let peer = Peer {
                transport,
                addr: d.uri.addr,
                conn: None,
            };
            if self.start_client(
                now,
                key.clone(),
                Owner::Probe,
                peer,
                local,
                bytes.into(),
                out,
            ) {
                self.probes_pending.push((d.uri, key));
            }
        }
        self.stats.destinations_down = down;
    }

    // ------------------------------------------------------------- transactions

    fn run_actions(
        &mut self,
        now: Now,
        key: &TransactionKey,
        acts: Vec<Action<Payload>>,
        out: &mut Vec<Output>,
    ) {
        for act in acts {
            match act {
                Action::Transmit(MessageRef::Request(m))
                | Action::Transmit(MessageRef::Response(m)) => {
                    if let Some(info) = self.tx_info.get(key).copied() {
                        self.send(info.peer, info.local, m, out);
                    }
                }
                Action::Transmit(MessageRef::Ack { .. }) => {}
                Action::PassUp(_) | Action::PassUpRetransmitted2xx(_) => {}
                Action::Timeout | Action::TransportError => self.tx_failed(now, key, out),
                Action::Terminated => {
                    if let Some(TxInfo {
                        owner: Owner::Relay(rid),
                        ..
                    }) = self.tx_info.remove(key)
                    {
                        let other_live = self.relays.get(&rid).is_some_and(|r| {
                            self.tx_info.contains_key(&r.server_key)
                                || self.tx_info.contains_key(&r.client_key)
                        });
                        if !other_live {
                            self.relays.remove(&rid);
                            self.relay_requests.remove(&rid);
                        }
                    }
                }
            }
        }
    }

    fn tx_failed(&mut self, now: Now, key: &TransactionKey, out: &mut Vec<Output>) {
        let Some(info) = self.tx_info.get(key).copied() else {
            return;
        };
        match info.owner {
            Owner::Call(seq) => {
                let current = self
                    .calls
                    .get(&seq)
                    .is_some_and(|c| c.client_key.as_ref() == Some(key));
                if current {
                    self.clear_timer(seq, TimerKind::Response);
                    if let Some(c) = self.calls.get_mut(&seq) {
                        c.last_code = Some(408);
                        c.client_key = None;
                    }
                    if self
                        .calls
                        .get(&seq)
                        .is_some_and(|c| c.state != CallState::Answered)
                    {
                        self.try_next(now, seq, out);
                    }
                }
            }
            Owner::Relay(rid) => {
                // The other party never answered a relayed request: 408 upstream.
                let Some(relay) = self.relays.get(&rid) else {
                    return;
                };
                if &relay.client_key == key {
                    let skey = relay.server_key.clone();
                    if let Some(b) = self.relay_requests.remove(&rid) {
                        if let Ok(req) = sip::parse(&b) {
                            if let Some(r) = msgs::response(&req, 408, None, &[]) {
                                self.respond(now, &skey, 408, r.into(), out);
                            }
                        }
                    }
                }
            }
            Owner::Probe => self.health.set_healthy(probe_uri(info.peer), false),
            Owner::Own => {}
        }
    }
}

fn probe_uri(peer: Peer) -> callgate_config::SipUri {
    callgate_config::SipUri {
        addr: peer.addr,
        transport: match peer.transport {
            Transport::Udp => callgate_config::Transport::Udp,
            Transport::Tcp => callgate_config::Transport::Tcp,
        },
    }
}

/// The message with its top Via removed, serialized (a response going upstream).
fn strip_via(msg: &Message<'_>) -> Option<Vec<u8>> {
    let mut m = msg.clone();
    m.remove_top_via().ok()?;
    Some(m.serialize())
}

/// What a restarted daemon needs to carry `c` on (kept in its answer-time record).
fn resume_of(c: &Call) -> callgate_cdr::Resume {
    let party = |p: Peer, local: SocketAddr, media: &Media| callgate_cdr::Party {
        tcp: p.transport == Transport::Tcp,
        addr: p.addr,
        local,
        media: media.to_vec(),
    };
    callgate_cdr::Resume {
        from_tag: c.from_tag.to_string(),
        caller: party(c.caller, c.caller_local, &c.media[0]),
        callee: party(c.callee, c.callee_local, &c.media[1]),
        media_pool: c
            .pool
            .iter()
            .flat_map(|p| p.iter().map(ToString::to_string))
            .collect(),
    }
}

/// What our own BYEs need, from the INVITE as received and the 2xx.
fn dialog_info(invite: &[u8], ok: &Message<'_>, ours: usize) -> Option<DialogInfo> {
    let inv = sip::parse(invite).ok()?;
    let contact_of = |m: &Message<'_>| -> Option<String> {
        m.contacts()
            .ok()??
            .first()
            .map(|c| c.uri.as_str().to_string())
    };
    let caller_contact = contact_of(&inv)?;
    let callee_contact = contact_of(ok)?;
    // Record-Route of the 2xx: [callee side..., ours..., caller side...].
    let rr: Vec<String> = ok
        .record_routes()
        .ok()?
        .iter()
        .map(|r| r.uri.as_str().to_string())
        .collect();
    // The caller side is what the INVITE already carried; ours are `ours` entries above it.
    let inv_rr: Vec<String> = inv
        .record_routes()
        .ok()?
        .iter()
        .map(|r| r.uri.as_str().to_string())
        .collect();
    let n_callee = rr.len().saturating_sub(inv_rr.len() + ours);
    let mut route_to_callee: Vec<String> = rr.iter().take(n_callee).cloned().collect();
    route_to_callee.reverse();
    Some(DialogInfo::new(
        [
            inv.single(HeaderName::From).ok()??,
            ok.single(HeaderName::To).ok()??,
            &caller_contact,
            &callee_contact,
            &inv_rr.join("\n"),
            &route_to_callee.join("\n"),
        ],
        inv.cseq().ok()?.seq,
    ))
}
