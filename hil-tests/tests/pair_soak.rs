//! The pair's soak: a minute with both cores busy. In a test binary of its own, so its CPU
//! hogs never share the machine with the other system tests (cargo runs test binaries
//! one after the other).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::time::{Duration, Instant};

use hil_tests::pair::{new_pair_lab, show_pair, start_pair, vips_held, VIPS};
use hil_tests::Host;

/// Kills the processes it holds when dropped (the CPU hogs of the soak).
struct Hogs(Vec<std::process::Child>);

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// 60 s with both cores busy (two CPU hogs): no false takeover, no role change at all,
/// and neither heartbeat thread ever ran late.
#[test]
fn a_minute_under_cpu_load_changes_no_role() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    let before = (show_pair(&a), show_pair(&b));
    let _hogs = Hogs(
        (0..2)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", "while :; do :; done"])
                    .spawn()
                    .expect("a CPU hog")
            })
            .collect(),
    );
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        assert!(
            vips_held(&lab, Host::A).len() == VIPS.len() && vips_held(&lab, Host::B).is_empty(),
            "A: {}\nB: {}",
            show_pair(&a),
            show_pair(&b)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = (show_pair(&a), show_pair(&b));
    assert_eq!(
        after.0["transitions"], before.0["transitions"],
        "{}",
        after.0
    );
    assert_eq!(
        after.1["transitions"], before.1["transitions"],
        "{}",
        after.1
    );
    assert_eq!(after.0["late_ticks"], 0, "{}", after.0);
    assert_eq!(after.1["late_ticks"], 0, "{}", after.1);
}
