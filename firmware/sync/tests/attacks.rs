//! The channel under attack: wrong keys, wrong certificates, relays in the middle, bad
//! frames, silent and garbage clients. Loopback only; every loop is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use callgate_sync::{Identity, SyncError, SyncServer, MAX_MESSAGE_LEN, MAX_PENDING_HANDSHAKES};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server on loopback, and its address.
async fn server(id: &Identity, key: &[u8; 32], pin: Option<[u8; 32]>) -> (SyncServer, SocketAddr) {
    let s = SyncServer::bind(any(), id, key, pin).await.unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

/// The server still takes a good client (after whatever came before).
async fn still_serves(server: &mut SyncServer, addr: SocketAddr, id: &Identity, key: &[u8; 32]) {
    let id = id.clone();
    let key = *key;
    let client = tokio::spawn(async move { connect(addr, &id, &key, None).await });
    let (mut s, _) = loop {
        match server.accept().await {
            Ok(conn) => break conn,
            // Leftovers of the attack may still finish first.
            Err(SyncError::HandshakeTimeout(_))
            | Err(SyncError::Tls(_))
            | Err(SyncError::Closed) => {}
            Err(e) => panic!("{e:?}"),
        }
    };
    let (mut c, _) = client.await.unwrap().unwrap();
    c.send(b"still here").await.unwrap();
    assert_eq!(s.recv().await.unwrap(), b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pair_key_fails_the_binding_on_both_sides() {
    bounded(async {
        let (a, b) = ids();
        for (server_key, client_key) in [(KEY, OTHER_KEY), (OTHER_KEY, KEY)] {
            let (mut srv, addr) = server(&a, &server_key, None).await;
            let b2 = b.clone();
            let client = tokio::spawn(async move { connect(addr, &b2, &client_key, None).await });
            assert!(matches!(srv.accept().await, Err(SyncError::Binding)));
            assert!(matches!(client.await.unwrap(), Err(SyncError::Binding)));
            still_serves(&mut srv, addr, &b, &server_key).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_server_refuses_another_certificate_even_with_the_right_key() {
    bounded(async {
        let (a, b) = ids();
        let intruder = Identity::generate("cg-b").unwrap();
        let (mut srv, addr) = server(&a, &KEY, Some(b.fingerprint())).await;
        let client = tokio::spawn(async move { connect(addr, &intruder, &KEY, None).await });
        match srv.accept().await {
            Err(SyncError::PinMismatch { presented, pinned }) => {
                assert_ne!(presented, pinned);
                assert_eq!(pinned, b.fingerprint());
            }
            other => panic!("{other:?}"),
        }
        // The refused side gets no binding tag and never a connection.
        assert!(client.await.unwrap().is_err());
        // The pinned peer itself is welcome.
        let (mut srv2, addr2) = server(&a, &KEY, Some(b.fingerprint())).await;
        let b2 = b.clone();
        let client = tokio::spawn(async move { connect(addr2, &b2, &KEY, None).await });
        let (_, info) = srv2.accept().await.unwrap();
        assert_eq!(info.fingerprint, b.fingerprint());
        client.await.unwrap().unwrap();
        still_serves(&mut srv, addr, &b, &KEY).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_refuses_another_server_even_with_the_right_key() {
    bounded(async {
        let (a, b) = ids();
        let impostor = Identity::generate("cg-a").unwrap();
        let (mut srv, addr) = server(&impostor, &KEY, None).await;
        let pin = Some(a.fingerprint());
        // (The server only takes connections while someone awaits `accept`.)
        let client = tokio::spawn(async move { connect(addr, &b, &KEY, pin).await });
        assert!(
            srv.accept().await.is_err(),
            "the refused server gets no tag"
        );
        let r = client.await.unwrap();
        assert!(matches!(r, Err(SyncError::PinMismatch { .. })), "{r:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaching_itself_is_refused() {
    bounded(async {
        let (a, _) = ids();
        let (mut srv, addr) = server(&a, &KEY, None).await;
        let a2 = a.clone();
        let client = tokio::spawn(async move { connect(addr, &a2, &KEY, None).await });
        assert!(matches!(srv.accept().await, Err(SyncError::OwnCertificate)));
        assert!(matches!(
            client.await.unwrap(),
            Err(SyncError::OwnCertificate)
        ));
    })
    .await;
}

/// A relay in the middle: TLS server to the client, TLS client to the server, both with its
/// own certificate. It forwards the binding tags from one session to the other.
async fn forwarding_relay(listener: TcpListener, upstream: SocketAddr, relay_id: Identity) {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut down = tokio_rustls::TlsAcceptor::from(raw_server_config(&relay_id))
        .accept(tcp)
        .await
        .unwrap();
    let mut up = raw_tls_client(upstream, Some(&relay_id)).await.unwrap();
    // Each end sends its tag first; pass them across.
    let mut from_client = [0u8; 32];
    let mut from_server = [0u8; 32];
    down.read_exact(&mut from_client).await.unwrap();
    up.read_exact(&mut from_server).await.unwrap();
    up.write_all(&from_client).await.unwrap();
    up.flush().await.unwrap();
    down.write_all(&from_server).await.unwrap();
    down.flush().await.unwrap();
    // Then pass on whatever else comes (nothing should).
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(2), down.read(&mut buf)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_forwarding_the_binding_between_two_sessions_fails() {
    bounded(async {
        let (a, b) = ids();
        let relay_id = Identity::generate("cg-a").unwrap();
        let (mut srv, srv_addr) = server(&a, &KEY, None).await;
        let relay = TcpListener::bind(LOOPBACK_ANY).await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let relay_task = tokio::spawn(forwarding_relay(relay, srv_addr, relay_id));
        // Both ends unpinned (first contact) and with the right key: only the binding can
        // tell, and it does.
        let client = tokio::spawn(async move { connect(relay_addr, &b, &KEY, None).await });
        assert!(matches!(srv.accept().await, Err(SyncError::Binding)));
        assert!(matches!(client.await.unwrap(), Err(SyncError::Binding)));
        relay_task.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_without_the_pair_key_fails() {
    bounded(async {
        let (a, b) = ids();
        let relay_id = Identity::generate("cg-a").unwrap();
        let (mut srv, srv_addr) = server(&a, &KEY, None).await;
        // The relay runs the real protocol on both sides with a key of its own guessing.
        let (mut relay_srv, relay_addr) = server(&relay_id, &OTHER_KEY, None).await;
        let client = tokio::spawn(async move { connect(relay_addr, &b, &KEY, None).await });
        let upstream = tokio::spawn({
            let relay_id = relay_id.clone();
            async move { connect(srv_addr, &relay_id, &OTHER_KEY, None).await }
        });
        assert!(matches!(relay_srv.accept().await, Err(SyncError::Binding)));
        assert!(matches!(client.await.unwrap(), Err(SyncError::Binding)));
        assert!(matches!(srv.accept().await, Err(SyncError::Binding)));
        assert!(matches!(upstream.await.unwrap(), Err(SyncError::Binding)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_pinned_even_a_pair_key_holder_with_its_own_certificate_is_refused() {
    bounded(async {
        let (a, b) = ids();
        let thief = Identity::generate("cg-b").unwrap();
        // The thief has the pair key and speaks the protocol perfectly, as itself.
        let (mut srv, addr) = server(&a, &KEY, Some(b.fingerprint())).await;
        let raw = tokio::spawn({
            let thief = thief.clone();
            async move {
                let mut tls = raw_tls_client(addr, Some(&thief)).await.unwrap();
                let (exp, _) = {
                    let c = tls.get_ref().1;
                    (exporter(c), peer_fp(c))
                };
                let _ = tls
                    .write_all(&tag(&KEY, 1, &exp, &thief.fingerprint()))
                    .await;
                let _ = tls.flush().await;
                let mut theirs = [0u8; 32];
                tls.read_exact(&mut theirs).await.is_ok()
            }
        });
        assert!(matches!(
            srv.accept().await,
            Err(SyncError::PinMismatch { .. })
        ));
        assert!(!raw.await.unwrap(), "the server sent no tag");
        // And the client side: pinned to the real server, the thief's server is refused.
        let (mut fake, fake_addr) = server(&thief, &KEY, None).await;
        let pin = Some(a.fingerprint());
        let client = tokio::spawn(async move { connect(fake_addr, &b, &KEY, pin).await });
        assert!(fake.accept().await.is_err());
        assert!(matches!(
            client.await.unwrap(),
            Err(SyncError::PinMismatch { .. })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_made_peer_following_the_documented_protocol_gets_through() {
    // The crate and the test harness compute tags apart: agreeing pins the wire format.
    bounded(async {
        let (a, b) = ids();
        let (mut srv, addr) = server(&a, &KEY, Some(b.fingerprint())).await;
        let raw = tokio::spawn(async move {
            let mut raw = raw_authenticated_client(addr, &b, &KEY).await;
            raw.write_all(&frame(b"hello")).await.unwrap();
            raw.flush().await.unwrap();
            let mut back = [0u8; 9];
            raw.read_exact(&mut back).await.unwrap();
            back
        });
        let (mut s, info) = srv.accept().await.unwrap();
        assert_eq!(info.node_name, "cg-b");
        assert_eq!(s.recv().await.unwrap(), b"hello");
        s.send(b"hey!!").await.unwrap();
        assert_eq!(&raw.await.unwrap(), &frame(b"hey!!")[..]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bogus_tag_fails_the_binding() {
    bounded(async {
        let (a, b) = ids();
        let (mut srv, addr) = server(&a, &KEY, None).await;
        let raw = tokio::spawn(async move {
            let mut tls = raw_tls_client(addr, Some(&b)).await.unwrap();
            // 32 bytes, but not the tag; then a short tag on a second connection.
            tls.write_all(&[0u8; 32]).await.unwrap();
            tls.flush().await.unwrap();
            let mut short = raw_tls_client(addr, Some(&b)).await.unwrap();
            short.write_all(&[1u8; 5]).await.unwrap();
            short.shutdown().await.unwrap();
            (tls, short)
        });
        let mut outcomes = vec![];
        for _ in 0..2 {
            outcomes.push(srv.accept().await.err().unwrap());
        }
        assert!(outcomes.iter().any(|e| matches!(e, SyncError::Binding)));
        assert!(outcomes.iter().any(|e| matches!(e, SyncError::Closed)));
        drop(raw.await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_length_is_refused_without_allocating() {
    bounded(async {
        let (a, b) = ids();
        let (mut srv, addr) = server(&a, &KEY, None).await;
        // Just over the limit, and the 4 GiB case.
        for len in [u32::try_from(MAX_MESSAGE_LEN + 1).unwrap(), u32::MAX] {
            let b = b.clone();
            let raw = tokio::spawn(async move {
                let mut raw = raw_authenticated_client(addr, &b, &KEY).await;
                raw.write_all(&len.to_be_bytes()).await.unwrap();
                raw.flush().await.unwrap();
                raw
            });
            let (mut s, _) = srv.accept().await.unwrap();
            match s.recv().await {
                Err(SyncError::TooLarge { len: l, max }) => {
                    assert_eq!(l, u64::from(len));
                    assert_eq!(max, MAX_MESSAGE_LEN);
                }
                other => panic!("{other:?}"),
            }
            // The framing is lost: the connection is done.
            assert!(matches!(s.recv().await, Err(SyncError::Closed)));
            drop(raw.await.unwrap());
        }
        // And our own side refuses to send one.
        let (c, _) = {
            let (a2, b2) = ids();
            let (mut srv, addr) = server(&a2, &KEY, None).await;
            let client = tokio::spawn(async move { connect(addr, &b2, &KEY, None).await });
            let _ = srv.accept().await.unwrap();
            client.await.unwrap().unwrap()
        };
        let (_, mut w) = c.into_split();
        assert!(matches!(
            w.send(&vec![0u8; MAX_MESSAGE_LEN + 1]).await,
            Err(SyncError::TooLarge { .. })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_stream_is_closed() {
    bounded(async {
        let (a, b) = ids();
        let (mut srv, addr) = server(&a, &KEY, None).await;
        let partial = {
            let mut f = frame(&[9u8; 100]);
            f.truncate(14);
            f
        };
        // Cut off politely (close_notify mid-frame), then rudely (TCP closed, no
        // close_notify), then mid-header.
        for (polite, cut) in [
            (true, partial.clone()),
            (false, partial.clone()),
            (false, vec![0, 0]),
        ] {
            let b = b.clone();
            let raw = tokio::spawn(async move {
                let mut raw = raw_authenticated_client(addr, &b, &KEY).await;
                raw.write_all(&cut).await.unwrap();
                raw.flush().await.unwrap();
                if polite {
                    raw.shutdown().await.unwrap();
                } else {
                    let (mut tcp, _) = raw.into_inner();
                    tcp.shutdown().await.unwrap();
                }
            });
            let (mut s, _) = srv.accept().await.unwrap();
            raw.await.unwrap();
            assert!(
                matches!(s.recv().await, Err(SyncError::Closed)),
                "polite: {polite}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_times_out_and_the_next_good_client_is_served() {
    bounded(async {
        let (a, b) = ids();
        let (srv, addr) = server(&a, &KEY, None).await;
        // Short, to keep the test quick; long enough for a good handshake on a busy
        // machine (still_serves' client must not run into it).
        let mut srv = srv.with_handshake_timeout(Duration::from_secs(1));
        let silent = TcpStream::connect(addr).await.unwrap();
        assert!(matches!(
            srv.accept().await,
            Err(SyncError::HandshakeTimeout(d)) if d == Duration::from_secs(1)
        ));
        still_serves(&mut srv, addr, &b, &KEY).await;
        drop(silent);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_does_not_hold_up_a_good_one() {
    bounded(async {
        let (a, b) = ids();
        // With the default timeout (5 s) the good client is served long before the
        // silent one's handshake runs out.
        let (mut srv, addr) = server(&a, &KEY, None).await;
        let _silent = TcpStream::connect(addr).await.unwrap();
        let _half_hello = {
            let mut t = TcpStream::connect(addr).await.unwrap();
            t.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
                .await
                .unwrap();
            t
        };
        let started = tokio::time::Instant::now();
        let client = tokio::spawn(async move { connect(addr, &b, &KEY, None).await });
        srv.accept().await.unwrap();
        client.await.unwrap().unwrap();
        assert!(started.elapsed() < callgate_sync::HANDSHAKE_TIMEOUT);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_clients_only_delays_a_good_one() {
    bounded(async {
        let (a, b) = ids();
        let (srv, addr) = server(&a, &KEY, None).await;
        let mut srv = srv.with_handshake_timeout(Duration::from_secs(1));
        let mut silent = Vec::new();
        for _ in 0..MAX_PENDING_HANDSHAKES * 2 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let client = tokio::spawn(async move { connect(addr, &b, &KEY, None).await });
        let mut timeouts = 0;
        loop {
            match srv.accept().await {
                Ok(_) => break,
                Err(SyncError::HandshakeTimeout(_)) => timeouts += 1,
                Err(e) => panic!("{e:?}"),
            }
            assert!(timeouts <= MAX_PENDING_HANDSHAKES * 2);
        }
        client.await.unwrap().unwrap();
        drop(silent);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_garbage_is_an_error_and_the_server_carries_on() {
    bounded(async {
        let (a, b) = ids();
        let (mut srv, addr) = server(&a, &KEY, None).await;
        let garbage: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5],
            &[0xff; 300],
            &[0x16, 0x03, 0x03, 0x40, 0x00],
        ];
        for g in garbage {
            let mut t = TcpStream::connect(addr).await.unwrap();
            t.write_all(g).await.unwrap();
            t.shutdown().await.unwrap();
            let err = srv.accept().await.err().unwrap();
            assert!(
                matches!(err, SyncError::Tls(_) | SyncError::Closed),
                "{g:?}: {err:?}"
            );
        }
        still_serves(&mut srv, addr, &b, &KEY).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_never_upset_the_server() {
    bounded(async {
        let (a, b) = ids();
        let (srv, addr) = server(&a, &KEY, None).await;
        let mut srv = srv.with_handshake_timeout(Duration::from_secs(2));
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..40 {
            let len = 1 + (x % 700) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut t = TcpStream::connect(addr).await.unwrap();
            // Half the rounds look like a TLS handshake record header first.
            if round % 2 == 0 {
                t.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
            }
            let _ = t.write_all(&bytes).await;
            drop(t);
            assert!(srv.accept().await.is_err());
        }
        still_serves(&mut srv, addr, &b, &KEY).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_without_a_certificate_is_refused() {
    bounded(async {
        let (a, b) = ids();
        let (mut srv, addr) = server(&a, &KEY, None).await;
        let raw = tokio::spawn(async move {
            // TLS 1.3 lets the client finish before the server judges it; the refusal
            // arrives as an alert.
            if let Ok(mut tls) = raw_tls_client(addr, None).await {
                let mut buf = [0u8; 32];
                assert!(tls.read_exact(&mut buf).await.is_err());
            }
        });
        assert!(matches!(srv.accept().await, Err(SyncError::Tls(_))));
        raw.await.unwrap();
        still_serves(&mut srv, addr, &b, &KEY).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_gives_up_on_a_server_that_never_answers_or_talks_nonsense() {
    bounded(async {
        let (_, b) = ids();
        let mute = TcpListener::bind(LOOPBACK_ANY).await.unwrap();
        let mute_addr = mute.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let (t, _) = mute.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(t);
        });
        let r = callgate_sync::SyncClient::connect(
            any(),
            mute_addr,
            &b,
            &KEY,
            None,
            Duration::from_millis(300),
        )
        .await;
        assert!(matches!(r, Err(SyncError::HandshakeTimeout(_))));
        held.abort();

        let babbler = TcpListener::bind(LOOPBACK_ANY).await.unwrap();
        let babbler_addr = babbler.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut t, _) = babbler.accept().await.unwrap();
            let _ = t.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        assert!(connect(babbler_addr, &b, &KEY, None).await.is_err());
    })
    .await;
}
