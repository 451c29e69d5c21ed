//! The appliance's TLS identities in the state directory: a key made here and sealed
//! under the KEK (never in the clear on disk), and the certificate chain a CA signed for
//! it (public). Three use it: the uplink's client identity, SIP over TLS's server one and
//! the transcript intake's server one.

use std::path::Path;

use callgate_pki::Key;
use callgate_vault::Kek;

/// Where one identity is kept, and what its key is sealed for.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    /// The key, sealed under the KEK.
    pub key_file: &'static str,
    /// The installed certificate chain (PEM, leaf first).
    pub cert_file: &'static str,
    /// What the key is sealed for (bound as associated data: one identity's sealed key
    /// does not open as the other's).
    pub purpose: &'static str,
    /// In messages.
    pub what: &'static str,
}

/// The uplink's client identity.
pub const UPLINK: Stored = Stored {
    key_file: "uplink.key",
    cert_file: "uplink.crt",
    purpose: "uplink-key",
    what: "uplink",
};

/// SIP over TLS's server identity.
pub const SIP_TLS: Stored = Stored {
    key_file: "sip-tls.key",
    cert_file: "sip-tls.crt",
    purpose: "sip-tls-key",
    what: "SIP TLS",
};

/// The transcript intake's server identity.
pub const INTAKE: Stored = Stored {
    key_file: "intake.key",
    cert_file: "intake.crt",
    purpose: "intake-key",
    what: "intake",
};

impl Stored {
    /// The key, if one was made.
    pub fn load_key(&self, state_dir: &Path, kek: &Kek) -> Result<Option<Key>, String> {
        let path = state_dir.join(self.key_file);
        let blob = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let der = callgate_vault::open_secret(kek, self.purpose, &blob)
            .map_err(|_| format!("{}: damaged or sealed under another key", path.display()))?;
        Key::from_pkcs8(&der).map(Some).map_err(|e| e.to_string())
    }

    /// The key; made and sealed the first time.
    pub fn load_or_make_key(&self, state_dir: &Path, kek: &Kek) -> Result<Key, String> {
        if let Some(k) = self.load_key(state_dir, kek)? {
            return Ok(k);
        }
        let key = Key::generate().map_err(|e| e.to_string())?;
        let blob = callgate_vault::seal_secret(kek, self.purpose, key.pkcs8())
            .map_err(|e| e.to_string())?;
        write_durably(&state_dir.join(self.key_file), &blob, 0o600)?;
        log::info!(
            "{}: a key was made for this appliance (sealed under the KEK)",
            self.what
        );
        Ok(key)
    }

    /// Key and certificate chain, when both are there and readable.
    pub fn load(&self, state_dir: &Path, kek: &Kek) -> Option<(Key, String)> {
        let key = match self.load_key(state_dir, kek) {
            Ok(Some(k)) => k,
            Ok(None) => return None,
            Err(e) => {
                log::error!("{}: {e}", self.what);
                return None;
            }
        };
        let chain_pem = std::fs::read_to_string(state_dir.join(self.cert_file)).ok()?;
        Some((key, chain_pem))
    }

    /// Checks a server certificate chain (PEM, leaf first) against the key and the clock
    /// (and its key usage), and keeps it: the key, and what the certificate says of itself.
    /// `no_key` is the answer when no key was made yet.
    pub fn install_server_chain(
        &self,
        state_dir: &Path,
        kek: &Kek,
        pem: &str,
        no_key: &str,
    ) -> Result<(Key, callgate_pki::CertInfo), String> {
        let key = self
            .load_key(state_dir, kek)?
            .ok_or_else(|| no_key.to_owned())?;
        let info = callgate_pki::check_server_certificate(pem, &key, callgate_pki::UnixTime::now())
            .map_err(|e| e.to_string())?;
        self.save_chain(state_dir, pem)?;
        Ok((key, info))
    }

    /// Keeps a checked certificate chain.
    pub fn save_chain(&self, state_dir: &Path, pem: &str) -> Result<(), String> {
        write_durably(&state_dir.join(self.cert_file), pem.as_bytes(), 0o644)
    }
}

/// Writes `bytes` to `path` through a temporary file, fsynced, renamed, the directory
/// fsynced.
pub fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
