//! The call-record log: sealed CDRs in append-only segment files, `cdr-log/<n>.seg` beside
//! the sled database, where the `cdrs` tree keeps only a 16-byte [`Pointer`] per record.
//!
//! sled copies a whole leaf on every update of it; with sealed CDRs (~500–1,000 bytes) as
//! its values, those copies were most of the CPU a record write cost. Here a record is
//! copied once, into the page cache, with one `pwrite` per batch.
//!
//! ## Format
//! Segment `n` is the file `cdr-log/<n, 10 digits>.seg`, numbered from 1; a segment is
//! rolled once the next entry would take it past its size (64 MiB in the store). An entry:
//! a 16-byte header, magic `CGl1`, the record's length (u32 BE), the CDR id (u64 BE), then
//! the record exactly as the `cdrs` tree held it before (sealed under the data key with the
//! tree's associated data `cdrs ++ 0 ++ id`). A pointer: `PL`, version 1, a zero byte, the
//! segment (u32 BE), the entry's offset (u32 BE) and the record's length (u32 BE). A read
//! checks the header against the pointer and the id: a pointer to the wrong or missing bytes
//! reads as corrupt, for that record alone.
//!
//! ## Durability
//! Writers append under [`CdrLog::append`]'s lock (the one `pwrite`, never an fsync), then
//! put the pointers into sled. A segment is extended by zeros a MiB ahead of its entries
//! ([`GROW_BYTES`]), so most appends overwrite allocated blocks and their sync commits no
//! metadata. Before each group commit's `sled::Db::flush`, the writer
//! thread calls [`CdrLog::sync`]: it `fdatasync`s every segment written since the last
//! sync, and the directory when a segment was created, so the bytes of every record in the
//! group are durable before any pointer to them can be made durable by that flush. After a
//! successful flush it deletes ([`CdrLog::drop_segments`]) the segments [`CdrLog::sync`]
//! found without a live record: the removals that emptied them were applied before that
//! flush began, so they are durable by then.
//!
//! At open ([`CdrLog::recover`], once sled's state is durable), the live records per
//! segment are counted from the pointers; the last segment is truncated to the end of the
//! last entry a pointer references (what follows was never acknowledged: a torn or
//! unfinished append, zeros written ahead, or records since removed) and new appends go
//! after it; other
//! segments without a live record are deleted.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
// The log is blocking code; this lock is held for one append (a `pwrite`) or a bookkeeping
// step, never across an fsync, and readers never take it.
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;

use arc_swap::ArcSwap;

/// The log's directory, in the store's directory.
pub(crate) const DIR: &str = "cdr-log";
/// The size past which a segment is rolled.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// A segment grows by zeros written ahead of its entries, this much at a time (capped at
/// the segment size): appends then overwrite allocated blocks, and their `fdatasync` has
/// no file size or block allocation to commit (one journal commit per MiB instead of one
/// per group commit).
const GROW_BYTES: u64 = 1 << 20;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
/// Bytes of an entry's header.
const HEADER: usize = 16;
const ENTRY_MAGIC: [u8; 4] = *b"CGl1";
/// Bytes of a pointer (the value of a `cdrs` entry whose record is in the log).
pub(crate) const POINTER_LEN: usize = 16;
/// A sealed record starts with its format version (1), never with `P`.
const POINTER_MAGIC: [u8; 4] = [b'P', b'L', 1, 0];

/// Where a record is: segment, offset of its entry, length of the sealed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pointer {
    pub(crate) segment: u32,
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

impl Pointer {
    pub(crate) fn encode(self) -> [u8; POINTER_LEN] {
        let mut b = [0u8; POINTER_LEN];
        b[..4].copy_from_slice(&POINTER_MAGIC);
        b[4..8].copy_from_slice(&self.segment.to_be_bytes());
        b[8..12].copy_from_slice(&self.offset.to_be_bytes());
        b[12..16].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// The pointer a `cdrs` value holds; `None` for anything else (a record sealed inline,
    /// as stores before the log kept them: always longer).
    pub(crate) fn decode(v: &[u8]) -> Option<Pointer> {
        if v.len() != POINTER_LEN || v.get(..4)? != POINTER_MAGIC {
            return None;
        }
        let u32_at = |i: usize| Some(u32::from_be_bytes(v.get(i..i + 4)?.try_into().ok()?));
        Some(Pointer {
            segment: u32_at(4)?,
            offset: u32_at(8)?,
            len: u32_at(12)?,
        })
    }

    /// Where the entry ends in its segment.
    fn end(self) -> u64 {
        u64::from(self.offset) + HEADER as u64 + u64::from(self.len)
    }
}

/// Why a record could not be read from the log.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The pointer does not lead to this record's entry (missing segment, short file,
    /// another header).
    Corrupt,
    Io(io::Error),
}

/// What the one appender holds.
#[derive(Debug)]
struct Tail {
    segment: u32,
    file: Arc<File>,
    /// Where the next entry goes.
    end: u64,
    /// The segment's length: zeros from `end` on.
    allocated: u64,
    /// Segments written since the last [`CdrLog::sync`], and whether one was created.
    dirty: Vec<Arc<File>>,
    created: bool,
    /// Live records (pointers in `cdrs`) per segment.
    live: HashMap<u32, u64>,
}

/// The log. `Send + Sync`; readers take no lock.
#[derive(Debug)]
pub(crate) struct CdrLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Every segment, opened once, by number.
    segments: ArcSwap<BTreeMap<u32, Arc<File>>>,
    #[allow(clippy::disallowed_types)]
    tail: Mutex<Tail>,
}

fn segment_name(n: u32) -> String {
    format!("{n:010}.seg")
}

fn segment_number(name: &std::ffi::OsStr) -> Option<u32> {
    let s = name.to_str()?.strip_suffix(".seg")?;
    if s.len() != 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Opens `path` to read and write, creating it (mode 0600: the store's files are the
/// owner's alone) when `create`; never truncates. The call-record log's segments, the file
/// of calls in progress and the subject-key slots are all opened this way.
pub(crate) fn open_private(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl CdrLog {
    /// Opens the segments in `<store>/cdr-log` (creating the directory and the first
    /// segment, durably, if there are none). Appends go after the end of the last segment
    /// until [`CdrLog::recover`] says where they go.
    pub(crate) fn open(store_dir: &Path, segment_bytes: u64) -> io::Result<CdrLog> {
        let dir = store_dir.join(DIR);
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(0o700).create(&dir)?;
            sync_dir(store_dir)?;
        }
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if let Some(n) = segment_number(&entry.file_name()) {
                segments.insert(n, Arc::new(open_private(&entry.path(), false)?));
            }
        }
        let (segment, file) = match segments.last_key_value() {
            Some((&n, f)) => (n, Arc::clone(f)),
            None => {
                let f = Arc::new(open_private(&dir.join(segment_name(1)), true)?);
                f.sync_all()?;
                sync_dir(&dir)?;
                segments.insert(1, Arc::clone(&f));
                (1, f)
            }
        };
        let end = file.metadata()?.len();
        Ok(CdrLog {
            dir,
            segment_bytes,
            segments: ArcSwap::from_pointee(segments),
            #[allow(clippy::disallowed_types)]
            tail: Mutex::new(Tail {
                segment,
                file,
                end,
                allocated: end,
                dirty: Vec::new(),
                created: false,
                live: HashMap::new(),
            }),
        })
    }

    #[allow(clippy::disallowed_types)]
    fn tail(&self) -> io::Result<std::sync::MutexGuard<'_, Tail>> {
        self.tail
            .lock()
            .map_err(|_| io::Error::other("the call-record log's lock is poisoned"))
    }

    /// At open, with every value of the `cdrs` tree (sled's state made durable first):
    /// counts the live records per segment, truncates the last segment after the last
    /// entry a pointer references, deletes the other segments no pointer references.
    /// Returns how many bytes were cut from the tail.
    pub(crate) fn recover(
        &self,
        values: impl Iterator<Item = sled::Result<sled::IVec>>,
    ) -> Result<u64, crate::StoreError> {
        let mut live: HashMap<u32, u64> = HashMap::new();
        let mut ends: HashMap<u32, u64> = HashMap::new();
        for v in values {
            if let Some(p) = Pointer::decode(&v?) {
                *live.entry(p.segment).or_default() += 1;
                let e = ends.entry(p.segment).or_default();
                *e = (*e).max(p.end());
            }
        }
        let io = crate::StoreError::Log;
        let mut tail = self.tail().map_err(io)?;
        let keep = ends.get(&tail.segment).copied().unwrap_or(0);
        let cut = tail.end.saturating_sub(keep);
        if cut > 0 {
            tail.file.set_len(keep).map_err(io)?;
            tail.file.sync_all().map_err(io)?;
            tail.end = keep;
            tail.allocated = keep;
        }
        let current = tail.segment;
        let dead: Vec<u32> = self
            .segments
            .load()
            .keys()
            .copied()
            .filter(|n| *n != current && !live.contains_key(n))
            .collect();
        tail.live = live;
        drop(tail);
        if !dead.is_empty() {
            self.drop_segments(&dead).map_err(io)?;
        }
        Ok(cut)
    }

    /// Appends `recs` (CDR id, sealed record), in order, with one `pwrite` per segment
    /// written; their pointers. Not durable before the next [`CdrLog::sync`]; readable at
    /// once. On an error nothing is appended (the next append writes over what was).
    pub(crate) fn append(&self, recs: &[(u64, &[u8])]) -> io::Result<Vec<Pointer>> {
        let mut tail = self.tail()?;
        let mut out = Vec::with_capacity(recs.len());
        let mut buf = Vec::with_capacity(recs.iter().map(|(_, s)| HEADER + s.len()).sum());
        let mut start = tail.end;
        for (id, sealed) in recs {
            let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "record too long");
            let len = u32::try_from(sealed.len()).map_err(|_| too_long())?;
            let size = (HEADER + sealed.len()) as u64;
            let at = start + buf.len() as u64;
            if at > 0 && at + size > self.segment_bytes {
                self.write(&mut tail, &buf, start)?;
                buf.clear();
                self.roll(&mut tail)?;
                start = 0;
            }
            let at = start + buf.len() as u64;
            let offset = u32::try_from(at).map_err(|_| too_long())?;
            if at + size > u64::from(u32::MAX) {
                return Err(too_long());
            }
            buf.extend_from_slice(&ENTRY_MAGIC);
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&id.to_be_bytes());
            buf.extend_from_slice(sealed);
            out.push(Pointer {
                segment: tail.segment,
                offset,
                len,
            });
        }
        self.write(&mut tail, &buf, start)?;
        for p in &out {
            *tail.live.entry(p.segment).or_default() += 1;
        }
        Ok(out)
    }

    /// Writes `buf` at `start` of the current segment (the end of what it holds).
    fn write(&self, tail: &mut Tail, buf: &[u8], start: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let needed = start + buf.len() as u64;
        if needed > tail.allocated {
            let grown = needed
                .div_ceil(GROW_BYTES)
                .saturating_mul(GROW_BYTES)
                .min(self.segment_bytes.max(needed));
            let mut at = tail.allocated;
            while at < grown {
                let n = (grown - at).min(ZEROS.len() as u64) as usize;
                tail.file
                    .write_all_at(ZEROS.get(..n).unwrap_or_default(), at)?;
                at += n as u64;
            }
            tail.allocated = grown;
        }
        tail.file.write_all_at(buf, start)?;
        tail.end = start + buf.len() as u64;
        if !tail.dirty.iter().any(|f| Arc::ptr_eq(f, &tail.file)) {
            let f = Arc::clone(&tail.file);
            tail.dirty.push(f);
        }
        Ok(())
    }

    /// Starts the next segment (made durable, with its directory entry, by the next sync).
    fn roll(&self, tail: &mut Tail) -> io::Result<()> {
        let n = tail
            .segment
            .checked_add(1)
            .ok_or_else(|| io::Error::other("segment numbers exhausted"))?;
        let path = self.dir.join(segment_name(n));
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?,
        );
        self.segments.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.insert(n, Arc::clone(&file));
            m
        });
        // The segment just left, if written since the last sync, stays in `dirty`.
        tail.segment = n;
        tail.file = file;
        tail.end = 0;
        tail.allocated = 0;
        tail.created = true;
        Ok(())
    }

    /// The sealed record of `id` that `p` points to.
    pub(crate) fn read(&self, id: u64, p: Pointer) -> Result<Vec<u8>, ReadError> {
        let file = self
            .segments
            .load()
            .get(&p.segment)
            .cloned()
            .ok_or(ReadError::Corrupt)?;
        let mut buf = vec![0u8; HEADER + p.len as usize];
        match file.read_exact_at(&mut buf, u64::from(p.offset)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ReadError::Corrupt),
            Err(e) => return Err(ReadError::Io(e)),
        }
        let (magic, len, got) = (&buf[..4], &buf[4..8], &buf[8..16]);
        if magic != ENTRY_MAGIC
            || len != p.len.to_be_bytes().as_slice()
            || got != id.to_be_bytes().as_slice()
        {
            return Err(ReadError::Corrupt);
        }
        buf.drain(..HEADER);
        Ok(buf)
    }

    /// A `cdrs` value (`Some`: a pointer) was replaced or removed: its segment has one live
    /// record less.
    pub(crate) fn released(&self, old: &[u8]) {
        let Some(p) = Pointer::decode(old) else {
            return;
        };
        if let Ok(mut tail) = self.tail() {
            if let Some(n) = tail.live.get_mut(&p.segment) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Before a group's flush of sled: makes every append so far durable (the segments
    /// written and any new directory entry); returns the segments found without a live
    /// record, other than the current one, for [`CdrLog::drop_segments`] once that flush
    /// has succeeded.
    pub(crate) fn sync(&self) -> Result<Vec<u32>, crate::commit::CommitError> {
        let (dirty, created, empty) = {
            let mut tail = self.tail().map_err(|source| self.sync_error(source))?;
            let current = tail.segment;
            let empty: Vec<u32> = tail
                .live
                .iter()
                .filter(|(n, live)| **n != current && **live == 0)
                .map(|(n, _)| *n)
                .collect();
            (
                std::mem::take(&mut tail.dirty),
                std::mem::replace(&mut tail.created, false),
                empty,
            )
        };
        let synced = dirty.iter().try_for_each(|f| f.sync_data()).and_then(|()| {
            if created {
                sync_dir(&self.dir)
            } else {
                Ok(())
            }
        });
        if let Err(source) = synced {
            // Synced again by the next group (the error goes to this one's writers).
            if let Ok(mut tail) = self.tail() {
                tail.dirty.extend(dirty);
                tail.created |= created;
            }
            return Err(self.sync_error(source));
        }
        Ok(empty)
    }

    fn sync_error(&self, source: io::Error) -> crate::commit::CommitError {
        crate::commit::CommitError::Sync {
            path: self.dir.clone(),
            source,
        }
    }

    /// Deletes segments without a live record (see [`CdrLog::sync`]). Readers holding one
    /// still read it; the current segment is never deleted.
    pub(crate) fn drop_segments(&self, dead: &[u32]) -> io::Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let current = {
            let mut tail = self.tail()?;
            for n in dead {
                tail.live.remove(n);
            }
            tail.segment
        };
        let dead: Vec<u32> = dead.iter().copied().filter(|n| *n != current).collect();
        self.segments.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            for n in &dead {
                m.remove(n);
            }
            m
        });
        for n in &dead {
            match fs::remove_file(self.dir.join(segment_name(*n))) {
                Ok(()) => {
                    log::info!("store: call-record log segment {n} deleted (no live records)")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The numbers of the segments, ascending.
    #[cfg(test)]
    pub(crate) fn segment_numbers(&self) -> Vec<u32> {
        self.segments.load().keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    #[test]
    fn pointers_round_trip_and_inline_records_are_not_pointers() {
        let p = Pointer {
            segment: 7,
            offset: 1234,
            len: 600,
        };
        assert_eq!(Pointer::decode(&p.encode()), Some(p));
        let mut inline = vec![1u8; 16];
        assert_eq!(Pointer::decode(&inline), None);
        inline[..4].copy_from_slice(&POINTER_MAGIC);
        inline.push(0);
        assert_eq!(Pointer::decode(&inline), None, "17 bytes");
    }

    #[test]
    fn appends_roll_segments_and_read_back_checked() {
        let dir = tempfile::tempdir().unwrap();
        let log = CdrLog::open(dir.path(), 200).unwrap();
        let recs: Vec<(u64, Vec<u8>)> = (1..=5).map(|i| (i, vec![i as u8; 70])).collect();
        let refs: Vec<(u64, &[u8])> = recs.iter().map(|(i, s)| (*i, s.as_slice())).collect();
        let ptrs = log.append(&refs).unwrap();
        // 86 bytes an entry: two per 200-byte segment.
        let segs: Vec<u32> = ptrs.iter().map(|p| p.segment).collect();
        assert_eq!(segs, vec![1, 1, 2, 2, 3]);
        for ((id, s), p) in recs.iter().zip(&ptrs) {
            assert_eq!(&log.read(*id, *p).unwrap(), s);
        }
        assert!(
            matches!(log.read(2, ptrs[0]), Err(ReadError::Corrupt)),
            "id"
        );
        let past = Pointer {
            offset: 150,
            ..ptrs[0]
        };
        assert!(matches!(log.read(1, past), Err(ReadError::Corrupt)), "EOF");
        assert_eq!(log.sync().unwrap(), Vec::<u32>::new());
        log.released(&ptrs[0].encode());
        log.released(&ptrs[1].encode());
        log.released(&ptrs[4].encode()); // the current segment: kept
        let dead = log.sync().unwrap();
        assert_eq!(dead, vec![1]);
        log.drop_segments(&dead).unwrap();
        assert_eq!(log.segment_numbers(), vec![2, 3]);
        assert!(!dir.path().join(DIR).join(segment_name(1)).exists());
        assert!(matches!(log.read(1, ptrs[0]), Err(ReadError::Corrupt)));
        assert_eq!(log.read(3, ptrs[2]).unwrap(), recs[2].1);
    }
}
