//! Messages the proxy writes itself: responses, the hop-by-hop ACK and CANCEL of a client
//! INVITE transaction (RFC 3261 §17.1.1.3, §9.1) and the BYE that ends an over-long call.

use std::fmt::Write as _;

use callgate_sip::{self as sip, Header, HeaderName, Message, StartLine};

/// A response to `req` with `code`, our `to_tag` (added when To has none and code > 100) and
/// extra headers. `None` if `req` lacks what a response copies (it is then dropped).
pub(crate) fn response(
    req: &Message<'_>,
    code: u16,
    to_tag: Option<&str>,
    extra: &[(&'static str, String)],
) -> Option<Vec<u8>> {
    let mut r = Message::response_to(req, code, None, to_tag).ok()?;
    for (name, value) in extra {
        r.push_header(Header::new(*name, value.clone()));
    }
    r.push_header(Header::new("Server", "callgate"));
    Some(r.serialize())
}

/// The request line's URI and the raw top Via value of a request we built.
fn first_via(req: &Message<'_>) -> Option<String> {
    req.values(HeaderName::Via)
        .ok()?
        .first()
        .map(|v| v.to_string())
}

fn request_uri<'m>(req: &'m Message<'_>) -> Option<&'m str> {
    match req.start_line() {
        StartLine::Request(r) => Some(&r.uri),
        StartLine::Response(_) => None,
    }
}

fn single<'m>(req: &'m Message<'_>, kind: HeaderName) -> Option<&'m str> {
    req.single(kind).ok().flatten()
}

fn push_routes(out: &mut String, req: &Message<'_>) {
    for h in req.headers_named(HeaderName::Route) {
        let _ = write!(out, "Route: {}\r\n", h.value);
    }
}

/// The ACK for a non-2xx final `response` to the INVITE `invite` we sent (§17.1.1.3): same
/// Request-URI, top Via, Route, From, Call-ID and CSeq number; To from the response.
pub(crate) fn ack_for(invite: &[u8], response: &Message<'_>) -> Option<Vec<u8>> {
    hop_by_hop("ACK", invite, Some(response))
}

/// The CANCEL of the INVITE `invite` we sent (§9.1): same Request-URI, top Via (so the same
/// branch), Route, From, To, Call-ID and CSeq number.
pub(crate) fn cancel_for(invite: &[u8]) -> Option<Vec<u8>> {
    hop_by_hop("CANCEL", invite, None)
}

/// A request of the INVITE client transaction itself (ACK, CANCEL): the INVITE's
/// Request-URI, top Via, Route, From, Call-ID and CSeq number, with the To of `to_from`
/// (the response) when given, else the INVITE's.
fn hop_by_hop(method: &str, invite: &[u8], to_from: Option<&Message<'_>>) -> Option<Vec<u8>> {
    let req = sip::parse(invite).ok()?;
    let uri = request_uri(&req)?;
    let via = first_via(&req)?;
    let from = single(&req, HeaderName::From)?;
    let to = single(to_from.unwrap_or(&req), HeaderName::To)?;
    let call_id = single(&req, HeaderName::CallId)?;
    let seq = req.cseq().ok()?.seq;
    let mut s = String::with_capacity(512);
    let _ = write!(s, "{method} {uri} SIP/2.0\r\nVia: {via}\r\n");
    push_routes(&mut s, &req);
    let _ = write!(
        s,
        "Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n"
    );
    Some(s.into_bytes())
}

/// What a BYE we originate toward one party of a dialog needs.
#[derive(Debug, Clone)]
pub(crate) struct ByeSpec<'a> {
    /// The party's Contact URI (the Request-URI).
    pub target: &'a str,
    /// Route set toward the party (URIs, in order).
    pub route: &'a [String],
    /// Our Via value (with a fresh branch).
    pub via: &'a str,
    /// From: the other party's header value (with its tag).
    pub from: &'a str,
    /// To: this party's header value (with its tag).
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
}

/// A BYE ending a call on the proxy's own behalf (maximum call length reached, or a callee
/// that answered after the call was given up).
pub(crate) fn bye(spec: &ByeSpec<'_>, reason: &str) -> Vec<u8> {
    in_dialog("BYE", spec, reason)
}

/// The ACK of a 2xx the proxy has to take itself (the caller is gone).
pub(crate) fn ack_2xx(spec: &ByeSpec<'_>) -> Vec<u8> {
    in_dialog("ACK", spec, "")
}

fn in_dialog(method: &str, spec: &ByeSpec<'_>, reason: &str) -> Vec<u8> {
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "{method} {} SIP/2.0\r\nVia: {}\r\n",
        spec.target, spec.via
    );
    if !spec.route.is_empty() {
        let _ = write!(s, "Route: ");
        for (i, r) in spec.route.iter().enumerate() {
            let _ = write!(s, "{}<{r}>", if i == 0 { "" } else { ", " });
        }
        s.push_str("\r\n");
    }
    let _ = write!(
        s,
        "Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n",
        spec.from, spec.to, spec.call_id, spec.cseq
    );
    if !reason.is_empty() {
        let _ = write!(s, "Reason: SIP;cause=200;text=\"{reason}\"\r\n");
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s.into_bytes()
}

/// An OPTIONS health probe to `target` from our `via`.
pub(crate) fn options_probe(target: &str, via: &str, from_host: &str, n: u64) -> Vec<u8> {
    format!(
        "OPTIONS {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:callgate@{from_host}>;tag=probe{n}\r\nTo: <{target}>\r\nCall-ID: probe-{n}@{from_host}\r\nCSeq: 1 OPTIONS\r\nUser-Agent: callgate\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}
