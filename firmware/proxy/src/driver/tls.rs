//! SIP over TLS in the driver, without I/O: the server settings built from `[sip.tls]`,
//! each carrier's pinning and the installed identity ([`TlsServer`]); the handshake guard
//! ([`handshake_guard`]); the counters and what `show sip stats` says ([`TlsStatus`]).
//!
//! - Each carrier gets a rustls server config of its own: with `tls` pinning, a client
//!   certificate is required and must chain to its CA and/or carry a pinned SHA-256
//!   fingerprint ([`Pinned`]); without it, TLS authenticates the appliance only and the
//!   carrier is known by its source prefix, as over UDP and TCP.
//! - Destinations (the PBXs) may connect over TLS too, server-authenticated only.
//! - The proxy connects out over TLS to a destination whose route says `transport=tls`,
//!   checking its certificate against `[sip.tls] destinations` (and its address), and to
//!   a pinned carrier whose connection is gone, checking its certificate against the
//!   carrier's pinning; it presents its own certificate as the client's.
//! - Any other source gets no handshake: the connection is closed before any
//!   cryptography is spent on it.
//! - TLS 1.2 and 1.3 (or 1.3 alone with `min_version = "1.3"`): rustls speaks nothing
//!   older, so TLS 1.0/1.1 and SSL clients fail their handshake.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use callgate_config::{Config, TlsVersion};
use callgate_pki::CertInfo;
use callgate_router::guard::{FloodConfig, FloodGuard, SourceLimits};
use ipnet::IpNet;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme,
};
use serde::Serialize;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The server certificate chain and its key, as the daemon unsealed them.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// Leaf first.
    pub chain_pem: String,
    pub key: callgate_pki::Key,
}

/// How the proxy meets one class of peers over TLS: the acceptor for their connections,
/// and the connector for ours to them (none without pinning: nothing to check them by).
#[derive(Clone)]
struct Side {
    acceptor: TlsAcceptor,
    connector: Option<TlsConnector>,
}

/// What the acceptors and connectors are built from now.
pub(super) struct TlsServer {
    /// Each carrier's prefixes and its side (its pinning), in config order.
    carriers: Vec<(Vec<IpNet>, Side)>,
    /// The destinations: they are server-authenticated only when they connect.
    destinations: (Vec<IpAddr>, Side),
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("carriers", &self.carriers.len())
            .finish()
    }
}

impl TlsServer {
    /// The acceptors for `cfg` with `id`, or why they cannot be built (the certificate or
    /// key is unusable, a carrier's CA is).
    pub fn build(cfg: &Config, id: &TlsIdentity) -> Result<TlsServer, String> {
        let chain = callgate_pki::certificates(&id.chain_pem).map_err(|e| e.to_string())?;
        let tls = &cfg.sip.tls;
        let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version() {
            TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V1_3 => &[&rustls::version::TLS13],
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server =
            |verifier: Option<Arc<dyn ClientCertVerifier>>| -> Result<TlsAcceptor, String> {
                let b = ServerConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(versions)
                    .map_err(|e| e.to_string())?;
                let b = match verifier {
                    Some(v) => b.with_client_cert_verifier(v),
                    None => b.with_no_client_auth(),
                };
                let mut c = b
                    .with_single_cert(chain.clone(), id.key.private_key_der())
                    .map_err(|e| format!("the SIP TLS certificate or key is unusable: {e}"))?;
                // No 0-RTT: a replayed early INVITE would be a second call.
                c.max_early_data_size = 0;
                Ok(TlsAcceptor::from(Arc::new(c)))
            };
        let client = |verifier: Arc<dyn ServerCertVerifier>| -> Result<TlsConnector, String> {
            let c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_auth_cert(chain.clone(), id.key.private_key_der())
                .map_err(|e| format!("the SIP TLS certificate or key is unusable: {e}"))?;
            Ok(TlsConnector::from(Arc::new(c)))
        };
        let pinned = |whose: &str, pin: &callgate_config::TlsPin| -> Result<Arc<Pinned>, String> {
            let roots = match &pin.ca {
                Some(ca) => Some(Arc::new(
                    callgate_pki::roots(ca.get_ref())
                        .map_err(|e| format!("{whose}: tls.ca: {e}"))?,
                )),
                None => None,
            };
            let client_ca = match &roots {
                Some(r) => Some(
                    WebPkiClientVerifier::builder_with_provider(r.clone(), provider.clone())
                        .build()
                        .map_err(|e| format!("{whose}: tls.ca: {e}"))?,
                ),
                None => None,
            };
            let server_ca: Option<Arc<dyn ServerCertVerifier>> = match &roots {
                Some(r) => Some(
                    WebPkiServerVerifier::builder_with_provider(r.clone(), provider.clone())
                        .build()
                        .map_err(|e| format!("{whose}: tls.ca: {e}"))?,
                ),
                None => None,
            };
            Ok(Arc::new(Pinned {
                client_ca,
                server_ca,
                fingerprints: pin.fingerprint_list(),
                algorithms: provider.signature_verification_algorithms,
            }))
        };
        let mut carriers = Vec::new();
        for c in &cfg.sip.carriers {
            let side = match &c.tls {
                None => Side {
                    acceptor: server(None)?,
                    connector: None,
                },
                Some(pin) => {
                    let p = pinned(&format!("sip.carrier {}", c.name.get_ref()), pin.get_ref())?;
                    Side {
                        acceptor: server(Some(p.clone()))?,
                        connector: Some(client(p)?),
                    }
                }
            };
            let nets = c.sources.get_ref().iter().map(|p| p.net()).collect();
            carriers.push((nets, side));
        }
        let dest_ips = cfg
            .sip
            .routes
            .iter()
            .flat_map(|r| r.destinations.get_ref())
            .map(|d| d.uri.get_ref().addr.ip().to_canonical())
            .collect();
        let connector = match &tls.destinations {
            Some(pin) => Some(client(pinned("sip.tls.destinations", pin.get_ref())?)?),
            None => None,
        };
        Ok(TlsServer {
            carriers,
            destinations: (
                dest_ips,
                Side {
                    acceptor: server(None)?,
                    connector,
                },
            ),
            handshake_timeout: Duration::from_secs(u64::from(tls.handshake_timeout_secs())),
        })
    }

    fn side_of(&self, ip: IpAddr) -> Option<&Side> {
        let ip = ip.to_canonical();
        self.carriers
            .iter()
            .find(|(nets, _)| nets.iter().any(|n| n.contains(&ip)))
            .map(|(_, s)| s)
            .or_else(|| {
                self.destinations
                    .0
                    .contains(&ip)
                    .then_some(&self.destinations.1)
            })
    }

    /// The acceptor for a connection from `ip`: its carrier's, or the destinations', or
    /// none (not a peer: no handshake).
    pub fn acceptor_for(&self, ip: IpAddr) -> Option<&TlsAcceptor> {
        self.side_of(ip).map(|s| &s.acceptor)
    }

    /// The connector for a connection of ours to `ip`: none when it is not a peer or its
    /// certificate cannot be checked (a carrier without pinning).
    pub fn connector_for(&self, ip: IpAddr) -> Option<&TlsConnector> {
        self.side_of(ip).and_then(|s| s.connector.as_ref())
    }
}

/// The per-source guard on TLS handshakes: `max_handshakes_per_sec` from one address
/// (twice that at once); a source over it has its connections closed before any
/// cryptography, and one that keeps at it is blocked in the firewall, unless it is a
/// carrier or a destination (those are never blocked).
pub(super) fn handshake_guard(cfg: &Config) -> FloodGuard {
    let rate = cfg.sip.tls.max_handshakes_per_sec();
    let mut never_block: Vec<IpNet> = cfg
        .sip
        .carriers
        .iter()
        .flat_map(|c| c.sources.get_ref().iter().map(|p| p.net()))
        .collect();
    never_block.extend(
        cfg.sip
            .routes
            .iter()
            .flat_map(|r| r.destinations.get_ref())
            .map(|d| IpNet::from(d.uri.get_ref().addr.ip().to_canonical())),
    );
    FloodGuard::new(FloodConfig {
        rate_per_sec: rate,
        burst: rate.saturating_mul(2),
        violations_to_block: 20,
        scanner_user_agents: Vec::new(),
        never_block,
        limits: Vec::<(IpNet, SourceLimits)>::new(),
        ..FloodConfig::default()
    })
}

/// A peer's pinning: its certificate chains to `ca` (when given: as a client's, or as a
/// server's for the address we connect to) and has one of `fingerprints` (when given, and
/// is then checked for its validity too).
#[derive(Debug)]
struct Pinned {
    client_ca: Option<Arc<dyn ClientCertVerifier>>,
    server_ca: Option<Arc<dyn ServerCertVerifier>>,
    fingerprints: Vec<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check_fingerprint(
        &self,
        end_entity: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<(), Error> {
        if self.fingerprints.is_empty() {
            return Ok(());
        }
        if !self
            .fingerprints
            .contains(&callgate_pki::fingerprint(end_entity))
        {
            return Err(Error::General(
                "the certificate is not one of the peer's pinned fingerprints".into(),
            ));
        }
        let info =
            callgate_pki::cert_info(end_entity).map_err(|e| Error::General(e.to_string()))?;
        let t = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        if t < info.not_before || t > info.not_after {
            return Err(Error::InvalidCertificate(rustls::CertificateError::Expired));
        }
        Ok(())
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(ca) = &self.server_ca {
            ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        self.check_fingerprint(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.client_ca
            .as_ref()
            .map_or(&[], |c| c.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if let Some(ca) = &self.client_ca {
            ca.verify_client_cert(end_entity, intermediates, now)?;
        }
        self.check_fingerprint(end_entity, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// TLS counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsStats {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshakes that failed (a bad or missing client certificate, an old version, not
    /// TLS at all).
    pub handshakes_failed: u64,
    /// Handshakes cut at `handshake_timeout_secs`.
    pub handshakes_timed_out: u64,
    /// Connections closed unanswered: the source is neither a carrier nor a destination.
    pub refused_not_peer: u64,
    /// Connections closed unanswered: no certificate is installed.
    pub refused_no_certificate: u64,
    /// Connections closed unanswered: over `max_handshakes_per_sec` from their source.
    pub refused_rate: u64,
    /// Sources put in the firewall's blocklist for a handshake flood.
    pub blocked: u64,
    /// Connections of ours over TLS established (to destinations, to pinned carriers).
    pub connected: u64,
    /// Connections of ours over TLS whose handshake failed or timed out (the peer's
    /// certificate did not check out, among others).
    pub connect_failed: u64,
}

/// What `show sip stats` says of SIP over TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsStatus {
    pub listen: Vec<std::net::SocketAddr>,
    /// The installed server certificate, if any.
    pub certificate: Option<CertInfo>,
    /// Whole days until it expires (negative once it has).
    pub expires_in_days: Option<i64>,
    /// Set within `cert_warn_days` of expiry, when expired, when there is no certificate
    /// but listeners, and when the settings could not be built.
    pub warning: Option<String>,
    pub stats: TlsStats,
}

impl TlsStatus {
    /// Fills in expiry and warnings as of `now_secs` (Unix seconds).
    pub fn assess(&mut self, warn_days: u32, now_secs: i64, problem: Option<&str>) {
        self.expires_in_days = self
            .certificate
            .as_ref()
            .map(|c| (c.not_after - now_secs).div_euclid(86_400));
        self.warning = match (&self.certificate, self.expires_in_days, problem) {
            (_, _, Some(p)) => Some(p.to_owned()),
            (None, _, None) if !self.listen.is_empty() => Some(
                "no certificate installed: TLS connections are refused (`callgate sip tls csr`, then `callgate sip tls install-cert`)".into(),
            ),
            (Some(_), Some(d), None) if d < 0 => {
                Some("the certificate has expired: carriers will refuse it".into())
            }
            (Some(_), Some(d), None) if d < i64::from(warn_days) => Some(format!(
                "the certificate expires in {d} days: install a renewed one"
            )),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test
    use super::*;

    fn cert(not_after: i64) -> CertInfo {
        CertInfo {
            subject: "lab-a".into(),
            issuer: "CN=lab CA".into(),
            not_before: 0,
            not_after,
        }
    }

    #[test]
    fn the_status_warns_before_expiry_after_it_and_without_a_certificate() {
        let day = 86_400;
        let now = 1_780_272_000;
        let listen = vec!["203.0.113.1:5061".parse().unwrap()];
        let mut s = TlsStatus {
            listen: listen.clone(),
            certificate: Some(cert(now + 90 * day)),
            ..TlsStatus::default()
        };
        s.assess(30, now, None);
        assert_eq!((s.expires_in_days, s.warning.as_deref()), (Some(90), None));
        s.certificate = Some(cert(now + 29 * day + 5));
        s.assess(30, now, None);
        assert_eq!(s.expires_in_days, Some(29));
        assert!(s.warning.as_deref().unwrap().contains("expires in 29 days"));
        s.certificate = Some(cert(now - 5));
        s.assess(30, now, None);
        assert!(s.warning.as_deref().unwrap().contains("expired"));
        s.certificate = None;
        s.assess(30, now, None);
        assert!(s.warning.as_deref().unwrap().contains("no certificate"));
        s.listen.clear();
        s.assess(30, now, None);
        assert_eq!(s.warning, None);
        s.assess(30, now, Some("unusable"));
        assert_eq!(s.warning.as_deref(), Some("unusable"));
    }
}
