//! Waiting for a slot: when every usable server of a pool is at its
//! `max_conns`, requests wait here. A slot freed anywhere in the pool is
//! handed straight to the head of the queue (see `Lease`'s drop): no
//! polling, no sleeping loop.

use super::{Lease, Tally};
use crate::config::{Priority, QueueConfig};
use crate::metrics;
use crate::queue::{DrainRate, Pushed, Ticket, WaitQueue};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub struct Admission {
    pool: String,
    /// `max_wait` in milliseconds (a reload may change it).
    max_wait_ms: AtomicU64,
    enabled: AtomicBool,
    state: Mutex<State>,
    /// Mirror of the queue's length, read without the lock on every release.
    waiting: AtomicUsize,
    max_depth: AtomicUsize,
    /// Requests that left the queue (for `/status`).
    pub tally: Tally,
}

struct State {
    queue: WaitQueue<oneshot::Sender<Lease>>,
    drain: DrainRate,
}

/// Why a queued request did not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The queue was full of waiters of this priority or higher.
    QueueFull,
    /// `max_wait` (or the request's deadline) passed first.
    Timeout,
    /// A higher-priority request took its place in a full queue.
    Evicted,
}

impl Shed {
    pub fn label(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::Timeout => "queue_timeout",
            Shed::Evicted => "evicted",
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Admission {
    pub fn new(pool: &str, cfg: &QueueConfig, now: Instant) -> Self {
        Admission {
            pool: pool.to_owned(),
            max_wait_ms: AtomicU64::new(millis(cfg.max_wait)),
            enabled: AtomicBool::new(cfg.max_depth > 0),
            state: Mutex::new(State {
                queue: WaitQueue::new(cfg.max_depth as usize),
                drain: DrainRate::new(now),
            }),
            waiting: AtomicUsize::new(0),
            max_depth: AtomicUsize::new(cfg.max_depth as usize),
            tally: Tally::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Longest wait in the queue.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms.load(Ordering::Relaxed))
    }

    /// New queue settings (a reload); waiters stay queued.
    pub fn reconfigure(&self, cfg: &QueueConfig) {
        self.max_wait_ms
            .store(millis(cfg.max_wait), Ordering::Relaxed);
        self.enabled.store(cfg.max_depth > 0, Ordering::Relaxed);
        self.max_depth
            .store(cfg.max_depth as usize, Ordering::Relaxed);
        self.state().queue.set_max_depth(cfg.max_depth as usize);
    }

    pub fn has_waiters(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn max_depth(&self) -> usize {
        self.max_depth.load(Ordering::Relaxed)
    }

    /// A queued request was turned away.
    pub fn shed(&self, shed: Shed) {
        metrics::shed(&self.pool, shed.label());
        self.tally.record(true, None);
    }

    fn publish(&self, st: &State) {
        let len = st.queue.len();
        self.waiting.store(len, Ordering::Release);
        metrics::queue_depth(&self.pool, len);
    }

    /// When a request turned away now could come back.
    pub fn retry_after(&self, now: Instant) -> Duration {
        let st = self.state();
        st.drain.retry_after(st.queue.len(), now, self.max_wait())
    }

    /// Join the queue to wait at most `limit`, or be turned away at once.
    pub fn join(
        &self,
        priority: Priority,
        now: Instant,
        limit: Duration,
    ) -> Result<Waiting<'_>, Shed> {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state();
        let deadline = now + limit;
        let ticket = match st.queue.push(priority, now, deadline, tx) {
            Pushed::Queued(t) => t,
            // Dropping the evicted waiter's sender tells it it was shed.
            Pushed::QueuedEvicting(t, _evicted) => t,
            Pushed::Full(_) => return Err(Shed::QueueFull),
        };
        self.publish(&st);
        Ok(Waiting {
            admission: self,
            ticket,
            rx,
            enqueued: now,
            deadline,
        })
    }

    /// Give `lease` to the waiter at the head of the queue; returns it if
    /// nobody is (still) waiting.
    pub(super) fn hand_off(&self, mut lease: Lease) -> Option<Lease> {
        let mut st = self.state();
        let now = Instant::now();
        while let Some((tx, enqueued)) = st.queue.pop(now) {
            match tx.send(lease) {
                Ok(()) => {
                    st.drain.record(now);
                    self.publish(&st);
                    let waited = now.saturating_duration_since(enqueued);
                    metrics::queue_wait(&self.pool, waited.as_secs_f64());
                    self.tally.record(false, Some(waited));
                    return None;
                }
                // That waiter already gave up; try the next one.
                Err(back) => lease = back,
            }
        }
        self.publish(&st);
        Some(lease)
    }
}

/// A place in the queue; leaving it (drop) takes the entry out.
pub struct Waiting<'a> {
    admission: &'a Admission,
    ticket: Ticket,
    rx: oneshot::Receiver<Lease>,
    enqueued: Instant,
    deadline: Instant,
}

impl Waiting<'_> {
    /// Wait for a slot until the deadline given to `join`.
    pub async fn wait(mut self) -> Result<Lease, Shed> {
        let limit = self.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(limit, &mut self.rx).await {
            Ok(Ok(lease)) => Ok(lease),
            // Dropped from the queue: pushed out by a higher priority, or
            // passed over once its deadline was reached.
            Ok(Err(_)) if Instant::now() >= self.deadline => Err(Shed::Timeout),
            Ok(Err(_)) => Err(Shed::Evicted),
            Err(_) => {
                tracing::debug!(pool = %self.admission.pool, waited = ?self.enqueued.elapsed(), "queue wait expired");
                Err(Shed::Timeout)
            }
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut st = self.admission.state();
        if st.queue.remove(self.ticket).is_some() {
            self.admission.publish(&st);
        }
        // A lease sent just as we gave up is in `rx`: dropping it passes
        // the slot on to the next waiter.
    }
}
