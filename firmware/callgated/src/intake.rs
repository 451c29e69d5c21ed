//! The daemon's side of the transcript intake (`callgate_intake`): settings from
//! `[intake]`, the server's key made here and sealed under the KEK in `<state>/intake.key`
//! and the installed certificate chain in `<state>/intake.crt` (both kept by
//! [`crate::identity`], as SIP over TLS's are), the task started with the store and told of
//! every config change and installed certificate.

use std::path::Path;
use std::sync::Arc;

use callgate_config::Config;
use callgate_intake::{Identity, IntakeHandle, Settings};
use callgate_pki::CertInfo;
use callgate_store::Store;
use callgate_vault::Kek;
use tokio::sync::{mpsc, watch};

use crate::identity::INTAKE;

/// The installed identity, when there is one.
pub fn identity(state_dir: &Path, kek: &Kek) -> Option<Identity> {
    INTAKE
        .load(state_dir, kek)
        .map(|(key, chain_pem)| Identity { chain_pem, key })
}

/// A certificate signing request for the intake's key (made and sealed the first time):
/// the appliance's name as CN, the listen address as subject alternative name (what the
/// PBX checks the certificate against).
pub fn csr(state_dir: &Path, kek: &Kek, cfg: &Config) -> Result<String, String> {
    let i = cfg
        .intake
        .as_ref()
        .ok_or("no [intake] in the running config: commit one first")?;
    let key = INTAKE.load_or_make_key(state_dir, kek)?;
    key.csr_pem(cfg.appliance.name.as_str(), &[i.listen().ip().to_string()])
        .map_err(|e| e.to_string())
}

/// Checks `pem` (leaf first) against the intake's key, and keeps it: the identity to run
/// with, and what it says of itself.
pub fn install(state_dir: &Path, kek: &Kek, pem: &str) -> Result<(Identity, CertInfo), String> {
    let (key, info) = INTAKE.install_server_chain(
        state_dir,
        kek,
        pem,
        "no intake key yet: run `callgate intake csr` and have a CA the PBX trusts sign the request",
    )?;
    Ok((
        Identity {
            chain_pem: pem.to_owned(),
            key,
        },
        info,
    ))
}

/// The running intake: its handle, and where installed identities go.
#[derive(Debug, Clone)]
pub struct Intake {
    handle: IntakeHandle,
    ids: mpsc::Sender<Identity>,
}

impl Intake {
    /// Serves with a newly installed identity.
    pub async fn installed(&self, id: Identity) {
        let _ = self.ids.send(id).await;
    }
    pub async fn stop(&self) {
        self.handle.stop().await;
    }
}

/// Starts the intake and the task that follows the config.
pub fn spawn(
    mut config: watch::Receiver<Arc<Config>>,
    store: Arc<Store>,
    id: Option<Identity>,
) -> Intake {
    let first = Settings::from_config(&config.borrow_and_update());
    let handle = callgate_intake::spawn(first.clone().map(|s| (s, id.clone())), store);
    let (ids_tx, mut ids_rx) = mpsc::channel::<Identity>(4);
    let h = handle.clone();
    tokio::spawn(async move {
        let mut current = first;
        let mut id = id;
        loop {
            tokio::select! {
                changed = config.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let next = Settings::from_config(&config.borrow_and_update());
                    if next != current {
                        log::info!("intake: the config changed; serving with it");
                        current = next.clone();
                        h.reconfigure(next.map(|s| (s, id.clone()))).await;
                    }
                }
                i = ids_rx.recv() => {
                    let Some(i) = i else { break };
                    id = Some(i);
                    h.reconfigure(current.clone().map(|s| (s, id.clone()))).await;
                }
            }
        }
    });
    Intake {
        handle,
        ids: ids_tx,
    }
}
