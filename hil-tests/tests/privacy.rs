#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! A caller's rights against the real daemon: calls placed by sipp on the carrier through
//! appliance A to the PBX (real nftables, the encrypted store), then the subject's requests
//! made with `callgate` over the control socket, as root (an admin) and as an operator
//! account the daemon made from `[[user]]`.

use std::collections::BTreeSet;
use std::time::Duration;

use hil_tests::calls::{carrier_calls, lab_toml, new_lab, pbx, start, wait_cdrs, CALLER};
use hil_tests::{Appliance, Cli};
use serde_json::Value;

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
fn place_calls(lab: &hil_tests::Lab, a: &Appliance<'_>) -> BTreeSet<u64> {
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

/// The CSV's data rows, split into cells (the lab's values hold no comma or quote).
fn csv_rows(out: &str) -> Vec<Vec<String>> {
    let mut lines = out.split("\r\n");
    assert_eq!(lines.next(), Some(FIELDS), "{out}");
    let rows: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    rows.iter()
        .map(|l| {
            assert!(!l.contains('"'), "{l}");
            l.split(',').map(str::to_owned).collect()
        })
        .collect()
}

/// The last `n` audit entries.
fn audit(a: &Appliance<'_>, n: usize) -> Vec<Value> {
    a.cli(&["--json", "show", "audit", "--last", &n.to_string()])
        .json()["audit"]
        .as_array()
        .map(|rows| rows.iter().map(|r| r["entry"].clone()).collect())
        .unwrap_or_default()
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
    assert_eq!(stored(&a).len(), 23, "nothing changed");

    // An operator is refused by the daemon, whatever the client sends.
    wait_operator(&a);
    for args in [
        vec!["request", "subject", "export", SUBJECT, "--format", "csv"],
        vec!["show", "subject", SUBJECT],
    ] {
        let out = a.cli_as("olga", &args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert!(!out.stdout.contains(SUBJECT_NAME), "{}", out.stdout);
        assert!(out.stderr.contains("admin"), "{args:?}: {}", out.stderr);
    }
    let s = a.cli(&["--json", "show", "subject", SUBJECT]).json();
    assert_eq!(s["records"], 20);

    // Every request is on record: who, and what came of it.
    let trail = audit(&a, 60);
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
    for action in ["request subject export", "show subject"] {
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
