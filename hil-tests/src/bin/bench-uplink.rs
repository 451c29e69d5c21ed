//! `scripts/bench uplink`: the cloud uplink (`callgated`'s outbox to the lab's Mosquitto
//! over mutual TLS 1.3, MQTT 5, QoS 1) against the same MQTT client publishing the same
//! records straight from memory, in one run, in the lab.
//!
//! ## Setup
//! A lab with the carrier, appliance A, the PBX and the cloud; the test PKI and the broker
//! of `hil_tests::broker` (Mosquitto 2.0 in the cloud namespace, TLS 1.3 only, client
//! certificates, per-appliance ACL, persistence saved after every change); a subscriber as
//! the `cloud` identity on `callgate/lab-a/#` with a persistent session (it survives a clean
//! broker restart, so the broker takes records for it while it reconnects). The appliance
//! runs `config/lab.toml` with `[sip] max_cps`/`max_calls` raised and `[uplink]` to the
//! broker (`boot_delay_max_secs = 0`, `backoff_max_secs = 1`, `batch_records = 100` and
//! `inflight = 16`, the defaults, written out because the anchor uses them too), enrolled
//! through `callgate uplink csr` / `install-cert -` with the fleet CA. Calls are sipp's
//! `uac.xml` from the carrier to a sipp UAS on the PBX over UDP, held 100 ms: each call is
//! one final record, one outbox entry.
//!
//! ## What is measured
//! - **Product** (`records_per_s`): the appliance's link to the broker is cut (the cloud
//!   namespace resets every TCP connection to the MQTT port that does not come over its
//!   loopback: what a site's failed internet link amounts to, told at once; the broker
//!   and the subscriber run on), 10,000 calls are placed (500 calls/s), the bench waits
//!   until `show uplink` counts a backlog of at least 10,000 that no longer grows and the
//!   broker and the subscriber are idle, then restores the link. `records_per_s` =
//!   records drained / (the broker's acknowledgement of the last record being durable in
//!   the outbox, the daemon's `last_ack_ms`, taken once `records_sent` has grown by the
//!   whole backlog - the daemon's `connected_since_ms`): the uplink's rate from the store
//!   to the broker's acknowledgement, the durable watermark (fsynced) included. Both are
//!   the daemon's own millisecond timestamps (same clock), so how often the bench polls
//!   `callgate --json show uplink` (every 50 ms) does not bound their precision.
//! - **Restart** (`drain_10k_s`, `reconnect_s`): once more with the broker itself stopped
//!   (SIGTERM) instead, then started again (its persistence reloaded) and the subscriber
//!   reconnected at once. `drain_10k_s` runs from the broker accepting connections (its
//!   listeners answer TCP) to the last durable acknowledgement (`backlog` 0 is waited for
//!   as well). It includes the reconnect: up to `backoff_max_secs` of jittered backoff,
//!   TCP, TLS, CONNECT. `reconnect_s` is that part alone (broker up to the daemon's
//!   `connected_since_ms`). The broker's "up" is when `Broker::restart` returned; how
//!   long after its start that was is printed. A daemon that connected before that
//!   counts a reconnect of 0.
//! - **Anchor** (`raw_qos1_per_s`): right after each product round, once the broker and
//!   the subscriber are idle, the records that round drained are read back (`show cdrs
//!   --json --last N`), serialized with the uplink's own `payload::Batch` into batches of
//!   `batch_records` (the same bytes as the store's `get_cdrs_json`, the write sequence
//!   taken as the record id: the only field the bench cannot know), and published with
//!   `callgate_uplink::session::publish_raw` over `callgate_uplink::connect` (same TLS
//!   config, codec and window as the daemon) from a tokio runtime on a thread inside
//!   appliance A's namespace (same addresses, same firewall path), as a client certificate
//!   with CN `lab-a` (client id `lab-a-anchor`), to `callgate/lab-a/anchor` (the subscriber
//!   gets those too: the broker does the same work per message). Timed from just before
//!   CONNECT (after the TLS handshake) until every PUBACK is in.
//! - Product and anchor alternate, 5 rounds (1 with `--quick`); the figures are medians,
//!   `x_vs_raw` the median of the per-round ratios. Both face the same broker: running,
//!   idle, its subscriber connected.
//! - **lost / dup**: 3,000 calls at 100 calls/s (1,000 with `--quick`) while the broker is
//!   SIGKILLed and restarted three times (5 s apart, 2 s down), the subscriber reconnecting
//!   after each restart. Once the backlog is 0 the record ids the appliance stored in that
//!   phase are compared with what the subscriber received on `callgate/lab-a/records`:
//!   `lost` = stored, never received; `dup` = received more than once (extra copies).
//! - **CPU** of each measurement (`daemon_cpu_ms_per_batch`, `raw_client_cpu_ms_per_batch`;
//!   the rest printed): on-CPU and run-queue wait time from
//!   `/proc/PID/task/TID/schedstat` of the daemon (by thread name), the broker, the
//!   subscriber and the anchor's own thread, per message, and how many of the machine's
//!   cores were busy. On 2 cores the broker and the subscriber compete with the daemon;
//!   the run-queue wait shows how much.
//! - **Profiles**: with `CALLGATE_BENCH_PERF=FILE`, `perf record` samples the daemon
//!   during each drain (call graphs by frame pointers: build the daemon with
//!   `RUSTFLAGS="-C force-frame-pointers=yes"` and point `CALLGATE_BIN_DIR` at it).
//! - **Where the time goes** (`product_ms_per_batch`, `raw_ms_per_batch`,
//!   `store_read_ms_per_batch`, `store_ack_ms_per_batch`, `store_ack_one_ms`,
//!   `store_ack_window_ms`): the wall time per message of both, and the uplink's
//!   per-batch store work replayed outside the daemon on a fresh `callgate_store::Store`
//!   on the same file system, with the records of the last round: reading a batch as the
//!   session does (outbox page, `get_cdrs_json`, `Batch::push_json`, `finish`), and
//!   the durable outbox removal (`outbox_sent`, one group commit, fsynced) of one write
//!   sequence alone (the fixed cost of a durable step), of one batch (what the session
//!   does when nothing else is in flight) and of a window's worth (16 batches in one
//!   commit; the session commits a quarter of a window at a time while the window is
//!   busy). The session reads and commits on blocking threads while it sends.
//!
//! ## Output
//! Progress and a human summary (each goal, met or not) on stderr, then on stdout one line
//! `BENCH uplink records_per_s=… raw_qos1_per_s=… x_vs_raw=… drain_10k_s=… lost=… dup=…`
//! and extra keys. Goals: `x_vs_raw` ≥ 0.8, `lost` = 0, `drain_10k_s` ≤ 5. A missed goal
//! is reported, not an error; the exit status is non-zero only if the setup failed (no
//! lab, no broker, no enrolment, fewer than 10,000 records in the backlog, …). A full run
//! takes about 3.5 minutes on 2 cores, `--quick` about 1.5.
//!
//! ## Limits
//! - Mosquitto acknowledges a QoS 1 message before its next save: a SIGKILL can lose a
//!   message it acknowledged but had neither saved nor delivered to the subscriber yet.
//!   `lost` is counted once the backlog is 0, and the outbox only lets go of what the
//!   broker acknowledged: a lost record was acknowledged, and lost by the broker or the
//!   subscriber, not left behind by the appliance.
//! - The subscriber (`mosquitto_sub` printing each payload in hex to a file) costs about
//!   as much CPU per message as the daemon and shares the 2 cores. It trails the broker's
//!   acknowledgements, so more of its work lands inside the longer product drain than
//!   inside the short anchor run (both are printed).
//! - The anchor's write sequences are the record ids (see above).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use callgate_store::{Cdr, Store};
use callgate_uplink::payload::{Batch, MAX_PAYLOAD};
use callgate_uplink::{now_ms, ClientKey, Credentials, Settings};
use hil_tests::addr::{BROKER_NAME, CLOUD_V4};
use hil_tests::bench::{daemon_pid, fail, median, ms};
use hil_tests::broker::{Broker, BrokerOpts, Pki, Subscriber, MQTT_TLS_PORT};
use hil_tests::calls::pbx;
use hil_tests::{Appliance, Host, Lab};
use serde_json::Value;

const LAB_TOML: &str = include_str!("../../../config/lab.toml");
/// The appliance's name in `config/lab.toml`: the MQTT client id and certificate CN.
const APPLIANCE: &str = "lab-a";
const RECORDS_TOPIC: &str = "callgate/lab-a/records";
/// Where the anchor publishes (the appliance's ACL allows it; the subscriber gets it).
const ANCHOR_TOPIC: &str = "callgate/lab-a/anchor";
const ANCHOR_CLIENT_ID: &str = "lab-a-anchor";
/// The uplink's defaults, written into the config so that the anchor uses the same.
const BATCH_RECORDS: usize = 100;
const INFLIGHT: usize = 16;
const KEEPALIVE_SECS: u64 = 30;
/// The backlog drained per round.
const BACKLOG: u64 = 10_000;
const BACKLOG_RATE: f64 = 500.0;
const HOLD: Duration = Duration::from_millis(100);
/// The broker-kill phase.
const KILLS: usize = 3;
const KILL_RATE: f64 = 100.0;
const KILL_EVERY: Duration = Duration::from_secs(5);
const KILL_DOWN: Duration = Duration::from_secs(2);
/// How often the bench reads `show uplink` while a backlog drains.
const POLL: Duration = Duration::from_millis(50);
/// Goals.
const GOAL_X: f64 = 0.8;
const GOAL_DRAIN_S: f64 = 5.0;

/// (on-CPU ns, run-queue wait ns) from a `schedstat` file.
fn schedstat(path: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let mut f = s.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// Every thread of `pid`: tid -> (name, on-CPU ns, run-queue wait ns).
type Threads = BTreeMap<u32, (String, u64, u64)>;

fn threads(pid: u32) -> Threads {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        if let Some((cpu, wait)) = schedstat(&format!("/proc/{pid}/task/{tid}/schedstat")) {
            out.insert(tid, (name, cpu, wait));
        }
    }
    out
}

/// What the threads did between two snapshots (threads born since count from zero), by
/// thread name: (on-CPU ms, run-queue wait ms).
fn spent(before: &Threads, after: &Threads) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (tid, (name, cpu, wait)) in after {
        let (c0, w0) = before.get(tid).map_or((0, 0), |(_, c, w)| (*c, *w));
        let e = out.entry(name.clone()).or_default();
        e.0 += cpu.saturating_sub(c0) as f64 / 1e6;
        e.1 += wait.saturating_sub(w0) as f64 / 1e6;
    }
    out
}

/// (on-CPU ms, run-queue wait ms) summed over threads.
fn total(by_name: &BTreeMap<String, (f64, f64)>) -> (f64, f64) {
    by_name
        .values()
        .fold((0.0, 0.0), |(c, w), (c1, w1)| (c + c1, w + w1))
}

/// The processes in lab namespace `ns` whose name is `comm`.
fn pids_in(ns: &str, comm: &str) -> Vec<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap_or_else(|e| fail("ip netns pids", e));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// The threads of every process named `comm` in `ns` (one map; tids are unique).
fn threads_of(ns: &str, comm: &str) -> Threads {
    pids_in(ns, comm).into_iter().flat_map(threads).collect()
}

/// CPU use during a measurement: the daemon by thread name, the broker, the subscriber.
#[derive(Debug, Default, Clone)]
struct Cpu {
    daemon: BTreeMap<String, (f64, f64)>,
    broker: (f64, f64),
    subscriber: (f64, f64),
    /// The anchor's own thread (none for the product).
    client: (f64, f64),
}

impl Cpu {
    fn busy_ms(&self) -> f64 {
        total(&self.daemon).0 + self.broker.0 + self.subscriber.0 + self.client.0
    }
    fn line(&self, batches: u64, wall_ms: f64) -> String {
        let per = |x: f64| x / batches.max(1) as f64;
        let (d, dw) = total(&self.daemon);
        let mut top: Vec<(&String, &(f64, f64))> =
            self.daemon.iter().filter(|(_, v)| v.0 >= 1.0).collect();
        top.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let top: Vec<String> = top
            .iter()
            .take(6)
            .map(|(n, (c, w))| format!("{n} {c:.0}/{w:.0}"))
            .collect();
        format!(
            "CPU ms per message (on-CPU, run-queue wait): daemon {:.2}/{:.2}, client {:.2}/{:.2}, \
             broker {:.2}/{:.2}, subscriber {:.2}/{:.2}; {:.2} cores busy over {wall_ms:.0} ms{}",
            per(d),
            per(dw),
            per(self.client.0),
            per(self.client.1),
            per(self.broker.0),
            per(self.broker.1),
            per(self.subscriber.0),
            per(self.subscriber.1),
            self.busy_ms() / wall_ms.max(1.0),
            if top.is_empty() {
                String::new()
            } else {
                format!("\n    daemon threads (ms on-CPU/wait): {}", top.join(", "))
            }
        )
    }
}

/// `config/lab.toml`, the overload guard raised for the backlog's 500 calls/s, an egress
/// entry to the broker and `[uplink]`.
fn config(ca_pem: &str) -> String {
    let base = LAB_TOML
        .replace("max_cps = 200", "max_cps = 2000")
        .replace("max_calls = 2000", "max_calls = 20000");
    if !base.contains("max_cps = 2000\n") || !base.contains("max_calls = 20000") {
        fail("config", "lab.toml changed: cannot raise max_cps/max_calls");
    }
    format!(
        "{base}\n[[egress]]\nname = \"uplink\"\nzone = \"wan\"\n\
         destinations = [\"{CLOUD_V4}/32\", \"2001:db8:1::200/128\"]\nprotocol = \"tcp\"\n\
         ports = [{MQTT_TLS_PORT}]\n\n\
         [uplink]\nbroker = \"{BROKER_NAME}\"\naddress = \"{CLOUD_V4}\"\nca = \"\"\"\n{ca_pem}\"\"\"\n\
         boot_delay_max_secs = 0\nbackoff_max_secs = 1\nkeepalive_secs = {KEEPALIVE_SECS}\n\
         batch_records = {BATCH_RECORDS}\ninflight = {INFLIGHT}\n"
    )
}

/// The daemon's uplink settings for this config (as `callgated/src/uplink.rs::settings`
/// makes them): what the anchor connects with.
fn settings(ca_pem: &str) -> Settings {
    Settings {
        broker: BROKER_NAME.to_owned(),
        address: Some(CLOUD_V4.into()),
        port: MQTT_TLS_PORT,
        ca_pem: ca_pem.to_owned(),
        client_id: APPLIANCE.to_owned(),
        prefix: format!("callgate/{APPLIANCE}"),
        keepalive: Duration::from_secs(KEEPALIVE_SECS),
        batch_records: BATCH_RECORDS,
        inflight: INFLIGHT,
        backlog_alarm: 1000,
        boot_delay_max: Duration::ZERO,
        backoff_max: Duration::from_secs(1),
        cert_warn: Duration::from_secs(30 * 86_400),
    }
}

/// The appliance asks for a certificate, the fleet CA signs it, it is installed.
fn enroll(a: &Appliance<'_>, pki: &Pki) {
    match hil_tests::broker::enroll(a, |csr| pki.sign_csr(csr)) {
        Ok(r) if r.ok() => {}
        Ok(r) => fail("uplink install-cert", format!("{} {}", r.stdout, r.stderr)),
        Err(e) => fail("uplink enrolment", e),
    }
}

/// The anchor's identity: a fleet client certificate with CN `lab-a` (the ACL lets it
/// publish under `callgate/lab-a/`), its key as PKCS#8 DER (openssl converts whatever
/// form the PKI wrote).
fn anchor_credentials(pki: &Pki) -> Credentials {
    let id = pki
        .client_cert(APPLIANCE)
        .unwrap_or_else(|e| fail("anchor certificate", e));
    let out = Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
        .arg(&id.key)
        .output()
        .unwrap_or_else(|e| fail("openssl pkcs8", e));
    if !out.status.success() {
        fail("openssl pkcs8", String::from_utf8_lossy(&out.stderr));
    }
    let key = ClientKey::from_pkcs8(&out.stdout).unwrap_or_else(|e| fail("anchor key", e));
    let chain_pem = id
        .cert_pem()
        .unwrap_or_else(|e| fail("anchor certificate", e));
    Credentials { key, chain_pem }
}

fn uplink(a: &Appliance<'_>) -> Value {
    a.cli(&["--json", "show", "uplink"]).json()
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Polls `f` every `step` for `secs` at most; whether it held.
fn wait_for(secs: u64, step: Duration, f: impl FnMut() -> bool) -> bool {
    hil_tests::poll_until(Duration::from_secs(secs), step, f)
}

fn calls(lab: &Lab, n: u64, rate: f64) -> hil_tests::sipp::Sipp<'_> {
    hil_tests::calls::carrier_calls(lab, n, rate, HOLD)
}

/// The last `n` stored records (id, record), oldest first.
fn stored(a: &Appliance<'_>, n: u64) -> Vec<(u64, Cdr)> {
    let out = a.cli(&["--json", "show", "cdrs", "--last", &n.to_string()]);
    if !out.ok() {
        fail("show cdrs", out.stderr);
    }
    let mut v: Vec<(u64, Cdr)> = out.json()["cdrs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            Some((
                r["id"].as_u64()?,
                serde_json::from_value(r["cdr"].clone()).ok()?,
            ))
        })
        .collect();
    v.sort_by_key(|(id, _)| *id);
    v
}

/// The highest record id stored (0: none).
fn last_id(a: &Appliance<'_>) -> u64 {
    stored(a, 1).last().map_or(0, |(id, _)| *id)
}

/// Record ids received on the records topic, duplicates included.
fn received_ids(sub: &Subscriber<'_>) -> Vec<u64> {
    let mut out = Vec::new();
    for m in sub.received() {
        if m.topic != RECORDS_TOPIC {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
            continue;
        };
        for r in v["records"].as_array().into_iter().flatten() {
            if let Some(id) = r["id"].as_u64() {
                out.push(id);
            }
        }
    }
    out
}

/// The batches the session would build from `recs` (the write sequence taken as the id).
fn batches(recs: &[(u64, Cdr)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut b = Batch::new(APPLIANCE, MAX_PAYLOAD);
    for (id, cdr) in recs {
        if !b.push(*id, *id, cdr) {
            let full = std::mem::replace(&mut b, Batch::new(APPLIANCE, MAX_PAYLOAD));
            out.push(full.finish().0);
            b.push(*id, *id, cdr);
        }
        if b.len() >= BATCH_RECORDS {
            let full = std::mem::replace(&mut b, Batch::new(APPLIANCE, MAX_PAYLOAD));
            out.push(full.finish().0);
        }
    }
    if !b.is_empty() {
        out.push(b.finish().0);
    }
    out
}

/// One drain of a backlog, from the daemon's timestamps (unix ms).
#[derive(Debug, Clone)]
struct Drain {
    records: u64,
    batches: u64,
    /// The broker was started again, and accepted connections again (the harness's TCP
    /// probe answered): the instant it could first accept is between the two.
    start_ms: u64,
    up_ms: u64,
    connected_ms: u64,
    /// The last record's acknowledgement was durable.
    done_ms: u64,
    connects: u64,
    cpu: Cpu,
    /// From the broker's start to the bench seeing the drain done (the CPU figures' span).
    wall_ms: f64,
}

impl Drain {
    fn drain_s(&self) -> f64 {
        self.done_ms.saturating_sub(self.up_ms) as f64 / 1e3
    }
    fn reconnect_s(&self) -> f64 {
        self.connected_ms.saturating_sub(self.up_ms) as f64 / 1e3
    }
    fn per_s(&self) -> f64 {
        self.records as f64 / (self.done_ms.saturating_sub(self.connected_ms).max(1) as f64 / 1e3)
    }
    fn ms_per_batch(&self) -> f64 {
        self.done_ms.saturating_sub(self.connected_ms) as f64 / self.batches.max(1) as f64
    }
}

/// The broker away, a backlog of `BACKLOG` calls' records, the broker back: the drain.
/// How the cloud goes away while a backlog builds.
#[derive(Clone, Copy, PartialEq)]
enum Outage {
    /// The broker is stopped and started again (its persistence reloaded, the
    /// subscriber reconnecting).
    BrokerDown,
    /// The appliance's link to the broker is cut (the broker's namespace resets every
    /// connection to its MQTT port from outside: what a site's failed internet link
    /// amounts to, told at once) and restored; the broker and the subscriber run on.
    LinkCut,
}

const CUT_TABLE: &str = "bench_uplink_cut";

fn cut_link(cloud: &hil_tests::Ns<'_>, cut: bool) {
    let r = if cut {
        let port = MQTT_TLS_PORT.to_string();
        cloud
            .exec(&["nft", "add", "table", "inet", CUT_TABLE])
            .and_then(|_| {
                cloud.exec(&[
                    "nft",
                    "add",
                    "chain",
                    "inet",
                    CUT_TABLE,
                    "input",
                    "{ type filter hook input priority -10 ; }",
                ])
            })
            .and_then(|_| {
                cloud.exec(&[
                    "nft", "add", "rule", "inet", CUT_TABLE, "input", "iifname", "!=", "lo", "tcp",
                    "dport", &port, "reject", "with", "tcp", "reset",
                ])
            })
    } else {
        cloud.exec(&["nft", "delete", "table", "inet", CUT_TABLE])
    };
    r.unwrap_or_else(|e| fail("link cut", e));
}

fn product_round(
    lab: &Lab,
    a: &Appliance<'_>,
    pid: u32,
    broker: &mut Broker<'_>,
    sub: &mut Subscriber<'_>,
    outage: Outage,
) -> Drain {
    let cloud = lab.ns_name(Host::Cloud);
    let cloud_ns = lab.ns(Host::Cloud);
    if outage == Outage::BrokerDown {
        broker.stop().unwrap_or_else(|e| fail("broker stop", e));
        if !wait_for(15, Duration::from_millis(100), || {
            uplink(a)["state"] != "connected"
        }) {
            fail("uplink", "still connected with the broker stopped");
        }
    } else {
        // The uplink finds out at its next packet (the first records).
        cut_link(&cloud_ns, true);
    }
    let start = Instant::now();
    let r = calls(lab, BACKLOG, BACKLOG_RATE)
        .run()
        .unwrap_or_else(|e| fail("sipp", e));
    eprintln!(
        "  {} calls placed in {:.1}s ({} successful, {} failed)",
        r.created,
        start.elapsed().as_secs_f64(),
        r.successful,
        r.failed
    );
    // The backlog is counted once a second: wait until it stops growing.
    let mut last = 0;
    let mut backlog = 0;
    let settled = wait_for(90, Duration::from_millis(1100), || {
        backlog = num(&uplink(a), "backlog");
        let steady = backlog == last && backlog >= r.successful.min(BACKLOG);
        last = backlog;
        steady
    });
    if !settled || backlog < BACKLOG {
        fail(
            "backlog",
            format!(
                "{backlog} records wait (need {BACKLOG}); sipp: {}",
                r.summary()
            ),
        );
    }
    let before = uplink(a);
    let (sent0, acked0, connects0) = (
        num(&before, "records_sent"),
        num(&before, "messages_acked"),
        num(&before, "connects"),
    );
    settle(lab);
    let daemon0 = threads(pid);
    let broker0 = threads_of(&cloud, "mosquitto");
    let sub0 = threads_of(&cloud, "mosquitto_sub");
    let perf = perf_start(pid);
    let start_ms = now_ms();
    if outage == Outage::BrokerDown {
        broker
            .restart()
            .unwrap_or_else(|e| fail("broker restart", e));
    } else {
        cut_link(&cloud_ns, false);
    }
    let up_ms = now_ms();
    let up = Instant::now();
    if outage == Outage::BrokerDown {
        sub.reconnect()
            .unwrap_or_else(|e| fail("subscriber reconnect", e));
    }
    let mut st = Value::Null;
    let drained = wait_for(120, POLL, || {
        st = uplink(a);
        num(&st, "records_sent") >= sent0 + backlog
    });
    perf_stop(perf);
    if !drained {
        fail("drain", format!("not drained in 120 s: {st}"));
    }
    // After a restart the broker and the subscriber started with the drain: all their
    // time is in it.
    let none = Threads::new();
    let (broker0, sub0) = match outage {
        Outage::BrokerDown => (&none, &none),
        Outage::LinkCut => (&broker0, &sub0),
    };
    let cpu = Cpu {
        daemon: spent(&daemon0, &threads(pid)),
        broker: total(&spent(broker0, &threads_of(&cloud, "mosquitto"))),
        subscriber: total(&spent(sub0, &threads_of(&cloud, "mosquitto_sub"))),
        client: (0.0, 0.0),
    };
    let wall_ms = ms(up.elapsed());
    let d = Drain {
        cpu,
        wall_ms,
        records: num(&st, "records_sent") - sent0,
        batches: num(&st, "messages_acked") - acked0,
        start_ms,
        up_ms,
        connected_ms: num(&st, "connected_since_ms"),
        done_ms: num(&st, "last_ack_ms"),
        connects: num(&st, "connects") - connects0,
    };
    if !wait_for(5, Duration::from_millis(100), || {
        num(&uplink(a), "backlog") == 0
    }) {
        eprintln!("  WARNING: backlog not 0 after the drain: {}", uplink(a));
    }
    if d.connects != 1 {
        eprintln!(
            "  WARNING: {} connections during the drain (connected_since is the last one's)",
            d.connects
        );
    }
    d
}

/// With `CALLGATE_BENCH_PERF=FILE` set, `perf record` samples the daemon (call graphs by
/// frame pointers) from just before the cloud comes back until the backlog is drained;
/// each round overwrites `FILE` (read it with `perf report -i FILE`).
fn perf_start(pid: u32) -> Option<std::process::Child> {
    let out = std::env::var("CALLGATE_BENCH_PERF").ok()?;
    let child = Command::new("perf")
        .args([
            "record",
            "-q",
            "-F",
            "4999",
            "--call-graph",
            "dwarf,32768",
            "-o",
            &out,
        ])
        .args(["-p", &pid.to_string()])
        .spawn()
        .map_err(|e| eprintln!("  perf: {e}"))
        .ok()?;
    // perf attaches after it starts: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    Some(child)
}

fn perf_stop(perf: Option<std::process::Child>) {
    if let Some(mut child) = perf {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = child.wait();
    }
}

fn print_drain(d: &Drain) {
    eprintln!(
        "  product: {} records in {} messages; cloud back {} ms after the start; reconnect \
         {:.2}s, drain {:.2}s, {:.0} records/s from connected ({:.2} ms per message)",
        d.records,
        d.batches,
        d.up_ms - d.start_ms,
        d.reconnect_s(),
        d.drain_s(),
        d.per_s(),
        d.ms_per_batch()
    );
    eprintln!("    {}", d.cpu.line(d.batches, d.wall_ms));
}

/// Waits (up to 5 s) until the broker and the subscriber are idle (under 1 ms of CPU in
/// 100 ms): a measurement does not start while they still deliver the last one's
/// messages.
fn settle(lab: &Lab) {
    let cloud = lab.ns_name(Host::Cloud);
    let busy = || {
        let b0 = threads_of(&cloud, "mosquitto");
        let s0 = threads_of(&cloud, "mosquitto_sub");
        std::thread::sleep(Duration::from_millis(100));
        total(&spent(&b0, &threads_of(&cloud, "mosquitto"))).0
            + total(&spent(&s0, &threads_of(&cloud, "mosquitto_sub"))).0
    };
    let start = Instant::now();
    while busy() >= 1.0 && start.elapsed() < Duration::from_secs(5) {}
}

/// The anchor: `payloads` published at QoS 1 by the uplink's own client from appliance
/// A's namespace; the time from CONNECT to the last PUBACK.
fn anchor_round(
    lab: &Lab,
    pid: u32,
    settings: &Settings,
    creds: &Credentials,
    payloads: Vec<Vec<u8>>,
) -> (Duration, Cpu) {
    let run = move || -> Result<(Duration, (f64, f64)), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let stream = callgate_uplink::connect(settings, creds)
                .await
                .map_err(|e| e.to_string())?;
            let self_stat = "/proc/thread-self/schedstat";
            let t0 = schedstat(self_stat).unwrap_or_default();
            let start = Instant::now();
            callgate_uplink::session::publish_raw(
                stream,
                ANCHOR_CLIENT_ID,
                ANCHOR_TOPIC,
                settings.inflight,
                payloads,
            )
            .await
            .map_err(|e| e.to_string())?;
            let took = start.elapsed();
            let t1 = schedstat(self_stat).unwrap_or_default();
            let client = (
                t1.0.saturating_sub(t0.0) as f64 / 1e6,
                t1.1.saturating_sub(t0.1) as f64 / 1e6,
            );
            Ok((took, client))
        })
    };
    let cloud = lab.ns_name(Host::Cloud);
    let (broker0, sub0, daemon0) = (
        threads_of(&cloud, "mosquitto"),
        threads_of(&cloud, "mosquitto_sub"),
        threads(pid),
    );
    let (took, client) = lab
        .ns(Host::A)
        .try_run_in(run)
        .unwrap_or_else(|e| fail("entering namespace A", e))
        .unwrap_or_else(|e| fail("anchor publish", e));
    let cpu = Cpu {
        daemon: spent(&daemon0, &threads(pid)),
        broker: total(&spent(&broker0, &threads_of(&cloud, "mosquitto"))),
        subscriber: total(&spent(&sub0, &threads_of(&cloud, "mosquitto_sub"))),
        client,
    };
    (took, cpu)
}

/// The uplink's per-batch store work, replayed (medians, ms).
struct StoreCosts {
    /// Reading one batch as the session does.
    read_ms: f64,
    /// The durable removal of one write sequence (one commit).
    ack_one_ms: f64,
    /// Of one batch's sequences (one commit).
    ack_ms: f64,
    /// Of a window's batches (one commit).
    ack_window_ms: f64,
}

/// The uplink's per-batch store work, replayed on a fresh store holding `recs`.
fn store_costs(recs: &[(u64, Cdr)]) -> StoreCosts {
    let dir = tempfile::Builder::new()
        .prefix("bench-uplink-store-")
        .tempdir()
        .unwrap_or_else(|e| fail("tempdir", e));
    let kek = callgate_vault::Kek::generate().unwrap_or_else(|e| fail("Kek::generate", e));
    let store = Store::open(dir.path(), kek).unwrap_or_else(|e| fail("Store::open", e));
    for chunk in recs.chunks(500) {
        let refs: Vec<(u64, &Cdr)> = chunk.iter().map(|(id, c)| (*id, c)).collect();
        let failed = store
            .put_cdrs(&refs)
            .unwrap_or_else(|e| fail("put_cdrs", e));
        if !failed.is_empty() {
            fail("put_cdrs", format!("{} records not written", failed.len()));
        }
    }
    let (mut reads, mut acks, mut windows) = (Vec::new(), Vec::new(), Vec::new());
    let mut pending: Vec<Vec<u64>> = Vec::new();
    let mut cursor = None;
    loop {
        // As the session's `read_batch`: a page of the outbox, each record read and
        // serialized into the batch.
        let start = Instant::now();
        let mut b = Batch::new(APPLIANCE, MAX_PAYLOAD);
        let mut seqs = Vec::new();
        let page = store
            .outbox_page(cursor, BATCH_RECORDS)
            .unwrap_or_else(|e| fail("outbox_page", e));
        let ids: Vec<u64> = page.iter().map(|(_, id)| *id).collect();
        let mut json = store.get_cdrs_json(&ids);
        for (seq, id) in page {
            let j = json
                .remove(&id)
                .unwrap_or_else(|| fail("get_cdrs_json", id))
                .unwrap_or_else(|e| fail("get_cdrs_json", e));
            if !b.push_json(id, seq, &j) {
                break;
            }
            seqs.push(seq);
            cursor = Some(seq);
        }
        if b.is_empty() {
            break;
        }
        let payload = b.finish();
        std::hint::black_box(payload);
        reads.push(ms(start.elapsed()));
        pending.push(seqs);
    }
    // The durable removal: the first batch one sequence per commit (the fixed cost of a
    // durable step), half the batches one commit each (as the session does on each
    // PUBACK), the rest a window's worth per commit.
    let mut ones = Vec::new();
    if let Some(first) = pending.first() {
        for seq in first {
            let start = Instant::now();
            store
                .outbox_sent(&[*seq])
                .unwrap_or_else(|e| fail("outbox_sent", e));
            ones.push(ms(start.elapsed()));
        }
    }
    let half = pending.len() / 2;
    for seqs in &pending[1.min(half)..half] {
        let start = Instant::now();
        store
            .outbox_sent(seqs)
            .unwrap_or_else(|e| fail("outbox_sent", e));
        acks.push(ms(start.elapsed()));
    }
    for group in pending[half..].chunks(INFLIGHT) {
        let seqs: Vec<u64> = group.iter().flatten().copied().collect();
        let start = Instant::now();
        store
            .outbox_sent(&seqs)
            .unwrap_or_else(|e| fail("outbox_sent", e));
        if group.len() == INFLIGHT {
            windows.push(ms(start.elapsed()));
        }
    }
    StoreCosts {
        read_ms: median(reads),
        ack_one_ms: median(ones),
        ack_ms: median(acks),
        ack_window_ms: median(windows),
    }
}

fn main() {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 5 };
    let kill_calls: u64 = if quick { 1000 } else { 3000 };
    let callgated = hil_tests::bin("callgated");
    if !callgated.is_file() {
        fail("callgated", format!("{} missing", callgated.display()));
    }
    if !Path::new("/usr/sbin/mosquitto").is_file() {
        fail("mosquitto", "not installed (scripts/setup installs it)");
    }
    let began = Instant::now();
    eprintln!(
        "bench uplink{}: callgated from {}; backlog {BACKLOG} records ({BACKLOG_RATE} calls/s, \
         {} ms hold), batch_records {BATCH_RECORDS}, inflight {INFLIGHT}, {rounds} round(s) \
         product/anchor; broker kills: {KILLS} during {kill_calls} calls at {KILL_RATE}/s",
        if quick { " --quick" } else { "" },
        callgated.display(),
        HOLD.as_millis()
    );
    let tmp = tempfile::Builder::new()
        .prefix("bench-uplink-")
        .tempdir()
        .unwrap_or_else(|e| fail("tempdir", e));
    let lab = Lab::start(&[Host::Carrier, Host::A, Host::Pbx, Host::Cloud])
        .unwrap_or_else(|e| fail("lab", e));
    let cloud = lab.ns(Host::Cloud);
    let pki = Pki::new(&tmp.path().join("pki")).unwrap_or_else(|e| fail("PKI", e));
    let ca_pem = pki.ca_pem().unwrap_or_else(|e| fail("PKI", e));
    let mut broker =
        Broker::start(&cloud, &pki, BrokerOpts::default()).unwrap_or_else(|e| fail("broker", e));
    // The cloud's side while throughput is measured: a quiet subscriber (delivery, no
    // printing of 45 KB payloads in hex); the counting one comes for the kill phase.
    let mut sub = Subscriber::start_quiet(&cloud, &pki, "callgate/lab-a/#")
        .unwrap_or_else(|e| fail("subscriber", e));
    let a =
        Appliance::start(&lab, Host::A, &config(&ca_pem)).unwrap_or_else(|e| fail("appliance", e));
    enroll(&a, &pki);
    if !wait_for(20, Duration::from_millis(100), || {
        uplink(&a)["state"] == "connected"
    }) {
        fail("uplink", format!("not connected: {}", uplink(&a)));
    }
    let settings = settings(&ca_pem);
    let creds = anchor_credentials(&pki);
    let pid = daemon_pid(&a);
    let uas = pbx(&lab);

    // Warm-up: a few calls with the broker up, every record at the subscriber.
    let r = calls(&lab, 200, 100.0)
        .run()
        .unwrap_or_else(|e| fail("sipp", e));
    if r.successful == 0 {
        fail("warm-up calls", r.summary());
    }
    let warm = stored(&a, 200);
    if !wait_for(30, Duration::from_millis(500), || {
        num(&uplink(&a), "records_sent") >= warm.len() as u64
    }) || !wait_for(10, Duration::from_millis(200), || {
        num(&uplink(&a), "backlog") == 0
    }) {
        fail(
            "warm-up",
            format!("records not at the subscriber: {}", uplink(&a)),
        );
    }
    // What one status read costs (the bench reads it every 50 ms while a backlog drains).
    let t = Instant::now();
    for _ in 0..10 {
        let _ = uplink(&a);
    }
    let poll_ms = ms(t.elapsed()) / 10.0;
    eprintln!(
        "warm-up: {} records acknowledged by the broker; `show uplink` takes {poll_ms:.1} ms",
        warm.len()
    );

    // Product and anchor, alternating.
    let (mut drains, mut raws, mut ratios, mut raw_batch_ms) = (vec![], vec![], vec![], vec![]);
    let mut last_recs = Vec::new();
    let mut raw_cpus: Vec<(Cpu, u64)> = Vec::new();
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}: product (link to the broker cut, {BACKLOG} calls)");
        let d = product_round(&lab, &a, pid, &mut broker, &mut sub, Outage::LinkCut);
        print_drain(&d);
        let recs = stored(&a, d.records);
        let payloads = batches(&recs);
        let (n, msgs) = (recs.len(), payloads.len());
        let bytes: usize = payloads.iter().map(Vec::len).sum();
        settle(&lab);
        let (took, cpu) = anchor_round(&lab, pid, &settings, &creds, payloads);
        let raw = n as f64 / took.as_secs_f64();
        eprintln!(
            "  anchor: {n} records in {msgs} messages ({:.0} bytes each), {:.2}s, {raw:.0} \
             records/s ({:.2} ms per message)",
            bytes as f64 / msgs.max(1) as f64,
            took.as_secs_f64(),
            ms(took) / msgs.max(1) as f64
        );
        eprintln!("    {}", cpu.line(msgs as u64, ms(took)));
        raw_cpus.push((cpu, msgs as u64));
        ratios.push(d.per_s() / raw);
        raws.push(raw);
        raw_batch_ms.push(ms(took) / msgs.max(1) as f64);
        drains.push(d);
        last_recs = recs;
    }

    // The drain after the broker itself comes back (its persistence reloaded, the
    // subscriber reconnecting): drain_10k_s.
    eprintln!("restart: product (broker stopped, {BACKLOG} calls)");
    let restart = product_round(&lab, &a, pid, &mut broker, &mut sub, Outage::BrokerDown);
    print_drain(&restart);

    // Lost and duplicated records through three broker SIGKILLs, counted at a subscriber
    // that keeps every payload.
    sub.stop();
    let mut sub = Subscriber::start(&cloud, &pki, "callgate/lab-a/#")
        .unwrap_or_else(|e| fail("subscriber", e));
    eprintln!(
        "broker kills: {kill_calls} calls at {KILL_RATE}/s, the broker SIGKILLed {KILLS} times"
    );
    let first_id = last_id(&a);
    let mark = received_ids(&sub).len();
    let stream = calls(&lab, kill_calls, KILL_RATE)
        .spawn()
        .unwrap_or_else(|e| fail("sipp", e));
    let before = uplink(&a);
    for k in 1..=KILLS {
        std::thread::sleep(KILL_EVERY);
        broker.kill9().unwrap_or_else(|e| fail("broker kill", e));
        std::thread::sleep(KILL_DOWN);
        broker
            .restart()
            .unwrap_or_else(|e| fail("broker restart", e));
        sub.reconnect()
            .unwrap_or_else(|e| fail("subscriber reconnect", e));
        eprintln!("  kill {k}: broker back, subscriber reconnected");
    }
    let r = stream
        .wait(Duration::from_secs(600))
        .unwrap_or_else(|e| fail("sipp", e));
    eprintln!("  {} calls placed ({} successful)", r.created, r.successful);
    let mut st = Value::Null;
    let emptied = wait_for(120, Duration::from_millis(200), || {
        st = uplink(&a);
        st["state"] == "connected" && num(&st, "backlog") == 0
    });
    if !emptied {
        eprintln!("  WARNING: the backlog did not drain: {st}");
    }
    let phase: BTreeSet<u64> = stored(&a, kill_calls + 100)
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| *id > first_id)
        .collect();
    // The subscriber may trail the acknowledgements: give it time to catch up.
    let tally = || {
        let got: Vec<u64> = received_ids(&sub)
            .into_iter()
            .skip(mark)
            .filter(|id| phase.contains(id))
            .collect();
        let mut count: BTreeMap<u64, u64> = BTreeMap::new();
        for id in got {
            *count.entry(id).or_default() += 1;
        }
        let lost: Vec<u64> = phase
            .iter()
            .filter(|id| !count.contains_key(id))
            .copied()
            .collect();
        let dup: u64 = count.values().map(|c| c - 1).sum();
        (lost, dup)
    };
    let mut result = tally();
    let _ = wait_for(30, Duration::from_secs(1), || {
        result = tally();
        result.0.is_empty()
    });
    let (lost_ids, dup) = result;
    let lost = lost_ids.len() as u64;
    eprintln!(
        "  {} records stored in the phase; lost {lost}{}, duplicates {dup}; uplink: {} \
         connects, {} records sent in the phase",
        phase.len(),
        if lost > 0 {
            format!(
                " ({}: ids {:?}…)",
                if emptied {
                    "acknowledged by the broker, then lost"
                } else {
                    "still in the outbox, or lost"
                },
                &lost_ids[..lost_ids.len().min(10)]
            )
        } else {
            String::new()
        },
        num(&st, "connects") - num(&before, "connects"),
        num(&st, "records_sent") - num(&before, "records_sent"),
    );
    let _ = uas.stop();

    // Where the time goes: the session's per-batch store work, replayed.
    let StoreCosts {
        read_ms,
        ack_one_ms,
        ack_ms,
        ack_window_ms: window_ms,
    } = store_costs(&last_recs);

    let per_s = median(drains.iter().map(Drain::per_s).collect());
    let raw = median(raws);
    let x = median(ratios.clone());
    let drain_s = restart.drain_s();
    let reconnect_s = restart.reconnect_s();
    let product_ms = median(drains.iter().map(Drain::ms_per_batch).collect());
    let raw_ms = median(raw_batch_ms);
    let drained = restart.records;
    let per_batch = |d: &Drain, f: &dyn Fn(&Cpu) -> f64| f(&d.cpu) / d.batches.max(1) as f64;
    let daemon_cpu = median(
        drains
            .iter()
            .map(|d| per_batch(d, &|c| total(&c.daemon).0))
            .collect(),
    );
    let daemon_wait = median(
        drains
            .iter()
            .map(|d| per_batch(d, &|c| total(&c.daemon).1))
            .collect(),
    );
    let broker_cpu = median(
        drains
            .iter()
            .map(|d| per_batch(d, &|c| c.broker.0))
            .collect(),
    );
    let sub_cpu = median(
        drains
            .iter()
            .map(|d| per_batch(d, &|c| c.subscriber.0))
            .collect(),
    );
    let raw_per = |f: &dyn Fn(&Cpu) -> f64| {
        median(
            raw_cpus
                .iter()
                .map(|(c, n): &(Cpu, u64)| f(c) / (*n).max(1) as f64)
                .collect(),
        )
    };
    let client_cpu = raw_per(&|c| c.client.0);
    let raw_broker_cpu = raw_per(&|c| c.broker.0);
    let raw_sub_cpu = raw_per(&|c| c.subscriber.0);
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    eprintln!(
        "\nbench uplink: done in {:.0}s",
        began.elapsed().as_secs_f64()
    );
    eprintln!(
        "  records_per_s   {per_s:>9.1}  from the store to the broker's acknowledgement, durable \
         (per round: {:?})",
        drains
            .iter()
            .map(|d| format!("{:.0}", d.per_s()))
            .collect::<Vec<_>>()
    );
    eprintln!("  raw_qos1_per_s  {raw:>9.1}  the same client and records from memory, no store");
    eprintln!(
        "  x_vs_raw        {x:>9.2}  goal >= {GOAL_X}: {} (per round: {:?})",
        met(x >= GOAL_X),
        ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>()
    );
    eprintln!(
        "  drain_10k_s     {drain_s:>9.1}  goal <= {GOAL_DRAIN_S}: {} ({drained} records after \
         the broker's restart; reconnect {reconnect_s:.2}s of it; after the link came back: \
         {:?})",
        met(drain_s <= GOAL_DRAIN_S),
        drains
            .iter()
            .map(|d| format!(
                "{:.2}+{:.2}",
                d.reconnect_s(),
                d.drain_s() - d.reconnect_s()
            ))
            .collect::<Vec<_>>()
    );
    eprintln!("  lost            {lost:>9}  goal 0: {}", met(lost == 0));
    eprintln!("  dup             {dup:>9}  (extra copies at the subscriber; allowed)");
    eprintln!(
        "  per message of {BATCH_RECORDS} records: product {product_ms:.2} ms, anchor {raw_ms:.2} ms \
         (wall)\n  CPU per message: the daemon {daemon_cpu:.2} ms (its threads waited \
         {daemon_wait:.2} ms for a core), the anchor's client {client_cpu:.2} ms; broker \
         {broker_cpu:.2} / {raw_broker_cpu:.2} ms, subscriber {sub_cpu:.2} / {raw_sub_cpu:.2} ms \
         (product / anchor)\n  the session's store work per message, replayed: read \
         {read_ms:.2} ms + durable removal {ack_ms:.2} ms (one sequence alone: \
         {ack_one_ms:.2} ms; a window of {INFLIGHT} messages in one commit: {window_ms:.2} ms)"
    );
    println!(
        "BENCH uplink records_per_s={per_s:.1} raw_qos1_per_s={raw:.1} x_vs_raw={x:.2} \
         drain_10k_s={drain_s:.1} lost={lost} dup={dup} reconnect_s={reconnect_s:.1} \
         drain_records={drained} product_ms_per_batch={product_ms:.2} \
         raw_ms_per_batch={raw_ms:.2} store_read_ms_per_batch={read_ms:.2} \
         store_ack_ms_per_batch={ack_ms:.2} store_ack_window_ms={window_ms:.2} \
         store_ack_one_ms={ack_one_ms:.2} daemon_cpu_ms_per_batch={daemon_cpu:.2} \
         raw_client_cpu_ms_per_batch={client_cpu:.2} \
         batch_records={BATCH_RECORDS} inflight={INFLIGHT} rounds={rounds} \
         kill_records={} quick={quick}",
        phase.len()
    );
}
