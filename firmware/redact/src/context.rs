//! Context words around a candidate: what tips a bare number towards PII or away from it.

/// Words that make a number a payment card (or its code).
pub(crate) const CARD_WORDS: &[&str] = &[
    "card",
    "visa",
    "mastercard",
    "master card",
    "amex",
    "american express",
    "discover",
    "credit",
    "debit",
    "cc",
    "pan",
];

/// Words that make a number a phone number.
pub(crate) const PHONE_WORDS: &[&str] = &[
    "phone",
    "call",
    "called",
    "calling",
    "cell",
    "mobile",
    "reach",
    "text",
    "callback",
    "fax",
    "landline",
    "dial",
    "contact",
    "tel",
    "telephone",
    "home number",
    "work number",
];

/// Words that make a nine-digit number a social security number.
pub(crate) const SSN_WORDS: &[&str] = &[
    "ssn",
    "social security",
    "social",
    "ss#",
    "ss number",
    "taxpayer",
    "tin",
];

/// Words that say a number is an identifier that is not personal data: orders, parcels,
/// tickets, accounts, references.
pub(crate) const NOT_PII_WORDS: &[&str] = &[
    "order",
    "tracking",
    "track",
    "shipment",
    "package",
    "parcel",
    "reference",
    "ref",
    "confirmation",
    "ticket",
    "case",
    "invoice",
    "account",
    "acct",
    "policy",
    "member",
    "claim",
    "transaction",
    "serial",
    "sku",
    "routing",
    "iban",
    "booking",
    "reservation",
    "loan",
    "receipt",
    "model",
    "part",
];

/// Words before a dotted quad that make it a version, not an address.
pub(crate) const VERSION_WORDS: &[&str] = &[
    "version", "v", "ver", "firmware", "build", "release", "app", "update", "os",
];

/// The text up to `max` bytes before `start` (cut at a character boundary).
pub(crate) fn before(text: &str, start: usize, max: usize) -> &str {
    let mut from = start.saturating_sub(max);
    while from < start && !text.is_char_boundary(from) {
        from += 1;
    }
    text.get(from..start).unwrap_or("")
}

/// The text up to `max` bytes from `start` (cut at a character boundary).
pub(crate) fn after(text: &str, start: usize, max: usize) -> &str {
    let mut to = start.saturating_add(max).min(text.len());
    while to > start && !text.is_char_boundary(to) {
        to -= 1;
    }
    text.get(start..to).unwrap_or("")
}

/// Where the last whole-word occurrence of any of `words` ends in `window`, measured as the
/// distance from the window's end (0 = touching), ASCII case-insensitively. A word matches
/// at a word start; its end may run into a plural or inflection ("orders", "calling").
pub(crate) fn nearest(window: &str, words: &[&str]) -> Option<usize> {
    // Lower-cased once into a stack buffer (windows are short); longer windows keep their
    // last 128 bytes, which is all any caller looks at.
    let mut buf = [0u8; 128];
    let src = window.as_bytes();
    let src = src
        .get(src.len().saturating_sub(buf.len())..)
        .unwrap_or(src);
    let hay = buf.get_mut(..src.len())?;
    for (d, s) in hay.iter_mut().zip(src) {
        *d = s.to_ascii_lowercase();
    }
    let hay: &[u8] = hay;
    // The first bytes of the words (all ASCII): a position whose byte is not among them
    // is skipped without looking at any word.
    let mut firsts = 0u128;
    for w in words {
        if let Some(f) = w.as_bytes().first().filter(|f| f.is_ascii()) {
            firsts |= 1 << f;
        }
    }
    // One pass over the word starts; the nearest is the match that ends last (the same
    // answer as the last occurrence of each word, then the nearest of those).
    let mut best: Option<usize> = None;
    let mut prev_alnum = false;
    for (i, &c) in hay.iter().enumerate() {
        let starts_word = !prev_alnum;
        prev_alnum = c.is_ascii_alphanumeric();
        if !starts_word || !c.is_ascii() || firsts & (1 << c) == 0 {
            continue;
        }
        let rest = hay.get(i..).unwrap_or(&[]);
        for word in words {
            let w = word.as_bytes();
            if w.first() == Some(&c)
                && rest.starts_with(w)
                && suffix_ok(rest.get(w.len()..).unwrap_or(&[]))
            {
                let distance = hay.len() - (i + w.len());
                best = Some(best.map_or(distance, |b| b.min(distance)));
            }
        }
    }
    best
}

/// After a context word: its end, or a short inflection ("s", "ed", "ing", "'s") then the end.
fn suffix_ok(rest: &[u8]) -> bool {
    let word_len = rest
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'\'')
        .count();
    if word_len == 0 {
        return true;
    }
    let tail = &rest[..word_len];
    [&b"s"[..], b"es", b"ed", b"ing", b"'s", b"ers", b"er"]
        .iter()
        .any(|s| tail.eq_ignore_ascii_case(s))
}

/// True when a word of `yes` appears in `window` and is nearer the candidate than every
/// word of `no`.
pub(crate) fn favours(window: &str, yes: &[&str], no: &[&str]) -> bool {
    match (nearest(window, yes), nearest(window, no)) {
        (Some(y), Some(n)) => y <= n,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// True when `window` holds a word of `no` and none of `yes`.
pub(crate) fn only_against(window: &str, yes: &[&str], no: &[&str]) -> bool {
    nearest(window, yes).is_none() && nearest(window, no).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_match_at_word_starts_only() {
        assert_eq!(nearest("please call me at", PHONE_WORDS), Some(6));
        assert_eq!(nearest("my orders number", NOT_PII_WORDS), Some(8));
        assert_eq!(nearest("I prefer this", NOT_PII_WORDS), None);
        assert_eq!(nearest("recorder", NOT_PII_WORDS), None);
    }

    #[test]
    fn the_nearer_word_wins() {
        assert!(!favours("card on the account", CARD_WORDS, NOT_PII_WORDS));
        assert!(favours("account, the card", CARD_WORDS, NOT_PII_WORDS));
        assert!(only_against("tracking number", CARD_WORDS, NOT_PII_WORDS));
    }

    #[test]
    fn windows_cut_at_char_boundaries() {
        let t = "ééé123";
        assert_eq!(before(t, 6, 3), "é");
        assert_eq!(before(t, 0, 10), "");
    }
}
