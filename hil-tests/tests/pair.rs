//! The redundant pair end to end: two real daemons (A and B, each with its own swtpm),
//! paired through the console, heartbeats over the sync link and the private segment,
//! virtual addresses moved by rtnetlink, calls from sipp on the carrier to the WAN VIP.
//! Each test asserts on what the kernel of each appliance holds (`ip addr`), on what the
//! peers saw (sipp), and on the daemons' counters.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use hil_tests::addr::{self, A_PRIV_V4, B_PRIV_V4, WAN_VIP_V4};
use hil_tests::calls::{now_ms, u, wait_cdrs, CALLER, CALLER_NAME, UDP_NUMBER};
use hil_tests::pair::{
    new_pair_lab, pair_toml, role, show_pair, start_pair, start_pair_tls, vips_held, wait_until,
    PairTls, VIPS, WAN_VIPS,
};
use hil_tests::sipp::{Sipp, SippHandle, Transport};
use hil_tests::spoof::{sniff_udp4, udp4_spoof};
use hil_tests::tls::{
    cert_args, enrol_named, fingerprint, options_request_to, s_client_to, through_front, tls_stats,
    SipPki, TlsFront, TLS_PORT,
};
use hil_tests::{Host, Lab, Segment};

const HEARTBEAT_PORT: u16 = 5405;

fn callee(lab: &Lab) -> SippHandle<'_> {
    let h = Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
        .local(addr::PBX_V4, 5060)
        .transport(Transport::Udp)
        .spawn()
        .expect("callee starts");
    h.wait_ready(Duration::from_secs(10)).expect("callee ready");
    h
}

/// `n` calls from the carrier to the pair's WAN VIP at `rate` per second, each held
/// `hold`, under way.
fn held_calls(lab: &Lab, n: u64, rate: f64, hold: Duration) -> SippHandle<'_> {
    Sipp::uac(&lab.ns(Host::Carrier), "uac.xml")
        .local(addr::CARRIER_V4, 5060)
        .remote(WAN_VIP_V4, 5060)
        .transport(Transport::Udp)
        .service(UDP_NUMBER)
        .caller(CALLER, CALLER_NAME)
        .calls(n)
        .rate(rate)
        .duration(hold)
        .timeout(Duration::from_secs(60))
        .spawn()
        .expect("caller")
}

/// A new call through the WAN VIP succeeds and is recorded on `x`.
fn a_call_is_recorded_on(lab: &Lab, x: &hil_tests::Appliance<'_>) {
    let r = call_via_vip(lab);
    assert_eq!((r.successful, r.failed), (1, 0), "{}", r.summary());
    assert_eq!(wait_cdrs(x, 1).len(), 1);
}

/// One call from the carrier to the pair's WAN VIP.
fn call_via_vip(lab: &Lab) -> hil_tests::sipp::SippResult {
    Sipp::uac(&lab.ns(Host::Carrier), "uac.xml")
        .local(addr::CARRIER_V4, 5060)
        .remote(WAN_VIP_V4, 5060)
        .transport(Transport::Udp)
        .service(UDP_NUMBER)
        .caller(CALLER, CALLER_NAME)
        .calls(1)
        .run()
        .expect("sipp runs")
}

#[test]
fn the_active_holds_every_virtual_address_and_takes_the_calls() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    assert_eq!(vips_held(&lab, Host::A), VIPS.to_vec());
    assert!(vips_held(&lab, Host::B).is_empty());
    let sa = show_pair(&a);
    assert_eq!(sa["paths"].as_array().map(Vec::len), Some(2), "{sa}");
    for p in sa["paths"].as_array().unwrap() {
        assert_eq!(p["link_up"], true, "{sa}");
        assert!(p["received"].as_u64().unwrap() > 0, "{sa}");
    }
    assert_eq!(show_pair(&b)["peer_role"], "active");

    let _pbx = callee(&lab);
    let r = call_via_vip(&lab);
    assert_eq!((r.successful, r.failed), (1, 0), "{}", r.summary());
    let recs = wait_cdrs(&a, 1);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["disposition"], "answered", "{}", recs[0]);
    assert_eq!(recs[0]["appliance"], "lab-a");
    // The standby holds the same record, replicated over the sync channel.
    let on_b = wait_cdrs(&b, 1);
    assert_eq!(on_b, recs, "B's copy of A's record");
    let rep = &show_pair(&a)["replication"];
    assert_eq!(rep["connected"], true, "{rep}");
    assert!(rep["batches_acked"].as_u64().unwrap() >= 1, "{rep}");
    assert_eq!(show_pair(&b)["synced"], true);
    // Nothing left unacknowledged: no lag.
    assert!(
        wait_until(Duration::from_secs(2), || {
            let rep = &show_pair(&a)["replication"];
            rep["lag_records"] == 0 && rep["lag_ms"] == 0
        }),
        "{}",
        show_pair(&a)
    );
    let text = a.cli(&["show", "pair"]).stdout;
    assert!(text.contains("lag 0 records / 0 ms"), "{text}");
}

/// The MAC address of `iface` in `host`'s namespace.
fn mac(lab: &Lab, host: Host, iface: &str) -> String {
    let out = lab.ns(host).ip(&["-o", "link", "show", iface]).unwrap();
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// The carrier's neighbour entry for `ip`, if any.
fn carrier_neigh(lab: &Lab, ip: &str) -> String {
    lab.ns(Host::Carrier)
        .ip(&["neigh", "show", ip])
        .unwrap_or_default()
}

#[test]
fn sigkill_of_the_active_moves_the_addresses_and_new_calls_reach_the_survivor() {
    let lab = new_pair_lab();
    let (mut a, b) = start_pair(&lab);
    let _pbx = callee(&lab);
    // The carrier knows both WAN VIPs at A's MAC address.
    let carrier = lab.ns(Host::Carrier);
    assert!(carrier.ping(None, WAN_VIP_V4, Duration::from_secs(2)));
    // (No ping over IPv6 on the WAN in the lab config: any datagram resolves the address.)
    carrier.udp_send(None, addr::WAN_VIP_V6, 5060, b"x");
    let (mac_a, mac_b) = (mac(&lab, Host::A, "wan0"), mac(&lab, Host::B, "wan0"));
    assert!(wait_until(Duration::from_secs(2), || {
        carrier_neigh(&lab, "203.0.113.5").contains(&mac_a)
            && carrier_neigh(&lab, "2001:db8:1::5").contains(&mac_a)
    }));
    let t0 = Instant::now();
    a.kill9();
    // A's guard takes the addresses off A; B takes them.
    assert!(
        wait_until(Duration::from_secs(3), || vips_held(&lab, Host::B).len()
            == VIPS.len()),
        "B did not take over: {}\n{}",
        show_pair(&b),
        b.log()
    );
    let took = t0.elapsed();
    assert!(
        vips_held(&lab, Host::A).is_empty(),
        "A kept addresses after SIGKILL"
    );
    // Gratuitous ARP and the unsolicited neighbour advertisement moved the carrier's
    // entries to B's MAC address at once (no waiting for them to expire).
    assert!(
        wait_until(Duration::from_millis(600), || carrier_neigh(
            &lab,
            "203.0.113.5"
        )
        .contains(&mac_b)
            && carrier_neigh(&lab, "2001:db8:1::5").contains(&mac_b)),
        "v4: {} v6: {} (B is {mac_b})",
        carrier_neigh(&lab, "203.0.113.5"),
        carrier_neigh(&lab, "2001:db8:1::5")
    );
    assert_eq!(role(&b), "active");
    eprintln!("takeover after SIGKILL seen by the test in {took:?}");
    a_call_is_recorded_on(&lab, &b);
}

#[test]
fn a_stopped_active_is_fenced_and_comes_back_as_standby() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    let pid = show_pid(&a);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // While A is stopped its guard releases the addresses, and B takes them.
    assert!(
        wait_until(Duration::from_secs(3), || vips_held(&lab, Host::B).len()
            == VIPS.len()
            && vips_held(&lab, Host::A).is_empty()),
        "A: {:?} B: {:?}\n{}",
        vips_held(&lab, Host::A),
        vips_held(&lab, Host::B),
        b.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    // For two seconds after it resumes, A never holds an address and is never active.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(vips_held(&lab, Host::A).is_empty(), "A took addresses back");
        assert_eq!(vips_held(&lab, Host::B).len(), VIPS.len());
        assert_ne!(role(&a), "active", "{}", show_pair(&a));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        wait_until(Duration::from_secs(3), || role(&a) == "standby"),
        "{}",
        show_pair(&a)
    );
    assert_eq!(role(&b), "active");
}

/// Every heartbeat the daemon has refused, whatever the reason.
fn rejected(v: &serde_json::Value) -> u64 {
    v["rejected"].as_object().map_or(0, |r| {
        r.values().filter_map(serde_json::Value::as_u64).sum()
    })
}

fn show_pid(a: &hil_tests::Appliance<'_>) -> nix::unistd::Pid {
    // The daemon is the process listening on the control socket; `status` is not needed:
    // the lab records the pid of what it spawned.
    nix::unistd::Pid::from_raw(a.pid().expect("daemon pid") as i32)
}

#[test]
fn forged_replayed_truncated_and_flooded_heartbeats_change_nothing() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    let before_a = show_pair(&a);
    let before_b = show_pair(&b);
    let from_b = SocketAddrV4::new(B_PRIV_V4, HEARTBEAT_PORT);
    let to_a = SocketAddrV4::new(A_PRIV_V4, HEARTBEAT_PORT);
    // A real heartbeat of B's, copied off the switch: the replay.
    let real = sniff_udp4(&lab.switch_name(), from_b, to_a, Duration::from_secs(2))
        .expect("a heartbeat of B's crosses the switch");
    let len = real.len();
    let pbx = lab.ns_name(Host::Pbx);
    let mut forged = real.clone();
    forged[len / 2] ^= 0x01;
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("replay", vec![real.clone(); 5]),
        ("auth", vec![forged]),
        ("header", vec![vec![0x5a; len]]),
        (
            "length",
            vec![
                real[..len - 1].to_vec(),
                [real.clone(), vec![0; 64]].concat(),
                vec![],
            ],
        ),
    ];
    // A replayed heartbeat is counted as a replay, or (when either side has moved to a new
    // session since it was copied, as a loaded machine can make it) as of an unknown
    // session: refused either way.
    let count = |v: &serde_json::Value, counter: &str| {
        let r = &v["rejected"];
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        match counter {
            "replay" => n("replay") + n("unknown_session"),
            c => n(c),
        }
    };
    for (counter, payloads) in &cases {
        let sent = udp4_spoof(&pbx, from_b, to_a, payloads);
        assert_eq!(sent, payloads.len());
        let want = count(&before_a, counter) + payloads.len() as u64;
        assert!(
            wait_until(Duration::from_secs(2), || count(&show_pair(&a), counter)
                >= want),
            "{counter}: {}",
            show_pair(&a)["rejected"]
        );
    }
    // A flood: 20,000 forged heartbeats from B's address as fast as they go.
    let flood: Vec<Vec<u8>> = (0..20_000u32)
        .map(|i| {
            let mut f = real.clone();
            f[len - 1 - (i as usize % 16)] ^= (i % 251) as u8 | 1;
            f
        })
        .collect();
    let dropped_before = lab.ns(Host::A).udp_rcvbuf_errors();
    let rejected_before = rejected(&show_pair(&a));
    assert_eq!(udp4_spoof(&pbx, from_b, to_a, &flood), flood.len());
    // Every forged heartbeat is either refused by the daemon or dropped by A's kernel when
    // the socket buffer is full (a flood cannot queue up work); none is taken. How many
    // the daemon reads before the buffer fills depends on what else the machine runs.
    let all_accounted = || {
        let refused = rejected(&show_pair(&a)) - rejected_before;
        let dropped = lab.ns(Host::A).udp_rcvbuf_errors() - dropped_before;
        refused >= 1 && refused + dropped >= flood.len() as u64
    };
    assert!(
        wait_until(Duration::from_secs(5), all_accounted),
        "refused {}, dropped by the kernel {}, of {}: {}",
        rejected(&show_pair(&a)) - rejected_before,
        lab.ns(Host::A).udp_rcvbuf_errors() - dropped_before,
        flood.len(),
        show_pair(&a)
    );
    let after_a = show_pair(&a);
    let after_b = show_pair(&b);
    assert_eq!(after_a["role"], "active");
    assert_eq!(after_b["role"], "standby");
    assert_eq!(after_a["transitions"], before_a["transitions"], "{after_a}");
    assert_eq!(after_b["transitions"], before_b["transitions"], "{after_b}");
    assert_eq!(after_a["term"], before_a["term"]);
    assert_eq!(after_a["peer_alive"], true, "{after_a}");
    assert_eq!(vips_held(&lab, Host::A).len(), VIPS.len());
    assert!(vips_held(&lab, Host::B).is_empty());
}

#[test]
fn the_wan_link_of_the_active_going_down_hands_everything_to_the_standby() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    lab.set_link(Host::A, hil_tests::Segment::Wan, false)
        .unwrap();
    // B takes the addresses only once A said it released them: never both at once.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        // B first: what B holds and A still holds when read after, both held at once.
        let hb = vips_held(&lab, Host::B);
        let ha = vips_held(&lab, Host::A);
        assert!(
            ha.is_empty() || hb.is_empty(),
            "both hold: A {ha:?} B {hb:?}"
        );
    }
    assert!(
        wait_until(Duration::from_secs(3), || vips_held(&lab, Host::B).len()
            == VIPS.len()
            && vips_held(&lab, Host::A).is_empty()),
        "A: {}\nB: {}",
        show_pair(&a),
        show_pair(&b)
    );
    assert_eq!(role(&b), "active");
    assert_eq!(role(&a), "standby");
    assert_eq!(
        show_pair(&a)["health"],
        50,
        "one of A's two monitored links is down"
    );
    let _pbx = callee(&lab);
    a_call_is_recorded_on(&lab, &b);
}

#[test]
fn a_planned_failover_swaps_the_roles_and_only_the_active_may_ask() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    let refused = b.cli(&["failover"]);
    assert!(
        !refused.ok(),
        "the standby cannot hand over: {}",
        refused.stdout
    );
    let before = show_pair(&a)["term"].as_u64().unwrap();
    let out = a.cli(&["failover"]);
    assert!(out.ok(), "{} {}", out.stdout, out.stderr);
    assert!(
        wait_until(Duration::from_secs(3), || role(&b) == "active"
            && role(&a) == "standby"
            && vips_held(&lab, Host::B).len() == VIPS.len()
            && vips_held(&lab, Host::A).is_empty()),
        "A: {}\nB: {}",
        show_pair(&a),
        show_pair(&b)
    );
    assert!(show_pair(&b)["term"].as_u64().unwrap() > before);
    let last = show_pair(&a)["last_transition"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(last.contains("HandedOver"), "{last}");
    // And it stays that way: no flapping back.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(role(&b), "active");
    assert_eq!(role(&a), "standby");
}

/// `x`'s set of one-address media pinholes, as nft lists it (`None` if nft fails).
fn host_pinholes(x: &hil_tests::Appliance<'_>) -> Option<String> {
    x.nft(&["list", "set", "inet", "callgate", "pinhole4_host"])
        .ok()
}

/// Asserts that `x` comes to hold the lab calls' media pinholes, both directions (sipp's
/// calls all use the same media ports, so they share them), in its own kernel.
fn assert_holds_media_pinholes(x: &hil_tests::Appliance<'_>) {
    assert!(
        wait_until(Duration::from_secs(3), || host_pinholes(x)
            .is_some_and(|l| l.contains("203.0.113.10 . 198.51.100.10 . udp")
                && l.contains("198.51.100.10 . 203.0.113.10 . udp"))),
        "{:?}",
        host_pinholes(x)
    );
}

/// The calls answered through A and held 5 s across A's SIGKILL at `killed_at` (a
/// successful run `r` of 100 calls): each has exactly one final record on `b`, answered,
/// by lab-a, ended by lab-b, in progress at the kill, its duration its end minus its
/// answer (5 s held, the BYE delayed by the takeover at most). Returns their Call-IDs.
fn assert_carried_over(
    b: &hil_tests::Appliance<'_>,
    r: &hil_tests::sipp::SippResult,
    killed_at: u64,
) -> Vec<String> {
    let answered = r.answered();
    assert_eq!(answered.len(), 100);
    wait_cdrs(b, 100);
    let records = hil_tests::calls::cdrs(b);
    for id in &answered {
        let mine: Vec<&serde_json::Value> =
            records.iter().filter(|c| c["call_id"] == *id).collect();
        assert_eq!(mine.len(), 1, "call {id}: {mine:#?}");
        let c = mine[0];
        assert_eq!(c["disposition"], "answered", "{c}");
        assert_eq!(c["appliance"], "lab-a", "{c}");
        assert_eq!(c["ended_by"], "lab-b", "{c}");
        let (answer, end) = (u(&c["answer_at"]), u(&c["end_at"]));
        assert!(
            answer < killed_at && end > killed_at,
            "not in progress at the kill: {c}"
        );
        assert_eq!(u(&c["duration_ms"]), end - answer, "{c}");
        assert!(
            (4_900..10_000).contains(&u(&c["duration_ms"])),
            "duration: {c}"
        );
    }
    answered
}

/// SIGKILL of the active while 100 calls are held: B takes the addresses and carries the
/// calls on from the records A replicated, so the callers' BYEs (all after the kill) are
/// routed by B to the PBX, and every answered call has exactly one complete record on B,
/// naming A as the appliance that answered it.
#[test]
fn sigkill_of_the_active_mid_call_loses_no_call_and_no_record() {
    let lab = new_pair_lab();
    let (mut a, b) = start_pair(&lab);
    let pbx = callee(&lab);
    let call = held_calls(&lab, 100, 50.0, Duration::from_secs(5));
    // All 100 calls are set up within 2 s and held for 5 s: kill A at 2.5 s.
    std::thread::sleep(Duration::from_millis(2500));
    let killed_at = now_ms();
    let standby_set = host_pinholes(&b).expect("nft lists the standby's pinholes");
    assert!(
        !standby_set.contains("elements"),
        "the standby holds pinholes: {standby_set}\nA: {}\nB: {}\nA log:\n{}\nB log:\n{}",
        show_pair(&a),
        show_pair(&b),
        a.log(),
        b.log()
    );
    a.kill9();
    assert_holds_media_pinholes(&b);
    let r = call.wait(Duration::from_secs(90)).expect("caller ends");
    let _ = pbx.stop();
    assert_eq!(role(&b), "active");
    assert_eq!((r.successful, r.failed), (100, 0), "{}", r.summary());
    let answered = assert_carried_over(&b, &r, killed_at);
    assert!(
        b.log().contains("calls in progress carried on"),
        "{}",
        b.log()
    );
    // A starts again: it comes back as standby and leaves its calls in progress at the
    // kill to B (which ended them): none is carried on twice.
    a.launch().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || role(&a) == "standby"),
        "{}",
        show_pair(&a)
    );
    let on_a = a.cli(&["--json", "show", "calls"]).json()["calls"]
        .as_array()
        .map_or(usize::MAX, Vec::len);
    assert_eq!(on_a, 0, "a standby carries no call on");
    assert!(a.log().contains("left to the pair's peer"), "{}", a.log());
    // and at the rejoin B sends A the final records of those calls, which B wrote while A
    // was down: A holds each exactly once, complete.
    assert!(
        wait_until(Duration::from_secs(10), || wait_cdrs(&a, 100).len() >= 100),
        "A got {} final records; A's log:\n{}\nB's log:\n{}",
        wait_cdrs(&a, 0).len(),
        a.log(),
        b.log()
    );
    let on_a = hil_tests::calls::cdrs(&a);
    for id in &answered {
        let mine: Vec<&serde_json::Value> = on_a.iter().filter(|c| c["call_id"] == *id).collect();
        assert_eq!(mine.len(), 1, "call {id} on A: {mine:#?}");
        assert!(!mine[0]["end_at"].is_null(), "{}", mine[0]);
        assert_eq!(mine[0]["ended_by"], "lab-b", "{}", mine[0]);
    }
}

/// `n` calls from the carrier over SIP TLS to the pair's WAN VIP (sipp over TCP into the
/// carrier's [`TlsFront`], which makes the TLS connections to the VIP), `rate` per second,
/// each held `hold`, under way.
fn held_tls_calls(lab: &Lab, n: u64, rate: f64, hold: Duration) -> SippHandle<'_> {
    through_front(
        Sipp::uac(&lab.ns(Host::Carrier), "uac.xml").local(addr::CARRIER_V4, 5060),
        WAN_VIP_V4,
    )
    .service(UDP_NUMBER)
    .caller(CALLER, CALLER_NAME)
    .calls(n)
    .rate(rate)
    .duration(hold)
    .timeout(Duration::from_secs(90))
    .spawn()
    .expect("caller")
}

/// The TLS twin of [`sigkill_of_the_active_mid_call_loses_no_call_and_no_record`]: the
/// carrier speaks SIP over TLS to the WAN VIP, on a mutual-TLS trunk pinned to its client
/// certificate. Each node made its own key and holds its own certificate naming the VIPs.
/// A is SIGKILLed while the calls are held; the callers' BYEs (all after the kill) go over
/// a new TLS connection to the VIP, which B now serves with its own certificate, and B
/// routes them to the PBX from the call state A replicated: every answered call has
/// exactly one complete record on B. After the takeover B refuses a client without the
/// pinned certificate as A did.
#[test]
fn sigkill_of_the_active_mid_call_over_tls_loses_no_call_and_no_record() {
    let lab = new_pair_lab();
    let pki = SipPki::new().unwrap();
    let trunk = pki.carrier.client_cert("carrier-trunk").unwrap();
    let unpinned = pki.carrier.client_cert("carrier-other").unwrap();
    let rogue = pki.rogue.client_cert("carrier-trunk").unwrap();
    let pin = format!(
        "{{ ca = \"\"\"{}\"\"\", fingerprints = [\"{}\"] }}",
        pki.carrier_ca_pem().unwrap(),
        fingerprint(&trunk.cert).unwrap()
    );
    let (mut a, b) = start_pair_tls(
        &lab,
        Some(&PairTls {
            carrier_pin: Some(pin),
        }),
    );
    // Each node: its own key (`sip tls csr`), a certificate for the WAN VIPs from the lab
    // CA, installed through its CLI.
    for (x, cn) in [(&a, "lab-a"), (&b, "lab-b")] {
        let out = enrol_named(x, &pki, &WAN_VIPS, None);
        assert!(out.ok(), "{cn}: {} {}", out.stdout, out.stderr);
        assert_eq!(
            tls_stats(x)["certificate"]["subject"],
            cn,
            "{}",
            tls_stats(x)
        );
    }
    // The standby listens on the VIP's TLS port too (IP_FREEBIND), though it does not
    // hold the address.
    let tls_vip = format!("{WAN_VIP_V4}:{TLS_PORT}");
    assert!(vips_held(&lab, Host::B).is_empty());
    let ss = lab.ns(Host::B).exec(&["ss", "-Htln"]).unwrap_or_default();
    assert!(
        ss.contains(&tls_vip),
        "B does not listen on {tls_vip}: {ss}"
    );
    let carrier = lab.ns(Host::Carrier);

    let pbx = callee(&lab);
    let front = TlsFront::start(&carrier, &pki, Some(&trunk), WAN_VIP_V4).unwrap();
    let call = held_tls_calls(&lab, 100, 50.0, Duration::from_secs(5));
    // All 100 calls are set up within 2 s and held for 5 s: kill A at 2.5 s.
    std::thread::sleep(Duration::from_millis(2500));
    let killed_at = now_ms();
    // So far the standby took no TLS connection and opened no pinhole.
    let standby_set = host_pinholes(&b).expect("nft lists the standby's pinholes");
    assert!(
        !standby_set.contains("elements"),
        "the standby holds pinholes: {standby_set}"
    );
    assert_eq!(
        u(&tls_stats(&b)["stats"]["handshakes"]),
        0,
        "{}",
        tls_stats(&b)
    );
    a.kill9();
    assert!(
        wait_until(Duration::from_secs(3), || role(&b) == "active"
            && vips_held(&lab, Host::B).len() == VIPS.len()),
        "B did not take over: {}",
        show_pair(&b)
    );
    assert_holds_media_pinholes(&b);
    // ... and carries the calls on: each is on B's list of calls in progress, answered,
    // its carrier leg over TLS, with media, unless it has already ended there (the list
    // is read first: a call ends at most once in between).
    let shown = b.cli(&["--json", "show", "calls"]).json()["calls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ended = wait_cdrs(&b, 0).len();
    assert!(
        shown.len() + ended >= 100,
        "{} shown, {ended} ended",
        shown.len()
    );
    for c in &shown {
        assert_eq!(c["state"], "answered", "{c}");
        assert_eq!(c["transport"], "tls", "{c}");
        assert!(u(&c["pinholes"]) > 0, "{c}");
    }
    let r = call.wait(Duration::from_secs(90)).expect("caller ends");
    let _ = pbx.stop();
    assert_eq!(role(&b), "active");
    assert_eq!(
        (r.successful, r.failed),
        (100, 0),
        "{}\nTLS connections to: {:?}\nB log:\n{}",
        r.summary(),
        front.subjects(),
        b.log()
    );
    // (the BYEs waited at most for the takeover and a new connection)
    assert_carried_over(&b, &r, killed_at);
    // Nothing left in progress on B, no pinhole left open.
    assert!(
        wait_until(Duration::from_secs(5), || b
            .cli(&["--json", "show", "calls"])
            .json()["calls"]
            .as_array()
            .is_some_and(Vec::is_empty)),
        "{}",
        b.cli(&["show", "calls"]).stdout
    );
    assert!(
        wait_until(Duration::from_secs(5), || host_pinholes(&b)
            .is_some_and(|l| !l.contains("203.0.113.10 . 198.51.100.10"))),
        "{:?}",
        host_pinholes(&b)
    );
    // Two TLS connections carried the calls, both checked for the VIP against the lab CA:
    // the first (INVITEs, ACKs) to A with A's certificate, the second (the BYEs) to B with
    // B's. B's counters: that handshake, none refused.
    assert_eq!(
        front.subjects(),
        ["subject=CN = lab-a", "subject=CN = lab-b"]
    );
    let st = tls_stats(&b);
    assert_eq!(u(&st["stats"]["handshakes"]), 1, "{st}");
    assert_eq!(u(&st["stats"]["handshakes_failed"]), 0, "{st}");
    drop(front);
    // The attacker's angle: B holds the trunk's pin as A did. The pinned certificate gets
    // an answer; another CA's, an unpinned one of the carrier's CA, and none get nothing.
    let verify_vip = WAN_VIP_V4.to_string();
    let ask = |args: &[String], tag: &str| {
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["-verify_ip", &verify_vip]);
        s_client_to(
            &carrier,
            &pki,
            WAN_VIP_V4,
            &args,
            &options_request_to(WAN_VIP_V4, tag),
            Duration::from_secs(2),
        )
        .unwrap()
    };
    let out = ask(&cert_args(&trunk), "pinned");
    assert!(out.contains("SIP/2.0 200"), "{out}");
    let failed_before = u(&tls_stats(&b)["stats"]["handshakes_failed"]);
    for (tag, args) in [
        ("rogue", cert_args(&rogue)),
        ("unpinned", cert_args(&unpinned)),
        ("none", Vec::new()),
    ] {
        let out = ask(&args, tag);
        assert!(!out.contains("SIP/2.0"), "{tag}: {out}");
    }
    let st = tls_stats(&b);
    assert_eq!(
        u(&st["stats"]["handshakes_failed"]),
        failed_before + 3,
        "{st}"
    );
}

fn both_settled(lab: &Lab, active: Host) -> bool {
    let standby = if active == Host::A { Host::B } else { Host::A };
    vips_held(lab, active).len() == VIPS.len() && vips_held(lab, standby).is_empty()
}

/// Only one of the two heartbeat paths cut: the other carries the heartbeat, nothing moves.
#[test]
fn cutting_only_the_sync_link_never_makes_two_actives() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    let before = (
        show_pair(&a)["transitions"].clone(),
        show_pair(&b)["transitions"].clone(),
    );
    lab.set_link(Host::A, Segment::Sync, false).unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(
            both_settled(&lab, Host::A),
            "A: {}\nB: {}",
            show_pair(&a),
            show_pair(&b)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(role(&a), "active");
    assert_eq!(role(&b), "standby");
    assert_eq!(show_pair(&b)["peer_alive"], true);
    // Replication runs over the sync link: the standby is no longer synced...
    assert!(wait_until(Duration::from_secs(5), || show_pair(&b)
        ["synced"]
        == false));
    lab.set_link(Host::A, Segment::Sync, true).unwrap();
    // ...and is again once the link is back.
    assert!(
        wait_until(Duration::from_secs(10), || show_pair(&b)["synced"] == true),
        "{}",
        show_pair(&b)
    );
    let after = (
        show_pair(&a)["transitions"].clone(),
        show_pair(&b)["transitions"].clone(),
    );
    assert_eq!(before, after, "no role change");
}

/// Both paths cut at the active's end: it is isolated, steps down, and the standby takes
/// over; at no moment do both hold the addresses.
#[test]
fn cutting_both_paths_at_the_actives_end_hands_over_without_two_actives() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    lab.set_link(Host::A, Segment::Sync, false).unwrap();
    lab.set_link(Host::A, Segment::Private, false).unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    let mut b_took = false;
    while Instant::now() < until {
        // B first: what B holds and A still holds when read after, both held at once.
        let hb = vips_held(&lab, Host::B);
        let ha = vips_held(&lab, Host::A);
        assert!(
            ha.is_empty() || hb.is_empty(),
            "both hold addresses: A {ha:?} B {hb:?}"
        );
        b_took |= hb.len() == VIPS.len();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(b_took, "B: {}", show_pair(&b));
    assert_eq!(role(&a), "standby", "{}", show_pair(&a));
    // A stepped down by itself: isolated (or, on a loaded machine, fenced first because
    // its timers ran late while cut off, which ends in standby just the same).
    let last = show_pair(&a)["last_transition"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        last.contains("Isolated") || last.contains("Fenced") || last.contains("Late"),
        "{}",
        show_pair(&a)
    );
    // The cables back: A hears B active with a higher term and stays standby.
    lab.set_link(Host::A, Segment::Sync, true).unwrap();
    lab.set_link(Host::A, Segment::Private, true).unwrap();
    assert!(wait_until(Duration::from_secs(5), || show_pair(&a)
        ["peer_alive"]
        == true));
    std::thread::sleep(Duration::from_millis(500));
    let pick = |l: String| {
        l.lines()
            .filter(|x| x.contains("pair:"))
            .map(|x| format!("{x}\n"))
            .collect::<String>()
    };
    assert!(
        both_settled(&lab, Host::B),
        "A: {}\nB: {}\nA log:\n{}\nB log:\n{}",
        show_pair(&a),
        show_pair(&b),
        pick(a.log()),
        pick(b.log())
    );
    assert_eq!(role(&a), "standby");
}

/// Both paths cut in the middle (a switch that drops heartbeats, links up): each takes the
/// other for dead, so both are active (the documented behaviour of a two-node pair
/// without a third party); when the heartbeat gets through again, the higher term keeps
/// the role and the other releases everything at once, its calls' media pinholes too.
#[test]
fn a_switch_that_drops_heartbeats_makes_two_actives_until_it_heals() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    // One call held through the split: A opens its media pinholes before the cut.
    let pbx = callee(&lab);
    let call = held_calls(&lab, 1, 1.0, Duration::from_secs(6));
    assert!(
        wait_until(Duration::from_secs(3), || a
            .nft(&["list", "set", "inet", "callgate", "pinhole4_host"])
            .is_ok_and(|l| l.contains("elements"))),
        "A opened no pinhole: {}",
        a.log()
    );
    let sw = lab.switch();
    sw.exec(&["nft", "add", "table", "bridge", "cut"]).unwrap();
    sw.exec(&[
        "nft",
        "add",
        "chain",
        "bridge",
        "cut",
        "heartbeats",
        "{ type filter hook forward priority 0; policy accept; }",
    ])
    .unwrap();
    sw.exec(&[
        "nft",
        "add",
        "rule",
        "bridge",
        "cut",
        "heartbeats",
        "udp",
        "dport",
        "5405",
        "drop",
    ])
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || role(&a) == "active"
            && role(&b) == "active"),
        "A: {}\nB: {}",
        show_pair(&a),
        show_pair(&b)
    );
    let b_term = show_pair(&b)["term"].as_u64().unwrap();
    assert!(b_term > show_pair(&a)["term"].as_u64().unwrap());
    sw.exec(&["nft", "delete", "table", "bridge", "cut"])
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || role(&a) == "standby"
            && both_settled(&lab, Host::B)),
        "A: {}\nB: {}",
        show_pair(&a),
        show_pair(&b)
    );
    assert_eq!(role(&b), "active");
    assert_eq!(
        show_pair(&b)["term"].as_u64().unwrap(),
        b_term,
        "the higher term kept it"
    );
    // A stood down: it forwards none of the call's media any more (B carries it on).
    assert!(
        wait_until(Duration::from_secs(2), || a
            .nft(&["list", "set", "inet", "callgate", "pinhole4_host"])
            .is_ok_and(|l| !l.contains("elements"))),
        "{}",
        a.nft(&["list", "set", "inet", "callgate", "pinhole4_host"])
            .unwrap_or_default()
    );
    let _ = call.wait(Duration::from_secs(30));
    let _ = pbx.stop();
}

/// A failed node comes back: it rejoins as standby, takes the active's calls in progress
/// in the bulk sync, and the active never notices an outage (no role change).
#[test]
fn a_node_that_comes_back_rejoins_as_standby_and_syncs() {
    let lab = new_pair_lab();
    let (mut a, b) = start_pair(&lab);
    a.kill9();
    assert!(wait_until(Duration::from_secs(3), || both_settled(
        &lab,
        Host::B
    )));
    let pbx = callee(&lab);
    // One call made and ended while A is down: its record reaches A at the rejoin.
    a_call_is_recorded_on(&lab, &b);
    let missed = hil_tests::calls::cdrs(&b)[0]["call_id"].clone();
    let call = held_calls(&lab, 20, 20.0, Duration::from_secs(4));
    std::thread::sleep(Duration::from_millis(1500));
    let b_before = show_pair(&b)["transitions"].clone();
    a.launch().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || role(&a) == "standby"
            && show_pair(&a)["synced"] == true),
        "{}\n{}",
        show_pair(&a),
        a.log()
    );
    assert_eq!(
        show_pair(&b)["transitions"],
        b_before,
        "B never changed role"
    );
    assert!(both_settled(&lab, Host::B));
    // The bulk sync brought A the calls B holds in progress.
    let rep = &show_pair(&a)["replication"];
    assert!(rep["records_received"].as_u64().unwrap() >= 1, "{rep}");
    let r = call.wait(Duration::from_secs(60)).expect("caller ends");
    let _ = pbx.stop();
    assert_eq!((r.successful, r.failed), (20, 0), "{}", r.summary());
    // A holds every record: the one it missed and the 20 it saw start.
    let on_a = wait_cdrs(&a, 21);
    assert_eq!(on_a.len(), 21, "{on_a:#?}");
    assert_eq!(on_a.iter().filter(|c| c["call_id"] == missed).count(), 1);
    assert!(on_a.iter().all(|c| c["appliance"] == "lab-b"), "{on_a:#?}");
}

/// A planned failover under call load: the standby takes over before the active lets go,
/// and no call fails.
#[test]
fn a_planned_failover_under_call_load_fails_no_call() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    let pbx = callee(&lab);
    let call = held_calls(&lab, 100, 40.0, Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(1500));
    let out = a.cli(&["failover"]);
    assert!(out.ok(), "{} {}", out.stdout, out.stderr);
    let r = call.wait(Duration::from_secs(60)).expect("caller ends");
    let _ = pbx.stop();
    assert_eq!((r.successful, r.failed), (100, 0), "{}", r.summary());
    assert_eq!(role(&b), "active");
    assert!(both_settled(&lab, Host::B));
    assert_eq!(wait_cdrs(&b, 100).len(), 100);
    // A, now standby, holds every final record too: B's own, and those of the calls A
    // answered and B ended (no call stays "in progress" on A to be carried on again).
    let on_a = wait_cdrs(&a, 100);
    assert_eq!(on_a.len(), 100, "{}", a.log());
    let ended_by_b = on_a.iter().filter(|c| c["ended_by"] == "lab-b").count();
    assert!(ended_by_b > 0, "some calls were A's at the handover");
    assert!(a.cli(&["--json", "show", "calls"]).json()["calls"]
        .as_array()
        .is_some_and(Vec::is_empty));
}

/// `pair rekey` on either appliance: both keep a new pair key (sealed on disk), with no
/// role change; a restarted appliance rejoins under the new key.
#[test]
fn a_rekey_replaces_the_key_on_both_without_a_role_change() {
    let lab = new_pair_lab();
    let (mut a, b) = start_pair(&lab);
    let before = (
        show_pair(&a)["transitions"].clone(),
        show_pair(&b)["transitions"].clone(),
    );
    let file =
        |x: &hil_tests::Appliance<'_>| std::fs::read(x.state_dir().join("pair.key")).unwrap();
    let (ka, kb) = (file(&a), file(&b));
    let out = b.cli(&["pair", "rekey"]);
    assert!(out.ok(), "{} {}", out.stdout, out.stderr);
    assert!(wait_until(Duration::from_secs(2), || show_pair(&a)
        ["rekeys"]
        == 1
        && show_pair(&b)["rekeys"] == 1));
    assert_ne!(file(&a), ka, "A keeps a new key");
    assert_ne!(file(&b), kb, "B keeps a new key");
    std::thread::sleep(Duration::from_millis(500));
    let after = (
        show_pair(&a)["transitions"].clone(),
        show_pair(&b)["transitions"].clone(),
    );
    assert_eq!(before, after, "no role change");
    assert_eq!(show_pair(&a)["rejected"]["auth"], 0, "{}", show_pair(&a));
    assert_eq!(show_pair(&b)["rejected"]["auth"], 0, "{}", show_pair(&b));
    // A stops (B takes over) and starts again: it reads the new key and rejoins.
    assert_eq!(a.stop(), Some(0));
    assert!(wait_until(Duration::from_secs(3), || both_settled(
        &lab,
        Host::B
    )));
    a.launch().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || role(&a) == "standby"
            && show_pair(&a)["peer_alive"] == true
            && show_pair(&b)["replication"]["connected"] == true),
        "{}\n{}",
        show_pair(&a),
        show_pair(&b)
    );
}

/// The pair's config with the traceroute ports narrowed: a change the kernel shows.
const NARROW: (&str, &str) = ("\"33434-33534\"", "\"33434-33500\"");

fn narrowed(host: Host) -> String {
    pair_toml(host).replace(NARROW.0, NARROW.1)
}

/// Whether `x`'s kernel and its running config carry the narrowed ports.
fn narrowed_now(x: &hil_tests::Appliance<'_>) -> (bool, bool) {
    let rules = x.ruleset();
    let text = x.cli(&["show", "config"]).stdout;
    (rules.contains("33434-33500"), text.contains(NARROW.1))
}

/// Whether `x` runs the narrowed ports (its kernel and its config agreeing on it).
fn is_narrowed(x: &hil_tests::Appliance<'_>) -> bool {
    let (k, t) = narrowed_now(x);
    assert_eq!(k, t, "kernel and config disagree on {}", x.log());
    k
}

fn status(x: &hil_tests::Appliance<'_>) -> serde_json::Value {
    x.cli(&["--json", "status"]).json()
}

fn both_connected(a: &hil_tests::Appliance<'_>, b: &hil_tests::Appliance<'_>) -> bool {
    wait_until(Duration::from_secs(10), || {
        show_pair(a)["replication"]["connected"] == true
            && show_pair(b)["replication"]["connected"] == true
    })
}

#[test]
fn a_config_commit_applies_on_both_or_on_neither() {
    let lab = new_pair_lab();
    let (a, mut b) = start_pair(&lab);
    assert!(both_connected(&a, &b));
    assert!(!is_narrowed(&a) && !is_narrowed(&b));

    // 1. Committed on the standby, it applies on both; each keeps its own name.
    let r = b.commit(&narrowed(Host::B), &[]);
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    assert!(is_narrowed(&a) && is_narrowed(&b), "{}", r.stdout);
    assert_eq!(status(&a)["appliance"], "lab-a");
    assert_eq!(status(&b)["appliance"], "lab-b");
    let a_config = a.cli(&["show", "config"]).stdout;
    assert!(a_config.contains("name = \"lab-a\""), "{a_config}");
    let h = a.cli(&["show", "history"]).stdout;
    assert!(h.contains("pair-wide, from lab-b"), "{h}");
    assert_eq!(role(&a), "active", "a commit changes no role");

    // 2. An invalid text is refused by the one asked; nothing changes anywhere.
    let (ra, rb) = (
        status(&a)["revision"].clone(),
        status(&b)["revision"].clone(),
    );
    let r = a.commit("[appliance\nname = 1", &[]);
    assert!(!r.ok());
    assert_eq!(
        (
            status(&a)["revision"].clone(),
            status(&b)["revision"].clone()
        ),
        (ra.clone(), rb.clone())
    );

    // 3. The peer refuses in the first phase (it awaits a confirm of its own): nothing
    //    changes on either.
    let own = b.commit(&pair_toml(Host::B), &["--confirmed", "300", "--this-node"]);
    assert!(own.ok(), "{} {}", own.stdout, own.stderr);
    assert!(
        is_narrowed(&a) && !is_narrowed(&b),
        "--this-node changes B alone"
    );
    let rb = status(&b)["revision"].clone();
    let r = a.commit(&pair_toml(Host::A), &[]);
    assert!(!r.ok(), "{}", r.stdout);
    assert!(
        r.stderr.contains("the peer lab-b refused it"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("nothing changed on either appliance"),
        "{}",
        r.stderr
    );
    assert_eq!(status(&a)["revision"], ra, "A recorded nothing");
    assert_eq!(status(&b)["revision"], rb);
    assert!(is_narrowed(&a), "A's kernel kept its ruleset");
    let c = b.cli(&["confirm", "--this-node"]);
    assert!(c.ok(), "{} {}", c.stdout, c.stderr);
    // Back in step: the pair-wide commit of A's running text.
    let r = a.commit(&pair_toml(Host::A), &[]);
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    assert!(!is_narrowed(&a) && !is_narrowed(&b));

    // 4. The peer fails in the second phase, after A applied: A takes it back.
    b.stop();
    b.set_env("CALLGATE_FAULT_PAIR_COMMIT", "1");
    b.launch().expect("B starts again");
    assert!(both_connected(&a, &b), "B: {}", b.log());
    let (ra, rb) = (
        status(&a)["revision"].as_u64().unwrap(),
        status(&b)["revision"].clone(),
    );
    let r = a.commit(&narrowed(Host::A), &[]);
    assert!(!r.ok(), "{}", r.stdout);
    assert!(r.stderr.contains("failed to apply it"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "revision {} undone as revision {}",
            ra + 1,
            ra + 2
        )),
        "{}",
        r.stderr
    );
    assert!(!is_narrowed(&a) && !is_narrowed(&b), "neither runs it");
    assert_eq!(status(&b)["revision"], rb, "B recorded nothing");
    let h = a.cli(&["show", "history"]).stdout;
    assert!(h.contains(&format!("commit {} undone", ra + 1)), "{h}");
    drop(b);
}

#[test]
fn a_confirmed_commit_rolls_back_on_both_unless_confirmed_and_confirm_keeps_both() {
    let lab = new_pair_lab();
    let (a, b) = start_pair(&lab);
    assert!(both_connected(&a, &b));
    // Unconfirmed: each rolls back at its own deadline.
    let r = a.commit(&narrowed(Host::A), &["--confirmed", "2"]);
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    assert!(r.stdout.contains("both roll back"), "{}", r.stdout);
    assert!(is_narrowed(&a) && is_narrowed(&b));
    assert!(!status(&b)["pending"].is_null(), "B awaits a confirm too");
    assert!(
        wait_until(Duration::from_secs(10), || narrowed_now(&a)
            == (false, false)
            && narrowed_now(&b) == (false, false)),
        "both rolled back"
    );
    assert!(status(&a)["pending"].is_null() && status(&b)["pending"].is_null());
    // Confirmed on B (either may confirm): kept on both.
    let r = a.commit(&narrowed(Host::A), &["--confirmed", "30"]);
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    let c = b.cli(&["confirm"]);
    assert!(c.ok(), "{} {}", c.stdout, c.stderr);
    assert!(status(&a)["pending"].is_null() && status(&b)["pending"].is_null());
    assert!(is_narrowed(&a) && is_narrowed(&b));
}
