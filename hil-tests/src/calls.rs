//! What the SIP system tests share: the lab config, an appliance with the proxy running,
//! and the daemon's view of calls (records, counters, calls in progress) read through
//! `callgate --json`. Failures panic: these are test helpers.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Appliance, Host, Lab};

/// A tracking number of the UDP routes of `config/lab.toml` (spring-radio).
pub const UDP_NUMBER: &str = "+15550100007";
/// A tracking number of the TCP route (tv-spot).
pub const TCP_NUMBER: &str = "+15550100207";
/// The caller the tests dial from.
pub const CALLER: &str = "+14155550123";
pub const CALLER_NAME: &str = "Ada Lovelace";

/// `config/lab.toml` as shipped.
pub fn lab_toml() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab.toml");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `config/lab.toml` with `edits` applied (each `from` must occur).
pub fn config(edits: &[(&str, &str)]) -> String {
    let mut t = lab_toml();
    for (from, to) in edits {
        assert!(t.contains(from), "config/lab.toml has no {from:?}");
        t = t.replacen(from, to, 1);
    }
    t
}

/// A lab of the carrier, appliance A and the PBX segment.
pub fn new_lab() -> Lab {
    Lab::start(&[Host::Carrier, Host::A, Host::Pbx]).unwrap_or_else(|e| panic!("lab: {e}"))
}

/// Appliance A running `cfg`, keys provisioned.
pub fn start<'l>(lab: &'l Lab, cfg: &str) -> Appliance<'l> {
    Appliance::start(lab, Host::A, cfg).unwrap_or_else(|e| panic!("appliance starts: {e}"))
}

/// Every stored call record (the last 10,000), oldest first.
pub fn cdrs(a: &Appliance<'_>) -> Vec<Value> {
    let out = a.cli(&["--json", "show", "cdrs", "--last", "10000"]);
    assert!(out.ok(), "show cdrs: {} {}", out.stdout, out.stderr);
    out.json()["cdrs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r["cdr"].clone())
        .collect()
}

/// Waits until `n` final records are stored (records are written asynchronously), 20 s at
/// most; the final records then.
pub fn wait_cdrs(a: &Appliance<'_>, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Vec<Value> = cdrs(a)
            .into_iter()
            .filter(|c| !c["end_at"].is_null())
            .collect();
        if v.len() >= n || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The proxy's counters (`show sip stats`).
pub fn stats(a: &Appliance<'_>) -> Value {
    let out = a.cli(&["--json", "show", "sip", "stats"]);
    assert!(out.ok(), "show sip stats: {}", out.stderr);
    out.json()["stats"].clone()
}

/// The calls in progress (`show calls`).
pub fn active_calls(a: &Appliance<'_>) -> Vec<Value> {
    let out = a.cli(&["--json", "show", "calls"]);
    assert!(out.ok(), "show calls: {}", out.stderr);
    out.json()["calls"].as_array().cloned().unwrap_or_default()
}

/// A UDP callee on the PBX (`uas.xml`, answers every call), ready.
pub fn pbx(lab: &Lab) -> crate::sipp::SippHandle<'_> {
    let h = crate::sipp::Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
        .local(crate::addr::PBX_V4, 5060)
        .transport(crate::sipp::Transport::Udp)
        .timeout(Duration::from_secs(3600))
        .spawn()
        .unwrap_or_else(|e| panic!("sipp UAS: {e}"));
    h.wait_ready(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("sipp UAS: {e}"));
    h
}

/// `n` UDP calls from the carrier to appliance A's WAN address at `rate` per second, each
/// held `hold`: a caller to run or spawn.
pub fn carrier_calls(lab: &Lab, n: u64, rate: f64, hold: Duration) -> crate::sipp::Sipp<'_> {
    crate::sipp::Sipp::uac(&lab.ns(Host::Carrier), "uac.xml")
        .local(crate::addr::CARRIER_V4, 5060)
        .remote(crate::addr::A_WAN_V4, 5060)
        .transport(crate::sipp::Transport::Udp)
        .service(UDP_NUMBER)
        .caller(CALLER, CALLER_NAME)
        .calls(n)
        .rate(rate)
        .duration(hold)
        .timeout(Duration::from_secs(600))
}

/// Milliseconds since the Unix epoch: the clock of call records (`answer_at`, `end_at`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A JSON number as u64.
pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Polls `f` every 100 ms until it holds; panics with `what` after `secs`. Waiting for an
/// event the daemon reports, never an assertion on how long it took.
pub fn wait_until(what: &str, secs: u64, f: impl FnMut() -> bool) {
    assert!(
        crate::poll_until(Duration::from_secs(secs), Duration::from_millis(100), f),
        "never happened: {what}"
    );
}
