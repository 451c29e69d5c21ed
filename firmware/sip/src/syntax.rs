//! Lexical helpers shared by the SIP and URI grammars (RFC 3261 §25).

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::{ParseError, Result};

pub(crate) fn trim_lws(s: &str) -> &str {
    s.trim_matches([' ', '\t', '\r', '\n'])
}

pub(crate) fn trim_lws_start(s: &str) -> &str {
    s.trim_start_matches([' ', '\t', '\r', '\n'])
}

/// RFC 3261 `token` character.
pub(crate) fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// RFC 3261 `unreserved` character.
pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
}

/// Checks that every `%` starts a `%HH` escape and every other byte satisfies `ok`.
pub(crate) fn check_escaped(s: &str, ok: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else if ok(c) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Decodes `%HH` escapes; borrows when there are none.
pub fn unescape(s: &str) -> Cow<'_, [u8]> {
    if !s.contains('%') {
        return Cow::Borrowed(s.as_bytes());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            if let (Some(h), Some(l)) = (b.get(i + 1).and_then(hex), b.get(i + 2).and_then(hex)) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Length of the quoted string at the start of `s` (which starts with `"`),
/// including both quotes. Handles `quoted-pair` escapes.
pub(crate) fn quoted_len(s: &str) -> Result<usize> {
    let b = s.as_bytes();
    if b.first() != Some(&b'"') {
        return Err(ParseError::malformed("expected a quoted string"));
    }
    let mut i = 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => {
                // quoted-pair: any byte except CR and LF.
                match b.get(i + 1) {
                    Some(b'\r' | b'\n') | None => {
                        return Err(ParseError::malformed("bad quoted-pair"))
                    }
                    Some(_) => i += 2,
                }
            }
            b'"' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(ParseError::malformed("unterminated quoted string"))
}

/// Removes the quotes and `quoted-pair` escapes of a quoted string.
pub fn unquote(s: &str) -> Cow<'_, str> {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Splits `s` at `delim` outside quoted strings and `<...>`, lazily (no allocation):
/// each piece as written. An unterminated quoted string is an error, yielded once
/// in place of the piece holding it; the iterator ends after it.
pub(crate) fn split_top(s: &str, delim: u8) -> SplitTop<'_> {
    SplitTop {
        s,
        start: Some(0),
        delim,
    }
}

/// The iterator of [`split_top`].
pub(crate) struct SplitTop<'a> {
    s: &'a str,
    /// Where the next piece starts; `None` once done.
    start: Option<usize>,
    delim: u8,
}

impl<'a> Iterator for SplitTop<'a> {
    type Item = Result<&'a str>;

    fn next(&mut self) -> Option<Result<&'a str>> {
        let start = self.start?;
        let s = self.s;
        let b = s.as_bytes();
        let mut i = start;
        let mut in_angle = false;
        while let Some(&c) = b.get(i) {
            match c {
                b'"' if !in_angle => {
                    let rest = s.get(i..).unwrap_or("");
                    match quoted_len(rest) {
                        Ok(n) => i += n,
                        Err(e) => {
                            self.start = None;
                            return Some(Err(e));
                        }
                    }
                    continue;
                }
                b'<' => in_angle = true,
                b'>' => in_angle = false,
                c if c == self.delim && !in_angle => {
                    self.start = Some(i + 1);
                    return Some(Ok(s.get(start..i).unwrap_or("")));
                }
                _ => {}
            }
            i += 1;
        }
        self.start = None;
        Some(Ok(s.get(start..).unwrap_or("")))
    }
}

/// A host: an IP address or a domain name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    /// A dotted-quad IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 reference (written in `[...]`).
    Ipv6(Ipv6Addr),
    /// A domain name, as written.
    Name(&'a str),
}

impl std::fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// Parses `host` (RFC 3261 `host`).
pub(crate) fn parse_host(s: &str) -> Result<Host<'_>> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or(ParseError::malformed("unterminated IPv6 reference"))?;
        return inner
            .parse::<Ipv6Addr>()
            .map(Host::Ipv6)
            .map_err(|_| ParseError::malformed("bad IPv6 address"));
    }
    if s.is_empty() {
        return Err(ParseError::malformed("empty host"));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s
            .parse::<Ipv4Addr>()
            .map(Host::Ipv4)
            .map_err(|_| ParseError::malformed("bad IPv4 address"));
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(ParseError::malformed("bad host name"));
        }
    }
    Ok(Host::Name(s))
}

/// Parses `host [":" port]`.
pub(crate) fn parse_hostport(s: &str) -> Result<(Host<'_>, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        match s.find(']') {
            Some(end) => {
                let (h, rest) = s.split_at(end + 1);
                match rest.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None if rest.is_empty() => (h, None),
                    None => return Err(ParseError::malformed("junk after IPv6 reference")),
                }
            }
            None => return Err(ParseError::malformed("unterminated IPv6 reference")),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => Some(parse_port(p)?),
        None => None,
    };
    Ok((parse_host(host)?, port))
}

pub(crate) fn parse_port(p: &str) -> Result<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::malformed("bad port"));
    }
    p.parse::<u16>()
        .map_err(|_| ParseError::malformed("port out of range"))
}

/// Parses a decimal number made of digits only; `None` on overflow.
pub(crate) fn parse_digits<T: std::str::FromStr>(s: &str) -> Result<Option<T>> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::malformed("expected digits"));
    }
    Ok(s.parse::<T>().ok())
}

/// A `name[=value]` parameter, borrowed as written (value keeps any quotes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// Parameter name as written.
    pub name: &'a str,
    /// Value as written, if any (quoted strings keep their quotes).
    pub value: Option<&'a str>,
}

/// The parameters of one URI or header value: up to four are held inline (a parsed Via,
/// name-addr or URI allocates nothing for them), more spill to the heap.
pub type Params<'a> = smallvec::SmallVec<[Param<'a>; 4]>;

/// Finds a parameter by case-insensitive name.
pub(crate) fn find_param<'p, 'a>(params: &'p [Param<'a>], name: &str) -> Option<&'p Param<'a>> {
    params.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// Parses header parameters: `*( SEMI generic-param )` with LWS allowed around
/// `;` and `=`. `s` is what follows the main value.
pub(crate) fn parse_header_params(s: &str) -> Result<Params<'_>> {
    let mut out = Params::new();
    let mut rest = trim_lws(s);
    while !rest.is_empty() {
        rest = rest
            .strip_prefix(';')
            .ok_or(ParseError::malformed("expected ';' before parameter"))?;
        rest = trim_lws_start(rest);
        let name_len = rest.bytes().take_while(|&b| is_token_char(b)).count();
        let (name, after) = rest.split_at(name_len);
        if name.is_empty() {
            return Err(ParseError::malformed("empty parameter"));
        }
        rest = trim_lws_start(after);
        let mut value = None;
        if let Some(v) = rest.strip_prefix('=') {
            let v = trim_lws_start(v);
            let len = if v.starts_with('"') {
                quoted_len(v)?
            } else {
                let len = v
                    .bytes()
                    .take_while(|&b| is_token_char(b) || matches!(b, b':' | b'[' | b']'))
                    .count();
                if len == 0 {
                    return Err(ParseError::malformed("empty parameter value"));
                }
                len
            };
            let (val, after) = v.split_at(len);
            value = Some(val);
            rest = trim_lws_start(after);
        }
        out.push(Param { name, value });
    }
    Ok(out)
}

/// Linear white space, including the CR LF of a folded header line.
pub(crate) fn is_lws_char(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}
