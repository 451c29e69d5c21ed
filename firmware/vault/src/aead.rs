//! The one AEAD every sealed byte string uses (ChaCha20-Poly1305, 96-bit random nonces),
//! randomness, and HKDF-SHA256. Everything above this module speaks in versioned formats.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

pub(crate) const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// A 256-bit secret, wiped when dropped.
pub(crate) type Secret32 = Zeroizing<[u8; KEY_LEN]>;

/// Why sealing failed. Both are practically impossible on a running Linux system, and
/// neither is a reason to panic.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the system random number generator failed")]
    Rng(#[source] getrandom::Error),
    #[error("the plaintext is too long to seal")]
    TooLong,
    #[error("key derivation failed")]
    Kdf,
}

/// `N` bytes from the kernel's random number generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    random()
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(CryptoError::Rng)?;
    Ok(out)
}

pub(crate) fn random_secret() -> Result<Secret32, CryptoError> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    getrandom::fill(out.as_mut_slice()).map_err(CryptoError::Rng)?;
    Ok(out)
}

/// HKDF-SHA256 (no salt: every input key is already uniformly random) expanded to 32 bytes.
pub(crate) fn derive(ikm: &[u8; KEY_LEN], info: &[u8]) -> Result<Secret32, CryptoError> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32: expand does not fail.
    Hkdf::<Sha256>::new(None, ikm)
        .expand(info, out.as_mut_slice())
        .map_err(|_| CryptoError::Kdf)?;
    Ok(out)
}

/// Appends `nonce ++ AEAD(key, nonce, aad, plaintext) ++ tag` to `out` (which already holds
/// the caller's header). The plaintext is copied once, into `out`, and encrypted in place.
pub(crate) fn seal_into(
    key: &[u8; KEY_LEN],
    aad: &[&[u8]],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let nonce: [u8; NONCE_LEN] = random()?;
    let aad = aad.concat();
    out.reserve(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut out[start..])
        .map_err(|_| CryptoError::TooLong)?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// Opens `nonce ++ ciphertext ++ tag`. `None` on any failure (truncated, tampered, wrong key
/// or wrong associated data): the AEAD does not say which, and neither do we.
pub(crate) fn open(
    key: &[u8; KEY_LEN],
    aad: &[&[u8]],
    sealed: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
    let aad = aad.concat();
    let mut buf = Zeroizing::new(ct.to_vec());
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            &aad,
            buf.as_mut_slice(),
            Tag::from_slice(tag),
        )
        .ok()?;
    Some(buf)
}

/// Opens a sealed 32-byte key.
pub(crate) fn open_key(key: &[u8; KEY_LEN], aad: &[&[u8]], sealed: &[u8]) -> Option<Secret32> {
    let pt = open(key, aad, sealed)?;
    let arr: [u8; KEY_LEN] = pt.as_slice().try_into().ok()?;
    Some(Zeroizing::new(arr))
}
