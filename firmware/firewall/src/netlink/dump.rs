//! Reading a set back over netlink: an `NFT_MSG_GETSETELEM` dump, turned
//! into the merged list of covered intervals.
//!
//! Used for verifying large prefix sets after an apply without `nft -j list`
//! (no process, no JSON). The kernel side dominates the cost: the rbtree
//! backend restarts its walk at the first element for every dump datagram
//! (at most ~32 KiB, ~1600 elements), so a dump of n intervals (2n elements)
//! costs O(n²): on the dev VM 10k prefixes take ~7 ms, 50k ~130 ms, 100k
//! 0.2 to 1 s (`nft -j list set` of the same: 1.3 to 1.6 s).
//!
//! # What the kernel returns
//!
//! - rbtree backend (single-field `flags interval` sets): one element per
//!   range start, plus one element flagged `NFT_SET_ELEM_INTERVAL_END` whose
//!   key is the first value *after* the range. A start without an end runs to
//!   the maximum value (nft sends no end for e.g. `255.255.255.0/24`). nft
//!   also adds a lone end element at 0 when the set does not start at 0
//!   (ignored), and adjacent ranges are kept apart (start and end share a
//!   key). Elements come highest first.
//! - pipapo backend (concatenations, newer kernels): `NFTA_SET_ELEM_KEY_END`
//!   holds the inclusive end.
//! - Sets without `flags interval` (hash, bitmap): every element is a point.
//!
//! The set is queried first (`NFT_MSG_GETSET`) for its key type and flags:
//! that gives the key width, and a precise [`NetlinkError::SetMissing`].

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_netfilter::nftables::{NfTablesMessage, SetElementList, SetElementMessage};

use super::conn::{retry, Attempt, Conn};
use super::wire::{self, attrs, be_u32, nfgen_attrs, nft_type, Blamed};
use super::{check_table_and_set, NetlinkError};
use crate::nft::merge;

/// `enum nft_set_attributes`.
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
/// `enum nft_set_elem_list_attributes`.
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
/// `enum nft_list_attributes`.
const NFTA_LIST_ELEM: u16 = 1;
/// `enum nft_set_elem_attributes`.
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
/// `enum nft_data_attributes`.
const NFTA_DATA_VALUE: u16 = 1;

/// `enum nft_set_flags`.
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_CONCAT: u32 = 0x80;
/// `enum nft_set_elem_flags`.
pub(crate) const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
pub(crate) const NFT_SET_ELEM_CATCHALL: u32 = 0x2;

/// nft's datatype ids (`enum datatypes` in nftables' datatype.h), which nft
/// stores as `NFTA_SET_KEY_TYPE`.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_SERVICE: u32 = 13;

/// One element as dumped: key, `NFTA_SET_ELEM_FLAGS`, `NFTA_SET_ELEM_KEY_END`.
/// The key of a catch-all element is meaningless (0).
pub(crate) type RawElem = (u128, u32, Option<u128>);

/// One element of a set as the kernel dumps it, its keys as bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelElem {
    /// `NFTA_SET_ELEM_KEY` (empty for a catch-all element).
    pub key: Vec<u8>,
    /// `NFTA_SET_ELEM_KEY_END`: the inclusive end of a range in a set with
    /// concatenations and `flags interval`.
    pub key_end: Option<Vec<u8>>,
    /// `NFTA_SET_ELEM_FLAGS`: `NFT_SET_ELEM_INTERVAL_END` (0x1) marks the
    /// exclusive end of a range in other interval sets, `NFT_SET_ELEM_CATCHALL`
    /// (0x2) the catch-all element.
    pub flags: u32,
    /// `NFTA_SET_ELEM_TIMEOUT`: the element's timeout in ms (sets with `flags timeout`).
    pub timeout_ms: Option<u64>,
    /// `NFTA_SET_ELEM_EXPIRATION`: ms until the element expires.
    pub expires_ms: Option<u64>,
}

impl KernelElem {
    /// As a [`RawElem`] of a set keyed by `kind`.
    fn decode(&self, kind: KeyKind) -> Result<RawElem, String> {
        let key = if self.flags & NFT_SET_ELEM_CATCHALL != 0 {
            0
        } else {
            kind.decode(&self.key)?
        };
        let end = self
            .key_end
            .as_deref()
            .map(|e| kind.decode(e))
            .transpose()?;
        Ok((key, self.flags, end))
    }
}

/// Covered intervals of an interval set (`ipv4_addr`, `ipv6_addr` or
/// `inet_service` keys) in table `inet <table>`, merged: sorted, overlapping
/// and adjacent intervals joined; each `(lo, hi)` inclusive. Addresses as
/// `u128` (IPv4 as its `u32` value), ports as their `u16` value.
///
/// Sets without `flags interval` give one point interval per element (then
/// merged too). Opens its own socket in the calling thread's network
/// namespace; blocking. A dump the kernel reports as interrupted (ruleset
/// changed meanwhile, `EINTR`, `EBUSY`) is retried a few times.
///
/// Errors: [`NetlinkError::SetMissing`] when the table or set does not exist,
/// [`NetlinkError::UnsupportedSet`] for other key types or concatenations.
pub fn dump_intervals(table: &str, set: &str) -> Result<Vec<(u128, u128)>, NetlinkError> {
    check_table_and_set(table, set)?;
    retry(format_args!("dump of set {set}"), || dump_once(table, set))
}

/// Width and range of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    V4,
    V6,
    Port,
}

impl KeyKind {
    pub(super) fn width(self) -> usize {
        match self {
            Self::V4 => 4,
            Self::V6 => 16,
            Self::Port => 2,
        }
    }

    pub(crate) fn max(self) -> u128 {
        match self {
            Self::V4 => u128::from(u32::MAX),
            Self::V6 => u128::MAX,
            Self::Port => u128::from(u16::MAX),
        }
    }

    /// The key value from an `NFTA_DATA_VALUE` payload: the first `width`
    /// bytes, big endian (the attribute may be zero padded behind them).
    fn decode(self, bytes: &[u8]) -> Result<u128, String> {
        let w = self.width();
        let b = bytes
            .get(..w)
            .ok_or_else(|| format!("key of {} bytes, expected {w}", bytes.len()))?;
        Ok(b.iter().fold(0u128, |acc, &x| (acc << 8) | u128::from(x)))
    }
}

/// What `NFT_MSG_GETSET` told us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct SetInfo {
    pub(super) flags: u32,
    pub(super) key_type: u32,
    pub(super) key_len: u32,
}

impl SetInfo {
    pub(super) fn key_kind(&self) -> Option<KeyKind> {
        if self.flags & NFT_SET_CONCAT != 0 {
            return None;
        }
        match (self.key_type, self.key_len) {
            (TYPE_IPADDR, 4) => Some(KeyKind::V4),
            (TYPE_IP6ADDR, 16) => Some(KeyKind::V6),
            (TYPE_INET_SERVICE, 2) => Some(KeyKind::Port),
            _ => None,
        }
    }

    /// [`SetInfo::key_kind`], or [`NetlinkError::UnsupportedSet`] for set
    /// `inet <table> <set>`.
    pub(super) fn readable_key(&self, table: &str, set: &str) -> Result<KeyKind, NetlinkError> {
        self.key_kind().ok_or_else(|| NetlinkError::UnsupportedSet {
            table: table.to_owned(),
            set: set.to_owned(),
            key_type: self.key_type,
            key_len: self.key_len,
            flags: self.flags,
        })
    }
}

/// One attempt, on a fresh socket (so no leftovers of an abandoned dump can
/// get in the way).
fn dump_once(table: &str, set: &str) -> Result<Vec<(u128, u128)>, Attempt> {
    let mut conn = Conn::open_for_dumps()?;
    let info = query_set(&mut conn, table, set)?;
    let kind = info.readable_key(table, set)?;
    let elems = dump_elems(&mut conn, table, set)?
        .iter()
        .map(|e| e.decode(kind))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Attempt::Fail(NetlinkError::Protocol(e)))?;
    Ok(derive_intervals(
        &elems,
        kind.max(),
        info.flags & NFT_SET_INTERVAL != 0,
    ))
}

/// `NFT_MSG_GETSET` for `inet <table> <set>`: its flags and key.
pub(super) fn query_set(conn: &mut Conn, table: &str, set: &str) -> Result<SetInfo, Attempt> {
    let seq = conn.next_seqs(1);
    let mut info = None;
    conn.query(
        &wire::encode_getset(table, set, seq),
        seq,
        "query set",
        |errno, message, offset| kernel_error(table, set, "query set", errno, message, offset),
        |ty, payload| {
            if ty == nft_type(wire::NFT_MSG_NEWSET) {
                info = Some(parse_set(payload)?);
            }
            Ok(())
        },
    )?;
    info.ok_or_else(|| {
        Attempt::Fail(NetlinkError::Protocol(
            "no NFT_MSG_NEWSET in the reply to NFT_MSG_GETSET".into(),
        ))
    })
}

/// The `NFT_MSG_GETSETELEM` dump of `inet <table> <set>`.
pub(super) fn dump_elems(
    conn: &mut Conn,
    table: &str,
    set: &str,
) -> Result<Vec<KernelElem>, Attempt> {
    let seq = conn.next_seqs(1);
    let mut elems = Vec::new();
    let op = "dump set elements";
    conn.query(
        &encode_dump(table, set, seq),
        seq,
        op,
        |errno, message, offset| kernel_error(table, set, op, errno, message, offset),
        |ty, payload| {
            if ty == nft_type(wire::NFT_MSG_NEWSETELEM) {
                parse_elems(payload, &mut elems)?;
            }
            Ok(())
        },
    )?;
    Ok(elems)
}

/// A kernel errno as an attempt outcome: `ENOENT` is a missing table or set,
/// `EINTR` / `EBUSY` / `EAGAIN` are worth a retry.
fn kernel_error(
    table: &str,
    set: &str,
    op: &'static str,
    errno: i32,
    message: Option<String>,
    offset: Option<u32>,
) -> Attempt {
    if errno == libc::ENOENT {
        // GETSET and GETSETELEM both start with the table, then the set
        // attribute, laid out like the element messages `blamed` knows.
        let what = match wire::blamed(table, set, offset) {
            Blamed::Table => "table does not exist",
            Blamed::Set => "set does not exist",
            Blamed::Element | Blamed::Unknown => "table or set does not exist",
        };
        return Attempt::Fail(NetlinkError::SetMissing {
            table: table.to_owned(),
            set: set.to_owned(),
            what,
        });
    }
    Attempt::kernel(NetlinkError::Kernel {
        op,
        table: table.to_owned(),
        set: set.to_owned(),
        errno,
        message,
    })
}

/// `NFT_MSG_GETSETELEM` with `NLM_F_DUMP` for `inet <table> <set>`.
fn encode_dump(table: &str, set: &str, seq: u32) -> Vec<u8> {
    let request = NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_owned()),
            SetElementList::Set(set.to_owned()),
        ],
    });
    wire::encode(request, NLM_F_REQUEST | NLM_F_DUMP, seq)
}

/// `NFT_MSG_NEWSET`: flags, key type and key length.
fn parse_set(payload: &[u8]) -> Result<SetInfo, String> {
    let mut info = SetInfo::default();
    for attr in attrs(nfgen_attrs(payload)?) {
        let (kind, v) = attr?;
        match kind {
            NFTA_SET_FLAGS => info.flags = be_u32(v)?,
            NFTA_SET_KEY_TYPE => info.key_type = be_u32(v)?,
            NFTA_SET_KEY_LEN => info.key_len = be_u32(v)?,
            _ => {}
        }
    }
    Ok(info)
}

/// `NFT_MSG_NEWSETELEM` of a dump: appends its elements to `out`.
fn parse_elems(payload: &[u8], out: &mut Vec<KernelElem>) -> Result<(), String> {
    for attr in attrs(nfgen_attrs(payload)?) {
        let (list_kind, v) = attr?;
        if list_kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for elem in attrs(v) {
            let (elem_kind, v) = elem?;
            if elem_kind == NFTA_LIST_ELEM {
                out.push(parse_elem(v)?);
            }
        }
    }
    Ok(())
}

fn parse_elem(v: &[u8]) -> Result<KernelElem, String> {
    let mut key = None;
    let mut flags = 0;
    let mut key_end = None;
    let (mut timeout_ms, mut expires_ms) = (None, None);
    for attr in attrs(v) {
        let (attr_kind, v) = attr?;
        match attr_kind {
            NFTA_SET_ELEM_KEY => key = Some(data_value(v)?),
            NFTA_SET_ELEM_KEY_END => key_end = Some(data_value(v)?),
            NFTA_SET_ELEM_FLAGS => flags = be_u32(v)?,
            NFTA_SET_ELEM_TIMEOUT => timeout_ms = Some(be_u64(v)?),
            NFTA_SET_ELEM_EXPIRATION => expires_ms = Some(be_u64(v)?),
            _ => {}
        }
    }
    match key {
        Some(key) => Ok(KernelElem {
            key,
            key_end,
            flags,
            timeout_ms,
            expires_ms,
        }),
        None if flags & NFT_SET_ELEM_CATCHALL != 0 => Ok(KernelElem {
            key: Vec::new(),
            key_end,
            flags,
            timeout_ms,
            expires_ms,
        }),
        None => Err("set element without key".into()),
    }
}

/// A big-endian u64 attribute (`NLA_U64` / `NLA_BE64` as nf_tables sends them).
fn be_u64(v: &[u8]) -> Result<u64, String> {
    v.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| format!("u64 attribute of {} bytes", v.len()))
}

/// The `NFTA_DATA_VALUE` inside a nested key attribute.
pub(super) fn data_value(nested: &[u8]) -> Result<Vec<u8>, String> {
    for attr in attrs(nested) {
        let (attr_kind, v) = attr?;
        if attr_kind == NFTA_DATA_VALUE {
            return Ok(v.to_vec());
        }
    }
    Err("key without NFTA_DATA_VALUE".into())
}

/// Covered intervals from dumped elements, merged (see the module docs for
/// the representations). `max` is the key's maximum value; `interval` says
/// whether the set has `flags interval` (otherwise every element is a
/// point, unless it carries an inclusive end).
pub(crate) fn derive_intervals(elems: &[RawElem], max: u128, interval: bool) -> Vec<(u128, u128)> {
    let mut pairs = Vec::new();
    // rbtree boundaries: (key, is_start). At equal keys an end sorts first:
    // it closes the range before, the start opens the adjacent one.
    let mut bounds: Vec<(u128, bool)> = Vec::new();
    for &(key, flags, key_end) in elems {
        if flags & NFT_SET_ELEM_CATCHALL != 0 {
            pairs.push((0, max));
        } else if let Some(end) = key_end {
            // pipapo: inclusive end
            if end >= key {
                pairs.push((key.min(max), end.min(max)));
            } else {
                log::debug!("netlink: ignoring set element with end before start");
            }
        } else if !interval {
            pairs.push((key.min(max), key.min(max)));
        } else {
            bounds.push((key, flags & NFT_SET_ELEM_INTERVAL_END == 0));
        }
    }
    bounds.sort_unstable();
    let mut open: Option<u128> = None;
    for (key, is_start) in bounds {
        match (open, is_start) {
            (None, true) => open = Some(key),
            // exclusive end: the range is lo ..= key - 1
            (Some(lo), false) if key > lo => {
                pairs.push((lo, key.saturating_sub(1).min(max)));
                open = None;
            }
            // a start inside an open range (overlap) extends nothing; an
            // end with nothing open (nft's end at 0) or an empty range is
            // ignored
            _ => {}
        }
    }
    if let Some(lo) = open {
        pairs.push((lo.min(max), max));
    }
    merge(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const END: u32 = NFT_SET_ELEM_INTERVAL_END;
    const V4MAX: u128 = u32::MAX as u128;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> u128 {
        u128::from(u32::from_be_bytes([a, b, c, d]))
    }

    #[test]
    fn rbtree_starts_and_exclusive_ends() {
        // What kernel 6.x dumps for
        // { 10.0.0.0/8, 192.0.2.7, 198.51.100.0/25, 255.255.255.0/24 }:
        // highest first, nft's lone end at 0, no end for the last range.
        let elems = [
            (v4(255, 255, 255, 0), 0, None),
            (v4(198, 51, 100, 128), END, None),
            (v4(198, 51, 100, 0), 0, None),
            (v4(192, 0, 2, 8), END, None),
            (v4(192, 0, 2, 7), 0, None),
            (v4(11, 0, 0, 0), END, None),
            (v4(10, 0, 0, 0), 0, None),
            (0, END, None),
        ];
        assert_eq!(
            derive_intervals(&elems, V4MAX, true),
            [
                (v4(10, 0, 0, 0), v4(10, 255, 255, 255)),
                (v4(192, 0, 2, 7), v4(192, 0, 2, 7)),
                (v4(198, 51, 100, 0), v4(198, 51, 100, 127)),
                (v4(255, 255, 255, 0), V4MAX),
            ]
        );
    }

    #[test]
    fn adjacent_ranges_share_a_key_and_merge() {
        // { 0.0.0.0/24, 10.0.0.0/30, 10.0.0.4/30 }: start and end at 10.0.0.4,
        // no end element at 0 because the set starts there.
        let elems = [
            (v4(10, 0, 0, 8), END, None),
            (v4(10, 0, 0, 4), 0, None),
            (v4(10, 0, 0, 4), END, None),
            (v4(10, 0, 0, 0), 0, None),
            (v4(0, 0, 1, 0), END, None),
            (0, 0, None),
        ];
        assert_eq!(
            derive_intervals(&elems, V4MAX, true),
            [(0, v4(0, 0, 0, 255)), (v4(10, 0, 0, 0), v4(10, 0, 0, 7))]
        );
        // in any order
        let mut rev = elems;
        rev.reverse();
        assert_eq!(
            derive_intervals(&rev, V4MAX, true),
            derive_intervals(&elems, V4MAX, true)
        );
    }

    #[test]
    fn ports_up_to_the_maximum() {
        // { 0-22, 5060, 10000-20000, 65000-65535 }
        let elems = [
            (65000, 0, None),
            (20001, END, None),
            (10000, 0, None),
            (5061, END, None),
            (5060, 0, None),
            (23, END, None),
            (0, 0, None),
        ];
        assert_eq!(
            derive_intervals(&elems, 65535, true),
            [(0, 22), (5060, 5060), (10000, 20000), (65000, 65535)]
        );
    }

    #[test]
    fn pipapo_inclusive_ends() {
        let elems = [
            (v4(10, 0, 0, 0), 0, Some(v4(10, 255, 255, 255))),
            (v4(192, 0, 2, 7), 0, Some(v4(192, 0, 2, 7))),
            (v4(11, 0, 0, 0), 0, Some(v4(11, 0, 0, 9))),
            (v4(1, 0, 0, 9), 0, Some(v4(1, 0, 0, 1))), // end before start: dropped
        ];
        assert_eq!(
            derive_intervals(&elems, V4MAX, true),
            [
                (v4(10, 0, 0, 0), v4(11, 0, 0, 9)),
                (v4(192, 0, 2, 7), v4(192, 0, 2, 7))
            ]
        );
        let v6 = [(u128::MAX - 5, 0, Some(u128::MAX)), (0, 0, Some(0))];
        assert_eq!(
            derive_intervals(&v6, u128::MAX, true),
            [(0, 0), (u128::MAX - 5, u128::MAX)]
        );
    }

    #[test]
    fn overlaps_orphans_points_and_catchall() {
        // a start inside an open range, an end with nothing open
        let elems = [
            (10, 0, None),
            (12, 0, None),
            (20, END, None),
            (25, END, None),
            (30, 0, None),
            (31, END, None),
        ];
        assert_eq!(derive_intervals(&elems, 100, true), [(10, 19), (30, 30)]);
        // not an interval set: every element is a point
        let points = [(5, 0, None), (4, 0, None), (9, 0, None)];
        assert_eq!(derive_intervals(&points, 100, false), [(4, 5), (9, 9)]);
        // catch-all covers everything
        let all = [(0, NFT_SET_ELEM_CATCHALL, None), (7, 0, None)];
        assert_eq!(derive_intervals(&all, 100, true), [(0, 100)]);
        assert!(derive_intervals(&[], 100, true).is_empty());
        // a lone start runs to the maximum, also for IPv6
        assert_eq!(
            derive_intervals(&[(1, 0, None)], u128::MAX, true),
            [(1, u128::MAX)]
        );
    }

    #[test]
    fn merge_at_the_top() {
        assert_eq!(
            merge(vec![(5, u128::MAX), (0, 4), (u128::MAX, u128::MAX)]),
            [(0, u128::MAX)]
        );
        assert_eq!(merge(vec![(3, 4), (1, 1)]), [(1, 1), (3, 4)]);
    }

    #[test]
    fn key_decoding() {
        assert_eq!(
            KeyKind::V4.decode(&[192, 0, 2, 1]).unwrap(),
            v4(192, 0, 2, 1)
        );
        assert_eq!(KeyKind::Port.decode(&[0x13, 0xc4, 0, 0]).unwrap(), 5060);
        assert_eq!(KeyKind::Port.decode(&[0x13, 0xc4]).unwrap(), 5060);
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[15] = 1;
        assert_eq!(KeyKind::V6.decode(&a).unwrap(), (0x20u128 << 120) | 1);
        assert!(KeyKind::V6.decode(&[0; 4]).is_err());
    }

    #[test]
    fn dump_request_bytes() {
        let bytes = encode_dump("callgate", "allow4", 0x0102_0304);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            48, 0, 0, 0,         // len: 16 + 4 + 16 + 12
            13, 0x0a,            // NFT_MSG_GETSETELEM | NFNL_SUBSYS_NFTABLES << 8
            0x01, 0x03,          // NLM_F_REQUEST | NLM_F_DUMP
            4, 3, 2, 1,          // seq
            0, 0, 0, 0,          // port
            1, 0, 0, 0,          // NFPROTO_INET, v0, res_id 0
            13, 0, 1, 0, b'c', b'a', b'l', b'l', b'g', b'a', b't', b'e', 0, 0, 0, 0,
            11, 0, 2, 0, b'a', b'l', b'l', b'o', b'w', b'4', 0, 0,
        ];
        // the set attribute: 4 + "allow4\0" = 11, padded to 12
        assert_eq!(bytes, want);
    }

    #[test]
    fn set_key_kinds() {
        let info = |key_type, key_len, flags| SetInfo {
            flags,
            key_type,
            key_len,
        };
        assert_eq!(info(7, 4, 4).key_kind(), Some(KeyKind::V4));
        assert_eq!(info(8, 16, 4).key_kind(), Some(KeyKind::V6));
        assert_eq!(info(13, 2, 4).key_kind(), Some(KeyKind::Port));
        assert_eq!(info(7, 4, 0).key_kind(), Some(KeyKind::V4));
        assert_eq!(info(7, 4, NFT_SET_CONCAT).key_kind(), None);
        assert_eq!(info(19, 4, 0).key_kind(), None); // mark: host order
        assert_eq!(info(0, 4, 0).key_kind(), None);
    }
}
