//! `parse_with` as it was before its line scan was fused, kept for the tests only: the
//! fast one must give exactly what this one gives, errors included. The start line's parser
//! likewise.

use std::borrow::Cow;

use super::{
    parse_version, Framing, Header, Message, RequestLine, StartLine, StatusLine, UriFacts,
};
use crate::error::{ErrorKind, ParseError, Result};
use crate::header::HeaderName;
use crate::syntax::{is_token, parse_digits, split_once_byte, trim_lws};
use crate::uri::parse_uri;
use crate::Limits;

/// Parses a message; returns it and the number of bytes it used (for streams,
/// the next message starts there).
pub(super) fn parse_with<'a>(
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
    let head_end;
    loop {
        let Some(nl) = bytes.get(pos..).and_then(|r| memchr::memchr(b'\n', r)) else {
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
        let next = pos + nl + 1;
        let content_end = if nl > 0 && bytes.get(pos + nl - 1) == Some(&b'\r') {
            pos + nl - 1
        } else {
            pos + nl
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
    if memchr::memchr(b'\r', start_line.as_bytes()).is_some() {
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
        let name = name.trim_end_matches([' ', '\t']);
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
    for &(s, e, n) in iter {
        let line = text(s, e);
        if memchr::memchr(b'\r', line.as_bytes()).is_some() {
            return Err(ParseError::malformed("bare CR in header"));
        }
        if line.starts_with([' ', '\t']) {
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

fn parse_start_line(line: &str) -> Result<(StartLine<'_>, Option<UriFacts>)> {
    if line.starts_with("SIP/") || line.starts_with("sip/") {
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        parse_version(version)?;
        let code = parts.next().unwrap_or("");
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::malformed("status code must be 3 digits"));
        }
        let code: u16 = code
            .parse()
            .map_err(|_| ParseError::malformed("bad status code"))?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::malformed("status code out of range"));
        }
        let reason = parts.next().unwrap_or("");
        if reason.bytes().any(|b| b < 0x20 && b != b'\t') {
            return Err(ParseError::malformed("control character in reason phrase"));
        }
        let status = StatusLine {
            code,
            reason: Cow::Borrowed(reason),
        };
        return Ok((StartLine::Response(status), None));
    }
    let (method, rest) = line
        .split_once(' ')
        .ok_or(ParseError::malformed("request line needs three elements"))?;
    let (uri, version) = rest
        .rsplit_once(' ')
        .ok_or(ParseError::malformed("request line needs three elements"))?;
    if !is_token(method) {
        return Err(ParseError::malformed("bad method"));
    }
    if uri.is_empty() || uri.contains([' ', '\t']) || version.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::super::parse_with as fast;
    use super::parse_with as before;
    use crate::message::Framing;
    use crate::test_rng::Rng;
    use crate::Limits;

    fn same(bytes: &[u8], limits: &Limits) {
        for framing in [Framing::Datagram, Framing::Stream] {
            assert_eq!(
                fast(bytes, limits, framing),
                before(bytes, limits, framing),
                "{framing:?} {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    fn torture() -> Vec<Vec<u8>> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/conformance/rfc4475"
        );
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.push(b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n folded\r\nContent-Length: 0\r\n\r\n".to_vec());
        out
    }

    /// The RFC 4475 messages, and each with a CR, an LF, a CR LF, a space, a tab, a colon
    /// or a letter put in, a byte taken out, or cut short, at every third position of its
    /// head (and a sample beyond), parse the same, with the default limits and with tight ones.
    #[test]
    fn messages_and_their_mutations_parse_as_before() {
        let messages = torture();
        assert!(messages.len() > 40, "the RFC 4475 messages are missing");
        let tight = Limits {
            max_message: 300,
            max_header_len: 40,
            max_headers: 6,
            ..Limits::default()
        };
        let inserts: [&[u8]; 7] = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"a"];
        let mut n = 0;
        for m in &messages {
            let head = m
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(m.len(), |i| i + 4);
            for at in (0..=head.min(m.len()))
                .step_by(3)
                .chain((head..m.len()).step_by(17))
            {
                for ins in inserts {
                    let mut v = m.clone();
                    v.splice(at..at, ins.iter().copied());
                    same(&v, &Limits::default());
                    same(&v, &tight);
                    n += 1;
                }
                if at < m.len() {
                    let mut v = m.clone();
                    v.remove(at);
                    same(&v, &Limits::default());
                }
                same(m.get(..at).unwrap_or_default(), &Limits::default());
            }
            same(m, &tight);
        }
        assert!(n > 15_000, "{n}");
    }

    /// Random heads over the bytes that steer the line scan.
    #[test]
    fn random_heads_parse_as_before() {
        let pieces: [&[u8]; 12] = [
            b"\r",
            b"\n",
            b"\r\n",
            b" ",
            b"\t",
            b":",
            b"Via",
            b"To: <sip:a@b>",
            b"l: 2",
            b"SIP/2.0 200 OK",
            b"OPTIONS sip:a@b SIP/2.0",
            b"\xc3\xa9",
        ];
        let mut rng = Rng::new(4475);
        for _ in 0..50_000 {
            let mut v = Vec::new();
            for _ in 0..rng.below(16) {
                v.extend_from_slice(rng.pick(&pieces));
            }
            same(&v, &Limits::default());
        }
    }
}
