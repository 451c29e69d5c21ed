//! The SIP message: framing, start line, headers, body; serialization and the
//! edits a proxy makes.

use std::borrow::Cow;

use crate::error::{ErrorKind, ParseError, Result};
use crate::header::{
    check_sip_date, name_addr_uri, parse_cseq, parse_media_type, parse_name_addr, parse_tag,
    parse_via, token_items, CSeq, HeaderName, NameAddr, Via,
};
use crate::syntax::{is_token, parse_digits, split_once_byte, split_top, trim_lws};
use crate::uri::{parse_uri, Uri};
use crate::Limits;

/// How the bytes arrived: decides what a missing or short Content-Length means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One UDP datagram: no Content-Length means "the rest"; a Content-Length
    /// larger than the rest is an error (RFC 3261 §18.3); bytes past it are ignored.
    Datagram,
    /// A stream (TCP/TLS): Content-Length is required; missing bytes give
    /// [`ErrorKind::Incomplete`].
    Stream,
}

/// The request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine<'a> {
    /// Method as written (case-sensitive token).
    pub method: Cow<'a, str>,
    /// Request-URI as written; [`Message::request_uri`] parses it.
    pub uri: Cow<'a, str>,
}

/// The status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine<'a> {
    /// Status code, 100..=699.
    pub code: u16,
    /// Reason phrase (may be empty).
    pub reason: Cow<'a, str>,
}

/// Request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// A request.
    Request(RequestLine<'a>),
    /// A response.
    Response(StatusLine<'a>),
}

/// One header line (possibly folded), as written unless edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    /// Name as written (`v`, `Via`, `VIA`...).
    pub name: Cow<'a, str>,
    /// Classified name.
    pub kind: HeaderName,
    /// Value with surrounding LWS trimmed; folds (CRLF + WSP) are kept verbatim
    /// and count as LWS for every typed parser.
    pub value: Cow<'a, str>,
    /// The exact bytes of the line(s) incl. the final line end; `None` once edited.
    raw: Option<&'a str>,
}

impl<'a> Header<'a> {
    /// A new header (serialized as `Name: value\r\n`).
    pub fn new(name: impl Into<Cow<'a, str>>, value: impl Into<Cow<'a, str>>) -> Self {
        let name = name.into();
        Header {
            kind: HeaderName::from_wire(&name),
            name,
            value: value.into(),
            raw: None,
        }
    }

    /// The value split at top-level commas (for list headers).
    pub fn values(&self) -> Result<Vec<&str>> {
        self.each_value().collect()
    }

    /// [`Header::values`] lazily: no allocation. A non-list header has one value.
    pub fn each_value(&self) -> impl Iterator<Item = Result<&str>> {
        let (list, single) = if self.kind.is_list() {
            (Some(split_top(&self.value, b',')), None)
        } else {
            (None, Some(Ok(trim_lws(&self.value))))
        };
        list.into_iter()
            .flatten()
            .map(|v| v.map(trim_lws))
            .chain(single)
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        match self.raw {
            Some(raw) => out.extend_from_slice(raw.as_bytes()),
            None => {
                out.extend_from_slice(self.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(self.value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// A parsed SIP message borrowing from the input bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// CRLFs before the start line (RFC 3261 §7.5 says ignore them); kept for
    /// byte-exact output.
    preamble: &'a str,
    /// Request or status line.
    start: StartLine<'a>,
    start_raw: Option<&'a str>,
    /// What parsing found in a request's Request-URI (`None` for a response). Every way
    /// to a request's start line parses its URI ([`parse_start_line`],
    /// [`Message::set_request_uri`]), so the checks after parsing read this instead of
    /// parsing the URI again.
    uri_facts: Option<UriFacts>,
    headers: Vec<Header<'a>>,
    /// The empty line ending the header section.
    blank: &'a str,
    body: Cow<'a, [u8]>,
}

/// The kind of a parsed Request-URI and whether it carries URI headers (`?...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UriFacts {
    pub(crate) kind: UriKind,
    pub(crate) headers: bool,
}

/// [`Uri`]'s variant, without the parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UriKind {
    Sip,
    Tel,
    Absolute,
}

impl UriFacts {
    fn of(uri: &Uri<'_>) -> UriFacts {
        match uri {
            Uri::Sip(u) => UriFacts {
                kind: UriKind::Sip,
                headers: !u.headers.is_empty(),
            },
            Uri::Tel(_) => UriFacts {
                kind: UriKind::Tel,
                headers: false,
            },
            Uri::Absolute(_) => UriFacts {
                kind: UriKind::Absolute,
                headers: false,
            },
        }
    }
}

/// Methods RFC 3261 and its common extensions define.
pub const KNOWN_METHODS: &[&str] = &[
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "REFER",
    "MESSAGE",
    "UPDATE",
];

/// Default reason phrase for a status code.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        _ => match code / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// Parses one datagram with default [`Limits`].
pub fn parse(bytes: &[u8]) -> Result<Message<'_>> {
    parse_with(bytes, &Limits::default(), Framing::Datagram).map(|(m, _)| m)
}

/// Parses a message; returns it and the number of bytes it used (for streams,
/// the next message starts there).
pub fn parse_with<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    framing: Framing,
) -> Result<(Message<'a>, usize)> {
    if bytes.len() > limits.max_message && framing == Framing::Datagram {
        return Err(ParseError::new(
            ErrorKind::TooLarge,
            "message exceeds limit",
        ));
    }
    // Preamble: CRLFs before the start line.
    let pre_len = bytes
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    // The head ends at the first empty line.
    if pre_len > limits.max_message {
        return Err(ParseError::new(
            ErrorKind::TooLarge,
            "message exceeds limit",
        ));
    }
    let mut pos = pre_len;
    // (start, content_end, next); a typical message has 10 to 20 lines: on the stack.
    let mut lines = smallvec::SmallVec::<[(usize, usize, usize); 32]>::new();
    // One walk over the head from each CR or LF to the next: a CR before an LF ends its
    // line with it; any other CR is a bare one, noted by the index of its line (the first
    // such line) and refused below where a line-by-line check would have refused it.
    let mut bare_cr: Option<usize> = None;
    let mut at = pos;
    let head_end;
    loop {
        let Some(off) = bytes
            .get(at..)
            .and_then(|r| memchr::memchr2(b'\r', b'\n', r))
        else {
            if bytes.len().saturating_sub(pre_len) > limits.max_message {
                return Err(ParseError::new(
                    ErrorKind::TooLarge,
                    "header section exceeds limit",
                ));
            }
            return Err(ParseError::new(
                if framing == Framing::Stream {
                    ErrorKind::Incomplete
                } else {
                    ErrorKind::Malformed
                },
                "header section not terminated",
            ));
        };
        let hit = at + off;
        let (content_end, next) = if bytes.get(hit) == Some(&b'\n') {
            (hit, hit + 1)
        } else if bytes.get(hit + 1) == Some(&b'\n') {
            (hit, hit + 2)
        } else {
            bare_cr.get_or_insert(lines.len());
            at = hit + 1;
            continue;
        };
        if content_end == pos {
            head_end = (pos, next);
            break;
        }
        if next - pre_len > limits.max_message {
            return Err(ParseError::new(
                ErrorKind::TooLarge,
                "header section exceeds limit",
            ));
        }
        lines.push((pos, content_end, next));
        pos = next;
        at = next;
    }
    let (blank_start, body_start) = head_end;
    let head = std::str::from_utf8(bytes.get(..body_start).unwrap_or_default())
        .map_err(|_| ParseError::malformed("header section is not UTF-8"))?;
    let text = |a: usize, b: usize| head.get(a..b).unwrap_or("");
    let preamble = text(0, pre_len);
    let blank = text(blank_start, body_start);

    let mut iter = lines.iter();
    let &(s0, e0, n0) = iter.next().ok_or(ParseError::malformed("empty message"))?;
    let start_line = text(s0, e0);
    if bare_cr == Some(0) {
        return Err(ParseError::malformed("bare CR in start line"));
    }
    let (start, uri_facts) = parse_start_line(start_line)?;
    let start_raw = Some(text(s0, n0));

    // Headers, joining folded continuation lines.
    // Typical requests carry 10 to 20 headers: one allocation instead of four, with room
    // for what a proxy adds (its Via, a Record-Route, Max-Forwards) without moving them all.
    let mut headers: Vec<Header<'a>> = Vec::with_capacity(lines.len().clamp(8, 32) + 3);
    let mut cur: Option<(usize, usize, usize)> = None; // (start, content_end, next)
    let flush = |cur: (usize, usize, usize), headers: &mut Vec<Header<'a>>| -> Result<()> {
        let (s, e, n) = cur;
        if n - s > limits.max_header_len {
            return Err(ParseError::new(
                ErrorKind::TooLarge,
                "header line exceeds limit",
            ));
        }
        if headers.len() >= limits.max_headers {
            return Err(ParseError::new(ErrorKind::TooLarge, "too many headers"));
        }
        let line = text(s, e);
        let (name, value) =
            split_once_byte(line, b':').ok_or(ParseError::malformed("header line without ':'"))?;
        let name = name
            .get(
                ..name
                    .bytes()
                    .rposition(|b| b != b' ' && b != b'\t')
                    .map_or(0, |i| i + 1),
            )
            .unwrap_or("");
        if !is_token(name) {
            return Err(ParseError::malformed("bad header name"));
        }
        headers.push(Header {
            name: Cow::Borrowed(name),
            kind: HeaderName::from_wire(name),
            value: Cow::Borrowed(trim_lws(value)),
            raw: Some(text(s, n)),
        });
        Ok(())
    };
    for (k, &(s, e, n)) in iter.enumerate() {
        // `k + 1`: the line's index (the start line is 0).
        if bare_cr == Some(k + 1) {
            return Err(ParseError::malformed("bare CR in header"));
        }
        if matches!(bytes.get(s), Some(b' ' | b'\t')) {
            match cur.as_mut() {
                Some(c) => {
                    c.1 = e;
                    c.2 = n;
                }
                None => return Err(ParseError::malformed("continuation line without header")),
            }
        } else {
            if let Some(c) = cur.take() {
                flush(c, &mut headers)?;
            }
            cur = Some((s, e, n));
        }
    }
    if let Some(c) = cur.take() {
        flush(c, &mut headers)?;
    }

    // Body and Content-Length.
    let mut cls = headers
        .iter()
        .filter(|h| h.kind == HeaderName::ContentLength);
    let cl = match (cls.next(), cls.next()) {
        (Some(_), Some(_)) => return Err(ParseError::malformed("multiple Content-Length")),
        (Some(h), None) => Some(
            parse_digits::<usize>(trim_lws(&h.value))?
                .ok_or(ParseError::malformed("Content-Length too large"))?,
        ),
        (None, None) | (None, Some(_)) => None,
    };
    let available = bytes.len() - body_start;
    let body_len = match (cl, framing) {
        (Some(n), _) if n > limits.max_body => {
            return Err(ParseError::new(
                ErrorKind::BodyTooLarge,
                "body exceeds limit",
            ))
        }
        (Some(n), Framing::Datagram) if n > available => {
            return Err(ParseError::malformed("Content-Length exceeds datagram"))
        }
        (Some(n), Framing::Stream) if n > available => {
            return Err(ParseError::new(ErrorKind::Incomplete, "body incomplete"))
        }
        (Some(n), _) => n,
        (None, Framing::Datagram) => available,
        (None, Framing::Stream) => {
            return Err(ParseError::malformed("Content-Length required on streams"))
        }
    };
    if body_len > limits.max_body {
        return Err(ParseError::new(
            ErrorKind::BodyTooLarge,
            "body exceeds limit",
        ));
    }
    let used = body_start + body_len;
    let body = bytes.get(body_start..used).unwrap_or_default();
    Ok((
        Message {
            preamble,
            start,
            start_raw,
            uri_facts,
            headers,
            blank,
            body: Cow::Borrowed(body),
        },
        used,
    ))
}

fn parse_version(v: &str) -> Result<()> {
    if v == "SIP/2.0" {
        return Ok(());
    }
    let looks_like = v.len() > 4
        && v.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
        && v.get(4..).is_some_and(|r| {
            r.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit())
            })
        });
    if looks_like {
        if v.get(4..).is_some_and(|r| r == "2.0") {
            return Ok(()); // "sip/2.0": case-insensitive per RFC 3261 §7.1
        }
        Err(ParseError::new(
            ErrorKind::BadVersion,
            "unsupported SIP version",
        ))
    } else {
        Err(ParseError::malformed("bad SIP version"))
    }
}

fn parse_start_line(line: &str) -> Result<(StartLine<'_>, Option<UriFacts>)> {
    if line.starts_with("SIP/") || line.starts_with("sip/") {
        // `SIP/2.0 code reason`: the reason may hold spaces.
        let (version, rest) =
            split_once_byte(line, b' ').map_or((line, None), |(v, r)| (v, Some(r)));
        parse_version(version)?;
        let (code, reason) = rest.map_or(("", ""), |r| split_once_byte(r, b' ').unwrap_or((r, "")));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::malformed("status code must be 3 digits"));
        }
        let code: u16 = code
            .parse()
            .map_err(|_| ParseError::malformed("bad status code"))?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::malformed("status code out of range"));
        }
        if reason.bytes().any(|b| b < 0x20 && b != b'\t') {
            return Err(ParseError::malformed("control character in reason phrase"));
        }
        let status = StatusLine {
            code,
            reason: Cow::Borrowed(reason),
        };
        return Ok((StartLine::Response(status), None));
    }
    let (method, rest) = split_once_byte(line, b' ')
        .ok_or(ParseError::malformed("request line needs three elements"))?;
    let last = rest
        .bytes()
        .rposition(|b| b == b' ')
        .ok_or(ParseError::malformed("request line needs three elements"))?;
    let (uri, version) = (
        rest.get(..last).unwrap_or(""),
        rest.get(last + 1..).unwrap_or(""),
    );
    if !is_token(method) {
        return Err(ParseError::malformed("bad method"));
    }
    if uri.is_empty() || uri.bytes().any(|b| b == b' ' || b == b'\t') || version.is_empty() {
        return Err(ParseError::malformed("extra whitespace in request line"));
    }
    parse_version(version)?;
    let facts = UriFacts::of(&parse_uri(uri)?);
    let request = RequestLine {
        method: Cow::Borrowed(method),
        uri: Cow::Borrowed(uri),
    };
    Ok((StartLine::Request(request), Some(facts)))
}

impl<'a> Message<'a> {
    /// The start line.
    pub fn start_line(&self) -> &StartLine<'a> {
        &self.start
    }

    /// Is this a request?
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request(_))
    }

    /// The request method, for requests.
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request(r) => Some(&r.method),
            StartLine::Response(_) => None,
        }
    }

    /// The status code, for responses.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response(s) => Some(s.code),
            StartLine::Request(_) => None,
        }
    }

    /// The parsed Request-URI, for requests.
    pub fn request_uri(&self) -> Option<Result<Uri<'_>>> {
        match &self.start {
            StartLine::Request(r) => Some(parse_uri(&r.uri)),
            StartLine::Response(_) => None,
        }
    }

    /// What parsing found in the Request-URI, for requests ([`UriFacts`]).
    pub(crate) fn request_uri_facts(&self) -> Result<UriFacts> {
        self.uri_facts
            .ok_or(ParseError::malformed("a response has no Request-URI"))
    }

    /// Replaces the Request-URI (e.g. after a routing decision).
    pub fn set_request_uri(&mut self, uri: impl Into<Cow<'a, str>>) -> Result<()> {
        let uri = uri.into();
        let facts = UriFacts::of(&parse_uri(&uri)?);
        if let StartLine::Request(r) = &mut self.start {
            r.uri = uri;
            self.start_raw = None;
            self.uri_facts = Some(facts);
        }
        Ok(())
    }

    /// All headers in order.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers
    }

    /// The body (exactly Content-Length bytes).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Headers of one kind, in order.
    pub fn headers_named(&self, kind: HeaderName) -> impl Iterator<Item = &Header<'a>> + '_ {
        self.headers.iter().filter(move |h| h.kind == kind)
    }

    /// All values of a list header (split at commas), across header lines, in order.
    pub fn values(&self, kind: HeaderName) -> Result<Vec<&str>> {
        self.each_value(kind).collect()
    }

    /// [`Message::values`] lazily: no allocation.
    pub fn each_value(&self, kind: HeaderName) -> impl Iterator<Item = Result<&str>> {
        self.headers_named(kind).flat_map(Header::each_value)
    }

    /// The value of a single-valued header; error if it appears more than once.
    pub fn single(&self, kind: HeaderName) -> Result<Option<&str>> {
        let mut it = self.headers_named(kind);
        match (it.next(), it.next()) {
            (Some(_), Some(_)) => Err(ParseError::malformed("single-valued header repeated")),
            (Some(h), None) => Ok(Some(trim_lws(&h.value))),
            _ => Ok(None),
        }
    }

    fn required(&self, kind: HeaderName) -> Result<&str> {
        self.single(kind)?
            .ok_or(ParseError::malformed("mandatory header missing"))
    }

    /// All Via values, top first.
    pub fn vias(&self) -> Result<Vec<Via<'_>>> {
        self.each_value(HeaderName::Via)
            .map(|v| v.and_then(parse_via))
            .collect()
    }

    /// The top Via.
    pub fn top_via(&self) -> Result<Via<'_>> {
        let first = self
            .headers_named(HeaderName::Via)
            .next()
            .ok_or(ParseError::malformed("no Via"))?;
        // The whole first line must split (as `vias` would), its first value is the top.
        let mut values = first.each_value();
        let top = values.next().transpose()?.unwrap_or("");
        for v in values {
            v?;
        }
        parse_via(top)
    }

    /// From.
    pub fn from(&self) -> Result<NameAddr<'_>> {
        parse_name_addr(self.required(HeaderName::From)?)
    }

    /// From's `tag`, without parsing its URI ([`crate::header::parse_tag`]).
    pub fn from_tag(&self) -> Result<Option<&str>> {
        parse_tag(self.required(HeaderName::From)?)
    }

    /// To's `tag`, without parsing its URI ([`crate::header::parse_tag`]).
    pub fn to_tag(&self) -> Result<Option<&str>> {
        parse_tag(self.required(HeaderName::To)?)
    }

    /// To.
    pub fn to(&self) -> Result<NameAddr<'_>> {
        parse_name_addr(self.required(HeaderName::To)?)
    }

    /// Call-ID (`word ["@" word]`, no whitespace).
    pub fn call_id(&self) -> Result<&str> {
        let v = self.required(HeaderName::CallId)?;
        if v.is_empty() || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ParseError::malformed("bad Call-ID"));
        }
        Ok(v)
    }

    /// CSeq.
    pub fn cseq(&self) -> Result<CSeq<'_>> {
        parse_cseq(self.required(HeaderName::CSeq)?)
    }

    /// Max-Forwards, if present.
    pub fn max_forwards(&self) -> Result<Option<u8>> {
        match self.single(HeaderName::MaxForwards)? {
            None => Ok(None),
            Some(v) => parse_digits::<u8>(v)?
                .map(Some)
                .ok_or(ParseError::malformed("Max-Forwards above 255")),
        }
    }

    fn name_addrs(&self, kind: HeaderName) -> Result<Vec<NameAddr<'_>>> {
        self.each_value(kind)
            .map(|v| v.and_then(parse_name_addr))
            .collect()
    }

    /// Route values, top first (must be `<...>` name-addrs).
    pub fn routes(&self) -> Result<Vec<NameAddr<'_>>> {
        let r = self.name_addrs(HeaderName::Route)?;
        if r.iter().any(|n| !n.angle) {
            return Err(ParseError::malformed("Route must be name-addr"));
        }
        Ok(r)
    }

    /// Record-Route values, top first (must be `<...>` name-addrs).
    pub fn record_routes(&self) -> Result<Vec<NameAddr<'_>>> {
        let r = self.name_addrs(HeaderName::RecordRoute)?;
        if r.iter().any(|n| !n.angle) {
            return Err(ParseError::malformed("Record-Route must be name-addr"));
        }
        Ok(r)
    }

    /// Record-Route URIs as written, top first, without parsing them
    /// ([`crate::header::name_addr_uri`]: a validated message's, or parse each before use).
    /// A value not in `<>` is refused, as by [`Self::record_routes`].
    pub fn record_route_uris(&self) -> Result<Vec<&str>> {
        self.each_value(HeaderName::RecordRoute)
            .map(|v| match name_addr_uri(v?)? {
                (uri, true) => Ok(uri),
                (_, false) => Err(ParseError::malformed("Record-Route must be name-addr")),
            })
            .collect()
    }

    /// The first Contact's URI as written, without parsing it
    /// ([`crate::header::name_addr_uri`]: a validated message's, or parse it before use);
    /// `Ok(None)` without a Contact or for the wildcard `Contact: *`.
    pub fn first_contact_uri(&self) -> Result<Option<&str>> {
        let Some(v) = self.each_value(HeaderName::Contact).next().transpose()? else {
            return Ok(None);
        };
        if trim_lws(v) == "*" {
            return Ok(None);
        }
        Ok(Some(name_addr_uri(v)?.0))
    }

    /// Contact values; `Ok(None)` for the wildcard `Contact: *`.
    pub fn contacts(&self) -> Result<Option<Vec<NameAddr<'_>>>> {
        let values = self.values(HeaderName::Contact)?;
        if values.len() == 1 && values.first() == Some(&"*") {
            return Ok(None);
        }
        values
            .into_iter()
            .map(parse_name_addr)
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Content-Type's `type/subtype`, if present.
    pub fn content_type(&self) -> Result<Option<&str>> {
        self.single(HeaderName::ContentType)?
            .map(parse_media_type)
            .transpose()
    }

    /// Content-Length as written, if present.
    pub fn content_length(&self) -> Result<Option<usize>> {
        match self.single(HeaderName::ContentLength)? {
            None => Ok(None),
            Some(v) => parse_digits::<usize>(v)?
                .map(Some)
                .ok_or(ParseError::malformed("Content-Length too large")),
        }
    }

    /// Require option tags.
    pub fn require(&self) -> Result<Vec<&str>> {
        self.token_list(HeaderName::Require)
    }

    /// Proxy-Require option tags.
    pub fn proxy_require(&self) -> Result<Vec<&str>> {
        self.token_list(HeaderName::ProxyRequire)
    }

    /// Supported option tags.
    pub fn supported(&self) -> Result<Vec<&str>> {
        self.token_list(HeaderName::Supported)
    }

    fn token_list(&self, kind: HeaderName) -> Result<Vec<&str>> {
        self.headers_named(kind)
            .flat_map(|h| token_items(&h.value))
            .collect()
    }

    /// Expires in seconds; values above 2**32-1 saturate (RFC 3261 §20.19 only
    /// promises 32 bits; RFC 4475 §3.1.2.4 lets an element treat them as default).
    pub fn expires(&self) -> Result<Option<u32>> {
        match self.single(HeaderName::Expires)? {
            None => Ok(None),
            Some(v) => Ok(Some(parse_digits::<u32>(v)?.unwrap_or(u32::MAX))),
        }
    }

    /// Checks everything a proxy relies on: mandatory headers present once,
    /// every typed header parses, CSeq method matches, Request-URI carries no
    /// headers, Date is GMT, counts within `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        self.validate_with(limits, |_| {}, |_| {})
    }

    /// [`Self::validate`], handing each Via value it parses to `on_via` and each Route
    /// value to `on_route`, top first, so that the caller need not parse them again. A
    /// value that does not parse is not handed on; what was handed on counts only if the
    /// whole message validates.
    pub fn validate_with<'s>(
        &'s self,
        limits: &Limits,
        mut on_via: impl FnMut(Via<'s>),
        mut on_route: impl FnMut(&NameAddr<'s>),
    ) -> Result<()> {
        // One pass over the headers, each typed value parsed once and nothing allocated;
        // the first error of each check is kept and reported in the order below (the
        // order of the checks decides the status code of a message with several faults).
        let mut v = Validation::default();
        for h in &self.headers {
            let value = trim_lws(&h.value);
            let slot = match h.kind {
                HeaderName::From => Single::From,
                HeaderName::To => Single::To,
                HeaderName::CallId => Single::CallId,
                HeaderName::CSeq => Single::CSeq,
                HeaderName::MaxForwards => Single::MaxForwards,
                HeaderName::ContentType => Single::ContentType,
                HeaderName::ContentLength => Single::ContentLength,
                HeaderName::Expires => Single::Expires,
                HeaderName::Date => Single::Date,
                HeaderName::Via => {
                    for item in h.each_value() {
                        v.vias += 1;
                        keep(&mut v.via, item.and_then(parse_via).map(&mut on_via));
                    }
                    continue;
                }
                HeaderName::Route | HeaderName::RecordRoute => {
                    let route = h.kind == HeaderName::Route;
                    for item in h.each_value() {
                        let r =
                            item.and_then(parse_name_addr)
                                .and_then(|n| match (n.angle, route) {
                                    (true, true) => {
                                        on_route(&n);
                                        Ok(())
                                    }
                                    (true, false) => Ok(()),
                                    (false, true) => {
                                        Err(ParseError::malformed("Route must be name-addr"))
                                    }
                                    (false, false) => {
                                        Err(ParseError::malformed("Record-Route must be name-addr"))
                                    }
                                });
                        keep(
                            if route {
                                &mut v.route
                            } else {
                                &mut v.record_route
                            },
                            r,
                        );
                    }
                    continue;
                }
                HeaderName::Contact => {
                    for item in h.each_value() {
                        v.contacts += 1;
                        match item {
                            // A wildcard is fine only as the one Contact value.
                            Ok("*") if v.contact_star.is_none() => {
                                v.contact_star = Some((v.contacts, parse_name_addr("*").map(drop)));
                            }
                            other => {
                                let r = other.and_then(parse_name_addr).map(drop);
                                if v.contact.is_none() {
                                    if let Err(e) = r {
                                        v.contact = Some((v.contacts, e));
                                    }
                                }
                            }
                        }
                    }
                    continue;
                }
                HeaderName::Require => {
                    keep(
                        &mut v.require,
                        token_items(&h.value).try_for_each(|t| t.map(drop)),
                    );
                    continue;
                }
                HeaderName::ProxyRequire => {
                    let r = token_items(&h.value).try_for_each(|t| t.map(drop));
                    keep(&mut v.proxy_require, r);
                    continue;
                }
                HeaderName::Supported => {
                    keep(
                        &mut v.supported,
                        token_items(&h.value).try_for_each(|t| t.map(drop)),
                    );
                    continue;
                }
                _ => continue,
            };
            let i = slot as usize;
            if let Some(n) = v.singles.get_mut(i) {
                *n = n.saturating_add(1);
            }
            if let Some(first) = v.single_values.get_mut(i) {
                first.get_or_insert(value);
            }
        }
        if v.singles.iter().any(|&n| n > 1) {
            return Err(ParseError::malformed("single-valued header repeated"));
        }
        if let Some(e) = v.via {
            return Err(e);
        }
        if v.vias == 0 {
            return Err(ParseError::malformed("no Via"));
        }
        if v.vias > limits.max_vias {
            return Err(ParseError::new(ErrorKind::TooLarge, "too many Via values"));
        }
        let missing = ParseError::malformed("mandatory header missing");
        let single = |s: Single| v.single_values.get(s as usize).copied().flatten();
        parse_name_addr(single(Single::From).ok_or(missing)?)?;
        parse_name_addr(single(Single::To).ok_or(missing)?)?;
        let call_id = single(Single::CallId).ok_or(missing)?;
        if call_id.is_empty() || call_id.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(ParseError::malformed("bad Call-ID"));
        }
        let cseq = parse_cseq(single(Single::CSeq).ok_or(missing)?)?;
        if let Some(mf) = single(Single::MaxForwards) {
            parse_digits::<u8>(mf)?.ok_or(ParseError::malformed("Max-Forwards above 255"))?;
        }
        if let Some(e) = v.route.or(v.record_route) {
            return Err(e);
        }
        let star_alone = v.contacts == 1 && v.contact_star.is_some();
        let star = v.contact_star.filter(|_| !star_alone);
        let contact = match (v.contact, star) {
            (Some((i, e)), Some((j, Err(s)))) => Some(if j < i { s } else { e }),
            (Some((_, e)), _) | (None, Some((_, Err(e)))) => Some(e),
            _ => None,
        };
        if let Some(e) = contact {
            return Err(e);
        }
        if let Some(ct) = single(Single::ContentType) {
            parse_media_type(ct)?;
        }
        if let Some(e) = v.require.or(v.proxy_require).or(v.supported) {
            return Err(e);
        }
        if let Some(ex) = single(Single::Expires) {
            parse_digits::<u32>(ex)?;
        }
        if let Some(d) = single(Single::Date) {
            check_sip_date(d)?;
        }
        if let StartLine::Request(r) = &self.start {
            if r.method != cseq.method {
                return Err(ParseError::malformed("CSeq method does not match request"));
            }
            if self.request_uri_facts()?.headers {
                return Err(ParseError::malformed("headers in Request-URI"));
            }
        }
        Ok(())
    }

    /// Appends the wire form to `out`. An unedited parsed message reproduces
    /// its input exactly (up to the end of its body).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.preamble.as_bytes());
        match (&self.start_raw, &self.start) {
            (Some(raw), _) => out.extend_from_slice(raw.as_bytes()),
            (None, StartLine::Request(r)) => {
                out.extend_from_slice(r.method.as_bytes());
                out.push(b' ');
                out.extend_from_slice(r.uri.as_bytes());
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            (None, StartLine::Response(s)) => {
                out.extend_from_slice(format!("SIP/2.0 {} ", s.code).as_bytes());
                out.extend_from_slice(s.reason.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        for h in &self.headers {
            h.write_to(out);
        }
        out.extend_from_slice(self.blank.as_bytes());
        out.extend_from_slice(&self.body);
    }

    /// The wire form.
    pub fn serialize(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 64 * self.headers.len() + 64);
        self.write_to(&mut out);
        out
    }

    /// Detaches the message from the input buffer.
    pub fn into_owned(self) -> Message<'static> {
        let start = match self.start {
            StartLine::Request(r) => StartLine::Request(RequestLine {
                method: Cow::Owned(r.method.into_owned()),
                uri: Cow::Owned(r.uri.into_owned()),
            }),
            StartLine::Response(s) => StartLine::Response(StatusLine {
                code: s.code,
                reason: Cow::Owned(s.reason.into_owned()),
            }),
        };
        Message {
            preamble: "",
            start,
            start_raw: None,
            uri_facts: self.uri_facts,
            headers: self
                .headers
                .into_iter()
                .map(|h| Header {
                    name: Cow::Owned(h.name.into_owned()),
                    kind: h.kind,
                    value: Cow::Owned(h.value.into_owned()),
                    raw: None,
                })
                .collect(),
            blank: "\r\n",
            body: Cow::Owned(self.body.into_owned()),
        }
    }

    // ---- edits a proxy makes -------------------------------------------------

    fn first_index(&self, kind: HeaderName) -> Option<usize> {
        self.headers.iter().position(|h| h.kind == kind)
    }

    /// Inserts `header` before the first header of its kind (or first of all
    /// headers if there is none).
    fn insert_top(&mut self, header: Header<'a>) {
        let at = self.first_index(header.kind).unwrap_or(0);
        self.headers.insert(at, header);
    }

    /// Adds a Via on top (RFC 3261 §16.6 step 8). `value` is e.g.
    /// `SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK...`.
    pub fn prepend_via(&mut self, value: impl Into<Cow<'a, str>>) -> Result<()> {
        let value = value.into();
        parse_via(&value)?;
        self.insert_top(Header::new("Via", value));
        Ok(())
    }

    /// [`Self::prepend_via`] for a value the caller built itself from its own address and
    /// a branch it generated: it is not parsed again. Nothing from the network may go
    /// here; the caller's tests check that what it builds parses.
    pub fn prepend_built_via(&mut self, value: String) {
        self.insert_top(Header::new("Via", Cow::Owned(value)));
    }

    /// Removes the top Via value (RFC 3261 §16.7 step 3); returns whether there was one.
    pub fn remove_top_via(&mut self) -> Result<bool> {
        self.remove_top_value(HeaderName::Via)
    }

    fn remove_top_value(&mut self, kind: HeaderName) -> Result<bool> {
        let Some(i) = self.first_index(kind) else {
            return Ok(false);
        };
        let Some(h) = self.headers.get(i) else {
            return Ok(false);
        };
        // The values after the first, as written (no list rebuilt): every value is
        // checked as `values` would, then the text after the first top-level comma kept.
        let mut values = split_top(&h.value, b',');
        let first_len = values.next().transpose()?.map_or(0, str::len);
        let mut more = false;
        for v in values {
            v?;
            more = true;
        }
        if !more {
            self.headers.remove(i);
            return Ok(true);
        }
        let rest = match &h.value {
            Cow::Borrowed(v) => {
                let v: &'a str = v;
                Cow::Borrowed(trim_lws(v.get(first_len + 1..).unwrap_or("")))
            }
            Cow::Owned(v) => Cow::Owned(trim_lws(v.get(first_len + 1..).unwrap_or("")).to_owned()),
        };
        let name = h.name.clone();
        if let Some(slot) = self.headers.get_mut(i) {
            *slot = Header::new(name, rest);
        }
        Ok(true)
    }

    /// Decrements Max-Forwards, adding `70` when absent (RFC 3261 §16.6 step 3).
    /// Returns the new value, or `Ok(None)` without change when it is already 0
    /// (the caller answers 483 Too Many Hops).
    pub fn decrement_max_forwards(&mut self) -> Result<Option<u8>> {
        match self.max_forwards()? {
            None => {
                self.headers.push(Header::new("Max-Forwards", "70"));
                Ok(Some(70))
            }
            Some(0) => Ok(None),
            Some(n) => {
                let n = n - 1;
                if let Some(h) = self
                    .headers
                    .iter_mut()
                    .find(|h| h.kind == HeaderName::MaxForwards)
                {
                    *h = Header::new(h.name.clone(), n.to_string());
                }
                Ok(Some(n))
            }
        }
    }

    /// Adds `Record-Route: <uri>` on top (the caller includes `;lr`).
    pub fn add_record_route(&mut self, uri: &str) -> Result<()> {
        parse_uri(uri)?;
        let mut value = String::with_capacity(uri.len() + 2);
        value.push('<');
        value.push_str(uri);
        value.push('>');
        self.insert_top(Header::new("Record-Route", value));
        Ok(())
    }

    /// Removes the top Route value (RFC 3261 §16.4); returns whether there was one.
    pub fn remove_top_route(&mut self) -> Result<bool> {
        self.remove_top_value(HeaderName::Route)
    }

    /// Replaces all Route headers with one listing `uris` in order (empty: strip).
    pub fn set_route(&mut self, uris: &[&str]) -> Result<()> {
        for u in uris {
            parse_uri(u)?;
        }
        let at = self.first_index(HeaderName::Route);
        self.headers.retain(|h| h.kind != HeaderName::Route);
        if !uris.is_empty() {
            let value = uris
                .iter()
                .map(|u| format!("<{u}>"))
                .collect::<Vec<_>>()
                .join(", ");
            let at = at.unwrap_or(self.headers.len()).min(self.headers.len());
            self.headers.insert(at, Header::new("Route", value));
        }
        Ok(())
    }

    /// Appends a header.
    pub fn push_header(&mut self, header: Header<'a>) {
        self.headers.push(header);
    }

    /// Removes every header of a kind.
    pub fn remove_headers(&mut self, kind: HeaderName) {
        self.headers.retain(|h| h.kind != kind);
    }

    /// Replaces the body and its Content-Length (and Content-Type if given).
    pub fn set_body(&mut self, body: impl Into<Cow<'a, [u8]>>, content_type: Option<&'a str>) {
        self.body = body.into();
        self.remove_headers(HeaderName::ContentLength);
        if let Some(ct) = content_type {
            self.remove_headers(HeaderName::ContentType);
            self.headers.push(Header::new("Content-Type", ct));
        }
        self.headers
            .push(Header::new("Content-Length", self.body.len().to_string()));
    }

    /// Builds a response to `request` (RFC 3261 §8.2.6): copies Via, From, To,
    /// Call-ID and CSeq, adds `to_tag` to To when it has none (not for 100),
    /// and `Content-Length: 0`. `reason` defaults to the standard phrase.
    pub fn response_to(
        request: &Message<'a>,
        code: u16,
        reason: Option<&'a str>,
        to_tag: Option<&str>,
    ) -> Result<Message<'a>> {
        if !request.is_request() || !(100..=699).contains(&code) {
            return Err(ParseError::malformed(
                "response needs a request and a 1xx-6xx code",
            ));
        }
        // Via, From, To, Call-ID, CSeq and Content-Length, and a second Via line or two.
        let mut headers = Vec::with_capacity(8);
        for h in request.headers.iter() {
            match h.kind {
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                    headers.push(Header::new(h.kind.as_str(), h.value.clone()));
                }
                HeaderName::To => {
                    let has_tag = parse_name_addr(&h.value)?.tag().is_some();
                    let value = match to_tag {
                        Some(tag) if !has_tag && code > 100 => {
                            Cow::Owned(format!("{};tag={tag}", h.value))
                        }
                        _ => h.value.clone(),
                    };
                    headers.push(Header::new("To", value));
                }
                _ => {}
            }
        }
        headers.push(Header::new("Content-Length", "0"));
        Ok(Message {
            preamble: "",
            start: StartLine::Response(StatusLine {
                code,
                reason: Cow::Borrowed(reason.unwrap_or_else(|| reason_phrase(code))),
            }),
            start_raw: None,
            uri_facts: None,
            headers,
            blank: "\r\n",
            body: Cow::Borrowed(&[]),
        })
    }
}

/// The single-valued headers [`Message::validate`] counts.
#[derive(Clone, Copy)]
enum Single {
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    ContentType,
    ContentLength,
    Expires,
    Date,
}

/// What one pass of [`Message::validate`] found: counts, first values, first errors.
#[derive(Default)]
struct Validation<'m> {
    singles: [u8; 9],
    single_values: [Option<&'m str>; 9],
    vias: usize,
    via: Option<ParseError>,
    route: Option<ParseError>,
    record_route: Option<ParseError>,
    /// Contact values seen; the first failing one (its position, its error).
    contacts: usize,
    contact: Option<(usize, ParseError)>,
    /// The first `*` value: its position and what parsing it as a name-addr gives.
    contact_star: Option<(usize, Result<()>)>,
    require: Option<ParseError>,
    proxy_require: Option<ParseError>,
    supported: Option<ParseError>,
}

/// Keeps the first error of a check.
fn keep(first: &mut Option<ParseError>, r: Result<()>) {
    if let (None, Err(e)) = (&*first, r) {
        *first = Some(e);
    }
}

#[cfg(test)]
mod before;

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1, SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\n\
Max-Forwards: 70\r\n\
f: \"Alice\" <sip:alice@example.com>;tag=1\r\n\
t: <sip:bob@example.com>\r\n\
i: abc@host\r\n\
CSeq: 1 INVITE\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
l: 4\r\n\r\nbody";

    #[test]
    fn parse_and_round_trip() {
        let m = parse(INVITE).unwrap();
        m.validate(&Limits::default()).unwrap();
        assert_eq!(m.serialize(), INVITE);
        assert_eq!(m.vias().unwrap().len(), 2);
        assert_eq!(m.from().unwrap().tag(), Some("1"));
        assert_eq!(m.call_id().unwrap(), "abc@host");
        assert_eq!(m.cseq().unwrap().seq, 1);
        assert_eq!(m.body(), b"body");
        assert!(m
            .routes()
            .unwrap()
            .iter()
            .all(|r| r.uri.as_sip().unwrap().is_loose_route()));
    }

    #[test]
    fn the_checks_after_parsing_follow_an_edited_request_uri() {
        use crate::verdict::{check, Policy, Verdict};
        let policy = Policy::default();
        let mut m = parse(INVITE).unwrap();
        assert_eq!(check(&m, &policy), Verdict::Accept);
        // URI headers are refused in a Request-URI, an unknown scheme with 416, and a
        // URI that does not parse never replaces the one that did.
        m.set_request_uri("sip:bob@example.com?subject=x").unwrap();
        assert!(m.validate(&Limits::default()).is_err());
        assert_eq!(check(&m, &policy), Verdict::Reject(400));
        m.set_request_uri("http://example.com/x").unwrap();
        assert_eq!(check(&m, &policy), Verdict::Reject(416));
        assert!(m.set_request_uri("sip:").is_err());
        assert_eq!(check(&m, &policy), Verdict::Reject(416));
        m.set_request_uri("tel:+14155550123").unwrap();
        assert_eq!(check(&m, &policy), Verdict::Accept);
        // And what was found survives detaching from the input.
        m.set_request_uri("sip:bob@example.com?subject=x").unwrap();
        assert_eq!(check(&m.into_owned(), &policy), Verdict::Reject(400));
    }

    #[test]
    fn proxy_edits() {
        let mut m = parse(INVITE).unwrap();
        m.prepend_via("SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp")
            .unwrap();
        assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bKp"));
        assert_eq!(m.decrement_max_forwards().unwrap(), Some(69));
        m.add_record_route("sip:proxy.example.com;lr").unwrap();
        assert!(m.remove_top_route().unwrap());
        assert_eq!(m.routes().unwrap().len(), 1);
        let wire = m.serialize();
        let again = parse(&wire).unwrap();
        again.validate(&Limits::default()).unwrap();
        assert_eq!(again.vias().unwrap().len(), 3);
        assert_eq!(again.max_forwards().unwrap(), Some(69));
        assert_eq!(again.record_routes().unwrap().len(), 1);
        assert_eq!(again.body(), b"body");

        let mut m = again;
        assert!(m.remove_top_via().unwrap());
        assert!(m.remove_top_via().unwrap());
        assert_eq!(m.vias().unwrap().len(), 1);
        m.set_route(&[]).unwrap();
        assert!(m.routes().unwrap().is_empty());
    }

    /// The top value goes; the rest stay as written, a comma inside a quoted parameter
    /// included; a broken list is refused and changes nothing.
    #[test]
    fn top_via_value_removed_from_a_list_line() {
        let head = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/UDP \
                    b;branch=z9hG4bK2;x=\"p,q\",SIP/2.0/UDP c;branch=z9hG4bK3\r\nFrom: \
                    <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
                    Content-Length: 0\r\n\r\n";
        let mut m = parse(head.as_bytes()).unwrap();
        assert!(m.remove_top_via().unwrap());
        {
            let vias = m.vias().unwrap();
            assert_eq!(vias.len(), 2);
            assert_eq!(vias[0].branch(), Some("z9hG4bK2"));
            assert_eq!(vias[0].param("x"), Some(Some("\"p,q\"")));
            assert_eq!(vias[1].branch(), Some("z9hG4bK3"));
        }
        assert!(m.remove_top_via().unwrap());
        assert!(m.remove_top_via().unwrap());
        assert!(m.vias().unwrap().is_empty());
        assert!(!m.remove_top_via().unwrap());

        let broken = head.replace("x=\"p,q\"", "x=\"p,q");
        let mut m = parse(broken.as_bytes()).unwrap();
        let before = m.serialize();
        assert!(m.remove_top_via().is_err());
        assert_eq!(m.serialize(), before);
    }

    #[test]
    fn response_builder() {
        let req = parse(INVITE).unwrap();
        let resp = Message::response_to(&req, 486, None, Some("xyz")).unwrap();
        let wire = resp.serialize();
        let back = parse(&wire).unwrap();
        back.validate(&Limits::default()).unwrap();
        assert_eq!(back.status(), Some(486));
        assert_eq!(back.to().unwrap().tag(), Some("xyz"));
        assert_eq!(back.vias().unwrap().len(), 2);
        assert!(wire.starts_with(b"SIP/2.0 486 Busy Here\r\n"));
    }

    #[test]
    fn stream_framing_and_odd_forms() {
        let two = [b"\r\n".as_slice(), INVITE, INVITE].concat();
        let (m, used) = parse_with(&two, &Limits::default(), Framing::Stream).unwrap();
        assert_eq!(used, INVITE.len() + 2);
        assert_eq!(m.serialize(), &two[..used]);
        let (_, used2) = parse_with(&two[used..], &Limits::default(), Framing::Stream).unwrap();
        assert_eq!(used2, INVITE.len());

        let reg = b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKr\r\n\
From: <tel:+15551234>;tag=a\r\nTo: <tel:+15551234>\r\nCall-ID: r1\r\nCSeq: 2 REGISTER\r\n\
Contact: *\r\nExpires: 0\r\nSupported: path,\r\n outbound\r\nContent-Length: 0\r\n\r\n";
        let m = parse(reg).unwrap();
        m.validate(&Limits::default()).unwrap();
        assert_eq!(m.contacts().unwrap(), None);
        assert_eq!(m.expires().unwrap(), Some(0));
        assert_eq!(m.supported().unwrap(), vec!["path", "outbound"]);
        assert!(matches!(m.from().unwrap().uri, Uri::Tel(_)));
    }

    #[test]
    fn framing_errors() {
        assert_eq!(
            parse(b"INVITE sip:a@b SIP/7.0\r\n\r\n")
                .unwrap_err()
                .status(),
            505
        );
        assert_eq!(
            parse(b"INVITE  sip:a@b SIP/2.0\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
        let big = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        let err = parse_with(INVITE, &big, Framing::Datagram).unwrap_err();
        assert_eq!(err.status(), 513);
        let (_, used) = parse_with(INVITE, &Limits::default(), Framing::Stream).unwrap();
        assert_eq!(used, INVITE.len());
        let err = parse_with(
            &INVITE[..INVITE.len() - 1],
            &Limits::default(),
            Framing::Stream,
        )
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Incomplete);
    }
}
