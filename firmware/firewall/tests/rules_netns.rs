#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! System test: `dump_rules` / `dump_chains` / `dump_sets` / `dump_table`
//! against a real kernel, inside a throw-away network namespace
//! (`cgru<pid>x<n>`), the table loaded with `nft -f` and the results
//! compared with what `nft -j list table` says.
//!
//! Needs root, `ip` and `nft`; fails (saying so) when not root. The
//! root namespace's networking is never touched: only `ip netns add/delete`.

use std::fmt::Write as _;
use std::net::UdpSocket;
use std::thread;
use std::time::{Duration, Instant};

use callgate_firewall::netlink::rules::{
    dump_chains, dump_rules, dump_sets, dump_table, KernelChain, KernelRule, KernelSet, KernelTable,
};
use callgate_firewall::netlink::NetlinkError;
use serde_json::Value;

mod support;
use support::{env_or, spaced_prefixes, NetNs};

const RULESET: &str = r#"
table inet callgate {
    set allow4 { type ipv4_addr; flags interval; elements = { 10.0.0.0/8, 192.0.2.0/24 } }
    set ports { type inet_service; flags interval; elements = { 5060, 10000-20000 } }
    set pinhole4 { type ipv4_addr . inet_proto . inet_service; flags timeout; }
    set pinhole6 { type ipv6_addr . inet_proto . inet_service; flags timeout; }
    set block4 { type ipv4_addr; flags timeout; }
    set learned { type ipv4_addr; flags dynamic, timeout; }
    set marks { type mark; flags constant; elements = { 1, 2 } }
    set spans { type ipv4_addr . inet_service; flags interval; elements = { 10.0.0.0/8 . 1-1024 } }
    map portmap { type inet_service : verdict; elements = { 7 : drop } }
    chain input {
        type filter hook input priority 0; policy drop;
        iifname "lo" udp dport 9 counter accept comment "loopback discard"
        ip saddr { 198.51.100.1, 198.51.100.2 } counter drop comment "anonymous set"
        ip saddr @allow4 counter jump allowed comment "named set"
        ip daddr . meta l4proto . th dport @pinhole4 counter accept comment "pinhole"
        ip saddr @block4 drop comment "no counter"
        counter comment "no verdict"
        tcp dport { 22, 80 } counter goto allowed
        th dport vmap @portmap
        counter
    }
    chain forward {
        type filter hook forward priority 0; policy drop;
    }
    chain output {
        type filter hook output priority 0; policy accept;
        counter comment "out"
    }
    chain allowed {
        th dport @ports counter accept comment "ports"
        counter continue
        return
    }
}
table inet other {
    set s { type ipv4_addr; }
    chain input {
        type filter hook input priority 0; policy accept;
        counter comment "other table"
    }
}
table ip callgate {
    chain c { counter comment "ip family"; }
}
"#;

/// `nft -j list table inet callgate`, as its list of objects.
fn nft_list(ns: &NetNs) -> Vec<Value> {
    let out = ns.exec("nft", &["-j", "list", "table", "inet", "callgate"], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["nftables"].as_array().unwrap().clone()
}

fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// The rules nft lists, as `KernelRule`s.
fn nft_rules(objs: &[Value]) -> Vec<KernelRule> {
    objs.iter()
        .filter_map(|o| o.get("rule"))
        .map(|r| {
            let mut rule = KernelRule {
                chain: str_of(r, "chain").unwrap(),
                handle: r["handle"].as_u64().unwrap(),
                comment: str_of(r, "comment").unwrap_or_default(),
                verdict: String::new(),
                packets: 0,
                bytes: 0,
                // what the rule matches is compared in verify_netns.rs
                exprs: Vec::new(),
            };
            for st in r["expr"].as_array().unwrap() {
                let (key, val) = st.as_object().unwrap().iter().next().unwrap();
                match key.as_str() {
                    "counter" => {
                        rule.packets = val["packets"].as_u64().unwrap();
                        rule.bytes = val["bytes"].as_u64().unwrap();
                    }
                    "accept" | "drop" | "return" | "continue" => rule.verdict = key.clone(),
                    "jump" | "goto" => {
                        rule.verdict = format!("{key} {}", val["target"].as_str().unwrap());
                    }
                    _ => {}
                }
            }
            rule
        })
        .collect()
}

fn nft_chains(objs: &[Value]) -> Vec<KernelChain> {
    objs.iter()
        .filter_map(|o| o.get("chain"))
        .map(|c| KernelChain {
            name: str_of(c, "name").unwrap(),
            hook: str_of(c, "hook"),
            policy: str_of(c, "policy"),
        })
        .collect()
}

/// Named sets and maps as nft lists them: (name, key types, flags, is a map).
fn nft_sets(objs: &[Value]) -> Vec<(String, Vec<String>, Vec<String>, bool)> {
    objs.iter()
        .filter_map(|o| {
            o.get("set")
                .map(|s| (s, false))
                .or_else(|| o.get("map").map(|m| (m, true)))
        })
        .map(|(s, is_map)| {
            let ty = match &s["type"] {
                Value::String(t) => vec![t.clone()],
                Value::Array(a) => a.iter().map(|t| t.as_str().unwrap().to_owned()).collect(),
                other => panic!("set type {other}"),
            };
            let flags = s
                .get("flags")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(|f| f.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            (str_of(s, "name").unwrap(), ty, flags, is_map)
        })
        .collect()
}

/// Our set matches nft's view of it: same key types; nft's flags are ours,
/// apart from the ones nft's JSON does not print.
fn assert_set_matches(ours: &KernelSet, nft: &(String, Vec<String>, Vec<String>, bool)) {
    let (name, ty, flags, is_map) = nft;
    assert_eq!(&ours.name, name);
    assert_eq!(&ours.key_types, ty, "set {name}");
    assert!(!ours.anonymous, "set {name}");
    assert_eq!(ours.flags.iter().any(|f| f == "map"), *is_map, "set {name}");
    for f in flags {
        assert!(
            ours.flags.contains(f),
            "set {name}: nft says {f}, we have {:?}",
            ours.flags
        );
    }
    for f in &ours.flags {
        assert!(
            flags.contains(f) || ["concat", "dynamic", "map"].contains(&f.as_str()),
            "set {name}: we have {f}, nft says {flags:?}"
        );
    }
}

#[test]
fn dumps_match_nft() {
    let ns = NetNs::for_test("rules_netns", "ru");
    ns.nft_load(RULESET);
    ns.exec("ip", &["link", "set", "lo", "up"], None);

    let (rules, chains, sets, table) = ns.run_inside(|| {
        // five datagrams through lo move the counter of the first rule
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..5 {
            sock.send_to(b"0123456789", "127.0.0.1:9").unwrap();
        }
        thread::sleep(Duration::from_millis(50));
        (
            dump_rules("callgate").unwrap(),
            dump_chains("callgate").unwrap(),
            dump_sets("callgate").unwrap(),
            dump_table("callgate").unwrap().unwrap(),
        )
    });
    let objs = nft_list(&ns);

    // rules: order, handles, comments, verdicts, counters (their expressions are turned
    // into matches and compared with nft's in verify_netns.rs)
    let want = nft_rules(&objs);
    for r in &rules {
        eprintln!("{r:?}");
    }
    let bare: Vec<KernelRule> = rules
        .iter()
        .cloned()
        .map(|r| KernelRule {
            exprs: Vec::new(),
            ..r
        })
        .collect();
    assert_eq!(bare, want);
    // a rule has expressions (beyond counter and verdict) exactly when nft lists a match
    // or another statement for it
    let listed: Vec<bool> = objs
        .iter()
        .filter_map(|o| o.get("rule"))
        .map(|r| {
            r["expr"].as_array().unwrap().iter().any(|st| {
                let key = st.as_object().unwrap().keys().next().unwrap().as_str();
                ![
                    "counter", "accept", "drop", "jump", "goto", "return", "continue",
                ]
                .contains(&key)
            })
        })
        .collect();
    let decoded: Vec<bool> = rules.iter().map(|r| !r.exprs.is_empty()).collect();
    assert_eq!(decoded, listed);
    assert_eq!(rules.len(), 13);
    let lo = &rules[0];
    assert_eq!(
        (
            lo.comment.as_str(),
            lo.verdict.as_str(),
            lo.packets,
            lo.bytes
        ),
        ("loopback discard", "accept", 5, 5 * (20 + 8 + 10))
    );
    let verdicts: Vec<&str> = rules.iter().map(|r| r.verdict.as_str()).collect();
    assert_eq!(
        verdicts,
        [
            "accept",
            "drop",
            "jump allowed",
            "accept",
            "drop",
            "",
            "goto allowed",
            "", // a verdict map: no immediate verdict
            "",
            "",
            "accept",
            "continue",
            "return",
        ]
    );
    assert!(rules
        .iter()
        .all(|r| r.comment != "other table" && r.comment != "ip family"));

    // chains: hooks and policies, in order
    for c in &chains {
        eprintln!("{c:?}");
    }
    assert_eq!(chains, nft_chains(&objs));
    assert_eq!(
        chains,
        [
            ("input", Some("input"), Some("drop")),
            ("forward", Some("forward"), Some("drop")),
            ("output", Some("output"), Some("accept")),
            ("allowed", None, None),
        ]
        .map(|(name, hook, policy)| KernelChain {
            name: name.into(),
            hook: hook.map(Into::into),
            policy: policy.map(Into::into),
        })
    );

    // sets: the named ones as nft lists them, plus the anonymous ones
    for s in &sets {
        eprintln!("{s:?}");
    }
    let named: Vec<&KernelSet> = sets.iter().filter(|s| !s.anonymous).collect();
    let nft = nft_sets(&objs);
    assert_eq!(named.len(), nft.len(), "{named:?} vs {nft:?}");
    for (ours, theirs) in named.iter().zip(&nft) {
        assert_set_matches(ours, theirs);
    }
    let find = |name: &str| named.iter().find(|s| s.name == name).unwrap();
    assert_eq!(
        find("pinhole4").key_types,
        ["ipv4_addr", "inet_proto", "inet_service"]
    );
    // nft marks only interval concatenations (pipapo) with NFT_SET_CONCAT
    assert_eq!(find("pinhole4").flags, ["timeout"]);
    assert_eq!(
        find("pinhole6").key_types,
        ["ipv6_addr", "inet_proto", "inet_service"]
    );
    assert_eq!(find("allow4").flags, ["interval"]);
    assert_eq!(find("learned").flags, ["timeout", "dynamic"]);
    assert_eq!(find("marks").flags, ["constant"]);
    assert_eq!(find("spans").flags, ["interval", "concat"]);
    assert_eq!(find("portmap").flags, ["map"]);
    let anonymous: Vec<&KernelSet> = sets.iter().filter(|s| s.anonymous).collect();
    assert_eq!(anonymous.len(), 2, "{anonymous:?}");
    assert!(anonymous.iter().all(|s| s.name.starts_with("__set")
        && s.flags
            .starts_with(&["anonymous".to_owned(), "constant".to_owned()])));
    assert_eq!(anonymous[0].key_types, ["ipv4_addr"]);
    assert_eq!(anonymous[1].key_types, ["inet_service"]);

    // one consistent snapshot: the same as the separate dumps, plus the anonymous sets'
    // elements
    let elems = |set: &str| -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = table.anonymous_elements[set]
            .iter()
            .filter(|e| e.flags == 0 && e.key_end.is_none())
            .map(|e| e.key.clone())
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(
        elems(&anonymous[0].name),
        [[198, 51, 100, 1], [198, 51, 100, 2]]
    );
    assert_eq!(elems(&anonymous[1].name), [[0, 22], [0, 80]]);
    assert_eq!(table.anonymous_elements.len(), 2);
    assert_eq!(
        table,
        KernelTable {
            chains,
            sets,
            rules,
            anonymous_elements: table.anonymous_elements.clone(),
        }
    );

    // a missing table, an invalid name
    ns.run_inside(|| {
        assert_eq!(dump_rules("nosuchtable").unwrap(), []);
        assert_eq!(dump_chains("nosuchtable").unwrap(), []);
        assert_eq!(dump_sets("nosuchtable").unwrap(), []);
        assert_eq!(dump_table("nosuchtable").unwrap(), None);
        // another table of ours
        assert_eq!(dump_table("other").unwrap().map(|t| t.rules.len()), Some(1));
        let e = dump_rules("").unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidTableName(_)), "{e}");
        let e = dump_table(&"x".repeat(300)).unwrap_err();
        assert!(matches!(e, NetlinkError::InvalidTableName(_)), "{e}");
    });
}

/// Key types of every datatype nft accepts as a set key, and some
/// concatenations, named as `nft -j list` names them.
#[test]
fn set_type_names_match_nft() {
    let ns = NetNs::for_test("rules_netns", "ru");
    let types = [
        "nf_proto",
        "ipv4_addr",
        "ipv6_addr",
        "ether_addr",
        "ether_type",
        "arp_op",
        "inet_proto",
        "inet_service",
        "icmp_type",
        "tcp_flag",
        "dccp_pkttype",
        "mh_type",
        "time",
        "mark",
        "iface_index",
        "iface_type",
        "realm",
        "classid",
        "uid",
        "gid",
        "ct_state",
        "ct_dir",
        "ct_status",
        "icmpv6_type",
        "pkt_type",
        "icmp_code",
        "icmpv6_code",
        "icmpx_code",
        "devgroup",
        "dscp",
        "ecn",
        "boolean",
        "ifname",
        "igmp_type",
        "cgroupsv2",
        "ipv4_addr . inet_proto . inet_service",
        "ipv6_addr . inet_proto . inet_service",
        "ifname . ipv4_addr . ether_addr . mark",
        "inet_service . inet_service",
    ];
    let mut ruleset = String::from("table inet callgate {\n");
    for (i, t) in types.iter().enumerate() {
        writeln!(ruleset, "  set t{i} {{ type {t}; }}").unwrap();
    }
    writeln!(
        ruleset,
        "  set iv {{ type ipv4_addr . inet_service; flags interval, timeout; }}\n}}"
    )
    .unwrap();

    ns.nft_load(&ruleset);
    let sets = ns.run_inside(|| dump_sets("callgate").unwrap());
    let nft = nft_sets(&nft_list(&ns));
    assert_eq!(sets.len(), types.len() + 1);
    assert_eq!(sets.len(), nft.len());
    for (i, t) in types.iter().enumerate() {
        let want: Vec<&str> = t.split(" . ").collect();
        assert_eq!(sets[i].key_types, want, "type {t}");
    }
    for (ours, theirs) in sets.iter().zip(&nft) {
        assert_set_matches(ours, theirs);
    }
    assert_eq!(sets[types.len()].flags, ["interval", "timeout", "concat"]);
}

/// `dump_rules` does not read set elements: its time does not grow with a
/// 100k-element interval set in the table (`CGRULES_N` overrides the count,
/// `CGRULES_RULES` the number of rules, 50).
#[test]
fn rules_dump_ignores_set_size() {
    let ns = NetNs::for_test("rules_netns", "ru");
    let n: u32 = env_or("CGRULES_N", 100_000);
    let n_rules: usize = env_or("CGRULES_RULES", 50);
    // every other /30 (none adjacent)
    let elems = spaced_prefixes(n);
    let mut rules = String::new();
    for i in 0..n_rules {
        writeln!(
            rules,
            "        ip saddr @big4 tcp dport {} counter accept comment \"rule {i}\"",
            1000 + i
        )
        .unwrap();
    }
    let table = |elems: &str| {
        format!(
            "table inet callgate {{\n    set big4 {{ type ipv4_addr; flags interval; elements = {{ {elems} }} }}\n    \
             chain input {{\n        type filter hook input priority 0; policy drop;\n{rules}    }}\n}}\n"
        )
    };

    /// Best of 5 (after a warm-up) of each dump, in ms.
    fn time_dumps(n_rules: usize) -> [f64; 4] {
        fn best<T>(f: impl Fn() -> T) -> f64 {
            f();
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min)
        }
        let rules = dump_rules("callgate").unwrap();
        assert_eq!(rules.len(), n_rules);
        let last = rules.last().unwrap();
        assert_eq!(last.comment, format!("rule {}", n_rules - 1));
        assert_eq!(last.verdict, "accept");
        [
            best(|| dump_rules("callgate").unwrap()),
            best(|| dump_chains("callgate").unwrap()),
            best(|| dump_sets("callgate").unwrap()),
            best(|| dump_table("callgate").unwrap()),
        ]
    }

    ns.nft_load(&table("100.64.0.0/30"));
    let small = ns.run_inside(move || time_dumps(n_rules));

    let t = Instant::now();
    ns.nft_load(&format!("flush ruleset\n{}", table(&elems)));
    let load = t.elapsed();
    let big = ns.run_inside(move || time_dumps(n_rules));
    let t = Instant::now();
    let listed = ns.exec("nft", &["-j", "list", "table", "inet", "callgate"], None);
    let nft_list = t.elapsed();
    assert!(listed.contains(&format!("\"rule {}\"", n_rules - 1)));
    let t = Instant::now();
    ns.exec(
        "nft",
        &["-j", "-t", "list", "table", "inet", "callgate"],
        None,
    );
    let nft_terse = t.elapsed();

    let names = ["dump_rules", "dump_chains", "dump_sets", "dump_table"];
    eprintln!("{n_rules} rules, set of 1 vs {n} /30 prefixes (best of 5):");
    for ((name, s), b) in names.iter().zip(small).zip(big) {
        eprintln!("  {name:12} {s:8.3} ms vs {b:8.3} ms");
    }
    eprintln!(
        "  nft -f load {load:?}; nft -j list table {nft_list:?}; nft -j -t list table {nft_terse:?}"
    );
    for ((name, s), b) in names.iter().zip(small).zip(big) {
        // generous bounds: a shared 2-core machine; what matters is that
        // nothing is proportional to the 100k elements
        assert!(
            b < s * 5.0 + 5.0,
            "{name}: {s:.3} ms -> {b:.3} ms with {n} elements"
        );
    }
}
