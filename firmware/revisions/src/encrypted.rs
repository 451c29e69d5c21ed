//! The config history in the encrypted store (`config_history` table of callgate-store):
//! what the daemon uses, so revisions are encrypted at rest like every other record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use callgate_store::{ConfigRevision, Store};

use crate::store::{History, Revision};
use crate::RevisionError;

/// [`History`] over the encrypted store. The newest revision number is kept in memory
/// (found once at open), so a commit does not decrypt the whole history.
pub struct StoreHistory {
    store: Arc<Store>,
    last: AtomicU64,
}

impl StoreHistory {
    pub fn open(store: Arc<Store>) -> Result<StoreHistory, RevisionError> {
        let mut last = 0;
        for r in store.iter_config_history() {
            last = last.max(r.map_err(store_err)?.id);
        }
        Ok(StoreHistory {
            store,
            last: AtomicU64::new(last),
        })
    }
}

impl std::fmt::Debug for StoreHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreHistory")
    }
}

fn revision(r: ConfigRevision) -> Revision {
    Revision {
        number: r.revision,
        time_ms: r.time_ms,
        author: r.author,
        note: r.note,
        text: r.text,
    }
}

fn store_err(e: callgate_store::StoreError) -> RevisionError {
    RevisionError::Store(callgate_store::error_chain(&e))
}

impl History for StoreHistory {
    fn last(&self) -> Result<u64, RevisionError> {
        Ok(self.last.load(Ordering::Relaxed))
    }

    fn numbers(&self) -> Result<Vec<u64>, RevisionError> {
        self.store
            .iter_config_history()
            .map(|r| r.map(|rec| rec.id).map_err(store_err))
            .collect()
    }

    fn get(&self, n: u64) -> Result<Revision, RevisionError> {
        match self.store.get_config_revision(n) {
            Ok(rec) => Ok(revision(rec.value)),
            Err(callgate_store::StoreError::NotFound { .. }) => {
                Err(RevisionError::NoSuchRevision(n))
            }
            Err(e) => Err(store_err(e)),
        }
    }

    fn append(
        &self,
        author: &str,
        note: &str,
        text: &str,
        time_ms: u64,
    ) -> Result<Revision, RevisionError> {
        let number = self.last()? + 1;
        let rev = ConfigRevision {
            revision: number,
            time_ms,
            author: author.to_owned(),
            note: note.to_owned(),
            text: text.to_owned(),
        };
        self.store.put_config_revision(&rev).map_err(store_err)?;
        self.last.store(number, Ordering::Relaxed);
        Ok(revision(rev))
    }
}
