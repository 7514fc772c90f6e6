//! Running totals that readers of `/status` (the status page) turn into
//! rates and mean times by comparing two reads. Never reset: a reader
//! that sees a total go down knows the process restarted.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct Tally {
    total: AtomicU64,
    failed: AtomicU64,
    timed: AtomicU64,
    micros: AtomicU64,
}

/// What a `Tally` held when it was read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TallyStatus {
    /// Events counted.
    pub total: u64,
    /// Of those, failures.
    pub failed: u64,
    /// Of those, events that came with a time.
    pub timed: u64,
    /// Sum of those times.
    pub time_sum_seconds: f64,
}

impl Tally {
    /// Count one event, a failure or not, that took `took` if it has a time.
    pub fn record(&self, failed: bool, took: Option<Duration>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(took) = took {
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            self.timed.fetch_add(1, Ordering::Relaxed);
            self.micros.fetch_add(micros, Ordering::Relaxed);
        }
    }

    pub fn read(&self) -> TallyStatus {
        TallyStatus {
            total: self.total.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed: self.timed.load(Ordering::Relaxed),
            time_sum_seconds: self.micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_failures_and_times_apart() {
        let t = Tally::default();
        t.record(false, Some(Duration::from_millis(250)));
        t.record(true, None);
        t.record(false, Some(Duration::from_millis(750)));
        assert_eq!(
            t.read(),
            TallyStatus {
                total: 3,
                failed: 1,
                timed: 2,
                time_sum_seconds: 1.0,
            }
        );
    }
}
