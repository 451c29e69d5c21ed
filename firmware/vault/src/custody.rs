//! Custody of the KEK over the appliance's life: provision, unlock at boot, recover onto a
//! replacement board, re-seal to a new PCR policy, decommission.
//!
//! Files under the state directory:
//! - `kek.blob`: the KEK sealed by the TPM (`callgate-seal`'s versioned JSON), or
//!   `kek.soft` with `danger_software_keys` (the KEK in a 0600 file, warned at every start)
//! - `kek.recovery`: the KEK wrapped under the recovery key that was printed once at
//!   provisioning; useless without that key.

use std::path::{Path, PathBuf};

use crate::{
    recovery_unwrap, recovery_wrap, Kek, Protector, RecoveryError, RecoveryKey, SealError,
    SoftwareProtector, TpmProtector, UnsealError,
};

/// Where and how the KEK is kept.
#[derive(Debug, Clone)]
pub struct Custody {
    pub state_dir: PathBuf,
    /// The `callgate-seal` helper.
    pub seal_bin: PathBuf,
    pub tcti: String,
    pub pcrs: Vec<u8>,
    /// `danger_software_keys`: no TPM, the KEK in a root-only file.
    pub software: bool,
    /// `danger_allow_unmeasured_pcrs`.
    pub allow_unmeasured: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error("not provisioned: no sealed key at {0} (run `callgate provision`)")]
    NotProvisioned(PathBuf),
    #[error("already provisioned: {0} exists (decommission first to start over)")]
    AlreadyProvisioned(PathBuf),
    #[error("cannot unseal the key-encryption key")]
    Unseal(#[from] UnsealError),
    #[error("cannot seal the key-encryption key")]
    Seal(#[from] SealError),
    #[error("the recovery key does not open {path}")]
    Recovery {
        path: PathBuf,
        #[source]
        source: RecoveryError,
    },
    #[error("cannot generate a key")]
    Crypto(#[from] crate::CryptoError),
    #[error("clearing the TPM failed")]
    Clear(#[source] SealError),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CustodyError + '_ {
    move |source| CustodyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` (mode 0600) atomically: temporary file, fsync, rename, fsync dir.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CustodyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

fn remove_if_exists(path: &Path) -> Result<(), CustodyError> {
    let r = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

impl Custody {
    pub fn blob_path(&self) -> PathBuf {
        self.state_dir.join(if self.software {
            "kek.soft"
        } else {
            "kek.blob"
        })
    }

    pub fn recovery_path(&self) -> PathBuf {
        self.state_dir.join("kek.recovery")
    }

    fn tpm(&self) -> TpmProtector {
        TpmProtector {
            seal_bin: self.seal_bin.clone(),
            tcti: self.tcti.clone(),
            blob: self.blob_path(),
        }
    }

    /// The protector in use, for the log.
    pub fn describe(&self) -> String {
        if self.software {
            SoftwareProtector::new(self.blob_path()).describe()
        } else {
            self.tpm().describe()
        }
    }

    pub fn is_provisioned(&self) -> bool {
        self.blob_path().exists()
    }

    /// Boot: the KEK, or why not (not provisioned, PCR mismatch, other TPM, no TPM…).
    pub fn unlock(&self) -> Result<Kek, CustodyError> {
        if !self.is_provisioned() {
            return Err(CustodyError::NotProvisioned(self.blob_path()));
        }
        Ok(if self.software {
            SoftwareProtector::new(self.blob_path()).unseal()?
        } else {
            self.tpm().unseal()?
        })
    }

    fn keep(&self, kek: &Kek) -> Result<(), CustodyError> {
        if self.software {
            remove_if_exists(&self.blob_path())?;
            SoftwareProtector::store(self.blob_path(), kek)?;
        } else {
            self.tpm().seal(kek, &self.pcrs, self.allow_unmeasured)?;
        }
        Ok(())
    }

    /// First start: a new KEK, sealed, and its recovery copy. The recovery key is returned
    /// to be shown once; it is not stored.
    pub fn provision(&self) -> Result<(Kek, RecoveryKey), CustodyError> {
        if self.is_provisioned() {
            return Err(CustodyError::AlreadyProvisioned(self.blob_path()));
        }
        let kek = Kek::generate()?;
        let recovery = RecoveryKey::generate()?;
        write_private(&self.recovery_path(), &recovery_wrap(&kek, &recovery)?)?;
        self.keep(&kek)?;
        Ok((kek, recovery))
    }

    /// A replacement board (or a changed measured boot): the KEK from the recovery copy,
    /// sealed again to this TPM and its current PCRs.
    pub fn recover(&self, recovery: &RecoveryKey) -> Result<Kek, CustodyError> {
        let path = self.recovery_path();
        let wrapped = std::fs::read(&path).map_err(io(&path))?;
        let kek = recovery_unwrap(&wrapped, recovery).map_err(|source| CustodyError::Recovery {
            path: path.clone(),
            source,
        })?;
        self.keep(&kek)?;
        Ok(kek)
    }

    /// Rotation of the sealing policy: the same KEK sealed to the configured PCRs as they
    /// are now (e.g. after an intended firmware update).
    pub fn reseal(&self, kek: &Kek) -> Result<(), CustodyError> {
        self.keep(kek)
    }

    /// Decommission: clears the TPM's owner hierarchy (the storage key re-derives from a
    /// new seed, so no old blob loads again), deletes the sealed and recovery blobs and the
    /// data directory. Afterwards nothing here can be decrypted.
    pub fn decommission(&self, data_dir: &Path) -> Result<(), CustodyError> {
        if !self.software {
            self.tpm().clear().map_err(CustodyError::Clear)?;
        }
        remove_if_exists(&self.blob_path())?;
        remove_if_exists(&self.recovery_path())?;
        remove_if_exists(data_dir)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn software(dir: &Path) -> Custody {
        Custody {
            state_dir: dir.to_path_buf(),
            seal_bin: PathBuf::from("/nonexistent"),
            tcti: String::new(),
            pcrs: vec![7],
            software: true,
            allow_unmeasured: false,
        }
    }

    #[test]
    fn provision_unlock_recover_decommission() {
        let d = tempfile::tempdir().unwrap();
        let c = software(d.path());
        assert!(matches!(c.unlock(), Err(CustodyError::NotProvisioned(_))));
        let (kek, recovery) = c.provision().unwrap();
        assert!(matches!(
            c.provision(),
            Err(CustodyError::AlreadyProvisioned(_))
        ));
        assert_eq!(c.unlock().unwrap().expose_secret(), kek.expose_secret());
        // the board is replaced: the key file is gone, the recovery copy remains
        std::fs::remove_file(c.blob_path()).unwrap();
        let wrong = RecoveryKey::generate().unwrap();
        assert!(matches!(
            c.recover(&wrong),
            Err(CustodyError::Recovery { .. })
        ));
        let back = c
            .recover(&RecoveryKey::parse(&recovery.encode()).unwrap())
            .unwrap();
        assert_eq!(back.expose_secret(), kek.expose_secret());
        assert_eq!(c.unlock().unwrap().expose_secret(), kek.expose_secret());
        let data = d.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("x"), b"y").unwrap();
        c.decommission(&data).unwrap();
        assert!(!c.blob_path().exists() && !c.recovery_path().exists() && !data.exists());
        assert!(matches!(c.unlock(), Err(CustodyError::NotProvisioned(_))));
    }
}
