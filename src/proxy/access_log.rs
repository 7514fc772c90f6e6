//! One access-log line per request, emitted on the `ballast::access` target,
//! and the request metrics recorded at the same moment.

use super::respond::Forwarded;
use crate::metrics;
use crate::pool::Server;
use http::{Method, Uri};
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::Instant;

/// Facts about one request, gathered as it goes; cheap to fill (no string
/// is built unless the line is actually logged).
pub struct AccessLog<'a> {
    pub start: Instant,
    method: Method,
    uri: Uri,
    pub route: Option<&'a str>,
    pub pool: Option<&'a str>,
    /// Every server tried, in order.
    pub servers: Vec<Arc<Server>>,
    pub status: u16,
    pub attempts: u32,
    /// Gateway error code, when the gateway answered itself.
    pub error: Option<&'static str>,
    pub forwarded: Option<Forwarded>,
    /// When the response began to reach the client.
    pub first_byte: Option<Instant>,
    /// An event stream or an upgraded connection: its duration is the
    /// whole stream, so latency objectives read its first byte instead.
    pub streamed: bool,
    /// The client key's name (never the key).
    pub key: Option<String>,
    /// Completion tokens counted in the answer (for a client key).
    pub completion_tokens: Option<u64>,
    /// Where a cut stream was resumed, in order.
    pub resumed: Vec<(&'a str, Arc<Server>)>,
}

impl AccessLog<'_> {
    pub fn new(session: &ServerSession) -> Self {
        let req = session.req_header();
        Self::of(req.method.clone(), req.uri.clone())
    }

    /// Facts about a request no client session carries (a job's run).
    pub fn of(method: Method, uri: Uri) -> Self {
        AccessLog {
            start: Instant::now(),
            method,
            uri,
            route: None,
            pool: None,
            servers: Vec::new(),
            status: 0,
            attempts: 0,
            error: None,
            forwarded: None,
            first_byte: None,
            streamed: false,
            key: None,
            completion_tokens: None,
            resumed: Vec::new(),
        }
    }

    pub fn finish(&self) {
        let duration = self.start.elapsed();
        // Requests no route matched are counted under route="none".
        let route = self.route.unwrap_or("none");
        // Nothing was answered: the client went away first (nginx's 499).
        let status = if self.status == 0 { 499 } else { self.status };
        let first_byte = self
            .first_byte
            .map(|at| at.saturating_duration_since(self.start).as_secs_f64());
        metrics::request_done(
            route,
            status,
            duration.as_secs_f64(),
            self.streamed,
            first_byte,
        );
        tracing::info!(
            target: "ballast::access",
            method = %self.method,
            path = %Bounded(self.uri.path()),
            route,
            key = self.key.as_deref().unwrap_or(""),
            pool = self.pool.unwrap_or(""),
            servers = %Servers(&self.servers),
            status,
            attempts = self.attempts,
            duration_ms = duration.as_secs_f64() * 1000.0,
            error = self.error.unwrap_or(""),
            end = self.forwarded.map_or("", Forwarded::label),
            resumed = %Resumed(&self.resumed),
        );
    }
}

/// A client-supplied string, cut to a sane length for the log.
struct Bounded<'a>(&'a str);

impl std::fmt::Display for Bounded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = self
            .0
            .char_indices()
            .nth(256)
            .map_or(self.0.len(), |(i, _)| i);
        f.write_str(&self.0[..end])
    }
}

/// `pool/server` of each continuation, comma-separated.
struct Resumed<'a>(&'a [(&'a str, Arc<Server>)]);

impl std::fmt::Display for Resumed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (pool, s)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{pool}/{}", s.addr)?;
        }
        Ok(())
    }
}

/// Servers tried, comma-separated.
struct Servers<'a>(&'a [Arc<Server>]);

impl std::fmt::Display for Servers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&s.addr)?;
        }
        Ok(())
    }
}
