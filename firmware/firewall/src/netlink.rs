//! Media pinholes and blocklist entries, written straight into the nftables
//! sets of table `inet <table>` over a `NETLINK_NETFILTER` socket.
//!
//! # What
//!
//! [`SetWriter`] adds and removes single elements of six sets that the
//! ruleset (rendered and loaded through `nft` elsewhere) declares:
//!
//! | set             | type                                                                           | used by (chain `forward`)                                                |
//! |-----------------|--------------------------------------------------------------------------------|--------------------------------------------------------------------------|
//! | `pinhole4_host` | `ipv4_addr . ipv4_addr . inet_proto . inet_service`, `flags timeout`           | `ip saddr . ip daddr . meta l4proto . th dport @pinhole4_host accept`    |
//! | `pinhole4`      | `ipv4_addr . ipv4_addr . inet_proto . inet_service`, `flags interval, timeout` | `ip saddr . ip daddr . meta l4proto . th dport @pinhole4 accept`         |
//! | `pinhole6_host` | `ipv6_addr . ipv6_addr . inet_proto . inet_service`, `flags timeout`           | same as `pinhole4_host`, IPv6                                            |
//! | `pinhole6`      | `ipv6_addr . ipv6_addr . inet_proto . inet_service`, `flags interval, timeout` | same as `pinhole4`, IPv6                                                 |
//! | `block4`        | `ipv4_addr`, `flags timeout`                                                   | `ip saddr @block4 drop` (also in `input`)                                |
//! | `block6`        | `ipv6_addr`, `flags timeout`                                                   | same, IPv6                                                               |
//!
//! A pinhole ([`Pinhole`]) admits one flow: from its source (one address or
//! a prefix) to one destination address, protocol and port. A pinhole whose
//! source is one address (/32, /128: nearly all of them) is an element of
//! the hash set `pinhole4_host` / `pinhole6_host`: its `NFTA_SET_ELEM_KEY`
//! only. One whose source is a prefix (a carrier's media pool) is an element
//! of the interval set `pinhole4` / `pinhole6`, a range of keys:
//! `NFTA_SET_ELEM_KEY` holds the source's first address,
//! `NFTA_SET_ELEM_KEY_END` its last, the other fields the same in both.
//!
//! Why two sets: the kernel keeps a concatenated interval set in its pipapo
//! backend, which copies the whole set in every transaction that changes
//! it, so each pinhole change there costs O(open pinholes) (about 1 ms per
//! change with 4,000 pinholes here); a hash set change costs the same at any
//! size. The interval sets keep their old names, so a box upgraded from the
//! single-set layout keeps every pinhole; [`move_host_pinholes`] then moves
//! the one-address ones to the hash sets.
//!
//! # Design
//!
//! - Pure Rust, no `nft` process and no libnftnl, so it works in the static
//!   musl daemon and costs one `sendmsg` + one or two `recvmsg` per change.
//! - Every call sends one nfnetlink batch (`NFNL_MSG_BATCH_BEGIN`, the
//!   `NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM` message(s) with `NLM_F_ACK`,
//!   `NFNL_MSG_BATCH_END`): the kernel applies it atomically or not at all,
//!   then the acks are read and matched by sequence number and port id. Acks of
//!   an earlier, abandoned batch are recognised by their sequence numbers and
//!   dropped.
//! - Adding is "create or refresh" in one batch whatever the element's state:
//!   `NEWSETELEM` without `NLM_F_EXCL` (creates it if absent, a no-op if present),
//!   `DELSETELEM`, `NEWSETELEM` with `NLM_F_EXCL` and the new timeout. The element
//!   gets the new timeout without ever being absent from the set as seen by
//!   packets, on kernels that cannot update a timeout in place too, and no batch
//!   is aborted (an aborted nf_tables batch costs 10-15 ms here, a committed one
//!   tens of microseconds). [`SetWriter::discard_pinhole`] removes the same way
//!   (`NEWSETELEM` without `NLM_F_EXCL`, `DELSETELEM`), absent or not.
//! - Kernel errors keep their errno, named (`ENOENT`, `EINVAL`, ...) with a
//!   hint, plus the kernel's extended-ack text. `ENOENT` is attributed using the
//!   extended-ack offset: [`NetlinkError::SetMissing`] (table or set absent) vs
//!   [`NetlinkError::NotFound`] (element absent, for removals; callers may
//!   ignore it). Kernels without that offset get one extra `NFT_MSG_GETSET`
//!   probe.
//! - IPv4-mapped IPv6 addresses are stored in the IPv4 sets (a mapped source
//!   prefix of /96 or longer too). A source prefix is stored as its network
//!   (host bits cleared). A pinhole whose source and destination are of
//!   different families is refused before anything is sent
//!   ([`NetlinkError::MixedFamilies`]).
//! - [`dump_intervals`] reads a set back (`NFT_MSG_GETSETELEM` dump) as merged
//!   intervals, for verifying large prefix sets without `nft -j list`. The
//!   kernel's rbtree dump restarts its walk from the first element for every
//!   ~32 KiB datagram, so its cost grows with the square of the set size
//!   (100k prefixes: 0.2 to 1 s here, nearly all in the kernel).
//! - [`covered_many`] answers "is this key covered?" for many keys with
//!   pipelined point lookups (`NFT_MSG_GETSETELEM` without `NLM_F_DUMP`,
//!   O(log n) each in the kernel): the cheap check for big sets.
//! - Blocking and synchronous. The socket belongs to the network namespace of
//!   the thread that calls [`SetWriter::open`], and is closed on drop.
//!
//! # Limits
//!
//! - One element per call, or one batch of pinhole changes
//!   ([`SetWriter::change_pinholes`]); no bulk load (the ruleset carries
//!   static elements). A `SetWriter` is not `Sync`: one owner issues the
//!   calls.
//! - Prefix pinholes to the same destination, protocol and port whose
//!   sources overlap without being equal (a /29 inside an open /28) cannot
//!   both be in the interval set: the kernel refuses the second with
//!   `EEXIST`, whether or not `NLM_F_EXCL` is set, and the whole batch with
//!   it. A one-address pinhole inside an open prefix pinhole is fine (they
//!   are in different sets).
//! - TTL: at least 1 ms (rounded up to whole ms); an element never lives
//!   without a timeout, because a pinhole must close by itself.
//! - Elements are owned by the table: deleting / recreating `inet <table>`
//!   (for example a ruleset apply that does `delete table`) drops them all.
//! - An acknowledgement missing for [`ACK_TIMEOUT`] gives
//!   [`NetlinkError::Timeout`]; the writer stays usable.
//! - Error texts never contain the addresses involved (they may be personal
//!   data); the caller knows which element it asked for.
//!
//! # Layout
//!
//! - this file: [`SetWriter`] and the errors;
//! - `wire.rs`: the bytes (requests, reply messages, attributes, errors);
//! - `conn.rs`: the socket every request uses, the query / dump exchange and
//!   the retry of transient failures;
//! - `dump.rs`: [`dump_intervals`], the dump [`move_host_pinholes`] reads;
//!   `lookup.rs`: [`covered_many`];
//!   [`rules`]: chains, rules and sets of a table.

mod conn;
mod dump;
mod lookup;
pub mod rules;
mod wire;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};

use self::conn::{retry, Conn};
pub(crate) use self::dump::derive_intervals;
pub use self::dump::{dump_intervals, KernelElem};
pub use self::lookup::covered_many;
pub use self::rules::{
    dump_chains, dump_rules, dump_sets, dump_table, KernelChain, KernelExpr, KernelRule, KernelSet,
    KernelTable,
};
use self::wire::{Blamed, ElemOp, ElemRequest, ReplyKind};
use crate::model::{PINHOLE4, PINHOLE4_HOST, PINHOLE6, PINHOLE6_HOST};

/// How long one call waits for the kernel's acknowledgements.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// `NFT_NAME_MAXLEN` (includes the trailing NUL).
const NFT_NAME_MAXLEN: usize = 256;

/// Timeout of the element a removal creates when it is absent (it is deleted in the same
/// batch, so it never exists as packets see it; the timeout only keeps the rule that
/// every element has one).
const DISCARD_ENSURE_MS: u64 = 1_000;

/// One element of a set: which set, its key and (interval sets) its key end.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Elem {
    set: &'static str,
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
}

impl Elem {
    fn request(&self, op: ElemOp) -> ElemRequest {
        ElemRequest {
            op,
            set: self.set,
            key: self.key.clone(),
            key_end: self.key_end.clone(),
        }
    }
}

/// Create or refresh `elem` whatever its state: ensure (create if absent), delete, add with
/// the new timeout.
fn upsert_requests(elem: &Elem, timeout_ms: u64) -> [ElemRequest; 3] {
    [
        elem.request(ElemOp::Ensure { timeout_ms }),
        elem.request(ElemOp::Delete),
        elem.request(ElemOp::Add { timeout_ms }),
    ]
}

/// Remove `elem` whether or not it is there: ensure, then delete.
fn discard_requests(elem: &Elem) -> [ElemRequest; 2] {
    [
        elem.request(ElemOp::Ensure {
            timeout_ms: DISCARD_ENSURE_MS,
        }),
        elem.request(ElemOp::Delete),
    ]
}

/// A media pinhole: the flow it admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pinhole {
    /// Who may send: one address (/32, /128) or a configured media prefix.
    pub src: IpNet,
    pub dst: IpAddr,
    pub proto: PinholeProto,
    pub port: u16,
}

impl Pinhole {
    /// The pinhole as it is stored: IPv4-mapped IPv6 addresses as IPv4 (a
    /// mapped source prefix of /96 or longer too), the source prefix as its
    /// network (host bits cleared). [`NetlinkError::MixedFamilies`] when
    /// source and destination are then of different families.
    pub fn normalized(self) -> Result<Self, NetlinkError> {
        let src = canonical_net(self.src).trunc();
        let dst = wire::canonical(self.dst);
        let family = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
        let (src_v4, dst_v4) = (matches!(src, IpNet::V4(_)), dst.is_ipv4());
        if src_v4 != dst_v4 {
            return Err(NetlinkError::MixedFamilies {
                src: family(src_v4),
                dst: family(dst_v4),
            });
        }
        Ok(Self { src, dst, ..self })
    }

    /// A change that opens (`Some(ttl)`) or closes (`None`) this pinhole.
    pub fn change(self, open: Option<Duration>) -> PinholeChange {
        PinholeChange {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            port: self.port,
            open,
        }
    }

    /// Set, key and key end of this pinhole: one source address goes to the
    /// hash set (key only), a source prefix to the interval set (its first
    /// and last address).
    fn elem(self) -> Result<Elem, NetlinkError> {
        let p = self.normalized()?;
        let key = |src| wire::pinhole_key(src, p.dst, p.proto, p.port);
        let host = p.src.prefix_len() == p.src.max_prefix_len();
        Ok(Elem {
            set: pinhole_set(p.dst, host),
            key: key(p.src.network()),
            key_end: (!host).then(|| key(p.src.broadcast())),
        })
    }
}

/// An IPv4-mapped IPv6 prefix (`::ffff:a.b.c.d/96` or longer) as the IPv4
/// prefix it stands for; any other prefix as it is.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if let (Some(a), Some(len)) = (n.addr().to_ipv4_mapped(), n.prefix_len().checked_sub(96)) {
            if let Ok(v4) = Ipv4Net::new(a, len) {
                return IpNet::V4(v4);
            }
        }
    }
    net
}

/// One change of [`SetWriter::change_pinholes`]: a [`Pinhole`] to open (or
/// refresh) or to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinholeChange {
    /// Who may send: one address (/32, /128) or a configured media prefix.
    pub src: IpNet,
    pub dst: IpAddr,
    pub proto: PinholeProto,
    pub port: u16,
    /// `Some(ttl)`: open or refresh for `ttl`; `None`: close (absent is fine).
    pub open: Option<Duration>,
}

impl PinholeChange {
    /// The pinhole this change is about.
    pub fn pinhole(&self) -> Pinhole {
        Pinhole {
            src: self.src,
            dst: self.dst,
            proto: self.proto,
            port: self.port,
        }
    }
}

/// Transport protocol of a media pinhole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinholeProto {
    Tcp,
    Udp,
}

impl PinholeProto {
    /// The `inet_proto` value (`IPPROTO_*`).
    pub const fn ipproto(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }
}

impl fmt::Display for PinholeProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// Errors of [`SetWriter`].
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The table or the set does not exist (`ENOENT` on the table or set
    /// attribute): the ruleset is not loaded, or lacks this set.
    #[error("nftables set `inet {table} {set}` is missing: {what} (ENOENT)")]
    SetMissing {
        table: String,
        set: String,
        /// "table does not exist", "set does not exist", or "table or set
        /// does not exist" when the kernel did not say which.
        what: &'static str,
    },
    /// The element to remove is not in the set (never added, already
    /// expired or removed). Usually safe to ignore.
    #[error("element not in nftables set `inet {table} {set}` (ENOENT)")]
    NotFound { table: String, set: String },
    /// Any other error the kernel returned for our request.
    #[error(
        "nftables {op} in set `inet {table} {set}` failed: {}: {}{}",
        errno_name(*errno),
        errno_hint(*errno),
        kernel_text(message.as_deref())
    )]
    Kernel {
        /// "add element", "replace element", "delete element", "query set",
        /// "dump set elements", "look up element".
        op: &'static str,
        table: String,
        set: String,
        /// Positive errno, e.g. `libc::EINVAL`.
        errno: i32,
        /// The kernel's extended-ack message, if any.
        message: Option<String>,
    },
    /// A pinhole's source and destination are of different address families
    /// (after IPv4-mapped addresses are turned into IPv4). Nothing was sent:
    /// for [`SetWriter::change_pinholes`], none of the batch.
    #[error(
        "pinhole refused: its source is {src} and its destination {dst} \
         (one family per pinhole); nothing was written"
    )]
    MixedFamilies {
        src: &'static str,
        dst: &'static str,
    },
    /// The TTL is zero or does not fit in u64 milliseconds.
    #[error("element timeout must be between 1 ms and u64::MAX ms, got {0:?}")]
    InvalidTtl(Duration),
    /// The table name is empty, too long, or contains NUL.
    #[error("invalid nftables table name {0:?}")]
    InvalidTableName(String),
    /// The set name is empty, too long, or contains NUL.
    #[error("invalid nftables set name {0:?}")]
    InvalidSetName(String),
    /// [`dump_intervals`] and [`covered_many`] only read sets keyed by
    /// `ipv4_addr`, `ipv6_addr` or `inet_service` (no concatenations).
    #[error(
        "nftables set `inet {table} {set}` cannot be read as intervals: key type {key_type}, \
         key length {key_len}, flags {flags:#x} (expected ipv4_addr, ipv6_addr or inet_service)"
    )]
    UnsupportedSet {
        table: String,
        set: String,
        /// `NFTA_SET_KEY_TYPE` (nft's datatype id; 0 if absent).
        key_type: u32,
        /// `NFTA_SET_KEY_LEN` in bytes (0 if absent).
        key_len: u32,
        /// `NFTA_SET_FLAGS`.
        flags: u32,
    },
    /// A key given to [`covered_many`] does not fit the set's key type (e.g.
    /// an IPv6 value for an `ipv4_addr` set, or a port above 65535).
    #[error("key #{index} does not fit nftables set `inet {table} {set}` (key maximum {max:#x})")]
    KeyOutOfRange {
        table: String,
        set: String,
        /// Position of the first such key in the caller's slice.
        index: usize,
        /// Largest value of the set's key type.
        max: u128,
    },
    /// No acknowledgement within [`ACK_TIMEOUT`].
    #[error("no acknowledgement from the kernel within {0:?} for nftables {1}")]
    Timeout(Duration, &'static str),
    /// A reply we could not make sense of.
    #[error("malformed netlink reply: {0}")]
    Protocol(String),
    /// The socket itself failed.
    #[error("netlink socket {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
}

impl NetlinkError {
    /// The kernel errno behind this error, if it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::SetMissing { .. } | Self::NotFound { .. } => Some(libc::ENOENT),
            Self::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Symbolic name of an errno, e.g. `ENOENT`.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::E2BIG => "E2BIG",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOBUFS => "ENOBUFS",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::ELOOP => "ELOOP",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => "errno",
    }
}

/// What an errno means for a set-element request.
fn errno_hint(errno: i32) -> String {
    match errno {
        libc::EPERM => {
            "operation not permitted (needs CAP_NET_ADMIN in this network namespace)".into()
        }
        libc::ENOENT => "set or table missing".into(),
        libc::EEXIST => {
            "element already exists (for a pinhole: an open pinhole to the same destination, \
             protocol and port has an overlapping but different source)"
                .into()
        }
        libc::EINVAL => {
            "invalid request (set type, key length or flags differ from what callgate expects, \
             e.g. the set lacks `flags timeout`)"
                .into()
        }
        libc::EBUSY => "resource busy".into(),
        libc::ENOSPC => "set is full (its `size` limit is reached)".into(),
        libc::ERANGE => "timeout out of range".into(),
        libc::EOPNOTSUPP => "not supported by this kernel or set type".into(),
        libc::ENOMEM | libc::ENOBUFS => "kernel out of memory".into(),
        libc::EAGAIN | libc::EINTR => "transient kernel condition, retry".into(),
        other => io::Error::from_raw_os_error(other).to_string(),
    }
}

fn kernel_text(message: Option<&str>) -> String {
    message
        .map(|m| format!(" (kernel: {m})"))
        .unwrap_or_default()
}

/// A failed message of a batch, before it is turned into a [`NetlinkError`].
#[derive(Debug)]
struct Failure {
    /// Index of the element message in the batch; `None` for an error about
    /// the batch as a whole (reported on the batch-begin sequence number).
    index: Option<usize>,
    errno: i32,
    message: Option<String>,
    offset: Option<u32>,
}

/// Why a transaction did not succeed.
#[derive(Debug)]
enum TxError {
    Kernel(Failure),
    Local(NetlinkError),
}

impl From<NetlinkError> for TxError {
    fn from(e: NetlinkError) -> Self {
        Self::Local(e)
    }
}

/// Owns one `NETLINK_NETFILTER` socket and writes elements of the
/// `inet <table>` sets through it. See the module docs.
pub struct SetWriter {
    conn: Conn,
    table: String,
}

impl fmt::Debug for SetWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetWriter")
            .field("table", &self.table)
            .field("port", &self.conn.port())
            .field("seq", &self.conn.seq())
            .finish_non_exhaustive()
    }
}

impl SetWriter {
    /// Opens a netfilter netlink socket in the calling thread's network
    /// namespace, for sets of table `inet <table>`. Does not check that the
    /// table exists (it may be loaded later); the first write will.
    pub fn open(table: &str) -> Result<Self, NetlinkError> {
        check_table(table)?;
        Ok(Self {
            conn: Conn::open()?,
            table: table.to_owned(),
        })
    }

    /// The table this writer writes to.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Opens (or refreshes) `pinhole` for `ttl`. If it already exists, its
    /// timeout restarts at `ttl`.
    pub fn open_pinhole(&mut self, pinhole: Pinhole, ttl: Duration) -> Result<(), NetlinkError> {
        self.upsert(&pinhole.elem()?, ttl)
    }

    /// Opens (refreshes) and closes many pinholes in one batch, in order, each as
    /// [`Self::open_pinhole`] / [`Self::discard_pinhole`] would: one `sendmsg` and one
    /// commit for the lot. The kernel applies all of it or none (an error is about the
    /// batch: the table or a set is missing, or two sources overlap, see the module docs).
    /// A change with a source and destination of different families refuses the whole
    /// batch before anything is sent ([`NetlinkError::MixedFamilies`]).
    pub fn change_pinholes(&mut self, changes: &[PinholeChange]) -> Result<(), NetlinkError> {
        let mut reqs = Vec::with_capacity(changes.len() * 3);
        for c in changes {
            let elem = c.pinhole().elem()?;
            match c.open {
                Some(ttl) => reqs.extend(upsert_requests(&elem, ttl_ms(ttl)?)),
                None => reqs.extend(discard_requests(&elem)),
            }
        }
        if reqs.is_empty() {
            return Ok(());
        }
        let set = reqs.first().map_or(PINHOLE4_HOST, |r| r.set);
        self.transact(&reqs)
            .map_err(|e| self.classify(e, "change pinholes", set, ElemOp::Add { timeout_ms: 1 }))
    }

    /// Closes `pinhole` if it is open (absent is fine): one batch, never aborted because
    /// of the element, so it costs the same either way.
    pub fn discard_pinhole(&mut self, pinhole: Pinhole) -> Result<(), NetlinkError> {
        self.change_pinholes(&[pinhole.change(None)])
    }

    /// Closes `pinhole` now. [`NetlinkError::NotFound`] if it is not there.
    pub fn close_pinhole(&mut self, pinhole: Pinhole) -> Result<(), NetlinkError> {
        self.delete(&pinhole.elem()?)
    }

    /// Blocks source `addr` for `ttl` (refreshes the timeout if already
    /// blocked).
    pub fn block(&mut self, addr: IpAddr, ttl: Duration) -> Result<(), NetlinkError> {
        self.upsert(&block_elem(addr), ttl)
    }

    /// Lifts a block. [`NetlinkError::NotFound`] if `addr` is not blocked.
    pub fn unblock(&mut self, addr: IpAddr) -> Result<(), NetlinkError> {
        self.delete(&block_elem(addr))
    }

    /// Creates the element or restarts its timeout, in one batch that does not depend on
    /// whether it exists: ensure (create if absent), delete, add with the new timeout. The
    /// element is never absent as packets see it (the batch is atomic), and no batch is
    /// aborted because of it: on this lab's kernels an aborted nf_tables batch costs
    /// 10 to 15 ms, a committed one tens of microseconds.
    fn upsert(&mut self, elem: &Elem, ttl: Duration) -> Result<(), NetlinkError> {
        let timeout_ms = ttl_ms(ttl)?;
        let reqs = upsert_requests(elem, timeout_ms);
        self.transact(&reqs).map_err(|e| {
            let failed_op = match &e {
                TxError::Kernel(f) if f.index == Some(1) => ElemOp::Delete,
                _ => ElemOp::Add { timeout_ms },
            };
            self.classify(e, "add element", elem.set, failed_op)
        })
    }

    fn delete(&mut self, elem: &Elem) -> Result<(), NetlinkError> {
        let req = elem.request(ElemOp::Delete);
        match self.transact(std::slice::from_ref(&req)) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.classify(e, "delete element", elem.set, ElemOp::Delete)),
        }
    }

    /// Turns a transaction failure into the public error, attributing `ENOENT`.
    fn classify(
        &mut self,
        e: TxError,
        op: &'static str,
        set: &'static str,
        failed_op: ElemOp,
    ) -> NetlinkError {
        let f = match e {
            TxError::Local(e) => return e,
            TxError::Kernel(f) => f,
        };
        let table = self.table.clone();
        if f.errno == libc::ENOENT && f.index.is_some() {
            let missing = |what| NetlinkError::SetMissing {
                table: table.clone(),
                set: set.to_owned(),
                what,
            };
            return match (wire::blamed(&self.table, set, f.offset), failed_op) {
                (Blamed::Table, _) => missing("table does not exist"),
                (Blamed::Set, _) => missing("set does not exist"),
                (Blamed::Element, ElemOp::Delete) => NetlinkError::NotFound {
                    table,
                    set: set.to_owned(),
                },
                (Blamed::Unknown, ElemOp::Delete) => match self.set_exists(set) {
                    Ok(true) => NetlinkError::NotFound {
                        table,
                        set: set.to_owned(),
                    },
                    Ok(false) => missing("table or set does not exist"),
                    Err(e) => e,
                },
                (Blamed::Unknown, _) => missing("table or set does not exist"),
                (Blamed::Element, _) => NetlinkError::Kernel {
                    op,
                    table,
                    set: set.to_owned(),
                    errno: f.errno,
                    message: f.message,
                },
            };
        }
        NetlinkError::Kernel {
            op: if f.index.is_none() { "batch" } else { op },
            table,
            set: set.to_owned(),
            errno: f.errno,
            message: f.message,
        }
    }

    /// `NFT_MSG_GETSET`: does `inet <table> <set>` exist?
    fn set_exists(&mut self, set: &'static str) -> Result<bool, NetlinkError> {
        let seq = self.conn.next_seqs(1);
        let bytes = wire::encode_getset(&self.table, set, seq);
        match self.exchange(&bytes, seq, 1, "query set") {
            Ok(()) => Ok(true),
            Err(TxError::Kernel(f)) if f.errno == libc::ENOENT => Ok(false),
            Err(TxError::Kernel(f)) => Err(NetlinkError::Kernel {
                op: "query set",
                table: self.table.clone(),
                set: set.to_owned(),
                errno: f.errno,
                message: f.message,
            }),
            Err(TxError::Local(e)) => Err(e),
        }
    }

    /// Sends one batch with `reqs` and waits for every element's ack.
    fn transact(&mut self, reqs: &[ElemRequest]) -> Result<(), TxError> {
        let first = self.conn.seq();
        let (bytes, used) = wire::encode_batch(&self.table, reqs, first);
        self.conn.next_seqs(used);
        let op = reqs.first().map_or("batch", |r| match r.op {
            ElemOp::Add { .. } | ElemOp::Ensure { .. } => "add element",
            ElemOp::Delete => "delete element",
        });
        self.exchange(&bytes, first, used, op)
    }

    /// Sends `bytes`, whose messages carry sequence numbers `first ..
    /// first + count`, and waits until each message that asked for an ack has
    /// one (all but `first` when `count > 1`, i.e. a batch whose begin and end
    /// do not ask; `first` itself when `count == 1`).
    ///
    /// An error on `first` in a batch is about the batch as a whole (e.g.
    /// `EPERM`, or a failed commit) and ends the wait. Otherwise the first
    /// failed message (by position) is returned once all acks are in.
    fn exchange(
        &mut self,
        bytes: &[u8],
        first: u32,
        count: u32,
        op: &'static str,
    ) -> Result<(), TxError> {
        self.conn.drain_stale();
        self.conn.send(bytes)?;

        let batch = count > 1;
        // pending[i]: still waiting for the ack of element message i
        let n_acked = if batch { count.saturating_sub(2) } else { 1 };
        let mut pending: Vec<bool> = vec![true; n_acked as usize];
        let mut failures: Vec<Failure> = Vec::new();
        let deadline = Instant::now() + ACK_TIMEOUT;

        while pending.iter().any(|&p| p) {
            if Instant::now() >= deadline {
                return Err(NetlinkError::Timeout(ACK_TIMEOUT, op).into());
            }
            self.conn.recv_datagram(false, "reply")?;
            let replies =
                wire::parse_datagram(self.conn.datagram()).map_err(NetlinkError::Protocol)?;
            for r in replies {
                let Some(rel) = self.conn.slot(r.port, r.seq, first, count as usize) else {
                    continue;
                };
                let index = if batch {
                    if rel == 0 || rel == count as usize - 1 {
                        // about the batch itself (begin / end)
                        if let ReplyKind::Error {
                            errno,
                            message,
                            offset,
                        } = r.kind
                        {
                            return Err(TxError::Kernel(Failure {
                                index: None,
                                errno,
                                message,
                                offset,
                            }));
                        }
                        continue;
                    }
                    rel - 1
                } else {
                    rel
                };
                match r.kind {
                    ReplyKind::Other => {}
                    ReplyKind::Ack => {
                        if let Some(p) = pending.get_mut(index) {
                            *p = false;
                        }
                    }
                    ReplyKind::Error {
                        errno,
                        message,
                        offset,
                    } => {
                        if let Some(p) = pending.get_mut(index) {
                            *p = false;
                        }
                        failures.push(Failure {
                            index: Some(index),
                            errno,
                            message,
                            offset,
                        });
                    }
                }
            }
        }
        failures.sort_by_key(|f| f.index);
        match failures.into_iter().next() {
            None => Ok(()),
            Some(f) => Err(TxError::Kernel(f)),
        }
    }
}

/// Checks an nftables object name (`NFT_NAME_MAXLEN` includes the NUL).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() < NFT_NAME_MAXLEN && !name.contains('\0')
}

/// [`NetlinkError::InvalidTableName`] unless `table` is a valid name.
fn check_table(table: &str) -> Result<(), NetlinkError> {
    if valid_name(table) {
        Ok(())
    } else {
        Err(NetlinkError::InvalidTableName(table.to_owned()))
    }
}

/// [`check_table`], then [`NetlinkError::InvalidSetName`] unless `set` is a
/// valid name.
fn check_table_and_set(table: &str, set: &str) -> Result<(), NetlinkError> {
    check_table(table)?;
    if valid_name(set) {
        Ok(())
    } else {
        Err(NetlinkError::InvalidSetName(set.to_owned()))
    }
}

/// Set and key of the block of `addr`.
fn block_elem(addr: IpAddr) -> Elem {
    let addr = wire::canonical(addr);
    Elem {
        set: block_set(addr),
        key: wire::addr_key(addr),
        key_end: None,
    }
}

/// The set of a pinhole to `dst`: the hash set when its source is one address (`host`),
/// the interval set when it is a prefix.
fn pinhole_set(dst: IpAddr, host: bool) -> &'static str {
    match (dst, host) {
        (IpAddr::V4(_), true) => PINHOLE4_HOST,
        (IpAddr::V4(_), false) => PINHOLE4,
        (IpAddr::V6(_), true) => PINHOLE6_HOST,
        (IpAddr::V6(_), false) => PINHOLE6,
    }
}

/// Moves per batch in [`move_host_pinholes`]: 5 messages and 5 acks each. The kernel
/// queues every ack of a batch before we read one, and 64 moves (320 acks) overflow a
/// default socket receive buffer (`ENOBUFS`); 16 (80 acks) stay well inside it.
const MOVES_PER_BATCH: usize = 16;

/// Moves the pinholes whose source is one address from the interval sets `pinhole4` /
/// `pinhole6` of `inet <table>` to the hash sets `pinhole4_host` / `pinhole6_host`, each
/// with the time it had left; returns how many moved. Prefix pinholes stay.
///
/// For a box upgraded from the layout where every pinhole was in the interval sets: run
/// once, after the ruleset that declares the hash sets is applied, in the thread that owns
/// the pinholes (so nothing opens or closes one meanwhile). Each element is added to the
/// hash set and removed from the interval set in the same batch, so its flow passes
/// throughout. Without the move those elements would still pass their flows, but a close
/// or refresh (written to the hash set) would not reach them: a closed call's pinhole
/// would stay open until its old timeout.
///
/// Errors: [`NetlinkError::SetMissing`] if a set is missing; a failed batch stops the
/// move (the batches before it stay done).
pub fn move_host_pinholes(table: &str) -> Result<usize, NetlinkError> {
    check_table(table)?;
    let mut w = SetWriter::open(table)?;
    let mut moved = 0;
    for (from, to) in [(PINHOLE4, PINHOLE4_HOST), (PINHOLE6, PINHOLE6_HOST)] {
        let elems = retry(format_args!("dump of set {from}"), || {
            let mut conn = Conn::open_for_dumps()?;
            dump::dump_elems(&mut conn, table, from)
        })?;
        let hosts: Vec<(Elem, Elem, u64)> = elems
            .into_iter()
            .filter(|e| e.key_end.as_ref() == Some(&e.key))
            .filter_map(|e| {
                // what it had left; never 0 (no timeout), at least 1 ms
                let ms = e.expires_ms.or(e.timeout_ms)?.max(1);
                let old = Elem {
                    set: from,
                    key: e.key.clone(),
                    key_end: e.key_end,
                };
                let new = Elem {
                    set: to,
                    key: e.key,
                    key_end: None,
                };
                Some((old, new, ms))
            })
            .collect();
        for chunk in hosts.chunks(MOVES_PER_BATCH) {
            let mut reqs = Vec::with_capacity(chunk.len() * 5);
            for (old, new, ms) in chunk {
                reqs.extend(upsert_requests(new, *ms));
                reqs.extend(discard_requests(old));
            }
            w.transact(&reqs)
                .map_err(|e| w.classify(e, "move pinholes", to, ElemOp::Add { timeout_ms: 1 }))?;
            moved += chunk.len();
        }
    }
    Ok(moved)
}

fn block_set(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "block4",
        IpAddr::V6(_) => "block6",
    }
}

/// TTL in whole milliseconds, rounded up; 0 is refused (it would mean "no
/// timeout").
fn ttl_ms(ttl: Duration) -> Result<u64, NetlinkError> {
    let ms = ttl.as_nanos().div_ceil(1_000_000);
    match u64::try_from(ms) {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err(NetlinkError::InvalidTtl(ttl)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounding() {
        assert_eq!(ttl_ms(Duration::from_secs(30)).unwrap(), 30_000);
        assert_eq!(ttl_ms(Duration::from_micros(1)).unwrap(), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1_500)).unwrap(), 2);
        assert!(matches!(
            ttl_ms(Duration::ZERO),
            Err(NetlinkError::InvalidTtl(_))
        ));
        assert!(matches!(
            ttl_ms(Duration::MAX),
            Err(NetlinkError::InvalidTtl(_))
        ));
    }

    #[test]
    fn set_names() {
        assert_eq!(
            pinhole_set("192.0.2.1".parse().unwrap(), true),
            "pinhole4_host"
        );
        assert_eq!(pinhole_set("192.0.2.1".parse().unwrap(), false), "pinhole4");
        assert_eq!(
            pinhole_set("2001:db8::1".parse().unwrap(), true),
            "pinhole6_host"
        );
        assert_eq!(
            pinhole_set("2001:db8::1".parse().unwrap(), false),
            "pinhole6"
        );
        assert_eq!(block_set("192.0.2.1".parse().unwrap()), "block4");
        assert_eq!(block_set("2001:db8::1".parse().unwrap()), "block6");
    }

    fn pinhole(src: &str, dst: &str) -> Pinhole {
        Pinhole {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: PinholeProto::Udp,
            port: 40000,
        }
    }

    #[test]
    fn pinholes_are_normalized() {
        // host bits cleared
        let p = pinhole("203.0.113.37/28", "198.51.100.10")
            .normalized()
            .unwrap();
        assert_eq!(p.src, "203.0.113.32/28".parse::<IpNet>().unwrap());
        // IPv4-mapped destination and source (/96 or longer) go to IPv4
        let p = pinhole("::ffff:203.0.113.5/128", "::ffff:198.51.100.10")
            .normalized()
            .unwrap();
        assert_eq!(p.src, "203.0.113.5/32".parse::<IpNet>().unwrap());
        assert_eq!(p.dst, "198.51.100.10".parse::<IpAddr>().unwrap());
        let p = pinhole("::ffff:203.0.113.0/124", "198.51.100.10")
            .normalized()
            .unwrap();
        assert_eq!(p.src, "203.0.113.0/28".parse::<IpNet>().unwrap());
        let p = pinhole("2001:db8:1::7/48", "2001:db8::10")
            .normalized()
            .unwrap();
        assert_eq!(p.src, "2001:db8:1::/48".parse::<IpNet>().unwrap());
        // a mapped prefix shorter than /96 is not an IPv4 prefix
        let p = pinhole("::ffff:0.0.0.0/95", "2001:db8::10")
            .normalized()
            .unwrap();
        assert!(matches!(p.src, IpNet::V6(_)));
    }

    #[test]
    fn mixed_families_are_refused() {
        for (src, dst) in [
            ("203.0.113.5/32", "2001:db8::10"),
            ("2001:db8:1::/48", "198.51.100.10"),
            ("2001:db8:1::/48", "::ffff:198.51.100.10"),
            ("::ffff:0.0.0.0/95", "198.51.100.10"),
        ] {
            let e = pinhole(src, dst).normalized().unwrap_err();
            assert!(
                matches!(e, NetlinkError::MixedFamilies { .. }),
                "{src} {dst}: {e}"
            );
            let text = e.to_string();
            // no addresses in error texts
            assert!(!text.contains("203.0") && !text.contains("db8"), "{text}");
        }
        let e = pinhole("2001:db8:1::/48", "198.51.100.10")
            .normalized()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pinhole refused: its source is IPv6 and its destination IPv4 (one family per \
             pinhole); nothing was written"
        );
    }

    #[test]
    fn pinhole_elements_span_the_source() {
        // a prefix: the interval set, key and key end
        let e = pinhole("203.0.113.37/28", "198.51.100.10").elem().unwrap();
        assert_eq!(e.set, "pinhole4");
        assert_eq!(&e.key[..8], [203, 0, 113, 32, 198, 51, 100, 10]);
        assert_eq!(
            &e.key_end.as_deref().unwrap()[..8],
            [203, 0, 113, 47, 198, 51, 100, 10]
        );
        let e = pinhole("2001:db8::/127", "2001:db8::10").elem().unwrap();
        assert_eq!(e.set, "pinhole6");
        assert_eq!(e.key_end.as_ref().map(Vec::len), Some(40));
        // one address: the hash set, the key alone
        let e = pinhole("2001:db8::1/128", "2001:db8::10").elem().unwrap();
        assert_eq!(e.set, "pinhole6_host");
        assert_eq!(e.key_end, None);
        assert_eq!(e.key.len(), 40);
        let e = pinhole("203.0.113.5/32", "198.51.100.10").elem().unwrap();
        assert_eq!(e.set, "pinhole4_host");
        assert_eq!(e.key_end, None);
        assert_eq!(
            e.key,
            [203, 0, 113, 5, 198, 51, 100, 10, 17, 0, 0, 0, 0x9c, 0x40, 0, 0]
        );
        // so is an IPv4-mapped one
        let e = pinhole("::ffff:203.0.113.5/128", "::ffff:198.51.100.10")
            .elem()
            .unwrap();
        assert_eq!(e.set, "pinhole4_host");
        assert_eq!(e.key_end, None);
        // and any change of the same pinhole names the same element
        let p = pinhole("203.0.113.5/32", "198.51.100.10");
        let open = upsert_requests(&p.elem().unwrap(), 1000);
        let close = discard_requests(&p.elem().unwrap());
        assert!(open.iter().chain(&close).all(|r| r.set == "pinhole4_host"
            && r.key_end.is_none()
            && r.key == p.elem().unwrap().key));
    }

    #[test]
    fn error_texts_name_the_errno() {
        let e = NetlinkError::Kernel {
            op: "add element",
            table: "callgate".into(),
            set: "pinhole4".into(),
            errno: libc::EINVAL,
            message: Some("bad key".into()),
        };
        let s = e.to_string();
        assert!(s.starts_with("nftables add element in set `inet callgate pinhole4` failed: EINVAL: invalid request"), "{s}");
        assert!(s.ends_with("(kernel: bad key)"), "{s}");
        let e = NetlinkError::SetMissing {
            table: "callgate".into(),
            set: "block6".into(),
            what: "table does not exist",
        };
        assert_eq!(
            e.to_string(),
            "nftables set `inet callgate block6` is missing: table does not exist (ENOENT)"
        );
        assert_eq!(e.errno(), Some(libc::ENOENT));
    }

    #[test]
    fn rejects_bad_table_names() {
        for name in ["", "a\0b", &"x".repeat(256)] {
            assert!(matches!(
                SetWriter::open(name),
                Err(NetlinkError::InvalidTableName(_))
            ));
        }
    }
}
