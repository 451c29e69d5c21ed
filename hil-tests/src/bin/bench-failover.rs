//! `scripts/bench failover`: how long clients lose the pair's WAN virtual address when the
//! active appliance fails, callgate's pair against keepalived (VRRPv3) in the same lab, in
//! the same run.
//!
//! ## What is measured
//! - **Outage.** A prober in the carrier namespace sends one UDP datagram every 10 ms to
//!   203.0.113.5:5060 (the WAN VIP) from 203.0.113.10:5062 and reads the answers on a
//!   second thread. For callgate the datagram is a SIP `OPTIONS` with its own Call-ID and
//!   branch, which callgated answers `200` (statelessly) from whichever appliance holds the
//!   VIP; for keepalived a tiny responder bound to the VIP (`IP_FREEBIND`) in A and in B
//!   echoes it back. Same prober, same cadence, same computation: the outage of one
//!   failover is the longest gap between two consecutive answers the carrier received
//!   (arrival times) to the probes sent in the run's window (from 300 ms before the
//!   failure until the pair has settled again, restored link or relaunched daemon
//!   included). With no loss it is 10 ms. Arrival, not send, times: after a SIGKILL the
//!   old active forwards the VIP's packets to the (not yet answering) VIP and its
//!   neighbour queue holds them until the survivor answers ARP; those probes are answered
//!   late, at the takeover, and must not shorten the outage. Answers more than 50 ms
//!   after their probe are counted as late (`L` in the table).
//! - **Failures.** Link down (the active's WAN switch port set down, up again 1 s later)
//!   and SIGKILL (of callgated; of every keepalived process of the master), each at least
//!   20 times per system (5 with `--quick`), always on the *current* active (no
//!   preemption: the failed node comes back as the standby, so the two alternate). Before
//!   each failure the bench sleeps a random 0-100 ms (4 heartbeat intervals of callgate's,
//!   2 advert intervals of keepalived's), so the failure lands at a random phase.
//! - **Dual VIP.** Each appliance namespace has a netlink socket subscribed to its address
//!   events (`RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR`): every VIP added or removed is
//!   timestamped as the kernel reports it. `dual_vip_ms` is the longest time, over all
//!   callgate runs, during which some VIP (any of the four) was held by both A and B in
//!   one run's window; `keepalived_dual_vip_ms` the same for keepalived's one VIP.
//! - **Calls.** In every callgate SIGKILL run sipp places 60 calls (`uac.xml`, held 6 s) to
//!   the VIP through the pair to a sipp UAS on the PBX; the kill comes once the caller has
//!   the 200 of all 60 (its `FINAL 200` log lines), so every call is established and none
//!   has ended. `calls_dropped` counts the calls, over all those runs, that did not end
//!   successfully (sipp's successful count against the calls placed). Not from the
//!   daemon's `show calls`: a relaunched daemon lists the calls it had at its SIGKILL as in
//!   progress long after they ended on its peer (`stale_calls_max` is the most calls A and
//!   B listed together before a run placed any). keepalived carries no SIP: no calls
//!   there.
//! - **False takeovers.** A soak of the callgate pair, 60 s (10 s with `--quick`), with one
//!   busy-looping process per core on the machine and no failure: the role changes
//!   (`transitions` of `show pair`) on A plus those on B, after minus before. The prober
//!   keeps running: `soak_max_gap_ms` is its longest gap during the soak (the prober's
//!   threads compete with the hogs too, so this includes its own scheduling delays).
//!
//! `BENCH_FAILOVER_TRACE=1` prints each run's VIP events and unanswered or late probes
//! (ms from the failure), traces sipp's messages, and keeps the logs of a run that
//! dropped calls in `$TMPDIR/bench-failover-evidence-PID/`.
//!
//! ## keepalived
//! Debian's `/usr/sbin/keepalived`, VRRP only (`-P`), `--dont-fork --log-console
//! --no-syslog`, config and pid files in a temporary directory, run inside namespaces A and
//! B only (`ip netns exec`), never as a service. One instance on `wan0`: VRRPv3,
//! `advert_int 0.05`, priorities 200 (A) and 100 (B) like the pair config, both `state
//! BACKUP` with `nopreempt` (callgate does not preempt either), VIP 203.0.113.5/24.
//! It runs after the callgate phase in the same lab, once the appliances are stopped and
//! their nftables ruleset is flushed from A and B. A SIGKILLed keepalived leaves its VIP
//! on its node (the behaviour this measures); the bench restarts it 2 s after the kill (the
//! restarted one removes the leftover VIP as it starts as backup), so keepalived's
//! dual-VIP figure for SIGKILL is bounded by that restart, not by keepalived.
//!
//! ## Output
//! A table of every run on stderr (as the runs go, and a summary), then on stdout
//! `BENCH failover outage_p50_ms=… outage_p99_ms=… keepalived_p50_ms=… keepalived_p99_ms=…
//! p99_x_vs_keepalived=… dual_vip_ms=… false_takeovers=… calls_dropped=…` and extra keys
//! (per failure kind: `linkdown_p50_ms`, `keepalived_sigkill_p99_ms`, …). Percentiles are
//! nearest-rank over all runs of a system (link down and SIGKILL together).
//! `p99_x_vs_keepalived` = outage_p99 / keepalived_p99 (below 1: callgate is better). A
//! full run takes about 6 minutes on 2 cores, `--quick` about 90 s.
//!
//! ## Limits
//! - SIGKILL is not the same failure for the two. callgated is the SIP service and its
//!   HA in one process: killing it takes the service down until the peer takes over.
//!   keepalived only moves the address: the responder on the killed node keeps answering
//!   (the VIP stays there and the carrier's neighbour entry points there until the new
//!   master's gratuitous ARP), so keepalived's SIGKILL outage is near zero while both
//!   nodes hold the VIP. Compare link down with link down (the per-kind keys).
//! - Timestamps are taken by the bench's threads (probes, answers, address events): on a
//!   busy machine they carry its scheduling delays, a few ms at most outside the soak.

// Not async: the prober's and the watchers' shared logs are plain Mutexes.
#![allow(clippy::disallowed_types)]

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hil_tests::addr::{self, WAN_VIP_V4};
use hil_tests::bench::{fail, ms};
use hil_tests::calls::{CALLER, CALLER_NAME, UDP_NUMBER};
use hil_tests::pair::{
    new_pair_lab, show_pair, start_pair_shipped as start_pair, vips_held, wait_until, VIPS,
};
use hil_tests::sipp::{Sipp, SippHandle, Transport};
use hil_tests::{Appliance, Host, Lab, Ns, Proc, Segment};

const KEEPALIVED: &str = "/usr/sbin/keepalived";
/// The prober's source port (sipp's UAC has 5060 on the same address).
const PROBE_PORT: u16 = 5062;
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// The random sleep before a failure is uniform in [0, PHASE_SPAN).
const PHASE_SPAN_MS: u64 = 100;
/// Probes before the failure that belong to a run's window.
const LEAD: Duration = Duration::from_millis(300);
/// How long a pulled link stays down.
const LINK_DOWN_FOR: Duration = Duration::from_secs(1);
/// When a SIGKILLed keepalived is started again (after the kill).
const KEEPALIVED_RESTART_AFTER: Duration = Duration::from_secs(2);
/// Calls held through each callgate SIGKILL, their setup rate and hold time.
const CALLS: u64 = 60;
const CALL_RATE: f64 = 100.0;
const CALL_HOLD: Duration = Duration::from_secs(6);
/// Longest a pair may take to settle between runs.
const SETTLE: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Nearest-rank percentile (`p` in 0..=100) of `v`; NaN when empty.
fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// xorshift64*: the failure phases only need to be spread, not unpredictable.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng((t ^ (u64::from(std::process::id()) << 32)) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

// ----- the prober ------------------------------------------------------------------------

/// One probe: when it was sent, and whether (when) it was answered.
type ProbeLog = Mutex<Vec<(Instant, Option<Instant>)>>;

/// A datagram every [`PROBE_EVERY`] from the carrier to the WAN VIP, answers read on a
/// second thread. Runs until dropped.
struct Prober {
    log: Arc<ProbeLog>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// What the probes saw in one window.
#[derive(Debug, Clone, Copy)]
struct Gap {
    /// The longest time the carrier received no answer: between the arrivals of two
    /// consecutive answers (of the probes sent in the window).
    longest: Duration,
    sent: usize,
    answered: usize,
    /// Answers that came more than [`LATE`] after their probe was sent (held in a
    /// neighbour queue during the outage and delivered after the takeover, say).
    late: usize,
    /// An answered probe came after the last unanswered one.
    recovered: bool,
}

/// An answer later than this is counted as late (the lab's round trip is well below 1 ms).
const LATE: Duration = Duration::from_millis(50);

/// The probe with sequence number `n`: a SIP OPTIONS from the carrier to the VIP.
fn probe_message(n: usize) -> String {
    let (src, vip) = (addr::CARRIER_V4, WAN_VIP_V4);
    format!(
        "OPTIONS sip:{vip}:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {src}:{PROBE_PORT};branch=z9hG4bK-bp{n}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{src}>;tag=bp{n}\r\n\
         To: <sip:{vip}>\r\n\
         Call-ID: fbprobe-{n}@{src}\r\n\
         CSeq: 1 OPTIONS\r\n\
         User-Agent: callgate-bench-failover\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The sequence number in an answer (callgated's response or the responder's echo).
fn probe_number(reply: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(reply).ok()?;
    let rest = &text[text.find("fbprobe-")? + "fbprobe-".len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

impl Prober {
    fn start(lab: &Lab) -> Prober {
        let sock = lab
            .ns(Host::Carrier)
            .run_in(|| UdpSocket::bind(SocketAddrV4::new(addr::CARRIER_V4, PROBE_PORT)))
            .unwrap_or_else(|e| fail("prober socket", e));
        let rx = sock
            .try_clone()
            .unwrap_or_else(|e| fail("prober socket", e));
        rx.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap_or_else(|e| fail("prober socket", e));
        let log: Arc<ProbeLog> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let target = SocketAddr::V4(SocketAddrV4::new(WAN_VIP_V4, 5060));
        let sender = {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            thread::spawn(move || {
                let start = Instant::now();
                let mut slot: u32 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let due = start + PROBE_EVERY * slot;
                    let now = Instant::now();
                    if due > now {
                        thread::sleep(due - now);
                    }
                    // Behind schedule (the machine was busy): skip to the current slot
                    // rather than send a burst.
                    let behind = (Instant::now() - start).as_nanos() / PROBE_EVERY.as_nanos();
                    slot = slot.max(u32::try_from(behind).unwrap_or(u32::MAX));
                    let n = {
                        let mut l = lock(&log);
                        l.push((Instant::now(), None));
                        l.len() - 1
                    };
                    // A send error (no neighbour yet) is an unanswered probe.
                    let _ = sock.send_to(probe_message(n).as_bytes(), target);
                    slot += 1;
                }
            })
        };
        let receiver = {
            let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, _)) = rx.recv_from(&mut buf) else {
                        continue;
                    };
                    let at = Instant::now();
                    if let Some(n) = probe_number(&buf[..len]) {
                        if let Some(p) = lock(&log).get_mut(n) {
                            p.1.get_or_insert(at);
                        }
                    }
                }
            })
        };
        Prober {
            log,
            stop,
            threads: vec![sender, receiver],
        }
    }

    /// The probes sent in `[from, to]`. Gaps are measured on the answers' arrival times:
    /// a probe sent during the outage and answered only after the takeover does not
    /// shorten it.
    fn gap(&self, from: Instant, to: Instant) -> Gap {
        let log = lock(&self.log);
        let first = log.partition_point(|p| p.0 < from);
        let window: Vec<(Instant, Option<Instant>)> = log[first..]
            .iter()
            .take_while(|p| p.0 <= to)
            .copied()
            .collect();
        drop(log);
        let mut arrivals: Vec<Instant> = window.iter().filter_map(|p| p.1).collect();
        arrivals.sort();
        let mut g = Gap {
            longest: arrivals
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or(Duration::ZERO),
            sent: window.len(),
            answered: arrivals.len(),
            late: window
                .iter()
                .filter(|(s, a)| a.is_some_and(|a| a - *s > LATE))
                .count(),
            recovered: true,
        };
        let last_answered = window.iter().rev().find(|p| p.1.is_some()).map(|p| p.0);
        let last_sent = window.last().map(|p| p.0);
        match (last_answered, last_sent, arrivals.last()) {
            (Some(a), Some(s), Some(&arrived)) if s > a + Duration::from_millis(100) => {
                g.recovered = false;
                g.longest = g.longest.max(s.saturating_duration_since(arrived));
            }
            (None, _, _) => {
                g.recovered = false;
                g.longest = to.saturating_duration_since(from);
            }
            _ => {}
        }
        g
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ----- the VIP watch ---------------------------------------------------------------------

/// A VIP appearing on (`held`) or leaving a node, as its kernel reported it.
#[derive(Debug, Clone, Copy)]
struct VipEvent {
    at: Instant,
    host: Host,
    vip: usize,
    held: bool,
}

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

/// A netlink route socket in the calling thread's namespace, subscribed to address events.
fn address_events_socket() -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag, SockProtocol,
        SockType,
    };
    use nix::sys::time::{TimeVal, TimeValLike};
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(
        fd.as_raw_fd(),
        &NetlinkAddr::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR),
    )?;
    setsockopt(&fd, sockopt::RcvBuf, &(1 << 20))?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::milliseconds(100))?;
    Ok(fd)
}

/// The (address, added) pairs of a buffer of netlink messages.
fn address_messages(buf: &[u8]) -> Vec<(IpAddr, bool)> {
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    let mut out = Vec::new();
    let mut off = 0;
    // nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32.
    while let (Some(len), Some(kind)) = (u32_at(buf, off), u16_at(buf, off + 4)) {
        let len = len as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let msg = &buf[off..off + len];
        if kind == RTM_NEWADDR || kind == RTM_DELADDR {
            // ifaddrmsg: family u8, prefixlen u8, flags u8, scope u8, index u32; then rtattrs.
            let family = msg.get(16).copied().unwrap_or(0);
            let mut a = 24;
            let mut found: Option<IpAddr> = None;
            while let (Some(alen), Some(atype)) = (u16_at(msg, a), u16_at(msg, a + 2)) {
                let alen = alen as usize;
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                let data = &msg[a + 4..a + alen];
                let ip = match (family as i32, data.len()) {
                    (libc::AF_INET, 4) => Some(IpAddr::from([data[0], data[1], data[2], data[3]])),
                    (libc::AF_INET6, 16) => {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(data);
                        Some(IpAddr::from(o))
                    }
                    _ => None,
                };
                // IFA_LOCAL is the address itself where both exist (point-to-point).
                if atype == IFA_LOCAL || (atype == IFA_ADDRESS && found.is_none()) {
                    found = ip.or(found);
                }
                a += (alen + 3) & !3;
            }
            if let Some(ip) = found {
                out.push((ip, kind == RTM_NEWADDR));
            }
        }
        off += (len + 3) & !3;
    }
    out
}

/// Every VIP change on A and B from the kernel's address events, plus the state when the
/// watch started.
struct VipWatch {
    events: Arc<Mutex<Vec<VipEvent>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl VipWatch {
    fn start(lab: &Lab, vips: &'static [IpAddr]) -> VipWatch {
        let events: Arc<Mutex<Vec<VipEvent>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for host in [Host::A, Host::B] {
            let fd = lab
                .ns(host)
                .run_in(address_events_socket)
                .unwrap_or_else(|e| fail("netlink socket", e));
            let (events, stop) = (Arc::clone(&events), Arc::clone(&stop));
            threads.push(thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while !stop.load(Ordering::Relaxed) {
                    let n = match nix::sys::socket::recv(
                        fd.as_raw_fd(),
                        &mut buf,
                        nix::sys::socket::MsgFlags::empty(),
                    ) {
                        Ok(n) => n,
                        Err(nix::errno::Errno::ENOBUFS) => {
                            eprintln!("bench: WARNING: address events of {host:?} lost");
                            continue;
                        }
                        Err(_) => continue,
                    };
                    let at = Instant::now();
                    for (ip, held) in address_messages(&buf[..n]) {
                        if let Some(vip) = vips.iter().position(|v| *v == ip) {
                            lock(&events).push(VipEvent {
                                at,
                                host,
                                vip,
                                held,
                            });
                        }
                    }
                }
            }));
        }
        // Subscribed: now the state at the start (events from here on are caught).
        let at = Instant::now();
        for host in [Host::A, Host::B] {
            let held = vips_held(lab, host);
            for (vip, v) in vips.iter().enumerate() {
                lock(&events).push(VipEvent {
                    at,
                    host,
                    vip,
                    held: held.contains(v),
                });
            }
        }
        VipWatch {
            events,
            stop,
            threads,
        }
    }

    fn sorted(&self) -> Vec<VipEvent> {
        let mut v = lock(&self.events).clone();
        v.sort_by_key(|e| e.at);
        v
    }

    /// How long, within `[from, to]`, some VIP was held by both A and B.
    fn dual(&self, from: Instant, to: Instant) -> Duration {
        let mut held: std::collections::HashMap<(Host, usize), bool> = Default::default();
        let both = |h: &std::collections::HashMap<(Host, usize), bool>| {
            h.iter().any(|(&(host, vip), &on)| {
                on && host == Host::A && h.get(&(Host::B, vip)) == Some(&true)
            })
        };
        let mut total = Duration::ZERO;
        let mut cur = from;
        for e in self.sorted() {
            if e.at > to {
                break;
            }
            if e.at > from {
                if both(&held) {
                    total += e.at - cur;
                }
                cur = e.at;
            }
            held.insert((e.host, e.vip), e.held);
        }
        if both(&held) {
            total += to.saturating_duration_since(cur);
        }
        total
    }

    /// When `host` first gained a VIP after `t`.
    fn first_gain(&self, host: Host, t: Instant) -> Option<Instant> {
        self.sorted()
            .into_iter()
            .find(|e| e.at >= t && e.host == host && e.held)
            .map(|e| e.at)
    }
}

impl Drop for VipWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ----- CPU hogs --------------------------------------------------------------------------

/// `--hog`: spins until killed, or until its parent (the bench) is gone.
fn hog() -> ! {
    let parent = nix::unistd::getppid();
    let mut x: u64 = 1;
    loop {
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i);
        }
        std::hint::black_box(x);
        if nix::unistd::getppid() != parent {
            std::process::exit(0);
        }
    }
}

/// One busy-looping process per core, on the machine (outside the lab); killed on drop.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(n: usize) -> Hogs {
        let exe = std::env::current_exe().unwrap_or_else(|e| fail("current_exe", e));
        Hogs(
            (0..n)
                .map(|_| {
                    Command::new(&exe)
                        .arg("--hog")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .spawn()
                        .unwrap_or_else(|e| fail("hog", e))
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ----- keepalived ------------------------------------------------------------------------

/// keepalived's VRRP instance on one appliance namespace: config, pid files and log in
/// `dir`; terminated (SIGTERM: it gives the VIP up) on drop.
struct Keepalived<'lab> {
    ns: Ns<'lab>,
    dir: PathBuf,
    name: &'static str,
    proc: Option<Proc>,
}

impl<'lab> Keepalived<'lab> {
    fn new(lab: &'lab Lab, host: Host, dir: &Path) -> Keepalived<'lab> {
        let (name, priority) = match host {
            Host::A => ("a", 200),
            _ => ("b", 100),
        };
        let conf = format!(
            "# bench-failover: keepalived as the pair's anchor (hil-tests/src/bin/bench-failover.rs)\n\
             global_defs {{\n    router_id lab-{name}\n    vrrp_version 3\n}}\n\
             vrrp_instance VI_WAN {{\n    state BACKUP\n    nopreempt\n    interface wan0\n    \
             virtual_router_id 51\n    priority {priority}\n    advert_int 0.05\n    \
             virtual_ipaddress {{\n        {WAN_VIP_V4}/24 dev wan0\n    }}\n}}\n"
        );
        let k = Keepalived {
            ns: lab.ns(host),
            dir: dir.to_path_buf(),
            name,
            proc: None,
        };
        fs::write(k.file("conf"), conf).unwrap_or_else(|e| fail("keepalived.conf", e));
        k
    }

    fn file(&self, what: &str) -> PathBuf {
        self.dir.join(format!("keepalived-{}.{what}", self.name))
    }

    fn start(&mut self) {
        use std::io::Write as _;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file("log"))
            .unwrap_or_else(|e| fail("keepalived log", e));
        let _ = writeln!(log, "=== bench: start");
        let mut cmd = self.ns.command(KEEPALIVED);
        cmd.args(["--dont-fork", "--log-console", "--no-syslog", "--vrrp"])
            .arg("--use-file")
            .arg(self.file("conf"))
            .arg("--pid")
            .arg(self.file("pid"))
            .arg("--vrrp_pid")
            .arg(self.file("vrrp.pid"))
            .arg("--checkers_pid")
            .arg(self.file("checkers.pid"))
            .arg("--bfd_pid")
            .arg(self.file("bfd.pid"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .unwrap_or_else(|e| fail("keepalived log", e)),
            )
            .stderr(log);
        self.proc = Some(self.ns.spawn(cmd).unwrap_or_else(|e| fail("keepalived", e)));
    }

    /// The VRRP child's pid, from its pid file.
    fn vrrp_pid(&self) -> Option<i32> {
        fs::read_to_string(self.file("vrrp.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL to every keepalived process of this node: the parent's process group and,
    /// should it have left that group, the VRRP child by its pid.
    fn kill9(&mut self) {
        let child = self.vrrp_pid();
        if let Some(p) = self.proc.take() {
            let _ = p.kill();
        }
        if let Some(pid) = child {
            kill_keepalived(pid);
        }
        for f in ["pid", "vrrp.pid"] {
            let _ = fs::remove_file(self.file(f));
        }
    }

    /// The state of the last "Entering … STATE" line since the last start.
    fn state(&self) -> String {
        let log = fs::read_to_string(self.file("log")).unwrap_or_default();
        let since = log.rfind("=== bench: start").unwrap_or(0);
        log[since..]
            .lines()
            .rev()
            .find_map(|l| {
                let rest = &l[l.find("Entering ")? + "Entering ".len()..];
                Some(rest.split_whitespace().next()?.to_owned())
            })
            .unwrap_or_default()
    }

    fn running(&self) -> bool {
        self.proc.as_ref().is_some_and(Proc::is_running)
    }
}

impl Drop for Keepalived<'_> {
    fn drop(&mut self) {
        let child = self.vrrp_pid();
        if let Some(p) = self.proc.take() {
            let _ = p.terminate(Duration::from_secs(3));
        }
        // Its VRRP child, should it have left the group and outlived the parent.
        if let Some(pid) = child {
            kill_keepalived(pid);
        }
    }
}

/// SIGKILL to `pid` if it is (still) a keepalived process: never to a reused pid.
fn kill_keepalived(pid: i32) {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() == "keepalived" {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A UDP echo bound to the VIP (IP_FREEBIND: whether or not the node holds it) in `ns`,
/// answering every datagram, until `stop`.
fn responder(ns: &Ns<'_>, stop: &Arc<AtomicBool>) -> JoinHandle<()> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let sock = ns
        .run_in(|| -> std::io::Result<UdpSocket> {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            setsockopt(&fd, sockopt::IpFreebind, &true)?;
            let at = SockaddrIn::from(SocketAddrV4::new(WAN_VIP_V4, 5060));
            bind(fd.as_raw_fd(), &at)
                .map_err(|e| std::io::Error::other(format!("bind {WAN_VIP_V4}:5060: {e}")))?;
            let sock = UdpSocket::from(fd);
            sock.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(sock)
        })
        .unwrap_or_else(|e| fail("responder", e));
    let stop = Arc::clone(stop);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    })
}

// ----- runs ------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    LinkDown,
    Sigkill,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::LinkDown => "link-down",
            Kind::Sigkill => "sigkill",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Callgate,
    Keepalived,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Callgate => "callgate",
            System::Keepalived => "keepalived",
        }
    }
}

/// One failover.
#[derive(Debug, Clone)]
struct Run {
    system: System,
    kind: Kind,
    n: usize,
    failed: Host,
    phase_ms: u64,
    /// Failure -> the survivor's kernel has a VIP.
    takeover_ms: Option<f64>,
    gap: Gap,
    dual_ms: f64,
    /// Calls in progress at the failure, and of those not ended successfully.
    calls: Option<(u64, u64)>,
    /// Calls A and B listed in progress before the run placed any (callgate SIGKILL).
    stale_calls: u64,
    /// The run, settling included.
    secs: f64,
    note: String,
}

impl Run {
    fn outage_ms(&self) -> f64 {
        ms(self.gap.longest)
    }
}

fn header() -> String {
    format!(
        "{:<10} {:<9} {:>3} {:>4} {:>6} {:>9} {:>9} {:>8} {:>11} {:>13} {:>6}  note",
        "system",
        "failure",
        "#",
        "node",
        "phase",
        "takeover",
        "outage",
        "dual",
        "calls held",
        "probes",
        "secs"
    )
}

fn row(r: &Run) -> String {
    let calls = r
        .calls
        .map_or("-".to_owned(), |(h, d)| format!("{h} ({d} drop)"));
    format!(
        "{:<10} {:<9} {:>3} {:>4} {:>4}ms {:>7}ms {:>7.1}ms {:>6.1}ms {:>11} {:>13} {:>6.1}  {}",
        r.system.name(),
        r.kind.name(),
        r.n,
        if r.failed == Host::A { "A" } else { "B" },
        r.phase_ms,
        r.takeover_ms.map_or("-".to_owned(), |t| format!("{t:.1}")),
        r.outage_ms(),
        r.dual_ms,
        calls,
        if r.gap.late > 0 {
            format!("{}/{} {}L", r.gap.answered, r.gap.sent, r.gap.late)
        } else {
            format!("{}/{}", r.gap.answered, r.gap.sent)
        },
        r.secs,
        if r.gap.recovered {
            r.note.clone()
        } else {
            format!("NOT RECOVERED {}", r.note)
        }
    )
}

/// Everything a run needs of the lab.
struct Bench<'a> {
    lab: &'a Lab,
    prober: &'a Prober,
    watch: &'a VipWatch,
    rng: Rng,
    runs: Vec<Run>,
}

impl Bench<'_> {
    /// Sleeps the lead-in and a random phase; the phase in ms.
    fn phase(&mut self) -> u64 {
        let p = self.rng.below(PHASE_SPAN_MS);
        thread::sleep(LEAD + Duration::from_millis(p));
        p
    }

    /// Closes a run whose failure came at `t0` and that settled now.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        system: System,
        kind: Kind,
        n: usize,
        failed: Host,
        survivor: Host,
        phase_ms: u64,
        t0: Instant,
        calls: Option<(u64, u64)>,
        stale_calls: u64,
        note: String,
    ) {
        let to = Instant::now();
        // Answers to the last probes of the window are in.
        thread::sleep(Duration::from_millis(200));
        let from = t0 - LEAD;
        let run = Run {
            system,
            kind,
            n,
            failed,
            phase_ms,
            takeover_ms: self.watch.first_gain(survivor, t0).map(|t| ms(t - t0)),
            gap: self.prober.gap(from, to),
            dual_ms: ms(self.watch.dual(from, to)),
            calls,
            stale_calls,
            secs: (to - t0).as_secs_f64(),
            note,
        };
        eprintln!("{}", row(&run));
        if tracing() {
            eprintln!("{}", self.trace(from, to, t0));
        }
        self.runs.push(run);
    }
}

impl Bench<'_> {
    /// `BENCH_FAILOVER_TRACE=1`: the VIP events and the unanswered probes of a window,
    /// in ms from the failure.
    fn trace(&self, from: Instant, to: Instant, t0: Instant) -> String {
        let rel = |t: Instant| {
            if t >= t0 {
                ms(t - t0)
            } else {
                -ms(t0 - t)
            }
        };
        let mut out = String::from("    vip events:");
        for e in self.watch.sorted() {
            if e.at >= from && e.at <= to {
                let _ = write!(
                    out,
                    " {:+.1}{:?}{}{}",
                    rel(e.at),
                    e.host,
                    if e.held { "+" } else { "-" },
                    e.vip
                );
            }
        }
        out += "\n    unanswered probes:";
        let log = lock(&self.prober.log);
        let mut late = String::new();
        for &(sent, answer) in log.iter().filter(|p| p.0 >= from && p.0 <= to) {
            match answer {
                None => {
                    let _ = write!(out, " {:+.1}", rel(sent));
                }
                Some(a) if a - sent > LATE => {
                    let _ = write!(late, " {:+.1}->{:+.1}", rel(sent), rel(a));
                }
                Some(_) => {}
            }
        }
        out += "\n    late answers (sent->answered):";
        out += &late;
        out
    }
}

/// `BENCH_FAILOVER_TRACE` is set: print each run's timeline, keep evidence of dropped
/// calls.
fn tracing() -> bool {
    std::env::var_os("BENCH_FAILOVER_TRACE").is_some()
}

/// A directory under the system's temporary directory that outlives the bench, with a copy
/// of the files of `from` (a sipp run directory).
fn evidence(name: &str, from: &Path) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("bench-failover-evidence-{}", std::process::id()))
        .join(name);
    let _ = fs::create_dir_all(&dir);
    for e in fs::read_dir(from).into_iter().flatten().flatten() {
        let _ = fs::copy(e.path(), dir.join(e.file_name()));
    }
    dir
}

// ----- callgate --------------------------------------------------------------------------

fn other(h: Host) -> Host {
    if h == Host::A {
        Host::B
    } else {
        Host::A
    }
}

fn idx(h: Host) -> usize {
    usize::from(h == Host::B)
}

/// The active once the pair is settled: one active holding every VIP, one standby holding
/// none that hears the active and is synced, both at full health.
fn pair_settled(lab: &Lab, apps: &[Appliance<'_>; 2]) -> Option<Host> {
    let s = [show_pair(&apps[0]), show_pair(&apps[1])];
    let active = match (s[0]["role"].as_str(), s[1]["role"].as_str()) {
        (Some("active"), Some("standby")) => Host::A,
        (Some("standby"), Some("active")) => Host::B,
        _ => return None,
    };
    let standby = &s[idx(other(active))];
    let ok = s
        .iter()
        .all(|v| v["peer_alive"] == true && v["health"] == 100)
        && standby["synced"] == true
        && vips_held(lab, active).len() == VIPS.len()
        && vips_held(lab, other(active)).is_empty();
    ok.then_some(active)
}

fn wait_pair_settled(lab: &Lab, apps: &[Appliance<'_>; 2]) -> Host {
    let mut active = None;
    if !wait_until(SETTLE, || {
        active = pair_settled(lab, apps);
        active.is_some()
    }) {
        fail(
            "the pair did not settle",
            format!(
                "A: {}\nB: {}\nA holds {:?}, B holds {:?}\nA log tail:\n{}\nB log tail:\n{}",
                show_pair(&apps[0]),
                show_pair(&apps[1]),
                vips_held(lab, Host::A),
                vips_held(lab, Host::B),
                tail(&apps[0].log(), 30),
                tail(&apps[1].log(), 30)
            ),
        );
    }
    active.unwrap_or(Host::A)
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn transitions(apps: &[Appliance<'_>; 2]) -> u64 {
    apps.iter()
        .map(|a| show_pair(a)["transitions"].as_u64().unwrap_or(0))
        .sum()
}

/// Calls in progress on `a` (`show calls`).
fn calls_in_progress(a: &Appliance<'_>) -> u64 {
    let out = a.cli(&["--json", "show", "calls"]);
    out.json()["calls"].as_array().map_or(0, |c| c.len() as u64)
}

fn callgate_link_down(b: &mut Bench<'_>, apps: &[Appliance<'_>; 2], n: usize) {
    let active = wait_pair_settled(b.lab, apps);
    let survivor = other(active);
    let phase = b.phase();
    let t0 = Instant::now();
    b.lab
        .set_link(active, Segment::Wan, false)
        .unwrap_or_else(|e| fail("link down", e));
    let mut note = String::new();
    if !wait_until(Duration::from_secs(5), || {
        vips_held(b.lab, survivor).len() == VIPS.len() && vips_held(b.lab, active).is_empty()
    }) {
        note += "no takeover within 5 s; ";
    }
    thread::sleep((t0 + LINK_DOWN_FOR).saturating_duration_since(Instant::now()));
    b.lab
        .set_link(active, Segment::Wan, true)
        .unwrap_or_else(|e| fail("link up", e));
    let now_active = wait_pair_settled(b.lab, apps);
    if now_active != survivor {
        note += "the failed node is active again; ";
    }
    b.record(
        System::Callgate,
        Kind::LinkDown,
        n,
        active,
        survivor,
        phase,
        t0,
        None,
        0,
        note,
    );
}

fn callgate_sigkill(b: &mut Bench<'_>, apps: &mut [Appliance<'_>; 2], n: usize) {
    let active = wait_pair_settled(b.lab, apps);
    let survivor = other(active);
    let mut note = String::new();
    // Calls the pair lists before any is placed: none should be in progress.
    let ghosts = [calls_in_progress(&apps[0]), calls_in_progress(&apps[1])];
    if ghosts != [0, 0] {
        note += &format!(
            "listed in progress before the run: A {} B {}; ",
            ghosts[0], ghosts[1]
        );
    }
    let started = Instant::now();
    let uac = Sipp::uac(&b.lab.ns(Host::Carrier), "uac.xml")
        .local(addr::CARRIER_V4, 5060)
        .remote(WAN_VIP_V4, 5060)
        .transport(Transport::Udp)
        .service(UDP_NUMBER)
        .caller(CALLER, CALLER_NAME)
        .calls(CALLS)
        .rate(CALL_RATE)
        .duration(CALL_HOLD)
        .timeout(Duration::from_secs(60))
        .trace_messages(tracing())
        .spawn()
        .unwrap_or_else(|e| fail("sipp uac", e));
    // Held: the caller has the 200 of every call (its `FINAL 200` log lines); none has
    // ended, as the first BYE is due `CALL_HOLD` after the first answer.
    let answered = || {
        let log = fs::read_to_string(uac.dir().join("logs.log")).unwrap_or_default();
        hil_tests::sipp::parse_final_codes(&log)
            .iter()
            .filter(|&&c| c == 200)
            .count() as u64
    };
    let mut held = 0;
    if !wait_until(Duration::from_secs(10), || {
        held = answered();
        held >= CALLS
    }) {
        note += &format!("only {held} calls answered before the kill; ");
    }
    let listed = calls_in_progress(&apps[idx(active)]);
    let phase = b.phase();
    let t0 = Instant::now();
    apps[idx(active)].kill9();
    if t0 - started > CALL_HOLD - Duration::from_secs(1) {
        note += "the kill came late: calls may have ended before it; ";
    }
    if tracing() {
        note += &format!("the active listed {listed} calls at the kill; ");
    }
    if !wait_until(Duration::from_secs(5), || {
        vips_held(b.lab, survivor).len() == VIPS.len()
    }) {
        note += "no takeover within 5 s; ";
    }
    let r = uac
        .wait(Duration::from_secs(90))
        .unwrap_or_else(|e| fail("sipp uac", e));
    let dropped = CALLS.saturating_sub(r.successful);
    if dropped > 0 {
        note += &format!("sipp: {}; ", r.summary().lines().next().unwrap_or_default());
        if tracing() {
            let dir = evidence(&format!("callgate-sigkill-{n}"), &r.dir);
            for (h, a) in [(Host::A, &apps[0]), (Host::B, &apps[1])] {
                let _ = fs::write(dir.join(format!("callgated-{h:?}.log")), a.log());
            }
            note += &format!("evidence in {}; ", dir.display());
        }
    }
    apps[idx(active)]
        .launch()
        .unwrap_or_else(|e| fail("relaunch", e));
    let now_active = wait_pair_settled(b.lab, apps);
    if now_active != survivor {
        note += "the killed node is active again; ";
    }
    b.record(
        System::Callgate,
        Kind::Sigkill,
        n,
        active,
        survivor,
        phase,
        t0,
        Some((held, dropped)),
        ghosts[0] + ghosts[1],
        note,
    );
}

// ----- keepalived ------------------------------------------------------------------------

/// The master once settled: one node MASTER holding the VIP, the other BACKUP without it.
fn vrrp_settled(lab: &Lab, k: &[Keepalived<'_>; 2]) -> Option<Host> {
    let vip = IpAddr::V4(WAN_VIP_V4);
    let holds = |h: Host| vips_held(lab, h).contains(&vip);
    let master = match (k[0].state().as_str(), k[1].state().as_str()) {
        ("MASTER", "BACKUP") => Host::A,
        ("BACKUP", "MASTER") => Host::B,
        _ => return None,
    };
    (k.iter().all(Keepalived::running) && holds(master) && !holds(other(master))).then_some(master)
}

/// Waits for the VRRP pair to settle. A leftover VIP on a BACKUP node (a SIGKILLed
/// keepalived's, which a restarted one does not remove) is taken off after 3 s, as an
/// operator would; that is noted.
fn wait_vrrp_settled(lab: &Lab, k: &[Keepalived<'_>; 2], note: &mut String) -> Host {
    let mut master = None;
    let vip = IpAddr::V4(WAN_VIP_V4);
    let ok = wait_until(Duration::from_secs(3), || {
        master = vrrp_settled(lab, k);
        master.is_some()
    });
    if !ok {
        for h in [Host::A, Host::B] {
            if k[idx(h)].state() == "BACKUP" && vips_held(lab, h).contains(&vip) {
                let _ = lab
                    .ns(h)
                    .ip(&["addr", "del", &format!("{WAN_VIP_V4}/24"), "dev", "wan0"]);
                *note += &format!("leftover VIP removed from {h:?} by the bench; ");
            }
        }
    }
    if !wait_until(SETTLE, || {
        master = vrrp_settled(lab, k);
        master.is_some()
    }) {
        fail(
            "keepalived did not settle",
            format!(
                "A: {} holds {:?}; B: {} holds {:?}\nA log:\n{}\nB log:\n{}",
                k[0].state(),
                vips_held(lab, Host::A),
                k[1].state(),
                vips_held(lab, Host::B),
                tail(
                    &fs::read_to_string(k[0].file("log")).unwrap_or_default(),
                    20
                ),
                tail(
                    &fs::read_to_string(k[1].file("log")).unwrap_or_default(),
                    20
                )
            ),
        );
    }
    // Stable for a moment (no second election under way).
    thread::sleep(Duration::from_millis(200));
    master.unwrap_or(Host::A)
}

fn keepalived_run(b: &mut Bench<'_>, k: &mut [Keepalived<'_>; 2], kind: Kind, n: usize) {
    let mut note = String::new();
    let master = wait_vrrp_settled(b.lab, k, &mut note);
    note.clear();
    let survivor = other(master);
    let vip = IpAddr::V4(WAN_VIP_V4);
    let phase = b.phase();
    let t0 = Instant::now();
    match kind {
        Kind::LinkDown => b
            .lab
            .set_link(master, Segment::Wan, false)
            .unwrap_or_else(|e| fail("link down", e)),
        Kind::Sigkill => k[idx(master)].kill9(),
    }
    if !wait_until(Duration::from_secs(5), || {
        vips_held(b.lab, survivor).contains(&vip)
    }) {
        note += "no takeover within 5 s; ";
    }
    match kind {
        Kind::LinkDown => {
            thread::sleep((t0 + LINK_DOWN_FOR).saturating_duration_since(Instant::now()));
            b.lab
                .set_link(master, Segment::Wan, true)
                .unwrap_or_else(|e| fail("link up", e));
        }
        Kind::Sigkill => {
            thread::sleep(
                (t0 + KEEPALIVED_RESTART_AFTER).saturating_duration_since(Instant::now()),
            );
            k[idx(master)].start();
        }
    }
    let now_master = wait_vrrp_settled(b.lab, k, &mut note);
    if now_master != survivor {
        note += "the failed node is master again; ";
    }
    b.record(
        System::Keepalived,
        kind,
        n,
        master,
        survivor,
        phase,
        t0,
        None,
        0,
        note,
    );
}

// ----- main ------------------------------------------------------------------------------

struct Opts {
    quick: bool,
    runs: usize,
    soak: Duration,
}

fn summary(runs: &[Run], system: System) -> (Vec<f64>, f64) {
    let mine: Vec<&Run> = runs.iter().filter(|r| r.system == system).collect();
    let outages = mine.iter().map(|r| r.outage_ms()).collect();
    let dual = mine.iter().map(|r| r.dual_ms).fold(0.0, f64::max);
    (outages, dual)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--hog") {
        hog();
    }
    let quick = args.iter().any(|a| a == "--quick");
    let o = if quick {
        Opts {
            quick,
            runs: 5,
            soak: Duration::from_secs(10),
        }
    } else {
        Opts {
            quick,
            runs: 20,
            soak: Duration::from_secs(60),
        }
    };
    if !Path::new(KEEPALIVED).is_file() {
        fail("keepalived", "not installed (scripts/setup installs it)");
    }
    let callgated = hil_tests::bin("callgated");
    if !callgated.is_file() {
        fail("callgated", format!("{} missing", callgated.display()));
    }
    let began = Instant::now();
    let rng = Rng::seeded();
    let seed = rng.0;
    eprintln!(
        "bench failover{}: {} link-down + {} SIGKILL runs per system, probe every {} ms, \
         random phase 0-{PHASE_SPAN_MS} ms (seed {seed:#x}), {CALLS} calls held per callgate \
         SIGKILL, {} s soak under CPU load; callgated from {}",
        if o.quick { " --quick" } else { "" },
        o.runs,
        o.runs,
        PROBE_EVERY.as_millis(),
        o.soak.as_secs(),
        callgated.display()
    );

    // Declared before everything that holds a socket in it or a process in it.
    let lab = new_pair_lab();
    let tmp = tempfile::Builder::new()
        .prefix("bench-failover-")
        .tempdir()
        .unwrap_or_else(|e| fail("tempdir", e));

    // 1. callgate: the pair as the system tests start it.
    let (a, bb) = start_pair(&lab);
    let mut apps = [a, bb];
    let prober = Prober::start(&lab);
    let watch = VipWatch::start(&lab, &VIPS);
    let mut b = Bench {
        lab: &lab,
        prober: &prober,
        watch: &watch,
        rng,
        runs: Vec::new(),
    };
    let uas: SippHandle<'_> = Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
        .local(addr::PBX_V4, 5060)
        .transport(Transport::Udp)
        .timeout(Duration::from_secs(3600))
        .spawn()
        .unwrap_or_else(|e| fail("sipp uas", e));
    uas.wait_ready(Duration::from_secs(10))
        .unwrap_or_else(|e| fail("sipp uas", e));
    eprintln!("{}", header());
    for n in 1..=o.runs {
        callgate_link_down(&mut b, &apps, n);
    }
    for n in 1..=o.runs {
        callgate_sigkill(&mut b, &mut apps, n);
    }
    let _ = uas.stop();

    // 2. The soak: no failure, one hog per core.
    wait_pair_settled(&lab, &apps);
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    let before = transitions(&apps);
    let soak_from = Instant::now();
    let hogs = Hogs::start(cores);
    thread::sleep(o.soak);
    drop(hogs);
    let soak_to = Instant::now();
    thread::sleep(Duration::from_millis(200));
    let after = transitions(&apps);
    let false_takeovers = after.saturating_sub(before);
    let soak_gap = prober.gap(soak_from, soak_to);
    eprintln!(
        "soak: {} s with {cores} CPU hogs: role changes {before} -> {after}; probes answered \
         {}/{}, longest gap {:.1} ms",
        o.soak.as_secs(),
        soak_gap.answered,
        soak_gap.sent,
        ms(soak_gap.longest)
    );

    // 3. keepalived in the same lab: the appliances stopped, their ruleset gone.
    let [a, bb] = apps;
    drop(a);
    drop(bb);
    for h in [Host::A, Host::B] {
        let ns = lab.ns(h);
        let _ = ns.exec(&["nft", "flush", "ruleset"]);
        for v in vips_held(&lab, h) {
            let len = if v.is_ipv4() { 24 } else { 64 };
            eprintln!("keepalived lab: {h:?} still held {v} after callgated stopped: removed");
            for dev in ["wan0", "priv0"] {
                let _ = ns.ip(&["addr", "del", &format!("{v}/{len}"), "dev", dev]);
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let responders = [
        responder(&lab.ns(Host::A), &stop),
        responder(&lab.ns(Host::B), &stop),
    ];
    let mut k = [
        Keepalived::new(&lab, Host::A, tmp.path()),
        Keepalived::new(&lab, Host::B, tmp.path()),
    ];
    k[0].start();
    if !wait_until(Duration::from_secs(10), || k[0].state() == "MASTER") {
        fail(
            "keepalived A did not become master",
            fs::read_to_string(k[0].file("log")).unwrap_or_default(),
        );
    }
    k[1].start();
    let mut note = String::new();
    wait_vrrp_settled(&lab, &k, &mut note);
    for kind in [Kind::LinkDown, Kind::Sigkill] {
        for n in 1..=o.runs {
            keepalived_run(&mut b, &mut k, kind, n);
        }
    }
    drop(k);
    stop.store(true, Ordering::Relaxed);
    for r in responders {
        let _ = r.join();
    }

    // 4. Figures.
    let runs = std::mem::take(&mut b.runs);
    eprintln!("\nall runs:\n{}", header());
    for r in &runs {
        eprintln!("{}", row(r));
    }
    let mut per_kind = String::new();
    for system in [System::Callgate, System::Keepalived] {
        for kind in [Kind::LinkDown, Kind::Sigkill] {
            let v: Vec<f64> = runs
                .iter()
                .filter(|r| r.system == system && r.kind == kind)
                .map(Run::outage_ms)
                .collect();
            let t: Vec<f64> = runs
                .iter()
                .filter(|r| r.system == system && r.kind == kind)
                .filter_map(|r| r.takeover_ms)
                .collect();
            let dual = runs
                .iter()
                .filter(|r| r.system == system && r.kind == kind)
                .map(|r| r.dual_ms)
                .fold(0.0, f64::max);
            eprintln!(
                "{:<10} {:<9} runs {:>2}: outage p50 {:.1} p99 {:.1} max {:.1} ms; takeover \
                 p50 {:.1} ms; dual VIP max {:.1} ms",
                system.name(),
                kind.name(),
                v.len(),
                percentile(&v, 50.0),
                percentile(&v, 99.0),
                v.iter().copied().fold(0.0, f64::max),
                percentile(&t, 50.0),
                dual
            );
            let key = format!(
                "{}{}",
                match system {
                    System::Callgate => "",
                    System::Keepalived => "keepalived_",
                },
                kind.name().replace('-', "")
            );
            let _ = write!(
                per_kind,
                " {key}_p50_ms={:.1} {key}_p99_ms={:.1}",
                percentile(&v, 50.0),
                percentile(&v, 99.0)
            );
        }
    }
    let (cg, cg_dual) = summary(&runs, System::Callgate);
    let (ka, ka_dual) = summary(&runs, System::Keepalived);
    let (held, dropped) = runs
        .iter()
        .filter_map(|r| r.calls)
        .fold((0, 0), |acc, (h, d)| (acc.0 + h, acc.1 + d));
    let not_recovered = runs.iter().filter(|r| !r.gap.recovered).count();
    let stale_calls = runs.iter().map(|r| r.stale_calls).max().unwrap_or(0);
    let (p50, p99) = (percentile(&cg, 50.0), percentile(&cg, 99.0));
    let (k50, k99) = (percentile(&ka, 50.0), percentile(&ka, 99.0));
    eprintln!(
        "bench failover: done in {:.0} s",
        began.elapsed().as_secs_f64()
    );
    println!(
        "BENCH failover outage_p50_ms={p50:.1} outage_p99_ms={p99:.1} keepalived_p50_ms={k50:.1} \
         keepalived_p99_ms={k99:.1} p99_x_vs_keepalived={:.2} dual_vip_ms={cg_dual:.1} \
         false_takeovers={false_takeovers} calls_dropped={dropped} \
         keepalived_dual_vip_ms={ka_dual:.1} runs={} calls_held={held}{per_kind} \
         soak_s={} soak_max_gap_ms={:.1} not_recovered={not_recovered} \
         stale_calls_max={stale_calls} quick={}",
        p99 / k99,
        o.runs,
        o.soak.as_secs(),
        ms(soak_gap.longest),
        o.quick
    );
}
