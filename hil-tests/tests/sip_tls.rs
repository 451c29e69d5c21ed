//! SIP over TLS end to end: the real daemon on appliance A with a `[sip.tls]` listener,
//! enrolled through its CLI (its key made and sealed there, the lab CA signing its
//! request); the carrier's sipp behind Debian's stunnel (OpenSSL), the PBX's sipp over
//! UDP; `openssl s_client` as the raw TLS peer of the refusal tests. The assertions are on
//! what the peers saw (sipp's counts, the answers `s_client` printed), on the records the
//! daemon stored, on the kernel's blocklist and connections, and on the daemon's TLS
//! counters.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::time::Duration;

use hil_tests::calls::{
    cdrs, config, new_lab, pbx, start, u, wait_cdrs, CALLER, CALLER_NAME, TCP_NUMBER, UDP_NUMBER,
};
use hil_tests::sipp::{Sipp, SippResult, Transport};
use hil_tests::tls::{
    cert_args, enrol, enrol_with, fingerprint, openssl_date, options_request, s_client,
    through_stunnel, tls_stats, SipPki, Stunnel, TLS_PORT,
};
use hil_tests::{addr, Host, Lab};

/// `n` calls over TLS from the carrier (sipp over TCP into stunnel, one connection),
/// `rate` per second, each held `hold`.
fn tls_calls(lab: &Lab, n: u64, rate: f64, hold: Duration) -> Sipp<'_> {
    through_stunnel(Sipp::uac(&lab.ns(Host::Carrier), "uac.xml").local(addr::CARRIER_V4, 5060))
        .service(UDP_NUMBER)
        .caller(CALLER, CALLER_NAME)
        .calls(n)
        .rate(rate)
        .duration(hold)
        .timeout(Duration::from_secs(120))
}

fn run(s: Sipp<'_>) -> SippResult {
    s.run().expect("sipp runs")
}

#[test]
fn calls_over_tls_reach_the_pbx_on_one_connection_and_are_recorded() {
    let lab = new_lab();
    let pki = SipPki::new().unwrap();
    let a = start(&lab, &config(&[]));
    // Before a certificate is installed, TLS is refused and `show sip stats` says why.
    let before = a.cli(&["show", "sip", "stats"]);
    assert!(
        before.stdout.contains("no certificate installed"),
        "{}",
        before.stdout
    );
    // ... and the daemon said so in its log at start.
    assert!(
        a.log().contains("sip: tls: no certificate installed"),
        "{}",
        a.log()
    );
    // A certificate that expires in 10 days installs, with a warning; an expired one is
    // refused and the one in place stays.
    let soon = enrol_with(&a, &pki, Some((&openssl_date(-1), &openssl_date(10))));
    assert!(soon.ok(), "{} {}", soon.stdout, soon.stderr);
    let st = tls_stats(&a);
    assert!(
        st["warning"]
            .as_str()
            .is_some_and(|w| w.contains("expires in 9 days") || w.contains("expires in 10 days")),
        "{st}"
    );
    let expired = enrol_with(&a, &pki, Some((&openssl_date(-30), &openssl_date(-1))));
    assert!(!expired.ok(), "{}", expired.stdout);
    assert!(expired.stderr.contains("has expired"), "{}", expired.stderr);
    assert!(u(&tls_stats(&a)["expires_in_days"]) >= 9);
    let installed = enrol(&a, &pki).unwrap();
    assert!(installed.contains("CN=lab-a"), "{installed}");
    let st = tls_stats(&a);
    assert_eq!(st["certificate"]["subject"], "lab-a", "{st}");
    assert!(u(&st["expires_in_days"]) >= 360, "{st}");
    assert!(st["warning"].is_null(), "{st}");
    // The key rests sealed: no PEM private key anywhere under the state directory.
    for f in std::fs::read_dir(a.state_dir()).unwrap().flatten() {
        if f.path().is_file() {
            let bytes = std::fs::read(f.path()).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
                "{} holds a private key in the clear",
                f.path().display()
            );
        }
    }

    let _callee = pbx(&lab);
    let tunnel = Stunnel::client(&lab.ns(Host::Carrier), &pki, None).unwrap();
    let r = run(tls_calls(&lab, 20, 10.0, Duration::from_millis(500)));
    assert_eq!(
        (r.successful, r.failed),
        (20, 0),
        "{}\n{}",
        r.summary(),
        tunnel.log()
    );
    let records = wait_cdrs(&a, 20);
    assert!(
        records
            .iter()
            .all(|c| c["disposition"] == "answered" && !c["end_at"].is_null()),
        "{records:#?}"
    );
    // One handshake for all twenty calls: the connection is kept and reused both ways
    // (the PBX's BYEs went back to the carrier over it).
    let st = tls_stats(&a);
    assert_eq!(u(&st["stats"]["handshakes"]), 1, "{st}");
    assert_eq!(u(&st["stats"]["handshakes_failed"]), 0, "{st}");
    assert_eq!(cdrs(&a).len(), 20);
}

#[test]
fn mutual_tls_admits_only_the_pinned_carrier_certificate() {
    let lab = new_lab();
    let pki = SipPki::new().unwrap();
    let good = pki.carrier.client_cert("carrier-trunk").unwrap();
    let same_ca_unpinned = pki.carrier.client_cert("carrier-other").unwrap();
    let rogue = pki.rogue.client_cert("carrier-trunk").unwrap();
    let expired = pki.carrier.expired_client_cert("carrier-trunk").unwrap();
    let ca = pki.carrier_ca_pem().unwrap();
    let fp = fingerprint(&good.cert).unwrap();
    let pin = format!(
        "media = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]\ntls = {{ ca = \"\"\"{ca}\"\"\", fingerprints = [\"{fp}\"] }}"
    );
    let a = start(
        &lab,
        &config(&[(
            "media = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]",
            &pin,
        )]),
    );
    enrol(&a, &pki).unwrap();
    let ns = lab.ns(Host::Carrier);
    let wait = Duration::from_secs(2);
    let answered = |args: &[String], tag: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s_client(&ns, &pki, &args, &options_request(tag), wait).unwrap()
    };
    // The pinned certificate: the OPTIONS is answered.
    let out = answered(&cert_args(&good), "good");
    assert!(out.contains("SIP/2.0 200"), "{out}");
    // Refused: another CA's certificate, an expired one from the carrier's CA, one from
    // the carrier's CA that is not pinned, none at all. None gets an answer.
    let refused: [(&str, Vec<String>); 4] = [
        ("rogue", cert_args(&rogue)),
        ("expired", cert_args(&expired)),
        ("unpinned", cert_args(&same_ca_unpinned)),
        ("none", Vec::new()),
    ];
    for (tag, args) in &refused {
        let out = answered(args, tag);
        assert!(!out.contains("SIP/2.0"), "{tag}: {out}");
    }
    let st = tls_stats(&a);
    assert_eq!(u(&st["stats"]["handshakes_failed"]), 4, "{st}");
    assert_eq!(u(&st["stats"]["handshakes"]), 1, "{st}");
    // And a whole call with the pinned certificate through stunnel.
    let _callee = pbx(&lab);
    let tunnel = Stunnel::client(&ns, &pki, Some(&good)).unwrap();
    let r = run(tls_calls(&lab, 1, 1.0, Duration::from_millis(200)));
    assert_eq!(
        (r.successful, r.failed),
        (1, 0),
        "{}\n{}",
        r.summary(),
        tunnel.log()
    );
    assert_eq!(wait_cdrs(&a, 1).len(), 1);
}

/// `[sip.tls]` keys of the refusal tests: a short handshake limit, the flooder's address
/// admitted to the TLS port by the firewall (it is no carrier: the proxy must refuse it).
fn refusal_config() -> String {
    config(&[
        (
            "listen = [\"203.0.113.1:5061\", \"[2001:db8:1::1]:5061\"]",
            "listen = [\"203.0.113.1:5061\", \"[2001:db8:1::1]:5061\"]\nhandshake_timeout_secs = 2\nmax_handshakes_per_sec = 20",
        ),
        (
            "name = \"carrier-sip-tls\"\nzone = \"wan\"\nsources = [\"203.0.113.10/32\", ",
            "name = \"carrier-sip-tls\"\nzone = \"wan\"\nsources = [\"203.0.113.10/32\", \"203.0.113.64/28\", ",
        ),
    ])
}

/// A TCP connection from `src` to A's TLS port (within 300 ms), made inside the carrier's
/// namespace.
fn connect_from(lab: &Lab, src: std::net::Ipv4Addr) -> std::io::Result<std::net::TcpStream> {
    let dst = std::net::SocketAddr::new(addr::A_WAN_V4.into(), TLS_PORT);
    lab.ns(Host::Carrier).run_in(move || {
        hil_tests::probe::tcp_stream(Some(src.into()), dst, Duration::from_millis(300))
    })
}

/// Reads what the appliance sends until it closes the connection or `limit` passes:
/// (bytes read, closed by the appliance).
fn read_until_closed(mut s: std::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    use std::io::Read;
    let _ = s.set_read_timeout(Some(limit));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (got, false)
            }
            Err(_) => return (got, true),
        }
    }
}

#[test]
fn old_tls_plain_sip_and_a_stalled_handshake_are_refused_and_hold_nothing() {
    use std::io::Write;
    let lab = new_lab();
    let pki = SipPki::new().unwrap();
    let a = start(&lab, &refusal_config());
    enrol(&a, &pki).unwrap();
    let ns = lab.ns(Host::Carrier);
    let wait = Duration::from_secs(2);
    // TLS 1.1 and 1.0 (OpenSSL allows them at security level 0): no handshake, no answer.
    for v in ["-tls1_1", "-tls1"] {
        let out = s_client(
            &ns,
            &pki,
            &[v, "-cipher", "DEFAULT@SECLEVEL=0"],
            &options_request(&format!("old{v}")),
            wait,
        )
        .unwrap();
        assert!(!out.contains("SIP/2.0"), "{v}: {out}");
    }
    // Plain SIP on the TLS port (no ClientHello): not answered, and the connection closed.
    let mut plain = connect_from(&lab, addr::CARRIER_V4).unwrap();
    plain
        .write_all(options_request("plain").as_bytes())
        .unwrap();
    let (got, closed) = read_until_closed(plain, Duration::from_secs(5));
    assert!(closed, "the plain connection stays open");
    assert!(
        !String::from_utf8_lossy(&got).contains("SIP/2.0"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let st = tls_stats(&a);
    assert_eq!(u(&st["stats"]["handshakes_failed"]), 3, "{st}");
    assert_eq!(u(&st["stats"]["handshakes"]), 0, "{st}");
    // A handshake that stalls after half a ClientHello is cut at handshake_timeout_secs,
    // and meanwhile calls over TLS go on.
    let mut stall = connect_from(&lab, addr::CARRIER_V4).unwrap();
    stall
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let _callee = pbx(&lab);
    let tunnel = Stunnel::client(&ns, &pki, None).unwrap();
    let r = run(tls_calls(&lab, 5, 5.0, Duration::from_millis(200)));
    assert_eq!(
        (r.successful, r.failed),
        (5, 0),
        "{}\n{}",
        r.summary(),
        tunnel.log()
    );
    let (_, closed) = read_until_closed(stall, Duration::from_secs(10));
    assert!(closed, "the stalled handshake was never cut");
    let st = tls_stats(&a);
    assert_eq!(u(&st["stats"]["handshakes_timed_out"]), 1, "{st}");
    // Nothing is left open of the refused connections: only stunnel's (if still up).
    let open = tls_open_from(&lab, addr::CARRIER_V4);
    assert!(open <= 1, "{open} connections on the TLS port");
    drop(tunnel);
}

/// Established connections on A's TLS port from `src`, from `ss` in A's namespace.
fn tls_open_from(lab: &Lab, src: std::net::Ipv4Addr) -> usize {
    lab.ns(Host::A)
        .exec(&["ss", "-Htn", "state", "established"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!(":{TLS_PORT} ")) && l.contains(&format!("{src}:")))
        .count()
}

#[test]
fn a_handshake_flood_from_a_stranger_is_blocked_while_tls_calls_go_on() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let lab = new_lab();
    let pki = SipPki::new().unwrap();
    let a = start(&lab, &refusal_config());
    enrol(&a, &pki).unwrap();
    let _callee = pbx(&lab);
    let tunnel = Stunnel::client(&lab.ns(Host::Carrier), &pki, None).unwrap();
    let calls = tls_calls(&lab, 1000, 100.0, Duration::ZERO)
        .spawn()
        .unwrap();
    let stop = AtomicBool::new(false);
    let attempts = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                attempts.fetch_add(1, Ordering::Relaxed);
                // Each connect is refused (reset) at once, until the firewall drops them.
                let _ = connect_from(&lab, addr::CARRIER_V4_ALT);
            }
        });
        let blocked =
            hil_tests::poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
                a.nft(&["list", "set", "inet", "callgate", "block4"])
                    .is_ok_and(|l| l.contains("203.0.113.66"))
            });
        stop.store(true, Ordering::Relaxed);
        assert!(blocked, "the flooder was never blocked: {}", tls_stats(&a));
    });
    let r = calls.wait(Duration::from_secs(120)).unwrap();
    assert!(
        r.successful >= 999 && r.successful + r.failed == 1000,
        "{}\n{}",
        r.summary(),
        tunnel.log()
    );
    let st = tls_stats(&a);
    assert!(u(&st["stats"]["refused_not_peer"]) >= 1, "{st}");
    assert!(u(&st["stats"]["refused_rate"]) >= 20, "{st}");
    assert_eq!(u(&st["stats"]["blocked"]), 1, "{st}");
    // The carrier itself was never blocked.
    let set = a
        .nft(&["list", "set", "inet", "callgate", "block4"])
        .unwrap();
    assert!(!set.contains("203.0.113.10 "), "{set}");
    assert!(attempts.load(Ordering::Relaxed) > 40);
}

/// The TCP route (tv-spot) carried to the PBXs over TLS, their certificates pinned to
/// `pbx_ca`, and the appliance allowed to open TLS to them.
fn tls_both_ways_config(pbx_ca: &str) -> String {
    let dests = "destinations = [\n  { uri = \"sip:198.51.100.10:5060;transport=tcp\" },\n  { uri = \"sip:198.51.100.11:5060;transport=tcp\" },\n]";
    let tls_dests = "destinations = [\n  { uri = \"sip:198.51.100.10:5061;transport=tls\" },\n  { uri = \"sip:198.51.100.11:5061;transport=tls\" },\n]";
    let pin = format!(
        "listen = [\"203.0.113.1:5061\", \"[2001:db8:1::1]:5061\"]\ndestinations = {{ ca = \"\"\"{pbx_ca}\"\"\" }}"
    );
    config(&[
        (dests, tls_dests),
        (
            "listen = [\"203.0.113.1:5061\", \"[2001:db8:1::1]:5061\"]",
            &pin,
        ),
        (
            "name = \"sip-to-pbx-tcp\"\nzone = \"private\"\ndestinations = [\"198.51.100.0/24\", \"2001:db8:2::/64\"]\nprotocol = \"tcp\"\nports = [5060]",
            "name = \"sip-to-pbx-tcp\"\nzone = \"private\"\ndestinations = [\"198.51.100.0/24\", \"2001:db8:2::/64\"]\nprotocol = \"tcp\"\nports = [5060, 5061]",
        ),
    ])
}

/// A TCP callee on the PBX (sipp, `uas.xml`) behind stunnel's TLS on 5061, with `id`'s
/// certificate, requiring the appliance's (the lab CA's).
fn tls_callee<'l>(
    lab: &'l Lab,
    pki: &SipPki,
    id: &hil_tests::Identity,
) -> (hil_tests::sipp::SippHandle<'l>, Stunnel) {
    let ns = lab.ns(Host::Pbx);
    let uas = Sipp::uas(&ns, "uas.xml")
        .local(addr::PBX_V4, 5060)
        .transport(Transport::Tcp)
        .timeout(Duration::from_secs(600))
        .spawn()
        .unwrap();
    uas.wait_ready(Duration::from_secs(10)).unwrap();
    let tunnel = Stunnel::pbx(&ns, pki, addr::PBX_V4, id).unwrap();
    (uas, tunnel)
}

#[test]
fn calls_over_tls_on_both_sides_check_the_pbx_certificate() {
    let lab = new_lab();
    let pki = SipPki::new().unwrap();
    let pbx_id = pki.pbx.peer_cert("pbx1", "IP:198.51.100.10").unwrap();
    let a = start(&lab, &tls_both_ways_config(&pki.pbx.cert_pem().unwrap()));
    enrol(&a, &pki).unwrap();
    let (uas, pbx_tunnel) = tls_callee(&lab, &pki, &pbx_id);
    let carrier = Stunnel::client(&lab.ns(Host::Carrier), &pki, None).unwrap();
    let r = run(tls_calls(&lab, 20, 10.0, Duration::from_millis(300)).service(TCP_NUMBER));
    assert_eq!(
        (r.successful, r.failed),
        (20, 0),
        "{}\ncarrier stunnel: {}\npbx stunnel: {}\n{}",
        r.summary(),
        carrier.log(),
        pbx_tunnel.log(),
        a.log()
    );
    assert_eq!(wait_cdrs(&a, 20).len(), 20);
    // One connection of ours to the PBX for all twenty calls, its certificate checked.
    let st = tls_stats(&a);
    assert_eq!(u(&st["stats"]["connected"]), 1, "{st}");
    assert_eq!(u(&st["stats"]["connect_failed"]), 0, "{st}");
    let _ = uas.stop();
    drop(pbx_tunnel);

    // A PBX whose certificate another CA signed: the appliance never sends it the call.
    let rogue_id = pki.rogue.peer_cert("pbx1", "IP:198.51.100.10").unwrap();
    let (uas, _pbx_tunnel) = tls_callee(&lab, &pki, &rogue_id);
    let r = run(tls_calls(&lab, 1, 1.0, Duration::from_millis(300)).service(TCP_NUMBER));
    assert_eq!((r.successful, r.failed), (0, 1), "{}", r.summary());
    let seen = uas.stop().unwrap();
    assert_eq!(seen.successful + seen.failed, 0, "{}", seen.summary());
    let st = tls_stats(&a);
    assert!(u(&st["stats"]["connect_failed"]) >= 1, "{st}");
}
