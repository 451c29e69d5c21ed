//! `scripts/bench privacy`: the redaction library (`callgate-redact`) on the committed
//! labelled corpus, with Microsoft Presidio's rule recognizers as the anchor, in one run.
//! No lab and no root: it is a library on text.
//!
//! - `redact_mb_per_s`: `Redactor::redact` over the corpus's sentences joined into ≥ 10 MB
//!   (PII-dense, about one span per 60 bytes), one thread, median of 5 runs;
//!   `redact_sparse_mb_per_s` the same over ≥ 10 MB of ordinary sentences with one corpus
//!   sentence in 41 (`callgate_redact::corpus::sparse_text`), as transcripts mostly are.
//! - `cc_recall … pii_char_recall`: `callgate_redact::corpus::score`, the scoring the
//!   corpus test uses, on the committed corpus.
//! - `presidio_pii_char_recall` (and Presidio's card, phone, SSN and email figures): the
//!   same corpus through `firmware/redact/corpus/presidio.py` (Presidio's AnalyzerEngine on
//!   a blank spaCy pipeline, no model download: pattern and checksum recognizers only),
//!   scored by the same code. It needs Presidio in a virtualenv: `$PRESIDIO_VENV` (default
//!   `/tmp/presidio-venv`), made once with `python3 -m venv /tmp/presidio-venv &&
//!   /tmp/presidio-venv/bin/pip install presidio-analyzer`; without it the figure is `na`
//!   and stderr says why. The bench never installs anything, and the script runs offline.
//! - `erase_ms`: the erasure of a subject with 1,000 records in an encrypted store (in a
//!   temporary directory) that also holds 1,000 records of other callers:
//!   `Store::erase_subject_recorded` (the subject's index walked, the erasure receipt signed
//!   with an ECDSA P-256 key as the daemon signs it, key and index entries deleted and the
//!   erasure stored in one durable commit), median of 5 subjects. The control socket and
//!   the unsealing of the uplink key are not in it.
//! - `export_1k_ms`: the JSON export of a subject with 1,000 records
//!   (`Store::cdrs_of_subject`, each record decrypted, then `subject::export_json`
//!   serialized), median of 5 runs; `export_1k_csv_ms` the same as CSV.
//!
//! The last line is `BENCH privacy redact_mb_per_s=… redact_sparse_mb_per_s=… cc_recall=…
//! cc_precision=… phone_recall=… phone_precision=… ssn_recall=… ssn_precision=…
//! email_recall=… email_precision=… pii_char_recall=… presidio_… erase_ms=…
//! export_1k_ms=… export_1k_csv_ms=…`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use callgate_redact::corpus::{self, Labelled, Report};
use callgate_redact::{Kind, Redactor, Span};
use callgate_store::{subject, Cdr, Disposition, Erasure, Pii, Store};
use hil_tests::bench::{fail, median, ms};

const RUNS: usize = 5;
const BYTES: usize = 10_000_000;

/// Median MB/s (10^6 input bytes per second of wall time) of `RUNS` redactions of `text`.
fn throughput(redactor: &Redactor, text: &str, what: &str) -> f64 {
    let mut rates = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let t = Instant::now();
        let r = redactor.redact(text);
        let s = t.elapsed().as_secs_f64();
        rates.push(text.len() as f64 / 1e6 / s);
        eprintln!(
            "bench privacy: {what} run {}/{RUNS}: {:.1} MB in {:.3} s, {} spans",
            i + 1,
            text.len() as f64 / 1e6,
            s,
            r.spans.len()
        );
    }
    median(rates)
}

/// Presidio's spans for each sentence, or why there are none.
fn presidio(corpus: &[Labelled]) -> Result<Vec<Vec<Span>>, String> {
    let venv = std::env::var_os("PRESIDIO_VENV")
        .map_or_else(|| PathBuf::from("/tmp/presidio-venv"), PathBuf::from);
    let python = venv.join("bin/python");
    if !python.exists() {
        return Err(format!(
            "no Presidio virtualenv at {} (make it once: python3 -m venv {0} && \
             {0}/bin/pip install presidio-analyzer; or set PRESIDIO_VENV)",
            venv.display()
        ));
    }
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/redact/corpus/presidio.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    // The corpus on stdin from a thread, so a full stdout pipe cannot deadlock us.
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let feeder = std::thread::spawn(move || stdin.write_all(corpus::COMMITTED.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("presidio.py: {e}"))?;
    let fed = feeder
        .join()
        .map_err(|_| "the feeding thread panicked".to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(format!("presidio.py {}: {}", out.status, last.join(" | ")));
    }
    fed.map_err(|e| format!("writing to presidio.py: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != corpus.len() {
        return Err(format!(
            "presidio.py answered {} lines for {} sentences",
            lines.len(),
            corpus.len()
        ));
    }
    let mut all = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        let v: Vec<(String, usize, usize)> =
            serde_json::from_str(line).map_err(|e| format!("presidio.py line {}: {e}", n + 1))?;
        let mut spans = Vec::with_capacity(v.len());
        for (kind, start, end) in v {
            let kind = Kind::from_name(&kind)
                .ok_or_else(|| format!("presidio.py line {}: kind {kind}", n + 1))?;
            spans.push(Span { kind, start, end });
        }
        all.push(spans);
    }
    Ok(all)
}

/// Presidio's figures as `presidio_`-prefixed `key=value` pairs.
fn presidio_key_values(rep: &Report) -> String {
    let (cc, phone, ssn, email) = (
        rep.kind(Kind::Card),
        rep.kind(Kind::Phone),
        rep.kind(Kind::Ssn),
        rep.kind(Kind::Email),
    );
    format!(
        "presidio_pii_char_recall={:.3} presidio_cc_recall={:.3} presidio_cc_precision={:.3} \
         presidio_phone_recall={:.3} presidio_phone_precision={:.3} presidio_ssn_recall={:.3} \
         presidio_email_recall={:.3}",
        rep.pii_char_recall(),
        cc.recall(),
        cc.precision(),
        phone.recall(),
        phone.precision(),
        ssn.recall(),
        email.recall(),
    )
}

/// Records per subject in the erasure and export figures.
const SUBJECT_RECORDS: u64 = 1_000;

fn subject_number(i: u64) -> String {
    format!("+1202555{:04}", 1000 + i)
}

fn call(caller: &str, n: u64) -> Cdr {
    Cdr {
        call_id: format!("bench-{n}@203.0.113.10"),
        tracking_number: "+18005550100".into(),
        campaign: "bench".into(),
        caller: Pii::new(caller),
        caller_name: Some(Pii::new("Bench Caller")),
        destination: "sip:agent@198.51.100.20:5060;transport=udp".into(),
        invite_at: 1_767_225_600_000 + n,
        ring_at: Some(1_767_225_600_100 + n),
        answer_at: Some(1_767_225_600_200 + n),
        end_at: Some(1_767_225_660_200 + n),
        duration_ms: 60_000,
        disposition: Disposition::Answered,
        final_code: 200,
        appliance: "bench".into(),
        ended_by: Some("caller".into()),
        resume: None,
    }
}

/// `erase_ms`, `export_1k_ms`, `export_1k_csv_ms`: subjects 0 to RUNS - 1 hold
/// `SUBJECT_RECORDS` records each, interleaved with as many of other callers.
fn subject_requests() -> (f64, f64, f64) {
    let tmp = tempfile::Builder::new()
        .prefix("bench-privacy-")
        .tempdir()
        .unwrap_or_else(|e| fail("tempdir", e));
    let kek = callgate_vault::Kek::generate().unwrap_or_else(|e| fail("Kek::generate", e));
    let store = Store::open(tmp.path().join("data"), kek).unwrap_or_else(|e| fail("open", e));
    let mut n = 0u64;
    for _ in 0..SUBJECT_RECORDS / 100 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            for i in 0..RUNS as u64 {
                batch.push((store.reserve_cdr_id(), call(&subject_number(i), n)));
                n += 1;
            }
            let other = format!("+1415555{:04}", n % 10_000);
            batch.push((store.reserve_cdr_id(), call(&other, n)));
            n += 1;
        }
        let refs: Vec<(u64, &Cdr)> = batch.iter().map(|(id, c)| (*id, c)).collect();
        let failed = store
            .put_cdrs(&refs)
            .unwrap_or_else(|e| fail("put_cdrs", e));
        if let Some((id, e)) = failed.first() {
            fail(&format!("record {id}"), e);
        }
    }
    eprintln!("bench privacy: {n} records written for the subject requests");

    let number = subject_number(0);
    // Every record of the subject, decrypted.
    let read = || -> Vec<_> {
        store
            .cdrs_of_subject(&number)
            .unwrap_or_else(|e| fail("cdrs_of_subject", e))
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| fail("a record", e)))
            .collect()
    };
    let mut json_ms = Vec::with_capacity(RUNS);
    let mut csv_ms = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let t = Instant::now();
        let recs = read();
        let text = serde_json::to_string(&subject::export_json(&number, &recs, &[]))
            .unwrap_or_else(|e| fail("json", e));
        json_ms.push(ms(t.elapsed()));
        let t = Instant::now();
        let recs = read();
        let csv = subject::export_csv(&recs);
        csv_ms.push(ms(t.elapsed()));
        if recs.len() as u64 != SUBJECT_RECORDS {
            fail(
                "export",
                format!("{} records, not {SUBJECT_RECORDS}", recs.len()),
            );
        }
        eprintln!(
            "bench privacy: export run {}/{RUNS}: JSON {} bytes in {:.1} ms, CSV {} bytes in {:.1} ms",
            i + 1,
            text.len(),
            json_ms[i],
            csv.len(),
            csv_ms[i]
        );
    }

    let key = callgate_pki::Key::generate().unwrap_or_else(|e| fail("key", e));
    let mut erase_ms = Vec::with_capacity(RUNS);
    for i in 0..RUNS as u64 {
        let number = subject_number(i);
        let t = Instant::now();
        let erased = store
            .erase_subject_recorded(&number, |facts| {
                let statement = serde_json::json!({
                    "type": "callgate-erasure-receipt/1",
                    "subject": facts.token,
                    "key_generation": facts.key_generation,
                    "record_ids": facts.record_ids,
                })
                .to_string();
                let sig = key.sign(statement.as_bytes()).map_err(|e| e.to_string())?;
                Ok(Erasure {
                    time_ms: i,
                    by: "bench".into(),
                    appliance: "bench".into(),
                    key_generation: facts.key_generation,
                    record_ids: facts.record_ids.clone(),
                    receipt: format!("{statement} {}", sig.len()),
                    peer: None,
                })
            })
            .unwrap_or_else(|e| fail("erase", e));
        erase_ms.push(ms(t.elapsed()));
        let listed = erased.map_or(0, |e| e.record_ids.len() as u64);
        if listed != SUBJECT_RECORDS {
            fail("erase", format!("{listed} records, not {SUBJECT_RECORDS}"));
        }
        eprintln!(
            "bench privacy: erasure {}/{RUNS}: {listed} records in {:.1} ms",
            i + 1,
            erase_ms[i as usize]
        );
    }
    (median(erase_ms), median(json_ms), median(csv_ms))
}

fn main() {
    let corpus = corpus::parse(corpus::COMMITTED).unwrap_or_else(|e| fail("corpus", e));
    let redactor = Redactor::new();
    let rep = corpus::score(&corpus, |t| redactor.find(t));
    eprintln!(
        "bench privacy: corpus of {} sentences scored: {} (decoys redacted {} of {})",
        rep.sentences,
        rep.key_values(),
        rep.decoys_redacted.len(),
        rep.decoys
    );

    let dense = corpus::dense_text(&corpus, BYTES);
    let sparse = corpus::sparse_text(&corpus, BYTES);
    let dense_mb = throughput(&redactor, &dense, "dense");
    let sparse_mb = throughput(&redactor, &sparse, "sparse");

    let presidio_kv = match presidio(&corpus) {
        Ok(spans) => {
            let mut it = spans.into_iter();
            let p = corpus::score(&corpus, |_| it.next().unwrap_or_default());
            let kv = presidio_key_values(&p);
            eprintln!("bench privacy: Presidio (rule recognizers, blank spaCy pipeline): {kv}");
            kv
        }
        Err(why) => {
            eprintln!("bench privacy: presidio_pii_char_recall=na: {why}");
            "presidio_pii_char_recall=na".to_string()
        }
    };
    let (erase_ms, export_ms, export_csv_ms) = subject_requests();
    println!(
        "BENCH privacy redact_mb_per_s={dense_mb:.1} redact_sparse_mb_per_s={sparse_mb:.1} \
         {} {presidio_kv} erase_ms={erase_ms:.1} export_1k_ms={export_ms:.1} \
         export_1k_csv_ms={export_csv_ms:.1}",
        rep.key_values()
    );
}
