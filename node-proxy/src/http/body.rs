//! Request and response bodies on the data path.
//!
//! - [`DownstreamBody`]: the downstream request body, with whatever a filter read of
//!   it ahead of forwarding (ext_authz's `with_request_body`) sent first.
//! - [`ReplayBody`]: streams the downstream request body upstream while keeping a
//!   copy (up to the cluster's buffer limit) so a retry or a mirror can send it again;
//!   beyond the limit the copy is dropped and the request is no longer retriable.
//! - [`ReqBody`]: what goes upstream.
//! - [`RespBody`]: what goes downstream, counting bytes and holding the request's
//!   resources (pooled connection, circuit-breaker slots, access-log record) until the
//!   response ends, so they are released exactly then.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The downstream request body: what a filter read ahead (data and, when the body
/// ended there, its trailers), then the rest as it arrives. The read-ahead part is
/// handed out first, so whoever forwards the body sends all of it, in order.
pub struct DownstreamBody {
    /// Read ahead, not yet handed out.
    ahead: VecDeque<Bytes>,
    ahead_len: usize,
    trailers: Option<HeaderMap>,
    /// `None` once the downstream body ended.
    rest: Option<Incoming>,
    /// The downstream declared the body's length (`content-length`): it goes upstream
    /// with a length too, and otherwise chunked (HTTP/1) however much was read ahead,
    /// as Envoy keeps the framing.
    declared: bool,
}

impl DownstreamBody {
    pub fn new(body: Incoming) -> Self {
        let declared = body.size_hint().exact().is_some();
        let rest = (!body.is_end_stream()).then_some(body);
        DownstreamBody { ahead: VecDeque::new(), ahead_len: 0, trailers: None, rest, declared }
    }

    /// Reads ahead until `enough(bytes held)` or the body ends; `stall` bounds the
    /// wait for each frame (the stream idle timeout). What is read stays in the body
    /// and is forwarded first.
    pub async fn read_ahead(&mut self, enough: impl Fn(u64) -> bool, stall: Option<std::time::Duration>) -> Result<(), ReadAheadError> {
        use http_body_util::BodyExt as _;
        while !enough(self.ahead_len as u64) {
            let Some(rest) = self.rest.as_mut() else { return Ok(()) };
            let frame = match stall {
                None => rest.frame().await,
                Some(d) => tokio::time::timeout(d, rest.frame()).await.map_err(|_| ReadAheadError::Stalled)?,
            };
            match frame {
                None => self.rest = None,
                Some(Err(e)) => return Err(ReadAheadError::Body(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        self.ahead_len += data.len();
                        if !data.is_empty() {
                            self.ahead.push_back(data);
                        }
                        // With a Content-Length the last data frame ends the body.
                        if self.rest.as_ref().is_some_and(|r| r.is_end_stream()) {
                            self.rest = None;
                        }
                    }
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        self.rest = None;
                    }
                },
            }
        }
        Ok(())
    }

    /// How many bytes have been read ahead and not handed out.
    pub fn ahead_len(&self) -> usize {
        self.ahead_len
    }

    /// The bytes read ahead, as one buffer (copied only when there are several chunks).
    pub fn ahead(&self) -> Bytes {
        match self.ahead.len() {
            0 => Bytes::new(),
            1 => self.ahead[0].clone(),
            _ => {
                let mut all = bytes::BytesMut::with_capacity(self.ahead_len);
                for c in &self.ahead {
                    all.extend_from_slice(c);
                }
                all.freeze()
            }
        }
    }

    /// Whether the whole body has been read ahead (or there was none).
    pub fn read_completely(&self) -> bool {
        self.rest.is_none()
    }
}

/// Reading a request body ahead failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadAheadError {
    #[error("the client sent no body data within the stream idle timeout")]
    Stalled,
    #[error("downstream request body failed: {0}")]
    Body(hyper::Error),
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(data) = this.ahead.pop_front() {
            this.ahead_len -= data.len();
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(t) = this.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        let Some(rest) = this.rest.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(rest).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.rest = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && self.trailers.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let ahead = self.ahead_len as u64;
        match &self.rest {
            None => known_size(ahead, self.declared),
            Some(r) => {
                let h = r.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + ahead);
                if let Some(u) = h.upper() {
                    out.set_upper(u + ahead);
                }
                out
            }
        }
    }
}

/// A body that can be replayed for retries and mirrors.
pub struct ReplayBody {
    state: Rc<RefCell<ReplayState>>,
    /// Next recorded chunk to hand out.
    pos: usize,
    trailers_sent: bool,
    /// Only the newest clone may read the source; older attempts fail instead.
    generation: u32,
}

struct ReplayState {
    source: Option<DownstreamBody>,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    /// The source has ended; `chunks` + `trailers` are the whole body.
    complete: bool,
    /// The downstream declared the body's length (see [`DownstreamBody`]).
    declared: bool,
    buffered: usize,
    limit: usize,
    /// More than `limit` bytes went through: the copy is incomplete, no replay.
    overflowed: bool,
    generation: u32,
    error: Option<String>,
    /// Woken when the body completes or overflows (mirrors wait on it).
    waiters: Vec<std::task::Waker>,
    /// Bytes read from the downstream (`%BYTES_RECEIVED%`).
    received: Rc<Cell<u64>>,
}

/// The downstream request body failed (malformed framing, reset): the client's fault.
#[derive(Debug, thiserror::Error)]
#[error("downstream request body failed: {0}")]
pub struct DownstreamBodyError(pub hyper::Error);

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("request body superseded by a newer attempt")]
    Superseded,
    #[error("downstream request body failed: {0}")]
    Source(String),
}

/// The hint for a body whose size is known: exact when the downstream declared its
/// length; otherwise only a lower bound, so that hyper frames it as the downstream
/// did (chunked) rather than adding a `content-length`.
fn known_size(len: u64, declared: bool) -> SizeHint {
    let mut hint = SizeHint::new();
    hint.set_lower(len);
    if declared {
        hint.set_upper(len);
    }
    hint
}

impl ReplayBody {
    pub fn new(source: DownstreamBody, limit: usize, received: Rc<Cell<u64>>) -> Self {
        let complete = source.is_end_stream();
        let declared = source.declared;
        let state = ReplayState {
            source: Some(source),
            chunks: Vec::new(),
            trailers: None,
            complete,
            declared,
            buffered: 0,
            limit,
            overflowed: false,
            generation: 0,
            error: None,
            waiters: Vec::new(),
            received,
        };
        ReplayBody { state: Rc::new(RefCell::new(state)), pos: 0, trailers_sent: false, generation: 0 }
    }

    /// The body for the first attempt (it reads the source).
    pub fn first(&self) -> ReplayBody {
        ReplayBody { state: self.state.clone(), pos: 0, trailers_sent: false, generation: self.state.borrow().generation }
    }

    /// A body for the next attempt: replays what was read, then continues the source.
    /// `None` once the copy overflowed.
    pub fn replay(&self) -> Option<ReplayBody> {
        let mut s = self.state.borrow_mut();
        if s.overflowed || s.error.is_some() {
            return None;
        }
        s.generation += 1;
        Some(ReplayBody { state: self.state.clone(), pos: 0, trailers_sent: false, generation: s.generation })
    }

    /// Whether another attempt can still send the whole body.
    pub fn is_replayable(&self) -> bool {
        let s = self.state.borrow();
        !s.overflowed && s.error.is_none()
    }

    /// The whole body once it has been read completely within the limit (for mirrors).
    pub fn completed(&self) -> impl std::future::Future<Output = Option<(Bytes, Option<HeaderMap>)>> + 'static {
        let state = self.state.clone();
        std::future::poll_fn(move |cx| {
            let mut s = state.borrow_mut();
            if s.overflowed || s.error.is_some() {
                return Poll::Ready(None);
            }
            if s.complete {
                let mut all = bytes::BytesMut::with_capacity(s.buffered);
                for c in &s.chunks {
                    all.extend_from_slice(c);
                }
                return Poll::Ready(Some((all.freeze(), s.trailers.clone())));
            }
            s.waiters.push(cx.waker().clone());
            Poll::Pending
        })
    }
}

impl ReplayState {
    fn wake(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.state.borrow_mut();
        if this.pos < s.chunks.len() {
            let chunk = s.chunks[this.pos].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if s.complete {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        if let Some(e) = &s.error {
            return Poll::Ready(Some(Err(Box::new(ReplayError::Source(e.clone())))));
        }
        if this.generation != s.generation {
            return Poll::Ready(Some(Err(Box::new(ReplayError::Superseded))));
        }
        let Some(source) = s.source.as_mut() else { return Poll::Ready(None) };
        match Pin::new(source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.complete = true;
                s.source = None;
                s.wake();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.error = Some(e.to_string());
                s.wake();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    s.received.set(s.received.get() + data.len() as u64);
                    if !s.overflowed {
                        s.buffered += data.len();
                        if s.buffered > s.limit {
                            s.overflowed = true;
                            s.chunks = Vec::new();
                            s.wake();
                        } else {
                            s.chunks.push(data.clone());
                            this.pos = s.chunks.len();
                        }
                    }
                    // With a Content-Length, the last data frame ends the body: nobody
                    // polls again for the `None`, so complete it now.
                    if s.source.as_ref().is_some_and(|src| src.is_end_stream()) {
                        s.complete = true;
                        s.source = None;
                        s.wake();
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    s.trailers = trailers.clone();
                    s.complete = true;
                    s.source = None;
                    this.trailers_sent = true;
                    s.wake();
                    match trailers {
                        Some(t) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                        None => Poll::Ready(None),
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.state.borrow();
        s.complete && self.pos >= s.chunks.len() && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.state.borrow();
        match &s.source {
            Some(src) if self.pos == 0 && s.chunks.is_empty() => src.size_hint(),
            _ if s.complete => known_size(s.chunks[self.pos.min(s.chunks.len())..].iter().map(|c| c.len() as u64).sum(), s.declared),
            _ => SizeHint::default(),
        }
    }
}

/// The body sent upstream.
pub enum ReqBody {
    Empty,
    Full(Option<Bytes>),
    /// The downstream body passed through (counting bytes received).
    Stream(DownstreamBody, Rc<Cell<u64>>),
    Replay(ReplayBody),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ReqBody::Stream(b, received) => {
                let polled = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(d) = frame.data_ref() {
                        received.set(received.get() + d.len() as u64);
                    }
                }
                polled.map_err(|e| Box::new(DownstreamBodyError(e)) as BoxError)
            }
            ReqBody::Replay(r) => Pin::new(r).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(d) => d.is_none(),
            ReqBody::Stream(b, _) => b.is_end_stream(),
            ReqBody::Replay(r) => r.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            ReqBody::Stream(b, _) => b.size_hint(),
            ReqBody::Replay(r) => r.size_hint(),
        }
    }
}

/// Called once when a response body ends, fails, or is dropped unfinished.
pub trait Finish {
    fn finish(self: Box<Self>, end: BodyEnd);
}

/// How a response body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyEnd {
    pub bytes: u64,
    pub outcome: EndOutcome,
    /// `grpc-status` from the trailers, if they carried one.
    pub grpc_status: Option<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndOutcome {
    Complete,
    /// The upstream failed mid-body (reset or read error).
    UpstreamError,
    /// The downstream went away first (`DC`).
    Dropped,
    /// The route or per-try timeout fired while streaming.
    TimedOut,
}

/// The body sent downstream.
pub struct RespBody {
    inner: RespInner,
    bytes: u64,
    grpc_status: Option<i32>,
    finish: Option<Box<dyn Finish>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Fails the stream when no frame arrives for this long (restarted per frame).
    idle: Option<(std::time::Duration, Pin<Box<tokio::time::Sleep>>)>,
}

enum RespInner {
    Empty,
    Full(Option<Bytes>, Option<HeaderMap>),
    Upstream(Incoming),
}

#[derive(Debug, thiserror::Error)]
#[error("upstream response timed out while streaming")]
pub struct StreamTimeout;

impl RespBody {
    pub fn empty() -> Self {
        RespBody { inner: RespInner::Empty, bytes: 0, grpc_status: None, finish: None, deadline: None, idle: None }
    }

    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        let inner = if data.is_empty() { RespInner::Empty } else { RespInner::Full(Some(data), None) };
        RespBody { inner, bytes: 0, grpc_status: None, finish: None, deadline: None, idle: None }
    }

    /// Trailers only (gRPC local replies on HTTP/2 carry grpc-status in trailers when a body was sent).
    pub fn with_trailers(data: Bytes, trailers: HeaderMap) -> Self {
        RespBody {
            inner: RespInner::Full(Some(data).filter(|d| !d.is_empty()), Some(trailers)),
            bytes: 0,
            grpc_status: None,
            finish: None,
            deadline: None,
            idle: None,
        }
    }

    pub fn upstream(body: Incoming) -> Self {
        RespBody { inner: RespInner::Upstream(body), bytes: 0, grpc_status: None, finish: None, deadline: None, idle: None }
    }

    /// Runs `finish` when the body ends (or is dropped).
    pub fn on_finish(mut self, finish: Box<dyn Finish>) -> Self {
        self.finish = Some(finish);
        self
    }

    /// Fails the stream when the upstream sends nothing for `idle`.
    pub fn with_idle_timeout(mut self, idle: Option<std::time::Duration>) -> Self {
        self.idle = idle.map(|d| (d, Box::pin(tokio::time::sleep(d))));
        self
    }

    /// Fails the stream if it has not ended by `deadline`.
    pub fn with_deadline(mut self, deadline: Option<tokio::time::Instant>) -> Self {
        self.deadline = deadline.map(|d| Box::pin(tokio::time::sleep_until(d)));
        self
    }

    fn end(&mut self, outcome: EndOutcome) {
        if let Some(f) = self.finish.take() {
            f.finish(BodyEnd { bytes: self.bytes, outcome, grpc_status: self.grpc_status });
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            RespInner::Empty => Poll::Ready(None),
            RespInner::Full(data, trailers) => match data.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
            RespInner::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => {
                    this.end(EndOutcome::UpstreamError);
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some((d, sleep)) = this.idle.as_mut() {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                }
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                } else if let Some(t) = frame.trailers_ref() {
                    this.grpc_status = t.get("grpc-status").and_then(|v| protocols::grpc::Code::from_header_value(v.as_bytes()).ok()).map(|c| c.as_i32());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.end(EndOutcome::Complete);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready())
                    || this.idle.as_mut().is_some_and(|(_, sleep)| sleep.as_mut().poll(cx).is_ready());
                if expired {
                    this.end(EndOutcome::TimedOut);
                    this.inner = RespInner::Empty;
                    return Poll::Ready(Some(Err(Box::new(StreamTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            RespInner::Empty => true,
            RespInner::Full(d, t) => d.is_none() && t.is_none(),
            RespInner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            RespInner::Empty => SizeHint::with_exact(0),
            RespInner::Full(d, _) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            RespInner::Upstream(b) => b.size_hint(),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        // A body that ended empty without being polled (e.g. HEAD, 204) completed.
        let outcome = if self.is_end_stream() { EndOutcome::Complete } else { EndOutcome::Dropped };
        self.end(outcome);
    }
}
