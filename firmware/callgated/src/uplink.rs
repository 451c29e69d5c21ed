//! The daemon's side of the cloud uplink (`callgate_uplink`): settings from `[uplink]`,
//! the appliance's uplink key sealed under the KEK in `<state>/uplink.key`, the installed
//! certificate chain in `<state>/uplink.crt` (public; both kept by [`crate::identity`]), the task started with the store and
//! told of every config change and installed certificate.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use callgate_config::Config;
use callgate_store::Store;
use callgate_uplink::{ClientKey, Credentials, Settings, Status, UplinkHandle};
use callgate_vault::Kek;

use crate::identity::{write_durably, UPLINK};
use serde_json::json;
use tokio::sync::mpsc;

/// The uplink's settings from the config; `None` without `[uplink]`.
pub fn settings(cfg: &Config) -> Option<Settings> {
    let u = cfg.uplink.as_ref()?;
    Some(Settings {
        broker: u.broker.get_ref().clone(),
        address: u.address.as_ref().map(|a| *a.get_ref()),
        port: u.port(),
        ca_pem: u.ca.get_ref().clone(),
        client_id: cfg.appliance.name.to_string(),
        prefix: u.topic_prefix(&cfg.appliance.name),
        keepalive: Duration::from_secs(u64::from(u.keepalive_secs())),
        batch_records: u.batch_records() as usize,
        inflight: u.inflight() as usize,
        backlog_alarm: u.backlog_alarm() as usize,
        boot_delay_max: Duration::from_secs(u64::from(u.boot_delay_max_secs())),
        backoff_max: Duration::from_secs(u64::from(u.backoff_max_secs())),
        cert_warn: Duration::from_secs(u64::from(u.cert_warn_days()) * 86_400),
    })
}

/// The uplink key; made and sealed the first time.
pub fn load_or_make_key(state_dir: &Path, kek: &Kek) -> Result<ClientKey, String> {
    UPLINK.load_or_make_key(state_dir, kek)
}

/// Key and certificate, when both are there and readable.
pub fn credentials(state_dir: &Path, kek: &Kek) -> Option<Credentials> {
    UPLINK
        .load(state_dir, kek)
        .map(|(key, chain_pem)| Credentials { key, chain_pem })
}

/// Checks `pem` against this appliance's key, name and the configured fleet CA, and
/// keeps it; the credentials to run with.
pub fn install_cert(
    state_dir: &Path,
    kek: &Kek,
    cfg: &Config,
    pem: &str,
) -> Result<(Credentials, callgate_uplink::CertInfo), String> {
    let u = cfg
        .uplink
        .as_ref()
        .ok_or("no [uplink] in the running config: commit one with the fleet CA first")?;
    let key = UPLINK
        .load_key(state_dir, kek)?
        .ok_or("no uplink key yet: run `callgate uplink csr` and have the fleet CA sign it")?;
    let info = callgate_uplink::check_certificate(
        pem,
        &key,
        cfg.appliance.name.as_str(),
        u.ca.get_ref(),
        callgate_uplink::UnixTime::now(),
    )
    .map_err(|e| e.to_string())?;
    UPLINK.save_chain(state_dir, pem)?;
    Ok((
        Credentials {
            key,
            chain_pem: pem.to_owned(),
        },
        info,
    ))
}

/// The running uplink: its handle, and where installed credentials go.
#[derive(Debug, Clone)]
pub struct Uplink {
    handle: UplinkHandle,
    creds: mpsc::Sender<Credentials>,
}

impl Uplink {
    pub fn status(&self) -> Status {
        self.handle.status()
    }
    /// Runs with newly installed credentials.
    pub async fn installed(&self, c: Credentials) {
        let _ = self.creds.send(c).await;
    }
    /// An event for the events topic.
    pub fn event(&self, kind: &str, detail: serde_json::Value) {
        self.handle.event(kind, detail);
    }
    /// A message in memory for `leaf` under the prefix.
    pub fn publish(&self, leaf: &str, doc: &serde_json::Value) {
        self.handle.publish(leaf, doc);
    }
    /// A message kept in the store's outbox until the broker has it (it must hold no
    /// number or name); in memory if the store refuses it (said in the log).
    pub async fn publish_durably(&self, leaf: &str, doc: serde_json::Value) {
        let (h, l, d) = (self.handle.clone(), leaf.to_owned(), doc.clone());
        match tokio::task::spawn_blocking(move || h.publish_durably(&l, &d)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                log::error!(
                    "uplink: a message for {leaf} could not be kept, it waits in memory: {e}"
                );
                self.handle.publish(leaf, &doc);
            }
            Err(e) => {
                log::error!(
                    "uplink: a message for {leaf} could not be kept, it waits in memory: {e}"
                );
                self.handle.publish(leaf, &doc);
            }
        }
    }
    /// An event kept durably, as [`Self::publish_durably`] keeps it.
    pub async fn event_durably(&self, kind: &str, detail: serde_json::Value) {
        let doc = json!({"event": kind, "time_ms": callgate_uplink::now_ms(), "detail": detail});
        self.publish_durably("events", doc).await;
    }
    pub async fn stop(&self) {
        self.handle.stop().await;
    }
}

/// Starts the uplink and the task that follows the config and applies config documents
/// from the cloud; the subject requests from the cloud come out of the receiver
/// (`crate::cloud_subjects` serves them).
pub fn spawn(
    service: callgate_revisions::ConfigService,
    store: Arc<Store>,
    creds: Option<Credentials>,
    state_dir: std::path::PathBuf,
) -> (Uplink, mpsc::Receiver<Vec<u8>>) {
    let config = service.config();
    let cfg = config.borrow().clone();
    let first = settings(&cfg);
    let (handle, mut desired) =
        callgate_uplink::spawn(first.clone().map(|s| (s, creds.clone())), store);
    let (creds_tx, mut creds_rx) = mpsc::channel::<Credentials>(4);
    let (subjects_tx, subjects_rx) = mpsc::channel::<Vec<u8>>(8);
    let h = handle.clone();
    tokio::spawn(async move {
        let mut config = config;
        let mut current = first;
        let mut creds = creds;
        loop {
            tokio::select! {
                changed = config.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let next = settings(&config.borrow_and_update());
                    if next != current {
                        log::info!("uplink: the config changed; reconnecting with it");
                        current = next.clone();
                        h.reconfigure(next.map(|s| (s, creds.clone()))).await;
                    }
                }
                c = creds_rx.recv() => {
                    let Some(c) = c else { break };
                    creds = Some(c);
                    h.reconfigure(current.clone().map(|s| (s, creds.clone()))).await;
                }
                d = desired.recv() => {
                    let d = match d {
                        None => break,
                        Some(callgate_uplink::Inbound::Config(d)) => d,
                        Some(callgate_uplink::Inbound::SubjectRequest(r)) => {
                            if subjects_tx.try_send(r).is_err() {
                                log::warn!("uplink: a subject request from the cloud was dropped (busy): the cloud asks again");
                            }
                            continue;
                        }
                    };
                    if let Some(p) = apply_desired(&service, &h, &state_dir, &d).await {
                        // A fresh connection with the new config must reach the broker:
                        // an established one would outlive a config that cuts the uplink.
                        current = settings(&service.config().borrow());
                        h.reconfigure(current.clone().map(|s| (s, creds.clone()))).await;
                        tokio::spawn(confirm_when_reached(service.clone(), h.clone(), p));
                    }
                }
            }
        }
    });
    (
        Uplink {
            handle,
            creds: creds_tx,
        },
        subjects_rx,
    )
}

/// Where the version of the last config document accepted from the cloud is kept.
pub const CLOUD_VERSION_FILE: &str = "cloud-config.version";

fn last_cloud_version(state_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(state_dir.join(CLOUD_VERSION_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A config document from the cloud: verified (the fleet's signature, this appliance, a
/// version newer than the last accepted), checked as a local commit is, then committed
/// with a confirm window ([`confirm_when_reached`] confirms it). Each step is reported on
/// `config/reported`. A refused document changes nothing.
async fn apply_desired(
    service: &callgate_revisions::ConfigService,
    uplink: &UplinkHandle,
    state_dir: &Path,
    raw: &[u8],
) -> Option<Pending> {
    use callgate_uplink::signed::{verify, Refusal, Reported};
    let cfg = service.config().borrow().clone();
    let name = cfg.appliance.name.to_string();
    let report =
        |version: Option<u64>, result: &str, revision: Option<u64>, detail: String| Reported {
            appliance: name.clone(),
            version,
            result: result.into(),
            revision,
            detail,
            time_ms: callgate_uplink::now_ms(),
        };
    let u = cfg.uplink.as_ref()?;
    let window = Duration::from_secs(u64::from(u.config_confirm_secs()));
    let fleet_key = u.fleet_key();
    let last = last_cloud_version(state_dir);
    let peek_version = serde_json::from_slice::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| v["version"].as_u64());
    if peek_version.is_some() && peek_version == last {
        // The document already applied, delivered again (retained, or a reconnect).
        log::debug!("uplink: config version {last:?} from the cloud is the one applied");
        return None;
    }
    let refuse = |r: Refusal| {
        log::warn!("uplink: a config document from the cloud is refused: {r}");
        report(peek_version, "refused", None, r.to_string())
    };
    let doc = match verify(raw, &name, fleet_key.as_ref(), last) {
        Ok(d) => d,
        Err(r) => {
            uplink.report(&refuse(r)).await;
            return None;
        }
    };
    let origin = std::path::PathBuf::from(format!("cloud-config-v{}.toml", doc.version));
    // The same checks as a local commit, and the same appliance.
    let renamed = Config::parse(&doc.config, &origin)
        .ok()
        .is_some_and(|c| c.appliance.name != cfg.appliance.name);
    let checked = if renamed {
        Err("it names another appliance in [appliance]".to_owned())
    } else {
        service
            .check(doc.config.clone(), origin.clone(), false, Some(window))
            .await
            .map_err(|e| callgate_store::error_chain(&e))
    };
    if let Err(e) = checked {
        uplink.report(&refuse(Refusal::Invalid(e))).await;
        return None;
    }
    // Kept before the commit: this version is never applied twice, even after a crash.
    if let Err(e) = write_durably(
        &state_dir.join(CLOUD_VERSION_FILE),
        format!("{}\n", doc.version).as_bytes(),
        0o644,
    ) {
        uplink.report(&refuse(Refusal::Commit(e))).await;
        return None;
    }
    let committed_at = callgate_uplink::now_ms();
    let out = service
        .commit_noted(
            doc.config.clone(),
            origin,
            false,
            Some(window),
            "cloud".into(),
            Some(format!(
                "config from the cloud, version {} (confirmed once the broker answers)",
                doc.version
            )),
        )
        .await;
    let revision = match out {
        Ok(o) => o.revision,
        Err(e) => {
            let r = Refusal::Commit(callgate_store::error_chain(&e));
            uplink.report(&refuse(r)).await;
            return None;
        }
    };
    log::info!(
        "uplink: config version {} from the cloud committed as revision {revision}; it rolls back in {}s unless the broker answers",
        doc.version,
        window.as_secs()
    );
    uplink
        .report(&report(
            Some(doc.version),
            "applied",
            Some(revision),
            format!(
                "committed; confirmed once the broker is reached again (within {}s)",
                window.as_secs()
            ),
        ))
        .await;
    Some(Pending {
        version: doc.version,
        revision,
        committed_at,
        window,
        appliance: name,
    })
}

/// A config from the cloud, committed, waiting for the broker.
#[derive(Debug)]
struct Pending {
    version: u64,
    revision: u64,
    committed_at: u64,
    window: Duration,
    appliance: String,
}

/// Confirms `p` once a connection made after its commit reached the broker; else it rolls
/// back by itself at its deadline. Reports either.
async fn confirm_when_reached(
    service: callgate_revisions::ConfigService,
    uplink: UplinkHandle,
    p: Pending,
) {
    let mut st = uplink.watch();
    let deadline = tokio::time::Instant::now() + p.window.saturating_sub(Duration::from_secs(2));
    let reached = loop {
        {
            let s = st.borrow_and_update();
            if s.state == "connected" && s.connected_since_ms.is_some_and(|t| t > p.committed_at) {
                break true;
            }
        }
        if tokio::time::timeout_at(deadline, st.changed())
            .await
            .is_err()
        {
            break false;
        }
    };
    let (result, detail) = if reached {
        match service.confirm().await {
            Ok(n) => (
                "confirmed",
                format!("revision {n} confirmed: the broker answered a connection made after the commit"),
            ),
            Err(e) => (
                "rolled back",
                format!("the confirm failed: {}", callgate_store::error_chain(&e)),
            ),
        }
    } else {
        (
            "rolled back",
            format!(
                "the broker was not reached within {}s: the commit rolls back by itself",
                p.window.as_secs()
            ),
        )
    };
    log::info!(
        "uplink: config version {} from the cloud: {result}: {detail}",
        p.version
    );
    uplink
        .report(&callgate_uplink::signed::Reported {
            appliance: p.appliance,
            version: Some(p.version),
            result: result.into(),
            revision: Some(p.revision),
            detail,
            time_ms: callgate_uplink::now_ms(),
        })
        .await;
}

/// Role changes of the pair (takeovers, failovers, step-downs) as events for the cloud.
pub fn report_roles(
    mut pair: tokio::sync::watch::Receiver<crate::pair::PairState>,
    uplink: Uplink,
) {
    tokio::spawn(async move {
        let mut last: Option<(String, u64)> = None;
        loop {
            let status = match &*pair.borrow_and_update() {
                crate::pair::PairState::Running(h) => Some(h.watch()),
                _ => None,
            };
            let Some(mut status) = status else {
                if pair.changed().await.is_err() {
                    return;
                }
                continue;
            };
            loop {
                let now = {
                    let s = status.borrow_and_update();
                    (s.role.clone(), s.term)
                };
                if last.as_ref().map(|(r, _)| r) != Some(&now.0) {
                    if let Some((from, _)) = &last {
                        log::info!("uplink: pair role {from} -> {} (term {})", now.0, now.1);
                        uplink.event("role", json!({"from": from, "to": now.0, "term": now.1}));
                    }
                    last = Some(now);
                }
                tokio::select! {
                    r = status.changed() => if r.is_err() { break },
                    r = pair.changed() => {
                        if r.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    });
}

/// `show uplink` as text.
pub fn show_text(s: &Status) -> String {
    let t = |ms: Option<u64>| ms.map_or("-".to_owned(), crate::human::time);
    let mut out = format!("uplink: {}\n", s.state);
    if !s.broker.is_empty() {
        out.push_str(&format!("  broker        {}\n", s.broker));
        out.push_str(&format!("  topics        {}/…\n", s.prefix));
    }
    match &s.cert {
        Some(c) => {
            out.push_str(&format!(
                "  certificate   CN={} (issuer {})\n",
                c.subject, c.issuer
            ));
            out.push_str(&format!(
                "  valid until   {}\n",
                t(u64::try_from(c.not_after).ok().map(|x| x * 1000))
            ));
        }
        None => out.push_str("  certificate   none installed\n"),
    }
    if let Some(w) = &s.cert_warning {
        out.push_str(&format!("  WARNING       {w}\n"));
    }
    out.push_str(&format!(
        "  backlog       {} record(s){}\n",
        s.backlog,
        if s.backlog_alarm { "  ALARM" } else { "" }
    ));
    out.push_str(&format!(
        "  sent          {} record(s) in {} acknowledged message(s); last ack {}\n",
        s.records_sent,
        s.messages_acked,
        t(s.last_ack_ms)
    ));
    if let Some(since) = s.connected_since_ms {
        out.push_str(&format!("  connected     since {}\n", t(Some(since))));
    }
    if let Some(n) = s.next_attempt_ms {
        out.push_str(&format!("  next attempt  {}\n", t(Some(n))));
    }
    if let Some(e) = &s.last_error {
        out.push_str(&format!("  last error    {e}\n"));
    }
    out
}

/// `show uplink` as data.
pub fn show_json(s: &Status) -> serde_json::Value {
    json!(s)
}
