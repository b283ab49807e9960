//! The inbound end of HBONE: serves the `CONNECT` streams of one established
//! (already TLS-terminated) connection, asking a handler what to do with each.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use super::{H2Stream, HboneError, CONNECTION_WINDOW, FRAME_SIZE, MAX_STREAMS_PER_CONNECTION, STREAM_WINDOW};
use crate::drain::Drain;

/// One tunnelled connection's request, as the handler sees it.
#[derive(Debug)]
pub struct ConnectRequest {
    /// Where the client wants to go (`:authority`).
    pub target: SocketAddr,
    /// The request's headers (`baggage`, `forwarded`, `traceparent`, ...).
    pub headers: http::HeaderMap,
}

/// What a handler makes of an accepted `CONNECT` (it is answered 200 either way).
pub enum Accepted<U> {
    /// Relay the stream's bytes to and from this connection (L4).
    Relay(U),
    /// Hand the stream to this task (the destination serves what it carries, L7).
    Serve(StreamTask),
}

/// A task that takes over an accepted stream.
pub type StreamTask = Box<dyn FnOnce(H2Stream) -> Pin<Box<dyn Future<Output = ()>>>>;

/// Serves the HTTP/2 connection `io` until the client closes it or `drain` fires (then
/// GOAWAY lets open streams finish). For each `CONNECT`, `handler` says what to do
/// with the stream ([`Accepted`]) or the status to refuse it with (401 policy denial,
/// 503 unreachable, ...). A request that is not a `CONNECT` to `ip:port` gets 405 or
/// 400; other streams go on. Streams are tasks of the current `LocalSet` (the proxy's
/// workers), so handlers need not be `Send`.
pub async fn serve<IO, H, Fut, U>(io: IO, peer: &str, drain: &Drain, handler: H) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(ConnectRequest) -> Fut + Clone + 'static,
    Fut: Future<Output = Result<Accepted<U>, StatusCode>>,
    U: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_SIZE)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(16 * 1024)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|source| HboneError::Handshake { peer: peer.to_owned(), source })?;
    let mut draining = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = drain.signaled(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        match next {
            None => return Ok(()),
            Some(Err(e)) if e.is_go_away() || e.is_io() => {
                debug!(peer, error = %e, "HBONE connection ended");
                return Ok(());
            }
            Some(Err(source)) => return Err(HboneError::Handshake { peer: peer.to_owned(), source }),
            Some(Ok((request, respond))) => {
                let handler = handler.clone();
                let peer = peer.to_owned();
                tokio::task::spawn_local(async move { stream(request, respond, &peer, handler).await });
            }
        }
    }
}

/// The target of a `CONNECT`, or the status to refuse it with.
pub fn parse_connect<B>(request: &Request<B>) -> Result<SocketAddr, (StatusCode, String)> {
    if request.method() != Method::CONNECT {
        return Err((StatusCode::METHOD_NOT_ALLOWED, format!("method {} (HBONE takes CONNECT only)", request.method())));
    }
    let authority = request.uri().authority().map(|a| a.as_str()).unwrap_or_default();
    authority.parse().map_err(|_| (StatusCode::BAD_REQUEST, format!(":authority {authority:?} is not ip:port")))
}

async fn stream<H, Fut, U>(request: Request<h2::RecvStream>, mut respond: SendResponse<Bytes>, peer: &str, handler: H)
where
    H: Fn(ConnectRequest) -> Fut,
    Fut: Future<Output = Result<Accepted<U>, StatusCode>>,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let refuse = |respond: &mut SendResponse<Bytes>, status: StatusCode| {
        let response = Response::builder().status(status).body(()).unwrap_or_default();
        let _ = respond.send_response(response, true);
    };
    let target = match parse_connect(&request) {
        Ok(t) => t,
        Err((status, why)) => {
            info!(peer, %why, status = status.as_u16(), "HBONE request refused");
            return refuse(&mut respond, status);
        }
    };
    let (parts, recv) = request.into_parts();
    let accepted = match handler(ConnectRequest { target, headers: parts.headers }).await {
        Ok(a) => a,
        Err(status) => return refuse(&mut respond, status),
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(s) => s,
        Err(e) => {
            debug!(peer, %target, error = %e, "HBONE stream gone before the answer");
            return;
        }
    };
    let tunnel = H2Stream::new(send, recv, None);
    match accepted {
        Accepted::Relay(upstream) => {
            let (from_peer, to_peer) = crate::io::relay(Bytes::new(), tunnel, tokio::io::split(upstream), None).await;
            debug!(peer, %target, from_peer, to_peer, "HBONE stream done");
        }
        Accepted::Serve(task) => task(tunnel).await,
    }
}
