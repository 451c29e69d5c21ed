//! The firewall component: a handle plus a dedicated thread that owns the `inet callgate`
//! table. nft runs and netlink writes block, so they live off the async runtime; callers
//! talk to the thread over an mpsc channel and watch its state.
//!
//! ## Drift
//! The thread keeps the last ruleset it applied and verified, and compares the kernel's
//! table with it (see [`crate::readback`]) at three moments only:
//! - at each apply (the apply fails when the kernel disagrees), and again after a failed
//!   apply, against the ruleset still in force;
//! - at each [`FirewallHandle::report`] (`callgate show firewall`), which returns the
//!   differences next to the counters.
//!
//! Each result is published as [`FirewallState::verification`], which is what
//! `callgate status` shows: the last check, not a new one. Nothing re-verifies
//! periodically, so a change made through `nft` between two of those moments goes unseen
//! until the next one.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    ApplyReport, EntryCounters, Firewall, FirewallError, Pinhole, PinholeChange, Ruleset, SetWriter,
};

/// What the firewall has applied, published for the rest of the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallState {
    /// Generation of the last ruleset applied and verified (0: none yet).
    pub generation: u64,
    /// The last apply's error, if it failed (the previous ruleset then stays in force).
    pub last_error: Option<String>,
    /// The last comparison of the kernel's table with the ruleset in force (see the module
    /// docs for when it is made).
    pub verification: Verification,
}

/// The result of one comparison of the kernel's table with the ruleset in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Verification {
    /// No ruleset has been applied yet: nothing to compare with.
    #[default]
    NotYet,
    /// The kernel held exactly the ruleset in force.
    InSync,
    /// The kernel's table differed, one line per difference (chain, rule and what).
    Drift(Vec<String>),
    /// The read-back itself failed.
    Failed(String),
}

impl Verification {
    fn of(drift: &[String]) -> Verification {
        if drift.is_empty() {
            Verification::InSync
        } else {
            Verification::Drift(drift.to_vec())
        }
    }
}

/// What `callgate show firewall` shows: counters and drift, from one read-back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallReport {
    /// The generation the kernel was compared with; `None` when nothing has been applied
    /// through this thread yet (then `drift` is empty: there was nothing to compare).
    pub generation: Option<u64>,
    /// Per-entry counters.
    pub entries: Vec<EntryCounters>,
    /// How the kernel's table differs from that generation; empty when in sync.
    pub drift: Vec<String>,
}

type Reply<T> = oneshot::Sender<Result<T, FirewallError>>;

#[derive(Debug)]
enum Command {
    Apply {
        ruleset: Arc<Ruleset>,
        generation: u64,
        reply: Reply<ApplyReport>,
    },
    Report {
        reply: Reply<FirewallReport>,
    },
    OpenPinhole {
        pinhole: Pinhole,
        ttl: Duration,
        reply: Reply<()>,
    },
    ClosePinhole {
        pinhole: Pinhole,
        reply: Reply<()>,
    },
    Block {
        addr: IpAddr,
        ttl: Duration,
        reply: Reply<()>,
    },
    ChangePinholes {
        changes: Vec<PinholeChange>,
        reply: Reply<()>,
    },
}

/// Cheap to clone; every clone talks to the same thread.
#[derive(Debug, Clone)]
pub struct FirewallHandle {
    tx: mpsc::Sender<Command>,
    state: watch::Receiver<FirewallState>,
}

impl FirewallHandle {
    /// Starts the firewall thread. It stops when every handle is dropped.
    pub fn spawn(fw: Firewall) -> std::io::Result<(FirewallHandle, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(256);
        let (state_tx, state) = watch::channel(FirewallState::default());
        let join = std::thread::Builder::new()
            .name("firewall".into())
            .spawn(move || run(fw, rx, state_tx))?;
        Ok((FirewallHandle { tx, state }, join))
    }

    pub fn state(&self) -> watch::Receiver<FirewallState> {
        self.state.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, FirewallError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| FirewallError::Stopped)?;
        rx.await.map_err(|_| FirewallError::Stopped)?
    }

    /// Applies and verifies a ruleset; on error the kernel keeps the previous one.
    pub async fn apply(
        &self,
        ruleset: Arc<Ruleset>,
        generation: u64,
    ) -> Result<ApplyReport, FirewallError> {
        self.call(|reply| Command::Apply {
            ruleset,
            generation,
            reply,
        })
        .await
    }

    /// Counters, and the differences between the kernel's table and the last ruleset
    /// applied, from one read-back. Publishes the comparison in [`FirewallState`].
    pub async fn report(&self) -> Result<FirewallReport, FirewallError> {
        self.call(|reply| Command::Report { reply }).await
    }

    /// Lets the pinhole's flow (`proto` traffic from `src` to `dst:port`, forwarded only)
    /// through for `ttl`; refreshes an open pinhole. See [`SetWriter::open_pinhole`].
    pub async fn open_pinhole(&self, pinhole: Pinhole, ttl: Duration) -> Result<(), FirewallError> {
        self.call(|reply| Command::OpenPinhole {
            pinhole,
            ttl,
            reply,
        })
        .await
    }

    /// Opens and closes many pinholes in one netlink batch (see
    /// [`SetWriter::change_pinholes`]).
    pub async fn change_pinholes(&self, changes: Vec<PinholeChange>) -> Result<(), FirewallError> {
        self.call(|reply| Command::ChangePinholes { changes, reply })
            .await
    }

    /// Closes a pinhole now. Closing one that has already expired is not an error.
    pub async fn close_pinhole(&self, pinhole: Pinhole) -> Result<(), FirewallError> {
        self.call(|reply| Command::ClosePinhole { pinhole, reply })
            .await
    }
}

impl FirewallHandle {
    /// Puts `addr` into the blocklist set for `ttl` (refreshes an existing block).
    pub async fn block(&self, addr: IpAddr, ttl: Duration) -> Result<(), FirewallError> {
        self.call(|reply| Command::Block { addr, ttl, reply }).await
    }
}

fn with_writer<T>(
    writer: &mut Option<SetWriter>,
    f: impl FnOnce(&mut SetWriter) -> Result<T, crate::NetlinkError>,
) -> Result<T, FirewallError> {
    if writer.is_none() {
        *writer = Some(SetWriter::open(crate::model::TABLE)?);
    }
    let Some(w) = writer.as_mut() else {
        return Err(FirewallError::Stopped);
    };
    let r = f(w);
    if r.is_err() {
        // Reopen on the next call: a socket error must not poison later writes.
        *writer = None;
    }
    Ok(r?)
}

fn run(fw: Firewall, mut rx: mpsc::Receiver<Command>, state: watch::Sender<FirewallState>) {
    let mut writer: Option<SetWriter> = None;
    // The ruleset in force and its generation: the next apply checks that removed elements
    // are gone, and reports compare the kernel with it.
    let mut last: Option<(Arc<Ruleset>, u64)> = None;
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Command::Apply {
                ruleset,
                generation,
                reply,
            } => {
                let r = fw.apply(&ruleset, last.as_ref().map(|(rs, _)| rs.as_ref()));
                let verification = match &r {
                    Ok(_) => {
                        last = Some((ruleset, generation));
                        Verification::InSync
                    }
                    // nft refused (the kernel kept what it had), or the transaction went in
                    // and the read-back disagreed: either way, say how the kernel compares
                    // with the ruleset still in force.
                    Err(_) => verify_last(&fw, last.as_ref()),
                };
                state.send_modify(|s| {
                    match &r {
                        Ok(_) => {
                            s.generation = generation;
                            s.last_error = None;
                        }
                        Err(e) => s.last_error = Some(error_chain(e)),
                    }
                    s.verification = verification;
                });
                let _ = reply.send(r);
            }
            Command::Report { reply } => {
                let applied = last.as_ref().map(|(rs, _)| rs.as_ref());
                let r = fw.inspect(applied);
                if applied.is_some() {
                    let v = match &r {
                        Ok(i) => Verification::of(&i.drift),
                        Err(e) => Verification::Failed(error_chain(e)),
                    };
                    state.send_if_modified(|s| {
                        let changed = s.verification != v;
                        s.verification = v;
                        changed
                    });
                }
                let r = r.map(|i| FirewallReport {
                    generation: last.as_ref().map(|(_, g)| *g),
                    entries: i.entries,
                    drift: i.drift,
                });
                let _ = reply.send(r);
            }
            Command::OpenPinhole {
                pinhole,
                ttl,
                reply,
            } => {
                let r = with_writer(&mut writer, |w| w.open_pinhole(pinhole, ttl));
                let _ = reply.send(r);
            }
            Command::ClosePinhole { pinhole, reply } => {
                let r = with_writer(&mut writer, |w| w.discard_pinhole(pinhole));
                let _ = reply.send(r);
            }
            Command::ChangePinholes { changes, reply } => {
                let r = with_writer(&mut writer, |w| w.change_pinholes(&changes));
                let _ = reply.send(r);
            }
            Command::Block { addr, ttl, reply } => {
                let r = with_writer(&mut writer, |w| w.block(addr, ttl));
                let _ = reply.send(r);
            }
        }
    }
}

/// Compares the kernel's table with the ruleset in force, if any.
fn verify_last(fw: &Firewall, last: Option<&(Arc<Ruleset>, u64)>) -> Verification {
    match last {
        None => Verification::NotYet,
        Some((rs, _)) => match fw.drift(rs, None) {
            Ok(d) => Verification::of(&d),
            Err(e) => Verification::Failed(error_chain(&e)),
        },
    }
}

/// The whole error chain on one line, for logs and replies.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

impl FirewallHandle {
    /// [`FirewallHandle::apply`] for callers on a plain thread (never call it from async code).
    pub fn blocking_apply(
        &self,
        ruleset: Arc<Ruleset>,
        generation: u64,
    ) -> Result<ApplyReport, FirewallError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Command::Apply {
                ruleset,
                generation,
                reply,
            })
            .map_err(|_| FirewallError::Stopped)?;
        rx.blocking_recv().map_err(|_| FirewallError::Stopped)?
    }
}
