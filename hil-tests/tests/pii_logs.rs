#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! No caller data in anything the daemon writes, and the operator's masks (issue 17, build
//! item 6 and the end of item 4), against the real daemon on appliance A: sipp and raw SIP
//! from the carrier, the PBX's sipp, the console over Debian's OpenSSH from the management
//! host (one-shot commands and an interactive session on a pty), and the raw control
//! socket.
//!
//! - `nothing_the_daemon_writes_holds_a_planted_caller`: distinctive caller numbers and
//!   display names are planted through answered calls, refused calls (an unknown number),
//!   malformed INVITEs that hit the parser's and the checks' error paths, and a flood that
//!   hits the per-source rate limiter; and through console commands (show subject, export,
//!   erase, wrong numbers, an operator's refused request, typed lines, a malformed raw
//!   request). Then every byte the daemon wrote is scanned: its stderr as the lab captures
//!   it (the lab runs no journald: the daemon logs to stderr), every file under its state
//!   directory and beside its control socket, the accounts it wrote into the appliance's
//!   /etc, and sshd's log. None of the values may appear, as +E.164, as national digits or
//!   as the display name. The scanner is shown to find each value where it is known to be
//!   first (sipp's message trace, a planted file), so the test can fail.
//! - `an_operator_sees_the_same_call_masked_over_ssh`: the same call in `show cdrs` and
//!   `show calls` for an admin and an operator over OpenSSH, text and `| display json`, and
//!   the operator's raw socket: masked for the operator (`+1 •••• 42`, `Z…`), not for the
//!   admin; subject requests refuse the operator plainly.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hil_tests::addr::{self, A_MGMT_V4};
use hil_tests::calls::{lab_toml, pbx, stats, u, wait_cdrs, wait_until, UDP_NUMBER};
use hil_tests::console::{apply_image_sysctls, ssh, ssh_terminal, sshd_log, start_sshd, KeyPair};
use hil_tests::sipp::{Sipp, Transport};
use hil_tests::{Appliance, Cli, Host, Lab, Ns};
use serde_json::Value;

/// Answered calls.
const GOOD: (&str, &str) = ("+14155550142", "Zelda Quimby");
/// Calls refused (to an unknown number); this subject is erased over the console.
const REFUSED: (&str, &str) = ("+14155550143", "Ximena Vortigern");
/// Malformed INVITEs.
const MALFORMED: (&str, &str) = ("+14155550144", "Yolanda Brightwater");
/// The flood.
const FLOOD: (&str, &str) = ("+14155550145", "Wilbur Fennimore");
/// A number dialled that is no tracking number (a person's, perhaps).
const DIALLED: &str = "+15557650199";
/// Numbers only typed at the console or sent to the control socket.
const CONSOLE: [&str; 8] = [
    "+14155550146", // show subject: nothing held
    "+14155550147", // show subject 4155550147x: not a number
    "+14155550148", // a raw request with the number as a JSON integer
    "+14155550149", // typed: show subject +1 415 555 0149 (does not parse)
    "+14155550150", // typed: request subject erase 4155550150 (refused)
    "+14155550151", // the operator's show subject (refused)
    "+14155550152", // root's export of a number with nothing held
    "+14155550153", // a raw `remember` line: show subject 415.555.0153
];

/// Every form of a planted value the scan looks for: a number as +E.164, as national
/// digits and spelled with spaces, dots and dashes; a name whole and its surname.
fn needles() -> Vec<String> {
    let mut n = Vec::new();
    let mut number = |e164: &str| {
        let d = national(e164);
        n.push(e164.to_owned());
        n.push(d.to_owned());
        for sep in [" ", ".", "-"] {
            n.push(format!("{}{sep}{}{sep}{}", &d[..3], &d[3..6], &d[6..]));
        }
    };
    for (num, _) in [GOOD, REFUSED, MALFORMED, FLOOD] {
        number(num);
    }
    number(DIALLED);
    for c in CONSOLE {
        number(c);
    }
    for (_, name) in [GOOD, REFUSED, MALFORMED, FLOOD] {
        n.push(name.to_owned());
        n.push(name.split(' ').nth(1).unwrap().to_owned());
    }
    n
}

/// The national digits of a +1 number.
fn national(e164: &str) -> &str {
    e164.strip_prefix("+1").unwrap()
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `root` (symlinks are not followed).
fn files(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            files(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

/// Where each needle occurs in the files under `roots` (raw bytes): (file, needle).
fn scan(roots: &[PathBuf], needles: &[String]) -> Vec<(PathBuf, String)> {
    let mut all = Vec::new();
    for r in roots {
        if r.is_file() {
            all.push(r.clone());
        } else {
            files(r, &mut all);
        }
    }
    let mut hits = Vec::new();
    for f in all {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        for n in needles {
            if find(&bytes, n.as_bytes()) {
                hits.push((f.clone(), n.clone()));
            }
        }
    }
    hits
}

/// What of the appliance the daemon writes: its directory (log, state, control socket,
/// swtpm, sshd's log), and of its /etc the files the daemon's account management writes
/// (the rest is a copy of the machine's /etc).
fn written_by_the_appliance(a: &Appliance<'_>) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for e in std::fs::read_dir(a.dir()).unwrap().flatten() {
        if e.file_name() != "etc" {
            roots.push(e.path());
        }
    }
    for f in [
        "passwd", "group", "shadow", "gshadow", "subuid", "subgid", "callgate",
    ] {
        roots.push(a.etc().join(f));
    }
    roots
}

fn users(admin: &KeyPair, operator: &KeyPair) -> String {
    format!(
        "\n[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{}\"]\n\n\
         [[user]]\nname = \"olga\"\nrole = \"operator\"\nssh_keys = [\"{}\"]\n",
        admin.public, operator.public
    )
}

/// A UDP socket bound to `ip:port` inside `ns`.
fn udp(ns: &Ns<'_>, ip: IpAddr, port: u16) -> UdpSocket {
    let s = ns.run_in(move || UdpSocket::bind((ip, port)).expect("bind"));
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    s
}

fn wan() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(addr::A_WAN_V4), 5060)
}

/// An INVITE from `src` to `to` with the planted caller in From and Contact; `tweak`
/// edits its text (to break it).
fn invite(src: SocketAddr, n: usize, to: &str, who: (&str, &str)) -> String {
    let ip = src.ip();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n"
    );
    format!(
        "INVITE sip:{to}@{a}:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP {src};branch=z9hG4bK-pii-{n}\r\n\
Max-Forwards: 70\r\n\
From: \"{name}\" <sip:{num}@{ip}>;tag=pii{n}\r\n\
To: <sip:{to}@{a}>\r\n\
Call-ID: pii-{n}@{ip}\r\n\
CSeq: 1 INVITE\r\n\
Contact: \"{name}\" <sip:{num}@{src}>\r\n\
P-Asserted-Identity: \"{name}\" <tel:{num}>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {len}\r\n\r\n{sdp}",
        a = addr::A_WAN_V4,
        num = who.0,
        name = who.1,
        len = sdp.len()
    )
}

/// Sends raw request lines to the control socket as `user` (`root`: as the test runs).
fn raw_as(a: &Appliance<'_>, user: Option<&str>, lines: &[&str]) -> Vec<Value> {
    let mut cmd = match user {
        Some(u) => {
            let mut c = a.command("setpriv");
            c.args(["--reuid", u, "--regid", u, "--init-groups", "--"]);
            c.arg(env!("CARGO_BIN_EXE_control-raw"));
            c
        }
        None => std::process::Command::new(env!("CARGO_BIN_EXE_control-raw")),
    };
    let out = cmd.arg(a.socket()).args(lines).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Starts the lab, the appliance (with `extra` in its config) and its sshd; the keys.
fn appliance_with_console<'l>(
    lab: &'l Lab,
    keys: &Path,
    extra: &[(&str, &str)],
) -> (Appliance<'l>, hil_tests::Proc, KeyPair, KeyPair) {
    let (ann, olga) = (KeyPair::new(keys, "ann"), KeyPair::new(keys, "olga"));
    let mut cfg = lab_toml();
    for (from, to) in extra {
        assert!(cfg.contains(from), "config/lab.toml has no {from:?}");
        cfg = cfg.replacen(from, to, 1);
    }
    cfg.push_str(&users(&ann, &olga));
    let a = Appliance::start(lab, Host::A, &cfg).unwrap();
    wait_until("the operator's account reaches the daemon", 10, || {
        a.cli_as("olga", &["status"]).ok()
    });
    apply_image_sysctls(&a);
    let sshd = start_sshd(&a, A_MGMT_V4.into());
    (a, sshd, ann, olga)
}

fn sipp_caller<'l>(lab: &'l Lab, scenario: &str, to: &str, who: (&str, &str)) -> Sipp<'l> {
    Sipp::uac(&lab.ns(Host::Carrier), scenario)
        .local(addr::CARRIER_V4, 5060)
        .remote(addr::A_WAN_V4, 5060)
        .transport(Transport::Udp)
        .service(to)
        .caller(who.0, who.1)
        .trace_messages(true)
        .timeout(Duration::from_secs(120))
}

#[test]
fn nothing_the_daemon_writes_holds_a_planted_caller() {
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Mgmt]).unwrap();
    let keys = tempfile::tempdir().unwrap();
    // A low per-source rate, so that the flood meets the limiter.
    let (mut a, _sshd, ann, olga) = appliance_with_console(
        &lab,
        keys.path(),
        &[(
            "media = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]",
            "media = [\"203.0.113.10/32\", \"2001:db8:1::10/128\"]\nmax_requests_per_sec = 50",
        )],
    );
    let mgmt = lab.ns(Host::Mgmt);
    let host: IpAddr = A_MGMT_V4.into();
    let needles = needles();

    // ---- through calls -------------------------------------------------------------
    let callee = pbx(&lab);
    let good = sipp_caller(&lab, "uac.xml", UDP_NUMBER, GOOD)
        .calls(3)
        .rate(5.0)
        .duration(Duration::from_millis(200))
        .run()
        .unwrap();
    assert_eq!(good.successful, 3, "{}", good.summary());
    let refused = sipp_caller(&lab, "uac_reject.xml", DIALLED, REFUSED)
        .calls(3)
        .rate(5.0)
        .run()
        .unwrap();
    assert_eq!(refused.final_codes, vec![404; 3], "{}", refused.summary());
    let _ = callee.stop();
    assert_eq!(wait_cdrs(&a, 6).len(), 6, "{}", a.log());

    // Malformed INVITEs, each with the planted caller: the parser's and the checks' error
    // paths (unparseable, a bad Max-Forwards, a CSeq out of range, no Call-ID, a From
    // without a URI's host), and an offer outside the carrier's media.
    let carrier = lab.ns(Host::Carrier);
    let me = SocketAddr::new(IpAddr::V4(addr::CARRIER_V4), 5097);
    let s = udp(&carrier, me.ip(), me.port());
    let base = |n| invite(me, n, UDP_NUMBER, MALFORMED);
    let broken: Vec<String> = vec![
        base(1).replace("SIP/2.0\r\n", "SIP/9.9\r\n"),
        base(2).replace("Max-Forwards: 70", "Max-Forwards: seventy"),
        base(3).replace("CSeq: 1 INVITE", "CSeq: 4294967296 INVITE"),
        base(4).replace("Call-ID: pii-4@203.0.113.10\r\n", ""),
        base(5).replace(
            &format!("<sip:{}@203.0.113.10>", MALFORMED.0),
            &format!("<sip:{}@>", MALFORMED.0),
        ),
        base(6).replace("c=IN IP4 203.0.113.10", "c=IN IP4 198.51.100.1"),
        format!("{}\u{1}\u{2}garbage {}", MALFORMED.1, MALFORMED.0),
        invite(me, 8, MALFORMED.0, MALFORMED),
    ];
    for m in &broken {
        s.send_to(m.as_bytes(), wan()).unwrap();
    }
    wait_until("the malformed requests are counted", 15, || {
        u(&stats(&a)["malformed_dropped"]) >= 3
    });

    // The flood: INVITEs with the planted caller, to the unknown number, far past the
    // per-source rate.
    let fsrc = SocketAddr::new(IpAddr::V4(addr::CARRIER_V4), 5098);
    let f = udp(&carrier, fsrc.ip(), fsrc.port());
    for n in 0..600 {
        f.send_to(invite(fsrc, 1000 + n, DIALLED, FLOOD).as_bytes(), wan())
            .unwrap();
    }
    wait_until("the flood meets the rate limiter", 15, || {
        u(&stats(&a)["flood_dropped"]) > 0
    });

    // ---- through the console --------------------------------------------------------
    let on_ssh = |key: &KeyPair, user: &str, args: &[&str]| -> Cli {
        ssh(&mgmt, &key.private, user, host, args)
    };
    let r = on_ssh(&ann, "ann", &["show", "subject", GOOD.0]);
    assert!(r.ok() && r.stdout.contains("records: 3"), "{r:?}");
    let r = on_ssh(
        &ann,
        "ann",
        &["request", "subject", "export", GOOD.0, "format", "csv"],
    );
    assert!(
        r.ok() && r.stdout.contains(GOOD.1),
        "the export has the name: {r:?}"
    );
    let r = on_ssh(&ann, "ann", &["request", "subject", "erase", REFUSED.0]);
    assert!(r.ok() && r.stdout.contains("erasure receipt"), "{r:?}");
    let r = on_ssh(&ann, "ann", &["show", "subject", CONSOLE[0]]);
    assert!(r.ok() && r.stdout.contains("nothing is held"), "{r:?}");
    let wrong = format!("{}x", national(CONSOLE[1]));
    let r = on_ssh(&ann, "ann", &["show", "subject", &wrong]);
    assert!(!r.ok() && r.stderr.contains("not a phone number"), "{r:?}");
    let r = on_ssh(&olga, "olga", &["show", "subject", CONSOLE[5]]);
    assert!(
        !r.ok() && r.stderr.contains("needs the admin role"),
        "{r:?}"
    );
    let raw = raw_as(
        &a,
        None,
        &[&format!(
            r#"{{"cmd":"show_subject","number":{}}}"#,
            CONSOLE[2].trim_start_matches('+')
        )],
    );
    assert_eq!(raw[0]["ok"], false, "{raw:?}");
    // A typed line straight to the socket: the daemon cannot count on the console to
    // withhold a number.
    let d = national(CONSOLE[7]);
    let line = format!("show subject {}.{}.{}", &d[..3], &d[3..6], &d[6..]);
    let raw = raw_as(
        &a,
        None,
        &[&serde_json::json!({"cmd": "remember", "line": line}).to_string()],
    );
    assert_eq!(raw[0]["ok"], true, "{raw:?}");
    let r = a.cli(&[
        "request", "subject", "export", CONSOLE[6], "--format", "csv",
    ]);
    assert!(r.ok(), "{r:?}");
    // Typed lines, on a terminal: one that does not parse (the console keeps it whole for
    // the audit trail), one whose number is not E.164.
    {
        let cmd = ssh_terminal(&mgmt, &ann.private, "ann", A_MGMT_V4.into());
        let mut p = rexpect::session::spawn_command(cmd, Some(15_000)).unwrap();
        p.exp_string("ann@lab-a> ").unwrap();
        p.send_line("show subject +1 415 555 0149").unwrap();
        p.exp_string("ann@lab-a> ").unwrap();
        p.send_line(&format!("request subject erase {}", national(CONSOLE[4])))
            .unwrap();
        let e = p.exp_string("ann@lab-a> ").unwrap();
        assert!(e.contains("not a phone number"), "{e}");
        p.send_line("exit").unwrap();
        p.exp_eof().unwrap();
    }

    // What the daemon logged holds the console's requests (they reached the log scanned
    // below) and the SIP error paths ran.
    let log = a.log();
    for want in [
        "request subject erase -> ok",
        "show subject -> refused",
        "malformed request -> refused",
        "typed -> show subject <number withheld>",
        "unknown number",
    ] {
        assert!(
            log.contains(want),
            "{want:?} not in the daemon's log:\n{log}"
        );
    }
    // The typed lines that hold a number the console did not withhold (the one that does
    // not parse, the raw one) reached the log too.
    let typed = log
        .lines()
        .filter(|l| l.contains("typed -> show subject") && !l.contains("withheld"))
        .count();
    assert_eq!(typed, 2, "{log}");
    let st = stats(&a);
    assert!(u(&st["malformed_dropped"]) >= 3, "{st}");
    assert!(u(&st["flood_dropped"]) > 0, "{st}");
    assert!(u(&st["calls_rejected"]) >= 4, "{st}");

    // Stopped cleanly: everything it wrote is on disk.
    assert_eq!(a.stop(), Some(0), "{}", a.log());

    // ---- the scanner finds what is there ---------------------------------------------
    // On the wire: sipp's trace of what it sent holds each SIP-planted value.
    let traces = vec![good.dir.clone(), refused.dir.clone()];
    let hits = scan(&traces, &needles);
    for want in [GOOD.0, GOOD.1, REFUSED.0, REFUSED.1, national(GOOD.0)] {
        assert!(
            hits.iter().any(|(_, n)| n == want),
            "the scanner does not find {want:?} in sipp's trace: {hits:?}"
        );
    }
    // In the appliance's tree: a file planted there with every needle, in binary.
    let canary = a.dir().join("canary.bin");
    let mut blob = vec![0u8, 0xff, 0x13];
    for n in &needles {
        blob.extend_from_slice(n.as_bytes());
        blob.push(0);
    }
    std::fs::write(&canary, &blob).unwrap();
    let roots = written_by_the_appliance(&a);
    let hits = scan(&roots, &needles);
    for n in &needles {
        assert!(
            hits.iter().any(|(f, h)| *f == canary && h == n),
            "the scanner misses {n:?} in {}",
            canary.display()
        );
    }
    std::fs::remove_file(&canary).unwrap();
    // And it reads the real files: the configured tracking numbers are in the config file.
    let hits = scan(&roots, &["+15550100000-+15550100099".to_owned()]);
    assert!(
        hits.iter().any(|(f, _)| f.ends_with("callgate.toml")),
        "{hits:?}"
    );

    // ---- none of them is anywhere the daemon wrote ------------------------------------
    let hits = scan(&roots, &needles);
    assert!(
        hits.is_empty(),
        "planted caller data found in what the appliance wrote:\n{}\n--- log:\n{}\n--- sshd:\n{}",
        hits.iter()
            .map(|(f, n)| format!("  {n:?} in {}", f.display()))
            .collect::<Vec<_>>()
            .join("\n"),
        std::fs::read_to_string(a.log_path()).unwrap_or_default(),
        sshd_log(&a)
    );
    let scanned: Vec<PathBuf> = {
        let mut v = Vec::new();
        for r in &roots {
            if r.is_file() {
                v.push(r.clone());
            } else {
                files(r, &mut v);
            }
        }
        v
    };
    assert!(
        scanned.iter().any(|f| f.starts_with(a.state_dir())) && scanned.len() > 10,
        "the state directory was scanned: {scanned:?}"
    );
}

#[test]
fn an_operator_sees_the_same_call_masked_over_ssh() {
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Mgmt]).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (a, _sshd, ann, olga) = appliance_with_console(&lab, keys.path(), &[]);
    let mgmt = lab.ns(Host::Mgmt);
    let host: IpAddr = A_MGMT_V4.into();
    let on_ssh = |key: &KeyPair, user: &str, args: &[&str]| -> Cli {
        ssh(&mgmt, &key.private, user, host, args)
    };
    let (masked_number, masked_name) = ("+1 •••• 42", "Z…");

    // One call, held while both look at it, then ended.
    let callee = pbx(&lab);
    let call = sipp_caller(&lab, "uac.xml", UDP_NUMBER, GOOD)
        .calls(1)
        .duration(Duration::from_secs(6))
        .spawn()
        .unwrap();
    wait_until("the call is answered", 15, || {
        hil_tests::calls::active_calls(&a)
            .iter()
            .any(|c| c["state"] == "answered")
    });
    // `show calls`: masked for both (it is not audited); the operator's JSON too.
    for (key, user) in [(&ann, "ann"), (&olga, "olga")] {
        let r = on_ssh(key, user, &["show", "calls"]);
        assert!(r.ok() && r.stdout.contains(masked_number), "{user}: {r:?}");
        assert!(!r.stdout.contains(national(GOOD.0)), "{user}: {r:?}");
    }
    let r = on_ssh(&olga, "olga", &["show", "calls", "|", "display", "json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert_eq!(v["calls"][0]["caller"], masked_number, "{v}");
    let r = call.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(r.successful, 1, "{}", r.summary());
    let _ = callee.stop();
    assert_eq!(wait_cdrs(&a, 1).len(), 1);

    // `show cdrs`: the admin sees the caller, the operator the masks, in text and JSON.
    let admin = on_ssh(&ann, "ann", &["show", "cdrs"]);
    assert!(admin.ok(), "{admin:?}");
    assert!(
        admin.stdout.contains(GOOD.0) && admin.stdout.contains(GOOD.1),
        "{admin:?}"
    );
    let admin_json = on_ssh(&ann, "ann", &["show", "cdrs", "|", "display", "json"]);
    let v: Value = serde_json::from_str(&admin_json.stdout).unwrap();
    assert_eq!(v["cdrs"][0]["cdr"]["caller"], GOOD.0, "{v}");
    assert_eq!(v["cdrs"][0]["cdr"]["caller_name"], GOOD.1, "{v}");
    assert_eq!(v["masked"], false, "{v}");
    let call_id = v["cdrs"][0]["cdr"]["call_id"].as_str().unwrap().to_owned();

    let op = on_ssh(&olga, "olga", &["show", "cdrs"]);
    assert!(op.ok(), "{op:?}");
    assert!(
        op.stdout.contains(masked_number) && op.stdout.contains(masked_name),
        "{op:?}"
    );
    let op_json = on_ssh(&olga, "olga", &["show", "cdrs", "|", "display", "json"]);
    let v: Value = serde_json::from_str(&op_json.stdout).unwrap();
    let c = &v["cdrs"][0]["cdr"];
    assert_eq!(c["call_id"], call_id.as_str(), "the same call: {v}");
    assert_eq!(c["caller"], masked_number, "{v}");
    assert_eq!(c["caller_name"], masked_name, "{v}");
    assert_eq!(c["tracking_number"], UDP_NUMBER, "{v}");
    assert_eq!(v["masked"], true, "{v}");
    // The operator's raw socket gets no more than the console prints.
    let raw = raw_as(&a, Some("olga"), &[r#"{"cmd":"show_cdrs","last":5}"#]);
    let whole = raw
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(raw[0]["ok"], true, "{whole}");
    for out in [&op.stdout, &op_json.stdout, &whole] {
        assert!(
            !out.contains(national(GOOD.0)) && !out.contains("Quimby"),
            "the operator sees the caller: {out}"
        );
    }

    // Subject requests refuse the operator plainly, and change nothing.
    for args in [
        &["show", "subject", GOOD.0][..],
        &["request", "subject", "export", GOOD.0],
        &["request", "subject", "erase", GOOD.0],
    ] {
        let r = on_ssh(&olga, "olga", args);
        assert!(
            !r.ok() && r.stderr.contains("needs the admin role"),
            "{args:?}: {r:?}"
        );
    }
    let r = on_ssh(&ann, "ann", &["show", "subject", GOOD.0]);
    assert!(r.ok() && r.stdout.contains("records: 1"), "{r:?}");
    // Both listings are on record, with the role that read them.
    let audit = a.cli(&["--json", "show", "audit", "--last", "200"]).json();
    let rows = audit["audit"].as_array().cloned().unwrap_or_default();
    for user in ["ann", "olga"] {
        assert!(
            rows.iter()
                .any(|r| r["entry"]["user"] == user && r["entry"]["action"] == "show cdrs"),
            "{user}'s show cdrs is audited: {rows:#?}"
        );
    }
}
