//! Message framing: `[u32 big-endian length][payload]`, payloads up to
//! [`MAX_MESSAGE_LEN`]. The length is checked before anything is allocated for the payload.
//!
//! The reader keeps its progress in itself, so [`FrameReader::recv`] is cancel-safe: a
//! `recv` dropped in a `select!` loses no bytes, the next call goes on where it stopped.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{SyncError, MAX_MESSAGE_LEN};

const HEADER_LEN: usize = 4;

/// The receiving half of the framing.
#[derive(Debug, Default)]
pub(crate) struct FrameReader {
    header: [u8; HEADER_LEN],
    header_have: usize,
    /// The payload being read, once its header is complete.
    body: Option<Vec<u8>>,
    body_have: usize,
    /// Set by any error: the framing is lost, every later call is `Closed`.
    broken: bool,
}

impl FrameReader {
    pub(crate) async fn recv<R>(&mut self, r: &mut R) -> Result<Vec<u8>, SyncError>
    where
        R: AsyncRead + Unpin,
    {
        if self.broken {
            return Err(SyncError::Closed);
        }
        let result = self.recv_inner(r).await;
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    async fn recv_inner<R>(&mut self, r: &mut R) -> Result<Vec<u8>, SyncError>
    where
        R: AsyncRead + Unpin,
    {
        loop {
            match &mut self.body {
                None => {
                    let Some(buf) = self.header.get_mut(self.header_have..) else {
                        return Err(SyncError::Closed);
                    };
                    let n = r.read(buf).await.map_err(SyncError::from_io)?;
                    if n == 0 {
                        return Err(SyncError::Closed);
                    }
                    self.header_have += n;
                    if self.header_have == HEADER_LEN {
                        self.header_have = 0;
                        let len = u32::from_be_bytes(self.header);
                        let len = usize::try_from(len)
                            .ok()
                            .filter(|l| *l <= MAX_MESSAGE_LEN)
                            .ok_or(SyncError::TooLarge {
                                len: u64::from(len),
                                max: MAX_MESSAGE_LEN,
                            })?;
                        self.body = Some(vec![0; len]);
                        self.body_have = 0;
                    }
                }
                Some(body) => {
                    if self.body_have == body.len() {
                        self.body_have = 0;
                        return Ok(self.body.take().unwrap_or_default());
                    }
                    let Some(buf) = body.get_mut(self.body_have..) else {
                        return Err(SyncError::Closed);
                    };
                    let n = r.read(buf).await.map_err(SyncError::from_io)?;
                    if n == 0 {
                        return Err(SyncError::Closed);
                    }
                    self.body_have += n;
                }
            }
        }
    }
}

/// The sending half of the framing.
#[derive(Debug, Default)]
pub(crate) struct FrameWriter {
    /// Set by a failed write: part of a frame may be out, every later call is `Closed`.
    broken: bool,
}

impl FrameWriter {
    /// Writes one frame and flushes it. Refuses a payload over the limit without writing.
    pub(crate) async fn send<W>(&mut self, w: &mut W, msg: &[u8]) -> Result<(), SyncError>
    where
        W: AsyncWrite + Unpin,
    {
        if self.broken {
            return Err(SyncError::Closed);
        }
        let too_large = || SyncError::TooLarge {
            len: u64::try_from(msg.len()).unwrap_or(u64::MAX),
            max: MAX_MESSAGE_LEN,
        };
        if msg.len() > MAX_MESSAGE_LEN {
            return Err(too_large());
        }
        let len = u32::try_from(msg.len()).map_err(|_| too_large())?;
        // One buffer, so header and payload go out in the same TLS records.
        let mut frame = Vec::with_capacity(HEADER_LEN + msg.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(msg);
        let result = async {
            w.write_all(&frame).await?;
            w.flush().await
        }
        .await
        .map_err(SyncError::from_io);
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    /// Ends the sending direction (TLS close_notify, then TCP FIN).
    pub(crate) async fn shutdown<W>(&mut self, w: &mut W) -> Result<(), SyncError>
    where
        W: AsyncWrite + Unpin,
    {
        self.broken = true;
        w.shutdown().await.map_err(SyncError::from_io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// Hands out its bytes a few at a time, then reports end of stream.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let end = (self.pos + self.step).min(self.data.len());
            let n = (end - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    async fn frames(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = FrameWriter::default();
        for m in msgs {
            w.send(&mut out, m).await.unwrap();
        }
        out
    }

    #[tokio::test]
    async fn frames_read_back_whatever_the_read_sizes() {
        let data = frames(&[b"one", b"", &[9u8; 5000], b"last"]).await;
        for step in [1, 3, 4, 7, 4096, 100_000] {
            let mut src = Trickle {
                data: data.clone(),
                pos: 0,
                step,
            };
            let mut r = FrameReader::default();
            assert_eq!(r.recv(&mut src).await.unwrap(), b"one");
            assert_eq!(r.recv(&mut src).await.unwrap(), b"");
            assert_eq!(r.recv(&mut src).await.unwrap(), vec![9u8; 5000]);
            assert_eq!(r.recv(&mut src).await.unwrap(), b"last");
            assert!(matches!(r.recv(&mut src).await, Err(SyncError::Closed)));
        }
    }

    #[tokio::test]
    async fn a_length_over_the_limit_is_refused_from_the_header_alone() {
        let len = u32::try_from(MAX_MESSAGE_LEN + 1).unwrap();
        let mut src = Trickle {
            data: len.to_be_bytes().to_vec(),
            pos: 0,
            step: 4,
        };
        let mut r = FrameReader::default();
        match r.recv(&mut src).await {
            Err(SyncError::TooLarge { len: l, max }) => {
                assert_eq!(l, u64::from(len));
                assert_eq!(max, MAX_MESSAGE_LEN);
            }
            other => panic!("{other:?}"),
        }
        assert!(r.body.is_none(), "nothing allocated");
        // The framing is lost: the connection answers Closed from now on.
        assert!(matches!(r.recv(&mut src).await, Err(SyncError::Closed)));
        let mut src = Trickle {
            data: u32::MAX.to_be_bytes().to_vec(),
            pos: 0,
            step: 1,
        };
        let mut r = FrameReader::default();
        assert!(matches!(
            r.recv(&mut src).await,
            Err(SyncError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn a_cut_stream_is_closed_wherever_it_is_cut() {
        let data = frames(&[b"hello world"]).await;
        for cut in 0..data.len() {
            let mut src = Trickle {
                data: data[..cut].to_vec(),
                pos: 0,
                step: 2,
            };
            let mut r = FrameReader::default();
            assert!(
                matches!(r.recv(&mut src).await, Err(SyncError::Closed)),
                "cut at {cut}"
            );
        }
    }

    #[tokio::test]
    async fn sending_over_the_limit_writes_nothing() {
        let mut out = Vec::new();
        let mut w = FrameWriter::default();
        let big = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert!(matches!(
            w.send(&mut out, &big).await,
            Err(SyncError::TooLarge { .. })
        ));
        assert!(out.is_empty());
        // Nothing went out, so the writer still works.
        w.send(&mut out, &big[..MAX_MESSAGE_LEN]).await.unwrap();
        assert_eq!(out.len(), MAX_MESSAGE_LEN + 4);
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // A small xorshift over many short random streams: every outcome is a message or
        // an error.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let len = (next() % 64) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Keep some lengths small so bodies get read too.
            if next() % 2 == 0 && data.len() >= 4 {
                data[0] = 0;
                data[1] = 0;
                data[2] = 0;
                data[3] %= 40;
            }
            let step = 1 + (next() % 9) as usize;
            rt.block_on(async {
                let mut src = Trickle { data, pos: 0, step };
                let mut r = FrameReader::default();
                for _ in 0..20 {
                    if r.recv(&mut src).await.is_err() {
                        break;
                    }
                }
            });
        }
    }
}
