//! The pure proxy core: see the crate docs for the call path.
//!
//! This module holds the core's state and types, its public API, and the entry of every
//! message; each concern lives in a module of its own: [`admission`] (new calls),
//! [`call`] (a call from first attempt to end), [`dialog`] (in-dialog requests and our
//! BYEs), [`pinholes`] (media checked and pinholes kept), [`records`] (records of answered
//! calls, resumption), [`health`] (destination probes), [`transactions`] and [`timers`].

mod accepted;
mod admission;
mod call;
mod dialog;
mod health;
mod pinholes;
mod records;
mod timers;
mod transactions;

/// Every call flow of the system tests is also a unit test of the core, by concern.
#[cfg(test)]
mod tests;

use accepted::Accepted;
use dialog::DialogInfo;

use std::collections::{BTreeSet, HashMap, HashSet};
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
use callgate_sip::{self as sip, HeaderName, Message, Policy, Uri, Verdict, Via};
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
    /// Our SIP over TLS listen addresses (`[sip.tls]`).
    pub tls_listen: Vec<SocketAddr>,
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
            tls_listen: sip.tls.listen_addrs(),
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

/// A request in hand: when it came, the message, who sent it and on which of our sockets;
/// what answering it needs.
#[derive(Debug, Clone, Copy)]
struct Req<'a, 'm> {
    now: Now,
    msg: &'a Message<'m>,
    peer: Peer,
    local: SocketAddr,
    /// How many Route values on top of a request name us (counted by validation's
    /// parse): the in-dialog paths remove them before relaying.
    our_routes: usize,
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
    /// The appliance that answered the call, when it is another than this one (a call
    /// carried on after the pair's failover): its records keep naming it.
    answered_by: Option<Box<str>>,
    /// Carried on from its answer-time record (after a restart or a pair's takeover):
    /// the callee's retransmitted 2xx is relayed to the caller (see
    /// `Proxy::on_response`), since the old proxy may have died before relaying it.
    resumed: bool,
    /// Call-ID, From tag, tracking number, caller number and name.
    names: Names,
    /// What only the setup needs; dropped at answer.
    setup: Option<Box<Setup>>,
    caller: Peer,
    /// Our address the caller's messages come to and ours to it leave from.
    caller_local: LocalId,
    campaign: Arc<str>,
    callee: Peer,
    /// Our address toward the callee.
    callee_local: LocalId,
    /// The current destination's URI (shared: [`Proxy::dest_text`]).
    destination: Arc<str>,
    state: CallState,
    cancel: Option<Cancel>,
    last_code: Option<u16>,
    invite_at: u64,
    ring_at: Stamp,
    answer_at: Stamp,
    /// The call's pending timers, one slot per [`TimerKind`] (inline: no allocation per
    /// call).
    deadlines: Deadlines,
    /// The media addresses each party last offered or answered (0: caller, 1: callee).
    media: [Media; 2],
    /// Whether the callee has described its media (pinholes open from then on).
    media_open: bool,
    /// The carrier's media pool, when it sends media from one (pinholes toward the callee
    /// admit it as the source).
    pool: Option<Arc<[IpNet]>>,
    /// An offer in a request (INVITE, re-INVITE) waiting for its answer: (callee?, addrs).
    /// (Boxed: it lives only from the offer to its answer.)
    offered: Option<Box<(bool, Media)>>,
    permit: Option<CallPermit>,
    /// Dialog state once answered: what BYEs of our own need.
    dialog: Option<DialogInfo>,
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
    /// The caller's INVITE transaction.
    server_key: TransactionKey,
    /// What the dialog needs of the INVITE (`None`: it lacks it; no BYEs of our own).
    caller_side: Option<dialog::CallerSide>,
    /// The INVITE transaction toward the current destination, once there is one.
    client_key: Option<TransactionKey>,
    attempt: usize,
    got_provisional: bool,
    cancel_sent: bool,
}

/// The calls by Call-ID, without a copy of it: an entry is the call's number, and the
/// Call-ID compared and hashed is the one in the call ([`Names`]). Every entry's call is in
/// `calls` (insert after the call, remove with it). Hashed with a per-process random seed,
/// like every map here (Call-IDs come from the network).
#[derive(Default)]
struct CallIds {
    table: hashbrown::HashTable<u64>,
    seed: foldhash::fast::RandomState,
}

impl std::fmt::Debug for CallIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallIds({})", self.table.len())
    }
}

impl CallIds {
    fn hash(&self, call_id: &str) -> u64 {
        use std::hash::BuildHasher;
        self.seed.hash_one(call_id)
    }

    fn get(&self, call_id: &str, calls: &Map<u64, Box<Call>>) -> Option<u64> {
        let h = self.hash(call_id);
        self.table
            .find(h, |seq| {
                calls.get(seq).is_some_and(|c| c.names.call_id() == call_id)
            })
            .copied()
    }

    /// Indexes call `seq`, already in `calls`.
    fn insert(&mut self, seq: u64, calls: &Map<u64, Box<Call>>) {
        let Some(call) = calls.get(&seq) else {
            return;
        };
        let h = self.hash(call.names.call_id());
        let seed = &self.seed;
        self.table.insert_unique(h, seq, |s| {
            use std::hash::BuildHasher;
            calls.get(s).map_or(0, |c| seed.hash_one(c.names.call_id()))
        });
    }

    fn remove(&mut self, call_id: &str, seq: u64) {
        let h = self.hash(call_id);
        if let Ok(e) = self.table.find_entry(h, |&s| s == seq) {
            e.remove();
        }
    }
}

/// The texts of a call that never change, in one allocation (a held dialog keeps its call
/// state; memory per dialog is a benchmark figure): Call-ID, From tag, tracking number,
/// caller number, and the caller's name if the INVITE gave one.
#[derive(Debug)]
struct Names {
    text: Box<str>,
    /// Where the first four end in `text`; the name is the rest.
    ends: [u32; 4],
    has_name: bool,
}

impl Names {
    /// `None` when the texts together exceed 4 GiB (no message is that long).
    fn new(
        call_id: &str,
        from_tag: &str,
        number: &str,
        caller_number: &str,
        caller_name: Option<&str>,
    ) -> Option<Names> {
        let parts = [call_id, from_tag, number, caller_number];
        let mut text = String::with_capacity(
            parts.iter().map(|p| p.len()).sum::<usize>() + caller_name.map_or(0, str::len),
        );
        let mut ends = [0u32; 4];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            *end = u32::try_from(text.len()).ok()?;
        }
        text.push_str(caller_name.unwrap_or(""));
        u32::try_from(text.len()).ok()?;
        Some(Names {
            text: text.into_boxed_str(),
            ends,
            has_name: caller_name.is_some(),
        })
    }

    /// Text `i` (0 to 4, in the order of [`Names::new`]).
    fn part(&self, i: usize) -> &str {
        let [a, b, c, d] = self.ends.map(|e| e as usize);
        let bounds = [0, a, b, c, d, self.text.len()];
        match (bounds.get(i), bounds.get(i + 1)) {
            (Some(&start), Some(&end)) => self.text.get(start..end).unwrap_or(""),
            _ => "",
        }
    }

    fn call_id(&self) -> &str {
        self.part(0)
    }

    /// The From tag: the caller's.
    fn tag_of_caller(&self) -> &str {
        self.part(1)
    }

    fn number(&self) -> &str {
        self.part(2)
    }

    fn caller_number(&self) -> &str {
        self.part(3)
    }

    fn caller_name(&self) -> Option<&str> {
        self.has_name.then(|| self.part(4))
    }
}

/// A wall-clock time in unix ms, or none (`u64::MAX`): half the size of `Option<u64>`, and
/// a call holds two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp(u64);

impl Stamp {
    const NONE: Stamp = Stamp(u64::MAX);

    fn get(self) -> Option<u64> {
        (self != Self::NONE).then_some(self.0)
    }

    fn is_none(self) -> bool {
        self == Self::NONE
    }
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

/// One of the appliance's own SIP addresses (a listener, a pair's virtual address), by
/// its number in [`Locals`]: two bytes in a call instead of a `SocketAddr`'s 32 (memory
/// per dialog is a benchmark figure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalId(u16);

/// The appliance's addresses calls have used, numbered in the order first seen and never
/// forgotten. They come from the listeners and the config (what the driver receives on and
/// [`Proxy::local_toward`] picks), so there are a handful; [`Locals::MAX`] bounds the table
/// all the same.
///
/// Each keeps its `host:port` text, which every Via and Record-Route of ours carries
/// (formatting an address for each message was 3% of the core's time in
/// `scripts/bench sip-core`).
#[derive(Debug, Default)]
struct Locals(Vec<(SocketAddr, Box<str>)>);

impl Locals {
    const MAX: usize = 4096;

    /// The number of `addr`, given one if it has none; `None` once the table is full.
    fn id(&mut self, addr: SocketAddr) -> Option<LocalId> {
        let i = match self.0.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None if self.0.len() < Self::MAX => {
                self.0.push((addr, host_port(addr).into()));
                self.0.len() - 1
            }
            None => return None,
        };
        u16::try_from(i).ok().map(LocalId)
    }

    /// `addr`'s `host:port` text (IPv6 in brackets): kept for an address with a number,
    /// made for another.
    fn host_port(&self, addr: SocketAddr) -> std::borrow::Cow<'_, str> {
        match self.0.iter().find(|(a, _)| *a == addr) {
            Some((_, text)) => std::borrow::Cow::Borrowed(text),
            None => std::borrow::Cow::Owned(host_port(addr)),
        }
    }

    /// The address numbered `id`. Numbers come only from [`Locals::id`] and are never
    /// taken back, so every one is found; the unspecified address stands in otherwise (no
    /// socket of ours is bound to it: the driver then picks one as for any address it
    /// has no socket on).
    fn addr(&self, id: LocalId) -> SocketAddr {
        self.0
            .get(usize::from(id.0))
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |(a, _)| *a)
    }
}

impl Call {
    /// The caller's INVITE transaction, while the call is being set up.
    fn server_key(&self) -> Option<&TransactionKey> {
        self.setup.as_ref().map(|s| &s.server_key)
    }

    /// The INVITE transaction toward the current destination, while the call is being set
    /// up and has one.
    fn client_key(&self) -> Option<&TransactionKey> {
        self.setup.as_ref().and_then(|s| s.client_key.as_ref())
    }

    /// The open pinholes (source, destination): each party's media from the other's,
    /// once the callee has described its own.
    fn pinholes(&self) -> Vec<(IpNet, SocketAddr)> {
        if !self.media_open {
            return Vec::new();
        }
        let [caller, callee] = &self.media;
        media::pinholes(&caller.to_vec(), &callee.to_vec(), self.pool.as_deref())
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
    /// 64·T1 after the 2xx: only a fingerprint of their keys, so a retransmitted INVITE is
    /// absorbed and a retransmitted 2xx goes upstream, without a whole transaction per key.
    accepted: Accepted,
    /// Open media pinholes: how many calls use each address, and until when its kernel
    /// timeout runs. Calls that share an address (a gateway reusing a port) share the
    /// pinhole: it closes with the last of them, and its timeout is renewed when a new call
    /// would outlive it.
    pinholes: Map<(IpNet, SocketAddr), (u32, Millis)>,
    /// Boxed: a slot per call stays small while the table grows by doubling.
    calls: Map<u64, Box<Call>>,
    /// Each answered call's 2xx (stripped of our Via) until its answer-time record is
    /// durable ([`Proxy::on_record_stored`]): only while it waits, so not in [`Call`].
    held: Map<u64, Payload>,
    /// The addresses of ours calls refer to ([`LocalId`]).
    locals: Locals,
    /// The text of each destination URI calls have gone to, shared by their records
    /// (destinations come from the config: a handful).
    dest_text: Map<callgate_config::SipUri, Arc<str>>,
    by_call_id: CallIds,
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
    /// A planned handover is under way: new calls are left to the peer.
    draining: bool,
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

/// The Via's sent-by as a transaction key holds it: the host in lower case, then `:port`
/// when the Via names one. Written into one buffer (this runs for every request).
fn via_sent_by(v: &sip::Via<'_>) -> String {
    let mut s = String::with_capacity(48);
    // Addresses print in lower case already (IPv6's hex digits too).
    v.host.push_to(&mut s);
    if let sip::Host::Name(_) = v.host {
        s.make_ascii_lowercase();
    }
    if let Some(p) = v.port {
        s.push(':');
        sip::push_decimal(&mut s, p);
    }
    s
}

fn host_port(addr: SocketAddr) -> String {
    let mut s = String::with_capacity(48);
    push_host_port(&mut s, addr);
    s
}

/// Appends `host:port` (IPv6 in brackets), as `format!("{}:{}")` of the parts writes it,
/// without the formatting machinery ([`sip::Host::push_to`] says why).
fn push_host_port(s: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => sip::push_ipv4(s, *a.ip()),
        SocketAddr::V6(a) => sip::Host::Ipv6(*a.ip()).push_to(s),
    }
    s.push(':');
    sip::push_decimal(s, addr.port());
}

/// A host's text as its `Display` writes it, borrowed when it is a name.
fn host_text<'h>(host: &sip::Host<'h>) -> std::borrow::Cow<'h, str> {
    match *host {
        sip::Host::Name(n) => std::borrow::Cow::Borrowed(n),
        ref h => {
            let mut s = String::with_capacity(48);
            h.push_to(&mut s);
            std::borrow::Cow::Owned(s)
        }
    }
}

/// Appends `n` as 16 lower-case hex digits (`format!("{n:016x}")`).
fn push_hex16(s: &mut String, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        s.push(char::from(HEX[((n >> (shift * 4)) & 0xf) as usize]));
    }
}

fn tx_transport(t: Transport) -> TxTransport {
    match t {
        Transport::Udp => TxTransport::Unreliable,
        Transport::Tcp | Transport::Tls => TxTransport::Reliable,
    }
}

fn dest_transport(d: &Dest) -> Transport {
    match d.uri.transport {
        callgate_config::Transport::Tcp => Transport::Tcp,
        callgate_config::Transport::Udp => Transport::Udp,
        callgate_config::Transport::Tls => Transport::Tls,
    }
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
            accepted: Accepted::default(),
            pinholes: Map::default(),
            calls: Map::default(),
            held: Map::default(),
            locals: Locals::default(),
            dest_text: Map::default(),
            by_call_id: CallIds::default(),
            relays: Map::default(),
            relay_requests: Map::default(),
            abandoned: Map::default(),
            timers: BTreeSet::new(),
            admission: None,
            stats: Stats::default(),
            next_seq: 1,
            draining: false,
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
                call_id: c.names.call_id().to_string(),
                tracking_number: c.names.number().to_string(),
                campaign: c.campaign.to_string(),
                caller: callgate_cdr::mask_number(c.names.caller_number()),
                destination: c.destination.to_string(),
                state: c.state,
                transport: c.caller.transport,
                invite_at: c.invite_at,
                answer_at: c.answer_at.get(),
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
        if let Some(t) = self.accepted.next_deadline() {
            d = Some(d.map_or(t, |x| x.min(t)));
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
        let mut branch = String::with_capacity(sip::transaction::MAGIC_COOKIE.len() + 18);
        branch.push_str(sip::transaction::MAGIC_COOKIE);
        branch.push_str("cg");
        push_hex16(&mut branch, self.rand());
        branch
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
        self.is_listen(SocketAddr::new(ip, port))
    }

    /// One of our listen addresses (plain or TLS).
    fn is_listen(&self, a: SocketAddr) -> bool {
        self.s.listen.contains(&a) || self.s.tls_listen.contains(&a)
    }

    /// A SIP URI naming one of our listen addresses; without a port, a `sips:` URI or
    /// one with `transport=tls` names 5061 (RFC 3261 §19.1.2), any other 5060.
    fn uri_is_ours(&self, uri: &Uri<'_>) -> bool {
        uri.as_sip().is_some_and(|u| {
            let tls = u.is_secure() || u.transport().is_some_and(|t| t.eq_ignore_ascii_case("tls"));
            let port = u.port.or(tls.then_some(5061));
            self.is_ours(&u.host, port)
        })
    }

    /// Our socket toward `ip`: the listen address on the local IP the kernel picks, or,
    /// when we listen on a virtual address beside it (a pair), the listen address that
    /// shares the longest prefix with that local IP (the one on the same segment).
    fn local_toward(&self, ip: IpAddr, fallback: SocketAddr) -> SocketAddr {
        if let Some(l) = self.s.local_for.get(&ip) {
            if let Some(a) = self.s.listen.iter().find(|a| a.ip() == *l) {
                return *a;
            }
            if let Some(a) = self
                .s
                .listen
                .iter()
                .filter(|a| a.is_ipv4() == l.is_ipv4())
                .max_by_key(|a| common_prefix(a.ip(), *l))
            {
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

    /// `local` as it goes out over `t`: over TLS, our TLS listen address on the same IP
    /// when there is one (what the peer's Record-Route then names).
    fn local_for(&self, local: SocketAddr, t: Transport) -> SocketAddr {
        match t {
            Transport::Tls => self
                .s
                .tls_listen
                .iter()
                .find(|a| a.ip() == local.ip())
                .copied()
                .unwrap_or(local),
            _ => local,
        }
    }

    fn record_route(&self, local: SocketAddr, t: Transport) -> String {
        let hp = self.locals.host_port(local);
        let params = match t {
            Transport::Udp => ";lr",
            Transport::Tcp => ";transport=tcp;lr",
            Transport::Tls => ";transport=tls;lr",
        };
        let mut s = String::with_capacity(4 + hp.len() + params.len());
        s.push_str("sip:");
        s.push_str(&hp);
        s.push_str(params);
        s
    }

    fn our_via(&mut self, local: SocketAddr, t: Transport) -> (String, String) {
        let branch = self.branch();
        // Numbered now if it was not (our Vias name the addresses calls use).
        let _ = self.locals.id(local);
        let hp = self.locals.host_port(local);
        let name = t.via_name();
        let mut via = String::with_capacity(8 + name.len() + 1 + hp.len() + 8 + branch.len());
        via.push_str("SIP/2.0/");
        via.push_str(name);
        via.push(' ');
        via.push_str(&hp);
        via.push_str(";branch=");
        via.push_str(&branch);
        (via, branch)
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.routes.carrier_of(ip).is_some() || self.dest_ips.contains(&ip.to_canonical())
    }

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
        // A request's Via and Route values are parsed once, by validation: the top Via is
        // kept; one of ours with our branch mark says the request already passed through
        // us (a loop, RFC 3261 §16.3 step 4); the Routes on top that name us are counted
        // (§16.4: they are removed before the request goes on).
        let mut top_via = None;
        let mut looped = false;
        let (mut our_routes, mut leading) = (0, true);
        let verdict = if msg.is_request() {
            sip::check_with(
                &msg,
                &self.policy,
                |v| {
                    looped |= self.is_ours(&v.host, v.port)
                        && v.branch().is_some_and(|b| b.contains("cg"));
                    if top_via.is_none() {
                        top_via = Some(v);
                    }
                },
                |r| {
                    leading &= self.uri_is_ours(&r.uri);
                    if leading {
                        our_routes += 1;
                    }
                },
            )
        } else {
            // Checked where it is used: on_response drops what lacks Via, CSeq or Call-ID.
            Verdict::Accept
        };
        let rq = &Req {
            now,
            msg: &msg,
            peer,
            local,
            our_routes,
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
                self.reply_stateless(rq, code, &[], out);
                return;
            }
        }
        if msg.is_request() {
            self.alias(&msg, peer, out);
            self.on_request(rq, bytes, top_via.as_ref(), looped, out);
        } else {
            self.on_response(now, &msg, peer, out);
        }
    }

    /// RFC 5923 connection reuse: a request over a connection whose top Via carries
    /// `alias` has requests to its sent-by address go over that connection, if the sent-by
    /// IP is the connection's peer (an address literal: no name to check against a
    /// certificate); the port defaults as the transport's (5060, TLS 5061).
    fn alias(&self, msg: &Message<'_>, peer: Peer, out: &mut Vec<Output>) {
        let Some(conn) = peer.conn.filter(|_| peer.transport.is_stream()) else {
            return;
        };
        let Ok(via) = msg.top_via() else {
            return;
        };
        if via.param("alias").is_none() {
            return;
        }
        let ip = match via.host {
            sip::Host::Ipv4(a) => IpAddr::V4(a),
            sip::Host::Ipv6(a) => IpAddr::V6(a),
            sip::Host::Name(_) => return,
        };
        if ip.to_canonical() != peer.addr.ip().to_canonical() {
            return;
        }
        let port = via.port.unwrap_or(match peer.transport {
            Transport::Tls => 5061,
            _ => 5060,
        });
        out.push(Output::Alias {
            conn,
            addr: SocketAddr::new(peer.addr.ip(), port),
        });
    }

    fn reply_stateless(
        &mut self,
        rq: &Req<'_, '_>,
        code: u16,
        extra: &[(&'static str, String)],
        out: &mut Vec<Output>,
    ) {
        let Req {
            msg: req,
            peer,
            local,
            ..
        } = *rq;
        if req.method() == Some("ACK") || !req.is_request() {
            return;
        }
        let tag = format!("cg{:x}", self.rand());
        if let Some(b) = msgs::response(req, code, Some(&tag), extra) {
            self.send(peer, local, b.into(), out);
        }
    }

    /// A request that passed validation, with its top Via and whether one of its Vias
    /// is ours (both from validation's parse, [`sip::check_with`]).
    fn on_request(
        &mut self,
        rq: &Req<'_, '_>,
        bytes: &[u8],
        top: Option<&Via<'_>>,
        looped: bool,
        out: &mut Vec<Output>,
    ) {
        let Req {
            now,
            msg,
            peer,
            local,
            ..
        } = *rq;
        let Some(method) = msg.method() else { return };
        if looped {
            self.stats.refused_loop += 1;
            self.reply_stateless(rq, 482, &[], out);
            return;
        }
        let Some(top) = top else { return };
        let Some(branch) = top.branch() else {
            self.reply_stateless(rq, 400, &[], out);
            return;
        };
        // RFC 3261 §8.1.1.5: sequence numbers stay below 2^31, so ours (+1) never wrap.
        if msg.cseq().is_ok_and(|c| c.seq >= MAX_CSEQ) {
            self.stats.malformed_dropped += 1;
            let extra = [warning(local, 399, "CSeq must be below 2^31")];
            self.reply_stateless(rq, 400, &extra, out);
            return;
        }
        let sent_by = via_sent_by(top);
        if method == "ACK" {
            self.on_ack(rq, branch, &sent_by, out);
            return;
        }
        let Ok(key) = TransactionKey::server(branch, &sent_by, method) else {
            // RFC 2543 peers: no stateful processing without an RFC 3261 branch.
            self.reply_stateless(rq, 400, &[], out);
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
            self.on_cancel(rq, key, branch, &sent_by, out);
            return;
        }
        if msg.to_tag().ok().flatten().is_some() {
            self.in_dialog(rq, key, out);
            return;
        }
        match method {
            "INVITE" if self.draining => {
                // No answer at all (a 100 Trying would stop the caller's retransmissions):
                // the retransmission reaches the peer once it holds the addresses.
                self.stats.invites_left_for_handover += 1;
            }
            "INVITE" => self.new_call(rq, bytes, key, out),
            "OPTIONS" if self.trusted(peer.addr.ip()) => {
                let allow = [(
                    "Allow",
                    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE".to_string(),
                )];
                self.reply_stateless(rq, 200, &allow, out);
            }
            _ if !self.trusted(peer.addr.ip()) => {
                self.stats.refused_not_carrier += 1;
                self.reply_stateless(rq, 403, &[], out);
            }
            _ => {
                let allow = [(
                    "Allow",
                    "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE".to_string(),
                )];
                self.reply_stateless(rq, 405, &allow, out);
            }
        }
    }
}

/// The message with its top Via removed, serialized (a response going upstream).
fn strip_via(msg: &Message<'_>) -> Option<Vec<u8>> {
    let mut m = msg.clone();
    m.remove_top_via().ok()?;
    Some(m.serialize())
}

/// How many leading bits two addresses of one family share (0 across families).
fn common_prefix(a: IpAddr, b: IpAddr) -> u32 {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) ^ u32::from(b)).leading_zeros(),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a) ^ u128::from(b)).leading_zeros(),
        _ => 0,
    }
}
