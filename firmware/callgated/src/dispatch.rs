//! What each control request does: calls into the components and formats the reply.
//! Every change is written to the audit log with the user the kernel reported.

use std::sync::Arc;
use std::time::Duration;

use callgate_accounts::privileged::Privileged;
use callgate_control::{Authorizer, Call, Handler, Peer, ProcIds, Reply, Request, Response, Role};
use callgate_firewall::{error_chain, FirewallHandle, FirewallReport, Verification};
use callgate_store::AuditEntry;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};

use crate::lifecycle::{Lifecycle, Phase};

/// Who may do what: root is an admin; anyone else has the role of their `[[user]]` in the
/// running config, and no role while the appliance is locked.
pub fn authorizer(phase: watch::Receiver<Arc<Phase>>) -> Authorizer {
    Arc::new(move |peer: &Peer| role_of(&phase.borrow(), peer))
}

/// The role `peer` has in `phase` (see [`authorizer`]).
fn role_of(phase: &Phase, peer: &Peer) -> Option<Role> {
    if peer.uid == 0 {
        return Some(Role::Admin);
    }
    match phase {
        Phase::Running { config, .. } => {
            let cfg = config.config().borrow().clone();
            if peer.user == callgate_config::BREAK_GLASS_USER
                && cfg.console.break_glass_password.is_some()
            {
                return Some(Role::Admin);
            }
            cfg.user(&peer.user).map(|u| u.role)
        }
        Phase::Locked { .. } => None,
    }
}

/// Who holds configuration mode (`configure`): one connection at a time.
#[derive(Debug, Clone)]
struct LockHolder {
    conn: u64,
    user: String,
    session: Option<u32>,
    since_ms: u64,
}

impl LockHolder {
    fn describe(&self) -> String {
        format!(
            "configuration is locked by {}{} since {}: ask them to exit configuration mode",
            self.user,
            self.session
                .map(|s| format!(" (session {s})"))
                .unwrap_or_default(),
            fmt_time(self.since_ms)
        )
    }
}

pub fn handler(
    phase: watch::Receiver<Arc<Phase>>,
    firewall: FirewallHandle,
    lifecycle: mpsc::Sender<Lifecycle>,
    protector: String,
    privileged: Arc<Privileged>,
) -> Handler {
    let lock: Arc<tokio::sync::Mutex<Option<LockHolder>>> = Arc::default();
    let sessions = Arc::new(crate::sessions::Sessions::new(privileged));
    Arc::new(move |peer: Peer, call: Call| {
        let phase = phase.borrow().clone();
        let firewall = firewall.clone();
        let lifecycle = lifecycle.clone();
        let protector = protector.clone();
        let lock = lock.clone();
        let sessions = sessions.clone();
        Box::pin(async move {
            // `show cdrs` streams: its pages go out as they are read.
            if let (
                Call::Request(Request::ShowCdrs { last, text_only }),
                Phase::Running { store, .. },
            ) = (&call, &*phase)
            {
                if !audit(&phase, &peer, "show cdrs", "started").await {
                    return Reply::One(Response::err(
                        "show cdrs: refused: the audit trail cannot be written",
                    ));
                }
                // Anyone but an admin gets the caller's number and name masked.
                let masked = peer.role != Some(Role::Admin);
                let rx = crate::calls_view::stream_cdrs(store.clone(), *last, *text_only, masked);
                let _ = audit(&phase, &peer, "show cdrs", "ok (streamed)").await;
                return Reply::Stream(rx);
            }
            Reply::One(
                serve_call(
                    phase, firewall, lifecycle, protector, lock, sessions, peer, call,
                )
                .await,
            )
        })
    })
}

/// One call, answered whole.
#[allow(clippy::too_many_arguments)]
async fn serve_call(
    phase: Arc<Phase>,
    firewall: FirewallHandle,
    lifecycle: mpsc::Sender<Lifecycle>,
    protector: String,
    lock: Arc<tokio::sync::Mutex<Option<LockHolder>>>,
    sessions: Arc<crate::sessions::Sessions>,
    peer: Peer,
    call: Call,
) -> Response {
    {
        {
            let req = match call {
                Call::Refused { what, why } => {
                    // Refused requests are on record like accepted ones.
                    let _ = audit(&phase, &peer, &what, &format!("refused: {why}")).await;
                    return Response::err(why);
                }
                Call::Closed => {
                    sessions.closed(peer.conn).await;
                    let mut l = lock.lock().await;
                    if l.as_ref().is_some_and(|h| h.conn == peer.conn) {
                        *l = None;
                        let _ = audit(&phase, &peer, "exit configure", "connection closed").await;
                    }
                    return Response::ok("", json!({}));
                }
                Call::Request(req) => req,
            };
            if let Request::UpgradeRecord { uid, pid, step } = &req {
                return upgrade_record(&phase, sessions.privileged(), &peer, *uid, *pid, step)
                    .await;
            }
            let name = req.name();
            let typed = match &req {
                Request::Remember { line } => Some(line.clone()),
                _ => None,
            };
            let is_change = req.is_change();
            let is_erasure = matches!(req, Request::SubjectErase { .. });
            // A change goes ahead only once it is on record.
            if req.is_audited() && !audit(&phase, &peer, name, "started").await {
                return Response::err(format!(
                    "{name}: refused: the audit trail cannot be written, so nothing is changed"
                ));
            }
            // The console sessions: listed, ended, and opened by a console's `whoami`.
            let session_resp = match &req {
                Request::ShowSessions => Some(sessions.show().await),
                Request::EndSession { session } => Some(sessions.end(&peer, *session).await),
                Request::Whoami => {
                    sessions.opened(&peer).await;
                    None
                }
                _ => None,
            };
            // Configuration mode's lock: taken, released, and in the way of the others.
            let resp = match session_resp {
                Some(r) => r,
                None => match config_lock(&lock, &peer, &req).await {
                    Some(r) => r,
                    None => handle(&phase, &firewall, &lifecycle, &protector, &peer, req).await,
                },
            };
            let result = if let (true, Some(line)) = (resp.ok, typed) {
                // Command accounting: the line itself is the record.
                line
            } else if resp.ok {
                "ok".to_owned()
            } else {
                format!("refused: {}", resp.text.lines().next().unwrap_or(""))
            };
            let _ = audit(&phase, &peer, name, &result).await;
            // Changes go to the cloud as events too (commits, failovers, lockouts lifted). An
            // erasure that made a receipt (a pair's whose peer did not confirm too) is the
            // event `subject erased` with the signed receipt, kept in the store's outbox
            // until the broker has it (no number in it).
            if let Phase::Running { uplink, .. } = &*phase {
                // What leaves the site names no caller: numbers in the result are tags.
                let result = callgate_cdr::scrub(&result);
                let detail = json!({"user": peer.user, "session": peer.session, "result": result});
                if is_erasure && !resp.data["receipt"].is_null() {
                    let mut detail = detail;
                    // The reply's first line names the number: not kept for the uplink.
                    detail["result"] = if resp.ok { "ok" } else { "refused" }.into();
                    detail["receipt"] = resp.data["receipt"].clone();
                    detail["record_ids"] = resp.data["record_ids"].clone();
                    detail["peer"] = resp.data["peer"].clone();
                    uplink.event_durably(ERASED_EVENT, detail).await;
                } else if is_change && resp.ok {
                    uplink.event(name, detail);
                }
            }
            resp
        }
    }
}

/// The event of an erasure, with its receipt.
pub const ERASED_EVENT: &str = "subject erased";

/// How long an erasure waits for the pair's peer to answer.
const PEER_ERASE_WAIT: Duration = Duration::from_secs(10);

/// `request subject erase NUMBER` (a normalised number): here, then on the pair's peer
/// when paired, then one receipt naming both. A paired appliance whose peer is not
/// connected refuses before anything is erased: an erasure is never reported done on one
/// appliance of a pair alone. If the link drops after this appliance erased, the receipt
/// says the peer is not confirmed and the reply fails; asked again, the request erases
/// on the peer (nothing is held here any more).
async fn erase_subject(
    lifecycle: &mpsc::Sender<Lifecycle>,
    store: &Arc<callgate_store::Store>,
    config: &callgate_revisions::ConfigService,
    replica: Option<&crate::replica::Replicator>,
    number: &str,
    by: &str,
) -> Response {
    let peer = match (
        replica,
        crate::pair_config::names_of(&config.config().borrow()),
    ) {
        (Some(r), Ok((_, p))) => Some((r.clone(), p.to_string())),
        _ => None,
    };
    if let Some((r, name)) = &peer {
        if !r.connected() {
            return Response::err(format!(
                "the pair's peer {name} is not connected over the sync link: nothing was \
                 erased (an erasure must reach both appliances of a pair; ask again once \
                 `show pair` says connected)"
            ));
        }
    }
    let (st, b, n) = (store.clone(), by.to_owned(), number.to_owned());
    let peer_name = peer.as_ref().map(|(_, p)| p.clone());
    let first = ask(lifecycle, move |reply| Lifecycle::SubjectErase {
        store: st,
        number: n,
        by: b,
        peer: peer_name,
        reply,
    })
    .await;
    let (first, (r, appliance)) = match (first, peer) {
        (Ok(first), Some(p)) => (first, p),
        (r, _) => return crate::subjects::erase_answer(number, r),
    };
    let outcome = match r.erase_on_peer(number, by, PEER_ERASE_WAIT).await {
        Ok(Some(e)) => callgate_store::PeerOutcome::Erased {
            appliance,
            erased_at_ms: e.erased_at_ms,
            key_generation: e.key_generation,
            record_ids: e.record_ids,
        },
        Ok(None) => callgate_store::PeerOutcome::NothingHeld { appliance },
        Err(reason) => callgate_store::PeerOutcome::Unconfirmed { appliance, reason },
    };
    let (erased_here, told) = (first.is_some(), outcome.clone());
    let (st, b, n) = (store.clone(), by.to_owned(), number.to_owned());
    let r = ask(lifecycle, move |reply| Lifecycle::SubjectEraseFinish {
        store: st,
        number: n,
        by: b,
        first: Box::new(first),
        peer: Box::new(outcome),
        reply,
    })
    .await;
    match r {
        Err(e) => crate::subjects::finish_failed(erased_here, &told, &e),
        r => crate::subjects::erase_answer(number, r),
    }
}

/// How many console lines the daemon keeps per user.
const HISTORY_LINES: usize = 500;

/// Where pam_faillock keeps its records: `dir` in /etc/security/faillock.conf (the
/// `faillock` tool of Debian 12 does not read that file itself), else its default.
fn faillock_dir() -> String {
    let conf = std::fs::read_to_string("/etc/security/faillock.conf").unwrap_or_default();
    crate::lockouts::Policy::parse(&conf)
        .dir
        .to_string_lossy()
        .into_owned()
}

/// `configure` and its exit, and the commits of everyone else while someone holds it.
/// `None`: the request goes on.
async fn config_lock(
    lock: &tokio::sync::Mutex<Option<LockHolder>>,
    peer: &Peer,
    req: &Request,
) -> Option<Response> {
    let mut l = lock.lock().await;
    let other = l.as_ref().filter(|h| h.conn != peer.conn).cloned();
    match req {
        Request::ConfigLock => Some(match other {
            Some(h) => Response::err(h.describe()),
            None => {
                *l = Some(LockHolder {
                    conn: peer.conn,
                    user: peer.user.clone(),
                    session: peer.session,
                    since_ms: callgate_revisions::now_ms(),
                });
                Response::ok("configuration mode: the lock is yours", json!({}))
            }
        }),
        Request::ConfigUnlock => {
            if other.is_none() {
                *l = None;
            }
            Some(Response::ok("", json!({})))
        }
        Request::Commit { .. } | Request::Confirm { .. } | Request::Rollback { .. } => {
            other.map(|h| Response::err(h.describe()))
        }
        _ => None,
    }
}

/// One step of an install, from the update installer (root only), written to the audit
/// trail under the account that asked for it: the uid and process the kernel gave the
/// installer. The login uid and session come from `/proc/PID` (through [`Privileged`]:
/// the accounts helper where the daemon is not root), while that process is
/// there with that uid (the console's `upgrade` waits for the installer's last line; a
/// requester gone by then is on record by its uid alone). Anyone but root is refused, and
/// that refusal is on record under their own name.
async fn upgrade_record(
    phase: &Phase,
    privileged: &Arc<Privileged>,
    peer: &Peer,
    uid: u32,
    pid: i32,
    step: &str,
) -> Response {
    if peer.uid != 0 {
        let why = "only the update installer (root) records an install";
        let _ = audit(phase, peer, "upgrade record", &format!("refused: {why}")).await;
        return Response::err(format!("upgrade record: refused: {why}"));
    }
    if !callgate_control::is_typed_line(step) {
        return Response::err(format!(
            "upgrade record: a step is one line of at most {} bytes",
            callgate_control::MAX_TYPED_LINE
        ));
    }
    let privileged = privileged.clone();
    let looked_up = tokio::task::spawn_blocking(move || {
        // The real uid (`Uid:`'s first): the process is still the account's.
        let info = privileged.process(pid);
        let alive = info.uid == Some(uid);
        let ids = ProcIds {
            loginuid: info.loginuid,
            session: info.session,
        };
        Peer::lookup(uid, alive.then_some(pid), &|_| ids)
    })
    .await;
    let Ok(mut who) = looked_up else {
        return Response::err("upgrade record: internal error");
    };
    who.role = role_of(phase, &who);
    who.conn = peer.conn;
    if audit(phase, &who, "upgrade", step).await {
        Response::ok("", json!({"user": who.user}))
    } else {
        Response::err("upgrade record: the audit trail cannot be written")
    }
}

/// Writes one audit entry: to the journal always, and to the encrypted audit table when
/// the store is open. Whether it reached the table (or the store is not open, where only
/// key custody runs, and the journal holds it).
///
/// The journal's copy names no caller: the detail (a typed line, a refusal's first line)
/// has every number-like run replaced by its keyed tag ([`callgate_cdr::scrub`]), whatever
/// the client sent. The sealed table keeps the line as the console handed it (the console
/// withholds a subject request's number itself).
async fn audit(phase: &Phase, peer: &Peer, action: &str, detail: &str) -> bool {
    let role = peer.role.map_or("none", Role::as_str);
    let opt = |v: Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
    log::info!(
        "audit: user={} uid={} role={role} loginuid={} session={} pid={} {action} -> {}",
        peer.user,
        peer.uid,
        opt(peer.loginuid),
        opt(peer.session),
        peer.pid.map_or("-".to_owned(), |p| p.to_string()),
        callgate_cdr::Scrubbed(detail),
    );
    let Phase::Running { store, .. } = phase else {
        return true;
    };
    let entry = AuditEntry {
        time_ms: callgate_revisions::now_ms(),
        user: peer.user.clone(),
        action: action.to_owned(),
        detail: detail.to_owned(),
        uid: Some(peer.uid),
        role: peer.role.map(|r| r.as_str().to_owned()),
        loginuid: peer.loginuid,
        session: peer.session,
    };
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.append_audit(&entry)).await {
        Ok(Ok(_)) => true,
        _ => {
            log::error!(
                "audit entry could not be recorded: {action} by {}",
                peer.user
            );
            false
        }
    }
}

fn fail(e: &dyn std::error::Error) -> Response {
    Response::err(error_chain(e))
}

async fn ask<T>(
    lifecycle: &mpsc::Sender<Lifecycle>,
    make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Lifecycle,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    lifecycle
        .send(make(tx))
        .await
        .map_err(|_| "the daemon is stopping".to_owned())?;
    rx.await.map_err(|_| "the daemon is stopping".to_owned())?
}

async fn handle(
    phase: &Phase,
    firewall: &FirewallHandle,
    lifecycle: &mpsc::Sender<Lifecycle>,
    protector: &str,
    peer: &Peer,
    req: Request,
) -> Response {
    // Key custody works in either phase.
    match req {
        Request::Provision => {
            return match ask(lifecycle, Lifecycle::Provision).await {
                Ok(key) => Response::ok(
                    format!(
                        "provisioned: the key-encryption key is sealed ({protector}).\n\n\
                         RECOVERY KEY (shown once; store it offline under the authorised procedure):\n\n    {key}\n"
                    ),
                    json!({"recovery_key": key}),
                ),
                Err(e) => Response::err(e),
            }
        }
        Request::Recover { recovery_key } => {
            return match ask(lifecycle, |tx| Lifecycle::Recover(recovery_key, tx)).await {
                Ok(()) => Response::ok("recovered: the key-encryption key is sealed to this TPM again", json!({})),
                Err(e) => Response::err(e),
            }
        }
        Request::Reseal => {
            return match ask(lifecycle, Lifecycle::Reseal).await {
                Ok(()) => Response::ok("re-sealed to the current PCR values", json!({})),
                Err(e) => Response::err(e),
            }
        }
        Request::Decommission { confirm } => {
            if !confirm {
                return Response::err("decommission destroys every record: repeat with --yes-destroy-all-data");
            }
            return match ask(lifecycle, Lifecycle::Decommission).await {
                Ok(()) => Response::ok(
                    "decommissioned: TPM cleared, sealed keys and records deleted; nothing on this appliance can be decrypted any more",
                    json!({}),
                ),
                Err(e) => Response::err(e),
            };
        }
        Request::PairInit => {
            return match ask(lifecycle, Lifecycle::PairInit).await {
                Ok(secret) => Response::ok(
                    format!(
                        "paired: the pair key is kept under this appliance's sealed key.\n\n\
                         PAIRING SECRET (shown once; give it to `pair join` on the peer, then discard it):\n\n    {secret}\n"
                    ),
                    json!({"pairing_secret": secret}),
                ),
                Err(e) => Response::err(e),
            }
        }
        Request::PairJoin { secret } => {
            return match ask(lifecycle, |tx| Lifecycle::PairJoin(secret, tx)).await {
                Ok(()) => Response::ok(
                    "joined: the pair key is kept under this appliance's sealed key; the heartbeat runs",
                    json!({}),
                ),
                Err(e) => Response::err(e),
            }
        }
        Request::PairRekey => {
            return match ask(lifecycle, Lifecycle::PairRekey).await {
                Ok(()) => Response::ok(
                    "re-keyed: both appliances keep the new pair key; the old one is refused from now on (10 s for heartbeats in flight)",
                    json!({}),
                ),
                Err(e) => Response::err(e),
            }
        }
        Request::UplinkCsr => {
            return csr_answer(
                ask(lifecycle, Lifecycle::UplinkCsr).await,
                "the fleet CA sign this request (client authentication, CN kept), then install the chain with `callgate uplink install-cert FILE`",
            );
        }
        Request::UplinkInstallCert { pem } => {
            return installed_answer(
                ask(lifecycle, |tx| Lifecycle::UplinkInstall(pem, tx)).await,
                "the uplink connects with it",
            );
        }
        Request::SipTlsCsr => {
            return csr_answer(
                ask(lifecycle, Lifecycle::SipTlsCsr).await,
                "a CA the carriers trust sign this request (server authentication), then install the chain with `callgate sip tls install-cert FILE`",
            );
        }
        Request::SipTlsInstallCert { pem } => {
            return installed_answer(
                ask(lifecycle, |tx| Lifecycle::SipTlsInstall(pem, tx)).await,
                "TLS handshakes use it now",
            );
        }
        Request::IntakeCsr => {
            return csr_answer(
                ask(lifecycle, Lifecycle::IntakeCsr).await,
                "a CA the PBX trusts sign this request (server authentication), then install the chain with `callgate intake install-cert FILE`",
            );
        }
        Request::IntakeInstallCert { pem } => {
            return installed_answer(
                ask(lifecycle, |tx| Lifecycle::IntakeInstall(pem, tx)).await,
                "the intake serves with it now",
            );
        }
        Request::Unpair => {
            return match ask(lifecycle, Lifecycle::Unpair).await {
                Ok(()) => Response::ok(
                    "unpaired: the pair key is forgotten and the virtual addresses released",
                    json!({}),
                ),
                Err(e) => Response::err(e),
            }
        }
        _ => {}
    }
    let (config, store, paired_replica) = match phase {
        Phase::Running {
            config,
            store,
            sip,
            pair,
            replica,
            uplink,
        } => {
            match req {
                Request::ShowUplink => {
                    let st = uplink.status();
                    return Response::ok(
                        crate::uplink::show_text(&st),
                        crate::uplink::show_json(&st),
                    );
                }
                Request::ShowCalls | Request::ShowSipStats | Request::ShowCdrs { .. } => {
                    return crate::calls_view::handle(sip.as_ref(), req).await;
                }
                Request::ShowPair => {
                    let state = pair.borrow().clone();
                    let rep = replica.as_ref().map(|r| r.status());
                    return Response::ok(
                        crate::pair::show_text(&state, rep.as_ref()),
                        crate::pair::show_json(&state, rep.as_ref()),
                    );
                }
                Request::Failover => {
                    let state = pair.borrow().clone();
                    return match state {
                        crate::pair::PairState::Running(h) => {
                            let ring = std::time::Duration::from_secs(u64::from(
                                config.config().borrow().sip.ring_timeout_secs(),
                            ));
                            crate::pair::planned_failover(&h, sip.as_ref(), ring).await
                        }
                        other => Response::err(crate::pair::show_text(&other, None)),
                    };
                }
                _ => {}
            }
            // A paired appliance changes its config together with its peer.
            let paired = matches!(
                *pair.borrow(),
                crate::pair::PairState::Running(_) | crate::pair::PairState::Failed(_)
            );
            if let (true, Some(r)) = (paired, replica) {
                if let Some(resp) = pair_change(config, r, peer, &req).await {
                    return resp;
                }
            }
            (config, store, replica.as_ref().filter(|_| paired))
        }
        Phase::Locked { reason } => {
            return if matches!(req, Request::Status) {
                Response::ok(
                    format!("locked: {reason}\nkeys: {protector}\n"),
                    json!({"phase": "locked", "reason": reason, "version": env!("CARGO_PKG_VERSION")}),
                )
            } else {
                Response::err(format!("locked: {reason}"))
            };
        }
    };
    match req {
        // Taken before this, in `serve_call` (`upgrade_record`).
        Request::UpgradeRecord { .. } => Response::err("upgrade record: not here"),
        Request::ShowSubject { number } => crate::subjects::show(store, &number).await,
        Request::SubjectExport { number, format } => {
            crate::subjects::export(store, &number, format).await
        }
        Request::SubjectErase { number } => {
            let number = match crate::subjects::number(&number) {
                Ok(n) => n,
                Err(r) => return r,
            };
            erase_subject(
                lifecycle,
                store,
                config,
                paired_replica,
                &number,
                &peer.user,
            )
            .await
        }
        Request::History => {
            let (store, user) = (store.clone(), peer.user.clone());
            match tokio::task::spawn_blocking(move || store.history(&user)).await {
                Ok(Ok(lines)) => Response::ok(lines.join("\n"), json!({"lines": lines})),
                Ok(Err(e)) => fail(&e),
                Err(e) => Response::err(format!("internal error: {e}")),
            }
        }
        Request::Remember { line } => {
            if !callgate_control::is_typed_line(&line) {
                return Response::err(format!(
                    "a console line is one line of at most {} bytes",
                    callgate_control::MAX_TYPED_LINE
                ));
            }
            let (store, user) = (store.clone(), peer.user.clone());
            let kept =
                tokio::task::spawn_blocking(move || store.remember(&user, &line, HISTORY_LINES))
                    .await;
            match kept {
                Ok(Ok(())) => Response::ok("", json!({})),
                Ok(Err(e)) => fail(&e),
                Err(e) => Response::err(format!("internal error: {e}")),
            }
        }
        Request::ClearLockout { user } => {
            // A console account's name only: nothing else reaches faillock's arguments.
            let name = match user.parse::<callgate_config::UserName>() {
                Ok(n) => n.to_string(),
                Err(_) if user == callgate_config::BREAK_GLASS_USER => user,
                Err(e) => return Response::err(e),
            };
            let n = name.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new("faillock")
                    .arg("--dir")
                    .arg(faillock_dir())
                    .args(["--user", &n, "--reset"])
                    .output()
            })
            .await;
            match out {
                Ok(Ok(o)) if o.status.success() => Response::ok(
                    format!("{name}: the console password lockout is lifted"),
                    json!({"user": name}),
                ),
                Ok(Ok(o)) => Response::err(format!(
                    "faillock: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Ok(Err(e)) => Response::err(format!("faillock: {e}")),
                Err(e) => Response::err(format!("internal error: {e}")),
            }
        }
        Request::ShowRevision { number } => match config.revision(number).await {
            Ok(text) => Response::ok(text.clone(), json!({"revision": number, "text": text})),
            Err(e) => fail(&e),
        },
        Request::Whoami => {
            let cfg = config.config().borrow().clone();
            let idle = peer.role.map(|r| cfg.console.idle_timeout(r).as_secs());
            let role = peer.role.map_or("none", Role::as_str);
            Response::ok(
                format!(
                    "{} ({role}) on {}{}",
                    peer.user,
                    cfg.appliance.name,
                    peer.session
                        .map(|s| format!(", session {s}"))
                        .unwrap_or_default()
                ),
                json!({"user": peer.user, "role": role, "appliance": cfg.appliance.name.as_str(),
                       "session": peer.session, "idle_timeout_secs": idle}),
            )
        }
        Request::Status => {
            let cfg = config.config().borrow().clone();
            let fw = firewall.state().borrow().clone();
            let (active, pending) = config.status().await.unwrap_or_default();
            let text = format!(
                "appliance {}\nrevision {}\nfirewall generation {}{}\nfirewall: {}\n{}\nkeys: {protector}\n",
                cfg.appliance.name,
                active.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                fw.generation,
                fw.last_error
                    .as_ref()
                    .map(|e| format!(" (last apply failed: {e})"))
                    .unwrap_or_default(),
                verification_text(&fw.verification),
                pending
                    .map(|n| format!("revision {n} awaits confirm"))
                    .unwrap_or_else(|| "no confirm pending".into())
            );
            let (verification, drift) = match &fw.verification {
                Verification::NotYet => ("not_yet", None),
                Verification::InSync => ("in_sync", Some(&[][..])),
                Verification::Drift(d) => ("drift", Some(d.as_slice())),
                Verification::Failed(_) => ("failed", None),
            };
            Response::ok(
                text,
                json!({"phase": "running", "appliance": cfg.appliance.name.as_str(), "revision": active,
                       "firewall_generation": fw.generation, "pending": pending,
                       "firewall_verification": verification, "firewall_drift": drift,
                       "data_key": store.current_data_key(),
                       "version": env!("CARGO_PKG_VERSION")}),
            )
        }
        Request::RotateDataKey => {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.rotate_data_key()).await {
                Ok(Ok(id)) => Response::ok(
                    format!("new writes use data key {id}; older records stay readable"),
                    json!({"data_key": id}),
                ),
                Ok(Err(e)) => fail(&e),
                Err(e) => Response::err(format!("internal error: {e}")),
            }
        }
        Request::ShowFirewall => match firewall.report().await {
            Ok(r) => Response::ok(
                show_firewall_text(&r),
                json!({"generation": r.generation, "entries": r.entries, "drift": r.drift}),
            ),
            Err(e) => fail(&e),
        },
        Request::ShowConfig => match config.show_config().await {
            Ok((n, text)) => Response::ok(text.clone(), json!({"revision": n, "text": text})),
            Err(e) => fail(&e),
        },
        Request::ShowAudit { last } => {
            let st = store.clone();
            let entries = tokio::task::spawn_blocking(move || st.last_audit(last))
                .await
                .unwrap_or_default();
            let mut text = String::new();
            let mut rows = Vec::new();
            for e in entries {
                match e {
                    Ok(r) => {
                        let a = r.value;
                        text.push_str(&format!(
                            "{:>6} {} {:<12} {:<8} session {:<6} {} -> {}\n",
                            r.id,
                            fmt_time(a.time_ms),
                            a.user,
                            a.role.as_deref().unwrap_or("-"),
                            a.session.map_or("-".to_owned(), |s| s.to_string()),
                            a.action,
                            a.detail
                        ));
                        rows.push(json!({"id": r.id, "entry": a}));
                    }
                    Err(e) => {
                        text.push_str(&format!("  (an unreadable entry: {e})\n"));
                        rows.push(json!({"error": e.to_string()}));
                    }
                }
            }
            Response::ok(text, json!({"audit": rows}))
        }
        Request::ShowHistory => match config.history().await {
            Ok(h) => {
                let mut text = String::new();
                for e in &h {
                    text.push_str(&format!(
                        "{:>4} {} {:<12} {}{}{}\n",
                        e.number,
                        fmt_time(e.time_ms),
                        e.author,
                        e.note,
                        if e.active { "  [active]" } else { "" },
                        if e.pending {
                            "  [awaiting confirm]"
                        } else {
                            ""
                        },
                    ));
                }
                Response::ok(text, json!(h))
            }
            Err(e) => fail(&e),
        },
        Request::Compare { a, b } => match config.compare(a, b).await {
            Ok(d) => Response::ok(d.clone(), json!({"diff": d})),
            Err(e) => fail(&e),
        },
        Request::Commit {
            text,
            origin,
            force,
            confirmed_secs,
            this_node,
        } => {
            let window = confirmed_secs.map(Duration::from_secs);
            let restart = restart_for(config, &text);
            // In a pair, a commit here reaches this point only with --this-node: the
            // history says so (an appliance without a pair has no other node).
            let paired = config.config().borrow().pair.is_some();
            let note = (this_node && paired).then(|| {
                format!(
                    "{} (this appliance only)",
                    callgate_revisions::commit_note(window)
                )
            });
            match config
                .commit_noted(text, origin, force, window, peer.user.clone(), note)
                .await
            {
                Ok(out) => {
                    let mut msg = format!("committed revision {}", out.revision);
                    if let Some(secs) = confirmed_secs {
                        msg.push_str(&format!(
                            "; it rolls back in {secs}s unless it is confirmed (`confirm`)"
                        ));
                    }
                    if let Some(what) = restart {
                        msg.push_str(&format!(
                            "; {what}: callgated restarts now to apply it (the firewall enforces the new policy meanwhile; log in again in a few seconds)"
                        ));
                    }
                    Response::ok(msg, json!(out))
                }
                Err(e) => fail(&e),
            }
        }
        Request::Confirm { .. } => match config.confirm().await {
            Ok(n) => Response::ok(format!("revision {n} confirmed"), json!({"revision": n})),
            Err(e) => fail(&e),
        },
        Request::Rollback { number, force, .. } => {
            let restart = match config.revision(number).await {
                Ok(text) => restart_for(config, &text),
                Err(_) => None,
            };
            match config.rollback(number, force, peer.user.clone()).await {
                Ok(out) => Response::ok(
                    format!(
                        "rolled back to the text of revision {number}, now revision {}{}",
                        out.revision,
                        restart.map_or(String::new(), |what| format!(
                            "; {what}: callgated restarts now to apply it"
                        ))
                    ),
                    json!(out),
                ),
                Err(e) => fail(&e),
            }
        }
        // handled above, in either phase
        Request::ShowCalls | Request::ShowCdrs { .. } | Request::ShowSipStats => {
            Response::err("internal error: calls request not routed")
        }
        Request::ShowPair | Request::Failover | Request::ShowUplink => {
            Response::err("internal error: request not routed")
        }
        Request::ConfigLock
        | Request::ConfigUnlock
        | Request::ShowSessions
        | Request::EndSession { .. } => Response::err("internal error: session request not routed"),
        Request::Provision
        | Request::Recover { .. }
        | Request::Reseal
        | Request::Decommission { .. }
        | Request::PairInit
        | Request::PairJoin { .. }
        | Request::PairRekey
        | Request::Unpair
        | Request::UplinkCsr
        | Request::UplinkInstallCert { .. }
        | Request::SipTlsCsr
        | Request::SipTlsInstallCert { .. }
        | Request::IntakeCsr
        | Request::IntakeInstallCert { .. } => {
            Response::err("internal error: lifecycle request not handled")
        }
    }
}

/// What committing `text` would change that only a restart of the daemon applies
/// (`crate::restart`); `None` also when `text` does not parse (the commit says why).
fn restart_for(config: &callgate_revisions::ConfigService, text: &str) -> Option<String> {
    let next = callgate_config::Config::parse(text, std::path::Path::new("candidate")).ok()?;
    let now = crate::restart::Shape::of(&config.config().borrow());
    now.change(crate::restart::Shape::of(&next))
}

/// A pair-wide change that would restart both daemons at once: refused.
fn refuse_pair_restart(what: &str) -> Response {
    Response::err(format!(
        "refused: this change means {what}, which takes a restart of the daemon; committed on both appliances at once it would restart both and drop the calls in progress. Do it on one appliance at a time (`callgate commit --this-node`, the standby first), or `pair unpair` first; nothing changed"
    ))
}

/// A commit, confirm or rollback on both appliances of a pair (`crate::pair_config`);
/// `None` for every other request and for `--this-node`.
async fn pair_change(
    config: &callgate_revisions::ConfigService,
    replica: &crate::replica::Replicator,
    peer: &Peer,
    req: &Request,
) -> Option<Response> {
    use crate::pair_config::{PairOutcome, Proposal};
    let pc = replica.pair_config();
    let committed = |r: Result<PairOutcome, String>, what: String| match r {
        Ok(out) => {
            let mut msg = format!(
                "{what} revision {} here and revision {} on {}",
                out.local.revision,
                out.peer_revision.map_or("?".into(), |n| n.to_string()),
                out.peer
            );
            if let Some(ms) = out.local.confirm_deadline_ms {
                let secs = ms
                    .saturating_sub(callgate_revisions::now_ms())
                    .div_ceil(1000);
                msg.push_str(&format!(
                    "; both roll back in {secs}s unless it is confirmed (`confirm`)"
                ));
            }
            Response::ok(msg, json!(out))
        }
        Err(e) => Response::err(e),
    };
    match req {
        Request::Commit {
            text,
            origin,
            force,
            confirmed_secs,
            this_node: false,
        } => {
            if let Some(what) = restart_for(config, text) {
                return Some(refuse_pair_restart(&what));
            }
            let p = Proposal {
                text: text.clone(),
                origin: origin.clone(),
                force: *force,
                window: confirmed_secs.map(Duration::from_secs),
                author: peer.user.clone(),
                note: None,
            };
            Some(committed(pc.commit(replica, p).await, "committed".into()))
        }
        Request::Rollback {
            number,
            force,
            this_node: false,
        } => {
            let text = match config.revision(*number).await {
                Ok(t) => t,
                Err(e) => return Some(fail(&e)),
            };
            if let Some(what) = restart_for(config, &text) {
                return Some(refuse_pair_restart(&what));
            }
            let p = Proposal {
                text,
                origin: format!("revision-{number}.toml").into(),
                force: *force,
                window: None,
                author: peer.user.clone(),
                note: Some(format!("rollback to {number}")),
            };
            Some(committed(
                pc.commit(replica, p).await,
                format!("rolled back to the text of revision {number}, now"),
            ))
        }
        Request::Confirm { this_node: false } => Some(match pc.confirm(replica).await {
            Ok((n, m)) => Response::ok(
                format!(
                    "revision {n} confirmed here and revision {} on the peer",
                    m.map_or("?".into(), |m| m.to_string())
                ),
                json!({"revision": n, "peer_revision": m}),
            ),
            Err(e) => Response::err(e),
        }),
        _ => None,
    }
}

/// `show firewall`: the counters table, then whether the kernel's table is still the
/// applied ruleset, and each difference when it is not.
fn show_firewall_text(r: &FirewallReport) -> String {
    let mut text = format!(
        "{:<8} {:<28} {:>5} {:>12} {:>14}\n",
        "chain", "entry", "rules", "packets", "bytes"
    );
    for e in &r.entries {
        text.push_str(&format!(
            "{:<8} {:<28} {:>5} {:>12} {:>14}\n",
            e.chain, e.name, e.rules, e.packets, e.bytes
        ));
    }
    let Some(generation) = r.generation else {
        text.push_str("\nread-back: no ruleset applied yet, nothing to compare\n");
        return text;
    };
    if r.drift.is_empty() {
        text.push_str(&format!(
            "\nread-back: in sync with firewall generation {generation}\n"
        ));
        return text;
    }
    text.push_str(&format!(
        "\nDRIFT: the kernel's table differs from firewall generation {generation} as applied \
         ({} difference{}):\n",
        r.drift.len(),
        if r.drift.len() == 1 { "" } else { "s" }
    ));
    for d in &r.drift {
        text.push_str(&format!("  {d}\n"));
    }
    text.push_str("a commit of the running config (`callgate commit FILE`) applies it again\n");
    text
}

/// `status`: the last comparison of the kernel's table with the applied ruleset.
fn verification_text(v: &Verification) -> String {
    match v {
        Verification::NotYet => "not verified yet".into(),
        Verification::InSync => "in sync (at the last read-back)".into(),
        Verification::Drift(d) => format!(
            "DRIFT ({} difference{} at the last read-back; `callgate show firewall` lists them)",
            d.len(),
            if d.len() == 1 { "" } else { "s" }
        ),
        Verification::Failed(e) => format!("read-back failed: {e}"),
    }
}

/// A time as the console shows it: local RFC 3339 with the offset ([`crate::human::time`]).
fn fmt_time(ms: u64) -> String {
    crate::human::time(ms)
}

/// The answer to a certificate signing request: the PEM, and who signs it how (`then`).
fn csr_answer(r: Result<String, String>, then: &str) -> Response {
    match r {
        Ok(pem) => Response::ok(format!("{pem}\nHave {then}.\n"), json!({"csr": pem})),
        Err(e) => Response::err(e),
    }
}

/// The answer to a certificate install: what it says of itself, and what uses it now.
fn installed_answer(r: Result<callgate_pki::CertInfo, String>, now: &str) -> Response {
    match r {
        Ok(info) => Response::ok(
            format!(
                "installed: CN={} from {}, valid until {}; {now}",
                info.subject,
                info.issuer,
                crate::human::time(u64::try_from(info.not_after).unwrap_or(0) * 1000)
            ),
            json!(info),
        ),
        Err(e) => Response::err(format!("not installed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use callgate_firewall::{EntryCounters, FirewallReport};

    fn report(drift: &[&str]) -> FirewallReport {
        FirewallReport {
            generation: Some(3),
            entries: vec![EntryCounters {
                chain: "input".into(),
                name: "carrier-sip-udp".into(),
                rules: 2,
                packets: 7,
                bytes: 700,
            }],
            drift: drift.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    #[test]
    fn show_firewall_lists_each_difference_after_the_counters() {
        let diffs = [
            "chain input, rule 4 \"carrier-sip-udp\": matches differ: missing `ip saddr @s4`",
            "set s6 is missing",
        ];
        let text = super::show_firewall_text(&report(&diffs));
        let counters = text.find("carrier-sip-udp").unwrap();
        for d in diffs {
            let at = text.find(d).unwrap();
            assert!(at > counters, "{text}");
        }
        let in_sync = super::show_firewall_text(&report(&[]));
        assert!(
            in_sync.starts_with(&text[..counters]),
            "same counters table"
        );
        assert!(!in_sync.contains("DRIFT"), "{in_sync}");
    }

    #[test]
    fn time_format() {
        // RFC 3339 in the appliance's zone, with its offset.
        let t = super::fmt_time(1_795_910_400_000);
        assert!(t.starts_with("2026-11-2") && t.len() == 25, "{t}");
    }
}
