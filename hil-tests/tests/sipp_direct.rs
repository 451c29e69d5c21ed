#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The sipp scenarios against each other, without a proxy: carrier 203.0.113.10 →
//! pbx 198.51.100.10 through appliance A's plain forwarding (no daemon running).
//! Validates the scenarios and the `hil_tests::sipp` fixture.

use std::net::IpAddr;
use std::time::Duration;

use hil_tests::sipp::{Sipp, SippResult, Transport};
use hil_tests::{addr, Host, Lab};

const CALLS: u64 = 5;
const READY: Duration = Duration::from_secs(5);
const LIMIT: Duration = Duration::from_secs(20);
const SERVICE: &str = "+18005550100";

fn lab() -> Lab {
    Lab::start(&[Host::Carrier, Host::A, Host::Pbx]).unwrap()
}

/// Runs `uac` against `uas` (started with `-m CALLS`, so it exits by itself), returns
/// (caller, callee) results. `tweak` adjusts the caller.
fn pair<'l>(
    lab: &'l Lab,
    uac: &str,
    uas: &str,
    t: Transport,
    v6: bool,
    tweak: impl FnOnce(Sipp<'l>) -> Sipp<'l>,
) -> (SippResult, SippResult) {
    let (carrier_ip, pbx_ip): (IpAddr, IpAddr) = if v6 {
        (addr::CARRIER_V6.into(), addr::PBX_V6.into())
    } else {
        (addr::CARRIER_V4.into(), addr::PBX_V4.into())
    };
    let callee = Sipp::uas(&lab.ns(Host::Pbx), uas)
        .local(pbx_ip, 5060)
        .transport(t)
        .calls(CALLS)
        .duration(Duration::from_millis(100)) // ring time of uas.xml
        .timeout(LIMIT)
        .spawn()
        .unwrap();
    callee.wait_ready(READY).unwrap();
    let caller = Sipp::uac(&lab.ns(Host::Carrier), uac)
        .local(carrier_ip, 5060)
        .remote(pbx_ip, 5060)
        .transport(t)
        .service(SERVICE)
        .calls(CALLS)
        .rate(20.0)
        .duration(Duration::from_millis(200))
        .timeout(LIMIT);
    let caller = tweak(caller).run().unwrap();
    let callee = callee.wait(Duration::from_secs(5)).unwrap();
    (caller, callee)
}

fn assert_all_ok(r: &SippResult) {
    assert_eq!(r.successful, CALLS, "{}", r.summary());
    assert_eq!(r.failed, 0, "{}", r.summary());
    assert_eq!(r.exit_code, Some(0), "{}", r.summary());
    assert!(!r.timed_out, "{}", r.summary());
}

#[test]
fn answered_calls_udp_tcp() {
    let lab = lab();
    for t in [Transport::Udp, Transport::Tcp] {
        let (caller, callee) = pair(&lab, "uac.xml", "uas.xml", t, false, |s| s);
        assert_all_ok(&caller);
        assert_all_ok(&callee);
        assert_eq!(caller.final_codes, vec![200; 5], "{}", caller.summary());
    }
}

#[test]
fn answered_calls_ipv6() {
    let lab = lab();
    let (caller, callee) = pair(&lab, "uac.xml", "uas.xml", Transport::Udp, true, |s| s);
    assert_all_ok(&caller);
    assert_all_ok(&callee);
}

#[test]
fn reinvite_udp_tcp() {
    let lab = lab();
    for t in [Transport::Udp, Transport::Tcp] {
        let (caller, callee) = pair(&lab, "uac_reinvite.xml", "uas.xml", t, false, |s| s);
        assert_all_ok(&caller);
        assert_all_ok(&callee);
        assert_eq!(caller.code_count(200), 5, "{}", caller.summary());
    }
}

#[test]
fn rejected_calls_report_their_code() {
    let lab = lab();
    for (t, uas, code) in [
        (Transport::Udp, "uas_busy.xml", 486),
        (Transport::Tcp, "uas_busy.xml", 486),
        (Transport::Udp, "uas_503.xml", 503),
    ] {
        let (caller, callee) = pair(&lab, "uac_reject.xml", uas, t, false, |s| s);
        // A refusal is what uac_reject wants: a successful call for sipp.
        assert_all_ok(&caller);
        assert_all_ok(&callee);
        assert_eq!(caller.final_codes, vec![code; 5], "{}", caller.summary());
    }
    // An answered call is a failure for uac_reject (and still hung up properly).
    let (caller, callee) = pair(
        &lab,
        "uac_reject.xml",
        "uas.xml",
        Transport::Udp,
        false,
        |s| s,
    );
    assert_eq!(caller.failed, CALLS, "{}", caller.summary());
    assert_eq!(caller.code_count(200), 5, "{}", caller.summary());
    assert_all_ok(&callee);
}

#[test]
fn cancel_while_ringing_udp_tcp() {
    let lab = lab();
    for t in [Transport::Udp, Transport::Tcp] {
        let (caller, callee) = pair(&lab, "uac_cancel.xml", "uas_noanswer.xml", t, false, |s| s);
        assert_all_ok(&caller);
        assert_all_ok(&callee);
        assert_eq!(caller.final_codes, vec![487; 5], "{}", caller.summary());
    }
}

#[test]
fn ignoring_callee_times_the_caller_out_and_keeps_running() {
    let lab = lab();
    let callee = Sipp::uas(&lab.ns(Host::Pbx), "uas_ignore.xml")
        .local(addr::PBX_V4, 5060)
        .timeout(LIMIT)
        .spawn()
        .unwrap();
    callee.wait_ready(READY).unwrap();
    let caller = Sipp::uac(&lab.ns(Host::Carrier), "uac_reject.xml")
        .local(addr::CARRIER_V4, 5060)
        .remote(addr::PBX_V4, 5060)
        .service(SERVICE)
        .calls(2)
        .recv_timeout(Some(Duration::from_millis(1500)))
        .timeout(LIMIT)
        .run()
        .unwrap();
    assert_eq!(caller.failed, 2, "{}", caller.summary());
    assert_eq!(caller.successful, 0, "{}", caller.summary());
    assert!(caller.final_codes.is_empty(), "{}", caller.summary());
    assert!(
        caller.retransmissions > 0,
        "UDP INVITEs are retransmitted: {}",
        caller.summary()
    );
    assert!(callee.is_running(), "uas_ignore must not exit by itself");
    let callee = callee.stop().unwrap();
    assert_eq!(callee.created, 2, "{}", callee.summary());
    assert_eq!(callee.successful, 0, "{}", callee.summary());
}

#[test]
fn port_clash_is_an_error() {
    let lab = lab();
    let pbx = lab.ns(Host::Pbx);
    let first = Sipp::uas(&pbx, "uas.xml")
        .local(addr::PBX_V4, 5060)
        .timeout(LIMIT)
        .spawn()
        .unwrap();
    first.wait_ready(READY).unwrap();
    let second = Sipp::uas(&pbx, "uas.xml")
        .local(addr::PBX_V4, 5060)
        .media_port(30000)
        .timeout(LIMIT)
        .spawn()
        .unwrap();
    let err = second.wait(Duration::from_secs(5)).unwrap_err().to_string();
    assert!(err.contains("254"), "{err}");
    // The first one is unharmed; stopping it with no calls is a clean result.
    let r = first.stop().unwrap();
    assert_eq!(r.created, 0, "{}", r.summary());
}
