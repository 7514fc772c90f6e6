//! Upgraded connections (WebSocket): once the backend has answered `101`,
//! bytes are copied both ways as they come, until either side closes or the
//! connection is idle for `websocket_idle`. Nothing the client sent after
//! its request head reaches the backend before that `101`.

use super::attempt::Answer;
use super::headers;
use super::respond::Forwarded;
use crate::config::Timeouts;
use crate::metrics;
use http::header::{self, HeaderValue};
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::protocols::http::ServerSession;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_timeout::fast_timeout::fast_timeout;
use std::time::Instant;

/// The client's `Upgrade` offer narrowed to the protocols the route allows
/// (`route.upgrades`); `None` when nothing is left, and the request is then
/// served as an ordinary one. Only HTTP/1.1 can upgrade.
pub fn allowed_offer(req: &RequestHeader, allowed: &[String]) -> Option<HeaderValue> {
    if req.version != http::Version::HTTP_11 {
        return None;
    }
    let offered = req.headers.get(header::UPGRADE)?.to_str().ok()?;
    let kept: Vec<&str> = offered
        .split(',')
        .map(str::trim)
        .filter(|p| allowed.iter().any(|a| same_protocol(p, a)))
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// A `101` is only spliced when it switches to a protocol that was offered:
/// anything else would hand the client a raw tunnel nobody agreed to.
pub fn accepts_offer(resp: &ResponseHeader, offered: Option<&HeaderValue>) -> bool {
    let Some(offered) = offered.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(chosen) = resp
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    offered
        .split(',')
        .any(|o| same_protocol(chosen.trim(), o.trim()))
}

/// `websocket` matches `WebSocket` and `websocket/13`.
fn same_protocol(token: &str, name: &str) -> bool {
    let base = |t: &str| {
        t.split('/')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    !token.is_empty() && base(token) == base(name)
}

pub async fn splice(session: &mut ServerSession, answer: Answer, timeouts: &Timeouts) -> Forwarded {
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
    let wrote = fast_timeout(
        timeouts.client_write,
        session.write_response_header(Box::new(head)),
    );
    if !matches!(wrote.await, Ok(Ok(()))) {
        upstream.shutdown().await;
        return Forwarded::ClientGone;
    }
    let end = copy_both_ways(session, &mut upstream, timeouts).await;
    metrics::stream_done("websocket", started.elapsed().as_secs_f64());
    // Whoever ended it, the other side is closed too.
    upstream.shutdown().await;
    session.set_keepalive(None);
    if end != Forwarded::ClientStalled {
        let _ = fast_timeout(timeouts.client_write, session.shutdown()).await;
    }
    if end != Forwarded::Complete {
        metrics::stream_abort(end.label());
    }
    end
}

async fn copy_both_ways(
    session: &mut ServerSession,
    upstream: &mut HttpSession,
    timeouts: &Timeouts,
) -> Forwarded {
    let idle = timeouts.websocket_idle;
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
                    match fast_timeout(timeouts.client_write, session.write_response_body(bytes, false)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Forwarded::ClientGone,
                        Err(_) => return Forwarded::ClientStalled,
                    }
                }
                Ok(Ok(None)) => return Forwarded::Complete,
                Ok(Err(_)) => return Forwarded::UpstreamBroken,
                Err(_) => return Forwarded::UpstreamStalled,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(upgrade: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
        r.insert_header("upgrade", upgrade).unwrap();
        r
    }

    fn resp(upgrade: Option<&str>) -> ResponseHeader {
        let mut r = ResponseHeader::build(101, None).unwrap();
        if let Some(u) = upgrade {
            r.insert_header("upgrade", u).unwrap();
        }
        r
    }

    #[test]
    fn only_allowed_protocols_are_offered() {
        let ws = vec!["websocket".to_owned()];
        assert_eq!(allowed_offer(&req("WebSocket"), &ws).unwrap(), "WebSocket");
        assert_eq!(
            allowed_offer(&req("h2c, websocket"), &ws).unwrap(),
            "websocket"
        );
        for refused in ["h2c", "HTTP/2.0", "tls/1.2", ""] {
            assert!(allowed_offer(&req(refused), &ws).is_none(), "{refused}");
        }
        assert!(allowed_offer(&req("websocket"), &[]).is_none());
        let mut h10 = req("websocket");
        h10.set_version(http::Version::HTTP_10);
        assert!(allowed_offer(&h10, &ws).is_none());
        assert!(allowed_offer(&RequestHeader::build("GET", b"/", None).unwrap(), &ws).is_none());
    }

    #[test]
    fn a_101_must_switch_to_what_was_offered() {
        let offered = HeaderValue::from_static("websocket");
        assert!(accepts_offer(&resp(Some("WebSocket")), Some(&offered)));
        assert!(!accepts_offer(&resp(Some("h2c")), Some(&offered)));
        assert!(!accepts_offer(&resp(None), Some(&offered)));
        // Nothing was offered: no 101 is acceptable.
        assert!(!accepts_offer(&resp(Some("websocket")), None));
    }
}
