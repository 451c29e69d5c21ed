//! The heartbeat datagram: fixed size, header in clear (authenticated), body sealed with
//! XChaCha20-Poly1305 under the pair key.
//!
//! # Layout
//!
//! Every integer is big-endian. [`DATAGRAM_LEN`] = 93 bytes; nothing is optional.
//!
//! | offset | bytes | field | on parse |
//! |---|---|---|---|
//! | 0 | 4 | magic `CGHB` | else [`WireError::Magic`] |
//! | 4 | 1 | version = [`VERSION`] | else [`WireError::Version`] |
//! | 5 | 1 | kind = [`KIND_HEARTBEAT`] (other kinds reserved) | else [`WireError::Kind`] |
//! | 6 | 1 | sender [`NodeId`] (0 or 1) | else [`FieldError::Sender`] |
//! | 7 | 1 | path [`PathId`] (0..=3) | else [`FieldError::Path`] |
//! | 8 | 24 | nonce (random per datagram) | |
//! | 32 | 45 | body, encrypted: | else [`WireError::Auth`] |
//! | 32 | 8 | · session (nonzero) | else [`FieldError::Session`] |
//! | 40 | 8 | · seq | |
//! | 48 | 8 | · echo (0 = none) | |
//! | 56 | 8 | · term | |
//! | 64 | 1 | · role: 0 Standby, 1 Active | else [`FieldError::Role`] |
//! | 65 | 1 | · priority | |
//! | 66 | 1 | · health 0..=100 | else [`FieldError::Health`] |
//! | 67 | 1 | · synced: 0 or 1 | else [`FieldError::Synced`] |
//! | 68 | 8 | · watermark | |
//! | 76 | 1 | · flags: bit 0 handover requested, others 0 | else [`FieldError::Flags`] |
//! | 77 | 16 | Poly1305 tag | |
//!
//! The whole 32-byte header (nonce included) is the AEAD's associated data, so a changed
//! sender or path fails authentication like a changed body does.
//!
//! # Why XChaCha20
//!
//! The pair key lives as long as the pair is configured and each node sends a heartbeat per
//! path every 20–30 ms (about 80 datagrams a second for two paths). With 96-bit random
//! nonces the birthday bound (2^32 messages for a 2^-32 collision chance) is reached in
//! under two years of one node's traffic; a repeated nonce under ChaCha20-Poly1305 leaks
//! the XOR of two bodies and lets an observer forge tags. 192-bit random nonces put the
//! collision chance out of reach for any key lifetime, without nonce state to persist.
//!
//! # Order of checks
//!
//! [`open`] refuses a datagram of any length but [`DATAGRAM_LEN`] before anything else,
//! then checks the clear header (magic, version, kind, sender, path), then authenticates
//! and decrypts, then checks the body's fields. Each refusal has its own [`WireError`]
//! variant, so the driver can count them apart; none of them panics.

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use crate::RngError;

/// The first four bytes of every heartbeat datagram.
pub const MAGIC: [u8; 4] = *b"CGHB";
/// The one format version this crate speaks.
pub const VERSION: u8 = 1;
/// The datagram kind of a heartbeat; other kinds are reserved and refused.
pub const KIND_HEARTBEAT: u8 = 1;
/// Bytes in a [`PairKey`].
pub const KEY_LEN: usize = 32;
/// Bytes in the random nonce (XChaCha20: 192 bits).
pub const NONCE_LEN: usize = 24;
/// Bytes in the clear header: magic, version, kind, sender, path, nonce.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 1 + 1 + NONCE_LEN;
/// Bytes in the encrypted body.
pub const BODY_LEN: usize = 8 + 8 + 8 + 8 + 1 + 1 + 1 + 1 + 8 + 1;
/// Bytes in the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes in a heartbeat datagram: every heartbeat has exactly this length.
pub const DATAGRAM_LEN: usize = HEADER_LEN + BODY_LEN + TAG_LEN;

/// Most heartbeat paths a pair can have ([`PathId`] 0..=3).
pub const MAX_PATHS: usize = 4;

/// Highest health score.
pub const MAX_HEALTH: u8 = 100;

/// The pair's shared 256-bit key, wiped when dropped. Its `Debug` shows no byte of it.
pub struct PairKey(Zeroizing<[u8; KEY_LEN]>);

impl PairKey {
    /// Takes the key's bytes (the parameter's copy is wiped; the caller wipes its own).
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> PairKey {
        let key = PairKey(Zeroizing::new(bytes));
        bytes.zeroize();
        key
    }

    /// A new random key from the kernel's random number generator.
    pub fn generate() -> Result<PairKey, RngError> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut_slice()).map_err(RngError)?;
        Ok(PairKey(key))
    }

    /// The key's bytes (to seal it for storage; never to log).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        // The cipher keeps a copy of the key and wipes it when dropped.
        XChaCha20Poly1305::new(Key::from_slice(self.0.as_slice()))
    }
}

impl fmt::Debug for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairKey(…)")
    }
}

/// One of the pair's two nodes: 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(u8);

impl NodeId {
    /// Node 0.
    pub const ZERO: NodeId = NodeId(0);
    /// Node 1.
    pub const ONE: NodeId = NodeId(1);

    /// The number on the wire.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The other node of the pair.
    pub const fn peer(self) -> NodeId {
        NodeId(self.0 ^ 1)
    }
}

impl TryFrom<u8> for NodeId {
    type Error = FieldError;
    fn try_from(v: u8) -> Result<NodeId, FieldError> {
        match v {
            0 | 1 => Ok(NodeId(v)),
            _ => Err(FieldError::Sender(v)),
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// Which heartbeat path a datagram travelled: 0..=3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathId(u8);

impl PathId {
    /// Path 0: the direct sync link between the two appliances.
    pub const SYNC_LINK: PathId = PathId(0);
    /// Path 1: the private (management) segment.
    pub const PRIVATE_SEGMENT: PathId = PathId(1);

    /// The number on the wire.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The path as an index below [`MAX_PATHS`].
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl TryFrom<u8> for PathId {
    type Error = FieldError;
    fn try_from(v: u8) -> Result<PathId, FieldError> {
        if usize::from(v) < MAX_PATHS {
            Ok(PathId(v))
        } else {
            Err(FieldError::Path(v))
        }
    }
}

/// The role a heartbeat announces. A fenced node announces [`WireRole::Standby`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireRole {
    /// Holds nothing; ready to take over.
    Standby = 0,
    /// Holds the service addresses and the firewall/SIP state.
    Active = 1,
}

impl WireRole {
    fn from_wire(v: u8) -> Result<WireRole, FieldError> {
        match v {
            0 => Ok(WireRole::Standby),
            1 => Ok(WireRole::Active),
            _ => Err(FieldError::Role(v)),
        }
    }
}

/// The flags byte. Only known bits can be set: bits this version does not know are
/// refused on parse (a newer peer must bump the version to use them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    /// No flag set.
    pub const EMPTY: Flags = Flags(0);
    /// Bit 0: the active node asks the standby to take over (planned failover).
    pub const HANDOVER: Flags = Flags(1);
    const KNOWN: u8 = 1;

    /// The flags of `bits`, or `None` if an unknown bit is set.
    pub const fn from_bits(bits: u8) -> Option<Flags> {
        if bits & !Self::KNOWN == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// The byte on the wire.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether the sender asks its peer to take over.
    pub const fn handover(self) -> bool {
        self.0 & Self::HANDOVER.0 != 0
    }
}

/// A heartbeat: the clear header's node and path plus the decrypted body. Magic, version,
/// kind and nonce are not kept: they are constants or fresh per datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Heartbeat {
    /// The node that sent it.
    pub sender: NodeId,
    /// The path it was sent on.
    pub path: PathId,
    /// The sender's random session id, nonzero (see the `replay` module).
    pub session: u64,
    /// The sender's datagram counter, one sequence for all paths.
    pub seq: u64,
    /// The receiver's session the sender last saw in an authentic datagram; 0 = none.
    pub echo: u64,
    /// The sender's election term.
    pub term: u64,
    /// The sender's role.
    pub role: WireRole,
    /// The sender's configured priority (higher wins).
    pub priority: u8,
    /// The sender's health score, 0..=100.
    pub health: u8,
    /// Whether the sender's replicated state is in sync with the active's.
    pub synced: bool,
    /// The sender's replication position.
    pub watermark: u64,
    /// [`Flags::HANDOVER`] and future bits.
    pub flags: Flags,
}

/// A field that holds a value the format does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// The sender is not node 0 or 1.
    #[error("sender {0} is not a node of the pair (0 or 1)")]
    Sender(u8),
    /// The path is not 0..=3.
    #[error("path {0} is not 0..=3")]
    Path(u8),
    /// Session 0 is reserved for "none" (the echo of a node that saw no peer).
    #[error("session 0 is reserved")]
    Session,
    /// The role byte is neither Standby (0) nor Active (1).
    #[error("role {0} is neither standby (0) nor active (1)")]
    Role(u8),
    /// The health score is above 100.
    #[error("health {0} is above 100")]
    Health(u8),
    /// The synced byte is neither 0 nor 1.
    #[error("synced {0} is neither 0 nor 1")]
    Synced(u8),
    /// A flag bit this version does not know is set.
    #[error("flags {0:#04x} set an unknown bit")]
    Flags(u8),
}

/// Why a datagram was refused or a heartbeat could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The datagram is not [`DATAGRAM_LEN`] bytes long (truncated, oversized, or another
    /// protocol on the port). Checked before anything else.
    #[error("a datagram of {0} bytes is not a heartbeat")]
    Length(usize),
    /// The first four bytes are not `CGHB`.
    #[error("bad magic")]
    Magic,
    /// A format version this node does not speak.
    #[error("unknown version {0}")]
    Version(u8),
    /// A datagram kind this node does not know.
    #[error("unknown kind {0}")]
    Kind(u8),
    /// The tag does not verify: tampered, corrupted, or sealed under another key.
    #[error("authentication failed")]
    Auth,
    /// A field holds a value the format does not allow (in the header: found before the
    /// tag is checked; in the body: after).
    #[error("invalid field value")]
    Field(#[source] FieldError),
    /// The random number generator failed while drawing a nonce.
    #[error("no nonce")]
    Rng(#[source] RngError),
    /// The AEAD refused to seal. Cannot happen: a 45-byte body is far below its limit.
    #[error("sealing failed")]
    Seal,
}

impl From<FieldError> for WireError {
    fn from(e: FieldError) -> WireError {
        WireError::Field(e)
    }
}

/// Seals `hb` under `key` with a fresh random nonce. Refuses field values that [`open`]
/// would refuse (session 0, health above 100), so whatever it seals opens again.
pub fn seal(key: &PairKey, hb: &Heartbeat) -> Result<[u8; DATAGRAM_LEN], WireError> {
    hb.check()?;
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| WireError::Rng(RngError(e)))?;
    let plain = encode(hb, &nonce).ok_or(WireError::Seal)?;
    seal_plain(key, &plain).ok_or(WireError::Seal)
}

/// Opens a datagram: length, then header, then tag, then body fields; see the module docs.
pub fn open(key: &PairKey, datagram: &[u8]) -> Result<Heartbeat, WireError> {
    let datagram: &[u8; DATAGRAM_LEN] = datagram
        .try_into()
        .map_err(|_| WireError::Length(datagram.len()))?;
    // The splits cannot fail on an array of DATAGRAM_LEN bytes; `Length` keeps it total.
    let layout = WireError::Length(DATAGRAM_LEN);
    let mut r = Reader(datagram);
    let header: &[u8; HEADER_LEN] = r.array().ok_or(layout)?;
    let sealed_body: &[u8; BODY_LEN] = r.array().ok_or(layout)?;
    let tag: &[u8; TAG_LEN] = r.array().ok_or(layout)?;

    let (sender, path, nonce) = parse_header(header)?;
    let mut body = *sealed_body;
    key.cipher()
        .decrypt_in_place_detached(
            &XNonce::from(nonce),
            header,
            &mut body,
            Tag::from_slice(tag),
        )
        .map_err(|_| WireError::Auth)?;
    parse_body(&body, sender, path)
}

impl Heartbeat {
    /// The values `seal` refuses because `open` would.
    fn check(&self) -> Result<(), FieldError> {
        if self.session == 0 {
            return Err(FieldError::Session);
        }
        if self.health > MAX_HEALTH {
            return Err(FieldError::Health(self.health));
        }
        Ok(())
    }
}

/// The clear header checks, in wire order; returns sender, path and nonce.
fn parse_header(header: &[u8; HEADER_LEN]) -> Result<(NodeId, PathId, [u8; NONCE_LEN]), WireError> {
    let bad = WireError::Length(DATAGRAM_LEN);
    let mut r = Reader(header);
    if *r.array::<4>().ok_or(bad)? != MAGIC {
        return Err(WireError::Magic);
    }
    let version = r.u8().ok_or(bad)?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let kind = r.u8().ok_or(bad)?;
    if kind != KIND_HEARTBEAT {
        return Err(WireError::Kind(kind));
    }
    let sender = NodeId::try_from(r.u8().ok_or(bad)?)?;
    let path = PathId::try_from(r.u8().ok_or(bad)?)?;
    let nonce = *r.array::<NONCE_LEN>().ok_or(bad)?;
    Ok((sender, path, nonce))
}

/// The decrypted body's fields, checked.
fn parse_body(body: &[u8; BODY_LEN], sender: NodeId, path: PathId) -> Result<Heartbeat, WireError> {
    let bad = WireError::Length(DATAGRAM_LEN);
    let mut r = Reader(body);
    let session = r.u64().ok_or(bad)?;
    let seq = r.u64().ok_or(bad)?;
    let echo = r.u64().ok_or(bad)?;
    let term = r.u64().ok_or(bad)?;
    let role = r.u8().ok_or(bad)?;
    let priority = r.u8().ok_or(bad)?;
    let health = r.u8().ok_or(bad)?;
    let synced = r.u8().ok_or(bad)?;
    let watermark = r.u64().ok_or(bad)?;
    let flags = r.u8().ok_or(bad)?;
    if session == 0 {
        return Err(FieldError::Session.into());
    }
    let role = WireRole::from_wire(role)?;
    if health > MAX_HEALTH {
        return Err(FieldError::Health(health).into());
    }
    let synced = match synced {
        0 => false,
        1 => true,
        v => return Err(FieldError::Synced(v).into()),
    };
    let flags = Flags::from_bits(flags).ok_or(FieldError::Flags(flags))?;
    Ok(Heartbeat {
        sender,
        path,
        session,
        seq,
        echo,
        term,
        role,
        priority,
        health,
        synced,
        watermark,
        flags,
    })
}

/// Clear header and body of `hb` with `nonce`, as raw bytes: `None` only if the layout
/// constants disagree.
pub(crate) fn encode(
    hb: &Heartbeat,
    nonce: &[u8; NONCE_LEN],
) -> Option<[u8; HEADER_LEN + BODY_LEN]> {
    let mut out = [0u8; HEADER_LEN + BODY_LEN];
    let mut w = Writer(&mut out);
    w.put(MAGIC)?;
    w.put([VERSION, KIND_HEARTBEAT, hb.sender.get(), hb.path.get()])?;
    w.put(*nonce)?;
    w.put(hb.session.to_be_bytes())?;
    w.put(hb.seq.to_be_bytes())?;
    w.put(hb.echo.to_be_bytes())?;
    w.put(hb.term.to_be_bytes())?;
    w.put([hb.role as u8, hb.priority, hb.health, u8::from(hb.synced)])?;
    w.put(hb.watermark.to_be_bytes())?;
    w.put([hb.flags.bits()])?;
    w.0.is_empty().then_some(out)
}

/// Seals raw clear header + body bytes as they are (the nonce is the header's): the one
/// place that encrypts. [`seal`] feeds it checked values; the fuzz target and the tests feed
/// it crafted bodies, to reach the body checks behind the tag. `None` only if the AEAD
/// refuses, which it cannot for 45 bytes.
pub(crate) fn seal_plain(
    key: &PairKey,
    plain: &[u8; HEADER_LEN + BODY_LEN],
) -> Option<[u8; DATAGRAM_LEN]> {
    let mut out = [0u8; DATAGRAM_LEN];
    let (head, rest) = out.split_first_chunk_mut::<HEADER_LEN>()?;
    let (body, tag_out) = rest.split_first_chunk_mut::<BODY_LEN>()?;
    let (plain_head, plain_body) = plain.split_first_chunk::<HEADER_LEN>()?;
    *head = *plain_head;
    body.copy_from_slice(plain_body);
    let (_, nonce) = head.split_last_chunk::<NONCE_LEN>()?;
    let tag = key
        .cipher()
        .encrypt_in_place_detached(&XNonce::from(*nonce), head, body)
        .ok()?;
    tag_out.copy_from_slice(&tag);
    Some(out)
}

/// A cursor that hands out fixed-size pieces of a byte string; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Option<&'a [u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|b| u8::from_be_bytes(*b))
    }

    fn u64(&mut self) -> Option<u64> {
        self.array::<8>().map(|b| u64::from_be_bytes(*b))
    }
}

/// A cursor that fills a byte string front to back; `None` past its end.
struct Writer<'a>(&'a mut [u8]);

impl Writer<'_> {
    fn put<const N: usize>(&mut self, bytes: [u8; N]) -> Option<()> {
        let (head, rest) = std::mem::take(&mut self.0).split_first_chunk_mut::<N>()?;
        *head = bytes;
        self.0 = rest;
        Some(())
    }
}

#[cfg(test)]
mod tests;
