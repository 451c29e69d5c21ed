//! Data-encryption keys (DEKs), the keyring that holds them, and sealed records.
//!
//! Sealed record, version 1:
//! `[version = 1][key_id u32 BE][nonce 12][ciphertext][tag 16]`, where the AEAD's associated
//! data is `version ++ key_id ++ caller_aad`, so neither the header nor the binding (table and
//! record id, chosen by the store) can be changed without the record failing to open.
//!
//! Wrapped DEK, version 1: `[version = 1][nonce 12][ciphertext 32][tag 16]`, sealed under the
//! KEK with associated data `b"callgate/dek/v1" ++ id u32 BE`.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

use crate::aead::{self, CryptoError, Secret32, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::Kek;

/// Format version of sealed records.
pub const RECORD_VERSION: u8 = 1;
/// Format version of wrapped keys (DEKs and subject keys).
pub const WRAP_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4;
const DEK_AAD: &[u8] = b"callgate/dek/v1";

/// A 256-bit data-encryption key. Wiped on drop, never printed.
#[derive(Clone)]
pub struct Dek(Secret32);

impl Dek {
    pub fn generate() -> Result<Dek, CryptoError> {
        Ok(Dek(aead::random_secret()?))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Dek {
        Dek(Zeroizing::new(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(…)")
    }
}

/// Why a sealed record did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Truncated, unknown version, tampered, sealed for another table or id, or sealed under
    /// a different key with the same id: the AEAD cannot tell these apart.
    #[error("the record is corrupt or was sealed for another place")]
    Corrupt,
    /// Sealed under a data key this keyring does not hold.
    #[error("the record was sealed under unknown data key {0}")]
    UnknownKey(u32),
}

/// Why a wrapped key did not unwrap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnwrapError {
    #[error("unknown wrapped-key format version {0}")]
    UnknownVersion(u8),
    /// Wrong KEK, or the wrapped bytes (or the id they are bound to) were altered.
    #[error("the wrapped key does not open under this key-encryption key")]
    WrongKeyOrCorrupt,
}

/// Seals `plaintext` under `dek` (known by `key_id`), binding `aad`.
pub fn seal_record(
    dek: &Dek,
    key_id: u32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    seal_with(dek.bytes(), key_id, aad, plaintext)
}

pub(crate) fn seal_with(
    key: &[u8; KEY_LEN],
    key_id: u32,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(RECORD_VERSION);
    out.extend_from_slice(&key_id.to_be_bytes());
    let header = [out[0], out[1], out[2], out[3], out[4]];
    aead::seal_into(key, &[&header, aad], plaintext, &mut out)?;
    Ok(out)
}

/// The data-key id a sealed record names, if the header is well-formed.
pub fn record_key_id(sealed: &[u8]) -> Option<u32> {
    match sealed {
        [RECORD_VERSION, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Opens a record sealed by [`seal_record`] with the DEK `key_id` names.
pub fn open_record(
    dek: &Dek,
    key_id: u32,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    open_with(dek.bytes(), key_id, aad, sealed)
}

pub(crate) fn open_with(
    key: &[u8; KEY_LEN],
    key_id: u32,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RecordError> {
    let named = record_key_id(sealed).ok_or(RecordError::Corrupt)?;
    if named != key_id {
        return Err(RecordError::UnknownKey(named));
    }
    let (header, body) = sealed.split_at(HEADER_LEN);
    aead::open(key, &[header, aad], body).ok_or(RecordError::Corrupt)
}

/// Wraps a DEK under the KEK, bound to its id.
pub fn wrap_dek(kek: &Kek, id: u32, dek: &Dek) -> Result<Vec<u8>, CryptoError> {
    wrap_key(kek, &[DEK_AAD, &id.to_be_bytes()], dek.bytes())
}

/// Unwraps a DEK wrapped by [`wrap_dek`] for the same id.
pub fn unwrap_dek(kek: &Kek, id: u32, wrapped: &[u8]) -> Result<Dek, UnwrapError> {
    unwrap_key(kek, &[DEK_AAD, &id.to_be_bytes()], wrapped).map(Dek)
}

pub(crate) fn wrap_key(
    kek: &Kek,
    aad: &[&[u8]],
    key: &[u8; KEY_LEN],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(1 + NONCE_LEN + KEY_LEN + TAG_LEN);
    out.push(WRAP_VERSION);
    aead::seal_into(kek.expose_secret(), aad, key, &mut out)?;
    Ok(out)
}

/// Associated data of [`seal_secret`]: this, then the purpose.
const SECRET_AAD: &[u8] = b"callgate-secret/1\0";

/// A secret of any length (a private key) sealed under the KEK for one `purpose` (bound as
/// associated data, so a blob sealed for one purpose never opens as another's), to keep on
/// disk: `WRAP_VERSION ++ nonce ++ ciphertext ++ tag`.
pub fn seal_secret(kek: &Kek, purpose: &str, secret: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(1 + secret.len() + 64);
    out.push(WRAP_VERSION);
    aead::seal_into(
        kek.expose_secret(),
        &[SECRET_AAD, purpose.as_bytes()],
        secret,
        &mut out,
    )?;
    Ok(out)
}

/// The secret back from [`seal_secret`]'s blob, for the same `purpose`.
pub fn open_secret(
    kek: &Kek,
    purpose: &str,
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, UnwrapError> {
    match blob.split_first() {
        Some((&WRAP_VERSION, body)) => {
            aead::open(kek.expose_secret(), &[SECRET_AAD, purpose.as_bytes()], body)
                .ok_or(UnwrapError::WrongKeyOrCorrupt)
        }
        Some((&v, _)) => Err(UnwrapError::UnknownVersion(v)),
        None => Err(UnwrapError::WrongKeyOrCorrupt),
    }
}

pub(crate) fn unwrap_key(
    kek: &Kek,
    aad: &[&[u8]],
    wrapped: &[u8],
) -> Result<Secret32, UnwrapError> {
    match wrapped.split_first() {
        Some((&WRAP_VERSION, body)) => {
            aead::open_key(kek.expose_secret(), aad, body).ok_or(UnwrapError::WrongKeyOrCorrupt)
        }
        Some((&v, _)) => Err(UnwrapError::UnknownVersion(v)),
        None => Err(UnwrapError::WrongKeyOrCorrupt),
    }
}

/// The data keys: one current key for new records, older ones kept for reading.
#[derive(Clone)]
pub struct Keyring {
    /// Every key, the current one included.
    keys: BTreeMap<u32, Dek>,
    current: u32,
    /// A copy of `keys[current]`, so sealing needs no lookup that could fail.
    current_dek: Dek,
}

impl Keyring {
    /// A new keyring with one fresh key, id 1.
    pub fn generate() -> Result<Keyring, CryptoError> {
        let dek = Dek::generate()?;
        let mut keys = BTreeMap::new();
        keys.insert(1, dek.clone());
        Ok(Keyring {
            keys,
            current: 1,
            current_dek: dek,
        })
    }

    /// A keyring from known keys; `None` if `current` is not among them.
    pub fn from_keys(keys: impl IntoIterator<Item = (u32, Dek)>, current: u32) -> Option<Keyring> {
        let keys: BTreeMap<u32, Dek> = keys.into_iter().collect();
        let current_dek = keys.get(&current)?.clone();
        Some(Keyring {
            keys,
            current,
            current_dek,
        })
    }

    /// Adds a new key (id = highest + 1) and makes it current; returns its id. The old keys
    /// stay for reading.
    pub fn rotate(&mut self) -> Result<u32, CryptoError> {
        let id = self
            .keys
            .keys()
            .next_back()
            .map_or(1, |max| max.saturating_add(1));
        let dek = Dek::generate()?;
        self.keys.insert(id, dek.clone());
        self.current = id;
        self.current_dek = dek;
        Ok(id)
    }

    pub fn current_id(&self) -> u32 {
        self.current
    }

    pub fn get(&self, id: u32) -> Option<&Dek> {
        self.keys.get(&id)
    }

    /// Ids of every key held, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.keys().copied()
    }

    /// Every key wrapped under `kek`, as `(id, wrapped)`.
    pub fn wrap_all(&self, kek: &Kek) -> Result<Vec<(u32, Vec<u8>)>, CryptoError> {
        self.keys
            .iter()
            .map(|(id, dek)| Ok((*id, wrap_dek(kek, *id, dek)?)))
            .collect()
    }

    /// Seals under the current key.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal_record(&self.current_dek, self.current, aad, plaintext)
    }

    /// Opens a record sealed under any key of the ring.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, RecordError> {
        let id = record_key_id(sealed).ok_or(RecordError::Corrupt)?;
        let dek = self.keys.get(&id).ok_or(RecordError::UnknownKey(id))?;
        open_record(dek, id, aad, sealed)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_under_its_kek_and_for_its_purpose() {
        let kek = Kek::generate().unwrap();
        let blob = seal_secret(&kek, "uplink-key", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!blob.windows(11).any(|w| w == b"PRIVATE KEY"));
        let back = open_secret(&kek, "uplink-key", &blob).unwrap();
        assert_eq!(back.as_slice(), b"-----BEGIN PRIVATE KEY-----");
        assert!(open_secret(&kek, "pair-identity", &blob).is_err());
        assert!(open_secret(&Kek::generate().unwrap(), "uplink-key", &blob).is_err());
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open_secret(&kek, "uplink-key", &bad).is_err());
        assert!(open_secret(&kek, "uplink-key", &[]).is_err());
    }

    fn dek() -> Dek {
        Dek::generate().unwrap()
    }

    #[test]
    fn round_trip_and_format() {
        let k = dek();
        let s = seal_record(&k, 7, b"cdrs/1", b"hello").unwrap();
        assert_eq!(s[0], RECORD_VERSION);
        assert_eq!(&s[1..5], &7u32.to_be_bytes());
        assert_eq!(s.len(), 1 + 4 + 12 + 5 + 16);
        assert_eq!(record_key_id(&s), Some(7));
        assert_eq!(
            open_record(&k, 7, b"cdrs/1", &s).unwrap().as_slice(),
            b"hello"
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let k = dek();
        let a = seal_record(&k, 1, b"", b"same").unwrap();
        let b = seal_record(&k, 1, b"", b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let k = dek();
        let s = seal_record(&k, 3, b"aad", b"some plaintext").unwrap();
        for i in 0..s.len() {
            for bit in 0..8 {
                let mut t = s.clone();
                t[i] ^= 1 << bit;
                let r = open_record(&k, 3, b"aad", &t);
                assert!(
                    matches!(
                        r,
                        Err(RecordError::Corrupt) | Err(RecordError::UnknownKey(_))
                    ),
                    "byte {i} bit {bit}: {r:?}"
                );
            }
        }
    }

    #[test]
    fn truncation_and_unknown_version_are_corrupt() {
        let k = dek();
        let s = seal_record(&k, 1, b"", b"x").unwrap();
        for n in 0..s.len() {
            assert_eq!(
                open_record(&k, 1, b"", &s[..n]),
                Err(RecordError::Corrupt),
                "len {n}"
            );
        }
        let mut v = s.clone();
        v[0] = 2;
        assert_eq!(open_record(&k, 1, b"", &v), Err(RecordError::Corrupt));
        assert_eq!(open_record(&k, 1, b"", &[]), Err(RecordError::Corrupt));
    }

    #[test]
    fn swapped_between_ids_or_tables_fails() {
        let k = dek();
        let s = seal_record(&k, 1, b"cdrs\x00\x00\x00\x00\x00\x00\x00\x00\x01", b"x").unwrap();
        assert_eq!(
            open_record(&k, 1, b"cdrs\x00\x00\x00\x00\x00\x00\x00\x00\x02", &s),
            Err(RecordError::Corrupt)
        );
        assert_eq!(
            open_record(&k, 1, b"audit\x00\x00\x00\x00\x00\x00\x00\x01", &s),
            Err(RecordError::Corrupt)
        );
    }

    #[test]
    fn wrong_key_is_corrupt_unknown_id_is_unknown() {
        let s = seal_record(&dek(), 1, b"", b"x").unwrap();
        assert_eq!(open_record(&dek(), 1, b"", &s), Err(RecordError::Corrupt));
        assert_eq!(
            open_record(&dek(), 2, b"", &s),
            Err(RecordError::UnknownKey(1))
        );
        let ring = Keyring::generate().unwrap();
        let s9 = seal_record(&dek(), 9, b"", b"x").unwrap();
        assert_eq!(ring.open(b"", &s9), Err(RecordError::UnknownKey(9)));
    }

    #[test]
    fn rewriting_the_key_id_does_not_open() {
        // A record re-labelled with another key id of the ring fails (the header is bound).
        let mut ring = Keyring::generate().unwrap();
        let s1 = ring.seal(b"a", b"x").unwrap();
        ring.rotate().unwrap();
        let mut t = s1.clone();
        t[1..5].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(ring.open(b"a", &t), Err(RecordError::Corrupt));
        assert_eq!(ring.open(b"a", &s1).unwrap().as_slice(), b"x");
    }

    #[test]
    fn rotation_keeps_old_keys() {
        let mut ring = Keyring::generate().unwrap();
        let old = ring.seal(b"t", b"old").unwrap();
        assert_eq!(ring.rotate().unwrap(), 2);
        assert_eq!(ring.current_id(), 2);
        let new = ring.seal(b"t", b"new").unwrap();
        assert_eq!(record_key_id(&new), Some(2));
        assert_eq!(ring.open(b"t", &old).unwrap().as_slice(), b"old");
        assert_eq!(ring.open(b"t", &new).unwrap().as_slice(), b"new");
        assert_eq!(ring.ids().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn dek_wrapping() {
        let kek = Kek::generate().unwrap();
        let d = dek();
        let w = wrap_dek(&kek, 5, &d).unwrap();
        assert_eq!(w.len(), 1 + 12 + 32 + 16);
        assert_eq!(unwrap_dek(&kek, 5, &w).unwrap().bytes(), d.bytes());
        // bound to its id
        assert_eq!(
            unwrap_dek(&kek, 6, &w).unwrap_err(),
            UnwrapError::WrongKeyOrCorrupt
        );
        // wrong KEK
        let other = Kek::generate().unwrap();
        assert_eq!(
            unwrap_dek(&other, 5, &w).unwrap_err(),
            UnwrapError::WrongKeyOrCorrupt
        );
        // tamper / version
        let mut t = w.clone();
        t[20] ^= 1;
        assert_eq!(
            unwrap_dek(&kek, 5, &t).unwrap_err(),
            UnwrapError::WrongKeyOrCorrupt
        );
        let mut v = w.clone();
        v[0] = 9;
        assert_eq!(
            unwrap_dek(&kek, 5, &v).unwrap_err(),
            UnwrapError::UnknownVersion(9)
        );
        assert_eq!(
            unwrap_dek(&kek, 5, &[]).unwrap_err(),
            UnwrapError::WrongKeyOrCorrupt
        );
    }

    #[test]
    fn keyring_wrap_all_round_trip() {
        let kek = Kek::generate().unwrap();
        let mut ring = Keyring::generate().unwrap();
        ring.rotate().unwrap();
        let sealed = ring.seal(b"", b"x").unwrap();
        let wrapped = ring.wrap_all(&kek).unwrap();
        let keys = wrapped
            .iter()
            .map(|(id, w)| (*id, unwrap_dek(&kek, *id, w).unwrap()));
        let back = Keyring::from_keys(keys, ring.current_id()).unwrap();
        assert_eq!(back.open(b"", &sealed).unwrap().as_slice(), b"x");
        assert!(Keyring::from_keys(Vec::new(), 1).is_none());
        assert_eq!(format!("{back:?}"), "Keyring { ids: [1, 2], current: 2 }");
    }
}
