//! # callgate-vault
//!
//! Keys, and nothing but keys: the key-encryption key (KEK) and what keeps it between boots,
//! the data keys that encrypt records, the per-subject keys that make erasure a deletion, and
//! the recovery key that brings a replacement board up. No I/O, except running the sealing
//! helper (and the software protector's key file).
//!
//! ## Design
//! ```text
//!   TPM ── callgate-seal ──▶ KEK ──wraps──▶ DEKs (keyring)      ──seal──▶ records
//!   (or a 0600 file: danger)  │   ──wraps──▶ subject keys        ──seal──▶ PII fields
//!                             │   ──HKDF───▶ lookup key ──HMAC──▶ subject tokens
//!   recovery key ──HKDF──▶ wraps the KEK (kept on disk for a replacement board)
//! ```
//! - [`Kek`]: 32 bytes, from a [`Protector`]: [`TpmProtector`] runs `callgate-seal` (the
//!   only process that talks to the TPM) and maps its exit codes to [`UnsealError`];
//!   [`SoftwareProtector`] is the loudly warned development fallback.
//! - [`Keyring`]: data-encryption keys ([`Dek`]) by `u32` id, one current; [`rotate`]
//!   adds a new current key, old ones stay for reading. Persisted wrapped ([`wrap_dek`]).
//! - Records ([`seal_record`] / [`open_record`]): `[version][key_id][nonce][ct+tag]`,
//!   ChaCha20-Poly1305, the header and the caller's associated data (the store binds table
//!   and record id) authenticated, so records cannot be moved between places.
//! - Subjects ([`SubjectKey`], [`subject_token`]): PII is sealed under a per-subject key
//!   found by a token `HMAC(lookup key, normalized id)`; deleting the key shreds the PII.
//! - Recovery ([`RecoveryKey`], [`recovery_wrap`], [`recovery_unwrap`]).
//! - Pairing ([`PairingSecret`], [`wrap_pair_key`], [`unwrap_pair_key`]): the pair key,
//!   derived from a secret shown once, kept only wrapped under the KEK.
//!
//! Every secret type wipes itself on drop (`zeroize`) and prints as `Name(…)` in `Debug`.
//! [`WipingBuf`] is the sink for a secret serialized piece by piece: it wipes each buffer it
//! outgrows, where a growing `Zeroizing<Vec<u8>>` frees its old buffers unwiped.
//! Every byte format starts with a version byte.
//!
//! ## Current limitations
//! - Randomness comes from the kernel (`getrandom`); its failure is an error, not a panic,
//!   which is why sealing returns `Result`.
//! - Random 96-bit nonces: fine up to ~2^32 seals per key; rotate data keys long before.
//!   They are taken from a per-thread buffer of kernel randomness (341 per `getrandom`
//!   call, used ones wiped); keys are asked of the kernel each time.
//! - The subject lookup key is derived from the KEK, so tokens change if the KEK does; the
//!   KEK is meant to live as long as the appliance's data (a replacement board recovers the
//!   same KEK with the recovery key).
//! - The helper is run without a timeout: a hung TPM hangs the unseal (boot).
//! - Secrets can still be copied by the compiler (moves, registers) or swapped out; zeroize
//!   wipes what we own, not every copy the machine ever made.
//!
//! [`rotate`]: Keyring::rotate

mod aead;
mod custody;
mod kek;
mod pairing;
mod printed;
mod protector;
mod record;
mod recovery;
mod subject;
mod wiping;

pub use aead::{random_bytes, CryptoError};
pub use custody::{Custody, CustodyError};
pub use kek::Kek;
pub use pairing::{unwrap_pair_key, wrap_pair_key, PairingSecret};
pub use printed::PrintedKeyError;
pub use protector::{
    exit_code, Protector, SealError, SoftwareProtector, TpmProtector, UnsealError,
};
pub use record::{
    open_record, open_secret, record_key_id, seal_record, seal_secret, unwrap_dek, wrap_dek, Dek,
    Keyring, RecordError, UnwrapError, RECORD_VERSION, WRAP_VERSION,
};
pub use recovery::{recovery_unwrap, recovery_wrap, RecoveryError, RecoveryKey, RecoveryKeyError};
pub use subject::{normalize_subject, subject_token, LookupKey, SubjectKey, SubjectToken};
pub use wiping::WipingBuf;
pub use zeroize::Zeroizing;
