//! `scripts/bench store`: the encrypted record store against plain sled, side by side in one
//! run, on the same disk, with the same durability.
//!
//! - write: `THREADS` threads append ~1 KiB CDRs (callers scattered over `SUBJECTS`
//!   numbers). Product: `Store::append_cdr` (serialize, seal the caller's PII under their
//!   subject key, seal the record under the data key, index it by subject token). Anchor:
//!   the same CDR as plain JSON into a plain sled `cdrs` tree, plus the same kind of index
//!   entry (the caller's number in clear ++ id). Both commit through the very same
//!   `GroupCommit` (applied, flushed and fdatasync'ed before the ack, one flush per group),
//!   with the same sled settings, and announce their writes the same way.
//! - read: every record read back by id from the same threads (product: open, verify,
//!   unseal the PII; anchor: get + JSON decode).
//! - stress: the write comparison again with `STRESS_THREADS` writers. On a 2-core machine
//!   that is CPU-bound (sled and the thread hand-offs use most of it), so the ~5 µs of
//!   sealing per write shows there, and not with `THREADS` writers, where the disk bounds.
//! - open_ms: `Store::open` of an existing store holding `RECORDS` (≥ 10k) CDRs.
//! - unseal_ms: `SoftwareProtector::unseal`, for now: the TPM helper (`callgate-seal` on
//!   swtpm) is to replace it here once it exists.
//!
//! - `bench-store batch` (no lab, no swtpm): only the write path of the call-record writer,
//!   one thread writing `put_cdrs` batches of `BATCH` records (as the daemon's `cdr-writer`
//!   does) vs plain sled committing the same batches (JSON value + index entry per record,
//!   one `GroupCommit` per batch). Reports records/s and CPU µs per record, both of the
//!   writing thread (`RUSAGE_THREAD`) and of the whole process (`RUSAGE_SELF`: sled's and
//!   the store writer's threads included), medians of `REPS` alternating pairs.
//!
//! One discarded warm-up pair, then `REPS` pairs of runs, alternating which side goes first,
//! each on a fresh directory. Rates are medians; the ratios are medians of the per-pair
//! ratios (the two runs of a pair are adjacent in time, so load from elsewhere on the
//! machine hits both). The last line is `BENCH store write_per_s=… plain_write_per_s=…
//! write_x_vs_plain=… read_per_s=… plain_read_per_s=… read_x_vs_plain=… unseal_ms=…
//! open_ms=… …`. The data lives in a temporary directory under `$TMPDIR` (or `/tmp`):
//! point `TMPDIR` at the disk to measure (on a tmpfs every fsync is free).

use hil_tests::bench::{fail, median, ms};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use callgate_store::{sled_config, Cdr, Disposition, GroupCommit, Op, Pii, Store, Table};
use callgate_vault::{Kek, Protector};

/// Concurrent writers: a handful of tasks write records in the daemon.
const THREADS: usize = 8;
const STRESS_THREADS: usize = 32;
const RECORDS: usize = 12_000;
const REPS: usize = 5;
const STRESS_REPS: usize = 3;
const SUBJECTS: u64 = 2_000;
const VALUE_BYTES: usize = 1024;

/// A CDR whose plain JSON is `VALUE_BYTES` long (the padding goes into `appliance`).
fn cdr(n: u64, pad: usize) -> Cdr {
    // Consecutive calls come from unrelated callers: scatter the subjects (a bijection on
    // 0..2^64, then reduced), so neither side's index gets sequential keys for free.
    let subject = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) % SUBJECTS;
    Cdr {
        call_id: format!("{n:016x}-a84b4c76e66710@203.0.113.7"),
        tracking_number: "+18005550100".into(),
        campaign: "spring-2025-search".into(),
        caller: Pii::new(format!("+1202555{subject:04}")),
        caller_name: Some(Pii::new(format!("Caller Number {subject}"))),
        destination: "sip:queue-sales@198.51.100.20:5060".into(),
        invite_at: 1_700_000_000_000 + n,
        ring_at: Some(1_700_000_000_150 + n),
        answer_at: Some(1_700_000_004_000 + n),
        end_at: Some(1_700_000_064_000 + n),
        duration_ms: 60_000,
        disposition: Disposition::Answered,
        final_code: 200,
        appliance: "a".repeat(pad),
        ended_by: None,
        resume: None,
    }
}

fn padding() -> usize {
    let base = serde_json::to_vec(&cdr(0, 0)).map_or(0, |v| v.len());
    VALUE_BYTES.saturating_sub(base)
}

/// Runs `per_record(i)` for i in 0..RECORDS on `threads` threads; records per second.
fn storm(threads: usize, per_record: impl Fn(u64) + Sync) -> f64 {
    let next = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= RECORDS as u64 {
                    break;
                }
                per_record(i);
            });
        }
    });
    RECORDS as f64 / start.elapsed().as_secs_f64()
}

struct Rates {
    write_per_s: f64,
    read_per_s: f64,
}

fn product(dir: &Path, kek: &Kek, pad: usize, threads: usize) -> Rates {
    let store = Store::open(dir, kek.clone()).unwrap_or_else(|e| fail("Store::open", e));
    let ids: Vec<AtomicU64> = (0..RECORDS).map(|_| AtomicU64::new(0)).collect();
    let write_per_s = storm(threads, |i| {
        let id = store
            .append_cdr(&cdr(i, pad))
            .unwrap_or_else(|e| fail("append_cdr", e));
        ids[i as usize].store(id, Ordering::Relaxed);
    });
    let read_per_s = storm(threads, |i| {
        let id = ids[i as usize].load(Ordering::Relaxed);
        match store.get_cdr(id) {
            Ok(r) if r.value.invite_at == 1_700_000_000_000 + i => {}
            Ok(_) => fail("get_cdr", format!("record {id} has the wrong content")),
            Err(e) => fail("get_cdr", e),
        }
    });
    Rates {
        write_per_s,
        read_per_s,
    }
}

/// The plain-sled anchor's database in `dir`: its record tree, its index tree and the same
/// group commit the store uses.
fn anchor_db(dir: &Path) -> (sled::Tree, sled::Tree, GroupCommit) {
    let db = sled_config(dir)
        .open()
        .unwrap_or_else(|e| fail("sled open", e));
    let (cdrs, index) = match (db.open_tree("cdrs"), db.open_tree("cdrs_by_caller")) {
        (Ok(c), Ok(i)) => (c, i),
        (Err(e), _) | (_, Err(e)) => fail("sled open_tree", e),
    };
    let commit = GroupCommit::start(db, dir).unwrap_or_else(|e| fail("GroupCommit", e));
    (cdrs, index, commit)
}

fn anchor(dir: &Path, pad: usize, threads: usize) -> Rates {
    let (cdrs, index, commit) = anchor_db(dir);
    let next = AtomicU64::new(1);
    let ids: Vec<AtomicU64> = (0..RECORDS).map(|_| AtomicU64::new(0)).collect();
    let write_per_s = storm(threads, |i| {
        // Announced before preparing, as the store does.
        let intent = commit.intent();
        let c = cdr(i, pad);
        let id = next.fetch_add(1, Ordering::Relaxed);
        let value = serde_json::to_vec(&c).unwrap_or_else(|e| fail("json", e));
        let caller = c.caller.reveal().unwrap_or_default().as_bytes();
        let ops = vec![
            Op::Insert {
                tree: cdrs.clone(),
                key: id.to_be_bytes().to_vec(),
                value,
            },
            Op::Insert {
                tree: index.clone(),
                key: [caller, &id.to_be_bytes()].concat(),
                value: Vec::new(),
            },
        ];
        intent.commit(ops).unwrap_or_else(|e| fail("commit", e));
        ids[i as usize].store(id, Ordering::Relaxed);
    });
    let read_per_s = storm(threads, |i| {
        let id = ids[i as usize].load(Ordering::Relaxed);
        let v = match cdrs.get(id.to_be_bytes()) {
            Ok(Some(v)) => v,
            Ok(None) => fail("sled get", format!("record {id} missing")),
            Err(e) => fail("sled get", e),
        };
        match serde_json::from_slice::<Cdr>(&v) {
            Ok(c) if c.invite_at == 1_700_000_000_000 + i => {}
            Ok(_) => fail("sled get", format!("record {id} has the wrong content")),
            Err(e) => fail("json", e),
        }
    });
    Rates {
        write_per_s,
        read_per_s,
    }
}

/// Medians over pairs of runs: (product, anchor, per-pair ratio) for writes, then reads.
struct Compared {
    write: (f64, f64, f64),
    read: (f64, f64, f64),
}

fn compare(
    base: &Path,
    name: &str,
    kek: &Kek,
    pad: usize,
    threads: usize,
    reps: usize,
) -> Compared {
    let (mut w, mut pw, mut wx, mut r, mut pr, mut rx) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for rep in 0..reps {
        let enc_dir = base.join(format!("{name}-enc{rep}"));
        let plain_dir = base.join(format!("{name}-plain{rep}"));
        // Alternate which side goes first.
        let (p, a) = if rep % 2 == 0 {
            let p = product(&enc_dir, kek, pad, threads);
            (p, anchor(&plain_dir, pad, threads))
        } else {
            let a = anchor(&plain_dir, pad, threads);
            (product(&enc_dir, kek, pad, threads), a)
        };
        eprintln!(
            "{name} {threads} threads, run {rep}: write {:.0}/s vs plain {:.0}/s ({:.2}), \
             read {:.0}/s vs plain {:.0}/s",
            p.write_per_s,
            a.write_per_s,
            p.write_per_s / a.write_per_s,
            p.read_per_s,
            a.read_per_s
        );
        w.push(p.write_per_s);
        pw.push(a.write_per_s);
        wx.push(p.write_per_s / a.write_per_s);
        r.push(p.read_per_s);
        pr.push(a.read_per_s);
        rx.push(p.read_per_s / a.read_per_s);
    }
    Compared {
        write: (median(w), median(pw), median(wx)),
        read: (median(r), median(pr), median(rx)),
    }
}

/// Unseal timings (ms) of `callgate-seal` on a swtpm in a lab namespace.
fn tpm_unseal_ms(base: &std::path::Path, kek: &Kek) -> Vec<f64> {
    let lab = hil_tests::Lab::start(&[hil_tests::Host::A]).unwrap_or_else(|e| fail("lab", e));
    let ns = lab.ns(hil_tests::Host::A);
    let tpm =
        hil_tests::Swtpm::start(ns.clone(), &base.join("tpm")).unwrap_or_else(|e| fail("swtpm", e));
    tpm.measure_boot().unwrap_or_else(|e| fail("pcr extend", e));
    let protector = callgate_vault::TpmProtector {
        seal_bin: hil_tests::bin("callgate-seal"),
        tcti: tpm.tcti(),
        blob: base.join("kek.blob"),
    };
    let kek = kek.clone();
    ns.run_in(move || {
        protector
            .seal(&kek, &[7], false)
            .unwrap_or_else(|e| fail("seal", e));
        (0..10)
            .map(|_| {
                let start = Instant::now();
                let got = protector.unseal().unwrap_or_else(|e| fail("unseal", e));
                let t = ms(start.elapsed());
                if got.expose_secret() != kek.expose_secret() {
                    fail("unseal", "a different key came back");
                }
                t
            })
            .collect()
    })
}

/// Records per `put_cdrs` batch in `bench-store batch`, and per run (enough CPU time for
/// the process's 10 ms clock ticks).
const BATCH: usize = 64;
const BATCH_RECORDS: usize = 32_000;

/// CPU time so far, µs, of the calling thread: the first field of
/// `/proc/thread-self/schedstat` (time on a CPU, ns).
fn thread_cpu_us() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(|| fail("schedstat", "unreadable"), |ns| ns / 1e3)
}

/// CPU time so far (user + system, every thread, exited ones included), µs, of this
/// process: `/proc/self/stat` (clock ticks).
fn process_cpu_us() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    let hz = match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    };
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        });
    ticks.map_or_else(
        || fail("/proc/self/stat", "unreadable"),
        |t| t as f64 * 1e6 / hz,
    )
}

/// One batch run's figures: records/s, thread CPU µs/record, process CPU µs/record.
struct BatchRun {
    per_s: f64,
    thread_us: f64,
    process_us: f64,
}

/// Runs `write(batch index)` for every batch of `RECORDS` and measures it.
fn batch_run(mut write: impl FnMut(u64)) -> BatchRun {
    let batches = BATCH_RECORDS.div_ceil(BATCH) as u64;
    let (t0, p0, start) = (thread_cpu_us(), process_cpu_us(), Instant::now());
    for b in 0..batches {
        write(b);
    }
    let n = (batches as usize * BATCH) as f64;
    BatchRun {
        per_s: n / start.elapsed().as_secs_f64(),
        thread_us: (thread_cpu_us() - t0) / n,
        process_us: (process_cpu_us() - p0) / n,
    }
}

fn batch_product(dir: &Path, kek: &Kek, pad: usize) -> BatchRun {
    let store = Store::open(dir, kek.clone()).unwrap_or_else(|e| fail("Store::open", e));
    let run = batch_run(|b| {
        let cdrs: Vec<(u64, Cdr)> = (0..BATCH as u64)
            .map(|i| (store.reserve_cdr_id(), cdr(b * BATCH as u64 + i, pad)))
            .collect();
        let refs: Vec<(u64, &Cdr)> = cdrs.iter().map(|(id, c)| (*id, c)).collect();
        match store.put_cdrs(&refs) {
            Ok(failed) if failed.is_empty() => {}
            Ok(failed) => fail("put_cdrs", &failed[0].1),
            Err(e) => fail("put_cdrs", e),
        }
    });
    if store.len(Table::Cdrs) < BATCH_RECORDS {
        fail("put_cdrs", "records missing");
    }
    run
}

fn batch_anchor(dir: &Path, pad: usize) -> BatchRun {
    let (cdrs, index, commit) = anchor_db(dir);
    batch_run(|b| {
        let intent = commit.intent();
        let mut ops = Vec::with_capacity(2 * BATCH);
        for i in 0..BATCH as u64 {
            let id = b * BATCH as u64 + i + 1;
            let c = cdr(id, pad);
            let value = serde_json::to_vec(&c).unwrap_or_else(|e| fail("json", e));
            let caller = c.caller.reveal().unwrap_or_default().as_bytes();
            ops.push(Op::Insert {
                tree: index.clone(),
                key: [caller, &id.to_be_bytes()].concat(),
                value: Vec::new(),
            });
            ops.push(Op::Insert {
                tree: cdrs.clone(),
                key: id.to_be_bytes().to_vec(),
                value,
            });
        }
        intent.commit(ops).unwrap_or_else(|e| fail("commit", e));
    })
}

/// `bench-store batch`: see the module doc.
fn batch_main(base: &Path, kek: &Kek, pad: usize) {
    eprintln!(
        "bench store batch: {BATCH_RECORDS} CDRs of {VALUE_BYTES} bytes (as JSON) per run in \
         put_cdrs batches of {BATCH}, one writer thread, in {}",
        base.display()
    );
    let (mut p, mut a) = (Vec::new(), Vec::new());
    for rep in 0..=REPS {
        let enc = base.join(format!("batch-enc{rep}"));
        let plain = base.join(format!("batch-plain{rep}"));
        let (pr, ar) = if rep % 2 == 0 {
            let pr = batch_product(&enc, kek, pad);
            (pr, batch_anchor(&plain, pad))
        } else {
            let ar = batch_anchor(&plain, pad);
            (batch_product(&enc, kek, pad), ar)
        };
        eprintln!(
            "batch run {rep}{}: store {:.0}/s, {:.1} µs/record (thread), {:.1} µs/record \
             (process); plain sled {:.0}/s, {:.1} µs (thread), {:.1} µs (process)",
            if rep == 0 { " (warm-up)" } else { "" },
            pr.per_s,
            pr.thread_us,
            pr.process_us,
            ar.per_s,
            ar.thread_us,
            ar.process_us
        );
        if rep > 0 {
            p.push(pr);
            a.push(ar);
        }
    }
    let med = |v: &[BatchRun], f: fn(&BatchRun) -> f64| median(v.iter().map(f).collect());
    println!(
        "BENCH store-batch per_s={:.0} thread_us={:.1} process_us={:.1} plain_per_s={:.0} \
         plain_thread_us={:.1} plain_process_us={:.1} batch={BATCH} records={BATCH_RECORDS} \
         value_bytes={VALUE_BYTES}",
        med(&p, |r| r.per_s),
        med(&p, |r| r.thread_us),
        med(&p, |r| r.process_us),
        med(&a, |r| r.per_s),
        med(&a, |r| r.thread_us),
        med(&a, |r| r.process_us),
    );
}

fn main() {
    let tmp = tempfile::Builder::new()
        .prefix("bench-store-")
        .tempdir()
        .unwrap_or_else(|e| fail("tempdir", e));
    let base = tmp.path();
    let kek = Kek::generate().unwrap_or_else(|e| fail("Kek::generate", e));
    let pad = padding();
    if std::env::args().nth(1).as_deref() == Some("batch") {
        batch_main(base, &kek, pad);
        return;
    }
    eprintln!(
        "bench store: {RECORDS} CDRs of {VALUE_BYTES} bytes (as JSON) per run, \
         {THREADS} writer threads ({STRESS_THREADS} for stress), in {}",
        base.display()
    );

    // Warm-up, discarded: the first runs in a process are slower (allocator, sled's shared
    // I/O thread pool, page cache), whichever side goes first.
    compare(base, "warm-up", &kek, pad, THREADS, 1);
    let main = compare(base, "main", &kek, pad, THREADS, REPS);
    let stress = compare(base, "stress", &kek, pad, STRESS_THREADS, STRESS_REPS);

    // Open of an existing store with RECORDS records (the first main run's).
    let enc0 = base.join("main-enc0");
    let mut opens = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let s = Store::open(&enc0, kek.clone()).unwrap_or_else(|e| fail("Store::open", e));
        opens.push(ms(start.elapsed()));
        if s.len(Table::Cdrs) < 10_000 {
            fail("open", "fewer than 10k records");
        }
    }
    let mut plain_opens = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let db = sled_config(&base.join("main-plain0"))
            .open()
            .unwrap_or_else(|e| fail("sled open", e));
        plain_opens.push(ms(start.elapsed()));
        drop(db);
    }

    // unseal_ms: the real path: callgate-seal unsealing a KEK sealed to PCR 7 of a swtpm,
    // run in a lab namespace (swtpm on that namespace's loopback), process start to KEK out.
    let unseals = tpm_unseal_ms(base, &kek);

    let (w, pw, wx) = main.write;
    let (r, pr, rx) = main.read;
    let (sw, spw, swx) = stress.write;
    println!(
        "BENCH store write_per_s={w:.0} plain_write_per_s={pw:.0} write_x_vs_plain={wx:.2} \
         read_x_vs_plain={rx:.2} unseal_ms={:.1} open_ms={:.1} read_per_s={r:.0} \
         plain_read_per_s={pr:.0} plain_open_ms={:.1} threads={THREADS} \
         stress_threads={STRESS_THREADS} stress_write_per_s={sw:.0} \
         stress_plain_write_per_s={spw:.0} stress_write_x_vs_plain={swx:.2} \
         records={RECORDS} value_bytes={VALUE_BYTES}",
        median(unseals),
        median(opens),
        median(plain_opens),
    );
}
