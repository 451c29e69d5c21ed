//! The sealed-blob file: versioned JSON around the TPM's public and private areas.
//!
//! ```json
//! {"version":1,"backend":"tpm2","pcr_bank":"sha256","pcrs":[7],
//!  "policy_digest":"<hex>","public":"<base64 TPM2B_PUBLIC>","private":"<base64 TPM2B_PRIVATE>",
//!  "parent":"owner-ecc-p256-srk"}
//! ```
//!
//! `public` and `private` are the marshalled TPM2B structures (big-endian size prefix), the
//! same bytes `tpm2_create -u/-r` writes, so an engineer can load them with tpm2-tools.
//! Parsing is strict: unknown fields, a public area that is not the sealed-object template
//! this tool creates, or a policy digest that disagrees with the public area's authPolicy
//! all refuse the blob before the TPM sees it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tss_esapi::structures::{Digest, Private, Public, PublicBuffer};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::error::{SealError, TpmError};
use crate::pcr::{PcrList, PcrListError};
use crate::templates;

/// The blob format this build writes and reads.
pub const VERSION: u64 = 1;
/// `backend` value for TPM 2.0 sealed blobs.
pub const BACKEND: &str = "tpm2";
/// `pcr_bank` value: the policy is over sha256 PCRs.
pub const PCR_BANK: &str = "sha256";
/// `parent` value: sealed under the ECC P-256 storage primary of the owner hierarchy.
pub const PARENT: &str = "owner-ecc-p256-srk";
/// A blob is a few hundred bytes; anything much larger is not ours.
pub const MAX_BLOB_BYTES: u64 = 64 * 1024;

/// Why a blob was refused (exit code 13).
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("cannot be read")]
    Read(#[source] std::io::Error),
    #[error("is {0} bytes, larger than any sealed blob ({MAX_BLOB_BYTES} bytes at most)")]
    TooLarge(u64),
    #[error("is not valid JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("has no numeric \"version\" field")]
    NoVersion,
    #[error("has version {0}; this callgate-seal reads version {VERSION} only")]
    UnsupportedVersion(String),
    #[error("is for backend {0:?}; this callgate-seal handles {BACKEND:?} only")]
    UnsupportedBackend(String),
    #[error("does not match the version {VERSION} format")]
    Malformed(#[source] serde_json::Error),
    #[error("field {field:?} {problem}")]
    Field {
        field: &'static str,
        problem: String,
    },
    #[error("field \"pcrs\" is not a valid PCR list")]
    Pcrs(#[source] PcrListError),
    #[error("was rejected by the TPM as malformed")]
    RejectedByTpm(#[source] TpmError),
    #[error("unsealed to {0} bytes, but a key-encryption key is 32 bytes")]
    WrongSecretLength(usize),
}

fn field(field: &'static str, problem: impl Into<String>) -> BlobError {
    BlobError::Field {
        field,
        problem: problem.into(),
    }
}

/// The on-disk JSON, version 1. Field order is the documented order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlobV1 {
    version: u64,
    backend: String,
    pcr_bank: String,
    pcrs: Vec<u64>,
    policy_digest: String,
    public: String,
    private: String,
    parent: String,
}

/// A parsed, checked sealed blob.
#[derive(Debug, Clone)]
pub struct SealedBlob {
    /// The sha256 PCRs the policy covers.
    pub pcrs: PcrList,
    /// PolicyPCR digest (sha256) over `pcrs`; equals the object's authPolicy.
    pub policy_digest: Digest,
    /// The sealed object's public area.
    pub public: Public,
    /// The sealed object's private area (encrypted and integrity-protected by the parent).
    pub private: Private,
}

impl SealedBlob {
    /// Serialise to the documented JSON (pretty-printed, trailing newline).
    pub fn to_json(&self) -> Result<Vec<u8>, SealError> {
        let public = PublicBuffer::try_from(self.public.clone())
            .and_then(|buf| buf.marshall())
            .map_err(|e| SealError::Tpm {
                what: "cannot marshal the sealed object's public area",
                source: e.into(),
            })?;
        let private = marshal_tpm2b(self.private.value())
            .ok_or(SealError::Internal("private area larger than a TPM2B"))?;
        let v1 = BlobV1 {
            version: VERSION,
            backend: BACKEND.into(),
            pcr_bank: PCR_BANK.into(),
            pcrs: self.pcrs.indices().iter().map(|i| u64::from(*i)).collect(),
            policy_digest: hex(self.policy_digest.value()),
            public: B64.encode(public),
            private: B64.encode(private),
            parent: PARENT.into(),
        };
        let mut out = serde_json::to_vec_pretty(&v1)
            .map_err(|_| SealError::Internal("cannot serialise the blob"))?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parse and check a blob. Every failure is a [`BlobError`] (exit 13), never a panic.
    pub fn from_json(bytes: &[u8]) -> Result<Self, BlobError> {
        // First only the header, so a future version gets "unsupported version" rather
        // than "unknown field".
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(BlobError::NotJson)?;
        let version = value.get("version").ok_or(BlobError::NoVersion)?;
        match version.as_u64() {
            Some(VERSION) => {}
            Some(_) => return Err(BlobError::UnsupportedVersion(version.to_string())),
            None if version.is_number() => {
                return Err(BlobError::UnsupportedVersion(version.to_string()))
            }
            None => return Err(BlobError::NoVersion),
        }
        match value.get("backend").and_then(|b| b.as_str()) {
            Some(BACKEND) => {}
            Some(other) => return Err(BlobError::UnsupportedBackend(other.to_string())),
            None => return Err(field("backend", "is missing or not a string")),
        }
        let v1: BlobV1 = serde_json::from_value(value).map_err(BlobError::Malformed)?;

        if v1.pcr_bank != PCR_BANK {
            return Err(field(
                "pcr_bank",
                format!("is {:?}; only {PCR_BANK:?} is supported", v1.pcr_bank),
            ));
        }
        if v1.parent != PARENT {
            return Err(field(
                "parent",
                format!("is {:?}; only {PARENT:?} is supported", v1.parent),
            ));
        }
        let pcrs = PcrList::new(v1.pcrs).map_err(BlobError::Pcrs)?;

        let policy = unhex(&v1.policy_digest)
            .filter(|d| d.len() == 32)
            .ok_or_else(|| field("policy_digest", "is not 64 hex digits"))?;
        let policy_digest =
            Digest::try_from(policy).map_err(|_| field("policy_digest", "is not a digest"))?;

        let public_bytes = B64
            .decode(v1.public.as_bytes())
            .map_err(|_| field("public", "is not base64"))?;
        let public = unmarshal_public(&public_bytes)?;
        templates::check_sealed_public(&public, &policy_digest)
            .map_err(|problem| field("public", problem))?;

        let private_bytes = B64
            .decode(v1.private.as_bytes())
            .map_err(|_| field("private", "is not base64"))?;
        let private = unmarshal_tpm2b(&private_bytes)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| field("private", "is not a marshalled TPM2B_PRIVATE"))
            .and_then(|p| {
                Private::try_from(p).map_err(|_| field("private", "is larger than a TPM2B_PRIVATE"))
            })?;

        Ok(SealedBlob {
            pcrs,
            policy_digest,
            public,
            private,
        })
    }
}

fn unmarshal_public(bytes: &[u8]) -> Result<Public, BlobError> {
    let bad = || field("public", "is not a marshalled TPM2B_PUBLIC");
    let buffer = PublicBuffer::unmarshall(bytes).map_err(|_| bad())?;
    let public = Public::try_from(buffer).map_err(|_| bad())?;
    // Canonical form only: re-marshalling must give back exactly the input (this also
    // refuses trailing bytes, which the TSS unmarshaller ignores).
    let again = PublicBuffer::try_from(public.clone())
        .and_then(|buf| buf.marshall())
        .map_err(|_| bad())?;
    if again != bytes {
        return Err(field("public", "is not in canonical TPM2B_PUBLIC form"));
    }
    Ok(public)
}

/// `size (u16 big-endian) || bytes`.
fn marshal_tpm2b(bytes: &[u8]) -> Option<Vec<u8>> {
    let size = u16::try_from(bytes.len()).ok()?;
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(bytes);
    Some(out)
}

fn unmarshal_tpm2b(bytes: &[u8]) -> Option<Vec<u8>> {
    let (size, rest) = bytes.split_first_chunk::<2>()?;
    (usize::from(u16::from_be_bytes(*size)) == rest.len()).then(|| rest.to_vec())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Hex (either case) to bytes; `None` on odd length or a non-hex digit.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Read and parse the blob at `path` (exit 13 on any problem).
pub fn read(path: &Path) -> Result<SealedBlob, SealError> {
    let err = |source| SealError::Blob {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| err(BlobError::Read(e)))?;
    let mut bytes = Vec::new();
    file.take(MAX_BLOB_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(BlobError::Read(e)))?;
    if bytes.len() as u64 > MAX_BLOB_BYTES {
        let size = fs::metadata(path)
            .map(|m| m.len())
            .unwrap_or(bytes.len() as u64);
        return Err(err(BlobError::TooLarge(size)));
    }
    SealedBlob::from_json(&bytes).map_err(err)
}

/// Write `bytes` to `path` atomically: a 0600 temporary file in the same directory,
/// fsync, rename over `path`, fsync the directory. On failure `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SealError> {
    let name = path
        .file_name()
        .ok_or_else(|| SealError::Usage(format!("--blob {} names no file", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = (|| -> std::io::Result<()> {
        // A leftover from a crashed run with the same pid is ours to replace.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(SealError::io(
            format!("cannot write the sealed blob {}", path.display()),
            e,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SealedBlob {
        let policy = Digest::try_from(vec![0xab; 32]).unwrap();
        SealedBlob {
            pcrs: "7".parse().unwrap(),
            public: templates::sealed_object(policy.clone()).unwrap(),
            policy_digest: policy,
            private: Private::try_from(vec![0x5a; 120]).unwrap(),
        }
    }

    fn json(blob: &SealedBlob) -> serde_json::Value {
        serde_json::from_slice(&blob.to_json().unwrap()).unwrap()
    }

    fn parse(value: &serde_json::Value) -> Result<SealedBlob, BlobError> {
        SealedBlob::from_json(&serde_json::to_vec(value).unwrap())
    }

    #[test]
    fn round_trips_with_the_documented_fields() {
        let blob = sample();
        let value = json(&blob);
        let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        for key in [
            "version",
            "backend",
            "pcr_bank",
            "pcrs",
            "policy_digest",
            "public",
            "private",
            "parent",
        ] {
            assert!(keys.contains(&key.to_string()), "{key} missing");
        }
        assert_eq!(value["version"], 1);
        assert_eq!(value["backend"], "tpm2");
        assert_eq!(value["pcrs"], serde_json::json!([7]));
        assert_eq!(value["policy_digest"], "ab".repeat(32));
        let back = parse(&value).unwrap();
        assert_eq!(back.public, blob.public);
        assert_eq!(back.private, blob.private);
        assert_eq!(back.policy_digest, blob.policy_digest);
        // private is a real TPM2B: big-endian size prefix.
        let private = B64.decode(value["private"].as_str().unwrap()).unwrap();
        assert_eq!(&private[..2], &[0, 120]);
    }

    #[test]
    fn refuses_other_versions_and_backends() {
        let mut v = json(&sample());
        v["version"] = 2.into();
        assert!(matches!(parse(&v), Err(BlobError::UnsupportedVersion(s)) if s == "2"));
        v["version"] = "1".into();
        assert!(matches!(parse(&v), Err(BlobError::NoVersion)));
        let mut v = json(&sample());
        v["backend"] = "software".into();
        assert!(matches!(parse(&v), Err(BlobError::UnsupportedBackend(_))));
        let mut v = json(&sample());
        v["extra"] = 1.into();
        assert!(matches!(parse(&v), Err(BlobError::Malformed(_))));
    }

    #[test]
    fn refuses_inconsistent_fields() {
        let mut v = json(&sample());
        v["policy_digest"] = "cd".repeat(32).into();
        assert!(matches!(
            parse(&v),
            Err(BlobError::Field {
                field: "public",
                ..
            })
        ));
        let mut v = json(&sample());
        v["policy_digest"] = "zz".into();
        assert!(matches!(
            parse(&v),
            Err(BlobError::Field {
                field: "policy_digest",
                ..
            })
        ));
        let mut v = json(&sample());
        v["pcrs"] = serde_json::json!([7, 7]);
        assert!(matches!(parse(&v), Err(BlobError::Pcrs(_))));
        let mut v = json(&sample());
        v["pcrs"] = serde_json::json!([]);
        assert!(matches!(parse(&v), Err(BlobError::Pcrs(_))));
        let mut v = json(&sample());
        v["pcr_bank"] = "sha1".into();
        assert!(matches!(
            parse(&v),
            Err(BlobError::Field {
                field: "pcr_bank",
                ..
            })
        ));
        let mut v = json(&sample());
        v["parent"] = "owner-rsa-2048-srk".into();
        assert!(matches!(
            parse(&v),
            Err(BlobError::Field {
                field: "parent",
                ..
            })
        ));
    }

    #[test]
    fn refuses_damaged_structures() {
        let good = json(&sample());
        let public = B64.decode(good["public"].as_str().unwrap()).unwrap();
        let private = B64.decode(good["private"].as_str().unwrap()).unwrap();

        let mut v = good.clone();
        v["private"] = B64.encode(&private[..private.len() - 1]).into();
        assert!(matches!(
            parse(&v),
            Err(BlobError::Field {
                field: "private",
                ..
            })
        ));
        v["private"] = "!!!".into();
        assert!(matches!(
            parse(&v),
            Err(BlobError::Field {
                field: "private",
                ..
            })
        ));
        v["private"] = B64.encode([0u8, 0]).into();
        assert!(matches!(
            parse(&v),
            Err(BlobError::Field {
                field: "private",
                ..
            })
        ));

        let mut v = good.clone();
        let mut trailing = public.clone();
        trailing.push(0);
        v["public"] = B64.encode(&trailing).into();
        assert!(matches!(
            parse(&v),
            Err(BlobError::Field {
                field: "public",
                ..
            })
        ));
        v["public"] = B64.encode(&public[..public.len() / 2]).into();
        assert!(matches!(
            parse(&v),
            Err(BlobError::Field {
                field: "public",
                ..
            })
        ));

        // Every single-byte flip of the public area is refused or still parses to a
        // consistent object; never a panic.
        for i in 0..public.len() {
            let mut flipped = public.clone();
            flipped[i] ^= 0x01;
            let mut v = good.clone();
            v["public"] = B64.encode(&flipped).into();
            let _ = parse(&v);
        }
        // Arbitrary truncations of the whole file.
        let text = serde_json::to_vec(&good).unwrap();
        for len in 0..text.len() {
            assert!(SealedBlob::from_json(&text[..len]).is_err());
        }
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0x00, 0x7f, 0xff]), "007fff");
        assert_eq!(unhex("007FfF"), Some(vec![0x00, 0x7f, 0xff]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("0g"), None);
    }

    #[test]
    fn atomic_write_is_0600_and_replaces() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.blob");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A missing directory is an I/O error, not a panic.
        assert!(write_atomic(&dir.path().join("nope/kek.blob"), b"x").is_err());
    }
}
