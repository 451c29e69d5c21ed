//! The intended ruleset as plain data: what [`crate::render()`] produces from a config, what
//! [`crate::nft`] turns into one nftables transaction, and what the read-back is compared to.

use std::fmt;

use callgate_config::PortRange;
use ipnet::IpNet;
use serde::Serialize;

/// Name of the one table callgate owns.
pub const TABLE: &str = "callgate";
/// Dynamic sets written at run time over netlink (their contents survive a commit).
/// Pinholes whose source is one address (nearly all): hash sets, so opening or closing one
/// costs the same whatever the number of open pinholes.
pub const PINHOLE4_HOST: &str = "pinhole4_host";
pub const PINHOLE6_HOST: &str = "pinhole6_host";
/// Pinholes whose source is a prefix (a carrier's media pool): interval sets (the kernel's
/// pipapo backend, whose every transaction copies the whole set). The names predate the
/// host sets, when every pinhole was kept here; an upgraded box keeps these sets and their
/// contents (see [`crate::netlink::move_host_pinholes`]).
pub const PINHOLE4: &str = "pinhole4";
pub const PINHOLE6: &str = "pinhole6";
pub const BLOCK4: &str = "block4";
pub const BLOCK6: &str = "block6";

/// What a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SetKind {
    /// IPv4 prefixes (interval set).
    Ipv4Prefixes,
    /// IPv6 prefixes (interval set).
    Ipv6Prefixes,
    /// Transport ports and ranges (interval set).
    Ports,
    /// `ipv4_addr . ipv4_addr . inet_proto . inet_service` (source, destination, protocol,
    /// port) with per-element timeouts; an interval set, so the source may be a prefix.
    Pinhole4,
    /// `ipv6_addr . ipv6_addr . inet_proto . inet_service`, as [`SetKind::Pinhole4`].
    Pinhole6,
    /// The type of [`SetKind::Pinhole4`] with per-element timeouts but no `interval` flag
    /// (a hash set): pinholes whose source is one address.
    Pinhole4Host,
    /// The type of [`SetKind::Pinhole6`], as [`SetKind::Pinhole4Host`].
    Pinhole6Host,
    /// IPv4 addresses with per-element timeouts.
    Block4,
    /// IPv6 addresses with per-element timeouts.
    Block6,
}

impl SetKind {
    /// True for sets whose contents are owned at run time (not by the config).
    pub fn is_dynamic(self) -> bool {
        matches!(
            self,
            SetKind::Pinhole4
                | SetKind::Pinhole6
                | SetKind::Pinhole4Host
                | SetKind::Pinhole6Host
                | SetKind::Block4
                | SetKind::Block6
        )
    }

    /// The nft type words, as nft prints them.
    pub fn type_words(self) -> Vec<&'static str> {
        match self {
            SetKind::Ipv4Prefixes | SetKind::Block4 => vec!["ipv4_addr"],
            SetKind::Ipv6Prefixes | SetKind::Block6 => vec!["ipv6_addr"],
            SetKind::Ports => vec!["inet_service"],
            SetKind::Pinhole4 | SetKind::Pinhole4Host => {
                vec!["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"]
            }
            SetKind::Pinhole6 | SetKind::Pinhole6Host => {
                vec!["ipv6_addr", "ipv6_addr", "inet_proto", "inet_service"]
            }
        }
    }

    /// The flags nft prints for this kind (`interval` and/or `timeout`).
    pub fn flags(self) -> Vec<&'static str> {
        match self {
            SetKind::Pinhole4 | SetKind::Pinhole6 => vec!["interval", "timeout"],
            SetKind::Block4 | SetKind::Block6 | SetKind::Pinhole4Host | SetKind::Pinhole6Host => {
                vec!["timeout"]
            }
            SetKind::Ipv4Prefixes | SetKind::Ipv6Prefixes | SetKind::Ports => vec!["interval"],
        }
    }
}

/// One element of a config-owned set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Elem {
    Net(IpNet),
    Ports(PortRange),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetDef {
    pub name: String,
    pub kind: SetKind,
    /// Config-owned contents (always empty for dynamic sets).
    pub elems: Vec<Elem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Input,
    Forward,
    Output,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
        }
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Drop,
    Jump(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Jump(t) => write!(f, "jump {t}"),
        }
    }
}

/// A match condition, kept abstract so the same model renders to nftables JSON and is
/// readable in `callgate render firewall`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cond {
    /// Input interface name is one of.
    Iifname(Vec<String>),
    /// Output interface name is one of.
    Oifname(Vec<String>),
    /// Connection tracking state is one of (`invalid`, `established`, `related`, `new`).
    CtState(Vec<&'static str>),
    /// Layer 4 protocol is one of (`tcp`, `udp`, `icmp`, `ipv6-icmp`).
    L4Proto(Vec<&'static str>),
    /// Source address (`ip`/`ip6` chosen by the set's family) is in the named set.
    SaddrIn { v6: bool, set: String },
    /// Destination address is in the named set.
    DaddrIn { v6: bool, set: String },
    /// Transport destination port is in the named set.
    DportIn(String),
    /// Transport destination port equals.
    Dport(u16),
    /// ICMP (v4) type is one of.
    IcmpType(Vec<&'static str>),
    /// ICMPv6 type is one of.
    Icmpv6Type(Vec<&'static str>),
    /// IPv6 hop limit equals (255 marks on-link neighbour discovery).
    HopLimit(u8),
    /// `saddr . daddr . l4proto . dport` is in the named pinhole set.
    PinholeIn { v6: bool, set: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleDef {
    /// Shown as the nftables rule comment and in counters: the entry's name, or
    /// `builtin:…` / `service:…` / `default-drop`.
    pub comment: String,
    pub conds: Vec<Cond>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainDef {
    pub name: String,
    /// Base chains hook into the stack with a drop policy; regular chains are jump targets.
    pub hook: Option<Hook>,
    pub rules: Vec<RuleDef>,
}

/// The whole intended content of `table inet callgate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ruleset {
    pub sets: Vec<SetDef>,
    pub chains: Vec<ChainDef>,
}

impl Ruleset {
    pub fn set(&self, name: &str) -> Option<&SetDef> {
        self.sets.iter().find(|s| s.name == name)
    }
    pub fn chain(&self, name: &str) -> Option<&ChainDef> {
        self.chains.iter().find(|c| c.name == name)
    }
    /// Number of config-owned set elements (prefixes and port ranges).
    pub fn element_count(&self) -> usize {
        self.sets.iter().map(|s| s.elems.len()).sum()
    }
}
