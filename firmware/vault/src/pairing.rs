//! The pair key: what the two appliances of a pair authenticate and encrypt their
//! heartbeats under.
//!
//! `callgate pair init` on one appliance makes a random [`PairingSecret`] and shows it once
//! (printed as the recovery key is, with check bytes of its own kind, so neither is taken
//! for the other); `callgate pair join` on the other reads it. Both derive the same pair key
//! from it (`HKDF-SHA256(secret, "callgate/pair-key/v1")`) and keep that key only wrapped
//! under their own TPM-sealed KEK ([`wrap_pair_key`]): a copy of either disk reveals no
//! pair key. The secret itself is never stored.
//!
//! Wrapped pair key, version 1: `[version = 1][nonce 12][ciphertext 32][tag 16]` under the
//! KEK, associated data `"callgate/pair-key-wrap/v1"`.

use std::fmt;

use zeroize::Zeroizing;

use crate::aead::{self, CryptoError, Secret32, KEY_LEN};
use crate::printed::{self, PrintedKeyError};
use crate::record::{unwrap_key, wrap_key, UnwrapError};
use crate::Kek;

const PAIRING_CHECK: &[u8] = b"callgate/pairing-check/v1";
const PAIR_KEY_INFO: &[u8] = b"callgate/pair-key/v1";
const PAIR_KEY_WRAP_AAD: &[u8] = b"callgate/pair-key-wrap/v1";

/// The one-time secret that pairs two appliances. Wiped on drop, never `Debug`-printed.
pub struct PairingSecret(Secret32);

impl PairingSecret {
    pub fn generate() -> Result<PairingSecret, CryptoError> {
        Ok(PairingSecret(aead::random_secret()?))
    }

    /// The printable form, to be shown once.
    pub fn encode(&self) -> Zeroizing<String> {
        printed::encode(&self.0, PAIRING_CHECK)
    }

    /// Reads a typed pairing secret, naming the group that has a typo.
    pub fn parse(text: &str) -> Result<PairingSecret, PrintedKeyError> {
        printed::parse(text, PAIRING_CHECK).map(PairingSecret)
    }

    /// The pair key both appliances derive from this secret.
    pub fn pair_key(&self) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
        aead::derive(&self.0, PAIR_KEY_INFO)
    }
}

impl fmt::Debug for PairingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingSecret(…)")
    }
}

/// The pair key wrapped under the KEK, to keep on disk.
pub fn wrap_pair_key(kek: &Kek, key: &[u8; KEY_LEN]) -> Result<Vec<u8>, CryptoError> {
    wrap_key(kek, &[PAIR_KEY_WRAP_AAD], key)
}

/// The pair key back from [`wrap_pair_key`]'s blob.
pub fn unwrap_pair_key(kek: &Kek, blob: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, UnwrapError> {
    unwrap_key(kek, &[PAIR_KEY_WRAP_AAD], blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecoveryKey;

    #[test]
    fn both_sides_derive_one_key_from_the_printed_secret() {
        let a = PairingSecret::generate().unwrap();
        let text = a.encode();
        let b = PairingSecret::parse(&text.to_lowercase()).unwrap();
        assert_eq!(*a.pair_key().unwrap(), *b.pair_key().unwrap());
        assert_ne!(
            *a.pair_key().unwrap(),
            *a.0,
            "the key is derived, not the secret"
        );
        assert_eq!(format!("{a:?}"), "PairingSecret(…)");
    }

    #[test]
    fn a_recovery_key_is_not_a_pairing_secret_and_typos_are_named() {
        let r = RecoveryKey::generate().unwrap();
        assert!(matches!(
            PairingSecret::parse(&r.encode()),
            Err(PrintedKeyError::Group(_))
        ));
        let s = PairingSecret::generate().unwrap().encode();
        let mut typo: Vec<char> = s.chars().collect();
        typo[20] = if typo[20] == 'A' { 'B' } else { 'A' };
        let typo: String = typo.into_iter().collect();
        assert_eq!(
            PairingSecret::parse(&typo).unwrap_err(),
            PrintedKeyError::Group(3)
        );
    }

    #[test]
    fn the_wrapped_key_opens_only_under_its_kek() {
        let kek = Kek::generate().unwrap();
        let key = PairingSecret::generate().unwrap().pair_key().unwrap();
        let blob = wrap_pair_key(&kek, &key).unwrap();
        assert_eq!(*unwrap_pair_key(&kek, &blob).unwrap(), *key);
        assert!(unwrap_pair_key(&Kek::generate().unwrap(), &blob).is_err());
        // A wrapped data key is not a pair key, even under the same KEK.
        let dek_blob = crate::wrap_dek(&kek, 1, &crate::Dek::generate().unwrap()).unwrap();
        assert!(unwrap_pair_key(&kek, &dek_blob).is_err());
    }
}
