//! # callgate-store
//!
//! The appliance's records — CDRs, audit, config history, console sessions — encrypted
//! before they reach the disk, on [`sled`] 0.34, with the sealed CDRs themselves in an
//! append-only log of segment files beside it.
//!
//! ## Design
//! - One sled database in the data directory with these trees:
//!
//!   | tree | key | value |
//!   |---|---|---|
//!   | `cdrs` | id, u64 big-endian (a sequence: time-ordered) | pointer into the call-record log, 16 bytes: `PL 1 0`, segment, offset, length (u32 BE each); in a store written before the log, the sealed CDR itself (PII sealed again inside) |
//!   | `audit` | id, u64 BE (append-only) | sealed [`AuditEntry`] |
//!   | `config_history` | revision, u64 BE | sealed [`ConfigRevision`] |
//!   | `sessions` | session id (an opaque handle) | sealed [`Session`] |
//!   | `history` | console user name | sealed command history (newest last, bounded) |
//!   | `outbox` | write sequence, u64 BE | CDR id, u64 BE (or a transcript's id with bit 63 set, [`transcripts::TRANSCRIPT`]): that write awaits the uplink (or was acknowledged: `meta/outbox_acked` says so until it is compacted) |
//!   | `cdrs_by_subject` | subject token ++ CDR id | empty |
//!   | `subjects` | subject token | key generation (u64 BE) ++ the slot of `subject-keys` holding the subject key (u32 BE); in a store written before that file, the generation ++ the key wrapped under the KEK |
//!   | `outbox_messages` | id, u64 BE (sled's `generate_id`: increasing) | sealed [`OutboxMessage`]: a message for the uplink that must not be lost (an erasure's receipt and reply), until the broker acknowledged it |
//!   | `erasures` | subject token ++ time (ms, u64 BE) | sealed [`Erasure`]: when, by whom, on which appliance, the key generation and record ids erased, the signed receipt |
//!   | `transcripts` | id, u64 BE | sealed redacted transcript (JSON) waiting for the uplink ([`transcripts`]); deleted once the broker has it |
//!   | `keys` | data-key id, u32 BE | data key wrapped under the KEK |
//!   | `meta` | name | format marker, current data-key id, the outbox's acknowledged ranges |
//!
//!   Beside it, the call-record log `cdr-log/<segment>.seg` (the `cdrlog` module) holds
//!   the sealed CDRs the `cdrs` tree points to: append-only segment files numbered from 1,
//!   rolled at 64 MiB; each entry a 16-byte header (magic `CGl1`, length, CDR id) and the
//!   sealed CDR. A read checks the header against the pointer and the id, so a pointer to
//!   the wrong bytes, a torn or damaged entry is [`StoreError::Corrupt`] for that record
//!   alone. A write of a record already stored appends a new entry and moves the pointer;
//!   [`Store::remove_cdr`] removes the pointer. Each segment's live records are counted
//!   (from the pointers at open, then by every write and removal); a segment left without
//!   any is deleted, except the one being written. sled's copy-on-write leaves then hold
//!   16 bytes per record instead of the whole sealed CDR (see Performance).
//!
//!   The file `subject-keys` (the `keyslots` module) holds each subject key wrapped under
//!   the KEK in a slot of its own, overwritten with zeros (and synced) when the subject is
//!   erased: sled keeps what is removed from it in its old log segments, so a key kept in
//!   sled would outlive its erasure on disk. Slots no `subjects` entry names are zeroed at
//!   open. Every group commit syncs the file before it flushes sled.
//!
//!   The file `open-cdrs` holds the answer-time records of calls in progress
//!   ([`Store::put_open_cdrs`], the `open` module): sealed exactly as in the log, moved
//!   into the log and `cdrs` at the next open if their call's final record never came.
//!
//!   No key holds PII: CDRs are found by sequence number, subjects by their token
//!   (`HMAC(lookup key, normalized number)`, see `callgate_vault::subject_token`).
//! - Values are serialized with `serde_json` (a CDR: a small binary envelope holding the
//!   subject token, subject-key generation and the subject-sealed PII, then the JSON of the
//!   rest), then sealed under the current data key
//!   (ChaCha20-Poly1305) with associated data `table ++ 0 ++ key`, so a record moved to
//!   another id or table fails to open. A record that fails is [`StoreError::Corrupt`] for
//!   that record alone; its neighbours read fine.
//! - A CDR's caller number and name are sealed twice: under the caller's subject key
//!   (inside), then with the rest of the CDR under the data key. [`Store::erase_subject`]
//!   deletes the subject key (crypto-shredding): the PII of every CDR of that subject
//!   becomes unreadable at once and reads back as [`Pii::Erased`], the rest of each CDR
//!   stays, and nobody else's records change.
//! - Subject requests ([`subject`]): [`Store::subject_info`] (records listed, key
//!   generation, erasures), [`Store::cdrs_of_subject`] with the JSON and CSV exports of
//!   [`subject::export_json`] and [`subject::export_csv`] (their fields documented there),
//!   and [`Store::erase_subject_recorded`]: the key deleted, the index entries deleted and
//!   the erasure's record (with the receipt the caller signed) stored, in that order, in
//!   one commit.
//! - Retention ([`Store::expire`], the `retention` module): call records and audit entries
//!   older than their table's retention deleted, and the keys of subjects no remaining
//!   record needs shredded, with the clock passed in.
//! - [`Store::rotate_data_key`]: new writes use a new data key; old records stay readable
//!   under the old ones. Opening with the wrong KEK is [`StoreError::WrongKey`].
//!
//! ## Durability policy
//! A write is acknowledged (its `put_*`/`append_*` returns `Ok`) only after it is durable.
//! Writes are group-committed ([`GroupCommit`]): each writer seals its record and applies it
//! in its own thread (a CDR: appended to the call-record log with one `pwrite` per batch,
//! then its subject index entry, outbox entry and pointer put into sled, in that order: see
//! "Records and their indexes" below), then queues a
//! ticket for the one writer thread, which takes every ticket queued so far, `fdatasync`s
//! the log's segments written since its last group (and the `cdr-log` directory when a
//! segment was created) — so a pointer is never made durable by a flush before the bytes
//! it points to — then calls `sled::Db::flush` once, `fdatasync`s sled's log file and any
//! new blob file (sled's flush uses `sync_file_range`, which syncs neither metadata nor
//! the disk cache, and sled never syncs blob files), and only then acknowledges all of them.
//! After that flush it deletes the segments it found without a live record before it: the
//! removals that emptied them are durable by then.
//! A flush covers every write applied before it started, so an acknowledged write is always
//! covered. Writers announce themselves before sealing, and a group waits up to
//! [`GATHER`] (200 µs) for announced writers, so they share a flush. Erasure is committed
//! the same way; data-key rotation runs on the writer thread itself, serialized with
//! everything else. Writes are blocking calls; from async code, run them on a blocking
//! thread. Reads see a write as soon as it is applied, possibly before it is durable; they
//! read the log with `pread` on segment files opened once, and take no lock the writers
//! hold across an fsync.
//!
//! ### Records and their indexes
//! A CDR write touches three trees (`cdrs_by_subject`, `outbox`, `cdrs`) and sled has no
//! cheap way to make that one step: its batches and multi-tree transactions (0.34) take a
//! process-wide lock that every later tree operation then takes too, and roll the log
//! buffer (a `pwrite`) twice each. Instead the store relies on what sled's recovery does:
//! it replays its log in LSN order and stops at the first torn or missing message
//! (`pagecache/iterator.rs`), so what survives a crash is a prefix of the log, and one
//! thread's inserts take their LSNs in program order. A CDR write inserts its index entry,
//! then its outbox entry, then its pointer (the commit point): a pointer that survives has
//! its index and outbox entries with it, whatever a concurrent group's flush wrote. What a
//! crash can leave is an entry without its pointer, of a write nobody was told is durable:
//! the next open removes index entries whose record is gone (a walk of the index's keys,
//! nothing decrypted), and the uplink skips outbox entries without a record. Removals go
//! the other way round (pointer first, then the index entry), erasure deletes the subject
//! key before the index entries and stores its record last. While a write is in flight its
//! outbox entry is in the tree before its pointer, so readers of the outbox leave out the
//! write sequences in flight (the uplink reads the outbox again from its start once it
//! reaches the end). Cost per record: the same three sled inserts as before; per batch of
//! records, two lock acquisitions (the sequences in flight taken and released).
//! `tests/index_crash.rs` SIGKILLs a writer of five callers' records (appends, batches,
//! calls in progress, removals) thirty times at pseudo-random points and checks after each
//! reopen that every caller's index lists exactly their records, both ways, and that every
//! acknowledged write is there; with the pointer inserted before the index entry, or
//! without the repair at open, it fails.
//!
//! At open, once sled's state is durable, the live records per segment are counted from
//! the pointers (a walk of `cdrs`, 16-byte values), and the last segment is truncated to
//! the end of the last entry a pointer references: what follows was never acknowledged (an
//! append torn by a crash, or records since removed). Other segments without a live record
//! are deleted. `tests/cdr_log.rs` tears and cuts the tail, damages entries and points
//! records at each other's bytes.
//!
//! Tested: a child process writing CDRs from six threads is SIGKILLed mid-storm (four
//! rounds on one store), and every id it had acknowledged reads back, verifies and matches
//! what was written (`tests/crash.rs`); with the flush removed the same test loses
//! acknowledged writes. Stores written before the log (CDRs sealed inline in `cdrs`) open
//! and read as before: a value is a pointer only if it is 16 bytes starting `PL 1 0`, and a
//! sealed record is always longer (`tests/cdr_log.rs` rewrites a store into that form).
//!
//! ## Performance
//! Unwrapped subject keys are cached (lock-free, direct-mapped, 4096 slots; every erasure
//! invalidates the whole cache).
//! A CDR write seals twice (ChaCha20-Poly1305, ring's assembly: `callgate_vault`'s AEAD;
//! about 8% of the `cdr-writer` thread under `scripts/bench sip`) on top of sled's inserts
//! of three small entries and the group commit;
//! `scripts/bench store` compares against plain sled with the same commit path.
//! `bench-store batch` (`put_cdrs` batches of 64 ~1 KiB CDRs from one thread, on 2 cores
//! shared with other builds, five alternating runs each, medians): with the sealed CDRs as
//! sled values the writing thread spent 30.0 µs of CPU per record (44.1 µs for the whole
//! process) at 23.3k records/s; with the log, 23.2 µs (32.2 µs) at 27.1k records/s. The
//! segments' zeros written ahead matter for the rate: without them the sync of a growing
//! file cost a journal commit per group and the rate fell below the old one. What is left
//! is mostly sealing (~12% of the thread's time) and sled's inserts into `outbox` and
//! `cdrs_by_subject` (random keys: leaf splits and copies).
//!
//! ## Current limitations
//! - Power loss is not tested (only process kill); the fsyncs above are what stands for it.
//! - Crypto-shredding overwrites the subject key's slot in `subject-keys` in place: no file
//!   holds it afterwards (`subject::tests::after_an_erasure_no_file_holds_the_wrapped_key`
//!   scans every file). The file system and the flash below it may still keep the old
//!   block (an SSD remaps writes); those bytes are wrapped under the KEK (TPM-sealed), so
//!   the erasure holds as long as the KEK does. Subject keys of a store written before the
//!   file stay in sled (and its old segments) until erased; nothing migrates them.
//! - A CDR whose caller is already erased when written keeps no name either.
//! - An erasure lists the records its subject's index held when it began: a record of the
//!   subject written while it runs (sealed under the key just before its deletion) is
//!   erased too, but its index entry stays and the receipt does not name it.
//! - The atomicity of a record with its index entries rests on sled 0.34's recovery
//!   replaying a prefix of its log (read from its source, tested by process kill); a store
//!   crashed under an earlier version of this code (pointer first) may hold records
//!   missing from their subject's index, and nothing finds those.
//! - Open walks the subject index (keys, a lookup in `cdrs` each) to remove entries without
//!   a record: time in proportion to the records held, like the pointer walk below.
//! - sled may write its log buffer to the file on its own, before the group's sync: after
//!   a power loss (not a process kill: the log's `pwrite` precedes the pointer's insert), a
//!   pointer of a write that was never acknowledged may have outlived its bytes and reads
//!   as [`StoreError::Corrupt`]. Acknowledged records are not affected.
//! - Stores written before the log keep their CDRs inline in `cdrs` (and sled's memory)
//!   until retention removes them or they are written again; nothing migrates them.
//! - Open walks every pointer of `cdrs` to count the live records per segment: time in
//!   proportion to the records held.
//! - A segment whose `fdatasync` failed is synced again by the next group (its writers get
//!   the error); after such a failure Linux may have dropped the dirty pages, and the next
//!   sync does not tell. Deleted segments are unlinked without syncing the directory: one
//!   that comes back after a power loss has no pointer into it and is deleted at open.
//! - A segment is deleted only when every record in it is gone: one long-kept record keeps
//!   its whole 64 MiB segment, and the sealed bytes of records removed from it (retention)
//!   stay on disk with it until then (sealed under the data key, their PII under its
//!   subject key: erasure by crypto-shredding is not affected).
//! - Session ids are stored in clear as keys: they must be opaque handles, not secrets.
//! - sled 0.34 is the last stable sled; its on-disk format is not promised to be readable
//!   by later versions.

mod acked;
mod cache;
mod cdrlog;
mod commit;
mod keyslots;
mod messages;
mod mirror;
mod open;
mod retention;
pub mod subject;
pub mod transcripts;
mod types;

pub use cdrlog::SEGMENT_BYTES;
pub use messages::OutboxMessage;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
// The store is blocking code (async callers go through `spawn_blocking`); this lock guards
// the slots of calls in progress for one batch of file writes or one read.
#[allow(clippy::disallowed_types)]
use std::sync::{Mutex, MutexGuard};

use arc_swap::ArcSwap;
use callgate_vault::{
    subject_token, unwrap_dek, wrap_dek, CryptoError, Kek, Keyring, LookupKey, RecordError,
    SubjectKey, SubjectToken,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use callgate_cdr::{Cdr, Disposition, Party, Pii, Resume};
pub use commit::{CommitError, GroupCommit, Intent, Op, GATHER};
pub use retention::Expired;
pub use subject::{Erasure, ErasureFacts, PeerOutcome, SubjectInfo};
pub use types::{AuditEntry, ConfigRevision, Record, Session};

const FORMAT: &[u8] = b"callgate-store/1";
const META_FORMAT: &[u8] = b"format";
const META_CURRENT_DEK: &[u8] = b"current_dek";
/// The outbox's acknowledged, not yet compacted write sequences ([`acked::Ranges`]).
const META_OUTBOX_ACKED: &[u8] = b"outbox_acked";

/// The tables holding sealed records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Cdrs,
    Audit,
    ConfigHistory,
    Sessions,
    History,
    Erasures,
    Messages,
    Transcripts,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Cdrs => "cdrs",
            Table::Audit => "audit",
            Table::ConfigHistory => "config_history",
            Table::Sessions => "sessions",
            Table::History => "history",
            Table::Erasures => "erasures",
            Table::Messages => "outbox_messages",
            Table::Transcripts => "transcripts",
        }
    }
}

/// Errors of the store. `Display` never includes the source; log the chain with
/// [`error_chain`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("cannot prepare the data directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the key-encryption key does not open this store's data keys (wrong KEK)")]
    WrongKey,
    #[error("the store's keyring is damaged: data keys {ids:?} do not open under the KEK")]
    KeyringCorrupt { ids: Vec<u32> },
    #[error("the store's metadata is damaged or foreign: {0}")]
    Meta(String),
    #[error("record {table}/{id} is corrupt (authentication failed)")]
    Corrupt { table: &'static str, id: String },
    #[error("record {table}/{id} was sealed under data key {key_id}, which the keyring lacks")]
    UnknownKey {
        table: &'static str,
        id: String,
        key_id: u32,
    },
    #[error("record {table}/{id} opened but does not decode")]
    Decode {
        table: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no record {table}/{id}")]
    NotFound { table: &'static str, id: String },
    #[error("cannot encode a record")]
    Encode(#[source] serde_json::Error),
    #[error("the storage engine failed")]
    Sled(#[from] sled::Error),
    #[error("the write was not made durable")]
    Commit(#[source] Arc<CommitError>),
    #[error("cryptography failed")]
    Crypto(#[from] CryptoError),
    #[error("the file of calls in progress ({}) failed", open::FILE)]
    OpenCalls(#[source] std::io::Error),
    #[error("the call-record log ({}) failed", cdrlog::DIR)]
    Log(#[source] std::io::Error),
    #[error("the subject keys' file ({}) failed", keyslots::FILE)]
    KeySlots(#[source] std::io::Error),
}

/// The whole chain of an error, for the one place that logs it.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// sled's page cache. Writes go to the tail of `cdrs` (ids are a sequence) and to one leaf
/// per caller in `cdrs_by_subject`; reads (the console, subject requests) are rare and find
/// the log file in the kernel's page cache, which does not count against the daemon. The
/// cache filling up is resident memory the first tens of thousands of records pay for: at
/// 64 MiB it added ~0.9 KB per record to `bytes_per_dialog` in `scripts/bench sip`, and
/// measured on a daemon warmed by 1,000 calls, 16 MiB still gave 4.4 KB per held dialog
/// where 4 MiB gave 3.2 KB. `scripts/bench store` showed no difference between 16 and
/// 4 MiB (writes 12.9k/s vs 11.9k/s, reads 220k/s vs 198k/s, within the run-to-run noise).
pub const CACHE_BYTES: u64 = 4 << 20;

/// Opens the database, waiting up to a second for sled's file lock: a store of this
/// process that was just dropped (in tests), or sled's I/O threads of one, may still hold
/// it for a moment. Another process holding it gets the error after that second.
fn open_db(dir: &Path) -> sled::Result<sled::Db> {
    let mut tries = 0;
    loop {
        match sled_config(dir).open() {
            Err(sled::Error::Io(e)) if tries < 50 && e.to_string().contains("acquire lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// The sled settings the store uses; public so the benchmark's anchor uses the same.
/// No background flush thread: every write is flushed by [`GroupCommit`] anyway.
pub fn sled_config(dir: &Path) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_BYTES)
        .flush_every_ms(None)
}

struct Trees {
    cdrs: sled::Tree,
    audit: sled::Tree,
    config_history: sled::Tree,
    sessions: sled::Tree,
    history: sled::Tree,
    erasures: sled::Tree,
    messages: sled::Tree,
    transcripts: sled::Tree,
    outbox: sled::Tree,
    by_subject: sled::Tree,
    subjects: sled::Tree,
    keys: sled::Tree,
    meta: sled::Tree,
}

impl Trees {
    fn open(db: &sled::Db) -> Result<Trees, sled::Error> {
        Ok(Trees {
            cdrs: db.open_tree("cdrs")?,
            audit: db.open_tree("audit")?,
            config_history: db.open_tree("config_history")?,
            sessions: db.open_tree("sessions")?,
            history: db.open_tree("history")?,
            erasures: db.open_tree("erasures")?,
            messages: db.open_tree("outbox_messages")?,
            transcripts: db.open_tree("transcripts")?,
            outbox: db.open_tree("outbox")?,
            by_subject: db.open_tree("cdrs_by_subject")?,
            subjects: db.open_tree("subjects")?,
            keys: db.open_tree("keys")?,
            meta: db.open_tree("meta")?,
        })
    }

    fn table(&self, t: Table) -> &sled::Tree {
        match t {
            Table::Cdrs => &self.cdrs,
            Table::Audit => &self.audit,
            Table::ConfigHistory => &self.config_history,
            Table::Sessions => &self.sessions,
            Table::History => &self.history,
            Table::Erasures => &self.erasures,
            Table::Messages => &self.messages,
            Table::Transcripts => &self.transcripts,
        }
    }
}

struct Keys {
    kek: Kek,
    lookup: LookupKey,
    ring: ArcSwap<Keyring>,
    subjects: cache::SubjectCache,
}

/// The encrypted store. `Send + Sync`: share it (`Arc<Store>`) between threads; writes from
/// many threads are committed together.
pub struct Store {
    dir: PathBuf,
    t: Trees,
    keys: Arc<Keys>,
    next_cdr: AtomicU64,
    /// The next write sequence for the outbox (above every one it holds).
    outbox_seq: AtomicU64,
    /// The write sequences of each write in flight ([`InFlight`]): first → how many.
    #[allow(clippy::disallowed_types)]
    outbox_in_flight: Mutex<BTreeMap<u64, u64>>,
    /// Acknowledged writes still in the outbox (kept durably in `meta`).
    #[allow(clippy::disallowed_types)]
    outbox_acked: Mutex<acked::Ranges>,
    /// Entries in the outbox: counted once at open (sled's `len` walks the tree), then
    /// kept by the commits that add and remove them.
    outbox_entries: AtomicU64,
    /// The outbox's waiting writes in memory, while the backlog is small enough
    /// ([`mirror`]). Locked after `outbox_acked` where both are.
    #[allow(clippy::disallowed_types)]
    outbox_mirror: Mutex<mirror::Mirror>,
    /// 0: ids in sequence; 1: even ids only (pair node 0); 2: odd ids only (pair node 1).
    id_parity: std::sync::atomic::AtomicU8,
    next_audit: AtomicU64,
    /// The next transcript id ([`transcripts`]).
    next_transcript: AtomicU64,
    /// Subject keys created so far (counted before each reaches sled), and how many of
    /// them a completed commit has made durable: a record sealed under a key may reach the
    /// file of calls in progress only once a commit covering that key has completed.
    keys_created: AtomicU64,
    keys_durable: AtomicU64,
    /// Answer-time records of calls in progress (see [`Store::put_open_cdrs`]).
    #[allow(clippy::disallowed_types)]
    open_calls: Mutex<open::OpenSlots>,
    /// Calls that were in progress when the store was last closed, as recovered at open,
    /// until [`Store::take_calls_in_progress`].
    #[allow(clippy::disallowed_types)]
    in_progress: Mutex<Vec<Record<Cdr>>>,
    /// The sealed CDRs the `cdrs` tree points to.
    log: Arc<cdrlog::CdrLog>,
    /// The subject keys, wrapped, each in a slot overwritten when it is erased.
    key_slots: Arc<keyslots::KeySlots>,
    commit: GroupCommit,
    // Declared last: dropped after the writer thread has finished.
    _db: sled::Db,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("keyring", &*self.keys.ring.load_full())
            .finish()
    }
}

/// The non-personal part of a stored CDR (JSON).
#[derive(Serialize, Deserialize)]
struct CdrBody {
    call_id: String,
    tracking_number: String,
    campaign: String,
    destination: String,
    invite_at: u64,
    ring_at: Option<u64>,
    answer_at: Option<u64>,
    end_at: Option<u64>,
    duration_ms: u64,
    disposition: Disposition,
    final_code: u16,
    appliance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ended_by: Option<String>,
    /// Whether the CDR has a caller name (the name itself is with the PII).
    has_name: bool,
    /// What a restarted daemon needs (answer-time records of calls in progress only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume: Option<Resume>,
}

/// The personal part of a stored CDR (JSON, sealed under the caller's subject key).
#[derive(Serialize, Deserialize)]
struct CdrPii {
    caller: String,
    caller_name: Option<String>,
}

impl Drop for CdrPii {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.caller.zeroize();
        self.caller_name.zeroize();
    }
}

/// The non-personal part of `cdr`, as stored.
fn cdr_body(cdr: &Cdr) -> CdrBody {
    CdrBody {
        call_id: cdr.call_id.clone(),
        tracking_number: cdr.tracking_number.clone(),
        campaign: cdr.campaign.clone(),
        destination: cdr.destination.clone(),
        invite_at: cdr.invite_at,
        ring_at: cdr.ring_at,
        answer_at: cdr.answer_at,
        end_at: cdr.end_at,
        duration_ms: cdr.duration_ms,
        disposition: cdr.disposition,
        final_code: cdr.final_code,
        appliance: cdr.appliance.clone(),
        ended_by: cdr.ended_by.clone(),
        has_name: cdr.caller_name.is_some(),
        resume: cdr.resume.clone(),
    }
}

/// The personal part of `cdr`, as sealed under the caller's subject key; `None` when the
/// caller is erased.
fn cdr_pii(cdr: &Cdr) -> Option<CdrPii> {
    Some(CdrPii {
        caller: cdr.caller.reveal()?.to_owned(),
        caller_name: cdr
            .caller_name
            .as_ref()
            .and_then(|n| n.reveal().map(str::to_string)),
    })
}

/// The personal part's JSON, in a buffer that never grows: a grown `Vec` leaves its old
/// buffer (the caller's number and name) in freed memory that [`Zeroizing`] never wipes.
/// JSON escapes a byte to at most six (`\u00XX`).
fn pii_json(pii: &CdrPii) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    let text = pii.caller.len() + pii.caller_name.as_ref().map_or(0, String::len);
    let mut json = Zeroizing::new(Vec::with_capacity(64 + 6 * text));
    serde_json::to_writer(&mut *json, pii).map_err(StoreError::Encode)?;
    Ok(json)
}

/// The fields of a JSON object (what is between its braces).
fn fields_of(object: &[u8]) -> Option<&[u8]> {
    object.strip_prefix(b"{")?.strip_suffix(b"}")
}

/// A record's JSON for the cloud from its two stored JSON objects: the personal one
/// (`None`: erased) first, then the rest. No parsing, no re-encoding.
fn join_cdr_json(pii: Option<&[u8]>, body: &[u8]) -> Option<Vec<u8>> {
    let pii = match pii {
        Some(p) => fields_of(p)?,
        None => br#""caller":null,"caller_name":null"#,
    };
    let body = fields_of(body)?;
    let mut out = Vec::with_capacity(pii.len() + body.len() + 3);
    out.push(b'{');
    out.extend_from_slice(pii);
    if !body.is_empty() {
        out.push(b',');
        out.extend_from_slice(body);
    }
    out.push(b'}');
    Some(out)
}

/// The JSON [`Store::get_cdrs_json`] gives for a record holding `cdr`: the same values
/// as `Cdr`'s own serialization, in another shape: `caller` and `caller_name` first;
/// `has_name` (whether the caller gave a name; an erased name reads `null`); `resume`
/// absent rather than `null` when there is none.
pub fn cdr_json(cdr: &Cdr) -> Result<Vec<u8>, StoreError> {
    let body = serde_json::to_vec(&cdr_body(cdr)).map_err(StoreError::Encode)?;
    let pii = match cdr_pii(cdr) {
        Some(p) => Some(pii_json(&p)?),
        None => None,
    };
    join_cdr_json(pii.as_deref().map(Vec::as_slice), &body)
        .ok_or_else(|| StoreError::Meta("a record's JSON is not an object".into()))
}

/// What is sealed under the data key for a CDR, version 1:
/// `[1][0]` (caller erased when written) or
/// `[1][1][subject token 32][subject-key generation u64 BE][pii len u32 BE][sealed pii]`,
/// then the body's JSON. The generation tells a record whose subject was erased (and seen
/// again since, with a new key) from a damaged one.
const CDR_FORMAT: u8 = 1;

struct CdrEnvelope<'a> {
    subject: Option<(SubjectToken, u64, &'a [u8])>,
    body: &'a [u8],
}

fn encode_envelope(subject: Option<(&SubjectToken, u64, &[u8])>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + body.len());
    out.push(CDR_FORMAT);
    match subject {
        None => out.push(0),
        Some((token, generation, pii)) => {
            out.push(1);
            out.extend_from_slice(token.as_bytes());
            out.extend_from_slice(&generation.to_be_bytes());
            out.extend_from_slice(&(pii.len() as u32).to_be_bytes());
            out.extend_from_slice(pii);
        }
    }
    out.extend_from_slice(body);
    out
}

fn decode_envelope(b: &[u8]) -> Option<CdrEnvelope<'_>> {
    let (&version, rest) = b.split_first()?;
    if version != CDR_FORMAT {
        return None;
    }
    let (&flag, rest) = rest.split_first()?;
    match flag {
        0 => Some(CdrEnvelope {
            subject: None,
            body: rest,
        }),
        1 => {
            let (token, rest) = rest.split_at_checked(SubjectToken::LEN)?;
            let (generation, rest) = rest.split_at_checked(8)?;
            let (len, rest) = rest.split_at_checked(4)?;
            let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
            let (pii, body) = rest.split_at_checked(len)?;
            Some(CdrEnvelope {
                subject: Some((SubjectToken::from_slice(token)?, id_of(generation)?, pii)),
                body,
            })
        }
        _ => None,
    }
}

/// A CDR's personal part (JSON), opened.
type OpenedPii = Zeroizing<Vec<u8>>;
/// A CDR read back with the subject token it is filed under.
type Decoded = (Option<SubjectToken>, Record<Cdr>);
/// The record of a call in progress, by id.
type OpenCdr = (u64, Result<Decoded, StoreError>);

/// What [`Store::cdr_writes`] applied and its commit must make durable: the outbox writes
/// it added ((write sequence, record id)), in flight until dropped.
struct Applied<'a> {
    outbox: Vec<(u64, u64)>,
    _in_flight: Option<InFlight<'a>>,
}

impl Applied<'_> {
    fn is_empty(&self) -> bool {
        self.outbox.is_empty()
    }
}

/// What a reader of the outbox's tree leaves out ([`Store::outbox_held`]).
struct Held {
    /// (first, count) of each write in flight.
    in_flight: Vec<(u64, u64)>,
    /// The next write sequence to be taken.
    next: u64,
}

impl Held {
    fn holds(&self, seq: u64) -> bool {
        seq >= self.next
            || self
                .in_flight
                .iter()
                .any(|(first, n)| (*first..first.saturating_add(*n)).contains(&seq))
    }
}

/// Outbox write sequences taken by a write whose commit has not returned yet: from
/// `first`, `n` of them. Registered when taken, released when dropped.
struct InFlight<'a> {
    store: &'a Store,
    first: u64,
}

impl<'a> InFlight<'a> {
    /// Takes `n` write sequences (one step under the in-flight lock, so a reader's bound
    /// never passes a sequence taken but not yet registered).
    fn start(store: &'a Store, n: u64) -> Result<InFlight<'a>, StoreError> {
        let mut f = store
            .outbox_in_flight
            .lock()
            .map_err(|_| StoreError::Meta("the outbox's lock is poisoned".into()))?;
        let first = store.outbox_seq.fetch_add(n, Ordering::Relaxed);
        f.insert(first, n);
        Ok(InFlight { store, first })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.store.outbox_in_flight.lock() {
            f.remove(&self.first);
        }
    }
}

fn commit_with(intent: Intent<'_>, ops: Vec<Op>) -> Result<(), StoreError> {
    intent.commit(ops).map_err(StoreError::Commit)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn aad(table: &str, key: &[u8]) -> Vec<u8> {
    [table.as_bytes(), b"\0", key].concat()
}

/// Associated data of a CDR's PII: the record, the subject-key generation.
fn pii_aad(key: &[u8], generation: u64) -> Vec<u8> {
    [b"cdrs/pii\0".as_slice(), key, &generation.to_be_bytes()].concat()
}

fn id_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn next_id(tree: &sled::Tree) -> Result<u64, sled::Error> {
    Ok(tree
        .last()?
        .and_then(|(k, _)| id_of(&k))
        .map_or(1, |id| id.saturating_add(1)))
}

/// The slot of the `subject-keys` file a `subjects` entry names: the entry is the key's
/// generation (u64 BE) and the slot (u32 BE). `None` for an entry of an older store, which
/// holds the wrapped key itself after the generation.
fn key_slot(entry: &[u8]) -> Option<u32> {
    if entry.len() != 12 {
        return None;
    }
    be_u32(entry.get(8..)?)
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

impl Store {
    /// Opens (or creates) the store in `dir` with the KEK. Creating makes the first data
    /// key; opening unwraps the keyring, and refuses a KEK that opens none of it.
    pub fn open(dir: impl AsRef<Path>, kek: Kek) -> Result<Store, StoreError> {
        Store::open_with(dir.as_ref(), kek, cdrlog::SEGMENT_BYTES)
    }

    /// [`Self::open`] with the call-record log's segments rolled at `segment_bytes`
    /// (default [`SEGMENT_BYTES`]). Smaller segments give the space of deleted records
    /// back sooner (a segment is deleted once no record in it is left), in more files.
    pub fn open_with(dir: &Path, kek: Kek, segment_bytes: u64) -> Result<Store, StoreError> {
        let dir = dir.to_path_buf();
        let dir_err = |source| StoreError::Dir {
            path: dir.clone(),
            source,
        };
        if !dir.exists() {
            use std::os::unix::fs::PermissionsExt;
            fs::create_dir_all(&dir).map_err(dir_err)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        }
        let db = open_db(&dir).map_err(|source| StoreError::Open {
            path: dir.clone(),
            source,
        })?;
        let t = Trees::open(&db)?;
        let log = Arc::new(cdrlog::CdrLog::open(&dir, segment_bytes).map_err(StoreError::Log)?);
        let key_slots = Arc::new(keyslots::KeySlots::open(&dir).map_err(dir_err)?);
        // Starting the writer syncs sled's files: what `recover` reads is durable.
        let commit = GroupCommit::start_with_log(
            db.clone(),
            &dir,
            Some(Arc::clone(&log)),
            Some(Arc::clone(&key_slots)),
        )
        .map_err(dir_err)?;
        let mut used = BTreeSet::new();
        for v in t.subjects.iter().values() {
            used.extend(key_slot(&v?));
        }
        let orphans = key_slots.recover(&used).map_err(dir_err)?;
        if orphans > 0 {
            log::info!("store: {orphans} subject keys no entry names were zeroed");
        }
        let cut = log.recover(t.cdrs.iter().values())?;
        if cut > 0 {
            log::info!("store: {cut} bytes of unfinished appends cut from the call-record log");
        }
        let lookup = kek.lookup_key()?;

        match t.meta.get(META_FORMAT)? {
            Some(f) if f.as_ref() == FORMAT => {}
            Some(f) => {
                return Err(StoreError::Meta(format!(
                    "unknown format {:?}",
                    String::from_utf8_lossy(&f)
                )))
            }
            None => {}
        }
        let ring = match load_keyring(&t, &kek)? {
            Some(ring) => ring,
            None => {
                for table in [
                    Table::Cdrs,
                    Table::Audit,
                    Table::ConfigHistory,
                    Table::Sessions,
                    Table::History,
                    Table::Erasures,
                    Table::Messages,
                ] {
                    if !t.table(table).is_empty() {
                        return Err(StoreError::Meta(format!(
                            "the keyring is missing but {} holds records",
                            table.name()
                        )));
                    }
                }
                let ring = Keyring::generate()?;
                let mut ops = Vec::new();
                for (id, wrapped) in ring.wrap_all(&kek)? {
                    ops.push(Op::Insert {
                        tree: t.keys.clone(),
                        key: id.to_be_bytes().to_vec(),
                        value: wrapped,
                    });
                }
                ops.push(Op::Insert {
                    tree: t.meta.clone(),
                    key: META_CURRENT_DEK.to_vec(),
                    value: ring.current_id().to_be_bytes().to_vec(),
                });
                ops.push(Op::Insert {
                    tree: t.meta.clone(),
                    key: META_FORMAT.to_vec(),
                    value: FORMAT.to_vec(),
                });
                commit.commit(ops).map_err(StoreError::Commit)?;
                log::info!("store: created at {} with data key 1", dir.display());
                ring
            }
        };
        let (slots, unfinished) = open::OpenSlots::open(&dir).map_err(dir_err)?;
        let next_cdr = AtomicU64::new(next_id(&t.cdrs)?);
        let next_audit = AtomicU64::new(next_id(&t.audit)?);
        let next_transcript = AtomicU64::new(next_id(&t.transcripts)?);
        let outbox_seq = AtomicU64::new(next_id(&t.outbox)?);
        let outbox_entries = AtomicU64::new(t.outbox.len() as u64);
        let outbox_acked = match t.meta.get(META_OUTBOX_ACKED)? {
            None => acked::Ranges::default(),
            Some(b) => acked::Ranges::decode(&b).unwrap_or_else(|| {
                // Damaged: everything in the outbox is sent again (duplicates, no loss).
                log::warn!(
                    "store: the outbox's acknowledgements are damaged; its records go again"
                );
                acked::Ranges::default()
            }),
        };
        let store = Store {
            dir,
            keys: Arc::new(Keys {
                kek,
                lookup,
                ring: ArcSwap::from_pointee(ring),
                subjects: cache::SubjectCache::new(),
            }),
            t,
            next_cdr,
            outbox_seq,
            #[allow(clippy::disallowed_types)]
            outbox_in_flight: Mutex::new(BTreeMap::new()),
            #[allow(clippy::disallowed_types)]
            outbox_acked: Mutex::new(outbox_acked),
            outbox_entries,
            #[allow(clippy::disallowed_types)]
            outbox_mirror: Mutex::new(mirror::Mirror::default()),
            id_parity: std::sync::atomic::AtomicU8::new(0),
            next_audit,
            next_transcript,
            keys_created: AtomicU64::new(0),
            keys_durable: AtomicU64::new(0),
            #[allow(clippy::disallowed_types)]
            open_calls: Mutex::new(slots),
            #[allow(clippy::disallowed_types)]
            in_progress: Mutex::new(Vec::new()),
            log,
            key_slots,
            commit,
            _db: db,
        };
        store.recover_open_cdrs(unfinished)?;
        store.repair_index()?;
        store.repair_transcripts()?;
        Ok(store)
    }

    /// Moves the records of calls that were in progress when the store was last closed
    /// (or the process died) into the `cdrs` tree, then empties their file.
    fn recover_open_cdrs(&self, unfinished: Vec<open::Found>) -> Result<(), StoreError> {
        let mut recs = Vec::new();
        let mut in_progress = Vec::new();
        for (id, sealed) in unfinished {
            let key = id.to_be_bytes();
            if self.t.cdrs.contains_key(key)? {
                continue; // its final record made it
            }
            match self.decode_cdr(id, &key, &sealed) {
                Ok((token, rec)) => {
                    self.next_cdr
                        .fetch_max(id.saturating_add(1), Ordering::Relaxed);
                    // Indexed only while the caller is readable (as a write indexes it):
                    // a call whose subject was erased meanwhile stays out of the index.
                    let index = token
                        .filter(|_| rec.value.caller.reveal().is_some())
                        .map(|t| [t.as_bytes().as_slice(), &key].concat());
                    recs.push((id, sealed, index));
                    if rec.value.end_at.is_none() && rec.value.resume.is_some() {
                        in_progress.push(rec);
                    }
                }
                Err(e) => log::warn!(
                    "store: the record of call in progress {id} is unreadable and dropped: {}",
                    error_chain(&e)
                ),
            }
        }
        if !recs.is_empty() {
            let n = recs.len();
            let applied = self.cdr_writes(recs)?;
            self.commit_applied(self.commit.intent(), applied, Vec::new())?;
            log::info!("store: {n} records of calls that were in progress recovered");
        }
        self.slots()?.clear().map_err(StoreError::OpenCalls)?;
        if let Ok(mut v) = self.in_progress.lock() {
            *v = in_progress;
        }
        Ok(())
    }

    /// The answer-time records of the calls that were in progress when the store was last
    /// closed (or its process died), with what it takes to carry them on
    /// ([`Cdr::resume`]); each is in the `cdrs` tree already, under its id, and is
    /// completed by writing its final record under the same id. Returned once.
    pub fn take_calls_in_progress(&self) -> Vec<Record<Cdr>> {
        self.in_progress
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    fn slots(&self) -> Result<MutexGuard<'_, open::OpenSlots>, StoreError> {
        self.open_calls.lock().map_err(|_| {
            StoreError::OpenCalls(std::io::Error::other("poisoned by a panicked writer"))
        })
    }

    /// Before records leave the tree: every released slot of the calls-in-progress file
    /// zeroed, durably ([`open::OpenSlots::zero_all_durably`]), so that no crash can bring a
    /// removed record back from a slot that still names it.
    fn zero_released_slots(&self) -> Result<(), StoreError> {
        self.slots()?
            .zero_all_durably()
            .map_err(StoreError::OpenCalls)
    }

    /// The records held in open-call slots, decoded, ascending by id; with `pick`, only
    /// those it keeps of the ids (ascending).
    fn open_cdrs(
        &self,
        pick: impl FnOnce(Vec<u64>) -> Vec<u64>,
    ) -> Result<Vec<OpenCdr>, StoreError> {
        let sealed: Vec<(u64, Option<Vec<u8>>)> = {
            let slots = self.slots()?;
            let ids = pick(slots.ids());
            let mut v = Vec::with_capacity(ids.len());
            for id in ids {
                v.push((id, slots.read(id).map_err(StoreError::OpenCalls)?));
            }
            v
        };
        Ok(sealed
            .into_iter()
            .filter_map(|(id, s)| {
                let s = s?;
                Some((id, self.decode_cdr(id, &id.to_be_bytes(), &s)))
            })
            .collect())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of records in a table (a walk of its tree: not for a hot path). A call
    /// whose final record is in the tree while its slot is not yet released (the moment
    /// between the two in [`Self::write_cdrs`]) counts once.
    pub fn len(&self, table: Table) -> usize {
        let tree = self.t.table(table);
        let open = match table {
            Table::Cdrs => {
                // The ids first, then the lookups without the slots' lock (writers wait
                // for it): a slot released meanwhile has its final record in the tree.
                let ids = self.slots().map_or_else(|_| Vec::new(), |s| s.ids());
                ids.into_iter()
                    .filter(|id| !tree.contains_key(id.to_be_bytes()).unwrap_or(false))
                    .count()
            }
            _ => 0,
        };
        tree.len() + open
    }

    /// The subject token the store files `subject_id` under.
    pub fn subject_token(&self, subject_id: &str) -> SubjectToken {
        subject_token(&self.keys.lookup, subject_id)
    }

    fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.commit.commit(ops).map_err(StoreError::Commit)
    }

    /// [`Self::commit`] of ops that may add to or remove from the outbox, counted and
    /// mirrored.
    fn commit_counted(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let changes = self.outbox_changes(&ops);
        self.commit(ops)?;
        self.outbox_changed(&changes);
        Ok(())
    }

    /// What `ops` do to the outbox: the writes they add to it ((write sequence, record
    /// id): always a new sequence) and the sequences they remove (always ones it holds).
    fn outbox_changes(&self, ops: &[Op]) -> (Vec<(u64, u64)>, Vec<u64>) {
        let outbox = self.t.outbox.name();
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for op in ops {
            match op {
                Op::Insert { tree, key, value } if tree.name() == outbox => {
                    if let (Some(seq), Some(id)) = (id_of(key), id_of(value)) {
                        added.push((seq, id));
                    }
                }
                Op::Remove { tree, key } if tree.name() == outbox => {
                    removed.extend(id_of(key));
                }
                _ => {}
            }
        }
        (added, removed)
    }

    /// After the commit of [`Self::outbox_changes`]: the count and the mirror follow.
    fn outbox_changed(&self, (added, removed): &(Vec<(u64, u64)>, Vec<u64>)) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let (came, gone) = (added.len() as u64, removed.len() as u64);
        let _ = self
            .outbox_entries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                Some((e + came).saturating_sub(gone))
            });
        if let Ok(mut m) = self.outbox_mirror.lock() {
            m.added(added);
            m.removed(removed);
        }
    }

    // ---- sealing ----

    fn seal_value<T: Serialize>(
        &self,
        table: Table,
        key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        // Audit entries, sessions and transcripts hold PII: every buffer the JSON outgrows
        // is wiped, not freed as it is.
        let mut plain = callgate_vault::WipingBuf::with_capacity(256);
        serde_json::to_writer(&mut plain, value).map_err(StoreError::Encode)?;
        self.seal_bytes(table, key, plain.as_slice())
    }

    fn seal_bytes(&self, table: Table, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(self.keys.ring.load().seal(&aad(table.name(), key), plain)?)
    }

    /// Opens a sealed value: its data-key id and plaintext.
    fn open_bytes(
        &self,
        table: Table,
        key: &[u8],
        id: impl Fn() -> String,
        sealed: &[u8],
    ) -> Result<(u32, Zeroizing<Vec<u8>>), StoreError> {
        let name = table.name();
        let plain = self
            .keys
            .ring
            .load()
            .open(&aad(name, key), sealed)
            .map_err(|e| match e {
                RecordError::Corrupt => StoreError::Corrupt {
                    table: name,
                    id: id(),
                },
                RecordError::UnknownKey(key_id) => StoreError::UnknownKey {
                    table: name,
                    id: id(),
                    key_id,
                },
            })?;
        let key_id = callgate_vault::record_key_id(sealed).unwrap_or_default();
        Ok((key_id, plain))
    }

    fn open_value<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
        id: impl Fn() -> String,
        sealed: &[u8],
    ) -> Result<(u32, T), StoreError> {
        let name = table.name();
        let (key_id, plain) = self.open_bytes(table, key, &id, sealed)?;
        let value = serde_json::from_slice(&plain).map_err(|source| StoreError::Decode {
            table: name,
            id: id(),
            source,
        })?;
        Ok((key_id, value))
    }

    fn put_value<T: Serialize>(
        &self,
        table: Table,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), StoreError> {
        let intent = self.commit.intent();
        let sealed = self.seal_value(table, &key, value)?;
        commit_with(
            intent,
            vec![Op::Insert {
                tree: self.t.table(table).clone(),
                key,
                value: sealed,
            }],
        )
    }

    fn get_u64<T: DeserializeOwned>(&self, table: Table, id: u64) -> Result<Record<T>, StoreError> {
        let key = id.to_be_bytes();
        let sealed = self
            .t
            .table(table)
            .get(key)?
            .ok_or_else(|| StoreError::NotFound {
                table: table.name(),
                id: id.to_string(),
            })?;
        let (key_id, value) = self.open_value(table, &key, || id.to_string(), &sealed)?;
        Ok(Record { id, key_id, value })
    }

    fn iter_u64<T: DeserializeOwned>(
        &self,
        table: Table,
        from: u64,
    ) -> impl Iterator<Item = Result<Record<T>, StoreError>> + '_ {
        self.t
            .table(table)
            .range(from.to_be_bytes()..)
            .map(move |item| {
                let (k, v) = item?;
                let id = id_of(&k).ok_or_else(|| StoreError::Corrupt {
                    table: table.name(),
                    id: hex(&k),
                })?;
                let (key_id, value) = self.open_value(table, &k, || id.to_string(), &v)?;
                Ok(Record { id, key_id, value })
            })
    }

    // ---- subjects ----

    /// The subject key for `token` and its generation: read and unwrapped, or (with
    /// `create`) made and stored if there is none. The creation is a compare-and-swap (two
    /// writers never make two keys); it becomes durable with the commit of the record that
    /// needed it.
    fn subject_key(
        &self,
        token: &SubjectToken,
        create: bool,
    ) -> Result<Option<(u64, SubjectKey)>, StoreError> {
        let unwrap = |stored: &[u8]| {
            let corrupt = || StoreError::Corrupt {
                table: "subjects",
                id: format!("{token:?}"),
            };
            let (generation, rest) = stored.split_at_checked(8).ok_or_else(corrupt)?;
            let generation = id_of(generation).ok_or_else(corrupt)?;
            let wrapped = match key_slot(stored) {
                Some(slot) => Cow::Owned(
                    self.key_slots
                        .get(slot)
                        .map_err(StoreError::KeySlots)?
                        .ok_or_else(corrupt)?,
                ),
                None => Cow::Borrowed(rest),
            };
            let key = SubjectKey::unwrap(&self.keys.kek, token, &wrapped).map_err(|_| corrupt())?;
            Ok((generation, key))
        };
        let cache = &self.keys.subjects;
        if let Some(hit) = cache.get(token) {
            return Ok(Some(hit));
        }
        // Before the tree read: an erasure after this point makes the entry stale.
        let epoch = cache.epoch();
        let cached = |(generation, key): (u64, SubjectKey)| {
            cache.put(token, generation, key.clone(), epoch);
            Some((generation, key))
        };
        if let Some(w) = self.t.subjects.get(token.as_bytes())? {
            return unwrap(&w).map(cached);
        }
        if !create {
            return Ok(None);
        }
        let key = SubjectKey::generate()?;
        let generation = u64::from_be_bytes(callgate_vault::random_bytes()?);
        // Before the key reaches sled: a write of calls in progress that follows commits
        // first, unless a commit covering this key has completed.
        self.keys_created.fetch_add(1, Ordering::AcqRel);
        let slot = self
            .key_slots
            .put(&key.wrap(&self.keys.kek, token)?)
            .map_err(StoreError::KeySlots)?;
        let stored = [generation.to_be_bytes().as_slice(), &slot.to_be_bytes()].concat();
        let swapped =
            self.t
                .subjects
                .compare_and_swap(token.as_bytes(), None::<&[u8]>, Some(stored));
        if !matches!(swapped, Ok(Ok(()))) {
            // Nothing names the slot: its key goes.
            self.shred_key_slot(Some(slot));
        }
        match swapped? {
            Ok(()) => Ok(cached((generation, key))),
            Err(cas) => match cas.current {
                Some(w) => unwrap(&w).map(cached),
                // Expecting "absent" only fails if something is present.
                None => Err(StoreError::Meta("subject key compare-and-swap".into())),
            },
        }
    }

    /// Crypto-shreds a subject: deletes their subject key (durably) and their index
    /// entries. Their CDRs stay, with caller number and name [`Pii::Erased`]. Returns how
    /// many CDRs were indexed under the subject.
    pub fn erase_subject(&self, subject_id: &str) -> Result<usize, StoreError> {
        let token = self.subject_token(subject_id);
        let slot = self.key_slot_of(&token)?;
        let (index, ops) = self.erasure_ops(&token)?;
        let n = index.len();
        self.commit(ops)?;
        self.keys.subjects.erased(&token);
        self.shred_key_slot(slot);
        log::info!("store: erased subject {token:?} ({n} CDRs)");
        Ok(n)
    }

    /// The slot of the `subject-keys` file holding the subject's key, if any.
    pub(crate) fn key_slot_of(&self, token: &SubjectToken) -> Result<Option<u32>, StoreError> {
        Ok(self
            .t
            .subjects
            .get(token.as_bytes())?
            .and_then(|v| key_slot(&v)))
    }

    /// Overwrites a subject key's slot once nothing names it (after the commit that
    /// removed its entry). A failure leaves the slot to the next open, which zeroes every
    /// slot nothing names.
    pub(crate) fn shred_key_slot(&self, slot: Option<u32>) {
        if let Some(slot) = slot {
            if let Err(e) = self.key_slots.shred(slot) {
                log::error!("store: a subject key's slot could not be overwritten now (at the next open it is): {e}");
            }
        }
    }

    /// Ids of the CDRs of a subject (for access and export requests), ascending.
    /// Calls in progress count: their answer-time records are read to find the subject.
    pub fn cdr_ids_of_subject(&self, subject_id: &str) -> Result<Vec<u64>, StoreError> {
        let token = self.subject_token(subject_id);
        let mut ids = Vec::new();
        for item in self.t.by_subject.scan_prefix(token.as_bytes()) {
            let (k, _) = item?;
            if let Some(id) = id_of(&k[SubjectToken::LEN..]) {
                ids.push(id);
            }
        }
        for (id, rec) in self.open_cdrs(|ids| ids)? {
            if matches!(rec, Ok((Some(t), _)) if t == token) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// A CDR's sealed bytes: from the tree (and the log), else from the slots of calls in
    /// progress.
    fn sealed_cdr(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.t.cdrs.get(id.to_be_bytes())? {
            return Ok(Some(self.cdr_sealed(id, &v)?.into_owned()));
        }
        self.slots()?.read(id).map_err(StoreError::OpenCalls)
    }

    /// The CDRs of a subject, each read and verified; an index entry whose CDR is gone (or
    /// now belongs to someone else) is skipped.
    pub fn cdrs_of_subject(
        &self,
        subject_id: &str,
    ) -> Result<Vec<Result<Record<Cdr>, StoreError>>, StoreError> {
        let token = self.subject_token(subject_id);
        let mut out = Vec::new();
        for id in self.cdr_ids_of_subject(subject_id)? {
            let key = id.to_be_bytes();
            let Some(sealed) = self.sealed_cdr(id)? else {
                continue;
            };
            match self.decode_cdr(id, &key, &sealed) {
                Ok((stored_token, rec)) if stored_token == Some(token) => out.push(Ok(rec)),
                Ok(_) => {}
                Err(e) => out.push(Err(e)),
            }
        }
        Ok(out)
    }

    // ---- CDRs ----

    /// Appends a CDR under the next id; returns once it is durable.
    pub fn append_cdr(&self, cdr: &Cdr) -> Result<u64, StoreError> {
        let id = self.reserve_cdr_id();
        self.put_cdr(id, cdr)?;
        Ok(id)
    }

    /// Takes the next CDR id without writing: the proxy writes a call's record at answer
    /// time and again, under the same id, when the call ends. In a pair
    /// ([`Self::set_pair_node`]) node 0 takes only even ids and node 1 only odd ones, so
    /// the records each replicates to the other never collide, not even while both are
    /// active; writing a record (a replicated one included) moves the next id past it.
    pub fn reserve_cdr_id(&self) -> u64 {
        let parity = self.id_parity.load(Ordering::Relaxed);
        if parity == 0 {
            return self.next_cdr.fetch_add(1, Ordering::Relaxed);
        }
        let off = u64::from(parity - 1);
        let mut cur = self.next_cdr.load(Ordering::Relaxed);
        loop {
            let id = if cur % 2 == off {
                cur
            } else {
                cur.saturating_add(1)
            };
            match self.next_cdr.compare_exchange_weak(
                cur,
                id.saturating_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return id,
                Err(now) => cur = now,
            }
        }
    }

    /// Makes this store allocate the record ids of pair node `node` (0: even, 1: odd), or
    /// any id when `None` (an appliance alone).
    pub fn set_pair_node(&self, node: Option<u8>) {
        let p = match node {
            None => 0,
            Some(n) => 1 + (n & 1),
        };
        self.id_parity.store(p, Ordering::Relaxed);
    }

    /// The answer-time records of the calls in progress now (every record held in the
    /// store's file of calls in progress that can still be carried on): what a standby
    /// that takes over resumes. Unreadable slots are logged and skipped.
    pub fn calls_in_progress_now(&self) -> Vec<Record<Cdr>> {
        match self.open_cdrs(|ids| ids) {
            Ok(v) => v
                .into_iter()
                .filter_map(|(id, r)| match r {
                    Ok((_, rec)) => Some(rec),
                    Err(e) => {
                        log::warn!(
                            "store: the record of call in progress {id} is unreadable: {}",
                            error_chain(&e)
                        );
                        None
                    }
                })
                .filter(|rec| rec.value.end_at.is_none() && rec.value.resume.is_some())
                .collect(),
            Err(e) => {
                log::error!(
                    "store: cannot read the calls in progress: {}",
                    error_chain(&e)
                );
                Vec::new()
            }
        }
    }

    /// Whether this store holds record `id` as a call in progress: in an open-call slot,
    /// or as an answer-time record (no end) in the tree. What a pair's peer may complete.
    pub fn holds_call_in_progress(&self, id: u64) -> bool {
        match self.sealed_cdr(id) {
            Ok(Some(sealed)) => self
                .decode_cdr(id, &id.to_be_bytes(), &sealed)
                .is_ok_and(|(_, r)| r.value.end_at.is_none()),
            _ => false,
        }
    }

    /// The ids of the records held in open-call slots (calls in progress, this node's and
    /// replicated ones).
    pub fn open_cdr_ids(&self) -> Vec<u64> {
        self.slots().map(|s| s.ids()).unwrap_or_default()
    }

    /// The highest record id of pair node `node`'s parity in the tree, if any (keys only,
    /// nothing decrypted).
    pub fn last_cdr_id_of_node(&self, node: u8) -> Option<u64> {
        self.t
            .cdrs
            .iter()
            .keys()
            .rev()
            .filter_map(|k| k.ok().and_then(|k| id_of(&k)))
            .find(|id| id % 2 == u64::from(node & 1))
    }

    /// Final records of pair node `node`'s parity with ids above `after`, in id order, at
    /// most `limit` of them (only those keys are decrypted); corrupt ones are skipped.
    pub fn final_cdrs_of_node_after(
        &self,
        node: u8,
        after: Option<u64>,
        limit: usize,
    ) -> Vec<Record<Cdr>> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        self.t
            .cdrs
            .range(from.to_be_bytes()..)
            .filter_map(|item| {
                let (k, v) = item.ok()?;
                let id = id_of(&k)?;
                if id % 2 != u64::from(node & 1) {
                    return None;
                }
                let sealed = self.cdr_sealed(id, &v).ok()?;
                self.decode_cdr(id, &k, &sealed).ok().map(|(_, r)| r)
            })
            .filter(|r| r.value.end_at.is_some())
            .take(limit)
            .collect()
    }

    /// The ids of the last `n` CDRs (as [`Self::last_cdrs`] reads them), oldest first: keys
    /// only, nothing decrypted. With [`Self::get_cdr`] a reader can page through them.
    pub fn last_cdr_ids(&self, n: usize) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .t
            .cdrs
            .iter()
            .keys()
            .rev()
            .take(n)
            .filter_map(|k| k.ok().and_then(|k| id_of(&k)))
            .collect();
        ids.extend(self.open_cdr_ids());
        ids.sort_unstable();
        ids.dedup();
        let skip = ids.len().saturating_sub(n);
        ids.split_off(skip)
    }

    /// The last `n` CDRs (highest ids), oldest first, the answer-time records of calls in
    /// progress included.
    pub fn last_cdrs(&self, n: usize) -> Vec<Result<Record<Cdr>, StoreError>> {
        let mut out: Vec<(u64, Result<Record<Cdr>, StoreError>)> = self
            .t
            .cdrs
            .iter()
            .rev()
            .take(n)
            .map(|item| {
                let id = item.as_ref().ok().and_then(|(k, _)| id_of(k)).unwrap_or(0);
                (id, self.cdr_item(item))
            })
            .collect();
        let in_tree: std::collections::HashSet<u64> = out.iter().map(|(id, _)| *id).collect();
        // Only the highest `n` open ids are read.
        let pick = |ids: Vec<u64>| {
            let mut v: Vec<u64> = ids
                .into_iter()
                .rev()
                .filter(|id| !in_tree.contains(id))
                .take(n)
                .collect();
            v.reverse();
            v
        };
        match self.open_cdrs(pick) {
            Ok(open) => out.extend(open.into_iter().map(|(id, r)| (id, r.map(|(_, rec)| rec)))),
            Err(e) => out.push((u64::MAX, Err(e))),
        }
        out.sort_by_key(|(id, _)| *id);
        let skip = out.len().saturating_sub(n);
        out.into_iter().skip(skip).map(|(_, r)| r).collect()
    }

    /// Writes a CDR under a given id (e.g. replicated from the peer); returns once durable.
    pub fn put_cdr(&self, id: u64, cdr: &Cdr) -> Result<(), StoreError> {
        match self.write_cdrs(&[], &[(id, cdr)])?.pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes the answer-time records of calls in progress, durably, to their own file of
    /// slots (see the `open` module) instead of the tree, where each would cost memory for
    /// as long as the process runs. [`Self::put_cdrs`] of a call's final record (same id)
    /// frees its slot; at the next open, records left in slots move into the tree. They
    /// are read back like any other CDR. A record too long for a slot goes to the tree. A
    /// record that cannot be prepared or written to its slot is returned with its error and
    /// the others are still written; an error of the commit is about all of them.
    pub fn put_open_cdrs(
        &self,
        recs: &[(u64, &Cdr)],
    ) -> Result<Vec<(u64, StoreError)>, StoreError> {
        self.write_cdrs(recs, &[])
    }

    /// Writes several CDRs in one durable commit and returns once all are durable (one
    /// flush for the lot, where [`Self::put_cdr`] shares flushes only with writes that
    /// happen to run at the same time). A record that cannot be prepared (its subject key
    /// cannot be created, say) is returned with its error and the others are still
    /// written; an error of the commit itself is about all of them.
    pub fn put_cdrs(&self, recs: &[(u64, &Cdr)]) -> Result<Vec<(u64, StoreError)>, StoreError> {
        self.write_cdrs(&[], recs)
    }

    /// [`Self::put_open_cdrs`] of `open` and [`Self::put_cdrs`] of `ended` as one durable
    /// step: one `fdatasync` of the slots and one commit (no id may be in both).
    pub fn write_cdrs(
        &self,
        open: &[(u64, &Cdr)],
        ended: &[(u64, &Cdr)],
    ) -> Result<Vec<(u64, StoreError)>, StoreError> {
        let intent = self.commit.intent();
        let mut failed = Vec::new();
        let mut slotted = Vec::with_capacity(open.len());
        let mut recs = Vec::with_capacity(ended.len());
        for &(id, cdr) in open {
            match self.seal_cdr(id, cdr) {
                Ok((s, _)) if s.len() <= open::MAX_SEALED => slotted.push((id, s)),
                Ok((s, index)) => recs.push((id, s, index)),
                Err(e) => failed.push((id, e)),
            }
        }
        for &(id, cdr) in ended {
            match self.seal_cdr(id, cdr) {
                Ok((s, index)) => recs.push((id, s, index)),
                Err(e) => failed.push((id, e)),
            }
        }
        let applied = self.cdr_writes(recs)?;
        // First the commit: it also makes durable any subject key the records' PII was
        // sealed under (created in sled by the sealing), so a slot never reaches the disk
        // before its key (it would read back as erased). Without final records and with no
        // key created since the last commit began, there is nothing to commit: the slots'
        // own sync is the only durable step (answer-time records of known callers do not
        // wait for a flush of sled).
        // (Counted, not flagged: with a flag, a writer whose key another writer's commit was
        // still flushing could skip its own commit and acknowledge a record whose key a
        // crash then lost; the SIGKILL storm test found it.)
        let created = self.keys_created.load(Ordering::Acquire);
        let keys = created > self.keys_durable.load(Ordering::Acquire);
        if !applied.is_empty() || keys {
            self.commit_applied(intent, applied, Vec::new())?;
            self.keys_durable.fetch_max(created, Ordering::AcqRel);
        } else {
            drop(intent);
        }
        let ended = ended
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !failed.iter().any(|(f, _)| f == id));
        if let Err(e) = self.settle_slots(ended, &slotted) {
            failed.extend(slotted.iter().map(|(id, _)| {
                let e = std::io::Error::new(e.kind(), e.to_string());
                (*id, StoreError::OpenCalls(e))
            }));
        }
        Ok(failed)
    }

    /// Under one hold of the lock: frees the slots of `ended` (their final records are now
    /// durable in the tree; a failure only leaves a stale slot, which recovery skips),
    /// writes `recs` into slots (released ones first), zeroes the released slots no write
    /// took over since the previous batch ([`open::OpenSlots::zero_released`]), and makes
    /// the writes durable. An error is about `recs`.
    fn settle_slots(
        &self,
        ended: impl Iterator<Item = u64>,
        recs: &[(u64, Vec<u8>)],
    ) -> std::io::Result<()> {
        let mut slots = self
            .open_calls
            .lock()
            .map_err(|_| std::io::Error::other("the slots' lock is poisoned"))?;
        if slots.len() > 0 {
            for id in ended {
                if let Err(e) = slots.release(id) {
                    log::warn!("store: slot of call {id} not released: {e}");
                }
            }
        }
        // Each write takes a released slot over if there is one (most often one the
        // previous batch released), and that slot's header then needs no zeroing.
        let written = recs.iter().try_for_each(|(id, s)| slots.write(*id, s));
        if let Err(e) = slots.zero_released() {
            log::warn!("store: released slots not zeroed: {e}");
        }
        written?;
        if recs.is_empty() {
            return Ok(());
        }
        slots.sync()
    }

    /// Stores sealed CDRs (id, sealed record, subject index key): appends the records to
    /// the log (one `pwrite`), then puts into sled, in this order, every record's subject
    /// index entry, its outbox entry (under the next write sequence) and its pointer (each
    /// replaced pointer releases its record in the log). Nothing of this is durable before
    /// the commit that follows: the commit syncs the log before it flushes sled.
    ///
    /// The order is what makes a record and its index entries change together across a
    /// crash. sled 0.34 recovers a prefix of its log: recovery reads the log in LSN order
    /// and stops at the first torn or missing message (`pagecache/iterator.rs`), and a
    /// thread's inserts take their LSNs in program order. So a pointer that survives a
    /// crash has its index and outbox entries with it; what a crash can leave is the
    /// reverse, an entry without its pointer, of a write nobody was told is durable: the
    /// outbox's readers skip those (an id without a record is skipped as removed) and the
    /// next open removes such index entries ([`Self::repair_index`]). The pointer is the
    /// commit point; no sled batch or transaction is used, because in sled 0.34 either takes
    /// a process-wide write lock that every other tree operation must then take for
    /// reading, and rolls the log buffer (a `pwrite`) twice per batch.
    ///
    /// The outbox entries are in the tree before the pointers: until the commit returns
    /// their sequences are *in flight*, and the outbox's readers of the tree leave them out
    /// ([`Self::outbox_held`]), so the uplink never takes an entry whose record is not
    /// there yet.
    fn cdr_writes(
        &self,
        recs: Vec<(u64, Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<Applied<'_>, StoreError> {
        if recs.is_empty() {
            return Ok(Applied {
                outbox: Vec::new(),
                _in_flight: None,
            });
        }
        let sealed: Vec<(u64, &[u8])> = recs.iter().map(|(id, s, _)| (*id, s.as_slice())).collect();
        let pointers = self.log.append(&sealed).map_err(StoreError::Log)?;
        // Every write of a record puts it in the outbox under the next write sequence: the
        // uplink sends in write order (a record written again is sent again, its latest
        // write).
        let in_flight = InFlight::start(self, recs.len() as u64)?;
        let outbox: Vec<(u64, u64)> = recs
            .iter()
            .zip(in_flight.first..)
            .map(|((id, _, _), seq)| (seq, *id))
            .collect();
        for (_, _, index) in &recs {
            if let Some(k) = index {
                self.t.by_subject.insert(k.as_slice(), &[])?;
            }
        }
        for (seq, id) in &outbox {
            self.t.outbox.insert(seq.to_be_bytes(), &id.to_be_bytes())?;
        }
        for ((id, _, _), p) in recs.iter().zip(pointers) {
            if let Some(old) = self.t.cdrs.insert(id.to_be_bytes(), &p.encode())? {
                self.log.released(&old);
            }
        }
        Ok(Applied {
            outbox,
            _in_flight: Some(in_flight),
        })
    }

    /// Commits what [`Self::cdr_writes`] applied (with any other ops), then counts and
    /// mirrors its outbox entries.
    fn commit_applied(
        &self,
        intent: Intent<'_>,
        applied: Applied<'_>,
        ops: Vec<Op>,
    ) -> Result<(), StoreError> {
        let removed = self.outbox_changes(&ops).1;
        let r = commit_with(intent, ops);
        // Out of flight before the mirror takes them (see `outbox_page`'s fill).
        let Applied { outbox, _in_flight } = applied;
        drop(_in_flight);
        r?;
        self.outbox_changed(&(outbox, removed));
        Ok(())
    }

    /// Removes index entries whose record is gone: what a crash can leave of a write (see
    /// [`Self::cdr_writes`]) or of a removal ([`Self::remove_cdr`]). Run at open, after the
    /// records of calls in progress are in the tree. A walk of the index (keys only) with
    /// a lookup in `cdrs` per entry: nothing is decrypted. Returns how many it removed.
    fn repair_index(&self) -> Result<usize, StoreError> {
        let mut ops = Vec::new();
        for k in self.t.by_subject.iter().keys() {
            let k = k?;
            let live = match k.get(SubjectToken::LEN..).and_then(id_of) {
                Some(id) => self.t.cdrs.contains_key(id.to_be_bytes())?,
                None => false,
            };
            if !live {
                ops.push(Op::Remove {
                    tree: self.t.by_subject.clone(),
                    key: k.to_vec(),
                });
            }
        }
        let n = ops.len();
        if n > 0 {
            self.commit(ops)?;
            log::info!("store: {n} subject index entries without a record removed");
        }
        Ok(n)
    }

    /// The sealed record a `cdrs` tree value stands for: read from the log where the value
    /// is a pointer, the value itself where it is a record sealed inline (as stores before
    /// the log kept them). A pointer to the wrong bytes is [`StoreError::Corrupt`].
    fn cdr_sealed<'v>(&self, id: u64, value: &'v [u8]) -> Result<Cow<'v, [u8]>, StoreError> {
        let Some(p) = cdrlog::Pointer::decode(value) else {
            return Ok(Cow::Borrowed(value));
        };
        self.log.read(id, p).map(Cow::Owned).map_err(|e| match e {
            cdrlog::ReadError::Corrupt => StoreError::Corrupt {
                table: Table::Cdrs.name(),
                id: id.to_string(),
            },
            cdrlog::ReadError::Io(e) => StoreError::Log(e),
        })
    }

    /// One CDR sealed for the `cdrs` tree, and its subject index key (none if the caller
    /// was erased before the write).
    fn seal_cdr(&self, id: u64, cdr: &Cdr) -> Result<(Vec<u8>, Option<Vec<u8>>), StoreError> {
        self.next_cdr
            .fetch_max(id.saturating_add(1), Ordering::Relaxed);
        let key = id.to_be_bytes();
        // Sized for a whole record: serde_json's to_vec starts at 128 bytes and grows four
        // times on the way to a call record's size, a copy each time.
        let mut body = Vec::with_capacity(1024);
        serde_json::to_writer(&mut body, &cdr_body(cdr)).map_err(StoreError::Encode)?;
        let (plain, index) = match (&cdr.caller, cdr_pii(cdr)) {
            (Pii::Clear(number), Some(pii)) => {
                let token = self.subject_token(number);
                let (generation, sk) = self
                    .subject_key(&token, true)?
                    .ok_or_else(|| StoreError::Meta("subject key not created".into()))?;
                let pii = pii_json(&pii)?;
                let sealed = sk.seal(&token, &pii_aad(&key, generation), &pii)?;
                (
                    encode_envelope(Some((&token, generation, &sealed)), &body),
                    Some([token.as_bytes().as_slice(), &key].concat()),
                )
            }
            // The caller was erased before this write: no subject, no index entry.
            _ => (encode_envelope(None, &body), None),
        };
        Ok((self.seal_bytes(Table::Cdrs, &key, &plain)?, index))
    }

    fn decode_cdr(
        &self,
        id: u64,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<(Option<SubjectToken>, Record<Cdr>), StoreError> {
        let corrupt = || StoreError::Corrupt {
            table: Table::Cdrs.name(),
            id: id.to_string(),
        };
        let (key_id, plain) = self.open_bytes(Table::Cdrs, key, || id.to_string(), sealed)?;
        let env = decode_envelope(&plain).ok_or_else(corrupt)?;
        let body: CdrBody =
            serde_json::from_slice(env.body).map_err(|source| StoreError::Decode {
                table: Table::Cdrs.name(),
                id: id.to_string(),
                source,
            })?;
        let (token, pii) = self.open_cdr_pii(id, key, &env)?;
        let (caller, caller_name) = match pii {
            None => (Pii::Erased, body.has_name.then_some(Pii::Erased)),
            Some(pii) => {
                let mut pii: CdrPii = serde_json::from_slice(&pii).map_err(|_| corrupt())?;
                (
                    Pii::Clear(std::mem::take(&mut pii.caller)),
                    pii.caller_name.take().map(Pii::Clear),
                )
            }
        };
        let cdr = Cdr {
            call_id: body.call_id,
            tracking_number: body.tracking_number,
            campaign: body.campaign,
            caller,
            caller_name,
            destination: body.destination,
            invite_at: body.invite_at,
            ring_at: body.ring_at,
            answer_at: body.answer_at,
            end_at: body.end_at,
            duration_ms: body.duration_ms,
            disposition: body.disposition,
            final_code: body.final_code,
            appliance: body.appliance,
            ended_by: body.ended_by,
            resume: body.resume,
        };
        Ok((
            token,
            Record {
                id,
                key_id,
                value: cdr,
            },
        ))
    }

    /// Reads one CDR. A record that fails authentication is [`StoreError::Corrupt`].
    pub fn get_cdr(&self, id: u64) -> Result<Record<Cdr>, StoreError> {
        let key = id.to_be_bytes();
        let sealed = self.sealed_cdr(id)?.ok_or_else(|| StoreError::NotFound {
            table: Table::Cdrs.name(),
            id: id.to_string(),
        })?;
        Ok(self.decode_cdr(id, &key, &sealed)?.1)
    }

    /// The CDRs `ids`, read as [`Self::get_cdr`] reads each, in one walk of the tree when
    /// the ids are close together (a batch of the uplink): by id.
    pub fn get_cdrs(&self, ids: &[u64]) -> BTreeMap<u64, Result<Record<Cdr>, StoreError>> {
        self.read_cdrs(
            ids,
            |id, k, v| self.decode_cdr(id, k, v).map(|(_, r)| r),
            |id| self.get_cdr(id),
        )
    }

    /// The CDRs `ids` of the `cdrs` tree as JSON for the cloud ([`cdr_json`]'s shape), by
    /// id, joined from their stored parts without decoding them: a fraction of the cost of
    /// [`Self::get_cdrs`] and a serialization. Records of calls in progress that are only
    /// in their slots are not read ([`StoreError::NotFound`]).
    pub fn get_cdrs_json(&self, ids: &[u64]) -> BTreeMap<u64, Result<Vec<u8>, StoreError>> {
        let one = |id: u64| {
            let key = id.to_be_bytes();
            match self.t.cdrs.get(key)? {
                Some(v) => self.sealed_cdr_json(id, &key, &self.cdr_sealed(id, &v)?),
                None => Err(StoreError::NotFound {
                    table: Table::Cdrs.name(),
                    id: id.to_string(),
                }),
            }
        };
        self.read_cdrs(ids, |id, k, v| self.sealed_cdr_json(id, k, v), one)
    }

    /// `ids` read with `each` (id, key, sealed record) in one walk of the tree when they
    /// are close together, the others (and any the walk did not find) with `one`.
    fn read_cdrs<T>(
        &self,
        ids: &[u64],
        each: impl Fn(u64, &[u8], &[u8]) -> Result<T, StoreError>,
        one: impl Fn(u64) -> Result<T, StoreError>,
    ) -> BTreeMap<u64, Result<T, StoreError>> {
        let mut out = BTreeMap::new();
        let (Some(&lo), Some(&hi)) = (ids.iter().min(), ids.iter().max()) else {
            return out;
        };
        let wanted: BTreeSet<u64> = ids.iter().copied().collect();
        if hi - lo < 2 * wanted.len() as u64 {
            for item in self.t.cdrs.range(lo.to_be_bytes()..=hi.to_be_bytes()) {
                let Ok((k, v)) = item else { break };
                let Some(id) = id_of(&k) else { continue };
                if wanted.contains(&id) {
                    let r = self.cdr_sealed(id, &v).and_then(|s| each(id, &k, &s));
                    out.insert(id, r);
                }
            }
        }
        for id in wanted {
            out.entry(id).or_insert_with(|| one(id));
        }
        out
    }

    /// One sealed CDR as [`Self::get_cdrs_json`] gives it: opened, its personal part
    /// opened under the subject's key (or `null` if that key is gone), the two joined.
    fn sealed_cdr_json(&self, id: u64, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let corrupt = || StoreError::Corrupt {
            table: Table::Cdrs.name(),
            id: id.to_string(),
        };
        let (_, plain) = self.open_bytes(Table::Cdrs, key, || id.to_string(), sealed)?;
        let env = decode_envelope(&plain).ok_or_else(corrupt)?;
        let (_, pii) = self.open_cdr_pii(id, key, &env)?;
        join_cdr_json(pii.as_deref().map(Vec::as_slice), env.body).ok_or_else(corrupt)
    }

    /// A stored CDR's personal part (its JSON), opened under the subject's key, with the
    /// subject token it is filed under; `None` when the caller was erased before the write
    /// (no token either) or since (the key is gone, or the subject has a later one).
    fn open_cdr_pii(
        &self,
        id: u64,
        key: &[u8],
        env: &CdrEnvelope<'_>,
    ) -> Result<(Option<SubjectToken>, Option<OpenedPii>), StoreError> {
        let Some((token, generation, sealed_pii)) = env.subject else {
            return Ok((None, None));
        };
        let Some((_, sk)) = self
            .subject_key(&token, false)?
            .filter(|(g, _)| *g == generation)
        else {
            return Ok((Some(token), None));
        };
        let pii = sk
            .open(&token, &pii_aad(key, generation), sealed_pii)
            .map_err(|_| StoreError::Corrupt {
                table: Table::Cdrs.name(),
                id: id.to_string(),
            })?;
        Ok((Some(token), Some(pii)))
    }

    /// Every CDR in the tree in id order, one `Result` each: a corrupt record does not end
    /// the walk. Answer-time records of calls in progress are not walked (the other reads
    /// see them).
    pub fn iter_cdrs(&self) -> impl Iterator<Item = Result<Record<Cdr>, StoreError>> + '_ {
        self.iter_cdrs_from(0)
    }

    /// CDRs with id ≥ `from`, in id order.
    pub fn iter_cdrs_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<Record<Cdr>, StoreError>> + '_ {
        self.t
            .cdrs
            .range(from.to_be_bytes()..)
            .map(move |item| self.cdr_item(item))
    }

    /// One CDR as sled's iterators yield it.
    fn cdr_item(
        &self,
        item: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Result<Record<Cdr>, StoreError> {
        let (k, v) = item?;
        let id = id_of(&k).ok_or_else(|| StoreError::Corrupt {
            table: Table::Cdrs.name(),
            id: hex(&k),
        })?;
        Ok(self.decode_cdr(id, &k, &self.cdr_sealed(id, &v)?)?.1)
    }

    /// Deletes a CDR and its index entry (retention); durable on return. `Ok(false)` if
    /// there was none. A corrupt CDR is deleted too (its index entry, if any, then stays
    /// until the subject is erased).
    pub fn remove_cdr(&self, id: u64) -> Result<bool, StoreError> {
        let key = id.to_be_bytes();
        // No released slot may still name a record that leaves the tree.
        self.zero_released_slots()?;
        // Removed from the tree here, before the commit that makes it durable: the old
        // value says which record in the log is released.
        let Some(old) = self.t.cdrs.remove(key)? else {
            let mut slots = self.slots()?;
            if slots.read(id).map_err(StoreError::OpenCalls)?.is_none() {
                return Ok(false);
            }
            slots.release(id).map_err(StoreError::OpenCalls)?;
            slots.zero_all_durably().map_err(StoreError::OpenCalls)?;
            return Ok(true);
        };
        let mut ops = Vec::new();
        let token = self
            .cdr_sealed(id, &old)
            .and_then(|sealed| self.decode_cdr(id, &key, &sealed));
        if let Ok((Some(token), _)) = token {
            ops.push(Op::Remove {
                tree: self.t.by_subject.clone(),
                key: [token.as_bytes().as_slice(), &key].concat(),
            });
        }
        // After the read: its segment may go once this commit is durable.
        self.log.released(&old);
        self.commit(ops)?;
        Ok(true)
    }

    // ---- audit ----

    /// Appends an audit entry under the next id; returns once it is durable.
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let id = self.next_audit.fetch_add(1, Ordering::Relaxed);
        self.put_value(Table::Audit, id.to_be_bytes().to_vec(), entry)?;
        Ok(id)
    }

    pub fn get_audit(&self, id: u64) -> Result<Record<AuditEntry>, StoreError> {
        self.get_u64(Table::Audit, id)
    }

    pub fn iter_audit(&self) -> impl Iterator<Item = Result<Record<AuditEntry>, StoreError>> + '_ {
        self.iter_u64(Table::Audit, 0)
    }

    /// The last `n` audit entries, oldest first (ids are consecutive: only those are read).
    pub fn last_audit(&self, n: usize) -> Vec<Result<Record<AuditEntry>, StoreError>> {
        let last = self
            .t
            .table(Table::Audit)
            .last()
            .ok()
            .flatten()
            .and_then(|(k, _)| id_of(&k));
        let Some(last) = last else {
            return Vec::new();
        };
        let from = last.saturating_sub(u64::try_from(n).unwrap_or(u64::MAX).saturating_sub(1));
        self.iter_u64(Table::Audit, from).take(n).collect()
    }

    // ---- config history ----

    /// Stores a config revision under its number; returns once it is durable.
    pub fn put_config_revision(&self, rev: &ConfigRevision) -> Result<(), StoreError> {
        self.put_value(
            Table::ConfigHistory,
            rev.revision.to_be_bytes().to_vec(),
            rev,
        )
    }

    pub fn get_config_revision(&self, revision: u64) -> Result<Record<ConfigRevision>, StoreError> {
        self.get_u64(Table::ConfigHistory, revision)
    }

    pub fn iter_config_history(
        &self,
    ) -> impl Iterator<Item = Result<Record<ConfigRevision>, StoreError>> + '_ {
        self.iter_u64(Table::ConfigHistory, 0)
    }

    // ---- sessions ----

    /// Stores (creates or updates) a session; returns once it is durable.
    pub fn put_session(&self, session: &Session) -> Result<(), StoreError> {
        self.put_value(Table::Sessions, session.id.as_bytes().to_vec(), session)
    }

    pub fn get_session(&self, id: &str) -> Result<Record<Session, String>, StoreError> {
        let sealed = self
            .t
            .sessions
            .get(id.as_bytes())?
            .ok_or_else(|| StoreError::NotFound {
                table: Table::Sessions.name(),
                id: id.to_string(),
            })?;
        let (key_id, value) =
            self.open_value(Table::Sessions, id.as_bytes(), || id.to_string(), &sealed)?;
        Ok(Record {
            id: id.to_string(),
            key_id,
            value,
        })
    }

    /// Deletes a session; `Ok(false)` if there was none.
    pub fn remove_session(&self, id: &str) -> Result<bool, StoreError> {
        if !self.t.sessions.contains_key(id.as_bytes())? {
            return Ok(false);
        }
        self.commit(vec![Op::Remove {
            tree: self.t.sessions.clone(),
            key: id.as_bytes().to_vec(),
        }])?;
        Ok(true)
    }

    pub fn iter_sessions(
        &self,
    ) -> impl Iterator<Item = Result<Record<Session, String>, StoreError>> + '_ {
        self.t.sessions.iter().map(move |item| {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k).into_owned();
            let (key_id, value) = self.open_value(Table::Sessions, &k, || id.clone(), &v)?;
            Ok(Record { id, key_id, value })
        })
    }

    // ---- the uplink's outbox ----

    /// Up to `n` writes awaiting the uplink after write sequence `after`, in write order:
    /// (write sequence, record id); acknowledged ones are left out. Hand the sequences to
    /// [`Self::outbox_sent`] once the cloud has them.
    pub fn outbox_page(&self, after: Option<u64>, n: usize) -> Result<Vec<(u64, u64)>, StoreError> {
        let from = match after {
            None => 0,
            Some(u64::MAX) => return Ok(Vec::new()),
            Some(a) => a + 1,
        };
        let acked = self.acked()?.clone();
        let backlog = self.waiting(acked.count());
        if let Ok(mut m) = self.outbox_mirror.lock() {
            if !m.is_complete() && backlog <= mirror::REFILL_AT {
                // One walk of the tree (the uplink is reading, and the backlog fits),
                // without the writes in flight: taken under the mirror's lock, so each of
                // them adds its entries to the mirror after this fill.
                let held = self.outbox_held()?;
                let mut waiting = Vec::with_capacity(backlog);
                for item in self.t.outbox.iter() {
                    let (k, v) = item?;
                    if let (Some(seq), Some(id)) = (id_of(&k), id_of(&v)) {
                        if !acked.contains(seq) && !held.holds(seq) {
                            waiting.push((seq, id));
                        }
                    }
                }
                m.fill(waiting);
            }
            if let Some(page) = m.page(from, n, &acked) {
                return Ok(page);
            }
        }
        let mut out = Vec::with_capacity(n.min(4096));
        let held = self.outbox_held()?;
        for item in self.t.outbox.range(from.to_be_bytes()..) {
            let (k, v) = item?;
            let (Some(seq), Some(id)) = (id_of(&k), id_of(&v)) else {
                continue;
            };
            if acked.contains(seq) || held.holds(seq) {
                continue;
            }
            out.push((seq, id));
            if out.len() >= n {
                break;
            }
        }
        Ok(out)
    }

    /// The write sequences a reader of the outbox's tree must leave out now: those in
    /// flight (an entry may be in the tree before its record) and those not taken yet
    /// (their writes begin after this). The uplink comes back for them: it reads the
    /// outbox again from its start once it reaches the end.
    fn outbox_held(&self) -> Result<Held, StoreError> {
        let f = self
            .outbox_in_flight
            .lock()
            .map_err(|_| StoreError::Meta("the outbox's lock is poisoned".into()))?;
        Ok(Held {
            in_flight: f.iter().map(|(a, n)| (*a, *n)).collect(),
            next: self.outbox_seq.load(Ordering::Relaxed),
        })
    }

    #[allow(clippy::disallowed_types)]
    fn acked(&self) -> Result<std::sync::MutexGuard<'_, acked::Ranges>, StoreError> {
        self.outbox_acked
            .lock()
            .map_err(|_| StoreError::Meta("the outbox's lock is poisoned".into()))
    }

    /// How many writes await the uplink (the outbox's entries less those acknowledged).
    pub fn outbox_len(&self) -> usize {
        self.waiting(self.acked().map_or(0, |a| a.count()))
    }

    /// The outbox's entries less `acked` of them.
    fn waiting(&self, acked: u64) -> usize {
        let n = self
            .outbox_entries
            .load(Ordering::Acquire)
            .saturating_sub(acked);
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// The cloud acknowledged these writes (by sequence): they count as sent, durably (one
    /// small value, not a removal per record); [`Self::outbox_compact`] removes them later.
    pub fn outbox_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut acked = self.acked()?;
        for s in seqs {
            acked.insert(*s);
        }
        self.commit(vec![Op::Insert {
            tree: self.t.meta.clone(),
            key: META_OUTBOX_ACKED.to_vec(),
            value: acked.encode(),
        }])?;
        // Still under the acknowledgements' lock: a read sees both or neither.
        if let Ok(mut m) = self.outbox_mirror.lock() {
            m.removed(seqs);
        }
        Ok(())
    }

    /// How many acknowledged writes wait to be removed.
    pub fn outbox_acked(&self) -> u64 {
        self.acked().map_or(0, |a| a.count())
    }

    /// Removes up to `max` acknowledged writes from the outbox (durably, with the ranges
    /// that no longer name them); how many.
    pub fn outbox_compact(&self, max: usize) -> Result<usize, StoreError> {
        let mut acked = self.acked()?;
        let gone = acked.first(max);
        if gone.is_empty() {
            return Ok(0);
        }
        let mut left = acked.clone();
        for s in &gone {
            left.remove(*s);
        }
        let mut ops: Vec<Op> = gone
            .iter()
            .map(|seq| Op::Remove {
                tree: self.t.outbox.clone(),
                key: seq.to_be_bytes().to_vec(),
            })
            .collect();
        ops.push(Op::Insert {
            tree: self.t.meta.clone(),
            key: META_OUTBOX_ACKED.to_vec(),
            value: left.encode(),
        });
        self.commit_counted(ops)?;
        *acked = left;
        Ok(gone.len())
    }

    // ---- console command history ----

    /// The console command history of `user`, oldest first (empty if none).
    pub fn history(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let Some(sealed) = self.t.history.get(user.as_bytes())? else {
            return Ok(Vec::new());
        };
        let (_, lines) =
            self.open_value(Table::History, user.as_bytes(), || user.to_owned(), &sealed)?;
        Ok(lines)
    }

    /// Adds `line` to `user`'s history, keeping the newest `keep` lines; returns once it
    /// is durable. A history that no longer opens (corrupt) starts again.
    pub fn remember(&self, user: &str, line: &str, keep: usize) -> Result<(), StoreError> {
        let mut lines = match self.history(user) {
            Ok(l) => l,
            Err(StoreError::Sled(e)) => return Err(StoreError::Sled(e)),
            Err(_) => Vec::new(),
        };
        lines.push(line.to_owned());
        let extra = lines.len().saturating_sub(keep);
        lines.drain(..extra);
        self.put_value(Table::History, user.as_bytes().to_vec(), &lines)
    }

    /// After a subject's erasure: every console history line and every audit entry's
    /// detail in which `holds` finds the subject (a number typed on a line the console did
    /// not recognise, or sent raw) is rewritten through `redact`, so that no typed copy of
    /// the number stays readable on the appliance. The entries stay (the trail keeps its
    /// ids and its other fields); only the caller's number goes. How many history lines
    /// and audit entries were rewritten.
    pub fn scrub_typed(
        &self,
        holds: &dyn Fn(&str) -> bool,
        redact: &dyn Fn(&str) -> String,
    ) -> Result<(usize, usize), StoreError> {
        let mut lines = 0;
        let users: Vec<String> = self
            .t
            .history
            .iter()
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect();
        for user in users {
            let Ok(history) = self.history(&user) else {
                continue;
            };
            let n = history.iter().filter(|l| holds(l)).count();
            if n > 0 {
                let kept: Vec<String> = history
                    .iter()
                    .map(|l| if holds(l) { redact(l) } else { l.clone() })
                    .collect();
                self.put_value(Table::History, user.as_bytes().to_vec(), &kept)?;
                lines += n;
            }
        }
        let mut entries = 0;
        let hits: Vec<Record<AuditEntry>> = self
            .iter_audit()
            .filter_map(Result::ok)
            .filter(|r| holds(&r.value.detail))
            .collect();
        for mut r in hits {
            r.value.detail = redact(&r.value.detail);
            self.put_value(Table::Audit, r.id.to_be_bytes().to_vec(), &r.value)?;
            entries += 1;
        }
        Ok((lines, entries))
    }

    /// Forgets `user`'s history; `Ok(false)` if there was none.
    pub fn forget_history(&self, user: &str) -> Result<bool, StoreError> {
        if !self.t.history.contains_key(user.as_bytes())? {
            return Ok(false);
        }
        self.commit(vec![Op::Remove {
            tree: self.t.history.clone(),
            key: user.as_bytes().to_vec(),
        }])?;
        Ok(true)
    }

    // ---- keys ----

    /// Makes a new data key current (durably); returns its id. Records sealed under the old
    /// keys stay readable.
    pub fn rotate_data_key(&self) -> Result<u32, StoreError> {
        let keys = Arc::clone(&self.keys);
        let keys_tree = self.t.keys.clone();
        let meta = self.t.meta.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        // Runs on the writer thread, so rotations are serialized with each other and with
        // every write; the new ring is published before this group's flush, and records
        // sealed under it can only be in later groups, whose flush follows.
        let rotate = move || -> Result<(), String> {
            let mut ring = Keyring::clone(&keys.ring.load());
            let id = ring.rotate().map_err(|e| e.to_string())?;
            let dek = ring.get(id).ok_or("the new data key is missing")?;
            let wrapped = wrap_dek(&keys.kek, id, dek).map_err(|e| e.to_string())?;
            keys_tree
                .insert(id.to_be_bytes(), wrapped)
                .and_then(|_| meta.insert(META_CURRENT_DEK, &id.to_be_bytes()))
                .map_err(|e| e.to_string())?;
            keys.ring.store(Arc::new(ring));
            let _ = tx.send(id);
            Ok(())
        };
        self.commit(vec![Op::Run(Box::new(rotate))])?;
        let id = rx
            .recv()
            .map_err(|_| StoreError::Meta("rotation reported no key".into()))?;
        log::info!("store: data key {id} is now current");
        Ok(id)
    }

    /// The id of the data key new records are sealed under.
    pub fn current_data_key(&self) -> u32 {
        self.keys.ring.load().current_id()
    }

    /// Ids of every data key held.
    pub fn data_key_ids(&self) -> Vec<u32> {
        self.keys.ring.load().ids().collect()
    }
}

/// Unwraps every data key; `None` for a store without any.
fn load_keyring(t: &Trees, kek: &Kek) -> Result<Option<Keyring>, StoreError> {
    let mut keys = Vec::new();
    let mut failed = Vec::new();
    for item in t.keys.iter() {
        let (k, v) = item?;
        let id = be_u32(&k).ok_or_else(|| StoreError::Meta("malformed data-key id".into()))?;
        match unwrap_dek(kek, id, &v) {
            Ok(dek) => keys.push((id, dek)),
            Err(_) => failed.push(id),
        }
    }
    if keys.is_empty() && failed.is_empty() {
        return Ok(None);
    }
    if keys.is_empty() {
        return Err(StoreError::WrongKey);
    }
    if !failed.is_empty() {
        return Err(StoreError::KeyringCorrupt { ids: failed });
    }
    let current = t
        .meta
        .get(META_CURRENT_DEK)?
        .and_then(|v| be_u32(&v))
        .ok_or_else(|| StoreError::Meta("no current data key".into()))?;
    Keyring::from_keys(keys, current)
        .map(Some)
        .ok_or_else(|| StoreError::Meta(format!("the current data key {current} is missing")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    /// The personal part's buffer never grows, even for text that escapes six-fold (so
    /// no copy of a number or name is left behind unwiped), and it reads back.
    #[test]
    fn the_personal_json_is_written_without_growing_its_buffer() {
        for (caller, name) in [
            ("+12025550101", None),
            ("+12025550101", Some("Ada Lovelace".to_string())),
            ("\u{1}\u{2}\u{1f}", Some("\u{7}".repeat(300))),
            ("\"\\", Some("\"".repeat(50))),
        ] {
            let pii = CdrPii {
                caller: caller.to_string(),
                caller_name: name.clone(),
            };
            let want = 64 + 6 * (caller.len() + name.as_ref().map_or(0, String::len));
            let json = pii_json(&pii).unwrap();
            assert_eq!(json.capacity(), want, "{caller:?}");
            let back: CdrPii = serde_json::from_slice(&json).unwrap();
            assert_eq!(
                (back.caller.as_str(), back.caller_name.clone()),
                (caller, name)
            );
        }
    }

    fn cdr(n: u64, end: Option<u64>) -> Cdr {
        Cdr {
            call_id: format!("call-{n}"),
            tracking_number: "+18005550100".into(),
            campaign: "spring".into(),
            caller: Pii::new("+12025550101"),
            caller_name: None,
            destination: "sip:agent@198.51.100.20".into(),
            invite_at: 1_700_000_000_000 + n,
            ring_at: None,
            answer_at: Some(1_700_000_000_100 + n),
            end_at: end,
            duration_ms: 0,
            disposition: Disposition::Answered,
            final_code: 200,
            appliance: "a".into(),
            ended_by: None,
            resume: None,
        }
    }

    /// The ids whose pointers lead into segment `n`, ascending.
    fn ids_in_segment(s: &Store, n: u32) -> Vec<u64> {
        s.t.cdrs
            .iter()
            .map(|r| r.unwrap())
            .filter(|(_, v)| cdrlog::Pointer::decode(v).unwrap().segment == n)
            .map(|(k, _)| id_of(&k).unwrap())
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir.join(cdrlog::DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn segments_whose_records_are_all_removed_or_replaced_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let kek = callgate_vault::Kek::generate().unwrap();
        let open = || Store::open_with(dir.path(), kek.clone(), 4096).unwrap();
        let s = open();
        for batch in 0..8u64 {
            let recs: Vec<(u64, Cdr)> = (0..8)
                .map(|i| (batch * 8 + i + 1, cdr(batch * 8 + i, Some(1))))
                .collect();
            let refs: Vec<(u64, &Cdr)> = recs.iter().map(|(id, c)| (*id, c)).collect();
            assert!(s.put_cdrs(&refs).unwrap().is_empty());
        }
        let segs = s.log.segment_numbers();
        assert!(segs.len() >= 5, "{segs:?}");
        assert_eq!(segment_files(dir.path()).len(), segs.len());
        // Segment 1: every record removed. Segment 2: all but one.
        for id in ids_in_segment(&s, 1) {
            assert!(s.remove_cdr(id).unwrap());
        }
        let two = ids_in_segment(&s, 2);
        for id in &two[1..] {
            assert!(s.remove_cdr(*id).unwrap());
        }
        assert_eq!(s.log.segment_numbers()[..2], [2, 3]);
        assert!(!segment_files(dir.path()).contains(&"0000000001.seg".to_string()));
        // Segment 3: every record written again (the new versions go to the tail).
        let three = ids_in_segment(&s, 3);
        let again: Vec<(u64, Cdr)> = three.iter().map(|id| (*id, cdr(*id, Some(2)))).collect();
        let refs: Vec<(u64, &Cdr)> = again.iter().map(|(id, c)| (*id, c)).collect();
        assert!(s.put_cdrs(&refs).unwrap().is_empty());
        assert!(!s.log.segment_numbers().contains(&3));
        assert_eq!(s.get_cdr(three[0]).unwrap().value.end_at, Some(2));
        drop(s);

        // The counts are rebuilt at open: segment 2's last record takes it along.
        let s = open();
        assert_eq!(
            s.get_cdr(two[0]).unwrap().value.call_id,
            cdr(two[0] - 1, None).call_id
        );
        assert!(s.remove_cdr(two[0]).unwrap());
        assert!(!s.log.segment_numbers().contains(&2));
        // The segment being written stays, even empty.
        let last = *s.log.segment_numbers().last().unwrap();
        for id in ids_in_segment(&s, last) {
            assert!(s.remove_cdr(id).unwrap());
        }
        assert!(s.log.segment_numbers().contains(&last));
        let left: Vec<u64> =
            s.t.cdrs
                .iter()
                .keys()
                .map(|k| id_of(&k.unwrap()).unwrap())
                .collect();
        for id in &left {
            s.get_cdr(*id).unwrap();
        }
        assert_eq!(
            segment_files(dir.path()).len(),
            s.log.segment_numbers().len()
        );
        drop(s);
        let s = open();
        assert_eq!(s.iter_cdrs().filter(|r| r.is_ok()).count(), left.len());
        assert_eq!(
            segment_files(dir.path()).len(),
            s.log.segment_numbers().len()
        );
    }

    /// A write's outbox entry is in the tree before its record: until its commit returns,
    /// the outbox's readers do not take it; writes after it that completed are taken.
    #[test]
    fn the_outbox_holds_back_writes_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), callgate_vault::Kek::generate().unwrap()).unwrap();
        let first = s.append_cdr(&cdr(1, Some(1))).unwrap();
        let (sealed, index) = s.seal_cdr(9, &cdr(9, Some(1))).unwrap();
        let applied = s.cdr_writes(vec![(9, sealed, index)]).unwrap();
        // Applied, in flight: its entry and its record are in the tree.
        assert_eq!(s.t.outbox.len(), 2);
        let later = std::thread::scope(|sc| {
            // Another writer's commit completes meanwhile.
            sc.spawn(|| s.append_cdr(&cdr(2, Some(1))).unwrap())
                .join()
                .unwrap()
        });
        // From the tree (the mirror fills from it) and from the mirror.
        for _ in 0..2 {
            let page = s.outbox_page(None, 10).unwrap();
            assert_eq!(
                page.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
                [first, later]
            );
        }
        s.commit_applied(s.commit.intent(), applied, Vec::new())
            .unwrap();
        let page = s.outbox_page(None, 10).unwrap();
        assert_eq!(
            page.iter().map(|(_, id)| *id).collect::<Vec<_>>(),
            [first, 9, later]
        );
    }

    /// The moment inside `write_cdrs` between the final record's commit and the slot's
    /// release, made to last: the call is in both places and counts once.
    #[test]
    fn a_call_between_its_final_record_and_its_slots_release_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), callgate_vault::Kek::generate().unwrap()).unwrap();
        s.put_open_cdrs(&[(1, &cdr(1, None)), (2, &cdr(2, None))])
            .unwrap();
        assert_eq!(s.len(Table::Cdrs), 2);
        // Call 1's final record reaches the tree; its slot is still held.
        let (sealed, index) = s.seal_cdr(1, &cdr(1, Some(1_700_000_060_000))).unwrap();
        let applied = s.cdr_writes(vec![(1, sealed, index)]).unwrap();
        s.commit_applied(s.commit.intent(), applied, Vec::new())
            .unwrap();
        assert_eq!(s.slots().unwrap().len(), 2, "the slot is still held");
        assert_eq!(s.len(Table::Cdrs), 2, "call 1 once, call 2 once");
        // Released: still two.
        s.slots().unwrap().release(1).unwrap();
        assert_eq!(s.len(Table::Cdrs), 2);
    }
}
