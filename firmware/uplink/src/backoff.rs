//! Reconnect delays: full-jitter exponential backoff (a delay drawn uniformly from zero to
//! `min(cap, base · 2^attempt)`), so a fleet that lost the broker together does not come
//! back together. Pure: the random number is passed in (the kernel's CSPRNG in
//! production).

use std::time::Duration;

/// The first ceiling.
pub const BASE: Duration = Duration::from_millis(500);

/// The delay before attempt `attempt` (0 for the first retry), given a uniformly random
/// `r`.
pub fn delay(attempt: u32, cap: Duration, r: u64) -> Duration {
    let ceiling = BASE
        .saturating_mul(1u32 << attempt.min(20))
        .min(cap)
        .max(Duration::from_millis(1));
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(r % (ms + 1))
}

/// A uniformly random `u64` from the kernel's CSPRNG (0 if it failed: no delay is better
/// than no reconnect).
pub fn random() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => 0,
    }
}

/// A random delay in `[0, max]` (the delay after start).
pub fn uniform(max: Duration, r: u64) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(r % (ms.saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_the_cap_and_the_delay_stays_under_it() {
        let cap = Duration::from_secs(60);
        assert_eq!(
            delay(0, cap, u64::MAX),
            Duration::from_millis(u64::MAX % 501)
        );
        for (attempt, ceiling_ms) in [(0, 500), (1, 1000), (3, 4000), (7, 60_000), (40, 60_000)] {
            for r in [0, 1, 12_345, u64::MAX / 3, u64::MAX] {
                let d = delay(attempt, cap, r);
                assert!(
                    d <= Duration::from_millis(ceiling_ms),
                    "{attempt} {r} {d:?}"
                );
            }
            assert_eq!(
                delay(attempt, cap, ceiling_ms),
                Duration::from_millis(ceiling_ms)
            );
        }
        assert_eq!(delay(3, cap, 0), Duration::ZERO);
        assert_eq!(uniform(Duration::ZERO, 99), Duration::ZERO);
        assert!(uniform(Duration::from_secs(30), random()) <= Duration::from_secs(30));
    }

    #[test]
    fn delays_spread_over_the_whole_window() {
        // 1000 appliances retrying at attempt 4: their delays cover the window, not a spike.
        let cap = Duration::from_secs(60);
        let mut buckets = [0u32; 8];
        for _ in 0..1000 {
            let d = delay(4, cap, random()).as_millis() as usize;
            buckets[(d * 8 / 8001).min(7)] += 1;
        }
        assert!(buckets.iter().all(|b| *b > 60), "{buckets:?}");
    }
}
