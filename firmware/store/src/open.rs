//! The answer-time records of calls in progress: `open-cdrs`, a file of fixed-size slots
//! beside the sled database.
//!
//! An answered call's record is written twice: when the call is answered (so that a crash
//! cannot lose it) and when it ends. The first write used to go to sled like the second,
//! and sled keeps what it is given in memory: each held call then cost the daemon about
//! 850 bytes of resident memory for a record that is read back only after a crash. Here it
//! costs one slot of this file (the kernel's page cache) and 12 bytes of index.
//!
//! ## Format
//! Slot `i` is bytes `i·SLOT .. (i+1)·SLOT`: a 16-byte header, magic `CGo1`, the record's
//! length (u16 BE), two zero bytes, the CDR id (u64 BE), then the record exactly as the
//! call-record log would hold it (sealed under the data key with the `cdrs` tree's
//! associated data, so it is authenticated by the same rules). A zeroed header is a free slot. Records
//! longer than [`MAX_SEALED`] are not put here; the store writes them to the tree.
//!
//! ## Durability
//! A batch of writes is durable after [`OpenSlots::sync`] (`fdatasync`). The store writes a
//! batch only after the group commit that makes its subject keys durable. A slot is released
//! only after the call's final record is durable in the tree. Its header then keeps naming
//! that record for one more batch: the record writer stores a batch's answer-time records
//! before it releases the slots of the batch's ended calls, so the next batch's records
//! take the released slots over, and a taken-over slot needs no zeroing (under steady load
//! many releases cost no write at all). [`OpenSlots::zero_released`], at the end of each
//! batch, zeroes (not synced) the slots released a batch earlier that no write took. If a
//! zeroing is lost in a crash, or not done yet, recovery finds the id in the tree and skips
//! the slot. That holds as long as the final record is in the tree: before a record leaves
//! the tree (retention, [`crate::Store::remove_cdr`]) the store calls
//! [`OpenSlots::zero_all_durably`], so a crash cannot bring a removed record back from a
//! slot.
//! At open the store moves every slot whose id the tree lacks into the log and the tree
//! (one durable commit) and empties the file. A slot that does not authenticate (torn by a crash in
//! the middle of its write, so never acknowledged) is logged and dropped.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The file's name in the store's directory.
pub(crate) const FILE: &str = "open-cdrs";
/// Bytes per slot.
pub(crate) const SLOT: usize = 1024;
const HEADER: usize = 16;
/// The longest sealed record a slot holds.
pub(crate) const MAX_SEALED: usize = SLOT - HEADER;
const MAGIC: [u8; 4] = *b"CGo1";

/// A record found in the file at open: CDR id, sealed bytes.
pub(crate) type Found = (u64, Vec<u8>);

/// The slots in use, by CDR id, and the free ones.
#[derive(Debug)]
pub(crate) struct OpenSlots {
    file: File,
    by_id: HashMap<u64, u32>,
    /// Released slots below `end`, lowest first.
    free: BTreeSet<u32>,
    /// Released slots whose header still names their last record, released since the
    /// last [`OpenSlots::zero_released`]: it zeroes them at its second call from now,
    /// unless a write takes them over first.
    fresh: BTreeSet<u32>,
    /// Such slots released before the last [`OpenSlots::zero_released`].
    aged: BTreeSet<u32>,
    /// A release reached the file since the last sync (a header zeroed, or the file
    /// emptied).
    released_unsynced: bool,
    /// Slots the file has room for.
    end: u32,
}

impl OpenSlots {
    /// Opens (or creates, mode 0600) the file, and returns every record in it as `(id,
    /// sealed bytes)` for recovery. The slots are all considered free: call
    /// [`OpenSlots::clear`] once the records are safe elsewhere.
    pub(crate) fn open(dir: &Path) -> io::Result<(OpenSlots, Vec<Found>)> {
        let file = crate::cdrlog::open_private(&dir.join(FILE), true)?;
        let len = file.metadata()?.len();
        let mut found = Vec::new();
        let mut slot = vec![0u8; SLOT];
        let mut at = 0u64;
        while at + HEADER as u64 <= len {
            let n = (len - at).min(SLOT as u64) as usize;
            let buf = slot.get_mut(..n).unwrap_or_default();
            file.read_exact_at(buf, at)?;
            if let Some((id, sealed)) = parse(buf) {
                found.push((id, sealed.to_vec()));
            }
            at += SLOT as u64;
        }
        Ok((
            OpenSlots {
                file,
                by_id: HashMap::new(),
                free: BTreeSet::new(),
                fresh: BTreeSet::new(),
                aged: BTreeSet::new(),
                released_unsynced: false,
                end: (len / SLOT as u64) as u32,
            },
            found,
        ))
    }

    /// Empties the file (after recovery), durably.
    pub(crate) fn clear(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.by_id.clear();
        self.forget_released();
        self.end = 0;
        Ok(())
    }

    /// Writes `sealed` as the record of `id`: into its slot, or a released one not zeroed
    /// yet, or the lowest free one. Not durable before [`OpenSlots::sync`]. `sealed` must
    /// be at most [`MAX_SEALED`] bytes.
    pub(crate) fn write(&mut self, id: u64, sealed: &[u8]) -> io::Result<()> {
        let len = u16::try_from(sealed.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_SEALED)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too long"))?;
        // A released slot whose header is not zeroed yet first (the write makes its zeroing
        // needless), the longest released first; then the lowest free one; then a new one.
        let slot = match self.by_id.get(&id) {
            Some(&s) => s,
            None => match self
                .aged
                .first()
                .or_else(|| self.fresh.first())
                .or_else(|| self.free.first())
                .copied()
            {
                Some(s) => {
                    self.free.remove(&s);
                    s
                }
                None => {
                    self.end += 1;
                    self.end - 1
                }
            },
        };
        let mut buf = Vec::with_capacity(HEADER + sealed.len());
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&id.to_be_bytes());
        buf.extend_from_slice(sealed);
        if let Err(e) = self.file.write_all_at(&buf, offset(slot)) {
            if !self.by_id.contains_key(&id) {
                self.free.insert(slot);
            }
            return Err(e);
        }
        self.aged.remove(&slot);
        self.fresh.remove(&slot);
        self.by_id.insert(id, slot);
        Ok(())
    }

    /// Makes every write so far durable.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.released_unsynced = false;
        Ok(())
    }

    /// Frees the slot of `id` (its final record is durable elsewhere): a later write may
    /// take it over, else [`OpenSlots::zero_released`] zeroes it at its second call from
    /// now. When no call is left the file is emptied.
    pub(crate) fn release(&mut self, id: u64) -> io::Result<()> {
        let Some(slot) = self.by_id.remove(&id) else {
            return Ok(());
        };
        if self.by_id.is_empty() {
            self.forget_released();
            self.end = 0;
            self.released_unsynced = true;
            return self.file.set_len(0);
        }
        self.free.insert(slot);
        self.fresh.insert(slot);
        Ok(())
    }

    fn forget_released(&mut self) {
        self.free.clear();
        self.fresh.clear();
        self.aged.clear();
    }

    /// The end of a batch: zeroes the header (not synced) of every slot released before the
    /// previous call that no write has taken over; those released since wait one more batch.
    /// Every slot is tried; the first error is returned, and a slot not zeroed is tried
    /// again next time.
    pub(crate) fn zero_released(&mut self) -> io::Result<()> {
        let aged = std::mem::take(&mut self.aged);
        let (result, left) = self.zero(aged);
        self.aged = std::mem::take(&mut self.fresh);
        self.aged.extend(left);
        result
    }

    /// Before a record leaves the tree: zeroes every released slot's header and makes the
    /// zeroing, and any earlier release (a zeroing, the file emptied), durable.
    pub(crate) fn zero_all_durably(&mut self) -> io::Result<()> {
        let mut all = std::mem::take(&mut self.aged);
        all.append(&mut self.fresh);
        let (result, left) = self.zero(all);
        self.aged = left;
        result?;
        if self.released_unsynced {
            self.sync()?;
        }
        Ok(())
    }

    /// Zeroes the headers of `slots`: the first error, and the slots not zeroed.
    fn zero(&mut self, mut slots: BTreeSet<u32>) -> (io::Result<()>, BTreeSet<u32>) {
        let mut first = Ok(());
        let file = &self.file;
        let before = slots.len();
        slots.retain(
            |&slot| match file.write_all_at(&[0u8; HEADER], offset(slot)) {
                Ok(()) => false,
                Err(e) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                    true
                }
            },
        );
        self.released_unsynced |= slots.len() < before;
        (first, slots)
    }

    /// The sealed record of `id`, if it has a slot.
    pub(crate) fn read(&self, id: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(&slot) = self.by_id.get(&id) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; SLOT];
        let n = read_up_to(&self.file, &mut buf, offset(slot))?;
        Ok(buf
            .get(..n)
            .and_then(parse)
            .filter(|(i, _)| *i == id)
            .map(|(_, s)| s.to_vec()))
    }

    /// The ids with a slot, ascending.
    pub(crate) fn ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.by_id.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// How many records are held.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

fn offset(slot: u32) -> u64 {
    u64::from(slot) * SLOT as u64
}

fn read_up_to(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else { break };
        match file.read_at(rest, at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A slot's id and sealed record; `None` for a free or malformed slot.
fn parse(b: &[u8]) -> Option<(u64, &[u8])> {
    let (header, rest) = b.split_at_checked(HEADER)?;
    if header.get(..4)? != MAGIC {
        return None;
    }
    let len = usize::from(u16::from_be_bytes(header.get(4..6)?.try_into().ok()?));
    let id = u64::from_be_bytes(header.get(8..16)?.try_into().ok()?);
    if len > MAX_SEALED {
        return None;
    }
    Some((id, rest.get(..len)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    #[test]
    fn slots_are_reused_lowest_first_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, found) = OpenSlots::open(dir.path()).unwrap();
        assert!(found.is_empty());
        s.write(10, b"ten").unwrap();
        s.write(11, b"eleven").unwrap();
        s.write(12, b"twelve").unwrap();
        s.release(11).unwrap();
        s.write(13, b"thirteen").unwrap(); // takes 11's slot
        s.zero_released().unwrap();
        s.write(10, b"ten again").unwrap(); // in place
        s.sync().unwrap();
        assert_eq!(s.ids(), vec![10, 12, 13]);
        assert_eq!(s.read(13).unwrap().unwrap(), b"thirteen");
        assert_eq!(s.read(11).unwrap(), None);
        let len = std::fs::metadata(dir.path().join(FILE)).unwrap().len();
        assert_eq!(
            len,
            2 * SLOT as u64 + HEADER as u64 + 6,
            "three slots, no more"
        );
        drop(s);
        let (mut s, mut found) = OpenSlots::open(dir.path()).unwrap();
        found.sort();
        assert_eq!(
            found,
            vec![
                (10, b"ten again".to_vec()),
                (12, b"twelve".to_vec()),
                (13, b"thirteen".to_vec())
            ]
        );
        s.clear().unwrap();
        assert_eq!(std::fs::metadata(dir.path().join(FILE)).unwrap().len(), 0);
        assert!(OpenSlots::open(dir.path()).unwrap().1.is_empty());
    }

    /// The slots' headers as they are on disk: the id each names, `None` for a zeroed one.
    fn on_disk(dir: &Path) -> Vec<Option<u64>> {
        let bytes = std::fs::read(dir.join(FILE)).unwrap();
        bytes
            .chunks(SLOT)
            .map(|b| parse(b).map(|(id, _)| id))
            .collect()
    }

    #[test]
    fn a_released_slot_is_taken_over_by_the_next_batch_or_zeroed_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = OpenSlots::open(dir.path()).unwrap();
        // Batch 1: four calls answered.
        for id in 1..=4 {
            s.write(id, b"answered").unwrap();
        }
        s.zero_released().unwrap();
        // Batch 2: calls 2 and 3 end. Their slots keep their headers for a batch.
        s.release(3).unwrap();
        s.release(2).unwrap();
        s.zero_released().unwrap();
        assert_eq!(on_disk(dir.path()), [Some(1), Some(2), Some(3), Some(4)]);
        // Batch 3: one call answered; it takes a released slot over, the other is zeroed.
        s.write(5, b"new").unwrap();
        assert_eq!(
            on_disk(dir.path()),
            [Some(1), Some(5), Some(3), Some(4)],
            "the new record went into a released slot"
        );
        s.zero_released().unwrap();
        assert_eq!(on_disk(dir.path()), [Some(1), Some(5), None, Some(4)]);
        // Zeroed once: nothing left to do, and the zeroed slot is free for the next write.
        s.zero_released().unwrap();
        s.write(6, b"six").unwrap();
        assert_eq!(on_disk(dir.path()), [Some(1), Some(5), Some(6), Some(4)]);
        // Before a removal: a slot released just now is zeroed at once.
        s.release(4).unwrap();
        s.zero_all_durably().unwrap();
        assert_eq!(on_disk(dir.path()), [Some(1), Some(5), Some(6), None]);
        s.sync().unwrap();
        drop(s);
        let (_, mut found) = OpenSlots::open(dir.path()).unwrap();
        found.sort();
        let ids: Vec<u64> = found.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 5, 6]);
    }

    #[test]
    fn the_last_release_empties_the_file_and_bad_slots_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = OpenSlots::open(dir.path()).unwrap();
        s.write(1, b"one").unwrap();
        s.write(2, b"two").unwrap();
        s.release(1).unwrap();
        s.release(2).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join(FILE)).unwrap().len(), 0);
        assert!(s.write(3, &vec![0u8; MAX_SEALED + 1]).is_err());
        s.write(3, &vec![7u8; MAX_SEALED]).unwrap();
        s.write(4, b"four").unwrap();
        s.sync().unwrap();
        drop(s);
        // A torn header (length past the slot) and garbage after the last slot.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all_at(&[0xff, 0xff], offset(1) + 4).unwrap();
        f.write_all_at(b"CGo1junk", offset(2)).unwrap();
        let (_, found) = OpenSlots::open(dir.path()).unwrap();
        assert_eq!(found, vec![(3, vec![7u8; MAX_SEALED])]);
    }
}
