//! The attempt loop: pick a server, try it, and decide from what came back
//! whether this answer is the one or another attempt is made. Nothing
//! reaches the client until the loop stops, so every failure before that is
//! invisible to it. A pool that cannot serve (no usable server, queue full
//! or timed out, retries spent on failures) hands over to the route's next
//! fallback pool; a prompt too long for a model moves, once, to a fallback
//! declared for that.
//!
//! Where the answer goes is not the loop's business: [`Gateway::obtain`]
//! ends with an answer, an error or the news that whoever waited is gone,
//! and a destination delivers it. The client's HTTP session is one
//! ([`Gateway::attempt_loop`]); a cut stream's continuation is another
//! (`resume`).

use super::access_log::AccessLog;
use super::attempt::{self, Answer};
use super::respond::{self, Forwarded};
use super::{fallback, headers, upgrade, Gateway};
use crate::config::{Priority, RouteConfig};
use crate::error::{retry_after_secs, GatewayError};
use crate::generation::Generation;
use crate::metrics;
use crate::openai::continuation;
use crate::outcome::Outcome;
use crate::pool::{Lease, Pool, Server, Shed};
use crate::retry::{self, retry_after, Next, Situation, Stop};
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_http::RequestHeader;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The request as every attempt replays it.
pub struct Request<'r> {
    pub route_idx: usize,
    /// The upstream head before any pool's own headers (`headers::for_pool`).
    pub head: &'r RequestHeader,
    pub body: &'r Bytes,
    pub deadline: Instant,
    pub priority: Priority,
    /// The protocols offered upstream in `Upgrade`, if any.
    pub upgrade: Option<&'r http::HeaderValue>,
    /// Added to the backend's answer (a client key's `x-ratelimit-*`).
    pub response_headers: &'r [(&'static str, String)],
    /// Count the answer's completion tokens (`AccessLog::completion_tokens`).
    pub count_usage: bool,
    /// The prompt's prefix chain, for pools that route by it.
    pub prompt: Option<&'r crate::pool::prefix::PromptChain>,
    /// A chat stream of one choice on a route that resumes cut streams:
    /// at most this many times.
    pub max_resumes: Option<u32>,
    /// A job: it takes a slot only when one is free and no request waits
    /// for it; it never joins a pool's queue.
    pub background: bool,
    /// A validated OpenAI request for one choice: a stream of it that will
    /// not be resumed is read only for its end (`StreamState::ends_only`).
    pub single_choice: bool,
}

/// What the loop asks each pool for.
#[derive(Clone, Copy)]
pub(super) enum Shape<'s> {
    /// The client's request.
    Original,
    /// The continuation of an answer of which `text` (`tokens` tokens) has
    /// been sent; only to pools that declare a continuation dialect.
    Continue { text: &'s str, tokens: u64 },
}

/// Whoever waits for the answer: the loop stops when they leave.
pub(super) trait Recipient {
    /// Resolves when the recipient has gone away.
    fn gone(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

impl Recipient for ServerSession {
    fn gone(&mut self) -> impl std::future::Future<Output = ()> + Send {
        // An upgrading client may already send the new protocol's bytes;
        // they stay unread until the backend accepts the switch. Any other
        // request has been read whole: activity means the client left.
        let upgrading = self.is_upgrade_req();
        async move {
            if upgrading {
                std::future::pending::<()>().await;
            }
            let _ = self.read_body_or_idle(true).await;
            tracing::debug!("client left before the answer");
        }
    }
}

/// How the loop ended.
pub(super) enum Obtained<'g> {
    /// A backend's answer, from this pool.
    Answer(Box<Held>, &'g Pool),
    /// The gateway's own error for the recipient.
    Error(GatewayError),
    /// The recipient went away: nothing to deliver.
    Gone,
}

/// How trying one pool ended.
enum PoolEnd<'g> {
    /// The loop is over.
    Done(Obtained<'g>),
    /// This pool cannot serve the request. What the client gets if no
    /// fallback can either.
    CannotServe(Verdict),
    /// The server said the prompt is longer than its model's context.
    TooLong(Box<Held>),
}

enum Verdict {
    Error(GatewayError),
    /// A backend's own answer (busy or failed), with the lease it holds.
    Answer(Box<Held>),
}

pub(super) struct Held {
    pub answer: Answer,
    outcome: Outcome,
    /// The server's slot, while the answer still uses it.
    pub lease: Option<Lease>,
    pub server: Arc<Server>,
    sent_at: Instant,
}

impl Gateway {
    /// Serve the request from the route's pool, then its fallbacks, to the
    /// client; returns whether the client connection may be reused.
    pub(super) async fn attempt_loop<'a>(
        &'a self,
        gen: &'a Generation,
        session: &mut ServerSession,
        log: &mut AccessLog<'a>,
        req: Request<'_>,
    ) -> bool {
        match self
            .obtain(gen, session, log, &req, Shape::Original, &[])
            .await
        {
            Obtained::Answer(held, pool) => self.deliver(gen, session, log, pool, &req, held).await,
            Obtained::Error(err) => self.reply(session, log, &err).await,
            Obtained::Gone => false,
        }
    }

    /// Run the loop for `req` (as `shape` says) over the route's pool and
    /// fallbacks until there is something for `to`. Servers in `avoid` are
    /// not tried: a pool with no other server for it cannot serve.
    pub(super) async fn obtain<'a, R: Recipient>(
        &'a self,
        gen: &'a Generation,
        to: &mut R,
        log: &mut AccessLog<'a>,
        req: &Request<'_>,
        shape: Shape<'_>,
        avoid: &[u64],
    ) -> Obtained<'a> {
        let route = &gen.config.routes[req.route_idx];
        let chain = |context_length: bool| {
            std::iter::once((route.pool, None))
                .filter(move |_| !context_length)
                .chain(
                    route
                        .fallback
                        .iter()
                        .filter(move |f| match context_length {
                            true => f.on.context_length,
                            false => f.on.unavailable,
                        })
                        .map(|f| (f.pool, f.model.as_deref())),
                )
        };
        // Which chain is being walked (nothing is allocated per request).
        let mut context_length = false;
        // A prompt too long for the model moves once, to the fallbacks
        // declared for it; their answer (or failure) is the last word.
        let may_move =
            matches!(shape, Shape::Original) && route.fallback.iter().any(|f| f.on.context_length);
        let mut too_long: Option<(Box<Held>, &Pool)> = None;
        let mut verdict = None;
        let mut k = 0;
        while let Some((pool_idx, model)) = chain(context_length).nth(k) {
            k += 1;
            let pool = &gen.pools[pool_idx];
            let Some((head, body)) = shaped(route, pool, req, model, shape) else {
                continue;
            };
            if verdict.is_some() {
                tracing::debug!(route = %route.name, pool = %pool.name, "falling back");
            }
            log.pool = Some(&pool.name);
            // Whatever the previous pool left is superseded.
            drop(verdict.take());
            let context_check = may_move && too_long.is_none();
            match self
                .serve_from(
                    gen,
                    to,
                    log,
                    route,
                    pool,
                    req,
                    (&head, &body),
                    avoid,
                    context_check,
                )
                .await
            {
                PoolEnd::Done(obtained) => return obtained,
                PoolEnd::CannotServe(v) => verdict = Some((v, pool)),
                PoolEnd::TooLong(held) => {
                    tracing::debug!(route = %route.name, pool = %pool.name, "prompt too long for the model; moving to a longer context");
                    metrics::context_fallback(&route.name);
                    too_long = Some((held, pool));
                    context_length = true;
                    k = 0;
                }
            }
        }
        if let Some((held, pool)) = too_long {
            // No model with a longer context could take it: the client
            // hears what the first server said.
            log.pool = Some(&pool.name);
            return Obtained::Answer(held, pool);
        }
        match verdict {
            Some((Verdict::Error(err), _)) => Obtained::Error(err),
            Some((Verdict::Answer(held), pool)) => Obtained::Answer(held, pool),
            // Only reachable when no pool could even be tried.
            None => Obtained::Error(GatewayError::no_capacity(
                &gen.pools[route.pool].name,
                std::time::Duration::from_secs(1),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve_from<'a, R: Recipient>(
        &'a self,
        gen: &Generation,
        to: &mut R,
        log: &mut AccessLog<'a>,
        route: &RouteConfig,
        pool: &'a Pool,
        req: &Request<'_>,
        (head, body): (&RequestHeader, &Bytes),
        avoid: &[u64],
        context_check: bool,
    ) -> PoolEnd<'a> {
        let mut tried: Vec<u64> = avoid.to_vec();
        let mut waits = 0u32;
        // Failed probes of ejected servers: retried at no cost to the client.
        let mut free = 0u32;
        let mut last: Option<Outcome> = None;
        // A retry that goes "at once" goes to a server not tried yet, even
        // if that means queueing for it.
        let mut untried_only = !avoid.is_empty();
        loop {
            let now = Instant::now();
            let remaining = req.deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return PoolEnd::Done(Obtained::Error(GatewayError::deadline(&route.name)));
            }
            // Requests already waiting go first: join the queue behind them.
            // A job stands aside for them altogether.
            if req.background && pool.admission.has_waiters() {
                let err = GatewayError::no_capacity(&pool.name, pool.retry_after(now));
                return PoolEnd::CannotServe(Verdict::Error(err));
            }
            let acquired = if pool.admission.has_waiters() {
                Err(None)
            } else {
                let session = pool.session_of(&req.head.headers);
                pool.acquire_for(now, &tried, untried_only, req.prompt, session)
                    .map_err(Some)
            };
            let mut lease = match acquired {
                Ok(lease) => lease,
                Err(no)
                    if no.is_none_or(|n| n.at_capacity)
                        && pool.admission.enabled()
                        && !req.background =>
                {
                    let limit = pool.admission.max_wait().min(remaining);
                    // A retry waiting for an untried server must not be fed
                    // the free slot of the server that just failed it.
                    let feed = !untried_only;
                    let queued = self.queue_for(pool, req.priority, limit, feed);
                    match unless_gone(to, queued).await {
                        None => return PoolEnd::Done(Obtained::Gone),
                        Some(Ok(lease)) => lease,
                        Some(Err(shed)) => {
                            pool.admission.shed(shed);
                            let after = pool.admission.retry_after(Instant::now());
                            let err = GatewayError::shed(&pool.name, shed.label(), after);
                            return PoolEnd::CannotServe(Verdict::Error(err));
                        }
                    }
                }
                Err(_) if req.background => {
                    let err = GatewayError::no_capacity(&pool.name, pool.retry_after(now));
                    return PoolEnd::CannotServe(Verdict::Error(err));
                }
                Err(no) => {
                    // Servers that only asked for a pause come back by
                    // themselves: wait for them if the deadline allows.
                    if let Some(cooled) = pool.until_cooled(now).filter(|d| *d < remaining) {
                        if unless_gone(to, tokio::time::sleep(cooled)).await.is_none() {
                            return PoolEnd::Done(Obtained::Gone);
                        }
                        continue;
                    }
                    let retry_after = no.map_or_else(|| pool.retry_after(now), |n| n.retry_after);
                    let err = match last {
                        Some(o) if !retry::is_busy(o) => failure_error(&pool.name, o),
                        _ => GatewayError::no_capacity(&pool.name, retry_after),
                    };
                    return PoolEnd::CannotServe(Verdict::Error(err));
                }
            };
            if log.attempts == 0 {
                gen.budget(req.route_idx).record_first(now);
            }
            let server = lease.server().clone();
            log.attempts += 1;
            log.servers.push(server.clone());
            let limits = attempt::Limits {
                connect: route.timeouts.connect.min(remaining),
                first_byte: route.timeouts.first_byte.min(remaining),
            };
            let sent_at = Instant::now();
            // Pinned where it is made: the attempt's future is large (a whole
            // upstream session lives in it), and moving it by value into a
            // race copied it several times per request.
            // A client that leaves cancels the attempt: its connection is
            // closed (the backend can stop) and the lease released.
            let result = {
                let attempt =
                    std::pin::pin!(attempt::run(&self.connector, &server, head, body, &limits));
                unless_gone(to, attempt).await
            };
            let Some(mut result) = result else {
                return PoolEnd::Done(Obtained::Gone);
            };
            let now = Instant::now();
            let outcome = match &result {
                Ok(answer) => Outcome::Status(answer.head.status.as_u16()),
                Err(o) => *o,
            };
            lease.record(outcome, now);
            metrics::attempt(&pool.name, &server.addr, &outcome.label());
            let first_byte = result
                .as_ref()
                .ok()
                .map(|a| a.first_byte_at.saturating_duration_since(sent_at));
            server.count_attempt(outcome.is_server_failure(), first_byte);
            let asked = result
                .as_ref()
                .ok()
                .and_then(|a| retry_after::parse(&a.head.headers, SystemTime::now()));
            if let Some(pause) = retry::cooldown(outcome, asked, route.retry.backoff_max) {
                server.cool_until(now + pause);
            }
            tried.push(lease.id());
            last = Some(outcome);
            let long = match &mut result {
                Ok(answer) if context_check && outcome == Outcome::Status(400) => {
                    too_long(answer, route.timeouts.first_byte.min(remaining)).await
                }
                _ => false,
            };
            let result = match (long, result) {
                (true, Ok(answer)) => {
                    // Its slot is free while a longer context is tried.
                    drop(lease);
                    return PoolEnd::TooLong(Box::new(Held {
                        answer,
                        outcome,
                        lease: None,
                        server,
                        sent_at,
                    }));
                }
                (_, result) => result,
            };

            let probe_failed = lease.is_probe() && outcome.is_server_failure();
            let situation = Situation {
                attempts: log.attempts.saturating_sub(free).max(1),
                waits,
                untried_ready: pool.has_untried_usable(now, &tried),
                until_ready: pool.until_ready(now),
                remaining: req.deadline.saturating_duration_since(now),
            };
            let untried_ready = situation.untried_ready;
            let mut next = retry::decide(&route.retry, outcome, situation, &mut rand::thread_rng());
            if probe_failed && untried_ready && now < req.deadline {
                // A probe of a server on its way back failed: the client
                // pays only its latency, whatever `retry.on` says.
                free += 1;
                next = Next::Now;
            } else if matches!(next, Next::Now | Next::After(_))
                && !gen.budget(req.route_idx).try_retry(now)
            {
                metrics::retry(&route.name, "budget_exhausted");
                next = Next::Stop(Stop::AttemptsExhausted);
            }
            let stop = match next {
                Next::Now => {
                    untried_only = true;
                    metrics::retry(&route.name, &outcome.label());
                    tracing::debug!(route = %route.name, server = %server.addr, outcome = %outcome.label(), "retrying on another server");
                    continue;
                }
                Next::After(wait) => {
                    metrics::retry(&route.name, &outcome.label());
                    tracing::debug!(route = %route.name, server = %server.addr, outcome = %outcome.label(), ?wait, "retrying after a wait");
                    // Free the server (and the connection) while we wait.
                    drop(result);
                    drop(lease);
                    untried_only = false;
                    if unless_gone(to, tokio::time::sleep(wait)).await.is_none() {
                        return PoolEnd::Done(Obtained::Gone);
                    }
                    waits += 1;
                    continue;
                }
                Next::Stop(stop) => stop,
            };
            // Out of time: the client hears 504, unless the answer in hand
            // is a "busy" it can act on (with an honest Retry-After).
            let out_of_time = stop == Stop::Deadline || now >= req.deadline;
            // Failures and busy answers this pool could not get past may
            // still be served by a fallback; anything else is the answer.
            let gave_up = matches!(stop, Stop::AttemptsExhausted | Stop::NoServer);
            let held = match result {
                Ok(answer) if out_of_time && !retry::is_busy(outcome) => {
                    drop(answer);
                    return PoolEnd::Done(Obtained::Error(GatewayError::deadline(&route.name)));
                }
                Ok(answer) => Held {
                    answer,
                    outcome,
                    lease: Some(lease),
                    server,
                    sent_at,
                },
                Err(_) if out_of_time => {
                    return PoolEnd::Done(Obtained::Error(GatewayError::deadline(&route.name)));
                }
                Err(o) => {
                    return PoolEnd::CannotServe(Verdict::Error(failure_error(&pool.name, o)));
                }
            };
            if gave_up && !out_of_time {
                return PoolEnd::CannotServe(Verdict::Answer(Box::new(held)));
            }
            return PoolEnd::Done(Obtained::Answer(Box::new(held), pool));
        }
    }

    /// Wait in `pool`'s queue for a slot. With `feed`, first give the
    /// queue any capacity that is free right now (`Pool::feed_queue`: a
    /// server may have come back without freeing a slot, or be waiting for
    /// its probe).
    async fn queue_for(
        &self,
        pool: &Pool,
        priority: Priority,
        limit: std::time::Duration,
        feed: bool,
    ) -> Result<Lease, Shed> {
        let waiting = pool.admission.join(priority, Instant::now(), limit)?;
        if feed {
            pool.feed_queue(Instant::now());
        }
        waiting.wait().await
    }

    /// Send a backend's answer to the client.
    async fn deliver<'a>(
        &'a self,
        gen: &'a Generation,
        session: &mut ServerSession,
        log: &mut AccessLog<'a>,
        pool: &'a Pool,
        req: &Request<'_>,
        held: Box<Held>,
    ) -> bool {
        let route = &gen.config.routes[req.route_idx];
        let Held {
            answer,
            outcome,
            lease,
            server,
            sent_at,
        } = *held;
        metrics::first_byte(
            &pool.name,
            answer
                .first_byte_at
                .saturating_duration_since(sent_at)
                .as_secs_f64(),
        );
        if answer.head.status == 101 && !upgrade::accepts_offer(&answer.head, req.upgrade) {
            tracing::warn!(pool = %pool.name, server = %server.addr, "backend switched to a protocol that was not offered");
            drop(answer);
            let err = GatewayError::bad_upgrade(&pool.name);
            return self.reject(session, log, &err).await;
        }
        let answer = honest_busy(answer, outcome, pool, Instant::now());
        log.status = answer.head.status.as_u16();
        log.first_byte = Some(Instant::now());
        let mut answer = answer;
        for (name, value) in req.response_headers {
            let _ = answer.head.insert_header(*name, value.as_str());
        }
        let sse = respond::is_event_stream(&answer.head);
        log.streamed = answer.head.status == 101 || sse;
        // Upgrades and resumable streams are boxed: their futures are large,
        // and every request's future would otherwise be as large (it lives,
        // and holds memory, for as long as its answer streams).
        let end = if answer.head.status == 101 {
            Box::pin(upgrade::splice(session, answer, &route.timeouts)).await
        } else {
            let resumable = sse && answer.head.status.is_success() && req.max_resumes.is_some();
            let how = respond::Forwarding {
                stream_idle: route.timeouts.stream_idle,
                client_write: route.timeouts.client_write,
                read_events: route.openai,
                ends_only: !resumable && req.single_choice,
                hold_errors: resumable,
                cut: self.drain.cut(),
            };
            let (end, tokens) = if resumable {
                Box::pin(self.forward_resuming(
                    gen,
                    session,
                    log,
                    pool,
                    req,
                    answer,
                    (lease, server),
                    &how,
                ))
                .await
            } else {
                let forwarded = respond::forward(
                    session,
                    answer,
                    &self.connector,
                    &server.peer(),
                    &how,
                    req.count_usage,
                )
                .await;
                record_cut(lease, forwarded.0);
                forwarded
            };
            log.completion_tokens = tokens;
            end
        };
        log.forwarded = Some(end);
        end == Forwarded::Complete
    }
}

/// A backend that broke off a response it had begun is failing: count it
/// towards its ejection (its head was counted as a success).
pub(super) fn record_cut(lease: Option<Lease>, end: Forwarded) {
    let outcome = match end {
        Forwarded::UpstreamStalled => Outcome::Timeout,
        Forwarded::UpstreamBroken | Forwarded::MissingDone => Outcome::Reset,
        _ => return,
    };
    if let Some(mut lease) = lease {
        lease.record_late(outcome, Instant::now());
    }
}

/// The request as `pool` gets it: its own headers, its model (a
/// fallback's), and for a continuation its dialect's form. `None`: this
/// pool cannot take it.
fn shaped<'b>(
    route: &RouteConfig,
    pool: &Pool,
    req: &'b Request<'_>,
    model: Option<&str>,
    shape: Shape<'_>,
) -> Option<(Cow<'b, RequestHeader>, Cow<'b, Bytes>)> {
    // Built per pool: its own Host and credential, never another's.
    let head = headers::for_pool(req.head, &pool.upstream_headers);
    let (head, body) = match model {
        None => (head, Cow::Borrowed(req.body)),
        Some(model) => match fallback::rewrite_model(&head, req.body, model) {
            Some((head, body)) => (Cow::Owned(head), Cow::Owned(body)),
            None => {
                tracing::debug!(route = %route.name, pool = %pool.name, "body has no JSON model to rewrite; fallback skipped");
                return None;
            }
        },
    };
    let Shape::Continue { text, tokens } = shape else {
        return Some((head, body));
    };
    let dialect = pool.config().continuation;
    let (path, body) = continuation::request(
        dialect,
        head.uri.path_and_query().map_or("/", |p| p.as_str()),
        &body,
        text,
        tokens,
    )?;
    let mut head = head.into_owned();
    let uri = path.parse::<http::Uri>().ok()?;
    head.set_uri(uri);
    head.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
        .ok()?;
    Some((Cow::Owned(head), Cow::Owned(Bytes::from(body))))
}

/// Read the rest of a 400 answer (up to 64 KiB, within `limit`) into its
/// first chunk, and say whether it is a context-length refusal.
async fn too_long(answer: &mut Answer, limit: std::time::Duration) -> bool {
    const MAX: usize = 64 * 1024;
    let mut body = answer.first.take().map(|b| b.to_vec()).unwrap_or_default();
    let read = async {
        while !answer.done && body.len() <= MAX {
            match answer.session.read_response_body().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => answer.done = true,
                Err(_) => return false,
            }
        }
        true
    };
    let whole = matches!(
        pingora_timeout::fast_timeout::fast_timeout(limit, read).await,
        Ok(true)
    );
    answer.done |= answer.session.response_done();
    let verdict = whole && crate::openai::context::exceeded(&body);
    answer.first = (!body.is_empty()).then(|| Bytes::from(body));
    verdict
}

/// Run `work` unless the recipient goes away first (`None`).
async fn unless_gone<R: Recipient, F: std::future::Future>(
    to: &mut R,
    work: F,
) -> Option<F::Output> {
    tokio::select! {
        out = work => Some(out),
        _ = to.gone() => None,
    }
}

/// A 429/503 that reaches the client says when capacity really returns:
/// the later of what the backend said and when the pool can next serve.
fn honest_busy(mut answer: Answer, outcome: Outcome, pool: &Pool, now: Instant) -> Answer {
    if !retry::is_busy(outcome) {
        return answer;
    }
    let pool_back = pool.retry_after(now);
    let said = retry_after::parse(&answer.head.headers, SystemTime::now());
    let secs = retry_after_secs(said.map_or(pool_back, |s| s.max(pool_back)));
    answer.head.remove_header("retry-after-ms");
    if answer
        .head
        .insert_header("retry-after", secs.to_string())
        .is_err()
    {
        tracing::debug!("could not set Retry-After on a busy answer");
    }
    answer
}

/// The client's answer when the last attempt failed without a response.
pub(super) fn failure_error(pool: &str, outcome: Outcome) -> GatewayError {
    match outcome {
        Outcome::Timeout => GatewayError::upstream_timeout(pool),
        Outcome::Local => GatewayError::overloaded(),
        _ => GatewayError::upstream_failed(pool),
    }
}
