//! The appliance's identity towards the cloud: an ECDSA P-256 key made on the appliance
//! (its PKCS#8 bytes are sealed under the vault's key-encryption key by the daemon, never
//! written in the clear), a certificate signing request naming the appliance, and the
//! certificate the fleet's CA signed for it, checked before it is installed.

use rustls::pki_types::UnixTime;

pub use callgate_pki::{cert_info, certificates, roots, CertInfo, Key as ClientKey};

use crate::UplinkError;

impl From<callgate_pki::PkiError> for UplinkError {
    fn from(e: callgate_pki::PkiError) -> UplinkError {
        UplinkError::Identity(e.0)
    }
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
    callgate_pki::check_key(leaf, key)?;
    let info = cert_info(leaf)?;
    if info.subject != name {
        return Err(UplinkError::Identity(format!(
            "the certificate names '{}', not this appliance ('{name}')",
            info.subject
        )));
    }
    let verifier = callgate_pki::client_verifier(ca_pem)
        .map_err(|e| UplinkError::Identity(e.0.replace("the CA certificate", "the fleet CA")))?;
    verifier
        .verify_client_cert(leaf, &chain[1..], now)
        .map_err(|e| {
            UplinkError::Identity(format!(
                "the certificate does not verify against the fleet CA: {e}"
            ))
        })?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    };
    use rustls::pki_types::pem::PemObject;

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
        let csr = key.csr_pem("lab-a", &[]).unwrap();
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
