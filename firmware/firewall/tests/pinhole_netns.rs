#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! System tests: `SetWriter` against a real kernel, inside throw-away network
//! namespaces (`cgpin<pid>x<n>`, `cgpinc…`/`cgpina…`/`cgpinp…` for the
//! forwarding test): the elements checked with `nft -j list set`, and the
//! rendered ruleset's pinholes checked with datagrams through a carrier, an
//! appliance and a PBX namespace joined by veth pairs.
//!
//! Needs root, `ip` and `nft`; fails (saying so) when not root. The root
//! namespace's networking is never touched: links, addresses, routes and
//! sysctls are set inside the test namespaces only.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use callgate_config::Config;
use callgate_firewall::netlink::{NetlinkError, Pinhole, PinholeChange, PinholeProto, SetWriter};
use callgate_firewall::{render, Firewall};
use serde_json::Value;

mod support;
use support::NetNs;

const RULESET: &str = "
table inet callgate {
    set pinhole4_host { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags timeout; }
    set pinhole6_host { type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags timeout; }
    set pinhole4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval, timeout; }
    set pinhole6 { type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval, timeout; }
    set block4 { type ipv4_addr; flags timeout; }
    set block6 { type ipv6_addr; flags timeout; }
}
table inet partial {
    set pinhole4 { type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval, timeout; }
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
            elems.push((render_value(val), expires));
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

/// A set element's key as nft prints it in text: `203.0.113.0/28 . 198.51.100.10 . udp . 40000`.
fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => {
            if let Some(parts) = o.get("concat").and_then(Value::as_array) {
                parts
                    .iter()
                    .map(render_value)
                    .collect::<Vec<_>>()
                    .join(" . ")
            } else if let Some(p) = o.get("prefix") {
                format!("{}/{}", render_value(&p["addr"]), p["len"])
            } else {
                v.to_string()
            }
        }
        other => other.to_string(),
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A UDP pinhole from `src` (an address or a prefix) to `dst:port`.
fn udp(src: &str, dst: &str, port: u16) -> Pinhole {
    let src = if src.contains('/') {
        src.parse().unwrap()
    } else {
        ip(src).into()
    };
    Pinhole {
        src,
        dst: ip(dst),
        proto: PinholeProto::Udp,
        port,
    }
}

fn tcp(src: &str, dst: &str, port: u16) -> Pinhole {
    Pinhole {
        proto: PinholeProto::Tcp,
        ..udp(src, dst, port)
    }
}

fn change(p: Pinhole, open: Option<Duration>) -> PinholeChange {
    p.change(open)
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
    let ns = Arc::new(ns);
    let ns2 = ns.clone();

    ns.run_inside(move || {
        let ns = ns2;
        let mut w = SetWriter::open("callgate").unwrap();
        let min = Duration::from_secs(60);
        let (pbx, pbx6) = ("198.51.100.10", "2001:db8:2::10");

        // open v4 / v6, tcp / udp, from one address or a prefix
        w.open_pinhole(udp("203.0.113.20", pbx, 40000), min)
            .unwrap();
        w.open_pinhole(tcp("203.0.113.20", pbx, 5060), min).unwrap();
        // host bits of a source prefix are cleared
        w.open_pinhole(udp("203.0.113.37/28", pbx, 40002), min)
            .unwrap();
        w.open_pinhole(udp("2001:db8:1::20", pbx6, 40002), min)
            .unwrap();
        w.open_pinhole(tcp("2001:db8:1::20", pbx6, 5061), min)
            .unwrap();
        w.open_pinhole(udp("2001:db8:1::1ff/120", pbx6, 40004), min)
            .unwrap();
        // IPv4-mapped IPv6 addresses land in the IPv4 set
        w.open_pinhole(
            udp("::ffff:203.0.113.21", "::ffff:198.51.100.11", 40004),
            min,
        )
        .unwrap();

        // one source address: the hash sets; a source prefix: the interval sets
        let p4h = elements(&ns, "callgate", "pinhole4_host");
        let p4 = elements(&ns, "callgate", "pinhole4");
        let p6h = elements(&ns, "callgate", "pinhole6_host");
        let p6 = elements(&ns, "callgate", "pinhole6");
        for (set, key) in [
            (&p4h, "203.0.113.20 . 198.51.100.10 . udp . 40000"),
            (&p4h, "203.0.113.20 . 198.51.100.10 . tcp . 5060"),
            (&p4, "203.0.113.32/28 . 198.51.100.10 . udp . 40002"),
            (&p4h, "203.0.113.21 . 198.51.100.11 . udp . 40004"),
            (&p6h, "2001:db8:1::20 . 2001:db8:2::10 . udp . 40002"),
            (&p6h, "2001:db8:1::20 . 2001:db8:2::10 . tcp . 5061"),
            (&p6, "2001:db8:1::100/120 . 2001:db8:2::10 . udp . 40004"),
        ] {
            let exp = set.iter().find(|(k, _)| k == key).map(|(_, e)| *e);
            assert!(
                matches!(exp, Some(Some(s)) if s <= 60),
                "{key} with expiry in {set:?}"
            );
        }
        assert_eq!(
            (p4h.len(), p4.len(), p6h.len(), p6.len()),
            (3, 1, 2, 1),
            "{p4h:?} {p4:?} {p6h:?} {p6:?}"
        );
        // the hash sets really are hash sets: no interval flag
        let flags = ns.exec(
            "nft",
            &["list", "set", "inet", "callgate", "pinhole4_host"],
            None,
        );
        assert!(
            flags.contains("flags timeout") && !flags.contains("interval"),
            "{flags}"
        );

        // re-open refreshes the timeout instead of failing, for an address or a prefix
        let first = udp("203.0.113.20", pbx, 40000);
        let first_key = "203.0.113.20 . 198.51.100.10 . udp . 40000";
        w.open_pinhole(first, Duration::from_secs(600)).unwrap();
        let exp = expires(&ns, "pinhole4_host", first_key);
        assert!(
            matches!(exp, Some(Some(s)) if s > 500),
            "refreshed: {exp:?}"
        );
        w.open_pinhole(udp("203.0.113.32/28", pbx, 40002), Duration::from_secs(600))
            .unwrap();
        let exp = expires(
            &ns,
            "pinhole4",
            "203.0.113.32/28 . 198.51.100.10 . udp . 40002",
        );
        assert!(
            matches!(exp, Some(Some(s)) if s > 500),
            "prefix refreshed: {exp:?}"
        );
        // ... also to a shorter one
        w.open_pinhole(first, Duration::from_secs(30)).unwrap();
        let exp = expires(&ns, "pinhole4_host", first_key);
        assert!(
            matches!(exp, Some(Some(s)) if s <= 30),
            "shortened: {exp:?}"
        );
        // the same destination from another source is another pinhole
        w.open_pinhole(udp("203.0.113.22", pbx, 40000), min)
            .unwrap();
        assert_eq!(elements(&ns, "callgate", "pinhole4_host").len(), 4);
        w.close_pinhole(udp("203.0.113.22", pbx, 40000)).unwrap();
        assert!(expires(&ns, "pinhole4_host", first_key).is_some());

        // close removes; closing again is NotFound
        w.close_pinhole(tcp("203.0.113.20", pbx, 5060)).unwrap();
        w.close_pinhole(udp("2001:db8:1::20", pbx6, 40002)).unwrap();
        assert_eq!(
            expires(
                &ns,
                "pinhole4_host",
                "203.0.113.20 . 198.51.100.10 . tcp . 5060"
            ),
            None
        );
        assert_eq!(
            expires(
                &ns,
                "pinhole6_host",
                "2001:db8:1::20 . 2001:db8:2::10 . udp . 40002"
            ),
            None
        );
        assert_eq!(elements(&ns, "callgate", "pinhole4_host").len(), 2);
        assert_eq!(elements(&ns, "callgate", "pinhole6_host").len(), 1);
        let e = w.close_pinhole(tcp("203.0.113.20", pbx, 5060)).unwrap_err();
        assert!(matches!(e, NetlinkError::NotFound { .. }), "{e}");
        let e = w.close_pinhole(udp("2001:db8:1::99", pbx6, 1)).unwrap_err();
        assert!(matches!(e, NetlinkError::NotFound { .. }), "{e}");
        // a prefix closes by any address of it (the key is the prefix's network); a prefix
        // that is not open is NotFound too
        let e = w
            .close_pinhole(udp("2001:db8:1::/120", pbx6, 40004))
            .unwrap_err();
        assert!(matches!(e, NetlinkError::NotFound { .. }), "{e}");
        w.close_pinhole(udp("2001:db8:1::140/120", pbx6, 40004))
            .unwrap();
        assert!(elements(&ns, "callgate", "pinhole6").is_empty());
        assert_eq!(elements(&ns, "callgate", "pinhole6_host").len(), 1);

        // discard: removes when present, and is fine (and leaves nothing) when absent
        let d = udp("203.0.113.20", pbx, 40100);
        let d_key = "203.0.113.20 . 198.51.100.10 . udp . 40100";
        w.open_pinhole(d, min).unwrap();
        assert!(expires(&ns, "pinhole4_host", d_key).is_some());
        w.discard_pinhole(d).unwrap();
        assert_eq!(expires(&ns, "pinhole4_host", d_key), None);
        w.discard_pinhole(d).unwrap();
        w.discard_pinhole(udp("2001:db8:1::99", pbx6, 1)).unwrap();
        w.discard_pinhole(udp("203.0.113.64/27", pbx, 1)).unwrap();
        let dp = udp("203.0.113.64/27", pbx, 2);
        w.open_pinhole(dp, min).unwrap();
        w.discard_pinhole(dp).unwrap();
        assert_eq!(expires(&ns, "pinhole4_host", d_key), None);
        assert_eq!(elements(&ns, "callgate", "pinhole4_host").len(), 2);
        assert_eq!(elements(&ns, "callgate", "pinhole4").len(), 1);
        assert_eq!(elements(&ns, "callgate", "pinhole6_host").len(), 1);
        assert!(elements(&ns, "callgate", "pinhole6").is_empty());

        // many changes in one batch: open new, refresh existing, close present and absent;
        // the batch is never aborted for any of them
        w.open_pinhole(udp("203.0.113.20", pbx, 40200), min)
            .unwrap();
        w.open_pinhole(udp("203.0.113.0/28", pbx, 40201), min)
            .unwrap();
        let five = Some(Duration::from_secs(300));
        let ch = |src, port, open| change(udp(src, pbx, port), open);
        let v6 = change(udp("2001:db8:1::/64", pbx6, 40300), five);
        w.change_pinholes(&[
            ch("203.0.113.20", 40202, five),
            ch("203.0.113.20", 40200, five),
            ch("203.0.113.0/28", 40201, None),
            ch("203.0.113.20", 40203, None),
            ch("203.0.113.0/28", 40203, None),
            v6,
        ])
        .unwrap();
        for (set, elem, want) in [
            (
                "pinhole4_host",
                "203.0.113.20 . 198.51.100.10 . udp . 40202",
                true,
            ),
            (
                "pinhole4_host",
                "203.0.113.20 . 198.51.100.10 . udp . 40200",
                true,
            ),
            (
                "pinhole4",
                "203.0.113.0/28 . 198.51.100.10 . udp . 40201",
                false,
            ),
            (
                "pinhole4_host",
                "203.0.113.20 . 198.51.100.10 . udp . 40203",
                false,
            ),
            (
                "pinhole6",
                "2001:db8:1::/64 . 2001:db8:2::10 . udp . 40300",
                true,
            ),
        ] {
            let exp = expires(&ns, set, elem);
            if want {
                assert!(matches!(exp, Some(Some(s)) if s > 200), "{elem}: {exp:?}");
            } else {
                assert_eq!(exp, None, "{elem}");
            }
        }
        w.change_pinholes(&[
            ch("203.0.113.20", 40202, None),
            ch("203.0.113.20", 40200, None),
            PinholeChange { open: None, ..v6 },
        ])
        .unwrap();
        assert_eq!(elements(&ns, "callgate", "pinhole4_host").len(), 2);
        assert_eq!(elements(&ns, "callgate", "pinhole4").len(), 1);
        assert_eq!(elements(&ns, "callgate", "pinhole6_host").len(), 1);
        assert!(elements(&ns, "callgate", "pinhole6").is_empty());

        // a batch with one change of mixed families is refused whole, before the kernel
        let e = w
            .change_pinholes(&[
                ch("203.0.113.20", 40400, five),
                change(udp("2001:db8:1::20", pbx, 40401), five),
            ])
            .unwrap_err();
        assert!(matches!(e, NetlinkError::MixedFamilies { .. }), "{e}");
        assert_eq!(
            expires(
                &ns,
                "pinhole4_host",
                "203.0.113.20 . 198.51.100.10 . udp . 40400"
            ),
            None
        );

        // a source prefix overlapping another prefix pinhole's to the same destination port
        // (a /29 inside an open /28) is refused by the kernel: the whole batch with it,
        // clearly
        w.open_pinhole(udp("203.0.113.0/28", pbx, 40500), min)
            .unwrap();
        let e = w
            .change_pinholes(&[
                ch("203.0.113.20", 40501, five),
                ch("203.0.113.0/29", 40500, five),
            ])
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        assert!(e.to_string().contains("overlapping"), "{e}");
        assert_eq!(
            expires(
                &ns,
                "pinhole4_host",
                "203.0.113.20 . 198.51.100.10 . udp . 40501"
            ),
            None
        );
        // one address inside the open /28 is another set's element: fine
        w.change_pinholes(&[ch("203.0.113.5", 40500, five)])
            .unwrap();
        assert!(expires(
            &ns,
            "pinhole4_host",
            "203.0.113.5 . 198.51.100.10 . udp . 40500"
        )
        .is_some());
        w.discard_pinhole(udp("203.0.113.5", pbx, 40500)).unwrap();
        w.close_pinhole(udp("203.0.113.0/28", pbx, 40500)).unwrap();
        assert_eq!(elements(&ns, "callgate", "pinhole4_host").len(), 2);
        assert_eq!(elements(&ns, "callgate", "pinhole4").len(), 1);

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
        let short = udp("203.0.113.0/29", pbx, 41000);
        let short_key = "203.0.113.0/29 . 198.51.100.10 . udp . 41000";
        w.open_pinhole(short, Duration::from_secs(1)).unwrap();
        assert!(expires(&ns, "pinhole4", short_key).is_some());
        assert!(
            eventually(Duration::from_secs(4), || expires(
                &ns, "pinhole4", short_key
            )
            .is_none()),
            "1 s pinhole still present"
        );
        // and closing it now is NotFound, reopening works
        let e = w.close_pinhole(short).unwrap_err();
        assert!(matches!(e, NetlinkError::NotFound { .. }), "{e}");
        w.open_pinhole(short, min).unwrap();
        assert!(expires(&ns, "pinhole4", short_key).is_some());
        // ... and so does a one-address one
        let short = udp("203.0.113.9", pbx, 41000);
        let short_key = "203.0.113.9 . 198.51.100.10 . udp . 41000";
        w.open_pinhole(short, Duration::from_secs(1)).unwrap();
        assert!(expires(&ns, "pinhole4_host", short_key).is_some());
        assert!(
            eventually(Duration::from_secs(4), || expires(
                &ns,
                "pinhole4_host",
                short_key
            )
            .is_none()),
            "1 s one-address pinhole still present"
        );
        let e = w.close_pinhole(short).unwrap_err();
        assert!(matches!(e, NetlinkError::NotFound { .. }), "{e}");

        // invalid TTL is refused locally
        let e = w
            .open_pinhole(udp("203.0.113.21", pbx, 1), Duration::ZERO)
            .unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidTtl(_)), "{e}");
    });
}

#[test]
fn missing_table_or_set_is_a_clear_error() {
    let ns = NetNs::for_test("pinhole_netns", "pin");
    ns.nft_load(RULESET);

    let (errors, mixed) = ns.run_inside(|| {
        let mut out = Vec::new();
        let ttl = Duration::from_secs(5);
        let mut nope = SetWriter::open("nosuchtable").unwrap();
        out.push(
            nope.open_pinhole(udp("203.0.113.20", "192.0.2.1", 4000), ttl)
                .unwrap_err(),
        );
        out.push(nope.block(ip("2001:db8::1"), ttl).unwrap_err());
        // closing in a missing table is not "NotFound": the set is missing
        out.push(
            nope.close_pinhole(udp("203.0.113.20", "192.0.2.1", 4000))
                .unwrap_err(),
        );
        // table exists, set does not
        let mut partial = SetWriter::open("partial").unwrap();
        out.push(
            partial
                .open_pinhole(tcp("2001:db8:1::/48", "2001:db8::1", 4000), ttl)
                .unwrap_err(),
        );
        out.push(partial.unblock(ip("192.0.2.1")).unwrap_err());
        // mixed families are refused before the kernel is asked: no SetMissing here
        let mixed = [
            nope.open_pinhole(udp("2001:db8:1::20", "192.0.2.1", 4000), ttl),
            nope.close_pinhole(udp("203.0.113.20", "2001:db8::1", 4000)),
            nope.discard_pinhole(udp("2001:db8:1::/48", "::ffff:192.0.2.1", 4000)),
        ]
        .map(Result::unwrap_err);
        // the writer is still usable after errors
        partial
            .open_pinhole(tcp("203.0.113.20/31", "192.0.2.1", 4000), ttl)
            .unwrap();
        // dropping a writer closes its socket
        let fds = open_fds();
        for _ in 0..50 {
            let mut w = SetWriter::open("nosuchtable").unwrap();
            assert!(w.unblock(ip("192.0.2.1")).is_err());
        }
        // (the other tests run in parallel and open pipes: allow some slack,
        // a leak would show as +50)
        let after = open_fds();
        assert!(
            after < fds + 10,
            "file descriptors leaked: {fds} -> {after}"
        );
        (out, mixed)
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
        texts[0].contains("`inet nosuchtable pinhole4_host`"),
        "{}",
        texts[0]
    );
    assert!(texts[0].contains("table does not exist"), "{}", texts[0]);
    assert!(texts[1].contains("block6"), "{}", texts[1]);
    assert!(texts[2].contains("table does not exist"), "{}", texts[2]);
    assert!(texts[3].contains("`inet partial pinhole6`"), "{}", texts[3]);
    assert!(texts[3].contains("set does not exist"), "{}", texts[3]);
    assert!(texts[4].contains("set does not exist"), "{}", texts[4]);
    for e in &mixed {
        assert!(matches!(e, NetlinkError::MixedFamilies { .. }), "{e}");
    }
    assert_eq!(
        elements(&ns, "partial", "pinhole4").len(),
        1,
        "writer usable after errors"
    );
    eprintln!("error texts:\n  {}", texts.join("\n  "));
}

/// Carrier, appliance and PBX namespaces, wired as the lab wires them:
/// carrier `c0` ↔ `wan0` appliance `priv0` ↔ `p0` PBX, the appliance
/// forwarding between its two links.
struct Wired {
    carrier: Arc<NetNs>,
    appliance: Arc<NetNs>,
    pbx: Arc<NetNs>,
}

/// The appliance's own WAN address, the PBX, the carrier's signalled media
/// address, a third address of the carrier, and addresses inside and
/// outside the carrier's media prefix.
const A_WAN: &str = "203.0.113.1";
const PBX: &str = "198.51.100.10";
const SIGNALLED: &str = "203.0.113.20";
const THIRD: &str = "203.0.113.21";
const MEDIA_PREFIX: &str = "203.0.113.37/28";
const IN_PREFIX: &str = "203.0.113.40";
const OUT_PREFIX: &str = "203.0.113.50";
const PBX6: &str = "2001:db8:2::10";
const SIGNALLED6: &str = "2001:db8:1::20";
const THIRD6: &str = "2001:db8:1::21";
const MEDIA_PREFIX6: &str = "2001:db8:1::100/120";
const IN_PREFIX6: &str = "2001:db8:1::140";
const OUT_PREFIX6: &str = "2001:db8:1::240";

impl Wired {
    fn new() -> Self {
        let carrier = NetNs::for_test("pinhole_netns", "pinc");
        let appliance = NetNs::for_test("pinhole_netns", "pina");
        let pbx = NetNs::for_test("pinhole_netns", "pinp");
        let (c, a, p) = (carrier.name(), appliance.name(), pbx.name());
        // both ends of each pair are created inside the namespaces
        support::run(
            "ip",
            &[
                "-n", a, "link", "add", "wan0", "type", "veth", "peer", "name", "c0", "netns", c,
            ],
            None,
        );
        support::run(
            "ip",
            &[
                "-n", a, "link", "add", "priv0", "type", "veth", "peer", "name", "p0", "netns", p,
            ],
            None,
        );
        let addrs: [(&NetNs, &str, &[&str]); 3] = [
            (
                &carrier,
                "c0",
                &[
                    "203.0.113.20/24",
                    "203.0.113.21/24",
                    "203.0.113.40/24",
                    "203.0.113.50/24",
                    "2001:db8:1::20/64",
                    "2001:db8:1::21/64",
                    "2001:db8:1::140/64",
                    "2001:db8:1::240/64",
                ],
            ),
            (&appliance, "wan0", &["203.0.113.1/24", "2001:db8:1::1/64"]),
            (
                &appliance,
                "priv0",
                &["198.51.100.1/24", "2001:db8:2::1/64"],
            ),
        ];
        for (ns, dev, list) in addrs {
            for a in list {
                ns.exec("ip", &["addr", "add", a, "dev", dev, "nodad"], None);
            }
        }
        for a in ["198.51.100.10/24", "2001:db8:2::10/64"] {
            pbx.exec("ip", &["addr", "add", a, "dev", "p0", "nodad"], None);
        }
        for (ns, dev) in [
            (&carrier, "c0"),
            (&appliance, "wan0"),
            (&appliance, "priv0"),
            (&pbx, "p0"),
        ] {
            ns.exec("ip", &["link", "set", dev, "up"], None);
            ns.exec("ip", &["link", "set", "lo", "up"], None);
        }
        for (ns, v4, v6) in [
            (&carrier, "203.0.113.1", "2001:db8:1::1"),
            (&pbx, "198.51.100.1", "2001:db8:2::1"),
        ] {
            ns.exec("ip", &["route", "add", "default", "via", v4], None);
            ns.exec("ip", &["-6", "route", "add", "default", "via", v6], None);
        }
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            appliance.exec("sysctl", &["-qw", key], None);
        }
        Wired {
            carrier: Arc::new(carrier),
            appliance: Arc::new(appliance),
            pbx: Arc::new(pbx),
        }
    }

    /// A datagram from `src` (a fresh socket, so a fresh conntrack entry) to `dst`.
    fn send(&self, src: &str, dst: SocketAddr, payload: &str) {
        let src = SocketAddr::new(ip(src), 0);
        let payload = payload.to_owned();
        self.carrier.run_inside(move || {
            let sock = UdpSocket::bind(src).unwrap();
            sock.send_to(payload.as_bytes(), dst).unwrap();
        });
    }

    /// `f` with a writer in the appliance's namespace.
    fn write<T: Send + 'static>(&self, f: impl FnOnce(&mut SetWriter) -> T + Send + 'static) -> T {
        self.appliance
            .run_inside(move || f(&mut SetWriter::open("callgate").unwrap()))
    }
}

/// A socket listening on `addr` in `ns`.
fn listen(ns: &NetNs, addr: SocketAddr) -> UdpSocket {
    ns.run_inside(move || UdpSocket::bind(addr).unwrap())
}

fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

/// Probes: each sends one datagram with a unique payload and checks whether it arrives at
/// the listening socket (within 2 s when it should, not within 300 ms when it should not,
/// and no straggler of an earlier probe arrives instead).
struct Probes<'a> {
    wired: &'a Wired,
    n: u32,
}

impl Probes<'_> {
    fn check(&mut self, src: &str, to: &UdpSocket, pass: bool, what: &str) {
        self.n += 1;
        let payload = format!("probe {} {what}", self.n);
        self.wired.send(src, to.local_addr().unwrap(), &payload);
        to.set_read_timeout(Some(if pass {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(300)
        }))
        .unwrap();
        let mut buf = [0u8; 256];
        let got = match to.recv_from(&mut buf) {
            Ok((n, _)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        };
        match (pass, got) {
            (true, Some(p)) if p == payload => {}
            (false, None) => {}
            (true, other) => panic!("{what}: {payload:?} should pass, got {other:?}"),
            (false, Some(p)) => panic!("{what}: {payload:?} should be dropped, got {p:?}"),
        }
    }
}

fn lab_ruleset() -> callgate_firewall::Ruleset {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml");
    render(&Config::load(&p).unwrap())
}

/// The rendered lab ruleset in the appliance: a pinhole admits its own source (an address
/// or any address of a prefix) to its destination port, forwarded only, and nothing else;
/// closing and expiry end it.
#[test]
fn pinholes_admit_only_their_source_and_only_forwarded() {
    let wired = Wired::new();
    let rs = lab_ruleset();
    wired
        .appliance
        .run_inside(move || Firewall::default().apply(&rs, None).unwrap());

    let rx = listen(&wired.pbx, sa(PBX, 40000));
    let rx_prefix = listen(&wired.pbx, sa(PBX, 40002));
    let rx_short = listen(&wired.pbx, sa(PBX, 40001));
    let rx_mapped = listen(&wired.pbx, sa(PBX, 40004));
    let rx6 = listen(&wired.pbx, sa(PBX6, 40000));
    let rx6_prefix = listen(&wired.pbx, sa(PBX6, 40002));
    let rx_self = listen(&wired.appliance, sa(A_WAN, 40003));
    let mut probe = Probes {
        wired: &wired,
        n: 0,
    };

    // no pinhole, no media
    probe.check(SIGNALLED, &rx, false, "before any pinhole");

    let min = Duration::from_secs(60);
    wired.write(move |w| {
        w.change_pinholes(&[
            change(udp(SIGNALLED, PBX, 40000), Some(min)),
            change(udp(MEDIA_PREFIX, PBX, 40002), Some(min)),
            change(udp(SIGNALLED6, PBX6, 40000), Some(min)),
            change(udp(MEDIA_PREFIX6, PBX6, 40002), Some(min)),
            // IPv4-mapped, as a dual-stack socket reports IPv4 peers
            change(
                udp("::ffff:203.0.113.21", "::ffff:198.51.100.10", 40004),
                Some(min),
            ),
            // toward the appliance's own address (SIP never asks for it; if it did, the
            // input chain has no pinhole rule)
            change(udp(SIGNALLED, A_WAN, 40003), Some(min)),
        ])
        .unwrap();
    });

    // one-address sources are in the hash sets, prefixes in the interval sets
    let appliance = wired.appliance.clone();
    let keys = |set: &str| -> Vec<String> {
        elements(&appliance, "callgate", set)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    let mut p4h = keys("pinhole4_host");
    p4h.sort();
    assert_eq!(
        p4h,
        [
            "203.0.113.20 . 198.51.100.10 . udp . 40000",
            "203.0.113.20 . 203.0.113.1 . udp . 40003",
            "203.0.113.21 . 198.51.100.10 . udp . 40004",
        ]
    );
    assert_eq!(
        keys("pinhole4"),
        ["203.0.113.32/28 . 198.51.100.10 . udp . 40002"]
    );
    assert_eq!(
        keys("pinhole6_host"),
        ["2001:db8:1::20 . 2001:db8:2::10 . udp . 40000"]
    );
    assert_eq!(
        keys("pinhole6"),
        ["2001:db8:1::100/120 . 2001:db8:2::10 . udp . 40002"]
    );

    // the signalled source passes; a third source to the same port does not
    probe.check(SIGNALLED, &rx, true, "signalled source");
    probe.check(THIRD, &rx, false, "third source");
    probe.check(
        IN_PREFIX,
        &rx,
        false,
        "media prefix address to another pinhole",
    );
    // the same source to a port without a pinhole does not
    probe.check(SIGNALLED, &rx_short, false, "signalled source, other port");
    // a prefix admits its addresses only
    probe.check(IN_PREFIX, &rx_prefix, true, "inside the media prefix");
    probe.check(OUT_PREFIX, &rx_prefix, false, "outside the media prefix");
    probe.check(
        SIGNALLED,
        &rx_prefix,
        false,
        "signalled source to the prefix's pinhole",
    );
    // IPv6 alike
    probe.check(SIGNALLED6, &rx6, true, "signalled source v6");
    probe.check(THIRD6, &rx6, false, "third source v6");
    probe.check(IN_PREFIX6, &rx6_prefix, true, "inside the media prefix v6");
    probe.check(
        OUT_PREFIX6,
        &rx6_prefix,
        false,
        "outside the media prefix v6",
    );
    // the mapped pinhole works for the IPv4 flow it stands for, from its source only
    probe.check(THIRD, &rx_mapped, true, "mapped source");
    probe.check(
        SIGNALLED,
        &rx_mapped,
        false,
        "other source to the mapped pinhole",
    );
    // never to the appliance itself
    probe.check(SIGNALLED, &rx_self, false, "pinhole toward the appliance");
    // another protocol to a pinhole's port does not pass: TCP from the signalled source
    // (the carrier's primary address) to the UDP pinhole's port, the PBX listening
    let tcp_rx = wired
        .pbx
        .run_inside(|| TcpListener::bind(sa(PBX, 40000)).unwrap());
    let connected = wired.carrier.run_inside(|| {
        TcpStream::connect_timeout(&sa(PBX, 40000), Duration::from_millis(500)).is_ok()
    });
    assert!(!connected, "TCP through a UDP pinhole");
    drop(tcp_rx);

    let counters = wired
        .appliance
        .run_inside(|| Firewall::default().counters().unwrap());
    let pinhole: Vec<_> = counters
        .iter()
        .filter(|c| c.name == "builtin:pinhole")
        .collect();
    assert_eq!(pinhole.len(), 1, "{counters:?}");
    assert_eq!(pinhole[0].chain, "forward");
    // one rule per family and set kind
    assert_eq!(
        (pinhole[0].rules, pinhole[0].packets),
        (4, 5),
        "{pinhole:?}"
    );

    // closing ends a pinhole at once (in one batch with closes of absent ones); the others
    // stay open
    wired.write(|w| {
        w.change_pinholes(&[
            change(udp(SIGNALLED, PBX, 40000), None),
            change(udp(THIRD, PBX, 40000), None),
            change(udp(MEDIA_PREFIX6, PBX6, 40002), None),
        ])
        .unwrap();
    });
    probe.check(SIGNALLED, &rx, false, "closed");
    probe.check(IN_PREFIX6, &rx6_prefix, false, "closed v6 prefix");
    probe.check(IN_PREFIX, &rx_prefix, true, "still open");

    // a short pinhole passes, then expires by itself
    wired.write(|w| {
        w.open_pinhole(udp(SIGNALLED, PBX, 40001), Duration::from_secs(1))
            .unwrap();
    });
    probe.check(SIGNALLED, &rx_short, true, "short pinhole");
    assert!(
        eventually(Duration::from_secs(4), || {
            elements(&appliance, "callgate", "pinhole4_host")
                .iter()
                .all(|(k, _)| !k.ends_with(". 40001"))
        }),
        "1 s pinhole still present"
    );
    probe.check(SIGNALLED, &rx_short, false, "expired");

    // a short prefix pinhole alike
    wired.write(|w| {
        w.open_pinhole(udp(MEDIA_PREFIX, PBX, 40001), Duration::from_secs(1))
            .unwrap();
    });
    probe.check(IN_PREFIX, &rx_short, true, "short prefix pinhole");
    probe.check(
        OUT_PREFIX,
        &rx_short,
        false,
        "short prefix pinhole, outside",
    );
    assert!(
        eventually(Duration::from_secs(4), || {
            elements(&appliance, "callgate", "pinhole4")
                .iter()
                .all(|(k, _)| !k.ends_with(". 40001"))
        }),
        "1 s prefix pinhole still present"
    );
    probe.check(IN_PREFIX, &rx_short, false, "prefix expired");

    // closing a v4 prefix pinhole ends it
    wired.write(|w| w.discard_pinhole(udp(MEDIA_PREFIX, PBX, 40002)).unwrap());
    probe.check(IN_PREFIX, &rx_prefix, false, "closed prefix");
    assert!(elements(&appliance, "callgate", "pinhole4").is_empty());
}
