//! Passive ejection with nginx `max_fails`/`fail_timeout` semantics.
//!
//! `max_fails` failures inside one `fail_timeout` window eject the server for
//! `fail_timeout`. When that time is up exactly one request is let through as
//! a probe: its success returns the server, its failure ejects it again.
//!
//! With a `probe_interval` (opt-in) the first probe comes after that
//! interval instead, and each failed probe doubles the wait, up to
//! `fail_timeout`: a server that recovers quickly is back in seconds.
//! A passing health check lets one probe through at once (it does not end
//! the ejection by itself: `/health` may pass while the API fails).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Normal traffic may go to the server.
    Open,
    /// The ejection is over; one probe request may go (none is in flight).
    Probe,
    /// Ejected, or ejection over but a probe is already in flight.
    Closed {
        /// When the server may next take a request; `None` while waiting on
        /// an in-flight probe.
        until: Option<Instant>,
    },
}

#[derive(Debug, Clone)]
pub struct Ejection {
    max_fails: u32,
    fail_timeout: Duration,
    probe_interval: Option<Duration>,
    /// Probes that failed since the server was ejected.
    probes_failed: u32,
    fails: u32,
    window_start: Option<Instant>,
    ejected_until: Option<Instant>,
    probe_in_flight: bool,
}

impl Ejection {
    /// New settings (a reload): the count, window and any ejection in
    /// force stay as they are.
    pub fn reconfigure(
        &mut self,
        max_fails: u32,
        fail_timeout: Duration,
        probe_interval: Option<Duration>,
    ) {
        self.max_fails = max_fails;
        self.fail_timeout = fail_timeout;
        self.probe_interval = probe_interval;
    }

    pub fn new(max_fails: u32, fail_timeout: Duration, probe_interval: Option<Duration>) -> Self {
        Ejection {
            max_fails,
            fail_timeout,
            probe_interval,
            probes_failed: 0,
            fails: 0,
            window_start: None,
            ejected_until: None,
            probe_in_flight: false,
        }
    }

    pub fn gate(&self, now: Instant) -> Gate {
        match self.ejected_until {
            None => Gate::Open,
            Some(until) if now < until => Gate::Closed { until: Some(until) },
            Some(_) if self.probe_in_flight => Gate::Closed { until: None },
            Some(_) => Gate::Probe,
        }
    }

    /// Take the single probe slot; false if it is not free.
    pub fn take_probe(&mut self, now: Instant) -> bool {
        if self.gate(now) == Gate::Probe {
            self.probe_in_flight = true;
            true
        } else {
            false
        }
    }

    /// A probe ended without telling us anything (e.g. the client went away
    /// first): free the slot so another request can probe.
    pub fn release_probe(&mut self) {
        self.probe_in_flight = false;
    }

    /// How long an ejection lasts before its next probe.
    fn wait(&self) -> Duration {
        match self.probe_interval {
            None => self.fail_timeout,
            Some(first) => first
                .saturating_mul(1 << self.probes_failed.min(20))
                .min(self.fail_timeout),
        }
    }

    /// A passing health check: an ejected server may take one probe now.
    pub fn admit_probe(&mut self, now: Instant) {
        if let Some(until) = self.ejected_until {
            if now < until {
                self.ejected_until = Some(now);
            }
        }
    }

    /// Record a failed attempt. Returns true when this failure ejects the server.
    pub fn record_failure(&mut self, now: Instant) -> bool {
        if self.max_fails == 0 {
            return false;
        }
        if self.probe_in_flight || self.ejected_until.is_some_and(|u| now >= u) {
            // The probe (or a straggler after the ejection ended) failed: eject again.
            self.probe_in_flight = false;
            self.probes_failed = self.probes_failed.saturating_add(1);
            self.fails = self.max_fails;
            self.window_start = Some(now);
            self.ejected_until = Some(now + self.wait());
            return true;
        }
        if self.ejected_until.is_some() {
            // Already ejected; a request that started before the ejection failed late.
            return false;
        }
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < self.fail_timeout => {
                self.fails += 1;
            }
            _ => {
                self.window_start = Some(now);
                self.fails = 1;
            }
        }
        if self.fails >= self.max_fails {
            self.probes_failed = 0;
            self.ejected_until = Some(now + self.wait());
            true
        } else {
            false
        }
    }

    /// Record a successful attempt. A success while ejected (other than the
    /// probe) does not return the server: only the probe or a health check can.
    pub fn record_success(&mut self, now: Instant) {
        let ejection_over = self.ejected_until.is_some_and(|u| now >= u);
        if self.ejected_until.is_none() || self.probe_in_flight || ejection_over {
            self.clear();
        }
    }

    /// End any ejection and forget past failures (a passing health check).
    pub fn clear(&mut self) {
        self.probes_failed = 0;
        self.fails = 0;
        self.window_start = None;
        self.ejected_until = None;
        self.probe_in_flight = false;
    }

    pub fn fails(&self) -> u32 {
        self.fails
    }

    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn ejects_after_max_fails_within_window() {
        let t0 = Instant::now();
        let mut e = Ejection::new(3, T, None);
        assert!(!e.record_failure(t0));
        assert!(!e.record_failure(t0 + Duration::from_secs(1)));
        assert_eq!(e.gate(t0 + Duration::from_secs(2)), Gate::Open);
        assert!(e.record_failure(t0 + Duration::from_secs(2)));
        assert_eq!(
            e.gate(t0 + Duration::from_secs(3)),
            Gate::Closed {
                until: Some(t0 + Duration::from_secs(12))
            }
        );
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_eject() {
        let t0 = Instant::now();
        let mut e = Ejection::new(2, T, None);
        assert!(!e.record_failure(t0));
        assert!(!e.record_failure(t0 + Duration::from_secs(11)));
        assert!(!e.record_failure(t0 + Duration::from_secs(22)));
        assert_eq!(e.gate(t0 + Duration::from_secs(23)), Gate::Open);
    }

    #[test]
    fn after_the_ejection_exactly_one_probe() {
        let t0 = Instant::now();
        let mut e = Ejection::new(1, T, None);
        assert!(e.record_failure(t0));
        let later = t0 + T;
        assert_eq!(e.gate(later), Gate::Probe);
        assert!(e.take_probe(later));
        assert!(!e.take_probe(later));
        assert_eq!(e.gate(later), Gate::Closed { until: None });
        e.record_success(later + Duration::from_millis(5));
        assert_eq!(e.gate(later), Gate::Open);
        assert_eq!(e.fails(), 0);
    }

    #[test]
    fn failed_probe_ejects_again() {
        let t0 = Instant::now();
        let mut e = Ejection::new(2, T, None);
        e.record_failure(t0);
        e.record_failure(t0);
        let later = t0 + T;
        assert!(e.take_probe(later));
        assert!(e.record_failure(later));
        assert_eq!(
            e.gate(later),
            Gate::Closed {
                until: Some(later + T)
            }
        );
    }

    #[test]
    fn released_probe_frees_the_slot() {
        let t0 = Instant::now();
        let mut e = Ejection::new(1, T, None);
        e.record_failure(t0);
        assert!(e.take_probe(t0 + T));
        e.release_probe();
        assert_eq!(e.gate(t0 + T), Gate::Probe);
    }

    #[test]
    fn late_success_of_an_old_request_does_not_unject() {
        let t0 = Instant::now();
        let mut e = Ejection::new(1, T, None);
        e.record_failure(t0);
        e.record_success(t0 + Duration::from_secs(1));
        assert!(matches!(
            e.gate(t0 + Duration::from_secs(1)),
            Gate::Closed { .. }
        ));
    }

    #[test]
    fn max_fails_zero_never_ejects() {
        let t0 = Instant::now();
        let mut e = Ejection::new(0, T, None);
        for i in 0..100 {
            assert!(!e.record_failure(t0 + Duration::from_millis(i)));
        }
        assert_eq!(e.gate(t0), Gate::Open);
    }

    #[test]
    fn success_resets_the_count() {
        let t0 = Instant::now();
        let mut e = Ejection::new(2, T, None);
        e.record_failure(t0);
        e.record_success(t0);
        assert!(!e.record_failure(t0));
        assert_eq!(e.gate(t0), Gate::Open);
    }

    #[test]
    fn quick_probes_start_short_and_double_up_to_fail_timeout() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut e = Ejection::new(1, s(30), Some(s(2)));
        assert!(e.record_failure(t0));
        assert_eq!(
            e.gate(t0 + s(1)),
            Gate::Closed {
                until: Some(t0 + s(2))
            }
        );
        // Each failed probe doubles the wait: 4 s, 8 s, 16 s, then 30 s.
        let mut at = t0 + s(2);
        for wait in [4, 8, 16, 30, 30] {
            assert!(e.take_probe(at));
            assert!(e.record_failure(at));
            assert_eq!(
                e.gate(at),
                Gate::Closed {
                    until: Some(at + s(wait))
                }
            );
            at += s(wait);
        }
        // A probe that passes returns it; the next ejection starts short again.
        assert!(e.take_probe(at));
        e.record_success(at);
        assert_eq!(e.gate(at), Gate::Open);
        assert!(e.record_failure(at));
        assert_eq!(
            e.gate(at),
            Gate::Closed {
                until: Some(at + s(2))
            }
        );
    }

    #[test]
    fn a_passing_health_check_admits_one_probe_not_all_traffic() {
        let t0 = Instant::now();
        let mut e = Ejection::new(1, T, None);
        e.record_failure(t0);
        let now = t0 + Duration::from_secs(1);
        e.admit_probe(now);
        assert_eq!(e.gate(now), Gate::Probe);
        assert!(e.take_probe(now));
        assert_eq!(e.gate(now), Gate::Closed { until: None });
        // The API still fails: ejected again for the whole time.
        assert!(e.record_failure(now));
        assert_eq!(
            e.gate(now),
            Gate::Closed {
                until: Some(now + T)
            }
        );
        // A server that is not ejected is not affected.
        let mut fine = Ejection::new(1, T, None);
        fine.admit_probe(now);
        assert_eq!(fine.gate(now), Gate::Open);
    }

    #[test]
    fn clear_ends_an_ejection() {
        let t0 = Instant::now();
        let mut e = Ejection::new(1, T, None);
        e.record_failure(t0);
        e.clear();
        assert_eq!(e.gate(t0), Gate::Open);
    }
}
