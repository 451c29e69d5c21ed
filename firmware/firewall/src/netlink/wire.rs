//! Bytes on the wire: set-element keys, the requests we send (the
//! nfnetlink batch of element writes, queries and dumps) and the replies we
//! get back (their messages, their attributes, the `NLMSG_ERROR`
//! acknowledgements).
//!
//! Everything here is pure (no socket), so it is unit tested byte for byte.
//! Message encoding goes through the `netlink-packet-netfilter` types; only
//! the key layout (which that crate leaves to the caller) is done by hand.
//! Replies are read with `netlink-packet-core`'s buffers ([`messages`],
//! [`attrs`]) rather than decoded into its types: the callers pick out the
//! few attributes they need, and the extended-ack TLVs of error replies
//! ([`parse_error`]) are not decoded by that crate at all.

use std::net::IpAddr;

use netlink_packet_core::{
    DefaultNla, Emitable, NetlinkBuffer, NetlinkMessage, NlasIterator, NLA_TYPE_MASK, NLMSG_ERROR,
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_netfilter::{
    nftables::{
        DataAttribute, ListAttribute, NfTablesMessage, SetAttribute, SetElementAttribute,
        SetElementList, SetElementMessage, SetMessage,
    },
    none::ControlMessage,
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

use super::PinholeProto;

/// `NFNL_SUBSYS_NFTABLES` (linux/netfilter/nfnetlink.h): the upper byte of
/// an nftables message type; the `res_id` of a batch-begin message names the
/// subsystem the batch is for.
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWSET` / `NFT_MSG_NEWSETELEM` (`enum nf_tables_msg_types`):
/// what `GETSET` / `GETSETELEM` are answered with.
pub(crate) const NFT_MSG_NEWSET: u16 = 9;
pub(crate) const NFT_MSG_NEWSETELEM: u16 = 12;
/// `NFNETLINK_V0`.
const NFNETLINK_V0: u8 = 0;
/// Length of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// Length of `struct nfgenmsg` (family, version, res_id).
const NFGENMSG_LEN: usize = 4;
/// Extended-ack TLVs after a `struct nlmsgerr` (linux/netlink.h).
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_OFFS: u16 = 2;

/// `NFTA_DATA_VALUE` (`enum nft_data_attributes`), inside a key attribute.
const NFTA_DATA_VALUE: u16 = 1;

/// `NFT_REG32_SIZE`: every component of a concatenated key occupies a whole
/// number of 32-bit registers, zero padded at the end.
const REG32: usize = 4;

/// Key of an `ipv4_addr . ipv4_addr . inet_proto . inet_service` (or the
/// ipv6 variant) element: source, destination, protocol, port.
///
/// Layout, per component, padded to 4 bytes:
/// - source and destination: 4 (IPv4) or 16 (IPv6) bytes each, network order;
/// - `inet_proto`: 1 byte (`IPPROTO_TCP` = 6, `IPPROTO_UDP` = 17) + 3 zero;
/// - `inet_service`: 2 bytes network order + 2 zero.
///
/// The same layout in both kinds of pinhole set. In the hash sets (`flags
/// timeout`, one source address) an element is this key alone. In the
/// interval sets (`flags interval, timeout`, a source prefix) an element is a
/// range of keys: its `NFTA_SET_ELEM_KEY` is this key with the first source
/// address of the range, its `NFTA_SET_ELEM_KEY_END` the same with the last
/// one. Both addresses must be canonical (see [`canonical`]) and of one
/// family.
pub(crate) fn pinhole_key(src: IpAddr, dst: IpAddr, proto: PinholeProto, port: u16) -> Vec<u8> {
    let mut key = addr_key(src);
    key.extend(addr_key(dst));
    push_reg32(&mut key, &[proto.ipproto()]);
    push_reg32(&mut key, &port.to_be_bytes());
    key
}

/// Key of an `ipv4_addr` / `ipv6_addr` element: the address in network order.
pub(crate) fn addr_key(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Appends `bytes` and zero-pads to the next register boundary.
fn push_reg32(key: &mut Vec<u8>, bytes: &[u8]) {
    key.extend_from_slice(bytes);
    let pad = (REG32 - bytes.len() % REG32) % REG32;
    key.resize(key.len() + pad, 0);
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket
/// reports for an IPv4 peer) are turned into IPv4, since the packets they
/// stand for are matched by the IPv4 sets.
pub(crate) fn canonical(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// What a set-element message does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElemOp {
    /// `NFT_MSG_NEWSETELEM` with `NLM_F_CREATE | NLM_F_EXCL` and a timeout in
    /// milliseconds (never 0: 0 would mean "never expires").
    Add { timeout_ms: u64 },
    /// `NFT_MSG_NEWSETELEM` with `NLM_F_CREATE` only: creates the element with this
    /// timeout if it is absent and succeeds without touching it if it is there (kernels
    /// from 6.10 restart its timeout). Never fails because of the element itself, so a
    /// batch that starts with it can follow with a `Delete` that cannot miss.
    Ensure { timeout_ms: u64 },
    /// `NFT_MSG_DELSETELEM`.
    Delete,
}

/// One set-element message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ElemRequest {
    pub(crate) op: ElemOp,
    pub(crate) set: &'static str,
    pub(crate) key: Vec<u8>,
    /// `NFTA_SET_ELEM_KEY_END`: the inclusive end of an interval-set element
    /// (sent in deletions too: the kernel finds the element by both).
    pub(crate) key_end: Option<Vec<u8>>,
}

/// Which attribute of our set-element message the kernel blamed
/// (`NLMSGERR_ATTR_OFFS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blamed {
    Table,
    Set,
    Element,
    /// Somewhere we did not expect (or no offset given).
    Unknown,
}

/// Byte offsets, from the start of the `nlmsghdr`, of the top-level
/// attributes of a set-element message as [`setelem_message`] lays it out:
/// table, set, elements (the kernel reports the offset of the attribute it
/// rejected).
fn setelem_offsets(table: &str, set: &str) -> (usize, usize, usize) {
    let table_off = NLMSG_HDRLEN + NFGENMSG_LEN;
    let set_off = table_off + SetElementList::Table(table.to_owned()).buffer_len();
    let elems_off = set_off + SetElementList::Set(set.to_owned()).buffer_len();
    (table_off, set_off, elems_off)
}

/// Maps an `NLMSGERR_ATTR_OFFS` value to the attribute it points into.
pub(crate) fn blamed(table: &str, set: &str, offset: Option<u32>) -> Blamed {
    let Some(off) = offset.and_then(|o| usize::try_from(o).ok()) else {
        return Blamed::Unknown;
    };
    let (table_off, set_off, elems_off) = setelem_offsets(table, set);
    if off < table_off {
        Blamed::Unknown
    } else if off < set_off {
        Blamed::Table
    } else if off < elems_off {
        Blamed::Set
    } else {
        Blamed::Element
    }
}

fn serialize(mut msg: NetlinkMessage<NetfilterMessage>, out: &mut Vec<u8>) {
    msg.finalize();
    let start = out.len();
    out.resize(start + msg.buffer_len(), 0);
    if let Some(dst) = out.get_mut(start..) {
        msg.serialize(dst);
    }
}

/// One message with `flags` and `seq`. Port 0: the kernel fills in our port
/// id from the socket.
fn message(
    header: NetfilterHeader,
    inner: impl Into<NetfilterMessageInner>,
    flags: u16,
    seq: u32,
) -> NetlinkMessage<NetfilterMessage> {
    let mut msg = NetlinkMessage::from(NetfilterMessage::new(header, inner));
    msg.header.flags = flags;
    msg.header.sequence_number = seq;
    msg
}

/// The `nfgenmsg` of every request about `inet` tables.
fn inet() -> NetfilterHeader {
    NetfilterHeader::new(NetfilterProtoFamily::Inet, NFNETLINK_V0, 0)
}

/// `request` about family `inet`, with `flags` (`NLM_F_REQUEST` included by
/// the caller) and `seq`, as bytes to send on their own.
pub(crate) fn encode(request: NfTablesMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    serialize(message(inet(), request, flags, seq), &mut out);
    out
}

/// `NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM` for one element of
/// `inet <table> <set>`, always with `NLM_F_ACK` so that every message gets
/// its own acknowledgement.
fn setelem_message(table: &str, req: &ElemRequest, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    let mut elem = vec![SetElementAttribute::Key(DataAttribute::Value(
        req.key.clone(),
    ))];
    if let Some(end) = &req.key_end {
        elem.push(SetElementAttribute::KeyEnd(vec![DefaultNla::new(
            NFTA_DATA_VALUE,
            end.clone(),
        )]));
    }
    let (flags, body) = match req.op {
        ElemOp::Add { timeout_ms } => {
            elem.push(SetElementAttribute::Timeout(timeout_ms));
            (NLM_F_CREATE | NLM_F_EXCL, elem)
        }
        ElemOp::Ensure { timeout_ms } => {
            elem.push(SetElementAttribute::Timeout(timeout_ms));
            (NLM_F_CREATE, elem)
        }
        ElemOp::Delete => (0, elem),
    };
    // Attribute order matters for `setelem_offsets`: table, set, elements.
    let list = SetElementMessage {
        attributes: vec![
            SetElementList::Table(table.to_owned()),
            SetElementList::Set(req.set.to_owned()),
            SetElementList::Elements(vec![ListAttribute::Element(body)]),
        ],
    };
    let inner = match req.op {
        ElemOp::Add { .. } | ElemOp::Ensure { .. } => NfTablesMessage::NewSetElement(list),
        ElemOp::Delete => NfTablesMessage::DeleteSetElement(list),
    };
    message(inet(), inner, NLM_F_REQUEST | NLM_F_ACK | flags, seq)
}

fn control_message(msg: ControlMessage, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    let header = NetfilterHeader::new(
        NetfilterProtoFamily::Unspec,
        NFNETLINK_V0,
        NFNL_SUBSYS_NFTABLES,
    );
    message(header, msg, NLM_F_REQUEST, seq)
}

/// One nfnetlink transaction:
/// `NFNL_MSG_BATCH_BEGIN` (seq `first_seq`), the element messages (seq
/// `first_seq + 1 + i`), `NFNL_MSG_BATCH_END`. The kernel applies all of it
/// or nothing. Returns the bytes (to be sent in a single `sendmsg`) and the
/// number of sequence numbers used.
pub(crate) fn encode_batch(table: &str, reqs: &[ElemRequest], first_seq: u32) -> (Vec<u8>, u32) {
    let mut out = Vec::with_capacity(64 + reqs.len() * 128);
    let mut seq = first_seq;
    serialize(control_message(ControlMessage::BatchBegin, seq), &mut out);
    for req in reqs {
        seq = seq.wrapping_add(1);
        serialize(setelem_message(table, req, seq), &mut out);
    }
    seq = seq.wrapping_add(1);
    serialize(control_message(ControlMessage::BatchEnd, seq), &mut out);
    (out, seq.wrapping_sub(first_seq).wrapping_add(1))
}

/// `NFT_MSG_GETSET` for `inet <table> <set>` (not a batch, not a dump):
/// answered by one `NFT_MSG_NEWSET` and an ack, or by an error. Used only to
/// tell "element missing" from "set missing" on kernels that do not say which
/// attribute an `ENOENT` is about.
pub(crate) fn encode_getset(table: &str, set: &str, seq: u32) -> Vec<u8> {
    let request = NfTablesMessage::GetSet(SetMessage {
        attributes: vec![
            SetAttribute::Table(table.to_owned()),
            SetAttribute::Name(set.to_owned()),
        ],
    });
    encode(request, NLM_F_REQUEST | NLM_F_ACK, seq)
}

/// One message of a reply datagram, as far as we care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) seq: u32,
    pub(crate) port: u32,
    pub(crate) kind: ReplyKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    /// `NLMSG_ERROR` with error 0.
    Ack,
    /// `NLMSG_ERROR` with a negative errno (stored positive here), plus the
    /// extended ack if the kernel sent one.
    Error {
        errno: i32,
        message: Option<String>,
        offset: Option<u32>,
    },
    /// Anything else (e.g. the `NEWSET` answering a `GETSET`, `NLMSG_DONE`).
    Other,
}

/// The netlink messages of a datagram, each cut to its own length. Ends
/// after the first malformed one (reported as an error).
pub(crate) fn messages(data: &[u8]) -> impl Iterator<Item = Result<NetlinkBuffer<&[u8]>, String>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = data.get(pos..).filter(|r| !r.is_empty())?;
        Some(match NetlinkBuffer::new_checked(rest) {
            Ok(msg) => {
                let len = msg.length() as usize;
                // NLMSG_ALIGN; `new_checked` guarantees len >= 16, so this
                // advances.
                pos = pos.saturating_add((len + 3) & !3);
                Ok(NetlinkBuffer::new(rest.get(..len).unwrap_or_default()))
            }
            Err(e) => {
                pos = data.len();
                Err(e.to_string())
            }
        })
    })
}

/// Splits a datagram into netlink messages and decodes the acks / errors.
pub(crate) fn parse_datagram(data: &[u8]) -> Result<Vec<Reply>, String> {
    messages(data)
        .map(|msg| {
            let msg = msg?;
            let kind = if msg.message_type() == NLMSG_ERROR {
                parse_error(&msg)?
            } else {
                ReplyKind::Other
            };
            Ok(Reply {
                seq: msg.sequence_number(),
                port: msg.port_number(),
                kind,
            })
        })
        .collect()
}

/// An `NLMSG_ERROR` message: its payload is `struct nlmsgerr { int error;
/// struct nlmsghdr msg; }`, followed by the rest of the offending message
/// unless the reply has `NLM_F_CAPPED`, followed by extended-ack TLVs if it
/// has `NLM_F_ACK_TLVS`.
pub(crate) fn parse_error(msg: &NetlinkBuffer<&[u8]>) -> Result<ReplyKind, String> {
    let (flags, payload) = (msg.flags(), msg.payload());
    let code = ne_u32(payload)
        .map(|c| c as i32)
        .ok_or_else(|| format!("NLMSG_ERROR too short ({} bytes)", payload.len()))?;
    if code == 0 {
        return Ok(ReplyKind::Ack);
    }
    let mut message = None;
    let mut offset = None;
    if flags & NLM_F_ACK_TLVS != 0 {
        let echoed = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            // the whole original message; its length is its first u32
            payload
                .get(4..)
                .and_then(ne_u32)
                .map_or(NLMSG_HDRLEN, |len| (len as usize + 3) & !3)
        };
        // The TLVs are best effort: a malformed tail loses the detail, not the
        // errno.
        let tlvs = payload.get(4 + echoed..).unwrap_or_default();
        for (kind, v) in attrs(tlvs).flatten() {
            match kind {
                NLMSGERR_ATTR_MSG => {
                    let text = cstr(v);
                    if !text.is_empty() {
                        message = Some(text);
                    }
                }
                NLMSGERR_ATTR_OFFS => offset = ne_u32(v),
                _ => {}
            }
        }
    }
    Ok(ReplyKind::Error {
        errno: code.saturating_neg(),
        message,
        offset,
    })
}

/// `(type without NLA_F_NESTED / NLA_F_NET_BYTEORDER, value)` of each
/// attribute in `buf`. Ends after the first malformed one (reported as an
/// error).
pub(crate) fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), String>> {
    NlasIterator::new(buf).map(|nla| {
        let nla = nla.map_err(|e| e.to_string())?;
        let kind = nla.kind() & NLA_TYPE_MASK;
        let len = usize::from(nla.length());
        // `new_checked` guarantees 4 <= len <= the buffer's length
        let value = nla.into_inner().get(4..len).unwrap_or_default();
        Ok((kind, value))
    })
}

/// The attributes after the `nfgenmsg` of an nftables message.
pub(crate) fn nfgen_attrs(payload: &[u8]) -> Result<&[u8], String> {
    payload
        .get(NFGENMSG_LEN..)
        .ok_or_else(|| format!("nftables message of {} bytes", payload.len()))
}

/// A NUL-terminated string attribute (also accepted without the NUL).
pub(crate) fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(v.get(..end).unwrap_or_default()).into_owned()
}

/// The first 4 bytes of `v` in host order (netlink headers, `nlmsgerr`).
pub(crate) fn ne_u32(v: &[u8]) -> Option<u32> {
    v.get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_ne_bytes)
}

/// A big-endian u32 attribute value (nftables attributes).
pub(crate) fn be_u32(v: &[u8]) -> Result<u32, String> {
    v.get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| format!("u32 attribute of {} bytes", v.len()))
}

/// A big-endian u64 attribute value.
pub(crate) fn be_u64(v: &[u8]) -> Result<u64, String> {
    v.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| format!("u64 attribute of {} bytes", v.len()))
}

/// An nftables message type as it appears in the `nlmsghdr`.
pub(crate) const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// `nft --debug=netlink add element inet t p4 '{ 203.0.113.0/28 .
    /// 198.51.100.10 . udp . 40000 timeout 10s }'` (set `p4` of type
    /// `ipv4_addr . ipv4_addr . inet_proto . inet_service`, `flags interval,
    /// timeout`) prints the key and the key end as host-order (here
    /// little-endian) 32-bit words:
    /// `element 007100cb 0a6433c6 00000011 0000409c  - 0f7100cb 0a6433c6 00000011 0000409c`.
    fn nft_debug_words(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn pinhole4_prefix_key_matches_nft_debug_netlink() {
        let dst = v4(198, 51, 100, 10);
        let key = pinhole_key(v4(203, 0, 113, 0), dst, PinholeProto::Udp, 40000);
        let end = pinhole_key(v4(203, 0, 113, 15), dst, PinholeProto::Udp, 40000);
        assert_eq!(
            key,
            nft_debug_words(&[0x0071_00cb, 0x0a64_33c6, 0x0000_0011, 0x0000_409c])
        );
        assert_eq!(
            end,
            nft_debug_words(&[0x0f71_00cb, 0x0a64_33c6, 0x0000_0011, 0x0000_409c])
        );
        assert_eq!(
            key,
            [203, 0, 113, 0, 198, 51, 100, 10, 17, 0, 0, 0, 0x9c, 0x40, 0, 0]
        );
    }

    #[test]
    fn pinhole4_single_source_key_matches_nft_debug_netlink() {
        // a hash set (`flags timeout`, no interval) holds the key alone:
        // nft --debug=netlink add element inet t p4h
        //   '{ 203.0.113.5 . 198.51.100.10 . tcp . 5060 timeout 10s }'
        // element 057100cb 0a6433c6 00000006 0000c413  : 0 [end]
        let key = pinhole_key(
            v4(203, 0, 113, 5),
            v4(198, 51, 100, 10),
            PinholeProto::Tcp,
            5060,
        );
        assert_eq!(
            key,
            nft_debug_words(&[0x0571_00cb, 0x0a64_33c6, 0x0000_0006, 0x0000_c413])
        );
    }

    #[test]
    fn pinhole6_single_source_key_matches_nft_debug_netlink() {
        // nft --debug=netlink add element inet t p6h
        //   '{ 2001:db8:1::7 . 2001:db8::10 . udp . 10000 timeout 30s }'
        // element b80d0120 00000100 00000000 07000000 b80d0120 00000000 00000000 10000000
        //         00000011 00001027  : 0 [end]
        let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        let key = pinhole_key(
            v6("2001:db8:1::7"),
            v6("2001:db8::10"),
            PinholeProto::Udp,
            10000,
        );
        assert_eq!(
            key,
            nft_debug_words(&[
                0xb80d_0120,
                0x0000_0100,
                0x0000_0000,
                0x0700_0000,
                0xb80d_0120,
                0x0000_0000,
                0x0000_0000,
                0x1000_0000,
                0x0000_0011,
                0x0000_1027,
            ])
        );
    }

    #[test]
    fn pinhole6_key_matches_nft_debug_netlink() {
        // nft --debug=netlink add element inet t p6
        //   '{ 2001:db8:1::/48 . 2001:db8::10 . udp . 10000 timeout 30s }'
        // element b80d0120 00000100 00000000 00000000 b80d0120 00000000 00000000 10000000
        //         00000011 00001027
        //       - b80d0120 ffff0100 ffffffff ffffffff b80d0120 00000000 00000000 10000000
        //         00000011 00001027
        let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        let dst = v6("2001:db8::10");
        let key = pinhole_key(v6("2001:db8:1::"), dst, PinholeProto::Udp, 10000);
        let end = pinhole_key(
            v6("2001:db8:1:ffff:ffff:ffff:ffff:ffff"),
            dst,
            PinholeProto::Udp,
            10000,
        );
        let tail = [
            0xb80d_0120,
            0x0000_0000,
            0x0000_0000,
            0x1000_0000,
            0x0000_0011,
            0x0000_1027,
        ];
        let mut want = vec![0xb80d_0120, 0x0000_0100, 0x0000_0000, 0x0000_0000];
        want.extend(tail);
        assert_eq!(key, nft_debug_words(&want));
        let mut want_end = vec![0xb80d_0120, 0xffff_0100, 0xffff_ffff, 0xffff_ffff];
        want_end.extend(tail);
        assert_eq!(end, nft_debug_words(&want_end));
        assert_eq!(key.len(), 40);
    }

    #[test]
    fn block_key_matches_nft_debug_netlink() {
        // nft --debug=netlink add element inet callgate block4
        //   '{ 203.0.113.9 timeout 1m }'  ->  element 097100cb
        let key = addr_key(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)));
        assert_eq!(key, nft_debug_words(&[0x0971_00cb]));
    }

    #[test]
    fn mapped_v6_goes_to_v4() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(canonical(mapped), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    /// The element message, compared with `nft --debug=mnl add element inet t
    /// p4 '{ 203.0.113.0/28 . 198.51.100.10 . udp . 40000 timeout 10s }'`:
    /// nft adds a NFTA_SET_ELEM_LIST_SET_ID and puts the timeout before the
    /// key; we do neither, the rest is the same bytes (table and set names
    /// aside).
    #[test]
    fn batch_bytes() {
        let dst = v4(198, 51, 100, 10);
        let req = ElemRequest {
            op: ElemOp::Add { timeout_ms: 10_000 },
            set: "pinhole4",
            key: pinhole_key(v4(203, 0, 113, 0), dst, PinholeProto::Udp, 40000),
            key_end: Some(pinhole_key(
                v4(203, 0, 113, 15),
                dst,
                PinholeProto::Udp,
                40000,
            )),
        };
        let (bytes, used) = encode_batch("callgate", &[req], 7);
        assert_eq!(used, 3);
        let begin: [u8; 20] = [
            20, 0, 0, 0, // len
            0x10, 0x00, // NFNL_MSG_BATCH_BEGIN, subsys 0
            0x01, 0x00, // NLM_F_REQUEST
            7, 0, 0, 0, // seq
            0, 0, 0, 0, // port
            0, 0, 0x00, 0x0a, // AF_UNSPEC, v0, res_id = NFNL_SUBSYS_NFTABLES (BE)
        ];
        #[rustfmt::skip]
        let elem: Vec<u8> = vec![
            120, 0, 0, 0,             // len: 20 + table 16 + set 16 + elements 68
            0x0c, 0x0a,               // NFT_MSG_NEWSETELEM | NFNL_SUBSYS_NFTABLES << 8
            0x05, 0x06,               // REQUEST|ACK | EXCL|CREATE
            8, 0, 0, 0,               // seq
            0, 0, 0, 0,               // port
            1, 0, 0, 0,               // NFPROTO_INET, v0, res_id 0
            13, 0, 1, 0, b'c', b'a', b'l', b'l', b'g', b'a', b't', b'e', 0, 0, 0, 0, // TABLE
            13, 0, 2, 0, b'p', b'i', b'n', b'h', b'o', b'l', b'e', b'4', 0, 0, 0, 0, // SET
            68, 0, 3, 0x80,           // ELEMENTS (nested)
            64, 0, 1, 0x80,           //   LIST_ELEM (nested)
            24, 0, 1, 0x80,           //     ELEM_KEY (nested)
            20, 0, 1, 0,              //       DATA_VALUE
            203, 0, 113, 0, 198, 51, 100, 10, 17, 0, 0, 0, 0x9c, 0x40, 0, 0,
            24, 0, 10, 0x80,          //     ELEM_KEY_END (nested)
            20, 0, 1, 0,              //       DATA_VALUE
            203, 0, 113, 15, 198, 51, 100, 10, 17, 0, 0, 0, 0x9c, 0x40, 0, 0,
            12, 0, 4, 0,              //     ELEM_TIMEOUT, u64 BE ms
            0, 0, 0, 0, 0, 0, 0x27, 0x10,
        ];
        let end: [u8; 20] = [
            20, 0, 0, 0, 0x11, 0x00, 0x01, 0x00, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x0a,
        ];
        let mut want = begin.to_vec();
        want.extend_from_slice(&elem);
        want.extend_from_slice(&end);
        assert_eq!(bytes, want);
    }

    /// A hash-set pinhole element, compared with `nft --debug=mnl add element inet
    /// callgate pinhole4_host '{ 203.0.113.5 . 198.51.100.10 . udp . 40000 timeout 10s }'`
    /// (set of type `ipv4_addr . ipv4_addr . inet_proto . inet_service`, `flags timeout`):
    /// nft sends `LIST_ELEM { TIMEOUT 10000, KEY { DATA_VALUE cb007105 c633640a 11000000
    /// 9c400000 } }` (timeout first) and a NFTA_SET_ELEM_LIST_SET_ID; we send the same key
    /// and timeout, no key end.
    #[test]
    fn hash_set_element_bytes() {
        let req = ElemRequest {
            op: ElemOp::Ensure { timeout_ms: 10_000 },
            set: "pinhole4_host",
            key: pinhole_key(
                v4(203, 0, 113, 5),
                v4(198, 51, 100, 10),
                PinholeProto::Udp,
                40000,
            ),
            key_end: None,
        };
        let (bytes, used) = encode_batch("callgate", &[req], 7);
        assert_eq!(used, 3);
        #[rustfmt::skip]
        let elem: Vec<u8> = vec![
            100, 0, 0, 0,             // len: 20 + table 16 + set 20 + elements 44
            0x0c, 0x0a,               // NFT_MSG_NEWSETELEM | NFNL_SUBSYS_NFTABLES << 8
            0x05, 0x04,               // REQUEST|ACK | CREATE (no EXCL: ensure)
            8, 0, 0, 0,               // seq
            0, 0, 0, 0,               // port
            1, 0, 0, 0,               // NFPROTO_INET, v0, res_id 0
            13, 0, 1, 0, b'c', b'a', b'l', b'l', b'g', b'a', b't', b'e', 0, 0, 0, 0, // TABLE
            18, 0, 2, 0, b'p', b'i', b'n', b'h', b'o', b'l', b'e', b'4', // SET
            b'_', b'h', b'o', b's', b't', 0, 0, 0,
            44, 0, 3, 0x80,           // ELEMENTS (nested)
            40, 0, 1, 0x80,           //   LIST_ELEM (nested)
            24, 0, 1, 0x80,           //     ELEM_KEY (nested)
            20, 0, 1, 0,              //       DATA_VALUE
            203, 0, 113, 5, 198, 51, 100, 10, 17, 0, 0, 0, 0x9c, 0x40, 0, 0,
            12, 0, 4, 0,              //     ELEM_TIMEOUT, u64 BE ms
            0, 0, 0, 0, 0, 0, 0x27, 0x10,
        ];
        assert_eq!(&bytes[20..bytes.len() - 20], elem.as_slice());
    }

    #[test]
    fn delete_message_flags_and_type() {
        let req = ElemRequest {
            op: ElemOp::Delete,
            set: "block4",
            key: vec![203, 0, 113, 9],
            key_end: None,
        };
        let (bytes, used) = encode_batch("callgate", &[req.clone(), req], u32::MAX);
        assert_eq!(used, 4);
        let replies = parse_datagram(&bytes).unwrap();
        let seqs: Vec<u32> = replies.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [u32::MAX, 0, 1, 2]);
        // second message: DELSETELEM, REQUEST|ACK only
        assert_eq!(&bytes[20 + 4..20 + 8], &[0x0e, 0x0a, 0x05, 0x00]);
    }

    #[test]
    fn blame_offsets() {
        // 16 nlmsghdr + 4 nfgenmsg = 20: table; +16 ("callgate\0" padded): set;
        // +16 ("pinhole4\0" padded): elements.
        assert_eq!(blamed("callgate", "pinhole4", Some(20)), Blamed::Table);
        assert_eq!(blamed("callgate", "pinhole4", Some(36)), Blamed::Set);
        assert_eq!(blamed("callgate", "pinhole4", Some(52)), Blamed::Element);
        assert_eq!(blamed("callgate", "pinhole4", Some(56)), Blamed::Element);
        assert_eq!(blamed("callgate", "pinhole4", Some(4)), Blamed::Unknown);
        assert_eq!(blamed("callgate", "pinhole4", None), Blamed::Unknown);
    }

    #[test]
    fn parses_ack_and_extended_error() {
        let mut dgram = Vec::new();
        // ack for seq 5, port 77, capped
        dgram.extend_from_slice(&36u32.to_ne_bytes());
        dgram.extend_from_slice(&2u16.to_ne_bytes());
        dgram.extend_from_slice(&NLM_F_CAPPED.to_ne_bytes());
        dgram.extend_from_slice(&5u32.to_ne_bytes());
        dgram.extend_from_slice(&77u32.to_ne_bytes());
        dgram.extend_from_slice(&0i32.to_ne_bytes());
        dgram.extend_from_slice(&[0; 16]);
        // ENOENT for seq 6, capped, with MSG and OFFS TLVs
        let msg = b"No such file\0";
        let msg_nla_len = 4 + msg.len();
        let tlv_len = ((msg_nla_len + 3) & !3) + 8;
        let total = 16 + 4 + 16 + tlv_len;
        dgram.extend_from_slice(&(total as u32).to_ne_bytes());
        dgram.extend_from_slice(&2u16.to_ne_bytes());
        dgram.extend_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        dgram.extend_from_slice(&6u32.to_ne_bytes());
        dgram.extend_from_slice(&77u32.to_ne_bytes());
        dgram.extend_from_slice(&(-2i32).to_ne_bytes());
        dgram.extend_from_slice(&[0; 16]);
        dgram.extend_from_slice(&(msg_nla_len as u16).to_ne_bytes());
        dgram.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        dgram.extend_from_slice(msg);
        dgram.resize(dgram.len() + ((4 - msg_nla_len % 4) % 4), 0);
        dgram.extend_from_slice(&8u16.to_ne_bytes());
        dgram.extend_from_slice(&NLMSGERR_ATTR_OFFS.to_ne_bytes());
        dgram.extend_from_slice(&36u32.to_ne_bytes());
        assert_eq!(dgram.len(), 36 + total);

        let replies = parse_datagram(&dgram).unwrap();
        assert_eq!(
            replies,
            [
                Reply {
                    seq: 5,
                    port: 77,
                    kind: ReplyKind::Ack
                },
                Reply {
                    seq: 6,
                    port: 77,
                    kind: ReplyKind::Error {
                        errno: 2,
                        message: Some("No such file".into()),
                        offset: Some(36),
                    }
                }
            ]
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_datagram(&[1, 2, 3]).is_err());
        let mut short = vec![0u8; 16];
        short[0] = 200; // length beyond buffer
        assert!(parse_datagram(&short).is_err());
    }
}
