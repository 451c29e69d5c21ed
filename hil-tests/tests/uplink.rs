#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The cloud uplink against a real broker: Debian's Mosquitto in the lab's cloud
//! namespace, mutual TLS 1.3 with a test PKI, per-appliance ACLs; calls placed with sipp;
//! the cloud's side read with `mosquitto_sub` and written with `mosquitto_pub`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hil_tests::addr::{self, CLOUD_V4};
use hil_tests::broker::{b64, fleet_key, Broker, BrokerOpts, Pki, ServerCert, Subscriber};
use hil_tests::calls::{carrier_calls, cdrs, lab_toml, pbx, wait_until, CALLER};
use hil_tests::{files_holding, Appliance, Host, Lab};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::Value;

const RECORDS: &str = "callgate/lab-a/records";

fn lab() -> Lab {
    Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Cloud]).unwrap()
}

/// `config/lab.toml` with the uplink to the lab's broker: an egress entry for it and
/// `[uplink]` (no delay at start, quick retries) plus `extra` lines in `[uplink]`.
fn config(pki: &Pki, key: &Ed25519KeyPair, extra: &str) -> String {
    format!(
        "{}\n[[egress]]\nname = \"uplink\"\nzone = \"wan\"\n\
         destinations = [\"{CLOUD_V4}/32\", \"2001:db8:1::200/128\"]\nprotocol = \"tcp\"\nports = [8883]\n\n\
         [uplink]\nbroker = \"{}\"\naddress = \"{CLOUD_V4}\"\nca = \"\"\"\n{}\"\"\"\n\
         fleet_key = \"{}\"\nboot_delay_max_secs = 0\nbackoff_max_secs = 2\nkeepalive_secs = 5\n\
         config_confirm_secs = 30\n{extra}",
        lab_toml(),
        addr::BROKER_NAME,
        pki.ca_pem().unwrap(),
        b64(key.public_key().as_ref()),
    )
}

/// The appliance asks for a certificate; `sign` signs it; it is installed.
fn enroll(a: &Appliance<'_>, sign: impl FnOnce(&str) -> String) -> hil_tests::Cli {
    hil_tests::broker::enroll(a, |csr| Ok(sign(csr))).unwrap()
}

fn uplink(a: &Appliance<'_>) -> Value {
    a.cli(&["--json", "show", "uplink"]).json()
}

fn connected(a: &Appliance<'_>) -> bool {
    uplink(a)["state"] == "connected"
}

/// (record id, write sequence) of every record received on the records topic, in
/// arrival order (duplicates included).
fn received(sub: &Subscriber<'_>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (topic, payload) in sub.messages() {
        if topic != RECORDS {
            continue;
        }
        let v: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["appliance"], "lab-a");
        let recs = v["records"].as_array().unwrap();
        let seqs: Vec<u64> = recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "a batch in write order"
        );
        for r in recs {
            let (id, seq) = (r["id"].as_u64().unwrap(), r["seq"].as_u64().unwrap());
            assert_eq!(r["msg_id"], format!("lab-a:{id}:{seq}"));
            out.push((id, seq));
        }
    }
    out
}

/// The record ids the appliance holds.
fn stored_ids(a: &Appliance<'_>) -> BTreeSet<u64> {
    let out = a.cli(&["--json", "show", "cdrs", "--last", "10000"]);
    out.json()["cdrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

/// Records the broker never delivered, and duplicates, against what the appliance holds.
fn lost_and_dup(a: &Appliance<'_>, sub: &Subscriber<'_>) -> (Vec<u64>, usize) {
    let got = received(sub);
    let ids: BTreeSet<u64> = got.iter().map(|(id, _)| *id).collect();
    let lost: Vec<u64> = stored_ids(a).difference(&ids).copied().collect();
    (lost, got.len() - ids.len())
}

fn calls(lab: &Lab, n: u64, rate: f64) -> hil_tests::sipp::Sipp<'_> {
    carrier_calls(lab, n, rate, Duration::from_millis(100))
}

/// A thousand calls: every record reaches the broker in write order, once after
/// duplicates by id are dropped; the status is retained (online, and offline when the
/// daemon stops); a commit is an event; nothing the uplink keeps holds a caller number.
#[test]
fn every_record_of_a_thousand_calls_reaches_the_cloud_in_order() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let _broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    let sub = Subscriber::start(&lab.ns(Host::Cloud), &pki, "callgate/lab-a/#").unwrap();
    let key = fleet_key();
    let cfg = config(&pki, &key, "");
    let mut a = Appliance::start(&lab, Host::A, &cfg).unwrap();
    assert_eq!(uplink(&a)["state"], "no certificate", "{}", uplink(&a));
    let r = enroll(&a, |csr| pki.sign_csr(csr).unwrap());
    assert!(
        r.ok() && r.stdout.contains("CN=lab-a"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    wait_until("connected", 20, || connected(&a));
    assert!(
        sub.wait_for_message(
            "callgate/lab-a/status",
            br#"online"#,
            Duration::from_secs(10)
        ) || sub
            .received()
            .iter()
            .any(|m| m.topic == "callgate/lab-a/status"
                && String::from_utf8_lossy(&m.payload).contains("online"))
    );

    let callee = pbx(&lab);
    let r = calls(&lab, 1000, 100.0).run().unwrap();
    assert_eq!(r.successful, 1000, "{}", r.summary());
    let _ = callee.stop();
    wait_until("1000 records stored", 30, || stored_ids(&a).len() >= 1000);
    wait_until("every record at the broker", 60, || {
        lost_and_dup(&a, &sub).0.is_empty()
    });
    let got = received(&sub);
    let mut seen = BTreeSet::new();
    let firsts: Vec<u64> = got
        .iter()
        .filter(|(id, _)| seen.insert(*id))
        .map(|(_, seq)| *seq)
        .collect();
    assert!(
        firsts.windows(2).all(|w| w[0] < w[1]),
        "records arrive in write order"
    );
    let (lost, dup) = lost_and_dup(&a, &sub);
    assert_eq!((lost.len(), dup), (0, 0), "{lost:?}");
    // Each record whole: the CDR's fields, the caller in the clear inside TLS only.
    let by_id: BTreeMap<u64, Value> = sub
        .messages()
        .iter()
        .filter(|(t, _)| t == RECORDS)
        .flat_map(|(_, p)| {
            let v: Value = serde_json::from_slice(p).unwrap();
            v["records"].as_array().unwrap().clone()
        })
        .map(|r| (r["id"].as_u64().unwrap(), r["cdr"].clone()))
        .collect();
    let stored = cdrs(&a);
    assert_eq!(by_id.len(), stored.len());
    for c in by_id.values() {
        assert_eq!(c["caller"], CALLER);
        assert_eq!(c["disposition"], "answered");
        // Every field the appliance shows for the record, with the same value (a
        // `resume` of null is left out), and whether the caller gave a name.
        let s = stored
            .iter()
            .find(|s| s["call_id"] == c["call_id"])
            .unwrap_or_else(|| panic!("not stored: {c}"));
        for (k, v) in s.as_object().unwrap() {
            if k == "resume" && v.is_null() {
                assert!(c.get(k).is_none(), "{c}");
            } else {
                assert_eq!(&c[k], v, "{k} of {c}");
            }
        }
        assert_eq!(c["has_name"], Value::Bool(!s["caller_name"].is_null()));
    }
    let st = uplink(&a);
    wait_until("backlog drained", 10, || uplink(&a)["backlog"] == 0);
    assert!(st["records_sent"].as_u64().unwrap() >= 1000, "{st}");
    let text = a.cli(&["show", "uplink"]).stdout;
    assert!(
        text.contains("connected") && text.contains("CN=lab-a") && text.contains("backlog"),
        "{text}"
    );
    // A change made on the appliance is an event for the cloud.
    let r = a.commit(&cfg.replace("max_cps = 200", "max_cps = 150"), &[]);
    assert!(r.ok(), "{}", r.stderr);
    wait_until("the commit as an event", 10, || {
        sub.messages().iter().any(|(t, p)| {
            t == "callgate/lab-a/events" && String::from_utf8_lossy(p).contains("\"commit\"")
        })
    });
    // What the uplink keeps on disk: no caller number in the clear anywhere.
    assert!(files_holding(&a.state_dir(), CALLER.as_bytes()).is_empty());
    assert!(!std::fs::read(a.state_dir().join("uplink.key"))
        .unwrap()
        .windows(11)
        .any(|w| w == b"PRIVATE KEY"));
    // An orderly stop leaves the retained status offline (the will, on purpose).
    a.stop();
    wait_until("offline", 10, || {
        sub.received().iter().rev().any(|m| {
            m.topic == "callgate/lab-a/status"
                && String::from_utf8_lossy(&m.payload).contains("offline")
        })
    });
}

/// While the broker is away the backlog grows (`show uplink`) and raises its alarm past
/// the threshold; it drains once the broker is back, and the alarm reaches the cloud.
#[test]
fn the_backlog_grows_while_the_broker_is_away_and_drains_after() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let mut broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    let mut sub = Subscriber::start(&lab.ns(Host::Cloud), &pki, "callgate/lab-a/#").unwrap();
    let key = fleet_key();
    let a = Appliance::start(&lab, Host::A, &config(&pki, &key, "backlog_alarm = 50\n")).unwrap();
    assert!(enroll(&a, |csr| pki.sign_csr(csr).unwrap()).ok());
    wait_until("connected", 20, || connected(&a));
    broker.stop().unwrap();
    let callee = pbx(&lab);
    let r = calls(&lab, 120, 60.0).run().unwrap();
    assert_eq!(r.successful, 120, "{}", r.summary());
    wait_until("a backlog of 120 and its alarm", 20, || {
        let u = uplink(&a);
        u["backlog"].as_u64().unwrap_or(0) >= 120 && u["backlog_alarm"] == true
    });
    assert_ne!(uplink(&a)["state"], "connected");
    broker.restart().unwrap();
    sub.reconnect().unwrap();
    wait_until("drained", 60, || uplink(&a)["backlog"] == 0);
    let _ = callee.stop();
    wait_until("every record at the broker", 30, || {
        lost_and_dup(&a, &sub).0.is_empty()
    });
    wait_until("the alarm at the cloud", 10, || {
        sub.messages().iter().any(|(t, p)| {
            t == "callgate/lab-a/events" && String::from_utf8_lossy(p).contains("\"backlog\"")
        })
    });
    assert_eq!(uplink(&a)["backlog_alarm"], false);
}

/// The faults of a real site, during a stream of calls: the broker SIGKILLed and
/// restarted, the WAN link cut for 30 s, the daemon SIGKILLed and restarted, the broker's
/// persistence wiped (every session lost). No record is lost.
#[test]
fn no_record_is_lost_through_broker_kills_link_cuts_daemon_kills_and_lost_sessions() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let mut broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    let mut sub = Subscriber::start(&lab.ns(Host::Cloud), &pki, RECORDS).unwrap();
    let key = fleet_key();
    let mut a =
        Appliance::start(&lab, Host::A, &config(&pki, &key, "batch_records = 20\n")).unwrap();
    assert!(enroll(&a, |csr| pki.sign_csr(csr).unwrap()).ok());
    wait_until("connected", 20, || connected(&a));
    let callee = pbx(&lab);
    let phase = |what: &str, n: u64| {
        let r = calls(&lab, n, 40.0).run().unwrap();
        assert!(r.successful > 0, "{what}: {}", r.summary());
    };
    // 1. The broker SIGKILLed mid-stream and restarted.
    let stream = calls(&lab, 400, 40.0).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    broker.kill9().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart().unwrap();
    sub.reconnect().unwrap();
    let _ = stream.wait(Duration::from_secs(120));
    // 2. The WAN link cut for 30 s (calls before it; the uplink's connection dies).
    phase("before the cut", 100);
    lab.set_link(Host::A, hil_tests::Segment::Wan, false)
        .unwrap();
    std::thread::sleep(Duration::from_secs(30));
    assert_ne!(uplink(&a)["state"], "connected");
    lab.set_link(Host::A, hil_tests::Segment::Wan, true)
        .unwrap();
    // 3. The daemon SIGKILLed mid-stream and started again.
    let stream = calls(&lab, 400, 40.0).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    a.kill9();
    a.launch().unwrap();
    let _ = stream.wait(Duration::from_secs(120));
    // 4. The broker's persistence wiped: every session (the cloud's subscription too) lost.
    let stream = calls(&lab, 200, 40.0).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    broker.wipe_persistence().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    sub.reconnect().unwrap();
    let _ = stream.wait(Duration::from_secs(120));
    let _ = callee.stop();
    wait_until("backlog drained", 90, || {
        connected(&a) && uplink(&a)["backlog"] == 0
    });
    wait_until("every record at the broker", 30, || {
        lost_and_dup(&a, &sub).0.is_empty()
    });
    let (lost, dup) = lost_and_dup(&a, &sub);
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(
        stored_ids(&a).len() >= 900,
        "records: {}",
        stored_ids(&a).len()
    );
    eprintln!(
        "records {}, duplicates {dup}, broker log tail:\n{}",
        stored_ids(&a).len(),
        broker
            .log()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// What an attacker or a mistake brings: a broker certificate from another CA, one for
/// another name, a certificate that expires while installed, one signed by another CA
/// offered for install, and records published under another appliance's prefix. Each is
/// refused with a clear error in `show uplink` and the log; no record is lost.
#[test]
fn foreign_brokers_expired_certificates_and_other_prefixes_are_refused() {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let key = fleet_key();
    let cfg = config(&pki, &key, "");
    let mut a = Appliance::start(&lab, Host::A, &cfg).unwrap();
    // A certificate from another CA is not even installed.
    let r = enroll(&a, |csr| pki.other_ca().sign_csr(csr).unwrap());
    assert!(
        !r.ok() && r.stderr.contains("fleet CA"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert!(enroll(&a, |csr| pki.sign_csr(csr).unwrap()).ok());
    let error = |a: &Appliance<'_>| uplink(a)["last_error"].as_str().unwrap_or("").to_owned();
    for (cert, says) in [
        (ServerCert::OtherCa, "UnknownIssuer"),
        (ServerCert::WrongName, "not valid for name"),
    ] {
        let _b = Broker::start(
            &lab.ns(Host::Cloud),
            &pki,
            BrokerOpts {
                server_cert: cert.clone(),
                ..BrokerOpts::default()
            },
        )
        .unwrap();
        wait_until(says, 20, || error(&a).contains(says));
        assert_ne!(uplink(&a)["state"], "connected");
        assert!(a.log().contains(says), "{cert:?}: the log says it too");
    }
    // Records under another appliance's prefix: refused by the broker's ACL, kept here.
    let broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    let sub = Subscriber::start(&lab.ns(Host::Cloud), &pki, "callgate/#").unwrap();
    let r = a.commit(
        &config(&pki, &key, "topic_prefix = \"callgate/lab-b\"\n"),
        &[],
    );
    assert!(r.ok(), "{}", r.stderr);
    let callee = pbx(&lab);
    assert_eq!(calls(&lab, 20, 20.0).run().unwrap().successful, 20);
    wait_until("NotAuthorized", 20, || error(&a).contains("NotAuthorized"));
    wait_until("the records wait", 10, || {
        uplink(&a)["backlog"].as_u64().unwrap_or(0) >= 20
    });
    assert!(!sub
        .messages()
        .iter()
        .any(|(t, _)| t.starts_with("callgate/lab-b/records")));
    // Put right, the same records go where they belong.
    assert!(a.commit(&cfg, &[]).ok());
    wait_until("every record at the broker", 30, || {
        let got: BTreeSet<u64> = sub
            .messages()
            .iter()
            .filter(|(t, _)| t == RECORDS)
            .flat_map(|(_, p)| {
                let v: Value = serde_json::from_slice(p).unwrap();
                v["records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["id"].as_u64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        stored_ids(&a).is_subset(&got)
    });
    let _ = callee.stop();
    // A certificate that expires while installed: warned, then refused by the broker.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamp = |t: u64| {
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{t}"), "+%Y%m%d%H%M%SZ"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (from, to) = (stamp(now - 3600), stamp(now + 20));
    let r = enroll(&a, |csr| {
        pki.fleet().sign_csr_valid(csr, &from, &to).unwrap()
    });
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    wait_until("warned", 10, || {
        uplink(&a)["cert_warning"]
            .as_str()
            .is_some_and(|w| w.contains("expires"))
    });
    std::thread::sleep(Duration::from_secs(22));
    // The broker sees the expired certificate at the next connection.
    drop(broker);
    let _broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    wait_until("refused as expired", 30, || {
        let e = error(&a).to_lowercase();
        e.contains("expired") || e.contains("certificate")
    });
    assert!(uplink(&a)["cert_warning"]
        .as_str()
        .is_some_and(|w| w.contains("expired")));
    assert_ne!(uplink(&a)["state"], "connected");
    // Offered again for install, an expired certificate is refused at once.
    let r = enroll(&a, |csr| {
        pki.fleet()
            .sign_csr_valid(csr, "20200101000000Z", "20200102000000Z")
            .unwrap()
    });
    assert!(!r.ok(), "{}", r.stdout);
    a.stop();
}

/// Config from the cloud: a document signed by the fleet's key is applied as a
/// confirmed commit and confirmed over a new connection; a bad signature, a replay, a
/// malformed document and an invalid config are refused with nothing changed; a document
/// that cuts the uplink rolls back by itself. Each result is reported.
#[test]
fn only_signed_newer_valid_config_from_the_cloud_is_applied_and_one_that_cuts_the_uplink_rolls_back(
) {
    let lab = lab();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let _broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    let reported =
        Subscriber::start(&lab.ns(Host::Cloud), &pki, "callgate/lab-a/config/reported").unwrap();
    let key = fleet_key();
    let cfg = config(&pki, &key, "");
    let a = Appliance::start(&lab, Host::A, &cfg).unwrap();
    assert!(enroll(&a, |csr| pki.sign_csr(csr).unwrap()).ok());
    wait_until("connected", 20, || connected(&a));
    let sign = |k: &Ed25519KeyPair, version: u64, text: &str| {
        let mut m = b"callgate-config/1\0lab-a\0".to_vec();
        m.extend_from_slice(&version.to_be_bytes());
        m.extend_from_slice(text.as_bytes());
        serde_json::to_vec(&serde_json::json!({
            "appliance": "lab-a", "version": version, "config": text,
            "signature": b64(k.sign(&m).as_ref()),
        }))
        .unwrap()
    };
    let send = |doc: &[u8]| {
        hil_tests::broker::publish(
            &lab.ns(Host::Cloud),
            &pki,
            "callgate/lab-a/config/desired",
            doc,
            false,
        )
        .unwrap();
    };
    let last_report = || -> Value {
        reported
            .messages()
            .last()
            .map(|(_, p)| serde_json::from_slice(p).unwrap())
            .unwrap_or(Value::Null)
    };
    let running = || a.cli(&["show", "config"]).stdout;
    let wait_report = |version: u64, result: &str| {
        wait_until(&format!("report {version} {result}"), 60, || {
            let r = last_report();
            r["version"] == version && r["result"] == result
        });
        last_report()
    };

    // Applied and confirmed.
    let v1 = cfg.replace("max_cps = 200", "max_cps = 120");
    send(&sign(&key, 1, &v1));
    let r = wait_report(1, "confirmed");
    assert!(running().contains("max_cps = 120"));
    let history = a.cli(&["show", "history"]).stdout;
    assert!(history.contains("cloud"), "{history}");
    assert!(r["revision"].as_u64().is_some(), "{r}");
    // Each refusal leaves the running config as it was.
    let before = running();
    let v2 = cfg.replace("max_cps = 200", "max_cps = 90");
    for (doc, version, says) in [
        (sign(&fleet_key(), 2, &v2), 2, "signature"),
        (sign(&key, 0, &v2), 0, "not newer"),
        (
            b"{\"appliance\":\"lab-a\",\"version\":3}".to_vec(),
            3,
            "not a config document",
        ),
        (
            sign(&key, 4, "[appliance]\nname = \"lab-a\"\n"),
            4,
            "invalid",
        ),
    ] {
        send(&doc);
        let r = wait_report(version, "refused");
        assert!(r["detail"].as_str().unwrap().contains(says), "{says}: {r}");
        assert_eq!(running(), before, "{says}: nothing changed");
    }
    // One that cuts the uplink (its egress entry gone): applied, then rolled back.
    let cut = config(&pki, &key, "").replace("ports = [8883]", "ports = [8884]");
    let cut = cut.replace("name = \"uplink\"", "name = \"uplink-elsewhere\"");
    assert!(cut.contains("8884"));
    let cut = cut.replace(
        &format!("address = \"{CLOUD_V4}\""),
        &format!("address = \"{CLOUD_V4}\"\nport = 8884"),
    );
    send(&sign(&key, 5, &cut));
    wait_report(5, "applied");
    let r = wait_report(5, "rolled back");
    assert!(r["detail"].as_str().unwrap().contains("not reached"), "{r}");
    wait_until("the old config back", 30, || {
        running().contains("max_cps = 120")
    });
    assert!(!running().contains("8884"));
    wait_until("connected again", 30, || connected(&a));
}
