//! Reading table `inet <table>` back over netlink: its chains
//! (`NFT_MSG_GETCHAIN`), sets (`NFT_MSG_GETSET`) and rules
//! (`NFT_MSG_GETRULE`) as dumps, without running `nft`.
//!
//! `nft -j list table` fetches every set's elements even to print rules
//! (about 1.7 s with a 100k-element set); none of these dumps touches set
//! elements, so their cost depends on the number of chains, sets and rules
//! only.
//!
//! # What is decoded
//!
//! - Rules: chain, handle, the comment (`NFTA_RULE_USERDATA`, libnftnl's
//!   TLV `NFTNL_UDATA_RULE_COMMENT`), the verdict of the `immediate`
//!   expression that writes the verdict register, the packets / bytes of
//!   the (last) `counter` expression, and every other expression in order
//!   ([`KernelExpr`]): the loads (`meta`, `payload`, `ct`), what works on
//!   registers (`bitwise`, `byteorder`) and what matches (`cmp`, `lookup`,
//!   `range`), with their registers and data; any other expression by name.
//!   A verdict given by another expression (`reject`, `queue`, a verdict
//!   map) reads as "".
//! - Chains: name, hook and policy of base chains (`None` for regular
//!   chains), named as nft names them in `inet` tables.
//! - Sets: name, key type (nft's datatype id in `NFTA_SET_KEY_TYPE`, split
//!   into 6-bit components for concatenations), flags, and whether the set is
//!   an anonymous one that nft made for an inline `{ ... }` in a rule.
//!   Maps are included (flag `"map"`).
//!
//! # Consistency
//!
//! Each dump is retried (on a fresh socket) when the kernel flags it as
//! interrupted by a ruleset change (`NLM_F_DUMP_INTR`), on `EINTR` / `EBUSY`
//! / `EAGAIN` and on a receive-buffer overrun. [`dump_table`] reads all
//! three plus the table itself on one socket between two reads of the
//! ruleset generation (`NFT_MSG_GETGEN`) and starts over if it changed, so
//! its parts belong to the same ruleset (any commit, including a pinhole
//! written by [`super::SetWriter`], bumps the generation).
//!
//! [`dump_table`] also reads the elements of the table's anonymous sets (the
//! `{ ... }` written inline in rules), so that what a rule matches can be
//! told from its expressions; they are small and constant.
//!
//! Only tables of family `inet` are read. A missing table gives empty lists
//! from [`dump_rules`], [`dump_chains`] and [`dump_sets`], and `None` from
//! [`dump_table`].

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, GenMessage, NfTablesMessage, RuleAttribute, RuleMessage,
    SetAttribute, SetMessage, TableAttribute, TableMessage,
};

use std::collections::BTreeMap;

use super::conn::{retry, Attempt, Conn};
use super::dump::{self, data_value, KernelElem};
use super::wire::{attrs, be_u32, be_u64, cstr, encode, nfgen_attrs, nft_type, NFT_MSG_NEWSET};
use super::{check_table, NetlinkError};

/// A rule of the table, as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRule {
    pub chain: String,
    pub handle: u64,
    /// The rule comment (`NFTA_RULE_USERDATA`, `NFTNL_UDATA_RULE_COMMENT`
    /// TLV); "" when none.
    pub comment: String,
    /// "accept", "drop", "jump NAME", "goto NAME", "return", "continue"
    /// (also "break", "queue", "stolen", "repeat", or "verdict N" for an
    /// unknown code), or "" when the rule has no `immediate` verdict.
    pub verdict: String,
    /// From the rule's `counter` expression (the last one if several; 0
    /// when none).
    pub packets: u64,
    pub bytes: u64,
    /// The rule's expressions in order, except `counter` and the verdict's
    /// `immediate`.
    pub exprs: Vec<KernelExpr>,
}

/// One expression of a rule (see [`KernelRule::exprs`]). Registers are the
/// kernel's numbers: 0 the verdict, 1 to 4 the 16-byte registers, 8 to 23
/// the 4-byte ones (`NFT_REG32_00` ..).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelExpr {
    /// `meta load KEY => DREG` (`NFT_META_*`, e.g. 6 `iifname`, 16 `l4proto`).
    Meta { key: u32, dreg: u32 },
    /// `payload load LEN @ BASE + OFFSET => DREG` (base 0 link layer, 1
    /// network, 2 transport, 3 inner header).
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `ct load KEY => DREG` (`NFT_CT_*`, 0 `state`), for one direction if
    /// given.
    Ct {
        key: u32,
        dreg: u32,
        dir: Option<u8>,
    },
    /// `cmp OP SREG DATA` (`NFT_CMP_*`: 0 `eq`, 1 `neq`, 2 `lt`, 3 `lte`, 4
    /// `gt`, 5 `gte`).
    Cmp { sreg: u32, op: u32, data: Vec<u8> },
    /// `lookup SREG set NAME`: `dreg` for a map (0: a verdict map), `invert`
    /// for `!=`.
    Lookup {
        sreg: u32,
        set: String,
        dreg: Option<u32>,
        invert: bool,
    },
    /// `bitwise DREG = (SREG & MASK) ^ XOR` over `len` bytes.
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `byteorder DREG = OP(SREG)`: `len / size` elements of `size` bytes converted (op 0
    /// `ntoh`, 1 `hton`).
    Byteorder {
        sreg: u32,
        dreg: u32,
        op: u32,
        len: u32,
        size: u32,
    },
    /// `range OP SREG FROM TO` (op 0 `eq`, 1 `neq`).
    Range {
        sreg: u32,
        op: u32,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// Any other expression, or one of the above used otherwise (e.g. `meta
    /// set`, `payload write`, a bitwise shift, an `immediate` into a data
    /// register): its name and what makes it other.
    Other(String),
}

/// A chain of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelChain {
    pub name: String,
    /// "prerouting", "input", "forward", "output", "postrouting",
    /// "ingress" (or "hook N"); `None` for a regular chain.
    pub hook: Option<String>,
    /// "accept" or "drop" (or "policy N"); `None` for a regular chain.
    pub policy: Option<String>,
}

/// A set (or map) of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSet {
    pub name: String,
    /// nft's type names of the key, one per component of a concatenation,
    /// e.g. `["ipv4_addr", "inet_proto", "inet_service"]`; an id this code
    /// does not know reads as `"type<N>"`. Empty when the kernel has no key
    /// type for the set.
    pub key_types: Vec<String>,
    /// `NFTA_SET_FLAGS` in bit order: "anonymous", "constant", "interval",
    /// "map", "timeout", "dynamic" (`NFT_SET_EVAL`), "object", "concat",
    /// "expr" (unknown bits as "flag 0x..."). nft's JSON shows only
    /// "constant", "interval", "timeout" (nft 1.0.6 omits "dynamic"); nft
    /// sets "concat" only on interval concatenations.
    pub flags: Vec<String>,
    /// An anonymous set (`__set%d`, `__map%d`) that nft created for an
    /// inline set in a rule; `nft list` does not show these.
    pub anonymous: bool,
    /// `NFTA_SET_KEY_LEN` in bytes (each component of a concatenation
    /// padded to 4).
    pub key_len: u32,
}

/// Everything [`dump_table`] reads, from one ruleset generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelTable {
    /// In the kernel's order (creation order).
    pub chains: Vec<KernelChain>,
    /// In the kernel's order, anonymous sets included.
    pub sets: Vec<KernelSet>,
    /// Grouped by chain in chain order, each chain's rules in order.
    pub rules: Vec<KernelRule>,
    /// The elements of each anonymous set, by set name.
    pub anonymous_elements: BTreeMap<String, Vec<KernelElem>>,
}

/// All rules of table `inet <table>`, in chain order as the kernel returns
/// them (the rules of one chain in evaluation order). Opens its own socket in
/// the calling thread's network namespace; blocking. Empty when the table
/// does not exist.
pub fn dump_rules(table: &str) -> Result<Vec<KernelRule>, NetlinkError> {
    check_table(table)?;
    with_retries(table, "rules", |r| r.rules())
}

/// All chains of table `inet <table>`, in the kernel's order. Empty when
/// the table does not exist.
pub fn dump_chains(table: &str) -> Result<Vec<KernelChain>, NetlinkError> {
    check_table(table)?;
    with_retries(table, "chains", |r| r.chains())
}

/// All sets and maps of table `inet <table>` (anonymous ones included,
/// flagged), in the kernel's order. Empty when the table does not exist.
pub fn dump_sets(table: &str) -> Result<Vec<KernelSet>, NetlinkError> {
    check_table(table)?;
    with_retries(table, "sets", |r| r.sets())
}

/// Chains, sets, rules and the anonymous sets' elements of table
/// `inet <table>` from one ruleset generation (see the module docs); `None`
/// when the table does not exist. One socket, five requests plus one per
/// anonymous set.
pub fn dump_table(table: &str) -> Result<Option<KernelTable>, NetlinkError> {
    check_table(table)?;
    with_retries(table, "table", |r| {
        let gen = r.generation()?;
        if !r.table_exists()? {
            return Ok(None);
        }
        let chains = r.chains()?;
        let sets = r.sets()?;
        let rules = r.rules()?;
        let mut anonymous_elements = BTreeMap::new();
        for set in sets.iter().filter(|s| s.anonymous) {
            let elems = dump::dump_elems(&mut r.conn, table, &set.name)?;
            anonymous_elements.insert(set.name.clone(), elems);
        }
        let after = r.generation()?;
        if after != gen {
            return Err(Attempt::Retry(NetlinkError::Kernel {
                op: "dump table",
                table: table.to_owned(),
                set: ANY_SET.to_owned(),
                errno: libc::EINTR,
                message: Some(format!(
                    "ruleset changed during the dump (generation {gen} -> {after})"
                )),
            }));
        }
        Ok(Some(KernelTable {
            chains,
            sets,
            rules,
            anonymous_elements,
        }))
    })
}

/// The `set` of a [`NetlinkError::Kernel`] about the whole table.
const ANY_SET: &str = "*";

/// `enum nf_tables_msg_types`.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWGEN: u16 = 15;

/// `enum nft_rule_attributes`.
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
/// `enum nft_list_attributes`.
const NFTA_LIST_ELEM: u16 = 1;
/// `enum nft_expr_attributes`.
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
/// `enum nft_immediate_attributes`.
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
/// `enum nft_data_attributes`.
const NFTA_DATA_VERDICT: u16 = 2;
/// `enum nft_verdict_attributes`.
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// `enum nft_meta_attributes`.
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
/// `enum nft_payload_attributes`.
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_PAYLOAD_SREG: u16 = 5;
/// `enum nft_ct_attributes`.
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_DIRECTION: u16 = 3;
const NFTA_CT_SREG: u16 = 4;
/// `enum nft_cmp_attributes`.
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
/// `enum nft_lookup_attributes`.
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_FLAGS: u16 = 5;
/// `NFT_LOOKUP_F_INV`.
const NFT_LOOKUP_F_INV: u32 = 1;
/// `enum nft_bitwise_attributes`.
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_BITWISE_OP: u16 = 6;
/// `enum nft_byteorder_attributes`.
const NFTA_BYTEORDER_SREG: u16 = 1;
const NFTA_BYTEORDER_DREG: u16 = 2;
const NFTA_BYTEORDER_OP: u16 = 3;
const NFTA_BYTEORDER_LEN: u16 = 4;
const NFTA_BYTEORDER_SIZE: u16 = 5;
/// `enum nft_range_attributes`.
const NFTA_RANGE_SREG: u16 = 1;
const NFTA_RANGE_OP: u16 = 2;
const NFTA_RANGE_FROM_DATA: u16 = 3;
const NFTA_RANGE_TO_DATA: u16 = 4;
/// `enum nft_counter_attributes`.
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
/// `NFT_REG_VERDICT`.
const NFT_REG_VERDICT: u32 = 0;
/// libnftnl's `NFTNL_UDATA_RULE_COMMENT`.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// `enum nft_chain_attributes`.
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
/// `enum nft_hook_attributes`.
const NFTA_HOOK_HOOKNUM: u16 = 1;

/// `enum nft_set_attributes`.
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
/// `NFT_SET_ANONYMOUS`.
const NFT_SET_ANONYMOUS: u32 = 0x1;
/// `enum nft_set_flags`, by bit.
const SET_FLAG_NAMES: [&str; 9] = [
    "anonymous", // NFT_SET_ANONYMOUS
    "constant",  // NFT_SET_CONSTANT
    "interval",  // NFT_SET_INTERVAL
    "map",       // NFT_SET_MAP
    "timeout",   // NFT_SET_TIMEOUT
    "dynamic",   // NFT_SET_EVAL
    "object",    // NFT_SET_OBJECT
    "concat",    // NFT_SET_CONCAT
    "expr",      // NFT_SET_EXPR
];

/// `enum nft_gen_attributes`.
const NFTA_GEN_ID: u16 = 1;

/// nft's `TYPE_BITS`: a concatenation's key type packs one datatype id per
/// component in 6 bits, the first component in the highest bits.
const TYPE_BITS: u32 = 6;
/// nft's datatype names by id (`enum datatypes` in nftables' datatype.h,
/// names as `nft -j list` prints them).
const TYPE_NAMES: [&str; 47] = [
    "invalid",      // 0 TYPE_INVALID
    "verdict",      // 1
    "nf_proto",     // 2
    "bitmask",      // 3
    "integer",      // 4
    "string",       // 5
    "ll_addr",      // 6
    "ipv4_addr",    // 7
    "ipv6_addr",    // 8
    "ether_addr",   // 9
    "ether_type",   // 10
    "arp_op",       // 11
    "inet_proto",   // 12
    "inet_service", // 13
    "icmp_type",    // 14
    "tcp_flag",     // 15
    "dccp_pkttype", // 16
    "mh_type",      // 17
    "time",         // 18 TYPE_TIME
    "mark",         // 19
    "iface_index",  // 20
    "iface_type",   // 21
    "realm",        // 22
    "classid",      // 23
    "uid",          // 24
    "gid",          // 25
    "ct_state",     // 26
    "ct_dir",       // 27
    "ct_status",    // 28
    "icmpv6_type",  // 29
    "ct_label",     // 30
    "pkt_type",     // 31
    "icmp_code",    // 32
    "icmpv6_code",  // 33
    "icmpx_code",   // 34
    "devgroup",     // 35
    "dscp",         // 36
    "ecn",          // 37
    "fib_addr",     // 38
    "boolean",      // 39
    "ct_event",     // 40
    "ifname",       // 41
    "igmp_type",    // 42
    "time",         // 43 TYPE_TIME_DATE
    "hour",         // 44
    "day",          // 45
    "cgroupsv2",    // 46
];

/// `NF_INET_*` hook numbers (also `NF_INET_INGRESS` for `inet` tables).
const HOOK_NAMES: [&str; 6] = [
    "prerouting",
    "input",
    "forward",
    "output",
    "postrouting",
    "ingress",
];

/// Runs `f` on a fresh [`Reader`] (a fresh socket) until it succeeds, fails
/// for good, or the transient failures [`retry`] allows happened.
fn with_retries<T>(
    table: &str,
    what: &str,
    mut f: impl FnMut(&mut Reader<'_>) -> Result<T, Attempt>,
) -> Result<T, NetlinkError> {
    retry(format_args!("dump of {what}"), || {
        let conn = Conn::open_for_dumps()?;
        f(&mut Reader { conn, table })
    })
}

/// One socket, one table.
struct Reader<'a> {
    conn: Conn,
    table: &'a str,
}

impl Reader<'_> {
    fn rules(&mut self) -> Result<Vec<KernelRule>, Attempt> {
        let request = NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![RuleAttribute::Table(self.table.to_owned())],
        });
        self.dump(request, NFT_MSG_NEWRULE, "dump rules", parse_rule)
    }

    fn chains(&mut self) -> Result<Vec<KernelChain>, Attempt> {
        // The kernel does not filter a chain dump by table (the attribute is
        // ignored); `parse_chain` does.
        let request = NfTablesMessage::GetChain(ChainMessage {
            attributes: vec![ChainAttribute::Table(self.table.to_owned())],
        });
        self.dump(request, NFT_MSG_NEWCHAIN, "dump chains", parse_chain)
    }

    fn sets(&mut self) -> Result<Vec<KernelSet>, Attempt> {
        let request = NfTablesMessage::GetSet(SetMessage {
            attributes: vec![SetAttribute::Table(self.table.to_owned())],
        });
        match self.dump(request, NFT_MSG_NEWSET, "dump sets", parse_set) {
            // a set dump checks the table up front: no table, no sets
            Err(Attempt::Fail(e)) if e.errno() == Some(libc::ENOENT) => Ok(Vec::new()),
            other => other,
        }
    }

    /// Dumps with `request` and collects what `parse` makes of each reply
    /// message of type `msg` (`None`: another table's).
    fn dump<T>(
        &mut self,
        request: NfTablesMessage,
        msg: u16,
        op: &'static str,
        parse: fn(&[u8], &str) -> Result<Option<T>, String>,
    ) -> Result<Vec<T>, Attempt> {
        let table = self.table;
        let mut out = Vec::new();
        self.exchange(request, NLM_F_DUMP, op, |ty, payload| {
            if ty == nft_type(msg) {
                out.extend(parse(payload, table)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// `NFT_MSG_GETTABLE` for our table (not a dump).
    fn table_exists(&mut self) -> Result<bool, Attempt> {
        let table = self.table;
        let request = NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(table.to_owned())],
        });
        let mut found = false;
        let result = self.exchange(request, NLM_F_ACK, "query table", |ty, _| {
            found |= ty == nft_type(NFT_MSG_NEWTABLE);
            Ok(())
        });
        match result {
            Ok(()) => Ok(found),
            Err(Attempt::Fail(e)) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `NFT_MSG_GETGEN`: the ruleset generation id.
    fn generation(&mut self) -> Result<u32, Attempt> {
        let request = NfTablesMessage::GetGen(GenMessage { attributes: vec![] });
        let mut gen = None;
        self.exchange(request, NLM_F_ACK, "query generation", |ty, payload| {
            if ty == nft_type(NFT_MSG_NEWGEN) {
                gen = parse_gen(payload)?;
            }
            Ok(())
        })?;
        gen.ok_or_else(|| {
            Attempt::Fail(NetlinkError::Protocol(
                "no NFTA_GEN_ID in the reply to NFT_MSG_GETGEN".into(),
            ))
        })
    }

    /// Sends `request` (with `NLM_F_REQUEST | flags`) and feeds every reply
    /// message (type, payload after the `nlmsghdr`) to `on_msg` until
    /// `NLMSG_DONE` or `NLMSG_ERROR` (an error or the ack) ends the exchange.
    fn exchange(
        &mut self,
        request: NfTablesMessage,
        flags: u16,
        op: &'static str,
        on_msg: impl FnMut(u16, &[u8]) -> Result<(), String>,
    ) -> Result<(), Attempt> {
        let seq = self.conn.next_seqs(1);
        let bytes = encode(request, NLM_F_REQUEST | flags, seq);
        let table = self.table;
        let kernel_error = |errno, message, _offset| {
            Attempt::kernel(NetlinkError::Kernel {
                op,
                table: table.to_owned(),
                set: ANY_SET.to_owned(),
                errno,
                message,
            })
        };
        self.conn.query(&bytes, seq, op, kernel_error, on_msg)
    }
}

/// `NFT_MSG_NEWRULE`; `None` when it belongs to another table.
fn parse_rule(payload: &[u8], table: &str) -> Result<Option<KernelRule>, String> {
    let mut in_table = false;
    let mut rule = KernelRule {
        chain: String::new(),
        handle: 0,
        comment: String::new(),
        verdict: String::new(),
        packets: 0,
        bytes: 0,
        exprs: Vec::new(),
    };
    for attr in attrs(nfgen_attrs(payload)?) {
        let (kind, v) = attr?;
        match kind {
            NFTA_RULE_TABLE => in_table = cstr(v) == table,
            NFTA_RULE_CHAIN => rule.chain = cstr(v),
            NFTA_RULE_HANDLE => rule.handle = be_u64(v)?,
            NFTA_RULE_USERDATA => rule.comment = udata_comment(v).unwrap_or_default(),
            NFTA_RULE_EXPRESSIONS => {
                for elem in attrs(v) {
                    let (kind, v) = elem?;
                    if kind == NFTA_LIST_ELEM {
                        apply_expr(v, &mut rule)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(in_table.then_some(rule))
}

/// The comment in libnftnl's rule user data: TLVs of `u8 type, u8 len,
/// value` (no padding); the comment's value is NUL-terminated.
fn udata_comment(mut v: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = v {
        let value = rest.get(..usize::from(*len))?;
        if *kind == NFTNL_UDATA_RULE_COMMENT {
            return Some(cstr(value));
        }
        v = rest.get(usize::from(*len)..)?;
    }
    None
}

/// One `NFTA_LIST_ELEM` of `NFTA_RULE_EXPRESSIONS`: a verdict or a counter
/// goes into `rule`'s fields, anything else into `rule.exprs`.
fn apply_expr(v: &[u8], rule: &mut KernelRule) -> Result<(), String> {
    let mut name = String::new();
    let mut data: &[u8] = &[];
    for attr in attrs(v) {
        let (kind, v) = attr?;
        match kind {
            NFTA_EXPR_NAME => name = cstr(v),
            NFTA_EXPR_DATA => data = v,
            _ => {}
        }
    }
    match name.as_str() {
        "immediate" => match immediate_verdict(data)? {
            Some(verdict) => rule.verdict = verdict,
            None => rule
                .exprs
                .push(KernelExpr::Other("immediate into a data register".into())),
        },
        "counter" => {
            for attr in attrs(data) {
                let (kind, v) = attr?;
                match kind {
                    NFTA_COUNTER_BYTES => rule.bytes = be_u64(v)?,
                    NFTA_COUNTER_PACKETS => rule.packets = be_u64(v)?,
                    _ => {}
                }
            }
        }
        other => rule.exprs.push(parse_match_expr(other, data)?),
    }
    Ok(())
}

/// The attributes of an expression's `NFTA_EXPR_DATA`, by type (the last
/// one wins if repeated).
fn expr_attrs(data: &[u8]) -> Result<BTreeMap<u16, &[u8]>, String> {
    attrs(data).collect()
}

/// A u32 attribute, or `default` when absent.
fn u32_or(a: &BTreeMap<u16, &[u8]>, kind: u16, default: u32) -> Result<u32, String> {
    a.get(&kind).map_or(Ok(default), |v| be_u32(v))
}

/// A required u32 attribute of expression `name`.
fn u32_of(a: &BTreeMap<u16, &[u8]>, kind: u16, name: &str) -> Result<u32, String> {
    let v = a
        .get(&kind)
        .ok_or_else(|| format!("{name} expression without attribute {kind}"))?;
    be_u32(v)
}

/// The `NFTA_DATA_VALUE` of a nested data attribute of expression `name`.
fn data_of(a: &BTreeMap<u16, &[u8]>, kind: u16, name: &str) -> Result<Vec<u8>, String> {
    let v = a
        .get(&kind)
        .ok_or_else(|| format!("{name} expression without attribute {kind}"))?;
    data_value(v)
}

/// An expression other than `counter` and `immediate`, by its name and data.
fn parse_match_expr(name: &str, data: &[u8]) -> Result<KernelExpr, String> {
    let a = expr_attrs(data)?;
    let other = |what: &str| Ok(KernelExpr::Other(format!("{name} {what}")));
    match name {
        "meta" if a.contains_key(&NFTA_META_SREG) => other("set"),
        "meta" => Ok(KernelExpr::Meta {
            key: u32_of(&a, NFTA_META_KEY, name)?,
            dreg: u32_of(&a, NFTA_META_DREG, name)?,
        }),
        "payload" if a.contains_key(&NFTA_PAYLOAD_SREG) => other("write"),
        "payload" => Ok(KernelExpr::Payload {
            base: u32_of(&a, NFTA_PAYLOAD_BASE, name)?,
            offset: u32_of(&a, NFTA_PAYLOAD_OFFSET, name)?,
            len: u32_of(&a, NFTA_PAYLOAD_LEN, name)?,
            dreg: u32_of(&a, NFTA_PAYLOAD_DREG, name)?,
        }),
        "ct" if a.contains_key(&NFTA_CT_SREG) => other("set"),
        "ct" => Ok(KernelExpr::Ct {
            key: u32_of(&a, NFTA_CT_KEY, name)?,
            dreg: u32_of(&a, NFTA_CT_DREG, name)?,
            dir: a.get(&NFTA_CT_DIRECTION).and_then(|v| v.first().copied()),
        }),
        "cmp" => Ok(KernelExpr::Cmp {
            sreg: u32_of(&a, NFTA_CMP_SREG, name)?,
            op: u32_of(&a, NFTA_CMP_OP, name)?,
            data: data_of(&a, NFTA_CMP_DATA, name)?,
        }),
        "lookup" => Ok(KernelExpr::Lookup {
            sreg: u32_of(&a, NFTA_LOOKUP_SREG, name)?,
            set: a
                .get(&NFTA_LOOKUP_SET)
                .map(|v| cstr(v))
                .ok_or("lookup expression without a set")?,
            dreg: a.get(&NFTA_LOOKUP_DREG).map(|v| be_u32(v)).transpose()?,
            invert: u32_or(&a, NFTA_LOOKUP_FLAGS, 0)? & NFT_LOOKUP_F_INV != 0,
        }),
        // NFT_BITWISE_BOOL (0) is the mask-and-xor form; shifts and newer ops are other
        "bitwise" if u32_or(&a, NFTA_BITWISE_OP, 0)? != 0 => other("operation"),
        "bitwise" => Ok(KernelExpr::Bitwise {
            sreg: u32_of(&a, NFTA_BITWISE_SREG, name)?,
            dreg: u32_of(&a, NFTA_BITWISE_DREG, name)?,
            len: u32_of(&a, NFTA_BITWISE_LEN, name)?,
            mask: data_of(&a, NFTA_BITWISE_MASK, name)?,
            xor: data_of(&a, NFTA_BITWISE_XOR, name)?,
        }),
        "byteorder" => Ok(KernelExpr::Byteorder {
            sreg: u32_of(&a, NFTA_BYTEORDER_SREG, name)?,
            dreg: u32_of(&a, NFTA_BYTEORDER_DREG, name)?,
            op: u32_of(&a, NFTA_BYTEORDER_OP, name)?,
            len: u32_of(&a, NFTA_BYTEORDER_LEN, name)?,
            size: u32_of(&a, NFTA_BYTEORDER_SIZE, name)?,
        }),
        "range" => Ok(KernelExpr::Range {
            sreg: u32_of(&a, NFTA_RANGE_SREG, name)?,
            op: u32_of(&a, NFTA_RANGE_OP, name)?,
            from: data_of(&a, NFTA_RANGE_FROM_DATA, name)?,
            to: data_of(&a, NFTA_RANGE_TO_DATA, name)?,
        }),
        _ => Ok(KernelExpr::Other(name.to_owned())),
    }
}

/// The verdict of an `immediate` expression that loads the verdict
/// register; `None` for one that loads a data register.
fn immediate_verdict(data: &[u8]) -> Result<Option<String>, String> {
    let mut dreg = None;
    let mut verdict = None;
    for attr in attrs(data) {
        let (kind, v) = attr?;
        match kind {
            NFTA_IMMEDIATE_DREG => dreg = Some(be_u32(v)?),
            NFTA_IMMEDIATE_DATA => {
                for attr in attrs(v) {
                    let (kind, v) = attr?;
                    if kind == NFTA_DATA_VERDICT {
                        verdict = Some(parse_verdict(v)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(match (dreg, verdict) {
        (Some(NFT_REG_VERDICT), Some(v)) => Some(v),
        _ => None,
    })
}

/// `NFTA_DATA_VERDICT`: code and, for jump / goto, the target chain.
fn parse_verdict(v: &[u8]) -> Result<String, String> {
    let mut code = None;
    let mut chain = String::new();
    for attr in attrs(v) {
        let (kind, v) = attr?;
        match kind {
            NFTA_VERDICT_CODE => code = Some(be_u32(v)? as i32),
            NFTA_VERDICT_CHAIN => chain = cstr(v),
            _ => {}
        }
    }
    let code = code.ok_or("verdict without NFTA_VERDICT_CODE")?;
    Ok(verdict_name(code, &chain))
}

/// nft's words for a verdict code.
fn verdict_name(code: i32, chain: &str) -> String {
    match code {
        -1 => "continue".into(),
        -2 => "break".into(),
        -3 => format!("jump {chain}"),
        -4 => format!("goto {chain}"),
        -5 => "return".into(),
        // netfilter verdicts; the upper bits may hold a queue number or errno
        c if c >= 0 => match c & 0xff {
            0 => "drop".into(),
            1 => "accept".into(),
            2 => "stolen".into(),
            3 => "queue".into(),
            4 => "repeat".into(),
            _ => format!("verdict {c}"),
        },
        c => format!("verdict {c}"),
    }
}

/// `NFT_MSG_NEWCHAIN`; `None` when it belongs to another table.
fn parse_chain(payload: &[u8], table: &str) -> Result<Option<KernelChain>, String> {
    let mut in_table = false;
    let mut chain = KernelChain {
        name: String::new(),
        hook: None,
        policy: None,
    };
    for attr in attrs(nfgen_attrs(payload)?) {
        let (kind, v) = attr?;
        match kind {
            NFTA_CHAIN_TABLE => in_table = cstr(v) == table,
            NFTA_CHAIN_NAME => chain.name = cstr(v),
            NFTA_CHAIN_HOOK => {
                for attr in attrs(v) {
                    let (kind, v) = attr?;
                    if kind == NFTA_HOOK_HOOKNUM {
                        let n = be_u32(v)?;
                        chain.hook = Some(
                            usize::try_from(n)
                                .ok()
                                .and_then(|i| HOOK_NAMES.get(i))
                                .map_or_else(|| format!("hook {n}"), |s| (*s).to_owned()),
                        );
                    }
                }
            }
            NFTA_CHAIN_POLICY => {
                chain.policy = Some(match be_u32(v)? {
                    0 => "drop".to_owned(),
                    1 => "accept".to_owned(),
                    n => format!("policy {n}"),
                });
            }
            _ => {}
        }
    }
    Ok(in_table.then_some(chain))
}

/// `NFT_MSG_NEWSET`; `None` when it belongs to another table.
fn parse_set(payload: &[u8], table: &str) -> Result<Option<KernelSet>, String> {
    let mut in_table = false;
    let mut name = String::new();
    let mut flags = 0;
    let mut key_type = 0;
    let mut key_len = 0;
    for attr in attrs(nfgen_attrs(payload)?) {
        let (kind, v) = attr?;
        match kind {
            NFTA_SET_TABLE => in_table = cstr(v) == table,
            NFTA_SET_NAME => name = cstr(v),
            NFTA_SET_FLAGS => flags = be_u32(v)?,
            NFTA_SET_KEY_TYPE => key_type = be_u32(v)?,
            NFTA_SET_KEY_LEN => key_len = be_u32(v)?,
            _ => {}
        }
    }
    if !in_table {
        return Ok(None);
    }
    let anonymous = flags & NFT_SET_ANONYMOUS != 0;
    Ok(Some(KernelSet {
        name,
        key_types: key_type_names(key_type),
        flags: set_flag_names(flags),
        anonymous,
        key_len,
    }))
}

/// nft's type names of a (possibly concatenated) key type id.
fn key_type_names(id: u32) -> Vec<String> {
    let bits = u32::BITS - id.leading_zeros();
    let parts = bits.div_ceil(TYPE_BITS);
    (0..parts)
        .rev()
        .map(|i| {
            let t = (id >> (TYPE_BITS * i)) & ((1 << TYPE_BITS) - 1);
            usize::try_from(t)
                .ok()
                .and_then(|i| TYPE_NAMES.get(i))
                .map_or_else(|| format!("type{t}"), |s| (*s).to_owned())
        })
        .collect()
}

fn set_flag_names(flags: u32) -> Vec<String> {
    (0..u32::BITS)
        .filter(|bit| flags & (1 << bit) != 0)
        .map(|bit| {
            usize::try_from(bit)
                .ok()
                .and_then(|i| SET_FLAG_NAMES.get(i))
                .map_or_else(|| format!("flag {:#x}", 1u32 << bit), |s| (*s).to_owned())
        })
        .collect()
}

/// `NFT_MSG_NEWGEN`: `NFTA_GEN_ID`.
fn parse_gen(payload: &[u8]) -> Result<Option<u32>, String> {
    for attr in attrs(nfgen_attrs(payload)?) {
        let (kind, v) = attr?;
        if kind == NFTA_GEN_ID {
            return be_u32(v).map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NESTED: u16 = 0x8000;

    /// One attribute, padded to 4 bytes.
    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize((len + 3) & !3, 0);
        out
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        nla(kind | NESTED, &parts.concat())
    }

    fn s(v: &str) -> Vec<u8> {
        let mut b = v.as_bytes().to_vec();
        b.push(0);
        b
    }

    /// nfgenmsg + attributes.
    fn message(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![1, 0, 0, 0];
        out.extend_from_slice(&parts.concat());
        out
    }

    fn expr(name: &str, data: &[Vec<u8>]) -> Vec<u8> {
        nested(
            NFTA_LIST_ELEM,
            &[nla(NFTA_EXPR_NAME, &s(name)), nested(NFTA_EXPR_DATA, data)],
        )
    }

    fn verdict_expr(dreg: u32, code: i32, chain: Option<&str>) -> Vec<u8> {
        let mut v = vec![nla(NFTA_VERDICT_CODE, &code.to_be_bytes())];
        if let Some(c) = chain {
            v.push(nla(NFTA_VERDICT_CHAIN, &s(c)));
        }
        expr(
            "immediate",
            &[
                nla(NFTA_IMMEDIATE_DREG, &dreg.to_be_bytes()),
                nested(
                    NFTA_IMMEDIATE_DATA,
                    &[nested(NFTA_DATA_VERDICT, &[v.concat()])],
                ),
            ],
        )
    }

    fn rule_msg(table: &str, exprs: &[Vec<u8>], udata: Option<&[u8]>) -> Vec<u8> {
        let mut parts = vec![
            nla(NFTA_RULE_TABLE, &s(table)),
            nla(NFTA_RULE_CHAIN, &s("input")),
            nla(NFTA_RULE_HANDLE, &42u64.to_be_bytes()),
            nested(NFTA_RULE_EXPRESSIONS, exprs),
        ];
        if let Some(u) = udata {
            parts.push(nla(NFTA_RULE_USERDATA, u));
        }
        message(&parts)
    }

    fn u32_nla(kind: u16, v: u32) -> Vec<u8> {
        nla(kind, &v.to_be_bytes())
    }

    /// `NFTA_DATA_VALUE` nested in attribute `kind`.
    fn data_nla(kind: u16, value: &[u8]) -> Vec<u8> {
        nested(kind, &[nla(1, value)])
    }

    #[test]
    fn rule_with_comment_counter_and_verdict() {
        // what `nft --debug=mnl` shows for `ip saddr 10.0.0.1 counter packets
        // 5 bytes 300 jump allow comment "office"`:
        //   [ meta load nfproto => reg 1 ] [ cmp eq reg 1 0x00000002 ]
        //   [ payload load 4b @ network header + 12 => reg 1 ]
        //   [ cmp eq reg 1 0x0100000a ] [ counter ] [ immediate reg 0 jump -> allow ]
        let counter = expr(
            "counter",
            &[
                nla(NFTA_COUNTER_BYTES, &300u64.to_be_bytes()),
                nla(NFTA_COUNTER_PACKETS, &5u64.to_be_bytes()),
            ],
        );
        let meta = expr(
            "meta",
            &[u32_nla(NFTA_META_KEY, 15), u32_nla(NFTA_META_DREG, 1)],
        );
        let cmp = |data: &[u8]| {
            expr(
                "cmp",
                &[
                    u32_nla(NFTA_CMP_SREG, 1),
                    u32_nla(NFTA_CMP_OP, 0),
                    data_nla(NFTA_CMP_DATA, data),
                ],
            )
        };
        let payload = expr(
            "payload",
            &[
                u32_nla(NFTA_PAYLOAD_DREG, 1),
                u32_nla(NFTA_PAYLOAD_BASE, 1),
                u32_nla(NFTA_PAYLOAD_OFFSET, 12),
                u32_nla(NFTA_PAYLOAD_LEN, 4),
            ],
        );
        let udata = [0, 7, b'o', b'f', b'f', b'i', b'c', b'e', 0];
        let msg = rule_msg(
            "callgate",
            &[
                meta,
                cmp(&[2]),
                payload,
                cmp(&[10, 0, 0, 1]),
                counter,
                verdict_expr(0, -3, Some("allow")),
            ],
            Some(&udata),
        );
        let cmp_eq = |data: &[u8]| KernelExpr::Cmp {
            sreg: 1,
            op: 0,
            data: data.to_vec(),
        };
        assert_eq!(
            parse_rule(&msg, "callgate").unwrap(),
            Some(KernelRule {
                chain: "input".into(),
                handle: 42,
                comment: "office".into(),
                verdict: "jump allow".into(),
                packets: 5,
                bytes: 300,
                exprs: vec![
                    KernelExpr::Meta { key: 15, dreg: 1 },
                    cmp_eq(&[2]),
                    KernelExpr::Payload {
                        base: 1,
                        offset: 12,
                        len: 4,
                        dreg: 1
                    },
                    cmp_eq(&[10, 0, 0, 1]),
                ],
            })
        );
        assert_eq!(parse_rule(&msg, "other").unwrap(), None);
    }

    #[test]
    fn match_expressions() {
        let lookup = expr(
            "lookup",
            &[
                nla(NFTA_LOOKUP_SET, &s("allow4")),
                u32_nla(NFTA_LOOKUP_SREG, 1),
                u32_nla(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV),
            ],
        );
        let vmap = expr(
            "lookup",
            &[
                nla(NFTA_LOOKUP_SET, &s("portmap")),
                u32_nla(NFTA_LOOKUP_SREG, 1),
                u32_nla(NFTA_LOOKUP_DREG, 0),
            ],
        );
        let bitwise = expr(
            "bitwise",
            &[
                u32_nla(NFTA_BITWISE_SREG, 1),
                u32_nla(NFTA_BITWISE_DREG, 1),
                u32_nla(NFTA_BITWISE_LEN, 4),
                data_nla(NFTA_BITWISE_MASK, &[6, 0, 0, 0]),
                data_nla(NFTA_BITWISE_XOR, &[0; 4]),
            ],
        );
        let shift = expr(
            "bitwise",
            &[u32_nla(NFTA_BITWISE_SREG, 1), u32_nla(NFTA_BITWISE_OP, 1)],
        );
        let byteorder = expr(
            "byteorder",
            &[
                u32_nla(NFTA_BYTEORDER_SREG, 10),
                u32_nla(NFTA_BYTEORDER_DREG, 10),
                u32_nla(NFTA_BYTEORDER_OP, 1),
                u32_nla(NFTA_BYTEORDER_LEN, 1),
                u32_nla(NFTA_BYTEORDER_SIZE, 2),
            ],
        );
        let range = expr(
            "range",
            &[
                u32_nla(NFTA_RANGE_SREG, 1),
                u32_nla(NFTA_RANGE_OP, 1),
                data_nla(NFTA_RANGE_FROM_DATA, &[0x03, 0xe8]),
                data_nla(NFTA_RANGE_TO_DATA, &[0x07, 0xd0]),
            ],
        );
        let ct = expr(
            "ct",
            &[
                u32_nla(NFTA_CT_DREG, 1),
                u32_nla(NFTA_CT_KEY, 0),
                nla(NFTA_CT_DIRECTION, &[1]),
            ],
        );
        let meta_set = expr(
            "meta",
            &[u32_nla(NFTA_META_KEY, 3), u32_nla(NFTA_META_SREG, 1)],
        );
        let write = expr(
            "payload",
            &[u32_nla(NFTA_PAYLOAD_SREG, 1), u32_nla(NFTA_PAYLOAD_BASE, 1)],
        );
        let log = expr("log", &[]);
        let msg = rule_msg(
            "callgate",
            &[
                lookup, vmap, bitwise, shift, byteorder, range, ct, meta_set, write, log,
            ],
            None,
        );
        let r = parse_rule(&msg, "callgate").unwrap().unwrap();
        assert_eq!(
            r.exprs,
            [
                KernelExpr::Lookup {
                    sreg: 1,
                    set: "allow4".into(),
                    dreg: None,
                    invert: true
                },
                KernelExpr::Lookup {
                    sreg: 1,
                    set: "portmap".into(),
                    dreg: Some(0),
                    invert: false
                },
                KernelExpr::Bitwise {
                    sreg: 1,
                    dreg: 1,
                    len: 4,
                    mask: vec![6, 0, 0, 0],
                    xor: vec![0; 4]
                },
                KernelExpr::Other("bitwise operation".into()),
                KernelExpr::Byteorder {
                    sreg: 10,
                    dreg: 10,
                    op: 1,
                    len: 1,
                    size: 2
                },
                KernelExpr::Range {
                    sreg: 1,
                    op: 1,
                    from: vec![0x03, 0xe8],
                    to: vec![0x07, 0xd0]
                },
                KernelExpr::Ct {
                    key: 0,
                    dreg: 1,
                    dir: Some(1)
                },
                KernelExpr::Other("meta set".into()),
                KernelExpr::Other("payload write".into()),
                KernelExpr::Other("log".into()),
            ]
        );
        // a match expression without what it needs is malformed
        let bare_cmp = expr("cmp", &[u32_nla(NFTA_CMP_SREG, 1), u32_nla(NFTA_CMP_OP, 0)]);
        assert!(parse_rule(&rule_msg("callgate", &[bare_cmp], None), "callgate").is_err());
    }

    #[test]
    fn rule_without_verdict_or_comment() {
        // an immediate into a data register is no verdict
        let msg = rule_msg("callgate", &[verdict_expr(1, 1, None)], None);
        let r = parse_rule(&msg, "callgate").unwrap().unwrap();
        assert_eq!((r.verdict.as_str(), r.comment.as_str()), ("", ""));
        assert_eq!((r.packets, r.bytes), (0, 0));
        assert_eq!(
            r.exprs,
            [KernelExpr::Other("immediate into a data register".into())]
        );
        // user data with another TLV before the comment, and a truncated one
        assert_eq!(
            udata_comment(&[1, 1, 0, 0, 3, b'a', b'b', 0]).as_deref(),
            Some("ab")
        );
        assert_eq!(udata_comment(&[0, 9, b'a']), None);
        assert_eq!(udata_comment(&[]), None);
    }

    #[test]
    fn verdict_names() {
        let cases = [
            (1, "accept"),
            (0, "drop"),
            (-1, "continue"),
            (-2, "break"),
            (-5, "return"),
            (0x0001_0003, "queue"),
            (-9, "verdict -9"),
        ];
        for (code, want) in cases {
            assert_eq!(verdict_name(code, ""), want);
        }
        assert_eq!(verdict_name(-4, "x"), "goto x");
        let msg = rule_msg("callgate", &[verdict_expr(0, 0, None)], None);
        assert_eq!(
            parse_rule(&msg, "callgate").unwrap().unwrap().verdict,
            "drop"
        );
    }

    #[test]
    fn chains() {
        let base = message(&[
            nla(NFTA_CHAIN_TABLE, &s("callgate")),
            nla(NFTA_CHAIN_NAME, &s("input")),
            nested(
                NFTA_CHAIN_HOOK,
                &[
                    nla(NFTA_HOOK_HOOKNUM, &1u32.to_be_bytes()),
                    nla(2, &0u32.to_be_bytes()),
                ],
            ),
            nla(NFTA_CHAIN_POLICY, &0u32.to_be_bytes()),
        ]);
        assert_eq!(
            parse_chain(&base, "callgate").unwrap(),
            Some(KernelChain {
                name: "input".into(),
                hook: Some("input".into()),
                policy: Some("drop".into()),
            })
        );
        let regular = message(&[
            nla(NFTA_CHAIN_TABLE, &s("callgate")),
            nla(NFTA_CHAIN_NAME, &s("allow")),
        ]);
        assert_eq!(
            parse_chain(&regular, "callgate").unwrap(),
            Some(KernelChain {
                name: "allow".into(),
                hook: None,
                policy: None,
            })
        );
        assert_eq!(parse_chain(&regular, "other").unwrap(), None);
    }

    #[test]
    fn set_key_types_and_flags() {
        assert_eq!(key_type_names(7), ["ipv4_addr"]);
        // ipv4_addr . inet_proto . inet_service
        assert_eq!(
            key_type_names((7 << 12) | (12 << 6) | 13),
            ["ipv4_addr", "inet_proto", "inet_service"]
        );
        assert_eq!(key_type_names((8 << 6) | 63), ["ipv6_addr", "type63"]);
        assert_eq!(key_type_names(41), ["ifname"]);
        assert!(key_type_names(0).is_empty());
        assert_eq!(set_flag_names(0x4 | 0x10), ["interval", "timeout"]);
        assert_eq!(
            set_flag_names(0x1 | 0x2 | 0x20 | 0x8000),
            ["anonymous", "constant", "dynamic", "flag 0x8000"]
        );
        let msg = message(&[
            nla(NFTA_SET_TABLE, &s("callgate")),
            nla(NFTA_SET_NAME, &s("__set0")),
            nla(NFTA_SET_FLAGS, &3u32.to_be_bytes()),
            nla(NFTA_SET_KEY_TYPE, &7u32.to_be_bytes()),
            nla(5, &4u32.to_be_bytes()),
        ]);
        assert_eq!(
            parse_set(&msg, "callgate").unwrap(),
            Some(KernelSet {
                name: "__set0".into(),
                key_types: vec!["ipv4_addr".into()],
                flags: vec!["anonymous".into(), "constant".into()],
                anonymous: true,
                key_len: 4,
            })
        );
    }

    #[test]
    fn malformed_attributes_are_errors() {
        let msg = message(&[
            nla(NFTA_RULE_TABLE, &s("callgate")),
            nla(NFTA_RULE_HANDLE, &[0, 1]),
        ]);
        assert!(parse_rule(&msg, "callgate").is_err());
        assert!(parse_rule(&[1, 0], "callgate").is_err());
        let bad_verdict = expr(
            "immediate",
            &[
                nla(NFTA_IMMEDIATE_DREG, &0u32.to_be_bytes()),
                nested(NFTA_IMMEDIATE_DATA, &[nested(NFTA_DATA_VERDICT, &[])]),
            ],
        );
        assert!(parse_rule(&rule_msg("callgate", &[bad_verdict], None), "callgate").is_err());
    }

    #[test]
    fn dump_request_bytes() {
        let bytes = encode(
            NfTablesMessage::GetRule(RuleMessage {
                attributes: vec![RuleAttribute::Table("callgate".into())],
            }),
            NLM_F_REQUEST | NLM_F_DUMP,
            0x0102_0304,
        );
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            36, 0, 0, 0,     // len: 16 + 4 + 16
            7, 0x0a,         // NFT_MSG_GETRULE | NFNL_SUBSYS_NFTABLES << 8
            0x01, 0x03,      // NLM_F_REQUEST | NLM_F_DUMP
            4, 3, 2, 1,      // seq
            0, 0, 0, 0,      // port
            1, 0, 0, 0,      // NFPROTO_INET, v0, res_id 0
            13, 0, 1, 0, b'c', b'a', b'l', b'l', b'g', b'a', b't', b'e', 0, 0, 0, 0,
        ];
        assert_eq!(bytes, want);
    }
}
