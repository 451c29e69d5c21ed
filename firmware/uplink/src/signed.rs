//! Documents the cloud signs with the fleet's key: config documents on `config/desired`
//! (what is reported back goes on `config/reported`), and subject requests on
//! `subjects/request` ([`SubjectRequest`]). One verifier, [`verify_signed`], checks both:
//! the size, the form, the appliance named, then the signature over the document's own
//! domain-separated bytes ([`Signed`]). What is particular to each (a config's version
//! newer than the last; a request's issue time in the window, its id never answered
//! before) is checked after it.
//!
//! ```json
//! {"appliance":"lab-a","version":7,"config":"…the config, TOML…","signature":"…base64…"}
//! ```
//!
//! The signature is Ed25519 by the fleet's key (its public half is `[uplink] fleet_key`;
//! the private half never reaches an appliance) over
//! `"callgate-config/1" 0x00 appliance 0x00 version (u64, big-endian) config`: a document
//! signed for one appliance does not verify on another, and the version is signed with
//! the text. [`verify`] checks the form, the appliance, the signature and that the version
//! is newer than the last one accepted; the daemon then checks the config as it checks a
//! local commit and applies it as a confirmed commit.
//!
//! ## Subject requests (`callgate-subject/1`)
//! ```json
//! {"appliance":"lab-a","request_id":"r-17","kind":"erase","format":null,
//!  "number":"+14155550177","issued_ms":1796000000000,"requester":"privacy-desk",
//!  "signature":"…base64…"}
//! ```
//! `kind` is `access` (what is held: `show subject`), `export` (with `format` `json` or
//! `csv`) or `erase`. The signature is over `"callgate-subject/1" 0x00` then each field as
//! a length (u32, big-endian) and its bytes: appliance, request id, kind, format (empty
//! when none), number; then the issue time (u64 BE, Unix ms); then the requester. A request
//! id and a requester are 1 to 64 characters of `A-Z a-z 0-9 . _ - : @`; the number is
//! checked by the daemon as the console checks it. [`check_window`] refuses an issue time
//! more than the window away from the appliance's clock; the daemon refuses an id it has
//! answered before.

use ring::signature::{UnparsedPublicKey, ED25519};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The largest document accepted (the config text and its envelope).
pub const MAX_DOCUMENT: usize = 512 * 1024;
const DOMAIN: &[u8] = b"callgate-config/1\0";
const SUBJECT_DOMAIN: &[u8] = b"callgate-subject/1\0";
/// The largest subject request accepted.
pub const MAX_SUBJECT_REQUEST: usize = 4 * 1024;

/// A document signed by the fleet's key: what it is, the appliance it names, its
/// signature (base64) and the bytes signed (its own domain first).
pub trait Signed: DeserializeOwned {
    /// What it is, for refusals ("a config document").
    const WHAT: &'static str;
    /// The largest document accepted, bytes.
    const MAX: usize;
    fn appliance(&self) -> &str;
    fn signature(&self) -> &str;
    fn signed_bytes(&self) -> Vec<u8>;
    /// Checks of its own form, after it parsed.
    fn check_form(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Checks a document of type `T` for `appliance` under `fleet_key`: its size, its form,
/// the appliance it names and the fleet's signature, in that order.
pub fn verify_signed<T: Signed>(
    raw: &[u8],
    appliance: &str,
    fleet_key: Option<&[u8; 32]>,
) -> Result<T, Refusal> {
    use base64::Engine as _;
    if raw.len() > T::MAX {
        return Err(Refusal::Malformed(format!(
            "{} bytes, over the {} allowed",
            raw.len(),
            T::MAX
        )));
    }
    let doc: T = serde_json::from_slice(raw)
        .map_err(|e| Refusal::Malformed(format!("not {}: {e}", T::WHAT)))?;
    doc.check_form()
        .map_err(|e| Refusal::Malformed(format!("not {}: {e}", T::WHAT)))?;
    if doc.appliance() != appliance {
        return Err(Refusal::OtherAppliance(doc.appliance().to_owned()));
    }
    let key = fleet_key.ok_or(Refusal::NoFleetKey)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(doc.signature().trim())
        .map_err(|_| Refusal::BadSignature)?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&doc.signed_bytes(), &sig)
        .map_err(|_| Refusal::BadSignature)?;
    Ok(doc)
}

/// A document as the cloud sends it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    pub appliance: String,
    pub version: u64,
    pub config: String,
    /// Base64 (standard) of the 64-byte Ed25519 signature.
    pub signature: String,
}

impl Signed for Document {
    const WHAT: &'static str = "a config document";
    const MAX: usize = MAX_DOCUMENT;
    fn appliance(&self) -> &str {
        &self.appliance
    }
    fn signature(&self) -> &str {
        &self.signature
    }
    fn signed_bytes(&self) -> Vec<u8> {
        signed_bytes(&self.appliance, self.version, &self.config)
    }
}

/// The bytes the fleet's key signs.
pub fn signed_bytes(appliance: &str, version: u64, config: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + appliance.len() + 9 + config.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(appliance.as_bytes());
    m.push(0);
    m.extend_from_slice(&version.to_be_bytes());
    m.extend_from_slice(config.as_bytes());
    m
}

/// Why a document was refused (said in the reported state; nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the document is malformed: {0}")]
    Malformed(String),
    #[error("the document is for appliance '{0}', not this one")]
    OtherAppliance(String),
    #[error("no fleet key is configured ([uplink] fleet_key): config from the cloud is refused")]
    NoFleetKey,
    #[error("the signature does not verify under the fleet key")]
    BadSignature,
    #[error("version {got} is not newer than version {last}, already accepted (a replay?)")]
    Replay { got: u64, last: u64 },
    #[error("the config is invalid: {0}")]
    Invalid(String),
    #[error("the commit failed: {0}")]
    Commit(String),
    #[error("issued at {issued_ms} (Unix ms), more than {window_s}s from this appliance's clock ({now_ms}): too old or from the future (a replay?)")]
    Stale {
        issued_ms: u64,
        now_ms: u64,
        window_s: u64,
    },
    #[error("request {0} was answered already (a replay?)")]
    Answered(String),
}

/// Checks a document for `appliance` under `fleet_key`, newer than `last_version`.
pub fn verify(
    raw: &[u8],
    appliance: &str,
    fleet_key: Option<&[u8; 32]>,
    last_version: Option<u64>,
) -> Result<Document, Refusal> {
    let doc: Document = verify_signed(raw, appliance, fleet_key)?;
    if let Some(last) = last_version {
        if doc.version <= last {
            return Err(Refusal::Replay {
                got: doc.version,
                last,
            });
        }
    }
    Ok(doc)
}

/// What a subject request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    /// What is held about the number (`show subject`).
    Access,
    /// Every record of the number, as JSON or CSV.
    Export,
    /// The number's erasure, with its signed receipt.
    Erase,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Access => "access",
            SubjectKind::Export => "export",
            SubjectKind::Erase => "erase",
        }
    }
}

/// A subject request as the cloud sends it on `subjects/request`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRequest {
    pub appliance: String,
    pub request_id: String,
    pub kind: SubjectKind,
    /// `json` or `csv` for an export; none otherwise.
    #[serde(default)]
    pub format: Option<String>,
    pub number: String,
    pub issued_ms: u64,
    /// Who asked, at the cloud: the receipt's and the audit trail's `by`.
    pub requester: String,
    /// Base64 (standard) of the 64-byte Ed25519 signature.
    pub signature: String,
}

/// Whether `s` is a request id or a requester: 1 to 64 of `A-Z a-z 0-9 . _ - : @`.
pub fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@".contains(&b))
}

impl SubjectRequest {
    /// The bytes the fleet's key signs.
    pub fn bytes_to_sign(
        appliance: &str,
        request_id: &str,
        kind: SubjectKind,
        format: Option<&str>,
        number: &str,
        issued_ms: u64,
        requester: &str,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(SUBJECT_DOMAIN);
        for f in [
            appliance,
            request_id,
            kind.as_str(),
            format.unwrap_or(""),
            number,
        ] {
            m.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_be_bytes());
            m.extend_from_slice(f.as_bytes());
        }
        m.extend_from_slice(&issued_ms.to_be_bytes());
        m.extend_from_slice(
            &u32::try_from(requester.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        m.extend_from_slice(requester.as_bytes());
        m
    }
}

impl Signed for SubjectRequest {
    const WHAT: &'static str = "a subject request";
    const MAX: usize = MAX_SUBJECT_REQUEST;
    fn appliance(&self) -> &str {
        &self.appliance
    }
    fn signature(&self) -> &str {
        &self.signature
    }
    fn signed_bytes(&self) -> Vec<u8> {
        Self::bytes_to_sign(
            &self.appliance,
            &self.request_id,
            self.kind,
            self.format.as_deref(),
            &self.number,
            self.issued_ms,
            &self.requester,
        )
    }
    fn check_form(&self) -> Result<(), String> {
        if !plain_name(&self.request_id) {
            return Err("the request id is not 1 to 64 of A-Z a-z 0-9 . _ - : @".into());
        }
        if !plain_name(&self.requester) {
            return Err("the requester is not 1 to 64 of A-Z a-z 0-9 . _ - : @".into());
        }
        match (self.kind, self.format.as_deref()) {
            (SubjectKind::Export, Some("json" | "csv")) => Ok(()),
            (SubjectKind::Export, _) => Err("an export names its format: json or csv".into()),
            (_, None) => Ok(()),
            (_, Some(_)) => Err("only an export has a format".into()),
        }
    }
}

/// Refuses an issue time more than `window` away from `now_ms`, either way.
pub fn check_window(
    issued_ms: u64,
    now_ms: u64,
    window: std::time::Duration,
) -> Result<(), Refusal> {
    let w = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    if issued_ms.abs_diff(now_ms) > w {
        return Err(Refusal::Stale {
            issued_ms,
            now_ms,
            window_s: window.as_secs(),
        });
    }
    Ok(())
}

/// What goes on `config/reported` (retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    pub appliance: String,
    /// The version this report is about (`None`: the document had none readable).
    pub version: Option<u64>,
    /// `applied` (committed, waiting for the broker to be reached again), `confirmed`,
    /// `rolled back`, or `refused`.
    pub result: String,
    /// The appliance's revision for it, once committed.
    pub revision: Option<u64>,
    pub detail: String,
    pub time_ms: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use base64::Engine as _;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn fleet() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn doc(k: &Ed25519KeyPair, appliance: &str, version: u64, config: &str) -> Vec<u8> {
        let sig = k.sign(&signed_bytes(appliance, version, config));
        serde_json::to_vec(&serde_json::json!({
            "appliance": appliance, "version": version, "config": config,
            "signature": base64::engine::general_purpose::STANDARD.encode(sig.as_ref()),
        }))
        .unwrap()
    }

    #[test]
    fn only_a_newer_document_signed_by_the_fleet_for_this_appliance_passes() {
        let k = fleet();
        let pk: [u8; 32] = k.public_key().as_ref().try_into().unwrap();
        let good = doc(&k, "lab-a", 7, "[appliance]\nname = \"lab-a\"\n");
        let d = verify(&good, "lab-a", Some(&pk), Some(6)).unwrap();
        assert_eq!(d.version, 7);
        assert!(verify(&good, "lab-a", Some(&pk), None).is_ok());
        // Replay of the same or an older version.
        assert_eq!(
            verify(&good, "lab-a", Some(&pk), Some(7)).unwrap_err(),
            Refusal::Replay { got: 7, last: 7 }
        );
        // Another appliance's document, even well signed.
        let other = doc(&k, "lab-b", 9, "x");
        assert!(matches!(
            verify(&other, "lab-a", Some(&pk), None),
            Err(Refusal::OtherAppliance(_))
        ));
        // Signed by someone else; the text or the version changed after signing.
        let rogue = doc(&fleet(), "lab-a", 8, "x");
        assert_eq!(
            verify(&rogue, "lab-a", Some(&pk), None).unwrap_err(),
            Refusal::BadSignature
        );
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["config"] = "[appliance]\nname = \"evil\"\n".into();
        let tampered = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            verify(&tampered, "lab-a", Some(&pk), None).unwrap_err(),
            Refusal::BadSignature
        );
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["version"] = 70.into();
        let bumped = serde_json::to_vec(&v).unwrap();
        assert_eq!(
            verify(&bumped, "lab-a", Some(&pk), Some(7)).unwrap_err(),
            Refusal::BadSignature
        );
        // No key configured; not JSON; unknown fields; too large.
        assert_eq!(
            verify(&good, "lab-a", None, None).unwrap_err(),
            Refusal::NoFleetKey
        );
        for bad in [&b"not json"[..], br#"{"appliance":"lab-a","version":1}"#] {
            assert!(matches!(
                verify(bad, "lab-a", Some(&pk), None),
                Err(Refusal::Malformed(_))
            ));
        }
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["extra"] = 1.into();
        assert!(matches!(
            verify(&serde_json::to_vec(&v).unwrap(), "lab-a", Some(&pk), None),
            Err(Refusal::Malformed(_))
        ));
        let huge = vec![b' '; MAX_DOCUMENT + 1];
        assert!(matches!(
            verify(&huge, "lab-a", Some(&pk), None),
            Err(Refusal::Malformed(_))
        ));
    }

    fn request(k: &Ed25519KeyPair, appliance: &str, id: &str, issued_ms: u64) -> Vec<u8> {
        let bytes = SubjectRequest::bytes_to_sign(
            appliance,
            id,
            SubjectKind::Export,
            Some("csv"),
            "+14155550177",
            issued_ms,
            "privacy-desk",
        );
        serde_json::to_vec(&serde_json::json!({
            "appliance": appliance, "request_id": id, "kind": "export", "format": "csv",
            "number": "+14155550177", "issued_ms": issued_ms, "requester": "privacy-desk",
            "signature": base64::engine::general_purpose::STANDARD.encode(k.sign(&bytes).as_ref()),
        }))
        .unwrap()
    }

    #[test]
    fn a_subject_request_verifies_as_config_does_under_its_own_domain() {
        let k = fleet();
        let pk: [u8; 32] = k.public_key().as_ref().try_into().unwrap();
        let good = request(&k, "lab-a", "r-1", 1_000);
        let r: SubjectRequest = verify_signed(&good, "lab-a", Some(&pk)).unwrap();
        assert_eq!(
            (r.kind, r.format.as_deref()),
            (SubjectKind::Export, Some("csv"))
        );
        assert_eq!(r.requester, "privacy-desk");
        // Another appliance's; another key's; no key.
        assert!(matches!(
            verify_signed::<SubjectRequest>(
                &request(&k, "lab-b", "r-1", 1_000),
                "lab-a",
                Some(&pk)
            ),
            Err(Refusal::OtherAppliance(_))
        ));
        assert_eq!(
            verify_signed::<SubjectRequest>(
                &request(&fleet(), "lab-a", "r-1", 1_000),
                "lab-a",
                Some(&pk)
            )
            .unwrap_err(),
            Refusal::BadSignature
        );
        assert_eq!(
            verify_signed::<SubjectRequest>(&good, "lab-a", None).unwrap_err(),
            Refusal::NoFleetKey
        );
        // Any field changed after signing: the number, the kind, the time, who asked.
        for (field, value) in [
            ("number", serde_json::json!("+14155550178")),
            ("kind", serde_json::json!("erase")),
            ("format", serde_json::json!("json")),
            ("issued_ms", serde_json::json!(2_000)),
            ("requester", serde_json::json!("eve")),
            ("request_id", serde_json::json!("r-2")),
        ] {
            let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
            v[field] = value;
            if field == "kind" {
                v["format"] = serde_json::Value::Null;
            }
            assert_eq!(
                verify_signed::<SubjectRequest>(
                    &serde_json::to_vec(&v).unwrap(),
                    "lab-a",
                    Some(&pk)
                )
                .unwrap_err(),
                Refusal::BadSignature,
                "{field}"
            );
        }
        // A config document's signature is not a subject request's, nor the other way.
        let cfg_sig = k.sign(&signed_bytes("lab-a", 1_000, "r-1"));
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["signature"] = base64::engine::general_purpose::STANDARD
            .encode(cfg_sig.as_ref())
            .into();
        assert_eq!(
            verify_signed::<SubjectRequest>(&serde_json::to_vec(&v).unwrap(), "lab-a", Some(&pk))
                .unwrap_err(),
            Refusal::BadSignature
        );
        assert!(verify(&good, "lab-a", Some(&pk), None).is_err());
        // Malformed: an id with a newline, an export without its format, a format on an
        // erasure, unknown fields, too large.
        for (field, value) in [
            ("request_id", serde_json::json!("r\n1")),
            ("requester", serde_json::json!("")),
            ("format", serde_json::Value::Null),
            ("extra", serde_json::json!(1)),
        ] {
            let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
            v[field] = value;
            assert!(
                matches!(
                    verify_signed::<SubjectRequest>(
                        &serde_json::to_vec(&v).unwrap(),
                        "lab-a",
                        Some(&pk)
                    ),
                    Err(Refusal::Malformed(_))
                ),
                "{field}"
            );
        }
        let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
        v["kind"] = "erase".into();
        assert!(matches!(
            verify_signed::<SubjectRequest>(&serde_json::to_vec(&v).unwrap(), "lab-a", Some(&pk)),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(
            verify_signed::<SubjectRequest>(
                &vec![b' '; MAX_SUBJECT_REQUEST + 1],
                "lab-a",
                Some(&pk)
            ),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn an_issue_time_outside_the_window_is_refused_either_way() {
        let w = std::time::Duration::from_secs(600);
        let now = 10_000_000;
        assert!(check_window(now, now, w).is_ok());
        assert!(check_window(now - 600_000, now, w).is_ok());
        assert!(check_window(now + 600_000, now, w).is_ok());
        assert!(matches!(
            check_window(now - 600_001, now, w),
            Err(Refusal::Stale { .. })
        ));
        assert!(matches!(
            check_window(now + 600_001, now, w),
            Err(Refusal::Stale { .. })
        ));
        assert!(check_window(u64::MAX, 0, w).is_err());
    }
}
