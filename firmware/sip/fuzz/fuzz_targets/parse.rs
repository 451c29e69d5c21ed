//! Parse, validate, judge and re-serialize arbitrary bytes: no panic, and an
//! unedited message serializes to a prefix of its input that parses again.
#![no_main]

use callgate_sip::{parse, parse_with, verdict, Framing, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = verdict(data);
    let _ = parse_with(data, &Limits::default(), Framing::Stream);
    if let Ok(m) = parse(data) {
        let _ = m.validate(&Limits::default());
        let _ = (
            m.vias(),
            m.from(),
            m.to(),
            m.cseq(),
            m.contacts(),
            m.routes(),
        );
        let out = m.serialize();
        assert!(data.starts_with(&out));
        let again = parse(&out).expect("serialized output re-parses");
        assert_eq!(again.serialize(), out);
        let _ = callgate_sip::sdp::parse(m.body()).map(|s| s.media_flows());
    }
});
