#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! A caller's erasure on a pair: two real daemons (A active, B standby, each with its own
//! swtpm and store), calls from sipp on the carrier through the WAN VIP to the PBX, the
//! records replicated to B over the sync channel; the erasure asked on A's console reaches
//! B over the same channel, and one receipt signed by A's uplink identity names both.
//! Afterwards every file of both state directories is read raw.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use hil_tests::addr::{self, WAN_VIP_V4};
use hil_tests::broker::Pki;
use hil_tests::calls::{wait_cdrs, CALLER, UDP_NUMBER};
use hil_tests::pair::{new_pair_lab, show_pair, start_pair, wait_until};
use hil_tests::sipp::{Sipp, Transport};
use hil_tests::{Appliance, Host, Lab};
use serde_json::Value;

const SUBJECT: &str = "+14155550177";
/// The subject's number as digits: every form in which it could be written.
const DIGITS: &str = "4155550177";
const SUBJECT_NAME: &str = "Grace Hopper";

fn calls_from(lab: &Lab, caller: &str, name: &str, n: u64) {
    let r = Sipp::uac(&lab.ns(Host::Carrier), "uac.xml")
        .local(addr::CARRIER_V4, 5060)
        .remote(WAN_VIP_V4, 5060)
        .transport(Transport::Udp)
        .service(UDP_NUMBER)
        .caller(caller, name)
        .calls(n)
        .rate(10.0)
        .run()
        .expect("sipp runs");
    assert_eq!((r.successful, r.failed), (n, 0), "{}", r.summary());
}

fn subject(x: &Appliance<'_>, number: &str) -> Value {
    let out = x.cli(&["--json", "show", "subject", number]);
    assert!(out.ok(), "{} {}", out.stdout, out.stderr);
    out.json()
}

/// Every file under `dir`, recursively.
fn every_file(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(every_file(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}

/// The files under `dir` whose bytes hold `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    every_file(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .map(|p| p.display().to_string())
        .collect()
}

/// The subject key (wrapped under the KEK) that `x`'s store holds for the subject with
/// token `token` (hex), read from a copy of its data directory (the daemon holds sled's
/// lock): the `subjects` tree names the slot of `subject-keys` that holds it.
fn wrapped_key(x: &Appliance<'_>, token: &str) -> Vec<u8> {
    let copy = tempfile::tempdir().unwrap();
    let data = x.state_dir().join("data");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&data)
        .arg(copy.path().join("data"))
        .status()
        .unwrap();
    assert!(st.success());
    let dir = copy.path().join("data");
    let token: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).unwrap())
        .collect();
    let entry = {
        let db = sled::Config::new().path(&dir).open().unwrap();
        db.open_tree("subjects")
            .unwrap()
            .get(&token)
            .unwrap()
            .expect("the subject's key entry")
            .to_vec()
    };
    assert_eq!(entry.len(), 12, "generation and slot");
    let slot = u32::from_be_bytes(entry[8..12].try_into().unwrap()) as usize;
    let file = std::fs::read(dir.join("subject-keys")).unwrap();
    let at = &file[slot * 128..(slot + 1) * 128];
    let len = usize::from(at[0]);
    assert!(len > 40, "a wrapped key");
    at[1..=len].to_vec()
}

fn ids(v: &Value) -> BTreeSet<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect()
}

#[test]
fn an_erasure_on_the_active_reaches_the_standby_and_leaves_no_byte_of_the_subject_on_either() {
    let lab = new_pair_lab();
    let (a, mut b) = start_pair(&lab);
    let pbx = Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
        .local(addr::PBX_V4, 5060)
        .transport(Transport::Udp)
        .spawn()
        .expect("callee starts");
    pbx.wait_ready(Duration::from_secs(10)).unwrap();
    calls_from(&lab, SUBJECT, SUBJECT_NAME, 5);
    calls_from(&lab, CALLER, "Alan Turing", 2);
    assert_eq!(wait_cdrs(&a, 7).len(), 7);
    assert_eq!(wait_cdrs(&b, 7).len(), 7, "replicated to B");

    // Both hold the subject, each under a key of its own.
    let (sa, sb) = (subject(&a, SUBJECT), subject(&b, SUBJECT));
    assert_eq!(
        (sa["records"].as_u64(), sb["records"].as_u64()),
        (Some(5), Some(5))
    );
    let wa = wrapped_key(&a, sa["token"].as_str().unwrap());
    let wb = wrapped_key(&b, sb["token"].as_str().unwrap());
    assert_ne!(wa, wb);
    // The scan finds them while they are held.
    assert_eq!(holding(&a.state_dir(), &wa).len(), 1);
    assert_eq!(holding(&b.state_dir(), &wb).len(), 1);

    let out = a.cli(&["--json", "request", "subject", "erase", SUBJECT]);
    assert!(out.ok(), "{} {}\n{}", out.stdout, out.stderr, b.log());
    let r = out.json();
    let mine = ids(&r["record_ids"]);
    assert_eq!(mine.len(), 5);
    assert_eq!(r["peer"]["status"], "erased", "{r}");
    assert_eq!(r["peer"]["appliance"], "lab-b");
    assert_eq!(
        ids(&r["peer"]["record_ids"]),
        mine,
        "the same replicated records"
    );

    // The receipt: one statement naming both, signed by A's uplink identity (checked
    // against a certificate a CA issues for that key).
    let receipt = &r["receipt"];
    let text = receipt["receipt"].as_str().unwrap();
    let statement: Value = serde_json::from_str(text).unwrap();
    assert_eq!(statement["type"], "callgate-erasure-receipt/2");
    assert_eq!(statement["appliance"], "lab-a");
    assert_eq!(
        statement["erased_on"],
        serde_json::json!(["lab-a", "lab-b"])
    );
    assert_eq!(statement["peer"], r["peer"]);
    assert_eq!(ids(&statement["record_ids"]), mine);
    assert!(
        !text.contains(DIGITS) && !text.contains(SUBJECT_NAME),
        "{text}"
    );
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path()).unwrap();
    let csr = a.cli(&["uplink", "csr"]).stdout;
    let begin = csr.find("-----BEGIN CERTIFICATE REQUEST-----").unwrap();
    let cert_pem = pki.sign_csr(&csr[begin..]).unwrap();
    let cert = callgate_pki::certificates(&cert_pem).unwrap().remove(0);
    let sig = base64::engine::general_purpose::STANDARD
        .decode(receipt["signature"].as_str().unwrap())
        .unwrap();
    callgate_pki::verify_signature(&cert, text.as_bytes(), &sig).unwrap();
    let forged = text.replacen("\"lab-b\"", "\"lab-c\"", 1);
    assert!(callgate_pki::verify_signature(&cert, forged.as_bytes(), &sig).is_err());

    // On both: erased, nothing to export, the records kept without the caller.
    for (x, name) in [(&a, "lab-a"), (&b, "lab-b")] {
        let s = subject(x, SUBJECT);
        assert!(s["erased_at_ms"].as_u64().is_some(), "{name}: {s}");
        assert_eq!(s["records"], 0, "{name}: {s}");
        assert!(s["key_generation"].is_null(), "{name}: {s}");
        assert_eq!(s["erasures"][0]["appliance"], name, "{s}");
        let text = x.cli(&["show", "subject", SUBJECT]).stdout;
        assert!(text.contains("erased at "), "{name}: {text}");
        let export = x.cli(&["request", "subject", "export", SUBJECT, "--format", "json"]);
        assert!(export.ok(), "{}", export.stderr);
        let j: Value = serde_json::from_str(&export.stdout).unwrap();
        assert_eq!(j["records"], Value::Array(vec![]), "{name}");
        assert!(!export.stdout.contains(SUBJECT_NAME), "{name}");
        let csv = x.cli(&["request", "subject", "export", SUBJECT, "--format", "csv"]);
        assert!(!csv.stdout.contains(DIGITS) && !csv.stdout.contains(SUBJECT_NAME));
        let rows = x.cli(&["--json", "show", "cdrs", "--last", "100"]).json();
        let rows = rows["cdrs"].as_array().unwrap();
        assert_eq!(rows.len(), 7, "{name}");
        for row in rows {
            if mine.contains(&row["id"].as_u64().unwrap()) {
                assert!(row["cdr"]["caller"].is_null(), "{name}: {row}");
                assert!(row["cdr"]["caller_name"].is_null(), "{name}: {row}");
            } else {
                assert_eq!(row["cdr"]["caller"], CALLER, "{name}: {row}");
            }
        }
    }
    let on_b = subject(&b, SUBJECT);
    assert_eq!(on_b["erasures"][0]["by"], "root on lab-a", "{on_b}");

    // Raw bytes: no file of either state directory (sled's segments, the call-record
    // log, open-cdrs, subject-keys, ...) holds the number or either wrapped key.
    for x in [&a, &b] {
        let dir = x.state_dir();
        assert!(every_file(&dir).len() > 5, "{}", dir.display());
        assert_eq!(holding(&dir, DIGITS.as_bytes()), Vec::<String>::new());
        assert_eq!(holding(&dir, &wa), Vec::<String>::new());
        assert_eq!(holding(&dir, &wb), Vec::<String>::new());
    }

    // The peer unreachable: the request is refused before anything is erased.
    b.kill9();
    assert!(
        wait_until(Duration::from_secs(5), || show_pair(&a)["replication"]
            ["connected"]
            == false),
        "{}",
        show_pair(&a)
    );
    let refused = a.cli(&["request", "subject", "erase", CALLER]);
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("not connected") && refused.stderr.contains("nothing was erased"),
        "{}",
        refused.stderr
    );
    let s = subject(&a, CALLER);
    assert_eq!(s["records"], 2, "{s}");
    assert!(s["erasures"].as_array().unwrap().is_empty(), "{s}");
}
