#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The apply / read-back / replace cycle against the real kernel, inside a throwaway
//! network namespace (`cgfw<pid>x<n>`; needs root and fails, saying so, without it; the root
//! namespace is never touched).
//!
//! `Firewall` works in the calling thread's network namespace (nft inherits it, the
//! netlink read-back uses it), so every `Firewall` call runs in `NetNs::run_inside`.

use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::path::Path;

use callgate_config::Config;
use callgate_firewall::model::{Cond, RuleDef, Verdict};
use callgate_firewall::netlink::covered_many;
use callgate_firewall::readback::FULL_DUMP_MAX;
use callgate_firewall::{nft, render, Firewall, Ruleset};

mod support;
use support::NetNs;

fn lab_src() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml"))
        .unwrap()
}

fn parse(src: &str) -> Config {
    Config::parse(src, Path::new("lab.toml")).unwrap()
}

fn render_src(src: &str) -> Ruleset {
    render(&parse(src))
}

#[test]
fn apply_verify_replace_keeps_pinhole_sets() {
    let ns = NetNs::for_test("apply_netns", "fw");
    let rs = render_src(&lab_src());
    // Remove one entry and one prefix of another, for the replace below.
    let src2 = lab_src()
        .replace(
            "sources = [\"203.0.113.0/28\"]",
            "sources = [\"203.0.113.0/29\"]",
        )
        .replace("name = \"mgmt-api\"", "name = \"mgmt-api2\"");
    assert_ne!(src2, lab_src(), "the replacements apply to config/lab.toml");
    let rs2 = render_src(&src2);

    let first = rs.clone();
    ns.run_inside(move || {
        let fw = Firewall::default();
        fw.apply(&first, None).unwrap();
        fw.verify(&first, None).unwrap();
    });

    // A run-time pinhole element, written as the SIP router would.
    ns.exec(
        "nft",
        &[
            "add",
            "element",
            "inet",
            "callgate",
            "pinhole4",
            "{ 203.0.113.16/28 . 198.51.100.10 . udp . 40000 timeout 60s }",
        ],
        None,
    );
    ns.exec(
        "nft",
        &[
            "add",
            "element",
            "inet",
            "callgate",
            "pinhole4_host",
            "{ 203.0.113.20 . 198.51.100.10 . udp . 40000 timeout 60s }",
        ],
        None,
    );

    let counters = ns.run_inside(move || {
        let fw = Firewall::default();
        fw.apply(&rs2, Some(&rs)).unwrap();
        let objs = fw.nft.list_table(false).unwrap().unwrap();
        let o = nft::observe(&objs);
        assert!(!o.sets.contains_key("a_mgmt_api_p"), "stale set removed");
        assert!(o.sets.contains_key("a_mgmt_api2_p"));
        let ping = &o.elems["a_carrier_ping_s4"];
        assert_eq!(ping.len(), 1);
        assert_eq!(ping[0].1 - ping[0].0, 7, "the /28 became a /29: {ping:?}");
        // the previous ruleset no longer verifies; the new one does
        assert!(fw.verify(&rs, None).is_err());
        fw.verify(&rs2, Some(&rs)).unwrap();
        fw.counters().unwrap()
    });

    // run-time set contents survive a commit
    let pin = ns.exec(
        "nft",
        &["list", "set", "inet", "callgate", "pinhole4"],
        None,
    );
    assert!(pin.contains("203.0.113.16/28 . 198.51.100.10"), "{pin}");
    let pin = ns.exec(
        "nft",
        &["list", "set", "inet", "callgate", "pinhole4_host"],
        None,
    );
    assert!(pin.contains("203.0.113.20 . 198.51.100.10"), "{pin}");

    assert!(counters
        .iter()
        .any(|c| c.name == "carrier-sip-udp" && c.rules == 2));
}

/// A table from before pinholes had a source (pinhole sets keyed by destination only, a
/// pinhole rule in the input chain too): the apply re-creates the pinhole sets in their new
/// shape, keeps the blocklist's entries, and the result verifies.
#[test]
fn apply_reshapes_pinhole_sets_of_an_older_ruleset() {
    let ns = NetNs::for_test("apply_netns", "fw");
    ns.nft_load(
        "table inet callgate {
            set pinhole4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }
            set pinhole6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }
            set block4 { type ipv4_addr; flags timeout; }
            set block6 { type ipv6_addr; flags timeout; }
            chain input {
                type filter hook input priority 0; policy drop;
                ip daddr . meta l4proto . th dport @pinhole4 counter accept comment \"builtin:pinhole\"
            }
            chain forward {
                type filter hook forward priority 0; policy drop;
                ip6 daddr . meta l4proto . th dport @pinhole6 counter accept comment \"builtin:pinhole\"
            }
        }
        add element inet callgate pinhole4 { 198.51.100.10 . udp . 40000 timeout 60s }
        add element inet callgate block4 { 203.0.113.66 timeout 60s }",
    );
    let rs = render_src(&lab_src());
    ns.run_inside(move || {
        let fw = Firewall::default();
        let before = fw.verify(&rs, None).unwrap_err().to_string();
        assert!(before.contains("set pinhole4 has type"), "{before}");
        fw.apply(&rs, None).unwrap();
        fw.verify(&rs, None).unwrap();
    });
    let pin = ns.exec(
        "nft",
        &["list", "set", "inet", "callgate", "pinhole4"],
        None,
    );
    assert!(
        pin.contains("ipv4_addr . ipv4_addr . inet_proto . inet_service"),
        "{pin}"
    );
    assert!(
        !pin.contains("198.51.100.10"),
        "old elements are gone: {pin}"
    );
    let block = ns.exec("nft", &["list", "set", "inet", "callgate", "block4"], None);
    assert!(block.contains("203.0.113.66"), "{block}");
}

/// A table of the layout before the hash pinhole sets (every pinhole in the interval sets
/// `pinhole4` / `pinhole6`), holding pinholes of calls in progress: the apply adds the hash
/// sets and moves every one-address pinhole there with the time it had left, prefixes stay,
/// nothing is lost, the result verifies, and a moved pinhole closes.
#[test]
fn apply_moves_one_address_pinholes_of_an_older_ruleset_to_the_hash_sets() {
    let ns = NetNs::for_test("apply_netns", "fw");
    let mut old = String::from(
        "table inet callgate {
            set pinhole4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval, timeout; }
            set pinhole6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval, timeout; }
            set block4 { type ipv4_addr; flags timeout; }
            set block6 { type ipv6_addr; flags timeout; }
            chain forward {
                type filter hook forward priority 0; policy drop;
                ip saddr . ip daddr . meta l4proto . th dport @pinhole4 counter accept comment \"builtin:pinhole\"
                ip6 saddr . ip6 daddr . meta l4proto . th dport @pinhole6 counter accept comment \"builtin:pinhole\"
            }
        }
        add element inet callgate pinhole4 { 203.0.113.0/28 . 198.51.100.10 . udp . 40002 timeout 600s }
        add element inet callgate pinhole6 { 2001:db8:1::20 . 2001:db8:2::10 . udp . 40000 timeout 30s }
        add element inet callgate pinhole6 { 2001:db8:1::/64 . 2001:db8:2::10 . udp . 40002 timeout 600s }
",
    );
    // more than one move batch (16) of one-address pinholes
    for i in 0..150u16 {
        writeln!(
            old,
            "add element inet callgate pinhole4 {{ 203.0.113.20 . 198.51.100.10 . udp . {} timeout 600s }}",
            10_000 + i
        )
        .unwrap();
    }
    ns.nft_load(&old);
    let rs = render_src(&lab_src());
    ns.run_inside(move || {
        let fw = Firewall::default();
        fw.apply(&rs, None).unwrap();
        fw.verify(&rs, None).unwrap();
        // a moved pinhole closes by the writer
        let mut w = callgate_firewall::SetWriter::open("callgate").unwrap();
        w.close_pinhole(callgate_firewall::Pinhole {
            src: "203.0.113.20/32".parse().unwrap(),
            dst: "198.51.100.10".parse().unwrap(),
            proto: callgate_firewall::PinholeProto::Udp,
            port: 10_149,
        })
        .unwrap();
    });
    let list = |set: &str| ns.exec("nft", &["list", "set", "inet", "callgate", set], None);
    let (p4h, p4, p6h, p6) = (
        list("pinhole4_host"),
        list("pinhole4"),
        list("pinhole6_host"),
        list("pinhole6"),
    );
    assert!(
        p4h.contains("flags timeout") && !p4h.contains("interval"),
        "{p4h}"
    );
    assert_eq!(
        p4h.matches("203.0.113.20 . 198.51.100.10 . udp").count(),
        149,
        "{p4h}"
    );
    assert!(p4h.contains("udp . 10000 timeout"), "{p4h}");
    assert!(!p4h.contains("udp . 10149 "), "closed: {p4h}");
    // the time left is kept: 600 s pinholes get at most 600 s, 30 s ones at most 30 s
    assert!(
        !p4h.contains("timeout 10m") || p4h.contains("expires 9m"),
        "{p4h}"
    );
    assert!(
        p4.contains("203.0.113.0/28 . 198.51.100.10 . udp . 40002"),
        "{p4}"
    );
    assert!(!p4.contains("203.0.113.20"), "moved away: {p4}");
    assert!(
        p6h.contains("2001:db8:1::20 . 2001:db8:2::10 . udp . 40000 timeout 3")
            || p6h.contains("2001:db8:1::20 . 2001:db8:2::10 . udp . 40000 timeout 29s")
            || p6h.contains("2001:db8:1::20 . 2001:db8:2::10 . udp . 40000 timeout 2"),
        "{p6h}"
    );
    assert!(
        p6.contains("2001:db8:1::/64 . 2001:db8:2::10 . udp . 40002"),
        "{p6}"
    );
    assert!(!p6.contains("2001:db8:1::20 "), "moved away: {p6}");
}

#[test]
fn a_failing_transaction_changes_nothing_and_reports_nft_text() {
    let ns = NetNs::for_test("apply_netns", "fw");
    let rs = render_src(&lab_src());
    let mut bad = rs.clone();
    bad.chains[0].rules.insert(
        0,
        RuleDef {
            comment: "broken".into(),
            conds: vec![Cond::DportIn("no_such_set".into())],
            verdict: Verdict::Accept,
        },
    );
    let (before, err, after) = ns.run_inside(move || {
        let fw = Firewall::default();
        fw.apply(&rs, None).unwrap();
        let before = fw.nft.list_table(false).unwrap();
        let err = fw.apply(&bad, Some(&rs)).unwrap_err().to_string();
        let after = fw.nft.list_table(false).unwrap();
        // the kernel still holds the good ruleset, by the netlink read-back too
        fw.verify(&rs, None).unwrap();
        (before, err, after)
    });
    assert!(
        err.contains("no_such_set") || err.contains("No such file"),
        "{err}"
    );
    assert!(before.is_some());
    assert_eq!(before, after);
}

/// Number of /64 sources in the large entry, and how many of them the replace removes.
const BIG: u32 = 20_000;
const REMOVED: u32 = 1_000;

/// The `i`-th /64 of the large entry: every other /64 of 2001:db8:10::/48 (none adjacent).
fn big_prefix(i: u32) -> String {
    let i = u16::try_from(i * 2).unwrap();
    format!("{}/64", Ipv6Addr::new(0x2001, 0xdb8, 0x10, i, 0, 0, 0, 0))
}

/// Removed by the replace: every 20th prefix (1000 of 20 000).
fn is_removed(i: u32) -> bool {
    i % (BIG / REMOVED) == 7
}

/// config/lab.toml plus an allow entry with the given /64 sources.
fn lab_with_big_entry(keep: impl Fn(u32) -> bool) -> String {
    let mut src = lab_src();
    src.push_str("\n[[allow]]\nname = \"bulk-v6\"\nzone = \"wan\"\nsources = [\n");
    for i in (0..BIG).filter(|&i| keep(i)) {
        writeln!(src, "  \"{}\",", big_prefix(i)).unwrap();
    }
    src.push_str("]\nprotocol = \"udp\"\nports = [5060]\n");
    src
}

fn prefix_start(p: &str) -> u128 {
    let addr = p.split('/').next().unwrap();
    u128::from(addr.parse::<Ipv6Addr>().unwrap())
}

#[test]
fn replacing_a_large_set_removes_prefixes_and_verify_catches_leftovers() {
    let ns = NetNs::for_test("apply_netns", "fw");
    const SET: &str = "a_bulk_v6_s6";
    let old = render_src(&lab_with_big_entry(|_| true));
    let new = render_src(&lab_with_big_entry(|i| !is_removed(i)));
    assert_eq!(old.set(SET).unwrap().elems.len(), BIG as usize);
    let kept = (BIG - REMOVED) as usize;
    assert_eq!(new.set(SET).unwrap().elems.len(), kept);
    // large enough for the sampled read-back, not the full dump
    assert!(kept > FULL_DUMP_MAX);

    let (old2, new2) = (old.clone(), new.clone());
    ns.run_inside(move || {
        let fw = Firewall::default();
        let r = fw.apply(&old2, None).unwrap();
        eprintln!("apply {BIG} /64: {r:?}");
        let r = fw.apply(&new2, Some(&old2)).unwrap();
        eprintln!("replace, {REMOVED} removed: {r:?}");
        fw.verify(&new2, Some(&old2)).unwrap();

        // independently of the read-back: every removed prefix is gone, every kept one is
        // there (first and last address)
        let mut keys = Vec::new();
        let mut expect = Vec::new();
        for i in 0..BIG {
            let lo = prefix_start(&big_prefix(i));
            keys.extend([lo, lo + u128::from(u64::MAX)]);
            expect.extend([!is_removed(i); 2]);
        }
        let got = covered_many("callgate", SET, &keys).unwrap();
        let wrong = got.iter().zip(&expect).filter(|(g, e)| g != e).count();
        assert_eq!(wrong, 0, "{wrong} of {} lookups wrong", keys.len());
    });

    // Sabotage: one removed prefix back in the kernel's set.
    let back = big_prefix(7);
    assert!(is_removed(7));
    let elem = format!("{{ {back} }}");
    ns.exec(
        "nft",
        &["add", "element", "inet", "callgate", SET, &elem],
        None,
    );
    let (old2, new2) = (old.clone(), new.clone());
    let err = ns.run_inside(move || {
        Firewall::default()
            .verify(&new2, Some(&old2))
            .unwrap_err()
            .to_string()
    });
    eprintln!("removed prefix {back} back: {err}");
    assert!(err.contains(SET), "{err}");

    // Taken out again, the table verifies again.
    ns.exec(
        "nft",
        &["delete", "element", "inet", "callgate", SET, &elem],
        None,
    );
    let (old2, new2) = (old.clone(), new.clone());
    ns.run_inside(move || Firewall::default().verify(&new2, Some(&old2)).unwrap());

    // A small set (full dump): an address in a gap that no config ever had.
    ns.exec(
        "nft",
        &[
            "add",
            "element",
            "inet",
            "callgate",
            "a_carrier_sip_udp_s4",
            "{ 203.0.113.99 }",
        ],
        None,
    );
    let err = ns.run_inside(move || {
        Firewall::default()
            .verify(&new, Some(&old))
            .unwrap_err()
            .to_string()
    });
    eprintln!("203.0.113.99 added: {err}");
    assert!(err.contains("a_carrier_sip_udp_s4"), "{err}");
    assert!(!err.contains(SET), "{err}");
}
