//! The channel working: connect, authenticate, move messages. Loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use callgate_sync::{SyncClient, SyncError, SyncServer, MAX_MESSAGE_LEN};
use common::*;

/// Message `i` of a run: its size varies, its bytes say which message it is.
fn message(side: u8, i: usize) -> Vec<u8> {
    let len = match i % 7 {
        0 => 0,
        1 => 1,
        2 => 4,
        3 => 1500,
        4 => 16 * 1024 + 3,
        5 => 70_000,
        _ => i,
    };
    (0..len).map(|j| (j as u8) ^ (i as u8) ^ side).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_both_ways_and_first_contact_learns_the_fingerprints() {
    bounded(async {
        let (a, b) = ids();
        let mut server = SyncServer::bind(any(), &a, &KEY, None).await.unwrap();
        let addr = server.local_addr().unwrap();
        let client = tokio::spawn({
            let b = b.clone();
            async move { connect(addr, &b, &KEY, None).await }
        });
        let (mut s, s_info) = server.accept().await.unwrap();
        let (mut c, c_info) = client.await.unwrap().unwrap();

        // First contact: each side learns the certificate the other presented.
        assert_eq!(s_info.fingerprint, b.fingerprint());
        assert_eq!(s_info.node_name, "cg-b");
        assert_eq!(c_info.fingerprint, a.fingerprint());
        assert_eq!(c_info.node_name, "cg-a");
        assert_eq!(c_info.addr, addr);
        assert_eq!(s.peer_addr(), s_info.addr);

        // The server echoes; the client checks every echo.
        let echo = tokio::spawn(async move {
            loop {
                match s.recv().await {
                    Ok(m) => s.send(&m).await.unwrap(),
                    Err(SyncError::Closed) => return,
                    Err(e) => panic!("{e:?}"),
                }
            }
        });
        for i in 0..300 {
            let m = message(1, i);
            c.send(&m).await.unwrap();
            assert_eq!(c.recv().await.unwrap(), m, "message {i}");
        }
        let biggest = vec![0xa5; MAX_MESSAGE_LEN];
        c.send(&biggest).await.unwrap();
        assert_eq!(c.recv().await.unwrap(), biggest);
        c.shutdown().await.unwrap();
        echo.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_send_and_receive_from_separate_tasks() {
    bounded(async {
        let (a, b) = ids();
        let mut server = SyncServer::bind(any(), &a, &KEY, None).await.unwrap();
        let addr = server.local_addr().unwrap();
        let client = tokio::spawn(async move { connect(addr, &b, &KEY, None).await });
        let (s, _) = server.accept().await.unwrap();
        let (c, _) = client.await.unwrap().unwrap();
        const N: usize = 400;

        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for (side, conn) in [(1u8, s), (2u8, c)] {
            let (mut rd, mut wr) = conn.into_split();
            // Writer: N messages of its own, flat out.
            writers.push(tokio::spawn(async move {
                for i in 0..N {
                    wr.send(&message(side, i)).await.unwrap();
                }
                wr
            }));
            // Reader: the peer's N messages, in order, at the same time.
            let peer_side = 3 - side;
            readers.push(tokio::spawn(async move {
                for i in 0..N {
                    assert_eq!(
                        rd.recv().await.unwrap(),
                        message(peer_side, i),
                        "message {i}"
                    );
                }
                rd
            }));
        }
        let mut halves = Vec::new();
        for r in readers {
            halves.push(r.await.unwrap());
        }
        for w in writers {
            w.await.unwrap().shutdown().await.unwrap();
        }
        // Both writers said goodbye: each reader now sees the end.
        for mut r in halves {
            assert!(matches!(r.recv().await, Err(SyncError::Closed)));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_carry_requests_and_acks_concurrently() {
    bounded(async {
        let (a, b) = ids();
        let mut server = SyncServer::bind(any(), &a, &KEY, None).await.unwrap();
        let addr = server.local_addr().unwrap();
        let client = tokio::spawn(async move { connect(addr, &b, &KEY, None).await });
        let (s, _) = server.accept().await.unwrap();
        let (c, _) = client.await.unwrap().unwrap();
        const N: u32 = 500;

        // Server: its reader hands sequence numbers to its writer, which acks them.
        let (mut s_rd, mut s_wr) = s.into_split();
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<u32>(16);
        let s_reader = tokio::spawn(async move {
            while let Ok(m) = s_rd.recv().await {
                let seq = u32::from_be_bytes(m[..4].try_into().unwrap());
                ack_tx.send(seq).await.unwrap();
            }
        });
        let s_writer = tokio::spawn(async move {
            while let Some(seq) = ack_rx.recv().await {
                s_wr.send(&seq.to_be_bytes()).await.unwrap();
            }
        });

        // Client: sends all updates from one task while another collects the acks.
        let (mut c_rd, mut c_wr) = c.into_split();
        let acks = tokio::spawn(async move {
            let mut next = 0u32;
            while next < N {
                let m = c_rd.recv().await.unwrap();
                assert_eq!(m, next.to_be_bytes());
                next += 1;
            }
            c_rd
        });
        for seq in 0..N {
            let mut m = seq.to_be_bytes().to_vec();
            m.extend(std::iter::repeat_n(seq as u8, (seq as usize * 37) % 3000));
            c_wr.send(&m).await.unwrap();
        }
        let _c_rd = acks.await.unwrap();
        c_wr.shutdown().await.unwrap();
        s_reader.await.unwrap();
        s_writer.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_on_both_sides_after_first_contact() {
    bounded(async {
        let (a, b) = ids();
        // First contact, unpinned.
        let mut server = SyncServer::bind(any(), &a, &KEY, None).await.unwrap();
        let addr = server.local_addr().unwrap();
        let b2 = b.clone();
        let client = tokio::spawn(async move { connect(addr, &b2, &KEY, None).await });
        let (_, s_info) = server.accept().await.unwrap();
        let (_, c_info) = client.await.unwrap().unwrap();
        drop(server);

        // The daemon pins what it learnt; the identities come back from their stored form.
        let a = callgate_sync::Identity::from_pem(a.to_pem().as_bytes()).unwrap();
        let b = callgate_sync::Identity::from_pem(b.to_pem().as_bytes()).unwrap();
        let mut server = SyncServer::bind(any(), &a, &KEY, Some(s_info.fingerprint))
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let client =
            tokio::spawn(async move { connect(addr, &b, &KEY, Some(c_info.fingerprint)).await });
        let (mut s, _) = server.accept().await.unwrap();
        let (mut c, _) = client.await.unwrap().unwrap();
        c.send(b"pinned").await.unwrap();
        assert_eq!(s.recv().await.unwrap(), b"pinned");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_connects_from_the_address_it_was_given() {
    bounded(async {
        let (a, b) = ids();
        let mut server = SyncServer::bind(any(), &a, &KEY, None).await.unwrap();
        let addr = server.local_addr().unwrap();
        // A free loopback port for the client's own end.
        let local = std::net::TcpListener::bind(LOOPBACK_ANY)
            .unwrap()
            .local_addr()
            .unwrap();
        let client =
            tokio::spawn(
                async move { SyncClient::connect(local, addr, &b, &KEY, None, LONG).await },
            );
        let (_, s_info) = server.accept().await.unwrap();
        client.await.unwrap().unwrap();
        assert_eq!(s_info.addr, local);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_shuts_down_is_closed_for_the_other() {
    bounded(async {
        let (a, b) = ids();
        let mut server = SyncServer::bind(any(), &a, &KEY, None).await.unwrap();
        let addr = server.local_addr().unwrap();
        let client = tokio::spawn(async move { connect(addr, &b, &KEY, None).await });
        let (mut s, _) = server.accept().await.unwrap();
        let (mut c, _) = client.await.unwrap().unwrap();
        c.send(b"last words").await.unwrap();
        c.shutdown().await.unwrap();
        assert_eq!(s.recv().await.unwrap(), b"last words");
        assert!(matches!(s.recv().await, Err(SyncError::Closed)));
        assert!(matches!(s.recv().await, Err(SyncError::Closed)));
        // Dropped without a goodbye: closed too.
        drop(s);
        assert!(matches!(c.recv().await, Err(SyncError::Closed)));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_is_cancel_safe() {
    bounded(async {
        use tokio::io::AsyncWriteExt;
        let (a, b) = ids();
        let mut server = SyncServer::bind(any(), &a, &KEY, None).await.unwrap();
        let addr = server.local_addr().unwrap();
        // A peer that writes its frames in pieces, pausing between them.
        let big = vec![7u8; 100_000];
        let sender = tokio::spawn({
            let big = big.clone();
            async move {
                let mut raw = raw_authenticated_client(addr, &b, &KEY).await;
                let mut bytes = frame(&big);
                bytes.extend(frame(b"after"));
                for piece in [
                    &bytes[..2],
                    &bytes[2..50_000],
                    &bytes[50_000..100_007],
                    &bytes[100_007..],
                ] {
                    raw.write_all(piece).await.unwrap();
                    raw.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(60)).await;
                }
                raw
            }
        });
        let (mut s, _) = server.accept().await.unwrap();
        // recv polled with a short timeout: it is cancelled mid-header and mid-payload,
        // and every cancelled call must leave the stream intact.
        let mut got = Vec::new();
        let mut cancelled = 0;
        while got.len() < 2 {
            match tokio::time::timeout(Duration::from_millis(10), s.recv()).await {
                Ok(m) => got.push(m.unwrap()),
                Err(_) => cancelled += 1,
            }
        }
        assert!(cancelled >= 3, "cancelled {cancelled} times");
        assert_eq!(got[0], big);
        assert_eq!(got[1], b"after");
        sender.await.unwrap();
    })
    .await;
}
