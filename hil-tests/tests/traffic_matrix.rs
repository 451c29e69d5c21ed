#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The traffic matrix: every `[[allow]]` entry of `config/lab.toml`, and the services, probed
//! with real packets through a real `callgated` and the kernel's nftables (needs root).
//!
//! The cases are derived from the config itself, so a new entry gets its cases without
//! editing this file (and [`every_allow_entry_has_cases`] fails if one cannot be derived):
//! - the matching flow, in every address family the entry covers, passes and is counted by
//!   that entry's rule and by no other allow entry;
//! - the same flow with exactly one thing wrong — source (the carrier's / mgmt host's ALT
//!   address), port, protocol, ingress zone, address family, destination — is dropped;
//! - SSH and ping reach the appliance from mgmt only.
//!
//! The expectation of every probe comes from [`expected`], a small model of the semantics of
//! `firmware/firewall/src/render.rs` (services, then allow entries without destination in
//! config order, then the `allow_dst` chain, then `default-drop`). A variation that another
//! entry legitimately admits (TCP 5060 instead of UDP 5060 is `carrier-sip-tcp`) is checked to
//! be counted by that other entry and not by the one under test.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use callgate_config::{AllowEntry, Config, Prefix, Protocol, ZoneName};
use hil_tests::addr::*;
use hil_tests::{Appliance, Host, Lab, Segment, TcpProbeListener, Token, UdpProbeListener};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/lab.toml");
/// How long a flow that should pass gets (returns as soon as it did).
const PASS_WAIT: Duration = Duration::from_secs(2);
/// How long a flow that should be dropped is watched.
const DROP_WAIT: Duration = Duration::from_millis(400);
const HOSTS: [Host; 4] = [Host::Carrier, Host::A, Host::Pbx, Host::Mgmt];

// ----- the config and the lab's addressing plan ------------------------------------------

fn config() -> Config {
    Config::load(std::path::Path::new(CONFIG)).expect("config/lab.toml parses")
}

fn name(e: &AllowEntry) -> &str {
    e.name.get_ref().as_str()
}

fn zone_segment(z: ZoneName) -> Segment {
    match z {
        ZoneName::Wan => Segment::Wan,
        ZoneName::Private => Segment::Private,
        ZoneName::Mgmt => Segment::Mgmt,
        ZoneName::Sync => Segment::Sync,
    }
}

/// The lab host (not an appliance) that sits in `zone`, if any.
fn zone_host(z: ZoneName) -> Option<Host> {
    match z {
        ZoneName::Wan => Some(Host::Carrier),
        ZoneName::Private => Some(Host::Pbx),
        ZoneName::Mgmt => Some(Host::Mgmt),
        ZoneName::Sync => None,
    }
}

fn host_zone(h: Host) -> ZoneName {
    match h {
        Host::Carrier | Host::Cloud => ZoneName::Wan,
        Host::Pbx => ZoneName::Private,
        Host::Mgmt => ZoneName::Mgmt,
        Host::A | Host::B => panic!("an appliance is in every zone"),
    }
}

fn addrs(h: Host, seg: Segment, v6: bool) -> Vec<IpAddr> {
    if v6 {
        h.v6_addrs(seg).iter().map(|a| IpAddr::V6(*a)).collect()
    } else {
        h.v4_addrs(seg).iter().map(|a| IpAddr::V4(*a)).collect()
    }
}

/// Which host of the lab owns `ip`.
fn owner(ip: IpAddr) -> Host {
    for h in HOSTS {
        for &seg in h.segments() {
            if addrs(h, seg, ip.is_ipv6()).contains(&ip) {
                return h;
            }
        }
    }
    panic!("{ip} belongs to no host of the lab")
}

fn segment_of(ip: IpAddr) -> Segment {
    let h = owner(ip);
    *h.segments()
        .iter()
        .find(|&&s| addrs(h, s, ip.is_ipv6()).contains(&ip))
        .unwrap()
}

fn in_prefixes(ps: &[Prefix], ip: IpAddr) -> bool {
    ps.iter().any(|p| p.net().contains(&ip))
}

fn a_addr(seg: Segment, v6: bool) -> IpAddr {
    Host::A.ip(seg, v6).unwrap()
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "v6"
    } else {
        "v4"
    }
}

// ----- flows and the model of the policy ---------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl From<Protocol> for Proto {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
            Protocol::Icmp => Proto::Icmp,
        }
    }
}

/// One probe: a packet flow from a lab host through (or to) appliance A.
#[derive(Debug, Clone)]
struct Flow {
    /// What the case is about, for messages.
    label: String,
    from: Host,
    src: IpAddr,
    /// The zone of A's interface the flow arrives on.
    zone: ZoneName,
    dst: IpAddr,
    proto: Proto,
    /// Ignored for ICMP.
    port: u16,
    /// Whether the far end's answer comes back to `from` (false when the source address is
    /// borrowed from a host in another zone: A routes the answer to its real owner).
    reply_observable: bool,
}

/// An accepting rule: chain and rule comment.
type RuleId = (&'static str, String);

/// What the policy of `cfg` does with `f`, following render.rs: `None` = dropped.
fn expected(cfg: &Config, f: &Flow) -> Option<RuleId> {
    let local = owner(f.dst) == Host::A;
    if local {
        let svc = |s: &Option<callgate_config::Service>| {
            s.as_ref().is_some_and(|s| s.zone_names().contains(&f.zone))
        };
        let s = &cfg.services;
        let hit = match f.proto {
            Proto::Tcp if svc(&s.ssh) && f.port == cfg.ssh_port() => Some("ssh"),
            Proto::Tcp | Proto::Udp if svc(&s.sip) && f.port == cfg.sip_port() => Some("sip"),
            Proto::Udp if svc(&s.heartbeat) && f.port == cfg.heartbeat_port() => Some("heartbeat"),
            Proto::Icmp if svc(&s.ping) => Some("ping"),
            _ => None,
        };
        if let Some(n) = hit {
            return Some(("input", format!("service:{n}")));
        }
    }
    let matches = |e: &AllowEntry| {
        *e.zone.get_ref() == f.zone
            && in_prefixes(e.sources.get_ref(), f.src)
            && Proto::from(*e.protocol.get_ref()) == f.proto
            && (f.proto == Proto::Icmp || e.ports().iter().any(|r| r.contains(f.port)))
    };
    if local {
        if let Some(e) = cfg
            .allow
            .iter()
            .find(|e| e.destinations().is_empty() && matches(e))
        {
            return Some(("input", name(e).to_owned()));
        }
    }
    cfg.allow
        .iter()
        .find(|e| {
            !e.destinations().is_empty() && in_prefixes(e.destinations(), f.dst) && matches(e)
        })
        .map(|e| ("allow_dst", name(e).to_owned()))
}

/// The chain a flow that nothing accepts ends in.
fn drop_chain(f: &Flow) -> &'static str {
    if owner(f.dst) == Host::A {
        "input"
    } else {
        "forward"
    }
}

/// Every accepting rule the config can produce (allow entries and services).
fn accepting_rules(cfg: &Config) -> Vec<RuleId> {
    let mut v: Vec<RuleId> = cfg
        .allow
        .iter()
        .map(|e| {
            let chain = if e.destinations().is_empty() {
                "input"
            } else {
                "allow_dst"
            };
            (chain, name(e).to_owned())
        })
        .collect();
    for s in ["ssh", "sip", "heartbeat", "ping"] {
        v.push(("input", format!("service:{s}")));
    }
    v
}

// ----- deriving the cases from the config ---------------------------------------------------

/// What a case intends: the entry's own flow passes, or a variation of it that the entry
/// must not admit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Pass,
    NotThisEntry,
}

#[derive(Debug, Clone)]
struct Case {
    entry: String,
    intent: Intent,
    flow: Flow,
}

/// The matching flow of `e` in one family, if the entry covers that family and the lab has
/// a host to send it.
fn matching_flow(e: &AllowEntry, v6: bool) -> Option<Flow> {
    let zone = *e.zone.get_ref();
    let from = zone_host(zone).unwrap_or_else(|| panic!("{}: no lab host in zone {zone}", name(e)));
    let seg = zone_segment(zone);
    let src = addrs(from, seg, v6)
        .into_iter()
        .find(|a| in_prefixes(e.sources.get_ref(), *a))?;
    let dst = if e.destinations().is_empty() {
        a_addr(seg, v6)
    } else {
        // A lab address other than A's inside the destination.
        HOSTS
            .iter()
            .filter(|&&h| h != Host::A)
            .flat_map(|&h| h.segments().iter().flat_map(move |&s| addrs(h, s, v6)))
            .find(|a| in_prefixes(e.destinations(), *a))?
    };
    let port = e.ports().first().map_or(0, |r| r.lo);
    Some(Flow {
        label: format!("{} {}", name(e), family(v6)),
        from,
        src,
        zone,
        dst,
        proto: (*e.protocol.get_ref()).into(),
        port,
        reply_observable: true,
    })
}

/// A port outside `e`'s ports that, if possible, nothing else admits either.
fn port_outside(cfg: &Config, e: &AllowEntry, base: &Flow) -> u16 {
    let hi = e.ports().iter().map(|r| r.hi).max().unwrap_or(0);
    let mut p = hi.wrapping_add(1);
    for _ in 0..200 {
        let f = Flow {
            port: p,
            ..base.clone()
        };
        if !e.ports().iter().any(|r| r.contains(p)) && expected(cfg, &f).is_none() {
            return p;
        }
        p = p.wrapping_add(1);
    }
    panic!("{}: no free port above {hi}", name(e))
}

/// The cases of the main matrix (everything but the zone): match, source, port, protocol,
/// address family, destination.
fn matrix_cases(cfg: &Config, e: &AllowEntry) -> Vec<Case> {
    let n = name(e).to_owned();
    let mut out = Vec::new();
    let mut push = |intent, flow: Flow| {
        out.push(Case {
            entry: n.clone(),
            intent,
            flow,
        })
    };
    for v6 in [false, true] {
        let Some(m) = matching_flow(e, v6) else {
            // Not covered in this family: the same flow in this family is dropped.
            let zone = *e.zone.get_ref();
            let from = zone_host(zone).unwrap();
            let seg = zone_segment(zone);
            let dst = if e.destinations().is_empty() {
                a_addr(seg, v6)
            } else {
                let other = matching_flow(e, !v6).expect("covers some family");
                let h = owner(other.dst);
                addrs(h, segment_of(other.dst), v6)[0]
            };
            push(
                Intent::NotThisEntry,
                Flow {
                    label: format!("{n} {}: family not covered", family(v6)),
                    from,
                    src: addrs(from, seg, v6)[0],
                    zone,
                    dst,
                    proto: (*e.protocol.get_ref()).into(),
                    port: e.ports().first().map_or(0, |r| r.lo),
                    reply_observable: true,
                },
            );
            continue;
        };
        push(Intent::Pass, m.clone());

        // Source: the sender's other address, when the entry does not cover it.
        let seg = zone_segment(m.zone);
        for alt in addrs(m.from, seg, v6) {
            if alt != m.src && !in_prefixes(e.sources.get_ref(), alt) {
                push(
                    Intent::NotThisEntry,
                    Flow {
                        label: format!("{}: source {alt}", m.label),
                        src: alt,
                        ..m.clone()
                    },
                );
            }
        }
        if m.proto != Proto::Icmp {
            // Port outside the entry.
            let p = port_outside(cfg, e, &m);
            push(
                Intent::NotThisEntry,
                Flow {
                    label: format!("{}: port {p}", m.label),
                    port: p,
                    ..m.clone()
                },
            );
            // The other transport protocol on the same port.
            let other = if m.proto == Proto::Tcp {
                Proto::Udp
            } else {
                Proto::Tcp
            };
            push(
                Intent::NotThisEntry,
                Flow {
                    label: format!("{}: {other:?} instead of {:?}", m.label, m.proto),
                    proto: other,
                    ..m.clone()
                },
            );
        }
        if !e.destinations().is_empty() {
            // A destination outside the entry: A's own address on the segment of the
            // destination, then A's other addresses.
            let first = segment_of(m.dst);
            let outside = std::iter::once(first)
                .chain(Segment::ALL)
                .filter_map(|s| Host::A.ip(s, v6))
                .find(|a| !in_prefixes(e.destinations(), *a))
                .expect("some address of A is outside the destination");
            push(
                Intent::NotThisEntry,
                Flow {
                    label: format!("{}: destination {outside}", m.label),
                    dst: outside,
                    ..m.clone()
                },
            );
        }
    }
    out
}

/// The host used to send an entry's flow from a zone it does not name.
fn wrong_zone_host(zone: ZoneName) -> Host {
    [Host::Mgmt, Host::Carrier, Host::Pbx]
        .into_iter()
        .find(|&h| host_zone(h) != zone)
        .unwrap()
}

/// The matching flow, with the same source address, arriving on another zone's interface.
fn zone_cases(e: &AllowEntry) -> Vec<Case> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let Some(m) = matching_flow(e, v6) else {
            continue;
        };
        let from = wrong_zone_host(m.zone);
        let zone = host_zone(from);
        out.push(Case {
            entry: name(e).to_owned(),
            intent: Intent::NotThisEntry,
            flow: Flow {
                label: format!("{}: source {} arriving from zone {zone}", m.label, m.src),
                from,
                zone,
                // A routes UDP nowhere back, so the listener is the observation; a TCP
                // SYN-ACK or an echo reply goes to the address's real owner.
                reply_observable: m.proto == Proto::Udp,
                ..m
            },
        });
    }
    out
}

// ----- running probes -----------------------------------------------------------------------

/// A lab with appliance A running `config/lab.toml`, plus listeners created on demand (they
/// are dropped before the lab: fields drop before the `Lab` they borrow).
struct Rig<'lab> {
    lab: &'lab Lab,
    app: Appliance<'lab>,
    cfg: Config,
    tcp: RefCell<HashMap<(IpAddr, u16), TcpProbeListener>>,
    udp: RefCell<HashMap<(IpAddr, u16), UdpProbeListener>>,
    failures: RefCell<Vec<String>>,
}

impl std::fmt::Debug for Rig<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rig").field("app", &self.app).finish()
    }
}

impl<'lab> Rig<'lab> {
    fn start(lab: &'lab Lab) -> Rig<'lab> {
        let cfg = config();
        // Without the proxy's listen addresses: its sockets would take the ports the probes
        // listen on (SIP through the proxy is hil-tests/tests/sip_calls.rs).
        let text: String = std::fs::read_to_string(CONFIG)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("listen = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let app = Appliance::start(lab, Host::A, &text).expect("callgated starts");
        let rig = Rig {
            lab,
            app,
            cfg,
            tcp: RefCell::default(),
            udp: RefCell::default(),
            failures: RefCell::default(),
        };
        // The daemon answers before (or while) it applies the config: wait for every entry.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = rig.counters();
            let missing: Vec<_> = accepting_rules(&rig.cfg)
                .into_iter()
                .filter(|r| !c.contains_key(&(r.0, r.1.clone())))
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rules missing from the kernel: {missing:?}\n{}\nlog:\n{}",
                rig.app.ruleset(),
                rig.app.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        rig
    }

    /// Packets per (chain, rule comment), for the whole table in one `nft` call.
    fn counters(&self) -> BTreeMap<(&'static str, String), u64> {
        let out = self
            .app
            .nft(&["-j", "list", "table", "inet", "callgate"])
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let mut m = BTreeMap::new();
        for r in v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
        {
            let chain: &'static str = match r["chain"].as_str() {
                Some("input") => "input",
                Some("forward") => "forward",
                Some("output") => "output",
                Some("allow_dst") => "allow_dst",
                _ => continue,
            };
            let Some(comment) = r["comment"].as_str() else {
                continue;
            };
            let n: u64 = r["expr"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("counter").and_then(|c| c["packets"].as_u64()))
                .sum();
            *m.entry((chain, comment.to_owned())).or_insert(0) += n;
        }
        m
    }

    fn tcp_listener(&self, dst: IpAddr, port: u16) -> std::cell::RefMut<'_, TcpProbeListener> {
        std::cell::RefMut::map(self.tcp.borrow_mut(), |m| {
            m.entry((dst, port)).or_insert_with(|| {
                self.lab
                    .ns(owner(dst))
                    .tcp_listen(dst, port)
                    .unwrap_or_else(|e| panic!("tcp listen {dst}:{port}: {e}"))
            })
        })
    }

    fn udp_listener(&self, dst: IpAddr, port: u16) -> std::cell::RefMut<'_, UdpProbeListener> {
        std::cell::RefMut::map(self.udp.borrow_mut(), |m| {
            m.entry((dst, port)).or_insert_with(|| {
                self.lab
                    .ns(owner(dst))
                    .udp_listen_silent(dst, port)
                    .unwrap_or_else(|e| panic!("udp listen {dst}:{port}: {e}"))
            })
        })
    }

    /// Sends `f` and reports whether it arrived (TCP: handshake completed and the listener
    /// accepted it; UDP: the listener got the token; ICMP: ping answered).
    fn send(&self, f: &Flow, wait: Duration) -> bool {
        let ns = self.lab.ns(f.from);
        match f.proto {
            Proto::Tcp => {
                let before = self.tcp_listener(f.dst, f.port).peers().len();
                let connected = ns.tcp_connect(Some(f.src), f.dst, f.port, wait);
                let deadline = Instant::now() + if connected { PASS_WAIT } else { Duration::ZERO };
                loop {
                    let accepted = self.tcp_listener(f.dst, f.port).peers()[before..]
                        .iter()
                        .any(|p| p.ip() == f.src);
                    if accepted || Instant::now() >= deadline {
                        return connected && accepted;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Proto::Udp => {
                // Create the listener before sending.
                drop(self.udp_listener(f.dst, f.port));
                let t = Token::new();
                assert!(
                    ns.udp_send(Some(f.src), f.dst, f.port, &t),
                    "{}: send failed",
                    f.label
                );
                self.udp_listener(f.dst, f.port).wait_for(&t, wait)
            }
            Proto::Icmp => ns.ping(Some(f.src), f.dst, wait),
        }
    }

    fn fail(&self, msg: String) {
        eprintln!("FAIL {msg}");
        self.failures.borrow_mut().push(msg);
    }

    /// Runs one case and records every way the system disagrees with the model.
    fn check(&self, c: &Case) {
        let f = &c.flow;
        let want = expected(&self.cfg, f);
        // The derivation itself must be right: the match hits the entry, a variation not.
        match c.intent {
            Intent::Pass => assert_eq!(
                want.as_ref().map(|r| r.1.as_str()),
                Some(c.entry.as_str()),
                "case derivation: {} should match its own entry",
                f.label
            ),
            Intent::NotThisEntry => assert_ne!(
                want.as_ref().map(|r| r.1.as_str()),
                Some(c.entry.as_str()),
                "case derivation: {} should not match its entry",
                f.label
            ),
        }
        let before = self.counters();
        let started = Instant::now();
        // A flow whose answer goes elsewhere cannot be seen passing: don't wait for it.
        let wait = if want.is_some() && f.reply_observable {
            PASS_WAIT
        } else {
            DROP_WAIT
        };
        let arrived = self.send(f, wait);
        let took = started.elapsed();
        // A dropped packet was counted when it was dropped; a passed one before it arrived.
        let after = self.counters();
        let delta = |r: &(&'static str, String)| {
            after.get(r).copied().unwrap_or(0) - before.get(r).copied().unwrap_or(0)
        };
        let verdict = match &want {
            Some(r) => format!("accepted by {}/{}", r.0, r.1),
            None => "dropped".to_owned(),
        };
        let dropped = delta(&(drop_chain(f), "default-drop".to_owned()));
        eprintln!(
            "{:<70} expect {verdict:<32} arrived={arrived} default-drop+{dropped} ({} ms)",
            f.label,
            took.as_millis()
        );
        let mut problems = Vec::new();
        if f.reply_observable && arrived != want.is_some() {
            problems.push(if arrived {
                "the flow arrived".to_owned()
            } else {
                "the flow did not arrive".to_owned()
            });
        }
        if !f.reply_observable && want.is_none() && arrived {
            problems.push("the flow arrived".to_owned());
        }
        for r in accepting_rules(&self.cfg) {
            let d = delta(&r);
            let hit = want.as_ref() == Some(&r);
            if hit && d == 0 {
                problems.push(format!("counter {}/{} did not move", r.0, r.1));
            }
            if !hit && d != 0 {
                problems.push(format!("counter {}/{} moved by {d}", r.0, r.1));
            }
        }
        if want.is_none() && dropped == 0 {
            let chain = drop_chain(f);
            problems.push(format!("counter {chain}/default-drop did not move"));
        }
        if !problems.is_empty() {
            self.fail(format!(
                "{} ({:?} {} -> {}:{} from {:?}, zone {}): expected {verdict}, but {}",
                f.label,
                f.proto,
                f.src,
                f.dst,
                f.port,
                f.from,
                f.zone,
                problems.join("; ")
            ));
        }
    }

    /// Panics with every recorded failure and the ruleset (with counters).
    fn finish(&self) {
        // The bulk reader agrees with the fixture's per-entry reader.
        let c = self.counters();
        for e in &self.cfg.allow {
            let chain = if e.destinations().is_empty() {
                "input"
            } else {
                "allow_dst"
            };
            let k = (chain, name(e).to_owned());
            let fixture = self.app.packets(chain, name(e));
            // Counters only grow: the fixture's read is the later one.
            assert!(
                fixture >= c.get(&k).copied().unwrap_or(0),
                "counter readers disagree on {k:?}"
            );
        }
        let failures = self.failures.borrow();
        assert!(
            failures.is_empty(),
            "{} case(s) failed:\n  {}\n\nruleset:\n{}",
            failures.len(),
            failures.join("\n  "),
            self.app.ruleset()
        );
    }
}

fn lab() -> Lab {
    Lab::start(&HOSTS).expect("lab starts")
}

fn run_matrix(protocol: Protocol) {
    let lab = lab();
    let rig = Rig::start(&lab);
    let mut n = 0;
    for e in rig.cfg.allow.clone() {
        if *e.protocol.get_ref() != protocol {
            continue;
        }
        for c in matrix_cases(&rig.cfg, &e) {
            rig.check(&c);
            n += 1;
        }
    }
    eprintln!("{n} {} cases", protocol.as_str());
    rig.finish();
}

// ----- the tests ----------------------------------------------------------------------------

/// Without a lab: every allow entry of the config yields a passing case and at least one
/// variation that must be dropped, so a new entry the derivation cannot handle fails here.
#[test]
fn every_allow_entry_has_cases() {
    let cfg = config();
    assert!(!cfg.allow.is_empty());
    let mut protocols = BTreeSet::new();
    let mut families = BTreeSet::new();
    for e in &cfg.allow {
        let cases = matrix_cases(&cfg, e);
        let passes: Vec<_> = cases.iter().filter(|c| c.intent == Intent::Pass).collect();
        assert!(!passes.is_empty(), "{}: no passing case", name(e));
        assert!(
            cases.iter().any(|c| c.intent == Intent::NotThisEntry),
            "{}: no negative case",
            name(e)
        );
        assert!(!zone_cases(e).is_empty(), "{}: no zone case", name(e));
        for c in passes {
            assert_eq!(
                expected(&cfg, &c.flow).map(|r| r.1),
                Some(name(e).to_owned()),
                "{}",
                c.flow.label
            );
            protocols.insert(format!("{:?}", c.flow.proto));
            families.insert((format!("{:?}", c.flow.proto), c.flow.src.is_ipv6()));
        }
        // A family with sources is tested in that family (dual-stack entries: both).
        for v6 in [false, true] {
            let has = e.sources.get_ref().iter().any(|p| p.is_ipv4() != v6);
            let dst_ok =
                e.destinations().is_empty() || e.destinations().iter().any(|p| p.is_ipv4() != v6);
            if has && dst_ok {
                assert!(matching_flow(e, v6).is_some(), "{} {}", name(e), family(v6));
            }
        }
    }
    // The lab config exercises TCP and UDP over both families and ICMP over IPv4 (ICMPv6 is
    // the ping service, see services_reach_the_appliance_from_their_zones_only).
    for want in [
        ("Tcp", false),
        ("Tcp", true),
        ("Udp", false),
        ("Udp", true),
        ("Icmp", false),
    ] {
        assert!(
            families.contains(&(want.0.to_owned(), want.1)),
            "no passing {want:?} case: {families:?}"
        );
    }
}

/// TCP entries: match (both families), source, port, protocol.
#[test]
fn tcp_allow_entries_admit_exactly_their_flows() {
    run_matrix(Protocol::Tcp);
}

/// UDP entries: match (both families), source, port, protocol, destination (forwarded).
#[test]
fn udp_allow_entries_admit_exactly_their_flows() {
    run_matrix(Protocol::Udp);
}

/// ICMP entries: match, source outside the prefix, address family.
#[test]
fn icmp_allow_entries_admit_exactly_their_flows() {
    run_matrix(Protocol::Icmp);
}

/// Every entry's matching flow, with its own source address, arriving on another zone's
/// interface (the address is borrowed by a host in that zone) is not admitted by the entry.
#[test]
fn allow_entries_are_bound_to_their_zone() {
    let lab = lab();
    let rig = Rig::start(&lab);
    let cases: Vec<Case> = rig.cfg.allow.iter().flat_map(zone_cases).collect();
    let mut added = BTreeSet::new();
    for c in &cases {
        let f = &c.flow;
        let ns = lab.ns(f.from);
        // Borrow the source address (never a default source) and route the destination via A.
        if added.insert((f.from, f.src)) {
            let a = if f.src.is_ipv6() {
                format!("{}/128", f.src)
            } else {
                format!("{}/32", f.src)
            };
            let mut args = vec!["addr", "add", &a, "dev", iface::ETH];
            if f.src.is_ipv6() {
                args.extend(["nodad", "preferred_lft", "0"]);
            }
            ns.ip(&args).unwrap();
        }
        let gw = a_addr(f.from.segments()[0], f.dst.is_ipv6()).to_string();
        let route = if f.dst.is_ipv6() {
            format!("{}/128", f.dst)
        } else {
            format!("{}/32", f.dst)
        };
        ns.ip(&["route", "replace", &route, "via", &gw, "dev", iface::ETH])
            .unwrap();
        rig.check(c);
    }
    eprintln!("{} zone cases", cases.len());
    rig.finish();
}

/// SSH (TCP 22) and ping (ICMP and ICMPv6) reach A from mgmt, not from the carrier.
#[test]
fn services_reach_the_appliance_from_their_zones_only() {
    let lab = lab();
    let rig = Rig::start(&lab);
    let ssh = rig.cfg.ssh_port();
    let mut cases = Vec::new();
    for v6 in [false, true] {
        let mgmt = |label: &str, proto, port| Flow {
            label: format!("{label} {}", family(v6)),
            from: Host::Mgmt,
            src: Host::Mgmt.ip(Segment::Mgmt, v6).unwrap(),
            zone: ZoneName::Mgmt,
            dst: a_addr(Segment::Mgmt, v6),
            proto,
            port,
            reply_observable: true,
        };
        let carrier = |label: &str, proto, port| Flow {
            label: format!("{label} {}", family(v6)),
            from: Host::Carrier,
            src: Host::Carrier.ip(Segment::Wan, v6).unwrap(),
            zone: ZoneName::Wan,
            dst: a_addr(Segment::Wan, v6),
            proto,
            port,
            reply_observable: true,
        };
        cases.push((Some("service:ssh"), mgmt("ssh from mgmt", Proto::Tcp, ssh)));
        cases.push((None, carrier("ssh from carrier", Proto::Tcp, ssh)));
        cases.push((Some("service:ping"), mgmt("ping from mgmt", Proto::Icmp, 0)));
        if v6 {
            // (IPv4 ping from the carrier is the carrier-ping entry.)
            cases.push((None, carrier("ping from carrier", Proto::Icmp, 0)));
        }
    }
    for (want, flow) in cases {
        assert_eq!(
            expected(&rig.cfg, &flow).map(|r| r.1),
            want.map(str::to_owned),
            "{}: the config no longer says so",
            flow.label
        );
        let entry = want.unwrap_or("-").to_owned();
        let intent = if want.is_some() {
            Intent::Pass
        } else {
            Intent::NotThisEntry
        };
        rig.check(&Case {
            entry,
            intent,
            flow,
        });
    }
    rig.finish();
}
