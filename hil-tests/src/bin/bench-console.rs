//! `scripts/bench console`: how the engineers' console feels with a loaded appliance. One
//! lab (carrier, A, pbx, mgmt), the real release binaries (`CALLGATE_BIN_DIR`) via the
//! `Appliance` fixture with `config/lab.toml` (`max_cps`/`max_calls` raised so it can hold
//! 10,000 calls) plus an admin account `ann` with an SSH key, and the appliance's own
//! OpenSSH server (Debian's sshd with `images/ssh/sshd_config`, `console::start_sshd`) on
//! A's management address.
//!
//! ## What is measured
//! - `login_ms`: `ssh -tt ann@A` from the mgmt namespace, from the start of the `ssh`
//!   process to the console's first prompt `ann@lab-a> ` on the terminal; median of 20.
//!   The anchor `ssh_true_ms` is the same login, same client, same sshd, same run, to an
//!   account `plain` whose login shell is `/bin/true` (made by the bench with `useradd` in
//!   the appliance's /etc, in the group `callgate-operator` so that sshd's `AllowGroups`
//!   admits it, its key in the root-owned `/etc/callgate/ssh/authorized_keys/plain` that
//!   sshd's `AuthorizedKeysFile` names): start of `ssh` to its successful exit; median of
//!   20. The two kinds alternate (ABBA), so drift touches both. `login_x_vs_ssh_true` is
//!   `login_ms / ssh_true_ms` (goal: at most 1.5).
//! - `completion_ms`: in one console session, 200 times: type `show ca`, wait for its
//!   echo and for the line to go quiet, then send Tab and time until the completed word
//!   (`lls `, so `show calls `) comes back through ssh; Ctrl-U clears the line. p99
//!   (nearest rank), after 5 unmeasured rounds (goal: at most 20 ms).
//! - `show_calls_10k_ms`: 10,000 calls held through the proxy (sipp `uac.xml` from the
//!   carrier, held with a long `-d`, to a sipp UAS on the pbx, at 1000 calls/s), confirmed
//!   by the daemon's `active_calls` and its own `show calls` listing; then `callgate show
//!   calls` (human output, as `ann`, `Appliance::cli_as`) from start to exit; median of 5
//!   (goal: at most 500 ms). Each run must print a line per call (lines naming the dialled
//!   number), and the calls must still all be up after the runs.
//! - `show_cdrs_10k_ms`, `show_cdrs_10k_rss_mb`: the calls end (sipp sends the BYEs), so
//!   the store holds at least 10,000 call records; then `callgate show cdrs --last 10000`
//!   as `ann`, start to exit, median of 5, each run printing 10,000 rows. Before each run
//!   the bench writes `5` to the daemon's `/proc/PID/clear_refs` (VmHWM := VmRSS) and reads
//!   VmRSS; after it, VmHWM: the growth is VmHWM - VmRSS before, in MiB; the figure is the
//!   largest over the runs (goal: at most 4 MiB); in practice the first run, which also
//!   fills the store's page cache with the CDR tree. Each run also prints what the daemon
//!   kept (VmRSS after - VmRSS before). The same is printed for `show calls`.
//!
//! Where the time goes is printed too: the time to the full reply of the daemon on the
//! control socket (the bench's own connection as root, no client parsing), the reply's
//! size, the `--json` variant, and what starting `callgate` as `ann` costs at all
//! (`cli_as` of `callgate --version`: `ip netns exec`, `unshare`, the bind mount of the
//! appliance's /etc, `setpriv`).
//!
//! ## The terminal
//! ssh runs on a pseudo-terminal the bench opens (200 columns, 50 rows), forked straight
//! into the mgmt namespace (no `ip netns exec` in the timed path), `TERM=xterm`. The bench
//! reads the terminal on a thread of its own and answers cursor-position requests
//! (`ESC [ 6 n`, which the console's line editor, rustyline, may send before a prompt and
//! then waits up to 100 ms for) the way a terminal does, so no figure can contain a
//! terminal timeout.
//!
//! ## Output
//! Progress on stderr; a summary with the goals and whether each is met, the counts
//! reached (calls held, rows printed), then on stdout the last line `BENCH console
//! login_ms=… ssh_true_ms=… login_x_vs_ssh_true=… show_calls_10k_ms=… show_cdrs_10k_ms=…
//! show_cdrs_10k_rss_mb=… completion_ms=…`. A missed goal is reported, not an error; a
//! setup that was not reached (fewer than 10,000 calls held, fewer than 10,000 rows, a
//! login that fails) ends the bench with a non-zero exit, since its figures would mean
//! nothing. About 2 minutes on 2 cores (after the build).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hil_tests::addr::{self, A_MGMT_V4};
use hil_tests::bench::{daemon_pid, fail, median, ms};
use hil_tests::console::{start_sshd, KeyPair};
use hil_tests::sipp::{Sipp, SippHandle};
use hil_tests::{Appliance, Cli, Host, Lab, Ns};

const LAB_TOML: &str = include_str!("../../../config/lab.toml");
/// A tracking number of the lab config's first route (sip:198.51.100.10:5060 first).
const NUMBER: &str = "+15550100007";
const CALLS: u64 = 10_000;
const CALL_RATE: u32 = 1000;
/// How long the calls stay up after the last one is set up (the `show calls` runs happen
/// in this window).
const HOLD_AFTER_RAMP: Duration = Duration::from_secs(60);
const LOGINS: usize = 20;
const COMPLETIONS: usize = 200;
const WARMUP_COMPLETIONS: usize = 5;
const RUNS: usize = 5;
const ADMIN: &str = "ann";
const PLAIN: &str = "plain";
const PROMPT: &str = "ann@lab-a> ";

const GOAL_RSS_MB: f64 = 4.0;
const GOAL_COMPLETION_MS: f64 = 20.0;
const GOAL_SHOW_CALLS_MS: f64 = 500.0;
const GOAL_LOGIN_RATIO: f64 = 1.5;

/// Nearest-rank percentile.
fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * p).ceil() as usize).saturating_sub(1);
    v[i.min(v.len() - 1)]
}

fn fmt_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// A terminal: ssh on a pty, read on a thread, cursor-position requests answered.

/// Where the escape-sequence parser is.
#[derive(Debug, Clone, PartialEq)]
enum Parse {
    Text,
    Escape,
    Csi(String),
    Osc,
}

/// A process on a pseudo-terminal the bench holds the master side of.
#[derive(Debug)]
struct Term {
    master: fs::File,
    rx: mpsc::Receiver<Vec<u8>>,
    child: Child,
    /// Visible text (escape sequences and carriage returns removed) not consumed yet.
    plain: Vec<u8>,
    parse: Parse,
    /// The cursor's column (1-based), for cursor-position reports.
    col: usize,
    eof: bool,
    status: Option<ExitStatus>,
}

impl Term {
    /// Starts `cmd` on a fresh pty, forked in `ns` (no `ip netns exec`); returns it and the
    /// instant just before the fork.
    fn spawn(ns: &Ns<'_>, mut cmd: Command) -> (Term, Instant) {
        let size = nix::pty::Winsize {
            ws_row: 50,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).unwrap_or_else(|e| fail("openpty", e));
        let slave = |fd: &OwnedFd| fd.try_clone().unwrap_or_else(|e| fail("pty", e));
        cmd.stdin(Stdio::from(slave(&pty.slave)))
            .stdout(Stdio::from(slave(&pty.slave)))
            .stderr(Stdio::from(pty.slave));
        // The child inherits the namespace of the thread that forks it; `cmd` (and with it
        // the bench's copies of the slave side) is dropped when the closure returns, so the
        // master sees EOF once the child is gone.
        let (t0, child) = ns.run_in(move || {
            let t0 = Instant::now();
            (t0, cmd.spawn())
        });
        let child = child.unwrap_or_else(|e| fail("spawn on a pty", e));
        let master = fs::File::from(pty.master);
        let mut reader = master.try_clone().unwrap_or_else(|e| fail("pty", e));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                match reader.read(&mut buf) {
                    // EIO: every slave descriptor is closed (the process is gone).
                    Ok(0) | Err(_) => {
                        let _ = tx.send(Vec::new());
                        return;
                    }
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        (
            Term {
                master,
                rx,
                child,
                plain: Vec::new(),
                parse: Parse::Text,
                col: 1,
                eof: false,
                status: None,
            },
            t0,
        )
    }

    fn send(&mut self, s: &str) {
        if let Err(e) = self
            .master
            .write_all(s.as_bytes())
            .and_then(|()| self.master.flush())
        {
            fail("write to the terminal", e);
        }
    }

    /// Takes in what the process wrote: visible text to `plain`, answers cursor-position
    /// requests like a terminal.
    fn absorb(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            self.eof = true;
            return;
        }
        for &b in chunk {
            match std::mem::replace(&mut self.parse, Parse::Text) {
                Parse::Text => match b {
                    0x1b => self.parse = Parse::Escape,
                    b'\r' => self.col = 1,
                    b'\n' => {
                        self.col = 1;
                        self.plain.push(b'\n');
                    }
                    0x08 => self.col = self.col.saturating_sub(1).max(1),
                    0..=0x1f | 0x7f => {}
                    _ => {
                        if b & 0xc0 != 0x80 {
                            self.col += 1;
                        }
                        self.plain.push(b);
                    }
                },
                Parse::Escape => match b {
                    b'[' => self.parse = Parse::Csi(String::new()),
                    b']' => self.parse = Parse::Osc,
                    _ => {}
                },
                Parse::Csi(mut params) => match b {
                    0x40..=0x7e => {
                        if b == b'n' && params == "6" {
                            let reply = format!("\x1b[1;{}R", self.col);
                            self.send(&reply);
                        }
                    }
                    _ => {
                        params.push(char::from(b));
                        self.parse = Parse::Csi(params);
                    }
                },
                Parse::Osc => {
                    if b != 0x07 && b != 0x1b {
                        self.parse = Parse::Osc;
                    }
                }
            }
        }
    }

    /// Waits up to `timeout` for output; false at the deadline or at EOF.
    fn read_some(&mut self, timeout: Duration) -> bool {
        if self.eof {
            return false;
        }
        match self.rx.recv_timeout(timeout) {
            Ok(chunk) => {
                self.absorb(&chunk);
                !self.eof
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.eof = true;
                false
            }
        }
    }

    /// Waits until the visible text contains `needle`; consumes it and what came before
    /// (returned, lossily decoded) and returns when the chunk that completed it arrived.
    fn expect(&mut self, needle: &str, timeout: Duration) -> Result<(Instant, String), String> {
        let deadline = Instant::now() + timeout;
        let n = needle.as_bytes();
        loop {
            if let Some(i) = self.plain.windows(n.len()).position(|w| w == n) {
                let at = Instant::now();
                let seen: Vec<u8> = self.plain.drain(..i + n.len()).collect();
                return Ok((at, String::from_utf8_lossy(&seen).into_owned()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.eof || left.is_zero() {
                return Err(format!(
                    "{} waiting for {needle:?}; the terminal showed: {:?}",
                    if self.eof { "EOF" } else { "timeout" },
                    String::from_utf8_lossy(&self.plain)
                ));
            }
            self.read_some(left);
        }
    }

    /// Reads until nothing came for `quiet` (or `max` passed); forgets the visible text.
    fn settle(&mut self, quiet: Duration, max: Duration) {
        let start = Instant::now();
        while start.elapsed() < max && self.read_some(quiet) {}
        self.plain.clear();
    }

    /// Waits up to `timeout` for the process to exit (draining its output); its status
    /// and when the exit was seen.
    fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Instant)> {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.read_some(left);
        }
        // The terminal closed: the process has exited or is exiting.
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.status = Some(s);
                    return Some((s, Instant::now()));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => return None,
            }
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `ssh -tt USER@A` with `key` as the only identity, as `console::ssh_command` runs it (no
/// config, no agent, no known-hosts file, never a prompt), but started directly (the
/// terminal forks it inside the mgmt namespace).
fn ssh_login(key: &Path, user: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(key)
        .args(["-o", "IdentitiesOnly=yes"])
        .args(hil_tests::console::SSH_OPTIONS)
        .arg("-tt")
        .arg(format!("{user}@{A_MGMT_V4}"))
        .env("TERM", "xterm");
    cmd
}

/// One console login: ms to the first prompt. The session is ended (`exit`) afterwards.
fn console_login(mgmt: &Ns<'_>, key: &Path) -> f64 {
    let (mut t, t0) = Term::spawn(mgmt, ssh_login(key, ADMIN));
    let (at, _) = t
        .expect(PROMPT, Duration::from_secs(15))
        .unwrap_or_else(|e| fail("console login", e));
    let took = ms(at - t0);
    t.send("exit\r");
    if t.wait_exit(Duration::from_secs(10)).is_none() {
        eprintln!("  (a console session did not end on `exit`; killed)");
    }
    took
}

/// One login to the `/bin/true` account: ms to ssh's successful exit.
fn true_login(mgmt: &Ns<'_>, key: &Path) -> f64 {
    let (mut t, t0) = Term::spawn(mgmt, ssh_login(key, PLAIN));
    match t.wait_exit(Duration::from_secs(15)) {
        Some((s, at)) if s.success() => ms(at - t0),
        Some((s, _)) => fail(
            "ssh to the /bin/true account",
            format!("{s}: {}", String::from_utf8_lossy(&t.plain)),
        ),
        None => fail("ssh to the /bin/true account", "did not exit in 15 s"),
    }
}

/// Tab round trips in one console session (the first `warmup` are not kept).
fn completions(mgmt: &Ns<'_>, key: &Path, n: usize, warmup: usize) -> Vec<f64> {
    let (mut t, _) = Term::spawn(mgmt, ssh_login(key, ADMIN));
    t.expect(PROMPT, Duration::from_secs(15))
        .unwrap_or_else(|e| fail("console login", e));
    t.settle(Duration::from_millis(50), Duration::from_secs(2));
    let mut out = Vec::with_capacity(n);
    for i in 0..n + warmup {
        t.send("show ca");
        t.expect("show ca", Duration::from_secs(5))
            .unwrap_or_else(|e| fail("echo of `show ca`", e));
        // Whatever else the line editor draws for these keys, before the clock starts.
        t.settle(Duration::from_millis(15), Duration::from_secs(2));
        let t0 = Instant::now();
        t.send("\t");
        let (at, _) = t
            .expect("lls ", Duration::from_secs(5))
            .unwrap_or_else(|e| fail("Tab completion of `show ca`", e));
        if i >= warmup {
            out.push(ms(at - t0));
        }
        t.send("\x15"); // Ctrl-U: the line is empty again
        t.settle(Duration::from_millis(30), Duration::from_secs(2));
    }
    t.send("exit\r");
    let _ = t.wait_exit(Duration::from_secs(10));
    out
}

// ---------------------------------------------------------------------------------------
// The appliance, its accounts, its memory.

/// `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How the daemon's resident memory moved during one request (MiB).
#[derive(Debug, Clone, Copy)]
struct Growth {
    /// VmHWM after - VmRSS before: the peak above where it was.
    peak: f64,
    /// VmRSS after - VmRSS before: what it kept (caches filled, heap not returned).
    kept: f64,
}

/// Runs `f` and returns how much the daemon's resident memory peaked above where it was
/// before (MiB): VmHWM reset to VmRSS (`clear_refs` 5) first, read after.
fn rss_growth<T>(pid: u32, f: impl FnOnce() -> T) -> (T, Growth) {
    fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .unwrap_or_else(|e| fail("clear_refs (VmHWM reset)", e));
    let before = status_kib(pid, "VmRSS:").unwrap_or_else(|| fail("VmRSS", "unreadable"));
    let r = f();
    let hwm = status_kib(pid, "VmHWM:").unwrap_or_else(|| fail("VmHWM", "unreadable"));
    let after = status_kib(pid, "VmRSS:").unwrap_or_else(|| fail("VmRSS", "unreadable"));
    let mib = |kib: f64| kib / 1024.0;
    (
        r,
        Growth {
            peak: mib(hwm as f64 - before as f64).max(0.0),
            kept: mib(after as f64 - before as f64),
        },
    )
}

/// Per run: `peak (kept)` in MiB.
fn fmt_growth(v: &[Growth]) -> String {
    v.iter()
        .map(|g| format!("{:.1} ({:+.1})", g.peak, g.kept))
        .collect::<Vec<_>>()
        .join(" ")
}

fn max_peak(v: &[Growth]) -> f64 {
    v.iter().map(|g| g.peak).fold(0.0, f64::max)
}

fn active_calls(a: &Appliance<'_>) -> u64 {
    a.cli(&["--json", "show", "sip", "stats"]).json()["stats"]["active_calls"]
        .as_u64()
        .unwrap_or(0)
}

/// Lines of a listing that name the dialled number: one per call or record.
fn rows(text: &str) -> usize {
    text.lines().filter(|l| l.contains(NUMBER)).count()
}

/// One timed `callgate ARGS` as the admin: (ms to exit, its output).
fn timed_cli(a: &Appliance<'_>, args: &[&str]) -> (f64, Cli) {
    let t0 = Instant::now();
    let r = a.cli_as(ADMIN, args);
    let took = ms(t0.elapsed());
    if !r.ok() {
        fail(
            &format!("callgate {}", args.join(" ")),
            format!("exit {}: {}", r.code, r.stderr.trim()),
        );
    }
    (took, r)
}

/// The daemon's reply to one raw request line on its control socket (as root, no
/// client): ms to the last line, bytes, lines.
fn raw_request(a: &Appliance<'_>, line: &str) -> (f64, usize, usize) {
    let t0 = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(a.socket())
        .unwrap_or_else(|e| fail("control socket", e));
    s.write_all(format!("{line}\n").as_bytes())
        .unwrap_or_else(|e| fail("control socket", e));
    let mut rd = BufReader::new(s);
    let (mut bytes, mut parts) = (0, 0);
    loop {
        let mut l = String::new();
        match rd.read_line(&mut l) {
            Ok(0) => break,
            Ok(n) => {
                bytes += n;
                parts += 1;
                // A streamed reply's parts say `"more":true`; the last one does not.
                if !l.contains("\"more\":true") {
                    break;
                }
            }
            Err(e) => fail("control socket", e),
        }
    }
    (ms(t0.elapsed()), bytes, parts)
}

fn spawn_uas<'lab>(lab: &'lab Lab, timeout: Duration) -> SippHandle<'lab> {
    let uas = Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
        .local(addr::PBX_V4, 5060)
        .timeout(timeout)
        .spawn()
        .unwrap_or_else(|e| fail("uas", e));
    uas.wait_ready(Duration::from_secs(5))
        .unwrap_or_else(|e| fail("uas", e));
    uas
}

/// Makes the anchor's account: login shell `/bin/true`, admitted by sshd (group
/// `callgate-operator`), key in the root-owned file sshd reads. Not a console account
/// (no marker): the daemon never touches it.
fn make_plain_account(a: &Appliance<'_>, key: &KeyPair) {
    let mut cmd = a.command("useradd");
    cmd.args([
        "-M",
        "-d",
        "/",
        "-s",
        "/bin/true",
        "-G",
        "callgate-operator",
        "-c",
        "bench anchor, shell /bin/true",
        "-p",
        "*",
        PLAIN,
    ])
    .stdin(Stdio::null());
    let r = Cli::run(cmd);
    if !r.ok() {
        fail("useradd plain", r.stderr.trim());
    }
    let keys = a.etc().join("callgate/ssh/authorized_keys");
    fs::create_dir_all(&keys).unwrap_or_else(|e| fail("authorized_keys dir", e));
    let file = keys.join(PLAIN);
    fs::write(&file, format!("{}\n", key.public)).unwrap_or_else(|e| fail("authorized_keys", e));
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| fail("authorized_keys", e));
}

fn goal(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn main() {
    let began = Instant::now();
    let callgated = hil_tests::bin("callgated");
    if !callgated.is_file() {
        fail("callgated", format!("{} missing", callgated.display()));
    }
    eprintln!(
        "bench console: binaries from {}",
        callgated
            .parent()
            .map_or_else(String::new, |p| p.display().to_string())
    );
    let keys = tempfile::Builder::new()
        .prefix("bench-console-")
        .tempdir()
        .unwrap_or_else(|e| fail("tempdir", e));
    let (ann, plain) = (
        KeyPair::new(keys.path(), ADMIN),
        KeyPair::new(keys.path(), PLAIN),
    );
    let limits = LAB_TOML
        .replace("max_cps = 200", "max_cps = 1000000")
        .replace("max_calls = 2000", "max_calls = 1000000");
    if !limits.contains("max_cps = 1000000") || !limits.contains("max_calls = 1000000") {
        fail("config", "lab.toml changed: cannot raise max_cps/max_calls");
    }
    let config = format!(
        "{limits}\n[[user]]\nname = \"{ADMIN}\"\nrole = \"admin\"\nssh_keys = [\"{}\"]\n",
        ann.public
    );

    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Mgmt])
        .unwrap_or_else(|e| fail("lab", e));
    let a = Appliance::start(&lab, Host::A, &config).unwrap_or_else(|e| fail("appliance", e));
    let pid = daemon_pid(&a);
    if !hil_tests::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        a.cli_as(ADMIN, &["status"]).ok()
    }) {
        fail("account ann", a.log());
    }
    make_plain_account(&a, &plain);
    let _sshd = start_sshd(&a, A_MGMT_V4.into());
    let mgmt = lab.ns(Host::Mgmt);
    eprintln!(
        "appliance up (daemon pid {pid}, VmRSS {:.1} MiB); sshd on {A_MGMT_V4}:22 [{:.0}s]",
        status_kib(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
        began.elapsed().as_secs_f64()
    );

    // 1. Logins: console vs /bin/true, alternating (ABBA), after one of each unmeasured.
    console_login(&mgmt, &ann.private);
    true_login(&mgmt, &plain.private);
    let (mut login, mut truth) = (Vec::new(), Vec::new());
    for i in 0..LOGINS {
        if i % 2 == 0 {
            login.push(console_login(&mgmt, &ann.private));
            truth.push(true_login(&mgmt, &plain.private));
        } else {
            truth.push(true_login(&mgmt, &plain.private));
            login.push(console_login(&mgmt, &ann.private));
        }
    }
    let (login_ms, true_ms) = (median(login.clone()), median(truth.clone()));
    let ratio = login_ms / true_ms;
    eprintln!("login to the console prompt, ms: {}", fmt_list(&login));
    eprintln!("login to /bin/true, ms:          {}", fmt_list(&truth));

    // 2. Tab completion.
    let tabs = completions(&mgmt, &ann.private, COMPLETIONS, WARMUP_COMPLETIONS);
    let completion_ms = percentile(tabs.clone(), 0.99);
    eprintln!(
        "Tab completion, {} samples: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        tabs.len(),
        median(tabs.clone()),
        completion_ms,
        percentile(tabs.clone(), 1.0)
    );
    // What starting the console tool as ann costs at all (wrappers + process start).
    let launch: Vec<f64> = (0..RUNS).map(|_| timed_cli(&a, &["--version"]).0).collect();
    let launch_ms = median(launch);

    // 3. 10,000 calls held.
    let ramp = CALLS as f64 / f64::from(CALL_RATE);
    let hold = Duration::from_secs_f64(ramp) + HOLD_AFTER_RAMP;
    let limit = Duration::from_secs_f64(ramp * 2.0 + hold.as_secs_f64() + 60.0);
    let uas = spawn_uas(&lab, limit + Duration::from_secs(10));
    let uac = Sipp::uac(&lab.ns(Host::Carrier), "uac.xml")
        .local(addr::CARRIER_V4, 5060)
        .remote(addr::A_WAN_V4, 5060)
        .service(NUMBER)
        .calls(CALLS)
        .rate(f64::from(CALL_RATE))
        .limit(CALLS)
        .duration(hold)
        .recv_timeout(Some(Duration::from_secs(10)))
        .timeout(limit)
        .spawn()
        .unwrap_or_else(|e| fail("uac", e));
    let placed = Instant::now();
    let mut up = 0;
    while placed.elapsed() < Duration::from_secs_f64(ramp + 20.0) {
        up = active_calls(&a);
        if up >= CALLS {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let listed = a.cli(&["--json", "show", "calls"]).json()["calls"]
        .as_array()
        .map_or(0, Vec::len) as u64;
    eprintln!(
        "calls: {up} active (sip stats), {listed} in the daemon's listing, {:.1}s after the \
         first INVITE; daemon VmRSS {:.1} MiB",
        placed.elapsed().as_secs_f64(),
        status_kib(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0
    );
    if up < CALLS || listed < CALLS {
        let snap = uac.snapshot().ok();
        fail(
            "setup",
            format!(
                "only {} of {CALLS} calls held (uac: {} ok, {} failed)",
                up.min(listed),
                snap.as_ref().map_or(0, |s| s.successful),
                snap.as_ref().map_or(0, |s| s.failed)
            ),
        );
    }
    std::thread::sleep(Duration::from_millis(500)); // the last ACKs
    let held = up.min(listed);
    let (mut calls_ms, mut calls_rows, mut calls_rss) = (vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let ((took, r), grew) = rss_growth(pid, || timed_cli(&a, &["show", "calls"]));
        calls_ms.push(took);
        calls_rows.push(rows(&r.stdout));
        calls_rss.push(grew);
    }
    let calls_raw: Vec<(f64, usize, usize)> = (0..3)
        .map(|_| raw_request(&a, r#"{"cmd":"show_calls"}"#))
        .collect();
    let calls_json: Vec<f64> = (0..3)
        .map(|_| {
            let t0 = Instant::now();
            let _ = a.cli_as(ADMIN, &["--json", "show", "calls"]);
            ms(t0.elapsed())
        })
        .collect();
    let still_up = active_calls(&a);
    eprintln!(
        "show calls, ms: {} (lines per call: {:?}; daemon RSS peak growth (kept), MiB: {})",
        fmt_list(&calls_ms),
        calls_rows,
        fmt_growth(&calls_rss)
    );
    let show_calls_ms = median(calls_ms.clone());
    let min_call_rows = calls_rows.iter().copied().min().unwrap_or(0);
    if min_call_rows < CALLS as usize || still_up < CALLS {
        fail(
            "setup",
            format!(
                "show calls printed {min_call_rows} call lines; {still_up} calls still up \
                 after the runs (need {CALLS})"
            ),
        );
    }

    // 4. The calls end (BYEs after the hold); their records are in the store.
    let r = uac.wait(limit).unwrap_or_else(|e| fail("uac", e));
    let _ = uas.stop();
    eprintln!(
        "uac: {} calls ok, {} failed [{:.0}s]",
        r.successful,
        r.failed,
        began.elapsed().as_secs_f64()
    );
    if !hil_tests::poll_until(Duration::from_secs(30), Duration::from_millis(250), || {
        active_calls(&a) == 0
    }) {
        eprintln!(
            "  WARNING: {} calls still active after the BYEs",
            active_calls(&a)
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let (mut cdrs_ms, mut cdrs_rows, mut cdrs_rss) = (vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let ((took, r), grew) =
            rss_growth(pid, || timed_cli(&a, &["show", "cdrs", "--last", "10000"]));
        cdrs_ms.push(took);
        cdrs_rows.push(rows(&r.stdout));
        cdrs_rss.push(grew);
    }
    let cdrs_raw: Vec<(f64, usize, usize)> = (0..3)
        .map(|_| raw_request(&a, r#"{"cmd":"show_cdrs","last":10000}"#))
        .collect();
    eprintln!(
        "show cdrs --last 10000, ms: {} (rows: {:?}; daemon RSS peak growth (kept), MiB: {})",
        fmt_list(&cdrs_ms),
        cdrs_rows,
        fmt_growth(&cdrs_rss)
    );
    let show_cdrs_ms = median(cdrs_ms.clone());
    let cdrs_rss_mb = max_peak(&cdrs_rss);
    let min_cdr_rows = cdrs_rows.iter().copied().min().unwrap_or(0);
    if min_cdr_rows < CALLS as usize {
        fail(
            "setup",
            format!("show cdrs --last 10000 printed {min_cdr_rows} rows (need {CALLS})"),
        );
    }

    // 5. Summary and the BENCH line.
    let raw = |v: &[(f64, usize, usize)]| {
        (
            median(v.iter().map(|x| x.0).collect()),
            v.first().map_or(0, |x| x.1),
            v.first().map_or(0, |x| x.2),
        )
    };
    let (calls_raw_ms, calls_bytes, _) = raw(&calls_raw);
    let (cdrs_raw_ms, cdrs_bytes, cdrs_parts) = raw(&cdrs_raw);
    eprintln!();
    eprintln!(
        "== bench console: summary ({:.0}s) ==",
        began.elapsed().as_secs_f64()
    );
    eprintln!(
        "reached: {held} calls held ({still_up} still up after the show calls runs); \
         show calls printed {min_call_rows} call lines; show cdrs printed {min_cdr_rows} rows; \
         {} logins of each kind, {} Tab samples",
        login.len(),
        tabs.len()
    );
    eprintln!(
        "login_ms            {login_ms:>8.1}  median of {LOGINS}, ssh -tt to the console prompt"
    );
    eprintln!(
        "ssh_true_ms         {true_ms:>8.1}  median of {LOGINS}, ssh -tt to a /bin/true shell, same sshd"
    );
    eprintln!(
        "login_x_vs_ssh_true {ratio:>8.2}  goal <= {GOAL_LOGIN_RATIO}: {}",
        goal(ratio <= GOAL_LOGIN_RATIO)
    );
    eprintln!(
        "completion_ms       {completion_ms:>8.1}  p99 of {}, goal <= {GOAL_COMPLETION_MS}: {}",
        tabs.len(),
        goal(completion_ms <= GOAL_COMPLETION_MS)
    );
    eprintln!(
        "show_calls_10k_ms   {show_calls_ms:>8.1}  median of {RUNS}, goal <= {GOAL_SHOW_CALLS_MS}: {}",
        goal(show_calls_ms <= GOAL_SHOW_CALLS_MS)
    );
    eprintln!("show_cdrs_10k_ms    {show_cdrs_ms:>8.1}  median of {RUNS} (no goal)");
    eprintln!(
        "show_cdrs_10k_rss_mb {cdrs_rss_mb:>7.1}  largest of {RUNS}, goal <= {GOAL_RSS_MB}: {}",
        goal(cdrs_rss_mb <= GOAL_RSS_MB)
    );
    eprintln!(
        "where the time goes: starting callgate as ann (cli_as, --version) {launch_ms:.1} ms; \
         show calls: the daemon's whole reply on the socket {calls_raw_ms:.1} ms ({:.1} MiB, \
         text and JSON), `--json show calls` {:.1} ms, daemon RSS growth {:.1} MiB at most; \
         show cdrs: the daemon's reply {cdrs_raw_ms:.1} ms ({:.1} MiB in {cdrs_parts} parts)",
        calls_bytes as f64 / 1048576.0,
        median(calls_json),
        max_peak(&calls_rss),
        cdrs_bytes as f64 / 1048576.0,
    );
    println!(
        "BENCH console login_ms={login_ms:.1} ssh_true_ms={true_ms:.1} login_x_vs_ssh_true={ratio:.2} \
         show_calls_10k_ms={show_calls_ms:.1} show_cdrs_10k_ms={show_cdrs_ms:.1} \
         show_cdrs_10k_rss_mb={cdrs_rss_mb:.1} completion_ms={completion_ms:.1}"
    );
}
