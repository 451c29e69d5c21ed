//! What a rule matches, in one normal form that the intended rule ([`intended`]), the
//! kernel's expressions as read over netlink ([`from_kernel`]) and nft's JSON listing
//! ([`from_json`]) are all brought to, so that the read-back can tell a rule that lost (or
//! gained, or changed) a match from the one that was applied.
//!
//! ## The normal form
//! A rule's matches are a set of [`Match`]es: a field (`ip saddr`, `meta iifname`,
//! `ip saddr . ip daddr . meta l4proto . th dport`, `ct state`, ...) and what it is
//! compared with (`@set`, a literal, `{ a, b }` for an inline set, `!= …` when inverted).
//! A rule matches when all its matches do, in any order and however often each is
//! repeated, so a set (sorted, without duplicates) is the right thing to compare.
//!
//! Dependencies are matches like any other: nft puts `meta nfproto ipv4` before an
//! `ip saddr` in an `inet` table, and `meta l4proto icmp` before `icmp type` when the rule
//! lacks it. [`intended`] adds them as nft does for rules as the renderer writes them; the
//! kernel has them; nft's JSON hides them, so [`from_json`] adds them back (and writes
//! `tcp dport` as `meta l4proto tcp` and `th dport`, as the kernel holds it). Only the
//! netlink path can therefore see a missing dependency. (An `icmp type` without an
//! explicit `meta l4proto icmp` also gets a `meta nfproto ipv4` from nft, which the JSON
//! path does not add back; the renderer always writes the `meta l4proto`.)
//!
//! Values are named as nft names them where this module knows the name (protocols,
//! ICMP types, ct states); other values are numbers or hex. A rule with an expression or
//! statement this module does not read gets a match `other NAME`, which the intended
//! rule never has.
//!
//! ## Limits
//! - Inline interval sets are shown as merged intervals by the netlink path and as nft
//!   prints them by the JSON path; the rendered ruleset has none.
//! - The fields known by name are those the rendered ruleset uses; others read as raw
//!   payload (`@nh,96,32`) or `meta key N`, `ct key N`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use crate::model::Cond;
use crate::netlink::{KernelElem, KernelExpr, KernelRule, KernelTable};

/// One match of a rule: `left` is compared with `right`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Match {
    /// The field, or a concatenation of fields joined by ` . `.
    pub left: String,
    /// `@set`, a value, `{ a, b }`, prefixed by `!= ` (or `< ` …) unless it is an equality.
    pub right: String,
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.left, self.right)
    }
}

/// Everything a rule matches.
pub type Matches = BTreeSet<Match>;

fn m(left: impl Into<String>, right: impl Into<String>) -> Match {
    Match {
        left: left.into(),
        right: right.into(),
    }
}

/// `ct state` bits, in the order nft lists them.
const CT_STATES: [(u32, &str); 5] = [
    (1, "invalid"),
    (2, "established"),
    (4, "related"),
    (8, "new"),
    (64, "untracked"),
];

/// `inet_proto` names nft prints.
const L4PROTOS: [(u8, &str); 12] = [
    (1, "icmp"),
    (2, "igmp"),
    (4, "ipip"),
    (6, "tcp"),
    (17, "udp"),
    (33, "dccp"),
    (41, "ipv6"),
    (47, "gre"),
    (50, "esp"),
    (51, "ah"),
    (58, "ipv6-icmp"),
    (132, "sctp"),
];

/// `icmp_type` names nft prints.
const ICMP_TYPES: [(u8, &str); 15] = [
    (0, "echo-reply"),
    (3, "destination-unreachable"),
    (4, "source-quench"),
    (5, "redirect"),
    (8, "echo-request"),
    (9, "router-advertisement"),
    (10, "router-solicitation"),
    (11, "time-exceeded"),
    (12, "parameter-problem"),
    (13, "timestamp-request"),
    (14, "timestamp-reply"),
    (15, "info-request"),
    (16, "info-reply"),
    (17, "address-mask-request"),
    (18, "address-mask-reply"),
];

/// `icmpv6_type` names nft prints.
const ICMPV6_TYPES: [(u8, &str); 18] = [
    (1, "destination-unreachable"),
    (2, "packet-too-big"),
    (3, "time-exceeded"),
    (4, "parameter-problem"),
    (128, "echo-request"),
    (129, "echo-reply"),
    (130, "mld-listener-query"),
    (131, "mld-listener-report"),
    (132, "mld-listener-done"),
    (133, "nd-router-solicit"),
    (134, "nd-router-advert"),
    (135, "nd-neighbor-solicit"),
    (136, "nd-neighbor-advert"),
    (137, "nd-redirect"),
    (138, "router-renumbering"),
    (141, "ind-neighbor-solicit"),
    (142, "ind-neighbor-advert"),
    (143, "mld2-listener-report"),
];

fn name_of(table: &[(u8, &'static str)], v: u8) -> String {
    table
        .iter()
        .find(|(n, _)| *n == v)
        .map_or_else(|| v.to_string(), |(_, s)| (*s).to_owned())
}

/// The nfproto dependency of an `ip` / `ip6` field.
fn nfproto(v6: bool) -> Match {
    m("meta nfproto", if v6 { "ipv6" } else { "ipv4" })
}

fn ip(v6: bool) -> &'static str {
    if v6 {
        "ip6"
    } else {
        "ip"
    }
}

/// One value, or an inline set of them (sorted, without duplicates).
fn one_or_set(values: impl IntoIterator<Item = String>) -> String {
    let v: BTreeSet<String> = values.into_iter().collect();
    match v.len() {
        1 => v.into_iter().next().unwrap_or_default(),
        _ => format!("{{ {} }}", v.into_iter().collect::<Vec<_>>().join(", ")),
    }
}

fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

/// `ct state` names, in bit order.
fn ct_states<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = names.into_iter().collect();
    v.sort_by_key(|n| {
        CT_STATES
            .iter()
            .position(|(_, s)| s == n)
            .unwrap_or(usize::MAX)
    });
    v.dedup();
    v.join(",")
}

/// What the intended rule with `conds` matches, dependencies included as nft adds them.
pub fn intended(conds: &[Cond]) -> Matches {
    let mut out = Matches::new();
    for c in conds {
        match c {
            Cond::Iifname(v) => {
                out.insert(m("meta iifname", one_or_set(v.iter().map(|n| quoted(n)))));
            }
            Cond::Oifname(v) => {
                out.insert(m("meta oifname", one_or_set(v.iter().map(|n| quoted(n)))));
            }
            Cond::CtState(v) => {
                out.insert(m("ct state", ct_states(v.iter().copied())));
            }
            Cond::L4Proto(v) => {
                out.insert(m(
                    "meta l4proto",
                    one_or_set(v.iter().map(|p| (*p).to_owned())),
                ));
            }
            Cond::SaddrIn { v6, set } => {
                out.insert(nfproto(*v6));
                out.insert(m(format!("{} saddr", ip(*v6)), format!("@{set}")));
            }
            Cond::DaddrIn { v6, set } => {
                out.insert(nfproto(*v6));
                out.insert(m(format!("{} daddr", ip(*v6)), format!("@{set}")));
            }
            Cond::DportIn(set) => {
                out.insert(m("th dport", format!("@{set}")));
            }
            Cond::Dport(p) => {
                out.insert(m("th dport", p.to_string()));
            }
            Cond::IcmpType(v) => {
                out.insert(m("meta l4proto", "icmp"));
                out.insert(m(
                    "icmp type",
                    one_or_set(v.iter().map(|t| (*t).to_owned())),
                ));
            }
            Cond::Icmpv6Type(v) => {
                out.insert(m("meta l4proto", "ipv6-icmp"));
                out.insert(m(
                    "icmpv6 type",
                    one_or_set(v.iter().map(|t| (*t).to_owned())),
                ));
            }
            Cond::HopLimit(h) => {
                out.insert(nfproto(true));
                out.insert(m("ip6 hoplimit", h.to_string()));
            }
            Cond::PinholeIn { v6, set } => {
                let f = ip(*v6);
                out.insert(nfproto(*v6));
                out.insert(m(
                    format!("{f} saddr . {f} daddr . meta l4proto . th dport"),
                    format!("@{set}"),
                ));
            }
        }
    }
    out
}

/// The differences between what a rule should match and what it does, as text:
/// `missing `…`; unexpected `…``. `None` when they are the same.
pub fn difference(want: &Matches, got: &Matches) -> Option<String> {
    let list = |it: &mut dyn Iterator<Item = &Match>| {
        it.map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
    };
    let missing = list(&mut want.difference(got));
    let unexpected = list(&mut got.difference(want));
    match (missing.is_empty(), unexpected.is_empty()) {
        (true, true) => None,
        (false, true) => Some(format!("missing {missing}")),
        (true, false) => Some(format!("unexpected {unexpected}")),
        (false, false) => Some(format!("missing {missing}; unexpected {unexpected}")),
    }
}

/// How the value of a field is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ifname,
    L4proto,
    Nfproto,
    Port,
    V4,
    V6,
    Icmp,
    Icmpv6,
    CtState,
    /// An unsigned number (big endian).
    Int,
    /// Bytes as hex.
    Hex,
}

/// A field a register was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: String,
    kind: Kind,
    /// Bytes loaded.
    len: usize,
    /// A `bitwise` mask applied since, with a non-zero xor written into `name`.
    mask: Option<Vec<u8>>,
}

impl Field {
    fn new(name: impl Into<String>, kind: Kind, len: usize) -> Self {
        Field {
            name: name.into(),
            kind,
            len,
            mask: None,
        }
    }

    /// 4-byte register slots the field occupies.
    fn slots(&self) -> usize {
        self.len.div_ceil(4).max(1)
    }
}

/// `NFT_META_*` keys nft names.
fn meta_field(key: u32) -> Field {
    match key {
        6 => Field::new("meta iifname", Kind::Ifname, 16),
        7 => Field::new("meta oifname", Kind::Ifname, 16),
        15 => Field::new("meta nfproto", Kind::Nfproto, 1),
        16 => Field::new("meta l4proto", Kind::L4proto, 1),
        k => Field::new(format!("meta key {k}"), Kind::Hex, 4),
    }
}

/// A payload field, named as nft names it where this module knows it, raw
/// (`@nh,OFFSET,LEN` in bits, as nft writes raw payloads) otherwise. What the network
/// header holds depends on the family the rule fixes with `meta nfproto` (`nf`), what the
/// first byte of the transport header is on the protocol it fixes with `meta l4proto`
/// (`l4`). A load of the first bytes of an address only (nft's way to match a prefix of
/// whole bytes) is that address field, shorter.
fn payload_field(base: u32, offset: u32, len: u32, nf: Option<u8>, l4: Option<u8>) -> Field {
    let n = len as usize;
    match (base, offset, len, nf, l4) {
        (1, 12, 1..=4, Some(2), _) => Field::new("ip saddr", Kind::V4, n),
        (1, 16, 1..=4, Some(2), _) => Field::new("ip daddr", Kind::V4, n),
        (1, 8, 1, Some(2), _) => Field::new("ip ttl", Kind::Int, n),
        (1, 9, 1, Some(2), _) => Field::new("ip protocol", Kind::L4proto, n),
        (1, 8, 1..=16, Some(10), _) => Field::new("ip6 saddr", Kind::V6, n),
        (1, 24, 1..=16, Some(10), _) => Field::new("ip6 daddr", Kind::V6, n),
        (1, 7, 1, Some(10), _) => Field::new("ip6 hoplimit", Kind::Int, n),
        (1, 6, 1, Some(10), _) => Field::new("ip6 nexthdr", Kind::L4proto, n),
        (2, 0, 2, _, _) => Field::new("th sport", Kind::Port, n),
        (2, 2, 2, _, _) => Field::new("th dport", Kind::Port, n),
        (2, 0, 1, _, Some(1)) => Field::new("icmp type", Kind::Icmp, n),
        (2, 0, 1, _, Some(58)) => Field::new("icmpv6 type", Kind::Icmpv6, n),
        _ => {
            let base = match base {
                0 => "ll",
                1 => "nh",
                2 => "th",
                3 => "ih",
                _ => "base?",
            };
            let kind = if n <= 16 { Kind::Int } else { Kind::Hex };
            Field::new(format!("@{base},{},{}", offset * 8, len * 8), kind, n)
        }
    }
}

fn ct_field(key: u32, dir: Option<u8>) -> Field {
    let dir = match dir {
        None => String::new(),
        Some(0) => " original".into(),
        Some(1) => " reply".into(),
        Some(d) => format!(" dir {d}"),
    };
    match key {
        0 => Field::new(format!("ct{dir} state"), Kind::CtState, 4),
        k => Field::new(format!("ct{dir} key {k}"), Kind::Hex, 4),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn be_uint(bytes: &[u8]) -> u128 {
    bytes
        .iter()
        .fold(0u128, |acc, &b| (acc << 8) | u128::from(b))
}

/// `bytes` (exactly the field's length, or shorter for an interface name prefix) as
/// nft writes a value of `kind`.
fn value(kind: Kind, bytes: &[u8]) -> String {
    match kind {
        Kind::Ifname => match bytes.iter().position(|&b| b == 0) {
            Some(end) => quoted(&String::from_utf8_lossy(
                bytes.get(..end).unwrap_or_default(),
            )),
            // no NUL: a prefix match, nft's `"name*"`
            None => quoted(&format!("{}*", String::from_utf8_lossy(bytes))),
        },
        Kind::L4proto => bytes
            .first()
            .map_or_else(|| hex(bytes), |&b| name_of(&L4PROTOS, b)),
        Kind::Nfproto => match bytes.first() {
            Some(2) => "ipv4".into(),
            Some(10) => "ipv6".into(),
            _ => be_uint(bytes).to_string(),
        },
        Kind::Icmp => bytes
            .first()
            .map_or_else(|| hex(bytes), |&b| name_of(&ICMP_TYPES, b)),
        Kind::Icmpv6 => bytes
            .first()
            .map_or_else(|| hex(bytes), |&b| name_of(&ICMPV6_TYPES, b)),
        Kind::V4 => <[u8; 4]>::try_from(bytes)
            .map_or_else(|_| hex(bytes), |a| Ipv4Addr::from(a).to_string()),
        Kind::V6 => <[u8; 16]>::try_from(bytes)
            .map_or_else(|_| hex(bytes), |a| Ipv6Addr::from(a).to_string()),
        Kind::Port | Kind::Int if bytes.len() <= 16 => be_uint(bytes).to_string(),
        Kind::CtState => ct_state_bits(bytes).unwrap_or_else(|| hex(bytes)),
        Kind::Port | Kind::Int | Kind::Hex => hex(bytes),
    }
}

/// The names of the `ct state` bits set in a host-order u32, if all bits have names.
fn ct_state_bits(bytes: &[u8]) -> Option<String> {
    let v = u32::from_ne_bytes(<[u8; 4]>::try_from(bytes).ok()?);
    let names: Vec<&str> = CT_STATES
        .iter()
        .filter(|(bit, _)| v & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    let known: u32 = CT_STATES.iter().map(|(b, _)| b).sum();
    (v & !known == 0 && !names.is_empty()).then(|| names.join(","))
}

/// The prefix length of a mask made of leading ones (and nothing else), if it is one.
fn prefix_len(mask: &[u8]) -> Option<u32> {
    let bits = u32::try_from(mask.len()).ok()?.checked_mul(8)?;
    if bits == 0 || bits > 128 {
        return None;
    }
    let v = be_uint(mask);
    let ones = v.count_ones();
    let want = match ones {
        0 => 0,
        n => (u128::MAX >> (128 - n)) << (bits - n),
    };
    (v == want).then_some(ones)
}

/// Turns a rule's kernel expressions into its matches. Registers are tracked from the
/// loads to the expressions that use them; a concatenation is the run of fields loaded
/// into consecutive registers from the one a lookup reads.
struct Decoder<'a> {
    table: &'a KernelTable,
    /// Loaded fields by 4-byte register slot (`NFT_REG32_00` = 0; `NFT_REG_1` = 0..4).
    regs: std::collections::BTreeMap<usize, Field>,
    /// The family a `meta nfproto` match in the rule fixes.
    nf: Option<u8>,
    /// The protocol a `meta l4proto` match in the rule fixes.
    l4: Option<u8>,
    /// A `cmp gte` waiting for the `cmp lte` on the same register that makes it a range
    /// (nft's `lo-hi`): register, field, low end.
    gte: Option<(u32, String, String)>,
    out: Matches,
}

/// The 4-byte slot a register number starts at.
fn slot(reg: u32) -> Option<usize> {
    match reg {
        1..=4 => Some((reg as usize - 1) * 4),
        8..=23 => Some(reg as usize - 8),
        _ => None,
    }
}

impl Decoder<'_> {
    fn load(&mut self, dreg: u32, field: Field) {
        let Some(s) = slot(dreg) else {
            self.out
                .insert(m("other", format!("load into register {dreg}")));
            return;
        };
        let end = s + field.slots();
        // a load overwrites whatever it overlaps
        self.regs.retain(|&at, f| at + f.slots() <= s || at >= end);
        self.regs.insert(s, field);
    }

    /// The fields a match reads from `reg`: consecutive loads covering `len` bytes (or all
    /// consecutive ones when the length is unknown). A register stays loaded until
    /// overwritten (nft compares one twice for a range).
    fn fields(&self, reg: u32, len: Option<usize>) -> Vec<Field> {
        let mut out = Vec::new();
        let Some(mut at) = slot(reg) else {
            return out;
        };
        let mut covered = 0;
        while len.is_none_or(|l| covered < l) {
            let Some(f) = self.regs.get(&at) else {
                break;
            };
            at += f.slots();
            covered += f.slots() * 4;
            out.push(f.clone());
        }
        out
    }

    /// Emits a pending `>= low` that no `<= high` followed.
    fn flush_gte(&mut self) {
        if let Some((_, left, low)) = self.gte.take() {
            self.out.insert(m(left, format!(">= {low}")));
        }
    }

    /// The fields a match reads, named. A mask shows as `& MASK`, except where the compared
    /// value shows it (`in_value`: a `cmp` of an address, as a prefix, or of `ct state`).
    fn left(fields: &[Field], reg: u32, in_value: bool) -> String {
        if fields.is_empty() {
            return format!("register {reg}");
        }
        fields
            .iter()
            .map(|f| match &f.mask {
                Some(_) if in_value && matches!(f.kind, Kind::CtState | Kind::V4 | Kind::V6) => {
                    f.name.clone()
                }
                Some(mask) => format!("{} & {}", f.name, hex(mask)),
                None => f.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(" . ")
    }

    /// A key (`data`) split over `fields` (each padded to 4 bytes), as values.
    fn values(fields: &[Field], data: &[u8]) -> String {
        if fields.is_empty() {
            return hex(data);
        }
        let mut parts = Vec::new();
        let mut at = 0;
        for (i, f) in fields.iter().enumerate() {
            // the last (or only) component may be shorter (an interface name prefix)
            let end = if i + 1 == fields.len() {
                data.len().min(at + f.len)
            } else {
                at + f.len
            };
            let bytes = data.get(at..end).unwrap_or_default();
            parts.push(Self::masked(f, bytes));
            at += f.slots() * 4;
        }
        parts.join(" . ")
    }

    /// A value of `f`: an address field loaded in part or masked is a prefix.
    fn masked(f: &Field, bytes: &[u8]) -> String {
        let full = match f.kind {
            Kind::V4 => 4,
            Kind::V6 => 16,
            _ => return value(f.kind, bytes),
        };
        let plen = match &f.mask {
            Some(mask) => match prefix_len(mask) {
                Some(len) => len,
                None => return format!("{} & {}", value(f.kind, bytes), hex(mask)),
            },
            None => 8 * bytes.len() as u32,
        };
        let mut addr = bytes.to_vec();
        addr.resize(full, 0);
        if plen == 8 * full as u32 {
            value(f.kind, &addr)
        } else {
            format!("{}/{plen}", value(f.kind, &addr))
        }
    }

    fn cmp(&mut self, sreg: u32, op: u32, data: &[u8]) {
        let fields = self.fields(sreg, Some(data.len()));
        let left = Self::left(&fields, sreg, fields.len() == 1);
        // ct state: `(state & bits) != 0` is "any of bits", `== 0` "none of them"
        if let [f @ Field {
            kind: Kind::CtState,
            mask: Some(mask),
            ..
        }] = fields.as_slice()
        {
            if data.iter().all(|&b| b == 0) && (op == 0 || op == 1) {
                let names = ct_state_bits(mask).unwrap_or_else(|| hex(mask));
                let right = if op == 1 {
                    names
                } else {
                    format!("!= {names}")
                };
                self.out.insert(m(f.name.clone(), right));
                return;
            }
        }
        let v = Self::values(&fields, data);
        // `cmp gte` then `cmp lte` on one register: nft's range `lo-hi`
        match (op, self.gte.take()) {
            (3, Some((reg, l, low))) if reg == sreg && l == left => {
                self.out.insert(m(left, format!("{low}-{v}")));
                return;
            }
            (_, pending) => {
                self.gte = pending;
                self.flush_gte();
            }
        }
        let op = match op {
            0 => "",
            1 => "!= ",
            2 => "< ",
            3 => "<= ",
            4 => "> ",
            5 => {
                self.gte = Some((sreg, left, v));
                return;
            }
            _ => "?? ",
        };
        self.out.insert(m(left, format!("{op}{v}")));
    }

    fn lookup(&mut self, sreg: u32, set: &str, dreg: Option<u32>, invert: bool) {
        let known = self.table.sets.iter().find(|s| s.name == set);
        let len = known.map(|s| s.key_len as usize).filter(|&l| l > 0);
        let fields = self.fields(sreg, len);
        let left = Self::left(&fields, sreg, false);
        let target = match self.table.anonymous_elements.get(set) {
            Some(elems) => {
                let interval = known.is_some_and(|s| s.flags.iter().any(|f| f == "interval"));
                Self::inline_set(&fields, elems, interval)
            }
            None => format!("@{set}"),
        };
        let right = match (dreg, invert) {
            (Some(0), _) => format!("vmap {target}"),
            (Some(_), _) => format!("map {target}"),
            (None, true) => format!("!= {target}"),
            (None, false) => target,
        };
        self.out.insert(m(left, right));
    }

    /// The elements of an inline set read through `fields`.
    fn inline_set(fields: &[Field], elems: &[KernelElem], interval: bool) -> String {
        let single = match fields {
            [f] if interval && f.len <= 16 => Some(f),
            _ => None,
        };
        let values: Vec<String> = match single {
            // an interval set of one field: its covered intervals
            Some(f) => {
                let max = if f.len >= 16 {
                    u128::MAX
                } else {
                    (1u128 << (8 * f.len)) - 1
                };
                let raw: Vec<_> = elems
                    .iter()
                    .map(|e| (be_uint(&e.key), e.flags, e.key_end.as_deref().map(be_uint)))
                    .collect();
                crate::netlink::derive_intervals(&raw, max, true)
                    .into_iter()
                    .map(|(lo, hi)| interval_text(f, lo, hi))
                    .collect()
            }
            None => elems
                .iter()
                .map(|e| {
                    let v = Self::values(fields, &e.key);
                    match &e.key_end {
                        Some(end) if *end != e.key => format!("{v}-{}", Self::values(fields, end)),
                        _ => v,
                    }
                })
                .collect(),
        };
        let v: BTreeSet<String> = values.into_iter().collect();
        format!("{{ {} }}", v.into_iter().collect::<Vec<_>>().join(", "))
    }
}

/// An interval of field `f` as nft prints it: a value, a prefix, or `lo-hi`.
fn interval_text(f: &Field, lo: u128, hi: u128) -> String {
    let bytes = |v: u128| -> Vec<u8> {
        let all = v.to_be_bytes();
        all.get(16 - f.len..).unwrap_or_default().to_vec()
    };
    if lo == hi {
        return value(f.kind, &bytes(lo));
    }
    let span = hi - lo;
    let bits = 8 * f.len as u32;
    if matches!(f.kind, Kind::V4 | Kind::V6) && lo & span == 0 {
        // a whole prefix: `span` is all ones below its length
        if span == u128::MAX {
            return format!("{}/0", value(f.kind, &bytes(lo)));
        }
        if (span + 1).is_power_of_two() {
            return format!("{}/{}", value(f.kind, &bytes(lo)), bits - span.count_ones());
        }
    }
    format!(
        "{}-{}",
        value(f.kind, &bytes(lo)),
        value(f.kind, &bytes(hi))
    )
}

/// What `rule` (from `table`, whose sets and inline sets' elements it may use) matches.
pub fn from_kernel(rule: &KernelRule, table: &KernelTable) -> Matches {
    let mut d = Decoder {
        table,
        regs: Default::default(),
        nf: fixed(&rule.exprs, 15),
        l4: fixed(&rule.exprs, 16),
        gte: None,
        out: Matches::new(),
    };
    for e in &rule.exprs {
        if !matches!(e, KernelExpr::Cmp { op: 3, .. }) {
            d.flush_gte();
        }
        match e {
            KernelExpr::Meta { key, dreg } => d.load(*dreg, meta_field(*key)),
            KernelExpr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let f = payload_field(*base, *offset, *len, d.nf, d.l4);
                d.load(*dreg, f);
            }
            KernelExpr::Ct { key, dreg, dir } => d.load(*dreg, ct_field(*key, *dir)),
            KernelExpr::Bitwise {
                sreg,
                dreg,
                len,
                mask,
                xor,
            } => match d.fields(*sreg, Some(*len as usize)).as_slice() {
                [f] if f.mask.is_none() => {
                    let mut f = f.clone();
                    if xor.iter().any(|&b| b != 0) {
                        f.name = format!("{} ^ {}", f.name, hex(xor));
                    }
                    f.mask = Some(mask.clone());
                    d.load(*dreg, f);
                }
                _ => {
                    d.out.insert(m("other", "bitwise"));
                }
            },
            KernelExpr::Byteorder {
                sreg,
                dreg,
                op,
                len,
                size,
            } => {
                // The kernel converts `len / size` elements of `size` bytes. nft emits one
                // for `meta l4proto` in interval concatenations with len 1 and size 2: it
                // converts nothing, the field stays what it is. Any other changes it.
                match (len < size, d.fields(*sreg, None).first()) {
                    (true, Some(f)) => {
                        let f = f.clone();
                        d.load(*dreg, f);
                    }
                    _ => {
                        d.out
                            .insert(m("other", format!("byteorder {op} len {len} size {size}")));
                    }
                }
            }
            KernelExpr::Cmp { sreg, op, data } => d.cmp(*sreg, *op, data),
            KernelExpr::Lookup {
                sreg,
                set,
                dreg,
                invert,
            } => d.lookup(*sreg, set, *dreg, *invert),
            KernelExpr::Range { sreg, op, from, to } => {
                let fields = d.fields(*sreg, Some(from.len()));
                let left = Decoder::left(&fields, *sreg, false);
                let range = format!(
                    "{}-{}",
                    Decoder::values(&fields, from),
                    Decoder::values(&fields, to)
                );
                let right = if *op == 1 {
                    format!("!= {range}")
                } else {
                    range
                };
                d.out.insert(m(left, right));
            }
            KernelExpr::Other(name) => {
                d.out.insert(m("other", name.clone()));
            }
        }
    }
    d.flush_gte();
    d.out
}

/// The value a rule fixes for meta key `key` (15 `nfproto`, 16 `l4proto`) with `meta KEY
/// == V`: a load of it into a register compared for equality with one byte.
fn fixed(exprs: &[KernelExpr], key: u32) -> Option<u8> {
    let mut reg = None;
    for e in exprs {
        match e {
            KernelExpr::Meta { key: k, dreg } if *k == key => reg = Some(*dreg),
            KernelExpr::Cmp { sreg, op: 0, data } if Some(*sreg) == reg && data.len() == 1 => {
                return data.first().copied();
            }
            _ => {}
        }
    }
    None
}

/// A field of nft's JSON (`left` of a match), as this module names it, with the
/// dependencies nft hides in its listing.
fn json_field(v: &Value, deps: &mut Vec<Match>) -> (String, Kind) {
    if let Some(meta) = v.get("meta") {
        let key = meta.get("key").and_then(Value::as_str).unwrap_or("?");
        let kind = match key {
            "iifname" | "oifname" => Kind::Ifname,
            "l4proto" => Kind::L4proto,
            "nfproto" => Kind::Nfproto,
            _ => Kind::Hex,
        };
        return (format!("meta {key}"), kind);
    }
    if let Some(p) = v.get("payload") {
        let proto = p.get("protocol").and_then(Value::as_str);
        let field = p.get("field").and_then(Value::as_str);
        return match (proto, field) {
            (Some(proto @ ("ip" | "ip6")), Some(field)) => {
                deps.push(nfproto(proto == "ip6"));
                let kind = match (proto, field) {
                    ("ip", "saddr" | "daddr") => Kind::V4,
                    ("ip6", "saddr" | "daddr") => Kind::V6,
                    ("ip", "protocol") | ("ip6", "nexthdr") => Kind::L4proto,
                    _ => Kind::Int,
                };
                (format!("{proto} {field}"), kind)
            }
            (Some("th"), Some(field)) => (format!("th {field}"), Kind::Port),
            (
                Some(proto @ ("tcp" | "udp" | "udplite" | "sctp" | "dccp")),
                Some(field @ ("sport" | "dport")),
            ) => {
                deps.push(m("meta l4proto", proto));
                (format!("th {field}"), Kind::Port)
            }
            (Some("icmp"), Some("type")) => {
                deps.push(m("meta l4proto", "icmp"));
                ("icmp type".into(), Kind::Icmp)
            }
            (Some("icmpv6"), Some("type")) => {
                deps.push(m("meta l4proto", "ipv6-icmp"));
                ("icmpv6 type".into(), Kind::Icmpv6)
            }
            (Some(proto), Some(field)) => (format!("{proto} {field}"), Kind::Int),
            _ => {
                let base = p.get("base").and_then(Value::as_str).unwrap_or("?");
                let offset = p.get("offset").and_then(Value::as_u64).unwrap_or(0);
                let len = p.get("len").and_then(Value::as_u64).unwrap_or(0);
                (format!("@{base},{offset},{len}"), Kind::Int)
            }
        };
    }
    if let Some(ct) = v.get("ct") {
        let key = ct.get("key").and_then(Value::as_str).unwrap_or("?");
        let dir = ct
            .get("dir")
            .and_then(Value::as_str)
            .map(|d| format!(" {d}"))
            .unwrap_or_default();
        let kind = if key == "state" {
            Kind::CtState
        } else {
            Kind::Hex
        };
        return (format!("ct{dir} {key}"), kind);
    }
    if let Some(parts) = v.get("concat").and_then(Value::as_array) {
        let names: Vec<String> = parts.iter().map(|p| json_field(p, deps).0).collect();
        return (names.join(" . "), Kind::Hex);
    }
    (v.to_string(), Kind::Hex)
}

/// A value of nft's JSON (`right` of a match, an element of an inline set).
fn json_value(v: &Value, kind: Kind) -> String {
    match v {
        Value::String(s) if s.starts_with('@') => s.clone(),
        Value::String(s) if kind == Kind::Ifname => quoted(s),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) if kind == Kind::CtState => ct_states(a.iter().filter_map(Value::as_str)),
        Value::Object(o) => {
            if let Some(items) = o.get("set").and_then(Value::as_array) {
                let v: BTreeSet<String> = items.iter().map(|i| json_value(i, kind)).collect();
                format!("{{ {} }}", v.into_iter().collect::<Vec<_>>().join(", "))
            } else if let Some(p) = o.get("prefix") {
                let addr = p
                    .get("addr")
                    .map_or_else(String::new, |a| json_value(a, kind));
                let len = p.get("len").map_or_else(String::new, Value::to_string);
                format!("{addr}/{len}")
            } else if let Some(Value::Array(r)) = o.get("range") {
                let lo = r.first().map_or_else(String::new, |x| json_value(x, kind));
                let hi = r.get(1).map_or_else(String::new, |x| json_value(x, kind));
                format!("{lo}-{hi}")
            } else if let Some(parts) = o.get("concat").and_then(Value::as_array) {
                parts
                    .iter()
                    .map(|p| json_value(p, Kind::Hex))
                    .collect::<Vec<_>>()
                    .join(" . ")
            } else if let Some(e) = o.get("elem") {
                e.get("val")
                    .map_or_else(String::new, |x| json_value(x, kind))
            } else {
                v.to_string()
            }
        }
        other => other.to_string(),
    }
}

/// Statements of nft's JSON that are not matches and are read elsewhere (the verdict, the
/// counter).
const JSON_SKIPPED: [&str; 7] = [
    "counter", "accept", "drop", "jump", "goto", "return", "continue",
];

/// What a rule of `nft -j list` matches, from its `expr` statements.
pub fn from_json(stmts: &[Value]) -> Matches {
    let mut out = Matches::new();
    for st in stmts {
        let Some((key, body)) = st.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        match key.as_str() {
            "match" => {
                let mut deps = Vec::new();
                let (left, kind) = json_field(body.get("left").unwrap_or(&Value::Null), &mut deps);
                let right = json_value(body.get("right").unwrap_or(&Value::Null), kind);
                let op = body.get("op").and_then(Value::as_str).unwrap_or("==");
                let right = match op {
                    "==" | "in" => right,
                    op => format!("{op} {right}"),
                };
                out.extend(deps);
                out.insert(m(left, right));
            }
            "vmap" => {
                let mut deps = Vec::new();
                let (left, kind) = json_field(body.get("key").unwrap_or(&Value::Null), &mut deps);
                let data = json_value(body.get("data").unwrap_or(&Value::Null), kind);
                out.extend(deps);
                out.insert(m(left, format!("vmap {data}")));
            }
            k if JSON_SKIPPED.contains(&k) => {}
            other => {
                out.insert(m("other", other));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::KernelSet;
    use serde_json::json;

    fn texts(m: &Matches) -> Vec<String> {
        m.iter().map(ToString::to_string).collect()
    }

    fn sa(v6: bool, set: &str) -> Cond {
        Cond::SaddrIn {
            v6,
            set: set.into(),
        }
    }

    #[test]
    fn intended_adds_the_dependencies_nft_adds() {
        let conds = [
            Cond::Iifname(vec!["wan0".into()]),
            sa(false, "a_x_s4"),
            Cond::L4Proto(vec!["udp"]),
            Cond::DportIn("a_x_p".into()),
        ];
        assert_eq!(
            texts(&intended(&conds)),
            [
                "ip saddr @a_x_s4",
                "meta iifname \"wan0\"",
                "meta l4proto udp",
                "meta nfproto ipv4",
                "th dport @a_x_p"
            ]
        );
        let nd = [
            Cond::L4Proto(vec!["ipv6-icmp"]),
            Cond::Icmpv6Type(vec!["nd-neighbor-solicit", "nd-neighbor-advert"]),
            Cond::HopLimit(255),
        ];
        assert_eq!(
            texts(&intended(&nd)),
            [
                "icmpv6 type { nd-neighbor-advert, nd-neighbor-solicit }",
                "ip6 hoplimit 255",
                "meta l4proto ipv6-icmp",
                "meta nfproto ipv6"
            ]
        );
        let ct = [Cond::CtState(vec!["related", "established"])];
        assert_eq!(texts(&intended(&ct)), ["ct state established,related"]);
        let pinhole = [Cond::PinholeIn {
            v6: true,
            set: "pinhole6".into(),
        }];
        assert_eq!(
            texts(&intended(&pinhole)),
            [
                "ip6 saddr . ip6 daddr . meta l4proto . th dport @pinhole6",
                "meta nfproto ipv6"
            ]
        );
    }

    /// Rules as the renderer writes them, as `nft -j list table` (nft 1.0.6) lists them.
    #[test]
    fn nft_json_reads_as_intended() {
        let cases = [
            (
                vec![
                    Cond::Iifname(vec!["wan0".into()]),
                    sa(false, "a_carrier_sip_udp_s4"),
                    Cond::L4Proto(vec!["udp"]),
                    Cond::DportIn("a_carrier_sip_udp_p".into()),
                ],
                json!([
                    {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "wan0"}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                               "right": "@a_carrier_sip_udp_s4"}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}},
                               "right": "@a_carrier_sip_udp_p"}},
                    {"counter": {"packets": 0, "bytes": 0}},
                    {"accept": null}
                ]),
            ),
            (
                vec![
                    Cond::Iifname(vec!["sync0".into(), "mgmt0".into(), "priv0".into()]),
                    Cond::L4Proto(vec!["icmp"]),
                    Cond::IcmpType(vec!["echo-request"]),
                ],
                json!([
                    {"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                               "right": {"set": ["sync0", "mgmt0", "priv0"]}}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "icmp", "field": "type"}},
                               "right": "echo-request"}},
                    {"accept": null}
                ]),
            ),
            (
                vec![
                    Cond::L4Proto(vec!["ipv6-icmp"]),
                    Cond::Icmpv6Type(vec!["mld-listener-report", "mld2-listener-report"]),
                    Cond::HopLimit(1),
                ],
                json!([
                    {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                               "right": {"set": ["mld-listener-report", "mld2-listener-report"]}}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "hoplimit"}},
                               "right": 1}},
                    {"accept": null}
                ]),
            ),
            (
                vec![Cond::CtState(vec!["established", "related"])],
                json!([
                    {"match": {"op": "in", "left": {"ct": {"key": "state"}},
                               "right": ["established", "related"]}},
                    {"accept": null}
                ]),
            ),
            (
                vec![
                    Cond::Iifname(vec!["priv0".into()]),
                    Cond::L4Proto(vec!["tcp", "udp"]),
                    Cond::Dport(5060),
                ],
                json!([
                    {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "priv0"}},
                    {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}},
                               "right": {"set": ["tcp", "udp"]}}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                               "right": 5060}},
                    {"accept": null}
                ]),
            ),
            (
                vec![Cond::PinholeIn {
                    v6: false,
                    set: "pinhole4".into(),
                }],
                json!([
                    {"match": {"op": "==", "left": {"concat": [
                        {"payload": {"protocol": "ip", "field": "saddr"}},
                        {"payload": {"protocol": "ip", "field": "daddr"}},
                        {"meta": {"key": "l4proto"}},
                        {"payload": {"protocol": "th", "field": "dport"}}]}, "right": "@pinhole4"}},
                    {"accept": null}
                ]),
            ),
            (
                vec![],
                json!([{"counter": null}, {"jump": {"target": "allow_dst"}}]),
            ),
        ];
        for (conds, stmts) in cases {
            let got = from_json(stmts.as_array().unwrap());
            assert_eq!(texts(&got), texts(&intended(&conds)), "{conds:?}");
        }
        // what the renderer never writes reads as something else
        let other = json!([
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}},
            {"log": {"prefix": "x"}},
            {"vmap": {"key": {"payload": {"protocol": "th", "field": "dport"}}, "data": "@m"}}
        ]);
        assert_eq!(
            texts(&from_json(other.as_array().unwrap())),
            [
                "ip saddr != 10.0.0.0/8",
                "meta nfproto ipv4",
                "other log",
                "th dport vmap @m"
            ]
        );
    }

    fn load_meta(key: u32, dreg: u32) -> KernelExpr {
        KernelExpr::Meta { key, dreg }
    }

    fn load(base: u32, offset: u32, len: u32, dreg: u32) -> KernelExpr {
        KernelExpr::Payload {
            base,
            offset,
            len,
            dreg,
        }
    }

    fn cmp(op: u32, data: &[u8]) -> KernelExpr {
        KernelExpr::Cmp {
            sreg: 1,
            op,
            data: data.to_vec(),
        }
    }

    fn lookup(sreg: u32, set: &str) -> KernelExpr {
        KernelExpr::Lookup {
            sreg,
            set: set.into(),
            dreg: None,
            invert: false,
        }
    }

    fn rule(exprs: Vec<KernelExpr>) -> KernelRule {
        KernelRule {
            chain: "input".into(),
            handle: 1,
            comment: String::new(),
            verdict: "accept".into(),
            packets: 0,
            bytes: 0,
            exprs,
        }
    }

    fn set(name: &str, key_len: u32, flags: &[&str]) -> KernelSet {
        KernelSet {
            name: name.into(),
            key_types: Vec::new(),
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            anonymous: name.starts_with("__"),
            key_len,
        }
    }

    fn elem(key: &[u8]) -> KernelElem {
        KernelElem {
            key: key.to_vec(),
            key_end: None,
            flags: 0,
            timeout_ms: None,
            expires_ms: None,
        }
    }

    fn ifname(name: &str) -> Vec<u8> {
        let mut b = name.as_bytes().to_vec();
        b.resize(16, 0);
        b
    }

    /// A table with the sets the rules below use.
    fn table() -> KernelTable {
        KernelTable {
            sets: vec![
                set("pinhole4", 16, &["interval", "timeout", "concat"]),
                set("pinhole6", 40, &["interval", "timeout", "concat"]),
                set("a_x_s4", 4, &["interval"]),
                set("__set0", 1, &["anonymous", "constant"]),
                set("__set2", 16, &["anonymous", "constant"]),
                set("__set9", 4, &["anonymous", "constant", "interval"]),
            ],
            anonymous_elements: [
                (
                    "__set0".to_owned(),
                    [135, 136, 133, 134].map(|t| elem(&[t])).to_vec(),
                ),
                (
                    "__set2".to_owned(),
                    ["priv0", "mgmt0", "sync0"]
                        .map(|n| elem(&ifname(n)))
                        .to_vec(),
                ),
                (
                    "__set9".to_owned(),
                    vec![
                        // rbtree: 10.0.0.0/8 and 192.0.2.1 (end elements are exclusive)
                        elem(&[10, 0, 0, 0]),
                        KernelElem {
                            flags: 1,
                            ..elem(&[11, 0, 0, 0])
                        },
                        elem(&[192, 0, 2, 1]),
                        KernelElem {
                            flags: 1,
                            ..elem(&[192, 0, 2, 2])
                        },
                    ],
                ),
            ]
            .into_iter()
            .collect(),
            ..KernelTable::default()
        }
    }

    /// Rules as `nft --debug=netlink list table` shows the rendered ones.
    #[test]
    fn kernel_expressions_read_as_intended() {
        let t = table();
        let cases = [
            // ip saddr . ip daddr . meta l4proto . th dport @pinhole4
            (
                vec![
                    load_meta(15, 1),
                    cmp(0, &[2]),
                    load(1, 12, 4, 1),
                    load(1, 16, 4, 9),
                    load_meta(16, 10),
                    KernelExpr::Byteorder {
                        sreg: 10,
                        dreg: 10,
                        op: 1,
                        len: 1,
                        size: 2,
                    },
                    load(2, 2, 2, 11),
                    lookup(1, "pinhole4"),
                ],
                vec![Cond::PinholeIn {
                    v6: false,
                    set: "pinhole4".into(),
                }],
            ),
            // the same for IPv6: 16-byte registers, then 4-byte ones
            (
                vec![
                    load_meta(15, 1),
                    cmp(0, &[10]),
                    load(1, 8, 16, 1),
                    load(1, 24, 16, 2),
                    load_meta(16, 3),
                    KernelExpr::Byteorder {
                        sreg: 3,
                        dreg: 3,
                        op: 1,
                        len: 1,
                        size: 2,
                    },
                    load(2, 2, 2, 17),
                    lookup(1, "pinhole6"),
                ],
                vec![Cond::PinholeIn {
                    v6: true,
                    set: "pinhole6".into(),
                }],
            ),
            // icmpv6 type { ... } ip6 hoplimit 255
            (
                vec![
                    load_meta(16, 1),
                    cmp(0, &[58]),
                    load(2, 0, 1, 1),
                    lookup(1, "__set0"),
                    load_meta(15, 1),
                    cmp(0, &[10]),
                    load(1, 7, 1, 1),
                    cmp(0, &[255]),
                ],
                vec![
                    Cond::L4Proto(vec!["ipv6-icmp"]),
                    Cond::Icmpv6Type(vec![
                        "nd-router-solicit",
                        "nd-router-advert",
                        "nd-neighbor-solicit",
                        "nd-neighbor-advert",
                    ]),
                    Cond::HopLimit(255),
                ],
            ),
            // iifname { ... } icmp type echo-request
            (
                vec![
                    load_meta(6, 1),
                    lookup(1, "__set2"),
                    load_meta(16, 1),
                    cmp(0, &[1]),
                    load(2, 0, 1, 1),
                    cmp(0, &[8]),
                ],
                vec![
                    Cond::Iifname(vec!["sync0".into(), "mgmt0".into(), "priv0".into()]),
                    Cond::L4Proto(vec!["icmp"]),
                    Cond::IcmpType(vec!["echo-request"]),
                ],
            ),
            // iifname "wan0" ip saddr @a_x_s4 tcp dport 22
            (
                vec![
                    load_meta(6, 1),
                    cmp(0, &ifname("wan0")),
                    load_meta(15, 1),
                    cmp(0, &[2]),
                    load(1, 12, 4, 1),
                    lookup(1, "a_x_s4"),
                    load_meta(16, 1),
                    cmp(0, &[6]),
                    load(2, 2, 2, 1),
                    cmp(0, &[0, 22]),
                ],
                vec![
                    Cond::Iifname(vec!["wan0".into()]),
                    sa(false, "a_x_s4"),
                    Cond::L4Proto(vec!["tcp"]),
                    Cond::Dport(22),
                ],
            ),
            // ct state established,related
            (
                vec![
                    KernelExpr::Ct {
                        key: 0,
                        dreg: 1,
                        dir: None,
                    },
                    KernelExpr::Bitwise {
                        sreg: 1,
                        dreg: 1,
                        len: 4,
                        mask: 6u32.to_ne_bytes().to_vec(),
                        xor: vec![0; 4],
                    },
                    cmp(1, &[0; 4]),
                ],
                vec![Cond::CtState(vec!["established", "related"])],
            ),
        ];
        for (exprs, conds) in cases {
            let got = from_kernel(&rule(exprs), &t);
            assert_eq!(texts(&got), texts(&intended(&conds)), "{conds:?}");
        }
    }

    #[test]
    fn kernel_prefixes_ranges_and_inversions() {
        let t = table();
        let read = |exprs: Vec<KernelExpr>| texts(&from_kernel(&rule(exprs), &t));
        let v4 = [load_meta(15, 1), cmp(0, &[2])];
        // a prefix of whole bytes is a shorter load; others a mask
        let mut e = v4.to_vec();
        e.extend([load(1, 12, 1, 1), cmp(1, &[10])]);
        assert_eq!(read(e), ["ip saddr != 10.0.0.0/8", "meta nfproto ipv4"]);
        let mut e = v4.to_vec();
        e.extend([
            load(1, 16, 4, 1),
            KernelExpr::Bitwise {
                sreg: 1,
                dreg: 1,
                len: 4,
                mask: vec![0xff, 0xf0, 0, 0],
                xor: vec![0; 4],
            },
            cmp(0, &[10, 16, 0, 0]),
        ]);
        assert_eq!(read(e), ["ip daddr 10.16.0.0/12", "meta nfproto ipv4"]);
        // gte then lte on one register is a range; an inverted lookup; an inline interval set
        let mut e = v4.to_vec();
        e.extend([
            load(2, 2, 2, 1),
            cmp(5, &[0x03, 0xe8]),
            cmp(3, &[0x07, 0xd0]),
            load(1, 12, 4, 1),
            KernelExpr::Lookup {
                sreg: 1,
                set: "a_x_s4".into(),
                dreg: None,
                invert: true,
            },
            load(1, 16, 4, 1),
            lookup(1, "__set9"),
            KernelExpr::Other("log".into()),
        ]);
        assert_eq!(
            read(e),
            [
                "ip daddr { 10.0.0.0/8, 192.0.2.1 }",
                "ip saddr != @a_x_s4",
                "meta nfproto ipv4",
                "other log",
                "th dport 1000-2000"
            ]
        );
        // a mask before a lookup, a byte swap: neither reads as the plain match
        let mut e = v4.to_vec();
        e.extend([
            load(1, 12, 4, 1),
            KernelExpr::Bitwise {
                sreg: 1,
                dreg: 1,
                len: 4,
                mask: vec![0; 4],
                xor: vec![0; 4],
            },
            lookup(1, "a_x_s4"),
            load(2, 2, 2, 9),
            KernelExpr::Byteorder {
                sreg: 9,
                dreg: 9,
                op: 1,
                len: 2,
                size: 2,
            },
        ]);
        assert_eq!(
            read(e),
            [
                "ip saddr & 0x00000000 @a_x_s4",
                "meta nfproto ipv4",
                "other byteorder 1 len 2 size 2"
            ]
        );
        // without `meta nfproto`, network header fields have no name
        assert_eq!(
            read(vec![load(1, 12, 4, 1), lookup(1, "a_x_s4")]),
            ["@nh,96,32 @a_x_s4"]
        );
        // an interface name prefix; a comparison of nothing loaded
        assert_eq!(
            read(vec![load_meta(7, 1), cmp(0, b"wan")]),
            ["meta oifname \"wan*\""]
        );
        assert_eq!(
            read(vec![KernelExpr::Cmp {
                sreg: 2,
                op: 0,
                data: vec![1]
            }]),
            ["register 2 0x01"]
        );
    }

    #[test]
    fn a_lost_match_is_a_difference() {
        let want = intended(&[
            Cond::Iifname(vec!["wan0".into()]),
            sa(false, "a_x_s4"),
            Cond::L4Proto(vec!["udp"]),
        ]);
        let mut got = want.clone();
        assert_eq!(difference(&want, &got), None);
        got.remove(&m("ip saddr", "@a_x_s4"));
        got.insert(m("ip saddr", "!= @a_x_s4"));
        got.insert(m("other", "log"));
        assert_eq!(
            difference(&want, &got).unwrap(),
            "missing `ip saddr @a_x_s4`; unexpected `ip saddr != @a_x_s4`, `other log`"
        );
        got = want.clone();
        got.remove(&m("meta nfproto", "ipv4"));
        assert_eq!(
            difference(&want, &got).unwrap(),
            "missing `meta nfproto ipv4`"
        );
    }

    /// Every protocol, ICMP type and ct state the renderer writes has its number here, so
    /// the netlink path reads it back by the same name.
    #[test]
    fn rendered_names_are_known() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml");
        let Ok(cfg) = callgate_config::Config::load(&p) else {
            panic!("config/lab.toml");
        };
        let known = |table: &[(u8, &str)], n: &str| table.iter().any(|(_, s)| *s == n);
        for rs in [
            crate::render(&cfg),
            crate::render_baseline(Some(&cfg)),
            crate::render_baseline(None),
        ] {
            for c in rs
                .chains
                .iter()
                .flat_map(|c| &c.rules)
                .flat_map(|r| &r.conds)
            {
                match c {
                    Cond::L4Proto(v) => assert!(v.iter().all(|n| known(&L4PROTOS, n)), "{v:?}"),
                    Cond::IcmpType(v) => assert!(v.iter().all(|n| known(&ICMP_TYPES, n)), "{v:?}"),
                    Cond::Icmpv6Type(v) => {
                        assert!(v.iter().all(|n| known(&ICMPV6_TYPES, n)), "{v:?}");
                    }
                    Cond::CtState(v) => {
                        assert!(v.iter().all(|n| CT_STATES.iter().any(|(_, s)| s == n)));
                    }
                    _ => {}
                }
            }
        }
    }
}
