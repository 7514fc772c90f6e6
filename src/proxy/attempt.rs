//! One upstream attempt: connect, send the buffered request, and wait for
//! the response head *and* its first body byte. Nothing reaches the client
//! here, so whatever goes wrong the attempt loop can still try elsewhere.

use crate::outcome::Outcome;
use crate::pool::Server;
use crate::redact::Redacted;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_timeout::fast_timeout::fast_timeout;
use std::time::{Duration, Instant};

/// A backend answered: head and first body bytes in hand, body still open
/// on `session` unless `done`. A `101` head means the upgrade was accepted.
pub struct Answer {
    pub session: HttpSession,
    pub head: ResponseHeader,
    /// First non-empty body chunk, if the body has one.
    pub first: Option<Bytes>,
    /// The whole body has been read (empty, or it fitted in `first`).
    pub done: bool,
    /// When the first byte (or the end of an empty body) arrived.
    pub first_byte_at: Instant,
}

pub struct Limits {
    pub connect: Duration,
    /// Head and first body byte must arrive within this, measured from the send.
    pub first_byte: Duration,
}

/// Errors of this host, not of the backend: out of file descriptors,
/// ephemeral ports or buffer memory.
fn is_local_exhaustion(e: &Error) -> bool {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const EADDRNOTAVAIL: i32 = 99;
    const ENOBUFS: i32 = 105;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.root_cause());
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.raw_os_error(),
                Some(ENOMEM | ENFILE | EMFILE | EADDRNOTAVAIL | ENOBUFS)
            );
        }
        cause = c.source();
    }
    false
}

/// Classify a Pingora error from an exchange with a backend.
pub fn classify(e: &Error) -> Outcome {
    if is_local_exhaustion(e) {
        tracing::warn!(error = %Redacted(&e), "the gateway is out of local resources (file descriptors or ports)");
        return Outcome::Local;
    }
    if crate::tls::failure_reason(e).is_some() {
        // Includes a TLS 1.3 server refusing the client's certificate,
        // which only shows on the first read: the session never began.
        return Outcome::ConnectError;
    }
    match e.etype() {
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::BindError
        | ErrorType::SocketError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::HandshakeError
        | ErrorType::InvalidCert => Outcome::ConnectError,
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Outcome::Timeout,
        _ => Outcome::Reset,
    }
}

/// Classify a failed attempt; a TLS failure is logged with its reason
/// (unknown issuer, name mismatch, expired…): never silently downgraded.
fn failed(peer: &HttpPeer, e: &Error) -> Outcome {
    if let Some(reason) = crate::tls::failure_reason(e) {
        tracing::warn!(
            server = %peer._address,
            sni = %peer.sni,
            reason,
            error = %Redacted(e),
            "TLS handshake with the server failed"
        );
    }
    classify(e)
}

pub async fn run(
    connector: &Connector,
    server: &Server,
    req: &RequestHeader,
    body: &Bytes,
    limits: &Limits,
) -> Result<Answer, Outcome> {
    let mut peer = HttpPeer::clone(&server.peer());
    peer.options.connection_timeout = Some(limits.connect);
    let upgrade = req.headers.contains_key(http::header::UPGRADE);
    if upgrade {
        // Upgrades (WebSocket) exist only in HTTP/1.1.
        peer.options.alpn = pingora_core::protocols::ALPN::H1;
    }
    let turn = match upgrade {
        true => None,
        false => server.dial_turn(limits.connect).await,
    };
    let (session, reused) = connect(connector, &peer).await?;
    if !reused && !upgrade {
        server.note_protocol(matches!(session, HttpSession::H2(_)));
    }
    drop(turn);
    match exchange(session, req, body, limits, &peer).await {
        Ok(answer) => Ok(answer),
        // A pooled connection the backend closed while idle says nothing
        // about the backend: dial again once. Only when the request cannot
        // have been acted on: it failed while being sent, or it is
        // idempotent. A POST the backend may have received is not sent
        // twice behind `retry.on`'s back.
        Err((Outcome::Reset, phase))
            if reused && (phase == Phase::Sending || idempotent(&req.method)) =>
        {
            tracing::debug!(server = %peer, "pooled connection was stale; redialing");
            let (session, _) = connect(connector, &peer).await?;
            exchange(session, req, body, limits, &peer)
                .await
                .map_err(|(outcome, _)| outcome)
        }
        Err((outcome, _)) => Err(outcome),
    }
}

/// A connection to `peer`: a pooled one, or a new one dialled (TCP, and TLS
/// for hosted APIs). The dialling future is large (a TLS handshake lives in
/// it) and only needed until connected: it is boxed, so that the request's
/// own future, which lives as long as the answer streams, does not carry
/// its size.
async fn connect(connector: &Connector, peer: &HttpPeer) -> Result<(HttpSession, bool), Outcome> {
    Box::pin(connector.get_http_session(peer))
        .await
        .map_err(|e| failed(peer, &e))
}

/// Where an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Writing the request: the backend has not got all of it.
    Sending,
    /// The request was sent; no response head yet.
    Waiting,
    /// The head came; the first body bytes did not.
    Reading,
}

/// Methods a repeat of which changes nothing (RFC 9110 §9.2.2).
fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Send and wait for head + first byte. On error, also says in which phase
/// (so a stale pooled connection can be told apart).
async fn exchange(
    mut session: HttpSession,
    req: &RequestHeader,
    body: &Bytes,
    limits: &Limits,
    peer: &HttpPeer,
) -> Result<Answer, (Outcome, Phase)> {
    let classify = |e: &Error| failed(peer, e);
    let work = async {
        session
            .write_request_header(Box::new(req.clone()))
            .await
            .map_err(|e| (classify(&e), Phase::Sending))?;
        if !body.is_empty() {
            session
                .write_request_body(body.clone(), true)
                .await
                .map_err(|e| (classify(&e), Phase::Sending))?;
        }
        session
            .finish_request_body()
            .await
            .map_err(|e| (classify(&e), Phase::Sending))?;
        // Informational (1xx) heads are skipped, except a 101 that accepts
        // an upgrade: what follows it is the upgraded protocol, not a body.
        loop {
            session
                .read_response_header()
                .await
                .map_err(|e| (classify(&e), Phase::Waiting))?;
            match session.response_header().map(|h| h.status.as_u16()) {
                Some(101) => return Ok(None),
                Some(100..=199) => continue,
                _ => break,
            }
        }
        let mut first = None;
        while !session.response_done() {
            match session.read_response_body().await {
                Ok(Some(chunk)) if chunk.is_empty() => continue,
                Ok(Some(chunk)) => {
                    first = Some(chunk);
                    break;
                }
                Ok(None) => break,
                Err(e) => return Err((classify(&e), Phase::Reading)),
            }
        }
        Ok(first)
    };
    let first = match fast_timeout(limits.first_byte, work).await {
        Ok(Ok(first)) => first,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err((Outcome::Timeout, Phase::Waiting)),
    };
    let head = match session.response_header() {
        Some(h) => h.clone(),
        None => return Err((Outcome::Reset, Phase::Reading)),
    };
    let done = head.status != 101 && session.response_done();
    Ok(Answer {
        session,
        head,
        first,
        done,
        first_byte_at: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_error::ErrorType::{ConnectError, ConnectRefused, ReadError};

    fn io(code: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(code)
    }

    #[test]
    fn running_out_of_descriptors_is_not_the_backends_fault() {
        let e = Error::because(ConnectError, "opening a socket", io(24));
        assert_eq!(classify(&e), Outcome::Local);
        let e = Error::because(ConnectError, "binding", io(99));
        assert_eq!(classify(&e), Outcome::Local);
    }

    #[test]
    fn backend_failures_are_classified() {
        let e = Error::because(ConnectRefused, "connecting", io(111));
        assert_eq!(classify(&e), Outcome::ConnectError);
        let e = Error::because(ReadError, "reading", io(104));
        assert_eq!(classify(&e), Outcome::Reset);
        assert_eq!(
            classify(&Error::new(ErrorType::ReadTimedout)),
            Outcome::Timeout
        );
    }
}
