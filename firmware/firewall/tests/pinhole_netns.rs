#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! System test: `SetWriter` against a real kernel, inside a throw-away network
//! namespace (`cgpin<pid>x<n>`), checked with `nft -j list set`.
//!
//! Needs root, `ip` and `nft`; fails (saying so) when not root. The
//! root namespace's networking is never touched: only `ip netns add/delete`.

use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use callgate_firewall::netlink::{NetlinkError, PinholeChange, PinholeProto, SetWriter};
use serde_json::Value;

mod support;
use support::NetNs;

const RULESET: &str = "
table inet callgate {
    set pinhole4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }
    set pinhole6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }
    set block4 { type ipv4_addr; flags timeout; }
    set block6 { type ipv6_addr; flags timeout; }
}
table inet partial {
    set pinhole4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }
}
";

/// Elements of `inet <table> <set>`: (key as nft prints it, expires in s).
fn elements(ns: &NetNs, table: &str, set: &str) -> Vec<(String, Option<u64>)> {
    let out = ns.exec("nft", &["-j", "list", "set", "inet", table, set], None);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut elems = Vec::new();
    for obj in v["nftables"].as_array().into_iter().flatten() {
        for e in obj["set"]["elem"].as_array().into_iter().flatten() {
            let (val, expires) = match e.get("elem") {
                Some(inner) => (&inner["val"], inner["expires"].as_u64()),
                None => (e, None),
            };
            elems.push((render(val), expires));
        }
    }
    elems
}

fn expires(ns: &NetNs, set: &str, key: &str) -> Option<Option<u64>> {
    elements(ns, "callgate", set)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, exp)| exp)
}

fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => match o.get("concat").and_then(Value::as_array) {
            Some(parts) => parts.iter().map(render).collect::<Vec<_>>().join(" . "),
            None => v.to_string(),
        },
        other => other.to_string(),
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Polls `cond` every 100 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pinholes_and_blocks_in_a_namespace() {
    let ns = NetNs::for_test("pinhole_netns", "pin");
    ns.nft_load(RULESET);
    let ns = std::sync::Arc::new(ns);
    let ns2 = ns.clone();

    ns.run_inside(move || {
        let ns = ns2;
        let mut w = SetWriter::open("callgate").unwrap();
        let min = Duration::from_secs(60);

        // open v4 / v6, tcp / udp
        w.open_pinhole(ip("192.0.2.10"), PinholeProto::Udp, 40000, min)
            .unwrap();
        w.open_pinhole(ip("192.0.2.10"), PinholeProto::Tcp, 5060, min)
            .unwrap();
        w.open_pinhole(ip("2001:db8::10"), PinholeProto::Udp, 40002, min)
            .unwrap();
        w.open_pinhole(ip("2001:db8::10"), PinholeProto::Tcp, 5061, min)
            .unwrap();
        // an IPv4-mapped IPv6 address lands in the IPv4 set
        w.open_pinhole(ip("::ffff:192.0.2.11"), PinholeProto::Udp, 40004, min)
            .unwrap();

        let p4 = elements(&ns, "callgate", "pinhole4");
        let p6 = elements(&ns, "callgate", "pinhole6");
        for key in [
            "192.0.2.10 . udp . 40000",
            "192.0.2.10 . tcp . 5060",
            "192.0.2.11 . udp . 40004",
        ] {
            let exp = p4.iter().find(|(k, _)| k == key).map(|(_, e)| *e);
            assert!(
                matches!(exp, Some(Some(s)) if s <= 60),
                "{key} with expiry in {p4:?}"
            );
        }
        for key in ["2001:db8::10 . udp . 40002", "2001:db8::10 . tcp . 5061"] {
            let exp = p6.iter().find(|(k, _)| k == key).map(|(_, e)| *e);
            assert!(
                matches!(exp, Some(Some(s)) if s <= 60),
                "{key} with expiry in {p6:?}"
            );
        }
        assert_eq!(p4.len(), 3, "{p4:?}");
        assert_eq!(p6.len(), 2, "{p6:?}");

        // re-open refreshes the timeout instead of failing
        w.open_pinhole(
            ip("192.0.2.10"),
            PinholeProto::Udp,
            40000,
            Duration::from_secs(600),
        )
        .unwrap();
        let exp = expires(&ns, "pinhole4", "192.0.2.10 . udp . 40000");
        assert!(
            matches!(exp, Some(Some(s)) if s > 500),
            "refreshed: {exp:?}"
        );
        // ... also to a shorter one
        w.open_pinhole(
            ip("192.0.2.10"),
            PinholeProto::Udp,
            40000,
            Duration::from_secs(30),
        )
        .unwrap();
        let exp = expires(&ns, "pinhole4", "192.0.2.10 . udp . 40000");
        assert!(
            matches!(exp, Some(Some(s)) if s <= 30),
            "shortened: {exp:?}"
        );
        w.open_pinhole(ip("2001:db8::10"), PinholeProto::Tcp, 5061, min)
            .unwrap();

        // close removes; closing again is NotFound
        w.close_pinhole(ip("192.0.2.10"), PinholeProto::Tcp, 5060)
            .unwrap();
        w.close_pinhole(ip("2001:db8::10"), PinholeProto::Udp, 40002)
            .unwrap();
        assert_eq!(expires(&ns, "pinhole4", "192.0.2.10 . tcp . 5060"), None);
        assert_eq!(expires(&ns, "pinhole6", "2001:db8::10 . udp . 40002"), None);
        assert_eq!(elements(&ns, "callgate", "pinhole4").len(), 2);
        let e = w
            .close_pinhole(ip("192.0.2.10"), PinholeProto::Tcp, 5060)
            .unwrap_err();
        assert!(matches!(e, NetlinkError::NotFound { .. }), "{e}");
        let e = w
            .close_pinhole(ip("2001:db8::99"), PinholeProto::Udp, 1)
            .unwrap_err();
        assert!(matches!(e, NetlinkError::NotFound { .. }), "{e}");

        // discard: removes when present, and is fine (and leaves nothing) when absent
        w.open_pinhole(ip("192.0.2.10"), PinholeProto::Udp, 40100, min)
            .unwrap();
        assert!(expires(&ns, "pinhole4", "192.0.2.10 . udp . 40100").is_some());
        w.discard_pinhole(ip("192.0.2.10"), PinholeProto::Udp, 40100)
            .unwrap();
        assert_eq!(expires(&ns, "pinhole4", "192.0.2.10 . udp . 40100"), None);
        w.discard_pinhole(ip("192.0.2.10"), PinholeProto::Udp, 40100)
            .unwrap();
        w.discard_pinhole(ip("2001:db8::99"), PinholeProto::Udp, 1)
            .unwrap();
        assert_eq!(expires(&ns, "pinhole4", "192.0.2.10 . udp . 40100"), None);
        assert_eq!(expires(&ns, "pinhole6", "2001:db8::99 . udp . 1"), None);
        assert_eq!(elements(&ns, "callgate", "pinhole4").len(), 2);

        // many changes in one batch: open new, refresh existing, close present and absent
        w.open_pinhole(ip("192.0.2.10"), PinholeProto::Udp, 40200, min)
            .unwrap();
        w.open_pinhole(ip("192.0.2.10"), PinholeProto::Udp, 40201, min)
            .unwrap();
        let ch = |port, open| PinholeChange {
            addr: ip("192.0.2.10"),
            proto: PinholeProto::Udp,
            port,
            open,
        };
        let v6 = PinholeChange {
            addr: ip("2001:db8::10"),
            proto: PinholeProto::Udp,
            port: 40300,
            open: Some(Duration::from_secs(300)),
        };
        w.change_pinholes(&[
            ch(40202, Some(Duration::from_secs(300))),
            ch(40200, Some(Duration::from_secs(300))),
            ch(40201, None),
            ch(40203, None),
            v6,
        ])
        .unwrap();
        for (set, elem, want) in [
            ("pinhole4", "192.0.2.10 . udp . 40202", true),
            ("pinhole4", "192.0.2.10 . udp . 40200", true),
            ("pinhole4", "192.0.2.10 . udp . 40201", false),
            ("pinhole4", "192.0.2.10 . udp . 40203", false),
            ("pinhole6", "2001:db8::10 . udp . 40300", true),
        ] {
            let exp = expires(&ns, set, elem);
            if want {
                assert!(matches!(exp, Some(Some(s)) if s > 200), "{elem}: {exp:?}");
            } else {
                assert_eq!(exp, None, "{elem}");
            }
        }
        w.change_pinholes(&[
            ch(40202, None),
            ch(40200, None),
            PinholeChange { open: None, ..v6 },
        ])
        .unwrap();
        assert_eq!(elements(&ns, "callgate", "pinhole4").len(), 2);

        // block / unblock, v4 and v6, with refresh
        w.block(ip("203.0.113.66"), min).unwrap();
        w.block(ip("203.0.113.66"), Duration::from_secs(300))
            .unwrap();
        w.block(ip("2001:db8::66"), min).unwrap();
        let exp = expires(&ns, "block4", "203.0.113.66");
        assert!(matches!(exp, Some(Some(s)) if s > 200), "block4: {exp:?}");
        let exp = expires(&ns, "block6", "2001:db8::66");
        assert!(matches!(exp, Some(Some(s)) if s <= 60), "block6: {exp:?}");
        w.unblock(ip("203.0.113.66")).unwrap();
        w.unblock(ip("2001:db8::66")).unwrap();
        assert!(elements(&ns, "callgate", "block4").is_empty());
        assert!(elements(&ns, "callgate", "block6").is_empty());
        let e = w.unblock(ip("203.0.113.66")).unwrap_err();
        assert!(matches!(e, NetlinkError::NotFound { .. }), "{e}");

        // a 1 s pinhole goes away by itself
        w.open_pinhole(
            ip("192.0.2.20"),
            PinholeProto::Udp,
            41000,
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(expires(&ns, "pinhole4", "192.0.2.20 . udp . 41000").is_some());
        assert!(
            eventually(Duration::from_secs(4), || expires(
                &ns,
                "pinhole4",
                "192.0.2.20 . udp . 41000"
            )
            .is_none()),
            "1 s pinhole still present"
        );
        // and closing it now is NotFound, reopening works
        let e = w
            .close_pinhole(ip("192.0.2.20"), PinholeProto::Udp, 41000)
            .unwrap_err();
        assert!(matches!(e, NetlinkError::NotFound { .. }), "{e}");

        // invalid TTL is refused locally
        let e = w
            .open_pinhole(ip("192.0.2.21"), PinholeProto::Udp, 1, Duration::ZERO)
            .unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidTtl(_)), "{e}");
    });
}

#[test]
fn missing_table_or_set_is_a_clear_error() {
    let ns = NetNs::for_test("pinhole_netns", "pin");
    ns.nft_load(RULESET);

    let errors = ns.run_inside(|| {
        let mut out = Vec::new();
        let ttl = Duration::from_secs(5);
        let mut nope = SetWriter::open("nosuchtable").unwrap();
        out.push(
            nope.open_pinhole(ip("192.0.2.1"), PinholeProto::Udp, 4000, ttl)
                .unwrap_err(),
        );
        out.push(nope.block(ip("2001:db8::1"), ttl).unwrap_err());
        // closing in a missing table is not "NotFound": the set is missing
        out.push(
            nope.close_pinhole(ip("192.0.2.1"), PinholeProto::Udp, 4000)
                .unwrap_err(),
        );
        // table exists, set does not
        let mut partial = SetWriter::open("partial").unwrap();
        out.push(
            partial
                .open_pinhole(ip("2001:db8::1"), PinholeProto::Tcp, 4000, ttl)
                .unwrap_err(),
        );
        out.push(partial.unblock(ip("192.0.2.1")).unwrap_err());
        // the writer is still usable after errors
        partial
            .open_pinhole(ip("192.0.2.1"), PinholeProto::Tcp, 4000, ttl)
            .unwrap();
        // dropping a writer closes its socket
        let fds = open_fds();
        for _ in 0..50 {
            let mut w = SetWriter::open("nosuchtable").unwrap();
            assert!(w.unblock(ip("192.0.2.1")).is_err());
        }
        // (the other test runs in parallel and opens pipes: allow some slack,
        // a leak would show as +50)
        let after = open_fds();
        assert!(
            after < fds + 10,
            "file descriptors leaked: {fds} -> {after}"
        );
        out
    });

    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for (e, text) in errors.iter().zip(&texts) {
        assert!(
            matches!(e, NetlinkError::SetMissing { .. }),
            "expected SetMissing, got {text}"
        );
        assert!(text.contains("ENOENT"), "{text}");
    }
    assert!(
        texts[0].contains("`inet nosuchtable pinhole4`"),
        "{}",
        texts[0]
    );
    assert!(texts[0].contains("table does not exist"), "{}", texts[0]);
    assert!(texts[1].contains("block6"), "{}", texts[1]);
    assert!(texts[2].contains("table does not exist"), "{}", texts[2]);
    assert!(texts[3].contains("`inet partial pinhole6`"), "{}", texts[3]);
    assert!(texts[3].contains("set does not exist"), "{}", texts[3]);
    assert!(texts[4].contains("set does not exist"), "{}", texts[4]);
    assert_eq!(
        elements(&ns, "partial", "pinhole4").len(),
        1,
        "writer usable after errors"
    );
    eprintln!("error texts:\n  {}", texts.join("\n  "));
}
