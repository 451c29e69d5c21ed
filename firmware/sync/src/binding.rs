//! The channel binding: inside the fresh TLS session, each side proves it knows the pair
//! key, bound to this very session.
//!
//! ```text
//!   tag(role, fp) = HMAC-SHA256(pair key, "callgate/sync-bind/v1" || role
//!                                         || exporter || fp)
//!   role      1 = client, 2 = server (the sender's)
//!   exporter  TLS exporter, label "EXPORTER-callgate-sync-bind", no context, 32 bytes
//!   fp        SHA-256 of the sender's own DER certificate
//! ```
//! Each side sends its 32-byte tag, then reads the peer's and checks it (constant time)
//! against the tag it computes for the peer's role and the fingerprint of the certificate
//! the peer presented in this session. The exporter is derived from this session's
//! handshake secrets and transcript, so a relay that terminates TLS on both sides holds two
//! sessions with two exporters: tags it forwards from one do not verify in the other, and
//! without the pair key it can make none of its own. The role byte keeps a side's own tag
//! from being reflected back to it.
//!
//! Before the tags, the peer's certificate is checked against the pin (and against this
//! node's own certificate): a refused certificate gets no tag.

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::identity::{cert_node_name, fingerprint};
use crate::{Fingerprint, PeerPin, SyncError};

const DOMAIN: &[u8] = b"callgate/sync-bind/v1";
const EXPORTER_LABEL: &[u8] = b"EXPORTER-callgate-sync-bind";
pub(crate) const TAG_LEN: usize = 32;

/// Which end of the TLS connection a side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Client => 1,
            Role::Server => 2,
        }
    }

    fn peer(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// What this node brings to every handshake.
pub(crate) struct Local {
    pub(crate) pair_key: Zeroizing<[u8; 32]>,
    pub(crate) own_fingerprint: Fingerprint,
    pub(crate) pin: PeerPin,
}

/// What the finished TLS handshake says about the session: the peer's certificate and the
/// session's exporter value.
pub(crate) struct Session {
    pub(crate) peer_cert: CertificateDer<'static>,
    pub(crate) exporter: Zeroizing<[u8; 32]>,
}

impl Session {
    /// Reads the facts off a connection whose handshake has finished.
    pub(crate) fn of<D>(conn: &rustls::ConnectionCommon<D>) -> Result<Session, SyncError> {
        let peer_cert = conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or(SyncError::PeerCertificate)?
            .clone()
            .into_owned();
        let exporter = conn
            .export_keying_material(Zeroizing::new([0u8; 32]), EXPORTER_LABEL, None)
            .map_err(SyncError::Tls)?;
        Ok(Session {
            peer_cert,
            exporter,
        })
    }
}

/// What the caller learns about an authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// SHA-256 of the certificate the peer presented: pin it after first contact.
    pub fingerprint: Fingerprint,
    /// The node name in the peer's certificate (informational: the pin is what counts).
    pub node_name: String,
    /// The peer's address on the sync link.
    pub addr: std::net::SocketAddr,
}

/// Pin check, then the tag exchange. On success the peer holds the pair key and this is
/// its certificate.
pub(crate) async fn authenticate<S>(
    stream: &mut S,
    session: Session,
    local: &Local,
    role: Role,
    addr: std::net::SocketAddr,
) -> Result<PeerInfo, SyncError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let peer_fp = fingerprint(&session.peer_cert);
    if peer_fp == local.own_fingerprint {
        return Err(SyncError::OwnCertificate);
    }
    if let Some(pinned) = local.pin {
        if pinned != peer_fp {
            return Err(SyncError::PinMismatch {
                presented: peer_fp,
                pinned,
            });
        }
    }
    let node_name = cert_node_name(&session.peer_cert)
        .ok()
        .flatten()
        .ok_or(SyncError::PeerCertificate)?;

    let own = tag(
        &local.pair_key,
        role,
        &session.exporter,
        &local.own_fingerprint,
    );
    stream
        .write_all(own.as_ref())
        .await
        .map_err(SyncError::from_io)?;
    stream.flush().await.map_err(SyncError::from_io)?;

    let mut theirs = [0u8; TAG_LEN];
    stream
        .read_exact(&mut theirs)
        .await
        .map_err(SyncError::from_io)?;
    verify(
        &local.pair_key,
        role.peer(),
        &session.exporter,
        &peer_fp,
        &theirs,
    )?;
    Ok(PeerInfo {
        fingerprint: peer_fp,
        node_name,
        addr,
    })
}

fn message(role: Role, exporter: &[u8; 32], fp: &Fingerprint) -> Vec<u8> {
    let mut msg = Vec::with_capacity(DOMAIN.len() + 1 + exporter.len() + fp.len());
    msg.extend_from_slice(DOMAIN);
    msg.push(role.byte());
    msg.extend_from_slice(exporter);
    msg.extend_from_slice(fp);
    msg
}

/// The tag a side of `role` with certificate `fp` sends in the session with `exporter`.
pub(crate) fn tag(
    pair_key: &[u8; 32],
    role: Role,
    exporter: &[u8; 32],
    fp: &Fingerprint,
) -> ring::hmac::Tag {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pair_key);
    ring::hmac::sign(&key, &message(role, exporter, fp))
}

/// Checks a received tag in constant time.
pub(crate) fn verify(
    pair_key: &[u8; 32],
    role: Role,
    exporter: &[u8; 32],
    fp: &Fingerprint,
    received: &[u8; TAG_LEN],
) -> Result<(), SyncError> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pair_key);
    ring::hmac::verify(&key, &message(role, exporter, fp), received).map_err(|_| SyncError::Binding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag_bytes(key: &[u8; 32], role: Role, exp: &[u8; 32], fp: &Fingerprint) -> [u8; 32] {
        let t = tag(key, role, exp, fp);
        let mut out = [0u8; 32];
        out.copy_from_slice(t.as_ref());
        out
    }

    #[test]
    fn a_tag_verifies_only_for_its_key_role_session_and_certificate() {
        let key = [7u8; 32];
        let exp = [1u8; 32];
        let fp = [2u8; 32];
        let t = tag_bytes(&key, Role::Client, &exp, &fp);
        assert!(verify(&key, Role::Client, &exp, &fp, &t).is_ok());
        assert!(verify(&[8u8; 32], Role::Client, &exp, &fp, &t).is_err());
        assert!(verify(&key, Role::Server, &exp, &fp, &t).is_err());
        assert!(verify(&key, Role::Client, &[9u8; 32], &fp, &t).is_err());
        assert!(verify(&key, Role::Client, &exp, &[3u8; 32], &t).is_err());
    }

    #[test]
    fn the_tag_is_hmac_sha256_over_the_documented_message() {
        // The layout both nodes must agree on: domain, role byte, exporter, fingerprint.
        let msg = message(Role::Server, &[0xaa; 32], &[0xbb; 32]);
        assert_eq!(msg.len(), DOMAIN.len() + 1 + 32 + 32);
        assert!(msg.starts_with(b"callgate/sync-bind/v1\x02"));
        assert_eq!(&msg[DOMAIN.len() + 1..DOMAIN.len() + 33], &[0xaa; 32]);
        assert_eq!(&msg[DOMAIN.len() + 33..], &[0xbb; 32]);
    }
}
