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
use crate::openai::stream::{Events, Meaning, Piece, StreamState};
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

/// Answer with a JSON document the gateway wrote (a job's state).
pub async fn json(
    session: &mut ServerSession,
    status: u16,
    value: &serde_json::Value,
    extra: &[(&'static str, String)],
) -> bool {
    let body = Bytes::from(value.to_string());
    let Ok(mut head) = ResponseHeader::build(status, Some(4 + extra.len())) else {
        return false;
    };
    let mut ok = head
        .insert_header("content-type", "application/json")
        .is_ok()
        && head
            .insert_header("content-length", body.len().to_string())
            .is_ok()
        && head.insert_header("cache-control", "no-store").is_ok();
    for (name, value) in extra {
        ok &= head.insert_header(*name, value.as_str()).is_ok();
    }
    if !ok || session.write_response_header(Box::new(head)).await.is_err() {
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
    /// An OpenAI event stream ended without `data: [DONE]` and without a
    /// `finish_reason`: a truncated answer, aborted likewise.
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
    /// Read an event stream's events (OpenAI routes): it is complete with
    /// `data: [DONE]`, or when every choice has its `finish_reason` (then
    /// the missing `[DONE]` is added).
    pub read_events: bool,
    /// An error event from the backend ends the stream as broken instead
    /// of being passed on (it is about to be resumed).
    pub hold_errors: bool,
    /// Only the stream's end matters (it will not be resumed, and has one
    /// choice): events that cannot end it are not parsed.
    pub ends_only: bool,
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
    let mut out = match Forwarder::begin(session, &head, how, count_usage).await {
        Ok(out) => out,
        Err(end) => {
            release(connector, upstream, peer, end).await;
            return (end, None);
        }
    };
    let end = out.pump(session, &mut upstream, first, done).await;
    release(connector, upstream, peer, end).await;
    out.end(session, end).await
}

/// Return a backend connection after its response: pooled when the
/// response was whole, else closed so the backend can stop.
pub async fn release(
    connector: &Connector,
    mut upstream: HttpSession,
    peer: &HttpPeer,
    end: Forwarded,
) {
    if end == Forwarded::Complete {
        if let HttpSession::H1(h1) = &mut upstream {
            // Keep the connection pooled unless the backend asked to close it.
            h1.respect_keepalive();
        }
        // Boxed, both: large futures, needed once per response, that would
        // otherwise be part of every forwarding future while it streams.
        Box::pin(connector.release_http_session(upstream, peer, Some(UPSTREAM_IDLE))).await;
    } else {
        Box::pin(upstream.shutdown()).await;
    }
}

/// One response on its way to the client, whose body may come from more
/// than one backend in turn (a resumed stream).
pub struct Forwarder<'h> {
    how: &'h Forwarding,
    body: Body,
    sse: bool,
    started: Instant,
    _active: Option<metrics::ActiveStream>,
}

impl<'h> Forwarder<'h> {
    /// Write the response head (the backend's `head`, made fit for the
    /// client).
    pub async fn begin(
        session: &mut ServerSession,
        head: &ResponseHeader,
        how: &'h Forwarding,
        count_usage: bool,
    ) -> Result<Self, Forwarded> {
        let sse = is_event_stream(head);
        let mut head = headers::downstream_response(head);
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
        // An encoded upstream body cannot be read.
        let encoded = head.headers.contains_key(http::header::CONTENT_ENCODING);
        let body = Body {
            compressor: Compressor::for_response(
                accept_encoding.as_deref(),
                &mut head,
                sse || no_body,
            ),
            reader: (sse && how.read_events && !encoded).then(|| Reader {
                events: Events::default(),
                state: if how.ends_only {
                    StreamState::ends_only()
                } else {
                    StreamState::default()
                },
                continuing: false,
                hold_errors: how.hold_errors,
            }),
            flushed: false,
            usage: (count_usage && !encoded).then(UsageTap::default),
        };
        let wrote = fast_timeout(
            how.client_write,
            session.write_response_header(Box::new(head)),
        )
        .await;
        let failed = match wrote {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Forwarded::ClientGone),
            Err(_) => Some(Forwarded::ClientStalled),
        };
        if let Some(end) = failed {
            metrics::stream_abort(end.label());
            // A client that took nothing gets nothing more on this connection.
            session.set_keepalive(None);
            return Err(end);
        }
        Ok(Forwarder {
            how,
            body,
            sse,
            started: Instant::now(),
            _active: sse.then(|| metrics::ActiveStream::new("sse")),
        })
    }

    /// What the client has been sent of an OpenAI event stream.
    pub fn stream(&self) -> Option<&StreamState> {
        self.body.reader.as_ref().map(|r| &r.state)
    }

    /// The body that follows comes from a backend continuing the answer
    /// the last one was cut off in.
    pub fn continue_stream(&mut self) {
        if let Some(r) = &mut self.body.reader {
            r.events.clear();
            r.state.begin_continuation();
            r.continuing = true;
        }
    }

    /// Copy one backend's body to the client until it ends one way or
    /// another; `Complete` when it ended cleanly and whole.
    pub async fn pump(
        &mut self,
        session: &mut ServerSession,
        upstream: &mut HttpSession,
        first: Option<Bytes>,
        done: bool,
    ) -> Forwarded {
        pump(session, upstream, first, done, self.how, &mut self.body).await
    }

    /// End the response as `end` says: finished, or (after a failure)
    /// aborted, an event stream with an error event first. Returns how it
    /// ended and the completion tokens counted.
    pub async fn end(
        self,
        session: &mut ServerSession,
        end: Forwarded,
    ) -> (Forwarded, Option<u64>) {
        let how = self.how;
        let tokens = self.body.usage.as_ref().map(UsageTap::tokens);
        if self.sse {
            metrics::stream_done("sse", self.started.elapsed().as_secs_f64());
        }
        match end {
            Forwarded::Complete => {}
            Forwarded::ClientGone => metrics::stream_abort(end.label()),
            Forwarded::ClientStalled => {
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
                metrics::stream_abort(end.label());
                if self.sse {
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
}

/// What happens to body bytes on their way to the client.
struct Body {
    compressor: Compressor,
    reader: Option<Reader>,
    /// The compressor has been told the body ended.
    flushed: bool,
    usage: Option<UsageTap>,
}

/// Reads an OpenAI event stream event by event: whole events only reach
/// the client (a cut never leaves half of one), and a continuation's are
/// rewritten to carry on the original stream.
struct Reader {
    events: Events,
    state: StreamState,
    continuing: bool,
    hold_errors: bool,
}

impl Reader {
    /// The bytes of the whole events in `chunk` (and, at `end`, of what is
    /// left) for the client, and whether the backend reported an error.
    fn read(&mut self, chunk: &[u8], end: bool) -> (Bytes, bool) {
        let mut pieces = Vec::new();
        self.events.push(chunk, &mut pieces);
        if end {
            if let Some(rest) = self.events.rest() {
                pieces.push(Piece::Event(rest));
            }
        }
        let mut out = Vec::new();
        for piece in pieces {
            let event = match piece {
                Piece::Raw(raw) => {
                    self.state.unreadable();
                    out.extend_from_slice(&raw);
                    continue;
                }
                Piece::Event(e) => e,
            };
            let (meaning, bytes) = if self.continuing {
                self.state.continued(&event)
            } else {
                (self.state.read(&event), None)
            };
            match meaning {
                Meaning::Error if self.hold_errors => return (Bytes::from(out), true),
                Meaning::Drop => {}
                _ => out.extend_from_slice(bytes.as_deref().unwrap_or(&event)),
            }
        }
        (Bytes::from(out), false)
    }
}

impl Body {
    /// The bytes for the client; `Err` with the bytes still to write when
    /// the backend reported an error in the stream.
    fn pass(&mut self, chunk: Bytes, end: bool) -> Result<Bytes, Bytes> {
        let (chunk, failed) = match &mut self.reader {
            None => (chunk, false),
            Some(r) => r.read(&chunk, end),
        };
        if let Some(u) = &mut self.usage {
            u.feed(&chunk);
        }
        let end = end && !failed;
        self.flushed |= end;
        let out = self.compressor.chunk(chunk, end);
        match failed {
            false => Ok(out),
            true => Err(out),
        }
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

/// Resolves when a shutdown's grace period is over (never, if the
/// gateway is not shutting down).
async fn cut_off(mut cut: tokio::sync::watch::Receiver<bool>) {
    if cut.wait_for(|c| *c).await.is_err() {
        // The sender is gone with the gateway: nothing will cut.
        std::future::pending::<()>().await;
    }
}

/// Copy one backend's body to the client until it ends one way or another.
async fn pump(
    session: &mut ServerSession,
    upstream: &mut HttpSession,
    first: Option<Bytes>,
    done: bool,
    how: &Forwarding,
    body: &mut Body,
) -> Forwarded {
    let limit = how.client_write;
    if let Some(chunk) = first {
        let (out, failed) = match body.pass(chunk, done) {
            Ok(out) => (out, false),
            Err(out) => (out, true),
        };
        if let Some(end) = write(session, out, false, limit).await.failed() {
            return end;
        }
        if failed {
            return Forwarded::UpstreamBroken;
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
                    let (out, failed) = match body.pass(chunk, false) {
                        Ok(out) => (out, false),
                        Err(out) => (out, true),
                    };
                    if let Some(end) = write(session, out, false, limit).await.failed() {
                        return end;
                    }
                    if failed {
                        tracing::debug!("upstream reported an error mid-stream");
                        return Forwarded::UpstreamBroken;
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
    if !body.flushed {
        // What the reader held back, and the compressed stream's own
        // ending (e.g. the gzip trailer).
        let (tail, failed) = match body.pass(Bytes::new(), true) {
            Ok(out) => (out, false),
            Err(out) => (out, true),
        };
        if let Some(end) = write(session, tail, false, limit).await.failed() {
            return end;
        }
        if failed {
            return Forwarded::UpstreamBroken;
        }
    }
    if let Some(state) = body.reader.as_ref().map(|r| &r.state) {
        if !state.done() {
            if !state.finished() {
                return Forwarded::MissingDone;
            }
            // Every choice has its finish_reason: the answer is whole; the
            // clients that wait for `[DONE]` get it.
            tracing::debug!("event stream ended whole without [DONE]; adding it");
            if let Some(end) = write(session, Bytes::from_static(DONE_EVENT), false, limit)
                .await
                .failed()
            {
                return end;
            }
        }
    }
    match fast_timeout(limit, session.finish_body()).await {
        Ok(Ok(_)) => Forwarded::Complete,
        Ok(Err(_)) => Forwarded::ClientGone,
        Err(_) => Forwarded::ClientStalled,
    }
}

const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";
