//! Wiring of the SIP proxy: starts the sip thread, follows committed configs, and carries
//! its effects to the firewall (pinholes, blocklist) and the store (call records).
//!
//! Records: a call answered gets its record written at answer time under a reserved id,
//! and rewritten under the same id when it ends, so a crash mid-call leaves the answered
//! call on disk. One `cdr-writer` thread writes them in batches, strictly in order: what
//! is queued when a batch starts (up to [`MAX_BATCH`]), and under load, when the batch
//! starts with a final record, what arrives within [`GATHER`] of it; a batch that starts
//! with an answer-time record goes at once (its call's 2xx waits for it). Each batch takes two durable steps: first its answer-time
//! records, to the store's file of calls in progress (they cost no memory while the call
//! lasts, and with no new caller's key to commit they wait for no flush of the record
//! tree), after which the proxy is told they are durable ([`SipHandle::record_stored`]) and
//! only then sends those calls' 2xx to the callers; then its final records, to the record
//! tree in one commit. A call whose two records share a batch has only the final one
//! written (same id, same result on disk), reported with it. Pinholes and blocks go to the
//! firewall on their own queue, never behind records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::replica::Replicator;
use callgate_config::Config;
use callgate_firewall::{error_chain, FirewallHandle, PinholeChange, PinholeProto};
use callgate_proxy::driver::{self, Effect, SipHandle};
use callgate_store::{Cdr, Store};
use tokio::sync::{mpsc, watch};

/// Pinhole changes sent to the firewall in one batch at most.
const MAX_PINHOLE_BATCH: usize = 64;
/// Records written in one commit at most.
const MAX_BATCH: usize = 512;
/// How long the writer gathers records after the first one of a batch before committing:
/// under load a commit (a flush of the store) is shared by the records of this window
/// instead of being paid by each; it bounds how much later a record becomes durable.
const GATHER: Duration = Duration::from_millis(10);

/// How far the record writer has come: records handed to it and records it has finished
/// (committed, or reported as failed).
#[derive(Debug, Clone, Default)]
pub struct RecordsInFlight(Arc<Progress>);

#[derive(Debug, Default)]
struct Progress {
    handed: AtomicU64,
    finished: AtomicU64,
}

impl RecordsInFlight {
    /// Waits until every record handed to the writer before this call is finished, at most
    /// `limit`; false if some are still pending then. For an orderly stop: a SIGTERM right
    /// after calls end keeps their records.
    pub async fn flush(&self, limit: Duration) -> bool {
        let target = self.0.handed.load(Ordering::Acquire);
        let start = Instant::now();
        while self.0.finished.load(Ordering::Acquire) < target {
            if start.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    fn handed(&self) {
        self.0.handed.fetch_add(1, Ordering::AcqRel);
    }

    fn finished(&self, n: usize) {
        self.0.finished.fetch_add(n as u64, Ordering::AcqRel);
    }
}

/// Whether `cfg` has the proxy run: it lists listen addresses. Read as the daemon starts
/// ([`start`]), and by `crate::restart` to tell when a commit changes it.
pub fn runs_proxy(cfg: &Config) -> bool {
    !cfg.sip.listen.is_empty()
}

/// Starts the proxy when the config lists listen addresses. Needs a tokio context.
pub fn start(
    config: watch::Receiver<Arc<Config>>,
    firewall: FirewallHandle,
    store: Arc<Store>,
    replicator: Option<Replicator>,
    tls: Option<callgate_proxy::driver::TlsIdentity>,
) -> Option<(SipHandle, RecordsInFlight)> {
    let cfg = config.borrow().clone();
    if !runs_proxy(&cfg) {
        log::info!("sip: no listen addresses configured, the proxy does not run");
        return None;
    }
    // Calls that were in progress when the daemon last stopped carry on, on an appliance
    // alone. In a pair the peer carried them on when this one stopped (it holds their
    // records); a node that starts again starts as standby and leaves them to it.
    let in_progress = store.take_calls_in_progress();
    let resumed = if cfg.pair.is_some() {
        if !in_progress.is_empty() {
            log::warn!(
                "sip: {} calls in progress at the last stop are left to the pair's peer",
                in_progress.len()
            );
            // Their final records are the peer's to write: asked of it at each connection.
            if let Some(r) = &replicator {
                r.await_finals(in_progress.iter().map(|r| r.id));
            }
        }
        Vec::new()
    } else {
        in_progress.into_iter().map(|r| (r.id, r.value)).collect()
    };
    // Records go from the sip thread straight to the writer's queue; pinholes and blocks
    // to the firewall task below.
    let (records, queue) = std_mpsc::channel::<Job>();
    let (tx, rx) = mpsc::unbounded_channel();
    let progress = RecordsInFlight::default();
    let handle = match driver::spawn(
        cfg,
        effect_sink(records.clone(), tx, progress.clone()),
        resumed,
        tls,
    ) {
        Ok((h, _join)) => h,
        Err(e) => {
            log::error!("sip: the proxy does not run: {e}");
            return None;
        }
    };
    if let Some(r) = &replicator {
        // A bulk sync goes through the writer's queue, in order with its batches.
        r.set_bulk_request(Box::new(move || {
            let _ = records.send(Job::Bulk);
        }));
    }
    let done = progress.clone();
    let (sip, rep) = (handle.clone(), replicator.clone());
    let writer = std::thread::Builder::new()
        .name("cdr-writer".into())
        .spawn(move || write_records(&store, &queue, &done, &sip, rep.as_ref()));
    if let Err(e) = writer {
        log::error!("sip: the call record writer did not start: {e}");
    }
    tokio::spawn(firewall_effects(rx, firewall, replicator));
    tokio::spawn(follow_config(config, handle.clone()));
    Some((handle, progress))
}

/// The proxy's [`driver::EffectSink`]: records (and resumed calls) to the writer's queue,
/// counted as handed; pinholes and blocks to the firewall task. Both only queue.
fn effect_sink(
    records: std_mpsc::Sender<Job>,
    firewall: mpsc::UnboundedSender<Effect>,
    progress: RecordsInFlight,
) -> driver::EffectSink {
    Box::new(move |e| match e {
        Effect::Record { seq, cdr, ended } => {
            progress.handed();
            if records
                .send(Job::Record(Pending { seq, cdr, ended }))
                .is_err()
            {
                log::error!("sip: the call record writer is gone; record of call {seq} lost");
            }
        }
        Effect::Resumed { seq, id } => {
            if records.send(Job::Resumed { seq, id }).is_err() {
                log::error!("sip: the call record writer is gone");
            }
        }
        e @ (Effect::Pinhole { .. } | Effect::Block { .. }) => {
            let _ = firewall.send(e);
        }
    })
}

async fn follow_config(mut config: watch::Receiver<Arc<Config>>, sip: SipHandle) {
    while config.changed().await.is_ok() {
        let cfg = config.borrow_and_update().clone();
        if sip.reconfigure(cfg).await.is_err() {
            return;
        }
    }
}

/// Pinholes and blocks from the proxy, to the firewall (and blocks to the pair's peer).
async fn firewall_effects(
    mut rx: mpsc::UnboundedReceiver<Effect>,
    firewall: FirewallHandle,
    replicator: Option<Replicator>,
) {
    let mut changes: Vec<PinholeChange> = Vec::new();
    while let Some(first) = rx.recv().await {
        // Everything already queued is handled now; its pinhole changes go to the firewall
        // as one netlink batch, in order.
        let mut next = Some(first);
        while let Some(e) = next.take() {
            match e {
                Effect::Pinhole {
                    open,
                    src,
                    dst,
                    ttl,
                } => changes.push(PinholeChange {
                    src,
                    dst: dst.ip(),
                    proto: PinholeProto::Udp,
                    port: dst.port(),
                    open: open.then_some(ttl),
                }),
                Effect::Block { ip, ttl } => {
                    if let Err(e) = firewall.block(ip, ttl).await {
                        log::error!("sip: blocklist {ip}: {}", error_chain(&e));
                    }
                    if let Some(r) = &replicator {
                        r.send_block(ip, ttl);
                    }
                }
                // The sink sends these to the record writer, never here.
                Effect::Record { .. } | Effect::Resumed { .. } => {}
            }
            if changes.len() < MAX_PINHOLE_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !changes.is_empty() {
            apply_pinholes(&firewall, std::mem::take(&mut changes)).await;
        }
    }
}

/// Pinhole changes as one netlink batch. The kernel refuses a whole batch when one element
/// is refused (two calls whose source prefixes overlap without being equal, toward the
/// same port); then each change goes alone, so one refusal costs only that pinhole.
async fn apply_pinholes(firewall: &FirewallHandle, changes: Vec<PinholeChange>) {
    let n = changes.len();
    let Err(e) = firewall.change_pinholes(changes.clone()).await else {
        return;
    };
    if n == 1 {
        log::error!("sip: a pinhole change failed: {}", error_chain(&e));
        return;
    }
    log::warn!(
        "sip: a batch of {n} pinhole changes failed ({}); applying them one by one",
        error_chain(&e)
    );
    for c in changes {
        if let Err(e) = firewall.change_pinholes(vec![c]).await {
            log::error!("sip: a pinhole change failed: {}", error_chain(&e));
        }
    }
}

/// What the record writer is asked to do, in order.
enum Job {
    Record(Pending),
    /// Call `seq` is a resumed call whose record has id `id`.
    Resumed {
        seq: u64,
        id: u64,
    },
    /// Send the calls in progress to the pair's peer (replication's bulk sync).
    Bulk,
}

/// A record the proxy emitted: `seq` is the call, `ended` false for the answer-time one.
struct Pending {
    seq: u64,
    cdr: Box<Cdr>,
    ended: bool,
}

/// The `cdr-writer` thread: batches of queued records, one commit each, in order. Each
/// answer-time record is reported to the proxy once durable (or failed), which then lets
/// the call's 2xx go to the caller.
fn write_records(
    store: &Store,
    queue: &std_mpsc::Receiver<Job>,
    done: &RecordsInFlight,
    sip: &SipHandle,
    replicator: Option<&Replicator>,
) {
    let bulk = |store: &Store| {
        if let Some(r) = replicator {
            let open = store.calls_in_progress_now();
            let recs: Vec<(u64, &Cdr)> = open.iter().map(|r| (r.id, &r.value)).collect();
            r.send_bulk(&recs);
        }
    };
    // Answered calls still in progress: their reserved record id.
    let mut answered: HashMap<u64, u64> = HashMap::new();
    // Whether the last batch held more than one record: records come faster than they
    // are committed, so gathering pays.
    let mut busy = false;
    while let Ok(first) = queue.recv() {
        let first = match first {
            Job::Record(p) => p,
            Job::Resumed { seq, id } => {
                answered.insert(seq, id);
                continue;
            }
            Job::Bulk => {
                bulk(store);
                continue;
            }
        };
        // Under load, a batch that starts with a final record sleeps through the gathering
        // time and then takes what came: records queued meanwhile wake nobody (a blocking
        // receive would be woken by each of them). An answer-time record never waits: its
        // call's 2xx waits for it; what queues while it is written joins the next batch.
        if busy && first.ended {
            std::thread::sleep(GATHER);
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(Job::Record(p)) => batch.push(p),
                Ok(Job::Resumed { seq, id }) => {
                    answered.insert(seq, id);
                }
                Ok(Job::Bulk) => bulk(store),
                Err(_) => break,
            }
        }
        let n = batch.len();
        busy = n > 1;
        let answer_time: Vec<u64> = batch.iter().filter(|p| !p.ended).map(|p| p.seq).collect();
        let writes = coalesce(batch, &mut answered, || store.reserve_cdr_id());
        // Answer-time records first, to the store's file of calls in progress: once they
        // are durable their calls' 2xx may go, without waiting for the final records'
        // commit to the record tree that follows. (A call's two records never share a
        // batch: they collapse into the final one, reported with it.)
        for ended in [false, true] {
            let failed = store_records(store, &writes, ended);
            // What this node stored goes to the pair's peer; an answered call's 2xx waits
            // until the peer holds its record too (bounded: a silent peer costs ACK_WAIT).
            if let Some(r) = replicator {
                let recs: Vec<(u64, &Cdr)> = writes
                    .iter()
                    .filter(|w| w.ended == ended && !failed.contains(&w.id))
                    .map(|w| (w.id, &*w.cdr))
                    .collect();
                if !recs.is_empty() {
                    let sent = if ended {
                        r.send_records(&[], &recs)
                    } else {
                        r.send_records(&recs, &[])
                    };
                    if let (false, Some(n)) = (ended, sent) {
                        r.wait_acked(n);
                    }
                }
            }
            for seq in &answer_time {
                if let Some(w) = writes.iter().find(|w| w.seq == *seq && w.ended == ended) {
                    sip.record_stored(*seq, !failed.contains(&w.id));
                }
            }
        }
        done.finished(n);
    }
}

/// Writes the answer-time (`ended` false) or the final records of a batch durably; the ids
/// of those that could not be stored (logged).
fn store_records(store: &Store, writes: &[Write], ended: bool) -> Vec<u64> {
    let recs: Vec<(u64, &Cdr)> = writes
        .iter()
        .filter(|w| w.ended == ended)
        .map(|w| (w.id, &*w.cdr))
        .collect();
    if recs.is_empty() {
        return Vec::new();
    }
    let result = if ended {
        store.write_cdrs(&[], &recs)
    } else {
        store.write_cdrs(&recs, &[])
    };
    match result {
        Ok(failed) => failed
            .into_iter()
            .map(|(id, e)| {
                log::error!(
                    "sip: call record {id} could not be stored: {}",
                    callgate_store::error_chain(&e)
                );
                id
            })
            .collect(),
        Err(e) => {
            log::error!(
                "sip: {} call records could not be stored: {}",
                recs.len(),
                callgate_store::error_chain(&e)
            );
            recs.iter().map(|(id, _)| *id).collect()
        }
    }
}

/// One record to write: its id, the call it belongs to, the record, and whether it is final.
struct Write {
    id: u64,
    seq: u64,
    cdr: Box<Cdr>,
    ended: bool,
}

/// Gives each record its id (reserved at a call's first record, kept until its final one)
/// and keeps the last record per id, in first-seen order.
fn coalesce(
    batch: Vec<Pending>,
    answered: &mut HashMap<u64, u64>,
    mut reserve: impl FnMut() -> u64,
) -> Vec<Write> {
    let mut writes: Vec<Write> = Vec::with_capacity(batch.len());
    let mut at: HashMap<u64, usize> = HashMap::new();
    for p in batch {
        let id = if p.ended {
            answered.remove(&p.seq)
        } else {
            answered.get(&p.seq).copied()
        };
        let id = id.unwrap_or_else(|| {
            let id = reserve();
            if !p.ended {
                answered.insert(p.seq, id);
            }
            id
        });
        match at.get(&id) {
            Some(&i) => {
                if let Some(w) = writes.get_mut(i) {
                    w.cdr = p.cdr;
                    w.ended = p.ended;
                }
            }
            None => {
                at.insert(id, writes.len());
                writes.push(Write {
                    id,
                    seq: p.seq,
                    cdr: p.cdr,
                    ended: p.ended,
                });
            }
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use callgate_store::{Disposition, Pii};

    fn rec(seq: u64, ended: bool, code: u16) -> Pending {
        Pending {
            seq,
            ended,
            cdr: Box::new(Cdr {
                call_id: format!("c{seq}"),
                tracking_number: "+15550100007".into(),
                campaign: "x".into(),
                caller: Pii::new("+14155550123"),
                caller_name: None,
                destination: String::new(),
                invite_at: 0,
                ring_at: None,
                answer_at: None,
                end_at: ended.then_some(1),
                duration_ms: 0,
                disposition: Disposition::Answered,
                final_code: code,
                appliance: "a".into(),
                ended_by: None,
                resume: None,
            }),
        }
    }

    #[tokio::test]
    async fn flush_waits_for_the_records_handed_over_before_it() {
        let p = RecordsInFlight::default();
        assert!(p.flush(Duration::ZERO).await, "nothing pending");
        p.handed();
        p.handed();
        // Not finished yet: a short flush gives up.
        assert!(!p.flush(Duration::from_millis(20)).await);
        let w = p.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            w.finished(1);
            tokio::time::sleep(Duration::from_millis(50)).await;
            w.finished(1);
        });
        let waiter = p.clone();
        let flushed = tokio::spawn(async move { waiter.flush(Duration::from_secs(5)).await });
        // A record handed after the flush began is not waited for.
        tokio::time::sleep(Duration::from_millis(10)).await;
        p.handed();
        assert!(flushed.await.unwrap());
        writer.await.unwrap();
        assert!(
            !p.flush(Duration::from_millis(20)).await,
            "the third is pending"
        );
    }

    #[test]
    fn a_call_keeps_its_id_across_batches_and_pairs_in_one_batch_collapse() {
        let mut next = 100;
        let mut reserve = || {
            next += 1;
            next
        };
        let mut answered = HashMap::new();
        // Batch 1: call 1 answered; call 2 answered and ended; call 3 rejected.
        let w = coalesce(
            vec![
                rec(1, false, 200),
                rec(2, false, 200),
                rec(2, true, 201),
                rec(3, true, 404),
            ],
            &mut answered,
            &mut reserve,
        );
        let got: Vec<(u64, u16, bool)> = w
            .iter()
            .map(|w| (w.id, w.cdr.final_code, w.ended))
            .collect();
        assert_eq!(
            got,
            vec![(101, 200, false), (102, 201, true), (103, 404, true)]
        );
        assert_eq!(answered.get(&1), Some(&101));
        assert!(!answered.contains_key(&2));
        // Batch 2: call 1 ends under its id; a new call gets a new one.
        let w = coalesce(
            vec![rec(1, true, 200), rec(4, false, 200)],
            &mut answered,
            &mut reserve,
        );
        let got: Vec<(u64, bool)> = w.iter().map(|w| (w.id, w.ended)).collect();
        assert_eq!(got, vec![(101, true), (104, false)]);
        assert!(!answered.contains_key(&1));
        assert_eq!(answered.get(&4), Some(&104));
    }
}
