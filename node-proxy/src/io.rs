//! A downstream socket with the bytes already read while sniffing put back in
//! front, so the HTTP server or TCP proxy sees the connection from its first byte.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use protocols::h1frame::{HeadVerdict, MessageTracker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct PrefixedIo {
    prefix: Bytes,
    inner: TcpStream,
}

impl PrefixedIo {
    pub fn new(prefix: Bytes, inner: TcpStream) -> Self {
        PrefixedIo { prefix, inner }
    }

    pub fn inner(&self) -> &TcpStream {
        &self.inner
    }

    /// The bytes seen so far (sniffed or read ahead).
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Reads ahead (keeping the bytes for later readers) until `enough` says the
    /// prefix suffices, or the peer stops sending; at most `max` bytes.
    pub async fn read_ahead(&mut self, max: usize, enough: impl Fn(&[u8]) -> bool) -> io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut buf = bytes::BytesMut::from(&self.prefix[..]);
        while buf.len() < max && !enough(&buf) {
            let want = max - buf.len();
            let mut chunk = vec![0u8; want];
            let n = self.inner.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        self.prefix = buf.freeze();
        Ok(())
    }

    pub fn inner_mut(&mut self) -> &mut TcpStream {
        &mut self.inner
    }

    /// The sniffed bytes not yet consumed, and the socket.
    pub fn into_parts(self) -> (Bytes, TcpStream) {
        (self.prefix, self.inner)
    }
}

impl AsyncRead for PrefixedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PrefixedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The downstream stream as the HTTP server reads it. For HTTP/1 it follows request
/// framing on the raw bytes ([`MessageTracker`]) and queues a verdict per request
/// head, which the request handler takes in order (hyper serves HTTP/1 requests of a
/// connection strictly in order).
pub struct DownstreamIo {
    io: PrefixedIo,
    tracker: Option<MessageTracker>,
    verdicts: HeadVerdicts,
}

/// Verdicts on request heads, oldest first. (hyper wants the connection's I/O to be
/// `Send`, for upgrades; the lock is never contended.)
pub type HeadVerdicts = Arc<Mutex<VecDeque<HeadVerdict>>>;

impl DownstreamIo {
    pub fn new(io: PrefixedIo, track_http1: Option<(usize, HeadVerdicts)>) -> Self {
        match track_http1 {
            Some((max_head, verdicts)) => DownstreamIo { io, tracker: Some(MessageTracker::new(max_head)), verdicts },
            None => DownstreamIo { io, tracker: None, verdicts: HeadVerdicts::default() },
        }
    }
}

impl AsyncRead for DownstreamIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(tracker)) = (&polled, this.tracker.as_mut()) {
            let verdicts = &this.verdicts;
            tracker.feed(&buf.filled()[before..], &mut |v| {
                if let Ok(mut q) = verdicts.lock() {
                    q.push_back(v);
                }
            });
            if tracker.is_opaque() {
                this.tracker = None;
            }
        }
        polled
    }
}

impl AsyncWrite for DownstreamIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
