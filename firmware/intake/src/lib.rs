//! # callgate-intake: transcripts from the PBX side, redacted before they leave the site
//!
//! ## What
//!
//! The PBX side hands the appliance call transcripts and notes over HTTPS with mutual TLS on
//! the private segment. Each is validated, redacted with [`callgate_redact`] and queued,
//! redacted, in the store's durable outbox ([`callgate_store::Store::put_transcript`]);
//! the uplink forwards it to the cloud on the `transcripts` topic. The original text is
//! never written to disk and never logged.
//!
//! ## The interface
//!
//! `POST /v1/transcripts`, either
//! - `Content-Type: application/json`: `{"call_id": "…", "kind": "transcript"|"note",
//!   "text": "…"}` (no other fields), or
//! - `Content-Type: text/plain; charset=utf-8`: the body is the text, the call id in the
//!   `X-Call-Id` header, the kind in `X-Kind` (default `transcript`).
//!
//! The call id is a SIP Call-ID's characters, 1 to 256 bytes ([`request::check_call_id`]);
//! it is forwarded as is. The text must be UTF-8, not empty, without NUL.
//!
//! | answer | when |
//! |---|---|
//! | `202 {"id": "…", "redactions": {"card": 1, …}}` | the redacted item is durably queued for the uplink; `id` (128 bits from the kernel's CSPRNG, hex) is the item's id at the cloud |
//! | 400 | not UTF-8, malformed JSON, unknown/missing fields, a bad call id or kind, an empty text |
//! | 404 / 405 | another path / another method |
//! | 413 | the body (declared or sent) is larger than `body_limit` |
//! | 415 | another content type or charset |
//! | 429 (`Retry-After`) | the source's rate limit (`rate_per_minute`, `burst`) is spent |
//! | 503 | the store could not queue the item |
//!
//! Nothing is queued on any error. There is no 401/403: a peer without a client
//! certificate chaining to `client_ca` never completes the TLS handshake, and a source
//! outside `sources` is dropped by the firewall (the `service:intake` rule) and, should a
//! packet get through, closed by the server before TLS.
//!
//! ## What goes to the cloud
//!
//! `<prefix>/transcripts`, QoS 1, one message per item ([`item`]):
//! `{"appliance", "id", "call_id", "kind", "received_ms", "text": <redacted>,
//! "redactions": {<kind>: <count>}}`. A message may come twice (after a reconnect); `id`
//! tells duplicates apart.
//!
//! ## Design
//!
//! - [`request::validate`] is the whole validation as a pure function (unit-tested);
//!   [`limit::Limiter`] the per-source token bucket, with the clock passed in.
//! - [`spawn`] starts the server as a handle and a task: reconfigured (settings, identity)
//!   over mpsc, its [`Status`] out over watch. hyper 1.x (HTTP/1.1 only) over tokio-rustls:
//!   TLS 1.3 only, client certificates required and verified against `client_ca`, no
//!   0-RTT; the server's key is made on the appliance and sealed under the vault's KEK like
//!   SIP over TLS's (`callgate intake csr`, `callgate intake install-cert`).
//! - Limits: 64 connections at once, the TLS handshake and the request head within 10 s,
//!   the body within 30 s, a connection at most 120 s.
//! - Tested: the validation and the rate limit by unit tests; the server in process over
//!   loopback with real TLS and a real store (`tests/server.rs`); end to end in the lab with
//!   curl, openssl, nftables and Mosquitto (`hil-tests/tests/intake.rs`).
//!
//! ## Current limitations
//!
//! - The original text is wiped ([`zeroize`]) in the buffers this crate owns (the body as
//!   assembled, the parsed text) once redacted; copies in hyper's and rustls's read buffers
//!   and serde_json's scratch space are freed without being wiped.
//! - Redaction is rule-based: what [`callgate_redact`] does not find (its crate docs list
//!   it) leaves the site.
//! - The status is not shown on the console yet (`show intake` is planned); its counters
//!   are in [`Status`] only.
//! - On a pair, each appliance serves its own `[intake] listen` address, and what waits in
//!   one appliance's outbox is sent by that appliance only (not replicated to the peer).
//!   A listen address not (yet) on the appliance, such as a virtual address the peer
//!   holds, is bound again every 5 s until it is.
//! - Without `[uplink]`, accepted items wait in the store, sealed, until one is configured.
//! - PBX client certificates are not checked for revocation (no CRL or OCSP): to shut
//!   out a PBX, commit a `client_ca` that no longer issues it, or drop its address from
//!   `sources`.
//! - TLS 1.3 only: a PBX that speaks only TLS 1.2 cannot connect.

pub mod item;
pub mod limit;
pub mod request;
mod server;

pub use server::{spawn, Command, IntakeHandle, Status};

use std::net::SocketAddr;

use ipnet::IpNet;

/// Errors of the intake's set-up (a request's errors are [`request::Reject`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IntakeError {
    #[error("the intake's TLS settings: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {why}")]
    Listen { addr: SocketAddr, why: String },
}

/// What the intake runs with (from `[intake]` and the appliance's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Sources allowed to connect.
    pub sources: Vec<IpNet>,
    /// The CA (PEM) the PBX's client certificates must chain to.
    pub client_ca_pem: String,
    pub body_limit: usize,
    pub rate_per_minute: u32,
    pub burst: u32,
    /// The appliance's name, in each item.
    pub appliance: String,
}

impl Settings {
    /// The settings of `cfg`'s `[intake]`, if it has one.
    pub fn from_config(cfg: &callgate_config::Config) -> Option<Settings> {
        let i = cfg.intake.as_ref()?;
        Some(Settings {
            listen: i.listen(),
            sources: i.sources().iter().map(|p| p.net()).collect(),
            client_ca_pem: i.client_ca.get_ref().clone(),
            body_limit: usize::try_from(i.body_limit()).unwrap_or(usize::MAX),
            rate_per_minute: i.rate_per_minute(),
            burst: i.burst(),
            appliance: cfg.appliance.name.as_str().to_owned(),
        })
    }
}

/// The server's identity: its key (made here, sealed under the KEK by the daemon) and the
/// certificate chain a CA signed for it (PEM, leaf first).
#[derive(Debug, Clone)]
pub struct Identity {
    pub chain_pem: String,
    pub key: callgate_pki::Key,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
