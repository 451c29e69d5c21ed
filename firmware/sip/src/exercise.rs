//! One routine that drives every entry point of the codec with arbitrary bytes, shared by
//! the fuzz targets, the mutation test and the RFC 4475 no-panic test, so all three check
//! the same things.

use crate::{parse, parse_with, sdp, verdict, Framing, Limits};

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
