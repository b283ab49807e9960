//! One HTTP/2 stream as a byte stream: tokio `AsyncRead` + `AsyncWrite` for code that
//! wants one ([`H2Stream`]), or its two halves for a relay that moves whole `Bytes`
//! chunks without copying them ([`H2RecvHalf`], [`H2SendHalf`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Held for as long as either half of a stream lives (the pool counts open streams with it).
type Guard = Option<Arc<dyn Send + Sync>>;

/// The bytes of one `CONNECT` stream: reads DATA frames (releasing their flow-control
/// window as they are consumed), writes DATA frames within the peer's window, and
/// turns shutdown into END_STREAM (a TCP half-close on the far side).
pub struct H2Stream {
    recv: H2RecvHalf,
    send: H2SendHalf,
}

/// The receiving half of an [`H2Stream`]: the peer's DATA frames, as they arrived.
pub struct H2RecvHalf {
    recv: RecvStream,
    /// The unread rest of the last DATA frame (byte-stream reads only).
    pending: Bytes,
    eof: bool,
    _guard: Guard,
}

/// The sending half of an [`H2Stream`]: DATA frames within the peer's window.
pub struct H2SendHalf {
    send: SendStream<Bytes>,
    closed: bool,
    _guard: Guard,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream_id", &self.send.send.stream_id())
            .field("read_eof", &self.recv.eof)
            .field("write_closed", &self.send.closed)
            .finish()
    }
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, guard: Option<Box<dyn Send + Sync>>) -> Self {
        let guard: Guard = guard.map(Arc::from);
        H2Stream {
            recv: H2RecvHalf { recv, pending: Bytes::new(), eof: false, _guard: guard.clone() },
            send: H2SendHalf { send, closed: false, _guard: guard },
        }
    }

    /// The two halves, each usable on its own (a relay moves each direction
    /// separately). Dropping both before the stream ended resets it (CANCEL).
    pub fn into_halves(self) -> (H2RecvHalf, H2SendHalf) {
        (self.recv, self.send)
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

impl H2RecvHalf {
    /// The next DATA frame's bytes (whatever a byte-stream read left of the last one
    /// first); empty at END_STREAM. The frame's flow-control window goes back to the
    /// peer as soon as the frame is ours, not when it has been written on: we hold at
    /// most one frame per stream.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Bytes>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(std::mem::take(&mut self.pending)));
        }
        loop {
            if self.eof {
                return Poll::Ready(Ok(Bytes::new()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if !data.is_empty() {
                        return Poll::Ready(Ok(data));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => self.eof = true,
            }
        }
    }
}

impl H2SendHalf {
    /// Room for up to `want` bytes in the peer's window (and h2's send buffer), waiting
    /// for it; returns how many may be sent now (at least one).
    fn poll_room(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream already shut down")));
        }
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                return Poll::Ready(Ok(capacity.min(want)));
            }
            self.send.reserve_capacity(want);
            // A reset from the peer ends the wait for capacity.
            if let Poll::Ready(r) = self.send.poll_reset(cx) {
                return Poll::Ready(Err(match r {
                    Ok(reason) => io::Error::new(io::ErrorKind::ConnectionReset, format!("HBONE stream reset by peer: {reason}")),
                    Err(e) => h2_io(e),
                }));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream closed"))),
            }
        }
    }

    /// Queues a prefix of `data` as DATA frames once the peer's window has room, taking
    /// it off the front of `data` without copying; returns how many bytes were queued.
    /// The connection task writes them out.
    pub fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_room(cx, data.len()))?;
        self.send.send_data(data.split_to(n), false).map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    /// Ends the stream's sending side (END_STREAM: a half-close on the far side).
    pub fn end_stream(&mut self) -> io::Result<()> {
        if !self.closed {
            self.closed = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Ok(())
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let recv = &mut self.recv;
        if recv.pending.is_empty() {
            recv.pending = ready!(recv.poll_chunk(cx))?;
        }
        let n = recv.pending.len().min(buf.remaining());
        buf.put_slice(&recv.pending[..n]);
        recv.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Wait for room first, so that only what h2 takes now is copied.
        let send = &mut self.send;
        let n = ready!(send.poll_room(cx, data.len()))?;
        send.send.send_data(Bytes::copy_from_slice(&data[..n]), false).map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes frames as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.send.end_stream())
    }
}

#[cfg(test)]
mod tests {
    //! The relay between a socket and an HBONE stream (`io::relay` over [`H2Stream`]'s
    //! halves): bytes both ways through HTTP/2 flow control, half-closes in either
    //! order, and resets in either direction.

    use std::time::Duration;

    use bytes::{Bytes, BytesMut};
    use h2::client::SendRequest;
    use h2::{RecvStream, SendStream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::H2Stream;

    /// A deadline for steps that would otherwise hang if the relay misbehaved.
    const DEADLINE: Duration = Duration::from_secs(20);

    struct Setup {
        /// The application's end of the socket the relay serves.
        app: TcpStream,
        /// The HBONE peer's end of the stream (the client of the CONNECT).
        peer_send: SendStream<Bytes>,
        peer_recv: RecvStream,
        _client: SendRequest<Bytes>,
        /// The relay's (bytes from the socket, bytes from the stream).
        relay: JoinHandle<(u64, u64)>,
    }

    /// An HTTP/2 connection over an in-memory pipe, with default (64 KiB) windows so
    /// that megabytes have to wait for WINDOW_UPDATEs, one CONNECT stream on it, and
    /// a relay between the server's end of that stream and a TCP socket.
    async fn setup() -> Setup {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.expect("server handshake");
            let (request, mut respond) = conn.accept().await.expect("a request").expect("a good request");
            let send = respond.send_response(http::Response::new(()), false).expect("response sent");
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            H2Stream::new(send, request.into_body(), None)
        });
        let (mut client, conn) = h2::client::handshake(client_io).await.expect("client handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = http::Request::builder().method(http::Method::CONNECT).uri("127.0.0.1:80").body(()).expect("request");
        let (response, peer_send) = client.send_request(request, false).expect("CONNECT sent");
        let stream = server.await.expect("server task");
        let peer_recv = response.await.expect("response").into_body();

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app = TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
        let (proxy_side, _) = listener.accept().await.expect("accept");
        let relay = tokio::spawn(async move { crate::io::relay(Bytes::new(), proxy_side.into_split(), stream, None).await });
        Setup { app, peer_send, peer_recv, _client: client, relay }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// Sends `data` on the stream within the peer's window, then END_STREAM.
    async fn peer_send_all(send: &mut SendStream<Bytes>, data: &[u8]) {
        let mut rest = Bytes::copy_from_slice(data);
        while !rest.is_empty() {
            send.reserve_capacity(rest.len());
            let n = std::future::poll_fn(|cx| send.poll_capacity(cx)).await.expect("capacity").expect("capacity");
            let n = n.min(rest.len());
            send.send_data(rest.split_to(n), false).expect("send");
        }
        send.send_data(Bytes::new(), true).expect("END_STREAM");
    }

    /// Everything the peer receives until END_STREAM, releasing the window as it goes.
    async fn peer_recv_all(recv: &mut RecvStream) -> Vec<u8> {
        let mut got = BytesMut::new();
        while let Some(data) = recv.data().await {
            let data = data.expect("DATA");
            let _ = recv.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        got.to_vec()
    }

    async fn half_close(app_first: bool) {
        const LEN: usize = 8 * 1024 * 1024;
        let Setup { mut app, mut peer_send, mut peer_recv, _client, relay } = setup().await;
        let (up, down) = (pattern(LEN, 0), pattern(LEN + 7, 0x5a));
        let (mut app_read, mut app_write) = app.split();
        let app_side = async {
            if app_first {
                app_write.write_all(&up).await.expect("app write");
                app_write.shutdown().await.expect("app half-close");
            }
            let mut got = Vec::new();
            app_read.read_to_end(&mut got).await.expect("app read");
            if !app_first {
                app_write.write_all(&up).await.expect("app write after the peer's END_STREAM");
                app_write.shutdown().await.expect("app half-close");
            }
            got
        };
        let peer_side = async {
            if !app_first {
                peer_send_all(&mut peer_send, &down).await;
            }
            let got = peer_recv_all(&mut peer_recv).await;
            if app_first {
                peer_send_all(&mut peer_send, &down).await;
            }
            got
        };
        let (app_got, peer_got) = tokio::time::timeout(DEADLINE, async { tokio::join!(app_side, peer_side) }).await.expect("both directions finish");
        assert!(peer_got == up, "the peer got the app's {} bytes intact (got {})", up.len(), peer_got.len());
        assert!(app_got == down, "the app got the peer's {} bytes intact (got {})", down.len(), app_got.len());
        let counts = tokio::time::timeout(DEADLINE, relay).await.expect("the relay ends after both half-closes").expect("relay task");
        assert_eq!(counts, (LEN as u64, LEN as u64 + 7));
    }

    #[tokio::test]
    async fn the_app_half_closes_first_and_megabytes_pass_flow_control_both_ways() {
        half_close(true).await;
    }

    #[tokio::test]
    async fn the_peer_half_closes_first_and_megabytes_pass_flow_control_both_ways() {
        half_close(false).await;
    }

    #[tokio::test]
    async fn a_reset_stream_ends_the_relay_and_closes_the_socket() {
        let Setup { mut app, mut peer_send, peer_recv: _, _client, relay } = setup().await;
        app.write_all(b"before").await.expect("app write");
        peer_send.send_reset(h2::Reason::INTERNAL_ERROR);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(DEADLINE, app.read(&mut buf)).await.expect("the socket is closed, not left open");
        assert!(matches!(read, Ok(0) | Err(_)), "EOF or an error after the reset, got {read:?}");
        tokio::time::timeout(DEADLINE, relay).await.expect("the relay ends").expect("relay task");
    }

    #[tokio::test]
    async fn a_reset_socket_resets_the_stream() {
        let Setup { app, peer_send: _peer_send, mut peer_recv, _client, relay } = setup().await;
        app.set_zero_linger().expect("SO_LINGER 0");
        drop(app); // RST
        let end = tokio::time::timeout(DEADLINE, peer_recv.data()).await.expect("the stream ends");
        let e = match end {
            Some(Err(e)) => e,
            other => panic!("a reset, not a clean end: {other:?}"),
        };
        assert_eq!(e.reason(), Some(h2::Reason::CANCEL), "the stream is reset with CANCEL: {e}");
        tokio::time::timeout(DEADLINE, relay).await.expect("the relay ends").expect("relay task");
    }
}
