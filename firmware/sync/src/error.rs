//! The crate's errors.
//!
//! As elsewhere in callgate, a variant's `Display` never repeats its source: log the whole
//! chain once, where the error is handled.

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
