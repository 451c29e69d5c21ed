//! # callgate-router
//!
//! Decides, for one incoming INVITE, whether it may be routed and to which destinations, from
//! the `[sip]` table of the config ([`callgate_config::Sip`]). Pure: no I/O, no clock, no
//! global randomness, so every decision is reproducible in tests.
//!
//! ## Design
//! - [`RouteTable::build`] flattens every route's numbers into one vector of inclusive
//!   ranges keyed by (digit count, value), sorted. The config guarantees they do not overlap,
//!   so a lookup is one binary search: O(log n) in the number of ranges.
//! - [`normalize_number`] turns the user part of a `sip:`/`tel:` Request-URI into E.164:
//!   RFC 3966 visual separators (`-`, `.`, `(`, `)`) are removed and parameters (`;…`)
//!   dropped. Only global numbers (`+…`) are routed; local numbers never match.
//! - [`route_request`] checks the source first (403 [`Refusal::NotFromCarrier`]), then the
//!   number (404 [`Refusal::UnknownNumber`]), so a non-carrier learns nothing about which
//!   numbers exist. The domain check (403) is [`RouteTable::serves_domain`], done by the
//!   caller on the Request-URI host.
//! - [`Selector`] orders a route's destinations for one call: sequential keeps config order,
//!   round-robin rotates the start per call (an atomic counter per route, so `&self` suffices
//!   on several threads), weighted draws a weighted random order from an injected
//!   `rand: &mut dyn FnMut() -> u64`. Destinations marked down in [`Health`] (fed by the
//!   OPTIONS prober) are left out; when every destination is down all are returned in
//!   strategy order (fail open to the transaction layer, which then gets its own errors and
//!   the call ends in a logged failure instead of a silent refusal: a prober that is wrong
//!   or late must not turn into an outage).
//!
//! ## Limits
//! - Numbers are E.164 only (at most 15 digits); `phone-context` local numbers are refused.
//! - Weighted draws use `rand() % total`, a bias below 2^-32 for realistic weights.
//! - A source matching several carriers is attributed to the first in config order.
//! - Rebuild the table (and a new [`Selector`]) on every committed config change; round-robin
//!   positions restart then.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use callgate_config::{Config, SipDomain, SipUri, Strategy};
use ipnet::IpNet;

/// Identifies a route in a [`RouteTable`] (its position in the config, from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(pub usize);

/// A destination of a route as the router uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dest {
    pub uri: SipUri,
    /// Relative share for the weighted strategy (1 for the other strategies).
    pub weight: u32,
}

/// One route: the campaign its numbers feed and where calls go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub id: RouteId,
    /// Shared with every call of the route (no copy per call).
    pub campaign: std::sync::Arc<str>,
    pub strategy: Strategy,
    pub destinations: Vec<Dest>,
}

/// A carrier peer: the only sources calls are accepted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarrierPeer {
    pub name: String,
    /// Where its signalling comes from.
    pub sources: Vec<IpNet>,
    /// Where its SDP may put media.
    pub media: Vec<IpNet>,
    /// The pool its media comes from, when not from the signalled address.
    pub media_pool: Option<std::sync::Arc<[IpNet]>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    digits: u8,
    lo: u64,
    hi: u64,
    route: RouteId,
}

/// Every route, the number ranges that lead to them and the carrier peers.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    spans: Vec<Span>,
    routes: Vec<RouteEntry>,
    carriers: Vec<CarrierPeer>,
    domains: Vec<SipDomain>,
}

impl RouteTable {
    /// Builds the table from a validated config.
    pub fn build(cfg: &Config) -> RouteTable {
        let sip = &cfg.sip;
        let mut spans = Vec::new();
        let mut routes = Vec::with_capacity(sip.routes.len());
        for (i, r) in sip.routes.iter().enumerate() {
            let id = RouteId(i);
            for n in r.numbers.get_ref() {
                let n = n.get_ref();
                spans.push(Span {
                    digits: n.lo.digits(),
                    lo: n.lo.value(),
                    hi: n.hi.value(),
                    route: id,
                });
            }
            let strategy = *r.strategy.get_ref();
            routes.push(RouteEntry {
                id,
                campaign: r.campaign.get_ref().as_str().into(),
                strategy,
                destinations: r
                    .destinations
                    .get_ref()
                    .iter()
                    .map(|d| Dest {
                        uri: *d.uri.get_ref(),
                        weight: match strategy {
                            Strategy::Weighted => d.weight_or_one().max(1),
                            _ => 1,
                        },
                    })
                    .collect(),
            });
        }
        spans.sort_by_key(|s| (s.digits, s.lo));
        RouteTable {
            spans,
            routes,
            carriers: sip
                .carriers
                .iter()
                .map(|c| CarrierPeer {
                    name: c.name.get_ref().to_string(),
                    sources: c.sources.get_ref().iter().map(|p| p.net()).collect(),
                    media: c.media_prefixes().iter().map(|p| p.net()).collect(),
                    media_pool: Some(c.media_pool())
                        .filter(|p| !p.is_empty())
                        .map(|p| p.iter().map(|p| p.net()).collect()),
                })
                .collect(),
            domains: sip.domains.iter().map(|d| d.get_ref().clone()).collect(),
        }
    }

    /// The route of a normalised E.164 number (`+` and digits), if any.
    pub fn lookup(&self, number: &str) -> Option<&RouteEntry> {
        let digits = number.strip_prefix('+')?;
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let key = (digits.len() as u8, digits.parse::<u64>().ok()?);
        let idx = self.spans.partition_point(|s| (s.digits, s.lo) <= key);
        let span = self.spans.get(idx.checked_sub(1)?)?;
        if span.digits == key.0 && key.1 <= span.hi {
            self.routes.get(span.route.0)
        } else {
            None
        }
    }

    /// A route by id.
    pub fn route(&self, id: RouteId) -> Option<&RouteEntry> {
        self.routes.get(id.0)
    }

    /// Every route, in config order.
    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
    }

    /// The carrier peer `source` belongs to (IPv4-mapped IPv6 counts as IPv4).
    pub fn carrier_of(&self, source: IpAddr) -> Option<&CarrierPeer> {
        let ip = source.to_canonical();
        self.carriers
            .iter()
            .find(|c| c.sources.iter().any(|n| n.contains(&ip)))
    }

    /// True when the Request-URI host `host` is one of `sip.domains`.
    pub fn serves_domain(&self, host: &str) -> bool {
        self.domains.iter().any(|d| d.matches(host))
    }
}

/// Normalises the user part of a `sip:` or `tel:` Request-URI to E.164 (`+` and 1 to 15
/// digits): parameters after `;` are dropped and RFC 3966 visual separators removed.
/// Returns `None` for anything that is not a global number.
pub fn normalize_number(user: &str) -> Option<String> {
    let number = user.split(';').next().unwrap_or("");
    let digits = number.strip_prefix('+')?;
    let mut out = String::with_capacity(16);
    out.push('+');
    for c in digits.chars() {
        match c {
            '0'..='9' => out.push(c),
            '-' | '.' | '(' | ')' => {}
            _ => return None,
        }
    }
    let n = out.len() - 1;
    if n == 0 || n > 15 || out.as_bytes().get(1) == Some(&b'0') {
        return None;
    }
    Some(out)
}

/// Why a request is not routed, with the SIP status to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The dialled number is not a configured tracking number: 404.
    UnknownNumber,
    /// The source is not a configured carrier peer: 403.
    NotFromCarrier,
}

impl Refusal {
    /// The SIP status code to answer with.
    pub fn status(self) -> u16 {
        match self {
            Refusal::UnknownNumber => 404,
            Refusal::NotFromCarrier => 403,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::UnknownNumber => "unknown number",
            Refusal::NotFromCarrier => "not from a carrier peer",
        })
    }
}

/// A routing decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'t> {
    /// The carrier the request came from.
    pub carrier: &'t CarrierPeer,
    /// The route of the dialled number.
    pub entry: &'t RouteEntry,
}

impl Route<'_> {
    pub fn campaign(&self) -> &str {
        &self.entry.campaign
    }
}

/// Decides whether a request may be routed: its source must be a carrier peer (else 403),
/// its Request-URI user part a configured tracking number (else 404).
pub fn route_request<'t>(
    table: &'t RouteTable,
    request_uri_user: &str,
    source_ip: IpAddr,
) -> Result<Route<'t>, Refusal> {
    let carrier = table.carrier_of(source_ip).ok_or(Refusal::NotFromCarrier)?;
    let entry = normalize_number(request_uri_user)
        .and_then(|n| table.lookup(&n))
        .ok_or(Refusal::UnknownNumber)?;
    Ok(Route { carrier, entry })
}

/// Which destinations are down, as the OPTIONS prober last saw them. Unknown means up.
#[derive(Debug, Clone, Default)]
pub struct Health {
    down: HashSet<SipUri>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }
    /// Records the latest probe result of `dest`.
    pub fn set_healthy(&mut self, dest: SipUri, healthy: bool) {
        if healthy {
            self.down.remove(&dest);
        } else {
            self.down.insert(dest);
        }
    }
    pub fn is_healthy(&self, dest: &SipUri) -> bool {
        !self.down.contains(dest)
    }
}

/// Orders a route's destinations for one call. Holds the round-robin positions.
#[derive(Debug)]
pub struct Selector {
    next: Vec<AtomicUsize>,
}

impl Selector {
    /// A selector for `table` (round-robin starts at each route's first destination).
    pub fn new(table: &RouteTable) -> Selector {
        Selector {
            next: table.routes.iter().map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// The destinations to try for one call, in order: healthy ones only, or all of them
    /// when none is healthy (fail open, see the crate docs).
    pub fn select(
        &self,
        route: &RouteEntry,
        health: &Health,
        rand: &mut dyn FnMut() -> u64,
    ) -> Vec<Dest> {
        let healthy: Vec<Dest> = route
            .destinations
            .iter()
            .copied()
            .filter(|d| health.is_healthy(&d.uri))
            .collect();
        let mut pool = if healthy.is_empty() {
            route.destinations.clone()
        } else {
            healthy
        };
        match route.strategy {
            Strategy::Sequential => {}
            Strategy::RoundRobin => {
                if let Some(counter) = self.next.get(route.id.0) {
                    if !pool.is_empty() {
                        let start = counter.fetch_add(1, Ordering::Relaxed) % pool.len();
                        pool.rotate_left(start);
                    }
                }
            }
            Strategy::Weighted => {
                let mut ordered = Vec::with_capacity(pool.len());
                while !pool.is_empty() {
                    let total: u64 = pool.iter().map(|d| u64::from(d.weight.max(1))).sum();
                    let mut r = rand() % total;
                    let mut pick = pool.len() - 1;
                    for (i, d) in pool.iter().enumerate() {
                        let w = u64::from(d.weight.max(1));
                        if r < w {
                            pick = i;
                            break;
                        }
                        r -= w;
                    }
                    ordered.push(pool.remove(pick));
                }
                pool = ordered;
            }
        }
        pool
    }
}

pub mod guard;
#[cfg(test)]
mod tests;
