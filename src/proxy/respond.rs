//! Writing to the client: gateway errors in the JSON shape, and a backend's
//! answer forwarded chunk by chunk as it arrives.

use super::attempt::Answer;
use super::headers;
use crate::error::GatewayError;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::http::ServerSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;
use pingora_timeout::fast_timeout::fast_timeout;
use std::time::Duration;

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
    /// The backend failed or went silent for `stream_idle` mid-body; the
    /// client's response was aborted, never terminated cleanly.
    UpstreamBroken,
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
    let head = headers::downstream_response(&head);
    if session.write_response_header(Box::new(head)).await.is_err() {
        upstream.shutdown().await;
        return Forwarded::ClientGone;
    }
    if let Some(chunk) = first {
        if session.write_response_body(chunk, done).await.is_err() {
            upstream.shutdown().await;
            return Forwarded::ClientGone;
        }
    }
    let mut finished = done;
    while !finished {
        match fast_timeout(stream_idle, upstream.read_response_body()).await {
            Ok(Ok(Some(chunk))) => {
                if chunk.is_empty() {
                    continue;
                }
                if session.write_response_body(chunk, false).await.is_err() {
                    upstream.shutdown().await;
                    return Forwarded::ClientGone;
                }
            }
            Ok(Ok(None)) => finished = true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upstream body failed mid-response");
                return Forwarded::UpstreamBroken;
            }
            Err(_) => {
                upstream.shutdown().await;
                return Forwarded::UpstreamStalled;
            }
        }
    }
    if session.finish_body().await.is_err() {
        return Forwarded::ClientGone;
    }
    if let HttpSession::H1(h1) = &mut upstream {
        // Keep the connection pooled unless the backend asked to close it.
        h1.respect_keepalive();
    }
    connector
        .release_http_session(upstream, peer, Some(UPSTREAM_IDLE))
        .await;
    Forwarded::Complete
}
