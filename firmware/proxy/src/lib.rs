//! # callgate-proxy: the SIP proxy of the appliance
//!
//! ## What
//!
//! Carries calls from carrier peers to the destinations of the private call segment, as a
//! transaction-stateful, record-routing proxy (RFC 3261 §16), and reports what happened:
//! one call detail record per call, media pinholes for the negotiated RTP/RTCP, sources to
//! block. Two halves:
//!
//! - [`Proxy`]: the pure core. No sockets, no clock, no threads: messages come in through
//!   [`Proxy::on_message`] with the time ([`Now`]), timers through [`Proxy::on_timer`] at
//!   [`Proxy::next_deadline`], and everything to do comes out as [`Output`]s (send these
//!   bytes, open or close a pinhole, block a source, store a record, log a line). Every
//!   call flow of the system tests is also a unit test of the core.
//! - [`driver`]: the I/O. One thread with a current-thread tokio runtime owns the UDP
//!   sockets, the TCP and TLS listeners and connections, and the core; [`driver::SipHandle`] asks
//!   it for calls and stats and swaps in a new config. Pinholes, blocks and records go out
//!   over channels to the firewall and store components.
//!
//! ## The call path (RFC 3261 §16 as this proxy applies it)
//!
//! 1. Flood guard for every source: a token bucket per address (carriers and destinations
//!    have limits of their own and are never blocked), scanner User-Agents dropped from
//!    anyone; repeat offenders become [`Output::Block`].
//! 2. [`callgate_sip::check`]: syntax and §16.3 checks (400, 416, 420, 483, 505, 513).
//!    Then the core refuses a CSeq of 2^31 or more with 400 (RFC 3261 §8.1.1.5), so our
//!    own CSeqs never wrap.
//! 3. Loop detection: a request already carrying one of our Vias gets 482.
//! 4. Retransmissions are absorbed by their server transaction; CANCEL is matched to its
//!    INVITE (481 when none) and accepted only from the INVITE's sender (403 otherwise);
//!    requests with a To tag are in-dialog (below).
//! 5. A new INVITE: non-carrier source 403, foreign Request-URI host 403, a Route header
//!    naming anything but us 403, a Call-ID already in use 482, an unknown number 404, an
//!    offer that is malformed or asks for media the config does not allow 488 with a
//!    Warning ([`MediaRules`]), past the source's dialog cap or the CPS or concurrent-call
//!    cap 503 with Retry-After. Then 100 Trying, and the
//!    INVITE goes to the route's destinations in strategy order; 408, 5xx, a transport
//!    error or silence for `response_timeout_secs` moves to the next one. Ringing longer
//!    than `ring_timeout_secs` is cancelled and answered 480 (no-answer).
//! 6. Record-Route: two entries when the call crosses interfaces (RFC 5658), so in-dialog
//!    requests come back through us. In-dialog requests are accepted only from the two
//!    parties of a known dialog (by tags and source address; 481 / 403 otherwise) and go to
//!    the other party's address, never to a host named in the message: not an open relay.
//! 7. Responses are taken only from where their request went (transport, address, port,
//!    and the TCP connection when known); others are counted and dropped.
//! 8. Media: every description is checked against the config (`crate::media`): an offer
//!    that fails gets 488 and is not relayed; an answer that fails ends the call (a 2xx is
//!    ACKed and BYEd and the caller gets 488; early media is cancelled; a re-INVITE's or an
//!    ACK's answer ends the dialog with BYE both ways). When an answer arrives (18x or 2xx
//!    with SDP, re-INVITEs too), pinholes open for the RTP and RTCP of offer and answer,
//!    each from the other party's signalled address (or its carrier's media pool), with a
//!    timeout of the maximum call length; they close at BYE, CANCEL, failure or the
//!    maximum length.
//!
//! ## Records
//! Each call produces exactly one final [`Output::Record`] (`ended: true`); an answered call
//! also produces one at answer time (`ended: false`, same `seq`) so a crash mid-call cannot
//! lose it, and its 2xx reaches the caller only once that record is durable
//! ([`Proxy::on_record_stored`]). Refusals of carrier INVITEs (403 domain or Route, 404,
//! 482, 488, 503) are calls with disposition `rejected`. Requests from non-carrier sources are not calls and leave no
//! record (they are counted and logged, rate-limited).
//!
//! ## Memory per call
//! A held dialog (answered, acknowledged) takes about 830 heap bytes in the core (unit test
//! `a_held_dialog_takes_at_most_900_heap_bytes`; `scripts/bench sip --memory` measures the
//! daemon's resident growth): the call state (384 bytes: local addresses as numbers into a
//! small table, the usual media description of one address with its RTP and RTCP ports
//! inline, campaign and destination texts shared with the routes), one allocation for the
//! Call-ID, tags and numbers, one for the dialog's From, To, Contacts and routes, and its
//! share of the tables. Its INVITE transactions live on for RFC 6026's 64·T1 as 64-bit
//! keyed fingerprints only (`core/accepted.rs`).
//!
//! ## Limits
//! - Transports UDP, TCP and TLS. Requests without an RFC 3261 branch get 400.
//! - No forking: destinations are tried one after the other.
//! - The record of an answered call whose daemon died keeps `end_at: None`.
//! - Branches, tags and weighted draws come from the kernel's CSPRNG (`crate::rng`).
//! - No latching: media that comes from somewhere other than the signalled address (NAT)
//!   is dropped unless the carrier's `media_sources` pool covers it.
//! - Media cannot cross address families (no media relay): a call between an IPv6 and an
//!   IPv4 party gets no pinhole.

mod core;
pub mod driver;
mod media;
mod msgs;
mod rng;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use crate::core::{Proxy, Settings};
pub use crate::media::MediaRules;
pub use callgate_sip::transaction::Millis;
use serde::Serialize;

/// Transport of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (RFC 3261 §26.2): a connection like TCP's, the same framing.
    Tls,
}

impl Transport {
    /// As written in a Via (`UDP`, `TCP`, `TLS`).
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// Over a connection (TCP or TLS).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// A TCP connection, as numbered by the driver.
pub type ConnId = u64;

/// The other end of a message: transport, address and (TCP) the connection it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The connection to answer on; `None` means "any connection to `addr`, or a new one".
    pub conn: Option<ConnId>,
}

/// The time, twice: monotonic for timers, wall clock for records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Millis,
    pub unix_ms: u64,
}

/// Bytes to put on the wire, shared with the transaction layer's retransmissions. A
/// serialized message (`Vec<u8>`) becomes one without a copy.
pub type Payload = bytes::Bytes;

/// Something the core asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send `bytes` to `peer` from our socket `local`.
    Send {
        peer: Peer,
        local: SocketAddr,
        bytes: Payload,
    },
    /// Open (with `ttl`) or close the UDP media pinhole from `src` (the other party's
    /// signalled address, or its carrier's media pool) to `dst`.
    Pinhole {
        open: bool,
        src: ipnet::IpNet,
        dst: SocketAddr,
        ttl: Duration,
    },
    /// Put `ip` into the firewall blocklist for `ttl`.
    Block { ip: IpAddr, ttl: Duration },
    /// Store this call record: `seq` identifies the call (the answer-time record and the
    /// final one share it); `ended` marks the final one. The answer-time record holds the
    /// call's 2xx back from the caller until the driver reports it durable
    /// ([`Proxy::on_record_stored`]).
    Record {
        seq: u64,
        cdr: Box<callgate_cdr::Cdr>,
        ended: bool,
    },
    /// A log line (already rate-limited where the source is the network). Never a caller's
    /// number or name: calls by Call-ID or record, a dialled number that is no tracking
    /// number by its keyed tag ([`callgate_cdr::Redacted`]).
    Log { level: log::Level, line: String },
    /// RFC 5923: the peer on connection `conn` asked (Via `alias`) that requests to its
    /// sent-by address `addr` reuse that connection. Given only when `addr` is the
    /// connection's own peer address (so no one can alias another's address).
    Alias { conn: ConnId, addr: SocketAddr },
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallState {
    /// INVITE forwarded, no ringing yet.
    Trying,
    /// A destination rings (or plays early media).
    Ringing,
    /// Answered; media flows.
    Answered,
}

/// One live call, as `callgate show calls` prints it. The caller number is masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveCall {
    pub call_id: String,
    pub tracking_number: String,
    pub campaign: String,
    pub caller: String,
    pub destination: String,
    pub state: CallState,
    pub transport: Transport,
    pub invite_at: u64,
    pub answer_at: Option<u64>,
    pub pinholes: usize,
}

/// Counters since start (`callgate show sip stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub requests_in: u64,
    pub responses_in: u64,
    pub retransmissions_absorbed: u64,
    pub malformed_dropped: u64,
    pub stray_responses: u64,
    /// Responses matching a transaction but not from where its request went: dropped.
    pub responses_wrong_source: u64,
    /// CANCEL or in-dialog requests from someone other than the call's parties.
    pub refused_wrong_party: u64,
    /// Offers refused with 488 and calls ended for their media (malformed SDP, or
    /// addresses or ports the config does not allow).
    pub refused_media: u64,
    pub calls_offered: u64,
    pub calls_answered: u64,
    pub calls_failed: u64,
    pub calls_rejected: u64,
    pub calls_cancelled: u64,
    pub calls_busy: u64,
    pub calls_no_answer: u64,
    pub calls_shed: u64,
    pub failovers: u64,
    pub refused_not_carrier: u64,
    pub refused_domain: u64,
    /// `sips:` Request-URIs refused: not over TLS (416), or their route has no TLS
    /// destination (480); RFC 5630: TLS on every hop.
    pub refused_sips: u64,
    pub refused_route: u64,
    pub refused_number: u64,
    pub refused_loop: u64,
    pub flood_dropped: u64,
    pub scanner_dropped: u64,
    pub sources_blocked: u64,
    pub pinholes_opened: u64,
    pub pinholes_closed: u64,
    pub active_calls: u64,
    pub transactions: u64,
    pub destinations_down: u64,
    /// New INVITEs left unanswered while a planned handover drained this node: their
    /// retransmission reaches the peer once it holds the addresses.
    pub invites_left_for_handover: u64,
}
