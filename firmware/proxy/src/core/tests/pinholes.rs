//! Media checked against the config and the pinholes calls keep.

use super::*;

#[test]
fn calls_sharing_media_addresses_share_the_pinholes() {
    let mut lab = Lab::new();
    // Both calls offer and answer the same addresses (a gateway reusing its ports).
    let a = answer_call(&mut lab, Invite::new("share-a@x"), carrier(), pbx1(), 1_000);
    assert_eq!(
        lab.proxy.stats().pinholes_opened,
        4,
        "RTP and RTCP of both parties"
    );
    let b_inv = Invite::new("share-b@x");
    lab.at(2_000);
    let out = lab.carrier_says(&b_inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(2_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pbx-b", Some(30000)));
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    assert!(
        out.pinholes().is_empty(),
        "already open for call a: {out:#?}"
    );
    let b_ok = out.response_to(carrier().addr);
    let b = CallerDialog::new(&b_inv, &b_ok);

    // Call a ends: call b still uses the addresses, nothing closes.
    lab.at(3_000);
    let out = lab.carrier_says(&a.dialog.request("BYE", "z9hG4bK-share-a-bye", 2, None));
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1);
    assert!(out.pinholes().is_empty(), "{out:#?}");

    // A third call 61 s after the first opening renews the timeout once.
    let c = answer_call(
        &mut lab,
        Invite::new("share-c@x"),
        carrier(),
        pbx1(),
        62_000,
    );
    // Call b ends: call c still holds them. Call c ends: they close, once each.
    lab.at(63_000);
    let out = lab.carrier_says(&b.request("BYE", "z9hG4bK-share-b-bye", 2, None));
    assert!(out.pinholes().is_empty(), "{out:#?}");
    lab.at(64_000);
    let out = lab.carrier_says(&c.dialog.request("BYE", "z9hG4bK-share-c-bye", 2, None));
    let closed: Vec<_> = out.pinholes().into_iter().filter(|p| !p.0).collect();
    assert_eq!(closed.len(), 4, "{out:#?}");
    assert_eq!(lab.proxy.stats().pinholes_closed, 4);
    // Opened when call a was answered and renewed for call c: 2 x 4.
    assert_eq!(lab.proxy.stats().pinholes_opened, 8);
}

#[test]
fn reinvite_moves_the_media_pinholes() {
    let mut lab = Lab::new();
    let a = answer_call(
        &mut lab,
        Invite::new("reinvite@x"),
        carrier(),
        pbx1(),
        1_000,
    );
    lab.at(10_000);
    let offer = sdp("203.0.113.10", 40002);
    let out = lab.carrier_says(&a.dialog.request("INVITE", "z9hG4bK-re-1", 2, Some(&offer)));
    assert_eq!(out.response_to(carrier().addr).status(), Some(100));
    let re = out.requests_to(pbx1().addr, "INVITE");
    assert_eq!(re.len(), 1, "{out:#?}");
    let re = re.into_iter().next().unwrap();
    assert_eq!(re.ruri(), "sip:pbx@198.51.100.10:5060");
    assert!(re.values(HeaderName::Route).is_empty());
    assert_eq!(re.values(HeaderName::Via).len(), 2);
    assert_eq!(re.body(), offer.as_bytes());
    assert!(out.pinholes().is_empty(), "the offer alone opens nothing");

    lab.at(10_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&re, 200, "ignored", Some(30000)));
    let ok = out.response_to(carrier().addr);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.cseq(), (2, "INVITE".to_owned()));
    assert_eq!(ok.values(HeaderName::Via).len(), 1);
    assert_eq!(
        out.opened(),
        addrs(&["203.0.113.10:40002", "203.0.113.10:40003"])
    );
    assert_eq!(
        out.closed(),
        addrs(&["203.0.113.10:40000", "203.0.113.10:40001"])
    );
    assert_eq!(out.pinholes().len(), 4);
    assert!(out.records().is_empty());

    lab.at(10_200);
    let out = lab.carrier_says(&a.dialog.request("ACK", "z9hG4bK-re-ack", 2, None));
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");

    lab.at(20_000);
    let out = lab.carrier_says(&a.dialog.request("BYE", "z9hG4bK-re-bye", 3, None));
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1);
    assert_eq!(
        out.closed(),
        addrs(&[
            "203.0.113.10:40002",
            "203.0.113.10:40003",
            "198.51.100.10:30000",
            "198.51.100.10:30001"
        ])
    );
    assert_eq!(out.pinholes().len(), 4);
    let (seq, c, ended) = out.record();
    assert!(ended);
    assert_eq!(seq, a.seq);
    assert_eq!(c.duration_ms, 20_000 - 1_200);
}

#[test]
fn early_media_opens_pinholes_and_failure_closes_them() {
    let mut lab = Lab::new();
    let inv = Invite::new("early@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 183, "em", Some(30000)));
    assert_eq!(out.response_to(carrier().addr).status(), Some(183));
    assert_eq!(out.opened().len(), 4, "{out:#?}");
    lab.at(1_300);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 486, "em", None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(486));
    assert_eq!(
        out.closed(),
        addrs(&[
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "198.51.100.10:30000",
            "198.51.100.10:30001"
        ])
    );
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c.ring_at, Some(UNIX0 + 1_100));
    assert_eq!(c.disposition, Disposition::Busy);
}

#[test]
fn a_hostile_or_malformed_offer_gets_488_and_opens_nothing() {
    let many = format!(
        "v=0\r\no=- 1 1 IN IP4 203.0.113.10\r\ns=-\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\n{}",
        "m=audio 40000 RTP/AVP 0\r\n".repeat(1000)
    );
    for (i, body) in [
        hostile_offer(),
        sdp("999.1.1.1", 40000),
        sdp("203.0.113.10", 161),
        sdp("203.0.113.99", 40000),
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\nm=audio 70000 RTP/AVP 0\r\n".to_owned(),
        many,
    ]
    .into_iter()
    .enumerate()
    {
        let mut lab = Lab::new();
        let mut inv = Invite::new(&format!("hostile-{i}@x"));
        inv.sdp = Some(body);
        lab.at(1_000);
        let out = lab.carrier_says(&inv.bytes());
        let r = out.response_to(carrier().addr);
        assert_eq!(r.status(), Some(488), "{i}: {out:#?}");
        let w = r.raw_header("Warning").unwrap_or_default();
        assert!(w.starts_with("305 203.0.113.1:5060 \""), "{i}: {w}");
        assert!(out.requests_to(pbx1().addr, "INVITE").is_empty(), "{i}: relayed");
        assert!(out.pinholes().is_empty(), "{i}");
        let (_, c, ended) = out.record();
        assert!(ended);
        assert_eq!((c.disposition, c.final_code), (Disposition::Rejected, 488));
        assert_eq!(lab.proxy.stats().refused_media, 1);
        assert_eq!(lab.proxy.call_count(), 0);
    }
}

#[test]
fn a_hostile_answer_never_reaches_the_caller_and_the_callee_is_released() {
    let mut lab = Lab::new();
    let inv = Invite::new("bad-answer@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    // The PBX answers with media on a port the config does not allow.
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "p", Some(161)));
    let up = out.response_to(carrier().addr);
    assert_eq!(up.status(), Some(488), "{out:#?}");
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1, "{out:#?}");
    assert!(out.pinholes().is_empty());
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!((c.disposition, c.final_code), (Disposition::Failed, 488));
    assert_eq!(lab.proxy.stats().calls_answered, 0);
    // Its retransmission is ACKed again, nothing more.
    lab.at(1_600);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "p", Some(161)));
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");
    assert!(out.requests_to(pbx1().addr, "BYE").is_empty());
    assert!(out.sent_to(carrier().addr).is_empty());
}

#[test]
fn hostile_early_media_cancels_the_call() {
    let mut lab = Lab::new();
    let inv = Invite::new("bad-early@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    // Early media naming an address outside the private media ranges.
    let mut reply = String::from_utf8(pbx_reply(&fwd, 183, "p", Some(30000))).unwrap();
    reply = reply.replace("c=IN IP4 198.51.100.10", "c=IN IP4 198.51.100.99");
    let out = lab.pbx_says(pbx1(), reply.as_bytes());
    assert_eq!(
        out.response_to(carrier().addr).status(),
        Some(488),
        "{out:#?}"
    );
    assert_eq!(out.requests_to(pbx1().addr, "CANCEL").len(), 1, "{out:#?}");
    assert!(out.pinholes().is_empty());
    let (_, c, _) = out.record();
    assert_eq!((c.disposition, c.final_code), (Disposition::Failed, 488));
}

#[test]
fn a_hostile_reinvite_offer_gets_488_and_the_call_keeps_its_media() {
    let mut lab = Lab::new();
    let a = answer_call(&mut lab, Invite::new("bad-re@x"), carrier(), pbx1(), 1_000);
    lab.at(10_000);
    let out = lab.carrier_says(&a.dialog.request(
        "INVITE",
        "z9hG4bK-bad-re-1",
        2,
        Some(&hostile_offer()),
    ));
    assert_eq!(
        out.response_to(carrier().addr).status(),
        Some(488),
        "{out:#?}"
    );
    assert!(out.requests_to(pbx1().addr, "INVITE").is_empty());
    assert!(out.pinholes().is_empty());
    assert_eq!(lab.proxy.call_count(), 1);
    assert_eq!(
        lab.proxy.active_calls()[0].pinholes,
        4,
        "the old media stays"
    );
}

#[test]
fn pinholes_admit_only_the_other_partys_signalled_address() {
    let mut lab = Lab::new();
    let inv = Invite::new("bound@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "p", Some(30000)));
    let got = out.opened_flows();
    let want: BTreeSet<(String, SocketAddr)> = [
        ("198.51.100.10/32", "203.0.113.10:40000"),
        ("198.51.100.10/32", "203.0.113.10:40001"),
        ("203.0.113.10/32", "198.51.100.10:30000"),
        ("203.0.113.10/32", "198.51.100.10:30001"),
    ]
    .into_iter()
    .map(|(s, d)| (s.to_owned(), sa(d)))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn a_carrier_media_pool_is_the_source_toward_the_pbx() {
    let mut lab = Lab::with(Opts {
        carrier_extra: "media = [\"203.0.113.0/28\"]\nmedia_sources = [\"203.0.113.32/28\"]",
        ..Opts::default()
    });
    let mut inv = Invite::new("pool@x");
    inv.sdp = Some(sdp("203.0.113.12", 40000));
    let a_fwd = {
        lab.at(1_000);
        let out = lab.carrier_says(&inv.bytes());
        out.requests_to(pbx1().addr, "INVITE").pop().unwrap()
    };
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&a_fwd, 200, "p", Some(30000)));
    let srcs: BTreeSet<(String, u16)> = out
        .opened_flows()
        .into_iter()
        .map(|(s, d)| (s, d.port()))
        .collect();
    assert!(
        srcs.contains(&("203.0.113.32/28".to_owned(), 30000)),
        "{srcs:?}"
    );
    assert!(
        srcs.contains(&("198.51.100.10/32".to_owned(), 40000)),
        "{srcs:?}"
    );
    assert_eq!(srcs.len(), 4);
}
