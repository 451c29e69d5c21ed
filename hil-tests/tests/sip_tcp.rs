//! SIP over TCP under attack: the real daemon on appliance A (config/lab.toml plus a
//! `[sip.tcp]` table with a low per-source cap and short message timeouts), sipp carrying
//! 1000 calls over TCP from the carrier to the pbx, and, for as long as they go on, an
//! attacker on the WAN side that (a) opens 10,000 idle connections from one address the
//! firewall admits (and keeps opening more) and (b) drips 60 KiB messages a byte every
//! 100 ms from the carrier's own address, into a header section and into a body by turns.
//! Then a committed shorter idle timeout closes the connections the flooder kept. The
//! assertions are on what the system did: the sockets the appliance holds (`ss` in its
//! namespace), the connections the attacker saw closed and how far its drips got, the
//! calls sipp completed and the daemon's log lines; never on how long anything took.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hil_tests::calls::wait_until;
use hil_tests::sipp::{Sipp, Transport};
use hil_tests::{addr, Appliance, Host, Lab};

/// A number of the lab's TCP route (tv-spot: the pbxs over TCP).
const TCP_NUMBER: &str = "+15550100207";
/// `[sip.tcp] max_connections_per_source` in the test's config.
const PER_SOURCE: usize = 100;
/// Connections the flooder opens.
const FLOOD: usize = 10_000;
/// Legitimate calls placed during the attacks.
const CALLS: u64 = 1000;
/// The flooder: the carrier host's second address, admitted to the SIP port by the test's
/// allowlist but not a carrier peer.
const FLOODER: Ipv4Addr = addr::CARRIER_V4_ALT;
/// The dripped message: 60 KiB.
const DRIP_LEN: usize = 60 * 1024;

/// config/lab.toml, the flooder's address admitted to TCP 5060, and `[sip.tcp]` with the
/// per-source cap, 2 s message timeouts and `extra` keys.
fn config(extra: &str) -> String {
    let mut t = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab.toml"))
        .expect("config/lab.toml");
    let from = "name = \"carrier-sip-tcp\"\nzone = \"wan\"\nsources = [\"203.0.113.10/32\", ";
    assert!(t.contains(from), "config/lab.toml has no {from:?}");
    t = t.replacen(
        from,
        "name = \"carrier-sip-tcp\"\nzone = \"wan\"\nsources = [\"203.0.113.10/32\", \"203.0.113.64/28\", ",
        1,
    );
    t.push_str(&format!(
        "\n[sip.tcp]\nmax_connections_per_source = {PER_SOURCE}\nheader_timeout_secs = 2\nbody_timeout_secs = 2\n{extra}"
    ));
    t
}

fn sip_port() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(addr::A_WAN_V4), 5060)
}

/// A TCP connection from `src` (a blocking connect, at most 5 s), non-blocking once open.
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = hil_tests::probe::tcp_stream(Some(IpAddr::V4(src)), dst, Duration::from_secs(5))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Has the other end closed (FIN) or reset the connection? (The appliance never sends
/// anything on these.)
fn closed_by_peer(mut s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// What the flooder saw.
#[derive(Debug)]
struct Flood {
    /// Handshakes that completed.
    connected: usize,
    /// Connects that failed, and how.
    failed: Vec<String>,
    /// Connections the appliance closed.
    closed: usize,
    /// Connections still open when the flood was over.
    open: Vec<TcpStream>,
}

/// Opens `FLOOD` connections from `FLOODER` as fast as it can, sets `burst_done`, then goes
/// on opening one every 5 ms until `stop`; sends nothing, keeps what stays open.
fn flood(stop: &AtomicBool, burst_done: &AtomicBool) -> Flood {
    let mut f = Flood {
        connected: 0,
        failed: Vec::new(),
        closed: 0,
        open: Vec::new(),
    };
    let sweep = |f: &mut Flood| {
        let before = f.open.len();
        f.open.retain(|s| !closed_by_peer(s));
        f.closed += before - f.open.len();
    };
    for n in 1.. {
        if n > FLOOD {
            burst_done.store(true, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        match connect_from(FLOODER, sip_port()) {
            Ok(s) => {
                f.connected += 1;
                f.open.push(s);
            }
            // The appliance's reset can beat connect() back to us.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                f.connected += 1;
                f.closed += 1;
            }
            Err(e) => f.failed.push(e.to_string()),
        }
        // Keep the flooder's file descriptors bounded: let the appliance's resets catch up.
        let deadline = Instant::now() + Duration::from_secs(20);
        while f.open.len() > PER_SOURCE + 200 && Instant::now() < deadline {
            sweep(&mut f);
            if f.open.len() > PER_SOURCE + 200 {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
    // Every refusal is a reset right after the handshake: wait for the last ones.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        sweep(&mut f);
        if f.open.len() <= PER_SOURCE || Instant::now() > deadline {
            return f;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A drip: the local port it came from, the bytes it got through before the appliance
/// closed the connection (`None`: never closed; the drip gives up after 30 s).
#[derive(Debug)]
struct Drip {
    /// Into the body (after a whole header section) rather than the header section.
    body: bool,
    port: u16,
    cut_after: Option<usize>,
}

/// Sends `head` at once, then `drip` one byte every 100 ms, from the carrier's address.
fn drip_one(head: &[u8], drip: &[u8]) -> Drip {
    let mut s = connect_from(addr::CARRIER_V4, sip_port()).expect("drip connects");
    let port = s.local_addr().expect("local address").port();
    s.write_all(head).expect("head sent");
    let give_up = Instant::now() + Duration::from_secs(30);
    for (i, b) in drip.iter().enumerate() {
        if closed_by_peer(&s) || s.write(std::slice::from_ref(b)).is_err() {
            return Drip {
                body: !head.is_empty(),
                port,
                cut_after: Some(i),
            };
        }
        if Instant::now() > give_up {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    Drip {
        body: !head.is_empty(),
        port,
        cut_after: None,
    }
}

/// Drips into a header section, then into a body, and again, until `stop`.
fn drips(stop: &AtomicBool) -> Vec<Drip> {
    let mut done = Vec::new();
    for body in [false, true].into_iter().cycle() {
        if stop.load(Ordering::Relaxed) && done.len() >= 2 {
            break;
        }
        let (head, rest) = big_invite(body);
        done.push(drip_one(&head, &rest));
    }
    done
}

/// A 60 KiB INVITE to the TCP route: its header section is `DRIP_LEN` bytes (padding
/// headers) if `body` is false; otherwise a small header section announces a `DRIP_LEN`
/// body.
fn big_invite(body: bool) -> (Vec<u8>, Vec<u8>) {
    let mut head = format!(
        "INVITE sip:{TCP_NUMBER}@{a} SIP/2.0\r\nVia: SIP/2.0/TCP {c}:5099;branch=z9hG4bKdrip{body}\r\n\
Max-Forwards: 70\r\nFrom: <sip:+14155550123@{c}>;tag=drip\r\nTo: <sip:{TCP_NUMBER}@{a}>\r\n\
Call-ID: drip-{body}@{c}\r\nCSeq: 1 INVITE\r\n",
        a = addr::A_WAN_V4,
        c = addr::CARRIER_V4,
    )
    .into_bytes();
    if body {
        head.extend_from_slice(
            format!("Content-Type: application/sdp\r\nContent-Length: {DRIP_LEN}\r\n\r\n")
                .as_bytes(),
        );
        (head, vec![b'a'; DRIP_LEN])
    } else {
        let mut all = head;
        while all.len() < DRIP_LEN - 100 {
            all.extend_from_slice(
                b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        all.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        (Vec::new(), all)
    }
}

/// The ports of the established connections from `ip` to the SIP port that callgated has
/// accepted (a handshake the kernel completed but the daemon has not yet taken has no
/// process). A connection being refused is among them for the instant between its accept
/// and its reset: holding is being there in two samples.
fn accepted_from(a: &Appliance<'_>, ip: Ipv4Addr) -> HashSet<u16> {
    let out = a
        .ns()
        .exec(&[
            "ss",
            "-Htnp",
            "state",
            "established",
            "src",
            &sip_port().to_string(),
            "dst",
            &ip.to_string(),
        ])
        .expect("ss");
    let peer = format!("{ip}:");
    out.lines()
        .filter(|l| l.contains("callgated"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&peer))
                .and_then(|p| p.parse().ok())
        })
        .collect()
}

/// How many connections from `ip` callgated holds: accepted in two samples 100 ms apart.
fn held_from(a: &Appliance<'_>, ip: Ipv4Addr) -> usize {
    let first = accepted_from(a, ip);
    thread::sleep(Duration::from_millis(100));
    accepted_from(a, ip).intersection(&first).count()
}

#[test]
fn floods_and_drips_are_cut_off_while_tcp_calls_go_through() {
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx]).expect("lab");
    let a = Appliance::start(&lab, Host::A, &config("")).expect("appliance starts");
    let carrier = lab.ns(Host::Carrier);
    let pbx = Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
        .local(addr::PBX_V4, 5060)
        .transport(Transport::Tcp)
        .spawn()
        .expect("callee starts");
    pbx.wait_ready(Duration::from_secs(10))
        .expect("callee ready");
    let calls = Sipp::uac(&carrier, "uac.xml")
        .local(addr::CARRIER_V4, 5060)
        .remote(addr::A_WAN_V4, 5060)
        .transport(Transport::Tcp)
        .service(TCP_NUMBER)
        .calls(CALLS)
        .rate(50.0)
        .duration(Duration::from_millis(100))
        .timeout(Duration::from_secs(240))
        .spawn()
        .expect("caller starts");
    wait_until("the first calls go through", 20, || {
        calls.snapshot().is_ok_and(|r| r.successful > 0)
    });

    // Both attacks at once, for as long as the calls go on; meanwhile count what the
    // appliance holds from the flooder.
    let (stop, burst_done) = (AtomicBool::new(false), AtomicBool::new(false));
    let (flood, drips, most_held, calls_at_burst) = thread::scope(|s| {
        let f = s.spawn(|| carrier.run_in(|| flood(&stop, &burst_done)));
        let d = s.spawn(|| carrier.run_in(|| drips(&stop)));
        let (mut most, mut at_burst) = (0, None);
        let mut before = accepted_from(&a, FLOODER);
        while calls.is_running() {
            thread::sleep(Duration::from_millis(100));
            let now = accepted_from(&a, FLOODER);
            most = most.max(now.intersection(&before).count());
            before = now;
            if at_burst.is_none() && burst_done.load(Ordering::Relaxed) {
                at_burst = Some(calls.snapshot().map_or(0, |r| r.successful));
            }
        }
        stop.store(true, Ordering::Relaxed);
        (f.join().unwrap(), d.join().unwrap(), most, at_burst)
    });

    let r = calls.wait(Duration::from_secs(240)).expect("caller ends");
    let _ = pbx.stop();
    let log = a.log();
    eprintln!(
        "flood: {} connected, {} closed by the appliance, {} held (at most {most_held} seen); \
         drips cut after {:?} of {DRIP_LEN} bytes; calls: {} successful, {} failed, \
         {} retransmissions ({calls_at_burst:?} done when the first {FLOOD} connects were)",
        flood.connected,
        flood.closed,
        flood.open.len(),
        drips.iter().map(|d| d.cut_after).collect::<Vec<_>>(),
        r.successful,
        r.failed,
        r.retransmissions,
    );
    // (a) The flood: the appliance took the per-source cap's worth and reset every other
    // connection at once; it never held more.
    assert!(flood.connected >= FLOOD, "{flood:?}");
    assert!(
        flood.failed.is_empty(),
        "every handshake completed: {flood:?}"
    );
    assert_eq!(flood.open.len(), PER_SOURCE, "{flood:?}");
    assert_eq!(flood.closed, flood.connected - PER_SOURCE, "{flood:?}");
    assert!(most_held <= PER_SOURCE, "held {most_held} from the flooder");
    assert_eq!(held_from(&a, FLOODER), PER_SOURCE);
    assert!(
        log.contains(&format!(
            "sip: tcp: refused a connection from {FLOODER}: max_connections_per_source ({PER_SOURCE}) are open from it"
        )),
        "refusals logged:\n{log}"
    );
    // (b) The drips: each was cut off long before its message was complete, the first two
    // (the others' log lines may be rate-limited) by their timeouts.
    for d in &drips {
        assert!(
            d.cut_after.is_some_and(|n| n < DRIP_LEN),
            "the drip was not cut off: {d:?}"
        );
    }
    for d in drips.iter().take(2) {
        let why = if d.body {
            "body timeout"
        } else {
            "header timeout"
        };
        let line = format!(
            "sip: tcp: closed the connection with {}:{}: {why}",
            addr::CARRIER_V4,
            d.port
        );
        assert!(log.contains(&line), "{line:?} not in the log:\n{log}");
    }
    // The calls: at least 99.9% went through while the attacks went on (the flood's first
    // burst among them).
    assert!(
        calls_at_burst.is_some_and(|n| n < CALLS),
        "the flood's burst ended after the calls: {calls_at_burst:?}"
    );
    assert_eq!(r.created, CALLS, "{}", r.summary());
    assert!(
        r.successful >= CALLS - 1 && r.failed <= 1,
        "{}",
        r.summary()
    );
    let st = a.cli(&["--json", "show", "sip", "stats"]);
    assert!(st.ok(), "show sip stats: {}", st.stderr);
    let answered = st.json()["stats"]["calls_answered"].as_u64().unwrap_or(0);
    assert!(answered >= CALLS - 1, "answered {answered}");

    // Idle connections: a shorter idle timeout, committed, applies to the open ones too:
    // the flooder's last 100 are closed.
    let c = a.commit(&config("idle_timeout_secs = 2\n"), &[]);
    assert!(c.ok(), "commit: {} {}", c.stdout, c.stderr);
    wait_until("the held connections are closed as idle", 30, || {
        flood.open.iter().all(closed_by_peer)
    });
    assert_eq!(held_from(&a, FLOODER), 0);
    let log = a.log();
    let flooder = format!("sip: tcp: closed the connection with {FLOODER}:");
    assert!(
        log.lines()
            .any(|l| l.contains(&flooder) && l.contains(": idle timeout")),
        "idle closes logged:\n{log}"
    );
}
