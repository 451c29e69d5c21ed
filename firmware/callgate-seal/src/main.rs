//! `callgate-seal`: seals and unseals the appliance's key-encryption key (KEK) with the TPM,
//! then exits.
//!
//! # Background
//!
//! The daemon (`callgated`) encrypts its data keys with a 32-byte KEK. At rest the KEK
//! exists only as a *sealed blob*: a TPM object that this TPM releases only while the
//! measured-boot PCRs (PCR 7, the Secure Boot policy, by default) hold the values they had
//! when it was sealed. This helper is the only code in the product linked against the TPM
//! stack (tss-esapi, libtss2, glibc); the static musl daemon runs it as a subprocess, so only
//! this binary needs access to `/dev/tpmrm0`.
//!
//! # Command line (a contract with the daemon's vault crate)
//!
//! ```text
//! callgate-seal --tcti TCTI seal   --blob PATH [--pcrs 7,...] [--danger-allow-unmeasured-pcrs]
//!     reads exactly 32 bytes (the KEK) from stdin; writes the blob atomically
//!     (temporary file + fsync + rename + directory fsync), mode 0600
//! callgate-seal --tcti TCTI unseal --blob PATH
//!     writes exactly 32 raw bytes to stdout; refuses (exit 2) if stdout is a terminal
//! callgate-seal --tcti TCTI clear
//!     TPM2_Clear via the lockout hierarchy (decommissioning: the owner seed changes, so
//!     every blob sealed under the old storage key becomes unloadable)
//! callgate-seal --tcti TCTI pcrs [--pcrs 7,...]
//!     prints the current sha256 PCR values, one "N HEX" line per PCR (diagnostics)
//! ```
//!
//! TCTI: `device:/dev/tpmrm0` (appliance, the default), `swtpm:host=127.0.0.1,port=2321`
//! (tests), `mssim:host=...,port=...`, `tabrmd[:...]`.
//!
//! | exit | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | other error (TPM command failed for another reason, I/O) |
//! | 2 | usage: bad arguments, stdin not exactly 32 bytes, key to/from a terminal |
//! | 10 | `unseal refused: PCR 7 does not match the policy the key was sealed to (measured boot changed)` — TPM2_Unseal answered `TPM_RC_POLICY_FAIL` |
//! | 11 | `unseal refused: this blob was sealed by a different TPM, or the TPM was cleared` — TPM2_Load answered `TPM_RC_INTEGRITY` |
//! | 12 | `no TPM reachable at TCTI …: …` — the TCTI failed to open or the transport failed |
//! | 13 | the blob is unreadable, corrupt, or of an unsupported version/backend |
//! | 14 | refusing to seal to all-zero (unmeasured) PCRs without `--danger-allow-unmeasured-pcrs` |
//!
//! On failure stderr carries exactly one line: the error and its causes, `: `-separated,
//! with the raw TSS response code where the TPM stack produced one.
//!
//! # Design
//!
//! - **Storage key**: an ECC P-256 primary in the owner hierarchy from the standard SRK
//!   template (restricted decrypt, AES-128-CFB, sha256 name algorithm, unique = zeros),
//!   created fresh on every run and flushed before exit. It re-derives from the owner seed:
//!   same TPM, same key; after TPM2_Clear or on another TPM, a different key. Nothing is
//!   made persistent in TPM NV.
//! - **Sealed object**: a keyedhash data object holding the KEK, `userWithAuth` clear (its
//!   empty authValue never authorises Unseal), `adminWithPolicy` set, `fixedTPM` and
//!   `fixedParent` set, `authPolicy` = the PolicyPCR digest over the selected sha256 PCRs,
//!   computed by the TPM in a trial session.
//! - **Sessions**: TPM2_Create and TPM2_Load run in an HMAC session, TPM2_Unseal in a policy
//!   session; both are salted with the storage key and use AES-128-CFB parameter
//!   encryption, so the KEK never crosses the TPM bus in clear (in with Create, out with
//!   Unseal). The test `kek_never_crosses_the_tpm_bus_in_clear` checks this on swtpm's hex
//!   dump of every command and response.
//! - **Seal verifies**: after TPM2_Create the new object is loaded and unsealed once and
//!   compared with the input; only a blob known to unseal is written.
//! - **10 vs 11 from TPM response codes** (verified against swtpm by the integration tests):
//!   TPM2_Load under a storage key from another seed fails its integrity HMAC
//!   (`TPM_RC_INTEGRITY`, 0x9f + parameter number) → 11; TPM2_Unseal with changed PCRs
//!   fails the policy check (`TPM_RC_POLICY_FAIL`, 0x9d + session number) → 10. Other
//!   format-one errors at Load (the TPM refusing the structure) → 13.
//! - **Contexts are always flushed**: every transient object and session is recorded and
//!   flushed on success and on every error path (`Drop`, also on panic). swtpm and a raw
//!   `/dev/tpm0` have no resource manager and only 3 object slots.
//! - **Blob**: versioned JSON (see [`blob`]); `public`/`private` are the marshalled
//!   TPM2B structures, base64. Parsed strictly; anything unexpected is exit 13.
//!
//! # Security properties
//!
//! - The KEK never appears on a command line, in the environment or in a message. It moves
//!   through unbuffered pipe I/O into and out of a buffer that is zeroized on drop; stdin
//!   and stdout may not be terminals.
//! - Sealing to PCRs that are all zero (nothing measured, e.g. a fresh swtpm or a machine
//!   that measured nothing) is refused unless `--danger-allow-unmeasured-pcrs` is given:
//!   such a seal protects against nothing but moving the disk to another machine.
//! - libtss2's own stderr logging is switched off (`TSS2_LOG=all+NONE`) unless the caller
//!   set `TSS2_LOG`, so stderr stays the one-line contract; the response code is part of
//!   that line.
//!
//! # Current limitations
//!
//! - Copies of the KEK inside tss-esapi/libtss2 marshalling buffers (stack structures
//!   `TPM2B_SENSITIVE_CREATE`/`TPM2B_SENSITIVE_DATA`) are not zeroized by this crate.
//! - Lockout and owner authorisation are assumed empty (the appliance provisions the TPM
//!   that way); `clear` fails (exit 1) on a TPM whose lockout auth was set or whose clear
//!   was disabled.
//! - A corrupted `private` area and a foreign TPM look the same to the TPM (both fail
//!   the integrity check), so a flipped byte in `private` exits 11, not 13.
//! - Only the sha256 bank, only PCRs 0..=23, only a PolicyPCR policy (no signed/authorized
//!   policies, so a firmware update that changes PCR 7 requires re-sealing while the old
//!   values are still current).
//! - If the process is killed mid-command on a TPM without a resource manager, contexts
//!   leak until the TPM is reset (`/dev/tpmrm0` flushes them when the fd closes).

mod blob;
mod error;
mod pcr;
mod stdio;
mod templates;
mod tpm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::{exit, SealError};
use crate::pcr::{PcrList, DEFAULT_PCRS};
use crate::tpm::Tpm;

#[derive(Debug, Parser)]
#[command(
    name = "callgate-seal",
    version,
    about = "Seal/unseal the appliance key-encryption key with the TPM"
)]
struct Cli {
    /// TPM connection: device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:host=H,port=P, tabrmd
    #[arg(long, global = true, default_value = "device:/dev/tpmrm0")]
    tcti: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read the 32-byte KEK from stdin and write a sealed blob
    Seal {
        /// Where to write the sealed blob (replaced atomically, mode 0600)
        #[arg(long)]
        blob: PathBuf,
        /// sha256 PCRs to seal to, comma-separated
        #[arg(long, default_value = DEFAULT_PCRS)]
        pcrs: PcrList,
        /// Seal even if every selected PCR is all-zero (nothing measured): no protection
        /// beyond binding to this TPM
        #[arg(long)]
        danger_allow_unmeasured_pcrs: bool,
    },
    /// Unseal a blob and write the 32-byte KEK to stdout (must not be a terminal)
    Unseal {
        /// The sealed blob to read
        #[arg(long)]
        blob: PathBuf,
    },
    /// TPM2_Clear via the lockout hierarchy (decommission: invalidates every sealed blob)
    Clear,
    /// Print the current sha256 PCR values, one "N HEX" line each
    Pcrs {
        /// PCRs to print, comma-separated
        #[arg(long, default_value = DEFAULT_PCRS)]
        pcrs: PcrList,
    },
}

fn main() -> ExitCode {
    quiet_tss_logging();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => {
            eprintln!("{}", error::chain(&err));
            ExitCode::from(err.exit_code())
        }
    }
}

/// libtss2 prints its own `ERROR:esys:...` lines to stderr for every failed command, which
/// would break the one-line stderr contract. It reads `TSS2_LOG` lazily on first use, so
/// set it (before any thread or TSS call exists) unless the caller chose a level.
#[allow(clippy::disallowed_methods)] // the one env write, at the first line of main, single-threaded
fn quiet_tss_logging() {
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
}

fn run(cli: Cli) -> Result<(), SealError> {
    let tcti_conf = tpm::parse_tcti(&cli.tcti)?;
    match cli.command {
        Command::Seal {
            blob,
            pcrs,
            danger_allow_unmeasured_pcrs,
        } => {
            let kek = stdio::read_kek_from_stdin()?;
            let mut tpm = Tpm::connect(&cli.tcti, tcti_conf)?;
            let sealed = tpm
                .seal(&kek, &pcrs, danger_allow_unmeasured_pcrs)
                .map_err(|e| e.with_blob_path(&blob))?;
            tpm.close()?;
            drop(kek);
            blob::write_atomic(&blob, &sealed.to_json()?)
        }
        Command::Unseal { blob } => {
            stdio::check_stdout()?;
            let sealed = blob::read(&blob)?;
            let mut tpm = Tpm::connect(&cli.tcti, tcti_conf)?;
            let kek = tpm.unseal(&sealed).map_err(|e| e.with_blob_path(&blob))?;
            tpm.close()?;
            stdio::write_kek_to_stdout(&kek)
        }
        Command::Clear => {
            let mut tpm = Tpm::connect(&cli.tcti, tcti_conf)?;
            tpm.clear()?;
            tpm.close()
        }
        Command::Pcrs { pcrs } => {
            let mut tpm = Tpm::connect(&cli.tcti, tcti_conf)?;
            let values = tpm.read_pcrs(&pcrs)?;
            tpm.close()?;
            let mut out = String::new();
            for (index, value) in values {
                out.push_str(&format!("{index} {}\n", blob::hex(&value)));
            }
            print!("{out}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_contract_command_lines() {
        let cli = Cli::try_parse_from([
            "callgate-seal",
            "--tcti",
            "swtpm:host=127.0.0.1,port=2321",
            "seal",
            "--blob",
            "/x/kek.blob",
            "--pcrs",
            "0,7",
            "--danger-allow-unmeasured-pcrs",
        ])
        .unwrap();
        match cli.command {
            Command::Seal {
                pcrs,
                danger_allow_unmeasured_pcrs,
                ..
            } => {
                assert_eq!(pcrs.indices(), &[0, 7]);
                assert!(danger_allow_unmeasured_pcrs);
            }
            other => panic!("{other:?}"),
        }
        let cli =
            Cli::try_parse_from(["callgate-seal", "unseal", "--blob", "/x/kek.blob"]).unwrap();
        assert_eq!(cli.tcti, "device:/dev/tpmrm0");
        assert!(Cli::try_parse_from(["callgate-seal", "seal"]).is_err());
        assert!(Cli::try_parse_from(["callgate-seal", "pcrs", "--pcrs", "24"]).is_err());
    }

    #[test]
    fn tcti_strings() {
        for ok in [
            "device:/dev/tpmrm0",
            "swtpm:host=127.0.0.1,port=2321",
            "mssim:host=127.0.0.1,port=2321",
            "tabrmd",
        ] {
            assert!(tpm::parse_tcti(ok).is_ok(), "{ok}");
        }
        let err = tpm::parse_tcti("usb:whatever").unwrap_err();
        assert_eq!(err.exit_code(), exit::USAGE);
    }
}
