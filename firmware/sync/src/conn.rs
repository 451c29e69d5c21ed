//! An authenticated connection and its two halves.

use std::fmt;
use std::net::SocketAddr;

use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

use crate::frame::{FrameReader, FrameWriter};
use crate::SyncError;

type Stream = TlsStream<TcpStream>;

/// An authenticated sync connection: TLS 1.3 to a peer that proved the pair key.
///
/// Messages are whole byte strings up to [`MAX_MESSAGE_LEN`](crate::MAX_MESSAGE_LEN).
/// [`recv`](SyncConn::recv) is cancel-safe; [`send`](SyncConn::send) is not (a dropped
/// send may leave half a frame out: drop the connection then). After any error, drop the
/// connection.
pub struct SyncConn {
    stream: Stream,
    reader: FrameReader,
    writer: FrameWriter,
    peer: SocketAddr,
}

impl SyncConn {
    pub(crate) fn new(stream: Stream, peer: SocketAddr) -> SyncConn {
        SyncConn {
            stream,
            reader: FrameReader::default(),
            writer: FrameWriter::default(),
            peer,
        }
    }

    /// Sends one message and flushes it.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), SyncError> {
        self.writer.send(&mut self.stream, msg).await
    }

    /// The next message. `Closed` when the peer has gone. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Vec<u8>, SyncError> {
        self.reader.recv(&mut self.stream).await
    }

    /// Ends the connection politely (TLS close_notify): the peer's `recv` returns `Closed`.
    pub async fn shutdown(&mut self) -> Result<(), SyncError> {
        self.writer.shutdown(&mut self.stream).await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Splits the connection into a receiving and a sending half, for two tasks.
    pub fn into_split(self) -> (SyncReader, SyncWriter) {
        let (read, write) = tokio::io::split(self.stream);
        (
            SyncReader {
                half: read,
                frames: self.reader,
                peer: self.peer,
            },
            SyncWriter {
                half: write,
                frames: self.writer,
                peer: self.peer,
            },
        )
    }
}

impl fmt::Debug for SyncConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncConn")
            .field("peer", &self.peer)
            .finish()
    }
}

/// The receiving half of a [`SyncConn`].
pub struct SyncReader {
    half: ReadHalf<Stream>,
    frames: FrameReader,
    peer: SocketAddr,
}

impl SyncReader {
    /// The next message. `Closed` when the peer has gone. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Vec<u8>, SyncError> {
        self.frames.recv(&mut self.half).await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl fmt::Debug for SyncReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncReader")
            .field("peer", &self.peer)
            .finish()
    }
}

/// The sending half of a [`SyncConn`].
pub struct SyncWriter {
    half: WriteHalf<Stream>,
    frames: FrameWriter,
    peer: SocketAddr,
}

impl SyncWriter {
    /// Sends one message and flushes it. Not cancel-safe.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), SyncError> {
        self.frames.send(&mut self.half, msg).await
    }

    /// Ends the sending direction (TLS close_notify): the peer's `recv` returns `Closed`.
    pub async fn shutdown(&mut self) -> Result<(), SyncError> {
        self.frames.shutdown(&mut self.half).await
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }
}

impl fmt::Debug for SyncWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncWriter")
            .field("peer", &self.peer)
            .finish()
    }
}
