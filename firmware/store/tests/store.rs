#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The store against its contract: round trips, keys, erasure, rotation, corruption, and
//! what reaches the disk.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use callgate_store::{
    AuditEntry, Cdr, ConfigRevision, Disposition, Party, Pii, Resume, Session, Store, StoreError,
    Table,
};
use callgate_vault::Kek;

fn cdr(caller: &str, name: Option<&str>, n: u64) -> Cdr {
    Cdr {
        call_id: format!("call-{n}@192.0.2.10"),
        tracking_number: "+18005550100".into(),
        campaign: "spring".into(),
        caller: Pii::new(caller),
        caller_name: name.map(Pii::new),
        destination: "sip:agent@198.51.100.20".into(),
        invite_at: 1_700_000_000_000 + n,
        ring_at: Some(1_700_000_000_100 + n),
        answer_at: Some(1_700_000_001_000 + n),
        end_at: Some(1_700_000_061_000 + n),
        duration_ms: 60_000,
        disposition: Disposition::Answered,
        final_code: 200,
        appliance: "a".into(),
        ended_by: None,
        resume: None,
    }
}

fn kek() -> Kek {
    Kek::generate().unwrap()
}

#[test]
fn cdr_round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let c1 = cdr("+12025550101", Some("Ada"), 1);
    let c2 = cdr("+12025550102", None, 2);
    let (id1, id2) = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        let id1 = s.append_cdr(&c1).unwrap();
        let id2 = s.append_cdr(&c2).unwrap();
        assert!(id2 > id1);
        assert_eq!(s.get_cdr(id1).unwrap().value, c1);
        assert_eq!(s.get_cdr(id2).unwrap().value, c2);
        (id1, id2)
    };
    let s = Store::open(dir.path(), k).unwrap();
    let r1 = s.get_cdr(id1).unwrap();
    assert_eq!(r1.value, c1);
    assert_eq!(r1.key_id, 1);
    assert_eq!(s.get_cdr(id2).unwrap().value, c2);
    // ids continue after reopen
    let id3 = s.append_cdr(&c1).unwrap();
    assert!(id3 > id2);
    let all: Vec<_> = s.iter_cdrs().map(|r| r.unwrap().id).collect();
    assert_eq!(all, vec![id1, id2, id3]);
    assert!(matches!(
        s.get_cdr(999),
        Err(StoreError::NotFound { table: "cdrs", .. })
    ));
    // Debug of a record shows no PII
    let dbg = format!("{r1:?}");
    assert!(!dbg.contains("2025550101") && !dbg.contains("Ada"), "{dbg}");
}

#[test]
fn several_cdrs_in_one_commit_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let c1 = cdr("+12025550111", Some("Bo"), 1);
    let c2 = cdr("+12025550112", None, 2);
    let c3 = Cdr {
        caller: Pii::Erased,
        ..cdr("+12025550113", None, 3)
    };
    let ids = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        let ids: Vec<u64> = (0..3).map(|_| s.reserve_cdr_id()).collect();
        let failed = s
            .put_cdrs(&[(ids[0], &c1), (ids[1], &c2), (ids[2], &c3)])
            .unwrap();
        assert!(failed.is_empty());
        // A rewrite under the same id replaces the record (the final write of a call).
        let c1_final = Cdr {
            duration_ms: 61_000,
            ..c1.clone()
        };
        assert!(s.put_cdrs(&[(ids[0], &c1_final)]).unwrap().is_empty());
        ids
    };
    let s = Store::open(dir.path(), k).unwrap();
    assert_eq!(s.get_cdr(ids[0]).unwrap().value.duration_ms, 61_000);
    assert_eq!(s.get_cdr(ids[1]).unwrap().value, c2);
    assert_eq!(s.get_cdr(ids[2]).unwrap().value.caller, Pii::Erased);
    let all: Vec<_> = s.iter_cdrs().map(|r| r.unwrap().id).collect();
    assert_eq!(all, ids);
    // Ids reserved after a reopen continue after the batch.
    assert!(s.reserve_cdr_id() > ids[2]);
}

#[test]
fn other_tables_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let audit = AuditEntry {
        time_ms: 5,
        user: "admin".into(),
        action: "commit".into(),
        detail: "revision 3".into(),
        ..Default::default()
    };
    let rev = ConfigRevision {
        revision: 3,
        time_ms: 6,
        author: "admin".into(),
        note: "open port".into(),
        text: "[[allow]]\nname = \"x\"\n".repeat(20_000), // ~400 KiB: a sled blob
    };
    let sess = Session {
        id: "s-0001".into(),
        user: "eng".into(),
        started_ms: 7,
        last_seen_ms: 8,
        source: "serial".into(),
    };
    {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        let a = s.append_audit(&audit).unwrap();
        let b = s.append_audit(&audit).unwrap();
        assert_eq!(b, a + 1);
        s.put_config_revision(&rev).unwrap();
        s.put_session(&sess).unwrap();
        let mut later = sess.clone();
        later.last_seen_ms = 9;
        s.put_session(&later).unwrap();
        s.put_session(&Session {
            id: "s-0002".into(),
            ..sess.clone()
        })
        .unwrap();
        assert!(s.remove_session("s-0002").unwrap());
        assert!(!s.remove_session("s-0002").unwrap());
    }
    let s = Store::open(dir.path(), k).unwrap();
    let audits: Vec<_> = s.iter_audit().map(|r| r.unwrap()).collect();
    assert_eq!(audits.len(), 2);
    assert_eq!(audits[0].value, audit);
    assert_eq!(s.get_audit(audits[1].id).unwrap().value, audit);
    assert_eq!(s.get_config_revision(3).unwrap().value, rev);
    assert_eq!(s.iter_config_history().count(), 1);
    let got = s.get_session("s-0001").unwrap();
    assert_eq!(got.value.last_seen_ms, 9);
    assert_eq!(got.id, "s-0001");
    assert_eq!(s.iter_sessions().count(), 1);
    assert!(matches!(
        s.get_session("s-0002"),
        Err(StoreError::NotFound { .. })
    ));
    // next audit id continues after reopen
    assert_eq!(s.append_audit(&audit).unwrap(), audits[1].id + 1);
    assert_eq!(s.len(Table::Audit), 3);
}

#[test]
fn wrong_kek_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), kek()).unwrap();
        s.append_cdr(&cdr("+12025550101", None, 1)).unwrap();
    }
    let err = Store::open(dir.path(), kek()).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey), "{err:?}");
    assert!(err.to_string().contains("wrong KEK"));
}

#[test]
fn erase_subject_shreds_only_that_subject() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let s = Store::open(dir.path(), k.clone()).unwrap();
    let victim = "+1 (202) 555-0111";
    let a1 = s.append_cdr(&cdr(victim, Some("Vic"), 1)).unwrap();
    let b1 = s.append_cdr(&cdr("+12025550122", Some("Bea"), 2)).unwrap();
    // same subject, another spelling
    let a2 = s
        .append_cdr(&cdr("sip:12025550111@203.0.113.5", None, 3))
        .unwrap();
    assert_eq!(s.cdr_ids_of_subject("12025550111").unwrap(), vec![a1, a2]);
    let export = s.cdrs_of_subject("tel:+12025550111").unwrap();
    assert_eq!(export.len(), 2);
    assert_eq!(
        export[0].as_ref().unwrap().value.caller.reveal(),
        Some(victim)
    );

    assert_eq!(s.erase_subject("+12025550111").unwrap(), 2);
    drop(s);
    let s = Store::open(dir.path(), k).unwrap();
    for id in [a1, a2] {
        let r = s.get_cdr(id).unwrap().value;
        assert_eq!(r.caller, Pii::Erased);
        assert!(r.caller_name.as_ref().is_none_or(Pii::is_erased));
        // the rest of the CDR stays
        assert_eq!(r.duration_ms, 60_000);
        assert_eq!(r.tracking_number, "+18005550100");
    }
    let b = s.get_cdr(b1).unwrap().value;
    assert_eq!(b, cdr("+12025550122", Some("Bea"), 2));
    assert!(s.cdr_ids_of_subject(victim).unwrap().is_empty());
    // A new call from the erased number starts a fresh subject.
    let a3 = s.append_cdr(&cdr(victim, None, 4)).unwrap();
    assert_eq!(s.get_cdr(a3).unwrap().value.caller.reveal(), Some(victim));
    assert_eq!(s.get_cdr(a1).unwrap().value.caller, Pii::Erased);
    assert_eq!(s.cdr_ids_of_subject(victim).unwrap(), vec![a3]);
}

#[test]
fn rotation_keeps_old_records_readable() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let (old, new) = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        let old = s.append_cdr(&cdr("+12025550101", None, 1)).unwrap();
        assert_eq!(s.rotate_data_key().unwrap(), 2);
        assert_eq!(s.current_data_key(), 2);
        let new = s.append_cdr(&cdr("+12025550101", None, 2)).unwrap();
        assert_eq!(s.get_cdr(old).unwrap().key_id, 1);
        assert_eq!(s.get_cdr(new).unwrap().key_id, 2);
        (old, new)
    };
    let s = Store::open(dir.path(), k).unwrap();
    assert_eq!(s.data_key_ids(), vec![1, 2]);
    assert_eq!(s.current_data_key(), 2);
    assert_eq!(s.get_cdr(old).unwrap().key_id, 1);
    assert_eq!(s.get_cdr(new).unwrap().key_id, 2);
    assert_eq!(s.rotate_data_key().unwrap(), 3);
    let e = s
        .append_audit(&AuditEntry {
            time_ms: 1,
            user: "u".into(),
            action: "a".into(),
            detail: "d".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(s.get_audit(e).unwrap().key_id, 3);
}

#[test]
fn concurrent_rotations_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let s = Arc::new(Store::open(dir.path(), k.clone()).unwrap());
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let s = Arc::clone(&s);
        handles.push(std::thread::spawn(move || {
            let mut ids = Vec::new();
            for i in 0..50 {
                ids.push(
                    s.append_cdr(&cdr(&format!("+1202555{t:02}{i:02}"), None, i))
                        .unwrap(),
                );
                if i % 10 == 0 {
                    s.rotate_data_key().unwrap();
                }
            }
            ids
        }));
    }
    let ids: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 200);
    // 4 threads x 5 rotations, ids 2..=21, no two rotations took the same id
    assert_eq!(s.data_key_ids(), (1..=21).collect::<Vec<_>>());
    drop(s);
    let s = Store::open(dir.path(), k).unwrap();
    assert_eq!(s.iter_cdrs().filter(|r| r.is_ok()).count(), 200);
}

/// Rewrites one stored record below the store: the value in sled, or for a CDR whose value
/// is a pointer into the call-record log (16 bytes, `PL 1 0`, segment, offset, length, all
/// BE), the sealed record in its segment file (after the entry's 16-byte header).
fn tamper(dir: &Path, tree: &str, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
    // The store's own config: no flusher thread left holding the lock after the drop.
    let db = callgate_store::sled_config(dir).open().unwrap();
    let t = db.open_tree(tree).unwrap();
    let mut v = t.get(key).unwrap().unwrap().to_vec();
    if tree == "cdrs" && v.len() == 16 && v[..4] == [b'P', b'L', 1, 0] {
        use std::os::unix::fs::FileExt;
        let be = |i: usize| u32::from_be_bytes(v[i..i + 4].try_into().unwrap());
        let (segment, offset, len) = (be(4), u64::from(be(8)) + 16, be(12) as usize);
        let path = dir.join("cdr-log").join(format!("{segment:010}.seg"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut record = vec![0u8; len];
        file.read_exact_at(&mut record, offset).unwrap();
        f(&mut record);
        assert_eq!(record.len(), len, "a record in the log keeps its length");
        file.write_all_at(&record, offset).unwrap();
        return;
    }
    // A subject's entry names the slot of `subject-keys` that holds its wrapped key.
    if tree == "subjects" && v.len() == 12 {
        use std::os::unix::fs::FileExt;
        let slot = u64::from(u32::from_be_bytes(v[8..12].try_into().unwrap()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("subject-keys"))
            .unwrap();
        let mut buf = [0u8; 128];
        file.read_exact_at(&mut buf, slot * 128).unwrap();
        let len = usize::from(buf[0]);
        let mut wrapped = buf[1..=len].to_vec();
        f(&mut wrapped);
        assert_eq!(wrapped.len(), len, "a wrapped key keeps its length");
        file.write_all_at(&wrapped, slot * 128 + 1).unwrap();
        return;
    }
    f(&mut v);
    t.insert(key, v).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_flipped_byte_corrupts_one_record_only() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let ids: Vec<u64> = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        (0..10)
            .map(|i| {
                s.append_cdr(&cdr(&format!("+120255501{i:02}"), None, i))
                    .unwrap()
            })
            .collect()
    };
    let victim = ids[4];
    tamper(dir.path(), "cdrs", &victim.to_be_bytes(), |v| {
        let mid = v.len() / 2;
        v[mid] ^= 0x01;
    });
    let s = Store::open(dir.path(), k).unwrap();
    match s.get_cdr(victim) {
        Err(StoreError::Corrupt { table: "cdrs", id }) => assert_eq!(id, victim.to_string()),
        other => panic!("{other:?}"),
    }
    for id in ids.iter().filter(|i| **i != victim) {
        s.get_cdr(*id).unwrap();
    }
    let results: Vec<_> = s.iter_cdrs().collect();
    assert_eq!(results.len(), 10);
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
}

#[test]
fn records_cannot_be_swapped_between_ids_or_tables() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let (a, b, audit) = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        let a = s.append_cdr(&cdr("+12025550101", None, 1)).unwrap();
        let b = s.append_cdr(&cdr("+12025550102", None, 2)).unwrap();
        let audit = s
            .append_audit(&AuditEntry {
                time_ms: 1,
                user: "u".into(),
                action: "a".into(),
                detail: "d".into(),
                ..Default::default()
            })
            .unwrap();
        (a, b, audit)
    };
    let db = callgate_store::sled_config(dir.path()).open().unwrap();
    let cdrs = db.open_tree("cdrs").unwrap();
    let audits = db.open_tree("audit").unwrap();
    let va = cdrs.get(a.to_be_bytes()).unwrap().unwrap();
    // copy a's sealed bytes over b, and over the audit entry
    cdrs.insert(b.to_be_bytes(), va.clone()).unwrap();
    audits.insert(audit.to_be_bytes(), va).unwrap();
    db.flush().unwrap();
    drop((cdrs, audits, db));
    let s = Store::open(dir.path(), k).unwrap();
    s.get_cdr(a).unwrap();
    assert!(matches!(s.get_cdr(b), Err(StoreError::Corrupt { .. })));
    assert!(matches!(
        s.get_audit(audit),
        Err(StoreError::Corrupt { table: "audit", .. })
    ));
}

#[test]
fn damaged_subject_key_or_pii_is_corrupt_not_erased() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let (a, b, token) = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        let a = s.append_cdr(&cdr("+12025550101", None, 1)).unwrap();
        let b = s.append_cdr(&cdr("+12025550102", None, 2)).unwrap();
        (a, b, s.subject_token("+12025550101"))
    };
    tamper(dir.path(), "subjects", token.as_bytes(), |v| v[20] ^= 0x80);
    let s = Store::open(dir.path(), k).unwrap();
    assert!(matches!(
        s.get_cdr(a),
        Err(StoreError::Corrupt {
            table: "subjects",
            ..
        })
    ));
    s.get_cdr(b).unwrap();
}

#[test]
fn an_unknown_data_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let a = {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        s.append_cdr(&cdr("+12025550101", None, 1)).unwrap()
    };
    // Relabel the record with data key 7; keep the rest.
    tamper(dir.path(), "cdrs", &a.to_be_bytes(), |v| {
        v[1..5].copy_from_slice(&7u32.to_be_bytes())
    });
    let s = Store::open(dir.path(), k).unwrap();
    assert!(matches!(
        s.get_cdr(a),
        Err(StoreError::UnknownKey { key_id: 7, .. })
    ));
}

#[test]
fn a_damaged_keyring_is_not_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        s.rotate_data_key().unwrap();
    }
    tamper(dir.path(), "keys", &2u32.to_be_bytes(), |v| v[10] ^= 1);
    let err = Store::open(dir.path(), k).unwrap_err();
    assert!(
        matches!(&err, StoreError::KeyringCorrupt { ids } if ids == &vec![2]),
        "{err:?}"
    );
}

const PHONE: &str = "+12025550199";
const PHONE_DIGITS: &str = "12025550199";
const NAME: &str = "Zebulon Quixote";
const EMAIL: &str = "zebulon.quixote@example.com";

fn find_all(dir: &Path, needles: &[Vec<u8>]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_slice()) {
                found.push(format!("{} in {}", String::from_utf8_lossy(n), p.display()));
            }
        }
    }
    found
}

#[test]
fn no_plaintext_pii_reaches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let s = Store::open(&data, kek()).unwrap();
        for i in 0..300 {
            let mut c = cdr(PHONE, Some(NAME), i);
            if i % 2 == 0 {
                c.caller_name = Some(Pii::new(EMAIL));
            }
            s.append_cdr(&c).unwrap();
            // other subjects too, so the trees split and get rewritten
            s.append_cdr(&cdr(&format!("+1303555{i:04}"), Some(NAME), i))
                .unwrap();
        }
        s.append_audit(&AuditEntry {
            time_ms: 1,
            user: NAME.into(),
            action: "export subject".into(),
            detail: format!("{PHONE} {EMAIL}"),
            ..Default::default()
        })
        .unwrap();
        s.put_session(&Session {
            id: "s-1".into(),
            user: EMAIL.into(),
            started_ms: 1,
            last_seen_ms: 2,
            source: NAME.into(),
        })
        .unwrap();
        s.put_config_revision(&ConfigRevision {
            revision: 1,
            time_ms: 1,
            author: NAME.into(),
            note: EMAIL.into(),
            text: format!("# contact {PHONE}\n"),
        })
        .unwrap();
        s.rotate_data_key().unwrap();
        s.append_cdr(&cdr(PHONE, Some(NAME), 999)).unwrap();
        // Calls in progress (their own file), one of them left there as by a crash.
        let open: Vec<(u64, Cdr)> = (0..3)
            .map(|i| (s.reserve_cdr_id(), cdr(PHONE, Some(NAME), 1000 + i)))
            .collect();
        let refs: Vec<(u64, &Cdr)> = open.iter().map(|(id, c)| (*id, c)).collect();
        s.put_open_cdrs(&refs).unwrap();
        s.put_cdrs(&refs[..2]).unwrap();
        assert!(
            std::fs::metadata(data.join("open-cdrs")).unwrap().len() > 0,
            "the scan covers the file of calls in progress"
        );
    }
    let mut needles = Vec::new();
    for s in [PHONE, PHONE_DIGITS, NAME, EMAIL, "2025550199", "Quixote"] {
        needles.push(s.as_bytes().to_vec());
        needles.push(s.encode_utf16().flat_map(u16::to_le_bytes).collect());
    }
    let found = find_all(&data, &needles);
    assert!(found.is_empty(), "plaintext PII on disk: {found:?}");
    // The scan itself works: a planted file is found.
    std::fs::write(data.join("canary"), format!("x{PHONE_DIGITS}x")).unwrap();
    let found = find_all(&data, &needles);
    assert!(
        !found.is_empty() && found.iter().all(|f| f.ends_with("canary")),
        "{found:?}"
    );
}

#[test]
fn writes_from_many_threads_are_all_durable_and_distinct() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let s = Arc::new(Store::open(dir.path(), k.clone()).unwrap());
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| {
                        let c = cdr(&format!("+1202555{t:02}{i:02}"), None, t * 1000 + i);
                        (s.append_cdr(&c).unwrap(), c)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let written: Vec<(u64, Cdr)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    drop(s);
    let s = Store::open(dir.path(), k).unwrap();
    for (id, c) in &written {
        assert_eq!(&s.get_cdr(*id).unwrap().value, c);
    }
    assert_eq!(s.len(Table::Cdrs), 800);
}

#[test]
fn no_read_that_starts_after_an_erasure_sees_the_pii() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), kek()).unwrap();
    let victim = s.append_cdr(&cdr("+12025550111", Some("Vic"), 1)).unwrap();
    let other = s.append_cdr(&cdr("+12025550122", Some("Bea"), 2)).unwrap();
    let erased = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let mut after = 0;
                while !stop.load(Ordering::Acquire) || after < 100 {
                    let started_after = erased.load(Ordering::Acquire);
                    let caller = s.get_cdr(victim).unwrap().value.caller;
                    if started_after {
                        assert_eq!(caller, Pii::Erased);
                        after += 1;
                    }
                    assert!(s.get_cdr(other).unwrap().value.caller.reveal().is_some());
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.erase_subject("+12025550111").unwrap();
        erased.store(true, Ordering::Release);
        std::thread::sleep(std::time::Duration::from_millis(20));
        stop.store(true, Ordering::Release);
    });
}

/// What a pair's catch-up reads: the last id of a node's parity, that node's final
/// records above a watermark (a page at a time), and which records are calls in progress.
#[test]
fn a_peer_catch_up_reads_one_nodes_finals_after_a_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), kek()).unwrap();
    assert_eq!(s.last_cdr_id_of_node(0), None);
    // Node 1's records (odd), then node 0's own (even), as a paired store holds them.
    for id in [3u64, 5, 7] {
        s.put_cdr(id, &cdr("+12025550101", None, id)).unwrap();
    }
    s.set_pair_node(Some(0));
    let own: Vec<u64> = (0..3)
        .map(|n| s.append_cdr(&cdr("+12025550102", None, n)).unwrap())
        .collect();
    assert!(own.iter().all(|id| id % 2 == 0), "{own:?}");
    assert_eq!(s.last_cdr_id_of_node(1), Some(7));
    assert_eq!(s.last_cdr_id_of_node(0), own.last().copied());
    let ids = |v: Vec<callgate_store::Record<Cdr>>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(s.final_cdrs_of_node_after(1, None, 10)), vec![3, 5, 7]);
    assert_eq!(ids(s.final_cdrs_of_node_after(1, Some(3), 1)), vec![5]);
    assert_eq!(ids(s.final_cdrs_of_node_after(0, None, 10)), own);
    assert!(s.final_cdrs_of_node_after(1, Some(7), 10).is_empty());
    // A call in progress (an answer-time record in an open slot) is not final.
    let mut open = cdr("+12025550103", None, 9);
    open.end_at = None;
    s.put_open_cdrs(&[(9, &open)]).unwrap();
    assert!(s.holds_call_in_progress(9));
    assert!(!s.holds_call_in_progress(7), "a final record");
    assert!(!s.holds_call_in_progress(11), "no record");
    assert_eq!(s.open_cdr_ids(), vec![9]);
    assert_eq!(
        ids(s.final_cdrs_of_node_after(1, Some(7), 10)),
        Vec::<u64>::new()
    );
    // Its final record, written under the same id, ends it.
    s.put_cdrs(&[(9, &cdr("+12025550103", None, 9))]).unwrap();
    assert!(!s.holds_call_in_progress(9));
    assert!(s.open_cdr_ids().is_empty());
    assert_eq!(ids(s.final_cdrs_of_node_after(1, Some(7), 10)), vec![9]);
}

#[test]
fn console_history_is_sealed_bounded_and_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        assert!(s.history("ann").unwrap().is_empty());
        for i in 0..7 {
            s.remember("ann", &format!("show calls | match 41555501{i:02}"), 5)
                .unwrap();
        }
        s.remember("ben", "configure", 5).unwrap();
    }
    // Sealed: the typed lines never reach the disk in the clear.
    assert!(find_all(dir.path(), &[b"41555501".to_vec()]).is_empty());
    let s = Store::open(dir.path(), k.clone()).unwrap();
    let ann = s.history("ann").unwrap();
    assert_eq!(ann.len(), 5, "{ann:?}");
    assert_eq!(ann[0], "show calls | match 4155550102");
    assert_eq!(ann[4], "show calls | match 4155550106");
    assert_eq!(s.history("ben").unwrap(), vec!["configure".to_owned()]);
    // One user's history cannot be read as another's (the key is in the sealing).
    drop(s);
    {
        let db = callgate_store::sled_config(dir.path()).open().unwrap();
        let t = db.open_tree("history").unwrap();
        let v = t.get(b"ann").unwrap().unwrap();
        t.insert(b"eve", v).unwrap();
        db.flush().unwrap();
    }
    let copied = Store::open(dir.path(), k).unwrap();
    assert!(matches!(
        copied.history("eve"),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(copied.forget_history("ann").unwrap());
    assert!(copied.history("ann").unwrap().is_empty());
    assert!(!copied.forget_history("ann").unwrap());
}

#[test]
fn the_outbox_holds_every_write_in_write_order_until_the_cloud_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let k = kek();
    let (a, b, c);
    {
        let s = Store::open(dir.path(), k.clone()).unwrap();
        a = s.append_cdr(&cdr(PHONE, None, 1)).unwrap();
        b = s.append_cdr(&cdr(PHONE, None, 2)).unwrap();
        c = s.append_cdr(&cdr(PHONE, None, 3)).unwrap();
        assert_eq!(s.outbox_len(), 3);
        let page = s.outbox_page(None, 2).unwrap();
        assert_eq!(page.iter().map(|p| p.1).collect::<Vec<_>>(), vec![a, b]);
        let rest = s.outbox_page(Some(page[1].0), 10).unwrap();
        assert_eq!(rest.iter().map(|p| p.1).collect::<Vec<_>>(), vec![c]);
        // b is written again (its final record) after it was read for sending: its new
        // write waits on, after c, whatever becomes of the old one.
        s.put_cdr(b, &cdr(PHONE, None, 22)).unwrap();
        assert_eq!(
            s.outbox_len(),
            4,
            "counted, not walked: every write adds one"
        );
        let seqs: Vec<u64> = page.iter().map(|p| p.0).collect();
        s.outbox_sent(&seqs).unwrap();
        assert_eq!(s.outbox_len(), 2);
        let left: Vec<u64> = s
            .outbox_page(None, 10)
            .unwrap()
            .iter()
            .map(|p| p.1)
            .collect();
        assert_eq!(left, vec![c, b]);
    }
    // Durable across a reopen; sequences keep growing (no reuse after a restart).
    let kek_again = k.clone();
    let s = Store::open(dir.path(), k).unwrap();
    let before = s.outbox_page(None, 10).unwrap();
    assert_eq!(before.len(), 2);
    s.put_cdr(c, &cdr(PHONE, None, 33)).unwrap();
    let after = s.outbox_page(None, 10).unwrap();
    assert_eq!(after.len(), 3);
    assert!(after[2].0 > before[1].0, "{before:?} {after:?}");
    s.outbox_sent(&after.iter().map(|p| p.0).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(s.outbox_len(), 0);
    assert!(s.outbox_page(None, 10).unwrap().is_empty());
    assert!(s.outbox_page(Some(u64::MAX), 1).unwrap().is_empty());
    // Acknowledged writes are removed later, a few at a time, durably.
    assert_eq!(
        s.outbox_acked(),
        5,
        "five writes: a, b, c, b again, c again"
    );
    assert_eq!(s.outbox_compact(3).unwrap(), 3);
    assert_eq!(s.outbox_acked(), 2);
    assert_eq!(s.outbox_len(), 0, "removals are counted too");
    drop(s);
    let s = Store::open(dir.path(), kek_again).unwrap();
    assert_eq!((s.outbox_len(), s.outbox_acked()), (0, 2));
    assert!(s.outbox_page(None, 10).unwrap().is_empty());
    assert_eq!(s.outbox_compact(100).unwrap(), 2);
    assert_eq!(s.outbox_compact(100).unwrap(), 0);
    // A new write after everything left: sent like any other.
    let d = s.append_cdr(&cdr(PHONE, None, 4)).unwrap();
    assert_eq!(s.outbox_len(), 1);
    assert_eq!(
        s.outbox_page(None, 10)
            .unwrap()
            .iter()
            .map(|p| p.1)
            .collect::<Vec<_>>(),
        vec![d]
    );
}

#[test]
fn a_batch_read_gives_what_single_reads_give() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), kek()).unwrap();
    let ids: Vec<u64> = (0..50)
        .map(|i| s.append_cdr(&cdr(PHONE, Some(NAME), i)).unwrap())
        .collect();
    // Dense (one walk), sparse (point reads), and an id that is not there.
    for want in [
        ids[10..30].to_vec(),
        vec![ids[0], ids[49]],
        vec![ids[3], 9_999],
    ] {
        let got = s.get_cdrs(&want);
        assert_eq!(got.len(), want.len());
        for id in &want {
            match (got.get(id).unwrap(), s.get_cdr(*id)) {
                (Ok(a), Ok(b)) => assert_eq!(a, &b),
                (Err(StoreError::NotFound { .. }), Err(StoreError::NotFound { .. })) => {}
                (a, b) => panic!("{id}: {a:?} vs {b:?}"),
            }
        }
    }
    assert!(s.get_cdrs(&[]).is_empty());
}

/// The cloud's JSON of a record, joined from its stored parts, against the record read
/// and serialized the usual way: the same bytes as `cdr_json` of what `get_cdr` reads,
/// and the same values as `Cdr`'s own JSON, for every shape a record can take.
#[test]
fn a_records_cloud_json_is_what_the_record_says() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), kek()).unwrap();
    let party = |addr: &str| Party {
        tcp: false,
        tls: false,
        addr: addr.parse().unwrap(),
        local: "203.0.113.5:5060".parse().unwrap(),
        media: vec![],
    };
    let mut shapes = vec![
        cdr(PHONE, Some(NAME), 1),
        cdr(PHONE, None, 2),
        cdr("+14155550123", Some("Zoë \"Q\" O'Brien\\"), 3),
        cdr(PHONE, Some(NAME), 4),
        cdr(PHONE, None, 5),
    ];
    shapes[3].ended_by = Some("b".into());
    shapes[4].end_at = None;
    shapes[4].resume = Some(Resume {
        from_tag: "ftag".into(),
        caller: party("203.0.113.10:5060"),
        callee: party("198.51.100.10:5060"),
        media_pool: vec!["203.0.113.32/28".into()],
    });
    let mut erased_at_write = cdr("+12025550199", Some(NAME), 6);
    erased_at_write.caller = Pii::Erased;
    erased_at_write.caller_name = Some(Pii::Erased);
    shapes.push(erased_at_write);
    let ids: Vec<u64> = shapes.iter().map(|c| s.append_cdr(c).unwrap()).collect();
    let check = |s: &Store| {
        let got = s.get_cdrs_json(&ids);
        for id in &ids {
            let json = got.get(id).unwrap().as_ref().unwrap();
            let read = s.get_cdr(*id).unwrap().value;
            assert_eq!(
                json,
                &callgate_store::cdr_json(&read).unwrap(),
                "record {id}"
            );
            let mut v: serde_json::Value = serde_json::from_slice(json).unwrap();
            let obj = v.as_object_mut().unwrap();
            assert_eq!(
                obj.remove("has_name"),
                Some(serde_json::Value::Bool(read.caller_name.is_some()))
            );
            obj.entry("resume").or_insert(serde_json::Value::Null);
            assert_eq!(v, serde_json::to_value(&read).unwrap(), "record {id}");
        }
    };
    check(&s);
    for (id, c) in ids.iter().zip(&shapes) {
        let json = s.get_cdrs_json(&[*id]).remove(id).unwrap().unwrap();
        assert_eq!(
            json,
            callgate_store::cdr_json(c).unwrap(),
            "as written: {id}"
        );
    }
    // After an erasure the caller's records carry nulls, and nothing else changes.
    s.erase_subject(PHONE).unwrap();
    check(&s);
    let v: serde_json::Value =
        serde_json::from_slice(s.get_cdrs_json(&[ids[0]])[&ids[0]].as_ref().unwrap()).unwrap();
    assert_eq!(
        (&v["caller"], &v["caller_name"]),
        (&serde_json::Value::Null, &serde_json::Value::Null)
    );
    assert_eq!(v["call_id"], "call-1@192.0.2.10");
    // Gone: an error, never bytes.
    assert!(matches!(
        s.get_cdrs_json(&[9_999])[&9_999],
        Err(StoreError::NotFound { .. })
    ));
}
