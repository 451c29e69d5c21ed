//! Parse, validate, judge and re-serialize arbitrary bytes: no panic, and an unedited
//! message serializes to a prefix of its input that parses again (`callgate_sip::exercise`,
//! the same routine the mutation and RFC 4475 tests run).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| callgate_sip::exercise(data));
