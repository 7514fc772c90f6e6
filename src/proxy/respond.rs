//! Writing to the client: gateway errors in the JSON shape, and a backend's
//! answer forwarded chunk by chunk as it arrives. Once bytes have reached
//! the client, a failure can no longer be hidden; it must not be disguised
//! either, so the response is aborted (never cleanly terminated) and an
//! event stream first gets an explicit error event.

use super::attempt::Answer;
use super::headers;
use crate::error::GatewayError;
use crate::metrics;
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
    let body = Bytes::from(err.body());
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
    if !ok {
        tracing::error!("setting error response headers failed");
        return false;
    }
    if session.write_response_header(Box::new(head)).await.is_err() {
        return false;
    }
    session.write_response_body(body, true).await.is_ok()
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
}

impl Forwarded {
    pub fn label(self) -> &'static str {
        match self {
            Forwarded::Complete => "complete",
            Forwarded::ClientGone => "client_gone",
            Forwarded::UpstreamBroken => "upstream_broken",
            Forwarded::UpstreamStalled => "upstream_stalled",
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
    let message = match end {
        Forwarded::UpstreamStalled => "the upstream stopped sending mid-stream",
        _ => "the upstream failed mid-stream",
    };
    let event = serde_json::json!({
        "error": {
            "message": message,
            "type": "gateway_error",
            "code": "upstream_stream_interrupted",
        }
    });
    Bytes::from(format!("data: {event}\n\n"))
}

pub async fn forward(
    session: &mut ServerSession,
    answer: Answer,
    connector: &Connector,
    peer: &HttpPeer,
    stream_idle: Duration,
) -> Forwarded {
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
    let started = Instant::now();
    let _active = sse.then(|| metrics::ActiveStream::new("sse"));

    let end = pump(session, &mut upstream, head, first, done, stream_idle).await;
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
        Forwarded::UpstreamBroken | Forwarded::UpstreamStalled => {
            upstream.shutdown().await;
            metrics::stream_abort(end.label());
            if sse {
                let _ = session
                    .write_response_body(interrupted_event(end), false)
                    .await;
            }
            // Abort: no terminating chunk (h1) / a stream reset (h2), so no
            // client mistakes the truncated body for a whole one.
            session.set_keepalive(None);
            session.shutdown().await;
        }
    }
    end
}

/// Copy the response to the client until it ends one way or another.
async fn pump(
    session: &mut ServerSession,
    upstream: &mut HttpSession,
    head: ResponseHeader,
    first: Option<Bytes>,
    done: bool,
    stream_idle: Duration,
) -> Forwarded {
    if session.write_response_header(Box::new(head)).await.is_err() {
        return Forwarded::ClientGone;
    }
    if let Some(chunk) = first {
        if session.write_response_body(chunk, done).await.is_err() {
            return Forwarded::ClientGone;
        }
    }
    let mut finished = done;
    while !finished {
        tokio::select! {
            read = fast_timeout(stream_idle, upstream.read_response_body()) => match read {
                Ok(Ok(Some(chunk))) => {
                    if !chunk.is_empty() && session.write_response_body(chunk, false).await.is_err() {
                        return Forwarded::ClientGone;
                    }
                }
                Ok(Ok(None)) => finished = true,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "upstream body failed mid-response");
                    return Forwarded::UpstreamBroken;
                }
                Err(_) => return Forwarded::UpstreamStalled,
            },
            // The request body is fully read: anything here means the
            // client closed or reset the connection.
            _ = session.read_body_or_idle(true) => return Forwarded::ClientGone,
        }
    }
    if session.finish_body().await.is_err() {
        return Forwarded::ClientGone;
    }
    Forwarded::Complete
}
