//! # Overload and flood guard
//!
//! Three pure state machines that protect the proxy: no I/O, no clock (time comes in as
//! [`Millis`] from a monotonic clock the caller reads), no locks. Each is owned by the one
//! task that handles SIP input and mutated through `&mut self`.
//!
//! ## Design
//! - [`Admission`] is the global overload cap (issue 4, "Overload"): a token bucket of
//!   `max_cps` new calls per second with a burst of `max_cps`, plus a concurrent-calls
//!   counter capped at `max_calls`. [`Admission::try_admit`] returns a [`CallPermit`] or a
//!   [`Shed`] (answer 503 with `Retry-After`); [`Admission::release`] takes the permit back
//!   when the call ends. **The caller only asks for new INVITEs** (outside a dialog, not
//!   retransmissions): retransmissions are absorbed by the transaction layer and in-dialog
//!   requests (ACK, BYE, re-INVITE) belong to calls already admitted. Shedding those would
//!   break admitted calls and cause exactly the retransmission storm the cap is meant to
//!   prevent.
//! - [`FloodGuard`] judges every request per source IP, whoever sends it (issue 4, "Flood
//!   and scanner guard"): a blocked source is dropped; a scanner User-Agent
//!   ([`DEFAULT_SCANNER_USER_AGENTS`]) is dropped regardless of rate; a request over the
//!   source's token bucket is dropped. Sources named in [`FloodConfig::limits`] (carrier
//!   trunks, destinations) get rates and dialog caps of their own; those in
//!   [`FloodConfig::never_block`] are never blocked. [`FloodGuard::open_dialog`] applies
//!   the per-source dialog cap where a call is admitted (503 beyond it) and
//!   [`FloodGuard::dialog_ended`] gives the slot back when the call ends. Scanner hits and rate overruns are
//!   violations; `violations_to_block` of them within `violation_window_ms` turn into one
//!   [`Verdict::Block`], which the caller writes into the nftables blocklist set with that
//!   timeout, and [`Verdict::Drop`] for the source until the TTL has passed. Reaching the
//!   dialog cap is not a violation (a busy carrier trunk can hit it legitimately).
//! - [`LogLimiter`] rate-limits log lines on these paths per key, and reports how many were
//!   suppressed with the next line that gets through.
//! - Token buckets count milli-tokens in integers: `rate` tokens per second is exactly `rate`
//!   milli-tokens per millisecond, so caps hold exactly, with no float drift.
//!
//! ## Defaults
//! [`Admission`] has none: `max_cps` and `max_calls` come from the config. [`FloodConfig`]
//! defaults to 200 requests/s per source with a burst of 400, 2000 dialogs per source, 50
//! violations within 10 s block for 600 s, 65 536 tracked sources, the scanner list of
//! [`DEFAULT_SCANNER_USER_AGENTS`] and no `never_block` networks.
//!
//! ## Limits
//! - Memory is bounded: [`FloodGuard`] tracks at most `max_sources` sources and evicts the
//!   least recently seen one to make room (a `HashMap` plus a `BTreeMap` recency index:
//!   O(log n) per request, about 100 bytes per source). A spoofed-source flood therefore
//!   evicts real sources; an evicted source comes back with a full bucket and a zero dialog
//!   count (fail open for that source; [`Admission`] still caps the whole proxy), and an
//!   evicted block is only forgotten here: the kernel set still holds it until its timeout.
//! - Sources are single addresses (IPv4-mapped IPv6 counts as IPv4). An attacker with a whole
//!   IPv6 prefix gets a bucket per address; the global [`Admission`] cap still holds.
//! - Carrier trunks should be listed in [`FloodConfig::never_block`]: over UDP their address
//!   can be spoofed, and a block would cut our own carrier off. They are still rate-limited.
//! - Violations are counted in fixed windows, so a source can offend up to
//!   `2 * violations_to_block - 2` times across a window boundary before it is blocked.
//! - Scanner matching is an ASCII case-insensitive substring search over the User-Agent; a
//!   scanner that lies about its User-Agent is caught only by the rate limit.

mod admission;
mod bucket;
mod flood;
mod log_limit;

pub use admission::{Admission, CallPermit, Shed, ShedReason, FULL_RETRY_AFTER_SECS};
pub use flood::{FloodConfig, FloodGuard, SourceLimits, Verdict, DEFAULT_SCANNER_USER_AGENTS};
pub use log_limit::LogLimiter;

/// A point in time in milliseconds from an arbitrary origin, read from a monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

#[cfg(test)]
mod tests;
