//! Tests of the lab harness itself (need root: they create network namespaces).

// Helpers outside `#[test]` fns panic on purpose too: a panic is a failed test.
#![allow(clippy::expect_used)]

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use hil_tests::addr::*;
use hil_tests::{lab_namespaces, Host, Lab, Segment, Token};

const T: Duration = Duration::from_secs(2);

fn v4(a: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn v6(a: std::net::Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

#[test]
fn topology_works_without_any_firewall() {
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Mgmt]).expect("lab");
    let (carrier, a, pbx, mgmt) = (
        lab.ns(Host::Carrier),
        lab.ns(Host::A),
        lab.ns(Host::Pbx),
        lab.ns(Host::Mgmt),
    );

    // Interfaces are where the contract says.
    let links = a.ip(&["-o", "link"]).expect("ip link");
    for iface in [iface::WAN, iface::PRIV, iface::MGMT] {
        assert!(
            links.contains(&format!(" {iface}@")),
            "{iface} missing in A: {links}"
        );
    }
    assert!(!links.contains(iface::SYNC), "no sync0 without B");

    // Same segment, both families.
    assert!(carrier.ping(None, A_WAN_V4, T));
    assert!(carrier.ping(None, A_WAN_V6, T));
    assert!(carrier.ping(Some(v4(CARRIER_V4_ALT)), A_WAN_V4, T));
    assert!(carrier.ping(Some(v6(CARRIER_V6_ALT)), A_WAN_V6, T));
    assert!(pbx.ping(None, A_PRIV_V4, T));
    assert!(pbx.ping(None, A_PRIV_V6, T));
    assert!(mgmt.ping(None, A_MGMT_V4, T));
    assert!(mgmt.ping(None, A_MGMT_V6, T));

    // Through A (forwarding + default routes), both ways.
    assert!(carrier.ping(None, PBX_V4, T));
    assert!(carrier.ping(None, PBX_V6, T));
    assert!(pbx.ping(None, CARRIER_V4, T));
    assert!(pbx.ping(None, CARRIER_V6, T));

    // Nothing answers for addresses that are not in the lab.
    assert!(!carrier.ping(None, B_WAN_V4, Duration::from_secs(1)));

    // TCP carrier -> A, with the default source and the "wrong" one.
    let l = a.tcp_listen(A_WAN_V4, 5061).expect("listen");
    assert!(carrier.tcp_connect(None, A_WAN_V4, 5061, T));
    assert!(l.wait_for_peer(v4(CARRIER_V4), T), "peers: {:?}", l.peers());
    assert!(carrier.tcp_connect(Some(v4(CARRIER_V4_ALT)), A_WAN_V4, 5061, T));
    assert!(
        l.wait_for_peer(v4(CARRIER_V4_ALT), T),
        "peers: {:?}",
        l.peers()
    );
    assert!(
        !carrier.tcp_connect(None, A_WAN_V4, 5999, T),
        "closed port must refuse"
    );
    let l6 = a.tcp_listen(A_WAN_V6, 5061).expect("listen v6");
    assert!(carrier.tcp_connect(None, A_WAN_V6, 5061, T));
    assert!(
        l6.wait_for_peer(v6(CARRIER_V6), T),
        "default v6 source is the primary: {:?}",
        l6.peers()
    );
    assert!(carrier.tcp_connect(Some(v6(CARRIER_V6_ALT)), A_WAN_V6, 5061, T));
    assert!(l6.wait_for_peer(v6(CARRIER_V6_ALT), T));

    // TCP mgmt -> A.
    let lm = a.tcp_listen(A_MGMT_V4, 22).expect("listen mgmt");
    assert!(mgmt.tcp_connect(None, A_MGMT_V4, 22, T));
    assert!(lm.wait_for_peer(v4(MGMT_V4), T));
    assert!(mgmt.tcp_connect(Some(v4(MGMT_V4_ALT)), A_MGMT_V4, 22, T));
    assert!(lm.wait_for_peer(v4(MGMT_V4_ALT), T));

    // TCP carrier -> pbx, forwarded by A.
    let lp = pbx.tcp_listen(PBX_V6, 5060).expect("listen pbx");
    assert!(carrier.tcp_connect(None, PBX_V6, 5060, T));

    // UDP carrier -> A: one-way with a token, then a round trip.
    let u = a.udp_listen(A_WAN_V4, 5060).expect("udp listen");
    let token = Token::new();
    assert!(carrier.udp_send(None, A_WAN_V4, 5060, &token));
    assert!(u.wait_for(&token, T));
    assert_eq!(u.peer_of(&token).map(|p| p.ip()), Some(v4(CARRIER_V4)));
    let alt = Token::new();
    assert!(carrier.udp_send(Some(v4(CARRIER_V4_ALT)), A_WAN_V4, 5060, &alt));
    assert!(u.wait_for(&alt, T));
    assert_eq!(u.peer_of(&alt).map(|p| p.ip()), Some(v4(CARRIER_V4_ALT)));
    assert!(!u.received(&Token::new()));
    assert!(carrier.udp_probe(None, A_WAN_V4, 5060, T));
    assert!(!carrier.udp_probe(None, A_WAN_V4, 5999, Duration::from_millis(500)));
    let u6 = a.udp_listen(A_WAN_V6, 5060).expect("udp listen v6");
    assert!(carrier.udp_probe(None, A_WAN_V6, 5060, T));
    assert_eq!(u6.datagrams().len(), 1);

    // UDP mgmt -> A.
    let um = a.udp_listen(A_MGMT_V6, 1883).expect("udp listen mgmt");
    let tm = Token::new();
    assert!(mgmt.udp_send(None, A_MGMT_V6, 1883, &tm));
    assert!(um.wait_for(&tm, T));
    assert!(
        !mgmt.udp_probe(
            Some(v4(MGMT_V4)),
            A_MGMT_V4,
            1883,
            Duration::from_millis(500)
        ),
        "no v4 listener"
    );

    // run_in really runs inside the namespace (per thread: /proc/thread-self, not
    // /proc/self, which shows the main thread's namespace).
    let root_ns = std::fs::read_link("/proc/thread-self/ns/net").expect("readlink");
    let (ns, dev) = a.run_in(|| {
        (
            std::fs::read_link("/proc/thread-self/ns/net").expect("readlink"),
            std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev"),
        )
    });
    assert_ne!(ns, root_ns);
    assert!(dev.contains("wan0:") && dev.contains("priv0:"), "{dev}");
    assert!(!dev.contains("ifb0:"), "{dev}");

    drop((l, l6, lm, lp, u, u6, um));
}

#[test]
fn spawned_children_and_links() {
    let lab = Lab::start(&[Host::Carrier, Host::A]).expect("lab");
    let a = lab.ns(Host::A);

    // A child the test kills itself.
    let mut cmd = a.command("sleep");
    cmd.arg("600").stdin(Stdio::null());
    let p = a.spawn(cmd).expect("spawn");
    assert!(p.is_running());
    let st = p.kill().expect("kill");
    assert!(!st.success());
    assert!(!p.is_running());

    // A child that exits by itself, waited for.
    let mut cmd = a.command("ip");
    cmd.args(["-o", "addr", "show", "dev", "wan0"])
        .stdout(Stdio::piped());
    let p = a.spawn(cmd).expect("spawn");
    assert!(p
        .wait_timeout(T)
        .expect("wait")
        .is_some_and(|s| s.success()));

    // Pulling the cable at the switch, and plugging it back in.
    let carrier = lab.ns(Host::Carrier);
    assert!(carrier.ping(None, A_WAN_V4, T));
    lab.set_link(Host::Carrier, Segment::Wan, false)
        .expect("down");
    assert!(!carrier.ping(None, A_WAN_V4, Duration::from_secs(1)));
    lab.set_link(Host::Carrier, Segment::Wan, true).expect("up");
    assert!(carrier.ping(None, A_WAN_V4, Duration::from_secs(3)));

    assert!(lab.try_ns(Host::Pbx).is_err());
}

#[test]
fn a_failed_test_leaves_nothing_behind() {
    let (tx, rx) = mpsc::channel();
    let joined = thread::spawn(move || {
        let lab = Lab::start(&[Host::Carrier, Host::A, Host::B]).expect("lab");
        let a = lab.ns(Host::A);
        let mut cmd = a.command("sleep");
        cmd.arg("600").stdin(Stdio::null());
        let child = a.spawn(cmd).expect("spawn");
        // A grandchild the lab does not know about, in its own session: found by
        // `ip netns pids` at teardown.
        let mut stray = lab.ns(Host::B).command("setsid");
        stray.args(["-f", "sleep", "601"]).stdin(Stdio::null());
        assert!(stray.status().expect("setsid").success());
        tx.send((lab.prefix().to_owned(), child.pid()))
            .expect("send");
        panic!("deliberate failure inside a lab");
    })
    .join();
    assert!(joined.is_err(), "the thread must have panicked");
    let (prefix, pid) = rx.recv().expect("prefix");
    assert!(
        lab_namespaces(&prefix).is_empty(),
        "left behind: {:?}",
        lab_namespaces(&prefix)
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !cmdline.starts_with(b"sleep\x00600"),
        "child {pid} still exists"
    );
    let strays = Command::new("pgrep")
        .args(["-f", "-x", "sleep 601"])
        .output()
        .expect("pgrep");
    assert!(strays.stdout.is_empty(), "stray grandchild still running");
}

/// `ip -o link` + `ip -o addr` of the root namespace, without the parts that change on
/// their own (address lifetimes).
fn root_snapshot() -> String {
    let mut s = String::new();
    for args in [["-o", "link"], ["-o", "addr"]] {
        let out = Command::new("ip").args(args).output().expect("ip");
        assert!(out.status.success());
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                if w == "valid_lft" || w == "preferred_lft" {
                    words.next();
                    continue;
                }
                s.push_str(w);
                s.push(' ');
            }
            s.push('\n');
        }
    }
    s
}

#[test]
fn the_root_namespace_is_untouched() {
    let before = root_snapshot();
    {
        let lab = Lab::start(&Host::ALL).expect("lab");
        let (a, b) = (lab.ns(Host::A), lab.ns(Host::B));
        let links = a.ip(&["-o", "link"]).expect("ip link");
        assert!(links.contains(" sync0@"), "{links}");
        assert!(a.ping(None, B_SYNC_V4, T));
        assert!(a.ping(None, B_SYNC_V6, T));
        assert!(b.ping(None, A_MGMT_V4, T));
        assert!(lab.ns(Host::Carrier).ping(None, B_WAN_V6, T));
        // No route out of the lab: the carrier's default route ends at A, whose own
        // table knows only lab segments.
        let routes = a.ip(&["route"]).expect("route");
        assert!(!routes.contains("default"), "{routes}");
        assert_eq!(root_snapshot(), before, "root changed while the lab was up");
    }
    assert_eq!(root_snapshot(), before, "root changed by the lab");
}

#[test]
fn leftovers_of_dead_runs_are_swept() {
    // A pid that is not alive: pid_max is an upper bound on every pid.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let dead = (2..pid_max)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .expect("free pid");
    let stale = format!("cg{dead}x7-a");
    let added = hil_tests::netns_add(&stale).is_ok();
    assert!(added, "ip netns add {stale}");
    let lab = Lab::start(&[Host::Mgmt]).expect("lab");
    assert!(
        lab_namespaces(&format!("cg{dead}x7")).is_empty(),
        "stale namespace not swept"
    );
    assert_eq!(lab_namespaces(lab.prefix()).len(), 2, "mgmt + switch");
}

#[test]
fn probes_are_bounded_when_traffic_is_dropped() {
    let lab = Lab::start(&[Host::Carrier, Host::A]).expect("lab");
    let (carrier, a) = (lab.ns(Host::Carrier), lab.ns(Host::A));
    let l = a.tcp_listen(A_WAN_V4, 5061).expect("listen");
    let u = a.udp_listen(A_WAN_V4, 5060).expect("udp listen");
    assert!(carrier.tcp_connect(None, A_WAN_V4, 5061, T));
    // A firewall inside A's namespace that drops everything coming in.
    a.exec(&[
        "nft",
        "add table inet t; add chain inet t in { type filter hook input priority 0; policy drop; }",
    ])
    .expect("nft");
    let short = Duration::from_millis(700);
    let started = std::time::Instant::now();
    assert!(!carrier.tcp_connect(None, A_WAN_V4, 5061, short));
    assert!(!carrier.udp_probe(None, A_WAN_V4, 5060, short));
    let token = Token::new();
    assert!(carrier.udp_send(None, A_WAN_V4, 5060, &token));
    assert!(!u.wait_for(&token, short));
    assert!(!carrier.ping(None, A_WAN_V4, short));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "probes took {took:?}");
    assert_eq!(l.peers().len(), 1);
}

#[test]
fn the_second_pbx_destination_is_reachable_through_a() {
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx]).expect("lab");
    let (a, carrier) = (lab.ns(Host::A), lab.ns(Host::Carrier));
    let t = Duration::from_secs(2);
    assert!(a.ping(None, v4(PBX2_V4), t), "A reaches 198.51.100.11");
    assert!(a.ping(None, v6(PBX2_V6), t), "A reaches 2001:db8:2::11");
    let l = lab.ns(Host::Pbx).udp_listen(PBX2_V4, 5060).expect("listen");
    let tok = Token::new();
    assert!(carrier.udp_send(None, PBX2_V4, 5060, &tok));
    assert!(
        l.wait_for(&tok, t),
        "routed through A to the second destination"
    );
}
