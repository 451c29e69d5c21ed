//! The server: a handle and a task. The task owns the listener; each connection runs in a
//! task of its own (TLS, then hyper's HTTP/1.1), sharing the rate limiter and the store.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use callgate_redact::Redactor;
use callgate_store::Store;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::limit::Limiter;
use crate::request::{self, Head, Reject, CALL_ID_HEADER, KIND_HEADER};
use crate::{item, now_ms, Identity, IntakeError, Settings};

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// The TLS handshake, and then the request head, must arrive within this.
pub const HEAD_WAIT: Duration = Duration::from_secs(10);
/// The body must arrive within this.
pub const BODY_WAIT: Duration = Duration::from_secs(30);
/// A connection lives at most this long.
pub const CONNECTION_MAX: Duration = Duration::from_secs(120);
/// How long a listener that could not bind waits before it tries again.
const RETRY_BIND: Duration = Duration::from_secs(5);
/// Warnings on paths a peer can trigger are said at most this often.
const WARN_EVERY_MS: u64 = 10_000;

/// What the owner asks of the task.
#[derive(Debug)]
pub enum Command {
    /// New settings (a commit) or identity (an installed certificate); `None`: no intake.
    Reconfigure(Option<Box<(Settings, Option<Identity>)>>),
    Stop,
}

/// The intake's state and counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// `disabled`, `no certificate`, `listening`, `failed`, `stopped`.
    pub state: String,
    pub listen: Option<String>,
    /// Items queued for the uplink (202).
    pub accepted: u64,
    /// Requests refused, by status.
    pub refused: BTreeMap<u16, u64>,
    /// Connections that failed the TLS handshake (no or a foreign client certificate, an
    /// old protocol version, a timeout).
    pub handshakes_failed: u64,
    /// Connections closed at once: their source is not in `sources`.
    pub sources_refused: u64,
    pub last_error: Option<String>,
}

/// The handle: commands in, the status out.
#[derive(Debug, Clone)]
pub struct IntakeHandle {
    tx: mpsc::Sender<Command>,
    status: watch::Receiver<Status>,
}

impl IntakeHandle {
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }
    pub async fn reconfigure(&self, to: Option<(Settings, Option<Identity>)>) {
        let _ = self.tx.send(Command::Reconfigure(to.map(Box::new))).await;
    }
    pub async fn stop(&self) {
        let _ = self.tx.send(Command::Stop).await;
    }
}

/// Starts the intake with `initial` (None: off until reconfigured); items go to `store`.
pub fn spawn(initial: Option<(Settings, Option<Identity>)>, store: Arc<Store>) -> IntakeHandle {
    let (tx, rx) = mpsc::channel(8);
    let (status_tx, status_rx) = watch::channel(Status {
        state: "starting".into(),
        ..Status::default()
    });
    tokio::spawn(run(initial, store, rx, status_tx));
    IntakeHandle {
        tx,
        status: status_rx,
    }
}

/// The TLS server settings: TLS 1.3 only, a client certificate chaining to `client_ca`
/// required, HTTP/1.1 by ALPN, no 0-RTT.
pub fn tls_config(s: &Settings, id: &Identity) -> Result<rustls::ServerConfig, IntakeError> {
    let tls = |e: String| IntakeError::Tls(e);
    let verifier = callgate_pki::client_verifier(&s.client_ca_pem)
        .map_err(|e| tls(format!("client_ca: {e}")))?;
    let chain = callgate_pki::certificates(&id.chain_pem).map_err(|e| tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, id.key.private_key_der())
        .map_err(|e| tls(format!("the intake's certificate or key is unusable: {e}")))?;
    c.max_early_data_size = 0;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

async fn run(
    mut cfg: Option<(Settings, Option<Identity>)>,
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Command>,
    status: watch::Sender<Status>,
) {
    let status = Arc::new(status);
    let redactor = Arc::new(Redactor::new());
    loop {
        let next = match &cfg {
            None => {
                set_state(&status, "disabled", None, None);
                rx.recv().await
            }
            Some((s, None)) => {
                set_state(
                    &status,
                    "no certificate",
                    Some(s),
                    Some("no certificate: run `callgate intake csr`, have a CA the PBX trusts sign it, then `callgate intake install-cert FILE`".into()),
                );
                rx.recv().await
            }
            Some((s, Some(id))) => match start(s, id).await {
                Ok((listener, acceptor)) => {
                    set_state(&status, "listening", Some(s), None);
                    log::info!("intake: listening on {} (mutual TLS)", s.listen);
                    let ctx = Arc::new(Ctx {
                        settings: s.clone(),
                        store: store.clone(),
                        redactor: redactor.clone(),
                        limiter: tokio::sync::Mutex::new(Limiter::new(s.rate_per_minute, s.burst)),
                        status: status.clone(),
                        warned_ms: AtomicU64::new(0),
                    });
                    tokio::select! {
                        () = serve(listener, acceptor, ctx) => None,
                        c = rx.recv() => c,
                    }
                }
                Err(e) => {
                    log::error!("intake: {e}");
                    set_state(&status, "failed", Some(s), Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_BIND) => continue,
                        c = rx.recv() => c,
                    }
                }
            },
        };
        match next {
            None | Some(Command::Stop) => break,
            Some(Command::Reconfigure(to)) => cfg = to.map(|b| *b),
        }
    }
    set_state(&status, "stopped", None, None);
}

fn set_state(
    status: &watch::Sender<Status>,
    state: &str,
    s: Option<&Settings>,
    err: Option<String>,
) {
    status.send_modify(|st| {
        st.state = state.into();
        st.listen = s.map(|s| s.listen.to_string());
        st.last_error = err;
    });
}

async fn start(s: &Settings, id: &Identity) -> Result<(TcpListener, TlsAcceptor), IntakeError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(s, id)?));
    let listener = TcpListener::bind(s.listen)
        .await
        .map_err(|e| IntakeError::Listen {
            addr: s.listen,
            why: e.to_string(),
        })?;
    Ok((listener, acceptor))
}

/// What the connections share.
struct Ctx {
    settings: Settings,
    store: Arc<Store>,
    redactor: Arc<Redactor>,
    limiter: tokio::sync::Mutex<Limiter>,
    status: Arc<watch::Sender<Status>>,
    /// When a peer-triggered warning was last logged.
    warned_ms: AtomicU64,
}

impl Ctx {
    /// Logs `msg` unless a warning was logged in the last [`WARN_EVERY_MS`].
    fn warn(&self, msg: std::fmt::Arguments<'_>) {
        let now = now_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log::warn!("intake: {msg} (warnings like this are said at most every 10 s; `status` counts them all)");
        }
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.settings.sources.iter().any(|n| n.contains(&ip))
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, ctx: Arc<Ctx>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                ctx.warn(format_args!("accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !ctx.allowed(peer.ip()) {
            // The firewall admits only `sources`; this is the second lock.
            ctx.status.send_modify(|st| st.sources_refused += 1);
            ctx.warn(format_args!(
                "a connection from {} (not in intake.sources) was closed",
                peer.ip()
            ));
            drop(tcp);
            continue;
        }
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ =
                tokio::time::timeout(CONNECTION_MAX, connection(tcp, peer, acceptor, ctx)).await;
        });
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, ctx: Arc<Ctx>) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HEAD_WAIT, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            ctx.status.send_modify(|st| st.handshakes_failed += 1);
            ctx.warn(format_args!(
                "the TLS handshake with {} failed: {e}",
                peer.ip()
            ));
            return;
        }
        Err(_) => {
            ctx.status.send_modify(|st| st.handshakes_failed += 1);
            ctx.warn(format_args!(
                "the TLS handshake with {} timed out",
                peer.ip()
            ));
            return;
        }
    };
    let ip = peer.ip();
    let svc_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, &ctx, ip).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_WAIT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service);
    if let Err(e) = conn.await {
        log::debug!("intake: a connection from {ip} ended: {e}");
    }
}

fn respond(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&body).unwrap_or_default(),
    )));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn refuse(ctx: &Ctx, why: &Reject) -> Response<Full<Bytes>> {
    let status = why.status();
    ctx.status
        .send_modify(|st| *st.refused.entry(status).or_default() += 1);
    let mut r = respond(status, serde_json::json!({"error": why.to_string()}));
    if status == 413 || status == 400 {
        // What is left of the body is not read: the connection ends after the answer.
        r.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

async fn handle(req: Request<Incoming>, ctx: &Ctx, ip: IpAddr) -> Response<Full<Bytes>> {
    let limit = ctx.settings.body_limit;
    // The rate first: refused requests count too.
    if let Err(wait) = ctx.limiter.lock().await.admit(ip, Instant::now()) {
        let mut r = refuse(ctx, &Reject::Rate);
        let secs = wait.as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            r.headers_mut().insert(RETRY_AFTER, v);
        }
        return r;
    }
    let (parts, mut body) = req.into_parts();
    let header = |name| parts.headers.get(name).map(HeaderValue::as_bytes);
    let head = Head {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        content_type: parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        content_length: parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        call_id: header(CALL_ID_HEADER),
        kind: header(KIND_HEADER),
    };
    if let Err(why) = request::check_head(&head, limit) {
        return refuse(ctx, &why);
    }
    // The body, at most `limit` bytes, in a buffer wiped when dropped.
    let read = tokio::time::timeout(BODY_WAIT, async {
        let mut buf = Zeroizing::new(Vec::with_capacity(limit.min(16 * 1024)));
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(Reject::Field("the body ended early".into()));
            };
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(Reject::TooLarge(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    })
    .await;
    let buf = match read {
        Ok(Ok(b)) => b,
        Ok(Err(why)) => return refuse(ctx, &why),
        Err(_) => {
            return refuse(
                ctx,
                &Reject::Field("the body did not arrive in time".into()),
            )
        }
    };
    let sub = match request::validate(&head, &buf, limit) {
        Ok(s) => s,
        Err(why) => return refuse(ctx, &why),
    };
    drop(buf);
    let id = match item::new_id() {
        Ok(id) => id,
        Err(e) => {
            log::error!("intake: the CSPRNG failed: {e}");
            return respond(503, serde_json::json!({"error": "try again later"}));
        }
    };
    let received = now_ms();
    let store = ctx.store.clone();
    let redactor = ctx.redactor.clone();
    let appliance = ctx.settings.appliance.clone();
    // Redaction and the durable write on a blocking thread; the submission (the original
    // text) is dropped, and wiped, there.
    let queued = tokio::task::spawn_blocking(move || {
        let it = item::build(&redactor, &appliance, id, received, &sub);
        drop(sub);
        if it.json.len() > item::MAX_ITEM {
            return Ok(None);
        }
        store.put_transcript(&it.json).map(|_| Some(it))
    })
    .await;
    match queued {
        Ok(Ok(None)) => refuse(ctx, &Reject::TooLarge(item::MAX_ITEM)),
        Ok(Ok(Some(it))) => {
            ctx.status.send_modify(|st| st.accepted += 1);
            log::info!(
                "intake: item {} queued for the uplink ({} spans redacted)",
                it.id,
                it.redactions.values().sum::<u32>()
            );
            respond(
                202,
                serde_json::json!({"id": it.id, "redactions": it.redactions}),
            )
        }
        Ok(Err(e)) => {
            log::error!(
                "intake: an item could not be queued: {}",
                callgate_store::error_chain(&e)
            );
            ctx.status
                .send_modify(|st| *st.refused.entry(503).or_default() += 1);
            respond(
                503,
                serde_json::json!({"error": "the item could not be queued: try again later"}),
            )
        }
        Err(e) => {
            log::error!("intake: the queueing task failed: {e}");
            respond(503, serde_json::json!({"error": "try again later"}))
        }
    }
}
