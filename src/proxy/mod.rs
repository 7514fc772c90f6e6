//! The gateway's request path on Pingora's HTTP server: read and buffer the
//! request, run the attempt loop, forward the answer, log. Decisions are
//! made by `route`, `pool`, `outcome` and `retry`; this module only acts.

mod access_log;
mod attempt;
mod headers;
mod request;
mod respond;

use crate::config::{Config, RouteConfig};
use crate::error::GatewayError;
use crate::outcome::Outcome;
use crate::pool::Pool;
use crate::route::RouteTable;
use crate::{metrics, retry};
use access_log::AccessLog;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream,
};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_timeout::fast_timeout::fast_timeout;
use request::ReadError;
use respond::Forwarded;
use std::sync::Arc;
use std::time::Instant;

pub struct Gateway {
    config: Arc<Config>,
    routes: RouteTable,
    pools: Vec<Arc<Pool>>,
    connector: Connector,
    server_options: HttpServerOptions,
}

impl Gateway {
    pub fn new(config: Arc<Config>, pools: Vec<Arc<Pool>>) -> Self {
        let mut server_options = HttpServerOptions::default();
        server_options.h2c = true;
        Gateway {
            routes: RouteTable::new(&config.routes),
            config,
            pools,
            connector: Connector::new(None),
            server_options,
        }
    }

    /// Serve one request; returns whether the client connection may be reused.
    async fn handle<'a>(&'a self, session: &mut ServerSession, log: &mut AccessLog<'a>) -> bool {
        let limits = &self.config.limits;
        if let Err(e) = request::check_head(session.req_header(), limits) {
            return self.reject(session, log, &e).await;
        }
        let path = session.req_header().uri.path().to_owned();
        let Some(route_idx) = self.routes.find(&path) else {
            let keep = session.is_body_empty();
            let ok = self
                .reply(session, log, &GatewayError::no_route(&path))
                .await;
            return ok && keep;
        };
        let route = &self.config.routes[route_idx];
        let pool = &self.pools[route.pool];
        log.route = Some(&route.name);
        log.pool = Some(&pool.name);

        let deadline = log.start + route.timeouts.total;
        if request::expects_continue(session.req_header()) {
            // The request is routable and within limits: invite the body.
            if session.write_continue_response().await.is_err() {
                return false;
            }
        }
        let body = match fast_timeout(
            deadline.saturating_duration_since(Instant::now()),
            request::read_body(session, limits.max_request_body),
        )
        .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(ReadError::Reject(e))) => return self.reject(session, log, &e).await,
            Ok(Err(ReadError::Gone)) => return false,
            Err(_) => {
                return self
                    .reject(session, log, &GatewayError::deadline(&route.name))
                    .await
            }
        };

        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let fwd = headers::Forwarding {
            client_ip,
            proto: "http",
            host: pool.host.as_deref(),
            authorization: pool.authorization.as_deref(),
            body_len: body.len(),
        };
        let up_req = match headers::upstream_request(session.req_header(), &fwd) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "request head cannot be forwarded");
                let err = GatewayError::bad_request("request headers cannot be forwarded");
                return self.reject(session, log, &err).await;
            }
        };
        self.attempt_loop(session, log, route, pool, &up_req, &body, deadline)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt_loop(
        &self,
        session: &mut ServerSession,
        log: &mut AccessLog<'_>,
        route: &RouteConfig,
        pool: &Pool,
        up_req: &pingora_http::RequestHeader,
        body: &Bytes,
        deadline: Instant,
    ) -> bool {
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<Outcome> = None;
        loop {
            let now = Instant::now();
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return self
                    .reply(session, log, &GatewayError::deadline(&route.name))
                    .await;
            }
            let mut lease = match pool.acquire(now, &tried) {
                Ok(l) => l,
                Err(no) => {
                    let err = match last {
                        Some(o) => failure_error(&pool.name, o),
                        None => GatewayError::no_capacity(&pool.name, no.retry_after),
                    };
                    return self.reply(session, log, &err).await;
                }
            };
            let server = lease.server().clone();
            log.attempts += 1;
            log.servers.push(server.clone());
            let limits = attempt::Limits {
                connect: route.timeouts.connect.min(remaining),
                first_byte: route.timeouts.first_byte.min(remaining),
            };
            let sent_at = Instant::now();
            let result = attempt::run(&self.connector, server.peer(), up_req, body, &limits).await;
            let outcome = match &result {
                Ok(answer) => Outcome::Status(answer.head.status.as_u16()),
                Err(o) => *o,
            };
            let now = Instant::now();
            lease.record(outcome, now);
            metrics::attempt(&pool.name, &server.addr, &outcome.label());
            tried.push(lease.index());
            last = Some(outcome);

            let untried_left = pool.has_untried_usable(now, &tried);
            if retry::should_retry(&route.retry, outcome, log.attempts, untried_left) {
                tracing::debug!(route = %route.name, server = %server.addr, outcome = %outcome.label(), "retrying on another server");
                continue;
            }
            let answer = match result {
                Ok(answer) => answer,
                Err(o) => {
                    return self
                        .reply(session, log, &failure_error(&pool.name, o))
                        .await
                }
            };
            metrics::first_byte(
                &pool.name,
                answer
                    .first_byte_at
                    .saturating_duration_since(sent_at)
                    .as_secs_f64(),
            );
            log.status = answer.head.status.as_u16();
            let end = respond::forward(
                session,
                answer,
                &self.connector,
                server.peer(),
                route.timeouts.stream_idle,
            )
            .await;
            log.forwarded = Some(end);
            drop(lease);
            return end == Forwarded::Complete;
        }
    }

    /// Answer with a gateway error; the connection stays usable if the
    /// request was fully read.
    async fn reply(
        &self,
        session: &mut ServerSession,
        log: &mut AccessLog<'_>,
        err: &GatewayError,
    ) -> bool {
        log.status = err.status;
        log.error = Some(err.code);
        respond::gateway_error(session, err).await
    }

    /// Answer with a gateway error and close: the request body was not read.
    async fn reject(
        &self,
        session: &mut ServerSession,
        log: &mut AccessLog<'_>,
        err: &GatewayError,
    ) -> bool {
        session.set_keepalive(None);
        self.reply(session, log, err).await;
        false
    }
}

/// The client's answer when the last attempt failed without a response.
fn failure_error(pool: &str, outcome: Outcome) -> GatewayError {
    match outcome {
        Outcome::Timeout => GatewayError::upstream_timeout(pool),
        _ => GatewayError::upstream_failed(pool),
    }
}

#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match request::read_head(&mut session, &self.config.limits).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return None,
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let mut log = AccessLog::new(&session);
        let reusable = self.handle(&mut session, &mut log).await;
        log.finish();
        if !reusable {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "finishing the client session failed");
                None
            }
        }
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.server_options)
    }
}
