//! Redaction throughput, one thread, on two texts made from the committed corpus
//! (`callgate_redact::corpus`):
//! - dense: the corpus's sentences joined into ~10 MB (PII-dense, about one span per 60
//!   bytes): `redact_mb_per_s`, the figure;
//! - sparse: ~10 MB of sentences of ordinary words with one corpus sentence in 41, as real
//!   transcripts mostly are: `redact_sparse_mb_per_s`.
//!
//! `cargo run --release -p callgate-redact --features corpus --example throughput`
//!
//! MB = 10^6 bytes of input per second of wall time, best of five runs; it measures, it
//! never judges.

use std::time::Instant;

use callgate_redact::{corpus, Redactor};

/// Best of five: MB/s and spans.
fn measure(redactor: &Redactor, text: &str) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut spans = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let r = redactor.redact(text);
        best = best.min(t.elapsed().as_secs_f64());
        spans = r.spans.len();
    }
    (text.len() as f64 / 1e6 / best, spans)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = corpus::parse(corpus::COMMITTED)?;
    let dense = corpus::dense_text(&corpus, 10_000_000);
    let sparse = corpus::sparse_text(&corpus, 10_000_000);
    let redactor = Redactor::new();
    let (d, d_spans) = measure(&redactor, &dense);
    println!("dense: {:.1} MB, {d_spans} spans", dense.len() as f64 / 1e6);
    let (s, s_spans) = measure(&redactor, &sparse);
    println!(
        "sparse: {:.1} MB, {s_spans} spans",
        sparse.len() as f64 / 1e6
    );
    println!("redact_mb_per_s={d:.1}");
    println!("redact_sparse_mb_per_s={s:.1}");
    Ok(())
}
