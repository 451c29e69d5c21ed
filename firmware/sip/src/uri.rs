//! SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966); anything else is kept as an
//! opaque absolute URI the caller may refuse with 416.

use std::borrow::Cow;

use crate::error::{ParseError, Result};
use crate::syntax::{
    check_escaped, class, find_param, parse_hostport, split_byte, split_once_byte, unescape, Host,
    Param, Params,
};

/// A parsed URI, borrowing from the message.
// The SIP variant holds its parameters inline (the point: no allocation per parsed URI);
// boxing it to even out the sizes would bring that allocation back.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri<'a> {
    /// `sip:` or `sips:`.
    Sip(SipUri<'a>),
    /// `tel:`.
    Tel(TelUri<'a>),
    /// Any other scheme: syntactically an absolute URI, not interpreted.
    Absolute(AbsoluteUri<'a>),
}

impl<'a> Uri<'a> {
    /// The URI as written.
    pub fn as_str(&self) -> &'a str {
        match self {
            Uri::Sip(u) => u.raw,
            Uri::Tel(u) => u.raw,
            Uri::Absolute(u) => u.raw,
        }
    }

    /// The scheme as written.
    pub fn scheme(&self) -> &'a str {
        match self {
            Uri::Sip(u) => u.scheme,
            Uri::Tel(_) => "tel",
            Uri::Absolute(u) => u.scheme,
        }
    }

    /// The SIP/SIPS URI, if that is what this is.
    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }
}

/// `sip:` / `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// The whole URI as written.
    pub raw: &'a str,
    /// Scheme as written (`sip`/`sips`, any case).
    pub scheme: &'a str,
    /// User part, still escaped; see [`SipUri::user_unescaped`].
    pub user: Option<&'a str>,
    /// Password, still escaped.
    pub password: Option<&'a str>,
    /// Host.
    pub host: Host<'a>,
    /// Port, if written.
    pub port: Option<u16>,
    /// URI parameters (`;name=value`), still escaped.
    pub params: Params<'a>,
    /// URI headers (`?name=value&...`), still escaped.
    pub headers: Vec<Param<'a>>,
}

impl<'a> SipUri<'a> {
    /// `sips:`?
    pub fn is_secure(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("sips")
    }

    /// A URI parameter by case-insensitive name: `Some(None)` for a flag.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(&self.params, name).map(|p| p.value)
    }

    /// Does it carry the loose-routing `lr` parameter?
    pub fn is_loose_route(&self) -> bool {
        self.param("lr").is_some()
    }

    /// The `transport` parameter.
    pub fn transport(&self) -> Option<&'a str> {
        self.param("transport").flatten()
    }

    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a str> {
        self.param("maddr").flatten()
    }

    /// The user part with `%HH` escapes decoded (may hold any bytes, even NUL).
    pub fn user_unescaped(&self) -> Option<Cow<'a, [u8]>> {
        self.user.map(unescape)
    }
}

/// `tel:` URI (RFC 3966), lightly validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelUri<'a> {
    /// The whole URI as written.
    pub raw: &'a str,
    /// The number as written (global `+...` or local).
    pub number: &'a str,
    /// Parameters.
    pub params: Params<'a>,
}

/// An absolute URI with a scheme we do not interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteUri<'a> {
    /// The whole URI as written.
    pub raw: &'a str,
    /// Scheme as written.
    pub scheme: &'a str,
    /// Everything after the first `:`.
    pub rest: &'a str,
}

fn is_scheme(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

fn is_uric(b: u8) -> bool {
    class::is(b, class::URIC)
}

fn is_user_char(b: u8) -> bool {
    class::is(b, class::USER)
}

fn is_password_char(b: u8) -> bool {
    class::is(b, class::PASSWORD)
}

fn is_param_char(b: u8) -> bool {
    class::is(b, class::PARAM)
}

fn is_header_char(b: u8) -> bool {
    class::is(b, class::HEADER)
}

/// Parses a URI. SIP/SIPS/tel are parsed fully; other schemes only checked for
/// URI characters.
pub fn parse_uri(s: &str) -> Result<Uri<'_>> {
    if s.is_empty() || !s.bytes().all(is_uric) {
        return Err(ParseError::malformed("bad character in URI"));
    }
    let (scheme, rest) =
        split_once_byte(s, b':').ok_or(ParseError::malformed("URI without scheme"))?;
    if !is_scheme(scheme) {
        return Err(ParseError::malformed("bad URI scheme"));
    }
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        parse_sip(s, scheme, rest).map(Uri::Sip)
    } else if scheme.eq_ignore_ascii_case("tel") {
        parse_tel(s, rest).map(Uri::Tel)
    } else if rest.is_empty() || !check_escaped(rest, is_uric) {
        Err(ParseError::malformed("bad absolute URI"))
    } else {
        Ok(Uri::Absolute(AbsoluteUri {
            raw: s,
            scheme,
            rest,
        }))
    }
}

fn parse_sip<'a>(raw: &'a str, scheme: &'a str, rest: &'a str) -> Result<SipUri<'a>> {
    let (userinfo, hostpart) = match split_once_byte(rest, b'@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (mut user, mut password) = (None, None);
    if let Some(ui) = userinfo {
        let (u, p) = match split_once_byte(ui, b':') {
            Some((u, p)) => (u, Some(p)),
            None => (ui, None),
        };
        if u.is_empty() || !check_escaped(u, is_user_char) {
            return Err(ParseError::malformed("bad URI user"));
        }
        if let Some(p) = p {
            if !check_escaped(p, is_password_char) {
                return Err(ParseError::malformed("bad URI password"));
            }
        }
        user = Some(u);
        password = p;
    }
    // One walk from the host to the first ';' (parameters), '?' (headers) or '@' (an
    // error: the userinfo ended at the first '@'), then one per parameter.
    let hb = hostpart.as_bytes();
    let mut at = hb
        .iter()
        .position(|&c| matches!(c, b';' | b'?' | b'@'))
        .unwrap_or(hb.len());
    if hb.get(at) == Some(&b'@') {
        return Err(ParseError::malformed("'@' in URI host"));
    }
    let (host, port) = parse_hostport(hostpart.get(..at).unwrap_or(""))?;
    let mut params = Params::new();
    while hb.get(at) == Some(&b';') {
        let start = at + 1;
        let (param, end) =
            uri_param(hostpart, start).ok_or(ParseError::malformed("bad URI parameter"))?;
        params.push(param);
        at = end;
    }
    let headers_part = hostpart.get(at + 1..).filter(|_| hb.get(at) == Some(&b'?'));
    let mut headers = Vec::new();
    if let Some(h) = headers_part {
        for seg in split_byte(h, b'&') {
            let (name, value) = split_once_byte(seg, b'=')
                .ok_or(ParseError::malformed("URI header without '='"))?;
            if name.is_empty()
                || !check_escaped(name, is_header_char)
                || !check_escaped(value, is_header_char)
            {
                return Err(ParseError::malformed("bad URI header"));
            }
            headers.push(Param {
                name,
                value: Some(value),
            });
        }
    }
    Ok(SipUri {
        raw,
        scheme,
        user,
        password,
        host,
        port,
        params,
        headers,
    })
}

/// The URI parameter (`name[=value]`, both `%`-escaped parameter characters, neither
/// empty) that starts at `start` in `s` and runs to the next ';' or '?' or the end; with
/// where it ends. One pass: the `=` is found as the characters are checked (a `%` escape
/// never holds one: `=` is no hex digit).
fn uri_param(s: &str, start: usize) -> Option<(Param<'_>, usize)> {
    let b = s.as_bytes();
    let mut i = start;
    let mut eq = None;
    while let Some(&c) = b.get(i) {
        match c {
            b';' | b'?' => break,
            b'%' => {
                let hex = |k: usize| b.get(k).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return None;
                }
                i += 3;
                continue;
            }
            b'=' if eq.is_none() => eq = Some(i),
            c if is_param_char(c) => {}
            _ => return None,
        }
        i += 1;
    }
    let param = match eq {
        None => Param {
            name: s.get(start..i).filter(|n| !n.is_empty())?,
            value: None,
        },
        Some(e) => Param {
            name: s.get(start..e).filter(|n| !n.is_empty())?,
            value: Some(s.get(e + 1..i).filter(|v| !v.is_empty())?),
        },
    };
    Some((param, i))
}

pub(crate) fn parse_tel<'a>(raw: &'a str, rest: &'a str) -> Result<TelUri<'a>> {
    let mut segs = split_byte(rest, b';');
    let number = segs.next().unwrap_or("");
    let digits = number.strip_prefix('+').unwrap_or(number);
    let ok = !digits.is_empty()
        && digits
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b"-.()*#".contains(&b))
        && digits
            .bytes()
            .any(|b| b.is_ascii_hexdigit() || b == b'*' || b == b'#');
    if !ok {
        return Err(ParseError::malformed("bad tel number"));
    }
    let mut params = Params::new();
    for seg in segs {
        let (name, value) = match split_once_byte(seg, b'=') {
            Some((n, v)) => (n, Some(v)),
            None => (seg, None),
        };
        if name.is_empty() || !check_escaped(name, is_param_char) {
            return Err(ParseError::malformed("bad tel parameter"));
        }
        params.push(Param { name, value });
    }
    Ok(TelUri {
        raw,
        number,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let u = parse_uri("sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?subject=hi").unwrap();
        let Uri::Sip(s) = u else { panic!("not sip") };
        assert!(s.is_secure());
        assert_eq!(s.user, Some("alice"));
        assert_eq!(s.password, Some("pw"));
        assert_eq!(s.host, Host::Ipv6("2001:db8::1".parse().unwrap()));
        assert_eq!(s.port, Some(5061));
        assert_eq!(s.transport(), Some("tcp"));
        assert!(s.is_loose_route());
        assert_eq!(s.headers.len(), 1);
    }

    #[test]
    fn escapes_and_odd_users() {
        let u = parse_uri("sip:%75se%72@example.com").unwrap();
        assert_eq!(
            u.as_sip().unwrap().user_unescaped().unwrap().as_ref(),
            b"user"
        );
        assert!(parse_uri("sip:user;par=u%40example.net@example.com").is_ok());
        assert!(parse_uri("sip:bad%zz@example.com").is_err());
        assert!(parse_uri("sip:user@exa mple.com").is_err());
        assert!(parse_uri("sip:a@b@c").is_err());
    }

    #[test]
    fn tel_and_unknown() {
        assert!(matches!(
            parse_uri("tel:+1-201-555-0123;phone-context=x").unwrap(),
            Uri::Tel(_)
        ));
        let u = parse_uri("nobodyKnowsThisScheme:totallyopaquecontent").unwrap();
        assert!(matches!(u, Uri::Absolute(_)));
        assert_eq!(u.scheme(), "nobodyKnowsThisScheme");
        assert!(parse_uri("<sip:a@b>").is_err());
    }
}
