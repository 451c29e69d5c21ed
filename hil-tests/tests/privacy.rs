#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! A caller's rights against the real daemon: calls placed by sipp on the carrier through
//! appliance A to the PBX (real nftables, the encrypted store), then the subject's requests
//! made with `callgate` over the control socket, as root (an admin) and as an operator
//! account the daemon made from `[[user]]`. With the uplink to the lab's Mosquitto: the
//! erasure's receipt reaches the cloud, and records still waiting in the outbox when their
//! subject is erased reach it with the caller erased, nothing sent naming the subject.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use hil_tests::addr::{self, CLOUD_V4};
use hil_tests::broker::{Broker, BrokerOpts, Pki, Subscriber};
use hil_tests::calls::{
    carrier_calls, lab_toml, new_lab, pbx, start, wait_cdrs, wait_until, CALLER,
};
use hil_tests::{Appliance, Cli, Host, Lab};
use serde_json::{json, Value};

/// The subject: twenty calls from this number.
const SUBJECT: &str = "+14155550177";
const SUBJECT_NAME: &str = "Grace Hopper";
/// Nobody called from this one.
const UNKNOWN: &str = "+14155550999";
/// The export's fields, in order (the CSV header).
const FIELDS: &str = "id,call_id,tracking_number,campaign,caller,caller_name,destination,\
invite_at,ring_at,answer_at,end_at,duration_ms,disposition,final_code,appliance,ended_by";

const OPERATOR: &str = "\n[[user]]\nname = \"olga\"\nrole = \"operator\"\n";

/// Twenty calls of the subject and three of someone else, all answered and stored; the
/// ids of the subject's records (from `show cdrs`).
fn place_calls(lab: &Lab, a: &Appliance<'_>) -> BTreeSet<u64> {
    let _pbx = pbx(lab);
    let r = carrier_calls(lab, 20, 10.0, Duration::from_millis(100))
        .caller(SUBJECT, SUBJECT_NAME)
        .run()
        .unwrap();
    assert_eq!(r.successful, 20, "{r:?}");
    let r = carrier_calls(lab, 3, 10.0, Duration::from_millis(100))
        .run()
        .unwrap();
    assert_eq!(r.successful, 3, "{r:?}");
    assert_eq!(wait_cdrs(a, 23).len(), 23);
    let ids: BTreeSet<u64> = stored(a)
        .iter()
        .filter(|r| r["cdr"]["caller"] == SUBJECT)
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 20);
    ids
}

/// Every stored record as `show cdrs` lists it: id and record.
fn stored(a: &Appliance<'_>) -> Vec<Value> {
    let out = a.cli(&["--json", "show", "cdrs", "--last", "10000"]);
    assert!(out.ok(), "{}", out.stderr);
    out.json()["cdrs"].as_array().cloned().unwrap_or_default()
}

/// The operator account exists and reaches the daemon.
fn wait_operator(a: &Appliance<'_>) {
    assert!(
        hil_tests::poll_until(Duration::from_secs(10), Duration::from_millis(100), || a
            .cli_as("olga", &["status"])
            .ok()),
        "{}",
        a.log()
    );
}

fn export(a: &Appliance<'_>, number: &str, format: &str) -> Cli {
    a.cli(&["request", "subject", "export", number, "--format", format])
}

/// The CSV's data rows, split into cells (the lab's values hold no comma or quote). Lines
/// end CRLF; the console prints them without the CR (it prints no control characters).
fn csv_rows(out: &str) -> Vec<Vec<String>> {
    let mut lines = out.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    assert_eq!(lines.next(), Some(FIELDS), "{out}");
    let rows: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    rows.iter()
        .map(|l| {
            assert!(!l.contains('"'), "{l}");
            l.split(',').map(str::to_owned).collect()
        })
        .collect()
}

#[test]
fn a_subjects_twenty_calls_export_as_json_and_csv_and_only_an_admin_may_ask() {
    let lab = new_lab();
    let a = start(&lab, &format!("{}{OPERATOR}", lab_toml()));
    let ids = place_calls(&lab, &a);

    // JSON: exactly the subject's twenty records, decrypted, with the field meanings.
    let out = export(&a, SUBJECT, "json");
    assert!(out.ok(), "{} {}", out.stdout, out.stderr);
    let j: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["schema"], "callgate-subject-export/1");
    assert_eq!(j["subject"], SUBJECT);
    let names: Vec<&str> = j["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert!(!f["meaning"].as_str().unwrap().is_empty(), "{f}");
            f["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names.join(","), FIELDS);
    let recs = j["records"].as_array().unwrap();
    let got: BTreeSet<u64> = recs.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(got, ids);
    for r in recs {
        assert_eq!(r["caller"], SUBJECT, "{r}");
        assert_eq!(r["caller_name"], SUBJECT_NAME, "{r}");
        assert_eq!(r["disposition"], "answered", "{r}");
        assert!(r["end_at"].as_u64().is_some(), "{r}");
    }
    // The same number spelled with separators is the same subject.
    let dashed = export(&a, "+1-415-555-0177", "json");
    let j2: Value = serde_json::from_str(&dashed.stdout).unwrap();
    assert_eq!(j2["records"].as_array().unwrap().len(), 20);

    // CSV: a header, then the same twenty records.
    let out = export(&a, SUBJECT, "csv");
    assert!(out.ok(), "{}", out.stderr);
    assert_eq!(out.stdout.matches("\r\n").count(), 21, "CRLF line ends");
    let rows = csv_rows(&out.stdout);
    let got: BTreeSet<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(got, ids);
    for r in &rows {
        assert_eq!(r.len(), 16, "{r:?}");
        assert_eq!((r[4].as_str(), r[5].as_str()), (SUBJECT, SUBJECT_NAME));
    }

    // `show subject`: how many, and the key.
    let show = a.cli(&["--json", "show", "subject", SUBJECT]);
    assert!(show.ok(), "{}", show.stderr);
    let s = show.json();
    assert_eq!(s["records"], 20);
    assert!(s["key_generation"].as_u64().is_some(), "{s}");
    assert!(s["erased_at_ms"].is_null());

    // Nobody called from this number: empty, well-formed answers.
    let out = export(&a, UNKNOWN, "json");
    assert!(out.ok(), "{}", out.stderr);
    let j: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["records"], Value::Array(vec![]));
    assert_eq!(j["subject"], UNKNOWN);
    let out = export(&a, UNKNOWN, "csv");
    assert!(out.ok());
    assert!(csv_rows(&out.stdout).is_empty());
    let s = a.cli(&["--json", "show", "subject", UNKNOWN]).json();
    assert_eq!(
        (s["records"].as_u64(), s["key_generation"].is_null()),
        (Some(0), true)
    );

    // A malformed number: a plain refusal, nothing read (and the number not repeated).
    for bad in ["4155550177", "+1 415 555 0177", "alice", "+0415"] {
        let out = export(&a, bad, "json");
        assert_eq!(out.code, 1, "{bad}: {} {}", out.stdout, out.stderr);
        assert!(out.stderr.contains("E.164"), "{}", out.stderr);
        assert!(out.stdout.is_empty());
    }
    let erase = a.cli(&["request", "subject", "erase", "415"]);
    assert_eq!(erase.code, 1, "{}", erase.stdout);
    assert_eq!(stored(&a).len(), 23, "nothing changed");

    // An operator is refused by the daemon, whatever the client sends.
    wait_operator(&a);
    for args in [
        vec!["request", "subject", "export", SUBJECT, "--format", "csv"],
        vec!["show", "subject", SUBJECT],
        vec!["request", "subject", "erase", SUBJECT],
    ] {
        let out = a.cli_as("olga", &args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(!out.stdout.contains(SUBJECT_NAME), "{}", out.stdout);
        assert!(out.stderr.contains("admin"), "{args:?}: {}", out.stderr);
    }
    let s = a.cli(&["--json", "show", "subject", SUBJECT]).json();
    assert_eq!(s["records"], 20, "the operator's erase changed nothing");

    // The console (`ssh ann@appliance request subject export …` runs it so): the export,
    // and the typed line on record without the number.
    let out = a
        .command(hil_tests::bin("callgate").to_str().unwrap())
        .args(["-c", &format!("req sub exp {SUBJECT} format csv")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(csv_rows(&text).len(), 20);

    // Every request is on record: who, and what came of it.
    let trail = a.audit(60);
    assert!(
        trail
            .iter()
            .any(|e| e["action"] == "typed"
                && e["detail"] == "req sub exp <number withheld> format csv"),
        "{trail:?}"
    );
    let of = |user: &str, action: &str| -> Vec<String> {
        trail
            .iter()
            .filter(|e| e["user"] == user && e["action"] == action)
            .map(|e| e["detail"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let root_exports = of("root", "request subject export");
    assert!(
        root_exports.iter().filter(|d| *d == "ok").count() >= 5,
        "{root_exports:?}"
    );
    assert!(
        root_exports.iter().any(|d| d.starts_with("refused")),
        "{root_exports:?}"
    );
    for action in [
        "request subject export",
        "show subject",
        "request subject erase",
    ] {
        let d = of("olga", action);
        assert!(
            d.iter().any(|d| d.starts_with("refused")),
            "{action}: {d:?}"
        );
    }
    assert!(
        !trail.iter().any(|e| e.to_string().contains("4155550177")),
        "no number in the audit trail"
    );
    // The other caller's records were never part of it.
    let other = export(&a, CALLER, "json");
    let j: Value = serde_json::from_str(&other.stdout).unwrap();
    assert_eq!(j["records"].as_array().unwrap().len(), 3);
}

/// Raw request lines to the control socket, as root; the replies.
fn raw(a: &Appliance<'_>, lines: &[&str]) -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_control-raw"))
        .arg(a.socket())
        .args(lines)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `config/lab.toml` with the uplink to the lab's broker (fleet CA `ca_pem`) and the
/// operator.
fn uplink_config(ca_pem: &str) -> String {
    use ring::signature::KeyPair as _;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let fleet = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    format!(
        "{}{OPERATOR}\n[[egress]]\nname = \"uplink\"\nzone = \"wan\"\n\
         destinations = [\"{CLOUD_V4}/32\"]\nprotocol = \"tcp\"\nports = [8883]\n\n\
         [uplink]\nbroker = \"{}\"\naddress = \"{CLOUD_V4}\"\nca = \"\"\"\n{}\"\"\"\n\
         fleet_key = \"{}\"\nboot_delay_max_secs = 0\nbackoff_max_secs = 2\n",
        lab_toml(),
        addr::BROKER_NAME,
        ca_pem,
        base64::engine::general_purpose::STANDARD.encode(fleet.public_key().as_ref()),
    )
}

#[test]
fn an_erasure_shreds_the_subject_and_its_receipt_verifies_against_the_uplink_certificate() {
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Cloud]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let _broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    let sub = Subscriber::start(&lab.ns(Host::Cloud), &pki, "callgate/lab-a/#").unwrap();
    let a = start(&lab, &uplink_config(&pki.ca_pem().unwrap()));
    let installed = hil_tests::broker::enroll(&a, |csr| pki.sign_csr(csr)).unwrap();
    assert!(installed.ok(), "{} {}", installed.stdout, installed.stderr);
    wait_until("the uplink is connected", 20, || {
        a.cli(&["--json", "show", "uplink"]).json()["state"] == "connected"
    });
    let ids = place_calls(&lab, &a);
    let before = a.cli(&["--json", "show", "subject", SUBJECT]).json();
    let generation = before["key_generation"].as_u64().unwrap();

    // An operator may not erase; nothing changes.
    wait_operator(&a);
    let refused = a.cli_as("olga", &["request", "subject", "erase", SUBJECT]);
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert_eq!(
        a.cli(&["--json", "show", "subject", SUBJECT]).json()["records"],
        20
    );

    // A line the console would not recognise, typed with the number in another spelling:
    // it reaches the console history and the audit trail as typed.
    let typo = "shwo subject 415.555.0177";
    let kept = raw(&a, &[&json!({"cmd": "remember", "line": typo}).to_string()]);
    assert_eq!(kept[0]["ok"], true, "{kept:?}");
    let holds_subject = |text: &str| {
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        digits.contains("4155550177")
    };
    let typed_copies = || {
        let history = raw(&a, &[r#"{"cmd":"history"}"#]);
        let lines = history[0]["data"]["lines"].to_string();
        let trail = a.audit(200);
        (
            holds_subject(&lines),
            trail
                .iter()
                .any(|e| holds_subject(e["detail"].as_str().unwrap_or(""))),
        )
    };
    assert_eq!(
        typed_copies(),
        (true, true),
        "the typed line is on record before"
    );

    let out = a.cli(&["--json", "request", "subject", "erase", SUBJECT]);
    assert!(out.ok(), "{} {}", out.stdout, out.stderr);
    // No typed copy of the number stays readable: history and trail rewritten.
    assert_eq!(
        typed_copies(),
        (false, false),
        "typed copies after the erasure"
    );
    let r = out.json();
    let erased: BTreeSet<u64> = r["record_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(erased, ids);

    // The receipt: signed by the uplink identity, checked against the certificate the
    // fleet CA issued for it (the one installed on the appliance).
    let receipt = &r["receipt"];
    let installed_pem = std::fs::read_to_string(a.state_dir().join("uplink.crt")).unwrap();
    assert_eq!(receipt["certificate"], installed_pem.as_str());
    let cert = callgate_pki::certificates(&installed_pem)
        .unwrap()
        .remove(0);
    let text = receipt["receipt"].as_str().unwrap();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(receipt["signature"].as_str().unwrap())
        .unwrap();
    assert_eq!(receipt["algorithm"], "ECDSA-P256-SHA256");
    callgate_pki::verify_signature(&cert, text.as_bytes(), &sig).unwrap();
    let statement: Value = serde_json::from_str(text).unwrap();
    assert_eq!(statement["type"], "callgate-erasure-receipt/2");
    assert!(statement["peer"].is_null(), "not paired");
    assert_eq!(statement["erased_on"], serde_json::json!(["lab-a"]));
    assert_eq!(statement["appliance"], "lab-a");
    assert_eq!(statement["by"], "root");
    assert_eq!(statement["key_generation"], generation);
    let listed: BTreeSet<u64> = statement["record_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(statement["subject"].as_str().unwrap().len(), 64);
    assert!(
        !text.contains("4155550177") && !text.contains(SUBJECT_NAME),
        "{text}"
    );
    // Altered, it no longer verifies; nor against another key's certificate.
    let forged = text.replacen("\"by\":\"root\"", "\"by\":\"olga\"", 1);
    assert_ne!(forged, text);
    assert!(callgate_pki::verify_signature(&cert, forged.as_bytes(), &sig).is_err());
    let other = pki.client_cert("lab-b").unwrap().cert_pem().unwrap();
    let other = callgate_pki::certificates(&other).unwrap().remove(0);
    assert!(callgate_pki::verify_signature(&other, text.as_bytes(), &sig).is_err());

    // The cloud has the receipt: the erasure's event carries it.
    let event = || -> Option<Value> {
        sub.messages().into_iter().find_map(|(t, p)| {
            let v: Value = serde_json::from_slice(&p).ok()?;
            (t == "callgate/lab-a/events" && v["event"] == "subject erased").then_some(v)
        })
    };
    wait_until("the erasure's event", 10, || event().is_some());
    let ev = event().unwrap();
    assert_eq!(&ev["detail"]["receipt"], receipt, "{ev}");
    assert_eq!(ev["detail"]["user"], "root");

    // The records stay, without the caller's number and name; nobody else's changed.
    let rows = stored(&a);
    assert_eq!(rows.len(), 23);
    for row in &rows {
        let id = row["id"].as_u64().unwrap();
        let c = &row["cdr"];
        if ids.contains(&id) {
            assert!(c["caller"].is_null() && c["caller_name"].is_null(), "{row}");
        } else {
            assert_eq!(c["caller"], CALLER, "{row}");
        }
    }
    let exported = export(&a, SUBJECT, "json");
    let j: Value = serde_json::from_str(&exported.stdout).unwrap();
    assert_eq!(j["records"], Value::Array(vec![]));

    // `show subject` says when, and by whom.
    let show = a.cli(&["show", "subject", SUBJECT]);
    assert!(show.ok(), "{}", show.stderr);
    assert!(show.stdout.contains("erased at "), "{}", show.stdout);
    assert!(
        show.stdout.contains("by root on lab-a (20 records"),
        "{}",
        show.stdout
    );
    let s = a.cli(&["--json", "show", "subject", SUBJECT]).json();
    assert_eq!(s["erased_at_ms"], statement["erased_at_ms"]);
    assert_eq!(
        (s["records"].as_u64(), s["key_generation"].is_null()),
        (Some(0), true)
    );

    // Again: nothing is held any more, nothing is erased, no second receipt.
    let again = a
        .cli(&["--json", "request", "subject", "erase", SUBJECT])
        .json();
    assert!(again["receipt"].is_null(), "{again}");

    // The caller calls again: a new key, a new record, the erasure still on record.
    let _pbx = pbx(&lab);
    let r = carrier_calls(&lab, 1, 10.0, Duration::from_millis(100))
        .caller(SUBJECT, SUBJECT_NAME)
        .run()
        .unwrap();
    assert_eq!(r.successful, 1, "{r:?}");
    assert_eq!(wait_cdrs(&a, 24).len(), 24);
    let s = a.cli(&["--json", "show", "subject", SUBJECT]).json();
    assert_eq!(s["records"], 1);
    assert_ne!(s["key_generation"].as_u64(), Some(generation));
    assert_eq!(s["erasures"].as_array().unwrap().len(), 1);

    // On record: the erasure by root, the operator's refusal.
    let trail = a.audit(60);
    assert!(trail.iter().any(|e| e["user"] == "root"
        && e["action"] == "request subject erase"
        && e["detail"] == "ok"));
    assert!(trail.iter().any(|e| e["user"] == "olga"
        && e["action"] == "request subject erase"
        && e["detail"].as_str().unwrap().starts_with("refused")));
}

/// Records written while the cloud is away, and erased before they reach it, leave with
/// the caller erased; nothing the uplink sends afterwards names the subject (issue 17:
/// "records that have not reached the cloud yet leave with the PII erased").
#[test]
fn records_not_yet_sent_leave_erased_and_nothing_sent_names_the_subject() {
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Cloud]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let mut broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    let mut sub = Subscriber::start(&lab.ns(Host::Cloud), &pki, "callgate/lab-a/#").unwrap();
    let a = start(&lab, &uplink_config(&pki.ca_pem().unwrap()));
    let installed = hil_tests::broker::enroll(&a, |csr| pki.sign_csr(csr)).unwrap();
    assert!(installed.ok(), "{} {}", installed.stdout, installed.stderr);
    let uplink = || a.cli(&["--json", "show", "uplink"]).json();
    wait_until("the uplink is connected", 20, || {
        uplink()["state"] == "connected"
    });

    // The cloud away: the calls' records wait in the outbox.
    broker.stop().unwrap();
    wait_until("the uplink sees the broker gone", 20, || {
        uplink()["state"] != "connected"
    });
    let ids = place_calls(&lab, &a);
    // The uplink's status counts the backlog as it goes (not at each write): wait for it.
    wait_until("the records wait in the outbox", 30, || {
        uplink()["backlog"].as_u64() >= Some(23)
    });

    let out = a.cli(&["--json", "request", "subject", "erase", SUBJECT]);
    assert!(out.ok(), "{} {}", out.stdout, out.stderr);

    // The cloud back: everything waiting goes.
    broker.restart().unwrap();
    sub.reconnect().unwrap();
    wait_until("the outbox drained", 60, || uplink()["backlog"] == 0);
    let records = || -> Vec<Value> {
        sub.messages()
            .into_iter()
            .filter(|(t, _)| t == "callgate/lab-a/records")
            .filter_map(|(_, p)| serde_json::from_slice::<Value>(&p).ok())
            .flat_map(|v| v["records"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    wait_until("the subject's records at the cloud", 30, || {
        let got: BTreeSet<u64> = records().iter().filter_map(|r| r["id"].as_u64()).collect();
        ids.is_subset(&got)
    });
    for r in records() {
        let id = r["id"].as_u64().unwrap();
        if ids.contains(&id) {
            let c = &r["cdr"];
            assert!(c["caller"].is_null() && c["caller_name"].is_null(), "{r}");
        }
    }
    // Not a byte of the subject in anything the cloud received: records, events (the
    // erasure's, with its receipt), status.
    let national = SUBJECT.trim_start_matches("+1");
    for (topic, payload) in sub.messages() {
        let text = String::from_utf8_lossy(&payload);
        for needle in [SUBJECT, national, SUBJECT_NAME, "Hopper"] {
            assert!(!text.contains(needle), "{needle} in {topic}: {text}");
        }
    }
    // The scan can fail: the other caller's records did go in the clear.
    assert!(sub
        .messages()
        .iter()
        .any(|(_, p)| String::from_utf8_lossy(p).contains(CALLER)));
}
