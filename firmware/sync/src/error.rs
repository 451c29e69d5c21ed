//! The crate's errors: [`SyncError`] for the channel, [`IdentityError`] for certificates.
//!
//! As elsewhere in callgate, a variant's `Display` never repeats its source: log the whole
//! chain once, where the error is handled.

use std::io;
use std::time::Duration;

use crate::Fingerprint;

/// What can go wrong on the sync channel: setting it up, authenticating the peer, or
/// moving messages. After any error on a connection, drop the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A socket error (bind, connect, accept, read, write) that is not one of the others.
    #[error("sync channel I/O failed")]
    Io(#[source] io::Error),
    /// The TLS layer refused: a bad handshake, a bad signature, an alert from the peer,
    /// a TLS record that does not decrypt, or a configuration rustls would not take.
    #[error("TLS failed")]
    Tls(#[source] rustls::Error),
    /// Connecting, the TLS handshake and the channel binding together took too long.
    #[error("the sync handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer did not prove the pair key for this TLS session: a wrong pair key, or a
    /// binding message taken from another session (a relay).
    #[error("the peer did not prove the pair key for this session (channel binding failed)")]
    Binding,
    /// The peer presented a certificate other than the pinned one.
    #[error(
        "the peer presented certificate {} but {} is pinned",
        hex(presented),
        hex(pinned)
    )]
    PinMismatch {
        presented: Fingerprint,
        pinned: Fingerprint,
    },
    /// The peer presented this node's own certificate: the peer address leads back to this
    /// node, or something reflects its connections.
    #[error("the peer presented this node's own certificate")]
    OwnCertificate,
    /// The peer's certificate parsed for the TLS handshake but names no usable node.
    #[error("the peer's certificate names no node (no DNS subject alternative name)")]
    PeerCertificate,
    /// A message over [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN), announced by the peer's
    /// length prefix (nothing was allocated for it) or handed to `send`.
    #[error("a message of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: u64, max: usize },
    /// The peer went away: end of stream (cleanly or mid-message), reset, broken pipe. Also
    /// what every call returns after an earlier error broke the connection's framing.
    #[error("the sync connection is closed")]
    Closed,
}

impl SyncError {
    /// Sorts an I/O error from the TLS stream: rustls reports its errors wrapped in
    /// `io::Error`; the peer going away becomes [`SyncError::Closed`].
    pub(crate) fn from_io(err: io::Error) -> SyncError {
        if let Some(tls) = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return SyncError::Tls(tls.clone());
        }
        match err.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => SyncError::Closed,
            _ => SyncError::Io(err),
        }
    }
}

/// Why an [`Identity`](crate::Identity) could not be made or read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error(
        "invalid node name {0:?}: expected 1 to 32 characters of a-z, 0-9 and '-', starting \
         with a letter and not ending with '-'"
    )]
    NodeName(String),
    #[error("could not make the self-signed certificate")]
    Generate(#[source] rcgen::Error),
    #[error("the identity PEM does not parse")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("the identity PEM holds no certificate")]
    NoCertificate,
    #[error("the identity PEM holds no private key")]
    NoPrivateKey,
    #[error("the identity's certificate does not parse")]
    Certificate(#[source] webpki::Error),
    #[error("the identity's certificate names no valid node")]
    NoNodeName,
    #[error("the identity's private key is unusable or does not match its certificate")]
    Key(#[source] rustls::Error),
}

/// Lowercase hex, for fingerprints in messages.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}
