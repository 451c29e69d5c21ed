//! # callgate-cdr: the call detail record
//!
//! The record of one call as the proxy produces it and the store keeps it: [`Cdr`], its
//! personal fields ([`Pii`]), how the call ended ([`Disposition`]), and for a call in
//! progress what a restarted daemon needs to carry it on ([`Resume`]). Plain data with
//! serde, no I/O: the SIP proxy builds records without depending on the store (sled, the
//! vault), and the store seals them.
//!
//! How a caller's number and name may be shown elsewhere is here too ([`shown`]): keyed
//! tags for logs ([`Redacted`], [`scrub`]) and the operator role's masks ([`mask_number`],
//! [`mask_name`]), one helper for every crate.

use std::fmt;

pub mod shown;
pub use shown::{holds_number, mask_name, mask_number, scrub, Redacted, Scrubbed};

use serde::{Deserialize, Serialize};

/// A personal field: clear text, or gone because the subject's key was shredded.
///
/// `Debug` never prints the value (logs must not carry PII); use [`Pii::reveal`]
/// deliberately. Serializes as the string, or `null` when erased (for a subject's export).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "Option<String>")]
pub enum Pii {
    Clear(String),
    Erased,
}

impl Pii {
    pub fn new(value: impl Into<String>) -> Pii {
        Pii::Clear(value.into())
    }

    pub fn reveal(&self) -> Option<&str> {
        match self {
            Pii::Clear(s) => Some(s),
            Pii::Erased => None,
        }
    }

    pub fn is_erased(&self) -> bool {
        matches!(self, Pii::Erased)
    }

    /// As the operator role sees it, a number ([`mask_number`]); `None` once erased.
    pub fn masked_number(&self) -> Option<String> {
        self.reveal().map(mask_number)
    }

    /// As the operator role sees it, a name ([`mask_name`]); `None` once erased.
    pub fn masked_name(&self) -> Option<String> {
        self.reveal().map(mask_name)
    }
}

impl From<Option<String>> for Pii {
    fn from(v: Option<String>) -> Pii {
        v.map_or(Pii::Erased, Pii::Clear)
    }
}

/// As `Option<String>` would, without copying the value first (serde's `into` clones).
impl Serialize for Pii {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pii::Clear(v) => s.serialize_some(v.as_str()),
            Pii::Erased => s.serialize_none(),
        }
    }
}

impl From<Pii> for Option<String> {
    fn from(p: Pii) -> Option<String> {
        match p {
            Pii::Clear(s) => Some(s),
            Pii::Erased => None,
        }
    }
}

impl fmt::Debug for Pii {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pii::Clear(_) => f.write_str("Pii(…)"),
            Pii::Erased => f.write_str("Pii::Erased"),
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    Answered,
    NoAnswer,
    Busy,
    Cancelled,
    Failed,
    Rejected,
}

/// A call detail record. Times are unix milliseconds.
///
/// `caller` and `caller_name` are sealed under the caller's subject key (subject = the caller
/// number) in addition to the record's data key; after [`crate::Store::erase_subject`] they
/// read back as [`Pii::Erased`] and the rest stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    pub call_id: String,
    pub tracking_number: String,
    pub campaign: String,
    pub caller: Pii,
    pub caller_name: Option<Pii>,
    pub destination: String,
    pub invite_at: u64,
    pub ring_at: Option<u64>,
    pub answer_at: Option<u64>,
    pub end_at: Option<u64>,
    pub duration_ms: u64,
    pub disposition: Disposition,
    pub final_code: u16,
    pub appliance: String,
    /// The appliance of the pair that ended the call, when it is not the one that answered
    /// it (the peer carried the call on after a failover); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// On the answer-time record of a call in progress only: what a restarted daemon needs
    /// to carry the call on (see [`Resume`]). `None` on final records.
    pub resume: Option<Resume>,
}

/// One party of a call in progress, as the proxy reached it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    /// Over TCP or TLS (else UDP).
    pub tcp: bool,
    /// Over TLS (and `tcp`). Absent in records written before SIP over TLS: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// Its signalling address.
    pub addr: std::net::SocketAddr,
    /// Our socket toward it.
    pub local: std::net::SocketAddr,
    /// The media addresses it described (RTP, RTCP).
    pub media: Vec<std::net::SocketAddr>,
}

/// What a restarted daemon needs to recognise the in-dialog requests of a call that was in
/// progress, complete its record at BYE or at the maximum call length, and close its
/// pinholes. Never personal data: tags are random, the addresses are the carrier's and
/// the private segment's equipment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The caller's From tag (tells which party sent an in-dialog request).
    pub from_tag: String,
    pub caller: Party,
    pub callee: Party,
    /// The carrier's media pool (prefixes), when its media comes from one.
    pub media_pool: Vec<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pii_never_shows_in_debug_and_erased_serializes_as_null() {
        let p = Pii::new("+14155550123");
        assert_eq!(format!("{p:?}"), "Pii(…)");
        assert_eq!(serde_json::to_string(&Pii::Erased).unwrap(), "null");
        let back: Pii = serde_json::from_str("\"+14155550123\"").unwrap();
        assert_eq!(back.reveal(), Some("+14155550123"));
    }
}
