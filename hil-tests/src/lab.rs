//! The lab itself: namespaces, the switch, wiring, child processes, teardown.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use crate::addr::{Host, Segment};
use crate::cmd::{describe, ip, run_checked, status_with_timeout, HELPER_TIMEOUT};
use crate::error::{LabError, Result};
use crate::netns::{delete_namespace, sweep_stale, try_run_in_netns, NAME_TAG};
use crate::probe::{self, TcpProbeListener, UdpProbeListener};
use crate::proc::{terminate_all, Proc, ProcInner, TERM_GRACE};

/// Suffix of the hidden switch namespace.
const SWITCH: &str = "sw";

/// A running lab: one network namespace per host plus a hidden switch namespace holding
/// one Linux bridge per segment. Everything is removed when it is dropped (on panic too).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    hosts: Vec<Host>,
    /// Namespaces created so far (teardown deletes exactly these).
    created: Vec<String>,
    procs: Mutex<Vec<Arc<ProcInner>>>,
    /// The carrier and the PBX route through the pair's virtual addresses.
    via_vips: bool,
}

/// A handle on one namespace of a [`Lab`].
#[derive(Debug, Clone)]
pub struct Ns<'lab> {
    lab: &'lab Lab,
    name: String,
    host: Option<Host>,
}

/// One cable of a VM into the lab ([`Lab::wire_vm`]): the tap, inside the host's
/// namespace, bridged to the host's switch port on `segment`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPort {
    /// The segment the cable goes to.
    pub segment: Segment,
    /// The tap's name in the host's namespace (`vm-wan`, ...).
    pub tap: String,
}

/// `cg{pid}x{counter}`: unique per lab within this process, and the pid tells a later
/// run whether the owner is still alive.
fn next_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{NAME_TAG}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Switch port name for `host` on `segment` (max 15 chars: `carrier-wan`).
fn port_name(host: Host, segment: Segment) -> String {
    format!("{}-{}", host.suffix(), segment.name())
}

fn bridge_name(segment: Segment) -> String {
    format!("br-{}", segment.name())
}

impl Lab {
    /// Builds a lab with `hosts` (duplicates ignored). Segments are created for the hosts
    /// present; the sync segment only when both A and B are. First deletes leftovers of
    /// dead runs. On error everything created so far is removed again.
    pub fn start(hosts: &[Host]) -> Result<Lab> {
        Lab::start_with(hosts, false)
    }

    /// A lab for the redundant pair (`config/lab-pair-*.toml`): like [`Lab::start`], but
    /// the carrier and the PBX route through the pair's virtual addresses, which only
    /// the active appliance holds.
    pub fn start_pair(hosts: &[Host]) -> Result<Lab> {
        Lab::start_with(hosts, true)
    }

    fn start_with(hosts: &[Host], via_vips: bool) -> Result<Lab> {
        static FIRST: Once = Once::new();
        // The first lab of this process may also sweep names carrying our own pid (a
        // crashed earlier run that had the same pid); later ones must not.
        FIRST.call_once(|| sweep_stale(true));
        sweep_stale(false);

        let mut hosts = hosts.to_vec();
        hosts.sort();
        hosts.dedup();
        let mut lab = Lab {
            prefix: next_prefix(),
            hosts,
            created: Vec::new(),
            procs: Mutex::new(Vec::new()),
            via_vips,
        };
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.switch_name();
        let host_ns: Vec<(Host, String)> =
            self.hosts.iter().map(|&h| (h, self.ns_name(h))).collect();

        // 1. Namespaces (recorded one by one, so a failure half-way still cleans up).
        for name in std::iter::once(&sw).chain(host_ns.iter().map(|(_, n)| n)) {
            crate::netns::netns_add(name)?;
            self.created.push(name.clone());
        }

        // 2. Sysctls, before any interface exists, so `default.*` applies to the veths.
        //    `ip netns exec` runs sysctl inside the lab namespace, never in ours.
        self.sysctl(
            &sw,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        for (host, name) in &host_ns {
            let mut keys = vec![
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ];
            if host.is_appliance() {
                keys.extend([
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv6.conf.default.forwarding=1",
                ]);
            }
            self.sysctl(name, &keys)?;
        }

        // 3. The switch: one bridge per segment, one veth per (host, segment); the host
        //    end is created directly inside the host namespace.
        let mut batch = String::from("link set lo up\n");
        for segment in Segment::ALL {
            let members = self.members(segment);
            if members.is_empty() {
                continue;
            }
            let br = bridge_name(segment);
            let _ = writeln!(
                batch,
                "link add {br} type bridge stp_state 0 mcast_snooping 0"
            );
            let _ = writeln!(batch, "link set {br} up");
            for host in members {
                let port = port_name(host, segment);
                let iface = host.iface(segment).unwrap_or("eth0");
                let peer_ns = self.ns_name(host);
                let _ = writeln!(
                    batch,
                    "link add {port} type veth peer name {iface} netns {peer_ns}"
                );
                let _ = writeln!(batch, "link set {port} master {br}");
                let _ = writeln!(batch, "link set {port} up");
            }
        }
        self.ip_batch(&sw, &batch)?;

        // 4. Hosts: addresses, links up, default routes.
        for (host, name) in &host_ns {
            let mut batch = String::from("link set lo up\n");
            for &segment in host.segments() {
                if !self.members(segment).contains(host) {
                    continue;
                }
                let Some(iface) = host.iface(segment) else {
                    continue;
                };
                let (_, len4) = segment.v4_net();
                let (_, len6) = segment.v6_net();
                for a in host.v4_addrs(segment) {
                    let _ = writeln!(batch, "addr add {a}/{len4} dev {iface}");
                }
                for (i, a) in host.v6_addrs(segment).iter().enumerate() {
                    // Extra addresses are deprecated: valid, bindable, never a default source.
                    let extra = if i == 0 { "" } else { " preferred_lft 0" };
                    let _ = writeln!(batch, "addr add {a}/{len6} dev {iface} nodad{extra}");
                }
                let _ = writeln!(batch, "link set {iface} up");
            }
            // The mgmt host and the cloud have none: their peers are on-link.
            let gateway_segment = match host {
                Host::Carrier => Some(Segment::Wan),
                Host::Pbx => Some(Segment::Private),
                Host::A | Host::B | Host::Mgmt | Host::Cloud => None,
            };
            if let Some(seg) = gateway_segment {
                // Via the pair's virtual address in a pair lab; else via A, or via B in a
                // lab without A.
                let pair = self.via_vips;
                let gw = [Host::A, Host::B]
                    .into_iter()
                    .find(|h| self.hosts.contains(h));
                let via = match (pair, seg, gw) {
                    (true, Segment::Wan, _) => Some((
                        IpAddr::V4(crate::addr::WAN_VIP_V4),
                        IpAddr::V6(crate::addr::WAN_VIP_V6),
                    )),
                    (true, _, _) => Some((
                        IpAddr::V4(crate::addr::PRIV_VIP_V4),
                        IpAddr::V6(crate::addr::PRIV_VIP_V6),
                    )),
                    (false, _, Some(gw)) => gw
                        .v4(seg)
                        .zip(gw.v6(seg))
                        .map(|(a, b)| (IpAddr::V4(a), IpAddr::V6(b))),
                    (false, _, None) => None,
                };
                if let Some((v4, v6)) = via {
                    let _ = writeln!(batch, "route add default via {v4}");
                    let _ = writeln!(batch, "route add default via {v6}");
                }
            }
            self.ip_batch(name, &batch)?;
        }
        Ok(())
    }

    /// Hosts of this lab attached to `segment`.
    fn members(&self, segment: Segment) -> Vec<Host> {
        if segment == Segment::Sync && !(self.has(Host::A) && self.has(Host::B)) {
            return Vec::new();
        }
        self.hosts
            .iter()
            .copied()
            .filter(|h| h.segments().contains(&segment))
            .collect()
    }

    fn sysctl(&self, ns: &str, keys: &[&str]) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "sysctl", "-q", "-w"])
            .args(keys);
        run_checked(&mut cmd, None, HELPER_TIMEOUT).map(drop)
    }

    fn ip_batch(&self, ns: &str, batch: &str) -> Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", ns, "-batch", "-"]);
        run_checked(&mut cmd, Some(batch.as_bytes()), HELPER_TIMEOUT).map(drop)
    }

    /// This lab's namespace prefix, e.g. `cg1234x0` (namespaces are `{prefix}-{suffix}`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hosts of this lab (sorted, no duplicates).
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Whether `host` is part of this lab.
    pub fn has(&self, host: Host) -> bool {
        self.hosts.contains(&host)
    }

    /// Namespace name of `host` (whether or not it is part of this lab).
    pub fn ns_name(&self, host: Host) -> String {
        format!("{}-{}", self.prefix, host.suffix())
    }

    /// Name of the hidden switch namespace.
    pub fn switch_name(&self) -> String {
        format!("{}-{SWITCH}", self.prefix)
    }

    /// Handle on `host`'s namespace.
    ///
    /// # Panics
    /// If `host` is not part of this lab (a bug in the test); see [`Lab::try_ns`].
    pub fn ns(&self, host: Host) -> Ns<'_> {
        match self.try_ns(host) {
            Ok(ns) => ns,
            Err(e) => panic!("{e} (lab {} has {:?})", self.prefix, self.hosts),
        }
    }

    /// Handle on `host`'s namespace, or an error if it is not part of this lab.
    pub fn try_ns(&self, host: Host) -> Result<Ns<'_>> {
        if !self.has(host) {
            return Err(LabError::NoSuchHost(host));
        }
        Ok(Ns {
            lab: self,
            name: self.ns_name(host),
            host: Some(host),
        })
    }

    /// Handle on the hidden switch namespace (bridges `br-{wan,priv,mgmt,sync}`, ports
    /// `{host}-{segment}`), e.g. for `tcpdump` on a bridge.
    pub fn switch(&self) -> Ns<'_> {
        Ns {
            lab: self,
            name: self.switch_name(),
            host: None,
        }
    }

    /// Sets `host`'s switch port on `segment` up or down: a pulled cable, as far as the
    /// host can tell (its interface loses carrier).
    pub fn set_link(&self, host: Host, segment: Segment, up: bool) -> Result<()> {
        if !self.members(segment).contains(&host) {
            return Err(LabError::NoSuchHost(host));
        }
        let port = port_name(host, segment);
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch_name(), "link", "set", &port, state]).map(drop)
    }

    /// Makes `host`'s namespace the place of a VM in the lab: for each segment the host is
    /// cabled to (in the order of [`Segment::ALL`]), its interface loses its addresses and
    /// goes into a bridge of its own (`vmbr-{segment}`) together with a tap
    /// (`vm-{segment}`), which a QEMU started inside this namespace opens (see
    /// `hil_tests::vm::VmNet`). The VM then sits where the namespace appliance would: on
    /// the same switch ports ([`Lab::set_link`] pulls its cables), at the addresses the
    /// plan gives `host` (the VM is given them; the namespace keeps none, IPv6 off).
    /// Everything is made inside the namespace and goes with it at teardown.
    pub fn wire_vm(&self, host: Host) -> Result<Vec<VmPort>> {
        let ns = self.try_ns(host)?;
        let segments: Vec<Segment> = Segment::ALL
            .into_iter()
            .filter(|&s| self.members(s).contains(&host))
            .collect();
        let mut keys = vec!["net.ipv6.conf.default.disable_ipv6=1".to_owned()];
        let mut ports = Vec::new();
        let mut batch = String::new();
        for &segment in &segments {
            let Some(iface) = host.iface(segment) else {
                continue;
            };
            keys.push(format!("net.ipv6.conf.{iface}.disable_ipv6=1"));
            let br = format!("vmbr-{}", segment.name());
            let tap = format!("vm-{}", segment.name());
            let _ = writeln!(batch, "addr flush dev {iface}");
            let _ = writeln!(
                batch,
                "link add {br} type bridge stp_state 0 mcast_snooping 0"
            );
            let _ = writeln!(batch, "link set {iface} master {br}");
            let _ = writeln!(batch, "tuntap add dev {tap} mode tap");
            let _ = writeln!(batch, "link set {tap} master {br}");
            let _ = writeln!(batch, "link set {tap} up");
            let _ = writeln!(batch, "link set {br} up");
            ports.push(VmPort { segment, tap });
        }
        // IPv6 off first, so the bridges and taps never get an address of their own.
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.sysctl(ns.name(), &keys)?;
        self.ip_batch(ns.name(), &batch)?;
        Ok(ports)
    }

    fn register(&self, inner: Arc<ProcInner>) {
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(inner);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|p| p.into_inner()));
        terminate_all(&procs, TERM_GRACE);
        // Hosts first, the switch last (reverse creation order).
        for name in self.created.iter().rev() {
            if let Err(e) = delete_namespace(name) {
                eprintln!("hil-tests: lab teardown: cannot delete namespace {name}: {e}");
            }
        }
    }
}

impl Ns<'_> {
    /// The namespace name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which host this is (`None` for the switch).
    pub fn host(&self) -> Option<Host> {
        self.host
    }

    /// `ip netns exec NAME program`: add arguments, then run it or [`spawn`](Ns::spawn) it.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace to completion (30 s limit); error on
    /// a non-zero exit. Returns stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let Some((program, rest)) = args.split_first() else {
            return Err(std::io::Error::other("exec: empty command").into());
        };
        let mut cmd = self.command(program);
        cmd.args(rest);
        run_checked(&mut cmd, None, HELPER_TIMEOUT)
    }

    /// UDP datagrams this namespace's kernel has dropped for a full socket buffer so far
    /// (`RcvbufErrors` in its `/proc/net/snmp`); 0 when unreadable.
    pub fn udp_rcvbuf_errors(&self) -> u64 {
        let snmp = self.exec(&["cat", "/proc/net/snmp"]).unwrap_or_default();
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        match udp.as_slice() {
            [head, vals, ..] => head
                .split_whitespace()
                .zip(vals.split_whitespace())
                .find(|(k, _)| *k == "RcvbufErrors")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0),
            _ => 0,
        }
    }

    /// `ip -n NAME args...` (30 s limit); error on a non-zero exit. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_checked(&mut cmd, None, HELPER_TIMEOUT)
    }

    /// Starts `cmd` (normally from [`Ns::command`]) as the leader of a new process group
    /// and registers it with the lab, which terminates (SIGTERM, then SIGKILL after 2 s)
    /// and reaps it and its group when dropped. Stdio is whatever `cmd` says.
    pub fn spawn(&self, mut cmd: Command) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let label = describe(&cmd);
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            cmd: label.clone(),
            source,
        })?;
        let inner = Arc::new(ProcInner::new(child, label));
        self.lab.register(Arc::clone(&inner));
        Ok(Proc { inner })
    }

    /// Runs `f` on a fresh thread that has joined this namespace (see
    /// [`try_run_in_netns`]).
    ///
    /// # Panics
    /// If the namespace cannot be joined (`f` is then not run), or if `f` panics.
    pub fn run_in<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        match try_run_in_netns(&self.name, f) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Ns::run_in`], but a failure to join the namespace is an error.
    pub fn try_run_in<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        try_run_in_netns(&self.name, f)
    }

    /// TCP listener on `addr:port` in this namespace (see [`TcpProbeListener`]).
    pub fn tcp_listen(&self, addr: impl Into<IpAddr>, port: u16) -> Result<TcpProbeListener> {
        TcpProbeListener::start(&self.name, addr.into(), port)
    }

    /// Echoing UDP listener on `addr:port` in this namespace (see [`UdpProbeListener`]).
    pub fn udp_listen(&self, addr: impl Into<IpAddr>, port: u16) -> Result<UdpProbeListener> {
        UdpProbeListener::start(&self.name, addr.into(), port, true)
    }

    /// Non-echoing UDP listener (records only; [`Ns::udp_probe`] towards it fails).
    pub fn udp_listen_silent(
        &self,
        addr: impl Into<IpAddr>,
        port: u16,
    ) -> Result<UdpProbeListener> {
        UdpProbeListener::start(&self.name, addr.into(), port, false)
    }

    /// `true` iff a TCP handshake from here (bound to `src` if given) to `dst:port`
    /// completes within `timeout`.
    pub fn tcp_connect(
        &self,
        src: Option<IpAddr>,
        dst: impl Into<IpAddr>,
        port: u16,
        timeout: Duration,
    ) -> bool {
        probe::tcp_connect(&self.name, src, dst.into(), port, timeout)
    }

    /// Sends one datagram with `payload` (e.g. a [`Token`](crate::Token)) from here;
    /// `true` iff it was sent. Check arrival with [`UdpProbeListener::wait_for`].
    pub fn udp_send(
        &self,
        src: Option<IpAddr>,
        dst: impl Into<IpAddr>,
        port: u16,
        payload: impl AsRef<[u8]>,
    ) -> bool {
        probe::udp_send(&self.name, src, dst.into(), port, payload.as_ref())
    }

    /// UDP round trip to an echoing listener at `dst:port` (see [`probe::udp_probe`]).
    pub fn udp_probe(
        &self,
        src: Option<IpAddr>,
        dst: impl Into<IpAddr>,
        port: u16,
        timeout: Duration,
    ) -> bool {
        probe::udp_probe(&self.name, src, dst.into(), port, timeout)
    }

    /// A port scan by `nmap` from here: `nmap -n -Pn -oX - ARGS TARGET` (`-6` added for
    /// an IPv6 target), e.g. `args` = `["-sS", "-p", "1-65535"]`. What nmap reported, port
    /// by port, or an error if it failed or did not scan `target`.
    pub fn port_scan(&self, target: IpAddr, args: &[&str]) -> Result<PortScan> {
        let mut cmd = self.command("nmap");
        cmd.args(["-n", "-Pn", "-oX", "-"]);
        if target.is_ipv6() {
            cmd.arg("-6");
        }
        cmd.args(args).arg(target.to_string());
        let xml = run_checked(&mut cmd, None, Duration::from_secs(600))?;
        PortScan::parse(&xml).ok_or_else(|| {
            LabError::Io(std::io::Error::other(format!(
                "nmap reported no host {target}:\n{xml}"
            )))
        })
    }

    /// `ping -c1` from here to `dst` (IPv4 or IPv6), from `src` if given; `true` iff a
    /// reply arrived within `timeout` (rounded up to whole seconds, at least 1 s; within
    /// that, one echo request per second).
    pub fn ping(&self, src: Option<IpAddr>, dst: impl Into<IpAddr>, timeout: Duration) -> bool {
        let secs = timeout
            .as_secs()
            .saturating_add(u64::from(timeout.subsec_nanos() > 0))
            .max(1);
        let secs = secs.to_string();
        let mut cmd = self.command("ping");
        cmd.args(["-n", "-q", "-c1", "-W", &secs, "-w", &secs]);
        if let Some(src) = src {
            cmd.arg("-I").arg(src.to_string());
        }
        cmd.arg(dst.into().to_string());
        status_with_timeout(&mut cmd, timeout + Duration::from_secs(2)).is_some_and(|s| s.success())
    }
}

/// Whether a port in nmap's `state` answered the probe at all (a SYN-ACK, a RST, an ICMP
/// port unreachable, a UDP reply), as `open`, `closed` and `unfiltered` say; `filtered`
/// and `open|filtered` are silence.
fn answers(state: &str) -> bool {
    matches!(state, "open" | "closed" | "unfiltered")
}

/// What one `nmap` run reported of its target ([`Ns::port_scan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortScan {
    /// Each port nmap listed: (protocol, port, state), e.g. `("tcp", 22, "open")`.
    pub ports: Vec<(String, u16, String)>,
    /// The ports it did not list, by state: (state, how many), e.g. `("filtered", 65534)`.
    pub unlisted: Vec<(String, u32)>,
}

impl PortScan {
    /// Reads nmap's XML output (`-oX`): its one host's `<port>` and `<extraports>`
    /// elements. `None` if it reports no host.
    pub fn parse(xml: &str) -> Option<PortScan> {
        let host = xml.split("<host ").nth(1)?;
        let attr = |elem: &str, name: &str| -> Option<String> {
            let start = elem.find(&format!(" {name}=\""))? + name.len() + 3;
            let len = elem[start..].find('"')?;
            Some(elem[start..start + len].to_owned())
        };
        let mut scan = PortScan::default();
        for elem in host.split('<').skip(1) {
            // (`elem` is the element's name and attributes: `port protocol="tcp" ...`.)
            if elem.starts_with("extraports ") {
                let count = attr(elem, "count")?.parse().ok()?;
                scan.unlisted.push((attr(elem, "state")?, count));
            } else if elem.starts_with("port ") {
                let port = attr(elem, "portid")?.parse().ok()?;
                scan.ports
                    .push((attr(elem, "protocol")?, port, String::new()));
            } else if elem.starts_with("state ") {
                // The state of the <port> just read (the host's own is <status>).
                if let Some(last) = scan.ports.last_mut() {
                    if last.2.is_empty() {
                        last.2 = attr(elem, "state")?;
                    }
                }
            }
        }
        Some(scan)
    }

    /// How many ports the scan covered (listed and unlisted).
    pub fn scanned(&self) -> u32 {
        let listed = u32::try_from(self.ports.len()).unwrap_or(u32::MAX);
        self.unlisted
            .iter()
            .fold(listed, |n, (_, c)| n.saturating_add(*c))
    }

    /// The listed ports in `state`: (protocol, port).
    pub fn in_state(&self, state: &str) -> Vec<(String, u16)> {
        self.ports
            .iter()
            .filter(|p| p.2 == state)
            .map(|p| (p.0.clone(), p.1))
            .collect()
    }

    /// How many ports answered at all (see [`PortScan::answered`]), listed or not.
    pub fn answered_count(&self) -> u32 {
        let listed = self.ports.iter().filter(|p| answers(&p.2)).count();
        self.unlisted
            .iter()
            .filter(|(s, _)| answers(s))
            .fold(u32::try_from(listed).unwrap_or(u32::MAX), |n, (_, c)| {
                n.saturating_add(*c)
            })
    }

    /// The ports that answered at all (`open`, `closed`, `unfiltered`: a SYN-ACK, a RST,
    /// an ICMP port unreachable, a UDP reply), listed or not: (state, protocol, port or 0
    /// for a count of unlisted ones).
    pub fn answered(&self) -> Vec<String> {
        self.ports
            .iter()
            .filter(|p| answers(&p.2))
            .map(|p| format!("{}/{} {}", p.1, p.0, p.2))
            .chain(
                self.unlisted
                    .iter()
                    .filter(|(s, _)| answers(s))
                    .map(|(s, n)| format!("{n} more {s}")),
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::PortScan;

    #[test]
    fn nmap_xml_is_read_port_by_port() {
        let xml = r#"<?xml version="1.0"?><nmaprun scanner="nmap"><host starttime="1">
<status state="up" reason="user-set"/><address addr="192.0.2.129" addrtype="ipv4"/>
<ports><extraports state="filtered" count="65534">
<extrareasons reason="no-response" count="65534" proto="tcp" ports="1-21,23-65535"/>
</extraports>
<port protocol="tcp" portid="22"><state state="open" reason="syn-ack" reason_ttl="64"/><service name="ssh" method="table" conf="3"/></port>
</ports></host><runstats><finished time="2"/><hosts up="1" down="0" total="1"/></runstats></nmaprun>"#;
        let scan = PortScan::parse(xml).unwrap_or_default();
        assert_eq!(scan.ports, vec![("tcp".into(), 22, "open".into())]);
        assert_eq!(scan.unlisted, vec![("filtered".into(), 65534)]);
        assert_eq!(scan.scanned(), 65535);
        assert_eq!(scan.in_state("open"), vec![("tcp".into(), 22)]);
        assert_eq!(scan.answered(), vec!["22/tcp open".to_owned()]);
        assert_eq!(scan.answered_count(), 1);
        assert_eq!(PortScan::parse("<nmaprun></nmaprun>"), None);
    }
}
