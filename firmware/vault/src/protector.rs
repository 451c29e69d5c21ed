//! Protectors: what keeps the KEK between boots.
//!
//! - [`TpmProtector`] runs the `callgate-seal` helper (the only process that talks to the
//!   TPM) and reads the KEK from its stdout; its exit codes become [`UnsealError`] variants.
//! - [`SoftwareProtector`] keeps the KEK in a 0600 file. Development only, enabled by the
//!   config switch `danger_software_keys = true`, and it says so in the log on every unseal.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use zeroize::Zeroizing;

use crate::aead::{CryptoError, KEY_LEN};
use crate::Kek;

/// Exit codes of `callgate-seal`.
pub mod exit_code {
    pub const PCR_MISMATCH: i32 = 10;
    pub const DIFFERENT_TPM: i32 = 11;
    pub const NO_TPM: i32 = 12;
    pub const BLOB_CORRUPT: i32 = 13;
    pub const UNMEASURED: i32 = 14;
}

/// Most of the helper's stderr kept for the log.
const STDERR_CAP: usize = 4096;

/// Keeps the KEK between boots.
pub trait Protector: Send + Sync {
    /// The KEK, or why it cannot be had.
    fn unseal(&self) -> Result<Kek, UnsealError>;
    /// One line for the log: which protector, where.
    fn describe(&self) -> String;
}

/// Why the KEK could not be unsealed. Helper failures carry the helper's stderr (trimmed).
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error("the TPM refused to unseal: the measured boot state (PCRs) changed ({stderr})")]
    PcrMismatch { stderr: String },
    #[error("the key was sealed by another TPM, or this TPM was cleared ({stderr})")]
    DifferentTpm { stderr: String },
    #[error("no TPM found ({stderr})")]
    NoTpm { stderr: String },
    #[error("the sealed key blob is corrupt ({stderr})")]
    BlobCorrupt { stderr: String },
    #[error("the sealing helper failed with {status} ({stderr})")]
    Failed { status: String, stderr: String },
    #[error("cannot run the sealing helper {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the sealing helper printed {len} bytes, not a {KEY_LEN}-byte key")]
    BadOutput { len: usize },
    #[error("cannot read the software key file {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the software key file {path} is readable by others (mode {mode:o}); refusing it")]
    KeyFileInsecure { path: PathBuf, mode: u32 },
    #[error("the software key file {path} holds {len} bytes, not a {KEY_LEN}-byte key")]
    KeyFileLength { path: PathBuf, len: usize },
}

/// Why the KEK could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "refusing to seal to PCRs that hold no measurement ({stderr}); \
         danger_allow_unmeasured overrides this"
    )]
    Unmeasured { stderr: String },
    #[error("no TPM found ({stderr})")]
    NoTpm { stderr: String },
    #[error("the sealing helper failed with {status} ({stderr})")]
    Failed { status: String, stderr: String },
    #[error("cannot run the sealing helper {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot pass the key to the sealing helper")]
    Pipe(#[source] io::Error),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("cannot generate a key")]
    Crypto(#[source] CryptoError),
}

/// The KEK sealed by the TPM, through the `callgate-seal` helper.
#[derive(Debug, Clone)]
pub struct TpmProtector {
    /// The helper binary.
    pub seal_bin: PathBuf,
    /// The TPM connection, passed as `--tcti` (e.g. `device:/dev/tpmrm0`, or
    /// `swtpm:host=…,port=…` in the lab).
    pub tcti: String,
    /// The sealed blob.
    pub blob: PathBuf,
}

fn status_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Reads a child's stderr on a thread, so a chatty helper cannot block on a full pipe while
/// we wait on its stdout.
fn collect_stderr(child: &mut Child) -> Option<JoinHandle<String>> {
    let mut pipe = child.stderr.take()?;
    Some(std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut pipe).take(STDERR_CAP as u64).read_to_end(&mut buf);
        // Drain the rest so the helper never blocks on us.
        let _ = io::copy(&mut pipe, &mut io::sink());
        String::from_utf8_lossy(&buf).trim().to_string()
    }))
}

fn join_stderr(handle: Option<JoinHandle<String>>) -> String {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}

impl TpmProtector {
    /// `SEAL_BIN --tcti TCTI VERB`: the helper's command line, in one place.
    fn base_command(&self, verb: &str) -> Command {
        let mut cmd = Command::new(&self.seal_bin);
        cmd.arg("--tcti").arg(&self.tcti).arg(verb);
        cmd
    }

    fn command(&self, verb: &str) -> Command {
        let mut cmd = self.base_command(verb);
        cmd.arg("--blob").arg(&self.blob);
        cmd
    }

    /// Clears the TPM's owner hierarchy (TPM2_Clear through the lockout hierarchy): the
    /// storage key re-derives from a new seed, so no blob sealed before loads again.
    pub fn clear(&self) -> Result<(), SealError> {
        let out = self
            .base_command("clear")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| SealError::Spawn {
                path: self.seal_bin.clone(),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        match out.status.code() {
            Some(0) => Ok(()),
            Some(exit_code::NO_TPM) => Err(SealError::NoTpm { stderr }),
            _ => Err(SealError::Failed {
                status: status_text(out.status),
                stderr,
            }),
        }
    }

    /// Seals `kek` to this TPM under a policy on `pcrs` (written to `blob` by the helper).
    /// The helper refuses PCRs that hold no measurement (exit 14) unless
    /// `danger_allow_unmeasured` is set.
    pub fn seal(
        &self,
        kek: &Kek,
        pcrs: &[u8],
        danger_allow_unmeasured: bool,
    ) -> Result<(), SealError> {
        let pcr_list = pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        let mut cmd = self.command("seal");
        cmd.arg("--pcrs").arg(pcr_list);
        if danger_allow_unmeasured {
            cmd.arg("--danger-allow-unmeasured-pcrs");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| SealError::Spawn {
                path: self.seal_bin.clone(),
                source,
            })?;
        let stderr = collect_stderr(&mut child);
        // A helper that exits early (bad PCR list, no TPM) closes its stdin: the write then
        // fails with EPIPE, and its exit code says why.
        let written = match child.stdin.take() {
            Some(mut stdin) => stdin.write_all(kek.expose_secret()),
            None => Err(io::Error::other("no stdin pipe")),
        };
        let status = child.wait().map_err(SealError::Pipe)?;
        let stderr = join_stderr(stderr);
        match status.code() {
            Some(0) => written.map_err(SealError::Pipe),
            Some(exit_code::UNMEASURED) => Err(SealError::Unmeasured { stderr }),
            Some(exit_code::NO_TPM) => Err(SealError::NoTpm { stderr }),
            _ => Err(SealError::Failed {
                status: status_text(status),
                stderr,
            }),
        }
    }
}

impl Protector for TpmProtector {
    fn unseal(&self) -> Result<Kek, UnsealError> {
        let mut child = self
            .command("unseal")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| UnsealError::Spawn {
                path: self.seal_bin.clone(),
                source,
            })?;
        let stderr = collect_stderr(&mut child);
        // One byte more than a key, to tell "exactly 32" from "at least 32".
        let mut buf = Zeroizing::new([0u8; KEY_LEN + 1]);
        let mut len = 0;
        let mut read_err = None;
        if let Some(mut out) = child.stdout.take() {
            while len < buf.len() {
                match out.read(&mut buf[len..]) {
                    Ok(0) => break,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        read_err = Some(e);
                        break;
                    }
                }
            }
            let _ = io::copy(&mut out, &mut io::sink());
        }
        let status = child.wait().map_err(|source| UnsealError::Spawn {
            path: self.seal_bin.clone(),
            source,
        })?;
        let stderr = join_stderr(stderr);
        match status.code() {
            Some(0) => {
                if let Some(source) = read_err {
                    return Err(UnsealError::Spawn {
                        path: self.seal_bin.clone(),
                        source,
                    });
                }
                if len != KEY_LEN {
                    return Err(UnsealError::BadOutput { len });
                }
                Kek::from_slice(&buf[..KEY_LEN]).ok_or(UnsealError::BadOutput { len })
            }
            Some(exit_code::PCR_MISMATCH) => Err(UnsealError::PcrMismatch { stderr }),
            Some(exit_code::DIFFERENT_TPM) => Err(UnsealError::DifferentTpm { stderr }),
            Some(exit_code::NO_TPM) => Err(UnsealError::NoTpm { stderr }),
            Some(exit_code::BLOB_CORRUPT) => Err(UnsealError::BlobCorrupt { stderr }),
            _ => Err(UnsealError::Failed {
                status: status_text(status),
                stderr,
            }),
        }
    }

    fn describe(&self) -> String {
        format!(
            "TPM via {} (tcti {}, blob {})",
            self.seal_bin.display(),
            self.tcti,
            self.blob.display()
        )
    }
}

/// The KEK in a plain 0600 file: for development machines without a TPM, enabled only by
/// `danger_software_keys = true`. Anyone who can read the file (or an image of the disk) can
/// decrypt every record.
#[derive(Debug, Clone)]
pub struct SoftwareProtector {
    pub path: PathBuf,
}

impl SoftwareProtector {
    /// Uses an existing key file.
    pub fn new(path: impl Into<PathBuf>) -> SoftwareProtector {
        SoftwareProtector { path: path.into() }
    }

    /// Generates a new KEK into a new file at `path` (refuses to overwrite one).
    pub fn create(path: impl Into<PathBuf>) -> Result<SoftwareProtector, SealError> {
        let kek = Kek::generate().map_err(SealError::Crypto)?;
        SoftwareProtector::store(path, &kek)
    }

    /// Writes `kek` into a new file at `path` (refuses to overwrite one): written to a 0600
    /// temporary file, synced, renamed into place, directory synced.
    pub fn store(path: impl Into<PathBuf>, kek: &Kek) -> Result<SoftwareProtector, SealError> {
        let path = path.into();
        let io_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| SealError::Io { path: p, source }
        };
        if path.exists() {
            return Err(SealError::Exists { path });
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(kek.expose_secret()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&dir))?;
        Ok(SoftwareProtector { path })
    }
}

impl Protector for SoftwareProtector {
    fn unseal(&self) -> Result<Kek, UnsealError> {
        log::warn!(
            "danger_software_keys: the key-encryption key is stored unprotected on disk at {}; \
             anyone who can read that file or a copy of the disk can decrypt every record. \
             Never use this in production: use the TPM protector",
            self.path.display()
        );
        let key_file = |source| UnsealError::KeyFile {
            path: self.path.clone(),
            source,
        };
        let mut f = File::open(&self.path).map_err(key_file)?;
        let mode = f.metadata().map_err(key_file)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(UnsealError::KeyFileInsecure {
                path: self.path.clone(),
                mode: mode & 0o7777,
            });
        }
        let mut buf = Zeroizing::new([0u8; KEY_LEN + 1]);
        let mut len = 0;
        while len < buf.len() {
            match f.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(key_file(e)),
            }
        }
        if len != KEY_LEN {
            return Err(UnsealError::KeyFileLength {
                path: self.path.clone(),
                len,
            });
        }
        Kek::from_slice(&buf[..KEY_LEN]).ok_or(UnsealError::KeyFileLength {
            path: self.path.clone(),
            len,
        })
    }

    fn describe(&self) -> String {
        format!(
            "software key file {} (danger_software_keys: not protected)",
            self.path.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A fake `callgate-seal`: records its arguments and stdin, prints `stdout`, writes
    /// `stderr` and exits with `code`.
    fn fake_helper(dir: &Path, name: &str, stdout: &str, stderr: &str, code: i32) -> PathBuf {
        let bin = dir.join(name);
        let args = dir.join(format!("{name}.args"));
        let stdin = dir.join(format!("{name}.stdin"));
        let script = format!(
            "#!/bin/sh\necho \"$@\" > '{}'\ncat > '{}' 2>/dev/null\nprintf '{}'\nprintf '{}' >&2\nexit {}\n",
            args.display(),
            stdin.display(),
            stdout,
            stderr,
            code
        );
        let tmp = dir.join(format!("{name}.tmp"));
        fs::write(&tmp, script).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &bin).unwrap();
        bin
    }

    fn protector(dir: &Path, bin: PathBuf) -> TpmProtector {
        TpmProtector {
            seal_bin: bin,
            tcti: "swtpm:host=127.0.0.1,port=2321".into(),
            blob: dir.join("kek.blob"),
        }
    }

    /// Another test thread forking while a script is open for writing makes exec fail with
    /// ETXTBSY for a moment (a test-harness artefact); retry that alone.
    fn unseal(p: &TpmProtector) -> Result<Kek, UnsealError> {
        for _ in 0..50 {
            match p.unseal() {
                Err(UnsealError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc_etxtbsy()) =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                r => return r,
            }
        }
        p.unseal()
    }

    fn seal(p: &TpmProtector, kek: &Kek, pcrs: &[u8], danger: bool) -> Result<(), SealError> {
        for _ in 0..50 {
            match p.seal(kek, pcrs, danger) {
                Err(SealError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc_etxtbsy()) =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                r => return r,
            }
        }
        p.seal(kek, pcrs, danger)
    }

    fn libc_etxtbsy() -> i32 {
        26
    }

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz012345";

    #[test]
    fn unseal_reads_exactly_32_bytes_and_passes_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_helper(dir.path(), "ok", KEY, "", 0);
        let p = protector(dir.path(), bin);
        let kek = unseal(&p).unwrap();
        assert_eq!(kek.expose_secret(), KEY.as_bytes());
        let args = fs::read_to_string(dir.path().join("ok.args")).unwrap();
        assert_eq!(
            args.trim(),
            format!(
                "--tcti swtpm:host=127.0.0.1,port=2321 unseal --blob {}",
                dir.path().join("kek.blob").display()
            )
        );
        assert!(p.describe().contains("kek.blob"));
    }

    #[test]
    fn unseal_rejects_short_or_long_output() {
        let dir = tempfile::tempdir().unwrap();
        let short = fake_helper(dir.path(), "short", &KEY[..31], "", 0);
        assert!(matches!(
            unseal(&protector(dir.path(), short)),
            Err(UnsealError::BadOutput { len: 31 })
        ));
        let long = fake_helper(dir.path(), "long", &format!("{KEY}{KEY}"), "", 0);
        assert!(matches!(
            unseal(&protector(dir.path(), long)),
            Err(UnsealError::BadOutput { len: 33 })
        ));
    }

    #[test]
    fn exit_codes_map_to_variants_with_stderr() {
        let dir = tempfile::tempdir().unwrap();
        type Is = fn(&UnsealError) -> bool;
        let cases: [(i32, Is); 6] = [
            (10, |e| matches!(e, UnsealError::PcrMismatch { .. })),
            (11, |e| matches!(e, UnsealError::DifferentTpm { .. })),
            (12, |e| matches!(e, UnsealError::NoTpm { .. })),
            (13, |e| matches!(e, UnsealError::BlobCorrupt { .. })),
            (
                1,
                |e| matches!(e, UnsealError::Failed { status, .. } if status == "exit code 1"),
            ),
            (
                77,
                |e| matches!(e, UnsealError::Failed { status, .. } if status == "exit code 77"),
            ),
        ];
        for (code, is) in cases {
            let name = format!("code{code}");
            // Even if it printed something on stdout, a failure is a failure.
            let bin = fake_helper(
                dir.path(),
                &name,
                KEY,
                &format!("  helper says {code}\\n\\n"),
                code,
            );
            let err = unseal(&protector(dir.path(), bin)).unwrap_err();
            assert!(is(&err), "{code}: {err:?}");
            let text = err.to_string();
            assert!(text.contains(&format!("(helper says {code})")), "{text}");
        }
    }

    #[test]
    fn missing_helper_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = protector(dir.path(), dir.path().join("nope"));
        assert!(matches!(p.unseal(), Err(UnsealError::Spawn { .. })));
    }

    #[test]
    fn seal_passes_key_on_stdin_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_helper(dir.path(), "seal", "", "", 0);
        let p = protector(dir.path(), bin);
        let kek = Kek::from_slice(KEY.as_bytes()).unwrap();
        seal(&p, &kek, &[7, 11], false).unwrap();
        assert_eq!(
            fs::read(dir.path().join("seal.stdin")).unwrap(),
            KEY.as_bytes()
        );
        let args = fs::read_to_string(dir.path().join("seal.args")).unwrap();
        assert_eq!(
            args.trim(),
            format!(
                "--tcti swtpm:host=127.0.0.1,port=2321 seal --blob {} --pcrs 7,11",
                dir.path().join("kek.blob").display()
            )
        );
        seal(&p, &kek, &[7], true).unwrap();
        let args = fs::read_to_string(dir.path().join("seal.args")).unwrap();
        assert!(
            args.trim()
                .ends_with("--pcrs 7 --danger-allow-unmeasured-pcrs"),
            "{args}"
        );
    }

    #[test]
    fn seal_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::generate().unwrap();
        let unmeasured = fake_helper(dir.path(), "u", "", "PCR 7 is all zeros", 14);
        let e = seal(&protector(dir.path(), unmeasured), &kek, &[7], false).unwrap_err();
        assert!(matches!(&e, SealError::Unmeasured { stderr } if stderr == "PCR 7 is all zeros"));
        let no_tpm = fake_helper(dir.path(), "n", "", "", 12);
        let e = seal(&protector(dir.path(), no_tpm), &kek, &[7], false).unwrap_err();
        assert!(matches!(e, SealError::NoTpm { .. }));
        let other = fake_helper(dir.path(), "o", "", "", 3);
        let e = seal(&protector(dir.path(), other), &kek, &[7], false).unwrap_err();
        assert!(matches!(e, SealError::Failed { .. }));
    }

    #[test]
    fn software_protector_round_trip_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let p = SoftwareProtector::create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let a = p.unseal().unwrap();
        let b = SoftwareProtector::new(&path).unseal().unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert!(p.describe().contains("danger_software_keys"));
        // never overwrites
        assert!(matches!(
            SoftwareProtector::create(&path),
            Err(SealError::Exists { .. })
        ));
        // group/world-readable: refused
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            p.unseal(),
            Err(UnsealError::KeyFileInsecure { mode: 0o644, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            p.unseal(),
            Err(UnsealError::KeyFileLength { len: 5, .. })
        ));
        assert!(matches!(
            SoftwareProtector::new(dir.path().join("missing")).unseal(),
            Err(UnsealError::KeyFile { .. })
        ));
    }
}
