use super::*;

fn key() -> PairKey {
    PairKey::from_bytes([0x42; KEY_LEN])
}

fn sample() -> Heartbeat {
    Heartbeat {
        sender: NodeId::ONE,
        path: PathId::PRIVATE_SEGMENT,
        session: 0x0123_4567_89ab_cdef,
        seq: 77,
        echo: 0xfeed_beef,
        term: 9,
        role: WireRole::Active,
        priority: 200,
        health: 100,
        synced: true,
        watermark: u64::MAX,
        flags: Flags::HANDOVER,
    }
}

/// Clear header + body of `hb` with a fixed nonce, for crafting.
fn plain(hb: &Heartbeat) -> [u8; HEADER_LEN + BODY_LEN] {
    encode(hb, &[7; NONCE_LEN]).unwrap()
}

#[test]
fn layout_is_93_bytes() {
    assert_eq!(HEADER_LEN, 32);
    assert_eq!(BODY_LEN, 45);
    assert_eq!(DATAGRAM_LEN, 93);
}

#[test]
fn round_trip() {
    let k = key();
    for hb in [
        sample(),
        Heartbeat {
            sender: NodeId::ZERO,
            path: PathId::SYNC_LINK,
            session: 1,
            seq: 0,
            echo: 0,
            term: 0,
            role: WireRole::Standby,
            priority: 0,
            health: 0,
            synced: false,
            watermark: 0,
            flags: Flags::EMPTY,
        },
    ] {
        let d = seal(&k, &hb).unwrap();
        assert_eq!(d.len(), DATAGRAM_LEN);
        assert_eq!(&d[..4], b"CGHB");
        assert_eq!(open(&k, &d), Ok(hb));
    }
}

#[test]
fn nonces_differ_per_datagram() {
    let k = key();
    let a = seal(&k, &sample()).unwrap();
    let b = seal(&k, &sample()).unwrap();
    assert_ne!(a[8..32], b[8..32]);
    assert_ne!(a[32..], b[32..]);
}

#[test]
fn body_is_encrypted() {
    let d = seal(&key(), &sample()).unwrap();
    // The session's bytes do not appear in clear.
    let session = sample().session.to_be_bytes();
    assert!(!d.windows(8).any(|w| w == session));
}

#[test]
fn every_single_bit_flip_is_refused_as_auth_or_header_error() {
    let k = key();
    let d = seal(&k, &sample()).unwrap();
    for byte in 0..DATAGRAM_LEN {
        for bit in 0..8 {
            let mut m = d;
            m[byte] ^= 1 << bit;
            let e = open(&k, &m).unwrap_err();
            let ok = match byte {
                0..=3 => e == WireError::Magic,
                4 => e == WireError::Version(VERSION ^ (1 << bit)),
                5 => e == WireError::Kind(KIND_HEARTBEAT ^ (1 << bit)),
                // 1 -> 0 is still a node: the changed AAD fails the tag.
                6 => e == WireError::Auth || matches!(e, WireError::Field(FieldError::Sender(_))),
                7 => e == WireError::Auth || matches!(e, WireError::Field(FieldError::Path(_))),
                _ => e == WireError::Auth,
            };
            assert!(ok, "byte {byte} bit {bit}: {e:?}");
        }
    }
}

#[test]
fn every_wrong_length_is_refused_before_crypto() {
    let k = key();
    let d = seal(&k, &sample()).unwrap();
    for len in 0..=DATAGRAM_LEN + 64 {
        if len == DATAGRAM_LEN {
            continue;
        }
        // Truncations and extensions of a valid datagram, and zeros.
        let mut v = d.to_vec();
        v.resize(len, 0);
        assert_eq!(open(&k, &v), Err(WireError::Length(len)), "len {len}");
        assert_eq!(open(&k, &vec![0; len]), Err(WireError::Length(len)));
    }
}

#[test]
fn wrong_key_is_auth() {
    let d = seal(&key(), &sample()).unwrap();
    let other = PairKey::from_bytes([0x43; KEY_LEN]);
    assert_eq!(open(&other, &d), Err(WireError::Auth));
    let random = PairKey::generate().unwrap();
    assert_eq!(open(&random, &d), Err(WireError::Auth));
}

#[test]
fn header_errors_are_distinct() {
    let k = key();
    let d = seal(&k, &sample()).unwrap();
    let with = |at: usize, v: u8| {
        let mut m = d;
        m[at] = v;
        open(&k, &m)
    };
    assert_eq!(with(0, b'X'), Err(WireError::Magic));
    assert_eq!(with(4, 2), Err(WireError::Version(2)));
    assert_eq!(with(4, 0), Err(WireError::Version(0)));
    assert_eq!(with(5, 2), Err(WireError::Kind(2)));
    assert_eq!(with(6, 2), Err(WireError::Field(FieldError::Sender(2))));
    assert_eq!(with(7, 4), Err(WireError::Field(FieldError::Path(4))));
    assert_eq!(with(7, 255), Err(WireError::Field(FieldError::Path(255))));
}

#[test]
fn bad_body_values_behind_a_valid_tag_are_field_errors() {
    let k = key();
    // Offsets in the clear header + body buffer.
    const SESSION: usize = HEADER_LEN;
    const ROLE: usize = HEADER_LEN + 32;
    const HEALTH: usize = HEADER_LEN + 34;
    const SYNCED: usize = HEADER_LEN + 35;
    const FLAGS: usize = HEADER_LEN + 44;
    let cases: &[(usize, u8, FieldError)] = &[
        (ROLE, 2, FieldError::Role(2)),
        (ROLE, 255, FieldError::Role(255)),
        (HEALTH, 101, FieldError::Health(101)),
        (HEALTH, 255, FieldError::Health(255)),
        (SYNCED, 2, FieldError::Synced(2)),
        (FLAGS, 2, FieldError::Flags(2)),
        (FLAGS, 0x81, FieldError::Flags(0x81)),
        (FLAGS, 0xff, FieldError::Flags(0xff)),
    ];
    for &(at, v, want) in cases {
        let mut p = plain(&sample());
        p[at] = v;
        let d = seal_plain(&k, &p).unwrap();
        assert_eq!(
            open(&k, &d),
            Err(WireError::Field(want)),
            "offset {at} = {v}"
        );
    }
    let mut p = plain(&sample());
    p[SESSION..SESSION + 8].fill(0);
    assert_eq!(
        open(&k, &seal_plain(&k, &p).unwrap()),
        Err(WireError::Field(FieldError::Session))
    );
    // The crafted path with the unchanged values opens: the crafting itself is sound.
    let d = seal_plain(&k, &plain(&sample())).unwrap();
    assert_eq!(open(&k, &d), Ok(sample()));
}

#[test]
fn seal_refuses_what_open_would_refuse() {
    let k = key();
    let mut hb = sample();
    hb.session = 0;
    assert_eq!(seal(&k, &hb), Err(WireError::Field(FieldError::Session)));
    let mut hb = sample();
    hb.health = 101;
    assert_eq!(
        seal(&k, &hb),
        Err(WireError::Field(FieldError::Health(101)))
    );
}

#[test]
fn newtypes_check_themselves() {
    assert_eq!(NodeId::try_from(0), Ok(NodeId::ZERO));
    assert_eq!(NodeId::try_from(1), Ok(NodeId::ONE));
    assert_eq!(NodeId::try_from(2), Err(FieldError::Sender(2)));
    assert_eq!(NodeId::ZERO.peer(), NodeId::ONE);
    assert_eq!(NodeId::ONE.peer(), NodeId::ZERO);
    for v in 0..=3 {
        assert_eq!(PathId::try_from(v).unwrap().get(), v);
    }
    assert_eq!(PathId::try_from(4), Err(FieldError::Path(4)));
    assert_eq!(Flags::from_bits(1), Some(Flags::HANDOVER));
    assert!(Flags::HANDOVER.handover());
    assert!(!Flags::EMPTY.handover());
    assert_eq!(Flags::from_bits(2), None);
}

#[test]
fn key_debug_shows_no_bytes() {
    let k = PairKey::from_bytes([0xab; KEY_LEN]);
    assert_eq!(format!("{k:?}"), "PairKey(…)");
    assert_eq!(k.as_bytes(), &[0xab; KEY_LEN]);
    let a = PairKey::generate().unwrap();
    let b = PairKey::generate().unwrap();
    assert_ne!(a.as_bytes(), b.as_bytes());
}
