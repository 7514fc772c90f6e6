//! Asynchronous jobs: requests a client asked to be answered later
//! (`Prefer: respond-async` on a route with `[route.jobs]`), kept durably
//! in `[jobs] dir`, run with capacity interactive traffic is not using, and
//! fetched with `GET /v1/jobs/{id}`.
//!
//! `Jobs` owns the store and an in-memory mirror of the jobs not finished
//! (what the runner schedules from); `record` decides, `store` persists,
//! the gateway runs them (`proxy::jobs`).

pub mod callback;
pub mod record;
pub mod store;

use crate::config::JobsSection;
use crate::metrics;
use anyhow::{Context, Result};
use record::{Job, State};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use store::Store;
use tokio::sync::{watch, Notify};

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A new job id: 128 random bits (unguessable: it is the job's only
/// secret when no client key guards it).
pub fn new_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    // From the OS, as client keys are.
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("job_{}", crate::keys::to_hex(&bytes))
}

pub struct Jobs {
    pub config: JobsSection,
    store: Arc<Store>,
    /// Jobs not finished, by id (what the runner schedules from).
    live: Mutex<HashMap<String, Job>>,
    /// Cancellation of running jobs, by id.
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Something changed: a job was added or capacity may be free.
    pub wake: Notify,
    /// Finished jobs whose callback is to be delivered.
    callbacks: Mutex<Vec<String>>,
}

#[derive(Debug)]
pub enum SubmitError {
    /// `max_queued` jobs are waiting or running.
    Full,
    Store(anyhow::Error),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run blocking store work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("the job store task failed")?
}

impl Jobs {
    /// Open the store; jobs that were running when the gateway stopped are
    /// queued again (their start stays counted).
    pub fn open(config: &JobsSection) -> Result<Arc<Jobs>> {
        let store = Arc::new(Store::open(&config.dir)?);
        let now = now_ms();
        let mut live = HashMap::new();
        let mut callbacks = Vec::new();
        for mut job in store.all()? {
            if job.callback_due() {
                callbacks.push(job.id.clone());
            }
            if job.state == State::Running {
                job.recover(now);
                store.update(&job, None)?;
                tracing::info!(job = %job.id, started = job.started, "a job that was running when the gateway stopped is queued again");
            }
            if !job.state.finished() {
                live.insert(job.id.clone(), job);
            }
        }
        let jobs = Arc::new(Jobs {
            config: config.clone(),
            store,
            live: Mutex::new(live),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            callbacks: Mutex::new(callbacks),
        });
        jobs.count();
        Ok(jobs)
    }

    /// `ballast_jobs{state}` for the jobs not finished.
    fn count(&self) {
        let live = lock(&self.live);
        for state in [State::Queued, State::Running] {
            let n = live.values().filter(|j| j.state == state).count();
            metrics::jobs_in_state(state.label(), n);
        }
    }

    /// Store a new job durably; it is on disk when this returns.
    pub async fn submit(&self, job: Job, body: bytes::Bytes) -> Result<(), SubmitError> {
        {
            let live = lock(&self.live);
            if live.len() as u64 >= self.config.max_queued {
                return Err(SubmitError::Full);
            }
        }
        let store = self.store.clone();
        let stored = job.clone();
        blocking(move || store.insert(&stored, &body))
            .await
            .map_err(SubmitError::Store)?;
        lock(&self.live).insert(job.id.clone(), job);
        self.count();
        self.wake.notify_one();
        Ok(())
    }

    /// A job and, once it has one, its answer's body.
    pub async fn get(&self, id: &str) -> Result<Option<(Job, Option<Vec<u8>>)>> {
        if let Some(job) = lock(&self.live).get(id).cloned() {
            return Ok(Some((job, None)));
        }
        let store = self.store.clone();
        let id = id.to_owned();
        blocking(move || {
            let Some(job) = store.get(&id)? else {
                return Ok(None);
            };
            let result = store.result(&id)?;
            Ok(Some((job, result)))
        })
        .await
    }

    /// Cancel a queued job, or abort a running one (its attempt is
    /// abandoned and it ends `cancelled`). The job as it now stands.
    pub async fn cancel(&self, id: &str) -> Result<Option<Job>> {
        let queued = {
            let mut live = lock(&self.live);
            match live.get(id).map(|j| j.state) {
                Some(State::Queued) => live.remove(id),
                _ => None,
            }
        };
        if let Some(mut job) = queued {
            job.cancel(now_ms());
            let store = self.store.clone();
            let stored = job.clone();
            blocking(move || store.update(&stored, None)).await?;
            metrics::job_done(&job.route, "cancelled");
            if job.callback_due() {
                lock(&self.callbacks).push(job.id.clone());
            }
            self.count();
            return Ok(Some(job));
        }
        let aborted = lock(&self.running)
            .get(id)
            .map(|abort| abort.send(true).is_ok());
        if aborted == Some(true) {
            // Its attempt stops at once; the runner then stores the end.
            let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::time::Instant::now() < until {
                match self.get(id).await? {
                    Some((job, _)) if job.state.finished() => return Ok(Some(job)),
                    _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
        }
        Ok(self.get(id).await?.map(|(job, _)| job))
    }

    /// The next job due to run now (the oldest first), marked running.
    pub fn take_due(&self, now: u64, can_run: impl Fn(&Job) -> bool) -> Option<Job> {
        let mut live = lock(&self.live);
        let id = live
            .values()
            .filter(|j| j.state == State::Queued && j.next_ms <= now && can_run(j))
            .min_by_key(|j| (j.next_ms, j.created_ms))
            .map(|j| j.id.clone())?;
        let job = live.get_mut(&id)?;
        job.start(now);
        Some(job.clone())
    }

    /// The jobs queued and due now whose routes are gone, or whose TTL
    /// passed: handed back to be ended.
    pub fn overdue(
        &self,
        now: u64,
        policy_of: impl Fn(&Job) -> Option<record::Policy>,
    ) -> Vec<Job> {
        let live = lock(&self.live);
        live.values()
            .filter(|j| match policy_of(j) {
                Some(p) => j.expired(now, &p),
                None => j.state == State::Queued,
            })
            .cloned()
            .collect()
    }

    /// Put back a job taken but not started (its start could not be
    /// stored): it is due again at `at`.
    pub fn requeue(&self, id: &str, at: u64) {
        lock(&self.running).remove(id);
        if let Some(job) = lock(&self.live).get_mut(id) {
            job.state = State::Queued;
            job.started = job.started.saturating_sub(1);
            job.next_ms = at;
        }
        self.count();
    }

    /// A watch a running job's attempt stops on (its cancellation).
    pub fn abort_watch(&self, id: &str) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        lock(&self.running).insert(id.to_owned(), tx);
        rx
    }

    /// Write a job's new state (and its answer's body), durably; finished
    /// jobs leave the schedule.
    pub async fn save(&self, job: Job, result: Option<Vec<u8>>) -> Result<()> {
        let store = self.store.clone();
        let stored = job.clone();
        blocking(move || store.update(&stored, result.as_deref())).await?;
        if job.state != State::Running {
            lock(&self.running).remove(&job.id);
        }
        // Its first delivery (later ones are the delivery task's own).
        if job.callback_due() && job.callback.as_ref().is_some_and(|c| c.attempts == 0) {
            lock(&self.callbacks).push(job.id.clone());
        }
        {
            let mut live = lock(&self.live);
            if job.state.finished() {
                live.remove(&job.id);
            } else {
                live.insert(job.id.clone(), job);
            }
        }
        self.count();
        Ok(())
    }

    /// Finished jobs whose callbacks are to be delivered now.
    pub fn take_callbacks(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.callbacks))
    }

    /// Record how a callback went (the job is finished).
    pub async fn save_callback(&self, job: &Job) -> Result<()> {
        let store = self.store.clone();
        let stored = job.clone();
        blocking(move || store.update(&stored, None)).await
    }

    /// The request body of a job that is to run.
    pub async fn body(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let store = self.store.clone();
        let id = id.to_owned();
        blocking(move || store.body(&id)).await
    }

    /// Delete finished jobs past their retention.
    pub async fn sweep(
        &self,
        now: u64,
        policy_of: impl Fn(&Job) -> Option<record::Policy> + Send + 'static,
    ) -> Result<usize> {
        let store = self.store.clone();
        blocking(move || {
            let old: Vec<String> = store
                .all()?
                .into_iter()
                .filter(|j| {
                    let Some(p) = policy_of(j) else {
                        return j.state.finished();
                    };
                    j.forgotten(now, &p)
                })
                .map(|j| j.id)
                .collect();
            store.delete(&old)?;
            Ok(old.len())
        })
        .await
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        lock(&self.running).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path) -> JobsSection {
        JobsSection {
            dir: dir.to_path_buf(),
            max_queued: 2,
            max_result_bytes: 1024,
            workers: 1,
            callback_hosts: vec![],
            callback_secret: None,
        }
    }

    fn job(id: &str, now: u64) -> Job {
        Job::queued(
            id.into(),
            "r".into(),
            "POST",
            "/v1/chat/completions",
            vec![],
            now,
        )
    }

    #[tokio::test]
    async fn the_schedule_survives_a_restart_and_a_failed_start() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ms();
        {
            let jobs = Jobs::open(&cfg(dir.path())).unwrap();
            jobs.submit(job("job_a", now), bytes::Bytes::from_static(b"{}"))
                .await
                .unwrap();
            jobs.submit(job("job_b", now + 1), bytes::Bytes::from_static(b"{}"))
                .await
                .unwrap();
            assert!(matches!(
                jobs.submit(job("job_c", now), bytes::Bytes::new()).await,
                Err(SubmitError::Full)
            ));
            // The oldest first; a start that could not be stored puts it back.
            let a = jobs.take_due(now + 5, |_| true).unwrap();
            assert_eq!((a.id.as_str(), a.started), ("job_a", 1));
            jobs.requeue("job_a", now + 1_000);
            assert_eq!(jobs.take_due(now + 5, |_| true).unwrap().id, "job_b");
            let a = jobs.take_due(now + 1_000, |_| true).unwrap();
            assert_eq!((a.id.as_str(), a.started), ("job_a", 1));
            // Its start is stored; then the gateway "dies".
            jobs.save(a, None).await.unwrap();
        }
        let jobs = Jobs::open(&cfg(dir.path())).unwrap();
        let (a, _) = jobs.get("job_a").await.unwrap().unwrap();
        assert_eq!(
            (a.state, a.started),
            (State::Queued, 1),
            "queued again, its start counted"
        );
        assert_eq!(
            jobs.body("job_a").await.unwrap().as_deref(),
            Some(&b"{}"[..])
        );
        assert!(
            jobs.get("job_c").await.unwrap().is_none(),
            "a refused job was never stored"
        );
    }
}
