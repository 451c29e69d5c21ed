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
//! - `erase_ms`, `export_1k_ms`: `na` until subject erasure and export exist.
//!
//! The last line is `BENCH privacy redact_mb_per_s=… redact_sparse_mb_per_s=… cc_recall=…
//! cc_precision=… phone_recall=… phone_precision=… ssn_recall=… ssn_precision=…
//! email_recall=… email_precision=… pii_char_recall=… presidio_… erase_ms=na
//! export_1k_ms=na`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use callgate_redact::corpus::{self, Labelled, Report};
use callgate_redact::{Kind, Redactor, Span};
use hil_tests::bench::{fail, median};

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
    eprintln!(
        "bench privacy: erase_ms and export_1k_ms come with the subject requests \
         (issue 17, item 1), not built yet"
    );
    println!(
        "BENCH privacy redact_mb_per_s={dense_mb:.1} redact_sparse_mb_per_s={sparse_mb:.1} \
         {} {presidio_kv} erase_ms=na export_1k_ms=na",
        rep.key_values()
    );
}
