#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! System test: `covered_many` against a real kernel, inside a throw-away
//! network namespace (`cglk<pid>x<n>`), sets loaded with `nft -f`.
//!
//! Needs root, `ip` and `nft`; fails (saying so) when not root. The
//! root namespace's networking is never touched: only `ip netns add/delete`.

use std::time::Instant;

use callgate_firewall::netlink::{covered_many, dump_intervals, NetlinkError};

mod support;
use support::{big4_ruleset, env_or, spaced_prefixes, v4, v6, NetNs, INTERVAL_SETS, SPACED_BASE};

/// Keys around every boundary of `ranges` (inclusive), plus 0 and `max`:
/// lo - 1, lo, lo + 1, the middle, hi - 1, hi, hi + 1.
fn probes(ranges: &[(u128, u128)], max: u128) -> Vec<u128> {
    let mut keys = vec![0, 1, max - 1, max];
    for &(lo, hi) in ranges {
        keys.extend([
            lo.saturating_sub(1),
            lo,
            (lo + 1).min(max),
            lo + (hi - lo) / 2,
            hi.saturating_sub(1).max(lo),
            hi,
            hi.saturating_add(1).min(max),
        ]);
    }
    keys
}

fn inside(ranges: &[(u128, u128)], key: u128) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= key && key <= hi)
}

/// Looks up the probes of `ranges` in `set` and compares with `ranges`; also
/// checks that the dump agrees (`merged`: what dump_intervals returns).
fn check_set(set: &str, ranges: &[(u128, u128)], merged: &[(u128, u128)], max: u128) {
    let keys = probes(ranges, max);
    let got = covered_many("callgate", set, &keys).unwrap_or_else(|e| panic!("{set}: {e}"));
    assert_eq!(got.len(), keys.len());
    let mut hits = 0;
    for (&key, &covered) in keys.iter().zip(&got) {
        assert_eq!(covered, inside(ranges, key), "{set}: key {key:#x}");
        hits += usize::from(covered);
    }
    assert!(hits > 0 && hits < keys.len(), "{set}: {hits} hits");
    assert_eq!(dump_intervals("callgate", set).unwrap(), merged, "{set}");
}

#[test]
fn looks_up_interval_sets() {
    let ns = NetNs::for_test("lookup_netns", "lk");
    ns.nft_load(INTERVAL_SETS);

    ns.run_inside(|| {
        let s4 = [
            (v4("10.0.0.0"), v4("10.255.255.255")),
            (v4("172.16.0.1"), v4("172.16.0.9")),
            (v4("192.0.2.7"), v4("192.0.2.7")),
            (v4("198.51.100.0"), v4("198.51.100.127")),
            (v4("203.0.113.0"), v4("203.0.113.63")),
            (v4("203.0.113.64"), v4("203.0.113.127")),
            (v4("255.255.255.0"), v4("255.255.255.255")),
        ];
        let mut s4_merged = s4.to_vec();
        s4_merged.splice(4..6, [(v4("203.0.113.0"), v4("203.0.113.127"))]);
        check_set("s4", &s4, &s4_merged, u128::from(u32::MAX));

        let s4zero = [(0, v4("0.0.0.255")), (v4("1.0.0.0"), v4("1.0.0.10"))];
        check_set("s4zero", &s4zero, &s4zero, u128::from(u32::MAX));

        let s6 = [
            (v6("::1"), v6("::1")),
            (
                v6("2001:db8::"),
                v6("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
            ),
            (v6("fe80::1"), v6("fe80::5")),
            (v6("ffff::"), u128::MAX),
        ];
        check_set("s6", &s6, &s6, u128::MAX);

        let sp = [
            (0, 22),
            (5060, 5060),
            (10000, 20000),
            (20001, 20001),
            (65000, 65535),
        ];
        let sp_merged = [(0, 22), (5060, 5060), (10000, 20001), (65000, 65535)];
        check_set("sp", &sp, &sp_merged, 65535);

        // nothing in an empty set; exact matches in a plain (hash) set
        let keys = probes(&[(v4("1.2.3.4"), v4("1.2.3.5"))], u128::from(u32::MAX));
        let got = covered_many("callgate", "empty4", &keys).unwrap();
        assert!(got.iter().all(|&c| !c));
        let hosts = [
            v4("1.2.3.3"),
            v4("1.2.3.4"),
            v4("1.2.3.5"),
            v4("1.2.3.6"),
            v4("5.6.7.8"),
        ];
        assert_eq!(
            covered_many("callgate", "hosts4", &hosts).unwrap(),
            [false, true, true, false, true]
        );
        assert!(covered_many("callgate", "s4", &[]).unwrap().is_empty());

        // errors
        let one = [v4("10.0.0.1")];
        let e = covered_many("callgate", "nosuchset", &one).unwrap_err();
        assert!(
            matches!(&e, NetlinkError::SetMissing { what, .. } if *what == "set does not exist"),
            "{e}"
        );
        eprintln!("missing set: {e}");
        let e = covered_many("callgate", "nosuchset", &[]).unwrap_err();
        assert!(matches!(e, NetlinkError::SetMissing { .. }), "{e}");
        let e = covered_many("other", "s4", &one).unwrap_err();
        assert!(
            matches!(&e, NetlinkError::SetMissing { what, .. } if *what == "set does not exist"),
            "{e}"
        );
        let e = covered_many("nosuchtable", "s4", &one).unwrap_err();
        assert!(
            matches!(&e, NetlinkError::SetMissing { what, .. } if *what == "table does not exist"),
            "{e}"
        );
        assert_eq!(e.errno(), Some(libc::ENOENT));
        let e = covered_many("callgate", "concat", &one).unwrap_err();
        assert!(matches!(e, NetlinkError::UnsupportedSet { .. }), "{e}");
        let e = covered_many("callgate", "sp", &[22, 65536]).unwrap_err();
        assert!(
            matches!(
                e,
                NetlinkError::KeyOutOfRange {
                    index: 1,
                    max: 65535,
                    ..
                }
            ),
            "{e}"
        );
        eprintln!("out of range: {e}");
        let e = covered_many("callgate", "s4", &[v6("2001:db8::1")]).unwrap_err();
        assert!(
            matches!(e, NetlinkError::KeyOutOfRange { index: 0, .. }),
            "{e}"
        );
        let e = covered_many("callgate", "", &one).unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidSetName(_)), "{e}");
    });
}

/// Deterministic pseudo-random numbers (64-bit LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 32) % u64::from(n)) as u32
    }
}

#[test]
fn looks_up_in_100k_prefixes() {
    let ns = NetNs::for_test("lookup_netns", "lk");
    // CGLOOKUP_N / CGLOOKUP_KEYS override the sizes
    let n: u32 = env_or("CGLOOKUP_N", 100_000);
    let lookups: u32 = env_or("CGLOOKUP_KEYS", 2048);
    let base = SPACED_BASE;
    // every other /30 (none adjacent)
    let ruleset = big4_ruleset(&spaced_prefixes(n));

    // half hits (any address of a /30), half misses (the gap after one, or
    // just outside the whole block)
    let mut rng = Lcg(0x5eed);
    let mut keys = Vec::with_capacity(lookups as usize);
    let mut expected = Vec::with_capacity(lookups as usize);
    for j in 0..lookups {
        let hit = j % 2 == 0;
        let key = match (hit, j % 64) {
            (false, 1) => base - 1 - rng.below(1000),
            (false, 3) => base + n * 8 + rng.below(1000),
            _ => base + rng.below(n) * 8 + rng.below(4) + if hit { 0 } else { 4 },
        };
        keys.push(u128::from(key));
        expected.push(hit);
    }

    let t = Instant::now();
    ns.nft_load(&ruleset);
    let load = t.elapsed();

    let (got, first, timed) = ns.run_inside(move || {
        let t = Instant::now();
        let first = covered_many("callgate", "big4", &keys).unwrap();
        let first_time = t.elapsed();
        let t = Instant::now();
        let got = covered_many("callgate", "big4", &keys).unwrap();
        let timed = t.elapsed();
        assert_eq!(first, got);
        (got, first_time, timed)
    });
    assert_eq!(got.len(), expected.len());
    let wrong = got.iter().zip(&expected).filter(|(g, e)| g != e).count();
    assert_eq!(wrong, 0, "{wrong} wrong answers");
    eprintln!(
        "{n} /30 prefixes (nft -f load {load:?}): {lookups} lookups in {timed:?} \
         (first call {first:?})"
    );
}
