//! HTTP/1 request framing, followed byte by byte on a client's stream, to judge each
//! request head as it arrives.
//!
//! The proxy's HTTP/1 server (hyper) resolves `Content-Length` together with
//! `Transfer-Encoding` by dropping the length (RFC 9112 §6.3 allows that); Envoy
//! instead rejects such requests with 400. [`MessageTracker`] sees the raw heads
//! before the server does, so the proxy can answer as Envoy does. It follows message
//! boundaries (Content-Length bodies, chunked bodies with trailers) to find every head
//! on a keep-alive or pipelined connection. When the stream stops making sense
//! (malformed chunk sizes, an upgrade, a head too large) it stops judging: the server
//! rejects such input itself.

use crate::sniff::MAX_REQUEST_LINE_LEN;

/// What a complete request head says about its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadVerdict {
    Ok,
    /// Both `Content-Length` and `Transfer-Encoding`: a smuggling vector, rejected.
    ConflictingFraming,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Reading a request head (bytes kept in `head`).
    Head,
    /// Skipping `n` bytes of a Content-Length body.
    Body(u64),
    /// Reading a chunk-size line (kept in `line`).
    ChunkSize,
    /// Skipping `n` bytes of chunk data.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data (bytes still to skip).
    ChunkDataEnd(u8),
    /// Reading trailer lines until an empty one (kept in `line`).
    Trailers,
    /// No longer following the stream.
    Opaque,
}

/// Follows request framing on one connection.
#[derive(Clone, Debug)]
pub struct MessageTracker {
    state: State,
    head: Vec<u8>,
    line: Vec<u8>,
    max_head: usize,
}

/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 8 * 1024;
/// Most headers in a head we judge (beyond: opaque, the server decides).
const MAX_HEADERS: usize = 256;

impl MessageTracker {
    /// `max_head`: the largest head the server accepts (its header limit).
    pub fn new(max_head: usize) -> Self {
        MessageTracker { state: State::Head, head: Vec::new(), line: Vec::new(), max_head: max_head.max(MAX_REQUEST_LINE_LEN) }
    }

    /// Whether the tracker has given up following the stream.
    pub fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// Feeds bytes read from the client, in order; `on_head` is called once per
    /// complete request head, in order.
    pub fn feed(&mut self, mut data: &[u8], on_head: &mut impl FnMut(HeadVerdict)) {
        while !data.is_empty() {
            match self.state {
                State::Opaque => return,
                State::Head => {
                    // Leading CRLFs between pipelined requests are allowed (RFC 9112 §2.2).
                    if self.head.is_empty() {
                        let skip = data.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
                        data = after(data, skip);
                        if data.is_empty() {
                            return;
                        }
                    }
                    let scan_from = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(data);
                    match find(after(&self.head, scan_from), b"\r\n\r\n") {
                        Some(i) => {
                            let end = scan_from + i + 4;
                            let rest = self.head.split_off(end);
                            let head = std::mem::take(&mut self.head);
                            self.on_complete_head(&head, on_head);
                            // Continue with what followed the head.
                            self.head = Vec::new();
                            return self.feed_owned(rest, on_head);
                        }
                        None if self.head.len() > self.max_head => self.state = State::Opaque,
                        None => {}
                    }
                    return;
                }
                State::Body(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    data = after(data, take);
                    self.state = if n == take as u64 { State::Head } else { State::Body(n - take as u64) };
                }
                State::ChunkData(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    data = after(data, take);
                    self.state = if n == take as u64 { State::ChunkDataEnd(2) } else { State::ChunkData(n - take as u64) };
                }
                State::ChunkDataEnd(left) => {
                    let expected: &[u8] = if left == 2 { b"\r\n" } else { b"\n" };
                    let take = (left as usize).min(data.len());
                    if data.get(..take) != expected.get(..take) {
                        self.state = State::Opaque;
                        return;
                    }
                    data = after(data, take);
                    self.state = if take == left as usize { State::ChunkSize } else { State::ChunkDataEnd(left - take as u8) };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(data);
                        if self.line.len() > MAX_LINE {
                            self.state = State::Opaque;
                        }
                        return;
                    };
                    self.line.extend_from_slice(data.get(..=nl).unwrap_or_default());
                    data = after(data, nl + 1);
                    let line = std::mem::take(&mut self.line);
                    self.state = if self.state == State::ChunkSize { chunk_size_state(&line) } else { trailer_state(&line) };
                }
            }
        }
    }

    fn feed_owned(&mut self, rest: Vec<u8>, on_head: &mut impl FnMut(HeadVerdict)) {
        self.feed(&rest, on_head);
    }

    fn on_complete_head(&mut self, head: &[u8], on_head: &mut impl FnMut(HeadVerdict)) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            // Malformed or too many headers: the server answers it; stop judging.
            _ => {
                self.state = State::Opaque;
                return;
            }
        }
        let (mut content_length, mut transfer_encoding, mut chunked, mut upgrade) = (None::<u64>, false, false, false);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
                // The final coding decides (`gzip, chunked`).
                chunked = h.value.split(|b| *b == b',').next_back().is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                content_length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()).or(Some(u64::MAX));
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let verdict = if transfer_encoding && content_length.is_some() { HeadVerdict::ConflictingFraming } else { HeadVerdict::Ok };
        on_head(verdict);
        let connect = req.method.is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"));
        self.state = if verdict == HeadVerdict::ConflictingFraming || upgrade || connect {
            // Rejected (the connection closes), or another protocol follows.
            State::Opaque
        } else if transfer_encoding {
            if chunked {
                State::ChunkSize
            } else {
                State::Opaque
            }
        } else {
            match content_length {
                Some(u64::MAX) => State::Opaque,
                Some(0) | None => State::Head,
                Some(n) => State::Body(n),
            }
        };
    }
}

fn chunk_size_state(line: &[u8]) -> State {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = line.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
    if size.is_empty() || size.len() > 16 {
        return State::Opaque;
    }
    match std::str::from_utf8(size).ok().and_then(|s| u64::from_str_radix(s, 16).ok()) {
        Some(0) => State::Trailers,
        Some(n) => State::ChunkData(n),
        None => State::Opaque,
    }
}

fn trailer_state(line: &[u8]) -> State {
    if line == b"\r\n" || line == b"\n" {
        State::Head
    } else {
        State::Trailers
    }
}

/// `data[n..]`, or empty.
fn after(data: &[u8], n: usize) -> &[u8] {
    data.get(n..).unwrap_or_default()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(chunks: &[&[u8]]) -> Vec<HeadVerdict> {
        let mut t = MessageTracker::new(64 * 1024);
        let mut out = Vec::new();
        for c in chunks {
            t.feed(c, &mut |v| out.push(v));
        }
        out
    }

    #[test]
    fn pipelined_requests_with_bodies() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdicts(&[stream]), vec![HeadVerdict::Ok; 4]);
        // Byte by byte gives the same.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(verdicts(&bytes), vec![HeadVerdict::Ok; 4]);
    }

    #[test]
    fn conflicting_framing_on_a_later_request() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(verdicts(&[stream]), vec![HeadVerdict::Ok, HeadVerdict::ConflictingFraming]);
        let te_first: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(verdicts(&[te_first]), vec![HeadVerdict::ConflictingFraming]);
    }

    #[test]
    fn nonsense_stops_judging() {
        let mut t = MessageTracker::new(64 * 1024);
        let mut n = 0;
        t.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", &mut |_| n += 1);
        assert!(t.is_opaque());
        t.feed(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", &mut |_| n += 1);
        assert_eq!(n, 1, "nothing judged after the malformed chunk");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), split in 0usize..2048) {
            let mut t = MessageTracker::new(4096);
            let split = split.min(data.len());
            t.feed(&data[..split], &mut |_| {});
            t.feed(&data[split..], &mut |_| {});
        }

        /// Any split of a stream of valid requests yields the same verdicts.
        #[test]
        fn splits_do_not_matter(bodies in proptest::collection::vec(0usize..300, 1..6), cut in 0usize..4000) {
            let mut stream = Vec::new();
            for (i, len) in bodies.iter().enumerate() {
                if i % 2 == 0 {
                    stream.extend_from_slice(format!("POST /{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n").as_bytes());
                    stream.extend(std::iter::repeat_n(b'x', *len));
                } else {
                    stream.extend_from_slice(format!("POST /{i} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n").as_bytes());
                    stream.extend(std::iter::repeat_n(b'y', *len));
                    stream.extend_from_slice(if *len == 0 { &b"\r\n"[..] } else { &b"\r\n0\r\n\r\n"[..] });
                }
            }
            let cut = cut.min(stream.len());
            let whole = verdicts(&[&stream]);
            let split = verdicts(&[&stream[..cut], &stream[cut..]]);
            proptest::prop_assert_eq!(whole.len(), bodies.len());
            proptest::prop_assert_eq!(split, whole);
        }
    }
}
