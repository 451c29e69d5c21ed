//! The uplink task: connects (TCP, then TLS with the appliance's certificate), runs a
//! session, and reconnects after a full-jitter backoff; commands in over mpsc, the status
//! out over watch.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callgate_store::Store;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::identity::{cert_info, certificates, roots, ClientKey};
use crate::session::{self, Ctx, Ended};
use crate::{backoff, clock_plausible, now_ms, Settings, Status, UplinkError};

/// How long a TCP connect or a TLS handshake may take.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How often the backlog is counted for the status.
const COUNT_EVERY: Duration = Duration::from_secs(1);
/// Acknowledged writes removed from the outbox per second when the uplink is idle.
const COMPACT_BATCH: usize = 5_000;
/// Past this many acknowledged writes they are removed even while the uplink is busy.
const COMPACT_ANYWAY: u64 = 200_000;

/// The appliance's key and the certificate chain (PEM, leaf first) the fleet CA signed.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub key: ClientKey,
    pub chain_pem: String,
}

/// What the owner asks of the task.
#[derive(Debug)]
pub enum Command {
    /// New settings (a commit) or credentials (an installed certificate); `None`: the
    /// uplink is off.
    Reconfigure(Option<Box<(Settings, Option<Credentials>)>>),
    /// An event for the events topic (a JSON document).
    Event(Vec<u8>),
    /// The report for `config/reported` (retained; a newer one replaces it).
    Report(Vec<u8>),
    /// A message in memory for a topic under the prefix (e.g. `subjects/reply`).
    Publish(String, Vec<u8>),
    /// A durable message was put in the store ([`Store::outbox_message_put`]): read it.
    MessageQueued,
    /// Disconnect cleanly and end.
    Stop,
}

/// The handle: commands in, the status out.
#[derive(Debug, Clone)]
pub struct UplinkHandle {
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
    store: Arc<Store>,
}

impl UplinkHandle {
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }
    pub async fn reconfigure(&self, to: Option<(Settings, Option<Credentials>)>) {
        let _ = self.tx.send(Command::Reconfigure(to.map(Box::new))).await;
    }
    /// Queues an event (never blocks; dropped if the task is far behind).
    pub fn event(&self, kind: &str, detail: serde_json::Value) {
        let doc = serde_json::json!({"event": kind, "time_ms": now_ms(), "detail": detail});
        let _ = self
            .tx
            .try_send(Command::Event(serde_json::to_vec(&doc).unwrap_or_default()));
    }
    /// Queues a message in memory for `leaf` under the prefix (never blocks; bounded as
    /// events are, lost if the daemon stops first). For what holds personal data.
    pub fn publish(&self, leaf: &str, doc: &serde_json::Value) {
        let _ = self.tx.try_send(Command::Publish(
            leaf.to_owned(),
            serde_json::to_vec(doc).unwrap_or_default(),
        ));
    }
    /// Keeps `doc` for `leaf` under the prefix in the store's outbox, durably, until the
    /// broker acknowledged it (sent again after any reconnect or restart; it carries a
    /// `message_id`). Blocking: run it on a blocking thread. Never for personal data.
    pub fn publish_durably(&self, leaf: &str, doc: &serde_json::Value) -> Result<u64, String> {
        let m = callgate_store::OutboxMessage {
            topic: leaf.to_owned(),
            payload: doc.to_string(),
            time_ms: now_ms(),
        };
        let id = self
            .store
            .outbox_message_put(&m)
            .map_err(|e| callgate_store::error_chain(&e))?;
        let _ = self.tx.try_send(Command::MessageQueued);
        Ok(id)
    }
    /// An event for the events topic, kept durably as [`Self::publish_durably`] keeps it.
    pub fn event_durably(&self, kind: &str, detail: serde_json::Value) -> Result<u64, String> {
        let doc = serde_json::json!({"event": kind, "time_ms": now_ms(), "detail": detail});
        self.publish_durably("events", &doc)
    }
    /// Sets the report for `config/reported`.
    pub async fn report(&self, doc: &crate::signed::Reported) {
        let bytes = serde_json::to_vec(doc).unwrap_or_default();
        let _ = self.tx.send(Command::Report(bytes)).await;
    }
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }
}

/// Starts the uplink with `initial` (None: off until reconfigured). Returns the handle and
/// what the cloud sends (config documents, subject requests).
pub fn spawn(
    initial: Option<(Settings, Option<Credentials>)>,
    store: Arc<Store>,
) -> (UplinkHandle, mpsc::Receiver<crate::session::Inbound>) {
    let (tx, rx) = mpsc::channel(64);
    let (status_tx, status_rx) = watch::channel(Status {
        state: "starting".into(),
        ..Status::default()
    });
    let (desired_tx, desired_rx) = mpsc::channel(8);
    let events_tx = tx.clone();
    tokio::spawn(run(
        initial,
        store.clone(),
        rx,
        status_tx,
        desired_tx,
        events_tx,
    ));
    (
        UplinkHandle {
            tx,
            status: status_rx,
            store,
        },
        desired_rx,
    )
}

/// Waits `d`, or less if a command arrives (returned).
async fn wait(d: Duration, rx: &mut mpsc::Receiver<Command>) -> Option<Option<Command>> {
    tokio::select! {
        _ = tokio::time::sleep(d) => None,
        c = rx.recv() => Some(c),
    }
}

async fn run(
    mut cfg: Option<(Settings, Option<Credentials>)>,
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Command>,
    status: watch::Sender<Status>,
    desired: mpsc::Sender<crate::session::Inbound>,
    events_tx: mpsc::Sender<Command>,
) {
    let mut events: VecDeque<(String, Vec<u8>)> = VecDeque::new();
    let mut report: Option<Vec<u8>> = None;
    let mut attempt: u32 = 0;
    let mut started = false;
    let counter = tokio::spawn(count_backlog(
        store.clone(),
        status.clone(),
        status.subscribe(),
        events_tx,
    ));
    loop {
        let next = match &cfg {
            None => {
                set_idle(&status, "disabled", None);
                rx.recv().await
            }
            Some((s, None)) => {
                set_idle(&status, "no certificate", Some(s));
                status.send_modify(|st| {
                    st.last_error = Some(
                        "no certificate: run `callgate uplink csr`, have the fleet CA sign it, then `callgate uplink install-cert FILE`"
                            .into(),
                    )
                });
                rx.recv().await
            }
            Some((s, Some(creds))) => {
                if !started {
                    started = true;
                    let d = backoff::uniform(s.boot_delay_max, backoff::random());
                    set_idle(&status, "waiting", Some(s));
                    status.send_modify(|st| st.next_attempt_ms = Some(now_ms() + ms(d)));
                    if let Some(c) = wait(d, &mut rx).await {
                        c
                    } else {
                        continue;
                    }
                } else if !clock_plausible(now_ms()) {
                    set_idle(&status, "clock wrong", Some(s));
                    status.send_modify(|st| {
                        st.last_error = Some(
                            "the clock reads a time before 2026: no TLS until it is set".into(),
                        )
                    });
                    match wait(Duration::from_secs(10), &mut rx).await {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    status.send_modify(|st| {
                        st.state = "connecting".into();
                        st.next_attempt_ms = None;
                    });
                    let outcome = match connect(s, creds).await {
                        Ok(stream) => {
                            let cx = Ctx {
                                settings: s,
                                store: &store,
                                status: &status,
                                commands: &mut rx,
                                events: &mut events,
                                desired: &desired,
                                report: &mut report,
                            };
                            session::run(stream, cx).await
                        }
                        Err(e) => Err(e),
                    };
                    let was_up = status.borrow().connected_since_ms.is_some();
                    status.send_modify(|st| st.connected_since_ms = None);
                    match outcome {
                        Ok(Ended::Command(c)) => Some(c),
                        Ok(Ended::Dropped) => None,
                        Err(e) => {
                            log::warn!("uplink: {e}");
                            status.send_modify(|st| st.last_error = Some(e.to_string()));
                            if was_up {
                                attempt = 0;
                            }
                            let d = backoff::delay(attempt, s.backoff_max, backoff::random());
                            attempt = attempt.saturating_add(1);
                            status.send_modify(|st| {
                                st.state = "backing off".into();
                                st.next_attempt_ms = Some(now_ms() + ms(d));
                            });
                            match wait(d, &mut rx).await {
                                Some(c) => c,
                                None => continue,
                            }
                        }
                    }
                }
            }
        };
        match next {
            None => break,
            Some(Command::Stop) => break,
            Some(Command::Event(e)) => session::push_event(&mut events, e),
            Some(Command::Report(r)) => report = Some(r),
            Some(Command::Publish(leaf, p)) => session::push_message(&mut events, leaf, p),
            Some(Command::MessageQueued) => {}
            Some(Command::Reconfigure(to)) => {
                cfg = to.map(|b| *b);
                attempt = 0;
                let cert = cfg
                    .as_ref()
                    .and_then(|(_, c)| c.as_ref())
                    .and_then(|c| certificates(&c.chain_pem).ok())
                    .and_then(|chain| cert_info(&chain[0]).ok());
                status.send_modify(|st| {
                    st.cert = cert;
                    st.last_error = None;
                });
            }
        }
    }
    counter.abort();
    set_idle(&status, "stopped", None);
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn set_idle(status: &watch::Sender<Status>, state: &str, s: Option<&Settings>) {
    status.send_modify(|st| {
        st.state = state.into();
        st.connected_since_ms = None;
        if let Some(s) = s {
            st.broker = format!("{}:{}", s.broker, s.port);
            st.prefix = s.prefix.clone();
            st.backlog_alarm_at = Some(s.backlog_alarm);
            st.cert_warn_secs = i64::try_from(s.cert_warn.as_secs()).unwrap_or(i64::MAX);
        }
    });
}

/// Counts the backlog every second; raises the backlog alarm (an event) once past the
/// threshold, and clears it below; warns of the certificate's expiry.
async fn count_backlog(
    store: Arc<Store>,
    status: watch::Sender<Status>,
    watch: watch::Receiver<Status>,
    events: mpsc::Sender<Command>,
) {
    let mut tick = tokio::time::interval(COUNT_EVERY);
    let mut warned_cert: Option<i64> = None;
    loop {
        tick.tick().await;
        let st = store.clone();
        let last_ack = watch.borrow().last_ack_ms;
        let Ok(n) = tokio::task::spawn_blocking(move || {
            // Acknowledged writes leave the outbox when the uplink is idle (nothing waits,
            // or no acknowledgement for 2 s), or when many have gathered.
            let idle = last_ack.is_none_or(|t| now_ms().saturating_sub(t) > 2_000);
            let acked = st.outbox_acked();
            let n = st.outbox_len();
            if acked > 0 && (idle || n == 0 || acked > COMPACT_ANYWAY) {
                if let Err(e) = st.outbox_compact(COMPACT_BATCH) {
                    log::warn!(
                        "uplink: the outbox could not be compacted: {}",
                        callgate_store::error_chain(&e)
                    );
                }
            }
            n
        })
        .await
        else {
            continue;
        };
        let (alarm_at, was, cert) = {
            let s = watch.borrow();
            (s.backlog_alarm_at, s.backlog_alarm, s.cert.clone())
        };
        let alarm = alarm_at.is_some_and(|a| n >= a);
        status.send_modify(|s| {
            s.backlog = n;
            s.backlog_alarm = alarm;
        });
        if alarm && !was {
            let doc = serde_json::json!({"event": "backlog", "time_ms": now_ms(),
                "detail": {"backlog": n, "alarm_at": alarm_at}});
            log::warn!("uplink: {n} records wait for the broker (alarm at {alarm_at:?})");
            let _ = events.try_send(Command::Event(serde_json::to_vec(&doc).unwrap_or_default()));
        }
        // The certificate: warned within the window, and once it has expired.
        let warning = cert.as_ref().and_then(|c| {
            let left = c.not_after - i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX);
            let window = watch.borrow().cert_warn_secs;
            if left <= 0 {
                Some(format!(
                    "the uplink certificate expired {}d ago",
                    (-left) / 86_400
                ))
            } else if left <= window {
                Some(format!(
                    "the uplink certificate expires in {}d",
                    left / 86_400
                ))
            } else {
                None
            }
        });
        if warning.is_some() && cert.as_ref().map(|c| c.not_after) != warned_cert {
            warned_cert = cert.as_ref().map(|c| c.not_after);
            let doc = serde_json::json!({"event": "certificate", "time_ms": now_ms(),
                "detail": {"warning": warning}});
            log::warn!("uplink: {}", warning.clone().unwrap_or_default());
            let _ = events.try_send(Command::Event(serde_json::to_vec(&doc).unwrap_or_default()));
        }
        status.send_modify(|s| s.cert_warning = warning);
    }
}

/// TCP to the broker, then TLS 1.3: the fleet CA the only anchor, the broker's name
/// verified, the appliance's certificate presented.
pub async fn connect(
    s: &Settings,
    c: &Credentials,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UplinkError> {
    let addr = match s.address {
        Some(ip) => SocketAddr::new(ip, s.port),
        None => tokio::net::lookup_host((s.broker.as_str(), s.port))
            .await
            .map_err(|e| UplinkError::Io(format!("resolving {}: {e}", s.broker)))?
            .next()
            .ok_or_else(|| UplinkError::Io(format!("{} has no address", s.broker)))?,
    };
    let tcp = tokio::time::timeout(CONNECT_WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| UplinkError::Io(format!("connecting to {addr}: timed out")))?
        .map_err(|e| UplinkError::Io(format!("connecting to {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let config = client_config(s, c)?;
    let name = ServerName::try_from(s.broker.clone())
        .map_err(|e| UplinkError::Tls(format!("{}: {e}", s.broker)))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(CONNECT_WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| UplinkError::Tls(format!("the handshake with {addr} timed out")))?
        .map_err(|e| UplinkError::Tls(format!("the handshake with {} ({addr}): {e}", s.broker)))
}

/// The TLS client configuration (TLS 1.3 only, ring).
pub fn client_config(s: &Settings, c: &Credentials) -> Result<rustls::ClientConfig, UplinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&c.chain_pem)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.pkcs8().to_vec()));
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .with_root_certificates(roots(&s.ca_pem)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| UplinkError::Tls(format!("the appliance's certificate: {e}")))
}
