//! The per-peer anti-replay gate: which authentic heartbeats the election may see.
//!
//! # Background
//!
//! The AEAD proves a heartbeat was sealed with the pair key, not that it is new: anyone on
//! a heartbeat path can record datagrams and send them again later. A replayed "I am
//! active" could keep a dead peer looking alive (no failover) or make a live one look
//! stale. A sequence number alone is not enough either: a node that restarts starts its
//! counter again, and a node cannot persist a counter across a crash in time.
//!
//! # Design
//!
//! - **Sessions.** Each node draws a random nonzero 64-bit `session` ([`new_session`]) when
//!   it starts, and draws a new one every time it gives up on its peer: when the election
//!   declares the peer dead or finds its own timers late (`Election::take_peer_lost`), and
//!   when this gate reports [`Reject::Superseded`]. Sessions are never reused.
//! - **Echo.** Every outgoing heartbeat carries `echo` = [`ReplayGate::seen_peer_session`],
//!   the peer session most recently seen in an authentic (AEAD-verified) datagram, 0 if
//!   none. A datagram that echoes the receiver's *current* session was sealed after the
//!   sender heard from that session, so it cannot be older than that session.
//! - **Window.** Datagrams of the accepted peer session pass an IPsec-style 64-entry
//!   sliding window over `seq` (one counter for all paths): higher than any seen → the
//!   window slides; within the window and unseen → marked; seen → [`Reject::Replay`];
//!   64 or more below the highest → [`Reject::TooOld`].
//! - **A new session** (any session but the accepted one) is noted as seen, so the next
//!   heartbeats echo it, and is accepted only if it echoes our current session **and** no
//!   peer session is accepted (none yet, or [`ReplayGate::peer_lost`] dropped it). If it
//!   echoes our session while another is accepted, see *Superseded* below. Otherwise it is
//!   [`Reject::UnknownSession`], and nothing changes but the seen note. A replayed datagram
//!   of an old session never echoes the current session, because the session changes
//!   every time the peer is given up. Accepting a session starts its window at that
//!   datagram's `seq` with every lower number marked seen: datagrams sealed before the
//!   handshake never get in.
//! - **A dropped session is accepted again only through the handshake.** After
//!   [`ReplayGate::peer_lost`] the dropped session is an unknown session like any other:
//!   its datagrams get in again only once they echo our *new* session, which proves the
//!   peer is still running it now (a peer that only we gave up, e.g. after a one-way
//!   loss). Refusing it for good instead deadlocks: a peer that never heard us (so never
//!   gave us up) has no reason to leave that session, and we would never hear it again.
//! - **Restart handshake.** A peer that restarts (or gave us up) sends a new session with
//!   `echo` 0 or our session. Once we have dropped its old session, its first datagram that
//!   echoes our current session is accepted; it accepts ours once our heartbeats echo its
//!   session: one round trip.
//!
//! ## Superseded: the one addition to "never accept a second session"
//!
//! A new session that echoes our current session while another peer session is accepted
//! was sealed by the peer after it saw our current session, from a session other than the
//! one we hold: the peer has moved on (it restarted, or gave us up after a one-way loss,
//! or its timers ran late). The gate then gives up the accepted session at once, as
//! [`ReplayGate::peer_lost`] does, notes the new session as seen and returns
//! [`Reject::Superseded`]: the driver draws a new session for this node. The new peer
//! session is still not accepted as it is, only once it echoes our *new* session, which
//! our next heartbeat invites. A replay can trigger this at most once per own session (it
//! needs a datagram that echoes our current session, and the renewal changes it); that
//! costs a handshake, never an accepted stale datagram.
//!
//! Why: with "reject it and wait" alone, a session change on one side only leaves the
//! other side rejecting the new session until its own election declares the peer dead a
//! full dead interval later; that side then changes its session, which the first side,
//! having accepted the other's old session meanwhile, rejects in turn. The sides take
//! turns being blind and a blind standby takes over; the election's property tests found
//! that, and found that waiting for a second such datagram before giving up is too slow
//! for a dead interval of three or four heartbeats and lets the two sides chase each
//! other's renewals.
//!
//! Replaying an old session's datagrams can make our echo point at that session while the
//! replay lasts; that only delays a handshake, and an attacker who can send can also drop.

use crate::wire::{Heartbeat, NodeId};
use crate::RngError;

/// Entries in the sliding window.
pub const WINDOW: u64 = 64;

/// A new random nonzero session id from the kernel's random number generator.
pub fn new_session() -> Result<u64, RngError> {
    loop {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(RngError)?;
        let s = u64::from_be_bytes(b);
        if s != 0 {
            return Ok(s);
        }
    }
}

/// Why a heartbeat passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accept {
    /// The highest sequence number of the accepted session so far.
    Newest,
    /// Within the window and not seen before (arrived out of order).
    Reordered,
    /// The first datagram of a newly accepted peer session (handshake complete).
    NewSession,
}

/// Why an authentic heartbeat was held back from the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    /// The sender is not this gate's peer (our own datagram reflected back, or a
    /// misconfigured node id).
    #[error("not from the peer")]
    Sender,
    /// A sequence number of the accepted session seen before.
    #[error("replayed sequence number")]
    Replay,
    /// A sequence number of the accepted session below the window.
    #[error("sequence number below the window")]
    TooOld,
    /// A session that is not (or not yet) accepted.
    #[error("unknown session")]
    UnknownSession,
    /// A new session that echoes ours replaced the accepted one, which is given up (see
    /// the module docs): draw a new session for this node now.
    #[error("peer session superseded")]
    Superseded,
}

/// What the gate has let through and held back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GateCounters {
    /// Heartbeats accepted (all [`Accept`] kinds).
    pub accepted: u64,
    /// New peer sessions accepted.
    pub new_sessions: u64,
    /// [`Reject::Sender`].
    pub sender: u64,
    /// [`Reject::Replay`].
    pub replay: u64,
    /// [`Reject::TooOld`].
    pub too_old: u64,
    /// [`Reject::UnknownSession`].
    pub unknown_session: u64,
    /// [`Reject::Superseded`].
    pub superseded: u64,
}

/// The anti-replay state for the one peer of a node. Pure: no clock, no I/O.
#[derive(Debug, Clone)]
pub struct ReplayGate {
    peer: NodeId,
    accepted: Option<Window>,
    seen: u64,
    counters: GateCounters,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    session: u64,
    /// Highest sequence number accepted.
    max: u64,
    /// Bit `i` set: `max - i` was accepted.
    bitmap: u64,
}

impl Window {
    /// A window that has seen `seq` and counts everything below it as seen.
    fn new(session: u64, seq: u64) -> Window {
        Window {
            session,
            max: seq,
            bitmap: u64::MAX,
        }
    }

    fn check(&mut self, seq: u64) -> Result<Accept, Reject> {
        if seq > self.max {
            let shift = seq - self.max;
            self.bitmap = if shift >= WINDOW {
                0
            } else {
                self.bitmap << shift
            };
            self.bitmap |= 1;
            self.max = seq;
            return Ok(Accept::Newest);
        }
        let back = self.max - seq;
        if back >= WINDOW {
            return Err(Reject::TooOld);
        }
        let bit = 1u64 << back;
        if self.bitmap & bit != 0 {
            return Err(Reject::Replay);
        }
        self.bitmap |= bit;
        Ok(Accept::Reordered)
    }
}

impl ReplayGate {
    /// A gate for heartbeats from `peer`, with no session accepted yet.
    pub fn new(peer: NodeId) -> ReplayGate {
        ReplayGate {
            peer,
            accepted: None,
            seen: 0,
            counters: GateCounters::default(),
        }
    }

    /// Decides whether the authentic heartbeat `hb` reaches the election; `my_session` is
    /// this node's current session. Only AEAD-verified heartbeats may be fed here.
    pub fn check(&mut self, hb: &Heartbeat, my_session: u64) -> Result<Accept, Reject> {
        let r = self.decide(hb, my_session);
        let c = &mut self.counters;
        match r {
            Ok(a) => {
                c.accepted += 1;
                if a == Accept::NewSession {
                    c.new_sessions += 1;
                }
            }
            Err(Reject::Sender) => c.sender += 1,
            Err(Reject::Replay) => c.replay += 1,
            Err(Reject::TooOld) => c.too_old += 1,
            Err(Reject::UnknownSession) => c.unknown_session += 1,
            Err(Reject::Superseded) => c.superseded += 1,
        }
        r
    }

    fn decide(&mut self, hb: &Heartbeat, my_session: u64) -> Result<Accept, Reject> {
        if hb.sender != self.peer {
            return Err(Reject::Sender);
        }
        self.seen = hb.session;
        if let Some(w) = self.accepted.as_mut().filter(|w| w.session == hb.session) {
            return w.check(hb.seq);
        }
        if my_session == 0 || hb.echo != my_session {
            return Err(Reject::UnknownSession);
        }
        if self.accepted.is_none() {
            self.accepted = Some(Window::new(hb.session, hb.seq));
            return Ok(Accept::NewSession);
        }
        self.peer_lost();
        Err(Reject::Superseded)
    }

    /// The election declared the peer dead (or the driver otherwise gave it up): drop the
    /// accepted session. Call it together with drawing a new session for this node.
    /// Idempotent.
    pub fn peer_lost(&mut self) {
        self.accepted = None;
    }

    /// The value for the `echo` field of this node's next heartbeat: the peer session most
    /// recently seen in an authentic datagram, 0 if none.
    pub fn seen_peer_session(&self) -> u64 {
        self.seen
    }

    /// The accepted peer session, if any.
    pub fn peer_session(&self) -> Option<u64> {
        self.accepted.map(|w| w.session)
    }

    /// The peer this gate admits heartbeats from.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// What the gate has let through and held back so far.
    pub fn counters(&self) -> GateCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests;
