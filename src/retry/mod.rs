//! Whether, where and when a failed or busy attempt is tried again.
//!
//! Only outcomes the route lists in `retry.on` are retried, only while
//! attempts remain and the deadline allows. A retry goes at once to a server
//! this request has not tried; one that must reuse a tried server (or wait
//! for any) waits out an exponential backoff with jitter, or the server's
//! cooldown, whichever is later. The retry budget (checked by the caller,
//! last) keeps a failing pool from being hammered.

mod backoff;
mod budget;
pub mod retry_after;

pub use backoff::Backoff;
pub use budget::RetryBudget;

use crate::config::RetryConfig;
use crate::outcome::Outcome;
use rand::Rng;
use std::time::Duration;

/// What the attempt loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Retry now, on a server not tried yet.
    Now,
    /// Retry after this wait (backoff or cooldown).
    After(Duration),
    /// Give the client the answer in hand.
    Stop(Stop),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The outcome is final: a success, or not listed in `retry.on`.
    Final,
    /// `retry.attempts` tries were made.
    AttemptsExhausted,
    /// The wait before the next try would run past the route's deadline.
    Deadline,
    /// No server can come back by itself (all down by health checks).
    NoServer,
}

/// Facts about the request and its pool when an attempt has ended.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    /// Attempts made so far (1 after the first).
    pub attempts: u32,
    /// Waits (backoffs) already taken; the next wait is number `waits`.
    pub waits: u32,
    /// A usable server this request has not tried is free now.
    pub untried_ready: bool,
    /// Time until some server can take a request (zero if one can now);
    /// `None` if none will come back by itself.
    pub until_ready: Option<Duration>,
    /// Time left before the route's total deadline.
    pub remaining: Duration,
}

pub fn backoff(cfg: &RetryConfig) -> Backoff {
    Backoff {
        base: cfg.backoff_base,
        max: cfg.backoff_max,
        jitter: cfg.jitter,
    }
}

pub fn decide<R: Rng + ?Sized>(
    cfg: &RetryConfig,
    outcome: Outcome,
    at: Situation,
    rng: &mut R,
) -> Next {
    if !outcome.retry_on().is_some_and(|on| cfg.on.contains(&on)) {
        return Next::Stop(Stop::Final);
    }
    if at.attempts >= cfg.attempts {
        return Next::Stop(Stop::AttemptsExhausted);
    }
    if at.untried_ready {
        return Next::Now;
    }
    let Some(ready) = at.until_ready else {
        return Next::Stop(Stop::NoServer);
    };
    let wait = backoff(cfg).delay(at.waits, rng).max(ready);
    if wait >= at.remaining {
        return Next::Stop(Stop::Deadline);
    }
    Next::After(wait)
}

/// Is this a "come back later" answer, whose `Retry-After` we should honour
/// and pass on honestly?
pub fn is_busy(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Status(429) | Outcome::Status(503))
}

/// How long a server that answered `outcome` should be skipped by every
/// request: what its `Retry-After` says (capped at `cap`), or `default_429`
/// for a 429 that did not say. `None`: no cooldown.
pub fn cooldown(
    outcome: Outcome,
    retry_after: Option<Duration>,
    cap: Duration,
) -> Option<Duration> {
    const DEFAULT_429: Duration = Duration::from_secs(1);
    match (outcome, retry_after) {
        (Outcome::Status(429), None) => Some(DEFAULT_429.min(cap)),
        (Outcome::Status(429 | 503), Some(after)) => Some(after.min(cap)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
