//! # callgate-sync
//!
//! The pair's sync channel (to come): one TCP connection on the sync link between the two
//! appliances of a redundant pair, encrypted and mutually authenticated. This first part
//! holds each node's identity.
//!
//! ## Background
//! The issue asks for "replication over an encrypted, mutually authenticated sync channel
//! (rustls with certificates made at pairing and pinned; no CA)". Each appliance makes its
//! own self-signed certificate at pairing; the peer knows it by its fingerprint.
//!
//! ## Design
//! - **[`Identity`]**: each node's ECDSA P-256 key and self-signed certificate naming the
//!   node (CN and DNS SAN), made by [`Identity::generate`], stored as PEM
//!   ([`Identity::to_pem`] / [`Identity::from_pem`]), known to the peer by its
//!   [`Fingerprint`] (SHA-256 of the DER certificate).
//!
//! ## Current limitations
//! - No key or certificate rotation: an identity lives as long as the pairing. Certificates
//!   carry rcgen's default validity (1975 to 4096).

mod error;
mod identity;

pub use error::IdentityError;
pub use identity::{fingerprint, Fingerprint, Identity};
