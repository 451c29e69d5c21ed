//! The kill -9 harness the crash tests share: the test binary runs itself again as a
//! writer (one `#[test]` that only acts when the parent set the environment), the writer
//! prints a line per acknowledged write, and the parent SIGKILLs it at a moment it picks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test uses a part

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use callgate_store::Store;
use callgate_vault::Kek;

pub const DIR_ENV: &str = "CALLGATE_STORE_CRASH_DIR";
pub const KEK_ENV: &str = "CALLGATE_STORE_CRASH_KEK";
pub const ROUND_ENV: &str = "CALLGATE_STORE_CRASH_ROUND";

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// In the child: the store directory, the KEK and the round, when the parent set them.
pub fn child_env() -> Option<(String, Kek, u64)> {
    let (Ok(dir), Ok(kek)) = (std::env::var(DIR_ENV), std::env::var(KEK_ENV)) else {
        return None;
    };
    let round = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    Some((dir, Kek::from_slice(&unhex(&kek)).unwrap(), round))
}

/// In the child: opens the store the parent named and runs `writer(store, round, thread)`
/// on `threads` threads (each writes until it is killed). Nothing when not the child.
pub fn run_child(threads: u64, writer: impl Fn(&Store, u64, u64) + Sync) {
    let Some((dir, kek, round)) = child_env() else {
        return;
    };
    let store = Store::open(&dir, kek).unwrap();
    println!("READY");
    std::thread::scope(|s| {
        for t in 0..threads {
            let (store, writer) = (&store, &writer);
            s.spawn(move || writer(store, round, t));
        }
    });
}

/// Runs the writer test `child` of this binary on the store in `dir`, hands each line it
/// prints to `line`, and SIGKILLs it once `line` returns `true` (or after two minutes);
/// keeps reading what it printed before it died. Panics unless it died of the SIGKILL.
pub fn run_and_kill(
    child: &str,
    dir: &std::path::Path,
    kek: &Kek,
    round: usize,
    mut line: impl FnMut(&str) -> bool,
) {
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([child, "--exact", "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, dir)
        .env(KEK_ENV, hex(kek.expose_secret()))
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(proc.stdout.take().unwrap());
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    for l in out.lines() {
        let l = l.unwrap();
        let kill = line(&l);
        if !killed && (kill || Instant::now() > deadline) {
            // SIGKILL, mid-storm; keep reading what it acknowledged before dying.
            proc.kill().unwrap();
            killed = true;
        }
    }
    let status = proc.wait().unwrap();
    assert!(killed, "the writer ended by itself: {status:?}");
    assert_eq!(status.signal(), Some(9), "{status:?}");
}
