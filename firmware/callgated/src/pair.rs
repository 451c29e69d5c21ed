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

use callgate_config::{Config, ZoneName};
use callgate_ha::{HaHandle, HaSettings, HaThread, PathSettings, VipSpec};
use callgate_vault::{unwrap_pair_key, wrap_pair_key, Kek, Zeroizing};

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

/// Keeps `key` wrapped under the KEK: written to a temporary file (0600), synced, renamed.
pub fn store_key(state_dir: &Path, kek: &Kek, key: &[u8; 32]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let blob = wrap_pair_key(kek, key).map_err(|e| format!("cannot wrap the pair key: {e}"))?;
    let path = key_path(state_dir);
    let tmp = state_dir.join(format!("{KEY_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&blob)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
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
    })
}

/// Starts the pair as the config and the key on disk say.
pub fn start(cfg: &Config, state_dir: &Path, kek: &Kek) -> (PairState, Option<HaThread>) {
    if cfg.pair.is_none() {
        return (PairState::Alone, None);
    }
    let key = match load_key(state_dir, kek) {
        Ok(Some(k)) => k,
        Ok(None) => {
            log::error!(
                "the config has a [pair] but this appliance is not paired (callgate pair init / pair join): it holds no virtual addresses"
            );
            callgate_ha::release_all(&vips(cfg));
            return (PairState::Unpaired, None);
        }
        Err(e) => {
            log::error!("{e}; this appliance holds no virtual addresses");
            callgate_ha::release_all(&vips(cfg));
            return (PairState::Failed(e), None);
        }
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            return (
                PairState::Failed(format!("cannot find our own executable: {e}")),
                None,
            )
        }
    };
    let spawned = settings(cfg, &key, exe)
        .and_then(|s| callgate_ha::spawn(s).map_err(|e| callgate_firewall::error_chain(&e)));
    match spawned {
        Ok((handle, thread)) => {
            log::info!("pair: heartbeat running");
            (PairState::Running(handle), Some(thread))
        }
        Err(e) => {
            log::error!(
                "pair: the heartbeat does not run: {e}; this appliance holds no virtual addresses"
            );
            callgate_ha::release_all(&vips(cfg));
            (PairState::Failed(e), None)
        }
    }
}

/// `show pair` text.
pub fn show_text(state: &PairState) -> String {
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
pub fn show_json(state: &PairState) -> serde_json::Value {
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
