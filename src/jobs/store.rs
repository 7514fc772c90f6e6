//! Where jobs live: a redb database in `[jobs] dir`. Every write is one
//! transaction committed durably (fsync) before it returns, so a job
//! acknowledged with 202 survives a crash, and a job is never half
//! written. redb: pure Rust (nothing to build or install), ACID,
//! copy-on-write B-trees that are crash-safe by design, one file.
//!
//! Blocking: call it from `spawn_blocking`.

use super::record::Job;
use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

/// Job records (JSON), by id.
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// Request bodies, by job id.
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("bodies");
/// The backend's answer bodies, by job id.
const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("results");

pub struct Store {
    db: Database,
}

impl Store {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the jobs directory {}", dir.display()))?;
        let path = dir.join("jobs.redb");
        let db = Database::create(&path)
            .with_context(|| format!("opening the job store {}", path.display()))?;
        let tx = db.begin_write()?;
        {
            tx.open_table(JOBS)?;
            tx.open_table(BODIES)?;
            tx.open_table(RESULTS)?;
        }
        tx.commit()?;
        Ok(Store { db })
    }

    /// Store a new job with its request body.
    pub fn insert(&self, job: &Job, body: &[u8]) -> Result<()> {
        let record = serde_json::to_vec(job)?;
        let tx = self.db.begin_write()?;
        {
            tx.open_table(JOBS)?
                .insert(job.id.as_str(), record.as_slice())?;
            tx.open_table(BODIES)?.insert(job.id.as_str(), body)?;
        }
        tx.commit().context("committing a new job")?;
        Ok(())
    }

    /// Write a job's record (and, once, its answer's body).
    pub fn update(&self, job: &Job, result: Option<&[u8]>) -> Result<()> {
        let record = serde_json::to_vec(job)?;
        let tx = self.db.begin_write()?;
        {
            tx.open_table(JOBS)?
                .insert(job.id.as_str(), record.as_slice())?;
            if let Some(result) = result {
                tx.open_table(RESULTS)?.insert(job.id.as_str(), result)?;
            }
            if job.state.finished() {
                // The request is not needed any more.
                tx.open_table(BODIES)?.remove(job.id.as_str())?;
            }
        }
        tx.commit().context("committing a job's state")?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Job>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        let Some(v) = table.get(id)? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(v.value())?))
    }

    pub fn body(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let v = tx.open_table(BODIES)?.get(id)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    pub fn result(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let v = tx.open_table(RESULTS)?.get(id)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    /// Every job (at start-up, and for the periodic sweep).
    pub fn all(&self) -> Result<Vec<Job>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        let mut jobs = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            match serde_json::from_slice(v.value()) {
                Ok(job) => jobs.push(job),
                Err(e) => tracing::warn!(error = %e, "an unreadable job record was skipped"),
            }
        }
        Ok(jobs)
    }

    /// Forget jobs entirely.
    pub fn delete(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        {
            let mut jobs = tx.open_table(JOBS)?;
            let mut bodies = tx.open_table(BODIES)?;
            let mut results = tx.open_table(RESULTS)?;
            for id in ids {
                jobs.remove(id.as_str())?;
                bodies.remove(id.as_str())?;
                results.remove(id.as_str())?;
            }
        }
        tx.commit().context("deleting jobs")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::record::State;

    fn job(id: &str) -> Job {
        Job {
            id: id.into(),
            route: "r".into(),
            key: Some("team".into()),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            state: State::Queued,
            attempts: 0,
            started: 0,
            created_ms: 1,
            started_ms: None,
            finished_ms: None,
            next_ms: 1,
            response: None,
            error: None,
            callback: None,
        }
    }

    #[test]
    fn what_is_written_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.insert(&job("a"), b"{\"x\":1}").unwrap();
            s.insert(&job("b"), b"{}").unwrap();
            let mut b = job("b");
            b.state = State::Succeeded;
            s.update(&b, Some(b"answer")).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.get("a").unwrap(), Some(job("a")));
        assert_eq!(s.body("a").unwrap().as_deref(), Some(&b"{\"x\":1}"[..]));
        assert_eq!(s.get("b").unwrap().unwrap().state, State::Succeeded);
        assert_eq!(s.result("b").unwrap().as_deref(), Some(&b"answer"[..]));
        assert_eq!(
            s.body("b").unwrap(),
            None,
            "a finished job's request is dropped"
        );
        assert_eq!(s.all().unwrap().len(), 2);
        s.delete(&["a".into()]).unwrap();
        assert_eq!(s.get("a").unwrap(), None);
        assert_eq!(s.body("a").unwrap(), None);
        assert_eq!(s.get("nope").unwrap(), None);
    }
}
