//! # callgate-sip: the SIP message and SDP codec
//!
//! ## What
//!
//! Parsing and serialization of SIP messages (RFC 3261) and SDP bodies (RFC 4566)
//! for the callgate proxy, plus [`verdict`]: what a proxy does with a message
//! that arrives from the network (accept, reject with a status, or drop). The
//! crate does no I/O and keeps no state; transports and transactions feed it
//! bytes.
//!
//! ```
//! let bytes = b"OPTIONS sip:bob@example.com SIP/2.0\r\n\
//! Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\nMax-Forwards: 70\r\n\
//! f: <sip:alice@example.com>;tag=1\r\nt: <sip:bob@example.com>\r\n\
//! i: c1\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";
//! let msg = callgate_sip::parse(bytes)?;
//! assert_eq!(msg.top_via()?.branch(), Some("z9hG4bK1"));
//! assert_eq!(msg.serialize(), bytes); // byte-exact when unedited
//! assert_eq!(callgate_sip::verdict(bytes), callgate_sip::Verdict::Accept);
//! # Ok::<(), callgate_sip::ParseError>(())
//! ```
//!
//! ## Design
//!
//! - **Zero-copy.** [`parse`] frames the message (start line, header lines with
//!   folds, Content-Length, body) and borrows every name, value and the body from
//!   the input. Typed accessors ([`Message::vias`], [`Message::from`],
//!   [`Message::cseq`], [`Message::routes`], ...) parse on demand and also borrow.
//!   Folded lines stay verbatim inside a value; every typed parser treats CRLF+WSP
//!   as LWS. Compact header forms (`v f t i m l c k s e o r u ...`) are recognised
//!   by [`HeaderName::from_wire`].
//! - **Byte-exact output.** Each header keeps its raw line(s); an unedited
//!   message serializes to exactly the bytes it was parsed from (up to the end of
//!   its body). Edits ([`Message::prepend_via`], [`Message::remove_top_via`],
//!   [`Message::decrement_max_forwards`], [`Message::add_record_route`],
//!   [`Message::set_route`], [`Message::remove_top_route`],
//!   [`Message::response_to`]) replace only what they touch.
//! - **Limits.** [`Limits`] bounds the message (64 KiB), header count (128),
//!   header line length (8 KiB), Via values (70) and body (64 KiB). Exceeding one
//!   is [`ErrorKind::TooLarge`] (513) or [`ErrorKind::BodyTooLarge`] (413).
//! - **Errors map to status codes.** [`ParseError::status`]: 400 for syntax,
//!   505 for a SIP-Version other than 2.0, 513/413 for limits. Unknown URI
//!   schemes parse (as [`Uri::Absolute`]) so the caller can answer 416 where the
//!   RFC says so (the Request-URI, RFC 3261 §16.3 step 2).
//! - **Strict on framing, liberal where harmless.** One SP between start-line
//!   elements; Content-Length larger than a datagram is an error, bytes after it
//!   are ignored (RFC 3261 §18.3); repeated single-valued headers are errors;
//!   unknown headers, params, methods and transports pass through untouched.
//! - **Streams are framed incrementally.** [`StreamFramer`] owns a connection's
//!   buffer: bytes in, whole messages out, keepalive CRLFs skipped (RFC 5626
//!   §3.5.1). It resumes its search for the end of the header section where it
//!   stopped and reads Content-Length once, so a drip costs O(new bytes); it
//!   ends the stream on a missing, unreadable or conflicting Content-Length and
//!   on [`Limits`]. It ends messages exactly where [`parse_with`] +
//!   [`Framing::Stream`] would, without parsing them: the caller parses each once.
//! - **No panics on network input.** No `unwrap`/`expect`/indexing outside tests;
//!   `tests/rfc4475.rs` truncates and bit-flips every torture message,
//!   `tests/mutation.rs` runs a seeded mutation loop, and `fuzz/` has cargo-fuzz
//!   targets with a committed corpus.
//!
//! ## RFC 4475 verdicts (`tests/rfc4475.rs`, one reason per row)
//!
//! | section | files | verdict |
//! |---|---|---|
//! | 3.1.1 valid | wsinv intmeth esc01 escnull esc02 lwsdisp longreq dblreq semiuri transports mpart01 unreason noreason | accept |
//! | 3.1.2 invalid requests | badinv01 clerr ncl scalar02 quotbal ltgtruri lwsruri lwsstart trws escruri baddate regbadct badaspec baddn mismatch01 | 400 (strict on every "may be liberal" case) |
//! | | badvers | 505 |
//! | | mismatch02 | 501 (unknown method + CSeq mismatch; RFC prefers it at proxies) |
//! | 3.1.2 invalid responses | scalarlg bigcode | drop |
//! | 3.2 | badbranch | accept (RFC 2543 transaction id) |
//! | 3.3 | insuf multi01 mcl01 | 400 |
//! | | unkscm novelsc | 416 |
//! | | bext01 | 420 |
//! | | zeromf | 483 |
//! | | unksm2 invut regaut01 bcast cparam01 cparam02 regescrt sdp01 | accept (UAS/registrar business, not a proxy's) |
//! | 3.4 | inv2543 | accept |
//!
//! ## SDP
//!
//! [`sdp::parse`] reads v/o/s/c/t/m/a lines; [`sdp::Sdp::media_flows`] gives, per
//! active media line, the RTP and RTCP `SocketAddr`s a pinhole needs (media-level
//! `c=` overrides session level; RTCP is `a=rtcp` or port+1, or the RTP port with
//! `a=rtcp-mux`), or an error for anything a pinhole cannot be taken from exactly
//! (an address that is not an IP literal of its type, multicast, port counts, a
//! malformed `a=rtcp`).
//!
//! ## Current limitations
//!
//! - No I/O, no TLS, no transport selection (RFC 3263).
//! - Header values must be UTF-8 (the grammar only allows UTF-8 text); messages
//!   with other bytes in the header section are rejected with 400.
//! - Multipart bodies, S/MIME, `Authorization` and `Date` beyond the GMT check
//!   are not interpreted. Display names are unescaped on request only.
//! - SDP: no `b=`, `k=`, `r=`, `z=` interpretation; FQDN connection addresses
//!   yield no flow.
//! - The RFC 3261 §17 transaction state machines live in [`transaction`].

mod error;
mod exercise;
mod framer;
mod header;
mod message;
#[cfg(test)]
mod reference;
pub mod sdp;
mod syntax;
#[cfg(test)]
mod test_rng;
mod uri;
mod verdict;

pub mod transaction;

pub use error::{ErrorKind, ParseError};
#[doc(hidden)]
pub use exercise::{exercise, exercise_stream};
pub use framer::{FramerPhase, StreamFramer};
pub use header::{
    check_sip_date, name_addr_uri, parse_cseq, parse_media_type, parse_name_addr, parse_tag,
    parse_token_list, parse_via, CSeq, HeaderName, NameAddr, Via,
};
pub use message::{
    parse, parse_with, reason_phrase, Framing, Header, Message, RequestLine, StartLine, StatusLine,
    KNOWN_METHODS,
};
pub use syntax::{push_decimal, push_ipv4, unescape, unquote, Host, Param, Params};
pub use uri::{parse_uri, AbsoluteUri, SipUri, TelUri, Uri};
pub use verdict::{check, check_with, verdict, verdict_with, Policy, Verdict};

/// Size and count limits applied while parsing untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Whole message (datagram) or header section (stream), bytes. Default 64 KiB.
    pub max_message: usize,
    /// Number of header lines. Default 128.
    pub max_headers: usize,
    /// One header line including folds, bytes. Default 8 KiB.
    pub max_header_len: usize,
    /// Via values across all Via headers. Default 70: Max-Forwards starts at 70
    /// (RFC 3261 §8.1.1.6), so a legitimate request can carry that many (RFC 4475
    /// `longreq` has 34).
    pub max_vias: usize,
    /// Body bytes. Default 64 KiB.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 64 * 1024,
            max_headers: 128,
            max_header_len: 8 * 1024,
            max_vias: 70,
            max_body: 64 * 1024,
        }
    }
}
