#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! "Acknowledged survives kill -9": a child process (this test binary again, in writer
//! mode) writes CDRs from several threads (to the record tree, as calls in progress, or
//! both in turn) and prints each id only after the write returned. The parent SIGKILLs it mid-storm, reopens the store and checks that every
//! acknowledged id reads back, verified, with the content that was written. Several rounds
//! on the same store, so later rounds also recover over earlier crashes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use callgate_store::{Cdr, Disposition, Pii, Store};
use callgate_vault::Kek;

const THREADS: u64 = 6;
const ROUNDS: usize = 4;

fn cdr(thread: u64, seq: u64) -> Cdr {
    Cdr {
        call_id: format!("storm-{thread}-{seq}"),
        tracking_number: "+18005550100".into(),
        campaign: "storm".into(),
        caller: Pii::new(format!("+1202555{:04}", (thread * 7919 + seq) % 10_000)),
        caller_name: seq
            .is_multiple_of(3)
            .then(|| Pii::new(format!("Caller {thread}/{seq}"))),
        destination: "sip:agent@198.51.100.20".into(),
        invite_at: seq,
        ring_at: None,
        answer_at: Some(seq + 1),
        end_at: Some(seq + 2),
        duration_ms: seq,
        disposition: Disposition::Answered,
        final_code: 200,
        // Large records for the writers to the tree; ones that fit a slot of the file of
        // calls in progress for the others (`thread % 100` is the writer's index).
        appliance: "x".repeat(if (thread % 100).is_multiple_of(3) {
            600
        } else {
            60
        }),
        ended_by: None,
        resume: None,
    }
}

/// The child: only does something when the parent set the environment.
#[test]
fn crash_child_writer() {
    common::run_child(THREADS, |store, round, t| {
        let thread = round * 100 + t;
        for seq in 0.. {
            let c = cdr(thread, seq);
            // Three ways in: straight to the tree; as a call in progress (the
            // file of slots, moved into the tree by the next open); in progress,
            // then replaced by its final record.
            let id = match t % 3 {
                0 => store.append_cdr(&c).unwrap(),
                1 => {
                    let id = store.reserve_cdr_id();
                    assert!(store.put_open_cdrs(&[(id, &c)]).unwrap().is_empty());
                    id
                }
                _ => {
                    let id = store.reserve_cdr_id();
                    let answered = Cdr {
                        end_at: None,
                        ..c.clone()
                    };
                    store.put_open_cdrs(&[(id, &answered)]).unwrap();
                    assert!(store.put_cdrs(&[(id, &c)]).unwrap().is_empty());
                    id
                }
            };
            // Only now, after the write was acknowledged as durable.
            println!("ACK {id} {thread} {seq}");
        }
    });
}

fn run_round(dir: &Path, kek: &Kek, round: usize, kill_after: usize) -> BTreeMap<u64, (u64, u64)> {
    let mut acked = BTreeMap::new();
    common::run_and_kill("crash_child_writer", dir, kek, round, |line| {
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ACK") {
            return false;
        }
        let id: u64 = parts.next().unwrap().parse().unwrap();
        let thread: u64 = parts.next().unwrap().parse().unwrap();
        let seq: u64 = parts.next().unwrap().parse().unwrap();
        acked.insert(id, (thread, seq));
        acked.len() >= kill_after
    });
    acked
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek = Kek::generate().unwrap();
    let mut all: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for round in 0..ROUNDS {
        let kill_after = 500 + round * 257;
        let acked = run_round(&data, &kek, round, kill_after);
        assert!(
            acked.len() >= 500,
            "round {round}: only {} acks",
            acked.len()
        );
        for (id, v) in &acked {
            assert!(all.insert(*id, *v).is_none(), "id {id} acknowledged twice");
        }
        let store = Store::open(&data, kek.clone()).unwrap();
        let mut missing = Vec::new();
        for (id, (thread, seq)) in &all {
            match store.get_cdr(*id) {
                Ok(r) => assert_eq!(r.value, cdr(*thread, *seq), "id {id}"),
                Err(e) => missing.push(format!("{id}: {e}")),
            }
        }
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} acknowledged writes lost: {:?}",
            missing.len(),
            all.len(),
            &missing[..missing.len().min(10)]
        );
        // Whatever else survived (written, not acknowledged) verifies too.
        let mut total = 0;
        for r in store.iter_cdrs() {
            r.unwrap();
            total += 1;
        }
        eprintln!(
            "round {round}: {} acknowledged, all {} read back and verified; {} records on disk",
            acked.len(),
            all.len(),
            total
        );
    }
}
