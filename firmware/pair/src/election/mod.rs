//! The active/standby election: a pure state machine with time injected.
//!
//! # Background
//!
//! Two appliances share the service addresses and the firewall/SIP state; exactly one must
//! hold them (be *active*) at a time, and when it dies the other must take over within a
//! fraction of a second. They learn about each other only from heartbeats on one to four
//! paths (the sync link, the private segment), which can be lost, delayed, reordered, or
//! all cut at once. A node can also be stopped (SIGSTOP, a starved CPU, a VM pause) and
//! resume later believing the world is as it left it.
//!
//! # Design
//!
//! Like rustls, the machine does no I/O and reads no clock. The driver feeds it events,
//! each with the current monotonic time ([`Millis`]), and each input returns the role
//! change it caused, if any ([`Transition`], at most one per input):
//!
//! - [`Election::on_heartbeat`]: a heartbeat the [`crate::replay::ReplayGate`] accepted;
//! - [`Election::on_link`]: netlink reported a path's local link down or up;
//! - [`Election::on_tick`]: the driver's timer, every `interval`;
//! - [`Election::request_handover`], [`Election::set_health`], [`Election::set_synced`].
//!
//! Outputs: [`Election::role`], [`Election::term`], [`Election::peer`],
//! [`Election::outgoing`] (what the next heartbeat says) and [`Election::take_peer_lost`]
//! (the peer was declared dead, or our timers ran late: draw a new session and call
//! [`crate::replay::ReplayGate::peer_lost`]). [`Election::counters`] counts transitions,
//! peer deaths, late inputs and ignored heartbeats.
//!
//! # The rules (the contract)
//!
//! Terms: every takeover makes the new active's term `max_seen_term + 1`, where
//! `max_seen_term` is the highest term this node has held or seen in an accepted
//! heartbeat. A standby or fenced node's term is `max_seen_term`; an active keeps the term
//! it took over with. A node's term never decreases.
//!
//! *Dead interval* `D` = `misses × interval`. A path is *missed* when its local link is
//! down, or when no accepted heartbeat arrived on it for `D` counted from the later of the
//! last heartbeat and the last *reset point* (start, a late tick, unfencing). The peer is
//! *declared dead* when every configured path is missed; its last view is then stale.
//! The peer is *live* while a heartbeat was accepted since the last reset point or death.
//! "Better" compares (health, priority, lower node id), in that order.
//!
//! 1. **Start** as Standby. **Hold-down**: no takeover before `D` has passed since start,
//!    except rule 3 (a live standby peer and we are the better one).
//! 2. **Peer dead** (every path missed) while we are Standby with health > 0 and not
//!    isolated (rule 8): become Active ([`Reason::PeerDead`]), synced or not: availability
//!    first; only preemption and handover ask for synced.
//! 3. **Both standby**, peer live: the better one becomes Active ([`Reason::Elected`]);
//!    the other stays. Both decide alike from the same two advertisements.
//! 4. **Peer active and live**, we are Standby with health > 0, after the hold-down:
//!    - the peer asks for a handover (flag bit 0) and we are synced → Active
//!      ([`Reason::Handover`]);
//!    - the peer's health is strictly lower than ours → Active ([`Reason::HealthBetter`]);
//!    - `preempt_delay` is `Some(d)`, our priority is higher, we are synced and our health
//!      is at least the peer's, continuously for `d` → Active ([`Reason::Preempt`]).
//!
//!    Otherwise stay Standby. Only the standby decides to take over; the active never
//!    steps down on health alone, so there is no moment with both standing by.
//! 5. **Two actives** (a healed partition, a stale active): an active that sees a live
//!    active peer with a higher term steps down at once ([`Reason::StaleTerm`], or
//!    [`Reason::HandedOver`] if it had asked for a handover); with equal terms the worse
//!    one steps down ([`Reason::TieBreak`]). A lower term is never yielded to.
//! 6. **Make-before-break handover**: [`Election::request_handover`] sets flag bit 0 on
//!    the active's heartbeats; the standby takes over (rule 4) with a higher term; the old
//!    active releases only when it sees that (rule 5). Afterwards the node that handed
//!    over does not take the role back on health or preemption grounds while the new
//!    active's health stays at least what it was at the handover (else a healthier old
//!    active would take it straight back); peer death, rule 3 and a handover back still
//!    apply.
//! 7. **Late timers**: an input that comes more than `interval + late_after` after the
//!    previous tick means our own timers ran late (stopped, starved): the node's view of
//!    the peer is stale. An Active becomes Fenced at once ([`Reason::LateTimers`]); every
//!    role gets a reset point (a full `D` before the peer can be declared dead) and
//!    forgets that the peer was live, so a late Standby does not take over on that input
//!    either. The late input itself carries no news (a heartbeat that finds us late sat in
//!    the socket buffer for an unknown time), and [`Election::take_peer_lost`] turns true:
//!    the driver draws a new session, so only heartbeats sealed after the resume (they echo
//!    it) reach the election, not the backlog. A Fenced node holds nothing, advertises
//!    Standby with health 0 (so the peer elects itself by rule 3 at once), becomes Standby
//!    `fence_hold` after its last late input ([`Reason::FenceExpired`], another reset
//!    point), and from then on follows the rules: it takes over only after hearing the
//!    peer (rules 3–4) or after a full `D` without it (rule 2). A stopped active that
//!    resumes comes back as Standby, never as a second active; a stopped standby that
//!    resumes does not take over spuriously.
//!
//! 8. **Isolated**: when every heartbeat path's link is down at this node's own end, the
//!    fault is on its side (or both sides lost everything): it cannot tell whether the
//!    peer took over, and the peer, if alive, takes it for dead. An Active steps down
//!    ([`Reason::Isolated`]) and a Standby does not take over, by any rule (2, 3 or 4),
//!    until a link is back, so an isolated node never answers on the shared addresses
//!    beside the peer.
//!    A path whose link is down while another is up still counts as missed at once. A
//!    link that comes back is a reset point `link_up_grace` ahead: that long plus a full
//!    `D` to hear the peer before it can be declared dead (address resolution and the
//!    switch port need time after a carrier returns).
//!
//! `late_after + 2 × interval ≤ D` is required ([`ConfigError::LateAfter`]): a stall the
//! node does not notice must be too short for the peer to declare it dead.
//!
//! # Limits
//!
//! - Two nodes, no quorum: when every path fails in one direction only, both can be
//!   active until a heartbeat gets through; rule 5 then keeps the higher term.
//! - Health is compared strictly and without hysteresis (rule 4): the driver should feed
//!   a coarse, stable score (e.g. sums of failed checks), not a noisy measurement.
//! - Heartbeats are dated by their arrival (`now`), not by the sender's clock.

use std::ops::Add;

use crate::wire::{Flags, Heartbeat, NodeId, PathId, WireRole, MAX_HEALTH, MAX_PATHS};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// A point on the caller's monotonic clock, or a duration, in milliseconds.
///
/// Arithmetic saturates: the machine never panics on a far-future clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// Zero.
    pub const ZERO: Millis = Millis(0);

    /// The value in milliseconds.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// `self * k`, saturating.
    pub const fn saturating_mul(self, k: u64) -> Millis {
        Millis(self.0.saturating_mul(k))
    }

    /// `self - rhs`, or zero if `rhs` is later.
    pub const fn saturating_sub(self, rhs: Millis) -> Millis {
        Millis(self.0.saturating_sub(rhs.0))
    }
}

impl Add for Millis {
    type Output = Millis;
    fn add(self, rhs: Millis) -> Millis {
        Millis(self.0.saturating_add(rhs.0))
    }
}

/// How one node takes part in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionConfig {
    /// This node.
    pub node: NodeId,
    /// Higher wins rule 3 ties on equal health, and preempts (rule 4) if enabled.
    pub priority: u8,
    /// How often the driver ticks and sends a heartbeat on each path (20–30 ms typical).
    pub interval: Millis,
    /// The peer is dead after this many intervals without an accepted heartbeat on every
    /// path.
    pub misses: u32,
    /// How many heartbeat paths there are (1..=4); paths `0..paths` count.
    pub paths: u8,
    /// `None` (the default): never preempt a live active. `Some(d)`: take over from a live
    /// active of lower priority after `d` of being synced and at least as healthy.
    pub preempt_delay: Option<Millis>,
    /// A tick later than this past its due time means our own timers ran late.
    pub late_after: Millis,
    /// After self-fencing, stay fenced this long after the last late input.
    pub fence_hold: Millis,
    /// A link that comes back gets this long, on top of the dead interval, to carry a
    /// heartbeat before the peer can be declared dead: the neighbour's address resolution
    /// (ARP retries every second) and the switch port need time after a carrier returns.
    pub link_up_grace: Millis,
}

impl ElectionConfig {
    /// Defaults for `node`: priority 100, 25 ms interval, 6 misses (150 ms), 2 paths, no
    /// preemption, late after 50 ms, fenced for 1 s.
    pub fn new(node: NodeId) -> ElectionConfig {
        ElectionConfig {
            node,
            priority: 100,
            interval: Millis(25),
            misses: 6,
            paths: 2,
            preempt_delay: None,
            late_after: Millis(50),
            fence_hold: Millis(1_000),
            link_up_grace: Millis(1_000),
        }
    }

    /// `misses × interval`: how long every path may stay silent before the peer is dead.
    pub fn dead_interval(&self) -> Millis {
        self.interval.saturating_mul(u64::from(self.misses))
    }

    /// Whether the values work together (see [`ConfigError`]).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.interval == Millis::ZERO {
            return Err(ConfigError::Interval);
        }
        if self.paths == 0 || usize::from(self.paths) > MAX_PATHS {
            return Err(ConfigError::Paths(self.paths));
        }
        let dead = self.dead_interval();
        if self.late_after + self.interval.saturating_mul(2) > dead {
            return Err(ConfigError::LateAfter {
                late_after: self.late_after.0,
                dead: dead.0,
            });
        }
        Ok(())
    }
}

/// An [`ElectionConfig`] that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The interval is zero.
    #[error("the heartbeat interval must be at least 1 ms")]
    Interval,
    /// Not 1..=4 paths.
    #[error("{0} heartbeat paths: must be 1 to 4")]
    Paths(u8),
    /// `late_after + 2 × interval` exceeds the dead interval: a stall this node would not
    /// notice could be long enough for the peer to declare it dead and take over.
    #[error(
        "late_after ({late_after} ms) plus two intervals exceeds the dead interval ({dead} ms)"
    )]
    LateAfter {
        /// The configured `late_after`, ms.
        late_after: u64,
        /// `misses × interval`, ms.
        dead: u64,
    },
}

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Holds nothing; takes over by the rules.
    Standby,
    /// Holds the service addresses and state.
    Active,
    /// Stopped holding anything because its own timers ran late; becomes Standby after
    /// `fence_hold`. Treat it like Standby for everything the node holds.
    Fenced,
}

impl Role {
    /// Whether the node holds the service (only [`Role::Active`] does).
    pub const fn holds(self) -> bool {
        matches!(self, Role::Active)
    }
}

/// Why a role changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Standby → Active: no accepted heartbeat on any path for the dead interval (or
    /// every link down), or none since start after the hold-down (rule 2).
    PeerDead,
    /// Standby → Active: both standby, this node is the better one (rule 3).
    Elected,
    /// Standby → Active: the live active peer is less healthy (rule 4).
    HealthBetter,
    /// Standby → Active: higher priority, synced and as healthy for `preempt_delay`
    /// (rule 4).
    Preempt,
    /// Standby → Active: the active asked for a handover and this node is synced (rule 4).
    Handover,
    /// Active → Standby: the peer is active with a higher term (rule 5).
    StaleTerm,
    /// Active → Standby: the handover this node asked for is complete: the peer is active
    /// with a higher term (rules 5 and 6).
    HandedOver,
    /// Active → Standby: the peer is active with the same term and better (rule 5).
    TieBreak,
    /// Active → Fenced: our own timers ran late (rule 7).
    LateTimers,
    /// Fenced → Standby: `fence_hold` has passed (rule 7).
    FenceExpired,
    /// Active → Standby: every heartbeat path's link is down at this node's own end; the
    /// peer, if alive, takes it for dead and takes over (rule 8).
    Isolated,
}

/// A role change: `from` → `to`, with the term after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The role before.
    pub from: Role,
    /// The role now.
    pub to: Role,
    /// The term now.
    pub term: u64,
    /// Why.
    pub reason: Reason,
}

/// The peer as its last accepted heartbeat described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// Heard since the last reset point and not declared dead since (rules use the view
    /// only while live).
    pub live: bool,
    /// Its role.
    pub role: WireRole,
    /// Its term.
    pub term: u64,
    /// Its priority.
    pub priority: u8,
    /// Its health.
    pub health: u8,
    /// Whether it is synced.
    pub synced: bool,
    /// Whether it asks for a handover.
    pub handover: bool,
    /// When a heartbeat was last accepted on each path (index = [`PathId::index`]).
    pub last_heard: [Option<Millis>; MAX_PATHS],
}

/// The election's part of the next heartbeat; [`HeartbeatFields::heartbeat`] adds the
/// driver's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatFields {
    /// This node.
    pub sender: NodeId,
    /// Our term.
    pub term: u64,
    /// Our role (a fenced node says Standby).
    pub role: WireRole,
    /// Our priority.
    pub priority: u8,
    /// Our health (a fenced node says 0).
    pub health: u8,
    /// Whether we are synced.
    pub synced: bool,
    /// [`Flags::HANDOVER`] while an active asks for a handover.
    pub flags: Flags,
}

impl HeartbeatFields {
    /// The full heartbeat for `path`: `session` and `seq` are this node's, `echo` is
    /// [`crate::replay::ReplayGate::seen_peer_session`], `watermark` the replication
    /// position.
    pub fn heartbeat(
        &self,
        path: PathId,
        session: u64,
        seq: u64,
        echo: u64,
        watermark: u64,
    ) -> Heartbeat {
        Heartbeat {
            sender: self.sender,
            path,
            session,
            seq,
            echo,
            term: self.term,
            role: self.role,
            priority: self.priority,
            health: self.health,
            synced: self.synced,
            watermark,
            flags: self.flags,
        }
    }
}

/// What happened so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ElectionCounters {
    /// Role changes.
    pub transitions: u64,
    /// Times the peer was declared dead.
    pub peer_deaths: u64,
    /// Inputs that found our own timers late (rule 7).
    pub late: u64,
    /// Heartbeats ignored: not from the peer, or on a path beyond `paths`.
    pub ignored: u64,
}

/// What [`Election::begin`] found.
struct Start {
    /// The input's time, never before an earlier input's.
    now: Millis,
    /// `Some` if our timers ran late: the input is spent on rule 7, with the transition it
    /// caused (Active → Fenced) if any.
    late: Option<Option<Transition>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerInfo {
    role: WireRole,
    term: u64,
    priority: u8,
    health: u8,
    synced: bool,
    handover: bool,
}

/// One node's election state. See the module docs for the rules.
#[derive(Debug, Clone)]
pub struct Election {
    cfg: ElectionConfig,
    role: Role,
    term: u64,
    max_seen_term: u64,
    health: u8,
    synced: bool,
    handover_requested: bool,
    /// After handing over: the new active's health then (rule 6).
    handover_floor: Option<u8>,
    started: Millis,
    last_now: Millis,
    last_tick: Millis,
    /// Deadlines count from here at the earliest: start, a late input, unfencing.
    reset: Millis,
    fenced_at: Millis,
    link_up: [bool; MAX_PATHS],
    last_heard: [Option<Millis>; MAX_PATHS],
    peer: Option<PeerInfo>,
    /// Heard since the last reset point and not declared dead since.
    peer_live: bool,
    /// Heard since it was last declared dead: a death must be signalled.
    peer_known: bool,
    peer_lost: bool,
    preempt_since: Option<Millis>,
    counters: ElectionCounters,
}

impl Election {
    /// A node starting at `now` as Standby, term 0, health 100, not synced, every link up.
    /// Set health and synced before the first tick.
    pub fn new(cfg: ElectionConfig, now: Millis) -> Result<Election, ConfigError> {
        cfg.check()?;
        Ok(Election {
            cfg,
            role: Role::Standby,
            term: 0,
            max_seen_term: 0,
            health: MAX_HEALTH,
            synced: false,
            handover_requested: false,
            handover_floor: None,
            started: now,
            last_now: now,
            last_tick: now,
            reset: now,
            fenced_at: now,
            link_up: [true; MAX_PATHS],
            last_heard: [None; MAX_PATHS],
            peer: None,
            peer_live: false,
            peer_known: false,
            peer_lost: false,
            preempt_since: None,
            counters: ElectionCounters::default(),
        })
    }

    /// The driver's timer, every `interval`: detects lateness (rule 7), peer death, the
    /// end of a fence, and applies the rules.
    pub fn on_tick(&mut self, now: Millis) -> Option<Transition> {
        let Start { now, late } = self.begin(now);
        self.last_tick = now;
        if let Some(fenced) = late {
            return fenced;
        }
        self.detect_death(now);
        if self.role == Role::Fenced && now >= self.fenced_at + self.cfg.fence_hold {
            self.reset = now;
            return Some(self.change(Role::Standby, Reason::FenceExpired));
        }
        self.evaluate(now)
    }

    /// A heartbeat from the peer that arrived on `path` and that the replay gate accepted.
    /// Heartbeats not from the peer, or on a path beyond `paths`, are ignored (counted),
    /// and so is a heartbeat that finds our timers late: it waited in the socket buffer
    /// for who knows how long (rule 7).
    pub fn on_heartbeat(
        &mut self,
        now: Millis,
        path: PathId,
        hb: &Heartbeat,
    ) -> Option<Transition> {
        let Start { now, late } = self.begin(now);
        if let Some(fenced) = late {
            return fenced;
        }
        let i = path.index();
        if hb.sender != self.cfg.node.peer() || i >= usize::from(self.cfg.paths) {
            self.counters.ignored += 1;
            return None;
        }
        if let Some(h) = self.last_heard.get_mut(i) {
            *h = Some(now);
        }
        self.peer = Some(PeerInfo {
            role: hb.role,
            term: hb.term,
            priority: hb.priority,
            health: hb.health,
            synced: hb.synced,
            handover: hb.flags.handover(),
        });
        self.peer_live = true;
        self.peer_known = true;
        self.max_seen_term = self.max_seen_term.max(hb.term);
        if self.role != Role::Active {
            self.term = self.max_seen_term;
        }
        self.evaluate(now)
    }

    /// Netlink says the local link of `path` went down or up. Down: the path counts as
    /// missed at once. Up: it counts again once a heartbeat arrives on it.
    pub fn on_link(&mut self, now: Millis, path: PathId, up: bool) -> Option<Transition> {
        let Start { now, late } = self.begin(now);
        if path.index() < usize::from(self.cfg.paths) {
            if let Some(l) = self.link_up.get_mut(path.index()) {
                *l = up;
            }
        }
        if let Some(fenced) = late {
            return fenced;
        }
        if up {
            // A link back gets a full dead interval to carry a heartbeat before anything
            // counts as missed again: the view from before it came back is stale.
            self.reset = self.reset.max(now + self.cfg.link_up_grace);
            return None;
        }
        self.detect_death(now);
        self.evaluate(now)
    }

    /// Planned failover: while Active, ask the standby to take over (rule 6). Ignored in
    /// any other role; see [`Election::handover_pending`].
    pub fn request_handover(&mut self, now: Millis) -> Option<Transition> {
        let Start { late, .. } = self.begin(now);
        if let Some(fenced) = late {
            return fenced;
        }
        if self.role == Role::Active {
            self.handover_requested = true;
        }
        None
    }

    /// Withdraws a handover request that the standby has not acted on.
    pub fn cancel_handover(&mut self) {
        self.handover_requested = false;
    }

    /// Whether this node asks the standby to take over.
    pub fn handover_pending(&self) -> bool {
        self.handover_requested && self.role == Role::Active
    }

    /// This node's health score, 0..=100 (higher values are taken as 100). Takes effect
    /// at the next input.
    pub fn set_health(&mut self, health: u8) {
        self.health = health.min(MAX_HEALTH);
    }

    /// Whether this node's replicated state is in sync. Takes effect at the next input.
    pub fn set_synced(&mut self, synced: bool) {
        self.synced = synced;
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The highest term held or seen.
    pub fn max_seen_term(&self) -> u64 {
        self.max_seen_term
    }

    /// The health this node reports.
    pub fn health(&self) -> u8 {
        self.health
    }

    /// The configuration.
    pub fn config(&self) -> &ElectionConfig {
        &self.cfg
    }

    /// What happened so far.
    pub fn counters(&self) -> ElectionCounters {
        self.counters
    }

    /// The peer as last heard, `None` before the first heartbeat.
    pub fn peer(&self) -> Option<PeerView> {
        self.peer.map(|p| PeerView {
            live: self.peer_live,
            role: p.role,
            term: p.term,
            priority: p.priority,
            health: p.health,
            synced: p.synced,
            handover: p.handover,
            last_heard: self.last_heard,
        })
    }

    /// Whether the peer was declared dead, or our timers ran late (rule 7), since the last
    /// call. When true, the driver draws a new session for this node and calls
    /// [`crate::replay::ReplayGate::peer_lost`].
    pub fn take_peer_lost(&mut self) -> bool {
        std::mem::take(&mut self.peer_lost)
    }

    /// The election's part of the next heartbeat.
    pub fn outgoing(&self) -> HeartbeatFields {
        let (role, health) = match self.role {
            Role::Active => (WireRole::Active, self.health),
            Role::Standby => (WireRole::Standby, self.health),
            Role::Fenced => (WireRole::Standby, 0),
        };
        HeartbeatFields {
            sender: self.cfg.node,
            term: self.term,
            role,
            priority: self.cfg.priority,
            health,
            synced: self.synced,
            flags: if self.handover_pending() {
                Flags::HANDOVER
            } else {
                Flags::EMPTY
            },
        }
    }

    /// Every input starts here: keeps time monotonic and applies rule 7 (late timers).
    fn begin(&mut self, now: Millis) -> Start {
        let now = now.max(self.last_now);
        self.last_now = now;
        if now <= self.last_tick + self.cfg.interval + self.cfg.late_after {
            return Start { now, late: None };
        }
        self.counters.late += 1;
        self.last_tick = now;
        self.reset = now;
        self.peer_live = false;
        self.preempt_since = None;
        // Whatever is queued from the peer may be arbitrarily old: start a new session so
        // that only heartbeats sealed after this moment (they echo it) get through.
        self.peer_known = false;
        self.peer_lost = true;
        let fenced = match self.role {
            Role::Active => {
                self.fenced_at = now;
                Some(self.change(Role::Fenced, Reason::LateTimers))
            }
            Role::Fenced => {
                self.fenced_at = now;
                None
            }
            Role::Standby => None,
        };
        Start {
            now,
            late: Some(fenced),
        }
    }

    /// Declares the peer dead when every path is missed.
    fn detect_death(&mut self, now: Millis) {
        if !self.all_missed(now) {
            return;
        }
        self.peer_live = false;
        self.preempt_since = None;
        self.handover_floor = None;
        if self.peer_known {
            self.peer_known = false;
            self.peer_lost = true;
            self.counters.peer_deaths += 1;
        }
    }

    fn all_missed(&self, now: Millis) -> bool {
        let dead = self.cfg.dead_interval();
        let paths = usize::from(self.cfg.paths);
        self.link_up
            .iter()
            .zip(self.last_heard.iter())
            .take(paths)
            .all(|(up, heard)| {
                let since = heard.map_or(self.reset, |h| h.max(self.reset));
                !up || now >= since + dead
            })
    }

    /// Every heartbeat path's local link is down (rule 8).
    fn isolated(&self) -> bool {
        self.link_up
            .iter()
            .take(usize::from(self.cfg.paths))
            .all(|up| !up)
    }

    fn live_peer(&self) -> Option<PeerInfo> {
        self.peer.filter(|_| self.peer_live)
    }

    /// Rule 3's and rule 5's order: (health, priority, lower node id).
    fn peer_is_better(&self, p: &PeerInfo) -> bool {
        let peer_id = self.cfg.node.peer();
        (p.health, p.priority, std::cmp::Reverse(peer_id))
            > (
                self.health,
                self.cfg.priority,
                std::cmp::Reverse(self.cfg.node),
            )
    }

    fn evaluate(&mut self, now: Millis) -> Option<Transition> {
        match self.role {
            Role::Fenced => None,
            Role::Active => self.evaluate_active(),
            Role::Standby => self.evaluate_standby(now),
        }
    }

    /// Rules 5 and 8.
    fn evaluate_active(&mut self) -> Option<Transition> {
        if self.isolated() {
            return Some(self.change(Role::Standby, Reason::Isolated));
        }
        let p = self.live_peer().filter(|p| p.role == WireRole::Active)?;
        if p.term > self.term {
            let reason = if self.handover_requested {
                self.handover_floor = Some(p.health);
                Reason::HandedOver
            } else {
                Reason::StaleTerm
            };
            return Some(self.change(Role::Standby, reason));
        }
        if p.term == self.term && self.peer_is_better(&p) {
            return Some(self.change(Role::Standby, Reason::TieBreak));
        }
        None
    }

    /// Rules 1–4 and 6.
    fn evaluate_standby(&mut self, now: Millis) -> Option<Transition> {
        // Health 0, or isolated (rule 8): no takeover by any rule. An isolated node that
        // took over on a peer it still counts as live (rules 3-4) would step down at once
        // (rule 8) and take over again at its next input, flapping beside the active.
        if self.health == 0 || self.isolated() {
            self.preempt_since = None;
            return None;
        }
        let held_down = now < self.started + self.cfg.dead_interval();
        match self.live_peer() {
            None => {
                self.preempt_since = None;
                (!held_down && !self.isolated() && self.all_missed(now))
                    .then(|| self.change(Role::Active, Reason::PeerDead))
            }
            Some(p) if p.role == WireRole::Standby => {
                self.preempt_since = None;
                (!self.peer_is_better(&p)).then(|| self.change(Role::Active, Reason::Elected))
            }
            Some(p) => {
                if self.handover_floor.is_some_and(|f| p.health < f) {
                    self.handover_floor = None;
                }
                if held_down {
                    self.preempt_since = None;
                    return None;
                }
                if p.handover && self.synced {
                    return Some(self.change(Role::Active, Reason::Handover));
                }
                if self.handover_floor.is_none() && p.health < self.health {
                    return Some(self.change(Role::Active, Reason::HealthBetter));
                }
                self.preempt(now, &p)
            }
        }
    }

    /// Rule 4's preemption, with its timer.
    fn preempt(&mut self, now: Millis, p: &PeerInfo) -> Option<Transition> {
        let wanted = self.handover_floor.is_none()
            && self.cfg.priority > p.priority
            && self.synced
            && self.health >= p.health;
        let delay = match self.cfg.preempt_delay {
            Some(d) if wanted => d,
            _ => {
                self.preempt_since = None;
                return None;
            }
        };
        let since = *self.preempt_since.get_or_insert(now);
        (now >= since + delay).then(|| self.change(Role::Active, Reason::Preempt))
    }

    fn change(&mut self, to: Role, reason: Reason) -> Transition {
        let from = self.role;
        self.role = to;
        self.preempt_since = None;
        if to == Role::Active {
            self.max_seen_term = self.max_seen_term.saturating_add(1);
            self.term = self.max_seen_term;
            self.handover_floor = None;
        } else {
            self.term = self.max_seen_term;
            self.handover_requested = false;
        }
        self.counters.transitions += 1;
        Transition {
            from,
            to,
            term: self.term,
            reason,
        }
    }
}
