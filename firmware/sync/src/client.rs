//! The connecting side.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::binding::{authenticate, Local, Role, Session};
use crate::conn::SyncConn;
use crate::{tls, Identity, PeerInfo, PeerPin, SyncError};

/// Connects to the peer's [`SyncServer`](crate::SyncServer).
#[derive(Debug)]
#[non_exhaustive]
pub struct SyncClient;

impl SyncClient {
    /// Binds `local` (the sync link's own address; port 0 for any port), connects to
    /// `peer`, runs the TLS handshake and the channel binding, all within `timeout`.
    pub async fn connect(
        local: SocketAddr,
        peer: SocketAddr,
        identity: &Identity,
        pair_key: &[u8; 32],
        pin: PeerPin,
        timeout: Duration,
    ) -> Result<(SyncConn, PeerInfo), SyncError> {
        let config = tls::client_config(identity).map_err(SyncError::Tls)?;
        let local_facts = Local {
            pair_key: Zeroizing::new(*pair_key),
            own_fingerprint: identity.fingerprint(),
            pin,
        };
        let socket = match local {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(SyncError::Io)?;
        socket.bind(local).map_err(SyncError::Io)?;
        let attempt = async {
            let tcp = socket.connect(peer).await.map_err(SyncError::Io)?;
            tcp.set_nodelay(true).map_err(SyncError::Io)?;
            let mut tls = TlsConnector::from(config)
                .connect(tls::server_name(peer.ip()), tcp)
                .await
                .map_err(SyncError::from_io)?;
            let session = Session::of(tls.get_ref().1)?;
            let info = authenticate(&mut tls, session, &local_facts, Role::Client, peer).await?;
            Ok((SyncConn::new(tls.into(), peer), info))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(SyncError::HandshakeTimeout(timeout)),
        }
    }
}
