//! Test harness: identities, and a raw implementation of the protocol written apart from
//! the crate (its own TLS configs, its own tag computation) for peers that misbehave and
//! for relays in the middle. Loopback only.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callgate_sync::{fingerprint, Identity, PeerInfo, PeerPin, SyncClient, SyncConn, SyncError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const KEY: [u8; 32] = [0x42; 32];
pub const OTHER_KEY: [u8; 32] = [0x43; 32];
pub const LOOPBACK_ANY: &str = "127.0.0.1:0";
pub const LONG: Duration = Duration::from_secs(20);

pub fn any() -> SocketAddr {
    LOOPBACK_ANY.parse().unwrap()
}

pub fn ids() -> (Identity, Identity) {
    (
        Identity::generate("cg-a").unwrap(),
        Identity::generate("cg-b").unwrap(),
    )
}

/// Runs a test body with an overall deadline, so no test can hang.
pub async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took over 60 s")
}

pub async fn connect(
    peer: SocketAddr,
    id: &Identity,
    key: &[u8; 32],
    pin: PeerPin,
) -> Result<(SyncConn, PeerInfo), SyncError> {
    SyncClient::connect(any(), peer, id, key, pin, LONG).await
}

// ---- the raw protocol ----

/// Accepts any certificate, checks TLS 1.3 signatures (the attacker's relay is no less
/// careful than it needs to be to get through).
#[derive(Debug)]
pub struct AcceptAny(WebPkiSupportedAlgorithms);

fn accept_any() -> Arc<AcceptAny> {
    Arc::new(AcceptAny(
        rustls::crypto::ring::default_provider().signature_verification_algorithms,
    ))
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl ClientCertVerifier for AcceptAny {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("no TLS 1.2".into()))
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn cert_and_key(id: &Identity) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let pem = id.to_pem();
    (
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap(),
        PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap(),
    )
}

/// A TLS client config; `None` presents no client certificate.
pub fn raw_client_config(id: Option<&Identity>) -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(accept_any());
    Arc::new(match id {
        Some(id) => {
            let (c, k) = cert_and_key(id);
            b.with_client_auth_cert(vec![c], k).unwrap()
        }
        None => b.with_no_client_auth(),
    })
}

pub fn raw_server_config(id: &Identity) -> Arc<ServerConfig> {
    let (c, k) = cert_and_key(id);
    Arc::new(
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(accept_any())
            .with_single_cert(vec![c], k)
            .unwrap(),
    )
}

/// The binding tag as the crate docs define it.
pub fn tag(key: &[u8; 32], role: u8, exporter: &[u8; 32], fp: &[u8; 32]) -> [u8; 32] {
    let mut msg = b"callgate/sync-bind/v1".to_vec();
    msg.push(role);
    msg.extend_from_slice(exporter);
    msg.extend_from_slice(fp);
    let t = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), &msg);
    t.as_ref().try_into().unwrap()
}

pub fn exporter<D>(conn: &rustls::ConnectionCommon<D>) -> [u8; 32] {
    conn.export_keying_material([0u8; 32], b"EXPORTER-callgate-sync-bind", None)
        .unwrap()
}

pub fn peer_fp<D>(conn: &rustls::ConnectionCommon<D>) -> [u8; 32] {
    fingerprint(conn.peer_certificates().unwrap()[0].as_ref())
}

pub type RawClient = tokio_rustls::client::TlsStream<TcpStream>;
pub type RawServer = tokio_rustls::server::TlsStream<TcpStream>;

/// TLS to `server` as `id` (no binding yet).
pub async fn raw_tls_client(
    server: SocketAddr,
    id: Option<&Identity>,
) -> std::io::Result<RawClient> {
    let tcp = TcpStream::connect(server).await?;
    tokio_rustls::TlsConnector::from(raw_client_config(id))
        .connect(ServerName::IpAddress(server.ip().into()), tcp)
        .await
}

/// A peer that does the whole protocol right, by hand: TLS as `id`, then the tags. Returns
/// the stream, ready for frames.
pub async fn raw_authenticated_client(
    server: SocketAddr,
    id: &Identity,
    key: &[u8; 32],
) -> RawClient {
    let mut tls = raw_tls_client(server, Some(id)).await.unwrap();
    let (exp, server_fp) = {
        let c = tls.get_ref().1;
        (exporter(c), peer_fp(c))
    };
    tls.write_all(&tag(key, 1, &exp, &id.fingerprint()))
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut theirs = [0u8; 32];
    tls.read_exact(&mut theirs).await.unwrap();
    assert_eq!(theirs, tag(key, 2, &exp, &server_fp), "server's tag");
    tls
}

/// A frame as the docs define it.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}
