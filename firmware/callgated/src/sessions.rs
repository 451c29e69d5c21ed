//! The interactive console sessions the daemon serves: each console asks `whoami` when it
//! starts and holds its connection until it ends, so the connections are the sessions.
//! `show sessions` lists them (who, role, from where, since when); an admin may end one:
//! every process of its kernel audit session (`/proc/PID/sessionid`, set at login) gets
//! SIGHUP, then SIGKILL, which ends the SSH or serial login it belongs to. Reading another
//! user's process and signalling it are [`Privileged`] work (the daemon's own when it is
//! root, its accounts helper's when it is not); only a console account's session ends.

use std::collections::BTreeMap;

use std::sync::Arc;

use callgate_accounts::privileged::{Answer, Privileged, Request};
use callgate_control::{Peer, ProcIds, ProcReader, Response};
use serde::Serialize;
use serde_json::json;

/// One console session.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub user: String,
    pub role: String,
    pub session: Option<u32>,
    pub pid: Option<i32>,
    pub since_ms: u64,
    /// `ssh from ADDRESS`, or the terminal it runs on.
    pub from: String,
}

/// The sessions, by control connection.
#[derive(Debug)]
pub struct Sessions {
    open: tokio::sync::Mutex<BTreeMap<u64, Info>>,
    privileged: Arc<Privileged>,
}

/// The daemon's reader of a connected process's login uid and session, through
/// [`Privileged`] (the daemon's own `/proc` when it is root, else its helper's).
pub fn proc_reader(privileged: Arc<Privileged>) -> ProcReader {
    Arc::new(move |pid| {
        let p = privileged.process(pid);
        ProcIds {
            loginuid: p.loginuid,
            session: p.session,
        }
    })
}

impl Sessions {
    pub fn new(privileged: Arc<Privileged>) -> Self {
        Sessions {
            open: tokio::sync::Mutex::default(),
            privileged,
        }
    }

    /// Where the daemon's privileged work goes.
    pub fn privileged(&self) -> &Arc<Privileged> {
        &self.privileged
    }

    /// A console said who it is: it is a session from now until its connection ends.
    pub async fn opened(&self, peer: &Peer) {
        let from = match peer.pid {
            Some(pid) => {
                let p = self.privileged.clone();
                tokio::task::spawn_blocking(move || p.process(pid).from)
                    .await
                    .unwrap_or_else(|_| "-".into())
            }
            None => "-".into(),
        };
        self.open.lock().await.insert(
            peer.conn,
            Info {
                user: peer.user.clone(),
                role: peer.role.map_or("none", |r| r.as_str()).to_owned(),
                session: peer.session,
                pid: peer.pid,
                since_ms: callgate_revisions::now_ms(),
                from,
            },
        );
    }

    pub async fn closed(&self, conn: u64) {
        self.open.lock().await.remove(&conn);
    }

    /// `show sessions`.
    pub async fn show(&self) -> Response {
        let all: Vec<Info> = self.open.lock().await.values().cloned().collect();
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|s| {
                vec![
                    s.session.map_or("-".to_owned(), |v| v.to_string()),
                    s.user.clone(),
                    s.role.clone(),
                    crate::human::time(s.since_ms),
                    s.from.clone(),
                ]
            })
            .collect();
        let text = crate::human::table(&["SESSION", "USER", "ROLE", "SINCE", "FROM"], &rows);
        Response::ok(text, json!({ "sessions": all }))
    }

    /// Ends console session `session` (one listed by `show sessions`, not the caller's).
    pub async fn end(&self, peer: &Peer, session: u32) -> Response {
        let listed = self
            .open
            .lock()
            .await
            .values()
            .any(|s| s.session == Some(session));
        if !listed {
            return Response::err(format!(
                "no console session {session} (`show sessions` lists them)"
            ));
        }
        if peer.session == Some(session) {
            return Response::err("that is your own session: `exit` ends it");
        }
        let p = self.privileged.clone();
        let ended = match tokio::task::spawn_blocking(move || {
            p.call(Request::EndSession { session })
        })
        .await
        {
            Ok(Ok(Answer::Ended { processes })) => processes,
            Ok(Ok(Answer::Refused { why })) => {
                return Response::err(format!("session {session}: not ended: {why}"))
            }
            Ok(Ok(other)) => {
                log::error!("accounts helper: end session: unexpected answer {other:?}");
                return Response::err(format!("session {session}: not ended: internal error"));
            }
            Ok(Err(e)) => return Response::err(format!("session {session}: not ended: {e}")),
            Err(_) => {
                return Response::err(format!("session {session}: not ended: internal error"))
            }
        };
        Response::ok(
            format!("session {session} ended ({ended} processes)"),
            json!({"session": session, "processes": ended}),
        )
    }
}
