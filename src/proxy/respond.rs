//! Writing to the client: gateway errors in the JSON shape, and a backend's
//! answer forwarded chunk by chunk as it arrives. Once bytes have reached
//! the client, a failure can no longer be hidden; it must not be disguised
//! either, so the response is aborted (never cleanly terminated) and an
//! event stream first gets an explicit error event.

use super::attempt::Answer;
use super::compress::Compressor;
use super::headers;
use super::usage::UsageTap;
use crate::error::GatewayError;
use crate::metrics;
use crate::redact::Redacted;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;
use pingora_timeout::fast_timeout::fast_timeout;
use std::time::{Duration, Instant};

/// How long an idle pooled backend connection is kept.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

pub async fn gateway_error(session: &mut ServerSession, err: &GatewayError) -> bool {
    let body = Bytes::from(err.json());
    let mut head = match ResponseHeader::build(err.status, Some(4)) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "building an error response failed");
            return false;
        }
    };
    let mut ok = head
        .insert_header("content-type", "application/json")
        .is_ok()
        && head
            .insert_header("content-length", body.len().to_string())
            .is_ok()
        && head.insert_header("cache-control", "no-store").is_ok();
    if let Some(secs) = err.retry_after_secs() {
        ok &= head.insert_header("retry-after", secs.to_string()).is_ok();
    }
    for (name, value) in &err.headers {
        ok &= head.insert_header(*name, value.as_str()).is_ok();
    }
    if !ok {
        tracing::error!("setting error response headers failed");
        return false;
    }
    if session.write_response_header(Box::new(head)).await.is_err() {
        return false;
    }
    session.write_response_body(body, true).await.is_ok()
}

/// Write a gateway error as raw HTTP/1.1 bytes and close the write side:
/// for connections Pingora has no session for (a refused or malformed
/// head, too many connections).
pub async fn raw_error<W>(io: &mut W, err: &GatewayError) -> std::io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::AsyncWriteExt;
    let body = err.json();
    let reason = http::StatusCode::from_u16(err.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n",
        err.status,
        body.len()
    );
    if let Some(secs) = err.retry_after_secs() {
        head.push_str(&format!("retry-after: {secs}\r\n"));
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes()).await?;
    io.write_all(body.as_bytes()).await?;
    io.flush().await?;
    io.shutdown().await
}

/// How forwarding a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// The whole body reached the client.
    Complete,
    /// The client went away; the backend connection was closed so it can stop.
    ClientGone,
    /// The backend failed mid-body; the client's response was aborted.
    UpstreamBroken,
    /// The backend went silent for `stream_idle` mid-body; aborted likewise.
    UpstreamStalled,
    /// An OpenAI event stream ended without `data: [DONE]`: a truncated
    /// answer, aborted likewise.
    MissingDone,
    /// The client stopped reading for `client_write`: the response was
    /// abandoned and the backend connection closed, freeing its slot.
    ClientStalled,
    /// The gateway's grace period for shutting down ran out mid-body:
    /// aborted like a broken upstream, with its own error event.
    Shutdown,
}

impl Forwarded {
    pub fn label(self) -> &'static str {
        match self {
            Forwarded::Complete => "complete",
            Forwarded::ClientGone => "client_gone",
            Forwarded::UpstreamBroken => "upstream_broken",
            Forwarded::UpstreamStalled => "upstream_stalled",
            Forwarded::MissingDone => "missing_done",
            Forwarded::ClientStalled => "client_stalled",
            Forwarded::Shutdown => "shutdown",
        }
    }
}

/// A Server-Sent Events response (token streams of model APIs).
pub fn is_event_stream(head: &ResponseHeader) -> bool {
    head.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// The last event of an event stream the backend broke off.
fn interrupted_event(end: Forwarded) -> Bytes {
    let (message, code) = match end {
        Forwarded::UpstreamStalled => (
            "the upstream stopped sending mid-stream",
            "upstream_stream_interrupted",
        ),
        Forwarded::MissingDone => (
            "the upstream ended the stream mid-answer (no [DONE])",
            "upstream_stream_interrupted",
        ),
        Forwarded::Shutdown => (
            "the gateway is shutting down and its grace period ran out",
            "gateway_shutting_down",
        ),
        _ => (
            "the upstream failed mid-stream",
            "upstream_stream_interrupted",
        ),
    };
    let event = serde_json::json!({
        "error": {
            "message": message,
            "type": "gateway_error",
            "code": code,
        }
    });
    Bytes::from(format!("data: {event}\n\n"))
}

/// How a response is forwarded (per route).
pub struct Forwarding {
    pub stream_idle: Duration,
    /// Longest a write to the client may make no progress.
    pub client_write: Duration,
    /// An event stream must end with `data: [DONE]` (OpenAI routes).
    pub require_done: bool,
    /// Turns true when a shutdown's grace period is over.
    pub cut: tokio::sync::watch::Receiver<bool>,
}

/// Forward `answer` to the client; with `count_usage`, also the completion
/// tokens it carried (see `usage::UsageTap`).
pub async fn forward(
    session: &mut ServerSession,
    answer: Answer,
    connector: &Connector,
    peer: &HttpPeer,
    how: &Forwarding,
    count_usage: bool,
) -> (Forwarded, Option<u64>) {
    let Answer {
        session: mut upstream,
        head,
        first,
        done,
        ..
    } = answer;
    let sse = is_event_stream(&head);
    let mut head = headers::downstream_response(&head);
    if sse {
        // Tell buffering proxies in front of us to pass tokens on at once.
        let _ = head.insert_header("x-accel-buffering", "no");
    }
    let accept_encoding = session
        .req_header()
        .headers
        .get(http::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A HEAD answer has no body to compress; its head stays the backend's.
    let no_body = session.req_header().method == http::Method::HEAD;
    // An encoded upstream body cannot be read for its usage.
    let encoded = head.headers.contains_key(http::header::CONTENT_ENCODING);
    let mut body = Body {
        compressor: Compressor::for_response(accept_encoding.as_deref(), &mut head, sse || no_body),
        done_watch: (sse && how.require_done).then(DoneWatch::default),
        flushed: false,
        usage: (count_usage && !encoded).then(UsageTap::default),
    };
    let started = Instant::now();
    let _active = sse.then(|| metrics::ActiveStream::new("sse"));

    let end = pump(session, &mut upstream, head, first, done, how, &mut body).await;
    let tokens = body.usage.as_ref().map(UsageTap::tokens);
    if sse {
        metrics::stream_done("sse", started.elapsed().as_secs_f64());
    }
    match end {
        Forwarded::Complete => {
            if let HttpSession::H1(h1) = &mut upstream {
                // Keep the connection pooled unless the backend asked to close it.
                h1.respect_keepalive();
            }
            connector
                .release_http_session(upstream, peer, Some(UPSTREAM_IDLE))
                .await;
        }
        Forwarded::ClientGone => {
            // Close the backend connection so the backend can stop generating.
            upstream.shutdown().await;
            metrics::stream_abort(end.label());
        }
        Forwarded::ClientStalled => {
            upstream.shutdown().await;
            metrics::stream_abort(end.label());
            tracing::debug!("client stopped reading; response abandoned");
            // Nothing more is written (it would block too): the connection
            // is dropped as it is.
            session.set_keepalive(None);
        }
        Forwarded::UpstreamBroken
        | Forwarded::UpstreamStalled
        | Forwarded::MissingDone
        | Forwarded::Shutdown => {
            upstream.shutdown().await;
            metrics::stream_abort(end.label());
            if sse {
                let _ = write(session, interrupted_event(end), false, how.client_write).await;
            }
            // Abort: no terminating chunk (h1) / a stream reset (h2), so no
            // client mistakes the truncated body for a whole one.
            session.set_keepalive(None);
            let _ = fast_timeout(how.client_write, session.shutdown()).await;
        }
    }
    (end, tokens)
}

/// What happens to body bytes on their way to the client.
struct Body {
    compressor: Compressor,
    done_watch: Option<DoneWatch>,
    /// The compressor has been told the body ended.
    flushed: bool,
    usage: Option<UsageTap>,
}

impl Body {
    fn pass(&mut self, chunk: Bytes, end: bool) -> Bytes {
        if let Some(w) = &mut self.done_watch {
            w.feed(&chunk);
        }
        if let Some(u) = &mut self.usage {
            u.feed(&chunk);
        }
        self.flushed |= end;
        self.compressor.chunk(chunk, end)
    }

    fn complete(&self) -> bool {
        self.done_watch.as_ref().is_none_or(DoneWatch::seen)
    }
}

/// Watches an event stream for its `data: [DONE]` terminator, which may
/// arrive split across chunks.
#[derive(Default)]
pub struct DoneWatch {
    tail: Vec<u8>,
    seen: bool,
}

const DONE: &[u8] = b"data: [DONE]";

impl DoneWatch {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.seen || chunk.is_empty() {
            return;
        }
        self.tail.extend_from_slice(chunk);
        if self.tail.windows(DONE.len()).any(|w| w == DONE) {
            self.seen = true;
        }
        let keep = DONE.len() - 1;
        if self.tail.len() > keep {
            self.tail.drain(..self.tail.len() - keep);
        }
    }

    pub fn seen(&self) -> bool {
        self.seen
    }
}

/// How a write to the client went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    Ok,
    Gone,
    /// No progress for `client_write`.
    Stalled,
}

impl Wrote {
    fn failed(self) -> Option<Forwarded> {
        match self {
            Wrote::Ok => None,
            Wrote::Gone => Some(Forwarded::ClientGone),
            Wrote::Stalled => Some(Forwarded::ClientStalled),
        }
    }
}

/// Write body bytes within `limit`; an empty non-final write is skipped
/// (for chunked h1 it would end the body).
async fn write(session: &mut ServerSession, bytes: Bytes, end: bool, limit: Duration) -> Wrote {
    if bytes.is_empty() && !end {
        return Wrote::Ok;
    }
    match fast_timeout(limit, session.write_response_body(bytes, end)).await {
        Ok(Ok(())) => Wrote::Ok,
        Ok(Err(_)) => Wrote::Gone,
        Err(_) => Wrote::Stalled,
    }
}

/// Copy the response to the client until it ends one way or another.
/// Resolves when a shutdown's grace period is over (never, if the
/// gateway is not shutting down).
async fn cut_off(mut cut: tokio::sync::watch::Receiver<bool>) {
    if cut.wait_for(|c| *c).await.is_err() {
        // The sender is gone with the gateway: nothing will cut.
        std::future::pending::<()>().await;
    }
}

async fn pump(
    session: &mut ServerSession,
    upstream: &mut HttpSession,
    head: ResponseHeader,
    first: Option<Bytes>,
    done: bool,
    how: &Forwarding,
    body: &mut Body,
) -> Forwarded {
    let limit = how.client_write;
    match fast_timeout(limit, session.write_response_header(Box::new(head))).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Forwarded::ClientGone,
        Err(_) => return Forwarded::ClientStalled,
    }
    if let Some(chunk) = first {
        let out = body.pass(chunk, done);
        if let Some(end) = write(session, out, false, limit).await.failed() {
            return end;
        }
    }
    let mut finished = done;
    let shutdown = cut_off(how.cut.clone());
    tokio::pin!(shutdown);
    while !finished {
        tokio::select! {
            _ = &mut shutdown => return Forwarded::Shutdown,
            read = fast_timeout(how.stream_idle, upstream.read_response_body()) => match read {
                Ok(Ok(Some(chunk))) => {
                    let out = body.pass(chunk, false);
                    if let Some(end) = write(session, out, false, limit).await.failed() {
                        return end;
                    }
                }
                Ok(Ok(None)) => finished = true,
                Ok(Err(e)) => {
                    tracing::debug!(error = %Redacted(&e), "upstream body failed mid-response");
                    return Forwarded::UpstreamBroken;
                }
                Err(_) => return Forwarded::UpstreamStalled,
            },
            // The request body is fully read: anything here means the
            // client closed or reset the connection.
            _ = session.read_body_or_idle(true) => return Forwarded::ClientGone,
        }
    }
    if !body.complete() {
        return Forwarded::MissingDone;
    }
    if body.compressor.is_active() && !body.flushed {
        // The compressed stream's own ending (e.g. the gzip trailer).
        let tail = body.pass(Bytes::new(), true);
        if let Some(end) = write(session, tail, false, limit).await.failed() {
            return end;
        }
    }
    match fast_timeout(limit, session.finish_body()).await {
        Ok(Ok(_)) => Forwarded::Complete,
        Ok(Err(_)) => Forwarded::ClientGone,
        Err(_) => Forwarded::ClientStalled,
    }
}

#[cfg(test)]
mod tests {
    use super::DoneWatch;

    #[test]
    fn done_is_found_across_chunk_boundaries() {
        let mut w = DoneWatch::default();
        w.feed(b"data: {\"x\":1}\n\ndata: [DO");
        assert!(!w.seen());
        w.feed(b"NE]\n\n");
        assert!(w.seen());

        let mut w = DoneWatch::default();
        for b in b"data: {}\n\ndata: [DONE]\n\n" {
            w.feed(&[*b]);
        }
        assert!(w.seen());

        let mut w = DoneWatch::default();
        w.feed(b"data: {\"content\":\"[DONE\"}\n\n");
        assert!(!w.seen());
    }
}
