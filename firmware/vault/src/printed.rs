//! The printed form of a 32-byte secret an engineer reads off one screen and types into
//! another (the recovery key, the pairing secret): 8 groups of 8 Crockford base32
//! characters, `XXXXXXXX-XXXXXXXX-…`. Each group carries 4 secret bytes and 1 check byte
//! bound to the group's position and to the kind of secret, so a mistyped or swapped group
//! is named when the secret is entered, and one kind is never taken for the other.
//! Parsing ignores case, spaces and dashes, and reads `O` as `0` and `I`/`L` as `1`.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::aead::{Secret32, KEY_LEN};

const GROUPS: usize = 8;
const GROUP_BYTES: usize = KEY_LEN / GROUPS;
const GROUP_CHARS: usize = 8;
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Why a typed key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrintedKeyError {
    #[error("a key has 64 characters (8 groups of 8), this has {0}")]
    Length(usize),
    #[error("'{0}' is not a key character")]
    BadChar(char),
    #[error("group {0} of the key has a typo (or it is another kind of key)")]
    Group(usize),
}

fn check_byte(kind: &[u8], index: usize, data: &[u8]) -> u8 {
    let mut h = Sha256::new();
    h.update(kind);
    h.update([index as u8]);
    h.update(data);
    h.finalize()[0]
}

fn decode_char(c: char) -> Option<u64> {
    let c = match c.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        c => c,
    };
    ALPHABET
        .iter()
        .position(|&a| a as char == c)
        .map(|p| p as u64)
}

/// The printable form of `secret`, check bytes bound to `kind`. Wiped when dropped.
pub(crate) fn encode(secret: &[u8; KEY_LEN], kind: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(GROUPS * (GROUP_CHARS + 1)));
    for (i, chunk) in secret.chunks(GROUP_BYTES).enumerate() {
        if i > 0 {
            out.push('-');
        }
        let mut v: u64 = 0;
        for b in chunk {
            v = (v << 8) | u64::from(*b);
        }
        v = (v << 8) | u64::from(check_byte(kind, i, chunk));
        for k in (0..GROUP_CHARS).rev() {
            out.push(ALPHABET[((v >> (5 * k)) & 31) as usize] as char);
        }
    }
    out
}

/// Reads a typed secret of `kind`, naming the group that has a typo.
pub(crate) fn parse(text: &str, kind: &[u8]) -> Result<Secret32, PrintedKeyError> {
    let chars: Zeroizing<Vec<char>> = Zeroizing::new(
        text.chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect(),
    );
    if chars.len() != GROUPS * GROUP_CHARS {
        return Err(PrintedKeyError::Length(chars.len()));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (i, group) in chars.chunks(GROUP_CHARS).enumerate() {
        let mut v: u64 = 0;
        for c in group {
            v = (v << 5) | decode_char(*c).ok_or(PrintedKeyError::BadChar(*c))?;
        }
        let data = &mut key[i * GROUP_BYTES..(i + 1) * GROUP_BYTES];
        for (k, b) in data.iter_mut().enumerate() {
            *b = (v >> (8 * (GROUP_BYTES - k))) as u8;
        }
        if check_byte(kind, i, data) != v as u8 {
            return Err(PrintedKeyError::Group(i + 1));
        }
    }
    Ok(key)
}
