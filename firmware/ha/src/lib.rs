//! # callgate-ha
//!
//! The redundant pair's I/O: the heartbeat thread, the link watch, the virtual addresses
//! and their announcements, and the VIP guard. The decisions are `callgate-pair`'s (pure
//! state machines); this crate feeds them packets, link changes and the clock, and carries
//! out what they decide.
//!
//! ## Design
//! ```text
//!  sync0 ─┐ UDP :5405 (AEAD, one socket per path, source must be the peer's address)
//!  priv0 ─┤
//!  netlink (RTMGRP_LINK) ──▶ heartbeat thread ──▶ Election (callgate-pair) ──▶ role
//!                             (SCHED_FIFO)         │                         │
//!                                                  ▼                         ▼
//!                                 VIPs via rtnetlink + GARP/NA at 0/50/500 ms   watch<PairStatus>
//!                                 VIP guard (child process): releases on daemon death or stall
//! ```
//! - The thread runs outside the async runtime at real-time priority where allowed, so
//!   SIP load cannot delay a heartbeat or a takeover. It never blocks on anything but
//!   `poll` with a deadline.
//! - A heartbeat is accepted only when it arrives on a path's socket from the peer's
//!   address and port on that path, authenticates under the pair key, and passes the
//!   replay gate. Everything else is counted by reason and changes nothing.
//! - Health is the share of monitored links (the WAN and private zones' interfaces) that
//!   are up; a heartbeat path whose link goes down counts as missed at once.
//!
//! - Around a role change the daemon's [`Hooks`] are called from this thread and return at
//!   once: before the addresses are taken the daemon carries on the calls in progress
//!   (replicated by it) and says [`Ready`], while this thread keeps ticking (at most
//!   [`ACTIVATE_WAIT`]); after they are released the proxy forgets its calls.
//! - A re-key ([`HaHandle::accept_key`], [`HaHandle::rekey`]) keeps the old key opened for
//!   [`REKEY_OVERLAP`].
//!
//! ## Current limitations
//! - `[pair]` changes take effect at the next start of the daemon.
//! - The VIP guard dies with the daemon's cgroup on a `systemctl kill`; the addresses then
//!   stay until the next start (which releases them first).
//! - Health is the share of monitored links up; no other health checks yet.

mod announce;
mod guard;
mod node;
mod rtnl;
mod vip;

pub use announce::{garp, unsolicited_na, ANNOUNCE_AT_MS};
pub use guard::run as run_guard;
pub use node::{
    spawn, HaHandle, HaSettings, HaThread, Hooks, PairStatus, PathSettings, PathStatus, Ready,
    Rejects, ACTIVATE_WAIT, REKEY_OVERLAP,
};
pub use vip::{release_all, VipSpec};

/// What can go wrong in the pair's I/O.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("netlink ({context})")]
    Netlink {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel refused to {what} (errno {code})")]
    Kernel { what: &'static str, code: i32 },
    #[error("interface {name}")]
    Interface {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("socket: {what}")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the VIP guard")]
    Guard(#[source] std::io::Error),
    #[error("pair settings: {0}")]
    Config(&'static str),
    #[error("election settings: {0}")]
    Election(String),
}

/// Moves the calling thread to SCHED_FIFO priority 50 where allowed (CAP_SYS_NICE, or an
/// RLIMIT_RTPRIO of at least 50: the image's `LimitRTPRIO=50` for its unprivileged daemon);
/// logs and carries on at normal priority where not.
pub(crate) fn realtime(what: &str) {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let prio = ThreadPriority::Crossplatform(
        thread_priority::ThreadPriorityValue::try_from(50u8).unwrap_or_default(),
    );
    let policy = ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo);
    match set_thread_priority_and_policy(thread_native_id(), prio, policy) {
        Ok(()) => log::debug!("{what}: SCHED_FIFO"),
        Err(e) => {
            log::warn!("{what}: real-time priority not allowed ({e:?}); running at normal priority")
        }
    }
}
