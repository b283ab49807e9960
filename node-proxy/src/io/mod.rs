//! A downstream socket with the bytes already read while sniffing put back in
//! front, so the HTTP server or TCP proxy sees the connection from its first byte.
//!
//! For HTTP/1 it can also follow request framing on the raw bytes
//! ([`MessageTracker`]) and queue a verdict per request head, which the request handler
//! takes in order (hyper serves the requests of an HTTP/1 connection strictly in order).
//!
//! [`relay`] copies bytes both ways between two connections (the TCP proxy, HBONE).

mod relay;
pub use relay::{relay, Duplex};

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use protocols::h1frame::{HeadVerdict, MessageTracker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct PrefixedIo<I = TcpStream> {
    prefix: Bytes,
    inner: I,
    tracker: Option<(MessageTracker, HeadVerdicts)>,
}

/// Verdicts on request heads, oldest first. (hyper wants the connection's I/O to be
/// `Send`, for upgrades; the lock is never contended.)
pub type HeadVerdicts = Arc<Mutex<VecDeque<HeadVerdict>>>;

impl<I: AsyncRead + Unpin> PrefixedIo<I> {
    pub fn new(prefix: Bytes, inner: I) -> Self {
        PrefixedIo { prefix, inner, tracker: None }
    }

    /// Judges HTTP/1 request heads from here on (including the prefix), pushing a
    /// verdict per head to `verdicts`.
    pub fn track_http1(&mut self, max_head: usize, verdicts: HeadVerdicts) {
        self.tracker = Some((MessageTracker::new(max_head), verdicts));
    }

    fn observe(&mut self, read: &[u8]) {
        let Some((tracker, verdicts)) = self.tracker.as_mut() else { return };
        tracker.feed(read, &mut |v| {
            if let Ok(mut q) = verdicts.lock() {
                q.push_back(v);
            }
        });
        if tracker.is_opaque() {
            self.tracker = None;
        }
    }

    pub fn inner(&self) -> &I {
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

    pub fn inner_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// The sniffed bytes not yet consumed, and the socket.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.inner)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        };
        if polled.is_ready() && self.tracker.is_some() {
            self.observe(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
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
