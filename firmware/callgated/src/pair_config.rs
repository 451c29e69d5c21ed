//! Pair-wide config changes: a commit, a rollback or a confirm made on either appliance
//! of a pair takes effect on both, or on neither.
//!
//! The two appliances run one config; only `[appliance] name` differs, and each records
//! the operator's text with its own name ([`callgate_config::for_appliance`]). The
//! appliance the operator talks to coordinates, over the sync channel
//! ([`crate::replica::Replicator::ask_peer`]):
//!
//! ```text
//!  coordinator                                   peer
//!  check (parse, lockout, confirm state)
//!  ── Prepare(text, window) ───────────────────▶ check its copy; hold it (PREPARED_FOR)
//!  ◀─────────────────────────────────── ok / why not   (not ok: nothing changed anywhere)
//!  commit (apply, record; with a window: pending + rollback guard)
//!  ── Commit ──────────────────────────────────▶ commit its copy (same window)
//!  ◀─────────────────────────────────── revision / why not
//!  not ok or no answer: undo the local commit, and ── Abort ──▶ (undoes it there if done)
//! ```
//! - `confirm` confirms the coordinator first (its window closes first), then the peer;
//!   if the peer cannot confirm, the coordinator's commit is undone as well. Unconfirmed,
//!   each appliance rolls back by itself at its own deadline (with its own rollback
//!   guard), so `commit --confirmed` rolls back both even if the two lose each other.
//! - An undo is a new revision whose note says what was taken back and why: the history
//!   stays append-only, and the running config is the one from before.
//! - One pair-wide change at a time: while one is under way (either side), another is
//!   refused on both.
//! - With the peer unreachable a pair-wide change is refused; `--this-node` changes one
//!   appliance alone (said as such in its history).
//!
//! ## Current limitations
//! - The sync link dropping between the peer's commit and its answer leaves the peer
//!   committed and the coordinator undone until someone commits again; `show pair` does
//!   not yet compare the two configs.
//! - The peer's kernel is not asked (`nft --check`) in the first phase: a ruleset that
//!   its kernel refuses is found in the second, and undone on the coordinator.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callgate_config::{for_appliance, Config, EntryName};
use callgate_revisions::{error_chain, CommitOutcome, ConfigService};
use serde::{Deserialize, Serialize};

use crate::replica::Replicator;

/// How long the coordinator waits for the peer's check.
const PREPARE_WAIT: Duration = Duration::from_secs(5);
/// How long the coordinator waits for the peer's commit (an apply and a record).
const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// How long a peer holds a prepared change for the coordinator's `Commit`.
const PREPARED_FOR: Duration = Duration::from_secs(30);
/// The largest config a pair-wide commit carries (JSON-escaped it stays within the sync
/// channel's [`callgate_sync::MAX_MESSAGE_LEN`]).
const MAX_TEXT: usize = 32 << 20;
/// How long the coordinator waits for other steps (abort, confirm).
const STEP_WAIT: Duration = Duration::from_secs(10);

/// A step the coordinator asks of the peer.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Check this text (as the coordinator runs it) and hold it for `Commit`.
    Prepare {
        tx: u64,
        text: String,
        force: bool,
        window_secs: Option<u64>,
        author: String,
        note: String,
    },
    Commit {
        tx: u64,
    },
    /// Drop the prepared change, or undo it if it was committed.
    Abort {
        tx: u64,
        why: String,
    },
    Confirm,
}

/// The config text is not logged (it is long; the history holds it).
impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Prepare {
                tx,
                text,
                window_secs,
                ..
            } => write!(
                f,
                "Prepare({tx}, {} bytes, window {window_secs:?})",
                text.len()
            ),
            Op::Commit { tx } => write!(f, "Commit({tx})"),
            Op::Abort { tx, why } => write!(f, "Abort({tx}, {why})"),
            Op::Confirm => f.write_str("Confirm"),
        }
    }
}

/// The peer's answer: the revision it made or confirmed (if any), or why not.
pub type Answer = Result<Option<u64>, String>;

/// What the peer holds between the phases.
#[derive(Debug, Default)]
enum Slot {
    #[default]
    Free,
    Prepared {
        tx: u64,
        text: String,
        force: bool,
        window: Option<Duration>,
        author: String,
        note: String,
        until: Instant,
    },
    /// Committed as `revision`, replacing `back_to` (what an `Abort` returns to).
    Committed {
        tx: u64,
        revision: u64,
        back_to: u64,
    },
    /// This appliance coordinated a pair-wide `commit confirmed`, made here as `revision`.
    Coordinated { revision: u64 },
}

/// The revision waiting for confirmation here if a pair-wide change made it (`pending`:
/// the revision service's (candidate, previous)); `None` for nothing pending or for a
/// commit made on this appliance alone, which the peer's `Confirm` must not confirm.
fn pair_pending(slot: &Slot, pending: Option<(u64, u64)>) -> Option<u64> {
    let (candidate, _) = pending?;
    match slot {
        Slot::Committed { revision, .. } | Slot::Coordinated { revision }
            if *revision == candidate =>
        {
            Some(candidate)
        }
        _ => None,
    }
}

/// A pair-wide change asked on this appliance.
#[derive(Debug, Clone)]
pub struct Proposal {
    pub text: String,
    pub origin: PathBuf,
    pub force: bool,
    pub window: Option<Duration>,
    pub author: String,
    /// For the history (default `commit`, or `commit confirmed Ns`).
    pub note: Option<String>,
}

/// What a pair-wide commit did on each side.
#[derive(Debug, Clone, Serialize)]
pub struct PairOutcome {
    #[serde(flatten)]
    pub local: CommitOutcome,
    pub peer: String,
    pub peer_revision: Option<u64>,
}

/// This appliance's side of pair-wide changes, as coordinator and as peer.
pub struct PairConfig {
    config: ConfigService,
    /// Held for the whole of a change, on either side: one at a time.
    slot: tokio::sync::Mutex<Slot>,
    next_tx: AtomicU64,
}

impl PairConfig {
    pub fn new(config: ConfigService) -> PairConfig {
        PairConfig {
            config,
            slot: tokio::sync::Mutex::new(Slot::Free),
            next_tx: AtomicU64::new(callgate_revisions::now_ms()),
        }
    }

    fn names(&self) -> Result<(EntryName, EntryName), String> {
        let cfg = self.config.config().borrow().clone();
        names_of(&cfg)
    }

    /// Commits `p` on both appliances, or on neither.
    pub async fn commit(&self, replica: &Replicator, p: Proposal) -> Result<PairOutcome, String> {
        let (me, peer) = self.names()?;
        let Ok(mut busy) = self.slot.try_lock() else {
            return Err("another pair-wide config change is under way; try again".into());
        };
        let nothing = "nothing changed on either appliance";
        if p.text.len() > MAX_TEXT {
            return Err(format!(
                "a config over {} MiB is too large for a pair-wide commit; {nothing}",
                MAX_TEXT >> 20
            ));
        }
        // Phase 1: both check.
        let running = self.config.config().borrow().clone();
        check_same_pair(&running, &p.text).map_err(|e| format!("{e}\n{nothing}"))?;
        self.config
            .check(p.text.clone(), p.origin.clone(), p.force, p.window)
            .await
            .map_err(|e| format!("{}\n{nothing}", error_chain(&e)))?;
        let tx = self.next_tx.fetch_add(1, Ordering::Relaxed);
        let note = p
            .note
            .clone()
            .unwrap_or_else(|| callgate_revisions::commit_note(p.window));
        let prepare = Op::Prepare {
            tx,
            text: p.text.clone(),
            force: p.force,
            window_secs: p.window.map(|w| w.as_secs()),
            author: format!("{}@{me}", p.author),
            note: format!("{note} (pair-wide, from {me})"),
        };
        match replica.ask_peer(prepare, PREPARE_WAIT).await {
            Ok(Ok(_)) => {}
            Ok(Err(why)) => return Err(format!("the peer {peer} refused it: {why}\n{nothing}")),
            Err(why) => {
                self.abort_peer(replica, tx, "the coordinator gave up")
                    .await;
                return Err(format!(
                    "{why} ({peer}); {nothing}.\nTo change this appliance alone, add --this-node"
                ));
            }
        }
        // Phase 2: this side, then the peer.
        let (before, _) = self.config.status().await.map_err(|e| error_chain(&e))?;
        let local = match self
            .config
            .commit_noted(
                p.text,
                p.origin,
                p.force,
                p.window,
                p.author,
                Some(format!("{note} (pair-wide, with {peer})")),
            )
            .await
        {
            Ok(o) => o,
            Err(e) => {
                self.abort_peer(replica, tx, "the coordinator's commit failed")
                    .await;
                return Err(format!("{}\n{nothing}", error_chain(&e)));
            }
        };
        let why = match replica.ask_peer(Op::Commit { tx }, COMMIT_WAIT).await {
            Ok(Ok(peer_revision)) => {
                if p.window.is_some() {
                    *busy = Slot::Coordinated {
                        revision: local.revision,
                    };
                }
                return Ok(PairOutcome {
                    local,
                    peer: peer.to_string(),
                    peer_revision,
                });
            }
            Ok(Err(why)) => format!("the peer {peer} failed to apply it: {why}"),
            Err(why) => format!("{why} ({peer})"),
        };
        // The peer did not commit (or cannot say): take both back.
        self.abort_peer(replica, tx, "the coordinator's commit was undone")
            .await;
        let undone = match before {
            Some(b) => self
                .config
                .undo(local.revision, b, why.clone())
                .await
                .map(|n| format!("revision {} undone as revision {n}", local.revision))
                .map_err(|e| error_chain(&e)),
            None => Err("no earlier revision to return to".into()),
        };
        match undone {
            Ok(u) => Err(format!("{why}\n{u}: {nothing}")),
            Err(e) => Err(format!(
                "{why}\nand revision {} could not be undone here: {e}. The two appliances' configs differ: commit again",
                local.revision
            )),
        }
    }

    /// Confirms the pending commit on both; if the peer cannot, undoes it here too.
    pub async fn confirm(&self, replica: &Replicator) -> Result<(u64, Option<u64>), String> {
        let (_, peer) = self.names()?;
        let Ok(busy) = self.slot.try_lock() else {
            return Err("another pair-wide config change is under way; try again".into());
        };
        let pending = self.config.pending().await.map_err(|e| error_chain(&e))?;
        if pending.is_some() && pair_pending(&busy, pending).is_none() {
            return Err(
                "the commit waiting for confirmation was made on this appliance alone: `callgate confirm --this-node`"
                    .into(),
            );
        }
        let n = self.config.confirm().await.map_err(|e| error_chain(&e))?;
        let why = match replica.ask_peer(Op::Confirm, STEP_WAIT).await {
            Ok(Ok(m)) => return Ok((n, m)),
            Ok(Err(why)) => format!("the peer {peer} could not confirm: {why}"),
            Err(why) => format!("{why} ({peer}): it rolls back at its deadline"),
        };
        let undone = match pending {
            Some((candidate, previous)) if candidate == n => self
                .config
                .undo(n, previous, why.clone())
                .await
                .map(|m| format!("revision {n} confirmed here, then undone as revision {m}"))
                .map_err(|e| error_chain(&e)),
            _ => Err("the confirmed revision is not known".into()),
        };
        Err(match undone {
            Ok(u) => format!("{why}\n{u}: both appliances are back where they were"),
            Err(e) => format!("{why}\nand revision {n} could not be undone here: {e}"),
        })
    }

    async fn abort_peer(&self, replica: &Replicator, tx: u64, why: &str) {
        let op = Op::Abort {
            tx,
            why: why.to_owned(),
        };
        if let Err(e) | Ok(Err(e)) = replica.ask_peer(op, STEP_WAIT).await {
            log::error!("pair config: the peer could not take change {tx} back: {e}");
        }
    }

    /// Carries out a step the peer asked of this appliance.
    pub async fn serve(&self, op: Op, me: &EntryName) -> Answer {
        log::info!("pair config: the peer asks {op:?}");
        let r = self.serve_step(op, me).await;
        if let Err(e) = &r {
            log::warn!("pair config: not done: {e}");
        }
        r
    }

    async fn serve_step(&self, op: Op, me: &EntryName) -> Answer {
        match op {
            Op::Prepare {
                tx,
                text,
                force,
                window_secs,
                author,
                note,
            } => {
                let Ok(mut slot) = self.slot.try_lock() else {
                    return Err(format!(
                        "a pair-wide config change is under way on {me}; try again"
                    ));
                };
                if let Slot::Prepared { until, .. } = &*slot {
                    if Instant::now() < *until {
                        return Err(format!(
                            "another pair-wide config change is prepared on {me}; try again"
                        ));
                    }
                }
                let text = for_appliance(&text, me).map_err(|e| format!("the config text: {e}"))?;
                let window = window_secs.map(Duration::from_secs);
                let running = self.config.config().borrow().clone();
                check_same_pair(&running, &text)?;
                self.config
                    .check(text.clone(), origin(&note), force, window)
                    .await
                    .map_err(|e| error_chain(&e))?;
                *slot = Slot::Prepared {
                    tx,
                    text,
                    force,
                    window,
                    author,
                    note,
                    until: Instant::now() + PREPARED_FOR,
                };
                Ok(None)
            }
            Op::Commit { tx } => {
                let mut slot = self.slot.lock().await;
                let Slot::Prepared {
                    tx: t,
                    text,
                    force,
                    window,
                    author,
                    note,
                    until,
                } = std::mem::take(&mut *slot)
                else {
                    return Err(format!("change {tx} is not prepared on {me}"));
                };
                if t != tx || Instant::now() >= until {
                    return Err(format!("change {tx} is not prepared on {me} (any more)"));
                }
                #[cfg(debug_assertions)]
                if std::env::var_os("CALLGATE_FAULT_PAIR_COMMIT").is_some() {
                    return Err("fault injected (CALLGATE_FAULT_PAIR_COMMIT)".into());
                }
                let (before, _) = self.config.status().await.map_err(|e| error_chain(&e))?;
                let out = self
                    .config
                    .commit_noted(text, origin(&note), force, window, author, Some(note))
                    .await
                    .map_err(|e| error_chain(&e))?;
                if let Some(back_to) = before {
                    *slot = Slot::Committed {
                        tx,
                        revision: out.revision,
                        back_to,
                    };
                }
                Ok(Some(out.revision))
            }
            Op::Abort { tx, why } => {
                let mut slot = self.slot.lock().await;
                match std::mem::take(&mut *slot) {
                    Slot::Prepared { tx: t, .. } if t == tx => Ok(None),
                    Slot::Committed {
                        tx: t,
                        revision,
                        back_to,
                    } if t == tx => self
                        .config
                        .undo(revision, back_to, format!("the peer: {why}"))
                        .await
                        .map(Some)
                        .map_err(|e| error_chain(&e)),
                    other => {
                        *slot = other;
                        Ok(None)
                    }
                }
            }
            Op::Confirm => {
                // Only a commit a pair-wide change made here: never one an admin of this
                // appliance made alone (`--this-node`) and means to let lapse.
                let slot = self.slot.lock().await;
                let pending = self.config.pending().await.map_err(|e| error_chain(&e))?;
                if pair_pending(&slot, pending).is_none() {
                    return Err(format!(
                        "no pair-wide commit is waiting for confirmation on {me}"
                    ));
                }
                self.config
                    .confirm()
                    .await
                    .map(Some)
                    .map_err(|e| error_chain(&e))
            }
        }
    }
}

/// The file name error messages give a peer's candidate.
fn origin(note: &str) -> PathBuf {
    let from = note.rsplit("from ").next().unwrap_or("peer");
    PathBuf::from(format!(
        "pair-commit-from-{}.toml",
        from.trim_end_matches(')')
    ))
}

/// This appliance's name and its peer's, from the running config.
pub fn names_of(cfg: &Config) -> Result<(EntryName, EntryName), String> {
    let me = cfg.appliance.name.clone();
    let pair = cfg.pair.as_ref().ok_or("no [pair] in the running config")?;
    let (_, peer) = pair
        .split(&me)
        .ok_or("this appliance is not a node of [pair]")?;
    Ok((me, peer.name.get_ref().clone()))
}

/// A pair-wide change keeps the pair: the same two appliances (leaving it is `unpair`).
fn check_same_pair(running: &Config, candidate: &str) -> Result<(), String> {
    let (me, peer) = names_of(running)?;
    let cand =
        Config::parse(candidate, &PathBuf::from("candidate.toml")).map_err(|e| e.to_string())?;
    match names_of(&cand) {
        Ok((m, p)) if m == me && p == peer => Ok(()),
        _ => Err(format!(
            "the candidate does not keep {me} and {peer} as the pair; unpair first"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_reads_back_as_written_and_never_logs_the_text() {
        let ops = [
            Op::Prepare {
                tx: 1,
                text: "secret text".into(),
                force: false,
                window_secs: Some(60),
                author: "ann@lab-a".into(),
                note: "commit (pair-wide, from lab-a)".into(),
            },
            Op::Commit { tx: 1 },
            Op::Abort {
                tx: 1,
                why: "x".into(),
            },
            Op::Confirm,
        ];
        for op in ops {
            let s = serde_json::to_string(&op).unwrap();
            assert_eq!(serde_json::from_str::<Op>(&s).unwrap(), op);
            assert!(!format!("{op:?}").contains("secret"));
        }
        let a: Answer = Err("no".into());
        let s = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Answer>(&s).unwrap(), a);
    }

    /// The peer's `Confirm` confirms only what a pair-wide change left waiting here.
    #[test]
    fn a_peer_confirms_only_a_pair_wide_commit() {
        let theirs = Slot::Committed {
            tx: 9,
            revision: 12,
            back_to: 11,
        };
        let ours = Slot::Coordinated { revision: 12 };
        assert_eq!(pair_pending(&theirs, Some((12, 11))), Some(12));
        assert_eq!(pair_pending(&ours, Some((12, 11))), Some(12));
        // Nothing pending, or a later commit made on this appliance alone.
        assert_eq!(pair_pending(&theirs, None), None);
        assert_eq!(pair_pending(&theirs, Some((13, 12))), None);
        assert_eq!(pair_pending(&ours, Some((14, 13))), None);
        assert_eq!(pair_pending(&Slot::Free, Some((12, 11))), None);
    }

    #[test]
    fn the_candidate_must_keep_the_pair() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
        let a = std::fs::read_to_string(root.join("lab-pair-a.toml")).unwrap();
        let b = std::fs::read_to_string(root.join("lab-pair-b.toml")).unwrap();
        let running_b = Config::parse(&b, std::path::Path::new("b.toml")).unwrap();
        let lab_b: EntryName = "lab-b".parse().unwrap();
        let as_b = for_appliance(&a, &lab_b).unwrap();
        check_same_pair(&running_b, &as_b).unwrap();
        let other = as_b.replace("name = \"lab-a\"", "name = \"lab-x\"");
        assert!(check_same_pair(&running_b, &other).is_err());
        assert_eq!(
            origin("commit (pair-wide, from lab-a)"),
            PathBuf::from("pair-commit-from-lab-a.toml")
        );
    }
}
