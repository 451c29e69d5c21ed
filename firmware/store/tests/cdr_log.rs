#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The call-record log below the store: a torn tail, damaged entries, and stores written
//! before the log (sealed CDRs inline in the `cdrs` tree).
//!
//! The log's format, as these tests write it: `cdr-log/<segment, 10 digits>.seg`; an entry
//! is `CGl1`, length u32 BE, id u64 BE, then the sealed record; a pointer in `cdrs` is `PL`,
//! 1, 0, segment u32 BE, offset u32 BE, length u32 BE.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use callgate_store::{Cdr, Disposition, Pii, Store, StoreError, Table};
use callgate_vault::Kek;

fn cdr(n: u64, end: Option<u64>) -> Cdr {
    Cdr {
        call_id: format!("call-{n}@192.0.2.10"),
        tracking_number: "+18005550100".into(),
        campaign: "spring".into(),
        caller: Pii::new(format!("+1202555{:04}", n % 7)),
        caller_name: n.is_multiple_of(2).then(|| Pii::new(format!("Caller {n}"))),
        destination: "sip:agent@198.51.100.20".into(),
        invite_at: 1_700_000_000_000 + n,
        ring_at: Some(1_700_000_000_100 + n),
        answer_at: Some(1_700_000_001_000 + n),
        end_at: end,
        duration_ms: 60_000,
        disposition: Disposition::Answered,
        final_code: 200,
        appliance: "a".repeat(300),
        ended_by: None,
        resume: None,
    }
}

fn ended(n: u64) -> Cdr {
    cdr(n, Some(1_700_000_061_000 + n))
}

/// Writes records 1..=n (in batches of 8) and returns their ids with what was written.
fn write(s: &Store, from: u64, n: u64) -> Vec<(u64, Cdr)> {
    let recs: Vec<(u64, Cdr)> = (from..from + n)
        .map(|i| (s.reserve_cdr_id(), ended(i)))
        .collect();
    for chunk in recs.chunks(8) {
        let refs: Vec<(u64, &Cdr)> = chunk.iter().map(|(id, c)| (*id, c)).collect();
        assert!(s.put_cdrs(&refs).unwrap().is_empty());
    }
    recs
}

fn check_all(s: &Store, recs: &[(u64, Cdr)]) {
    for (id, c) in recs {
        assert_eq!(&s.get_cdr(*id).unwrap().value, c, "id {id}");
    }
    let got: Vec<u64> = s.iter_cdrs().map(|r| r.unwrap().id).collect();
    let want: Vec<u64> = recs.iter().map(|(id, _)| *id).collect();
    assert_eq!(got, want);
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("cdr-log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// (segment, offset, length) of a pointer value.
fn pointer(v: &[u8]) -> Option<(u32, u64, usize)> {
    if v.len() != 16 || v[..4] != [b'P', b'L', 1, 0] {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes(v[i..i + 4].try_into().unwrap());
    Some((be(4), u64::from(be(8)), be(12) as usize))
}

/// Where the last entry a pointer references ends (the store closed; one segment).
fn referenced_end(dir: &Path) -> u64 {
    let db = callgate_store::sled_config(dir).open().unwrap();
    let cdrs = db.open_tree("cdrs").unwrap();
    cdrs.iter()
        .values()
        .map(|v| {
            let (seg, off, len) = pointer(&v.unwrap()).unwrap();
            assert_eq!(seg, 1);
            off + 16 + len as u64
        })
        .max()
        .unwrap()
}

#[test]
fn a_torn_tail_is_cut_at_open_and_acknowledged_records_stay() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kek::generate().unwrap();
    let mut recs = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        write(&s, 1, 40)
    };
    let seg = segments(dir.path()).pop().unwrap();
    let acked_end = referenced_end(dir.path());
    assert!(len(&seg) >= acked_end, "zeros written ahead");
    // An append the crash tore: a whole header, part of the record; then garbage.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let mut torn = b"CGl1".to_vec();
    torn.extend_from_slice(&700u32.to_be_bytes());
    torn.extend_from_slice(&9_999u64.to_be_bytes());
    torn.extend_from_slice(&[0x5a; 300]);
    f.write_all_at(&torn, acked_end).unwrap();
    f.write_all_at(&[0xff; 77], acked_end + torn.len() as u64)
        .unwrap();
    drop(f);
    {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        assert_eq!(
            len(&seg),
            acked_end,
            "cut back to the last entry pointed to"
        );
        check_all(&s, &recs);
        recs.extend(write(&s, 100, 20));
        check_all(&s, &recs);
    }
    // A tail cut in the middle of an entry nobody points to: the same. (The last entries
    // are written, their pointers removed: a removal, then a crash before the next open.)
    let acked_end = referenced_end(dir.path());
    {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        check_all(&s, &recs);
        let extra = write(&s, 200, 3);
        for (id, _) in &extra {
            assert!(s.remove_cdr(*id).unwrap());
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(acked_end + 50)
        .unwrap();
    let s = Store::open(dir.path(), k).unwrap();
    assert_eq!(len(&seg), acked_end);
    check_all(&s, &recs);
    recs.extend(write(&s, 300, 5));
    check_all(&s, &recs);
    assert_eq!(s.len(Table::Cdrs), recs.len());
}

#[test]
fn a_damaged_entry_or_a_pointer_to_other_bytes_is_corrupt_alone() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kek::generate().unwrap();
    let recs = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        write(&s, 1, 10)
    };
    let (a, b, c) = (recs[2].0, recs[5].0, recs[7].0);
    {
        let db = callgate_store::sled_config(dir.path()).open().unwrap();
        let cdrs = db.open_tree("cdrs").unwrap();
        // a: its entry's header names another id.
        let (seg, off, _) = pointer(&cdrs.get(a.to_be_bytes()).unwrap().unwrap()).unwrap();
        let path = dir.path().join("cdr-log").join(format!("{seg:010}.seg"));
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&12_345u64.to_be_bytes(), off + 8).unwrap();
        // b: points to c's entry.
        let vc = cdrs.get(c.to_be_bytes()).unwrap().unwrap();
        cdrs.insert(b.to_be_bytes(), vc).unwrap();
        db.flush().unwrap();
    }
    let s = Store::open(dir.path(), k).unwrap();
    for id in [a, b] {
        match s.get_cdr(id) {
            Err(StoreError::Corrupt {
                table: "cdrs",
                id: got,
            }) => assert_eq!(got, id.to_string()),
            other => panic!("{id}: {other:?}"),
        }
    }
    for (id, want) in recs.iter().filter(|(id, _)| *id != a && *id != b) {
        assert_eq!(&s.get_cdr(*id).unwrap().value, want);
    }
    assert_eq!(s.iter_cdrs().filter(|r| r.is_err()).count(), 2);
    assert_eq!(
        s.get_cdrs(&[a, b, c])
            .values()
            .filter(|r| r.is_ok())
            .count(),
        1
    );
}

/// Rewrites a store as the code before the log left it: every CDR sealed inline in
/// `cdrs`, no `cdr-log` directory.
fn to_old_format(dir: &Path) {
    let db = callgate_store::sled_config(dir).open().unwrap();
    let cdrs = db.open_tree("cdrs").unwrap();
    for item in cdrs.iter() {
        let (k, v) = item.unwrap();
        let (seg, off, len) = pointer(&v).unwrap();
        let path = dir.join("cdr-log").join(format!("{seg:010}.seg"));
        let f = std::fs::File::open(path).unwrap();
        let mut sealed = vec![0u8; len];
        f.read_exact_at(&mut sealed, off + 16).unwrap();
        cdrs.insert(k, sealed).unwrap();
    }
    db.flush().unwrap();
    drop((cdrs, db));
    std::fs::remove_dir_all(dir.join("cdr-log")).unwrap();
}

#[test]
fn a_store_written_before_the_log_opens_reads_and_takes_new_writes() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kek::generate().unwrap();
    let (mut recs, open_id) = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        let recs = write(&s, 1, 30);
        // A call in progress, left in the file of slots.
        let id = s.reserve_cdr_id();
        assert!(s.put_open_cdrs(&[(id, &cdr(50, None))]).unwrap().is_empty());
        (recs, id)
    };
    to_old_format(dir.path());
    {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        // The call in progress moved into the tree, now through the log.
        recs.push((open_id, cdr(50, None)));
        check_all(&s, &recs);
        let ids: Vec<u64> = recs.iter().map(|(id, _)| *id).collect();
        assert!(s.get_cdrs_json(&ids).values().all(|r| r.is_ok()));
        // Old records are overwritten, removed; new ones written.
        let (old, gone) = (recs[3].0, recs[4].0);
        assert!(s.put_cdrs(&[(old, &ended(1003))]).unwrap().is_empty());
        recs[3].1 = ended(1003);
        assert!(s.remove_cdr(gone).unwrap());
        recs.remove(4);
        recs.extend(write(&s, 400, 10));
        check_all(&s, &recs);
        assert_eq!(s.cdrs_of_subject("+12025550001").unwrap().len(), {
            recs.iter()
                .filter(|(_, c)| c.caller == Pii::new("+12025550001"))
                .count()
        });
    }
    let s = Store::open(dir.path(), k).unwrap();
    check_all(&s, &recs);
    assert_eq!(segments(dir.path()).len(), 1);
}
