//! The interactive console sessions the daemon serves: each console asks `whoami` when it
//! starts and holds its connection until it ends, so the connections are the sessions.
//! `show sessions` lists them (who, role, from where, since when); an admin may end one:
//! every process of its kernel audit session (`/proc/PID/sessionid`, set at login) gets
//! SIGHUP, then SIGKILL (`callgate_accounts::end_processes`), which ends the SSH or serial
//! login it belongs to.

use std::collections::BTreeMap;

use callgate_control::{Peer, Response};
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
#[derive(Debug, Default)]
pub struct Sessions(tokio::sync::Mutex<BTreeMap<u64, Info>>);

/// Where a console process came from: sshd puts the client's address in its environment;
/// a serial login has its terminal.
fn from_of(pid: Option<i32>) -> String {
    let Some(pid) = pid else {
        return "-".into();
    };
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    for var in env.split(|b| *b == 0) {
        if let Some(v) = var.strip_prefix(b"SSH_CONNECTION=") {
            let v = String::from_utf8_lossy(v);
            if let Some(addr) = v.split_whitespace().next() {
                return format!("ssh from {addr}");
            }
        }
    }
    match std::fs::read_link(format!("/proc/{pid}/fd/0")) {
        Ok(p) => format!("terminal {}", p.display()),
        Err(_) => "-".into(),
    }
}

/// The kernel audit session of process `pid`.
fn session_of(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/sessionid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Sessions {
    /// A console said who it is: it is a session from now until its connection ends.
    pub async fn opened(&self, peer: &Peer) {
        let pid = peer.pid;
        let from = tokio::task::spawn_blocking(move || from_of(pid))
            .await
            .unwrap_or_else(|_| "-".into());
        self.0.lock().await.insert(
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
        self.0.lock().await.remove(&conn);
    }

    /// `show sessions`.
    pub async fn show(&self) -> Response {
        let all: Vec<Info> = self.0.lock().await.values().cloned().collect();
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
            .0
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
        let ended = tokio::task::spawn_blocking(move || {
            callgate_accounts::end_processes(|pid| session_of(pid) == Some(session))
        })
        .await
        .unwrap_or(0);
        Response::ok(
            format!("session {session} ended ({ended} processes)"),
            json!({"session": session, "processes": ended}),
        )
    }
}
