//! Copying bytes both ways between two connections (the TCP proxy, HBONE).
//!
//! Each side of a [`relay`] is a [`Duplex`]: a reading half that hands out chunks of
//! bytes ([`ChunkRead`]) and a writing half that takes them ([`ChunkWrite`]). A byte
//! stream's halves (`(AsyncRead, AsyncWrite)`) read into a buffer that is frozen and
//! handed on, so a chunk read from a socket reaches an HTTP/2 stream (HBONE) as is,
//! and a DATA frame received on one is written to the socket as is: no copy in
//! between (an `H2Stream` is a `Duplex` of its own halves).

use std::future::Future;
use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most plaintext rustls puts in one TLS record.
const TLS_RECORD: usize = 16 * 1024;
/// The header of an HTTP/2 frame.
const H2_FRAME_HEADER: usize = 9;
/// How many TLS records' worth a direction's reads grow to while they keep filling
/// their buffer (bulk transfers: fewer, larger writes and DATA frames).
const READ_RECORDS_MAX: usize = 16;

/// Bulk reads (from this size) start at [`BULK_PAGE_OFFSET`] within a page. Their
/// bytes are later copied by rustls into TLS records whose payload sits a few bytes past
/// a page boundary (mimalloc's blocks for a 16 KiB record, then the 5-byte header): a
/// chunk starting on a page boundary put each record's destination 1–31 bytes *above*
/// its source modulo 4096, where glibc's `rep movsb` copy runs at ~2 GB/s on AMD Zen
/// (~35 GB/s otherwise; measured here: that one copy was a quarter of the sending
/// proxy's CPU). Starting the chunk 128 bytes into a page puts the destination below
/// the source instead.
const BULK_READ: usize = 4 * TLS_RECORD - H2_FRAME_HEADER;
const PAGE: usize = 4096;
const BULK_PAGE_OFFSET: usize = 128;

/// The most a read takes when the direction is at `records` (1, 2, 4, ... 16): a full
/// read sent on an HBONE stream becomes one DATA frame that fills whole TLS records,
/// its header included, so no record (nor a write) is spent on a frame's last bytes.
fn read_size(records: usize) -> usize {
    records * TLS_RECORD - H2_FRAME_HEADER
}

/// The reading half of one side of a relay.
pub trait ChunkRead {
    /// The next bytes read; empty at EOF.
    fn read_chunk(&mut self) -> impl Future<Output = io::Result<Bytes>>;
}

/// The writing half of one side of a relay.
pub trait ChunkWrite {
    /// Writes all of `data`.
    fn write_chunk(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>>;
    /// Ends the writing side (a TCP half-close, END_STREAM).
    fn shutdown(&mut self) -> impl Future<Output = io::Result<()>>;
}

/// One side of a relay, split into its halves.
pub trait Duplex {
    type Read: ChunkRead;
    type Write: ChunkWrite;
    fn into_halves(self) -> (Self::Read, Self::Write);
}

/// A byte stream's halves (`TcpStream::into_split`, `tokio::io::split`).
impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Duplex for (R, W) {
    type Read = StreamReader<R>;
    type Write = StreamWriter<W>;
    fn into_halves(self) -> (StreamReader<R>, StreamWriter<W>) {
        (StreamReader { inner: self.0, buf: BytesMut::new(), records: 1 }, StreamWriter(self.1))
    }
}

/// Reads a byte stream into a buffer whose filled part is handed out as a chunk; the
/// read size doubles while reads fill it (see [`read_size`]).
pub struct StreamReader<R> {
    inner: R,
    buf: BytesMut,
    records: usize,
}

impl<R: AsyncRead + Unpin> ChunkRead for StreamReader<R> {
    async fn read_chunk(&mut self) -> io::Result<Bytes> {
        let size = read_size(self.records);
        // Reuses the allocation once the chunks handed out from it are gone.
        if size >= BULK_READ {
            self.buf.reserve(size + PAGE);
            let pad = BULK_PAGE_OFFSET.wrapping_sub(self.buf.as_ptr() as usize) % PAGE;
            self.buf.put_bytes(0, pad);
            self.buf.advance(pad);
        } else {
            self.buf.reserve(size);
        }
        let n = self.inner.read_buf(&mut (&mut self.buf).limit(size)).await?;
        if n == size && self.records < READ_RECORDS_MAX {
            self.records *= 2;
        }
        Ok(self.buf.split().freeze())
    }
}

/// Writes chunks to a byte stream.
pub struct StreamWriter<W>(W);

impl<W: AsyncWrite + Unpin> ChunkWrite for StreamWriter<W> {
    async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        self.0.write_all(&data).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.0.shutdown().await
    }
}

/// A TCP connection, split into its owned halves.
impl Duplex for tokio::net::TcpStream {
    type Read = StreamReader<tokio::net::tcp::OwnedReadHalf>;
    type Write = StreamWriter<tokio::net::tcp::OwnedWriteHalf>;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        self.into_split().into_halves()
    }
}

/// An HBONE stream: DATA frames in, DATA frames out, END_STREAM as the half-close.
impl Duplex for crate::hbone::H2Stream {
    type Read = crate::hbone::H2RecvHalf;
    type Write = crate::hbone::H2SendHalf;
    fn into_halves(self) -> (Self::Read, Self::Write) {
        crate::hbone::H2Stream::into_halves(self)
    }
}

impl ChunkRead for crate::hbone::H2RecvHalf {
    async fn read_chunk(&mut self) -> io::Result<Bytes> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }
}

impl ChunkWrite for crate::hbone::H2SendHalf {
    async fn write_chunk(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            std::future::poll_fn(|cx| self.poll_send(cx, &mut data)).await?;
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.end_stream()
    }
}

/// Copies `a`'s reads to `b` and `b`'s reads to `a` (after writing `prefix` to `b`),
/// each direction on its own so a slow writer in one never stalls the other. A read
/// EOF shuts the other side's writing half down (half-close); a read or write error
/// (a reset) ends both, dropping the halves (an HTTP/2 stream is reset). With `idle`,
/// stops once nothing has moved for that long. Returns (bytes from `a`, bytes from `b`).
pub async fn relay<A: Duplex, B: Duplex>(prefix: Bytes, a: A, b: B, idle: Option<std::time::Duration>) -> (u64, u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let start = tokio::time::Instant::now();
    // Milliseconds since `start` of the last byte moved (for the idle timeout).
    let last = AtomicU64::new(0);
    let (from_a, from_b) = (AtomicU64::new(prefix.len() as u64), AtomicU64::new(0));
    let ((ar, aw), (br, mut bw)) = (a.into_halves(), b.into_halves());
    if !prefix.is_empty() && bw.write_chunk(prefix).await.is_err() {
        return (from_a.load(Ordering::Relaxed), 0);
    }
    let both = async { tokio::try_join!(copy_one(ar, bw, &from_a, &last, start), copy_one(br, aw, &from_b, &last, start)).map(|_| ()) };
    match idle {
        None => {
            let _ = both.await;
        }
        Some(idle) => {
            let watch = async {
                loop {
                    let since = start + std::time::Duration::from_millis(last.load(Ordering::Relaxed));
                    let deadline = since + idle;
                    if tokio::time::Instant::now() >= deadline {
                        tracing::debug!(?idle, "relay idle timeout");
                        return;
                    }
                    tokio::time::sleep_until(deadline).await;
                }
            };
            tokio::select! {
                _ = both => {}
                _ = watch => {}
            }
        }
    }
    (from_a.load(Ordering::Relaxed), from_b.load(Ordering::Relaxed))
}

/// One direction of [`relay`]: `Ok` at the reader's EOF (the writer shut down), `Err`
/// when reading or writing fails.
async fn copy_one<R: ChunkRead, W: ChunkWrite>(
    mut r: R,
    mut w: W,
    count: &std::sync::atomic::AtomicU64,
    last: &std::sync::atomic::AtomicU64,
    start: tokio::time::Instant,
) -> io::Result<()> {
    use std::sync::atomic::Ordering;
    loop {
        let chunk = r.read_chunk().await?;
        if chunk.is_empty() {
            let _ = w.shutdown().await;
            return Ok(());
        }
        let n = chunk.len() as u64;
        w.write_chunk(chunk).await?;
        count.fetch_add(n, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads grow while they fill their buffer; bulk chunks start at the page offset
    /// that keeps rustls' record copy off `rep movsb`'s slow distances; no byte is lost.
    #[tokio::test]
    async fn bulk_chunks_start_at_their_page_offset_and_carry_every_byte() {
        let data: Vec<u8> = (0..4 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
        let (mut reader, _) = (&data[..], tokio::io::sink()).into_halves();
        let (mut got, mut bulk) = (Vec::new(), 0);
        loop {
            let chunk = reader.read_chunk().await.unwrap();
            if chunk.is_empty() {
                break;
            }
            if chunk.len() >= BULK_READ {
                assert_eq!(chunk.as_ptr() as usize % PAGE, BULK_PAGE_OFFSET);
                bulk += 1;
            }
            got.extend_from_slice(&chunk);
        }
        assert!(bulk >= 10, "the reads grew to bulk size: {bulk}");
        assert!(got == data, "every byte, in order");
    }
}
