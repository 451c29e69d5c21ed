//! RFC 4475 (SIP torture tests) conformance: every message gets the verdict its
//! section requires of a proxy, and nothing panics on the messages or on
//! truncated / bit-flipped variants of them.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::path::PathBuf;

use callgate_sip::{parse, sdp, verdict, Verdict};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/conformance/rfc4475"
);

use Verdict::{Accept, Drop, Reject};

/// (file, section, expected verdict, reason). Every liberal-vs-strict choice
/// carries its reason.
const EXPECTED: &[(&str, &str, Verdict, &str)] = &[
    // 3.1.1 valid messages: must parse, processed normally.
    (
        "wsinv",
        "3.1.1.1",
        Accept,
        "LWS and folding everywhere the grammar allows it",
    ),
    (
        "intmeth",
        "3.1.1.2",
        Accept,
        "unknown method, odd but legal URI/tokens/quoted-pairs",
    ),
    ("esc01", "3.1.1.3", Accept, "escaped characters in URIs"),
    ("escnull", "3.1.1.4", Accept, "%00 is a legal escape"),
    (
        "esc02",
        "3.1.1.5",
        Accept,
        "'%' in method/branch is a token char; C%6Fntact is an unknown header",
    ),
    (
        "lwsdisp",
        "3.1.1.6",
        Accept,
        "no LWS between display name and '<' is legal",
    ),
    (
        "longreq",
        "3.1.1.7",
        Accept,
        "long values fit our limits (8 KiB/header)",
    ),
    (
        "dblreq",
        "3.1.1.8",
        Accept,
        "first request processed; bytes past Content-Length discarded (RFC 3261 18.3)",
    ),
    ("semiuri", "3.1.1.9", Accept, "';' in the user part"),
    (
        "transports",
        "3.1.1.10",
        Accept,
        "unknown transport tokens in Via",
    ),
    (
        "mpart01",
        "3.1.1.11",
        Accept,
        "multipart body is opaque to a proxy",
    ),
    ("unreason", "3.1.1.12", Accept, "UTF-8 reason phrase"),
    ("noreason", "3.1.1.13", Accept, "empty reason phrase"),
    // 3.1.2 invalid messages: requests rejected, responses dropped.
    (
        "badinv01",
        "3.1.2.1",
        Reject(400),
        "empty Via/Contact params ';;,;,,'",
    ),
    (
        "clerr",
        "3.1.2.2",
        Reject(400),
        "Content-Length larger than the datagram",
    ),
    ("ncl", "3.1.2.3", Reject(400), "negative Content-Length"),
    (
        "scalar02",
        "3.1.2.4",
        Reject(400),
        "CSeq beyond 2**32-1 (Max-Forwards 300 too)",
    ),
    (
        "scalarlg",
        "3.1.2.5",
        Drop,
        "response with overlarge CSeq: dropped",
    ),
    (
        "quotbal",
        "3.1.2.6",
        Reject(400),
        "unterminated quoted string",
    ),
    ("ltgtruri", "3.1.2.7", Reject(400), "Request-URI in <>"),
    (
        "lwsruri",
        "3.1.2.8",
        Reject(400),
        "LWS inside the Request-URI",
    ),
    (
        "lwsstart",
        "3.1.2.9",
        Reject(400),
        "RFC allows ignoring extra SP; we are strict (one SP exactly) so a proxy never \
         forwards or re-interprets an ambiguous start line",
    ),
    (
        "trws",
        "3.1.2.10",
        Reject(400),
        "RFC allows ignoring trailing SP; strict for the same reason as lwsstart",
    ),
    (
        "escruri",
        "3.1.2.11",
        Reject(400),
        "RFC allows ignoring escaped headers in the Request-URI; we reject: a proxy must \
         not forward Request-URI headers (RFC 3261 19.1.1 table) and silently dropping \
         them would change the request",
    ),
    (
        "baddate",
        "3.1.2.12",
        Reject(400),
        "RFC allows ignoring an unused Date; we validate Date (GMT only) because records \
         may carry it, and reject rather than guess the zone",
    ),
    (
        "regbadct",
        "3.1.2.13",
        Reject(400),
        "addr-spec Contact with '?': RFC allows inferring <>; we reject since that is not \
         possible in general",
    ),
    (
        "badaspec",
        "3.1.2.14",
        Reject(400),
        "spaces inside <addr-spec>: RFC allows ignoring them; we reject (no guessing at URIs)",
    ),
    (
        "baddn",
        "3.1.2.15",
        Reject(400),
        "unquoted non-token display name: RFC says reasonable to always reject",
    ),
    (
        "badvers",
        "3.1.2.16",
        Reject(505),
        "SIP/7.0: Version Not Supported",
    ),
    (
        "mismatch01",
        "3.1.2.17",
        Reject(400),
        "CSeq method differs from a known request method",
    ),
    (
        "mismatch02",
        "3.1.2.18",
        Reject(501),
        "unknown method with mismatching CSeq: RFC prefers 501 at proxies (400 also allowed)",
    ),
    ("bigcode", "3.1.2.19", Drop, "response code > 699: dropped"),
    // 3.2 transaction layer.
    (
        "badbranch",
        "3.2.1",
        Accept,
        "branch 'z9hG4bK' alone: handled as an RFC 2543 transaction id",
    ),
    // 3.3 application layer, as a proxy (RFC 3261 16.3) sees them.
    (
        "insuf",
        "3.3.1",
        Reject(400),
        "missing To, From, Call-ID, Max-Forwards",
    ),
    (
        "unkscm",
        "3.3.2",
        Reject(416),
        "unknown Request-URI scheme (16.3 step 2)",
    ),
    (
        "novelsc",
        "3.3.3",
        Reject(416),
        "soap.beep Request-URI scheme not understood",
    ),
    (
        "unksm2",
        "3.3.4",
        Accept,
        "unknown schemes in To/From/Contact are legal; only a registrar refuses (400), a \
         proxy forwards",
    ),
    (
        "bext01",
        "3.3.5",
        Reject(420),
        "Proxy-Require of unsupported extensions (16.3 step 5)",
    ),
    (
        "invut",
        "3.3.6",
        Accept,
        "unknown Content-Type is the UAS's business (415), not a proxy's",
    ),
    (
        "regaut01",
        "3.3.7",
        Accept,
        "unknown auth scheme is the registrar's business",
    ),
    (
        "multi01",
        "3.3.8",
        Reject(400),
        "repeated single-valued headers",
    ),
    ("mcl01", "3.3.9", Reject(400), "multiple Content-Length"),
    (
        "bcast",
        "3.3.10",
        Accept,
        "broadcast sent-by in a lower Via: process normally",
    ),
    (
        "zeromf",
        "3.3.11",
        Reject(483),
        "Max-Forwards 0 at a proxy (16.3 step 3); we do not answer OPTIONS ourselves",
    ),
    (
        "cparam01",
        "3.3.12",
        Accept,
        "unknown Contact header param in addr-spec form",
    ),
    ("cparam02", "3.3.13", Accept, "unknown URI param in <>"),
    (
        "regescrt",
        "3.3.14",
        Accept,
        "escaped Route header in a <> Contact URI is legal",
    ),
    (
        "sdp01",
        "3.3.15",
        Accept,
        "Accept of an unknown type is the UAS's business",
    ),
    // 3.4 backward compatibility.
    (
        "inv2543",
        "3.4.1",
        Accept,
        "RFC 2543 request: no branch, no Max-Forwards, no Content-Length",
    ),
];

fn files() -> BTreeMap<String, Vec<u8>> {
    let dir = PathBuf::from(DIR);
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("conformance dir readable") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("dat") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_owned();
        if stem == "test" {
            continue; // not an RFC 4475 message
        }
        out.insert(stem, std::fs::read(&path).expect("read .dat"));
    }
    out
}

#[test]
fn readme_lists_every_file_in_a_section() {
    let readme = std::fs::read_to_string(format!("{DIR}/README.md")).expect("README.md");
    for name in files().keys() {
        assert!(readme.contains(name.as_str()), "{name} not in README");
        assert!(
            EXPECTED.iter().any(|(f, ..)| f == name),
            "{name} has no expected verdict"
        );
    }
    assert_eq!(EXPECTED.len(), 49);
    assert_eq!(files().len(), 49);
}

#[test]
fn verdicts_match_rfc4475() {
    let files = files();
    let mut failures = Vec::new();
    for (name, section, expected, why) in EXPECTED {
        let bytes = files
            .get(*name)
            .unwrap_or_else(|| panic!("{name}.dat missing"));
        let got = verdict(bytes);
        if got != *expected {
            failures.push(format!(
                "{name} ({section}): expected {expected:?}, got {got:?} [{why}]"
            ));
        }
        // 3.1.2: never accepted.
        if section.starts_with("3.1.2") {
            assert_ne!(got, Accept, "{name} must not be accepted");
        }
    }
    assert!(
        failures.is_empty(),
        "verdict mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn accepted_messages_round_trip_byte_exact() {
    for (name, bytes) in files() {
        let Ok(msg) = parse(&bytes) else { continue };
        let out = msg.serialize();
        assert!(bytes.starts_with(&out), "{name}: serialization differs");
        if name != "dblreq" {
            assert_eq!(out.len(), bytes.len(), "{name}: length differs");
        }
    }
}

#[test]
fn sdp_bodies_give_media_flows() {
    let files = files();
    let msg = parse(files.get("sdp01").expect("sdp01")).expect("parses");
    let sdp = sdp::parse(msg.body()).expect("sdp parses");
    let flows = sdp.media_flows().expect("flows");
    assert_eq!(flows.len(), 2);
    assert_eq!(flows[0].rtp, "192.0.2.5:49217".parse().expect("addr"));
    assert_eq!(flows[0].rtcp, "192.0.2.5:49218".parse().expect("addr"));
    assert_eq!(flows[1].rtp, "192.0.2.5:3227".parse().expect("addr"));
}

#[test]
fn limits_map_to_513() {
    let files = files();
    let longreq = files.get("longreq").expect("longreq");
    let policy = callgate_sip::Policy {
        limits: callgate_sip::Limits {
            max_vias: 32,
            ..Default::default()
        },
        ..Default::default()
    };
    let v = callgate_sip::verdict_with(longreq, &policy, callgate_sip::Framing::Datagram);
    assert_eq!(v, Reject(513));
    let policy = callgate_sip::Policy {
        limits: callgate_sip::Limits {
            max_header_len: 256,
            ..Default::default()
        },
        ..Default::default()
    };
    let v = callgate_sip::verdict_with(longreq, &policy, callgate_sip::Framing::Datagram);
    assert_eq!(v, Reject(513));
}

#[test]
fn truncations_and_bit_flips_never_panic() {
    for (_name, bytes) in files() {
        let stride = if bytes.len() < 2048 { 1 } else { 7 };
        for cut in (0..=bytes.len()).step_by(stride) {
            callgate_sip::exercise(&bytes[..cut]);
        }
        let mut copy = bytes.clone();
        for i in (0..bytes.len()).step_by(stride) {
            for flip in [0x01u8, 0x20, 0x80, 0xff] {
                copy[i] ^= flip;
                callgate_sip::exercise(&copy);
                copy[i] ^= flip;
            }
        }
    }
}

/// `from_tag`/`to_tag` read only the header parameters; on every torture message that
/// passes validation they give the tags of the fully parsed name-addrs.
#[test]
fn tags_read_without_the_uri_match_the_full_parse() {
    let mut compared = 0;
    for entry in std::fs::read_dir(DIR).expect("conformance dir") {
        let path = entry.expect("entry").path();
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(msg) = parse(&bytes) else { continue };
        if msg.validate(&callgate_sip::Limits::default()).is_err() {
            continue;
        }
        let full = |n: Result<callgate_sip::NameAddr<'_>, callgate_sip::ParseError>| {
            n.expect("validated").tag().map(str::to_owned)
        };
        assert_eq!(
            msg.from_tag().expect("validated").map(str::to_owned),
            full(msg.from()),
            "{}",
            path.display()
        );
        assert_eq!(
            msg.to_tag().expect("validated").map(str::to_owned),
            full(msg.to()),
            "{}",
            path.display()
        );
        compared += 1;
    }
    assert!(
        compared >= 10,
        "only {compared} valid torture messages compared"
    );
}
