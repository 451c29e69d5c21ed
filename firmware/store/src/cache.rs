//! A small cache of unwrapped subject keys, so a write or read of a known subject's record
//! needs no tree lookup and no unwrap (an AEAD open) of its key.
//!
//! Direct-mapped: `SLOTS` slots chosen by the token's first bytes (tokens are uniformly
//! random), each an atomically swapped `Arc`; no locks. Erasure must never be undone by a
//! stale entry, so every entry carries the *erase epoch* its reader saw before reading the
//! `subjects` tree, and a hit counts only if no erasure has happened since: an erasure
//! (after its removal is durable) bumps the epoch, which invalidates every entry at once.
//! Erasures are rare; the cache refills from the tree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use callgate_vault::{SubjectKey, SubjectToken};

const SLOTS: usize = 4096;

struct Entry {
    token: SubjectToken,
    generation: u64,
    key: SubjectKey,
    epoch: u64,
}

pub(crate) struct SubjectCache {
    slots: Box<[ArcSwapOption<Entry>]>,
    epoch: AtomicU64,
}

impl SubjectCache {
    pub(crate) fn new() -> SubjectCache {
        SubjectCache {
            slots: (0..SLOTS).map(|_| ArcSwapOption::empty()).collect(),
            epoch: AtomicU64::new(0),
        }
    }

    fn slot(&self, token: &SubjectToken) -> &ArcSwapOption<Entry> {
        let b = token.as_bytes();
        &self.slots[usize::from(u16::from_le_bytes([b[0], b[1]])) % SLOTS]
    }

    /// The epoch to pass to [`SubjectCache::put`]: read it before reading the tree.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, token: &SubjectToken) -> Option<(u64, SubjectKey)> {
        let epoch = self.epoch();
        let guard = self.slot(token).load();
        match guard.as_deref() {
            Some(e) if e.token == *token && e.epoch == epoch => Some((e.generation, e.key.clone())),
            _ => None,
        }
    }

    pub(crate) fn put(&self, token: &SubjectToken, generation: u64, key: SubjectKey, epoch: u64) {
        self.slot(token).store(Some(Arc::new(Entry {
            token: *token,
            generation,
            key,
            epoch,
        })));
    }

    /// After a subject's key was durably removed: nothing cached before counts any more,
    /// and that subject's entry (if it is in its slot) is dropped, wiping the key.
    pub(crate) fn erased(&self, token: &SubjectToken) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let slot = self.slot(token);
        if slot.load().as_deref().is_some_and(|e| e.token == *token) {
            slot.store(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(b: u8) -> SubjectToken {
        SubjectToken([b; 32])
    }

    #[test]
    fn hit_miss_and_collision() {
        let c = SubjectCache::new();
        let e = c.epoch();
        assert!(c.get(&token(1)).is_none());
        c.put(&token(1), 7, SubjectKey::generate().unwrap(), e);
        assert_eq!(c.get(&token(1)).map(|(g, _)| g), Some(7));
        // same slot (first two bytes equal mod SLOTS), other token: a miss, not a wrong key
        let mut other = token(1);
        other.0[31] = 2;
        assert!(c.get(&other).is_none());
    }

    #[test]
    fn an_erasure_invalidates_everything_cached_before() {
        let c = SubjectCache::new();
        let before = c.epoch();
        c.put(&token(1), 1, SubjectKey::generate().unwrap(), before);
        c.put(&token(2), 1, SubjectKey::generate().unwrap(), before);
        c.erased(&token(1));
        assert!(c.get(&token(1)).is_none());
        assert!(c.get(&token(2)).is_none());
        // A reader that began before the erasure and stores late still misses.
        c.put(&token(1), 1, SubjectKey::generate().unwrap(), before);
        assert!(c.get(&token(1)).is_none());
        // One that began after it hits.
        let after = c.epoch();
        c.put(&token(2), 1, SubjectKey::generate().unwrap(), after);
        assert!(c.get(&token(2)).is_some());
    }
}
