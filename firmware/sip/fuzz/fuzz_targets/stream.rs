//! Frame arbitrary bytes as a TCP stream, whole and in arbitrary chunks (the input's first
//! bytes pick the limits and chunk sizes): no panic, chunked framing equals whole framing,
//! and the parser ends every framed message where the framer did
//! (`callgate_sip::exercise_stream`, which the mutation test runs too).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| callgate_sip::exercise_stream(data));
