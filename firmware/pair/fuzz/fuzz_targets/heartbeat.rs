//! Open arbitrary bytes as a heartbeat datagram under a fixed key, and seal their first 77
//! bytes as a clear header and body to reach the checks behind the tag: no panic, wrong
//! lengths are always `Length`, and whatever opens seals and opens again to the same
//! heartbeat (`callgate_pair::exercise`, which the unit tests run over this corpus too).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| callgate_pair::exercise(data));
