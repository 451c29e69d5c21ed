//! # callgate-firewall
//!
//! Renders a config into the one nftables table callgate owns (`inet callgate`), applies it
//! atomically, reads it back and verifies it, reports counters, and writes media pinholes and
//! blocklist entries into timeout sets over netlink.
//!
//! ## Design
//! - [`mod@render`] is pure: config → [`model::Ruleset`] (sets, chains, named rules). Every rule
//!   carries a counter and a comment: the allowlist entry's name, `service:NAME`,
//!   `builtin:…` or `default-drop`.
//! - [`nft`] turns a ruleset into one JSON transaction built with the `nftables` crate and
//!   feeds it to `nft -j -f -`, keeping nft's own error text. The transaction flushes and
//!   refills every config-owned set, so a removed prefix is really gone, while the run-time
//!   sets (pinholes, blocklist) keep their contents across commits (unless a set's type
//!   changes: it is then re-created empty).
//! - Media pinholes ([`Pinhole`]) are elements of `pinhole4_host` / `pinhole6_host` (hash
//!   sets, for a source that is one address) or `pinhole4` / `pinhole6` (interval sets, for
//!   a source prefix), keyed `source . destination . protocol . port` and matched in the
//!   forward chain only: a pinhole admits its one flow through the appliance, never to it.
//!   A box upgraded from the layout with only `pinhole4` / `pinhole6` keeps them and their
//!   elements; the first apply that adds the hash sets moves the one-address pinholes there
//!   ([`netlink::move_host_pinholes`]), so no call in progress loses media.
//! - After applying, [`Firewall::apply`] reads back only our table over netlink
//!   ([`readback`], one snapshot of the table) and compares chains, policies, rules (in
//!   order: comment, verdict, and what each matches, see [`mod@matches`]), set types and set
//!   contents (in full up to 8192 intervals, by sampled point lookups and a check that
//!   every removed interval is gone beyond that). [`nft::observe`] and [`nft::diff`] do the
//!   same comparison from `nft -j list table` output. Each difference names the chain, the
//!   rule's position and comment, and what differs.
//! - [`netlink`] writes pinholes and blocklist entries straight over `NETLINK_NETFILTER`
//!   (no process spawn, no libnftnl), so the daemon stays a static musl binary.
//! - [`task`] is the long-lived component: a handle plus a dedicated thread (nft and netlink
//!   calls block), commands in over mpsc, state out over watch.
//! - Drift (the kernel's table no longer what was applied, e.g. a rule edited through
//!   `nft`) is checked at apply, at `callgate show firewall` ([`FirewallHandle::report`]:
//!   counters and differences from one snapshot, [`Firewall::inspect`]), and `callgate
//!   status` shows the last of those checks ([`FirewallState::verification`]).
//!
//! ## Fail closed
//! The kernel enforces; the daemon decides. Every base chain has a drop policy, so if the
//! daemon dies the last applied ruleset keeps enforcing. A failed transaction changes
//! nothing (nft applies all or nothing).
//!
//! ## Current limitations
//! - Nothing re-verifies periodically: drift made between two checks (apply, `show
//!   firewall`) is seen at the next one, and `status` reports the last check, not a new one.
//! - What a rule matches is compared in a normal form ([`mod@matches`]) that names the fields
//!   and values the renderer uses; other fields read as raw payload offsets. nft's JSON
//!   hides the dependencies nft adds (`meta nfproto ipv4` before `ip saddr`), so only the
//!   netlink path, the one [`Firewall::verify`] uses, sees one go missing.

pub mod matches;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod readback;
pub mod render;
pub mod task;

use std::time::Instant;

pub use model::Ruleset;
pub use netlink::{NetlinkError, Pinhole, PinholeChange, PinholeProto, SetWriter};
pub use nft::Nft;
pub use render::{render, render_baseline};
pub use task::{error_chain, FirewallHandle, FirewallReport, FirewallState, Verification};

/// Errors of the firewall crate.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft {args} failed (exit {status}): {stderr}")]
    Nft {
        args: String,
        status: i32,
        stderr: String,
    },
    #[error("cannot encode the ruleset: {0}")]
    Encode(String),
    #[error("read-back failed: {0}")]
    Readback(String),
    #[error("the kernel's table differs from what was applied: {}", .0.join("; "))]
    Mismatch(Vec<String>),
    #[error("pinhole or blocklist write failed")]
    Netlink(#[from] NetlinkError),
    #[error("the firewall task has stopped")]
    Stopped,
}

/// Counters of one named rule group (all rules sharing a comment in one chain).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryCounters {
    pub chain: String,
    pub name: String,
    pub rules: usize,
    pub packets: u64,
    pub bytes: u64,
}

/// Timing of one apply, for logs and the benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyReport {
    pub elements: usize,
    pub apply_ms: f64,
    pub verify_ms: f64,
}

/// Applies rulesets to the kernel and reads them back.
#[derive(Debug, Clone, Default)]
pub struct Firewall {
    pub nft: Nft,
}

impl Firewall {
    pub fn new(nft: Nft) -> Self {
        Firewall { nft }
    }

    /// Applies `rs` atomically, then verifies the kernel holds exactly it. `previous` is the
    /// ruleset this replaces, when known: elements it had and `rs` has not are checked to be
    /// gone. Runs in the calling thread's network namespace (nft inherits it, the netlink
    /// read-back uses it).
    pub fn apply(
        &self,
        rs: &Ruleset,
        previous: Option<&Ruleset>,
    ) -> Result<ApplyReport, FirewallError> {
        let t0 = Instant::now();
        let existing = readback::existing_for(model::TABLE, rs)?;
        self.nft.apply(&nft::transaction(rs, &existing))?;
        if upgrades_pinholes(rs, &existing) {
            // Failure is not the apply's: every pinhole left behind still passes its flow,
            // only its close waits for its old timeout.
            match netlink::move_host_pinholes(model::TABLE) {
                Ok(n) => log::info!(
                    "firewall: moved {n} one-address pinholes to the hash sets (upgrade)"
                ),
                Err(e) => log::warn!(
                    "firewall: cannot move one-address pinholes to the hash sets: {}",
                    error_chain(&FirewallError::from(e))
                ),
            }
        }
        let t1 = Instant::now();
        self.verify(rs, previous)?;
        let t2 = Instant::now();
        Ok(ApplyReport {
            elements: rs.element_count(),
            apply_ms: (t1 - t0).as_secs_f64() * 1e3,
            verify_ms: (t2 - t1).as_secs_f64() * 1e3,
        })
    }

    /// Reads back our table and compares it with `rs`.
    pub fn verify(&self, rs: &Ruleset, previous: Option<&Ruleset>) -> Result<(), FirewallError> {
        let diffs = self.drift(rs, previous)?;
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(FirewallError::Mismatch(diffs))
        }
    }

    /// Reads back our table and lists how it differs from `rs` (empty: in sync). Each
    /// difference names the chain, the rule's position and comment, and what differs.
    pub fn drift(
        &self,
        rs: &Ruleset,
        previous: Option<&Ruleset>,
    ) -> Result<Vec<String>, FirewallError> {
        table_missing_is_drift(readback::verify(model::TABLE, rs, previous))
    }

    /// Per-entry counters, summed over the rules that carry the same comment in a chain.
    pub fn counters(&self) -> Result<Vec<EntryCounters>, FirewallError> {
        match readback::observe(model::TABLE) {
            Ok(o) => Ok(counters_of(&o)),
            Err(NetlinkError::SetMissing { .. }) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Firewall::counters`] and [`Firewall::drift`] against `applied` (no drift when
    /// `None`), from one snapshot of the table, so both describe the same kernel state.
    pub fn inspect(&self, applied: Option<&Ruleset>) -> Result<Inspection, FirewallError> {
        let observed = match readback::observe(model::TABLE) {
            Ok(o) => o,
            Err(NetlinkError::SetMissing { .. }) => {
                return Ok(Inspection {
                    entries: Vec::new(),
                    drift: applied
                        .map(|_| vec![MISSING.to_owned()])
                        .unwrap_or_default(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let drift = match applied {
            Some(rs) => table_missing_is_drift(readback::verify_observed(
                model::TABLE,
                rs,
                None,
                &observed,
            ))?,
            None => Vec::new(),
        };
        Ok(Inspection {
            entries: counters_of(&observed),
            drift,
        })
    }
}

/// True when applying `rs` over `existing` adds the hash pinhole sets next to interval
/// pinhole sets that were there (a box upgraded from the layout with one pinhole set per
/// family): their one-address pinholes are then moved ([`netlink::move_host_pinholes`]).
fn upgrades_pinholes(rs: &Ruleset, existing: &nft::Existing) -> bool {
    [
        (model::PINHOLE4, model::PINHOLE4_HOST),
        (model::PINHOLE6, model::PINHOLE6_HOST),
    ]
    .iter()
    .any(|(net, host)| {
        rs.set(host).is_some()
            && !existing.sets.contains(*host)
            && existing.sets.contains(*net)
            && !existing.reshaped.contains(*net)
    })
}

/// What [`Firewall::inspect`] read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    /// Per-entry counters ([`Firewall::counters`]).
    pub entries: Vec<EntryCounters>,
    /// How the kernel's table differs from the applied ruleset; empty when in sync.
    pub drift: Vec<String>,
}

const MISSING: &str = "table inet callgate is missing";

/// A table (or set) that vanished during the read-back is a difference, not a failure.
fn table_missing_is_drift(
    r: Result<Vec<String>, NetlinkError>,
) -> Result<Vec<String>, FirewallError> {
    match r {
        Ok(d) => Ok(d),
        Err(NetlinkError::SetMissing { .. }) => Ok(vec![MISSING.to_owned()]),
        Err(e) => Err(e.into()),
    }
}

/// Per-entry counters of an observed table, in chain order.
fn counters_of(o: &nft::Observed) -> Vec<EntryCounters> {
    let mut out: Vec<EntryCounters> = Vec::new();
    for chain in ["input", "forward", "output", render::ALLOW_DST_CHAIN] {
        for r in o.rules.get(chain).into_iter().flatten() {
            match out
                .iter_mut()
                .find(|c| c.chain == chain && c.name == r.comment)
            {
                Some(c) => {
                    c.rules += 1;
                    c.packets += r.packets;
                    c.bytes += r.bytes;
                }
                None => out.push(EntryCounters {
                    chain: chain.to_owned(),
                    name: r.comment.clone(),
                    rules: 1,
                    packets: r.packets,
                    bytes: r.bytes,
                }),
            }
        }
    }
    out
}
