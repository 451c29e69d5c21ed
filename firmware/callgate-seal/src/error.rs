//! The one error type of `callgate-seal` and its mapping to the documented exit codes.
//!
//! `Display` of every variant is one short sentence without its cause; `main` prints the
//! whole chain (`error: cause: cause`) on one stderr line. The exit codes are a contract
//! with the daemon's vault crate (see the crate docs).

use std::fmt;
use std::path::PathBuf;

use crate::blob::BlobError;
use crate::pcr::PcrList;

/// Process exit codes (a contract with the daemon; keep in sync with the crate docs).
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any other error (TPM command failed for another reason, I/O error, ...).
    pub const OTHER: u8 = 1;
    /// Usage error: bad arguments, wrong stdin length, stdout is a terminal.
    pub const USAGE: u8 = 2;
    /// The PCRs no longer match the policy the KEK was sealed to.
    pub const PCR_MISMATCH: u8 = 10;
    /// The blob was sealed by another TPM, or this TPM was cleared since.
    pub const WRONG_TPM: u8 = 11;
    /// No TPM reachable through the TCTI.
    pub const NO_TPM: u8 = 12;
    /// The blob is unreadable, corrupt or of an unsupported version.
    pub const BAD_BLOB: u8 = 13;
    /// Refusing to seal to PCRs that are all zero (nothing measured).
    pub const UNMEASURED_PCRS: u8 = 14;
}

/// Everything that can make `callgate-seal` fail.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Bad command line or misuse of stdin/stdout.
    #[error("{0}")]
    Usage(String),

    /// The TCTI could not be opened or the TPM stopped answering.
    #[error("no TPM reachable at TCTI {tcti}")]
    NoTpm {
        tcti: String,
        #[source]
        source: TpmError,
    },

    /// TPM2_Unseal failed its policy check: the selected PCRs changed since sealing.
    #[error("unseal refused: {} the policy the key was sealed to (measured boot changed)", mismatch_subject(.pcrs))]
    PcrMismatch {
        pcrs: PcrList,
        #[source]
        source: TpmError,
    },

    /// TPM2_Load failed its integrity check: the storage key is not the one the blob was
    /// sealed under (another TPM, or this TPM's owner seed changed with TPM2_Clear).
    #[error("unseal refused: this blob was sealed by a different TPM, or the TPM was cleared")]
    WrongTpm {
        #[source]
        source: TpmError,
    },

    /// The blob file cannot be used.
    #[error("sealed blob {}", .path.display())]
    Blob {
        path: PathBuf,
        #[source]
        source: BlobError,
    },

    /// Every selected PCR is all-zero and the danger flag was not given.
    #[error(
        "refusing to seal to unmeasured PCRs: {} all zero (nothing was measured); \
         pass --danger-allow-unmeasured-pcrs to seal anyway",
        unmeasured_subject(.pcrs)
    )]
    UnmeasuredPcrs { pcrs: PcrList },

    /// A TPM command failed for a reason that has no exit code of its own.
    #[error("{what}")]
    Tpm {
        what: &'static str,
        #[source]
        source: TpmError,
    },

    /// Local I/O failed (stdin, stdout, writing the blob).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// Something that must not happen did (kept as an error, never a panic).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

fn mismatch_subject(pcrs: &PcrList) -> String {
    if pcrs.len() == 1 {
        format!("PCR {pcrs} does not match")
    } else {
        format!("PCRs {pcrs} do not match")
    }
}

fn unmeasured_subject(pcrs: &PcrList) -> String {
    if pcrs.len() == 1 {
        format!("PCR {pcrs} is")
    } else {
        format!("PCRs {pcrs} are")
    }
}

impl SealError {
    /// The documented process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            SealError::Usage(_) => exit::USAGE,
            SealError::NoTpm { .. } => exit::NO_TPM,
            SealError::PcrMismatch { .. } => exit::PCR_MISMATCH,
            SealError::WrongTpm { .. } => exit::WRONG_TPM,
            SealError::Blob { .. } => exit::BAD_BLOB,
            SealError::UnmeasuredPcrs { .. } => exit::UNMEASURED_PCRS,
            SealError::Tpm { .. } | SealError::Io { .. } | SealError::Internal(_) => exit::OTHER,
        }
    }

    /// Name the blob file in a blob error raised where the path was not known.
    pub fn with_blob_path(self, blob: &std::path::Path) -> Self {
        match self {
            SealError::Blob { path, source } if path.as_os_str().is_empty() => SealError::Blob {
                path: blob.to_path_buf(),
                source,
            },
            other => other,
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SealError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The whole error chain on one line: `outer: cause: cause`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// TSS2 response-code layers (bits 16..24 of a `TSS2_RC`).
pub mod layer {
    /// The TPM itself answered with this code.
    pub const TPM: u8 = 0;
    /// Enhanced System API (client-side checks).
    pub const ESAPI: u8 = 7;
    /// The TCTI (transport: device node, socket).
    pub const TCTI: u8 = 10;
    /// The access broker / resource manager (tabrmd).
    pub const RESMGR: u8 = 11;
    /// A TPM error reported through the resource manager.
    pub const RESMGR_TPM: u8 = 12;
}

/// TPM 2.0 response codes this tool acts on (TPM 2.0 Part 2, 6.6).
pub mod rc {
    use tss_esapi::constants::tss;

    /// Format-one flag: bits 0..6 are the error number, bits 6..12 name the parameter,
    /// handle or session the error concerns.
    pub const FMT1: u32 = tss::TPM2_RC_FMT1;
    /// `TPM_RC_POLICY_FAIL` (0x09d): a policy check failed.
    pub const POLICY_FAIL: u32 = tss::TPM2_RC_POLICY_FAIL;
    /// `TPM_RC_INTEGRITY` (0x09f): the integrity check of a private area failed.
    pub const INTEGRITY: u32 = tss::TPM2_RC_INTEGRITY;

    /// Reduce a TPM-layer code to its base error (drop the parameter/handle/session number
    /// of format-one codes), so it compares equal to the constants above.
    pub fn base(code: u32) -> u32 {
        let code = code & 0xffff;
        if code & FMT1 != 0 {
            FMT1 | (code & 0x3f)
        } else {
            code
        }
    }
}

/// A failed TPM Software Stack call, with the raw response code kept for classification.
///
/// Wraps `tss_esapi::Error` because its `Display` does not show the numeric code (which is
/// what an engineer needs to search for), and its `source()` repeats its own message.
#[derive(Debug, Clone, Copy)]
pub struct TpmError {
    inner: tss_esapi::Error,
    raw: Option<u32>,
}

impl TpmError {
    /// The TSS layer that produced the code.
    pub fn layer(&self) -> Option<u8> {
        self.raw.map(rc_layer)
    }

    /// The TPM's own response code reduced with [`rc::base`], only when the TPM answered.
    pub fn tpm_rc(&self) -> Option<u32> {
        let raw = self.raw?;
        matches!(rc_layer(raw), layer::TPM | layer::RESMGR_TPM).then(|| rc::base(raw))
    }

    /// True when the transport failed: nothing (or nothing that speaks TPM) answered.
    pub fn is_transport(&self) -> bool {
        matches!(self.layer(), Some(layer::TCTI | layer::RESMGR))
    }
}

fn rc_layer(raw: u32) -> u8 {
    ((raw >> 16) & 0xff) as u8
}

impl From<tss_esapi::Error> for TpmError {
    fn from(inner: tss_esapi::Error) -> Self {
        TpmError {
            raw: raw_rc(&inner),
            inner,
        }
    }
}

impl fmt::Display for TpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.inner, self.raw) {
            (tss_esapi::Error::WrapperError(kind), _) => write!(f, "{kind}"),
            (tss_esapi::Error::Tss2Error(code), Some(raw)) => {
                let who = match rc_layer(raw) {
                    layer::TPM => "TPM",
                    layer::ESAPI => "ESAPI",
                    layer::TCTI => "TCTI",
                    layer::RESMGR => "resource manager",
                    layer::RESMGR_TPM => "TPM via resource manager",
                    _ => "TSS",
                };
                if self.tpm_rc().is_some() && code.kind().is_some() {
                    write!(f, "{who} response code {raw:#x}: {code}")
                } else if let Some(name) = tss_base_rc_name(raw) {
                    write!(f, "{who} response code {raw:#x}: {name}")
                } else {
                    write!(f, "{who} response code {raw:#x}")
                }
            }
            (tss_esapi::Error::Tss2Error(code), None) => write!(f, "{code}"),
        }
    }
}

impl std::error::Error for TpmError {}

/// Names of the TSS-generated (non-TPM layer) base response codes, `TSS2_BASE_RC_*`.
fn tss_base_rc_name(raw: u32) -> Option<&'static str> {
    if matches!(rc_layer(raw), layer::TPM | layer::RESMGR_TPM) {
        return None;
    }
    Some(match raw & 0xffff {
        1 => "general failure",
        2 => "not implemented",
        3 => "bad context",
        4 => "ABI mismatch",
        5 => "bad reference",
        6 => "insufficient buffer",
        7 => "bad sequence",
        8 => "no connection",
        9 => "try again",
        10 => "I/O error (nothing answering at that address or device?)",
        11 => "bad value",
        12 => "not permitted",
        16 => "bad size",
        17 => "malformed response",
        20 => "incompatible TCTI",
        21 => "not supported (TCTI library or service missing?)",
        22 => "bad TCTI structure",
        23 => "out of memory",
        27 => "response authorization failed",
        _ => return None,
    })
}

/// Recover the numeric `TSS2_RC` from a `tss_esapi::Error`.
///
/// tss-esapi 7.7 keeps the raw value private; its inner format types print it as
/// `Response code value: 0x...` (stable for the pinned version; unit-tested below).
fn raw_rc(err: &tss_esapi::Error) -> Option<u32> {
    use tss_esapi::constants::response_code::Tss2ResponseCode;
    match err {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(code)) => {
            parse_rc_text(&code.to_string())
        }
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(code)) => {
            parse_rc_text(&code.to_string())
        }
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::Success) => Some(0),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

fn parse_rc_text(text: &str) -> Option<u32> {
    let (_, hex) = text.rsplit_once("0x")?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_wrapper_text() {
        assert_eq!(parse_rc_text("Response code value: 0x99d"), Some(0x99d));
        assert_eq!(parse_rc_text("Response code value: 0xa000a"), Some(0xa000a));
        assert_eq!(parse_rc_text("no number"), None);
    }

    #[test]
    fn base_drops_the_parameter_and_session_number() {
        // POLICY_FAIL reported for session 1, INTEGRITY for parameter 1.
        assert_eq!(rc::POLICY_FAIL, 0x09d);
        assert_eq!(rc::INTEGRITY, 0x09f);
        assert_eq!(rc::base(0x99d), rc::POLICY_FAIL);
        assert_eq!(rc::base(0x1df), rc::INTEGRITY);
        assert_eq!(rc::base(0x9f), rc::INTEGRITY);
        assert_eq!(rc::base(0x128), 0x128);
        assert_ne!(rc::base(0x9a2), rc::INTEGRITY);
    }

    #[test]
    fn names_tss_layer_codes() {
        assert!(tss_base_rc_name(0xa000a).unwrap().starts_with("I/O error"));
        assert_eq!(tss_base_rc_name(0x9d), None);
    }

    #[test]
    fn wrapper_errors_have_no_code() {
        let e = TpmError::from(tss_esapi::Error::WrapperError(
            tss_esapi::WrapperErrorKind::WrongParamSize,
        ));
        assert_eq!(e.raw, None);
        assert!(!e.is_transport());
        assert_eq!(e.tpm_rc(), None);
    }
}
