//! The attempt loop: pick a server, try it, and decide from what came back
//! whether the client gets this answer or another attempt is made. Nothing
//! reaches the client until the loop stops, so every failure before that is
//! invisible to it. A pool that cannot serve (no usable server, queue full
//! or timed out, retries spent on failures) hands over to the route's next
//! fallback pool.

use super::access_log::AccessLog;
use super::attempt::{self, Answer};
use super::respond::{self, Forwarded};
use super::{fallback, headers, upgrade, Gateway};
use crate::config::{Priority, RouteConfig};
use crate::error::{retry_after_secs, GatewayError};
use crate::generation::Generation;
use crate::metrics;
use crate::outcome::Outcome;
use crate::pool::{Lease, Pool, Shed};
use crate::retry::{self, retry_after, Next, Situation, Stop};
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_http::RequestHeader;
use std::borrow::Cow;
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
}

/// How trying one pool ended.
enum PoolEnd {
    /// The client has its answer (or left): may the connection be reused?
    Done(bool),
    /// This pool cannot serve the request. What the client gets if no
    /// fallback can either.
    CannotServe(Verdict),
}

enum Verdict {
    Error(GatewayError),
    /// A backend's own answer (busy or failed), with the lease it holds.
    Answer(Box<Held>),
}

struct Held {
    answer: Answer,
    outcome: Outcome,
    lease: Lease,
    sent_at: Instant,
}

impl Gateway {
    /// Serve the request from the route's pool, then its fallbacks;
    /// returns whether the client connection may be reused.
    pub(super) async fn attempt_loop<'a>(
        &'a self,
        gen: &'a Generation,
        session: &mut ServerSession,
        log: &mut AccessLog<'a>,
        req: Request<'_>,
    ) -> bool {
        let route = &gen.config.routes[req.route_idx];
        let chain = std::iter::once((route.pool, None))
            .chain(route.fallback.iter().map(|f| (f.pool, f.model.as_deref())));
        let mut verdict = None;
        for (pool_idx, model) in chain {
            let pool = &gen.pools[pool_idx];
            // Built per pool: its own Host and credential, never another's.
            let head = headers::for_pool(req.head, &pool.upstream_headers);
            let (head, body) = match model {
                None => (head, Cow::Borrowed(req.body)),
                Some(model) => match fallback::rewrite_model(&head, req.body, model) {
                    Some((head, body)) => (Cow::Owned(head), Cow::Owned(body)),
                    None => {
                        tracing::debug!(route = %route.name, pool = %pool.name, "body has no JSON model to rewrite; fallback skipped");
                        continue;
                    }
                },
            };
            if verdict.is_some() {
                tracing::debug!(route = %route.name, pool = %pool.name, "falling back");
            }
            log.pool = Some(&pool.name);
            // Whatever the previous pool left is superseded.
            drop(verdict.take());
            match self
                .serve_from(gen, session, log, route, pool, &req, &head, &body)
                .await
            {
                PoolEnd::Done(reuse) => return reuse,
                PoolEnd::CannotServe(v) => verdict = Some((v, pool)),
            }
        }
        match verdict {
            Some((Verdict::Error(err), _)) => self.reply(session, log, &err).await,
            Some((Verdict::Answer(held), pool)) => {
                self.deliver(session, log, route, pool, &req, *held).await
            }
            // Only reachable when no pool could even be tried.
            None => {
                let err = GatewayError::no_capacity(
                    &gen.pools[route.pool].name,
                    std::time::Duration::from_secs(1),
                );
                self.reply(session, log, &err).await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve_from<'a>(
        &'a self,
        gen: &Generation,
        session: &mut ServerSession,
        log: &mut AccessLog<'a>,
        route: &RouteConfig,
        pool: &'a Pool,
        req: &Request<'_>,
        head: &RequestHeader,
        body: &Bytes,
    ) -> PoolEnd {
        let mut tried: Vec<u64> = Vec::new();
        let mut waits = 0u32;
        let mut last: Option<Outcome> = None;
        // A retry that goes "at once" goes to a server not tried yet, even
        // if that means queueing for it.
        let mut untried_only = false;
        loop {
            let now = Instant::now();
            let remaining = req.deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                let err = GatewayError::deadline(&route.name);
                return PoolEnd::Done(self.reply(session, log, &err).await);
            }
            // Requests already waiting go first: join the queue behind them.
            let acquired = if pool.admission.has_waiters() {
                Err(None)
            } else {
                let session = pool.session_of(&req.head.headers);
                pool.acquire_for(now, &tried, untried_only, req.prompt, session)
                    .map_err(Some)
            };
            let mut lease = match acquired {
                Ok(lease) => lease,
                Err(no) if no.is_none_or(|n| n.at_capacity) && pool.admission.enabled() => {
                    let limit = pool.admission.max_wait().min(remaining);
                    // A retry waiting for an untried server must not be fed
                    // the free slot of the server that just failed it.
                    let feed = !untried_only;
                    let queued = self.queue_for(pool, req.priority, limit, feed);
                    match unless_client_leaves(session, queued).await {
                        None => return PoolEnd::Done(false),
                        Some(Ok(lease)) => lease,
                        Some(Err(shed)) => {
                            pool.admission.shed(shed);
                            let after = pool.admission.retry_after(Instant::now());
                            let err = GatewayError::shed(&pool.name, shed.label(), after);
                            return PoolEnd::CannotServe(Verdict::Error(err));
                        }
                    }
                }
                Err(no) => {
                    // Servers that only asked for a pause come back by
                    // themselves: wait for them if the deadline allows.
                    if let Some(cooled) = pool.until_cooled(now).filter(|d| *d < remaining) {
                        if unless_client_leaves(session, tokio::time::sleep(cooled))
                            .await
                            .is_none()
                        {
                            return PoolEnd::Done(false);
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
            let attempt = attempt::run(&self.connector, &server, head, body, &limits);
            // A client that leaves cancels the attempt: its connection is
            // closed (the backend can stop) and the lease released.
            let Some(result) = unless_client_leaves(session, attempt).await else {
                return PoolEnd::Done(false);
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

            let situation = Situation {
                attempts: log.attempts,
                waits,
                untried_ready: pool.has_untried_usable(now, &tried),
                until_ready: pool.until_ready(now),
                remaining: req.deadline.saturating_duration_since(now),
            };
            let mut next = retry::decide(&route.retry, outcome, situation, &mut rand::thread_rng());
            if matches!(next, Next::Now | Next::After(_))
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
                    if unless_client_leaves(session, tokio::time::sleep(wait))
                        .await
                        .is_none()
                    {
                        return PoolEnd::Done(false);
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
                    let err = GatewayError::deadline(&route.name);
                    return PoolEnd::Done(self.reply(session, log, &err).await);
                }
                Ok(answer) => Held {
                    answer,
                    outcome,
                    lease,
                    sent_at,
                },
                Err(_) if out_of_time => {
                    let err = GatewayError::deadline(&route.name);
                    return PoolEnd::Done(self.reply(session, log, &err).await);
                }
                Err(o) => {
                    return PoolEnd::CannotServe(Verdict::Error(failure_error(&pool.name, o)));
                }
            };
            if gave_up && !out_of_time {
                return PoolEnd::CannotServe(Verdict::Answer(Box::new(held)));
            }
            return PoolEnd::Done(self.deliver(session, log, route, pool, req, held).await);
        }
    }

    /// Wait in `pool`'s queue for a slot. With `feed`, first give the
    /// queue any capacity that is free right now (a server may have come
    /// back without freeing a slot).
    async fn queue_for(
        &self,
        pool: &Pool,
        priority: Priority,
        limit: std::time::Duration,
        feed: bool,
    ) -> Result<Lease, Shed> {
        let waiting = pool.admission.join(priority, Instant::now(), limit)?;
        while feed && pool.admission.has_waiters() {
            match pool.acquire(Instant::now(), &[]) {
                // Dropping a lease hands its slot to the head of the queue.
                Ok(lease) => drop(lease),
                Err(_) => break,
            }
        }
        waiting.wait().await
    }

    /// Send a backend's answer to the client.
    async fn deliver<'a>(
        &'a self,
        session: &mut ServerSession,
        log: &mut AccessLog<'a>,
        route: &RouteConfig,
        pool: &Pool,
        req: &Request<'_>,
        held: Held,
    ) -> bool {
        let Held {
            answer,
            outcome,
            lease,
            sent_at,
        } = held;
        let server = lease.server().clone();
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
        log.streamed = answer.head.status == 101 || respond::is_event_stream(&answer.head);
        let end = if answer.head.status == 101 {
            upgrade::splice(session, answer, &route.timeouts).await
        } else {
            let how = respond::Forwarding {
                stream_idle: route.timeouts.stream_idle,
                client_write: route.timeouts.client_write,
                require_done: route.openai,
                cut: self.drain.cut(),
            };
            let (end, tokens) = respond::forward(
                session,
                answer,
                &self.connector,
                &server.peer(),
                &how,
                req.count_usage,
            )
            .await;
            log.completion_tokens = tokens;
            end
        };
        log.forwarded = Some(end);
        drop(lease);
        end == Forwarded::Complete
    }
}

/// Run `work` unless the client closes its connection first (`None`). The
/// request body has been read whole, so any activity on the client side
/// before we answer means it went away.
async fn unless_client_leaves<F: std::future::Future>(
    session: &mut ServerSession,
    work: F,
) -> Option<F::Output> {
    if session.is_upgrade_req() {
        // An upgrading client may already send the new protocol's bytes;
        // they stay unread until the backend accepts the switch.
        return Some(work.await);
    }
    tokio::select! {
        out = work => Some(out),
        _ = session.read_body_or_idle(true) => {
            tracing::debug!("client left before the answer");
            None
        }
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
