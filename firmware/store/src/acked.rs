//! The outbox's acknowledged writes, as ranges of write sequences: what the cloud has but
//! the outbox still holds until it is compacted. One small durable value per
//! acknowledgement instead of one removal per record on the uplink's path; the removals
//! happen later, when the uplink is idle ([`crate::Store::outbox_compact`]).
//!
//! Invariant: every sequence in a range is a key of the outbox (acknowledged writes are
//! read from it and leave the ranges when they leave the tree), so the ranges never reach
//! a sequence the store could hand out again after a restart.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent inclusive ranges `start → end`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    /// Decodes [`Ranges::encode`]'s bytes (16 per range); `None` if damaged.
    pub fn decode(b: &[u8]) -> Option<Ranges> {
        if !b.len().is_multiple_of(16) {
            return None;
        }
        let mut r = Ranges::default();
        for c in b.chunks_exact(16) {
            let s = u64::from_be_bytes(c[..8].try_into().ok()?);
            let e = u64::from_be_bytes(c[8..].try_into().ok()?);
            if e < s {
                return None;
            }
            r.insert_range(s, e);
        }
        Some(r)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 16);
        for (s, e) in &self.0 {
            out.extend_from_slice(&s.to_be_bytes());
            out.extend_from_slice(&e.to_be_bytes());
        }
        out
    }

    pub fn contains(&self, x: u64) -> bool {
        self.0.range(..=x).next_back().is_some_and(|(_, e)| x <= *e)
    }

    /// How many sequences the ranges hold.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s + 1).sum()
    }

    pub fn insert(&mut self, x: u64) {
        self.insert_range(x, x);
    }

    fn insert_range(&mut self, mut s: u64, mut e: u64) {
        // Merge with an overlapping or adjacent range before it…
        if let Some((&ps, &pe)) = self.0.range(..=s).next_back() {
            if pe.saturating_add(1) >= s {
                s = ps;
                e = e.max(pe);
                self.0.remove(&ps);
            }
        }
        // …and with every one it reaches after it.
        while let Some((&ns, &ne)) = self.0.range(s..).next() {
            if ns > e.saturating_add(1) {
                break;
            }
            e = e.max(ne);
            self.0.remove(&ns);
        }
        self.0.insert(s, e);
    }

    pub fn remove(&mut self, x: u64) {
        let Some((&s, &e)) = self.0.range(..=x).next_back() else {
            return;
        };
        if x > e {
            return;
        }
        self.0.remove(&s);
        if s < x {
            self.0.insert(s, x - 1);
        }
        if x < e {
            self.0.insert(x + 1, e);
        }
    }

    /// Up to `n` sequences, lowest first.
    pub fn first(&self, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n.min(4096));
        for (s, e) in &self.0 {
            let mut x = *s;
            while x <= *e && out.len() < n {
                out.push(x);
                x += 1;
            }
            if out.len() >= n {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_split_and_read_back() {
        let mut r = Ranges::default();
        for x in [5, 7, 6, 1, 2, 10] {
            r.insert(x);
        }
        assert_eq!(r.0, BTreeMap::from([(1, 2), (5, 7), (10, 10)]));
        assert!(r.contains(6) && r.contains(10) && !r.contains(3) && !r.contains(11));
        assert_eq!(r.count(), 6);
        r.insert(3);
        r.insert(4);
        assert_eq!(r.0, BTreeMap::from([(1, 7), (10, 10)]));
        r.remove(4);
        assert_eq!(r.0, BTreeMap::from([(1, 3), (5, 7), (10, 10)]));
        assert_eq!(r.first(4), vec![1, 2, 3, 5]);
        let back = Ranges::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert!(Ranges::decode(&[0; 15]).is_none());
        let mut bad = Vec::new();
        bad.extend_from_slice(&9u64.to_be_bytes());
        bad.extend_from_slice(&2u64.to_be_bytes());
        assert!(Ranges::decode(&bad).is_none());
        r.insert(u64::MAX);
        r.remove(u64::MAX);
        assert!(!r.contains(u64::MAX));
    }
}
