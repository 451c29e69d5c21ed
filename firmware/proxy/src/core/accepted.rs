//! The INVITE transactions of answered calls in RFC 6026's Accepted state, for 64·T1
//! after the 2xx: a retransmitted INVITE is absorbed, a retransmitted 2xx goes upstream.
//!
//! Only a 64-bit fingerprint of each transaction key is kept, SipHash-1-3 under a key drawn
//! from the kernel's random source when the proxy starts (std's `RandomState`), so an
//! answered call no longer holds its two keys' allocations for the window (memory per
//! dialog is a benchmark figure). A false match needs a 64-bit collision under a key a peer
//! never sees; its worst outcome is an INVITE absorbed, or a 2xx passed upstream after the
//! Call-ID and the source checks every such 2xx must pass anyway
//! (`Proxy::on_response`).

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;

use callgate_sip::transaction::TransactionKey;

use super::Set;
use crate::Millis;

#[derive(Debug, Default)]
pub(super) struct Accepted {
    keyed: RandomState,
    set: Set<u64>,
    /// Expiry order (every entry lives as long: 64·T1).
    until: VecDeque<(Millis, u64)>,
}

impl Accepted {
    fn fingerprint(&self, key: &TransactionKey) -> u64 {
        self.keyed.hash_one(key)
    }

    /// `key` is in Accepted until `until`.
    pub(super) fn insert(&mut self, key: &TransactionKey, until: Millis) {
        let f = self.fingerprint(key);
        self.set.insert(f);
        self.until.push_back((until, f));
    }

    pub(super) fn contains(&self, key: &TransactionKey) -> bool {
        self.set.contains(&self.fingerprint(key))
    }

    /// Forgets what is due at `now`.
    pub(super) fn expire(&mut self, now: Millis) {
        while let Some(&(at, f)) = self.until.front() {
            if at > now {
                break;
            }
            self.until.pop_front();
            self.set.remove(&f);
        }
    }

    /// When [`Accepted::expire`] has something to do next.
    pub(super) fn next_deadline(&self) -> Option<Millis> {
        self.until.front().map(|&(at, _)| at)
    }

    pub(super) fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_held_for_their_window_and_only_they_match() {
        let mut a = Accepted::default();
        let inv = TransactionKey::server("z9hG4bKa", "h:5060", "INVITE").unwrap();
        let ack = TransactionKey::server("z9hG4bKa", "h:5060", "ACK").unwrap();
        let other = TransactionKey::server("z9hG4bKb", "h:5060", "INVITE").unwrap();
        let client = TransactionKey::client("z9hG4bKa", "INVITE").unwrap();
        a.insert(&inv, Millis(100));
        a.insert(&other, Millis(200));
        assert!(a.contains(&inv) && a.contains(&ack) && a.contains(&other));
        assert!(!a.contains(&client));
        assert_eq!(a.next_deadline(), Some(Millis(100)));
        a.expire(Millis(99));
        assert!(a.contains(&inv));
        a.expire(Millis(100));
        assert!(!a.contains(&inv) && a.contains(&other));
        assert_eq!((a.len(), a.next_deadline()), (1, Some(Millis(200))));
        a.expire(Millis(1000));
        assert_eq!((a.len(), a.next_deadline()), (0, None));
    }
}
