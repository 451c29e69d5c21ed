//! Where revisions live. The history of config texts is behind the [`History`] trait: the
//! daemon keeps it in the encrypted store (records are encrypted at rest), tests may keep it
//! in plain files ([`FileHistory`]). The small records needed without keys stay plain files
//! in the state directory, each written atomically (temporary file, fsync, rename, fsync
//! of the directory):
//! - `active.json`: the number of the revision in force
//! - `pending.json`: a `commit --confirmed` waiting for `confirm` (absent otherwise). It
//!   carries the text to return to, so the rollback guard can roll back without the keys;
//!   that text is the config, which is a plain file in `/etc/callgate` anyway.
//! - `guard-rollback.json`: left by the guard after it rolled back, so the daemon records
//!   the rollback in the history at its next start.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::RevisionError;

/// One committed configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub number: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// Who committed it (user name, or `callgated` for automatic changes).
    pub author: String,
    /// Why: `commit`, `commit confirmed 300s`, `rollback to 3`, `automatic rollback …`, `boot`.
    pub note: String,
    /// The config text exactly as committed.
    pub text: String,
}

/// A confirmed commit waiting for `confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The revision to return to if no `confirm` arrives.
    pub previous: u64,
    /// The revision on probation.
    pub candidate: u64,
    /// Unix time in milliseconds after which the commit rolls back.
    pub deadline_ms: u64,
    /// The config text of `previous`.
    #[serde(default)]
    pub previous_text: String,
}

/// What the guard leaves after rolling back without access to the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardRollback {
    pub previous: u64,
    pub candidate: u64,
    pub time_ms: u64,
}

/// The numbered config texts.
pub trait History: Send {
    /// Revision numbers present, ascending.
    fn numbers(&self) -> Result<Vec<u64>, RevisionError>;
    /// The newest revision number (0 when there is none).
    fn last(&self) -> Result<u64, RevisionError> {
        Ok(self.numbers()?.last().copied().unwrap_or(0))
    }
    fn get(&self, n: u64) -> Result<Revision, RevisionError>;
    /// Records a new revision with the next number.
    fn append(
        &self,
        author: &str,
        note: &str,
        text: &str,
        time_ms: u64,
    ) -> Result<Revision, RevisionError>;
}

/// History in plain JSON files under `DIR/revisions/` (tests and tools; the daemon keeps its
/// history encrypted).
#[derive(Debug, Clone)]
pub struct FileHistory {
    dir: PathBuf,
}

impl FileHistory {
    pub fn open(state_dir: &Path) -> Result<FileHistory, RevisionError> {
        let dir = state_dir.join("revisions");
        fs::create_dir_all(&dir).map_err(|e| RevisionError::io(&dir, e))?;
        Ok(FileHistory { dir })
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:06}.json"))
    }
}

impl History for FileHistory {
    fn numbers(&self) -> Result<Vec<u64>, RevisionError> {
        let mut v: Vec<u64> = fs::read_dir(&self.dir)
            .map_err(|e| RevisionError::io(&self.dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    fn get(&self, n: u64) -> Result<Revision, RevisionError> {
        read_json(&self.path(n))?.ok_or(RevisionError::NoSuchRevision(n))
    }

    fn append(
        &self,
        author: &str,
        note: &str,
        text: &str,
        time_ms: u64,
    ) -> Result<Revision, RevisionError> {
        let number = self.last()? + 1;
        let rev = Revision {
            number,
            time_ms,
            author: author.to_owned(),
            note: note.to_owned(),
            text: text.to_owned(),
        };
        write_json(&self.path(number), &rev)?;
        Ok(rev)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, RevisionError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| RevisionError::Corrupt(path.to_path_buf(), e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RevisionError::io(path, e)),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), RevisionError> {
    let b = serde_json::to_vec_pretty(v)
        .map_err(|e| RevisionError::Corrupt(path.to_path_buf(), e.to_string()))?;
    write_atomic(path, &b).map_err(|e| RevisionError::io(path, e))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Active {
    revision: u64,
}

/// The plain-file records of the state directory (active pointer, pending confirm, guard
/// marker) plus, when the keys are available, the history.
pub struct Store {
    dir: PathBuf,
    history: Option<Box<dyn History>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("history", &self.history.is_some())
            .finish()
    }
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

impl Store {
    /// Opens (creating if needed) the state directory. Without a history (the rollback
    /// guard has no keys) only the plain records are available.
    pub fn open(
        state_dir: &Path,
        history: Option<Box<dyn History>>,
    ) -> Result<Store, RevisionError> {
        let dir = state_dir.to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| RevisionError::io(&dir, e))?;
        Ok(Store { dir, history })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn history(&self) -> Result<&dyn History, RevisionError> {
        self.history.as_deref().ok_or(RevisionError::NoHistory)
    }

    pub fn has_history(&self) -> bool {
        self.history.is_some()
    }

    pub fn numbers(&self) -> Result<Vec<u64>, RevisionError> {
        self.history()?.numbers()
    }

    pub fn last(&self) -> Result<u64, RevisionError> {
        self.history()?.last()
    }

    pub fn get(&self, n: u64) -> Result<Revision, RevisionError> {
        self.history()?.get(n)
    }

    pub fn append(
        &self,
        author: &str,
        note: &str,
        text: &str,
        time_ms: u64,
    ) -> Result<Revision, RevisionError> {
        self.history()?.append(author, note, text, time_ms)
    }

    pub fn active(&self) -> Result<Option<u64>, RevisionError> {
        Ok(read_json::<Active>(&self.dir.join("active.json"))?.map(|a| a.revision))
    }

    pub fn set_active(&self, n: u64) -> Result<(), RevisionError> {
        write_json(&self.dir.join("active.json"), &Active { revision: n })
    }

    pub fn pending(&self) -> Result<Option<Pending>, RevisionError> {
        read_json(&self.dir.join("pending.json"))
    }

    pub fn set_pending(&self, p: &Pending) -> Result<(), RevisionError> {
        write_json(&self.dir.join("pending.json"), p)
    }

    pub fn guard_rollback(&self) -> Result<Option<GuardRollback>, RevisionError> {
        read_json(&self.dir.join("guard-rollback.json"))
    }

    pub fn set_guard_rollback(&self, g: &GuardRollback) -> Result<(), RevisionError> {
        write_json(&self.dir.join("guard-rollback.json"), g)
    }

    pub fn clear_guard_rollback(&self) -> Result<(), RevisionError> {
        let path = self.dir.join("guard-rollback.json");
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RevisionError::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// Takes the pending record away atomically. Exactly one of several racing claimants
    /// (the daemon's timer, `confirm`, the out-of-process guard) gets `Some`.
    pub fn claim_pending(&self) -> Result<Option<Pending>, RevisionError> {
        let path = self.dir.join("pending.json");
        let claimed = self
            .dir
            .join(format!("pending.claimed.{}", std::process::id()));
        match fs::rename(&path, &claimed) {
            Ok(()) => {
                let p = read_json::<Pending>(&claimed);
                let _ = fs::remove_file(&claimed);
                if let Ok(d) = fs::File::open(&self.dir) {
                    let _ = d.sync_all();
                }
                p
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RevisionError::io(&path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_get_active_pending() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(
            d.path(),
            Some(Box::new(FileHistory::open(d.path()).unwrap())),
        )
        .unwrap();
        assert_eq!(s.active().unwrap(), None);
        let r1 = s.append("alice", "boot", "a", 1).unwrap();
        let r2 = s.append("bob", "commit", "b", 2).unwrap();
        assert_eq!((r1.number, r2.number), (1, 2));
        s.set_active(2).unwrap();
        assert_eq!(s.active().unwrap(), Some(2));
        assert_eq!(s.get(1).unwrap().text, "a");
        assert!(matches!(s.get(9), Err(RevisionError::NoSuchRevision(9))));
        let p = Pending {
            previous: 1,
            candidate: 2,
            deadline_ms: 10,
            previous_text: "a".into(),
        };
        s.set_pending(&p).unwrap();
        assert_eq!(s.claim_pending().unwrap(), Some(p));
        assert_eq!(s.claim_pending().unwrap(), None, "only one claimant wins");
    }

    #[test]
    fn corrupt_revision_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(
            d.path(),
            Some(Box::new(FileHistory::open(d.path()).unwrap())),
        )
        .unwrap();
        std::fs::write(d.path().join("revisions/000001.json"), b"{nope").unwrap();
        assert!(matches!(s.get(1), Err(RevisionError::Corrupt(..))));
    }
}
