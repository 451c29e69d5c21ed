//! The appliance's identity towards the cloud: an ECDSA P-256 key made on the appliance
//! (its PKCS#8 bytes are sealed under the vault's key-encryption key by the daemon, never
//! written in the clear), a certificate signing request naming the appliance, and the
//! certificate the fleet's CA signed for it, checked before it is installed.

use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use zeroize::Zeroizing;

use crate::UplinkError;

/// The appliance's private key for the uplink. Wiped on drop, never printed.
#[derive(Clone)]
pub struct ClientKey {
    pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(…)")
    }
}

impl ClientKey {
    /// A new ECDSA P-256 key from the kernel's CSPRNG (ring).
    pub fn generate() -> Result<ClientKey, UplinkError> {
        let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| UplinkError::Identity(format!("cannot make a key: {e}")))?;
        Ok(ClientKey {
            pkcs8: Zeroizing::new(kp.serialized_der().to_vec()),
        })
    }

    /// The key from its PKCS#8 bytes (as [`ClientKey::pkcs8`] gave them).
    pub fn from_pkcs8(der: &[u8]) -> Result<ClientKey, UplinkError> {
        let k = ClientKey {
            pkcs8: Zeroizing::new(der.to_vec()),
        };
        k.key_pair()?;
        Ok(k)
    }

    /// The PKCS#8 bytes: seal them before they touch a disk.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    fn key_pair(&self) -> Result<KeyPair, UplinkError> {
        KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(self.pkcs8.as_slice()),
            &PKCS_ECDSA_P256_SHA256,
        )
        .map_err(|e| UplinkError::Identity(format!("the uplink key is damaged: {e}")))
    }

    /// A PEM certificate signing request with the subject `CN=<name>`, for the fleet's CA.
    pub fn csr_pem(&self, name: &str) -> Result<String, UplinkError> {
        let kp = self.key_pair()?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| UplinkError::Identity(e.to_string()))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&kp)
            .map_err(|e| UplinkError::Identity(format!("cannot make the request: {e}")))?;
        csr.pem()
            .map_err(|e| UplinkError::Identity(format!("cannot write the request: {e}")))
    }

    fn public_key_raw(&self) -> Result<Vec<u8>, UplinkError> {
        Ok(self.key_pair()?.public_key_raw().to_vec())
    }
}

/// What `show uplink` says of the installed certificate.
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
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, UplinkError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| UplinkError::Identity(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(UplinkError::Identity(
            "no certificate in it (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certs)
}

/// The subject, issuer and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, UplinkError> {
    let (_, c) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| UplinkError::Identity(format!("the certificate does not parse: {e}")))?;
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

/// Checks a certificate chain (PEM, leaf first) before it is installed: it is for this
/// key, names this appliance, is valid now for TLS client authentication, and chains to
/// the fleet CA (`ca_pem`). Its details, or why not.
pub fn check_certificate(
    chain_pem: &str,
    key: &ClientKey,
    name: &str,
    ca_pem: &str,
    now: UnixTime,
) -> Result<CertInfo, UplinkError> {
    let chain = certificates(chain_pem)?;
    let leaf = &chain[0];
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| UplinkError::Identity(format!("the certificate does not parse: {e}")))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw()?.as_slice() {
        return Err(UplinkError::Identity(
            "the certificate is not for this appliance's key (was the request made here?)".into(),
        ));
    }
    let info = cert_info(leaf)?;
    if info.subject != name {
        return Err(UplinkError::Identity(format!(
            "the certificate names '{}', not this appliance ('{name}')",
            info.subject
        )));
    }
    let verifier = client_verifier(ca_pem)?;
    verifier
        .verify_client_cert(leaf, &chain[1..], now)
        .map_err(|e| {
            UplinkError::Identity(format!(
                "the certificate does not verify against the fleet CA: {e}"
            ))
        })?;
    Ok(info)
}

/// The fleet CA's certificates as trust anchors.
pub fn roots(ca_pem: &str) -> Result<RootCertStore, UplinkError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca_pem)? {
        roots
            .add(c)
            .map_err(|e| UplinkError::Identity(format!("the fleet CA is unusable: {e}")))?;
    }
    Ok(roots)
}

fn client_verifier(
    ca_pem: &str,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, UplinkError> {
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca_pem)?),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| UplinkError::Identity(format!("the fleet CA is unusable: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use rcgen::{BasicConstraints, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyUsagePurpose};

    /// A CA that signs as the fleet's would.
    struct Ca {
        key: KeyPair,
        params: CertificateParams,
        cert: rcgen::Certificate,
    }

    impl Ca {
        fn new(cn: &str) -> Ca {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key).unwrap();
            Ca { key, params, cert }
        }
        /// A certificate for `key` naming `cn` (what signing its request gives).
        fn sign(&self, key: &ClientKey, cn: &str, eku: ExtendedKeyUsagePurpose) -> String {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![eku];
            let issuer = Issuer::from_params(&self.params, &self.key);
            p.signed_by(&key.key_pair().unwrap(), &issuer)
                .unwrap()
                .pem()
        }
    }

    #[test]
    fn a_request_signed_by_the_fleet_ca_installs_and_nothing_else_does() {
        let ca = Ca::new("fleet CA");
        let key = ClientKey::generate().unwrap();
        let csr = key.csr_pem("lab-a").unwrap();
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .unwrap();
        let (_, req) =
            <x509_parser::certification_request::X509CertificationRequest<'_> as x509_parser::prelude::FromDer<'_, _>>::from_der(der.as_ref())
                .unwrap();
        let cn = req
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
            .unwrap();
        assert_eq!(cn.as_str().unwrap(), "lab-a");
        let cert = ca.sign(&key, "lab-a", ExtendedKeyUsagePurpose::ClientAuth);
        let now = UnixTime::now();
        let info = check_certificate(&cert, &key, "lab-a", &ca.cert.pem(), now).unwrap();
        assert_eq!(info.subject, "lab-a");
        assert!(info.not_after > info.not_before);
        // Another appliance's name, another key, another CA, a server-only certificate.
        let e = check_certificate(&cert, &key, "lab-b", &ca.cert.pem(), now).unwrap_err();
        assert!(e.to_string().contains("names 'lab-a'"), "{e}");
        let other_key = ClientKey::generate().unwrap();
        let e = check_certificate(&cert, &other_key, "lab-a", &ca.cert.pem(), now).unwrap_err();
        assert!(
            e.to_string().contains("not for this appliance's key"),
            "{e}"
        );
        let rogue = Ca::new("rogue CA");
        let forged = rogue.sign(&key, "lab-a", ExtendedKeyUsagePurpose::ClientAuth);
        let e = check_certificate(&forged, &key, "lab-a", &ca.cert.pem(), now).unwrap_err();
        assert!(e.to_string().contains("fleet CA"), "{e}");
        let server = ca.sign(&key, "lab-a", ExtendedKeyUsagePurpose::ServerAuth);
        assert!(check_certificate(&server, &key, "lab-a", &ca.cert.pem(), now).is_err());
        assert!(check_certificate("garbage", &key, "lab-a", &ca.cert.pem(), now).is_err());
        // The key survives its stored form.
        let back = ClientKey::from_pkcs8(key.pkcs8()).unwrap();
        assert!(check_certificate(&cert, &back, "lab-a", &ca.cert.pem(), now).is_ok());
        assert!(ClientKey::from_pkcs8(b"not a key").is_err());
    }
}
