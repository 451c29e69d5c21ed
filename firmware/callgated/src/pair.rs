//! The pair in the daemon: the pair key on disk (wrapped under the KEK), the heartbeat
//! thread's settings from the config, and what `show pair` and `failover` see.
//!
//! - No `[pair]` in the config: the appliance runs alone ([`PairState::Alone`]).
//! - `[pair]` but no pair key (`callgate pair init` / `join` not run yet):
//!   [`PairState::Unpaired`]. It holds no virtual addresses: a board installed as the
//!   second of a pair must not take the addresses of the first before it can hear it.
//! - Paired: the heartbeat thread runs ([`PairState::Running`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use callgate_config::{Config, ZoneName};
use callgate_ha::{
    HaHandle, HaSettings, HaThread, Hooks, PathSettings, Ready, VipSpec, ACTIVATE_WAIT,
};
use callgate_proxy::driver::SipHandle;
use callgate_store::{Cdr, Store};
use callgate_vault::{unwrap_pair_key, wrap_pair_key, Kek, Zeroizing};

use crate::replica;

/// The wrapped pair key, in the state directory.
pub const KEY_FILE: &str = "pair.key";

/// What the rest of the daemon sees of the pair.
#[derive(Debug, Clone)]
pub enum PairState {
    Alone,
    Unpaired,
    Running(HaHandle),
    /// Paired, but the heartbeat could not start (the reason is logged and shown).
    Failed(String),
}

pub fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join(KEY_FILE)
}

/// The pair key, if this appliance is paired.
pub fn load_key(state_dir: &Path, kek: &Kek) -> Result<Option<Zeroizing<[u8; 32]>>, String> {
    let path = key_path(state_dir);
    match std::fs::read(&path) {
        Ok(blob) => unwrap_pair_key(kek, &blob)
            .map(Some)
            .map_err(|e| format!("{}: cannot unwrap the pair key: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Keeps `key` wrapped under the KEK.
pub fn store_key(state_dir: &Path, kek: &Kek, key: &[u8; 32]) -> Result<(), String> {
    let blob = wrap_pair_key(kek, key).map_err(|e| format!("cannot wrap the pair key: {e}"))?;
    write_private(&key_path(state_dir), &blob)
}

/// Writes `blob` to `path` as root's alone (0600): a temporary file beside it, synced,
/// renamed into place, the directory synced.
pub fn write_private(path: &Path, blob: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(blob)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

/// Forgets the pair key.
pub fn remove_key(state_dir: &Path) -> Result<(), String> {
    let path = key_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The virtual addresses of the config (for release when unpaired).
pub fn vips(cfg: &Config) -> Vec<VipSpec> {
    let Some(pair) = &cfg.pair else {
        return Vec::new();
    };
    pair.vip
        .iter()
        .filter_map(|v| {
            Some(VipSpec {
                interface: v.interface(&cfg.zones)?.as_str().to_owned(),
                addr: v.address.get_ref().addr(),
                prefix: v.address.get_ref().prefix_len(),
            })
        })
        .collect()
}

/// What a takeover injects before the addresses move, and what stepping down drops.
///
/// The heartbeat thread calls the hooks and goes on ticking; the steps run on one task,
/// in the order they were called, so a stand-down can never overtake the takeover it
/// undoes.
pub struct Takeover {
    steps: tokio::sync::mpsc::UnboundedSender<Step>,
}

enum Step {
    Activate(Ready),
    Deactivate,
}

impl Takeover {
    /// Starts the task on the current runtime.
    pub fn spawn(store: Arc<Store>, sip: Option<SipHandle>) -> Takeover {
        let (steps, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(step) = rx.recv().await {
                let Some(sip) = &sip else { continue };
                match step {
                    Step::Activate(ready) => {
                        carry_on(&store, sip).await;
                        drop(ready);
                    }
                    Step::Deactivate => match sip.forget_all().await {
                        Ok(n) => log::warn!("pair: standing down: {n} calls left to the peer"),
                        Err(e) => log::error!("pair: standing down: {e}"),
                    },
                }
            }
        });
        Takeover { steps }
    }
}

/// Hands the replicated calls in progress to the proxy.
async fn carry_on(store: &Arc<Store>, sip: &SipHandle) {
    let st = store.clone();
    let recs: Vec<(u64, Cdr)> = match tokio::task::spawn_blocking(move || {
        st.calls_in_progress_now()
            .into_iter()
            .map(|r| (r.id, r.value))
            .collect()
    })
    .await
    {
        Ok(r) => r,
        Err(e) => {
            log::error!("pair: taking over: reading the calls in progress failed: {e}");
            return;
        }
    };
    if recs.is_empty() {
        return;
    }
    let n = recs.len();
    match tokio::time::timeout(ACTIVATE_WAIT, sip.resume(recs)).await {
        Ok(Ok(c)) => log::warn!("pair: taking over: {c} new of {n} calls in progress carried on"),
        Ok(Err(e)) => log::error!("pair: taking over: the proxy did not take the calls: {e}"),
        Err(_) => {
            log::error!("pair: taking over: the proxy did not answer within {ACTIVATE_WAIT:?}")
        }
    }
}

impl Hooks for Takeover {
    fn activating(&self, ready: Ready) {
        // The runtime gone means the daemon is stopping: `ready` is dropped with the step.
        let _ = self.steps.send(Step::Activate(ready));
    }

    fn deactivated(&self) {
        let _ = self.steps.send(Step::Deactivate);
    }
}

/// The replication settings of a paired appliance: the sync link's addresses (the `sync`
/// zone's heartbeat path, else the first), the heartbeat port + 1, the identity.
pub fn replica_settings(
    cfg: &Config,
    key: &[u8; 32],
    state_dir: &Path,
    kek: &Kek,
) -> Result<replica::Settings, String> {
    let pair = cfg.pair.as_ref().ok_or("no [pair] in the config")?;
    let me = &cfg.appliance.name;
    let node = pair
        .index_of(me)
        .ok_or("this appliance is not a node of [pair]")?;
    let paths = pair.paths(me);
    let path = paths
        .iter()
        .find(|p| p.zone == ZoneName::Sync)
        .or(paths.first())
        .ok_or("no heartbeat path")?;
    let (identity, pin) = replica::load_identity(state_dir, kek, me.as_str())?;
    Ok(replica::Settings {
        node,
        local: path.local,
        peer: path.peer,
        port: cfg.heartbeat_port().saturating_add(1),
        key: *key,
        identity,
        pin,
        state_dir: state_dir.to_path_buf(),
        kek: kek.clone(),
    })
}

/// The heartbeat thread's settings from a validated config.
pub fn settings(cfg: &Config, key: &[u8; 32], guard_exe: PathBuf) -> Result<HaSettings, String> {
    let pair = cfg.pair.as_ref().ok_or("no [pair] in the config")?;
    let me = &cfg.appliance.name;
    let (mine, peer) = pair
        .split(me)
        .ok_or_else(|| format!("appliance {me} is not a node of [pair]"))?;
    let node = pair.index_of(me).ok_or("no node index")?;
    let mut paths = Vec::new();
    for p in pair.paths(me) {
        let iface = cfg
            .zones
            .interfaces(p.zone)
            .first()
            .map(|i| i.as_str().to_owned())
            .ok_or_else(|| format!("zone {} has no interface", p.zone))?;
        paths.push(PathSettings {
            zone: p.zone.to_string(),
            interface: iface,
            local: p.local,
            peer: p.peer,
        });
    }
    let monitored = [ZoneName::Wan, ZoneName::Private]
        .into_iter()
        .flat_map(|z| cfg.zones.interfaces(z))
        .map(|i| i.as_str().to_owned())
        .collect();
    let ms = |v: u32| Duration::from_millis(u64::from(v));
    Ok(HaSettings {
        node_name: mine.name.get_ref().to_string(),
        peer_name: peer.name.get_ref().to_string(),
        node,
        priority: *mine.priority.get_ref(),
        interval: ms(pair.heartbeat_interval_ms()),
        misses: pair.dead_after_misses(),
        preempt_delay: pair
            .preempt_delay_secs()
            .map(|s| Duration::from_secs(u64::from(s))),
        late_after: ms(pair.late_after_ms()),
        port: cfg.heartbeat_port(),
        paths,
        vips: vips(cfg),
        monitored,
        key: callgate_pair::PairKey::from_bytes(*key),
        guard_exe: Some(guard_exe),
        hooks: None,
    })
}

/// What [`start`] brings up.
pub struct Started {
    pub state: PairState,
    pub thread: Option<HaThread>,
    /// Replication's settings, when paired.
    pub replica: Option<Arc<replica::Settings>>,
}

/// Starts the pair as the config and the key on disk say.
pub fn start(cfg: &Config, state_dir: &Path, kek: &Kek, hooks: Option<Arc<dyn Hooks>>) -> Started {
    let alone = |state| Started {
        state,
        thread: None,
        replica: None,
    };
    if cfg.pair.is_none() {
        return alone(PairState::Alone);
    }
    let key = match load_key(state_dir, kek) {
        Ok(Some(k)) => k,
        Ok(None) => {
            log::error!(
                "the config has a [pair] but this appliance is not paired (callgate pair init / pair join): it holds no virtual addresses"
            );
            callgate_ha::release_all(&vips(cfg));
            return alone(PairState::Unpaired);
        }
        Err(e) => {
            log::error!("{e}; this appliance holds no virtual addresses");
            callgate_ha::release_all(&vips(cfg));
            return alone(PairState::Failed(e));
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            return alone(PairState::Failed(format!(
                "cannot find our own executable: {e}"
            )))
        }
    };
    let replica = match replica_settings(cfg, &key, state_dir, kek) {
        Ok(r) => Some(Arc::new(r)),
        Err(e) => {
            log::error!("pair: no replication: {e}");
            None
        }
    };
    let spawned = settings(cfg, &key, exe).and_then(|mut s| {
        // Without replication there is no state to inject or drop at a role change.
        s.hooks = if replica.is_some() { hooks } else { None };
        callgate_ha::spawn(s).map_err(|e| callgate_firewall::error_chain(&e))
    });
    match spawned {
        Ok((handle, thread)) => {
            log::info!("pair: heartbeat running");
            Started {
                state: PairState::Running(handle),
                thread: Some(thread),
                replica,
            }
        }
        Err(e) => {
            log::error!(
                "pair: the heartbeat does not run: {e}; this appliance holds no virtual addresses"
            );
            callgate_ha::release_all(&vips(cfg));
            alone(PairState::Failed(e))
        }
    }
}

/// `callgate failover`: a make-before-break handover with no dropped call. New calls are
/// left to the peer (no answer: the caller's retransmission reaches the peer once it
/// holds the addresses), the calls in setup here finish (answered or not), then the
/// standby is asked to take over, and this node releases the addresses once it has.
pub async fn planned_failover(
    h: &HaHandle,
    sip: Option<&SipHandle>,
    ring_timeout: Duration,
) -> callgate_control::Response {
    use callgate_control::Response;
    let s = h.status();
    if s.role != "active" {
        return Response::err(
            "this appliance is not the active one: run failover on the active appliance",
        );
    }
    if !s.peer_alive {
        return Response::err("the peer is not heard: a handover now would leave nobody active");
    }
    if !s.peer_synced {
        return Response::err("the peer does not hold this appliance's calls yet (not synced): a handover now would drop them");
    }
    let deadline = tokio::time::Instant::now() + ring_timeout + Duration::from_secs(5);
    if let Some(sip) = sip {
        loop {
            match sip.drain(true).await {
                Ok(0) => break,
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(n) => {
                    let _ = sip.drain(false).await;
                    return Response::err(format!(
                        "{n} calls still in setup after {ring_timeout:?}: handover abandoned"
                    ));
                }
                Err(e) => return Response::err(e.to_string()),
            }
        }
    }
    let undrain = || async {
        if let Some(sip) = sip {
            let _ = sip.drain(false).await;
        }
    };
    if !h.handover() {
        undrain().await;
        return Response::err("the heartbeat thread is gone");
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.status().role == "active" && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Standing down gave the proxy a fresh start; if the peer did not take over, this
    // node takes new calls again.
    undrain().await;
    let s = h.status();
    if s.role == "active" {
        return Response::err("the peer did not take over within 5 s: this appliance stays active");
    }
    Response::ok(
        format!(
            "handed over: {} is active (term {}), this appliance is {}",
            s.peer,
            s.peer_term.unwrap_or(0),
            s.role
        ),
        serde_json::json!({"role": s.role, "peer_term": s.peer_term}),
    )
}

/// `show pair` text.
pub fn show_text(state: &PairState, rep: Option<&replica::ReplicaStatus>) -> String {
    let mut out = show_ha_text(state);
    if let Some(r) = rep {
        out.push_str(&format!(
            "replication: {}{}, lag {} records / {} ms, batches sent {} acknowledged {} received {} ({} records), last acknowledgement wait {}, connections {}, refused {}{}\n",
            if r.connected { "connected" } else { "not connected" },
            r.peer.as_ref().map(|p| format!(" to {p}")).unwrap_or_default(),
            r.lag_records,
            r.lag_ms,
            r.batches_sent,
            r.batches_acked,
            r.batches_received,
            r.records_received,
            r.last_ack_ms.map(|m| format!("{m} ms")).unwrap_or_else(|| "-".into()),
            r.connections,
            r.refused,
            r.last_error.as_ref().map(|e| format!(", last error: {e}")).unwrap_or_default()
        ));
    }
    out
}

fn show_ha_text(state: &PairState) -> String {
    match state {
        PairState::Alone => "alone: no [pair] in the config\n".into(),
        PairState::Unpaired => {
            "unpaired: the config has a [pair] but no pair key (callgate pair init on one appliance, callgate pair join on the other); no virtual addresses held\n".into()
        }
        PairState::Failed(e) => format!("failed: {e}\n"),
        PairState::Running(h) => {
            let s = h.status();
            let mut out = format!(
                "node {} ({}), term {}, priority {}, health {}%\n",
                s.node, s.role, s.term, s.priority, s.health
            );
            match (&s.peer_role, s.peer_alive) {
                (Some(r), true) => out.push_str(&format!(
                    "peer {} ({r}), term {}, priority {}, health {}%\n",
                    s.peer,
                    s.peer_term.unwrap_or(0),
                    s.peer_priority.unwrap_or(0),
                    s.peer_health.unwrap_or(0)
                )),
                _ => out.push_str(&format!("peer {}: not heard\n", s.peer)),
            }
            for p in &s.paths {
                out.push_str(&format!(
                    "path {} ({} {} → {}): link {}, last heard {}, sent {}, received {}\n",
                    p.zone,
                    p.interface,
                    p.local,
                    p.peer,
                    if p.link_up { "up" } else { "down" },
                    p.last_heard_ms
                        .map(|m| format!("{m} ms ago"))
                        .unwrap_or_else(|| "never".into()),
                    p.sent,
                    p.received
                ));
            }
            out.push_str(&format!(
                "virtual addresses {}: {}\n",
                if s.vips_held { "held" } else { "not held" },
                s.vips.join(", ")
            ));
            let r = &s.rejected;
            out.push_str(&format!(
                "rejected heartbeats: wrong source {}, length {}, header {}, authentication {}, field {}, replay {}, unknown session {}\n",
                r.wrong_source, r.length, r.header, r.auth, r.field, r.replay, r.unknown_session
            ));
            out.push_str(&format!(
                "role changes {}{}, late ticks {}\n",
                s.transitions,
                s.last_transition
                    .as_ref()
                    .map(|t| format!(" (last: {t})"))
                    .unwrap_or_default(),
                s.late_ticks
            ));
            out
        }
    }
}

/// `show pair --json` data.
pub fn show_json(state: &PairState, rep: Option<&replica::ReplicaStatus>) -> serde_json::Value {
    let mut v = show_ha_json(state);
    if let Some(r) = rep {
        v["replication"] = serde_json::to_value(r).unwrap_or_default();
    }
    v
}

fn show_ha_json(state: &PairState) -> serde_json::Value {
    match state {
        PairState::Alone => serde_json::json!({"state": "alone"}),
        PairState::Unpaired => serde_json::json!({"state": "unpaired"}),
        PairState::Failed(e) => serde_json::json!({"state": "failed", "error": e}),
        PairState::Running(h) => {
            let mut v = serde_json::to_value(h.status()).unwrap_or_default();
            v["state"] = serde_json::json!("running");
            v
        }
    }
}
