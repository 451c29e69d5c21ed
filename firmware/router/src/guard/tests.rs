use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

/// Fixed xorshift64: deterministic "random" sequences.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------- Admission

#[test]
fn cps_cap_is_exact_over_simulated_seconds() {
    let mut a = Admission::new(100, u32::MAX, Millis(0));
    let mut per_second = [0u32; 10];
    // Offer a call every millisecond for 10 s, releasing at once (only CPS limits).
    for t in 0..10_000u64 {
        if let Ok(p) = a.try_admit(Millis(t)) {
            per_second[(t / 1000) as usize] += 1;
            a.release(p);
        }
    }
    // Second 0: the burst (100) plus what refills within it (99 over 999 ms, integer).
    assert_eq!(per_second[0], 100 + 99);
    // Afterwards exactly max_cps per second.
    for (s, n) in per_second.iter().enumerate().skip(1) {
        assert_eq!(*n, 100, "second {s}");
    }
    // Total at t = 10 000 inclusive is exactly burst + rate * 10.
    let mut total: u32 = per_second.iter().sum();
    if let Ok(p) = a.try_admit(Millis(10_000)) {
        total += 1;
        a.release(p);
    }
    assert_eq!(total, 100 + 100 * 10);
}

#[test]
fn burst_then_shed_with_retry_after() {
    let mut a = Admission::new(10, 1000, Millis(5_000));
    let permits: Vec<CallPermit> = (0..10)
        .map(|_| a.try_admit(Millis(5_000)).unwrap())
        .collect();
    let shed = a.try_admit(Millis(5_000)).unwrap_err();
    assert_eq!(shed.reason, ShedReason::Cps);
    assert_eq!(shed.retry_after_secs, 1);
    // One token refills every 100 ms at 10 CPS.
    assert!(a.try_admit(Millis(5_099)).is_err());
    let p = a.try_admit(Millis(5_100)).unwrap();
    assert!(a.try_admit(Millis(5_100)).is_err());
    // After a long idle period the bucket holds only `burst`, not more.
    for p in permits.into_iter().chain([p]) {
        a.release(p);
    }
    let mut n = 0;
    while a.try_admit(Millis(60_000)).is_ok() {
        n += 1;
    }
    assert_eq!(n, 10);
}

#[test]
fn concurrency_cap_and_release() {
    let mut a = Admission::new(1000, 3, Millis(0));
    let p1 = a.try_admit(Millis(0)).unwrap();
    let p2 = a.try_admit(Millis(0)).unwrap();
    let p3 = a.try_admit(Millis(0)).unwrap();
    assert_eq!(a.active(), 3);
    let shed = a.try_admit(Millis(0)).unwrap_err();
    assert_eq!(shed.reason, ShedReason::Concurrency);
    assert_eq!(shed.retry_after_secs, FULL_RETRY_AFTER_SECS);
    a.release(p2);
    assert_eq!(a.active(), 2);
    let p4 = a.try_admit(Millis(0)).unwrap();
    assert!(a.try_admit(Millis(0)).is_err());
    for p in [p1, p3, p4] {
        a.release(p);
    }
    assert_eq!(a.active(), 0);
    // Sheds for concurrency used no CPS tokens: 4 of the 1000 taken, so 3 more fit now.
    let held: Vec<CallPermit> = (0..3).map(|_| a.try_admit(Millis(0)).unwrap()).collect();
    assert_eq!(a.active(), 3);
    for p in held {
        a.release(p);
    }
}

#[test]
fn zero_limits_do_not_panic() {
    let mut a = Admission::new(0, 0, Millis(0));
    assert_eq!(a.max_cps(), 1);
    assert_eq!(
        a.try_admit(Millis(0)).unwrap_err().reason,
        ShedReason::Concurrency
    );
    let mut a = Admission::new(0, 10, Millis(0));
    let _p = a.try_admit(Millis(0)).unwrap();
    let shed = a.try_admit(Millis(0)).unwrap_err();
    assert_eq!(shed.retry_after_secs, 1);
}

#[test]
fn clock_going_backwards_refills_nothing() {
    let mut a = Admission::new(1, 10, Millis(10_000));
    let _p = a.try_admit(Millis(10_000)).unwrap();
    assert!(a.try_admit(Millis(0)).is_err());
    assert!(a.try_admit(Millis(10_999)).is_err());
    assert!(a.try_admit(Millis(11_000)).is_ok());
}

// ---------------------------------------------------------------- FloodGuard

fn small_cfg() -> FloodConfig {
    FloodConfig {
        rate_per_sec: 10,
        burst: 20,
        max_dialogs_per_source: 5,
        violations_to_block: 20,
        violation_window_ms: 10_000,
        block_ttl_secs: 60,
        max_sources: 1000,
        ..FloodConfig::default()
    }
}

#[test]
fn flooder_blocked_once_legit_source_untouched() {
    let mut g = FloodGuard::new(small_cfg());
    let legit = ip(0x0a00_0001);
    let flooder = ip(0xc633_6401);
    let (mut blocks, mut flooder_allowed, mut drops_after_block) = (0, 0, 0);
    let mut blocked_at = None;
    // 30 s: the legit source sends 2 requests/s (a new dialog every second, ended at once);
    // the flooder sends 500/s (50× the per-source rate).
    for t in 0..30_000u64 {
        let now = Millis(t);
        if t % 500 == 0 {
            let new = t % 1000 == 0;
            assert_eq!(
                g.check(now, legit, Some("Carrier SBC 1.0")),
                Verdict::Allow,
                "legit at {t}"
            );
            if new {
                assert!(g.open_dialog(now, legit));
                g.dialog_ended(legit);
            }
        }
        if t % 2 == 0 {
            match g.check(now, flooder, None) {
                Verdict::Allow => flooder_allowed += 1,
                Verdict::Block { ttl_secs } => {
                    assert_eq!(ttl_secs, 60);
                    blocks += 1;
                    blocked_at = Some(t);
                }
                Verdict::Drop => {
                    if blocked_at.is_some() {
                        drops_after_block += 1;
                    }
                }
            }
        }
    }
    assert_eq!(blocks, 1);
    // Burst (20) then 19 over-rate requests until the 20th violation blocks it.
    assert_eq!(blocked_at, Some(2 * (20 + 19)));
    assert_eq!(flooder_allowed, 20);
    assert!(drops_after_block > 14_000);
    // After the TTL the source is judged afresh (full bucket).
    assert_eq!(
        g.check(Millis(2 * 39 + 60_000), flooder, None),
        Verdict::Allow
    );
}

#[test]
fn scanner_user_agents_dropped_regardless_of_rate() {
    let mut g = FloodGuard::new(small_cfg());
    for ua in [
        "friendly-scanner",
        "SIPVicious 0.3.4",
        "sipcli/v1.8",
        "Sip-Scan",
        "sundayddr",
        "iWar",
        "sipsak 0.9.8",
        "FRIENDLY-SCANNER",
    ] {
        let src = ip(0x0101_0101);
        let mut g2 = FloodGuard::new(small_cfg());
        // The very first request, with a full bucket.
        assert_eq!(g2.check(Millis(0), src, Some(ua)), Verdict::Drop, "{ua}");
        assert_eq!(g2.dialogs(src), 0);
        assert!(g.is_scanner(ua), "{ua}");
    }
    for ua in ["Asterisk PBX 20.1", "Linphone/5", "Ooma", ""] {
        assert!(!g.is_scanner(ua), "{ua}");
    }
    // A scanner that keeps going is blocked after violations_to_block requests.
    let src = ip(0x0202_0202);
    for i in 0..19 {
        assert_eq!(
            g.check(Millis(i * 1000), src, Some("friendly-scanner")),
            Verdict::Drop
        );
    }
    assert_eq!(
        g.check(Millis(19_000), src, Some("friendly-scanner")),
        Verdict::Drop,
        "violations spread over more than the window restart the count"
    );
    let mut g = FloodGuard::new(small_cfg());
    let verdicts: Vec<Verdict> = (0..25)
        .map(|i| g.check(Millis(i), src, Some("sipvicious")))
        .collect();
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Block { .. }))
            .count(),
        1
    );
    assert_eq!(verdicts[19], Verdict::Block { ttl_secs: 60 });
}

#[test]
fn dialog_cap_per_source_answers_503() {
    let mut g = FloodGuard::new(small_cfg());
    let src = ip(7);
    for _ in 0..5 {
        assert!(g.open_dialog(Millis(0), src));
    }
    assert!(!g.open_dialog(Millis(0), src), "the sixth is over the cap");
    // In-dialog requests still pass.
    assert_eq!(g.check(Millis(0), src, None), Verdict::Allow);
    g.dialog_ended(src);
    assert_eq!(g.dialogs(src), 4);
    assert!(g.open_dialog(Millis(0), src));
    // Another source has its own cap.
    assert!(g.open_dialog(Millis(0), ip(8)));
    // Ending a dialog of an unknown source is a no-op.
    g.dialog_ended(ip(9));
    assert_eq!(g.dialogs(ip(9)), 0);
}

#[test]
fn never_block_sources_are_limited_but_not_blocked() {
    let mut cfg = small_cfg();
    cfg.never_block = vec!["192.0.2.0/24".parse().unwrap()];
    let mut g = FloodGuard::new(cfg);
    let carrier = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    let mut allowed = 0;
    for i in 0..1000 {
        match g.check(Millis(i), carrier, None) {
            Verdict::Allow => allowed += 1,
            Verdict::Drop => {}
            v => panic!("unexpected {v:?}"),
        }
    }
    // Burst 20 + 10/s over ~1 s.
    assert_eq!(allowed, 20 + 9);
}

#[test]
fn sources_with_limits_of_their_own_use_them_and_scanners_are_dropped_from_anyone() {
    let mut cfg = small_cfg();
    let trunk: IpNet = "192.0.2.0/24".parse().unwrap();
    cfg.never_block = vec![trunk];
    cfg.limits = vec![(
        trunk,
        SourceLimits {
            rate_per_sec: 100,
            burst: 50,
            max_dialogs: 2,
        },
    )];
    let mut g = FloodGuard::new(cfg);
    let carrier = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    // Its own burst (50), not the default one (20); never a block.
    let verdicts: Vec<Verdict> = (0..1000)
        .map(|_| g.check(Millis(0), carrier, None))
        .collect();
    assert_eq!(
        verdicts.iter().filter(|v| **v == Verdict::Allow).count(),
        50
    );
    assert!(verdicts
        .iter()
        .all(|v| *v != Verdict::Block { ttl_secs: 60 }));
    // Its own dialog cap.
    assert!(g.open_dialog(Millis(0), carrier));
    assert!(g.open_dialog(Millis(0), carrier));
    assert!(!g.open_dialog(Millis(0), carrier));
    // A scanner User-Agent is dropped from a carrier too (with a full bucket).
    let mut g = FloodGuard::new(g.config().clone());
    assert_eq!(
        g.check(Millis(0), carrier, Some("friendly-scanner")),
        Verdict::Drop
    );
}

#[test]
fn ipv4_mapped_ipv6_is_the_same_source() {
    let mut g = FloodGuard::new(small_cfg());
    let v4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
    let mapped = IpAddr::V6(Ipv4Addr::new(203, 0, 113, 5).to_ipv6_mapped());
    assert_eq!(g.check(Millis(0), v4, None), Verdict::Allow);
    assert!(g.open_dialog(Millis(0), v4));
    assert_eq!(g.dialogs(mapped), 1);
    g.dialog_ended(mapped);
    assert_eq!(g.dialogs(v4), 0);
    assert_eq!(g.tracked(), 1);
}

#[test]
fn max_sources_bounds_memory_under_spoofed_flood() {
    let mut cfg = small_cfg();
    cfg.max_sources = 4096;
    let mut g = FloodGuard::new(cfg);
    let legit = ip(0x0a00_0001);
    for i in 0..1_000_000u32 {
        let now = Millis(u64::from(i / 100));
        let src = if i % 2 == 0 {
            ip(0x8000_0000 | i)
        } else {
            IpAddr::V6(Ipv6Addr::from(u128::from(i) | (0x2001_0db8 << 96)))
        };
        g.check(now, src, None);
        if i % 3 == 0 {
            g.open_dialog(now, src);
        }
        assert!(g.tracked() <= 4096);
        if i % 100_000 == 0 {
            // A source seen recently is still tracked.
            g.check(now, legit, None);
            assert!(g.open_dialog(now, legit));
            assert_eq!(g.dialogs(legit), 1);
            g.dialog_ended(legit);
        }
    }
    assert_eq!(g.tracked(), 4096);
}

#[test]
fn lru_evicts_least_recently_seen() {
    let mut cfg = small_cfg();
    cfg.max_sources = 3;
    let mut g = FloodGuard::new(cfg);
    for n in 1..=3 {
        g.open_dialog(Millis(0), ip(n));
    }
    // Touch 1 so that 2 is the least recently seen.
    g.check(Millis(1), ip(1), None);
    g.open_dialog(Millis(2), ip(4));
    assert_eq!(g.tracked(), 3);
    assert_eq!(g.dialogs(ip(1)), 1);
    assert_eq!(g.dialogs(ip(2)), 0, "evicted");
    assert_eq!(g.dialogs(ip(3)), 1);
    assert_eq!(g.dialogs(ip(4)), 1);
}

// ---------------------------------------------------------------- LogLimiter

#[test]
fn log_limiter_counts_suppressed_lines() {
    let mut l = LogLimiter::new(2, 1000, 16);
    assert_eq!(l.allow(Millis(0), &"drop"), Some(0));
    assert_eq!(l.allow(Millis(1), &"drop"), Some(0));
    for t in 2..7 {
        assert_eq!(l.allow(Millis(t), &"drop"), None);
    }
    // Another key is independent.
    assert_eq!(l.allow(Millis(7), &"block"), Some(0));
    // Next interval: the first line carries the 5 suppressed ones.
    assert_eq!(l.allow(Millis(1000), &"drop"), Some(5));
    assert_eq!(l.allow(Millis(1001), &"drop"), Some(0));
    assert_eq!(l.allow(Millis(1002), &"drop"), None);
    assert_eq!(l.allow(Millis(2000), &"drop"), Some(1));
}

#[test]
fn log_limiter_bounds_keys() {
    let mut l = LogLimiter::new(1, 1000, 100);
    let mut let_through = 0;
    for i in 0..100_000u32 {
        if l.allow(Millis(0), &ip(i)).is_some() {
            let_through += 1;
        }
        assert!(l.tracked() <= 100);
    }
    // 100 keys plus one shared overflow line.
    assert_eq!(let_through, 101);
    // After the interval, stale keys are swept and new keys get slots again.
    assert_eq!(l.allow(Millis(1000), &ip(1_000_000)), Some(0));
    assert_eq!(l.tracked(), 1);
}

// ---------------------------------------------------------------- property-style

#[test]
fn random_event_sequences_keep_invariants() {
    for seed in 1..=20u64 {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ seed);
        let max_cps = 1 + rng.below(50) as u32;
        let max_calls = rng.below(40) as u32;
        let mut a = Admission::new(max_cps, max_calls, Millis(0));
        let cfg = FloodConfig {
            rate_per_sec: rng.below(20) as u32,
            burst: rng.below(30) as u32,
            max_dialogs_per_source: rng.below(5) as u32,
            violations_to_block: rng.below(10) as u32,
            violation_window_ms: rng.below(5000),
            block_ttl_secs: rng.below(10) as u32,
            max_sources: rng.below(16) as usize,
            ..FloodConfig::default()
        };
        let max_sources = cfg.max_sources.max(1);
        let mut g = FloodGuard::new(cfg);
        let mut l = LogLimiter::new(rng.below(4) as u32, rng.below(2000), 8);
        let mut permits: Vec<CallPermit> = Vec::new();
        let mut now = 0u64;
        let mut admitted_at: Vec<u64> = Vec::new();
        for _ in 0..20_000 {
            now += rng.below(30);
            let t = Millis(now);
            match rng.below(6) {
                0 | 1 => {
                    if let Ok(p) = a.try_admit(t) {
                        permits.push(p);
                        admitted_at.push(now);
                    }
                }
                2 => {
                    if !permits.is_empty() {
                        let i = rng.below(permits.len() as u64) as usize;
                        a.release(permits.swap_remove(i));
                    }
                }
                3 => {
                    let src = ip(rng.below(40) as u32);
                    let ua = match rng.below(4) {
                        0 => Some("friendly-scanner"),
                        1 => Some("Asterisk"),
                        _ => None,
                    };
                    if g.check(t, src, ua) == Verdict::Allow && rng.below(2) == 0 {
                        g.open_dialog(t, src);
                    }
                }
                4 => g.dialog_ended(ip(rng.below(40) as u32)),
                _ => {
                    let _ = l.allow(t, &rng.below(20));
                }
            }
            assert!(a.active() <= max_calls);
            assert_eq!(a.active() as usize, permits.len());
            assert!(g.tracked() <= max_sources);
            assert!(l.tracked() <= 8);
        }
        // In any one-second window, admitted ≤ max_cps (refill) + max_cps (burst).
        let mut lo = 0;
        for hi in 0..admitted_at.len() {
            while admitted_at[hi] - admitted_at[lo] >= 1000 {
                lo += 1;
            }
            assert!((hi - lo + 1) as u32 <= 2 * max_cps, "seed {seed}");
        }
    }
}

#[test]
fn calls_carried_over_a_reconfiguration_count_but_use_no_cps_tokens() {
    let mut a = Admission::new(1, 2, Millis(0));
    let carried = [a.carry_over(), a.carry_over(), a.carry_over()];
    assert_eq!(
        a.active(),
        3,
        "a call in progress is never cut, even past the cap"
    );
    assert_eq!(
        a.try_admit(Millis(0)).map_err(|s| s.reason),
        Err(ShedReason::Concurrency)
    );
    for p in carried {
        a.release(p);
    }
    // The CPS bucket is still full: the carried calls took no token.
    assert!(a.try_admit(Millis(0)).is_ok());
}
