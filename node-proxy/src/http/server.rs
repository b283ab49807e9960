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
use crate::io::PrefixedIo;
use crate::runtime::LocalExec;

/// Envoy's defaults for HTTP/2 flow control are large (256 MiB); these keep memory
/// per stream bounded while not throttling a single fast stream.
const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const H2_MAX_CONCURRENT_STREAMS: u32 = 1024;

pub async fn serve(io: PrefixedIo, cx: Rc<ConnCtx>) {
    let Some(hcm) = cx.hcm() else { return };
    let codec = hcm.codec;
    let max_header_bytes = (hcm.max_request_headers_kb as usize * 1024).max(8 * 1024);
    // Waiting for a request's headers, which includes a keep-alive connection's idle
    // time: the header timeout if set, else the connection idle timeout (Envoy: 1 h).
    let header_timeout = hcm.request_headers_timeout.or(hcm.idle_timeout);
    let drain = cx.worker.shared.drain.clone();
    let svc_cx = cx.clone();
    let service = service_fn(move |req| {
        let cx = svc_cx.clone();
        async move { Ok::<_, Infallible>(proxy::handle(cx, req).await) }
    });

    let mut builder = auto::Builder::new(LocalExec);
    {
        let mut h1 = builder.http1();
        h1.timer(TokioTimer::new()).max_buf_size(max_header_bytes + 16 * 1024).keep_alive(true);
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
