//! One MQTT 5 session over an established (TLS) stream: CONNECT with the last will, then
//! records from the outbox in batches at QoS 1, at most `inflight` unacknowledged, each
//! batch leaving the outbox only once the broker acknowledged it; the status retained;
//! config documents received; pings at the keepalive.
//!
//! The stream is any `AsyncRead + AsyncWrite` (TLS in production, a pipe to a scripted
//! broker in the unit tests). The session ends with an error on anything unexpected; the
//! task reconnects.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use callgate_store::transcripts::{is_transcript, TRANSCRIPT};
use callgate_store::{Store, StoreError};
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Filter, LastWill, Packet, PingReq, PubAck, PubAckReason, Publish, Subscribe,
    SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::payload::Batch;
use crate::task::Command;
use crate::{now_ms, Settings, Status, UplinkError};

/// The largest packet accepted from the broker.
pub const MAX_INCOMING: u32 = 1024 * 1024;
/// How long the broker has to answer CONNECT.
pub const CONNACK_WAIT: Duration = Duration::from_secs(10);
/// How often an exhausted outbox is looked at again.
pub const POLL: Duration = Duration::from_millis(50);
/// How long records wait after the broker said nobody subscribes to them.
pub const NO_SUBSCRIBER_HOLD: Duration = Duration::from_secs(1);

/// Topics under the prefix.
pub fn topic(prefix: &str, leaf: &str) -> String {
    format!("{prefix}/{leaf}")
}

/// What the cloud sent, for the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A config document, from `config/desired` ([`crate::signed::Document`]).
    Config(Vec<u8>),
    /// A subject request, from `subjects/request` ([`crate::signed::SubjectRequest`]).
    SubjectRequest(Vec<u8>),
}

/// Durable messages read from the store at a time.
const MESSAGES_PAGE: usize = 16;

/// Why the session ended without an error.
#[derive(Debug)]
pub enum Ended {
    /// The owner sent this command (reconfigure or stop); DISCONNECT was sent.
    Command(Command),
    /// The handle is gone.
    Dropped,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> UplinkError + '_ {
    move |e| UplinkError::Io(format!("{what}: {e}"))
}

struct Wire<R, W> {
    rd: R,
    wr: W,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_out: Option<u32>,
}

impl<S: AsyncRead + AsyncWrite> Wire<tokio::io::ReadHalf<S>, tokio::io::WriteHalf<S>> {
    fn new(stream: S) -> Self {
        let (rd, wr) = tokio::io::split(stream);
        Wire {
            rd,
            wr,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            max_out: None,
        }
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Wire<R, W> {
    async fn send(&mut self, p: &Packet) -> Result<(), UplinkError> {
        self.wbuf.clear();
        p.write(&mut self.wbuf, self.max_out)
            .map_err(|e| UplinkError::Protocol(e.to_string()))?;
        self.wr
            .write_all(&self.wbuf)
            .await
            .map_err(io("writing to the broker"))?;
        self.wr.flush().await.map_err(io("writing to the broker"))
    }

    /// A complete packet from what was read, if there is one.
    fn parse(&mut self) -> Result<Option<Packet>, UplinkError> {
        match Packet::read(&mut self.rbuf, Some(MAX_INCOMING)) {
            Ok(p) => Ok(Some(p)),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(UplinkError::Protocol(format!("from the broker: {e}"))),
        }
    }

    async fn fill(&mut self) -> Result<(), UplinkError> {
        let n = self
            .rd
            .read_buf(&mut self.rbuf)
            .await
            .map_err(io("reading from the broker"))?;
        if n == 0 {
            return Err(UplinkError::Io("the broker closed the connection".into()));
        }
        Ok(())
    }
}

/// What the owner lends the session.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    pub store: &'a Arc<Store>,
    pub status: &'a watch::Sender<Status>,
    pub commands: &'a mut mpsc::Receiver<Command>,
    /// Messages in memory waiting to go out (events, replies), each with its topic under
    /// the prefix (the session sends them while connected).
    pub events: &'a mut VecDeque<(String, Vec<u8>)>,
    /// What the cloud sends (config documents, subject requests), to the daemon.
    pub desired: &'a mpsc::Sender<Inbound>,
    /// The latest report for `config/reported` (retained), kept until acknowledged.
    pub report: &'a mut Option<Vec<u8>>,
}

/// Runs one session on `stream` until it fails or the owner ends it.
pub async fn run<S>(stream: S, cx: Ctx<'_>) -> Result<Ended, UplinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let s = cx.settings;
    let mut w = Wire::new(stream);
    let status_topic = topic(&s.prefix, "status");
    let records_topic = topic(&s.prefix, "records");
    let transcripts_topic = topic(&s.prefix, "transcripts");
    let events_topic = topic(&s.prefix, "events");
    let desired_topic = topic(&s.prefix, "config/desired");
    let reported_topic = topic(&s.prefix, "config/reported");
    let subjects_topic = topic(&s.prefix, "subjects/request");

    // CONNECT, with the last will: the retained status turns `offline` if we vanish.
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = Some(0);
    props.max_packet_size = Some(MAX_INCOMING);
    props.receive_maximum = Some(16);
    let connect = Connect {
        keep_alive: u16::try_from(s.keepalive.as_secs()).unwrap_or(u16::MAX),
        client_id: s.client_id.clone(),
        clean_start: true,
        properties: Some(props),
    };
    let will = LastWill::new(
        status_topic.clone(),
        serde_json::to_vec(&serde_json::json!({"appliance": s.client_id, "state": "offline"}))
            .unwrap_or_default(),
        QoS::AtLeastOnce,
        true,
        None,
    );
    w.send(&Packet::Connect(connect, Some(will), None)).await?;
    let connack = tokio::time::timeout(CONNACK_WAIT, async {
        loop {
            if let Some(p) = w.parse()? {
                return Ok::<_, UplinkError>(p);
            }
            w.fill().await?;
        }
    })
    .await
    .map_err(|_| UplinkError::Io("the broker did not answer CONNECT".into()))??;
    let ack: ConnAck = match connack {
        Packet::ConnAck(a) => a,
        other => {
            return Err(UplinkError::Protocol(format!(
                "expected CONNACK, got {:?}",
                kind(&other)
            )))
        }
    };
    if ack.code != ConnectReturnCode::Success {
        let why = ack
            .properties
            .as_ref()
            .and_then(|p| p.reason_string.clone())
            .unwrap_or_default();
        return Err(UplinkError::Refused(format!(
            "CONNECT: {:?} {why}",
            ack.code
        )));
    }
    let mut window = s.inflight.max(1);
    let mut limit = crate::payload::MAX_PAYLOAD;
    if let Some(p) = &ack.properties {
        if let Some(r) = p.receive_max {
            window = window.min(usize::from(r).max(1));
        }
        if let Some(m) = p.max_packet_size {
            w.max_out = Some(m);
            limit = limit.min(usize::try_from(m).unwrap_or(usize::MAX).saturating_sub(512));
        }
    }
    let since = now_ms();
    cx.status.send_modify(|st| {
        st.state = "connected".into();
        st.connected_since_ms = Some(since);
        st.next_attempt_ms = None;
        st.connects += 1;
    });
    log::info!(
        "uplink: connected to {} as {} (window {window})",
        s.broker,
        s.client_id
    );

    let mut pkids = Pkids::default();
    // The retained status, and the subscription to config documents.
    let online = serde_json::json!({
        "appliance": s.client_id,
        "state": "online",
        "since_ms": since,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let id = pkids.take();
    let mut p = Publish::new(
        status_topic.clone(),
        QoS::AtLeastOnce,
        serde_json::to_vec(&online).unwrap_or_default(),
        None,
    );
    p.retain = true;
    p.pkid = id;
    w.send(&Packet::Publish(p)).await?;
    let mut control: HashSet<u16> = HashSet::from([id]);
    let sub_id = pkids.take();
    w.send(&Packet::Subscribe(Subscribe {
        pkid: sub_id,
        filters: vec![
            Filter::new(desired_topic.clone(), QoS::AtLeastOnce),
            Filter::new(subjects_topic.clone(), QoS::AtLeastOnce),
        ],
        properties: None,
    }))
    .await?;

    // Per packet id: the (record id, write sequence) pairs it carries; and every sequence
    // read and not yet durably out of the outbox, so a read leaves them out.
    let mut inflight: HashMap<u16, Vec<(u64, u64)>> = HashMap::new();
    let mut in_flight_seqs: HashSet<u64> = HashSet::new();
    // The read under way (one at a time, on a blocking thread, its batches streamed in
    // write order) and batches read, waiting for room in the window.
    let mut reading: Option<mpsc::UnboundedReceiver<Read>> = None;
    let mut ready: VecDeque<Batch> = VecDeque::new();
    // Acknowledged by the broker, waiting for their durable removal; and the removal under
    // way (one at a time: what is acknowledged meanwhile goes in the next, one commit).
    let mut acks_due = Acks::default();
    let mut acking: Option<(tokio::task::JoinHandle<Result<(), StoreError>>, Acks)> = None;
    let max = s.batch_records.max(1);
    // A quarter of the window: a read starts once this many batches fit in it (fewer,
    // larger reads: each is a wake-up of a blocking thread and of the session), and a
    // durable removal covers this many acknowledged messages while it is busy.
    let quarter = window.div_ceil(4).max(1);
    let mut flush_acks = false;
    // The report in flight: its packet id and the document, cleared on its PUBACK.
    let mut report_sent: Option<(u16, Vec<u8>)> = None;
    let mut exhausted = false;
    let mut cursor: Option<u64> = None;
    let mut held_until: Option<Instant> = None;
    let mut last_rx = Instant::now();
    let mut ping = tokio::time::interval(s.keepalive);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    // The store's durable messages ([`Store::outbox_messages`]): read when one was
    // queued (and at the start), sent, and removed once acknowledged. Those sent in this
    // session are not read again; those the broker kept for nobody go again after a hold.
    let mut messages_due = true;
    let mut messages_sent: HashSet<u64> = HashSet::new();
    let mut messages_inflight: HashMap<u16, u64> = HashMap::new();
    let mut messages_retry: Option<Instant> = None;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        // The report, when a newer one waits.
        if let Some(doc) = cx.report.as_ref() {
            if report_sent.as_ref().is_none_or(|(_, d)| d != doc) {
                let id = pkids.take();
                let mut p =
                    Publish::new(reported_topic.clone(), QoS::AtLeastOnce, doc.clone(), None);
                p.retain = true;
                p.pkid = id;
                w.send(&Packet::Publish(p)).await?;
                control.insert(id);
                report_sent = Some((id, doc.clone()));
            }
        }
        // Events first: few and small.
        while let Some((leaf, ev)) = cx.events.pop_front() {
            let id = pkids.take();
            let t = if leaf == "events" {
                events_topic.clone()
            } else {
                topic(&s.prefix, &leaf)
            };
            let mut p = Publish::new(t, QoS::AtLeastOnce, ev, None);
            p.pkid = id;
            w.send(&Packet::Publish(p)).await?;
            control.insert(id);
        }
        // Durable messages (few: receipts and replies), read from the store (a small read).
        if messages_due {
            let page = cx
                .store
                .outbox_messages(MESSAGES_PAGE, &messages_sent)
                .map_err(|e| UplinkError::Store(callgate_store::error_chain(&e)))?;
            messages_due = page.len() >= MESSAGES_PAGE;
            for (mid, m) in page {
                let mut doc: serde_json::Value =
                    serde_json::from_str(&m.payload).unwrap_or(serde_json::Value::Null);
                if let Some(o) = doc.as_object_mut() {
                    o.insert(
                        "message_id".into(),
                        format!("{}:m{mid}", s.client_id).into(),
                    );
                }
                let id = pkids.take();
                let mut p = Publish::new(
                    topic(&s.prefix, &m.topic),
                    QoS::AtLeastOnce,
                    serde_json::to_vec(&doc).unwrap_or_default(),
                    None,
                );
                p.pkid = id;
                w.send(&Packet::Publish(p)).await?;
                messages_sent.insert(mid);
                messages_inflight.insert(id, mid);
            }
        }
        // Batches read and ready go out while the window has room (not while the broker
        // says nobody takes them).
        while held_until.is_none() && inflight.len() < window {
            let Some(batch) = ready.pop_front() else {
                break;
            };
            let id = pkids.take();
            let to = if batch.is_transcript() {
                &transcripts_topic
            } else {
                &records_topic
            };
            let (payload, sent) = batch.finish();
            let mut p = Publish::new(to.clone(), QoS::AtLeastOnce, payload, None);
            p.pkid = id;
            w.send(&Packet::Publish(p)).await?;
            inflight.insert(id, sent);
        }
        // The next read: the outbox's writes after the cursor, as many batches as the
        // window has room for, read on a blocking thread while the session goes on.
        let room = window.saturating_sub(inflight.len() + ready.len());
        if reading.is_none() && !exhausted && held_until.is_none() && room >= quarter {
            // After a wrap to the start, what is already read is left out.
            let skip = if cursor.is_none() {
                in_flight_seqs.clone()
            } else {
                HashSet::new()
            };
            let plan = ReadPlan {
                appliance: s.client_id.clone(),
                cursor,
                skip,
                batches: room,
                records: max,
                limit,
            };
            reading = Some(start_read(cx.store, plan));
        }
        // The durable removal of what the broker acknowledged: one commit for several
        // messages while more acknowledgements are coming (each commit is an fsync, and
        // they cost more CPU than anything but the reads), at once when nothing else is
        // in flight, and at the latest at the next poll. Until then the records count as
        // read, not sent: a crash sends them again (duplicates, never a loss).
        let due_now = !acks_due.pairs.is_empty()
            && (inflight.is_empty() || acks_due.messages >= quarter as u64 || flush_acks);
        if acking.is_none() && due_now {
            flush_acks = false;
            let due = std::mem::take(&mut acks_due);
            let st = cx.store.clone();
            let seqs: Vec<u64> = due.pairs.iter().map(|(_, seq)| *seq).collect();
            let transcripts: Vec<u64> = due
                .pairs
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| is_transcript(*id))
                .collect();
            acking = Some((
                tokio::task::spawn_blocking(move || {
                    // Acknowledged first, then the transcripts deleted: a crash between
                    // the two leaves a sent transcript that the next open removes.
                    st.outbox_sent(&seqs)?;
                    st.remove_transcripts(&transcripts)
                }),
                due,
            ));
        }
        tokio::select! {
            read = async {
                match reading.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            }, if reading.is_some() => match read {
                Some(Read::Batch(batch)) => {
                    in_flight_seqs.extend(batch.sent.iter().map(|(_, seq)| *seq));
                    if !batch.has_records() {
                        // Only ids whose records are gone (retention): nothing to send.
                        acks_due.pairs.extend(batch.sent);
                    } else if held_until.is_none() {
                        ready.push_back(batch);
                    } else {
                        // Held (no subscriber): read again after the hold.
                        forget(&mut in_flight_seqs, &batch.sent);
                    }
                }
                Some(Read::Done { last, found }) => {
                    reading = None;
                    if held_until.is_some() {
                        // Held: what it read was let go; after the hold, from the start.
                    } else if found {
                        cursor = last;
                    } else if cursor.is_some() {
                        // The end of the outbox: once more from its start (a write that
                        // became visible just after a later one was read), then wait.
                        cursor = None;
                    } else {
                        exhausted = true;
                    }
                }
                Some(Read::Failed(e)) => return Err(e),
                None => return Err(UplinkError::Store("the outbox read ended early".into())),
            },
            done = async {
                match acking.as_mut() {
                    Some((h, _)) => h.await,
                    None => std::future::pending().await,
                }
            }, if acking.is_some() => {
                let Some((_, due)) = acking.take() else { continue };
                done.map_err(|e| UplinkError::Store(e.to_string()))?
                    .map_err(|e| UplinkError::Store(callgate_store::error_chain(&e)))?;
                forget(&mut in_flight_seqs, &due.pairs);
                if due.messages > 0 {
                    let t = now_ms();
                    cx.status.send_modify(|st| {
                        st.records_sent += due.records;
                        st.messages_acked += due.messages;
                        st.last_ack_ms = Some(t);
                        // Counted again every second; until then, what just left.
                        st.backlog = st
                            .backlog
                            .saturating_sub(usize::try_from(due.records).unwrap_or(usize::MAX));
                    });
                }
            }
            r = w.fill() => {
                r?;
                last_rx = Instant::now();
                let t = now_ms();
                cx.status.send_modify(|st| st.last_contact_ms = Some(t));
                while let Some(p) = w.parse()? {
                    match p {
                        Packet::PubAck(a) => {
                            pkids.free(a.pkid);
                            check_ack(&a)?;
                            if let Some(pairs) = inflight.remove(&a.pkid) {
                                if a.reason == PubAckReason::NoMatchingSubscribers {
                                    // Accepted, but nobody takes records (the cloud's
                                    // subscription is gone, e.g. a broker that lost its
                                    // sessions): they stay in the outbox and go again.
                                    forget(&mut in_flight_seqs, &pairs);
                                    held_until = Some(Instant::now() + NO_SUBSCRIBER_HOLD);
                                    exhausted = true;
                                    cursor = None;
                                    for b in ready.drain(..) {
                                        forget(&mut in_flight_seqs, &b.sent);
                                    }
                                    let e = "the broker has no subscriber for the records: they wait in the outbox".to_owned();
                                    cx.status.send_modify(|st| st.last_error = Some(e));
                                } else {
                                    // They stay "read" until their removal is durable.
                                    acks_due.records += pairs.len() as u64;
                                    acks_due.messages += 1;
                                    acks_due.pairs.extend(pairs);
                                    exhausted = held_until.is_some();
                                }
                            } else if let Some(mid) = messages_inflight.remove(&a.pkid) {
                                if a.reason == PubAckReason::NoMatchingSubscribers {
                                    // Nobody took it: it stays, and goes again.
                                    messages_sent.remove(&mid);
                                    messages_retry = Some(Instant::now() + NO_SUBSCRIBER_HOLD);
                                } else {
                                    let st = cx.store.clone();
                                    tokio::task::spawn_blocking(move || {
                                        if let Err(e) = st.outbox_message_sent(mid) {
                                            // Sent again after a restart: a duplicate.
                                            log::warn!(
                                                "uplink: message {mid} acknowledged, not removed: {}",
                                                callgate_store::error_chain(&e)
                                            );
                                        }
                                    });
                                }
                            } else if control.remove(&a.pkid) {
                                if let Some((id, doc)) = &report_sent {
                                    if *id == a.pkid && cx.report.as_ref() == Some(doc) {
                                        *cx.report = None;
                                    }
                                }
                            } else {
                                return Err(UplinkError::Protocol(format!(
                                    "PUBACK for packet {} that was not sent",
                                    a.pkid
                                )));
                            }
                        }
                        Packet::SubAck(a) => {
                            pkids.free(a.pkid);
                            if let Some(c) = a
                                .return_codes
                                .iter()
                                .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                            {
                                let e = format!("the subscription to {desired_topic} was refused: {c:?}");
                                log::warn!("uplink: {e}");
                                cx.status.send_modify(|st| st.last_error = Some(e));
                            }
                        }
                        Packet::Publish(p) => {
                            if p.qos == QoS::AtLeastOnce {
                                w.send(&Packet::PubAck(PubAck::new(p.pkid, None))).await?;
                            }
                            if p.topic.as_ref() == desired_topic.as_bytes() {
                                cx.status.send_modify(|st| st.desired_received += 1);
                                if cx.desired.try_send(Inbound::Config(p.payload.to_vec())).is_err() {
                                    log::warn!("uplink: a config document from the cloud was dropped (busy)");
                                }
                            } else if p.topic.as_ref() == subjects_topic.as_bytes() {
                                if cx
                                    .desired
                                    .try_send(Inbound::SubjectRequest(p.payload.to_vec()))
                                    .is_err()
                                {
                                    log::warn!("uplink: a subject request from the cloud was dropped (busy): the cloud asks again");
                                }
                            } else {
                                log::warn!(
                                    "uplink: a message on an unexpected topic ({} bytes) ignored",
                                    p.payload.len()
                                );
                            }
                        }
                        Packet::PingResp(_) => {}
                        Packet::Disconnect(d) => {
                            let why = d
                                .properties
                                .and_then(|p| p.reason_string)
                                .unwrap_or_default();
                            return Err(UplinkError::Refused(format!(
                                "the broker disconnected: {:?} {why}",
                                d.reason_code
                            )));
                        }
                        other => {
                            return Err(UplinkError::Protocol(format!(
                                "unexpected {} from the broker",
                                kind(&other)
                            )))
                        }
                    }
                }
            }
            _ = ping.tick() => {
                if last_rx.elapsed() > s.keepalive.saturating_mul(3) / 2 {
                    return Err(UplinkError::Io(format!(
                        "the broker was silent for {}s",
                        last_rx.elapsed().as_secs()
                    )));
                }
                w.send(&Packet::PingReq(PingReq)).await?;
            }
            _ = poll.tick() => {
                flush_acks = !acks_due.pairs.is_empty();
                if messages_retry.is_some_and(|t| Instant::now() >= t) {
                    messages_retry = None;
                    messages_due = true;
                }
                if held_until.is_none_or(|t| Instant::now() >= t) {
                    held_until = None;
                    exhausted = false;
                }
            }
            c = cx.commands.recv() => match c {
                Some(Command::Event(e)) => {
                    push_event(cx.events, e);
                }
                Some(Command::Publish(leaf, payload)) => push_message(cx.events, leaf, payload),
                Some(Command::MessageQueued) => messages_due = true,
                Some(Command::Report(r)) => *cx.report = Some(r),
                Some(c) => {
                    // Stopping: the broker publishes the will (`offline`); reconnecting
                    // with new settings: a plain disconnect.
                    let reason = if matches!(c, Command::Stop) {
                        DisconnectReasonCode::DisconnectWithWillMessage
                    } else {
                        DisconnectReasonCode::NormalDisconnection
                    };
                    let _ = w.send(&Packet::Disconnect(Disconnect::new(reason))).await;
                    return Ok(Ended::Command(c));
                }
                None => return Ok(Ended::Dropped),
            },
        }
    }
}

/// The benchmark's anchor: the same connection, codec and window as [`run`], publishing
/// ready-made payloads at QoS 1 straight from memory to `topic`, with no outbox, no store
/// and no durable step; returns once the broker acknowledged them all.
pub async fn publish_raw<S>(
    stream: S,
    client_id: &str,
    topic: &str,
    window: usize,
    payloads: Vec<Vec<u8>>,
) -> Result<(), UplinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut w = Wire::new(stream);
    let connect = Connect {
        keep_alive: 30,
        client_id: client_id.to_owned(),
        clean_start: true,
        properties: None,
    };
    w.send(&Packet::Connect(connect, None, None)).await?;
    let ack = loop {
        if let Some(p) = w.parse()? {
            break p;
        }
        w.fill().await?;
    };
    let mut window = window.max(1);
    match ack {
        Packet::ConnAck(a) if a.code == ConnectReturnCode::Success => {
            if let Some(r) = a.properties.and_then(|p| p.receive_max) {
                window = window.min(usize::from(r).max(1));
            }
        }
        other => return Err(UplinkError::Refused(format!("CONNECT: {}", kind(&other)))),
    }
    let mut pkids = Pkids::default();
    let mut pending = payloads.into_iter();
    let mut inflight = 0usize;
    loop {
        while inflight < window {
            let Some(body) = pending.next() else { break };
            let mut p = Publish::new(topic, QoS::AtLeastOnce, body, None);
            p.pkid = pkids.take();
            w.send(&Packet::Publish(p)).await?;
            inflight += 1;
        }
        if inflight == 0 {
            break;
        }
        w.fill().await?;
        while let Some(p) = w.parse()? {
            if let Packet::PubAck(a) = p {
                check_ack(&a)?;
                pkids.free(a.pkid);
                inflight -= 1;
            }
        }
    }
    let _ = w
        .send(&Packet::Disconnect(Disconnect::new(
            DisconnectReasonCode::NormalDisconnection,
        )))
        .await;
    Ok(())
}

/// At most this many events wait while the broker is away (the oldest go first).
pub const MAX_EVENTS: usize = 1000;

/// Queues an event (dropping the oldest past [`MAX_EVENTS`]).
pub fn push_event(events: &mut VecDeque<(String, Vec<u8>)>, e: Vec<u8>) {
    push_message(events, "events".into(), e);
}

/// Queues a message in memory for `leaf` (under the prefix), bounded as events are.
pub fn push_message(events: &mut VecDeque<(String, Vec<u8>)>, leaf: String, payload: Vec<u8>) {
    if events.len() >= MAX_EVENTS {
        events.pop_front();
    }
    events.push_back((leaf, payload));
}

fn check_ack(a: &PubAck) -> Result<(), UplinkError> {
    match a.reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
        r => {
            let why = a
                .properties
                .as_ref()
                .and_then(|p| p.reason_string.clone())
                .unwrap_or_default();
            Err(UplinkError::Refused(format!("a publish: {r:?} {why}")))
        }
    }
}

/// What the broker acknowledged and awaits its durable removal from the outbox.
#[derive(Default)]
struct Acks {
    /// (record id, write sequence).
    pairs: Vec<(u64, u64)>,
    /// Records sent in them (ids whose records were gone are not counted).
    records: u64,
    /// Messages acknowledged.
    messages: u64,
}

/// What a read of the outbox streams back to the session, in write order.
enum Read {
    Batch(Batch),
    /// The read ended. `found`: it found writes after its cursor (not left out);
    /// `last`: the last write sequence it looked at, the next read's cursor.
    Done {
        last: Option<u64>,
        found: bool,
    },
    Failed(UplinkError),
}

/// One read: up to `batches` batches of up to `records` records (and `limit` bytes) each,
/// from the outbox's writes after `cursor`, leaving out `skip`.
struct ReadPlan {
    appliance: String,
    cursor: Option<u64>,
    skip: HashSet<u64>,
    batches: usize,
    records: usize,
    limit: usize,
}

/// Starts a read on a blocking thread; its batches arrive as each is built, then
/// [`Read::Done`] (or [`Read::Failed`]).
fn start_read(store: &Arc<Store>, plan: ReadPlan) -> mpsc::UnboundedReceiver<Read> {
    let (tx, rx) = mpsc::unbounded_channel();
    let st = store.clone();
    tokio::task::spawn_blocking(move || {
        let end = match read_outbox(&st, &plan, &tx) {
            Ok((last, found)) => Read::Done { last, found },
            Err(e) => Read::Failed(e),
        };
        // The session may be gone: then nobody needs the answer.
        let _ = tx.send(end);
    });
    rx
}

/// The body of [`start_read`]: (the last sequence looked at, whether any write was found).
fn read_outbox(
    st: &Store,
    plan: &ReadPlan,
    tx: &mpsc::UnboundedSender<Read>,
) -> Result<(Option<u64>, bool), UplinkError> {
    let store_err = |e: StoreError| UplinkError::Store(callgate_store::error_chain(&e));
    let mut after = plan.cursor;
    let mut found = false;
    for _ in 0..plan.batches {
        // A batch's worth of writes, past the ones left out.
        let mut writes: Vec<(u64, u64)> = Vec::with_capacity(plan.records);
        let mut end = false;
        while writes.len() < plan.records {
            let want = plan.records - writes.len();
            let page = st.outbox_page(after, want).map_err(store_err)?;
            end = page.len() < want;
            let Some(last) = page.last().map(|(seq, _)| *seq) else {
                break;
            };
            after = Some(last);
            writes.extend(page.into_iter().filter(|(seq, _)| !plan.skip.contains(seq)));
            if end {
                break;
            }
        }
        if writes.is_empty() {
            break;
        }
        found = true;
        for batch in batches_of(st, &plan.appliance, writes, plan.limit) {
            if tx.send(Read::Batch(batch)).is_err() {
                // The session ended.
                return Ok((after, found));
            }
        }
        if end {
            break;
        }
    }
    Ok((after, found))
}

/// The records of `writes` ((write sequence, record id), in write order) in batches of at
/// most `limit` bytes.
fn batches_of(st: &Store, appliance: &str, writes: Vec<(u64, u64)>, limit: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut batch = Batch::new(appliance, limit);
    let ids: Vec<u64> = writes
        .iter()
        .map(|(_, id)| *id)
        .filter(|id| !is_transcript(*id))
        .collect();
    let mut records = st.get_cdrs_json(&ids);
    for (seq, id) in writes {
        let transcript = is_transcript(id);
        let read = if transcript {
            st.get_transcript_json(id)
        } else {
            // A record written twice in one page is read again for its second write.
            records
                .remove(&id)
                .or_else(|| st.get_cdrs_json(&[id]).remove(&id))
                .unwrap_or_else(|| {
                    Err(StoreError::NotFound {
                        table: "cdrs",
                        id: id.to_string(),
                    })
                })
        };
        let what = if transcript { "transcript" } else { "record" };
        let shown = id & !TRANSCRIPT;
        match read {
            Ok(json) if transcript && json.len() > limit => {
                // Larger than the broker takes: sending it would fail forever.
                log::error!(
                    "uplink: transcript {shown} ({} bytes) is larger than the broker accepts and is not sent",
                    json.len()
                );
                batch.skip(id, seq);
            }
            Ok(json) if transcript => {
                // A transcript goes alone, on its own topic, in write order with the
                // records.
                if !batch.is_empty() {
                    out.push(std::mem::replace(&mut batch, Batch::new(appliance, limit)));
                }
                out.push(Batch::transcript(id, seq, json));
            }
            Ok(json) => {
                if !batch.push_json(id, seq, &json) {
                    out.push(std::mem::replace(&mut batch, Batch::new(appliance, limit)));
                    // An empty batch takes any record.
                    batch.push_json(id, seq, &json);
                }
            }
            Err(StoreError::NotFound { .. }) => batch.skip(id, seq),
            Err(e) => {
                // Unreadable: sending it again would not help; said once, loudly.
                log::error!(
                    "uplink: {what} {shown} is unreadable and is not sent: {}",
                    callgate_store::error_chain(&e)
                );
                batch.skip(id, seq);
            }
        }
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// The writes of `pairs` ((record id, write sequence)) are no longer in flight.
fn forget(in_flight: &mut HashSet<u64>, pairs: &[(u64, u64)]) {
    for (_, seq) in pairs {
        in_flight.remove(seq);
    }
}

/// Packet ids 1..=65535, none reused while in use.
#[derive(Default)]
struct Pkids {
    next: u16,
    used: HashSet<u16>,
}

impl Pkids {
    fn take(&mut self) -> u16 {
        loop {
            self.next = self.next.wrapping_add(1).max(1);
            if self.used.insert(self.next) {
                return self.next;
            }
        }
    }
    fn free(&mut self, id: u16) {
        self.used.remove(&id);
    }
}

fn kind(p: &Packet) -> &'static str {
    match p {
        Packet::Auth(_) => "AUTH",
        Packet::Connect(..) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PingReq(_) => "PINGREQ",
        Packet::PingResp(_) => "PINGRESP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::Disconnect(_) => "DISCONNECT",
    }
}
