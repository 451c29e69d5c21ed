//! A profiling aid: the uplink session's per-batch store work (a page of the outbox, the
//! records read and opened, the batch built) on a fresh store of 10,000 records, timed
//! per step. `cargo run --release -p callgate-uplink --example read_path [ROUNDS]`, or
//! under `perf record` to see where a batch's CPU goes. `scripts/bench uplink` is the
//! measurement; this isolates the store's share of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use callgate_store::{Cdr, Disposition, Pii, Store};
use callgate_uplink::payload::{Batch, MAX_PAYLOAD};

fn cdr(n: u64) -> Cdr {
    Cdr {
        call_id: format!("{n}-12345@198.51.100.10"),
        tracking_number: "+18005550100".into(),
        campaign: "spring".into(),
        // One caller, as the lab's sipp calls (the subject key is cached).
        caller: Pii::new("+12025550101"),
        caller_name: Some(Pii::new("Ann Caller")),
        destination: "sip:agent@198.51.100.20".into(),
        invite_at: 1_780_000_000_000 + n,
        ring_at: Some(1_780_000_000_010 + n),
        answer_at: Some(1_780_000_000_020 + n),
        end_at: Some(1_780_000_000_120 + n),
        duration_ms: 100,
        disposition: Disposition::Answered,
        final_code: 200,
        appliance: "lab-a".into(),
        ended_by: None,
        resume: None,
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let kek = callgate_vault::Kek::generate().unwrap();
    let store = Store::open(dir.path(), kek).unwrap();
    let recs: Vec<(u64, Cdr)> = (1..=10_000).map(|n| (n, cdr(n))).collect();
    for chunk in recs.chunks(500) {
        let refs: Vec<(u64, &Cdr)> = chunk.iter().map(|(id, c)| (*id, c)).collect();
        store.put_cdrs(&refs).unwrap();
    }
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let (mut t_page, mut t_get, mut t_push) = (0.0, 0.0, 0.0);
    let mut batches = 0;
    for _ in 0..rounds {
        let mut cursor = None;
        loop {
            let t = Instant::now();
            let page = store.outbox_page(cursor, 100).unwrap();
            t_page += t.elapsed().as_secs_f64();
            if page.is_empty() {
                break;
            }
            cursor = page.last().map(|(s, _)| *s);
            let t = Instant::now();
            let ids: Vec<u64> = page.iter().map(|(_, id)| *id).collect();
            let mut got = store.get_cdrs_json(&ids);
            t_get += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut b = Batch::new("lab-a", MAX_PAYLOAD);
            for (seq, id) in &page {
                let json = got.remove(id).unwrap().unwrap();
                assert!(b.push_json(*id, *seq, &json));
            }
            std::hint::black_box(b.finish());
            t_push += t.elapsed().as_secs_f64();
            batches += 1;
        }
    }
    let per = |t: f64| t * 1000.0 / batches as f64;
    println!(
        "per batch of 100: outbox_page {:.3} ms, get_cdrs_json {:.3} ms, push+finish {:.3} ms",
        per(t_page),
        per(t_get),
        per(t_push)
    );
}
