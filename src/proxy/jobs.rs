//! Asynchronous jobs on the gateway's side: taking a `Prefer:
//! respond-async` request as a job (202 + `Location`), `GET` and `DELETE
//! /v1/jobs/{id}`, and running jobs through the same attempt loop as
//! interactive requests, with a job as the recipient of the answer.

use super::access_log::AccessLog;
use super::attempt_loop::{Obtained, Recipient, Request, Shape};
use super::Gateway;
use crate::config::{Priority, RouteConfig};
use crate::error::GatewayError;
use crate::generation::Generation;
use crate::jobs::callback;
use crate::jobs::record::{Callback, Job, Policy, Problem, Response, RunEnd};
use crate::jobs::{new_id, now_ms, Jobs, SubmitError};
use crate::metrics;
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_http::RequestHeader;
use pingora_timeout::fast_timeout::fast_timeout;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where jobs are read and cancelled.
pub const JOBS_PATH: &str = "/v1/jobs/";

/// The client asked to be answered later (RFC 7240 `Prefer:
/// respond-async`, among any other preferences).
pub fn prefers_async(headers: &http::HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|p| {
                p.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("respond-async"))
            })
        })
    })
}

/// A job's answer headers worth keeping.
fn kept(name: &str) -> bool {
    matches!(
        name,
        "content-type" | "x-request-id" | "retry-after" | "openai-processing-ms"
    ) || name.starts_with("x-ratelimit-")
}

/// A running job: its attempt stops when the job is cancelled.
struct Aborted(watch::Receiver<bool>);

impl Recipient for Aborted {
    #[allow(clippy::manual_async_fn)] // the trait's future must be Send
    fn gone(&mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            if self.0.wait_for(|a| *a).await.is_err() {
                // Nobody can cancel it any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The job as its owner sees it.
pub fn view(job: &Job, result: Option<&[u8]>) -> serde_json::Value {
    let secs = |ms: Option<u64>| ms.map(|m| m / 1000);
    let mut v = serde_json::json!({
        "id": job.id,
        "object": "job",
        "status": job.state.label(),
        "route": job.route,
        "created_at": job.created_ms / 1000,
        "started_at": secs(job.started_ms),
        "finished_at": secs(job.finished_ms),
        "attempts": job.attempts,
        "started": job.started,
    });
    if let Some(r) = &job.response {
        let headers: serde_json::Map<String, serde_json::Value> = r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
            .collect();
        let body = result.map(|b| {
            serde_json::from_slice::<serde_json::Value>(b).unwrap_or_else(|_| {
                serde_json::Value::from(String::from_utf8_lossy(b).into_owned())
            })
        });
        v["response"] = serde_json::json!({"status": r.status, "headers": headers, "body": body});
    }
    if let Some(e) = &job.error {
        v["error"] = serde_json::json!({"code": e.code, "message": e.message});
    }
    if let Some(c) = &job.callback {
        v["callback"] = serde_json::json!({
            "url": c.url, "attempts": c.attempts, "delivered": c.delivered, "last_error": c.last_error,
        });
    }
    v
}

/// Deliver a finished job's callback, retried with backoff; each attempt
/// is recorded on the job.
async fn deliver_callback(jobs: Arc<Jobs>, client: reqwest::Client, id: String) {
    let Some(secret) = jobs.config.callback_secret.clone() else {
        return;
    };
    let mut wait = callback::FIRST_WAIT;
    loop {
        let Ok(Some((mut job, result))) = jobs.get(&id).await else {
            return;
        };
        let Some(cb) = job.callback.clone().filter(|_| job.callback_due()) else {
            return;
        };
        let body = view(&job, result.as_deref()).to_string().into_bytes();
        let outcome = callback::deliver(&client, &cb.url, &job.id, body, secret.0.as_bytes()).await;
        if let Some(c) = job.callback.as_mut() {
            c.attempts += 1;
            c.delivered = outcome.is_ok();
            c.last_error = outcome.as_ref().err().cloned();
        }
        match &outcome {
            Ok(()) => tracing::debug!(job = %job.id, "callback delivered"),
            Err(why) => {
                tracing::info!(job = %job.id, attempt = cb.attempts + 1, why = %why, "callback not delivered")
            }
        }
        if let Err(e) = jobs.save_callback(&job).await {
            tracing::error!(error = %format!("{e:#}"), "a callback's outcome could not be stored");
        }
        if !job.callback_due() {
            return;
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

/// The route's job policy, by the route's name; a removed route's jobs
/// keep the defaults.
pub fn policy(gen: &Generation, job: &Job) -> Option<(usize, Policy)> {
    let i = gen.config.routes.iter().position(|r| r.name == job.route)?;
    Some((i, gen.config.routes[i].jobs?))
}

impl Gateway {
    /// Take the request as a job: 202 with its `Location`, or why not.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn submit_job(
        &self,
        session: &mut ServerSession,
        log: &mut AccessLog<'_>,
        jobs: &Jobs,
        route: &RouteConfig,
        key: Option<&str>,
        up_req: &RequestHeader,
        body: Bytes,
    ) -> bool {
        // A callback only to the hosts allowed: refused before anything is stored.
        let callback = match up_req.headers.get(callback::HEADER) {
            None => None,
            Some(v) => {
                let url = v.to_str().unwrap_or("").trim();
                if let Err(why) = callback::allowed(url, &jobs.config.callback_hosts) {
                    let err = GatewayError::new(
                        400,
                        "callback_not_allowed",
                        format!("the callback URL cannot be used: {why}"),
                    );
                    return self.reply(session, log, &err).await;
                }
                Some(Callback {
                    url: url.to_owned(),
                    attempts: 0,
                    delivered: false,
                    last_error: None,
                })
            }
        };
        // A job is answered whole: a stream is run as `stream: false`.
        let body = crate::openai::without_stream(&body).map_or(body, Bytes::from);
        let now = now_ms();
        let headers = up_req
            .headers
            .iter()
            .filter(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "content-length" | "transfer-encoding" | "prefer" | "expect" | callback::HEADER
                )
            })
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let path = up_req.uri.path_and_query().map_or("/", |p| p.as_str());
        let job = Job {
            key: key.map(str::to_owned),
            callback,
            ..Job::queued(
                new_id(),
                route.name.clone(),
                up_req.method.as_str(),
                path,
                headers,
                now,
            )
        };
        match jobs.submit(job.clone(), body).await {
            Ok(()) => {
                log.status = 202;
                log.first_byte = Some(Instant::now());
                let location = format!("{JOBS_PATH}{}", job.id);
                let body = serde_json::json!({
                    "id": job.id, "object": "job", "status": "queued",
                    "created_at": job.created_ms / 1000,
                });
                let headers = [
                    ("location", location),
                    ("preference-applied", "respond-async".to_owned()),
                ];
                super::respond::json(session, 202, &body, &headers).await
            }
            Err(SubmitError::Full) => {
                let err = GatewayError::new(
                    503,
                    "jobs_full",
                    format!(
                        "{} jobs are waiting already (jobs.max_queued)",
                        jobs.config.max_queued
                    ),
                )
                .with_retry_after(Duration::from_secs(30));
                self.reply(session, log, &err).await
            }
            Err(SubmitError::Store(e)) => {
                tracing::error!(error = %format!("{e:#}"), "a job could not be stored");
                let err =
                    GatewayError::new(503, "job_store_unavailable", "the job could not be stored")
                        .with_retry_after(Duration::from_secs(5));
                self.reply(session, log, &err).await
            }
        }
    }

    /// `GET` or `DELETE /v1/jobs/{id}`.
    pub(super) async fn job_api(
        &self,
        session: &mut ServerSession,
        log: &mut AccessLog<'_>,
        jobs: &Jobs,
        key: Option<&str>,
        id: &str,
    ) -> bool {
        let method = session.req_header().method.clone();
        if method != http::Method::GET && method != http::Method::DELETE {
            let err = GatewayError::new(
                405,
                "method_not_allowed",
                "jobs are read with GET and cancelled with DELETE",
            )
            .with_headers(vec![("allow", "GET, DELETE".to_owned())]);
            return self.reply(session, log, &err).await;
        }
        let not_found = || GatewayError::new(404, "job_not_found", "no such job");
        // A job made with a key is only that key's; ids of other shapes
        // are never looked up.
        let valid = id.len() == 36
            && id.starts_with("job_")
            && id[4..].bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return self.reply(session, log, &not_found()).await;
        }
        let found = match jobs.get(id).await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the job store could not be read");
                let err = GatewayError::new(
                    503,
                    "job_store_unavailable",
                    "the job store could not be read",
                )
                .with_retry_after(Duration::from_secs(5));
                return self.reply(session, log, &err).await;
            }
        };
        let Some((job, result)) = found.filter(|(j, _)| j.key.as_deref() == key || j.key.is_none())
        else {
            return self.reply(session, log, &not_found()).await;
        };
        let job = if method == http::Method::DELETE {
            match jobs.cancel(&job.id).await {
                Ok(Some(j)) => j,
                Ok(None) => job,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "a job could not be cancelled");
                    let err = GatewayError::new(
                        503,
                        "job_store_unavailable",
                        "the job could not be cancelled",
                    )
                    .with_retry_after(Duration::from_secs(5));
                    return self.reply(session, log, &err).await;
                }
            }
        } else {
            job
        };
        log.status = 200;
        log.first_byte = Some(Instant::now());
        super::respond::json(session, 200, &view(&job, result.as_deref()), &[]).await
    }

    /// Run one job once, through its route as an interactive request would
    /// go, but only with a free slot nobody waits for.
    pub(crate) async fn run_job(
        &self,
        gen: &Generation,
        route_idx: usize,
        job: &Job,
        body: Bytes,
        abort: watch::Receiver<bool>,
        max_result: u64,
    ) -> (RunEnd, Option<Vec<u8>>) {
        let route = &gen.config.routes[route_idx];
        let problem = |code: &str, message: String| Problem {
            code: code.to_owned(),
            message,
        };
        let mut head = match RequestHeader::build(job.method.as_str(), job.path.as_bytes(), None) {
            Ok(h) => h,
            Err(e) => {
                let p = problem(
                    "bad_job",
                    format!("the stored request cannot be rebuilt: {e}"),
                );
                return (
                    RunEnd::Failed {
                        response: None,
                        problem: p,
                    },
                    None,
                );
            }
        };
        for (name, value) in &job.headers {
            let _ = head.append_header(name.clone(), value.as_str());
        }
        let _ = head.insert_header(http::header::CONTENT_LENGTH, body.len().to_string());
        let prompt = crate::pool::prefix::PromptChain::of_body(&body);
        let req = Request {
            route_idx,
            head: &head,
            body: &body,
            deadline: Instant::now() + route.timeouts.total,
            priority: Priority::Low,
            upgrade: None,
            response_headers: &[],
            count_usage: false,
            prompt: Some(&prompt),
            max_resumes: None,
            background: true,
            single_choice: false,
        };
        let uri = head.uri.clone();
        let mut log = AccessLog::of(head.method.clone(), uri);
        let mut to = Aborted(abort);
        match self
            .obtain(gen, &mut to, &mut log, &req, Shape::Original, &[])
            .await
        {
            Obtained::Gone => (RunEnd::Cancelled, None),
            Obtained::Error(err)
                if matches!(err.code, "upstream_unavailable" | "upstream_busy") =>
            {
                (RunEnd::NoCapacity, None)
            }
            Obtained::Error(err) => {
                let p = problem(err.code, err.message.clone());
                (
                    RunEnd::Transient {
                        response: None,
                        problem: p,
                    },
                    None,
                )
            }
            Obtained::Answer(held, _) => {
                let held = *held;
                let mut answer = held.answer;
                let status = answer.head.status.as_u16();
                let response = Response {
                    status,
                    headers: answer
                        .head
                        .headers
                        .iter()
                        .filter(|(n, _)| kept(n.as_str()))
                        .filter_map(|(n, v)| {
                            Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned()))
                        })
                        .collect(),
                };
                let mut bytes = answer.first.take().map(|b| b.to_vec()).unwrap_or_default();
                let mut done = answer.done;
                let read_all = async {
                    while !done {
                        if bytes.len() as u64 > max_result {
                            return Err("result_too_large");
                        }
                        match fast_timeout(
                            route.timeouts.stream_idle,
                            answer.session.read_response_body(),
                        )
                        .await
                        {
                            Ok(Ok(Some(chunk))) => bytes.extend_from_slice(&chunk),
                            Ok(Ok(None)) => done = true,
                            Ok(Err(_)) => return Err("upstream_broken"),
                            Err(_) => return Err("upstream_stalled"),
                        }
                    }
                    if bytes.len() as u64 > max_result {
                        return Err("result_too_large");
                    }
                    Ok(())
                };
                let read = tokio::select! {
                    r = read_all => r,
                    _ = to.gone() => return (RunEnd::Cancelled, None),
                };
                drop(held.lease);
                match read {
                    Err("result_too_large") => {
                        let p = problem(
                            "result_too_large",
                            format!(
                                "the answer is larger than the {max_result} bytes a result may have (jobs.max_result_bytes; amqp.max_reply_bytes)"
                            ),
                        );
                        (
                            RunEnd::Failed {
                                response: Some(response),
                                problem: p,
                            },
                            None,
                        )
                    }
                    Err(code) => {
                        let p = problem(code, "the backend broke off its answer".to_owned());
                        (
                            RunEnd::Transient {
                                response: Some(response),
                                problem: p,
                            },
                            None,
                        )
                    }
                    Ok(()) => match status {
                        200..=299 => (RunEnd::Succeeded(response), Some(bytes)),
                        408 | 429 | 500..=599 => {
                            let p = problem(
                                "upstream_status",
                                format!("the backend answered {status}"),
                            );
                            (
                                RunEnd::Transient {
                                    response: Some(response),
                                    problem: p,
                                },
                                Some(bytes),
                            )
                        }
                        _ => (RunEnd::Refused(response), Some(bytes)),
                    },
                }
            }
        }
    }
}

/// Run jobs for as long as the gateway runs: each one due, while a worker
/// is free and its route's pool has a slot nobody waits for.
pub async fn run_jobs(gateway: Arc<Gateway>, jobs: Arc<Jobs>) {
    let mut next_sweep = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    loop {
        for id in jobs.take_callbacks() {
            tokio::spawn(deliver_callback(jobs.clone(), client.clone(), id));
        }
        let gen = gateway.generation();
        let now = now_ms();
        let default = Policy {
            max_attempts: 1,
            backoff: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            ttl: Duration::from_secs(3600),
            retention: Duration::from_secs(86_400),
        };
        // Jobs never started in their TTL, or whose route took jobs no more.
        for mut job in jobs.overdue(now, |j| policy(&gen, j).map(|(_, p)| p)) {
            let result = if policy(&gen, &job).is_some() {
                "expired"
            } else {
                "failed"
            };
            job.expire(now);
            if result == "failed" {
                job.error = Some(Problem {
                    code: "route_gone".into(),
                    message: format!("route '{}' no longer takes jobs", job.route),
                });
            }
            metrics::job_done(&job.route, result);
            if let Err(e) = jobs.save(job, None).await {
                tracing::error!(error = %format!("{e:#}"), "a job's end could not be stored");
            }
        }
        while jobs.running() < jobs.config.workers as usize {
            let spare = |j: &Job| {
                policy(&gen, j).is_some_and(|(i, _)| {
                    let pool = &gen.pools[gen.config.routes[i].pool];
                    pool.has_free_slot(Instant::now())
                })
            };
            let Some(job) = jobs.take_due(now, spare) else {
                break;
            };
            let Some((route_idx, policy)) = policy(&gen, &job) else {
                continue;
            };
            let abort = jobs.abort_watch(&job.id);
            let body = match jobs.body(&job.id).await {
                Ok(Some(b)) => Bytes::from(b),
                Ok(None) | Err(_) => {
                    let mut job = job;
                    let p = Problem {
                        code: "bad_job".into(),
                        message: "the stored request is missing".into(),
                    };
                    job.finish_run(
                        RunEnd::Failed {
                            response: None,
                            problem: p,
                        },
                        now,
                        &policy,
                    );
                    metrics::job_done(&job.route, "failed");
                    let _ = jobs.save(job, None).await;
                    continue;
                }
            };
            // Its start is on disk before it runs (at-least-once, counted).
            if let Err(e) = jobs.save(job.clone(), None).await {
                tracing::error!(error = %format!("{e:#}"), "a job's start could not be stored");
                // It stays queued and is tried again later.
                jobs.requeue(&job.id, now + 1000);
                continue;
            }
            if job.started == 1 {
                let waited = now.saturating_sub(job.created_ms) as f64 / 1000.0;
                metrics::job_wait(&job.route, waited);
            }
            let (gw, jobs, gen) = (gateway.clone(), jobs.clone(), gen.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let max = jobs.config.max_result_bytes;
                let (end, result) = gw.run_job(&gen, route_idx, &job, body, abort, max).await;
                let mut job = job;
                let no_capacity = end == RunEnd::NoCapacity;
                if !no_capacity {
                    metrics::job_run(&job.route, started.elapsed().as_secs_f64());
                }
                job.finish_run(end, now_ms(), &policy);
                if job.state.finished() {
                    metrics::job_done(&job.route, job.state.label());
                    tracing::info!(job = %job.id, route = %job.route, status = job.state.label(), attempts = job.attempts, "job finished");
                }
                if let Err(e) = jobs.save(job, result).await {
                    tracing::error!(error = %format!("{e:#}"), "a job's result could not be stored");
                }
                jobs.wake.notify_one();
            });
        }
        if Instant::now() >= next_sweep {
            // Often enough for the shortest retention to hold.
            let every = gen
                .config
                .routes
                .iter()
                .filter_map(|r| r.jobs.map(|j| j.retention / 2))
                .min()
                .unwrap_or(Duration::from_secs(30))
                .clamp(Duration::from_millis(100), Duration::from_secs(30));
            next_sweep = Instant::now() + every;
            let g = gen.clone();
            let of = move |j: &Job| Some(policy(&g, j).map_or(default, |(_, p)| p));
            match jobs.sweep(now, of).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "finished jobs past their retention deleted"),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the job store could not be swept")
                }
            }
        }
        tokio::select! {
            _ = jobs.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respond_async_is_found_among_preferences() {
        let mut h = http::HeaderMap::new();
        assert!(!prefers_async(&h));
        h.insert(
            "prefer",
            "return=minimal, Respond-Async; wait=10".parse().unwrap(),
        );
        assert!(prefers_async(&h));
        h.insert("prefer", "respond-asyncx".parse().unwrap());
        assert!(!prefers_async(&h));
        h.insert("prefer", "wait=5".parse().unwrap());
        h.append("prefer", "respond-async".parse().unwrap());
        assert!(prefers_async(&h));
    }

    #[test]
    fn a_stream_is_run_whole() {
        let body = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"n":1}"#;
        let out = crate::openai::without_stream(body).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"model":"m","stream":false,"stream_options":null,"n":1}"#
        );
        assert!(crate::openai::without_stream(br#"{"model":"m"}"#).is_none());
        assert!(crate::openai::without_stream(br#"{"stream":false}"#).is_none());
        assert!(crate::openai::without_stream(b"[]").is_none());
    }
}
