//! The lab's addressing plan: every address, prefix and interface name the lab uses.
//!
//! This module is a contract: `config/lab.toml` and the system tests are written against
//! these constants, so change them only together with their users. Every address comes
//! from the documentation ranges (RFC 5737 for IPv4, RFC 3849 for IPv6).
//!
//! | segment | IPv4 | IPv6 | appliance iface | A | B | other host (`eth0`) |
//! |---|---|---|---|---|---|---|
//! | WAN | 203.0.113.0/24 | 2001:db8:1::/64 | `wan0` | .1 / ::1 | .2 / ::2 | carrier .10 (+ .66) / ::10 (+ ::66); cloud .200 / ::200 |
//! | private | 198.51.100.0/24 | 2001:db8:2::/64 | `priv0` | .1 / ::1 | .2 / ::2 | pbx .10 / ::10 |
//! | mgmt | 192.0.2.128/25 | 2001:db8:4::/64 | `mgmt0` | .129 / ::1 | .130 / ::2 | mgmt .140 (+ .141) / ::10 (+ ::11) |
//! | sync | 192.0.2.0/25 | 2001:db8:3::/64 | `sync0` | .1 / ::1 | .2 / ::2 | — (only when A and B are both in the lab) |
//!
//! The pair's virtual addresses (`config/lab-pair-*.toml`): WAN `.5` / `::5`, private `.5` /
//! `::5`, held by whichever appliance is active. In a pair lab (`Lab::start_pair`) the
//! carrier and the PBX route through them.
//!
//! The cloud host (the MQTT broker, `hil_tests::broker`) exists only in a lab that asks for
//! [`Host::Cloud`]. It has no default route: the appliances reach it on-link over the WAN
//! segment, and it answers them the same way. Its server certificate is made out to
//! [`BROKER_NAME`] and to both of its addresses.
//!
//! The second ("ALT") addresses of the carrier and the mgmt host exist for "wrong source"
//! tests: bind a probe to them explicitly. They are never picked as a default source
//! address (IPv4: secondary address; IPv6: added deprecated, `preferred_lft 0`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// ----- WAN segment ---------------------------------------------------------------------

/// WAN segment network, IPv4.
pub const WAN_V4_NET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);
/// WAN segment prefix length, IPv4.
pub const WAN_V4_PREFIX: u8 = 24;
/// WAN segment network, IPv6.
pub const WAN_V6_NET: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0);
/// WAN segment prefix length, IPv6.
pub const WAN_V6_PREFIX: u8 = 64;
/// Appliance A, `wan0`, IPv4.
pub const A_WAN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Appliance A, `wan0`, IPv6.
pub const A_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// Appliance B, `wan0`, IPv4.
pub const B_WAN_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// Appliance B, `wan0`, IPv6.
pub const B_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// Carrier, `eth0`, IPv4 (primary; default source).
pub const CARRIER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Carrier, `eth0`, second IPv4 address ("wrong source"; only used when bound explicitly).
pub const CARRIER_V4_ALT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// Carrier, `eth0`, IPv6 (default source).
pub const CARRIER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
/// Carrier, `eth0`, second IPv6 address ("wrong source"; only used when bound explicitly).
pub const CARRIER_V6_ALT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x66);

/// Cloud (the MQTT broker), `eth0`, IPv4.
pub const CLOUD_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 200);
/// Cloud (the MQTT broker), `eth0`, IPv6.
pub const CLOUD_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x200);
/// The broker's name: what its server certificate is made out to (besides its addresses),
/// and what an appliance's uplink config names as the server to verify.
pub const BROKER_NAME: &str = "broker.fleet.test";

/// The pair's WAN virtual address, IPv4.
pub const WAN_VIP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
/// The pair's WAN virtual address, IPv6.
pub const WAN_VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 5);

// ----- private call segment ------------------------------------------------------------

/// Private segment network, IPv4.
pub const PRIV_V4_NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);
/// Private segment prefix length, IPv4.
pub const PRIV_V4_PREFIX: u8 = 24;
/// Private segment network, IPv6.
pub const PRIV_V6_NET: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0);
/// Private segment prefix length, IPv6.
pub const PRIV_V6_PREFIX: u8 = 64;
/// Appliance A, `priv0`, IPv4.
pub const A_PRIV_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Appliance A, `priv0`, IPv6.
pub const A_PRIV_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// Appliance B, `priv0`, IPv4.
pub const B_PRIV_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// Appliance B, `priv0`, IPv6.
pub const B_PRIV_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
/// PBX, `eth0`, IPv4.
pub const PBX_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// PBX, `eth0`, IPv6.
pub const PBX_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
/// A second call-handling destination on the PBX host, IPv4 (the lab routes' failover and
/// round-robin target; bind to it explicitly).
pub const PBX2_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
/// The second destination, IPv6.
pub const PBX2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11);

/// The pair's private-side virtual address, IPv4.
pub const PRIV_VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);
/// The pair's private-side virtual address, IPv6.
pub const PRIV_VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 5);

// ----- sync segment (A <-> B) ----------------------------------------------------------

/// Sync segment network, IPv4.
pub const SYNC_V4_NET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);
/// Sync segment prefix length, IPv4.
pub const SYNC_V4_PREFIX: u8 = 25;
/// Sync segment network, IPv6.
pub const SYNC_V6_NET: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0);
/// Sync segment prefix length, IPv6.
pub const SYNC_V6_PREFIX: u8 = 64;
/// Appliance A, `sync0`, IPv4.
pub const A_SYNC_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Appliance A, `sync0`, IPv6.
pub const A_SYNC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 1);
/// Appliance B, `sync0`, IPv4.
pub const B_SYNC_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Appliance B, `sync0`, IPv6.
pub const B_SYNC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 2);

// ----- mgmt segment --------------------------------------------------------------------

/// Mgmt segment network, IPv4.
pub const MGMT_V4_NET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 128);
/// Mgmt segment prefix length, IPv4.
pub const MGMT_V4_PREFIX: u8 = 25;
/// Mgmt segment network, IPv6.
pub const MGMT_V6_NET: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 0, 0, 0, 0, 0);
/// Mgmt segment prefix length, IPv6.
pub const MGMT_V6_PREFIX: u8 = 64;
/// Appliance A, `mgmt0`, IPv4.
pub const A_MGMT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 129);
/// Appliance A, `mgmt0`, IPv6.
pub const A_MGMT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 0, 0, 0, 0, 1);
/// Appliance B, `mgmt0`, IPv4.
pub const B_MGMT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 130);
/// Appliance B, `mgmt0`, IPv6.
pub const B_MGMT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 0, 0, 0, 0, 2);
/// Mgmt host, `eth0`, IPv4 (primary; default source).
pub const MGMT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 140);
/// Mgmt host, `eth0`, second IPv4 address (only used when bound explicitly).
pub const MGMT_V4_ALT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 141);
/// Mgmt host, `eth0`, IPv6 (default source).
pub const MGMT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 0, 0, 0, 0, 0x10);
/// Mgmt host, `eth0`, second IPv6 address (only used when bound explicitly).
pub const MGMT_V6_ALT: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 4, 0, 0, 0, 0, 0x11);

/// Interface names inside the host namespaces.
pub mod iface {
    /// Appliance (A, B) interface on the WAN segment.
    pub const WAN: &str = "wan0";
    /// Appliance (A, B) interface on the private call segment.
    pub const PRIV: &str = "priv0";
    /// Appliance (A, B) interface on the mgmt segment.
    pub const MGMT: &str = "mgmt0";
    /// Appliance (A, B) interface on the sync segment.
    pub const SYNC: &str = "sync0";
    /// The single interface of the carrier, pbx, mgmt and cloud hosts.
    pub const ETH: &str = "eth0";
}

/// A host of the lab; each lives in its own network namespace `{prefix}-{suffix}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// WAN side: SIP trunk and attacker (`eth0` on the WAN segment).
    Carrier,
    /// Appliance A (`wan0`, `priv0`, `mgmt0`, `sync0` when B is present).
    A,
    /// Appliance B (`wan0`, `priv0`, `mgmt0`, `sync0` when A is present).
    B,
    /// Private call segment PBX (`eth0` on the private segment).
    Pbx,
    /// Engineers (`eth0` on the mgmt segment).
    Mgmt,
    /// The central cloud: the MQTT broker of the uplink (`eth0` on the WAN segment). Only
    /// in labs that ask for it.
    Cloud,
}

impl Host {
    /// Every host, in a fixed order.
    pub const ALL: [Host; 6] = [
        Host::Carrier,
        Host::A,
        Host::B,
        Host::Pbx,
        Host::Mgmt,
        Host::Cloud,
    ];

    /// Namespace name suffix: `carrier`, `a`, `b`, `pbx`, `mgmt`, `cloud`.
    pub fn suffix(self) -> &'static str {
        match self {
            Host::Carrier => "carrier",
            Host::A => "a",
            Host::B => "b",
            Host::Pbx => "pbx",
            Host::Mgmt => "mgmt",
            Host::Cloud => "cloud",
        }
    }

    /// Whether this host is one of the two appliances.
    pub fn is_appliance(self) -> bool {
        matches!(self, Host::A | Host::B)
    }

    /// The segments this host could attach to (sync only matters if both A and B exist).
    pub fn segments(self) -> &'static [Segment] {
        match self {
            Host::A | Host::B => &[Segment::Wan, Segment::Private, Segment::Mgmt, Segment::Sync],
            Host::Carrier | Host::Cloud => &[Segment::Wan],
            Host::Pbx => &[Segment::Private],
            Host::Mgmt => &[Segment::Mgmt],
        }
    }

    /// Interface name of this host on `segment`, if it attaches there.
    pub fn iface(self, segment: Segment) -> Option<&'static str> {
        if !self.segments().contains(&segment) {
            return None;
        }
        Some(if self.is_appliance() {
            segment.appliance_iface()
        } else {
            iface::ETH
        })
    }

    /// All IPv4 addresses of this host on `segment` (primary first).
    pub fn v4_addrs(self, segment: Segment) -> &'static [Ipv4Addr] {
        use Host as H;
        use Segment as S;
        match (self, segment) {
            (H::A, S::Wan) => &[A_WAN_V4],
            (H::B, S::Wan) => &[B_WAN_V4],
            (H::Carrier, S::Wan) => &[CARRIER_V4, CARRIER_V4_ALT],
            (H::Cloud, S::Wan) => &[CLOUD_V4],
            (H::A, S::Private) => &[A_PRIV_V4],
            (H::B, S::Private) => &[B_PRIV_V4],
            (H::Pbx, S::Private) => &[PBX_V4, PBX2_V4],
            (H::A, S::Mgmt) => &[A_MGMT_V4],
            (H::B, S::Mgmt) => &[B_MGMT_V4],
            (H::Mgmt, S::Mgmt) => &[MGMT_V4, MGMT_V4_ALT],
            (H::A, S::Sync) => &[A_SYNC_V4],
            (H::B, S::Sync) => &[B_SYNC_V4],
            _ => &[],
        }
    }

    /// All IPv6 addresses of this host on `segment` (primary first).
    pub fn v6_addrs(self, segment: Segment) -> &'static [Ipv6Addr] {
        use Host as H;
        use Segment as S;
        match (self, segment) {
            (H::A, S::Wan) => &[A_WAN_V6],
            (H::B, S::Wan) => &[B_WAN_V6],
            (H::Carrier, S::Wan) => &[CARRIER_V6, CARRIER_V6_ALT],
            (H::Cloud, S::Wan) => &[CLOUD_V6],
            (H::A, S::Private) => &[A_PRIV_V6],
            (H::B, S::Private) => &[B_PRIV_V6],
            (H::Pbx, S::Private) => &[PBX_V6, PBX2_V6],
            (H::A, S::Mgmt) => &[A_MGMT_V6],
            (H::B, S::Mgmt) => &[B_MGMT_V6],
            (H::Mgmt, S::Mgmt) => &[MGMT_V6, MGMT_V6_ALT],
            (H::A, S::Sync) => &[A_SYNC_V6],
            (H::B, S::Sync) => &[B_SYNC_V6],
            _ => &[],
        }
    }

    /// Primary IPv4 address of this host on `segment`.
    pub fn v4(self, segment: Segment) -> Option<Ipv4Addr> {
        self.v4_addrs(segment).first().copied()
    }

    /// Primary IPv6 address of this host on `segment`.
    pub fn v6(self, segment: Segment) -> Option<Ipv6Addr> {
        self.v6_addrs(segment).first().copied()
    }

    /// Primary address of this host on `segment` in the family of `v6`.
    pub fn ip(self, segment: Segment, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.v6(segment).map(IpAddr::V6)
        } else {
            self.v4(segment).map(IpAddr::V4)
        }
    }
}

/// A lab segment: one Linux bridge in the hidden switch namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// Carrier (and cloud) ↔ A/B.
    Wan,
    /// A/B ↔ PBX.
    Private,
    /// A/B ↔ mgmt host.
    Mgmt,
    /// A ↔ B.
    Sync,
}

impl Segment {
    /// Every segment, in a fixed order.
    pub const ALL: [Segment; 4] = [Segment::Wan, Segment::Private, Segment::Mgmt, Segment::Sync];

    /// Short name, used for bridge (`br-{name}`) and switch port (`{host}-{name}`) names.
    pub fn name(self) -> &'static str {
        match self {
            Segment::Wan => "wan",
            Segment::Private => "priv",
            Segment::Mgmt => "mgmt",
            Segment::Sync => "sync",
        }
    }

    /// Name of the appliances' interface on this segment.
    pub fn appliance_iface(self) -> &'static str {
        match self {
            Segment::Wan => iface::WAN,
            Segment::Private => iface::PRIV,
            Segment::Mgmt => iface::MGMT,
            Segment::Sync => iface::SYNC,
        }
    }

    /// Network and prefix length, IPv4.
    pub fn v4_net(self) -> (Ipv4Addr, u8) {
        match self {
            Segment::Wan => (WAN_V4_NET, WAN_V4_PREFIX),
            Segment::Private => (PRIV_V4_NET, PRIV_V4_PREFIX),
            Segment::Mgmt => (MGMT_V4_NET, MGMT_V4_PREFIX),
            Segment::Sync => (SYNC_V4_NET, SYNC_V4_PREFIX),
        }
    }

    /// Network and prefix length, IPv6.
    pub fn v6_net(self) -> (Ipv6Addr, u8) {
        match self {
            Segment::Wan => (WAN_V6_NET, WAN_V6_PREFIX),
            Segment::Private => (PRIV_V6_NET, PRIV_V6_PREFIX),
            Segment::Mgmt => (MGMT_V6_NET, MGMT_V6_PREFIX),
            Segment::Sync => (SYNC_V6_NET, SYNC_V6_PREFIX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_v4(net: (Ipv4Addr, u8), a: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(net.1));
        u32::from(net.0) & mask == u32::from(a) & mask
    }

    fn in_v6(net: (Ipv6Addr, u8), a: Ipv6Addr) -> bool {
        let mask = u128::MAX << (128 - u32::from(net.1));
        u128::from(net.0) & mask == u128::from(a) & mask
    }

    #[test]
    fn every_address_is_inside_its_segment_and_documentation_ranges() {
        for host in Host::ALL {
            for &seg in host.segments() {
                for &a in host.v4_addrs(seg) {
                    assert!(in_v4(seg.v4_net(), a), "{host:?} {seg:?} {a}");
                    assert!(
                        in_v4((Ipv4Addr::new(192, 0, 2, 0), 24), a)
                            || in_v4((Ipv4Addr::new(198, 51, 100, 0), 24), a)
                            || in_v4((Ipv4Addr::new(203, 0, 113, 0), 24), a),
                        "{a} not in a documentation range"
                    );
                }
                for &a in host.v6_addrs(seg) {
                    assert!(in_v6(seg.v6_net(), a), "{host:?} {seg:?} {a}");
                    assert!(in_v6(
                        (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
                        a
                    ));
                }
                assert!(host.iface(seg).is_some());
            }
        }
    }

    #[test]
    fn no_address_belongs_to_two_hosts() {
        let mut seen = std::collections::HashMap::new();
        for host in Host::ALL {
            for &seg in host.segments() {
                let v4 = host.v4_addrs(seg).iter().map(|&a| IpAddr::V4(a));
                let v6 = host.v6_addrs(seg).iter().map(|&a| IpAddr::V6(a));
                for a in v4.chain(v6) {
                    if let Some(other) = seen.insert(a, host) {
                        assert_eq!(other, host, "{a} is {other:?}'s and {host:?}'s");
                    }
                }
            }
        }
        assert_eq!(seen.get(&IpAddr::V4(CLOUD_V4)), Some(&Host::Cloud));
        assert_eq!(seen.get(&IpAddr::V6(CLOUD_V6)), Some(&Host::Cloud));
    }
}
