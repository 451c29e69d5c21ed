//! The committed labelled corpus, its scoring, and the texts the throughput figures are
//! measured on: shared by the corpus test (`tests/corpus.rs`), the throughput example and
//! `scripts/bench privacy`, so they all report the same figures (feature `corpus`).
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

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::{Kind, Span};

/// The committed corpus (`corpus/corpus.jsonl`, made by `corpus/generate.py`): one JSON
/// object a line, `{"text", "pii": [{"kind","start","end"}], "decoys": [...]}`, byte
/// offsets.
pub const COMMITTED: &str = include_str!("../corpus/corpus.jsonl");

/// One labelled sentence.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// The sentence.
    pub text: String,
    /// The personal data in it.
    pub pii: Vec<Span>,
    /// The look-alikes in it (kind as labelled: `order`, `amount`, `date`, …; byte range).
    pub decoys: Vec<(String, usize, usize)>,
}

/// A line of the corpus that does not parse.
#[derive(Debug)]
pub struct ParseError {
    /// 1-based.
    pub line: usize,
    /// What is wrong with it.
    pub what: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "corpus line {}: {}", self.line, self.what)
    }
}

impl std::error::Error for ParseError {}

/// Parses a corpus in the committed format; ranges are checked to lie on the text's
/// character boundaries.
pub fn parse(jsonl: &str) -> Result<Vec<Labelled>, ParseError> {
    let mut out = Vec::new();
    for (n, line) in jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let err = |what: String| ParseError { line: n + 1, what };
        let v: Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let text = v["text"]
            .as_str()
            .ok_or_else(|| err("no \"text\"".into()))?
            .to_string();
        let range = |s: &Value| -> Result<(String, usize, usize), ParseError> {
            let kind = s["kind"]
                .as_str()
                .ok_or_else(|| err("a span has no kind".into()))?;
            let at = |k: &str| {
                s[k].as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| err(format!("a span has no {k}")))
            };
            let (start, end) = (at("start")?, at("end")?);
            if start > end || text.get(start..end).is_none() {
                return Err(err(format!("span {start}..{end} is not in the text")));
            }
            Ok((kind.to_string(), start, end))
        };
        let list = |k: &str| v[k].as_array().map(Vec::as_slice).unwrap_or_default();
        let mut pii = Vec::new();
        for s in list("pii") {
            let (kind, start, end) = range(s)?;
            let kind = Kind::from_name(&kind).ok_or_else(|| err(format!("unknown kind {kind}")))?;
            pii.push(Span { kind, start, end });
        }
        let decoys = list("decoys").iter().map(range).collect::<Result<_, _>>()?;
        out.push(Labelled { text, pii, decoys });
    }
    Ok(out)
}

/// The figures of one kind.
#[derive(Debug, Default, Clone)]
pub struct Score {
    /// Spans of this kind detected.
    pub detected: usize,
    /// Of those, the ones that overlap a labelled span of this kind.
    pub detected_right: usize,
    /// Labelled spans of this kind.
    pub labelled: usize,
    /// Of those, the ones that overlap a detected span of this kind.
    pub labelled_found: usize,
    /// The first few labelled spans missed (text and sentence), for reading.
    pub misses: Vec<String>,
    /// The first few detections that match no label, for reading.
    pub false_alarms: Vec<String>,
}

impl Score {
    /// 1.0 when nothing was detected.
    pub fn precision(&self) -> f64 {
        ratio(self.detected_right, self.detected)
    }

    /// 1.0 when nothing is labelled.
    pub fn recall(&self) -> f64 {
        ratio(self.labelled_found, self.labelled)
    }
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// The scores of a redactor on a corpus.
#[derive(Debug, Clone)]
pub struct Report {
    /// Sentences scored.
    pub sentences: usize,
    /// Per kind.
    pub per_kind: BTreeMap<Kind, Score>,
    /// Labelled PII bytes.
    pub pii_bytes: usize,
    /// Of those, inside a detected span.
    pub pii_bytes_caught: usize,
    /// Detected bytes.
    pub detected_bytes: usize,
    /// Of those, inside a labelled PII span.
    pub detected_bytes_right: usize,
    /// Look-alikes in the corpus.
    pub decoys: usize,
    /// The look-alikes that were redacted (kind, text and sentence).
    pub decoys_redacted: Vec<String>,
}

impl Report {
    /// The figures of `kind`.
    pub fn kind(&self, kind: Kind) -> Score {
        self.per_kind.get(&kind).cloned().unwrap_or_default()
    }

    /// Labelled PII bytes caught, of all labelled PII bytes.
    pub fn pii_char_recall(&self) -> f64 {
        ratio(self.pii_bytes_caught, self.pii_bytes)
    }

    /// Detected bytes that are labelled PII, of all detected bytes.
    pub fn pii_char_precision(&self) -> f64 {
        ratio(self.detected_bytes_right, self.detected_bytes)
    }

    /// The figures as `key=value` pairs: `cc_recall=… cc_precision=… phone_recall=…
    /// phone_precision=… ssn_recall=… ssn_precision=… email_recall=… email_precision=…
    /// pii_char_recall=…`.
    pub fn key_values(&self) -> String {
        let (cc, phone, ssn, email) = (
            self.kind(Kind::Card),
            self.kind(Kind::Phone),
            self.kind(Kind::Ssn),
            self.kind(Kind::Email),
        );
        format!(
            "cc_recall={:.3} cc_precision={:.3} phone_recall={:.3} phone_precision={:.3} \
             ssn_recall={:.3} ssn_precision={:.3} email_recall={:.3} email_precision={:.3} \
             pii_char_recall={:.3}",
            cc.recall(),
            cc.precision(),
            phone.recall(),
            phone.precision(),
            ssn.recall(),
            ssn.precision(),
            email.recall(),
            email.precision(),
            self.pii_char_recall(),
        )
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Quotes `t[start..end]` and its sentence, for a report line.
fn quote(t: &str, start: usize, end: usize) -> String {
    format!("{:?} in {t:?}", t.get(start..end).unwrap_or(""))
}

/// Scores the spans `find` returns for each sentence against the labels.
pub fn score(corpus: &[Labelled], mut find: impl FnMut(&str) -> Vec<Span>) -> Report {
    let mut report = Report {
        sentences: corpus.len(),
        per_kind: Kind::ALL.iter().map(|k| (*k, Score::default())).collect(),
        pii_bytes: 0,
        pii_bytes_caught: 0,
        detected_bytes: 0,
        detected_bytes_right: 0,
        decoys: 0,
        decoys_redacted: Vec::new(),
    };
    for item in corpus {
        let found = find(&item.text);
        let t = &item.text;
        for g in &item.pii {
            let s = report.per_kind.entry(g.kind).or_default();
            s.labelled += 1;
            if found
                .iter()
                .any(|f| f.kind == g.kind && overlaps((f.start, f.end), (g.start, g.end)))
            {
                s.labelled_found += 1;
            } else if s.misses.len() < 6 {
                s.misses.push(quote(t, g.start, g.end));
            }
            report.pii_bytes += g.end - g.start;
            report.pii_bytes_caught += (g.start..g.end)
                .filter(|i| found.iter().any(|f| f.start <= *i && *i < f.end))
                .count();
        }
        for f in &found {
            let s = report.per_kind.entry(f.kind).or_default();
            s.detected += 1;
            if item
                .pii
                .iter()
                .any(|g| g.kind == f.kind && overlaps((f.start, f.end), (g.start, g.end)))
            {
                s.detected_right += 1;
            } else if s.false_alarms.len() < 6 {
                s.false_alarms.push(quote(t, f.start, f.end));
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
                    .push(format!("{kind} {}", quote(t, *start, *end)));
            }
        }
    }
    report
}

/// The dense text of `redact_mb_per_s`: the corpus's sentences, one a line, repeated to at
/// least `bytes` (PII-dense: about one span per 60 bytes).
pub fn dense_text(corpus: &[Labelled], bytes: usize) -> String {
    let one: Vec<&str> = corpus.iter().map(|l| l.text.as_str()).collect();
    let one = one.join("\n");
    let mut text = String::with_capacity(bytes + one.len() + 1);
    while text.len() < bytes && !one.is_empty() {
        text.push_str(&one);
        text.push('\n');
    }
    text
}

/// The sparse text of `redact_sparse_mb_per_s`, as call-centre transcripts mostly are:
/// sentences of 6–20 words drawn (by a fixed-seed generator, so every run measures the same
/// text) from the corpus's words outside every labelled span, lower-case and without digits,
/// with one labelled corpus sentence (PII and all) after every 40 of them; at least `bytes`.
pub fn sparse_text(corpus: &[Labelled], bytes: usize) -> String {
    let mut vocab: Vec<String> = Vec::new();
    for l in corpus {
        let labelled = |i: usize| {
            l.pii.iter().any(|s| s.start <= i && i < s.end)
                || l.decoys.iter().any(|(_, s, e)| *s <= i && i < *e)
        };
        let mut at = 0;
        for w in l.text.split(' ') {
            let (s, e) = (at, at + w.len());
            at = e + 1;
            let w = w.trim_matches(|c: char| !c.is_ascii_alphabetic());
            if !w.is_empty()
                && w.bytes().all(|b| b.is_ascii_alphabetic() || b == b'\'')
                && !(s..e).any(labelled)
            {
                vocab.push(w.to_ascii_lowercase());
            }
        }
    }
    vocab.sort();
    vocab.dedup();
    let mut text = String::with_capacity(bytes + 512);
    if vocab.is_empty() || corpus.is_empty() {
        return text;
    }
    // xorshift64*: deterministic, good enough to pick words.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |n: usize| {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    };
    let mut sentences = 0usize;
    while text.len() < bytes {
        sentences += 1;
        if sentences.is_multiple_of(41) {
            if let Some(l) = corpus.get(next(corpus.len())) {
                text.push_str(&l.text);
                text.push('\n');
            }
            continue;
        }
        let words = 6 + next(15);
        for i in 0..words {
            let w = vocab.get(next(vocab.len())).map_or("", String::as_str);
            if i == 0 {
                let mut c = w.chars();
                if let Some(f) = c.next() {
                    text.extend(f.to_uppercase());
                    text.push_str(c.as_str());
                }
            } else {
                text.push(' ');
                text.push_str(w);
            }
        }
        text.push_str(".\n");
    }
    text
}
