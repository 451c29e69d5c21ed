#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! Attacker-shaped input: no panics, well-formed spans, nothing detected survives, and
//! megabyte inputs built to make a backtracking matcher blow up finish in linear time.

use callgate_redact::{redact, Redactor};
use proptest::prelude::*;

/// Spans in order, disjoint, on character boundaries; the output is the input with each
/// span replaced by its placeholder.
fn check(text: &str) {
    let r = redact(text);
    let mut at = 0;
    let mut rebuilt = String::new();
    for s in &r.spans {
        assert!(
            at <= s.start && s.start < s.end && s.end <= text.len(),
            "{s:?}"
        );
        assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end));
        rebuilt.push_str(&text[at..s.start]);
        rebuilt.push_str(s.kind.placeholder());
        at = s.end;
    }
    rebuilt.push_str(&text[at..]);
    assert_eq!(rebuilt, r.text);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_string(text in any::<String>()) {
        check(&text);
    }

    #[test]
    fn digit_and_separator_soup(text in "[0-9 ().+/:@a-fA-Z-]{0,200}") {
        check(&text);
    }

    #[test]
    fn pii_between_any_text(
        pre in "[ -~é]{0,20}",
        post in "[ -~ü]{0,20}",
        pii in prop::sample::select(vec![
            "4111 1111 1111 1111", "123-45-6789", "(415) 555-0123", "jane@example.com",
            "203.0.113.9", "2001:db8::7",
        ]),
    ) {
        let text = format!("{pre} {pii} {post}");
        check(&text);
        // Detected or not, a detected value never survives in the output.
        let r = redact(&text);
        for s in &r.spans {
            let found = &text[s.start..s.end];
            prop_assert!(!r.text.contains(found) || found.len() < 4 || text.matches(found).count() > 1);
        }
    }
}

#[test]
fn megabyte_adversarial_inputs_finish() {
    let r = Redactor::new();
    let mb = 1 << 20;
    let cases: Vec<String> = vec![
        "1".repeat(mb),
        "1 ".repeat(mb / 2),
        "4111-".repeat(mb / 5),
        "a@".repeat(mb / 2),
        "a.".repeat(mb / 2) + "@",
        ":".repeat(mb),
        "1:".repeat(mb / 2),
        "1.".repeat(mb / 2),
        "my name is ".repeat(mb / 11),
        "Ann ".repeat(mb / 4),
        "12 Oak ".repeat(mb / 7),
        "cvv ".repeat(mb / 4),
        "x dot ".repeat(mb / 6) + "at example dot com",
        "+1 (".repeat(mb / 4),
        "é1".repeat(mb / 3),
    ];
    for text in &cases {
        let t = std::time::Instant::now();
        let out = r.redact(text);
        // Printed, not asserted: timing depends on the machine.
        println!(
            "{:>8} bytes of {:?}…: {} spans in {:?}",
            text.len(),
            &text[..text.char_indices().nth(8).map_or(text.len(), |(i, _)| i)],
            out.spans.len(),
            t.elapsed()
        );
    }
}
