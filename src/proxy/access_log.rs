//! One access-log line per request, emitted on the `ballast::access` target,
//! and the request metrics recorded at the same moment.

use super::respond::Forwarded;
use crate::metrics;
use pingora_core::protocols::http::ServerSession;
use std::time::Instant;

pub struct AccessLog {
    pub start: Instant,
    method: String,
    path: String,
    pub route: Option<String>,
    pub pool: Option<String>,
    /// The last server tried.
    pub server: Option<String>,
    pub status: u16,
    pub attempts: u32,
    /// Gateway error code, when the gateway answered itself.
    pub error: Option<&'static str>,
    pub forwarded: Option<Forwarded>,
}

impl AccessLog {
    pub fn new(session: &ServerSession) -> Self {
        let req = session.req_header();
        AccessLog {
            start: Instant::now(),
            method: req.method.to_string(),
            path: req.uri.path().chars().take(256).collect(),
            route: None,
            pool: None,
            server: None,
            status: 0,
            attempts: 0,
            error: None,
            forwarded: None,
        }
    }

    pub fn finish(&self) {
        let duration = self.start.elapsed();
        // Requests no route matched are counted under route="none".
        let route = self.route.as_deref().unwrap_or("none");
        // Nothing was answered: the client went away first (nginx's 499).
        let status = if self.status == 0 { 499 } else { self.status };
        metrics::request_done(route, status, duration.as_secs_f64());
        tracing::info!(
            target: "ballast::access",
            method = %self.method,
            path = %self.path,
            route,
            pool = self.pool.as_deref().unwrap_or(""),
            server = self.server.as_deref().unwrap_or(""),
            status,
            attempts = self.attempts,
            duration_ms = duration.as_secs_f64() * 1000.0,
            error = self.error.unwrap_or(""),
            end = self.forwarded.map_or("", Forwarded::label),
        );
    }
}
