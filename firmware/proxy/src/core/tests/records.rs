//! Records of answered calls: the held 2xx and calls carried over a restart.

use super::*;

#[test]
fn the_2xx_reaches_the_caller_only_once_its_record_is_durable() {
    let mut lab = Lab::new();
    lab.store_at_once = false;
    let inv = Invite::new("held@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let ok = pbx_reply(&fwd, 200, "p", Some(30000));
    let out = lab.pbx_says(pbx1(), &ok);
    let (seq, _, ended) = out.record();
    assert!(!ended);
    assert!(out.sent_to(carrier().addr).is_empty(), "held: {out:#?}");
    // A retransmission of the 2xx meanwhile is held back too.
    lab.at(1_150);
    let out = lab.pbx_says(pbx1(), &ok);
    assert!(out.sent_to(carrier().addr).is_empty(), "{out:#?}");
    // Durable: the 2xx goes up, once.
    let mut raw = Vec::new();
    lab.proxy
        .on_record_stored(now_at(1_160), seq, true, &mut raw);
    let out = Out(raw);
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    let mut raw = Vec::new();
    lab.proxy
        .on_record_stored(now_at(1_170), seq, true, &mut raw);
    assert!(raw.is_empty());

    // A record the store could not keep: the caller never gets the 2xx, the call ends.
    let inv = Invite::new("unstored@x");
    lab.at(2_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(2_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "q", Some(30002)));
    let (seq, _, _) = out.record();
    let mut raw = Vec::new();
    lab.proxy
        .on_record_stored(now_at(2_110), seq, false, &mut raw);
    let out = Out(raw);
    assert!(out
        .sent_to(carrier().addr)
        .iter()
        .all(|s| s.status().is_none()));
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1, "{out:#?}");
    assert!(out.records()[0].2, "the final record is attempted");
    assert_eq!(lab.proxy.call_count(), 1, "the first call goes on");
}

#[test]
fn a_restarted_proxy_carries_on_calls_from_their_records() {
    // The first daemon: an answered call; its answer-time record carries what resumes it.
    let mut first = Lab::with(Opts {
        max_call: 60,
        ..Opts::default()
    });
    let mut records = Vec::new();
    let a = {
        first.at(1_000);
        let inv = Invite::new("resume-a@x");
        let out = first.carrier_says(&inv.bytes());
        let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
        first.at(1_200);
        let out = first.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pa", Some(30000)));
        let ok_up = out.response_to(carrier().addr);
        records.push(out.record().1);
        CallerDialog::new(&inv, &ok_up)
    };
    drop(first);
    let a_rec = records.remove(0);
    assert!(a_rec.resume.is_some(), "{a_rec:?}");
    assert_eq!(a_rec.resume.as_ref().unwrap().from_tag, "ftag-caller");

    // The restarted daemon, 3 s later by the wall clock.
    let mut lab = Lab::with(Opts {
        max_call: 60,
        ..Opts::default()
    });
    lab.at(3_000);
    let mut raw = Vec::new();
    let seq = lab
        .proxy
        .resume(now_at(3_000), &a_rec, &mut raw)
        .expect("resumed");
    let out = Out(raw);
    assert_eq!(
        out.opened(),
        addrs(&[
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "198.51.100.10:30000",
            "198.51.100.10:30001"
        ]),
        "pinholes renewed: {out:#?}"
    );
    assert_eq!(lab.proxy.call_count(), 1);
    assert_eq!(
        lab.proxy.resume(now_at(3_000), &a_rec, &mut Vec::new()),
        None,
        "once"
    );
    // A BYE from anyone else is refused; the caller's BYE is relayed and completes it.
    lab.at(4_000);
    let forged = a.request("BYE", "z9hG4bK-forged-bye", 2, None);
    let out = lab.recv(udp("203.0.113.66:5060"), wan(), &forged);
    let bye = a.request("BYE", "z9hG4bK-resume-a-bye", 2, None);
    assert_eq!(out.response_to(sa("203.0.113.66:5060")).status(), Some(403));
    let out = lab.carrier_says(&bye);
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1, "{out:#?}");
    let (s, c, ended) = out.record();
    assert_eq!(s, seq);
    assert!(ended);
    assert_eq!(c.end_at, Some(UNIX0 + 4_000));
    assert_eq!(c.duration_ms, 4_000 - 1_200);
    assert_eq!(c.caller, Pii::new(CALLER_NUMBER));
    assert_eq!(c.resume, None);
    assert_eq!(out.closed().len(), 4);
    assert_eq!(lab.proxy.call_count(), 0);

    // A resumed call nobody hangs up ends at the maximum length counted from its answer.
    let mut lab = Lab::with(Opts {
        max_call: 60,
        ..Opts::default()
    });
    lab.at(10_000);
    let seq = lab
        .proxy
        .resume(now_at(10_000), &a_rec, &mut Vec::new())
        .unwrap();
    lab.at(1_200 + 60_000 - 1);
    assert!(lab.tick().records().is_empty());
    lab.at(1_200 + 60_000);
    let out = lab.tick();
    let (s, c, ended) = out.record();
    assert_eq!((s, ended), (seq, true));
    assert_eq!(c.end_at, Some(UNIX0 + 61_200));
    assert_eq!(out.closed().len(), 4);
}

#[test]
fn a_call_resumed_under_a_config_that_no_longer_allows_its_media_gets_no_pinholes() {
    // The caller's view of the dialog, and the answer-time record as the store gives it
    // back after a crash (two runs of the same call on a first daemon).
    let a = answer_call(
        &mut Lab::new(),
        Invite::new("narrowed@x"),
        carrier(),
        pbx1(),
        1_000,
    );
    let rec = {
        let mut lab = Lab::new();
        let inv = Invite::new("narrowed@x");
        lab.at(1_000);
        let out = lab.carrier_says(&inv.bytes());
        let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
        lab.at(1_200);
        lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "p", Some(30000)))
            .record()
            .1
    };
    // The restarted daemon's config allows RTP only from port 50000 up.
    let mut lab = Lab::with(Opts {
        media: "rtp_ports = \"50000-60000\"",
        ..Opts::default()
    });
    lab.at(3_000);
    let mut raw = Vec::new();
    let seq = lab.proxy.resume(now_at(3_000), &rec, &mut raw).unwrap();
    let out = Out(raw);
    assert!(out.pinholes().is_empty(), "{out:#?}");
    assert_eq!(lab.proxy.active_calls()[0].pinholes, 0);
    // Its BYE still completes the record.
    lab.at(4_000);
    let out = lab.carrier_says(&a.dialog.request("BYE", "z9hG4bK-narrowed-bye", 2, None));
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1);
    let (s, c, ended) = out.record();
    assert_eq!((s, ended), (seq, true));
    assert!(c.end_at.is_some());
    assert!(out.pinholes().is_empty());
}

#[test]
fn a_node_that_stops_being_active_forgets_its_calls_without_ending_them() {
    let opts = || Opts {
        max_call: 60,
        ..Opts::default()
    };
    let mut lab = Lab::with(opts());
    lab.at(1_000);
    let inv = Invite::new("forget-a@x");
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pa", Some(30000)));
    let ok_up = out.response_to(carrier().addr);
    let (seq, _, _) = out.record();
    let dialog = CallerDialog::new(&inv, &ok_up);
    assert_eq!(lab.proxy.call_count(), 1);

    let cfg = Config::parse(&config_text(&opts()), Path::new("test.toml")).unwrap();
    let settings = Settings::from_config(&cfg, HashMap::new());
    let opened = out.pinholes();
    assert!(
        !opened.is_empty() && opened.iter().all(|p| p.0),
        "{opened:?}"
    );
    let mut closed = Vec::new();
    assert_eq!(
        lab.proxy
            .forget_all(settings, &cfg, now_at(2_000), &mut closed),
        1
    );
    assert_eq!(lab.proxy.call_count(), 0);
    // Its pinholes close: a node that stands down forwards none of its media.
    let closed = Out(closed).pinholes();
    let mut want: Vec<SocketAddr> = opened.iter().map(|p| p.1).collect();
    let mut got: Vec<SocketAddr> = closed.iter().filter(|p| !p.0).map(|p| p.1).collect();
    want.sort();
    got.sort();
    assert_eq!((closed.len(), got), (opened.len(), want), "{closed:?}");
    // Nothing is ended on its behalf: no BYE, no record, even past its maximum length.
    let out = Out(run_clock(&mut lab, 2_000));
    assert!(out.requests_to(pbx1().addr, "BYE").is_empty(), "{out:#?}");
    assert!(out.records().is_empty(), "{out:#?}");
    // Its dialog is unknown now (the peer carries it on).
    let bye = dialog.request("BYE", "z9hG4bK-forget-a-bye", 2, None);
    let out = lab.carrier_says(&bye);
    assert_eq!(out.response_to(carrier().addr).status(), Some(481));
    // A new call never reuses the forgotten call's number.
    let inv = Invite::new("forget-b@x");
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pb", Some(30002)));
    assert!(out.record().0 > seq);
}

#[test]
fn a_resumed_call_relays_its_callees_retransmitted_2xx_to_the_caller() {
    // The first proxy stores the answer and dies before the caller got the 200.
    let mut first = Lab::new();
    first.at(1_000);
    let inv = Invite::new("resume-2xx@x");
    let out = first.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    first.at(1_200);
    let ok = pbx_reply(&fwd, 200, "pa", Some(30000));
    let out = first.pbx_says(pbx1(), &ok);
    let rec = out.record().1;
    drop(first);

    let mut lab = Lab::new();
    lab.at(2_000);
    lab.proxy
        .resume(now_at(2_000), &rec, &mut Vec::new())
        .expect("resumed");
    // The callee retransmits its 200 (no ACK came): relayed to the caller, once per copy.
    let out = lab.pbx_says(pbx1(), &ok);
    let up = out.response_to(carrier().addr);
    assert_eq!(up.status(), Some(200), "{out:#?}");
    // The same 200 from anywhere else is refused and counted.
    let before = lab.proxy.stats().responses_wrong_source;
    let out = lab.recv(udp("198.51.100.99:5060"), lan(), &ok);
    assert!(
        out.0.iter().all(|o| !matches!(o, Output::Send { .. })),
        "{out:#?}"
    );
    assert_eq!(lab.proxy.stats().responses_wrong_source, before + 1);
}

#[test]
fn a_record_whose_parties_the_config_does_not_know_is_not_carried_on() {
    let mut first = Lab::new();
    first.at(1_000);
    let inv = Invite::new("resume-forged@x");
    let out = first.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    first.at(1_200);
    let out = first.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pa", Some(30000)));
    let good = out.record().1;
    let mut lab = Lab::new();
    lab.at(2_000);
    let forged = |f: &dyn Fn(&mut callgate_cdr::Resume)| {
        let mut c = good.clone();
        if let Some(r) = c.resume.as_mut() {
            f(r);
        }
        c
    };
    for (what, c) in [
        (
            "caller not a carrier",
            forged(&|r| r.caller.addr = sa("203.0.113.66:5060")),
        ),
        (
            "callee not a destination",
            forged(&|r| r.callee.addr = sa("198.51.100.99:5060")),
        ),
        (
            "not our socket",
            forged(&|r| r.caller.local = sa("203.0.113.77:5060")),
        ),
    ] {
        let mut out = Vec::new();
        assert_eq!(
            lab.proxy.resume(now_at(2_000), &c, &mut out),
            None,
            "{what}"
        );
        assert!(Out(out).opened().is_empty(), "{what}: no pinhole");
    }
    assert_eq!(lab.proxy.call_count(), 0);
    assert!(lab
        .proxy
        .resume(now_at(2_000), &good, &mut Vec::new())
        .is_some());
}
