//! Point lookups: which of many keys does a set cover?
//!
//! The cheap way to check a big interval set: a full dump of the rbtree
//! backend costs O(n²) in the kernel (see `dump.rs`), while one lookup costs
//! O(log n). Each key becomes one `NFT_MSG_GETSETELEM` request *without*
//! `NLM_F_DUMP` (and without `NLM_F_ACK`), holding `NFTA_SET_ELEM_LIST_TABLE`,
//! `NFTA_SET_ELEM_LIST_SET` and one element with just `NFTA_SET_ELEM_KEY`,
//! the same request `nft get element inet t s { 10.1.2.3 }` sends. The kernel
//! answers each request with exactly one message:
//!
//! - a hit: `NFT_MSG_NEWSETELEM` with the element found (for an interval set
//!   the start of the covering range; its content is not needed here);
//! - a miss: `NLMSG_ERROR` `ENOENT`, whose extended-ack offset points at the
//!   element list (a missing table or set points at those attributes
//!   instead, which tells the two apart).
//!
//! # What "covered" means
//!
//! For an rbtree interval set (`flags interval`, single field), the kernel's
//! `get` without `NFT_SET_ELEM_INTERVAL_END` looks for the greatest element
//! key `<=` the key and reports a hit if that element is a range start. So a
//! key is covered exactly when it lies in one of the inclusive ranges of the
//! set, which is what [`super::dump_intervals`] returns:
//!
//! - every address of a prefix, its first and last included;
//! - both ends of a range `a-b`; a single host or port;
//! - the address after a range (the kernel's end element key) is a miss,
//!   unless another range starts there (adjacent ranges);
//! - ranges that reach the maximum (`255.255.255.0/24`, `65000-65535`) and
//!   ranges that start at 0 (nft's lone end element at 0 is no match).
//!
//! Checked on kernel 6.18 by `tests/lookup_netns.rs` at every boundary. For a
//! set without `flags interval` (hash, bitmap) a lookup is an exact match,
//! which is the same thing. Elements that are timed out count as absent, as
//! for packets.
//!
//! # Pipelining
//!
//! Requests go out in batches (up to [`MAX_BATCH`] messages, distinct
//! sequence numbers, one `sendmsg`); the kernel handles them one after the
//! other inside that `sendmsg` and queues the replies on our socket, which are
//! then read and matched by sequence number. A batch is sized so that its
//! replies fit the socket's receive buffer; if they still overrun it
//! (`ENOBUFS`), the unanswered keys are asked again in smaller batches, with
//! fresh sequence numbers.

use std::thread;
use std::time::Duration;

use netlink_packet_core::{NLMSG_ERROR, NLM_F_REQUEST};
use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
    SetElementMessage,
};

use super::conn::{is_overrun, retry, Conn};
use super::dump::{self, KeyKind, SetInfo};
use super::wire::{self, nft_type, Blamed, ReplyKind};
use super::{check_table_and_set, NetlinkError};

/// Most requests per `sendmsg`.
const MAX_BATCH: usize = 256;
/// Fewest requests per `sendmsg` chosen up front (an overrun may still halve
/// the batch further, down to 1).
const MIN_BATCH: usize = 16;
/// Receive-buffer space reckoned per reply when sizing a batch. A trimmed
/// `NEWSETELEM` reply skb takes well under 1 KiB of `sk_rmem_alloc`.
const REPLY_BUDGET: usize = 2048;
/// Consecutive rounds with lost replies or transient kernel errors before
/// giving up.
const MAX_SETBACKS: u32 = 16;
/// `NFT_MSG_NEWSETELEM` as a netlink message type.
const NEWSETELEM_TYPE: u16 = nft_type(wire::NFT_MSG_NEWSETELEM);

/// For each key, whether the set `inet <table> <set>` covers it (see the
/// module docs for the exact meaning at range boundaries).
///
/// Keys as in [`super::dump_intervals`]: an `ipv4_addr` as its `u32` value,
/// an `ipv6_addr` as its `u128` value, an `inet_service` as its `u16` value.
/// The answer has one entry per key, in the same order. Opens its own socket
/// in the calling thread's network namespace; blocking. Costs one
/// `NFT_MSG_GETSET`, then one kernel lookup (O(log n)) per key, pipelined.
///
/// Errors: [`NetlinkError::SetMissing`] when the table or set does not exist
/// (also for an empty `keys`), [`NetlinkError::UnsupportedSet`] for other key
/// types or concatenations, [`NetlinkError::KeyOutOfRange`] for a key above
/// the key type's maximum (nothing is looked up then).
pub fn covered_many(table: &str, set: &str, keys: &[u128]) -> Result<Vec<bool>, NetlinkError> {
    check_table_and_set(table, set)?;
    let mut conn = Conn::open_for_dumps()?;
    let info = query_set(&mut conn, table, set)?;
    let kind = info.readable_key(table, set)?;
    if let Some(index) = keys.iter().position(|&k| k > kind.max()) {
        return Err(NetlinkError::KeyOutOfRange {
            table: table.to_owned(),
            set: set.to_owned(),
            index,
            max: kind.max(),
        });
    }
    let batch = initial_batch(&conn);
    let mut lookup = Lookup {
        conn,
        table,
        set,
        template: Template::new(table, set, kind),
    };
    lookup.run(keys, batch)
}

/// `NFT_MSG_GETSET`, retried a few times on transient errors.
fn query_set(conn: &mut Conn, table: &str, set: &str) -> Result<SetInfo, NetlinkError> {
    retry(format_args!("query of set {set}"), || {
        dump::query_set(conn, table, set)
    })
}

/// Requests per `sendmsg`, from the receive buffer the socket got.
fn initial_batch(conn: &Conn) -> usize {
    match conn.rcvbuf() {
        Ok(rcvbuf) => (rcvbuf / REPLY_BUDGET).clamp(MIN_BATCH, MAX_BATCH),
        Err(e) => {
            log::debug!("netlink: cannot read SO_RCVBUF: {e}");
            MIN_BATCH
        }
    }
}

/// One lookup request, serialized once; each key's request is a copy with
/// its sequence number and key patched in.
#[derive(Debug, Clone)]
struct Template {
    bytes: Vec<u8>,
    /// Where the key bytes start (the `NFTA_DATA_VALUE` payload, the last
    /// thing in the message, followed only by padding).
    key_off: usize,
    width: usize,
}

/// Byte range of `nlmsg_seq` in a `nlmsghdr`.
const SEQ_OFF: usize = 8;

impl Template {
    fn new(table: &str, set: &str, kind: KeyKind) -> Self {
        let width = kind.width();
        let bytes = encode_get(table, set, vec![0; width], 0);
        let key_off = bytes.len().saturating_sub((width + 3) & !3);
        Self {
            bytes,
            key_off,
            width,
        }
    }

    /// Appends the request for `key` with sequence number `seq`.
    fn push(&self, out: &mut Vec<u8>, seq: u32, key: u128) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let key_bytes = key.to_be_bytes();
        let key_bytes = key_bytes
            .get(16usize.saturating_sub(self.width)..)
            .unwrap_or_default();
        let at = start + SEQ_OFF;
        if let Some(dst) = out.get_mut(at..at + 4) {
            dst.copy_from_slice(&seq.to_ne_bytes());
        }
        let at = start + self.key_off;
        if let Some(dst) = out.get_mut(at..at + key_bytes.len()) {
            dst.copy_from_slice(key_bytes);
        }
    }
}

/// `NFT_MSG_GETSETELEM` (no dump, no ack) for one element `key` of
/// `inet <table> <set>`. Attribute order as `wire::blamed` expects: table,
/// set, elements.
fn encode_get(table: &str, set: &str, key: Vec<u8>, seq: u32) -> Vec<u8> {
    let request = NfTablesMessage::GetSetElement(SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_owned()),
            SetElementList::Set(set.to_owned()),
            SetElementList::Elements(vec![ListAttribute::Element(vec![
                SetElementAttribute::Key(DataAttribute::Value(key)),
            ])]),
        ],
    });
    wire::encode(request, NLM_F_REQUEST, seq)
}

/// The kernel's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Hit,
    Miss,
    /// A transient failure: ask again.
    Retry,
}

/// One reply message, as far as we care.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    seq: u32,
    port: u32,
    /// `Some` for `NFT_MSG_NEWSETELEM`, the decoded error for `NLMSG_ERROR`.
    kind: Option<MsgKind>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum MsgKind {
    Element,
    Error(ReplyKind),
}

/// Splits a datagram into messages.
fn parse_datagram(data: &[u8]) -> Result<Vec<Msg>, String> {
    wire::messages(data)
        .map(|msg| {
            let msg = msg?;
            let kind = match msg.message_type() {
                NEWSETELEM_TYPE => Some(MsgKind::Element),
                NLMSG_ERROR => Some(MsgKind::Error(wire::parse_error(&msg)?)),
                _ => None,
            };
            Ok(Msg {
                seq: msg.sequence_number(),
                port: msg.port_number(),
                kind,
            })
        })
        .collect()
}

/// What one batch brought back.
#[derive(Debug)]
struct Round {
    /// Per request of the batch; `None`: no reply (lost in an overrun).
    answers: Vec<Option<Answer>>,
    /// Replies were dropped for lack of receive-buffer space.
    overrun: bool,
    /// The first transient problem of the round, if any.
    transient: Option<NetlinkError>,
    /// A miss whose `ENOENT` did not say which attribute it was about.
    unattributed: bool,
}

struct Lookup<'a> {
    conn: Conn,
    table: &'a str,
    set: &'a str,
    template: Template,
}

impl Lookup<'_> {
    fn run(&mut self, keys: &[u128], mut batch: usize) -> Result<Vec<bool>, NetlinkError> {
        let mut covered = vec![false; keys.len()];
        // indices into `keys` still to ask; retries are appended
        let mut queue: Vec<usize> = (0..keys.len()).collect();
        let mut next = 0;
        let mut setbacks = 0;
        let mut unattributed = false;
        let mut out = Vec::with_capacity(batch.min(keys.len()) * self.template.bytes.len());
        while next < queue.len() {
            let end = next.saturating_add(batch).min(queue.len());
            let chunk = queue.get(next..end).unwrap_or_default().to_vec();
            next = end;

            let first = self.conn.next_seqs(chunk.len() as u32);
            out.clear();
            for (j, &i) in chunk.iter().enumerate() {
                let key = keys.get(i).copied().unwrap_or_default();
                self.template
                    .push(&mut out, first.wrapping_add(j as u32), key);
            }
            self.conn.send(&out)?;

            let round = self.collect(first, chunk.len())?;
            for (&i, answer) in chunk.iter().zip(&round.answers) {
                match answer {
                    Some(Answer::Hit) => {
                        if let Some(c) = covered.get_mut(i) {
                            *c = true;
                        }
                    }
                    Some(Answer::Miss) => {}
                    Some(Answer::Retry) | None => queue.push(i),
                }
            }
            unattributed |= round.unattributed;
            if round.overrun {
                batch = (batch / 2).max(1);
                log::debug!("netlink: lookup replies overran the socket, batch now {batch}");
            }
            match round.transient {
                None => setbacks = 0,
                Some(e) => {
                    setbacks += 1;
                    if setbacks > MAX_SETBACKS {
                        return Err(e);
                    }
                    if !round.overrun {
                        // the kernel was busy: give it a moment
                        thread::sleep(Duration::from_millis(u64::from(setbacks)));
                    }
                }
            }
        }
        if unattributed {
            // The set existed when we started; make sure it still does, so
            // that those misses were misses of elements.
            query_set(&mut self.conn, self.table, self.set)?;
        }
        Ok(covered)
    }

    /// Reads the replies to the `count` requests with sequence numbers
    /// `first ..`. After an overrun, reads only what is queued: the kernel
    /// has answered every request before our `sendmsg` returned, so what is
    /// not there by then was dropped.
    fn collect(&mut self, first: u32, count: usize) -> Result<Round, NetlinkError> {
        let mut round = Round {
            answers: vec![None; count],
            overrun: false,
            transient: None,
            unattributed: false,
        };
        let mut left = count;
        while left > 0 {
            match self.conn.recv_datagram(round.overrun, "element lookup") {
                Ok(true) => {}
                // nothing queued (after an overrun): the rest was dropped
                Ok(false) => break,
                Err(e) if is_overrun(&e) => {
                    round.overrun = true;
                    round.transient.get_or_insert(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            let msgs = parse_datagram(self.conn.datagram()).map_err(NetlinkError::Protocol)?;
            for msg in msgs {
                let Some(rel) = self.conn.slot(msg.port, msg.seq, first, count) else {
                    continue;
                };
                let Some(slot) = round.answers.get_mut(rel) else {
                    continue;
                };
                if slot.is_some() {
                    continue;
                }
                let answer = match msg.kind {
                    Some(MsgKind::Element) => Answer::Hit,
                    Some(MsgKind::Error(ReplyKind::Error {
                        errno,
                        message,
                        offset,
                    })) => match classify(self.table, self.set, errno, message, offset) {
                        Classified::Miss { attributed } => {
                            round.unattributed |= !attributed;
                            Answer::Miss
                        }
                        Classified::Transient(e) => {
                            round.transient.get_or_insert(e);
                            Answer::Retry
                        }
                        Classified::Fatal(e) => return Err(e),
                    },
                    // an ack (not asked for), or anything else: not an answer
                    Some(MsgKind::Error(_)) | None => continue,
                };
                *slot = Some(answer);
                left -= 1;
            }
        }
        Ok(round)
    }
}

/// What an error reply to a lookup means.
#[derive(Debug)]
enum Classified {
    /// The element is not there. `attributed`: the kernel pointed at the
    /// element (not at the table or set, and not nowhere).
    Miss {
        attributed: bool,
    },
    /// Worth asking again (the kernel could not deliver the answer, or was
    /// busy).
    Transient(NetlinkError),
    Fatal(NetlinkError),
}

fn classify(
    table: &str,
    set: &str,
    errno: i32,
    message: Option<String>,
    offset: Option<u32>,
) -> Classified {
    let missing = |what| {
        Classified::Fatal(NetlinkError::SetMissing {
            table: table.to_owned(),
            set: set.to_owned(),
            what,
        })
    };
    if errno == libc::ENOENT {
        return match wire::blamed(table, set, offset) {
            Blamed::Element => Classified::Miss { attributed: true },
            Blamed::Unknown => Classified::Miss { attributed: false },
            Blamed::Table => missing("table does not exist"),
            Blamed::Set => missing("set does not exist"),
        };
    }
    let e = NetlinkError::Kernel {
        op: "look up element",
        table: table.to_owned(),
        set: set.to_owned(),
        errno,
        message,
    };
    if matches!(
        errno,
        libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::EBUSY
    ) {
        Classified::Transient(e)
    } else {
        Classified::Fatal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes() {
        let bytes = encode_get("callgate", "allow4", vec![192, 0, 2, 1], 0x0102_0304);
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            68, 0, 0, 0,         // len: 16 + 4 + 16 + 12 + 20
            13, 0x0a,            // NFT_MSG_GETSETELEM | NFNL_SUBSYS_NFTABLES << 8
            0x01, 0x00,          // NLM_F_REQUEST only: no dump, no ack
            4, 3, 2, 1,          // seq
            0, 0, 0, 0,          // port
            1, 0, 0, 0,          // NFPROTO_INET, v0, res_id 0
            13, 0, 1, 0, b'c', b'a', b'l', b'l', b'g', b'a', b't', b'e', 0, 0, 0, 0, // TABLE
            11, 0, 2, 0, b'a', b'l', b'l', b'o', b'w', b'4', 0, 0,                   // SET
            20, 0, 3, 0x80,      // ELEMENTS (nested)
            16, 0, 1, 0x80,      //   LIST_ELEM (nested)
            12, 0, 1, 0x80,      //     ELEM_KEY (nested)
            8, 0, 1, 0,          //       DATA_VALUE
            192, 0, 2, 1,
        ];
        assert_eq!(bytes, want);
    }

    #[test]
    fn template_matches_direct_encoding() {
        for (kind, key, bytes) in [
            (KeyKind::V4, 0xc000_0201u128, vec![192, 0, 2, 1]),
            (KeyKind::Port, 5060, vec![0x13, 0xc4]),
            (KeyKind::Port, 65535, vec![0xff, 0xff]),
            (
                KeyKind::V6,
                (0x2001_0db8u128 << 96) | 7,
                vec![0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            ),
        ] {
            let t = Template::new("callgate", "s", kind);
            let mut out = vec![0xaa];
            t.push(&mut out, 77, key);
            assert_eq!(out[0], 0xaa);
            assert_eq!(out[1..], encode_get("callgate", "s", bytes, 77), "{kind:?}");
        }
    }

    #[test]
    fn parses_hits_misses_and_other() {
        let mut hit = encode_get("t", "s", vec![1, 2, 3, 4], 5);
        hit[4] = 12; // NFT_MSG_NEWSETELEM
        hit[12..16].copy_from_slice(&9u32.to_ne_bytes());
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
        err.extend_from_slice(&6u32.to_ne_bytes());
        err.extend_from_slice(&9u32.to_ne_bytes());
        err.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        let mut dgram = hit.clone();
        dgram.extend_from_slice(&err);
        let msgs = parse_datagram(&dgram).unwrap();
        assert_eq!(
            msgs,
            [
                Msg {
                    seq: 5,
                    port: 9,
                    kind: Some(MsgKind::Element)
                },
                Msg {
                    seq: 6,
                    port: 9,
                    kind: Some(MsgKind::Error(ReplyKind::Error {
                        errno: libc::ENOENT,
                        message: None,
                        offset: None
                    }))
                }
            ]
        );
        // the request itself (GETSETELEM) is neither
        assert_eq!(
            parse_datagram(&encode_get("t", "s", vec![0; 4], 1)).unwrap()[0].kind,
            None
        );
        assert!(parse_datagram(&[0; 3]).is_err());
    }

    #[test]
    fn enoent_attribution() {
        // offsets: table at 20, set at 36 ("callgate\0" padded), elements at 52
        let c = |errno, offset| classify("callgate", "block4", errno, None, offset);
        assert!(matches!(
            c(libc::ENOENT, Some(52)),
            Classified::Miss { attributed: true }
        ));
        assert!(matches!(
            c(libc::ENOENT, None),
            Classified::Miss { attributed: false }
        ));
        assert!(matches!(
            c(libc::ENOENT, Some(20)),
            Classified::Fatal(NetlinkError::SetMissing {
                what: "table does not exist",
                ..
            })
        ));
        assert!(matches!(
            c(libc::ENOENT, Some(36)),
            Classified::Fatal(NetlinkError::SetMissing {
                what: "set does not exist",
                ..
            })
        ));
        assert!(matches!(c(libc::ENOBUFS, None), Classified::Transient(_)));
        assert!(matches!(
            c(libc::EINVAL, None),
            Classified::Fatal(NetlinkError::Kernel {
                errno: libc::EINVAL,
                ..
            })
        ));
    }
}
