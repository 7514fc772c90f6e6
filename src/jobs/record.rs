//! One asynchronous job as it is stored, and the decisions about it: what
//! a finished attempt leads to, when it may run again, when it expires and
//! when it is forgotten. Pure: time is passed in (Unix milliseconds).

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    pub fn finished(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Cancelled)
    }

    pub const ALL: [State; 5] = [
        State::Queued,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::Cancelled,
    ];
}

/// What the backend answered (the last attempt's answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    /// The headers that matter to a client (content type, the backend's
    /// request id, rate-limit and retry hints).
    pub headers: Vec<(String, String)>,
}

/// Why a job failed, or the last transient failure of one still queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    /// The route's name (looked up again at each run: reloads apply).
    pub route: String,
    /// The client key that created it, by name: only it may see the job.
    pub key: Option<String>,
    pub method: String,
    /// Path and query as forwarded.
    pub path: String,
    /// The request head's headers as forwarded upstream.
    pub headers: Vec<(String, String)>,
    pub state: State,
    /// Attempts that reached an outcome (backend answers and failures).
    pub attempts: u32,
    /// Times it was started; more than the runs that ended when the
    /// gateway died while it was running (at-least-once).
    pub started: u32,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    /// A queued job does not run before this.
    pub next_ms: u64,
    pub response: Option<Response>,
    pub error: Option<Problem>,
    /// Where the finished job is POSTed, and how that went.
    #[serde(default)]
    pub callback: Option<Callback>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    pub url: String,
    pub attempts: u32,
    pub delivered: bool,
    pub last_error: Option<String>,
}

impl Job {
    /// A new job, queued to run at once.
    pub fn queued(
        id: String,
        route: String,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        now: u64,
    ) -> Job {
        Job {
            id,
            route,
            key: None,
            method: method.to_owned(),
            path: path.to_owned(),
            headers,
            state: State::Queued,
            attempts: 0,
            started: 0,
            created_ms: now,
            started_ms: None,
            finished_ms: None,
            next_ms: now,
            response: None,
            error: None,
            callback: None,
        }
    }

    /// Finished, with a callback still to deliver.
    pub fn callback_due(&self) -> bool {
        self.state.finished()
            && self
                .callback
                .as_ref()
                .is_some_and(|c| !c.delivered && c.attempts < super::callback::ATTEMPTS)
    }
}

/// How a job's route treats it (`[route.jobs]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub max_attempts: u32,
    /// The wait before the second attempt; doubled for each one after,
    /// up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// A job not started within this of its creation expires.
    pub ttl: Duration,
    /// A finished job is kept this long, then deleted.
    pub retention: Duration,
}

/// How one run of a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    /// A 2xx answer.
    Succeeded(Response),
    /// An answer that another attempt would not change (4xx but 408/429).
    Refused(Response),
    /// A failure or a "busy" answer worth another try later.
    Transient {
        response: Option<Response>,
        problem: Problem,
    },
    /// An answer that cannot be kept (larger than `max_result_bytes`,
    /// broken off): the job fails.
    Failed {
        response: Option<Response>,
        problem: Problem,
    },
    /// No slot was free for it (interactive requests first): not an attempt.
    NoCapacity,
    /// Its client cancelled it meanwhile.
    Cancelled,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Job {
    /// The job is taken by a runner now.
    pub fn start(&mut self, now: u64) {
        self.state = State::Running;
        self.started += 1;
        self.started_ms = Some(now);
    }

    /// A job found `running` at start-up: the gateway died under it. It
    /// runs again (its start was counted).
    pub fn recover(&mut self, now: u64) {
        if self.state == State::Running {
            self.state = State::Queued;
            self.next_ms = now;
        }
    }

    /// Apply how a run ended.
    pub fn finish_run(&mut self, end: RunEnd, now: u64, policy: &Policy) {
        match end {
            RunEnd::Succeeded(r) => {
                self.attempts += 1;
                self.done(State::Succeeded, Some(r), None, now);
            }
            RunEnd::Refused(r) => {
                self.attempts += 1;
                let problem = Problem {
                    code: "upstream_refused".into(),
                    message: format!("the backend refused the request with {}", r.status),
                };
                self.done(State::Failed, Some(r), Some(problem), now);
            }
            RunEnd::Transient { response, problem } => {
                self.attempts += 1;
                if self.attempts >= policy.max_attempts {
                    self.done(State::Failed, response, Some(problem), now);
                } else {
                    self.response = response;
                    self.error = Some(problem);
                    self.state = State::Queued;
                    self.next_ms = now.saturating_add(ms(backoff(policy, self.attempts)));
                }
            }
            RunEnd::Failed { response, problem } => {
                self.attempts += 1;
                self.done(State::Failed, response, Some(problem), now);
            }
            RunEnd::NoCapacity => {
                // Not an attempt, nor a start: it waits for spare capacity.
                self.state = State::Queued;
                self.started = self.started.saturating_sub(1);
                self.next_ms = now;
            }
            RunEnd::Cancelled => self.done(State::Cancelled, None, None, now),
        }
    }

    /// A client cancels it: true if it was not finished yet.
    pub fn cancel(&mut self, now: u64) -> bool {
        if self.state.finished() {
            return false;
        }
        self.done(State::Cancelled, None, None, now);
        true
    }

    /// Never started within its TTL: it fails as expired.
    pub fn expired(&self, now: u64, policy: &Policy) -> bool {
        self.state == State::Queued
            && self.started == 0
            && now >= self.created_ms.saturating_add(ms(policy.ttl))
    }

    pub fn expire(&mut self, now: u64) {
        let problem = Problem {
            code: "job_expired".into(),
            message: "the job was not started within its ttl".into(),
        };
        self.done(State::Failed, None, Some(problem), now);
    }

    /// Finished longer ago than the retention: delete it.
    pub fn forgotten(&self, now: u64, policy: &Policy) -> bool {
        self.state.finished()
            && self
                .finished_ms
                .is_some_and(|f| now >= f.saturating_add(ms(policy.retention)))
    }

    fn done(&mut self, state: State, r: Option<Response>, p: Option<Problem>, now: u64) {
        self.state = state;
        if r.is_some() {
            self.response = r;
        }
        self.error = p;
        self.finished_ms = Some(now);
    }
}

/// The wait after `attempts` attempts: `backoff`·2^(attempts-1), capped.
pub fn backoff(policy: &Policy, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    policy
        .backoff
        .saturating_mul(1 << exp)
        .min(policy.backoff_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            max_attempts: 3,
            backoff: Duration::from_secs(2),
            backoff_max: Duration::from_secs(5),
            ttl: Duration::from_secs(60),
            retention: Duration::from_secs(600),
        }
    }

    fn job() -> Job {
        Job {
            id: "job_x".into(),
            route: "r".into(),
            key: None,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            headers: vec![],
            state: State::Queued,
            attempts: 0,
            started: 0,
            created_ms: 1_000,
            started_ms: None,
            finished_ms: None,
            next_ms: 1_000,
            response: None,
            error: None,
            callback: None,
        }
    }

    fn ok(status: u16) -> Response {
        Response {
            status,
            headers: vec![],
        }
    }

    fn transient() -> RunEnd {
        RunEnd::Transient {
            response: Some(ok(503)),
            problem: Problem {
                code: "upstream_busy".into(),
                message: "busy".into(),
            },
        }
    }

    #[test]
    fn transient_failures_back_off_then_fail() {
        let p = policy();
        let mut j = job();
        j.start(2_000);
        j.finish_run(transient(), 3_000, &p);
        assert_eq!((j.state, j.attempts, j.next_ms), (State::Queued, 1, 5_000));
        j.start(5_000);
        j.finish_run(transient(), 6_000, &p);
        assert_eq!(j.next_ms, 10_000, "doubled: 4 s");
        j.start(10_000);
        j.finish_run(transient(), 11_000, &p);
        assert_eq!(j.state, State::Failed);
        assert_eq!(j.attempts, 3);
        assert_eq!(j.started, 3);
        assert_eq!(j.error.as_ref().unwrap().code, "upstream_busy");
        assert_eq!(j.response, Some(ok(503)));
        assert_eq!(backoff(&p, 3), Duration::from_secs(5), "capped");
    }

    #[test]
    fn a_refusal_fails_at_once_and_success_finishes() {
        let p = policy();
        let mut j = job();
        j.start(2_000);
        j.finish_run(RunEnd::Refused(ok(400)), 2_500, &p);
        assert_eq!((j.state, j.attempts), (State::Failed, 1));
        assert_eq!(j.error.as_ref().unwrap().code, "upstream_refused");

        let mut j = job();
        j.start(2_000);
        j.finish_run(RunEnd::Succeeded(ok(200)), 2_500, &p);
        assert_eq!(j.state, State::Succeeded);
        assert_eq!(j.finished_ms, Some(2_500));
        assert!(!j.cancel(3_000), "a finished job stays as it is");
    }

    #[test]
    fn waiting_for_capacity_is_not_an_attempt() {
        let mut j = job();
        j.start(2_000);
        j.finish_run(RunEnd::NoCapacity, 2_100, &policy());
        assert_eq!((j.state, j.attempts, j.next_ms), (State::Queued, 0, 2_100));
        assert_eq!(j.started, 0);
    }

    #[test]
    fn a_job_running_when_the_gateway_died_runs_again() {
        let mut j = job();
        j.start(2_000);
        j.recover(9_000);
        assert_eq!((j.state, j.started, j.next_ms), (State::Queued, 1, 9_000));
        let mut done = job();
        done.finish_run(RunEnd::Succeeded(ok(200)), 3_000, &policy());
        done.recover(9_000);
        assert_eq!(done.state, State::Succeeded);
    }

    #[test]
    fn ttl_and_retention() {
        let p = policy();
        let j = job();
        assert!(!j.expired(60_999, &p));
        assert!(j.expired(61_000, &p));
        let mut started = job();
        started.start(2_000);
        started.finish_run(transient(), 2_000, &p);
        assert!(!started.expired(70_000, &p), "it had begun");
        let mut f = job();
        f.cancel(5_000);
        assert!(!f.forgotten(604_999, &p));
        assert!(f.forgotten(605_000, &p));
        assert!(!job().forgotten(u64::MAX, &p), "never while queued");
    }
}
