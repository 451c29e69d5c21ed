//! The `[sip]` table: the domains the proxy answers for, the carrier peers it accepts calls
//! from, the overload caps and the routing of tracking numbers to destinations.
//!
//! ```toml
//! [sip]
//! domains = ["calls.example.com", "203.0.113.1"]   # Request-URI hosts served; others get 403
//! max_cps = 200        # optional, > 0: new calls per second (overload guard, 503 beyond)
//! max_calls = 2000     # optional, > 0: concurrent calls (overload guard, 503 beyond)
//! listen = ["203.0.113.1:5060", "198.51.100.1:5060"]   # UDP and TCP; empty: no proxy
//!                      # ([sip.tls] adds TLS listeners: see the `sip_tls` module)
//! response_timeout_secs = 5   # optional: no response from a destination → next one
//! ring_timeout_secs = 60      # optional: ringing this long → CANCEL, no-answer
//! max_call_secs = 14400       # optional: longest call (BYE both ways), pinholes' lifetime
//! probe_interval_secs = 10    # optional: OPTIONS health probes; unanswered → out of rotation
//!
//! [[sip.carrier]]      # calls are accepted only from these sources (application layer)
//! name = "lab-carrier"
//! sources = ["203.0.113.10/32", "2001:db8:1::10/128"]
//! media = ["203.0.113.0/28"]        # optional: where its SDP may put media (default: sources)
//! media_sources = ["203.0.113.32/28"]   # optional: its media comes from this pool, not
//!                                       # from the signalled address
//! max_requests_per_sec = 2000       # optional: per source address (default 10 × max_cps,
//!                                   # or 5000); over it requests are dropped, never blocked
//! max_dialogs = 1000                # optional: concurrent calls per source address (503)
//!
//! [sip.media]          # where the private segment's media may be, and the RTP ports
//! private = ["198.51.100.0/24"]     # optional (default: the destinations' addresses)
//! rtp_ports = "10000-60000"         # optional (default 1024-65535), both sides
//!
//! [[sip.route]]        # tracking numbers → campaign → destinations
//! numbers = ["+15550100000-+15550100099", "+15550100200"]
//! campaign = "spring-radio"
//! strategy = "sequential"              # or "round-robin" or "weighted" (default sequential)
//! destinations = [
//!   { uri = "sip:198.51.100.10:5060;transport=udp" },
//!   { uri = "sip:198.51.100.11:5060;transport=udp" },
//! ]
//! ```
//!
//! Routes live under `[[sip.route]]` so everything SIP is in one table. Numbers are E.164
//! (`+` and 1 to 15 digits, no leading zero) or inclusive ranges of numbers of the same
//! length. No number may belong to two routes (or twice to one); several routes may feed the
//! same campaign. With `strategy = "weighted"` every destination needs `weight > 0`; with the
//! other strategies `weight` is refused so a forgotten strategy does not go unnoticed.
//! Destination URIs name an IP literal (no DNS on the call path), an optional port (5060)
//! and an optional `transport=udp|tcp` (udp).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize};
use serde_spanned::Spanned;

use super::{ConfigError, EntryName, ErrorKind, Locator, PortRange, Prefix};

/// Most digits an E.164 number has.
pub const E164_MAX_DIGITS: u8 = 15;

/// The `[sip]` table. Absent means: no domains, no carriers, no routes — every call refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sip {
    /// Hosts the Request-URI may name (domain names or IP literals); anything else is 403.
    #[serde(default)]
    pub domains: Vec<Spanned<SipDomain>>,
    /// New calls per second admitted by the overload guard (503 with Retry-After beyond).
    #[serde(default)]
    pub max_cps: Option<Spanned<u32>>,
    /// Concurrent calls admitted by the overload guard (503 with Retry-After beyond).
    #[serde(default)]
    pub max_calls: Option<Spanned<u32>>,
    /// Addresses the proxy listens on, UDP and TCP (`"203.0.113.1:5060"`, `"[2001:db8::1]:5060"`).
    /// Empty: the proxy does not run.
    #[serde(default)]
    pub listen: Vec<Spanned<SocketAddr>>,
    /// `[sip.tcp]`: caps and timeouts of TCP connections (see [`SipTcp`]).
    #[serde(default)]
    pub tcp: SipTcp,
    /// `[sip.tls]`: SIP over TLS listeners and their guards (see [`crate::SipTls`]).
    #[serde(default)]
    pub tls: crate::SipTls,
    /// Seconds a destination has to send any response to an INVITE before the call fails over
    /// to the next destination (default 5).
    #[serde(default)]
    pub response_timeout_secs: Option<Spanned<u32>>,
    /// Seconds a destination may ring before the call is cancelled as no-answer (default 60).
    #[serde(default)]
    pub ring_timeout_secs: Option<Spanned<u32>>,
    /// Seconds between OPTIONS health probes of each destination (default 10); a destination
    /// that has not answered the previous probe by the next one is taken out of rotation
    /// until it answers again.
    #[serde(default)]
    pub probe_interval_secs: Option<Spanned<u32>>,
    /// Longest call in seconds; the proxy then ends it with BYE both ways (default 14400).
    /// Media pinholes never outlive it, even if the daemon dies.
    #[serde(default)]
    pub max_call_secs: Option<Spanned<u32>>,
    /// Carrier peers (`[[sip.carrier]]`): the only sources calls are accepted from.
    #[serde(default, rename = "carrier")]
    pub carriers: Vec<Carrier>,
    /// Routes (`[[sip.route]]`), in file order.
    #[serde(default, rename = "route")]
    pub routes: Vec<SipRoute>,
    /// `[sip.media]`: the private side's media ranges and the RTP port range.
    #[serde(default)]
    pub media: SipMedia,
}

/// A named carrier peer: the prefixes its signalling comes from, where its media may be,
/// and its request and dialog limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carrier {
    pub name: Spanned<EntryName>,
    pub sources: Spanned<Vec<Prefix>>,
    /// Prefixes the carrier's SDP may name as its media addresses (default: `sources`). An
    /// offer naming anything else gets 488 and opens nothing.
    #[serde(default)]
    pub media: Option<Spanned<Vec<Prefix>>>,
    /// The carrier sends its media from this pool rather than from the address its SDP
    /// names: pinholes toward the private side admit these prefixes as sources. Absent:
    /// only the signalled address may send.
    #[serde(default)]
    pub media_sources: Option<Spanned<Vec<Prefix>>>,
    /// Requests per second from one of its source addresses (default 10 × `max_cps`, or
    /// 5000 without it). Over it requests are dropped; a carrier is never blocked.
    #[serde(default)]
    pub max_requests_per_sec: Option<Spanned<u32>>,
    /// Concurrent calls from one of its source addresses (default `max_calls`, or none);
    /// past it new calls get 503 with Retry-After.
    #[serde(default)]
    pub max_dialogs: Option<Spanned<u32>>,
    /// Mutual TLS: what its client certificate must be (see [`crate::TlsPin`]).
    #[serde(default)]
    pub tls: Option<Spanned<crate::TlsPin>>,
}

impl Carrier {
    /// Where its SDP may put media.
    pub fn media_prefixes(&self) -> &[Prefix] {
        match &self.media {
            Some(m) => m.get_ref(),
            None => self.sources.get_ref(),
        }
    }
    /// The pool its media comes from, if it has one.
    pub fn media_pool(&self) -> &[Prefix] {
        self.media_sources.as_ref().map_or(&[], |m| m.get_ref())
    }
}

/// `[sip.media]`: what a media pinhole may open on the private side, and which ports.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipMedia {
    /// Prefixes the destinations' SDP may name as media addresses (default: exactly the
    /// destinations' addresses).
    #[serde(default)]
    pub private: Option<Spanned<Vec<Prefix>>>,
    /// RTP/RTCP ports a pinhole may open, on both sides (default 1024-65535).
    #[serde(default)]
    pub rtp_ports: Option<Spanned<PortRange>>,
}

/// Default of `[sip.media] rtp_ports`: no well-known port is ever a pinhole.
pub const DEFAULT_RTP_PORTS: PortRange = PortRange {
    lo: 1024,
    hi: 65535,
};

/// One route: tracking numbers, the campaign they feed and where calls go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipRoute {
    pub numbers: Spanned<Vec<Spanned<NumberRange>>>,
    pub campaign: Spanned<Campaign>,
    #[serde(default = "default_strategy")]
    pub strategy: Spanned<Strategy>,
    pub destinations: Spanned<Vec<Destination>>,
}

fn default_strategy() -> Spanned<Strategy> {
    Spanned::new(0..0, Strategy::Sequential)
}

/// A destination of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub uri: Spanned<SipUri>,
    /// Relative share of calls (strategy `weighted` only; required there and > 0).
    #[serde(default)]
    pub weight: Option<Spanned<u32>>,
}

impl Destination {
    /// The weight, 1 when not given.
    pub fn weight_or_one(&self) -> u32 {
        self.weight.as_ref().map(|w| *w.get_ref()).unwrap_or(1)
    }
}

/// How a route orders its destinations for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Config order; the next destination is tried on 408, 5xx or timeout.
    #[default]
    Sequential,
    /// The first destination rotates from call to call; the rest follow as failover.
    RoundRobin,
    /// A weighted random order: the first destination is drawn in proportion to weights.
    Weighted,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Sequential => "sequential",
            Strategy::RoundRobin => "round-robin",
            Strategy::Weighted => "weighted",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// A global E.164 number: `+` then 1 to 15 digits, the first not 0. Ordered by length, then
/// value, so ranges of one length are intervals of integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164 {
    digits: u8,
    value: u64,
}

impl E164 {
    /// Number of digits (1 to 15).
    pub fn digits(&self) -> u8 {
        self.digits
    }
    /// The digits as an integer.
    pub fn value(&self) -> u64 {
        self.value
    }
}

impl FromStr for E164 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid E.164 number {s:?}: expected '+' then 1 to 15 digits, not starting with 0, like +15550100000")
        };
        let digits = s.strip_prefix('+').ok_or_else(bad)?;
        if digits.is_empty()
            || digits.len() > usize::from(E164_MAX_DIGITS)
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return Err(bad());
        }
        let value = digits.parse::<u64>().map_err(|_| bad())?;
        Ok(E164 {
            digits: digits.len() as u8,
            value,
        })
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{:0w$}", self.value, w = usize::from(self.digits))
    }
}
string_newtype!(E164);

/// One number or an inclusive range `+lo-+hi` of numbers with the same number of digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NumberRange {
    pub lo: E164,
    pub hi: E164,
}

impl NumberRange {
    pub fn contains(&self, n: E164) -> bool {
        self.lo <= n && n <= self.hi
    }
    pub fn overlaps(&self, other: &NumberRange) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

impl FromStr for NumberRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((a, b)) = s.split_once("-+") else {
            let n: E164 = s.parse()?;
            return Ok(NumberRange { lo: n, hi: n });
        };
        let lo: E164 = a.parse()?;
        let hi: E164 = format!("+{b}").parse()?;
        if lo.digits != hi.digits {
            return Err(format!(
                "invalid number range {s:?}: both ends must have the same number of digits"
            ));
        }
        if lo > hi {
            return Err(format!(
                "invalid number range {s:?}: the first number must not exceed the second"
            ));
        }
        Ok(NumberRange { lo, hi })
    }
}

impl fmt::Display for NumberRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}
string_newtype!(NumberRange);

/// A campaign (or source) label carried into CDRs: 1 to 64 characters of `a-z`, `0-9`, `-`,
/// starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Campaign(String);

impl Campaign {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Campaign {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        crate::types::check_label(s, "campaign", 64)?;
        Ok(Campaign(s.to_owned()))
    }
}

impl fmt::Display for Campaign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(Campaign);

/// A host the proxy serves: a DNS name (stored lowercase) or an IP literal (IPv6 with or
/// without brackets; stored without).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SipDomain(String);

impl SipDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// True when `host` (a Request-URI host, IPv6 possibly bracketed) names this domain.
    pub fn matches(&self, host: &str) -> bool {
        let h = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let h = h.strip_suffix('.').unwrap_or(h);
        match (h.parse::<IpAddr>(), self.0.parse::<IpAddr>()) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => h.eq_ignore_ascii_case(&self.0),
            _ => false,
        }
    }
}

impl FromStr for SipDomain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let inner = s
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = inner.parse::<IpAddr>() {
            if inner != s && ip.is_ipv4() {
                return Err(format!(
                    "invalid domain {s:?}: only IPv6 addresses go in brackets"
                ));
            }
            return Ok(SipDomain(ip.to_string()));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let all_numeric = s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) || all_numeric {
            return Err(format!(
                "invalid domain {s:?}: expected a host name like calls.example.com or an IP address"
            ));
        }
        Ok(SipDomain(s.to_ascii_lowercase()))
    }
}

impl fmt::Display for SipDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(SipDomain);

/// Transport to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (default port 5061); see `[sip.tls] destinations` for what the
    /// destination's certificate must be.
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A destination URI: `sip:IP[:PORT][;transport=udp|tcp|tls]`, IPv6 in brackets (port
/// 5060, 5061 with TLS). No user part, no DNS names, no other parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SipUri {
    pub addr: SocketAddr,
    pub transport: Transport,
}

impl FromStr for SipUri {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("invalid destination URI {s:?}: {why}: expected sip:IP[:PORT][;transport=udp|tcp|tls], like sip:198.51.100.10:5060;transport=udp")
        };
        let rest = s
            .strip_prefix("sip:")
            .ok_or_else(|| bad("the scheme must be sip:"))?;
        let (hostport, params) = rest.split_once(';').unwrap_or((rest, ""));
        if hostport.contains('@') {
            return Err(bad("no user part is allowed"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed IPv6 bracket"))?;
            let ip: std::net::Ipv6Addr = h.parse().map_err(|_| bad("bad IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("bad port"))?),
            };
            (IpAddr::V6(ip), port)
        } else {
            let (h, p) = match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            };
            let ip: std::net::Ipv4Addr = h
                .parse()
                .map_err(|_| bad("the host must be an IP address (IPv6 in brackets)"))?;
            (IpAddr::V4(ip), p)
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return Err(bad("bad port")),
            },
        };
        let mut transport = Transport::Udp;
        if !params.is_empty() {
            for param in params.split(';') {
                match param.split_once('=') {
                    Some((k, v)) if k.eq_ignore_ascii_case("transport") => {
                        transport = match v.to_ascii_lowercase().as_str() {
                            "udp" => Transport::Udp,
                            "tcp" => Transport::Tcp,
                            "tls" => Transport::Tls,
                            _ => return Err(bad("transport must be udp, tcp or tls")),
                        }
                    }
                    _ => return Err(bad("the only parameter allowed is transport")),
                }
            }
        }
        let port = port.unwrap_or(match transport {
            Transport::Tls => super::DEFAULT_SIP_TLS_PORT,
            _ => super::DEFAULT_SIP_PORT,
        });
        Ok(SipUri {
            addr: SocketAddr::new(host, port),
            transport,
        })
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sip:{};transport={}", self.addr, self.transport.as_str())
    }
}
string_newtype!(SipUri);

impl Sip {
    /// `response_timeout_secs` or its default.
    pub fn response_timeout_secs(&self) -> u32 {
        self.response_timeout_secs
            .as_ref()
            .map_or(5, |v| *v.get_ref())
    }
    /// `ring_timeout_secs` or its default.
    pub fn ring_timeout_secs(&self) -> u32 {
        self.ring_timeout_secs.as_ref().map_or(60, |v| *v.get_ref())
    }
    /// `probe_interval_secs` or its default.
    pub fn probe_interval_secs(&self) -> u32 {
        self.probe_interval_secs
            .as_ref()
            .map_or(10, |v| *v.get_ref())
    }
    /// `max_call_secs` or its default.
    pub fn max_call_secs(&self) -> u32 {
        self.max_call_secs.as_ref().map_or(14_400, |v| *v.get_ref())
    }
    /// `[sip.media] rtp_ports` or its default.
    pub fn rtp_ports(&self) -> PortRange {
        self.media
            .rtp_ports
            .as_ref()
            .map_or(DEFAULT_RTP_PORTS, |p| *p.get_ref())
    }
    /// Where the destinations' SDP may put media: `[sip.media] private`, or the
    /// destinations' own addresses.
    pub fn private_media(&self) -> Vec<ipnet::IpNet> {
        match &self.media.private {
            Some(p) => p.get_ref().iter().map(|p| p.net()).collect(),
            None => self
                .routes
                .iter()
                .flat_map(|r| r.destinations.get_ref())
                .map(|d| ipnet::IpNet::from(d.uri.get_ref().addr.ip()))
                .collect(),
        }
    }
    /// The listen addresses.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen.iter().map(|l| *l.get_ref()).collect()
    }

    /// Document-wide checks of the `[sip]` table; errors are appended to `errs`.
    pub(crate) fn validate(&self, loc: &Locator<'_>, errs: &mut Vec<ConfigError>) {
        for (key, cap) in [
            ("max_cps", &self.max_cps),
            ("max_calls", &self.max_calls),
            ("response_timeout_secs", &self.response_timeout_secs),
            ("ring_timeout_secs", &self.ring_timeout_secs),
            ("max_call_secs", &self.max_call_secs),
            ("probe_interval_secs", &self.probe_interval_secs),
        ]
        .into_iter()
        .chain(self.carriers.iter().flat_map(|c| {
            [
                ("carrier.max_requests_per_sec", &c.max_requests_per_sec),
                ("carrier.max_dialogs", &c.max_dialogs),
            ]
        })) {
            if let Some(c) = cap {
                if *c.get_ref() == 0 {
                    errs.push(loc.error(
                        Some(c.span()),
                        ErrorKind::InvalidValue,
                        format!(
                            "sip.{key}: expected a number greater than 0 (omit it for the default)"
                        ),
                    ));
                }
            }
        }
        let mut seen_listen: Vec<SocketAddr> = Vec::new();
        for l in &self.listen {
            let a = *l.get_ref();
            if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
                errs.push(loc.error(
                    Some(l.span()),
                    ErrorKind::InvalidValue,
                    format!("sip.listen: {a}: expected a unicast address and a port other than 0"),
                ));
            }
            if seen_listen.contains(&a) {
                errs.push(loc.error(
                    Some(l.span()),
                    ErrorKind::DuplicateName,
                    format!("sip.listen: {a} is listed twice"),
                ));
            }
            seen_listen.push(a);
        }

        let mut seen_domains: Vec<&SipDomain> = Vec::new();
        for d in &self.domains {
            if seen_domains.contains(&d.get_ref()) {
                errs.push(loc.error(
                    Some(d.span()),
                    ErrorKind::DuplicateName,
                    format!("sip.domains: {} is listed twice", d.get_ref()),
                ));
            }
            seen_domains.push(d.get_ref());
        }

        let mut carrier_names: Vec<&EntryName> = Vec::new();
        for c in &self.carriers {
            if carrier_names.contains(&c.name.get_ref()) {
                errs.push(loc.error(
                    Some(c.name.span()),
                    ErrorKind::DuplicateName,
                    format!(
                        "sip.carrier {:?} is defined twice: names must be unique",
                        c.name.get_ref().as_str()
                    ),
                ));
            }
            carrier_names.push(c.name.get_ref());
            if let Some(t) = &c.tls {
                t.get_ref().validate(
                    &format!("sip.carrier {}", c.name.get_ref()),
                    t.span(),
                    loc,
                    errs,
                );
            }
            for (key, list) in [
                ("sources", Some(&c.sources)),
                ("media", c.media.as_ref()),
                ("media_sources", c.media_sources.as_ref()),
            ] {
                if let Some(list) = list.filter(|l| l.get_ref().is_empty()) {
                    errs.push(loc.error(
                        Some(list.span()),
                        ErrorKind::InvalidEntry,
                        format!(
                            "sip.carrier {}: {key} is empty: expected at least one prefix (omit it for the default)",
                            c.name.get_ref()
                        ),
                    ));
                }
            }
        }
        if let Some(p) = self
            .media
            .private
            .as_ref()
            .filter(|p| p.get_ref().is_empty())
        {
            errs.push(loc.error(
                Some(p.span()),
                ErrorKind::InvalidEntry,
                "sip.media.private is empty: expected at least one prefix (omit it for the destinations' addresses)".into(),
            ));
        }
        if let Some(p) = &self.media.rtp_ports {
            if p.get_ref().lo < 1024 {
                errs.push(loc.error(
                    Some(p.span()),
                    ErrorKind::InvalidValue,
                    format!(
                        "sip.media.rtp_ports {}: expected ports from 1024 up (a pinhole never opens a well-known port)",
                        p.get_ref()
                    ),
                ));
            }
        }

        if let Some(first) = self.routes.first() {
            if self.domains.is_empty() {
                errs.push(loc.error(
                    Some(first.numbers.span()),
                    ErrorKind::InvalidEntry,
                    "routes are configured but sip.domains is empty, so every call would be refused: expected domains = [\"…\"]".into(),
                ));
            }
            if self.carriers.is_empty() {
                errs.push(loc.error(
                    Some(first.numbers.span()),
                    ErrorKind::InvalidEntry,
                    "routes are configured but there is no [[sip.carrier]], so every call would be refused".into(),
                ));
            }
        }

        // Every number range with its route, sorted; overlaps are then adjacent.
        let mut ranges: Vec<(NumberRange, usize, &Spanned<NumberRange>)> = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            self.validate_route(i, r, loc, errs);
            for n in r.numbers.get_ref() {
                ranges.push((*n.get_ref(), i, n));
            }
        }
        ranges.sort_by_key(|(n, i, s)| (n.lo, n.hi, *i, s.span().start));
        // Sweep: `reach` is the range (of the current digit count) reaching furthest so far.
        let mut reach: Option<(NumberRange, usize)> = None;
        for (n, i, spanned) in &ranges {
            if let Some((prev, j)) = reach {
                if prev.overlaps(n) {
                    let (a, b) = (&self.routes[*i], &self.routes[j]);
                    let message = if *i == j {
                        format!(
                            "route {} (campaign {:?}): numbers {n} and {prev} overlap: list each number once",
                            i + 1,
                            a.campaign.get_ref().as_str()
                        )
                    } else {
                        format!(
                            "numbers {n} of route {} (campaign {:?}) overlap numbers {prev} of route {} (campaign {:?}): a number may belong to one route only",
                            i + 1,
                            a.campaign.get_ref().as_str(),
                            j + 1,
                            b.campaign.get_ref().as_str()
                        )
                    };
                    errs.push(loc.error(Some(spanned.span()), ErrorKind::InvalidEntry, message));
                }
                if prev.hi.digits != n.hi.digits || n.hi > prev.hi {
                    reach = Some((*n, *i));
                }
            } else {
                reach = Some((*n, *i));
            }
        }
    }

    fn validate_route(
        &self,
        i: usize,
        r: &SipRoute,
        loc: &Locator<'_>,
        errs: &mut Vec<ConfigError>,
    ) {
        let what = format!(
            "route {} (campaign {:?})",
            i + 1,
            r.campaign.get_ref().as_str()
        );
        if r.numbers.get_ref().is_empty() {
            errs.push(loc.error(
                Some(r.numbers.span()),
                ErrorKind::InvalidEntry,
                format!("{what}: numbers is empty: expected at least one E.164 number or range"),
            ));
        }
        let dests = r.destinations.get_ref();
        if dests.is_empty() {
            errs.push(loc.error(
                Some(r.destinations.span()),
                ErrorKind::InvalidEntry,
                format!(
                    "{what}: destinations is empty: expected at least one {{ uri = \"sip:…\" }}"
                ),
            ));
        }
        let weighted = *r.strategy.get_ref() == Strategy::Weighted;
        let mut seen: Vec<&SipUri> = Vec::new();
        for d in dests {
            if seen.contains(&d.uri.get_ref()) {
                errs.push(loc.error(
                    Some(d.uri.span()),
                    ErrorKind::InvalidEntry,
                    format!("{what}: destination {} is listed twice", d.uri.get_ref()),
                ));
            }
            seen.push(d.uri.get_ref());
            match (&d.weight, weighted) {
                (None, true) => errs.push(loc.error(
                    Some(d.uri.span()),
                    ErrorKind::InvalidEntry,
                    format!(
                        "{what}: destination {} has no weight: strategy weighted needs weight = N (N > 0) on every destination",
                        d.uri.get_ref()
                    ),
                )),
                (Some(w), true) if *w.get_ref() == 0 => errs.push(loc.error(
                    Some(w.span()),
                    ErrorKind::InvalidValue,
                    format!("{what}: weight must be greater than 0"),
                )),
                (Some(w), false) => errs.push(loc.error(
                    Some(w.span()),
                    ErrorKind::InvalidEntry,
                    format!(
                        "{what}: weight only applies to strategy = \"weighted\" (this route is {}): remove it or change the strategy",
                        r.strategy.get_ref()
                    ),
                )),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164() {
        let n: E164 = "+15550100000".parse().unwrap();
        assert_eq!(n.digits(), 11);
        assert_eq!(n.to_string(), "+15550100000");
        for bad in [
            "15550100000",
            "+",
            "+0123",
            "+1234567890123456",
            "+1 555",
            "+１",
        ] {
            assert!(bad.parse::<E164>().is_err(), "{bad}");
        }
        assert!("+123456789012345".parse::<E164>().is_ok());
    }

    #[test]
    fn ranges() {
        let r: NumberRange = "+15550100000-+15550100999".parse().unwrap();
        assert!(r.contains("+15550100999".parse().unwrap()));
        assert!(!r.contains("+15550101000".parse().unwrap()));
        assert!("+15550100999-+15550100000".parse::<NumberRange>().is_err());
        assert!("+1555-+15550".parse::<NumberRange>().is_err());
        assert!("+1555-1556".parse::<NumberRange>().is_err());
    }

    #[test]
    fn uris() {
        let u: SipUri = "sip:198.51.100.10:5060;transport=udp".parse().unwrap();
        assert_eq!(u.addr, "198.51.100.10:5060".parse().unwrap());
        let u: SipUri = "sip:[2001:db8:2::10]:5070;transport=TCP".parse().unwrap();
        assert_eq!(u.transport, Transport::Tcp);
        assert_eq!(u.to_string(), "sip:[2001:db8:2::10]:5070;transport=tcp");
        assert_eq!(
            "sip:198.51.100.10".parse::<SipUri>().unwrap().addr.port(),
            5060
        );
        let tls: SipUri = "sip:198.51.100.10;transport=tls".parse().unwrap();
        assert_eq!((tls.addr.port(), tls.transport), (5061, Transport::Tls));
        for bad in [
            "sips:198.51.100.10",
            "sip:pbx.example.com",
            "sip:198.51.100.10;transport=sctp",
            "sip:198.51.100.10:0",
            "sip:u@198.51.100.10",
            "sip:198.51.100.10;lr",
            "sip:2001:db8::1",
        ] {
            assert!(bad.parse::<SipUri>().is_err(), "{bad}");
        }
    }

    #[test]
    fn domains() {
        let d: SipDomain = "Calls.Example.com".parse().unwrap();
        assert!(d.matches("calls.example.COM"));
        let d: SipDomain = "[2001:db8:1::1]".parse().unwrap();
        assert!(d.matches("[2001:DB8:1:0::1]"));
        assert!(!d.matches("203.0.113.1"));
        assert!("999.1.1.1".parse::<SipDomain>().is_err());
        assert!("-a.example".parse::<SipDomain>().is_err());
        assert!("a b".parse::<SipDomain>().is_err());
    }
}

/// `[sip.tcp]`: what TCP peers may hold of the proxy. Every key is optional.
///
/// ```toml
/// [sip.tcp]
/// max_connections = 4096            # open connections, accepted and our own; past it a new
///                                   # inbound connection is closed at once
/// max_connections_per_source = 256  # accepted connections per source address
/// idle_timeout_secs = 300           # no message and no keepalive this long: closed
/// header_timeout_secs = 10          # a message begun must complete its header section
/// body_timeout_secs = 10            # ... and then its body, within these
/// max_buffer_bytes = 65536          # bytes of an incomplete message a connection may hold
/// ```
///
/// The idle default outlasts RFC 5626 keepalives (every 95 to 120 s on TCP). Connections the
/// proxy opens count toward `max_connections` but are never refused: they go only to the
/// addresses the proxy sends to, one at a time per address.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SipTcp {
    #[serde(default)]
    pub max_connections: Option<Spanned<u32>>,
    #[serde(default)]
    pub max_connections_per_source: Option<Spanned<u32>>,
    #[serde(default)]
    pub idle_timeout_secs: Option<Spanned<u32>>,
    #[serde(default)]
    pub header_timeout_secs: Option<Spanned<u32>>,
    #[serde(default)]
    pub body_timeout_secs: Option<Spanned<u32>>,
    #[serde(default)]
    pub max_buffer_bytes: Option<Spanned<u32>>,
}

/// Smallest and largest `[sip.tcp] max_buffer_bytes`: a message with a few kilobytes of
/// headers must fit; past a 64 KiB header section and a 64 KiB body the codec refuses
/// anyway.
pub const TCP_BUFFER_RANGE: (u32, u32) = (4096, 128 * 1024);

impl SipTcp {
    fn get(v: &Option<Spanned<u32>>, default: u32) -> u32 {
        v.as_ref().map_or(default, |v| *v.get_ref())
    }
    /// `max_connections` or its default (4096).
    pub fn max_connections(&self) -> u32 {
        Self::get(&self.max_connections, 4096)
    }
    /// `max_connections_per_source` or its default (256).
    pub fn max_connections_per_source(&self) -> u32 {
        Self::get(&self.max_connections_per_source, 256)
    }
    /// `idle_timeout_secs` or its default (300).
    pub fn idle_timeout_secs(&self) -> u32 {
        Self::get(&self.idle_timeout_secs, 300)
    }
    /// `header_timeout_secs` or its default (10).
    pub fn header_timeout_secs(&self) -> u32 {
        Self::get(&self.header_timeout_secs, 10)
    }
    /// `body_timeout_secs` or its default (10).
    pub fn body_timeout_secs(&self) -> u32 {
        Self::get(&self.body_timeout_secs, 10)
    }
    /// `max_buffer_bytes` or its default (65536).
    pub fn max_buffer_bytes(&self) -> u32 {
        Self::get(&self.max_buffer_bytes, 64 * 1024)
    }

    /// Checks of the `[sip.tcp]` table; errors are appended to `errs`.
    pub(crate) fn validate(&self, loc: &Locator<'_>, errs: &mut Vec<ConfigError>) {
        for (key, v) in [
            ("max_connections", &self.max_connections),
            (
                "max_connections_per_source",
                &self.max_connections_per_source,
            ),
            ("idle_timeout_secs", &self.idle_timeout_secs),
            ("header_timeout_secs", &self.header_timeout_secs),
            ("body_timeout_secs", &self.body_timeout_secs),
        ] {
            if let Some(v) = v.as_ref().filter(|v| *v.get_ref() == 0) {
                errs.push(loc.error(
                    Some(v.span()),
                    ErrorKind::InvalidValue,
                    format!(
                        "sip.tcp.{key}: expected a number greater than 0 (omit it for the default)"
                    ),
                ));
            }
        }
        if let Some(v) = &self.max_connections_per_source {
            let total = self.max_connections();
            if *v.get_ref() > total {
                errs.push(loc.error(
                    Some(v.span()),
                    ErrorKind::InvalidValue,
                    format!(
                        "sip.tcp.max_connections_per_source: {} is more than max_connections ({total}): expected at most that",
                        v.get_ref()
                    ),
                ));
            }
        }
        if let Some(v) = &self.max_buffer_bytes {
            let (lo, hi) = TCP_BUFFER_RANGE;
            if !(lo..=hi).contains(v.get_ref()) {
                errs.push(loc.error(
                    Some(v.span()),
                    ErrorKind::InvalidValue,
                    format!("sip.tcp.max_buffer_bytes: expected {lo} to {hi}"),
                ));
            }
        }
    }
}
