//! # callgate-control
//!
//! The control socket between the `callgate` console tool and the daemon
//! (`/run/callgate/control.sock`).
//!
//! ## Design
//! - One JSON request per line, one JSON response per line ([`Request`], [`Response`]).
//! - Peers are identified by `SO_PEERCRED`: the kernel says which uid connected, so the
//!   daemon never trusts a user name sent by the client.
//! - Read-only requests are open to any local user that can reach the socket (the socket is
//!   `0660`); changes need uid 0 or membership of the `callgate-admin` group. Every change is
//!   logged with the user who made it.
//! - [`serve`] is transport only; what a request does is the daemon's handler.
//!
//! ## Current limitations
//! - Users and roles are the local accounts; console users, sessions and lockout come with
//!   the console issue.

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

/// Largest request accepted (a config with 100k prefixes is a few MiB).
pub const MAX_REQUEST: u64 = 64 * 1024 * 1024;

/// Group whose members may change the configuration.
pub const ADMIN_GROUP: &str = "callgate-admin";

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
}

fn default_last() -> usize {
    20
}

impl Request {
    /// Whether the request reads personal data (caller numbers and names): needs an admin
    /// and is audited like a change (CCPA: every access to a consumer's data is on record).
    pub fn reads_pii(&self) -> bool {
        matches!(self, Request::ShowCdrs { .. })
    }

    /// Whether the request needs an admin and goes into the audit trail.
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
        )
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
}

impl Response {
    pub fn ok(text: impl Into<String>, data: serde_json::Value) -> Self {
        Response {
            ok: true,
            text: text.into(),
            data,
        }
    }
    pub fn err(text: impl Into<String>) -> Self {
        Response {
            ok: false,
            text: text.into(),
            data: serde_json::Value::Null,
        }
    }
}

/// Who is on the other end of a connection, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
    pub user: String,
    pub admin: bool,
}

impl Peer {
    fn from_uid(uid: u32, pid: Option<i32>) -> Peer {
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten();
        let name = user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_else(|| format!("uid{uid}"));
        let admin = uid == 0
            || nix::unistd::Group::from_name(ADMIN_GROUP)
                .ok()
                .flatten()
                .is_some_and(|g| {
                    g.mem.contains(&name) || user.as_ref().is_some_and(|u| u.gid == g.gid)
                });
        Peer {
            uid,
            pid,
            user: name,
            admin,
        }
    }
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

/// What the daemon does with a request.
pub type Handler =
    Arc<dyn Fn(Peer, Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Binds the socket (replacing a stale one), mode 0660.
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
    Ok(l)
}

/// Serves connections until `shutdown` turns true.
pub async fn serve(listener: UnixListener, handler: Handler, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return; }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let h = handler.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, h).await {
                            log::debug!("control connection ended: {e}");
                        }
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

async fn connection(stream: UnixStream, handler: Handler) -> Result<(), ControlError> {
    let cred = stream.peer_cred()?;
    let peer = Peer::from_uid(cred.uid(), cred.pid());
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd).take(MAX_REQUEST);
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        rd.set_limit(MAX_REQUEST);
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::err(format!("malformed request: {e}")),
            Ok(req) if req.is_audited() && !peer.admin => {
                log::warn!(
                    "audit: user={} uid={} denied {} (not root or in {ADMIN_GROUP})",
                    peer.user,
                    peer.uid,
                    req.name()
                );
                Response::err(format!(
                    "permission denied: {} needs root or membership of {ADMIN_GROUP}",
                    req.name()
                ))
            }
            Ok(req) => handler(peer.clone(), req).await,
        };
        let mut out =
            serde_json::to_vec(&resp).map_err(|e| ControlError::Protocol(e.to_string()))?;
        out.push(b'\n');
        wr.write_all(&out).await?;
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
        let mut out = serde_json::to_vec(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
        out.push(b'\n');
        self.stream.write_all(&out)?;
        let mut line = String::new();
        let mut rd = BufReader::new((&self.stream).take(MAX_REQUEST));
        if rd.read_line(&mut line)? == 0 {
            return Err(ControlError::Protocol(
                "the daemon closed the connection".into(),
            ));
        }
        serde_json::from_str(&line).map_err(|e| ControlError::Protocol(e.to_string()))
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
        assert!(Request::ShowCdrs { last: 1 }.is_audited());
        assert!(
            !Request::ShowCalls.is_audited(),
            "show calls masks caller numbers"
        );
        assert!(serde_json::from_str::<Request>("{\"cmd\":\"format_disk\"}").is_err());
    }

    #[tokio::test]
    async fn serve_answers_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let l = bind(&path).unwrap();
        let (tx, rx) = watch::channel(false);
        let h: Handler = Arc::new(|peer: Peer, req: Request| {
            Box::pin(async move {
                Response::ok(
                    format!("{} {}", peer.user, req.name()),
                    serde_json::Value::Null,
                )
            })
        });
        let task = tokio::spawn(serve(l, h, rx));
        let p = path.clone();
        let (a, b) = tokio::task::spawn_blocking(move || {
            let mut c = Client::connect(&p).unwrap();
            let a = c.request(&Request::Status).unwrap();
            c.stream.write_all(b"{not json}\n").unwrap();
            let mut line = String::new();
            BufReader::new(&c.stream).read_line(&mut line).unwrap();
            let b: Response = serde_json::from_str(&line).unwrap();
            (a, b)
        })
        .await
        .unwrap();
        assert!(a.ok && a.text.ends_with("status"), "{a:?}");
        assert!(!b.ok && b.text.contains("malformed"), "{b:?}");
        tx.send(true).unwrap();
        task.await.unwrap();
    }
}
