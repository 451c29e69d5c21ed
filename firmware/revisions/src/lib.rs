//! # callgate-revisions
//!
//! Config changes as transactions: numbered revisions, atomic commit of config + firewall,
//! `commit --confirmed` that rolls back by itself, `rollback N`, `compare N M`, history.
//!
//! ## Design
//! - [`store`] keeps revisions, the active pointer and the pending-confirm record on disk,
//!   each written atomically.
//! - [`confirm`] is the commit-confirm timer as a pure state machine (time passed in).
//! - [`Revisions`] performs the operations synchronously against an [`Applier`] (the
//!   firewall), so the daemon's config thread and the out-of-process rollback guard run the
//!   very same code.
//! - [`ConfigService`] is the long-lived component: a handle plus a thread that owns the
//!   running config, publishes it on a `watch`, and wakes at the confirm deadline.
//!
//! ## Surviving SIGKILL during a confirm window
//! Before a confirmed commit is applied, `pending.json` is written and a detached guard
//! process (`callgated rollback-guard`) is started in its own session. Whoever comes first
//! after the deadline — the daemon's timer, the guard, or the daemon's next boot — claims
//! `pending.json` by renaming it (exactly one claimant wins) and rolls back. A `confirm`
//! claims it the same way.

pub mod confirm;
mod encrypted;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use callgate_config::{Config, ConfigError, ConfigErrors};
pub use callgate_firewall::error_chain;
use callgate_firewall::{render, Ruleset};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

pub use encrypted::StoreHistory;
pub use store::{FileHistory, GuardRollback, History, Pending, Revision, Store};

#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: corrupt record: {1}")]
    Corrupt(PathBuf, String),
    #[error("cannot read the config file {path}")]
    ConfigFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no revision {0}")]
    NoSuchRevision(u64),
    #[error("the config history is locked (the record keys are not available)")]
    NoHistory,
    #[error("the encrypted store failed: {0}")]
    Store(String),
    #[error("the config is invalid:\n{0}")]
    Invalid(ConfigErrors),
    #[error("{0}")]
    Lockout(ConfigError),
    #[error("refused: {0}")]
    Refused(&'static str),
    #[error("the firewall refused the ruleset; nothing changed: {0}")]
    Apply(String),
    #[error("the config service has stopped")]
    Stopped,
}

impl RevisionError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        RevisionError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Applies a rendered ruleset to the kernel (the firewall component, or nft directly).
pub trait Applier {
    fn apply(&self, ruleset: &Ruleset, generation: u64) -> Result<(), String>;
}

/// Starts the out-of-process guard for a pending confirm.
pub type GuardSpawner = Box<dyn Fn(&Pending) -> std::io::Result<()> + Send>;

/// A config change to commit.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub text: &'a str,
    /// File name for error locations.
    pub origin: &'a Path,
    /// Override the management lockout guard.
    pub force: bool,
    /// `commit --confirmed`: roll back unless confirmed within this window.
    pub window: Option<Duration>,
    pub author: &'a str,
    /// Recorded in the history (`commit`, `rollback to 3`, …).
    pub note: &'a str,
}

/// The result of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitOutcome {
    pub revision: u64,
    /// Set for `commit --confirmed`: when it rolls back unless confirmed (unix ms).
    pub confirm_deadline_ms: Option<u64>,
}

/// One line of `show history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub number: u64,
    pub time_ms: u64,
    pub author: String,
    pub note: String,
    pub active: bool,
    pub pending: bool,
}

/// The history's note for a commit: `commit`, or `commit confirmed Ns`.
pub fn commit_note(window: Option<Duration>) -> String {
    match window {
        Some(w) => format!("commit confirmed {}s", w.as_secs()),
        None => "commit".to_owned(),
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A commit that passed [`Revisions::admit`].
struct Admitted {
    cfg: Config,
    previous: u64,
    candidate: u64,
    /// The confirm window it opens (previous text not yet filled in).
    window: Option<Pending>,
}

/// Synchronous operations on the revision store and the running config.
pub struct Revisions {
    pub store: Store,
    /// The config file that always holds the running config's text.
    pub config_path: PathBuf,
    guard: Option<GuardSpawner>,
}

impl std::fmt::Debug for Revisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revisions")
            .field("store", &self.store)
            .field("config_path", &self.config_path)
            .finish()
    }
}

/// Parses config text; the lockout guard applies unless `force`.
pub fn validate(text: &str, origin: &Path, force: bool) -> Result<Config, RevisionError> {
    let cfg = Config::parse(text, origin).map_err(RevisionError::Invalid)?;
    if !force {
        cfg.lockout_check(origin, text)
            .map_err(RevisionError::Lockout)?;
    }
    Ok(cfg)
}

impl Revisions {
    /// `history` is `None` only for the rollback guard, which has no keys.
    pub fn new(
        state_dir: &Path,
        config_path: &Path,
        history: Option<Box<dyn History>>,
        guard: Option<GuardSpawner>,
    ) -> Result<Self, RevisionError> {
        Ok(Revisions {
            store: Store::open(state_dir, history)?,
            config_path: config_path.to_path_buf(),
            guard,
        })
    }

    fn write_config_file(&self, text: &str) -> Result<(), RevisionError> {
        store::write_atomic(&self.config_path, text.as_bytes())
            .map_err(|e| RevisionError::io(&self.config_path, e))
    }

    /// Makes `text` (revision `number`) the running config (used by rollback paths).
    fn activate(
        &self,
        text: &str,
        number: u64,
        applier: &dyn Applier,
    ) -> Result<Config, RevisionError> {
        // A stored revision was valid when committed; force skips only the lockout guard,
        // which that commit already passed or overrode.
        let cfg = validate(text, &self.config_path, true)?;
        applier
            .apply(&render(&cfg), number)
            .map_err(RevisionError::Apply)?;
        self.write_config_file(text)?;
        self.store.set_active(number)?;
        Ok(cfg)
    }

    /// Rolls back a pending confirmed commit whose window has closed. Returns the config now
    /// in force when it did.
    pub fn rollback_if_due(
        &self,
        now: u64,
        applier: &dyn Applier,
    ) -> Result<Option<Config>, RevisionError> {
        let pending = self.store.pending()?;
        match confirm::step(pending.as_ref(), confirm::Event::Tick, now) {
            confirm::Action::RollBack(_) => {}
            _ => return Ok(None),
        }
        let Some(p) = self.store.claim_pending()? else {
            return Ok(None); // someone else claimed it first
        };
        let note = format!(
            "automatic rollback to {} (commit {} was not confirmed)",
            p.previous, p.candidate
        );
        let cfg = if self.store.has_history() {
            let rev = self
                .store
                .append("callgated", &note, &p.previous_text, now)?;
            self.activate(&rev.text, rev.number, applier)?
        } else {
            // The guard: no keys, so no history; the daemon records it at its next start.
            let cfg = self.activate(&p.previous_text, p.previous, applier)?;
            self.store.set_guard_rollback(&GuardRollback {
                previous: p.previous,
                candidate: p.candidate,
                time_ms: now,
            })?;
            cfg
        };
        log::warn!("{note}");
        Ok(Some(cfg))
    }

    /// At daemon start: settle an expired confirm window, then make the config file the
    /// running config (recording it as a revision if it is new) and apply it.
    pub fn boot(&self, applier: &dyn Applier) -> Result<Config, RevisionError> {
        let now = now_ms();
        if let Some(cfg) = self.rollback_if_due(now, applier)? {
            return Ok(cfg);
        }
        let text = std::fs::read_to_string(&self.config_path).map_err(|source| {
            RevisionError::ConfigFile {
                path: self.config_path.clone(),
                source,
            }
        })?;
        let cfg = validate(&text, &self.config_path, true)?;
        if let Some(g) = self.store.guard_rollback()? {
            let note = format!(
                "automatic rollback to {} (commit {} was not confirmed; by the rollback guard)",
                g.previous, g.candidate
            );
            let rev = self.store.append("callgated", &note, &text, g.time_ms)?;
            self.store.set_active(rev.number)?;
            self.store.clear_guard_rollback()?;
        }
        let active = match self.store.active()? {
            Some(n) => Some(self.store.get(n)?),
            None => None,
        };
        let number = match active {
            Some(rev) if rev.text == text => rev.number,
            Some(_) => {
                self.store
                    .append(
                        "callgated",
                        "boot: config file edited outside callgate",
                        &text,
                        now,
                    )?
                    .number
            }
            None => {
                self.store
                    .append("callgated", "boot: initial config", &text, now)?
                    .number
            }
        };
        applier
            .apply(&render(&cfg), number)
            .map_err(RevisionError::Apply)?;
        self.store.set_active(number)?;
        Ok(cfg)
    }

    /// Validates, applies and records `text`. Nothing changes unless every step succeeds.
    pub fn commit(
        &self,
        c: &Change<'_>,
        applier: &dyn Applier,
    ) -> Result<(Config, CommitOutcome), RevisionError> {
        let Change {
            text,
            origin,
            force,
            window,
            author,
            note,
        } = *c;
        let now = now_ms();
        let t0 = std::time::Instant::now();
        let Admitted {
            cfg,
            previous,
            candidate,
            window: deadline,
        } = self.admit(text, origin, force, window, now)?;
        let t_parse = t0.elapsed();
        let deadline = match deadline {
            Some(mut p) => {
                p.previous_text = self.store.get(previous)?.text;
                Some(p)
            }
            None => None,
        };
        let ruleset = render(&cfg);
        let t_render = t0.elapsed();
        // Pending first: a crash anywhere after this point still ends in a rollback.
        if let Some(p) = &deadline {
            self.store.set_pending(p)?;
            if let Some(spawn) = &self.guard {
                if let Err(e) = spawn(p) {
                    let _ = self.store.claim_pending();
                    return Err(RevisionError::io(Path::new("rollback-guard"), e));
                }
            }
        }
        if let Err(e) = applier.apply(&ruleset, candidate) {
            if deadline.is_some() {
                let _ = self.store.claim_pending();
            }
            // nft applies all or nothing, so normally nothing changed. If the transaction went
            // in but the read-back disagreed, the kernel holds something unrecorded: put the
            // running revision back so kernel, history and config file agree again.
            if previous != 0 {
                let restored = self
                    .store
                    .get(previous)
                    .and_then(|rev| validate(&rev.text, &self.config_path, true))
                    .map_err(|e| error_chain(&e))
                    .and_then(|cfg| applier.apply(&render(&cfg), previous));
                if let Err(again) = restored {
                    log::error!(
                        "could not re-apply revision {previous} after a failed commit: {again}"
                    );
                }
            }
            return Err(RevisionError::Apply(e));
        }
        let t_apply = t0.elapsed();
        let rev = self.store.append(author, note, text, now)?;
        let t_record = t0.elapsed();
        self.write_config_file(text)?;
        self.store.set_active(rev.number)?;
        log::debug!(
            "commit {}: parse {:?}, render {:?}, apply {:?}, record {:?}, total {:?}",
            rev.number,
            t_parse,
            t_render - t_parse,
            t_apply - t_render,
            t_record - t_apply,
            t0.elapsed()
        );
        Ok((
            cfg,
            CommitOutcome {
                revision: rev.number,
                confirm_deadline_ms: deadline.map(|p| p.deadline_ms),
            },
        ))
    }

    /// The lockout guard's second half: a config that leaves no admin account where the
    /// running revision `previous` has one is refused.
    fn keeps_an_admin(
        &self,
        cfg: &Config,
        previous: u64,
        origin: &Path,
        text: &str,
    ) -> Result<(), RevisionError> {
        if previous == 0 || cfg.has_admin() {
            return Ok(());
        }
        let running = validate(&self.store.get(previous)?.text, &self.config_path, true)?;
        cfg.lockout_against(&running, origin, text)
            .map_err(RevisionError::Lockout)
    }

    /// Everything [`Revisions::commit`] would refuse `text` for, without changing
    /// anything: the first phase of a pair-wide commit.
    pub fn check(
        &self,
        text: &str,
        origin: &Path,
        force: bool,
        window: Option<Duration>,
    ) -> Result<(), RevisionError> {
        self.admit(text, origin, force, window, now_ms())
            .map(|_| ())
    }

    /// What a commit of `text` checks before it changes anything: the config is valid,
    /// keeps the management path and an admin (unless `force`), and the confirm state lets
    /// it in. The window record it would open comes without the previous text.
    fn admit(
        &self,
        text: &str,
        origin: &Path,
        force: bool,
        window: Option<Duration>,
        now: u64,
    ) -> Result<Admitted, RevisionError> {
        let cfg = validate(text, origin, force)?;
        let previous = self.store.active()?.unwrap_or(0);
        if !force {
            self.keeps_an_admin(&cfg, previous, origin, text)?;
        }
        let candidate = self.store.last()? + 1;
        let event = confirm::Event::Commit {
            previous,
            candidate,
            window,
        };
        let window = match confirm::step(self.store.pending()?.as_ref(), event, now) {
            confirm::Action::Apply => None,
            confirm::Action::ApplyWithWindow(_) if previous == 0 => {
                return Err(RevisionError::Refused(
                    "no earlier revision to roll back to",
                ))
            }
            confirm::Action::ApplyWithWindow(p) => Some(p),
            confirm::Action::Refuse(why) => return Err(RevisionError::Refused(why)),
            confirm::Action::RollBack(_) => {
                return Err(RevisionError::Refused(
                    "a confirm window has just closed and is rolling back; try again",
                ))
            }
            _ => return Err(RevisionError::Refused("unexpected state")),
        };
        Ok(Admitted {
            cfg,
            previous,
            candidate,
            window,
        })
    }

    /// Takes back commit `revision` at once (its pair-wide twin failed): the text of
    /// `back_to` (the revision it replaced) runs again, as a new revision that says why.
    /// Refused when `revision` is no longer the running (or pending) one.
    pub fn undo(
        &self,
        revision: u64,
        back_to: u64,
        why: &str,
        applier: &dyn Applier,
    ) -> Result<(Config, u64), RevisionError> {
        let note = format!("rollback to {back_to} (commit {revision} undone: {why})");
        let now = now_ms();
        if let Some(p) = self.store.pending()? {
            if p.candidate != revision {
                return Err(RevisionError::Refused("another commit is awaiting confirm"));
            }
            let Some(p) = self.store.claim_pending()? else {
                return Err(RevisionError::Refused(
                    "the commit was rolled back meanwhile",
                ));
            };
            let rev = self
                .store
                .append("callgated", &note, &p.previous_text, now)?;
            let cfg = self.activate(&rev.text, rev.number, applier)?;
            log::warn!("{note}");
            return Ok((cfg, rev.number));
        }
        if self.store.active()? != Some(revision) {
            return Err(RevisionError::Refused(
                "the commit to undo is no longer the running revision",
            ));
        }
        let text = self.store.get(back_to)?.text;
        let change = Change {
            text: &text,
            origin: &self.config_path,
            force: true,
            window: None,
            author: "callgated",
            note: &note,
        };
        let (cfg, out) = self.commit(&change, applier)?;
        log::warn!("{note}");
        Ok((cfg, out.revision))
    }

    /// Makes a pending confirmed commit permanent.
    pub fn confirm(&self, applier: &dyn Applier) -> Result<ConfirmOutcome, RevisionError> {
        let pending = self.store.pending()?;
        match confirm::step(pending.as_ref(), confirm::Event::Confirm, now_ms()) {
            confirm::Action::Confirmed(_) => match self.store.claim_pending()? {
                Some(p) => Ok(ConfirmOutcome::Confirmed(p.candidate)),
                None => Err(RevisionError::Refused(
                    "too late: the commit was rolled back",
                )),
            },
            confirm::Action::RollBack(_) => {
                let cfg = self.rollback_if_due(now_ms(), applier)?;
                Ok(ConfirmOutcome::RolledBack(cfg.map(Box::new)))
            }
            confirm::Action::Refuse(why) => Err(RevisionError::Refused(why)),
            _ => Err(RevisionError::Refused("unexpected state")),
        }
    }

    pub fn history(&self) -> Result<Vec<HistoryEntry>, RevisionError> {
        let active = self.store.active()?;
        let pending = self.store.pending()?.map(|p| p.candidate);
        self.store
            .numbers()?
            .into_iter()
            .map(|n| {
                let r = self.store.get(n)?;
                Ok(HistoryEntry {
                    number: r.number,
                    time_ms: r.time_ms,
                    author: r.author,
                    note: r.note,
                    active: Some(n) == active,
                    pending: Some(n) == pending,
                })
            })
            .collect()
    }

    /// Unified diff from revision `a` to revision `b`.
    pub fn compare(&self, a: u64, b: u64) -> Result<String, RevisionError> {
        let ra = self.store.get(a)?;
        let rb = self.store.get(b)?;
        Ok(similar::TextDiff::from_lines(&ra.text, &rb.text)
            .unified_diff()
            .context_radius(3)
            .header(&format!("revision {a}"), &format!("revision {b}"))
            .to_string())
    }
}

/// The outcome of `confirm`.
#[derive(Debug)]
pub enum ConfirmOutcome {
    Confirmed(u64),
    /// The window had closed; the rollback has happened (config now in force, if it ran).
    RolledBack(Option<Box<Config>>),
}

// ---------------------------------------------------------------------------------------
// The long-lived component.

type Reply<T> = oneshot::Sender<Result<T, RevisionError>>;

#[derive(Debug)]
enum Command {
    Commit {
        text: String,
        origin: PathBuf,
        force: bool,
        window: Option<Duration>,
        author: String,
        note: Option<String>,
        reply: Reply<CommitOutcome>,
    },
    Check {
        text: String,
        origin: PathBuf,
        force: bool,
        window: Option<Duration>,
        reply: Reply<()>,
    },
    Undo {
        revision: u64,
        back_to: u64,
        why: String,
        reply: Reply<u64>,
    },
    Revision {
        number: u64,
        reply: Reply<String>,
    },
    Rollback {
        number: u64,
        force: bool,
        author: String,
        reply: Reply<CommitOutcome>,
    },
    Confirm {
        reply: Reply<u64>,
    },
    History {
        reply: Reply<Vec<HistoryEntry>>,
    },
    Compare {
        a: u64,
        b: u64,
        reply: Reply<String>,
    },
    ShowConfig {
        reply: Reply<(u64, String)>,
    },
    Status {
        reply: Reply<(Option<u64>, Option<u64>)>,
    },
    Pending {
        reply: Reply<Option<(u64, u64)>>,
    },
    Stop,
}

/// Handle to the config thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConfigService {
    tx: std::sync::mpsc::Sender<Command>,
    config: watch::Receiver<Arc<Config>>,
}

impl ConfigService {
    /// Starts the config thread with the already booted config.
    pub fn spawn(
        revs: Revisions,
        booted: Config,
        applier: Box<dyn Applier + Send>,
    ) -> std::io::Result<(ConfigService, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (cfg_tx, config) = watch::channel(Arc::new(booted));
        let join = std::thread::Builder::new()
            .name("config".into())
            .spawn(move || run(revs, applier, rx, cfg_tx))?;
        Ok((ConfigService { tx, config }, join))
    }

    pub fn config(&self) -> watch::Receiver<Arc<Config>> {
        self.config.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, RevisionError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| RevisionError::Stopped)?;
        rx.await.map_err(|_| RevisionError::Stopped)?
    }

    pub async fn commit(
        &self,
        text: String,
        origin: PathBuf,
        force: bool,
        window: Option<Duration>,
        author: String,
    ) -> Result<CommitOutcome, RevisionError> {
        self.commit_noted(text, origin, force, window, author, None)
            .await
    }

    /// A commit whose history entry says `note` (default: `commit`, or `commit confirmed
    /// Ns`).
    pub async fn commit_noted(
        &self,
        text: String,
        origin: PathBuf,
        force: bool,
        window: Option<Duration>,
        author: String,
        note: Option<String>,
    ) -> Result<CommitOutcome, RevisionError> {
        self.call(|reply| Command::Commit {
            text,
            origin,
            force,
            window,
            author,
            note,
            reply,
        })
        .await
    }

    /// Whether a commit of `text` would be refused, changing nothing ([`Revisions::check`]).
    pub async fn check(
        &self,
        text: String,
        origin: PathBuf,
        force: bool,
        window: Option<Duration>,
    ) -> Result<(), RevisionError> {
        self.call(|reply| Command::Check {
            text,
            origin,
            force,
            window,
            reply,
        })
        .await
    }

    /// [`Revisions::undo`]; the new revision's number.
    pub async fn undo(
        &self,
        revision: u64,
        back_to: u64,
        why: String,
    ) -> Result<u64, RevisionError> {
        self.call(|reply| Command::Undo {
            revision,
            back_to,
            why,
            reply,
        })
        .await
    }

    /// The text of revision `number`.
    pub async fn revision(&self, number: u64) -> Result<String, RevisionError> {
        self.call(|reply| Command::Revision { number, reply }).await
    }

    pub async fn rollback(
        &self,
        number: u64,
        force: bool,
        author: String,
    ) -> Result<CommitOutcome, RevisionError> {
        self.call(|reply| Command::Rollback {
            number,
            force,
            author,
            reply,
        })
        .await
    }

    pub async fn confirm(&self) -> Result<u64, RevisionError> {
        self.call(|reply| Command::Confirm { reply }).await
    }

    pub async fn history(&self) -> Result<Vec<HistoryEntry>, RevisionError> {
        self.call(|reply| Command::History { reply }).await
    }

    pub async fn compare(&self, a: u64, b: u64) -> Result<String, RevisionError> {
        self.call(|reply| Command::Compare { a, b, reply }).await
    }

    /// The active revision number and its text.
    pub async fn show_config(&self) -> Result<(u64, String), RevisionError> {
        self.call(|reply| Command::ShowConfig { reply }).await
    }

    /// The active revision and the one awaiting `confirm`, if any: read from the small
    /// plain records, without decrypting the history.
    pub async fn status(&self) -> Result<(Option<u64>, Option<u64>), RevisionError> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// Ends the config thread after the command in hand (handles may outlive the daemon's
    /// components; their calls then fail with [`RevisionError::Stopped`]).
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }

    /// The commit awaiting `confirm`, if any: its revision and the one it rolls back to.
    pub async fn pending(&self) -> Result<Option<(u64, u64)>, RevisionError> {
        self.call(|reply| Command::Pending { reply }).await
    }
}

fn run(
    revs: Revisions,
    applier: Box<dyn Applier + Send>,
    rx: std::sync::mpsc::Receiver<Command>,
    cfg_tx: watch::Sender<Arc<Config>>,
) {
    let publish = |cfg: Config| {
        cfg_tx.send_replace(Arc::new(cfg));
    };
    loop {
        let wait = match revs.store.pending() {
            Ok(Some(p)) => Duration::from_millis(p.deadline_ms.saturating_sub(now_ms())),
            _ => Duration::from_secs(3600),
        };
        let cmd = match rx.recv_timeout(wait) {
            Ok(c) => Some(c),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // The deadline is checked before every command as well as on timeout.
        match revs.rollback_if_due(now_ms(), applier.as_ref()) {
            Ok(Some(cfg)) => publish(cfg),
            Ok(None) => {}
            Err(e) => log::error!("automatic rollback failed: {}", error_chain(&e)),
        }
        let Some(cmd) = cmd else { continue };
        match cmd {
            Command::Stop => return,
            Command::Commit {
                text,
                origin,
                force,
                window,
                author,
                note,
                reply,
            } => {
                let note = note.unwrap_or_else(|| commit_note(window));
                let change = Change {
                    text: &text,
                    origin: &origin,
                    force,
                    window,
                    author: &author,
                    note: &note,
                };
                let r = revs.commit(&change, applier.as_ref());
                let _ = reply.send(r.map(|(cfg, out)| {
                    publish(cfg);
                    out
                }));
            }
            Command::Rollback {
                number,
                force,
                author,
                reply,
            } => {
                let r = revs.store.get(number).and_then(|rev| {
                    let note = format!("rollback to {number}");
                    let change = Change {
                        text: &rev.text,
                        origin: &revs.config_path,
                        force,
                        window: None,
                        author: &author,
                        note: &note,
                    };
                    revs.commit(&change, applier.as_ref())
                });
                let _ = reply.send(r.map(|(cfg, out)| {
                    publish(cfg);
                    out
                }));
            }
            Command::Check {
                text,
                origin,
                force,
                window,
                reply,
            } => {
                let _ = reply.send(revs.check(&text, &origin, force, window));
            }
            Command::Undo {
                revision,
                back_to,
                why,
                reply,
            } => {
                let r = revs.undo(revision, back_to, &why, applier.as_ref());
                let _ = reply.send(r.map(|(cfg, n)| {
                    publish(cfg);
                    n
                }));
            }
            Command::Revision { number, reply } => {
                let _ = reply.send(revs.store.get(number).map(|r| r.text));
            }
            Command::Confirm { reply } => {
                let r = match revs.confirm(applier.as_ref()) {
                    Ok(ConfirmOutcome::Confirmed(n)) => Ok(n),
                    Ok(ConfirmOutcome::RolledBack(cfg)) => {
                        if let Some(cfg) = cfg {
                            publish(*cfg);
                        }
                        Err(RevisionError::Refused(
                            "too late: the commit was rolled back",
                        ))
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            Command::History { reply } => {
                let _ = reply.send(revs.history());
            }
            Command::Compare { a, b, reply } => {
                let _ = reply.send(revs.compare(a, b));
            }
            Command::ShowConfig { reply } => {
                let r = revs.store.active().and_then(|n| {
                    let n = n.ok_or(RevisionError::NoSuchRevision(0))?;
                    Ok((n, revs.store.get(n)?.text))
                });
                let _ = reply.send(r);
            }
            Command::Status { reply } => {
                let r = revs
                    .store
                    .active()
                    .and_then(|active| Ok((active, revs.store.pending()?.map(|p| p.candidate))));
                let _ = reply.send(r);
            }
            Command::Pending { reply } => {
                let r = revs
                    .store
                    .pending()
                    .map(|p| p.map(|p| (p.candidate, p.previous)));
                let _ = reply.send(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records what would have been applied.
    #[derive(Default)]
    struct Fake {
        applied: RefCell<Vec<u64>>,
        fail: bool,
    }

    impl Applier for Fake {
        fn apply(&self, _: &Ruleset, generation: u64) -> Result<(), String> {
            if self.fail {
                return Err("nft said no".into());
            }
            self.applied.borrow_mut().push(generation);
            Ok(())
        }
    }

    fn lab() -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml"))
            .unwrap()
    }

    /// A commit of `text` by "a", with a confirm window of `window_secs` if given.
    fn change(text: &str, window_secs: Option<u64>) -> Change<'_> {
        Change {
            text,
            origin: Path::new("candidate.toml"),
            force: false,
            window: window_secs.map(Duration::from_secs),
            author: "a",
            note: "commit",
        }
    }

    fn setup() -> (tempfile::TempDir, Revisions) {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("callgate.toml");
        std::fs::write(&cfg, lab()).unwrap();
        let state = d.path().join("state");
        let history = FileHistory::open(&state).unwrap();
        let r = Revisions::new(&state, &cfg, Some(Box::new(history)), None).unwrap();
        (d, r)
    }

    #[test]
    fn boot_commit_history_compare() {
        let (_d, r) = setup();
        let fw = Fake::default();
        r.boot(&fw).unwrap();
        let text2 = lab().replace("\"33434-33534\"", "\"33434-33500\"");
        let (_, out) = r.commit(&change(&text2, None), &fw).unwrap();
        assert_eq!(out.revision, 2);
        assert_eq!(*fw.applied.borrow(), vec![1, 2]);
        assert_eq!(std::fs::read_to_string(&r.config_path).unwrap(), text2);
        let h = r.history().unwrap();
        assert_eq!(h.len(), 2);
        assert!(h[1].active && !h[0].active);
        let diff = r.compare(1, 2).unwrap();
        assert!(
            diff.contains("-ports = [\"33434-33534\"]")
                && diff.contains("+ports = [\"33434-33500\"]"),
            "{diff}"
        );
        // booting again with the same file records nothing new
        r.boot(&fw).unwrap();
        assert_eq!(r.history().unwrap().len(), 2);
    }

    #[test]
    fn invalid_or_refused_commit_changes_nothing() {
        let (_d, r) = setup();
        let fw = Fake::default();
        r.boot(&fw).unwrap();
        let before = std::fs::read_to_string(&r.config_path).unwrap();
        let e = r.commit(&change("[appliance\n", None), &fw).unwrap_err();
        assert!(matches!(e, RevisionError::Invalid(_)));
        let lock = lab().replace(
            "[services.ssh]\nzones = [\"mgmt\"]",
            "[services.ssh]\nzones = [\"sync\"]",
        );
        let e = r.commit(&change(&lock, None), &fw).unwrap_err();
        assert!(matches!(e, RevisionError::Lockout(_)), "{e}");
        let failing = Fake {
            fail: true,
            ..Default::default()
        };
        let e = r.commit(&change(&lab(), None), &failing).unwrap_err();
        assert!(matches!(e, RevisionError::Apply(_)));
        assert_eq!(r.history().unwrap().len(), 1);
        assert_eq!(std::fs::read_to_string(&r.config_path).unwrap(), before);
        assert_eq!(*fw.applied.borrow(), vec![1]);
        // with --force the lockout is overridden
        r.commit(
            &Change {
                force: true,
                ..change(&lock, None)
            },
            &fw,
        )
        .unwrap();
    }

    #[test]
    fn confirmed_commit_rolls_back_when_due_and_confirm_keeps_it() {
        let (_d, r) = setup();
        let fw = Fake::default();
        r.boot(&fw).unwrap();
        let text2 = lab().replace("lab-a", "lab-b");
        let (_, out) = r.commit(&change(&text2, Some(60)), &fw).unwrap();
        assert!(out.confirm_deadline_ms.is_some());
        // not yet due
        assert!(r.rollback_if_due(now_ms(), &fw).unwrap().is_none());
        // a second commit is refused while pending
        assert!(matches!(
            r.commit(&change(&text2, None), &fw),
            Err(RevisionError::Refused(_))
        ));
        // due: rolls back to revision 1's text as revision 3
        let cfg = r.rollback_if_due(now_ms() + 61_000, &fw).unwrap().unwrap();
        assert_eq!(cfg.appliance.name.as_str(), "lab-a");
        assert_eq!(r.store.active().unwrap(), Some(3));
        assert_eq!(std::fs::read_to_string(&r.config_path).unwrap(), lab());
        assert!(r.store.pending().unwrap().is_none());

        // and this time confirm it
        r.commit(&change(&text2, Some(60)), &fw).unwrap();
        assert!(matches!(
            r.confirm(&fw).unwrap(),
            ConfirmOutcome::Confirmed(4)
        ));
        assert!(r
            .rollback_if_due(now_ms() + 120_000, &fw)
            .unwrap()
            .is_none());
        assert_eq!(r.store.active().unwrap(), Some(4));
    }

    #[test]
    fn guard_rolls_back_without_history_and_boot_records_it() {
        let (d, r) = setup();
        let fw = Fake::default();
        r.boot(&fw).unwrap();
        let text2 = lab().replace("lab-a", "lab-b");
        let change = change(&text2, Some(1));
        r.commit(&change, &fw).unwrap();
        // the guard: same state dir, no history
        let guard = Revisions::new(&d.path().join("state"), &r.config_path, None, None).unwrap();
        let cfg = guard
            .rollback_if_due(now_ms() + 5_000, &fw)
            .unwrap()
            .unwrap();
        assert_eq!(cfg.appliance.name.as_str(), "lab-a");
        assert_eq!(std::fs::read_to_string(&r.config_path).unwrap(), lab());
        assert_eq!(r.store.active().unwrap(), Some(1));
        assert!(r.store.guard_rollback().unwrap().is_some());
        // the daemon's next start records the rollback as a revision
        r.boot(&fw).unwrap();
        let h = r.history().unwrap();
        assert_eq!(h.len(), 3, "{h:?}");
        assert!(
            h[2].note.contains("by the rollback guard") && h[2].active,
            "{h:?}"
        );
        assert!(r.store.guard_rollback().unwrap().is_none());
    }

    #[test]
    fn check_refuses_what_commit_would_and_undo_takes_a_commit_back() {
        let (_d, r) = setup();
        let fw = Fake::default();
        r.boot(&fw).unwrap();
        let origin = Path::new("candidate.toml");
        let text2 = lab().replace("\"33434-33534\"", "\"33434-33500\"");
        r.check(&text2, origin, false, None).unwrap();
        assert!(matches!(
            r.check("[appliance\n", origin, false, None),
            Err(RevisionError::Invalid(_))
        ));
        assert_eq!(r.history().unwrap().len(), 1, "a check records nothing");
        assert_eq!(*fw.applied.borrow(), vec![1], "and applies nothing");

        r.commit(&change(&text2, None), &fw).unwrap();
        let (_, n) = r.undo(2, 1, "the peer failed", &fw).unwrap();
        assert_eq!(n, 3);
        assert_eq!(std::fs::read_to_string(&r.config_path).unwrap(), lab());
        let h = r.history().unwrap();
        assert!(
            h[2].active && h[2].note.contains("commit 2 undone: the peer failed"),
            "{h:?}"
        );
        assert!(matches!(
            r.undo(2, 1, "again", &fw),
            Err(RevisionError::Refused(_))
        ));

        // With a confirm window: a check is refused while it is open, an undo closes it.
        r.commit(&change(&text2, Some(60)), &fw).unwrap();
        assert!(matches!(
            r.check(&text2, origin, false, None),
            Err(RevisionError::Refused(_))
        ));
        let (_, n) = r.undo(4, 3, "the peer's window closed", &fw).unwrap();
        assert_eq!(n, 5);
        assert!(r.store.pending().unwrap().is_none());
        assert_eq!(r.store.active().unwrap(), Some(5));
        assert_eq!(std::fs::read_to_string(&r.config_path).unwrap(), lab());
        assert_eq!(*fw.applied.borrow(), vec![1, 2, 3, 4, 5]);
    }
}
