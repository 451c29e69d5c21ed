//! # callgate-sync
//!
//! The pair's sync channel: one TCP connection on the sync link between the two appliances
//! of a redundant pair, encrypted and mutually authenticated, carrying length-prefixed
//! messages. What travels over it (dialogs, call records, pinholes, config) is the
//! replication's business, not this crate's.
//!
//! ## Background
//! The issue asks for "replication over an encrypted, mutually authenticated sync channel
//! (rustls with certificates made at pairing and pinned; no CA)". The two appliances
//! already share a 32-byte pair key from pairing (`callgate-vault`), and each makes its
//! own self-signed certificate. There is no CA to ask, and at first contact neither side
//! knows the other's certificate yet: the pair key is what ties the two together.
//!
//! ## Design
//! ```text
//!   client (binds the sync link address)                server (listens)
//!     ── TCP ──────────────────────────────────────────▶
//!     ◀═ TLS 1.3, both send certificates; no CA, but every handshake signature checked ═▶
//!        pin check: peer certificate fingerprint == pinned one (if pinned)
//!     ── tag(client) = HMAC(pair key, domain‖1‖exporter‖client cert fp) ──▶
//!     ◀── tag(server) = HMAC(pair key, domain‖2‖exporter‖server cert fp) ──
//!        each checks the other's tag in constant time
//!     ◀═ [u32 BE length][payload] … both ways ═▶
//! ```
//! - **TLS**: rustls, TLS 1.3 only, the ring provider (no cmake/C toolchain in the static
//!   musl build), client certificates mandatory, no session tickets, no resumption, no
//!   early data: every connection is a full handshake that shows both certificates.
//! - **[`Identity`]**: each node's ECDSA P-256 key and self-signed certificate naming the
//!   node (CN and DNS SAN), made by [`Identity::generate`], stored as PEM
//!   ([`Identity::to_pem`] / [`Identity::from_pem`]), known to the peer by its
//!   [`Fingerprint`] (SHA-256 of the DER certificate).
//! - **Certificate verification**: the verifiers accept any single well-formed certificate
//!   that names a node (no CA, no validity dates, no name match) but verify the TLS 1.3
//!   `CertificateVerify` signature with rustls' `verify_tls13_signature` and the provider's
//!   algorithms, so the peer does hold the key of the certificate it shows.
//! - **[`PeerPin`]**: `Some(fingerprint)` refuses any other certificate before the binding
//!   step ([`SyncError::PinMismatch`]), however good its binding would be; the refused
//!   peer gets no tag and sees the connection close. `None` (first contact after
//!   pairing) lets the binding alone authenticate; the fingerprint the peer presented
//!   comes back in [`PeerInfo`] for the caller to pin. A peer showing this node's own
//!   certificate is refused ([`SyncError::OwnCertificate`]).
//! - **Channel binding** (module `binding`): inside the session each side sends
//!   `HMAC-SHA256(pair key, "callgate/sync-bind/v1" ‖ role ‖ exporter ‖ own cert fp)`, the
//!   exporter being the session's TLS exporter (label `EXPORTER-callgate-sync-bind`, no
//!   context, 32 bytes), and checks the peer's. Without the pair key nobody can make a tag;
//!   a relay in the middle holds two sessions with two exporters and cannot forward tags
//!   from one to the other; the role byte stops reflection. A wrong key fails on both
//!   sides with [`SyncError::Binding`], before any message.
//! - **[`SyncServer`]**: connections are taken only while [`SyncServer::accept`] is
//!   awaited; their handshakes run as tasks (at most [`MAX_PENDING_HANDSHAKES`]),
//!   each bounded by [`HANDSHAKE_TIMEOUT`]; [`SyncServer::accept`] returns the next
//!   outcome, good or bad, and a bad one never stops the next. **[`SyncClient::connect`]**
//!   binds the local sync link address first, and bounds connect + handshake + binding by
//!   the caller's timeout.
//! - **[`SyncConn`]**: `[u32 big-endian length][payload]` frames up to
//!   [`MAX_MESSAGE_LEN`], the length checked before allocating. `recv` is cancel-safe.
//!   [`SyncConn::into_split`] gives a [`SyncReader`] and a [`SyncWriter`] for two tasks.
//!
//! ## Current limitations
//! - No key or certificate rotation: an identity lives as long as the pairing; re-pairing
//!   makes new identities and clears the pin. Certificates carry rcgen's default validity
//!   (1975 to 4096) and dates are never checked.
//! - The daemon persists the identity (wrapping its private key under the sealed KEK) and
//!   the pin, and pins the fingerprint it gets back from the first successful contact.
//!   Until a pin is set, anyone with the pair key is accepted as the peer.
//! - The pair key is copied into each handshake's HMAC key state inside ring, which does
//!   not wipe it; our own copies are wiped on drop.
//! - The server does not filter peers by address: anyone who reaches the port gets a
//!   handshake (bounded in time and number). Admitting only the peer is the firewall's
//!   job (callgate-firewall's `pair:sync` rules).
//! - `send` is not cancel-safe; after any error, drop the connection.
//! - One protocol version; the domain string carries `v1`, no version negotiation.

mod binding;
mod client;
mod conn;
mod error;
mod frame;
mod identity;
mod server;
mod tls;

use std::time::Duration;

pub use binding::PeerInfo;
pub use client::SyncClient;
pub use conn::{SyncConn, SyncReader, SyncWriter};
pub use error::{IdentityError, SyncError};
pub use identity::{fingerprint, Fingerprint, Identity};
pub use server::{SyncServer, MAX_PENDING_HANDSHAKES};

/// The pinned certificate fingerprint of the peer, or `None` before first contact.
pub type PeerPin = Option<Fingerprint>;

/// The largest message payload, in bytes (72 MiB: a pair-wide config commit carries a
/// whole config, up to 32 MiB of text, JSON-escaped). A larger length prefix from the peer
/// is refused before anything is allocated for it; only a peer that proved the pair key
/// gets to send one.
pub const MAX_MESSAGE_LEN: usize = 72 << 20;

/// How long the server gives one connection for its TLS handshake and channel binding.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
