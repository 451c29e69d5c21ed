#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! "Records and their indexes change together": a child process (this test binary again)
//! writes CDRs of a handful of callers from several threads (straight to the tree, in
//! batches, as calls in progress then final records) and removes some of them, printing
//! each write and removal only once it returned. The parent SIGKILLs it at a pseudo-random
//! point, reopens the store and checks, for every caller, that their subject index lists
//! exactly the records that are theirs (no record missing from it, no entry without its
//! record), and that every acknowledged write is there and every acknowledged removal gone.
//! Many rounds on one store, each killed at another point.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use callgate_store::{Cdr, Disposition, Pii, Store};

const THREADS: u64 = 4;
const ROUNDS: usize = 30;
const CALLERS: [&str; 5] = [
    "+12025550111",
    "+12025550122",
    "+12025550133",
    "+12025550144",
    "+12025550155",
];

fn cdr(caller: usize, tag: &str, end: Option<u64>) -> Cdr {
    Cdr {
        call_id: tag.to_string(),
        tracking_number: "+18005550100".into(),
        campaign: "index-storm".into(),
        caller: Pii::new(CALLERS[caller]),
        caller_name: Some(Pii::new(format!("Caller {caller}"))),
        destination: "sip:agent@198.51.100.20".into(),
        invite_at: 1,
        ring_at: None,
        answer_at: Some(2),
        end_at: end,
        duration_ms: 3,
        disposition: Disposition::Answered,
        final_code: 200,
        appliance: "a".into(),
        ended_by: None,
        resume: None,
    }
}

/// The child: only does something when the parent set the environment.
#[test]
fn index_storm_child_writer() {
    common::run_child(THREADS, |store, round, t| {
        let mut mine = Vec::new();
        for seq in 0u64.. {
            let caller = ((seq * 7 + t * 3) % CALLERS.len() as u64) as usize;
            let tag = format!("r{round}-t{t}-{seq}");
            let ids: Vec<u64> = match seq % 5 {
                0 | 1 => vec![store.append_cdr(&cdr(caller, &tag, Some(4))).unwrap()],
                2 => {
                    let recs: Vec<(u64, Cdr)> = (0..3)
                        .map(|i| {
                            let c = (caller + i) % CALLERS.len();
                            (
                                store.reserve_cdr_id(),
                                cdr(c, &format!("{tag}-{i}"), Some(4)),
                            )
                        })
                        .collect();
                    let refs: Vec<(u64, &Cdr)> = recs.iter().map(|(id, c)| (*id, c)).collect();
                    assert!(store.put_cdrs(&refs).unwrap().is_empty());
                    recs.iter().map(|(id, _)| *id).collect()
                }
                3 => {
                    let id = store.reserve_cdr_id();
                    store
                        .put_open_cdrs(&[(id, &cdr(caller, &tag, None))])
                        .unwrap();
                    store.put_cdr(id, &cdr(caller, &tag, Some(4))).unwrap();
                    vec![id]
                }
                _ => {
                    // Retention's removal of one of this thread's earlier records.
                    if let Some(id) = mine.pop() {
                        // From here until `DEL`, the record may be there or not.
                        println!("REMOVING {id}");
                        assert!(store.remove_cdr(id).unwrap());
                        println!("DEL {id}");
                    }
                    continue;
                }
            };
            for id in ids {
                let c = store.get_cdr(id).unwrap();
                let who = CALLERS
                    .iter()
                    .position(|n| Some(*n) == c.value.caller.reveal())
                    .unwrap();
                // Only now, after the write was acknowledged as durable.
                println!("ACK {id} {who}");
                mine.push(id);
            }
        }
    });
}

/// xorshift64*: the kill points (no secrets here).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn subject_indexes_match_the_records_after_every_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek = callgate_vault::Kek::generate().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill points from seed {seed}");
    let mut rng = Rng(seed);
    // Acknowledged and no removal begun: id → caller.
    let mut live: BTreeMap<u64, usize> = BTreeMap::new();
    let mut removed: BTreeSet<u64> = BTreeSet::new();
    for round in 0..ROUNDS {
        let kill_after = 20 + (rng.next() % 400) as usize;
        // Then a little later still, so the kill is not tied to a write's return.
        let jitter = std::time::Duration::from_micros(rng.next() % 2000);
        let mut seen = 0;
        common::run_and_kill("index_storm_child_writer", &data, &kek, round, |line| {
            let mut parts = line.split_whitespace();
            match parts.next() {
                Some("ACK") => {
                    let id: u64 = parts.next().unwrap().parse().unwrap();
                    let who: usize = parts.next().unwrap().parse().unwrap();
                    assert!(live.insert(id, who).is_none(), "id {id} acknowledged twice");
                }
                Some("REMOVING") => {
                    let id: u64 = parts.next().unwrap().parse().unwrap();
                    assert!(live.remove(&id).is_some(), "{id} removed unseen");
                    return false;
                }
                Some("DEL") => {
                    let id: u64 = parts.next().unwrap().parse().unwrap();
                    removed.insert(id);
                }
                _ => return false,
            }
            seen += 1;
            if seen == kill_after {
                std::thread::sleep(jitter);
                return true;
            }
            false
        });

        let store = Store::open(&data, kek.clone()).unwrap();
        // Every record on disk, by caller (what the index must list).
        let mut records: BTreeMap<usize, BTreeSet<u64>> = BTreeMap::new();
        for r in store.iter_cdrs() {
            let r = r.unwrap();
            let who = CALLERS
                .iter()
                .position(|n| Some(*n) == r.value.caller.reveal())
                .unwrap_or_else(|| panic!("record {} has an unknown caller", r.id));
            records.entry(who).or_default().insert(r.id);
        }
        let mut total = 0;
        for (who, number) in CALLERS.iter().enumerate() {
            let index: BTreeSet<u64> = store
                .cdr_ids_of_subject(number)
                .unwrap()
                .into_iter()
                .collect();
            let mine = records.remove(&who).unwrap_or_default();
            let unlisted: Vec<_> = mine.difference(&index).collect();
            let dangling: Vec<_> = index.difference(&mine).collect();
            assert!(
                unlisted.is_empty() && dangling.is_empty(),
                "round {round}, caller {who}: records missing from the index {unlisted:?}, \
                 index entries without their record {dangling:?}"
            );
            assert_eq!(store.cdrs_of_subject(number).unwrap().len(), mine.len());
            total += mine.len();
        }
        for (id, who) in &live {
            let r = store
                .get_cdr(*id)
                .unwrap_or_else(|e| panic!("round {round}: acknowledged {id} lost: {e}"));
            assert_eq!(r.value.caller.reveal(), Some(CALLERS[*who]), "id {id}");
        }
        for id in &removed {
            assert!(
                store.get_cdr(*id).is_err(),
                "round {round}: removed {id} is back"
            );
        }
        eprintln!(
            "round {round}: killed after {kill_after} lines; {} acknowledged records live, \
             {total} on disk, every index matches",
            live.len()
        );
    }
}
