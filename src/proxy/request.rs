//! The client's request once its head is parsed: the checks on the head
//! (method, target length, Host, size, declared length), the canonical
//! path, and the body buffered whole under `max_request_body` (and the
//! shared budget) so that every attempt can replay it. HTTP/1 heads are
//! read by `head` first; `read_head` serves HTTP/2 streams.

use super::buffered::Claim;
use crate::config::Limits;
use crate::error::GatewayError;
use crate::redact::Redacted;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession;
use pingora_http::RequestHeader;
use pingora_timeout::fast_timeout::fast_timeout;
use std::borrow::Cow;

/// What went wrong reading the request.
pub enum ReadError {
    /// The connection closed or timed out; nothing to answer.
    Gone,
    /// Answer with this error, then close the connection.
    Reject(GatewayError),
}

/// Read the request head. `Ok(false)`: the client closed a kept-alive
/// connection cleanly.
pub async fn read_head(session: &mut ServerSession, limits: &Limits) -> Result<bool, ReadError> {
    match fast_timeout(limits.header_timeout, session.read_request()).await {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(e)) => {
            tracing::debug!(error = %Redacted(&e), "reading request head failed");
            Err(ReadError::Gone)
        }
        Err(_) => {
            tracing::debug!("request head did not arrive within header_timeout");
            Err(ReadError::Gone)
        }
    }
}

/// Size of the head as the limit counts it: target plus every header line.
pub fn head_bytes(req: &RequestHeader) -> u64 {
    let headers: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let target = req.uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    (target + headers) as u64
}

pub fn check_head(req: &RequestHeader, limits: &Limits) -> Result<(), GatewayError> {
    // Never forwarded: TRACE would echo credentials back, CONNECT would
    // open a tunnel past every route.
    if matches!(req.method.as_str(), "TRACE" | "TRACK" | "CONNECT") {
        return Err(GatewayError::method_not_allowed(req.method.as_str()));
    }
    let target = req.uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    if target as u64 > limits.max_header_bytes {
        return Err(GatewayError::uri_too_long(limits.max_header_bytes));
    }
    check_host(req)?;
    if head_bytes(req) > limits.max_header_bytes {
        return Err(GatewayError::headers_too_large(limits.max_header_bytes));
    }
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_body) {
        return Err(GatewayError::body_too_large(limits.max_request_body));
    }
    Ok(())
}

/// HTTP/1.1 requires exactly one `Host`, and it must be a host name
/// (RFC 9112 §3.2): anything else is refused, never guessed at.
fn check_host(req: &RequestHeader) -> Result<(), GatewayError> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::bad_request(
            "the request has more than one Host",
        ));
    }
    match host {
        None if req.version == http::Version::HTTP_11 => Err(GatewayError::bad_request(
            "an HTTP/1.1 request needs a Host header",
        )),
        None => Ok(()),
        Some(value) => {
            let valid = value
                .to_str()
                .ok()
                .filter(|h| !h.is_empty() && !h.contains('@'))
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .is_some();
            if valid {
                Ok(())
            } else {
                Err(GatewayError::bad_request(
                    "the Host header is not a valid host",
                ))
            }
        }
    }
}

/// Put the request's path in its canonical form (`crate::path`), in place:
/// from here on every decision, and the backend, see only that form.
pub fn canonicalise_path(req: &mut RequestHeader) -> Result<(), GatewayError> {
    let canonical = match crate::path::canonical(req.uri.path()) {
        Ok(Cow::Borrowed(_)) => return Ok(()),
        Ok(Cow::Owned(p)) => p,
        Err(e) => return Err(GatewayError::bad_path(e)),
    };
    let target = match req.uri.query() {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical,
    };
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = http::uri::PathAndQuery::try_from(target).ok();
    match http::Uri::from_parts(parts) {
        Ok(uri) => {
            req.set_uri(uri);
            Ok(())
        }
        Err(_) => Err(GatewayError::bad_request(
            "the request target cannot be rebuilt",
        )),
    }
}

/// `Expect: 100-continue`: the client waits for a go-ahead before the body.
pub fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Buffer the whole body, bounded by `max_request_body` and, across all
/// connections, by `claim`'s budget (the caller applies the deadline).
pub async fn read_body(
    session: &mut ServerSession,
    limit: u64,
    claim: &mut Claim,
) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if (buf.len() + chunk.len()) as u64 > limit {
                    return Err(ReadError::Reject(GatewayError::body_too_large(limit)));
                }
                if !claim.grow(chunk.len() as u64) {
                    return Err(ReadError::Reject(GatewayError::buffers_full()));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) if is_malformed_body(&e) => {
                tracing::debug!(error = %Redacted(&e), "request body malformed");
                return Err(ReadError::Reject(GatewayError::bad_request(
                    "malformed request body framing (chunked encoding)",
                )));
            }
            Err(e) => {
                tracing::debug!(error = %Redacted(&e), "reading request body failed");
                return Err(ReadError::Gone);
            }
        }
    }
}

/// Bad chunk sizes, extensions or trailers: the client's fault, answered
/// with 400 (a connection that merely closed or timed out is not).
fn is_malformed_body(e: &pingora_error::Error) -> bool {
    matches!(e.etype().as_str(), "InvalidChunk" | "InvalidTrailerEnd")
}
