//! An integer token bucket, shared by [`super::Admission`] and [`super::FloodGuard`].

use super::Millis;

/// Milli-tokens per token: the bucket counts thousandths so that refilling `rate` tokens per
/// second is exactly `rate` milli-tokens per millisecond, with no rounding drift.
const MILLI: u64 = 1000;

/// A token bucket: `rate` tokens per second, at most `burst` stored. Starts full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenBucket {
    /// Stored milli-tokens, at most `burst * MILLI`.
    milli: u64,
    /// Time of the last refill; never moves backwards.
    last: Millis,
}

impl TokenBucket {
    /// A full bucket as of `now`.
    pub(crate) fn full(burst: u32, now: Millis) -> TokenBucket {
        TokenBucket {
            milli: u64::from(burst) * MILLI,
            last: now,
        }
    }

    fn refill(&mut self, now: Millis, rate: u32, burst: u32) {
        // A clock that goes backwards (it should not: the caller injects a monotonic one)
        // refills nothing and does not move `last` back.
        let elapsed = now.0.saturating_sub(self.last.0);
        if elapsed > 0 {
            self.last = now;
        }
        let cap = u64::from(burst) * MILLI;
        self.milli = self
            .milli
            .saturating_add(elapsed.saturating_mul(u64::from(rate)))
            .min(cap);
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Millis, rate: u32, burst: u32) -> bool {
        self.refill(now, rate, burst);
        if self.milli >= MILLI {
            self.milli -= MILLI;
            true
        } else {
            false
        }
    }

    /// Milliseconds until one token is available (0 if one is now). `u64::MAX` if `rate` is 0.
    pub(crate) fn ms_until_token(&self, rate: u32) -> u64 {
        let missing = MILLI.saturating_sub(self.milli);
        if missing == 0 {
            0
        } else if rate == 0 {
            u64::MAX
        } else {
            missing.div_ceil(u64::from(rate))
        }
    }
}
