//! # callgate-pair: the redundant pair's heartbeat
//!
//! ## What
//!
//! The two appliances of a redundant pair tell each other, every 20–30 ms on every
//! heartbeat path, that they are alive and what they hold. This crate is the protocol
//! without the I/O: [`wire`] seals and opens the heartbeat datagram, [`replay`] decides
//! which authentic heartbeats are new (sessions with an echo handshake, a sliding window).
//! The driver (sockets,
//! timers, netlink, moving the service addresses) lives in the daemon.
//!
//! ## Design
//!
//! - **Fixed size, sealed.** A heartbeat is [`wire::DATAGRAM_LEN`] bytes: a clear header
//!   that is the AEAD's associated data, an XChaCha20-Poly1305 body and a tag. Anything of
//!   another length is refused before any crypto.
//! - **Parse, don't validate.** [`NodeId`], [`PathId`], [`WireRole`] and [`Flags`] only
//!   hold values the format allows; every refusal has its own [`WireError`] variant.
//! - **No panics on network input.** No `unwrap`, `expect` or indexing outside tests.
//!
//! ## Current limitations
//!
//! - One key for the pair, supplied by the caller; no rotation protocol.

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
