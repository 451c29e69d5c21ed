//! Header names (with compact forms) and the typed header values a proxy needs.

use std::borrow::Cow;

use crate::error::{ParseError, Result};
use crate::syntax::{
    find_byte, find_param, is_lws_byte, is_token, is_token_char, parse_digits, parse_header_params,
    parse_hostport, quoted_len, split_once_byte, trim_lws, trim_lws_start, unquote, Host, Params,
};
use crate::uri::{parse_uri, Uri};

macro_rules! header_names {
    ($( $variant:ident => $canon:literal $(, $compact:literal)? ; )*) => {
        /// A header field name, with the compact forms of RFC 3261 §7.3.3 and the
        /// IANA registry folded in.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum HeaderName {
            $(
                #[doc = $canon]
                $variant,
            )*
            /// Any other header.
            Other,
        }

        impl HeaderName {
            /// Classifies a header name as written on the wire (case-insensitive,
            /// compact forms included).
            pub fn from_wire(name: &str) -> HeaderName {
                $(
                    if name.eq_ignore_ascii_case($canon) $(|| name.eq_ignore_ascii_case($compact))? {
                        return HeaderName::$variant;
                    }
                )*
                HeaderName::Other
            }

            /// The canonical long form (`""` for [`HeaderName::Other`]).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( HeaderName::$variant => $canon, )*
                    HeaderName::Other => "",
                }
            }
        }
    };
}

header_names! {
    Via => "Via", "v";
    From => "From", "f";
    To => "To", "t";
    CallId => "Call-ID", "i";
    CSeq => "CSeq";
    MaxForwards => "Max-Forwards";
    Route => "Route";
    RecordRoute => "Record-Route";
    Contact => "Contact", "m";
    ContentType => "Content-Type", "c";
    ContentLength => "Content-Length", "l";
    ContentEncoding => "Content-Encoding", "e";
    Require => "Require";
    ProxyRequire => "Proxy-Require";
    Supported => "Supported", "k";
    Unsupported => "Unsupported";
    Expires => "Expires";
    Date => "Date";
    Subject => "Subject", "s";
    Event => "Event", "o";
    ReferTo => "Refer-To", "r";
    ReferredBy => "Referred-By", "b";
    AllowEvents => "Allow-Events", "u";
    AcceptContact => "Accept-Contact", "a";
    RejectContact => "Reject-Contact", "j";
    RequestDisposition => "Request-Disposition", "d";
    SessionExpires => "Session-Expires", "x";
    Identity => "Identity", "y";
    IdentityInfo => "Identity-Info", "n";
    RetryAfter => "Retry-After";
    UserAgent => "User-Agent";
    Server => "Server";
    Allow => "Allow";
    ProxyAuthorization => "Proxy-Authorization";
    Authorization => "Authorization";
}

impl HeaderName {
    /// Headers whose value is a comma-separated list that may be split across
    /// several header lines (RFC 3261 §7.3.1).
    pub fn is_list(self) -> bool {
        matches!(
            self,
            HeaderName::Via
                | HeaderName::Route
                | HeaderName::RecordRoute
                | HeaderName::Contact
                | HeaderName::Require
                | HeaderName::ProxyRequire
                | HeaderName::Supported
                | HeaderName::Unsupported
                | HeaderName::Allow
                | HeaderName::AllowEvents
                | HeaderName::ContentEncoding
                | HeaderName::AcceptContact
                | HeaderName::RejectContact
                | HeaderName::RequestDisposition
        )
    }

    /// Headers that may appear at most once.
    pub fn is_single(self) -> bool {
        matches!(
            self,
            HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::MaxForwards
                | HeaderName::ContentType
                | HeaderName::ContentLength
                | HeaderName::Expires
                | HeaderName::Date
        )
    }
}

/// `name-addr` / `addr-spec` with header parameters: From, To, Contact, Route,
/// Record-Route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name as written (quoted strings keep quotes and escapes).
    pub display_raw: Option<&'a str>,
    /// The URI.
    pub uri: Uri<'a>,
    /// Was the URI enclosed in `<>`?
    pub angle: bool,
    /// Header parameters (`;tag=...`, `;expires=...`, ...).
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// The display name with quotes and escapes removed.
    pub fn display_name(&self) -> Option<Cow<'a, str>> {
        self.display_raw.map(|d| {
            if d.starts_with('"') {
                unquote(d)
            } else {
                Cow::Borrowed(d)
            }
        })
    }

    /// A header parameter by case-insensitive name: `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(&self.params, name).map(|p| p.value)
    }

    /// The `tag` parameter (From/To).
    pub fn tag(&self) -> Option<&'a str> {
        self.param("tag").flatten()
    }
}

/// Parses one `name-addr` or `addr-spec` followed by header parameters.
pub fn parse_name_addr(s: &str) -> Result<NameAddr<'_>> {
    let p = name_addr_parts(s)?;
    Ok(NameAddr {
        display_raw: p.display_raw,
        uri: parse_uri(p.uri)?,
        angle: p.angle,
        params: parse_header_params(p.params)?,
    })
}

/// The `tag` parameter of a From or To value without parsing its URI: the value is split
/// as [`parse_name_addr`] splits it, and only its header parameters are parsed. On a value
/// [`parse_name_addr`] accepts it gives the same tag as [`NameAddr::tag`]; the URI it does
/// not look at, it does not check (the proxy asks it of validated messages).
pub fn parse_tag(s: &str) -> Result<Option<&str>> {
    let params = parse_header_params(name_addr_parts(s)?.params)?;
    Ok(find_param(&params, "tag").and_then(|p| p.value))
}

/// The URI of a `name-addr` or `addr-spec` as written, and whether it was in `<>`, without
/// parsing the URI or the header parameters: the value is split as [`parse_name_addr`]
/// splits it. On a value [`parse_name_addr`] accepts it gives that parse's
/// `uri.as_str()` and `angle`; what it does not look at, it does not check: the caller
/// asks it of a validated message, or parses the URI before it uses it.
pub fn name_addr_uri(s: &str) -> Result<(&str, bool)> {
    let p = name_addr_parts(s)?;
    Ok((p.uri, p.angle))
}

/// A `name-addr` or `addr-spec` with header parameters, split but for the URI and the
/// parameters themselves.
struct NameAddrParts<'a> {
    display_raw: Option<&'a str>,
    uri: &'a str,
    angle: bool,
    params: &'a str,
}

fn name_addr_parts(s: &str) -> Result<NameAddrParts<'_>> {
    let s = trim_lws(s);
    let (display_raw, after_display) = if s.starts_with('"') {
        let len = quoted_len(s)?;
        let (d, rest) = s.split_at(len);
        let rest = trim_lws_start(rest);
        if !rest.starts_with('<') {
            return Err(ParseError::malformed("quoted display name without <URI>"));
        }
        (Some(d), rest)
    } else if let Some(lt) = find_byte(s, b'<') {
        let (d, rest) = s.split_at(lt);
        let d = trim_lws(d);
        // Tokens separated by LWS: every byte is one or the other.
        if !d.bytes().all(|b| is_token_char(b) || is_lws_byte(&b)) {
            return Err(ParseError::malformed(
                "display name must be tokens or quoted",
            ));
        }
        ((!d.is_empty()).then_some(d), rest)
    } else {
        (None, s)
    };
    if let Some(inner) = after_display.strip_prefix('<') {
        let gt = find_byte(inner, b'>').ok_or(ParseError::malformed("missing '>'"))?;
        let (uri, rest) = inner.split_at(gt);
        return Ok(NameAddrParts {
            display_raw,
            uri,
            angle: true,
            params: rest.get(1..).unwrap_or(""),
        });
    }
    // addr-spec: the URI runs to the first ';' and may not contain ',', '?' or ';'
    // (RFC 3261 §20.10).
    let end = after_display
        .bytes()
        .position(|b| b == b';' || is_lws_byte(&b))
        .unwrap_or(after_display.len());
    let (uri, params) = after_display.split_at(end);
    if uri.bytes().any(|b| b == b'?' || b == b',') {
        return Err(ParseError::malformed("URI with '?' or ',' must be in <>"));
    }
    Ok(NameAddrParts {
        display_raw: None,
        uri,
        angle: false,
        params,
    })
}

/// One Via header field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via<'a> {
    /// The protocol name (`SIP`).
    pub protocol: &'a str,
    /// The protocol version (`2.0`).
    pub version: &'a str,
    /// Transport (`UDP`, `TCP`, `TLS`, `SCTP`, ... as written).
    pub transport: &'a str,
    /// sent-by host.
    pub host: Host<'a>,
    /// sent-by port.
    pub port: Option<u16>,
    /// Parameters.
    pub params: Params<'a>,
}

impl<'a> Via<'a> {
    /// A parameter by case-insensitive name: `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(&self.params, name).map(|p| p.value)
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.param("branch").flatten()
    }

    /// Does the branch carry the RFC 3261 magic cookie (and something after it)?
    pub fn is_rfc3261_branch(&self) -> bool {
        self.branch()
            .and_then(|b| b.strip_prefix("z9hG4bK"))
            .is_some_and(|rest| !rest.is_empty())
    }

    /// The `received` parameter.
    pub fn received(&self) -> Option<&'a str> {
        self.param("received").flatten()
    }

    /// The `rport` parameter: `Some(None)` when present without a value.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.param("rport")
            .map(|v| v.and_then(|p| p.parse::<u16>().ok()))
    }

    /// The `ttl` parameter.
    pub fn ttl(&self) -> Option<u8> {
        self.param("ttl").flatten().and_then(|v| v.parse().ok())
    }

    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a str> {
        self.param("maddr").flatten()
    }
}

/// Parses one Via value: `SIP / 2.0 / UDP host[:port] *(;param)`.
pub fn parse_via(s: &str) -> Result<Via<'_>> {
    let s = trim_lws(s);
    let (protocol, rest) =
        split_once_byte(s, b'/').ok_or(ParseError::malformed("Via without protocol"))?;
    let (version, rest) =
        split_once_byte(rest, b'/').ok_or(ParseError::malformed("Via without version"))?;
    let (protocol, version) = (trim_lws(protocol), trim_lws(version));
    if !is_token(protocol) || !is_token(version) {
        return Err(ParseError::malformed("bad Via protocol"));
    }
    let rest = trim_lws_start(rest);
    let tlen = rest.bytes().take_while(|&b| is_token_char(b)).count();
    let (transport, rest) = rest.split_at(tlen);
    if transport.is_empty() || !rest.as_bytes().first().is_some_and(is_lws_byte) {
        return Err(ParseError::malformed("bad Via transport"));
    }
    let rest = trim_lws_start(rest);
    let end = rest
        .bytes()
        .position(|b| b == b';' || is_lws_byte(&b))
        .unwrap_or(rest.len());
    let (sent_by, rest) = rest.split_at(end);
    let (host, port) = parse_hostport(sent_by)?;
    let params = parse_header_params(rest)?;
    let via = Via {
        protocol,
        version,
        transport,
        host,
        port,
        params,
    };
    if let Some(t) = via.param("ttl") {
        if t.and_then(|t| parse_digits::<u8>(t).ok().flatten())
            .is_none()
        {
            return Err(ParseError::malformed("bad Via ttl"));
        }
    }
    if let Some(Some(p)) = via.param("rport") {
        crate::syntax::parse_port(p)?;
    }
    if let Some(r) = via.param("received") {
        let ok = r.is_some_and(|r| {
            r.parse::<std::net::IpAddr>().is_ok()
                || r.strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .is_some_and(|r| r.parse::<std::net::Ipv6Addr>().is_ok())
        });
        if !ok {
            return Err(ParseError::malformed("bad Via received"));
        }
    }
    if via.param("branch").is_some_and(|b| b.is_none()) {
        return Err(ParseError::malformed("Via branch without value"));
    }
    Ok(via)
}

/// The CSeq header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// Sequence number (RFC 3261: less than 2**31; we accept any u32).
    pub seq: u32,
    /// Method.
    pub method: &'a str,
}

/// Parses `CSeq: 1*DIGIT LWS Method`.
pub fn parse_cseq(s: &str) -> Result<CSeq<'_>> {
    let s = trim_lws(s);
    let end = s
        .bytes()
        .position(|b| is_lws_byte(&b))
        .ok_or(ParseError::malformed("CSeq without method"))?;
    let (num, method) = s.split_at(end);
    let method = trim_lws(method);
    let seq = parse_digits::<u32>(num)?.ok_or(ParseError::malformed("CSeq number too large"))?;
    if !is_token(method) {
        return Err(ParseError::malformed("bad CSeq method"));
    }
    Ok(CSeq { seq, method })
}

/// Parses a comma-separated token list (Require, Proxy-Require, Supported).
pub fn parse_token_list(s: &str) -> Result<Vec<&str>> {
    token_items(s).collect()
}

/// The items of a comma-separated token list, lazily (empty items skipped).
pub(crate) fn token_items(s: &str) -> impl Iterator<Item = Result<&str>> {
    s.split(',')
        .map(trim_lws)
        .filter(|i| !i.is_empty())
        .map(|i| {
            if is_token(i) {
                Ok(i)
            } else {
                Err(ParseError::malformed("bad token in list"))
            }
        })
}

/// Checks `Content-Type: type/subtype *(;param)`; returns `type/subtype`.
pub fn parse_media_type(s: &str) -> Result<&str> {
    let s = trim_lws(s);
    let end = s.find(';').unwrap_or(s.len());
    let (mt, rest) = s.split_at(end);
    let mt = trim_lws(mt);
    let (t, sub) = mt
        .split_once('/')
        .ok_or(ParseError::malformed("media type without '/'"))?;
    if !is_token(trim_lws(t)) || !is_token(trim_lws(sub)) {
        return Err(ParseError::malformed("bad media type"));
    }
    parse_header_params(rest)?;
    Ok(mt)
}

/// Checks an RFC 1123 date as SIP requires it: `wkday, DD Mon YYYY HH:MM:SS GMT`.
pub fn check_sip_date(s: &str) -> Result<()> {
    let s = trim_lws(s);
    let bad = ParseError::malformed("bad Date (must be RFC 1123, GMT)");
    let (wkday, rest) = s.split_once(',').ok_or(bad)?;
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    if !DAYS.contains(&wkday) {
        return Err(bad);
    }
    let parts: Vec<&str> = rest.split_ascii_whitespace().collect();
    let [day, month, year, time, zone] = parts.as_slice() else {
        return Err(bad);
    };
    let digits = |v: &str, n: usize| v.len() == n && v.bytes().all(|b| b.is_ascii_digit());
    let time_ok = {
        let t: Vec<&str> = time.split(':').collect();
        t.len() == 3 && t.iter().all(|p| digits(p, 2))
    };
    if digits(day, 2) && MONTHS.contains(month) && digits(year, 4) && time_ok && *zone == "GMT" {
        Ok(())
    } else {
        Err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name_addr_uri` gives what `parse_name_addr` gives, on every value that parses: the
    /// From, To, Contact, Route and Record-Route values of the RFC 4475 messages, and forms
    /// written here.
    #[test]
    fn name_addr_uri_agrees_with_the_full_parse() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/conformance/rfc4475"
        );
        let files: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect();
        assert!(files.len() > 30, "the RFC 4475 messages are there");
        let mut values: Vec<String> = [
            "\"A \\\"b\" <sip:a@example.com;lr>;tag=1",
            "sip:a@example.com;tag=1",
            "<sip:x.example>",
            " Bob <sips:b@c.example:5061;transport=tls> ;expires=60",
            "<tel:+12025550100>",
            "sip:192.0.2.1:5060",
            "Anonymous <sip:[2001:db8::1]:5060;maddr=x>",
            "<urn:service:sos>",
        ]
        .map(str::to_owned)
        .to_vec();
        let kinds = [
            HeaderName::From,
            HeaderName::To,
            HeaderName::Contact,
            HeaderName::Route,
            HeaderName::RecordRoute,
        ];
        for bytes in &files {
            let Ok(m) = crate::message::parse(bytes) else {
                continue;
            };
            for kind in kinds {
                values.extend(m.each_value(kind).flatten().map(str::to_owned));
            }
        }
        let mut agreed = 0;
        for v in &values {
            if let Ok(n) = parse_name_addr(v) {
                assert_eq!(
                    name_addr_uri(v).unwrap(),
                    (n.uri.as_str(), n.angle),
                    "{v:?}"
                );
                agreed += 1;
            }
        }
        assert!(agreed > 60, "{agreed} values compared");
    }

    #[test]
    fn compact_forms() {
        assert_eq!(HeaderName::from_wire("v"), HeaderName::Via);
        assert_eq!(HeaderName::from_wire("I"), HeaderName::CallId);
        assert_eq!(
            HeaderName::from_wire("content-LENGTH"),
            HeaderName::ContentLength
        );
        assert_eq!(HeaderName::from_wire("C%6Fntact"), HeaderName::Other);
    }

    #[test]
    fn name_addr_forms() {
        let n =
            parse_name_addr(r#""J Rosenberg \\\""  <sip:jdrosen@example.com> ; tag = 98"#).unwrap();
        assert_eq!(n.display_name().unwrap(), r#"J Rosenberg \""#);
        assert_eq!(n.tag(), Some("98"));
        let n = parse_name_addr("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display_raw, Some("caller"));
        let n = parse_name_addr("sip:+1972@gw1.example.net;unknownparam").unwrap();
        assert!(!n.angle);
        assert_eq!(n.param("unknownparam"), Some(None));
        assert!(parse_name_addr("Bell, Alexander <sip:a@b>").is_err());
        assert!(parse_name_addr(r#""Watson" < sip:t@example.org >"#).is_err());
        assert!(parse_name_addr(r#""Mr. J. User <sip:j@example.com>"#).is_err());
        assert!(parse_name_addr("sip:user@example.com?Route=%3Csip:x%3E").is_err());
        assert!(parse_name_addr("<sip:user@example.com?Route=%3Csip:x%3E>").is_ok());
    }

    #[test]
    fn via_forms() {
        let v = parse_via("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert!(!v.is_rfc3261_branch());
        let v = parse_via("SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKx;rport;received=192.0.2.1;ttl=16;maddr=224.0.0.1").unwrap();
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.ttl(), Some(16));
        assert!(v.is_rfc3261_branch());
        assert!(parse_via("SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(parse_via("SIP/2.0/UDP h;ttl=300").is_err());
    }

    #[test]
    fn cseq_and_date() {
        assert_eq!(parse_cseq("0009\r\n  INVITE").unwrap().seq, 9);
        assert!(parse_cseq("36893488147419103232 REGISTER").is_err());
        assert!(check_sip_date("Sat, 15 Oct 2005 04:44:56 GMT").is_ok());
        assert!(check_sip_date("Fri, 01 Jan 2010 16:00:00 EST").is_err());
    }
}
