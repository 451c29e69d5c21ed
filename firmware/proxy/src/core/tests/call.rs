//! Call flows: answered, busy, cancelled, no answer, failover, TCP legs.

use super::*;

#[test]
fn basic_call_answered_then_caller_hangs_up() {
    let mut lab = Lab::new();
    let inv = Invite::new("basic-1@203.0.113.10");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());

    // 100 Trying upstream, from our WAN socket.
    let trying = out.response_to(carrier().addr);
    assert_eq!(trying.status(), Some(100));
    assert_eq!(trying.peer, carrier());
    assert_eq!(trying.local, wan());
    assert_eq!(trying.top_branch(), inv.branch);
    assert_eq!(trying.to_tag(), None);

    // The INVITE goes to the first PBX from our private socket.
    let fwd = out.requests_to(pbx1().addr, "INVITE");
    assert_eq!(fwd.len(), 1);
    let fwd = fwd.into_iter().next().unwrap();
    assert_eq!(out.sends().len(), 2, "100 and the INVITE only: {out:#?}");
    assert_eq!(fwd.peer, pbx1());
    assert_eq!(fwd.local, lan());
    assert_eq!(fwd.ruri(), format!("sip:{NUMBER}@198.51.100.10:5060"));
    let m = fwd.msg();
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[0].transport, "UDP");
    assert_eq!(vias[0].host.to_string(), "198.51.100.1");
    assert_eq!(vias[0].port, Some(5060));
    assert!(vias[0].is_rfc3261_branch());
    assert_ne!(vias[0].branch(), Some(inv.branch.as_str()));
    assert_eq!(vias[1].branch(), Some(inv.branch.as_str()));
    assert_eq!(vias[1].host.to_string(), "203.0.113.10");
    assert_eq!(m.max_forwards().unwrap(), Some(69));
    assert_eq!(
        fwd.values(HeaderName::RecordRoute),
        vec!["<sip:198.51.100.1:5060;lr>", "<sip:203.0.113.1:5060;lr>"]
    );
    assert!(fwd.values(HeaderName::Route).is_empty());
    assert_eq!(fwd.body(), sdp("203.0.113.10", 40000).into_bytes());
    assert_eq!(m.call_id().unwrap(), inv.call_id);
    assert_eq!(m.from().unwrap().tag(), Some("ftag-caller"));
    assert!(out.records().is_empty());
    assert!(out.pinholes().is_empty());
    drop(vias);
    drop(m);

    // 180 Ringing upstream, our Via removed.
    lab.at(1_400);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "pbx-1", None));
    let ringing = out.response_to(carrier().addr);
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(ringing.status(), Some(180));
    assert_eq!(ringing.local, wan());
    assert_eq!(
        ringing.values(HeaderName::Via),
        vec![format!(
            "SIP/2.0/UDP 203.0.113.10:5060;branch={}",
            inv.branch
        )]
    );
    assert_eq!(ringing.to_tag().as_deref(), Some("pbx-1"));
    assert!(out.records().is_empty());
    assert!(out.pinholes().is_empty());
    assert_eq!(lab.proxy.active_calls().len(), 1);
    assert_eq!(lab.proxy.active_calls()[0].state, crate::CallState::Ringing);

    // 200 OK upstream; pinholes for offer and answer; the answer-time record.
    lab.at(4_000);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pbx-1", Some(30000)));
    let ok = out.response_to(carrier().addr);
    assert_eq!(out.sends().len(), 1);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.values(HeaderName::Via).len(), 1);
    assert_eq!(ok.top_branch(), inv.branch);
    assert_eq!(ok.to_tag().as_deref(), Some("pbx-1"));
    assert_eq!(
        ok.values(HeaderName::RecordRoute),
        vec!["<sip:198.51.100.1:5060;lr>", "<sip:203.0.113.1:5060;lr>"]
    );
    assert_eq!(ok.body(), sdp("198.51.100.10", 30000).into_bytes());
    assert_eq!(
        out.opened(),
        addrs(&[
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "198.51.100.10:30000",
            "198.51.100.10:30001"
        ])
    );
    assert_eq!(out.pinholes().len(), 4);
    assert!(out.pinholes().iter().all(|p| p.2 == pinhole_ttl()));
    let (seq, mut answer_cdr, ended) = out.record();
    assert!(
        answer_cdr.resume.take().is_some(),
        "the answer-time record carries what resumes the call"
    );
    assert!(!ended);
    assert_eq!(
        answer_cdr,
        Cdr {
            invite_at: UNIX0 + 1_000,
            ring_at: Some(UNIX0 + 1_400),
            answer_at: Some(UNIX0 + 4_000),
            ..cdr(&inv.call_id)
        }
    );

    // ACK with the route set goes to the callee, our Routes consumed.
    let dialog = CallerDialog::new(&inv, &ok);
    assert_eq!(
        dialog.route,
        vec!["<sip:203.0.113.1:5060;lr>", "<sip:198.51.100.1:5060;lr>"]
    );
    lab.at(4_100);
    let out = lab.carrier_says(&dialog.request("ACK", "z9hG4bK-basic-ack", 1, None));
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    let ack = out.requests_to(pbx1().addr, "ACK");
    assert_eq!(ack.len(), 1);
    let ack = &ack[0];
    assert_eq!(ack.local, lan());
    assert_eq!(ack.ruri(), "sip:pbx@198.51.100.10:5060");
    assert!(ack.values(HeaderName::Route).is_empty());
    assert_eq!(ack.values(HeaderName::Via).len(), 2);
    assert!(ack
        .values(HeaderName::Via)
        .first()
        .unwrap()
        .starts_with("SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK"));
    assert_eq!(ack.msg().max_forwards().unwrap(), Some(69));
    assert!(out.records().is_empty());

    // BYE from the caller: forwarded, pinholes closed, final record.
    lab.at(64_000);
    let out = lab.carrier_says(&dialog.request("BYE", "z9hG4bK-basic-bye", 2, None));
    let bye = out.requests_to(pbx1().addr, "BYE");
    assert_eq!(bye.len(), 1, "{out:#?}");
    let bye = bye.into_iter().next().unwrap();
    assert_eq!(bye.local, lan());
    assert_eq!(bye.ruri(), "sip:pbx@198.51.100.10:5060");
    assert!(bye.values(HeaderName::Route).is_empty());
    assert_eq!(bye.cseq(), (2, "BYE".to_owned()));
    assert_eq!(
        out.closed(),
        addrs(&[
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "198.51.100.10:30000",
            "198.51.100.10:30001"
        ])
    );
    assert_eq!(out.pinholes().len(), 4);
    let (end_seq, end_cdr, ended) = out.record();
    assert!(ended);
    assert_eq!(end_seq, seq);
    assert_eq!(
        end_cdr,
        Cdr {
            invite_at: UNIX0 + 1_000,
            ring_at: Some(UNIX0 + 1_400),
            answer_at: Some(UNIX0 + 4_000),
            end_at: Some(UNIX0 + 64_000),
            duration_ms: 60_000,
            ..cdr(&inv.call_id)
        }
    );
    assert_eq!(lab.proxy.call_count(), 0);

    // The PBX's 200 to the BYE goes back to the caller.
    lab.at(64_050);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&bye, 200, "x", None));
    let ok = out.response_to(carrier().addr);
    assert_eq!(out.sends().len(), 1);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.cseq(), (2, "BYE".to_owned()));
    assert_eq!(ok.top_branch(), "z9hG4bK-basic-bye");
    assert_eq!(ok.values(HeaderName::Via).len(), 1);
    assert!(out.records().is_empty());

    let st = lab.proxy.stats();
    assert_eq!(st.calls_offered, 1);
    assert_eq!(st.calls_answered, 1);
    assert_eq!(st.pinholes_opened, 4);
    assert_eq!(st.pinholes_closed, 4);
    assert_eq!(st.active_calls, 0);
}

/// The PBX's BYE toward the caller of `a`, with `routes` (whole header lines).
fn pbx_bye(a: &Answered, routes: &str) -> Vec<u8> {
    format!(
        "BYE sip:{CALLER_NUMBER}@203.0.113.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-pbx-bye\r\n{routes}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        a.ok_up.single(HeaderName::To).unwrap(),
        a.inv.caller_from(),
        a.inv.call_id
    )
    .into_bytes()
}

/// Only the Route values on top that name us are taken off an in-dialog request (in two
/// header lines here); the first that does not, and everything after it, goes on as
/// written.
#[test]
fn only_our_routes_on_top_are_taken_off() {
    let mut lab = Lab::new();
    let a = answer_call(&mut lab, Invite::new("routes@x"), carrier(), pbx1(), 1_000);
    lab.at(11_200);
    let routes = "Route: <sip:198.51.100.1:5060;lr>\r\nRoute: <sip:203.0.113.1:5060;lr>, <sip:192.0.2.50;lr>, <sip:203.0.113.1:5060;lr>";
    let out = lab.pbx_says(pbx1(), &pbx_bye(&a, routes));
    let up = out.requests_to(carrier().addr, "BYE");
    assert_eq!(up.len(), 1, "{out:#?}");
    assert_eq!(
        up[0].values(HeaderName::Route),
        ["<sip:192.0.2.50;lr>", "<sip:203.0.113.1:5060;lr>"]
    );
}

#[test]
fn callee_hangs_up() {
    let mut lab = Lab::new();
    let a = answer_call(
        &mut lab,
        Invite::new("callee-bye@x"),
        carrier(),
        pbx1(),
        1_000,
    );
    // The PBX sends BYE toward the caller with the Record-Route set it saw in the INVITE.
    lab.at(11_200);
    let routes = "Route: <sip:198.51.100.1:5060;lr>, <sip:203.0.113.1:5060;lr>";
    let out = lab.pbx_says(pbx1(), &pbx_bye(&a, routes));
    let up = out.requests_to(carrier().addr, "BYE");
    assert_eq!(up.len(), 1, "{out:#?}");
    assert_eq!(up[0].local, wan());
    assert_eq!(
        up[0].ruri(),
        format!("sip:{CALLER_NUMBER}@203.0.113.10:5060")
    );
    assert!(up[0].values(HeaderName::Route).is_empty());
    assert!(up[0].values(HeaderName::Via)[0].starts_with("SIP/2.0/UDP 203.0.113.1:5060;"));
    assert_eq!(out.closed().len(), 4);
    let (seq, c, ended) = out.record();
    assert!(ended);
    assert_eq!(seq, a.seq);
    assert_eq!(c.disposition, Disposition::Answered);
    assert_eq!(c.end_at, Some(UNIX0 + 11_200));
    assert_eq!(c.duration_ms, 10_000);
    // The caller's 200 goes back to the PBX.
    let out = lab.carrier_says(&pbx_reply(&up[0], 200, "x", None));
    let ok = out.response_to(pbx1().addr);
    assert_eq!(ok.local, lan());
    assert_eq!(ok.top_branch(), "z9hG4bK-pbx-bye");
}

#[test]
fn busy_is_acked_forwarded_and_recorded() {
    let mut lab = Lab::new();
    let inv = Invite::new("busy-1@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();

    lab.at(1_300);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 486, "pbx-busy", None));
    // ACK to the PBX: same Request-URI and branch as our INVITE, To of the 486.
    let ack = out.requests_to(pbx1().addr, "ACK");
    assert_eq!(ack.len(), 1, "{out:#?}");
    let ack = &ack[0];
    assert_eq!(ack.local, lan());
    assert_eq!(ack.ruri(), fwd.ruri());
    assert_eq!(ack.top_branch(), fwd.top_branch());
    assert_eq!(ack.values(HeaderName::Via).len(), 1);
    assert_eq!(ack.cseq(), (1, "ACK".to_owned()));
    assert_eq!(ack.to_tag().as_deref(), Some("pbx-busy"));
    // 486 upstream with our Via removed.
    let busy = out.response_to(carrier().addr);
    assert_eq!(busy.status(), Some(486));
    assert_eq!(busy.local, wan());
    assert_eq!(busy.values(HeaderName::Via).len(), 1);
    assert_eq!(busy.top_branch(), inv.branch);
    assert_eq!(out.sends().len(), 2);
    assert!(out.pinholes().is_empty());
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            invite_at: UNIX0 + 1_000,
            end_at: Some(UNIX0 + 1_300),
            disposition: Disposition::Busy,
            final_code: 486,
            ..cdr(&inv.call_id)
        }
    );
    assert_eq!(lab.proxy.call_count(), 0);
    assert_eq!(lab.proxy.stats().calls_busy, 1);

    // The caller's ACK is absorbed by our server transaction.
    lab.at(1_350);
    let out = lab.carrier_says(&inv.ack_non2xx(&busy));
    assert!(out.sends().is_empty(), "{out:#?}");
    assert!(out.records().is_empty());
}

#[test]
fn caller_cancel_after_ringing() {
    let mut lab = Lab::new();
    let inv = Invite::new("cancel-1@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "pbx-c", None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(180));

    lab.at(3_000);
    let out = lab.carrier_says(&inv.cancel());
    let ok = out.response_to(carrier().addr);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.cseq(), (1, "CANCEL".to_owned()));
    let cancel = out.requests_to(pbx1().addr, "CANCEL");
    assert_eq!(cancel.len(), 1, "{out:#?}");
    let cancel = &cancel[0];
    assert_eq!(cancel.local, lan());
    assert_eq!(cancel.top_branch(), fwd.top_branch());
    assert_eq!(cancel.values(HeaderName::Via).len(), 1);
    assert_eq!(cancel.ruri(), fwd.ruri());
    assert_eq!(cancel.cseq(), (1, "CANCEL".to_owned()));
    assert_eq!(cancel.to_tag(), None);
    assert_eq!(out.sends().len(), 2);
    assert!(out.records().is_empty(), "the call ends with the 487");

    // The PBX: 200 to the CANCEL (consumed here), 487 to the INVITE (forwarded).
    lab.at(3_050);
    let out = lab.pbx_says(pbx1(), &pbx_reply(cancel, 200, "pbx-c", None));
    assert!(out.sends().is_empty(), "{out:#?}");
    lab.at(3_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 487, "pbx-c", None));
    let r = out.response_to(carrier().addr);
    assert_eq!(r.status(), Some(487));
    assert_eq!(r.values(HeaderName::Via).len(), 1);
    assert_eq!(r.cseq(), (1, "INVITE".to_owned()));
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1);
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            invite_at: UNIX0 + 1_000,
            ring_at: Some(UNIX0 + 1_200),
            end_at: Some(UNIX0 + 3_100),
            disposition: Disposition::Cancelled,
            final_code: 487,
            ..cdr(&inv.call_id)
        }
    );
    assert_eq!(lab.proxy.call_count(), 0);
    // The caller's ACK of the 487 is absorbed.
    let out = lab.carrier_says(&inv.ack_non2xx(&r));
    assert!(out.sends().is_empty(), "{out:#?}");
}

#[test]
fn cancel_of_unknown_invite_gets_481() {
    let mut lab = Lab::new();
    let inv = Invite::new("nothing@x");
    let out = lab.carrier_says(&inv.cancel());
    assert_eq!(out.response_to(carrier().addr).status(), Some(481));
    assert_eq!(out.sends().len(), 1);
    assert!(out.records().is_empty());
}

#[test]
fn ring_timeout_cancels_and_answers_480() {
    let mut lab = Lab::with(Opts {
        ring_timeout: 5,
        ..Opts::default()
    });
    let inv = Invite::new("noanswer-1@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "pbx-r", None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(180));

    lab.at(6_199);
    let out = lab.tick();
    assert!(out.call_sends().is_empty(), "not yet: {out:#?}");
    lab.at(6_200);
    let out = lab.tick();
    let cancel = out.requests_to(pbx1().addr, "CANCEL");
    assert_eq!(cancel.len(), 1, "{out:#?}");
    assert_eq!(cancel[0].top_branch(), fwd.top_branch());
    let r = out.response_to(carrier().addr);
    assert_eq!(r.status(), Some(480));
    assert_eq!(r.top_branch(), inv.branch);
    assert!(r.to_tag().is_some());
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            invite_at: UNIX0 + 1_000,
            ring_at: Some(UNIX0 + 1_200),
            end_at: Some(UNIX0 + 6_200),
            disposition: Disposition::NoAnswer,
            final_code: 480,
            ..cdr(&inv.call_id)
        }
    );
    assert_eq!(lab.proxy.call_count(), 0);

    // The PBX's 487 is ACKed and goes no further.
    lab.at(6_300);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 487, "pbx-r", None));
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");
    assert!(out.sent_to(carrier().addr).is_empty());
    assert!(out.records().is_empty());
    assert_eq!(lab.proxy.stats().calls_no_answer, 1);
}

#[test]
fn failover_on_503_then_answered_by_second_pbx() {
    let mut lab = Lab::new();
    let inv = Invite::new("failover-503@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd1 = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();

    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd1, 503, "pbx1", None));
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");
    assert!(
        out.sent_to(carrier().addr).is_empty(),
        "the 503 stays here: {out:#?}"
    );
    assert!(out.records().is_empty());
    let fwd2 = out.requests_to(pbx2().addr, "INVITE");
    assert_eq!(fwd2.len(), 1);
    let fwd2 = fwd2.into_iter().next().unwrap();
    assert_eq!(fwd2.local, lan());
    assert_eq!(fwd2.ruri(), format!("sip:{NUMBER}@198.51.100.11:5060"));
    assert_ne!(fwd2.top_branch(), fwd1.top_branch());
    assert_eq!(fwd2.values(HeaderName::Via).len(), 2);
    assert_eq!(fwd2.msg().max_forwards().unwrap(), Some(69));
    assert_eq!(fwd2.values(HeaderName::RecordRoute).len(), 2);
    assert_eq!(lab.proxy.stats().failovers, 1);

    let a_inv = inv.clone();
    lab.at(1_300);
    let out = lab.pbx_says(pbx2(), &pbx_reply(&fwd2, 180, "pbx2", None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(180));
    lab.at(2_000);
    let out = lab.pbx_says(pbx2(), &pbx_reply(&fwd2, 200, "pbx2", Some(30000)));
    let ok = out.response_to(carrier().addr);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        out.opened(),
        addrs(&[
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "198.51.100.11:30000",
            "198.51.100.11:30001"
        ])
    );
    let (_, mut c, ended) = out.record();
    assert!(
        c.resume.take().is_some(),
        "the answer-time record carries what resumes the call"
    );
    assert!(!ended);
    let expected = Cdr {
        destination: DEST2.to_owned(),
        invite_at: UNIX0 + 1_000,
        ring_at: Some(UNIX0 + 1_300),
        answer_at: Some(UNIX0 + 2_000),
        ..cdr(&a_inv.call_id)
    };
    assert_eq!(c, expected);

    // In-dialog requests now go to the second PBX.
    let d = CallerDialog::new(&a_inv, &ok);
    lab.at(2_100);
    let out = lab.carrier_says(&d.request("ACK", "z9hG4bK-fo-ack", 1, None));
    assert_eq!(out.requests_to(pbx2().addr, "ACK").len(), 1, "{out:#?}");
    lab.at(7_000);
    let out = lab.carrier_says(&d.request("BYE", "z9hG4bK-fo-bye", 2, None));
    assert_eq!(out.requests_to(pbx2().addr, "BYE").len(), 1, "{out:#?}");
    assert!(out.sent_to(pbx1().addr).is_empty());
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            end_at: Some(UNIX0 + 7_000),
            duration_ms: 5_000,
            ..expected
        }
    );
}

#[test]
fn failover_on_silence_then_answered_by_second_pbx() {
    let mut lab = Lab::with(Opts {
        response_timeout: 2,
        ..Opts::default()
    });
    let inv = Invite::new("failover-timeout@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd1 = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();

    lab.at(2_999);
    let out = lab.tick();
    assert!(
        out.requests_to(pbx2().addr, "INVITE").is_empty(),
        "{out:#?}"
    );
    assert!(out.sent_to(carrier().addr).is_empty());
    lab.at(3_000);
    let out = lab.tick();
    let fwd2 = out.requests_to(pbx2().addr, "INVITE");
    assert_eq!(fwd2.len(), 1, "{out:#?}");
    let fwd2 = fwd2.into_iter().next().unwrap();
    assert_ne!(fwd2.top_branch(), fwd1.top_branch());
    assert_eq!(fwd2.ruri(), format!("sip:{NUMBER}@198.51.100.11:5060"));
    assert!(
        out.requests_to(pbx1().addr, "CANCEL").is_empty(),
        "no CANCEL without a provisional (§9.1)"
    );
    assert!(out.sent_to(carrier().addr).is_empty());
    assert!(out.records().is_empty());

    // A late answer from the first PBX changes nothing.
    lab.at(3_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd1, 180, "late", None));
    assert!(out.sent_to(carrier().addr).is_empty(), "{out:#?}");

    lab.at(3_500);
    let out = lab.pbx_says(pbx2(), &pbx_reply(&fwd2, 200, "pbx2", Some(30000)));
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    let (_, mut c, ended) = out.record();
    assert!(
        c.resume.take().is_some(),
        "the answer-time record carries what resumes the call"
    );
    assert!(!ended);
    assert_eq!(
        c,
        Cdr {
            destination: DEST2.to_owned(),
            invite_at: UNIX0 + 1_000,
            ring_at: Some(UNIX0 + 3_500),
            answer_at: Some(UNIX0 + 3_500),
            ..cdr(&inv.call_id)
        }
    );
    assert_eq!(lab.proxy.stats().failovers, 1);
}

#[test]
fn all_destinations_fail_forwards_the_last_final() {
    let mut lab = Lab::new();
    let inv = Invite::new("allfail@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd1 = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd1, 500, "a", None));
    let fwd2 = out.requests_to(pbx2().addr, "INVITE").pop().unwrap();
    lab.at(1_400);
    let out = lab.pbx_says(pbx2(), &pbx_reply(&fwd2, 503, "b", None));
    assert_eq!(out.requests_to(pbx2().addr, "ACK").len(), 1);
    assert_eq!(out.response_to(carrier().addr).status(), Some(503));
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            destination: DEST2.to_owned(),
            invite_at: UNIX0 + 1_000,
            end_at: Some(UNIX0 + 1_400),
            disposition: Disposition::Failed,
            final_code: 503,
            ..cdr(&inv.call_id)
        }
    );
}

#[test]
fn tcp_caller_basic_call() {
    let mut lab = Lab::new();
    let caller = tcp("203.0.113.10:5060", 1);
    let mut inv = Invite::new("tcp-1@x");
    inv.transport = "TCP";
    lab.at(1_000);
    let out = lab.recv(caller, wan(), &inv.bytes());
    let trying = out.response_to(caller.addr);
    assert_eq!(trying.status(), Some(100));
    assert_eq!(trying.peer, caller, "answered on the connection it came on");
    let fwd = out.requests_to(pbx1().addr, "INVITE");
    assert_eq!(fwd.len(), 1, "{out:#?}");
    let fwd = fwd.into_iter().next().unwrap();
    assert_eq!(fwd.peer, pbx1());
    assert_eq!(
        fwd.values(HeaderName::RecordRoute),
        vec![
            "<sip:198.51.100.1:5060;lr>",
            "<sip:203.0.113.1:5060;transport=tcp;lr>"
        ]
    );
    assert!(fwd.values(HeaderName::Via)[0].starts_with("SIP/2.0/UDP 198.51.100.1:5060;"));

    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "t", None));
    assert_eq!(out.response_to(caller.addr).peer, caller);
    lab.at(1_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "t", Some(30000)));
    let ok = out.response_to(caller.addr);
    assert_eq!(ok.peer, caller);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(out.opened().len(), 4);
    let (seq, mut c, ended) = out.record();
    assert!(
        c.resume.take().is_some(),
        "the answer-time record carries what resumes the call"
    );
    assert!(!ended);
    assert_eq!(lab.proxy.active_calls()[0].transport, Transport::Tcp);

    let d = CallerDialog::new(&inv, &ok);
    lab.at(1_300);
    let out = lab.recv(caller, wan(), &d.request("ACK", "z9hG4bK-tcp-ack", 1, None));
    let ack = out.requests_to(pbx1().addr, "ACK");
    assert_eq!(ack.len(), 1, "{out:#?}");
    assert!(ack[0].values(HeaderName::Route).is_empty());
    lab.at(9_200);
    let out = lab.recv(caller, wan(), &d.request("BYE", "z9hG4bK-tcp-bye", 2, None));
    let bye = out.requests_to(pbx1().addr, "BYE").pop().unwrap();
    let (end_seq, end, ended) = out.record();
    assert!(ended);
    assert_eq!(end_seq, seq);
    assert_eq!(
        end,
        Cdr {
            end_at: Some(UNIX0 + 9_200),
            duration_ms: 8_000,
            ..c
        }
    );
    let out = lab.pbx_says(pbx1(), &pbx_reply(&bye, 200, "t", None));
    assert_eq!(out.response_to(caller.addr).peer, caller);
}

#[test]
fn tcp_both_sides() {
    let mut lab = Lab::new();
    let caller = tcp("203.0.113.10:5060", 7);
    let mut inv = Invite::new("tcp-2@x");
    inv.transport = "TCP";
    inv.ruri = "sip:+15550100200@203.0.113.1".to_owned();
    inv.to_user = "+15550100200".to_owned();
    let out = lab.recv(caller, wan(), &inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE");
    assert_eq!(fwd.len(), 1, "{out:#?}");
    let fwd = fwd.into_iter().next().unwrap();
    assert_eq!(fwd.peer.transport, Transport::Tcp);
    assert_eq!(fwd.peer.conn, None);
    assert_eq!(
        fwd.ruri(),
        "sip:+15550100200@198.51.100.10:5060;transport=tcp"
    );
    assert!(fwd.values(HeaderName::Via)[0].starts_with("SIP/2.0/TCP 198.51.100.1:5060;"));
    assert_eq!(
        fwd.values(HeaderName::RecordRoute),
        vec![
            "<sip:198.51.100.1:5060;transport=tcp;lr>",
            "<sip:203.0.113.1:5060;transport=tcp;lr>"
        ]
    );
    let pbx = Peer {
        transport: Transport::Tcp,
        addr: pbx1().addr,
        conn: Some(9),
    };
    let out = lab.pbx_says(pbx, &pbx_reply(&fwd, 200, "t", Some(30000)));
    assert_eq!(out.response_to(caller.addr).peer, caller);
    let (_, c, _) = out.record();
    assert_eq!(c.destination, "sip:198.51.100.10:5060;transport=tcp");
    assert_eq!(c.campaign, "tcp-trial");
}

#[test]
fn caller_cancel_before_any_provisional() {
    let mut lab = Lab::new();
    let inv = Invite::new("early-cancel@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let out = lab.carrier_says(&inv.cancel());
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    assert!(
        out.requests_to(pbx1().addr, "CANCEL").is_empty(),
        "no CANCEL before a provisional (§9.1)"
    );
    // The PBX's 100 Trying releases the CANCEL.
    lab.at(1_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 100, "", None));
    let cancel = out.requests_to(pbx1().addr, "CANCEL");
    assert_eq!(cancel.len(), 1, "{out:#?}");
    assert_eq!(cancel[0].top_branch(), fwd.top_branch());
    lab.at(1_300);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 487, "c", None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(487));
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            invite_at: UNIX0 + 1_000,
            end_at: Some(UNIX0 + 1_300),
            disposition: Disposition::Cancelled,
            final_code: 487,
            ..cdr(&inv.call_id)
        }
    );
}

#[test]
fn caller_cancel_with_a_silent_destination_ends_at_the_response_timeout() {
    let mut lab = Lab::new();
    let inv = Invite::new("cancel-silent@x");
    lab.at(1_000);
    let _ = lab.carrier_says(&inv.bytes());
    lab.at(1_100);
    let _ = lab.carrier_says(&inv.cancel());
    lab.at(3_000);
    let out = lab.tick();
    assert!(
        out.requests_to(pbx2().addr, "INVITE").is_empty(),
        "{out:#?}"
    );
    assert_eq!(out.response_to(carrier().addr).status(), Some(487));
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c.disposition, Disposition::Cancelled);
    assert_eq!(c.final_code, 487);
    assert_eq!(lab.proxy.call_count(), 0);
}

#[test]
fn trying_then_silence_does_not_hang_the_call() {
    let mut lab = Lab::with(Opts {
        ring_timeout: 5,
        ..Opts::default()
    });
    let inv = Invite::new("trying-only@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 100, "", None));
    let all = Out(run_clock(&mut lab, 1_100));
    assert_eq!(
        lab.proxy.call_count(),
        0,
        "the call is still up after ten minutes"
    );
    let ended: Vec<_> = all.records().into_iter().filter(|r| r.2).collect();
    assert_eq!(ended.len(), 1);
    assert!(!all.requests_to(pbx1().addr, "CANCEL").is_empty());
}

#[test]
fn cancel_without_487_from_the_destination_still_ends_the_call() {
    let mut lab = Lab::new();
    let inv = Invite::new("cancel-no-487@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "r", None));
    lab.at(2_000);
    let out = lab.carrier_says(&inv.cancel());
    let cancel = out.requests_to(pbx1().addr, "CANCEL").pop().unwrap();
    // The PBX answers the CANCEL but never sends its 487.
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&cancel, 200, "r", None));
    let all = Out(run_clock(&mut lab, 2_000));
    assert_eq!(lab.proxy.call_count(), 0, "still up after ten minutes");
    let finals: Vec<u16> = all
        .sent_to(carrier().addr)
        .iter()
        .filter_map(Sent::status)
        .filter(|c| *c >= 300)
        .collect();
    assert!(finals.contains(&487), "{finals:?}");
    let ended: Vec<_> = all.records().into_iter().filter(|r| r.2).collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].1.disposition, Disposition::Cancelled);
}

#[test]
fn answer_racing_the_ring_timeout_cancel_releases_the_callee() {
    let mut lab = Lab::with(Opts {
        ring_timeout: 5,
        ..Opts::default()
    });
    let inv = Invite::new("race@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "r", None));
    lab.at(6_100);
    let out = lab.tick();
    assert_eq!(out.response_to(carrier().addr).status(), Some(480));
    // The PBX answered before it saw our CANCEL.
    lab.at(6_150);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "r", Some(30000)));
    assert!(out.sent_to(carrier().addr).is_empty(), "{out:#?}");
    assert!(out.records().is_empty());
    assert!(out.opened().is_empty());
    // The answered callee must be released: ACK and BYE (RFC 3261 §15, §16.7 step 5 note).
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1, "{out:#?}");
}

#[test]
fn a_cancel_from_anyone_but_the_caller_is_refused() {
    let mut lab = Lab::new();
    let inv = Invite::new("cancel-forged@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "p", None));
    lab.at(1_200);
    let out = lab.recv(udp("203.0.113.66:5060"), wan(), &inv.cancel());
    assert_eq!(out.response_to(sa("203.0.113.66:5060")).status(), Some(403));
    assert!(out.requests_to(pbx1().addr, "CANCEL").is_empty());
    assert_eq!(lab.proxy.call_count(), 1);
    assert_eq!(lab.proxy.stats().refused_wrong_party, 1);
}
