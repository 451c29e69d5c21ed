//! SIPp in the lab: the scenarios of `hil-tests/scenarios/` and a builder to run them.
//!
//! ```no_run
//! use std::time::Duration;
//! use hil_tests::sipp::{Sipp, Transport};
//! use hil_tests::{addr, Host, Lab};
//! # fn main() -> Result<(), hil_tests::LabError> {
//! let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx])?;
//! let uas = Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
//!     .local(addr::PBX_V4, 5060)
//!     .transport(Transport::Tcp)
//!     .spawn()?;
//! uas.wait_ready(Duration::from_secs(5))?;
//! let r = Sipp::uac(&lab.ns(Host::Carrier), "uac.xml")
//!     .local(addr::CARRIER_V4, 5060)
//!     .remote(addr::A_WAN_V4, 5060)
//!     .transport(Transport::Tcp)
//!     .service("+18005550100")
//!     .calls(5)
//!     .run()?;
//! assert_eq!(r.successful, 5, "{}", r.summary());
//! let callee = uas.stop()?;
//! assert_eq!(callee.successful, 5, "{}", callee.summary());
//! # Ok(()) }
//! ```
//!
//! ## How sipp is run
//! `ip netns exec NS timeout -k 2 LIMIT sipp ...` in the foreground, registered with the
//! lab (killed at teardown), in a private temporary directory that receives everything
//! sipp writes: the stat CSV (`-trace_stat -stf stat.csv -fd 1`), unexpected messages
//! (`-trace_err -error_file errors.log`), `<log>` actions (`-trace_logs -log_file
//! logs.log`), optionally every message (`-trace_msg`, see [`Sipp::trace_messages`] or
//! `HIL_SIPP_TRACE_MSG=1`), and the screen (stdout) and stderr. `HIL_SIPP_KEEP=1` keeps
//! the directory (its path is in [`SippResult::dir`]).
//!
//! ## Quirks handled here
//! - sipp's `-timeout` only stops *new* calls; the outer `timeout` and the deadline of
//!   [`SippHandle::wait`] are the hard stops.
//! - A port clash (or any fatal error) exits 254/255 after a normal-looking screen and
//!   even a stat file: [`SippHandle::wait`] turns that into an error carrying stderr and
//!   the error log.
//! - SIGUSR1 is sipp's "finish the ongoing calls, then exit" (it then writes its final
//!   stats). A second SIGUSR1 ("abort all calls") can leave it hanging with its stat
//!   task gone (seen with `uas_ignore.xml`), so [`SippHandle::stop`] never sends it:
//!   after one SIGUSR1 and a grace period it waits for one fresh stat row (`-fd 1`)
//!   and then terminates sipp.
//! - The signals go to sipp itself, not to the process group: coreutils `timeout` dies
//!   from SIGUSR1.
//! - Every sipp binds media (echo) ports `-mp` and `-mp + 2` on its local address; the
//!   default here derives `-mp` from the SIP port so that several instances can share an
//!   address.
//! - Scenario `<log>` lines `FINAL <code> <call-id>` (all UAC scenarios here write one
//!   per INVITE final response) become [`SippResult::final_codes`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{LabError, Result};
use crate::lab::Ns;
use crate::proc::Proc;

/// The scenario directory (`hil-tests/scenarios`).
pub const SCENARIO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");

/// Default caller number (`-key caller`).
pub const DEFAULT_CALLER: &str = "+14155550123";
/// Default caller display name (`-key caller_name`).
pub const DEFAULT_CALLER_NAME: &str = "Carrier Caller";

/// Default overall time limit of one sipp run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default receive timeout of a UAC (a call waiting longer for a message fails).
pub const DEFAULT_UAC_RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Grace period of [`SippHandle::stop`] between SIGUSR1 and looking for a fresh stat row.
const STOP_GRACE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(20);

/// Full path of scenario `name` (e.g. `"uac.xml"`) in [`SCENARIO_DIR`].
pub fn scenario_path(name: &str) -> PathBuf {
    Path::new(SCENARIO_DIR).join(name)
}

/// SIP transport: one socket per sipp (`-t u1` / `-t t1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// `-t u1`
    #[default]
    Udp,
    /// `-t t1`
    Tcp,
}

impl Transport {
    /// The sipp `-t` value.
    pub fn flag(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }
}

/// Caller or callee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Places calls to the remote address.
    Uac,
    /// Answers calls on its local address.
    Uas,
}

/// A sipp run being configured. Build with [`Sipp::uac`] / [`Sipp::uas`], then
/// [`spawn`](Sipp::spawn) or [`run`](Sipp::run).
#[derive(Debug, Clone)]
pub struct Sipp<'lab> {
    ns: Ns<'lab>,
    role: Role,
    scenario: PathBuf,
    local_ip: Option<IpAddr>,
    local_port: u16,
    remote: Option<SocketAddr>,
    transport: Transport,
    service: Option<String>,
    calls: Option<u64>,
    rate: Option<f64>,
    rate_period_ms: Option<u64>,
    limit: Option<u64>,
    duration: Option<Duration>,
    media_port: Option<u16>,
    caller: String,
    caller_name: String,
    keys: Vec<(String, String)>,
    sets: Vec<(String, String)>,
    recv_timeout: Option<Duration>,
    timeout: Duration,
    trace_messages: bool,
    extra: Vec<String>,
}

impl<'lab> Sipp<'lab> {
    fn new(ns: &Ns<'lab>, role: Role, scenario: &str) -> Self {
        let path = Path::new(scenario);
        let scenario = if path.is_absolute() {
            path.to_path_buf()
        } else {
            scenario_path(scenario)
        };
        Sipp {
            ns: ns.clone(),
            role,
            scenario,
            local_ip: None,
            local_port: 5060,
            remote: None,
            transport: Transport::Udp,
            service: None,
            calls: None,
            rate: None,
            rate_period_ms: None,
            limit: None,
            duration: None,
            media_port: None,
            caller: DEFAULT_CALLER.to_owned(),
            caller_name: DEFAULT_CALLER_NAME.to_owned(),
            keys: Vec::new(),
            sets: Vec::new(),
            recv_timeout: (role == Role::Uac).then_some(DEFAULT_UAC_RECV_TIMEOUT),
            timeout: DEFAULT_TIMEOUT,
            trace_messages: std::env::var_os("HIL_SIPP_TRACE_MSG").is_some_and(|v| v == "1"),
            extra: Vec::new(),
        }
    }

    /// A caller running `scenario` (a file name in [`SCENARIO_DIR`], or an absolute
    /// path) in `ns`. Needs [`remote`](Sipp::remote).
    pub fn uac(ns: &Ns<'lab>, scenario: &str) -> Self {
        Self::new(ns, Role::Uac, scenario)
    }

    /// A callee running `scenario` in `ns`. Runs until `-m` calls are done
    /// ([`calls`](Sipp::calls)) or it is [stopped](SippHandle::stop).
    /// Out-of-call OPTIONS (the proxy's health probes), INFO, NOTIFY and UPDATE are
    /// answered 200 automatically (`-aa`).
    pub fn uas(ns: &Ns<'lab>, scenario: &str) -> Self {
        Self::new(ns, Role::Uas, scenario).arg("-aa")
    }

    /// Local address and port (`-i`, `-p`). Default: the host's primary IPv4 address on
    /// its first segment, port 5060.
    pub fn local(mut self, ip: impl Into<IpAddr>, port: u16) -> Self {
        self.local_ip = Some(ip.into());
        self.local_port = port;
        self
    }

    /// Where a UAC sends every request (the proxy, or the callee directly).
    pub fn remote(mut self, ip: impl Into<IpAddr>, port: u16) -> Self {
        self.remote = Some(SocketAddr::new(ip.into(), port));
        self
    }

    /// `-t u1` / `-t t1` (default UDP).
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }

    /// `-s`: the dialled number (`[service]`: Request-URI and To user).
    pub fn service(mut self, s: impl Into<String>) -> Self {
        self.service = Some(s.into());
        self
    }

    /// `-m`: stop after this many calls.
    pub fn calls(mut self, n: u64) -> Self {
        self.calls = Some(n);
        self
    }

    /// `-r`: calls per rate period (default period 1 s, sipp's default rate 10).
    pub fn rate(mut self, r: f64) -> Self {
        self.rate = Some(r);
        self
    }

    /// `-rp`: the rate period in milliseconds.
    pub fn rate_period(mut self, p: Duration) -> Self {
        self.rate_period_ms = Some(u64::try_from(p.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// `-l`: maximum simultaneous calls.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// `-d`: the length of `<pause/>`: hold time (uac, uac_reinvite), ring time before
    /// the CANCEL (uac_cancel) or before answering (uas). sipp's default is 0.
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }

    /// `-mp`: media (RTP echo) port; sipp also binds port + 2. Default
    /// `20000 + (sip port % 10000) * 4`.
    pub fn media_port(mut self, p: u16) -> Self {
        self.media_port = Some(p);
        self
    }

    /// Caller number and display name (`-key caller`, `-key caller_name`; default
    /// [`DEFAULT_CALLER`], [`DEFAULT_CALLER_NAME`]).
    pub fn caller(mut self, number: impl Into<String>, name: impl Into<String>) -> Self {
        self.caller = number.into();
        self.caller_name = name.into();
        self
    }

    /// `-key k v`: a `[k]` keyword for the scenario.
    pub fn key(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.keys.push((k.into(), v.into()));
        self
    }

    /// `-set k v`: a global scenario variable.
    pub fn set(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.sets.push((k.into(), v.into()));
        self
    }

    /// `-recv_timeout`: a call waiting longer than this for a message fails
    /// (default [`DEFAULT_UAC_RECV_TIMEOUT`] for a UAC, none for a UAS).
    pub fn recv_timeout(mut self, t: Option<Duration>) -> Self {
        self.recv_timeout = t;
        self
    }

    /// Overall time limit: sipp's `-timeout`, the outer `timeout` (+5 s), and the
    /// deadline of [`Sipp::run`] (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// `-trace_msg`: log every message to `messages.log` in the run directory.
    pub fn trace_messages(mut self, on: bool) -> Self {
        self.trace_messages = on;
        self
    }

    /// Any other sipp argument, appended as is.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra.push(a.into());
        self
    }

    fn local_ip(&self) -> Result<IpAddr> {
        if let Some(ip) = self.local_ip {
            return Ok(ip);
        }
        self.ns
            .host()
            .and_then(|h| h.segments().first().and_then(|&s| h.v4(s)))
            .map(IpAddr::V4)
            .ok_or_else(|| sipp_error(format!("{}: no local address", self.ns.name())))
    }

    /// The sipp arguments (after the program name), for a run writing into `dir`.
    fn args(&self, dir: &Path) -> Result<Vec<String>> {
        let local_ip = self.local_ip()?;
        let mut a: Vec<String> = Vec::new();
        match (self.role, self.remote) {
            (Role::Uac, Some(r)) => a.push(r.to_string()),
            (Role::Uac, None) => {
                return Err(sipp_error(format!(
                    "{}: a UAC needs a remote address",
                    self.scenario.display()
                )))
            }
            (Role::Uas, _) => {}
        }
        let mp = self
            .media_port
            .unwrap_or(20000 + (self.local_port % 10000) * 4);
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        a.extend([
            "-sf".to_owned(),
            self.scenario.to_string_lossy().into_owned(),
        ]);
        a.extend(["-i".to_owned(), local_ip.to_string()]);
        a.extend(["-p".to_owned(), self.local_port.to_string()]);
        a.extend(["-t".to_owned(), self.transport.flag().to_owned()]);
        a.extend(["-mp".to_owned(), mp.to_string()]);
        a.extend(["-key".to_owned(), "caller".to_owned(), self.caller.clone()]);
        a.extend([
            "-key".to_owned(),
            "caller_name".to_owned(),
            self.caller_name.clone(),
        ]);
        if let Some(s) = &self.service {
            a.extend(["-s".to_owned(), s.clone()]);
        }
        if let Some(m) = self.calls {
            a.extend(["-m".to_owned(), m.to_string()]);
        }
        if let Some(r) = self.rate {
            a.extend(["-r".to_owned(), r.to_string()]);
        }
        if let Some(rp) = self.rate_period_ms {
            a.extend(["-rp".to_owned(), format!("{rp}ms")]);
        }
        if let Some(l) = self.limit {
            a.extend(["-l".to_owned(), l.to_string()]);
        }
        if let Some(d) = self.duration {
            a.extend(["-d".to_owned(), d.as_millis().to_string()]);
        }
        if let Some(t) = self.recv_timeout {
            a.extend(["-recv_timeout".to_owned(), t.as_millis().to_string()]);
        }
        for (k, v) in &self.keys {
            a.extend(["-key".to_owned(), k.clone(), v.clone()]);
        }
        for (k, v) in &self.sets {
            a.extend(["-set".to_owned(), k.clone(), v.clone()]);
        }
        a.extend([
            "-timeout".to_owned(),
            format!("{}s", self.timeout.as_secs().max(1)),
            "-nostdin".to_owned(),
            "-buff_size".to_owned(),
            "4194304".to_owned(),
            "-trace_stat".to_owned(),
            "-stf".to_owned(),
            p(STAT_CSV),
            "-fd".to_owned(),
            "1".to_owned(),
            "-trace_err".to_owned(),
            "-error_file".to_owned(),
            p(ERRORS_LOG),
            "-trace_logs".to_owned(),
            "-log_file".to_owned(),
            p(LOGS_LOG),
        ]);
        if self.trace_messages {
            a.extend([
                "-trace_msg".to_owned(),
                "-message_file".to_owned(),
                p(MESSAGES_LOG),
            ]);
        }
        a.extend(self.extra.iter().cloned());
        Ok(a)
    }

    /// Starts sipp (in the background, registered with the lab).
    pub fn spawn(self) -> Result<SippHandle<'lab>> {
        if !self.scenario.is_file() {
            return Err(sipp_error(format!(
                "no scenario {}",
                self.scenario.display()
            )));
        }
        let mut dir = tempfile::Builder::new()
            .prefix(&format!(
                "sipp-{}-",
                self.scenario
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))
            .tempdir()?;
        if std::env::var_os("HIL_SIPP_KEEP").is_some_and(|v| v == "1") {
            dir.disable_cleanup(true);
        }
        let args = self.args(dir.path())?;
        let outer = self.timeout + Duration::from_secs(5);
        let mut cmd = self.ns.command("timeout");
        cmd.args(["-k", "2", &format!("{}s", outer.as_secs()), "sipp"])
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join(SCREEN_LOG))?)
            .stderr(fs::File::create(dir.path().join(STDERR_LOG))?);
        let proc = self.ns.spawn(cmd)?;
        let label = format!(
            "sipp {} in {} ({} {}:{})",
            self.scenario
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            self.ns.name(),
            self.transport.flag(),
            self.local_ip()?,
            self.local_port
        );
        Ok(SippHandle {
            ns: self.ns.clone(),
            proc,
            files: Arc::new(RunDir { dir }),
            label,
            local: SocketAddr::new(self.local_ip()?, self.local_port),
            transport: self.transport,
            timeout: self.timeout,
        })
    }

    /// [`spawn`](Sipp::spawn), then [`wait`](SippHandle::wait) up to the
    /// [timeout](Sipp::timeout).
    pub fn run(self) -> Result<SippResult> {
        let timeout = self.timeout;
        self.spawn()?.wait(timeout)
    }
}

const STAT_CSV: &str = "stat.csv";
const ERRORS_LOG: &str = "errors.log";
const LOGS_LOG: &str = "logs.log";
const MESSAGES_LOG: &str = "messages.log";
const SCREEN_LOG: &str = "screen.log";
const STDERR_LOG: &str = "stderr.log";

/// The run directory; deleted when the last handle/result referring to it is dropped
/// (unless `HIL_SIPP_KEEP=1`).
#[derive(Debug)]
struct RunDir {
    dir: tempfile::TempDir,
}

impl RunDir {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
    fn read(&self, f: &str) -> String {
        fs::read(self.path(f))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

fn sipp_error(msg: String) -> LabError {
    LabError::Io(io::Error::other(msg))
}

/// A running sipp. Dropping it does not stop it (the lab does at teardown).
#[derive(Debug)]
pub struct SippHandle<'lab> {
    ns: Ns<'lab>,
    proc: Proc,
    files: Arc<RunDir>,
    label: String,
    local: SocketAddr,
    transport: Transport,
    timeout: Duration,
}

impl SippHandle<'_> {
    /// The lab process (`timeout`, whose child is sipp).
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The run directory (stat.csv, errors.log, logs.log, messages.log, screen.log,
    /// stderr.log).
    pub fn dir(&self) -> &Path {
        self.files.dir.path()
    }

    /// Whether sipp is still running.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// The pid of sipp itself (child of `timeout`), if it is running.
    pub fn sipp_pid(&self) -> Option<u32> {
        let parent = self.proc.pid();
        let entries = fs::read_dir("/proc").ok()?;
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may contain spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if ppid == Some(parent) {
                return Some(pid);
            }
        }
        None
    }

    /// Waits until the local SIP socket is bound (UDP) or listening (TCP): for a UAS,
    /// call before starting the callers. Error if sipp exits first or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let flags = match self.transport {
            Transport::Udp => "-Hlnu",
            Transport::Tcp => "-Hlnt",
        };
        let src = self.local.to_string();
        loop {
            if !self.is_running() {
                return Err(self.failure("exited before it was ready"));
            }
            let bound = self
                .ns
                .exec(&["ss", flags, "src", &src])
                .is_ok_and(|out| !out.trim().is_empty());
            if bound {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "not bound to {src} after {:.1}s",
                    timeout.as_secs_f64()
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for sipp to finish (`-m` calls done, or its own
    /// `-timeout`). If it is still running then, [stops](SippHandle::stop) it and
    /// returns the result with `timed_out` set. Error if sipp failed fatally (exit
    /// 254/255: a port clash, a scenario error, ...) or left no statistics.
    pub fn wait(self, timeout: Duration) -> Result<SippResult> {
        match self.proc.wait_timeout(timeout)? {
            Some(_) => self.result(false),
            None => self.stop_inner(true),
        }
    }

    /// Stops sipp: SIGUSR1 (no new calls; exit when the ongoing ones are done), and if it
    /// is still running after a grace period, one more stat row, then SIGTERM. Returns
    /// the result (calls still open at that point are neither successful nor failed).
    pub fn stop(self) -> Result<SippResult> {
        self.stop_inner(false)
    }

    fn stop_inner(self, timed_out: bool) -> Result<SippResult> {
        if self.is_running() {
            match self.sipp_pid().and_then(|p| i32::try_from(p).ok()) {
                Some(pid) => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGUSR1);
                }
                None => {
                    let _ = self.proc.signal(Signal::SIGUSR1);
                }
            }
            if self.proc.wait_timeout(STOP_GRACE)?.is_none() {
                // Still busy (calls that never end): let it write one more row (-fd 1).
                let len = fs::metadata(self.files.path(STAT_CSV)).map_or(0, |m| m.len());
                let until = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < until
                    && fs::metadata(self.files.path(STAT_CSV)).map_or(0, |m| m.len()) == len
                {
                    thread::sleep(POLL);
                }
                thread::sleep(Duration::from_millis(50)); // the row is written in pieces
                self.proc.terminate(Duration::from_secs(2))?;
            }
        }
        let mut r = self.result(timed_out)?;
        r.timed_out |= timed_out;
        Ok(r)
    }

    /// The statistics so far (sipp keeps running; `-fd 1`: up to a second old).
    pub fn snapshot(&self) -> Result<SippResult> {
        self.parse(None, false)
    }

    fn result(&self, timed_out: bool) -> Result<SippResult> {
        let status = self.proc.try_wait()?;
        let code = status.and_then(|s| s.code());
        if matches!(code, Some(254 | 255)) {
            return Err(self.failure(&format!("exited with {code:?} (fatal error)")));
        }
        // coreutils timeout: 124 = sipp did not stop in time (killed).
        let hard_timeout = code == Some(124) || code == Some(137);
        let mut r = self.parse(status, timed_out || hard_timeout)?;
        r.exit_code = code;
        Ok(r)
    }

    fn parse(
        &self,
        status: Option<std::process::ExitStatus>,
        timed_out: bool,
    ) -> Result<SippResult> {
        use std::os::unix::process::ExitStatusExt;
        let csv = self.files.read(STAT_CSV);
        let stats = parse_stat_csv(&csv)
            .ok_or_else(|| self.failure("left no statistics (stat.csv empty)"))?;
        let get = |k: &str| {
            stats
                .get(k)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(SippResult {
            label: self.label.clone(),
            exit_code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            timed_out,
            created: get("TotalCallCreated"),
            successful: get("SuccessfulCall(C)"),
            failed: get("FailedCall(C)"),
            retransmissions: get("Retransmissions(C)"),
            final_codes: parse_final_codes(&self.files.read(LOGS_LOG)),
            final_calls: parse_finals(&self.files.read(LOGS_LOG)),
            error_log: self.files.read(ERRORS_LOG),
            stat_csv_path: self.files.path(STAT_CSV),
            dir: self.files.dir.path().to_path_buf(),
            stats,
            _files: Arc::clone(&self.files),
        })
    }

    fn failure(&self, what: &str) -> LabError {
        let tail = |s: String| {
            let s = s.trim().to_owned();
            match s.char_indices().rev().nth(1500) {
                Some((i, _)) => format!("...{}", &s[i..]),
                None => s,
            }
        };
        sipp_error(format!(
            "{} {what} (timeout {}s)\n--- stderr:\n{}\n--- errors.log:\n{}\n--- dir: {}",
            self.label,
            self.timeout.as_secs(),
            tail(self.files.read(STDERR_LOG)),
            tail(self.files.read(ERRORS_LOG)),
            self.files.dir.path().display()
        ))
    }
}

/// What a sipp run did (from the last row of its stat CSV and its logs).
#[derive(Debug, Clone)]
pub struct SippResult {
    /// Which run (scenario, namespace, transport, address).
    pub label: String,
    /// sipp's exit code (0: all calls successful, 1: some failed, 97: internal command,
    /// 99: no call processed; 124: killed by the outer `timeout`). `None` if it was
    /// killed by a signal or is still running (a [snapshot](SippHandle::snapshot)).
    pub exit_code: Option<i32>,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// It did not finish by itself in time and was stopped.
    pub timed_out: bool,
    /// `TotalCallCreated`.
    pub created: u64,
    /// `SuccessfulCall(C)`.
    pub successful: u64,
    /// `FailedCall(C)`.
    pub failed: u64,
    /// `Retransmissions(C)`.
    pub retransmissions: u64,
    /// The INVITE final response codes the scenario logged (`FINAL <code>` lines), in
    /// order of arrival.
    pub final_codes: Vec<u16>,
    /// The same lines as (code, Call-ID).
    pub final_calls: Vec<(u16, String)>,
    /// The last stat row, by column name (`"FailedTimeoutOnRecv(C)"`, ...).
    pub stats: BTreeMap<String, String>,
    /// The unexpected-message log (`-trace_err`).
    pub error_log: String,
    /// The stat CSV (exists as long as this result or its handle does, see `dir`).
    pub stat_csv_path: PathBuf,
    /// The run directory.
    pub dir: PathBuf,
    _files: Arc<RunDir>,
}

impl SippResult {
    /// The Call-IDs of the calls that ended answered (final response 200).
    pub fn answered(&self) -> Vec<String> {
        self.final_calls
            .iter()
            .filter(|(c, _)| *c == 200)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// A counter of the last stat row, e.g. `stat("FailedTimeoutOnRecv(C)")`.
    pub fn stat(&self, column: &str) -> Option<u64> {
        self.stats.get(column).and_then(|v| v.trim().parse().ok())
    }

    /// How many calls ended with final response `code`.
    pub fn code_count(&self, code: u16) -> usize {
        self.final_codes.iter().filter(|&&c| c == code).count()
    }

    /// A one-paragraph description for assertion messages: counters, non-zero failure
    /// columns, codes and the start of the error log.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: exit {:?} signal {:?}{} created {} successful {} failed {} retrans {}",
            self.label,
            self.exit_code,
            self.signal,
            if self.timed_out { " TIMED OUT" } else { "" },
            self.created,
            self.successful,
            self.failed,
            self.retransmissions
        );
        for (k, v) in &self.stats {
            let n = v.trim().parse::<u64>().unwrap_or(0);
            if n > 0 && k.ends_with("(C)") && (k.starts_with("Failed") || k.contains("Msgs")) {
                let _ = write!(s, " {k}={n}");
            }
        }
        let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
        for &c in &self.final_codes {
            *codes.entry(c).or_default() += 1;
        }
        let _ = write!(s, " codes {codes:?}");
        let err = self.error_log.trim();
        if !err.is_empty() {
            let head: String = err.chars().take(1500).collect();
            let _ = write!(s, "\n--- errors.log:\n{head}");
        }
        let _ = write!(s, "\n--- dir: {}", self.dir.display());
        s
    }
}

/// The last row of a sipp stat CSV (`;`-separated, header first) by column name.
pub fn parse_stat_csv(csv: &str) -> Option<BTreeMap<String, String>> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next()?;
    let last = lines.next_back()?;
    Some(
        header
            .split(';')
            .zip(last.split(';'))
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// The codes of `FINAL <code> ...` lines of a `-trace_logs` file.
pub fn parse_final_codes(log: &str) -> Vec<u16> {
    parse_finals(log).into_iter().map(|(c, _)| c).collect()
}

/// `FINAL <code> <call-id>` lines of a `-trace_logs` file as (code, Call-ID; empty when
/// the line has none).
pub fn parse_finals(log: &str) -> Vec<(u16, String)> {
    log.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            while let Some(t) = w.next() {
                if t == "FINAL" {
                    let code = w.next().and_then(|c| c.parse().ok())?;
                    return Some((code, w.next().unwrap_or_default().to_owned()));
                }
            }
            None
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_csv_last_row_by_name() {
        let csv = "StartTime;SuccessfulCall(C);FailedCall(C);\n\
                   2026-01-01\t00:00:00;1;0;\n2026-01-01\t00:00:01;5;2;\n";
        let m = parse_stat_csv(csv).unwrap();
        assert_eq!(m["SuccessfulCall(C)"], "5");
        assert_eq!(m["FailedCall(C)"], "2");
        assert!(parse_stat_csv("only;a;header\n").is_none());
    }

    #[test]
    fn final_codes_from_log_lines() {
        let log = "FINAL 486 1-2@x\nsomething else\nFINAL 200 2-2@x\nFINAL\n";
        assert_eq!(parse_final_codes(log), vec![486, 200]);
        assert_eq!(
            parse_finals(log),
            vec![(486, "1-2@x".to_owned()), (200, "2-2@x".to_owned())]
        );
    }

    #[test]
    fn every_scenario_exists() {
        for s in [
            "uac.xml",
            "uac_cancel.xml",
            "uac_reject.xml",
            "uac_reinvite.xml",
            "uas.xml",
            "uas_busy.xml",
            "uas_503.xml",
            "uas_noanswer.xml",
            "uas_ignore.xml",
        ] {
            assert!(scenario_path(s).is_file(), "{s}");
        }
    }
}
