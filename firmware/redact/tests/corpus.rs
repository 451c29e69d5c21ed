#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! Scores the redactor on the committed, labelled corpus (`corpus/corpus.jsonl`, made by
//! `corpus/generate.py`).
//!
//! Scoring, per kind K, by span overlap (any byte in common):
//! - **precision** = detected spans of kind K that overlap a labelled span of kind K,
//!   divided by all detected spans of kind K;
//! - **recall** = labelled spans of kind K that overlap a detected span of kind K, divided
//!   by all labelled spans of kind K.
//!
//! Over all kinds:
//! - **pii_char_recall** = labelled PII bytes inside any detected span (of any kind: they
//!   are gone from the output either way), divided by all labelled PII bytes;
//! - **pii_char_precision** = detected bytes inside a labelled PII span, divided by all
//!   detected bytes;
//! - **decoys_redacted** = look-alikes (order and tracking numbers, amounts, dates, …,
//!   labelled as `decoys`) that overlap any detected span.
//!
//! Run `cargo test -p callgate-redact --test corpus -- --nocapture` to see the figures and
//! the first misses and false alarms of each kind.

use std::collections::BTreeMap;

use callgate_redact::{Kind, Redactor, Span};
use serde_json::Value;

struct Labelled {
    text: String,
    pii: Vec<Span>,
    decoys: Vec<(String, usize, usize)>,
}

fn corpus() -> Vec<Labelled> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/corpus.jsonl");
    let raw = std::fs::read_to_string(path).unwrap();
    raw.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap().to_string();
            let range = |s: &Value| {
                (
                    s["kind"].as_str().unwrap().to_string(),
                    s["start"].as_u64().unwrap() as usize,
                    s["end"].as_u64().unwrap() as usize,
                )
            };
            let pii = v["pii"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    let (k, start, end) = range(s);
                    Span {
                        kind: Kind::from_name(&k).unwrap(),
                        start,
                        end,
                    }
                })
                .collect();
            let decoys = v["decoys"].as_array().unwrap().iter().map(range).collect();
            Labelled { text, pii, decoys }
        })
        .collect()
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[derive(Default)]
struct Score {
    detected: usize,
    detected_right: usize,
    labelled: usize,
    labelled_found: usize,
    misses: Vec<String>,
    false_alarms: Vec<String>,
}

impl Score {
    fn precision(&self) -> f64 {
        if self.detected == 0 {
            1.0
        } else {
            self.detected_right as f64 / self.detected as f64
        }
    }
    fn recall(&self) -> f64 {
        if self.labelled == 0 {
            1.0
        } else {
            self.labelled_found as f64 / self.labelled as f64
        }
    }
}

struct Report {
    per_kind: BTreeMap<Kind, Score>,
    pii_bytes: usize,
    pii_bytes_caught: usize,
    detected_bytes: usize,
    detected_bytes_right: usize,
    decoys: usize,
    decoys_redacted: Vec<String>,
}

fn score(corpus: &[Labelled]) -> Report {
    let r = Redactor::new();
    let mut report = Report {
        per_kind: Kind::ALL.iter().map(|k| (*k, Score::default())).collect(),
        pii_bytes: 0,
        pii_bytes_caught: 0,
        detected_bytes: 0,
        detected_bytes_right: 0,
        decoys: 0,
        decoys_redacted: Vec::new(),
    };
    for item in corpus {
        let found = r.find(&item.text);
        let t = &item.text;
        for g in &item.pii {
            let s = report.per_kind.get_mut(&g.kind).unwrap();
            s.labelled += 1;
            if found
                .iter()
                .any(|f| f.kind == g.kind && overlaps((f.start, f.end), (g.start, g.end)))
            {
                s.labelled_found += 1;
            } else if s.misses.len() < 6 {
                s.misses.push(format!("{:?} in {t:?}", &t[g.start..g.end]));
            }
            report.pii_bytes += g.end - g.start;
            report.pii_bytes_caught += (g.start..g.end)
                .filter(|i| found.iter().any(|f| f.start <= *i && *i < f.end))
                .count();
        }
        for f in &found {
            let s = report.per_kind.get_mut(&f.kind).unwrap();
            s.detected += 1;
            if item
                .pii
                .iter()
                .any(|g| g.kind == f.kind && overlaps((f.start, f.end), (g.start, g.end)))
            {
                s.detected_right += 1;
            } else if s.false_alarms.len() < 6 {
                s.false_alarms
                    .push(format!("{:?} in {t:?}", &t[f.start..f.end]));
            }
            report.detected_bytes += f.end - f.start;
            report.detected_bytes_right += (f.start..f.end)
                .filter(|i| item.pii.iter().any(|g| g.start <= *i && *i < g.end))
                .count();
        }
        for (kind, start, end) in &item.decoys {
            report.decoys += 1;
            if found
                .iter()
                .any(|f| overlaps((f.start, f.end), (*start, *end)))
            {
                report
                    .decoys_redacted
                    .push(format!("{kind} {:?} in {t:?}", &t[*start..*end]));
            }
        }
    }
    report
}

#[test]
fn corpus_precision_and_recall() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 2000,
        "the corpus has {} sentences",
        corpus.len()
    );
    let rep = score(&corpus);

    println!("corpus: {} sentences", corpus.len());
    println!(
        "{:<8} {:>9} {:>9} {:>7} {:>7}",
        "kind", "precision", "recall", "labels", "found"
    );
    for (kind, s) in &rep.per_kind {
        println!(
            "{:<8} {:>9.3} {:>9.3} {:>7} {:>7}",
            kind.as_str(),
            s.precision(),
            s.recall(),
            s.labelled,
            s.detected
        );
    }
    let char_recall = rep.pii_bytes_caught as f64 / rep.pii_bytes as f64;
    let char_precision = rep.detected_bytes_right as f64 / rep.detected_bytes.max(1) as f64;
    println!("pii_char_recall={char_recall:.3} pii_char_precision={char_precision:.3}");
    println!(
        "decoys_redacted={} of {}",
        rep.decoys_redacted.len(),
        rep.decoys
    );
    for (kind, s) in &rep.per_kind {
        for m in &s.misses {
            println!("  miss {kind}: {m}");
        }
        for f in &s.false_alarms {
            println!("  false alarm {kind}: {f}");
        }
    }
    for d in rep.decoys_redacted.iter().take(20) {
        println!("  decoy redacted: {d}");
    }
    let k = |kind| &rep.per_kind[&kind];
    println!(
        "CORPUS cc_recall={:.3} cc_precision={:.3} phone_recall={:.3} phone_precision={:.3} ssn_recall={:.3} ssn_precision={:.3} email_recall={:.3} email_precision={:.3} pii_char_recall={char_recall:.3}",
        k(Kind::Card).recall(),
        k(Kind::Card).precision(),
        k(Kind::Phone).recall(),
        k(Kind::Phone).precision(),
        k(Kind::Ssn).recall(),
        k(Kind::Ssn).precision(),
        k(Kind::Email).recall(),
        k(Kind::Email).precision(),
    );

    // The goals: recall ≥ .95 at precision ≥ .95 for these four.
    for kind in [Kind::Card, Kind::Ssn, Kind::Phone, Kind::Email] {
        let s = k(kind);
        assert!(s.recall() >= 0.95, "{kind} recall {:.3}", s.recall());
        assert!(
            s.precision() >= 0.95,
            "{kind} precision {:.3}",
            s.precision()
        );
    }
    assert!(char_recall >= 0.9, "pii_char_recall {char_recall:.3}");
}

#[test]
fn no_look_alike_is_redacted() {
    let rep = score(&corpus());
    assert!(rep.decoys > 1500, "{} decoys", rep.decoys);
    assert!(
        rep.decoys_redacted.is_empty(),
        "{} of {} look-alikes redacted: {:#?}",
        rep.decoys_redacted.len(),
        rep.decoys,
        rep.decoys_redacted
    );
}
