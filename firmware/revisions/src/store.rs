//! Numbered config revisions on disk, the active pointer and the pending-confirm record.
//! Every write is atomic: write a temporary file, fsync it, rename it over the target, fsync
//! the directory.
//!
//! Layout under the state directory:
//! - `revisions/NNNNNN.json`: one revision (number, time, author, note, config text)
//! - `active.json`: the revision in force
//! - `pending.json`: a `commit --confirmed` waiting for `confirm` (absent otherwise)

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Active {
    revision: u64,
}

/// The on-disk revision store.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
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
    /// Opens (creating if needed) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store, RevisionError> {
        let dir = state_dir.to_path_buf();
        fs::create_dir_all(dir.join("revisions")).map_err(|e| RevisionError::io(&dir, e))?;
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn rev_path(&self, n: u64) -> PathBuf {
        self.dir.join("revisions").join(format!("{n:06}.json"))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, RevisionError> {
        match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| RevisionError::Corrupt(path.to_path_buf(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RevisionError::io(path, e)),
        }
    }

    fn write_json<T: Serialize>(&self, path: &Path, v: &T) -> Result<(), RevisionError> {
        let b = serde_json::to_vec_pretty(v)
            .map_err(|e| RevisionError::Corrupt(path.to_path_buf(), e.to_string()))?;
        write_atomic(path, &b).map_err(|e| RevisionError::io(path, e))
    }

    /// Revision numbers present, ascending.
    pub fn numbers(&self) -> Result<Vec<u64>, RevisionError> {
        let d = self.dir.join("revisions");
        let mut v: Vec<u64> = fs::read_dir(&d)
            .map_err(|e| RevisionError::io(&d, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    pub fn get(&self, n: u64) -> Result<Revision, RevisionError> {
        self.read_json(&self.rev_path(n))?
            .ok_or(RevisionError::NoSuchRevision(n))
    }

    /// Records a new revision with the next number.
    pub fn append(
        &self,
        author: &str,
        note: &str,
        text: &str,
        time_ms: u64,
    ) -> Result<Revision, RevisionError> {
        let number = self.numbers()?.last().copied().unwrap_or(0) + 1;
        let rev = Revision {
            number,
            time_ms,
            author: author.to_owned(),
            note: note.to_owned(),
            text: text.to_owned(),
        };
        self.write_json(&self.rev_path(number), &rev)?;
        Ok(rev)
    }

    pub fn active(&self) -> Result<Option<u64>, RevisionError> {
        Ok(self
            .read_json::<Active>(&self.dir.join("active.json"))?
            .map(|a| a.revision))
    }

    pub fn set_active(&self, n: u64) -> Result<(), RevisionError> {
        self.write_json(&self.dir.join("active.json"), &Active { revision: n })
    }

    pub fn pending(&self) -> Result<Option<Pending>, RevisionError> {
        self.read_json(&self.dir.join("pending.json"))
    }

    pub fn set_pending(&self, p: &Pending) -> Result<(), RevisionError> {
        self.write_json(&self.dir.join("pending.json"), p)
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
                let p = self.read_json::<Pending>(&claimed);
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
        let s = Store::open(d.path()).unwrap();
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
        };
        s.set_pending(&p).unwrap();
        assert_eq!(s.claim_pending().unwrap(), Some(p));
        assert_eq!(s.claim_pending().unwrap(), None, "only one claimant wins");
    }

    #[test]
    fn corrupt_revision_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        std::fs::write(d.path().join("revisions/000001.json"), b"{nope").unwrap();
        assert!(matches!(s.get(1), Err(RevisionError::Corrupt(..))));
    }
}
