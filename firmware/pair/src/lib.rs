//! # callgate-pair: the redundant pair's heartbeat, anti-replay gate and election
//!
//! ## What
//!
//! The two appliances of a redundant pair (firewall + SIP proxy) tell each other, every
//! 20–30 ms on every heartbeat path (the sync link, the private segment), that they are
//! alive and what they hold, and agree which one is active. This crate is that protocol
//! without any I/O, like rustls: [`wire`] seals and opens the heartbeat datagram,
//! [`replay`] decides which authentic heartbeats are new, and [`election`] is the
//! active/standby state machine, fed events with the time injected. The driver (sockets,
//! timers, netlink, moving the service addresses) lives in the daemon.
//!
//! ## Design
//!
//! - **Fixed size, sealed.** A heartbeat is [`wire::DATAGRAM_LEN`] (93) bytes: a clear
//!   header that is the AEAD's associated data, an XChaCha20-Poly1305 body (192-bit random
//!   nonces: the pair key is long-lived and each node sends ~80 datagrams a second) and a
//!   tag. Any other length is refused before any crypto; each refusal has its own
//!   [`WireError`] variant so the driver can count them.
//! - **Sessions, not counters, against replay.** Each node has a random session, renewed
//!   whenever it gives the peer up, and echoes the peer's; a new peer session is accepted
//!   only when it echoes the current own session, then a 64-entry window guards `seq`.
//!   See [`replay`] for the handshake and the one addition the simulation required
//!   ([`Reject::Superseded`]).
//! - **The election is a contract.** Its rules (hold-down, peer death, both-standby
//!   election, health takeover, preemption, make-before-break handover, terms, self-fencing
//!   on late timers) are listed in [`election`]; each input returns the role change it
//!   caused. Unit tests replay recorded event sequences per rule; property tests simulate
//!   whole pairs over a lossy, partitioning network with CPU stalls.
//! - **Parse, don't validate.** [`NodeId`], [`PathId`], [`WireRole`] and [`Flags`] only
//!   hold values the format allows; [`ElectionConfig::check`] refuses configurations that
//!   cannot work.
//! - **No panics on network input.** No `unwrap`, `expect` or indexing outside tests; the
//!   `fuzz/` target opens arbitrary bytes and round-trips whatever opens.
//!
//! ## The driver, in short
//!
//! Everything the daemon must do, on an in-memory network here: open, gate, elect; after
//! every election input renew the session if asked; tick every interval and send
//! [`Election::outgoing`] on every path with the gate's echo.
//!
//! ```
//! use callgate_pair::wire::DATAGRAM_LEN;
//! use callgate_pair::{
//!     new_session, open, seal, Election, ElectionConfig, Millis, NodeId, PairKey, PathId,
//!     Reject, ReplayGate, RngError, Role,
//! };
//!
//! struct Node {
//!     election: Election,
//!     gate: ReplayGate,
//!     session: u64,
//!     seq: u64,
//! }
//!
//! type Error = Box<dyn std::error::Error>;
//!
//! impl Node {
//!     fn new(id: NodeId, now: Millis) -> Result<Node, Error> {
//!         Ok(Node {
//!             election: Election::new(ElectionConfig::new(id), now)?,
//!             gate: ReplayGate::new(id.peer()),
//!             session: new_session()?,
//!             seq: 0,
//!         })
//!     }
//!
//!     /// After every election input: the peer was given up, or our timers ran late.
//!     fn renew_if_asked(&mut self) -> Result<(), RngError> {
//!         if self.election.take_peer_lost() {
//!             self.session = new_session()?;
//!             self.gate.peer_lost();
//!         }
//!         Ok(())
//!     }
//!
//!     fn receive(&mut self, key: &PairKey, now: Millis, path: PathId, d: &[u8])
//!         -> Result<(), Error>
//!     {
//!         let Ok(hb) = open(key, d) else { return Ok(()) }; // count each WireError
//!         match self.gate.check(&hb, self.session) {
//!             Ok(_) => {
//!                 if let Some(t) = self.election.on_heartbeat(now, path, &hb) {
//!                     let _ = t.to; // take or release the service addresses
//!                 }
//!                 self.renew_if_asked()?;
//!             }
//!             Err(Reject::Superseded) => self.session = new_session()?,
//!             Err(_) => {} // count each Reject
//!         }
//!         Ok(())
//!     }
//!
//!     fn tick(&mut self, key: &PairKey, now: Millis)
//!         -> Result<Vec<(PathId, [u8; DATAGRAM_LEN])>, Error>
//!     {
//!         let _ = self.election.on_tick(now);
//!         self.renew_if_asked()?;
//!         let mut out = Vec::new();
//!         for path in [PathId::SYNC_LINK, PathId::PRIVATE_SEGMENT] {
//!             self.seq += 1;
//!             let echo = self.gate.seen_peer_session();
//!             let hb = self.election.outgoing().heartbeat(path, self.session, self.seq, echo, 0);
//!             out.push((path, seal(key, &hb)?));
//!         }
//!         Ok(out)
//!     }
//! }
//!
//! let key = PairKey::generate()?;
//! let mut nodes = [Node::new(NodeId::ZERO, Millis(0))?, Node::new(NodeId::ONE, Millis(0))?];
//! for n in 1..=20 {
//!     let now = Millis(25 * n);
//!     let sent = [nodes[0].tick(&key, now)?, nodes[1].tick(&key, now)?];
//!     for (to, datagrams) in [(1, &sent[0]), (0, &sent[1])] {
//!         for (path, d) in datagrams {
//!             nodes[to].receive(&key, now, *path, d)?;
//!         }
//!     }
//! }
//! // Equal health and priority: the lower node id is elected, the other stands by.
//! assert_eq!(nodes[0].election.role(), Role::Active);
//! assert_eq!(nodes[1].election.role(), Role::Standby);
//! # Ok::<(), Error>(())
//! ```
//!
//! ## Current limitations
//!
//! - Two nodes and no witness: if every path fails in one direction only, both can be
//!   active until a heartbeat gets through; then the higher term stays (rule 5).
//! - Health is compared strictly, without hysteresis: feed a coarse, stable score.
//! - One pair key, supplied by the caller; no rotation protocol (a new key means both
//!   nodes restart with it; datagrams under the other key fail as `Auth`).
//! - A replayed datagram that echoes our current session can force one session renewal
//!   (a handshake, two or three intervals without accepted heartbeats) per own session.
//! - Heartbeats are dated by their arrival; [`Election::outgoing`] reflects the last
//!   input, so after a wake-up call [`Election::on_tick`] before sending.
//! - The replication `watermark` is carried, not interpreted: the driver decides
//!   [`Election::set_synced`].
//! - The property tests cover 1–2 paths, 20–30 ms intervals and 3–8 misses.

pub mod election;
mod exercise;
pub mod replay;
pub mod wire;

pub use election::{
    ConfigError, Election, ElectionConfig, HeartbeatFields, Millis, PeerView, Reason, Role,
    Transition,
};
#[doc(hidden)]
pub use exercise::{exercise, FUZZ_KEY};
pub use replay::{new_session, Accept, Reject, ReplayGate};
pub use wire::{open, seal, Flags, Heartbeat, NodeId, PairKey, PathId, WireError, WireRole};

/// The kernel's random number generator failed (practically impossible on a running Linux
/// system, and no reason to panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RngError(#[source] pub getrandom::Error);
