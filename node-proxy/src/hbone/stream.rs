//! One HTTP/2 stream as a byte stream (tokio `AsyncRead` + `AsyncWrite`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The bytes of one `CONNECT` stream: reads DATA frames (releasing their flow-control
/// window as they are consumed), writes DATA frames within the peer's window, and
/// turns shutdown into END_STREAM (a TCP half-close on the far side).
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// The unread rest of the last DATA frame.
    pending: Bytes,
    read_eof: bool,
    write_closed: bool,
    /// Held for as long as the stream lives (the pool counts open streams with it).
    _guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.stream_id())
            .field("read_eof", &self.read_eof)
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, guard: Option<Box<dyn Send + Sync>>) -> Self {
        H2Stream { send, recv, pending: Bytes::new(), read_eof: false, write_closed: false, _guard: guard }
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    let kind =
        if e.reason() == Some(h2::Reason::NO_ERROR) || e.reason() == Some(h2::Reason::CANCEL) { io::ErrorKind::ConnectionReset } else { io::ErrorKind::Other };
    io::Error::new(kind, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window comes back as soon as the frame is ours, not when it is
                    // read: we buffer at most one frame.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => this.read_eof = true,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream already shut down")));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.send.reserve_capacity(data.len());
        loop {
            // A reset from the peer ends the wait for capacity.
            if let Poll::Ready(r) = this.send.poll_reset(cx) {
                return Poll::Ready(Err(match r {
                    Ok(reason) => io::Error::new(io::ErrorKind::ConnectionReset, format!("HBONE stream reset by peer: {reason}")),
                    Err(e) => h2_io(e),
                }));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(data.len());
                    this.send.send_data(Bytes::copy_from_slice(&data[..n]), false).map_err(h2_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream closed"))),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes frames as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.write_closed {
            this.write_closed = true;
            this.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
