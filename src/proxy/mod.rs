//! The gateway's request path on Pingora's HTTP server: read and buffer the
//! request, run the attempt loop, forward the answer, log. Decisions are
//! made by `route`, `pool`, `outcome` and `retry`; this module only acts.

mod access_log;
mod attempt;
mod attempt_loop;
mod buffered;
mod caller;
mod compress;
mod connection;
pub(crate) mod edge;
mod fallback;
mod head;
mod headers;
pub mod jobs;
mod request;
pub(crate) mod respond;
mod resume;
mod rewound;
mod upgrade;
mod usage;

use crate::config::Priority;
use crate::drain::Drain;
use crate::error::GatewayError;
use crate::generation::{Current, Generation};
use crate::redact::Redacted;
use access_log::AccessLog;
use async_trait::async_trait;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream,
};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_timeout::fast_timeout::fast_timeout;
use request::ReadError;
use std::sync::Arc;
use std::time::Instant;

pub use connection::Connections;
pub use headers::gateway_owned as gateway_owned_header;

pub struct Gateway {
    /// Routes, pools and budgets in force; each request keeps the one it
    /// started with.
    current: Current,
    /// Graceful shutdown: requests in flight are counted here.
    drain: Arc<Drain>,
    connector: Connector,
    server_options: HttpServerOptions,
    /// Request bytes held across all connections.
    buffers: Arc<buffered::BufferBudget>,
    /// Client keys' limits (kept across reloads: counts belong to names).
    limiter: Arc<crate::ratelimit::Limiter>,
    /// The job store, when `[jobs]` is configured.
    jobs: Option<Arc<crate::jobs::Jobs>>,
}

impl Gateway {
    pub fn new(
        current: Current,
        drain: Arc<Drain>,
        limiter: Arc<crate::ratelimit::Limiter>,
        jobs: Option<Arc<crate::jobs::Jobs>>,
    ) -> Self {
        let config = current.load().config.clone();
        let mut server_options = HttpServerOptions::default();
        server_options.h2c = true;
        // An HTTP/2 connection with nothing in flight is closed like an idle
        // HTTP/1 one.
        server_options.h2_idle_timeout = Some(config.limits.keepalive_idle);
        Gateway {
            buffers: buffered::BufferBudget::new(config.limits.max_buffered_bytes),
            current,
            drain,
            connector: Connector::new(None),
            server_options,
            limiter,
            jobs,
        }
    }

    /// The generation in force now.
    pub(crate) fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Serve one request; returns whether the client connection may be reused.
    async fn handle<'a>(
        &'a self,
        gen: &'a Generation,
        session: &mut ServerSession,
        log: &mut AccessLog<'a>,
    ) -> bool {
        let limits = &gen.config.limits;
        if let Err(e) = request::check_head(session.req_header(), limits) {
            return self.reject(session, log, &e).await;
        }
        if let Err(e) = request::canonicalise_path(session.req_header_mut()) {
            return self.reject(session, log, &e).await;
        }
        let path = session.req_header().uri.path().to_owned();
        if let (Some(jobs), Some(id)) = (&self.jobs, path.strip_prefix(jobs::JOBS_PATH)) {
            // A job is its creator's: the key it was made with, if any.
            let key = match caller::identify(&gen.config, &path, &session.req_header().headers) {
                Ok(key) => key.map(|k| k.name.clone()),
                Err(e) => return self.reject(session, log, &e).await,
            };
            if !session.is_body_empty() {
                session.set_keepalive(None);
            }
            // Boxed: a large future, which every request would carry.
            return Box::pin(self.job_api(session, log, jobs, key.as_deref(), id)).await;
        }
        if !gen.routes.path_matches(&path) {
            let keep = session.is_body_empty();
            let ok = self
                .reply(session, log, &GatewayError::no_route(&path))
                .await;
            return ok && keep;
        }
        // A key, when some route of this path asks for one: checked, and
        // counted against its limits, before the body is read.
        let key = match caller::identify(&gen.config, &path, &session.req_header().headers) {
            Ok(key) => key,
            Err(e) => return self.reject(session, log, &e).await,
        };
        let caller = match key {
            None => None,
            Some(key) => {
                log.key = Some(key.name.clone());
                match caller::admit(&self.limiter, key).await {
                    Ok(c) => Some(c),
                    Err(e) => return self.reject(session, log, &e).await,
                }
            }
        };
        // The route may depend on the body (its model): until it is known,
        // the body may take as long as the most patient candidate allows,
        // and never longer than body_timeout.
        let route_total = gen
            .config
            .routes
            .iter()
            .filter(|r| path.starts_with(&r.path_prefix))
            .map(|r| r.timeouts.total)
            .max()
            .unwrap_or_default();
        let body_deadline = log.start + route_total.min(limits.body_timeout);
        // Held until the request ends: the body lives through every attempt.
        let mut claim = self.buffers.claim();
        if request::expects_continue(session.req_header()) {
            // The request is routable and within limits: invite the body.
            if session.write_continue_response().await.is_err() {
                return false;
            }
        }
        let wire = match fast_timeout(
            body_deadline.saturating_duration_since(Instant::now()),
            request::read_body(session, limits.max_request_body, &mut claim),
        )
        .await
        {
            Ok(Ok(body)) => body,
            Ok(Err(ReadError::Reject(e))) => return self.reject(session, log, &e).await,
            Ok(Err(ReadError::Gone)) => return false,
            Err(_) => {
                let err = GatewayError::new(
                    408,
                    "request_timeout",
                    "the request body did not arrive within limits.body_timeout",
                );
                return self.reject(session, log, &err).await;
            }
        };
        let prepared = match edge::prepare(&gen.config, &gen.routes, session.req_header(), wire) {
            Ok(p) => p,
            Err(e) => return self.reply(session, log, &e).await,
        };
        // The decoded body is counted on top of the wire bytes: a bound that
        // errs high, as the wire copy is freed once decoded.
        if prepared.decoded && !claim.grow(prepared.body.len() as u64) {
            return self
                .reply(session, log, &GatewayError::buffers_full())
                .await;
        }
        let route_idx = prepared.route_idx;
        let body = prepared.body;
        let route = &gen.config.routes[route_idx];
        let mut response_headers = Vec::new();
        if let Some(c) = &caller {
            let model = c
                .key
                .models
                .is_some()
                .then(|| crate::openai::peek_model(&body))
                .flatten();
            if let Err(e) = caller::permitted(c.key, &route.name, model.as_deref()) {
                return self.reply(session, log, &e).await;
            }
            let prompt = caller::prompt_tokens(&body);
            self.limiter.add_tokens(&c.key.name, prompt);
            crate::metrics::key_tokens(&c.key.name, "prompt", prompt);
            if let Some(h) = &c.grant.headers {
                response_headers = h.pairs();
            }
        }
        let pool = &gen.pools[route.pool];
        log.route = Some(&route.name);
        log.pool = Some(&pool.name);
        let deadline = log.start + route.timeouts.total;

        // Only the route's protocols may be switched to; any other Upgrade
        // is dropped here, so the request is served as an ordinary one.
        let upgrade = upgrade::allowed_offer(session.req_header(), &route.upgrades);
        if upgrade.is_none() && session.is_upgrade_req() {
            session
                .req_header_mut()
                .remove_header(&http::header::UPGRADE);
        }
        if caller.is_some() {
            // The client's key is for this gateway: no backend sees it.
            let req = session.req_header_mut();
            req.remove_header(&http::header::AUTHORIZATION);
            req.remove_header("x-api-key");
        }
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_canonical());
        let trusted = client_ip.is_some_and(|ip| {
            gen.config
                .server
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&ip))
        });
        let fwd = headers::Forwarding {
            client_ip,
            proto: if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
                "https"
            } else {
                "http"
            },
            trusted,
            body_len: body.len(),
            upgrade: upgrade.clone(),
            decoded: prepared.decoded,
        };
        let up_req = match headers::upstream_request(session.req_header(), &fwd) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %Redacted(&e), "request head cannot be forwarded");
                let err = GatewayError::bad_request("request headers cannot be forwarded");
                return self.reject(session, log, &err).await;
            }
        };
        // Pools that route by prompt prefix need the prompt's chain.
        let by_prefix = std::iter::once(route.pool)
            .chain(route.fallback.iter().map(|f| f.pool))
            .any(|p| gen.pools[p].routes_by_prefix());
        let prompt = by_prefix.then(|| crate::pool::prefix::PromptChain::of_body(&body));
        let request = attempt_loop::Request {
            route_idx,
            head: &up_req,
            body: &body,
            deadline,
            priority: caller
                .as_ref()
                .and_then(|c| c.key.priority)
                .unwrap_or_else(|| priority(route, session.req_header())),
            upgrade: upgrade.as_ref(),
            response_headers: &response_headers,
            count_usage: caller.is_some(),
            prompt: prompt.as_ref(),
            max_resumes: route
                .resume
                .filter(|_| prepared.resumable)
                .map(|r| r.max_resumes),
            background: false,
            single_choice: prepared.single_choice,
        };
        if let (Some(jobs), Some(_)) = (&self.jobs, route.jobs) {
            // An upgrade is a conversation, never a job.
            if upgrade.is_none() && jobs::prefers_async(&up_req.headers) {
                let key = caller.as_ref().map(|c| c.key.name.as_str());
                return self
                    .submit_job(session, log, jobs, route, key, &up_req, body.clone())
                    .await;
            }
        }
        let reuse = self.attempt_loop(gen, session, log, request).await;
        if let (Some(c), Some(tokens)) = (&caller, log.completion_tokens) {
            self.limiter.add_tokens(&c.key.name, tokens);
            crate::metrics::key_tokens(&c.key.name, "completion", tokens);
        }
        reuse
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
        log.first_byte = Some(Instant::now());
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

/// The route's priority, or the client's own if the route lets it say.
fn priority(route: &crate::config::RouteConfig, req: &pingora_http::RequestHeader) -> Priority {
    route
        .priority_header
        .as_ref()
        .and_then(|h| req.headers.get(h))
        .and_then(|v| v.to_str().ok())
        .and_then(Priority::parse)
        .unwrap_or(route.priority)
}

impl Gateway {
    /// Serve one HTTP/1 request whose head `connection` has read and checked;
    /// returns the connection if it may carry another.
    async fn serve_http1(
        self: &Arc<Self>,
        mut session: Box<ServerSession>,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let started = Instant::now();
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                // Framing or authority Pingora refuses (conflicting lengths,
                // Transfer-Encoding on HTTP/1.0, …): the client hears why.
                tracing::debug!(error = %Redacted(&e), "request head refused");
                let err = GatewayError::bad_request(
                    "malformed request head: conflicting or invalid framing or authority",
                );
                let elapsed = started.elapsed().as_secs_f64();
                crate::metrics::request_done("none", err.status, elapsed, false, Some(elapsed));
                if let ServerSession::H1(h1) = *session {
                    let mut stream = h1.into_inner();
                    let _ = respond::raw_error(&mut stream, &err).await;
                }
                return None;
            }
        }
        self.serve(session, shutdown).await
    }

    async fn serve(
        self: &Arc<Self>,
        mut session: Box<ServerSession>,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let _in_flight = self.drain.begin();
        if *shutdown.borrow() || self.drain.is_draining() {
            // Shutting down: the client reconnects elsewhere for its next one.
            session.set_keepalive(None);
        }
        let gen = self.generation();
        let mut log = AccessLog::new(&session);
        let reusable = self.handle(&gen, &mut session, &mut log).await;
        log.finish();
        if !reusable {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        // Boxed: finishing's future is large and needed only now.
        match Box::pin(session.finish()).await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, settings)),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %Redacted(&e), "finishing the client session failed");
                None
            }
        }
    }
}

/// Pingora calls this for every HTTP/2 stream (`connection` hands HTTP/2
/// connections to Pingora's own service); HTTP/1 goes through
/// `Gateway::serve_http1`.
#[async_trait]
impl HttpServerApp for Gateway {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match request::read_head(&mut session, &self.generation().config.limits).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return None,
        }
        self.serve(Box::new(session), shutdown).await
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.server_options)
    }
}
