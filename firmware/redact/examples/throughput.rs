//! Redaction throughput on the corpus's sentences joined into ~10 MB of text.
//!
//! `cargo run --release -p callgate-redact --example throughput`
//!
//! Prints `redact_mb_per_s=…` (MB = 10^6 bytes of input per second of wall time, best of
//! five runs on one thread); it measures, it never judges.

use std::time::Instant;

use callgate_redact::Redactor;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/corpus.jsonl");
    let mut sentences = Vec::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        sentences.push(v["text"].as_str().unwrap_or_default().to_string());
    }
    let one = sentences.join("\n");
    let mut text = String::with_capacity(10_500_000);
    while text.len() < 10_000_000 {
        text.push_str(&one);
        text.push('\n');
    }
    let redactor = Redactor::new();
    let mut best = f64::MAX;
    let mut spans = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let r = redactor.redact(&text);
        best = best.min(t.elapsed().as_secs_f64());
        spans = r.spans.len();
    }
    let mb = text.len() as f64 / 1e6;
    println!("input {mb:.1} MB, {spans} spans, best {best:.3} s");
    println!("redact_mb_per_s={:.1}", mb / best);
    Ok(())
}
