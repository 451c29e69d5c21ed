//! Redacted transcripts waiting for the uplink (`callgate_intake`): each one sealed in the
//! `transcripts` tree under its own id, and an outbox entry naming it, so it leaves through
//! the same durable outbox as the call records and survives a restart or a dead link.
//!
//! An outbox entry names a transcript by its id with [`TRANSCRIPT`] set (call-record ids
//! never reach 2^63). The item is stored as the intake made it: JSON with the redacted text
//! only; the original never reaches the store. Once the broker acknowledged it, the uplink
//! deletes it ([`Store::remove_transcripts`]): it does not stay on the appliance.
//!
//! Write order, as for call records (see "Records and their indexes" in the crate docs):
//! the item first, then its outbox entry, the entry in flight until the commit returns; a
//! crash can leave an item without its entry (never acknowledged to the PBX: it sends it
//! again), or a sent item not yet deleted; the next open removes both.
//!
//! Not replicated to a pair's peer: what waits on an appliance is sent by that appliance's
//! uplink. Without `[uplink]`, items wait here (sealed) until one is configured.

use std::sync::atomic::Ordering;

use crate::{id_of, Applied, InFlight, Op, Store, StoreError, Table};

/// The bit that marks an outbox entry as a transcript's.
pub const TRANSCRIPT: u64 = 1 << 63;

/// Whether an outbox entry's id names a transcript (its id is `id & !TRANSCRIPT`).
pub fn is_transcript(outbox_id: u64) -> bool {
    outbox_id & TRANSCRIPT != 0
}

impl Store {
    /// Queues a redacted transcript (JSON) for the uplink: sealed, stored and put in the
    /// outbox, durable on return. Returns its outbox id (with [`TRANSCRIPT`] set).
    pub fn put_transcript(&self, item: &[u8]) -> Result<u64, StoreError> {
        let intent = self.commit.intent();
        let id = self.next_transcript.fetch_add(1, Ordering::Relaxed);
        let key = id.to_be_bytes();
        let sealed = self.seal_bytes(Table::Transcripts, &key, item)?;
        self.t.transcripts.insert(key, sealed)?;
        let in_flight = InFlight::start(self, 1)?;
        let seq = in_flight.first;
        let oid = id | TRANSCRIPT;
        self.t
            .outbox
            .insert(seq.to_be_bytes(), &oid.to_be_bytes())?;
        let applied = Applied {
            outbox: vec![(seq, oid)],
            _in_flight: Some(in_flight),
        };
        self.commit_applied(intent, applied, Vec::new())?;
        Ok(oid)
    }

    /// A queued transcript's JSON, by its outbox id; [`StoreError::NotFound`] once it was
    /// sent and removed.
    pub fn get_transcript_json(&self, oid: u64) -> Result<Vec<u8>, StoreError> {
        let id = oid & !TRANSCRIPT;
        let key = id.to_be_bytes();
        let sealed = self
            .t
            .transcripts
            .get(key)?
            .ok_or_else(|| StoreError::NotFound {
                table: Table::Transcripts.name(),
                id: id.to_string(),
            })?;
        let (_, plain) = self.open_bytes(Table::Transcripts, &key, || id.to_string(), &sealed)?;
        Ok(plain.to_vec())
    }

    /// Deletes transcripts the broker has acknowledged (outbox ids; others are ignored);
    /// durable on return.
    pub fn remove_transcripts(&self, oids: &[u64]) -> Result<(), StoreError> {
        let ops: Vec<Op> = oids
            .iter()
            .filter(|o| is_transcript(**o))
            .map(|o| Op::Remove {
                tree: self.t.transcripts.clone(),
                key: (o & !TRANSCRIPT).to_be_bytes().to_vec(),
            })
            .collect();
        if ops.is_empty() {
            return Ok(());
        }
        self.commit(ops)
    }

    /// Transcripts stored (waiting for the uplink, or sent and not yet removed).
    pub fn transcripts_len(&self) -> usize {
        self.t.transcripts.len()
    }

    /// Removes transcripts no waiting outbox entry names: a crash between the item and its
    /// entry, or between the broker's acknowledgement and the deletion. Run at open.
    /// Returns how many it removed.
    pub(crate) fn repair_transcripts(&self) -> Result<usize, StoreError> {
        if self.t.transcripts.is_empty() {
            return Ok(0);
        }
        let acked = self.acked()?.clone();
        let mut named = std::collections::BTreeSet::new();
        for item in self.t.outbox.iter() {
            let (k, v) = item?;
            if let (Some(seq), Some(oid)) = (id_of(&k), id_of(&v)) {
                if is_transcript(oid) && !acked.contains(seq) {
                    named.insert(oid & !TRANSCRIPT);
                }
            }
        }
        let mut ops = Vec::new();
        for k in self.t.transcripts.iter().keys() {
            let k = k?;
            if id_of(&k).is_none_or(|id| !named.contains(&id)) {
                ops.push(Op::Remove {
                    tree: self.t.transcripts.clone(),
                    key: k.to_vec(),
                });
            }
        }
        let n = ops.len();
        if n > 0 {
            self.commit(ops)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use callgate_vault::Kek;

    fn kek() -> Kek {
        static KEK: std::sync::OnceLock<Kek> = std::sync::OnceLock::new();
        KEK.get_or_init(|| Kek::generate().unwrap()).clone()
    }

    #[test]
    fn a_transcript_goes_through_the_outbox_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let oid = {
            let s = Store::open(dir.path(), kek()).unwrap();
            let oid = s.put_transcript(br#"{"text":"[CARD]"}"#).unwrap();
            assert!(is_transcript(oid));
            assert_eq!(s.outbox_len(), 1);
            let page = s.outbox_page(None, 10).unwrap();
            assert_eq!(
                page.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
                vec![oid]
            );
            oid
        };
        let s = Store::open(dir.path(), kek()).unwrap();
        let page = s.outbox_page(None, 10).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].1, oid);
        assert_eq!(s.get_transcript_json(oid).unwrap(), br#"{"text":"[CARD]"}"#);
        // A second one gets another id, also after the reopen.
        let two = s.put_transcript(b"{}").unwrap();
        assert_ne!(two, oid);
        // Sent: acknowledged and removed.
        s.outbox_sent(&[page[0].0]).unwrap();
        s.remove_transcripts(&[oid, 5]).unwrap();
        assert!(matches!(
            s.get_transcript_json(oid),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(s.transcripts_len(), 1);
        assert_eq!(s.outbox_len(), 1);
    }

    #[test]
    fn the_open_removes_transcripts_no_waiting_entry_names() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, sent) = {
            let s = Store::open(dir.path(), kek()).unwrap();
            let sent = s.put_transcript(b"{}").unwrap();
            let kept = s.put_transcript(b"{}").unwrap();
            // Acknowledged, the deletion never happened (a crash between the two).
            let seq = s.outbox_page(None, 10).unwrap()[0].0;
            s.outbox_sent(&[seq]).unwrap();
            (kept, sent)
        };
        let s = Store::open(dir.path(), kek()).unwrap();
        assert_eq!(s.transcripts_len(), 1);
        assert!(s.get_transcript_json(kept).is_ok());
        assert!(matches!(
            s.get_transcript_json(sent),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn a_transcript_is_sealed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), kek()).unwrap();
        s.put_transcript(b"{\"text\":\"marker-7f3a9c-in-the-clear\"}")
            .unwrap();
        drop(s);
        let mut found = false;
        for e in walk(dir.path()) {
            let bytes = std::fs::read(&e).unwrap();
            found |= bytes
                .windows(b"marker-7f3a9c".len())
                .any(|w| w == b"marker-7f3a9c");
        }
        assert!(!found, "the item reached the disk in the clear");
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}
