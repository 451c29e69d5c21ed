//! The per-source rate limit: a token bucket per source address (`burst` tokens, refilled at
//! `rate_per_minute`), pure, with the clock passed in. The table is bounded: past
//! [`MAX_SOURCES`] sources, the buckets that are full again (idle sources) are forgotten,
//! and if none is, a new source is refused until one is.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The most sources tracked at once (the allowed prefixes bound who can connect at all).
pub const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every source seen.
#[derive(Debug)]
pub struct Limiter {
    burst: f64,
    per_sec: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    pub fn new(rate_per_minute: u32, burst: u32) -> Limiter {
        Limiter {
            burst: f64::from(burst.max(1)),
            per_sec: f64::from(rate_per_minute.max(1)) / 60.0,
            buckets: HashMap::new(),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + dt * self.per_sec).min(self.burst)
    }

    /// Whether a request from `src` at `now` may go on (it takes a token); if not, how long
    /// until it could.
    pub fn admit(&mut self, src: IpAddr, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(&src) && self.buckets.len() >= MAX_SOURCES {
            let burst = self.burst;
            let per_sec = self.per_sec;
            self.buckets.retain(|_, b| {
                let dt = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens + dt * per_sec < burst
            });
            if self.buckets.len() >= MAX_SOURCES {
                return Err(Duration::from_secs(1));
            }
        }
        let b = self.buckets.get(&src).copied().unwrap_or(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = self.refilled(b, now);
        if tokens >= 1.0 {
            self.buckets.insert(
                src,
                Bucket {
                    tokens: tokens - 1.0,
                    at: now,
                },
            );
            Ok(())
        } else {
            self.buckets.insert(src, Bucket { tokens, at: now });
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_sec))
        }
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + n))
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let t0 = Instant::now();
        let mut l = Limiter::new(60, 3);
        for _ in 0..3 {
            assert!(l.admit(ip(1), t0).is_ok());
        }
        let wait = l.admit(ip(1), t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another source has its own bucket.
        assert!(l.admit(ip(2), t0).is_ok());
        // One a second comes back.
        assert!(l.admit(ip(1), t0 + Duration::from_millis(500)).is_err());
        assert!(l.admit(ip(1), t0 + Duration::from_millis(1100)).is_ok());
        assert!(l.admit(ip(1), t0 + Duration::from_millis(1200)).is_err());
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(l.admit(ip(1), later).is_ok());
        }
        assert!(l.admit(ip(1), later).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_sources() {
        let t0 = Instant::now();
        let mut l = Limiter::new(60, 1);
        for n in 0..MAX_SOURCES as u32 {
            assert!(l.admit(ip(n), t0).is_ok());
        }
        // All buckets empty: a new source waits.
        assert!(l.admit(ip(999_999), t0).is_err());
        assert_eq!(l.len(), MAX_SOURCES);
        // Once they refilled, the idle ones are forgotten and the new one passes.
        assert!(l.admit(ip(999_999), t0 + Duration::from_secs(2)).is_ok());
        assert_eq!(l.len(), 1);
    }
}
