//! Lexical helpers shared by the SIP and URI grammars (RFC 3261 §25).

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::{ParseError, Result};

/// Linear white space, including the CR LF of a folded header line.
pub(crate) fn is_lws_byte(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `s` without linear white space at either end (by bytes: a char-set pattern decodes
/// every char first, and this runs on every header value).
pub(crate) fn trim_lws(s: &str) -> &str {
    let b = s.as_bytes();
    let Some(start) = b.iter().position(|c| !is_lws_byte(c)) else {
        return "";
    };
    let end = b
        .iter()
        .rposition(|c| !is_lws_byte(c))
        .map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or("")
}

/// `s` without linear white space at its start.
pub(crate) fn trim_lws_start(s: &str) -> &str {
    let start = s
        .as_bytes()
        .iter()
        .position(|c| !is_lws_byte(c))
        .unwrap_or(s.len());
    s.get(start..).unwrap_or("")
}

/// Character classes of the SIP and URI grammars, one bit each, looked up by byte: one
/// load per character on the hot path instead of a scan of the class's punctuation.
pub(crate) mod class {
    /// RFC 3261 `token`.
    pub(crate) const TOKEN: u8 = 1;
    /// RFC 3261 `unreserved`.
    pub(crate) const UNRESERVED: u8 = 2;
    /// Characters allowed anywhere in a URI we accept (RFC 2396 `uric` plus `%`, `#`).
    pub(crate) const URIC: u8 = 4;
    /// A SIP URI's user part (`user-unreserved` and `unreserved`, `%` apart).
    pub(crate) const USER: u8 = 8;
    /// A SIP URI's password.
    pub(crate) const PASSWORD: u8 = 16;
    /// A SIP URI parameter's name or value (`paramchar`, `%` apart).
    pub(crate) const PARAM: u8 = 32;
    /// A SIP URI header's name or value (`hnv-unreserved` and `unreserved`, `%` apart).
    pub(crate) const HEADER: u8 = 64;

    const fn in_set(b: u8, set: &[u8]) -> bool {
        let mut i = 0;
        while i < set.len() {
            if set[i] == b {
                return true;
            }
            i += 1;
        }
        false
    }

    const fn table() -> [u8; 256] {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            let b = i as u8;
            let alnum = b.is_ascii_alphanumeric();
            let unreserved = alnum || in_set(b, b"-_.!~*'()");
            let mut c = 0;
            if alnum || in_set(b, b"-.!%*_+`'~") {
                c |= TOKEN;
            }
            if unreserved {
                c |= UNRESERVED;
            }
            if unreserved || in_set(b, b";/?:@&=+$,%#[]") {
                c |= URIC;
            }
            if unreserved || in_set(b, b"&=+$,;?/") {
                c |= USER;
            }
            if unreserved || in_set(b, b"&=+$,") {
                c |= PASSWORD;
            }
            if unreserved || in_set(b, b"[]/:&+$") {
                c |= PARAM;
            }
            if unreserved || in_set(b, b"[]/?:+$") {
                c |= HEADER;
            }
            t[i] = c;
            i += 1;
        }
        t
    }

    static TABLE: [u8; 256] = table();

    /// Is `b` in `class` (one of the constants above)?
    #[inline]
    pub(crate) fn is(b: u8, class: u8) -> bool {
        TABLE.get(usize::from(b)).is_some_and(|c| c & class != 0)
    }
}

/// RFC 3261 `token` character.
#[inline]
pub(crate) fn is_token_char(b: u8) -> bool {
    class::is(b, class::TOKEN)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// Where the ASCII byte `d` first occurs in `s`. A plain loop: the fields of a SIP message
/// are short, and `str::find(char)`'s memchr pays a setup on every call that costs more
/// than the scan.
#[inline]
pub(crate) fn find_byte(s: &str, d: u8) -> Option<usize> {
    s.bytes().position(|b| b == d)
}

/// `s.split_once(d)` for an ASCII `d`, by [`find_byte`].
#[inline]
pub(crate) fn split_once_byte(s: &str, d: u8) -> Option<(&str, &str)> {
    let i = find_byte(s, d)?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// `s.split(d)` for an ASCII `d`, by [`find_byte`].
pub(crate) fn split_byte(s: &str, d: u8) -> SplitByte<'_> {
    SplitByte { rest: Some(s), d }
}

/// The iterator of [`split_byte`].
pub(crate) struct SplitByte<'a> {
    rest: Option<&'a str>,
    d: u8,
}

impl<'a> Iterator for SplitByte<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let r = self.rest?;
        match split_once_byte(r, self.d) {
            Some((piece, after)) => {
                self.rest = Some(after);
                Some(piece)
            }
            None => {
                self.rest = None;
                Some(r)
            }
        }
    }
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
    if find_byte(s, b'%').is_none() {
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
        // Jumps from one byte that matters to the next (memchr's vector search): inside
        // `<...>` only the closing `>`; outside, a quote, a `<` or the delimiter. The
        // other bytes change nothing, so this is the byte-by-byte walk, faster.
        loop {
            let rest = b.get(i..).unwrap_or_default();
            let found = if in_angle {
                memchr::memchr(b'>', rest)
            } else {
                memchr::memchr3(b'"', b'<', self.delim, rest)
            };
            let Some(off) = found else { break };
            i += off;
            match b.get(i) {
                Some(b'>') if in_angle => in_angle = false,
                Some(b'"') if !in_angle => {
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
                Some(b'<') => in_angle = true,
                Some(&c) if c == self.delim && !in_angle => {
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

impl Host<'_> {
    /// Appends the host as its `Display` writes it (a name as written, IPv6 in brackets),
    /// without the formatting machinery: a proxy writes hosts into nearly every message it
    /// sends, and `Ipv4Addr`'s `Display` alone was 2% of the proxy core's instructions.
    pub fn push_to(&self, out: &mut String) {
        match *self {
            Host::Name(n) => out.push_str(n),
            Host::Ipv4(a) => push_ipv4(out, a),
            Host::Ipv6(a) => {
                use std::fmt::Write as _;
                let _ = write!(out, "[{a}]");
            }
        }
    }
}

/// Appends a dotted quad, as `Ipv4Addr`'s `Display` writes it.
pub fn push_ipv4(out: &mut String, a: Ipv4Addr) {
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_decimal(out, u16::from(o));
    }
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut String, n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[i..].iter().for_each(|&d| out.push(char::from(d)));
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

/// Parses `host` (RFC 3261 `host`): an IPv6 reference, a dotted quad when the host is
/// made of digits and dots only, else a host name (labels of letters, digits and inner
/// hyphens, one trailing dot allowed). The name is checked in the same pass that looks for
/// a non-digit: hosts are parsed in every Via, Contact, Route and Record-Route of a call.
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
    let mut digits_and_dots = true;
    let mut name_ok = true;
    // The current label's length and its last byte.
    let (mut label, mut last) = (0usize, b'.');
    for &c in s.as_bytes() {
        match c {
            b'.' => {
                // A label ends: it must not be empty nor end with '-'.
                name_ok &= label > 0 && last != b'-';
                label = 0;
            }
            b'0'..=b'9' => label += 1,
            b'-' => {
                digits_and_dots = false;
                name_ok &= label > 0;
                label += 1;
            }
            c if c.is_ascii_alphabetic() => {
                digits_and_dots = false;
                label += 1;
            }
            _ => return Err(ParseError::malformed("bad host name")),
        }
        last = c;
    }
    if digits_and_dots {
        return parse_ipv4(s)
            .map(Host::Ipv4)
            .ok_or(ParseError::malformed("bad IPv4 address"));
    }
    // The last label must not end with '-' (after one trailing dot there is none: the
    // loop checked the label before it).
    name_ok &= last != b'-';
    if !name_ok {
        return Err(ParseError::malformed("bad host name"));
    }
    Ok(Host::Name(s))
}

/// A dotted quad as `str::parse::<Ipv4Addr>` takes it (four decimal octets up to 255, no
/// leading zeros, nothing else), in one pass: std's general parser costs several times
/// more, and every Via, Contact and Record-Route of a call holds an address.
fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut n = 0;
    // The current octet: its value, its digits, whether it started with '0'.
    let (mut v, mut digits, mut zero) = (0u16, 0u8, false);
    for &c in s.as_bytes() {
        if c == b'.' {
            if digits == 0 {
                return None;
            }
            *octets.get_mut(n)? = u8::try_from(v).ok()?;
            n += 1;
            (v, digits) = (0, 0);
        } else if c.is_ascii_digit() {
            if digits == 0 {
                zero = c == b'0';
            } else if zero || digits == 3 {
                return None;
            }
            v = v * 10 + u16::from(c - b'0');
            digits += 1;
        } else {
            return None;
        }
    }
    if digits == 0 || n != 3 {
        return None;
    }
    *octets.get_mut(n)? = u8::try_from(v).ok()?;
    Some(Ipv4Addr::from(octets))
}

/// Parses `host [":" port]`.
pub(crate) fn parse_hostport(s: &str) -> Result<(Host<'_>, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        match find_byte(s, b']') {
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
        match split_once_byte(s, b':') {
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

/// A port: one to five digits (leading zeros allowed, as `str::parse` allows them), at
/// most 65535.
pub(crate) fn parse_port(p: &str) -> Result<u16> {
    if p.is_empty() || p.len() > 5 {
        return Err(ParseError::malformed("bad port"));
    }
    let mut v = 0u32;
    for &c in p.as_bytes() {
        if !c.is_ascii_digit() {
            return Err(ParseError::malformed("bad port"));
        }
        v = v * 10 + u32::from(c - b'0');
    }
    u16::try_from(v).map_err(|_| ParseError::malformed("port out of range"))
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

#[cfg(test)]
mod tests {
    use super::{class, parse_ipv4, quoted_len, split_top, trim_lws, trim_lws_start};
    use crate::error::Result;
    use std::net::Ipv4Addr;

    /// [`split_top`] as it was written first: one byte at a time.
    fn split_top_bytewise(s: &str, delim: u8) -> Vec<Result<&str>> {
        let b = s.as_bytes();
        let (mut out, mut start, mut i, mut in_angle) = (Vec::new(), 0, 0, false);
        while let Some(&c) = b.get(i) {
            match c {
                b'"' if !in_angle => match quoted_len(&s[i..]) {
                    Ok(n) => {
                        i += n;
                        continue;
                    }
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                },
                b'<' => in_angle = true,
                b'>' => in_angle = false,
                c if c == delim && !in_angle => {
                    out.push(Ok(&s[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        out.push(Ok(&s[start..]));
        out
    }

    /// Every string of up to six bytes over the bytes that matter (and two that do not)
    /// splits exactly as the byte-by-byte walk splits it, errors included.
    #[test]
    fn split_top_splits_as_the_bytewise_walk_does() {
        const ALPHABET: &[u8] = b"a,;\"<>\\";
        let mut n = 0;
        for len in 0..=6u32 {
            for mut k in 0..ALPHABET.len().pow(len) {
                let mut s = String::new();
                for _ in 0..len {
                    s.push(char::from(ALPHABET[k % ALPHABET.len()]));
                    k /= ALPHABET.len();
                }
                for delim in [b',', b';'] {
                    let fast: Vec<_> = split_top(&s, delim).collect();
                    assert_eq!(fast, split_top_bytewise(&s, delim), "{s:?} at {delim}");
                    n += 1;
                }
            }
        }
        assert_eq!(n, 2 * (0..=6).map(|l| ALPHABET.len().pow(l)).sum::<usize>());
    }

    /// The dotted-quad parser takes exactly what std's does.
    #[test]
    fn ipv4_parses_as_std_does() {
        let mut cases: Vec<String> = [
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.04",
            "1..2.3",
            ".1.2.3",
            "1.2.3.",
            "1.2.3.4 ",
            "1.2.3.-4",
            "1.2.3.1000",
            "192.0.2.10",
            "10.0.0.1",
            "",
            ".",
            "0.0.0.00",
            "9.99.199.249",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every string of up to 7 characters over digits and dots near the edges.
        let alphabet = ['0', '1', '2', '5', '6', '9', '.'];
        let mut frontier = vec![String::new()];
        for _ in 0..7 {
            let mut next = Vec::new();
            for p in &frontier {
                for c in alphabet {
                    next.push(format!("{p}{c}"));
                }
            }
            cases.extend(next.iter().cloned());
            frontier = next;
        }
        for c in &cases {
            assert_eq!(parse_ipv4(c), c.parse::<Ipv4Addr>().ok(), "{c:?}");
        }
    }

    #[test]
    fn lws_trims_as_the_char_pattern_did() {
        for s in [
            "",
            " ",
            " \t\r\n",
            "a",
            " a ",
            "\ta b\r\n",
            "é ",
            " é",
            "a\u{a0}",
        ] {
            let lws = [' ', '\t', '\r', '\n'];
            assert_eq!(trim_lws(s), s.trim_matches(lws), "{s:?}");
            assert_eq!(trim_lws_start(s), s.trim_start_matches(lws), "{s:?}");
        }
    }

    /// The table says what the grammar's sets say, byte for byte.
    #[test]
    fn the_class_table_matches_the_grammar_sets() {
        let sets: [(u8, &[u8]); 7] = [
            (class::TOKEN, b"-.!%*_+`'~"),
            (class::UNRESERVED, b"-_.!~*'()"),
            (class::URIC, b"-_.!~*'();/?:@&=+$,%#[]"),
            (class::USER, b"-_.!~*'()&=+$,;?/"),
            (class::PASSWORD, b"-_.!~*'()&=+$,"),
            (class::PARAM, b"-_.!~*'()[]/:&+$"),
            (class::HEADER, b"-_.!~*'()[]/?:+$"),
        ];
        for b in 0..=255u8 {
            for (c, punct) in sets {
                let want = b.is_ascii_alphanumeric() || punct.contains(&b);
                assert_eq!(class::is(b, c), want, "byte {b:#04x}, class {c}");
            }
        }
    }
}
