//! The appliance's TLS identities: an ECDSA P-256 key made on the appliance (its PKCS#8
//! bytes are sealed under the vault's key-encryption key by the daemon, never written in
//! the clear), a certificate signing request naming the appliance, and the certificate
//! chain a CA signed for it, read and checked before it is installed.
//!
//! Two identities use it: the uplink's client certificate (`callgate_uplink`) and the SIP
//! proxy's server certificate for SIP over TLS. The uplink identity also signs the
//! appliance's erasure receipts ([`Key::sign`]; the cloud checks them against the
//! certificate with [`verify_signature`]).

use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use rustls::pki_types::UnixTime;
use rustls::RootCertStore;
use zeroize::Zeroizing;

/// What went wrong with a key or a certificate, in words for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PkiError(pub String);

fn err(s: impl Into<String>) -> PkiError {
    PkiError(s.into())
}

/// A private key of this appliance. Wiped on drop, never printed.
#[derive(Clone)]
pub struct Key {
    pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(…)")
    }
}

impl Key {
    /// A new ECDSA P-256 key from the kernel's CSPRNG (ring).
    pub fn generate() -> Result<Key, PkiError> {
        let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| err(format!("cannot make a key: {e}")))?;
        Ok(Key {
            pkcs8: Zeroizing::new(kp.serialized_der().to_vec()),
        })
    }

    /// The key from its PKCS#8 bytes (as [`Key::pkcs8`] gave them).
    pub fn from_pkcs8(der: &[u8]) -> Result<Key, PkiError> {
        let k = Key {
            pkcs8: Zeroizing::new(der.to_vec()),
        };
        k.key_pair()?;
        Ok(k)
    }

    /// The PKCS#8 bytes: seal them before they touch a disk.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key as rustls takes it.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.to_vec()))
    }

    /// The rcgen key pair (signing requests; tests sign certificates with it).
    pub fn key_pair(&self) -> Result<KeyPair, PkiError> {
        KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(self.pkcs8.as_slice()),
            &PKCS_ECDSA_P256_SHA256,
        )
        .map_err(|e| err(format!("the key is damaged: {e}")))
    }

    /// A PEM certificate signing request with the subject `CN=<name>` and the subject
    /// alternative names `sans` (DNS names or IP literals).
    pub fn csr_pem(&self, name: &str, sans: &[String]) -> Result<String, PkiError> {
        let kp = self.key_pair()?;
        let mut params = CertificateParams::new(sans.to_vec()).map_err(|e| err(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&kp)
            .map_err(|e| err(format!("cannot make the request: {e}")))?;
        csr.pem()
            .map_err(|e| err(format!("cannot write the request: {e}")))
    }

    /// The raw public key (the SubjectPublicKeyInfo's bit string).
    pub fn public_key_raw(&self) -> Result<Vec<u8>, PkiError> {
        Ok(self.key_pair()?.public_key_raw().to_vec())
    }

    /// An ECDSA P-256 SHA-256 signature of `msg` (ASN.1 DER), as a certificate of this key
    /// verifies it ([`verify_signature`]): what the appliance's receipts carry.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.pkcs8, &rng)
            .map_err(|e| err(format!("the key is damaged: {e}")))?;
        kp.sign(&rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| err(format!("cannot sign: {e}")))
    }
}

/// Checks an ECDSA P-256 SHA-256 signature (ASN.1 DER) of `msg` against the public key of
/// the DER certificate `cert_der` (the certificate's own validity is not checked here).
pub fn verify_signature(cert_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), PkiError> {
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
    let (_, c) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| err(format!("the certificate does not parse: {e}")))?;
    let key = c.public_key().subject_public_key.data.as_ref();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
        .verify(msg, sig)
        .map_err(|_| err("the signature does not verify against the certificate's key"))
}

/// What `show` commands say of an installed certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// The subject's common name.
    pub subject: String,
    /// The issuer, as text.
    pub issuer: String,
    /// Not valid after, seconds since the Unix epoch.
    pub not_after: i64,
    /// Not valid before, seconds since the Unix epoch.
    pub not_before: i64,
}

/// The certificates in `pem`, leaf first.
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| err(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in it (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// The subject, issuer and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, c) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| err(format!("the certificate does not parse: {e}")))?;
    let subject = c
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(CertInfo {
        subject,
        issuer: c.issuer().to_string(),
        not_after: c.validity().not_after.timestamp(),
        not_before: c.validity().not_before.timestamp(),
    })
}

/// Checks that the leaf `der` carries `key`'s public key.
pub fn check_key(der: &[u8], key: &Key) -> Result<(), PkiError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| err(format!("the certificate does not parse: {e}")))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw()?.as_slice() {
        return Err(err(
            "the certificate is not for this appliance's key (was the request made here?)",
        ));
    }
    Ok(())
}

/// Checks a server certificate chain (PEM, leaf first) before it is installed: every
/// certificate parses, the leaf is for `key`, is valid at `now`, and, where it limits its
/// use, allows TLS server authentication. Its details, or why not.
pub fn check_server_certificate(
    chain_pem: &str,
    key: &Key,
    now: UnixTime,
) -> Result<CertInfo, PkiError> {
    let chain = certificates(chain_pem)?;
    for c in &chain[1..] {
        cert_info(c)?;
    }
    let leaf = &chain[0];
    check_key(leaf, key)?;
    let info = cert_info(leaf)?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now < info.not_before {
        return Err(err(
            "the certificate is not valid yet (is the clock right?)",
        ));
    }
    if now > info.not_after {
        return Err(err("the certificate has expired"));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| err(format!("the certificate does not parse: {e}")))?;
    if let Ok(Some(eku)) = parsed.extended_key_usage() {
        if !eku.value.any && !eku.value.server_auth {
            return Err(err(
                "the certificate does not allow TLS server authentication (extended key usage)",
            ));
        }
    }
    Ok(info)
}

/// CA certificates (PEM) as trust anchors.
pub fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca_pem)? {
        roots
            .add(c)
            .map_err(|e| err(format!("the CA certificate is unusable: {e}")))?;
    }
    Ok(roots)
}

/// A verifier of client certificates that chain to `ca_pem` (ring, TLS 1.2 and 1.3).
pub fn client_verifier(
    ca_pem: &str,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, PkiError> {
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca_pem)?),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| err(format!("the CA certificate is unusable: {e}")))
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    for (o, d) in out.iter_mut().zip(digest.as_ref()) {
        *o = *d;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use rcgen::{
        date_time_ymd, BasicConstraints, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose,
    };

    struct Ca {
        key: KeyPair,
        params: CertificateParams,
    }

    impl Ca {
        fn new() -> Ca {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, "lab CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            Ca { key, params }
        }
        /// A certificate for `key`, valid in the years `from` to `to` (1 January).
        fn sign(&self, key: &Key, eku: ExtendedKeyUsagePurpose, from: i32, to: i32) -> String {
            let mut p = CertificateParams::new(vec!["203.0.113.1".to_owned()]).unwrap();
            p.distinguished_name.push(DnType::CommonName, "lab-a");
            p.extended_key_usages = vec![eku];
            p.not_before = date_time_ymd(from, 1, 1);
            p.not_after = date_time_ymd(to, 1, 1);
            let issuer = Issuer::from_params(&self.params, &self.key);
            p.signed_by(&key.key_pair().unwrap(), &issuer)
                .unwrap()
                .pem()
        }
    }

    /// 1 June 2026.
    fn june_2026() -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_780_272_000))
    }

    #[test]
    fn a_signature_verifies_against_the_keys_certificate_only() {
        let ca = Ca::new();
        let key = Key::generate().unwrap();
        let cert = ca.sign(&key, ExtendedKeyUsagePurpose::ClientAuth, 2026, 2027);
        let der = certificates(&cert).unwrap().remove(0);
        let sig = key.sign(b"receipt").unwrap();
        verify_signature(&der, b"receipt", &sig).unwrap();
        assert!(verify_signature(&der, b"receipT", &sig).is_err());
        let other = ca.sign(
            &Key::generate().unwrap(),
            ExtendedKeyUsagePurpose::ClientAuth,
            2026,
            2027,
        );
        let other = certificates(&other).unwrap().remove(0);
        assert!(verify_signature(&other, b"receipt", &sig).is_err());
        assert!(verify_signature(b"junk", b"receipt", &sig).is_err());
    }

    #[test]
    fn a_server_certificate_for_this_key_valid_now_installs_and_nothing_else_does() {
        let ca = Ca::new();
        let key = Key::generate().unwrap();
        let csr = key.csr_pem("lab-a", &["203.0.113.1".to_owned()]).unwrap();
        assert!(csr.contains("BEGIN CERTIFICATE REQUEST"), "{csr}");
        let now = june_2026();
        let good = ca.sign(&key, ExtendedKeyUsagePurpose::ServerAuth, 2026, 2027);
        let info = check_server_certificate(&good, &key, now).unwrap();
        assert_eq!(info.subject, "lab-a");
        assert!(info.issuer.contains("lab CA"), "{info:?}");
        assert!(info.not_before < info.not_after);
        let cases = [
            (
                ca.sign(&key, ExtendedKeyUsagePurpose::ServerAuth, 2024, 2026),
                "expired",
            ),
            (
                ca.sign(&key, ExtendedKeyUsagePurpose::ServerAuth, 2027, 2028),
                "not valid yet",
            ),
            (
                ca.sign(&key, ExtendedKeyUsagePurpose::ClientAuth, 2026, 2027),
                "server authentication",
            ),
            (
                ca.sign(
                    &Key::generate().unwrap(),
                    ExtendedKeyUsagePurpose::ServerAuth,
                    2026,
                    2027,
                ),
                "not for this appliance's key",
            ),
            ("garbage".to_owned(), "no certificate"),
        ];
        for (pem, why) in cases {
            let e = check_server_certificate(&pem, &key, now).unwrap_err();
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
        // The key survives its stored form; junk is not a key.
        let back = Key::from_pkcs8(key.pkcs8()).unwrap();
        assert!(check_server_certificate(&good, &back, now).is_ok());
        assert!(Key::from_pkcs8(b"not a key").is_err());
        assert_eq!(format!("{key:?}"), "Key(…)");
    }

    #[test]
    fn a_fingerprint_is_the_sha256_of_the_der() {
        // SHA-256 of the empty string (FIPS 180-2).
        let fp = fingerprint(b"");
        assert_eq!(fp[..4], [0xe3, 0xb0, 0xc4, 0x42]);
    }
}
