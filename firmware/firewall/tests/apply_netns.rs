#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The apply / read-back / replace cycle against the real kernel, inside a throwaway
//! network namespace (root needed; the root namespace is never touched).

use std::path::Path;
use std::process::Command;

use callgate_config::Config;
use callgate_firewall::{nft, render, Firewall, Nft};

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("cgfw{}x{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn lab_src() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml"))
        .unwrap()
}

fn parse(src: &str) -> Config {
    Config::parse(src, Path::new("lab.toml")).unwrap()
}

#[test]
fn apply_verify_replace_keeps_pinhole_sets() {
    let ns = Netns::new("a");
    let fw = Firewall::new(Nft::in_netns(&ns.0));
    let cfg = parse(&lab_src());
    let rs = render(&cfg);
    fw.apply(&rs).unwrap();
    fw.verify(&rs).unwrap();

    // A run-time pinhole element, written as the SIP router would.
    let st = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "nft",
            "add",
            "element",
            "inet",
            "callgate",
            "pinhole4",
            "{ 198.51.100.10 . udp . 40000 timeout 60s }",
        ])
        .status()
        .unwrap();
    assert!(st.success());

    // Remove one entry and one prefix of another, then replace.
    let src = lab_src()
        .replace(
            "sources = [\"203.0.113.0/28\"]",
            "sources = [\"203.0.113.0/29\"]",
        )
        .replace("name = \"mgmt-api\"", "name = \"mgmt-api2\"");
    let rs2 = render(&parse(&src));
    fw.apply(&rs2).unwrap();
    let objs = fw.nft.list_table(false).unwrap().unwrap();
    let o = nft::observe(&objs);
    assert!(!o.sets.contains_key("a_mgmt_api_p"), "stale set removed");
    assert!(o.sets.contains_key("a_mgmt_api2_p"));
    let ping = &o.elems["a_carrier_ping_s4"];
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].1 - ping[0].0, 7, "the /28 became a /29: {ping:?}");
    // the previous ruleset no longer verifies; the new one does
    assert!(fw.verify(&rs).is_err());
    fw.verify(&rs2).unwrap();
    // run-time set contents survive a commit
    let pin = Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "nft", "list", "set", "inet", "callgate", "pinhole4",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&pin.stdout).contains("198.51.100.10"));

    let counters = fw.counters().unwrap();
    assert!(counters
        .iter()
        .any(|c| c.name == "carrier-sip-udp" && c.rules == 2));
}

#[test]
fn a_failing_transaction_changes_nothing_and_reports_nft_text() {
    let ns = Netns::new("b");
    let fw = Firewall::new(Nft::in_netns(&ns.0));
    let rs = render(&parse(&lab_src()));
    fw.apply(&rs).unwrap();
    let before = fw.nft.list_table(false).unwrap();
    let mut bad = rs.clone();
    bad.chains[0].rules.insert(
        0,
        callgate_firewall::model::RuleDef {
            comment: "broken".into(),
            conds: vec![callgate_firewall::model::Cond::DportIn(
                "no_such_set".into(),
            )],
            verdict: callgate_firewall::model::Verdict::Accept,
        },
    );
    let err = fw.apply(&bad).unwrap_err().to_string();
    assert!(
        err.contains("no_such_set") || err.contains("No such file"),
        "{err}"
    );
    let after = fw.nft.list_table(false).unwrap();
    assert_eq!(before, after);
}
