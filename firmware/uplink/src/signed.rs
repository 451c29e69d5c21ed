//! Config documents from the cloud, on `config/desired`, and what is reported back on
//! `config/reported`.
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

use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

/// The largest document accepted (the config text and its envelope).
pub const MAX_DOCUMENT: usize = 512 * 1024;
const DOMAIN: &[u8] = b"callgate-config/1\0";

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
    #[error("the document is not a config document: {0}")]
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
}

/// Checks a document for `appliance` under `fleet_key`, newer than `last_version`.
pub fn verify(
    raw: &[u8],
    appliance: &str,
    fleet_key: Option<&[u8; 32]>,
    last_version: Option<u64>,
) -> Result<Document, Refusal> {
    use base64::Engine as _;
    if raw.len() > MAX_DOCUMENT {
        return Err(Refusal::Malformed(format!(
            "{} bytes, over the {MAX_DOCUMENT} allowed",
            raw.len()
        )));
    }
    let doc: Document =
        serde_json::from_slice(raw).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if doc.appliance != appliance {
        return Err(Refusal::OtherAppliance(doc.appliance));
    }
    let key = fleet_key.ok_or(Refusal::NoFleetKey)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(doc.signature.trim())
        .map_err(|_| Refusal::BadSignature)?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(
            &signed_bytes(&doc.appliance, doc.version, &doc.config),
            &sig,
        )
        .map_err(|_| Refusal::BadSignature)?;
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
}
