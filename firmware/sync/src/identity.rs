//! A node's own identity: a self-signed ECDSA P-256 certificate naming the node, and its
//! private key.
//!
//! The certificate is made at pairing and lives as long as the pairing; nobody signs it and
//! nobody checks it against a CA. The peer knows it by its [`Fingerprint`] (SHA-256 of the
//! DER certificate), pinned after first contact.
//!
//! Stored form ([`Identity::to_pem`]): the certificate (`CERTIFICATE`) then the PKCS#8
//! private key (`PRIVATE KEY`), PEM, in one string.

use std::fmt;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use zeroize::Zeroizing;

use crate::error::{hex, IdentityError};

/// SHA-256 of a DER certificate: what a peer is pinned by.
pub type Fingerprint = [u8; 32];

/// The longest node name (the config's entry names are at most 32 characters).
const MAX_NODE_NAME: usize = 32;

/// One node's certificate and private key. The key is wiped on drop and never printed.
#[derive(Clone)]
pub struct Identity {
    cert: CertificateDer<'static>,
    /// PKCS#8 DER.
    key: Zeroizing<Vec<u8>>,
    node_name: String,
    fingerprint: Fingerprint,
}

impl Identity {
    /// A new key pair and a self-signed certificate for `node_name` (CN and DNS subject
    /// alternative name), usable for both TLS client and server authentication.
    ///
    /// `node_name` follows the config's entry names (`[a-z0-9-]`, starting with a letter,
    /// at most 32 characters) and must not end with `-`, so it is also a DNS name.
    pub fn generate(node_name: &str) -> Result<Identity, IdentityError> {
        check_node_name(node_name)?;
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(IdentityError::Generate)?;
        let mut params =
            CertificateParams::new(vec![node_name.to_owned()]).map_err(IdentityError::Generate)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.self_signed(&key).map_err(IdentityError::Generate)?;
        Identity::from_parts(
            cert.der().clone(),
            Zeroizing::new(key.serialized_der().to_vec()),
        )
    }

    /// The stored form: certificate and private key, PEM. Holds the private key: wrap it
    /// before it touches a disk.
    pub fn to_pem(&self) -> Zeroizing<String> {
        // Sized once: a `String` that grows frees its old buffer (the key's first lines)
        // unwiped; `Zeroizing` wipes only the last one.
        let mut out = Zeroizing::new(String::with_capacity(
            pem_block_len("CERTIFICATE", self.cert.len())
                + pem_block_len("PRIVATE KEY", self.key.len()),
        ));
        push_pem_block(&mut out, "CERTIFICATE", &self.cert);
        push_pem_block(&mut out, "PRIVATE KEY", &self.key);
        out
    }

    /// Reads [`Identity::to_pem`]'s form back: the first certificate and the first private
    /// key in `pem`, which must belong together.
    pub fn from_pem(pem: &[u8]) -> Result<Identity, IdentityError> {
        let cert = match CertificateDer::from_pem_slice(pem) {
            Ok(c) => c,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(IdentityError::NoCertificate)
            }
            Err(e) => return Err(IdentityError::Pem(e)),
        };
        let key = match PrivatePkcs8KeyDer::from_pem_slice(pem) {
            Ok(k) => k,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(IdentityError::NoPrivateKey)
            }
            Err(e) => return Err(IdentityError::Pem(e)),
        };
        Identity::from_parts(cert, Zeroizing::new(key.secret_pkcs8_der().to_vec()))
    }

    /// Checks that the certificate parses and names a node, and that the key loads and
    /// matches it.
    fn from_parts(
        cert: CertificateDer<'static>,
        key: Zeroizing<Vec<u8>>,
    ) -> Result<Identity, IdentityError> {
        let node_name = cert_node_name(&cert)
            .map_err(IdentityError::Certificate)?
            .ok_or(IdentityError::NoNodeName)?;
        let identity = Identity {
            fingerprint: fingerprint(&cert),
            cert,
            key,
            node_name,
        };
        identity
            .certified_key(&crate::tls::provider())
            .map_err(IdentityError::Key)?;
        Ok(identity)
    }

    /// SHA-256 of the DER certificate: what the peer pins.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The node name the certificate carries.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The DER certificate.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert
    }

    /// The certificate and the loaded signing key, checked to match, for rustls.
    pub(crate) fn certified_key(
        &self,
        provider: &CryptoProvider,
    ) -> Result<Arc<CertifiedKey>, rustls::Error> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.to_vec()));
        let certified = CertifiedKey::from_der(vec![self.cert.clone()], key, provider)?;
        // `from_der` lets an "unknown" consistency through; demand a definite match.
        certified.keys_match()?;
        Ok(Arc::new(certified))
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_name", &self.node_name)
            .field("fingerprint", &hex(&self.fingerprint))
            .field("key", &"…")
            .finish()
    }
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(cert_der: &[u8]) -> Fingerprint {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    // SHA-256 digests are 32 bytes; zip stops at the shorter one regardless.
    for (o, d) in out.iter_mut().zip(digest.as_ref()) {
        *o = *d;
    }
    out
}

/// The node a certificate names: its first valid DNS subject alternative name, if any.
pub(crate) fn cert_node_name(cert: &CertificateDer<'_>) -> Result<Option<String>, webpki::Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)?;
    let name = parsed.valid_dns_names().next().map(str::to_owned);
    Ok(name)
}

fn check_node_name(name: &str) -> Result<(), IdentityError> {
    let chars_ok = name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    let starts_alpha = name.bytes().next().is_some_and(|c| c.is_ascii_lowercase());
    let ends_ok = !name.ends_with('-');
    if name.len() > MAX_NODE_NAME || !chars_ok || !starts_alpha || !ends_ok {
        return Err(IdentityError::NodeName(name.to_owned()));
    }
    Ok(())
}

/// The length [`push_pem_block`] writes for `der_len` bytes under `label`: the two
/// armour lines, base64 in lines of 64 characters, a line end after the last.
fn pem_block_len(label: &str, der_len: usize) -> usize {
    let chunks = der_len.div_ceil(3);
    let breaks = chunks.saturating_sub(1) / 16 + usize::from(der_len > 0);
    "-----BEGIN -----\n".len() + "-----END -----\n".len() + 2 * label.len() + 4 * chunks + breaks
}

/// Appends one PEM block (standard base64, 64 columns) to `out`. Writes straight into the
/// caller's (zeroizing) string, so no stray copy of a private key is left behind.
fn push_pem_block(out: &mut String, label: &str, der: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for (i, chunk) in der.chunks(3).enumerate() {
        if i > 0 && i % 16 == 0 {
            out.push('\n');
        }
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (j, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if j <= chunk.len() {
                // Masked to 6 bits: always an index into the 64-entry alphabet.
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    if !der.is_empty() {
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_block_is_as_long_as_its_length_says() {
        for n in 0..400 {
            let der = vec![0xA5u8; n];
            let mut out = String::new();
            push_pem_block(&mut out, "PRIVATE KEY", &der);
            assert_eq!(out.len(), pem_block_len("PRIVATE KEY", n), "{n} bytes");
        }
    }

    #[test]
    fn the_pem_form_never_outgrows_its_first_buffer() {
        let id = Identity::generate("pem-test").unwrap();
        let pem = id.to_pem();
        assert_eq!(pem.len(), pem.capacity());
    }

    #[test]
    fn node_names_follow_the_config_and_dns() {
        for ok in ["a", "cg-a", "node1", "abcdefghijklmnopqrstuvwxyz012345"] {
            assert!(check_node_name(ok).is_ok(), "{ok}");
            assert!(rustls::pki_types::DnsName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1a",
            "A",
            "a-",
            "a.b",
            "a_b",
            "-a",
            "abcdefghijklmnopqrstuvwxyz0123456",
        ] {
            assert!(check_node_name(bad).is_err(), "{bad}");
        }
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        let mut out = String::new();
        push_pem_block(&mut out, label, der);
        out
    }

    #[test]
    fn pem_blocks_are_standard_base64() {
        assert_eq!(pem_block("X", b""), "-----BEGIN X-----\n-----END X-----\n");
        assert_eq!(
            pem_block("X", b"f"),
            "-----BEGIN X-----\nZg==\n-----END X-----\n"
        );
        assert_eq!(
            pem_block("X", b"fo"),
            "-----BEGIN X-----\nZm8=\n-----END X-----\n"
        );
        assert_eq!(
            pem_block("X", b"foo"),
            "-----BEGIN X-----\nZm9v\n-----END X-----\n"
        );
        // 48 bytes make exactly one 64-column line; 49 start a second.
        let one = pem_block("X", &[0xff; 48]);
        assert_eq!(one.lines().nth(1).map(str::len), Some(64));
        assert_eq!(one.lines().count(), 3);
        let two = pem_block("X", &[0xff; 49]);
        assert_eq!(two.lines().nth(2), Some("/w=="));
        assert!(two.lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn the_stored_form_reads_back_as_the_same_identity() {
        let id = Identity::generate("cg-a").unwrap();
        let pem = id.to_pem();
        let back = Identity::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(back.fingerprint(), id.fingerprint());
        assert_eq!(back.node_name(), "cg-a");
        assert_eq!(*back.key, *id.key);
        assert_eq!(fingerprint(id.certificate_der()), id.fingerprint());
    }

    #[test]
    fn a_key_from_another_identity_is_refused() {
        let a = Identity::generate("cg-a").unwrap();
        let b = Identity::generate("cg-b").unwrap();
        let mut mixed = String::new();
        push_pem_block(&mut mixed, "CERTIFICATE", &a.cert);
        push_pem_block(&mut mixed, "PRIVATE KEY", &b.key);
        assert!(matches!(
            Identity::from_pem(mixed.as_bytes()),
            Err(IdentityError::Key(_))
        ));
    }

    #[test]
    fn incomplete_or_garbled_pem_is_refused() {
        let a = Identity::generate("cg-a").unwrap();
        let mut cert_only = String::new();
        push_pem_block(&mut cert_only, "CERTIFICATE", &a.cert);
        assert!(matches!(
            Identity::from_pem(cert_only.as_bytes()),
            Err(IdentityError::NoPrivateKey)
        ));
        assert!(matches!(
            Identity::from_pem(b""),
            Err(IdentityError::NoCertificate)
        ));
        let mut junk_cert = String::new();
        push_pem_block(&mut junk_cert, "CERTIFICATE", b"not a certificate");
        push_pem_block(&mut junk_cert, "PRIVATE KEY", &a.key);
        assert!(matches!(
            Identity::from_pem(junk_cert.as_bytes()),
            Err(IdentityError::Certificate(_))
        ));
        let truncated = &a.to_pem()[..200];
        assert!(Identity::from_pem(truncated.as_bytes()).is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        let a = Identity::generate("cg-a").unwrap();
        let shown = format!("{a:?}");
        assert!(shown.contains("cg-a"));
        assert!(!shown.contains(&format!("{:?}", &a.key[..8])));
    }
}
