//! # callgate-control
//!
//! The control socket between the `callgate` console tool and the daemon
//! (`/run/callgate/control.sock`).
//!
//! ## Design
//! - One JSON request per line, one JSON response per line ([`Request`], [`Response`]).
//! - Peers are identified by `SO_PEERCRED`: the kernel says which uid and process
//!   connected, so the daemon never trusts a user name sent by the client. The user name,
//!   the login uid and the audit session (`/proc/PID/loginuid`, `sessionid`: set at login,
//!   the user cannot change them) are looked up off the async runtime, the latter two by
//!   the daemon's [`ProcReader`] (a daemon that is not root cannot see other users'
//!   processes and asks a helper that can).
//! - The daemon's [`Authorizer`] gives the peer its role (from the config's accounts; root
//!   is an admin) **before anything is read**: a peer without one is refused at once. An
//!   operator's request is read up to [`OPERATOR_MAX_REQUEST`], an admin's up to
//!   [`MAX_REQUEST`] (a whole config). Each request needs [`Request::required_role`]:
//!   refusals reach the handler as [`Call::Refused`] so the daemon audits them like
//!   accepted requests. A line that does not parse is refused by the error's kind and
//!   place only, never its text (it may carry a caller's number).
//! - At most [`MAX_CONNECTIONS`] connections at once; more are closed unread.
//! - The socket is `0660`, owned by the daemon's user and the group [`CONSOLE_GROUP`]
//!   when the system has it (every console account is a member).
//! - [`serve`] is transport and the role gate; what a request does (and its audit) is the
//!   daemon's handler.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// Largest request accepted from an admin (a config with 100k prefixes is a few MiB).
pub const MAX_REQUEST: u64 = 64 * 1024 * 1024;
/// Largest request accepted from an operator (no request of theirs carries a config).
pub const OPERATOR_MAX_REQUEST: u64 = 64 * 1024;
/// Connections served at once; more are closed unread.
pub const MAX_CONNECTIONS: usize = 32;
/// The group that owns the socket: every console account is a member.
pub const CONSOLE_GROUP: &str = "callgate-console";

pub use callgate_config::Role;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Daemon status: version, active revision, firewall generation and the last read-back
    /// result, pending confirm.
    Status,
    /// Allowlist entries with packet and byte counters, and how the kernel's table differs
    /// from the applied ruleset (read back for this request).
    ShowFirewall,
    /// The running config text.
    ShowConfig,
    /// Calls in progress.
    ShowCalls,
    /// The last call detail records.
    ShowCdrs {
        #[serde(default = "default_last")]
        last: usize,
        /// Text only (a person reads it): the parts carry no structured data.
        #[serde(default)]
        text_only: bool,
    },
    /// SIP proxy counters.
    ShowSipStats,
    ShowHistory,
    Compare {
        a: u64,
        b: u64,
    },
    /// Validate, apply and record a config.
    Commit {
        text: String,
        /// File name for error locations.
        origin: PathBuf,
        #[serde(default)]
        force: bool,
        /// Roll back by itself unless `confirm` arrives within this many seconds.
        #[serde(default)]
        confirmed_secs: Option<u64>,
        /// In a pair: this appliance alone (by default a commit applies on both or neither).
        #[serde(default)]
        this_node: bool,
    },
    Confirm {
        /// In a pair: this appliance alone.
        #[serde(default)]
        this_node: bool,
    },
    Rollback {
        number: u64,
        #[serde(default)]
        force: bool,
        /// In a pair: this appliance alone.
        #[serde(default)]
        this_node: bool,
    },
    /// First start: create and seal the key-encryption key; the reply carries the recovery
    /// key, shown once.
    Provision,
    /// Bring the keys back on a replacement board (or after an intended change of the
    /// measured boot) with the recovery key.
    Recover {
        recovery_key: String,
    },
    /// Seal the key-encryption key again to the configured PCRs as they are now.
    Reseal,
    /// New writes use a new data key; old records stay readable.
    RotateDataKey,
    /// Clear the TPM, delete the sealed blobs and the data: nothing can be decrypted after.
    Decommission {
        confirm: bool,
    },
    /// The pair: role, peer, term, each heartbeat path, the virtual addresses.
    ShowPair,
    /// Make a pair key for this appliance and its peer; the reply carries the pairing
    /// secret, shown once, for `PairJoin` on the peer.
    PairInit,
    /// Join the pair whose secret the peer's `PairInit` showed.
    PairJoin {
        secret: String,
    },
    /// Forget the pair key: this appliance releases its virtual addresses and runs alone
    /// (holding none) until paired again.
    Unpair,
    /// A planned handover: the active appliance asks its standby to take over.
    Failover,
    /// A new pair key, made here, sent to the peer over the sync channel; both keep it.
    PairRekey,
    /// The last entries of the audit trail.
    ShowAudit {
        #[serde(default = "default_last")]
        last: usize,
    },
    /// Who the daemon takes the caller for: user, role, session, the appliance, the idle
    /// time of the role (the console's prompt and idle timer).
    Whoami,
    /// The text of revision `number` (configuration mode's `rollback N` loads it).
    ShowRevision {
        number: u64,
    },
    /// The interactive console sessions: who, role, from where, since when.
    ShowSessions,
    /// End an interactive console session (every process of its audit session).
    EndSession {
        session: u32,
    },
    /// Lift the serial console's password lockout (`pam_faillock`) of a user.
    ClearLockout {
        user: String,
    },
    /// Configuration mode: hold the configuration lock for this connection (released by
    /// `ConfigUnlock` or when the connection ends). While one connection holds it, every
    /// other connection's commit, confirm and rollback is refused.
    ConfigLock,
    ConfigUnlock,
    /// The cloud uplink: state, broker, certificate and its expiry, backlog, last
    /// acknowledgement.
    ShowUplink,
    /// The appliance's certificate signing request for the uplink (a key is made, sealed
    /// under the KEK, the first time).
    UplinkCsr,
    /// Install the uplink certificate chain (PEM, leaf first) the fleet CA signed; checked
    /// against the key, the appliance's name and the configured fleet CA first.
    UplinkInstallCert {
        pem: String,
    },
    /// The certificate signing request for SIP over TLS's server certificate (a key is
    /// made, sealed under the KEK, the first time).
    SipTlsCsr,
    /// Install SIP over TLS's server certificate chain (PEM, leaf first); checked against
    /// the key and the clock first. TLS handshakes use it at once.
    SipTlsInstallCert {
        pem: String,
    },
    /// The certificate signing request for the transcript intake's server certificate (a
    /// key is made, sealed under the KEK, the first time).
    IntakeCsr,
    /// Install the intake's server certificate chain (PEM, leaf first); checked against the
    /// key and the clock first. The intake serves with it at once.
    IntakeInstallCert {
        pem: String,
    },
    /// What the store holds about a subject (a caller, by number, E.164): how many records,
    /// the generation of their key, and their erasures ("erased at …").
    ShowSubject {
        number: String,
    },
    /// Every record of a subject, decrypted, as JSON or CSV (a subject access and export
    /// request).
    SubjectExport {
        number: String,
        format: ExportFormat,
    },
    /// Erase a subject: their key is destroyed (their records' caller number and name
    /// become unreadable) and an erasure receipt, signed with the appliance's uplink
    /// identity, is kept and returned.
    SubjectErase {
        number: String,
    },
    /// The caller's own console command history (oldest first), kept sealed in the store.
    History,
    /// A line the caller typed at the console: kept in the caller's history and, with the
    /// user, role and session, in the audit trail (every interactive command accounted,
    /// configuration mode's `set` lines too). At most [`MAX_TYPED_LINE`] bytes.
    Remember {
        line: String,
    },
    /// From the update installer (`callgate upgrade-helper`, root) only: one step of an
    /// install for the audit trail, under the account that asked for it. `uid` and `pid`
    /// are the process that asked (the console's `upgrade`) as the kernel gave them to the
    /// installer (`SO_PEERCRED`); the daemon reads that process's login uid and session
    /// from `/proc` while it is there with that uid. `step` is one line of at most
    /// [`MAX_TYPED_LINE`] bytes (`started`, `installed: …`, `refused: …`).
    UpgradeRecord {
        uid: u32,
        pid: i32,
        step: String,
    },
}

/// The format of a subject export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Json,
    Csv,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(ExportFormat::Json),
            "csv" => Ok(ExportFormat::Csv),
            _ => Err("the export format is json or csv".into()),
        }
    }
}

/// The longest console line the daemon keeps.
pub const MAX_TYPED_LINE: usize = 1024;

/// Whether `text` is a line the daemon keeps (a typed line, an install's step): one line
/// of at most [`MAX_TYPED_LINE`] bytes.
pub fn is_typed_line(text: &str) -> bool {
    text.len() <= MAX_TYPED_LINE && !text.contains(['\n', '\r'])
}

fn default_last() -> usize {
    20
}

impl Request {
    /// Whether the request reads personal data (caller numbers and names): audited like a
    /// change (CCPA: every access to a consumer's data is on record). Subject requests need
    /// an admin; `show cdrs` is an operator's too, and the daemon masks the caller's number
    /// and name in an operator's reply (text and data alike).
    pub fn reads_pii(&self) -> bool {
        matches!(
            self,
            Request::ShowCdrs { .. } | Request::ShowSubject { .. } | Request::SubjectExport { .. }
        )
    }

    /// Whether the request goes into the audit trail.
    pub fn is_audited(&self) -> bool {
        self.is_change() || self.reads_pii()
    }

    /// Whether the request changes the appliance (needs an admin).
    pub fn is_change(&self) -> bool {
        matches!(
            self,
            Request::Commit { .. }
                | Request::Confirm { .. }
                | Request::Rollback { .. }
                | Request::Provision
                | Request::Recover { .. }
                | Request::Reseal
                | Request::RotateDataKey
                | Request::Decommission { .. }
                | Request::PairInit
                | Request::PairJoin { .. }
                | Request::Unpair
                | Request::Failover
                | Request::PairRekey
                | Request::ClearLockout { .. }
                | Request::EndSession { .. }
                | Request::UplinkCsr
                | Request::UplinkInstallCert { .. }
                | Request::SipTlsCsr
                | Request::SipTlsInstallCert { .. }
                | Request::IntakeCsr
                | Request::IntakeInstallCert { .. }
                | Request::SubjectErase { .. }
        )
    }

    /// The role a request needs: reads are an operator's (personal data masked), changes,
    /// subject requests and the audit trail an admin's.
    pub fn required_role(&self) -> Role {
        if (self.is_audited() && !matches!(self, Request::ShowCdrs { .. }))
            || matches!(
                self,
                Request::ShowAudit { .. }
                    | Request::ConfigLock
                    | Request::ConfigUnlock
                    | Request::UpgradeRecord { .. }
            )
        {
            Role::Admin
        } else {
            Role::Operator
        }
    }

    /// Short name for logs and the audit trail.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::ShowFirewall => "show firewall",
            Request::ShowConfig => "show config",
            Request::ShowCalls => "show calls",
            Request::ShowCdrs { .. } => "show cdrs",
            Request::ShowSipStats => "show sip stats",
            Request::ShowHistory => "show history",
            Request::Compare { .. } => "compare",
            Request::Commit { .. } => "commit",
            Request::Confirm { .. } => "confirm",
            Request::Rollback { .. } => "rollback",
            Request::Provision => "provision",
            Request::Recover { .. } => "recover",
            Request::Reseal => "reseal",
            Request::RotateDataKey => "rotate data key",
            Request::Decommission { .. } => "decommission",
            Request::ShowPair => "show pair",
            Request::PairInit => "pair init",
            Request::PairJoin { .. } => "pair join",
            Request::Unpair => "unpair",
            Request::Failover => "failover",
            Request::PairRekey => "pair rekey",
            Request::ShowAudit { .. } => "show audit",
            Request::Whoami => "whoami",
            Request::ShowRevision { .. } => "show revision",
            Request::ClearLockout { .. } => "clear login-lockout",
            Request::ShowSessions => "show sessions",
            Request::EndSession { .. } => "end session",
            Request::ConfigLock => "configure",
            Request::ConfigUnlock => "exit configure",
            Request::History => "history",
            Request::ShowUplink => "show uplink",
            Request::UplinkCsr => "uplink csr",
            Request::UplinkInstallCert { .. } => "uplink install-cert",
            Request::SipTlsCsr => "sip tls csr",
            Request::SipTlsInstallCert { .. } => "sip tls install-cert",
            Request::IntakeCsr => "intake csr",
            Request::IntakeInstallCert { .. } => "intake install-cert",
            Request::Remember { .. } => "typed",
            Request::UpgradeRecord { .. } => "upgrade record",
            Request::ShowSubject { .. } => "show subject",
            Request::SubjectExport { .. } => "request subject export",
            Request::SubjectErase { .. } => "request subject erase",
        }
    }
}

/// A reply: human text for the console plus structured data for tools and tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub text: String,
    #[serde(default)]
    pub data: serde_json::Value,
    /// A part of a streamed reply: more parts follow (the last one says `false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// What the handler answers: one response, or parts sent as they are made (a long listing
/// need not be held whole in memory); the last part has `more == false`.
#[derive(Debug)]
pub enum Reply {
    One(Response),
    Stream(tokio::sync::mpsc::Receiver<Response>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::One(r)
    }
}

impl Response {
    pub fn ok(text: impl Into<String>, data: serde_json::Value) -> Self {
        Response {
            ok: true,
            text: text.into(),
            data,
            more: false,
        }
    }
    pub fn err(text: impl Into<String>) -> Self {
        Response {
            ok: false,
            text: text.into(),
            data: serde_json::Value::Null,
            more: false,
        }
    }
}

/// Who is on the other end of a connection, as the kernel reports it, and the role the
/// daemon gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
    pub user: String,
    /// `None`: no console account; every request is refused.
    pub role: Option<Role>,
    /// The uid the login session started as (`/proc/PID/loginuid`), when set.
    pub loginuid: Option<u32>,
    /// The kernel's audit session id (`/proc/PID/sessionid`), when set.
    pub session: Option<u32>,
    /// This connection's number (unique while the daemon runs).
    pub conn: u64,
}

impl Peer {
    /// Whether the peer may change the appliance.
    pub fn is_admin(&self) -> bool {
        self.role == Some(Role::Admin)
    }

    /// The kernel's view of a connected process (blocking: reads /etc/passwd), with its
    /// login uid and audit session as `proc` reads them (`/proc/PID/loginuid` and
    /// `sessionid`: set at login, the user cannot change them).
    pub fn lookup(uid: u32, pid: Option<i32>, proc: &dyn Fn(i32) -> ProcIds) -> Peer {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid{uid}"));
        let ids = pid.map(proc).unwrap_or_default();
        Peer {
            uid,
            pid,
            user,
            role: None,
            loginuid: ids.loginuid,
            session: ids.session,
            conn: 0,
        }
    }
}

/// A process's login uid and audit session, as read from `/proc/PID` by whoever may
/// (the daemon itself when it is root; its accounts helper when it is not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcIds {
    pub loginuid: Option<u32>,
    pub session: Option<u32>,
}

/// Reads a connected process's [`ProcIds`] (blocking; run off the async runtime).
pub type ProcReader = Arc<dyn Fn(i32) -> ProcIds + Send + Sync>;

/// The daemon's answer for a peer: its role, or none.
pub type Authorizer = Arc<dyn Fn(&Peer) -> Option<Role> + Send + Sync>;

/// What reaches the handler.
#[derive(Debug, Clone)]
pub enum Call {
    /// A request the peer's role allows.
    Request(Request),
    /// Refused before it was carried out: the request's name (or what was read of it)
    /// and why. The handler audits it and answers with the error.
    Refused { what: String, why: String },
    /// The connection ended (nothing is sent back): what it held is released.
    Closed,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot bind the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the daemon at {path} (is callgated running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket I/O failed")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Protocol(String),
}

/// What the daemon does with a call.
pub type Handler =
    Arc<dyn Fn(Peer, Call) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// Binds the socket (replacing a stale one), mode 0660, group [`CONSOLE_GROUP`] when the
/// system has it.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    set_socket_group(path).map_err(err)?;
    Ok(l)
}

/// Gives the socket to the group [`CONSOLE_GROUP`], when the system has it (blocking: reads
/// /etc/group). Called at bind and again once the console accounts exist. A socket that
/// is the group's already is left alone: a daemon whose own group it is (the image's,
/// which may not call `chown` at all) made it so.
pub fn set_socket_group(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(Some(g)) = nix::unistd::Group::from_name(CONSOLE_GROUP) {
        if std::fs::metadata(path)?.gid() == g.gid.as_raw() {
            return Ok(());
        }
        nix::unistd::chown(path, None, Some(g.gid))
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
    }
    Ok(())
}

/// Serves connections until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    handler: Handler,
    authorize: Authorizer,
    proc: ProcReader,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return; }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        log::warn!("control socket: over {MAX_CONNECTIONS} connections; one closed unread");
                        continue;
                    };
                    let (h, a, r) = (handler.clone(), authorize.clone(), proc.clone());
                    conns += 1;
                    let conn = conns;
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, h, a, r, conn).await {
                            log::debug!("control connection ended: {e}");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    log::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn connection(
    stream: UnixStream,
    handler: Handler,
    authorize: Authorizer,
    proc: ProcReader,
    conn: u64,
) -> Result<(), ControlError> {
    let cred = stream.peer_cred()?;
    let (uid, pid) = (cred.uid(), cred.pid());
    let mut peer = tokio::task::spawn_blocking(move || Peer::lookup(uid, pid, &*proc))
        .await
        .map_err(|e| ControlError::Protocol(e.to_string()))?;
    peer.role = authorize(&peer);
    peer.conn = conn;
    let r = serve_connection(stream, &handler, &peer).await;
    let _ = handler(peer, Call::Closed).await;
    r
}

async fn serve_connection(
    stream: UnixStream,
    handler: &Handler,
    peer: &Peer,
) -> Result<(), ControlError> {
    let peer = peer.clone();
    let (rd, mut wr) = stream.into_split();
    let Some(role) = peer.role else {
        // Nothing is read from a peer without an account.
        let why = format!("user {} has no console account", peer.user);
        let resp = handler(
            peer,
            Call::Refused {
                what: "connect".into(),
                why,
            },
        )
        .await;
        return write_reply(&mut wr, resp).await;
    };
    let limit = match role {
        Role::Admin => MAX_REQUEST,
        Role::Operator => OPERATOR_MAX_REQUEST,
    };
    let mut rd = tokio::io::BufReader::new(rd).take(limit);
    let mut line = String::new();
    loop {
        line.clear();
        let n = rd.read_line(&mut line).await?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && rd.limit() == 0 {
            // Over the role's limit: refused, and the connection ends (the rest is unread).
            let why = format!("a request over {limit} bytes");
            let resp = handler(
                peer.clone(),
                Call::Refused {
                    what: "oversized request".into(),
                    why,
                },
            )
            .await;
            return write_reply(&mut wr, resp).await;
        }
        rd.set_limit(limit);
        let call = match serde_json::from_str::<Request>(&line) {
            Err(e) => Call::Refused {
                what: "malformed request".into(),
                why: malformed(&e),
            },
            Ok(req) if role < req.required_role() => Call::Refused {
                what: req.name().into(),
                why: format!(
                    "permission denied: {} needs the {} role; {} is an {}",
                    req.name(),
                    req.required_role(),
                    peer.user,
                    role
                ),
            },
            Ok(req) => Call::Request(req),
        };
        let reply = handler(peer.clone(), call).await;
        write_reply(&mut wr, reply).await?;
    }
}

/// Why a request line was refused: the kind of error and where, never the text (serde's
/// messages quote what they read, and a request can carry a caller's number: the refusal
/// reaches the audit trail and the journal).
fn malformed(e: &serde_json::Error) -> String {
    let kind = match e.classify() {
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Eof => "the JSON ends early",
        serde_json::error::Category::Data => {
            "not a request this daemon knows, or a field of the wrong type"
        }
        serde_json::error::Category::Io => "unreadable",
    };
    match e.line() {
        // Errors found in a value already read have no position.
        0 => format!("malformed request: {kind}"),
        l => format!(
            "malformed request: {kind} (line {l}, column {})",
            e.column()
        ),
    }
}

/// Writes a reply: one line, or each part of a stream as it comes (the stream's end is a
/// part with `more == false`; a stream that stops early gets one added).
async fn write_reply(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    reply: Reply,
) -> Result<(), ControlError> {
    match reply {
        Reply::One(r) => write_response(wr, &r).await,
        Reply::Stream(mut rx) => loop {
            match rx.recv().await {
                Some(r) => {
                    let last = !r.more;
                    write_response(wr, &r).await?;
                    if last {
                        return Ok(());
                    }
                }
                None => {
                    return write_response(wr, &Response::err("the reply ended early")).await;
                }
            }
        },
    }
}

async fn write_response(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    resp: &Response,
) -> Result<(), ControlError> {
    let mut out = serde_json::to_vec(resp).map_err(|e| ControlError::Protocol(e.to_string()))?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    Ok(())
}

/// Adds a streamed part to the reply so far: text appended, arrays in `data` extended, the
/// outcome the last part's.
fn merge(whole: &mut Response, part: Response) {
    whole.text.push_str(&part.text);
    whole.ok = part.ok;
    whole.more = part.more;
    if let (Some(w), Some(p)) = (whole.data.as_object_mut(), part.data.as_object()) {
        for (k, v) in p {
            match (w.get_mut(k), v) {
                (Some(serde_json::Value::Array(a)), serde_json::Value::Array(b)) => {
                    a.extend(b.iter().cloned())
                }
                _ => {
                    w.insert(k.clone(), v.clone());
                }
            }
        }
    } else if !part.data.is_null() {
        whole.data = part.data;
    }
}

/// A blocking client for the console tool.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    stream: std::os::unix::net::UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ControlError> {
        let stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
            ControlError::Connect {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Client {
            path: path.to_path_buf(),
            stream,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and waits for its response.
    pub fn request(&mut self, req: &Request) -> Result<Response, ControlError> {
        let mut whole: Option<Response> = None;
        self.request_parts(req, |part| match &mut whole {
            None => whole = Some(part),
            Some(w) => merge(w, part),
        })?;
        whole.ok_or_else(|| ControlError::Protocol("no reply".into()))
    }

    /// Sends one request and hands each part of the reply to `each` as it arrives (one
    /// part, or the parts of a streamed reply).
    pub fn request_parts(
        &mut self,
        req: &Request,
        mut each: impl FnMut(Response),
    ) -> Result<(), ControlError> {
        let mut out = serde_json::to_vec(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
        out.push(b'\n');
        self.stream.write_all(&out)?;
        let mut rd = BufReader::new(&self.stream);
        loop {
            let mut line = String::new();
            if (&mut rd).take(MAX_REQUEST).read_line(&mut line)? == 0 {
                return Err(ControlError::Protocol(
                    "the daemon closed the connection".into(),
                ));
            }
            let part: Response =
                serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))?;
            let more = part.more;
            each(part);
            if !more {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r = Request::Commit {
            text: "x".into(),
            origin: "a.toml".into(),
            force: false,
            confirmed_secs: Some(30),
            this_node: false,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        assert!(r.is_change());
        assert!(!Request::ShowFirewall.is_change());
        assert!(Request::ShowCdrs {
            last: 1,
            text_only: false
        }
        .is_audited());
        assert!(
            !Request::ShowCalls.is_audited(),
            "show calls masks caller numbers"
        );
        assert!(serde_json::from_str::<Request>("{\"cmd\":\"format_disk\"}").is_err());
    }

    #[test]
    fn a_malformed_request_is_refused_by_kind_and_place_never_by_its_text() {
        for line in [
            r#"{"cmd":"show_subject","number":15551234567}"#,
            r#"{"cmd":"+15551234567"}"#,
            r#"{"cmd":"show_subject","number":"+15551234567""#,
            r#"+15551234567"#,
        ] {
            let e = serde_json::from_str::<Request>(line).unwrap_err();
            let why = malformed(&e);
            // Where it is known (a syntax error), the place is given.
            assert!(e.line() == 0 || why.contains(", column "), "{why}");
            assert!(why.starts_with("malformed request: "), "{why}");
            assert!(!why.contains("5551234567"), "{line}: {why}");
        }
    }

    #[test]
    fn subject_requests_are_an_admins_and_audited() {
        let number = "+12025550101".to_string();
        for r in [
            Request::ShowSubject {
                number: number.clone(),
            },
            Request::SubjectExport {
                number: number.clone(),
                format: ExportFormat::Csv,
            },
            Request::SubjectErase {
                number: number.clone(),
            },
        ] {
            assert_eq!(r.required_role(), Role::Admin, "{}", r.name());
            assert!(r.is_audited(), "{}", r.name());
            let s = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        }
        assert!(Request::SubjectErase { number }.is_change());
        // Call records: an operator's too (masked by the daemon), and on record.
        let cdrs = Request::ShowCdrs {
            last: 5,
            text_only: false,
        };
        assert_eq!(cdrs.required_role(), Role::Operator);
        assert!(cdrs.is_audited());
        assert_eq!(Request::ShowAudit { last: 5 }.required_role(), Role::Admin);
        assert_eq!("csv".parse::<ExportFormat>(), Ok(ExportFormat::Csv));
        assert!("xml".parse::<ExportFormat>().is_err());
    }

    #[tokio::test]
    async fn serve_answers_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let l = bind(&path).unwrap();
        let (tx, rx) = watch::channel(false);
        let h: Handler = Arc::new(|peer: Peer, call: Call| {
            Box::pin(async move {
                Reply::One(match call {
                    Call::Request(req) => Response::ok(
                        format!("{} {}", peer.user, req.name()),
                        serde_json::Value::Null,
                    ),
                    Call::Refused { why, .. } => Response::err(why),
                    Call::Closed => Response::ok("", serde_json::Value::Null),
                })
            })
        });
        let a: Authorizer = Arc::new(|_| Some(Role::Operator));
        let task = tokio::spawn(serve(l, h, a, Arc::new(|_| ProcIds::default()), rx));
        let p = path.clone();
        let (a, b, c, d) = tokio::task::spawn_blocking(move || {
            let mut c = Client::connect(&p).unwrap();
            let a = c.request(&Request::Status).unwrap();
            c.stream.write_all(b"{not json}\n").unwrap();
            let mut line = String::new();
            BufReader::new(&c.stream).read_line(&mut line).unwrap();
            let b: Response = serde_json::from_str(&line).unwrap();
            // An operator may not commit, and may not send a config-sized request.
            let cc = c
                .request(&Request::Commit {
                    text: "x".into(),
                    origin: "a.toml".into(),
                    force: false,
                    confirmed_secs: None,
                    this_node: false,
                })
                .unwrap();
            let big = vec![b'a'; OPERATOR_MAX_REQUEST as usize + 10];
            let _ = c.stream.write_all(&big);
            let mut line = String::new();
            BufReader::new(&c.stream).read_line(&mut line).unwrap();
            let d: Response = serde_json::from_str(&line).unwrap();
            (a, b, cc, d)
        })
        .await
        .unwrap();
        assert!(a.ok && a.text.ends_with("status"), "{a:?}");
        assert!(!b.ok && b.text.contains("malformed"), "{b:?}");
        assert!(!c.ok && c.text.contains("needs the admin role"), "{c:?}");
        assert!(!d.ok && d.text.contains("over 65536 bytes"), "{d:?}");
        tx.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_streamed_reply_arrives_in_parts_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let l = bind(&path).unwrap();
        let (tx, rx) = watch::channel(false);
        let h: Handler = Arc::new(|_peer: Peer, _call: Call| {
            Box::pin(async move {
                let (ptx, prx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    for i in 0..3 {
                        let mut r =
                            Response::ok(format!("part {i}\n"), serde_json::json!({"rows": [i]}));
                        r.more = i < 2;
                        let _ = ptx.send(r).await;
                    }
                });
                Reply::Stream(prx)
            })
        });
        let a: Authorizer = Arc::new(|_| Some(Role::Admin));
        let task = tokio::spawn(serve(l, h, a, Arc::new(|_| ProcIds::default()), rx));
        let p = path.clone();
        let (parts, whole) = tokio::task::spawn_blocking(move || {
            let mut c = Client::connect(&p).unwrap();
            let mut parts = 0;
            c.request_parts(&Request::Status, |_| parts += 1).unwrap();
            (parts, c.request(&Request::Status).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(parts, 3);
        assert!(whole.ok && !whole.more);
        assert_eq!(whole.text, "part 0\npart 1\npart 2\n");
        assert_eq!(whole.data["rows"], serde_json::json!([0, 1, 2]));
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
