//! Config → intended ruleset. Pure: no I/O, deterministic output for a given config.

use callgate_config::{Config, PortRange, Prefix, Protocol, ZoneName};
use ipnet::IpNet;

use crate::model::*;

/// Chain that entries with a `destination` live in; `input` and `forward` both jump to it.
pub const ALLOW_DST_CHAIN: &str = "allow_dst";

const ND_IN: [&str; 4] = [
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-router-solicit",
    "nd-router-advert",
];
const ND_OUT: [&str; 3] = [
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-router-solicit",
];

/// Multicast listener discovery (hop limit 1): switches with MLD snooping need the reports,
/// or neighbour discovery's multicast stops reaching the appliance.
const MLD_IN: [&str; 1] = ["mld-listener-query"];
const MLD_OUT: [&str; 2] = ["mld-listener-report", "mld2-listener-report"];

fn rule(comment: impl Into<String>, conds: Vec<Cond>, verdict: Verdict) -> RuleDef {
    RuleDef {
        comment: comment.into(),
        conds,
        verdict,
    }
}

fn ifnames(cfg: &Config, zone: ZoneName) -> Vec<String> {
    cfg.zones
        .interfaces(zone)
        .iter()
        .map(|i| i.as_str().to_owned())
        .collect()
}

fn zone_ifaces(cfg: &Config, zones: &[ZoneName]) -> Vec<String> {
    let mut out: Vec<String> = zones.iter().flat_map(|z| ifnames(cfg, *z)).collect();
    out.sort();
    out.dedup();
    out
}

/// The set name stem for an entry (`-` is not valid in nft identifiers; names never carry `_`,
/// so the mapping is one to one).
fn stem(prefix: &str, name: &str) -> String {
    format!("{prefix}_{}", name.replace('-', "_"))
}

/// Prefixes of one family, sorted, with prefixes covered by another removed (nft refuses
/// overlapping intervals in a set without auto-merge).
pub fn normalize_prefixes(prefixes: &[Prefix], v6: bool) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = prefixes
        .iter()
        .filter(|p| p.is_ipv4() != v6)
        .map(|p| p.net())
        .collect();
    nets.sort_by_key(|n| (n.prefix_len(), n.network()));
    let mut kept: Vec<IpNet> = Vec::with_capacity(nets.len());
    // Shorter prefixes first: anything contained in an already kept prefix is dropped.
    // A sorted vector of kept networks keyed by address lets us test containment by looking
    // at the nearest kept network at or below the address.
    let mut index: std::collections::BTreeMap<IpNetKey, IpNet> = std::collections::BTreeMap::new();
    for n in nets {
        let key = IpNetKey::of(&n);
        let covered = index
            .range(..=key)
            .next_back()
            .is_some_and(|(_, k)| k.contains(&n));
        if !covered {
            index.insert(key, n);
        }
    }
    kept.extend(index.into_values());
    kept
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct IpNetKey(u128);

impl IpNetKey {
    fn of(n: &IpNet) -> Self {
        IpNetKey(match n.network() {
            std::net::IpAddr::V4(a) => u128::from(u32::from(a)),
            std::net::IpAddr::V6(a) => u128::from(a),
        })
    }
}

/// Ports sorted with overlapping and adjacent ranges merged.
pub fn normalize_ports(ports: &[PortRange]) -> Vec<PortRange> {
    let mut v = ports.to_vec();
    v.sort();
    let mut out: Vec<PortRange> = Vec::with_capacity(v.len());
    for p in v {
        match out.last_mut() {
            Some(last) if u32::from(p.lo) <= u32::from(last.hi) + 1 => {
                last.hi = last.hi.max(p.hi);
            }
            _ => out.push(p),
        }
    }
    out
}

fn proto_conds(proto: Protocol, v6: bool, ports_set: Option<&str>) -> Vec<Cond> {
    match proto {
        Protocol::Icmp if v6 => vec![
            Cond::L4Proto(vec!["ipv6-icmp"]),
            Cond::Icmpv6Type(vec!["echo-request"]),
        ],
        Protocol::Icmp => vec![
            Cond::L4Proto(vec!["icmp"]),
            Cond::IcmpType(vec!["echo-request"]),
        ],
        Protocol::Tcp | Protocol::Udp => {
            let mut c = vec![Cond::L4Proto(vec![proto.as_str()])];
            if let Some(set) = ports_set {
                c.push(Cond::DportIn(set.to_owned()));
            }
            c
        }
    }
}

fn dynamic_sets() -> Vec<SetDef> {
    [
        (BLOCK4, SetKind::Block4),
        (BLOCK6, SetKind::Block6),
        (PINHOLE4_HOST, SetKind::Pinhole4Host),
        (PINHOLE4, SetKind::Pinhole4),
        (PINHOLE6_HOST, SetKind::Pinhole6Host),
        (PINHOLE6, SetKind::Pinhole6),
    ]
    .into_iter()
    .map(|(name, kind)| SetDef {
        name: name.to_owned(),
        kind,
        elems: Vec::new(),
    })
    .collect()
}

/// Accepts on-link ICMPv6 control traffic of the given types (neighbour discovery carries
/// hop limit 255, MLD hop limit 1: anything else was routed and is not ours to accept).
fn link_local_icmpv6(comment: &str, types: &[&'static str], hop_limit: u8) -> RuleDef {
    rule(
        comment,
        vec![
            Cond::L4Proto(vec!["ipv6-icmp"]),
            Cond::Icmpv6Type(types.to_vec()),
            Cond::HopLimit(hop_limit),
        ],
        Verdict::Accept,
    )
}

/// Rules every chain starts with.
fn preamble(hook: Hook) -> Vec<RuleDef> {
    let mut r = Vec::new();
    match hook {
        Hook::Input => r.push(rule(
            "builtin:loopback",
            vec![Cond::Iifname(vec!["lo".into()])],
            Verdict::Accept,
        )),
        Hook::Output => r.push(rule(
            "builtin:loopback",
            vec![Cond::Oifname(vec!["lo".into()])],
            Verdict::Accept,
        )),
        Hook::Forward => {}
    }
    if hook != Hook::Output {
        r.push(rule(
            "builtin:blocklist",
            vec![Cond::SaddrIn {
                v6: false,
                set: BLOCK4.into(),
            }],
            Verdict::Drop,
        ));
        r.push(rule(
            "builtin:blocklist",
            vec![Cond::SaddrIn {
                v6: true,
                set: BLOCK6.into(),
            }],
            Verdict::Drop,
        ));
    }
    r.push(rule(
        "builtin:invalid",
        vec![Cond::CtState(vec!["invalid"])],
        Verdict::Drop,
    ));
    r.push(rule(
        "builtin:established",
        vec![Cond::CtState(vec!["established", "related"])],
        Verdict::Accept,
    ));
    match hook {
        Hook::Input => {
            r.push(link_local_icmpv6("builtin:ipv6-nd", &ND_IN, 255));
            r.push(link_local_icmpv6("builtin:ipv6-mld", &MLD_IN, 1));
        }
        Hook::Output => {
            r.push(link_local_icmpv6("builtin:ipv6-nd", &ND_OUT, 255));
            r.push(link_local_icmpv6("builtin:ipv6-mld", &MLD_OUT, 1));
            r.push(rule(
                "builtin:ping-out",
                vec![
                    Cond::L4Proto(vec!["icmp"]),
                    Cond::IcmpType(vec!["echo-request"]),
                ],
                Verdict::Accept,
            ));
            r.push(rule(
                "builtin:ping-out",
                vec![
                    Cond::L4Proto(vec!["ipv6-icmp"]),
                    Cond::Icmpv6Type(vec!["echo-request"]),
                ],
                Verdict::Accept,
            ));
        }
        Hook::Forward => {}
    }
    r
}

/// Media pinholes: forwarded flows only (media never goes to the appliance itself), each
/// from its source to its destination address, protocol and port. Per family one rule for
/// the hash set (sources that are one address, nearly every pinhole, so first) and one for
/// the interval set (source prefixes).
fn pinhole_rules() -> Vec<RuleDef> {
    [
        (false, PINHOLE4_HOST),
        (false, PINHOLE4),
        (true, PINHOLE6_HOST),
        (true, PINHOLE6),
    ]
    .into_iter()
    .map(|(v6, set)| {
        rule(
            "builtin:pinhole",
            vec![Cond::PinholeIn {
                v6,
                set: set.into(),
            }],
            Verdict::Accept,
        )
    })
    .collect()
}

fn default_drop() -> RuleDef {
    rule("default-drop", vec![], Verdict::Drop)
}

/// Service rules (input chain): which zones may reach the appliance's own services.
fn service_rules(cfg: &Config, only: Option<&[&str]>) -> Vec<RuleDef> {
    let mut out = Vec::new();
    let wanted = |n: &str| only.is_none_or(|o| o.contains(&n));
    let s = &cfg.services;
    let entries: [(&str, &Option<callgate_config::Service>); 4] = [
        ("ssh", &s.ssh),
        ("sip", &s.sip),
        ("heartbeat", &s.heartbeat),
        ("ping", &s.ping),
    ];
    for (name, svc) in entries {
        let Some(svc) = svc else { continue };
        if !wanted(name) {
            continue;
        }
        let zones: Vec<ZoneName> = svc.zone_names().into_iter().collect();
        let ifaces = zone_ifaces(cfg, &zones);
        if ifaces.is_empty() {
            continue;
        }
        let comment = format!("service:{name}");
        let iif = Cond::Iifname(ifaces);
        match name {
            "ssh" => out.push(rule(
                comment,
                vec![iif, Cond::L4Proto(vec!["tcp"]), Cond::Dport(cfg.ssh_port())],
                Verdict::Accept,
            )),
            "sip" => out.push(rule(
                comment,
                vec![
                    iif,
                    Cond::L4Proto(vec!["tcp", "udp"]),
                    Cond::Dport(cfg.sip_port()),
                ],
                Verdict::Accept,
            )),
            "heartbeat" => out.push(rule(
                comment,
                vec![
                    iif,
                    Cond::L4Proto(vec!["udp"]),
                    Cond::Dport(cfg.heartbeat_port()),
                ],
                Verdict::Accept,
            )),
            _ => {
                out.push(rule(
                    comment.clone(),
                    vec![
                        iif.clone(),
                        Cond::L4Proto(vec!["icmp"]),
                        Cond::IcmpType(vec!["echo-request"]),
                    ],
                    Verdict::Accept,
                ));
                out.push(rule(
                    comment,
                    vec![
                        iif,
                        Cond::L4Proto(vec!["ipv6-icmp"]),
                        Cond::Icmpv6Type(vec!["echo-request"]),
                    ],
                    Verdict::Accept,
                ));
            }
        }
    }
    out
}

fn prefix_set(name: String, nets: Vec<IpNet>, v6: bool) -> SetDef {
    SetDef {
        name,
        kind: if v6 {
            SetKind::Ipv6Prefixes
        } else {
            SetKind::Ipv4Prefixes
        },
        elems: nets.into_iter().map(Elem::Net).collect(),
    }
}

/// Adds the ports set of an entry (none for ICMP) and returns its name.
fn ports_set(
    sets: &mut Vec<SetDef>,
    stem: &str,
    proto: Protocol,
    ports: &[PortRange],
) -> Option<String> {
    if proto == Protocol::Icmp {
        return None;
    }
    let name = format!("{stem}_p");
    sets.push(SetDef {
        name: name.clone(),
        kind: SetKind::Ports,
        elems: normalize_ports(ports)
            .into_iter()
            .map(Elem::Ports)
            .collect(),
    });
    Some(name)
}

/// The pair's heartbeat: on each path's interfaces, only from and to the peer's
/// heartbeat addresses (`[pair]`; nothing when the appliance runs alone).
fn pair_rules(
    cfg: &Config,
    sets: &mut Vec<SetDef>,
    input: &mut Vec<RuleDef>,
    output: &mut Vec<RuleDef>,
) {
    let Some(pair) = &cfg.pair else { return };
    let paths = pair.paths(&cfg.appliance.name);
    let zones: Vec<ZoneName> = paths.iter().map(|p| p.zone).collect();
    let ifaces = zone_ifaces(cfg, &zones);
    if ifaces.is_empty() {
        return;
    }
    for v6 in [false, true] {
        let peers: Vec<IpNet> = paths
            .iter()
            .filter(|p| p.peer.is_ipv6() == v6)
            .map(|p| IpNet::from(p.peer))
            .collect();
        if peers.is_empty() {
            continue;
        }
        let set = format!("pair_peer{}", if v6 { "6" } else { "4" });
        sets.push(prefix_set(set.clone(), peers, v6));
        // The heartbeat (UDP) and the sync channel (TCP, the next port): only with the peer.
        let sync_port = cfg.heartbeat_port().saturating_add(1);
        for (name, l4, port) in [
            ("pair:heartbeat", "udp", cfg.heartbeat_port()),
            ("pair:sync", "tcp", sync_port),
        ] {
            input.push(rule(
                name,
                vec![
                    Cond::Iifname(ifaces.clone()),
                    Cond::SaddrIn {
                        v6,
                        set: set.clone(),
                    },
                    Cond::L4Proto(vec![l4]),
                    Cond::Dport(port),
                ],
                Verdict::Accept,
            ));
            output.push(rule(
                name,
                vec![
                    Cond::Oifname(ifaces.clone()),
                    Cond::DaddrIn {
                        v6,
                        set: set.clone(),
                    },
                    Cond::L4Proto(vec![l4]),
                    Cond::Dport(port),
                ],
                Verdict::Accept,
            ));
        }
    }
}

/// The transcript intake (`[intake]`): TCP to its listen address and port, only on the
/// private zone's interfaces and only from its allowed sources. Nothing opens it from any
/// other zone.
fn intake_rules(cfg: &Config, sets: &mut Vec<SetDef>, input: &mut Vec<RuleDef>) {
    let Some(intake) = &cfg.intake else { return };
    let ifaces = ifnames(cfg, ZoneName::Private);
    if ifaces.is_empty() {
        return;
    }
    let listen = intake.listen();
    let v6 = listen.is_ipv6();
    let srcs = normalize_prefixes(intake.sources(), v6);
    if srcs.is_empty() {
        return;
    }
    let fam = if v6 { "6" } else { "4" };
    let (src_set, dst_set) = (format!("intake_s{fam}"), format!("intake_d{fam}"));
    sets.push(prefix_set(src_set.clone(), srcs, v6));
    sets.push(prefix_set(
        dst_set.clone(),
        vec![IpNet::from(listen.ip())],
        v6,
    ));
    input.push(rule(
        "service:intake",
        vec![
            Cond::Iifname(ifaces),
            Cond::SaddrIn { v6, set: src_set },
            Cond::DaddrIn { v6, set: dst_set },
            Cond::L4Proto(vec!["tcp"]),
            Cond::Dport(listen.port()),
        ],
        Verdict::Accept,
    ));
}

/// Renders the full policy of a config.
pub fn render(cfg: &Config) -> Ruleset {
    let mut sets = dynamic_sets();
    let mut input = preamble(Hook::Input);
    input.extend(service_rules(cfg, None));
    let mut forward = preamble(Hook::Forward);
    forward.extend(pinhole_rules());
    let mut output = preamble(Hook::Output);
    let mut allow_dst = Vec::new();

    for e in &cfg.allow {
        let name = e.name.get_ref().as_str();
        let proto = *e.protocol.get_ref();
        let st = stem("a", name);
        let ports_set = ports_set(&mut sets, &st, proto, e.ports());
        let iif = Cond::Iifname(ifnames(cfg, *e.zone.get_ref()));
        for v6 in [false, true] {
            let srcs = normalize_prefixes(e.sources.get_ref(), v6);
            if srcs.is_empty() {
                continue;
            }
            let fam = if v6 { "6" } else { "4" };
            let src_set = format!("{st}_s{fam}");
            sets.push(prefix_set(src_set.clone(), srcs, v6));
            let mut conds = vec![iif.clone(), Cond::SaddrIn { v6, set: src_set }];
            let dsts = normalize_prefixes(e.destinations(), v6);
            let has_dst = !e.destinations().is_empty();
            if has_dst {
                if dsts.is_empty() {
                    // This family has sources but no destination: nothing to allow.
                    sets.pop();
                    continue;
                }
                let dst_set = format!("{st}_d{fam}");
                sets.push(prefix_set(dst_set.clone(), dsts, v6));
                conds.push(Cond::DaddrIn { v6, set: dst_set });
            }
            conds.extend(proto_conds(proto, v6, ports_set.as_deref()));
            let r = rule(name, conds, Verdict::Accept);
            if has_dst {
                allow_dst.push(r);
            } else {
                input.push(r);
            }
        }
    }

    for e in &cfg.egress {
        let name = e.name.get_ref().as_str();
        let proto = *e.protocol.get_ref();
        let st = stem("e", name);
        let ports_set = ports_set(&mut sets, &st, proto, e.ports());
        let oif = Cond::Oifname(ifnames(cfg, *e.zone.get_ref()));
        for v6 in [false, true] {
            let dsts = normalize_prefixes(e.destinations.get_ref(), v6);
            if dsts.is_empty() {
                continue;
            }
            let fam = if v6 { "6" } else { "4" };
            let set = format!("{st}_d{fam}");
            sets.push(prefix_set(set.clone(), dsts, v6));
            let mut conds = vec![oif.clone(), Cond::DaddrIn { v6, set }];
            conds.extend(proto_conds(proto, v6, ports_set.as_deref()));
            output.push(rule(name, conds, Verdict::Accept));
        }
    }

    pair_rules(cfg, &mut sets, &mut input, &mut output);
    intake_rules(cfg, &mut sets, &mut input);

    let mut chains = Vec::new();
    if !allow_dst.is_empty() {
        let jump = rule(
            "builtin:allow-dst",
            vec![],
            Verdict::Jump(ALLOW_DST_CHAIN.into()),
        );
        input.push(jump.clone());
        forward.push(jump);
        chains.push(ChainDef {
            name: ALLOW_DST_CHAIN.into(),
            hook: None,
            rules: allow_dst,
        });
    }
    input.push(default_drop());
    forward.push(default_drop());
    output.push(default_drop());
    chains.insert(
        0,
        ChainDef {
            name: "input".into(),
            hook: Some(Hook::Input),
            rules: input,
        },
    );
    chains.insert(
        1,
        ChainDef {
            name: "forward".into(),
            hook: Some(Hook::Forward),
            rules: forward,
        },
    );
    chains.insert(
        2,
        ChainDef {
            name: "output".into(),
            hook: Some(Hook::Output),
            rules: output,
        },
    );
    Ruleset { sets, chains }
}

/// The boot-time baseline: management SSH, the sync link (heartbeat) and ping on mgmt/sync,
/// nothing else; forwarding dropped. With no config at all, only loopback and replies.
pub fn render_baseline(cfg: Option<&Config>) -> Ruleset {
    let mut input = preamble(Hook::Input);
    let mut output = preamble(Hook::Output);
    if let Some(cfg) = cfg {
        input.extend(service_rules(cfg, Some(&["ssh", "heartbeat"])));
        let mgmt_sync = zone_ifaces(cfg, &[ZoneName::Mgmt, ZoneName::Sync]);
        if !mgmt_sync.is_empty() {
            for (v6, l4, ty) in [(false, "icmp", true), (true, "ipv6-icmp", false)] {
                let _ = v6;
                let t = if ty {
                    Cond::IcmpType(vec!["echo-request"])
                } else {
                    Cond::Icmpv6Type(vec!["echo-request"])
                };
                input.push(rule(
                    "service:ping",
                    vec![Cond::Iifname(mgmt_sync.clone()), Cond::L4Proto(vec![l4]), t],
                    Verdict::Accept,
                ));
            }
        }
        let sync = ifnames(cfg, ZoneName::Sync);
        if !sync.is_empty() {
            output.push(rule(
                "builtin:heartbeat-out",
                vec![
                    Cond::Oifname(sync),
                    Cond::L4Proto(vec!["udp"]),
                    Cond::Dport(cfg.heartbeat_port()),
                ],
                Verdict::Accept,
            ));
        }
    }
    input.push(default_drop());
    output.push(default_drop());
    Ruleset {
        sets: dynamic_sets(),
        chains: vec![
            ChainDef {
                name: "input".into(),
                hook: Some(Hook::Input),
                rules: input,
            },
            ChainDef {
                name: "forward".into(),
                hook: Some(Hook::Forward),
                rules: preamble(Hook::Forward)
                    .into_iter()
                    .chain([default_drop()])
                    .collect(),
            },
            ChainDef {
                name: "output".into(),
                hook: Some(Hook::Output),
                rules: output,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn lab() -> Config {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml");
        Config::load(&p).unwrap()
    }

    #[test]
    fn every_entry_has_a_named_rule() {
        let cfg = lab();
        let rs = render(&cfg);
        for e in &cfg.allow {
            let n = e.name.get_ref().as_str();
            let count = rs
                .chains
                .iter()
                .flat_map(|c| &c.rules)
                .filter(|r| r.comment == n)
                .count();
            assert!(count >= 1, "no rule for {n}");
        }
        for c in &rs.chains {
            if c.hook.is_some() {
                assert_eq!(c.rules.last().unwrap().comment, "default-drop");
            }
        }
        // v4-only entry gets one rule, not two
        let ping = rs.chains[0]
            .rules
            .iter()
            .filter(|r| r.comment == "carrier-ping")
            .count();
        assert_eq!(ping, 1);
        assert!(rs.chain(ALLOW_DST_CHAIN).is_some());
    }

    #[test]
    fn the_intake_is_open_only_on_the_private_side_from_its_sources() {
        let with = |intake: &str| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab.toml");
            let text = std::fs::read_to_string(&p).unwrap();
            let text = text.split("\n[intake]").next().unwrap().to_owned() + intake;
            render(&Config::parse(&text, &p).unwrap())
        };
        let ca = "-----BEGIN CERTIFICATE-----\nMIIBhTCCASugAwIBAgIUYLbhDRT7KCbvbdl+lXv/IUazMVYwCgYIKoZIzj0EAwIw\nGDEWMBQGA1UEAwwNdGVzdCBmbGVldCBDQTAeFw0yNjEyMDQxNzUzNTRaFw0zNjEy\n-----END CERTIFICATE-----";
        let rs = with(&format!(
            "\n[intake]\nlisten = \"198.51.100.1:8444\"\nsources = [\"198.51.100.10/32\", \"2001:db8:2::10/128\"]\nclient_ca = \"\"\"\n{ca}\n\"\"\"\n"
        ));
        let rules: Vec<&RuleDef> = rs
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .filter(|r| r.comment == "service:intake")
            .collect();
        assert_eq!(rules.len(), 1, "one rule, in the listen address's family");
        let r = rules[0];
        assert_eq!(r.verdict, Verdict::Accept);
        assert!(
            r.conds.contains(&Cond::Iifname(vec!["priv0".into()])),
            "{r:?}"
        );
        assert!(r.conds.contains(&Cond::Dport(8444)), "{r:?}");
        assert!(r.conds.contains(&Cond::L4Proto(vec!["tcp"])), "{r:?}");
        let set = |n: &str| -> Vec<String> {
            rs.set(n)
                .unwrap()
                .elems
                .iter()
                .map(|e| match e {
                    Elem::Net(n) => n.to_string(),
                    other => format!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(set("intake_s4"), ["198.51.100.10/32"]);
        assert_eq!(set("intake_d4"), ["198.51.100.1/32"]);
        assert!(rs.set("intake_s6").is_none());
        // Only the input chain has it, before the default drop.
        let input = rs.chain("input").unwrap();
        let at = input
            .rules
            .iter()
            .position(|r| r.comment == "service:intake");
        assert!(at.is_some_and(|i| i + 1 < input.rules.len()));
        // Without [intake], no rule opens anything for it.
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab-pair-a.toml");
        let rs = render(&Config::load(&p).unwrap());
        assert!(!rs
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .any(|r| r.comment == "service:intake" || r.conds.contains(&Cond::Dport(8444))));
    }

    #[test]
    fn a_pair_admits_heartbeats_only_from_and_to_the_peer() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/lab-pair-a.toml");
        let rs = render(&Config::load(&p).unwrap());
        let set = rs.sets.iter().find(|s| s.name == "pair_peer4").unwrap();
        let peers: Vec<String> = set
            .elems
            .iter()
            .map(|e| match e {
                Elem::Net(n) => n.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(peers, ["198.51.100.2/32", "192.0.2.2/32"]);
        assert!(!rs.sets.iter().any(|s| s.name == "pair_peer6"));
        for (chain, dir) in [("input", "saddr"), ("output", "daddr")] {
            let rules: Vec<&RuleDef> = rs
                .chain(chain)
                .unwrap()
                .rules
                .iter()
                .filter(|r| r.comment == "pair:heartbeat")
                .collect();
            assert_eq!(rules.len(), 1, "{chain}");
            let c = &rules[0].conds;
            let bound = c.iter().any(|c| match c {
                Cond::SaddrIn { set, .. } => dir == "saddr" && set == "pair_peer4",
                Cond::DaddrIn { set, .. } => dir == "daddr" && set == "pair_peer4",
                _ => false,
            });
            assert!(bound, "{chain}: {c:?}");
            assert!(c.contains(&Cond::Dport(5405)), "{chain}: {c:?}");
            let sync = rs
                .chain(chain)
                .unwrap()
                .rules
                .iter()
                .find(|r| r.comment == "pair:sync")
                .unwrap();
            assert!(sync.conds.contains(&Cond::Dport(5406)), "{sync:?}");
            assert!(sync.conds.contains(&Cond::L4Proto(vec!["tcp"])), "{sync:?}");
        }
        // Alone, no pair rules.
        assert!(!render(&lab())
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .any(|r| r.comment.starts_with("pair:")));
    }

    #[test]
    fn pinholes_are_forward_only_and_bound_to_a_source() {
        let rs = render(&lab());
        let pinholes = |chain: &str| -> Vec<&RuleDef> {
            rs.chain(chain)
                .unwrap()
                .rules
                .iter()
                .filter(|r| r.comment == "builtin:pinhole")
                .collect()
        };
        assert!(pinholes("input").is_empty());
        assert!(pinholes("output").is_empty());
        let fwd = pinholes("forward");
        let sets: Vec<(bool, &str)> = fwd
            .iter()
            .map(|r| match r.conds.as_slice() {
                [Cond::PinholeIn { v6, set }] => (*v6, set.as_str()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            sets,
            [
                (false, PINHOLE4_HOST),
                (false, PINHOLE4),
                (true, PINHOLE6_HOST),
                (true, PINHOLE6)
            ]
        );
        assert_eq!(rs.set(PINHOLE6).unwrap().kind, SetKind::Pinhole6);
        assert_eq!(rs.set(PINHOLE4_HOST).unwrap().kind, SetKind::Pinhole4Host);
        assert_eq!(rs.set(PINHOLE6_HOST).unwrap().kind, SetKind::Pinhole6Host);
        assert_eq!(
            SetKind::Pinhole4.type_words(),
            ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"]
        );
        assert_eq!(
            SetKind::Pinhole4Host.type_words(),
            SetKind::Pinhole4.type_words()
        );
        assert_eq!(SetKind::Pinhole6.flags(), ["interval", "timeout"]);
        // exact sources: a hash set (no interval flag)
        assert_eq!(SetKind::Pinhole6Host.flags(), ["timeout"]);
        // the baseline forwards nothing, pinholes included
        let b = render_baseline(Some(&lab()));
        assert!(!b
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .any(|r| r.comment == "builtin:pinhole"));
    }

    #[test]
    fn prefixes_are_deduplicated() {
        let ps: Vec<Prefix> = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.3",
            "192.0.2.0/24",
            "2001:db8::/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let v4 = normalize_prefixes(&ps, false);
        assert_eq!(v4.len(), 2, "{v4:?}");
        assert_eq!(normalize_prefixes(&ps, true).len(), 1);
    }

    #[test]
    fn ports_are_merged() {
        let ps: Vec<PortRange> = ["5060", "5061", "10-20", "15-30", "40"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let n = normalize_ports(&ps);
        assert_eq!(n.len(), 3, "{n:?}");
        assert_eq!(n[0], PortRange { lo: 10, hi: 30 });
        assert_eq!(n[2], PortRange { lo: 5060, hi: 5061 });
    }

    #[test]
    fn baseline_has_ssh_only_on_mgmt() {
        let cfg = lab();
        let b = render_baseline(Some(&cfg));
        let ssh: Vec<_> = b.chains[0]
            .rules
            .iter()
            .filter(|r| r.comment == "service:ssh")
            .collect();
        assert_eq!(ssh.len(), 1);
        assert_eq!(ssh[0].conds[0], Cond::Iifname(vec!["mgmt0".into()]));
        assert!(!b
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .any(|r| r.comment.starts_with("carrier")));
        let none = render_baseline(None);
        assert!(!none.chains[0]
            .rules
            .iter()
            .any(|r| r.comment.starts_with("service:")));
    }
}
