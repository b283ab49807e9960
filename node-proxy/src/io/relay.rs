//! Copying bytes both ways between two connections (the TCP proxy, HBONE).

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The first read buffer of each direction of a [`relay`].
const RELAY_BUFFER_MIN: usize = 16 * 1024;
/// What a direction's buffer grows to while reads keep filling it (bulk transfers:
/// fewer, larger writes, HTTP/2 DATA frames and TLS record batches).
const RELAY_BUFFER_MAX: usize = 256 * 1024;

/// Copies `a`'s reads to `b` and `b`'s reads to `a` (after writing `prefix` to `b`),
/// each direction on its own so a slow writer in one never stalls the other. A read
/// EOF shuts the other side's writing half down (half-close); a read or write error
/// (a reset) ends both, dropping the halves (an HTTP/2 stream is reset). With `idle`, stops once nothing has moved for that long. Returns
/// (bytes from `a`, bytes from `b`).
pub async fn relay<AR, AW, BR, BW>(prefix: Bytes, (ar, aw): (AR, AW), (br, bw): (BR, BW), idle: Option<std::time::Duration>) -> (u64, u64)
where
    AR: AsyncRead + Unpin,
    AW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    let start = tokio::time::Instant::now();
    // Milliseconds since `start` of the last byte moved (for the idle timeout).
    let last = AtomicU64::new(0);
    let (from_a, from_b) = (AtomicU64::new(prefix.len() as u64), AtomicU64::new(0));
    let mut bw = bw;
    if !prefix.is_empty() && bw.write_all(&prefix).await.is_err() {
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
async fn copy_one<R, W>(
    mut r: R,
    mut w: W,
    count: &std::sync::atomic::AtomicU64,
    last: &std::sync::atomic::AtomicU64,
    start: tokio::time::Instant,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use std::sync::atomic::Ordering;
    let mut buf = vec![0u8; RELAY_BUFFER_MIN];
    loop {
        let n = match r.read(&mut buf).await? {
            0 => {
                let _ = w.shutdown().await;
                return Ok(());
            }
            n => n,
        };
        w.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < RELAY_BUFFER_MAX {
            buf.resize(buf.len() * 2, 0);
        }
    }
}
