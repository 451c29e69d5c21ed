//! How a caller's number and name may be shown outside their sealed record.
//!
//! Two audiences, two tools:
//!
//! - **Logs** (the journal, stderr, events sent to the cloud): never the value.
//!   [`Redacted`] prints a keyed tag, `#` and 12 hex digits of HMAC-SHA256 under a key drawn
//!   from the kernel's CSPRNG when the process first needs it and never written anywhere
//!   (per boot of the daemon). The same number gives the same tag for as long as the daemon
//!   runs, so lines about one caller can be correlated; without the key the tag cannot be
//!   tested against guessed numbers (a plain hash of a phone number can: there are only
//!   about 10^10 of them per country). [`scrub`] replaces every number-like run in a free
//!   text (a console line, a refusal) with its tag.
//! - **The operator role** (`show cdrs`, `show calls`): [`mask_number`] keeps the country
//!   code and the last two digits (`+1 •••• 67`), [`mask_name`] the first letter (`A…`).
//!   Admins see the values (and are audited for it).
//!
//! Current limitation: [`scrub`] finds numbers, not names; names reach logs only where a
//! caller's record is, which no log line prints (their [`crate::Pii`] `Debug` shows nothing).

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A personal value as a log line may show it: a keyed, per-process tag, never the value.
///
/// A number (digits with `+`, spaces, dots, dashes, parentheses) is tagged by its digits,
/// so `+1 555 123 4567` and `+15551234567` share a tag; anything else by its bytes.
#[derive(Clone, Copy)]
pub struct Redacted<T>(pub T);

impl<T: AsRef<str>> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match tag(self.0.as_ref()) {
            Some(t) => write!(f, "#{t}"),
            None => f.write_str("#redacted"),
        }
    }
}

impl<T: AsRef<str>> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The process's tag key: 32 bytes from the kernel's CSPRNG; `None` if it failed (tags are
/// then left out altogether rather than made with a guessable key).
fn key() -> Option<&'static [u8; 32]> {
    static KEY: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).ok().map(|()| k)
    })
    .as_ref()
}

fn is_phone_char(c: char) -> bool {
    c.is_ascii_digit() || " +-.()/".contains(c)
}

/// 12 hex digits of HMAC-SHA256(process key, the value normalised).
fn tag(value: &str) -> Option<String> {
    let key = key()?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    if value.chars().all(is_phone_char) && value.chars().any(|c| c.is_ascii_digit()) {
        mac.update(b"n");
        for c in value.chars().filter(char::is_ascii_digit) {
            mac.update(&[c as u8]);
        }
    } else {
        mac.update(b"s");
        mac.update(value.as_bytes());
    }
    let out = mac.finalize().into_bytes();
    Some(out[..6].iter().map(|b| format!("{b:02x}")).collect())
}

/// How many digits make a run a number worth hiding: shorter ones are ports, counts,
/// revision and session numbers, years.
pub const SCRUB_MIN_DIGITS: usize = 6;

/// `text` with every number-like run of [`SCRUB_MIN_DIGITS`] digits or more replaced by
/// its [`Redacted`] tag: E.164 (`+15551234567`), national digits (`5551234567`), and the
/// usual spellings (`+1 555 123 4567`, `(555) 123-4567`, `555.123.4567`). Kept as they are:
/// dotted IPv4 addresses and ISO dates (`2026-12-05`).
pub fn scrub(text: &str) -> Cow<'_, str> {
    let runs = number_runs(text);
    if runs.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in runs {
        out.push_str(&text[at..start]);
        out.push_str(&Redacted(&text[start..end]).to_string());
        at = end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

/// A [`scrub`]bed text as a `Display` (for format arguments).
#[derive(Debug, Clone, Copy)]
pub struct Scrubbed<'a>(pub &'a str);

impl fmt::Display for Scrubbed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&scrub(self.0))
    }
}

/// Does `text` hold the phone number `number` (E.164) in any spelling [`scrub`] finds: a
/// number-like run whose digits are the number's, or its last seven or more (national and
/// local spellings)?
pub fn holds_number(text: &str, number: &str) -> bool {
    let want: String = number.chars().filter(char::is_ascii_digit).collect();
    if want.len() < SCRUB_MIN_DIGITS {
        return false;
    }
    number_runs(text).into_iter().any(|(a, b)| {
        let got: String = text
            .get(a..b)
            .unwrap_or("")
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        got == want || (got.len() >= 7 && want.ends_with(&got))
    })
}

/// The byte ranges of the number-like runs [`scrub`] replaces.
fn number_runs(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit()
            || (b[i] == b'+' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
            || (b[i] == b'(' && b.get(i + 1).is_some_and(u8::is_ascii_digit));
        if !starts {
            i += 1;
            continue;
        }
        let (end, digits, ip_or_date) = run_at(b, i);
        if digits >= SCRUB_MIN_DIGITS && !ip_or_date {
            runs.push((i, end));
        }
        i = end.max(i + 1);
    }
    runs
}

/// The run starting at `start`: where it ends, its digits, and whether it is a dotted IPv4
/// address or an ISO date (kept).
///
/// Groups are digits joined by `-`, `(`, `)` or `/`; groups are joined into one run by a
/// single space or dot (one kind per run) when the group before has at most 4 digits, as
/// phone numbers are written (`+1 555 123 4567`), and a date's or an address's are not
/// followed by more digits.
fn run_at(b: &[u8], start: usize) -> (usize, usize, bool) {
    let mut i = start;
    if b[i] == b'+' {
        i += 1;
    }
    let mut digits = 0;
    let mut soft: Option<u8> = None;
    let mut groups: Vec<(usize, usize)> = Vec::new(); // (start, end) of each group
    loop {
        // One group: digits joined by hard separators.
        let g_start = i;
        let mut g_digits = 0;
        let mut end = i;
        while i < b.len() {
            let c = b[i];
            if c.is_ascii_digit() {
                g_digits += 1;
                i += 1;
                end = i;
            } else if matches!(c, b'-' | b'/' | b'(' | b')')
                && b.get(i + 1)
                    .is_some_and(|n| n.is_ascii_digit() || *n == b'(')
            {
                i += 1;
            } else if c == b')' {
                // A closing parenthesis ends a group: `(555) 123-4567`.
                i += 1;
                end = i;
                break;
            } else {
                break;
            }
        }
        digits += g_digits;
        groups.push((g_start, end));
        i = end;
        // A soft separator, then another group?
        let Some(&sep) = b.get(i) else { break };
        let next_starts = b
            .get(i + 1)
            .is_some_and(|n| n.is_ascii_digit() || *n == b'(');
        if !matches!(sep, b' ' | b'.') || !next_starts || g_digits > 4 {
            break;
        }
        if soft.is_some_and(|s| s != sep) {
            break;
        }
        soft = Some(sep);
        i += 1;
    }
    let end = groups.last().map_or(start, |g| g.1);
    let text = &b[start..end];
    let ipv4 = soft == Some(b'.')
        && groups.len() == 4
        && groups.iter().all(|(s, e)| {
            let g = &b[*s..*e];
            (1..=3).contains(&g.len()) && g.iter().all(u8::is_ascii_digit)
        });
    let date = text.len() == 10
        && text.iter().enumerate().all(|(k, c)| {
            if k == 4 || k == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    (end, digits, ipv4 || date)
}

/// The country code of an E.164 number's digits (ITU-T E.164 assignments: 1 and 7 are one
/// digit, the listed ones two, every other three).
fn country_code(digits: &str) -> &str {
    const TWO: [&str; 44] = [
        "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46",
        "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63",
        "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
    ];
    let len = if digits.starts_with('1') || digits.starts_with('7') {
        1
    } else if TWO.iter().any(|p| digits.starts_with(p)) {
        2
    } else {
        3
    };
    digits.get(..len).unwrap_or(digits)
}

/// The hidden middle of a mask.
pub const MASK: &str = "••••";

/// A caller number as the operator role sees it: the country code and the last two digits
/// of an E.164 number (`+15551234567` → `+1 •••• 67`), the last two digits of a national
/// one (`5551234567` → `•••• 67`), and nothing of anything else (`••••`; empty stays
/// empty). The length is never shown.
pub fn mask_number(number: &str) -> String {
    let n = number.trim();
    if n.is_empty() {
        return String::new();
    }
    let digits: String = n.chars().filter(char::is_ascii_digit).collect();
    let phone = n.chars().all(is_phone_char);
    match (phone, n.starts_with('+'), digits.len()) {
        (true, true, 6..) => {
            let last = &digits[digits.len() - 2..];
            format!("+{} {MASK} {last}", country_code(&digits))
        }
        (true, false, 6..) => format!("{MASK} {}", &digits[digits.len() - 2..]),
        _ => MASK.to_owned(),
    }
}

/// A caller's display name as the operator role sees it: its first letter and `…`
/// (`Ada Lovelace` → `A…`); empty stays empty.
pub fn mask_name(name: &str) -> String {
    let n = name.trim().trim_matches('"').trim();
    match n.chars().next() {
        Some(c) => format!("{c}…"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_number_is_found_in_its_spellings_and_only_it() {
        let n = "+14155550177";
        for t in [
            "show subject +14155550177",
            "x 1 415 555 0177 y",
            "(415) 555-0177",
            "415.555.0177",
            "call 5550177 now",
        ] {
            assert!(holds_number(t, n), "{t}");
        }
        for t in [
            "show subject +14155550178",
            "5550178",
            "2026-12-05",
            "10.0.0.177",
            "0177",
        ] {
            assert!(!holds_number(t, n), "{t}");
        }
    }

    #[test]
    fn a_redacted_number_is_a_keyed_tag_stable_within_the_process() {
        let a = Redacted("+15551234567").to_string();
        assert!(a.starts_with('#') && a.len() == 13, "{a}");
        assert!(!a.contains("5551234567"));
        assert_eq!(
            a,
            Redacted("+1 555 123 4567").to_string(),
            "same digits, same tag"
        );
        assert_ne!(a, Redacted("+15551234568").to_string());
        assert_eq!(
            format!("{:?}", Redacted("Ada")),
            Redacted("Ada").to_string()
        );
        assert_ne!(Redacted("Ada").to_string(), Redacted("Bob").to_string());
    }

    #[test]
    fn the_tag_is_not_a_plain_hash_of_the_number() {
        // The digits' bare SHA-256 (what a brute force would compute) is not the tag.
        use sha2::Digest;
        let plain = sha2::Sha256::digest(b"15551234567");
        let hex: String = plain[..6].iter().map(|b| format!("{b:02x}")).collect();
        assert_ne!(Redacted("+15551234567").to_string(), format!("#{hex}"));
    }

    #[test]
    fn scrub_hides_every_spelling_of_a_number_and_keeps_the_rest() {
        for line in [
            "show subject +15551234567",
            "request subject erase 5551234567",
            "request subject export +1 555 123 4567 format csv",
            "show subject (555) 123-4567",
            "show subject 555.123.4567",
            "show subject 555-123-4567",
            "sip:+15551234567@203.0.113.5",
            "tel:+44-20-7946-0958",
        ] {
            let s = scrub(line);
            for needle in ["5551234567", "555 123 4567", "123-4567", "123.4567", "7946"] {
                assert!(!s.contains(needle), "{line} -> {s}");
            }
            assert!(s.contains('#'), "{line} -> {s}");
        }
        for kept in [
            "rollback 12",
            "show cdrs --last 10000",
            "set firewall allow 203.0.113.5 5060",
            "locked since 2026-12-05 11:37:04 UTC (session 4242)",
            "ping 2001:db8::1",
            "",
        ] {
            assert_eq!(scrub(kept), kept);
        }
        assert_eq!(
            scrub("a +15551234567 b").replace(&Redacted("+15551234567").to_string(), "T"),
            "a T b"
        );
        assert_eq!(Scrubbed("x 5551234567").to_string(), scrub("x 5551234567"));
    }

    #[test]
    fn scrub_never_panics_on_odd_text() {
        for s in [
            "+",
            "(",
            "((((1",
            "1)",
            "9-",
            "+(",
            "12.34.56.78.90",
            "é5551234567é",
            "1 2 3 4 5 6 7",
        ] {
            let _ = scrub(s);
        }
        assert!(!scrub("é5551234567é").contains("5551234567"));
        assert!(!scrub("1 2 3 4 5 6 7").contains("4 5 6"));
    }

    #[test]
    fn masks_keep_the_country_code_and_two_digits_or_the_first_letter() {
        assert_eq!(mask_number("+15551234567"), "+1 •••• 67");
        assert_eq!(mask_number("+442079460958"), "+44 •••• 58");
        assert_eq!(mask_number("+35312345678"), "+353 •••• 78");
        assert_eq!(mask_number("+74951234567"), "+7 •••• 67");
        assert_eq!(mask_number("5551234567"), "•••• 67");
        assert_eq!(mask_number("anonymous"), "••••");
        assert_eq!(mask_number("12345"), "••••");
        assert_eq!(mask_number(""), "");
        assert_eq!(mask_name("Ada Lovelace"), "A…");
        assert_eq!(mask_name("\"Émile\""), "É…");
        assert_eq!(mask_name(""), "");
    }
}
