//! Unit tests of the pure core: every call flow is driven through [`Proxy::on_message`] and
//! [`Proxy::on_timer`] with a clock of our own; the carrier and the PBXs are played here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use callgate_cdr::{Cdr, Disposition, Pii};
use callgate_config::Config;
use callgate_sip::{self as sip, HeaderName, Message};

use crate::{Millis, Now, Output, Peer, Proxy, Settings, Transport};

mod admission;
mod call;
mod dialog;
mod pinholes;
mod records;
mod tls;
mod transactions;
// A counting global allocator for this test binary (`memory`).
#[allow(unsafe_code)]
mod memory;

const UNIX0: u64 = 1_700_000_000_000;
const NUMBER: &str = "+15550100007";
const CALLER_NUMBER: &str = "+14155550123";
const CALLER_NAME: &str = "Alice Caller";
const DEST1: &str = "sip:198.51.100.10:5060;transport=udp";
const DEST2: &str = "sip:198.51.100.11:5060;transport=udp";
const APPLIANCE: &str = "lab-a";
const CAMPAIGN: &str = "spring-radio";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn udp(a: &str) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: sa(a),
        conn: None,
    }
}

fn tcp(a: &str, conn: u64) -> Peer {
    Peer {
        transport: Transport::Tcp,
        addr: sa(a),
        conn: Some(conn),
    }
}

/// Our WAN socket (carrier side).
fn wan() -> SocketAddr {
    sa("203.0.113.1:5060")
}

/// Our private socket (PBX side).
fn lan() -> SocketAddr {
    sa("198.51.100.1:5060")
}

fn carrier() -> Peer {
    udp("203.0.113.10:5060")
}

fn pbx1() -> Peer {
    udp("198.51.100.10:5060")
}

fn pbx2() -> Peer {
    udp("198.51.100.11:5060")
}

struct Opts {
    max_cps: Option<u32>,
    max_calls: Option<u32>,
    response_timeout: u32,
    ring_timeout: u32,
    max_call: u32,
    /// Extra lines of the `[[sip.carrier]]` table.
    carrier_extra: &'static str,
    /// The body of a `[sip.media]` table, if any.
    media: &'static str,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            max_cps: None,
            max_calls: None,
            response_timeout: 2,
            ring_timeout: 30,
            max_call: 3600,
            carrier_extra: "",
            media: "",
        }
    }
}

/// A trimmed config/lab.toml.
fn config_text(o: &Opts) -> String {
    let mut caps = String::new();
    if let Some(c) = o.max_cps {
        caps.push_str(&format!("max_cps = {c}\n"));
    }
    if let Some(c) = o.max_calls {
        caps.push_str(&format!("max_calls = {c}\n"));
    }
    format!(
        r#"
[appliance]
name = "{APPLIANCE}"

[zones.wan]
interfaces = ["wan0"]

[zones.private]
interfaces = ["priv0"]

[services.sip]
zones = ["private"]

[sip]
domains = ["203.0.113.1"]
{caps}listen = ["203.0.113.1:5060", "198.51.100.1:5060"]
response_timeout_secs = {rt}
ring_timeout_secs = {ring}
max_call_secs = {max_call}

[[sip.carrier]]
name = "lab-carrier"
sources = ["203.0.113.10/32"]
{carrier_extra}

[sip.media]
{media}

[[sip.route]]
numbers = ["+15550100000-+15550100099"]
campaign = "{CAMPAIGN}"
strategy = "sequential"
destinations = [
  {{ uri = "sip:198.51.100.10:5060;transport=udp" }},
  {{ uri = "sip:198.51.100.11:5060;transport=udp" }},
]

[[sip.route]]
numbers = ["+15550100100"]
campaign = "billboard-i5"
strategy = "round-robin"
destinations = [
  {{ uri = "sip:198.51.100.10:5060;transport=udp" }},
  {{ uri = "sip:198.51.100.11:5060;transport=udp" }},
]

[[sip.route]]
numbers = ["+15550100200"]
campaign = "tcp-trial"
destinations = [
  {{ uri = "sip:198.51.100.10:5060;transport=tcp" }},
]

[[sip.route]]
numbers = ["+15550100300"]
campaign = "tls-trunk"
destinations = [
  {{ uri = "sip:198.51.100.10:5061;transport=tls" }},
  {{ uri = "sip:198.51.100.11:5060;transport=udp" }},
]

[sip.tls]
listen = ["203.0.113.1:5061", "198.51.100.1:5061"]
destinations = {{ fingerprints = ["{fp}"] }}
"#,
        fp = "AB:".repeat(31) + "CD",
        rt = o.response_timeout,
        ring = o.ring_timeout,
        max_call = o.max_call,
        carrier_extra = o.carrier_extra,
        media = o.media,
    )
}

fn now_at(t: u64) -> Now {
    Now {
        mono: Millis(t),
        unix_ms: UNIX0 + t,
    }
}

/// The proxy under test and the time.
struct Lab {
    proxy: Proxy,
    t: u64,
    /// Report each answer-time record durable at once (as a store that never fails would,
    /// with no delay); off, a test drives [`Proxy::on_record_stored`] itself.
    store_at_once: bool,
}

impl Lab {
    fn new() -> Lab {
        Lab::with(Opts::default())
    }

    fn with(o: Opts) -> Lab {
        let cfg = Config::parse(&config_text(&o), Path::new("test.toml")).expect("test config");
        let mut local_for = HashMap::new();
        local_for.insert(ip("198.51.100.10"), ip("198.51.100.1"));
        local_for.insert(ip("198.51.100.11"), ip("198.51.100.1"));
        let settings = Settings::from_config(&cfg, local_for);
        let proxy = Proxy::new(settings, &cfg, now_at(0));
        Lab {
            proxy,
            t: 0,
            store_at_once: true,
        }
    }

    fn at(&mut self, t: u64) {
        assert!(t >= self.t, "time goes forward");
        self.t = t;
    }

    fn recv(&mut self, from: Peer, local: SocketAddr, bytes: &[u8]) -> Out {
        let mut out = Vec::new();
        self.proxy
            .on_message(now_at(self.t), bytes, from, local, &mut out);
        self.settle(out)
    }

    /// With `store_at_once`, what the core does when its answer-time records are durable.
    fn settle(&mut self, mut out: Vec<Output>) -> Out {
        if self.store_at_once {
            let stored: Vec<u64> = out
                .iter()
                .filter_map(|o| match o {
                    Output::Record {
                        seq, ended: false, ..
                    } => Some(*seq),
                    _ => None,
                })
                .collect();
            for seq in stored {
                self.proxy
                    .on_record_stored(now_at(self.t), seq, true, &mut out);
            }
        }
        Out(out)
    }

    /// From the carrier, on our WAN socket.
    fn carrier_says(&mut self, bytes: &[u8]) -> Out {
        self.recv(carrier(), wan(), bytes)
    }

    /// From a PBX, on our private socket.
    fn pbx_says(&mut self, pbx: Peer, bytes: &[u8]) -> Out {
        self.recv(pbx, lan(), bytes)
    }

    fn tick(&mut self) -> Out {
        let mut out = Vec::new();
        self.proxy.on_timer(now_at(self.t), &mut out);
        self.settle(out)
    }
}

/// A message the core asked to send.
#[derive(Debug, Clone)]
struct Sent {
    peer: Peer,
    local: SocketAddr,
    bytes: Vec<u8>,
}

impl Sent {
    fn msg(&self) -> Message<'_> {
        sip::parse(&self.bytes).expect("the proxy sends parseable SIP")
    }
    fn method(&self) -> Option<String> {
        self.msg().method().map(str::to_owned)
    }
    fn status(&self) -> Option<u16> {
        self.msg().status()
    }
    fn ruri(&self) -> String {
        match self.msg().start_line() {
            sip::StartLine::Request(r) => r.uri.to_string(),
            sip::StartLine::Response(_) => panic!("not a request"),
        }
    }
    /// All values of a header (list headers split at commas).
    fn values(&self, kind: HeaderName) -> Vec<String> {
        self.msg()
            .values(kind)
            .unwrap()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
    fn single(&self, kind: HeaderName) -> Option<String> {
        self.msg().single(kind).unwrap().map(str::to_owned)
    }
    fn top_branch(&self) -> String {
        self.msg().top_via().unwrap().branch().unwrap().to_owned()
    }
    fn to_tag(&self) -> Option<String> {
        self.msg().to().unwrap().tag().map(str::to_owned)
    }
    fn cseq(&self) -> (u32, String) {
        let m = self.msg();
        let c = m.cseq().unwrap();
        (c.seq, c.method.to_owned())
    }
    fn body(&self) -> Vec<u8> {
        self.msg().body().to_vec()
    }
    /// A header the codec has no name for, from the raw text.
    fn raw_header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.bytes);
        text.split("\r\n").find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// What one call of the core produced.
struct Out(Vec<Output>);

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for o in &self.0 {
            match o {
                Output::Send { peer, local, bytes } => writeln!(
                    f,
                    "send {local} -> {:?} {}:\n{}",
                    peer.transport,
                    peer.addr,
                    String::from_utf8_lossy(bytes)
                )?,
                other => writeln!(f, "{other:?}")?,
            }
        }
        Ok(())
    }
}

impl Out {
    fn sends(&self) -> Vec<Sent> {
        self.0
            .iter()
            .filter_map(|o| match o {
                Output::Send { peer, local, bytes } => Some(Sent {
                    peer: *peer,
                    local: *local,
                    bytes: bytes.to_vec(),
                }),
                _ => None,
            })
            .collect()
    }
    fn sent_to(&self, addr: SocketAddr) -> Vec<Sent> {
        self.sends()
            .into_iter()
            .filter(|s| s.peer.addr == addr)
            .collect()
    }
    fn requests_to(&self, addr: SocketAddr, method: &str) -> Vec<Sent> {
        self.sent_to(addr)
            .into_iter()
            .filter(|s| s.method().as_deref() == Some(method))
            .collect()
    }
    /// Sends other than our OPTIONS health probes.
    fn call_sends(&self) -> Vec<Sent> {
        self.sends()
            .into_iter()
            .filter(|s| s.method().as_deref() != Some("OPTIONS"))
            .collect()
    }
    /// The one response sent to `addr` (panics unless exactly one).
    fn response_to(&self, addr: SocketAddr) -> Sent {
        let r: Vec<Sent> = self
            .sent_to(addr)
            .into_iter()
            .filter(|s| s.status().is_some())
            .collect();
        assert_eq!(r.len(), 1, "exactly one response to {addr}: {r:#?}");
        r.into_iter().next().unwrap()
    }
    fn records(&self) -> Vec<(u64, Cdr, bool)> {
        self.0
            .iter()
            .filter_map(|o| match o {
                Output::Record { seq, cdr, ended } => Some((*seq, (**cdr).clone(), *ended)),
                _ => None,
            })
            .collect()
    }
    /// The one record (panics unless exactly one).
    fn record(&self) -> (u64, Cdr, bool) {
        let r = self.records();
        assert_eq!(r.len(), 1, "exactly one record: {r:#?}");
        r.into_iter().next().unwrap()
    }
    fn pinholes(&self) -> Vec<(bool, SocketAddr, Duration)> {
        self.0
            .iter()
            .filter_map(|o| match o {
                Output::Pinhole { open, dst, ttl, .. } => Some((*open, *dst, *ttl)),
                _ => None,
            })
            .collect()
    }
    /// The pinholes opened, as (source prefix, destination).
    fn opened_flows(&self) -> BTreeSet<(String, SocketAddr)> {
        self.0
            .iter()
            .filter_map(|o| match o {
                Output::Pinhole {
                    open: true,
                    src,
                    dst,
                    ..
                } => Some((src.to_string(), *dst)),
                _ => None,
            })
            .collect()
    }
    fn opened(&self) -> BTreeSet<SocketAddr> {
        self.pinholes()
            .into_iter()
            .filter(|p| p.0)
            .map(|p| p.1)
            .collect()
    }
    fn closed(&self) -> BTreeSet<SocketAddr> {
        self.pinholes()
            .into_iter()
            .filter(|p| !p.0)
            .map(|p| p.1)
            .collect()
    }
}

fn addrs(list: &[&str]) -> BTreeSet<SocketAddr> {
    list.iter().map(|a| sa(a)).collect()
}

fn sdp(ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

/// A carrier INVITE, editable before [`Invite::bytes`].
#[derive(Clone)]
struct Invite {
    ruri: String,
    to_user: String,
    via_host: String,
    transport: &'static str,
    branch: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
    max_forwards: u8,
    /// Extra Via lines below the top one.
    lower_vias: Vec<String>,
    /// Extra header lines.
    extra: Vec<String>,
    rtp_port: u16,
    /// A body of the test's own instead of the usual offer.
    sdp: Option<String>,
}

impl Invite {
    fn new(call_id: &str) -> Invite {
        Invite {
            ruri: format!("sip:{NUMBER}@203.0.113.1"),
            to_user: NUMBER.to_owned(),
            via_host: "203.0.113.10:5060".to_owned(),
            transport: "UDP",
            branch: format!(
                "z9hG4bK-{}-inv",
                call_id.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
            ),
            call_id: call_id.to_owned(),
            from_tag: "ftag-caller".to_owned(),
            cseq: 1,
            max_forwards: 70,
            lower_vias: Vec::new(),
            extra: Vec::new(),
            rtp_port: 40000,
            sdp: None,
        }
    }

    fn caller_from(&self) -> String {
        format!(
            "\"{CALLER_NAME}\" <sip:{CALLER_NUMBER}@203.0.113.10>;tag={}",
            self.from_tag
        )
    }

    fn to_header(&self) -> String {
        format!("<sip:{}@203.0.113.1>", self.to_user)
    }

    fn via(&self) -> String {
        format!(
            "SIP/2.0/{} {};branch={}",
            self.transport, self.via_host, self.branch
        )
    }

    fn bytes(&self) -> Vec<u8> {
        let body = self
            .sdp
            .clone()
            .unwrap_or_else(|| sdp("203.0.113.10", self.rtp_port));
        let mut s = format!("INVITE {} SIP/2.0\r\nVia: {}\r\n", self.ruri, self.via());
        for v in &self.lower_vias {
            s.push_str(&format!("Via: {v}\r\n"));
        }
        s.push_str(&format!(
            "Max-Forwards: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} INVITE\r\nContact: <sip:{CALLER_NUMBER}@203.0.113.10:5060>\r\n",
            self.max_forwards,
            self.caller_from(),
            self.to_header(),
            self.call_id,
            self.cseq
        ));
        for h in &self.extra {
            s.push_str(h);
            s.push_str("\r\n");
        }
        s.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        s.into_bytes()
    }

    /// The CANCEL of this INVITE (same branch, §9.1).
    fn cancel(&self) -> Vec<u8> {
        format!(
            "CANCEL {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
            self.ruri,
            self.via(),
            self.caller_from(),
            self.to_header(),
            self.call_id,
            self.cseq
        )
        .into_bytes()
    }

    /// The caller's ACK of a non-2xx final response (same branch, To of the response).
    fn ack_non2xx(&self, response: &Sent) -> Vec<u8> {
        format!(
            "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            self.ruri,
            self.via(),
            self.caller_from(),
            response.single(HeaderName::To).unwrap(),
            self.call_id,
            self.cseq
        )
        .into_bytes()
    }
}

/// The PBX's response to a request it received from us: Vias, From, To (+ tag), Call-ID,
/// CSeq and Record-Route copied; Contact and SDP answer when asked.
fn pbx_reply(req: &Sent, code: u16, tag: &str, sdp_port: Option<u16>) -> Vec<u8> {
    let m = req.msg();
    let pbx_ip = req.peer.addr.ip().to_string();
    let mut s = format!("SIP/2.0 {code} {}\r\n", sip::reason_phrase(code));
    for v in m.values(HeaderName::Via).unwrap() {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    for rr in m.values(HeaderName::RecordRoute).unwrap() {
        s.push_str(&format!("Record-Route: {rr}\r\n"));
    }
    s.push_str(&format!(
        "From: {}\r\n",
        m.single(HeaderName::From).unwrap().unwrap()
    ));
    let to = m.single(HeaderName::To).unwrap().unwrap();
    if m.to().unwrap().tag().is_some() || code == 100 {
        s.push_str(&format!("To: {to}\r\n"));
    } else {
        s.push_str(&format!("To: {to};tag={tag}\r\n"));
    }
    s.push_str(&format!(
        "Call-ID: {}\r\nCSeq: {}\r\n",
        m.call_id().unwrap(),
        m.single(HeaderName::CSeq).unwrap().unwrap()
    ));
    if m.method() == Some("INVITE") && code > 100 && code < 300 {
        s.push_str(&format!("Contact: <sip:pbx@{pbx_ip}:5060>\r\n"));
    }
    match sdp_port {
        Some(p) => {
            let body = sdp(&pbx_ip, p);
            s.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None => s.push_str("Content-Length: 0\r\n\r\n"),
    }
    s.into_bytes()
}

/// The caller's view of the dialog, from the 2xx it received.
struct CallerDialog {
    call_id: String,
    from: String,
    to: String,
    target: String,
    route: Vec<String>,
    via_host: String,
    transport: &'static str,
}

impl CallerDialog {
    fn new(inv: &Invite, ok: &Sent) -> CallerDialog {
        let m = ok.msg();
        let contact = m.contacts().unwrap().unwrap();
        let target = contact.first().unwrap().uri.as_str().to_owned();
        let mut route = ok.values(HeaderName::RecordRoute);
        route.reverse();
        CallerDialog {
            call_id: inv.call_id.clone(),
            from: inv.caller_from(),
            to: ok.single(HeaderName::To).unwrap(),
            target,
            route,
            via_host: inv.via_host.clone(),
            transport: inv.transport,
        }
    }

    fn request(&self, method: &str, branch: &str, cseq: u32, body: Option<&str>) -> Vec<u8> {
        let mut s = format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={branch}\r\n",
            self.target, self.transport, self.via_host
        );
        if !self.route.is_empty() {
            s.push_str(&format!("Route: {}\r\n", self.route.join(", ")));
        }
        s.push_str(&format!(
            "Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:{CALLER_NUMBER}@203.0.113.10:5060>\r\n",
            self.from, self.to, self.call_id
        ));
        match body {
            Some(b) => s.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            )),
            None => s.push_str("Content-Length: 0\r\n\r\n"),
        }
        s.into_bytes()
    }
}

/// The record every call of these tests would carry, to be adjusted per test.
fn cdr(call_id: &str) -> Cdr {
    Cdr {
        call_id: call_id.to_owned(),
        tracking_number: NUMBER.to_owned(),
        campaign: CAMPAIGN.to_owned(),
        caller: Pii::new(CALLER_NUMBER),
        caller_name: Some(Pii::new(CALLER_NAME)),
        destination: DEST1.to_owned(),
        invite_at: UNIX0,
        ring_at: None,
        answer_at: None,
        end_at: None,
        duration_ms: 0,
        disposition: Disposition::Answered,
        final_code: 200,
        appliance: APPLIANCE.to_owned(),
        ended_by: None,
        resume: None,
    }
}

/// A rejected carrier INVITE's record.
fn rejected(call_id: &str, number: &str, campaign: &str, code: u16, t: u64) -> Cdr {
    Cdr {
        tracking_number: number.to_owned(),
        campaign: campaign.to_owned(),
        destination: String::new(),
        invite_at: UNIX0 + t,
        end_at: Some(UNIX0 + t),
        disposition: Disposition::Rejected,
        final_code: code,
        ..cdr(call_id)
    }
}

/// An answered call (INVITE at `t0`, 180 at +100, 200 at +200, ACK at +300) and what it
/// left: the forwarded INVITE, the 2xx as the caller got it, the answer-time record.
struct Answered {
    inv: Invite,
    fwd: Sent,
    ok_up: Sent,
    dialog: CallerDialog,
    seq: u64,
}

fn answer_call(lab: &mut Lab, inv: Invite, caller: Peer, pbx: Peer, t0: u64) -> Answered {
    lab.at(t0);
    let out = lab.recv(caller, wan(), &inv.bytes());
    let fwd = out.requests_to(pbx.addr, "INVITE");
    assert_eq!(fwd.len(), 1, "INVITE forwarded: {out:#?}");
    let fwd = fwd.into_iter().next().unwrap();
    lab.at(t0 + 100);
    let out = lab.pbx_says(pbx, &pbx_reply(&fwd, 180, "pbx-tag", None));
    assert_eq!(out.response_to(caller.addr).status(), Some(180));
    lab.at(t0 + 200);
    let out = lab.pbx_says(pbx, &pbx_reply(&fwd, 200, "pbx-tag", Some(30000)));
    let ok_up = out.response_to(caller.addr);
    assert_eq!(ok_up.status(), Some(200));
    let (seq, _, ended) = out.record();
    assert!(!ended);
    let dialog = CallerDialog::new(&inv, &ok_up);
    lab.at(t0 + 300);
    let out = lab.recv(
        caller,
        wan(),
        &dialog.request("ACK", &format!("{}-ack", inv.branch), inv.cseq, None),
    );
    assert_eq!(out.requests_to(pbx.addr, "ACK").len(), 1, "{out:#?}");
    Answered {
        inv,
        fwd,
        ok_up,
        dialog,
        seq,
    }
}

fn pinhole_ttl() -> Duration {
    Duration::from_secs(3600 + 60)
}

/// Feeds `bytes` and expects exactly one message out: a response with `code` to `to`.
fn expect_refusal(lab: &mut Lab, from: Peer, local: SocketAddr, bytes: &[u8], code: u16) -> Out {
    let out = lab.recv(from, local, bytes);
    let sends = out.sends();
    assert_eq!(sends.len(), 1, "only the refusal: {out:#?}");
    assert_eq!(sends[0].peer, from);
    assert_eq!(sends[0].local, local);
    assert_eq!(sends[0].status(), Some(code), "{out:#?}");
    assert!(out.pinholes().is_empty());
    out
}

fn mutations(base: &[u8]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = Vec::new();
    // Truncations, including mid-header and mid-body.
    for cut in [
        0, 1, 7, 8, 20, 40, 60, 100, 150, 200, 250, 300, 350, 400, 450,
    ] {
        if cut < base.len() {
            v.push(base[..cut].to_vec());
        }
    }
    v.push(base[..base.len() - 1].to_vec());
    v.push(base[..base.len() - 10].to_vec());
    let text = String::from_utf8(base.to_vec()).unwrap();
    let head_end = text.find("\r\n\r\n").unwrap();
    v.push(base[..head_end].to_vec());
    v.push(base[..head_end + 2].to_vec());
    // Byte flips spread over the message.
    let mut i = 3;
    while i < base.len() {
        for b in [0u8, b'\n', b':', b';', b'<', 0xff] {
            let mut m = base.to_vec();
            m[i] = b;
            v.push(m);
        }
        i += 37;
    }
    // Header lines removed, one at a time.
    let lines: Vec<&str> = text[..head_end].split("\r\n").collect();
    for skip in 0..lines.len() {
        let mut s: Vec<&str> = lines.clone();
        s.remove(skip);
        v.push(format!("{}{}", s.join("\r\n"), &text[head_end..]).into_bytes());
    }
    // Odd values.
    for (from, to) in [
        ("Content-Length: ", "Content-Length: 99999"),
        ("CSeq: 1 INVITE", "CSeq: 99999999999999999999 INVITE"),
        ("CSeq: 1 INVITE", "CSeq: 1 BYE"),
        ("Max-Forwards: 70", "Max-Forwards: 300"),
        ("Max-Forwards: 70", "Max-Forwards: -1"),
        ("SIP/2.0\r\n", "SIP/3.0\r\n"),
        ("branch=z9hG4bK", "branch="),
        ("branch=z9hG4bK", "branch=rfc2543-"),
        (
            "sip:+15550100007@203.0.113.1 ",
            "sips:+15550100007@203.0.113.1 ",
        ),
        ("sip:+15550100007@203.0.113.1 ", "tel:+15550100007 "),
        ("sip:+15550100007@203.0.113.1 ", "http://x "),
        ("sip:+15550100007@203.0.113.1 ", "sip:@ "),
        ("c=IN IP4 203.0.113.10", "c=IN IP4 999.0.0.1"),
        ("m=audio 40000", "m=audio 99999"),
        ("m=audio 40000", "m=audio 0"),
        ("application/sdp", "text/plain"),
        ("To: <", "To: \"unterminated <"),
        ("Call-ID: ", "Call-ID: \u{7f}"),
    ] {
        v.push(text.replacen(from, to, 1).into_bytes());
    }
    v.push(b"\r\n\r\n".to_vec());
    v.push(b"SIP/2.0 200 OK\r\n\r\n".to_vec());
    v.push(vec![0xff; 64]);
    v
}

/// A carrier INVITE at 1000 answered by pbx1 at 1100 (the 200 relayed upstream): the
/// INVITE, pbx1's 200 as sent, and what the proxy did with it.
fn answered_by_pbx1(lab: &mut Lab, call_id: &str) -> (Invite, Vec<u8>, Out) {
    let inv = Invite::new(call_id);
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    let ok = pbx_reply(&fwd, 200, "p", Some(30000));
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &ok);
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    (inv, ok, out)
}

/// Runs the clock for ten minutes in 500 ms steps; returns everything that came out.
fn run_clock(lab: &mut Lab, from: u64) -> Vec<Output> {
    let mut all = Vec::new();
    let mut t = from;
    while t < from + 600_000 {
        t += 500;
        lab.at(t);
        all.extend(lab.tick().0);
    }
    all
}

/// The offer of the issue's attack: media toward the PBX's SNMP port and RTCP toward the
/// appliance's own heartbeat port.
fn hostile_offer() -> String {
    "v=0\r\no=- 1 1 IN IP4 198.51.100.10\r\ns=-\r\nc=IN IP4 198.51.100.10\r\nt=0 0\r\n\
m=audio 161 RTP/AVP 0\r\na=rtcp:5405 IN IP4 192.0.2.1\r\n"
        .to_owned()
}

/// xorshift64* one step back and forth: what an attacker who assumes the old generator
/// would compute from one output.
fn xorshift_predict(out: u64) -> u64 {
    // Inverse of 0x2545_f491_4f6c_dd1d modulo 2^64.
    let mut inv: u64 = 1;
    for _ in 0..6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(0x2545_f491_4f6c_dd1d_u64.wrapping_mul(inv)));
    }
    let mut x = out.wrapping_mul(inv);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}
