#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! Config transactions, fail-closed behaviour and pinholes, against the real daemon and the
//! real kernel inside the lab.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hil_tests::{addr, Appliance, Host, Lab, Token};

const LAB: &str = include_str!("../../config/lab.toml");
const NEG: Duration = Duration::from_millis(400);
const POS: Duration = Duration::from_secs(2);

fn lab() -> Lab {
    Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Mgmt]).unwrap()
}

/// lab.toml without the `mgmt-api` entry.
fn without_mgmt_api() -> String {
    let start = LAB.find("[[allow]]\nname = \"mgmt-api\"").unwrap();
    let end = start + LAB[start..].find("\n\n").unwrap() + 2;
    format!("{}{}", &LAB[..start], &LAB[end..])
}

/// mgmt → A:8443 is what the `mgmt-api` entry allows.
fn mgmt_api_passes(lab: &Lab) -> bool {
    let _l = lab.ns(Host::A).tcp_listen(addr::A_MGMT_V4, 8443).unwrap();
    lab.ns(Host::Mgmt)
        .tcp_connect(None, addr::A_MGMT_V4, 8443, POS)
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

#[test]
fn replace_removes_an_entry_for_real() {
    let lab = lab();
    let a = Appliance::start(&lab, Host::A, LAB).unwrap();
    assert!(mgmt_api_passes(&lab));
    let r = a.commit(&without_mgmt_api(), &[]);
    assert!(r.ok(), "{r:?}");
    assert!(!mgmt_api_passes(&lab), "a removed entry must stop passing");
    let rules = a.ruleset();
    assert!(!rules.contains("mgmt-api"), "{rules}");
    assert!(
        !rules.contains("a_mgmt_api"),
        "its sets are gone too: {rules}"
    );

    // Removing one prefix from an entry's set removes it from the kernel's set.
    let narrowed = LAB.replace(
        "sources = [\"192.0.2.140/32\", \"2001:db8:4::10/128\"]",
        "sources = [\"192.0.2.141/32\", \"2001:db8:4::10/128\"]",
    );
    assert!(a.commit(&narrowed, &[]).ok());
    assert!(!mgmt_api_passes(&lab), "the old source prefix was removed");
    let l = lab.ns(Host::A).tcp_listen(addr::A_MGMT_V4, 8443).unwrap();
    assert!(lab.ns(Host::Mgmt).tcp_connect(
        Some(addr::MGMT_V4_ALT.into()),
        addr::A_MGMT_V4,
        8443,
        POS
    ));
    drop(l);

    // history and compare show it
    let h = a.cli(&["--json", "show", "history"]).json();
    assert_eq!(h.as_array().unwrap().len(), 3, "{h}");
    let d = a.cli(&["compare", "2", "3"]);
    assert!(
        d.ok() && d.stdout.contains("+sources = [\"192.0.2.141/32\""),
        "{d:?}"
    );
    // rollback N restores revision 1's policy
    assert!(a.cli(&["rollback", "1"]).ok());
    assert!(mgmt_api_passes(&lab));
}

#[test]
fn broken_config_is_refused_with_location_and_changes_nothing() {
    let lab = lab();
    let a = Appliance::start(&lab, Host::A, LAB).unwrap();
    let before = a.ruleset_without_counters();
    let cases = [
        (LAB.replace("protocol = \"tcp\"\nports = [8443]", "protocol = \"tcp\"\nports = [84430]"), "invalid value"),
        (LAB.replace("[zones.sync]", "[zones.sync"), "syntax"),
        (LAB.replace("zone = \"mgmt\"\nsources", "zone = \"dmz\"\nsources"), "invalid value"),
        (format!("{LAB}\n[[allow]]\nname = \"x\"\nzone = \"wan\"\nsources = [\"203.0.113.0/24\"]\nprotocol = \"icmp\"\nports = [1]\n"), "invalid entry"),
        (LAB.replace("[services.ssh]\nzones = [\"mgmt\"]", "[services.ssh]\nzones = [\"sync\"]"), "lockout"),
    ];
    for (text, kind) in cases {
        let r = a.commit(&text, &[]);
        assert!(!r.ok(), "must be refused: {kind}");
        let located = r.stderr.contains("candidate.toml:") && r.stderr.contains(kind);
        assert!(
            located,
            "error names file:line:col and {kind}: {}",
            r.stderr
        );
        assert_eq!(
            a.ruleset_without_counters(),
            before,
            "the live ruleset changed after a refused commit ({kind})"
        );
    }
    let h = a.cli(&["--json", "show", "history"]).json();
    assert_eq!(h.as_array().unwrap().len(), 1, "nothing was recorded");
    // --force overrides only the lockout guard
    let lock = LAB.replace(
        "[services.ssh]\nzones = [\"mgmt\"]",
        "[services.ssh]\nzones = [\"sync\"]",
    );
    assert!(a.commit(&lock, &["--force"]).ok());
}

#[test]
fn commit_confirmed_rolls_back_without_confirm_and_stays_with_it() {
    let lab = lab();
    let a = Appliance::start(&lab, Host::A, LAB).unwrap();
    let r = a.commit(&without_mgmt_api(), &["--confirmed", "2"]);
    assert!(r.ok(), "{r:?}");
    assert!(!mgmt_api_passes(&lab));
    assert!(
        wait_until(Duration::from_secs(8), || mgmt_api_passes(&lab)),
        "rolled back by itself"
    );
    let status = a.cli(&["--json", "status"]).json();
    assert_eq!(status["revision"], 3, "{status}");
    assert!(status["pending"].is_null());
    assert_eq!(
        std::fs::read_to_string(a.config_path()).unwrap(),
        LAB,
        "the config file is the running config"
    );

    let r = a.commit(&without_mgmt_api(), &["--confirmed", "3"]);
    assert!(r.ok(), "{r:?}");
    let c = a.cli(&["confirm"]);
    assert!(c.ok(), "{c:?}");
    std::thread::sleep(Duration::from_secs(5));
    assert!(!mgmt_api_passes(&lab), "a confirmed commit stays");
    assert!(!a.cli(&["confirm"]).ok(), "nothing left to confirm");
}

#[test]
fn commit_confirmed_rolls_back_when_the_daemon_is_sigkilled() {
    let lab = lab();
    let mut a = Appliance::start(&lab, Host::A, LAB).unwrap();
    assert!(a.commit(&without_mgmt_api(), &["--confirmed", "2"]).ok());
    a.kill9();
    assert!(!a.is_running());
    assert!(
        !mgmt_api_passes(&lab),
        "the killed daemon's last ruleset still enforces"
    );
    // Nobody restarts the daemon: the detached guard rolls back.
    assert!(
        wait_until(Duration::from_secs(10), || mgmt_api_passes(&lab)),
        "guard rolled back:\n{}",
        a.log()
    );
    // The next boot finds the rollback recorded and keeps it.
    a.launch().unwrap();
    let status = a.cli(&["--json", "status"]).json();
    assert_eq!(status["revision"], 3, "{status}");
    assert!(mgmt_api_passes(&lab));
}

#[test]
fn commit_confirmed_rolls_back_at_boot_if_the_guard_is_gone_too() {
    let lab = lab();
    let mut a = Appliance::start(&lab, Host::A, LAB).unwrap();
    assert!(a.commit(&without_mgmt_api(), &["--confirmed", "1"]).ok());
    a.kill9();
    // Kill the guard as well (a power cut takes everything).
    // (only this appliance's guard: its command line names this appliance's directory)
    let pattern = format!("{}.*rollback-guard", a.dir().display());
    let _ = a.ns().exec(&["pkill", "-9", "-f", &pattern]);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!mgmt_api_passes(&lab), "no one has rolled back yet");
    a.launch().unwrap();
    assert!(
        mgmt_api_passes(&lab),
        "boot rolled back the unconfirmed commit:\n{}",
        a.log()
    );
    let h = a.cli(&["show", "history"]);
    assert!(h.stdout.contains("automatic rollback to 1"), "{h:?}");
}

#[test]
fn sigkill_leaves_rules_in_force() {
    let lab = lab();
    let mut a = Appliance::start(&lab, Host::A, LAB).unwrap();
    let before = a.ruleset_without_counters();
    a.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        a.ruleset_without_counters(),
        before,
        "rules unchanged after SIGKILL"
    );
    assert!(mgmt_api_passes(&lab), "allowed traffic still passes");
    // and denied traffic is still denied
    let _l = lab.ns(Host::A).tcp_listen(addr::A_WAN_V4, 8443).unwrap();
    assert!(!lab
        .ns(Host::Carrier)
        .tcp_connect(None, addr::A_WAN_V4, 8443, NEG));
    // a restart keeps the policy (no baseline gap) and reuses revision 1
    a.launch().unwrap();
    assert_eq!(a.ruleset_without_counters(), before);
    assert_eq!(a.cli(&["--json", "status"]).json()["revision"], 1);
    // SIGTERM is a clean exit that leaves the rules too
    assert_eq!(a.stop(), Some(0));
    assert_eq!(a.ruleset_without_counters(), before);
}

/// `callgated --config CFG baseline` inside `ns`; true on success.
fn baseline(ns: &hil_tests::Ns<'_>, cfg: &std::path::Path) -> bool {
    ns.command(&hil_tests::bin("callgated").to_string_lossy())
        .arg("--config")
        .arg(cfg)
        .arg("baseline")
        .status()
        .unwrap()
        .success()
}

#[test]
fn baseline_allows_only_management_and_sync() {
    let lab = lab();
    let a_ns = lab.ns(Host::A);
    let dir = std::env::temp_dir().join(format!("callgate-{}-baseline", a_ns.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("callgate.toml");
    std::fs::write(&cfg, LAB).unwrap();
    assert!(baseline(&a_ns, &cfg));
    let _ssh = a_ns.tcp_listen(addr::A_MGMT_V4, 22).unwrap();
    let _sip = a_ns.udp_listen_silent(addr::A_WAN_V4, 5060).unwrap();
    assert!(
        lab.ns(Host::Mgmt)
            .tcp_connect(None, addr::A_MGMT_V4, 22, POS),
        "ssh from mgmt"
    );
    let t = Token::new();
    lab.ns(Host::Carrier)
        .udp_send(None, addr::A_WAN_V4, 5060, &t);
    assert!(!_sip.wait_for(&t, NEG), "no SIP before the full policy");
    assert!(!lab.ns(Host::Carrier).ping(None, addr::A_WAN_V4, NEG));
    // an unreadable config still gives a fail-closed baseline (no ssh, no sip)
    std::fs::write(&cfg, "garbage [").unwrap();
    assert!(baseline(&a_ns, &cfg));
    assert!(!lab
        .ns(Host::Mgmt)
        .tcp_connect(None, addr::A_MGMT_V4, 22, NEG));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pinhole_passes_for_its_ttl_then_no_longer() {
    use callgate_firewall::{Pinhole, PinholeProto, SetWriter};
    let lab = lab();
    let a = Appliance::start(&lab, Host::A, LAB).unwrap();
    let pbx = lab.ns(Host::Pbx);
    let carrier = lab.ns(Host::Carrier);
    // a silent listener: no reply, so conntrack never marks the flow established and every
    // datagram is judged by the pinhole set
    let l = pbx.udp_listen_silent(addr::PBX_V4, 40000).unwrap();
    let l6 = pbx.udp_listen_silent(addr::PBX_V6, 40000).unwrap();
    let send = |v6: bool| {
        let t = Token::new();
        if v6 {
            carrier.udp_send(None, addr::PBX_V6, 40000, &t);
            l6.wait_for(&t, NEG)
        } else {
            carrier.udp_send(None, addr::PBX_V4, 40000, &t);
            l.wait_for(&t, NEG)
        }
    };
    // writes into the pinhole sets from inside A, as the daemon's SIP router does: the
    // flow from the carrier's address to the PBX's port 40000
    let pinhole = |dst: IpAddr| {
        let src: IpAddr = if dst.is_ipv4() {
            addr::CARRIER_V4.into()
        } else {
            addr::CARRIER_V6.into()
        };
        Pinhole {
            src: src.into(),
            dst,
            proto: PinholeProto::Udp,
            port: 40000,
        }
    };
    let open = |addr: IpAddr, secs: u64| {
        a.ns().run_in(move || {
            let mut w = SetWriter::open("callgate").unwrap();
            w.open_pinhole(pinhole(addr), Duration::from_secs(secs))
                .unwrap();
        })
    };
    assert!(!send(false) && !send(true), "no pinhole, no media");
    open(addr::PBX_V4.into(), 3);
    open(addr::PBX_V6.into(), 3);
    assert!(
        send(false) && send(true),
        "media passes while the pinhole is open"
    );
    assert!(a.packets("forward", "builtin:pinhole") >= 2);
    // other ports and protocols stay closed
    let t = Token::new();
    carrier.udp_send(None, addr::PBX_V4, 40001, &t);
    assert!(!l.wait_for(&t, NEG));
    assert!(
        wait_until(Duration::from_secs(6), || !send(false)),
        "closed after its TTL"
    );
    assert!(!send(true));
    // close_pinhole closes at once
    open(addr::PBX_V4.into(), 60);
    assert!(send(false));
    a.ns().run_in(|| {
        let mut w = SetWriter::open("callgate").unwrap();
        w.close_pinhole(pinhole(addr::PBX_V4.into())).unwrap();
    });
    assert!(!send(false));
    // another source on the WAN side never uses the carrier's pinhole
    open(addr::PBX_V4.into(), 60);
    let t = Token::new();
    carrier.udp_send(Some(addr::CARRIER_V4_ALT.into()), addr::PBX_V4, 40000, &t);
    assert!(!l.wait_for(&t, NEG), "a third address used the pinhole");
    // a commit keeps open pinholes (calls in progress keep their media)
    open(addr::PBX_V4.into(), 60);
    assert!(a.commit(&without_mgmt_api(), &[]).ok());
    assert!(send(false), "pinhole survived the commit");
}

#[test]
fn daemon_with_a_broken_config_exits_3_and_stays_fail_closed() {
    let lab = lab();
    let a_ns = lab.ns(Host::A);
    let dir = std::env::temp_dir().join(format!("callgate-{}-broken", a_ns.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("callgate.toml");
    std::fs::write(
        &cfg,
        LAB.replace("protocol = \"udp\"", "protocol = \"sctp\""),
    )
    .unwrap();
    let out = a_ns
        .command(&hil_tests::bin("callgated").to_string_lossy())
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--control-socket")
        .arg(dir.join("c.sock"))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{log}");
    assert!(
        log.contains("callgate.toml:") && log.contains("sctp"),
        "the error is located: {log}"
    );
    // the baseline is in force: default drop, nothing from the carrier
    let _sip = a_ns.udp_listen_silent(addr::A_WAN_V4, 5060).unwrap();
    let t = Token::new();
    lab.ns(Host::Carrier)
        .udp_send(None, addr::A_WAN_V4, 5060, &t);
    assert!(!_sip.wait_for(&t, NEG));
    let rules = a_ns
        .exec(&["nft", "list", "chain", "inet", "callgate", "input"])
        .unwrap();
    assert!(
        rules.contains("policy drop") && !rules.contains("carrier"),
        "{rules}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first rule of the input chain named `comment`, as `nft -a list` prints it: its
/// handle and its statements (without the handle).
fn input_rule(a: &Appliance<'_>, comment: &str) -> (String, Vec<String>) {
    let listing = a
        .nft(&["-a", "list", "chain", "inet", "callgate", "input"])
        .unwrap();
    let line = listing
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .unwrap_or_else(|| panic!("no rule {comment:?} in\n{listing}"));
    let (rule, handle) = line.split_once(" # handle ").unwrap();
    let words = rule.split_whitespace().map(str::to_owned).collect();
    (handle.trim().to_owned(), words)
}

#[test]
fn show_firewall_reports_a_rule_tampered_through_nft_until_a_commit_repairs_it() {
    let lab = lab();
    let a = Appliance::start(&lab, Host::A, LAB).unwrap();
    let show = || a.cli(&["--json", "show", "firewall"]);
    let s = show();
    assert_eq!(s.code, 0, "{s:?}");
    let fw = s.json();
    assert_eq!(fw["drift"], serde_json::json!([]), "{fw}");
    assert!(
        fw["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "carrier-sip-udp"),
        "{fw}"
    );

    // Behind the daemon's back: the carrier's SIP rule without its source set, same
    // comment, same verdict: UDP 5060 on the WAN side from anywhere.
    let (handle, words) = input_rule(&a, "carrier-sip-udp");
    let at = words
        .windows(3)
        .position(|w| w[0] == "ip" && w[1] == "saddr" && w[2].starts_with('@'))
        .unwrap_or_else(|| panic!("no source set in {words:?}"));
    let set = words[at + 2].clone();
    let mut stripped = words;
    stripped.drain(at..at + 3);
    let mut cmd = vec![
        "replace", "rule", "inet", "callgate", "input", "handle", &handle,
    ];
    cmd.extend(stripped.iter().map(String::as_str));
    a.nft(&cmd).unwrap();
    let (_, now) = input_rule(&a, "carrier-sip-udp");
    assert!(!now.contains(&set), "tampered: {now:?}");
    assert_eq!(now.last().map(String::as_str), Some("\"carrier-sip-udp\""));

    let s = show();
    assert_eq!(s.code, 5, "drift is exit code 5: {s:?}");
    let drift: Vec<String> = s.json()["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(drift.len(), 1, "{drift:#?}");
    assert!(
        drift[0].contains("chain input")
            && drift[0].contains("\"carrier-sip-udp\"")
            && drift[0].contains(&format!("ip saddr {set}")),
        "names the chain, the rule and the lost match: {}",
        drift[0]
    );
    assert!(
        s.json()["entries"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "the counters are still there"
    );
    let human = a.cli(&["show", "firewall"]);
    assert_eq!(human.code, 5);
    assert!(human.stdout.contains(&drift[0]), "{}", human.stdout);
    let status = a.cli(&["--json", "status"]).json();
    assert_eq!(status["firewall_verification"], "drift", "{status}");
    assert_eq!(
        status["firewall_drift"],
        serde_json::json!(drift),
        "{status}"
    );

    // A commit of the same config renders and applies the whole table again.
    let r = a.commit(LAB, &[]);
    assert!(r.ok(), "{r:?}");
    let (_, mended) = input_rule(&a, "carrier-sip-udp");
    assert!(mended.contains(&set), "{mended:?}");
    let s = show();
    assert_eq!(s.code, 0, "{s:?}");
    assert_eq!(s.json()["drift"], serde_json::json!([]));
    let status = a.cli(&["--json", "status"]).json();
    assert_eq!(status["firewall_verification"], "in_sync", "{status}");
}

/// An appliance whose running config has no SIP listeners (as the factory's) gets its
/// proxy by a commit, which only a restart wires in (`callgated/src/restart.rs`): the commit
/// is answered and says so, the firewall enforces the new policy, and the daemon stops in
/// order with exit code 75 for its supervisor. Started again, as systemd does, it carries
/// calls. A commit that keeps the shape (a comment) does not stop it.
#[test]
fn a_commit_that_adds_the_proxy_restarts_the_daemon_which_then_carries_calls() {
    use hil_tests::calls::{carrier_calls, pbx, wait_cdrs};
    let lab = lab();
    let listen = "listen = [\"203.0.113.1:5060\", \"[2001:db8:1::1]:5060\", \"198.51.100.1:5060\", \"[2001:db8:2::1]:5060\"]";
    assert!(LAB.contains(listen));
    let no_sip = LAB.replacen(listen, "listen = []", 1);
    let mut a = Appliance::start(&lab, Host::A, &no_sip).unwrap();
    assert!(
        a.log().contains("no listen addresses configured"),
        "{}",
        a.log()
    );
    let out = a.commit(&format!("{no_sip}\n# a comment\n"), &[]);
    assert!(out.ok() && !out.stdout.contains("restarts"), "{out:?}");
    assert!(a.wait_exit(Duration::from_secs(2)).is_none(), "{}", a.log());

    let out = a.commit(LAB, &[]);
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout
            .contains("the SIP proxy starts: callgated restarts now to apply it"),
        "{}",
        out.stdout
    );
    let status = a.wait_exit(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(75),
        "{status:?}\n{}",
        a.log()
    );
    // Down, the kernel enforces the committed policy: the carrier's SIP is admitted.
    assert!(a.ruleset().contains("carrier-sip-udp"), "{}", a.ruleset());
    a.launch().unwrap();
    let _pbx = pbx(&lab);
    let r = carrier_calls(&lab, 1, 10.0, Duration::from_millis(100))
        .run()
        .unwrap();
    assert_eq!(
        (r.successful, r.failed),
        (1, 0),
        "{}\n{}",
        r.summary(),
        a.log()
    );
    assert_eq!(wait_cdrs(&a, 1).len(), 1);
}
