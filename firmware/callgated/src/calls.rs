//! Wiring of the SIP proxy: starts the sip thread, follows committed configs, and carries
//! its effects to the firewall (pinholes, blocklist) and the store (call records).
//!
//! Records: a call answered gets its record written at answer time under a reserved id,
//! and rewritten under the same id when it ends (the final write waits for the first),
//! so a crash mid-call leaves the answered call on disk. Writes run on the blocking pool,
//! at most [`MAX_WRITES`] at once, so the store's group commit batches them.

use std::collections::HashMap;
use std::sync::Arc;

use callgate_config::Config;
use callgate_firewall::{error_chain, FirewallHandle, PinholeProto};
use callgate_proxy::driver::{self, Effect, SipHandle};
use callgate_store::{Cdr, Store};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

/// Concurrent record writes in flight.
const MAX_WRITES: usize = 32;
/// Records between two sweeps of finished answer-time writes out of the answered-calls map.
const SWEEP_EVERY: usize = 1024;

/// Starts the proxy when the config lists listen addresses. Needs a tokio context.
pub fn start(
    config: watch::Receiver<Arc<Config>>,
    firewall: FirewallHandle,
    store: Arc<Store>,
) -> Option<SipHandle> {
    let cfg = config.borrow().clone();
    if cfg.sip.listen.is_empty() {
        log::info!("sip: no listen addresses configured, the proxy does not run");
        return None;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = match driver::spawn(cfg, tx) {
        Ok((h, _join)) => h,
        Err(e) => {
            log::error!("sip: the proxy does not run: {e}");
            return None;
        }
    };
    tokio::spawn(effects(rx, firewall, store));
    tokio::spawn(follow_config(config, handle.clone()));
    Some(handle)
}

async fn follow_config(mut config: watch::Receiver<Arc<Config>>, sip: SipHandle) {
    while config.changed().await.is_ok() {
        let cfg = config.borrow_and_update().clone();
        if sip.reconfigure(cfg).await.is_err() {
            return;
        }
    }
}

async fn effects(
    mut rx: mpsc::UnboundedReceiver<Effect>,
    firewall: FirewallHandle,
    store: Arc<Store>,
) {
    let sem = Arc::new(Semaphore::new(MAX_WRITES));
    // Answered calls: their reserved record id and the answer-time write while it is in
    // flight (the final write waits for it). Finished writes are let go in sweeps, so a held
    // call keeps only its id here, not the finished task.
    let mut answered: HashMap<u64, (u64, Option<JoinHandle<()>>)> = HashMap::new();
    let mut since_sweep = 0usize;
    while let Some(e) = rx.recv().await {
        match e {
            Effect::Pinhole { open, addr, ttl } => {
                let r = if open {
                    firewall
                        .open_pinhole(addr.ip(), PinholeProto::Udp, addr.port(), ttl)
                        .await
                } else {
                    firewall
                        .close_pinhole(addr.ip(), PinholeProto::Udp, addr.port())
                        .await
                };
                if let Err(e) = r {
                    log::error!(
                        "sip: pinhole {} {addr}: {}",
                        if open { "open" } else { "close" },
                        error_chain(&e)
                    );
                }
            }
            Effect::Block { ip, ttl } => {
                if let Err(e) = firewall.block(ip, ttl).await {
                    log::error!("sip: blocklist {ip}: {}", error_chain(&e));
                }
            }
            Effect::Record { seq, cdr, ended } => {
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    return;
                };
                let (id, before) = match answered.remove(&seq) {
                    Some((id, h)) => (id, h),
                    None => (store.reserve_cdr_id(), None),
                };
                let h = tokio::spawn(write(store.clone(), id, cdr, before, permit));
                if !ended {
                    answered.insert(seq, (id, Some(h)));
                }
                since_sweep += 1;
                if since_sweep >= SWEEP_EVERY {
                    since_sweep = 0;
                    for (_, h) in answered.values_mut() {
                        if h.as_ref().is_some_and(JoinHandle::is_finished) {
                            *h = None;
                        }
                    }
                }
            }
        }
    }
}

async fn write(
    store: Arc<Store>,
    id: u64,
    cdr: Box<Cdr>,
    before: Option<JoinHandle<()>>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    if let Some(h) = before {
        let _ = h.await;
    }
    let r = tokio::task::spawn_blocking(move || store.put_cdr(id, &cdr)).await;
    drop(permit);
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error!(
            "sip: call record {id} could not be stored: {}",
            callgate_store::error_chain(&e)
        ),
        Err(e) => log::error!("sip: call record {id}: {e}"),
    }
}
