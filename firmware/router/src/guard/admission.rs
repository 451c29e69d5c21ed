//! Global admission control for new calls: a CPS token bucket and a concurrent-calls cap.

use super::bucket::TokenBucket;
use super::Millis;

/// Retry-After (seconds) sent when the concurrent-calls cap is reached. Calls last minutes,
/// so an exact hint is impossible; a few seconds keeps carriers from retrying in a tight loop
/// while most of them fail over to another route on the 503 anyway.
pub const FULL_RETRY_AFTER_SECS: u32 = 5;

/// Proof that one call was admitted. Hand it back to [`Admission::release`] when the call
/// ends (final non-2xx, BYE, CANCEL, timeout). It is neither `Clone` nor `Copy`, so a call is
/// released at most once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit that is dropped without release() leaks a concurrent-call slot"]
pub struct CallPermit {
    _private: (),
}

/// Why a new call was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// More than `max_cps` new calls per second (after the burst was used up).
    Cps,
    /// `max_calls` calls are already up.
    Concurrency,
}

/// A new call is refused: answer `503 Service Unavailable` with `Retry-After: retry_after_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    pub retry_after_secs: u32,
    pub reason: ShedReason,
}

/// Admission control for new calls. See the [module docs](super) for what to feed it.
#[derive(Debug, Clone)]
pub struct Admission {
    max_cps: u32,
    max_calls: u32,
    active: u32,
    bucket: TokenBucket,
}

impl Admission {
    /// At most `max_cps` new calls per second (burst `max_cps`, so at most `2 * max_cps` in
    /// any one-second window) and `max_calls` concurrent calls. `max_cps` 0 is taken as 1;
    /// `max_calls` 0 sheds every call. The bucket starts full at `now`.
    pub fn new(max_cps: u32, max_calls: u32, now: Millis) -> Admission {
        let max_cps = max_cps.max(1);
        Admission {
            max_cps,
            max_calls,
            active: 0,
            bucket: TokenBucket::full(max_cps, now),
        }
    }

    /// Admits or sheds one NEW call (an INVITE outside any dialog that is not a
    /// retransmission). The concurrency cap is checked first, so a full proxy does not use
    /// up CPS tokens.
    pub fn try_admit(&mut self, now: Millis) -> Result<CallPermit, Shed> {
        if self.active >= self.max_calls {
            return Err(Shed {
                retry_after_secs: FULL_RETRY_AFTER_SECS,
                reason: ShedReason::Concurrency,
            });
        }
        if !self.bucket.try_take(now, self.max_cps, self.max_cps) {
            let ms = self.bucket.ms_until_token(self.max_cps);
            let secs = u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1);
            return Err(Shed {
                retry_after_secs: secs,
                reason: ShedReason::Cps,
            });
        }
        self.active += 1;
        Ok(CallPermit { _private: () })
    }

    /// Takes over a call admitted before a reconfiguration: it counts against `max_calls`
    /// (even past it: a call in progress is never cut) and uses no CPS token.
    pub fn carry_over(&mut self) -> CallPermit {
        self.active += 1;
        CallPermit { _private: () }
    }

    /// The call of `permit` has ended.
    pub fn release(&mut self, permit: CallPermit) {
        let CallPermit { _private: () } = permit;
        self.active = self.active.saturating_sub(1);
    }

    /// Calls currently up.
    pub fn active(&self) -> u32 {
        self.active
    }

    pub fn max_cps(&self) -> u32 {
        self.max_cps
    }

    pub fn max_calls(&self) -> u32 {
        self.max_calls
    }
}
