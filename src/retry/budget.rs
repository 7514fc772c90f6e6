//! Retry budget: over a sliding window, retries may add at most `ratio` of
//! the first attempts made, plus a small floor so that a quiet route can
//! still retry. When a whole pool is failing this caps the extra load
//! retries put on it, instead of multiplying it by `attempts`.

use std::time::{Duration, Instant};

/// Width of the sliding window, in one-second buckets.
const WINDOW_SECS: usize = 10;
/// Retries allowed per window regardless of traffic.
pub const FLOOR: u64 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which second (since `origin`) this bucket currently counts.
    second: u64,
    firsts: u64,
    retries: u64,
}

#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    origin: Instant,
    buckets: [Bucket; WINDOW_SECS],
}

impl RetryBudget {
    /// A new ratio (a reload); the window's counts stay.
    pub fn set_ratio(&mut self, ratio: f64) {
        self.ratio = ratio;
    }

    pub fn new(ratio: f64, origin: Instant) -> Self {
        RetryBudget {
            ratio,
            origin,
            buckets: [Bucket::default(); WINDOW_SECS],
        }
    }

    pub fn window() -> Duration {
        Duration::from_secs(WINDOW_SECS as u64)
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let second = now.saturating_duration_since(self.origin).as_secs();
        let b = &mut self.buckets[(second % WINDOW_SECS as u64) as usize];
        if b.second != second {
            *b = Bucket {
                second,
                ..Bucket::default()
            };
        }
        b
    }

    /// Totals over the window ending at `now`.
    fn totals(&self, now: Instant) -> (u64, u64) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        self.buckets
            .iter()
            .filter(|b| b.second + (WINDOW_SECS as u64) > second && b.second <= second)
            .fold((0, 0), |(f, r), b| (f + b.firsts, r + b.retries))
    }

    /// A request made its first attempt.
    pub fn record_first(&mut self, now: Instant) {
        self.bucket(now).firsts += 1;
    }

    /// Ask for one retry; true (and counted) if the budget allows it.
    pub fn try_retry(&mut self, now: Instant) -> bool {
        let (firsts, retries) = self.totals(now);
        let allowed = (self.ratio * firsts as f64).floor() as u64 + FLOOR;
        if retries >= allowed {
            return false;
        }
        self.bucket(now).retries += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_lets_a_quiet_route_retry() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, t0);
        for _ in 0..FLOOR {
            assert!(b.try_retry(t0));
        }
        assert!(!b.try_retry(t0));
    }

    #[test]
    fn retries_scale_with_first_attempts() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, t0);
        for _ in 0..100 {
            b.record_first(t0);
        }
        let granted = (0..1000).filter(|_| b.try_retry(t0)).count() as u64;
        assert_eq!(granted, 20 + FLOOR);
    }

    #[test]
    fn old_traffic_leaves_the_window() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.5, t0);
        for _ in 0..100 {
            b.record_first(t0);
        }
        for _ in 0..(50 + FLOOR) {
            assert!(b.try_retry(t0));
        }
        assert!(!b.try_retry(t0 + Duration::from_secs(9)));
        // Ten seconds on, both the firsts and the retries have aged out.
        let later = t0 + RetryBudget::window();
        let granted = (0..1000).filter(|_| b.try_retry(later)).count() as u64;
        assert_eq!(granted, FLOOR);
    }

    #[test]
    fn steady_failing_load_stays_within_ratio() {
        // 50 requests a second for a minute, every attempt failing and
        // every request wanting two retries.
        let t0 = Instant::now();
        let mut b = RetryBudget::new(0.2, t0);
        let (mut firsts, mut retries) = (0u64, 0u64);
        for ms in (0..60_000).step_by(20) {
            let now = t0 + Duration::from_millis(ms);
            b.record_first(now);
            firsts += 1;
            for _ in 0..2 {
                if b.try_retry(now) {
                    retries += 1;
                }
            }
        }
        let limit = firsts as f64 * 0.2 + (FLOOR * 6) as f64;
        assert!(
            retries as f64 <= limit,
            "{retries} retries for {firsts} requests"
        );
        assert!(
            retries as f64 >= firsts as f64 * 0.15,
            "budget too stingy: {retries}"
        );
    }
}
