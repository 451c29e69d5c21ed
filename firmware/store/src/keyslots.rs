//! The subject keys' file, `subject-keys`: each subject key, wrapped under the KEK, in a
//! slot of its own that is overwritten in place, so an erasure leaves no copy of it.
//!
//! sled is log-structured: a value it held stays in its old log segments (the `db` file)
//! until it reuses them, whatever was removed or overwritten since. A subject key wrapped
//! in sled would outlive its erasure there; a raw scan of the data directory found it. So
//! the `subjects` tree holds only the key's generation and its slot number here, and the
//! wrapped key lives in this file: `SLOT` bytes per slot, `[length u8][wrapped key][zeros]`,
//! a slot of zeros free. An erasure deletes the tree's entry (durably), then overwrites the
//! slot with zeros and `fdatasync`s the file; a slot no entry names (a key made by a write
//! that crashed before its commit, or a shredding that a crash cut short) is zeroed at the
//! next open.
//!
//! Durability: [`KeySlots::put`] writes the slot before the key's entry goes into sled, and
//! every group commit `fdatasync`s this file (when written since) before it flushes sled,
//! so a record acknowledged under a key has that key on disk.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
// Blocking code (the store): held for one pread/pwrite or a slot's bookkeeping.
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;

use crate::commit::CommitError;

/// The file's name in the data directory.
pub(crate) const FILE: &str = "subject-keys";
/// Bytes per slot: a length byte and the wrapped key (65 bytes today), zero-padded.
pub(crate) const SLOT: usize = 128;

#[derive(Default)]
struct State {
    /// Slots in the file.
    len: u32,
    /// Slots free for a new key (zeroed).
    free: BTreeSet<u32>,
    /// Written since the last sync.
    dirty: bool,
}

pub(crate) struct KeySlots {
    path: PathBuf,
    file: File,
    #[allow(clippy::disallowed_types)]
    state: Mutex<State>,
}

fn poisoned() -> io::Error {
    io::Error::other("the subject keys' lock is poisoned")
}

impl KeySlots {
    /// Opens (or creates, 0600) the file in `dir`. Every slot counts as used until
    /// [`Self::recover`] says which are.
    pub(crate) fn open(dir: &Path) -> io::Result<KeySlots> {
        let path = dir.join(FILE);
        let created = !path.exists();
        let file = crate::cdrlog::open_private(&path, true)?;
        if created {
            file.sync_all()?;
            File::open(dir)?.sync_all()?;
        }
        let len = u32::try_from(file.metadata()?.len() / SLOT as u64).unwrap_or(u32::MAX);
        Ok(KeySlots {
            path,
            file,
            #[allow(clippy::disallowed_types)]
            state: Mutex::new(State {
                len,
                ..State::default()
            }),
        })
    }

    /// At open, once sled's state is durable: `used` are the slots the `subjects` tree
    /// names; every other slot is zeroed (synced) and free. How many held a key.
    pub(crate) fn recover(&self, used: &BTreeSet<u32>) -> io::Result<usize> {
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        let mut zeroed = 0;
        for slot in 0..st.len {
            if used.contains(&slot) {
                continue;
            }
            if self.read(slot)?.is_some() {
                self.file.write_all_at(&[0u8; SLOT], offset(slot))?;
                zeroed += 1;
            }
            st.free.insert(slot);
        }
        if zeroed > 0 {
            self.file.sync_data()?;
        }
        Ok(zeroed)
    }

    /// Writes `wrapped` into a free slot (the file grows when none is); its number. Durable
    /// with the next group commit.
    pub(crate) fn put(&self, wrapped: &[u8]) -> io::Result<u32> {
        let len = u8::try_from(wrapped.len())
            .ok()
            .filter(|l| usize::from(*l) < SLOT)
            .ok_or_else(|| io::Error::other("a wrapped subject key is too long for a slot"))?;
        let mut buf = [0u8; SLOT];
        buf[0] = len;
        buf[1..=wrapped.len()].copy_from_slice(wrapped);
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        let slot = match st.free.pop_first() {
            Some(s) => s,
            None => {
                let s = st.len;
                st.len = st
                    .len
                    .checked_add(1)
                    .ok_or_else(|| io::Error::other("no subject key slot left"))?;
                s
            }
        };
        if let Err(e) = self.file.write_all_at(&buf, offset(slot)) {
            st.free.insert(slot);
            return Err(e);
        }
        st.dirty = true;
        Ok(slot)
    }

    /// The wrapped key in `slot`; `None` when the slot is free (zero) or beyond the file.
    pub(crate) fn get(&self, slot: u32) -> io::Result<Option<Vec<u8>>> {
        if slot >= self.state.lock().map_err(|_| poisoned())?.len {
            return Ok(None);
        }
        self.read(slot)
    }

    fn read(&self, slot: u32) -> io::Result<Option<Vec<u8>>> {
        let mut buf = [0u8; SLOT];
        self.file.read_exact_at(&mut buf, offset(slot))?;
        let len = usize::from(buf[0]);
        if len == 0 || len >= SLOT {
            return Ok(None);
        }
        Ok(Some(buf[1..=len].to_vec()))
    }

    /// Overwrites `slot` with zeros, makes that durable, and frees it. Only once nothing
    /// names the slot any more (the `subjects` entry's removal is durable).
    pub(crate) fn shred(&self, slot: u32) -> io::Result<()> {
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        if slot >= st.len {
            return Ok(());
        }
        self.file.write_all_at(&[0u8; SLOT], offset(slot))?;
        self.file.sync_data()?;
        st.free.insert(slot);
        Ok(())
    }

    /// Makes the slots written since the last call durable (the group commit, before it
    /// flushes sled).
    pub(crate) fn sync(&self) -> Result<(), CommitError> {
        let err = |source| CommitError::Sync {
            path: self.path.clone(),
            source,
        };
        let dirty = {
            let mut st = self.state.lock().map_err(|_| err(poisoned()))?;
            std::mem::replace(&mut st.dirty, false)
        };
        if dirty {
            if let Err(e) = self.file.sync_data() {
                if let Ok(mut st) = self.state.lock() {
                    st.dirty = true;
                }
                return Err(err(e));
            }
        }
        Ok(())
    }
}

fn offset(slot: u32) -> u64 {
    u64::from(slot) * SLOT as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    #[test]
    fn a_shredded_slot_leaves_no_byte_of_its_key_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let k = KeySlots::open(dir.path()).unwrap();
        k.recover(&BTreeSet::new()).unwrap();
        let a = k.put(&[0xA5; 65]).unwrap();
        let b = k.put(&[0x5A; 65]).unwrap();
        assert_ne!(a, b);
        k.sync().unwrap();
        assert_eq!(k.get(a).unwrap(), Some(vec![0xA5; 65]));
        k.shred(a).unwrap();
        assert_eq!(k.get(a).unwrap(), None);
        let raw = std::fs::read(dir.path().join(FILE)).unwrap();
        assert!(!raw.windows(65).any(|w| w == [0xA5; 65]));
        assert!(raw.windows(65).any(|w| w == [0x5A; 65]));
        assert_eq!(k.put(&[0x33; 65]).unwrap(), a, "the freed slot is reused");
        assert!(k.put(&[0; SLOT]).is_err(), "too long");
    }

    #[test]
    fn at_open_slots_nothing_names_are_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let k = KeySlots::open(dir.path()).unwrap();
            k.recover(&BTreeSet::new()).unwrap();
            for b in 1..=3u8 {
                k.put(&[b; 65]).unwrap();
            }
            k.sync().unwrap();
        }
        let k = KeySlots::open(dir.path()).unwrap();
        assert_eq!(k.recover(&BTreeSet::from([1])).unwrap(), 2);
        assert_eq!(k.get(0).unwrap(), None);
        assert_eq!(k.get(1).unwrap(), Some(vec![2; 65]));
        assert_eq!(k.get(2).unwrap(), None);
        assert_eq!(k.get(9).unwrap(), None);
        let raw = std::fs::read(dir.path().join(FILE)).unwrap();
        assert!(!raw.windows(65).any(|w| w == [1; 65] || w == [3; 65]));
    }
}
