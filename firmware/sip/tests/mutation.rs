//! Deterministic mutation test: a fixed-seed PRNG mutates RFC 4475 messages and
//! SDP bodies (byte edits, splices of SIP-significant tokens) and feeds them to
//! every entry point. Nothing may panic, and whatever parses must re-serialize
//! to something that parses to the same bytes. Bounded by an iteration count
//! (a few seconds in debug builds); the cargo-fuzz targets in `fuzz/` go further.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers outside #[test] fns

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/conformance/rfc4475"
);
const ITERATIONS: usize = 60_000;

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n ",
    b" ",
    b"\t",
    b",",
    b";",
    b":",
    b"\"",
    b"\\",
    b"<",
    b">",
    b"@",
    b"%",
    b"%00",
    b"=",
    b"?",
    b"[",
    b"]",
    b"/",
    b"SIP/2.0",
    b"Via: ",
    b"v: SIP/2.0/UDP h;branch=",
    b"Content-Length: 99999999999999999999\r\n",
    b"l: 0\r\n",
    b"\r\n\r\n",
    b"sip:",
    b"tel:+1",
    b"m=audio 0 RTP/AVP 0\r\n",
    b"c=IN IP6 ::1\r\n",
    b"a=rtcp:65535\r\n",
    b"\xff\xfe",
    b"0",
    b"4294967296",
    b"-1",
];

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = rng.next() as u8;
            }
            1 if at < v.len() => {
                let end = (at + 1 + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            2 | 3 => {
                let tok = TOKENS[rng.below(TOKENS.len())];
                v.splice(at..at, tok.iter().copied());
            }
            4 if at < v.len() => {
                let end = (at + 1 + rng.below(64)).min(v.len());
                let chunk = v[at..end].to_vec();
                let to = rng.below(v.len() + 1);
                v.splice(to..to, chunk);
            }
            _ => v.truncate(at),
        }
    }
    v
}

/// The RFC 4475 torture messages, in a fixed order.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(DIR)
        .expect("conformance dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("dat"))
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    seeds.sort();
    seeds
}

#[test]
fn mutated_messages_never_panic() {
    let seeds = seeds();
    assert!(!seeds.is_empty());
    let mut rng = XorShift(0x5EED_CA11_6A7E_0001);
    for _ in 0..ITERATIONS {
        let seed = &seeds[rng.below(seeds.len())];
        let m = mutate(&mut rng, seed);
        callgate_sip::exercise(&m);
    }
}

/// Streams of two mutated messages, framed whole and in chunks of random sizes
/// (`callgate_sip::exercise_stream`: the same checks as the `stream` fuzz target).
#[test]
fn mutated_streams_frame_alike() {
    let seeds = seeds();
    let mut rng = XorShift(0x5EED_CA11_6A7E_0002);
    for _ in 0..ITERATIONS / 4 {
        let ctl = (rng.next() as u32).to_le_bytes();
        let (i, j) = (rng.below(seeds.len()), rng.below(seeds.len()));
        let a = mutate(&mut rng, &seeds[i]);
        let b = mutate(&mut rng, &seeds[j]);
        callgate_sip::exercise_stream(&[ctl.as_slice(), &a, b"\r\n", &b].concat());
    }
}
