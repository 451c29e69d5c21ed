//! The recovery key: brings a replacement board up when the TPM that sealed the KEK is gone.
//!
//! At provisioning a random [`RecoveryKey`] is generated and shown once; the KEK wrapped
//! under it ([`recovery_wrap`]) is kept on disk next to the sealed blob. A replacement board
//! reads the recovery key from the engineer, unwraps the KEK ([`recovery_unwrap`]) and seals
//! it to its own TPM.
//!
//! Printed form: 8 groups of 8 Crockford base32 characters, `XXXXXXXX-XXXXXXXX-…`. Each group
//! carries 4 key bytes and 1 check byte (bound to the group's position), so a mistyped or
//! swapped group is named when the key is entered, before any decryption is tried. Parsing
//! ignores case, spaces and dashes, and reads `O` as `0` and `I`/`L` as `1`.
//!
//! Wrapped KEK, version 1: `[version = 1][nonce 12][ciphertext 32][tag 16]`, sealed under
//! `HKDF-SHA256(recovery key, info "callgate/recovery/v1")` with that same string as
//! associated data.

use std::fmt;

use zeroize::Zeroizing;

use crate::aead::{self, CryptoError, Secret32};
use crate::printed::{self, PrintedKeyError};
use crate::record::UnwrapError;
use crate::Kek;

const RECOVERY_INFO: &[u8] = b"callgate/recovery/v1";
const RECOVERY_VERSION: u8 = 1;
const RECOVERY_CHECK: &[u8] = b"callgate/recovery-check/v1";

/// Why a typed recovery key was refused.
pub type RecoveryKeyError = PrintedKeyError;

/// 32 random bytes that can recover the KEK. Wiped on drop, never `Debug`-printed; its
/// printable form comes only from [`RecoveryKey::encode`].
pub struct RecoveryKey(Secret32);

impl RecoveryKey {
    pub fn generate() -> Result<RecoveryKey, CryptoError> {
        Ok(RecoveryKey(aead::random_secret()?))
    }

    /// The printable form (to be shown once). Wiped when the returned string is dropped.
    pub fn encode(&self) -> Zeroizing<String> {
        printed::encode(&self.0, RECOVERY_CHECK)
    }

    /// Reads a typed recovery key, naming the group that has a typo.
    pub fn parse(text: &str) -> Result<RecoveryKey, RecoveryKeyError> {
        printed::parse(text, RECOVERY_CHECK).map(RecoveryKey)
    }

    fn wrapping_key(&self) -> Result<Secret32, CryptoError> {
        aead::derive(&self.0, RECOVERY_INFO)
    }
}

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryKey(…)")
    }
}

/// The KEK wrapped under the recovery key, to keep on disk.
pub fn recovery_wrap(kek: &Kek, recovery: &RecoveryKey) -> Result<Vec<u8>, CryptoError> {
    let key = recovery.wrapping_key()?;
    let mut out = vec![RECOVERY_VERSION];
    aead::seal_into(&key, &[RECOVERY_INFO], kek.expose_secret(), &mut out)?;
    Ok(out)
}

/// Why a recovery blob did not give back a KEK.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("the recovery key does not open this blob (wrong key, or the blob is damaged)")]
    Unwrap(#[source] UnwrapError),
    #[error("cannot derive the recovery wrapping key")]
    Crypto(#[source] CryptoError),
}

/// The KEK back from [`recovery_wrap`]'s blob.
pub fn recovery_unwrap(blob: &[u8], recovery: &RecoveryKey) -> Result<Kek, RecoveryError> {
    let key = recovery.wrapping_key().map_err(RecoveryError::Crypto)?;
    match blob.split_first() {
        Some((&RECOVERY_VERSION, body)) => aead::open_key(&key, &[RECOVERY_INFO], body)
            .map(Kek::from_secret)
            .ok_or(RecoveryError::Unwrap(UnwrapError::WrongKeyOrCorrupt)),
        Some((&v, _)) => Err(RecoveryError::Unwrap(UnwrapError::UnknownVersion(v))),
        None => Err(RecoveryError::Unwrap(UnwrapError::WrongKeyOrCorrupt)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_round_trip() {
        for _ in 0..50 {
            let k = RecoveryKey::generate().unwrap();
            let s = k.encode();
            assert_eq!(s.len(), 8 * 8 + 7);
            assert_eq!(s.split('-').count(), 8);
            assert!(s.split('-').all(|g| g.len() == 8));
            let back = RecoveryKey::parse(&s).unwrap();
            assert_eq!(*back.0, *k.0);
            // lenient input
            let sloppy = s
                .to_lowercase()
                .replace('-', " ")
                .replace('0', "o")
                .replace('1', "l");
            assert_eq!(*RecoveryKey::parse(&sloppy).unwrap().0, *k.0);
        }
    }

    #[test]
    fn typos_are_caught_and_located() {
        let mut caught = 0;
        let mut total = 0;
        for _ in 0..20 {
            let k = RecoveryKey::generate().unwrap();
            let s: Vec<char> = k.encode().chars().collect();
            for pos in 0..s.len() {
                if s[pos] == '-' {
                    continue;
                }
                let mut t = s.clone();
                t[pos] = if s[pos] == 'A' { 'B' } else { 'A' };
                let typed: String = t.into_iter().collect();
                total += 1;
                match RecoveryKey::parse(&typed) {
                    Err(RecoveryKeyError::Group(g)) => {
                        assert_eq!(g, pos / 9 + 1);
                        caught += 1;
                    }
                    Ok(_) => {} // 1 in 256: the check byte collides
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert!(caught * 100 >= total * 97, "{caught}/{total}");
    }

    #[test]
    fn swapped_groups_and_bad_input() {
        let k = RecoveryKey::generate().unwrap();
        let s = k.encode();
        let mut g: Vec<&str> = s.split('-').collect();
        g.swap(0, 1);
        assert!(RecoveryKey::parse(&g.join("-")).is_err());
        assert_eq!(
            RecoveryKey::parse("ABC").unwrap_err(),
            RecoveryKeyError::Length(3)
        );
        let bad = format!("U{}", &s[1..]);
        assert_eq!(
            RecoveryKey::parse(&bad).unwrap_err(),
            RecoveryKeyError::BadChar('U')
        );
        assert_eq!(format!("{k:?}"), "RecoveryKey(…)");
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let kek = Kek::generate().unwrap();
        let rk = RecoveryKey::generate().unwrap();
        let blob = recovery_wrap(&kek, &rk).unwrap();
        assert_eq!(blob[0], 1);
        // as an engineer would: print, type back in
        let typed = RecoveryKey::parse(&rk.encode()).unwrap();
        let back = recovery_unwrap(&blob, &typed).unwrap();
        assert_eq!(back.expose_secret(), kek.expose_secret());
    }

    #[test]
    fn wrong_recovery_key_or_damaged_blob() {
        let kek = Kek::generate().unwrap();
        let rk = RecoveryKey::generate().unwrap();
        let blob = recovery_wrap(&kek, &rk).unwrap();
        let other = RecoveryKey::generate().unwrap();
        assert!(matches!(
            recovery_unwrap(&blob, &other),
            Err(RecoveryError::Unwrap(UnwrapError::WrongKeyOrCorrupt))
        ));
        let mut t = blob.clone();
        t[30] ^= 0x10;
        assert!(recovery_unwrap(&t, &rk).is_err());
        let mut v = blob.clone();
        v[0] = 7;
        assert!(matches!(
            recovery_unwrap(&v, &rk),
            Err(RecoveryError::Unwrap(UnwrapError::UnknownVersion(7)))
        ));
        assert!(recovery_unwrap(&blob[..10], &rk).is_err());
        assert!(recovery_unwrap(&[], &rk).is_err());
    }
}
