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

/// `Message::validate` as it was before it became one pass over the headers: each check
/// through the public accessors, in the order that decides the status code.
fn validate_by_accessors(
    m: &callgate_sip::Message<'_>,
    limits: &callgate_sip::Limits,
) -> Result<(), String> {
    use callgate_sip::{ErrorKind, HeaderName, Uri};
    let err = |kind: ErrorKind, detail: &str| format!("{kind}: {detail}");
    let e = |e: callgate_sip::ParseError| e.to_string();
    for kind in [
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
        HeaderName::MaxForwards,
        HeaderName::ContentType,
        HeaderName::ContentLength,
        HeaderName::Expires,
        HeaderName::Date,
    ] {
        m.single(kind).map_err(e)?;
    }
    let vias = m.vias().map_err(e)?;
    if vias.is_empty() {
        return Err(err(ErrorKind::Malformed, "no Via"));
    }
    if vias.len() > limits.max_vias {
        return Err(err(ErrorKind::TooLarge, "too many Via values"));
    }
    m.from().map_err(e)?;
    m.to().map_err(e)?;
    m.call_id().map_err(e)?;
    let cseq = m.cseq().map_err(e)?;
    m.max_forwards().map_err(e)?;
    m.routes().map_err(e)?;
    m.record_routes().map_err(e)?;
    m.contacts().map_err(e)?;
    m.content_type().map_err(e)?;
    m.require().map_err(e)?;
    m.proxy_require().map_err(e)?;
    m.supported().map_err(e)?;
    m.expires().map_err(e)?;
    if let Some(d) = m.single(HeaderName::Date).map_err(e)? {
        callgate_sip::check_sip_date(d).map_err(e)?;
    }
    if let Some(method) = m.method() {
        if method != cseq.method {
            return Err(err(
                ErrorKind::Malformed,
                "CSeq method does not match request",
            ));
        }
        if let Some(Uri::Sip(u)) = m.request_uri().transpose().map_err(e)? {
            if !u.headers.is_empty() {
                return Err(err(ErrorKind::Malformed, "headers in Request-URI"));
            }
        }
    }
    Ok(())
}

/// The one-pass validation gives the same verdict, error for error, as the checks one by
/// one, on the torture messages and their mutations (more Contact wildcards among them).
#[test]
fn one_pass_validation_agrees_with_the_accessors() {
    let limits = callgate_sip::Limits::default();
    let mut seeds = seeds();
    seeds.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContact: *\r\nContact: <sip:c@d>, *\r\n\r\n".to_vec());
    let mut rng = XorShift(0x5EED_CA11_6A7E_0003);
    let mut checked = 0;
    for i in 0..ITERATIONS / 2 {
        let m = match seeds.get(i) {
            Some(s) => s.clone(),
            None => {
                let j = rng.below(seeds.len());
                mutate(&mut rng, &seeds[j])
            }
        };
        let Ok(msg) = callgate_sip::parse(&m) else {
            continue;
        };
        checked += 1;
        assert_eq!(
            msg.validate(&limits).map_err(|e| e.to_string()),
            validate_by_accessors(&msg, &limits),
            "{}",
            String::from_utf8_lossy(&m)
        );
    }
    assert!(checked > ITERATIONS / 20, "only {checked} parsed");
}
