#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! System test: the read-back verifies what each rule matches, by both paths (the netlink
//! snapshot `Firewall::verify` uses, and `nft -j list` read by `nft::observe`), inside a
//! throw-away network namespace (`cgver<pid>x<n>`). The rendered lab ruleset is applied,
//! then rules are tampered with through `nft replace rule`, keeping their comment and
//! verdict.
//!
//! The firewall thread ([`FirewallHandle`]) reports the same drift on request, next to the
//! counters, and publishes it in its state.
//!
//! Needs root, `ip` and `nft`; fails (saying so) when not root. The root namespace's
//! networking is never touched: only `ip netns add/delete`.

use std::path::Path;

use callgate_config::Config;
use callgate_firewall::netlink::dump_table;
use callgate_firewall::{
    matches, nft, render, Firewall, FirewallError, FirewallHandle, Ruleset, Verification,
};
use serde_json::Value;

mod support;
use support::NetNs;

fn lab() -> Ruleset {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml");
    render(&Config::load(&p).unwrap())
}

/// The differences both read-back paths report for `rs`: (netlink, nft JSON).
fn drift(ns: &NetNs, rs: &Ruleset) -> (Vec<String>, Vec<String>) {
    let rs = rs.clone();
    ns.run_inside(move || {
        let fw = Firewall::default();
        let netlink = match fw.verify(&rs, None) {
            Ok(()) => Vec::new(),
            Err(FirewallError::Mismatch(d)) => d,
            Err(e) => panic!("verify: {e}"),
        };
        let objs = fw.nft.list_table(false).unwrap().unwrap();
        (netlink, nft::diff(&rs, &nft::observe(&objs)))
    })
}

/// The handle of the first rule of `chain` with `comment`.
fn handle(ns: &NetNs, chain: &str, comment: &str) -> String {
    let out = ns.exec(
        "nft",
        &["-j", "-a", "list", "chain", "inet", "callgate", chain],
        None,
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .find(|r| r["comment"] == comment)
        .map(|r| r["handle"].to_string())
        .unwrap_or_else(|| panic!("no rule {comment:?} in {chain}"))
}

/// Replaces the first rule of `chain` with `comment` by `rule` (nft syntax, without the
/// comment, which is kept).
fn replace(ns: &NetNs, chain: &str, comment: &str, rule: &str) {
    let h = handle(ns, chain, comment);
    let cmd =
        format!("replace rule inet callgate {chain} handle {h} {rule} comment \"{comment}\"\n");
    ns.nft_load(&cmd);
}

/// Exactly one difference on each path, naming `chain`, `comment` and each of `what`.
fn assert_one_drift(
    (netlink, json): &(Vec<String>, Vec<String>),
    chain: &str,
    comment: &str,
    what: &[&str],
) {
    for (path, d) in [("netlink", netlink), ("nft -j", json)] {
        assert_eq!(d.len(), 1, "{path}: {d:#?}");
        let text = &d[0];
        assert!(
            text.starts_with(&format!("chain {chain}, rule ")),
            "{path}: {text}"
        );
        assert!(text.contains(&format!("\"{comment}\"")), "{path}: {text}");
        for w in what {
            assert!(text.contains(w), "{path}: {text} lacks {w}");
        }
        eprintln!("{path}: {text}");
    }
}

#[test]
fn verification_reports_a_rule_whose_matches_were_changed() {
    let ns = NetNs::for_test("verify_netns", "ver");
    let rs = lab();
    let rs2 = rs.clone();
    ns.run_inside(move || Firewall::default().apply(&rs2, None).unwrap());
    assert_eq!(drift(&ns, &rs), (vec![], vec![]), "untampered");

    // the source match dropped: same comment, same verdict
    replace(
        &ns,
        "input",
        "carrier-sip-udp",
        "iifname \"wan0\" udp dport @a_carrier_sip_udp_p counter accept",
    );
    assert_one_drift(
        &drift(&ns, &rs),
        "input",
        "carrier-sip-udp",
        &["matches differ", "missing `ip saddr @a_carrier_sip_udp_s4`"],
    );
    // applying again mends it
    let rs2 = rs.clone();
    ns.run_inside(move || Firewall::default().apply(&rs2, None).unwrap());
    assert_eq!(drift(&ns, &rs), (vec![], vec![]), "re-applied");

    // a literal changed: another port, another interface
    replace(
        &ns,
        "input",
        "service:ssh",
        "iifname \"wan0\" tcp dport 2222 counter accept",
    );
    assert_one_drift(
        &drift(&ns, &rs),
        "input",
        "service:ssh",
        &[
            "missing `meta iifname \"mgmt0\"`, `th dport 22`",
            "unexpected `meta iifname \"wan0\"`, `th dport 2222`",
        ],
    );
    let rs2 = rs.clone();
    ns.run_inside(move || Firewall::default().apply(&rs2, None).unwrap());

    // a set looked up by another field, an inverted lookup, a widened ct state
    replace(
        &ns,
        "output",
        "sip-to-carrier",
        "oifname \"wan0\" ip saddr @e_sip_to_carrier_d4 udp dport @e_sip_to_carrier_p counter accept",
    );
    assert_one_drift(
        &drift(&ns, &rs),
        "output",
        "sip-to-carrier",
        &[
            "missing `ip daddr @e_sip_to_carrier_d4`",
            "unexpected `ip saddr @e_sip_to_carrier_d4`",
        ],
    );
    let rs2 = rs.clone();
    ns.run_inside(move || Firewall::default().apply(&rs2, None).unwrap());
    replace(
        &ns,
        "forward",
        "builtin:blocklist",
        "ip saddr != @block4 counter drop",
    );
    assert_one_drift(
        &drift(&ns, &rs),
        "forward",
        "builtin:blocklist",
        &["unexpected `ip saddr != @block4`"],
    );
    let rs2 = rs.clone();
    ns.run_inside(move || Firewall::default().apply(&rs2, None).unwrap());
    replace(
        &ns,
        "forward",
        "builtin:established",
        "ct state established,related,new counter accept",
    );
    assert_one_drift(
        &drift(&ns, &rs),
        "forward",
        "builtin:established",
        &["unexpected `ct state established,related,new`"],
    );
    // a jump that goes elsewhere is a verdict difference
    let rs2 = rs.clone();
    ns.run_inside(move || Firewall::default().apply(&rs2, None).unwrap());
    replace(&ns, "forward", "builtin:allow-dst", "counter accept");
    assert_one_drift(
        &drift(&ns, &rs),
        "forward",
        "builtin:allow-dst",
        &["verdict is \"accept\", expected \"jump allow_dst\""],
    );
}

/// Rules beyond what the renderer writes (literal addresses and prefixes, ranges,
/// interface wildcards, inline sets, inverted matches, raw payloads, other statements):
/// the netlink decoder and the nft JSON reader agree on every one.
const VARIED: &str = r#"
table inet callgate {
    set allow4 { type ipv4_addr; flags interval; elements = { 10.0.0.0/8 } }
    set p4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval, timeout; }
    set plain4 { type ipv4_addr . inet_proto . inet_service; }
    map portmap { type inet_service : verdict; elements = { 7 : drop } }
    chain input {
        type filter hook input priority 0; policy drop;
        ip saddr 192.0.2.1 counter accept comment "address"
        ip saddr 10.0.0.0/8 ip daddr != 192.0.2.0/24 counter accept comment "prefixes"
        ip6 saddr 2001:db8::/32 ip6 daddr 2001:db8::1 counter accept comment "v6"
        tcp dport 1000-2000 counter accept comment "range"
        udp sport != 53 counter accept comment "sport"
        iifname "wan*" counter accept comment "wildcard"
        oifname { "a0", "b0" } counter accept comment "oif set"
        ip saddr { 10.0.0.0/8, 192.0.2.1, 198.51.100.0-198.51.100.9 } counter accept comment "interval set"
        tcp dport { 22, 80 } counter accept comment "port set"
        ip saddr != @allow4 counter drop comment "inverted"
        ct state new counter accept comment "ct new"
        ct state != established counter accept comment "ct not"
        meta l4proto { tcp, udp } th dport 5060 counter accept comment "l4 set"
        meta l4proto icmp icmp type { echo-request, echo-reply } counter accept comment "icmp set"
        ip saddr 10.16.0.0/12 tcp dport != 1000-2000 counter accept comment "masked"
        ip protocol udp counter drop comment "protocol"
        ip6 nexthdr tcp ip6 saddr 2001:db8::/33 counter drop comment "nexthdr"
        ip saddr . ip daddr . meta l4proto . th dport @p4 counter accept comment "pinhole"
        ip daddr . meta l4proto . th dport @plain4 counter accept comment "plain concat"
        th dport vmap @portmap comment "vmap"
        @th,16,16 5060 counter accept comment "raw"
        ip ttl 1 counter drop comment "ttl"
        log prefix "x " counter drop comment "log"
        limit rate 10/second counter accept comment "limit"
    }
}
"#;

#[test]
fn netlink_and_nft_json_read_the_same_matches() {
    let ns = NetNs::for_test("verify_netns", "ver");
    ns.nft_load(VARIED);
    let table = ns.run_inside(|| dump_table("callgate").unwrap().unwrap());
    let out = ns.exec("nft", &["-j", "list", "table", "inet", "callgate"], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    let json: Vec<&Value> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .collect();
    assert_eq!(json.len(), table.rules.len());
    let mut failures = Vec::new();
    for (r, j) in table.rules.iter().zip(&json) {
        assert_eq!(j["comment"], r.comment.as_str());
        let from_kernel = matches::from_kernel(r, &table);
        let from_json = matches::from_json(j["expr"].as_array().unwrap());
        let shown: Vec<String> = from_kernel.iter().map(ToString::to_string).collect();
        eprintln!("{:14} {shown:?}", r.comment);
        if from_kernel != from_json {
            failures.push(format!(
                "{}: netlink {:?} vs json {:?}",
                r.comment,
                shown,
                from_json
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            ));
        }
        assert!(!from_kernel.is_empty(), "{}", r.comment);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_firewall_thread_reports_drift_on_request_and_publishes_it() {
    let ns = NetNs::for_test("verify_netns", "ver");
    let rs = std::sync::Arc::new(lab());
    // The thread inherits the namespace of the thread that spawns it.
    let (fw, join) = ns.run_inside(|| FirewallHandle::spawn(Firewall::default()).unwrap());
    let state = fw.state();
    assert_eq!(state.borrow().verification, Verification::NotYet);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    fw.blocking_apply(rs.clone(), 1).unwrap();
    assert_eq!(state.borrow().verification, Verification::InSync);
    let r = rt.block_on(fw.report()).unwrap();
    assert_eq!((r.generation, r.drift.as_slice()), (Some(1), &[][..]));
    assert!(
        r.entries
            .iter()
            .any(|e| e.chain == "input" && e.name == "carrier-sip-udp" && e.rules == 2),
        "{:#?}",
        r.entries
    );

    // the source match dropped behind the daemon's back
    replace(
        &ns,
        "input",
        "carrier-sip-udp",
        "iifname \"wan0\" udp dport @a_carrier_sip_udp_p counter accept",
    );
    let r = rt.block_on(fw.report()).unwrap();
    assert_eq!(r.drift.len(), 1, "{:#?}", r.drift);
    assert!(
        r.drift[0].contains("chain input")
            && r.drift[0].contains("\"carrier-sip-udp\"")
            && r.drift[0].contains("ip saddr @a_carrier_sip_udp_s4"),
        "{}",
        r.drift[0]
    );
    assert!(
        r.entries.iter().any(|e| e.name == "carrier-sip-udp"),
        "counters are still reported"
    );
    assert_eq!(
        state.borrow().verification,
        Verification::Drift(r.drift.clone()),
        "the report is published"
    );

    // the next apply mends it, and says so
    fw.blocking_apply(rs, 2).unwrap();
    assert_eq!(state.borrow().verification, Verification::InSync);
    let r = rt.block_on(fw.report()).unwrap();
    assert_eq!((r.generation, r.drift.as_slice()), (Some(2), &[][..]));
    drop(fw);
    join.join().unwrap();
}
