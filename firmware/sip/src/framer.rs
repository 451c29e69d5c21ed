//! Stream framing (RFC 3261 §18.3): bytes of a TCP connection in, whole messages out
//! ([`StreamFramer`]).

use crate::error::{ErrorKind, ParseError, Result};
use crate::header::HeaderName;
use crate::Limits;

/// Where the framer is in the message it is receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramerPhase {
    /// Between messages: nothing buffered (CR and LF here are keepalives, RFC 5626 §3.5.1,
    /// and are skipped).
    Idle,
    /// A message has started; its header section is not complete yet.
    Head,
    /// The header section is complete; the body is not.
    Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// A message starts at `start`; the end of its header section has been searched for
    /// up to `scan` (a LF at `scan` is looked at again: what follows it was not there yet).
    Head {
        start: usize,
        scan: usize,
    },
    /// The message `start..end` needs `end` bytes in the buffer.
    Body {
        start: usize,
        end: usize,
    },
}

/// Incremental framer of one SIP stream (RFC 3261 §18.3): bytes in, whole messages out.
///
/// It owns the connection's receive buffer. Each byte is looked at a bounded number of
/// times however the bytes arrive: the search for the end of the header section resumes
/// where the previous one stopped, Content-Length is read once when the header section is
/// complete, and the body is only counted. A one-byte drip costs O(1) per byte, not a
/// re-parse of everything buffered.
///
/// What it decides is where a message ends, exactly as [`crate::parse_with`] would with
/// [`crate::Framing::Stream`]: the header section ends at the first empty line (CRLF or a
/// bare LF, as the parser accepts), and the body is Content-Length bytes. It does not
/// parse the message; the caller parses each framed message once.
///
/// ```
/// use callgate_sip::{Limits, StreamFramer};
/// let mut f = StreamFramer::new(Limits::default());
/// let msg = b"OPTIONS sip:a@b SIP/2.0\r\nl: 2\r\n\r\nhi";
/// for chunk in [&b"\r\n\r\n"[..], &msg[..10], &msg[10..]] {
///     f.push(chunk);
/// }
/// assert_eq!(f.next_message()?, Some(&msg[..]));
/// assert_eq!(f.next_message()?, None);
/// assert_eq!(f.keepalive_bytes(), 4);
/// # Ok::<(), callgate_sip::ParseError>(())
/// ```
#[derive(Debug, Clone)]
pub struct StreamFramer {
    limits: Limits,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already handed out or skipped (dropped at the next push).
    consumed: usize,
    state: State,
    /// A framing error is final: the stream has no message boundary any more.
    error: Option<ParseError>,
    keepalive_bytes: u64,
}

/// Capacity a buffer keeps when it runs empty; a larger one (left by a large message) is
/// given back, so an idle connection costs next to nothing.
const KEEP_CAPACITY: usize = 4096;

impl StreamFramer {
    /// A framer enforcing `limits.max_message` on the header section and `limits.max_body`
    /// on the body.
    pub fn new(limits: Limits) -> Self {
        StreamFramer {
            limits,
            buf: Vec::new(),
            consumed: 0,
            state: State::Idle,
            error: None,
            keepalive_bytes: 0,
        }
    }

    /// Appends bytes read from the stream (call [`next_message`](Self::next_message) until
    /// it gives `None` before pushing more, or the buffer keeps the messages).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.consumed > 0 {
            if self.consumed >= self.buf.len() {
                self.buf.clear();
                if self.buf.capacity() > KEEP_CAPACITY {
                    self.buf.shrink_to(KEEP_CAPACITY);
                }
            } else {
                self.buf.drain(..self.consumed);
            }
            let c = self.consumed;
            self.state = match self.state {
                State::Idle => State::Idle,
                State::Head { start, scan } => State::Head {
                    start: start - c,
                    scan: scan - c,
                },
                State::Body { start, end } => State::Body {
                    start: start - c,
                    end: end - c,
                },
            };
            self.consumed = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message (from its first byte to the end of its body; keepalive
    /// CR/LF before it are skipped), `Ok(None)` when more bytes are needed, or the framing
    /// error that ends the stream: header section over `max_message`
    /// ([`ErrorKind::TooLarge`]), Content-Length over `max_body`
    /// ([`ErrorKind::BodyTooLarge`]), Content-Length missing, not a number or given twice
    /// with different values ([`ErrorKind::Malformed`]). After an error every call returns
    /// it again.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>> {
        if let Some(e) = self.error {
            return Err(e);
        }
        loop {
            match self.state {
                State::Idle => {
                    let rest = self.buf.get(self.consumed..).unwrap_or_default();
                    let skip = rest
                        .iter()
                        .take_while(|&&b| b == b'\r' || b == b'\n')
                        .count();
                    self.consumed += skip;
                    self.keepalive_bytes += skip as u64;
                    if self.consumed >= self.buf.len() {
                        return Ok(None);
                    }
                    self.state = State::Head {
                        start: self.consumed,
                        scan: self.consumed,
                    };
                }
                State::Head { start, scan } => match head_end(&self.buf, scan) {
                    Scan::Found { blank, body } => {
                        // The header lines, without the empty line: what the parser limits.
                        if blank - start > self.limits.max_message {
                            return Err(self.fail(ErrorKind::TooLarge, HEAD_TOO_LARGE));
                        }
                        let head = self.buf.get(start..blank).unwrap_or_default();
                        let len = match content_length(head) {
                            Ok(len) => len,
                            Err(e) => return Err(self.fail(e.kind, e.detail)),
                        };
                        if len > self.limits.max_body {
                            return Err(self.fail(ErrorKind::BodyTooLarge, BODY_TOO_LARGE));
                        }
                        self.state = State::Body {
                            start,
                            end: body + len,
                        };
                    }
                    Scan::NotYet { scan } => {
                        // Past this, the empty line can only end a header section that
                        // is too large (it may take 2 more bytes: CRLF).
                        if self.buf.len() - start > self.limits.max_message + 2 {
                            return Err(self.fail(ErrorKind::TooLarge, HEAD_TOO_LARGE));
                        }
                        self.state = State::Head { start, scan };
                        return Ok(None);
                    }
                },
                State::Body { start, end } => {
                    if self.buf.len() < end {
                        return Ok(None);
                    }
                    self.consumed = end;
                    self.state = State::Idle;
                    return Ok(self.buf.get(start..end));
                }
            }
        }
    }

    /// Where the message being received is (call after [`next_message`] gave `None`).
    ///
    /// [`next_message`]: Self::next_message
    pub fn phase(&self) -> FramerPhase {
        match self.state {
            State::Idle => FramerPhase::Idle,
            State::Head { .. } => FramerPhase::Head,
            State::Body { .. } => FramerPhase::Body,
        }
    }

    /// Bytes held that no message has been handed out for yet.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.consumed)
    }

    /// Keepalive bytes (CR, LF between messages) skipped so far.
    pub fn keepalive_bytes(&self) -> u64 {
        self.keepalive_bytes
    }

    fn fail(&mut self, kind: ErrorKind, detail: &'static str) -> ParseError {
        let e = ParseError::new(kind, detail);
        self.error = Some(e);
        e
    }
}

const HEAD_TOO_LARGE: &str = "header section exceeds limit";
const BODY_TOO_LARGE: &str = "body exceeds limit";

enum Scan {
    /// The empty line starts at `blank`; the body at `body`.
    Found { blank: usize, body: usize },
    /// No empty line in `buf`; resume the search at `scan`.
    NotYet { scan: usize },
}

/// Looks for the empty line ending a header section (LF then LF or CRLF) from `from`.
/// A message never starts with CR or LF, so the first LF found ends its start line at the
/// earliest.
fn head_end(buf: &[u8], from: usize) -> Scan {
    let mut i = from;
    loop {
        let Some(nl) = buf
            .get(i..)
            .and_then(|r| r.iter().position(|&b| b == b'\n'))
            .map(|off| i + off)
        else {
            return Scan::NotYet { scan: buf.len() };
        };
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => {
                return Scan::Found {
                    blank: nl + 1,
                    body: nl + 2,
                }
            }
            (Some(b'\r'), Some(b'\n')) => {
                return Scan::Found {
                    blank: nl + 1,
                    body: nl + 3,
                }
            }
            // What follows this LF has not arrived yet: look at it again next time.
            (None, _) | (Some(b'\r'), None) => return Scan::NotYet { scan: nl },
            _ => i = nl + 1,
        }
    }
}

/// Content-Length of a header section (`head`: start line and header lines, each ending
/// in LF), read the way the parser reads it: header lines joined with their folds, the
/// name before the first `:` (long or compact form, any case), the value's digits.
fn content_length(head: &[u8]) -> Result<usize> {
    let mut found: Option<usize> = None;
    // Header lines start after the start line.
    let mut pos = head
        .iter()
        .position(|&b| b == b'\n')
        .map_or(head.len(), |nl| nl + 1);
    let lines = head.get(pos..).unwrap_or_default();
    // The logical header being joined: from its first byte to the end of its last line's
    // content (without the line end).
    let mut cur: Option<(usize, usize)> = None;
    let mut check = |(s, e): (usize, usize)| -> Result<()> {
        let Some(len) = header_content_length(head.get(s..e).unwrap_or_default())? else {
            return Ok(());
        };
        match found {
            Some(prev) if prev != len => Err(ParseError::malformed(
                "Content-Length given twice, differently",
            )),
            _ => {
                found = Some(len);
                Ok(())
            }
        }
    };
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        let (s, e) = (pos, pos + content.len());
        pos += line.len();
        match (content.first(), cur.as_mut()) {
            (Some(b' ' | b'\t'), Some(c)) => c.1 = e,
            _ => {
                if let Some(c) = cur.replace((s, e)) {
                    check(c)?;
                }
            }
        }
    }
    if let Some(c) = cur {
        check(c)?;
    }
    found.ok_or(ParseError::malformed("Content-Length required on streams"))
}

/// `Some(value)` if `line` (one header, folds included) is a Content-Length header.
fn header_content_length(line: &[u8]) -> Result<Option<usize>> {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Ok(None);
    };
    let name = line.get(..colon).unwrap_or_default();
    let name = trim_end(name, b" \t");
    let is_cl = std::str::from_utf8(name)
        .is_ok_and(|n| HeaderName::from_wire(n) == HeaderName::ContentLength);
    if !is_cl {
        return Ok(None);
    }
    let value = trim_end(
        trim_start(line.get(colon + 1..).unwrap_or_default(), b" \t\r\n"),
        b" \t\r\n",
    );
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::malformed("Content-Length is not a number"));
    }
    let mut n: usize = 0;
    for d in value {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .ok_or(ParseError::new(ErrorKind::BodyTooLarge, BODY_TOO_LARGE))?;
    }
    Ok(Some(n))
}

fn trim_start<'a>(mut s: &'a [u8], set: &[u8]) -> &'a [u8] {
    while let Some((first, rest)) = s.split_first() {
        if !set.contains(first) {
            break;
        }
        s = rest;
    }
    s
}

fn trim_end<'a>(mut s: &'a [u8], set: &[u8]) -> &'a [u8] {
    while let Some((last, rest)) = s.split_last() {
        if !set.contains(last) {
            break;
        }
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_with, Framing};

    const INVITE: &[u8] = b"INVITE sip:+15550100200@203.0.113.1 SIP/2.0\r\n\
Via: SIP/2.0/TCP 203.0.113.10:5060;branch=z9hG4bK1\r\n\
Max-Forwards: 70\r\nFrom: <sip:a@203.0.113.10>;tag=1\r\nTo: <sip:b@203.0.113.1>\r\n\
Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\
Content-Length: 10\r\n\r\nv=0\r\ns=-\r\n";
    const OPTIONS: &[u8] = b"OPTIONS sip:b@203.0.113.1 SIP/2.0\r\nl: 0\r\n\r\n";

    /// Every message framed from `chunks`, and the error that ended the stream, if any.
    fn frame_chunks(limits: Limits, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Option<ParseError>) {
        let f = crate::exercise::frame(limits, chunks.iter().copied());
        (f.messages, f.error)
    }

    fn whole(bytes: &[u8]) -> (Vec<Vec<u8>>, Option<ParseError>) {
        frame_chunks(Limits::default(), &[bytes])
    }

    fn bytewise(bytes: &[u8]) -> (Vec<Vec<u8>>, Option<ParseError>) {
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        frame_chunks(Limits::default(), &chunks)
    }

    #[test]
    fn byte_at_a_time_equals_whole() {
        let stream = [b"\r\n\r\n".as_slice(), INVITE, OPTIONS, b"\r\n", INVITE].concat();
        let (w, e) = whole(&stream);
        assert_eq!(e, None);
        assert_eq!(w, vec![INVITE.to_vec(), OPTIONS.to_vec(), INVITE.to_vec()]);
        assert_eq!(bytewise(&stream), (w, None));
    }

    #[test]
    fn several_messages_in_one_chunk_and_a_partial_one() {
        let stream = [INVITE, OPTIONS, INVITE].concat();
        let cut = stream.len() - 5;
        let mut f = StreamFramer::new(Limits::default());
        f.push(&stream[..cut]);
        assert_eq!(f.next_message().unwrap(), Some(INVITE));
        assert_eq!(f.next_message().unwrap(), Some(OPTIONS));
        assert_eq!(f.next_message().unwrap(), None);
        assert_eq!(f.phase(), FramerPhase::Body);
        assert_eq!(f.buffered(), INVITE.len() - 5);
        f.push(&stream[cut..]);
        assert_eq!(f.next_message().unwrap(), Some(INVITE));
        assert_eq!(f.next_message().unwrap(), None);
        assert_eq!((f.phase(), f.buffered()), (FramerPhase::Idle, 0));
    }

    #[test]
    fn keepalives_are_skipped_and_counted() {
        let mut f = StreamFramer::new(Limits::default());
        // RFC 5626 §3.5.1: a CRLFCRLF ping, one byte at a time, then a lone CRLF.
        for b in b"\r\n\r\n\r\n" {
            f.push(&[*b]);
            assert_eq!(f.next_message().unwrap(), None);
            assert_eq!((f.phase(), f.buffered()), (FramerPhase::Idle, 0));
        }
        assert_eq!(f.keepalive_bytes(), 6);
        f.push(OPTIONS);
        f.push(b"\r\n");
        assert_eq!(f.next_message().unwrap(), Some(OPTIONS));
        assert_eq!(f.next_message().unwrap(), None);
        assert_eq!(f.keepalive_bytes(), 8);
    }

    #[test]
    fn the_phase_follows_the_message() {
        let mut f = StreamFramer::new(Limits::default());
        let head_len = INVITE.len() - 10;
        f.push(&INVITE[..1]);
        assert_eq!(f.next_message().unwrap(), None);
        assert_eq!(f.phase(), FramerPhase::Head);
        f.push(&INVITE[1..head_len]);
        assert_eq!(f.next_message().unwrap(), None);
        assert_eq!(f.phase(), FramerPhase::Body);
        f.push(&INVITE[head_len..]);
        assert_eq!(f.next_message().unwrap(), Some(INVITE));
        assert_eq!(f.phase(), FramerPhase::Idle);
    }

    #[test]
    fn a_drip_is_scanned_once() {
        // 60 KiB of header one byte at a time: each push resumes the search where the last
        // one stopped (at most the LF before the new byte is looked at again).
        let mut f = StreamFramer::new(Limits::default());
        f.push(b"INVITE sip:b@203.0.113.1 SIP/2.0\r\n");
        let line = b"X-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        for i in 0..60 * 1024 {
            f.push(&line[i % line.len()..][..1]);
            assert_eq!(f.next_message().unwrap(), None);
            let State::Head { start, scan } = f.state else {
                panic!("not in the header section: {:?}", f.state);
            };
            assert_eq!(start, 0);
            assert!(f.buf.len() - scan <= 2, "scan {scan} of {}", f.buf.len());
        }
    }

    #[test]
    fn content_length_forms() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"OPTIONS sip:b@h SIP/2.0\r\nl: 3\r\n\r\n", b"abc"),
            (
                b"OPTIONS sip:b@h SIP/2.0\r\nCONTENT-LENGTH:3\r\n\r\n",
                b"abc",
            ),
            (b"OPTIONS sip:b@h SIP/2.0\r\nL \t: 003 \r\n\r\n", b"abc"),
            // Folded value.
            (
                b"OPTIONS sip:b@h SIP/2.0\r\ncontent-length:\r\n 3\r\n\r\n",
                b"abc",
            ),
            // Bare LF line ends, as the parser accepts them.
            (b"OPTIONS sip:b@h SIP/2.0\nl: 3\n\n", b"abc"),
            // Equal duplicates frame (the parser then refuses the message).
            (
                b"OPTIONS sip:b@h SIP/2.0\r\nl: 3\r\nContent-Length: 3\r\n\r\n",
                b"abc",
            ),
        ];
        for (head, body) in cases {
            let msg = [head, body].concat();
            let stream = [msg.as_slice(), OPTIONS].concat();
            let (got, err) = whole(&stream);
            assert_eq!(err, None, "{}", String::from_utf8_lossy(head));
            assert_eq!(got, vec![msg.clone(), OPTIONS.to_vec()]);
            assert_eq!(bytewise(&stream), (got, None));
            let parsed = parse_with(&stream, &Limits::default(), Framing::Stream);
            if head.ends_with(b"Content-Length: 3\r\n\r\n") {
                let kind = parsed.map(|(_, used)| used).map_err(|e| e.kind);
                assert_eq!(
                    kind,
                    Err(ErrorKind::Malformed),
                    "the parser refuses duplicates"
                );
            } else {
                assert_eq!(
                    parsed.map(|(_, used)| used),
                    Ok(msg.len()),
                    "the parser agrees"
                );
            }
        }
    }

    #[test]
    fn content_length_errors_end_the_stream() {
        let cases: [(&[u8], ErrorKind); 6] = [
            (
                b"OPTIONS sip:b@h SIP/2.0\r\nVia: x\r\n\r\n",
                ErrorKind::Malformed,
            ),
            (
                b"OPTIONS sip:b@h SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\n",
                ErrorKind::Malformed,
            ),
            (
                b"OPTIONS sip:b@h SIP/2.0\r\nl: -1\r\n\r\n",
                ErrorKind::Malformed,
            ),
            (
                b"OPTIONS sip:b@h SIP/2.0\r\nl:\r\n\r\n",
                ErrorKind::Malformed,
            ),
            (
                b"OPTIONS sip:b@h SIP/2.0\r\nl: 99999999999999999999999\r\n\r\n",
                ErrorKind::BodyTooLarge,
            ),
            (
                b"OPTIONS sip:b@h SIP/2.0\r\nl: 65537\r\n\r\n",
                ErrorKind::BodyTooLarge,
            ),
        ];
        for (head, kind) in cases {
            let stream = [OPTIONS, head, OPTIONS].concat();
            let (got, err) = whole(&stream);
            assert_eq!(
                got,
                vec![OPTIONS.to_vec()],
                "{}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(
                err.map(|e| e.kind),
                Some(kind),
                "{}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(bytewise(&stream), (got, err));
        }
        // The error sticks.
        let mut f = StreamFramer::new(Limits::default());
        f.push(b"OPTIONS sip:b@h SIP/2.0\r\n\r\n");
        let e = f.next_message().unwrap_err();
        f.push(OPTIONS);
        assert_eq!(f.next_message().unwrap_err(), e);
    }

    #[test]
    fn limits_on_head_and_body() {
        let limits = Limits {
            max_message: 64,
            max_body: 8,
            ..Limits::default()
        };
        // Header lines of exactly 64 bytes frame; 65 do not.
        let start = b"OPTIONS sip:b@h SIP/2.0\r\nl: 8\r\n";
        let pad = |n: usize| {
            let mut h = start.to_vec();
            h.extend_from_slice(b"X: ");
            h.resize(n - 2, b'a');
            h.extend_from_slice(b"\r\n");
            h
        };
        let ok = [pad(64).as_slice(), b"\r\n12345678"].concat();
        assert_eq!(frame_chunks(limits, &[&ok]), (vec![ok.clone()], None));
        let parsed = parse_with(&ok, &limits, Framing::Stream).map(|(_, used)| used);
        assert_eq!(
            parsed,
            Ok(ok.len()),
            "the parser takes what the framer takes"
        );
        let big = [pad(65).as_slice(), b"\r\n12345678"].concat();
        for chunks in [vec![big.as_slice()], big.chunks(1).collect()] {
            let (got, err) = frame_chunks(limits, &chunks);
            assert!(got.is_empty());
            assert_eq!(err.map(|e| e.kind), Some(ErrorKind::TooLarge));
        }
        let err = parse_with(&big, &limits, Framing::Stream).map(|(_, u)| u);
        assert_eq!(err.map_err(|e| e.kind), Err(ErrorKind::TooLarge));
        // A header section that never ends is cut off once it cannot fit any more.
        let mut f = StreamFramer::new(limits);
        let mut fed = 0;
        let err = loop {
            f.push(b"a");
            fed += 1;
            if let Err(e) = f.next_message() {
                break e;
            }
        };
        assert_eq!((err.kind, fed), (ErrorKind::TooLarge, 64 + 3));
        // Body: 8 frames, 9 does not.
        let body9 = b"OPTIONS sip:b@h SIP/2.0\r\nl: 9\r\n\r\n123456789";
        let (_, err) = frame_chunks(limits, &[body9]);
        assert_eq!(err.map(|e| e.kind), Some(ErrorKind::BodyTooLarge));
    }

    #[test]
    fn an_emptied_buffer_gives_back_large_capacity() {
        let mut f = StreamFramer::new(Limits::default());
        let big = [
            b"OPTIONS sip:b@h SIP/2.0\r\nl: 60000\r\n\r\n".as_slice(),
            &[b'x'; 60_000],
        ]
        .concat();
        f.push(&big);
        assert_eq!(f.next_message().unwrap().map(<[u8]>::len), Some(big.len()));
        f.push(b"\r\n");
        assert!(f.buf.capacity() <= KEEP_CAPACITY.max(2));
    }

    // ------------------------------------------------------------ property-style

    use crate::test_rng::Rng;

    /// A valid message: random headers (long and compact Content-Length, any case, folds,
    /// CRLF or bare LF line ends) and a body of random bytes (CRLFCRLF included).
    fn random_message(rng: &mut Rng) -> Vec<u8> {
        let eol: &[u8] = if rng.index(4) == 0 { b"\n" } else { b"\r\n" };
        let body: Vec<u8> = (0..rng.index(300))
            .map(|_| [b'a', b'\r', b'\n', b' ', b':', b'0'][rng.index(6)])
            .collect();
        let mut m = Vec::new();
        m.extend_from_slice(if rng.index(2) == 0 {
            b"INVITE sip:+15550100200@203.0.113.1 SIP/2.0".as_slice()
        } else {
            b"SIP/2.0 200 OK".as_slice()
        });
        m.extend_from_slice(eol);
        let cl_at = rng.index(6);
        for i in 0..6 {
            if i == cl_at {
                let name = ["Content-Length", "l", "L", "content-LENGTH"][rng.index(4)];
                let ws = [":", ": ", " :\t", ":  "][rng.index(4)];
                m.extend_from_slice(format!("{name}{ws}").as_bytes());
                if rng.index(5) == 0 {
                    m.extend_from_slice(eol);
                    m.push(b' ');
                }
                m.extend_from_slice(format!("{}", body.len()).as_bytes());
                m.extend_from_slice(eol);
            } else {
                m.extend_from_slice(format!("X-H{i}: v{}", rng.next()).as_bytes());
                if rng.index(5) == 0 {
                    m.extend_from_slice(eol);
                    m.extend_from_slice(b"\tfolded");
                }
                m.extend_from_slice(eol);
            }
        }
        m.extend_from_slice(eol);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn any_split_of_a_valid_stream_yields_its_messages() {
        for seed in 0..400u64 {
            let mut rng = Rng::new(seed);
            let msgs: Vec<Vec<u8>> = (0..1 + rng.index(6))
                .map(|_| random_message(&mut rng))
                .collect();
            let mut stream = Vec::new();
            for m in &msgs {
                for _ in 0..rng.index(3) {
                    stream.extend_from_slice([b"\r\n".as_slice(), b"\n"][rng.index(2)]);
                }
                stream.extend_from_slice(m);
            }
            let mut chunks = Vec::new();
            let mut rest = stream.as_slice();
            while !rest.is_empty() {
                let max = if rng.index(3) == 0 { 4 } else { 200 };
                let n = 1 + rng.index(max);
                let (c, r) = rest.split_at(n.min(rest.len()));
                chunks.push(c);
                rest = r;
            }
            assert_eq!(
                frame_chunks(Limits::default(), &chunks),
                (msgs.clone(), None),
                "seed {seed}"
            );
            crate::exercise_stream(&[[0u8, seed as u8, 1, 7].as_slice(), &stream].concat());
        }
    }

    #[test]
    fn conformance_messages_frame_like_the_parser() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/conformance/rfc4475"
        );
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "dat") {
                let bytes = std::fs::read(&p).unwrap();
                for ctl in [[0u8, 0, 0, 0], [0, 5, 63, 1], [1, 2, 3, 4], [255, 9, 9, 9]] {
                    crate::exercise_stream(&[ctl.as_slice(), &bytes, &bytes].concat());
                }
                n += 1;
            }
        }
        assert!(n >= 40, "conformance messages found: {n}");
    }
}
