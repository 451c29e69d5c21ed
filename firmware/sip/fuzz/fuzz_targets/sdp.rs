//! Parse arbitrary bytes as SDP and compute the media flows: no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = callgate_sip::sdp::parse(data) {
        let _ = s.media_flows();
    }
});
