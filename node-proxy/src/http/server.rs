//! Serving one downstream HTTP connection with hyper: HTTP/1.1, prior-knowledge h2c
//! or either (codec AUTO), with Envoy's limits (header size -> 431, header read
//! timeout) and graceful shutdown on drain (GOAWAY for HTTP/2, `Connection: close`
//! for HTTP/1).

use std::convert::Infallible;
use std::rc::Rc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use istio_compat::model::listener::Codec;

use super::proxy::{self, ConnCtx};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::io::PrefixedIo;
use crate::runtime::LocalExec;

/// Envoy's defaults for HTTP/2 flow control are large (256 MiB); these keep memory
/// per stream bounded while not throttling a single fast stream.
const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const H2_MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Serves `io` (a TCP connection, or the stream of an HBONE tunnel at its destination).
pub async fn serve<I>(mut io: PrefixedIo<I>, cx: Rc<ConnCtx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(hcm) = cx.hcm() else { return };
    let codec = hcm.codec;
    if codec != Codec::Http1 && !h2_starts_with_settings(&mut io).await {
        tracing::debug!(remote = %cx.remote, "HTTP/2 connection did not start with SETTINGS: GOAWAY PROTOCOL_ERROR");
        return;
    }
    let max_header_bytes = (hcm.max_request_headers_kb as usize * 1024).max(8 * 1024);
    // Waiting for a request's headers, which includes a keep-alive connection's idle
    // time: the header timeout if set, else the connection idle timeout (Envoy: 1 h).
    let header_timeout = hcm.request_headers_timeout.or(hcm.idle_timeout);
    let drain = cx.worker.shared.drain.clone();
    let svc_cx = cx.clone();
    // The request future is large (the whole forwarding state machine): box it per
    // request, so an idle connection does not keep a slot of that size (hyper keeps
    // one per HTTP/1 connection).
    let service = service_fn(move |req| {
        let fut = Box::pin(proxy::handle(svc_cx.clone(), req));
        async move { Ok::<_, Infallible>(fut.await) }
    });

    let mut builder = auto::Builder::new(LocalExec);
    {
        let mut h1 = builder.http1();
        // hyper answers 431 when the request head does not fit its read buffer
        // (hyper-util's auto builder does not expose hyper's max_header_size).
        h1.timer(TokioTimer::new()).max_buf_size(max_header_bytes).keep_alive(true);
        // `None` disables hyper's own 30 s default, as Envoy has none.
        h1.header_read_timeout(header_timeout);
    }
    {
        let mut h2 = builder.http2();
        h2.timer(TokioTimer::new())
            .max_header_list_size(max_header_bytes as u32)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    }
    let builder = match codec {
        Codec::Http1 => builder.http1_only(),
        Codec::Http2 => builder.http2_only(),
        Codec::Auto => builder,
    };
    // HTTP/1 (anything that did not start with the h2 preface): judge request heads.
    if !io.prefix().starts_with(protocols::sniff::H2_PREFACE) && codec != Codec::Http2 {
        io.track_http1(max_header_bytes, cx.head_verdicts.clone());
    }
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(remote = %cx.remote, "downstream connection error: {e}");
            }
        }
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(remote = %cx.remote, "downstream connection error while draining: {e}");
            }
        }
    }
}

/// RFC 9113 §3.4: after the client preface, the first frame must be SETTINGS. h2
/// lets other frames through; Envoy answers GOAWAY(PROTOCOL_ERROR). Returns `false`
/// (having sent that GOAWAY) when the connection is an HTTP/2 one that breaks the rule.
async fn h2_starts_with_settings<I: AsyncRead + AsyncWrite + Unpin>(io: &mut PrefixedIo<I>) -> bool {
    use tokio::io::AsyncWriteExt;
    const PREFACE: &[u8] = protocols::sniff::H2_PREFACE;
    const FRAME_HEADER: usize = 9;
    const SETTINGS: u8 = 0x4;
    let still_preface = |b: &[u8]| b.len() <= PREFACE.len() && PREFACE.starts_with(b) || b.starts_with(PREFACE);
    let read = io.read_ahead(PREFACE.len() + FRAME_HEADER, |b| !still_preface(b) || b.len() >= PREFACE.len() + FRAME_HEADER);
    match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(Ok(())) => {}
        // A silent or failed peer: let hyper deal with it as usual.
        _ => return true,
    }
    let b = io.prefix();
    if !b.starts_with(PREFACE) || b.len() < PREFACE.len() + FRAME_HEADER {
        return true;
    }
    if b[PREFACE.len() + 3] == SETTINGS {
        return true;
    }
    // Our (empty) SETTINGS, then GOAWAY(last stream 0, PROTOCOL_ERROR).
    let mut frames = vec![0, 0, 0, SETTINGS, 0, 0, 0, 0, 0];
    frames.extend_from_slice(&[0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let inner = io.inner_mut();
    let _ = inner.write_all(&frames).await;
    let _ = inner.shutdown().await;
    false
}
