#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! Key custody and records at rest, against the real daemon, the real `callgate-seal` and a
//! per-appliance swtpm inside the lab: restarts, a stolen disk on another board, a changed
//! measured boot, a replacement board, decommissioning, crypto-shredding one subject, the
//! software protector's warnings, data-key rotation and re-sealing.
//!
//! Records are planted the way the SIP router will write them: with the daemon stopped (the
//! store is locked while it runs), the KEK is unsealed through `callgate-seal` inside the
//! appliance's namespace (so it reaches that namespace's swtpm) and the store is opened
//! directly.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use callgate_store::{Cdr, Disposition, Pii, Record, Store};
use callgate_vault::{Kek, Protector, RecoveryKey, TpmProtector, UnsealError};
use hil_tests::{bin, Appliance, Cli, Host, Lab};

const LAB: &str = include_str!("../../config/lab.toml");

// ---- planted PII ----

const CALLER1: &str = "+15550100123";
const NAME1: &str = "Zebulon Quarry <zebulon@example.com>";
const CALLER2: &str = "+15550100456";
const NAME2: &str = "Philippa Marchbanks";
const CALLER3: &str = "+15550100789";
const NAME3: &str = "Ignatius Fernsby <ignatius.fernsby@example.org>";

/// Every planted personal value that must never be found on disk or in a log in clear.
fn needles() -> Vec<String> {
    let mut v = Vec::new();
    for n in [CALLER1, CALLER2, CALLER3] {
        v.push(n.to_owned());
        v.push(n.trim_start_matches('+').to_owned()); // digits only
    }
    for n in [
        "Zebulon Quarry",
        "zebulon@example.com",
        "Philippa Marchbanks",
        "Ignatius Fernsby",
        "ignatius.fernsby@example.org",
    ] {
        v.push(n.to_owned());
    }
    v
}

fn cdr(i: u64, caller: &str, name: Option<&str>) -> Cdr {
    let t = 1_767_225_600_000 + i * 60_000;
    Cdr {
        call_id: format!("vault-test-{i}@203.0.113.10"),
        tracking_number: "+18005550199".into(),
        campaign: format!("campaign-{}", i % 3),
        caller: Pii::new(caller),
        caller_name: name.map(Pii::new),
        destination: "sip:sales@198.51.100.10".into(),
        invite_at: t,
        ring_at: Some(t + 300),
        answer_at: Some(t + 4_000),
        end_at: Some(t + 46_000),
        duration_ms: 42_000,
        disposition: Disposition::Answered,
        final_code: 200,
        appliance: "lab-a".into(),
        ended_by: None,
        resume: None,
    }
}

/// Two CDRs for each of the three callers.
fn six_cdrs() -> Vec<Cdr> {
    vec![
        cdr(1, CALLER1, Some(NAME1)),
        cdr(2, CALLER2, Some(NAME2)),
        cdr(3, CALLER3, Some(NAME3)),
        cdr(4, CALLER1, Some(NAME1)),
        cdr(5, CALLER2, None),
        cdr(6, CALLER3, Some(NAME3)),
    ]
}

// ---- helpers ----

fn lab_a() -> Lab {
    Lab::start(&[Host::A]).unwrap()
}

/// `(phase, reason)` from `callgate --json status`.
fn status(a: &Appliance<'_>) -> (String, String) {
    let s = a.cli(&["--json", "status"]);
    assert!(s.ok(), "status must answer in every phase: {s:?}");
    let j = s.json();
    (
        j["phase"].as_str().unwrap_or_default().to_owned(),
        j["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

fn assert_running(a: &Appliance<'_>, when: &str) {
    let (phase, reason) = status(a);
    assert_eq!(
        phase,
        "running",
        "{when}: expected running, got locked ({reason}); log:\n{}",
        a.log()
    );
}

/// Asserts the appliance is locked and returns the reason.
fn assert_locked(a: &Appliance<'_>, when: &str) -> String {
    let (phase, reason) = status(a);
    assert_eq!(
        phase,
        "locked",
        "{when}: expected locked; log:\n{}",
        a.log()
    );
    // Nothing decrypted: the records (here the config history) stay closed.
    let h = a.cli(&["show", "history"]);
    assert!(
        !h.ok() && h.stderr.contains("locked"),
        "{when}: a locked appliance must not serve records: {h:?}"
    );
    reason
}

/// `callgate recover` with `key` on standard input (never on the command line).
fn recover(a: &Appliance<'_>, key: &str) -> Cli {
    let mut child = Command::new(bin("callgate"))
        .arg("--socket")
        .arg(a.socket())
        .arg("recover")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{key}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap().into()
}

fn stop(a: &mut Appliance<'_>) {
    assert_eq!(a.stop(), Some(0), "clean stop; log:\n{}", a.log());
}

/// The KEK as the TPM releases it to `callgate-seal` inside the appliance's namespace.
fn unseal(a: &Appliance<'_>) -> Result<Kek, UnsealError> {
    let p = TpmProtector {
        seal_bin: bin("callgate-seal"),
        tcti: a.tpm().unwrap().tcti(),
        blob: a.state_dir().join("kek.blob"),
    };
    a.ns().run_in(move || p.unseal())
}

/// The appliance's store, opened as the daemon opens it (the daemon must be stopped).
fn open_store(a: &Appliance<'_>) -> Store {
    assert!(!a.is_running(), "the daemon holds the store while it runs");
    let kek = unseal(a).unwrap_or_else(|e| panic!("the TPM must release the KEK: {e}"));
    Store::open(a.state_dir().join("data"), kek).unwrap()
}

/// Stops the daemon, writes `cdrs`, relaunches; returns their ids.
fn plant(a: &mut Appliance<'_>, cdrs: &[Cdr]) -> Vec<u64> {
    stop(a);
    let ids = {
        let store = open_store(a);
        cdrs.iter().map(|c| store.append_cdr(c).unwrap()).collect()
    };
    a.launch().unwrap();
    ids
}

/// Stops the daemon, reads every CDR, relaunches.
fn read_cdrs(a: &mut Appliance<'_>) -> Vec<Record<Cdr>> {
    stop(a);
    let all = {
        let store = open_store(a);
        let all: Vec<_> = store.iter_cdrs().map(|r| r.unwrap()).collect();
        all
    };
    a.launch().unwrap();
    all
}

fn assert_planted_intact(all: &[Record<Cdr>], ids: &[u64], planted: &[Cdr], when: &str) {
    assert_eq!(all.len(), planted.len(), "{when}: every CDR is there");
    for ((id, want), got) in ids.iter().zip(planted).zip(all) {
        assert_eq!(got.id, *id, "{when}");
        assert!(got.value == *want, "{when}: CDR {id} reads back as written");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            files_under(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// `(file, needle)` for every planted value found in clear (case-insensitive) in `files`.
fn scan(files: &[PathBuf]) -> Vec<(PathBuf, String)> {
    let needles = needles();
    let mut found = Vec::new();
    for f in files {
        let hay = std::fs::read(f).unwrap().to_ascii_lowercase();
        for n in &needles {
            let n_low = n.to_ascii_lowercase();
            if hay.windows(n_low.len()).any(|w| w == n_low.as_bytes()) {
                found.push((f.clone(), n.clone()));
            }
        }
    }
    found
}

fn seal_helper_unseal(a: &Appliance<'_>, blob: &Path) -> std::process::Output {
    a.ns()
        .command(&bin("callgate-seal").to_string_lossy())
        .arg("--tcti")
        .arg(a.tpm().unwrap().tcti())
        .arg("unseal")
        .arg("--blob")
        .arg(blob)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

// ---- tests ----

#[test]
fn round_trip_and_restart() {
    let lab = lab_a();
    let mut a = Appliance::start(&lab, Host::A, LAB).unwrap();
    assert_running(&a, "after provisioning");
    assert!(
        a.recovery_key.is_some(),
        "provisioning prints a recovery key"
    );
    for f in ["kek.blob", "kek.recovery"] {
        let p = a.state_dir().join(f);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is private", p.display());
    }

    // a config change, committed before the restart
    let renamed = LAB.replace("name = \"lab-a\"", "name = \"lab-a-renamed\"");
    let c = a.commit(&renamed, &[]);
    assert!(c.ok(), "{c:?}");
    let before = a.cli(&["--json", "show", "history"]).json();
    assert_eq!(before.as_array().map(Vec::len), Some(2), "{before}");

    let planted = six_cdrs();
    let ids = plant(&mut a, &planted);

    // plant() relaunched the daemon: it unsealed by itself
    assert_running(&a, "after a restart");
    let s = a.cli(&["--json", "status"]).json();
    assert_eq!(s["appliance"], "lab-a-renamed", "{s}");
    assert_eq!(s["revision"], 2, "{s}");
    let after = a.cli(&["--json", "show", "history"]).json();
    assert_eq!(after, before, "the history survives the restart");

    let all = read_cdrs(&mut a);
    assert_planted_intact(&all, &ids, &planted, "after a restart");
    assert_running(&a, "after a second restart");
}

#[test]
fn theft_to_another_board_is_refused_and_disk_holds_no_pii() {
    let lab = Lab::start(&[Host::A, Host::B]).unwrap();
    let mut a = Appliance::start(&lab, Host::A, LAB).unwrap();
    let c = a.commit(&LAB.replace("name = \"lab-a\"", "name = \"lab-a-2\""), &[]);
    assert!(c.ok(), "{c:?}");
    plant(&mut a, &six_cdrs());
    assert_running(&a, "A after planting");
    // The disk is taken from a powered-off A.
    stop(&mut a);

    // Another board: its own swtpm, measured identically; only the TPM differs.
    let mut b = Appliance::start_locked(&lab, Host::B, LAB).unwrap();
    stop(&mut b);
    let _ = std::fs::remove_dir_all(b.state_dir());
    copy_dir(&a.state_dir(), &b.state_dir());
    b.launch().unwrap();
    let reason = assert_locked(&b, "the stolen disk on another board");
    assert!(
        reason.contains("sealed by another TPM"),
        "the reason names the other TPM: {reason}"
    );
    let log_b = b.log();
    assert!(
        !log_b.contains("unlocked") && !log_b.contains("running revision"),
        "B must not have opened anything:\n{log_b}"
    );
    // B's TPM itself refuses the blob: exit 11 (another TPM)
    let out = seal_helper_unseal(&b, &b.state_dir().join("kek.blob"));
    assert_eq!(
        out.status.code(),
        Some(11),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "no key bytes printed");
    stop(&mut b);

    // Every byte of A's state and of both daemons' logs: no planted PII in clear.
    let mut files = Vec::new();
    files_under(&a.state_dir(), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(a.state_dir().join("data"))),
        "the data directory was scanned: {files:?}"
    );
    files.push(a.log_path());
    files.push(b.log_path());
    let found = scan(&files);
    assert!(
        found.is_empty(),
        "PII in clear on disk or in logs: {found:?}"
    );

    // The needles are real: the same scan finds them where they are in clear.
    let control = a.write_file("control.txt", &format!("{NAME1} {CALLER2}"));
    assert_eq!(scan(&[control]).len(), 4, "the scan itself works");
}

#[test]
fn measured_boot_change_is_refused_and_recovery_key_restores() {
    let lab = lab_a();
    let mut a = Appliance::start(&lab, Host::A, LAB).unwrap();
    let key = a.recovery_key.clone().unwrap();
    let planted = six_cdrs();
    let ids = plant(&mut a, &planted);

    // The measured boot changes (new firmware, Secure Boot state...)
    stop(&mut a);
    a.tpm().unwrap().extend(7, &"a7".repeat(32)).unwrap();
    a.launch().unwrap();
    let reason = assert_locked(&a, "after PCR 7 changed");
    assert!(
        reason.contains("PCR 7") && reason.contains("measured boot"),
        "the reason names the PCR mismatch: {reason}"
    );
    // locked means fail closed: the previous run's full policy gave way to the baseline
    let rules = a.ruleset();
    assert!(
        rules.contains("service:ssh") && !rules.contains("carrier-sip-udp"),
        "baseline only while locked: {rules}"
    );

    let r = recover(&a, &key);
    assert!(r.ok(), "{r:?}\n{}", a.log());
    assert_running(&a, "after recover");
    let all = read_cdrs(&mut a);
    assert_planted_intact(&all, &ids, &planted, "after recovering from a PCR change");
    // read_cdrs relaunched: the key was sealed again to the new PCR 7
    assert_running(&a, "restart after recover");

    // A replacement board: a new TPM, measured boot as usual.
    stop(&mut a);
    let fresh = a.dir().join("tpm-replacement");
    a.swap_tpm(&fresh).unwrap();
    a.tpm().unwrap().measure_boot().unwrap();
    a.launch().unwrap();
    let reason = assert_locked(&a, "on a replacement board");
    assert!(
        reason.contains("sealed by another TPM"),
        "the reason names the other TPM: {reason}"
    );

    // A wrong (well-formed) key and a mistyped one are refused, clearly; still locked.
    let wrong = RecoveryKey::generate().unwrap();
    let r = recover(&a, &wrong.encode());
    assert!(
        !r.ok() && r.stderr.contains("recovery key does not open"),
        "a wrong recovery key is refused clearly: {r:?}"
    );
    assert_locked(&a, "after a wrong recovery key");
    let r = recover(&a, "not-a-recovery-key");
    assert!(
        !r.ok() && r.stderr.contains("not a valid recovery key"),
        "a malformed recovery key is refused clearly: {r:?}"
    );
    assert_locked(&a, "after a malformed recovery key");

    let r = recover(&a, &key);
    assert!(r.ok(), "{r:?}\n{}", a.log());
    assert_running(&a, "replacement board after recover");
    let again = recover(&a, &key);
    assert!(!again.ok(), "nothing to recover while running: {again:?}");
    let all = read_cdrs(&mut a);
    assert_planted_intact(&all, &ids, &planted, "on the replacement board");
    assert_running(&a, "replacement board restarted");
}

#[test]
fn decommission_leaves_nothing_decryptable() {
    let lab = lab_a();
    let mut a = Appliance::start(&lab, Host::A, LAB).unwrap();
    plant(&mut a, &six_cdrs());
    // An image of the disk as it was before decommissioning.
    stop(&mut a);
    let image = a.dir().join("disk-image");
    copy_dir(&a.state_dir(), &image);
    a.launch().unwrap();
    assert_running(&a, "before decommission");

    let r = a.cli(&["decommission"]);
    assert!(
        !r.ok() && r.stderr.contains("--yes-destroy-all-data"),
        "decommission without the flag is refused: {r:?}"
    );
    assert_running(&a, "after a refused decommission");

    let r = a.cli(&["decommission", "--yes-destroy-all-data"]);
    assert!(r.ok(), "{r:?}\n{}", a.log());
    let reason = assert_locked(&a, "after decommission");
    assert!(reason.contains("not provisioned"), "{reason}");
    for gone in ["kek.blob", "kek.recovery", "data"] {
        let p = a.state_dir().join(gone);
        assert!(!p.exists(), "{} must be gone", p.display());
    }

    // The old blob and records put back: the TPM was cleared, nothing opens.
    stop(&mut a);
    std::fs::copy(image.join("kek.blob"), a.state_dir().join("kek.blob")).unwrap();
    copy_dir(&image.join("data"), &a.state_dir().join("data"));
    a.launch().unwrap();
    let reason = assert_locked(&a, "the old blob after decommission");
    assert!(
        reason.contains("another TPM") && reason.contains("cleared"),
        "the reason says another TPM or cleared: {reason}"
    );
    let out = seal_helper_unseal(&a, &image.join("kek.blob"));
    assert_eq!(
        out.status.code(),
        Some(11),
        "callgate-seal on the old blob: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "no key bytes printed");
}

#[test]
fn erase_one_subject() {
    let lab = lab_a();
    let mut a = Appliance::start(&lab, Host::A, LAB).unwrap();
    stop(&mut a);
    let planted = six_cdrs();
    let ids: Vec<u64> = {
        let store = open_store(&a);
        let ids = planted
            .iter()
            .map(|c| store.append_cdr(c).unwrap())
            .collect();
        assert_eq!(store.erase_subject(CALLER2).unwrap(), 2);
        ids
    };

    // Reopened with the KEK (from the TPM): caller 2's key is gone.
    let store = open_store(&a);
    let all: Vec<_> = store.iter_cdrs().map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), 6, "erasure deletes no CDR");
    for ((id, want), got) in ids.iter().zip(&planted).zip(&all) {
        assert_eq!(got.id, *id);
        if want.caller.reveal() == Some(CALLER2) {
            assert!(got.value.caller.is_erased(), "CDR {id}: caller erased");
            assert_eq!(
                got.value.caller_name.as_ref().map(Pii::is_erased),
                want.caller_name.as_ref().map(|_| true),
                "CDR {id}: a name, if any, is erased too"
            );
            // the rest of the CDR stays
            let mut rest = got.value.clone();
            rest.caller = want.caller.clone();
            rest.caller_name = want.caller_name.clone();
            assert!(rest == *want, "CDR {id}: everything but the PII stays");
        } else {
            assert!(got.value == *want, "CDR {id}: other subjects untouched");
        }
    }
    // Even holding the KEK, nothing of caller 2 opens.
    let of2 = store.cdrs_of_subject(CALLER2).unwrap();
    assert!(
        of2.iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.value.caller.is_erased())),
        "no record of the erased subject opens"
    );
    for c in [CALLER1, CALLER3] {
        let of = store.cdrs_of_subject(c).unwrap();
        assert_eq!(of.len(), 2, "{c}");
        assert!(of
            .iter()
            .all(|r| r.as_ref().unwrap().value.caller.reveal() == Some(c)));
    }
    // Caller 2 calls again: a new key; the old records stay erased.
    let new_id = store.append_cdr(&cdr(7, CALLER2, Some(NAME2))).unwrap();
    drop(store);
    let store = open_store(&a);
    let of2 = store.cdrs_of_subject(CALLER2).unwrap();
    assert_eq!(of2.len(), 1, "only the new call is indexed under caller 2");
    assert_eq!(of2[0].as_ref().unwrap().id, new_id);
    assert_eq!(
        store.get_cdr(new_id).unwrap().value.caller.reveal(),
        Some(CALLER2)
    );
    for id in [ids[1], ids[4]] {
        assert!(store.get_cdr(id).unwrap().value.caller.is_erased());
    }
    drop(store);

    a.launch().unwrap();
    assert_running(&a, "after erasure");
}

#[test]
fn software_protector_warns_every_start() {
    let lab = lab_a();
    let config = LAB.replace("[vault]\n", "[vault]\ndanger_software_keys = true\n");
    assert_ne!(config, LAB, "lab.toml has a [vault] table");
    let mut a = Appliance::start(&lab, Host::A, &config).unwrap();
    assert_running(&a, "software keys, provisioned");
    for _ in 0..2 {
        stop(&mut a);
        a.launch().unwrap();
        assert_running(&a, "software keys, restarted");
    }
    let log = a.log();
    let starts = log
        .matches(
            "danger_software_keys = true: records are encrypted under a key kept in a plain file",
        )
        .count();
    assert!(starts >= 3, "warned at {starts} of 3 starts:\n{log}");
    let unseals = log
        .matches("danger_software_keys: the key-encryption key is stored unprotected")
        .count();
    assert!(unseals >= 2, "warned at {unseals} of 2 unseals:\n{log}");
    let s = a.cli(&["status"]);
    assert!(s.stdout.contains("danger_software_keys"), "{s:?}");

    let soft = a.state_dir().join("kek.soft");
    let mode = std::fs::metadata(&soft)
        .unwrap_or_else(|e| panic!("{}: {e}", soft.display()))
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{}", soft.display());
    assert!(!a.state_dir().join("kek.blob").exists());
}

#[test]
fn rotation() {
    let lab = lab_a();
    let mut a = Appliance::start(&lab, Host::A, LAB).unwrap();
    let old = six_cdrs();
    let old_ids = plant(&mut a, &old);
    let k1 = a.cli(&["--json", "status"]).json()["data_key"].clone();
    assert!(k1.is_u64(), "{k1}");

    let r = a.cli(&["--json", "rotate-data-key"]);
    assert!(r.ok(), "{r:?}");
    let k2 = a.cli(&["--json", "status"]).json()["data_key"].clone();
    assert!(k2.is_u64() && k2 != k1, "{k1} -> {k2}");
    assert_eq!(r.json()["data_key"], k2);

    let new = vec![cdr(10, CALLER1, Some(NAME1)), cdr(11, CALLER3, None)];
    let new_ids = plant(&mut a, &new);
    let all = read_cdrs(&mut a);
    let (k1, k2) = (k1.as_u64().unwrap(), k2.as_u64().unwrap());
    let ids: Vec<u64> = old_ids.iter().chain(&new_ids).copied().collect();
    let planted: Vec<Cdr> = old.iter().chain(&new).cloned().collect();
    assert_planted_intact(&all, &ids, &planted, "after rotation");
    for rec in &all {
        let want = if old_ids.contains(&rec.id) { k1 } else { k2 };
        assert_eq!(u64::from(rec.key_id), want, "CDR {}", rec.id);
    }
    assert_eq!(a.cli(&["--json", "status"]).json()["data_key"], k2);

    // An intended measured-boot change, re-sealed while running: no recovery needed.
    a.tpm().unwrap().extend(7, &"c3".repeat(32)).unwrap();
    let r = a.cli(&["reseal"]);
    assert!(r.ok(), "{r:?}");
    stop(&mut a);
    a.launch().unwrap();
    assert_running(&a, "after reseal and restart");
}
