//! Everything that talks to the TPM: one [`Tpm`] per process run.
//!
//! Every transient context this module creates (storage key, sealed object, sessions) is
//! recorded and flushed: explicitly in [`Tpm::close`] on success, and by `Drop` on every
//! error path (and on panic, which unwinds). A TPM without a resource manager (swtpm, a raw
//! `/dev/tpm0`) keeps leaked contexts until reset, and has only 3 object slots.

use std::str::FromStr;

use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{Digest, SensitiveData, SymmetricDefinition};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::blob::{BlobError, SealedBlob};
use crate::error::{rc, SealError, TpmError};
use crate::pcr::PcrList;
use crate::templates;

/// Length of the key-encryption key in bytes.
pub const KEK_LEN: usize = 32;

/// The key-encryption key; wiped from memory when dropped.
pub type Kek = Zeroizing<[u8; KEK_LEN]>;

/// Parse a TCTI string (`device:/dev/tpmrm0`, `swtpm:host=...,port=...`, `mssim:...`,
/// `tabrmd[:...]`).
pub fn parse_tcti(text: &str) -> Result<TctiNameConf, SealError> {
    TctiNameConf::from_str(text).map_err(|_| {
        SealError::Usage(format!(
            "invalid --tcti {text:?}: expected device:PATH, swtpm:host=H,port=P, \
             mssim:host=H,port=P or tabrmd[:CONF]"
        ))
    })
}

/// An open connection to the TPM and the transient contexts loaded through it.
#[derive(Debug)]
pub struct Tpm {
    ctx: Context,
    /// Transient objects and sessions to flush, in creation order.
    live: Vec<ObjectHandle>,
    tcti: String,
}

impl Tpm {
    /// Open the TCTI. Any failure here means no TPM is reachable (exit 12).
    pub fn connect(tcti_text: &str, tcti: TctiNameConf) -> Result<Self, SealError> {
        let ctx = Context::new(tcti).map_err(|e| SealError::NoTpm {
            tcti: tcti_text.to_string(),
            source: e.into(),
        })?;
        Ok(Tpm {
            ctx,
            live: Vec::new(),
            tcti: tcti_text.to_string(),
        })
    }

    /// Map a TSS error: transport failures are "no TPM" (exit 12), the rest exit 1.
    fn fail(&self, what: &'static str, e: tss_esapi::Error) -> SealError {
        let source = TpmError::from(e);
        if source.is_transport() {
            SealError::NoTpm {
                tcti: self.tcti.clone(),
                source,
            }
        } else {
            SealError::Tpm { what, source }
        }
    }

    fn flush(&mut self, handle: ObjectHandle) -> Result<(), SealError> {
        self.live.retain(|h| *h != handle);
        self.ctx
            .flush_context(handle)
            .map_err(|e| self.fail("cannot flush a TPM context", e))
    }

    /// Flush everything still loaded, reporting the first failure.
    pub fn close(mut self) -> Result<(), SealError> {
        let mut first = Ok(());
        while let Some(handle) = self.live.pop() {
            if let Err(e) = self.ctx.flush_context(handle) {
                if first.is_ok() {
                    first = Err(self.fail("cannot flush a TPM context", e));
                }
            }
        }
        first
    }

    /// Create the storage primary key (re-derived from the owner seed each run).
    fn storage_key(&mut self) -> Result<KeyHandle, SealError> {
        let template =
            templates::srk().map_err(|e| self.fail("cannot build the SRK template", e))?;
        let created = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(|e| self.fail("cannot create the storage primary key (owner hierarchy)", e))?;
        self.live.push(created.key_handle.into());
        Ok(created.key_handle)
    }

    /// Start a session salted with `salt_key`, with AES-128-CFB parameter encryption.
    /// Only the holder of the storage key's private part (the TPM) can derive the session
    /// key, so encrypted parameters are opaque to anyone on the TPM bus.
    fn salted_session(
        &mut self,
        salt_key: KeyHandle,
        kind: SessionType,
        encrypt_command: bool,
    ) -> Result<AuthSession, SealError> {
        let session = self
            .ctx
            .start_auth_session(
                Some(salt_key),
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(|e| self.fail("cannot start a salted TPM session", e))?
            .ok_or(SealError::Internal("the TPM returned no session handle"))?;
        self.live
            .push(ObjectHandle::from(SessionHandle::from(session)));
        // decrypt: the first command parameter travels encrypted (the KEK in TPM2_Create).
        // encrypt: the first response parameter travels encrypted (the KEK from Unseal).
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_decrypt(encrypt_command)
            .with_encrypt(true)
            .build();
        self.ctx
            .tr_sess_set_attributes(session, attributes, mask)
            .map_err(|e| self.fail("cannot set session attributes", e))?;
        Ok(session)
    }

    fn end_session(&mut self, session: AuthSession) -> Result<(), SealError> {
        self.flush(ObjectHandle::from(SessionHandle::from(session)))
    }

    /// Current sha256 values of `pcrs`, in `pcrs` order.
    pub fn read_pcrs(&mut self, pcrs: &PcrList) -> Result<Vec<(u8, Vec<u8>)>, SealError> {
        let selection = pcrs
            .selection()
            .map_err(|e| self.fail("cannot build the PCR selection", e))?;
        let data = tss_esapi::abstraction::pcr::read_all(&mut self.ctx, selection)
            .map_err(|e| self.fail("cannot read the PCRs", e))?;
        let bank = data
            .pcr_bank(HashingAlgorithm::Sha256)
            .ok_or(SealError::Internal("the TPM returned no sha256 PCR bank"))?;
        pcrs.indices()
            .iter()
            .map(|i| {
                let slot = tss_esapi::structures::PcrSlot::try_from(1u32 << i)
                    .map_err(|_| SealError::Internal("PCR index out of range"))?;
                let digest = bank
                    .get_digest(slot)
                    .ok_or(SealError::Internal("the TPM did not return a selected PCR"))?;
                Ok((*i, digest.value().to_vec()))
            })
            .collect()
    }

    /// PolicyPCR digest over the current values of `pcrs`, computed by the TPM in a
    /// trial session.
    fn trial_policy(&mut self, pcrs: &PcrList) -> Result<Digest, SealError> {
        let selection = pcrs
            .selection()
            .map_err(|e| self.fail("cannot build the PCR selection", e))?;
        let trial = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Trial,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
            .map_err(|e| self.fail("cannot start a trial policy session", e))?
            .ok_or(SealError::Internal("the TPM returned no session handle"))?;
        self.live
            .push(ObjectHandle::from(SessionHandle::from(trial)));
        let policy = PolicySession::try_from(trial)
            .map_err(|e| self.fail("trial session is not a policy session", e))?;
        self.ctx
            .policy_pcr(policy, Digest::default(), selection)
            .map_err(|e| self.fail("TPM2_PolicyPCR (trial) failed", e))?;
        let digest = self
            .ctx
            .policy_get_digest(policy)
            .map_err(|e| self.fail("TPM2_PolicyGetDigest failed", e))?;
        self.end_session(trial)?;
        Ok(digest)
    }

    /// Seal `kek` to the current values of `pcrs`.
    ///
    /// Refuses (exit 14) when every selected PCR is all-zero unless `allow_unmeasured`.
    /// Before returning, the new blob is loaded and unsealed once and compared with `kek`,
    /// so a blob that is written is known to unseal on this TPM in this PCR state.
    pub fn seal(
        &mut self,
        kek: &Kek,
        pcrs: &PcrList,
        allow_unmeasured: bool,
    ) -> Result<SealedBlob, SealError> {
        let values = self.read_pcrs(pcrs)?;
        let unmeasured = values.iter().all(|(_, v)| v.iter().all(|b| *b == 0));
        if unmeasured && !allow_unmeasured {
            return Err(SealError::UnmeasuredPcrs { pcrs: pcrs.clone() });
        }

        let srk = self.storage_key()?;
        let policy = self.trial_policy(pcrs)?;
        let template = templates::sealed_object(policy.clone())
            .map_err(|e| self.fail("cannot build the sealed-object template", e))?;
        let secret = SensitiveData::try_from(kek.as_slice())
            .map_err(|e| self.fail("cannot wrap the KEK for the TPM", e))?;

        let session = self.salted_session(srk, SessionType::Hmac, true)?;
        let created = self
            .ctx
            .execute_with_session(Some(session), |ctx| {
                ctx.create(srk, template, None, Some(secret), None, None)
            })
            .map_err(|e| self.fail("TPM2_Create of the sealed object failed", e))?;
        self.end_session(session)?;

        let blob = SealedBlob {
            pcrs: pcrs.clone(),
            policy_digest: policy,
            public: created.out_public,
            private: created.out_private,
        };
        let check = self.unseal_under(srk, &blob)?;
        if check.as_slice() != kek.as_slice() {
            return Err(SealError::Internal(
                "the freshly sealed blob did not unseal to the same key",
            ));
        }
        self.flush(srk.into())?;
        Ok(blob)
    }

    /// Unseal a blob: load it under the storage key, satisfy its PCR policy, unseal.
    pub fn unseal(&mut self, blob: &SealedBlob) -> Result<Kek, SealError> {
        let srk = self.storage_key()?;
        let kek = self.unseal_under(srk, blob)?;
        self.flush(srk.into())?;
        Ok(kek)
    }

    fn unseal_under(&mut self, srk: KeyHandle, blob: &SealedBlob) -> Result<Kek, SealError> {
        // TPM2_Load checks the private area's integrity HMAC with a key derived from the
        // parent's seed: under another TPM's (or a cleared TPM's) storage key it fails
        // with TPM_RC_INTEGRITY.
        let session = self.salted_session(srk, SessionType::Hmac, true)?;
        let loaded = self.ctx.execute_with_session(Some(session), |ctx| {
            ctx.load(srk, blob.private.clone(), blob.public.clone())
        });
        let object = match loaded {
            Ok(object) => object,
            Err(e) => return Err(self.classify_load_error(e)),
        };
        self.live.push(object.into());
        self.end_session(session)?;

        // Policy session: PolicyPCR with an empty digest makes the TPM fold in the
        // current PCR values; TPM2_Unseal then compares the session's policy digest with
        // the object's authPolicy and fails with TPM_RC_POLICY_FAIL if PCRs changed.
        let selection = blob
            .pcrs
            .selection()
            .map_err(|e| self.fail("cannot build the PCR selection", e))?;
        let session = self.salted_session(srk, SessionType::Policy, false)?;
        let policy = PolicySession::try_from(session)
            .map_err(|e| self.fail("session is not a policy session", e))?;
        self.ctx
            .policy_pcr(policy, Digest::default(), selection)
            .map_err(|e| self.fail("TPM2_PolicyPCR failed", e))?;
        let unsealed = self
            .ctx
            .execute_with_session(Some(session), |ctx| ctx.unseal(object.into()));
        let secret = match unsealed {
            Ok(secret) => secret,
            Err(e) => {
                let source = TpmError::from(e);
                return Err(match source.tpm_rc() {
                    Some(rc::POLICY_FAIL) => SealError::PcrMismatch {
                        pcrs: blob.pcrs.clone(),
                        source,
                    },
                    _ => self.fail("TPM2_Unseal failed", e),
                });
            }
        };
        self.end_session(session)?;
        self.flush(object.into())?;

        let bytes: &[u8] = secret.value();
        if bytes.len() != KEK_LEN {
            return Err(SealError::Blob {
                path: Default::default(),
                source: BlobError::WrongSecretLength(bytes.len()),
            });
        }
        // Copy straight into the zeroizing buffer (no intermediate array on the stack).
        let mut kek: Kek = Zeroizing::new([0u8; KEK_LEN]);
        kek.copy_from_slice(bytes);
        Ok(kek)
    }

    fn classify_load_error(&self, e: tss_esapi::Error) -> SealError {
        let source = TpmError::from(e);
        match source.tpm_rc() {
            Some(rc::INTEGRITY) => SealError::WrongTpm { source },
            // The TPM refused the structures themselves (size, value, key, binding, ...):
            // the blob is damaged, not foreign.
            Some(code) if code & rc::FMT1 != 0 => SealError::Blob {
                path: Default::default(),
                source: BlobError::RejectedByTpm(source),
            },
            _ => self.fail("TPM2_Load of the sealed object failed", e),
        }
    }

    /// TPM2_Clear with lockout authorisation (empty lockout auth). Changes the owner seed:
    /// every blob sealed before becomes unloadable.
    pub fn clear(&mut self) -> Result<(), SealError> {
        self.ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.clear(AuthHandle::Lockout)
            })
            .map_err(|e| self.fail("TPM2_Clear (lockout hierarchy) failed", e))
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        // Error paths: flush whatever is still loaded, newest first. Failures are ignored
        // here (the error being reported is the interesting one); tss-esapi's own Drop
        // then closes the ESYS context.
        while let Some(handle) = self.live.pop() {
            let _ = self.ctx.flush_context(handle);
        }
    }
}
