//! Per-source flood and scanner guard.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::bucket::TokenBucket;
use super::Millis;

/// User-Agent substrings of known SIP scanners, matched case-insensitively (ASCII).
///
/// - `friendly-scanner`: SIPVicious' default User-Agent (svmap/svwar), the most common one.
/// - `sipvicious`: newer SIPVicious releases announce themselves by name.
/// - `sipcli`: a command-line caller used for toll-fraud dialling attempts.
/// - `sip-scan`: the `sip-scan` tool and scripts named after it.
/// - `sundayddr`: a long-running scanner campaign.
/// - `iwar`: the iWar war dialler.
/// - `sipsak`: a legitimate diagnostics tool, but nothing outside the operator's own network
///   has a reason to run it against a carrier-facing edge; operators who probe with it
///   from outside can drop it from the list.
///
/// Left out on purpose: `VaxSIPUserAgent` and `pplsip` (also the default User-Agent of SDKs
/// some legitimate softphones ship with).
pub const DEFAULT_SCANNER_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sundayddr",
    "iwar",
    "sipsak",
];

/// Settings of a [`FloodGuard`]. [`FloodConfig::default`] lists the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloodConfig {
    /// Requests per second allowed from one source (every request counts: new, in-dialog,
    /// retransmissions). Default 200: a carrier trunk sends about five requests per call.
    pub rate_per_sec: u32,
    /// Requests a source may send at once above the rate. Default 400.
    pub burst: u32,
    /// Concurrent dialogs one source may have open; past it new dialogs get 503. Default 2000.
    pub max_dialogs_per_source: u32,
    /// Violations (rate exceeded, scanner User-Agent) within `violation_window_ms` that get
    /// a source blocked. Default 50.
    pub violations_to_block: u32,
    /// Default 10 000 ms.
    pub violation_window_ms: u64,
    /// How long a blocked source stays in the nftables set. Default 600 s.
    pub block_ttl_secs: u32,
    /// Sources tracked at most (least-recently-seen evicted). Default 65 536.
    pub max_sources: usize,
    /// Scanner User-Agent substrings (matched ASCII case-insensitively).
    pub scanner_user_agents: Vec<String>,
    /// Sources that are rate-limited and dropped like any other but never blocked: carrier
    /// trunks, whose addresses a UDP flooder can spoof to make us block our own carrier.
    pub never_block: Vec<IpNet>,
    /// Sources with limits of their own (carrier trunks, destinations), first match wins;
    /// the rest get `rate_per_sec`, `burst` and `max_dialogs_per_source`.
    pub limits: Vec<(IpNet, SourceLimits)>,
}

/// The limits of one class of sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Requests per second from one address.
    pub rate_per_sec: u32,
    /// Requests one address may send at once above the rate.
    pub burst: u32,
    /// Concurrent dialogs one address may have open.
    pub max_dialogs: u32,
}

impl Default for FloodConfig {
    fn default() -> FloodConfig {
        FloodConfig {
            rate_per_sec: 200,
            burst: 400,
            max_dialogs_per_source: 2000,
            violations_to_block: 50,
            violation_window_ms: 10_000,
            block_ttl_secs: 600,
            max_sources: 65_536,
            scanner_user_agents: DEFAULT_SCANNER_USER_AGENTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            never_block: Vec::new(),
            limits: Vec::new(),
        }
    }
}

impl FloodConfig {
    /// The limits that apply to `source` (canonical form).
    pub fn limits_for(&self, source: IpAddr) -> SourceLimits {
        self.limits
            .iter()
            .find(|(n, _)| n.contains(&source))
            .map(|(_, l)| *l)
            .unwrap_or(SourceLimits {
                rate_per_sec: self.rate_per_sec,
                burst: self.burst,
                max_dialogs: self.max_dialogs_per_source,
            })
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Allow,
    /// Drop it silently: no response (answering a flood amplifies it and confirms we exist).
    Drop,
    /// Drop it and add the source to the nftables blocklist set with `timeout ttl_secs`.
    /// Returned once per block; later requests get [`Verdict::Drop`] until the TTL passes.
    Block { ttl_secs: u32 },
}

#[derive(Debug, Clone)]
struct Source {
    bucket: TokenBucket,
    dialogs: u32,
    violations: u32,
    window_start: Millis,
    /// Blocked while `now < blocked_until`.
    blocked_until: Millis,
    /// Key in `FloodGuard::recency`.
    seen: u64,
}

/// The per-source guard. Owned by one task (`&mut self`), no locks.
#[derive(Debug, Clone)]
pub struct FloodGuard {
    cfg: FloodConfig,
    /// Lower-cased scanner patterns.
    scanners: Vec<Vec<u8>>,
    sources: HashMap<IpAddr, Source>,
    /// Recency index: sequence number of the last sighting -> source. The first entry is
    /// the least recently seen.
    recency: BTreeMap<u64, IpAddr>,
    seq: u64,
}

impl FloodGuard {
    /// A guard with `cfg`. `max_sources` 0 is taken as 1.
    pub fn new(mut cfg: FloodConfig) -> FloodGuard {
        cfg.max_sources = cfg.max_sources.max(1);
        let scanners = cfg
            .scanner_user_agents
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| s.to_ascii_lowercase().into_bytes())
            .collect();
        FloodGuard {
            cfg,
            scanners,
            sources: HashMap::new(),
            recency: BTreeMap::new(),
            seq: 0,
        }
    }

    pub fn config(&self) -> &FloodConfig {
        &self.cfg
    }

    /// Sources currently tracked (never more than `max_sources`).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Open dialogs counted for `source` (0 if not tracked).
    pub fn dialogs(&self, source: IpAddr) -> u32 {
        self.sources
            .get(&source.to_canonical())
            .map_or(0, |s| s.dialogs)
    }

    /// True when `user_agent` contains a scanner pattern.
    pub fn is_scanner(&self, user_agent: &str) -> bool {
        let ua = user_agent.as_bytes();
        self.scanners
            .iter()
            .any(|p| ua.len() >= p.len() && ua.windows(p.len()).any(|w| w.eq_ignore_ascii_case(p)))
    }

    /// Judges one request from `source`, whoever it is: every source has a rate (its own
    /// [`SourceLimits`] where [`FloodConfig::limits`] names it), scanner User-Agents are
    /// dropped from anyone, and only sources outside [`FloodConfig::never_block`] are ever
    /// blocked.
    ///
    /// Order: blocked source → scanner User-Agent → rate.
    pub fn check(&mut self, now: Millis, source: IpAddr, user_agent: Option<&str>) -> Verdict {
        let source = source.to_canonical();
        let scanner = user_agent.is_some_and(|ua| self.is_scanner(ua));
        let protected = self.cfg.never_block.iter().any(|n| n.contains(&source));
        let limits = self.cfg.limits_for(source);
        let cfg = &self.cfg;
        let entry = Self::touch(
            &mut self.sources,
            &mut self.recency,
            &mut self.seq,
            cfg,
            limits,
            now,
            source,
        );
        if now < entry.blocked_until {
            return Verdict::Drop;
        }
        let offence = if scanner {
            true
        } else {
            !entry
                .bucket
                .try_take(now, limits.rate_per_sec, limits.burst)
        };
        if offence {
            if now.0.saturating_sub(entry.window_start.0) >= cfg.violation_window_ms {
                entry.window_start = now;
                entry.violations = 0;
            }
            entry.violations = entry.violations.saturating_add(1);
            if !protected && entry.violations >= cfg.violations_to_block.max(1) {
                entry.violations = 0;
                entry.blocked_until =
                    Millis(now.0.saturating_add(u64::from(cfg.block_ttl_secs) * 1000));
                return Verdict::Block {
                    ttl_secs: cfg.block_ttl_secs,
                };
            }
            return Verdict::Drop;
        }
        Verdict::Allow
    }

    /// A new dialog from `source` (an INVITE outside a dialog, not a retransmission, that
    /// passed [`FloodGuard::check`]): false when the source is at its dialog cap (answer
    /// 503; not a violation: a busy trunk can reach it legitimately). When true, call
    /// [`FloodGuard::dialog_ended`] when the dialog ends.
    pub fn open_dialog(&mut self, now: Millis, source: IpAddr) -> bool {
        let (entry, limits) = self.dialog_entry(now, source);
        if entry.dialogs >= limits.max_dialogs {
            return false;
        }
        entry.dialogs += 1;
        true
    }

    /// Counts a dialog that is already open (a call carried over into a new guard after a
    /// reconfiguration), whatever the cap.
    pub fn carry_dialog(&mut self, now: Millis, source: IpAddr) {
        let (entry, _) = self.dialog_entry(now, source);
        entry.dialogs = entry.dialogs.saturating_add(1);
    }

    /// The record of `source` (touched) and its limits.
    fn dialog_entry(&mut self, now: Millis, source: IpAddr) -> (&mut Source, SourceLimits) {
        let source = source.to_canonical();
        let limits = self.cfg.limits_for(source);
        let entry = Self::touch(
            &mut self.sources,
            &mut self.recency,
            &mut self.seq,
            &self.cfg,
            limits,
            now,
            source,
        );
        (entry, limits)
    }

    /// A dialog that [`FloodGuard::open_dialog`] allowed for `source` has ended. A no-op for
    /// a source that was evicted meanwhile.
    pub fn dialog_ended(&mut self, source: IpAddr) {
        if let Some(s) = self.sources.get_mut(&source.to_canonical()) {
            s.dialogs = s.dialogs.saturating_sub(1);
        }
    }

    /// The record of `source`, created (evicting the least recently seen source if full)
    /// and marked most recently seen.
    fn touch<'a>(
        sources: &'a mut HashMap<IpAddr, Source>,
        recency: &mut BTreeMap<u64, IpAddr>,
        seq: &mut u64,
        cfg: &FloodConfig,
        limits: SourceLimits,
        now: Millis,
        source: IpAddr,
    ) -> &'a mut Source {
        *seq += 1;
        let new_seen = *seq;
        if let Some(old) = sources.get(&source).map(|s| s.seen) {
            recency.remove(&old);
        } else {
            while sources.len() >= cfg.max_sources {
                match recency.pop_first() {
                    Some((_, victim)) => {
                        sources.remove(&victim);
                    }
                    None => break,
                }
            }
        }
        recency.insert(new_seen, source);
        let entry = sources.entry(source).or_insert_with(|| Source {
            bucket: TokenBucket::full(limits.burst, now),
            dialogs: 0,
            violations: 0,
            window_start: now,
            blocked_until: Millis(0),
            seen: new_seen,
        });
        entry.seen = new_seen;
        entry
    }
}
