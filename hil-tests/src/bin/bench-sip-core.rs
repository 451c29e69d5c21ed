//! `bench-sip-core`: the proxy's core alone, the floor under `scripts/bench sip`'s CPU
//! figures. The same call flow the benchmark's sipp scenarios make (`uac.xml` through the
//! appliance to `uas.xml`, over UDP: INVITE, 100, 180, 200 with SDP, ACK, BYE, 200) is
//! replayed in process against [`callgate_proxy::Proxy`], built from the lab's config
//! exactly as the daemon builds it: no sockets, no kernel, no threads, no records written
//! (each answer-time record is reported durable at once, as a store that never waits
//! would). The carrier and the PBX are played here from what the core sends them.
//!
//! What is timed is only the core's own calls ([`Proxy::on_message`],
//! [`Proxy::on_record_stored`], [`Proxy::on_timer`]), with the monotonic clock around
//! each; the messages the peers send are built outside it. On a quiet machine this is
//! the core's CPU time: the part of callgated's user time per call that no batching of
//! system calls and no record writer can take away.
//!
//! The core's clock runs as if calls came at [`RATE`] per second (its transactions linger
//! and expire as they would at that rate), not at the replay's speed.
//!
//! Output (stdout, last line): `BENCH sip-core core_us_per_call=… calls=…
//! messages_in_per_call=… messages_out_per_call=… records_per_call=…`; `--quick`: fewer
//! calls. Progress on stderr.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use callgate_config::Config;
use callgate_proxy::{Millis, Now, Output, Peer, Proxy, Settings, Transport};
use hil_tests::addr::{A_PRIV_V4, A_WAN_V4, CARRIER_V4, PBX_V4};

/// The daemon's allocator (`callgated`'s `GLOBAL`), so the core allocates here as it does
/// there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A tracking number of the lab config's first route (the benchmark's).
const NUMBER: &str = "+15550100007";
const CALLER: &str = "+14155550123";

fn fail(what: &str, why: impl std::fmt::Display) -> ! {
    eprintln!("bench-sip-core: {what}: {why}");
    std::process::exit(1);
}

/// The call rate the core's clock sees: each call moves it on by `1 / RATE` s, so its
/// transactions linger and expire as at this rate (about the benchmark's), however fast
/// the replay runs.
const RATE: u64 = 4_000;

/// The core and the time it has spent.
struct Timed {
    proxy: Proxy,
    /// The core's clock, in microseconds (see [`RATE`]).
    clock_us: u64,
    unix0: u64,
    spent: Duration,
    msgs_in: u64,
    msgs_out: u64,
    records: u64,
}

impl Timed {
    fn now(&self) -> Now {
        let ms = self.clock_us / 1000;
        Now {
            mono: Millis(ms),
            unix_ms: self.unix0 + ms,
        }
    }

    /// Feeds one message; what the core sends, after answering its records.
    fn recv(&mut self, bytes: &[u8], from: Peer, local: SocketAddr) -> Vec<(Peer, Vec<u8>)> {
        let now = self.now();
        let mut out = Vec::new();
        let t = Instant::now();
        self.proxy.on_message(now, bytes, from, local, &mut out);
        self.spent += t.elapsed();
        self.msgs_in += 1;
        self.settle(now, out)
    }

    fn tick(&mut self) {
        let now = self.now();
        let mut out = Vec::new();
        let t = Instant::now();
        self.proxy.on_timer(now, &mut out);
        self.spent += t.elapsed();
        let _ = self.settle(now, out);
    }

    /// Reports each answer-time record durable (timed: the core's work) and keeps what is
    /// sent.
    fn settle(&mut self, now: Now, mut out: Vec<Output>) -> Vec<(Peer, Vec<u8>)> {
        let mut sent = Vec::new();
        while !out.is_empty() {
            let mut more = Vec::new();
            for o in out.drain(..) {
                match o {
                    Output::Send { peer, bytes, .. } => {
                        self.msgs_out += 1;
                        sent.push((peer, bytes.to_vec()));
                    }
                    Output::Record { seq, ended, .. } => {
                        self.records += 1;
                        if !ended {
                            let t = Instant::now();
                            self.proxy.on_record_stored(now, seq, true, &mut more);
                            self.spent += t.elapsed();
                        }
                    }
                    _ => {}
                }
            }
            out = more;
        }
        sent
    }
}

/// The header lines of `msg` named `names` (full names, as the core writes them).
fn lines<'a>(msg: &'a str, names: &[&str]) -> Vec<&'a str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter(|l| {
            names.iter().any(|n| {
                l.len() > n.len()
                    && l.as_bytes()[n.len()] == b':'
                    && l[..n.len()].eq_ignore_ascii_case(n)
            })
        })
        .collect()
}

/// The URIs of every `name` header of `msg`, in order (`<uri>` values).
fn uris(msg: &str, name: &str) -> Vec<String> {
    lines(msg, &[name])
        .iter()
        .flat_map(|l| l.split_once(':').map_or("", |(_, v)| v).split(','))
        .filter_map(|v| {
            let v = v.trim();
            let s = v.find('<')?;
            let e = v[s..].find('>')?;
            Some(v[s + 1..s + e].to_owned())
        })
        .collect()
}

fn first_line(msg: &str) -> &str {
    msg.lines().next().unwrap_or("")
}

/// The callee's response to `req` (the INVITE or BYE the core forwarded to it).
fn uas_response(req: &str, code: u16, reason: &str, tag: &str, sdp: bool) -> Vec<u8> {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for l in lines(req, &["Via", "Record-Route", "From"]) {
        s.push_str(l);
        s.push_str("\r\n");
    }
    for l in lines(req, &["To"]) {
        s.push_str(l);
        if !l.contains(";tag=") {
            s.push_str(&format!(";tag={tag}"));
        }
        s.push_str("\r\n");
    }
    for l in lines(req, &["Call-ID", "CSeq"]) {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s.push_str(&format!("Contact: <sip:{PBX_V4}:5060;transport=udp>\r\n"));
    if sdp {
        let body = format!(
            "v=0\r\no=- 42 1 IN IP4 {PBX_V4}\r\ns=-\r\nc=IN IP4 {PBX_V4}\r\nt=0 0\r\nm=audio 6002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        s.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        s.push_str("Content-Length: 0\r\n\r\n");
    }
    s.into_bytes()
}

/// The caller's in-dialog request (ACK or BYE) after the 200 it received.
fn uac_request(method: &str, i: u64, cseq: u32, ok: &str) -> Vec<u8> {
    let target = uris(ok, "Contact").into_iter().next().unwrap_or_default();
    let mut route = uris(ok, "Record-Route");
    route.reverse();
    let to = lines(ok, &["To"]).first().map_or("", |l| l).to_owned();
    let mut s = format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER_V4}:5060;branch=z9hG4bK-{i}-{cseq};rport\r\n"
    );
    if !route.is_empty() {
        let r: Vec<String> = route.iter().map(|u| format!("<{u}>")).collect();
        s.push_str(&format!("Route: {}\r\n", r.join(", ")));
    }
    s.push_str(&format!(
        "From: \"sipp\" <sip:{CALLER}@{CARRIER_V4}:5060>;tag={i}SIPpTag001\r\n{to}\r\nCall-ID: {i}-core@{CARRIER_V4}\r\nCSeq: {cseq} {method}\r\nContact: <sip:{CALLER}@{CARRIER_V4}:5060;transport=UDP>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ));
    s.into_bytes()
}

fn invite(i: u64) -> Vec<u8> {
    let body = format!(
        "v=0\r\no=- 53655765 1 IN IP4 {CARRIER_V4}\r\ns=-\r\nc=IN IP4 {CARRIER_V4}\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    );
    format!(
        "INVITE sip:{NUMBER}@{A_WAN_V4}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CARRIER_V4}:5060;branch=z9hG4bK-{i}-1;rport\r\nFrom: \"sipp\" <sip:{CALLER}@{CARRIER_V4}:5060>;tag={i}SIPpTag001\r\nTo: <sip:{NUMBER}@{A_WAN_V4}:5060>\r\nCall-ID: {i}-core@{CARRIER_V4}\r\nCSeq: 1 INVITE\r\nContact: <sip:{CALLER}@{CARRIER_V4}:5060;transport=UDP>\r\nMax-Forwards: 70\r\nSubject: callgate hil-tests\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a peer got: the one message whose first line starts with `start`.
fn take(sent: &[(Peer, Vec<u8>)], to: IpAddr, start: &str, what: &str) -> String {
    sent.iter()
        .filter(|(p, _)| p.addr.ip() == to)
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .find(|m| first_line(m).starts_with(start))
        .unwrap_or_else(|| {
            let got: Vec<String> = sent
                .iter()
                .map(|(p, b)| format!("{}: {}", p.addr, String::from_utf8_lossy(b)))
                .collect();
            fail(
                what,
                format!("nothing starting {start:?} was sent to {to}; sent: {got:?}"),
            )
        })
}

/// One whole call; a flow the core breaks (refuses or drops something) ends the run.
fn call(t: &mut Timed, i: u64) {
    let carrier = Peer {
        transport: Transport::Udp,
        addr: SocketAddr::new(IpAddr::V4(CARRIER_V4), 5060),
        conn: None,
    };
    let pbx = Peer {
        transport: Transport::Udp,
        addr: SocketAddr::new(IpAddr::V4(PBX_V4), 5060),
        conn: None,
    };
    let wan = SocketAddr::new(IpAddr::V4(A_WAN_V4), 5060);
    let lan = SocketAddr::new(IpAddr::V4(A_PRIV_V4), 5060);
    let sent = t.recv(&invite(i), carrier, wan);
    let fwd = take(&sent, pbx.addr.ip(), "INVITE ", "INVITE to the pbx");
    let tag = format!("{i}SIPpTag011");
    t.recv(&uas_response(&fwd, 100, "Trying", &tag, false), pbx, lan);
    t.recv(&uas_response(&fwd, 180, "Ringing", &tag, false), pbx, lan);
    let sent = t.recv(&uas_response(&fwd, 200, "OK", &tag, true), pbx, lan);
    let ok = take(
        &sent,
        carrier.addr.ip(),
        "SIP/2.0 200",
        "200 to the carrier",
    );
    let sent = t.recv(&uac_request("ACK", i, 1, &ok), carrier, wan);
    take(&sent, pbx.addr.ip(), "ACK ", "ACK to the pbx");
    let sent = t.recv(&uac_request("BYE", i, 2, &ok), carrier, wan);
    let bye = take(&sent, pbx.addr.ip(), "BYE ", "BYE to the pbx");
    let sent = t.recv(&uas_response(&bye, 200, "OK", &tag, false), pbx, lan);
    take(
        &sent,
        carrier.addr.ip(),
        "SIP/2.0 200",
        "BYE's 200 to the carrier",
    );
}

fn main() {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let calls: u64 = if quick { 20_000 } else { 200_000 };
    let text = hil_tests::calls::config(&[])
        .replace("max_cps = 200", "max_cps = 1000000")
        .replace("max_calls = 2000", "max_calls = 1000000");
    if !text.contains("max_cps = 1000000") || !text.contains("max_calls = 1000000") {
        fail("config", "lab.toml changed: cannot raise max_cps/max_calls");
    }
    let cfg = Config::parse(&text, Path::new("lab.toml")).unwrap_or_else(|e| fail("config", e));
    // Our address toward each destination: the lab appliance's private one.
    let local_for: HashMap<IpAddr, IpAddr> = cfg
        .sip
        .routes
        .iter()
        .flat_map(|r| r.destinations.get_ref().iter())
        .map(|d| (d.uri.get_ref().addr.ip(), IpAddr::V4(A_PRIV_V4)))
        .collect();
    let mut settings = Settings::from_config(&cfg, local_for);
    settings
        .media
        .own
        .extend([IpAddr::V4(A_WAN_V4), IpAddr::V4(A_PRIV_V4)]);
    let unix0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let now = Now {
        mono: Millis(0),
        unix_ms: unix0,
    };
    let mut t = Timed {
        proxy: Proxy::new(settings, &cfg, now),
        clock_us: 0,
        unix0,
        spent: Duration::ZERO,
        msgs_in: 0,
        msgs_out: 0,
        records: 0,
    };
    // Warm-up (tables grown, caches warm), not counted.
    for i in 0..2_000 {
        call(&mut t, i);
        t.clock_us += 1_000_000 / RATE;
    }
    t.tick();
    let (spent0, in0, out0, rec0) = (t.spent, t.msgs_in, t.msgs_out, t.records);
    let wall = Instant::now();
    for i in 2_000..2_000 + calls {
        call(&mut t, i);
        t.clock_us += 1_000_000 / RATE;
        if i % 100 == 0 {
            t.tick();
        }
    }
    let n = calls as f64;
    let core_us = (t.spent - spent0).as_secs_f64() * 1e6 / n;
    eprintln!(
        "bench-sip-core: {calls} calls in {:.1} s ({:.0} calls/s with the peers' side), the \
         core's part {core_us:.2} µs per call; calls left in the core: {}",
        wall.elapsed().as_secs_f64(),
        n / wall.elapsed().as_secs_f64(),
        t.proxy.call_count()
    );
    println!(
        "BENCH sip-core core_us_per_call={core_us:.2} calls={calls} messages_in_per_call={:.1} \
         messages_out_per_call={:.1} records_per_call={:.1} quick={quick}",
        (t.msgs_in - in0) as f64 / n,
        (t.msgs_out - out0) as f64 / n,
        (t.records - rec0) as f64 / n
    );
}
