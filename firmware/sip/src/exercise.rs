//! The routines that drive every entry point of the codec with arbitrary bytes, shared by
//! the fuzz targets, the mutation test and the RFC 4475 no-panic test, so all of them check
//! the same things.

use crate::{
    parse, parse_with, sdp, verdict, ErrorKind, FramerPhase, Framing, Limits, ParseError,
    StreamFramer,
};

/// Parses, judges, validates and re-serializes `bytes` (as a SIP message and as SDP).
/// Panics only when an invariant breaks: an unedited message must serialize to a prefix
/// of its input that parses again to the same bytes.
#[doc(hidden)]
pub fn exercise(bytes: &[u8]) {
    let _ = verdict(bytes);
    let _ = parse_with(bytes, &Limits::default(), Framing::Stream);
    if let Ok(m) = parse(bytes) {
        let _ = m.validate(&Limits::default());
        let _ = (
            m.vias(),
            m.from(),
            m.to(),
            m.cseq(),
            m.contacts(),
            m.routes(),
            m.request_uri(),
        );
        let out = m.serialize();
        assert!(
            bytes.starts_with(&out),
            "serialization is a prefix of the input"
        );
        let again = match parse(&out) {
            Ok(again) => again,
            Err(e) => panic!("serialized output does not re-parse: {e}"),
        };
        assert_eq!(again.serialize(), out, "serialization is stable");
        let _ = sdp::parse(m.body()).map(|s| s.media_flows());
    }
    let _ = sdp::parse(bytes).map(|s| s.media_flows());
}

/// Frames `data` as a stream with [`StreamFramer`], whole and in chunks: its first byte
/// picks the limits (default or small), the next three the chunk sizes (1 to 64, cycling),
/// the rest is the stream. Panics when an invariant breaks: chunked framing gives exactly
/// what whole-buffer framing gives (messages, error, state); each message is the next
/// slice of the stream after keepalive CR/LF only; and the parser ends each message
/// exactly where the framer did (or rejects it for another reason than missing bytes).
#[doc(hidden)]
pub fn exercise_stream(data: &[u8]) {
    let (ctl, stream) = data.split_at(data.len().min(4));
    let limits = match ctl.first() {
        Some(b) if b & 1 == 1 => Limits {
            max_message: 64 + usize::from(b >> 1),
            max_body: usize::from(b >> 3),
            ..Limits::default()
        },
        _ => Limits::default(),
    };
    let sizes: Vec<usize> = match ctl.get(1..) {
        Some(s) if !s.is_empty() => s.iter().map(|b| 1 + usize::from(b % 64)).collect(),
        _ => vec![1],
    };
    let whole = frame(limits, [stream]);
    let mut chunks = Vec::new();
    let mut rest = stream;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (c, r) = rest.split_at((*size).min(rest.len()));
        chunks.push(c);
        rest = r;
    }
    let chunked = frame(limits, chunks);
    assert_eq!(whole, chunked, "chunked framing equals whole framing");

    let mut pos = 0;
    for m in &whole.messages {
        let skipped = stream
            .get(pos..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        pos += skipped;
        assert!(
            stream.get(pos..).is_some_and(|s| s.starts_with(m)),
            "a message is the next slice of the stream"
        );
        pos += m.len();
        match parse_with(m, &limits, Framing::Stream) {
            Ok((_, used)) => assert_eq!(used, m.len(), "the parser ends it where the framer did"),
            Err(e) => assert_ne!(
                e.kind,
                ErrorKind::Incomplete,
                "the parser wants no more bytes"
            ),
        }
    }
}

/// What framing a stream pushed in `chunks` gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Framed {
    pub messages: Vec<Vec<u8>>,
    pub error: Option<ParseError>,
    /// Phase, bytes buffered and keepalive bytes at the end (without an error).
    pub end: Option<(FramerPhase, usize, u64)>,
}

/// Pushes `chunks` into a new framer, taking every message after each push, until the
/// first error.
pub(crate) fn frame<'a>(limits: Limits, chunks: impl IntoIterator<Item = &'a [u8]>) -> Framed {
    let mut f = StreamFramer::new(limits);
    let mut messages = Vec::new();
    for c in chunks {
        f.push(c);
        loop {
            match f.next_message() {
                Ok(Some(m)) => messages.push(m.to_vec()),
                Ok(None) => break,
                Err(e) => {
                    return Framed {
                        messages,
                        error: Some(e),
                        end: None,
                    }
                }
            }
        }
    }
    Framed {
        messages,
        error: None,
        end: Some((f.phase(), f.buffered(), f.keepalive_bytes())),
    }
}
