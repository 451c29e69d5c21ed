//! Media: what an SDP body asks for, whether the config allows it, and the pinholes a
//! call's two descriptions make.
//!
//! What a SIP message says about media is input from an attacker until checked here. A
//! description is carried only if every active stream is an exact unicast address and a
//! port ([`callgate_sip::sdp::Sdp::media_flows`]) and each address:
//! - lies in the media ranges of its side: a carrier's `media` prefixes on the WAN side,
//!   `[sip.media] private` on the private side;
//! - has a port in `[sip.media] rtp_ports` (1024-65535 by default);
//! - is none of the appliance's own addresses, and no SIP address (our listen addresses,
//!   the destinations' SIP ports): media never steers traffic into signalling.
//!
//! A pinhole admits one flow: from the other party's signalled media address (or, for a
//! carrier with `media_sources`, from that pool) to the signalled address and port.
//! Latching (symmetric RTP toward wherever the first packet came from) is not done: a
//! party behind NAT must signal the address its media really uses.

use std::net::{IpAddr, SocketAddr};

use callgate_config::{Config, PortRange};
use callgate_router::CarrierPeer;
use callgate_sip::{self as sip, Message};
use ipnet::IpNet;

/// Media addresses (RTP, RTCP) of one party, exactly as many as it named, in order.
///
/// The usual description, one stream whose RTP and RTCP share an address, is held inline
/// in the call; anything else takes one allocation (memory per held dialog is a benchmark
/// figure, and this was two 64-byte allocations per call).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Media {
    #[default]
    None,
    /// One or two addresses on one IP: `ports[..n]`.
    OneIp {
        ip: IpAddr,
        ports: [u16; 2],
        n: u8,
    },
    Many(Box<[SocketAddr]>),
}

impl Media {
    /// The addresses as a list (empty for [`Media::None`]).
    pub(crate) fn to_vec(&self) -> Vec<SocketAddr> {
        match self {
            Media::None => Vec::new(),
            Media::OneIp { ip, ports, n } => ports
                .iter()
                .take(usize::from(*n))
                .map(|p| SocketAddr::new(*ip, *p))
                .collect(),
            Media::Many(v) => v.to_vec(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Media::None)
    }
}

impl From<Vec<SocketAddr>> for Media {
    fn from(v: Vec<SocketAddr>) -> Media {
        match v.as_slice() {
            [] => Media::None,
            [a] => Media::OneIp {
                ip: a.ip(),
                ports: [a.port(), 0],
                n: 1,
            },
            [a, b] if a.ip() == b.ip() => Media::OneIp {
                ip: a.ip(),
                ports: [a.port(), b.port()],
                n: 2,
            },
            _ => Media::Many(v.into_boxed_slice()),
        }
    }
}

/// What the config allows media to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRules {
    /// Ports a pinhole may open (both sides).
    pub rtp_ports: PortRange,
    /// Where the destinations' media may be.
    pub private: Vec<IpNet>,
    /// The appliance's own addresses (the driver adds its interfaces' addresses).
    pub own: Vec<IpAddr>,
    /// SIP addresses media must never point at: our listen addresses and the
    /// destinations' SIP addresses.
    pub sip: Vec<SocketAddr>,
}

impl MediaRules {
    /// The rules of a validated config; `own` holds the listen addresses' IPs until the
    /// driver adds the rest.
    pub fn from_config(cfg: &Config) -> MediaRules {
        let listen = cfg.sip.listen_addrs();
        let mut sip: Vec<SocketAddr> = listen.clone();
        sip.extend(
            cfg.sip
                .routes
                .iter()
                .flat_map(|r| r.destinations.get_ref())
                .map(|d| d.uri.get_ref().addr),
        );
        MediaRules {
            rtp_ports: cfg.sip.rtp_ports(),
            private: cfg.sip.private_media(),
            own: listen.iter().map(|a| a.ip()).collect(),
            sip,
        }
    }

    /// Whether one party's media may be carried; the reason when not (for the log and a
    /// Warning header: it names no address).
    pub(crate) fn check(&self, side: Side<'_>, media: &[SocketAddr]) -> Result<(), &'static str> {
        let ranges: &[IpNet] = match side {
            Side::Carrier(Some(c)) => &c.media,
            Side::Carrier(None) => &[],
            Side::Private => &self.private,
        };
        for a in media {
            let ip = a.ip().to_canonical();
            if !self.rtp_ports.contains(a.port()) {
                return Err("media port outside the RTP port range");
            }
            if self.own.iter().any(|o| o.to_canonical() == ip) {
                return Err("media address is the appliance's own");
            }
            if self
                .sip
                .iter()
                .any(|s| s.ip().to_canonical() == ip && s.port() == a.port())
            {
                return Err("media address is a SIP address");
            }
            if !ranges.iter().any(|n| n.contains(&ip)) {
                return Err("media address outside the configured media ranges");
            }
        }
        Ok(())
    }
}

/// Whose media a description is: the carrier of the call (None: no longer configured) or
/// the private side.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side<'a> {
    Carrier(Option<&'a CarrierPeer>),
    Private,
}

/// The RTP/RTCP addresses of a message's SDP body: empty when there is no body or it is
/// not SDP; an error when the SDP is malformed or over the limits.
pub(crate) fn media_of(msg: &Message<'_>) -> Result<Vec<SocketAddr>, &'static str> {
    let body = msg.body();
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let is_sdp = msg.content_type().ok().flatten().is_none_or(|ct| {
        ct.trim()
            .to_ascii_lowercase()
            .starts_with("application/sdp")
    });
    if !is_sdp {
        return Ok(Vec::new());
    }
    let flows = sip::sdp::parse(body)
        .and_then(|s| s.media_flows())
        .map_err(|e| e.0)?;
    let mut v = Vec::with_capacity(flows.len() * 2);
    for f in flows {
        v.push(f.rtp);
        if f.rtcp != f.rtp {
            v.push(f.rtcp);
        }
    }
    Ok(v)
}

/// A host prefix (/32, /128) for one address.
fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip.to_canonical())
}

/// The pinholes of a call: toward each callee address from the caller's media addresses
/// (or the carrier's pool), toward each caller address from the callee's; sorted, no
/// duplicates. A direction whose sender has not described its media yet has none.
pub(crate) fn pinholes(
    caller: &[SocketAddr],
    callee: &[SocketAddr],
    pool: Option<&[IpNet]>,
) -> Vec<(IpNet, SocketAddr)> {
    let ips = |m: &[SocketAddr]| -> Vec<IpNet> {
        let mut v: Vec<IpNet> = m.iter().map(|a| host(a.ip())).collect();
        v.sort();
        v.dedup();
        v
    };
    let from_caller: Vec<IpNet> = match pool {
        Some(p) if !caller.is_empty() => p.to_vec(),
        _ => ips(caller),
    };
    let from_callee = ips(callee);
    let mut out = Vec::new();
    for (dsts, srcs) in [(callee, &from_caller), (caller, &from_callee)] {
        for d in dsts {
            for s in srcs.iter().filter(|s| s.addr().is_ipv4() == d.is_ipv4()) {
                out.push((*s, *d));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn rules() -> MediaRules {
        MediaRules {
            rtp_ports: PortRange {
                lo: 1024,
                hi: 65535,
            },
            private: vec![net("198.51.100.0/24")],
            own: vec![
                "198.51.100.1".parse().unwrap(),
                "192.0.2.1".parse().unwrap(),
            ],
            sip: vec![sa("198.51.100.10:5060")],
        }
    }

    /// A description comes back exactly as named, whether it is held inline (one address,
    /// one or two ports) or not.
    #[test]
    fn media_round_trips_inline_and_not() {
        let cases: [&[&str]; 6] = [
            &[],
            &["203.0.113.5:30000"],
            &["203.0.113.5:30000", "203.0.113.5:30001"],
            &["[2001:db8::5]:30000", "[2001:db8::5]:30001"],
            &["203.0.113.5:30000", "203.0.113.6:30001"],
            &[
                "203.0.113.5:30000",
                "203.0.113.5:30001",
                "203.0.113.5:30002",
            ],
        ];
        for (i, case) in cases.iter().enumerate() {
            let v: Vec<SocketAddr> = case.iter().map(|a| sa(a)).collect();
            let m = Media::from(v.clone());
            assert_eq!(m.to_vec(), v, "case {i}");
            assert_eq!(m.is_empty(), v.is_empty(), "case {i}");
            let inline = matches!(m, Media::OneIp { .. });
            assert_eq!(inline, (1..=2).contains(&i) || i == 3, "case {i}");
        }
    }

    fn carrier() -> CarrierPeer {
        CarrierPeer {
            name: "c".into(),
            sources: vec![net("203.0.113.10/32")],
            media: vec![net("203.0.113.0/28")],
            media_pool: None,
        }
    }

    #[test]
    fn the_issue_attack_is_refused_on_both_sides() {
        let r = rules();
        let c = carrier();
        // The carrier's SDP naming the PBX's SNMP port and the appliance's heartbeat port.
        assert!(r
            .check(Side::Carrier(Some(&c)), &[sa("198.51.100.10:161")])
            .is_err());
        assert!(r
            .check(Side::Carrier(Some(&c)), &[sa("192.0.2.1:5405")])
            .is_err());
        assert!(r
            .check(Side::Carrier(Some(&c)), &[sa("203.0.113.10:40000")])
            .is_ok());
        // Private side: well-known port, own address, SIP address, outside the range.
        for bad in [
            "198.51.100.10:161",
            "198.51.100.1:40000",
            "198.51.100.10:5060",
            "203.0.113.10:40000",
        ] {
            assert!(r.check(Side::Private, &[sa(bad)]).is_err(), "{bad}");
        }
        assert!(r.check(Side::Private, &[sa("198.51.100.10:40000")]).is_ok());
        // A carrier no longer configured may offer nothing.
        assert!(r
            .check(Side::Carrier(None), &[sa("203.0.113.10:40000")])
            .is_err());
        // IPv4-mapped IPv6 is the IPv4 address.
        assert!(r
            .check(Side::Private, &[sa("[::ffff:198.51.100.1]:40000")])
            .is_err());
    }

    #[test]
    fn pinholes_bind_each_flow_to_the_other_party() {
        let caller = [sa("203.0.113.10:40000"), sa("203.0.113.10:40001")];
        let callee = [sa("198.51.100.10:6000"), sa("198.51.100.10:6001")];
        let p = pinholes(&caller, &callee, None);
        assert_eq!(
            p,
            vec![
                (net("198.51.100.10/32"), sa("203.0.113.10:40000")),
                (net("198.51.100.10/32"), sa("203.0.113.10:40001")),
                (net("203.0.113.10/32"), sa("198.51.100.10:6000")),
                (net("203.0.113.10/32"), sa("198.51.100.10:6001")),
            ]
        );
        // A carrier media pool sends toward the callee; the callee still sends to the
        // signalled address only.
        let pool = [net("203.0.113.32/28")];
        let p = pinholes(&caller, &callee, Some(&pool));
        assert!(p.contains(&(net("203.0.113.32/28"), sa("198.51.100.10:6000"))));
        assert!(!p.iter().any(|(s, _)| *s == net("203.0.113.10/32")));
        // Nothing opens toward a party whose peer has not described its media.
        assert!(pinholes(&caller, &[], None).is_empty());
        assert!(pinholes(&[], &callee, Some(&pool)).is_empty());
    }
}
