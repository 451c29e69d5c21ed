#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The lab's MQTT broker itself (`hil_tests::broker`): Mosquitto in the cloud namespace with
//! the test PKI, tried from the carrier (standing in for an appliance on the WAN side).
//! These test the harness, so the uplink's tests can trust it: the ACL keeps each client
//! under its own prefix, only fleet certificates that are valid get in, TLS 1.3 only, no
//! plain listener, the attack certificates fail verification the way they should, and
//! sessions survive a SIGKILL and a restart but not a wiped persistence.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use hil_tests::addr::{A_WAN_V4, BROKER_NAME, CARRIER_V4, CLOUD_V4, CLOUD_V6, PBX_V4};
use hil_tests::broker::{
    pub_as, pub_with, publish, Broker, BrokerOpts, Pki, PubOutcome, ServerCert, Subscriber,
    MQTT_TLS_PORT, NOT_AUTHORIZED, SAVED,
};
use hil_tests::{lab_namespaces, Host, Lab};

/// Long enough for anything that should happen; only reached when something is wrong.
const T: Duration = Duration::from_secs(10);

fn lab(hosts: &[Host]) -> Lab {
    Lab::start(hosts).unwrap_or_else(|e| panic!("lab: {e}"))
}

/// Drops the lab and checks that none of its namespaces is left.
fn finish(lab: Lab) {
    let prefix = lab.prefix().to_owned();
    drop(lab);
    let left = lab_namespaces(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_cloud_is_on_the_wan_segment_only_when_asked_for() {
    // Without Host::Cloud the lab is as before: no cloud namespace, no such host.
    let plain = lab(&[Host::Carrier, Host::A]);
    assert!(plain.try_ns(Host::Cloud).is_err());
    let names = lab_namespaces(plain.prefix());
    assert!(!names.iter().any(|n| n.ends_with("-cloud")), "{names:?}");
    finish(plain);

    let lab = lab(&[Host::Carrier, Host::A, Host::Pbx, Host::Cloud]);
    let cloud = lab.ns(Host::Cloud);
    let addrs = cloud.ip(&["-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(addrs.contains(&format!("{CLOUD_V4}/24")), "{addrs}");
    assert!(addrs.contains(&format!("{CLOUD_V6}/64")), "{addrs}");
    // On-link with the appliances and the carrier, and no route anywhere else.
    assert!(cloud.ping(None, A_WAN_V4, T));
    assert!(cloud.ping(None, CARRIER_V4, T));
    assert!(lab.ns(Host::A).ping(None, CLOUD_V6, T));
    let routes = cloud.ip(&["route"]).unwrap() + &cloud.ip(&["-6", "route"]).unwrap();
    assert!(!routes.contains("default"), "{routes}");
    assert!(!cloud.ping(None, PBX_V4, Duration::from_secs(1)));
    finish(lab);
}

#[test]
fn each_client_publishes_and_subscribes_only_under_its_own_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab(&[Host::Carrier, Host::Cloud]);
    let pki = Pki::new(dir.path()).unwrap();
    let (cloud, carrier) = (lab.ns(Host::Cloud), lab.ns(Host::Carrier));
    let broker = Broker::start(&cloud, &pki, BrokerOpts::default()).unwrap();
    let broker_pid_dir = broker_proc_dir(&broker);
    let sub = Subscriber::start(&cloud, &pki, "callgate/#").unwrap();
    assert_eq!(sub.suback_codes(), [1], "{}", sub.output());

    // Own prefix, QoS 1: accepted, delivered byte for byte (newlines and NULs included).
    let payload = b"{\"cdr\":1}\n\0\xff second line";
    let out = pub_as(&carrier, &pki, "lab-a", "callgate/lab-a/cdr", payload).unwrap();
    assert_eq!(out, PubOutcome::Accepted(0));
    assert!(sub.wait_for(1, T), "{}", sub.output());
    assert_eq!(
        sub.messages(),
        [("callgate/lab-a/cdr".to_owned(), payload.to_vec())]
    );
    assert_eq!(sub.received()[0].qos, 1);

    // Another appliance's prefix: refused with "not authorized" and dropped. A later
    // allowed message from the same client arrives; the forged one never did.
    let mark = broker.log_mark();
    let out = pub_as(&carrier, &pki, "lab-a", "callgate/lab-b/cdr", b"forged").unwrap();
    assert_eq!(out, PubOutcome::Refused(NOT_AUTHORIZED));
    assert!(broker.wait_for_log("Denied PUBLISH", mark, T));
    for topic in ["callgate/x", "other/lab-a/cdr", "callgate/+/cdr"] {
        let out = pub_as(&carrier, &pki, "lab-a", topic, b"forged").unwrap();
        assert!(!matches!(out, PubOutcome::Accepted(_)), "{topic}: {out:?}");
    }
    let out = pub_as(&carrier, &pki, "lab-a", "callgate/lab-a/marker", b"after").unwrap();
    assert_eq!(out, PubOutcome::Accepted(0));
    assert!(sub.wait_for_message("callgate/lab-a/marker", b"after", T));
    assert!(
        sub.messages().iter().all(|(_, p)| p != b"forged"),
        "{:?}",
        sub.messages()
    );

    // Subscribing wider than its own prefix is granted (Mosquitto's acl_file checks read
    // access per message, at delivery), but only lab-a's own messages reach lab-a, over
    // IPv6 as well. lab-b's message comes first, so once lab-a's arrives, lab-b's would
    // have arrived before it.
    let lab_a = pki.client("lab-a").unwrap();
    let spy = Subscriber::start_as(&carrier, &pki, &lab_a, "callgate/#").unwrap();
    assert_eq!(spy.suback_codes(), [1], "{}", spy.output());
    let out = pub_as(
        &carrier,
        &pki,
        "lab-b",
        "callgate/lab-b/cdr",
        b"for the cloud",
    )
    .unwrap();
    assert_eq!(out, PubOutcome::Accepted(0));
    assert!(sub.wait_for_message("callgate/lab-b/cdr", b"for the cloud", T));
    let v6 = IpAddr::V6(CLOUD_V6);
    let out = pub_with(
        &carrier,
        pki.ca_cert(),
        &lab_a,
        v6,
        "callgate/lab-a/v6",
        b"6",
        false,
    );
    assert_eq!(out.unwrap(), PubOutcome::Accepted(0));
    assert!(
        spy.wait_for_message("callgate/lab-a/v6", b"6", T),
        "{}",
        spy.output()
    );
    assert_eq!(
        spy.messages(),
        [("callgate/lab-a/v6".to_owned(), b"6".to_vec())]
    );

    // The cloud identity writes anywhere under callgate/ (signed configs), retained too.
    publish(
        &cloud,
        &pki,
        "callgate/lab-a/config",
        b"signed bundle",
        true,
    )
    .unwrap();
    assert!(spy.wait_for_message("callgate/lab-a/config", b"signed bundle", T));

    // A certificate the fleet CA signed from an appliance's own CSR works like any other.
    let key = dir.path().join("appliance.key");
    let csr = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", "/O=ignored/CN=lab-c", "-keyout"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(csr.status.success(), "{}", text(&csr.stderr));
    let cert_pem = pki.sign_csr(&text(&csr.stdout)).unwrap();
    let cert = dir.path().join("appliance.pem");
    std::fs::write(&cert, &cert_pem).unwrap();
    let subject = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "extendedKeyUsage",
            "-in",
        ])
        .arg(&cert)
        .output()
        .unwrap();
    let subject = text(&subject.stdout);
    assert!(subject.contains("subject=CN = lab-c\n"), "{subject}");
    assert!(
        subject.contains("TLS Web Client Authentication"),
        "{subject}"
    );
    let lab_c = hil_tests::Identity {
        cn: "lab-c".into(),
        cert,
        key,
    };
    let v4 = IpAddr::V4(CLOUD_V4);
    let out = pub_with(
        &carrier,
        pki.ca_cert(),
        &lab_c,
        v4,
        "callgate/lab-c/hello",
        b"c",
        false,
    );
    assert_eq!(out.unwrap(), PubOutcome::Accepted(0));
    assert!(sub.wait_for_message("callgate/lab-c/hello", b"c", T));

    drop((spy, sub, broker));
    finish(lab);
    assert!(!broker_pid_dir.exists(), "mosquitto outlived its lab");
}

/// `/proc/<pid>` of the broker's process (gone once it has been reaped).
fn broker_proc_dir(broker: &Broker<'_>) -> std::path::PathBuf {
    let pids = broker.ns().exec(&["pgrep", "-x", "mosquitto"]).unwrap();
    let pid = pids.split_whitespace().next().expect("mosquitto pid");
    std::path::PathBuf::from(format!("/proc/{pid}"))
}

#[test]
fn sign_csr_refuses_the_cloud_identity_and_odd_names() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    for subj in ["/CN=cloud", "/CN=lab-a\\/x", "/CN=a b", "/O=no common name"] {
        let out = Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-keyout", "/dev/null", "-subj", subj])
            .output()
            .unwrap();
        assert!(out.status.success(), "{subj}: {}", text(&out.stderr));
        assert!(
            pki.sign_csr(&text(&out.stdout)).is_err(),
            "{subj} was signed"
        );
    }
    assert!(pki.sign_csr("not a CSR").is_err());
}

#[test]
fn bad_client_certificates_are_refused_at_the_tls_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab(&[Host::Carrier, Host::Cloud]);
    let pki = Pki::new(dir.path()).unwrap();
    let (cloud, carrier) = (lab.ns(Host::Cloud), lab.ns(Host::Carrier));
    let broker = Broker::start(&cloud, &pki, BrokerOpts::default()).unwrap();
    let sub = Subscriber::start(&cloud, &pki, "callgate/#").unwrap();
    let v4 = IpAddr::V4(CLOUD_V4);

    let foreign = pki.other_ca().client_cert("lab-a").unwrap();
    let expired = pki.expired_client_cert("lab-a").unwrap();
    // Why each is bad, as openssl sees it: otherwise they are fine certificates.
    for (what, id, why) in [
        (
            "another CA's",
            &foreign,
            "unable to get local issuer certificate",
        ),
        ("an expired", &expired, "certificate has expired"),
    ] {
        let verify = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(pki.ca_cert())
            .arg(&id.cert)
            .output()
            .unwrap();
        let said = text(&verify.stdout) + &text(&verify.stderr);
        assert!(
            !verify.status.success() && said.contains(why),
            "{what}: {said}"
        );
        let mark = broker.log_mark();
        let out = pub_with(
            &carrier,
            pki.ca_cert(),
            id,
            v4,
            "callgate/lab-a/x",
            b"in",
            false,
        );
        match out.unwrap() {
            // The client sees the broker's alert, or only the closed connection: in TLS 1.3
            // its own handshake was over before the broker checked its certificate.
            PubOutcome::Failed(_) => {}
            o => panic!("{what} client certificate: {o:?}"),
        }
        assert!(broker.wait_for_log("certificate verify failed", mark, T));
        let log = broker.log();
        assert!(
            !log[mark..].contains("New client connected"),
            "{what}: {}",
            &log[mark..]
        );
    }
    // No certificate at all.
    let mark = broker.log_mark();
    let mut cmd = carrier.command("mosquitto_pub");
    cmd.args([
        "-h",
        &CLOUD_V4.to_string(),
        "-p",
        &MQTT_TLS_PORT.to_string(),
    ])
    .arg("--cafile")
    .arg(pki.ca_cert())
    .args(["-V", "mqttv5", "-q", "1", "-t", "callgate/x", "-m", "anon"]);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(broker.wait_for_log("peer did not return a certificate", mark, T));
    // Plain MQTT on the TLS port is not MQTT to it.
    let mut cmd = carrier.command("mosquitto_pub");
    cmd.args([
        "-h",
        &CLOUD_V4.to_string(),
        "-p",
        &MQTT_TLS_PORT.to_string(),
    ])
    .args(["-V", "mqttv5", "-q", "1", "-t", "callgate/x", "-m", "plain"]);
    assert!(!cmd.output().unwrap().status.success());

    // A valid fleet certificate still gets through, and nothing else did.
    assert_eq!(
        pub_as(&carrier, &pki, "lab-a", "callgate/lab-a/x", b"ok").unwrap(),
        PubOutcome::Accepted(0)
    );
    assert!(sub.wait_for_message("callgate/lab-a/x", b"ok", T));
    assert_eq!(sub.messages().len(), 1, "{:?}", sub.messages());
    drop((sub, broker));
    finish(lab);
}

/// `openssl s_client` from `ns` to the broker at TLS `version` (`-tls1_2`, `-tls1_3`),
/// verifying the broker's address; its exit success and output.
fn s_client(ns: &hil_tests::Ns<'_>, pki: &Pki, version: &str) -> (bool, String) {
    let id = pki.client("lab-a").unwrap();
    let mut cmd = ns.command("timeout");
    cmd.args(["10", "openssl", "s_client", version, "-verify_return_error"])
        .args(["-connect", &format!("{CLOUD_V4}:{MQTT_TLS_PORT}")])
        .args(["-verify_ip", &CLOUD_V4.to_string(), "-CAfile"])
        .arg(pki.ca_cert())
        .arg("-cert")
        .arg(&id.cert)
        .arg("-key")
        .arg(&id.key)
        .stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    (out.status.success(), text(&out.stdout) + &text(&out.stderr))
}

#[test]
fn the_broker_speaks_tls_1_3_only_and_nothing_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab(&[Host::Carrier, Host::Cloud]);
    let pki = Pki::new(dir.path()).unwrap();
    let (cloud, carrier) = (lab.ns(Host::Cloud), lab.ns(Host::Carrier));
    let broker = Broker::start(&cloud, &pki, BrokerOpts::default()).unwrap();

    // Exactly the two TLS listeners, nothing on loopback or 1883, no UDP.
    let tcp = cloud.exec(&["ss", "-Hltn"]).unwrap();
    let mut local: Vec<&str> = tcp
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    local.sort_unstable();
    assert_eq!(
        local,
        [
            format!("203.0.113.200:{MQTT_TLS_PORT}"),
            format!("[2001:db8:1::200]:{MQTT_TLS_PORT}")
        ],
        "{tcp}"
    );
    assert_eq!(cloud.exec(&["ss", "-Hlun"]).unwrap().trim(), "");

    let (ok, said) = s_client(&carrier, &pki, "-tls1_2");
    assert!(!ok && said.contains("alert protocol version"), "{said}");
    let (ok, said) = s_client(&carrier, &pki, "-tls1_3");
    assert!(ok && said.contains("TLSv1.3"), "{said}");
    drop(broker);
    finish(lab);
}

#[test]
fn a_broker_certificate_from_another_ca_or_for_another_name_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab(&[Host::Carrier, Host::Cloud]);
    let pki = Pki::new(dir.path()).unwrap();
    let (cloud, carrier) = (lab.ns(Host::Cloud), lab.ns(Host::Carrier));
    for (cert, fine) in [
        (ServerCert::OtherCa, false),
        (ServerCert::WrongName, false),
        (ServerCert::Fleet, true),
    ] {
        let opts = BrokerOpts {
            server_cert: cert.clone(),
            dir: None,
        };
        let broker = Broker::start(&cloud, &pki, opts).unwrap();
        for server in [IpAddr::V4(CLOUD_V4), IpAddr::V6(CLOUD_V6)] {
            let id = pki.client("lab-a").unwrap();
            let out = pub_with(
                &carrier,
                pki.ca_cert(),
                &id,
                server,
                "callgate/lab-a/x",
                b"x",
                false,
            )
            .unwrap();
            match out {
                PubOutcome::Accepted(_) => assert!(fine, "{cert:?} accepted at {server}"),
                PubOutcome::Failed(said) => {
                    assert!(!fine, "{cert:?} at {server}: {said}");
                    assert!(said.contains("certificate verify failed"), "{said}");
                }
                PubOutcome::Refused(rc) => panic!("{cert:?} at {server}: PUBACK {rc}"),
            }
        }
        // Verified by name, as an appliance configured with BROKER_NAME does.
        let name = broker_name_verifies(&carrier, &pki);
        assert_eq!(name, fine, "{cert:?}");
        drop(broker);
    }
    finish(lab);
}

/// Whether a TLS 1.3 handshake with the broker verifies its certificate for BROKER_NAME.
fn broker_name_verifies(ns: &hil_tests::Ns<'_>, pki: &Pki) -> bool {
    let id = pki.client("lab-a").unwrap();
    let mut cmd = ns.command("timeout");
    cmd.args([
        "10",
        "openssl",
        "s_client",
        "-tls1_3",
        "-verify_return_error",
    ])
    .args(["-connect", &format!("{CLOUD_V4}:{MQTT_TLS_PORT}")])
    .args(["-verify_hostname", BROKER_NAME, "-CAfile"])
    .arg(pki.ca_cert())
    .arg("-cert")
    .arg(&id.cert)
    .arg("-key")
    .arg(&id.key)
    .stdin(std::process::Stdio::null());
    cmd.output().unwrap().status.success()
}

#[test]
fn sessions_survive_kill9_and_restart_but_not_a_wiped_persistence() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab(&[Host::Carrier, Host::Cloud]);
    let pki = Pki::new(dir.path()).unwrap();
    let (cloud, carrier) = (lab.ns(Host::Cloud), lab.ns(Host::Carrier));
    let mut broker = Broker::start(&cloud, &pki, BrokerOpts::default()).unwrap();
    let pub_a = |topic: &str, payload: &[u8]| {
        let out = pub_as(&carrier, &pki, "lab-a", topic, payload).unwrap();
        assert!(matches!(out, PubOutcome::Accepted(_)), "{topic}: {out:?}");
    };
    // `away` has disconnected cleanly before the crash; `crashed` is still connected when
    // the broker dies.
    let mut away = Subscriber::start(&cloud, &pki, "callgate/#").unwrap();
    let mut crashed = Subscriber::start(&cloud, &pki, "callgate/#").unwrap();
    away.stop();

    let mark = broker.log_mark();
    pub_a("callgate/lab-a/1", b"before the crash");
    assert!(broker.wait_for_log_in_order(&["Received PUBLISH from", SAVED], mark, T));
    // The log line comes as the save starts; kill only once the file holds the message.
    assert!(broker.wait_for_saved(b"before the crash", T));
    assert!(crashed.wait_for_message("callgate/lab-a/1", b"before the crash", T));
    broker.kill9().unwrap();
    assert!(!broker.is_running());
    // mosquitto_sub exits when the TLS session ends without a close_notify, but goes on
    // retrying when the kernel answered with a reset (ECONNRESET is not fatal to its loop).
    // Either way the broker died with it connected; stop a retrying one while no broker
    // listens, so that it cannot come back by itself before `reconnect` below.
    hil_tests::poll_until(T / 5, Duration::from_millis(20), || !crashed.is_running());
    crashed.stop();
    assert!(!crashed.is_running(), "{}", crashed.output());
    broker.restart().unwrap();
    assert!(broker.is_running());

    // Both sessions come back with what was queued for them before the crash.
    away.reconnect().unwrap();
    crashed.reconnect().unwrap();
    for s in [&away, &crashed] {
        assert!(
            s.wait_for_message("callgate/lab-a/1", b"before the crash", T),
            "{}",
            s.output()
        );
    }
    // And the restarted broker queues for a session that is away again. Each step on its
    // own: with a message restored from the persistence file and a new one queued for the
    // same offline session before it reconnects, Mosquitto 2.0.11 at times delivered only
    // the new one (this test failed so under heavy load; the pattern of upstream
    // eclipse-mosquitto/mosquitto#2811). The appliance's side does not depend on it:
    // the uplink is a publisher and resends until PUBACK.
    away.stop();
    pub_a("callgate/lab-a/2", b"after the restart");
    away.reconnect().unwrap();
    for s in [&away, &crashed] {
        assert!(
            s.wait_for_message("callgate/lab-a/2", b"after the restart", T),
            "{}",
            s.output()
        );
    }

    // A wiped persistence forgets the session and what was queued for it.
    away.stop();
    pub_a("callgate/lab-a/3", b"queued, then wiped");
    broker.wipe_persistence().unwrap();
    away.reconnect().unwrap();
    pub_a("callgate/lab-a/4", b"after the wipe");
    assert!(away.wait_for_message("callgate/lab-a/4", b"after the wipe", T));
    let got: Vec<String> = away.messages().into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        got,
        ["callgate/lab-a/1", "callgate/lab-a/2", "callgate/lab-a/4"],
        "{}",
        away.output()
    );
    drop((away, crashed, broker));
    finish(lab);
}
