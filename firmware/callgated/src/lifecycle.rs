//! The daemon's two phases and the moves between them.
//!
//! - **Locked**: no key-encryption key (not provisioned, PCR mismatch, another TPM, no TPM).
//!   The baseline (or last applied) ruleset enforces, no records are open, no config can be
//!   committed; the control socket answers `status`, `provision` and `recover`.
//! - **Running**: the store is open, the config service runs, the full policy is applied.
//!
//! Provisioning and recovery move Locked → Running; decommission moves Running → Locked.
//! All of it happens here, in one task, so two engineers cannot race each other.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use callgate_firewall::{error_chain, render_baseline, FirewallHandle};
use callgate_revisions::{ConfigService, Revisions, StoreHistory};
use callgate_store::Store;
use callgate_vault::{Custody, CustodyError, Kek, RecoveryKey};
use tokio::sync::{mpsc, oneshot, watch};

use crate::pair::PairState;
use crate::{exit_for, spawn_guard, HandleApplier, EXIT_INTERNAL, EXIT_STATE};
use callgate_ha::{HaHandle, HaThread, Hooks};

/// What the rest of the daemon sees.
#[derive(Debug)]
pub enum Phase {
    Locked {
        reason: String,
    },
    Running {
        config: ConfigService,
        store: Arc<Store>,
        /// The SIP proxy, when the config has listen addresses.
        sip: Option<callgate_proxy::driver::SipHandle>,
        /// The pair (changes with `pair init`, `pair join`, `unpair`).
        pair: watch::Receiver<PairState>,
        /// Replication to the pair's peer (with a `[pair]` in the config).
        replica: Option<crate::replica::Replicator>,
        /// The cloud uplink (idle without `[uplink]`).
        uplink: crate::uplink::Uplink,
    },
}

/// How long a pair's erasure waits for the record writer to send what it stored before.
const ERASE_FLUSH: Duration = Duration::from_secs(2);

/// Requests only the lifecycle task may carry out.
#[derive(Debug)]
pub enum Lifecycle {
    Provision(oneshot::Sender<Result<String, String>>),
    Recover(String, oneshot::Sender<Result<(), String>>),
    Reseal(oneshot::Sender<Result<(), String>>),
    Decommission(oneshot::Sender<Result<(), String>>),
    PairInit(oneshot::Sender<Result<String, String>>),
    PairJoin(String, oneshot::Sender<Result<(), String>>),
    Unpair(oneshot::Sender<Result<(), String>>),
    PairRekey(oneshot::Sender<Result<(), String>>),
    /// The uplink's certificate signing request (a key is made the first time).
    UplinkCsr(oneshot::Sender<Result<String, String>>),
    /// Check and install the uplink certificate chain; its subject and expiry.
    UplinkInstall(
        String,
        oneshot::Sender<Result<callgate_uplink::CertInfo, String>>,
    ),
    /// SIP over TLS's certificate signing request (the key made the first time).
    SipTlsCsr(oneshot::Sender<Result<String, String>>),
    /// Erase a subject (a normalised number) for a console user: the receipt is signed
    /// with the uplink identity key, which the KEK held here opens.
    /// With `peer` (the pair's peer, by name), the receipt says the peer is not confirmed
    /// yet, until `SubjectEraseFinish`.
    SubjectErase {
        store: Arc<callgate_store::Store>,
        number: String,
        by: String,
        peer: Option<String>,
        reply: oneshot::Sender<Result<Option<callgate_store::Erasure>, String>>,
    },
    /// A pair's erasure, once the peer answered: the receipt naming both, signed and kept.
    SubjectEraseFinish {
        store: Arc<callgate_store::Store>,
        number: String,
        by: String,
        first: Box<Option<callgate_store::Erasure>>,
        peer: Box<callgate_store::PeerOutcome>,
        reply: oneshot::Sender<Result<Option<callgate_store::Erasure>, String>>,
    },
    /// Check and install SIP over TLS's certificate chain, and hand it to the proxy.
    SipTlsInstall(
        String,
        oneshot::Sender<Result<callgate_pki::CertInfo, String>>,
    ),
    /// The transcript intake's certificate signing request (the key made the first time).
    IntakeCsr(oneshot::Sender<Result<String, String>>),
    /// Check and install the intake's certificate chain, and serve with it.
    IntakeInstall(
        String,
        oneshot::Sender<Result<callgate_pki::CertInfo, String>>,
    ),
}

pub struct Ctx {
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub nft: PathBuf,
    pub drain: Duration,
    /// Where the call-record log rolls its segments (`--record-segment-kib`).
    pub record_segment_bytes: u64,
    pub custody: Custody,
    pub firewall: FirewallHandle,
    /// Where the console accounts are made, sessions ended and console processes read
    /// (here as root, or by the accounts helper).
    pub accounts: Arc<callgate_accounts::privileged::Privileged>,
}

impl Ctx {
    fn data_dir(&self) -> PathBuf {
        self.state_dir.join("data")
    }
}

/// What the lifecycle task holds while running (never shared: the KEK stays here).
struct Running {
    kek: Kek,
    /// Taken when stopping.
    config_thread: Option<std::thread::JoinHandle<()>>,
    config_service: ConfigService,
    /// The call record writer's progress, flushed before an orderly stop.
    records: Option<crate::calls::RecordsInFlight>,
    config: watch::Receiver<Arc<callgate_config::Config>>,
    pair_tx: watch::Sender<PairState>,
    pair_thread: Option<HaThread>,
    /// What replication connects with (None: not paired).
    replica_tx: watch::Sender<Option<Arc<crate::replica::Settings>>>,
    /// The heartbeat thread, for replication to report "synced".
    ha_tx: watch::Sender<Option<HaHandle>>,
    hooks: Option<Arc<dyn Hooks>>,
    replicator: Option<crate::replica::Replicator>,
    uplink: crate::uplink::Uplink,
    /// The cloud's subject requests, until `run` hands them to `crate::cloud_subjects`.
    cloud_subjects: Option<mpsc::Receiver<Vec<u8>>>,
    /// The transcript intake (idle without `[intake]`).
    intake: crate::intake::Intake,
    /// The proxy (None: it does not run).
    sip: Option<callgate_proxy::driver::SipHandle>,
    /// The shape this was built with, until `run` follows the config from it
    /// (`crate::restart`).
    shape: Option<crate::restart::Shape>,
}

impl Running {
    /// Stops the heartbeat thread (stepping down where the peer sees it, releasing the
    /// addresses) and publishes `next`.
    fn stop_pair(&mut self, next: PairState, deadline: Duration) {
        if let Some(t) = self.pair_thread.take() {
            t.stop(deadline);
        }
        self.replica_tx.send_replace(None);
        self.ha_tx.send_replace(None);
        self.pair_tx.send_replace(next);
    }

    /// (Re)starts the pair from the running config and the key on disk.
    fn start_pair(&mut self, state_dir: &std::path::Path, deadline: Duration) {
        self.stop_pair(PairState::Unpaired, deadline);
        let cfg = self.config.borrow().clone();
        let started = crate::pair::start(&cfg, state_dir, &self.kek, self.hooks.clone());
        self.publish_pair(started);
    }

    fn publish_pair(&mut self, started: crate::pair::Started) {
        self.pair_thread = started.thread;
        if let PairState::Running(h) = &started.state {
            self.ha_tx.send_replace(Some(h.clone()));
        }
        self.replica_tx.send_replace(started.replica);
        self.pair_tx.send_replace(started.state);
    }
}

/// Opens the store with `kek`, boots the config history and the policy, starts the config
/// service. Blocking: run it off the async runtime.
fn start(ctx: &Ctx, kek: Kek) -> Result<(Phase, Running), (u8, String)> {
    let store = Store::open_with(&ctx.data_dir(), kek.clone(), ctx.record_segment_bytes)
        .map(Arc::new)
        .map_err(|e| {
            (
                EXIT_STATE,
                format!(
                    "cannot open the record store: {}",
                    callgate_store::error_chain(&e)
                ),
            )
        })?;
    let history = StoreHistory::open(store.clone()).map_err(|e| (EXIT_STATE, error_chain(&e)))?;
    let revs = Revisions::new(
        &ctx.state_dir,
        &ctx.config_path,
        Some(Box::new(history)),
        Some(spawn_guard(&ctx.config_path, &ctx.state_dir, &ctx.nft)),
    )
    .map_err(|e| (EXIT_STATE, error_chain(&e)))?;
    let applier = HandleApplier(ctx.firewall.clone());
    let booted = revs.boot(&applier).map_err(|e| {
        (
            exit_for(&e),
            format!(
                "boot failed, the firewall stays as it was (baseline or last applied): {}",
                error_chain(&e)
            ),
        )
    })?;
    log::info!(
        "appliance {} running revision {:?}",
        booted.appliance.name,
        revs.store.active().ok().flatten()
    );
    let (config, config_thread) =
        ConfigService::spawn(revs, booted, Box::new(applier)).map_err(|e| {
            (
                EXIT_INTERNAL,
                format!("cannot start the config thread: {e}"),
            )
        })?;
    // A pair replicates records: ids of this node's parity, and a replicator the record
    // writer sends to (it connects once the appliance is paired).
    let cfg = config.config().borrow().clone();
    let (ha_tx, ha_rx) = watch::channel(None::<HaHandle>);
    let (replica_tx, replica_rx) = watch::channel(None);
    let replicator = cfg.pair.as_ref().map(|p| {
        store.set_pair_node(p.index_of(&cfg.appliance.name));
        crate::replica::spawn(
            replica_rx,
            store.clone(),
            ctx.firewall.clone(),
            ha_rx,
            config.clone(),
        )
    });
    crate::accounts::spawn(
        config.config(),
        ctx.accounts.clone(),
        ctx.control_socket.clone(),
    );
    let (sip, records) = crate::calls::start(
        config.config(),
        ctx.firewall.clone(),
        store.clone(),
        replicator.clone(),
        crate::sip_tls::identity(&ctx.state_dir, &kek),
    )
    .unzip();
    // The pair last: the SIP listeners are bound when the addresses arrive.
    let hooks: Option<Arc<dyn Hooks>> = cfg.pair.as_ref().map(|_| {
        Arc::new(crate::pair::Takeover::spawn(store.clone(), sip.clone())) as Arc<dyn Hooks>
    });
    let (pair_tx, pair) = watch::channel(PairState::Alone);
    let config_rx = config.config();
    let (uplink, cloud_subjects) = crate::uplink::spawn(
        config.clone(),
        store.clone(),
        crate::uplink::credentials(&ctx.state_dir, &kek),
        ctx.state_dir.clone(),
    );
    let intake = crate::intake::spawn(
        config.config(),
        store.clone(),
        crate::intake::identity(&ctx.state_dir, &kek),
    );
    let mut running = Running {
        kek,
        config_thread: Some(config_thread),
        config_service: config.clone(),
        records,
        config: config_rx,
        pair_tx,
        pair_thread: None,
        replica_tx,
        ha_tx,
        hooks: hooks.clone(),
        replicator: replicator.clone(),
        uplink: uplink.clone(),
        cloud_subjects: Some(cloud_subjects),
        intake,
        sip: sip.clone(),
        shape: Some(crate::restart::Shape::of(&cfg)),
    };
    crate::uplink::report_roles(pair.clone(), running.uplink.clone());
    crate::lockouts::watch(config.config(), running.uplink.clone());
    crate::retention::spawn(config.config(), store.clone());
    if let Some(sip) = &sip {
        crate::sip_tls::watch_expiry(sip.clone(), running.uplink.clone());
    }
    let started = crate::pair::start(&cfg, &ctx.state_dir, &running.kek, hooks);
    running.publish_pair(started);
    Ok((
        Phase::Running {
            config,
            store,
            sip,
            pair,
            replica: replicator,
            uplink,
        },
        running,
    ))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))
}

pub async fn run(ctx: Ctx, initial: Result<Kek, CustodyError>) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let ctx = Arc::new(ctx);
    let listener = match callgate_control::bind(&ctx.control_socket) {
        Ok(l) => l,
        Err(e) => {
            log::error!("{}", error_chain(&e));
            return ExitCode::from(EXIT_STATE);
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            log::error!("cannot install signal handlers");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };

    let mut running: Option<Running> = None;
    let first = match initial {
        Ok(kek) => {
            let c = ctx.clone();
            match blocking(move || start(&c, kek)).await {
                Ok(Ok((phase, r))) => {
                    running = Some(r);
                    phase
                }
                Ok(Err((code, msg))) => {
                    log::error!("{msg}");
                    return ExitCode::from(code);
                }
                Err(msg) => {
                    log::error!("{msg}");
                    return ExitCode::from(EXIT_INTERNAL);
                }
            }
        }
        Err(e) => {
            let reason = error_chain(&e);
            log::error!("locked: the record keys are not available, the baseline stays in force and no calls are routed: {reason}");
            // Fail closed: whatever a previous run left in the kernel gives way to the
            // baseline (management and sync only) until the keys are back.
            let cfg = callgate_config::Config::load(&ctx.config_path).ok();
            if let Err(e) = ctx
                .firewall
                .apply(Arc::new(render_baseline(cfg.as_ref())), 0)
                .await
            {
                log::error!("baseline ruleset failed: {}", error_chain(&e));
                return ExitCode::from(crate::EXIT_FIREWALL);
            }
            Phase::Locked { reason }
        }
    };
    let (phase_tx, phase_rx) = watch::channel(Arc::new(first));
    let (life_tx, mut life_rx) = mpsc::channel::<Lifecycle>(4);
    let (stop_tx, stop_rx) = watch::channel(false);
    let authorize = crate::dispatch::authorizer(phase_rx.clone());
    let cloud_phase = phase_rx.clone();
    let handler = crate::dispatch::handler(
        phase_rx,
        ctx.firewall.clone(),
        life_tx,
        ctx.custody.describe(),
        ctx.accounts.clone(),
    );
    // The cloud's subject requests go through the console's handler (each start of the
    // records, at boot or at an unlock, brings its own uplink and its requests).
    let serve_cloud = |running: &mut Option<Running>| {
        if let Some(rx) = running.as_mut().and_then(|r| r.cloud_subjects.take()) {
            crate::cloud_subjects::spawn(
                rx,
                handler.clone(),
                cloud_phase.clone(),
                ctx.state_dir.clone(),
            );
        }
    };
    serve_cloud(&mut running);
    // A commit that changes what `start` built (the proxy, the pair) ends the loop below.
    let (restart_tx, mut restart_rx) = mpsc::channel::<String>(1);
    let follow_shape = |running: &mut Option<Running>| {
        if let Some(run) = running.as_mut() {
            if let Some(shape) = run.shape.take() {
                tokio::spawn(crate::restart::follow(
                    run.config.clone(),
                    shape,
                    restart_tx.clone(),
                ));
            }
        }
    };
    follow_shape(&mut running);
    let mut exit = ExitCode::SUCCESS;
    let server = tokio::spawn(callgate_control::serve(
        listener,
        handler.clone(),
        authorize,
        crate::sessions::proc_reader(ctx.accounts.clone()),
        stop_rx,
    ));
    let status = match &**phase_tx.borrow() {
        Phase::Running { .. } => "running".to_owned(),
        Phase::Locked { reason } => format!("locked: {reason}"),
    };
    if let Err(e) = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ],
    ) {
        log::debug!("sd_notify: {e}");
    }
    log::info!(
        "ready ({status}): control socket {}",
        ctx.control_socket.display()
    );

    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { log::info!("SIGINT: shutting down"); break; }
            Some(what) = restart_rx.recv() => {
                log::warn!(
                    "the committed config changes what the daemon starts with ({what}): callgated stops in order to be started again with it; the firewall keeps enforcing the committed policy"
                );
                // The commit's answer goes out first.
                tokio::time::sleep(Duration::from_millis(300)).await;
                exit = ExitCode::from(crate::EXIT_RESTART);
                break;
            }
            Some(req) = life_rx.recv() => {
                match req {
                    Lifecycle::Provision(reply) => {
                        let r = if running.is_some() {
                            Err("already provisioned and running".to_owned())
                        } else {
                            let c = ctx.clone();
                            match blocking(move || c.custody.provision()).await {
                                Ok(Ok((kek, recovery))) => {
                                    let text = recovery.encode().to_string();
                                    unlock(&ctx, &phase_tx, &mut running, kek).await.map(|()| text)
                                }
                                Ok(Err(e)) => Err(error_chain(&e)),
                                Err(e) => Err(e),
                            }
                        };
                        let _ = reply.send(r);
                    }
                    Lifecycle::Recover(text, reply) => {
                        let r = if running.is_some() {
                            Err("the keys are available already; nothing to recover".to_owned())
                        } else {
                            match RecoveryKey::parse(&text) {
                                Err(e) => Err(format!("that is not a valid recovery key: {e}")),
                                Ok(key) => {
                                    let c = ctx.clone();
                                    match blocking(move || c.custody.recover(&key)).await {
                                        Ok(Ok(kek)) => unlock(&ctx, &phase_tx, &mut running, kek).await,
                                        Ok(Err(e)) => Err(error_chain(&e)),
                                        Err(e) => Err(e),
                                    }
                                }
                            }
                        };
                        let _ = reply.send(r);
                    }
                    Lifecycle::Reseal(reply) => {
                        let r = match &running {
                            None => Err("locked: nothing to re-seal".to_owned()),
                            Some(run) => {
                                let (c, kek) = (ctx.clone(), run.kek.clone());
                                match blocking(move || c.custody.reseal(&kek)).await {
                                    Ok(r) => r.map_err(|e| error_chain(&e)),
                                    Err(e) => Err(e),
                                }
                            }
                        };
                        let _ = reply.send(r);
                    }
                    Lifecycle::Decommission(reply) => {
                        let r = decommission(&ctx, &phase_tx, &mut running).await;
                        let _ = reply.send(r);
                    }
                    Lifecycle::PairInit(reply) => {
                        let r = pair_init(&ctx, &mut running).await;
                        let _ = reply.send(r);
                    }
                    Lifecycle::PairJoin(text, reply) => {
                        let r = pair_join(&ctx, &mut running, text).await;
                        let _ = reply.send(r);
                    }
                    Lifecycle::Unpair(reply) => {
                        let r = unpair(&ctx, &mut running).await;
                        let _ = reply.send(r);
                    }
                    Lifecycle::PairRekey(reply) => {
                        let r = pair_rekey(&ctx, &mut running).await;
                        let _ = reply.send(r);
                    }
                    Lifecycle::UplinkCsr(reply) => {
                        let c = ctx.clone();
                        let r = with_running(&mut running, move |run| {
                            let key = crate::uplink::load_or_make_key(&c.state_dir, &run.kek)?;
                            let name = run.config.borrow().appliance.name.to_string();
                            key.csr_pem(&name, &[]).map_err(|e| e.to_string())
                        })
                        .await;
                        let _ = reply.send(r);
                    }
                    Lifecycle::SubjectErase {
                        store,
                        number,
                        by,
                        peer,
                        reply,
                    } => {
                        let c = ctx.clone();
                        let paired = peer.is_some();
                        let r = with_running(&mut running, move |run| {
                            let name = run.config.borrow().appliance.name.to_string();
                            crate::subjects::erase(
                                &c.state_dir,
                                &run.kek,
                                &name,
                                &store,
                                &number,
                                &by,
                                peer.as_deref(),
                            )
                        })
                        .await;
                        // Every record stored before the erasure is sent to the peer
                        // before the request is: the record writer has finished (stored
                        // and sent) everything handed to it before now.
                        let records = running.as_ref().and_then(|run| run.records.clone());
                        if let (true, Ok(_), Some(rec)) = (paired, &r, records) {
                            if !rec.flush(ERASE_FLUSH).await {
                                log::warn!(
                                    "subject erasure: records still being written after {ERASE_FLUSH:?}; the peer is asked anyway"
                                );
                            }
                        }
                        let _ = reply.send(r);
                    }
                    Lifecycle::SubjectEraseFinish {
                        store,
                        number,
                        by,
                        first,
                        peer,
                        reply,
                    } => {
                        let c = ctx.clone();
                        let r = with_running(&mut running, move |run| {
                            let name = run.config.borrow().appliance.name.to_string();
                            crate::subjects::finish(
                                &c.state_dir,
                                &run.kek,
                                &name,
                                &store,
                                &number,
                                &by,
                                *first,
                                *peer,
                            )
                        })
                        .await;
                        let _ = reply.send(r);
                    }
                    Lifecycle::SipTlsCsr(reply) => {
                        let c = ctx.clone();
                        let r = with_running(&mut running, move |run| {
                            let cfg = run.config.borrow().clone();
                            crate::sip_tls::csr(&c.state_dir, &run.kek, &cfg)
                        })
                        .await;
                        let _ = reply.send(r);
                    }
                    Lifecycle::SipTlsInstall(pem, reply) => {
                        let c = ctx.clone();
                        let r = with_running(&mut running, move |run| {
                            crate::sip_tls::install(&c.state_dir, &run.kek, &pem)
                        })
                        .await;
                        let r = match (r, &running) {
                            (Ok((id, info)), Some(run)) => match &run.sip {
                                Some(sip) => match sip.set_tls_identity(Some(id)).await {
                                    Ok(()) => Ok(info),
                                    Err(e) => Err(format!("kept, but the proxy did not take it: {e}")),
                                },
                                None => Ok(info),
                            },
                            (Ok(_), None) => Err("locked".to_owned()),
                            (Err(e), _) => Err(e),
                        };
                        let _ = reply.send(r);
                    }
                    Lifecycle::IntakeCsr(reply) => {
                        let c = ctx.clone();
                        let r = with_running(&mut running, move |run| {
                            let cfg = run.config.borrow().clone();
                            crate::intake::csr(&c.state_dir, &run.kek, &cfg)
                        })
                        .await;
                        let _ = reply.send(r);
                    }
                    Lifecycle::IntakeInstall(pem, reply) => {
                        let c = ctx.clone();
                        let r = with_running(&mut running, move |run| {
                            crate::intake::install(&c.state_dir, &run.kek, &pem)
                        })
                        .await;
                        let r = match (r, &running) {
                            (Ok((id, info)), Some(run)) => {
                                run.intake.installed(id).await;
                                Ok(info)
                            }
                            (Ok(_), None) => Err("locked".to_owned()),
                            (Err(e), _) => Err(e),
                        };
                        let _ = reply.send(r);
                    }
                    Lifecycle::UplinkInstall(pem, reply) => {
                        let c = ctx.clone();
                        let r = with_running(&mut running, move |run| {
                            let cfg = run.config.borrow().clone();
                            crate::uplink::install_cert(&c.state_dir, &run.kek, &cfg, &pem)
                        })
                        .await;
                        let r = match (r, &running) {
                            (Ok((creds, info)), Some(run)) => {
                                run.uplink.installed(creds).await;
                                Ok(info)
                            }
                            (Ok(_), None) => Err("locked".to_owned()),
                            (Err(e), _) => Err(e),
                        };
                        let _ = reply.send(r);
                    }
                }
                serve_cloud(&mut running);
                follow_shape(&mut running);
            }
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // First the pair: step down where the peer sees it, so it takes over at once.
    let drain = ctx.drain;
    let _ = with_running(&mut running, move |run| {
        run.stop_pair(PairState::Unpaired, drain);
        Ok(())
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(ctx.drain, server).await;
    let _ = std::fs::remove_file(&ctx.control_socket);
    phase_tx.send_replace(Arc::new(Phase::Locked {
        reason: "stopping".into(),
    }));
    if let Some(run) = running.take() {
        // Records of calls that ended just before the signal: made durable before we go.
        if let Some(r) = &run.records {
            if !r.flush(ctx.drain).await {
                log::warn!(
                    "call records still being written after {:?}; stopping anyway",
                    ctx.drain
                );
            }
        }
        // The broker publishes the `offline` status (the will) as we go.
        let _ = tokio::time::timeout(Duration::from_secs(1), run.uplink.stop()).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), run.intake.stop()).await;
        stop_config(run, ctx.drain).await;
    }
    // The kernel keeps enforcing the applied ruleset after we exit.
    exit
}

async fn unlock(
    ctx: &Arc<Ctx>,
    phase_tx: &watch::Sender<Arc<Phase>>,
    running: &mut Option<Running>,
    kek: Kek,
) -> Result<(), String> {
    let c = ctx.clone();
    match blocking(move || start(&c, kek)).await? {
        Ok((phase, r)) => {
            *running = Some(r);
            phase_tx.send_replace(Arc::new(phase));
            notify_status("running");
            log::info!("unlocked: records open, full policy applied");
            Ok(())
        }
        Err((_, msg)) => {
            log::error!("{msg}");
            Err(msg)
        }
    }
}

/// Stops the config thread and waits for it to end.
async fn stop_config(mut run: Running, drain: Duration) {
    let Some(join) = run.config_thread.take() else {
        return;
    };
    run.config_service.stop();
    drop(run);
    let _ = blocking(move || {
        let start = std::time::Instant::now();
        while !join.is_finished() && start.elapsed() < drain {
            std::thread::sleep(Duration::from_millis(20));
        }
        if join.is_finished() {
            let _ = join.join();
        } else {
            log::warn!("the config thread did not stop within {drain:?}");
        }
    })
    .await;
}

async fn decommission(
    ctx: &Arc<Ctx>,
    phase_tx: &watch::Sender<Arc<Phase>>,
    running: &mut Option<Running>,
) -> Result<(), String> {
    log::warn!("decommission: clearing the TPM and destroying every record on this appliance");
    phase_tx.send_replace(Arc::new(Phase::Locked {
        reason: "decommissioning".into(),
    }));
    let drain = ctx.drain;
    let _ = with_running(running, move |run| {
        run.stop_pair(PairState::Unpaired, drain);
        Ok(())
    })
    .await;
    if let Some(run) = running.take() {
        stop_config(run, ctx.drain).await;
    }
    if let Err(e) = crate::pair::remove_key(&ctx.state_dir) {
        log::error!("decommission: {e}");
    }
    // Fail closed first: nothing but management and sync while the keys go away.
    let cfg = callgate_config::Config::load(&ctx.config_path).ok();
    let baseline = Arc::new(render_baseline(cfg.as_ref()));
    if let Err(e) = ctx.firewall.apply(baseline, 0).await {
        log::error!("decommission: baseline ruleset failed: {}", error_chain(&e));
    }
    let c = ctx.clone();
    let r = blocking(move || c.custody.decommission(&c.data_dir())).await?;
    let reason = match &r {
        Ok(()) => "not provisioned (decommissioned)".to_owned(),
        Err(e) => format!("decommission incomplete: {}", error_chain(e)),
    };
    notify_status(&format!("locked: {reason}"));
    phase_tx.send_replace(Arc::new(Phase::Locked { reason }));
    r.map_err(|e| error_chain(&e))
}

/// systemd's status text for the unit (`systemctl status`, the image's boot report)
/// follows the phase: set at READY, and again when provisioning, recovery or
/// decommission moves the daemon between locked and running.
fn notify_status(status: &str) {
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]) {
        log::debug!("sd_notify: {e}");
    }
}

/// Takes the running state off the async runtime for `f`, then puts it back.
async fn with_running<T: Send + 'static>(
    running: &mut Option<Running>,
    f: impl FnOnce(&mut Running) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let Some(mut run) = running.take() else {
        return Err("locked: the keys are not available".to_owned());
    };
    let (run, r) = blocking(move || {
        let r = f(&mut run);
        (run, r)
    })
    .await?;
    *running = Some(run);
    r
}

fn pair_configured(run: &Running) -> Result<(), String> {
    if run.config.borrow().pair.is_none() {
        return Err("the config has no [pair]: commit one that names both appliances first".into());
    }
    Ok(())
}

async fn pair_init(ctx: &Arc<Ctx>, running: &mut Option<Running>) -> Result<String, String> {
    let c = ctx.clone();
    with_running(running, move |run| {
        pair_configured(run)?;
        if crate::pair::key_path(&c.state_dir).exists() {
            return Err("this appliance is paired already: callgate pair unpair first".into());
        }
        let secret = callgate_vault::PairingSecret::generate().map_err(|e| e.to_string())?;
        let key = secret.pair_key().map_err(|e| e.to_string())?;
        crate::replica::remove_identity(&c.state_dir);
        crate::pair::store_key(&c.state_dir, &run.kek, &key)?;
        run.start_pair(&c.state_dir, c.drain);
        log::warn!("pair: a new pair key was made; the pairing secret was shown once");
        Ok(secret.encode().to_string())
    })
    .await
}

async fn pair_join(
    ctx: &Arc<Ctx>,
    running: &mut Option<Running>,
    text: String,
) -> Result<(), String> {
    let c = ctx.clone();
    with_running(running, move |run| {
        pair_configured(run)?;
        let secret = callgate_vault::PairingSecret::parse(&text)
            .map_err(|e| format!("that is not a valid pairing secret: {e}"))?;
        let key = secret.pair_key().map_err(|e| e.to_string())?;
        crate::replica::remove_identity(&c.state_dir);
        crate::pair::store_key(&c.state_dir, &run.kek, &key)?;
        run.start_pair(&c.state_dir, c.drain);
        log::warn!("pair: joined with a pairing secret");
        Ok(())
    })
    .await
}

async fn unpair(ctx: &Arc<Ctx>, running: &mut Option<Running>) -> Result<(), String> {
    let c = ctx.clone();
    with_running(running, move |run| {
        let next = if run.config.borrow().pair.is_some() {
            PairState::Unpaired
        } else {
            PairState::Alone
        };
        run.stop_pair(next, c.drain);
        crate::pair::remove_key(&c.state_dir)?;
        crate::replica::remove_identity(&c.state_dir);
        let cfg = run.config.borrow().clone();
        callgate_ha::release_all(&crate::pair::vips(&cfg));
        log::warn!("pair: unpaired; the pair key is forgotten");
        Ok(())
    })
    .await
}

async fn pair_rekey(ctx: &Arc<Ctx>, running: &mut Option<Running>) -> Result<(), String> {
    let c = ctx.clone();
    with_running(running, move |run| {
        let ha = run
            .ha_tx
            .borrow()
            .clone()
            .ok_or("this appliance is not paired")?;
        let rep = run
            .replicator
            .clone()
            .ok_or("this appliance has no [pair] in its config")?;
        if !rep.status().connected {
            return Err("the peer is not connected over the sync channel: nothing changed".into());
        }
        let key: callgate_vault::Zeroizing<[u8; 32]> = callgate_vault::Zeroizing::new(
            callgate_vault::random_bytes::<32>().map_err(|e| e.to_string())?,
        );
        // First accept the new key, then hand it over, then seal under it: no heartbeat
        // of either side is refused on the way.
        ha.accept_key(callgate_pair::PairKey::from_bytes(*key));
        if !rep.rekey(&key) {
            return Err("the peer did not confirm the new key within 2 s: this appliance keeps the old one (check `show pair` on both)".into());
        }
        crate::pair::store_key(&c.state_dir, &run.kek, &key).map_err(|e| {
            log::error!("pair: the peer keeps the new key but this appliance cannot: {e}");
            format!("the peer keeps the new key but this appliance cannot: {e}")
        })?;
        ha.rekey(callgate_pair::PairKey::from_bytes(*key));
        rep.set_key(&key);
        log::warn!("pair: re-keyed; both appliances keep the new pair key");
        Ok(())
    })
    .await
}
