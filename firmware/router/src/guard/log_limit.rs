//! Rate limit for log lines on attacker-reachable paths.

use std::collections::HashMap;
use std::hash::Hash;

use super::Millis;

#[derive(Debug, Clone, Copy)]
struct Slot {
    window_start: Millis,
    lines: u32,
    suppressed: u64,
}

/// At most `lines_per_interval` lines per key per `interval_ms`; the rest are counted and the
/// count is reported with the next line that is let through for that key.
///
/// Keys are bounded by `max_keys`: once full, expired slots are swept (at most once per
/// interval) and, if still full, new keys share one overflow slot, so a spoofed-source flood
/// cannot buy itself log lines by inventing keys. Total output is thus at most
/// `(max_keys + 1) * lines_per_interval` lines per interval.
#[derive(Debug, Clone)]
pub struct LogLimiter<K> {
    lines_per_interval: u32,
    interval_ms: u64,
    max_keys: usize,
    slots: HashMap<K, Slot>,
    overflow: Option<Slot>,
    last_sweep: Option<Millis>,
}

impl<K: Hash + Eq + Clone> LogLimiter<K> {
    /// `interval_ms` 0 is taken as 1.
    pub fn new(lines_per_interval: u32, interval_ms: u64, max_keys: usize) -> LogLimiter<K> {
        LogLimiter {
            lines_per_interval,
            interval_ms: interval_ms.max(1),
            max_keys,
            slots: HashMap::new(),
            overflow: None,
            last_sweep: None,
        }
    }

    /// `Some(suppressed)` if a line for `key` may be logged now, with the number of lines
    /// suppressed for it since the last one logged (include it in the line); `None` if the
    /// line must be dropped.
    pub fn allow(&mut self, now: Millis, key: &K) -> Option<u64> {
        let (n, interval) = (self.lines_per_interval, self.interval_ms);
        if let Some(slot) = self.slots.get_mut(key) {
            return Self::hit(slot, now, n, interval);
        }
        if self.slots.len() >= self.max_keys {
            self.sweep(now);
        }
        if self.slots.len() < self.max_keys {
            let slot = self.slots.entry(key.clone()).or_insert(Slot {
                window_start: now,
                lines: 0,
                suppressed: 0,
            });
            return Self::hit(slot, now, n, interval);
        }
        let slot = self.overflow.get_or_insert(Slot {
            window_start: now,
            lines: 0,
            suppressed: 0,
        });
        Self::hit(slot, now, n, interval)
    }

    /// Keys tracked (never more than `max_keys`).
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }

    fn hit(slot: &mut Slot, now: Millis, n: u32, interval: u64) -> Option<u64> {
        if now.0.saturating_sub(slot.window_start.0) >= interval {
            slot.window_start = now;
            slot.lines = 0;
        }
        if slot.lines < n {
            slot.lines += 1;
            Some(std::mem::take(&mut slot.suppressed))
        } else {
            slot.suppressed = slot.suppressed.saturating_add(1);
            None
        }
    }

    /// Forgets slots whose window ended, at most once per interval (the scan is O(keys)).
    /// A suppressed count still owed by a forgotten slot is lost: keeping such slots would
    /// let an attacker pin every slot with one suppressed line each.
    fn sweep(&mut self, now: Millis) {
        if let Some(last) = self.last_sweep {
            if now.0.saturating_sub(last.0) < self.interval_ms {
                return;
            }
        }
        self.last_sweep = Some(now);
        let interval = self.interval_ms;
        self.slots
            .retain(|_, s| now.0.saturating_sub(s.window_start.0) < interval);
    }
}
