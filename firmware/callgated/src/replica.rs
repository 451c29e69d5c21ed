//! Replication between the two appliances of a pair, over the sync channel
//! (`callgate-sync`: TLS 1.3, the pair key bound to the session, the peer's certificate
//! pinned after first contact).
//!
//! What travels, in order, on one connection (JSON messages):
//! - `Records`: every batch of call records this node wrote (the answer-time records of
//!   calls in progress and the final ones), exactly as written; the receiver writes them
//!   durably under its own keys with the same ids and answers `Ack`. Record ids never
//!   collide: each node allocates ids of its own parity (`Store::set_pair_node`).
//! - `Block`: a source the flood guard blocked, with its lifetime: the peer blocks it too,
//!   unless its config names the address as a carrier, a destination or a pair node.
//!   Records whose ids are of the receiver's own parity are refused, but for the final
//!   record of a call the receiver answered, still holds as in progress, and the peer
//!   ended (it carried the call on after a failover).
//! - `Have`: at each connection, what the sender holds of the receiver's records (its
//!   watermark of the receiver's ids, the calls it holds as in progress, and those it left
//!   to the peer at its last stop). The receiver sends back, in paced batches, the final
//!   records the sender lacks: a node that was down or cut off gets every record written
//!   meanwhile.
//! - `BulkDone`: after a (re)connect, each node sends the records of all its calls in
//!   progress (sequenced by the record writer, so no final record can overtake them),
//!   then `BulkDone`; a node is *synced* once it has its peer's.
//!
//! Replication is symmetric: whichever node is active sends, and a record from the peer
//! is kept whatever this node's role (with both active after a partition, each keeps the
//! other's records too). The answer of a call (its 2xx) waits for the peer's `Ack` of the
//! answer-time record, bounded by [`ACK_WAIT`], so a standby that takes over knows every
//! call that was answered before the active died.
//!
//! Node 0 listens on its sync link address at the heartbeat port + 1; node 1 connects.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use callgate_firewall::FirewallHandle;
use callgate_ha::HaHandle;
use callgate_store::{Cdr, Store};
use callgate_sync::{Identity, PeerPin, SyncClient, SyncError, SyncServer};
use callgate_vault::{seal_record, unwrap_dek, wrap_dek, Dek, Kek, Zeroizing};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

/// How long an answered call's 2xx waits for the peer to hold its record.
pub const ACK_WAIT: Duration = Duration::from_millis(200);
/// Between connection attempts.
const RETRY: Duration = Duration::from_millis(200);
/// How often each side says something on an idle connection.
const PING_EVERY: Duration = Duration::from_millis(250);
/// A connection the peer says nothing on for this long is dead (a cut cable leaves a TCP
/// connection established until something is sent).
const SILENT_FOR: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Msg {
    Records {
        n: u64,
        open: Vec<(u64, Cdr)>,
        ended: Vec<(u64, Cdr)>,
    },
    Ack {
        n: u64,
    },
    Block {
        ip: IpAddr,
        ttl_ms: u64,
    },
    BulkDone,
    /// Nothing else to say: the connection is alive (every [`PING_EVERY`]).
    Ping,
    /// A new pair key (hex), made by the sender: the receiver keeps it, seals its
    /// heartbeats under it and answers `RekeyDone`.
    Rekey {
        key: String,
    },
    RekeyDone,
    /// Sent at each connection: what the sender holds of the receiver's records (the
    /// highest id of the receiver's parity in its tree, and the ids it holds as calls in
    /// progress). The receiver sends back the final records the sender lacks.
    Have {
        after: Option<u64>,
        open: Vec<u64>,
    },
    /// A step of a pair-wide config change, asked by the peer (`crate::pair_config`).
    Config {
        id: u64,
        op: crate::pair_config::Op,
    },
    /// The answer to `Config` number `id`.
    ConfigReply {
        id: u64,
        answer: crate::pair_config::Answer,
    },
    /// Erase a subject (`crate::subjects`): the sender erased it already, for its console
    /// user `by`. Handled in order with `Records`: every record the sender wrote before
    /// its erasure is written here first.
    Erase {
        id: u64,
        number: String,
        by: String,
    },
    /// The answer to `Erase` number `id`: what was erased (`None`: nothing was held).
    EraseReply {
        id: u64,
        answer: EraseAnswer,
    },
}

/// What the peer answers to an erasure.
pub type EraseAnswer = Result<Option<crate::subjects::PeerErased>, String>;

/// An answer from the peer to something asked of it.
#[derive(Debug)]
enum Reply {
    Config(crate::pair_config::Answer),
    Erase(EraseAnswer),
}

/// Never prints a key or a record.
impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Records { n, open, ended } => {
                write!(
                    f,
                    "Records({n}: {} open, {} ended)",
                    open.len(),
                    ended.len()
                )
            }
            Msg::Ack { n } => write!(f, "Ack({n})"),
            Msg::Block { ip, ttl_ms } => write!(f, "Block({ip}, {ttl_ms} ms)"),
            Msg::BulkDone => f.write_str("BulkDone"),
            Msg::Ping => f.write_str("Ping"),
            Msg::Rekey { .. } => f.write_str("Rekey(…)"),
            Msg::RekeyDone => f.write_str("RekeyDone"),
            Msg::Have { after, open } => write!(f, "Have(after {after:?}, {} open)", open.len()),
            Msg::Config { id, op } => write!(f, "Config({id}, {op:?})"),
            Msg::ConfigReply { id, answer } => write!(f, "ConfigReply({id}, {answer:?})"),
            Msg::Erase { id, .. } => write!(f, "Erase({id})"),
            Msg::EraseReply { id, answer } => write!(
                f,
                "EraseReply({id}, {})",
                match answer {
                    Ok(Some(e)) => format!("{} records", e.record_ids.len()),
                    Ok(None) => "nothing held".to_owned(),
                    Err(_) => "failed".to_owned(),
                }
            ),
        }
    }
}

/// The connection's state as the record writer sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Link {
    /// Bumped at every connection.
    epoch: u64,
    connected: bool,
    /// The highest batch the peer acknowledged on this connection.
    acked: u64,
}

/// What `show pair` shows of replication.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub connected: bool,
    pub peer_synced_us: bool,
    pub peer: Option<String>,
    pub batches_sent: u64,
    pub batches_acked: u64,
    pub batches_received: u64,
    pub records_received: u64,
    pub last_ack_ms: Option<u64>,
    pub connections: u64,
    pub refused: u64,
    pub last_error: Option<String>,
    /// Records sent on this connection that the peer has not acknowledged yet.
    pub lag_records: u64,
    /// How long the oldest of them has waited (0 when none): how far behind the peer is.
    pub lag_ms: u64,
}

/// Requests asked of the peer, by id, each with where its answer goes.
type Asked = std::collections::HashMap<u64, oneshot::Sender<Reply>>;

/// Asks the record writer for a bulk sync (sequenced with its batches).
pub type BulkRequest = Box<dyn Fn() + Send + Sync>;

struct Shared {
    tx: mpsc::UnboundedSender<Msg>,
    next_n: AtomicU64,
    link: watch::Sender<Link>,
    status: watch::Sender<ReplicaStatus>,
    rt: tokio::runtime::Handle,
    bulk: OnceLock<BulkRequest>,
    /// The running config: what a peer's message may change is checked against it.
    config: watch::Receiver<Arc<callgate_config::Config>>,
    /// The pair key of the next connection, once a re-key replaced the settings' one.
    key: watch::Sender<Option<Zeroizing<[u8; 32]>>>,
    /// Re-keys the peer confirmed.
    rekeys_done: watch::Sender<u64>,
    /// Config steps asked of the peer, waiting for its answer.
    asked: tokio::sync::Mutex<Asked>,
    next_ask: AtomicU64,
    /// This appliance's side of pair-wide config changes.
    pair_config: Arc<crate::pair_config::PairConfig>,
    /// Calls in progress when this daemon last stopped, whose final records the peer
    /// writes (it carried them on): asked for at each connection until they arrive.
    awaiting: watch::Sender<std::collections::BTreeSet<u64>>,
    /// Batches sent on this connection and not yet acknowledged: number, records, when.
    inflight: watch::Sender<std::collections::VecDeque<(u64, u64, Instant)>>,
}

impl Shared {
    fn send_records(&self, open: &[(u64, &Cdr)], ended: &[(u64, &Cdr)]) -> Option<u64> {
        if !self.link.borrow().connected {
            return None;
        }
        let n = self.next_n.fetch_add(1, Ordering::Relaxed);
        let msg = Msg::Records {
            n,
            open: open.iter().map(|(id, c)| (*id, (*c).clone())).collect(),
            ended: ended.iter().map(|(id, c)| (*id, (*c).clone())).collect(),
        };
        self.status.send_modify(|s| s.batches_sent += 1);
        let count = (open.len() + ended.len()) as u64;
        self.inflight
            .send_modify(|q| q.push_back((n, count, Instant::now())));
        self.tx.send(msg).ok().map(|()| n)
    }
}

/// The record writer's and the proxy effects' side of replication. Cheap to clone; its
/// methods work from any thread.
#[derive(Clone)]
pub struct Replicator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replicator")
    }
}

impl Replicator {
    /// Sends a batch of records this node wrote; the batch number to wait for, when the
    /// peer is connected.
    pub fn send_records(&self, open: &[(u64, &Cdr)], ended: &[(u64, &Cdr)]) -> Option<u64> {
        self.shared.send_records(open, ended)
    }

    /// The calls in progress when this daemon last stopped, left to the peer: their final
    /// records are asked of it at each connection until they arrive.
    pub fn await_finals(&self, ids: impl IntoIterator<Item = u64>) {
        self.shared.awaiting.send_modify(|a| a.extend(ids));
    }

    /// Blocks the calling (non-async) thread until the peer acknowledged batch `n`, the
    /// connection dropped, or [`ACK_WAIT`] passed. Whether the peer has it.
    pub fn wait_acked(&self, n: u64) -> bool {
        let mut rx = self.shared.link.subscribe();
        let epoch = rx.borrow().epoch;
        let start = Instant::now();
        let ok = self.shared.rt.block_on(async {
            let r = tokio::time::timeout(
                ACK_WAIT,
                rx.wait_for(|l| l.epoch != epoch || !l.connected || l.acked >= n),
            )
            .await;
            matches!(r, Ok(Ok(l)) if l.epoch == epoch && l.connected && l.acked >= n)
        });
        let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.shared.status.send_modify(|s| s.last_ack_ms = Some(ms));
        if !ok {
            log::warn!("pair: the peer did not acknowledge record batch {n} within {ACK_WAIT:?}");
        }
        ok
    }

    /// A source the flood guard blocked: the peer blocks it too.
    pub fn send_block(&self, ip: IpAddr, ttl: Duration) {
        if self.shared.link.borrow().connected {
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let _ = self.shared.tx.send(Msg::Block { ip, ttl_ms });
        }
    }

    /// Sends this node's calls in progress and `BulkDone` (called by the record writer,
    /// in its order, when asked through the bulk request).
    pub fn send_bulk(&self, open: &[(u64, &Cdr)]) {
        if !open.is_empty() {
            let _ = self.send_records(open, &[]);
        }
        let _ = self.shared.tx.send(Msg::BulkDone);
    }

    /// How the record writer is asked for a bulk sync.
    pub fn set_bulk_request(&self, f: BulkRequest) {
        let _ = self.shared.bulk.set(f);
    }

    pub fn status(&self) -> ReplicaStatus {
        let mut st = self.shared.status.borrow().clone();
        let q = self.shared.inflight.borrow();
        st.lag_records = q.iter().map(|(_, c, _)| c).sum();
        st.lag_ms = q.front().map_or(0, |(_, _, at)| {
            u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)
        });
        st
    }

    /// Sends a new pair key to the peer and blocks (non-async thread) until it confirms
    /// that it keeps it, at most 2 s. Whether it did.
    pub fn rekey(&self, key: &[u8; 32]) -> bool {
        if !self.shared.link.borrow().connected {
            return false;
        }
        let mut rx = self.shared.rekeys_done.subscribe();
        let before = *rx.borrow();
        let hex_key = Zeroizing::new(hex(key));
        if self
            .shared
            .tx
            .send(Msg::Rekey {
                key: hex_key.to_string(),
            })
            .is_err()
        {
            return false;
        }
        self.shared.rt.block_on(async {
            matches!(
                tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|n| *n > before)).await,
                Ok(Ok(_))
            )
        })
    }

    /// Asks the peer to carry out a step of a pair-wide config change and waits for its
    /// answer, at most `wait`; an error when the sync channel is down or drops meanwhile,
    /// or when the peer does not answer in time.
    pub async fn ask_peer(
        &self,
        op: crate::pair_config::Op,
        wait: Duration,
    ) -> Result<crate::pair_config::Answer, String> {
        match self.ask(|id| Msg::Config { id, op }, wait).await? {
            Reply::Config(a) => Ok(a),
            Reply::Erase(_) => Err("the peer answered something else".into()),
        }
    }

    /// Asks the peer to erase a subject (a normalised number) that this appliance has
    /// just erased, for console user `by`, and waits for its answer, at most `wait`. The
    /// request travels behind every record batch sent before it. An error when the sync
    /// channel is down or drops meanwhile, the peer does not answer in time, or it failed.
    pub async fn erase_on_peer(
        &self,
        number: &str,
        by: &str,
        wait: Duration,
    ) -> Result<Option<crate::subjects::PeerErased>, String> {
        let (number, by) = (number.to_owned(), by.to_owned());
        match self.ask(|id| Msg::Erase { id, number, by }, wait).await? {
            Reply::Erase(a) => a.map_err(|e| format!("the peer failed: {e}")),
            Reply::Config(_) => Err("the peer answered something else".into()),
        }
    }

    /// Whether the sync channel to the peer is connected now.
    pub fn connected(&self) -> bool {
        self.shared.link.borrow().connected
    }

    async fn ask(&self, msg: impl FnOnce(u64) -> Msg, wait: Duration) -> Result<Reply, String> {
        let mut link = self.shared.link.subscribe();
        let epoch = {
            let l = link.borrow_and_update();
            if !l.connected {
                return Err("the peer is not connected over the sync link".into());
            }
            l.epoch
        };
        let id = self.shared.next_ask.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.asked.lock().await.insert(id, tx);
        let r = if self.shared.tx.send(msg(id)).is_err() {
            Err("the sync channel has stopped".to_owned())
        } else {
            let dropped = link.wait_for(|l| l.epoch != epoch || !l.connected);
            tokio::select! {
                a = rx => a.map_err(|_| "the sync channel has stopped".to_owned()),
                _ = dropped => Err("the sync link dropped before the peer answered".to_owned()),
                () = tokio::time::sleep(wait) => Err(format!("the peer did not answer within {wait:?}")),
            }
        };
        self.shared.asked.lock().await.remove(&id);
        r
    }

    /// This appliance's side of pair-wide config changes.
    pub fn pair_config(&self) -> &Arc<crate::pair_config::PairConfig> {
        &self.shared.pair_config
    }

    /// The pair key the next connections bind (after a re-key).
    pub fn set_key(&self, key: &[u8; 32]) {
        self.shared.key.send_replace(Some(Zeroizing::new(*key)));
    }
}

/// Where the connection goes, and with what (present once the appliance is paired).
pub struct Settings {
    pub node: u8,
    /// This node's and the peer's address on the sync link.
    pub local: IpAddr,
    pub peer: IpAddr,
    pub port: u16,
    pub key: [u8; 32],
    pub identity: Identity,
    pub pin: PeerPin,
    pub state_dir: PathBuf,
    pub kek: Kek,
}

/// Starts replication: the connection task runs on the current runtime, and connects
/// whenever `settings` holds some (the appliance is paired).
pub fn spawn(
    settings: watch::Receiver<Option<Arc<Settings>>>,
    store: Arc<Store>,
    firewall: FirewallHandle,
    ha: watch::Receiver<Option<HaHandle>>,
    config: callgate_revisions::ConfigService,
) -> Replicator {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        tx,
        next_n: AtomicU64::new(1),
        link: watch::Sender::new(Link::default()),
        status: watch::Sender::new(ReplicaStatus::default()),
        rt: tokio::runtime::Handle::current(),
        bulk: OnceLock::new(),
        config: config.config(),
        key: watch::Sender::new(None),
        rekeys_done: watch::Sender::new(0),
        asked: tokio::sync::Mutex::new(Asked::new()),
        next_ask: AtomicU64::new(1),
        pair_config: Arc::new(crate::pair_config::PairConfig::new(config)),
        awaiting: watch::Sender::new(std::collections::BTreeSet::new()),
        inflight: watch::Sender::new(std::collections::VecDeque::new()),
    });
    let r = Replicator {
        shared: shared.clone(),
    };
    tokio::spawn(run(settings, shared, rx, store, firewall, ha));
    r
}

fn set_synced(ha: &watch::Receiver<Option<HaHandle>>, synced: bool) {
    if let Some(h) = &*ha.borrow() {
        h.set_synced(synced);
    }
}

async fn run(
    mut settings: watch::Receiver<Option<Arc<Settings>>>,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    store: Arc<Store>,
    firewall: FirewallHandle,
    ha: watch::Receiver<Option<HaHandle>>,
) {
    loop {
        // Not paired: wait until we are (and drop what is queued meanwhile).
        let s = loop {
            while rx.try_recv().is_ok() {}
            if let Some(s) = settings.borrow_and_update().clone() {
                break s;
            }
            if settings.changed().await.is_err() {
                return;
            }
        };
        shared.key.send_replace(None);
        tokio::select! {
            () = session(&s, &shared, &mut rx, &store, &firewall, &ha) => {}
            r = settings.changed() => {
                if r.is_err() {
                    // The daemon is stopping.
                    return;
                }
                log::info!("pair: replication settings changed");
            }
        }
        shared.link.send_modify(|l| l.connected = false);
        shared
            .inflight
            .send_modify(std::collections::VecDeque::clear);
        shared.status.send_modify(|st| {
            st.connected = false;
            st.peer_synced_us = false;
        });
        set_synced(&ha, false);
    }
}

/// Connects (or accepts) and carries messages until the connection ends; then again,
/// forever (the caller stops it by dropping this future).
async fn session(
    s: &Settings,
    shared: &Arc<Shared>,
    rx: &mut mpsc::UnboundedReceiver<Msg>,
    store: &Arc<Store>,
    firewall: &FirewallHandle,
    ha: &watch::Receiver<Option<HaHandle>>,
) {
    let listen = SocketAddr::new(s.local, s.port);
    let mut pin = s.pin;
    let mut server: Option<SyncServer> = None;
    let mut bound_key = Zeroizing::new(s.key);
    loop {
        // While there is no connection, what is queued is dropped: the bulk sync at the
        // next connection carries the calls in progress.
        while rx.try_recv().is_ok() {}
        let key: Zeroizing<[u8; 32]> = shared
            .key
            .borrow()
            .clone()
            .unwrap_or_else(|| Zeroizing::new(s.key));
        if *key != *bound_key {
            // A re-key: the next server binds the new key.
            server = None;
            bound_key = key.clone();
        }
        let conn = if s.node == 0 {
            if server.is_none() {
                match SyncServer::bind(listen, &s.identity, &key, pin).await {
                    Ok(srv) => server = Some(srv),
                    Err(e) => {
                        note_error(shared, format!("cannot listen on {listen}: {e}"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            match server.as_mut() {
                Some(srv) => srv.accept().await,
                None => continue,
            }
        } else {
            SyncClient::connect(
                SocketAddr::new(s.local, 0),
                SocketAddr::new(s.peer, s.port),
                &s.identity,
                &key,
                pin,
                Duration::from_secs(2),
            )
            .await
        };
        let (conn, info) = match conn {
            Ok(c) => c,
            Err(e) => {
                if matches!(
                    e,
                    SyncError::Binding | SyncError::PinMismatch { .. } | SyncError::OwnCertificate
                ) {
                    shared.status.send_modify(|st| st.refused += 1);
                    log::warn!("pair: sync connection refused: {e}");
                }
                note_error(shared, e.to_string());
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if pin.is_none() {
            pin = Some(info.fingerprint);
            if let Err(e) = save_identity(&s.state_dir, &s.kek, &s.identity, pin) {
                log::error!("pair: cannot keep the peer's certificate pin: {e}");
            }
            // The server was built without a pin: the next one has it.
            server = None;
            log::info!(
                "pair: the peer's sync certificate is pinned ({})",
                hex(&info.fingerprint)
            );
        }
        let epoch = shared.link.borrow().epoch + 1;
        let acked = shared.next_n.load(Ordering::Relaxed).saturating_sub(1);
        shared.link.send_replace(Link {
            epoch,
            connected: true,
            acked,
        });
        shared.status.send_modify(|st| {
            st.connected = true;
            st.connections += 1;
            st.peer = Some(info.node_name.clone());
            st.last_error = None;
        });
        log::info!(
            "pair: sync channel up with {} ({})",
            info.node_name,
            info.addr
        );
        match shared.bulk.get() {
            Some(f) => f(),
            None => {
                let _ = shared.tx.send(Msg::BulkDone);
            }
        }
        let _ = shared.tx.send(have(shared, store, s.node).await);
        let (mut reader, mut writer) = conn.into_split();
        let read = async {
            loop {
                let bytes = match tokio::time::timeout(SILENT_FOR, reader.recv()).await {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => return Err::<(), SyncError>(e),
                    Err(_) => {
                        return Err(SyncError::Io(std::io::Error::other(format!(
                            "the peer said nothing for {SILENT_FOR:?}"
                        ))))
                    }
                };
                let msg: Msg = match serde_json::from_slice(&bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        return Err(SyncError::Io(std::io::Error::other(format!(
                            "a message from the peer does not parse: {e}"
                        ))))
                    }
                };
                apply(msg, s, shared, store, firewall, ha).await;
            }
        };
        let write = async {
            let mut ping = tokio::time::interval(PING_EVERY);
            loop {
                let m = tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => return Ok::<(), SyncError>(()),
                    },
                    _ = ping.tick() => Msg::Ping,
                };
                match serde_json::to_vec(&m) {
                    Ok(b) => writer.send(&b).await?,
                    Err(e) => log::error!("pair: cannot encode a sync message: {e}"),
                }
            }
        };
        let end: Result<(), SyncError> = tokio::select! {
            r = read => r,
            r = write => r,
        };
        let why = match end {
            Ok(()) => "closed".to_owned(),
            Err(e) => e.to_string(),
        };
        log::warn!("pair: sync channel down: {why}");
        shared.link.send_modify(|l| l.connected = false);
        shared
            .inflight
            .send_modify(std::collections::VecDeque::clear);
        shared.status.send_modify(|st| {
            st.connected = false;
            st.peer_synced_us = false;
            st.last_error = Some(why.clone());
        });
        set_synced(ha, false);
        tokio::time::sleep(RETRY).await;
    }
}

/// What this node holds of its peer's records, said at each connection.
async fn have(shared: &Shared, store: &Arc<Store>, node: u8) -> Msg {
    let st = store.clone();
    let awaiting = shared.awaiting.borrow().clone();
    let r = tokio::task::spawn_blocking(move || {
        let after = st.last_cdr_id_of_node(node ^ 1);
        let mut open: std::collections::BTreeSet<u64> = st.open_cdr_ids().into_iter().collect();
        open.extend(awaiting);
        (after, open.into_iter().collect::<Vec<_>>())
    })
    .await;
    match r {
        Ok((after, open)) => Msg::Have { after, open },
        Err(_) => Msg::Have {
            after: None,
            open: Vec::new(),
        },
    }
}

/// Records per catch-up batch, and the pause between batches (new calls' records go
/// between them).
const CATCH_UP_BATCH: usize = 256;
const CATCH_UP_PAUSE: Duration = Duration::from_millis(5);
/// At most this many ids in a peer's `Have` are looked at.
const MAX_HAVE_OPEN: usize = 100_000;

/// Sends the peer the final records it lacks: those of the calls it holds as in progress
/// that ended here, then this node's final records above its watermark, in batches.
async fn catch_up(
    shared: Arc<Shared>,
    store: Arc<Store>,
    node: u8,
    after: Option<u64>,
    open: Vec<u64>,
) {
    let st = store.clone();
    let finals: Vec<(u64, Cdr)> = tokio::task::spawn_blocking(move || {
        open.iter()
            .filter_map(|id| st.get_cdr(*id).ok())
            .filter(|r| r.value.end_at.is_some())
            .map(|r| (r.id, r.value))
            .collect()
    })
    .await
    .unwrap_or_default();
    let mut sent = 0usize;
    let send = |batch: &[(u64, Cdr)]| {
        let refs: Vec<(u64, &Cdr)> = batch.iter().map(|(id, c)| (*id, c)).collect();
        shared.send_records(&[], &refs).is_some()
    };
    for batch in finals.chunks(CATCH_UP_BATCH) {
        if !send(batch) {
            return;
        }
        sent += batch.len();
        tokio::time::sleep(CATCH_UP_PAUSE).await;
    }
    let mut after = after;
    loop {
        let st = store.clone();
        let page: Vec<(u64, Cdr)> = tokio::task::spawn_blocking(move || {
            st.final_cdrs_of_node_after(node, after, CATCH_UP_BATCH)
                .into_iter()
                .map(|r| (r.id, r.value))
                .collect()
        })
        .await
        .unwrap_or_default();
        let Some(last) = page.last().map(|(id, _)| *id) else {
            break;
        };
        if !send(&page) {
            return;
        }
        sent += page.len();
        after = Some(last);
        tokio::time::sleep(CATCH_UP_PAUSE).await;
    }
    if sent > 0 {
        log::info!("pair: {sent} final records the peer lacked were sent");
    }
}

/// Whether a final record of one of this node's ids may come from the peer: a call this
/// node (`me`) answered and the peer ended after carrying it on.
fn completes_ours(c: &Cdr, me: &str, peer: &str) -> bool {
    c.end_at.is_some() && c.appliance == me && c.ended_by.as_deref() == Some(peer)
}

/// Keeps, of a peer's batch, the records it may write here (node `node`, named `me`; the
/// peer is `peer`): open and final records of the peer's own ids, and final records of
/// this node's calls that it answered, still holds in progress (`holds`) and the peer
/// ended. Returns how many were refused.
fn admit_records(
    open: &mut Vec<(u64, Cdr)>,
    ended: &mut Vec<(u64, Cdr)>,
    node: u8,
    me: &str,
    peer: &str,
    holds: impl Fn(u64) -> bool,
) -> usize {
    let before = open.len() + ended.len();
    open.retain(|(id, _)| peer_owns(*id, node));
    ended.retain(|(id, c)| peer_owns(*id, node) || (completes_ours(c, me, peer) && holds(*id)));
    before - open.len() - ended.len()
}

/// Whether record `id` is one the peer of node `me` allocates (the other parity).
fn peer_owns(id: u64, me: u8) -> bool {
    id % 2 != u64::from(me & 1)
}

/// Addresses the blocklist must never hold: carriers' sources, destinations, pair nodes.
fn protected(cfg: &callgate_config::Config, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    let carrier = cfg
        .sip
        .carriers
        .iter()
        .any(|c| c.sources.get_ref().iter().any(|p| p.net().contains(&ip)));
    let destination = cfg.sip.routes.iter().any(|r| {
        r.destinations
            .get_ref()
            .iter()
            .any(|d| d.uri.get_ref().addr.ip().to_canonical() == ip)
    });
    let node = cfg.pair.as_ref().is_some_and(|p| {
        p.node
            .get_ref()
            .iter()
            .any(|n| n.heartbeat.get_ref().values().any(|a| *a.get_ref() == ip))
    });
    carrier || destination || node
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn note_error(shared: &Shared, e: String) {
    shared.status.send_modify(|st| st.last_error = Some(e));
}

async fn apply(
    msg: Msg,
    s: &Settings,
    shared: &Arc<Shared>,
    store: &Arc<Store>,
    firewall: &FirewallHandle,
    ha: &watch::Receiver<Option<HaHandle>>,
) {
    match msg {
        Msg::Records {
            n,
            mut open,
            mut ended,
        } => {
            // The peer allocates ids of its own parity only: one of ours would overwrite a
            // record of this appliance, unless it is the final record of a call this
            // appliance answered and still holds as in progress, ended by the peer (it
            // carried the call on after a failover).
            let node = s.node;
            let (me, peer) = match crate::pair_config::names_of(&shared.config.borrow()) {
                Ok((m, p)) => (m.to_string(), p.to_string()),
                Err(_) => (String::new(), String::new()),
            };
            let st = store.clone();
            let r = tokio::task::spawn_blocking(move || {
                let before = open.len() + ended.len();
                let refused = admit_records(&mut open, &mut ended, node, &me, &peer, |id| {
                    st.holds_call_in_progress(id)
                });
                let o: Vec<(u64, &Cdr)> = open.iter().map(|(id, c)| (*id, c)).collect();
                let e: Vec<(u64, &Cdr)> = ended.iter().map(|(id, c)| (*id, c)).collect();
                let ended_ids: Vec<u64> = ended.iter().map(|(id, _)| *id).collect();
                st.write_cdrs(&o, &e)
                    .map(|failed| (failed, refused, before - refused, ended_ids))
            })
            .await;
            match r {
                Ok(Ok((failed, refused, count, ended_ids))) => {
                    let count = count as u64;
                    if refused > 0 {
                        log::warn!(
                            "pair: {refused} replicated records with ids of this appliance refused"
                        );
                    }
                    shared.awaiting.send_if_modified(|a| {
                        let n = a.len();
                        for id in &ended_ids {
                            a.remove(id);
                        }
                        a.len() != n
                    });
                    for (id, e) in failed {
                        log::error!(
                            "pair: replicated record {id} could not be stored: {}",
                            callgate_store::error_chain(&e)
                        );
                    }
                    shared.status.send_modify(|s| {
                        s.batches_received += 1;
                        s.records_received += count;
                    });
                    let _ = shared.tx.send(Msg::Ack { n });
                }
                Ok(Err(e)) => log::error!(
                    "pair: replicated records could not be stored (not acknowledged): {}",
                    callgate_store::error_chain(&e)
                ),
                Err(e) => log::error!("pair: internal error storing replicated records: {e}"),
            }
        }
        Msg::Ack { n } => {
            shared.inflight.send_modify(|q| {
                while q.front().is_some_and(|(m, _, _)| *m <= n) {
                    q.pop_front();
                }
            });
            shared.link.send_modify(|l| l.acked = l.acked.max(n));
            shared.status.send_modify(|s| s.batches_acked += 1);
        }
        Msg::Block { ip, ttl_ms } => {
            // Checked against the config as the flood guard is: a carrier, a destination
            // or a pair node is never blocked, whoever asks.
            if protected(&shared.config.borrow(), ip) {
                log::warn!(
                    "pair: the peer asked to block {ip}, a configured peer of ours: refused"
                );
                return;
            }
            // At most a day: a peer's message cannot block a source forever.
            let ttl = Duration::from_millis(ttl_ms.min(86_400_000));
            if let Err(e) = firewall.block(ip, ttl).await {
                log::error!(
                    "pair: blocklist {ip} from the peer: {}",
                    callgate_firewall::error_chain(&e)
                );
            }
        }
        Msg::Ping => {}
        Msg::Rekey { key } => {
            let Some(k) = hex_decode(&key).map(Zeroizing::new) else {
                log::error!("pair: a re-key from the peer carries no valid key; ignored");
                return;
            };
            let (dir, kek) = (s.state_dir.clone(), s.kek.clone());
            let kk = k.clone();
            let stored =
                tokio::task::spawn_blocking(move || crate::pair::store_key(&dir, &kek, &kk)).await;
            match stored {
                Ok(Ok(())) => {
                    if let Some(h) = &*ha.borrow() {
                        h.rekey(callgate_pair::PairKey::from_bytes(*k));
                    }
                    shared.key.send_replace(Some(k));
                    let _ = shared.tx.send(Msg::RekeyDone);
                    log::warn!("pair: the peer re-keyed the pair; the new key is kept");
                }
                Ok(Err(e)) => log::error!("pair: cannot keep the new pair key: {e}"),
                Err(e) => log::error!("pair: internal error keeping the new pair key: {e}"),
            }
        }
        Msg::RekeyDone => {
            shared.rekeys_done.send_modify(|n| *n += 1);
        }
        Msg::Have { after, mut open } => {
            open.truncate(MAX_HAVE_OPEN);
            tokio::spawn(catch_up(shared.clone(), store.clone(), s.node, after, open));
        }
        Msg::Config { id, op } => {
            // Applying a config takes a while: the records keep flowing meanwhile.
            let (pc, tx) = (shared.pair_config.clone(), shared.tx.clone());
            let me = shared.config.borrow().appliance.name.clone();
            tokio::spawn(async move {
                let answer = pc.serve(op, &me).await;
                let _ = tx.send(Msg::ConfigReply { id, answer });
            });
        }
        Msg::ConfigReply { id, answer } => {
            let waiting = shared.asked.lock().await.remove(&id);
            if let Some(w) = waiting {
                let _ = w.send(Reply::Config(answer));
            }
        }
        Msg::Erase { id, number, by } => {
            // Only the paired peer reaches this (the sync channel is mutually
            // authenticated and bound to the pair key); the number is checked as the
            // console checks it. Awaited here, in order: the records sent before the
            // request are written before the erasure.
            let names = crate::pair_config::names_of(&shared.config.borrow())
                .map(|(m, p)| (m.to_string(), p.to_string()));
            let answer = match names {
                Err(e) => Err(format!("not paired in the config: {e}")),
                Ok((me, asker)) => {
                    let st = store.clone();
                    tokio::task::spawn_blocking(move || {
                        crate::subjects::erase_for_peer(&st, &me, &asker, &number, &by)
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("internal error: {e}")))
                }
            };
            match &answer {
                Ok(Some(e)) => log::warn!(
                    "pair: the peer asked for a subject's erasure: {} records erased here",
                    e.record_ids.len()
                ),
                Ok(None) => log::warn!(
                    "pair: the peer asked for a subject's erasure: nothing was held here"
                ),
                Err(e) => log::error!("pair: the peer asked for a subject's erasure: {e}"),
            }
            let _ = shared.tx.send(Msg::EraseReply { id, answer });
        }
        Msg::EraseReply { id, answer } => {
            let waiting = shared.asked.lock().await.remove(&id);
            if let Some(w) = waiting {
                let _ = w.send(Reply::Erase(answer));
            }
        }
        Msg::BulkDone => {
            shared.status.send_modify(|s| s.peer_synced_us = true);
            set_synced(ha, true);
            log::info!("pair: synced with the peer's calls in progress");
        }
    }
}

// ---- this node's sync identity, kept sealed -------------------------------------------

/// The sealed identity file in the state directory.
pub const IDENTITY_FILE: &str = "pair.identity";
const IDENTITY_AAD: &[u8] = b"callgate/pair-identity/v1";
/// The id the identity's data key is wrapped under (apart from the store's data keys).
const IDENTITY_KEY_ID: u32 = 0xC0DE_0001;

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    /// Holds the private key: wiped when the file's form is dropped.
    pem: String,
    pin: Option<String>,
}

impl Drop for IdentityFile {
    fn drop(&mut self) {
        drop(callgate_vault::Zeroizing::new(std::mem::take(
            &mut self.pem,
        )));
    }
}

fn hex_decode(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Writes the identity and the pin sealed under a data key wrapped under the KEK:
/// `[u16 length][wrapped key][sealed JSON]`, 0600, synced, renamed into place.
pub fn save_identity(
    state_dir: &Path,
    kek: &Kek,
    identity: &Identity,
    pin: PeerPin,
) -> Result<(), String> {
    let file = IdentityFile {
        // Moved out of its zeroizing wrapper, not copied: the form wipes it on drop.
        pem: std::mem::take(&mut *identity.to_pem()),
        pin: pin.map(|p| hex(&p)),
    };
    // The file holds the private key: every buffer the JSON outgrows is wiped.
    let mut json = callgate_vault::WipingBuf::with_capacity(4096);
    serde_json::to_writer(&mut json, &file).map_err(|e| e.to_string())?;
    let json = json.into_inner();
    let dek = Dek::generate().map_err(|e| e.to_string())?;
    let wrapped = wrap_dek(kek, IDENTITY_KEY_ID, &dek).map_err(|e| e.to_string())?;
    let sealed =
        seal_record(&dek, IDENTITY_KEY_ID, IDENTITY_AAD, &json).map_err(|e| e.to_string())?;
    let len = u16::try_from(wrapped.len()).map_err(|_| "wrapped key too long".to_owned())?;
    let mut blob = len.to_be_bytes().to_vec();
    blob.extend_from_slice(&wrapped);
    blob.extend_from_slice(&sealed);
    crate::pair::write_private(&state_dir.join(IDENTITY_FILE), &blob)
}

/// This node's sync identity and the pinned peer certificate, made (and kept) at the
/// first start after pairing.
pub fn load_identity(
    state_dir: &Path,
    kek: &Kek,
    node_name: &str,
) -> Result<(Identity, PeerPin), String> {
    let path = state_dir.join(IDENTITY_FILE);
    let blob = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = Identity::generate(node_name).map_err(|e| e.to_string())?;
            save_identity(state_dir, kek, &id, None)?;
            return Ok((id, None));
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bad = || format!("{}: damaged or sealed under another key", path.display());
    let len = usize::from(u16::from_be_bytes([
        *blob.first().ok_or_else(bad)?,
        *blob.get(1).ok_or_else(bad)?,
    ]));
    let wrapped = blob.get(2..2 + len).ok_or_else(bad)?;
    let sealed = blob.get(2 + len..).ok_or_else(bad)?;
    let dek = unwrap_dek(kek, IDENTITY_KEY_ID, wrapped).map_err(|_| bad())?;
    let keyring = callgate_vault::Keyring::from_keys([(IDENTITY_KEY_ID, dek)], IDENTITY_KEY_ID)
        .ok_or_else(bad)?;
    let json = keyring.open(IDENTITY_AAD, sealed).map_err(|_| bad())?;
    let file: IdentityFile = serde_json::from_slice(&json).map_err(|_| bad())?;
    let id = Identity::from_pem(file.pem.as_bytes()).map_err(|e| e.to_string())?;
    let pin = match file.pin.as_deref() {
        Some(h) => Some(hex_decode(h).ok_or_else(bad)?),
        None => None,
    };
    Ok((id, pin))
}

/// Forgets the identity and the pin (unpairing, re-pairing).
pub fn remove_identity(state_dir: &Path) {
    let _ = std::fs::remove_file(state_dir.join(IDENTITY_FILE));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    #[test]
    fn the_identity_and_its_pin_come_back_sealed_and_only_under_their_kek() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::generate().unwrap();
        let id = Identity::generate("a").unwrap();
        save_identity(dir.path(), &kek, &id, Some([7u8; 32])).unwrap();
        let raw = std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap();
        assert!(!raw.windows(11).any(|w| w == b"PRIVATE KEY"));
        let (back, pin) = load_identity(dir.path(), &kek, "a").unwrap();
        assert_eq!(back.certificate_der(), id.certificate_der());
        assert_eq!(*back.to_pem(), *id.to_pem());
        assert_eq!(pin, Some([7u8; 32]));
        let other = Kek::generate().unwrap();
        assert!(load_identity(dir.path(), &other, "a").is_err());
    }

    #[test]
    fn the_peer_can_never_block_a_carrier_a_destination_or_a_pair_node() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab-pair-a.toml");
        let cfg = callgate_config::Config::load(&path).unwrap();
        for ip in [
            "203.0.113.10",
            "2001:db8:1::10",
            "198.51.100.10",
            "198.51.100.11",
            "192.0.2.2",
            "198.51.100.1",
        ] {
            assert!(protected(&cfg, ip.parse().unwrap()), "{ip}");
        }
        for ip in ["203.0.113.66", "203.0.113.99", "2001:db8:1::66"] {
            assert!(!protected(&cfg, ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_peer_may_write_only_records_of_its_own_parity() {
        assert!(peer_owns(3, 0) && !peer_owns(4, 0));
        assert!(peer_owns(4, 1) && !peer_owns(3, 1));
    }

    fn record() -> Cdr {
        Cdr {
            call_id: "c".into(),
            tracking_number: "+18005550100".into(),
            campaign: "x".into(),
            caller: callgate_store::Pii::new("+12025550101"),
            caller_name: None,
            destination: "d".into(),
            invite_at: 1,
            ring_at: None,
            answer_at: Some(2),
            end_at: Some(3),
            duration_ms: 1,
            disposition: callgate_store::Disposition::Answered,
            final_code: 200,
            appliance: "lab-a".into(),
            ended_by: Some("lab-b".into()),
            resume: None,
        }
    }

    #[test]
    fn of_our_records_the_peer_may_only_complete_a_call_we_answered_and_it_ended() {
        let cdr = record();
        assert!(completes_ours(&cdr, "lab-a", "lab-b"));
        // not one we answered, not ended by the peer, or not final: refused
        assert!(!completes_ours(&cdr, "lab-b", "lab-a"));
        let mut c = cdr.clone();
        c.ended_by = None;
        assert!(!completes_ours(&c, "lab-a", "lab-b"));
        let mut c = cdr.clone();
        c.end_at = None;
        assert!(!completes_ours(&c, "lab-a", "lab-b"));
    }

    /// A peer (compromised, or replaying an old batch) tries to rewrite this node's
    /// records: an open record over one of ours, a final over a call we already closed, a
    /// final of a call we never answered, a final it says it did not end.
    #[test]
    fn a_peer_cannot_rewrite_a_call_this_node_closed_or_never_answered() {
        let ours = |id: u64| {
            let mut c = record();
            c.call_id = format!("c{id}");
            (id, c)
        };
        // node 0 holds even ids; 4 is in progress here, 6 was closed here already.
        let holds = |id: u64| id == 4;
        let mut open = vec![ours(4), ours(5)];
        let mut ended = vec![ours(4), ours(6), ours(7)];
        ended[0].1.ended_by = Some("lab-b".into());
        ended[1].1.ended_by = Some("lab-b".into());
        let refused = admit_records(&mut open, &mut ended, 0, "lab-a", "lab-b", holds);
        assert_eq!(
            refused, 2,
            "the open record over 4, the final over closed 6"
        );
        assert_eq!(open.iter().map(|r| r.0).collect::<Vec<_>>(), vec![5]);
        assert_eq!(ended.iter().map(|r| r.0).collect::<Vec<_>>(), vec![4, 7]);
        // A final over our call in progress that the peer did not end, or of a call
        // another appliance answered: refused too.
        let mut ended = vec![ours(4)];
        ended[0].1.ended_by = Some("lab-a".into());
        assert_eq!(
            admit_records(&mut Vec::new(), &mut ended, 0, "lab-a", "lab-b", holds),
            1
        );
        let mut ended = vec![ours(4)];
        ended[0].1.appliance = "lab-c".into();
        ended[0].1.ended_by = Some("lab-b".into());
        assert_eq!(
            admit_records(&mut Vec::new(), &mut ended, 0, "lab-a", "lab-b", holds),
            1
        );
    }

    #[test]
    fn sync_messages_read_back_as_written() {
        for m in [
            Msg::Ack { n: 7 },
            Msg::Block {
                ip: "203.0.113.66".parse().unwrap(),
                ttl_ms: 1000,
            },
            Msg::BulkDone,
            Msg::Ping,
            Msg::RekeyDone,
            Msg::Config {
                id: 3,
                op: crate::pair_config::Op::Commit { tx: 9 },
            },
            Msg::ConfigReply {
                id: 3,
                answer: Err("no".into()),
            },
            Msg::Erase {
                id: 4,
                number: "+12025550101".into(),
                by: "root".into(),
            },
            Msg::EraseReply {
                id: 4,
                answer: Ok(Some(crate::subjects::PeerErased {
                    erased_at_ms: 1,
                    key_generation: Some(2),
                    record_ids: vec![3, 5],
                })),
            },
        ] {
            assert!(
                !format!("{m:?}").contains("2025550101"),
                "no number in the log"
            );
            let b = serde_json::to_vec(&m).unwrap();
            let back: Msg = serde_json::from_slice(&b).unwrap();
            assert_eq!(format!("{back:?}"), format!("{m:?}"));
        }
        assert!(serde_json::from_slice::<Msg>(br#"{"t":"records","n":1}"#).is_err());
        assert_eq!(hex_decode(&hex(&[0xab; 32])), Some([0xab; 32]));
        assert_eq!(hex_decode("zz"), None);
    }
}
