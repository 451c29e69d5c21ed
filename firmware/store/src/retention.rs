//! Retention: records older than their table's retention are deleted, and the key of each
//! subject none of whose records remain is shredded (as an erasure shreds it: the entry
//! removed, then its slot in `subject-keys` overwritten). The clock is passed in.
//!
//! The outbox's entries of the deleted records go too (the uplink would skip them; without
//! an uplink they would pile up: the steady-rate test found the outbox growing by every
//! record written).
//!
//! A call record's age counts from the end of its call (its start when it has no end);
//! calls in progress are never touched, and their subjects keep their keys. An audit
//! entry's age counts from when it was written. A record that cannot be read (damaged)
//! stays: nothing says how old it is.
//!
//! Cost: every stored call record is read and decrypted once per run (ids follow write
//! order, not call end, across a pair's two nodes); the daemon runs it hourly.
//!
//! Limitation: a record of a subject written in the instant its key is shredded (the
//! subject's index found empty, a new call's record sealed under the key just before its
//! removal) reads back with its caller erased.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::{id_of, AuditEntry, Op, Store, StoreError, SubjectToken, Table};

/// Removals per commit.
const BATCH: usize = 512;

/// What a retention run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Expired {
    pub cdrs: usize,
    pub audit: usize,
    pub keys_shredded: usize,
}

impl Store {
    /// Deletes the call records whose call ended before `now_ms - cdr_age_ms` and the
    /// audit entries written before `now_ms - audit_age_ms` (`None`: that table is kept),
    /// then shreds the key of each subject of a deleted record that no remaining record
    /// (stored, or a call in progress) needs.
    pub fn expire(
        &self,
        now_ms: u64,
        cdr_age_ms: Option<u64>,
        audit_age_ms: Option<u64>,
    ) -> Result<Expired, StoreError> {
        let mut out = Expired::default();
        if let Some(age) = cdr_age_ms {
            let cutoff = now_ms.saturating_sub(age);
            let tokens = self.expire_cdrs(cutoff, &mut out)?;
            out.keys_shredded = self.shred_unused(tokens)?;
        }
        if let Some(age) = audit_age_ms {
            out.audit = self.expire_audit(now_ms.saturating_sub(age))?;
        }
        if out != Expired::default() {
            log::info!(
                "store: retention removed {} call records and {} audit entries, shredded {} subject keys",
                out.cdrs,
                out.audit,
                out.keys_shredded
            );
        }
        Ok(out)
    }

    /// The call records that ended before `cutoff`, deleted; their subjects.
    fn expire_cdrs(
        &self,
        cutoff: u64,
        out: &mut Expired,
    ) -> Result<BTreeSet<SubjectToken>, StoreError> {
        let mut old = Vec::new();
        for item in self.t.cdrs.iter() {
            let (k, v) = item?;
            let Some(id) = id_of(&k) else { continue };
            let Ok(sealed) = self.cdr_sealed(id, &v) else {
                continue;
            };
            let Ok((token, rec)) = self.decode_cdr(id, &k, &sealed) else {
                continue;
            };
            if rec.value.end_at.unwrap_or(rec.value.invite_at) < cutoff {
                old.push((id, token));
            }
        }
        let mut tokens = BTreeSet::new();
        let ids: BTreeSet<u64> = old.iter().map(|(id, _)| *id).collect();
        if !old.is_empty() {
            // As in `remove_cdr`: no released slot may still name a record that leaves.
            self.zero_released_slots()?;
        }
        for chunk in old.chunks(BATCH) {
            let mut ops = Vec::new();
            for (id, token) in chunk {
                let key = id.to_be_bytes();
                // As `remove_cdr`: the pointer first, then the index entry.
                let Some(pointer) = self.t.cdrs.remove(key)? else {
                    continue;
                };
                if let Some(t) = token {
                    ops.push(Op::Remove {
                        tree: self.t.by_subject.clone(),
                        key: [t.as_bytes().as_slice(), &key].concat(),
                    });
                    tokens.insert(*t);
                }
                self.log.released(&pointer);
                out.cdrs += 1;
            }
            self.commit(ops)?;
        }
        self.drop_outbox_of(&ids)?;
        Ok(tokens)
    }

    /// Removes the outbox's entries of deleted records (the uplink would skip them; without
    /// an uplink, or with it away, they would pile up).
    fn drop_outbox_of(&self, ids: &BTreeSet<u64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::new();
        for item in self.t.outbox.iter() {
            let (k, v) = item?;
            if id_of(&v).is_some_and(|id| ids.contains(&id)) {
                keys.push(k.to_vec());
            }
        }
        self.remove_keys(&self.t.outbox, &keys)
    }

    /// Removes `keys` from `tree`, [`BATCH`] to a commit (counted: the outbox's count and
    /// mirror follow when it is the outbox).
    fn remove_keys(&self, tree: &sled::Tree, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        for chunk in keys.chunks(BATCH) {
            let ops = chunk
                .iter()
                .map(|k| Op::Remove {
                    tree: tree.clone(),
                    key: k.clone(),
                })
                .collect();
            self.commit_counted(ops)?;
        }
        Ok(())
    }

    /// Shreds the key of each of `tokens` that no record needs any more; how many.
    fn shred_unused(&self, tokens: BTreeSet<SubjectToken>) -> Result<usize, StoreError> {
        if tokens.is_empty() {
            return Ok(0);
        }
        let in_progress: BTreeSet<SubjectToken> = self
            .open_cdrs(|ids| ids)?
            .into_iter()
            .filter_map(|(_, r)| r.ok().and_then(|(t, _)| t))
            .collect();
        let mut n = 0;
        for t in tokens {
            if in_progress.contains(&t)
                || self.t.by_subject.scan_prefix(t.as_bytes()).next().is_some()
                || !self.t.subjects.contains_key(t.as_bytes())?
            {
                continue;
            }
            let slot = self.key_slot_of(&t)?;
            self.commit(vec![Op::Remove {
                tree: self.t.subjects.clone(),
                key: t.as_bytes().to_vec(),
            }])?;
            self.keys.subjects.erased(&t);
            self.shred_key_slot(slot);
            n += 1;
        }
        Ok(n)
    }

    /// The audit entries written before `cutoff`, deleted; how many.
    fn expire_audit(&self, cutoff: u64) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for item in self.t.audit.iter() {
            let (k, v) = item?;
            let Some(id) = id_of(&k) else { continue };
            let Ok((_, e)) = self.open_value::<AuditEntry>(Table::Audit, &k, || id.to_string(), &v)
            else {
                continue;
            };
            if e.time_ms < cutoff {
                old.push(k.to_vec());
            }
        }
        self.remove_keys(&self.t.audit, &old)?;
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use crate::Cdr;

    const DAY: u64 = 86_400_000;
    /// "Now" in the test: day 100.
    const NOW: u64 = 100 * DAY;

    fn cdr(caller: &str, ended_day: u64) -> Cdr {
        Cdr {
            invite_at: ended_day * DAY - 60_000,
            end_at: Some(ended_day * DAY),
            ..crate::subject::tests::cdr(caller)
        }
    }

    fn audit(day: u64) -> AuditEntry {
        AuditEntry {
            time_ms: day * DAY,
            user: "root".into(),
            action: "commit".into(),
            ..AuditEntry::default()
        }
    }

    #[test]
    fn old_records_go_new_ones_stay_and_keys_go_only_when_unused() {
        let dir = tempfile::tempdir().unwrap();
        let kek = callgate_vault::Kek::generate().unwrap();
        let s = Store::open(dir.path(), kek.clone()).unwrap();
        // Only old calls: their records and their key go.
        let gone = [
            s.append_cdr(&cdr("+12025550101", 10)).unwrap(),
            s.append_cdr(&cdr("+12025550101", 20)).unwrap(),
        ];
        // An old call and a new one: the old record goes, the key stays.
        let old_b = s.append_cdr(&cdr("+12025550102", 10)).unwrap();
        let new_b = s.append_cdr(&cdr("+12025550102", 99)).unwrap();
        // Only a new call.
        let new_c = s.append_cdr(&cdr("+12025550103", 95)).unwrap();
        // An old call, and a call of theirs in progress: the key stays.
        let old_d = s.append_cdr(&cdr("+12025550104", 10)).unwrap();
        let open_d = s.reserve_cdr_id();
        let answered = Cdr {
            end_at: None,
            ..cdr("+12025550104", 99)
        };
        assert!(s.put_open_cdrs(&[(open_d, &answered)]).unwrap().is_empty());
        let token_a = s.subject_token("+12025550101");
        let slot_a = s.key_slot_of(&token_a).unwrap().unwrap();
        let wrapped_a = s.key_slots.get(slot_a).unwrap().unwrap();
        let audits: Vec<u64> = [5, 50, 98]
            .iter()
            .map(|d| s.append_audit(&audit(*d)).unwrap())
            .collect();

        // Nothing configured: nothing goes.
        assert_eq!(s.expire(NOW, None, None).unwrap(), Expired::default());
        // Thirty days for records, sixty for the audit trail.
        let r = s.expire(NOW, Some(30 * DAY), Some(60 * DAY)).unwrap();
        assert_eq!(
            r,
            Expired {
                cdrs: 4,
                audit: 1,
                keys_shredded: 1
            }
        );
        for id in gone.iter().chain([&old_b, &old_d]) {
            assert!(
                matches!(s.get_cdr(*id), Err(StoreError::NotFound { .. })),
                "{id}"
            );
        }
        for id in [new_b, new_c] {
            assert!(
                s.get_cdr(id).unwrap().value.caller.reveal().is_some(),
                "{id}"
            );
        }
        assert!(s.get_cdr(open_d).unwrap().value.caller.reveal().is_some());
        let info = |n: &str| s.subject_info(n).unwrap();
        assert_eq!(
            (
                info("+12025550101").records,
                info("+12025550101").key_generation
            ),
            (0, None)
        );
        assert_eq!(info("+12025550102").records, 1);
        assert!(info("+12025550102").key_generation.is_some());
        assert!(info("+12025550103").key_generation.is_some());
        assert!(
            info("+12025550104").key_generation.is_some(),
            "a call in progress needs it"
        );
        assert!(matches!(
            s.get_audit(audits[0]),
            Err(StoreError::NotFound { .. })
        ));
        s.get_audit(audits[1]).unwrap();
        s.get_audit(audits[2]).unwrap();
        // Run again: nothing more; the shredded key is in no file.
        assert_eq!(
            s.expire(NOW, Some(30 * DAY), Some(60 * DAY)).unwrap(),
            Expired::default()
        );
        drop(s);
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let b = std::fs::read(&p).unwrap();
                    assert!(
                        !b.windows(wrapped_a.len()).any(|w| w == wrapped_a),
                        "{}",
                        p.display()
                    );
                }
            }
        }
        // Reopened: the same.
        let s = Store::open(dir.path(), kek).unwrap();
        assert_eq!(s.subject_info("+12025550102").unwrap().records, 1);
        assert!(s.get_cdr(new_c).unwrap().value.caller.reveal().is_some());
    }

    fn size(dir: &std::path::Path) -> u64 {
        let mut total = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            total += if m.is_dir() { size(&e.path()) } else { m.len() };
        }
        total
    }

    /// A steady call rate (150 calls a day) with a two-day retention, run daily for 60
    /// days: the records held, the outbox and the data directory's size stop growing
    /// (log segments of 64 KiB here, deleted once emptied).
    #[test]
    fn under_a_steady_rate_the_store_stops_growing() {
        let dir = tempfile::tempdir().unwrap();
        let kek = callgate_vault::Kek::generate().unwrap();
        let s = Store::open_with(dir.path(), kek, 64 << 10).unwrap();
        let mut sizes = Vec::new();
        for day in 1..=60u64 {
            for i in 0..150u64 {
                s.append_cdr(&cdr(&format!("+1202555{:04}", (day * 150 + i) % 2000), day))
                    .unwrap();
            }
            s.expire(day * DAY + 1, Some(2 * DAY), None).unwrap();
            sizes.push((s.len(crate::Table::Cdrs), size(dir.path())));
            assert_eq!(s.outbox_len(), s.len(crate::Table::Cdrs), "day {day}");
        }
        let held: Vec<usize> = sizes.iter().skip(3).map(|(n, _)| *n).collect();
        assert!(held.iter().all(|n| *n == 300), "{held:?}");
        // sled's file grows until it reuses its segments (measured: from day 26 on, the
        // same size to the byte); the call-record log's emptied segments are deleted.
        let at = |d: usize| sizes[d - 1].1;
        let later = sizes[30..].iter().map(|(_, b)| *b).max().unwrap_or(0);
        assert!(later <= at(30) + at(30) / 10, "{sizes:?}");
    }
}
