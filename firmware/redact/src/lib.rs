//! # callgate-redact: personal and payment data out of free text
//!
//! ## What
//!
//! Call transcripts and notes from the PBX side leave the site only redacted (issue 17,
//! item 4). This crate is the redaction, as a pure library: text in, redacted text and the
//! spans it replaced out. No I/O, no allocation beyond the output and the span list, no
//! panics on any input (no `unwrap`/`expect` on input paths; property tests over arbitrary
//! strings). `callgate_intake` uses it: transcripts posted over HTTPS with mutual TLS on
//! the private segment are redacted with it before anything is kept or forwarded.
//!
//! ```
//! let r = callgate_redact::redact("I'm Ana Lopez, card 4111 1111 1111 1111, cvv 123.");
//! assert_eq!(r.text, "I'm [NAME], card [CARD], cvv [CVV].");
//! ```
//!
//! ## Placeholders (a stable format: the cloud parses it)
//!
//! Each span becomes `[` + tag + `]`, tag one of `CARD`, `CVV`, `SSN`, `PHONE`, `EMAIL`,
//! `IP`, `NAME`, `ADDRESS` ([`Kind::placeholder`]); the regular expression
//! `\[(CARD|CVV|SSN|PHONE|EMAIL|IP|NAME|ADDRESS)\]` finds them. The input may itself
//! contain such text; [`Redacted::spans`] is authoritative. Overlapping detections merge
//! into one span (no detected byte survives) named after the longest.
//!
//! ## What it finds, and how
//!
//! Digits are found in one pass over the bytes ("clusters": digits joined by one or two of
//! ` - . ( ) /`); each numeric recognizer runs only on clusters with enough digits for its
//! shape. Shapes are linear-time regular expressions (the `regex` crate: no backtracking
//! blow-ups; 1 MB adversarial inputs are tested); what a regex cannot say is checked in
//! code.
//!
//! - **Cards**: 13–19 digits, unseparated or grouped by one kind of separator (first group
//!   of four, as cards are printed: 4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3), **Luhn**-valid, in a
//!   brand's issuer range with that brand's length (Visa, Mastercard incl. 2-series, Amex,
//!   Discover, UnionPay, Diners, JCB, Maestro), not part of a longer run of digits, and not
//!   preceded by identifier words (order, tracking, reference, account, …) unless card words
//!   come nearer.
//! - **CVV**: a 3–4 digit number after a card-code word (cvv, cvc, csc, security code, code
//!   on the back, three digit code, verification code…) with no other number in between.
//! - **SSNs**: `123-45-6789` / `123 45 6789` (same separator twice); nine bare digits only
//!   after ssn / social / social security / taxpayer; area 000, 666, 900–999, group 00 and
//!   serial 0000 are refused.
//! - **Phones**: NANP with separators (`(415) 555-0123`, `415.555.0123`, `+1 415 555 0123`,
//!   `1-800-555-0199`; area code and exchange 2–9, no N11), ten or eleven bare digits only
//!   after phone words (call, phone, cell, reach, text…) nearer than identifier words;
//!   E.164 outside NANP with a `+` (`+44 20 7946 0958`), 8–15 digits.
//! - **Emails**: `local@domain.tld`, and dictated `jane dot doe at example dot com`.
//! - **IPs**: dotted quads (each part ≤ 255, optional `/len`), not after version words and
//!   not inside a longer dotted run; IPv6 as `std::net::Ipv6Addr` parses it (times like
//!   `10:30:45` and MAC addresses do not).
//! - **Names** (weak by nature): capitalised words after trigger phrases ("my name is",
//!   "this is", "I'm", "speaking with", "name on the card is", "thanks", …), after titles
//!   (Mr, Ms, Dr…; the title stays), and any of ~230 common first names that are not also
//!   common words ([`FIRST_NAMES`]), with the capitalised word after it as surname. Words
//!   that are not names (days, months, brands, greetings, organisation words) end a name.
//! - **Addresses**: house number + up to three capitalised words (or `5th`) + a street
//!   suffix (St, Street, Ave, Road, Blvd, Lane, Dr…), with an optional direction, unit (Apt,
//!   Suite, Unit, #) and `City, ST 12345`; `City, ST 12345` alone; PO boxes; a ZIP code alone
//!   only after zip / postal code.
//!
//! ## What it does not find (current limitations)
//!
//! - Names without a trigger, title or listed first name ("signed for by Zainab Haddad"),
//!   lower-case names ("my name is emily garcia"), surnames alone; names that are also
//!   words (Will, Grace, Chase) are only found after a trigger or title.
//! - Addresses without a street suffix or outside the US pattern ("12 Rue de la Paix"),
//!   city names alone, states written out.
//! - Numbers split by words ("4111 1111, um, 1111 1111") or spelled out ("four one one
//!   one…"); seven-digit local phone numbers (`555-0123`); partial SSNs ("last four").
//! - A Luhn-valid number in a card's issuer range said without identifier words is a card,
//!   whatever it is (about 1 in 10 random numbers of the right shape passes Luhn).
//!
//! ## Measured
//!
//! On the committed corpus (`corpus/corpus.jsonl`: 2,600 sentences, 2,574 labelled PII
//! spans and 1,923 labelled look-alikes, made by `corpus/generate.py`), scored by span
//! overlap as `callgate_redact::corpus` defines (feature `corpus`; the corpus test and `scripts/bench
//! privacy` both use it):
//!
//! | kind | precision | recall |
//! |---|---|---|
//! | card | 1.000 | 0.952 |
//! | cvv | 1.000 | 1.000 |
//! | ssn | 1.000 | 1.000 |
//! | phone | 1.000 | 1.000 |
//! | email | 1.000 | 1.000 |
//! | ip | 1.000 | 1.000 |
//! | name | 1.000 | 0.901 |
//! | address | 1.000 | 1.000 |
//!
//! `pii_char_recall` 0.968, no look-alike redacted. Presidio's rule recognizers (its
//! AnalyzerEngine on a blank spaCy pipeline, `corpus/presidio.py`) on the same corpus, same
//! scoring: `pii_char_recall` 0.525; cards .997 precision / .743 recall, phones .702 / .880,
//! SSNs 1.0 recall, emails .881 recall (dictated addresses). The corpus and the
//! recognizers were written by the same hand: these figures say the rules do what they
//! claim on the shapes the generator knows, not how they fare on real transcripts.
//! Reproduce with `cargo test -p callgate-redact --test corpus -- --nocapture` or
//! `scripts/bench privacy`.
//!
//! Throughput, one thread, on the 2-core build machine while shared with a CI run
//! (`cargo run --release -p callgate-redact --features corpus --example throughput`, or
//! `scripts/bench privacy` for medians):
//! - the corpus joined to 10 MB (PII-dense: about one span per 60 bytes): about 70 MB/s
//!   (`redact_mb_per_s`; 141 instructions a byte under callgrind);
//! - 10 MB of ordinary sentences with one corpus sentence in 41 (`corpus::sparse_text`,
//!   0.27 spans per kB): about 300 MB/s (`redact_sparse_mb_per_s`; 32 instructions a byte).
//!
//! Where the time goes (callgrind, dense): regex searches about a third (two thirds of
//! that the whole-text word patterns: names, triggers, emails; the rest the per-cluster
//! card and phone shapes), the context-word scan (one pass over a window's word starts) a
//! fifth, name filtering about 6%.

use std::fmt;
use std::sync::LazyLock;

mod context;
#[cfg(feature = "corpus")]
pub mod corpus;
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
        for c in numbers::clusters(text) {
            self.numbers.on_cluster(text, &c, &mut raw);
            self.words.on_cluster(text, &c, &mut raw);
        }
        self.numbers.find_rest(text, &mut raw);
        self.words.find_rest(text, &mut raw);
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

/// What `text` redacts, as (kind, the text found): the recognizers' unit tests compare
/// against this.
#[cfg(test)]
fn test_kinds(text: &str) -> Vec<(Kind, String)> {
    Redactor::new()
        .find(text)
        .iter()
        .map(|s| (s.kind, text[s.start..s.end].to_string()))
        .collect()
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
