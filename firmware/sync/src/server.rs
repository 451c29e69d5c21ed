//! The listening side.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::binding::{authenticate, Local, Role, Session};
use crate::conn::SyncConn;
use crate::{tls, Identity, PeerInfo, PeerPin, SyncError, HANDSHAKE_TIMEOUT};

/// How many handshakes may be under way at once. Past that the server stops taking
/// connections off the listen queue until one finishes or times out, so a flood costs at
/// most this many tasks.
pub const MAX_PENDING_HANDSHAKES: usize = 8;

type Outcome = Result<(SyncConn, PeerInfo), SyncError>;

/// Listens for the peer. Handshakes run as tasks of their own, each bounded by the
/// handshake timeout, so a silent or bogus client never holds up the next one.
pub struct SyncServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    local: Arc<Local>,
    handshakes: JoinSet<Outcome>,
    timeout: Duration,
}

impl SyncServer {
    /// Binds the listening socket and prepares TLS with this node's identity.
    pub async fn bind(
        addr: SocketAddr,
        identity: &Identity,
        pair_key: &[u8; 32],
        pin: PeerPin,
    ) -> Result<SyncServer, SyncError> {
        let config: Arc<ServerConfig> = tls::server_config(identity).map_err(SyncError::Tls)?;
        let listener = TcpListener::bind(addr).await.map_err(SyncError::Io)?;
        Ok(SyncServer {
            listener,
            acceptor: TlsAcceptor::from(config),
            local: Arc::new(Local {
                pair_key: Zeroizing::new(*pair_key),
                own_fingerprint: identity.fingerprint(),
                pin,
            }),
            handshakes: JoinSet::new(),
            timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// Replaces the handshake timeout ([`HANDSHAKE_TIMEOUT`] by default).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> SyncServer {
        self.timeout = timeout;
        self
    }

    /// The address the server listens on (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, SyncError> {
        self.listener.local_addr().map_err(SyncError::Io)
    }

    /// The next finished handshake: an authenticated connection, or why one failed.
    ///
    /// A failed handshake is this call's error and nothing more: call `accept` again. An
    /// `Io` error from the listener itself (say, out of file descriptors) is returned too;
    /// back off a little before calling again. Cancel-safe: handshakes under way carry on
    /// and are returned by a later call. Dropping the server aborts them.
    pub async fn accept(&mut self) -> Result<(SyncConn, PeerInfo), SyncError> {
        loop {
            tokio::select! {
                biased;
                Some(joined) = self.handshakes.join_next() => {
                    return match joined {
                        Ok(outcome) => outcome,
                        // Only a panic (there is none to have) or an abort (only on drop)
                        // gets here.
                        Err(e) => Err(SyncError::Io(std::io::Error::other(e))),
                    };
                }
                accepted = self.listener.accept(),
                    if self.handshakes.len() < MAX_PENDING_HANDSHAKES =>
                {
                    let (tcp, peer) = accepted.map_err(SyncError::Io)?;
                    let acceptor = self.acceptor.clone();
                    let local = Arc::clone(&self.local);
                    let timeout = self.timeout;
                    self.handshakes.spawn(async move {
                        match tokio::time::timeout(timeout, handshake(acceptor, tcp, peer, &local))
                            .await
                        {
                            Ok(outcome) => outcome,
                            Err(_) => Err(SyncError::HandshakeTimeout(timeout)),
                        }
                    });
                }
            }
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    local: &Local,
) -> Outcome {
    tcp.set_nodelay(true).map_err(SyncError::Io)?;
    let mut tls = acceptor.accept(tcp).await.map_err(SyncError::from_io)?;
    let session = Session::of(tls.get_ref().1)?;
    let info = authenticate(&mut tls, session, local, Role::Server, peer).await?;
    Ok((SyncConn::new(tls.into(), peer), info))
}

impl fmt::Debug for SyncServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncServer")
            .field("local", &self.listener.local_addr().ok())
            .field("pending_handshakes", &self.handshakes.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}
