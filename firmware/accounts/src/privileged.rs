//! What only root may do for the daemon: the console accounts ([`Request::Reconcile`]),
//! ending a console session ([`Request::EndSession`]), and reading another user's process
//! ([`Request::Process`]: its login uid, audit session and where it logged in from).
//!
//! On the image the daemon runs as a user of its own, without those privileges, and with
//! the other users' processes hidden from it (`ProtectProc=invisible`); it asks
//! `callgate accounts-helper` (root, `callgate-accounts.socket`) over one persistent
//! connection of JSON lines ([`Privileged::Helper`]). A daemon that runs as root (the
//! lab's system tests) does the same work in its own process ([`Privileged::InProcess`]).
//! Both go through [`handle`], so there is one implementation of each operation.
//!
//! The helper trusts nothing it is sent: [`serve`] answers only the uids it was told to
//! (root and the daemon's user, from the kernel's peer credentials), every account it is
//! asked for is parsed again by the config's own types, and a session is ended only when
//! it belongs to a console account (never root's, never a service's).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
// The client is blocking code (the daemon calls it off its runtime, from `spawn_blocking`);
// this lock is held for one request and its answer on the local helper's socket.
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;

use callgate_config::{PasswordHash, Role, SshKey, UserName, BREAK_GLASS_USER};
use serde::{Deserialize, Serialize};

use crate::{AccountsError, Settings, Want};

/// The longest request line (a reconcile of a large config's accounts and keys).
pub const MAX_REQUEST: u64 = 4 << 20;

/// One request to the privileged side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Make the system's console accounts match these.
    Reconcile { wanted: Vec<WantedAccount> },
    /// End every process of this kernel audit session (a console account's only).
    EndSession { session: u32 },
    /// What the kernel says of process `pid`.
    Process { pid: i32 },
}

/// [`Want`] on the wire (its fields checked again on arrival: [`WantedAccount::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WantedAccount {
    pub name: String,
    pub role: Option<Role>,
    pub keys: Vec<String>,
    pub hash: String,
}

impl From<&Want> for WantedAccount {
    fn from(w: &Want) -> Self {
        WantedAccount {
            name: w.name.clone(),
            role: w.role,
            keys: w.keys.clone(),
            hash: w.hash.clone(),
        }
    }
}

impl WantedAccount {
    /// The account, when every field is what the config itself would accept: a console
    /// user's name (or the break-glass account, which alone has no role), SSH keys, and a
    /// yescrypt hash or `*`. Nothing else reaches `useradd`/`usermod` or a key file.
    pub fn check(&self) -> Result<Want, String> {
        match self.role {
            None if self.name == BREAK_GLASS_USER => {}
            None => return Err(format!("account {:?}: no role", self.name)),
            Some(_) => {
                UserName::from_str(&self.name)?;
            }
        }
        for k in &self.keys {
            SshKey::from_str(k).map_err(|e| format!("account {}: {e}", self.name))?;
        }
        if self.hash != "*" {
            PasswordHash::from_str(&self.hash)
                .map_err(|e| format!("account {}: {e}", self.name))?;
        }
        Ok(Want {
            name: self.name.clone(),
            role: self.role,
            keys: self.keys.clone(),
            hash: self.hash.clone(),
        })
    }
}

/// What the kernel says of a process (`None`: not known, or the process is gone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its real uid.
    pub uid: Option<u32>,
    /// The uid its login session started as (`/proc/PID/loginuid`).
    pub loginuid: Option<u32>,
    /// Its kernel audit session (`/proc/PID/sessionid`).
    pub session: Option<u32>,
    /// `ssh from ADDRESS` (sshd's `SSH_CONNECTION`), or the terminal it runs on, or `-`.
    pub from: String,
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The steps taken (for the log: names and counts, never a hash or a key) and the
    /// errors of those that failed.
    Reconciled {
        steps: Vec<String>,
        errors: Vec<String>,
    },
    /// How many processes got the SIGHUP.
    Ended {
        processes: usize,
    },
    Process(ProcessInfo),
    /// The request was not carried out, and why.
    Refused {
        why: String,
    },
}

/// Carries a request of the daemon, process `daemon`, out with this process's privileges.
pub fn handle(req: Request, s: &Settings, daemon: i32) -> Answer {
    match req {
        Request::Reconcile { wanted } => {
            let mut want = Vec::with_capacity(wanted.len());
            for w in &wanted {
                match w.check() {
                    Ok(w) => want.push(w),
                    Err(why) => return Answer::Refused { why },
                }
            }
            match crate::reconcile(&want, s, daemon) {
                Ok((steps, errors)) => Answer::Reconciled {
                    steps: steps.iter().map(ToString::to_string).collect(),
                    errors: errors.iter().map(ToString::to_string).collect(),
                },
                Err(e) => Answer::Refused { why: e.to_string() },
            }
        }
        Request::EndSession { session } => match console_uids(s) {
            Ok(uids) => Answer::Ended {
                // Two small files a process (not its environment and terminal, which
                // `process_info` reads too): this runs for every process on the system.
                processes: crate::end_processes(daemon, |pid| {
                    proc_u32(pid, "sessionid") == Some(session)
                        && proc_u32(pid, "loginuid").is_some_and(|u| uids.contains(&u))
                }),
            },
            Err(e) => Answer::Refused { why: e.to_string() },
        },
        Request::Process { pid } => Answer::Process(process_info(pid)),
    }
}

/// The uids of the console accounts (those [`crate::read_current`] reads as ours).
fn console_uids(s: &Settings) -> Result<Vec<u32>, AccountsError> {
    Ok(crate::read_current(s)?.0.iter().map(|a| a.uid).collect())
}

/// A number file of `/proc/PID` (`u32::MAX` is the kernel's "unset").
fn proc_u32(pid: i32, what: &str) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{what}")).ok()?;
    s.trim().parse::<u32>().ok().filter(|v| *v != u32::MAX)
}

/// What the kernel says of process `pid`, read from `/proc` (as far as the caller may).
pub fn process_info(pid: i32) -> ProcessInfo {
    if pid <= 0 {
        return ProcessInfo {
            from: "-".into(),
            ..ProcessInfo::default()
        };
    }
    ProcessInfo {
        uid: crate::status_field(pid, "Uid:"),
        loginuid: proc_u32(pid, "loginuid"),
        session: proc_u32(pid, "sessionid"),
        from: from_of(pid),
    }
}

/// Where a console process came from: sshd puts the client's address in its environment;
/// a serial login has its terminal.
fn from_of(pid: i32) -> String {
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

/// Where the daemon's privileged work is done.
#[derive(Debug)]
pub enum Privileged {
    /// Here, with this process's privileges (a daemon that runs as root).
    InProcess(Settings),
    /// By the helper behind this socket (a daemon that runs as a user of its own).
    Helper(Client),
}

impl Privileged {
    /// Carries `req` out (blocking: run it off the async runtime).
    pub fn call(&self, req: Request) -> Result<Answer, AccountsError> {
        match self {
            Privileged::InProcess(s) => Ok(handle(
                req,
                s,
                i32::try_from(std::process::id()).unwrap_or(0),
            )),
            Privileged::Helper(c) => c.call(&req),
        }
    }

    /// [`Request::Process`]; a process it cannot tell anything of when the helper fails.
    pub fn process(&self, pid: i32) -> ProcessInfo {
        match self.call(Request::Process { pid }) {
            Ok(Answer::Process(p)) => p,
            Ok(other) => {
                log::warn!("accounts helper: process {pid}: unexpected answer {other:?}");
                ProcessInfo::default()
            }
            Err(e) => {
                log::warn!("accounts helper: process {pid}: {e}");
                ProcessInfo::default()
            }
        }
    }
}

/// The daemon's end of the helper: one connection, kept, made again when it fails (one
/// request at a time).
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    #[allow(clippy::disallowed_types)]
    conn: Mutex<Option<BufReader<UnixStream>>>,
}

impl Client {
    pub fn new(path: PathBuf) -> Self {
        Client {
            path,
            #[allow(clippy::disallowed_types)]
            conn: Mutex::new(None),
        }
    }

    fn err(&self, detail: impl std::fmt::Display) -> AccountsError {
        AccountsError::Step {
            step: format!("accounts helper at {}", self.path.display()),
            detail: detail.to_string(),
        }
    }

    /// One request and its answer; on a broken connection, once more on a new one.
    pub fn call(&self, req: &Request) -> Result<Answer, AccountsError> {
        let line = serde_json::to_string(req).map_err(|e| self.err(e))?;
        let mut conn = self.conn.lock().map_err(|_| self.err("lock poisoned"))?;
        let mut last = None;
        for _ in 0..2 {
            if conn.is_none() {
                let s = UnixStream::connect(&self.path).map_err(|e| self.err(e))?;
                // A helper that stops answering must not hold the daemon's caller forever.
                let t = Some(std::time::Duration::from_secs(60));
                s.set_read_timeout(t).map_err(|e| self.err(e))?;
                s.set_write_timeout(t).map_err(|e| self.err(e))?;
                *conn = Some(BufReader::new(s));
            }
            let Some(c) = conn.as_mut() else { continue };
            match exchange(c, &line) {
                Ok(a) => return Ok(a),
                Err(e) => {
                    *conn = None;
                    last = Some(e);
                }
            }
        }
        Err(self.err(last.map_or_else(|| "no connection".to_owned(), |e| e.to_string())))
    }
}

fn exchange(c: &mut BufReader<UnixStream>, line: &str) -> std::io::Result<Answer> {
    let s = c.get_mut();
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let mut reply = String::new();
    if c.by_ref().take(MAX_REQUEST).read_line(&mut reply)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}

/// The helper's side of one connection: answers the requests of a peer whose uid is in
/// `allowed` (from the kernel's peer credentials), until it hangs up. Anyone else gets one
/// refusal and nothing is read from them.
pub fn serve(stream: UnixStream, allowed: &[u32], s: &Settings) -> std::io::Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(&stream, PeerCredentials)
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
    let (uid, daemon) = (cred.uid(), cred.pid());
    let mut out = stream.try_clone()?;
    let reply = |out: &mut UnixStream, a: &Answer| -> std::io::Result<()> {
        let mut line = serde_json::to_vec(a).map_err(std::io::Error::other)?;
        line.push(b'\n');
        out.write_all(&line)
    };
    if !allowed.contains(&uid) {
        log::warn!("accounts helper: uid {uid} refused");
        let why = format!("uid {uid} may not use the accounts helper");
        return reply(&mut out, &Answer::Refused { why });
    }
    let mut rd = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = rd.by_ref().take(MAX_REQUEST).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') {
            let why = format!("a request is one line of at most {MAX_REQUEST} bytes");
            return reply(&mut out, &Answer::Refused { why });
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req, s, daemon),
            // The kind and place only: the line may carry a hash or a key.
            Err(e) => Answer::Refused {
                why: format!(
                    "unreadable request ({:?} at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            },
        };
        reply(&mut out, &answer)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ann@laptop";

    fn wanted(name: &str, role: Option<Role>, keys: &[&str], hash: &str) -> WantedAccount {
        WantedAccount {
            name: name.into(),
            role,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            hash: hash.into(),
        }
    }

    #[test]
    fn accounts_are_checked_again_as_the_config_would() {
        assert!(wanted("ann", Some(Role::Admin), &[KEY], "*")
            .check()
            .is_ok());
        for bad in [
            // an option for useradd, a system account, a newline into a key file, a line
            // into shadow, a role-less account that is not the break-glass one
            wanted("-oroot", Some(Role::Admin), &[], "*"),
            wanted("root", Some(Role::Admin), &[], "*"),
            wanted(
                "ann",
                Some(Role::Admin),
                &[&format!("{KEY}\nssh-ed25519 AAAA x")],
                "*",
            ),
            wanted("ann", Some(Role::Admin), &[], "x:0:0::\nroot"),
            wanted("ann", None, &[], "*"),
        ] {
            assert!(bad.check().is_err(), "{bad:?} accepted");
            let a = handle(
                Request::Reconcile { wanted: vec![bad] },
                &Settings {
                    etc: "/nonexistent".into(),
                    ..Settings::default()
                },
                1,
            );
            assert!(matches!(a, Answer::Refused { .. }), "{a:?}");
        }
        assert!(wanted(BREAK_GLASS_USER, None, &[], "*").check().is_ok());
    }

    #[test]
    fn a_process_is_read_from_proc() {
        let me = i32::try_from(std::process::id()).unwrap();
        let p = process_info(me);
        assert_eq!(p.uid, Some(nix::unistd::getuid().as_raw()));
        assert_eq!(
            process_info(0),
            ProcessInfo {
                from: "-".into(),
                ..ProcessInfo::default()
            }
        );
        assert_eq!(process_info(i32::MAX).uid, None);
    }

    /// A process in an audit session of its own, started as `loginuid` (as pam_loginuid
    /// does at a login: root may set an unset login uid), and that session.
    fn in_session(loginuid: u32) -> (std::process::Child, u32) {
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                &format!("echo {loginuid} >/proc/self/loginuid && exec sleep 30"),
            ])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        for _ in 0..200 {
            if let Some(session) = process_info(pid).session {
                return (child, session);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("no audit session for the child (run as root, with audit sessions)");
    }

    fn etc_with(console_uid: u32) -> (tempfile::TempDir, Settings) {
        let d = tempfile::tempdir().unwrap();
        let passwd = format!(
            "root:x:0:0:root:/root:/bin/sh\nann:x:{console_uid}:{console_uid}:{}:/:/usr/bin/callgate\n",
            crate::MARKER
        );
        std::fs::write(d.path().join("passwd"), passwd).unwrap();
        let group = format!("root:x:0:\n{}:x:902:ann\n", crate::CONSOLE_GROUP);
        std::fs::write(d.path().join("group"), group).unwrap();
        std::fs::write(d.path().join("shadow"), "root:*:1::::::\nann:*:1::::::\n").unwrap();
        let s = Settings {
            etc: d.path().to_path_buf(),
            keys_dir: d.path().join("keys"),
            shell: "/usr/bin/callgate".into(),
        };
        (d, s)
    }

    /// A daemon taken over asks to end a session that is not a console account's (root's
    /// login): nothing is signalled. A console account's session does end.
    #[test]
    fn only_a_console_accounts_session_is_ended() {
        let me = i32::try_from(std::process::id()).unwrap();
        let (_d, s) = etc_with(20_001);
        let (mut root_login, session) = in_session(0);
        let a = handle(Request::EndSession { session }, &s, me);
        assert_eq!(a, Answer::Ended { processes: 0 });
        assert!(
            root_login.try_wait().unwrap().is_none(),
            "root's session was signalled"
        );
        root_login.kill().unwrap();
        root_login.wait().unwrap();

        let (mut ann_login, session) = in_session(20_001);
        let a = handle(Request::EndSession { session }, &s, me);
        assert_eq!(a, Answer::Ended { processes: 1 });
        assert!(ann_login.wait().is_ok());
    }

    fn pair(allowed: Vec<u32>) -> (Client, std::thread::JoinHandle<()>, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("helper.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let _ = serve(s, &allowed, &Settings::default());
        });
        (Client::new(path), t, d)
    }

    #[test]
    fn the_helper_answers_its_allowed_peer_over_one_connection() {
        let (c, t, _d) = pair(vec![nix::unistd::getuid().as_raw()]);
        let me = i32::try_from(std::process::id()).unwrap();
        for _ in 0..3 {
            match c.call(&Request::Process { pid: me }).unwrap() {
                Answer::Process(p) => assert_eq!(p.uid, Some(nix::unistd::getuid().as_raw())),
                a => panic!("{a:?}"),
            }
        }
        // A forged role-less account is refused on the helper's side too.
        let a = c
            .call(&Request::Reconcile {
                wanted: vec![wanted("mallory", None, &[], "*")],
            })
            .unwrap();
        assert!(matches!(a, Answer::Refused { .. }), "{a:?}");
        drop(c);
        t.join().unwrap();
    }

    #[test]
    fn the_helper_refuses_any_other_uid_unread() {
        let (c, t, _d) = pair(vec![u32::MAX - 1]);
        let a = c.call(&Request::Process { pid: 1 }).unwrap();
        assert!(
            matches!(a, Answer::Refused { ref why } if why.contains("may not")),
            "{a:?}"
        );
        t.join().unwrap();
    }
}
