//! The appliance's main job on the built-in lab: bring up the lab with `config/lab.toml`,
//! run callgated on appliance A, show allowed traffic passing and the rest dropped, with
//! the counters that moved, calls and their records, an engineer's SSH login and confirmed
//! commit, a stolen disk, then the pair; tear everything down (also on failure).
//!
//! Run by `scripts/demo` (root needed). Exit code 0 when every flow did what the config
//! says, 1 otherwise.

use std::net::IpAddr;
use std::time::Duration;

use hil_tests::{addr, Appliance, Host, Lab, Ns, Token};

const LAB: &str = include_str!("../../../config/lab.toml");

#[derive(Clone, Copy)]
enum Flow {
    Tcp(u16),
    Udp(u16),
    Ping,
}

struct Case {
    what: &'static str,
    from: Host,
    src: Option<IpAddr>,
    to: Host,
    dst: IpAddr,
    flow: Flow,
    expect: bool,
}

fn probe(lab: &Lab, c: &Case) -> bool {
    let from: Ns<'_> = lab.ns(c.from);
    let to = lab.ns(c.to);
    let wait = if c.expect {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(500)
    };
    match c.flow {
        Flow::Tcp(port) => match to.tcp_listen(c.dst, port) {
            Ok(_l) => from.tcp_connect(c.src, c.dst, port, wait),
            // The appliance's own service already listens there (the SIP proxy).
            Err(_) => from.tcp_connect(c.src, c.dst, port, wait),
        },
        Flow::Udp(port) => match to.udp_listen_silent(c.dst, port) {
            Ok(l) => {
                let t = Token::new();
                from.udp_send(c.src, c.dst, port, &t);
                l.wait_for(&t, wait)
            }
            // The SIP proxy listens there: an OPTIONS must get an answer.
            Err(_) => sip_options(&from, c.src, c.dst, port, wait),
        },
        Flow::Ping => from.ping(c.src, c.dst, wait),
    }
}

/// Sends a SIP OPTIONS from `from` to `dst:port` and waits for any SIP response.
fn sip_options(from: &Ns<'_>, src: Option<IpAddr>, dst: IpAddr, port: u16, wait: Duration) -> bool {
    from.run_in(move || {
        let bind = match (src, dst) {
            (Some(s), _) => std::net::SocketAddr::new(s, 0),
            (None, IpAddr::V4(_)) => std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            (None, IpAddr::V6(_)) => std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        };
        let Ok(sock) = std::net::UdpSocket::bind(bind) else {
            return false;
        };
        let Ok(local) = sock.local_addr() else {
            return false;
        };
        let host = match dst {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let me = match local.ip() {
            IpAddr::V4(a) => format!("{a}:{}", local.port()),
            IpAddr::V6(a) => format!("[{a}]:{}", local.port()),
        };
        let msg = format!(
            "OPTIONS sip:{host} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKdemo{}\r\nMax-Forwards: 70\r\nFrom: <sip:demo@{me}>;tag=demo\r\nTo: <sip:{host}>\r\nCall-ID: demo-{}@{me}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            local.port(),
            local.port()
        );
        let _ = sock.set_read_timeout(Some(wait));
        if sock.send_to(msg.as_bytes(), (dst, port)).is_err() {
            return false;
        }
        let mut buf = [0u8; 4096];
        matches!(sock.recv_from(&mut buf), Ok((n, _)) if buf.get(..n).is_some_and(|b| b.starts_with(b"SIP/2.0 ")))
    })
}

/// Copies a's disk (state directory: sealed key blob and records) to board b, which has a
/// TPM of its own, and shows that b cannot unseal it.
fn theft(lab: &Lab, a: &mut Appliance<'_>) -> bool {
    println!("\ntheft check: a's disk (sealed key + encrypted records) moved to board b");
    let mut b = match Appliance::start_locked(lab, Host::B, LAB) {
        Ok(b) => b,
        Err(e) => {
            println!("  board b: {e}");
            return false;
        }
    };
    let _ = a.stop();
    let _ = b.stop();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(a.state_dir())
        .arg(b.state_dir().with_extension("stolen"))
        .status()
        .is_ok_and(|s| s.success())
        && (std::fs::remove_dir_all(b.state_dir()).is_ok() || !b.state_dir().exists())
        && std::fs::rename(b.state_dir().with_extension("stolen"), b.state_dir()).is_ok();
    if !copied || b.launch().is_err() || a.launch().is_err() {
        println!("  could not set up the copy");
        return false;
    }
    let status = b.cli(&["--json", "status"]).json();
    let reason = status["reason"].as_str().unwrap_or("");
    println!(
        "  board b with a's disk: {}",
        b.cli(&["status"]).stdout.lines().next().unwrap_or("")
    );
    let refused = status["phase"] == "locked" && reason.contains("another TPM");
    println!(
        "  {}",
        if refused {
            "refused: the stolen disk cannot be decrypted on another board"
        } else {
            "NOT refused  <-- WRONG"
        }
    );
    println!(
        "  board a, on its own TPM: {}",
        a.cli(&["status"]).stdout.lines().next().unwrap_or("")
    );
    refused
}

/// Places calls across the lab with sipp (carrier → appliance a → pbx) and prints what the
/// appliance recorded. Returns the number of things that went wrong.
/// An engineer's session: an admin account committed in the config, Debian's sshd with the
/// image's config on a's management address, and `ssh -tt ann@a` from the management host
/// typing what an engineer types: a look at the calls, then a change made in configuration
/// mode with `commit confirmed 1` and `confirm`. The transcript is printed as the terminal
/// showed it; the kernel's ruleset and the audit trail are checked after.
fn console(lab: &Lab, a: &Appliance<'_>) -> usize {
    use hil_tests::console::{ssh_command, start_sshd, KeyPair};
    use std::io::{Read, Write};
    println!(
        "
console: an engineer logs in over SSH with their key and makes a confirmed commit"
    );
    let Ok(keys) = tempfile::tempdir() else {
        return 1;
    };
    let ann = KeyPair::new(keys.path(), "ann");
    let cfg = format!(
        "{LAB}\n[[user]]\nname = \"ann\"\nrole = \"admin\"\nssh_keys = [\"{}\"]\n",
        ann.public
    );
    let r = a.commit(&cfg, &[]);
    if !r.ok() {
        eprintln!("commit of ann's account: {}", r.stderr);
        return 1;
    }
    println!("  callgate commit: [[user]] ann (admin, an ed25519 key) -> the account is made");
    if !hil_tests::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        a.cli_as("ann", &["status"]).ok()
    }) {
        eprintln!("ann's account did not appear");
        return 1;
    }
    let _sshd = start_sshd(a, addr::A_MGMT_V4.into());
    let mut cmd = ssh_command(&lab.ns(Host::Mgmt), "ssh", Some(&ann.private));
    cmd.arg("-tt")
        .arg(format!("ann@{}", addr::A_MGMT_V4))
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let Ok(mut ssh) = cmd.spawn() else {
        eprintln!("ssh did not start");
        return 1;
    };
    let (Some(mut input), Some(mut output)) = (ssh.stdin.take(), ssh.stdout.take()) else {
        return 1;
    };
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = output.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut prompts = || {
        seen.extend(rx.try_iter().flatten());
        let s = String::from_utf8_lossy(&seen);
        s.matches("ann@lab-a> ").count() + s.matches("ann@lab-a# ").count()
    };
    let lines = [
        "show calls",
        "configure",
        "set allow wan-traceroute ports 33434-33500",
        "show | compare | no-more",
        "commit confirmed 1",
        "confirm",
        "exit",
        "show history | no-more",
        "exit",
    ];
    let mut typed_all = true;
    for (i, line) in lines.iter().enumerate() {
        // Each line once the prompt before it is there, as a person types.
        if !hil_tests::poll_until(Duration::from_secs(20), Duration::from_millis(20), || {
            prompts() > i
        }) {
            typed_all = false;
            break;
        }
        let _ = input.write_all(format!("{line}\r").as_bytes());
        let _ = input.flush();
    }
    drop(input);
    let exited = hil_tests::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        matches!(ssh.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = ssh.kill();
    }
    let _ = ssh.wait();
    let _ = reader.join();
    seen.extend(rx.try_iter().flatten());
    let transcript = hil_tests::console::strip_terminal(&String::from_utf8_lossy(&seen));
    for l in transcript.lines() {
        println!("  | {l}");
    }
    let mut wrong = 0;
    let in_kernel = a.ruleset().contains("33434-33500");
    println!(
        "  the change is in the kernel after confirm: {}",
        if in_kernel { "yes" } else { "NO  <-- WRONG" }
    );
    let audit = a.cli(&["--json", "show", "audit", "--last", "40"]).json();
    let by_ann: Vec<String> = audit["audit"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| &r["entry"])
        .filter(|e| e["user"] == "ann" && e["action"] != "typed")
        .map(|e| {
            format!(
                "{} -> {}",
                e["action"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or("")
            )
        })
        .collect();
    let audited = ["configure -> ok", "commit -> ok", "confirm -> ok"]
        .iter()
        .all(|w| by_ann.iter().any(|s| s == w));
    println!(
        "  the audit trail names ann for configure, commit and confirm: {}",
        if audited { "yes" } else { "NO  <-- WRONG" }
    );
    for (ok, what) in [
        (typed_all, "every line typed"),
        (in_kernel, "kernel"),
        (audited, "audit"),
    ] {
        if !ok {
            eprintln!("console demo: {what}");
            wrong += 1;
        }
    }
    wrong
}

/// The uplink: the cloud's broker (Debian's Mosquitto, mutual TLS 1.3, a test fleet CA) in
/// the cloud namespace; a's key made and sealed on a, its request signed by the fleet CA,
/// the certificate installed; every record reaches the broker (read with mosquitto_sub as
/// the cloud); then a config signed by the fleet's key is sent from the cloud, applied as a
/// confirmed commit and confirmed once the broker is reached again.
fn cloud(lab: &Lab, a: &Appliance<'_>) -> usize {
    use base64::Engine as _;
    use hil_tests::broker::{publish, Broker, BrokerOpts, Pki, Subscriber};
    use ring::signature::{Ed25519KeyPair, KeyPair};
    println!(
        "\ncloud: records to the cloud's MQTT broker over mutual TLS, and a signed config from it"
    );
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let Ok(dir) = tempfile::tempdir() else {
        return 1;
    };
    let (pki, fleet) = match (
        Pki::new(dir.path()),
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .ok()
            .and_then(|d| Ed25519KeyPair::from_pkcs8(d.as_ref()).ok()),
    ) {
        (Ok(p), Some(f)) => (p, f),
        _ => {
            eprintln!("cloud: the test PKI or the fleet key could not be made");
            return 1;
        }
    };
    let cloud_ns = lab.ns(Host::Cloud);
    let (_broker, sub) = match Broker::start(&cloud_ns, &pki, BrokerOpts::default())
        .and_then(|b| Subscriber::start(&cloud_ns, &pki, "callgate/lab-a/#").map(|s| (b, s)))
    {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cloud: the broker: {e}");
            return 1;
        }
    };
    println!("  mosquitto on broker.fleet.test ({}:8883): TLS 1.3, client certificates required, each appliance under callgate/<its name>/", addr::CLOUD_V4);
    let running = a.cli(&["--json", "show", "config"]).json()["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let cfg = format!(
        "{running}\n[[egress]]\nname = \"uplink\"\nzone = \"wan\"\ndestinations = [\"{}/32\"]\nprotocol = \"tcp\"\nports = [8883]\n\n\
         [uplink]\nbroker = \"{}\"\naddress = \"{}\"\nca = \"\"\"\n{}\"\"\"\nfleet_key = \"{}\"\nboot_delay_max_secs = 0\nbackoff_max_secs = 2\n",
        addr::CLOUD_V4,
        addr::BROKER_NAME,
        addr::CLOUD_V4,
        pki.ca_pem().unwrap_or_default(),
        b64(fleet.public_key().as_ref()),
    );
    let r = a.commit(&cfg, &[]);
    if !r.ok() {
        eprintln!("cloud: commit of [uplink]: {}", r.stderr);
        return 1;
    }
    println!("  callgate commit: [uplink] (the fleet CA, the broker's name, the fleet's config key) and its egress entry");
    println!("  callgate uplink csr: a P-256 key made on a and sealed under its TPM-held key; the request names CN=lab-a");
    let r = match hil_tests::broker::enroll(a, |csr| pki.sign_csr(csr)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cloud: enrolment: {e}");
            return 1;
        }
    };
    println!("  callgate uplink install-cert: {}", r.stdout.trim());
    if !r.ok() {
        eprintln!("{}", r.stderr);
        return 1;
    }
    let stored = a.cli(&["--json", "show", "cdrs", "--last", "10000"]).json()["cdrs"]
        .as_array()
        .map_or(0, Vec::len);
    let at_broker = || {
        let mut ids = std::collections::BTreeSet::new();
        for (t, p) in sub.messages() {
            if t != "callgate/lab-a/records" {
                continue;
            }
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p) {
                for r in v["records"].as_array().into_iter().flatten() {
                    if let Some(id) = r["id"].as_u64() {
                        ids.insert(id);
                    }
                }
            }
        }
        ids.len()
    };
    let all = hil_tests::poll_until(Duration::from_secs(30), Duration::from_millis(200), || {
        at_broker() >= stored
    });
    println!("\ncallgate show uplink:");
    for l in a.cli(&["show", "uplink"]).stdout.lines() {
        println!("  {l}");
    }
    println!(
        "\n  mosquitto_sub as the cloud on callgate/lab-a/#: {} of the {stored} stored records arrived{}",
        at_broker(),
        if all { "" } else { "  <-- WRONG" }
    );
    if let Some((_, p)) = sub
        .messages()
        .iter()
        .find(|(t, _)| t == "callgate/lab-a/records")
    {
        let text = String::from_utf8_lossy(p);
        let one = text.chars().take(230).collect::<String>();
        println!("  the first message begins: {one}…");
    }
    // A config from the cloud, signed by the fleet's key.
    let desired = cfg.replace("max_cps = 200", "max_cps = 150");
    let mut signed = b"callgate-config/1\0lab-a\0".to_vec();
    signed.extend_from_slice(&1u64.to_be_bytes());
    signed.extend_from_slice(desired.as_bytes());
    let doc = serde_json::json!({
        "appliance": "lab-a", "version": 1, "config": desired,
        "signature": b64(fleet.sign(&signed).as_ref()),
    });
    let sent = publish(
        &cloud_ns,
        &pki,
        "callgate/lab-a/config/desired",
        doc.to_string().as_bytes(),
        false,
    );
    println!("\n  the cloud publishes config version 1 (max_cps 200 -> 150), signed by the fleet's key: {}", if sent.is_ok() { "sent" } else { "NOT SENT" });
    let confirmed =
        hil_tests::poll_until(Duration::from_secs(40), Duration::from_millis(200), || {
            sub.messages().iter().any(|(t, p)| {
                t == "callgate/lab-a/config/reported"
                    && String::from_utf8_lossy(p).contains("\"confirmed\"")
            })
        });
    for (t, p) in sub.messages() {
        if t == "callgate/lab-a/config/reported" {
            println!("  config/reported: {}", String::from_utf8_lossy(&p));
        }
    }
    let applied = a.cli(&["show", "config"]).stdout.contains("max_cps = 150");
    println!(
        "  applied and confirmed on a: {}",
        if confirmed && applied {
            "yes"
        } else {
            "NO  <-- WRONG"
        }
    );
    if let Some(l) = a.cli(&["show", "history"]).stdout.lines().last() {
        println!("  callgate show history (last): {}", l.trim());
    }
    usize::from(!all) + usize::from(!(confirmed && applied)) + usize::from(sent.is_err())
}

fn calls(lab: &Lab, a: &Appliance<'_>) -> usize {
    use hil_tests::sipp::{Sipp, Transport};
    println!("\ncalls: sipp on the carrier dials tracking numbers through appliance a to sipp on the pbx");
    let mut wrong = 0;
    let pbx = |t: Transport| {
        Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
            .local(addr::PBX_V4, 5060)
            .transport(t)
            .spawn()
            .and_then(|h| h.wait_ready(Duration::from_secs(10)).map(|_| h))
    };
    let dial = |scenario: &str, t: Transport, number: &str, n: u64, hold_ms: u64| {
        Sipp::uac(&lab.ns(Host::Carrier), scenario)
            .local(addr::CARRIER_V4, 5060)
            .remote(addr::A_WAN_V4, 5060)
            .transport(t)
            .service(number)
            .caller("+14155550123", "Ada Lovelace")
            .calls(n)
            .rate(10.0)
            .duration(Duration::from_millis(hold_ms))
    };
    let plan: [(&str, &str, Transport, &str, u64, u64, u16); 3] = [
        (
            "3 calls to +15550100007 (spring-radio) over UDP",
            "uac.xml",
            Transport::Udp,
            "+15550100007",
            3,
            300,
            200,
        ),
        (
            "1 call to +15550100207 (tv-spot) over TCP",
            "uac.xml",
            Transport::Tcp,
            "+15550100207",
            1,
            300,
            200,
        ),
        (
            "1 call to an unknown number +15559990000",
            "uac_reject.xml",
            Transport::Udp,
            "+15559990000",
            1,
            0,
            404,
        ),
    ];
    for (what, scenario, t, number, n, hold, code) in plan {
        let callee = match pbx(t) {
            Ok(h) => h,
            Err(e) => {
                println!("  {what}: pbx did not start: {e}");
                wrong += 1;
                continue;
            }
        };
        match dial(scenario, t, number, n, hold).run() {
            Ok(r)
                if r.final_codes.len() as u64 == n && r.final_codes.iter().all(|c| *c == code) =>
            {
                println!("  {what}: {:?}", r.final_codes);
            }
            Ok(r) => {
                println!("  {what}: unexpected: {}  <-- WRONG", r.summary());
                wrong += 1;
            }
            Err(e) => {
                println!("  {what}: sipp failed: {e}  <-- WRONG");
                wrong += 1;
            }
        }
        let _ = callee.stop();
    }
    // One call over TLS: the appliance's key made and sealed here, a CA signs its request,
    // the carrier's sipp speaks TCP into stunnel (OpenSSL), which carries it over TLS.
    wrong += tls_call(lab, a);
    // One call held while we look at it.
    if let Ok(callee) = pbx(Transport::Udp) {
        if let Ok(call) = dial("uac.xml", Transport::Udp, "+15550100100", 1, 3000).spawn() {
            std::thread::sleep(Duration::from_millis(1200));
            println!("\ncallgate show calls (one call held 3 s; caller numbers masked):");
            for line in a.cli(&["show", "calls"]).stdout.lines() {
                println!("  {line}");
            }
            let _ = call.wait(Duration::from_secs(20));
        }
        let _ = callee.stop();
    }
    std::thread::sleep(Duration::from_millis(500));
    println!("\ncallgate show cdrs (decrypted from the encrypted store for an admin):");
    let cdrs = a.cli(&["show", "cdrs"]);
    for line in cdrs.stdout.lines() {
        println!("  {line}");
    }
    let n = a.cli(&["--json", "show", "cdrs"]).json()["cdrs"]
        .as_array()
        .map_or(0, |v| v.len());
    if n != 7 {
        println!("  expected 7 call records, found {n}  <-- WRONG");
        wrong += 1;
    }
    println!("\ncallgate show sip stats (excerpt):");
    for line in a.cli(&["show", "sip", "stats"]).stdout.lines() {
        if [
            "calls_",
            "pinholes_",
            "refused_number",
            "messages_",
            "tls_handshakes",
            "tls_cert",
        ]
        .iter()
        .any(|k| line.starts_with(k))
        {
            println!("  {line}");
        }
    }
    wrong
}

/// Enrols `a` for SIP over TLS and places one call over it. How many things went wrong.
fn tls_call(lab: &Lab, a: &Appliance<'_>) -> usize {
    use hil_tests::sipp::{Sipp, Transport};
    use hil_tests::tls::{enrol, through_stunnel, SipPki, Stunnel};
    println!("\nSIP over TLS: `callgate sip tls csr`, the lab CA signs it, `callgate sip tls install-cert -`");
    let pki = match SipPki::new() {
        Ok(p) => p,
        Err(e) => {
            println!("  the lab PKI: {e}  <-- WRONG");
            return 1;
        }
    };
    match enrol(a, &pki) {
        Ok(out) => println!("  {}", out.trim()),
        Err(e) => {
            println!("  enrolment: {e}  <-- WRONG");
            return 1;
        }
    }
    let tunnel = match Stunnel::client(&lab.ns(Host::Carrier), &pki, None) {
        Ok(t) => t,
        Err(e) => {
            println!("  stunnel: {e}  <-- WRONG");
            return 1;
        }
    };
    let Ok(callee) = Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
        .local(addr::PBX_V4, 5060)
        .transport(Transport::Udp)
        .spawn()
        .and_then(|h| h.wait_ready(Duration::from_secs(10)).map(|_| h))
    else {
        println!("  pbx did not start  <-- WRONG");
        return 1;
    };
    let r =
        through_stunnel(Sipp::uac(&lab.ns(Host::Carrier), "uac.xml").local(addr::CARRIER_V4, 5060))
            .service("+15550100008")
            .caller("+14155550123", "Ada Lovelace")
            .calls(1)
            .duration(Duration::from_millis(300))
            .run();
    let _ = callee.stop();
    let mut wrong = 0;
    match r {
        Ok(r) if r.final_codes == vec![200] => {
            println!("  1 call to +15550100008 (spring-radio) over TLS to a, UDP to the pbx: [200]")
        }
        Ok(r) => {
            println!(
                "  the call over TLS: {}  <-- WRONG\n{}",
                r.summary(),
                tunnel.log()
            );
            wrong += 1;
        }
        Err(e) => {
            println!("  the call over TLS: sipp failed: {e}  <-- WRONG");
            wrong += 1;
        }
    }
    wrong
}

/// The redundant pair: A and B paired through the console, calls held through the VIPs,
/// the active SIGKILLed mid-call, the calls carried on by B; their records printed from B.
fn pair() -> usize {
    use hil_tests::pair::{
        new_pair_lab, role, start_pair_shipped as start_pair, vips_held, wait_until, VIPS,
    };
    use hil_tests::sipp::{Sipp, Transport};
    println!("\n==> the redundant pair (config/lab-pair-a.toml, lab-pair-b.toml)");
    let lab = new_pair_lab();
    let (mut a, b) = start_pair(&lab);
    let mut wrong = 0;
    println!("paired through `callgate pair init` on a and `callgate pair join` on b");
    println!("\ncallgate show pair (on a):");
    for line in a.cli(&["show", "pair"]).stdout.lines() {
        println!("  {line}");
    }
    let callee = match Sipp::uas(&lab.ns(Host::Pbx), "uas.xml")
        .local(addr::PBX_V4, 5060)
        .transport(Transport::Udp)
        .spawn()
        .and_then(|h| h.wait_ready(Duration::from_secs(10)).map(|_| h))
    {
        Ok(h) => h,
        Err(e) => {
            println!("  pbx did not start: {e}  <-- WRONG");
            return 1;
        }
    };
    let call = Sipp::uac(&lab.ns(Host::Carrier), "uac.xml")
        .local(addr::CARRIER_V4, 5060)
        .remote(addr::WAN_VIP_V4, 5060)
        .transport(Transport::Udp)
        .service("+15550100007")
        .caller("+14155550123", "Ada Lovelace")
        .calls(20)
        .rate(20.0)
        .duration(Duration::from_secs(4))
        .timeout(Duration::from_secs(60))
        .spawn();
    let call = match call {
        Ok(c) => c,
        Err(e) => {
            println!("  sipp failed: {e}  <-- WRONG");
            return 1;
        }
    };
    std::thread::sleep(Duration::from_millis(1800));
    let held = a.cli(&["--json", "show", "calls"]).json()["calls"]
        .as_array()
        .map_or(0, |v| v.len());
    println!(
        "\n20 calls dialled to the WAN VIP {}, held 4 s; {held} in progress on a",
        addr::WAN_VIP_V4
    );
    println!("SIGKILL of a (the active) mid-call");
    let t0 = std::time::Instant::now();
    a.kill9();
    let took = wait_until(Duration::from_secs(5), || {
        vips_held(&lab, Host::B).len() == VIPS.len()
    });
    println!(
        "b holds the virtual addresses {:?} after {} ms (seen by the demo), role {}",
        vips_held(&lab, Host::B),
        t0.elapsed().as_millis(),
        role(&b)
    );
    if !took {
        println!("  b did not take over  <-- WRONG");
        wrong += 1;
    }
    match call.wait(Duration::from_secs(60)) {
        Ok(r) if r.successful == 20 && r.failed == 0 => {
            println!(
                "the callers hung up through b: {} calls ended normally, 0 failed",
                r.successful
            )
        }
        Ok(r) => {
            println!("  unexpected: {}  <-- WRONG", r.summary());
            wrong += 1;
        }
        Err(e) => {
            println!("  sipp failed: {e}  <-- WRONG");
            wrong += 1;
        }
    }
    let _ = callee.stop();
    std::thread::sleep(Duration::from_millis(500));
    println!("\ncallgate show cdrs --last 5 (on b; answered by lab-a, ended by lab-b):");
    for line in b.cli(&["show", "cdrs", "--last", "5"]).stdout.lines() {
        println!("  {line}");
    }
    let recs = b.cli(&["--json", "show", "cdrs", "--last", "100"]).json()["cdrs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let complete = recs
        .iter()
        .map(|r| &r["cdr"])
        .filter(|c| !c["end_at"].is_null() && c["appliance"] == "lab-a" && c["ended_by"] == "lab-b")
        .count();
    if complete != 20 {
        println!("  expected 20 complete records carried over by b, found {complete}  <-- WRONG");
        wrong += 1;
    }
    println!("\ncallgate show pair (on b):");
    for line in b.cli(&["show", "pair"]).stdout.lines() {
        println!("  {line}");
    }
    wrong
}

fn main() -> std::process::ExitCode {
    let lab = match Lab::start(&Host::ALL) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "lab {} is up: carrier, a (the appliance), b (a second board), pbx, mgmt, cloud",
        lab.prefix()
    );
    let mut a = match Appliance::start(&lab, Host::A, LAB) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("appliance: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("callgated runs on appliance a with config/lab.toml");
    println!(
        "keys provisioned: a key-encryption key sealed to PCR 7 of a's TPM (swtpm); \
         recovery key shown once: {}\n",
        a.recovery_key
            .as_deref()
            .map(|k| format!("{}-…", k.split('-').next().unwrap_or("")))
            .unwrap_or_else(|| "(none)".into())
    );
    print!("{}", a.cli(&["status"]).stdout);

    let v4 = |a: std::net::Ipv4Addr| -> IpAddr { a.into() };
    let v6 = |a: std::net::Ipv6Addr| -> IpAddr { a.into() };
    let cases = [
        Case {
            what: "carrier SIP/UDP 5060 (carrier-sip-udp)",
            from: Host::Carrier,
            src: None,
            to: Host::A,
            dst: v4(addr::A_WAN_V4),
            flow: Flow::Udp(5060),
            expect: true,
        },
        Case {
            what: "carrier SIP/TCP 5060 over IPv6 (carrier-sip-tcp)",
            from: Host::Carrier,
            src: None,
            to: Host::A,
            dst: v6(addr::A_WAN_V6),
            flow: Flow::Tcp(5060),
            expect: true,
        },
        Case {
            what: "carrier ping (carrier-ping)",
            from: Host::Carrier,
            src: None,
            to: Host::A,
            dst: v4(addr::A_WAN_V4),
            flow: Flow::Ping,
            expect: true,
        },
        Case {
            what: "carrier API to pbx TCP 8443 (carrier-api-to-pbx)",
            from: Host::Carrier,
            src: None,
            to: Host::Pbx,
            dst: v4(addr::PBX_V4),
            flow: Flow::Tcp(8443),
            expect: true,
        },
        Case {
            what: "carrier media to pbx UDP 30000 without a call",
            from: Host::Carrier,
            src: None,
            to: Host::Pbx,
            dst: v4(addr::PBX_V4),
            flow: Flow::Udp(30000),
            expect: false,
        },
        Case {
            what: "mgmt SSH (service:ssh)",
            from: Host::Mgmt,
            src: None,
            to: Host::A,
            dst: v4(addr::A_MGMT_V4),
            flow: Flow::Tcp(22),
            expect: true,
        },
        Case {
            what: "mgmt API 8443 over IPv6 (mgmt-api)",
            from: Host::Mgmt,
            src: None,
            to: Host::A,
            dst: v6(addr::A_MGMT_V6),
            flow: Flow::Tcp(8443),
            expect: true,
        },
        Case {
            what: "SIP from an unlisted carrier address",
            from: Host::Carrier,
            src: Some(v4(addr::CARRIER_V4_ALT)),
            to: Host::A,
            dst: v4(addr::A_WAN_V4),
            flow: Flow::Udp(5060),
            expect: false,
        },
        Case {
            what: "SSH from the carrier (wrong zone)",
            from: Host::Carrier,
            src: None,
            to: Host::A,
            dst: v4(addr::A_WAN_V4),
            flow: Flow::Tcp(22),
            expect: false,
        },
        Case {
            what: "carrier ping over IPv6 (entry is IPv4 only)",
            from: Host::Carrier,
            src: None,
            to: Host::A,
            dst: v6(addr::A_WAN_V6),
            flow: Flow::Ping,
            expect: false,
        },
        Case {
            what: "carrier SIP/TLS 5061 (carrier-sip-tls)",
            from: Host::Carrier,
            src: None,
            to: Host::A,
            dst: v4(addr::A_WAN_V4),
            flow: Flow::Tcp(5061),
            expect: true,
        },
        Case {
            what: "SIP/TLS 5061 from an unlisted carrier address",
            from: Host::Carrier,
            src: Some(v4(addr::CARRIER_V4_ALT)),
            to: Host::A,
            dst: v4(addr::A_WAN_V4),
            flow: Flow::Tcp(5061),
            expect: false,
        },
        Case {
            what: "SIP over TCP 5062 (port not listed)",
            from: Host::Carrier,
            src: None,
            to: Host::A,
            dst: v4(addr::A_WAN_V4),
            flow: Flow::Tcp(5062),
            expect: false,
        },
        Case {
            what: "carrier to pbx UDP 40000 (no pinhole)",
            from: Host::Carrier,
            src: None,
            to: Host::Pbx,
            dst: v4(addr::PBX_V4),
            flow: Flow::Udp(40000),
            expect: false,
        },
        Case {
            what: "mgmt API from an unlisted mgmt address",
            from: Host::Mgmt,
            src: Some(v4(addr::MGMT_V4_ALT)),
            to: Host::A,
            dst: v4(addr::A_MGMT_V4),
            flow: Flow::Tcp(8443),
            expect: false,
        },
    ];
    println!("{:<55} {:>8} {:>8}", "flow", "expected", "result");
    let mut wrong = 0;
    for c in &cases {
        let passed = probe(&lab, c);
        let word = |b: bool| if b { "PASS" } else { "DROP" };
        let mark = if passed == c.expect {
            ""
        } else {
            "  <-- WRONG"
        };
        if passed != c.expect {
            wrong += 1;
        }
        println!(
            "{:<55} {:>8} {:>8}{mark}",
            c.what,
            word(c.expect),
            word(passed)
        );
    }
    println!("\ncounters that moved (callgate show firewall):");
    let fw = a.cli(&["show", "firewall"]).stdout;
    for (i, line) in fw.lines().enumerate() {
        let moved = line
            .split_whitespace()
            .nth(3)
            .and_then(|p| p.parse::<u64>().ok())
            .is_some_and(|p| p > 0);
        if i == 0 || moved {
            println!("  {line}");
        }
    }
    wrong += calls(&lab, &a);
    wrong += console(&lab, &a);
    wrong += cloud(&lab, &a);
    let theft_ok = theft(&lab, &mut a);
    if !theft_ok {
        wrong += 1;
    }
    println!("\ntearing the lab down");
    drop(a);
    let prefix = lab.prefix().to_owned();
    drop(lab);
    let left = hil_tests::lab_namespaces(&prefix);
    if !left.is_empty() {
        eprintln!("namespaces left behind: {left:?}");
        return std::process::ExitCode::FAILURE;
    }
    wrong += pair();
    if wrong == 0 {
        println!("demo ok: every flow did what config/lab.toml says, and the pair lost no call");
        std::process::ExitCode::SUCCESS
    } else {
        println!("demo FAILED: {wrong} flow(s) did not do what the config says");
        std::process::ExitCode::FAILURE
    }
}
