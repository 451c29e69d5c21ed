//! The URI and host parsers as they were before they were fused into fewer passes, kept
//! for the tests only: the fast ones must give exactly what these give, errors included.

use crate::error::{ParseError, Result};
use crate::syntax::{
    check_escaped, class, find_byte, split_byte, split_once_byte, Host, Param, Params,
};
use crate::uri::{AbsoluteUri, SipUri, Uri};
use std::net::{Ipv4Addr, Ipv6Addr};

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

pub(crate) fn parse_uri(s: &str) -> Result<Uri<'_>> {
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
        crate::uri::parse_tel(s, rest).map(Uri::Tel)
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
    let (before_headers, headers_part) = match split_once_byte(hostpart, b'?') {
        Some((a, h)) => (a, Some(h)),
        None => (hostpart, None),
    };
    let mut segs = split_byte(before_headers, b';');
    let hostport = segs.next().unwrap_or("");
    if find_byte(hostport, b'@').is_some() {
        return Err(ParseError::malformed("'@' in URI host"));
    }
    let (host, port) = parse_hostport(hostport)?;
    let mut params = Params::new();
    for seg in segs {
        let (name, value) = match split_once_byte(seg, b'=') {
            Some((n, v)) => (n, Some(v)),
            None => (seg, None),
        };
        let ok = !name.is_empty()
            && check_escaped(name, is_param_char)
            && value.is_none_or(|v| !v.is_empty() && check_escaped(v, is_param_char));
        if !ok {
            return Err(ParseError::malformed("bad URI parameter"));
        }
        params.push(Param { name, value });
    }
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

fn parse_host(s: &str) -> Result<Host<'_>> {
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
        return parse_ipv4(s)
            .map(Host::Ipv4)
            .ok_or(ParseError::malformed("bad IPv4 address"));
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    for label in split_byte(name, b'.') {
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

fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = split_byte(s, b'.');
    for o in &mut octets {
        let p = parts.next()?.as_bytes();
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p.first() == Some(&b'0')) {
            return None;
        }
        let mut v: u16 = 0;
        for &d in p {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u16::from(d - b'0');
        }
        *o = u8::try_from(v).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

fn parse_hostport(s: &str) -> Result<(Host<'_>, Option<u16>)> {
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

fn parse_port(p: &str) -> Result<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::malformed("bad port"));
    }
    p.parse::<u16>()
        .map_err(|_| ParseError::malformed("port out of range"))
}

#[cfg(test)]
mod tests {
    use crate::test_rng::Rng;

    fn same(s: &str) {
        assert_eq!(crate::uri::parse_uri(s), super::parse_uri(s), "{s:?}");
        assert_eq!(
            crate::syntax::parse_hostport(s),
            super::parse_hostport(s),
            "hostport {s:?}"
        );
    }

    /// Every tail of up to four bytes over the bytes that steer the SIP URI grammar, after
    /// each of the prefixes that reach its parts (user, host, parameters, headers), parses
    /// to the same URI or the same error.
    #[test]
    fn sip_uris_parse_as_the_reference_parses_them() {
        const ALPHABET: &[u8] = b"a1.-@;=?&%:[]0F";
        let prefixes = [
            "sip:",
            "sips:u@",
            "sip:u@h",
            "sip:u@1.2.3.4",
            "sip:u@h;p",
            "sip:u@h;p=v",
            "sip:h:5",
            "sip:u@[::1]",
            "sip:u:p",
        ];
        let mut n = 0;
        for prefix in prefixes {
            for len in 0..=4u32 {
                for mut k in 0..ALPHABET.len().pow(len) {
                    let mut s = prefix.to_string();
                    for _ in 0..len {
                        s.push(char::from(ALPHABET[k % ALPHABET.len()]));
                        k /= ALPHABET.len();
                    }
                    same(&s);
                    n += 1;
                }
            }
        }
        assert_eq!(n, 9 * (0..=4).map(|l| ALPHABET.len().pow(l)).sum::<usize>());
    }

    /// Longer random URIs built from the grammar's pieces, valid and broken alike.
    #[test]
    fn random_uris_parse_as_the_reference_parses_them() {
        let pieces = [
            "sip:",
            "sips:",
            "SIP:",
            "tel:",
            "x:",
            "alice",
            "+1555",
            "%41",
            "%4",
            "%zz",
            ":",
            "@",
            "pw",
            "example.com",
            "a-b.c",
            "-a",
            "a-",
            "a..b",
            "b.",
            "192.0.2.10",
            "01.2.3.4",
            "256.1.1.1",
            "1.2.3",
            "[2001:db8::1]",
            "[::1",
            ":5060",
            ":65536",
            ":0",
            ";",
            ";lr",
            ";transport=udp",
            ";x=",
            ";=y",
            ";a=b=c",
            "?",
            "?h=v",
            "&k=",
            "&",
            "=",
            ".",
            "é",
            " ",
            "<",
            ">",
        ];
        let mut rng = Rng::new(15);
        for _ in 0..100_000 {
            let mut s = String::new();
            for _ in 0..rng.below(9) {
                s.push_str(rng.pick(&pieces));
            }
            same(&s);
        }
    }
}
