//! The `[pair]` table: the two appliances of a redundant pair, the paths their heartbeat
//! takes, and the virtual addresses (VIPs) that the active one holds.
//!
//! ```toml
//! [pair]
//! heartbeat_interval_ms = 25   # optional (default 25), 10 to 1000
//! dead_after_misses = 4        # optional (default 4), 2 to 50: the peer is dead after this
//!                              # many intervals with no heartbeat on every path
//! preempt_delay_secs = 30      # optional: a better standby takes over after this long;
//!                              # absent (the default): no preemption
//! late_after_ms = 50           # optional (default 2 intervals): a timer this late means
//!                              # this appliance was starved or stopped; it steps down
//!
//! [[pair.node]]                # exactly two; `appliance.name` says which one is this one
//! name = "lab-a"
//! priority = 200               # 1 to 254; the higher one is active when both start
//! heartbeat = { sync = "192.0.2.1", private = "198.51.100.1" }   # one address per path
//!
//! [[pair.node]]
//! name = "lab-b"
//! priority = 100
//! heartbeat = { sync = "192.0.2.2", private = "198.51.100.2" }
//!
//! [[pair.vip]]                 # held by the active appliance only
//! zone = "wan"
//! address = "203.0.113.5/24"   # the address and its prefix on that segment
//! interface = "wan0"           # optional when the zone has one interface
//! ```
//!
//! Both nodes list the same heartbeat zones, at least two of them (a single path cannot
//! tell a dead peer from a cut cable), one address per zone, both of one family. The
//! heartbeat's port is `[services.heartbeat] port` (5405). The firewall admits heartbeats
//! on those zones only from the peer's address to this appliance's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};
use serde_spanned::Spanned;

use super::{ConfigError, EntryName, ErrorKind, IfName, Locator, ZoneName, Zones};

/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u32 = 25;
/// Default number of missed intervals after which the peer is dead.
pub const DEFAULT_DEAD_AFTER_MISSES: u32 = 4;

/// The `[pair]` table. Absent: this appliance runs alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    #[serde(default)]
    pub heartbeat_interval_ms: Option<Spanned<u32>>,
    #[serde(default)]
    pub dead_after_misses: Option<Spanned<u32>>,
    #[serde(default)]
    pub preempt_delay_secs: Option<Spanned<u32>>,
    #[serde(default)]
    pub late_after_ms: Option<Spanned<u32>>,
    pub node: Spanned<Vec<PairNode>>,
    #[serde(default)]
    pub vip: Vec<Vip>,
}

/// One appliance of the pair.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairNode {
    pub name: Spanned<EntryName>,
    pub priority: Spanned<u8>,
    /// Its heartbeat address on each path, by zone.
    pub heartbeat: Spanned<BTreeMap<ZoneName, Spanned<IpAddr>>>,
}

/// A virtual address: on the active appliance only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    pub zone: Spanned<ZoneName>,
    /// The address with the prefix length of its segment (`203.0.113.5/24`).
    pub address: Spanned<VipAddr>,
    #[serde(default)]
    pub interface: Option<Spanned<IfName>>,
}

/// An interface address: the address and the prefix length of its segment
/// (`203.0.113.5/24`); host bits are the point here, unlike in a [`super::Prefix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipAddr(IpNet);

impl VipAddr {
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl std::str::FromStr for VipAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let net: IpNet = s.parse().map_err(|_| {
            format!("invalid address {s:?}: expected an address with its prefix length, like 203.0.113.5/24 or 2001:db8:1::5/64")
        })?;
        Ok(VipAddr(net))
    }
}

impl std::fmt::Display for VipAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for VipAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// One heartbeat path as seen from this appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatPath {
    pub zone: ZoneName,
    pub local: IpAddr,
    pub peer: IpAddr,
}

impl Pair {
    pub fn heartbeat_interval_ms(&self) -> u32 {
        self.heartbeat_interval_ms
            .as_ref()
            .map_or(DEFAULT_HEARTBEAT_INTERVAL_MS, |v| *v.get_ref())
    }
    pub fn dead_after_misses(&self) -> u32 {
        self.dead_after_misses
            .as_ref()
            .map_or(DEFAULT_DEAD_AFTER_MISSES, |v| *v.get_ref())
    }
    pub fn preempt_delay_secs(&self) -> Option<u32> {
        self.preempt_delay_secs.as_ref().map(|v| *v.get_ref())
    }
    pub fn late_after_ms(&self) -> u32 {
        self.late_after_ms
            .as_ref()
            .map_or(2 * self.heartbeat_interval_ms(), |v| *v.get_ref())
    }

    /// The node named `name` (this appliance's `appliance.name`), and the other one.
    pub fn split(&self, name: &EntryName) -> Option<(&PairNode, &PairNode)> {
        let nodes = self.node.get_ref();
        let me = nodes.iter().position(|n| n.name.get_ref() == name)?;
        let peer = nodes.iter().enumerate().find(|(i, _)| *i != me)?.1;
        Some((&nodes[me], peer))
    }

    /// This appliance's index in the node list (0 or 1): its node id on the wire.
    pub fn index_of(&self, name: &EntryName) -> Option<u8> {
        self.node
            .get_ref()
            .iter()
            .position(|n| n.name.get_ref() == name)
            .and_then(|i| u8::try_from(i).ok())
    }

    /// The heartbeat paths from `name`'s side, in zone order (a path's id is its index).
    pub fn paths(&self, name: &EntryName) -> Vec<HeartbeatPath> {
        let Some((me, peer)) = self.split(name) else {
            return Vec::new();
        };
        me.heartbeat
            .get_ref()
            .iter()
            .filter_map(|(zone, local)| {
                let peer = peer.heartbeat.get_ref().get(zone)?;
                Some(HeartbeatPath {
                    zone: *zone,
                    local: *local.get_ref(),
                    peer: *peer.get_ref(),
                })
            })
            .collect()
    }

    pub(crate) fn validate(
        &self,
        appliance: &EntryName,
        zones: &Zones,
        loc: &Locator<'_>,
        errs: &mut Vec<ConfigError>,
    ) {
        let mut bad = |span: Option<std::ops::Range<usize>>, kind, msg: String| {
            errs.push(loc.error(span, kind, msg));
        };
        for (key, v, lo, hi) in [
            (
                "heartbeat_interval_ms",
                &self.heartbeat_interval_ms,
                10,
                1000,
            ),
            ("dead_after_misses", &self.dead_after_misses, 2, 50),
            ("late_after_ms", &self.late_after_ms, 5, 10_000),
            ("preempt_delay_secs", &self.preempt_delay_secs, 0, 86_400),
        ] {
            if let Some(v) = v {
                if !(lo..=hi).contains(v.get_ref()) {
                    bad(
                        Some(v.span()),
                        ErrorKind::InvalidValue,
                        format!("pair.{key}: expected {lo} to {hi}"),
                    );
                }
            }
        }
        // The election's own constraint: a stall the node does not notice as late must be
        // too short for the peer to declare it dead.
        let (interval, misses) = (self.heartbeat_interval_ms(), self.dead_after_misses());
        if self.late_after_ms() + 2 * interval > interval * misses {
            let span = self
                .late_after_ms
                .as_ref()
                .or(self.dead_after_misses.as_ref())
                .map(|v| v.span());
            bad(
                span.or(Some(self.node.span())),
                ErrorKind::InvalidValue,
                format!(
                    "pair: late_after_ms ({}) plus two intervals must not exceed the dead interval (dead_after_misses × heartbeat_interval_ms = {} ms)",
                    self.late_after_ms(),
                    interval * misses
                ),
            );
        }
        let nodes = self.node.get_ref();
        if nodes.len() != 2 {
            bad(
                Some(self.node.span()),
                ErrorKind::InvalidValue,
                format!(
                    "pair: a pair has exactly two [[pair.node]] entries, this has {}",
                    nodes.len()
                ),
            );
            return;
        }
        let (a, b) = (&nodes[0], &nodes[1]);
        if a.name.get_ref() == b.name.get_ref() {
            bad(
                Some(b.name.span()),
                ErrorKind::DuplicateName,
                format!("pair.node: both nodes are named {}", b.name.get_ref()),
            );
        }
        if !nodes.iter().any(|n| n.name.get_ref() == appliance) {
            bad(
                Some(self.node.span()),
                ErrorKind::InvalidValue,
                format!(
                    "appliance.name {} is not one of the pair's nodes ({}, {}): the name says which node this appliance is",
                    appliance,
                    a.name.get_ref(),
                    b.name.get_ref()
                ),
            );
        }
        for n in nodes {
            let p = *n.priority.get_ref();
            if !(1..=254).contains(&p) {
                bad(
                    Some(n.priority.span()),
                    ErrorKind::InvalidValue,
                    format!(
                        "pair.node {}: priority: expected 1 to 254",
                        n.name.get_ref()
                    ),
                );
            }
            if n.heartbeat.get_ref().len() < 2 {
                bad(
                    Some(n.heartbeat.span()),
                    ErrorKind::InvalidValue,
                    format!(
                        "pair.node {}: heartbeat: expected addresses on at least two zones (one path cannot tell a dead peer from a cut cable)",
                        n.name.get_ref()
                    ),
                );
            }
            for (zone, addr) in n.heartbeat.get_ref() {
                if zones.get(*zone).is_none() {
                    bad(
                        Some(addr.span()),
                        ErrorKind::UndefinedZone,
                        format!(
                            "pair.node {}: heartbeat zone {zone} is not bound to any interface: expected a [zones.{zone}] table",
                            n.name.get_ref()
                        ),
                    );
                }
                let ip = *addr.get_ref();
                if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                    bad(
                        Some(addr.span()),
                        ErrorKind::InvalidValue,
                        format!(
                            "pair.node {}: heartbeat {zone}: {ip}: expected a unicast address",
                            n.name.get_ref()
                        ),
                    );
                }
            }
        }
        let za: BTreeSet<&ZoneName> = a.heartbeat.get_ref().keys().collect();
        let zb: BTreeSet<&ZoneName> = b.heartbeat.get_ref().keys().collect();
        if za != zb {
            bad(
                Some(b.heartbeat.span()),
                ErrorKind::InvalidValue,
                "pair.node: both nodes must list the same heartbeat zones".to_owned(),
            );
        }
        for (zone, x) in a.heartbeat.get_ref() {
            let Some(y) = b.heartbeat.get_ref().get(zone) else {
                continue;
            };
            let (x, y) = (*x.get_ref(), *y.get_ref());
            if x == y {
                bad(
                    Some(b.heartbeat.span()),
                    ErrorKind::InvalidValue,
                    format!("pair.node: both nodes have heartbeat address {x} on zone {zone}"),
                );
            } else if x.is_ipv4() != y.is_ipv4() {
                bad(
                    Some(b.heartbeat.span()),
                    ErrorKind::InvalidValue,
                    format!("pair.node: the {zone} heartbeat addresses {x} and {y} are of different families"),
                );
            }
        }
        let node_addrs: BTreeSet<IpAddr> = nodes
            .iter()
            .flat_map(|n| n.heartbeat.get_ref().values().map(|a| *a.get_ref()))
            .collect();
        let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
        for v in &self.vip {
            let zone = *v.zone.get_ref();
            let addr = v.address.get_ref().addr();
            if !seen.insert(addr) {
                bad(
                    Some(v.address.span()),
                    ErrorKind::DuplicateName,
                    format!("pair.vip: {addr} is listed twice"),
                );
            }
            if node_addrs.contains(&addr) {
                bad(
                    Some(v.address.span()),
                    ErrorKind::InvalidValue,
                    format!(
                        "pair.vip: {addr} is a node's own heartbeat address, not a virtual one"
                    ),
                );
            }
            if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
                bad(
                    Some(v.address.span()),
                    ErrorKind::InvalidValue,
                    format!("pair.vip: {addr}: expected a unicast address"),
                );
            }
            let Some(z) = zones.get(zone) else {
                bad(
                    Some(v.zone.span()),
                    ErrorKind::UndefinedZone,
                    format!("pair.vip {addr}: zone {zone} is not bound to any interface: expected a [zones.{zone}] table"),
                );
                continue;
            };
            let ifaces = z.interfaces.get_ref();
            match &v.interface {
                Some(i) if !ifaces.contains(i.get_ref()) => bad(
                    Some(i.span()),
                    ErrorKind::InvalidValue,
                    format!(
                        "pair.vip {addr}: interface {} is not in zone {zone}",
                        i.get_ref()
                    ),
                ),
                None if ifaces.len() != 1 => bad(
                    Some(v.zone.span()),
                    ErrorKind::InvalidValue,
                    format!("pair.vip {addr}: zone {zone} has several interfaces: name one with interface = \"…\""),
                ),
                _ => {}
            }
        }
    }
}

impl Vip {
    /// The interface the address goes on (checked by validation to exist).
    pub fn interface<'a>(&'a self, zones: &'a Zones) -> Option<&'a IfName> {
        match &self.interface {
            Some(i) => Some(i.get_ref()),
            None => zones
                .get(*self.zone.get_ref())
                .and_then(|z| z.interfaces.get_ref().first()),
        }
    }
}

/// The two appliances of a pair run the same config but for `[appliance] name`. This is
/// `text` as the appliance `name` runs it: the name's value replaced, every other byte
/// (comments, layout, order) kept, so a pair-wide commit records the operator's text on
/// both.
pub fn for_appliance(text: &str, name: &EntryName) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Doc {
        appliance: App,
    }
    #[derive(Deserialize)]
    struct App {
        name: Spanned<String>,
    }
    let doc: Doc = toml::from_str(text).map_err(|e| e.message().trim().to_owned())?;
    let span = doc.appliance.name.span();
    let value = text
        .get(span.clone())
        .ok_or("the appliance name's place in the text")?;
    // The span covers the whole string value, quotes included; a label needs no escaping.
    if !(value.starts_with('"') || value.starts_with('\'')) {
        return Err(format!("unexpected appliance name value {value:?}"));
    }
    Ok(format!(
        "{}\"{}\"{}",
        &text[..span.start],
        name.as_str(),
        &text[span.end..]
    ))
}
