//! Retransmissions, and responses taken only from where their request went.

use super::*;

#[test]
fn retransmitted_invite_is_absorbed() {
    let mut lab = Lab::new();
    let inv = Invite::new("retrans@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();

    lab.at(1_400);
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(out.response_to(carrier().addr).status(), Some(100));
    assert!(out.records().is_empty());
    assert_eq!(lab.proxy.stats().retransmissions_absorbed, 1);
    assert_eq!(lab.proxy.stats().calls_offered, 1);
    assert_eq!(lab.proxy.call_count(), 1);

    // After the 180, a retransmission gets the 180 again.
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "p", None));
    lab.at(2_400);
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(out.response_to(carrier().addr).status(), Some(180));
    assert_eq!(lab.proxy.stats().retransmissions_absorbed, 2);
}

#[test]
fn pbx_2xx_retransmission_is_forwarded_upstream() {
    let mut lab = Lab::new();
    let (_, ok, out) = answered_by_pbx1(&mut lab, "ok-again@x");
    assert_eq!(out.records().len(), 1);
    lab.at(1_600);
    let out = lab.pbx_says(pbx1(), &ok);
    let again = out.response_to(carrier().addr);
    assert_eq!(again.status(), Some(200));
    assert_eq!(again.values(HeaderName::Via).len(), 1);
    assert!(out.records().is_empty(), "no second answer record");
    assert!(out.pinholes().is_empty());
    assert_eq!(lab.proxy.stats().calls_answered, 1);
}

#[test]
fn invite_retransmitted_after_the_answer_is_absorbed_for_64_t1() {
    let mut lab = Lab::new();
    let (inv, ok, _) = answered_by_pbx1(&mut lab, "accepted@x");
    // Both INVITE transactions are in Accepted (kept as keys only).
    assert_eq!(lab.proxy.stats().transactions, 2);
    lab.at(1_600);
    let out = lab.carrier_says(&inv.bytes());
    assert!(out.sends().is_empty(), "{out:#?}");
    assert_eq!(lab.proxy.stats().retransmissions_absorbed, 1);
    assert_eq!(lab.proxy.stats().refused_loop, 0);
    assert_eq!(lab.proxy.call_count(), 1);
    // The 2xx retransmission still goes upstream within the window.
    lab.at(20_000);
    let out = lab.pbx_says(pbx1(), &ok);
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    // After 64·T1 the keys are gone: the same INVITE now meets the live call's Call-ID
    // and is refused as a merged request, and the 2xx is no longer relayed.
    lab.at(1_100 + 32_000);
    lab.tick();
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.response_to(carrier().addr).status(), Some(482));
    let out = lab.pbx_says(pbx1(), &ok);
    assert!(out.sends().is_empty(), "{out:#?}");
    assert_eq!(lab.proxy.call_count(), 1);
}

#[test]
fn retransmitted_refused_invite_is_answered_again_without_a_second_record() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("unknown-again@x");
    inv.ruri = "sip:+15559999999@203.0.113.1".to_owned();
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.response_to(carrier().addr).status(), Some(404));
    assert_eq!(out.records().len(), 1);
    lab.at(200);
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.response_to(carrier().addr).status(), Some(404));
    assert!(out.records().is_empty(), "{out:#?}");
}

#[test]
fn forged_responses_from_elsewhere_are_dropped_and_counted() {
    let mut lab = Lab::new();
    let inv = Invite::new("forged@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    // An attacker who knows the branch forges 486 and 200 from another address, and from
    // the PBX's address but another port.
    lab.at(1_050);
    for (from, code) in [
        (udp("203.0.113.66:5060"), 486),
        (udp("203.0.113.66:5060"), 200),
        (udp("198.51.100.10:5099"), 486),
        (tcp("198.51.100.10:5060", 9), 200),
    ] {
        let out = lab.recv(from, lan(), &pbx_reply(&fwd, code, "evil", Some(30000)));
        assert!(out.sent_to(carrier().addr).is_empty(), "{code}: {out:#?}");
        assert!(out.pinholes().is_empty());
        assert!(out.records().is_empty());
    }
    assert_eq!(lab.proxy.stats().responses_wrong_source, 4);
    assert_eq!(lab.proxy.call_count(), 1);
    // The real answer still works.
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "p", Some(30000)));
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
}

/// RFC 3261 §17.2.3 compares sent-by without regard to the host's case: the key holds it
/// in lower case, with the port only when the Via names one.
#[test]
fn via_sent_by_is_the_host_in_lower_case_and_the_port_as_written() {
    for (via, want) in [
        (
            "SIP/2.0/UDP PC33.Atlanta.COM:5066;branch=z9hG4bK1",
            "pc33.atlanta.com:5066",
        ),
        (
            "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK1",
            "pc33.atlanta.com",
        ),
        (
            "SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK1",
            "203.0.113.10:5060",
        ),
        (
            "SIP/2.0/TCP [2001:DB8::A]:5061;branch=z9hG4bK1",
            "[2001:db8::a]:5061",
        ),
        ("SIP/2.0/UDP [2001:db8::a];branch=z9hG4bK1", "[2001:db8::a]"),
    ] {
        let v = sip::parse_via(via).unwrap();
        assert_eq!(crate::core::via_sent_by(&v), want, "{via}");
    }
}

/// Our own Vias go onto forwarded requests unparsed (`prepend_built_via`): each one we
/// build, for every kind of address and transport, parses, and names the address and
/// the branch it was built from.
#[test]
fn our_vias_parse_as_built() {
    let mut lab = Lab::new();
    for local in [
        "203.0.113.1:5060",
        "198.51.100.1:5061",
        "[2001:db8::1]:5060",
    ] {
        let local = sa(local);
        for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
            let (via, branch) = lab.proxy.our_via(local, t);
            let v = sip::parse_via(&via).unwrap();
            assert_eq!(v.transport, t.via_name(), "{via}");
            assert_eq!(crate::core::via_sent_by(&v), local.to_string(), "{via}");
            assert_eq!(v.branch(), Some(branch.as_str()), "{via}");
            assert!(branch.starts_with("z9hG4bK"), "{via}");
        }
    }
}

/// A branch's random part is `format!("{:016x}")` of the number.
#[test]
fn hex16_is_what_format_writes() {
    let mut n: u64 = 1;
    for _ in 0..200 {
        let mut s = String::new();
        crate::core::push_hex16(&mut s, n);
        assert_eq!(s, format!("{n:016x}"));
        n = n.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(7);
    }
    for n in [0, u64::MAX, 0xf, 0xf000_0000_0000_0000] {
        let mut s = String::new();
        crate::core::push_hex16(&mut s, n);
        assert_eq!(s, format!("{n:016x}"));
    }
}

/// The hand-written `host:port` text is what `format!` writes: every port, and addresses
/// with one-, two- and three-digit octets, IPv6 with and without compression.
#[test]
fn host_port_text_is_what_format_writes() {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let ips: Vec<std::net::IpAddr> = vec![
        Ipv4Addr::new(0, 0, 0, 0).into(),
        Ipv4Addr::new(203, 0, 113, 10).into(),
        Ipv4Addr::new(10, 99, 255, 1).into(),
        Ipv4Addr::new(255, 255, 255, 255).into(),
        Ipv6Addr::LOCALHOST.into(),
        "2001:db8::a".parse::<Ipv6Addr>().unwrap().into(),
        "2001:db8:1:2:3:4:5:6".parse::<Ipv6Addr>().unwrap().into(),
        "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().into(),
    ];
    for ip in ips {
        for port in 0..=u16::MAX {
            let addr = SocketAddr::new(ip, port);
            let want = match addr {
                SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
                SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            };
            assert_eq!(crate::core::host_port(addr), want);
        }
        let host = match ip {
            std::net::IpAddr::V4(a) => sip::Host::Ipv4(a),
            std::net::IpAddr::V6(a) => sip::Host::Ipv6(a),
        };
        assert_eq!(crate::core::host_text(&host), host.to_string());
    }
    let name = sip::Host::Name("PBX.example.com");
    assert_eq!(crate::core::host_text(&name), name.to_string());
}
