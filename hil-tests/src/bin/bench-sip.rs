//! `scripts/bench sip`: the SIP proxy `callgated` against Kamailio, side by side in one run,
//! in the lab, with the same sipp scenario (the repo's `uac.xml` / `uas.xml`:
//! INVITE/100/180/200/ACK/BYE/200, no hold time, UDP) from the carrier namespace through the
//! proxy in namespace A to the PBX namespace.
//!
//! Three labs, one after the other or side by side, all with the same addresses:
//! - **direct**: a fresh lab without an appliance (no nft ruleset in A, which only forwards):
//!   sipp UAC -> sipp UAS straight to 198.51.100.10:5060. Its highest rate is
//!   `sipp_ceiling_cps`, what the load generator and the lab carry with no proxy at all.
//!   Measured again in every run.
//! - **callgate**: the real daemon (release binaries, `CALLGATE_BIN_DIR`) via the
//!   `Appliance` fixture with `config/lab.toml`, `max_cps`/`max_calls` raised; it writes a CDR
//!   per call into its encrypted store and opens media pinholes, as in production.
//! - **kamailio**: Debian's `/usr/sbin/kamailio` with `hil-tests/bench/kamailio.cfg` (a
//!   stateful record-routing proxy: tm, sl, rr, maxfwd, pv, siputils, textops), run twice:
//!   with `children` = as many workers per listening socket as callgated has threads (the
//!   issue's setup) and with `children=1` (callgated's SIP work is one thread; on 2 cores
//!   this is Kamailio's cheaper setting). Each Kamailio figure is the better of the two
//!   (higher rate, lower CPU per call, with that run's latency and kernel share);
//!   `kamailio_children` names the configuration the CPU figures come from and
//!   `kamailio_children_tried` both. Foreground (`-DD -E`), tlsf
//!   allocators with 1 GB of shm, its own runtime dir in a temporary directory, inside the
//!   lab's namespace A only, behind the very ruleset the appliance enforces
//!   (`callgate render firewall` of the same config, loaded with `nft -j -f`), so both
//!   proxies pay the same kernel path per packet (nftables chains and conntrack).
//!
//! Figures:
//! - `cps`, `kamailio_cps`, `sipp_ceiling_cps`: the highest rate at which fewer than 0.1% of
//!   the calls fail (a call that did not complete counts as failed) *and* the rate was
//!   carried: the 200s arrived at >= 90% of it (first to last, from sipp's `-trace_rtt`
//!   timestamps). A rate search: doubling from 1000 calls/s until a rate fails, then
//!   bisecting (3 times). Each step is a fixed number of calls (rate x 3 s) and is decided by
//!   the median of up to 3 trials (two passes or two failures decide), each with a fresh UAS.
//! - `cpu_us_per_call`, `kamailio_cpu_us_per_call`: process CPU time (the scheduler's run
//!   time of every thread, `/proc/PID/task/*/schedstat`, split between user and kernel as
//!   utime and stime from `/proc/PID/stat` were, which this kernel samples only at clock
//!   ticks; the ticks alone where there is no schedstat: callgated's daemon process with
//!   all its threads; for Kamailio the sum over all its processes) over a run, divided by its successful calls, at one common
//!   rate `cpu_rate_cps` = 0.8 x the lower of the two maximum rates, 5 s of calls; medians
//!   of 3 rounds, alternating which proxy goes first. callgated's per-thread split is
//!   printed too. `kernel_us_per_call` and `kamailio_kernel_us_per_call` are the stime
//!   part of it (system calls, and the network stack the datagrams a process sends pass
//!   through: veth, bridge, nftables, conntrack), the same runs.
//! - `setup_p99_ms` (and `kamailio_setup_p99_ms`, and `sipp_setup_p99_ms` without a proxy):
//!   p99 of INVITE sent -> its 200 received at the UAC, per call, from the microsecond
//!   timestamps of sipp's `-trace_msg` log, in the same runs as the CPU figures (a direct run
//!   is added to each round). The search trials take it from sipp's RTD 1 (`-trace_rtt`,
//!   `start_rtd` on the INVITE, `rtd` on the 200), whose clock ticks in 4 ms steps here.
//! - `bytes_per_dialog`: callgated's VmRSS with `dialogs` (10,000) established dialogs held
//!   open (set up at 1000 calls/s with a long `-d`, confirmed by the daemon's
//!   `active_calls`) minus VmRSS just before they were set up (on a fresh daemon warmed up
//!   by a thousand short calls), divided by `dialogs`; the median over three fresh daemons
//!   (one with `--quick`), each figure in `bytes_per_dialog_runs`. The divisor is the
//!   dialogs the daemon says it holds at the sample (`active_calls`), not the number aimed
//!   for (a warning is printed when they differ). Everything the daemon
//!   does for a held dialog is counted: the proxy's call state, the pinholes, the
//!   answer-time record (sealed into the store's file of calls in progress). Kamailio's is
//!   not measured. In these runs every call offers the same media ports, so the held
//!   dialogs share their pinholes.
//! - `kernel_bytes_per_dialog`: one more such run on a fresh daemon, with a media port of
//!   its own for each call on both sides (sipp's `[auto_media_port]`: 2,500 distinct ports
//!   per side, so 10,000 dialogs hold 2,500 pinhole pairs), reading the growth of the kernel
//!   slab caches that hold conntrack entries (`nf_conntrack`) and nft set elements
//!   (`kmalloc-cg-*`) from `/proc/slabinfo`, plus `VmallocUsed` (sets' large tables), per
//!   dialog the daemon holds: the pinholes and conntrack entries live there, outside VmRSS. The same run's VmRSS growth is
//!   `bytes_per_dialog_per_call_media`.
//!
//! - `user_us_per_call`, `kamailio_user_us_per_call`: the utime part of the CPU figures (the
//!   proxy's own work, records and pinholes included), same runs; `user_x_vs_kamailio` and
//!   `kernel_x_vs_kamailio` their ratios.
//! - `tls_cpu_us_per_call`, `kamailio_tls_cpu_us_per_call`, `tls_cpu_x_vs_kamailio`: the
//!   same scenario over TLS on both sides (the TLS route's number; callgated enrolled through
//!   its CLI, Kamailio with Debian's `kamailio-tls-modules`, both certificates from one lab
//!   CA), at one common rate `tls_rate_cps` (the CPU rate, at most 1000), medians of the
//!   rounds, alternating. Debian's sipp has no TLS: at the carrier sipp speaks TCP into
//!   stunnel (one TLS connection per sipp run), at the PBX stunnel takes the proxy's one
//!   persistent TLS connection and hands it to a TCP sipp; stunnel's CPU is in neither
//!   proxy's figure.
//!
//! Progress goes to stderr; the last line (stdout) is `BENCH sip cps=… kamailio_cps=…
//! cps_x_vs_kamailio=… cpu_us_per_call=… kamailio_cpu_us_per_call=… cpu_x_vs_kamailio=…
//! setup_p99_ms=… bytes_per_dialog=… sipp_ceiling_cps=… …`; a full run takes about 9
//! minutes on 2 cores. `--quick`: a smoke run (1.5 s trials, one per step, one bisection,
//! 2,000 dialogs, one round at the common rate; about 80 s). `--memory`: only the
//! `bytes_per_dialog` runs (`BENCH sip-memory …`; with `--quick`, one run of 2,000
//! dialogs). Everything sipp, Kamailio and callgated
//! write goes to temporary directories.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hil_tests::bench::{fail, median};
use hil_tests::sipp::{Sipp, SippHandle, Transport};
use hil_tests::tls::{enrol, through_stunnel, tls_route_config, SipPki, Stunnel, TLS_NUMBER};
use hil_tests::{addr, Appliance, Host, Lab, Proc};

const KAMAILIO_CFG: &str = include_str!("../../bench/kamailio.cfg");
const UAC_XML: &str = include_str!("../../scenarios/uac.xml");
const UAS_XML: &str = include_str!("../../scenarios/uas.xml");
const KAMAILIO: &str = "/usr/sbin/kamailio";
/// A tracking number of the lab config's first route (sip:198.51.100.10:5060 first).
const NUMBER: &str = "+15550100007";
const FAIL_LIMIT: f64 = 0.001;
const START_RATE: u32 = 1000;
/// The TLS round's rate at most (sipp's one TCP connection through stunnel carries it).
const TLS_RATE_CAP: u32 = 1000;
const MAX_RATE: u32 = 32_000;
/// The first column of sipp's `-trace_rtt` rows (ms since start) per second.
const RTT_DATE_PER_S: f64 = 1000.0;
/// `-rtt_freq`: sipp writes RTT samples in batches of this many (a last partial batch is
/// lost), so trials have a multiple of it as their number of calls.
const RTT_FREQ: u64 = 100;

struct Opts {
    quick: bool,
    /// Calls per trial = rate x this.
    trial_secs: f64,
    /// Trials per search step (median of these).
    trials: usize,
    /// Bisection steps after the doubling.
    bisect: usize,
    /// Calls per CPU/latency run = rate x this.
    cpu_secs: f64,
    reps: usize,
    dialogs: u64,
    /// Fresh daemons `bytes_per_dialog` is measured on (the median counts).
    mem_reps: usize,
}

/// utime + stime of one process, in seconds.
fn proc_cpu(pid: u32) -> Option<f64> {
    proc_times(pid).map(|(u, s)| u + s)
}

/// (utime, stime) of one process, in seconds.
fn proc_times(pid: u32) -> Option<(f64, f64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After "pid (comm)": state=0 ppid=1 ... utime=11 stime=12.
    let user = f.get(11)?.parse::<u64>().ok()?;
    let sys = f.get(12)?.parse::<u64>().ok()?;
    Some((user as f64 / clk_tck(), sys as f64 / clk_tck()))
}

/// Seconds on a CPU of every thread of `pid`: the first field of each
/// `/proc/PID/task/TID/schedstat`, the scheduler's own account in nanoseconds. utime and
/// stime are only sampled at clock ticks (this kernel has tick-based CPU accounting), so a
/// process that runs in short bursts between ticks can be under- or over-counted; the
/// scheduler's figure is exact. `None` when the kernel has no schedstat.
fn run_secs(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    let mut any = false;
    for e in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(text) = fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        if let Some(v) = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            ns += v;
            any = true;
        }
    }
    any.then_some(ns as f64 / 1e9)
}

/// CPU time of a process (or a tree of them) at one moment: the ticks' split and the
/// scheduler's total.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    user_ticks: f64,
    sys_ticks: f64,
    /// [`run_secs`], when the kernel keeps it.
    run: Option<f64>,
}

impl CpuSample {
    fn add(self, o: CpuSample) -> CpuSample {
        CpuSample {
            user_ticks: self.user_ticks + o.user_ticks,
            sys_ticks: self.sys_ticks + o.sys_ticks,
            run: self.run.zip(o.run).map(|(a, b)| a + b),
        }
    }

    fn of(pid: u32) -> Option<CpuSample> {
        let (user_ticks, sys_ticks) = proc_times(pid)?;
        Some(CpuSample {
            user_ticks,
            sys_ticks,
            run: run_secs(pid),
        })
    }

    /// (total, of which in the kernel) CPU seconds from `self` to `later`: the
    /// scheduler's total, split between user and kernel as the ticks were (the ticks'
    /// own figures when there is no schedstat, or no tick fell in the window).
    fn until(self, later: CpuSample) -> (f64, f64) {
        let (u, k) = (
            later.user_ticks - self.user_ticks,
            later.sys_ticks - self.sys_ticks,
        );
        match later.run.zip(self.run).map(|(b, a)| b - a) {
            Some(total) if u + k > 0.0 => (total, total * k / (u + k)),
            _ => (u + k, k),
        }
    }
}

/// Clock ticks per second of /proc/PID/stat times.
fn clk_tck() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    }
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `root` and all its descendants.
fn tree(root: u32) -> Vec<u32> {
    let all: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, ppid(p)?)))
        .collect();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    out
}

fn vm_rss(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// UDP `RcvbufErrors` (datagrams dropped on a full socket buffer) per lab host.
fn udp_drops(lab: &Lab) -> Vec<(&'static str, u64)> {
    [
        (Host::Carrier, "carrier"),
        (Host::A, "a"),
        (Host::Pbx, "pbx"),
    ]
    .into_iter()
    .map(|(h, name)| {
        let n = lab.ns(h).udp_rcvbuf_errors();
        (name, n)
    })
    .collect()
}

/// The proxy under test, for its CPU time.
enum Proxy {
    /// sipp to sipp.
    None,
    /// callgated's daemon process.
    Callgate(u32),
    /// Kamailio's main process (all its processes are its children).
    Kamailio(u32),
}

impl Proxy {
    /// callgated's threads: tid -> (name, CPU seconds).
    fn threads(&self) -> std::collections::BTreeMap<u32, (String, f64)> {
        let Proxy::Callgate(pid) = *self else {
            return Default::default();
        };
        fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let tid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
                let name = stat.split_once('(')?.1.rsplit_once(')')?.0.to_owned();
                let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some((tid, (name, ticks as f64 / clk_tck())))
            })
            .collect()
    }

    /// The CPU time of the proxy's process(es) so far.
    fn cpu(&self) -> Option<CpuSample> {
        match *self {
            Proxy::None => None,
            Proxy::Callgate(pid) => CpuSample::of(pid),
            Proxy::Kamailio(pid) => tree(pid)
                .into_iter()
                .filter_map(CpuSample::of)
                .reduce(CpuSample::add),
        }
    }
}

/// One setup under test: a lab, where the UAC sends its calls, and the proxy.
struct Target<'lab> {
    name: &'static str,
    lab: &'lab Lab,
    remote: Ipv4Addr,
    proxy: Proxy,
    /// A copy of uac.xml with explicit RTD markers, in a temporary directory.
    scenario: &'lab Path,
    /// Over TLS on both sides: sipp over TCP into stunnel at the carrier (to the proxy's
    /// 5061) and behind stunnel at the PBX; the TLS route's number.
    tls: bool,
}

struct Trial {
    rate: u32,
    calls: u64,
    ok: u64,
    secs: f64,
    retrans: u64,
    /// Proxy CPU seconds during the run.
    proxy_cpu: Option<f64>,
    /// Of which in the kernel (stime).
    proxy_sys: Option<f64>,
    uac_cpu: f64,
    uas_cpu: f64,
    p99_ms: Option<f64>,
    /// Calls answered per second, from the first 200 to the last.
    answered_cps: f64,
    timed_out: bool,
    /// Non-zero `Failed*` columns of the UAC and non-200 final codes.
    why: String,
}

impl Trial {
    fn failed(&self) -> u64 {
        self.calls.saturating_sub(self.ok)
    }
    /// The rate was offered and carried: the 200s came at >= 90% of it.
    fn sustained(&self) -> bool {
        !self.timed_out && self.answered_cps >= 0.9 * f64::from(self.rate)
    }
    fn pass(&self) -> bool {
        (self.failed() as f64) < FAIL_LIMIT * self.calls as f64 && self.sustained()
    }
    fn line(&self) -> String {
        let mut s = format!(
            "{} cps x {} calls: ok {} failed {} retrans {} in {:.2}s, answered at {:.0}/s{}",
            self.rate,
            self.calls,
            self.ok,
            self.failed(),
            self.retrans,
            self.secs,
            self.answered_cps,
            if self.sustained() {
                ""
            } else {
                " (rate not carried)"
            },
        );
        if let Some(c) = self.proxy_cpu {
            s += &format!(
                ", proxy cpu {:.2}s = {:.0} us/call ({:.0} in the kernel)",
                c,
                c * 1e6 / self.ok.max(1) as f64,
                self.proxy_sys.unwrap_or(f64::NAN) * 1e6 / self.ok.max(1) as f64
            );
        }
        s += &format!(
            ", uac cpu {:.2}s, uas cpu {:.2}s",
            self.uac_cpu, self.uas_cpu
        );
        if let Some(p) = self.p99_ms {
            s += &format!(", setup p99 {p:.2} ms");
        }
        s += if self.pass() { " PASS" } else { " FAIL" };
        if !self.why.is_empty() {
            s += &format!(" [{}]", self.why);
        }
        s
    }
}

fn spawn_uas<'lab>(lab: &'lab Lab, timeout: Duration, tls: bool) -> SippHandle<'lab> {
    spawn_uas_with(lab, timeout, tls, "uas.xml")
}

fn spawn_uas_with<'lab>(
    lab: &'lab Lab,
    timeout: Duration,
    tls: bool,
    scenario: &str,
) -> SippHandle<'lab> {
    let uas = Sipp::uas(&lab.ns(Host::Pbx), scenario)
        .local(addr::PBX_V4, 5060)
        .transport(if tls { Transport::Tcp } else { Transport::Udp })
        .timeout(timeout)
        .spawn()
        .unwrap_or_else(|e| fail("uas", e));
    uas.wait_ready(Duration::from_secs(5))
        .unwrap_or_else(|e| fail("uas", e));
    uas
}

/// Every sample of the `-trace_rtt` files in `dir`: (when, s; response time, ms).
fn rtt_samples(dir: &Path) -> Vec<(f64, f64)> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with("_rtt.csv") {
            continue;
        }
        // "Date_ms;response_time_ms;rtd_no" rows (the header does not parse).
        for l in fs::read_to_string(e.path()).unwrap_or_default().lines() {
            let cols: Vec<&str> = l.split(';').collect();
            if cols.len() >= 2 {
                if let (Ok(at), Ok(ms)) = (cols[0].trim().parse::<f64>(), cols[1].trim().parse()) {
                    v.push((at / RTT_DATE_PER_S, ms));
                }
            }
        }
    }
    v
}

/// INVITE sent -> its 200 received, per call (ms), from a sipp `-trace_msg` log: blocks
/// starting `----------------------------------------------- YYYY-MM-DD HH:MM:SS.uuuuuu`,
/// then `UDP message sent`/`received`, then the message.
fn setup_times(log: &Path) -> Vec<f64> {
    use std::collections::HashMap;
    use std::io::BufRead;
    let Ok(f) = fs::File::open(log) else {
        return Vec::new();
    };
    let mut invites: HashMap<String, f64> = HashMap::new();
    let mut out = Vec::new();
    // The block being read: time, sent?, start line, CSeq, Call-ID.
    let mut at = 0.0;
    let mut sent = false;
    let mut start: Option<String> = None;
    let mut cseq = String::new();
    let mut finish = |start: &Option<String>, sent: bool, at: f64, cseq: &str, call_id: &str| {
        let Some(line) = start else { return };
        if sent && line.starts_with("INVITE ") {
            invites.entry(call_id.to_owned()).or_insert(at);
        } else if !sent && line.starts_with("SIP/2.0 200") && cseq.ends_with("INVITE") {
            if let Some(t0) = invites.remove(call_id) {
                let mut d = at - t0;
                if d < 0.0 {
                    d += 86_400.0; // midnight
                }
                out.push(d * 1e3);
            }
        }
    };
    let mut call_id = String::new();
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        if let Some(stamp) = line.strip_prefix("----------------------------------------------- ") {
            finish(&start, sent, at, &cseq, &call_id);
            start = None;
            cseq.clear();
            call_id.clear();
            // "YYYY-MM-DD HH:MM:SS.uuuuuu": seconds of the day.
            let tod = stamp.split_whitespace().nth(1).unwrap_or_default();
            let mut parts = tod.split(':');
            let h: f64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
            let m: f64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
            let sec: f64 = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
            at = h * 3600.0 + m * 60.0 + sec;
        } else if line.starts_with("UDP message sent") {
            sent = true;
        } else if line.starts_with("UDP message received") {
            sent = false;
        } else if start.is_none() && !line.trim().is_empty() {
            start = Some(line);
        } else if let Some(v) = line.strip_prefix("CSeq:") {
            cseq = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("Call-ID:") {
            call_id = v.trim().to_owned();
        }
    }
    finish(&start, sent, at, &cseq, &call_id);
    out
}

fn percentile(mut v: Vec<f64>, p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * p).ceil() as usize).saturating_sub(1);
    Some(v[i.min(v.len() - 1)])
}

/// One run of `calls` calls at `rate` through `t`, with a fresh UAS.
///
/// The setup latency is taken from sipp's `-trace_rtt` (RTD 1: INVITE sent -> 200 received;
/// sipp's clock ticks in 4 ms steps here), or with `messages`, from the microsecond
/// timestamps of `-trace_msg` (which costs sipp some CPU).
fn trial(t: &Target<'_>, rate: u32, calls: u64, messages: bool) -> Trial {
    let calls = calls.div_ceil(RTT_FREQ) * RTT_FREQ;
    let planned = calls as f64 / f64::from(rate);
    let limit = Duration::from_secs_f64(planned * 3.0 + 20.0);
    let uas = spawn_uas(t.lab, limit + Duration::from_secs(10), t.tls);
    let uas_pid = uas.sipp_pid();
    let uac = Sipp::uac(&t.lab.ns(Host::Carrier), &t.scenario.to_string_lossy())
        .local(addr::CARRIER_V4, 5060);
    let uac = if t.tls {
        through_stunnel(uac).service(TLS_NUMBER)
    } else {
        uac.remote(t.remote, 5060).service(NUMBER)
    };
    let uac = uac
        .calls(calls)
        .rate(f64::from(rate))
        .limit(calls.min(10_000))
        .recv_timeout(Some(Duration::from_secs(5)))
        .timeout(limit)
        .arg("-trace_rtt")
        .arg("-rtt_freq")
        .arg(RTT_FREQ.to_string())
        .trace_messages(messages);
    let cpu0 = t.proxy.cpu();
    let threads0 = t.proxy.threads();
    let drops0 = udp_drops(t.lab);
    let start = Instant::now();
    let uac = uac.spawn().unwrap_or_else(|e| fail("uac", e));
    // Follow the UAC's CPU time while it runs (gone once it exits).
    let mut uac_cpu = 0.0;
    let mut uac_pid = None;
    while uac.is_running() && start.elapsed() < limit {
        if uac_pid.is_none() {
            uac_pid = uac.sipp_pid();
        }
        if let Some(c) = uac_pid.and_then(proc_cpu) {
            uac_cpu = c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = uac.wait(limit).unwrap_or_else(|e| fail("uac", e));
    let secs = start.elapsed().as_secs_f64();
    let cpu1 = t.proxy.cpu();
    let threads1 = t.proxy.threads();
    let drops1 = udp_drops(t.lab);
    let uas_cpu = uas_pid.and_then(proc_cpu).unwrap_or(0.0);
    let _ = uas.proc().terminate(Duration::from_secs(2));
    let samples = rtt_samples(&r.dir);
    let p99_ms = if messages {
        percentile(setup_times(&r.dir.join("messages.log")), 0.99)
    } else {
        percentile(samples.iter().map(|s| s.1).collect(), 0.99)
    };
    let (first, last) = samples
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), s| (a.min(s.0), b.max(s.0)));
    let answered_cps = if samples.len() > 1 && last > first {
        (samples.len() - 1) as f64 / (last - first)
    } else {
        0.0
    };
    let mut why: Vec<String> = r
        .stats
        .iter()
        .filter(|(k, v)| {
            k.starts_with("Failed")
                && k.ends_with("(C)")
                && v.trim().parse::<u64>().unwrap_or(0) > 0
        })
        .map(|(k, v)| format!("{}={}", k.trim_end_matches("(C)"), v.trim()))
        .collect();
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for c in r.final_codes.iter().filter(|&&c| c != 200) {
        *codes.entry(*c).or_default() += 1;
    }
    why.extend(codes.iter().map(|(c, n)| format!("{n}x{c}")));
    let tr = Trial {
        rate,
        calls,
        ok: r.successful,
        secs,
        retrans: r.retransmissions,
        proxy_cpu: cpu0.zip(cpu1).map(|(a, b)| a.until(b).0),
        proxy_sys: cpu0.zip(cpu1).map(|(a, b)| a.until(b).1),
        uac_cpu,
        uas_cpu,
        p99_ms,
        answered_cps,
        timed_out: r.timed_out,
        why: why.join(" "),
    };
    eprintln!("  {} {}", t.name, tr.line());
    let drops: Vec<String> = drops0
        .iter()
        .zip(&drops1)
        .filter(|(a, b)| b.1 > a.1)
        .map(|(a, b)| format!("{} {}", a.0, b.1 - a.1))
        .collect();
    if !drops.is_empty() {
        eprintln!("    UDP receive buffer drops: {}", drops.join(", "));
    }
    if messages && !threads1.is_empty() {
        // Where callgated's CPU went, by thread name.
        let mut by_name = std::collections::BTreeMap::<String, f64>::new();
        for (tid, (name, c1)) in &threads1 {
            let c0 = threads0.get(tid).map_or(0.0, |x| x.1);
            *by_name.entry(name.clone()).or_default() += c1 - c0;
        }
        let mut v: Vec<_> = by_name.into_iter().filter(|x| x.1 > 0.0).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        let v: Vec<String> = v
            .iter()
            .take(6)
            .map(|(n, c)| format!("{n} {:.0} us/call", c * 1e6 / tr.ok.max(1) as f64))
            .collect();
        eprintln!("    callgated threads: {}", v.join(", "));
    }
    if tr.failed() > 0 {
        // The first unexpected message, on one line.
        let err: String = r
            .error_log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(8)
            .collect::<Vec<_>>()
            .join(" | ");
        if !err.is_empty() {
            eprintln!(
                "    errors.log: {}",
                err.chars().take(600).collect::<String>()
            );
        }
    }
    // Let retransmissions and timers of a failed run die down before the next one.
    std::thread::sleep(Duration::from_millis(if tr.pass() { 300 } else { 2000 }));
    tr
}

/// A search step: up to `o.trials` trials, decided by their median (majority).
fn step(t: &Target<'_>, o: &Opts, rate: u32) -> bool {
    let calls = (f64::from(rate) * o.trial_secs).round().max(100.0) as u64;
    let (mut pass, mut failed) = (0, 0);
    let need = o.trials / 2 + 1;
    while pass < need && failed < need {
        if trial(t, rate, calls, false).pass() {
            pass += 1;
        } else {
            failed += 1;
        }
    }
    let ok = pass >= need;
    eprintln!(
        "{} step {rate} cps: {}",
        t.name,
        if ok { "pass" } else { "fail" }
    );
    ok
}

fn round_rate(r: f64) -> u32 {
    ((r / 50.0).round() * 50.0).max(50.0) as u32
}

/// The highest passing rate: doubling from `START_RATE` (halving if that fails), then
/// bisecting between the highest pass and the lowest failure.
fn search(t: &Target<'_>, o: &Opts) -> u32 {
    let started = Instant::now();
    let (mut lo, mut hi) = (0u32, None::<u32>);
    let mut r = START_RATE;
    if step(t, o, r) {
        lo = r;
        while r < MAX_RATE {
            r *= 2;
            if step(t, o, r) {
                lo = r;
            } else {
                hi = Some(r);
                break;
            }
        }
    } else {
        hi = Some(r);
        while r > 50 {
            r = round_rate(f64::from(r) / 2.0);
            if step(t, o, r) {
                lo = r;
                break;
            }
            hi = Some(r);
        }
    }
    for _ in 0..o.bisect {
        let Some(h) = hi else { break };
        let mid = round_rate(f64::from(lo + h) / 2.0);
        if mid <= lo || mid >= h || f64::from(h - lo) <= f64::from(lo) * 0.07 {
            break;
        }
        if step(t, o, mid) {
            lo = mid;
        } else {
            hi = Some(mid);
        }
    }
    eprintln!(
        "{}: highest passing rate {lo} cps (lowest failing {}) [{:.0}s]",
        t.name,
        hi.map_or("none".to_owned(), |h| h.to_string()),
        started.elapsed().as_secs_f64()
    );
    lo
}

/// callgated's daemon process in the appliance's namespace.
fn daemon_pid(a: &Appliance<'_>) -> u32 {
    let out = Command::new("ip")
        .args(["netns", "pids", a.ns().name()])
        .output()
        .unwrap_or_else(|e| fail("ip netns pids", e));
    let config = a.config_path().to_string_lossy().into_owned();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            comm.trim() == "callgated"
                && cmdline.contains(&config)
                && !cmdline.contains("rollback-guard")
        })
        .unwrap_or_else(|| fail("callgated", "no daemon process in the namespace"))
}

fn active_calls(a: &Appliance<'_>) -> u64 {
    a.cli(&["--json", "show", "sip", "stats"]).json()["stats"]["active_calls"]
        .as_u64()
        .unwrap_or(0)
}

/// Bytes of kernel memory where a held dialog's kernel state lives: the slab caches of
/// conntrack entries (`nf_conntrack`) and nft set elements (the pinholes: allocated with
/// memory-cgroup accounting, so in the `kmalloc-cg-*` caches), from `/proc/slabinfo`
/// (active objects x object size), plus `VmallocUsed` from `/proc/meminfo` (a set's
/// large tables: hash buckets, interval lookup tables). System-wide: the benchmark runs
/// alone.
fn kernel_bytes() -> Option<u64> {
    let s = fs::read_to_string("/proc/slabinfo").ok()?;
    let mut total = 0u64;
    for l in s.lines() {
        let mut f = l.split_whitespace();
        let (Some(name), Some(active), Some(_), Some(size)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if name == "nf_conntrack" || name.starts_with("kmalloc-cg-") {
            if let (Ok(n), Ok(sz)) = (active.parse::<u64>(), size.parse::<u64>()) {
                total += n * sz;
            }
        }
    }
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let vmalloc_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("VmallocUsed:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(total + vmalloc_kb * 1024)
}

/// What one memory run measured, per dialog the daemon holds at the sample.
#[derive(Debug, Clone, Copy)]
struct MemRun {
    /// VmRSS growth.
    rss: f64,
    /// Growth of the kernel memory that holds conntrack entries and nft set elements
    /// ([`kernel_bytes`]).
    kernel: f64,
}

/// bytes_per_dialog on a fresh daemon: warm-up, VmRSS, `o.dialogs` dialogs held open,
/// VmRSS again, divided by the dialogs the daemon says it holds at the sample. The kernel
/// slab growth is sampled alongside. `uas` is the callee's scenario (per-call media ports
/// or not).
fn memory(t: &Target<'_>, a: &Appliance<'_>, pid: u32, o: &Opts, uas: &str) -> MemRun {
    let warm = trial(t, 500, 1000, false);
    if !warm.pass() {
        fail("callgate warm-up", "calls failed at 500 cps");
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = vm_rss(pid).unwrap_or_else(|| fail("VmRSS", "unreadable"));
    let slab_before = kernel_bytes().unwrap_or_else(|| fail("slabinfo", "unreadable"));
    let rate = 1000u32;
    let ramp = o.dialogs as f64 / f64::from(rate);
    let hold = Duration::from_secs_f64(ramp + 8.0);
    let limit = Duration::from_secs_f64(ramp * 2.0 + hold.as_secs_f64() + 30.0);
    let uas = spawn_uas_with(t.lab, limit + Duration::from_secs(10), false, uas);
    let uac = Sipp::uac(&t.lab.ns(Host::Carrier), &t.scenario.to_string_lossy())
        .local(addr::CARRIER_V4, 5060)
        .remote(t.remote, 5060)
        .service(NUMBER)
        .calls(o.dialogs)
        .rate(f64::from(rate))
        .limit(o.dialogs)
        .duration(hold)
        .recv_timeout(Some(Duration::from_secs(5)))
        .timeout(limit)
        .spawn()
        .unwrap_or_else(|e| fail("uac", e));
    let start = Instant::now();
    let mut up = 0;
    while start.elapsed() < Duration::from_secs_f64(ramp + 6.0) {
        up = active_calls(a);
        if up >= o.dialogs {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // All up: let the last ACKs settle, then sample (the calls hold for `hold`).
    std::thread::sleep(Duration::from_millis(500));
    let with: u64 = (0..3)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(200));
            vm_rss(pid).unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let slab_with = kernel_bytes().unwrap_or(0);
    let up_at_sample = active_calls(a);
    let snap = uac.snapshot().ok();
    let r = uac.wait(limit).unwrap_or_else(|e| fail("uac", e));
    let _ = uas.proc().terminate(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(500));
    let after = vm_rss(pid).unwrap_or(0);
    eprintln!(
        "callgate memory: VmRSS {:.1} MiB before, {:.1} MiB with {} dialogs up (daemon \
         active_calls {up} then {up_at_sample}; uac snapshot ok {} failed {}), {:.1} MiB after \
         they ended; uac: ok {} failed {}",
        before as f64 / 1048576.0,
        with as f64 / 1048576.0,
        o.dialogs,
        snap.as_ref().map_or(0, |s| s.successful),
        snap.as_ref().map_or(0, |s| s.failed),
        after as f64 / 1048576.0,
        r.successful,
        r.failed,
    );
    if up_at_sample < o.dialogs || r.successful < o.dialogs {
        eprintln!(
            "callgate memory: WARNING: not all {} dialogs were up at the sample",
            o.dialogs
        );
    }
    eprintln!(
        "callgate memory: kernel (nf_conntrack and kmalloc-cg-* slabs, vmalloc) {:.1} MiB \
         before, {:.1} MiB with the dialogs up",
        slab_before as f64 / 1048576.0,
        slab_with as f64 / 1048576.0
    );
    // Divided by what the daemon holds, not by what was aimed for.
    let held = up_at_sample.max(1) as f64;
    MemRun {
        rss: (with as f64 - before as f64) / held,
        kernel: (slab_with as f64 - slab_before as f64) / held,
    }
}

/// Starts Kamailio in `lab`'s namespace A; returns it and its main pid.
/// Loads the nftables ruleset `config` renders (`callgate render firewall`) into ns A.
fn apply_ruleset(lab: &Lab, config: &str, dir: &Path) {
    use std::io::Write as _;
    let file = dir.join("callgate.toml");
    fs::write(&file, config).unwrap_or_else(|e| fail("config", e));
    let out = std::process::Command::new(hil_tests::bin("callgate"))
        .args(["render", "firewall"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| fail("callgate render firewall", e));
    if !out.status.success() {
        fail(
            "callgate render firewall",
            String::from_utf8_lossy(&out.stderr),
        );
    }
    let mut nft = lab
        .ns(Host::A)
        .command("nft")
        .args(["-j", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail("nft", e));
    if let Some(mut stdin) = nft.stdin.take() {
        stdin
            .write_all(&out.stdout)
            .unwrap_or_else(|e| fail("nft stdin", e));
    }
    let r = nft.wait_with_output().unwrap_or_else(|e| fail("nft", e));
    if !r.status.success() {
        fail("nft -j -f", String::from_utf8_lossy(&r.stderr));
    }
    eprintln!("kamailio lab: the appliance's ruleset is loaded in ns A");
}

/// One Kamailio configuration: its worker count, rate search and CPU runs.
struct KRun {
    children: u32,
    procs: usize,
    cps: u32,
    us: Vec<f64>,
    sys: Vec<f64>,
    p99: Vec<f64>,
}

/// Kamailio with `children` workers per socket; with `tls` (its tls.cfg), also SIP over
/// TLS (`-A WITH_TLS`).
fn start_kamailio(lab: &Lab, dir: &Path, children: u32, tls: Option<&Path>) -> Proc {
    let cfg = dir.join("kamailio.cfg");
    fs::write(
        &cfg,
        KAMAILIO_CFG
            .replace("@CHILDREN@", &children.to_string())
            .replace(
                "@TLS_CFG@",
                &tls.map(|p| p.display().to_string()).unwrap_or_default(),
            ),
    )
    .unwrap_or_else(|e| fail("kamailio.cfg", e));
    let log = fs::File::create(dir.join("kamailio.log")).unwrap_or_else(|e| fail("log", e));
    let ns = lab.ns(Host::A);
    // Whether every SIP port is listened on (`true`) or every one is free (`false`).
    let all_ports = |ns: &hil_tests::Ns<'_>, listened: bool| {
        ["203.0.113.1:5060", "198.51.100.1:5060"].iter().all(|src| {
            ns.exec(&["ss", "-Hlnu", "src", src])
                .is_ok_and(|o| o.trim().is_empty() != listened)
        })
    };
    // A previous instance's workers may still hold the sockets for a moment.
    let start = Instant::now();
    while !all_ports(&ns, false) {
        if start.elapsed() > Duration::from_secs(10) {
            let ps = std::process::Command::new("ps")
                .args(["-eo", "pid,pgid,ppid,stat,cmd"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let ps: Vec<&str> = ps.lines().filter(|l| l.contains("kamailio")).collect();
            fail(
                "kamailio",
                format!(
                    "the SIP ports are still bound by a previous instance: {}",
                    ps.join(" | ")
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cmd = ns.command(KAMAILIO);
    if tls.is_some() {
        cmd.args(["-A", "WITH_TLS"]);
    }
    cmd.arg("-f")
        .arg(&cfg)
        .args([
            "-DD", "-E", "-x", "tlsf", "-X", "tlsf", "-m", "1024", "-M", "64",
        ])
        .arg("-Y")
        .arg(dir)
        .arg("-P")
        .arg(dir.join("kamailio.pid"))
        .arg("-w")
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|e| fail("log", e)))
        .stderr(log);
    let proc = ns.spawn(cmd).unwrap_or_else(|e| fail("kamailio", e));
    let start = Instant::now();
    loop {
        if all_ports(&ns, true) {
            break;
        }
        if !proc.is_running() || start.elapsed() > Duration::from_secs(10) {
            fail(
                "kamailio did not start",
                fs::read_to_string(dir.join("kamailio.log")).unwrap_or_default(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let it fork all its workers: until its process count holds still for half a second.
    let (mut n, mut since) = (0, Instant::now());
    while since.elapsed() < Duration::from_millis(500) {
        let now = tree(proc.pid()).len();
        if now != n {
            (n, since) = (now, Instant::now());
        }
        if start.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !proc.is_running() || n < 2 {
        fail(
            "kamailio did not start its workers",
            fs::read_to_string(dir.join("kamailio.log")).unwrap_or_default(),
        );
    }
    proc
}

/// The figures of `runs`, rounded, comma-separated.
fn runs_text(runs: &[f64]) -> String {
    runs.iter()
        .map(|b| format!("{b:.0}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn main() {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let memory_only = std::env::args().skip(1).any(|a| a == "--memory");
    let o = if quick {
        Opts {
            quick,
            trial_secs: 1.5,
            trials: 1,
            bisect: 1,
            cpu_secs: 2.0,
            reps: 1,
            dialogs: 2000,
            mem_reps: 1,
        }
    } else {
        Opts {
            quick,
            trial_secs: 3.0,
            trials: 3,
            bisect: 3,
            cpu_secs: 5.0,
            reps: 3,
            dialogs: 10_000,
            mem_reps: 3,
        }
    };
    if !Path::new(KAMAILIO).is_file() {
        fail("kamailio", "not installed (scripts/setup installs it)");
    }
    let callgated = hil_tests::bin("callgated");
    if !callgated.is_file() {
        fail("callgated", format!("{} missing", callgated.display()));
    }
    let began = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("bench-sip-")
        .tempdir()
        .unwrap_or_else(|e| fail("tempdir", e));
    // uac.xml with RTD 1 started explicitly at the INVITE and stopped at its 200.
    let scenario: PathBuf = tmp.path().join("uac_bench.xml");
    let xml = UAC_XML
        .replacen(
            "<send retrans=\"500\" start_txn=\"invite\">",
            "<send retrans=\"500\" start_txn=\"invite\" start_rtd=\"1\">",
            1,
        )
        .replacen("rtd=\"true\"", "rtd=\"1\"", 1);
    if !xml.contains("start_rtd=\"1\"") || !xml.contains(" rtd=\"1\"") {
        fail("scenario", "uac.xml changed: cannot place the RTD markers");
    }
    fs::write(&scenario, &xml).unwrap_or_else(|e| fail("scenario", e));
    // Both sides with a media port per call (`[auto_media_port]` steps through 10,000
    // ports from sipp's media port: 2,500 calls before a port comes round again).
    let (media_uac, media_uas) = (
        tmp.path().join("uac_media.xml"),
        tmp.path().join("uas_media.xml"),
    );
    for (path, text) in [(&media_uac, xml.as_str()), (&media_uas, UAS_XML)] {
        if !text.contains("[media_port]") {
            fail(
                "scenario",
                "uac.xml/uas.xml changed: no [media_port] to vary",
            );
        }
        fs::write(path, text.replace("[media_port]", "[auto_media_port]"))
            .unwrap_or_else(|e| fail("scenario", e));
    }
    eprintln!(
        "bench sip{}: uac.xml/uas.xml over UDP, carrier -> A -> pbx, no hold time; pass = \
         < {}% failed calls; {} s per trial, median of {}; callgated from {}",
        if o.quick { " --quick" } else { "" },
        FAIL_LIMIT * 100.0,
        o.trial_secs,
        o.trials,
        callgated.display()
    );
    let hosts = [Host::Carrier, Host::A, Host::Pbx];

    // 1. The ceiling: sipp to sipp through A forwarding, no proxy, no ruleset.
    // (The lab stays, idle, for the latency baseline at the common rate.)
    let d_lab = Lab::start(&hosts).unwrap_or_else(|e| fail("lab", e));
    let direct = Target {
        name: "direct",
        lab: &d_lab,
        remote: addr::PBX_V4,
        proxy: Proxy::None,
        scenario: &scenario,
        tls: false,
    };
    // (`--memory` measures memory only.)
    let ceiling = if memory_only { 0 } else { search(&direct, &o) };

    // 2. callgated: memory on fresh daemons (`mem_reps` of them, the median counts), then
    // the rate search on another fresh one.
    let cg_lab = Lab::start(&hosts).unwrap_or_else(|e| fail("lab", e));
    // The lab PKI of the TLS round; the config carries its TLS route from the start (the
    // PBXs' certificates pinned to the lab's PBX CA).
    let pki = SipPki::new().unwrap_or_else(|e| fail("pki", e));
    let pbx_ca = pki.pbx.cert_pem().unwrap_or_else(|e| fail("pki", e));
    let config = tls_route_config(&pbx_ca, &[])
        .replace("max_cps = 200", "max_cps = 1000000")
        .replace("max_calls = 2000", "max_calls = 1000000");
    if !config.contains("max_cps = 1000000") || !config.contains("max_calls = 1000000") {
        fail("config", "lab.toml changed: cannot raise max_cps/max_calls");
    }
    // A fresh daemon in `cg_lab` and the target it is.
    let fresh_callgate = || {
        let appliance =
            Appliance::start(&cg_lab, Host::A, &config).unwrap_or_else(|e| fail("appliance", e));
        let pid = daemon_pid(&appliance);
        let target = Target {
            name: "callgate",
            lab: &cg_lab,
            remote: addr::A_WAN_V4,
            proxy: Proxy::Callgate(pid),
            scenario: &scenario,
            tls: false,
        };
        (appliance, pid, target)
    };
    let mut mem_runs = Vec::new();
    for _ in 0..o.mem_reps {
        let (appliance, pid, t) = fresh_callgate();
        mem_runs.push(memory(&t, &appliance, pid, &o, "uas.xml").rss);
    }
    let bytes_per_dialog = median(mem_runs.clone());
    if memory_only {
        // `--memory`: only the VmRSS figure (no rate search, no Kamailio, no TLS round).
        println!(
            "BENCH sip-memory bytes_per_dialog={bytes_per_dialog:.0} bytes_per_dialog_runs={} \
             dialogs={}",
            runs_text(&mem_runs),
            o.dialogs
        );
        return;
    }
    let (cg_appliance, cg_pid, cg) = fresh_callgate(); // alive until the TLS round is done
    let threads = fs::read_dir(format!("/proc/{cg_pid}/task")).map_or(0, |d| d.count());
    eprintln!("callgate: daemon pid {cg_pid}, {threads} threads");
    let cps = search(&cg, &o);

    // 3. Kamailio, in its own lab (same addresses, the appliance's ruleset).
    let k_lab = Lab::start(&hosts).unwrap_or_else(|e| fail("lab", e));
    let k_dir = tempfile::Builder::new()
        .prefix("bench-sip-kamailio-")
        .tempdir()
        .unwrap_or_else(|e| fail("tempdir", e));
    // The same firewall as the appliance enforces (rules, conntrack), so both proxies pay
    // the same kernel path per packet.
    apply_ruleset(&k_lab, &config, k_dir.path());
    // Twice: one worker per listening socket (the leanest on 2 cores) and as many as
    // callgated has threads (the setup). Each Kamailio figure is the better one.
    let mut k_children = vec![1u32];
    if threads > 1 {
        k_children.push(threads as u32);
    }
    let k_target = |pid: u32| Target {
        name: "kamailio",
        lab: &k_lab,
        remote: addr::A_WAN_V4,
        proxy: Proxy::Kamailio(pid),
        scenario: &scenario,
        tls: false,
    };
    let mut k_runs: Vec<KRun> = Vec::new();
    for &children in &k_children {
        let kam = start_kamailio(&k_lab, k_dir.path(), children, None);
        let procs = tree(kam.pid()).len();
        eprintln!(
            "kamailio: main pid {}, {procs} processes (children={children} per listening socket)",
            kam.pid()
        );
        let k = k_target(kam.pid());
        let cps = search(&k, &o);
        k_runs.push(KRun {
            children,
            procs,
            cps,
            us: vec![],
            sys: vec![],
            p99: vec![],
        });
        let _ = kam.terminate(Duration::from_secs(5));
    }
    let k_cps = k_runs.iter().map(|r| r.cps).max().unwrap_or(0);

    // 4. CPU per call and setup latency at one common rate, alternating callgated and each
    // Kamailio (started again), with a direct run in each round.
    let cpu_rate = round_rate(f64::from(cps.min(k_cps).max(50)) * 0.8);
    let calls = (f64::from(cpu_rate) * o.cpu_secs).round() as u64;
    eprintln!(
        "cpu/latency at {cpu_rate} cps, {calls} calls per run, {} runs each",
        o.reps
    );
    let (mut cg_us, mut cg_p99, mut d_p99, mut ratio) = (vec![], vec![], vec![], vec![]);
    let mut cg_sys = vec![];
    for run in &mut k_runs {
        let kam = start_kamailio(&k_lab, k_dir.path(), run.children, None);
        let k = k_target(kam.pid());
        for rep in 0..o.reps {
            let order = if rep % 2 == 0 {
                [&cg, &k, &direct]
            } else {
                [&k, &cg, &direct]
            };
            let (mut c, mut kk) = (f64::NAN, f64::NAN);
            for t in order {
                let tr = trial(t, cpu_rate, calls, true);
                if !tr.pass() {
                    eprintln!("  WARNING: {} failed at the common rate", t.name);
                }
                let us = tr.proxy_cpu.unwrap_or(f64::NAN) * 1e6 / tr.ok.max(1) as f64;
                let sys = tr.proxy_sys.unwrap_or(f64::NAN) * 1e6 / tr.ok.max(1) as f64;
                let p99 = tr.p99_ms.unwrap_or(f64::NAN);
                match t.proxy {
                    Proxy::Callgate(_) => {
                        c = us;
                        cg_us.push(us);
                        cg_sys.push(sys);
                        cg_p99.push(p99);
                    }
                    Proxy::Kamailio(_) => {
                        kk = us;
                        run.us.push(us);
                        run.sys.push(sys);
                        run.p99.push(p99);
                    }
                    Proxy::None => d_p99.push(p99),
                }
            }
            ratio.push(c / kk);
        }
        let _ = kam.terminate(Duration::from_secs(5));
    }
    // Kamailio's CPU figures come from its cheaper configuration.
    let best = k_runs
        .iter()
        .min_by(|a, b| median(a.us.clone()).total_cmp(&median(b.us.clone())))
        .unwrap_or_else(|| fail("kamailio", "no run"));
    let (k_cpu_us, k_sys_us, k_p99) = (
        median(best.us.clone()),
        median(best.sys.clone()),
        median(best.p99.clone()),
    );
    let (k_best_children, k_procs) = (best.children, best.procs);
    let k_tried: Vec<String> = k_runs
        .iter()
        .map(|r| {
            format!(
                "children={} cps={} cpu_us={:.1}",
                r.children,
                r.cps,
                median(r.us.clone())
            )
        })
        .collect();
    eprintln!("kamailio runs: {}", k_tried.join("; "));

    // 5. SIP over TLS on both sides, at one common rate, persistent connections: stunnel
    // carries sipp's TCP into TLS at the carrier (one connection per sipp run) and out of
    // TLS at the PBX; each proxy keeps one TLS connection to the PBX. callgated is the
    // daemon of the search, enrolled through its CLI; Kamailio runs its cheaper
    // configuration with Debian's TLS module (OpenSSL), its certificate from the same lab CA.
    let (tls_rate, tls_calls) = {
        let r = round_rate(f64::from(cpu_rate.min(TLS_RATE_CAP)));
        (r, (f64::from(r) * o.cpu_secs).round() as u64)
    };
    eprintln!(
        "tls: {tls_rate} cps, {tls_calls} calls per run, {} runs each",
        o.reps
    );
    enrol(&cg_appliance, &pki).unwrap_or_else(|e| fail("enrol", e));
    let pbx_id = pki
        .pbx
        .peer_cert("pbx1", "IP:198.51.100.10")
        .unwrap_or_else(|e| fail("pki", e));
    let pbx_tls = |lab: &Lab| {
        Stunnel::pbx(&lab.ns(Host::Pbx), &pki, addr::PBX_V4, &pbx_id)
            .unwrap_or_else(|e| fail("stunnel (pbx)", e))
    };
    let carrier_tls = |lab: &Lab| {
        Stunnel::client(&lab.ns(Host::Carrier), &pki, None)
            .unwrap_or_else(|e| fail("stunnel (carrier)", e))
    };
    let _cg_tunnels = (carrier_tls(&cg_lab), pbx_tls(&cg_lab));
    let _k_tunnels = (carrier_tls(&k_lab), pbx_tls(&k_lab));
    let k_id = pki
        .lab
        .peer_cert("kamailio", "IP:203.0.113.1, IP:198.51.100.1")
        .unwrap_or_else(|e| fail("pki", e));
    let tls_cfg = k_dir.path().join("tls.cfg");
    fs::write(
        &tls_cfg,
        format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\nprivate_key = {key}\ncertificate = {cert}\n\n\
             [client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\nprivate_key = {key}\ncertificate = {cert}\nca_list = {ca}\n",
            key = k_id.key.display(),
            cert = k_id.cert.display(),
            ca = pki.pbx.cert().display(),
        ),
    )
    .unwrap_or_else(|e| fail("tls.cfg", e));
    let kam = start_kamailio(&k_lab, k_dir.path(), best.children, Some(&tls_cfg));
    let cg_tls = Target {
        name: "callgate-tls",
        lab: &cg_lab,
        remote: addr::A_WAN_V4,
        proxy: Proxy::Callgate(cg_pid),
        scenario: &scenario,
        tls: true,
    };
    let k_tls = Target {
        name: "kamailio-tls",
        tls: true,
        ..k_target(kam.pid())
    };
    let (mut cg_tls_us, mut k_tls_us) = (vec![], vec![]);
    for rep in 0..o.reps {
        let order = if rep % 2 == 0 {
            [&cg_tls, &k_tls]
        } else {
            [&k_tls, &cg_tls]
        };
        for t in order {
            let tr = trial(t, tls_rate, tls_calls, false);
            if !tr.pass() {
                eprintln!("  WARNING: {} failed at the TLS rate", t.name);
            }
            let us = tr.proxy_cpu.unwrap_or(f64::NAN) * 1e6 / tr.ok.max(1) as f64;
            match t.proxy {
                Proxy::Callgate(_) => cg_tls_us.push(us),
                _ => k_tls_us.push(us),
            }
        }
    }
    let _ = kam.terminate(Duration::from_secs(5));
    drop(cg_appliance);
    // Last (the many pinholes it opens outlive their daemon in this lab, and must not
    // weigh on the rounds above), once more with a media port of its own for each call on
    // both sides (sipp's `[auto_media_port]`), so that held dialogs hold pinholes and
    // conntrack entries of their own: the kernel's share per dialog, and the daemon's with
    // them.
    let own_media = {
        let (appliance, pid, mut t) = fresh_callgate();
        t.scenario = &media_uac;
        memory(&t, &appliance, pid, &o, &media_uas.to_string_lossy())
    };
    eprintln!(
        "callgate memory with per-call media ports: {:.0} B of VmRSS and {:.0} B of kernel \
         slabs per dialog",
        own_media.rss, own_media.kernel
    );
    eprintln!(
        "callgate memory: bytes per dialog on {} fresh daemons: {:?}, median {bytes_per_dialog:.0}",
        mem_runs.len(),
        mem_runs.iter().map(|b| b.round()).collect::<Vec<_>>()
    );
    let (tls_us, k_tls_us) = (median(cg_tls_us), median(k_tls_us));
    let (cpu_us, sys_us) = (median(cg_us), median(cg_sys));
    // User time: the proxy's own work (the same runs, CPU minus the kernel's part).
    let (user_us, k_user_us) = (cpu_us - sys_us, k_cpu_us - k_sys_us);
    let (p99, d_p99) = (median(cg_p99), median(d_p99));
    eprintln!(
        "bench sip: done in {:.0}s (cpu ratio per pair {:?})",
        began.elapsed().as_secs_f64(),
        ratio.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>()
    );
    println!(
        "BENCH sip cps={cps} kamailio_cps={k_cps} cps_x_vs_kamailio={:.2} \
         cpu_us_per_call={cpu_us:.1} kamailio_cpu_us_per_call={k_cpu_us:.1} \
         cpu_x_vs_kamailio={:.2} setup_p99_ms={p99:.2} bytes_per_dialog={bytes_per_dialog:.0} \
         kernel_bytes_per_dialog={:.0} bytes_per_dialog_per_call_media={:.0} \
         sipp_ceiling_cps={ceiling} kamailio_setup_p99_ms={k_p99:.2} \
         bytes_per_dialog_runs={} sipp_setup_p99_ms={d_p99:.2} cpu_rate_cps={cpu_rate} \
         kernel_us_per_call={sys_us:.1} kamailio_kernel_us_per_call={k_sys_us:.1} \
         user_us_per_call={user_us:.1} kamailio_user_us_per_call={k_user_us:.1} \
         user_x_vs_kamailio={:.2} kernel_x_vs_kamailio={:.2} \
         tls_cpu_us_per_call={tls_us:.1} kamailio_tls_cpu_us_per_call={k_tls_us:.1} \
         tls_cpu_x_vs_kamailio={:.2} tls_rate_cps={tls_rate} \
         dialogs={} kamailio_children={k_best_children} kamailio_processes={k_procs} \
         kamailio_children_tried={} callgate_threads={threads} quick={}",
        f64::from(cps) / f64::from(k_cps.max(1)),
        cpu_us / k_cpu_us,
        own_media.kernel,
        own_media.rss,
        runs_text(&mem_runs),
        user_us / k_user_us,
        sys_us / k_sys_us,
        tls_us / k_tls_us,
        o.dialogs,
        k_runs
            .iter()
            .map(|r| r.children.to_string())
            .collect::<Vec<_>>()
            .join(","),
        o.quick,
    );
}
