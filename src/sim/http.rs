//! Minimal HTTP/1.1 server side: request heads via httparse, bodies by
//! Content-Length or chunked, keep-alive, and raw writes so faults can cut
//! the wire anywhere.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::io::SimIo;

const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const MAX_BODY: usize = 64 * 1024 * 1024;
const MAX_CHUNK_LINE: usize = 4096;
/// While waiting, how much pipelined input we buffer before we stop reading.
const MAX_BUFFERED: usize = MAX_HEAD + MAX_BODY;

/// A parsed request with its whole body.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// The path without the query string.
    pub path: String,
    /// Header names lowercased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The client allows another request on this connection.
    pub keep_alive: bool,
}

/// What reading the next request gave.
pub(crate) enum Incoming {
    Request(Request),
    /// The client closed (or reset) the connection between requests.
    Closed,
    /// The request is malformed: answer this status and close.
    Bad(u16, String),
}

/// One client connection with its read buffer.
pub(crate) struct Conn {
    pub stream: SimIo,
    buf: BytesMut,
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl Conn {
    pub fn new(stream: SimIo) -> Conn {
        Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Reads more input; `Ok(false)` on EOF.
    async fn fill(&mut self) -> std::io::Result<bool> {
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    pub async fn read_request(&mut self) -> Incoming {
        match self.try_read_request().await {
            Ok(incoming) => incoming,
            Err(e) => {
                tracing::trace!(error = %e, "sim read failed");
                Incoming::Closed
            }
        }
    }

    async fn try_read_request(&mut self) -> std::io::Result<Incoming> {
        let (head_len, method, target, version, headers) = loop {
            if !self.buf.is_empty() {
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut slots);
                match req.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let headers = req
                            .headers
                            .iter()
                            .map(|h| {
                                let value = String::from_utf8_lossy(h.value).into_owned();
                                (h.name.to_ascii_lowercase(), value)
                            })
                            .collect::<Vec<_>>();
                        break (
                            n,
                            req.method.unwrap_or("").to_string(),
                            req.path.unwrap_or("").to_string(),
                            req.version.unwrap_or(0),
                            headers,
                        );
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(httparse::Error::TooManyHeaders) => {
                        return Ok(Incoming::Bad(431, "too many headers".into()))
                    }
                    Err(e) => return Ok(Incoming::Bad(400, format!("bad request head: {e}"))),
                }
                if self.buf.len() > MAX_HEAD {
                    return Ok(Incoming::Bad(431, "request head too large".into()));
                }
            }
            if !self.fill().await? {
                return Ok(Incoming::Closed);
            }
        };
        self.buf.advance(head_len);

        fn values<'a>(h: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> {
            h.iter()
                .filter(move |(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
        let keep_alive =
            version == 1 && !values(&headers, "connection").any(|v| has_token(v, "close"));
        let chunked = values(&headers, "transfer-encoding").any(|v| has_token(v, "chunked"));
        let lengths: Vec<_> = values(&headers, "content-length")
            .map(|v| v.trim().parse::<usize>().ok())
            .collect();
        let length = match lengths.first() {
            None => 0,
            Some(Some(n)) if lengths.iter().all(|l| *l == Some(*n)) => *n,
            Some(_) => return Ok(Incoming::Bad(400, "bad content-length".into())),
        };
        if !chunked && length > MAX_BODY {
            return Ok(Incoming::Bad(413, "request body too large".into()));
        }
        let expects_continue = values(&headers, "expect").any(|v| has_token(v, "100-continue"));
        if expects_continue && version == 1 && (chunked || length > 0) {
            self.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }

        let body = if chunked {
            match self.read_chunked().await? {
                Ok(body) => body,
                Err((code, msg)) => return Ok(Incoming::Bad(code, msg)),
            }
        } else {
            while self.buf.len() < length {
                if !self.fill().await? {
                    return Ok(Incoming::Closed);
                }
            }
            self.buf.split_to(length).freeze()
        };
        let path = target.split('?').next().unwrap_or("").to_string();
        Ok(Incoming::Request(Request {
            method,
            target,
            path,
            headers,
            body,
            keep_alive,
        }))
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    async fn read_line(&mut self) -> std::io::Result<Result<Bytes, (u16, String)>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(i).freeze();
                self.buf.advance(2);
                return Ok(Ok(line));
            }
            if self.buf.len() > MAX_CHUNK_LINE {
                return Ok(Err((400, "chunk line too long".into())));
            }
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    async fn read_chunked(&mut self) -> std::io::Result<Result<Bytes, (u16, String)>> {
        let mut body = BytesMut::new();
        loop {
            let line = match self.read_line().await? {
                Ok(line) => line,
                Err(bad) => return Ok(Err(bad)),
            };
            let text = String::from_utf8_lossy(&line);
            let size_text = text.split(';').next().unwrap_or("").trim();
            let size = match usize::from_str_radix(size_text, 16) {
                Ok(n) => n,
                Err(_) => return Ok(Err((400, format!("bad chunk size {size_text:?}")))),
            };
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    match self.read_line().await? {
                        Ok(line) if line.is_empty() => return Ok(Ok(body.freeze())),
                        Ok(_) => {}
                        Err(bad) => return Ok(Err(bad)),
                    }
                }
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Ok(Err((413, "request body too large".into())));
            }
            while self.buf.len() < size + 2 {
                if !self.fill().await? {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Ok(Err((400, "chunk not followed by CRLF".into())));
            }
            self.buf.advance(size + 2);
        }
    }

    /// Waits `dur` (forever when `None`) while watching the read side.
    /// Returns true if the client closed or reset the connection meanwhile.
    /// Pipelined input that arrives is kept for the next request.
    pub async fn wait_or_disconnect(&mut self, dur: Option<Duration>) -> bool {
        let sleep = async {
            match dur {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            if self.buf.len() >= MAX_BUFFERED {
                sleep.as_mut().await;
                return false;
            }
            tokio::select! {
                _ = &mut sleep => return false,
                r = self.stream.read_buf(&mut self.buf) => match r {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                },
            }
        }
    }

    /// Reads, without waiting, whatever input the socket already holds (after
    /// letting the runtime poll its I/O driver once) and returns how many
    /// bytes are now buffered past the last request.
    pub async fn read_ready(&mut self) -> usize {
        tokio::task::yield_now().await;
        while self.buf.len() < MAX_BUFFERED {
            self.buf.reserve(8 * 1024);
            // One poll: whatever is ready now, never a wait.
            match self.stream.read_buf(&mut self.buf).now_or_never() {
                Some(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        self.buf.len()
    }

    /// Takes the input buffered past the last request.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.buf.split().to_vec()
    }

    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await
    }

    /// Graceful close: FIN after what was written.
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Abortive close: the client sees a connection reset.
    pub fn reset(self) {
        if let Err(e) = self.stream.set_zero_linger() {
            tracing::debug!(error = %e, "sim: SO_LINGER 0 failed");
        }
        drop(self.stream);
    }
}

pub(crate) fn reason(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// Framing of a response body.
pub(crate) enum Framing {
    Length(usize),
    Chunked,
}

/// Encodes a response head.
pub(crate) fn head(
    code: u16,
    headers: &[(&str, String)],
    framing: Framing,
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {code} {}\r\n", reason(code));
    for (k, v) in headers {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    match framing {
        Framing::Length(n) => out.push_str(&format!("content-length: {n}\r\n")),
        Framing::Chunked => out.push_str("transfer-encoding: chunked\r\n"),
    }
    if !keep_alive {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// One chunk of a chunked body.
pub(crate) fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
