//! Upgraded connections (WebSocket): once the backend has answered `101`,
//! bytes are copied both ways as they come, until either side closes or the
//! connection is idle for `websocket_idle`. Nothing the client sent after
//! its request head reaches the backend before that `101`.

use super::attempt::Answer;
use super::headers;
use super::respond::Forwarded;
use crate::metrics;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::http::ServerSession;
use pingora_timeout::fast_timeout::fast_timeout;
use std::time::{Duration, Instant};

pub async fn splice(session: &mut ServerSession, answer: Answer, idle: Duration) -> Forwarded {
    let Answer {
        session: mut upstream,
        head,
        ..
    } = answer;
    if let HttpSession::H1(h1) = &mut upstream {
        // From here on the request body is the client's side of the new protocol.
        h1.maybe_upgrade_body_writer();
    }
    let head = headers::downstream_response(&head);
    let started = Instant::now();
    let _active = metrics::ActiveStream::new("websocket");
    if session.write_response_header(Box::new(head)).await.is_err() {
        upstream.shutdown().await;
        return Forwarded::ClientGone;
    }
    let end = copy_both_ways(session, &mut upstream, idle).await;
    metrics::stream_done("websocket", started.elapsed().as_secs_f64());
    // Whoever ended it, the other side is closed too.
    upstream.shutdown().await;
    session.set_keepalive(None);
    session.shutdown().await;
    if end != Forwarded::Complete {
        metrics::stream_abort(end.label());
    }
    end
}

async fn copy_both_ways(
    session: &mut ServerSession,
    upstream: &mut HttpSession,
    idle: Duration,
) -> Forwarded {
    loop {
        tokio::select! {
            from_client = fast_timeout(idle, session.read_request_body()) => match from_client {
                Ok(Ok(Some(bytes))) => {
                    if upstream.write_request_body(bytes, false).await.is_err() {
                        return Forwarded::UpstreamBroken;
                    }
                }
                // The client closed its side: a normal end.
                Ok(Ok(None)) => return Forwarded::Complete,
                Ok(Err(_)) => return Forwarded::ClientGone,
                Err(_) => return Forwarded::UpstreamStalled,
            },
            from_backend = fast_timeout(idle, upstream.read_response_body()) => match from_backend {
                Ok(Ok(Some(bytes))) => {
                    if session.write_response_body(bytes, false).await.is_err() {
                        return Forwarded::ClientGone;
                    }
                }
                Ok(Ok(None)) => return Forwarded::Complete,
                Ok(Err(_)) => return Forwarded::UpstreamBroken,
                Err(_) => return Forwarded::UpstreamStalled,
            },
        }
    }
}
