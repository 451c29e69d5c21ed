//! Per-subject keys (crypto-shredding) and the tokens that name subjects without PII.
//!
//! A subject (a caller, identified by their number) gets a random [`SubjectKey`]; their PII
//! is sealed under it. Deleting that key erases the PII everywhere it was written, backups
//! included, without finding or rewriting a single record. The store finds a subject's key
//! by a [`SubjectToken`]: `HMAC-SHA256(lookup_key, normalized id)`, where the lookup key is
//! derived from the KEK, so a token reveals nothing without the KEK and the same subject
//! always gets the same token.
//!
//! Wrapped subject key, version 1: `[version = 1][nonce 12][ciphertext 32][tag 16]` under the
//! KEK with associated data `b"callgate/subject/v1" ++ token`.

use std::fmt;

use hmac::digest::generic_array::GenericArray;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::aead::{self, CryptoError, Secret32, KEY_LEN};
use crate::record::{self, RecordError, UnwrapError};
use crate::Kek;

const SUBJECT_AAD: &[u8] = b"callgate/subject/v1";
const PII_AAD: &[u8] = b"callgate/pii/v1";
/// Key id written into PII sealed under a subject key (subject keys are not in the keyring;
/// the token in the associated data says which key it is).
const SUBJECT_KEY_ID: u32 = 0;

/// The HMAC key that turns subject ids into tokens. Derived from the KEK; wiped on drop.
pub struct LookupKey(Secret32);

impl LookupKey {
    pub(crate) fn new(key: Secret32) -> LookupKey {
        LookupKey(key)
    }
}

impl fmt::Debug for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LookupKey(…)")
    }
}

/// A pseudonymous subject identifier: safe to use as (part of) a storage key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectToken(pub [u8; 32]);

impl SubjectToken {
    pub const LEN: usize = 32;

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_slice(bytes: &[u8]) -> Option<SubjectToken> {
        Some(SubjectToken(bytes.try_into().ok()?))
    }

    /// Lower-case hex of the token.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits are plenty to tell tokens apart in a log.
        write!(f, "SubjectToken({}…)", &self.to_hex()[..8])
    }
}

/// Normalizes a subject id before hashing, so every spelling of one number is one subject:
/// a `sip:`/`sips:`/`tel:` scheme and anything from `@` or `;` on are dropped; what is left,
/// if it looks like a phone number (digits, `+`, spaces, `-`, `.`, `(`, `)`), becomes its digits
/// alone (`+1 (202) 555-0100` → `12025550100`); anything else is trimmed and lower-cased.
///
/// Limit: a national form (`0202…`) and the international form (`+44202…`) of one number
/// are different subjects; callers should pass E.164 where they have it.
pub fn normalize_subject(id: &str) -> String {
    let mut s = id.trim();
    let lower = s.to_ascii_lowercase();
    for scheme in ["sips:", "sip:", "tel:"] {
        if lower.starts_with(scheme) {
            s = &s[scheme.len()..];
            break;
        }
    }
    let s = s.split(['@', ';']).next().unwrap_or_default().trim();
    let phone_like = s.chars().any(|c| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '.' | '(' | ')'));
    if phone_like {
        s.chars().filter(char::is_ascii_digit).collect()
    } else {
        s.to_lowercase()
    }
}

/// The token for a subject id: HMAC-SHA256 under the lookup key over the normalized id.
pub fn subject_token(lookup_key: &LookupKey, subject_id: &str) -> SubjectToken {
    let normalized = Zeroizing::new(normalize_subject(subject_id));
    // HMAC pads keys shorter than the hash's block (64 bytes) with zeros (RFC 2104, step 1);
    // padding the 32-byte key ourselves gives the same MAC through the infallible
    // constructor.
    let mut padded = Zeroizing::new([0u8; 64]);
    padded[..KEY_LEN].copy_from_slice(lookup_key.0.as_slice());
    let mut mac = <Hmac<Sha256> as KeyInit>::new(GenericArray::from_slice(padded.as_slice()));
    mac.update(b"callgate/subject-token/v1\0");
    mac.update(normalized.as_bytes());
    SubjectToken(mac.finalize().into_bytes().into())
}

/// A per-subject key: the PII of one subject is sealed under it. Wiped on drop.
#[derive(Clone)]
pub struct SubjectKey(Secret32);

impl SubjectKey {
    pub fn generate() -> Result<SubjectKey, CryptoError> {
        Ok(SubjectKey(aead::random_secret()?))
    }

    /// Wraps this key under the KEK, bound to the subject's token.
    pub fn wrap(&self, kek: &Kek, token: &SubjectToken) -> Result<Vec<u8>, CryptoError> {
        record::wrap_key(kek, &[SUBJECT_AAD, token.as_bytes()], &self.0)
    }

    /// Unwraps a key wrapped by [`SubjectKey::wrap`] for the same token.
    pub fn unwrap(
        kek: &Kek,
        token: &SubjectToken,
        wrapped: &[u8],
    ) -> Result<SubjectKey, UnwrapError> {
        record::unwrap_key(kek, &[SUBJECT_AAD, token.as_bytes()], wrapped).map(SubjectKey)
    }

    /// Seals one PII field. `aad` should name the field and the record it belongs to.
    pub fn seal(
        &self,
        token: &SubjectToken,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let aad = [PII_AAD, token.as_bytes(), aad].concat();
        record::seal_with(&self.0, SUBJECT_KEY_ID, &aad, plaintext)
    }

    /// Opens a field sealed by [`SubjectKey::seal`].
    pub fn open(
        &self,
        token: &SubjectToken,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, RecordError> {
        let aad = [PII_AAD, token.as_bytes(), aad].concat();
        record::open_with(&self.0, SUBJECT_KEY_ID, &aad, sealed).map_err(|_| RecordError::Corrupt)
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectKey(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lk(kek: &Kek) -> LookupKey {
        kek.lookup_key().unwrap()
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize_subject("+1 (202) 555-0100"), "12025550100");
        assert_eq!(
            normalize_subject("sip:+12025550100@carrier.example;user=phone"),
            "12025550100"
        );
        assert_eq!(normalize_subject("tel:+1-202-555-0100"), "12025550100");
        assert_eq!(normalize_subject(" 1.202.555.0100 "), "12025550100");
        assert_eq!(normalize_subject("SIP:Alice@example.com"), "alice");
        assert_eq!(normalize_subject("  Alice@Example.com "), "alice");
        assert_eq!(normalize_subject("anonymous"), "anonymous");
        assert_eq!(normalize_subject(""), "");
    }

    #[test]
    fn tokens_are_deterministic_and_normalized() {
        let kek = Kek::generate().unwrap();
        let a = subject_token(&lk(&kek), "+1 (202) 555-0100");
        let b = subject_token(&lk(&kek), "sip:12025550100@192.0.2.1");
        assert_eq!(a, b);
        // Same KEK derived again: same token (the store relies on it across restarts).
        let kek2 = Kek::from_bytes(*kek.expose_secret());
        assert_eq!(a, subject_token(&lk(&kek2), "12025550100"));
    }

    #[test]
    fn tokens_separate_subjects_and_keys() {
        let kek = Kek::generate().unwrap();
        let a = subject_token(&lk(&kek), "12025550100");
        let b = subject_token(&lk(&kek), "12025550101");
        assert_ne!(a, b);
        let other = Kek::generate().unwrap();
        assert_ne!(a, subject_token(&lk(&other), "12025550100"));
        // The token is not a plain hash of the id.
        assert!(!a.to_hex().contains("12025550100"));
    }

    #[test]
    fn token_matches_reference_hmac() {
        // Against the library's variable-length-key constructor: the padding is exact.
        let kek = Kek::from_bytes([7; 32]);
        let key = kek.lookup_key().unwrap();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.0.as_slice()).unwrap();
        mac.update(b"callgate/subject-token/v1\0");
        mac.update(b"12025550100");
        let want: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(subject_token(&key, "+12025550100").0, want);
    }

    #[test]
    fn debug_shows_little() {
        let kek = Kek::generate().unwrap();
        let t = subject_token(&lk(&kek), "1");
        assert_eq!(format!("{t:?}").len(), "SubjectToken(…)".len() + 8);
        assert_eq!(format!("{:?}", lk(&kek)), "LookupKey(…)");
        assert_eq!(
            format!("{:?}", SubjectKey::generate().unwrap()),
            "SubjectKey(…)"
        );
    }

    #[test]
    fn subject_key_wrap_and_pii() {
        let kek = Kek::generate().unwrap();
        let t1 = subject_token(&lk(&kek), "12025550100");
        let t2 = subject_token(&lk(&kek), "12025550101");
        let key = SubjectKey::generate().unwrap();
        let w = key.wrap(&kek, &t1).unwrap();
        let back = SubjectKey::unwrap(&kek, &t1, &w).unwrap();
        assert_eq!(
            SubjectKey::unwrap(&kek, &t2, &w).unwrap_err(),
            UnwrapError::WrongKeyOrCorrupt
        );
        assert_eq!(
            SubjectKey::unwrap(&Kek::generate().unwrap(), &t1, &w).unwrap_err(),
            UnwrapError::WrongKeyOrCorrupt
        );
        let sealed = key.seal(&t1, b"caller", b"+12025550100").unwrap();
        assert_eq!(
            back.open(&t1, b"caller", &sealed).unwrap().as_slice(),
            b"+12025550100"
        );
        assert_eq!(
            back.open(&t1, b"caller_name", &sealed),
            Err(RecordError::Corrupt)
        );
        assert_eq!(
            back.open(&t2, b"caller", &sealed),
            Err(RecordError::Corrupt)
        );
        let other = SubjectKey::generate().unwrap();
        assert_eq!(
            other.open(&t1, b"caller", &sealed),
            Err(RecordError::Corrupt)
        );
    }
}
