#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
//! The session against a scripted broker on an in-memory pipe: what reaches the outbox's
//! end is only what the broker acknowledged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use callgate_store::{Cdr, Disposition, Pii, Store};
use callgate_uplink::session::{self, Ctx};
use callgate_uplink::{Settings, Status, UplinkError};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Packet, PubAck, PubAckReason, SubAck,
    SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, watch};

fn cdr(n: u64) -> Cdr {
    Cdr {
        call_id: format!("c{n}"),
        tracking_number: "+18005550100".into(),
        campaign: "spring".into(),
        caller: Pii::new("+12025550101"),
        caller_name: None,
        destination: "sip:agent@198.51.100.20".into(),
        invite_at: n,
        ring_at: None,
        answer_at: None,
        end_at: Some(n + 1),
        duration_ms: 0,
        disposition: Disposition::Answered,
        final_code: 200,
        appliance: "lab-a".into(),
        ended_by: None,
        resume: None,
    }
}

fn settings() -> Settings {
    Settings {
        broker: "broker.fleet.test".into(),
        address: None,
        port: 8883,
        ca_pem: String::new(),
        client_id: "lab-a".into(),
        prefix: "callgate/lab-a".into(),
        keepalive: Duration::from_secs(30),
        batch_records: 10,
        inflight: 4,
        backlog_alarm: 1000,
        boot_delay_max: Duration::ZERO,
        backoff_max: Duration::from_secs(1),
        cert_warn: Duration::from_secs(86_400),
    }
}

/// The broker's end of the pipe.
struct Broker {
    io: DuplexStream,
    buf: BytesMut,
}

impl Broker {
    async fn read(&mut self) -> Packet {
        loop {
            match Packet::read(&mut self.buf, None) {
                Ok(p) => return p,
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("{e}"),
            }
            let n = self.io.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "the client closed");
        }
    }
    async fn send(&mut self, p: Packet) {
        let mut b = BytesMut::new();
        p.write(&mut b, None).unwrap();
        self.io.write_all(&b).await.unwrap();
    }
    /// CONNECT → CONNACK (receive maximum 2); the retained status and the subscription.
    async fn accept(&mut self) {
        let Packet::Connect(c, will, _) = self.read().await else {
            panic!("CONNECT first")
        };
        assert_eq!(c.client_id, "lab-a");
        let will = will.unwrap();
        assert!(will.retain && will.topic.as_ref() == b"callgate/lab-a/status");
        let props = ConnAckProperties {
            session_expiry_interval: None,
            receive_max: Some(2),
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        };
        self.send(Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
            properties: Some(props),
        }))
        .await;
        let Packet::Publish(status) = self.read().await else {
            panic!("status")
        };
        assert!(status.retain);
        assert!(String::from_utf8_lossy(&status.payload).contains("online"));
        self.send(Packet::PubAck(PubAck::new(status.pkid, None)))
            .await;
        let Packet::Subscribe(s) = self.read().await else {
            panic!("subscribe")
        };
        assert_eq!(s.filters[0].path, "callgate/lab-a/config/desired");
        assert_eq!(s.filters[1].path, "callgate/lab-a/subjects/request");
        self.send(Packet::SubAck(SubAck {
            pkid: s.pkid,
            return_codes: vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
            properties: None,
        }))
        .await;
    }
}

struct Client {
    store: Arc<Store>,
    status: watch::Sender<Status>,
    cmd_tx: mpsc::Sender<callgate_uplink::Command>,
    inbound: mpsc::Receiver<callgate_uplink::Inbound>,
    handle: tokio::task::JoinHandle<Result<session::Ended, UplinkError>>,
}

fn start(store: Arc<Store>) -> (Client, Broker) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let (status, _) = watch::channel(Status::default());
    let (cmd_tx, mut cmd_rx) = mpsc::channel(8);
    let (desired_tx, inbound) = mpsc::channel(8);
    let st = status.clone();
    let s2 = store.clone();
    let handle = tokio::spawn(async move {
        let s = settings();
        let mut events = VecDeque::new();
        let mut report = None;
        let r = session::run(
            a,
            Ctx {
                settings: &s,
                store: &s2,
                status: &st,
                commands: &mut cmd_rx,
                events: &mut events,
                desired: &desired_tx,
                report: &mut report,
            },
        )
        .await;
        drop(desired_tx);
        r
    });
    (
        Client {
            store,
            status,
            cmd_tx,
            inbound,
            handle,
        },
        Broker {
            io: b,
            buf: BytesMut::new(),
        },
    )
}

fn store_with(n: u64) -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), callgate_vault::Kek::generate().unwrap()).unwrap();
    for i in 0..n {
        s.append_cdr(&cdr(i)).unwrap();
    }
    (dir, Arc::new(s))
}

fn ids(payload: &[u8]) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
    v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn records_leave_the_outbox_only_when_the_broker_acknowledges_them() {
    let (_dir, store) = store_with(35);
    let (c, mut b) = start(store.clone());
    b.accept().await;
    // The broker's Receive Maximum (2) bounds the window: two batches, then nothing.
    let mut got = Vec::new();
    let mut pending = Vec::new();
    for _ in 0..2 {
        let Packet::Publish(p) = b.read().await else {
            panic!("records")
        };
        assert_eq!(p.topic.as_ref(), b"callgate/lab-a/records");
        assert_eq!(p.qos, QoS::AtLeastOnce);
        got.extend(ids(&p.payload));
        pending.push(p.pkid);
    }
    assert_eq!(got.len(), 20, "batches of 10");
    let more = tokio::time::timeout(Duration::from_millis(200), b.read()).await;
    assert!(more.is_err(), "a third batch beyond the window: {more:?}");
    assert_eq!(store.outbox_len(), 35, "nothing acknowledged yet");
    for id in pending {
        b.send(Packet::PubAck(PubAck::new(id, None))).await;
    }
    // The rest, acknowledged as it comes.
    while got.len() < 35 {
        let Packet::Publish(p) = b.read().await else {
            panic!("records")
        };
        got.extend(ids(&p.payload));
        b.send(Packet::PubAck(PubAck::new(p.pkid, None))).await;
    }
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(got, sorted, "in write order (here: id order)");
    assert_eq!(got, (1..=35).collect::<Vec<_>>());
    for _ in 0..1000 {
        if store.outbox_len() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.outbox_len(), 0);
    assert_eq!(c.status.borrow().records_sent, 35);
    // A record written now goes too.
    store.append_cdr(&cdr(99)).unwrap();
    let Packet::Publish(p) = b.read().await else {
        panic!("records")
    };
    assert_eq!(ids(&p.payload), vec![36]);
    c.cmd_tx.send(callgate_uplink::Command::Stop).await.unwrap();
    // DISCONNECT, normal (0xE0, remaining length 0: rumqttc's reader wants a payload).
    while b.buf.is_empty() {
        b.io.read_buf(&mut b.buf).await.unwrap();
    }
    assert_eq!(b.buf[0], 0xE0, "DISCONNECT on stop");
    assert!(c.handle.await.unwrap().is_ok());
    assert_eq!(
        c.store.outbox_len(),
        1,
        "sent but never acknowledged: still waiting"
    );
}

#[tokio::test]
async fn a_broker_that_vanishes_or_refuses_leaves_every_record_waiting() {
    let (_dir, store) = store_with(12);
    // Vanishes after receiving the records.
    let (c, mut b) = start(store.clone());
    b.accept().await;
    let Packet::Publish(_) = b.read().await else {
        panic!("records")
    };
    drop(b);
    let e = c.handle.await.unwrap().unwrap_err();
    assert!(matches!(e, UplinkError::Io(_)), "{e}");
    assert_eq!(store.outbox_len(), 12);
    // Refuses them (an ACL): the session ends, nothing leaves the outbox.
    let (c, mut b) = start(store.clone());
    b.accept().await;
    let Packet::Publish(p) = b.read().await else {
        panic!("records")
    };
    let mut ack = PubAck::new(p.pkid, None);
    ack.reason = PubAckReason::NotAuthorized;
    b.send(Packet::PubAck(ack)).await;
    let e = c.handle.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("NotAuthorized"), "{e}");
    assert_eq!(store.outbox_len(), 12);
    // Accepted with nobody subscribed (a broker that lost the cloud's session): kept, and
    // sent again a moment later.
    let (c, mut b) = start(store.clone());
    b.accept().await;
    let Packet::Publish(p) = b.read().await else {
        panic!("records")
    };
    let first = ids(&p.payload);
    let mut ack = PubAck::new(p.pkid, None);
    ack.reason = PubAckReason::NoMatchingSubscribers;
    b.send(Packet::PubAck(ack)).await;
    // (the second batch of the window may come first: it was already on its way)
    let mut resent = false;
    for _ in 0..3 {
        let Packet::Publish(again) = b.read().await else {
            panic!("records again")
        };
        if ids(&again.payload) == first {
            resent = true;
            break;
        }
    }
    assert!(resent, "the refused batch is sent again");
    assert_eq!(store.outbox_len(), 12);
    assert!(c
        .status
        .borrow()
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("no subscriber"));
    drop(b);
    let _ = c.handle.await;
    // A PUBACK for a packet never sent is a protocol error.
    let (c, mut b) = start(store.clone());
    b.accept().await;
    b.send(Packet::PubAck(PubAck::new(999, None))).await;
    let e = c.handle.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("not sent"), "{e}");
    // A refused CONNECT.
    let (c, mut b) = start(store.clone());
    let Packet::Connect(..) = b.read().await else {
        panic!()
    };
    b.send(Packet::ConnAck(ConnAck {
        session_present: false,
        code: ConnectReturnCode::NotAuthorized,
        properties: None,
    }))
    .await;
    let e = c.handle.await.unwrap().unwrap_err();
    assert!(matches!(e, UplinkError::Refused(_)), "{e}");
    assert_eq!(store.outbox_len(), 12);
}

#[tokio::test]
async fn durable_messages_go_after_every_connect_until_acknowledged_and_requests_come_in() {
    use callgate_store::OutboxMessage;
    let (_dir, store) = store_with(0);
    let m = |n: u32| OutboxMessage {
        topic: "subjects/reply".into(),
        payload: format!("{{\"request_id\":\"r-{n}\",\"receipt\":\"x\"}}"),
        time_ms: 1,
    };
    let id = store.outbox_message_put(&m(1)).unwrap();
    let reply = |p: &rumqttc::v5::mqttbytes::v5::Publish| -> serde_json::Value {
        assert_eq!(p.topic.as_ref(), b"callgate/lab-a/subjects/reply");
        assert_eq!(p.qos, QoS::AtLeastOnce);
        serde_json::from_slice(&p.payload).unwrap()
    };
    // Sent, never acknowledged: the broker vanishes; the message stays.
    let (c, mut b) = start(store.clone());
    b.accept().await;
    let Packet::Publish(p) = b.read().await else {
        panic!("the message")
    };
    let v = reply(&p);
    assert_eq!(v["request_id"], "r-1");
    assert_eq!(v["message_id"], format!("lab-a:m{id}"));
    drop(b);
    assert!(c.handle.await.unwrap().is_err());
    assert_eq!(store.outbox_messages_len(), 1);
    // The next session sends it again (the same message id); acknowledged, it is removed.
    let (mut c, mut b) = start(store.clone());
    b.accept().await;
    let Packet::Publish(p) = b.read().await else {
        panic!("the message again")
    };
    assert_eq!(reply(&p)["message_id"], format!("lab-a:m{id}"));
    b.send(Packet::PubAck(PubAck::new(p.pkid, None))).await;
    for _ in 0..1000 {
        if store.outbox_messages_len() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.outbox_messages_len(), 0);
    // One queued while connected goes at once.
    store.outbox_message_put(&m(2)).unwrap();
    c.cmd_tx
        .send(callgate_uplink::Command::MessageQueued)
        .await
        .unwrap();
    let Packet::Publish(p) = b.read().await else {
        panic!("the new message")
    };
    assert_eq!(reply(&p)["request_id"], "r-2");
    // A subject request from the cloud: acknowledged, handed to the daemon as such.
    let mut req = rumqttc::v5::mqttbytes::v5::Publish::new(
        "callgate/lab-a/subjects/request",
        QoS::AtLeastOnce,
        b"{\"request_id\":\"r-3\"}".to_vec(),
        None,
    );
    req.pkid = 7;
    b.send(Packet::Publish(req)).await;
    let Packet::PubAck(a) = b.read().await else {
        panic!("the request's PUBACK")
    };
    assert_eq!(a.pkid, 7);
    assert_eq!(
        c.inbound.recv().await,
        Some(callgate_uplink::Inbound::SubjectRequest(
            b"{\"request_id\":\"r-3\"}".to_vec()
        ))
    );
}

#[tokio::test]
async fn a_transcript_goes_alone_on_its_topic_in_write_order_and_leaves_the_store_once_acknowledged(
) {
    let (_dir, store) = store_with(3);
    let item =
        br#"{"appliance":"lab-a","id":"ab","call_id":"c@pbx","kind":"note","text":"[CARD]"}"#;
    let oid = store.put_transcript(item).unwrap();
    store.append_cdr(&cdr(3)).unwrap();
    store.append_cdr(&cdr(4)).unwrap();
    assert_eq!(store.outbox_len(), 6);
    let (c, mut b) = start(store.clone());
    b.accept().await;
    let mut order = Vec::new();
    let mut acks = Vec::new();
    while order.len() < 3 {
        let Packet::Publish(p) = b.read().await else {
            panic!("a publish")
        };
        assert_eq!(p.qos, QoS::AtLeastOnce);
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if topic == "callgate/lab-a/transcripts" {
            assert_eq!(p.payload.as_ref(), item, "the item as the intake made it");
            order.push(("transcript", Vec::new()));
            // Not acknowledged yet: it stays in the store.
            assert!(store.get_transcript_json(oid).is_ok());
        } else {
            assert_eq!(topic, "callgate/lab-a/records");
            order.push(("records", ids(&p.payload)));
        }
        acks.push(p.pkid);
        if acks.len() == 2 {
            for id in acks.drain(..) {
                b.send(Packet::PubAck(PubAck::new(id, None))).await;
            }
        }
    }
    for id in acks.drain(..) {
        b.send(Packet::PubAck(PubAck::new(id, None))).await;
    }
    assert_eq!(
        order,
        vec![
            ("records", vec![1, 2, 3]),
            ("transcript", vec![]),
            ("records", vec![4, 5]),
        ],
        "in write order, the transcript alone"
    );
    for _ in 0..1000 {
        if store.outbox_len() == 0 && store.transcripts_len() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.outbox_len(), 0);
    assert_eq!(store.transcripts_len(), 0, "acknowledged: deleted");
    assert!(matches!(
        store.get_transcript_json(oid),
        Err(callgate_store::StoreError::NotFound { .. })
    ));
    c.cmd_tx.send(callgate_uplink::Command::Stop).await.unwrap();
    assert!(c.handle.await.unwrap().is_ok());
}
