#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! Subject requests from the cloud against the real daemon: calls placed by sipp through
//! appliance A, requests signed with the fleet's key published on `subjects/request` at
//! the lab's Mosquitto (mutual TLS, per-appliance ACLs) with `mosquitto_pub`, the replies
//! and events read on the broker with `mosquitto_sub`. An erasure made while the broker
//! is away, with the daemon restarted before it is back, still reaches the cloud.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use hil_tests::addr::{self, CLOUD_V4};
use hil_tests::broker::{b64, fleet_key, Broker, BrokerOpts, Pki, Subscriber};
use hil_tests::calls::{carrier_calls, lab_toml, now_ms, pbx, wait_cdrs, wait_until, CALLER};
use hil_tests::{Appliance, Host, Lab};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

const SUBJECT: &str = "+14155550177";
const SUBJECT_NAME: &str = "Grace Hopper";
/// Erased from the console while the broker is away.
const SECOND: &str = "+14155550188";
const UNKNOWN: &str = "+14155550999";
const REPLY: &str = "callgate/lab-a/subjects/reply";
const EVENTS: &str = "callgate/lab-a/events";

fn config(pki: &Pki, key: &Ed25519KeyPair) -> String {
    format!(
        "{}\n[[egress]]\nname = \"uplink\"\nzone = \"wan\"\n\
         destinations = [\"{CLOUD_V4}/32\"]\nprotocol = \"tcp\"\nports = [8883]\n\n\
         [uplink]\nbroker = \"{}\"\naddress = \"{CLOUD_V4}\"\nca = \"\"\"\n{}\"\"\"\n\
         fleet_key = \"{}\"\nboot_delay_max_secs = 0\nbackoff_max_secs = 2\nkeepalive_secs = 5\n",
        lab_toml(),
        addr::BROKER_NAME,
        pki.ca_pem().unwrap(),
        b64(key.public_key().as_ref()),
    )
}

/// A subject request as the cloud signs it (`callgate-subject/1`: each field
/// length-prefixed, the issue time as u64 BE).
#[allow(clippy::too_many_arguments)]
fn request(
    k: &Ed25519KeyPair,
    appliance: &str,
    id: &str,
    kind: &str,
    format: Option<&str>,
    number: &str,
    issued_ms: u64,
) -> Vec<u8> {
    let requester = "privacy-desk";
    let mut m = b"callgate-subject/1\0".to_vec();
    for f in [appliance, id, kind, format.unwrap_or(""), number] {
        m.extend_from_slice(&(f.len() as u32).to_be_bytes());
        m.extend_from_slice(f.as_bytes());
    }
    m.extend_from_slice(&issued_ms.to_be_bytes());
    m.extend_from_slice(&(requester.len() as u32).to_be_bytes());
    m.extend_from_slice(requester.as_bytes());
    serde_json::to_vec(&json!({
        "appliance": appliance, "request_id": id, "kind": kind, "format": format,
        "number": number, "issued_ms": issued_ms, "requester": requester,
        "signature": b64(k.sign(&m).as_ref()),
    }))
    .unwrap()
}

fn records_of(a: &Appliance<'_>, number: &str) -> u64 {
    a.cli(&["--json", "show", "subject", number]).json()["records"]
        .as_u64()
        .unwrap()
}

#[test]
fn the_clouds_signed_subject_requests_run_as_the_consoles_and_receipts_survive_a_broker_outage() {
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Cloud]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let mut broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    let mut sub = Subscriber::start(&lab.ns(Host::Cloud), &pki, "callgate/lab-a/#").unwrap();
    let key = fleet_key();
    let mut a = Appliance::start(&lab, Host::A, &config(&pki, &key)).unwrap();
    let installed = hil_tests::broker::enroll(&a, |csr| pki.sign_csr(csr)).unwrap();
    assert!(installed.ok(), "{} {}", installed.stdout, installed.stderr);
    let connected =
        |a: &Appliance<'_>| a.cli(&["--json", "show", "uplink"]).json()["state"] == "connected";
    wait_until("the uplink is connected", 20, || connected(&a));
    {
        let _pbx = pbx(&lab);
        for (caller, n) in [(SUBJECT, 6), (SECOND, 2), (CALLER, 3)] {
            let r = carrier_calls(&lab, n, 10.0, Duration::from_millis(100))
                .caller(caller, SUBJECT_NAME)
                .run()
                .unwrap();
            assert_eq!(r.successful, n, "{r:?}");
        }
        assert_eq!(wait_cdrs(&a, 11).len(), 11);
    }
    let send = |doc: &[u8]| {
        hil_tests::broker::publish(
            &lab.ns(Host::Cloud),
            &pki,
            "callgate/lab-a/subjects/request",
            doc,
            false,
        )
        .unwrap();
    };
    let reply_to = |sub: &Subscriber<'_>, id: &str| -> Option<Value> {
        sub.messages().into_iter().find_map(|(t, p)| {
            let v: Value = serde_json::from_slice(&p).ok()?;
            (t == REPLY && v["request_id"] == id).then_some(v)
        })
    };
    let ask = |sub: &Subscriber<'_>, doc: &[u8], id: &str| -> Value {
        send(doc);
        wait_until(&format!("the reply to {id}"), 20, || {
            reply_to(sub, id).is_some()
        });
        reply_to(sub, id).unwrap()
    };

    // Access: what is held, as `show subject` says it.
    let r = ask(
        &sub,
        &request(&key, "lab-a", "r-access", "access", None, SUBJECT, now_ms()),
        "r-access",
    );
    assert_eq!(
        (r["ok"].as_bool(), r["result"].as_str()),
        (Some(true), Some("answered")),
        "{r}"
    );
    assert_eq!(r["data"]["records"], 6, "{r}");
    // Export, JSON and CSV: the six records, decrypted, with the field meanings.
    let r = ask(
        &sub,
        &request(
            &key,
            "lab-a",
            "r-json",
            "export",
            Some("json"),
            SUBJECT,
            now_ms(),
        ),
        "r-json",
    );
    assert_eq!(r["records"], 6, "{r}");
    let j: Value = serde_json::from_str(r["export"].as_str().unwrap()).unwrap();
    assert_eq!(j["schema"], "callgate-subject-export/1");
    assert_eq!(j["records"].as_array().unwrap().len(), 6);
    assert!(j["fields"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["meaning"].is_string()));
    for rec in j["records"].as_array().unwrap() {
        assert_eq!(
            (rec["caller"].as_str(), rec["caller_name"].as_str()),
            (Some(SUBJECT), Some(SUBJECT_NAME))
        );
    }
    let r = ask(
        &sub,
        &request(
            &key,
            "lab-a",
            "r-csv",
            "export",
            Some("csv"),
            SUBJECT,
            now_ms(),
        ),
        "r-csv",
    );
    let csv = r["export"].as_str().unwrap();
    assert!(csv.starts_with("id,call_id,"), "{csv}");
    assert_eq!(
        csv.matches("\r\n").count(),
        7,
        "a header and six rows: {csv}"
    );
    // Unknown: a plain, empty answer. Not a number: a plain refusal, nothing read.
    let r = ask(
        &sub,
        &request(
            &key,
            "lab-a",
            "r-unknown",
            "access",
            None,
            UNKNOWN,
            now_ms(),
        ),
        "r-unknown",
    );
    assert!(
        r["text"].as_str().unwrap().contains("nothing is held"),
        "{r}"
    );
    let r = ask(
        &sub,
        &request(
            &key,
            "lab-a",
            "r-bad",
            "export",
            Some("json"),
            "4155550177",
            now_ms(),
        ),
        "r-bad",
    );
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["detail"].as_str().unwrap().contains("E.164"), "{r}");

    // The attacker's requests: another key's signature, another appliance's request,
    // an old one, one from the future. Refused with the reason; nothing erased.
    let rogue = fleet_key();
    let now = now_ms();
    for (doc, id, says) in [
        (
            request(&rogue, "lab-a", "x-1", "erase", None, SUBJECT, now),
            "x-1",
            "signature",
        ),
        (
            request(&key, "lab-b", "x-2", "erase", None, SUBJECT, now),
            "x-2",
            "appliance 'lab-b'",
        ),
        (
            request(
                &key,
                "lab-a",
                "x-3",
                "erase",
                None,
                SUBJECT,
                now - 3_600_000,
            ),
            "x-3",
            "too old",
        ),
        (
            request(
                &key,
                "lab-a",
                "x-4",
                "erase",
                None,
                SUBJECT,
                now + 3_600_000,
            ),
            "x-4",
            "future",
        ),
    ] {
        let r = ask(&sub, &doc, id);
        assert_eq!(
            (r["ok"].as_bool(), r["result"].as_str()),
            (Some(false), Some("refused")),
            "{r}"
        );
        assert!(r["detail"].as_str().unwrap().contains(says), "{says}: {r}");
    }
    // A tampered request (signed as an access, sent as an erasure).
    let mut v: Value =
        serde_json::from_slice(&request(&key, "lab-a", "x-5", "access", None, CALLER, now))
            .unwrap();
    v["kind"] = "erase".into();
    let r = ask(&sub, &serde_json::to_vec(&v).unwrap(), "x-5");
    assert!(r["detail"].as_str().unwrap().contains("signature"), "{r}");
    assert_eq!(records_of(&a, SUBJECT), 6, "nothing erased");
    assert_eq!(records_of(&a, CALLER), 3, "nothing erased");

    // The erasure, asked by the cloud: the console's erasure, its receipt signed with the
    // uplink identity, `by` the cloud's requester; the reply and the event carry it.
    let erase = request(&key, "lab-a", "r-erase", "erase", None, SUBJECT, now_ms());
    let r = ask(&sub, &erase, "r-erase");
    assert_eq!(
        (r["ok"].as_bool(), r["result"].as_str()),
        (Some(true), Some("erased")),
        "{r}"
    );
    assert!(r["message_id"].is_string(), "kept durably: {r}");
    assert!(!r.to_string().contains("4155550177"), "no number: {r}");
    let receipt = &r["receipt"];
    let pem = std::fs::read_to_string(a.state_dir().join("uplink.crt")).unwrap();
    let cert = callgate_pki::certificates(&pem).unwrap().remove(0);
    let text = receipt["receipt"].as_str().unwrap();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(receipt["signature"].as_str().unwrap())
        .unwrap();
    callgate_pki::verify_signature(&cert, text.as_bytes(), &sig).unwrap();
    let statement: Value = serde_json::from_str(text).unwrap();
    assert_eq!(statement["by"], "cloud:privacy-desk");
    assert_eq!(statement["record_ids"].as_array().unwrap().len(), 6);
    let event_for = |sub: &Subscriber<'_>, receipt: &Value| -> bool {
        sub.messages().into_iter().any(|(t, p)| {
            let v: Value = serde_json::from_slice(&p).unwrap_or_default();
            t == EVENTS && v["event"] == "subject erased" && &v["detail"]["receipt"] == receipt
        })
    };
    wait_until("the erasure's event", 20, || event_for(&sub, receipt));
    assert_eq!(records_of(&a, SUBJECT), 0);
    assert_eq!(records_of(&a, CALLER), 3, "nobody else's records changed");
    let show = a.cli(&["show", "subject", SUBJECT]).stdout;
    assert!(show.contains("by cloud:privacy-desk on lab-a"), "{show}");
    // Again: a replay, refused, nothing changes.
    let replies = sub.messages().len();
    send(&erase);
    wait_until("the replay's refusal", 20, || {
        sub.messages().iter().skip(replies).any(|(t, p)| {
            let v: Value = serde_json::from_slice(p).unwrap_or_default();
            t == REPLY && v["request_id"] == "r-erase" && v["result"] == "refused"
        })
    });
    let s = a.cli(&["--json", "show", "subject", SUBJECT]).json();
    assert_eq!(s["erasures"].as_array().unwrap().len(), 1, "{s}");

    // On record: the cloud's requests by its requester, the refusals by `cloud`.
    let trail = a.audit(200);
    let by = |user: &str, action: &str| -> Vec<String> {
        trail
            .iter()
            .filter(|e| e["user"] == user && e["action"] == action)
            .map(|e| e["detail"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert!(
        by("cloud:privacy-desk", "request subject erase").contains(&"ok".to_owned()),
        "{trail:?}"
    );
    assert!(
        by("cloud:privacy-desk", "request subject export").len() >= 4,
        "{trail:?}"
    );
    let refusals = by("cloud", "cloud subject request");
    assert!(refusals.len() >= 6, "{refusals:?}");
    assert!(
        refusals.iter().any(|d| d.contains("answered already")),
        "{refusals:?}"
    );
    assert!(
        !trail.iter().any(|e| e.to_string().contains("4155550177")),
        "no number in the audit trail"
    );

    // The broker goes away; an erasure on the console meanwhile; the daemon restarts;
    // the broker comes back: the receipt reaches the cloud.
    broker.stop().unwrap();
    wait_until("the uplink notices", 30, || !connected(&a));
    let out = a.cli(&["--json", "request", "subject", "erase", SECOND]);
    assert!(out.ok(), "{} {}", out.stdout, out.stderr);
    let receipt = out.json()["receipt"].clone();
    assert!(receipt.is_object(), "{receipt}");
    assert!(a.stop().is_some(), "{}", a.log());
    a.launch().unwrap();
    broker.restart().unwrap();
    sub.reconnect().unwrap();
    wait_until("the uplink is back", 30, || connected(&a));
    wait_until("the receipt made while the broker was away", 30, || {
        event_for(&sub, &receipt)
    });
    let ids: BTreeSet<String> = sub
        .messages()
        .into_iter()
        .filter(|(t, _)| t == EVENTS)
        .filter_map(|(_, p)| {
            let v: Value = serde_json::from_slice(&p).ok()?;
            (v["event"] == "subject erased")
                .then(|| v["message_id"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    assert!(ids.len() >= 2 && !ids.contains(""), "{ids:?}");
}
