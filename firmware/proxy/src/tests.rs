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

// ------------------------------------------------------------------------- set-up

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
"#,
        rt = o.response_timeout,
        ring = o.ring_timeout,
        max_call = o.max_call,
        carrier_extra = o.carrier_extra,
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

// ----------------------------------------------------------------- messages

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

// ------------------------------------------------------------------- 1. basic

#[test]
fn basic_call_answered_then_caller_hangs_up() {
    let mut lab = Lab::new();
    let inv = Invite::new("basic-1@203.0.113.10");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());

    // 100 Trying upstream, from our WAN socket.
    let trying = out.response_to(carrier().addr);
    assert_eq!(trying.status(), Some(100));
    assert_eq!(trying.peer, carrier());
    assert_eq!(trying.local, wan());
    assert_eq!(trying.top_branch(), inv.branch);
    assert_eq!(trying.to_tag(), None);

    // The INVITE goes to the first PBX from our private socket.
    let fwd = out.requests_to(pbx1().addr, "INVITE");
    assert_eq!(fwd.len(), 1);
    let fwd = fwd.into_iter().next().unwrap();
    assert_eq!(out.sends().len(), 2, "100 and the INVITE only: {out:#?}");
    assert_eq!(fwd.peer, pbx1());
    assert_eq!(fwd.local, lan());
    assert_eq!(fwd.ruri(), format!("sip:{NUMBER}@198.51.100.10:5060"));
    let m = fwd.msg();
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[0].transport, "UDP");
    assert_eq!(vias[0].host.to_string(), "198.51.100.1");
    assert_eq!(vias[0].port, Some(5060));
    assert!(vias[0].is_rfc3261_branch());
    assert_ne!(vias[0].branch(), Some(inv.branch.as_str()));
    assert_eq!(vias[1].branch(), Some(inv.branch.as_str()));
    assert_eq!(vias[1].host.to_string(), "203.0.113.10");
    assert_eq!(m.max_forwards().unwrap(), Some(69));
    assert_eq!(
        fwd.values(HeaderName::RecordRoute),
        vec!["<sip:198.51.100.1:5060;lr>", "<sip:203.0.113.1:5060;lr>"]
    );
    assert!(fwd.values(HeaderName::Route).is_empty());
    assert_eq!(fwd.body(), sdp("203.0.113.10", 40000).into_bytes());
    assert_eq!(m.call_id().unwrap(), inv.call_id);
    assert_eq!(m.from().unwrap().tag(), Some("ftag-caller"));
    assert!(out.records().is_empty());
    assert!(out.pinholes().is_empty());
    drop(m);

    // 180 Ringing upstream, our Via removed.
    lab.at(1_400);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "pbx-1", None));
    let ringing = out.response_to(carrier().addr);
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(ringing.status(), Some(180));
    assert_eq!(ringing.local, wan());
    assert_eq!(
        ringing.values(HeaderName::Via),
        vec![format!(
            "SIP/2.0/UDP 203.0.113.10:5060;branch={}",
            inv.branch
        )]
    );
    assert_eq!(ringing.to_tag().as_deref(), Some("pbx-1"));
    assert!(out.records().is_empty());
    assert!(out.pinholes().is_empty());
    assert_eq!(lab.proxy.active_calls().len(), 1);
    assert_eq!(lab.proxy.active_calls()[0].state, crate::CallState::Ringing);

    // 200 OK upstream; pinholes for offer and answer; the answer-time record.
    lab.at(4_000);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pbx-1", Some(30000)));
    let ok = out.response_to(carrier().addr);
    assert_eq!(out.sends().len(), 1);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.values(HeaderName::Via).len(), 1);
    assert_eq!(ok.top_branch(), inv.branch);
    assert_eq!(ok.to_tag().as_deref(), Some("pbx-1"));
    assert_eq!(
        ok.values(HeaderName::RecordRoute),
        vec!["<sip:198.51.100.1:5060;lr>", "<sip:203.0.113.1:5060;lr>"]
    );
    assert_eq!(ok.body(), sdp("198.51.100.10", 30000).into_bytes());
    assert_eq!(
        out.opened(),
        addrs(&[
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "198.51.100.10:30000",
            "198.51.100.10:30001"
        ])
    );
    assert_eq!(out.pinholes().len(), 4);
    assert!(out.pinholes().iter().all(|p| p.2 == pinhole_ttl()));
    let (seq, mut answer_cdr, ended) = out.record();
    assert!(
        answer_cdr.resume.take().is_some(),
        "the answer-time record carries what resumes the call"
    );
    assert!(!ended);
    assert_eq!(
        answer_cdr,
        Cdr {
            invite_at: UNIX0 + 1_000,
            ring_at: Some(UNIX0 + 1_400),
            answer_at: Some(UNIX0 + 4_000),
            ..cdr(&inv.call_id)
        }
    );

    // ACK with the route set goes to the callee, our Routes consumed.
    let dialog = CallerDialog::new(&inv, &ok);
    assert_eq!(
        dialog.route,
        vec!["<sip:203.0.113.1:5060;lr>", "<sip:198.51.100.1:5060;lr>"]
    );
    lab.at(4_100);
    let out = lab.carrier_says(&dialog.request("ACK", "z9hG4bK-basic-ack", 1, None));
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    let ack = out.requests_to(pbx1().addr, "ACK");
    assert_eq!(ack.len(), 1);
    let ack = &ack[0];
    assert_eq!(ack.local, lan());
    assert_eq!(ack.ruri(), "sip:pbx@198.51.100.10:5060");
    assert!(ack.values(HeaderName::Route).is_empty());
    assert_eq!(ack.values(HeaderName::Via).len(), 2);
    assert!(ack
        .values(HeaderName::Via)
        .first()
        .unwrap()
        .starts_with("SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK"));
    assert_eq!(ack.msg().max_forwards().unwrap(), Some(69));
    assert!(out.records().is_empty());

    // BYE from the caller: forwarded, pinholes closed, final record.
    lab.at(64_000);
    let out = lab.carrier_says(&dialog.request("BYE", "z9hG4bK-basic-bye", 2, None));
    let bye = out.requests_to(pbx1().addr, "BYE");
    assert_eq!(bye.len(), 1, "{out:#?}");
    let bye = bye.into_iter().next().unwrap();
    assert_eq!(bye.local, lan());
    assert_eq!(bye.ruri(), "sip:pbx@198.51.100.10:5060");
    assert!(bye.values(HeaderName::Route).is_empty());
    assert_eq!(bye.cseq(), (2, "BYE".to_owned()));
    assert_eq!(
        out.closed(),
        addrs(&[
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "198.51.100.10:30000",
            "198.51.100.10:30001"
        ])
    );
    assert_eq!(out.pinholes().len(), 4);
    let (end_seq, end_cdr, ended) = out.record();
    assert!(ended);
    assert_eq!(end_seq, seq);
    assert_eq!(
        end_cdr,
        Cdr {
            invite_at: UNIX0 + 1_000,
            ring_at: Some(UNIX0 + 1_400),
            answer_at: Some(UNIX0 + 4_000),
            end_at: Some(UNIX0 + 64_000),
            duration_ms: 60_000,
            ..cdr(&inv.call_id)
        }
    );
    assert_eq!(lab.proxy.call_count(), 0);

    // The PBX's 200 to the BYE goes back to the caller.
    lab.at(64_050);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&bye, 200, "x", None));
    let ok = out.response_to(carrier().addr);
    assert_eq!(out.sends().len(), 1);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.cseq(), (2, "BYE".to_owned()));
    assert_eq!(ok.top_branch(), "z9hG4bK-basic-bye");
    assert_eq!(ok.values(HeaderName::Via).len(), 1);
    assert!(out.records().is_empty());

    let st = lab.proxy.stats();
    assert_eq!(st.calls_offered, 1);
    assert_eq!(st.calls_answered, 1);
    assert_eq!(st.pinholes_opened, 4);
    assert_eq!(st.pinholes_closed, 4);
    assert_eq!(st.active_calls, 0);
}

#[test]
fn callee_hangs_up() {
    let mut lab = Lab::new();
    let a = answer_call(
        &mut lab,
        Invite::new("callee-bye@x"),
        carrier(),
        pbx1(),
        1_000,
    );
    // The PBX sends BYE toward the caller with the Record-Route set it saw in the INVITE.
    lab.at(11_200);
    let bye = format!(
        "BYE sip:{CALLER_NUMBER}@203.0.113.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bK-pbx-bye\r\nRoute: <sip:198.51.100.1:5060;lr>, <sip:203.0.113.1:5060;lr>\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        a.ok_up.single(HeaderName::To).unwrap(),
        a.inv.caller_from(),
        a.inv.call_id
    );
    let out = lab.pbx_says(pbx1(), bye.as_bytes());
    let up = out.requests_to(carrier().addr, "BYE");
    assert_eq!(up.len(), 1, "{out:#?}");
    assert_eq!(up[0].local, wan());
    assert_eq!(
        up[0].ruri(),
        format!("sip:{CALLER_NUMBER}@203.0.113.10:5060")
    );
    assert!(up[0].values(HeaderName::Route).is_empty());
    assert!(up[0].values(HeaderName::Via)[0].starts_with("SIP/2.0/UDP 203.0.113.1:5060;"));
    assert_eq!(out.closed().len(), 4);
    let (seq, c, ended) = out.record();
    assert!(ended);
    assert_eq!(seq, a.seq);
    assert_eq!(c.disposition, Disposition::Answered);
    assert_eq!(c.end_at, Some(UNIX0 + 11_200));
    assert_eq!(c.duration_ms, 10_000);
    // The caller's 200 goes back to the PBX.
    let out = lab.carrier_says(&pbx_reply(&up[0], 200, "x", None));
    let ok = out.response_to(pbx1().addr);
    assert_eq!(ok.local, lan());
    assert_eq!(ok.top_branch(), "z9hG4bK-pbx-bye");
}

// -------------------------------------------------------------------- 2. busy

#[test]
fn busy_is_acked_forwarded_and_recorded() {
    let mut lab = Lab::new();
    let inv = Invite::new("busy-1@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();

    lab.at(1_300);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 486, "pbx-busy", None));
    // ACK to the PBX: same Request-URI and branch as our INVITE, To of the 486.
    let ack = out.requests_to(pbx1().addr, "ACK");
    assert_eq!(ack.len(), 1, "{out:#?}");
    let ack = &ack[0];
    assert_eq!(ack.local, lan());
    assert_eq!(ack.ruri(), fwd.ruri());
    assert_eq!(ack.top_branch(), fwd.top_branch());
    assert_eq!(ack.values(HeaderName::Via).len(), 1);
    assert_eq!(ack.cseq(), (1, "ACK".to_owned()));
    assert_eq!(ack.to_tag().as_deref(), Some("pbx-busy"));
    // 486 upstream with our Via removed.
    let busy = out.response_to(carrier().addr);
    assert_eq!(busy.status(), Some(486));
    assert_eq!(busy.local, wan());
    assert_eq!(busy.values(HeaderName::Via).len(), 1);
    assert_eq!(busy.top_branch(), inv.branch);
    assert_eq!(out.sends().len(), 2);
    assert!(out.pinholes().is_empty());
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            invite_at: UNIX0 + 1_000,
            end_at: Some(UNIX0 + 1_300),
            disposition: Disposition::Busy,
            final_code: 486,
            ..cdr(&inv.call_id)
        }
    );
    assert_eq!(lab.proxy.call_count(), 0);
    assert_eq!(lab.proxy.stats().calls_busy, 1);

    // The caller's ACK is absorbed by our server transaction.
    lab.at(1_350);
    let out = lab.carrier_says(&inv.ack_non2xx(&busy));
    assert!(out.sends().is_empty(), "{out:#?}");
    assert!(out.records().is_empty());
}

// ------------------------------------------------------------------ 3. cancel

#[test]
fn caller_cancel_after_ringing() {
    let mut lab = Lab::new();
    let inv = Invite::new("cancel-1@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "pbx-c", None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(180));

    lab.at(3_000);
    let out = lab.carrier_says(&inv.cancel());
    let ok = out.response_to(carrier().addr);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.cseq(), (1, "CANCEL".to_owned()));
    let cancel = out.requests_to(pbx1().addr, "CANCEL");
    assert_eq!(cancel.len(), 1, "{out:#?}");
    let cancel = &cancel[0];
    assert_eq!(cancel.local, lan());
    assert_eq!(cancel.top_branch(), fwd.top_branch());
    assert_eq!(cancel.values(HeaderName::Via).len(), 1);
    assert_eq!(cancel.ruri(), fwd.ruri());
    assert_eq!(cancel.cseq(), (1, "CANCEL".to_owned()));
    assert_eq!(cancel.to_tag(), None);
    assert_eq!(out.sends().len(), 2);
    assert!(out.records().is_empty(), "the call ends with the 487");

    // The PBX: 200 to the CANCEL (consumed here), 487 to the INVITE (forwarded).
    lab.at(3_050);
    let out = lab.pbx_says(pbx1(), &pbx_reply(cancel, 200, "pbx-c", None));
    assert!(out.sends().is_empty(), "{out:#?}");
    lab.at(3_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 487, "pbx-c", None));
    let r = out.response_to(carrier().addr);
    assert_eq!(r.status(), Some(487));
    assert_eq!(r.values(HeaderName::Via).len(), 1);
    assert_eq!(r.cseq(), (1, "INVITE".to_owned()));
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1);
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            invite_at: UNIX0 + 1_000,
            ring_at: Some(UNIX0 + 1_200),
            end_at: Some(UNIX0 + 3_100),
            disposition: Disposition::Cancelled,
            final_code: 487,
            ..cdr(&inv.call_id)
        }
    );
    assert_eq!(lab.proxy.call_count(), 0);
    // The caller's ACK of the 487 is absorbed.
    let out = lab.carrier_says(&inv.ack_non2xx(&r));
    assert!(out.sends().is_empty(), "{out:#?}");
}

#[test]
fn cancel_of_unknown_invite_gets_481() {
    let mut lab = Lab::new();
    let inv = Invite::new("nothing@x");
    let out = lab.carrier_says(&inv.cancel());
    assert_eq!(out.response_to(carrier().addr).status(), Some(481));
    assert_eq!(out.sends().len(), 1);
    assert!(out.records().is_empty());
}

// ------------------------------------------------------------- 4. ring timeout

#[test]
fn ring_timeout_cancels_and_answers_480() {
    let mut lab = Lab::with(Opts {
        ring_timeout: 5,
        ..Opts::default()
    });
    let inv = Invite::new("noanswer-1@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "pbx-r", None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(180));

    lab.at(6_199);
    let out = lab.tick();
    assert!(out.call_sends().is_empty(), "not yet: {out:#?}");
    lab.at(6_200);
    let out = lab.tick();
    let cancel = out.requests_to(pbx1().addr, "CANCEL");
    assert_eq!(cancel.len(), 1, "{out:#?}");
    assert_eq!(cancel[0].top_branch(), fwd.top_branch());
    let r = out.response_to(carrier().addr);
    assert_eq!(r.status(), Some(480));
    assert_eq!(r.top_branch(), inv.branch);
    assert!(r.to_tag().is_some());
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            invite_at: UNIX0 + 1_000,
            ring_at: Some(UNIX0 + 1_200),
            end_at: Some(UNIX0 + 6_200),
            disposition: Disposition::NoAnswer,
            final_code: 480,
            ..cdr(&inv.call_id)
        }
    );
    assert_eq!(lab.proxy.call_count(), 0);

    // The PBX's 487 is ACKed and goes no further.
    lab.at(6_300);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 487, "pbx-r", None));
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");
    assert!(out.sent_to(carrier().addr).is_empty());
    assert!(out.records().is_empty());
    assert_eq!(lab.proxy.stats().calls_no_answer, 1);
}

// ---------------------------------------------------------------- 5. failover

#[test]
fn failover_on_503_then_answered_by_second_pbx() {
    let mut lab = Lab::new();
    let inv = Invite::new("failover-503@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd1 = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();

    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd1, 503, "pbx1", None));
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");
    assert!(
        out.sent_to(carrier().addr).is_empty(),
        "the 503 stays here: {out:#?}"
    );
    assert!(out.records().is_empty());
    let fwd2 = out.requests_to(pbx2().addr, "INVITE");
    assert_eq!(fwd2.len(), 1);
    let fwd2 = fwd2.into_iter().next().unwrap();
    assert_eq!(fwd2.local, lan());
    assert_eq!(fwd2.ruri(), format!("sip:{NUMBER}@198.51.100.11:5060"));
    assert_ne!(fwd2.top_branch(), fwd1.top_branch());
    assert_eq!(fwd2.values(HeaderName::Via).len(), 2);
    assert_eq!(fwd2.msg().max_forwards().unwrap(), Some(69));
    assert_eq!(fwd2.values(HeaderName::RecordRoute).len(), 2);
    assert_eq!(lab.proxy.stats().failovers, 1);

    let a_inv = inv.clone();
    lab.at(1_300);
    let out = lab.pbx_says(pbx2(), &pbx_reply(&fwd2, 180, "pbx2", None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(180));
    lab.at(2_000);
    let out = lab.pbx_says(pbx2(), &pbx_reply(&fwd2, 200, "pbx2", Some(30000)));
    let ok = out.response_to(carrier().addr);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        out.opened(),
        addrs(&[
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "198.51.100.11:30000",
            "198.51.100.11:30001"
        ])
    );
    let (_, mut c, ended) = out.record();
    assert!(
        c.resume.take().is_some(),
        "the answer-time record carries what resumes the call"
    );
    assert!(!ended);
    let expected = Cdr {
        destination: DEST2.to_owned(),
        invite_at: UNIX0 + 1_000,
        ring_at: Some(UNIX0 + 1_300),
        answer_at: Some(UNIX0 + 2_000),
        ..cdr(&a_inv.call_id)
    };
    assert_eq!(c, expected);

    // In-dialog requests now go to the second PBX.
    let d = CallerDialog::new(&a_inv, &ok);
    lab.at(2_100);
    let out = lab.carrier_says(&d.request("ACK", "z9hG4bK-fo-ack", 1, None));
    assert_eq!(out.requests_to(pbx2().addr, "ACK").len(), 1, "{out:#?}");
    lab.at(7_000);
    let out = lab.carrier_says(&d.request("BYE", "z9hG4bK-fo-bye", 2, None));
    assert_eq!(out.requests_to(pbx2().addr, "BYE").len(), 1, "{out:#?}");
    assert!(out.sent_to(pbx1().addr).is_empty());
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            end_at: Some(UNIX0 + 7_000),
            duration_ms: 5_000,
            ..expected
        }
    );
}

#[test]
fn failover_on_silence_then_answered_by_second_pbx() {
    let mut lab = Lab::with(Opts {
        response_timeout: 2,
        ..Opts::default()
    });
    let inv = Invite::new("failover-timeout@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd1 = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();

    lab.at(2_999);
    let out = lab.tick();
    assert!(
        out.requests_to(pbx2().addr, "INVITE").is_empty(),
        "{out:#?}"
    );
    assert!(out.sent_to(carrier().addr).is_empty());
    lab.at(3_000);
    let out = lab.tick();
    let fwd2 = out.requests_to(pbx2().addr, "INVITE");
    assert_eq!(fwd2.len(), 1, "{out:#?}");
    let fwd2 = fwd2.into_iter().next().unwrap();
    assert_ne!(fwd2.top_branch(), fwd1.top_branch());
    assert_eq!(fwd2.ruri(), format!("sip:{NUMBER}@198.51.100.11:5060"));
    assert!(
        out.requests_to(pbx1().addr, "CANCEL").is_empty(),
        "no CANCEL without a provisional (§9.1)"
    );
    assert!(out.sent_to(carrier().addr).is_empty());
    assert!(out.records().is_empty());

    // A late answer from the first PBX changes nothing.
    lab.at(3_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd1, 180, "late", None));
    assert!(out.sent_to(carrier().addr).is_empty(), "{out:#?}");

    lab.at(3_500);
    let out = lab.pbx_says(pbx2(), &pbx_reply(&fwd2, 200, "pbx2", Some(30000)));
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    let (_, mut c, ended) = out.record();
    assert!(
        c.resume.take().is_some(),
        "the answer-time record carries what resumes the call"
    );
    assert!(!ended);
    assert_eq!(
        c,
        Cdr {
            destination: DEST2.to_owned(),
            invite_at: UNIX0 + 1_000,
            ring_at: Some(UNIX0 + 3_500),
            answer_at: Some(UNIX0 + 3_500),
            ..cdr(&inv.call_id)
        }
    );
    assert_eq!(lab.proxy.stats().failovers, 1);
}

#[test]
fn all_destinations_fail_forwards_the_last_final() {
    let mut lab = Lab::new();
    let inv = Invite::new("allfail@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd1 = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd1, 500, "a", None));
    let fwd2 = out.requests_to(pbx2().addr, "INVITE").pop().unwrap();
    lab.at(1_400);
    let out = lab.pbx_says(pbx2(), &pbx_reply(&fwd2, 503, "b", None));
    assert_eq!(out.requests_to(pbx2().addr, "ACK").len(), 1);
    assert_eq!(out.response_to(carrier().addr).status(), Some(503));
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            destination: DEST2.to_owned(),
            invite_at: UNIX0 + 1_000,
            end_at: Some(UNIX0 + 1_400),
            disposition: Disposition::Failed,
            final_code: 503,
            ..cdr(&inv.call_id)
        }
    );
}

// ----------------------------------------------------------- 6. retransmission

#[test]
fn retransmitted_invite_is_absorbed() {
    let mut lab = Lab::new();
    let inv = Invite::new("retrans@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();

    lab.at(1_400);
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(out.response_to(carrier().addr).status(), Some(100));
    assert!(out.records().is_empty());
    assert_eq!(lab.proxy.stats().retransmissions_absorbed, 1);
    assert_eq!(lab.proxy.stats().calls_offered, 1);
    assert_eq!(lab.proxy.call_count(), 1);

    // After the 180, a retransmission gets the 180 again.
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "p", None));
    lab.at(2_400);
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(out.response_to(carrier().addr).status(), Some(180));
    assert_eq!(lab.proxy.stats().retransmissions_absorbed, 2);
}

// ------------------------------------------------------------------ 7. refusals

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

#[test]
fn refuses_non_carrier_source_without_record() {
    let mut lab = Lab::new();
    let stranger = udp("192.0.2.50:5060");
    let mut inv = Invite::new("stranger@x");
    inv.via_host = "192.0.2.50:5060".to_owned();
    lab.at(1_000);
    let out = expect_refusal(&mut lab, stranger, wan(), &inv.bytes(), 403);
    assert!(out.records().is_empty());
    assert_eq!(lab.proxy.stats().refused_not_carrier, 1);
    assert_eq!(lab.proxy.stats().calls_offered, 0);
}

#[test]
fn refuses_foreign_domain_with_rejected_record() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("foreign@x");
    inv.ruri = format!("sip:{NUMBER}@calls.example.org");
    lab.at(1_000);
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 403);
    assert!(out.sends()[0].to_tag().is_some());
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c, rejected(&inv.call_id, NUMBER, "", 403, 1_000));
    assert_eq!(lab.proxy.stats().refused_domain, 1);
}

#[test]
fn refuses_route_to_another_host() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("route@x");
    inv.extra.push("Route: <sip:192.0.2.99;lr>".to_owned());
    lab.at(1_000);
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 403);
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c, rejected(&inv.call_id, NUMBER, "", 403, 1_000));
    assert_eq!(lab.proxy.stats().refused_route, 1);

    // A Route naming us is fine (and consumed).
    let mut inv = Invite::new("route-ours@x");
    inv.extra
        .push("Route: <sip:203.0.113.1:5060;lr>".to_owned());
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE");
    assert_eq!(fwd.len(), 1, "{out:#?}");
    assert!(fwd[0].values(HeaderName::Route).is_empty());
}

#[test]
fn refuses_unknown_number_404() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("unknown@x");
    inv.ruri = "sip:+15559999999@203.0.113.1".to_owned();
    inv.to_user = "+15559999999".to_owned();
    lab.at(1_000);
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 404);
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c, rejected(&inv.call_id, "+15559999999", "", 404, 1_000));
    assert_eq!(lab.proxy.stats().refused_number, 1);
}

#[test]
fn refuses_max_forwards_zero_483() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("mf0@x");
    inv.max_forwards = 0;
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 483);
    assert!(out.records().is_empty());
}

#[test]
fn refuses_a_request_carrying_our_via_482() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("loop@x");
    inv.lower_vias
        .push("SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKcg0123456789abcdef".to_owned());
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 482);
    assert!(out.records().is_empty());
    assert_eq!(lab.proxy.stats().refused_loop, 1);
}

#[test]
fn refuses_a_call_id_already_in_a_call_482() {
    let mut lab = Lab::new();
    let inv = Invite::new("merged@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.requests_to(pbx1().addr, "INVITE").len(), 1);
    // Same Call-ID, another branch (a merged request, §8.2.2.2).
    let mut again = inv.clone();
    again.branch = "z9hG4bK-merged-2".to_owned();
    let out = lab.carrier_says(&again.bytes());
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(out.response_to(carrier().addr).status(), Some(482));
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c, rejected(&inv.call_id, NUMBER, "", 482, 1_000));
    assert_eq!(lab.proxy.call_count(), 1);
}

#[test]
fn overload_sheds_with_503_and_retry_after() {
    let mut lab = Lab::with(Opts {
        max_cps: Some(2),
        max_calls: Some(10),
        ..Opts::default()
    });
    lab.at(1_000);
    for i in 0..2 {
        let out = lab.carrier_says(&Invite::new(&format!("cps-{i}@x")).bytes());
        assert_eq!(out.requests_to(pbx1().addr, "INVITE").len(), 1, "{out:#?}");
    }
    let inv = Invite::new("cps-2@x");
    let out = expect_refusal(&mut lab, carrier(), wan(), &inv.bytes(), 503);
    let r = out.response_to(carrier().addr);
    let retry: u32 = r
        .msg()
        .single(HeaderName::RetryAfter)
        .unwrap()
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c, rejected(&inv.call_id, NUMBER, CAMPAIGN, 503, 1_000));
    assert_eq!(lab.proxy.stats().calls_shed, 1);
    assert_eq!(lab.proxy.call_count(), 2);
}

#[test]
fn concurrent_call_cap_sheds_and_frees_slots() {
    let mut lab = Lab::with(Opts {
        max_cps: Some(100),
        max_calls: Some(1),
        ..Opts::default()
    });
    lab.at(1_000);
    let first = Invite::new("cap-1@x");
    let out = lab.carrier_says(&first.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    let out = lab.carrier_says(&Invite::new("cap-2@x").bytes());
    assert_eq!(out.response_to(carrier().addr).status(), Some(503));
    // The first call ends busy: its slot is free again.
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 486, "b", None));
    let out = lab.carrier_says(&Invite::new("cap-3@x").bytes());
    assert_eq!(out.requests_to(pbx1().addr, "INVITE").len(), 1, "{out:#?}");
}

// ------------------------------------------------------------- 8. in-dialog

#[test]
fn unknown_dialog_gets_481() {
    let mut lab = Lab::new();
    let bye = format!(
        "BYE sip:pbx@198.51.100.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-ghost\r\nMax-Forwards: 70\r\nFrom: <sip:{CALLER_NUMBER}@203.0.113.10>;tag=a\r\nTo: <sip:{NUMBER}@203.0.113.1>;tag=b\r\nCall-ID: ghost@x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let out = expect_refusal(&mut lab, carrier(), wan(), bye.as_bytes(), 481);
    assert!(out.records().is_empty());
}

#[test]
fn in_dialog_request_from_a_third_address_gets_403() {
    let mut lab = Lab::new();
    let a = answer_call(&mut lab, Invite::new("third@x"), carrier(), pbx1(), 1_000);
    lab.at(5_000);
    let intruder = udp("192.0.2.66:5060");
    let mut d = CallerDialog::new(&a.inv, &a.ok_up);
    d.via_host = "192.0.2.66:5060".to_owned();
    let out = lab.recv(intruder, wan(), &d.request("BYE", "z9hG4bK-evil", 2, None));
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(out.response_to(intruder.addr).status(), Some(403));
    assert!(out.records().is_empty());
    assert!(out.pinholes().is_empty());
    assert_eq!(lab.proxy.call_count(), 1);

    // Also from the other PBX, a destination we trust, with the caller's tags.
    let out = lab.recv(pbx2(), lan(), &d.request("BYE", "z9hG4bK-evil2", 3, None));
    assert_eq!(out.response_to(pbx2().addr).status(), Some(403));
    assert_eq!(out.sends().len(), 1, "{out:#?}");
    assert_eq!(lab.proxy.call_count(), 1);
    let _ = a.fwd;
}

// -------------------------------------------------------------- 9. re-INVITE

#[test]
fn calls_sharing_media_addresses_share_the_pinholes() {
    let mut lab = Lab::new();
    // Both calls offer and answer the same addresses (a gateway reusing its ports).
    let a = answer_call(&mut lab, Invite::new("share-a@x"), carrier(), pbx1(), 1_000);
    assert_eq!(
        lab.proxy.stats().pinholes_opened,
        4,
        "RTP and RTCP of both parties"
    );
    let b_inv = Invite::new("share-b@x");
    lab.at(2_000);
    let out = lab.carrier_says(&b_inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(2_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pbx-b", Some(30000)));
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    assert!(
        out.pinholes().is_empty(),
        "already open for call a: {out:#?}"
    );
    let b_ok = out.response_to(carrier().addr);
    let b = CallerDialog::new(&b_inv, &b_ok);

    // Call a ends: call b still uses the addresses, nothing closes.
    lab.at(3_000);
    let out = lab.carrier_says(&a.dialog.request("BYE", "z9hG4bK-share-a-bye", 2, None));
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1);
    assert!(out.pinholes().is_empty(), "{out:#?}");

    // A third call 61 s after the first opening renews the timeout once.
    let c = answer_call(
        &mut lab,
        Invite::new("share-c@x"),
        carrier(),
        pbx1(),
        62_000,
    );
    // Call b ends: call c still holds them. Call c ends: they close, once each.
    lab.at(63_000);
    let out = lab.carrier_says(&b.request("BYE", "z9hG4bK-share-b-bye", 2, None));
    assert!(out.pinholes().is_empty(), "{out:#?}");
    lab.at(64_000);
    let out = lab.carrier_says(&c.dialog.request("BYE", "z9hG4bK-share-c-bye", 2, None));
    let closed: Vec<_> = out.pinholes().into_iter().filter(|p| !p.0).collect();
    assert_eq!(closed.len(), 4, "{out:#?}");
    assert_eq!(lab.proxy.stats().pinholes_closed, 4);
    // Opened when call a was answered and renewed for call c: 2 x 4.
    assert_eq!(lab.proxy.stats().pinholes_opened, 8);
}

#[test]
fn reinvite_moves_the_media_pinholes() {
    let mut lab = Lab::new();
    let a = answer_call(
        &mut lab,
        Invite::new("reinvite@x"),
        carrier(),
        pbx1(),
        1_000,
    );
    lab.at(10_000);
    let offer = sdp("203.0.113.10", 40002);
    let out = lab.carrier_says(&a.dialog.request("INVITE", "z9hG4bK-re-1", 2, Some(&offer)));
    assert_eq!(out.response_to(carrier().addr).status(), Some(100));
    let re = out.requests_to(pbx1().addr, "INVITE");
    assert_eq!(re.len(), 1, "{out:#?}");
    let re = re.into_iter().next().unwrap();
    assert_eq!(re.ruri(), "sip:pbx@198.51.100.10:5060");
    assert!(re.values(HeaderName::Route).is_empty());
    assert_eq!(re.values(HeaderName::Via).len(), 2);
    assert_eq!(re.body(), offer.as_bytes());
    assert!(out.pinholes().is_empty(), "the offer alone opens nothing");

    lab.at(10_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&re, 200, "ignored", Some(30000)));
    let ok = out.response_to(carrier().addr);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.cseq(), (2, "INVITE".to_owned()));
    assert_eq!(ok.values(HeaderName::Via).len(), 1);
    assert_eq!(
        out.opened(),
        addrs(&["203.0.113.10:40002", "203.0.113.10:40003"])
    );
    assert_eq!(
        out.closed(),
        addrs(&["203.0.113.10:40000", "203.0.113.10:40001"])
    );
    assert_eq!(out.pinholes().len(), 4);
    assert!(out.records().is_empty());

    lab.at(10_200);
    let out = lab.carrier_says(&a.dialog.request("ACK", "z9hG4bK-re-ack", 2, None));
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");

    lab.at(20_000);
    let out = lab.carrier_says(&a.dialog.request("BYE", "z9hG4bK-re-bye", 3, None));
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1);
    assert_eq!(
        out.closed(),
        addrs(&[
            "203.0.113.10:40002",
            "203.0.113.10:40003",
            "198.51.100.10:30000",
            "198.51.100.10:30001"
        ])
    );
    assert_eq!(out.pinholes().len(), 4);
    let (seq, c, ended) = out.record();
    assert!(ended);
    assert_eq!(seq, a.seq);
    assert_eq!(c.duration_ms, 20_000 - 1_200);
}

// ---------------------------------------------------------- 10. malformed input

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

#[test]
fn malformed_and_truncated_messages_never_panic() {
    let mut lab = Lab::new();
    // A live call so that responses and in-dialog mutations reach real state.
    let a = answer_call(&mut lab, Invite::new("live@x"), carrier(), pbx1(), 1_000);
    let base = Invite::new("fuzz@x").bytes();
    let muts = mutations(&base);
    assert!(muts.len() > 40, "{}", muts.len());
    let mut t = 2_000;
    for (n, m) in muts.iter().enumerate() {
        t += 10;
        lab.at(t);
        // Each mutation from the carrier, from a stranger, and over TCP.
        let _ = lab.recv(carrier(), wan(), m);
        let _ = lab.recv(udp("192.0.2.7:5060"), wan(), m);
        let _ = lab.recv(tcp("203.0.113.10:40123", n as u64), wan(), m);
        let _ = lab.tick();
    }
    // Mutations of responses and in-dialog requests of the live call.
    for base in [
        pbx_reply(&a.fwd, 200, "pbx-tag", Some(30000)),
        a.dialog.request("BYE", "z9hG4bK-fuzz-bye", 9, None),
        a.dialog.request(
            "INVITE",
            "z9hG4bK-fuzz-re",
            9,
            Some(&sdp("203.0.113.10", 1)),
        ),
    ] {
        for m in mutations(&base) {
            t += 10;
            lab.at(t);
            let _ = lab.recv(pbx1(), lan(), &m);
            let _ = lab.recv(carrier(), wan(), &m);
        }
    }
    assert!(lab.proxy.stats().malformed_dropped > 0);
    // Time runs out for everything without a panic.
    for step in 1..=40 {
        lab.at(t + step * 60_000);
        let _ = lab.tick();
    }
}

// ------------------------------------------------------------------- 11. TCP

#[test]
fn tcp_caller_basic_call() {
    let mut lab = Lab::new();
    let caller = tcp("203.0.113.10:5060", 1);
    let mut inv = Invite::new("tcp-1@x");
    inv.transport = "TCP";
    lab.at(1_000);
    let out = lab.recv(caller, wan(), &inv.bytes());
    let trying = out.response_to(caller.addr);
    assert_eq!(trying.status(), Some(100));
    assert_eq!(trying.peer, caller, "answered on the connection it came on");
    let fwd = out.requests_to(pbx1().addr, "INVITE");
    assert_eq!(fwd.len(), 1, "{out:#?}");
    let fwd = fwd.into_iter().next().unwrap();
    assert_eq!(fwd.peer, pbx1());
    assert_eq!(
        fwd.values(HeaderName::RecordRoute),
        vec![
            "<sip:198.51.100.1:5060;lr>",
            "<sip:203.0.113.1:5060;transport=tcp;lr>"
        ]
    );
    assert!(fwd.values(HeaderName::Via)[0].starts_with("SIP/2.0/UDP 198.51.100.1:5060;"));

    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "t", None));
    assert_eq!(out.response_to(caller.addr).peer, caller);
    lab.at(1_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "t", Some(30000)));
    let ok = out.response_to(caller.addr);
    assert_eq!(ok.peer, caller);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(out.opened().len(), 4);
    let (seq, mut c, ended) = out.record();
    assert!(
        c.resume.take().is_some(),
        "the answer-time record carries what resumes the call"
    );
    assert!(!ended);
    assert_eq!(lab.proxy.active_calls()[0].transport, Transport::Tcp);

    let d = CallerDialog::new(&inv, &ok);
    lab.at(1_300);
    let out = lab.recv(caller, wan(), &d.request("ACK", "z9hG4bK-tcp-ack", 1, None));
    let ack = out.requests_to(pbx1().addr, "ACK");
    assert_eq!(ack.len(), 1, "{out:#?}");
    assert!(ack[0].values(HeaderName::Route).is_empty());
    lab.at(9_200);
    let out = lab.recv(caller, wan(), &d.request("BYE", "z9hG4bK-tcp-bye", 2, None));
    let bye = out.requests_to(pbx1().addr, "BYE").pop().unwrap();
    let (end_seq, end, ended) = out.record();
    assert!(ended);
    assert_eq!(end_seq, seq);
    assert_eq!(
        end,
        Cdr {
            end_at: Some(UNIX0 + 9_200),
            duration_ms: 8_000,
            ..c
        }
    );
    let out = lab.pbx_says(pbx1(), &pbx_reply(&bye, 200, "t", None));
    assert_eq!(out.response_to(caller.addr).peer, caller);
}

#[test]
fn tcp_both_sides() {
    let mut lab = Lab::new();
    let caller = tcp("203.0.113.10:5060", 7);
    let mut inv = Invite::new("tcp-2@x");
    inv.transport = "TCP";
    inv.ruri = "sip:+15550100200@203.0.113.1".to_owned();
    inv.to_user = "+15550100200".to_owned();
    let out = lab.recv(caller, wan(), &inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE");
    assert_eq!(fwd.len(), 1, "{out:#?}");
    let fwd = fwd.into_iter().next().unwrap();
    assert_eq!(fwd.peer.transport, Transport::Tcp);
    assert_eq!(fwd.peer.conn, None);
    assert_eq!(
        fwd.ruri(),
        "sip:+15550100200@198.51.100.10:5060;transport=tcp"
    );
    assert!(fwd.values(HeaderName::Via)[0].starts_with("SIP/2.0/TCP 198.51.100.1:5060;"));
    assert_eq!(
        fwd.values(HeaderName::RecordRoute),
        vec![
            "<sip:198.51.100.1:5060;transport=tcp;lr>",
            "<sip:203.0.113.1:5060;transport=tcp;lr>"
        ]
    );
    let pbx = Peer {
        transport: Transport::Tcp,
        addr: pbx1().addr,
        conn: Some(9),
    };
    let out = lab.pbx_says(pbx, &pbx_reply(&fwd, 200, "t", Some(30000)));
    assert_eq!(out.response_to(caller.addr).peer, caller);
    let (_, c, _) = out.record();
    assert_eq!(c.destination, "sip:198.51.100.10:5060;transport=tcp");
    assert_eq!(c.campaign, "tcp-trial");
}

// ------------------------------------------------------------ max call length

#[test]
fn max_call_length_ends_the_call_both_ways() {
    let mut lab = Lab::with(Opts {
        max_call: 10,
        ..Opts::default()
    });
    let a = answer_call(&mut lab, Invite::new("long@x"), carrier(), pbx1(), 1_000);
    // Answered at 1_200: the cap fires at 11_200.
    lab.at(11_199);
    let out = lab.tick();
    assert!(out.records().is_empty(), "{out:#?}");
    lab.at(11_200);
    let out = lab.tick();
    let to_caller = out.requests_to(carrier().addr, "BYE");
    let to_callee = out.requests_to(pbx1().addr, "BYE");
    assert_eq!(to_caller.len(), 1, "{out:#?}");
    assert_eq!(to_callee.len(), 1, "{out:#?}");
    assert_eq!(to_caller[0].local, wan());
    assert_eq!(
        to_caller[0].ruri(),
        format!("sip:{CALLER_NUMBER}@203.0.113.10:5060")
    );
    assert_eq!(to_callee[0].ruri(), "sip:pbx@198.51.100.10:5060");
    assert_eq!(to_callee[0].local, lan());
    // Toward the callee, From/To as in the dialog; toward the caller, swapped.
    assert_eq!(
        to_callee[0].msg().from().unwrap().tag(),
        Some("ftag-caller")
    );
    assert_eq!(to_caller[0].msg().to().unwrap().tag(), Some("ftag-caller"));
    assert_eq!(to_caller[0].msg().from().unwrap().tag(), Some("pbx-tag"));
    assert!(to_callee[0].cseq().0 > a.inv.cseq);
    assert_eq!(out.closed().len(), 4);
    let (seq, c, ended) = out.record();
    assert!(ended);
    assert_eq!(seq, a.seq);
    assert_eq!(c.duration_ms, 10_000);
    assert_eq!(c.disposition, Disposition::Answered);
    assert_eq!(lab.proxy.call_count(), 0);
}

// ------------------------------------------------------------------- more flows

#[test]
fn early_media_opens_pinholes_and_failure_closes_them() {
    let mut lab = Lab::new();
    let inv = Invite::new("early@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 183, "em", Some(30000)));
    assert_eq!(out.response_to(carrier().addr).status(), Some(183));
    assert_eq!(out.opened().len(), 4, "{out:#?}");
    lab.at(1_300);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 486, "em", None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(486));
    assert_eq!(
        out.closed(),
        addrs(&[
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "198.51.100.10:30000",
            "198.51.100.10:30001"
        ])
    );
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c.ring_at, Some(UNIX0 + 1_100));
    assert_eq!(c.disposition, Disposition::Busy);
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

#[test]
fn pbx_2xx_retransmission_is_forwarded_upstream() {
    let mut lab = Lab::new();
    let (_, ok, out) = answered_by_pbx1(&mut lab, "ok-again@x");
    assert_eq!(out.records().len(), 1);
    lab.at(1_600);
    let out = lab.pbx_says(pbx1(), &ok);
    let again = out.response_to(carrier().addr);
    assert_eq!(again.status(), Some(200));
    assert_eq!(again.values(HeaderName::Via).len(), 1);
    assert!(out.records().is_empty(), "no second answer record");
    assert!(out.pinholes().is_empty());
    assert_eq!(lab.proxy.stats().calls_answered, 1);
}

#[test]
fn invite_retransmitted_after_the_answer_is_absorbed_for_64_t1() {
    let mut lab = Lab::new();
    let (inv, ok, _) = answered_by_pbx1(&mut lab, "accepted@x");
    // Both INVITE transactions are in Accepted (kept as keys only).
    assert_eq!(lab.proxy.stats().transactions, 2);
    lab.at(1_600);
    let out = lab.carrier_says(&inv.bytes());
    assert!(out.sends().is_empty(), "{out:#?}");
    assert_eq!(lab.proxy.stats().retransmissions_absorbed, 1);
    assert_eq!(lab.proxy.stats().refused_loop, 0);
    assert_eq!(lab.proxy.call_count(), 1);
    // The 2xx retransmission still goes upstream within the window.
    lab.at(20_000);
    let out = lab.pbx_says(pbx1(), &ok);
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    // After 64·T1 the keys are gone: the same INVITE now meets the live call's Call-ID
    // and is refused as a merged request, and the 2xx is no longer relayed.
    lab.at(1_100 + 32_000);
    lab.tick();
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.response_to(carrier().addr).status(), Some(482));
    let out = lab.pbx_says(pbx1(), &ok);
    assert!(out.sends().is_empty(), "{out:#?}");
    assert_eq!(lab.proxy.call_count(), 1);
}

#[test]
fn retransmitted_refused_invite_is_answered_again_without_a_second_record() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("unknown-again@x");
    inv.ruri = "sip:+15559999999@203.0.113.1".to_owned();
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.response_to(carrier().addr).status(), Some(404));
    assert_eq!(out.records().len(), 1);
    lab.at(200);
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.response_to(carrier().addr).status(), Some(404));
    assert!(out.records().is_empty(), "{out:#?}");
}

#[test]
fn tel_uri_and_visual_separators_are_normalized() {
    let mut lab = Lab::new();
    for (i, ruri) in [
        "tel:+1-555-010-0007",
        "sip:+1(555)010.0007@203.0.113.1;user=phone",
    ]
    .iter()
    .enumerate()
    {
        let mut inv = Invite::new(&format!("norm-{i}@x"));
        inv.ruri = (*ruri).to_owned();
        let out = lab.carrier_says(&inv.bytes());
        let fwd = out.requests_to(pbx1().addr, "INVITE");
        assert_eq!(fwd.len(), 1, "{ruri}: {out:#?}");
        assert_eq!(fwd[0].ruri(), format!("sip:{NUMBER}@198.51.100.10:5060"));
        let calls = lab.proxy.active_calls();
        assert!(calls.iter().all(|c| c.tracking_number == NUMBER));
        assert!(calls.iter().all(|c| c.caller == "+14155******"));
    }
}

#[test]
fn caller_cancel_before_any_provisional() {
    let mut lab = Lab::new();
    let inv = Invite::new("early-cancel@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let out = lab.carrier_says(&inv.cancel());
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    assert!(
        out.requests_to(pbx1().addr, "CANCEL").is_empty(),
        "no CANCEL before a provisional (§9.1)"
    );
    // The PBX's 100 Trying releases the CANCEL.
    lab.at(1_200);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 100, "", None));
    let cancel = out.requests_to(pbx1().addr, "CANCEL");
    assert_eq!(cancel.len(), 1, "{out:#?}");
    assert_eq!(cancel[0].top_branch(), fwd.top_branch());
    lab.at(1_300);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 487, "c", None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(487));
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(
        c,
        Cdr {
            invite_at: UNIX0 + 1_000,
            end_at: Some(UNIX0 + 1_300),
            disposition: Disposition::Cancelled,
            final_code: 487,
            ..cdr(&inv.call_id)
        }
    );
}

#[test]
fn caller_cancel_with_a_silent_destination_ends_at_the_response_timeout() {
    let mut lab = Lab::new();
    let inv = Invite::new("cancel-silent@x");
    lab.at(1_000);
    let _ = lab.carrier_says(&inv.bytes());
    lab.at(1_100);
    let _ = lab.carrier_says(&inv.cancel());
    lab.at(3_000);
    let out = lab.tick();
    assert!(
        out.requests_to(pbx2().addr, "INVITE").is_empty(),
        "{out:#?}"
    );
    assert_eq!(out.response_to(carrier().addr).status(), Some(487));
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!(c.disposition, Disposition::Cancelled);
    assert_eq!(c.final_code, 487);
    assert_eq!(lab.proxy.call_count(), 0);
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

#[test]
fn trying_then_silence_does_not_hang_the_call() {
    let mut lab = Lab::with(Opts {
        ring_timeout: 5,
        ..Opts::default()
    });
    let inv = Invite::new("trying-only@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 100, "", None));
    let all = Out(run_clock(&mut lab, 1_100));
    assert_eq!(
        lab.proxy.call_count(),
        0,
        "the call is still up after ten minutes"
    );
    let ended: Vec<_> = all.records().into_iter().filter(|r| r.2).collect();
    assert_eq!(ended.len(), 1);
    assert!(!all.requests_to(pbx1().addr, "CANCEL").is_empty());
}

#[test]
fn cancel_without_487_from_the_destination_still_ends_the_call() {
    let mut lab = Lab::new();
    let inv = Invite::new("cancel-no-487@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "r", None));
    lab.at(2_000);
    let out = lab.carrier_says(&inv.cancel());
    let cancel = out.requests_to(pbx1().addr, "CANCEL").pop().unwrap();
    // The PBX answers the CANCEL but never sends its 487.
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&cancel, 200, "r", None));
    let all = Out(run_clock(&mut lab, 2_000));
    assert_eq!(lab.proxy.call_count(), 0, "still up after ten minutes");
    let finals: Vec<u16> = all
        .sent_to(carrier().addr)
        .iter()
        .filter_map(Sent::status)
        .filter(|c| *c >= 300)
        .collect();
    assert!(finals.contains(&487), "{finals:?}");
    let ended: Vec<_> = all.records().into_iter().filter(|r| r.2).collect();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].1.disposition, Disposition::Cancelled);
}

#[test]
fn answer_racing_the_ring_timeout_cancel_releases_the_callee() {
    let mut lab = Lab::with(Opts {
        ring_timeout: 5,
        ..Opts::default()
    });
    let inv = Invite::new("race@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let _ = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "r", None));
    lab.at(6_100);
    let out = lab.tick();
    assert_eq!(out.response_to(carrier().addr).status(), Some(480));
    // The PBX answered before it saw our CANCEL.
    lab.at(6_150);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "r", Some(30000)));
    assert!(out.sent_to(carrier().addr).is_empty(), "{out:#?}");
    assert!(out.records().is_empty());
    assert!(out.opened().is_empty());
    // The answered callee must be released: ACK and BYE (RFC 3261 §15, §16.7 step 5 note).
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1, "{out:#?}");
}

// ------------------------------------------------------------ attackers

/// The offer of the issue's attack: media toward the PBX's SNMP port and RTCP toward the
/// appliance's own heartbeat port.
fn hostile_offer() -> String {
    "v=0\r\no=- 1 1 IN IP4 198.51.100.10\r\ns=-\r\nc=IN IP4 198.51.100.10\r\nt=0 0\r\n\
m=audio 161 RTP/AVP 0\r\na=rtcp:5405 IN IP4 192.0.2.1\r\n"
        .to_owned()
}

#[test]
fn a_hostile_or_malformed_offer_gets_488_and_opens_nothing() {
    let many = format!(
        "v=0\r\no=- 1 1 IN IP4 203.0.113.10\r\ns=-\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\n{}",
        "m=audio 40000 RTP/AVP 0\r\n".repeat(1000)
    );
    for (i, body) in [
        hostile_offer(),
        sdp("999.1.1.1", 40000),
        sdp("203.0.113.10", 161),
        sdp("203.0.113.99", 40000),
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\nm=audio 70000 RTP/AVP 0\r\n".to_owned(),
        many,
    ]
    .into_iter()
    .enumerate()
    {
        let mut lab = Lab::new();
        let mut inv = Invite::new(&format!("hostile-{i}@x"));
        inv.sdp = Some(body);
        lab.at(1_000);
        let out = lab.carrier_says(&inv.bytes());
        let r = out.response_to(carrier().addr);
        assert_eq!(r.status(), Some(488), "{i}: {out:#?}");
        let w = r.raw_header("Warning").unwrap_or_default();
        assert!(w.starts_with("305 203.0.113.1:5060 \""), "{i}: {w}");
        assert!(out.requests_to(pbx1().addr, "INVITE").is_empty(), "{i}: relayed");
        assert!(out.pinholes().is_empty(), "{i}");
        let (_, c, ended) = out.record();
        assert!(ended);
        assert_eq!((c.disposition, c.final_code), (Disposition::Rejected, 488));
        assert_eq!(lab.proxy.stats().refused_media, 1);
        assert_eq!(lab.proxy.call_count(), 0);
    }
}

#[test]
fn a_hostile_answer_never_reaches_the_caller_and_the_callee_is_released() {
    let mut lab = Lab::new();
    let inv = Invite::new("bad-answer@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    // The PBX answers with media on a port the config does not allow.
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "p", Some(161)));
    let up = out.response_to(carrier().addr);
    assert_eq!(up.status(), Some(488), "{out:#?}");
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1, "{out:#?}");
    assert!(out.pinholes().is_empty());
    let (_, c, ended) = out.record();
    assert!(ended);
    assert_eq!((c.disposition, c.final_code), (Disposition::Failed, 488));
    assert_eq!(lab.proxy.stats().calls_answered, 0);
    // Its retransmission is ACKed again, nothing more.
    lab.at(1_600);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "p", Some(161)));
    assert_eq!(out.requests_to(pbx1().addr, "ACK").len(), 1, "{out:#?}");
    assert!(out.requests_to(pbx1().addr, "BYE").is_empty());
    assert!(out.sent_to(carrier().addr).is_empty());
}

#[test]
fn hostile_early_media_cancels_the_call() {
    let mut lab = Lab::new();
    let inv = Invite::new("bad-early@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    // Early media naming an address outside the private media ranges.
    let mut reply = String::from_utf8(pbx_reply(&fwd, 183, "p", Some(30000))).unwrap();
    reply = reply.replace("c=IN IP4 198.51.100.10", "c=IN IP4 198.51.100.99");
    let out = lab.pbx_says(pbx1(), reply.as_bytes());
    assert_eq!(
        out.response_to(carrier().addr).status(),
        Some(488),
        "{out:#?}"
    );
    assert_eq!(out.requests_to(pbx1().addr, "CANCEL").len(), 1, "{out:#?}");
    assert!(out.pinholes().is_empty());
    let (_, c, _) = out.record();
    assert_eq!((c.disposition, c.final_code), (Disposition::Failed, 488));
}

#[test]
fn a_hostile_reinvite_offer_gets_488_and_the_call_keeps_its_media() {
    let mut lab = Lab::new();
    let a = answer_call(&mut lab, Invite::new("bad-re@x"), carrier(), pbx1(), 1_000);
    lab.at(10_000);
    let out = lab.carrier_says(&a.dialog.request(
        "INVITE",
        "z9hG4bK-bad-re-1",
        2,
        Some(&hostile_offer()),
    ));
    assert_eq!(
        out.response_to(carrier().addr).status(),
        Some(488),
        "{out:#?}"
    );
    assert!(out.requests_to(pbx1().addr, "INVITE").is_empty());
    assert!(out.pinholes().is_empty());
    assert_eq!(lab.proxy.call_count(), 1);
    assert_eq!(
        lab.proxy.active_calls()[0].pinholes,
        4,
        "the old media stays"
    );
}

#[test]
fn pinholes_admit_only_the_other_partys_signalled_address() {
    let mut lab = Lab::new();
    let inv = Invite::new("bound@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "p", Some(30000)));
    let got: BTreeSet<(String, SocketAddr)> = out
        .0
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
        .collect();
    let want: BTreeSet<(String, SocketAddr)> = [
        ("198.51.100.10/32", "203.0.113.10:40000"),
        ("198.51.100.10/32", "203.0.113.10:40001"),
        ("203.0.113.10/32", "198.51.100.10:30000"),
        ("203.0.113.10/32", "198.51.100.10:30001"),
    ]
    .into_iter()
    .map(|(s, d)| (s.to_owned(), sa(d)))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn a_carrier_media_pool_is_the_source_toward_the_pbx() {
    let mut lab = Lab::with(Opts {
        carrier_extra: "media = [\"203.0.113.0/28\"]\nmedia_sources = [\"203.0.113.32/28\"]",
        ..Opts::default()
    });
    let mut inv = Invite::new("pool@x");
    inv.sdp = Some(sdp("203.0.113.12", 40000));
    let a_fwd = {
        lab.at(1_000);
        let out = lab.carrier_says(&inv.bytes());
        out.requests_to(pbx1().addr, "INVITE").pop().unwrap()
    };
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&a_fwd, 200, "p", Some(30000)));
    let srcs: BTreeSet<(String, u16)> = out
        .0
        .iter()
        .filter_map(|o| match o {
            Output::Pinhole {
                open: true,
                src,
                dst,
                ..
            } => Some((src.to_string(), dst.port())),
            _ => None,
        })
        .collect();
    assert!(
        srcs.contains(&("203.0.113.32/28".to_owned(), 30000)),
        "{srcs:?}"
    );
    assert!(
        srcs.contains(&("198.51.100.10/32".to_owned(), 40000)),
        "{srcs:?}"
    );
    assert_eq!(srcs.len(), 4);
}

#[test]
fn forged_responses_from_elsewhere_are_dropped_and_counted() {
    let mut lab = Lab::new();
    let inv = Invite::new("forged@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    // An attacker who knows the branch forges 486 and 200 from another address, and from
    // the PBX's address but another port.
    lab.at(1_050);
    for (from, code) in [
        (udp("203.0.113.66:5060"), 486),
        (udp("203.0.113.66:5060"), 200),
        (udp("198.51.100.10:5099"), 486),
        (tcp("198.51.100.10:5060", 9), 200),
    ] {
        let out = lab.recv(from, lan(), &pbx_reply(&fwd, code, "evil", Some(30000)));
        assert!(out.sent_to(carrier().addr).is_empty(), "{code}: {out:#?}");
        assert!(out.pinholes().is_empty());
        assert!(out.records().is_empty());
    }
    assert_eq!(lab.proxy.stats().responses_wrong_source, 4);
    assert_eq!(lab.proxy.call_count(), 1);
    // The real answer still works.
    lab.at(1_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "p", Some(30000)));
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
}

#[test]
fn a_cancel_from_anyone_but_the_caller_is_refused() {
    let mut lab = Lab::new();
    let inv = Invite::new("cancel-forged@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    lab.pbx_says(pbx1(), &pbx_reply(&fwd, 180, "p", None));
    lab.at(1_200);
    let out = lab.recv(udp("203.0.113.66:5060"), wan(), &inv.cancel());
    assert_eq!(out.response_to(sa("203.0.113.66:5060")).status(), Some(403));
    assert!(out.requests_to(pbx1().addr, "CANCEL").is_empty());
    assert_eq!(lab.proxy.call_count(), 1);
    assert_eq!(lab.proxy.stats().refused_wrong_party, 1);
}

#[test]
fn scanners_are_dropped_even_from_a_carrier() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("scan@x");
    inv.extra.push("User-Agent: friendly-scanner".to_owned());
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    assert!(out.sends().is_empty(), "{out:#?}");
    assert_eq!(lab.proxy.stats().scanner_dropped, 1);
}

#[test]
fn the_per_source_dialog_cap_sheds_with_503_until_a_call_ends() {
    let mut lab = Lab::with(Opts {
        carrier_extra: "max_dialogs = 2",
        ..Opts::default()
    });
    let a = answer_call(&mut lab, Invite::new("cap-a@x"), carrier(), pbx1(), 1_000);
    answer_call(&mut lab, Invite::new("cap-b@x"), carrier(), pbx1(), 2_000);
    lab.at(3_000);
    let out = lab.carrier_says(&Invite::new("cap-c@x").bytes());
    let r = out.response_to(carrier().addr);
    assert_eq!(r.status(), Some(503));
    assert!(r.single(HeaderName::RetryAfter).is_some());
    assert_eq!(out.record().1.disposition, Disposition::Rejected);
    // A call ends: the next one is admitted.
    lab.at(4_000);
    lab.carrier_says(&a.dialog.request("BYE", "z9hG4bK-cap-a-bye", 2, None));
    lab.at(5_000);
    let out = lab.carrier_says(&Invite::new("cap-d@x").bytes());
    assert_eq!(out.requests_to(pbx1().addr, "INVITE").len(), 1, "{out:#?}");
}

#[test]
fn a_carrier_flood_is_rate_limited_but_never_blocked() {
    let mut lab = Lab::with(Opts {
        carrier_extra: "max_requests_per_sec = 50",
        ..Opts::default()
    });
    lab.at(1_000);
    let mut forwarded = 0;
    for i in 0..1000 {
        let out = lab.carrier_says(&Invite::new(&format!("flood-{i}@x")).bytes());
        assert!(!out.0.iter().any(|o| matches!(o, Output::Block { .. })));
        forwarded += out.requests_to(pbx1().addr, "INVITE").len();
    }
    // Burst 2 x 50 at one instant.
    assert_eq!(forwarded, 100);
    assert_eq!(lab.proxy.stats().sources_blocked, 0);
    assert_eq!(lab.proxy.stats().flood_dropped, 900);
}

#[test]
fn cseq_at_the_top_of_the_range_gets_a_clean_400() {
    let mut lab = Lab::new();
    let mut inv = Invite::new("cseq-max@x");
    inv.cseq = u32::MAX;
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    assert_eq!(out.response_to(carrier().addr).status(), Some(400));
    // In a dialog too, and the maximum-length BYE of a call with a high CSeq does not wrap.
    let mut lab = Lab::with(Opts {
        max_call: 60,
        ..Opts::default()
    });
    let mut inv = Invite::new("cseq-high@x");
    inv.cseq = (1 << 31) - 1;
    let a = answer_call(&mut lab, inv, carrier(), pbx1(), 1_000);
    lab.at(2_000);
    let out = lab.carrier_says(&a.dialog.request("INFO", "z9hG4bK-hi", u32::MAX, None));
    assert_eq!(out.response_to(carrier().addr).status(), Some(400));
    lab.at(62_000);
    let out = lab.tick();
    let byes = out.requests_to(pbx1().addr, "BYE");
    assert_eq!(byes.len(), 1, "{out:#?}");
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

#[test]
fn branches_and_tags_cannot_be_predicted_from_earlier_ones() {
    let mut lab = Lab::new();
    // 10,000 requests that each get a tag (404) and branches of our own (probes, calls).
    let mut values: Vec<u64> = Vec::new();
    for i in 0..10_000u64 {
        lab.at(1_000 + i);
        let mut inv = Invite::new(&format!("rand-{i}@x"));
        inv.to_user = "+15559999999".to_owned();
        inv.ruri = "sip:+15559999999@203.0.113.1".to_owned();
        let out = lab.carrier_says(&inv.bytes());
        for s in out.sends() {
            if let Some(t) = s.to_tag() {
                if let Some(h) = t.strip_prefix("cg") {
                    values.push(u64::from_str_radix(h, 16).unwrap());
                }
            }
        }
    }
    assert_eq!(values.len(), 10_000);
    // The attacker's first guess: the generator this proxy used to have.
    let hits = values
        .windows(2)
        .filter(|w| xorshift_predict(w[0]) == w[1])
        .count();
    assert_eq!(hits, 0);
    // A linear guess (constant step) and repeats.
    let steps = values
        .windows(3)
        .filter(|w| w[1].wrapping_sub(w[0]) == w[2].wrapping_sub(w[1]))
        .count();
    assert_eq!(steps, 0);
    let mut sorted = values.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), values.len());
    // Each bit is set in about half of them (binomial, 10,000 draws: 6 sigma is 300).
    for bit in 0..64 {
        let ones = values.iter().filter(|v| *v >> bit & 1 == 1).count();
        assert!((4_700..=5_300).contains(&ones), "bit {bit}: {ones}");
    }
}

#[test]
fn the_2xx_reaches_the_caller_only_once_its_record_is_durable() {
    let mut lab = Lab::new();
    lab.store_at_once = false;
    let inv = Invite::new("held@x");
    lab.at(1_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(1_100);
    let ok = pbx_reply(&fwd, 200, "p", Some(30000));
    let out = lab.pbx_says(pbx1(), &ok);
    let (seq, _, ended) = out.record();
    assert!(!ended);
    assert!(out.sent_to(carrier().addr).is_empty(), "held: {out:#?}");
    // A retransmission of the 2xx meanwhile is held back too.
    lab.at(1_150);
    let out = lab.pbx_says(pbx1(), &ok);
    assert!(out.sent_to(carrier().addr).is_empty(), "{out:#?}");
    // Durable: the 2xx goes up, once.
    let mut raw = Vec::new();
    lab.proxy
        .on_record_stored(now_at(1_160), seq, true, &mut raw);
    let out = Out(raw);
    assert_eq!(out.response_to(carrier().addr).status(), Some(200));
    let mut raw = Vec::new();
    lab.proxy
        .on_record_stored(now_at(1_170), seq, true, &mut raw);
    assert!(raw.is_empty());

    // A record the store could not keep: the caller never gets the 2xx, the call ends.
    let inv = Invite::new("unstored@x");
    lab.at(2_000);
    let out = lab.carrier_says(&inv.bytes());
    let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
    lab.at(2_100);
    let out = lab.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "q", Some(30002)));
    let (seq, _, _) = out.record();
    let mut raw = Vec::new();
    lab.proxy
        .on_record_stored(now_at(2_110), seq, false, &mut raw);
    let out = Out(raw);
    assert!(out
        .sent_to(carrier().addr)
        .iter()
        .all(|s| s.status().is_none()));
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1, "{out:#?}");
    assert!(out.records()[0].2, "the final record is attempted");
    assert_eq!(lab.proxy.call_count(), 1, "the first call goes on");
}

#[test]
fn a_restarted_proxy_carries_on_calls_from_their_records() {
    // The first daemon: an answered call; its answer-time record carries what resumes it.
    let mut first = Lab::with(Opts {
        max_call: 60,
        ..Opts::default()
    });
    let mut records = Vec::new();
    let a = {
        first.at(1_000);
        let inv = Invite::new("resume-a@x");
        let out = first.carrier_says(&inv.bytes());
        let fwd = out.requests_to(pbx1().addr, "INVITE").pop().unwrap();
        first.at(1_200);
        let out = first.pbx_says(pbx1(), &pbx_reply(&fwd, 200, "pa", Some(30000)));
        let ok_up = out.response_to(carrier().addr);
        records.push(out.record().1);
        CallerDialog::new(&inv, &ok_up)
    };
    drop(first);
    let a_rec = records.remove(0);
    assert!(a_rec.resume.is_some(), "{a_rec:?}");
    assert_eq!(a_rec.resume.as_ref().unwrap().from_tag, "ftag-caller");

    // The restarted daemon, 3 s later by the wall clock.
    let mut lab = Lab::with(Opts {
        max_call: 60,
        ..Opts::default()
    });
    lab.at(3_000);
    let mut raw = Vec::new();
    let seq = lab
        .proxy
        .resume(now_at(3_000), &a_rec, &mut raw)
        .expect("resumed");
    let out = Out(raw);
    assert_eq!(
        out.opened(),
        addrs(&[
            "203.0.113.10:40000",
            "203.0.113.10:40001",
            "198.51.100.10:30000",
            "198.51.100.10:30001"
        ]),
        "pinholes renewed: {out:#?}"
    );
    assert_eq!(lab.proxy.call_count(), 1);
    assert_eq!(
        lab.proxy.resume(now_at(3_000), &a_rec, &mut Vec::new()),
        None,
        "once"
    );
    // A BYE from anyone else is refused; the caller's BYE is relayed and completes it.
    lab.at(4_000);
    let forged = a.request("BYE", "z9hG4bK-forged-bye", 2, None);
    let out = lab.recv(udp("203.0.113.66:5060"), wan(), &forged);
    let bye = a.request("BYE", "z9hG4bK-resume-a-bye", 2, None);
    assert_eq!(out.response_to(sa("203.0.113.66:5060")).status(), Some(403));
    let out = lab.carrier_says(&bye);
    assert_eq!(out.requests_to(pbx1().addr, "BYE").len(), 1, "{out:#?}");
    let (s, c, ended) = out.record();
    assert_eq!(s, seq);
    assert!(ended);
    assert_eq!(c.end_at, Some(UNIX0 + 4_000));
    assert_eq!(c.duration_ms, 4_000 - 1_200);
    assert_eq!(c.caller, Pii::new(CALLER_NUMBER));
    assert_eq!(c.resume, None);
    assert_eq!(out.closed().len(), 4);
    assert_eq!(lab.proxy.call_count(), 0);

    // A resumed call nobody hangs up ends at the maximum length counted from its answer.
    let mut lab = Lab::with(Opts {
        max_call: 60,
        ..Opts::default()
    });
    lab.at(10_000);
    let seq = lab
        .proxy
        .resume(now_at(10_000), &a_rec, &mut Vec::new())
        .unwrap();
    lab.at(1_200 + 60_000 - 1);
    assert!(lab.tick().records().is_empty());
    lab.at(1_200 + 60_000);
    let out = lab.tick();
    let (s, c, ended) = out.record();
    assert_eq!((s, ended), (seq, true));
    assert_eq!(c.end_at, Some(UNIX0 + 61_200));
    assert_eq!(out.closed().len(), 4);
}
