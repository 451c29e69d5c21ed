//! Admission: refusals, overload, the flood guard, limits on what arrives.

use super::*;

#[test]
fn refuses_non_carrier_source_without_record() {
    let mut lab = Lab::new();
    let stranger = udp("192.0.2.50:5060");
    let mut inv = Invite::new("stranger@x");
    inv.via_host = "192.0.2.50:5060".to_owned();
    lab.at(1_000);
    let out = expect_refusal(&mut lab, stranger, wan(), &inv.bytes(), 403);
    assert!(out.records().is_empty());
    assert_eq!(lab.proxy.stats().refused_not_carrier, 1);
    assert_eq!(lab.proxy.stats().calls_offered, 0);
}

#[test]
fn refuses_foreign_domain_with_rejected_record() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("foreign@x");
    inv.ruri = format!("sip:{NUMBER}@calls.example.org");
    lab.at(1_000);
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 403);
    assert!(out.sends()[0].to_tag().is_some());
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c, rejected(&inv.call_id, NUMBER, "", 403, 1_000));
    assert_eq!(lab.proxy.stats().refused_domain, 1);
}

#[test]
fn refuses_route_to_another_host() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("route@x");
    inv.extra.push("Route: <sip:192.0.2.99;lr>".to_owned());
    lab.at(1_000);
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 403);
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c, rejected(&inv.call_id, NUMBER, "", 403, 1_000));
    assert_eq!(lab.proxy.stats().refused_route, 1);

    // A Route naming us is fine (and consumed).
    let mut inv = Invite::new("route-ours@x");
    inv.extra
        .push("Route: <sip:203.0.113.1:5060;lr>".to_owned());
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE");
    assert_eq!(fwd.len(), 1, "{out:#?}");
    assert!(fwd[0].values(HeaderName::Route).is_empty());
}

#[test]
fn refuses_unknown_number_404() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("unknown@x");
    inv.ruri = "sip:+15559999999@203.0.113.1".to_owned();
    inv.to_user = "+15559999999".to_owned();
    lab.at(1_000);
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 404);
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c, rejected(&inv.call_id, "+15559999999", "", 404, 1_000));
    assert_eq!(lab.proxy.stats().refused_number, 1);
}

#[test]
fn refuses_max_forwards_zero_483() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("mf0@x");
    inv.max_forwards = 0;
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 483);
    assert!(out.records().is_empty());
}

#[test]
fn refuses_a_request_carrying_our_via_482() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("loop@x");
    inv.lower_vias
        .push("SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKcg0123456789abcdef".to_owned());
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 482);
    assert!(out.records().is_empty());
    assert_eq!(lab.proxy.stats().refused_loop, 1);
}

#[test]
fn refuses_a_call_id_already_in_a_call_482() {
    let mut lab = Lab::new();
    let inv = Invite::new("merged@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.requests_to(pbx1().addr, "INVITE").len(), 1);
    // Same Call-ID, another branch (a merged request, §8.2.2.2).
    let mut again = inv.clone();
    again.branch = "z9hG4bK-merged-2".to_owned();
    let out = lab.carrier_says(&again.bytes());
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(out.response_to(carrier().addr).status(), Some(482));
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c, rejected(&inv.call_id, NUMBER, "", 482, 1_000));
    assert_eq!(lab.proxy.call_count(), 1);
}

#[test]
fn overload_sheds_with_503_and_retry_after() {
    let mut lab = Lab::with(Opts {
        max_cps: Some(2),
        max_calls: Some(10),
        ..Opts::default()
    });
    lab.at(1_000);
    for i in 0..2 {
        let out = lab.carrier_says(&Invite::new(&format!("cps-{i}@x")).bytes());
        assert_eq!(out.requests_to(pbx1().addr, "INVITE").len(), 1, "{out:#?}");
    }
    let inv = Invite::new("cps-2@x");
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 503);
    let r = out.response_to(carrier().addr);
    let retry: u32 = r
        .msg()
        .single(HeaderName::RetryAfter)
        .unwrap()
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c, rejected(&inv.call_id, NUMBER, CAMPAIGN, 503, 1_000));
    assert_eq!(lab.proxy.stats().calls_shed, 1);
    assert_eq!(lab.proxy.call_count(), 2);
}

#[test]
fn concurrent_call_cap_sheds_and_frees_slots() {
    let mut lab = Lab::with(Opts {
        max_cps: Some(100),
        max_calls: Some(1),
        ..Opts::default()
    });
    lab.at(1_000);
    let first = Invite::new("cap-1@x");
    let out = lab.carrier_says(&first.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    let out = lab.carrier_says(&Invite::new("cap-2@x").bytes());
    assert_eq!(out.response_to(carrier().addr).status(), Some(503));
    // The first call ends busy: its slot is free again.
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 486, "b", None));
    let out = lab.carrier_says(&Invite::new("cap-3@x").bytes());
    assert_eq!(out.requests_to(pbx1().addr, "INVITE").len(), 1, "{out:#?}");
}

#[test]
fn malformed_and_truncated_messages_never_panic() {
    let mut lab = Lab::new();
    // A live call so that responses and in-dialog mutations reach real state.
    let a = answer_call(&mut lab, Invite::new("live@x"), carrier(), pbx1(), 1_000);
    let base = Invite::new("fuzz@x").bytes();
    let muts = mutations(&base);
    assert!(muts.len() > 40, "{}", muts.len());
    let mut t = 2_000;
    for (n, m) in muts.iter().enumerate() {
        t += 10;
        lab.at(t);
        // Each mutation from the carrier, from a stranger, and over TCP.
        let _ = lab.recv(carrier(), wan(), m);
        let _ = lab.recv(udp("192.0.2.7:5060"), wan(), m);
        let _ = lab.recv(tcp("203.0.113.10:40123", n as u64), wan(), m);
        let _ = lab.tick();
    }
    // Mutations of responses and in-dialog requests of the live call.
    for base in [
        pbx_reply(&a.fwd, 200, "pbx-tag", Some(30000)),
        a.dialog.request("BYE", "z9hG4bK-fuzz-bye", 9, None),
        a.dialog.request(
            "INVITE",
            "z9hG4bK-fuzz-re",
            9,
            Some(&sdp("203.0.113.10", 1)),
        ),
    ] {
        for m in mutations(&base) {
            t += 10;
            lab.at(t);
            let _ = lab.recv(pbx1(), lan(), &m);
            let _ = lab.recv(carrier(), wan(), &m);
        }
    }
    assert!(lab.proxy.stats().malformed_dropped > 0);
    // Time runs out for everything without a panic.
    for step in 1..=40 {
        lab.at(t + step * 60_000);
        let _ = lab.tick();
    }
}

#[test]
fn tel_uri_and_visual_separators_are_normalized() {
    let mut lab = Lab::new();
    for (i, ruri) in [
        "tel:+1-555-010-0007",
        "sip:+1(555)010.0007@203.0.113.1;user=phone",
    ]
    .iter()
    .enumerate()
    {
        let mut inv = Invite::new(&format!("norm-{i}@x"));
        inv.ruri = (*ruri).to_owned();
        let out = lab.carrier_says(&inv.bytes());
        let fwd = out.requests_to(pbx1().addr, "INVITE");
        assert_eq!(fwd.len(), 1, "{ruri}: {out:#?}");
        assert_eq!(fwd[0].ruri(), format!("sip:{NUMBER}@198.51.100.10:5060"));
        let calls = lab.proxy.active_calls();
        assert!(calls.iter().all(|c| c.tracking_number == NUMBER));
        assert!(calls.iter().all(|c| c.caller == "+1 •••• 23"));
    }
}

#[test]
fn scanners_are_dropped_even_from_a_carrier() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("scan@x");
    inv.extra.push("User-Agent: friendly-scanner".to_owned());
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    assert!(out.sends().is_empty(), "{out:#?}");
    assert_eq!(lab.proxy.stats().scanner_dropped, 1);
}

#[test]
fn the_per_source_dialog_cap_sheds_with_503_until_a_call_ends() {
    let mut lab = Lab::with(Opts {
        carrier_extra: "max_dialogs = 2",
        ..Opts::default()
    });
    let a = answer_call(&mut lab, Invite::new("cap-a@x"), carrier(), pbx1(), 1_000);
    answer_call(&mut lab, Invite::new("cap-b@x"), carrier(), pbx1(), 2_000);
    lab.at(3_000);
    let out = lab.carrier_says(&Invite::new("cap-c@x").bytes());
    let r = out.response_to(carrier().addr);
    assert_eq!(r.status(), Some(503));
    assert!(r.single(HeaderName::RetryAfter).is_some());
    assert_eq!(out.record().1.disposition, Disposition::Rejected);
    // A call ends: the next one is admitted.
    lab.at(4_000);
    lab.carrier_says(&a.dialog.request("BYE", "z9hG4bK-cap-a-bye", 2, None));
    lab.at(5_000);
    let out = lab.carrier_says(&Invite::new("cap-d@x").bytes());
    assert_eq!(out.requests_to(pbx1().addr, "INVITE").len(), 1, "{out:#?}");
}

#[test]
fn a_carrier_flood_is_rate_limited_but_never_blocked() {
    let mut lab = Lab::with(Opts {
        carrier_extra: "max_requests_per_sec = 50",
        ..Opts::default()
    });
    lab.at(1_000);
    let mut forwarded = 0;
    for i in 0..1000 {
        let out = lab.carrier_says(&Invite::new(&format!("flood-{i}@x")).bytes());
        assert!(!out.0.iter().any(|o| matches!(o, Output::Block { .. })));
        forwarded += out.requests_to(pbx1().addr, "INVITE").len();
    }
    // Burst 2 x 50 at one instant.
    assert_eq!(forwarded, 100);
    assert_eq!(lab.proxy.stats().sources_blocked, 0);
    assert_eq!(lab.proxy.stats().flood_dropped, 900);
}

#[test]
fn cseq_at_the_top_of_the_range_gets_a_clean_400() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("cseq-max@x");
    inv.cseq = u32::MAX;
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.response_to(carrier().addr).status(), Some(400));
    // In a dialog too, and the maximum-length BYE of a call with a high CSeq does not wrap.
    let mut lab = Lab::with(Opts {
        max_call: 60,
        ..Opts::default()
    });
    let mut inv = Invite::new("cseq-high@x");
    inv.cseq = (1 << 31) - 1;
    let a = answer_call(&mut lab, inv, carrier(), pbx1(), 1_000);
    lab.at(2_000);
    let out = lab.carrier_says(&a.dialog.request("INFO", "z9hG4bK-hi", u32::MAX, None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(400));
    lab.at(62_000);
    let out = lab.tick();
    let byes = out.requests_to(pbx1().addr, "BYE");
    assert_eq!(byes.len(), 1, "{out:#?}");
    // The caller's highest CSeq was 2^31 - 1: our BYE toward the callee carries 2^31, not
    // a wrapped value (the test also runs in release, where overflow would not panic).
    assert_eq!(byes[0].cseq(), (1 << 31, "BYE".to_owned()));
}

#[test]
fn branches_and_tags_cannot_be_predicted_from_earlier_ones() {
    let mut lab = Lab::new();
    // 10,000 requests that each get a tag (404) and branches of our own (probes, calls).
    let mut values: Vec<u64> = Vec::new();
    for i in 0..10_000u64 {
        lab.at(1_000 + i);
        let mut inv = Invite::new(&format!("rand-{i}@x"));
        inv.to_user = "+15559999999".to_owned();
        inv.ruri = "sip:+15559999999@203.0.113.1".to_owned();
        let out = lab.carrier_says(&inv.bytes());
        for s in out.sends() {
            if let Some(t) = s.to_tag() {
                if let Some(h) = t.strip_prefix("cg") {
                    values.push(u64::from_str_radix(h, 16).unwrap());
                }
            }
        }
    }
    assert_eq!(values.len(), 10_000);
    // The attacker's first guess: the generator this proxy used to have.
    let hits = values
        .windows(2)
        .filter(|w| xorshift_predict(w[0]) == w[1])
        .count();
    assert_eq!(hits, 0);
    // A linear guess (constant step) and repeats.
    let steps = values
        .windows(3)
        .filter(|w| w[1].wrapping_sub(w[0]) == w[2].wrapping_sub(w[1]))
        .count();
    assert_eq!(steps, 0);
    let mut sorted = values.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), values.len());
    // Each bit is set in about half of them (binomial, 10,000 draws: 6 sigma is 300).
    for bit in 0..64 {
        let ones = values.iter().filter(|v| *v >> bit & 1 == 1).count();
        assert!((4_700..=5_300).contains(&ones), "bit {bit}: {ones}");
    }
}

/// Every line the core logs, whatever a carrier sends: a good call, an unknown number (a
/// person's, perhaps), a malformed request, a foreign domain. None holds the caller's
/// number or name or the number dialled when it is not a configured one.
#[test]
fn log_lines_never_carry_a_callers_number_or_name() {
    let mut lab = Lab::new();
    let mut lines = Vec::new();
    let mut keep = |out: &Out| {
        for o in &out.0 {
            if let Output::Log { line, .. } = o {
                lines.push(line.clone());
            }
        }
    };
    lab.at(1_000);
    keep(&lab.carrier_says(&Invite::new("good@x").bytes()));
    let mut unknown = Invite::new("unknown-pii@x");
    unknown.ruri = "sip:+15557654321@203.0.113.1".to_owned();
    unknown.to_user = "+15557654321".to_owned();
    keep(&lab.carrier_says(&unknown.bytes()));
    let mut foreign = Invite::new("foreign-pii@x");
    foreign.ruri = "sip:5557654321@calls.example.org".to_owned();
    keep(&lab.carrier_says(&foreign.bytes()));
    let mut broken = Invite::new("broken-pii@x");
    broken.max_forwards = 0;
    keep(&lab.carrier_says(&broken.bytes()));
    let garbage = format!("INVITE sip:+15557654321@x SIP/2.0\r\nFrom: \"{CALLER_NAME}\" <sip:{CALLER_NUMBER}@x>\r\n\r\n");
    keep(&lab.carrier_says(garbage.as_bytes()));
    assert!(
        lines.iter().any(|l| l.contains("unknown number")),
        "the refusals are logged: {lines:#?}"
    );
    let national = CALLER_NUMBER.trim_start_matches("+1");
    for l in &lines {
        for planted in [CALLER_NUMBER, national, CALLER_NAME, "5557654321"] {
            assert!(!l.contains(planted), "{planted:?} in a log line: {l}");
        }
    }
}
