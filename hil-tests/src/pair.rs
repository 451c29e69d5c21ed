//! What the pair's system tests share: the lab with both appliances, the pair configs, the
//! pairing itself (through `callgate pair init` / `pair join`, as an engineer does it),
//! and the view of each appliance (`show pair`, the addresses its interfaces hold).
//! Failures panic: these are test helpers.
//!
//! Timing: [`start_pair`] runs the pair configs with a dead interval of 8 × 25 ms and
//! `late_after_ms = 150` ([`TEST_TIMING`]) instead of the shipped 4 × 25 ms and 50 ms. The
//! test machine (2 cores, tests in parallel, debug builds, a hundred-call burst) now and then
//! holds even a real-time heartbeat thread back more than 50 ms, which the shipped timing
//! rightly treats as a sick node (it fences itself and the peer takes over): a takeover the
//! test did not ask for. The logic is the same; the benchmark (`bench-failover`) and the
//! demo run the shipped timing ([`start_pair_shipped`]).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use crate::addr::{PRIV_VIP_V4, PRIV_VIP_V6, WAN_VIP_V4, WAN_VIP_V6};
use crate::tls::TLS_PORT;
use crate::{Appliance, Host, Lab};

/// Every virtual address of the lab pair.
pub const VIPS: [IpAddr; 4] = [
    IpAddr::V4(WAN_VIP_V4),
    IpAddr::V6(WAN_VIP_V6),
    IpAddr::V4(PRIV_VIP_V4),
    IpAddr::V6(PRIV_VIP_V6),
];

/// The heartbeat timing of the system tests (see the module docs).
pub const TEST_TIMING: (&str, &str) = (
    "heartbeat_interval_ms = 25\ndead_after_misses = 4\n",
    "heartbeat_interval_ms = 25\ndead_after_misses = 8\nlate_after_ms = 150\n",
);

/// `config/lab-pair-a.toml` or `-b.toml` as shipped.
pub fn pair_toml(host: Host) -> String {
    pair_toml_with(host, None)
}

/// SIP over TLS for the pair's carrier side: a `[sip.tls]` listener on both WAN VIPs
/// (port [`TLS_PORT`]), which each node binds whether it holds them or not, and the
/// carrier admitted to it by the firewall (`carrier-sip-tls`, as in `config/lab.toml`).
/// Each node still needs its own certificate naming the VIPs
/// ([`crate::tls::enrol_named`] with [`WAN_VIPS`]).
#[derive(Debug, Clone, Default)]
pub struct PairTls {
    /// The carrier trunk's mutual-TLS pin (the value of its `tls` key, an inline table
    /// such as `{ ca = """PEM""", fingerprints = ["AB:…"] }`); `None`: no client
    /// certificate asked for.
    pub carrier_pin: Option<String>,
}

/// The pair's WAN (carrier-side) virtual addresses.
pub const WAN_VIPS: [IpAddr; 2] = [IpAddr::V4(WAN_VIP_V4), IpAddr::V6(WAN_VIP_V6)];

/// [`pair_toml`] with the options a test asks for (`tls`: SIP over TLS on the WAN VIPs).
pub fn pair_toml_with(host: Host, tls: Option<&PairTls>) -> String {
    let path = match host {
        Host::B => concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab-pair-b.toml"),
        _ => concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab-pair-a.toml"),
    };
    let mut t = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    if let Some(tls) = tls {
        let mut edit = |from: &str, to: &str| {
            assert!(t.contains(from), "{path} no longer holds {from:?}");
            t = t.replacen(from, to, 1);
        };
        let allow_at = "[[allow]]\nname = \"carrier-ping\"";
        edit(
            allow_at,
            &format!("[[allow]]\nname = \"carrier-sip-tls\"\nzone = \"wan\"\nsources = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]\nprotocol = \"tcp\"\nports = [{TLS_PORT}]\n\n{allow_at}"),
        );
        let carrier_at = "# Calls are accepted only from these sources";
        edit(
            carrier_at,
            &format!("# SIP over TLS on the WAN VIPs (hil-tests/src/pair.rs, PairTls).\n[sip.tls]\nlisten = [\"{WAN_VIP_V4}:{TLS_PORT}\", \"[{WAN_VIP_V6}]:{TLS_PORT}\"]\n\n{carrier_at}"),
        );
        if let Some(pin) = &tls.carrier_pin {
            let media = "media = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]\n";
            edit(media, &format!("{media}tls = {pin}\n"));
        }
    }
    t
}

/// A lab with the carrier, both appliances and the PBX segment.
pub fn new_pair_lab() -> Lab {
    Lab::start_pair(&[Host::Carrier, Host::A, Host::B, Host::Pbx])
        .unwrap_or_else(|e| panic!("lab: {e}"))
}

/// Both appliances started with their pair configs, provisioned, and paired: A makes the
/// pair key (`pair init`), B joins with the secret A printed. Returns once A is active and
/// B standby, each hearing the other.
pub fn start_pair(lab: &Lab) -> (Appliance<'_>, Appliance<'_>) {
    start_pair_tls(lab, None)
}

/// [`start_pair`] with the pair configs' SIP over TLS option ([`pair_toml_with`]).
pub fn start_pair_tls<'l>(lab: &'l Lab, tls: Option<&PairTls>) -> (Appliance<'l>, Appliance<'l>) {
    start_pair_with(lab, |host| {
        let t = pair_toml_with(host, tls);
        assert!(
            t.contains(TEST_TIMING.0),
            "the pair config's timing changed"
        );
        t.replacen(TEST_TIMING.0, TEST_TIMING.1, 1)
    })
}

/// [`start_pair`] with the pair configs as shipped (the benchmark, the demo).
pub fn start_pair_shipped(lab: &Lab) -> (Appliance<'_>, Appliance<'_>) {
    start_pair_with(lab, pair_toml)
}

fn start_pair_with(lab: &Lab, config: impl Fn(Host) -> String) -> (Appliance<'_>, Appliance<'_>) {
    let a = Appliance::start(lab, Host::A, &config(Host::A))
        .unwrap_or_else(|e| panic!("A starts: {e}"));
    let b = Appliance::start(lab, Host::B, &config(Host::B))
        .unwrap_or_else(|e| panic!("B starts: {e}"));
    for x in [&a, &b] {
        assert_eq!(show_pair(x)["state"], "unpaired", "{}", x.log());
    }
    let init = a.cli(&["--json", "pair", "init"]);
    assert!(init.ok(), "pair init: {} {}", init.stdout, init.stderr);
    let secret = init.json()["pairing_secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(secret.len(), 71, "{secret}");
    let join = b.cli_stdin(&["pair", "join"], &format!("{secret}\n"));
    assert!(join.ok(), "pair join: {} {}", join.stdout, join.stderr);
    assert!(
        wait_until(Duration::from_secs(5), || settled(&a, &b)),
        "the pair did not settle: A {} B {}\nA log:\n{}\nB log:\n{}",
        show_pair(&a),
        show_pair(&b),
        a.log(),
        b.log()
    );
    (a, b)
}

/// Whether `active` is the active node and `standby` the standby, each hearing the other.
pub fn settled(active: &Appliance<'_>, standby: &Appliance<'_>) -> bool {
    role(active) == "active"
        && role(standby) == "standby"
        && show_pair(active)["peer_alive"] == true
        && show_pair(standby)["peer_alive"] == true
}

/// `show pair --json`.
pub fn show_pair(a: &Appliance<'_>) -> Value {
    let out = a.cli(&["--json", "show", "pair"]);
    if !out.ok() {
        return Value::Null;
    }
    out.json()
}

/// The role `show pair` reports (`active`, `standby`, `fenced`), or `""`.
pub fn role(a: &Appliance<'_>) -> String {
    show_pair(a)["role"].as_str().unwrap_or_default().to_owned()
}

/// The virtual addresses the appliance's interfaces hold, read from the kernel.
pub fn vips_held(lab: &Lab, host: Host) -> Vec<IpAddr> {
    let out = lab.ns(host).ip(&["-o", "addr", "show"]).unwrap_or_default();
    VIPS.iter()
        .copied()
        .filter(|v| out.contains(&format!(" {v}/")))
        .collect()
}

/// Polls `f` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    crate::poll_until(timeout, Duration::from_millis(10), f)
}
