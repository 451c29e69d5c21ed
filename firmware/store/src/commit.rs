//! Group commit: many writers, one flush, then every one of them is acknowledged.
//!
//! A writer applies its own ops to sled (in parallel with the other writers and with the
//! flush of the group before), then queues a ticket for the one writer thread. The writer
//! thread takes every ticket queued so far, makes everything applied before them durable
//! with one flush, and acknowledges them all. Ops that must be serialized with every other
//! write ([`Op::Run`], data-key rotation) are run on the writer thread instead.
//!
//! Writers announce themselves before they prepare a write ([`GroupCommit::intent`]); a
//! group about to be flushed waits up to [`GATHER`] for announced writers that are still
//! serializing or sealing, so they share this flush instead of waiting a whole flush for
//! the next one.
//!
//! "Durable" here is more than `sled::Db::flush`: sled 0.34 makes its log stable with
//! `sync_file_range(2)` on Linux, which neither writes the file's metadata (its size, as
//! the log grows) nor flushes the disk's write cache, and it never syncs its blob files
//! (where it puts log messages over ~128 KiB, e.g. a large config text). So after each
//! flush the writer also `fdatasync`s the log file and every blob file it has not synced
//! yet. Before the flush, it makes the call-record log's appends durable (the `cdrlog`
//! module): a pointer in sled must not be durable before the bytes it points to.
//! [`GroupCommit`] is public so the benchmark's plain-sled anchor commits through the
//! very same path.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cdrlog::CdrLog;
use crate::keyslots::KeySlots;

/// One write. A request's ops are applied in order.
pub enum Op {
    Insert {
        tree: sled::Tree,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Remove {
        tree: sled::Tree,
        key: Vec<u8>,
    },
    /// Runs on the writer thread, between the ops around it: for changes that must be
    /// serialized with every other write (data-key rotation).
    Run(Box<dyn FnOnce() -> Result<(), String> + Send>),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Insert { tree, key, value } => f
                .debug_struct("Insert")
                .field("tree", &String::from_utf8_lossy(&tree.name()))
                .field("key_len", &key.len())
                .field("value_len", &value.len())
                .finish(),
            Op::Remove { tree, key } => f
                .debug_struct("Remove")
                .field("tree", &String::from_utf8_lossy(&tree.name()))
                .field("key_len", &key.len())
                .finish(),
            Op::Run(_) => f.write_str("Run(…)"),
        }
    }
}

/// Why a write was not made durable. Shared by every write of a failed group.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the storage engine refused the write")]
    Apply(#[source] sled::Error),
    #[error("{0}")]
    Run(String),
    #[error("the storage engine could not flush")]
    Flush(#[source] sled::Error),
    #[error("cannot sync {path}")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the writer thread is gone")]
    WriterGone,
}

type Ack = Result<(), Arc<CommitError>>;

struct Request {
    ops: Vec<Op>,
    ack: mpsc::SyncSender<Ack>,
}

/// The handle to the writer thread. Dropping it lets the thread finish what is queued and
/// joins it.
#[derive(Debug)]
pub struct GroupCommit {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    /// Writers that announced a write ([`GroupCommit::intent`]) and have not queued it yet.
    pending: Arc<AtomicUsize>,
}

/// A write on its way (see [`GroupCommit::intent`]). Dropping it unused withdraws it.
#[derive(Debug)]
pub struct Intent<'a> {
    gc: &'a GroupCommit,
    live: bool,
}

impl Intent<'_> {
    /// Applies `ops` and returns once they are durable.
    pub fn commit(mut self, ops: Vec<Op>) -> Result<(), Arc<CommitError>> {
        self.live = false;
        self.gc.submit(ops, true)
    }
}

impl Drop for Intent<'_> {
    fn drop(&mut self) {
        if self.live {
            self.gc.pending.fetch_sub(1, Ordering::Release);
        }
    }
}

impl GroupCommit {
    /// Starts the writer for `db`, whose files live in `dir`.
    pub fn start(db: sled::Db, dir: &Path) -> io::Result<GroupCommit> {
        GroupCommit::start_with_log(db, dir, None, None)
    }

    /// [`GroupCommit::start`], and each group also makes `cdr_log`'s appends durable before
    /// the flush of sled (and deletes its empty segments after it), and the subject keys'
    /// slots written since the last group.
    pub(crate) fn start_with_log(
        db: sled::Db,
        dir: &Path,
        cdr_log: Option<Arc<CdrLog>>,
        key_slots: Option<Arc<KeySlots>>,
    ) -> io::Result<GroupCommit> {
        let mut durable = DurableFiles::open(dir)?;
        let (tx, rx) = mpsc::channel::<Request>();
        let pending = Arc::new(AtomicUsize::new(0));
        let writer_pending = Arc::clone(&pending);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let files = Files {
                    cdr_log: cdr_log.as_deref(),
                    key_slots: key_slots.as_deref(),
                    durable: &mut durable,
                };
                writer(db, files, rx, &writer_pending)
            })?;
        Ok(GroupCommit {
            tx: Some(tx),
            thread: Some(thread),
            pending,
        })
    }

    /// Announces a write before preparing it (serializing, sealing): a group about to be
    /// flushed waits briefly (at most [`GATHER`]) for announced writes, so writers that are
    /// a few microseconds late share the flush instead of waiting for the next one.
    pub fn intent(&self) -> Intent<'_> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        Intent {
            gc: self,
            live: true,
        }
    }

    /// Applies `ops` and returns once they are durable.
    pub fn commit(&self, ops: Vec<Op>) -> Result<(), Arc<CommitError>> {
        self.submit(ops, false)
    }

    fn submit(&self, ops: Vec<Op>, announced: bool) -> Result<(), Arc<CommitError>> {
        let withdraw = || {
            if announced {
                self.pending.fetch_sub(1, Ordering::Release);
            }
        };
        // Plain writes are applied here, in parallel with each other and with the flush
        // of the previous group; only `Run` ops are serialized on the writer thread.
        let ops = if ops.iter().any(|o| matches!(o, Op::Run(_))) {
            ops
        } else {
            if let Err(e) = apply(ops) {
                withdraw();
                return Err(Arc::new(e));
            }
            Vec::new()
        };
        let (ack, done) = mpsc::sync_channel(1);
        let gone = || Arc::new(CommitError::WriterGone);
        let sent = match self.tx.as_ref() {
            Some(tx) => tx.send(Request { ops, ack }).map_err(|_| gone()),
            None => Err(gone()),
        };
        // After the send: a writer that sees no pending intents has them all queued.
        withdraw();
        sent?;
        done.recv().map_err(|_| gone())?
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the store writer thread panicked");
            }
        }
    }
}

fn apply(ops: Vec<Op>) -> Result<(), CommitError> {
    for op in ops {
        match op {
            Op::Insert { tree, key, value } => {
                tree.insert(key, value).map_err(CommitError::Apply)?;
            }
            Op::Remove { tree, key } => {
                tree.remove(key).map_err(CommitError::Apply)?;
            }
            Op::Run(f) => f().map_err(CommitError::Run)?,
        }
    }
    Ok(())
}

/// How long a group waits for announced writes before it is flushed without them.
pub const GATHER: Duration = Duration::from_micros(200);

/// The files a group makes durable besides sled's.
struct Files<'a> {
    cdr_log: Option<&'a CdrLog>,
    key_slots: Option<&'a KeySlots>,
    durable: &'a mut DurableFiles,
}

fn writer(db: sled::Db, files: Files<'_>, rx: mpsc::Receiver<Request>, pending: &AtomicUsize) {
    let Files {
        cdr_log,
        key_slots,
        durable,
    } = files;
    let (mut groups, mut writes) = (0u64, 0u64);
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let deadline = Instant::now() + GATHER;
        loop {
            // Read the count before draining: zero then means every announced write was
            // sent before the drain.
            let none_pending = pending.load(Ordering::Acquire) == 0;
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            let now = Instant::now();
            if none_pending || now >= deadline {
                break;
            }
            match rx.recv_timeout((deadline - now).min(Duration::from_micros(20))) {
                Ok(more) => group.push(more),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut acks = Vec::with_capacity(group.len());
        for req in group {
            acks.push((req.ack, apply(req.ops)));
        }
        // The call-record log first: a pointer in sled must never be durable before the
        // bytes it points to. Then one flush covers every write above (and any write other
        // threads made to the same db before it: sled flushes up to the highest reserved log
        // position).
        // The subject keys too: an entry naming a key's slot is never durable before it.
        let flushed = key_slots
            .map_or(Ok(()), KeySlots::sync)
            .and_then(|()| cdr_log.map_or(Ok(Vec::new()), CdrLog::sync))
            .and_then(|empty| {
                db.flush().map_err(CommitError::Flush)?;
                durable.sync()?;
                Ok(empty)
            })
            .map_err(Arc::new);
        let flushed = match flushed {
            Ok(empty) => {
                if let Some(Err(e)) = cdr_log.map(|l| l.drop_segments(&empty)) {
                    log::warn!("store: an empty call-record log segment not deleted: {e}");
                }
                Ok(())
            }
            Err(e) => {
                log::error!("store commit failed: {}", crate::error_chain(e.as_ref()));
                Err(e)
            }
        };
        groups += 1;
        writes += acks.len() as u64;
        for (ack, applied) in acks {
            let res = match (applied, &flushed) {
                (Err(e), _) => Err(Arc::new(e)),
                (Ok(()), Err(e)) => Err(e.clone()),
                (Ok(()), Ok(())) => Ok(()),
            };
            // A caller that gave up waiting is no reason to stop.
            let _ = ack.send(res);
        }
    }
    log::debug!("store writer done: {writes} writes in {groups} groups");
}

/// The files sled writes that its flush does not fully sync.
struct DurableFiles {
    log_path: PathBuf,
    log: File,
    blobs: PathBuf,
    /// Blob file name → the length it had when we synced it.
    synced: HashMap<OsString, u64>,
}

impl DurableFiles {
    fn open(dir: &Path) -> io::Result<DurableFiles> {
        let log_path = dir.join("db");
        let log = File::open(&log_path)?;
        // The files sled just created (on first open) must survive a power loss too.
        File::open(dir)?.sync_all()?;
        let mut d = DurableFiles {
            log_path,
            log,
            blobs: dir.join("blobs"),
            synced: HashMap::new(),
        };
        d.sync().map_err(|e| match e {
            CommitError::Sync { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })?;
        Ok(d)
    }

    fn sync(&mut self) -> Result<(), CommitError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CommitError::Sync { path, source }
        };
        self.log.sync_data().map_err(err(&self.log_path))?;
        let entries = match fs::read_dir(&self.blobs) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err(&self.blobs)(e)),
        };
        let mut seen = HashMap::with_capacity(self.synced.len());
        let mut new = false;
        for entry in entries {
            let entry = entry.map_err(err(&self.blobs))?;
            let name = entry.file_name();
            let path = entry.path();
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                // Removed by sled's blob GC since we listed it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(&path)(e)),
            };
            if self.synced.get(&name) != Some(&len) {
                match File::open(&path) {
                    Ok(f) => f.sync_data().map_err(err(&path))?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(err(&path)(e)),
                }
                new = true;
            }
            seen.insert(name, len);
        }
        if new {
            File::open(&self.blobs)
                .and_then(|d| d.sync_all())
                .map_err(err(&self.blobs))?;
        }
        self.synced = seen;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, sled::Db, sled::Tree, GroupCommit) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::sled_config(dir.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let gc = GroupCommit::start(db.clone(), dir.path()).unwrap();
        (dir, db, tree, gc)
    }

    fn insert(tree: &sled::Tree, k: u64) -> Vec<Op> {
        vec![Op::Insert {
            tree: tree.clone(),
            key: k.to_be_bytes().to_vec(),
            value: b"v".to_vec(),
        }]
    }

    #[test]
    fn intents_are_counted_until_queued_or_withdrawn() {
        let (_dir, _db, tree, gc) = setup();
        let abandoned = gc.intent();
        let used = gc.intent();
        assert_eq!(gc.pending.load(Ordering::Acquire), 2);
        drop(abandoned);
        assert_eq!(gc.pending.load(Ordering::Acquire), 1);
        used.commit(insert(&tree, 1)).unwrap();
        assert_eq!(gc.pending.load(Ordering::Acquire), 0);
        assert_eq!(tree.len(), 1);
    }

    #[test]
    fn a_stuck_intent_delays_a_group_by_at_most_gather() {
        let (_dir, _db, tree, gc) = setup();
        let stuck = gc.intent();
        let start = Instant::now();
        gc.commit(insert(&tree, 1)).unwrap();
        gc.commit(insert(&tree, 2)).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        drop(stuck);
    }

    #[test]
    fn run_ops_are_serialized_on_the_writer() {
        let (_dir, _db, tree, gc) = setup();
        let seen = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for t in 0..4 {
                let (gc, tree, seen) = (&gc, &tree, Arc::clone(&seen));
                s.spawn(move || {
                    for i in 0..10u64 {
                        let seen = Arc::clone(&seen);
                        let ops = vec![Op::Run(Box::new(move || {
                            // not atomic on purpose: only one Run executes at a time
                            let v = seen.load(Ordering::Relaxed);
                            std::thread::yield_now();
                            seen.store(v + 1, Ordering::Relaxed);
                            Ok(())
                        }))];
                        gc.commit(ops).unwrap();
                        gc.intent().commit(insert(tree, t * 100 + i)).unwrap();
                    }
                });
            }
        });
        assert_eq!(seen.load(Ordering::Relaxed), 40);
        assert_eq!(tree.len(), 40);
    }

    #[test]
    fn a_failing_run_fails_its_request_only() {
        let (_dir, _db, tree, gc) = setup();
        let err = gc
            .commit(vec![Op::Run(Box::new(|| Err("no".into())))])
            .unwrap_err();
        assert!(matches!(&*err, CommitError::Run(m) if m == "no"));
        gc.commit(insert(&tree, 1)).unwrap();
    }

    #[test]
    fn new_blob_files_are_synced_and_remembered() {
        let (dir, _db, tree, gc) = setup();
        gc.commit(vec![Op::Insert {
            tree: tree.clone(),
            key: b"big".to_vec(),
            value: vec![7; 512 * 1024],
        }])
        .unwrap();
        let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        assert!(blobs >= 1, "a 512 KiB value goes to a blob file");
        let mut d = DurableFiles::open(dir.path()).unwrap();
        assert_eq!(d.synced.len(), blobs);
        d.sync().unwrap();
    }
}
