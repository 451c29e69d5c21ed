//! The SIP proxy end to end: sipp on the carrier and the pbx (over UDP, TCP, and TLS
//! through stunnel), the real daemon on appliance A (config/lab.toml), real nftables, the
//! encrypted store. Each test asserts on
//! what the peers saw (sipp's counts and final codes), on the call records the daemon
//! stored, and for media on packets that did or did not cross the firewall.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hil_tests::calls::{
    active_calls, cdrs, config, lab_toml, new_lab, now_ms, start, stats, u, wait_cdrs, CALLER,
    CALLER_NAME, TCP_NUMBER, UDP_NUMBER,
};
use hil_tests::sipp::{Sipp, SippHandle, SippResult, Transport};
use hil_tests::tls::{
    enrol, through_stunnel, tls_route_config, SipPki, Stunnel, TLS_NUMBER, TLS_PORT,
};
use hil_tests::{addr, Appliance, Host, Lab, Token};
use serde_json::Value;

/// How a test's calls travel: UDP or TCP on both sides, or TLS on both (sipp over TCP
/// behind stunnel at the carrier and at the PBX; see hil-tests/src/tls.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    Udp,
    Tcp,
    Tls,
}

fn legs() -> [Leg; 3] {
    [Leg::Udp, Leg::Tcp, Leg::Tls]
}

impl Leg {
    fn number(self) -> &'static str {
        match self {
            Leg::Udp => UDP_NUMBER,
            Leg::Tcp => TCP_NUMBER,
            Leg::Tls => TLS_NUMBER,
        }
    }
    fn campaign(self) -> &'static str {
        match self {
            Leg::Udp => "spring-radio",
            Leg::Tcp => "tv-spot",
            Leg::Tls => "tls-trunk",
        }
    }
    /// The destination a record names for a call to `ip`.
    fn dest(self, ip: Ipv4Addr) -> String {
        match self {
            Leg::Udp => format!("sip:{ip}:5060;transport=udp"),
            Leg::Tcp => format!("sip:{ip}:5060;transport=tcp"),
            Leg::Tls => format!("sip:{ip}:{TLS_PORT};transport=tls"),
        }
    }
}

/// A lab whose appliance A also carries calls over TLS: config/lab.toml with the TLS
/// listener and the TLS route (plus `edits`), A enrolled, the carrier's stunnel up.
struct Env<'l> {
    lab: &'l Lab,
    pki: SipPki,
    _carrier: Stunnel,
}

fn start_env<'l>(lab: &'l Lab, edits: &[(&str, &str)]) -> (Appliance<'l>, Env<'l>) {
    let pki = SipPki::new().expect("pki");
    let a = start(
        lab,
        &tls_route_config(&pki.pbx.cert_pem().expect("pbx ca"), edits),
    );
    enrol(&a, &pki).expect("enrol");
    let carrier = Stunnel::client(&lab.ns(Host::Carrier), &pki, None).expect("stunnel");
    (
        a,
        Env {
            lab,
            pki,
            _carrier: carrier,
        },
    )
}

/// A callee, and over TLS the stunnel in front of it.
struct Callee<'l> {
    sipp: SippHandle<'l>,
    _tunnel: Option<Stunnel>,
}

impl Callee<'_> {
    fn stop(self) -> hil_tests::Result<SippResult> {
        self.sipp.stop()
    }
}

impl<'l> Env<'l> {
    /// A callee on `ip` running `scenario` over `leg`, ready to take calls.
    fn callee(&self, scenario: &str, ip: Ipv4Addr, leg: Leg) -> Callee<'l> {
        let t = if leg == Leg::Udp {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let sipp = callee(self.lab, scenario, ip, t);
        let tunnel = (leg == Leg::Tls).then(|| {
            let id = self
                .pki
                .pbx
                .peer_cert("pbx", &format!("IP:{ip}"))
                .expect("pbx certificate");
            Stunnel::pbx(&self.lab.ns(Host::Pbx), &self.pki, ip, &id).expect("pbx stunnel")
        });
        Callee {
            sipp,
            _tunnel: tunnel,
        }
    }

    /// A caller on the carrier running `scenario` over `leg` to appliance A.
    fn caller(&self, scenario: &str, leg: Leg) -> Sipp<'l> {
        match leg {
            Leg::Udp => caller(self.lab, scenario, Transport::Udp).service(UDP_NUMBER),
            Leg::Tcp => caller(self.lab, scenario, Transport::Tcp).service(TCP_NUMBER),
            Leg::Tls => {
                through_stunnel(caller(self.lab, scenario, Transport::Tcp)).service(TLS_NUMBER)
            }
        }
    }
}

fn number(t: Transport) -> &'static str {
    match t {
        Transport::Udp => UDP_NUMBER,
        Transport::Tcp => TCP_NUMBER,
    }
}

/// A callee on `ip`:5060 running `scenario`, ready to take calls.
fn callee<'l>(lab: &'l Lab, scenario: &str, ip: Ipv4Addr, t: Transport) -> SippHandle<'l> {
    callee_with(lab, Sipp::uas(&lab.ns(Host::Pbx), scenario), ip, t)
}

fn callee_with<'l>(lab: &'l Lab, s: Sipp<'l>, ip: Ipv4Addr, t: Transport) -> SippHandle<'l> {
    let _ = lab;
    let h = s
        .local(ip, 5060)
        .transport(t)
        .spawn()
        .expect("callee starts");
    h.wait_ready(Duration::from_secs(10)).expect("callee ready");
    h
}

/// A caller on the carrier sending to appliance A's WAN address.
fn caller<'l>(lab: &'l Lab, scenario: &str, t: Transport) -> Sipp<'l> {
    Sipp::uac(&lab.ns(Host::Carrier), scenario)
        .local(addr::CARRIER_V4, 5060)
        .remote(addr::A_WAN_V4, 5060)
        .transport(t)
        .service(number(t))
        .caller(CALLER, CALLER_NAME)
        .calls(1)
}

fn dest(ip: Ipv4Addr, t: Transport) -> String {
    format!(
        "sip:{ip}:5060;transport={}",
        match t {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    )
}

#[test]
fn basic_call_records_every_field_udp_tcp_and_tls() {
    let lab = new_lab();
    let (a, env) = start_env(&lab, &[]);
    for (i, t) in legs().into_iter().enumerate() {
        let pbx = env.callee("uas.xml", addr::PBX_V4, t);
        let r = env
            .caller("uac.xml", t)
            .duration(Duration::from_millis(1500))
            .run()
            .expect("caller runs");
        assert_eq!((r.successful, r.failed), (1, 0), "{t:?}: {}", r.summary());
        assert_eq!(r.final_codes, vec![200], "{t:?}");
        let _ = pbx.stop();
        let all = wait_cdrs(&a, i + 1);
        assert_eq!(all.len(), i + 1, "{t:?}: one record per call: {all:#?}");
        let c = &all[i];
        assert_eq!(c["tracking_number"], t.number());
        assert_eq!(c["campaign"], t.campaign());
        assert_eq!(c["caller"], CALLER, "caller number (PII) recorded");
        assert_eq!(c["caller_name"], CALLER_NAME);
        assert_eq!(c["destination"], t.dest(addr::PBX_V4));
        assert_eq!(c["disposition"], "answered");
        assert_eq!(c["final_code"], 200);
        assert_eq!(c["appliance"], "lab-a");
        assert!(c["call_id"].as_str().is_some_and(|s| !s.is_empty()));
        let (inv, ring, ans, end) = (
            u(&c["invite_at"]),
            u(&c["ring_at"]),
            u(&c["answer_at"]),
            u(&c["end_at"]),
        );
        assert!(
            inv <= ring && ring <= ans && ans <= end,
            "times in order: {c}"
        );
        assert_eq!(u(&c["duration_ms"]), end - ans, "duration = end - answer");
        // The caller held the call 1.5 s after the ACK before its BYE.
        assert!(
            u(&c["duration_ms"]) >= 1_400,
            "duration covers the hold time: {c}"
        );
        assert!(active_calls(&a).is_empty(), "no call left active");
    }
}

#[test]
fn busy_no_answer_cancel_udp_tcp_and_tls() {
    let lab = new_lab();
    // Ring for at most 2 s before the proxy gives up (no-answer).
    let (a, env) = start_env(&lab, &[("ring_timeout_secs = 30", "ring_timeout_secs = 2")]);
    let mut expected: Vec<(&str, u64)> = Vec::new();
    for t in legs() {
        // Busy: 486 from the pbx reaches the caller.
        let pbx = env.callee("uas_busy.xml", addr::PBX_V4, t);
        let r = env.caller("uac_reject.xml", t).run().expect("caller");
        assert_eq!(r.final_codes, vec![486], "{t:?} busy: {}", r.summary());
        let _ = pbx.stop();
        expected.push(("busy", 486));

        // No answer: the pbx rings forever; the proxy cancels it and answers 480.
        let pbx = env.callee("uas_noanswer.xml", addr::PBX_V4, t);
        let r = env.caller("uac_reject.xml", t).run().expect("caller");
        assert_eq!(r.final_codes, vec![480], "{t:?} no-answer: {}", r.summary());
        let p = pbx.stop().expect("pbx stats");
        assert_eq!(
            p.successful,
            1,
            "{t:?}: the pbx saw the CANCEL and finished its call: {}",
            p.summary()
        );
        expected.push(("no_answer", 480));

        // The caller cancels while it rings.
        let pbx = env.callee("uas_noanswer.xml", addr::PBX_V4, t);
        let r = env
            .caller("uac_cancel.xml", t)
            .duration(Duration::from_millis(300))
            .run()
            .expect("caller");
        assert_eq!(r.final_codes, vec![487], "{t:?} cancel: {}", r.summary());
        assert_eq!(r.successful, 1, "{t:?}: {}", r.summary());
        let p = pbx.stop().expect("pbx stats");
        assert_eq!(
            p.successful,
            1,
            "{t:?}: the CANCEL reached the pbx: {}",
            p.summary()
        );
        expected.push(("cancelled", 487));
    }
    let all = wait_cdrs(&a, expected.len());
    let got: Vec<(String, u64)> = all
        .iter()
        .map(|c| {
            (
                c["disposition"].as_str().unwrap_or("").to_owned(),
                u(&c["final_code"]),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = expected.iter().map(|(d, c)| (d.to_string(), *c)).collect();
    assert_eq!(got, want, "exactly one record per call, in order");
    for c in &all {
        assert!(c["answer_at"].is_null(), "unanswered: {c}");
        assert_eq!(c["duration_ms"], 0);
        assert_eq!(c["caller"], CALLER);
    }
    assert!(active_calls(&a).is_empty());
}

#[test]
fn failover_on_503_and_on_silence_udp_tcp_and_tls() {
    let lab = new_lab();
    let (a, env) = start_env(&lab, &[]);
    let mut n = 0;
    for t in legs() {
        for first in ["uas_503.xml", "uas_ignore.xml"] {
            let bad = env.callee(first, addr::PBX_V4, t);
            let good = env.callee("uas.xml", addr::PBX2_V4, t);
            let r = env
                .caller("uac.xml", t)
                .duration(Duration::from_millis(200))
                .run()
                .expect("caller");
            assert_eq!(
                (r.successful, r.failed),
                (1, 0),
                "{t:?} {first}: {}",
                r.summary()
            );
            let g = good.stop().expect("second pbx");
            assert_eq!(
                g.successful,
                1,
                "{t:?} {first}: answered by the second destination: {}",
                g.summary()
            );
            let _ = bad.stop();
            n += 1;
            let all = wait_cdrs(&a, n);
            let c = &all[n - 1];
            assert_eq!(c["disposition"], "answered", "{t:?} {first}: {c}");
            assert_eq!(c["destination"], t.dest(addr::PBX2_V4), "{t:?} {first}");
        }
    }
    let st = stats(&a);
    assert!(u(&st["failovers"]) >= 6, "failovers counted: {st}");
}

#[test]
fn reinvite_udp_tcp_and_tls() {
    let lab = new_lab();
    let (a, env) = start_env(&lab, &[]);
    for (i, t) in legs().into_iter().enumerate() {
        let pbx = env.callee("uas.xml", addr::PBX_V4, t);
        let r = env
            .caller("uac_reinvite.xml", t)
            .calls(3)
            .duration(Duration::from_millis(200))
            .run()
            .expect("caller");
        assert_eq!((r.successful, r.failed), (3, 0), "{t:?}: {}", r.summary());
        let _ = pbx.stop();
        let all = wait_cdrs(&a, 3 * (i + 1));
        assert_eq!(all.len(), 3 * (i + 1));
        assert!(all.iter().all(|c| c["disposition"] == "answered"));
    }
}

#[test]
fn a_thousand_calls_leave_a_thousand_records_udp_and_tls() {
    let lab = new_lab();
    let (a, env) = start_env(&lab, &[]);
    for (i, t) in [Leg::Udp, Leg::Tls].into_iter().enumerate() {
        let pbx = env.callee("uas.xml", addr::PBX_V4, t);
        let r = env
            .caller("uac.xml", t)
            .calls(1000)
            .rate(100.0)
            .duration(Duration::from_millis(100))
            .timeout(Duration::from_secs(120))
            .run()
            .expect("caller");
        assert_eq!(
            (r.successful, r.failed),
            (1000, 0),
            "{t:?}: {}",
            r.summary()
        );
        let _ = pbx.stop();
        let n = 1000 * (i + 1);
        let all = wait_cdrs(&a, n);
        assert_eq!(all.len(), n, "{t:?}: one record per call");
        assert!(all
            .iter()
            .all(|c| c["disposition"] == "answered" && c["final_code"] == 200));
        let mut ids: Vec<&str> = all.iter().filter_map(|c| c["call_id"].as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "{t:?}: distinct calls");
        let st = stats(&a);
        assert_eq!(u(&st["calls_answered"]), n as u64, "{st}");
        assert_eq!(u(&st["active_calls"]), 0);
    }
}

/// An orderly stop (SIGTERM) right after the last call ended: every call's final record is
/// made durable before the daemon exits.
#[test]
fn a_stop_right_after_the_calls_keeps_every_record() {
    let lab = new_lab();
    let mut a = start(&lab, &lab_toml());
    let pbx = callee(&lab, "uas.xml", addr::PBX_V4, Transport::Udp);
    let r = caller(&lab, "uac.xml", Transport::Udp)
        .calls(200)
        .rate(100.0)
        .timeout(Duration::from_secs(60))
        .run()
        .expect("caller");
    assert_eq!((r.successful, r.failed), (200, 0), "{}", r.summary());
    assert_eq!(a.stop(), Some(0), "clean exit");
    let _ = pbx.stop();
    a.launch().expect("daemon restarts");
    let all: Vec<Value> = cdrs(&a)
        .into_iter()
        .filter(|c| !c["end_at"].is_null() && c["disposition"] == "answered")
        .collect();
    assert_eq!(
        all.len(),
        200,
        "every ended call's record survived the stop"
    );
}

/// A copy of `scenario` edited by `f`, written into `dir`; its path.
fn edited(
    dir: &std::path::Path,
    scenario: &str,
    name: &str,
    f: impl Fn(String) -> String,
) -> String {
    let text = std::fs::read_to_string(hil_tests::sipp::scenario_path(scenario)).expect("scenario");
    let path = dir.join(name);
    std::fs::write(&path, f(text)).expect("write scenario");
    path.to_string_lossy().into_owned()
}

/// A copy of a scenario with its SDP port fixed (sipp binds `-mp` itself, so the probes
/// listen on a port only the SDP names).
fn with_sdp_port(scenario: &str, port: u16, dir: &std::path::Path) -> String {
    edited(dir, scenario, &format!("{port}-{scenario}"), |t| {
        t.replace("m=audio [media_port]", &format!("m=audio {port}"))
    })
}

#[test]
fn media_passes_only_for_the_negotiated_ports_and_only_during_the_call_udp_and_tls() {
    let lab = new_lab();
    let (a, env) = start_env(&lab, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (offer_port, answer_port, other_port) = (47000u16, 46000u16, 46010u16);
    let carrier = lab.ns(Host::Carrier);
    let pbx_ns = lab.ns(Host::Pbx);
    // Listeners where the SDP says media goes.
    let at_pbx = pbx_ns
        .udp_listen(addr::PBX_V4, answer_port)
        .expect("listen");
    let at_pbx_other = pbx_ns.udp_listen(addr::PBX_V4, other_port).expect("listen");
    let at_carrier = carrier
        .udp_listen(addr::CARRIER_V4, offer_port)
        .expect("listen");
    // A third address on the WAN side, where nobody signalled media.
    let at_third = carrier
        .udp_listen(addr::CARRIER_V4_ALT, offer_port)
        .expect("listen");
    let probe_from = |from: &hil_tests::Ns<'_>,
                      src: Option<Ipv4Addr>,
                      dst: Ipv4Addr,
                      port: u16,
                      l: &hil_tests::UdpProbeListener| {
        let t = Token::new();
        from.udp_send(src.map(IpAddr::V4), IpAddr::V4(dst), port, &t);
        l.wait_for(&t, Duration::from_millis(700))
    };
    let probe =
        |from: &hil_tests::Ns<'_>, dst: Ipv4Addr, port: u16, l: &hil_tests::UdpProbeListener| {
            probe_from(from, None, dst, port, l)
        };
    // Before any call: nothing passes.
    assert!(
        !probe(&carrier, addr::PBX_V4, answer_port, &at_pbx),
        "no pinhole before the call"
    );

    for t in [Leg::Udp, Leg::Tls] {
        let pbx = callee_with(
            &lab,
            Sipp::uas(&pbx_ns, &with_sdp_port("uas.xml", answer_port, dir.path())),
            addr::PBX_V4,
            Transport::Udp,
        );
        // The carrier's signalling over UDP, then over TLS (the PBX's over UDP: the number of
        // a UDP route); the media rules are the same.
        let call = env
            .caller(&with_sdp_port("uac.xml", offer_port, dir.path()), t)
            .service(UDP_NUMBER)
            .duration(Duration::from_secs(8))
            .spawn()
            .expect("caller");
        // Wait for the call to be answered.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !active_calls(&a).iter().any(|c| c["state"] == "answered") {
            assert!(
                std::time::Instant::now() < deadline,
                "{t:?}: call not answered"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            probe(&carrier, addr::PBX_V4, answer_port, &at_pbx),
            "RTP carrier → pbx passes during the call"
        );
        assert!(
            probe(&pbx_ns, addr::CARRIER_V4, offer_port, &at_carrier),
            "RTP pbx → carrier passes during the call"
        );
        assert!(
            !probe(&carrier, addr::PBX_V4, other_port, &at_pbx_other),
            "a port not negotiated is dropped"
        );
        assert!(
            !probe_from(
                &carrier,
                Some(addr::CARRIER_V4_ALT),
                addr::PBX_V4,
                answer_port,
                &at_pbx
            ),
            "a third WAN address sending to the PBX's media port is dropped"
        );
        assert!(
            !probe(&pbx_ns, addr::CARRIER_V4_ALT, offer_port, &at_third),
            "the PBX sending to a third address is dropped"
        );
        let r = call.wait(Duration::from_secs(30)).expect("caller ends");
        assert_eq!((r.successful, r.failed), (1, 0), "{t:?}: {}", r.summary());
        let _ = pbx.stop();
        // After the BYE the pinholes are gone.
        assert!(
            !probe(&carrier, addr::PBX_V4, answer_port, &at_pbx),
            "RTP stops after BYE"
        );
        assert!(
            !probe(&pbx_ns, addr::CARRIER_V4, offer_port, &at_carrier),
            "RTP stops after BYE (reverse)"
        );
    }
    let st = stats(&a);
    assert!(
        u(&st["pinholes_opened"]) >= 4 && u(&st["pinholes_closed"]) >= 4,
        "{st}"
    );
}

#[test]
fn never_an_open_relay_over_udp_or_tls() {
    let lab = new_lab();
    let (a, env) = start_env(&lab, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    // A silent listener where calls would go: no INVITE may reach it (the proxy's own
    // OPTIONS health probes may).
    let pbx = lab
        .ns(Host::Pbx)
        .udp_listen_silent(addr::PBX_V4, 5060)
        .expect("listen");
    let foreign = edited(dir.path(), "uac_reject.xml", "foreign.xml", |t| {
        t.replacen(
            "INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0",
            "INVITE sip:[service]@calls.example.net SIP/2.0",
            1,
        )
    });
    let routed = edited(dir.path(), "uac_reject.xml", "route.xml", |t| {
        t.replacen(
            "Max-Forwards: 70",
            "Max-Forwards: 70\n      Route: <sip:198.51.100.99:5060;lr>",
            1,
        )
    });
    let cases: [(&str, String, &str, u16); 3] = [
        (
            "unknown number",
            hil_tests::sipp::scenario_path("uac_reject.xml")
                .to_string_lossy()
                .into_owned(),
            "+15559990000",
            404,
        ),
        ("foreign domain", foreign, UDP_NUMBER, 403),
        ("Route elsewhere", routed, UDP_NUMBER, 403),
    ];
    // The carrier over UDP, then over TLS (the numbers of a UDP route: no INVITE may reach
    // the silent listener either way).
    for t in [Leg::Udp, Leg::Tls] {
        for (what, scenario, num, code) in &cases {
            let r = env
                .caller(scenario, t)
                .service(*num)
                .calls(3)
                .run()
                .expect("caller");
            assert_eq!(
                r.final_codes,
                vec![*code; 3],
                "{t:?} {what}: {}",
                r.summary()
            );
        }
    }
    let invites = pbx
        .datagrams()
        .iter()
        .filter(|d| d.data.starts_with(b"INVITE"))
        .count();
    assert_eq!(invites, 0, "no INVITE reached the call segment");
    let all = wait_cdrs(&a, 18);
    assert_eq!(all.len(), 18);
    assert!(all
        .iter()
        .all(|c| c["disposition"] == "rejected" && c["destination"] == ""));
    let st = stats(&a);
    assert_eq!(u(&st["refused_number"]), 6, "{st}");
    assert_eq!(u(&st["refused_domain"]), 6, "{st}");
    assert_eq!(u(&st["refused_route"]), 6, "{st}");
}

#[test]
fn overload_sheds_with_503_and_admitted_calls_succeed() {
    let lab = new_lab();
    let a = start(&lab, &config(&[("max_cps = 200", "max_cps = 20")]));
    let pbx = callee(&lab, "uas.xml", addr::PBX_V4, Transport::Udp);
    // Twice the cap for 10 s.
    let r = caller(&lab, "uac.xml", Transport::Udp)
        .calls(400)
        .rate(40.0)
        .duration(Duration::from_millis(100))
        .timeout(Duration::from_secs(90))
        .run()
        .expect("caller");
    let _ = pbx.stop();
    // uac.xml fails a call on the 503 (an unexpected message for it); the proxy counts
    // and records each one it shed.
    let st = stats(&a);
    let shed = u(&st["calls_shed"]) as usize;
    let ok = r.code_count(200);
    assert!(shed > 0, "some calls were shed: {st}");
    assert_eq!(
        ok + shed,
        400,
        "every call was answered or shed: {} / {st}",
        r.summary()
    );
    assert_eq!(
        r.failed as usize,
        shed,
        "the only failures are the shed calls: {}",
        r.summary()
    );
    // Admitted calls succeed (at least 99.9%: with 400 calls, all of them).
    assert_eq!(
        r.successful as usize,
        ok,
        "admitted calls complete: {}",
        r.summary()
    );
    assert!(
        ok >= 200,
        "the cap admits about 20/s for 10 s plus the burst: {ok}"
    );
    assert_eq!(u(&st["calls_answered"]) as usize, ok, "{st}");
    // No retransmission collapse: the caller hardly ever had to retransmit.
    assert!(r.retransmissions < 40, "retransmissions: {}", r.summary());
    let all = wait_cdrs(&a, 400);
    assert_eq!(all.iter().filter(|c| c["final_code"] == 503).count(), shed);
}

#[test]
fn a_flooding_source_is_blocked_while_the_carrier_keeps_calling() {
    let lab = new_lab();
    // The firewall lets the whole carrier /28 reach SIP; only .10 is a carrier peer.
    let cfg = config(&[(
        "name = \"carrier-sip-udp\"\nzone = \"wan\"\nsources = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]",
        "name = \"carrier-sip-udp\"\nzone = \"wan\"\nsources = [\"203.0.113.0/28\", \"203.0.113.64/28\", \"2001:db8:1::10/128\"]",
    )]);
    let a = start(&lab, &cfg);
    let pbx = callee(&lab, "uas.xml", addr::PBX_V4, Transport::Udp);
    let carrier = lab.ns(Host::Carrier);
    // The flooder: 2000 INVITEs/s from the carrier's second address.
    let flood = Sipp::uac(&carrier, "uac_reject.xml")
        .local(addr::CARRIER_V4_ALT, 5070)
        .remote(addr::A_WAN_V4, 5060)
        .service(UDP_NUMBER)
        .calls(30_000)
        .rate(2000.0)
        .recv_timeout(Some(Duration::from_secs(2)))
        .timeout(Duration::from_secs(40))
        .spawn()
        .expect("flooder");
    std::thread::sleep(Duration::from_secs(1));
    let legit = caller(&lab, "uac.xml", Transport::Udp)
        .calls(200)
        .rate(20.0)
        .duration(Duration::from_millis(100))
        .timeout(Duration::from_secs(60))
        .run()
        .expect("legit caller");
    let _ = flood.stop();
    let _ = pbx.stop();
    // At least 99.9% of the legitimate calls succeed: all 200 of them.
    assert_eq!(
        (legit.successful, legit.failed),
        (200, 0),
        "{}",
        legit.summary()
    );
    let set = a
        .nft(&["list", "set", "inet", "callgate", "block4"])
        .expect("nft");
    assert!(
        set.contains("203.0.113.66"),
        "the flooder is in the blocklist: {set}"
    );
    let st = stats(&a);
    assert!(u(&st["sources_blocked"]) >= 1, "{st}");
    assert_eq!(
        u(&st["calls_answered"]),
        200,
        "no flooder call was routed: {st}"
    );
}

/// Every RFC 4475 torture message sent at the running proxy: nothing crashes it, and a
/// call still goes through afterwards.
#[test]
fn torture_messages_do_not_hurt_the_running_proxy() {
    let lab = new_lab();
    let a = start(&lab, &lab_toml());
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/rfc4475"
    );
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    for e in std::fs::read_dir(dir).expect("conformance dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "dat") {
            msgs.push(std::fs::read(&p).expect("read"));
        }
    }
    assert!(msgs.len() >= 40, "torture messages found: {}", msgs.len());
    let sent = lab.ns(Host::Carrier).run_in(move || {
        let s = std::net::UdpSocket::bind((addr::CARRIER_V4, 5099)).expect("bind");
        let mut n = 0;
        for m in &msgs {
            if s.send_to(m, (addr::A_WAN_V4, 5060)).is_ok() {
                n += 1;
            }
        }
        n
    });
    assert!(sent >= 40);
    std::thread::sleep(Duration::from_millis(500));
    assert!(a.cli(&["status"]).ok(), "the daemon still answers");
    let pbx = callee(&lab, "uas.xml", addr::PBX_V4, Transport::Udp);
    let r = caller(&lab, "uac.xml", Transport::Udp)
        .run()
        .expect("caller");
    assert_eq!((r.successful, r.failed), (1, 0), "{}", r.summary());
    let _ = pbx.stop();
}

/// SIGKILL mid-call: the answered call's record is already on disk (written at answer
/// time), and the firewall keeps enforcing while the daemon is gone.
#[test]
fn a_crash_mid_call_keeps_the_answered_record() {
    let lab = new_lab();
    let mut a = start(&lab, &lab_toml());
    let pbx = callee(&lab, "uas.xml", addr::PBX_V4, Transport::Udp);
    let call = caller(&lab, "uac.xml", Transport::Udp)
        .duration(Duration::from_secs(30))
        .timeout(Duration::from_secs(40))
        .spawn()
        .expect("caller");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !active_calls(&a).iter().any(|c| c["state"] == "answered") {
        assert!(std::time::Instant::now() < deadline, "call not answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The answer-time record is written (durably: acknowledged after a flush) while the
    // call goes on; once it shows, kill the daemon without warning.
    while cdrs(&a).is_empty() {
        assert!(
            std::time::Instant::now() < deadline + Duration::from_secs(10),
            "no record at answer time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.kill9();
    assert!(
        a.ruleset().contains("table inet callgate"),
        "the ruleset stays in force without the daemon"
    );
    a.launch().expect("daemon restarts");
    let all = cdrs(&a);
    assert_eq!(
        all.len(),
        1,
        "the answered call was recorded before the crash: {all:#?}"
    );
    let c = &all[0];
    assert_eq!(c["disposition"], "answered");
    assert_eq!(c["tracking_number"], UDP_NUMBER);
    assert_eq!(c["caller"], CALLER);
    assert!(!c["answer_at"].is_null());
    assert!(c["end_at"].is_null(), "the end was never seen: {c}");
    drop(call);
    let _ = pbx.stop();
}

/// A carrier calling over IPv6 reaches the IPv4 PBX: the proxy bridges the families for
/// signalling (Via, Record-Route); media cannot cross families, so no pinhole opens.
#[test]
fn an_ipv6_carrier_reaches_the_ipv4_pbx() {
    let lab = new_lab();
    let a = start(&lab, &lab_toml());
    let pbx = callee(&lab, "uas.xml", addr::PBX_V4, Transport::Udp);
    let r = Sipp::uac(&lab.ns(Host::Carrier), "uac.xml")
        .local(addr::CARRIER_V6, 5060)
        .remote(addr::A_WAN_V6, 5060)
        .service(UDP_NUMBER)
        .caller(CALLER, CALLER_NAME)
        .calls(2)
        .duration(Duration::from_millis(200))
        .run()
        .expect("caller");
    assert_eq!((r.successful, r.failed), (2, 0), "{}", r.summary());
    let _ = pbx.stop();
    let all = wait_cdrs(&a, 2);
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|c| c["disposition"] == "answered"
        && c["destination"] == dest(addr::PBX_V4, Transport::Udp)));
    // No pinholes: a pinhole admits the other party's signalled address, and an IPv6
    // address cannot send to an IPv4 one without a media relay (which this proxy is not).
    let st = stats(&a);
    assert_eq!(u(&st["pinholes_opened"]), 0, "{st}");
}

/// OPTIONS health: a destination that does not answer its probes is taken out of rotation,
/// so round-robin calls stop going there (no failover needed), and it comes back when it
/// answers again.
#[test]
fn a_silent_destination_leaves_the_rotation() {
    let lab = new_lab();
    let a = start(
        &lab,
        &config(&[(
            "max_call_secs = 3600",
            "max_call_secs = 3600\nprobe_interval_secs = 1",
        )]),
    );
    // Only .10 answers; .11 (the other half of billboard-i5's round-robin) is silent.
    let pbx = callee(&lab, "uas.xml", addr::PBX_V4, Transport::Udp);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while u(&stats(&a)["destinations_down"]) < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the silent destination is never marked down"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = caller(&lab, "uac.xml", Transport::Udp)
        .service("+15550100100")
        .calls(6)
        .rate(10.0)
        .duration(Duration::from_millis(100))
        .run()
        .expect("caller");
    assert_eq!((r.successful, r.failed), (6, 0), "{}", r.summary());
    let _ = pbx.stop();
    let st = stats(&a);
    assert_eq!(
        u(&st["failovers"]),
        0,
        "no call was sent to the silent destination: {st}"
    );
    let all = wait_cdrs(&a, 6);
    assert!(all
        .iter()
        .all(|c| c["destination"] == dest(addr::PBX_V4, Transport::Udp)));
}

/// The attack: an INVITE from the carrier whose SDP points media at the PBX's SNMP
/// port and RTCP at the appliance's own heartbeat port, and SDP that does not even parse.
/// Each gets 488, nothing reaches the call segment, no pinhole opens, and a datagram from
/// an address the config never names reaches nothing.
#[test]
fn a_hostile_offer_is_refused_and_opens_nothing() {
    let lab = new_lab();
    let a = start(&lab, &lab_toml());
    let dir = tempfile::tempdir().expect("tempdir");
    let pbx = lab
        .ns(Host::Pbx)
        .udp_listen_silent(addr::PBX_V4, 5060)
        .expect("listen");
    let at_snmp = lab
        .ns(Host::Pbx)
        .udp_listen(addr::PBX_V4, 161)
        .expect("listen");
    let sdp = |name: &str, c: &str, m: &str| {
        edited(dir.path(), "uac_reject.xml", name, |t| {
            t.replacen("c=IN IP[media_ip_type] [media_ip]", c, 1)
                .replacen("m=audio [media_port] RTP/AVP 0", m, 1)
        })
    };
    let cases = [
        (
            "pinholes toward the PBX's SNMP port and our heartbeat port",
            sdp(
                "hostile.xml",
                "c=IN IP4 198.51.100.10",
                "m=audio 161 RTP/AVP 0\n      a=rtcp:5405 IN IP4 192.0.2.1",
            ),
        ),
        (
            "an address that is no address",
            sdp(
                "malformed.xml",
                "c=IN IP4 999.1.1.1",
                "m=audio [media_port] RTP/AVP 0",
            ),
        ),
        (
            "a port beyond 65535",
            sdp(
                "port.xml",
                "c=IN IP[media_ip_type] [media_ip]",
                "m=audio 70000 RTP/AVP 0",
            ),
        ),
    ];
    for (what, scenario) in &cases {
        let r = caller(&lab, scenario, Transport::Udp)
            .calls(1)
            .run()
            .expect("caller");
        assert_eq!(r.final_codes, vec![488], "{what}: {}", r.summary());
    }
    let invites = pbx
        .datagrams()
        .iter()
        .filter(|d| d.data.starts_with(b"INVITE"))
        .count();
    assert_eq!(invites, 0, "nothing was relayed to the call segment");
    for set in ["pinhole4_host", "pinhole4", "pinhole6_host", "pinhole6"] {
        let listed = a
            .nft(&["list", "set", "inet", "callgate", set])
            .expect("nft list set");
        assert!(!listed.contains("elements"), "{set} holds: {listed}");
    }
    let t = Token::new();
    lab.ns(Host::Carrier).udp_send(
        Some(IpAddr::V4(addr::CARRIER_V4_ALT)),
        IpAddr::V4(addr::PBX_V4),
        161,
        &t,
    );
    assert!(
        !at_snmp.wait_for(&t, Duration::from_millis(700)),
        "a datagram from an unlisted WAN address reached the PBX"
    );
    let st = stats(&a);
    assert_eq!(u(&st["refused_media"]), 3, "{st}");
    assert_eq!(u(&st["pinholes_opened"]), 0, "{st}");
    let all = wait_cdrs(&a, 3);
    assert!(all
        .iter()
        .all(|c| c["disposition"] == "rejected" && c["final_code"] == 488));
}

/// A panic on the SIP path ends the whole daemon (non-zero, by SIGABRT) so systemd
/// restarts it; the kernel keeps enforcing meanwhile. Debug builds carry the fault
/// injection that makes the sip thread panic at its first message.
#[test]
fn a_panic_on_the_sip_path_ends_the_daemon() {
    use std::os::unix::process::ExitStatusExt;
    let lab = new_lab();
    let mut a = start(&lab, &lab_toml());
    assert_eq!(a.stop(), Some(0));
    a.set_env("CALLGATE_FAULT_SIP_PANIC", "1");
    a.launch().expect("the daemon starts again");
    let options = format!(
        "OPTIONS sip:{a_wan}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {c}:5098;branch=z9hG4bK-panic\r\n\
Max-Forwards: 70\r\nFrom: <sip:probe@{c}>;tag=p\r\nTo: <sip:{a_wan}>\r\nCall-ID: panic@x\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        a_wan = addr::A_WAN_V4,
        c = addr::CARRIER_V4
    );
    lab.ns(Host::Carrier).run_in(move || {
        let s = std::net::UdpSocket::bind((addr::CARRIER_V4, 5098)).expect("bind");
        s.send_to(options.as_bytes(), (addr::A_WAN_V4, 5060))
            .expect("send");
    });
    let status = a
        .wait_exit(Duration::from_secs(10))
        .expect("the daemon ends after the panic");
    assert!(!status.success(), "{status:?}");
    assert_eq!(status.signal(), Some(6), "SIGABRT: {status:?}");
    assert!(a.log().contains("panic in thread sip"), "{}", a.log());
    assert!(
        a.ruleset().contains("table inet callgate"),
        "the ruleset stays in force"
    );
}

/// SIGKILL under load and a restart at once. Every call whose caller got a 200 has
/// exactly one record, answered; the calls in progress at the kill are carried on by the
/// restarted daemon, so their BYEs (all after the restart: 200 calls start over 4 s and
/// each is held 6 s) complete their records with an end time.
#[test]
fn a_kill_under_load_keeps_every_answered_call_and_completes_the_calls_in_progress() {
    let lab = new_lab();
    let mut a = start(&lab, &lab_toml());
    let pbx = callee(&lab, "uas.xml", addr::PBX_V4, Transport::Udp);
    let call = caller(&lab, "uac.xml", Transport::Udp)
        .calls(200)
        .rate(50.0)
        .duration(Duration::from_secs(6))
        .timeout(Duration::from_secs(120))
        .spawn()
        .expect("caller");
    std::thread::sleep(Duration::from_secs(3));
    let killed_at = now_ms();
    a.kill9();
    a.launch().expect("the daemon starts again at once");
    let restarted_at = now_ms();
    let r = call.wait(Duration::from_secs(150)).expect("caller ends");
    let _ = pbx.stop();
    let answered = r.answered();
    assert!(answered.len() >= 150, "{}", r.summary());
    let all = wait_cdrs(&a, answered.len());
    let all_records = cdrs(&a);
    for id in &answered {
        let mine: Vec<&Value> = all_records.iter().filter(|c| c["call_id"] == *id).collect();
        assert_eq!(mine.len(), 1, "call {id}: {mine:#?}");
        assert_eq!(mine[0]["disposition"], "answered", "{}", mine[0]);
        assert!(
            !mine[0]["end_at"].is_null(),
            "call {id} has no end: {}",
            mine[0]
        );
    }
    // Calls answered before the kill and ended after the restart: carried on.
    let carried = all
        .iter()
        .filter(|c| {
            c["answer_at"].as_u64().is_some_and(|t| t < killed_at)
                && c["end_at"].as_u64().is_some_and(|t| t > restarted_at)
        })
        .count();
    assert!(carried >= 50, "calls carried over the restart: {carried}");
    assert!(
        a.log()
            .contains("calls in progress at the last stop carried on"),
        "{}",
        a.log()
    );
}
