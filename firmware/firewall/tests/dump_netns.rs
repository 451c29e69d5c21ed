#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! System test: `dump_intervals` against a real kernel, inside a throw-away
//! network namespace (`cgdump<pid>x<n>`), sets loaded with `nft -f`.
//!
//! Needs root, `ip` and `nft`; fails (saying so) when not root. The
//! root namespace's networking is never touched: only `ip netns add/delete`.

use std::time::Instant;

use callgate_firewall::netlink::{dump_intervals, NetlinkError};

mod support;
use support::{big4_ruleset, env_or, spaced_prefixes, v4, v6, NetNs, INTERVAL_SETS, SPACED_BASE};

#[test]
fn dumps_interval_sets() {
    let ns = NetNs::for_test("dump_netns", "dump");
    ns.nft_load(INTERVAL_SETS);

    ns.run_inside(|| {
        let d =
            |set: &str| dump_intervals("callgate", set).unwrap_or_else(|e| panic!("{set}: {e}"));

        assert_eq!(
            d("s4"),
            [
                (v4("10.0.0.0"), v4("10.255.255.255")),
                (v4("172.16.0.1"), v4("172.16.0.9")),
                (v4("192.0.2.7"), v4("192.0.2.7")),
                (v4("198.51.100.0"), v4("198.51.100.127")),
                // two adjacent /26 merged
                (v4("203.0.113.0"), v4("203.0.113.127")),
                // up to the maximum: the kernel has no end element for it
                (v4("255.255.255.0"), v4("255.255.255.255")),
            ]
        );
        assert_eq!(
            d("s4zero"),
            [(0, v4("0.0.0.255")), (v4("1.0.0.0"), v4("1.0.0.10"))]
        );
        assert_eq!(
            d("s6"),
            [
                (v6("::1"), v6("::1")),
                (
                    v6("2001:db8::"),
                    v6("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")
                ),
                (v6("fe80::1"), v6("fe80::5")),
                (v6("ffff::"), u128::MAX),
            ]
        );
        assert_eq!(
            d("sp"),
            [(0, 22), (5060, 5060), (10000, 20001), (65000, 65535)]
        );
        assert_eq!(d("empty4"), []);
        // not an interval set: points, merged
        assert_eq!(
            d("hosts4"),
            [
                (v4("1.2.3.4"), v4("1.2.3.5")),
                (v4("5.6.7.8"), v4("5.6.7.8"))
            ]
        );

        // errors
        let e = dump_intervals("callgate", "nosuchset").unwrap_err();
        assert!(
            matches!(&e, NetlinkError::SetMissing { what, .. } if *what == "set does not exist"),
            "{e}"
        );
        let e = dump_intervals("other", "s4").unwrap_err();
        assert!(
            matches!(&e, NetlinkError::SetMissing { what, .. } if *what == "set does not exist"),
            "{e}"
        );
        let e = dump_intervals("nosuchtable", "s4").unwrap_err();
        assert!(
            matches!(&e, NetlinkError::SetMissing { what, .. } if *what == "table does not exist"),
            "{e}"
        );
        assert_eq!(e.errno(), Some(libc::ENOENT));
        eprintln!("missing table: {e}");
        let e = dump_intervals("callgate", "concat").unwrap_err();
        assert!(matches!(e, NetlinkError::UnsupportedSet { .. }), "{e}");
        eprintln!("concatenation: {e}");
        let e = dump_intervals("callgate", "").unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidSetName(_)), "{e}");
    });
}

#[test]
fn dumps_100k_prefixes() {
    let ns = NetNs::for_test("dump_netns", "dump");
    // CGDUMP_N overrides the count, to see how the time scales
    let n: u32 = env_or("CGDUMP_N", 100_000);
    // every other /30 (none adjacent)
    let expected: Vec<(u128, u128)> = (0..n)
        .map(|i| SPACED_BASE + i * 8)
        .map(|lo| (u128::from(lo), u128::from(lo + 3)))
        .collect();
    let ruleset = big4_ruleset(&spaced_prefixes(n));

    let t = Instant::now();
    ns.nft_load(&ruleset);
    let load = t.elapsed();
    let t = Instant::now();
    let listed = ns.exec(
        "nft",
        &["-j", "list", "set", "inet", "callgate", "big4"],
        None,
    );
    let list = t.elapsed();
    assert!(listed.contains("100.64.0.0"));

    let (got, dump) = ns.run_inside(|| {
        // once to warm up, then timed
        let first = dump_intervals("callgate", "big4").unwrap();
        let t = Instant::now();
        let got = dump_intervals("callgate", "big4").unwrap();
        let dump = t.elapsed();
        assert_eq!(first, got);
        (got, dump)
    });
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
    eprintln!(
        "{n} /30 prefixes: nft -f load {load:?}, nft -j list set {list:?}, netlink dump {dump:?}"
    );
}
