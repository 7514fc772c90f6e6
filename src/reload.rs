//! Reloading the config while running, on `SIGHUP` and `POST /reload`: the
//! file is read and checked first; an invalid one changes nothing. A valid
//! one becomes the next generation (state carried over, see
//! `Generation::next`) and is swapped in whole; requests in flight finish
//! on the generation they started with.

use crate::generation::{Changes, Current};
use crate::metrics;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub struct Reloader {
    path: PathBuf,
    current: Current,
    /// The number of the generation in force, for those who follow it
    /// (health checks and DNS restart their tasks for the new pools).
    swapped: tokio::sync::watch::Sender<u64>,
    /// One reload at a time.
    one: tokio::sync::Mutex<()>,
    /// The last reload tried, for `/status`.
    last: Mutex<Option<LastReload>>,
}

/// How the last reload went.
#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    /// RFC 3339 wall-clock time.
    pub at: String,
    /// `SIGHUP` or `POST /reload`.
    pub trigger: &'static str,
    /// ok, error (nothing changed).
    pub result: &'static str,
    /// The generation in force after it.
    pub generation: u64,
    /// Why it was refused.
    pub problems: Vec<String>,
}

impl Reloader {
    pub fn new(path: PathBuf, current: Current) -> Arc<Reloader> {
        let number = current.load().number;
        Arc::new(Reloader {
            path,
            current,
            swapped: tokio::sync::watch::channel(number).0,
            one: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
        })
    }

    pub fn current(&self) -> &Current {
        &self.current
    }

    /// Follows swaps of the generation.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swapped.subscribe()
    }

    pub fn last(&self) -> Option<LastReload> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn remember(&self, trigger: &'static str, result: &'static str, problems: Vec<String>) {
        let last = LastReload {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            trigger,
            result,
            generation: self.current.load().number,
            problems,
        };
        *self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(last);
    }

    /// Read the file again and apply it: what changed, or every problem
    /// (as `ballast check` prints them) with nothing changed.
    pub async fn reload(&self, trigger: &'static str) -> Result<Changes, Vec<String>> {
        let _one = self.one.lock().await;
        let path = self.path.clone();
        // Reading the file and resolving names block: not on a worker.
        let loaded = tokio::task::spawn_blocking(move || crate::config::load(&path)).await;
        let mut config = match loaded {
            Ok(Ok(config)) => config,
            Ok(Err(e)) => return Err(self.refused(trigger, e.to_string())),
            Err(e) => return Err(self.refused(trigger, format!("reading the config failed: {e}"))),
        };
        crate::descriptors::fit_connections(&mut config);
        let previous = self.current.load_full();
        let (next, changes) = match previous.next(config) {
            Ok(next) => next,
            Err(e) => return Err(self.refused(trigger, format!("{}: {e:#}", self.path.display()))),
        };
        let number = next.number;
        self.current.store(Arc::new(next));
        self.swapped.send_replace(number);
        metrics::config_reload("ok");
        self.remember(trigger, "ok", Vec::new());
        tracing::info!(
            trigger,
            generation = number,
            pools_added = ?changes.pools_added,
            pools_removed = ?changes.pools_removed,
            servers_added = ?changes.servers_added,
            servers_removed = ?changes.servers_removed,
            routes_added = ?changes.routes_added,
            routes_removed = ?changes.routes_removed,
            "config reloaded"
        );
        if !changes.needs_restart.is_empty() {
            tracing::warn!(keys = ?changes.needs_restart, "config reloaded; these keys need a restart and keep their old values");
        }
        Ok(changes)
    }

    fn refused(&self, trigger: &'static str, problems: String) -> Vec<String> {
        metrics::config_reload("error");
        tracing::error!(trigger, problems = %problems, "config reload refused; the running config stays");
        let problems: Vec<String> = problems.lines().map(str::to_owned).collect();
        self.remember(trigger, "error", problems.clone());
        problems
    }
}

/// Reload on every `SIGHUP` until the task is dropped.
pub async fn on_hangup(reloader: Arc<Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload with POST /reload");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        // The outcome is logged and counted by `reload`.
        let _ = reloader.reload("SIGHUP").await;
    }
}
