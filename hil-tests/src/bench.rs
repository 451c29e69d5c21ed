//! What every `scripts/bench` binary (`src/bin/bench-*.rs`) needs: giving up with the lab
//! cleaned up, medians, milliseconds, and the daemon's process.

use std::time::Duration;

use crate::Appliance;

/// Gives up: prints why and unwinds, so the labs, processes and temporary directories are
/// cleaned up on the way out; the process exits non-zero.
pub fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("bench: {what}: {e}");
    std::panic::resume_unwind(Box::new(format!("bench: {what}")));
}

/// The median (the upper one of an even count); NaN for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The pid of `a`'s daemon, checked to be `callgated` (gives up otherwise): the fixture's
/// process is the daemon itself, every wrapper execs (its rollback guard is a child).
pub fn daemon_pid(a: &Appliance<'_>) -> u32 {
    let pid = a.pid().unwrap_or_else(|| fail("callgated", "not running"));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "callgated" {
        fail("callgated", format!("pid {pid} is {:?}", comm.trim()));
    }
    pid
}
