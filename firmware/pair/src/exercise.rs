//! The routine the fuzz target drives with arbitrary bytes; the unit tests run it over the
//! committed corpus too, so both check the same things.

use crate::wire::{
    encode, open, seal, seal_plain, Heartbeat, PairKey, WireError, BODY_LEN, DATAGRAM_LEN,
    HEADER_LEN, KEY_LEN,
};

/// The fuzz target's fixed key (the committed corpus is sealed with it).
#[doc(hidden)]
pub const FUZZ_KEY: [u8; KEY_LEN] = [0x5a; KEY_LEN];

/// Opens `bytes` under [`FUZZ_KEY`] twice over:
///
/// 1. as a datagram off the wire: no panic, a length other than `DATAGRAM_LEN` is always
///    `Length`, and whatever opens seals and opens again to the same heartbeat;
/// 2. its first 77 bytes as a clear header and body, sealed with the right key, to reach
///    the checks behind the tag: never `Auth`, and whatever opens re-encodes to exactly
///    those 77 bytes (the format has one encoding per heartbeat) and round-trips.
///
/// Panics only when one of these invariants breaks.
#[doc(hidden)]
pub fn exercise(bytes: &[u8]) {
    let key = PairKey::from_bytes(FUZZ_KEY);
    match open(&key, bytes) {
        Ok(hb) => round_trip(&key, &hb),
        Err(WireError::Length(n)) => {
            assert!(
                n == bytes.len() && n != DATAGRAM_LEN,
                "Length({n}) for {} bytes",
                bytes.len()
            );
        }
        Err(e) => assert_eq!(
            bytes.len(),
            DATAGRAM_LEN,
            "{e:?} for a datagram of the wrong length"
        ),
    }
    let Some(plain) = bytes.first_chunk::<{ HEADER_LEN + BODY_LEN }>() else {
        return;
    };
    let Some(sealed) = seal_plain(&key, plain) else {
        panic!("sealing 77 bytes failed");
    };
    match open(&key, &sealed) {
        Ok(hb) => {
            let Some((_, nonce)) = plain
                .first_chunk::<HEADER_LEN>()
                .and_then(|h| h.split_last_chunk())
            else {
                panic!("no nonce in the header");
            };
            assert_eq!(
                encode(&hb, nonce).as_ref(),
                Some(plain),
                "not the one encoding"
            );
            round_trip(&key, &hb);
        }
        Err(e @ (WireError::Auth | WireError::Length(_) | WireError::Rng(_) | WireError::Seal)) => {
            panic!("a datagram sealed with the right key fails with {e:?}")
        }
        Err(_) => {}
    }
}

fn round_trip(key: &PairKey, hb: &Heartbeat) {
    let sealed = match seal(key, hb) {
        Ok(s) => s,
        Err(e) => panic!("an opened heartbeat does not seal again: {e:?}"),
    };
    match open(key, &sealed) {
        Ok(again) => assert_eq!(again, *hb, "round trip changed the heartbeat"),
        Err(e) => panic!("a sealed heartbeat does not open: {e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Flags, NodeId, PathId, WireRole, NONCE_LEN};
    use std::path::PathBuf;

    fn corpus_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/heartbeat")
    }

    fn sample() -> Heartbeat {
        Heartbeat {
            sender: NodeId::ONE,
            path: PathId::SYNC_LINK,
            session: 0x1122_3344_5566_7788,
            seq: 42,
            echo: 0x99aa_bbcc_ddee_ff00,
            term: 7,
            role: WireRole::Active,
            priority: 100,
            health: 90,
            synced: true,
            watermark: 123_456,
            flags: Flags::EMPTY,
        }
    }

    /// The seeds: valid datagrams under FUZZ_KEY, clear header+body with good and bad
    /// values, wrong lengths and headers.
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let key = PairKey::from_bytes(FUZZ_KEY);
        let nonce = [0x33; NONCE_LEN];
        let hb = sample();
        let standby = Heartbeat {
            sender: NodeId::ZERO,
            path: PathId::PRIVATE_SEGMENT,
            role: WireRole::Standby,
            echo: 0,
            flags: Flags::HANDOVER,
            synced: false,
            ..hb
        };
        let plain = encode(&hb, &nonce).unwrap().to_vec();
        let with = |at: usize, v: u8| {
            let mut p = plain.clone();
            p[at] = v;
            p
        };
        let sealed = seal(&key, &hb).unwrap().to_vec();
        let mut long = sealed.clone();
        long.extend_from_slice(&[0; 27]);
        vec![
            ("datagram-active.bin", sealed.clone()),
            (
                "datagram-standby-handover.bin",
                seal(&key, &standby).unwrap().to_vec(),
            ),
            ("datagram-truncated.bin", sealed[..60].to_vec()),
            ("datagram-trailing.bin", long),
            ("datagram-version-2.bin", {
                let mut d = sealed.clone();
                d[4] = 2;
                d
            }),
            ("plain-valid.bin", plain.clone()),
            ("plain-bad-role.bin", with(HEADER_LEN + 32, 2)),
            ("plain-bad-health.bin", with(HEADER_LEN + 34, 101)),
            ("plain-bad-synced.bin", with(HEADER_LEN + 35, 2)),
            ("plain-bad-flags.bin", with(HEADER_LEN + 44, 0x80)),
            ("plain-bad-sender.bin", with(6, 2)),
            ("plain-bad-path.bin", with(7, 4)),
            ("plain-kind-2.bin", with(5, 2)),
            ("empty.bin", Vec::new()),
        ]
    }

    #[test]
    fn seeds_pass_exercise() {
        for (_, bytes) in seeds() {
            exercise(&bytes);
        }
    }

    #[test]
    fn committed_corpus_passes_exercise() {
        let dir = corpus_dir();
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            exercise(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n >= seeds().len(), "{n} files in {}", dir.display());
    }

    /// Writes the seeds into fuzz/corpus/heartbeat: `cargo test -p callgate-pair --
    /// --ignored write_fuzz_corpus` after a format change.
    #[test]
    #[ignore = "a tool, not a check: rewrites the committed fuzz corpus after a wire-format change"]
    fn write_fuzz_corpus() {
        let dir = corpus_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}
