//! The attempt loop: pick a server, try it, and decide from what came back
//! whether the client gets this answer or another attempt is made. Nothing
//! reaches the client until the loop stops, so every failure before that is
//! invisible to it.

use super::access_log::AccessLog;
use super::attempt::{self, Answer};
use super::respond::{self, Forwarded};
use super::upgrade;
use super::Gateway;
use crate::error::{retry_after_secs, GatewayError};
use crate::metrics;
use crate::outcome::Outcome;
use crate::pool::Pool;
use crate::retry::{self, retry_after, Next, Situation, Stop};
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_http::RequestHeader;
use std::time::{Instant, SystemTime};

/// The request as every attempt replays it.
pub struct Request<'r> {
    pub route_idx: usize,
    pub head: &'r RequestHeader,
    pub body: &'r Bytes,
    pub deadline: Instant,
}

impl Gateway {
    /// Run attempts until one answer is final; returns whether the client
    /// connection may be reused.
    pub(super) async fn attempt_loop<'a>(
        &'a self,
        session: &mut ServerSession,
        log: &mut AccessLog<'a>,
        req: Request<'_>,
    ) -> bool {
        let route = &self.config.routes[req.route_idx];
        let pool = &self.pools[route.pool];
        let mut tried: Vec<usize> = Vec::new();
        let mut waits = 0u32;
        let mut last: Option<Outcome> = None;
        loop {
            let now = Instant::now();
            let remaining = req.deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                let err = GatewayError::deadline(&route.name);
                return self.reply(session, log, &err).await;
            }
            let mut lease = match pool.acquire(now, &tried) {
                Ok(lease) => lease,
                Err(no) => {
                    // Servers that only asked for a pause come back by
                    // themselves: wait for them if the deadline allows.
                    if let Some(cooled) = pool.until_cooled(now).filter(|d| *d < remaining) {
                        if unless_client_leaves(session, tokio::time::sleep(cooled))
                            .await
                            .is_none()
                        {
                            return false;
                        }
                        continue;
                    }
                    let err = match last {
                        Some(o) if !retry::is_busy(o) => failure_error(&pool.name, o),
                        _ => GatewayError::no_capacity(&pool.name, no.retry_after),
                    };
                    return self.reply(session, log, &err).await;
                }
            };
            if log.attempts == 0 {
                self.budget(req.route_idx).record_first(now);
            }
            let server = lease.server().clone();
            log.attempts += 1;
            log.servers.push(server.clone());
            let limits = attempt::Limits {
                connect: route.timeouts.connect.min(remaining),
                first_byte: route.timeouts.first_byte.min(remaining),
            };
            let sent_at = Instant::now();
            let attempt = attempt::run(&self.connector, server.peer(), req.head, req.body, &limits);
            // A client that leaves cancels the attempt: its connection is
            // closed (the backend can stop) and the lease released.
            let Some(result) = unless_client_leaves(session, attempt).await else {
                return false;
            };
            let now = Instant::now();
            let outcome = match &result {
                Ok(answer) => Outcome::Status(answer.head.status.as_u16()),
                Err(o) => *o,
            };
            lease.record(outcome, now);
            metrics::attempt(&pool.name, &server.addr, &outcome.label());
            let asked = result
                .as_ref()
                .ok()
                .and_then(|a| retry_after::parse(&a.head.headers, SystemTime::now()));
            if let Some(pause) = retry::cooldown(outcome, asked, route.retry.backoff_max) {
                server.cool_until(now + pause);
            }
            tried.push(lease.index());
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
                && !self.budget(req.route_idx).try_retry(now)
            {
                metrics::retry(&route.name, "budget_exhausted");
                next = Next::Stop(Stop::AttemptsExhausted);
            }
            match next {
                Next::Now => {
                    metrics::retry(&route.name, &outcome.label());
                    tracing::debug!(route = %route.name, server = %server.addr, outcome = %outcome.label(), "retrying on another server");
                }
                Next::After(wait) => {
                    metrics::retry(&route.name, &outcome.label());
                    tracing::debug!(route = %route.name, server = %server.addr, outcome = %outcome.label(), ?wait, "retrying after a wait");
                    // Free the server (and the connection) while we wait.
                    drop(result);
                    drop(lease);
                    if unless_client_leaves(session, tokio::time::sleep(wait))
                        .await
                        .is_none()
                    {
                        return false;
                    }
                    waits += 1;
                }
                Next::Stop(stop) => {
                    // Out of time: the client hears 504, unless the answer in
                    // hand is a "busy" it can act on (with an honest Retry-After).
                    let out_of_time = stop == Stop::Deadline || now >= req.deadline;
                    let answer = match result {
                        Ok(answer) if !out_of_time || retry::is_busy(outcome) => answer,
                        Ok(_) => {
                            let err = GatewayError::deadline(&route.name);
                            return self.reply(session, log, &err).await;
                        }
                        Err(o) => {
                            let err = if out_of_time {
                                GatewayError::deadline(&route.name)
                            } else {
                                failure_error(&pool.name, o)
                            };
                            return self.reply(session, log, &err).await;
                        }
                    };
                    metrics::first_byte(
                        &pool.name,
                        answer
                            .first_byte_at
                            .saturating_duration_since(sent_at)
                            .as_secs_f64(),
                    );
                    let answer = honest_busy(answer, outcome, pool, now);
                    log.status = answer.head.status.as_u16();
                    let end = if answer.head.status == 101 {
                        upgrade::splice(session, answer, route.timeouts.websocket_idle).await
                    } else {
                        respond::forward(
                            session,
                            answer,
                            &self.connector,
                            server.peer(),
                            route.timeouts.stream_idle,
                        )
                        .await
                    };
                    log.forwarded = Some(end);
                    drop(lease);
                    return end == Forwarded::Complete;
                }
            }
        }
    }

    fn budget(&self, route_idx: usize) -> std::sync::MutexGuard<'_, retry::RetryBudget> {
        self.budgets[route_idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        _ => GatewayError::upstream_failed(pool),
    }
}
