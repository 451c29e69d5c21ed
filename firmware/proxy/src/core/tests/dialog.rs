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

/// The callee's Contact and routes come from a 2xx, which is not validated as a whole,
/// and are kept as written. A Contact URI that does not parse (a space in it, or a folded
/// line that would put a CR LF into our request line) never reaches a request of ours:
/// when the call is ended from here the callee gets no BYE, and the caller still gets
/// one.
#[test]
fn a_2xx_contact_that_does_not_parse_gets_no_bye_of_ours() {
    for contact in [
        "<sip:pbx@198.51.100.10 x:5060>",
        "<sip:pbx@198.51.100.10\r\n Injected: 1>",
    ] {
        let mut lab = Lab::with(Opts {
            max_call: 10,
            ..Opts::default()
        });
        lab.at(1_000);
        let inv = Invite::new("bad-contact@x");
        let out = lab.recv(carrier(), wan(), &inv.bytes());
        let fwd = out.requests_to(pbx1().addr, "INVITE").remove(0);
        lab.at(1_200);
        let ok = String::from_utf8(pbx_reply(&fwd, 200, "pbx-tag", Some(30000))).unwrap();
        let ok = ok.replace(
            "Contact: <sip:pbx@198.51.100.10:5060>",
            &format!("Contact: {contact}"),
        );
        assert!(ok.contains(contact));
        let out = lab.pbx_says(pbx1(), ok.as_bytes());
        assert_eq!(out.response_to(carrier().addr).status(), Some(200));
        // The cap fires at 11_200.
        lab.at(11_200);
        let out = lab.tick();
        assert_eq!(out.requests_to(carrier().addr, "BYE").len(), 1, "{out:#?}");
        assert!(out.requests_to(pbx1().addr, "BYE").is_empty(), "{out:#?}");
        assert!(
            out.sends()
                .iter()
                .all(|s| !String::from_utf8_lossy(&s.bytes).contains("Injected")),
            "{out:#?}"
        );
        let (_, c, ended) = out.record();
        assert!(ended);
        assert_eq!(c.duration_ms, 10_000);
    }
}

/// The Call-ID index keeps no copy of the Call-ID (it hashes the one in the call): across
/// its growth and removals, every held dialog's in-dialog requests still find their call,
/// and an ended call's do not.
#[test]
fn in_dialog_requests_find_their_call_across_index_growth_and_removals() {
    let mut lab = Lab::new();
    lab.at(1_000);
    let n = 1500;
    let mut dialogs = Vec::new();
    for i in 0..n {
        let inv = Invite::new(&format!("many-{i}@203.0.113.10"));
        let out = lab.carrier_says(&inv.bytes());
        let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
        let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pbx-1", Some(30000)));
        let ok = out.response_to(carrier().addr);
        dialogs.push(CallerDialog::new(&inv, &ok));
    }
    assert_eq!(lab.proxy.call_count(), n);
    // The first half hangs up.
    for (i, d) in dialogs.iter().enumerate().take(n / 2) {
        let out = lab.carrier_says(&d.request("BYE", &format!("z9hG4bK-bye-{i}"), 2, None));
        assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1, "BYE {i}");
    }
    assert_eq!(lab.proxy.call_count(), n - n / 2);
    // The rest are still found; the ended ones are not (481, nothing forwarded).
    for (i, d) in dialogs.iter().enumerate() {
        let out = lab.carrier_says(&d.request("INFO", &format!("z9hG4bK-info-{i}"), 3, None));
        let forwarded = out.requests_to(pbx1().addr, "INFO").len();
        if i < n / 2 {
            assert_eq!(forwarded, 0, "INFO {i} of an ended call");
            assert_eq!(out.response_to(carrier().addr).status(), Some(481));
        } else {
            assert_eq!(forwarded, 1, "INFO {i}");
        }
    }
}

/// Memory per held dialog is a benchmark figure (`bytes_per_dialog`): a call's state fits
/// the allocator's 384-byte size class (it was 536 bytes, in the 640-byte class, while the
/// held 2xx, two optional times and five separately allocated texts lived in it; then 448
/// while it kept its transaction keys and two local socket addresses). It holds its usual
/// media and its dialog's CSeqs inline, and is exactly 384 now: a field more needs one
/// less.
#[test]
fn a_calls_state_fits_in_384_bytes() {
    let size = std::mem::size_of::<crate::core::Call>();
    assert!(size <= 384, "Call is {size} bytes");
}
