//! # callgate-redact: personal and payment data out of free text
//!
//! Finds payment cards, card codes, SSNs, phone numbers, emails, IP addresses, names and
//! street addresses in free text and replaces them with typed placeholders.

use std::fmt;
use std::sync::LazyLock;

mod context;
mod numbers;
mod text;

pub use numbers::{luhn, plausible_issuer, valid_nanp, valid_ssn};
pub use text::FIRST_NAMES;

/// What a span holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A payment card number (Luhn-valid, a known issuer range and length).
    Card,
    /// A card security code (CVV/CVC/CID) near a card-code word.
    Cvv,
    /// A US social security number.
    Ssn,
    /// A phone number (NANP, or E.164 with a `+`).
    Phone,
    /// An email address, written or dictated.
    Email,
    /// An IPv4 or IPv6 address.
    Ip,
    /// A person's name (rules and context; see the crate docs for what is missed).
    Name,
    /// A street address, a PO box, a city-state-ZIP, or a ZIP code said to be one.
    Address,
}

impl Kind {
    /// Every kind, in priority order (a kind earlier in the list wins an overlap between
    /// spans of equal length).
    pub const ALL: [Kind; 8] = [
        Kind::Card,
        Kind::Ssn,
        Kind::Phone,
        Kind::Email,
        Kind::Ip,
        Kind::Cvv,
        Kind::Address,
        Kind::Name,
    ];

    /// The text that replaces a span of this kind: `[` + upper-case tag + `]`.
    pub fn placeholder(self) -> &'static str {
        match self {
            Kind::Card => "[CARD]",
            Kind::Cvv => "[CVV]",
            Kind::Ssn => "[SSN]",
            Kind::Phone => "[PHONE]",
            Kind::Email => "[EMAIL]",
            Kind::Ip => "[IP]",
            Kind::Name => "[NAME]",
            Kind::Address => "[ADDRESS]",
        }
    }

    /// The kind's name in labels and reports (`card`, `cvv`, `ssn`, `phone`, `email`, `ip`,
    /// `name`, `address`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Card => "card",
            Kind::Cvv => "cvv",
            Kind::Ssn => "ssn",
            Kind::Phone => "phone",
            Kind::Email => "email",
            Kind::Ip => "ip",
            Kind::Name => "name",
            Kind::Address => "address",
        }
    }

    /// The kind named `s` (as [`Kind::as_str`] writes it).
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn rank(self) -> usize {
        Kind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A detected span: its kind and its byte range in the input (on character boundaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// What it holds.
    pub kind: Kind,
    /// First byte, in the input.
    pub start: usize,
    /// One past the last byte, in the input.
    pub end: usize,
}

impl Span {
    pub(crate) fn new(kind: Kind, start: usize, end: usize) -> Span {
        Span { kind, start, end }
    }

    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Redacted text and what was taken out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    /// The input with every span replaced by its kind's placeholder.
    pub text: String,
    /// The spans replaced, in input order, disjoint, with byte ranges in the input.
    pub spans: Vec<Span>,
}

/// The recognizers, compiled once. Cheap to share (`&self` only); build one per process.
#[derive(Debug)]
pub struct Redactor {
    numbers: numbers::Numbers,
    words: text::Words,
}

static DEFAULT: LazyLock<Redactor> = LazyLock::new(Redactor::new);

/// Redacts `text` with the process-wide [`Redactor`].
pub fn redact(text: &str) -> Redacted {
    DEFAULT.redact(text)
}

impl Default for Redactor {
    fn default() -> Redactor {
        Redactor::new()
    }
}

impl Redactor {
    /// Compiles the recognizers.
    #[allow(clippy::expect_used)] // the patterns are constants; every test compiles them
    pub fn new() -> Redactor {
        Redactor {
            numbers: numbers::Numbers::new().expect("the numeric patterns compile"),
            words: text::Words::new().expect("the word patterns compile"),
        }
    }

    /// The spans to redact in `text`: in order, disjoint. Overlapping detections are merged
    /// into one span (so no detected byte survives) that takes the kind of the longest
    /// detection, ties going to the kind earlier in [`Kind::ALL`].
    pub fn find(&self, text: &str) -> Vec<Span> {
        let mut raw = Vec::new();
        self.numbers.find(text, &mut raw);
        self.words.find(text, &mut raw);
        merge(raw)
    }

    /// `text` with every span [`Redactor::find`] returns replaced by its placeholder.
    pub fn redact(&self, text: &str) -> Redacted {
        let spans = self.find(text);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for s in &spans {
            out.push_str(text.get(at..s.start).unwrap_or(""));
            out.push_str(s.kind.placeholder());
            at = s.end;
        }
        out.push_str(text.get(at..).unwrap_or(""));
        Redacted { text: out, spans }
    }
}

/// Sorts and merges overlapping spans.
fn merge(mut raw: Vec<Span>) -> Vec<Span> {
    raw.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end), s.kind.rank()));
    let mut out: Vec<Span> = Vec::with_capacity(raw.len());
    // The detection that names the current merged span.
    let mut lead: Option<Span> = None;
    for s in raw {
        if s.start >= s.end {
            continue;
        }
        match (out.last_mut(), lead.as_mut()) {
            (Some(cur), Some(l)) if s.start < cur.end => {
                cur.end = cur.end.max(s.end);
                if (s.len(), std::cmp::Reverse(s.kind.rank()))
                    > (l.len(), std::cmp::Reverse(l.kind.rank()))
                {
                    *l = s;
                    cur.kind = s.kind;
                }
            }
            _ => {
                out.push(s);
                lead = Some(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_replace_spans() {
        let r = redact("Hi, my name is Priya Raman, card 4111 1111 1111 1111, cvv 123.");
        assert_eq!(r.text, "Hi, my name is [NAME], card [CARD], cvv [CVV].");
        assert_eq!(r.spans.len(), 3);
    }

    #[test]
    fn overlaps_merge_to_the_longest() {
        let m = merge(vec![
            Span::new(Kind::Name, 10, 20),
            Span::new(Kind::Address, 0, 15),
            Span::new(Kind::Cvv, 30, 33),
        ]);
        assert_eq!(
            m,
            vec![
                Span::new(Kind::Address, 0, 20),
                Span::new(Kind::Cvv, 30, 33)
            ]
        );
    }

    #[test]
    fn kinds_round_trip_their_names() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.as_str()), Some(k));
        }
    }
}
