#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! Scores the redactor on the committed, labelled corpus (`corpus/corpus.jsonl`, made by
//! `corpus/generate.py`), with the scoring `callgate_redact::corpus` defines (span overlap
//! per kind; PII bytes caught over all kinds; look-alikes redacted) and `scripts/bench
//! privacy` uses too.
//!
//! Run `cargo test -p callgate-redact --test corpus -- --nocapture` to see the figures and
//! the first misses and false alarms of each kind.

use callgate_redact::corpus::{self, Report};
use callgate_redact::{Kind, Redactor};

fn report() -> Report {
    let corpus = corpus::parse(corpus::COMMITTED).unwrap();
    assert!(
        corpus.len() >= 2000,
        "the corpus has {} sentences",
        corpus.len()
    );
    let r = Redactor::new();
    corpus::score(&corpus, |t| r.find(t))
}

#[test]
fn corpus_precision_and_recall() {
    let rep = report();

    println!("corpus: {} sentences", rep.sentences);
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
    let char_recall = rep.pii_char_recall();
    println!(
        "pii_char_recall={char_recall:.3} pii_char_precision={:.3}",
        rep.pii_char_precision()
    );
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
    println!("CORPUS {}", rep.key_values());

    // The goals: recall ≥ .95 at precision ≥ .95 for these four.
    for kind in [Kind::Card, Kind::Ssn, Kind::Phone, Kind::Email] {
        let s = rep.kind(kind);
        assert!(s.recall() >= 0.95, "{kind} recall {:.3}", s.recall());
        assert!(
            s.precision() >= 0.95,
            "{kind} precision {:.3}",
            s.precision()
        );
    }
    // What the crate's docs state (0.968, as printed to three places): a change that
    // loses PII bytes shows here.
    assert!(
        (char_recall * 1e3).round() >= 968.0,
        "pii_char_recall {char_recall:.4}"
    );
}

#[test]
fn no_look_alike_is_redacted() {
    let rep = report();
    assert!(rep.decoys > 1500, "{} decoys", rep.decoys);
    assert!(
        rep.decoys_redacted.is_empty(),
        "{} of {} look-alikes redacted: {:#?}",
        rep.decoys_redacted.len(),
        rep.decoys,
        rep.decoys_redacted
    );
}

#[test]
fn the_sparse_text_is_mostly_words() {
    let corpus = corpus::parse(corpus::COMMITTED).unwrap();
    let sparse = corpus::sparse_text(&corpus, 200_000);
    let dense = corpus::dense_text(&corpus, 200_000);
    assert_eq!(
        sparse,
        corpus::sparse_text(&corpus, 200_000),
        "deterministic"
    );
    let r = Redactor::new();
    let per_kb = |t: &str| r.find(t).len() as f64 / (t.len() as f64 / 1e3);
    let (s, d) = (per_kb(&sparse), per_kb(&dense));
    println!("spans per kB: sparse {s:.2}, dense {d:.2}");
    assert!(
        s > 0.0 && s * 10.0 < d,
        "sparse {s:.2} vs dense {d:.2} spans per kB"
    );
}
