//! The key-encryption key: the one secret a protector (TPM or the software fallback) keeps.

use std::fmt;

use zeroize::Zeroizing;

use crate::aead::{self, CryptoError, Secret32, KEY_LEN};
use crate::subject::LookupKey;

/// The key-encryption key (KEK): wraps the data keys and the subject keys, and is the root
/// the subject lookup key is derived from. 32 bytes, wiped on drop, never printed.
#[derive(Clone)]
pub struct Kek(Secret32);

impl Kek {
    /// Length of a KEK in bytes.
    pub const LEN: usize = KEY_LEN;

    /// A fresh random KEK (first boot, or a test).
    pub fn generate() -> Result<Kek, CryptoError> {
        Ok(Kek(aead::random_secret()?))
    }

    /// Takes ownership of raw key bytes (the caller's copy should itself be zeroized).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Kek {
        Kek(Zeroizing::new(bytes))
    }

    pub(crate) fn from_secret(secret: Secret32) -> Kek {
        Kek(secret)
    }

    /// A KEK from a byte slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Kek> {
        let arr: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Kek::from_bytes(arr))
    }

    /// The raw bytes, for a protector to seal them. Not for logging.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key under which subject ids become lookup tokens (HKDF info
    /// `callgate/lookup/v1`).
    pub fn lookup_key(&self) -> Result<LookupKey, CryptoError> {
        Ok(LookupKey::new(aead::derive(
            &self.0,
            b"callgate/lookup/v1",
        )?))
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let kek = Kek::from_bytes([0xab; 32]);
        let s = format!("{kek:?} {kek:#?}");
        assert!(!s.to_lowercase().contains("ab"), "{s}");
        assert_eq!(format!("{kek:?}"), "Kek(…)");
    }

    #[test]
    fn generated_keys_differ() {
        let a = Kek::generate().unwrap();
        let b = Kek::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
