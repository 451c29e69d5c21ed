#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! Retention against the real daemon with its wall clock moved: calls placed by sipp on
//! the carrier through appliance A to the PBX, the daemon's clock moved forward by
//! libfaketime (`LD_PRELOAD`, an offset in a file the test rewrites; the monotonic clock
//! stays real, so tokio's timers run as they do), retention run as an admin would make it
//! run (it runs at start-up and at every config change: a commit, then restarts), and the
//! store read back through `callgate`.
//!
//! Nothing in the product knows of the moved clock: it only reads the time. The daemon
//! runs with `--record-segment-kib 64` (its call-record log's segments, 64 MiB by default,
//! come back once emptied: a lab run never fills one of the default size).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hil_tests::calls::{carrier_calls, config, new_lab, pbx, start, wait_cdrs, wait_until};
use hil_tests::Appliance;
use serde_json::Value;

/// Calls before the clock moves; nothing is held about this caller afterwards.
const OLD: &str = "+14155550111";
/// Calls after it.
const NEW: &str = "+14155550122";
const DAY_S: u64 = 86_400;
/// The steady load: calls per moved day, and the last round (two moved days each).
const PER_DAY: u64 = 150;
const ROUNDS: u64 = 37;
/// How much the data directory may still move once settled: one log segment.
const SLACK: u64 = 64 * 1024;

/// libfaketime (Debian's `libfaketime`, installed by `scripts/setup`): its thread-safe
/// build.
fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("libfaketime is not installed (scripts/setup installs it)"))
}

/// The daemon's clock: the real one plus what `file` says, read again at every call.
fn fake_clock(a: &mut Appliance<'_>, file: &Path) {
    a.set_env("LD_PRELOAD", libfaketime().to_str().unwrap());
    a.set_env("FAKETIME_TIMESTAMP_FILE", file.to_str().unwrap());
    a.set_env("FAKETIME_NO_CACHE", "1");
    a.set_env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
}

/// Moves the daemon's clock to `days` after the real time.
fn move_clock(file: &Path, days: u64) {
    std::fs::write(file, format!("+{}\n", days * DAY_S)).unwrap();
}

/// Every stored record as `show cdrs` lists it.
fn stored(a: &Appliance<'_>) -> Vec<Value> {
    let out = a.cli(&["--json", "show", "cdrs", "--last", "100000"]);
    assert!(out.ok(), "{}", out.stderr);
    out.json()["cdrs"].as_array().cloned().unwrap_or_default()
}

fn callers(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["cdr"]["caller"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// `n` answered calls from `caller`, stored.
fn calls_from(lab: &hil_tests::Lab, a: &Appliance<'_>, caller: &str, n: u64, total: usize) {
    let r = carrier_calls(lab, n, 100.0, Duration::from_millis(50))
        .caller(caller, "Retained Caller")
        .run()
        .unwrap();
    assert_eq!(r.successful, n, "{r:?}");
    assert!(wait_cdrs(a, total).len() >= total, "{}", a.log());
}

/// A commit of the running config (with a comment that changes): retention runs.
fn run_retention(a: &Appliance<'_>, cfg: &str, round: u64) {
    let out = a.commit(&format!("{cfg}\n# retention round {round}\n"), &[]);
    assert!(out.ok(), "{} {}\n{}", out.stdout, out.stderr, a.log());
}

/// The size of every file under `dir`, bytes.
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            size_of(&e.path())
        } else {
            m.len()
        };
    }
    total
}

#[test]
fn with_a_one_day_retention_and_the_clock_moved_old_records_go_new_ones_stay_and_the_store_stops_growing(
) {
    let lab = new_lab();
    let cfg = config(&[(
        "[appliance]",
        "[retention]\ncall_records_days = 1\naudit_days = 1\n\n[appliance]",
    )]);
    let mut a = start(&lab, &cfg);
    // The daemon again, now with its clock read through libfaketime (no offset yet), and
    // its call-record log in segments of 64 KiB (a segment's space comes back once no
    // record in it is left: with the default 64 MiB, a lab run never fills one).
    let clock = a.dir().join("faketime");
    move_clock(&clock, 0);
    assert!(a.stop().is_some(), "{}", a.log());
    fake_clock(&mut a, &clock);
    a.set_arg("--record-segment-kib");
    a.set_arg("64");
    a.launch().unwrap();
    let _pbx = pbx(&lab);

    // t0: calls of OLD.
    calls_from(&lab, &a, OLD, 10, 10);
    let t0_ids: Vec<u64> = stored(&a)
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(t0_ids.len(), 10);
    let s = a.cli(&["--json", "show", "subject", OLD]).json();
    assert_eq!(s["records"], 10, "{s}");
    assert!(s["key_generation"].as_u64().is_some(), "{s}");

    // Two days later (by the daemon's clock): calls of NEW, then retention.
    move_clock(&clock, 2);
    calls_from(&lab, &a, NEW, 5, 15);
    let day = |r: &Value| r["cdr"]["end_at"].as_u64().unwrap() / (DAY_S * 1000);
    let rows = stored(&a);
    let (old_day, new_day) = (day(&rows[0]), day(rows.last().unwrap()));
    assert!(new_day >= old_day + 2, "the daemon's clock moved: {rows:?}");
    run_retention(&a, &cfg, 1);
    wait_until("retention removed the old records", 20, || {
        callers(&stored(&a)).iter().all(|c| c == NEW)
    });
    let rows = stored(&a);
    assert_eq!(rows.len(), 5, "{:?}", callers(&rows));
    assert!(rows
        .iter()
        .all(|r| !t0_ids.contains(&r["id"].as_u64().unwrap())));
    // Nothing held about the old caller: records gone, key shredded.
    let show = a.cli(&["show", "subject", OLD]);
    assert!(show.ok(), "{}", show.stderr);
    assert!(
        show.stdout.contains("nothing is held about this number"),
        "{}",
        show.stdout
    );
    let s = a.cli(&["--json", "show", "subject", OLD]).json();
    assert_eq!(
        (s["records"].as_u64(), s["key_generation"].is_null()),
        (Some(0), true),
        "{s}"
    );
    let export = a.cli(&["request", "subject", "export", OLD, "--format", "json"]);
    let j: Value = serde_json::from_str(&export.stdout).unwrap();
    assert_eq!(j["records"], Value::Array(vec![]));
    // The new caller keeps everything.
    let s = a.cli(&["--json", "show", "subject", NEW]).json();
    assert_eq!(s["records"], 5, "{s}");

    // A steady load across moved days: each round the clock moves two days, the daemon
    // restarts (retention runs at start-up: no config revision piles up, as a commit's
    // would), the previous round's records go, and the same number of calls is placed.
    // Whatever sled and the call-record log keep, the data directory stops growing: sled's
    // file grows until it reuses its own segments (the store's unit test found the same),
    // then the largest size of the last eight rounds is not above the largest of the eight
    // before by more than one log segment (64 KiB). Without retention the log alone would
    // grow by about a segment a round (150 records), over 500 KiB across eight rounds.
    let data = a.state_dir().join("data");
    let mut sizes = Vec::new();
    let mut written = 0;
    for round in 2..=ROUNDS {
        move_clock(&clock, 2 * round);
        assert!(a.stop().is_some(), "{}", a.log());
        a.launch().unwrap();
        wait_until("retention removed the previous round's records", 20, || {
            stored(&a).is_empty()
        });
        calls_from(&lab, &a, NEW, PER_DAY, PER_DAY as usize);
        written += PER_DAY;
        sizes.push(size_of(&data));
    }
    let rows = stored(&a);
    assert_eq!(
        rows.len(),
        PER_DAY as usize,
        "only the last round's records"
    );
    assert!(written >= 30 * PER_DAY, "{written}");
    let n = sizes.len();
    let last = sizes[n - 8..].iter().copied().max().unwrap();
    let before = sizes[n - 16..n - 8].iter().copied().max().unwrap();
    assert!(
        last <= before + SLACK,
        "the data directory still grows: {last} bytes in the last eight rounds, {before} in \
         the eight before (slack {SLACK}): {sizes:?}"
    );
    assert!(
        sizes[n - 1] <= sizes[..n - 1].iter().copied().max().unwrap() + SLACK,
        "{sizes:?}"
    );
    eprintln!("retention: data directory sizes per moved day: {sizes:?}");
}
