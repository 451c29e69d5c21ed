//! The interactive console: the login shell of every console account (over SSH and on the
//! serial console). Two modes, as on Junos: operational (`show …`, `configure`) and
//! configuration (edit a candidate with `set`/`delete`, `show | compare`, `commit`,
//! `commit confirmed N`, `confirm`, `rollback N`, `discard`, `exit`).
//!
//! - One command tree ([`schema`]) drives parsing, `?` help, Tab completion and the role
//!   filter. The daemon decides what the caller may do; the console only hides what the
//!   role cannot run.
//! - Output goes through pipes (`| match WORD`, `| count`, `| no-more`, `| display json`:
//!   the reply's data as JSON, what `callgate --json` prints; `show | compare` in
//!   configuration mode) and, on a terminal, through `less` with `LESSSECURE=1` (no shell
//!   escape, no editor, no files).
//! - `configure` takes the daemon's configuration lock for this session: a second admin is
//!   told who holds it. The lock ends with the session.
//! - Idle: after the role's idle time without a command the console logs out, with a
//!   warning a minute before.
//!
//! - History: each line is handed to the daemon, which keeps the user's last 500 lines
//!   sealed in its store (up-arrow and Ctrl-R reach them in the next session) and writes
//!   the line to the audit trail (every interactive command accounted, `set` lines too).
//!   A subject request's number is withheld from that line ([`for_the_record`]): a
//!   caller's number would otherwise outlive their erasure in the history and the trail.
//! - `ping`, `traceroute` and `monitor calls` print as they go; Ctrl-C stops them (the
//!   console catches SIGINT, so it never ends the session).

pub mod edit;
pub mod schema;

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callgate_control::{Client, Request, Response, Role};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{
    Cmd, ConditionalEventHandler, Editor, Event, EventContext, EventHandler, Helper, KeyCode,
    KeyEvent, Modifiers, RepeatCount,
};

use edit::Candidate;
use schema::{Action, Node, Parsed, CONFIGURE, OPERATIONAL};

/// What the console knows of its session.
struct Session {
    client: Client,
    user: String,
    role: Role,
    appliance: String,
    /// Configuration mode's candidate, when in it.
    candidate: Option<Candidate>,
    tty: bool,
    /// The line being run ends `| display json`: the data of the replies is kept.
    json: bool,
    /// The data of the last reply, while `json`.
    last_data: Option<serde_json::Value>,
}

impl Session {
    /// Connects to the daemon; `role` is what the console shows until `whoami` says.
    fn connect(socket: &Path, role: Role, tty: bool) -> Result<Session, ExitCode> {
        let client = Client::connect(socket).map_err(|e| {
            eprintln!("callgate: {e}");
            ExitCode::from(1)
        })?;
        Ok(Session {
            client,
            user: String::new(),
            role,
            appliance: String::new(),
            candidate: None,
            tty,
            json: false,
            last_data: None,
        })
    }
}

fn tree(configuring: bool) -> &'static [Node] {
    if configuring {
        CONFIGURE
    } else {
        OPERATIONAL
    }
}

/// Tab completion and `?` help from the command tree (and, after `set`/`delete`, the
/// candidate's keys).
struct Completion {
    role: Role,
    configuring: bool,
    candidate: Option<Candidate>,
}

impl Completion {
    /// The words that may come next, with help.
    fn offers(&self, line: &str) -> Vec<(String, String)> {
        let words = crate::shell::split(line).unwrap_or_default();
        let (done, partial) = if line.ends_with(' ') || line.is_empty() {
            (words, String::new())
        } else {
            let mut w = words;
            let p = w.pop().unwrap_or_default();
            (w, p)
        };
        if self.configuring && matches!(done.first().map(String::as_str), Some("set" | "delete")) {
            if let Some(c) = &self.candidate {
                return c
                    .keys_after(&done[1..])
                    .into_iter()
                    .filter(|k| k.starts_with(&partial))
                    .map(|k| (k, String::new()))
                    .collect();
            }
        }
        schema::next(tree(self.configuring), self.role, &done, &partial)
            .unwrap_or_default()
            .into_iter()
            .map(|(w, h)| (w, h.to_owned()))
            .collect()
    }
}

impl Completer for Completion {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let head = &line[..pos];
        let start = head.rfind(' ').map_or(0, |i| i + 1);
        let offers = self
            .offers(head)
            .into_iter()
            .filter(|(w, _)| !w.starts_with('<'))
            .map(|(w, _)| Pair {
                display: w.clone(),
                replacement: format!("{w} "),
            })
            .collect();
        Ok((start, offers))
    }
}

impl Hinter for Completion {
    type Hint = String;
}
impl Highlighter for Completion {}
impl Validator for Completion {}
impl Helper for Completion {}

/// `?` ends the line here and asks for help on it (the line comes back to be finished).
struct Question(Arc<AtomicBool>);

impl ConditionalEventHandler for Question {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, _: &EventContext<'_>) -> Option<Cmd> {
        self.0.store(true, Ordering::SeqCst);
        Some(Cmd::AcceptLine)
    }
}

/// Runs the console until `exit`, the end of input, or the idle time.
pub fn run(socket: &Path) -> ExitCode {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut s = match Session::connect(socket, Role::Operator, tty) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut idle = Duration::from_secs(callgate_config::DEFAULT_IDLE_SECS);
    match s.client.request(&Request::Whoami) {
        Ok(r) if r.ok => {
            s.user = r.data["user"].as_str().unwrap_or_default().to_owned();
            s.role = if r.data["role"] == "admin" {
                Role::Admin
            } else {
                Role::Operator
            };
            s.appliance = r.data["appliance"].as_str().unwrap_or_default().to_owned();
            if let Some(secs) = r.data["idle_timeout_secs"].as_u64() {
                idle = Duration::from_secs(secs);
            }
        }
        Ok(r) => {
            eprintln!("callgate: {}", r.text);
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("callgate: {e}");
            return ExitCode::from(1);
        }
    }
    let activity = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    spawn_idle_watch(activity.clone(), started, idle);
    let mut editor: Editor<Completion, rustyline::history::DefaultHistory> = match Editor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("callgate: the terminal: {e}");
            return ExitCode::from(1);
        }
    };
    catch_interrupts();
    // The user's history from earlier sessions (kept sealed by the daemon).
    if let Ok(r) = s.client.request(&Request::History) {
        for l in r.data["lines"].as_array().into_iter().flatten() {
            if let Some(l) = l.as_str() {
                let _ = editor.add_history_entry(l);
            }
        }
    }
    let asked = Arc::new(AtomicBool::new(false));
    editor.bind_sequence(
        KeyEvent(KeyCode::Char('?'), Modifiers::NONE),
        EventHandler::Conditional(Box::new(Question(asked.clone()))),
    );
    println!(
        "callgate console on {}: {} ({}). `help` lists the commands; Tab completes, ? explains.",
        s.appliance, s.user, s.role
    );
    let mut initial = String::new();
    loop {
        editor.set_helper(Some(Completion {
            role: s.role,
            configuring: s.candidate.is_some(),
            candidate: s.candidate.clone(),
        }));
        let prompt = format!(
            "{}@{}{} ",
            s.user,
            s.appliance,
            if s.candidate.is_some() { "#" } else { ">" }
        );
        let line = match editor.readline_with_initial(&prompt, (&initial, "")) {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => {
                initial.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("callgate: {e}");
                break;
            }
        };
        activity.store(
            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
        initial.clear();
        if asked.swap(false, Ordering::SeqCst) {
            let line = line.trim_end_matches('?').to_owned();
            print_help(&s, &line);
            initial = line;
            continue;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        remember(&mut s, line);
        match run_line(&mut s, line) {
            Ok(Flow::Go) => {}
            Ok(Flow::Logout) => break,
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if s.candidate.is_some() {
        let _ = s.client.request(&Request::ConfigUnlock);
    }
    ExitCode::SUCCESS
}

/// Runs one command line given to `-c` (`ssh appliance show calls`): operational mode
/// only.
pub fn run_once(socket: &Path, words: &[String]) -> ExitCode {
    let mut s = match Session::connect(socket, Role::Admin, false) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // The role filter is the daemon's: here the whole tree parses and the daemon refuses.
    let line = words.join(" ");
    remember(&mut s, &line);
    match run_line(&mut s, &line) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// What of a typed line is kept: the line, except that the NUMBER of a subject request
/// (`show subject`, `request subject …`) becomes `<number withheld>`.
fn for_the_record(configuring: bool, role: Role, line: &str) -> String {
    let Ok((words, _)) = pipes(line) else {
        return line.to_owned();
    };
    let Ok(p) = schema::parse(tree(configuring), role, &words) else {
        return line.to_owned();
    };
    if !matches!(
        p.action,
        Action::ShowSubject | Action::SubjectExport | Action::SubjectErase
    ) {
        return line.to_owned();
    }
    let Some(number) = p.values.first() else {
        return line.to_owned();
    };
    let Ok(all) = crate::shell::split(line) else {
        return line.to_owned();
    };
    let kept: Vec<String> = all
        .iter()
        .map(|w| {
            if w == number {
                "<number withheld>".to_owned()
            } else {
                w.clone()
            }
        })
        .collect();
    kept.join(" ")
}

/// Hands a typed line to the daemon: the user's history, and the audit trail's command
/// accounting. The command runs whether or not it could be kept.
fn remember(s: &mut Session, line: &str) {
    let line = for_the_record(s.candidate.is_some(), s.role, line);
    let line: String = line
        .chars()
        .take(callgate_control::MAX_TYPED_LINE / 4)
        .collect();
    match s.client.request(&Request::Remember { line }) {
        Ok(r) if r.ok => {}
        Ok(r) => eprintln!("note: the line is not kept: {}", r.text),
        Err(e) => eprintln!("note: the line is not kept: {e}"),
    }
}

enum Flow {
    Go,
    Logout,
}

fn print_help(s: &Session, line: &str) {
    let c = Completion {
        role: s.role,
        configuring: s.candidate.is_some(),
        candidate: s.candidate.clone(),
    };
    let offers = c.offers(line);
    if offers.is_empty() {
        println!("  (nothing more: press Enter)");
    }
    let width = offers.iter().map(|(w, _)| w.len()).max().unwrap_or(0);
    for (w, h) in offers {
        println!("  {w:<width$}  {h}");
    }
}

/// Splits `cmd | pipe | pipe` (the bar outside quotes).
fn pipes(line: &str) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let words = crate::shell::split(line)?;
    let mut parts = words.split(|w| w == "|");
    let cmd = parts.next().unwrap_or_default().to_vec();
    let rest: Vec<Vec<String>> = parts.map(<[String]>::to_vec).collect();
    for p in &rest {
        match p.first().map(String::as_str) {
            Some("match") if p.len() == 2 => {}
            Some("count" | "no-more" | "compare") if p.len() == 1 => {}
            Some("display") if p.len() == 2 && p[1] == "json" => {}
            _ => {
                return Err(format!(
                    "unknown pipe '| {}': expected | match WORD, | count, | no-more, | display json, or | compare",
                    p.join(" ")
                ))
            }
        }
    }
    Ok((cmd, rest))
}

fn ask(s: &mut Session, req: &Request) -> Result<Response, String> {
    let r = s.client.request(req).map_err(|e| e.to_string())?;
    if s.json {
        s.last_data = Some(r.data.clone());
    }
    Ok(r)
}

fn answer(r: Response) -> Result<String, String> {
    if r.ok {
        Ok(r.text)
    } else {
        Err(r.text)
    }
}

fn run_line(s: &mut Session, line: &str) -> Result<Flow, String> {
    let r = run_line_inner(s, line);
    s.json = false;
    s.last_data = None;
    r
}

fn run_line_inner(s: &mut Session, line: &str) -> Result<Flow, String> {
    let (words, pipe) = pipes(line)?;
    let configuring = s.candidate.is_some();
    let p: Parsed = schema::parse(tree(configuring), s.role, &words)?;
    // `| display json`: the reply's data (what `callgate --json` prints), masked by the
    // daemon as the text is.
    s.json = pipe.iter().any(|p| p[0] == "display");
    s.last_data = None;
    let compare = pipe.iter().any(|p| p[0] == "compare");
    if compare && p.action != Action::ShowCandidate {
        return Err("| compare follows `show` in configuration mode".into());
    }
    let number = |i: usize| -> Result<u64, String> {
        p.values
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| "a whole number is needed".to_owned())
    };
    let mut out: String = match p.action {
        Action::ShowFirewall => answer(ask(s, &Request::ShowFirewall)?)?,
        Action::ShowConfig => answer(ask(s, &Request::ShowConfig)?)?,
        Action::ShowHistory => answer(ask(s, &Request::ShowHistory)?)?,
        Action::ShowCalls => answer(ask(s, &Request::ShowCalls)?)?,
        Action::ShowCdrs => {
            let last = if p.values.is_empty() {
                20
            } else {
                number(0)? as usize
            };
            let text_only = !s.json;
            answer(ask(s, &Request::ShowCdrs { last, text_only })?)?
        }
        Action::ShowSipStats => answer(ask(s, &Request::ShowSipStats)?)?,
        Action::ShowPair => answer(ask(s, &Request::ShowPair)?)?,
        Action::ShowUplink => answer(ask(s, &Request::ShowUplink)?)?,
        Action::UplinkCsr => answer(ask(s, &Request::UplinkCsr)?)?,
        Action::UplinkInstallCert => {
            let pem = read_pem(s.tty)?;
            answer(ask(s, &Request::UplinkInstallCert { pem })?)?
        }
        Action::IntakeCsr => answer(ask(s, &Request::IntakeCsr)?)?,
        Action::IntakeInstallCert => {
            let pem = read_pem(s.tty)?;
            answer(ask(s, &Request::IntakeInstallCert { pem })?)?
        }
        Action::SipTlsCsr => answer(ask(s, &Request::SipTlsCsr)?)?,
        Action::SipTlsInstallCert => {
            let pem = read_pem(s.tty)?;
            answer(ask(s, &Request::SipTlsInstallCert { pem })?)?
        }
        Action::ShowAudit => {
            let last = if p.values.is_empty() {
                20
            } else {
                number(0)? as usize
            };
            answer(ask(s, &Request::ShowAudit { last })?)?
        }
        Action::ShowSubject => answer(ask(
            s,
            &Request::ShowSubject {
                number: p.values.first().cloned().unwrap_or_default(),
            },
        )?)?,
        Action::SubjectExport => {
            let format = match p.values.get(1) {
                Some(f) => f.parse()?,
                None => callgate_control::ExportFormat::Json,
            };
            answer(ask(
                s,
                &Request::SubjectExport {
                    number: p.values.first().cloned().unwrap_or_default(),
                    format,
                },
            )?)?
        }
        Action::SubjectErase => answer(ask(
            s,
            &Request::SubjectErase {
                number: p.values.first().cloned().unwrap_or_default(),
            },
        )?)?,
        Action::Status => answer(ask(s, &Request::Status)?)?,
        Action::Whoami => answer(ask(s, &Request::Whoami)?)?,
        Action::Compare => answer(ask(
            s,
            &Request::Compare {
                a: number(0)?,
                b: number(1)?,
            },
        )?)?,
        Action::Failover => answer(ask(s, &Request::Failover)?)?,
        Action::PairInit => answer(ask(s, &Request::PairInit)?)?,
        Action::PairJoin => {
            let secret = read_secret(s.tty, "The pairing secret `pair init` showed on the peer")?;
            answer(ask(s, &Request::PairJoin { secret })?)?
        }
        Action::PairRekey => answer(ask(s, &Request::PairRekey)?)?,
        Action::Unpair => answer(ask(s, &Request::Unpair)?)?,
        Action::ShowSessions => answer(ask(s, &Request::ShowSessions)?)?,
        // Read here, from the running system (callgate-system), not asked of the daemon.
        Action::ShowSystem => callgate_system::read(std::path::Path::new("/"))
            .map_err(|e| e.to_string())?
            .to_string(),
        // Not the daemon's: a root-only helper writes the disk (crate::upgrade).
        Action::Upgrade => crate::upgrade::client(std::path::Path::new(crate::upgrade::SOCKET))?,
        Action::EndSession => answer(ask(
            s,
            &Request::EndSession {
                session: u32::try_from(number(0)?).map_err(|e| e.to_string())?,
            },
        )?)?,
        Action::ClearLockout => answer(ask(
            s,
            &Request::ClearLockout {
                user: p.values.first().cloned().unwrap_or_default(),
            },
        )?)?,
        Action::Configure => {
            answer(ask(s, &Request::ConfigLock)?)?;
            let running = ask(s, &Request::ShowConfig)?;
            let text = running.data["text"].as_str().unwrap_or_default().to_owned();
            match Candidate::new(&text) {
                Ok(c) => s.candidate = Some(c),
                Err(e) => {
                    let _ = ask(s, &Request::ConfigUnlock);
                    return Err(e);
                }
            }
            "configuration mode: `show | compare` shows your changes, `commit` applies them"
                .to_owned()
        }
        Action::Ping | Action::Traceroute | Action::MonitorCalls => {
            if !pipe.is_empty() {
                return Err("ping, traceroute and monitor print as they go: no pipes".into());
            }
            let host = || host_arg(p.values.first().map_or("", String::as_str));
            match p.action {
                Action::Ping => {
                    let count = if p.values.len() > 1 { number(1)? } else { 5 };
                    if !(1..=100).contains(&count) {
                        return Err("ping count is 1 to 100".into());
                    }
                    let c = count.to_string();
                    tool(PING, &["-c", &c, "-W", "2", "--", &host()?])?;
                }
                Action::Traceroute => tool(
                    TRACEROUTE,
                    &["-I", "-n", "-w", "2", "-q", "1", "-m", "20", &host()?],
                )?,
                _ => monitor_calls(s)?,
            }
            return Ok(Flow::Go);
        }
        Action::Help => {
            let mut t = String::new();
            for (cmd, help, _) in schema::listing(tree(configuring), s.role) {
                t.push_str(&format!("  {cmd:<34} {help}\n"));
            }
            t.push_str("  … | match WORD | count | no-more | display json\n");
            t
        }
        Action::Exit => return Ok(Flow::Logout),
        Action::Set | Action::Delete => {
            let c = s.candidate.as_mut().ok_or("not in configuration mode")?;
            if p.action == Action::Set {
                c.set(&p.values)?;
            } else {
                c.delete(&p.values)?;
            }
            String::new()
        }
        Action::ShowCandidate => {
            let c = s.candidate.as_ref().ok_or("not in configuration mode")?;
            if compare {
                let d = c.compare();
                if d.is_empty() {
                    "(no changes)\n".to_owned()
                } else {
                    d
                }
            } else {
                c.text()
            }
        }
        Action::Commit | Action::CommitConfirmed => {
            let c = s.candidate.as_ref().ok_or("not in configuration mode")?;
            let confirmed_secs = match p.values.first() {
                None => None,
                Some(v) => Some(match v.strip_suffix('s') {
                    Some(secs) => secs.parse::<u64>().map_err(|e| e.to_string())?,
                    None => v.parse::<u64>().map_err(|e| e.to_string())? * 60,
                }),
            };
            let r = ask(
                s,
                &Request::Commit {
                    text: c.text(),
                    origin: "candidate".into(),
                    force: false,
                    confirmed_secs,
                    this_node: false,
                },
            )?;
            let msg = answer(r)?;
            reload(s)?;
            msg
        }
        Action::Confirm => answer(ask(s, &Request::Confirm { this_node: false })?)?,
        Action::Rollback => {
            let n = number(0)?;
            let r = ask(s, &Request::ShowRevision { number: n })?;
            let text = answer(r)?;
            let c = s.candidate.as_mut().ok_or("not in configuration mode")?;
            let base = c.clone();
            let mut loaded = Candidate::new(&text)?;
            // The candidate keeps the running config as its base: compare shows the way back.
            loaded = base.replaced_by(loaded);
            *c = loaded;
            format!("revision {n} loaded into the candidate: `show | compare`, then `commit`")
        }
        Action::LoadOverride => {
            if s.candidate.is_none() {
                return Err("not in configuration mode".into());
            }
            let text = read_config(s.tty, std::io::stdin().lock())?;
            let loaded = Candidate::new(&text)?;
            let c = s.candidate.as_mut().ok_or("not in configuration mode")?;
            // The running config stays the base: `show | compare` shows what the load changes.
            *c = c.clone().replaced_by(loaded);
            "the candidate is the configuration loaded: `show | compare`, then `commit`".to_owned()
        }
        Action::Discard => {
            reload(s)?;
            "the candidate is the running config again".to_owned()
        }
        Action::ExitConfigure => {
            let c = s.candidate.as_ref().ok_or("not in configuration mode")?;
            if c.changed() {
                return Err(
                    "the candidate has uncommitted changes: `commit` or `discard` first".into(),
                );
            }
            let _ = ask(s, &Request::ConfigUnlock);
            s.candidate = None;
            String::new()
        }
    };
    if s.json {
        let data = s.last_data.take().unwrap_or(serde_json::Value::Null);
        out = serde_json::to_string_pretty(&data).map_err(|e| e.to_string())? + "\n";
    }
    emit(s, &out, &pipe);
    Ok(Flow::Go)
}

/// A PEM certificate chain from the terminal (pasted, ended by an empty line) or piped
/// in (`ssh appliance uplink install-cert < chain.pem`): at most 64 KiB.
fn read_pem(tty: bool) -> Result<String, String> {
    use std::io::BufRead as _;
    if tty {
        println!("Paste the certificate chain (PEM, leaf first), then an empty line:");
    }
    let mut pem = String::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() && pem.contains("-----END CERTIFICATE-----") {
            break;
        }
        pem.push_str(&line);
        pem.push('\n');
        if pem.len() > 64 * 1024 {
            return Err("a certificate chain of over 64 KiB: refused".into());
        }
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err("no certificate was given (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(pem)
}

/// The most a loaded configuration may hold.
const MAX_LOADED_CONFIG: usize = 1 << 20;

/// A whole configuration for `load override`: pasted on the terminal and ended by Ctrl-D
/// (the end of input), or piped in, where a line holding only the Ctrl-D character ends
/// it too (so a script of console lines can go on with `commit` after it). At most
/// 1 MiB. Its lines are not console lines: none goes to the history or the audit trail
/// (the commit that applies them is on record, with its revision).
fn read_config(tty: bool, input: impl std::io::BufRead) -> Result<String, String> {
    use std::io::BufRead as _;
    if tty {
        println!("Paste the configuration (TOML), then Ctrl-D on a line of its own:");
    }
    // Never more than the ceiling and a byte in memory, even from a line without an end.
    let mut input = input.take(MAX_LOADED_CONFIG as u64 + 1);
    let mut text = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = input.read_line(&mut line).map_err(|e| e.to_string())?;
        if n == 0 || line.trim_end_matches(['\r', '\n']) == "\u{4}" {
            break;
        }
        text.push_str(&line);
        if text.len() > MAX_LOADED_CONFIG {
            return Err(format!(
                "a configuration of over {} KiB: refused, the candidate is unchanged",
                MAX_LOADED_CONFIG / 1024
            ));
        }
    }
    if text.trim().is_empty() {
        return Err("no configuration was given: the candidate is unchanged".into());
    }
    Ok(text)
}

/// A secret typed on the terminal (not echoed) or piped in: one line, at most 4 KiB.
fn read_secret(tty: bool, what: &str) -> Result<String, String> {
    use std::io::{BufRead as _, Read as _, Write as _};
    let stdin = std::io::stdin();
    let echo = if tty {
        print!("{what} (not echoed): ");
        let _ = std::io::stdout().flush();
        NoEcho::on(&stdin)
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin
        .lock()
        .take(4096)
        .read_line(&mut line)
        .map_err(|e| e.to_string());
    drop(echo);
    if tty {
        println!();
    }
    read?;
    let secret = line.trim().to_owned();
    if secret.is_empty() {
        return Err("no secret was given".into());
    }
    Ok(secret)
}

/// The terminal's echo turned off until dropped.
struct NoEcho<'a> {
    stdin: &'a std::io::Stdin,
    saved: nix::sys::termios::Termios,
}

impl<'a> NoEcho<'a> {
    fn on(stdin: &'a std::io::Stdin) -> Option<NoEcho<'a>> {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let saved = tcgetattr(stdin).ok()?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(stdin, SetArg::TCSANOW, &quiet).ok()?;
        Some(NoEcho { stdin, saved })
    }
}

impl Drop for NoEcho<'_> {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            self.stdin,
            nix::sys::termios::SetArg::TCSANOW,
            &self.saved,
        );
    }
}

const PING: &str = "/usr/bin/ping";
const TRACEROUTE: &str = "/usr/bin/traceroute";

/// A host for ping and traceroute: an IP address, or a DNS name (letters, digits, `-`
/// and `.`, never starting with `-`), so nothing the user types becomes an option.
fn host_arg(h: &str) -> Result<String, String> {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return Ok(h.to_owned());
    }
    let name_ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if name_ok {
        Ok(h.to_owned())
    } else {
        Err(format!(
            "'{h}' is not a host: expected an IP address or a DNS name"
        ))
    }
}

/// Runs a diagnostic tool on the console's terminal (Ctrl-C stops the tool, not the
/// console: see [`interrupted`]), with a minimal environment.
fn tool(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .status()
        .map_err(|e| format!("{program}: {e}"))?;
    interrupted();
    match status.code() {
        Some(0) | None => Ok(()),
        Some(1) if program == PING => Err("ping: no answer".into()),
        Some(c) => Err(format!("{program} ended with status {c}")),
    }
}

/// `monitor calls`: the calls in progress, refreshed every 2 s until Ctrl-C.
fn monitor_calls(s: &mut Session) -> Result<(), String> {
    const ROWS: usize = 30;
    interrupted();
    loop {
        let text = answer(ask(s, &Request::ShowCalls)?)?;
        let lines: Vec<&str> = text.lines().collect();
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\x1b[H\x1b[2J");
        let _ = writeln!(out, "monitor calls: every 2 s, Ctrl-C stops\n");
        for l in lines.iter().take(ROWS) {
            let _ = writeln!(out, "{l}");
        }
        if lines.len() > ROWS {
            let _ = writeln!(
                out,
                "… {} lines more (`show calls` lists them all)",
                lines.len() - ROWS
            );
        }
        let _ = out.flush();
        drop(out);
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            if interrupted() {
                println!();
                return Ok(());
            }
        }
    }
}

/// Set by SIGINT while a command runs (the terminal's Ctrl-C reaches the console's
/// process group too): the console catches it, so Ctrl-C stops a tool or the pager and
/// never ends the session. Reading it clears it.
static INTERRUPT: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

fn catch_interrupts() {
    let flag = INTERRUPT.get_or_init(Arc::default);
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone()) {
        eprintln!("callgate: Ctrl-C would end the session: {e}");
    }
}

fn interrupted() -> bool {
    INTERRUPT
        .get()
        .is_some_and(|f| f.swap(false, Ordering::SeqCst))
}

/// The candidate starts again from the running config.
fn reload(s: &mut Session) -> Result<(), String> {
    if s.candidate.is_none() {
        return Ok(());
    }
    let r = ask(s, &Request::ShowConfig)?;
    let text = r.data["text"].as_str().unwrap_or_default().to_owned();
    s.candidate = Some(Candidate::new(&text)?);
    Ok(())
}

/// Applies the pipes and prints, through the pager on a terminal.
fn emit(s: &Session, out: &str, pipe: &[Vec<String>]) {
    let mut lines: Vec<&str> = out.lines().collect();
    let mut more = s.tty;
    for p in pipe {
        match p[0].as_str() {
            "match" => {
                let w = p[1].as_str();
                lines.retain(|l| l.contains(w));
            }
            "count" => {
                println!("Count: {} lines", lines.len());
                return;
            }
            "no-more" => more = false,
            _ => {}
        }
    }
    if lines.is_empty() {
        return;
    }
    let text = format!("{}\n", lines.join("\n"));
    if more && lines.len() > 20 && page(&text) {
        return;
    }
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `less` in secure mode (no shell escape, no editor, no log file, no history file);
/// whether it ran.
fn page(text: &str) -> bool {
    let child = Command::new("less")
        .args(["-F", "-X", "-R", "-K"])
        .env("LESSSECURE", "1")
        .env("LESSHISTFILE", "-")
        .env_remove("LESSOPEN")
        .env_remove("LESSCLOSE")
        .stdin(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
    }
    let _ = child.wait();
    true
}

/// Logs out after `idle` without a command, with a warning a minute before.
fn spawn_idle_watch(activity: Arc<AtomicU64>, started: Instant, idle: Duration) {
    let warn_at = idle.saturating_sub(Duration::from_secs(60));
    std::thread::spawn(move || {
        let mut warned_for = u64::MAX;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let last = activity.load(Ordering::SeqCst);
            let since = started
                .elapsed()
                .saturating_sub(Duration::from_millis(last));
            if since >= idle {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\r\nidle for {}s: logged out\r\n", idle.as_secs());
                let _ = out.flush();
                std::process::exit(0);
            }
            if since >= warn_at && warned_for != last {
                warned_for = last;
                let mut out = std::io::stdout().lock();
                let _ = write!(
                    out,
                    "\r\nidle: this session ends in {}s unless you enter a command\r\n",
                    idle.saturating_sub(since).as_secs()
                );
                let _ = out.flush();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_configuration_ends_at_the_end_of_input_or_a_ctrl_d_line_and_has_a_ceiling() {
        let text = "[appliance]\nname = \"lab-a\"\n";
        assert_eq!(read_config(false, text.as_bytes()).unwrap(), text);
        // A script goes on after the Ctrl-D line: what follows is left for the console.
        let mut input = std::io::Cursor::new(format!("{text}\u{4}\ncommit\n"));
        assert_eq!(read_config(false, &mut input).unwrap(), text);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut input, &mut rest).unwrap();
        assert_eq!(rest, "commit\n");
        // Nothing, or only blanks: refused.
        assert!(read_config(false, "\n  \n\u{4}\n".as_bytes()).is_err());
        // Over 1 MiB: refused, not cut short; a line without an end too.
        let big = format!("# {}\n", "x".repeat(MAX_LOADED_CONFIG));
        let e = read_config(false, big.as_bytes()).unwrap_err();
        assert!(e.contains("over 1024 KiB"), "{e}");
        let endless = std::io::BufReader::new(std::io::repeat(b'x'));
        let e = read_config(false, endless).unwrap_err();
        assert!(e.contains("over 1024 KiB"), "{e}");
    }

    #[test]
    fn a_subjects_number_is_not_kept_in_the_history_or_the_trail() {
        let kept = |l: &str| for_the_record(false, Role::Admin, l);
        assert_eq!(
            kept("req sub exp +14155550177 format csv"),
            "req sub exp <number withheld> format csv"
        );
        assert_eq!(
            kept("show subject '+1 415 555 0177' | count"),
            "show subject <number withheld> | count"
        );
        assert_eq!(
            kept("request subject erase +14155550177"),
            "request subject erase <number withheld>"
        );
        // Anything else is kept as typed.
        assert_eq!(kept("show cdrs last 5"), "show cdrs last 5");
        assert_eq!(kept("show subjekt +1415"), "show subjekt +1415");
    }

    #[test]
    fn only_addresses_and_dns_names_reach_ping_and_traceroute() {
        for ok in [
            "192.0.2.1",
            "2001:db8::1",
            "sip.example.net",
            "a-b.c",
            "localhost",
        ] {
            assert_eq!(host_arg(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "-f",
            "--help",
            "-c1000",
            "a;sh",
            "$(id)",
            "a b",
            "a..b",
            "-a.example",
            "x.-y",
            "host/../../etc",
            "`id`",
        ] {
            let e = host_arg(bad).unwrap_err();
            assert!(e.contains("not a host"), "{bad}: {e}");
        }
        assert!(host_arg(&"a".repeat(64)).is_err());
    }

    #[test]
    fn display_json_is_a_pipe() {
        let (cmd, pipe) = pipes("show cdrs last 5 | display json").unwrap();
        assert_eq!(cmd, vec!["show", "cdrs", "last", "5"]);
        assert_eq!(pipe, vec![vec!["display".to_owned(), "json".to_owned()]]);
        assert!(pipes("show cdrs | display xml").is_err());
        assert!(pipes("show cdrs | display").is_err());
    }

    #[test]
    fn diagnostics_take_no_pipes() {
        assert!(pipes("ping 192.0.2.1 | match x").is_ok());
        let p = schema::parse(
            OPERATIONAL,
            Role::Operator,
            &["ping".into(), "h".into(), "count".into(), "3".into()],
        )
        .unwrap();
        assert_eq!(
            (p.action, p.values),
            (Action::Ping, vec!["h".to_owned(), "3".to_owned()])
        );
    }
}
