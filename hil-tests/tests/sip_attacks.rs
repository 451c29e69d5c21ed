//! Attacks on the SIP proxy, end to end: the real daemon on appliance A (config/lab.toml,
//! edited where a test needs it), real nftables, sipp as the carrier and the PBX, and raw
//! SIP from std `UdpSocket`s made inside the lab's namespaces where a test plays a party
//! itself (a PBX that shows what the proxy forwarded, a forger, a scanner, a flooder).
//! Each test asserts on what the parties saw (datagrams that arrived or did not, sipp's
//! outcomes), on the records the daemon stored, on its counters (`show sip stats`) and on
//! the kernel's blocklist.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hil_tests::calls::{
    active_calls, cdrs, config, lab_toml, new_lab, start, stats, u, wait_cdrs, wait_until, CALLER,
    CALLER_NAME, UDP_NUMBER,
};
use hil_tests::sipp::{Sipp, SippHandle, Transport};
use hil_tests::{addr, Appliance, Host, Lab, Ns};
use serde_json::Value;

/// A callee (sipp) on `ip`:5060 running `scenario`, ready to take calls.
fn callee<'l>(lab: &'l Lab, scenario: &str, ip: Ipv4Addr) -> SippHandle<'l> {
    let h = Sipp::uas(&lab.ns(Host::Pbx), scenario)
        .local(ip, 5060)
        .transport(Transport::Udp)
        .spawn()
        .expect("callee starts");
    h.wait_ready(Duration::from_secs(10)).expect("callee ready");
    h
}

/// A caller (sipp) on the carrier's 5060 sending to appliance A's WAN address over UDP.
fn caller<'l>(lab: &'l Lab, scenario: &str) -> Sipp<'l> {
    Sipp::uac(&lab.ns(Host::Carrier), scenario)
        .local(addr::CARRIER_V4, 5060)
        .remote(addr::A_WAN_V4, 5060)
        .transport(Transport::Udp)
        .service(UDP_NUMBER)
        .caller(CALLER, CALLER_NAME)
        .calls(1)
}

// ----- helpers of this file ------------------------------------------------------------

/// Polls `f` until it holds, 15 s at most.
fn wait_until_15s(what: &str, f: impl FnMut() -> bool) {
    wait_until(what, 15, f);
}

/// The kernel's IPv4 blocklist set, as nft lists it inside the appliance's namespace.
fn block4(a: &Appliance<'_>) -> String {
    a.nft(&["list", "set", "inet", "callgate", "block4"])
        .expect("nft list set block4")
}

/// A UDP socket bound to `ip:port` inside `ns` (it stays in that namespace).
fn udp(ns: &Ns<'_>, ip: Ipv4Addr, port: u16) -> UdpSocket {
    let s = ns.run_in(move || UdpSocket::bind((ip, port)).expect("bind"));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    s
}

/// A SIP message as text, with just enough header access for the parties played here.
#[derive(Debug, Clone)]
struct Sip(String);

/// RFC 3261 §7.3.3 compact forms of the headers read here.
fn long_name(name: &str) -> &str {
    match name.to_ascii_lowercase().as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        _ => name,
    }
}

impl Sip {
    fn parse(bytes: &[u8]) -> Sip {
        Sip(String::from_utf8_lossy(bytes).into_owned())
    }

    fn start_line(&self) -> &str {
        self.0.lines().next().unwrap_or("")
    }

    fn is_request(&self, method: &str) -> bool {
        self.start_line().starts_with(&format!("{method} "))
    }

    /// The status code of a response.
    fn status(&self) -> Option<u16> {
        let l = self.start_line();
        l.strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
    }

    /// The values of every `name` header line, in order (full or compact name).
    fn headers(&self, name: &str) -> Vec<&str> {
        let head = self.0.split("\r\n\r\n").next().unwrap_or("");
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| long_name(n.trim()).eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).into_iter().next()
    }

    /// The branch parameter of the top Via.
    fn top_branch(&self) -> Option<&str> {
        let via = self.header("via")?;
        let first = via.split(',').next()?;
        first
            .split(';')
            .skip(1)
            .find_map(|p| p.trim().strip_prefix("branch="))
    }
}

/// A response to `req` (RFC 3261 §8.2.6): its Vias in order, From, To (with `to_tag` added
/// when it has none), Call-ID and CSeq; the Record-Route of a dialog-creating response;
/// `extra` header lines, and `sdp` as the body.
fn response(
    req: &Sip,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &[&str],
    sdp: &str,
) -> Vec<u8> {
    let mut r = format!("SIP/2.0 {code} {reason}\r\n");
    for v in req.headers("via") {
        r.push_str(&format!("Via: {v}\r\n"));
    }
    if (101..300).contains(&code) {
        for rr in req.headers("record-route") {
            r.push_str(&format!("Record-Route: {rr}\r\n"));
        }
    }
    r.push_str(&format!("From: {}\r\n", req.header("from").expect("From")));
    let to = req.header("to").expect("To");
    if code > 100 && !to.contains(";tag=") {
        r.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    } else {
        r.push_str(&format!("To: {to}\r\n"));
    }
    r.push_str(&format!(
        "Call-ID: {}\r\n",
        req.header("call-id").expect("Call-ID")
    ));
    r.push_str(&format!("CSeq: {}\r\n", req.header("cseq").expect("CSeq")));
    for e in extra {
        r.push_str(e);
        r.push_str("\r\n");
    }
    if !sdp.is_empty() {
        r.push_str("Content-Type: application/sdp\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{sdp}", sdp.len()));
    r.into_bytes()
}

/// The next SIP message on `s` within `timeout` that satisfies `want`. The proxy's OPTIONS
/// health probes (a PBX socket gets them) are answered 200 on the way; everything else
/// that does not match is skipped.
fn recv_matching(
    s: &UdpSocket,
    timeout: Duration,
    want: impl Fn(&Sip) -> bool,
) -> Option<(Sip, SocketAddr)> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65_536];
    while Instant::now() < deadline {
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        let m = Sip::parse(&buf[..n]);
        if want(&m) {
            return Some((m, from));
        }
        if m.is_request("OPTIONS") {
            let _ = s.send_to(&response(&m, 200, "OK", "pbx-probe", &[], ""), from);
        }
    }
    None
}

/// Every datagram that arrives on `s` within `window`.
fn recv_all(s: &UdpSocket, window: Duration) -> Vec<Sip> {
    let deadline = Instant::now() + window;
    let mut buf = vec![0u8; 65_536];
    let mut got = Vec::new();
    while Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            got.push(Sip::parse(&buf[..n]));
        }
    }
    got
}

/// An out-of-dialog OPTIONS from `src` to appliance A's WAN address (`n` makes it unique).
fn options(src: SocketAddr, n: usize, user_agent: Option<&str>) -> String {
    let ua = user_agent.map_or(String::new(), |ua| format!("User-Agent: {ua}\r\n"));
    format!(
        "OPTIONS sip:{a}:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP {src};branch=z9hG4bK-opt-{n}\r\n\
Max-Forwards: 70\r\n\
From: <sip:probe@{ip}>;tag=opt{n}\r\n\
To: <sip:{a}>\r\n\
Call-ID: opt-{n}@{ip}\r\n\
CSeq: 1 OPTIONS\r\n\
{ua}Content-Length: 0\r\n\r\n",
        a = addr::A_WAN_V4,
        ip = src.ip()
    )
}

/// An INVITE from `src` to `number` at appliance A's WAN address, with a valid offer (media
/// on the carrier's own address) and CSeq `cseq` (`n` makes it unique).
fn invite(src: SocketAddr, n: usize, number: &str, cseq: &str, user_agent: Option<&str>) -> String {
    let ua = user_agent.map_or(String::new(), |ua| format!("User-Agent: {ua}\r\n"));
    let ip = src.ip();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    format!(
        "INVITE sip:{number}@{a}:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP {src};branch=z9hG4bK-inv-{n}\r\n\
Max-Forwards: 70\r\n\
From: \"{CALLER_NAME}\" <sip:{CALLER}@{ip}>;tag=inv{n}\r\n\
To: <sip:{number}@{a}>\r\n\
Call-ID: inv-{n}@{ip}\r\n\
CSeq: {cseq}\r\n\
Contact: <sip:{CALLER}@{src}>\r\n\
{ua}Content-Type: application/sdp\r\n\
Content-Length: {len}\r\n\r\n{sdp}",
        a = addr::A_WAN_V4,
        len = sdp.len()
    )
}

fn wan() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(addr::A_WAN_V4), 5060)
}

fn priv_side() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(addr::A_PRIV_V4), 5060)
}

// ----- the tests -----------------------------------------------------------------------

/// A response is taken only from where its request went (ARCHITECTURE.md §6). While a
/// real call rings, a 486 and a 200 forged for the forwarded INVITE (right branch, right
/// Call-ID and tags) come from a WAN address and from the PBX's own host on another port:
/// the proxy counts and drops all four, the caller sees only the real answer, and the call
/// is recorded answered and ended.
#[test]
fn forged_responses_are_dropped() {
    let lab = new_lab();
    // The firewall lets the carrier's second address reach SIP, so the forgery from the
    // WAN side meets the proxy's check rather than the allowlist.
    let a = start(
        &lab,
        &config(&[(
            "name = \"carrier-sip-udp\"\nzone = \"wan\"\nsources = [\"203.0.113.10/32\",",
            "name = \"carrier-sip-udp\"\nzone = \"wan\"\nsources = [\"203.0.113.10/32\", \"203.0.113.66/32\",",
        )]),
    );
    let (carrier, pbx_ns) = (lab.ns(Host::Carrier), lab.ns(Host::Pbx));
    // The test plays the PBX itself, and the two forgers.
    let pbx = udp(&pbx_ns, addr::PBX_V4, 5060);
    let forger_priv = udp(&pbx_ns, addr::PBX_V4, 5099);
    let forger_wan = udp(&carrier, addr::CARRIER_V4_ALT, 5099);

    let call = caller(&lab, "uac.xml")
        .duration(Duration::from_millis(500))
        .spawn()
        .expect("caller");
    let (inv, proxy) = recv_matching(&pbx, Duration::from_secs(10), |m| m.is_request("INVITE"))
        .expect("the proxy forwards the INVITE to the PBX");
    assert_eq!(proxy, priv_side(), "sent from the proxy's private address");
    let branch = inv.top_branch().expect("top Via branch").to_owned();
    assert!(branch.starts_with("z9hG4bK"), "{branch}");

    pbx.send_to(&response(&inv, 100, "Trying", "", &[], ""), proxy)
        .expect("send 100");
    pbx.send_to(&response(&inv, 180, "Ringing", "pbx-1", &[], ""), proxy)
        .expect("send 180");
    wait_until_15s("the call rings", || {
        active_calls(&a).iter().any(|c| c["state"] == "ringing")
    });

    // (a) From the WAN side: the carrier's second address, to the WAN address.
    let busy = response(&inv, 486, "Busy Here", "forged-a", &[], "");
    let ok = response(
        &inv,
        200,
        "OK",
        "forged-a",
        &["Contact: <sip:203.0.113.66:5099>"],
        "",
    );
    forger_wan.send_to(&busy, wan()).expect("forge 486");
    forger_wan.send_to(&ok, wan()).expect("forge 200");
    wait_until_15s("both WAN forgeries are counted", || {
        u(&stats(&a)["responses_wrong_source"]) >= 2
    });
    // (b) From the PBX's own address, but another port, to the private address.
    let busy = response(&inv, 486, "Busy Here", "forged-b", &[], "");
    let ok = response(
        &inv,
        200,
        "OK",
        "forged-b",
        &["Contact: <sip:198.51.100.10:5099>"],
        "",
    );
    forger_priv.send_to(&busy, priv_side()).expect("forge 486");
    forger_priv.send_to(&ok, priv_side()).expect("forge 200");
    wait_until_15s("all four forgeries are counted", || {
        u(&stats(&a)["responses_wrong_source"]) >= 4
    });
    assert!(
        active_calls(&a).iter().any(|c| c["state"] == "ringing"),
        "still ringing after the forgeries: {:?}",
        active_calls(&a)
    );

    // The real answer, retransmitted (RFC 3261 §13.3.1.4) until its ACK arrives.
    let sdp = "v=0\r\no=- 2 2 IN IP4 198.51.100.10\r\ns=-\r\nc=IN IP4 198.51.100.10\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let answer = response(
        &inv,
        200,
        "OK",
        "pbx-1",
        &["Contact: <sip:198.51.100.10:5060>"],
        sdp,
    );
    let mut ack = None;
    for _ in 0..20 {
        pbx.send_to(&answer, proxy).expect("send 200");
        ack = recv_matching(&pbx, Duration::from_millis(500), |m| m.is_request("ACK"));
        if ack.is_some() {
            break;
        }
    }
    let (ack, _) = ack.expect("the caller's ACK reaches the PBX");
    assert_eq!(ack.header("call-id"), inv.header("call-id"));
    assert!(
        ack.header("to").is_some_and(|t| t.contains("tag=pbx-1")),
        "the dialog is the real one: {ack:?}"
    );
    let (bye, from) = recv_matching(&pbx, Duration::from_secs(10), |m| m.is_request("BYE"))
        .expect("the caller's BYE reaches the PBX");
    pbx.send_to(&response(&bye, 200, "OK", "", &[], ""), from)
        .expect("answer the BYE");

    let r = call.wait(Duration::from_secs(30)).expect("caller ends");
    assert_eq!((r.successful, r.failed), (1, 0), "{}", r.summary());
    assert_eq!(r.final_codes, vec![200], "{}", r.summary());
    // Neither forger got anything back.
    assert!(recv_all(&forger_wan, Duration::from_millis(300)).is_empty());
    assert!(recv_all(&forger_priv, Duration::from_millis(300)).is_empty());
    let st = stats(&a);
    assert_eq!(u(&st["responses_wrong_source"]), 4, "{st}");
    assert_eq!(u(&st["calls_answered"]), 1, "{st}");
    assert_eq!(u(&st["calls_busy"]), 0, "{st}");
    let all = wait_cdrs(&a, 1);
    assert_eq!(all.len(), 1, "one record: {all:#?}");
    let c = &all[0];
    assert_eq!(c["disposition"], "answered", "{c}");
    assert_eq!(c["final_code"], 200, "{c}");
    assert!(!c["answer_at"].is_null() && !c["end_at"].is_null(), "{c}");
    eprintln!(
        "forged: responses_wrong_source {}, caller codes {:?}, record {} {}",
        st["responses_wrong_source"], r.final_codes, c["disposition"], c["final_code"]
    );
}

/// A scanner User-Agent is dropped even from the carrier's own address: no answer at all,
/// no record, counted as `scanner_dropped`, and the carrier is not blocked (the guard
/// never blocks a carrier trunk). Sixty hits, past the 50 violations that block any
/// other source, so the blocklist check means something. The same OPTIONS without the
/// User-Agent is answered (the silence was the guard's), and a call goes through after.
#[test]
fn a_scanner_user_agent_from_the_carriers_own_address_is_dropped() {
    let lab = new_lab();
    let a = start(&lab, &lab_toml());
    let me = SocketAddr::new(IpAddr::V4(addr::CARRIER_V4), 5096);
    let s = udp(&lab.ns(Host::Carrier), addr::CARRIER_V4, 5096);
    for n in 0..30 {
        s.send_to(options(me, n, Some("friendly-scanner")).as_bytes(), wan())
            .expect("send");
        let inv = invite(me, n, UDP_NUMBER, "1 INVITE", Some("friendly-scanner"));
        s.send_to(inv.as_bytes(), wan()).expect("send");
    }
    let back = recv_all(&s, Duration::from_secs(1));
    assert!(
        back.is_empty(),
        "nothing comes back to a scanner: {:?}",
        back.iter().map(Sip::start_line).collect::<Vec<_>>()
    );
    let st = stats(&a);
    assert_eq!(u(&st["scanner_dropped"]), 60, "{st}");
    assert_eq!(u(&st["sources_blocked"]), 0, "{st}");
    assert_eq!(u(&st["calls_offered"]), 0, "{st}");
    assert!(cdrs(&a).is_empty(), "no record: {:#?}", cdrs(&a));
    let set = block4(&a);
    assert!(
        !set.contains("elements"),
        "the carrier is not blocked: {set}"
    );

    // Control: the same request without the scanner's User-Agent is answered.
    s.send_to(options(me, 99, None).as_bytes(), wan())
        .expect("send");
    let (reply, _) = recv_matching(&s, Duration::from_secs(2), |m| m.status().is_some())
        .expect("a plain OPTIONS from the carrier is answered");
    assert_eq!(reply.status(), Some(200), "{reply:?}");

    let pbx = callee(&lab, "uas.xml", addr::PBX_V4);
    let r = caller(&lab, "uac.xml").run().expect("caller");
    assert_eq!((r.successful, r.failed), (1, 0), "{}", r.summary());
    let _ = pbx.stop();
    let set = block4(&a);
    assert!(
        !set.contains("elements"),
        "the carrier is not blocked: {set}"
    );
    let all = wait_cdrs(&a, 1);
    assert_eq!(all.len(), 1, "only the real call is recorded: {all:#?}");
    assert_eq!(all[0]["disposition"], "answered");
    eprintln!(
        "scanner: scanner_dropped {}, sources_blocked {}, records {}",
        st["scanner_dropped"],
        st["sources_blocked"],
        all.len()
    );
}

/// A carrier trunk over its own request rate (50/s here, burst 100) is rate-limited, never
/// blocked. Three thousand OPTIONS from the carrier's address, sent in bursts of 50 as fast
/// as the socket sends them, each burst as soon as the daemon has taken in the previous
/// one (so that every request meets the guard rather than a full socket buffer): each is
/// either answered or dropped by the guard, most are dropped (far more than the 50
/// violations that block any other source), nothing enters the blocklist, and once its
/// bucket has refilled the carrier calls as usual.
#[test]
fn carrier_floods_are_rate_limited_but_never_blocked() {
    let lab = new_lab();
    let a = start(
        &lab,
        &config(&[(
            "media = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]",
            "media = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]\nmax_requests_per_sec = 50",
        )]),
    );
    let me = SocketAddr::new(IpAddr::V4(addr::CARRIER_V4), 5095);
    let s = udp(&lab.ns(Host::Carrier), addr::CARRIER_V4, 5095);
    const FLOOD: usize = 3000;
    const BURST: usize = 50;
    let mut answered = 0;
    // The answers waiting on the socket now (non-blocking), or within `window`.
    let count_answers = |s: &UdpSocket, window: Option<Duration>| {
        let got = match window {
            Some(w) => recv_all(s, w),
            None => {
                s.set_nonblocking(true).expect("nonblocking");
                let mut buf = vec![0u8; 65_536];
                let mut got = Vec::new();
                while let Ok((n, _)) = s.recv_from(&mut buf) {
                    got.push(Sip::parse(&buf[..n]));
                }
                s.set_nonblocking(false).expect("blocking");
                got
            }
        };
        got.iter().filter(|m| m.status() == Some(200)).count()
    };
    for burst in 0..FLOOD / BURST {
        for n in burst * BURST..(burst + 1) * BURST {
            s.send_to(options(me, n, None).as_bytes(), wan())
                .expect("send");
        }
        let sent = (burst + 1) * BURST;
        wait_until_15s("the daemon takes in the burst", || {
            let st = stats(&a);
            // A blocked source's requests die in the kernel: say so rather than wait.
            assert_eq!(u(&st["sources_blocked"]), 0, "blocked mid-flood: {st}");
            u(&st["requests_in"]) >= sent as u64
        });
        answered += count_answers(&s, None);
    }
    answered += count_answers(&s, Some(Duration::from_secs(1)));
    let st = stats(&a);
    let dropped = u(&st["flood_dropped"]) as usize;
    assert_eq!(u(&st["requests_in"]) as usize, FLOOD, "{st}");
    assert_eq!(
        answered + dropped,
        FLOOD,
        "each request answered ({answered}) or dropped by the guard: {st}"
    );
    assert!(
        dropped >= FLOOD / 2,
        "most of the flood is dropped, far past the 50 violations that block a source: {st}"
    );
    assert_eq!(u(&st["sources_blocked"]), 0, "{st}");
    let set = block4(&a);
    assert!(!set.contains("elements"), "nothing is blocked: {set}");
    eprintln!("flood: {FLOOD} sent, {answered} answered, {dropped} dropped by the guard");

    // Once the bucket has refilled enough to let a request through, a call succeeds.
    let mut n = FLOOD;
    wait_until_15s("the carrier's requests are answered again", || {
        n += 1;
        s.send_to(options(me, n, None).as_bytes(), wan())
            .expect("send");
        recv_matching(&s, Duration::from_millis(300), |m| m.status() == Some(200)).is_some()
    });
    let pbx = callee(&lab, "uas.xml", addr::PBX_V4);
    let r = caller(&lab, "uac.xml").run().expect("caller");
    assert_eq!((r.successful, r.failed), (1, 0), "{}", r.summary());
    let _ = pbx.stop();
    let st = stats(&a);
    assert_eq!(u(&st["sources_blocked"]), 0, "{st}");
    assert_eq!(u(&st["calls_answered"]), 1, "{st}");
    let set = block4(&a);
    assert!(!set.contains("elements"), "nothing is blocked: {set}");
}

/// The per-source dialog cap (`max_dialogs = 3`): three held calls from the carrier fill
/// it, a fourth gets 503 with Retry-After (and never reaches the PBX), and once the three
/// have ended a new call succeeds.
#[test]
fn the_per_source_dialog_cap_sheds_with_503() {
    let lab = new_lab();
    let a = start(
        &lab,
        &config(&[(
            "media = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]",
            "media = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]\nmax_dialogs = 3",
        )]),
    );
    let pbx = callee(&lab, "uas.xml", addr::PBX_V4);
    let held = caller(&lab, "uac.xml")
        .calls(3)
        .duration(Duration::from_secs(8))
        .timeout(Duration::from_secs(60))
        .spawn()
        .expect("three held calls");
    wait_until_15s("three calls answered", || {
        active_calls(&a)
            .iter()
            .filter(|c| c["state"] == "answered")
            .count()
            == 3
    });
    let fourth = caller(&lab, "uac_reject.xml")
        .local(addr::CARRIER_V4, 5070)
        .trace_messages(true)
        .run()
        .expect("fourth caller");
    assert_eq!(fourth.final_codes, vec![503], "{}", fourth.summary());
    let trace = std::fs::read_to_string(fourth.dir.join("messages.log")).unwrap_or_default();
    let shed = trace
        .split("SIP/2.0 503")
        .nth(1)
        .expect("the 503 is in sipp's message trace");
    // The 503's header lines: up to the blank line that ends them.
    let shed_headers: Vec<&str> = shed
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(
        shed_headers.iter().any(|l| l
            .to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .is_some_and(|v| v.trim().parse::<u32>().is_ok())),
        "503 with a Retry-After: {shed_headers:#?}"
    );
    let st = stats(&a);
    assert_eq!(u(&st["calls_shed"]), 1, "{st}");
    assert_eq!(u(&st["active_calls"]), 3, "{st}");

    let r = held.wait(Duration::from_secs(60)).expect("held calls end");
    assert_eq!((r.successful, r.failed), (3, 0), "{}", r.summary());
    let r = caller(&lab, "uac.xml").run().expect("caller after");
    assert_eq!((r.successful, r.failed), (1, 0), "{}", r.summary());
    assert_eq!(r.final_codes, vec![200]);
    let p = pbx.stop().expect("pbx");
    assert_eq!(
        p.successful,
        4,
        "the shed call never reached the PBX: {}",
        p.summary()
    );
    let all = wait_cdrs(&a, 5);
    assert_eq!(all.len(), 5, "{all:#?}");
    let shed: Vec<&Value> = all.iter().filter(|c| c["final_code"] == 503).collect();
    assert_eq!(shed.len(), 1, "{all:#?}");
    assert_eq!(shed[0]["disposition"], "rejected");
    assert_eq!(
        all.iter()
            .filter(|c| c["disposition"] == "answered")
            .count(),
        4
    );
    eprintln!(
        "dialog cap: fourth call {:?}, calls_shed {}, pbx took {} calls, records {}",
        fourth.final_codes,
        st["calls_shed"],
        p.successful,
        all.len()
    );
}

/// RFC 3261 §8.1.1.5: CSeq stays below 2^31. An INVITE with `CSeq: 4294967295 INVITE`
/// (and, around it, 2^31, the first value refused, and 2^32, which does not fit 32 bits)
/// gets a clean 400 and nothing else (no 100 Trying, no INVITE toward the PBX, no record),
/// the daemon keeps running, and a normal call succeeds after.
#[test]
fn cseq_4294967295_gets_a_clean_400() {
    let lab = new_lab();
    let a = start(&lab, &lab_toml());
    // Where the call would go; nothing may arrive (the proxy's OPTIONS probes may).
    let pbx = udp(&lab.ns(Host::Pbx), addr::PBX_V4, 5060);
    let me = SocketAddr::new(IpAddr::V4(addr::CARRIER_V4), 5097);
    let s = udp(&lab.ns(Host::Carrier), addr::CARRIER_V4, 5097);
    let mut seen = Vec::new();
    for (n, cseq) in ["4294967295", "2147483648", "4294967296"]
        .into_iter()
        .enumerate()
    {
        let cseq = format!("{cseq} INVITE");
        s.send_to(invite(me, n, UDP_NUMBER, &cseq, None).as_bytes(), wan())
            .expect("send");
        let back = recv_all(&s, Duration::from_secs(1));
        let lines: Vec<&str> = back.iter().map(Sip::start_line).collect();
        assert_eq!(lines.len(), 1, "{cseq}: exactly one response: {lines:?}");
        let r = &back[0];
        assert_eq!(r.status(), Some(400), "{cseq}: {r:?}");
        assert_eq!(r.header("cseq"), Some(cseq.as_str()), "{r:?}");
        assert_eq!(
            r.header("call-id"),
            Some(format!("inv-{n}@203.0.113.10").as_str()),
            "{r:?}"
        );
        seen.push(format!("{cseq}: {}", lines[0]));
    }
    assert!(
        recv_matching(&pbx, Duration::from_millis(500), |m| m.is_request("INVITE")).is_none(),
        "nothing was relayed to the PBX"
    );
    drop(pbx);
    assert!(a.cli(&["status"]).ok(), "the daemon answers");
    assert!(a.is_running(), "the daemon runs");
    let st = stats(&a);
    assert_eq!(u(&st["calls_offered"]), 0, "{st}");
    assert!(cdrs(&a).is_empty(), "{:#?}", cdrs(&a));

    let callee = callee(&lab, "uas.xml", addr::PBX_V4);
    let r = caller(&lab, "uac.xml").run().expect("caller");
    assert_eq!((r.successful, r.failed), (1, 0), "{}", r.summary());
    let _ = callee.stop();
    let all = wait_cdrs(&a, 1);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["disposition"], "answered");
    eprintln!(
        "cseq: {seen:?}, malformed_dropped {}",
        st["malformed_dropped"]
    );
}
