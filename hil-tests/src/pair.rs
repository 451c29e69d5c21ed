//! What the pair's system tests share: the lab with both appliances, the pair configs, the
//! pairing itself (through `callgate pair init` / `pair join`, as an engineer does it),
//! and the view of each appliance (`show pair`, the addresses its interfaces hold).
//! Failures panic: these are test helpers.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use crate::addr::{PRIV_VIP_V4, PRIV_VIP_V6, WAN_VIP_V4, WAN_VIP_V6};
use crate::{Appliance, Host, Lab};

/// Every virtual address of the lab pair.
pub const VIPS: [IpAddr; 4] = [
    IpAddr::V4(WAN_VIP_V4),
    IpAddr::V6(WAN_VIP_V6),
    IpAddr::V4(PRIV_VIP_V4),
    IpAddr::V6(PRIV_VIP_V6),
];

/// `config/lab-pair-a.toml` or `-b.toml` as shipped.
pub fn pair_toml(host: Host) -> String {
    let path = match host {
        Host::B => concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab-pair-b.toml"),
        _ => concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab-pair-a.toml"),
    };
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
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
    let a = Appliance::start(lab, Host::A, &pair_toml(Host::A))
        .unwrap_or_else(|e| panic!("A starts: {e}"));
    let b = Appliance::start(lab, Host::B, &pair_toml(Host::B))
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
        wait_until(Duration::from_secs(5), || role(&a) == "active"
            && role(&b) == "standby"
            && show_pair(&a)["peer_alive"] == true
            && show_pair(&b)["peer_alive"] == true),
        "the pair did not settle: A {} B {}\nA log:\n{}\nB log:\n{}",
        show_pair(&a),
        show_pair(&b),
        a.log(),
        b.log()
    );
    (a, b)
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
