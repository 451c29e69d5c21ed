//! The one AEAD every sealed byte string uses (ChaCha20-Poly1305 of RFC 8439, 96-bit
//! random nonces), randomness, and HKDF-SHA256. Everything above this module speaks in
//! versioned formats.
//!
//! The AEAD is ring's (the same ring rustls runs on): its assembly is several times faster
//! than a portable implementation on the short strings records are (a few hundred bytes),
//! and the bytes are RFC 8439's, so what was sealed before opens the same.

use std::cell::RefCell;

use hkdf::Hkdf;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
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

/// Nonces buffered per refill of [`nonce`] (4,092 bytes per `getrandom` call).
const NONCES_PER_REFILL: usize = 341;

thread_local! {
    /// This thread's buffer of kernel randomness for nonces, and the index of its first
    /// unused nonce (`NONCES_PER_REFILL` when empty). A record seals twice (the record and
    /// its caller's data), and a `getrandom` call per nonce was most of the call-record
    /// writer's system calls; buffered, it is one per 170 records. Keys never come from
    /// here ([`random_secret`] asks the kernel each time).
    static NONCES: RefCell<(Box<[[u8; NONCE_LEN]; NONCES_PER_REFILL]>, usize)> =
        RefCell::new((Box::new([[0; NONCE_LEN]; NONCES_PER_REFILL]), NONCES_PER_REFILL));
}

/// A fresh 96-bit random nonce from the kernel's CSPRNG, taken from this thread's buffer.
/// Nothing is derived from earlier output. A used nonce is wiped from the buffer: a later
/// memory disclosure shows only nonces not yet used.
fn nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    NONCES.with(|cell| {
        let mut cell = cell.borrow_mut();
        let (buf, next) = &mut *cell;
        if *next >= NONCES_PER_REFILL {
            getrandom::fill(buf.as_flattened_mut()).map_err(CryptoError::Rng)?;
            *next = 0;
        }
        let out = std::mem::take(&mut buf[*next]);
        *next += 1;
        Ok(out)
    })
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
    let nonce = nonce()?;
    let aad = aad.concat();
    out.reserve(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = cipher(key)
        .ok_or(CryptoError::TooLong)?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut out[start..],
        )
        .map_err(|_| CryptoError::TooLong)?;
    out.extend_from_slice(tag.as_ref());
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
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let tag = Tag::try_from(tag).ok()?;
    let mut buf = Zeroizing::new(ct.to_vec());
    cipher(key)?
        .open_in_place_separate_tag(nonce, Aad::from(&aad), tag, buf.as_mut_slice(), 0..)
        .ok()?;
    Some(buf)
}

/// ChaCha20-Poly1305 under `key` (ring refuses only a key of the wrong length, which the
/// type rules out).
fn cipher(key: &[u8; KEY_LEN]) -> Option<LessSafeKey> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .ok()
        .map(LessSafeKey::new)
}

/// Opens a sealed 32-byte key.
pub(crate) fn open_key(key: &[u8; KEY_LEN], aad: &[&[u8]], sealed: &[u8]) -> Option<Secret32> {
    let pt = open(key, aad, sealed)?;
    let arr: [u8; KEY_LEN] = pt.as_slice().try_into().ok()?;
    Some(Zeroizing::new(arr))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8439 §2.8.2's test vector: the bytes are the standard's, so anything sealed
    /// before (by another implementation of the same AEAD) still opens.
    #[test]
    fn the_aead_is_rfc_8439_chacha20_poly1305() {
        let key: [u8; KEY_LEN] = std::array::from_fn(|i| 0x80 + i as u8);
        let nonce = unhex("070000004041424344454647");
        let aad = unhex("50515253c0c1c2c3c4c5c6c7");
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
                   tip for the future, sunscreen would be it.";
        let expected = unhex(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca96712\
             82fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58\
             fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116\
             1ae10b594f09e26a7e902ecbd0600691",
        );
        let sealed = [nonce.as_slice(), &expected].concat();
        // The associated data may come in parts: they are concatenated.
        let opened = open(&key, &[&aad[..4], &aad[4..]], &sealed).unwrap();
        assert_eq!(opened.as_slice(), pt.as_slice());
        // Our own seal of it under that nonce gives the same bytes: same ciphertext, same
        // tag (the nonce is random in `seal_into`, so seal with ring directly here).
        let mut buf = pt.to_vec();
        let tag = cipher(&key)
            .unwrap()
            .seal_in_place_separate_tag(
                Nonce::try_assume_unique_for_key(&nonce).unwrap(),
                Aad::from(&aad),
                &mut buf,
            )
            .unwrap();
        buf.extend_from_slice(tag.as_ref());
        assert_eq!(buf, expected);
        // One flipped bit anywhere, or other associated data: nothing opens.
        for i in [0, NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&key, &[&aad], &bad).is_none(), "byte {i}");
        }
        assert!(open(&key, &[b"other"], &sealed).is_none());
        assert!(open(&key, &[&aad], &sealed[..NONCE_LEN + TAG_LEN - 1]).is_none());
    }

    #[test]
    fn what_is_sealed_opens_with_its_key_and_associated_data_only() {
        let key = random_secret().unwrap();
        let other = random_secret().unwrap();
        let mut out = b"header".to_vec();
        seal_into(&key, &[b"a", b"b"], b"record", &mut out).unwrap();
        let body = &out[6..];
        assert_eq!(open(&key, &[b"ab"], body).unwrap().as_slice(), b"record");
        assert!(open(&other, &[b"ab"], body).is_none());
        assert!(open(&key, &[b"a"], body).is_none());
    }

    /// Buffered nonces never repeat, across refills and across threads, and none is the
    /// wiped (all-zero) value: a refill that did not happen would show as zeros.
    #[test]
    fn nonces_are_fresh_across_refills_and_threads() {
        let take = |n: usize| (0..n).map(|_| nonce().unwrap()).collect::<Vec<_>>();
        let mut all = take(3 * NONCES_PER_REFILL + 7);
        all.extend(
            std::thread::spawn(move || take(NONCES_PER_REFILL + 1))
                .join()
                .unwrap(),
        );
        let n = all.len();
        assert!(all.iter().all(|x| *x != [0; NONCE_LEN]));
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a nonce repeated");
    }
}
