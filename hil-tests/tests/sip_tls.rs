//! SIP over TLS end to end: the real daemon on appliance A with a `[sip.tls]` listener,
//! enrolled through its CLI (its key made and sealed there, the lab CA signing its
//! request); the carrier's sipp behind Debian's stunnel (OpenSSL), the PBX's sipp over
//! UDP; `openssl s_client` as the raw TLS peer of the refusal tests. The assertions are on
//! what the peers saw (sipp's counts, the answers `s_client` printed), on the records the
//! daemon stored, on the kernel's blocklist and connections, and on the daemon's TLS
//! counters.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::time::Duration;

use hil_tests::calls::{cdrs, new_lab, pbx, start, u, wait_cdrs, CALLER, CALLER_NAME, UDP_NUMBER};
use hil_tests::sipp::{Sipp, SippResult, Transport};
use hil_tests::tls::{
    cert_args, enrol, fingerprint, options_request, s_client, tls_config, tls_stats, SipPki,
    Stunnel, TLS_PORT,
};
use hil_tests::{addr, Host, Lab};

/// `n` calls over TLS from the carrier (sipp over TCP into stunnel, one connection),
/// `rate` per second, each held `hold`.
fn tls_calls(lab: &Lab, n: u64, rate: f64, hold: Duration) -> Sipp<'_> {
    Sipp::uac(&lab.ns(Host::Carrier), "uac.xml")
        .local(addr::CARRIER_V4, 5060)
        .remote(addr::A_WAN_V4, TLS_PORT)
        .arg("-rsa")
        .arg(Stunnel::sipp_rsa())
        .transport(Transport::Tcp)
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
    let a = start(&lab, &tls_config(&[]));
    // Before a certificate is installed, TLS is refused and `show sip stats` says why.
    let before = a.cli(&["show", "sip", "stats"]);
    assert!(
        before.stdout.contains("no certificate installed"),
        "{}",
        before.stdout
    );
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
        &tls_config(&[(
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
