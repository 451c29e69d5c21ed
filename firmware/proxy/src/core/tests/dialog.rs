//! In-dialog requests and our own BYEs.

use super::*;

#[test]
fn unknown_dialog_gets_481() {
    let mut lab = Lab::new();
    let bye = format!(
        "BYE sip:pbx@198.51.100.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-ghost\r\nMax-Forwards: 70\r\nFrom: <sip:{CALLER_NUMBER}@203.0.113.10>;tag=a\r\nTo: <sip:{NUMBER}@203.0.113.1>;tag=b\r\nCall-ID: ghost@x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let out = expect_refusal(&mut lab, carrier(), wan(), bye.as_bytes(), 481);
    assert!(out.records().is_empty());
}

#[test]
fn in_dialog_request_from_a_third_address_gets_403() {
    let mut lab = Lab::new();
    let a = answer_call(&mut lab, Invite::new("third@x"), carrier(), pbx1(), 1_000);
    lab.at(5_000);
    let intruder = udp("192.0.2.66:5060");
    let mut d = CallerDialog::new(&a.inv, &a.ok_up);
    d.via_host = "192.0.2.66:5060".to_owned();
    let out = lab.recv(intruder, wan(), &d.request("BYE", "z9hG4bK-evil", 2, None));
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(out.response_to(intruder.addr).status(), Some(403));
    assert!(out.records().is_empty());
    assert!(out.pinholes().is_empty());
    assert_eq!(lab.proxy.call_count(), 1);

    // Also from the other PBX, a destination we trust, with the caller's tags.
    let out = lab.recv(pbx2(), lan(), &d.request("BYE", "z9hG4bK-evil2", 3, None));
    assert_eq!(out.response_to(pbx2().addr).status(), Some(403));
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(lab.proxy.call_count(), 1);
    let _ = a.fwd;
}

#[test]
fn max_call_length_ends_the_call_both_ways() {
    let mut lab = Lab::with(Opts {
        max_call: 10,
        ..Opts::default()
    });
    let a = answer_call(&mut lab, Invite::new("long@x"), carrier(), pbx1(), 1_000);
    // Answered at 1_200: the cap fires at 11_200.
    lab.at(11_199);
    let out = lab.tick();
    assert!(out.records().is_empty(), "{out:#?}");
    lab.at(11_200);
    let out = lab.tick();
    let to_caller = out.requests_to(carrier().addr, "BYE");
    let to_callee = out.requests_to(pbx1().addr, "BYE");
    assert_eq!(to_caller.len(), 1, "{out:#?}");
    assert_eq!(to_callee.len(), 1, "{out:#?}");
    assert_eq!(to_caller[0].local, wan());
    assert_eq!(
        to_caller[0].ruri(),
        format!("sip:{CALLER_NUMBER}@203.0.113.10:5060")
    );
    assert_eq!(to_callee[0].ruri(), "sip:pbx@198.51.100.10:5060");
    assert_eq!(to_callee[0].local, lan());
    // Toward the callee, From/To as in the dialog; toward the caller, swapped.
    assert_eq!(
        to_callee[0].msg().from().unwrap().tag(),
        Some("ftag-caller")
    );
    assert_eq!(to_caller[0].msg().to().unwrap().tag(), Some("ftag-caller"));
    assert_eq!(to_caller[0].msg().from().unwrap().tag(), Some("pbx-tag"));
    assert!(to_callee[0].cseq().0 > a.inv.cseq);
    assert_eq!(out.closed().len(), 4);
    let (seq, c, ended) = out.record();
    assert!(ended);
    assert_eq!(seq, a.seq);
    assert_eq!(c.duration_ms, 10_000);
    assert_eq!(c.disposition, Disposition::Answered);
    assert_eq!(lab.proxy.call_count(), 0);
}
