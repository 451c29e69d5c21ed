//! The numeric recognizers: payment cards, card codes, social security numbers, phone
//! numbers and IP addresses. Each is a linear-time regular expression for the shape, then
//! checks in code for what a regular expression cannot say (Luhn, issuer ranges, invalid
//! SSN areas, numbering-plan rules, the words around the number).

use std::net::{Ipv4Addr, Ipv6Addr};

use regex::Regex;

use crate::context::{
    before, favours, nearest, only_against, CARD_WORDS, NOT_PII_WORDS, PHONE_WORDS, SSN_WORDS,
    VERSION_WORDS,
};
use crate::{Kind, Span};

/// How far back the context words are looked for, in bytes.
const CONTEXT: usize = 48;

/// 13–19 digits, optionally separated by single spaces or dashes.
pub(crate) const CARD: &str = r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)";
#[allow(dead_code)] // the specification of `digit_shapes`; a property test holds it to it
/// `123-45-6789`, `123 45 6789` (matched in code on a cluster's runs of digits; the
/// pattern is the specification, and a test holds the code to it).
pub(crate) const SSN_SEPARATED: &str = r"(?-u:\b)[0-9]{3}[ -][0-9]{2}[ -][0-9]{4}(?-u:\b)";
#[allow(dead_code)] // as SSN_SEPARATED
/// Nine digits (an SSN only with context), ten or eleven (a phone number only with
/// context); matched in code, as [`SSN_SEPARATED`].
pub(crate) const BARE_DIGITS: &str = r"(?-u:\b)[0-9]{9,11}(?-u:\b)";
/// NANP with separators: `(415) 555-0123`, `415.555.0123`, `+1 415 555 0123`, `1-800-555-0199`.
pub(crate) const NANP: &str =
    r"(?:\+?1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}";
/// E.164 outside NANP: `+44 20 7946 0958`, 8–15 digits after the plus.
pub(crate) const INTERNATIONAL: &str = r"\+[2-9](?:[ .-]?\(?[0-9]\)?){7,14}";
/// Dotted quads, optionally with a prefix length.
pub(crate) const IPV4: &str = r"(?-u:\b)[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?:/[0-9]{1,2})?(?-u:\b)";
/// Anything with two colons among hex groups; `Ipv6Addr`'s parser decides.
pub(crate) const IPV6: &str = r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*";

/// The compiled numeric recognizers.
#[derive(Debug)]
pub(crate) struct Numbers {
    card: Regex,
    nanp: Regex,
    international: Regex,
    ipv4: Regex,
    ipv6: Regex,
}

impl Numbers {
    pub(crate) fn new() -> Result<Numbers, regex::Error> {
        Ok(Numbers {
            card: Regex::new(CARD)?,
            nanp: Regex::new(NANP)?,
            international: Regex::new(INTERNATIONAL)?,
            ipv4: Regex::new(IPV4)?,
            ipv6: Regex::new(IPV6)?,
        })
    }

    /// The numeric recognizers on one cluster of digits: each runs only where the cluster
    /// has enough digits (or dots) for its shape, on the cluster and the few bytes before it.
    pub(crate) fn on_cluster(&self, text: &str, c: &Cluster, out: &mut Vec<Span>) {
        let from = c.lookback(text);
        let Some(hay) = text.get(from..c.end) else {
            return;
        };
        let at = |m: regex::Match<'_>| (from + m.start(), from + m.end());
        if c.digits >= 13 {
            for m in self.card.find_iter(hay) {
                let (s, e) = at(m);
                if is_card(text, s, m.as_str()) {
                    out.push(Span::new(Kind::Card, s, e));
                }
            }
        }
        if c.digits >= 9 {
            // SSNs (3-2-4) and bare 9–11 digit numbers, straight from the cluster's runs of
            // digits: the matches `SSN_SEPARATED` and `BARE_DIGITS` give on the cluster,
            // without a regex search per cluster.
            digit_shapes(text, c, |shape, s, e| {
                let Some(m) = text.get(s..e) else { return };
                match shape {
                    Shape::Ssn if is_separated_ssn(text, s, e, m) => {
                        out.push(Span::new(Kind::Ssn, s, e));
                    }
                    Shape::Bare => {
                        if let Some(kind) = bare_number(text, s, m) {
                            out.push(Span::new(kind, s, e));
                        }
                    }
                    Shape::Ssn => {}
                }
            });
        }
        if c.digits >= 10 {
            for m in self.nanp.find_iter(hay) {
                let (s, e) = at(m);
                if is_nanp(text, s, e) {
                    out.push(Span::new(Kind::Phone, s, e));
                }
            }
        }
        if c.digits >= 8 && hay.contains('+') {
            for m in self.international.find_iter(hay) {
                let (s, e) = at(m);
                if !continues_number_before(text, s) && !is_alnum_at(text, e) {
                    out.push(Span::new(Kind::Phone, s, e));
                }
            }
        }
        if c.dots >= 3 {
            for m in self.ipv4.find_iter(hay) {
                let (s, e) = at(m);
                if is_ipv4(text, s, e, m.as_str()) {
                    out.push(Span::new(Kind::Ip, s, e));
                }
            }
        }
        if (3..=4).contains(&c.digits)
            && c.end - c.start == c.digits
            && !is_alnum_at(text, c.end)
            && is_cvv(text, c.start)
        {
            out.push(Span::new(Kind::Cvv, c.start, c.end));
        }
    }

    /// The recognizers that do not start at a digit.
    pub(crate) fn find_rest(&self, text: &str, out: &mut Vec<Span>) {
        for m in self.ipv6.find_iter(text) {
            if let Some(end) = ipv6_end(text, m.start(), m.as_str()) {
                out.push(Span::new(Kind::Ip, m.start(), end));
            }
        }
    }
}

/// A run of digits joined by short runs (one or two bytes) of separators: ` - . ( ) /`.
/// Every numeric shape lies inside one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cluster {
    /// The first digit.
    pub(crate) start: usize,
    /// One past the last digit.
    pub(crate) end: usize,
    /// Digits in it.
    pub(crate) digits: usize,
    /// Dots in it.
    pub(crate) dots: usize,
    /// Digits in its first run of digits.
    pub(crate) first_run: usize,
}

impl Cluster {
    /// Where a recognizer's haystack starts: three bytes before the first digit (for `+1 `,
    /// `(`), at a character boundary.
    fn lookback(&self, text: &str) -> usize {
        let mut from = self.start.saturating_sub(3);
        while from < self.start && !text.is_char_boundary(from) {
            from += 1;
        }
        from
    }
}

/// A shape found on a cluster's runs of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// [`SSN_SEPARATED`].
    Ssn,
    /// [`BARE_DIGITS`].
    Bare,
}

/// Calls `f` with every match of [`SSN_SEPARATED`] and of [`BARE_DIGITS`] that a regex
/// search of the cluster (from its lookback) finds, read off its runs of digits: a match
/// starts at a run not preceded by a word byte and ends at a run's end (the next byte is
/// a separator, or the haystack ends), so no search is needed.
fn digit_shapes(text: &str, c: &Cluster, mut f: impl FnMut(Shape, usize, usize)) {
    let single_sep = |at: usize, next: usize| {
        next == at + 1 && matches!(text.as_bytes().get(at), Some(b' ' | b'-'))
    };
    let mut prev: [Option<(usize, usize)>; 2] = [None, None];
    for (s, e) in runs(text, c) {
        if (9..=11).contains(&(e - s)) && !is_word_byte_before(text, s) {
            f(Shape::Bare, s, e);
        }
        if let [Some((s1, e1)), Some((s2, e2))] = prev {
            if e1 - s1 == 3
                && e2 - s2 == 2
                && e - s == 4
                && single_sep(e1, s2)
                && single_sep(e2, s)
                && !is_word_byte_before(text, s1)
            {
                f(Shape::Ssn, s1, e);
            }
        }
        prev = [prev[1], Some((s, e))];
    }
}

/// The runs of digits of a cluster, as byte ranges, in order.
fn runs<'t>(text: &'t str, c: &Cluster) -> impl Iterator<Item = (usize, usize)> + 't {
    let b = text.as_bytes();
    let (mut i, end) = (c.start, c.end);
    std::iter::from_fn(move || {
        while i < end && !b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i >= end {
            return None;
        }
        let s = i;
        while i < end && b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        Some((s, i))
    })
}

/// The byte before `i` is a word byte (ASCII letter, digit or `_`: what `(?-u:\b)` sees).
fn is_word_byte_before(text: &str, i: usize) -> bool {
    i.checked_sub(1)
        .and_then(|p| text.as_bytes().get(p))
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn is_sep(b: u8) -> bool {
    matches!(b, b' ' | b'-' | b'.' | b'(' | b')' | b'/')
}

/// The clusters of digits in `text`, in order: one pass over the bytes.
pub(crate) fn clusters(text: &str) -> impl Iterator<Item = Cluster> + '_ {
    let b = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        i += b.get(i..)?.iter().position(u8::is_ascii_digit)?;
        let start = i;
        let (mut digits, mut dots, mut first_run) = (0, 0, None);
        loop {
            match b.get(i) {
                Some(d) if d.is_ascii_digit() => {
                    digits += 1;
                    i += 1;
                }
                Some(s) if is_sep(*s) => {
                    first_run.get_or_insert(digits);
                    let mut j = i;
                    while j < i + 2 && b.get(j).is_some_and(|x| is_sep(*x)) {
                        j += 1;
                    }
                    if !b.get(j).is_some_and(u8::is_ascii_digit) {
                        break;
                    }
                    dots += b
                        .get(i..j)
                        .map_or(0, |r| r.iter().filter(|x| **x == b'.').count());
                    i = j;
                }
                _ => break,
            }
        }
        Some(Cluster {
            start,
            end: i,
            digits,
            dots,
            first_run: first_run.unwrap_or(digits),
        })
    })
}

/// Words that name a card's security code.
const CVV_WORDS: &[&str] = &[
    "cvv",
    "cvv2",
    "cvc",
    "cvc2",
    "csc",
    "security code",
    "card code",
    "code on the back",
    "digit code",
    "digit security code",
    "verification code",
    "verification number",
    "verification value",
];

/// A 3–4 digit number is a card code when a card-code word comes before it with no other
/// number in between (within 40 bytes).
fn is_cvv(text: &str, start: usize) -> bool {
    if continues_number_before(text, start) {
        return false;
    }
    let window = before(text, start, 40);
    let window = match window.rfind(|c: char| c.is_ascii_digit()) {
        Some(i) => window.get(i + 1..).unwrap_or(""),
        None => window,
    };
    nearest(window, CVV_WORDS).is_some()
}

/// The byte at `i` is a letter or digit.
fn is_alnum_at(text: &str, i: usize) -> bool {
    text.as_bytes()
        .get(i)
        .is_some_and(u8::is_ascii_alphanumeric)
}

/// The number at `start` is the tail of a longer one: a digit, or a digit and one
/// separator, comes right before it.
fn continues_number_before(text: &str, start: usize) -> bool {
    let b = text.as_bytes();
    let prev = |k: usize| start.checked_sub(k).and_then(|i| b.get(i)).copied();
    match prev(1) {
        Some(c) if c.is_ascii_alphanumeric() => true,
        Some(b' ' | b'-' | b'.' | b'/') => prev(2).is_some_and(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// The number ending at `end` goes on: a separator then a digit follows.
fn continues_number_after(text: &str, end: usize) -> bool {
    let b = text.as_bytes();
    match b.get(end) {
        Some(c) if c.is_ascii_alphanumeric() => true,
        Some(b' ' | b'-' | b'/') => b.get(end + 1).is_some_and(u8::is_ascii_digit),
        Some(b'.') => b.get(end + 1).is_some_and(u8::is_ascii_digit),
        _ => false,
    }
}

/// The digits of a number, as values 0–9, on the stack (numbers here have at most 19;
/// more than [`Digits::CAP`] give none, which every length check refuses).
pub(crate) struct Digits {
    buf: [u8; Digits::CAP],
    len: usize,
}

impl Digits {
    const CAP: usize = 24;
}

impl std::ops::Deref for Digits {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

/// The digits of `s` as values 0–9.
fn digits(s: &str) -> Digits {
    let mut d = Digits {
        buf: [0; Digits::CAP],
        len: 0,
    };
    for b in s.bytes().filter(u8::is_ascii_digit) {
        match d.buf.get_mut(d.len) {
            Some(slot) => {
                *slot = b - b'0';
                d.len += 1;
            }
            None => {
                d.len = 0;
                break;
            }
        }
    }
    d
}

/// The Luhn (mod 10) check every payment card number passes.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let d = u32::from(*d);
        sum += if i % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// The number's leading digits as an integer (`n` of them).
fn prefix(d: &[u8], n: usize) -> u32 {
    d.iter()
        .take(n)
        .fold(0u32, |acc, x| acc * 10 + u32::from(*x))
}

/// The issuer ranges (IIN) and lengths of the card brands in use: Visa, Mastercard, American
/// Express, Discover, UnionPay, Diners Club, JCB, Maestro.
pub fn plausible_issuer(d: &[u8]) -> bool {
    let len = d.len();
    let p1 = prefix(d, 1);
    let p2 = prefix(d, 2);
    let p3 = prefix(d, 3);
    let p4 = prefix(d, 4);
    match p1 {
        4 => matches!(len, 13 | 16 | 19),
        5 => ((51..=55).contains(&p2) && len == 16) || (matches!(p2, 50 | 56..=58) && len >= 13),
        2 => (2221..=2720).contains(&p4) && len == 16,
        3 => {
            (matches!(p2, 34 | 37) && len == 15)
                || (((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39))
                    && (14..=19).contains(&len))
                || ((3528..=3589).contains(&p4) && (16..=19).contains(&len))
        }
        6 => {
            ((p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || p2 == 62)
                && (16..=19).contains(&len))
                || (matches!(p2, 63 | 67) && (13..=19).contains(&len))
        }
        _ => false,
    }
}

/// Groups as written: every separator the same; the first group four digits; inner groups
/// three to six digits. Unseparated runs pass.
fn plausible_grouping(s: &str) -> bool {
    let sep = s.bytes().find(|b| !b.is_ascii_digit());
    let Some(sep) = sep else { return true };
    if s.bytes().any(|b| !b.is_ascii_digit() && b != sep) {
        return false;
    }
    let mut groups = s.split(char::from(sep)).map(str::len).peekable();
    let mut first = true;
    while let Some(l) = groups.next() {
        let ok = if first {
            l == 4
        } else if groups.peek().is_none() {
            (1..=6).contains(&l)
        } else {
            (3..=6).contains(&l)
        };
        if !ok {
            return false;
        }
        first = false;
    }
    true
}

fn is_card(text: &str, start: usize, s: &str) -> bool {
    let end = start + s.len();
    if continues_number_before(text, start) || continues_number_after(text, end) {
        return false;
    }
    let d = digits(s);
    if !(13..=19).contains(&d.len()) || !plausible_grouping(s) || !luhn(&d) || !plausible_issuer(&d)
    {
        return false;
    }
    !only_against(before(text, start, CONTEXT), CARD_WORDS, NOT_PII_WORDS)
}

/// SSN area, group and serial rules (SSA): no area 000, 666 or 900–999, no group 00, no
/// serial 0000.
pub fn valid_ssn(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let area = prefix(d, 3);
    let group = prefix(&d[3..], 2);
    let serial = prefix(&d[5..], 4);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn is_separated_ssn(text: &str, start: usize, end: usize, s: &str) -> bool {
    let b = s.as_bytes();
    if b.get(3) != b.get(6) {
        return false;
    }
    if continues_number_before(text, start) || continues_number_after(text, end) {
        return false;
    }
    if !valid_ssn(&digits(s)) {
        return false;
    }
    !only_against(before(text, start, CONTEXT), SSN_WORDS, NOT_PII_WORDS)
}

/// NANP rules for a ten-digit number: area code and exchange start with 2–9, and the
/// exchange is not N11.
pub fn valid_nanp(d: &[u8]) -> bool {
    let d = match d.len() {
        10 => d,
        11 if d.first() == Some(&1) => &d[1..],
        _ => return false,
    };
    d[0] >= 2 && d[3] >= 2 && !(d[4] == 1 && d[5] == 1) && !(d[1] == 1 && d[2] == 1)
}

/// An unseparated 9–11 digit number: an SSN or a phone number when the words before it
/// say so.
fn bare_number(text: &str, start: usize, s: &str) -> Option<Kind> {
    if continues_number_before(text, start) || continues_number_after(text, start + s.len()) {
        return None;
    }
    let d = digits(s);
    let window = before(text, start, CONTEXT);
    match d.len() {
        9 if valid_ssn(&d) && favours(window, SSN_WORDS, NOT_PII_WORDS) => Some(Kind::Ssn),
        10 | 11 if valid_nanp(&d) && favours(window, PHONE_WORDS, NOT_PII_WORDS) => {
            Some(Kind::Phone)
        }
        _ => None,
    }
}

fn is_nanp(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    // `(415)` and `+1` start with a non-word byte; a digit or letter before is a longer token.
    if continues_number_before(text, start)
        || (start > 0 && b.get(start - 1) == Some(&b'+'))
        || continues_number_after(text, end)
    {
        return false;
    }
    let Some(s) = text.get(start..end) else {
        return false;
    };
    if !valid_nanp(&digits(s)) {
        return false;
    }
    // A separated 3-3-4 number is a phone number unless only identifier words precede it.
    !only_against(before(text, start, CONTEXT), PHONE_WORDS, NOT_PII_WORDS)
}

fn is_ipv4(text: &str, start: usize, end: usize, s: &str) -> bool {
    let b = text.as_bytes();
    // Part of a longer dotted run (a version 1.2.3.4.5, an OID) or preceded by `v`.
    if continues_number_before(text, start)
        || (b.get(end) == Some(&b'.') && b.get(end + 1).is_some_and(u8::is_ascii_digit))
    {
        return false;
    }
    let addr = s.split('/').next().unwrap_or(s);
    if addr.parse::<Ipv4Addr>().is_err() {
        return false;
    }
    let window = before(text, start, 24);
    let ends_in_v = window.ends_with('v') || window.ends_with('V');
    !ends_in_v && nearest(window, VERSION_WORDS).is_none_or(|d| d > 12)
}

/// The end of an IPv6 address starting at `start`, if the candidate (less trailing
/// punctuation) parses as one.
fn ipv6_end(text: &str, start: usize, s: &str) -> Option<usize> {
    let b = text.as_bytes();
    if start > 0
        && b.get(start - 1)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b':')
    {
        return None;
    }
    if is_alnum_at(text, start + s.len()) {
        return None;
    }
    let mut cand = s;
    // Trailing sentence punctuation: `…2001:db8::1.` or `…::1:`.
    for _ in 0..2 {
        if cand.parse::<Ipv6Addr>().is_ok() {
            break;
        }
        cand = cand
            .strip_suffix('.')
            .or_else(|| cand.strip_suffix(':').filter(|c| !c.ends_with(':')))?;
    }
    let addr: Ipv6Addr = cand.parse().ok()?;
    // Times and scores (`10:30:45`) never parse; `::` alone and `::1`-like one-word
    // addresses need a little more than a colon pair to be worth a placeholder.
    (cand.len() >= 3 && !addr.is_unspecified()).then(|| start + cand.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_kinds as kinds;

    proptest::proptest! {
        /// The runs-of-digits reading finds exactly what the two patterns find on each
        /// cluster's haystack.
        #[test]
        fn digit_shapes_match_their_patterns(
            head in proptest::sample::select(vec!["", "a", "_", " ", "(", "+1 ", "x-"]),
            parts in proptest::collection::vec(
                (proptest::sample::select(vec![3usize, 2, 4, 9, 10, 11, 1, 5, 12]), proptest::sample::select(vec![" ", "-", ".", "/", "  ", " -", "_", "a", ")", ""])),
                0..7,
            ),
        ) {
            let mut text = head.to_string();
            for (n, sep) in &parts {
                text.extend("4827195306482719".chars().take(*n));
                text.push_str(sep);
            }
            check_digit_shapes(&text);
        }
    }

    static SHAPES: std::sync::LazyLock<(Regex, Regex)> = std::sync::LazyLock::new(|| {
        (
            Regex::new(SSN_SEPARATED).unwrap(),
            Regex::new(BARE_DIGITS).unwrap(),
        )
    });

    fn check_digit_shapes(text: &str) {
        let (ssn, bare) = &*SHAPES;
        for c in clusters(text) {
            let from = c.lookback(text);
            let hay = &text[from..c.end];
            let mut want: Vec<(Shape, usize, usize)> = Vec::new();
            for (shape, re) in [(Shape::Ssn, ssn), (Shape::Bare, bare)] {
                want.extend(
                    re.find_iter(hay)
                        .map(|m| (shape, from + m.start(), from + m.end())),
                );
            }
            let mut got = Vec::new();
            digit_shapes(text, &c, |shape, s, e| got.push((shape, s, e)));
            want.sort_by_key(|w| (w.1, w.2, w.0 == Shape::Bare));
            got.sort_by_key(|w| (w.1, w.2, w.0 == Shape::Bare));
            assert_eq!(got, want, "{text:?}");
        }
    }

    /// Every three runs of the lengths that matter, joined every way that matters.
    #[test]
    fn digit_shapes_match_their_patterns_exhaustively() {
        let lens = [2, 3, 4, 9, 11];
        let seps = [" ", "-", ".", "_", "", " -"];
        for head in ["", "a", "_", "1 "] {
            for a in lens {
                for b in lens {
                    for c in lens {
                        for s1 in seps {
                            for s2 in seps {
                                for s3 in seps {
                                    let d = |n: usize| "48271953064827".get(..n).unwrap_or("");
                                    let text =
                                        format!("{head}{}{s1}{}{s2}{}{s3}", d(a), d(b), d(c));
                                    check_digit_shapes(&text);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn luhn_accepts_test_cards_and_refuses_one_digit_off() {
        assert!(luhn(&digits("4111111111111111")));
        assert!(luhn(&digits("378282246310005")));
        assert!(luhn(&digits("6011111111111117")));
        assert!(!luhn(&digits("4111111111111112")));
        assert!(!luhn(&[]));
    }

    #[test]
    fn issuers_bind_prefix_to_length() {
        assert!(plausible_issuer(&digits("378282246310005")));
        assert!(!plausible_issuer(&digits("3782822463100050")));
        assert!(plausible_issuer(&digits("5555555555554444")));
        assert!(plausible_issuer(&digits("2223003122003222")));
        assert!(!plausible_issuer(&digits("9111111111111111")));
        assert!(!plausible_issuer(&digits("1111111111111117")));
    }

    #[test]
    fn cards_in_usual_groupings() {
        for c in [
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "4111111111111111",
            "3782 822463 10005",
            "3056 930902 5904",
            "6011 0009 9013 9424",
        ] {
            assert_eq!(
                kinds(&format!("card {c} ok")),
                vec![(Kind::Card, c.into())],
                "{c}"
            );
        }
        // Mixed separators, odd groups, failing Luhn, part of a longer run.
        for c in [
            "4111 1111-1111 1111",
            "41 11111111 111111",
            "4111 1111 1111 1112",
            "9400 1000 0000 0000 0000 00",
        ] {
            assert!(kinds(&format!("card {c} ok")).is_empty(), "{c}");
        }
    }

    #[test]
    fn identifier_words_keep_a_luhn_valid_number() {
        assert!(kinds("tracking number 4111111111111111").is_empty());
        assert_eq!(kinds("the card on file 4111111111111111").len(), 1);
    }

    #[test]
    fn ssn_invalid_ranges() {
        assert_eq!(
            kinds("ssn 123-45-6789"),
            vec![(Kind::Ssn, "123-45-6789".into())]
        );
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123-45 6789",
        ] {
            assert!(kinds(&format!("ssn {bad}")).is_empty(), "{bad}");
        }
        assert_eq!(
            kinds("my social is 123456789"),
            vec![(Kind::Ssn, "123456789".into())]
        );
        assert!(kinds("order 123456789").is_empty());
        assert!(kinds("it was 123456789").is_empty());
    }

    #[test]
    fn phone_formats() {
        for p in [
            "(415) 555-0123",
            "(415)555-0123",
            "415.555.0123",
            "415-555-0123",
            "415 555 0123",
            "+1 415 555 0123",
            "+1 (415) 555-0123",
            "1-800-555-0199",
            "+44 20 7946 0958",
            "+33 1 23 45 67 89",
        ] {
            assert_eq!(
                kinds(&format!("reach me at {p}.")),
                vec![(Kind::Phone, p.into())],
                "{p}"
            );
        }
        assert_eq!(
            kinds("call me on 4155550123"),
            vec![(Kind::Phone, "4155550123".into())]
        );
        assert!(kinds("order 4155550123").is_empty());
        assert!(kinds("it was 4155550123").is_empty());
        // Area code or exchange starting with 0 or 1.
        assert!(kinds("call 115-555-0123").is_empty());
        assert!(kinds("call 415-155-0123").is_empty());
    }

    #[test]
    fn ip_addresses_and_versions() {
        assert_eq!(
            kinds("from 203.0.113.7 today"),
            vec![(Kind::Ip, "203.0.113.7".into())]
        );
        assert_eq!(
            kinds("host 2001:db8::42."),
            vec![(Kind::Ip, "2001:db8::42".into())]
        );
        assert_eq!(
            kinds("addr fe80::1ff:fe23:4567:890a"),
            vec![(Kind::Ip, "fe80::1ff:fe23:4567:890a".into())]
        );
        assert!(kinds("version 10.2.1.5").is_empty());
        assert!(kinds("v1.2.3.4").is_empty());
        assert!(kinds("at 10:30:45 today").is_empty());
        assert!(kinds("mac 00:1A:2B:3C:4D:5E").is_empty());
        assert!(kinds("999.1.1.1").is_empty());
    }

    #[test]
    fn card_codes_near_card_words() {
        assert_eq!(kinds("the CVV is 123"), vec![(Kind::Cvv, "123".into())]);
        assert_eq!(
            kinds("and the code on the back is 4821."),
            vec![(Kind::Cvv, "4821".into())]
        );
        assert!(kinds("the total is 123").is_empty());
    }
}
