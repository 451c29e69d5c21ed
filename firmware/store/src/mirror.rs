//! The outbox's waiting writes in memory, so the uplink's reads of the outbox do not walk
//! sled (a walk of the `outbox` tree cost a fifth of the uplink's CPU per record: sled
//! reads each leaf back from its log once the records' pages have pushed it out of the
//! cache).
//!
//! A *mirror*, not the truth: the tree stays the durable outbox, and the mirror is only
//! used while it is **complete** (it holds every write the tree holds that is not
//! acknowledged). It starts incomplete (an appliance without an uplink never pays for
//! it), is filled from one walk of the tree when the uplink first reads and the backlog
//! is at most [`REFILL_AT`], and gives up (empties, incomplete again) when it would hold
//! more than [`MAX`]: a long outage falls back to walking the tree until the backlog
//! is down to [`REFILL_AT`] again. Its memory is bounded by [`MAX`] entries (about 25 B
//! each).
//!
//! Entries the mirror holds that were acknowledged meanwhile (a refill from a walk that
//! raced an acknowledgement) are harmless: every read leaves out what the acknowledged
//! ranges name, and compaction removes its writes from the mirror as from the tree.

use std::collections::BTreeMap;

use crate::acked::Ranges;

/// The most writes the mirror holds.
pub(crate) const MAX: usize = 256 * 1024;
/// The backlog at or under which an incomplete mirror is filled again.
pub(crate) const REFILL_AT: usize = MAX / 2;

#[derive(Debug, Default)]
pub(crate) struct Mirror {
    /// Write sequence → record id.
    map: BTreeMap<u64, u64>,
    complete: bool,
}

impl Mirror {
    pub(crate) fn is_complete(&self) -> bool {
        self.complete
    }

    /// Takes the tree's waiting writes (from one walk, in any order): complete unless
    /// there are more than [`MAX`].
    pub(crate) fn fill(&mut self, writes: impl IntoIterator<Item = (u64, u64)>) {
        self.map.clear();
        self.complete = true;
        for (seq, id) in writes {
            if self.map.len() >= MAX {
                self.give_up();
                return;
            }
            self.map.insert(seq, id);
        }
    }

    fn give_up(&mut self) {
        self.map = BTreeMap::new();
        self.complete = false;
    }

    /// Writes now durable in the tree.
    pub(crate) fn added(&mut self, writes: &[(u64, u64)]) {
        if !self.complete {
            return;
        }
        if self.map.len() + writes.len() > MAX {
            self.give_up();
            return;
        }
        self.map.extend(writes.iter().copied());
    }

    /// Writes acknowledged (or removed from the tree).
    pub(crate) fn removed(&mut self, seqs: &[u64]) {
        for s in seqs {
            self.map.remove(s);
        }
    }

    /// Up to `n` writes with a sequence of at least `from`, in write order, leaving out
    /// (and forgetting) what `acked` names. `None` if the mirror is incomplete.
    pub(crate) fn page(&mut self, from: u64, n: usize, acked: &Ranges) -> Option<Vec<(u64, u64)>> {
        if !self.complete {
            return None;
        }
        let mut out = Vec::with_capacity(n.min(4096));
        let mut stale = Vec::new();
        for (&seq, &id) in self.map.range(from..) {
            if acked.contains(seq) {
                stale.push(seq);
                continue;
            }
            out.push((seq, id));
            if out.len() >= n {
                break;
            }
        }
        self.removed(&stale);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_mirror_answers_nothing_and_a_full_one_gives_up() {
        let mut m = Mirror::default();
        let none = Ranges::default();
        assert_eq!(m.page(0, 10, &none), None, "starts incomplete");
        m.added(&[(1, 10)]);
        assert_eq!(
            m.page(0, 10, &none),
            None,
            "an incomplete one takes no writes"
        );
        m.fill([(3, 30), (1, 10), (2, 20)]);
        assert_eq!(m.page(0, 2, &none), Some(vec![(1, 10), (2, 20)]));
        assert_eq!(m.page(3, 10, &none), Some(vec![(3, 30)]));
        m.added(&[(4, 40)]);
        m.removed(&[1, 3]);
        assert_eq!(m.page(0, 10, &none), Some(vec![(2, 20), (4, 40)]));
        // Acknowledged meanwhile: left out, and forgotten.
        let mut acked = Ranges::default();
        acked.insert(2);
        assert_eq!(m.page(0, 10, &acked), Some(vec![(4, 40)]));
        assert_eq!(m.page(0, 10, &none), Some(vec![(4, 40)]));
        // Past MAX it gives up, and stays so until filled again.
        let many: Vec<(u64, u64)> = (10..10 + MAX as u64).map(|s| (s, s)).collect();
        m.added(&many);
        assert!(!m.is_complete());
        assert_eq!(m.page(0, 10, &none), None);
        m.fill(many.iter().copied().chain([(5, 5)]));
        assert!(
            !m.is_complete(),
            "a walk with more than MAX does not fill it"
        );
        m.fill([(5, 5)]);
        assert_eq!(m.page(0, 10, &none), Some(vec![(5, 5)]));
    }
}
