//! The item that goes to the cloud: the submission redacted, as JSON. Pure.

use std::collections::BTreeMap;

use callgate_redact::Redactor;

use crate::request::Submission;

/// The largest item (JSON bytes) queued: what the uplink sends in one message, with room
/// to spare (a text of many escaped characters grows when it is made JSON).
pub const MAX_ITEM: usize = 255 * 1024;

/// An item ready to queue: its id, its JSON, and how many spans of each kind it lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub json: Vec<u8>,
    pub redactions: BTreeMap<&'static str, u32>,
}

/// A new item id: 128 bits from the kernel's CSPRNG, hex.
pub fn new_id() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Redacts `sub` and builds its item. Only the redacted text is in the result.
pub fn build(
    redactor: &Redactor,
    appliance: &str,
    id: String,
    received_ms: u64,
    sub: &Submission,
) -> Item {
    let r = redactor.redact(&sub.text);
    let mut redactions: BTreeMap<&'static str, u32> = BTreeMap::new();
    for s in &r.spans {
        *redactions.entry(s.kind.as_str()).or_default() += 1;
    }
    let doc = serde_json::json!({
        "appliance": appliance,
        "id": id,
        "call_id": sub.call_id,
        "kind": sub.kind.as_str(),
        "received_ms": received_ms,
        "text": r.text,
        "redactions": redactions,
    });
    Item {
        id,
        json: serde_json::to_vec(&doc).unwrap_or_default(),
        redactions,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use crate::request::Kind;
    use zeroize::Zeroizing;

    #[test]
    fn the_item_holds_the_redacted_text_and_the_counts() {
        let sub = Submission {
            call_id: "c-1@pbx".into(),
            kind: Kind::Transcript,
            text: Zeroizing::new(
                "Card 4111 1111 1111 1111, SSN 123-45-6789, mail ana@example.com, order 55012 for $42.50 on 2026-03-04".into(),
            ),
        };
        let id = new_id().unwrap();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_id().unwrap());
        let it = build(&Redactor::new(), "lab-a", id.clone(), 7, &sub);
        let v: serde_json::Value = serde_json::from_slice(&it.json).unwrap();
        assert_eq!(v["appliance"], "lab-a");
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["call_id"], "c-1@pbx");
        assert_eq!(v["kind"], "transcript");
        assert_eq!(v["received_ms"], 7);
        let text = v["text"].as_str().unwrap();
        for gone in ["4111", "123-45-6789", "ana@example.com"] {
            assert!(!text.contains(gone), "{text}");
        }
        for kept in ["55012", "$42.50", "2026-03-04"] {
            assert!(text.contains(kept), "{text}");
        }
        assert_eq!(v["redactions"]["card"], 1);
        assert_eq!(v["redactions"]["ssn"], 1);
        assert_eq!(v["redactions"]["email"], 1);
        let raw = String::from_utf8(it.json).unwrap();
        assert!(!raw.contains("4111 1111"), "{raw}");
    }
}
