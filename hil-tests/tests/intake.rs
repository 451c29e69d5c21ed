#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The transcript intake against real peers: `curl` and `openssl s_client` in the pbx
//! namespace as the PBX (client certificates from a test CA made with openssl), the
//! kernel's nftables on appliance A, Mosquitto in the cloud namespace as the cloud's broker
//! with `mosquitto_sub` reading what arrives.

use std::path::Path;
use std::time::Duration;

use hil_tests::addr::{self, A_PRIV_V4, A_WAN_V4, CLOUD_V4, PBX2_V4, PBX_V4};
use hil_tests::broker::{Broker, BrokerOpts, Ca, Identity, Pki, Subscriber};
use hil_tests::calls::{lab_toml, wait_until};
use hil_tests::{files_holding, Appliance, Host, Lab, Ns};
use serde_json::Value;

const TOPIC: &str = "callgate/lab-a/transcripts";
const PORT: u16 = 8444;

/// The PII planted in the transcript: each must be gone at the broker, and nowhere in the
/// appliance's state directory or log.
const PLANTED: [&str; 7] = [
    "4111 1111 1111 1111",
    "4111111111111111",
    "123-45-6789",
    "(415) 555-0123",
    "555-0123",
    "jane.doe@example.com",
    "172.16.254.77",
];
/// Look-alikes that are not PII: each must arrive as it was.
const KEPT: [&str; 3] = ["order number 7730021", "$1,234.56", "2026-03-04"];

fn transcript() -> String {
    "Agent: thanks for calling. Caller: my card is 4111 1111 1111 1111 and my SSN is \
     123-45-6789. Call me back at (415) 555-0123 or write to jane.doe@example.com, my \
     router says 172.16.254.77. It is about order number 7730021 for $1,234.56 placed on \
     2026-03-04."
        .to_owned()
}

/// The PBX side's PKI: its CA (client certificates of the PBX, and the appliance's intake
/// server certificate), and an unrelated CA for the attacker.
struct PbxPki {
    ca: Ca,
    client: Identity,
    other_client: Identity,
}

impl PbxPki {
    fn new(dir: &Path) -> PbxPki {
        let ca = Ca::create(&dir.join("pbx-ca"), "pbx test CA").unwrap();
        let other = Ca::create(&dir.join("other-ca"), "other test CA").unwrap();
        PbxPki {
            client: ca.client_cert("pbx").unwrap(),
            other_client: other.client_cert("pbx").unwrap(),
            ca,
        }
    }
}

/// `config/lab.toml` with the uplink to the lab's broker and `[intake]` (plus `extra`).
fn config(pki: &Pki, pbx: &PbxPki, extra: &str) -> String {
    format!(
        "{}\n[[egress]]\nname = \"uplink\"\nzone = \"wan\"\n\
         destinations = [\"{CLOUD_V4}/32\"]\nprotocol = \"tcp\"\nports = [8883]\n\n\
         [uplink]\nbroker = \"{}\"\naddress = \"{CLOUD_V4}\"\nca = \"\"\"\n{}\"\"\"\n\
         boot_delay_max_secs = 0\nbackoff_max_secs = 2\nkeepalive_secs = 5\n\n\
         [intake]\nlisten = \"{A_PRIV_V4}:{PORT}\"\nsources = [\"{PBX_V4}/32\"]\n\
         client_ca = \"\"\"\n{}\"\"\"\n{extra}",
        lab_toml(),
        addr::BROKER_NAME,
        pki.ca_pem().unwrap(),
        pbx.ca.cert_pem().unwrap(),
    )
}

/// The uplink and the intake enrolled; returns once the uplink is connected and the
/// intake listens.
fn enroll(a: &Appliance<'_>, pki: &Pki, pbx: &PbxPki) {
    let r = hil_tests::broker::enroll(a, |csr| pki.sign_csr(csr)).unwrap();
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    let csr = a.cli(&["--json", "intake", "csr"]);
    assert!(csr.ok(), "{} {}", csr.stdout, csr.stderr);
    let pem = csr.json()["csr"].as_str().unwrap().to_owned();
    let cert = pbx
        .ca
        .sign_server_csr(&pem, &format!("IP:{A_PRIV_V4}"), None)
        .unwrap();
    let r = a.cli_stdin(&["intake", "install-cert", "-"], &cert);
    assert!(r.ok(), "{} {}", r.stdout, r.stderr);
    wait_until("uplink connected", 20, || {
        a.cli(&["--json", "show", "uplink"]).json()["state"] == "connected"
    });
    wait_until("intake listening", 10, || {
        a.log()
            .contains(&format!("intake: listening on {A_PRIV_V4}:{PORT}"))
    });
}

/// What a `curl` run gave: the HTTP status (0: no answer) and the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    err: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// How a request is made.
struct Post<'a> {
    /// The client certificate (None: none).
    cert: Option<&'a Identity>,
    /// `--interface`: the source address.
    from: Option<std::net::Ipv4Addr>,
    /// Where to (default: the intake).
    to: std::net::Ipv4Addr,
    content_type: &'a str,
    headers: Vec<String>,
    body: Vec<u8>,
}

impl<'a> Post<'a> {
    fn json(cert: &'a Identity, doc: &Value) -> Post<'a> {
        Post {
            cert: Some(cert),
            from: None,
            to: A_PRIV_V4,
            content_type: "application/json",
            headers: Vec::new(),
            body: serde_json::to_vec(doc).unwrap(),
        }
    }

    fn raw(cert: &'a Identity, body: &[u8]) -> Post<'a> {
        Post {
            body: body.to_vec(),
            ..Post::json(cert, &Value::Null)
        }
    }

    /// `curl` in `ns`; the CA that signed the intake's certificate is the one trusted.
    fn send(&self, ns: &Ns<'_>, pbx: &PbxPki) -> Answer {
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("body");
        std::fs::write(&body, &self.body).unwrap();
        let out = dir.path().join("out");
        let mut cmd = ns.command("curl");
        cmd.args([
            "-sS",
            "--connect-timeout",
            "3",
            "--max-time",
            "15",
            "--http1.1",
        ])
        .arg("--cacert")
        .arg(pbx.ca.cert())
        .arg("-o")
        .arg(&out)
        .args(["-w", "%{http_code}"])
        .args(["-H", &format!("Content-Type: {}", self.content_type)]);
        if let Some(id) = self.cert {
            cmd.arg("--cert").arg(&id.cert).arg("--key").arg(&id.key);
        }
        if let Some(ip) = self.from {
            cmd.args(["--interface", &ip.to_string()]);
        }
        for h in &self.headers {
            cmd.args(["-H", h]);
        }
        cmd.arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(format!("https://{}:{PORT}/v1/transcripts", self.to));
        let o = cmd.output().unwrap();
        Answer {
            status: String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            body: std::fs::read_to_string(&out).unwrap_or_default(),
            err: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn item(call_id: &str, text: &str) -> Value {
    serde_json::json!({"call_id": call_id, "kind": "transcript", "text": text})
}

/// The transcripts the broker delivered, in arrival order.
fn arrived(sub: &Subscriber<'_>) -> Vec<Value> {
    sub.messages()
        .into_iter()
        .filter(|(t, _)| t == TOPIC)
        .map(|(_, p)| serde_json::from_slice(&p).unwrap())
        .collect()
}

fn arrived_with(sub: &Subscriber<'_>, id: &str) -> Option<Value> {
    arrived(sub).into_iter().find(|v| v["id"] == id)
}

/// A transcript posted by the PBX reaches the cloud with every planted PII value gone and
/// the look-alikes intact; with the broker down it is still accepted, kept through a
/// SIGKILL of the daemon, and arrives once the broker is back; nothing of the PII is in
/// the state directory or the log.
#[test]
fn a_transcript_reaches_the_cloud_redacted_even_through_an_outage() {
    let lab = Lab::start(&[Host::A, Host::Pbx, Host::Cloud]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let pbx = PbxPki::new(dir.path());
    let mut broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    let mut sub = Subscriber::start(&lab.ns(Host::Cloud), &pki, "callgate/lab-a/#").unwrap();
    let mut a = Appliance::start(&lab, Host::A, &config(&pki, &pbx, "")).unwrap();
    // The firewall opens the port on the private side, for the PBX only.
    let rules = a.ruleset();
    assert!(rules.contains("service:intake"), "{rules}");
    enroll(&a, &pki, &pbx);
    let ns = lab.ns(Host::Pbx);

    // 1. JSON, the broker up.
    let call_id = "a84b4c76e66710@198.51.100.10";
    let r = Post::json(&pbx.client, &item(call_id, &transcript())).send(&ns, &pbx);
    assert_eq!(r.status, 202, "{r:?}");
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{r:?}");
    assert_eq!(r.json()["redactions"]["card"], 1, "{r:?}");
    wait_until("the transcript at the broker", 20, || {
        arrived_with(&sub, &id).is_some()
    });
    let got = arrived_with(&sub, &id).unwrap();
    assert_eq!(got["call_id"], call_id);
    assert_eq!(got["appliance"], "lab-a");
    assert_eq!(got["kind"], "transcript");
    assert!(
        got["received_ms"].as_u64().unwrap() > 1_700_000_000_000,
        "{got}"
    );
    let text = got["text"].as_str().unwrap();
    for p in PLANTED {
        assert!(!text.contains(p), "{p} reached the cloud: {text}");
    }
    for k in KEPT {
        assert!(text.contains(k), "{k} was lost: {text}");
    }
    for (kind, tag) in [
        ("card", "[CARD]"),
        ("ssn", "[SSN]"),
        ("phone", "[PHONE]"),
        ("email", "[EMAIL]"),
        ("ip", "[IP]"),
    ] {
        assert!(text.contains(tag), "{tag}: {text}");
        assert!(
            got["redactions"][kind].as_u64().unwrap() >= 1,
            "{kind}: {got}"
        );
    }

    // 2. text/plain with the call id in a header; a note.
    let mut plain = Post::raw(
        &pbx.client,
        b"Note: customer asked to be reached at 415-555-0123.",
    );
    plain.content_type = "text/plain; charset=utf-8";
    plain.headers = vec!["X-Call-Id: note-1@pbx".into(), "X-Kind: note".into()];
    let r = plain.send(&ns, &pbx);
    assert_eq!(r.status, 202, "{r:?}");
    let note = r.json()["id"].as_str().unwrap().to_owned();
    wait_until("the note at the broker", 20, || {
        arrived_with(&sub, &note).is_some()
    });
    let got = arrived_with(&sub, &note).unwrap();
    assert_eq!(
        (got["call_id"].as_str(), got["kind"].as_str()),
        (Some("note-1@pbx"), Some("note"))
    );
    assert_eq!(
        got["text"],
        "Note: customer asked to be reached at [PHONE]."
    );

    // 3. The broker down: accepted all the same, kept through a SIGKILL of the daemon (a
    //    202 means durable), delivered once the broker is back.
    broker.stop().unwrap();
    wait_until("the uplink sees the broker gone", 20, || {
        a.cli(&["--json", "show", "uplink"]).json()["state"] != "connected"
    });
    let mut during = Vec::new();
    for n in 0..3 {
        let r = Post::json(
            &pbx.client,
            &item(&format!("outage-{n}@pbx"), &transcript()),
        )
        .send(&ns, &pbx);
        assert_eq!(r.status, 202, "{r:?}");
        during.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let backlog = a.cli(&["--json", "show", "uplink"]).json()["backlog"].as_u64();
    wait_until("three items wait in the outbox", 10, || {
        a.cli(&["--json", "show", "uplink"]).json()["backlog"].as_u64() >= Some(3)
    });
    assert!(
        during.iter().all(|id| arrived_with(&sub, id).is_none()),
        "{backlog:?}"
    );
    a.kill9();
    a.launch().unwrap();
    wait_until("intake listening again", 10, || {
        a.log().matches("intake: listening on").count() >= 2
    });
    let r = Post::json(&pbx.client, &item("after-restart@pbx", &transcript())).send(&ns, &pbx);
    assert_eq!(r.status, 202, "{r:?}");
    during.push(r.json()["id"].as_str().unwrap().to_owned());
    broker.restart().unwrap();
    sub.reconnect().unwrap();
    wait_until("the outage's items at the broker", 60, || {
        during.iter().all(|id| arrived_with(&sub, id).is_some())
    });
    for id in &during {
        let got = arrived_with(&sub, id).unwrap();
        let text = got["text"].as_str().unwrap();
        for p in PLANTED {
            assert!(!text.contains(p), "{p}: {text}");
        }
    }
    wait_until("the outbox drained", 20, || {
        a.cli(&["--json", "show", "uplink"]).json()["backlog"] == 0
    });

    // 4. Nothing of the PII anywhere the appliance writes: the state directory (store,
    //    outbox, sled's logs, the call-record log) and the daemon's log.
    let state = a.state_dir();
    let log = a.log();
    for p in PLANTED {
        let held = files_holding(&state, p.as_bytes());
        assert!(held.is_empty(), "{p} is in {held:?}");
        assert!(!log.contains(p), "{p} is in the log");
    }
    assert!(!log.contains("jane.doe"), "the log");
}

/// The attacker's side: no certificate, a foreign CA's certificate, TLS 1.1 and 1.2, the
/// WAN, a private source not allowed, an oversized body, malformed JSON, non-UTF-8, a
/// burst: each refused, and nothing of it reaches the cloud.
#[test]
fn attackers_are_refused_and_nothing_of_theirs_is_queued() {
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Cloud]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let pbx = PbxPki::new(dir.path());
    let _broker = Broker::start(&lab.ns(Host::Cloud), &pki, BrokerOpts::default()).unwrap();
    let sub = Subscriber::start(&lab.ns(Host::Cloud), &pki, "callgate/lab-a/#").unwrap();
    let a = Appliance::start(
        &lab,
        Host::A,
        &config(
            &pki,
            &pbx,
            "body_limit = 4096\nrate_per_minute = 1\nburst = 12\n",
        ),
    )
    .unwrap();
    enroll(&a, &pki, &pbx);
    let ns = lab.ns(Host::Pbx);
    let attack = item("evil@pbx", "attacker text 4111 1111 1111 1111");

    // No client certificate: the handshake is refused.
    let mut p = Post::json(&pbx.client, &attack);
    p.cert = None;
    let r = p.send(&ns, &pbx);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        r.err.contains("alert") || r.err.contains("certificate"),
        "{r:?}"
    );
    // A client certificate from another CA.
    let r = Post::json(&pbx.other_client, &attack).send(&ns, &pbx);
    assert_eq!(r.status, 0, "{r:?}");
    // TLS 1.1 and TLS 1.2 (the intake speaks 1.3 only), with the right client
    // certificate: the server's alert ends the handshake, no cipher, no answer.
    for v in ["-tls1_1", "-tls1_2"] {
        let said = s_client(&ns, &pbx, v);
        assert!(
            (said.contains("alert handshake failure") || said.contains("alert protocol version"))
                && said.contains("Cipher is (NONE)")
                && !said.contains("HTTP/1.1"),
            "{v}: {said}"
        );
    }
    // From the WAN, to the intake's address routed through A: dropped by the firewall.
    let carrier = lab.ns(Host::Carrier);
    carrier
        .ip(&[
            "route",
            "add",
            &format!("{A_PRIV_V4}/32"),
            "via",
            &A_WAN_V4.to_string(),
        ])
        .unwrap();
    let drops = a.packets("input", "default-drop");
    for to in [A_PRIV_V4, A_WAN_V4] {
        let mut p = Post::json(&pbx.client, &attack);
        p.to = to;
        let r = p.send(&carrier, &pbx);
        assert_eq!(r.status, 0, "{to}: {r:?}");
        assert!(
            r.err.contains("timed out") || r.err.contains("Timeout"),
            "{to}: {r:?}"
        );
    }
    assert!(
        a.packets("input", "default-drop") > drops,
        "the drops were not counted"
    );
    // A source on the private segment outside intake.sources.
    let drops = a.packets("input", "default-drop");
    let mut p = Post::json(&pbx.client, &attack);
    p.from = Some(PBX2_V4);
    let r = p.send(&ns, &pbx);
    assert_eq!(r.status, 0, "{r:?}");
    assert!(a.packets("input", "default-drop") > drops);

    // Authenticated, but bad: 413, 400, 415, 404, plainly.
    let big = item("big@pbx", &"x".repeat(5000));
    let r = Post::json(&pbx.client, &big).send(&ns, &pbx);
    assert_eq!(r.status, 413, "{r:?}");
    for (body, says) in [
        (
            b"{\"call_id\": \"c@pbx\", \"kind\": \"transcript\", \"text\": ".to_vec(),
            "malformed JSON",
        ),
        (
            b"{\"call_id\":\"c@pbx\",\"kind\":\"note\",\"text\":\"caf\xe9 4111\"}".to_vec(),
            "UTF-8",
        ),
        (
            br#"{"call_id":"c d","kind":"note","text":"x"}"#.to_vec(),
            "call_id",
        ),
        (
            br#"{"call_id":"c@pbx","kind":"memo","text":"x"}"#.to_vec(),
            "kind",
        ),
        (
            br#"{"call_id":"c@pbx","kind":"note","text":"x","extra":1}"#.to_vec(),
            "unknown field",
        ),
    ] {
        let r = Post::raw(&pbx.client, &body).send(&ns, &pbx);
        assert_eq!(r.status, 400, "{r:?}");
        assert!(
            r.json()["error"].as_str().unwrap_or("").contains(says),
            "{says}: {r:?}"
        );
    }
    let mut p = Post::json(&pbx.client, &attack);
    p.content_type = "application/x-www-form-urlencoded";
    assert_eq!(p.send(&ns, &pbx).status, 415);

    // A burst above the rate: the bucket (12, refilled at 1 a minute) has 12 - 7 = 5
    // tokens left (6 if a minute passed); of 10 quick requests, those pass and the rest
    // get 429.
    let mut statuses = Vec::new();
    let mut ids = Vec::new();
    for n in 0..10 {
        let r = Post::json(&pbx.client, &item(&format!("burst-{n}@pbx"), "hello")).send(&ns, &pbx);
        if r.status == 202 {
            ids.push(r.json()["id"].as_str().unwrap().to_owned());
        }
        statuses.push(r.status);
    }
    let passed = statuses.iter().take_while(|s| **s == 202).count();
    assert!((5..=6).contains(&passed), "{statuses:?}");
    assert!(statuses[passed..].iter().all(|s| *s == 429), "{statuses:?}");

    // What reached the cloud: the burst's accepted items, nothing else.
    wait_until("the accepted items at the broker", 20, || {
        ids.iter().all(|id| arrived_with(&sub, id).is_some())
    });
    std::thread::sleep(Duration::from_secs(1));
    let got = arrived(&sub);
    assert_eq!(got.len(), ids.len(), "{got:?}");
    assert!(got.iter().all(|v| v["text"] == "hello"), "{got:?}");
}

/// `openssl s_client` from `ns` to the intake at TLS `version` with the PBX's certificate,
/// sending a request; what it printed (stdout and stderr).
fn s_client(ns: &Ns<'_>, pbx: &PbxPki, version: &str) -> String {
    let body = r#"{"call_id":"v@pbx","kind":"note","text":"v"}"#;
    let req = format!(
        "POST /v1/transcripts HTTP/1.1\r\nHost: {A_PRIV_V4}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let script = format!(
        "printf '%s' \"$REQ\" | timeout 10 openssl s_client -connect {A_PRIV_V4}:{PORT} -CAfile {ca} -cert {cert} -key {key} {version} -cipher DEFAULT@SECLEVEL=0 -ign_eof 2>&1",
        ca = pbx.ca.cert().display(),
        cert = pbx.client.cert.display(),
        key = pbx.client.key.display(),
    );
    let out = ns
        .command("sh")
        .args(["-c", &script])
        .env("REQ", req)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
