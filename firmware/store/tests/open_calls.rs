#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! Answer-time records of calls in progress (`Store::put_open_cdrs`): readable like any
//! record, replaced by the final one, moved into the record tree after a crash, shredded
//! with their subject.

use std::os::unix::fs::FileExt;

use callgate_store::{Cdr, Disposition, Party, Pii, Resume, Store, StoreError, Table};
use callgate_vault::Kek;

const OPEN_FILE: &str = "open-cdrs";

fn answered(caller: &str, n: u64) -> Cdr {
    Cdr {
        call_id: format!("call-{n}@192.0.2.10"),
        tracking_number: "+18005550100".into(),
        campaign: "spring".into(),
        caller: Pii::new(caller),
        caller_name: Some(Pii::new("Ada")),
        destination: "sip:agent@198.51.100.20".into(),
        invite_at: 1_700_000_000_000 + n,
        ring_at: Some(1_700_000_000_100 + n),
        answer_at: Some(1_700_000_001_000 + n),
        end_at: None,
        duration_ms: 0,
        disposition: Disposition::Answered,
        final_code: 200,
        appliance: "a".into(),
        ended_by: None,
        resume: None,
    }
}

fn ended(c: &Cdr) -> Cdr {
    Cdr {
        end_at: Some(c.invite_at + 61_000),
        duration_ms: 60_000,
        ..c.clone()
    }
}

/// `n` answered calls of callers `prefix0`, `prefix1`, …, written as calls in progress.
fn calls_in_progress(s: &Store, n: u64, prefix: &str) -> (Vec<u64>, Vec<Cdr>) {
    let ids: Vec<u64> = (0..n).map(|_| s.reserve_cdr_id()).collect();
    let cdrs: Vec<Cdr> = (0..n)
        .map(|i| answered(&format!("{prefix}{i}"), i))
        .collect();
    let recs: Vec<(u64, &Cdr)> = ids.iter().copied().zip(cdrs.iter()).collect();
    assert!(s.put_open_cdrs(&recs).unwrap().is_empty());
    (ids, cdrs)
}

fn open_file_len(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join(OPEN_FILE)).unwrap().len()
}

#[test]
fn a_call_in_progress_reads_back_and_its_final_record_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kek::generate().unwrap();
    let s = Store::open(dir.path(), k.clone()).unwrap();
    let before = s.append_cdr(&ended(&answered("+12025550100", 0))).unwrap();
    let (a, b) = (s.reserve_cdr_id(), s.reserve_cdr_id());
    let (ca, cb) = (answered("+12025550101", 1), answered("+12025550102", 2));
    let failed = s.put_open_cdrs(&[(a, &ca), (b, &cb)]).unwrap();
    assert!(failed.is_empty());
    assert!(
        open_file_len(dir.path()) > 0,
        "held in the file of calls in progress"
    );
    assert_eq!(s.get_cdr(a).unwrap().value, ca);
    assert_eq!(s.len(Table::Cdrs), 3);
    let last: Vec<u64> = s.last_cdrs(10).into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(last, vec![before, a, b]);
    let last: Vec<u64> = s.last_cdrs(2).into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(last, vec![a, b]);
    assert_eq!(s.cdr_ids_of_subject("+12025550102").unwrap(), vec![b]);
    let of_b = s.cdrs_of_subject("+12025550102").unwrap();
    assert_eq!(of_b.len(), 1);
    assert_eq!(of_b[0].as_ref().unwrap().value, cb);
    // The walk of the tree does not see calls in progress.
    assert_eq!(s.iter_cdrs().count(), 1);

    // Both end: the final records replace them and the file empties.
    let (fa, fb) = (ended(&ca), ended(&cb));
    assert!(s.put_cdrs(&[(a, &fa), (b, &fb)]).unwrap().is_empty());
    assert_eq!(open_file_len(dir.path()), 0);
    assert_eq!(s.get_cdr(a).unwrap().value, fa);
    assert_eq!(s.len(Table::Cdrs), 3);
    drop(s);
    let s = Store::open(dir.path(), k).unwrap();
    assert_eq!(s.get_cdr(a).unwrap().value, fa);
    assert_eq!(s.get_cdr(b).unwrap().value, fb);
    assert_eq!(s.iter_cdrs().count(), 3);
}

#[test]
fn records_of_calls_in_progress_at_a_crash_move_into_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kek::generate().unwrap();
    let s = Store::open(dir.path(), k.clone()).unwrap();
    let (ids, cdrs) = calls_in_progress(&s, 5, "+1202555020");
    // Two of them end.
    let f0 = ended(&cdrs[0]);
    let f1 = ended(&cdrs[1]);
    s.put_cdrs(&[(ids[0], &f0), (ids[1], &f1)]).unwrap();
    drop(s);
    {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        assert_eq!(
            s.iter_cdrs().count(),
            5,
            "the three unfinished ones recovered"
        );
        for (i, id) in ids.iter().enumerate() {
            let got = s.get_cdr(*id).unwrap().value;
            let want = match i {
                0 => f0.clone(),
                1 => f1.clone(),
                _ => cdrs[i].clone(),
            };
            assert_eq!(got, want, "record {i}");
        }
        assert_eq!(open_file_len(dir.path()), 0, "emptied after recovery");
        assert!(s.reserve_cdr_id() > ids[4]);
    }
    // A stale slot (release lost) whose id the tree has is skipped: the final record stays.
    let stale = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        let id = s.reserve_cdr_id();
        let c = answered("+12025550299", 9);
        s.put_open_cdrs(&[(id, &c)]).unwrap();
        let slot = std::fs::read(dir.path().join(OPEN_FILE)).unwrap();
        s.put_cdrs(&[(id, &ended(&c))]).unwrap();
        drop(s);
        std::fs::write(dir.path().join(OPEN_FILE), &slot).unwrap();
        (id, ended(&c))
    };
    let s = Store::open(dir.path(), k).unwrap();
    assert_eq!(s.get_cdr(stale.0).unwrap().value, stale.1);
    assert_eq!(open_file_len(dir.path()), 0);
}

#[test]
fn a_damaged_slot_is_dropped_and_the_others_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kek::generate().unwrap();
    let s = Store::open(dir.path(), k.clone()).unwrap();
    let (ids, cdrs) = calls_in_progress(&s, 3, "+1202555030");
    drop(s);
    // A byte of the second slot's sealed record flipped (slot 1, past its 16-byte header).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join(OPEN_FILE))
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 1024 + 40).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], 1024 + 40).unwrap();
    let s = Store::open(dir.path(), k).unwrap();
    assert_eq!(s.get_cdr(ids[0]).unwrap().value, cdrs[0]);
    assert!(matches!(
        s.get_cdr(ids[1]),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.get_cdr(ids[2]).unwrap().value, cdrs[2]);
}

#[test]
fn erasure_reaches_calls_in_progress_and_long_records_go_to_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kek::generate().unwrap();
    let s = Store::open(dir.path(), k.clone()).unwrap();
    let (a, b) = (s.reserve_cdr_id(), s.reserve_cdr_id());
    let ca = answered("+12025550401", 1);
    // Longer than a slot holds.
    let cb = Cdr {
        appliance: "x".repeat(1500),
        ended_by: None,
        ..answered("+12025550402", 2)
    };
    s.put_open_cdrs(&[(a, &ca), (b, &cb)]).unwrap();
    assert_eq!(s.iter_cdrs().count(), 1, "the long one is in the tree");
    assert_eq!(s.get_cdr(b).unwrap().value, cb);
    s.erase_subject("+12025550401").unwrap();
    let got = s.get_cdr(a).unwrap().value;
    assert_eq!(got.caller, Pii::Erased);
    assert_eq!(got.caller_name, Some(Pii::Erased));
    assert_eq!(got.call_id, ca.call_id);
    drop(s);
    // Recovered after a "crash": still erased.
    let s = Store::open(dir.path(), k).unwrap();
    let got = s.get_cdr(a).unwrap().value;
    assert_eq!(got.caller, Pii::Erased);
    assert_eq!(s.get_cdr(b).unwrap().value, cb);
}

#[test]
fn one_step_writes_calls_in_progress_and_ended_ones() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kek::generate().unwrap();
    let s = Store::open(dir.path(), k.clone()).unwrap();
    let (ids, cdrs) = calls_in_progress(&s, 2, "+1202555050");
    // Call 0 ends while call 2 is answered, in one step.
    let id2 = s.reserve_cdr_id();
    let c2 = answered("+12025550599", 2);
    let f0 = ended(&cdrs[0]);
    assert!(s
        .write_cdrs(&[(id2, &c2)], &[(ids[0], &f0)])
        .unwrap()
        .is_empty());
    assert_eq!(
        s.iter_cdrs().count(),
        1,
        "only the ended call is in the tree"
    );
    let last: Vec<Cdr> = s
        .last_cdrs(3)
        .into_iter()
        .map(|r| r.unwrap().value)
        .collect();
    assert_eq!(last, vec![f0.clone(), cdrs[1].clone(), c2.clone()]);
    drop(s);
    let s = Store::open(dir.path(), k).unwrap();
    assert_eq!(s.get_cdr(ids[0]).unwrap().value, f0);
    assert_eq!(s.get_cdr(ids[1]).unwrap().value, cdrs[1]);
    assert_eq!(s.get_cdr(id2).unwrap().value, c2);
}

#[test]
fn calls_in_progress_at_a_crash_come_back_with_what_resumes_them() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kek::generate().unwrap();
    let party = |a: &str, l: &str, m: &str| Party {
        tcp: false,
        tls: false,
        addr: a.parse().unwrap(),
        local: l.parse().unwrap(),
        media: vec![m.parse().unwrap()],
    };
    let resume = Resume {
        from_tag: "ftag".into(),
        caller: party(
            "203.0.113.10:5060",
            "203.0.113.1:5060",
            "203.0.113.10:40000",
        ),
        callee: party(
            "198.51.100.10:5060",
            "198.51.100.1:5060",
            "198.51.100.10:30000",
        ),
        media_pool: vec!["203.0.113.32/28".into()],
    };
    let (ids, live) = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        let ids: Vec<u64> = (0..3).map(|_| s.reserve_cdr_id()).collect();
        let live = Cdr {
            resume: Some(resume.clone()),
            ..answered("+12025550301", 1)
        };
        let old = answered("+12025550302", 2);
        let done = Cdr {
            resume: Some(resume.clone()),
            ..answered("+12025550303", 3)
        };
        s.put_open_cdrs(&[(ids[0], &live), (ids[1], &old), (ids[2], &done)])
            .unwrap();
        // The third ends before the crash.
        s.put_cdrs(&[(ids[2], &ended(&answered("+12025550303", 3)))])
            .unwrap();
        assert!(
            s.take_calls_in_progress().is_empty(),
            "nothing at a clean open"
        );
        (ids, live)
    };
    let s = Store::open(dir.path(), k).unwrap();
    let back = s.take_calls_in_progress();
    assert_eq!(
        back.len(),
        1,
        "only the one with resume state, still unfinished"
    );
    assert_eq!(back[0].id, ids[0]);
    assert_eq!(back[0].value, live);
    assert!(s.take_calls_in_progress().is_empty(), "returned once");
    // The record is in the tree; its final record replaces it under the same id.
    let fin = Cdr {
        resume: None,
        ..ended(&live)
    };
    s.put_cdrs(&[(ids[0], &fin)]).unwrap();
    assert_eq!(s.get_cdr(ids[0]).unwrap().value, fin);
}

#[test]
fn pair_nodes_take_ids_of_their_own_parity_past_every_replicated_record() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Kek::generate().unwrap()).unwrap();
    s.set_pair_node(Some(1));
    let odd: Vec<u64> = (0..4).map(|_| s.reserve_cdr_id()).collect();
    assert!(odd.iter().all(|id| id % 2 == 1), "{odd:?}");
    assert!(odd.windows(2).all(|w| w[0] < w[1]), "{odd:?}");
    // A record the peer (node 0) replicated, far ahead: our next id moves past it.
    let theirs = odd[3] + 101;
    assert_eq!(theirs % 2, 0);
    s.put_cdrs(&[(theirs, &ended(&answered("+12025550399", 9)))])
        .unwrap();
    let next = s.reserve_cdr_id();
    assert!(next > theirs && next % 2 == 1, "{next}");
    s.set_pair_node(None);
    let a = s.reserve_cdr_id();
    assert_eq!(s.reserve_cdr_id(), a + 1);
}

#[test]
fn the_calls_in_progress_now_are_those_still_open_that_can_be_carried_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), Kek::generate().unwrap()).unwrap();
    let resume = Resume {
        from_tag: "ftag".into(),
        caller: Party {
            tcp: false,
            tls: false,
            addr: "203.0.113.10:5060".parse().unwrap(),
            local: "203.0.113.5:5060".parse().unwrap(),
            media: vec![],
        },
        callee: Party {
            tcp: false,
            tls: false,
            addr: "198.51.100.10:5060".parse().unwrap(),
            local: "198.51.100.5:5060".parse().unwrap(),
            media: vec![],
        },
        media_pool: vec![],
    };
    let ids: Vec<u64> = (0..3).map(|_| s.reserve_cdr_id()).collect();
    let live = Cdr {
        resume: Some(resume.clone()),
        ..answered("+12025550401", 1)
    };
    let no_resume = answered("+12025550402", 2);
    let gone = Cdr {
        resume: Some(resume),
        ..answered("+12025550403", 3)
    };
    s.put_open_cdrs(&[(ids[0], &live), (ids[1], &no_resume), (ids[2], &gone)])
        .unwrap();
    s.put_cdrs(&[(ids[2], &ended(&answered("+12025550403", 3)))])
        .unwrap();
    let now = s.calls_in_progress_now();
    assert_eq!(now.len(), 1);
    assert_eq!((now[0].id, &now[0].value), (ids[0], &live));
}

/// A call's slot keeps naming its record for a batch after the call ended (the next batch
/// may take it over). A record that then leaves the tree, by `remove_cdr` or retention,
/// must not come back from that slot after a crash.
#[test]
fn a_removed_record_does_not_come_back_from_its_released_slot() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kek::generate().unwrap();
    let names = |id: u64| {
        let file = std::fs::read(dir.path().join(OPEN_FILE)).unwrap();
        file.chunks(1024)
            .any(|slot| slot.starts_with(b"CGo1") && slot[8..16] == id.to_be_bytes())
    };
    // A call in progress, then one that ends; the first is held open throughout, so the
    // file is not emptied by the last release.
    let call_that_ends = |s: &Store, prefix: &str| {
        let (ids, cdrs) = calls_in_progress(s, 1, prefix);
        let end = ended(&cdrs[0]);
        s.put_cdrs(&[(ids[0], &end)]).unwrap();
        assert!(names(ids[0]), "released, not zeroed yet");
        (ids[0], end)
    };
    // Calls held open: answered long after the others ended, so retention keeps them.
    let held_call = |s: &Store, caller: &str| {
        let id = s.reserve_cdr_id();
        let c = answered(caller, 1_000_000);
        assert!(s.put_open_cdrs(&[(id, &c)]).unwrap().is_empty());
        id
    };
    let s = Store::open(dir.path(), k.clone()).unwrap();
    let held = held_call(&s, "+12025550300");
    let (by_hand, _) = call_that_ends(&s, "+1202555031");
    assert!(s.remove_cdr(by_hand).unwrap());
    assert!(!names(by_hand), "zeroed before it left");
    // A crash: the store is dropped as it stands, and opened again.
    drop(s);
    let s = Store::open(dir.path(), k.clone()).unwrap();
    let ids = |s: &Store| -> Vec<u64> { s.iter_cdrs().map(|r| r.unwrap().id).collect() };
    assert_eq!(ids(&s), [held], "only the call still in progress");
    // Retention, likewise. The recovered call is in the tree now (and stays: it is younger
    // than the cutoff); another is held open.
    let held2 = held_call(&s, "+12025550330");
    let (expired, end) = call_that_ends(&s, "+1202555032");
    let out = s.expire(end.end_at.unwrap() + 2, Some(1), None).unwrap();
    assert_eq!(out.cdrs, 1, "the ended call, by retention");
    assert!(!names(expired), "zeroed before it left");
    drop(s);
    let s = Store::open(dir.path(), k).unwrap();
    assert_eq!(ids(&s), [held, held2]);
}
