//! # callgate-uplink
//!
//! Call records from the appliance's encrypted store to the cloud's MQTT broker: MQTT 5
//! over TLS 1.3 with mutual authentication, nothing lost.
//!
//! ## Design
//! - **The store is the outbox.** Every write of a record puts its id in the store's
//!   `outbox` tree under the next write sequence, in the same durable commit
//!   ([`callgate_store::Store::outbox_page`]). The uplink reads the outbox in write order,
//!   reads each record from the encrypted store (as JSON joined from its stored parts),
//!   publishes batches at QoS 1 and, once the broker acknowledged a batch, marks it in the
//!   outbox, durably (one small value, the marks of several batches in one commit), before
//!   it counts as sent ([`callgate_store::Store::outbox_sent`]); the acknowledged writes
//!   are removed when the uplink is idle ([`callgate_store::Store::outbox_compact`]).
//!   Nothing is copied into a second queue, and nothing is acknowledged to the store that
//!   the broker did not acknowledge. After a dropped link, a broker restart, a lost
//!   session, SIGKILL or a power cut, whatever is still in the outbox is sent again:
//!   duplicates are possible and carry the same message id
//!   (`<appliance>:<record id>:<write sequence>`); losses are not.
//! - **Our own session**, not a client library's event loop: the MQTT 5 packets are
//!   `rumqttc`'s codec (`rumqttc::v5::mqttbytes`, no default features: none of its TLS
//!   stack); the session ([`session`]) sends CONNECT with a last will (retained `offline`
//!   status), keeps at most `inflight` batches unacknowledged (and no more than the
//!   broker's Receive Maximum), pings at the keepalive, keeps records the broker accepted
//!   without a subscriber (reason 0x10: the cloud's session is gone) and sends them again
//!   a second later, and ends on any protocol error,
//!   refused acknowledgement or silence longer than 1.5 keepalives.
//! - **TLS**: rustls (ring, TLS 1.3 only), the fleet CA the only trust anchor, the broker's
//!   DNS name verified, the appliance's certificate and key (the key sealed under the
//!   vault's KEK by the daemon; [`identity`]).
//! - **Reconnect** with full-jitter exponential backoff ([`backoff`]) from the kernel's
//!   CSPRNG, after a random delay at start, and no TLS attempt while the clock reads a
//!   time before 2026 ([`CLOCK_FLOOR_MS`]).
//! - A handle and a task ([`spawn`]): commands in over mpsc, [`Status`] out over watch.
//!
//! ## Topics (under the prefix, `callgate/<appliance>` by default)
//! | topic | QoS | retained | what |
//! |---|---|---|---|
//! | `records` | 1 | no | batches of call records ([`payload`]) |
//! | `transcripts` | 1 | no | one redacted transcript or note per message, from the store's outbox like the records, deleted from the store once acknowledged (`callgate_intake`) |
//! | `status` | 1 | yes | `{"state":"online",…}`; the last will sets `offline` |
//! | `events` | 1 | no | events the daemon raises, the backlog alarm, certificate expiry |
//! | `config/desired` | 1 | (the cloud's) | subscribed: signed config documents ([`signed`]) |
//! | `config/reported` | 1 | yes | what became of the last document: applied, confirmed, rolled back, refused |
//! | `subjects/request` | 1 | (the cloud's) | subscribed: subject requests signed by the fleet key ([`signed::SubjectRequest`]) |
//! | `subjects/reply` | 1 | no | the answer to each: the export, the erasure's receipt, or why it was refused |
//!
//! ## Durable messages
//! Besides the records, the store's outbox keeps messages that must not be lost
//! ([`UplinkHandle::publish_durably`], `callgate_store::OutboxMessage`): an erasure's
//! event with its receipt and the reply to the cloud's erasure request. The session reads
//! them at its start and whenever one is queued, sends them at QoS 1 with a `message_id`
//! (`<appliance>:m<id>`) added, and removes each once the broker acknowledged it; a message
//! the broker had no subscriber for goes again a second later. An erasure made while the
//! broker is away is delivered once it is back, across daemon restarts.
//!
//! ## Current limitations
//! - Other events, and replies that carry a subject's data (exports, access), wait in
//!   memory (at most 1000 in all): a subject's data is never kept for the uplink on disk;
//!   if the daemon stops first, the cloud asks again. Records, redacted transcripts and
//!   the durable messages above are the only things kept durably.
//! - Durable messages wait in the store for as long as no uplink is configured (one per
//!   erasure: its receipt); they go once one is, and nothing removes them before.

pub mod backoff;
pub mod identity;
pub mod payload;
pub mod session;
pub mod signed;
mod task;

use std::net::IpAddr;
use std::time::Duration;

pub use identity::{cert_info, check_certificate, CertInfo, ClientKey};
pub use rustls::pki_types::UnixTime;
pub use session::Inbound;
pub use task::{connect, spawn, Command, Credentials, UplinkHandle};

/// Errors of the uplink. `Display` is what `show uplink` and the log say.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UplinkError {
    #[error("{0}")]
    Identity(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(String),
    #[error("MQTT: {0}")]
    Protocol(String),
    #[error("the broker refused: {0}")]
    Refused(String),
    #[error("the store: {0}")]
    Store(String),
}

/// What the uplink runs with (from `[uplink]` and the appliance's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The DNS name the broker's certificate must carry.
    pub broker: String,
    /// Where to connect; `None`: `broker` is resolved.
    pub address: Option<IpAddr>,
    pub port: u16,
    /// The fleet CA (PEM): the only trust anchor.
    pub ca_pem: String,
    /// The appliance's name: the MQTT client id and the certificate's subject.
    pub client_id: String,
    pub prefix: String,
    pub keepalive: Duration,
    pub batch_records: usize,
    pub inflight: usize,
    pub backlog_alarm: usize,
    pub boot_delay_max: Duration,
    pub backoff_max: Duration,
    pub cert_warn: Duration,
}

/// The uplink's state, for `show uplink` (and the status topic).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// `disabled`, `no certificate`, `waiting`, `clock wrong`, `connecting`, `connected`,
    /// `backing off`.
    pub state: String,
    pub broker: String,
    pub prefix: String,
    /// The installed certificate.
    pub cert: Option<CertInfo>,
    /// Set within `cert_warn_days` of the certificate's expiry, and after it.
    pub cert_warning: Option<String>,
    /// Records waiting in the outbox (as of the last look).
    pub backlog: usize,
    pub backlog_alarm: bool,
    /// The backlog alarm's threshold (`backlog_alarm`).
    pub backlog_alarm_at: Option<usize>,
    /// The certificate warning's window, seconds.
    #[serde(skip)]
    pub cert_warn_secs: i64,
    /// Unix ms of the broker's last acknowledgement.
    pub last_ack_ms: Option<u64>,
    pub records_sent: u64,
    pub messages_acked: u64,
    pub connects: u64,
    /// Unix ms since the current connection is up.
    pub connected_since_ms: Option<u64>,
    /// Unix ms of the next attempt, when backing off.
    pub next_attempt_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Config documents received from the cloud.
    pub desired_received: u64,
    /// Unix ms of the last packet from the broker.
    pub last_contact_ms: Option<u64>,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The earliest plausible time: 2026-01-01T00:00:00Z. A clock before it (an appliance
/// without a battery-backed clock booting at 1970) would fail every certificate check;
/// the uplink waits instead of trying TLS, and says so.
pub const CLOCK_FLOOR_MS: u64 = 1_767_225_600_000;

/// Whether the clock is plausible (see [`CLOCK_FLOOR_MS`]).
pub fn clock_plausible(now_ms: u64) -> bool {
    now_ms >= CLOCK_FLOOR_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_before_2026_is_not_trusted_for_tls() {
        assert!(
            !clock_plausible(0),
            "1970: an appliance without its clock set"
        );
        assert!(!clock_plausible(CLOCK_FLOOR_MS - 1));
        assert!(clock_plausible(CLOCK_FLOOR_MS));
        assert!(clock_plausible(now_ms()), "this machine's clock");
    }
}
